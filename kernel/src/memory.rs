//! Memory take-over: the one place where the kernel takes physical memory and the page tables over from the
//! bootloader and hands them to spanalloc.
//!
//! [`take_over`] turns the boot memory map into spanalloc's frame allocator, wraps the live page tables
//! (CR3) in a mapper, reserves one free 512 GiB slot of the higher half as the heap's window, and gives all
//! of it to [`HEAP`]. From then on every frame and every heap mapping is the heap's address space's
//! (reachable through [`Heap::with_address_space`](spanalloc::Heap::with_address_space)).
//!
//! Invariants:
//! - The byte counts of [`MapSummary`] add up the map's regions exactly, per kind; nothing is estimated.
//! - Take-over runs once, before the first allocation, on the only running CPU.
//! - The heap window is one whole P4 entry nobody else maps into; the heap uses it from the bottom, at most
//!   [`HEAP_MAX_BYTES`] plus its metadata (less than that again), so the top of the window stays unused
//!   (the in-kernel tests map scratch pages there).

use crate::heap::{HEAP, HEAP_MAX_BYTES};
use crate::logger::Block;
use crate::platform::PLATFORM;
use bootloader_api::info::{MemoryRegion as BootRegion, MemoryRegionKind};
use bootloader_api::BootInfo;
use core::fmt;
use spanalloc::arena::{AddressSpace, ArenaWindow};
use spanalloc::frames::{FrameAllocator, FrameReport, MemoryRegion, RegionKind};
use spanalloc::paging::{Mapper, P4_ENTRY_SPAN};
use spanalloc::{PhysAddr, VirtAddr};
use x86_64::registers::control::Cr3;

/// What the boot memory map holds, in bytes per region kind.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MapSummary {
    pub regions: usize,
    /// Free for the kernel to use.
    pub usable_bytes: u64,
    /// Used by the bootloader: the kernel image, its stack, page tables, boot info.
    pub bootloader_bytes: u64,
    /// Reserved by the BIOS (E820 types other than usable).
    pub unknown_bios_bytes: u64,
    /// Reserved by UEFI (memory types other than conventional).
    pub unknown_uefi_bytes: u64,
    /// Kinds a newer bootloader_api may add.
    pub other_bytes: u64,
}

/// The boot memory map and what take-over built from it.
#[derive(Debug, Clone, Copy)]
pub struct MemoryReport {
    pub map: MapSummary,
    /// The frame allocator right after take-over (before the heap took any frame).
    pub frames: FrameReport,
    /// Where physical memory is mapped.
    pub phys_offset: VirtAddr,
    /// The heap's window: `[window_base, window_end)`, one P4 entry.
    pub window_base: VirtAddr,
    pub window_end: VirtAddr,
}

/// The reason the frame allocator reports for each kind of reserved boot region.
fn region_kind(kind: MemoryRegionKind) -> RegionKind {
    match kind {
        MemoryRegionKind::Usable => RegionKind::Usable,
        MemoryRegionKind::Bootloader => RegionKind::Reserved("bootloader"),
        MemoryRegionKind::UnknownBios(_) => RegionKind::Reserved("firmware (BIOS)"),
        MemoryRegionKind::UnknownUefi(_) => RegionKind::Reserved("firmware (UEFI)"),
        _ => RegionKind::Reserved("unknown memory region kind"),
    }
}

fn region(boot: &BootRegion) -> MemoryRegion {
    MemoryRegion {
        start: PhysAddr::new(boot.start),
        end: PhysAddr::new(boot.end),
        kind: region_kind(boot.kind),
    }
}

