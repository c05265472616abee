//! In-place `realloc` of large objects (heap/mod.rs, `realloc_large`): shrinking gives the tail pages
//! back, growing takes the free pages after the object, a large object shrinking to a small class of at
//! least a page stays in its span; every case keeps the pointer, the contents, the stats and the checks
//! of bad frees and reallocs (the attacker's view: double frees after an in-place shrink, wrong layouts,
//! absurd sizes, alignments beyond a page).

use core::alloc::{GlobalAlloc, Layout};
use std::vec::Vec;

use super::soundness_tests::{lay, panic_message, plain_heap, Plain};
use crate::addr::PAGE_SIZE;
use crate::platform::Platform;

/// A heap of 64 MiB of fake memory in a 1 GiB window.
fn heap() -> &'static Plain {
    plain_heap(64, 1 << 30, 256 << 20)
}

/// A heap whose limit (2 GiB) is big enough for page caches and the large cache (pageheap.rs).
fn big_heap() -> &'static Plain {
    plain_heap(64, 4 << 30, 2 << 30)
}

/// Pages the page heap's large cache keeps.
fn kept_pages(heap: &Plain) -> usize {
    let _irq = heap.platform.mask_interrupts();
    let pages = heap.pages.lock();
    pages.as_ref().expect("initialized").large_cache_pages()
}

fn byte(seed: u8, i: usize) -> u8 {
    (i as u8).wrapping_mul(31) ^ seed ^ (i >> 8) as u8
}

/// Writes `seed`'s pattern over `len` bytes at `p`.
fn fill(p: *mut u8, len: usize, seed: u8) {
    // SAFETY: test code: `p` is a live block of at least `len` bytes.
    let s = unsafe { core::slice::from_raw_parts_mut(p, len) };
    for (i, b) in s.iter_mut().enumerate() {
        *b = byte(seed, i);
    }
}

/// Whether the `len` bytes at `p` hold `seed`'s pattern.
fn holds(p: *const u8, len: usize, seed: u8) -> bool {
    // SAFETY: test code: `p` is a live block of at least `len` bytes.
    let s = unsafe { core::slice::from_raw_parts(p, len) };
    s.iter().enumerate().all(|(i, &b)| b == byte(seed, i))
}

/// Allocates blocks of every kind until the heap has handed out `bytes` more, and asserts that none
/// overlaps `[p, p + len)`; frees them again.
fn assert_nothing_overlaps(heap: &Plain, p: *mut u8, len: usize, bytes: usize) {
    let (lo, hi) = (p as usize, p as usize + len);
    let sizes = [16, 4096, 9000, 30 << 10, 40 << 10, 64 << 10, 200 << 10];
    let mut got = Vec::new();
    let mut total = 0;
    for size in sizes.iter().cycle() {
        if total >= bytes {
            break;
        }
        // SAFETY: test code: a fresh allocation of this heap.
        let q = unsafe { heap.alloc(lay(*size)) };
        assert!(!q.is_null());
        let (a, b) = (q as usize, q as usize + size);
        assert!(
            b <= lo || a >= hi,
            "{q:?}+{size} overlaps the live object {p:?}+{len}"
        );
        got.push((q, *size));
        total += size;
    }
    for (q, size) in got {
        // SAFETY: test code: blocks just allocated, with their layouts.
        unsafe { heap.dealloc(q, lay(size)) };
    }
}

#[test]
fn a_large_object_shrinks_in_place_and_gives_its_tail_back() {
    let heap = heap();
    let in_use = heap.stats().pages.in_use;
    // SAFETY: test code: a valid non-zero layout.
    let p = unsafe { heap.alloc(lay(200 << 10)) };
    fill(p, 200 << 10, 1);
    assert_eq!(heap.stats().pages.in_use, in_use + 25);
    // SAFETY: test code: a live block of this heap with its layout.
    let q = unsafe { heap.realloc(p, lay(200 << 10), 40 << 10) };
    assert_eq!(q, p, "a shrink stays in place");
    assert!(holds(p, 40 << 10, 1), "contents kept");
    let s = heap.stats();
    assert_eq!(
        s.pages.in_use,
        in_use + 5,
        "the tail's 20 pages are free again"
    );
    assert_eq!((s.large_objects, s.large_bytes), (1, 40 << 10));
    // The tail is handed out again, and nothing lands on the object.
    assert_nothing_overlaps(heap, p, 40 << 10, 4 << 20);
    assert!(holds(p, 40 << 10, 1));
    // SAFETY: test code: a live block with its new layout.
    unsafe { heap.dealloc(p, lay(40 << 10)) };
    heap.trim();
    let s = heap.stats();
    assert_eq!((s.objects(), s.large_bytes, s.pages.in_use), (0, 0, in_use));
}

