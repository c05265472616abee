//! An attacker's pass over the default build's bad-free checks and the heap limits (soundness issue):
//! the tests that failed on the reviewed commit (e79863c) are regression tests now; `holds_*` probe
//! claims that held.

use core::alloc::{GlobalAlloc, Layout};
use std::collections::BTreeSet;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::string::String;
use std::vec::Vec;

use crate::addr::{VirtAddr, PAGE_SIZE};
use crate::host::{HostMachine, HostPlatform};
use crate::platform::Platform;
use crate::sizeclass::SizeClass;
use crate::Heap;

use super::soundness_tests::{lay, plain_heap, small_heap, Plain};
use crate::testing::{give_back_frames, squeeze_frames};

fn panic_message(f: impl FnOnce()) -> Option<String> {
    let err = catch_unwind(AssertUnwindSafe(f)).err()?;
    Some(if let Some(s) = err.downcast_ref::<String>() {
        s.clone()
    } else if let Some(s) = err.downcast_ref::<&str>() {
        String::from(*s)
    } else {
        String::from("<non-string panic>")
    })
}

/// Runs `f` on a fresh thread pinned to CPU `cpu` (the heaps here are private to one test, so no other
/// thread uses that index on them).
fn on_cpu<R: Send>(cpu: usize, f: impl FnOnce() -> R + Send) -> R {
    std::thread::scope(|s| {
        s.spawn(move || {
            HostPlatform::set_cpu_index(cpu);
            f()
        })
        .join()
        .unwrap()
    })
}

// ------------------------------------------------------------------------------------------------
// Problems
// ------------------------------------------------------------------------------------------------

/// A heap limited below an arena (new in this change) hands its whole capacity to the first CPU's
/// page cache (a 64-page block): after one 16-byte allocation, a 256 KiB object (32 pages, past the
/// page-cache size) is refused although 63 of the 64 pages are free. `find_aligned` never flushes the
/// page caches when the page allocator is full; only the out-of-frames path does.
#[test]
fn page_caches_do_not_starve_a_heap_limited_below_an_arena() {
    let heap = plain_heap(16, 256 << 20, 512 << 10); // 64 heap pages
    on_cpu(3, || {
        // SAFETY: test code throughout: blocks of this heap freed with their layouts.
        unsafe {
            let small = heap.alloc(lay(16));
            assert!(!small.is_null());
            let big = heap.alloc(lay(256 << 10));
            let s = heap.stats();
            assert!(
                !big.is_null(),
                "a 512 KiB heap holding one 16 B object refused 256 KiB (pages in use {}, grown {})",
                s.pages.in_use,
                s.pages.grown
            );
            heap.dealloc(big, lay(256 << 10));
            heap.dealloc(small, lay(16));
        }
    });
}

/// The same with several CPUs and an 8 MiB limit (the limit of the existing test): 16 CPUs holding one
/// 32 KiB object each (a 4-page span, from the CPU's page cache) leave no page for a 1 MiB object, with
/// 7.5 MiB free.
#[test]
fn page_caches_do_not_starve_an_8_mib_heap_with_16_cpus() {
    let heap = plain_heap(64, 1 << 30, 8 << 20);
    let mut held = Vec::new();
    for cpu in 0..16 {
        // SAFETY: test code.
        held.push(on_cpu(cpu, || unsafe { heap.alloc(lay(32 << 10)) } as usize));
    }
    // A 17th CPU cannot even get a small object: its page cache is empty and no 64-page block is left.
    // SAFETY: test code.
    let small = on_cpu(16, || unsafe { heap.alloc(lay(32 << 10)) } as usize);
    assert_ne!(
        small,
        0,
        "an 8 MiB heap holding 16 x 32 KiB refused a 17th 32 KiB object: {:?}",
        heap.stats().pages
    );
    // SAFETY: test code.
    let big = on_cpu(20, || unsafe { heap.alloc(lay(1 << 20)) } as usize);
    assert_ne!(
        big,
        0,
        "an 8 MiB heap holding 16 x 32 KiB refused 1 MiB: {:?}",
        heap.stats().pages
    );
}

