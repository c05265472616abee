//! Sharing the machine: how the kernel gets frames and maps its own pages once the heap owns them.
//!
//! After take-over the heap's [`AddressSpace`] owns every free frame of the memory map and is the only
//! editor of the live page tables (the contract of [`Mapper::new`](crate::paging::Mapper::new)). A kernel
//! still needs frames (DMA buffers, page tables of user processes) and mappings of its own (MMIO, user
//! pages). It gets them **through the heap's address space**, never with a second allocator or mapper over
//! the same memory:
//!
//! ```no_run
//! # use spanalloc::{Heap, platforms::Uniprocessor};
//! # static HEAP: Heap<Uniprocessor> = Heap::new(&spanalloc::platforms::UNIPROCESSOR);
//! use spanalloc::addr::{Page, PageTableFlags, PhysAddr, PhysFrame, VirtAddr};
//! use spanalloc::FrameCount;
//!
//! // Frames for DMA (one, or a contiguous run): safe, they are the kernel's from now on.
//! let dma = HEAP.allocate_frames(FrameCount(4), FrameCount(1));
//! // Map a device's registers (not memory the frame allocator manages).
//! let mmio = PhysFrame::containing_address(PhysAddr::new(0xfee0_0000));
//! let page = Page::containing_address(VirtAddr::new(0xffff_9000_0000_0000));
//! let flags = PageTableFlags::WRITABLE | PageTableFlags::NO_CACHE | PageTableFlags::NO_EXECUTE;
//! // SAFETY: the page holds no Rust object and the device frame is the kernel's to map; the closure
//! // changes no mapping of the heap's window and frees no frame of the heap's.
//! unsafe { HEAP.with_address_space(|s| s.map_kernel_page(page, mmio, flags)) };
//! // Given back when the device is done with them (frames this kernel took, nothing maps them).
//! if let Some(first) = dma {
//!     // SAFETY: as above; the frames are the ones taken for DMA.
//!     unsafe { HEAP.with_address_space(|s| s.frames.free_contiguous(first, FrameCount(4))) };
//! }
//! ```
//!
//! [`Heap::with_address_space`](crate::Heap::with_address_space) is `unsafe`: the address space it
//! lends also holds the heap's own pages and frames, and freeing one of those (or unmapping a page of
//! the window through `mapper` or `unmap_range`) would let the heap hand the same memory out twice.
//! Its contract: leave the heap's window and frames alone. Taking frames alone is
//! [`Heap::allocate_frames`](crate::Heap::allocate_frames), which is safe.
//!
//! - Frames: `space.frames` is the [`FrameAllocator`](crate::frames::FrameAllocator): `allocate`, `allocate_zeroed`,
//!   `allocate_contiguous`, `allocate_low`, `free`. It also implements the `x86_64` crate's
//!   [`FrameAllocator`](x86_64::structures::paging::FrameAllocator) and
//!   [`FrameDeallocator`](x86_64::structures::paging::FrameDeallocator) traits, so code written for that
//!   crate (an `OffsetPageTable` over a *new* hierarchy for a user process) takes frames from it. A frame
//!   the kernel takes is the kernel's until it frees it; the heap never sees it again.
//! - Pages: [`AddressSpace::map_kernel_page`], [`AddressSpace::map_fresh_kernel_page`] and
//!   [`AddressSpace::unmap_kernel_page`] edit the live tables with the heap's mapper, taking page tables
//!   from the same frames, and refuse pages in the heap's window and frames the allocator holds free.
//!   Unmapping shoots the page down on every CPU through the [`Platform`] before the page tables that
//!   became empty are freed (never a P3 under the kernel half, which user P4s copy: see below).
//! - Not the `x86_64` crate's `Mapper` trait: its `MapperFlush` flushes the local TLB only, where an unmap
//!   here must shoot down every CPU before a frame or table is reused, and its huge-page and flag-update
//!   methods have no counterpart in a 4 KiB mapper that never splits the bootloader's huge pages.
//! - A user process's own P4: take a zeroed frame, copy the kernel half (entries 256..512) of the live P4
//!   into it. The heap's window entry is among them and never changes after take-over (the heap's
//!   metadata keeps its P3 table alive), so the copy stays valid; nor is a P3 table under the kernel
//!   half freed when the kernel unmaps its last page there (the copies still point at it).
//! - Keep the closures short: interrupts are masked and the page-heap lock is held while they run, so
//!   every other CPU that needs a new span waits. Do not allocate inside them (the lock is not
//!   re-entrant: allocating there deadlocks).

