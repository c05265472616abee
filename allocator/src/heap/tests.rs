//! Host tests of the whole heap over the host platform (real memory through mirrored page tables).

use core::alloc::{GlobalAlloc, Layout};
use std::collections::BTreeMap;
use std::vec::Vec;

use proptest::prelude::*;

use crate::host::{HostMachine, HostPlatform};
use crate::testing::{give_back_frames, squeeze_frames, Rng};
use crate::Heap;

/// A heap over `phys_mib` MiB of fake physical memory, leaked for the `'static` it needs. Under Miri the
/// window is a plain allocation, so it is kept small there.
fn heap(phys_mib: usize) -> &'static Heap<HostPlatform> {
    let (window, max) = if cfg!(miri) {
        (256 << 20, 64 << 20)
    } else {
        (4 << 30, 2 << 30)
    };
    let m = HostMachine::new(phys_mib << 20, window);
    let heap: &'static Heap<HostPlatform> = crate::host::leak(Heap::new(m.platform));
    heap.init(m.space, m.window, max).expect("heap init");
    heap
}

/// Iteration counts shrink under Miri, which runs some 10,000 times slower (and maps a page in a good
/// part of a second).
const fn scaled(n: usize) -> usize {
    if cfg!(miri) {
        n / 2000 + 1
    } else {
        n
    }
}

/// Whether every byte of `s` is `v`, compared as one block: a loop over the bytes takes Miri seconds.
fn filled_with(s: &[u8], v: u8) -> bool {
    s == std::vec![v; s.len()].as_slice()
}

fn pattern(id: u64, i: usize) -> u8 {
    (id.wrapping_mul(31).wrapping_add(i as u64 * 7) >> 3) as u8 ^ (i as u8)
}

/// A live block of the model: its layout, id (for the pattern) and how many bytes hold the pattern.
struct Block {
    layout: Layout,
    id: u64,
}

/// The model: live blocks by address; checks contents and that no two blocks overlap.
struct Model {
    heap: &'static Heap<HostPlatform>,
    live: BTreeMap<usize, Block>,
    next_id: u64,
}

impl Model {
    fn new(heap: &'static Heap<HostPlatform>) -> Self {
        Self {
            heap,
            live: BTreeMap::new(),
            next_id: 1,
        }
    }

    fn fill(p: *mut u8, len: usize, id: u64) {
        // Fill the ends and a stride in between: full fills of 1 MiB blocks would dominate the run.
        // SAFETY: test code: the pointer is a live block of this heap with this layout (or a fresh one).
        let s = unsafe { core::slice::from_raw_parts_mut(p, len) };
        for i in Self::probe_points(len) {
            s[i] = pattern(id, i);
        }
    }

    fn probe_points(len: usize) -> impl Iterator<Item = usize> {
        let step = (len / 64).max(1);
        (0..len.min(64))
            .chain((0..len).step_by(step))
            .chain(len.saturating_sub(64)..len)
    }

    fn check(p: *const u8, b: &Block) {
        // SAFETY: test code: the pointer is a live block of this heap with this layout (or a fresh one).
        let s = unsafe { core::slice::from_raw_parts(p, b.layout.size()) };
        for i in Self::probe_points(b.layout.size()) {
            assert_eq!(
                s[i],
                pattern(b.id, i),
                "block {p:?} id {} byte {i} corrupted",
                b.id
            );
        }
    }

    fn insert(&mut self, p: *mut u8, layout: Layout, id: u64) {
        let a = p as usize;
        assert_eq!(
            a % layout.align(),
            0,
            "{p:?} not aligned to {}",
            layout.align()
        );
        if let Some((&prev, b)) = self.live.range(..=a).next_back() {
            assert!(
                prev + b.layout.size() <= a,
                "{p:?} overlaps live block at {prev:#x}"
            );
        }
        if let Some((&next, _)) = self.live.range(a..).next() {
            assert!(
                a + layout.size() <= next,
                "{p:?}+{} overlaps live block at {next:#x}",
                layout.size()
            );
        }
        self.live.insert(a, Block { layout, id });
    }

    fn alloc(&mut self, layout: Layout, zeroed: bool) {
        // SAFETY: test code: the pointer is a live block of this heap with this layout (or a fresh one).
        let p = unsafe {
            if zeroed {
                self.heap.alloc_zeroed(layout)
            } else {
                self.heap.alloc(layout)
            }
        };
        assert!(!p.is_null(), "out of memory for {layout:?}");
        if zeroed {
            // SAFETY: test code: the pointer is a live block of this heap with this layout (or a fresh one).
            let s = unsafe { core::slice::from_raw_parts(p, layout.size()) };
            assert!(
                filled_with(s, 0),
                "alloc_zeroed({layout:?}) at {p:?} is not zero"
            );
        }
        let id = self.next_id;
        self.next_id += 1;
        Self::fill(p, layout.size(), id);
        self.insert(p, layout, id);
    }

