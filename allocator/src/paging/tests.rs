use std::format;
use std::vec::Vec;

use super::*;
use crate::frames::tests::{reserved, usable, FakePhys};

const W: PageTableFlags = PageTableFlags::WRITABLE;

/// Fake memory, a frame allocator over `[1 MiB, bytes)` (plus `extra` regions) and a mapper with a fresh P4.
fn setup(
    bytes: usize,
    extra: &[crate::frames::MemoryRegion],
) -> (FakePhys, FrameAllocator, Mapper) {
    let mut mem = FakePhys::new(bytes);
    let mut regions = std::vec![usable(0x10_0000, bytes as u64)];
    regions.extend_from_slice(extra);
    let mut frames = mem.frames(&regions).unwrap();
    let p4 = frames.allocate_zeroed().unwrap();
    // SAFETY: the P4 is a zeroed frame of the fake memory, which is mapped at its offset; the pages the tests
    // map are never dereferenced.
    let mapper = unsafe { Mapper::new(p4, mem.offset()) };
    (mem, frames, mapper)
}

fn page(addr: u64) -> Page {
    Page::containing_address(VirtAddr::new(addr))
}

const BASE: u64 = 0x4000_0000_0000;

#[test]
fn map_translate_unmap() {
    let (_mem, mut frames, mut mapper) = setup(4 << 20, &[]);
    let baseline = frames.free_frames();
    let frame = frames.allocate().unwrap();
    mapper.map(page(BASE), frame, W, &mut frames).unwrap();
    assert_eq!(
        frames.free_frames().0,
        baseline.0 - 4,
        "one data frame and three new tables"
    );
    let phys = mapper.translate(VirtAddr::new(BASE + 0x123)).unwrap();
    assert_eq!(phys, frame.start_address() + 0x123u64);
    assert_eq!(mapper.translate(VirtAddr::new(BASE + 0x1000)), None);
    assert_eq!(mapper.unmap(page(BASE), &mut frames), Ok(frame));
    assert_eq!(mapper.translate(VirtAddr::new(BASE)), None);
    assert_eq!(
        mapper.unmap(page(BASE), &mut frames),
        Err(UnmapError::NotMapped { page: page(BASE) })
    );
    frames.free(frame);
    assert_eq!(frames.free_frames(), baseline, "tables not freed");
}

#[test]
fn already_mapped() {
    let (_mem, mut frames, mut mapper) = setup(4 << 20, &[]);
    let (a, b) = (frames.allocate().unwrap(), frames.allocate().unwrap());
    mapper.map(page(BASE), a, W, &mut frames).unwrap();
    let free = frames.free_frames();
    let err = mapper.map(page(BASE), b, W, &mut frames).unwrap_err();
    assert_eq!(
        err,
        MapError::AlreadyMapped {
            page: page(BASE),
            frame: a
        }
    );
    assert_eq!(frames.free_frames(), free);
    let text = format!("{err}");
    assert!(
        text.contains(&format!("{BASE:#x}"))
            && text.contains(&format!("{:#x}", a.start_address().as_u64()))
    );
    assert_eq!(
        mapper.translate(VirtAddr::new(BASE)),
        Some(a.start_address()),
        "mapping was changed"
    );
}

#[test]
fn out_of_frames_leaks_nothing() {
    let (_mem, mut frames, mut mapper) = setup(4 << 20, &[]);
    let data = frames.allocate().unwrap();
    // Leave 0, 1 and 2 free frames: a page in an empty P4 slot needs 3 tables.
    let mut hoard = crate::testing::hoard_all_but(&mut frames, 0);
    for left in 0..3 {
        let free = frames.free_frames();
        assert_eq!(free.0, left);
        let err = mapper.map(page(BASE), data, W, &mut frames).unwrap_err();
        assert_eq!(err, MapError::OutOfFrames { page: page(BASE) });
        assert!(format!("{err}").contains("out of frames"));
        assert_eq!(
            frames.free_frames(),
            free,
            "tables leaked with {left} frames free"
        );
        assert_eq!(
            mapper.free_p4_range(false, 255),
            Some(VirtAddr::new(P4_ENTRY_SPAN)),
            "P4 entry left behind"
        );
        // Give back the last frame of the last run.
        let (run, n) = hoard.last_mut().unwrap();
        n.0 -= 1;
        frames.free(*run + n.0);
        if n.0 == 0 {
            hoard.pop();
        }
    }
    mapper.map(page(BASE), data, W, &mut frames).unwrap();
    assert_eq!(frames.free_frames().0, 0);
}