#[test]
fn a_large_object_grows_into_the_free_pages_after_it_and_they_are_not_handed_out_twice() {
    let heap = heap();
    let in_use = heap.stats().pages.in_use;
    // SAFETY: test code: a valid non-zero layout.
    let p = unsafe { heap.alloc(lay(64 << 10)) };
    fill(p, 64 << 10, 2);
    // SAFETY: test code: a live block of this heap with its layout.
    let q = unsafe { heap.realloc(p, lay(64 << 10), 256 << 10) };
    assert_eq!(
        q, p,
        "the pages after a fresh object are free: growth is in place"
    );
    assert!(holds(p, 64 << 10, 2), "contents kept");
    fill(p, 256 << 10, 3);
    let s = heap.stats();
    assert_eq!(s.pages.in_use, in_use + 32);
    assert_eq!((s.large_objects, s.large_bytes), (1, 256 << 10));
    assert_nothing_overlaps(heap, p, 256 << 10, 8 << 20);
    assert!(
        holds(p, 256 << 10, 3),
        "no allocation wrote into the grown pages"
    );
    // SAFETY: test code: a live block with its new layout.
    unsafe { heap.dealloc(p, lay(256 << 10)) };
    heap.trim();
    let s = heap.stats();
    assert_eq!((s.objects(), s.large_bytes, s.pages.in_use), (0, 0, in_use));
}

#[test]
fn growth_into_pages_in_use_moves_and_keeps_the_contents() {
    let heap = heap();
    // Two large objects; find a pair where the second starts right after the first.
    let mut held = Vec::new();
    let (a, b) = loop {
        // SAFETY: test code: a valid non-zero layout.
        let a = unsafe { heap.alloc(lay(64 << 10)) };
        // SAFETY: test code: a valid non-zero layout.
        let b = unsafe { heap.alloc(lay(64 << 10)) };
        held.push(a);
        held.push(b);
        if b as usize == a as usize + (64 << 10) {
            break (a, b);
        }
        assert!(held.len() < 64, "no two adjacent large objects");
    };
    fill(a, 64 << 10, 4);
    fill(b, 64 << 10, 5);
    // SAFETY: test code: a live block of this heap with its layout.
    let q = unsafe { heap.realloc(a, lay(64 << 10), 128 << 10) };
    assert!(!q.is_null());
    assert_ne!(q, a, "the next pages are in use: the object moves");
    assert!(holds(q, 64 << 10, 4), "contents moved");
    assert!(holds(b, 64 << 10, 5), "the neighbour is untouched");
    let stats = heap.stats();
    assert_eq!(stats.large_objects, held.len());
    assert_eq!(stats.large_bytes, (held.len() + 1) * (64 << 10));
    // The old place is free (the next allocation of its size may take it); the moved one is live.
    for &p in held.iter().filter(|&&p| p != a) {
        // SAFETY: test code: live blocks with their layouts.
        unsafe { heap.dealloc(p, lay(64 << 10)) };
    }
    // SAFETY: test code: the moved block with its new layout.
    unsafe { heap.dealloc(q, lay(128 << 10)) };
    // The old pointer is dead: a free of it is refused.
    // SAFETY: test code: a deliberately bad free or realloc, refused before anything changes.
    let msg = panic_message(|| unsafe { heap.dealloc(a, lay(64 << 10)) });
    assert!(msg.contains("not a live heap object"), "{msg}");
    assert_eq!(heap.stats().objects(), 0);
}

