//! Region mode: a heap in memory the kernel mapped (`Heap::init_region`), at any address and down to
//! the 100 KiB the well-known tutorial maps, with later regions added; the checks of every build hold.

use core::alloc::{GlobalAlloc, Layout};
use core::mem::MaybeUninit;
use std::boxed::Box;
use std::collections::BTreeSet;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::vec;
use std::vec::Vec;

use crate::addr::PAGE_SIZE;
use crate::host::{leak, HostPlatform};
use crate::pageheap::InitError;
use crate::Heap;

type RegionHeap = Heap<HostPlatform, false>;

/// A fresh heap (not initialized) on a platform with no physical memory to speak of: region mode
/// never asks the platform for frames or mappings.
fn new_heap() -> &'static RegionHeap {
    leak(Heap::new(leak(HostPlatform::new(4096))))
}

/// `len` bytes of leaked host memory, starting `misalign` bytes past a 4 KiB boundary.
fn region(len: usize, misalign: usize) -> &'static mut [MaybeUninit<u8>] {
    let buf: &'static mut [MaybeUninit<u8>] =
        Box::leak(vec![MaybeUninit::new(0xAAu8); len + 8192 + misalign].into_boxed_slice());
    let skip = buf.as_ptr().align_offset(4096) + misalign;
    &mut buf[skip..skip + len]
}

fn lay(size: usize) -> Layout {
    Layout::from_size_align(size, 8).unwrap()
}

fn contains(r: &[MaybeUninit<u8>], p: *mut u8, size: usize) -> bool {
    let (a, b) = (r.as_ptr() as usize, r.as_ptr() as usize + r.len());
    a <= p as usize && p as usize + size <= b
}

#[test]
fn the_tutorials_100_kib_serve_its_tests() {
    let heap = new_heap();
    let r = region(100 << 10, 0);
    let (lo, hi) = (r.as_ptr() as usize, r.as_ptr() as usize + r.len());
    let info = heap.init_region_from_slice(r).expect("init_region");
    let pages = (info.pages.1 - info.pages.0) as usize / PAGE_SIZE;
    // 100 KiB from a 4 KiB boundary: metadata, then whole 8 KiB pages up to the end.
    assert!(pages >= 11, "{info}");
    assert!(info.metadata_bytes < 2 * PAGE_SIZE as u64, "{info}");
    assert!(lo as u64 <= info.pages.0.as_u64() && info.pages.1.as_u64() <= hi as u64);
    // The tutorial's heap tests, through GlobalAlloc: simple values, a large Vec, many boxes, and many
    // boxes beside one long-lived one; every object inside the region and intact.
    // SAFETY: test code throughout: pointers are live blocks of this heap with the layouts used.
    unsafe {
        let a = heap.alloc(lay(8)) as *mut u64;
        let b = heap.alloc(lay(8)) as *mut u64;
        a.write(41);
        b.write(13);
        assert_eq!((*a, *b), (41, 13));
        heap.dealloc(a.cast(), lay(8));
        heap.dealloc(b.cast(), lay(8));

        // `Vec` of 1000 u64 grows by doubling: realloc up to 8 KiB and more.
        let mut cap = 4;
        let mut v = heap.alloc(lay(cap * 8)) as *mut u64;
        for i in 0..1000u64 {
            if i as usize == cap {
                v = heap.realloc(v.cast(), lay(cap * 8), cap * 16) as *mut u64;
                assert!(!v.is_null(), "realloc to {} bytes", cap * 16);
                cap *= 2;
            }
            v.add(i as usize).write(i);
        }
        assert!(contains(r_of(lo, hi), v.cast(), 8000));
        assert_eq!((0..1000).map(|i| *v.add(i)).sum::<u64>(), 999 * 1000 / 2);
        heap.dealloc(v.cast(), lay(cap * 8));

        let long = heap.alloc(lay(8)) as *mut u64;
        long.write(1);
        for i in 0..(100 << 10) {
            let x = heap.alloc(lay(8)) as *mut usize;
            assert!(!x.is_null());
            x.write(i);
            assert_eq!(*x, i);
            heap.dealloc(x.cast(), lay(8));
        }
        assert_eq!(*long, 1);
        heap.dealloc(long.cast(), lay(8));
    }
    assert_eq!(heap.stats().objects(), 0);
    assert!(
        // SAFETY: does nothing.
        unsafe { heap.with_address_space(|_| ()) }.is_none(),
        "region mode has no address space"
    );
}

