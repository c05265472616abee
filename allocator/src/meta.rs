//! Off-heap metadata (Go's persistentalloc + fixalloc): span structs, span bitmaps and per-CPU caches live
//! in a region of the heap window that is mapped on demand, never in the heap they describe.
//!
//! Invariants:
//! - A [`LazyRegion`] is mapped as one prefix `[base, base + mapped)`; nothing beyond it is ever touched.
//!   Mapped metadata pages are never unmapped (metadata is bounded by the heap's peak, as in Go). A region
//!   of a heap in region mode (no address space of its own) is mapped whole from the start, by the
//!   kernel, and zeroed by the heap before use ([`LazyRegion::premapped`]).
//! - [`MetaAlloc`] hands out blocks whose size is a power of two from `MIN_BLOCK` to `MAX_BLOCK`, aligned to
//!   their size, zeroed. A freed block goes on its size's free list (the link lives in the block) and is
//!   zeroed again before it is handed out. In region mode the bump area is a chunk of heap pages the page
//!   heap hands over ([`MetaAlloc::add_chunk`], zeroed) when the current one is used up; the rest of the
//!   old chunk goes onto the free lists, so nothing is lost. So does the padding the bump skips to align
//!   a block. Blocks are then aligned to their size up to the chunk's own alignment (a heap page).

use core::ptr::NonNull;

use crate::addr::{Page, PageTableFlags, VirtAddr, FRAME_SIZE};
use crate::arena::AddressSpace;
use crate::paging::MapError;
use crate::platform::Platform;

/// A virtual range whose prefix is mapped on demand.
pub(crate) struct LazyRegion {
    base: VirtAddr,
    size: u64,
    mapped: u64,
    /// Mapped whole by the kernel (region mode): nothing to map, ever.
    premapped: bool,
}

impl LazyRegion {
    pub(crate) const fn new(base: VirtAddr, size: u64) -> Self {
        Self {
            base,
            size,
            mapped: 0,
            premapped: false,
        }
    }

    /// A region the caller has mapped whole and zeroed: `ensure` never maps anything in it.
    pub(crate) const fn premapped(base: VirtAddr, size: u64) -> Self {
        Self {
            base,
            size,
            mapped: size,
            premapped: true,
        }
    }

    pub(crate) fn base(&self) -> VirtAddr {
        self.base
    }

    /// Bytes of the prefix asked for so far (see `ensure_pages`: an upper bound of what is mapped).
    pub(crate) fn mapped(&self) -> u64 {
        self.mapped
    }

    /// Makes sure `[base, base + bytes)` is mapped (zeroed frames). Fails if that passes the region's end or
    /// frames run out, or if it needs mapping and there is no address space (region mode); on failure
    /// nothing more is mapped than before.
    pub(crate) fn ensure<P: Platform>(
        &mut self,
        space: Option<&mut AddressSpace<P>>,
        bytes: u64,
    ) -> Result<(), MapError> {
        if bytes <= self.mapped {
            return Ok(());
        }
        let want = bytes.div_ceil(FRAME_SIZE) * FRAME_SIZE;
        let beyond = || MapError::OutOfFrames {
            page: Page::containing_address(self.base + self.size),
        };
        let Some(space) = space.filter(|_| want <= self.size) else {
            return Err(beyond());
        };
        let start = Page::containing_address(self.base + self.mapped);
        let count = (want - self.mapped) / FRAME_SIZE;
        let flags = PageTableFlags::PRESENT | PageTableFlags::WRITABLE | PageTableFlags::NO_EXECUTE;
        space.map_range(start, count, flags, true)?;
        self.mapped = want;
        Ok(())
    }
}

impl LazyRegion {
    /// Makes sure every page of `[base + start, base + end)` is mapped (zeroed frames), leaving pages
    /// that are mapped already alone: for a region holding several arrays that each grow as a prefix
    /// (the page allocator's bitmap and summary levels), so backing one array's prefix never maps the
    /// arrays before it whole. Fails if that passes the region's end or frames run out; on failure the
    /// pages mapped so far stay mapped (zeroed, unused) and are found mapped on the next call.
    pub(crate) fn ensure_pages<P: Platform>(
        &mut self,
        space: Option<&mut AddressSpace<P>>,
        start: u64,
        end: u64,
    ) -> Result<(), MapError> {
        // `mapped` bounds what was asked for, not what is mapped (the arrays are backed sparsely), so
        // only a premapped region can skip the walk.
        if start >= end || (self.premapped && end <= self.size) {
            return Ok(());
        }
        let end = end.div_ceil(FRAME_SIZE) * FRAME_SIZE;
        let Some(space) = space.filter(|_| end <= self.size) else {
            let page = Page::containing_address(self.base + self.size);
            return Err(MapError::OutOfFrames { page });
        };
        let flags = PageTableFlags::PRESENT | PageTableFlags::WRITABLE | PageTableFlags::NO_EXECUTE;
        let mut at = start / FRAME_SIZE * FRAME_SIZE;
        while at < end {
            let page = Page::containing_address(self.base + at);
            if space.mapper.translate(page.start_address()).is_none() {
                space.map_range(page, 1, flags, true)?;
            }
            at += FRAME_SIZE;
        }
        self.mapped = self.mapped.max(end);
        Ok(())
    }
}

const MIN_BLOCK_SHIFT: u32 = 4;
const MAX_BLOCK_SHIFT: u32 = 17;
const LISTS: usize = (MAX_BLOCK_SHIFT - MIN_BLOCK_SHIFT + 1) as usize;
/// Largest block [`MetaAlloc`] hands out.
pub(crate) const MAX_BLOCK: usize = 1 << MAX_BLOCK_SHIFT;