#[test]
fn a_large_object_shrinking_to_a_small_class_of_a_page_or_more_stays_in_place() {
    let heap = heap();
    let in_use = heap.stats().pages.in_use;
    // SAFETY: test code: a valid non-zero layout.
    let p = unsafe { heap.alloc(lay(100 << 10)) };
    fill(p, 100 << 10, 6);
    // SAFETY: test code: live blocks of this heap with their layouts, all through.
    unsafe {
        let q = heap.realloc(p, lay(100 << 10), 20_000);
        assert_eq!(q, p, "20000 B (3 pages) stays in the large span");
        assert!(holds(p, 20_000, 6));
        let s = heap.stats();
        assert_eq!(s.pages.in_use, in_use + 3);
        assert_eq!((s.large_objects, s.large_bytes), (1, 3 * PAGE_SIZE));
        // Small to small in the large span: resized in place again.
        let q = heap.realloc(p, lay(20_000), 9000);
        assert_eq!(q, p);
        assert!(holds(p, 9000, 6));
        assert_eq!(heap.stats().pages.in_use, in_use + 2);
        // And back to large: grows into its own freed tail.
        let q = heap.realloc(p, lay(9000), 90_000);
        assert_eq!(q, p);
        assert!(holds(p, 9000, 6));
        fill(p, 90_000, 7);
        let q = heap.realloc(p, lay(90_000), 10_000);
        assert_eq!(q, p);
        // Below a page: moves into a size class, contents kept, the large span freed.
        let r = heap.realloc(p, lay(10_000), 100);
        assert_ne!(r, p);
        assert!(holds(r, 100, 7));
        let s = heap.stats();
        assert_eq!((s.large_objects, s.large_bytes, s.objects()), (0, 0, 1));
        heap.dealloc(r, lay(100));
    }
    heap.trim();
    assert_eq!(heap.stats().pages.in_use, in_use);
}

#[test]
fn a_large_object_kept_at_a_small_class_is_freed_by_that_layout_only() {
    let heap = heap();
    // SAFETY: test code: a valid non-zero layout.
    let p = unsafe { heap.alloc(lay(64 << 10)) };
    // SAFETY: test code: a live block of this heap with its layout.
    assert_eq!(unsafe { heap.realloc(p, lay(64 << 10), 30_000) }, p);
    // Its old, large layout: refused, naming both.
    // SAFETY: test code: a deliberately bad free or realloc, refused before anything changes.
    let msg = panic_message(|| unsafe { heap.dealloc(p, lay(64 << 10)) });
    assert!(
        msg.contains("bad dealloc")
            && msg.contains("size class differs")
            && msg.contains("kept in a large span"),
        "{msg}"
    );
    // SAFETY: test code: a deliberately bad free or realloc, refused before anything changes.
    let msg = panic_message(|| {
        // SAFETY: deliberately not: `p` is now kept at the 30 000 B class, not this layout; the
        // heap must refuse it with a panic before copying or resizing (what this test checks).
        unsafe { heap.realloc(p, lay(64 << 10), 100 << 10) };
    });
    assert!(
        msg.contains("bad realloc") && msg.contains("size class differs"),
        "{msg}"
    );
    // Another small class: refused.
    // SAFETY: test code: a deliberately bad free or realloc, refused before anything changes.
    let msg = panic_message(|| unsafe { heap.dealloc(p, lay(9000)) });
    assert!(
        msg.contains("bad dealloc") && msg.contains("size class differs"),
        "{msg}"
    );
    // SAFETY: test code: a deliberately bad free or realloc, refused before anything changes.
    let msg = panic_message(|| {
        // SAFETY: deliberately not: the wrong small class for `p`; the heap must refuse it with a
        // panic before copying or resizing (what this test checks).
        unsafe { heap.realloc(p, lay(9000), 12_000) };
    });
    assert!(
        msg.contains("bad realloc") && msg.contains("size class differs"),
        "{msg}"
    );
    // An interior pointer with the right layout: refused.
    let inner = p.wrapping_add(PAGE_SIZE);
    // SAFETY: test code: a deliberately bad free or realloc, refused before anything changes.
    let msg = panic_message(|| unsafe { heap.dealloc(inner, lay(30_000)) });
    assert!(msg.contains("bad dealloc"), "{msg}");
    // Nothing changed: the object is still live, and its layout frees it.
    let s = heap.stats();
    assert_eq!((s.large_objects, s.large_bytes), (1, 4 * PAGE_SIZE));
    // SAFETY: test code: the block with its current layout.
    unsafe { heap.dealloc(p, lay(30_000)) };
    assert_eq!(heap.stats().large_objects, 0);
}

