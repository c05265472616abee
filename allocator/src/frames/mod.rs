//! The physical frame allocator: hands out 4 KiB frames of the usable memory in the boot memory map.
//!
//! Invariants:
//! - Every frame is in exactly one class (see the `sweep` submodule): managed (at or above 1 MiB, wholly usable, touched
//!   by no reserved region), low (the same below 1 MiB), metadata, reserved (with the map's reason) or not
//!   usable at all. The classes are fixed at `new` and stored as a sorted segment table.
//! - `pages` (a [`PageAlloc`] with one unit per frame, units = frame numbers) marks a frame free only if it
//!   is managed and not handed out. Every other frame below its capacity stays marked in use forever, so
//!   first-fit search can never return one.
//! - Low frames never enter `pages`: a 256-bit bitmap holds those `allocate_low` may hand out. Frame 0
//!   (real-mode interrupt table, BIOS data area) is never handed out.
//! - The metadata (the `PageAlloc` storage, then the segment table) lives in frames carved from the start
//!   of the first managed run big enough, reached through the physical-memory offset, and is never freed.
//! - Frames are handed out as they are: no zeroing unless the caller asks (`allocate_zeroed`).
//! - Freeing checks ownership first: a frame that is not managed, or is already free, panics with the
//!   frame's address and the reason, before anything is changed.

mod sweep;
#[cfg(test)]
pub(crate) mod tests;

use core::fmt;
use core::ptr::NonNull;

use crate::addr::{FrameCount, PhysAddr, PhysFrame, Size4KiB, VirtAddr, FRAME_SIZE};
use crate::pagealloc::PageAlloc;
use sweep::{Class, Segment, Sweep, LOW_LIMIT};

/// Reason reported for usable frames below 1 MiB.
pub const LOW_REASON: &str = "below 1 MiB (AP trampoline, BIOS)";
/// Reason reported for the frames holding the allocator's own metadata.
pub const METADATA_REASON: &str = "frame allocator metadata";
/// Reason given for a frame that no usable region wholly covers.
const HOLE_REASON: &str = "not wholly inside a usable region of the memory map";
/// Reason given for a frame beyond every region of the memory map.
const BEYOND_REASON: &str = "beyond the end of the memory map";

/// What the memory map says about a range of physical memory.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RegionKind {
    Usable,
    /// Not to be used, and why (e.g. "bootloader", "firmware").
    Reserved(&'static str),
}

/// One entry of the boot memory map: `[start, end)`, in any order, possibly overlapping or unaligned.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MemoryRegion {
    pub start: PhysAddr,
    pub end: PhysAddr,
    pub kind: RegionKind,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FrameInitError {
    /// A region ends before it starts.
    InvertedRegion { start: PhysAddr, end: PhysAddr },
    /// No whole usable frame at or above 1 MiB.
    NoUsableMemory,
    /// No usable run is long enough for the allocator's metadata.
    NoRoomForMetadata {
        needed: FrameCount,
        largest_run: FrameCount,
    },
}

impl fmt::Display for FrameInitError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::InvertedRegion { start, end } => write!(
                f,
                "frames: memory region {:#x}..{:#x} ends before it starts",
                start.as_u64(),
                end.as_u64()
            ),
            Self::NoUsableMemory => write!(f, "frames: the memory map has no whole usable frame above 1 MiB"),
            Self::NoRoomForMetadata { needed, largest_run } => write!(
                f,
                "frames: metadata needs {needed} in one run, the largest usable run has {largest_run}"
            ),
        }
    }
}

/// Whether the memory map makes `frame` one the allocator would hand out (wholly inside a usable region,
/// touched by no reserved one; below 1 MiB too, for `allocate_low`), before any allocator is built.
pub fn usable_in_map(
    regions: impl Iterator<Item = MemoryRegion> + Clone,
    frame: PhysFrame,
) -> bool {
    matches!(
        Sweep::new(regions).class_at(number(frame)),
        Class::Managed | Class::Low
    )
}

/// The physical frame allocator. See the module documentation for its invariants.
pub struct FrameAllocator {
    pages: PageAlloc,
    /// The segment table, sorted by frame number, in the metadata frames.
    segments: NonNull<Segment>,
    segment_count: usize,
    phys_offset: VirtAddr,
    metadata: (u64, u64),
    managed: u64,
    /// Bit f set: low frame f is usable.
    low_usable: [u64; 4],
    /// Bit f set: low frame f is usable and not handed out.
    low_free: [u64; 4],
}

// SAFETY: the allocator exclusively owns its metadata frames (segments and PageAlloc storage); nothing in
// it is tied to a thread.
unsafe impl Send for FrameAllocator {}

