//! The default command: boot, report what the machine gave the kernel, exit with success.

use crate::memory::MemoryReport;
use crate::{println, qemu};
use bootloader_api::BootInfo;

pub fn run(boot_info: &BootInfo, memory: &MemoryReport, cpus: usize) -> ! {
    // BootInfo does not name the firmware; only a UEFI memory map has UnknownUefi regions.
    let firmware = if memory.unknown_uefi_bytes > 0 {
        "UEFI"
    } else {
        "BIOS"
    };
    println!("demo: booted by {firmware} on {cpus} CPU(s)");
    println!(
        "demo: kernel image at physical {:#x}, {} KiB",
        boot_info.kernel_addr,
        boot_info.kernel_len / 1024
    );
    match boot_info.physical_memory_offset.into_option() {
        Some(offset) => println!("demo: physical memory mapped at {offset:#x}"),
        None => println!("demo: physical memory is not mapped"),
    }
    match boot_info.rsdp_addr.into_option() {
        Some(rsdp) => println!("demo: ACPI RSDP at physical {rsdp:#x}"),
        None => println!("demo: no ACPI RSDP"),
    }
    println!(
        "demo: usable memory {} MiB; done",
        memory.usable_bytes / (1024 * 1024)
    );
    qemu::exit(qemu::ExitCode::Success)
}
