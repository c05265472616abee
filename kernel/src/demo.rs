//! The default command: boot, report what the machine gave the kernel, put the heap to work so its
//! statistics show something, exit with success.

use crate::heap::HEAP;
use crate::memory::MemoryReport;
use crate::{print, println, qemu};
use alloc::collections::BTreeMap;
use alloc::string::String;
use alloc::vec::Vec;
use bootloader_api::BootInfo;
use core::fmt::Write;

pub fn run(boot_info: &BootInfo, memory: &MemoryReport, cpus: usize) -> ! {
    // BootInfo does not name the firmware; only a UEFI memory map has UnknownUefi regions.
    let firmware = if memory.map.unknown_uefi_bytes > 0 {
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
        "demo: usable memory {} MiB, heap window at {:#x}",
        memory.map.usable_bytes / (1024 * 1024),
        memory.window_base.as_u64()
    );
    let (words, checksum) = workload();
    println!("demo: indexed {words} words, summed a 1 MiB vector; checksum {checksum:#x}");
    HEAP.trim();
    print!(
        "demo: heap after dropping it and trimming:\n{}",
        HEAP.stats()
    );
    crate::gc_demo::run();
    if HEAP.sampling().profile_rate > 0 {
        // `cargo run -- profilerate=<bytes>`: the demo's own heap profile, written to a file by the
        // runner as for the `heapprofile` command.
        crate::heapprofile::dump(boot_info);
    }
    println!("demo: done");
    qemu::exit(qemu::ExitCode::Success)
}

/// Objects of many size classes (strings, tree nodes, growing vectors) and one large object; prints the
/// heap while they are alive and returns the index's size and a checksum, so no work is optimized away.
fn workload() -> (usize, u64) {
    let mut index: BTreeMap<String, Vec<u32>> = BTreeMap::new();
    for i in 0..2000u32 {
        let mut word = String::new();
        let _ = write!(word, "w{}", i % 500);
        index.entry(word).or_default().push(i);
    }
    let big: Vec<u64> = (0..(1 << 17)).collect();
    let checksum = index
        .iter()
        .map(|(word, hits)| word.len() as u64 * hits.iter().map(|&h| u64::from(h)).sum::<u64>())
        .sum::<u64>()
        ^ big.iter().sum::<u64>();
    print!("demo: heap during the workload:\n{}", HEAP.stats());
    (index.len(), checksum)
}
