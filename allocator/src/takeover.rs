//! One-call take-over: a boot memory map and the physical-memory offset in, a running [`Heap`] out.
//!
//! [`take_over`] does what every kernel using spanalloc would otherwise write itself: tells the platform
//! where physical memory is mapped, builds the [`FrameAllocator`] from the memory map, wraps the live page
//! tables (CR3) in a [`Mapper`], picks a free 512 GiB slot of the top-level table ([`P4_ENTRY_SPAN`]) as
//! the heap's window, records that window in the address space (so the kernel's own mappings stay out of
//! it, see [`share`](crate::share)) and hands everything to [`Heap::init`] with [`Limits`].
//!
//! Invariants (what the caller of [`take_over`] promises, and what holds afterwards):
//! - It runs once, on the only CPU that runs, before anything allocates and before anything else uses the
//!   usable memory of the map: the frame allocator writes its metadata there and hands the rest out.
//! - From its return on, the heap's address space owns every free frame of the map and is the only editor
//!   of the page tables reachable from CR3. The kernel takes frames and maps pages through
//!   [`Heap::with_address_space`] (see [`share`](crate::share)), never with a mapper of its own over the
//!   same tables.
//! - The window is one whole P4 entry that was empty at take-over; nothing but the heap maps into it.

use core::fmt;

use crate::addr::{FrameCount, PageTableFlags, PhysAddr, PhysFrame, VirtAddr, FRAME_SIZE};
use crate::arena::{AddressSpace, ArenaWindow};
use crate::frames::{usable_in_map, FrameAllocator, FrameInitError, FrameReport, MemoryRegion};
use crate::heap::Heap;
use crate::pageheap::InitError;
use crate::paging::{Mapper, P4_ENTRY_SPAN};
use crate::platform::Platform;

/// A [`Platform`] that [`take_over`] can finish setting up: it learns where physical memory is mapped from
/// the take-over, so it can be built in a `static` before the kernel knows. The ready platforms
/// ([`Uniprocessor`](crate::platforms::Uniprocessor), [`Smp`](crate::platforms::Smp)) implement it; a
/// kernel's own platform that knows the offset already can implement it as a check.
pub trait TakeOverPlatform: Platform {
    /// Records that physical address `p` is mapped at `offset + p`; `physical_memory_offset` returns
    /// `offset` from now on. Called once, by take-over, before the heap is initialized. Panics if the
    /// platform already knows another offset.
    fn set_physical_memory_offset(&self, offset: VirtAddr);
}

/// Limits of the heap [`take_over`] builds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// The most the heap may grow to, in bytes of heap (its virtual size, not frames: frames run out
    /// first on a machine with less memory). The page heap sizes its metadata for this much, but maps that
    /// metadata lazily, so a generous value costs virtual addresses only; it is fitted to the 512 GiB
    /// window. `None`: [`default_max_bytes`] of the managed memory.
    pub max_bytes: Option<usize>,
    /// Take the window from the higher half of the address space (P4 entries 256..512), as kernels mapped
    /// there want; `false`: the lower half (entries 1..256).
    pub higher_half: bool,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_bytes: None,
            higher_half: true,
        }
    }
}

/// The heap size [`Limits::max_bytes`] defaults to: twice the managed physical memory (room for
/// fragmentation of the address space), at least 64 GiB (the metadata for that is mapped lazily and costs
/// nothing until used).
pub const fn default_max_bytes(managed_bytes: u64) -> usize {
    let twice = managed_bytes.saturating_mul(2);
    let floor = 64 << 30;
    let bytes = if twice > floor { twice } else { floor };
    if bytes > usize::MAX as u64 {
        usize::MAX
    } else {
        bytes as usize
    }
}