/// `HostPlatform::set_cpu_index` is a safe function, but it lets a thread pin an index that a live
/// thread took automatically: both then report the same index below MAX_CPUS, which the (unsafe)
/// `Platform` impl promises never happens, and both use one cache without a lock (double hand-outs).
#[test]
fn set_cpu_index_never_shares_a_live_threads_index() {
    let m = HostMachine::new(16 << 20, 256 << 20);
    let platform = m.platform;
    let barrier = &std::sync::Barrier::new(2);
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::scope(|s| {
        s.spawn(move || {
            let i = platform.cpu_index_slow();
            tx.send(i).unwrap();
            barrier.wait(); // stay alive while the other thread pins
            barrier.wait();
        });
        let i = rx.recv().unwrap();
        s.spawn(move || {
            HostPlatform::set_cpu_index(i);
            let mine = platform.cpu_index();
            barrier.wait();
            barrier.wait();
            assert!(
                i >= crate::MAX_CPUS || mine != i,
                "two live threads both hold CPU index {i}"
            );
        });
    });
}

/// Zero-sized layouts "get an 8-byte object" (GlobalAlloc::alloc doc in heap/mod.rs), but with an
/// alignment over 8 KiB they go the large path, where `PageCount::covering(0)` is 0 pages and
/// `alloc_pages` refuses 0 pages: null, i.e. out of memory, on an empty heap.
#[test]
fn zero_size_with_a_large_alignment_gets_a_page() {
    let heap = small_heap();
    let l = Layout::from_size_align(0, 16 << 10).unwrap();
    // SAFETY: test code (a zero size is outside GlobalAlloc's contract, but the heap documents it).
    let p = unsafe { heap.alloc(l) };
    assert!(
        !p.is_null(),
        "Layout(0, 16 KiB) got null from an empty heap"
    );
    assert_eq!(p as usize % l.align(), 0);
    // SAFETY: test code.
    unsafe { heap.dealloc(p, l) };
}

// ------------------------------------------------------------------------------------------------
// Claims that held
// ------------------------------------------------------------------------------------------------

/// The span of a small object: base and object count, from the span map.
fn span_of(heap: &Plain, p: *mut u8) -> (usize, usize) {
    let (span, _) = heap.spanmap.lookup(VirtAddr::from_ptr(p)).unwrap();
    // SAFETY: test code: an in-use span, read only.
    let s = unsafe { span.as_ref() };
    (s.base().as_u64() as usize, s.nelems())
}

