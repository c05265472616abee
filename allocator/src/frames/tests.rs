use std::collections::BTreeSet;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::string::String;
use std::vec::Vec;

use proptest::prelude::*;

use super::*;
use crate::pagealloc::PageAlloc;

/// Fake physical memory on the heap: physical address `p` is byte `p` of the buffer.
pub(crate) struct FakePhys {
    mem: Vec<u64>,
}

impl FakePhys {
    pub(crate) fn new(bytes: usize) -> Self {
        FakePhys {
            mem: std::vec![0; bytes / 8],
        }
    }
    pub(crate) fn offset(&mut self) -> VirtAddr {
        VirtAddr::from_ptr(self.mem.as_mut_ptr())
    }
    pub(crate) fn bytes(&self) -> u64 {
        self.mem.len() as u64 * 8
    }
    /// A frame allocator over `regions`, which must lie inside this memory.
    pub(crate) fn frames(
        &mut self,
        regions: &[MemoryRegion],
    ) -> Result<FrameAllocator, FrameInitError> {
        let end = regions.iter().map(|r| r.end.as_u64()).max().unwrap_or(0);
        assert!(
            end <= self.bytes(),
            "test: memory map beyond the fake memory"
        );
        let offset = self.offset();
        // SAFETY: the buffer covers every region (checked above), lives as long as the test's allocator, and
        // nothing else uses it.
        unsafe { FrameAllocator::new(regions.iter().copied(), offset) }
    }
}

pub(crate) fn usable(start: u64, end: u64) -> MemoryRegion {
    MemoryRegion {
        start: PhysAddr::new(start),
        end: PhysAddr::new(end),
        kind: RegionKind::Usable,
    }
}

pub(crate) fn reserved(start: u64, end: u64, why: &'static str) -> MemoryRegion {
    MemoryRegion {
        start: PhysAddr::new(start),
        end: PhysAddr::new(end),
        kind: RegionKind::Reserved(why),
    }
}

/// The frame numbers at or above 1 MiB the model says are usable: wholly inside one usable region, touching
/// no reserved one.
fn model_usable(regions: &[MemoryRegion], low: bool) -> BTreeSet<u64> {
    let end = regions
        .iter()
        .map(|r| r.end.as_u64())
        .max()
        .unwrap_or(0)
        .div_ceil(FRAME_SIZE);
    let range = if low {
        1..LOW_LIMIT.min(end)
    } else {
        LOW_LIMIT..end.max(LOW_LIMIT)
    };
    range
        .filter(|&f| {
            let (a, b) = (f * FRAME_SIZE, (f + 1) * FRAME_SIZE);
            let mut inside = false;
            for r in regions {
                let (s, e) = (r.start.as_u64(), r.end.as_u64());
                match r.kind {
                    RegionKind::Usable => inside |= s <= a && b <= e,
                    RegionKind::Reserved(_) => {
                        if s < b && a < e {
                            return false;
                        }
                    }
                }
            }
            inside
        })
        .collect()
}

fn drain(frames: &mut FrameAllocator) -> Vec<u64> {
    core::iter::from_fn(|| frames.allocate())
        .map(number)
        .collect()
}

fn panic_message(f: impl FnOnce()) -> String {
    let err = catch_unwind(AssertUnwindSafe(f)).expect_err("expected a panic");
    match err.downcast::<String>() {
        Ok(s) => *s,
        Err(e) => String::from(*e.downcast::<&str>().expect("panic payload is a string")),
    }
}

/// Every frame handed out is model-usable and handed out once; together with the metadata they are exactly
/// the model's usable frames. Under Miri, where a frame costs tens of milliseconds, only the first few
/// frames are taken, and checked to be usable, distinct and not metadata.
fn check_against_model(regions: &[MemoryRegion], frames: &mut FrameAllocator) {
    let expected = model_usable(regions, false);
    let (meta, meta_count) = frames.metadata();
    let meta: BTreeSet<u64> = (number(meta)..number(meta) + meta_count.0).collect();
    assert!(
        meta.is_subset(&expected),
        "metadata frames {meta:?} are not all usable"
    );
    assert_eq!(frames.managed().0 as usize, expected.len() - meta.len());
    assert_eq!(frames.free_frames(), frames.managed());
    let got = if cfg!(miri) {
        core::iter::from_fn(|| frames.allocate())
            .take(24)
            .map(number)
            .collect()
    } else {
        drain(frames)
    };
    let unique: BTreeSet<u64> = got.iter().copied().collect();
    assert_eq!(unique.len(), got.len(), "a frame was handed out twice");
    assert!(unique.is_disjoint(&meta), "metadata frame handed out");
    if cfg!(miri) {
        assert!(unique.is_subset(&expected), "unusable frame handed out");
        return;
    }
    let mut all = unique;
    all.extend(&meta);
    assert_eq!(all, expected);
    assert_eq!(frames.free_frames(), FrameCount(0));
}