    fn free_nth(&mut self, n: usize) {
        let Some((&a, _)) = self.live.iter().nth(n % self.live.len().max(1)) else {
            return;
        };
        let b = self.live.remove(&a).unwrap();
        Self::check(a as *const u8, &b);
        // SAFETY: test code: the pointer is a live block of this heap with this layout (or a fresh one).
        unsafe { self.heap.dealloc(a as *mut u8, b.layout) };
    }

    fn realloc_nth(&mut self, n: usize, new_size: usize) {
        let Some((&a, _)) = self.live.iter().nth(n % self.live.len().max(1)) else {
            return;
        };
        let b = self.live.remove(&a).unwrap();
        Self::check(a as *const u8, &b);
        // SAFETY: test code: the pointer is a live block of this heap with this layout (or a fresh one).
        let p = unsafe { self.heap.realloc(a as *mut u8, b.layout, new_size) };
        assert!(!p.is_null(), "realloc to {new_size} failed");
        let kept = b.layout.size().min(new_size);
        // SAFETY: test code: the pointer is a live block of this heap with this layout (or a fresh one).
        let s = unsafe { core::slice::from_raw_parts(p, kept) };
        for i in Self::probe_points(b.layout.size()).filter(|&i| i < kept) {
            assert_eq!(s[i], pattern(b.id, i), "realloc lost byte {i}");
        }
        let layout = Layout::from_size_align(new_size, b.layout.align()).unwrap();
        let id = self.next_id;
        self.next_id += 1;
        Self::fill(p, new_size, id);
        self.insert(p, layout, id);
    }

    fn free_all(&mut self) {
        while !self.live.is_empty() {
            self.free_nth(0);
        }
    }
}

/// Sizes mostly small, sometimes up to 1 MiB (48 KiB under Miri, where mapping a page costs a good part
/// of a second: still a large object); alignments 1..4096.
fn random_layout(r: &mut Rng) -> Layout {
    let large = if cfg!(miri) { 48 << 10 } else { 1 << 20 };
    let size = match r.below(100) {
        0..=69 => 1 + r.below(256),
        70..=94 => 1 + r.below(32 << 10),
        _ => 1 + r.below(large),
    } as usize;
    let align = 1usize << r.below(13);
    Layout::from_size_align(size, align).unwrap()
}

fn run_random(seed: u64, ops: usize) {
    let heap = heap(if cfg!(miri) { 16 } else { 512 });
    let mut m = Model::new(heap);
    let mut r = Rng(seed | 1);
    for _ in 0..ops {
        match r.below(10) {
            0..=3 => {
                let l = random_layout(&mut r);
                m.alloc(l, false)
            }
            4 => {
                let l = random_layout(&mut r);
                m.alloc(l, true)
            }
            5..=8 => m.free_nth(r.next() as usize),
            _ => {
                let l = random_layout(&mut r);
                m.realloc_nth(r.next() as usize, l.size())
            }
        }
        // Keep the live set bounded so the run stays within the fake memory.
        if m.live.len() > 2000 {
            m.free_nth(r.next() as usize);
        }
        if !cfg!(miri) && r.below(500) == 0 {
            heap.audit_pages();
        }
    }
    heap.audit_pages();
    m.free_all();
    heap.audit_pages();
    assert_eq!(
        heap.stats().objects(),
        0,
        "objects left after freeing everything"
    );
}

#[test]
fn random_operations_100k() {
    run_random(0x5eed, scaled(100_000));
}

proptest! {
    #![proptest_config(crate::testing::proptest_config(if cfg!(miri) { 1 } else { 8 }))]

    /// Random seeds, each a full model run.
    #[test]
    #[cfg_attr(miri, ignore = "one more seed of the model run random_operations_100k makes under Miri")]
    fn random_operations_by_seed(seed in any::<u64>()) {
        run_random(seed, scaled(20_000));
    }

    /// Short explicit sequences, which proptest can shrink to a minimal failing case.
    #[test]
    fn explicit_sequences(ops in prop::collection::vec((0u8..4, 1usize..70_000, 0u32..13, any::<usize>()), 1..scaled(200) + 5)) {
        let heap = heap(if cfg!(miri) { 16 } else { 256 });
        let mut m = Model::new(heap);
        for (op, size, align_log, pick) in ops {
            let layout = Layout::from_size_align(size, 1 << align_log).unwrap();
            match op {
                0 => m.alloc(layout, false),
                1 => m.alloc(layout, true),
                2 => m.free_nth(pick),
                _ => m.realloc_nth(pick, size),
            }
        }
        heap.audit_pages();
        m.free_all();
        heap.audit_pages();
        prop_assert_eq!(heap.stats().objects(), 0);
    }
}