#[test]
fn a_double_free_after_an_in_place_shrink_is_refused() {
    let heap = heap();
    for new in [40 << 10, 20_000] {
        // SAFETY: test code: a valid non-zero layout.
        let p = unsafe { heap.alloc(lay(200 << 10)) };
        // SAFETY: test code: a live block with its layout, then freed with its new one.
        unsafe {
            assert_eq!(heap.realloc(p, lay(200 << 10), new), p);
            heap.dealloc(p, lay(new));
        }
        // SAFETY: test code: a deliberately bad free or realloc, refused before anything changes.
        let msg = panic_message(|| unsafe { heap.dealloc(p, lay(new)) });
        assert!(
            msg.contains("bad dealloc") && msg.contains("not a live heap object"),
            "{new}: {msg}"
        );
        // SAFETY: test code: a deliberately bad free or realloc, refused before anything changes.
        let msg = panic_message(|| {
            // SAFETY: deliberately not: `p` was freed just above; the heap must refuse it with a
            // panic before copying anything (what this test checks).
            unsafe { heap.realloc(p, lay(new), 64 << 10) };
        });
        assert!(
            msg.contains("bad realloc") && msg.contains("not a live heap object"),
            "{new}: {msg}"
        );
    }
    // The heap still works and holds nothing.
    assert_nothing_overlaps(heap, core::ptr::null_mut(), 0, 1 << 20);
    assert_eq!(heap.stats().objects(), 0);
}

#[test]
fn absurd_sizes_fail_and_leave_the_object_alone() {
    let heap = heap();
    // SAFETY: test code: a valid non-zero layout.
    let p = unsafe { heap.alloc(lay(64 << 10)) };
    // SAFETY: test code: a live block with its layout, all through.
    unsafe {
        assert_eq!(heap.realloc(p, lay(64 << 10), 20_000), p);
        fill(p, 20_000, 8);
        for size in [
            usize::MAX,
            usize::MAX - PAGE_SIZE,
            isize::MAX as usize,
            1 << 40,
        ] {
            assert!(heap.realloc(p, lay(20_000), size).is_null(), "{size:#x}");
            assert!(holds(p, 20_000, 8), "a failed realloc keeps the object");
        }
        // Size 0 (outside `GlobalAlloc`'s contract): an 8-byte object, the large span freed.
        let z = heap.realloc(p, lay(20_000), 0);
        assert!(!z.is_null() && z != p);
        assert_eq!(heap.stats().large_objects, 0);
        heap.dealloc(z, lay(0));
    }
    assert_eq!(heap.stats().objects(), 0);
}

#[test]
fn alignments_beyond_a_page_are_kept_in_place_and_when_moving() {
    let heap = heap();
    for align in [2 * PAGE_SIZE, 64 << 10, 1 << 20] {
        let l = Layout::from_size_align(100, align).unwrap();
        // SAFETY: test code: a valid non-zero layout.
        let p = unsafe { heap.alloc(l) };
        assert_eq!(p as usize % align, 0);
        fill(p, 100, 9);
        // SAFETY: test code: live blocks with their layouts, all through.
        unsafe {
            // Still large (the alignment has no size class): in place, same page.
            let q = heap.realloc(p, l, 50);
            assert_eq!(q, p);
            let l = Layout::from_size_align(50, align).unwrap();
            let q = heap.realloc(p, l, 300 << 10);
            assert!(!q.is_null());
            assert_eq!(q as usize % align, 0, "aligned after growing");
            assert!(holds(q, 50, 9));
            let l = Layout::from_size_align(300 << 10, align).unwrap();
            let r = heap.realloc(q, l, 10_000);
            assert_eq!(r, q, "a shrink stays in place");
            heap.dealloc(r, Layout::from_size_align(10_000, align).unwrap());
        }
    }
    let s = heap.stats();
    assert_eq!((s.objects(), s.large_bytes), (0, 0));
}