#[test]
fn unsorted_overlapping_unaligned_map() {
    let mut mem = FakePhys::new(8 << 20);
    let regions = [
        reserved(0x48_0000, 0x48_1001, "bootloader"), // touches 2 frames
        usable(0x30_0000, 0x50_0000),                 // overlaps the next one
        usable(0x10_0800, 0x40_0000),                 // unaligned start: first frame 0x101000
        reserved(0x20_0010, 0x20_0020, "firmware"),   // 16 bytes still take frame 0x200000
        usable(0x60_0000, 0x60_1fff),                 // unaligned end: only frame 0x600000
        usable(0, 0x9_f000),
        reserved(0x70_0000, 0x70_0000, "empty"), // covers nothing
    ];
    let mut frames = mem.frames(&regions).unwrap();
    let report = frames.report();
    assert_eq!(report.reserved_for("bootloader"), FrameCount(2));
    assert_eq!(report.reserved_for("firmware"), FrameCount(1));
    assert_eq!(report.reserved_for("empty"), FrameCount(0));
    assert_eq!(report.reserved_for(LOW_REASON), FrameCount(0x9f));
    let meta = frames.metadata().1;
    assert_eq!(report.reserved_for(METADATA_REASON), meta);
    // [0x101, 0x500) less three reserved frames, plus frame 0x600.
    assert_eq!(frames.managed().0 + meta.0, 0x500 - 0x101 - 3 + 1);
    let text = std::format!("{report}");
    assert!(
        text.contains("bootloader") && text.contains(METADATA_REASON) && text.contains("free"),
        "{text}"
    );
    check_against_model(&regions, &mut frames);
}

#[test]
fn bad_maps_are_refused() {
    let mut mem = FakePhys::new(2 << 20);
    let inverted = [usable(0x10_0000, 0x20_0000), usable(0x18_0000, 0x17_0000)];
    assert!(matches!(
        mem.frames(&inverted),
        Err(FrameInitError::InvertedRegion { .. })
    ));
    let low_only = [usable(0, 0x9_f000), usable(0x10_0800, 0x10_1700)];
    assert_eq!(
        mem.frames(&low_only).err(),
        Some(FrameInitError::NoUsableMemory)
    );
    if cfg!(miri) {
        // Sweeping the map below takes Miri over a minute, and it fails before any unsafe code runs.
        return;
    }
    // 100 single usable frames: the segment table alone (~200 entries) needs more than one frame.
    let scattered: Vec<_> = (0..100)
        .map(|i| usable(0x10_0000 + i * 0x2000, 0x10_1000 + i * 0x2000))
        .collect();
    let err = mem.frames(&scattered).err().expect("metadata cannot fit");
    assert!(
        matches!(
            err,
            FrameInitError::NoRoomForMetadata {
                largest_run: FrameCount(1),
                ..
            }
        ),
        "{err}"
    );
    assert!(std::format!("{err}").contains("largest usable run has 1 frames"));
}

#[test]
fn allocate_all_then_free_all() {
    let mut mem = FakePhys::new(8 << 20);
    // Some 1800 frames; under Miri (tens of milliseconds a frame) 64.
    let top = if cfg!(miri) { 0x14_0000 } else { 0x80_0000 };
    let regions = [usable(0, 0x9_f000), usable(0x10_0000, top)];
    let mut frames = mem.frames(&regions).unwrap();
    let managed = frames.managed();
    let first = drain(&mut frames);
    assert_eq!(first.len() as u64, managed.0);
    for &f in &first {
        frames.free(frame(f));
    }
    assert_eq!(frames.free_frames(), managed);
    let second = drain(&mut frames);
    assert_eq!(second.len(), first.len());
    assert_eq!(
        second.iter().collect::<BTreeSet<_>>(),
        first.iter().collect::<BTreeSet<_>>()
    );
}