/// What [`take_over`] built.
#[derive(Clone, Copy, Debug)]
pub struct TakeOver {
    /// The frame allocator right after it was built (before the heap took any frame).
    pub frames: FrameReport,
    /// Where physical memory is mapped.
    pub phys_offset: VirtAddr,
    /// The live top-level table the mapper edits.
    pub p4: PhysFrame,
    /// The heap's window `[window_base, window_end)`: one P4 entry.
    pub window_base: VirtAddr,
    pub window_end: VirtAddr,
    /// The limit the heap was given (it fits it to the window).
    pub max_bytes: usize,
}

impl fmt::Display for TakeOver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "spanalloc: {} frames managed ({} MiB), {} free; heap window {:#x}..{:#x}, up to {} GiB",
            self.frames.managed.0,
            self.frames.managed.bytes() >> 20,
            self.frames.free.0,
            self.window_base.as_u64(),
            self.window_end.as_u64(),
            self.max_bytes >> 30
        )
    }
}

/// Why [`take_over`] failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TakeOverError {
    /// The heap has its memory already (take-over ran before, or `init`/`init_region`).
    AlreadyInitialized,
    /// The bootloader mapped no physical memory (with `bootloader_api`: the config lacks
    /// `mappings.physical_memory = Some(Mapping::Dynamic)`; use `spanalloc::bootloader::CONFIG`, feature `bootloader`).
    NoPhysicalMemoryMapping,
    /// The physical-memory offset is not 4 KiB-aligned: no page mapping can put physical memory there.
    MisalignedPhysicalMemoryOffset { offset: VirtAddr },
    /// A page table reachable from the P4 (`level` 4 for the P4 itself, 1 for a P1) lies in memory the
    /// map calls usable: the frame allocator would hand it out while the MMU walks it.
    PageTableInUsableMemory { table: PhysFrame, level: u8 },
    /// The memory map cannot support a frame allocator.
    Frames(FrameInitError),
    /// The map leaves the heap fewer frames than [`MIN_FRAMES`] (after the frame allocator's own
    /// metadata): not enough to serve allocations of every size class.
    TooLittleMemory {
        managed: FrameCount,
        minimum: FrameCount,
    },
    /// No empty top-level entry is left for the heap's window in the half asked for.
    NoFreeP4Entry { p4: PhysFrame, higher_half: bool },
    /// The heap could not set itself up in the window (out of frames for its first metadata).
    Heap(InitError),
}

impl fmt::Display for TakeOverError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::AlreadyInitialized => write!(f, "spanalloc take-over: the heap is initialized already"),
            Self::NoPhysicalMemoryMapping => write!(
                f,
                "spanalloc take-over: the bootloader mapped no physical memory (ask for \
                 `mappings.physical_memory = Some(Mapping::Dynamic)`)"
            ),
            Self::MisalignedPhysicalMemoryOffset { offset } => write!(
                f,
                "spanalloc take-over: physical-memory offset {:#x} is not 4 KiB-aligned, so it maps no \
                 physical memory",
                offset.as_u64()
            ),
            Self::PageTableInUsableMemory { table, level } => write!(
                f,
                "spanalloc take-over: the P{level} page table at {:#x} lies in a usable region of the memory \
                 map, which the frame allocator would hand out (report the loader's page tables as reserved)",
                table.start_address().as_u64()
            ),
            Self::Frames(e) => write!(f, "spanalloc take-over: {e}"),
            Self::TooLittleMemory { managed, minimum } => write!(
                f,
                "spanalloc take-over: the memory map leaves the heap {managed}, under the {minimum} it needs"
            ),
            Self::NoFreeP4Entry { p4, higher_half } => write!(
                f,
                "spanalloc take-over: no empty 512 GiB entry in the {} half of the P4 table at {:#x} for the \
                 heap window",
                if *higher_half { "higher" } else { "lower" },
                p4.start_address().as_u64()
            ),
            Self::Heap(e) => write!(f, "spanalloc take-over: heap init: {e}"),
        }
    }
}

impl From<FrameInitError> for TakeOverError {
    fn from(e: FrameInitError) -> Self {
        Self::Frames(e)
    }
}

