//! The virtual window the heap grows in, and the address space that backs it with frames.
//!
//! Ownership of frames:
//! - A free frame belongs to the [`FrameAllocator`]. A frame `map_range` took (for data or for a page table
//!   the mapper created) belongs to the [`AddressSpace`] until `unmap_range` gives it back; `frames_held`
//!   counts exactly these. Tables the address space did not create (the bootloader's) are never freed.
//! - A data frame is reachable through two addresses: its window page (the heap's) and the direct map (the
//!   allocator's, used only to zero it before it is mapped).
//!
//! Reuse: a frame unmapped by `unmap_range` may be reused only once no CPU can still reach it through a
//! stale TLB entry or a cached walk of a table being freed. So `unmap_range` detaches the whole batch, calls
//! `Platform::pages_unmapped` once (the shootdown), and only then frees data frames and emptied tables.
//!
//! Window: arenas of [`ARENA_SIZE`] are handed out contiguously upward from the window's base, so the heap's
//! address range is always one interval `[base, base + arenas * ARENA_SIZE)`.

use crate::addr::{FrameCount, Page, PageTableFlags, PhysFrame, VirtAddr, FRAME_SIZE};
use crate::frames::FrameAllocator;
use crate::paging::{MapError, Mapper};
use crate::platform::{Platform, Sampled};

/// Size and alignment of one heap arena (Go's heapArena).
pub const ARENA_SIZE: usize = 64 << 20;

/// A reserved range of virtual addresses, cut into arenas from the bottom up.
#[derive(Clone, Debug)]
pub struct ArenaWindow {
    base: VirtAddr,
    end: VirtAddr,
    next: VirtAddr,
}

impl ArenaWindow {
    /// A window `[base, base + size)`; `base` and `size` are multiples of [`ARENA_SIZE`].
    pub fn new(base: VirtAddr, size: u64) -> Self {
        let arena = ARENA_SIZE as u64;
        assert!(
            base.is_aligned(arena) && size.is_multiple_of(arena),
            "arena: window {:#x} + {size:#x} bytes is not aligned to the arena size {arena:#x}",
            base.as_u64()
        );
        let end = base
            .as_u64()
            .checked_add(size)
            .and_then(|e| VirtAddr::try_new(e).ok())
            .unwrap_or_else(|| {
                panic!(
                    "arena: window {:#x} + {size:#x} bytes leaves the canonical half",
                    base.as_u64()
                )
            });
        ArenaWindow {
            base,
            end,
            next: base,
        }
    }

    /// The next arena's base, directly above the previous one; `None` once the window is used up.
    pub fn take_arena(&mut self) -> Option<VirtAddr> {
        if self.end - self.next < ARENA_SIZE as u64 {
            return None;
        }
        let arena = self.next;
        self.next += ARENA_SIZE as u64;
        Some(arena)
    }

    pub fn contains(&self, addr: VirtAddr) -> bool {
        self.base <= addr && addr < self.end
    }

    pub fn base(&self) -> VirtAddr {
        self.base
    }

    pub fn end(&self) -> VirtAddr {
        self.end
    }

    /// End of the arenas handed out so far (`base()` if none).
    pub fn arenas_end(&self) -> VirtAddr {
        self.next
    }
}

/// One page-table hierarchy with the frames that back it and the platform that is told about changes.
pub struct AddressSpace<P: Platform> {
    pub frames: FrameAllocator,
    pub mapper: Mapper,
    pub platform: &'static P,
    held: u64,
    /// The heap's window, if recorded (take-over does): the kernel-facing mapping methods of
    /// [`share`](crate::share) refuse pages inside it.
    heap_window: Option<(VirtAddr, VirtAddr)>,
}

impl<P: Platform> AddressSpace<P> {
    pub fn new(frames: FrameAllocator, mapper: Mapper, platform: &'static P) -> Self {
        AddressSpace {
            frames,
            mapper,
            platform,
            held: 0,
            heap_window: None,
        }
    }

    /// The same address space seen through [`Sampled`]`<P>` (for a heap that samples over a platform that
    /// does not compile sampling in by itself). `sampled` must wrap this space's own platform.
    pub fn sampled(self, sampled: &'static Sampled<P>) -> AddressSpace<Sampled<P>> {
        assert!(
            core::ptr::eq(sampled.0, self.platform),
            "arena: Sampled wraps another platform than the address space's"
        );
        AddressSpace {
            frames: self.frames,
            mapper: self.mapper,
            platform: sampled,
            held: self.held,
            heap_window: self.heap_window,
        }
    }

    /// Records `window` as the heap's, so that [`share`](crate::share)'s mapping methods keep the kernel's
    /// own pages out of it. [`take_over`](crate::takeover::take_over) does this.
    pub fn set_heap_window(&mut self, window: &ArenaWindow) {
        self.heap_window = Some((window.base(), window.end()));
    }

    /// The heap's window `[base, end)` as recorded by [`AddressSpace::set_heap_window`].
    pub fn heap_window(&self) -> Option<(VirtAddr, VirtAddr)> {
        self.heap_window
    }

