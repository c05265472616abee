//! Regression tests for the heap's side of the soundness issue: every bad free caught in the default
//! build at the call that makes it, realloc checked before it copies or resizes, every alignment honoured,
//! init limits, and CPUs beyond the caches. Each test failed on the code before its fix.

use core::alloc::{GlobalAlloc, Layout};
use std::collections::BTreeSet;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::string::String;
use std::vec::Vec;

use proptest::prelude::*;

use crate::addr::{Page, PhysFrame, VirtAddr, PAGE_SIZE};
use crate::host::{HostMachine, HostPlatform};
use crate::pageheap::InitError;
use crate::platform::Platform;
use crate::sizeclass::SizeClass;
use crate::Heap;

/// A heap with the default build's checks only (whatever features the test build has).
pub(super) type Plain = Heap<HostPlatform, false>;

pub(super) fn plain_heap(phys_mib: usize, window: usize, max: usize) -> &'static Plain {
    let m = HostMachine::new(phys_mib << 20, window);
    let heap: &'static Plain = crate::host::leak(Heap::new(m.platform));
    heap.init(m.space, m.window, max).expect("heap init");
    heap
}

pub(super) fn small_heap() -> &'static Plain {
    plain_heap(16, 256 << 20, 64 << 20)
}

/// Runs `f`, which must panic, and returns the panic message.
pub(super) fn panic_message(f: impl FnOnce()) -> String {
    let err = catch_unwind(AssertUnwindSafe(f)).expect_err("expected a panic");
    if let Some(s) = err.downcast_ref::<String>() {
        s.clone()
    } else if let Some(s) = err.downcast_ref::<&str>() {
        String::from(*s)
    } else {
        String::from("<non-string panic>")
    }
}

pub(super) fn lay(size: usize) -> Layout {
    Layout::from_size_align(size, 8).unwrap()
}

/// After a refused free the heap is unchanged: a burst of allocations of `layout` hands out no address
/// twice and none that a user still holds.
fn assert_no_double_handout(heap: &Plain, layout: Layout, held: &[*mut u8]) {
    let mut seen: BTreeSet<usize> = held.iter().map(|&p| p as usize).collect();
    let mut got = Vec::new();
    // Past the CPU cache and a few spans of the class (Miri: past one span; 2000 took it 20 s a test).
    for _ in 0..if cfg!(miri) { 600 } else { 2000 } {
        // SAFETY: test code: a fresh allocation of this heap.
        let p = unsafe { heap.alloc(layout) };
        assert!(!p.is_null());
        assert!(seen.insert(p as usize), "{p:?} handed out twice");
        got.push(p);
    }
    for p in got {
        // SAFETY: test code: live blocks of this heap with this layout.
        unsafe { heap.dealloc(p, layout) };
    }
}

#[test]
fn double_free_at_once_is_named_and_changes_nothing() {
    let heap = small_heap();
    let l = lay(16);
    // SAFETY: test code throughout: pointers are blocks of this heap with this layout (or deliberately not).
    let p = unsafe { heap.alloc(l) };
    // SAFETY: `l` is a valid layout of non-zero size.
    let keep = unsafe { heap.alloc(l) };
    // SAFETY: `p` was just allocated with `l`; freed once here.
    unsafe { heap.dealloc(p, l) };
    // SAFETY: deliberately not: a double free (`p` waits in the CPU cache), which the heap must
    // refuse with a panic (what this test checks); the heap
    // touches only its own free-mark word in the object (read, and stamped again unchanged): no
    // user memory.
    let msg = panic_message(|| unsafe { heap.dealloc(p, l) });
    assert!(
        msg.contains("double free") && msg.contains("CPU cache"),
        "{msg}"
    );
    assert!(
        msg.contains(&std::format!("{:#x}", p as usize)),
        "names the address: {msg}"
    );
    assert_no_double_handout(heap, l, &[keep]);
}