/// A slice covering `[lo, hi)` for `contains`, without keeping the region borrowed.
fn r_of(lo: usize, hi: usize) -> &'static [MaybeUninit<u8>] {
    // SAFETY: test code: the range is a leaked region; only its address range is used.
    unsafe { core::slice::from_raw_parts(lo as *const MaybeUninit<u8>, hi - lo) }
}

#[test]
fn any_start_address_works() {
    for misalign in [1, 8, 100, 4095, 4096, 6000] {
        let heap = new_heap();
        let r = region(100 << 10, misalign);
        let (lo, hi) = (r.as_ptr() as usize, r.as_ptr() as usize + r.len());
        let info = heap.init_region_from_slice(r).expect("init_region");
        assert!(info.pages.0.as_u64() >= lo as u64 && info.pages.1.as_u64() <= hi as u64);
        assert!(info.pages.0.is_aligned(PAGE_SIZE as u64));
        // SAFETY: test code: a fresh block, then freed with its layout.
        unsafe {
            let p = heap.alloc(lay(24));
            assert!(
                contains(r_of(lo, hi), p, 24),
                "{p:?} outside {lo:#x}..{hi:#x}"
            );
            heap.dealloc(p, lay(24));
        }
    }
}

/// Fills a heap with `layout` until it answers null; returns the blocks, checked to lie in `[lo, hi)`
/// and to be handed out once each, filled with their index.
fn fill(heap: &RegionHeap, layout: Layout, lo: usize, hi: usize) -> Vec<*mut u8> {
    let mut got = Vec::new();
    let mut seen = BTreeSet::new();
    loop {
        // SAFETY: test code: a non-zero layout.
        let p = unsafe { heap.alloc(layout) };
        if p.is_null() {
            return got;
        }
        assert!(
            lo <= p as usize && p as usize + layout.size() <= hi,
            "{p:?}"
        );
        assert!(seen.insert(p as usize), "{p:?} handed out twice");
        // SAFETY: a live block of `layout.size()` bytes.
        unsafe { core::ptr::write_bytes(p, got.len() as u8, layout.size()) };
        got.push(p);
    }
}

fn free_all(heap: &RegionHeap, layout: Layout, blocks: Vec<*mut u8>) {
    for (i, p) in blocks.into_iter().enumerate() {
        // SAFETY: test code: live blocks of `layout`, written by `fill`.
        unsafe {
            assert!(
                core::slice::from_raw_parts(p, layout.size())
                    .iter()
                    .all(|&b| b == i as u8),
                "block {i} at {p:?} was overwritten"
            );
            heap.dealloc(p, layout);
        }
    }
}

#[test]
fn a_full_region_answers_null_and_loses_nothing() {
    let heap = new_heap();
    let r = region(1 << 20, 0);
    let (lo, hi) = (r.as_ptr() as usize, r.as_ptr() as usize + r.len());
    let info = heap.init_region_from_slice(r).expect("init_region");
    let heap_bytes = (info.pages.1 - info.pages.0) as usize;
    for round in 0..3 {
        let small = fill(heap, lay(64), lo, hi);
        assert!(
            small.len() * 64 > heap_bytes * 9 / 10,
            "round {round}: only {} 64-byte blocks in {heap_bytes} bytes",
            small.len()
        );
        free_all(heap, lay(64), small);
        // Everything came back: most of the heap is one run again.
        let big = lay(heap_bytes * 3 / 4);
        // SAFETY: test code: a fresh block, freed with its layout.
        unsafe {
            let p = heap.alloc(big);
            assert!(
                !p.is_null(),
                "round {round}: no {} bytes after freeing",
                big.size()
            );
            heap.dealloc(p, big);
        }
    }
    assert_eq!(heap.stats().objects(), 0);
}

