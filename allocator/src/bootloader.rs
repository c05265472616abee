//! `bootloader_api` integration (feature `bootloader`): the bootloader config a spanalloc kernel needs and
//! a take-over straight from `BootInfo`.
//!
//! ```ignore
//! #[global_allocator]
//! static HEAP: spanalloc::Heap<spanalloc::platforms::Uniprocessor> = spanalloc::Heap::new(&spanalloc::platforms::UNIPROCESSOR);
//! bootloader_api::entry_point!(kernel_main, config = &spanalloc::bootloader::CONFIG);
//! fn kernel_main(boot_info: &'static mut bootloader_api::BootInfo) -> ! {
//!     // SAFETY: first thing at boot, one CPU, the bootloader's own boot information.
//!     unsafe { spanalloc::bootloader::take_over(&HEAP, boot_info) }.expect("spanalloc take-over");
//!     // ...
//! }
//! ```
//!
//! Invariant: every boot region maps to exactly one [`MemoryRegion`] with the same bounds, but for bounds
//! past [`PHYS_LIMIT`], which are clamped to it; only `MemoryRegionKind::Usable` becomes usable, every
//! other kind is reserved with a reason naming it.

use bootloader_api::config::{BootloaderConfig, Mapping};
use bootloader_api::info::{MemoryRegion as BootRegion, MemoryRegionKind};
use bootloader_api::BootInfo;

use crate::addr::{PhysAddr, VirtAddr, FRAME_SIZE};
use crate::frames::{MemoryRegion, RegionKind};
use crate::heap::Heap;
use crate::takeover::{TakeOver, TakeOverError, TakeOverPlatform};

/// The default bootloader config plus what spanalloc needs: all physical memory mapped at an offset the
/// bootloader picks (`mappings.physical_memory = Some(Mapping::Dynamic)`).
/// Use it as `entry_point!(main, config = &spanalloc::bootloader::CONFIG)`.
pub const CONFIG: BootloaderConfig = config(BootloaderConfig::new_default());

/// `base` with what spanalloc needs added (the physical-memory mapping), for a kernel with its own config:
/// `pub static MY_CONFIG: BootloaderConfig = spanalloc::bootloader::config({ let mut c = ...; c });`
pub const fn config(mut base: BootloaderConfig) -> BootloaderConfig {
    base.mappings.physical_memory = Some(Mapping::Dynamic);
    base
}

/// The highest frame boundary a [`PhysAddr`] can hold. x86_64 physical addresses have at most 52 bits, so
/// the end of the last possible frame, 2^52, is one past what a `PhysAddr` holds. A boot region bound at
/// or past it (a map reaching the architectural top, or a corrupt entry) is clamped here instead of
/// panicking: that gives up at most the top frame of a 4 PiB physical space.
pub const PHYS_LIMIT: u64 = (1 << 52) - FRAME_SIZE;

/// The frame allocator's view of one boot memory region (bounds clamped to [`PHYS_LIMIT`]).
pub fn region(boot: &BootRegion) -> MemoryRegion {
    let kind = match boot.kind {
        MemoryRegionKind::Usable => RegionKind::Usable,
        MemoryRegionKind::Bootloader => RegionKind::Reserved("bootloader"),
        MemoryRegionKind::UnknownBios(_) => RegionKind::Reserved("firmware (BIOS)"),
        MemoryRegionKind::UnknownUefi(_) => RegionKind::Reserved("firmware (UEFI)"),
        _ => RegionKind::Reserved("unknown memory region kind"),
    };
    MemoryRegion {
        start: PhysAddr::new(boot.start.min(PHYS_LIMIT)),
        end: PhysAddr::new(boot.end.min(PHYS_LIMIT)),
        kind,
    }
}

/// [`take_over`](crate::takeover::take_over) from the bootloader's `BootInfo`: the heap gets all usable
/// memory, the live page tables and a free 512 GiB slot of the higher half, with default limits.
///
/// # Safety
/// - `boot_info` is the one the bootloader passed to the entry point, booted with [`CONFIG`] (or a config
///   made with [`config`]), and nothing has used usable memory or edited the page tables since.
/// - It is called once, before the first allocation, with one CPU running.
/// - Afterwards the kernel takes frames and edits the page tables only through
///   [`Heap::with_address_space`] (see [`share`](crate::share)).
#[cfg(target_arch = "x86_64")]
pub unsafe fn take_over<P: TakeOverPlatform, const FULL_CHECKS: bool>(
    heap: &'static Heap<P, FULL_CHECKS>,
    boot_info: &BootInfo,
) -> Result<TakeOver, TakeOverError> {
    let offset = boot_info
        .physical_memory_offset
        .into_option()
        .ok_or(TakeOverError::NoPhysicalMemoryMapping)?;
    let regions = boot_info.memory_regions.iter().map(region);
    // SAFETY: with Mapping::Dynamic the bootloader maps all physical memory at `offset`, read-write; the
    // kernel's image, stack, page tables and this boot information are in `Bootloader` regions, so the
    // usable ones hold nothing; the rest is the caller's promise.
    unsafe { crate::takeover::take_over(heap, regions, VirtAddr::new(offset)) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_maps_physical_memory() {
        assert_eq!(CONFIG.mappings.physical_memory, Some(Mapping::Dynamic));
    }

    #[test]
    fn bounds_past_the_physical_limit_are_clamped() {
        // A map reaching the architectural top: its end, 2^52, is no `PhysAddr`.
        let top = region(&BootRegion {
            start: 0x10_0000,
            end: 1 << 52,
            kind: MemoryRegionKind::Usable,
        });
        assert_eq!(top.start.as_u64(), 0x10_0000);
        assert_eq!(top.end.as_u64(), PHYS_LIMIT);
        // A corrupt entry: an empty region at the limit, reserved as its kind says.
        let junk = region(&BootRegion {
            start: u64::MAX - 0xfff,
            end: u64::MAX,
            kind: MemoryRegionKind::UnknownBios(3),
        });
        assert_eq!(
            (junk.start.as_u64(), junk.end.as_u64()),
            (PHYS_LIMIT, PHYS_LIMIT)
        );
        assert_eq!(junk.kind, RegionKind::Reserved("firmware (BIOS)"));
    }

    #[test]
    fn regions_keep_bounds_and_kind() {
        let boot = |kind| BootRegion {
            start: 0x10_0000,
            end: 0x20_0000,
            kind,
        };
        let r = region(&boot(MemoryRegionKind::Usable));
        assert_eq!((r.start.as_u64(), r.end.as_u64()), (0x10_0000, 0x20_0000));
        assert_eq!(r.kind, RegionKind::Usable);
        assert_eq!(
            region(&boot(MemoryRegionKind::Bootloader)).kind,
            RegionKind::Reserved("bootloader")
        );
        assert_eq!(
            region(&boot(MemoryRegionKind::UnknownUefi(7))).kind,
            RegionKind::Reserved("firmware (UEFI)")
        );
    }
}