#[test]
fn double_free_after_the_object_went_back_to_its_span() {
    let heap = small_heap();
    let l = lay(48);
    // SAFETY: test code.
    let p = unsafe { heap.alloc(l) };
    // SAFETY: `l` is a valid layout of non-zero size.
    let keep = unsafe { heap.alloc(l) };
    // SAFETY: `p` was just allocated with `l`; freed once here.
    unsafe { heap.dealloc(p, l) };
    heap.trim(); // the object leaves the cache for its span

    // SAFETY: deliberately not: a double free (`p` is back in its span), which the heap must refuse
    // with a panic (what this test checks); the heap
    // touches only its own free-mark word in the object (read, and stamped again unchanged): no
    // user memory.
    let msg = panic_message(|| unsafe { heap.dealloc(p, l) });
    assert!(
        msg.contains("double free") && msg.contains("in its span"),
        "{msg}"
    );
    assert_no_double_handout(heap, l, &[keep]);
}

#[test]
fn interior_pointer_of_a_small_object_is_named() {
    let heap = small_heap();
    let l = lay(64);
    // SAFETY: test code.
    let p = unsafe { heap.alloc(l) };
    // SAFETY: `p.add(8)` stays inside the 64 B block; the free is deliberately not valid: an
    // interior pointer, which the heap must refuse with a panic (what this test checks), from its
    // span map, before it reads anything at the address.
    let msg = panic_message(|| unsafe { heap.dealloc(p.add(8), l) });
    assert!(
        msg.contains("interior pointer") && msg.contains(&std::format!("{:#x}", p as usize)),
        "names the object: {msg}"
    );
    assert_no_double_handout(heap, l, &[p]);
}

#[test]
fn free_of_a_slot_never_handed_out_is_named() {
    let heap = small_heap();
    let l = lay(16);
    // A 16 B span has 512 objects and the first refill takes objects 0..128 into this CPU's cache, from
    // whose top `alloc` pops: object 0 waits in the cache, object 400 is free in the span, never handed out.
    // SAFETY: test code.
    let p = unsafe { heap.alloc(l) };
    let base = (p as usize & !(PAGE_SIZE - 1)) as *mut u8;
    assert_ne!(base, p);
    let cached = base;
    // SAFETY: deliberately not: a slot never handed out, waiting in this CPU's cache, which the
    // heap must refuse with a panic (what this test checks); the heap
    // touches only its own free-mark word in the object (read, and stamped again unchanged): no
    // user memory.
    let msg = panic_message(|| unsafe { heap.dealloc(cached, l) });
    assert!(
        msg.contains("double free") && msg.contains("CPU cache"),
        "{msg}"
    );
    // SAFETY: test code: blocks of this heap with their layouts, or deliberately not.
    let never = unsafe { base.add(400 * 16) };
    // SAFETY: deliberately not: a slot never handed out, free in its span, which the heap must
    // refuse with a panic (what this test checks); the heap
    // touches only its own free-mark word in the object (read, and stamped again unchanged): no
    // user memory.
    let msg = panic_message(|| unsafe { heap.dealloc(never, l) });
    assert!(msg.contains("in its span"), "{msg}");
    assert_no_double_handout(heap, l, &[p]);
}

#[test]
fn free_in_a_span_tail_is_named() {
    let heap = small_heap();
    // 48 B objects: 170 in an 8 KiB span, 32 bytes of tail.
    let class = SizeClass::for_size(48).unwrap();
    assert_eq!(class.size(), 48);
    let l = lay(48);
    // SAFETY: test code.
    let p = unsafe { heap.alloc(l) };
    let base = p as usize & !(PAGE_SIZE - 1);
    let tail = (base + 170 * 48) as *mut u8;
    // SAFETY: deliberately not: an address in the span's unused tail, which the heap must refuse
    // with a panic (what this test checks) from the offset alone, reading nothing there.
    let msg = panic_message(|| unsafe { heap.dealloc(tail, l) });
    assert!(msg.contains("tail"), "{msg}");
}

#[test]
fn freeing_a_collector_object_is_refused() {
    use crate::gc::{Gc, GcConfig, GcHeap, Rootable};
    struct R;
    impl Rootable for R {
        type Root<'gc> = ();
    }
    let heap = small_heap();
    let mut gc: GcHeap<R> = GcHeap::new(heap, GcConfig::default(), |_| ());
    // A pointer-free 16-byte value: the explicit heap's 16 B class, same size class as the layout below.
    let msg = panic_message(AssertUnwindSafe(|| {
        gc.mutate(|mc, _| {
            let g = Gc::new(mc, [7u64; 2]);
            // SAFETY: test code: deliberately frees a collector's object through the explicit heap.
            unsafe { heap.dealloc(g.as_ptr() as *mut u8, lay(16)) };
        })
    }));
    assert!(msg.contains("garbage-collected"), "{msg}");
}

