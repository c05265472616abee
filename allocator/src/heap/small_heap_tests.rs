//! Small heaps (issue 11): what a heap of a few MiB keeps for itself. Per-CPU caches shrink with the
//! heap's memory (cache.rs, `cache_shift`), an allocation that finds no memory first takes back the
//! objects its CPU caches, and a 16 MiB heap holds nearly 16 MiB of small objects.

use core::alloc::{GlobalAlloc, Layout};
use std::vec::Vec;

use crate::cache::{cache_shift, scaled_cap, stack_cap, MAX_CACHE_SHIFT};
use crate::host::{HostMachine, HostPlatform};
use crate::sizeclass::SizeClass;
use crate::Heap;

/// A heap on a machine with exactly `usable` bytes the heap may use (the frame allocator's metadata and
/// the page tables come out of them too), leaked for the `'static` it needs.
fn heap_with_usable(usable: usize) -> &'static Heap<HostPlatform> {
    let m = HostMachine::with_usable_memory(usable, 4 << 30);
    let heap: &'static Heap<HostPlatform> = crate::host::leak(Heap::new(m.platform));
    heap.init(m.space, m.window, 2 << 30).expect("heap init");
    heap
}

const MIB: usize = 1 << 20;

#[test]
fn cache_shift_halves_stacks_per_halving_of_memory() {
    assert_eq!(cache_shift(4 << 30), 0);
    assert_eq!(cache_shift(256 * MIB), 0);
    assert_eq!(cache_shift(256 * MIB - 1), 1);
    assert_eq!(cache_shift(128 * MIB), 1);
    assert_eq!(cache_shift(64 * MIB), 2);
    assert_eq!(cache_shift(32 * MIB), 3);
    assert_eq!(cache_shift(16 * MIB), 4);
    assert_eq!(cache_shift(MIB), MAX_CACHE_SHIFT);
    assert_eq!(cache_shift(0), MAX_CACHE_SHIFT);
    for class in SizeClass::small() {
        let c = class.index();
        assert_eq!(scaled_cap(c, 0), stack_cap(c));
        for shift in 1..=MAX_CACHE_SHIFT {
            let cap = scaled_cap(c, shift);
            assert!(
                cap >= 1 && cap <= stack_cap(c),
                "class {c} shift {shift}: {cap}"
            );
            assert_eq!(cap, (stack_cap(c) >> shift).max(1));
        }
    }
}

/// Allocates objects of `layout` until the heap refuses one; returns them.
fn fill(heap: &Heap<HostPlatform>, layout: Layout) -> Vec<*mut u8> {
    let mut v = Vec::new();
    loop {
        // SAFETY: a valid non-zero layout.
        let p = unsafe { heap.alloc(layout) };
        if p.is_null() {
            return v;
        }
        v.push(p);
    }
}

/// Bytes of 64 B objects a 16 MiB heap held when this test was written: 253,056 objects (96.5% of
/// the machine's usable memory; the rest: span structs and bitmaps, the span map and page-allocator
/// summaries of its first 64 MiB arena, one CPU cache's block, page tables, the frame allocator's
/// bitmap). The heap is deterministic on one thread.
const HELD_64B_AT_16MIB: usize = 253_056 * 64;
/// The margin under it: 64 KiB, 0.4% of the heap. Before metadata padding went onto the free lists
/// (meta.rs) the heap held 128 KiB less, and the CPU caches of a full-size heap alone may strand
/// some 2 MiB: either comes back and this fails.
const MARGIN: usize = 64 << 10;

#[test]
#[cfg_attr(miri, ignore = "fills 16 MiB of fake memory object by object")]
fn sixteen_mib_heap_holds_nearly_sixteen_mib_of_64_byte_objects() {
    let heap = heap_with_usable(16 * MIB);
    let layout = Layout::from_size_align(64, 8).unwrap();
    let v = fill(heap, layout);
    let s = heap.stats();
    let class = SizeClass::for_size(64).unwrap();
    assert_eq!(s.classes[class.index()].objects, v.len());
    assert!(
        s.bytes() >= HELD_64B_AT_16MIB - MARGIN,
        "a 16 MiB heap held only {} bytes of 64 B objects (expected at least {}):\n{s}",
        s.bytes(),
        HELD_64B_AT_16MIB - MARGIN
    );
    // Emptied, it holds as much again (nothing leaked into metadata or caches for good).
    for &p in &v {
        // SAFETY: live objects of `layout`, freed once.
        unsafe { heap.dealloc(p, layout) };
    }
    let again = fill(heap, layout);
    assert!(
        again.len() + 16 >= v.len(),
        "refilled with {} objects after {}",
        again.len(),
        v.len()
    );
}