/// Every class (multi-page spans and the 8-byte class included): two spans and more of objects
/// written in full (mark words too), freed, reallocated zeroed; bad frees at every kind of address of
/// the first span (tail, interior on every page, last slot, a slot in page > 0 never handed out, all
/// double frees) are refused with the right reason and leave the heap unchanged.
#[test]
fn holds_every_class_full_spans_and_bad_frees() {
    let heap = small_heap();
    // Every class in its spans: no class gets spans of its own objects (own_spans_tests.rs has those).
    heap.own_spans
        .store(false, core::sync::atomic::Ordering::Relaxed);
    for class in SizeClass::small() {
        let size = class.size();
        let n = class.objects_per_span();
        let l = lay(size);
        let count = 2 * n + 3;
        // SAFETY: test code throughout.
        let ps: Vec<*mut u8> = (0..count).map(|_| unsafe { heap.alloc(l) }).collect();
        let set: BTreeSet<usize> = ps.iter().map(|&p| p as usize).collect();
        assert_eq!(set.len(), count, "class {}: duplicate", class.get());
        for (i, &p) in ps.iter().enumerate() {
            // SAFETY: test code: blocks of this heap with their layouts, or deliberately not.
            unsafe { core::ptr::write_bytes(p, 0xA5 ^ i as u8, size) };
        }
        let (base, nelems) = span_of(heap, ps[0]);
        assert_eq!(nelems, n);
        let span_bytes = class.pages().0 * PAGE_SIZE;
        // Tail.
        if span_bytes > n * size {
            let tail = (base + n * size) as *mut u8;
            // SAFETY: test code: blocks of this heap with their layouts, or deliberately not.
            let msg = panic_message(|| unsafe { heap.dealloc(tail, l) }).expect("tail accepted");
            assert!(msg.contains("tail"), "class {}: {msg}", class.get());
            let last = (base + span_bytes - 8) as *mut u8;
            // SAFETY: test code: blocks of this heap with their layouts, or deliberately not.
            let msg = panic_message(|| unsafe { heap.dealloc(last, l) }).expect("tail accepted");
            assert!(msg.contains("tail") || msg.contains("interior"), "{msg}");
        }
        // Interior pointers on every page of the span.
        for page in 0..class.pages().0 {
            let q = base + page * PAGE_SIZE + 8;
            if q >= base + n * size {
                break;
            }
            let q = if (q - base).is_multiple_of(size) {
                q + 8
            } else {
                q
            };
            if size == 8 {
                break;
            }
            // SAFETY: test code: blocks of this heap with their layouts, or deliberately not.
            let msg = panic_message(|| unsafe { heap.dealloc(q as *mut u8, l) })
                .expect("interior accepted");
            assert!(msg.contains("interior"), "class {}: {msg}", class.get());
        }
        // Free everything, then every object of the first span once more.
        for &p in &ps {
            // SAFETY: test code: blocks of this heap with their layouts, or deliberately not.
            unsafe { heap.dealloc(p, l) };
        }
        for k in 0..n {
            let q = (base + k * size) as *mut u8;
            // SAFETY: test code: blocks of this heap with their layouts, or deliberately not.
            let msg = panic_message(|| unsafe { heap.dealloc(q, l) }).unwrap_or_else(|| {
                panic!("class {}: double free of slot {k} accepted", class.get())
            });
            // Either the span is still there (the mark) or it went back to the page heap.
            assert!(
                msg.contains("double free") || msg.contains("freed already"),
                "{msg}"
            );
        }
        // Zeroed and plain reallocation still sees no marks and no duplicates.
        let zs: Vec<*mut u8> = (0..count)
            // SAFETY: test code: blocks of this heap with their layouts, or deliberately not.
            .map(|_| unsafe { heap.alloc_zeroed(l) })
            .collect();
        let set: BTreeSet<usize> = zs.iter().map(|&p| p as usize).collect();
        assert_eq!(set.len(), count);
        for &p in &zs {
            // SAFETY: test code: blocks of this heap with their layouts, or deliberately not.
            let s = unsafe { core::slice::from_raw_parts(p, size) };
            assert!(
                s.iter().all(|&b| b == 0),
                "class {}: not zeroed",
                class.get()
            );
            // SAFETY: test code: blocks of this heap with their layouts, or deliberately not.
            unsafe { heap.dealloc(p, l) };
        }
    }
    heap.trim();
    assert_eq!(heap.stats().objects(), 0);
}

/// Never-handed-out slots: the last slot of a fresh span, and a slot on its last page.
#[test]
fn holds_never_handed_out_last_slots() {
    for class in SizeClass::small() {
        let heap = small_heap();
        let l = lay(class.size());
        // SAFETY: test code.
        let p = unsafe { heap.alloc(l) };
        let (base, n) = span_of(heap, p);
        let last = (base + (n - 1) * class.size()) as *mut u8;
        if last != p {
            // SAFETY: test code: blocks of this heap with their layouts, or deliberately not.
            let msg = panic_message(|| unsafe { heap.dealloc(last, l) })
                .unwrap_or_else(|| panic!("class {}: last slot accepted", class.get()));
            assert!(msg.contains("double free"), "{msg}");
        }
        // SAFETY: test code: blocks of this heap with their layouts, or deliberately not.
        unsafe { heap.dealloc(p, l) };
    }
}

