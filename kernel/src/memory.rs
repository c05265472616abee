//! Memory takeover: the one place where the kernel takes the boot memory map over from the bootloader.
//!
//! For now [`take_over`] only summarizes the map. The change that brings spanalloc into the kernel hands the
//! usable regions to its frame allocator here, sets up the page tables and arenas, and extends
//! [`MemoryReport`] with what it built.
//!
//! Invariant: the byte counts add up the map's regions exactly, per kind; nothing is estimated.

use bootloader_api::info::MemoryRegionKind;
use bootloader_api::BootInfo;
use core::fmt;

/// What the boot memory map holds, in bytes per region kind.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MemoryReport {
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

/// Takes the memory map over from the bootloader. Today: summarizes it (and logs each region at debug level).
pub fn take_over(boot_info: &BootInfo) -> MemoryReport {
    let mut report = MemoryReport::default();
    for region in boot_info.memory_regions.iter() {
        let bytes = region.end - region.start;
        log::debug!(
            "memory region {:#014x}..{:#014x} {:?} ({} KiB)",
            region.start,
            region.end,
            region.kind,
            bytes / 1024
        );
        report.regions += 1;
        let counter = match region.kind {
            MemoryRegionKind::Usable => &mut report.usable_bytes,
            MemoryRegionKind::Bootloader => &mut report.bootloader_bytes,
            MemoryRegionKind::UnknownBios(_) => &mut report.unknown_bios_bytes,
            MemoryRegionKind::UnknownUefi(_) => &mut report.unknown_uefi_bytes,
            _ => &mut report.other_bytes,
        };
        *counter += bytes;
    }
    report
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
impl fmt::Display for MemoryReport {
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