impl From<InitError> for TakeOverError {
    fn from(e: InitError) -> Self {
        Self::Heap(e)
    }
}

/// The fewest frames [`take_over`] accepts for the heap (256 KiB): page tables for its window, its first
/// metadata and a span of each size class in use.
pub const MIN_FRAMES: FrameCount = FrameCount(64);

/// Checks every page table reachable from `table` (a P`level`) against the memory map: none may lie in
/// usable memory.
///
/// # Safety
/// The tables under `table` are mapped at `phys_offset`.
unsafe fn check_tables(
    regions: &(impl Iterator<Item = MemoryRegion> + Clone),
    phys_offset: VirtAddr,
    table: PhysFrame,
    level: u8,
) -> Result<(), TakeOverError> {
    if usable_in_map(regions.clone(), table) {
        return Err(TakeOverError::PageTableInUsableMemory { table, level });
    }
    if level == 1 {
        return Ok(());
    }
    let entries = (phys_offset + table.start_address().as_u64()).as_ptr::<u64>();
    for i in 0..512 {
        // SAFETY: the table is mapped at the offset (the caller's promise); 512 aligned entries.
        let e = unsafe { entries.add(i).read_volatile() };
        let present = e & PageTableFlags::PRESENT.bits() != 0;
        // A huge page is a leaf (the bit means nothing in a P4 entry).
        let huge = level < 4 && e & PageTableFlags::HUGE_PAGE.bits() != 0;
        if present && !huge {
            let child = PhysFrame::containing_address(PhysAddr::new(e & 0x000f_ffff_ffff_f000));
            // SAFETY: reachable from `table`, so mapped at the offset too.
            unsafe { check_tables(regions, phys_offset, child, level - 1) }?;
        }
    }
    Ok(())
}

/// Turns the boot memory map into a running `heap`, with default [`Limits`]: see the module
/// documentation for what it builds.
///
/// # Safety
/// - `phys_offset + p` is mapped readable and writable for every physical address `p` of the map's regions
///   and of the page tables reachable from CR3 (e.g. `bootloader_api` with `Mapping::Dynamic`).
/// - The usable regions of `regions` are really unused: nothing the kernel needs (its image, stack, page
///   tables, the boot information, this very map) lies in them, and nothing else will use them. (The page
///   tables reachable from the P4 are checked: one in usable memory is refused with
///   [`TakeOverError::PageTableInUsableMemory`] before anything is written. A 4 KiB-misaligned
///   `phys_offset` is refused too; 0, an identity mapping, is fine.)
/// - It is called once, before the first allocation, while one CPU runs; afterwards the kernel edits the
///   page tables reachable from CR3 and takes frames only through [`Heap::with_address_space`].
/// - `regions` replays the same regions each time it is cloned.
#[cfg(target_arch = "x86_64")]
pub unsafe fn take_over<P: TakeOverPlatform, const FULL_CHECKS: bool>(
    heap: &'static Heap<P, FULL_CHECKS>,
    regions: impl Iterator<Item = MemoryRegion> + Clone,
    phys_offset: VirtAddr,
) -> Result<TakeOver, TakeOverError> {
    // SAFETY: forwarded from the caller.
    unsafe { take_over_with(heap, regions, phys_offset, Limits::default()) }
}

/// [`take_over`] with explicit [`Limits`].
///
/// # Safety
/// As for [`take_over`].
#[cfg(target_arch = "x86_64")]
pub unsafe fn take_over_with<P: TakeOverPlatform, const FULL_CHECKS: bool>(
    heap: &'static Heap<P, FULL_CHECKS>,
    regions: impl Iterator<Item = MemoryRegion> + Clone,
    phys_offset: VirtAddr,
    limits: Limits,
) -> Result<TakeOver, TakeOverError> {
    let (p4, _) = x86_64::registers::control::Cr3::read();
    // SAFETY: forwarded from the caller, who promises CR3's tables are mapped at the offset.
    unsafe { take_over_tables(heap, regions, phys_offset, p4, limits) }
}