#[test]
fn the_scavenger_returns_the_tails_of_objects_shrunk_in_place() {
    let heap = heap();
    // Trim creates this CPU's cache (metadata frames) the first time: count from after that.
    heap.trim();
    let before = heap.stats();
    let mut held = Vec::new();
    for _ in 0..64 {
        // SAFETY: test code: a valid non-zero layout.
        let p = unsafe { heap.alloc(lay(512 << 10)) };
        assert!(!p.is_null());
        held.push(p);
    }
    let full = heap.stats();
    // Shrink every one to a page: 63 of 64 pages each go back to the page heap.
    for p in &held {
        // SAFETY: test code: live blocks with their layouts.
        assert_eq!(unsafe { heap.realloc(*p, lay(512 << 10), PAGE_SIZE) }, *p);
    }
    heap.trim();
    let s = heap.stats();
    assert_eq!(s.pages.in_use, full.pages.in_use - 64 * 63);
    assert_eq!((s.large_objects, s.large_bytes), (64, 64 * PAGE_SIZE));
    // Trim keeps mapped the 64 pages still in use, what the heap held before the objects, and the
    // metadata its growth to 32 MiB mapped for good (span map, page bitmaps and summaries: 37 frames
    // when written); the tails' 8064 frames are gone.
    let kept = before.frames_held.0 + 64 * crate::addr::FRAMES_PER_PAGE;
    assert!(
        s.frames_held.0 <= kept + 64,
        "trim unmapped the tails: {} frames held, {} before the objects, {} with them",
        s.frames_held.0,
        before.frames_held.0,
        full.frames_held.0
    );
    for p in held {
        // SAFETY: test code: live blocks with their current layout.
        unsafe { heap.dealloc(p, lay(PAGE_SIZE)) };
    }
    assert_eq!(heap.stats().objects(), 0);
}

// ---- the page heap's large-span cache (pageheap.rs, `LargeCache`), which the large objects a realloc
// ---- makes and frees go through

#[test]
fn a_freed_large_span_is_reused_whole_and_refused_as_a_double_free_meanwhile() {
    let heap = big_heap();
    let in_use = heap.stats().pages.in_use;
    // SAFETY: test code: a valid non-zero layout.
    let p = unsafe { heap.alloc(lay(64 << 10)) };
    fill(p, 64 << 10, 10);
    // SAFETY: test code: a live block with its layout.
    unsafe { heap.dealloc(p, lay(64 << 10)) };
    let s = heap.stats();
    assert_eq!(
        (s.pages.in_use, s.large_objects, s.large_bytes),
        (in_use, 0, 0)
    );
    // Kept, but not live: every free or realloc of it is refused, by any layout.
    for l in [lay(64 << 10), lay(60 << 10), lay(20_000)] {
        // SAFETY: test code: a deliberately bad free or realloc, refused before anything changes.
        let msg = panic_message(|| unsafe { heap.dealloc(p, l) });
        assert!(msg.contains("not a live heap object"), "{l:?}: {msg}");
        let msg = panic_message(|| {
            // SAFETY: test code: a deliberately bad free or realloc, refused before anything changes.
            unsafe { heap.realloc(p, l, 100 << 10) };
        });
        assert!(msg.contains("not a live heap object"), "{l:?}: {msg}");
    }
    // The next allocation of its page count gets it, zeroed when asked.
    // SAFETY: test code: a valid non-zero layout.
    let q = unsafe { heap.alloc_zeroed(lay(60 << 10)) };
    assert_eq!(q, p, "the kept span is reused");
    assert_eq!(kept_pages(heap), 0);
    // SAFETY: test code: a live block of 60 KiB.
    let bytes = unsafe { core::slice::from_raw_parts(q, 60 << 10) };
    assert!(
        bytes.iter().all(|&b| b == 0),
        "alloc_zeroed of a kept span is zero"
    );
    assert_eq!(heap.stats().pages.in_use, in_use + 8);
    assert_nothing_overlaps(heap, q, 60 << 10, 4 << 20);
    // SAFETY: test code: a live block with its layout.
    unsafe { heap.dealloc(q, lay(60 << 10)) };
    assert_eq!(heap.stats().objects(), 0);
}