#[test]
fn contiguous_with_2mib_alignment() {
    // Under Miri (where the model's frame sets are slow to build) 8 MiB: two 2 MiB runs still fit below
    // the reserved frame at 6 MiB.
    let top = if cfg!(miri) { 0x80_0000 } else { 0x100_0000 };
    let mut mem = FakePhys::new(top as usize);
    let regions = [
        usable(0x10_0000, top),
        reserved(0x60_0000, 0x60_1000, "bootloader"),
    ];
    let mut frames = mem.frames(&regions).unwrap();
    let before = frames.free_frames();
    let (two_mib, one) = (FrameCount(512), FrameCount(1));
    let a = frames
        .allocate_contiguous(two_mib, two_mib)
        .expect("a 2 MiB run");
    assert!(a.start_address().is_aligned(2u64 << 20));
    let b = frames
        .allocate_contiguous(two_mib, two_mib)
        .expect("a second 2 MiB run");
    assert!(b.start_address().is_aligned(2u64 << 20));
    let usable_set = model_usable(&regions, false);
    for f in [a, b] {
        assert!(
            (number(f)..number(f) + 512).all(|n| usable_set.contains(&n)),
            "run at {f:?} not usable"
        );
    }
    assert_ne!(a, b);
    assert_eq!(frames.free_frames().0, before.0 - 1024);
    assert!(
        frames.allocate_contiguous(FrameCount(4096), one).is_none(),
        "larger than memory"
    );
    frames.free_contiguous(a, two_mib);
    frames.free_contiguous(b, two_mib);
    assert_eq!(frames.free_frames(), before);
    let msg = panic_message(|| {
        frames.allocate_contiguous(one, FrameCount(3));
    });
    assert!(
        msg.contains("alignment 3 frames is not a power of two"),
        "{msg}"
    );
}

#[test]
fn bad_frees_panic_with_reason() {
    let mut mem = FakePhys::new(8 << 20);
    let regions = [
        usable(0, 0x9_f000),
        reserved(0xf_0000, 0x10_0000, "firmware"),
        usable(0x10_0000, 0x60_0000),
        reserved(0x40_0000, 0x40_2000, "bootloader"),
    ];
    let mut frames = mem.frames(&regions).unwrap();
    let f = frames.allocate().unwrap();
    frames.free(f);
    let msg = panic_message(|| frames.free(f));
    assert_eq!(
        msg,
        std::format!(
            "frames: double free of frame {:#x}",
            f.start_address().as_u64()
        )
    );

    let cases = [
        (0x40_1000, "bootloader"),
        (0xf_f000, "firmware"),
        (0x0, LOW_REASON),
        (0x9_f000, HOLE_REASON),
        (0x70_0000, BEYOND_REASON),
        (
            frames.metadata().0.start_address().as_u64(),
            METADATA_REASON,
        ),
    ];
    for (addr, why) in cases {
        let msg = panic_message(|| frames.free(frame(addr / FRAME_SIZE)));
        assert_eq!(
            msg,
            std::format!("frames: free of unmanaged frame {addr:#x} (reserved: {why})")
        );
    }
    // A range running off the end of its managed run names the first frame outside it.
    let msg =
        panic_message(|| frames.free_contiguous(frame(0x3f_f000 / FRAME_SIZE), FrameCount(2)));
    assert_eq!(
        msg,
        "frames: free of unmanaged frame 0x400000 (reserved: bootloader)"
    );
    // A double free inside a range is caught before anything changes.
    let run = frames
        .allocate_contiguous(FrameCount(4), FrameCount(4))
        .unwrap();
    frames.free(frame(number(run) + 2));
    let free = frames.free_frames();
    let msg = panic_message(|| frames.free_contiguous(run, FrameCount(4)));
    assert_eq!(
        msg,
        std::format!(
            "frames: double free of frame {:#x}",
            (number(run) + 2) * FRAME_SIZE
        )
    );
    assert_eq!(frames.free_frames(), free);
}