#[test]
fn unmapping_every_page_frees_every_table() {
    let (_mem, mut frames, mut mapper) = setup(8 << 20, &[]);
    let baseline = frames.free_frames();
    // Pages across P1 boundaries, a P2 boundary, another P3 and another P4 slot, and the canonical top.
    // Under Miri (a page costs a good part of a second there) only the pages next to each boundary of the
    // run: the same tables are made and freed.
    let run: Vec<u64> = if cfg!(miri) {
        std::vec![0, 1, 511, 512, 513, 1023, 1024, 1099]
    } else {
        (0..1100).collect()
    };
    let mut pages: Vec<Page> = run
        .iter()
        .map(|i| page(BASE - 0x20_0000 + i * 0x1000))
        .collect();
    pages.extend(
        [
            BASE + (1 << 30),
            BASE + P4_ENTRY_SPAN,
            0xffff_ffff_ffff_f000,
        ]
        .map(page),
    );
    let mut mapped = Vec::new();
    for &p in &pages {
        let f = frames.allocate().unwrap();
        mapper.map(p, f, W, &mut frames).unwrap();
        mapped.push((p, f));
    }
    // Unmap in an order that is neither ascending nor descending.
    mapped.sort_by_key(|(p, _)| {
        (p.start_address()
            .as_u64()
            .wrapping_mul(0x9e37_79b9_7f4a_7c15))
            >> 40
    });
    for (p, f) in mapped {
        assert_eq!(mapper.unmap(p, &mut frames), Ok(f));
        frames.free(f);
    }
    // Every table but the P3 under the kernel half's last entry (P4 entry 511), which stays for the
    // user P4s that copy that entry.
    assert_eq!(frames.free_frames().0, baseline.0 - 1);
    assert_eq!(
        mapper.free_p4_range(false, 255),
        Some(VirtAddr::new(P4_ENTRY_SPAN))
    );
    assert_eq!(mapper.free_p4_range(true, 256), None);
    assert_eq!(
        mapper.free_p4_range(true, 255),
        Some(VirtAddr::new(0xffff_8000_0000_0000))
    );
}

#[test]
fn ascending_and_descending_unmaps() {
    let (_mem, mut frames, mut mapper) = setup(4 << 20, &[]);
    let baseline = frames.free_frames();
    // 600 pages cross a P1 boundary; under Miri, a few pages either side of it do.
    let run = if cfg!(miri) { 508..516 } else { 0..600 };
    for descending in [false, true] {
        let mut mapped: Vec<(Page, PhysFrame)> = run
            .clone()
            .map(|i| (page(BASE + i * 0x1000), frames.allocate().unwrap()))
            .collect();
        for &(p, f) in &mapped {
            mapper.map(p, f, W, &mut frames).unwrap();
        }
        if descending {
            mapped.reverse();
        }
        for (p, f) in mapped {
            mapper.unmap(p, &mut frames).unwrap();
            frames.free(f);
        }
        assert_eq!(frames.free_frames(), baseline);
    }
}

#[test]
fn detach_then_reclaim() {
    let (_mem, mut frames, mut mapper) = setup(4 << 20, &[]);
    let baseline = frames.free_frames();
    let f = frames.allocate().unwrap();
    mapper.map(page(BASE), f, W, &mut frames).unwrap();
    let p = page(BASE);
    assert_eq!(
        mapper.reclaim(p, &mut frames),
        Err(UnmapError::NotDetached { page: p })
    );
    assert_eq!(mapper.detach(p), Ok(f));
    assert_eq!(mapper.translate(p.start_address()), None);
    assert_eq!(mapper.detach(p), Err(UnmapError::NotMapped { page: p }));
    let other = frames.allocate().unwrap();
    assert_eq!(
        mapper.map(p, other, W, &mut frames),
        Err(MapError::AlreadyMapped { page: p, frame: f })
    );
    frames.free(other);
    let (got, tables) = mapper.reclaim(p, &mut frames).unwrap();
    assert_eq!((got, tables), (f, FrameCount(3)));
    frames.free(f);
    assert_eq!(frames.free_frames(), baseline);
}

#[test]
fn user_pages_get_user_tables() {
    let (mut mem, mut frames, mut mapper) = setup(4 << 20, &[]);
    let f = frames.allocate().unwrap();
    let user = PageTableFlags::USER_ACCESSIBLE;
    mapper.map(page(BASE), f, W | user, &mut frames).unwrap();
    let mut table = mapper.p4();
    for index in indices(page(BASE)) {
        let slot =
            (mem.offset() + table.start_address().as_u64() + index as u64 * 8).as_ptr::<u64>();
        // SAFETY: the table lies in the fake memory.
        let e = unsafe { slot.read() };
        assert_ne!(e & user.bits(), 0, "entry {e:#x} lacks USER");
        table = table_of(e);
    }
}

