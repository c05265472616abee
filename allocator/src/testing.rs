//! Support shared by the unit tests: proptest settings, and running a frame allocator dry cheaply.
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