fn frame(number: u64) -> PhysFrame {
    PhysFrame::containing_address(PhysAddr::new(number * FRAME_SIZE))
}

fn number(frame: PhysFrame) -> u64 {
    frame.start_address().as_u64() / FRAME_SIZE
}

fn bit(map: &[u64; 4], f: u64) -> bool {
    f < LOW_LIMIT && map[(f / 64) as usize] & (1 << (f % 64)) != 0
}

impl FrameAllocator {
    /// Builds the allocator from the boot memory map.
    ///
    /// `regions` must replay the same regions every time it is cloned (it is read several times).
    ///
    /// # Safety
    /// `phys_offset + p` is mapped readable and writable for every physical address `p` of every listed
    /// region, and the memory of the usable regions is really unused (the allocator writes its metadata
    /// there and hands it out) for as long as the allocator and the frames it hands out live.
    pub unsafe fn new(
        regions: impl Iterator<Item = MemoryRegion> + Clone,
        phys_offset: VirtAddr,
    ) -> Result<Self, FrameInitError> {
        if let Some(r) = regions.clone().find(|r| r.end < r.start) {
            return Err(FrameInitError::InvertedRegion {
                start: r.start,
                end: r.end,
            });
        }
        // Pass 1: size the metadata and find where it fits.
        let (mut count, mut capacity, mut largest_run) = (0usize, 0u64, 0u64);
        for seg in Sweep::new(regions.clone()) {
            count += 1;
            if seg.class == Class::Managed {
                capacity = seg.end;
                largest_run = largest_run.max(seg.len());
            }
        }
        if capacity == 0 {
            return Err(FrameInitError::NoUsableMemory);
        }
        let capacity_units = usize::try_from(capacity).expect("frames: capacity exceeds usize");
        let table_offset =
            PageAlloc::storage_bytes(capacity_units).next_multiple_of(align_of::<Segment>());
        // Carving the metadata out splits one segment in two: one more entry than pass 1 counted.
        let table_len = count + 1;
        let meta_bytes = table_offset + table_len * size_of::<Segment>();
        let needed = FrameCount::covering(meta_bytes as u64);
        let host = Sweep::new(regions.clone())
            .find(|s| s.class == Class::Managed && s.len() >= needed.0)
            .ok_or(FrameInitError::NoRoomForMetadata {
                needed,
                largest_run: FrameCount(largest_run),
            })?;
        let metadata = (host.start, host.start + needed.0);
        let base = phys_offset + metadata.0 * FRAME_SIZE;
        let storage = NonNull::new(base.as_mut_ptr::<u8>()).expect("frames: metadata at address 0");
        let table = (base + table_offset as u64).as_mut_ptr::<Segment>();

        // Pass 2: store the segment table, with the metadata carved out.
        let mut stored = 0;
        let mut push = |seg: Segment| {
            assert!(
                stored < table_len,
                "frames: memory map changed between sweeps"
            );
            // SAFETY: `table + stored` lies inside the metadata frames (sized for `table_len` entries above),
            // which the caller guarantees are mapped at phys_offset and unused; it is 8-byte aligned.
            unsafe { table.add(stored).write(seg) };
            stored += 1;
        };
        for seg in Sweep::new(regions) {
            if seg.start == metadata.0 && seg.class == Class::Managed {
                push(Segment {
                    start: metadata.0,
                    end: metadata.1,
                    class: Class::Metadata,
                });
                if seg.end > metadata.1 {
                    push(Segment {
                        start: metadata.1,
                        end: seg.end,
                        class: Class::Managed,
                    });
                }
            } else {
                push(seg);
            }
        }

        // SAFETY: the storage is frame-aligned, lies in the metadata frames (mapped, unused, big enough for
        // `storage_bytes(capacity)`, all of it backed), and is owned by the allocator from now on.
        let pages = unsafe { PageAlloc::new(storage, capacity_units) };
        let mut this = FrameAllocator {
            pages,
            segments: NonNull::new(table).expect("frames: segment table at address 0"),
            segment_count: stored,
            phys_offset,
            metadata,
            managed: 0,
            low_usable: [0; 4],
            low_free: [0; 4],
        };
        this.pages.grow(capacity_units);
        for i in 0..this.segment_count {
            let seg = this.segment_table()[i];
            match seg.class {
                Class::Managed => {
                    this.pages.free(seg.start as usize, seg.len() as usize);
                    this.managed += seg.len();
                }
                Class::Low => {
                    for f in seg.start.max(1)..seg.end {
                        this.low_usable[(f / 64) as usize] |= 1 << (f % 64);
                    }
                }
                _ => {}
            }
        }
        this.low_free = this.low_usable;
        Ok(this)
    }