use core::fmt;

use crate::addr::{Page, PageTableFlags, PhysFrame};
use crate::arena::AddressSpace;
use crate::paging::{MapError, UnmapError};
use crate::platform::Platform;

/// Why a kernel mapping was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KernelMapError {
    /// The page lies in the heap's window, which only the heap maps.
    InHeapWindow {
        page: Page,
    },
    /// The frame is a free frame of the heap's frame allocator: mapped, it would alias whatever the
    /// allocator hands it out for next. Take it from `frames` first.
    FreeFrame {
        page: Page,
        frame: PhysFrame,
    },
    Map(MapError),
    Unmap(UnmapError),
}

impl fmt::Display for KernelMapError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::InHeapWindow { page } => write!(
                f,
                "spanalloc: page {:#x} lies in the heap's window, which only the heap maps",
                page.start_address().as_u64()
            ),
            Self::FreeFrame { page, frame } => write!(
                f,
                "spanalloc: frame {:#x} (for page {:#x}) is a free frame of the heap's frame allocator; \
                 allocate it before mapping it",
                frame.start_address().as_u64(),
                page.start_address().as_u64()
            ),
            Self::Map(e) => write!(f, "{e}"),
            Self::Unmap(e) => write!(f, "{e}"),
        }
    }
}

impl From<MapError> for KernelMapError {
    fn from(e: MapError) -> Self {
        Self::Map(e)
    }
}

impl From<UnmapError> for KernelMapError {
    fn from(e: UnmapError) -> Self {
        Self::Unmap(e)
    }
}

/// The kernel's own mappings in the heap's address space (see the module documentation).
impl<P: Platform> AddressSpace<P> {
    fn outside_heap_window(&self, page: Page) -> Result<(), KernelMapError> {
        let addr = page.start_address();
        match self.heap_window() {
            Some((base, end)) if base <= addr && addr < end => {
                Err(KernelMapError::InHeapWindow { page })
            }
            _ => Ok(()),
        }
    }

    /// Maps `page` to `frame` (a device's registers, or a frame the kernel took from `frames`) with
    /// `flags` (PRESENT implied; not HUGE_PAGE). Missing page tables come from the frame allocator (with
    /// USER_ACCESSIBLE if `flags` has it). A page that is mapped already is refused, not remapped;
    /// so is a frame the frame allocator holds free ([`KernelMapError::FreeFrame`]).
    ///
    /// # Safety
    /// `page` holds no Rust object the kernel still uses through another mapping, and `frame` is the
    /// kernel's to map: device memory, or a frame it took from `frames` and has not freed (never a frame
    /// the heap or anyone else still uses).
    pub unsafe fn map_kernel_page(
        &mut self,
        page: Page,
        frame: PhysFrame,
        flags: PageTableFlags,
    ) -> Result<(), KernelMapError> {
        self.outside_heap_window(page)?;
        if self.frames.is_free(frame) {
            return Err(KernelMapError::FreeFrame { page, frame });
        }
        let before = self.frames.free_frames().0;
        self.mapper.map(page, frame, flags, &mut self.frames)?;
        // The tables made here may later be freed by an unmap of the heap's, which counts them.
        self.count_tables(before - self.frames.free_frames().0, true);
        self.platform.page_mapped(page, frame);
        Ok(())
    }

    /// Takes a zeroed frame and maps `page` to it (e.g. a user page); returns the frame, which
    /// [`AddressSpace::unmap_kernel_page`] returns again and the kernel then frees with `frames.free`.
    ///
    /// # Safety
    /// `page` holds no Rust object the kernel still uses through another mapping.
    pub unsafe fn map_fresh_kernel_page(
        &mut self,
        page: Page,
        flags: PageTableFlags,
    ) -> Result<PhysFrame, KernelMapError> {
        self.outside_heap_window(page)?;
        let frame = self
            .frames
            .allocate_zeroed()
            .ok_or(MapError::OutOfFrames { page })?;
        // SAFETY: the frame was just taken, so it is ours; the page is the caller's promise.
        if let Err(e) = unsafe { self.map_kernel_page(page, frame, flags) } {
            self.frames.free(frame);
            return Err(e);
        }
        Ok(frame)
    }

