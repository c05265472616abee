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
    // An eighth of slack: a "256 MiB" machine has a little less to hand out.
    assert_eq!(cache_shift(256 * MIB - 1), 0);
    assert_eq!(cache_shift(224 * MIB), 0);
    assert_eq!(cache_shift(224 * MIB - 1), 1);
    assert_eq!(cache_shift(128 * MIB), 1);
    assert_eq!(cache_shift(112 * MIB - 1), 2);
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

// ------------------------------------------------------------------------------ trimmed tails

/// 36 KiB: five 8 KiB pages, of which the last one's second 4 KiB frame holds no byte of the object.
const TRIMMABLE: usize = 36 << 10;

/// A heap whose free pages are all scavenged again after a first large object came and went (so the
/// span struct's metadata exists already), with one small object kept so that the page table of the
/// heap's first 2 MiB stays: what a trimmed allocation maps is then its frames alone.
fn warm_heap() -> &'static Heap<HostPlatform> {
    let heap = heap_with_usable(16 * MIB);
    let l = Layout::from_size_align(TRIMMABLE, 8).unwrap();
    // SAFETY: valid layouts; the large object is freed at once, the small one kept for good.
    unsafe {
        assert!(!heap.alloc(Layout::new::<u64>()).is_null());
        let p = heap.alloc(l);
        assert!(!p.is_null());
        heap.dealloc(p, l);
    }
    heap.trim();
    heap
}

fn held(heap: &Heap<HostPlatform>) -> u64 {
    heap.stats().frames_held.0
}

/// Writes `len` bytes of a pattern from `p`, then checks them (a write past what is mapped faults).
///
/// # Safety
/// `[p, p + len)` is an object of ours.
unsafe fn fill_and_check(p: *mut u8, len: usize, seed: u8) {
    // SAFETY: the caller's contract.
    let s = unsafe { core::slice::from_raw_parts_mut(p, len) };
    for (i, b) in s.iter_mut().enumerate() {
        *b = (i as u8).wrapping_mul(7) ^ seed;
    }
    assert!(s
        .iter()
        .enumerate()
        .all(|(i, b)| *b == (i as u8).wrapping_mul(7) ^ seed));
}

#[test]
#[cfg_attr(miri, ignore = "maps and unmaps single frames many times")]
fn a_large_object_leaves_its_last_pages_unused_frame_unmapped_until_it_grows_into_it() {
    let heap = warm_heap();
    let h0 = held(heap);
    let l = Layout::from_size_align(TRIMMABLE, 8).unwrap();
    // SAFETY: a valid layout.
    let p = unsafe { heap.alloc(l) };
    assert!(!p.is_null());
    assert_eq!(heap.stats().pages.trimmed_tails, 1);
    assert_eq!(held(heap) - h0, 9, "five pages but nine frames");
    // SAFETY: the object's bytes.
    unsafe { fill_and_check(p, TRIMMABLE, 1) };
    // The same five pages hold 40 KiB: the realloc stays in place and maps the tail first.
    // SAFETY: a live object of `l`; a non-zero size.
    let q = unsafe { heap.realloc(p, l, 40 << 10) };
    assert_eq!(q, p, "a realloc within the object's pages moved it");
    assert_eq!(heap.stats().pages.trimmed_tails, 0);
    assert_eq!(held(heap) - h0, 10);
    // SAFETY: the first 36 KiB kept the pattern; all 40 KiB are the object's now.
    unsafe {
        let s = core::slice::from_raw_parts(q, TRIMMABLE);
        assert!(s
            .iter()
            .enumerate()
            .all(|(i, b)| *b == (i as u8).wrapping_mul(7) ^ 1));
        fill_and_check(q, 40 << 10, 2);
        heap.dealloc(q, Layout::from_size_align(40 << 10, 8).unwrap());
    }
    heap.trim();
    assert_eq!(held(heap), h0, "frames left behind");
}