#[test]
fn realloc_checks_before_it_copies_or_resizes() {
    let heap = small_heap();
    // A stack pointer in one class: refused, not handed back as live.
    let mut local = [0u64; 2];
    // SAFETY: test code: blocks of this heap with their layouts, or deliberately not.
    let msg = panic_message(|| unsafe {
        heap.realloc(local.as_mut_ptr().cast(), lay(16), 12);
    });
    assert!(
        msg.contains("bad realloc") && msg.contains("not a live heap object"),
        "{msg}"
    );
    // A freed pointer in one class.
    // SAFETY: test code.
    let p = unsafe { heap.alloc(lay(16)) };
    // SAFETY: `p` was just allocated with this layout; freed once here.
    unsafe { heap.dealloc(p, lay(16)) };
    // SAFETY: deliberately not: a realloc of the freed `p`, which the heap must refuse with a panic
    // before copying (what this test checks); the heap
    // touches only its own free-mark word in the object (read, and stamped again unchanged): no
    // user memory.
    let msg = panic_message(|| unsafe {
        heap.realloc(p, lay(16), 12);
    });
    assert!(msg.contains("double free"), "{msg}");
    // An old layout larger than the object: refused before copying 4096 bytes out of a 16 B object.
    // SAFETY: a valid layout of non-zero size.
    let q = unsafe { heap.alloc(lay(16)) };
    // SAFETY: test code: blocks of this heap with their layouts, or deliberately not.
    let msg = panic_message(|| unsafe {
        heap.realloc(q, lay(4096), 8192);
    });
    assert!(msg.contains("size class differs"), "{msg}");
    // A large layout at a small span's base: refused before resizing the span as if it were large.
    let base = (q as usize & !(PAGE_SIZE - 1)) as *mut u8;
    // SAFETY: deliberately not: a large layout at a small span's base, which the heap must refuse
    // with a panic before resizing anything (what this test checks).
    let msg = panic_message(|| unsafe {
        heap.realloc(base, lay(64 << 10), 128 << 10);
    });
    assert!(
        msg.contains("size class differs") && msg.contains("large"),
        "{msg}"
    );
    // A large object with the wrong size.
    // SAFETY: test code: blocks of this heap with their layouts, or deliberately not.
    let big = unsafe { heap.alloc(lay(64 << 10)) };
    // SAFETY: deliberately not: `big` with a layout twice its size, which the heap must refuse with
    // a panic before copying or resizing (what this test checks).
    let msg = panic_message(|| unsafe {
        heap.realloc(big, lay(128 << 10), 256 << 10);
    });
    assert!(msg.contains("size differs"), "{msg}");
    // Correct use still works, and nothing was lost.
    // SAFETY: the refused calls above changed nothing: `big` is live with `lay(64 << 10)`, then
    // `big2` with `lay(100 << 10)`, `q` with `lay(16)`; each freed once.
    unsafe {
        let big2 = heap.realloc(big, lay(64 << 10), 100 << 10);
        assert!(!big2.is_null());
        heap.dealloc(big2, lay(100 << 10));
        heap.dealloc(q, lay(16));
    }
    heap.trim();
    assert_eq!(heap.stats().objects(), 0);
}

#[test]
fn large_free_with_a_wrong_size_is_refused() {
    let heap = small_heap();
    // SAFETY: test code.
    let p = unsafe { heap.alloc(lay(40 << 10)) };
    // SAFETY: deliberately not: `p` with ten times its size, which the heap must refuse with a
    // panic before anything changes (what this test checks).
    let msg = panic_message(|| unsafe { heap.dealloc(p, lay(400 << 10)) });
    assert!(msg.contains("size differs"), "{msg}");
    // SAFETY: the refused free changed nothing: `p` is live with this layout; freed once.
    unsafe { heap.dealloc(p, lay(40 << 10)) };
}