#[test]
fn zero_and_absurd_sizes() {
    let heap = heap(16);
    // SAFETY: test code: the pointer is a live block of this heap with this layout (or a fresh one).
    unsafe {
        // Size 0 (which `GlobalAlloc` callers must not ask for) gets a unique 8-byte object, freed as one.
        let z = Layout::from_size_align(0, 1).unwrap();
        let (a, b) = (heap.alloc(z), heap.alloc_zeroed(z));
        assert!(!a.is_null() && !b.is_null() && a != b);
        heap.dealloc(a, z);
        heap.dealloc(b, z);
        for size in [isize::MAX as usize - 7, 1 << 62, 1 << 40] {
            let l = Layout::from_size_align(size, 8).unwrap();
            assert!(heap.alloc(l).is_null(), "size {size:#x} did not fail");
            assert!(heap.alloc_zeroed(l).is_null());
        }
        // More than the fake memory holds: null, and the heap still works afterwards.
        let l = Layout::from_size_align(128 << 20, 8).unwrap();
        assert!(heap.alloc(l).is_null());
        let p = heap.alloc(Layout::new::<u64>());
        assert!(!p.is_null());
        heap.dealloc(p, Layout::new::<u64>());
    }
}

#[test]
fn high_alignments() {
    let heap = heap(16);
    for (size, align) in [
        (1, 4096),
        (4096, 4096),
        (8192, 8192),
        (10 << 10, 2 << 20),
        (1, 16),
        (48, 32),
    ] {
        let l = Layout::from_size_align(size, align).unwrap();
        // SAFETY: test code: the pointer is a live block of this heap with this layout (or a fresh one).
        let p = unsafe { heap.alloc(l) };
        assert!(!p.is_null());
        assert_eq!(p as usize % align, 0, "Layout({size}, {align}) gave {p:?}");
        // SAFETY: test code: the pointer is a live block of this heap with this layout (or a fresh one).
        unsafe { heap.dealloc(p, l) };
    }
}

#[test]
fn large_realloc_grows_and_shrinks_in_place() {
    let heap = heap(16);
    let l = Layout::from_size_align(64 << 10, 8).unwrap();
    // SAFETY: test code: the pointer is a live block of this heap with this layout (or a fresh one).
    unsafe {
        let p = heap.alloc(l);
        let q = heap.realloc(p, l, 256 << 10);
        assert_eq!(
            p, q,
            "the pages after a fresh large object are free: growth is in place"
        );
        let l2 = Layout::from_size_align(256 << 10, 8).unwrap();
        let r = heap.realloc(q, l2, 40 << 10);
        assert_eq!(q, r, "shrinking is in place");
        heap.dealloc(r, Layout::from_size_align(40 << 10, 8).unwrap());
    }
}

#[test]
fn small_realloc_in_same_class_keeps_the_pointer() {
    let heap = heap(16);
    let l = Layout::from_size_align(20, 8).unwrap();
    // SAFETY: test code: the pointer is a live block of this heap with this layout (or a fresh one).
    unsafe {
        let p = heap.alloc(l);
        assert_eq!(heap.realloc(p, l, 24), p);
        let q = heap.realloc(p, Layout::from_size_align(24, 8).unwrap(), 100);
        assert_ne!(q, p, "24 -> 100 bytes changes class");
        heap.dealloc(q, Layout::from_size_align(100, 8).unwrap());
    }
}

#[test]
fn out_of_memory_is_null_then_recovers() {
    // Under Miri, where mapping a page costs a good part of a second, the heap gets 160 free frames.
    let (at_least, big) = if cfg!(miri) {
        (20, 256 << 10)
    } else {
        (1000, 8 << 20)
    };
    let heap = heap(16);
    if cfg!(miri) {
        // The hoarded frames stay out of the heap's reach for good.
        // SAFETY: takes free frames only.
        unsafe { heap.with_address_space(|s| crate::testing::hoard_all_but(&mut s.frames, 160)) }
            .expect("heap initialized");
    }
    let l = Layout::from_size_align(4096, 8).unwrap();
    let mut got = Vec::new();
    loop {
        // SAFETY: test code: the pointer is a live block of this heap with this layout (or a fresh one).
        let p = unsafe { heap.alloc(l) };
        if p.is_null() {
            break;
        }
        got.push(p);
        assert!(
            got.len() < 100_000,
            "16 MiB cannot hold this many 4 KiB blocks"
        );
    }
    assert!(got.len() > at_least, "only {} blocks before OOM", got.len());
    for p in got.drain(..) {
        // SAFETY: test code: the pointer is a live block of this heap with this layout (or a fresh one).
        unsafe { heap.dealloc(p, l) };
    }
    let big = Layout::from_size_align(big, 8).unwrap();
    // SAFETY: test code: the pointer is a live block of this heap with this layout (or a fresh one).
    let p = unsafe { heap.alloc(big) };
    assert!(
        !p.is_null(),
        "memory freed by small objects is usable for a large one after OOM"
    );
    // SAFETY: test code: the pointer is a live block of this heap with this layout (or a fresh one).
    unsafe { heap.dealloc(p, big) };
}