/// Layouts with every alignment that maps to a small class; zero sizes; alloc_zeroed.
#[test]
fn holds_alignments_and_zero_sizes_in_small_classes() {
    let heap = small_heap();
    for shift in 0..=13 {
        let align = 1usize << shift;
        for size in [0, 1, 7, 8, 9, 24, 48, 100, 1000, 3000, 8192, 10000, 32768] {
            let l = Layout::from_size_align(size, align).unwrap();
            for zero in [false, true] {
                let ps: Vec<_> = (0..40)
                    // SAFETY: test code.
                    .map(|_| unsafe {
                        if zero {
                            heap.alloc_zeroed(l)
                        } else {
                            heap.alloc(l)
                        }
                    })
                    .collect();
                for &p in &ps {
                    assert!(!p.is_null() && (p as usize).is_multiple_of(align), "{l:?}");
                    // SAFETY: test code: blocks of this heap with their layouts, or deliberately not.
                    unsafe { core::ptr::write_bytes(p, 0xFF, size) };
                }
                for p in ps {
                    // SAFETY: test code: blocks of this heap with their layouts, or deliberately not.
                    unsafe { heap.dealloc(p, l) };
                }
            }
        }
    }
    heap.trim();
    assert_eq!(heap.stats().objects(), 0);
}

/// realloc across every class and into large sizes and back, content kept; large objects grown and
/// shrunk in place then freed with the new layout.
#[test]
fn holds_realloc_chains_and_in_place_large_resizes() {
    let heap = small_heap();
    let mut sizes: Vec<usize> = SizeClass::small().map(|c| c.size()).collect();
    sizes.extend([40 << 10, 100 << 10, 1 << 20, 3 << 20]);
    let down: Vec<usize> = sizes.iter().rev().copied().collect();
    sizes.extend(down);
    for align in [8usize, 64, 4096, 16384] {
        // SAFETY: test code.
        unsafe {
            let mut cur = Layout::from_size_align(sizes[0], align).unwrap();
            let mut p = heap.alloc(cur);
            p.write(0x5A);
            for &s in &sizes[1..] {
                let q = heap.realloc(p, cur, s);
                assert!(!q.is_null());
                assert_eq!(q.read(), 0x5A, "content lost at {s}");
                p = q;
                cur = Layout::from_size_align(s, align).unwrap();
                p.add(s - 1).write(1);
            }
            heap.dealloc(p, cur);
        }
    }
    // Large in place: grow, shrink, free; a wrong old size after the resize is refused.
    // SAFETY: test code: blocks of this heap with their layouts, or deliberately not.
    unsafe {
        let p = heap.alloc(lay(64 << 10));
        let q = heap.realloc(p, lay(64 << 10), 200 << 10);
        let r = heap.realloc(q, lay(200 << 10), 48 << 10);
        let msg = panic_message(|| {
            heap.dealloc(r, lay(200 << 10));
        })
        .expect("stale size accepted");
        assert!(msg.contains("size differs"), "{msg}");
        heap.dealloc(r, lay(48 << 10));
    }
    heap.trim();
    let s = heap.stats();
    assert_eq!(s.objects(), 0);
    assert_eq!(s.large_bytes, 0);
}

