//! The `heapprofile` command: a workload with the heap profile on, then the profile over serial.
//!
//! Serial protocol, read by the runner (`spanalloc_runner::HeapProfile`): `HEAPPROFILE BEGIN <bytes>`,
//! then the pprof protobuf in lines `HEAPPROFILE <hex>` of at most 64 bytes each, then
//! `HEAPPROFILE END <bytes> <sum>` with `sum` the bytes' sum modulo 2^32. The runner writes the bytes to a
//! file that `go tool pprof <kernel executable> <file>` reads: the profile's one mapping covers the kernel
//! image at the address the bootloader loaded it, with the file offset that puts it at the executable's
//! own addresses, so pprof names the kernel's functions.

use crate::heap::HEAP;
use crate::{println, qemu};
use alloc::boxed::Box;
use alloc::collections::BTreeMap;
use alloc::string::String;
use alloc::vec;
use alloc::vec::Vec;
use bootloader_api::BootInfo;
use core::fmt::Write;
use spanalloc::profile::pprof::Mapping;

/// Where the bootloader loaded the kernel (`BootInfo::kernel_image_offset`), recorded at boot: a return
/// address `a` in a report is at `a - KERNEL_IMAGE_OFFSET` in the kernel executable (`addr2line -f -e`).
pub static KERNEL_IMAGE_OFFSET: core::sync::atomic::AtomicU64 =
    core::sync::atomic::AtomicU64::new(0);

/// Runs the workload and dumps the profile; ends the boot.
pub fn run(boot_info: &BootInfo) -> ! {
    let s = HEAP.sampling();
    println!(
        "heapprofile: sampling one allocation per {} bytes on average; running the workload",
        s.profile_rate
    );
    let index = build_word_index(20_000);
    let buffers = make_buffers(64);
    let churned = churn(200_000);
    println!(
        "heapprofile: {} words indexed, {} buffers kept, {churned} objects churned",
        index.len(),
        buffers.len()
    );
    println!("heapprofile: {:?}", HEAP.sampling_stats());
    dump(boot_info);
    drop((index, buffers));
    qemu::exit(qemu::ExitCode::Success)
}

/// Many small strings and vectors, kept live.
#[inline(never)]
fn build_word_index(words: usize) -> BTreeMap<String, Vec<u32>> {
    let mut index = BTreeMap::new();
    for i in 0..words {
        let mut w = String::new();
        let _ = write!(w, "word{}", i % (words / 4));
        index.entry(w).or_insert_with(Vec::new).push(i as u32);
    }
    index
}

/// Large buffers (64 KiB each), kept live.
#[inline(never)]
fn make_buffers(n: usize) -> Vec<Box<[u8]>> {
    (0..n)
        .map(|i| vec![i as u8; 64 << 10].into_boxed_slice())
        .collect()
}

/// Short-lived objects: allocated and freed at once (they show in alloc_*, not inuse_*).
#[inline(never)]
fn churn(n: usize) -> usize {
    let mut total = 0;
    for i in 0..n {
        let b = Box::new([i as u64; 6]);
        total += core::hint::black_box(&b)[0] as usize & 1;
    }
    n - total + total
}

/// The kernel's code as a mapping for the profile, the way `/proc/<pid>/maps` would describe it: the
/// executable segment of the kernel (a position-independent executable, loaded at `kernel_image_offset`),
/// read from the kernel's own ELF program headers, which the bootloader loaded with the first segment.
/// pprof turns a runtime address into the executable's address with it and names the function.
pub fn kernel_mapping(boot_info: &BootInfo) -> Option<Mapping<'static>> {
    let base = boot_info.kernel_image_offset;
    let read = |off: u64, len: usize| -> &'static [u8] {
        // SAFETY: the ELF header and program headers lie in the kernel image's first segment (file offset
        // 0, loaded at `base`), mapped read-only for the kernel's whole life; the caller checked the range
        // against the header's sizes.
        unsafe { core::slice::from_raw_parts((base + off) as *const u8, len) }
    };
    let u16_at = |b: &[u8], i: usize| u16::from_le_bytes([b[i], b[i + 1]]);
    let u32_at = |b: &[u8], i: usize| u32::from_le_bytes(b[i..i + 4].try_into().unwrap());
    let u64_at = |b: &[u8], i: usize| u64::from_le_bytes(b[i..i + 8].try_into().unwrap());
    let header = read(0, 64);
    if header[..4] != *b"\x7fELF" || header[4] != 2 {
        return None;
    }
    let (phoff, phentsize, phnum) = (
        u64_at(header, 0x20),
        u16_at(header, 0x36),
        u16_at(header, 0x38),
    );
    if phentsize < 56 || phnum > 64 || phoff > 4096 {
        return None;
    }
    (0..phnum as u64).find_map(|i| {
        let ph = read(phoff + i * phentsize as u64, 56);
        const PT_LOAD: u32 = 1;
        const PF_X: u32 = 1;
        if u32_at(ph, 0) != PT_LOAD || u32_at(ph, 4) & PF_X == 0 {
            return None;
        }
        let (offset, vaddr, memsz) = (u64_at(ph, 8), u64_at(ph, 16), u64_at(ph, 40));
        // Not page-aligned: `go tool pprof` takes `start` as where the segment's first byte is.
        Some(Mapping {
            start: base + vaddr,
            limit: base + vaddr + memsz,
            offset,
            file: "kernel",
        })
    })
}

/// Writes the heap profile to serial (see the module documentation).
pub fn dump(boot_info: &BootInfo) {
    let mapping = kernel_mapping(boot_info);
    let mut buf: Vec<u8> = Vec::new();
    let len = loop {
        match HEAP.write_heap_profile(mapping, &mut buf) {
            Ok(n) => break n,
            // Room for what sampling may add while the buffer is allocated.
            Err(need) => buf = vec![0; need + need / 8 + 4096],
        }
    };
    let bytes = &buf[..len];
    println!("HEAPPROFILE BEGIN {len}");
    let mut line = String::with_capacity(2 * 64 + 16);
    for chunk in bytes.chunks(64) {
        line.clear();
        for b in chunk {
            let _ = write!(line, "{b:02x}");
        }
        println!("HEAPPROFILE {line}");
    }
    let sum = bytes.iter().fold(0u32, |s, &b| s.wrapping_add(b as u32));
    println!("HEAPPROFILE END {len} {sum}");
}
