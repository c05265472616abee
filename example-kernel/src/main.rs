//! The smallest kernel that uses spanalloc, written only from the README's "Use spanalloc in your kernel"
//! section: single CPU, the ready [`Uniprocessor`] platform and the one-call `bootloader_api` take-over.
//! It allocates through `alloc`, runs a garbage-collected list, maps a page of its own through the heap's
//! address space, prints the heap's stats and exits QEMU.
//! `cargo test` boots it as the trial `example::hello_kernel`; `example::readme_snippet` checks that the
//! README's snippet lines are the ones below, in order, so neither can change without the other.
//!
//! Layout: the glue lines (between the `glue` markers, what the README shows), then what the kernel does,
//! then its own serial output and QEMU exit (not spanalloc's business).
#![no_std]
#![no_main]

extern crate alloc;

use alloc::{boxed::Box, collections::BTreeMap, vec::Vec};
use bootloader_api::BootInfo;
use spanalloc::addr::{Page, PageTableFlags};
use spanalloc::gc::{Gc, GcCell, GcConfig, GcHeap, Rootable, Trace};

// glue: begin
use spanalloc::platforms::{Uniprocessor, UNIPROCESSOR};
use spanalloc::Heap;

#[global_allocator]
static HEAP: Heap<Uniprocessor> = Heap::new(&UNIPROCESSOR);

bootloader_api::entry_point!(kernel_main, config = &spanalloc::bootloader::CONFIG);

fn kernel_main(boot_info: &'static mut BootInfo) -> ! {
    // SAFETY: first thing after boot, on the only CPU, with the bootloader's own BootInfo.
    let memory = unsafe { spanalloc::bootloader::take_over(&HEAP, boot_info) }.expect("take-over");
    // glue: end
    println!("example: {memory}");

    // Plain `alloc` collections on the span heap.
    let squares: Vec<u64> = (0..10_000).map(|i| i * i).collect();
    let mut by_len = BTreeMap::new();
    for i in 0..1000u64 {
        by_len.insert(i, Box::new([i; 16]));
    }
    let sum: u64 = squares.iter().sum::<u64>() + by_len.values().map(|b| b[0]).sum::<u64>();
    check(sum == 333_283_335_000 + 499_500, "alloc: wrong sum");
    drop((squares, by_len));
    println!("example: alloc ok");

    // A garbage-collected list: 10 000 nodes, a cut every 100, so only the last 100 stay reachable.
    let mut gc: GcHeap<ListRoot> = GcHeap::new(&HEAP, GcConfig::default(), |_| GcCell::new(None));
    for i in 0..10_000u64 {
        gc.mutate(|mc, root| {
            let next = if i % 100 == 0 { None } else { root.get() };
            let node = Gc::new(
                mc,
                Node {
                    value: i,
                    next: GcCell::new(next),
                },
            );
            root.set(mc, Some(node));
        });
    }
    gc.collect();
    let live = gc.mutate(|_, root| {
        let (mut n, mut cur) = (0, root.get());
        while let Some(node) = cur {
            check(node.value == 9_999 - n, "gc: list corrupted");
            n += 1;
            cur = node.next.get();
        }
        n
    });
    let stats = gc.stats();
    check(
        live == 100 && stats.objects_freed > 0,
        "gc: wrong live count",
    );
    println!(
        "example: gc ok: {} cycles, {} objects freed, {live} live",
        stats.cycles, stats.objects_freed
    );
    drop(gc);

    // Sharing the machine: a page of the kernel's own, backed by a frame, through the heap's address space.
    let share_a_page = |s: &mut spanalloc::arena::AddressSpace<Uniprocessor>| {
        let flags = PageTableFlags::WRITABLE | PageTableFlags::NO_EXECUTE;
        let in_window = Page::containing_address(memory.window_base);
        // SAFETY: refused before anything happens (the page is the heap's).
        check(
            unsafe { s.map_fresh_kernel_page(in_window, flags) }.is_err(),
            "share: window",
        );
        let page =
            Page::containing_address(s.mapper.free_p4_range(true, 1).expect("free P4 entry"));
        // SAFETY: a page under an empty top-level entry holds nothing.
        let frame = unsafe { s.map_fresh_kernel_page(page, flags) }.expect("map");
        // SAFETY: the page was just mapped to a zeroed frame of ours; the frame is in the direct map.
        let seen = unsafe {
            page.start_address()
                .as_mut_ptr::<u64>()
                .write_volatile(0x5a5a);
            (s.frames.phys_offset() + frame.start_address().as_u64())
                .as_ptr::<u64>()
                .read_volatile()
        };
        // SAFETY: nothing refers to the page any more.
        let back = unsafe { s.unmap_kernel_page(page) }.expect("unmap");
        s.frames.free(back);
        seen == 0x5a5a && back == frame
    };
    // SAFETY: `share_a_page` maps a page of the kernel's own through `share`'s window-checked methods
    // only, and frees nothing it did not take.
    let shared = unsafe { HEAP.with_address_space(share_a_page) };
    check(
        shared == Some(true),
        "share: the page did not reach its frame",
    );
    println!("example: share ok");

    HEAP.trim();
    print!("{}", HEAP.stats());
    println!("example: done");
    exit(0x10)
}

#[derive(Trace)]
struct Node<'gc> {
    value: u64,
    next: GcCell<'gc, Option<Gc<'gc, Node<'gc>>>>,
}

struct ListRoot;
impl Rootable for ListRoot {
    type Root<'gc> = GcCell<'gc, Option<Gc<'gc, Node<'gc>>>>;
}

fn check(ok: bool, what: &str) {
    if !ok {
        panic!("{what}");
    }
}

// The example's own serial output and QEMU exit (not spanalloc's business).
mod io;
use io::exit;