#[test]
fn frames_return_to_the_baseline() {
    let heap = heap(if cfg!(miri) { 16 } else { 256 });
    let workload = |seed| {
        let mut m = Model::new(heap);
        let mut r = Rng(seed);
        for _ in 0..scaled(5000) {
            let l = random_layout(&mut r);
            m.alloc(l, false);
            if r.below(3) == 0 {
                m.free_nth(r.next() as usize);
            }
        }
        m.free_all();
        heap.trim();
    };
    workload(1);
    let baseline = heap.stats();
    workload(2);
    let after = heap.stats();
    assert_eq!(after.objects(), 0);
    assert_eq!(
        after.pages.in_use, 0,
        "pages still in spans after trim:\n{after}"
    );
    assert_eq!(
        after.pages.dirty_free, 0,
        "free pages still mapped after trim"
    );
    assert!(
        after.pages.released_total > baseline.pages.released_total,
        "nothing was scavenged"
    );
    // Metadata (span structs, caches) is kept at its peak, as Go keeps it, and so are the tables that
    // cover the pages the heap tracks (span map, page allocator: the heap grows by 4 MiB chunks, so a
    // second run may track more); every other frame must be back.
    let non_meta = |s: &crate::Stats| {
        s.frames_held.0 as i64
            - ((s.pages.meta_mapped + s.pages.meta_tables) / crate::FRAME_SIZE) as i64
    };
    assert_eq!(
        non_meta(&after),
        non_meta(&baseline),
        "frames held besides metadata differ between runs:\nbefore:\n{baseline}\nafter:\n{after}"
    );
}

#[test]
fn stats_count_objects_per_class() {
    let heap = heap(16);
    let l = Layout::from_size_align(100, 8).unwrap();
    // More than a cache holds (256 of this class) and than a span holds (73), even under Miri.
    let n = if cfg!(miri) { 300 } else { 1000 };
    // SAFETY: test code: the pointer is a live block of this heap with this layout (or a fresh one).
    let ps: Vec<_> = (0..n).map(|_| unsafe { heap.alloc(l) }).collect();
    let s = heap.stats();
    let class = crate::sizeclass::SizeClass::for_size(100).unwrap();
    assert_eq!(s.classes[class.index()].objects, n);
    assert_eq!(s.classes[class.index()].bytes, n * class.size());
    for p in ps {
        // SAFETY: test code: the pointer is a live block of this heap with this layout (or a fresh one).
        unsafe { heap.dealloc(p, l) };
    }
    assert_eq!(heap.stats().objects(), 0);
}