/// After each kind of refused free (caught by catch_unwind) nothing is lost and nothing is handed out
/// twice, on a CPU with a cache and on the locked path.
#[test]
fn holds_heap_consistent_after_refused_frees() {
    let heap = small_heap();
    for cpu in [2usize, 200] {
        on_cpu(cpu, || {
            let l = lay(48);
            // SAFETY: test code.
            unsafe {
                let keep: Vec<_> = (0..300).map(|_| heap.alloc(l)).collect();
                let p = keep[7];
                let mut local = [0u64; 8];
                for bad in [
                    p.add(8),
                    local.as_mut_ptr().cast(),
                    (p as usize | 0xFFFF_0000_0000_0000) as *mut u8,
                ] {
                    panic_message(|| heap.dealloc(bad, l)).expect("refused");
                    panic_message(|| {
                        heap.realloc(bad, l, 100);
                    })
                    .expect("refused");
                }
                panic_message(|| heap.dealloc(p, lay(16))).expect("refused");
                panic_message(|| heap.dealloc(p, lay(64 << 10))).expect("refused");
                let big = heap.alloc(lay(64 << 10));
                panic_message(|| heap.dealloc(big, lay(16))).expect("refused");
                panic_message(|| heap.dealloc(big.add(PAGE_SIZE), lay(64 << 10))).expect("refused");
                heap.dealloc(keep[9], l);
                panic_message(|| heap.dealloc(keep[9], l)).expect("refused");
                let mut seen: BTreeSet<usize> = keep.iter().map(|&q| q as usize).collect();
                seen.remove(&(keep[9] as usize));
                let more: Vec<_> = (0..3000).map(|_| heap.alloc(l)).collect();
                for &q in &more {
                    assert!(seen.insert(q as usize), "{q:?} twice");
                }
                for q in more {
                    heap.dealloc(q, l);
                }
                for (i, q) in keep.into_iter().enumerate() {
                    if i != 9 {
                        heap.dealloc(q, l);
                    }
                }
                heap.dealloc(big, lay(64 << 10));
                heap.trim();
            }
        });
    }
    assert_eq!(heap.stats().objects(), 0);
}

/// Objects allocated on an uncached CPU (index over Platform::MAX_CPUS) freed on a cached one and back;
/// then double frees of each caught on the other side.
#[test]
fn holds_objects_cross_between_the_locked_and_the_cached_path() {
    let heap = small_heap();
    let l = lay(64);
    // SAFETY: test code.
    let a: Vec<usize> = on_cpu(100, || {
        (0..500)
            // SAFETY: `alloc` with `l`, a valid layout of non-zero size.
            .map(|_| unsafe { heap.alloc(l) } as usize)
            .collect()
    });
    let b: Vec<usize> = on_cpu(1, || {
        (0..500)
            // SAFETY: test code: blocks of this heap with their layouts, or deliberately not.
            .map(|_| unsafe { heap.alloc(l) } as usize)
            .collect()
    });
    let all: BTreeSet<usize> = a.iter().chain(&b).copied().collect();
    assert_eq!(all.len(), 1000);
    on_cpu(1, || {
        a.iter()
            // SAFETY: test code: blocks of this heap with their layouts, or deliberately not.
            .for_each(|&p| unsafe { heap.dealloc(p as *mut u8, l) })
    });
    on_cpu(100, || {
        b.iter()
            // SAFETY: test code: blocks of this heap with their layouts, or deliberately not.
            .for_each(|&p| unsafe { heap.dealloc(p as *mut u8, l) })
    });
    on_cpu(100, || {
        // SAFETY: test code: blocks of this heap with their layouts, or deliberately not.
        let m = panic_message(|| unsafe { heap.dealloc(a[3] as *mut u8, l) }).expect("refused");
        assert!(
            m.contains("double free") || m.contains("freed already"),
            "{m}"
        );
    });
    on_cpu(1, || {
        // SAFETY: test code: blocks of this heap with their layouts, or deliberately not.
        let m = panic_message(|| unsafe { heap.dealloc(b[3] as *mut u8, l) }).expect("refused");
        assert!(
            m.contains("double free") || m.contains("freed already"),
            "{m}"
        );
    });
    heap.trim();
    on_cpu(1, || heap.trim());
    assert_eq!(heap.stats().objects(), 0);
}

