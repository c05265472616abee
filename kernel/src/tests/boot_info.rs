//! What the bootloader hands over is what the kernel relies on: a physical-memory mapping, a sane memory map,
//! and ACPI's root pointer.

use crate::ktest::TestCtx;
use alloc::vec::Vec;

const MIB: u64 = 1024 * 1024;

pub fn boot_info(ctx: &mut TestCtx) {
    let info = ctx.boot_info;
    let phys_offset = info
        .physical_memory_offset
        .into_option()
        .expect("no physical memory offset: the bootloader config must request Mapping::Dynamic");

    assert!(
        ctx.memory.map.usable_bytes > 100 * MIB,
        "only {} bytes usable; QEMU runs with 512 MiB by default",
        ctx.memory.map.usable_bytes
    );

    let mut regions: Vec<_> = info.memory_regions.iter().copied().collect();
    assert!(!regions.is_empty(), "empty memory map");
    regions.sort_unstable_by_key(|region| region.start);
    for region in &regions {
        assert!(
            region.start < region.end,
            "empty or inverted memory region {:#x}..{:#x} ({:?})",
            region.start,
            region.end,
            region.kind
        );
    }
    for pair in regions.windows(2) {
        assert!(
            pair[0].end <= pair[1].start,
            "memory regions overlap: {:#x}..{:#x} ({:?}) and {:#x}..{:#x} ({:?})",
            pair[0].start,
            pair[0].end,
            pair[0].kind,
            pair[1].start,
            pair[1].end,
            pair[1].kind
        );
    }

    let rsdp = info.rsdp_addr.into_option().expect("no ACPI RSDP address");
    // The RSDP starts with its signature: reading it through the mapping proves the mapping really maps
    // physical memory at `phys_offset`.
    let signature_ptr = (phys_offset + rsdp) as *const [u8; 8];
    // SAFETY: the mapping covers all physical memory the map describes and the first 4 GiB (where firmware puts
    // the RSDP); the read is of plain bytes and `[u8; 8]` has alignment 1.
    let signature = unsafe { signature_ptr.read_volatile() };
    assert_eq!(
        &signature, b"RSD PTR ",
        "no RSDP signature at physical {rsdp:#x} through the mapping at {phys_offset:#x}"
    );
}