#[test]
fn bad_frees_are_named_in_region_mode() {
    let heap = new_heap();
    heap.init_region_from_slice(region(200 << 10, 0)).unwrap();
    // SAFETY: test code: a valid layout.
    let p = unsafe { heap.alloc(lay(32)) };
    // SAFETY: test code: the block just allocated, freed with its layout.
    unsafe { heap.dealloc(p, lay(32)) };
    // SAFETY: test code: a deliberate double free, which must panic before changing anything.
    let msg = catch_unwind(AssertUnwindSafe(|| unsafe { heap.dealloc(p, lay(32)) }))
        .expect_err("double free");
    let msg = msg.downcast_ref::<std::string::String>().unwrap();
    assert!(msg.contains("double free"), "{msg}");
    let local = 0u64;
    let foreign = &local as *const u64 as *mut u8;
    // SAFETY: test code: a deliberate free of a stack address, which must panic before changing anything.
    let msg = catch_unwind(AssertUnwindSafe(|| unsafe {
        heap.dealloc(foreign, lay(8))
    }))
    .expect_err("foreign free");
    let msg = msg.downcast_ref::<std::string::String>().unwrap();
    assert!(
        msg.contains("not") && msg.contains(&std::format!("{foreign:?}")),
        "{msg}"
    );
    // The heap still works and counts nothing live.
    // SAFETY: test code: a fresh block, freed with its layout.
    unsafe { heap.dealloc(heap.alloc(lay(32)), lay(32)) };
    assert_eq!(heap.stats().objects(), 0);
}

#[test]
fn later_regions_extend_the_heap_and_gaps_stay_out() {
    let heap = new_heap();
    // One buffer: the first region, a gap the heap must never use, a second region.
    let all = region(800 << 10, 0);
    let base = all.as_mut_ptr().cast::<u8>();
    let (lo, hi) = (base as usize, base as usize + all.len());
    // SAFETY: test code: the three parts of a leaked buffer, given to the heap once each.
    let info = unsafe { heap.init_region(base, 100 << 10) }.unwrap();
    assert_eq!(info.reach_end.as_u64(), lo as u64 + (800 << 10));
    let first = fill(heap, lay(128), lo, lo + (100 << 10));
    assert!(!first.is_empty());
    let gap = (lo + (200 << 10), lo + (300 << 10));
    // Out of order (below the heap's end) and beyond the reach: refused, nothing changes.
    // SAFETY: test code: refused before anything changes (the region is below the heap's end).
    let below = unsafe { heap.add_region(base.add(50 << 10), 10 << 10) };
    assert!(
        matches!(below, Err(InitError::RegionOutOfReach { .. })),
        "{below:?}"
    );
    // SAFETY: test code: refused before anything changes (the region passes the reach).
    let beyond = unsafe { heap.add_region(base.add(700 << 10), 200 << 10) };
    assert!(
        matches!(beyond, Err(InitError::RegionOutOfReach { .. })),
        "{beyond:?}"
    );
    // SAFETY: test code: refused before anything changes (no whole page).
    let tiny = unsafe { heap.add_region(base.add(150 << 10), 100) };
    assert!(
        matches!(tiny, Err(InitError::RegionTooSmall { .. })),
        "{tiny:?}"
    );
    // SAFETY: as above: parts of the leaked buffer not given to the heap before.
    let (s, e) = unsafe { heap.add_region((gap.0 - (100 << 10)) as *mut u8, 100 << 10) }.unwrap();
    // It starts where the first region ended: it continues the heap, the page across the boundary
    // included.
    assert!(s == info.pages.1 && e.as_u64() <= gap.0 as u64);
    // SAFETY: as above: the buffer's last part, not given to the heap before.
    let (s2, e2) = unsafe { heap.add_region(gap.1 as *mut u8, 500 << 10) }.unwrap();
    assert!(s2.as_u64() >= gap.1 as u64 && e2.as_u64() <= hi as u64);
    // Still under 1 MiB with the gap: no per-CPU caches, every CPU on the locked path.
    let second = fill(heap, lay(128), lo, hi);
    assert!(
        second.len() * 128 > (550 << 10),
        "only {} more blocks",
        second.len()
    );
    for &p in &second {
        assert!(
            !(gap.0..gap.1).contains(&(p as usize)),
            "{p:?} is in the gap between regions"
        );
    }
    free_all(heap, lay(128), second);
    free_all(heap, lay(128), first);
    // A large object spans regions' pages only where they are contiguous.
    // SAFETY: test code: a fresh block, freed with its layout.
    unsafe {
        let p = heap.alloc(lay(400 << 10));
        assert!(!p.is_null() && p as usize >= gap.1, "{p:?}");
        heap.dealloc(p, lay(400 << 10));
    }
    assert_eq!(heap.stats().objects(), 0);
}