/// Threads that exit give their index back; a thread-local destructor running after that (index
/// released) allocates and frees through the locked path. Many short threads, one heap, concurrent.
#[test]
#[cfg_attr(miri, ignore = "many threads")]
fn holds_index_recycling_with_thread_local_destructors() {
    use std::cell::RefCell;
    let heap: &'static Plain = plain_heap(256, 2 << 30, 1 << 30);
    struct FreeOnExit(&'static Plain, RefCell<Vec<(usize, Layout)>>);
    impl Drop for FreeOnExit {
        fn drop(&mut self) {
            for (p, l) in self.1.borrow_mut().drain(..) {
                // SAFETY: test code: blocks of this heap.
                unsafe {
                    let s = core::slice::from_raw_parts(p as *const u8, l.size());
                    assert!(s.iter().all(|&b| b == (p as u8)), "overwritten");
                    self.0.dealloc(p as *mut u8, l);
                    let q = self.0.alloc(l);
                    self.0.dealloc(q, l);
                }
            }
        }
    }
    std::thread_local! {
        static HOLD: RefCell<Option<FreeOnExit>> = const { RefCell::new(None) };
    }
    for _round in 0..20 {
        // Plain threads, joined: `scope` returns before the threads' thread-local destructors have run.
        let hs: Vec<_> = (0..12usize)
            .map(|t| {
                std::thread::spawn(move || {
                    // Registered before the index: destroyed after the index release runs (LIFO).
                    HOLD.with(|h| {
                        *h.borrow_mut() = Some(FreeOnExit(heap, RefCell::new(Vec::new())))
                    });
                    let mut mine = Vec::new();
                    for i in 0..400 {
                        let l = lay(8 + (i * 37 + t) % 900);
                        // SAFETY: test code.
                        let p = unsafe { heap.alloc(l) };
                        assert!(!p.is_null(), "out of memory for {l:?}");
                        // SAFETY: `p` is a fresh block of `l.size()` bytes (not null: checked).
                        unsafe { core::ptr::write_bytes(p, p as u8, l.size()) };
                        mine.push((p as usize, l));
                    }
                    HOLD.with(|h| h.borrow().as_ref().unwrap().1.borrow_mut().extend(mine));
                })
            })
            .collect();
        for h in hs {
            h.join().unwrap();
        }
    }
    on_cpu(5, || heap.trim());
    heap.trim();
    let s = heap.stats();
    assert_eq!(s.objects(), 0, "{s:?}");
}

/// Huge align requests near and past the heap's capacity, `npages + align` overflow candidates,
/// realloc to sizes whose page count overflows: null, no panic, heap usable.
#[test]
fn holds_overflowing_sizes_and_alignments_give_null() {
    let heap = small_heap();
    // SAFETY: test code.
    unsafe {
        for (size, align) in [
            (1usize, 1usize << 62),
            (isize::MAX as usize - (1 << 40) + 1, 1 << 40),
            (isize::MAX as usize - PAGE_SIZE + 1, PAGE_SIZE),
            (isize::MAX as usize, 1),
            (64 << 20, 64 << 20),
            (8, 128 << 20),
        ] {
            let l = Layout::from_size_align(size, align).unwrap();
            let p = heap.alloc(l);
            if !p.is_null() {
                assert_eq!(p as usize % align, 0);
                heap.dealloc(p, l);
            }
        }
        let p = heap.alloc(lay(64 << 10));
        assert!(heap.realloc(p, lay(64 << 10), usize::MAX - 10).is_null());
        assert!(heap
            .realloc(p, lay(64 << 10), isize::MAX as usize)
            .is_null());
        let q = heap.realloc(p, lay(64 << 10), 16);
        heap.dealloc(q, lay(16));
        let p = heap.alloc(lay(64));
        assert!(heap.realloc(p, lay(64), isize::MAX as usize).is_null());
        heap.dealloc(p, lay(64));
    }
    heap.trim();
    assert_eq!(heap.stats().objects(), 0);
}

/// A platform with caches for only four CPUs (over-MAX indices and page caches).
struct FourCpus(&'static HostPlatform);

// Only the cache limit differs from the host platform.
crate::testing::host_platform_wrapper!(FourCpus {
    const MAX_CPUS: usize = 4;
});

/// CPUs 4..64 have an index the page heap would accept for a page cache but no heap cache: large
/// objects and small spans they make go through no page cache; nothing is lost or shared.
#[test]
fn holds_cpus_between_platform_max_and_max_cpus() {
    let m = HostMachine::new(32 << 20, 256 << 20);
    let platform: &'static FourCpus = crate::host::leak(FourCpus(m.platform));
    let space = crate::arena::AddressSpace::new(m.space.frames, m.space.mapper, platform);
    let heap: &'static Heap<FourCpus, false> = crate::host::leak(Heap::new(platform));
    heap.init(space, m.window, 64 << 20).unwrap();
    let barrier = std::sync::Barrier::new(6);
    std::thread::scope(|s| {
        for cpu in [0usize, 3, 4, 5, 63, 64] {
            let barrier = &barrier;
            s.spawn(move || {
                HostPlatform::set_cpu_index(cpu);
                barrier.wait();
                let mut live = Vec::new();
                for i in 0..2000usize {
                    let l = lay(if i % 50 == 0 { 40 << 10 } else { 8 + i % 2000 });
                    // SAFETY: test code.
                    let p = unsafe { heap.alloc(l) };
                    assert!(!p.is_null(), "out of memory for {l:?}");
                    // SAFETY: `p` is a fresh block of `l.size()` bytes (not null: checked).
                    unsafe { core::ptr::write_bytes(p, cpu as u8, l.size()) };
                    live.push((p, l));
                    if i % 3 == 0 {
                        let (p, l) = live.swap_remove(i % live.len());
                        // SAFETY: test code: blocks of this heap with their layouts, or deliberately not.
                        let s = unsafe { core::slice::from_raw_parts(p, l.size()) };
                        assert!(s.iter().all(|&b| b == cpu as u8));
                        // SAFETY: taken out of `live`: a block of this heap allocated with `l`,
                        // freed once.
                        unsafe { heap.dealloc(p, l) };
                    }
                }
                for (p, l) in live {
                    // SAFETY: test code: blocks of this heap with their layouts, or deliberately not.
                    unsafe { heap.dealloc(p, l) };
                }
                heap.trim();
            });
        }
    });
    assert_eq!(heap.stats().objects(), 0);
}

/// Limits that are not a multiple of the page cache's 64-page block: the block past the capacity must
/// never be handed out (pages past `grown` have no span-map entries, scavenged bits or arena).
#[test]
fn holds_limits_that_cut_a_page_cache_block() {
    for pages in [1usize, 2, 5, 12, 63, 65, 100, 1000] {
        let heap = plain_heap(16, 256 << 20, pages * PAGE_SIZE);
        on_cpu(7, || {
            let mut got = Vec::new();
            for size in [
                16usize,
                32 << 10,
                24 << 10,
                8 << 10,
                40 << 10,
                16,
                3000,
                100 << 10,
            ] {
                for _ in 0..(pages + 2) {
                    // SAFETY: test code.
                    let p = unsafe { heap.alloc(lay(size)) };
                    if p.is_null() {
                        break;
                    }
                    // SAFETY: test code: blocks of this heap with their layouts, or deliberately not.
                    unsafe { core::ptr::write_bytes(p, 1, size) };
                    got.push((p, size));
                }
            }
            let s = heap.stats();
            assert!(
                s.pages.grown <= pages,
                "limit {pages} pages, grown {}",
                s.pages.grown
            );
            assert!(s.pages.in_use <= pages);
            for (p, size) in got {
                // SAFETY: test code: blocks of this heap with their layouts, or deliberately not.
                unsafe { heap.dealloc(p, lay(size)) };
            }
            heap.trim();
        });
        assert_eq!(heap.stats().objects(), 0);
    }
}

/// `set_cpu_index` documents "any value: one at or over MAX_CPUS takes the heap's locked path", but
/// `usize::MAX` is the host's internal UNASSIGNED: the heap's first slow path then assigns the thread
/// a real index and the thread gets a cache.
#[test]
fn set_cpu_index_usize_max_is_the_locked_path() {
    let heap = small_heap();
    let class = SizeClass::for_size(16).unwrap().index();
    on_cpu(usize::MAX, || {
        // SAFETY: test code.
        unsafe { heap.dealloc(heap.alloc(lay(16)), lay(16)) };
        let now = heap.platform().cpu_index();
        assert_eq!(
            heap.stats().classes[class].cached,
            0,
            "pinned to usize::MAX, the thread was given CPU {now} and a cache"
        );
    });
}

/// A huge window (16 TiB) with no limit (`usize::MAX`, "no limit beyond the window"): init succeeds,
/// but every allocation is null on a 64 MiB machine. Growing the first arena backs the page
/// allocator's storage through `LazyRegion::ensure(range.end)`, which maps the whole *prefix* up to the
/// end of each range: the bitmap and summaries for the full capacity (2^31 pages: ~245 MiB of frames;
/// a 4 TiB window costs 62 MiB, take-over's 512 GiB window ~8 MiB), not the part covering the grown
/// pages that `backing_needed` names.
#[test]
#[cfg_attr(miri, ignore = "reserves 16 TiB of address space")]
fn a_sixteen_tib_window_without_limit_serves_at_once() {
    let heap = plain_heap(64, 1 << 44, usize::MAX);
    // SAFETY: test code.
    unsafe {
        // (A 64 GiB alignment would need 64 MiB of span map for the pages it spans: null on this machine.)
        for (size, align) in [(16usize, 8usize), (40 << 10, 8), (1 << 20, 1 << 30)] {
            let l = Layout::from_size_align(size, align).unwrap();
            let p = heap.alloc(l);
            assert!(!p.is_null(), "{l:?}");
            assert_eq!(p as usize % align, 0);
            p.write(1);
            heap.dealloc(p, l);
        }
    }
}

/// The scavenger starts at the highest mapped page, not at the top of the heap's address space: in a
/// 64 GiB heap grown whole (one huge allocation that failed for want of frames, as the page-scaling
/// benchmark does) with 64 MiB mapped, a churn that makes it scavenge again and again looks at a few
/// pages per page released. It looked at all 8 Mi pages per scavenge before (64 GiB steady 64 KiB
/// alloc+free took 15 times as long as at 64 MiB).
#[test]
fn the_scavenger_does_not_scan_a_huge_heaps_unmapped_top() {
    let heap = plain_heap(256, 64 << 30, usize::MAX);
    // SAFETY: test code throughout: live blocks of this heap with the layouts used.
    unsafe {
        assert!(heap.alloc(lay(48 << 30)).is_null(), "no frames for 48 GiB");
        let grown = heap.stats().pages.grown;
        assert!(grown >= (48 << 30) / PAGE_SIZE, "grown {grown} pages");
        heap.pages.lock().as_mut().unwrap().scavenge_visits = 0;
        // A peak of 64 MiB, then, with frames short, a churn of 64 KiB blocks far below it: the peak
        // decays and the scavenger gives pages back, over and over.
        let big: Vec<*mut u8> = (0..1024).map(|_| heap.alloc(lay(64 << 10))).collect();
        assert!(big.iter().all(|p| !p.is_null()));
        for p in big {
            heap.dealloc(p, lay(64 << 10));
        }
        let held = squeeze_frames(heap);
        let mut ring: [*mut u8; 16] = [core::ptr::null_mut(); 16];
        for i in 0..20_000 {
            let slot = &mut ring[i % 16];
            if !slot.is_null() {
                heap.dealloc(*slot, lay(64 << 10));
            }
            *slot = heap.alloc(lay(64 << 10));
            assert!(!slot.is_null());
        }
        let s = heap.stats().pages;
        let visits = heap.pages.lock().as_ref().unwrap().scavenge_visits;
        assert!(
            s.released_total > 0,
            "the churn should have made the scavenger release pages: {s:?}"
        );
        assert!(
            visits < 64 * ((64 << 20) / PAGE_SIZE) as u64,
            "{visits} pages looked at to release {} (heap of {} pages)",
            s.released_total,
            s.grown
        );
        for p in ring {
            heap.dealloc(p, lay(64 << 10));
        }
        give_back_frames(heap, held);
    }
}