    /// Backs `count` pages from `start` with fresh frames (zeroed through the direct map if `zeroed`),
    /// mapped with `flags` (PRESENT implied), telling the platform of each run of pages mapped to
    /// contiguous frames in one call (`Platform::pages_mapped`). On failure everything this call mapped is
    /// unmapped and every frame it took is returned.
    pub fn map_range(
        &mut self,
        start: Page,
        count: u64,
        flags: PageTableFlags,
        zeroed: bool,
    ) -> Result<(), MapError> {
        check_range(start, count);
        let before = self.frames.free_frames();
        // The run of pages mapped to contiguous frames the platform has not been told of yet.
        let mut run: Option<(Page, PhysFrame, u64)> = None;
        for i in 0..count {
            let page = start + i;
            let mapped = self.map_one(page, flags, zeroed);
            let continues = matches!((&mapped, run), (Ok(f), Some((_, f0, n))) if *f == f0 + n);
            if continues {
                if let Some((_, _, n)) = &mut run {
                    *n += 1;
                }
                continue;
            }
            if let Some((p, f, n)) = run.take() {
                self.platform.pages_mapped(p, f, n);
            }
            if let Ok(frame) = mapped {
                run = Some((page, frame, 1));
            }
            if let Err(e) = mapped {
                self.release(start, i);
                debug_assert_eq!(
                    self.frames.free_frames(),
                    before,
                    "arena: map_range roll-back leaked frames"
                );
                return Err(e);
            }
        }
        if let Some((p, f, n)) = run {
            self.platform.pages_mapped(p, f, n);
        }
        self.held += before.0 - self.frames.free_frames().0;
        Ok(())
    }

    /// Maps `page` to a fresh frame (the platform is told by the caller) and returns the frame.
    fn map_one(
        &mut self,
        page: Page,
        flags: PageTableFlags,
        zeroed: bool,
    ) -> Result<PhysFrame, MapError> {
        let frame = if zeroed {
            self.frames.allocate_zeroed()
        } else {
            self.frames.allocate()
        };
        let frame = frame.ok_or(MapError::OutOfFrames { page })?;
        if let Err(e) = self.mapper.map(page, frame, flags, &mut self.frames) {
            self.frames.free(frame);
            return Err(e);
        }
        Ok(frame)
    }

    /// Unmaps `count` pages from `start` (all must be mapped: panics naming the first that is not, before
    /// changing anything), with one shootdown for the batch, then frees their frames and the tables that
    /// became empty. Returns the number of frames freed.
    pub fn unmap_range(&mut self, start: Page, count: u64) -> FrameCount {
        check_range(start, count);
        if let Some(page) = (0..count)
            .map(|i| start + i)
            .find(|p| self.mapper.translate(p.start_address()).is_none())
        {
            panic!(
                "arena: unmap_range of {count} pages from {:#x}: page {:#x} is not mapped",
                start.start_address().as_u64(),
                page.start_address().as_u64()
            );
        }
        let freed = self.release(start, count);
        self.held = self.held.saturating_sub(freed.0);
        freed
    }

    /// Detach, shoot down once, reclaim: see the module documentation.
    fn release(&mut self, start: Page, count: u64) -> FrameCount {
        if count == 0 {
            return FrameCount(0);
        }
        for i in 0..count {
            if let Err(e) = self.mapper.detach(start + i) {
                panic!("arena: {e}");
            }
        }
        self.platform.pages_unmapped(start, count);
        let mut freed = 0;
        for i in 0..count {
            let (frame, tables) = self
                .mapper
                .reclaim(start + i, &mut self.frames)
                .unwrap_or_else(|e| panic!("arena: {e}"));
            self.frames.free(frame);
            freed += 1 + tables.0;
        }
        FrameCount(freed)
    }

    /// Frames this address space took and still holds: mapped data frames plus the tables it created.
    pub fn frames_held(&self) -> FrameCount {
        FrameCount(self.held)
    }

    /// Counts page tables made (`made`) or freed (`!made`) by a kernel mapping ([`share`](crate::share)):
    /// the heap's mappings and the kernel's share upper tables, and either side may free a table the
    /// other made, so `held` counts every table the mapper made through this address space.
    /// (Saturating, as in `unmap_range`: tables a kernel made through `mapper` itself are not counted.)
    pub(crate) fn count_tables(&mut self, tables: u64, made: bool) {
        self.held = if made {
            self.held + tables
        } else {
            self.held.saturating_sub(tables)
        };
    }
}

/// Panics unless `[start, start + count pages)` is a range of canonical addresses.
fn check_range(start: Page, count: u64) {
    if count == 0 {
        return;
    }
    let last = (count - 1)
        .checked_mul(FRAME_SIZE)
        .and_then(|off| start.start_address().as_u64().checked_add(off));
    assert!(
        last.is_some_and(|l| VirtAddr::try_new(l).is_ok()),
        "arena: range of {count} pages from {:#x} leaves the canonical half",
        start.start_address().as_u64()
    );
}

#[cfg(test)]
mod tests;