/// The large cache keeps at most 16 spans of one page count and 4 MiB in all (pageheap.rs,
/// `LARGE_CACHE_*`): more frees than that go back to the page allocator.
#[test]
fn the_large_cache_keeps_at_most_its_budget() {
    let heap = big_heap();
    heap.trim();
    let free_all = |sizes: &mut dyn Iterator<Item = usize>| {
        let held: Vec<(*mut u8, usize)> = sizes
            .map(|size| {
                // SAFETY: test code: a valid non-zero layout.
                let p = unsafe { heap.alloc(lay(size)) };
                assert!(!p.is_null());
                (p, size)
            })
            .collect();
        for (p, size) in held {
            // SAFETY: test code: live blocks with their layouts.
            unsafe { heap.dealloc(p, lay(size)) };
        }
    };
    // 40 spans of 5 pages: 16 kept.
    free_all(&mut (0..40).map(|_| 4 * PAGE_SIZE + 1));
    assert_eq!(kept_pages(heap), 16 * 5, "16 spans of one page count");
    heap.trim();
    // 24 spans of each count from 5 to 16 pages, 27 MiB in all: 4 MiB kept, not more.
    free_all(&mut (0..24 * 12).map(|i| (4 + i % 12) * PAGE_SIZE + 1));
    let kept = kept_pages(heap);
    assert!(
        kept <= (4 << 20) / PAGE_SIZE && kept > (3 << 20) / PAGE_SIZE,
        "{kept} pages kept"
    );
    heap.trim();
    assert_eq!(kept_pages(heap), 0);
}

#[test]
fn trim_returns_the_kept_large_spans() {
    let heap = big_heap();
    heap.trim();
    let before = heap.stats();
    let mut held = Vec::new();
    for i in 0..64 {
        // Every page count the cache keeps, several times over: more than it keeps.
        let size = (32 << 10) + (i % 12) * PAGE_SIZE + 1;
        // SAFETY: test code: a valid non-zero layout.
        let p = unsafe { heap.alloc(lay(size)) };
        assert!(!p.is_null());
        fill(p, size, i as u8);
        held.push((p, size));
    }
    for (i, &(p, size)) in held.iter().enumerate() {
        assert!(holds(p, size, i as u8), "block {i} kept its contents");
        // SAFETY: test code: live blocks with their layouts.
        unsafe { heap.dealloc(p, lay(size)) };
    }
    let s = heap.stats();
    assert_eq!((s.objects(), s.pages.in_use), (0, before.pages.in_use));
    assert!(kept_pages(heap) > 0);
    heap.trim();
    assert_eq!(kept_pages(heap), 0, "trim flushed the large cache");
    let s = heap.stats();
    assert_eq!(
        s.pages.dirty_free, 0,
        "trim flushed the kept spans and unmapped them"
    );
    assert!(
        s.frames_held.0 <= before.frames_held.0 + 64,
        "{} frames held after trim, {} before (metadata may have grown a little)",
        s.frames_held.0,
        before.frames_held.0
    );
}

#[test]
fn growth_into_a_kept_span_takes_its_pages_and_stays_in_place() {
    let heap = big_heap();
    let mut held = Vec::new();
    let (a, b) = loop {
        // SAFETY: test code: valid non-zero layouts.
        let (a, b) = unsafe { (heap.alloc(lay(64 << 10)), heap.alloc(lay(64 << 10))) };
        if b as usize == a as usize + (64 << 10) {
            break (a, b);
        }
        held.push(a);
        held.push(b);
        assert!(held.len() < 64, "no two adjacent large objects");
    };
    fill(a, 64 << 10, 11);
    // SAFETY: test code: a live block with its layout; the large cache keeps its span.
    unsafe { heap.dealloc(b, lay(64 << 10)) };
    assert_eq!(kept_pages(heap), 8);
    // SAFETY: test code: a live block with its layout.
    let q = unsafe { heap.realloc(a, lay(64 << 10), 128 << 10) };
    assert_eq!(q, a, "the kept span's pages are taken back for the growth");
    assert!(holds(a, 64 << 10, 11));
    assert_eq!(kept_pages(heap), 0, "the kept span left the cache");
    // The kept span is gone: the next 64 KiB object is not handed its pages.
    // SAFETY: test code: a valid non-zero layout.
    let c = unsafe { heap.alloc(lay(64 << 10)) };
    assert_ne!(c, b, "{c:?} is inside the grown object");
    assert_nothing_overlaps(heap, a, 128 << 10, 4 << 20);
    // SAFETY: test code: live blocks with their layouts.
    unsafe {
        heap.dealloc(c, lay(64 << 10));
        heap.dealloc(a, lay(128 << 10));
        for p in held {
            heap.dealloc(p, lay(64 << 10));
        }
    }
    assert_eq!(heap.stats().objects(), 0);
}

