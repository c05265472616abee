//! Turning the boot memory map into segments: sorted, disjoint, maximal runs of frames of one class.
//!
//! Invariants of what [`Sweep`] yields:
//! - Segments are sorted, contiguous (the first starts at frame 0, each next one where the previous ended)
//!   and maximal (neighbours never share a class). They end at the highest frame any region touches.
//! - A frame is usable (`Managed`, or `Low` below 1 MiB) only if one usable region contains the whole frame
//!   and no reserved region touches any byte of it. Usable regions therefore shrink to whole frames and
//!   reserved ones grow to whole frames; a frame only partly covered by usable regions is a `Hole`.
//! - Where reserved regions overlap, the frame is reported with the reason of the first one in map order.
//!
//! The map is neither sorted nor disjoint and there is no heap yet, so the sweep re-reads the (cloned)
//! region iterator for every boundary: O(regions²), fine for the few hundred entries firmware reports.
//! The map is swept twice (once to size the metadata, once to store it); both sweeps see the same regions
//! because cloning the iterator must replay it.

use super::{MemoryRegion, RegionKind};
use crate::addr::FRAME_SIZE;

/// Frames below this number (1 MiB) are kept for `allocate_low`.
pub(super) const LOW_LIMIT: u64 = (1 << 20) / FRAME_SIZE;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Class {
    /// Usable, at or above 1 MiB: handed out by `allocate`.
    Managed,
    /// Usable, below 1 MiB: only handed out by `allocate_low`.
    Low,
    /// Usable, but holds the frame allocator's own metadata (set by the allocator, never by the sweep).
    Metadata,
    /// Touched by a reserved region.
    Reserved(&'static str),
    /// Not wholly inside any usable region.
    Hole,
}

#[derive(Clone, Copy, Debug)]
pub(super) struct Segment {
    /// First frame number.
    pub start: u64,
    /// Frame number one past the last.
    pub end: u64,
    pub class: Class,
}

impl Segment {
    pub fn len(&self) -> u64 {
        self.end - self.start
    }
}

/// The frames `[a, b)` a region speaks for, `None` if it covers no frame.
fn frame_span(r: &MemoryRegion) -> Option<(u64, u64)> {
    let (s, e) = (r.start.as_u64(), r.end.as_u64());
    let (a, b) = match r.kind {
        RegionKind::Usable => (s.div_ceil(FRAME_SIZE), e / FRAME_SIZE),
        RegionKind::Reserved(_) => (s / FRAME_SIZE, e.div_ceil(FRAME_SIZE)),
    };
    (a < b).then_some((a, b))
}

pub(super) struct Sweep<I> {
    regions: I,
    cursor: u64,
    end: u64,
}

impl<I: Iterator<Item = MemoryRegion> + Clone> Sweep<I> {
    pub fn new(regions: I) -> Self {
        let end = regions
            .clone()
            .filter_map(|r| frame_span(&r))
            .map(|(_, b)| b)
            .max()
            .unwrap_or(0);
        Sweep {
            regions,
            cursor: 0,
            end,
        }
    }

    /// The smallest frame number after `after` where some region (or the 1 MiB line) begins or ends.
    fn next_boundary(&self, after: u64) -> u64 {
        let mut best = self.end;
        if LOW_LIMIT > after {
            best = best.min(LOW_LIMIT);
        }
        for (a, b) in self.regions.clone().filter_map(|r| frame_span(&r)) {
            for x in [a, b] {
                if x > after && x < best {
                    best = x;
                }
            }
        }
        best
    }

    pub fn class_at(&self, frame: u64) -> Class {
        let mut usable = false;
        for r in self.regions.clone() {
            let Some((a, b)) = frame_span(&r) else {
                continue;
            };
            if a <= frame && frame < b {
                match r.kind {
                    RegionKind::Reserved(why) => return Class::Reserved(why),
                    RegionKind::Usable => usable = true,
                }
            }
        }
        match (usable, frame < LOW_LIMIT) {
            (true, true) => Class::Low,
            (true, false) => Class::Managed,
            (false, _) => Class::Hole,
        }
    }
}

impl<I: Iterator<Item = MemoryRegion> + Clone> Iterator for Sweep<I> {
    type Item = Segment;

    fn next(&mut self) -> Option<Segment> {
        if self.cursor >= self.end {
            return None;
        }
        let start = self.cursor;
        let class = self.class_at(start);
        let mut end = self.next_boundary(start);
        while end < self.end && self.class_at(end) == class {
            end = self.next_boundary(end);
        }
        self.cursor = end;
        Some(Segment { start, end, class })
    }
}