/// Takes memory over from the bootloader and initializes [`HEAP`]. Panics, naming the cause, if the boot
/// information cannot support a heap (no physical-memory mapping, no usable memory, no free P4 entry).
pub fn take_over(boot_info: &BootInfo) -> MemoryReport {
    let map = summarize(boot_info);
    let phys_offset = boot_info.physical_memory_offset.into_option().expect(
        "memory: the bootloader mapped no physical memory (the config must request Mapping::Dynamic)",
    );
    let phys_offset = VirtAddr::new(phys_offset);
    PLATFORM.set_physical_memory_offset(phys_offset);

    let regions = boot_info.memory_regions.iter().map(region);
    // SAFETY: with `Mapping::Dynamic` the bootloader maps all physical memory the map describes at
    // `phys_offset`, read-write. Usable regions hold nothing the kernel uses: its image, stack, page tables,
    // boot info and this very map are in `Bootloader` regions, and nothing else has touched usable memory.
    let frames = unsafe { FrameAllocator::new(regions, phys_offset) }
        .unwrap_or_else(|err| panic!("memory: take-over failed: {err}"));
    let frame_report = frames.report();

    let (p4, _) = Cr3::read();
    // SAFETY: the tables reachable from CR3 are the bootloader's, well formed and mapped at `phys_offset`
    // like all physical memory; from here on only the heap's address space edits them (one CPU, and the
    // kernel has no other page-table code). The mapper only ever maps into the heap window, a P4 entry that
    // is empty now, so no page holding a Rust object is remapped.
    let mapper = unsafe { Mapper::new(p4, phys_offset) };
    let window_base = mapper.free_p4_range(true, 1).unwrap_or_else(|| {
        panic!(
            "memory: take-over failed: no free 512 GiB entry in the higher half of the P4 table at {:#x} \
             for the heap window",
            p4.start_address().as_u64()
        )
    });
    let window = ArenaWindow::new(window_base, P4_ENTRY_SPAN);
    let window_end = window.end();
    let space = AddressSpace::new(frames, mapper, &PLATFORM);
    HEAP.init(space, window, HEAP_MAX_BYTES)
        .unwrap_or_else(|err| panic!("memory: heap init failed: {err}"));

    log::info!(
        "usable {}; frame allocator: {}",
        Mib(map.usable_bytes),
        Block(&frame_report)
    );
    log::info!(
        "heap window {:#x}..{:#x} (up to {} GiB of heap), physical memory at {:#x}",
        window_base.as_u64(),
        window_end.as_u64(),
        HEAP_MAX_BYTES >> 30,
        phys_offset.as_u64()
    );
    MemoryReport {
        map,
        frames: frame_report,
        phys_offset,
        window_base,
        window_end,
    }
}

/// Adds the map's regions up per kind; logs each region at debug level.
fn summarize(boot_info: &BootInfo) -> MapSummary {
    let mut summary = MapSummary::default();
    for region in boot_info.memory_regions.iter() {
        let bytes = region.end - region.start;
        log::debug!(
            "memory region {:#014x}..{:#014x} {:?} ({} KiB)",
            region.start,
            region.end,
            region.kind,
            bytes / 1024
        );
        summary.regions += 1;
        let counter = match region.kind {
            MemoryRegionKind::Usable => &mut summary.usable_bytes,
            MemoryRegionKind::Bootloader => &mut summary.bootloader_bytes,
            MemoryRegionKind::UnknownBios(_) => &mut summary.unknown_bios_bytes,
            MemoryRegionKind::UnknownUefi(_) => &mut summary.unknown_uefi_bytes,
            _ => &mut summary.other_bytes,
        };
        *counter += bytes;
    }
    summary
}

/// A byte count shown as exact bytes plus MiB with one decimal.
struct Mib(u64);

impl fmt::Display for Mib {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        const MIB: u64 = 1024 * 1024;
        let tenths = (self.0 % MIB) * 10 / MIB;
        write!(f, "{} ({}.{} MiB)", self.0, self.0 / MIB, tenths)
    }
}

/// One line, `key=value` words, so the host tests can parse it.
impl fmt::Display for MapSummary {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        write!(
            f,
            "memory map: regions={} usable={} bootloader={} unknown_bios={} unknown_uefi={} other={}",
            self.regions,
            Mib(self.usable_bytes),
            Mib(self.bootloader_bytes),
            Mib(self.unknown_bios_bytes),
            Mib(self.unknown_uefi_bytes),
            Mib(self.other_bytes),
        )
    }
}