#[test]
#[cfg_attr(miri, ignore = "maps and unmaps single frames many times")]
fn a_trimmed_tail_is_settled_when_its_page_is_freed() {
    let l = Layout::from_size_align(TRIMMABLE, 8).unwrap();
    // Freed whole: the page becomes a whole dirty page (its missing frame mapped, no shootdown).
    let heap = warm_heap();
    let (h0, in_use0) = (held(heap), heap.stats().pages.in_use);
    // SAFETY: a valid layout; the object is freed once.
    unsafe {
        let p = heap.alloc(l);
        assert_eq!(heap.stats().pages.trimmed_tails, 1);
        heap.dealloc(p, l);
    }
    let s = heap.stats();
    assert_eq!((s.pages.trimmed_tails, s.pages.in_use), (0, in_use0));
    assert_eq!(held(heap) - h0, 10, "the freed pages are whole and mapped");
    heap.trim();
    assert_eq!(held(heap), h0);
    // Shrunk in place (68 KiB: nine pages, trimmed; to five): the trimmed page is among the freed
    // ones; the kept pages are whole.
    let big = Layout::from_size_align(68 << 10, 8).unwrap();
    // SAFETY: a valid layout; the object is resized and freed once.
    unsafe {
        let p = heap.alloc(big);
        assert_eq!(heap.stats().pages.trimmed_tails, 1);
        let q = heap.realloc(p, big, TRIMMABLE);
        assert_eq!(q, p, "a shrink moved the object");
        assert_eq!(heap.stats().pages.trimmed_tails, 0);
        fill_and_check(q, TRIMMABLE, 3);
        // Grown in place again over the pages just freed (nothing else took them).
        let r = heap.realloc(q, l, 60 << 10);
        assert_eq!(r, q, "nothing kept the object from growing in place");
        fill_and_check(r, 60 << 10, 4);
        heap.dealloc(r, Layout::from_size_align(60 << 10, 8).unwrap());
    }
    heap.trim();
    assert_eq!(held(heap), h0, "frames left behind");
}

#[test]
#[cfg_attr(miri, ignore = "maps and unmaps single frames many times")]
fn without_frames_a_trimmed_object_neither_grows_into_its_tail_nor_leaks_it() {
    let heap = warm_heap();
    let (h0, in_use0) = (held(heap), heap.stats().pages.in_use);
    let l = Layout::from_size_align(TRIMMABLE, 8).unwrap();
    // SAFETY: a valid layout.
    let p = unsafe { heap.alloc(l) };
    assert_eq!(heap.stats().pages.trimmed_tails, 1);
    // SAFETY: the object's bytes.
    unsafe { fill_and_check(p, TRIMMABLE, 5) };
    heap.trim();
    // SAFETY: takes free frames only.
    let hoard =
        unsafe { heap.with_address_space(|s| crate::testing::hoard_all_but(&mut s.frames, 0)) }
            .unwrap();
    // The tail needs a frame and there is none: the realloc fails and the object stays as it was.
    // SAFETY: a live object of `l`; a non-zero size.
    let q = unsafe { heap.realloc(p, l, 40 << 10) };
    assert!(q.is_null(), "a realloc without frames succeeded");
    assert_eq!(heap.stats().pages.trimmed_tails, 1);
    // SAFETY: still the object of `l`.
    unsafe {
        let s = core::slice::from_raw_parts(p, TRIMMABLE);
        assert!(s
            .iter()
            .enumerate()
            .all(|(i, b)| *b == (i as u8).wrapping_mul(7) ^ 5));
    }
    // Freed without a frame to map the tail with: the page's first frame is unmapped instead, and
    // the page is scavenged.
    // SAFETY: a live object of `l`, freed once.
    unsafe { heap.dealloc(p, l) };
    let s = heap.stats();
    assert_eq!((s.pages.trimmed_tails, s.pages.in_use), (0, in_use0));
    assert_eq!(held(heap) - h0, 8, "four dirty pages, the fifth scavenged");
    // SAFETY: gives back the frames hoarded above, which nothing else uses.
    unsafe {
        heap.with_address_space(|s| {
            for (f, n) in hoard {
                s.frames.free_contiguous(f, n);
            }
        })
    };
    heap.trim();
    assert_eq!(held(heap), h0, "frames left behind");
    // The heap works on: the scavenged page maps again.
    // SAFETY: a valid layout; freed once.
    unsafe {
        let p = heap.alloc(Layout::from_size_align(40 << 10, 8).unwrap());
        assert!(!p.is_null());
        fill_and_check(p, 40 << 10, 6);
        heap.dealloc(p, Layout::from_size_align(40 << 10, 8).unwrap());
    }
}