/// A large object with a trimmed tail (its last page's second frame unmapped, pageheap.rs) is kept by
/// the large cache only whole: the next object of that page count may use every byte of its last page.
#[test]
fn a_trimmed_span_is_kept_whole_by_the_large_cache() {
    let heap = big_heap();
    heap.trim();
    // 40 KiB + 1: six pages, the last one used for a byte only, so its second frame stays unmapped.
    let small = (40 << 10) + 1;
    // SAFETY: test code: a valid non-zero layout; the block is freed below.
    let p = unsafe { heap.alloc(lay(small)) };
    assert!(!p.is_null());
    let trimmed = heap.stats().pages.trimmed_tails;
    assert!(trimmed >= 1, "the object's tail is trimmed");
    fill(p, small, 3);
    // SAFETY: test code: the live block with its layout.
    unsafe { heap.dealloc(p, lay(small)) };
    assert!(kept_pages(heap) >= 6, "the span is kept");
    assert_eq!(heap.stats().pages.trimmed_tails, trimmed - 1, "kept whole");
    // The whole six pages: the same span again, every byte writable (a kept span still trimmed would
    // fault here: the host maps a missing frame PROT_NONE).
    let full = 48 << 10;
    // SAFETY: test code: a valid non-zero layout; the block is freed below.
    let q = unsafe { heap.alloc(lay(full)) };
    assert_eq!(q, p, "the kept span is reused");
    fill(q, full, 4);
    assert!(holds(q, full, 4));
    // SAFETY: test code: the live block with its layout.
    unsafe { heap.dealloc(q, lay(full)) };
}

/// A kept span serves an allocation of up to `LARGE_CACHE_SLACK` (2) pages fewer: the same base, cut to
/// the new page count, its extra pages free again (an object right before them grows into them in
/// place); three pages fewer takes other pages and leaves the kept span alone.
#[test]
fn the_large_cache_serves_slightly_smaller_objects() {
    let heap = big_heap();
    heap.trim();
    let eight = lay(8 * PAGE_SIZE);
    let six = lay(6 * PAGE_SIZE);
    let five = lay(5 * PAGE_SIZE);
    // SAFETY: test code: valid layouts; every block freed once with its layout.
    unsafe {
        let p = heap.alloc(eight);
        assert!(!p.is_null());
        heap.dealloc(p, eight);
        assert_eq!(kept_pages(heap), 8);
        // Three pages fewer: not served by the kept span.
        let f = heap.alloc(five);
        assert!(!f.is_null());
        assert_ne!(f, p, "a span three pages bigger served the object");
        assert_eq!(kept_pages(heap), 8);
        let in_use = heap.stats().pages.in_use;
        let dirty = heap.stats().pages.dirty_free;
        // Two pages fewer: the kept span, cut to six pages.
        let q = heap.alloc(six);
        assert_eq!(q, p, "the kept span did not serve a six-page object");
        assert_eq!(kept_pages(heap), 0);
        heap.audit_pages();
        // (Whether the span was cut and its extra pages freed, the growth in place below tells.)
        assert_eq!(heap.stats().pages.in_use, in_use + 6);
        assert_eq!(heap.stats().pages.dirty_free, dirty - 6);
        fill(q, six.size(), 5);
        // The extra pages right after it: a growth in place takes them.
        let r = heap.realloc(q, six, eight.size());
        assert_eq!(r, q, "the freed extra pages were not there to grow into");
        assert!(holds(r, six.size(), 5));
        fill(r, eight.size(), 6);
        assert!(holds(r, eight.size(), 6));
        heap.dealloc(r, eight);
        heap.dealloc(f, five);
    }
    heap.audit_pages();
}

/// An `allocate_frames` that cannot succeed whatever the heap gives back (more frames than it could
/// ever have) returns `None` without flushing the large cache or unmapping the free pages it keeps.
#[test]
fn a_hopeless_allocate_frames_keeps_the_caches() {
    use crate::addr::FrameCount;
    let heap = big_heap();
    heap.trim();
    let l = lay(4 * PAGE_SIZE + 1);
    // SAFETY: test code: a valid layout, freed once with it.
    unsafe {
        let p = heap.alloc(l);
        assert!(!p.is_null());
        heap.dealloc(p, l);
    }
    assert_eq!(kept_pages(heap), 5);
    let released = heap.stats().pages.released_total;
    assert!(heap
        .allocate_frames(FrameCount(1 << 40), FrameCount(1))
        .is_none());
    assert_eq!(
        heap.stats().pages.released_total,
        released,
        "free pages unmapped for nothing"
    );
    assert_eq!(kept_pages(heap), 5, "the large cache flushed for nothing");
}