struct FreeBlock {
    next: Option<NonNull<FreeBlock>>,
}

/// Bump allocator over a [`LazyRegion`] with a free list per power-of-two size.
pub(crate) struct MetaAlloc {
    region: LazyRegion,
    bump: u64,
    free: [Option<NonNull<FreeBlock>>; LISTS],
    /// Bytes handed out and not freed.
    in_use: u64,
    /// Bytes of the chunks used up before the current one (region mode).
    retired: u64,
}

// SAFETY: MetaAlloc exclusively owns the blocks on its free lists; it has no thread affinity.
unsafe impl Send for MetaAlloc {}

impl MetaAlloc {
    pub(crate) const fn new(region: LazyRegion) -> Self {
        Self {
            region,
            bump: 0,
            free: [None; LISTS],
            in_use: 0,
            retired: 0,
        }
    }

    /// Region mode: makes `[base, base + size)` (zeroed, mapped, aligned to [`crate::addr::PAGE_SIZE`],
    /// ours for good) the bump area. What is left of the old one goes onto the free lists in the largest
    /// aligned blocks it holds.
    pub(crate) fn add_chunk(&mut self, base: VirtAddr, size: u64) {
        let old = core::mem::replace(&mut self.region, LazyRegion::premapped(base, size));
        let at = self.bump;
        self.bump = 0;
        self.retired += old.mapped;
        // SAFETY: `[at, mapped)` is unused bump space of the old chunk, mapped and ours.
        unsafe { self.free_range(old.base, at, old.mapped) };
    }

    /// Puts the unused bytes `[base + at, base + end)` (`at` a multiple of `MIN_BLOCK`) onto the free
    /// lists, in the largest blocks aligned to their size that fit (a tail under `MIN_BLOCK` is lost).
    ///
    /// # Safety
    /// The range is mapped, ours, and in no block handed out or on a free list.
    unsafe fn free_range(&mut self, base: VirtAddr, mut at: u64, end: u64) {
        while end - at >= 1 << MIN_BLOCK_SHIFT {
            // The largest block that is aligned at `at` (blocks are aligned to their size) and fits.
            let fit = 63 - (end - at).leading_zeros();
            let shift = fit.min(at.trailing_zeros()).min(MAX_BLOCK_SHIFT);
            let i = (shift - MIN_BLOCK_SHIFT) as usize;
            let node = (base + at).as_mut_ptr::<FreeBlock>();
            // SAFETY: `[at, at + 2^shift)` lies in the caller's unused range, aligned for the link.
            unsafe { node.write(FreeBlock { next: self.free[i] }) };
            self.free[i] = NonNull::new(node);
            at += 1 << shift;
        }
    }

    /// Bytes of the block `alloc(_, size)` hands out.
    pub(crate) fn block_bytes(size: usize) -> usize {
        1 << (Self::list_index(size) as u32 + MIN_BLOCK_SHIFT)
    }

    fn list_index(size: usize) -> usize {
        let size = size.max(1 << MIN_BLOCK_SHIFT).next_power_of_two();
        (size.trailing_zeros() - MIN_BLOCK_SHIFT) as usize
    }

    /// A zeroed block of at least `size` bytes (`size <= MAX_BLOCK`), aligned to its rounded size.
    pub(crate) fn alloc<P: Platform>(
        &mut self,
        space: Option<&mut AddressSpace<P>>,
        size: usize,
    ) -> Option<NonNull<u8>> {
        assert!(
            size <= MAX_BLOCK,
            "meta: block of {size} bytes is over the {MAX_BLOCK} limit"
        );
        let i = Self::list_index(size);
        let block = 1u64 << (i as u32 + MIN_BLOCK_SHIFT);
        if let Some(head) = self.free[i] {
            // SAFETY: blocks on free list `i` are mapped, `block` bytes long and owned by us; the link was
            // written by `free`.
            unsafe {
                self.free[i] = head.as_ref().next;
                core::ptr::write_bytes(head.as_ptr().cast::<u8>(), 0, block as usize);
            }
            self.in_use += block;
            return Some(head.cast());
        }
        let start = self.bump.next_multiple_of(block);
        self.region.ensure(space, start + block).ok()?;
        // The padding before an aligned block goes onto the free lists: span structs and their small
        // bitmaps alternate, and would otherwise lose most of a block at every span.
        // SAFETY: `[bump, start)` is below `start + block`, so mapped now; never handed out.
        unsafe { self.free_range(self.region.base(), self.bump, start) };
        self.bump = start + block;
        self.in_use += block;
        // Fresh bytes of the region come from zeroed frames.
        NonNull::new((self.region.base() + start).as_mut_ptr())
    }

    /// Returns a block from [`MetaAlloc::alloc`] of the same `size`.
    ///
    /// # Safety
    /// `ptr` came from `alloc(_, size)` on this allocator and is not used after this call.
    pub(crate) unsafe fn free(&mut self, ptr: NonNull<u8>, size: usize) {
        let i = Self::list_index(size);
        let node = ptr.cast::<FreeBlock>();
        // SAFETY: the caller gives the block back to us; it is at least 16 bytes and aligned for the link.
        unsafe { node.as_ptr().write(FreeBlock { next: self.free[i] }) };
        self.free[i] = Some(node);
        self.in_use -= 1u64 << (i as u32 + MIN_BLOCK_SHIFT);
    }

    /// Bytes of metadata in use.
    pub(crate) fn in_use(&self) -> u64 {
        self.in_use
    }

    /// Bytes of metadata mapped (in use, on free lists, or bump slack).
    pub(crate) fn mapped(&self) -> u64 {
        self.retired + self.region.mapped
    }
}