/// Alignments beyond the heap base's own alignment (64 MiB arenas) were met only modulo that alignment.
#[test]
#[cfg_attr(miri, ignore = "maps gigabytes of address space")]
fn alignments_up_to_a_gibibyte_are_met() {
    let heap = plain_heap(64, 8 << 30, 4 << 30);
    // Beyond what the heap can hold: null, never a misaligned block.
    for shift in [33, 40, 62] {
        let l = Layout::from_size_align(8, 1 << shift).unwrap();
        // SAFETY: test code.
        assert!(unsafe { heap.alloc(l) }.is_null(), "align 2^{shift}");
    }
    for shift in 0..=30 {
        let align = 1usize << shift;
        for size in [1, 8, 100, 40 << 10, 3 << 20] {
            let l = Layout::from_size_align(size, align).unwrap();
            // SAFETY: test code.
            let p = unsafe { heap.alloc(l) };
            assert!(!p.is_null(), "Layout({size}, {align:#x}) failed");
            assert_eq!(
                p as usize % align,
                0,
                "Layout({size}, {align:#x}) gave {p:?}"
            );
            // SAFETY: `p` is a fresh non-null block of `size` bytes of layout `l`: bytes 0 and
            // `size - 1` are in it; then freed once with `l`.
            unsafe {
                p.write(1);
                p.add(size - 1).write(2);
                heap.dealloc(p, l);
            }
        }
    }
}

proptest! {
    #![proptest_config(crate::testing::proptest_config(if cfg!(miri) { 2 } else { 64 }))]
    #[test]
    #[cfg_attr(miri, ignore = "maps gigabytes of address space")]
    fn any_alignment_is_met(
        shifts in prop::collection::vec(0u32..=30, 1..8),
        sizes in prop::collection::vec(1usize..200_000, 8),
    ) {
        let heap = plain_heap(64, 8 << 30, 4 << 30);
        let mut live = Vec::new();
        for (i, &shift) in shifts.iter().enumerate() {
            let l = Layout::from_size_align(sizes[i], 1 << shift).unwrap();
            // SAFETY: test code.
            let p = unsafe { heap.alloc(l) };
            prop_assert!(!p.is_null());
            prop_assert_eq!(p as usize % l.align(), 0);
            // SAFETY: test code: the block is fresh and `size` bytes long.
            unsafe { core::ptr::write_bytes(p, i as u8, l.size()) };
            live.push((p, l, i as u8));
        }
        for (p, l, v) in live {
            // SAFETY: test code: live blocks of this heap.
            let s = unsafe { core::slice::from_raw_parts(p, l.size()) };
            prop_assert!(s.iter().all(|&b| b == v));
            // SAFETY: `p` was allocated with `l` above and is freed once here.
            unsafe { heap.dealloc(p, l) };
        }
    }
}

#[test]
fn unlimited_max_bytes_initializes_at_once() {
    // usize::MAX overflowed in debug builds and looped for hours in release; 2^55 took seconds.
    for max in [usize::MAX, 1 << 55] {
        let heap = plain_heap(16, 1 << 30, max);
        // SAFETY: test code.
        let p = unsafe { heap.alloc(lay(100)) };
        assert!(!p.is_null());
        // SAFETY: `p` was just allocated with this layout (non-null); freed once here.
        unsafe { heap.dealloc(p, lay(100)) };
    }
}

#[test]
#[cfg_attr(
    miri,
    ignore = "maps 8 MiB page by page: over a minute under Miri, and nothing in it is unsafe-specific"
)]
fn a_limit_below_one_arena_is_honoured() {
    // An 8 MiB limit used to hold 63 MiB.
    let heap = plain_heap(128, 1 << 30, 8 << 20);
    let l = lay(1 << 20);
    let mut got = Vec::new();
    loop {
        // SAFETY: test code.
        let p = unsafe { heap.alloc(l) };
        if p.is_null() {
            break;
        }
        got.push(p);
        assert!(got.len() <= 8, "an 8 MiB heap holds {} MiB", got.len());
    }
    assert!(got.len() >= 6, "an 8 MiB heap held only {} MiB", got.len());
    let s = heap.stats();
    assert!(
        s.pages.grown * PAGE_SIZE <= 8 << 20,
        "grew to {} pages",
        s.pages.grown
    );
    for p in got {
        // SAFETY: test code.
        unsafe { heap.dealloc(p, l) };
    }
    // Small objects still work at the limit's edge.
    // SAFETY: a valid layout of non-zero size.
    let p = unsafe { heap.alloc(lay(32)) };
    assert!(!p.is_null());
    // SAFETY: `p` was just allocated with this layout (non-null); freed once here.
    unsafe { heap.dealloc(p, lay(32)) };
}

