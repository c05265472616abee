//! An attacker's pass over take-over on the host: a whole take-over (frame allocator from a hostile
//! memory map, the heap's window in a host-reserved P4 slot) and what it checks.

use core::alloc::{GlobalAlloc, Layout};
use std::vec::Vec;

use super::*;
use crate::addr::{PageTableFlags, PhysAddr};
use crate::frames::RegionKind;
use crate::host::{leak, HostPlatform};

/// A take-over platform over the host one; checks the offset it is told is the host's.
pub(crate) struct Tp(pub &'static HostPlatform);

crate::testing::host_platform_wrapper!(Tp {
    const MAX_CPUS: usize = crate::host::HostPlatform::MAX_CPUS;
});

impl TakeOverPlatform for Tp {
    fn set_physical_memory_offset(&self, _offset: VirtAddr) {}
}

pub(crate) fn region(start: u64, end: u64, kind: RegionKind) -> MemoryRegion {
    MemoryRegion {
        start: PhysAddr::new(start),
        end: PhysAddr::new(end),
        kind,
    }
}

pub(crate) fn usable(start: u64, end: u64) -> MemoryRegion {
    region(start, end, RegionKind::Usable)
}

pub(crate) fn reserved(start: u64, end: u64) -> MemoryRegion {
    region(start, end, RegionKind::Reserved("bootloader"))
}

/// A fake machine ready for take-over: fake memory, a P4 at `p4` whose lower half is full but for one
/// entry, a host-reserved 512 GiB range under that entry.
pub(crate) struct Machine {
    pub heap: &'static Heap<Tp, false>,
    pub platform: &'static HostPlatform,
    pub p4: PhysFrame,
    pub slot: u64,
}

impl Machine {
    pub fn new(phys_bytes: usize, p4: u64) -> Self {
        let platform = leak(HostPlatform::new(phys_bytes));
        let base = platform.reserve_window(2 << 39).as_u64();
        let slot = base.next_multiple_of(P4_ENTRY_SPAN);
        assert!(slot + P4_ENTRY_SPAN <= base + (2 << 39));
        let p4 = PhysFrame::containing_address(PhysAddr::new(p4));
        let table =
            (platform.physical_memory_offset() + p4.start_address().as_u64()).as_mut_ptr::<u64>();
        let free = (slot / P4_ENTRY_SPAN) as usize;
        for i in 0..512 {
            // A present entry to an empty P3 right after the P4 (zero fake memory): taken.
            let e = if (1..256).contains(&i) && i != free {
                (p4.start_address().as_u64() + 0x1000) | PageTableFlags::PRESENT.bits()
            } else {
                0
            };
            // SAFETY: the P4 frame lies in the fake memory.
            unsafe { table.add(i).write(e) };
        }
        // Not empty after all: one entry, a 2 MiB page (a leaf, never walked).
        // SAFETY: the frame after the P4 lies in the fake memory.
        unsafe {
            table.add(512).write(
                PageTableFlags::PRESENT.bits() | PageTableFlags::HUGE_PAGE.bits() | (1 << 30),
            )
        };
        Machine {
            heap: leak(Heap::new(leak(Tp(platform)))),
            platform,
            p4,
            slot,
        }
    }

    pub fn take_over(&self, regions: &[MemoryRegion]) -> Result<TakeOver, TakeOverError> {
        self.take_over_at(regions, self.platform.physical_memory_offset())
    }

    pub fn take_over_at(
        &self,
        regions: &[MemoryRegion],
        offset: VirtAddr,
    ) -> Result<TakeOver, TakeOverError> {
        self.take_over_limits(regions, offset, None)
    }

    pub fn take_over_limits(
        &self,
        regions: &[MemoryRegion],
        offset: VirtAddr,
        max_bytes: Option<usize>,
    ) -> Result<TakeOver, TakeOverError> {
        // SAFETY: test code: the regions lie in the fake memory, mapped at the host offset; the tables
        // under p4 are only read outside the free slot.
        unsafe {
            take_over_tables(
                self.heap,
                regions.iter().copied(),
                offset,
                self.p4,
                Limits {
                    max_bytes,
                    higher_half: false,
                },
            )
        }
    }

    /// Writes `entry` at `index` of the table in `frame`.
    pub fn write_entry(&self, frame: u64, index: usize, entry: u64) {
        let t = (self.platform.physical_memory_offset() + frame).as_mut_ptr::<u64>();
        // SAFETY: test code: the frame lies in the fake memory.
        unsafe { t.add(index).write(entry) };
    }

    /// Allocates and frees some blocks; checks they lie in the window.
    pub fn exercise(&self) {
        let mut got = Vec::new();
        for size in [8usize, 100, 4096, 20 << 10, 300 << 10] {
            let l = Layout::from_size_align(size, 8).unwrap();
            // SAFETY: test code: a non-zero layout.
            let p = unsafe { self.heap.alloc(l) };
            assert!(!p.is_null(), "{size} B");
            let a = p as u64;
            assert!(a >= self.slot && a < self.slot + P4_ENTRY_SPAN, "{p:?}");
            // SAFETY: a fresh block of `size` bytes.
            unsafe { p.write_bytes(0x5a, size) };
            got.push((p, l));
        }
        for (p, l) in got {
            // SAFETY: live blocks, freed once.
            unsafe { self.heap.dealloc(p, l) };
        }
    }
}

const MIB: u64 = 1 << 20;
const P: u64 = PageTableFlags::PRESENT.bits();

/// A PC-shaped map with the P4 and its first table in reserved memory.
fn pc_map(top: u64) -> Vec<MemoryRegion> {
    std::vec![
        usable(0x1000, 0x9_0000),
        reserved(0x9_0000, MIB),
        usable(MIB, top),
    ]
}

#[test]
fn a_plain_take_over_serves_and_a_second_is_refused() {
    let m = Machine::new(32 << 20, 0x9_0000);
    let map = pc_map(32 * MIB);
    let t = m.take_over(&map).expect("take-over");
    assert_eq!(t.window_base.as_u64(), m.slot, "{t}");
    m.exercise();
    assert_eq!(
        m.take_over(&map).unwrap_err(),
        TakeOverError::AlreadyInitialized
    );
    m.exercise();
}

/// The loader's page tables in memory the map calls usable (e.g. Limine's "bootloader reclaimable"
/// converted as usable): the frame allocator would hand the live tables out. Refused, naming the table,
/// before anything is written.
#[test]
fn page_tables_in_usable_memory_are_refused() {
    // The P4 itself, in the middle of a usable region.
    let m = Machine::new(8 << 20, 3 * MIB);
    let err = m.take_over(&[usable(MIB, 8 * MIB)]).unwrap_err();
    assert_eq!(
        err,
        TakeOverError::PageTableInUsableMemory {
            table: m.p4,
            level: 4
        }
    );
    let text = std::format!("{err}");
    assert!(text.contains("0x300000") && text.contains("P4"), "{text}");

    // A P1 deep under a reserved P4, P3 and P2: P4[0] -> P3 at 0x9_2000 -> P2 at 0x9_3000 -> P1 at 5 MiB.
    let m = Machine::new(8 << 20, 0x9_0000);
    m.write_entry(0x9_0000, 0, 0x9_2000 | P);
    m.write_entry(0x9_2000, 7, 0x9_3000 | P);
    m.write_entry(0x9_3000, 3, (5 * MIB) | P);
    // A leaf of the P1 in usable memory is fine (a 4 KiB mapping of any frame, the direct map's say).
    m.write_entry(5 * MIB, 0, (6 * MIB) | P);
    let map = pc_map(8 * MIB);
    let err = m.take_over(&map).unwrap_err();
    let p1 = PhysFrame::containing_address(PhysAddr::new(5 * MIB));
    assert_eq!(
        err,
        TakeOverError::PageTableInUsableMemory {
            table: p1,
            level: 1
        }
    );
    // The frame allocator wrote nothing: the usable memory is as the loader left it.
    let first = (m.platform.physical_memory_offset() + MIB).as_ptr::<u64>();
    // SAFETY: test code: fake memory.
    assert_eq!(unsafe { first.read() }, 0);
    // With the P1's frame reserved, the same machine takes over and serves.
    let mut fixed = map.clone();
    fixed.push(reserved(5 * MIB, 5 * MIB + 4096));
    m.take_over(&fixed).expect("tables reserved");
    m.exercise();
    let mut taken = Vec::new();
    while let Some(f) = m
        .heap
        .allocate_frames(crate::FrameCount(1), crate::FrameCount(1))
    {
        assert_ne!(f, p1, "the live P1 was handed out");
        taken.push(f);
    }
    assert!(!taken.is_empty());
}

/// A 2 MiB page under a P2 entry is a leaf, never read as a table; a recursive P4 entry (the P4 as its
/// own P3) is walked without end.
#[test]
fn huge_pages_and_a_recursive_entry_are_walked_right() {
    let m = Machine::new(8 << 20, 0x9_0000);
    m.write_entry(0x9_0000, 0, 0x9_2000 | P);
    m.write_entry(0x9_2000, 0, 0x9_3000 | P);
    // 2 MiB pages over usable memory: leaves.
    for i in 0..4u64 {
        m.write_entry(
            0x9_3000,
            i as usize,
            (i * 2 * MIB) | P | PageTableFlags::HUGE_PAGE.bits(),
        );
    }
    m.write_entry(0x9_0000, 510, 0x9_0000 | P);
    m.take_over(&pc_map(8 * MIB)).expect("take-over");
    m.exercise();
}

#[test]
fn a_misaligned_physical_memory_offset_is_refused() {
    let m = Machine::new(8 << 20, 0x9_0000);
    let off = m.platform.physical_memory_offset() + 8u64;
    let err = m.take_over_at(&pc_map(8 * MIB), off).unwrap_err();
    assert_eq!(
        err,
        TakeOverError::MisalignedPhysicalMemoryOffset { offset: off }
    );
    assert!(
        std::format!("{err}").contains(&std::format!("{:#x}", off.as_u64())),
        "{err}"
    );
    // Nothing was set up: the right offset then takes over.
    m.take_over(&pc_map(8 * MIB)).expect("take-over");
    m.exercise();
}

/// Maps with no or next to no usable memory are refused with the reason, not turned into a heap that
/// fails its first allocation; a refused take-over can be retried with a good map.
#[test]
fn too_little_memory_is_refused_and_a_retry_works() {
    let m = Machine::new(4 << 20, 0x9_0000);
    for map in [
        std::vec![],
        std::vec![usable(0x1000, 0x9_0000)],
        std::vec![usable(2 * MIB, 2 * MIB)],
        std::vec![usable(MIB + 1, MIB + 8191)],
    ] {
        assert_eq!(
            m.take_over(&map).unwrap_err(),
            TakeOverError::Frames(FrameInitError::NoUsableMemory),
            "{map:?}"
        );
    }
    for bytes in [4096, 16 << 10, 64 << 10, 200 << 10] {
        let err = m.take_over(&[usable(MIB, MIB + bytes)]).unwrap_err();
        assert!(
            matches!(err, TakeOverError::TooLittleMemory { managed, minimum }
                if managed.bytes() < bytes && minimum == MIN_FRAMES),
            "{bytes:#x}: {err:?}"
        );
        let text = std::format!("{err}");
        assert!(text.contains("leaves the heap"), "{text}");
    }
    m.take_over(&[usable(MIB, 2 * MIB)]).expect("1 MiB");
    m.exercise();
}

/// A hostile map: overlaps, zero-length and unaligned regions, reserved inside usable; no frame touched
/// by a reserved region is ever handed out.
#[test]
fn a_hostile_map_hands_out_no_reserved_frame() {
    let m = Machine::new(16 << 20, 0x9_0000);
    let mut map = pc_map(12 * MIB);
    map.extend([
        usable(10 * MIB, 16 * MIB),             // overlaps the last usable one
        reserved(4 * MIB + 100, 4 * MIB + 101), // one byte
        reserved(6 * MIB, 6 * MIB),             // zero-length reserved
        usable(7 * MIB + 1, 7 * MIB + 2),       // inside usable, unaligned
        reserved(9 * MIB - 1, 9 * MIB + 4097),  // straddles frame boundaries
        region(13 * MIB, 14 * MIB, RegionKind::Reserved("acpi")), // reserved inside usable
    ]);
    m.take_over(&map).expect("take-over");
    m.exercise();
    let bad = |f: PhysFrame| {
        let a = f.start_address().as_u64();
        a == 4 * MIB
            || a == 9 * MIB - 4096
            || a == 9 * MIB
            || a == 9 * MIB + 4096
            || (13 * MIB..14 * MIB).contains(&a)
            || !(MIB..16 * MIB).contains(&a)
    };
    let mut n = 0;
    while let Some(f) = m
        .heap
        .allocate_frames(crate::FrameCount(1), crate::FrameCount(1))
    {
        assert!(!bad(f), "{f:?}");
        n += 1;
    }
    assert!(n > 1000, "{n}");
}

/// Firmware maps of thousands of small regions: the sweep is quadratic, but a few thousand stay fast.
#[test]
fn thousands_of_tiny_regions_take_over() {
    let m = Machine::new(64 << 20, 0x9_0000);
    let mut map = pc_map(2 * MIB);
    for i in 0..3000 {
        let s = 2 * MIB + i * 8192;
        map.push(usable(s, s + 4096));
        map.push(reserved(s + 4096, s + 8192));
    }
    map.push(usable(2 * MIB + 3000 * 8192, 64 * MIB));
    let t = m.take_over(&map).expect("take-over");
    assert!(t.frames.managed.0 > 3000, "{t}");
    m.exercise();
}