#[test]
fn allocate_low_stays_below_1mib() {
    let mut mem = FakePhys::new(4 << 20);
    // Under Miri (tens of milliseconds a frame) few general frames to drain at the end.
    let top = if cfg!(miri) { 0x12_0000 } else { 0x40_0000 };
    let regions = [
        usable(0, 0x9_f000),
        usable(0x10_0000, top),
        reserved(0x5000, 0x6000, "bios"),
    ];
    let mut frames = mem.frames(&regions).unwrap();
    let general = frames.free_frames();
    let low: Vec<u64> = core::iter::from_fn(|| frames.allocate_low())
        .map(number)
        .collect();
    assert_eq!(
        low.iter().copied().collect::<BTreeSet<_>>(),
        model_usable(&regions, true)
    );
    assert_eq!(low.len(), 0x9e - 1, "frames 1..0x9f except the bios frame");
    assert!(low.iter().all(|&f| f > 0 && f < LOW_LIMIT));
    assert_eq!(
        frames.free_frames(),
        general,
        "allocate_low took a general frame"
    );
    assert_eq!(frames.report().low_free, FrameCount(0));
    frames.free(frame(low[3]));
    assert_eq!(frames.allocate_low(), Some(frame(low[3])));
    frames.free(frame(low[3]));
    let msg = panic_message(|| frames.free(frame(low[3])));
    assert_eq!(
        msg,
        std::format!("frames: double free of frame {:#x}", low[3] * FRAME_SIZE)
    );
    assert!(
        drain(&mut frames).iter().all(|&f| f >= LOW_LIMIT),
        "allocate handed out a low frame"
    );
}

#[test]
fn traits_and_zeroing() {
    use x86_64::structures::paging::{FrameAllocator as _, FrameDeallocator as _};
    let mut mem = FakePhys::new(4 << 20);
    let offset = mem.offset();
    let mut frames = mem.frames(&[usable(0x10_0000, 0x40_0000)]).unwrap();
    let f = frames.allocate_frame().unwrap();
    let ptr = (offset + f.start_address().as_u64()).as_mut_ptr::<u8>();
    // SAFETY: the frame is ours and lies in the fake memory.
    unsafe { ptr.write_bytes(0xAB, FRAME_SIZE as usize) };
    // SAFETY: the frame is no longer used.
    unsafe { frames.deallocate_frame(f) };
    let g = frames.allocate_zeroed().unwrap();
    assert_eq!(g, f, "first fit hands the same frame back");
    // SAFETY: as above.
    let bytes = unsafe { core::slice::from_raw_parts(ptr, FRAME_SIZE as usize) };
    assert!(bytes.iter().all(|&b| b == 0));
}

fn arb_region() -> impl Strategy<Value = MemoryRegion> {
    let kinds = prop_oneof![
        6 => Just(RegionKind::Usable),
        1 => Just(RegionKind::Reserved("bootloader")),
        1 => Just(RegionKind::Reserved("firmware")),
    ];
    (0u64..6 << 20, 0u64..3 << 20, kinds, any::<bool>()).prop_map(|(start, len, kind, aligned)| {
        let (start, len) = if aligned {
            (start & !0xfff, len & !0xfff)
        } else {
            (start, len)
        };
        MemoryRegion {
            start: PhysAddr::new(start),
            end: PhysAddr::new(start + len),
            kind,
        }
    })
}

proptest! {
    #![proptest_config(crate::testing::proptest_config(if cfg!(miri) { 1 } else { 128 }))]
    #[test]
    fn random_maps_match_the_model(regions in proptest::collection::vec(arb_region(), 1..12)) {
        let mut mem = FakePhys::new(9 << 20);
        match mem.frames(&regions) {
            Ok(mut frames) => {
                let low_expected = model_usable(&regions, true);
                check_against_model(&regions, &mut frames);
                let low: BTreeSet<u64> = core::iter::from_fn(|| frames.allocate_low()).map(number).collect();
                prop_assert_eq!(low, low_expected);
            }
            Err(FrameInitError::NoUsableMemory) => prop_assert!(model_usable(&regions, false).is_empty()),
            Err(FrameInitError::NoRoomForMetadata { needed, .. }) => {
                // Only when no usable run is long enough: the model must agree there is none.
                let usable = model_usable(&regions, false);
                let longest = usable.iter().fold((0u64, 0u64, 0u64), |(best, run, prev), &f| {
                    let run = if run > 0 && f == prev + 1 { run + 1 } else { 1 };
                    (best.max(run), run, f)
                }).0;
                prop_assert!(longest < needed.0);
                prop_assert!(needed.0 >= FrameCount::covering(PageAlloc::storage_bytes(1) as u64).0);
            }
            Err(e) => prop_assert!(false, "unexpected error {}", e),
        }
    }
}
