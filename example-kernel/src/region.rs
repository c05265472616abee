//! A kernel with its own paging, as the well-known tutorial writes one, adopting spanalloc in region
//! mode from the README's "Region mode" lines: it keeps its frame allocator and page tables, maps
//! 100 KiB at 0x4444_4444_0000 and hands that region to the heap. It runs the tutorial's heap tests
//! through `alloc`, maps more memory right above and adds it as a second region, prints the heap's
//! stats and exits QEMU.
//! `cargo test` boots it as the trial `example::region_kernel`; `example::region_readme_snippet` checks
//! that the README's region-mode lines are the ones below, in order.
//!
//! Layout: the glue lines (between `glue` markers), then the kernel's own paging (not spanalloc's
//! business: any kernel has this already), then what it does.
#![no_std]
#![no_main]

extern crate alloc;

use alloc::{boxed::Box, rc::Rc, vec, vec::Vec};
use bootloader_api::config::{BootloaderConfig, Mapping};
use bootloader_api::info::{MemoryRegionKind, MemoryRegions};
use bootloader_api::BootInfo;
use x86_64::registers::control::Cr3;
use x86_64::structures::paging::{
    FrameAllocator, Mapper, OffsetPageTable, Page, PageTable, PageTableFlags, PhysFrame, Size4KiB,
};
use x86_64::{PhysAddr, VirtAddr};

// glue: begin
use spanalloc::{platforms::*, Heap};
#[global_allocator]
static HEAP: Heap<Uniprocessor> = Heap::new(&UNIPROCESSOR);
// glue: end

pub const HEAP_START: usize = 0x_4444_4444_0000;
pub const HEAP_SIZE: usize = 100 * 1024;
/// Mapped later, right above the first region, and added to the heap.
const MORE_SIZE: usize = 512 * 1024;

static CONFIG: BootloaderConfig = {
    let mut config = BootloaderConfig::new_default();
    config.mappings.physical_memory = Some(Mapping::Dynamic);
    config
};
bootloader_api::entry_point!(kernel_main, config = &CONFIG);

fn kernel_main(boot_info: &'static mut BootInfo) -> ! {
    let offset = VirtAddr::new(
        boot_info
            .physical_memory_offset
            .into_option()
            .expect("physical memory mapping"),
    );
    // SAFETY: the bootloader maps all physical memory at `offset`; this is the only reference to the
    // live top-level table.
    let mut mapper = unsafe { active_table(offset) };
    let mut frames = BootFrames {
        regions: &boot_info.memory_regions,
        next: 0,
    };
    map_range(&mut mapper, &mut frames, HEAP_START, HEAP_SIZE);

    // glue: begin
    // SAFETY: the kernel mapped these pages for the heap alone.
    let heap = unsafe { HEAP.init_region(HEAP_START as *mut u8, HEAP_SIZE) }.expect("heap");
    // glue: end
    println!("example-region: {heap}");

    // The tutorial's heap tests.
    let (a, b) = (Box::new(41), Box::new(13));
    check(*a == 41 && *b == 13, "simple allocation");
    let n = 1000;
    let mut v = Vec::new();
    for i in 0..n {
        v.push(i);
    }
    check(v.iter().sum::<u64>() == (n - 1) * n / 2, "large vec");
    for i in 0..HEAP_SIZE {
        let x = Box::new(i);
        check(*x == i, "many boxes");
    }
    let long_lived = Box::new(1);
    for i in 0..HEAP_SIZE {
        let x = Box::new(i);
        check(*x == i, "many boxes long lived");
    }
    check(*long_lived == 1, "long lived");
    let shared = Rc::new(vec![1, 2, 3]);
    let clone = shared.clone();
    check(Rc::strong_count(&clone) == 2, "reference counting");
    drop((a, b, v, long_lived, shared, clone));
    println!("example-region: tutorial tests ok");

    // 256 KiB at once does not fit the first region: map more above it and add it.
    let mut probe: Vec<u8> = Vec::new();
    check(
        probe.try_reserve_exact(256 << 10).is_err(),
        "256 KiB fit in the first region",
    );
    let more = HEAP_START + HEAP_SIZE;
    map_range(&mut mapper, &mut frames, more, MORE_SIZE);
    // SAFETY: as above: pages just mapped for the heap alone.
    let (start, end) = unsafe { HEAP.add_region(more as *mut u8, MORE_SIZE) }.expect("add_region");
    let big = vec![7u8; 256 << 10];
    check(
        big.iter().map(|&x| x as usize).sum::<usize>() == 7 * (256 << 10),
        "big vec",
    );
    check(
        (start.as_u64()..end.as_u64()).contains(&(big.as_ptr() as u64)),
        "the big vec is not in the added region",
    );
    println!(
        "example-region: added {:#x}..{:#x}, big vec ok",
        start.as_u64(),
        end.as_u64()
    );
    drop(big);
    print!("{}", HEAP.stats());
    println!("example-region: done");
    exit(0x10)
}

fn check(ok: bool, what: &str) {
    if !ok {
        panic!("{what}");
    }
}

// The kernel's own paging, as the tutorial has it: an `OffsetPageTable` over the live tables and a frame
// allocator that hands out the boot memory map's usable frames in order.

/// # Safety
/// All physical memory is mapped at `offset`; no other reference to the active top-level table exists.
unsafe fn active_table(offset: VirtAddr) -> OffsetPageTable<'static> {
    let (p4, _) = Cr3::read();
    let table = (offset + p4.start_address().as_u64()).as_mut_ptr::<PageTable>();
    // SAFETY: the caller's contract: the table is mapped at `offset` and not referenced elsewhere.
    unsafe { OffsetPageTable::new(&mut *table, offset) }
}

struct BootFrames {
    regions: &'static MemoryRegions,
    next: usize,
}

// SAFETY: each usable frame is handed out once (`next` only grows).
unsafe impl FrameAllocator<Size4KiB> for BootFrames {
    fn allocate_frame(&mut self) -> Option<PhysFrame> {
        let frame = self
            .regions
            .iter()
            .filter(|r| r.kind == MemoryRegionKind::Usable)
            .flat_map(|r| (r.start..r.end).step_by(4096))
            .nth(self.next)
            .map(|a| PhysFrame::containing_address(PhysAddr::new(a)));
        self.next += 1;
        frame
    }
}

fn map_range(mapper: &mut OffsetPageTable, frames: &mut BootFrames, start: usize, len: usize) {
    let flags = PageTableFlags::PRESENT | PageTableFlags::WRITABLE | PageTableFlags::NO_EXECUTE;
    for addr in (start..start + len).step_by(4096) {
        let page = Page::<Size4KiB>::containing_address(VirtAddr::new(addr as u64));
        let frame = frames.allocate_frame().expect("out of frames");
        // SAFETY: a fresh frame for a page nothing else uses.
        unsafe { mapper.map_to(page, frame, flags, frames) }
            .expect("map")
            .flush();
    }
}

// The example's own serial output and QEMU exit (not spanalloc's business).
mod io;
use io::exit;