#[test]
fn init_errors_name_the_region() {
    let heap = new_heap();
    let r = region(6 << 10, 0);
    // SAFETY: test code: a leaked region (refused: too small).
    let err = unsafe { heap.init_region(r.as_mut_ptr().cast(), r.len()) }.unwrap_err();
    assert!(matches!(err, InitError::RegionTooSmall { .. }), "{err:?}");
    assert!(std::format!("{err}").contains("too small"), "{err}");
    // SAFETY: test code: refused before anything is touched (address 0).
    let err = unsafe { heap.init_region(core::ptr::null_mut(), 1 << 20) }.unwrap_err();
    assert!(matches!(err, InitError::RegionMisplaced { .. }), "{err:?}");
    // A failed init leaves the heap uninitialized: allocations fail, a later init works.
    // SAFETY: test code: a valid layout; the heap is not initialized, so null.
    assert!(unsafe { heap.alloc(lay(8)) }.is_null());
    heap.init_region_from_slice(region(100 << 10, 0)).unwrap();
    // SAFETY: test code: a valid layout; the block is leaked with the heap.
    assert!(!unsafe { heap.alloc(lay(8)) }.is_null());
    // A heap with its own address space takes no regions.
    let mapped: &'static RegionHeap = {
        let m = crate::host::HostMachine::new(16 << 20, 256 << 20);
        let h = leak(Heap::new(m.platform));
        h.init(m.space, m.window, 64 << 20).unwrap();
        h
    };
    let r = region(100 << 10, 0);
    // SAFETY: test code: refused before anything is touched (the heap maps its own pages).
    let err = unsafe { mapped.add_region(r.as_mut_ptr().cast(), r.len()) }.unwrap_err();
    assert_eq!(err, InitError::NotRegionMode);
}

#[test]
fn threads_share_a_region_heap() {
    let heap = new_heap();
    let r = region(8 << 20, 0);
    let (lo, hi) = (r.as_ptr() as usize, r.as_ptr() as usize + r.len());
    heap.init_region_from_slice(r).unwrap();
    // Objects allocated on one thread, freed on another, with the caches on (an 8 MiB heap).
    let handoff: std::sync::Mutex<Vec<(usize, usize)>> = std::sync::Mutex::new(Vec::new());
    std::thread::scope(|s| {
        for t in 0..4usize {
            let handoff = &handoff;
            s.spawn(move || {
                for i in 0..20_000usize {
                    let size = 8 + (i * 7 + t * 13) % 2000;
                    // SAFETY: test code: live blocks of this heap, freed once with their layout.
                    unsafe {
                        let p = heap.alloc(lay(size));
                        assert!(lo <= p as usize && (p as usize) < hi, "{p:?}");
                        core::ptr::write_bytes(p, t as u8, size);
                        let other = handoff.lock().unwrap().pop();
                        handoff.lock().unwrap().push((p as usize, size));
                        if let Some((q, n)) = other {
                            let q = q as *mut u8;
                            assert!(*q < 4 && *q.add(n - 1) == *q, "block {q:?} was overwritten");
                            heap.dealloc(q, lay(n));
                        }
                    }
                }
            });
        }
    });
    for (q, n) in handoff.into_inner().unwrap() {
        // SAFETY: test code: the blocks left, live, with their sizes.
        unsafe { heap.dealloc(q as *mut u8, lay(n)) };
    }
    assert_eq!(heap.stats().objects(), 0);
}

#[test]
fn empty_spans_the_central_lists_keep_come_back_when_memory_is_short() {
    let heap = new_heap();
    heap.init_region_from_slice(region(100 << 10, 0)).unwrap();
    // One object of class after class, freed: each class keeps its (now empty) span, until few free
    // pages are left.
    let sizes = [8, 16, 32, 48, 64, 96, 128, 256, 512, 1024, 2048, 4096];
    for &size in &sizes {
        // SAFETY: test code: a fresh block, freed with its layout.
        unsafe {
            let p = heap.alloc(lay(size));
            assert!(!p.is_null(), "{size} B");
            heap.dealloc(p, lay(size));
        }
        if heap.stats().pages.dirty_free <= 2 {
            break;
        }
    }
    let st = heap.stats();
    assert!(
        st.pages.dirty_free <= 2 && st.objects() == 0,
        "{:?}",
        st.pages
    );
    // Every page but the metadata's is free for a large object: the kept spans make room for it.
    let meta_pages = st.pages.meta_mapped as usize / PAGE_SIZE;
    let big = lay((st.pages.grown - meta_pages) * PAGE_SIZE);
    // SAFETY: test code: a fresh block, freed with its layout.
    unsafe {
        let p = heap.alloc(big);
        assert!(!p.is_null(), "no {} B with every object freed", big.size());
        heap.dealloc(p, big);
    }
}