/// An allocation that finds no frame unmaps the spare tail frames of live large objects (those that
/// end in the first frame of their last page but were not trimmed when allocated: their pages were
/// mapped already, or they shrank in place) and tries again; an object that needs its tail keeps it.
#[test]
#[cfg_attr(miri, ignore = "maps and unmaps single frames many times")]
fn an_allocation_out_of_frames_trims_the_spare_tails_of_large_objects() {
    let heap = warm_heap();
    let h0 = held(heap);
    let whole = Layout::from_size_align(40 << 10, 8).unwrap();
    let page = Layout::from_size_align(crate::PAGE_SIZE, 8).unwrap();
    // SAFETY: takes free frames only.
    let hoard_all_but_one =
        || unsafe { heap.with_address_space(|s| crate::testing::hoard_all_but(&mut s.frames, 1)) };
    // SAFETY: gives back frames hoarded by `hoard_all_but_one`, which nothing else uses.
    let give_back = |hoard: Vec<_>| unsafe {
        heap.with_address_space(|s| {
            for (f, n) in hoard {
                s.frames.free_contiguous(f, n);
            }
        })
    };
    // SAFETY: valid layouts; every object is freed once with its layout.
    unsafe {
        // 40 KiB fills its five pages: nothing is spare, so one frame is not enough for a page.
        let p = heap.alloc(whole);
        assert!(!p.is_null());
        fill_and_check(p, 40 << 10, 7);
        assert_eq!(heap.stats().pages.trimmed_tails, 0);
        let hoard = hoard_all_but_one().unwrap();
        assert!(heap.alloc(page).is_null(), "a page from one frame");
        assert_eq!(heap.stats().pages.trimmed_tails, 0, "a tail in use trimmed");
        give_back(hoard);
        // Shrunk in place to 36 KiB: the fifth page's second frame is spare but still mapped, until an
        // allocation needs it.
        let q = heap.realloc(p, whole, TRIMMABLE);
        assert_eq!(q, p, "a shrink within the same pages moved the object");
        assert_eq!(heap.stats().pages.trimmed_tails, 0);
        // (No free page is left to give back first: the failed allocation above unmapped them all.)
        assert_eq!(heap.stats().pages.dirty_free, 0);
        let hoard = hoard_all_but_one().unwrap();
        let r = heap.alloc(page);
        assert!(!r.is_null(), "the spare tail frame was not taken back");
        assert_eq!(heap.stats().pages.trimmed_tails, 1);
        fill_and_check(r, crate::PAGE_SIZE, 8);
        let s = core::slice::from_raw_parts(q, TRIMMABLE);
        assert!(s
            .iter()
            .enumerate()
            .all(|(i, b)| *b == (i as u8).wrapping_mul(7) ^ 7));
        give_back(hoard);
        // Growing back over the tail maps it again.
        let l = Layout::from_size_align(TRIMMABLE, 8).unwrap();
        let q2 = heap.realloc(q, l, 40 << 10);
        assert_eq!(q2, q, "a realloc within the object's pages moved it");
        assert_eq!(heap.stats().pages.trimmed_tails, 0);
        fill_and_check(q2, 40 << 10, 9);
        heap.dealloc(q2, whole);
        heap.dealloc(r, page);
    }
    heap.trim();
    assert_eq!(held(heap), h0, "frames left behind");
}

