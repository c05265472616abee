//! Heap statistics, like Go's MemStats: what is in use per size class, what the page heap holds, and
//! how many frames the heap maps or has given back.

use core::fmt;

use crate::addr::FrameCount;
use crate::pageheap::PageStats;
use crate::sizeclass::NUM_SIZE_CLASSES;

/// One size class.
#[derive(Clone, Copy, Debug, Default)]
pub struct ClassStats {
    /// Object size of the class.
    pub size: usize,
    /// Objects handed to users and not freed.
    pub objects: usize,
    /// `objects * size`.
    pub bytes: usize,
    /// Free objects sitting in per-CPU caches.
    pub cached: usize,
    /// Spans of the class.
    pub spans: usize,
}

/// A snapshot of the heap.
#[derive(Clone, Copy, Debug)]
pub struct Stats {
    pub classes: [ClassStats; NUM_SIZE_CLASSES],
    /// Objects in a span of their own: allocated over 32 KiB or aligned beyond a page, including those
    /// a `realloc` has since shrunk in place to a small size (they keep their span) and small objects
    /// sampled for the heap profile (heap/sample.rs). Guarded objects live in no span and no count here.
    pub large_objects: usize,
    /// The pages of those spans, in bytes.
    pub large_bytes: usize,
    pub pages: PageStats,
    /// Frames the heap's address space maps (data, metadata and page tables).
    pub frames_held: FrameCount,
    /// Frames left in the frame allocator.
    pub frames_free: FrameCount,
    /// Allocations and frees that interrupted their CPU's fast path (an interrupt handler's, landing
    /// inside the cache's busy window) and were served through the central lists' locks instead.
    pub interrupted_fast_paths: usize,
}

impl Default for Stats {
    fn default() -> Self {
        Self {
            classes: [ClassStats::default(); NUM_SIZE_CLASSES],
            large_objects: 0,
            large_bytes: 0,
            pages: PageStats::default(),
            frames_held: FrameCount(0),
            frames_free: FrameCount(0),
            interrupted_fast_paths: 0,
        }
    }
}

impl Stats {
    /// Objects in use, small and large.
    pub fn objects(&self) -> usize {
        self.classes.iter().map(|c| c.objects).sum::<usize>() + self.large_objects
    }

    /// Bytes in use (rounded up to the size class / page), small and large.
    pub fn bytes(&self) -> usize {
        self.classes.iter().map(|c| c.bytes).sum::<usize>() + self.large_bytes
    }
}

impl fmt::Display for Stats {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "in use: {} objects, {} KiB ({} large objects, {} KiB)",
            self.objects(),
            self.bytes() / 1024,
            self.large_objects,
            self.large_bytes / 1024
        )?;
        let p = &self.pages;
        writeln!(
            f,
            "pages: {} in use, {} free mapped, {} grown in {} arenas; {} released to frames so far",
            p.in_use, p.dirty_free, p.grown, p.arenas, p.released_total
        )?;
        writeln!(
            f,
            "frames: {} held by the heap, {} free; metadata {} KiB in use of {} KiB mapped, tables {} KiB",
            self.frames_held.0,
            self.frames_free.0,
            p.meta_in_use / 1024,
            p.meta_mapped / 1024,
            p.meta_tables / 1024
        )?;
        writeln!(f, "class  size   objects     bytes  cached spans")?;
        for (i, c) in self.classes.iter().enumerate() {
            if c.spans > 0 || c.objects > 0 {
                writeln!(
                    f,
                    "{i:5} {:5} {:9} {:9} {:7} {:5}",
                    c.size, c.objects, c.bytes, c.cached, c.spans
                )?;
            }
        }
        Ok(())
    }
}