/// A class's spans that empty out are kept for its next refills up to the budget (central.rs), reused
/// before any new span is taken, and given back by `trim`.
#[test]
#[cfg_attr(
    miri,
    ignore = "maps over 1 MiB, minutes under Miri; every other heap test runs the list moves"
)]
fn empty_spans_are_kept_up_to_the_budget_reused_and_trimmed() {
    let heap = heap(64);
    let l = Layout::from_size_align(4096, 8).unwrap();
    let class = crate::sizeclass::SizeClass::for_size(4096).unwrap();
    let span_bytes = class.pages().bytes();
    // SAFETY: test code: a fresh block of this layout, freed at once (it makes this CPU's cache, which
    // sets the budget).
    unsafe { heap.dealloc(heap.alloc(l), l) };
    let budget = heap.empty_span_budget();
    assert!(
        (1..=crate::cache::MAX_CACHE_SHIFT).any(|s| budget == super::EMPTY_SPAN_BUDGET >> s),
        "a heap of under 64 MiB keeps less than the full budget, as its caches hold less: {budget}"
    );
    let keep = budget / span_bytes;
    assert!(keep > 1, "the test needs a budget of several spans");
    let cap = crate::cache::stack_cap(class.index());
    // Far more spans than the budget keeps.
    let n = (4 * keep + 8) * class.objects_per_span();
    // SAFETY: test code: each pointer is a fresh block of this layout, freed once below.
    let ps: Vec<_> = (0..n).map(|_| unsafe { heap.alloc(l) }).collect();
    assert!(ps.iter().all(|p| !p.is_null()));
    let spans_full = heap.stats().classes[class.index()].spans;
    assert!(spans_full >= 4 * keep, "{spans_full} spans for {n} objects");
    for &p in &ps {
        // SAFETY: live blocks of this heap with this layout.
        unsafe { heap.dealloc(p, l) };
    }
    let after_free = heap.stats();
    let spans = after_free.classes[class.index()].spans;
    // The kept empty spans, plus at most one span per object this CPU's cache still holds.
    assert!(
        spans >= keep && spans <= keep + cap,
        "{spans} spans left of {spans_full}: the budget keeps {keep} empty ones (cache: {cap})"
    );
    // Reallocating what the kept spans hold takes no new span from the page heap.
    let again = keep * class.objects_per_span();
    // SAFETY: test code: fresh blocks of this layout, freed below.
    let qs: Vec<_> = (0..again).map(|_| unsafe { heap.alloc(l) }).collect();
    assert!(qs.iter().all(|p| !p.is_null()));
    let reused = heap.stats();
    assert_eq!(
        reused.pages.in_use, after_free.pages.in_use,
        "the kept spans serve {again} objects without new pages"
    );
    for &q in &qs {
        // SAFETY: live blocks of this heap with this layout.
        unsafe { heap.dealloc(q, l) };
    }
    heap.trim();
    let trimmed = heap.stats();
    assert_eq!(
        trimmed.classes[class.index()].spans,
        0,
        "trim gives every kept span back"
    );
    assert_eq!(trimmed.pages.in_use, 0);
}

#[test]
fn cross_thread_frees() {
    use std::sync::mpsc;
    let heap = heap(if cfg!(miri) { 16 } else { 512 });
    let (tx, rx) = mpsc::sync_channel::<(usize, usize, u64)>(1024);
    let producer = std::thread::spawn(move || {
        HostPlatform::set_cpu_index(1);
        let mut r = Rng(7);
        // Under Miri a quarter of `scaled`: each object also crosses threads through the channel.
        let objects = if cfg!(miri) { 50 } else { 200_000 };
        for id in 0..objects {
            let size = 1 + r.below(2048) as usize;
            let l = Layout::from_size_align(size, 8).unwrap();
            // SAFETY: test code: the pointer is a live block of this heap with this layout (or a fresh one).
            let p = unsafe { heap.alloc(l) };
            assert!(!p.is_null());
            // SAFETY: test code: the pointer is a live block of this heap with this layout (or a fresh one).
            unsafe { core::ptr::write_bytes(p, id as u8, size) };
            tx.send((p as usize, size, id)).unwrap();
        }
    });
    let consumer = std::thread::spawn(move || {
        HostPlatform::set_cpu_index(2);
        let mut r = Rng(9);
        let mut mine = Vec::new();
        while let Ok((p, size, id)) = rx.recv() {
            // SAFETY: test code: the pointer is a live block of this heap with this layout (or a fresh one).
            let s = unsafe { core::slice::from_raw_parts(p as *const u8, size) };
            assert!(filled_with(s, id as u8), "block {p:#x} corrupted");
            // SAFETY: test code: the pointer is a live block of this heap with this layout (or a fresh one).
            unsafe { heap.dealloc(p as *mut u8, Layout::from_size_align(size, 8).unwrap()) };
            // The consumer also allocates, reusing what the producer's objects left in its cache.
            let l = Layout::from_size_align(1 + r.below(512) as usize, 8).unwrap();
            // SAFETY: test code: the pointer is a live block of this heap with this layout (or a fresh one).
            let q = unsafe { heap.alloc(l) };
            // SAFETY: test code: the pointer is a live block of this heap with this layout (or a fresh one).
            unsafe { core::ptr::write_bytes(q, 0xAB, l.size()) };
            mine.push((q, l));
            if mine.len() > 100 {
                let (q, l) = mine.swap_remove(0);
                // SAFETY: test code: the pointer is a live block of this heap with this layout (or a fresh one).
                let s = unsafe { core::slice::from_raw_parts(q, l.size()) };
                assert!(filled_with(s, 0xAB));
                // SAFETY: test code: the pointer is a live block of this heap with this layout (or a fresh one).
                unsafe { heap.dealloc(q, l) };
            }
        }
        for (q, l) in mine {
            // SAFETY: test code: the pointer is a live block of this heap with this layout (or a fresh one).
            unsafe { heap.dealloc(q, l) };
        }
    });
    producer.join().unwrap();
    consumer.join().unwrap();
    assert_eq!(heap.stats().objects(), 0);
}