/// The heap tracks pages in 4 MiB chunks, not whole 64 MiB arenas: a 16 MiB heap's span map and page
/// allocator cover what it uses, not an arena (whose span map alone is 64 KiB).
#[test]
fn a_small_heap_tracks_pages_by_the_chunk() {
    use crate::pagealloc::CHUNK_UNITS;
    let heap = heap_with_usable(16 * MIB);
    let small = Layout::new::<u64>();
    let big = Layout::from_size_align(5 * MIB, 8).unwrap();
    // SAFETY: valid layouts; each object is freed once with its layout.
    unsafe {
        let p = heap.alloc(small);
        assert!(!p.is_null());
        let s = heap.stats().pages;
        assert_eq!(s.grown, CHUNK_UNITS, "one chunk for one small object");
        assert!(s.meta_tables < 64 << 10, "tables {} B", s.meta_tables);
        let q = heap.alloc(big);
        assert!(!q.is_null());
        let s = heap.stats().pages;
        assert_eq!(s.grown, 3 * CHUNK_UNITS, "5 MiB more: two chunks more");
        heap.dealloc(q, big);
        heap.dealloc(p, small);
    }
}

// ------------------------------------------------------------------------------ spans of their own

/// Whether `p` is the start of a large span that records `class` as its object's layout.
fn in_own_span(heap: &Heap<HostPlatform>, p: *mut u8, class: SizeClass) -> bool {
    let (span, c) = heap
        .spanmap
        .lookup(crate::addr::VirtAddr::from_ptr(p))
        .expect("a live object");
    // SAFETY: the span of a live object of ours, read only.
    let s = unsafe { span.as_ref() };
    c.is_large() && s.base().as_u64() == p as u64 && s.small_layout() == Some(class)
}

/// In a heap smaller than full-size caches want, objects of the classes over one page whose spans hold
/// several get a large span of their own (no partly used span per class); every other class, and
/// every class in a heap with full-size caches, lives in its spans.
#[test]
#[cfg_attr(miri, ignore = "a 256 MiB machine")]
fn a_small_heap_gives_the_big_multi_object_classes_spans_of_their_own() {
    let small = heap_with_usable(16 * MIB);
    let full = heap_with_usable(256 * MIB);
    let mut own = Vec::new();
    for class in SizeClass::small() {
        let l = Layout::from_size_align(class.size(), 8).unwrap();
        // SAFETY: valid layouts; every object is freed once with its layout.
        unsafe {
            let p = small.alloc(l);
            let q = full.alloc(l);
            assert!(!p.is_null() && !q.is_null());
            core::ptr::write_bytes(p, 0x5a, class.size());
            if in_own_span(small, p, class) {
                own.push(class.size());
            }
            assert!(!in_own_span(full, q, class), "class {}", class.get());
            small.dealloc(p, l);
            full.dealloc(q, l);
        }
    }
    assert_eq!(
        own,
        [9472, 9728, 10240, 10880, 12288, 13568, 14336, 18432, 19072, 20480, 21760, 27264, 28672]
    );
    let s = small.stats();
    assert_eq!(
        (s.large_objects, s.large_bytes),
        (0, 0),
        "spans left behind"
    );
}

/// An object with a span of its own is checked on every free and realloc as strictly as any other
/// (double free, interior pointer, another class's layout or a large one are refused, naming the
/// reason), is resized in place, and gives its pages back when freed.
#[test]
#[cfg_attr(miri, ignore = "maps and unmaps single frames many times")]
fn an_object_with_a_span_of_its_own_is_checked_resized_and_freed() {
    use crate::heap::soundness_tests::panic_message;
    let heap = heap_with_usable(16 * MIB);
    let l = Layout::from_size_align(20_000, 8).unwrap();
    let class = SizeClass::for_layout(20_000, 8).unwrap();
    let in_use0 = heap.stats().pages.in_use;
    // SAFETY: valid layouts; the bad frees are refused before anything changes; every object is
    // freed once with its layout.
    unsafe {
        let p = heap.alloc(l);
        assert!(!p.is_null());
        assert!(in_own_span(heap, p, class));
        assert_eq!(
            heap.stats().pages.in_use - in_use0,
            3,
            "20000 B: three pages"
        );
        fill_and_check(p, 20_000, 11);
        let msg = panic_message(|| heap.dealloc(p.add(64), l));
        assert!(
            msg.contains("interior pointer of the large object"),
            "{msg}"
        );
        let other = Layout::from_size_align(12_000, 8).unwrap();
        let msg = panic_message(|| heap.dealloc(p, other));
        assert!(
            msg.contains("(class 62 of 20480 B, kept in a large span of 3 pages, the layout says"),
            "{msg}"
        );
        let large = Layout::from_size_align(40_000, 8).unwrap();
        let msg = panic_message(|| heap.dealloc(p, large));
        assert!(msg.contains("size class differs"), "{msg}");
        // Grown in place past 32 KiB (the pages after it are free), then shrunk back to a class that
        // has spans of its own: the same object all along.
        let q = heap.realloc(p, l, 40_000);
        assert_eq!(q, p, "grown in place");
        let s = core::slice::from_raw_parts(q, 20_000);
        assert!(s
            .iter()
            .enumerate()
            .all(|(i, b)| *b == (i as u8).wrapping_mul(7) ^ 11));
        fill_and_check(q, 40_000, 12);
        let r = heap.realloc(q, large, 19_000);
        assert_eq!(r, q, "shrunk in place");
        let l19 = Layout::from_size_align(19_000, 8).unwrap();
        assert!(in_own_span(
            heap,
            r,
            SizeClass::for_layout(19_000, 8).unwrap()
        ));
        heap.dealloc(r, l19);
        let msg = panic_message(|| heap.dealloc(r, l19));
        assert!(msg.contains("not a live heap object"), "double free: {msg}");
    }
    let s = heap.stats();
    assert_eq!((s.large_objects, s.pages.in_use), (0, in_use0));
}