    fn segment_table(&self) -> &[Segment] {
        // SAFETY: `segments` points at `segment_count` initialised entries in the metadata frames, which this
        // allocator owns and never frees or writes again.
        unsafe { core::slice::from_raw_parts(self.segments.as_ptr(), self.segment_count) }
    }

    fn segment_of(&self, f: u64) -> Option<&Segment> {
        let table = self.segment_table();
        let i = table.partition_point(|s| s.end <= f);
        table.get(i)
    }

    /// Why frame `f` is not handed out by `allocate`.
    fn reason(&self, f: u64) -> &'static str {
        match self.segment_of(f).map(|s| s.class) {
            Some(Class::Reserved(why)) => why,
            Some(Class::Low) => LOW_REASON,
            Some(Class::Metadata) => METADATA_REASON,
            Some(Class::Hole) => HOLE_REASON,
            Some(Class::Managed) => "managed",
            None => BEYOND_REASON,
        }
    }

    /// One free frame, not zeroed.
    pub fn allocate(&mut self) -> Option<PhysFrame> {
        self.pages.alloc(1, 1).map(|u| frame(u as u64))
    }

    /// One free frame, filled with zeroes.
    pub fn allocate_zeroed(&mut self) -> Option<PhysFrame> {
        let f = self.allocate()?;
        let ptr = (self.phys_offset + f.start_address().as_u64()).as_mut_ptr::<u8>();
        // SAFETY: the frame was just handed out, so nothing else uses it, and `new`'s contract maps it at
        // phys_offset.
        unsafe { ptr.write_bytes(0, FRAME_SIZE as usize) };
        Some(f)
    }

    /// `count` contiguous free frames, the first a multiple of `align` frames (a power of two; 512 = 2 MiB).
    pub fn allocate_contiguous(
        &mut self,
        count: FrameCount,
        align: FrameCount,
    ) -> Option<PhysFrame> {
        assert!(count.0 > 0, "frames: allocate_contiguous of 0 frames");
        assert!(
            align.0.is_power_of_two(),
            "frames: allocate_contiguous of {count}: alignment {} frames is not a power of two",
            align.0
        );
        let n = usize::try_from(count.0).ok()?;
        let a = usize::try_from(align.0).ok()?;
        self.pages.alloc(n, a).map(|u| frame(u as u64))
    }

    /// One usable frame below 1 MiB (never frame 0), e.g. for the SMP trampoline. Not zeroed.
    pub fn allocate_low(&mut self) -> Option<PhysFrame> {
        let (word, bits) = self.low_free.iter().enumerate().find(|(_, w)| **w != 0)?;
        let f = word as u64 * 64 + u64::from(bits.trailing_zeros());
        self.low_free[word] &= !(1 << (f % 64));
        Some(frame(f))
    }

    /// Returns a frame from `allocate`, `allocate_zeroed` or `allocate_low`.
    /// Panics on a double free or a frame this allocator does not manage.
    pub fn free(&mut self, frame: PhysFrame) {
        self.free_contiguous(frame, FrameCount(1));
    }

    /// Returns `count` frames starting at `first` (e.g. from `allocate_contiguous`).
    /// Panics, before changing anything, if one of them is free already or not managed.
    pub fn free_contiguous(&mut self, first: PhysFrame, count: FrameCount) {
        let start = number(first);
        let end = start
            .checked_add(count.0)
            .expect("frames: free_contiguous range overflows");
        if bit(&self.low_usable, start) {
            for f in start..end {
                if !bit(&self.low_usable, f) {
                    self.unmanaged(f);
                }
                if bit(&self.low_free, f) {
                    double_free(f);
                }
            }
            for f in start..end {
                self.low_free[(f / 64) as usize] |= 1 << (f % 64);
            }
            return;
        }
        if count.0 == 0 {
            return;
        }
        match self.segment_of(start) {
            Some(seg) if seg.class == Class::Managed => {
                if end > seg.end {
                    self.unmanaged(seg.end);
                }
            }
            _ => self.unmanaged(start),
        }
        if let Some(f) = (start..end).find(|&f| self.pages.is_free(f as usize)) {
            double_free(f);
        }
        self.pages.free(start as usize, count.0 as usize);
    }

    fn unmanaged(&self, f: u64) -> ! {
        panic!(
            "frames: free of unmanaged frame {:#x} (reserved: {})",
            f * FRAME_SIZE,
            self.reason(f)
        )
    }

    /// Whether `frame` is one this allocator hands out (managed or low), whether or not it is free now.
    pub fn manages(&self, frame: PhysFrame) -> bool {
        let f = number(frame);
        bit(&self.low_usable, f)
            || self
                .segment_of(f)
                .is_some_and(|s| s.class == Class::Managed)
    }

    /// Whether `frame` is one this allocator manages and holds free now (it would hand it out next).
    pub fn is_free(&self, frame: PhysFrame) -> bool {
        let f = number(frame);
        if bit(&self.low_usable, f) {
            return bit(&self.low_free, f);
        }
        self.manages(frame) && usize::try_from(f).is_ok_and(|u| self.pages.is_free(u))
    }

    /// Frames `allocate` can still hand out.
    pub fn free_frames(&self) -> FrameCount {
        FrameCount(self.pages.free_count() as u64)
    }

    /// Frames `allocate` hands out (free or not): usable frames at or above 1 MiB minus the metadata.
    pub fn managed(&self) -> FrameCount {
        FrameCount(self.managed)
    }

    /// The frames holding the allocator's metadata.
    pub fn metadata(&self) -> (PhysFrame, FrameCount) {
        (
            frame(self.metadata.0),
            FrameCount(self.metadata.1 - self.metadata.0),
        )
    }

    /// Where physical memory is mapped (as given to `new`).
    pub fn phys_offset(&self) -> VirtAddr {
        self.phys_offset
    }

    pub fn report(&self) -> FrameReport {
        let mut r = FrameReport {
            managed: self.managed(),
            free: self.free_frames(),
            low_free: FrameCount(
                self.low_free
                    .iter()
                    .map(|w| u64::from(w.count_ones()))
                    .sum(),
            ),
            reserved: [("", FrameCount(0)); REPORT_REASONS],
            reasons: 0,
            other_reserved: FrameCount(0),
        };
        for seg in self.segment_table() {
            let why = match seg.class {
                Class::Reserved(why) => why,
                Class::Low => LOW_REASON,
                Class::Metadata => METADATA_REASON,
                Class::Managed | Class::Hole => continue,
            };
            r.add_reserved(why, FrameCount(seg.len()));
        }
        r
    }
}

