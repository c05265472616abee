//! Typed addresses and units.
//!
//! Two page sizes meet here: the hardware's 4 KiB frame (what the frame allocator and the page tables
//! deal in) and the heap's 8 KiB page (Go's runtime page: two frames; what spans and the page heap deal
//! in). Counts of each are their own types so that one is never passed where the other is meant.

pub use x86_64::structures::paging::{Page, PageTableFlags, PhysFrame, Size4KiB};
pub use x86_64::{PhysAddr, VirtAddr};

/// Size of a hardware frame / page-table page.
pub const FRAME_SIZE: u64 = 4096;
/// Size of a heap page (Go's runtime page).
pub const PAGE_SIZE: usize = 8192;
/// Frames per heap page.
pub const FRAMES_PER_PAGE: u64 = PAGE_SIZE as u64 / FRAME_SIZE;

/// A number of 4 KiB frames.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct FrameCount(pub u64);

impl FrameCount {
    pub const fn bytes(self) -> u64 {
        self.0 * FRAME_SIZE
    }
    /// Frames needed to hold `bytes`, rounded up.
    pub const fn covering(bytes: u64) -> Self {
        FrameCount(bytes.div_ceil(FRAME_SIZE))
    }
}

/// A number of 8 KiB heap pages.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PageCount(pub usize);

impl PageCount {
    pub const fn bytes(self) -> usize {
        self.0 * PAGE_SIZE
    }
    /// Pages needed to hold `bytes`, rounded up; `None` if that overflows.
    pub const fn covering(bytes: usize) -> Option<Self> {
        match bytes.checked_add(PAGE_SIZE - 1) {
            Some(b) => Some(PageCount(b / PAGE_SIZE)),
            None => None,
        }
    }
    pub const fn frames(self) -> FrameCount {
        FrameCount(self.0 as u64 * FRAMES_PER_PAGE)
    }
}

impl core::ops::Add for PageCount {
    type Output = Self;
    fn add(self, rhs: Self) -> Self {
        PageCount(self.0 + rhs.0)
    }
}

impl core::ops::Add for FrameCount {
    type Output = Self;
    fn add(self, rhs: Self) -> Self {
        FrameCount(self.0 + rhs.0)
    }
}

impl core::fmt::Display for FrameCount {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "{} frames ({} KiB)", self.0, self.bytes() / 1024)
    }
}

impl core::fmt::Display for PageCount {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "{} pages ({} KiB)", self.0, self.bytes() / 1024)
    }
}