/// An allocation out of frames whose pages the free pages can back, but whose span struct then needs
/// a metadata page (one per 32 structs), takes a live object's spare tail frame for it (metadata
/// mappings give frames back in the same two stages as page mappings). Swept over the number of span
/// structs made before it, so that one run meets a full metadata page.
#[test]
#[cfg_attr(miri, ignore = "builds many 16 MiB heaps")]
fn an_allocation_whose_span_struct_needs_a_frame_takes_a_spare_tail() {
    let whole = Layout::from_size_align(40 << 10, 8).unwrap();
    let target = Layout::from_size_align(48 << 10, 8).unwrap();
    let ten = Layout::from_size_align(80 << 10, 8).unwrap();
    let mut failures = Vec::new();
    for k in 0..80 {
        let heap = warm_heap();
        // SAFETY: valid layouts; every object is freed at most once with its layout; frames hoarded
        // are given back and used by nothing else.
        unsafe {
            let fillers: Vec<_> = (0..k)
                .map(|_| {
                    let p = heap.alloc(whole);
                    assert!(!p.is_null());
                    p
                })
                .collect();
            // A live object whose last page's second frame is spare and mapped.
            let t = heap.alloc(whole);
            assert!(!t.is_null());
            assert_eq!(heap.realloc(t, whole, TRIMMABLE), t);
            // A five-page hole of free mapped pages that the six-page target cannot use (made by a
            // shrink in place: a freed span struct would serve the target's).
            let a = heap.alloc(ten);
            let b = heap.alloc(whole);
            assert!(!a.is_null() && !b.is_null());
            assert_eq!(heap.realloc(a, ten, 40 << 10), a);
            let d = heap.stats().pages.dirty_free as u64;
            let meta0 = heap.stats().pages.meta_mapped;
            let keep = 12u64.saturating_sub(2 * d);
            let hoard = heap
                .with_address_space(|s| crate::testing::hoard_all_but(&mut s.frames, keep))
                .unwrap();
            let r = heap.alloc(target);
            let s = heap.stats();
            heap.with_address_space(|s| {
                for (f, n) in hoard {
                    s.frames.free_contiguous(f, n);
                }
            });
            if r.is_null() {
                failures.push((k, d, s.pages.trimmed_tails, s.pages.meta_mapped - meta0));
            } else {
                heap.dealloc(r, target);
            }
            heap.dealloc(a, whole);
            heap.dealloc(b, whole);
            heap.dealloc(t, Layout::from_size_align(TRIMMABLE, 8).unwrap());
            for p in fillers {
                heap.dealloc(p, whole);
            }
        }
    }
    assert!(
        failures.is_empty(),
        "(fillers, free pages, trimmed tails, metadata bytes mapped) of allocations that failed \
         with a spare tail to give back: {failures:?}"
    );
}
