//! Support shared by the unit tests: proptest settings, running a frame allocator dry cheaply, and a
//! seeded random generator.
//!
//! Under Miri property tests persist no failures: the regression files are found through the working
//! directory, which Miri's isolation hides (the Miri run keeps isolation on; see README.md).

use std::vec::Vec;

use proptest::test_runner::Config;

use crate::addr::{FrameCount, PhysFrame};
use crate::frames::FrameAllocator;

/// Proptest settings with `cases` cases; failure persistence as proptest's default, off under Miri.
pub(crate) fn proptest_config(cases: u32) -> Config {
    Config {
        cases,
        failure_persistence: if cfg!(miri) {
            None
        } else {
            Config::default().failure_persistence
        },
        ..Config::default()
    }
}

/// Takes all but `keep` of the free frames in a few contiguous runs, so that running out of frames costs a
/// test a handful of operations instead of one per frame (minutes under Miri). Give them back with
/// `free_contiguous`.
pub(crate) fn hoard_all_but(
    frames: &mut FrameAllocator,
    keep: u64,
) -> Vec<(PhysFrame, FrameCount)> {
    let mut hoard = Vec::new();
    let mut want = frames.free_frames().0.saturating_sub(keep);
    while want > 0 {
        let mut n = want;
        let run = loop {
            if let Some(run) = frames.allocate_contiguous(FrameCount(n), FrameCount(1)) {
                break run;
            }
            n /= 2;
            assert!(n > 0, "test: free frames counted but none allocatable");
        };
        hoard.push((run, FrameCount(n)));
        want -= n;
    }
    hoard
}

/// Takes frames from `heap`'s frame allocator, never through the heap's retry (which would unmap its
/// free pages), until fewer than an eighth of the frames it manages are free: below the quarter under
/// which the scavenger's policy acts (pageheap.rs, "Scavenging"). Returns them for [`give_back_frames`].
pub(crate) fn squeeze_frames<P: crate::Platform, const F: bool>(
    heap: &crate::Heap<P, F>,
) -> Vec<(crate::addr::PhysFrame, crate::addr::FrameCount)> {
    // SAFETY: takes free frames only: no mapping changes and nothing the heap uses is freed.
    unsafe {
        heap.with_address_space(|s| {
            let keep = s.frames.managed().0 / 8 - 1;
            hoard_all_but(&mut s.frames, keep)
        })
    }
    .expect("a mapped heap")
}

/// Gives back the frames [`squeeze_frames`] took.
pub(crate) fn give_back_frames<P: crate::Platform, const F: bool>(
    heap: &crate::Heap<P, F>,
    held: Vec<(crate::addr::PhysFrame, crate::addr::FrameCount)>,
) {
    // SAFETY: frames `squeeze_frames` took from this heap's allocator, each run given back once, unused.
    unsafe {
        heap.with_address_space(|s| {
            for (first, count) in held {
                s.frames.free_contiguous(first, count);
            }
        })
    };
}

/// `unsafe impl Platform for $name` where `$name` wraps a `&'static HostPlatform` (field 0): every method
/// goes to the host platform; the associated consts are the ones given (the trait's defaults otherwise).
/// For tests that need the host machine with another CPU limit or another interrupt contract.
macro_rules! host_platform_wrapper {
    ($name:ident { $($consts:item)* }) => {
        // SAFETY: every duty is the host platform's, which keeps its promises; the consts given make
        // the heap guard the same or more (callers say why in their own comment).
        unsafe impl $crate::platform::Platform for $name {
            type InterruptGuard =
                <$crate::host::HostPlatform as $crate::platform::Platform>::InterruptGuard;
            $($consts)*
            fn cpu_index(&self) -> usize {
                self.0.cpu_index()
            }
            fn cpu_index_slow(&self) -> usize {
                self.0.cpu_index_slow()
            }
            fn mask_interrupts(&self) -> Self::InterruptGuard {
                self.0.mask_interrupts()
            }
            fn physical_memory_offset(&self) -> $crate::addr::VirtAddr {
                self.0.physical_memory_offset()
            }
            fn page_mapped(&self, page: $crate::addr::Page, frame: $crate::addr::PhysFrame) {
                self.0.page_mapped(page, frame)
            }
            fn pages_mapped(
                &self,
                start: $crate::addr::Page,
                frame: $crate::addr::PhysFrame,
                count: u64,
            ) {
                self.0.pages_mapped(start, frame, count)
            }
            fn pages_unmapped(&self, start: $crate::addr::Page, count: u64) {
                self.0.pages_unmapped(start, count)
            }
        }
    };
}
pub(crate) use host_platform_wrapper;

/// xorshift64*: deterministic randomness from a (non-zero) seed, so a failing seed replays; no
/// dependency, and cheap under Miri.
pub(crate) struct Rng(pub(crate) u64);

impl Rng {
    pub(crate) fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// Below `n` (> 0).
    pub(crate) fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}