#[test]
fn huge_pages_are_reported_not_touched() {
    let (mut mem, mut frames, mut mapper) = setup(4 << 20, &[]);
    // Hand-build P4[128] -> P3, P3[0] = a 1 GiB page at 0, P3[1] -> P2, P2[0] = a 2 MiB page at 2 MiB.
    let (p3, p2) = (
        frames.allocate_zeroed().unwrap(),
        frames.allocate_zeroed().unwrap(),
    );
    let table_entry = |t: PhysFrame| t.start_address().as_u64() | 0b11;
    let huge = |addr: u64| addr | 0b11 | HUGE;
    let writes = [
        (mapper.p4(), 128, table_entry(p3)),
        (p3, 0, huge(0)),
        (p3, 1, table_entry(p2)),
        (p2, 0, huge(2 << 20)),
    ];
    for (t, i, e) in writes {
        let slot = (mem.offset() + t.start_address().as_u64() + i * 8).as_mut_ptr::<u64>();
        // SAFETY: the table lies in the fake memory.
        unsafe { slot.write(e) };
    }
    let base = 128 * P4_ENTRY_SPAN;
    assert_eq!(
        mapper.translate(VirtAddr::new(base + 0x1234_5678)),
        Some(PhysAddr::new(0x1234_5678))
    );
    let in_2mib = base + (1 << 30) + 0x1_2345;
    assert_eq!(
        mapper.translate(VirtAddr::new(in_2mib)),
        Some(PhysAddr::new((2 << 20) + 0x1_2345))
    );
    let f = frames.allocate().unwrap();
    let free = frames.free_frames();
    for addr in [base + 0x5000, in_2mib] {
        assert_eq!(
            mapper.map(page(addr), f, W, &mut frames),
            Err(MapError::HugePage { page: page(addr) })
        );
        assert_eq!(
            mapper.unmap(page(addr), &mut frames),
            Err(UnmapError::HugePage { page: page(addr) })
        );
    }
    assert_eq!(frames.free_frames(), free);
    assert_eq!(
        mapper.translate(VirtAddr::new(base)),
        Some(PhysAddr::new(0)),
        "huge page changed"
    );
}

#[test]
fn bootloader_tables_are_never_freed() {
    // A P3 table in reserved ("bootloader") memory, linked into P4[5] by hand.
    let boot_p3 = 0x20_0000;
    let (mut mem, mut frames, mut mapper) = setup(
        4 << 20,
        &[reserved(boot_p3, boot_p3 + 0x1000, "bootloader")],
    );
    let slot = (mem.offset() + mapper.p4().start_address().as_u64() + 5 * 8).as_mut_ptr::<u64>();
    // SAFETY: the P4 lies in the fake memory.
    unsafe { slot.write(boot_p3 | 0b11) };
    let baseline = frames.free_frames();
    let addr = 5 * P4_ENTRY_SPAN + 0x7000;
    let f = frames.allocate().unwrap();
    mapper.map(page(addr), f, W, &mut frames).unwrap();
    assert_eq!(
        frames.free_frames().0,
        baseline.0 - 3,
        "data, P2 and P1: the P3 exists"
    );
    assert_eq!(mapper.unmap(page(addr), &mut frames), Ok(f));
    frames.free(f);
    assert_eq!(frames.free_frames(), baseline);
    // SAFETY: as above.
    assert_eq!(
        // SAFETY: `slot` is P4 entry 5, 8-aligned, in the fake memory `mem` still holds.
        unsafe { slot.read() },
        boot_p3 | 0b11,
        "the bootloader's P3 was unlinked"
    );
}

#[test]
fn free_p4_range_skips_used_entries() {
    let (_mem, mut frames, mut mapper) = setup(4 << 20, &[]);
    for addr in [
        0xffff_8000_0000_0000u64,
        0xffff_8080_0000_0000,
        P4_ENTRY_SPAN * 2,
    ] {
        let f = frames.allocate().unwrap();
        mapper.map(page(addr), f, W, &mut frames).unwrap();
    }
    assert_eq!(
        mapper.free_p4_range(true, 2),
        Some(VirtAddr::new(0xffff_8100_0000_0000))
    );
    assert_eq!(
        mapper.free_p4_range(false, 1),
        Some(VirtAddr::new(P4_ENTRY_SPAN))
    );
    assert_eq!(
        mapper.free_p4_range(false, 2),
        Some(VirtAddr::new(P4_ENTRY_SPAN * 3))
    );
    assert_eq!(mapper.free_p4_range(false, 254), None);
    assert_eq!(
        mapper.free_p4_range(true, 254),
        Some(VirtAddr::new(0xffff_8100_0000_0000))
    );
    assert_eq!(mapper.free_p4_range(true, 255), None);
}