/// [`take_over_with`] over the hierarchy rooted at `p4` instead of CR3's (for a kernel that switched
/// tables, or a test).
///
/// # Safety
/// As for [`take_over`], with `p4` in place of the tables reachable from CR3.
pub unsafe fn take_over_tables<P: TakeOverPlatform, const FULL_CHECKS: bool>(
    heap: &'static Heap<P, FULL_CHECKS>,
    regions: impl Iterator<Item = MemoryRegion> + Clone,
    phys_offset: VirtAddr,
    p4: PhysFrame,
    limits: Limits,
) -> Result<TakeOver, TakeOverError> {
    // Before building a frame allocator over memory a running heap may be using (in region mode too:
    // it has no address space, but its regions are in use).
    if heap.is_initialized() {
        return Err(TakeOverError::AlreadyInitialized);
    }
    if !phys_offset.is_aligned(FRAME_SIZE) {
        return Err(TakeOverError::MisalignedPhysicalMemoryOffset {
            offset: phys_offset,
        });
    }
    // Before the frame allocator writes its metadata into usable memory (a page table there included).
    // SAFETY: the caller promises the tables under `p4` are mapped at `phys_offset`.
    unsafe { check_tables(&regions, phys_offset, p4, 4) }?;
    let platform = heap.platform();
    platform.set_physical_memory_offset(phys_offset);

    // SAFETY: the caller promises the regions are mapped at `phys_offset` and their usable memory unused.
    let frames = unsafe { FrameAllocator::new(regions, phys_offset) }?;
    let report = frames.report();
    if report.managed < MIN_FRAMES {
        return Err(TakeOverError::TooLittleMemory {
            managed: report.managed,
            minimum: MIN_FRAMES,
        });
    }

    // SAFETY: the caller promises the tables under `p4` are mapped at `phys_offset`, well formed, and from
    // now on edited only through the heap's address space. The heap maps only into its window, an entry
    // that is empty now, so it never remaps a page that holds a Rust object.
    let mapper = unsafe { Mapper::new(p4, phys_offset) };
    let window_base =
        mapper
            .free_p4_range(limits.higher_half, 1)
            .ok_or(TakeOverError::NoFreeP4Entry {
                p4,
                higher_half: limits.higher_half,
            })?;
    let window = ArenaWindow::new(window_base, P4_ENTRY_SPAN);
    let max_bytes = limits
        .max_bytes
        .unwrap_or_else(|| default_max_bytes(frames.managed().bytes()));

    let mut space = AddressSpace::new(frames, mapper, platform);
    space.set_heap_window(&window);
    let window_end = window.end();
    heap.init(space, window, max_bytes)?;
    Ok(TakeOver {
        frames: report,
        phys_offset,
        p4,
        window_base,
        window_end,
        max_bytes,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_limit_is_twice_memory_at_least_64_gib() {
        assert_eq!(default_max_bytes(512 << 20), 64 << 30);
        assert_eq!(default_max_bytes(100 << 30), 200 << 30);
        assert_eq!(default_max_bytes(u64::MAX), usize::MAX);
    }

    #[test]
    fn errors_name_their_cause() {
        let e = TakeOverError::NoFreeP4Entry {
            p4: PhysFrame::containing_address(crate::PhysAddr::new(0x1000)),
            higher_half: true,
        };
        let text = std::format!("{e}");
        assert!(
            text.contains("higher half") && text.contains("0x1000"),
            "{text}"
        );
        let text = std::format!("{}", TakeOverError::NoPhysicalMemoryMapping);
        assert!(text.contains("Mapping::Dynamic"), "{text}");
    }
}

#[cfg(all(test, target_os = "linux", target_arch = "x86_64", not(miri)))]
#[path = "takeover_attack_tests.rs"]
mod attack_tests;