    /// Unmaps `page`, shoots it down on every CPU ([`Platform::pages_unmapped`]), then frees the page
    /// tables that became empty (those the frame allocator manages). Returns the frame it mapped, which
    /// stays the caller's: free it with `frames.free` if it came from there.
    ///
    /// # Safety
    /// Nothing still uses the page's contents through this mapping (no Rust reference into it lives on).
    pub unsafe fn unmap_kernel_page(&mut self, page: Page) -> Result<PhysFrame, KernelMapError> {
        self.outside_heap_window(page)?;
        self.mapper.detach(page)?;
        self.platform.pages_unmapped(page, 1);
        let (frame, tables) = self.mapper.reclaim(page, &mut self.frames)?;
        self.count_tables(tables.0, false);
        Ok(frame)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::host::HostMachine;
    use x86_64::structures::paging::{FrameAllocator as X86FrameAllocator, FrameDeallocator};

    /// Kernel mappings go through the same frames and tables, stay out of the heap's window, and an
    /// unmap gives back the tables it emptied.
    #[test]
    fn kernel_pages_share_the_address_space() {
        let mut m = HostMachine::new(8 << 20, 2 * crate::arena::ARENA_SIZE);
        let half = m.window.base() + (crate::arena::ARENA_SIZE as u64);
        // Pretend only the lower arena is the heap's: the upper one plays the kernel's own range.
        let heap_window = crate::arena::ArenaWindow::new(m.window.base(), half - m.window.base());
        m.space.set_heap_window(&heap_window);
        let free_before = m.space.frames.free_frames();

        let inside = Page::containing_address(m.window.base());
        let flags = PageTableFlags::WRITABLE;
        // SAFETY: nothing lives at these pages (the host window is reserved, untouched memory).
        let refused = unsafe { m.space.map_fresh_kernel_page(inside, flags) };
        assert_eq!(refused, Err(KernelMapError::InHeapWindow { page: inside }));

        let page = Page::containing_address(half);
        // SAFETY: as above.
        let frame = unsafe { m.space.map_fresh_kernel_page(page, flags) }.unwrap();
        // SAFETY: the page was just mapped to a zeroed frame of ours.
        unsafe {
            assert_eq!(page.start_address().as_ptr::<u64>().read(), 0);
            page.start_address().as_mut_ptr::<u64>().write(42);
        }
        assert_eq!(
            m.space.mapper.translate(page.start_address() + 8u64),
            Some(frame.start_address() + 8u64)
        );
        // SAFETY: as above: mapped already.
        let again = unsafe { m.space.map_kernel_page(page, frame, flags) };
        assert!(matches!(
            again,
            Err(KernelMapError::Map(MapError::AlreadyMapped { .. }))
        ));

        // SAFETY: nothing references the page any more.
        let back = unsafe { m.space.unmap_kernel_page(page) }.unwrap();
        assert_eq!(back, frame);
        assert_eq!(m.space.mapper.translate(page.start_address()), None);
        // SAFETY: the frame is ours and no longer mapped.
        unsafe { FrameDeallocator::deallocate_frame(&mut m.space.frames, frame) };
        // Every table the mapping created went back with it.
        assert_eq!(m.space.frames.free_frames(), free_before);

        let f = X86FrameAllocator::allocate_frame(&mut m.space.frames).unwrap();
        assert!(m.space.frames.manages(f));
        m.space.frames.free(f);
    }

    /// The host platform, but kernel pages in the higher half are not mirrored (no host mapping can
    /// be made there): only the page tables are looked at.
    struct TablesOnly(&'static crate::host::HostPlatform);

    // SAFETY: test code: every duty but the mirroring is the host platform's; nothing reads the pages.
    unsafe impl Platform for TablesOnly {
        type InterruptGuard = <crate::host::HostPlatform as Platform>::InterruptGuard;
        const MAX_CPUS: usize = crate::host::HostPlatform::MAX_CPUS;
        fn cpu_index(&self) -> usize {
            self.0.cpu_index()
        }
        fn mask_interrupts(&self) -> Self::InterruptGuard {
            self.0.mask_interrupts()
        }
        fn physical_memory_offset(&self) -> crate::addr::VirtAddr {
            self.0.physical_memory_offset()
        }
        fn page_mapped(&self, _page: Page, _frame: PhysFrame) {}
        fn pages_unmapped(&self, _page: Page, _count: u64) {}
    }

    /// The module's recipe for a user process's P4 (copy the live P4's kernel half) must survive the
    /// kernel unmapping its own higher-half pages: a P3 table an unmap empties must not be freed while
    /// copies of the P4 entry that points at it may live on.
    #[test]
    fn unmapping_a_kernel_page_keeps_the_kernel_half_tables_copies_point_to() {
        use crate::addr::VirtAddr;
        use crate::arena::AddressSpace;
        let m = HostMachine::new(8 << 20, crate::arena::ARENA_SIZE);
        let platform: &'static TablesOnly = crate::host::leak(TablesOnly(m.platform));
        let offset = m.platform.physical_memory_offset();
        let p4 = m.space.mapper.p4();
        let HostMachine { space, window, .. } = m;
        let AddressSpace { frames, mapper, .. } = space;
        let mut s = AddressSpace::new(frames, mapper, platform);
        s.set_heap_window(&window);
        let flags = PageTableFlags::WRITABLE;
        // A kernel page in a higher-half P4 entry of its own.
        let page = Page::containing_address(VirtAddr::new(0xffff_9000_0000_0000));
        // SAFETY: nothing lives at the page; only the tables are looked at.
        let frame = unsafe { s.map_fresh_kernel_page(page, flags) }.unwrap();
        let slot = usize::from(page.p4_index());
        let live_p4 = (offset + p4.start_address().as_u64()).as_ptr::<u64>();
        // A user process's P4, made as the module documentation says: the kernel half copied.
        // SAFETY: the live P4 lies in the fake memory, 512 entries.
        let copied: std::vec::Vec<u64> = (256..512)
            .map(|i| unsafe { live_p4.add(i).read() })
            .collect();
        let p3 = PhysFrame::containing_address(crate::PhysAddr::new(
            copied[slot - 256] & 0x000f_ffff_ffff_f000,
        ));
        // SAFETY: nothing uses the page any more.
        assert_eq!(unsafe { s.unmap_kernel_page(page) }, Ok(frame));
        s.frames.free(frame);
        // The copy still points at `p3`: it must not be a free frame the allocator hands out again.
        let mut taken = std::vec::Vec::new();
        while let Some(f) = s.frames.allocate() {
            assert_ne!(
                f, p3,
                "the P3 table a copied P4 entry points to was freed and handed out again"
            );
            taken.push(f);
        }
        for f in taken {
            s.frames.free(f);
        }
    }

    /// A kernel mapping of a frame the frame allocator holds free would alias the next frame it
    /// hands out (to the heap or the kernel): refused.
    #[test]
    fn mapping_a_free_frame_of_the_allocator_is_refused() {
        let mut m = HostMachine::new(8 << 20, 2 * crate::arena::ARENA_SIZE);
        let half = m.window.base() + (crate::arena::ARENA_SIZE as u64);
        let heap_window = crate::arena::ArenaWindow::new(m.window.base(), half - m.window.base());
        m.space.set_heap_window(&heap_window);
        let free = m.space.frames.allocate().unwrap();
        m.space.frames.free(free);
        let page = Page::containing_address(half);
        // SAFETY: nothing lives at the page (the host window is reserved, untouched memory).
        let r = unsafe {
            m.space
                .map_kernel_page(page, free, PageTableFlags::WRITABLE)
        };
        assert_eq!(r, Err(KernelMapError::FreeFrame { page, frame: free }));
        let text = std::format!("{}", r.unwrap_err());
        assert!(
            text.contains(&std::format!("{:#x}", free.start_address().as_u64())),
            "{text}"
        );
        assert_eq!(m.space.mapper.translate(page.start_address()), None);
        // Taken first, it maps.
        let taken = m.space.frames.allocate().unwrap();
        assert_eq!(taken, free);
        // SAFETY: as above; the frame is ours now.
        unsafe {
            m.space
                .map_kernel_page(page, taken, PageTableFlags::WRITABLE)
        }
        .unwrap();
    }
}