#[test]
fn threads_allocate_and_free_concurrently() {
    let heap = heap(if cfg!(miri) { 16 } else { 512 });
    // Under Miri two threads: each CPU's first allocation maps its cache, dozens of pages.
    let threads: Vec<_> = (0..if cfg!(miri) { 2 } else { 4 })
        .map(|t| {
            std::thread::spawn(move || {
                HostPlatform::set_cpu_index(10 + t);
                let mut r = Rng(100 + t as u64);
                let mut live: Vec<(*mut u8, Layout, u8)> = Vec::new();
                for i in 0..scaled(50_000) as u32 {
                    if live.len() < 500 && r.below(2) == 0 {
                        let l = Layout::from_size_align(1 + r.below(4096) as usize, 8).unwrap();
                        // SAFETY: test code: the pointer is a live block of this heap with this layout (or a fresh one).
                        let p = unsafe { heap.alloc(l) };
                        assert!(!p.is_null());
                        // SAFETY: test code: the pointer is a live block of this heap with this layout (or a fresh one).
                        unsafe { core::ptr::write_bytes(p, i as u8, l.size()) };
                        live.push((p, l, i as u8));
                    } else if !live.is_empty() {
                        let (p, l, tag) = live.swap_remove(r.below(live.len() as u64) as usize);
                        // SAFETY: test code: the pointer is a live block of this heap with this layout (or a fresh one).
                        let s = unsafe { core::slice::from_raw_parts(p, l.size()) };
                        assert!(filled_with(s, tag), "block {p:?} corrupted");
                        // SAFETY: test code: the pointer is a live block of this heap with this layout (or a fresh one).
                        unsafe { heap.dealloc(p, l) };
                    }
                }
                for (p, l, _) in live {
                    // SAFETY: test code: the pointer is a live block of this heap with this layout (or a fresh one).
                    unsafe { heap.dealloc(p, l) };
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    assert_eq!(heap.stats().objects(), 0);
}

#[test]
#[should_panic(expected = "not a live heap object")]
fn foreign_pointer_panics() {
    let heap = heap(16);
    let mut x = 0u64;
    // SAFETY: test code: the pointer is a live block of this heap with this layout (or a fresh one).
    unsafe { heap.dealloc(&mut x as *mut u64 as *mut u8, Layout::new::<u64>()) };
}

#[test]
#[should_panic(expected = "size class differs")]
fn wrong_layout_panics() {
    let heap = heap(16);
    // SAFETY: test code: the pointer is a live block of this heap with this layout (or a fresh one).
    unsafe {
        let p = heap.alloc(Layout::from_size_align(16, 8).unwrap());
        heap.dealloc(p, Layout::from_size_align(1024, 8).unwrap());
    }
}

#[test]
#[should_panic(expected = "double free")]
fn small_double_free_panics_when_returned_to_its_span() {
    let heap = heap(16);
    let l = Layout::from_size_align(32, 8).unwrap();
    // SAFETY: test code: the pointer is a live block of this heap with this layout (or a fresh one).
    unsafe {
        let p = heap.alloc(l);
        heap.dealloc(p, l);
        heap.dealloc(p, l);
    }
    heap.trim();
}

#[test]
#[should_panic(expected = "not a live heap object")]
fn large_double_free_panics_at_once() {
    let heap = heap(16);
    let l = Layout::from_size_align(100 << 10, 8).unwrap();
    // SAFETY: test code: the pointer is a live block of this heap with this layout (or a fresh one).
    unsafe {
        let p = heap.alloc(l);
        heap.dealloc(p, l);
        heap.dealloc(p, l);
    }
}

#[test]
#[should_panic(expected = "interior pointer")]
fn interior_pointer_of_large_object_panics() {
    let heap = heap(16);
    let l = Layout::from_size_align(100 << 10, 8).unwrap();
    // SAFETY: test code: the pointer is a live block of this heap with this layout (or a fresh one).
    unsafe {
        let p = heap.alloc(l);
        heap.dealloc(p.add(8192), l);
    }
}

/// A heap with the full checks on (what the `debug-checks` feature makes the default).
fn checked_heap() -> &'static Heap<HostPlatform, true> {
    let (window, max) = if cfg!(miri) {
        (256 << 20, 64 << 20)
    } else {
        (1 << 30, 512 << 20)
    };
    let m = HostMachine::new(16 << 20, window);
    let heap: &'static Heap<HostPlatform, true> = crate::host::leak(Heap::new(m.platform));
    heap.init(m.space, m.window, max).expect("heap init");
    heap
}

#[test]
#[should_panic(expected = "double free")]
fn full_checks_catch_a_double_free_at_once() {
    let heap = checked_heap();
    let l = Layout::from_size_align(32, 8).unwrap();
    // SAFETY: test code: the pointer is a live block of this heap with this layout (or a fresh one).
    unsafe {
        let p = heap.alloc(l);
        heap.dealloc(p, l);
        heap.dealloc(p, l);
    }
}

#[test]
#[should_panic(expected = "interior pointer")]
fn full_checks_catch_an_interior_pointer_at_once() {
    let heap = checked_heap();
    let l = Layout::from_size_align(64, 8).unwrap();
    // SAFETY: test code: the pointer is a live block of this heap with this layout (or a fresh one).
    unsafe {
        let p = heap.alloc(l);
        heap.dealloc(p.add(8), l);
    }
}

#[test]
fn full_checks_accept_correct_use() {
    let heap = checked_heap();
    let mut r = Rng(3);
    let mut live = Vec::new();
    for _ in 0..scaled(20_000) {
        if live.len() < 300 && r.below(2) == 0 {
            let l = Layout::from_size_align(1 + r.below(4000) as usize, 8).unwrap();
            // SAFETY: test code: the pointer is a live block of this heap with this layout (or a fresh one).
            let p = unsafe { heap.alloc(l) };
            assert!(!p.is_null());
            live.push((p, l));
        } else if !live.is_empty() {
            let (p, l) = live.swap_remove(r.below(live.len() as u64) as usize);
            // SAFETY: test code: the pointer is a live block of this heap with this layout (or a fresh one).
            unsafe { heap.dealloc(p, l) };
        }
    }
    for (p, l) in live {
        // SAFETY: test code: the pointer is a live block of this heap with this layout (or a fresh one).
        unsafe { heap.dealloc(p, l) };
    }
    heap.trim();
    assert_eq!(heap.stats().objects(), 0);
}

/// The scavenger's hysteresis (pageheap.rs, "Scavenging"): a workload whose use swings below its peak and
/// back finds its pages still mapped (nothing released, so nothing remapped); once it settles far below
/// the peak it keeps them while frames are plentiful, and its allocation traffic makes the heap return
/// the pages it no longer uses once frames are short.
#[test]
#[cfg_attr(miri, ignore = "maps 64 MiB several times over")]
fn swings_keep_their_pages_and_a_lower_level_returns_them() {
    let heap = heap(256);
    let big = Layout::from_size_align(256 << 10, 8).unwrap();
    let alloc = || {
        // SAFETY: test code: a non-zero layout.
        let p = unsafe { heap.alloc(big) };
        assert!(!p.is_null());
        // SAFETY: a fresh block of 256 KiB.
        unsafe { p.write_bytes(0x5a, big.size()) };
        p
    };
    // SAFETY: every `p` passed to `free` comes from `alloc` above (layout `big`), freed once.
    let free = |p: *mut u8| unsafe { heap.dealloc(p, big) };
    let churn = |turns: usize| {
        let layout = Layout::from_size_align(1 << 20, 8).unwrap();
        for _ in 0..turns * 64 {
            // SAFETY: test code: a non-zero layout; freed at once with it.
            unsafe {
                let p = heap.alloc(layout);
                assert!(!p.is_null());
                heap.dealloc(p, layout);
            }
        }
    };
    let mapped = |s: &crate::Stats| (s.pages.in_use + s.pages.dirty_free) * crate::PAGE_SIZE;
    // 64 MiB live, then ten swings down to 16 MiB and back.
    let mut live: Vec<*mut u8> = (0..256).map(|_| alloc()).collect();
    let at_peak = heap.stats();
    for _ in 0..10 {
        for p in live.drain(64..) {
            free(p);
        }
        while live.len() < 256 {
            live.push(alloc());
        }
    }
    let swung = heap.stats();
    assert_eq!(
        swung.pages.released_total, at_peak.pages.released_total,
        "swings below the peak released pages (remapped on the way back up):\n{swung}"
    );
    // Down to 4 MiB for good; 1 MiB blocks come and go, 40 times the old peak's worth. With three
    // quarters of the 256 MiB free, nobody is short of frames: the heap keeps its pages.
    for p in live.drain(16..) {
        free(p);
    }
    churn(40);
    let plentiful = heap.stats();
    assert_eq!(
        plentiful.pages.released_total, swung.pages.released_total,
        "pages released while frames were plentiful:\n{plentiful}"
    );
    // Frames short: the same traffic makes the heap return what it no longer uses.
    let held = squeeze_frames(heap);
    churn(40);
    let settled = heap.stats();
    assert!(
        settled.pages.released_total > plentiful.pages.released_total,
        "nothing released after the heap settled at a sixteenth of its peak with frames short"
    );
    assert!(
        mapped(&settled) < mapped(&at_peak) / 4,
        "{} MiB still mapped after settling at {} MiB in use (peak {} MiB mapped):\n{settled}",
        mapped(&settled) >> 20,
        (settled.pages.in_use * crate::PAGE_SIZE) >> 20,
        mapped(&at_peak) >> 20
    );
    give_back_frames(heap, held);
    for p in live {
        free(p);
    }
}

/// `allocate_frames` counts the free pages the heap keeps mapped as free frames: with no frame left in
/// the allocator, it unmaps those pages and takes a frame of theirs; with none even so, `None`.
#[test]
#[cfg_attr(miri, ignore = "maps 64 MiB")]
fn allocate_frames_takes_back_the_free_pages_the_heap_keeps() {
    use crate::addr::FrameCount;
    let heap = heap(256);
    let layout = Layout::from_size_align(64 << 20, 8).unwrap();
    let use_heap = || {
        // SAFETY: test code: a non-zero layout; the block is freed with it.
        unsafe {
            let p = heap.alloc(layout);
            assert!(!p.is_null());
            p.write_bytes(0x5a, layout.size());
            heap.dealloc(p, layout);
        }
    };
    use_heap();
    let kept = heap.stats();
    assert!(
        kept.pages.dirty_free * crate::PAGE_SIZE >= 64 << 20,
        "the heap should keep the 64 MiB mapped while frames are plentiful:\n{kept}"
    );
    // Every frame the allocator has free, one at a time (never through the heap's retry).
    let drain = || {
        let mut taken = Vec::new();
        // SAFETY: takes free frames only: no mapping changes and nothing the heap uses is freed.
        while let Some(f) = unsafe { heap.with_address_space(|s| s.frames.allocate()) }.flatten() {
            taken.push(f);
        }
        taken
    };
    let mut taken = drain();
    let got = heap
        .allocate_frames(FrameCount(16), FrameCount(1))
        .expect("frames from the free pages the heap keeps");
    let after = heap.stats();
    assert_eq!(after.pages.dirty_free, 0, "{after}");
    assert!(
        after.pages.released_total >= kept.pages.released_total + (64 << 20) as u64 / 8192,
        "the heap should have unmapped its free pages to find the frames:\n{after}"
    );
    // Nothing left to take back: the heap says so.
    taken.extend(drain());
    assert!(heap.allocate_frames(FrameCount(1), FrameCount(1)).is_none());
    // SAFETY: frames this test took from the heap's allocator, each given back once, unused.
    unsafe {
        heap.with_address_space(|s| {
            s.frames.free_contiguous(got, FrameCount(16));
            for f in taken {
                s.frames.free(f);
            }
        })
    };
    use_heap();
}

/// What a kernel that takes frames straight from the frame allocator (`with_address_space`: page
/// tables, stacks, `map_kernel_page`) can count on right after the heap's use fell from a peak (no
/// traffic since to make the peak decay): the heap keeps its free pages mapped only as long as a quarter
/// of the frames stay free (pageheap.rs, "Scavenging"), so it finds that quarter, less 4 MiB the heap
/// keeps; after `trim` it finds every frame the heap does not use.
#[test]
#[cfg_attr(miri, ignore = "maps 220 MiB")]
fn direct_frame_takers_find_a_quarter_and_everything_after_trim() {
    let heap = heap(256);
    let mib = Layout::from_size_align(1 << 20, 8).unwrap();
    // SAFETY: test code: non-zero layouts, each block freed once with its layout.
    unsafe {
        let live: Vec<*mut u8> = (0..220).map(|_| heap.alloc(mib)).collect();
        assert!(live.iter().all(|p| !p.is_null()));
        for p in live {
            heap.dealloc(p, mib);
        }
    }
    // Frames taken one at a time straight from the allocator, up to `want`, all given back.
    let take = |want: usize| {
        // SAFETY: takes free frames only and gives them all back.
        unsafe {
            heap.with_address_space(|s| {
                let managed = s.frames.managed().0 as usize;
                let mut taken = Vec::new();
                while taken.len() < want {
                    match s.frames.allocate() {
                        Some(f) => taken.push(f),
                        None => break,
                    }
                }
                let n = taken.len();
                for f in taken {
                    s.frames.free(f);
                }
                (n, managed)
            })
        }
        .unwrap()
    };
    let (got, managed) = take(usize::MAX);
    // Less the 4 MiB of free pages the heap keeps for its own churn (no cache holds 1 MiB objects).
    assert!(
        got >= managed / 4 - (4 << 20) / 4096,
        "a direct taker found {got} frames of {managed}:\n{}",
        heap.stats()
    );
    heap.trim();
    let want = (200 << 20) / 4096;
    assert_eq!(take(want).0, want, "after trim:\n{}", heap.stats());
}