/// Allocates `n` objects of every small class, then frees them all: afterwards each class's stack is as
/// full as it gets.
fn churn_every_class(heap: &Heap<HostPlatform>, n: usize) {
    for class in SizeClass::small() {
        let layout = Layout::from_size_align(class.size(), 8).unwrap();
        let v: Vec<*mut u8> = (0..n)
            // SAFETY: a valid non-zero layout.
            .map(|_| unsafe { heap.alloc(layout) })
            .collect();
        for p in v {
            assert!(!p.is_null(), "class {} ran out", class.get());
            // SAFETY: a live object of `layout`, freed once.
            unsafe { heap.dealloc(p, layout) };
        }
    }
}

#[test]
#[cfg_attr(miri, ignore = "maps hundreds of MiB of fake memory")]
fn a_small_heaps_cpu_caches_shrink_with_its_memory() {
    for (mib, shift) in [(16, 4), (64, 2), (256, 0)] {
        let heap = heap_with_usable(mib * MIB);
        churn_every_class(heap, 300);
        let s = heap.stats();
        let mut bytes = 0;
        for class in SizeClass::small() {
            let c = class.index();
            let cached = s.classes[c].cached;
            assert!(
                cached <= scaled_cap(c, shift),
                "{mib} MiB: class {c} caches {cached}, over {}",
                scaled_cap(c, shift)
            );
            bytes += cached * class.size();
        }
        std::println!(
            "{mib} MiB: {bytes} bytes cached; at most {}",
            cache_bytes(shift)
        );
        if shift == 0 {
            assert!(
                bytes > 512 << 10,
                "a full-size cache holds {bytes} bytes only"
            );
        }
    }
    // What one CPU's cache may hold at most: full size some 2 MiB; a 16 MiB heap's under a quarter of
    // that (the classes over 2 KiB keep one object each).
    assert!(cache_bytes(0) > 3 * MIB / 2, "{}", cache_bytes(0));
    assert!(cache_bytes(4) < cache_bytes(0) / 4, "{}", cache_bytes(4));
}

/// Bytes of objects one CPU's cache holds at most with its stacks shrunk by `shift`.
fn cache_bytes(shift: u32) -> usize {
    SizeClass::small()
        .map(|c| scaled_cap(c.index(), shift) * c.size())
        .sum()
}

#[test]
#[cfg_attr(miri, ignore = "fills 16 MiB of fake memory")]
fn a_large_allocation_that_finds_no_memory_drains_this_cpus_cache() {
    let heap = heap_with_usable(16 * MIB);
    let small = Layout::from_size_align(64, 8).unwrap();
    let c = SizeClass::for_size(64).unwrap().index();
    let v = fill(heap, small);
    for &p in &v {
        // SAFETY: live objects of `small`, freed once.
        unsafe { heap.dealloc(p, small) };
    }
    assert!(
        heap.stats().classes[c].cached > 0,
        "nothing cached to drain"
    );
    // Large objects until none fits: the last attempts find frames only in the spans the cached
    // objects keep alive.
    let large = Layout::from_size_align(64 << 10, 8).unwrap();
    let big = fill(heap, large);
    let s = heap.stats();
    assert_eq!(
        s.classes[c].cached, 0,
        "the failed allocation left the cache full:\n{s}"
    );
    assert_eq!(
        s.classes[c].spans, 0,
        "a 64 B span outlived the drain:\n{s}"
    );
    // Nearly all the memory the small objects had went to large ones.
    assert!(
        big.len() * large.size() + (512 << 10) >= v.len() * small.size(),
        "{} large objects after {} small ones",
        big.len(),
        v.len()
    );
    for p in big {
        // SAFETY: live objects of `large`, freed once.
        unsafe { heap.dealloc(p, large) };
    }
}

#[test]
#[cfg_attr(miri, ignore = "fills 16 MiB of fake memory")]
fn a_small_allocation_that_finds_no_memory_drains_this_cpus_cache() {
    let heap = heap_with_usable(16 * MIB);
    let a = Layout::from_size_align(64, 8).unwrap();
    let ca = SizeClass::for_size(64).unwrap().index();
    let v = fill(heap, a);
    for &p in &v {
        // SAFETY: live objects of `a`, freed once.
        unsafe { heap.dealloc(p, a) };
    }
    assert!(
        heap.stats().classes[ca].cached > 0,
        "nothing cached to drain"
    );
    // Another class until none fits: its last refill finds pages only in the spans of `a`'s cached
    // objects, which the failed refill drains; the heap then serves `b` until it is really full.
    let b = Layout::from_size_align(256, 8).unwrap();
    let w = fill(heap, b);
    let s = heap.stats();
    assert_eq!(
        s.classes[ca].cached, 0,
        "the failed refill left the cache full:\n{s}"
    );
    assert_eq!(
        s.classes[ca].spans, 0,
        "a 64 B span outlived the drain:\n{s}"
    );
    assert!(
        w.len() * b.size() + (256 << 10) >= v.len() * a.size(),
        "{} objects of 256 B after {} of 64 B",
        w.len(),
        v.len()
    );
}