#[test]
fn a_limit_below_one_page_is_a_named_error() {
    let m = HostMachine::new(16 << 20, 256 << 20);
    let heap: &'static Plain = crate::host::leak(Heap::new(m.platform));
    let e = heap.init(m.space, m.window, 4096).unwrap_err();
    assert_eq!(e, InitError::LimitTooSmall { max_bytes: 4096 });
    assert!(std::format!("{e}").contains("4096"));
}

std::thread_local! {
    /// The CPU index a thread reports to [`TwoCpus`], set by the test (each test thread its own).
    static TWO_CPUS_INDEX: core::cell::Cell<usize> = const { core::cell::Cell::new(usize::MAX) };
}

/// The host platform, with caches for only two CPUs, and CPU indices the test sets per thread (the
/// host's are shared with every other test running at the same time).
struct TwoCpus(&'static HostPlatform);

// SAFETY: delegates everything but the CPU index to the host platform; the test gives each of its threads
// a distinct index, and only one thread at a time uses this platform's heap.
unsafe impl Platform for TwoCpus {
    type InterruptGuard = <HostPlatform as Platform>::InterruptGuard;
    const MAX_CPUS: usize = 2;
    fn cpu_index(&self) -> usize {
        TWO_CPUS_INDEX.with(|c| c.get())
    }
    fn mask_interrupts(&self) -> Self::InterruptGuard {
        self.0.mask_interrupts()
    }
    fn physical_memory_offset(&self) -> VirtAddr {
        self.0.physical_memory_offset()
    }
    fn page_mapped(&self, page: Page, frame: PhysFrame) {
        self.0.page_mapped(page, frame)
    }
    fn pages_unmapped(&self, start: Page, count: u64) {
        self.0.pages_unmapped(start, count)
    }
}

#[test]
fn platform_max_cpus_is_honoured() {
    let m = HostMachine::new(16 << 20, 256 << 20);
    let platform: &'static TwoCpus = crate::host::leak(TwoCpus(m.platform));
    let space = crate::arena::AddressSpace::new(m.space.frames, m.space.mapper, platform);
    let heap: &'static Heap<TwoCpus, false> = crate::host::leak(Heap::new(platform));
    heap.init(space, m.window, 64 << 20).unwrap();
    let class = SizeClass::for_size(32).unwrap().index();
    std::thread::scope(|s| {
        s.spawn(|| {
            TWO_CPUS_INDEX.with(|c| c.set(1));
            // SAFETY: test code.
            unsafe { heap.dealloc(heap.alloc(lay(32)), lay(32)) };
            assert!(heap.stats().classes[class].cached > 0, "CPU 1 has a cache");
        });
    });
    let cached = heap.stats().classes[class].cached;
    std::thread::scope(|s| {
        s.spawn(|| {
            TWO_CPUS_INDEX.with(|c| c.set(5));
            // SAFETY: test code.
            let ps: Vec<_> = (0..100).map(|_| unsafe { heap.alloc(lay(32)) }).collect();
            assert!(ps.iter().all(|p| !p.is_null()));
            let distinct: BTreeSet<_> = ps.iter().collect();
            assert_eq!(distinct.len(), 100);
            for p in ps {
                // SAFETY: each `p` was allocated above with `lay(32)` (non-null, distinct); freed
                // once.
                unsafe { heap.dealloc(p, lay(32)) };
            }
        });
    });
    assert_eq!(
        heap.stats().classes[class].cached,
        cached,
        "CPU 5 is over Platform::MAX_CPUS = 2: it must have no cache"
    );
    assert_eq!(heap.stats().objects(), 0);
}

/// More threads than caches: threads past the 64th share no cache (they take the locked path); with
/// round-robin numbering thread 65 shared CPU 0's cache and objects were handed out twice.
#[test]
#[cfg_attr(miri, ignore = "80 threads")]
fn more_threads_than_caches() {
    let heap = plain_heap(512, 4 << 30, 2 << 30);
    let n = 80;
    let barrier = std::sync::Barrier::new(n);
    std::thread::scope(|s| {
        for t in 0..n {
            let barrier = &barrier;
            s.spawn(move || {
                let mut live: Vec<(*mut u8, Layout, u8)> = Vec::new();
                barrier.wait(); // all 80 threads hold an index (or none) at once
                for i in 0..3000u32 {
                    let v = (t as u32 * 7 + i) as u8;
                    if live.len() < 50 && i % 3 != 2 {
                        let l = lay(8 + (i as usize * 13 + t) % 600);
                        // SAFETY: test code.
                        let p = unsafe { heap.alloc(l) };
                        assert!(!p.is_null());
                        // SAFETY: `p` is a fresh non-null block of `l.size()` bytes.
                        unsafe { core::ptr::write_bytes(p, v, l.size()) };
                        live.push((p, l, v));
                    } else if let Some((p, l, v)) = live.pop() {
                        // SAFETY: test code: a live block of this heap, written by this thread.
                        let s = unsafe { core::slice::from_raw_parts(p, l.size()) };
                        assert!(s.iter().all(|&b| b == v), "block {p:?} overwritten");
                        // SAFETY: popped from `live`: allocated with `l` by this thread, freed once
                        // here.
                        unsafe { heap.dealloc(p, l) };
                    }
                }
                for (p, l, _) in live {
                    // SAFETY: the blocks still in `live`: allocated with `l`, not freed yet; freed
                    // once.
                    unsafe { heap.dealloc(p, l) };
                }
            });
        }
    });
    assert_eq!(heap.stats().objects(), 0);
}

/// A 4 MiB machine: caches (tens of KiB each) stop fitting after a dozen CPUs; the rest must still
/// allocate (they got null for every small allocation), and creating a cache may reclaim free pages.
#[test]
#[cfg_attr(miri, ignore = "32 threads on a small machine")]
fn a_small_machine_serves_every_cpu() {
    let heap = plain_heap(4, 256 << 20, 64 << 20);
    for cpu in 0..32 {
        std::thread::scope(|s| {
            s.spawn(|| {
                HostPlatform::set_cpu_index(cpu);
                let ps: Vec<_> = (0..64)
                    // SAFETY: test code.
                    .map(|_| unsafe { heap.alloc(lay(24)) })
                    .collect();
                assert!(ps.iter().all(|p| !p.is_null()), "CPU {cpu} got null");
                for p in ps {
                    // SAFETY: each `p` was allocated above with `lay(24)` (non-null); freed once.
                    unsafe { heap.dealloc(p, lay(24)) };
                }
            });
        });
    }
}

/// A large object whose last page's second frame is unmapped (a trimmed tail) ends before that frame: a
/// layout of its page count whose size reaches into the frame is larger than the allocation, and is
/// refused by `dealloc` and `realloc`. Before, `realloc` accepted it, and when no frame could map the
/// tail the move copied `layout.size()` bytes out of the unmapped frame (a page fault).
#[test]
fn a_layout_reaching_a_trimmed_tail_is_refused() {
    const REAL: usize = 33_000; // 5 pages, ending in the first frame of the fifth
    const LIE: usize = 40_000; // the same 5 pages, reaching into the fifth's second frame
    let heap = small_heap();
    // SAFETY: test code on valid layouts; each object is freed once with its layout.
    unsafe {
        let p = heap.alloc(lay(REAL));
        assert!(!p.is_null());
        assert_eq!(
            heap.stats().pages.trimmed_tails,
            1,
            "a fresh heap trims the tail"
        );
        ptr_fill(p, REAL);
        let msg = panic_message(|| {
            heap.realloc(p, lay(LIE), LIE + 900);
        });
        assert!(msg.contains("larger than the allocation"), "{msg}");
        assert!(msg.contains("at most 36864 B"), "{msg}");
        let msg = panic_message(|| heap.dealloc(p, lay(LIE)));
        assert!(msg.contains("larger than the allocation"), "{msg}");
        // The object is untouched and its true layout works.
        ptr_check(p, REAL);
        let q = heap.realloc(p, lay(REAL), LIE + 900);
        assert!(!q.is_null());
        ptr_check(q, REAL);
        heap.dealloc(q, lay(LIE + 900));
    }
    assert_eq!(heap.stats().objects(), 0);
}

/// The same for a large object shrunk in place to a small class aligned to 8 KiB (it stays in its
/// large span, recorded at that class): once its spare tail frame is trimmed (an allocation found no
/// frame), a layout naming the class but larger than what is mapped is refused.
#[test]
#[cfg_attr(miri, ignore = "hoards every frame of the machine")]
fn a_small_class_kept_in_a_trimmed_large_span_is_checked_against_the_mapped_bytes() {
    let heap = small_heap();
    let aligned = |size| Layout::from_size_align(size, PAGE_SIZE).unwrap();
    let class = SizeClass::for_layout(9000, PAGE_SIZE).expect("a small class");
    assert!(
        class.size() > PAGE_SIZE + 4096,
        "the class must reach the second page's second frame"
    );
    // SAFETY: test code on valid layouts; each object is freed once with its layout.
    unsafe {
        let p = heap.alloc(aligned(40 << 10));
        assert!(!p.is_null());
        let q = heap.realloc(p, aligned(40 << 10), 9000);
        assert_eq!(q, p, "shrunk in place, kept in its large span");
        ptr_fill(p, 9000);
        // Out of frames: the allocation trims every spare tail frame before it gives up.
        let hoard = heap
            .with_address_space(|s| crate::testing::hoard_all_but(&mut s.frames, 0))
            .unwrap();
        let trimmed = heap.stats().pages.trimmed_tails;
        assert!(heap.alloc(lay(64 << 10)).is_null());
        assert_eq!(
            heap.stats().pages.trimmed_tails,
            trimmed + 1,
            "the tail was trimmed"
        );
        let msg = panic_message(|| {
            heap.realloc(p, aligned(class.size()), 20_000);
        });
        assert!(msg.contains("larger than the allocation"), "{msg}");
        ptr_check(p, 9000);
        // SAFETY: the frames hoarded above, which nothing uses.
        heap.with_address_space(|s| {
            for (f, n) in hoard {
                s.frames.free_contiguous(f, n);
            }
        });
        heap.dealloc(p, aligned(9000));
    }
    assert_eq!(heap.stats().objects(), 0);
}

/// Fills `len` bytes at `p` with a pattern of their offsets.
unsafe fn ptr_fill(p: *mut u8, len: usize) {
    for i in 0..len {
        // SAFETY: the caller's `len` bytes.
        unsafe { p.add(i).write(i as u8 ^ 0x5a) };
    }
}

/// Checks `ptr_fill`'s pattern.
unsafe fn ptr_check(p: *mut u8, len: usize) {
    for i in 0..len {
        // SAFETY: the caller's `len` bytes.
        assert_eq!(
            // SAFETY: the caller's `len` bytes at `p`, initialized: every caller here filled them
            // (`ptr_fill`, or a realloc of a filled block).
            unsafe { p.add(i).read() },
            i as u8 ^ 0x5a,
            "byte {i} changed"
        );
    }
}

/// A refused large free or realloc panics only once the page-heap lock is released: a panic path that
/// allocates from the heap (a hook that formats, std boxing the message when the heap is the global
/// allocator) must not spin on it. Run in a child process (a global panic hook), with a time limit.
#[test]
#[ignore = "run by refused_large_frees_release_the_page_heap_lock_before_panicking in a child process"]
fn child_refused_large_free_with_an_allocating_panic_hook() {
    // Only as `run_child`'s child: its global panic hook must not outlive it in a test run.
    if std::env::var_os(CHILD_ENV).is_none() {
        return;
    }
    static HEAP: std::sync::OnceLock<&'static Plain> = std::sync::OnceLock::new();
    let heap = *HEAP.get_or_init(small_heap);
    std::panic::set_hook(std::boxed::Box::new(|_| {
        // SAFETY: a valid layout; the block is freed at once.
        unsafe {
            let h = HEAP.get().unwrap();
            let p = h.alloc(lay(64 << 10));
            assert!(!p.is_null(), "the hook's allocation failed");
            h.dealloc(p, lay(64 << 10));
        }
        std::eprintln!("CHILD: the hook allocated");
    }));
    // SAFETY: test code; the refused calls change nothing.
    unsafe {
        let p = heap.alloc(lay(40 << 10));
        assert!(catch_unwind(AssertUnwindSafe(|| heap.dealloc(p, lay(80 << 10)))).is_err());
        assert!(catch_unwind(AssertUnwindSafe(|| {
            heap.realloc(p, lay(80 << 10), 100 << 10);
        }))
        .is_err());
        heap.dealloc(p, lay(40 << 10));
    }
    std::eprintln!("CHILD: done");
}

#[test]
#[cfg_attr(miri, ignore = "runs a child process")]
fn refused_large_frees_release_the_page_heap_lock_before_panicking() {
    let err =
        run_child("heap::soundness_tests::child_refused_large_free_with_an_allocating_panic_hook");
    assert_eq!(err.matches("CHILD: the hook allocated").count(), 2, "{err}");
    assert!(err.contains("CHILD: done"), "{err}");
}

/// A central list's flush that meets an object it cannot free (a racing double free, or `debug-checks`')
/// panics only once the class lock is released. In a child process (a global panic hook).
#[test]
#[ignore = "run by a_refused_flush_releases_the_class_lock_before_panicking in a child process"]
fn child_refused_flush_with_a_panic_hook() {
    // Only as `run_child`'s child: its global panic hook must not outlive it in a test run.
    if std::env::var_os(CHILD_ENV).is_none() {
        return;
    }
    static HEAP: std::sync::OnceLock<&'static Plain> = std::sync::OnceLock::new();
    let heap = *HEAP.get_or_init(small_heap);
    let class = SizeClass::for_layout(16, 8).unwrap();
    std::panic::set_hook(std::boxed::Box::new(move |_| {
        let held = HEAP.get().unwrap().central[class.index()].is_locked();
        std::eprintln!("CHILD: class lock {}", if held { "held" } else { "free" });
    }));
    // SAFETY: test code; the object is freed once through `dealloc` (it waits in this CPU's cache,
    // allocated in its span), then twice more straight into its span: the second is refused.
    unsafe {
        let p = heap.alloc(lay(16));
        heap.dealloc(p, lay(16));
        let obj = VirtAddr::from_ptr(p);
        let r = catch_unwind(AssertUnwindSafe(|| {
            heap.central[class.index()].flush(class, &[obj, obj], heap.spans(), &heap.pages, 0)
        }));
        assert!(r.is_err(), "the second free was not refused");
    }
    std::eprintln!("CHILD: done");
}

#[test]
#[cfg_attr(miri, ignore = "runs a child process")]
fn a_refused_flush_releases_the_class_lock_before_panicking() {
    let err = run_child("heap::soundness_tests::child_refused_flush_with_a_panic_hook");
    assert!(err.contains("CHILD: class lock free"), "{err}");
    assert!(err.contains("CHILD: done"), "{err}");
}

/// A central flush that refuses an object (here a double free that got past the free mark, as one racing
/// another CPU's can) frees the batch's other objects and takes the whole batch off the CPU's cache
/// before the panic: before, the objects it had freed stayed cached too, and were handed out twice.
#[test]
fn a_refused_flush_leaves_no_freed_object_in_the_cache() {
    let heap = small_heap();
    let l = lay(16);
    let class = SizeClass::for_layout(16, 8).unwrap();
    // SAFETY: test code; `a` is freed twice on purpose, its mark cleared in between as a racing free's
    // would be, and the heap must refuse it without handing anything out twice.
    unsafe {
        let x = heap.alloc(l);
        let a = heap.alloc(l);
        heap.dealloc(x, l);
        heap.dealloc(a, l);
        crate::freemark::clear(a, class);
        heap.dealloc(a, l);
        // Draining the cache flushes x, a and a again: the second a is refused.
        let msg = panic_message(|| heap.trim());
        assert!(msg.contains(&std::format!("{:#x}", a as usize)), "{msg}");
        let mut seen = BTreeSet::new();
        for _ in 0..600 {
            let p = heap.alloc(l);
            assert!(!p.is_null());
            assert!(
                seen.insert(p as usize),
                "{p:?} handed out twice (x {x:?}, a {a:?})"
            );
        }
    }
}

/// Set for the child processes of [`run_child`]: a `child_` test does nothing without it.
pub(super) const CHILD_ENV: &str = "SPANALLOC_TEST_CHILD";

/// Runs the ignored test `name` (its path in the crate) in a child process (20 s at most); returns its
/// stderr, after checking that it ended in time and passed.
pub(super) fn run_child(name: &str) -> String {
    let mut child = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            name,
            "--exact",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_ENV, "1")
        .stderr(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let start = std::time::Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break Some(s);
        }
        if start.elapsed() > std::time::Duration::from_secs(20) {
            child.kill().unwrap();
            child.wait().unwrap();
            break None;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    let mut err = String::new();
    std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut err).unwrap();
    assert!(
        status.is_some(),
        "the child's panic path hung (a lock held); child stderr:\n{err}"
    );
    assert!(status.unwrap().success(), "child failed:\n{err}");
    err
}