/// A fresh heap's 36 KiB object whose last page's second frame is mapped and spare: the 64 KiB
/// object before it leaves its pages mapped and free, and the 36 KiB one reuses them.
fn object_with_spare_tail(heap: &'static Plain, l: Layout) -> *mut u8 {
    // SAFETY: test code: valid layouts, each block freed once with its layout.
    unsafe {
        let q = heap.alloc(lay(64 << 10));
        assert!(!q.is_null());
        heap.dealloc(q, lay(64 << 10));
        let p = heap.alloc(l);
        assert!(!p.is_null());
        fill(p, l.size(), 7);
        p
    }
}

/// Takes every free frame of `heap`'s frame allocator, then asks `allocate_frames` for one; gives
/// them all back and returns whether it got one.
fn allocate_frame_with_none_free(heap: &'static Plain) -> bool {
    use crate::addr::FrameCount;
    // SAFETY: takes free frames only.
    let taken: Vec<_> = unsafe {
        heap.with_address_space(|s| core::iter::from_fn(|| s.frames.allocate()).collect())
    }
    .unwrap();
    let got = heap.allocate_frames(FrameCount(1), FrameCount(1));
    // SAFETY: frames this function took, each given back once.
    unsafe {
        heap.with_address_space(|s| {
            for f in taken {
                s.frames.free(f);
            }
            if let Some(g) = got {
                s.frames.free(g);
            }
        })
    };
    got.is_some()
}

/// `allocate_frames` with no free frame left takes the free pages the heap keeps first, and a large
/// object's spare tail frame only when those are gone (as the heap's own mappings do when they run
/// out, pageheap.rs, "Trimmed tails"): a tail given back is a map the object pays if it grows.
#[test]
fn allocate_frames_takes_free_pages_first_then_spare_tails() {
    let heap = heap();
    heap.trim();
    let l = lay(36 << 10);
    let p = object_with_spare_tail(heap, l);
    let tails = heap.stats().pages.trimmed_tails;
    assert!(heap.stats().pages.dirty_free > 0, "free pages are kept");
    assert!(allocate_frame_with_none_free(heap), "a free page's frame");
    assert_eq!(
        heap.stats().pages.trimmed_tails,
        tails,
        "a spare tail given back while free pages were there"
    );
    assert_eq!(heap.stats().pages.dirty_free, 0, "every free page unmapped");
    // Now only the tail is left.
    assert!(
        allocate_frame_with_none_free(heap),
        "the spare tail's frame"
    );
    assert_eq!(heap.stats().pages.trimmed_tails, tails + 1);
    assert!(holds(p, l.size(), 7), "the object kept its contents");
    // SAFETY: test code: the live block with its layout.
    unsafe { heap.dealloc(p, l) };
}

/// `Heap::trim` leaves a live large object's spare tail frame mapped (unmapping it would cost a TLB
/// shootdown, and a map again when the object grows): the object grows into its last page without
/// a map, and only a taker that finds no other frame gets the tail.
#[test]
fn trim_keeps_spare_tails() {
    let heap = heap();
    heap.trim();
    let l = lay(36 << 10);
    let p = object_with_spare_tail(heap, l);
    let tails = heap.stats().pages.trimmed_tails;
    heap.trim();
    assert_eq!(
        heap.stats().pages.trimmed_tails,
        tails,
        "trim took the tail"
    );
    assert_eq!(heap.stats().pages.dirty_free, 0, "trim kept free pages");
    // 40 KiB: the same five pages, the last one whole.
    // SAFETY: test code: the live block with its layout; the new size is not 0.
    let q = unsafe { heap.realloc(p, l, 40 << 10) };
    assert_eq!(q, p, "grown in place");
    assert!(holds(q, l.size(), 7));
    fill(q, 40 << 10, 8);
    assert!(holds(q, 40 << 10, 8));
    // SAFETY: test code: the live block with its layout.
    unsafe { heap.dealloc(q, lay(40 << 10)) };
}