fn double_free(f: u64) -> ! {
    panic!("frames: double free of frame {:#x}", f * FRAME_SIZE)
}

// SAFETY: `allocate` only returns frames marked free, and marks them in use: each is handed out once until
// it is freed.
unsafe impl x86_64::structures::paging::FrameAllocator<Size4KiB> for FrameAllocator {
    fn allocate_frame(&mut self) -> Option<PhysFrame> {
        self.allocate()
    }
}

impl x86_64::structures::paging::FrameDeallocator<Size4KiB> for FrameAllocator {
    unsafe fn deallocate_frame(&mut self, frame: PhysFrame) {
        self.free(frame);
    }
}

/// Distinct reserved reasons a [`FrameReport`] lists; further ones are summed as "other".
pub const REPORT_REASONS: usize = 16;

/// Frame counts at one moment: managed, free, and reserved frames by reason.
#[derive(Clone, Copy, Debug)]
pub struct FrameReport {
    pub managed: FrameCount,
    pub free: FrameCount,
    /// Low frames `allocate_low` can still hand out (counted under [`LOW_REASON`] too).
    pub low_free: FrameCount,
    reserved: [(&'static str, FrameCount); REPORT_REASONS],
    reasons: usize,
    /// Reserved frames whose reason did not fit in the table.
    pub other_reserved: FrameCount,
}

impl FrameReport {
    fn add_reserved(&mut self, why: &'static str, n: FrameCount) {
        if let Some(slot) = self.reserved[..self.reasons]
            .iter_mut()
            .find(|(w, _)| *w == why)
        {
            slot.1 = slot.1 + n;
        } else if self.reasons < REPORT_REASONS {
            self.reserved[self.reasons] = (why, n);
            self.reasons += 1;
        } else {
            self.other_reserved = self.other_reserved + n;
        }
    }

    /// Reserved frames by reason, in address order of first appearance.
    pub fn reserved(&self) -> impl Iterator<Item = (&'static str, FrameCount)> + '_ {
        self.reserved[..self.reasons].iter().copied()
    }

    /// Reserved frames with this reason.
    pub fn reserved_for(&self, why: &str) -> FrameCount {
        self.reserved()
            .find(|(w, _)| *w == why)
            .map_or(FrameCount(0), |(_, n)| n)
    }
}

impl fmt::Display for FrameReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "frames managed: {}", self.managed)?;
        writeln!(f, "  free:   {}", self.free)?;
        writeln!(f, "  in use: {}", FrameCount(self.managed.0 - self.free.0))?;
        for (why, n) in self.reserved() {
            write!(f, "reserved: {n}: {why}")?;
            if why == LOW_REASON {
                write!(f, " ({} free for allocate_low)", self.low_free.0)?;
            }
            writeln!(f)?;
        }
        if self.other_reserved.0 > 0 {
            writeln!(f, "reserved: {}: other reasons", self.other_reserved)?;
        }
        Ok(())
    }
}
