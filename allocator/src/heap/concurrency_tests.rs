//! Concurrency stress across CPUs (threads on the host): remote frees racing flushes, more threads than
//! caches, neighbouring large objects growing in place, trim / scavenging / frame takers racing large
//! objects (whole contents checked, spare tails included), stats readers, and threads exiting and
//! giving their index to new ones. Every live object is checked whole when it is freed, no two live
//! objects overlap, and the page heap's audit holds once the threads are joined.

use core::alloc::{GlobalAlloc, Layout};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::vec::Vec;

use super::soundness_tests::plain_heap;
use crate::addr::{FrameCount, PAGE_SIZE};
use crate::host::{HostMachine, HostPlatform};
use crate::testing::Rng;
use crate::Heap;

fn word(seed: u64, i: usize) -> u64 {
    (seed ^ (i as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15)).rotate_left(17) | 1
}

/// Byte `i` of the pattern: the byte of its word that a little-endian word store puts there, so that
/// a prefix of a filled block checks whatever its length.
fn byte(seed: u64, i: usize) -> u8 {
    (word(seed, i / 8) >> (8 * (i % 8))) as u8
}

/// Fills all of `[p, p + len)`: whole words with the pattern, the odd bytes at the end with its low byte.
fn fill(p: *mut u8, len: usize, seed: u64) {
    let words = len / 8;
    for i in 0..words {
        // SAFETY: test code: a live block of `len` bytes.
        unsafe { p.add(i * 8).cast::<u64>().write_unaligned(word(seed, i)) };
    }
    for i in words * 8..len {
        // SAFETY: as above.
        unsafe { p.add(i).write(byte(seed, i)) };
    }
}

/// Checks `[p, p + len)` as `fill` left it.
fn check(p: *const u8, len: usize, seed: u64) {
    let words = len / 8;
    for i in 0..words {
        // SAFETY: test code: a live block of `len` bytes.
        let w = unsafe { p.add(i * 8).cast::<u64>().read_unaligned() };
        assert_eq!(w, word(seed, i), "{p:?}+{} of {len} changed", i * 8);
    }
    for i in words * 8..len {
        // SAFETY: as above.
        let b = unsafe { p.add(i).read() };
        assert_eq!(b, byte(seed, i), "{p:?}+{i} of {len} changed");
    }
}

/// Live blocks of every thread, by address: no two overlap.
struct Live(Mutex<BTreeMap<usize, usize>>);

impl Live {
    fn new() -> Self {
        Self(Mutex::new(BTreeMap::new()))
    }

    fn insert(&self, p: *mut u8, len: usize) {
        let a = p as usize;
        let mut m = self.0.lock().unwrap();
        if let Some((&prev, &plen)) = m.range(..=a).next_back() {
            assert!(
                prev + plen <= a,
                "{p:?} overlaps the live block at {prev:#x}+{plen}"
            );
        }
        if let Some((&next, _)) = m.range(a..).next() {
            assert!(
                a + len <= next,
                "{p:?}+{len} overlaps the live block at {next:#x}"
            );
        }
        m.insert(a, len.max(1));
    }

    fn remove(&self, p: *mut u8) {
        let removed = self.0.lock().unwrap().remove(&(p as usize));
        assert!(removed.is_some(), "{p:?} is not live");
    }
}

/// A block a thread holds or hands over: address, layout, pattern seed.
#[derive(Clone, Copy)]
struct Block(usize, Layout, u64);

// SAFETY: test code: a block is used by one thread at a time (handed over through a mutex).
unsafe impl Send for Block {}

fn alloc(
    heap: &impl GlobalAlloc,
    live: &Live,
    l: Layout,
    seed: u64,
    zeroed: bool,
) -> Option<Block> {
    // SAFETY: test code: a non-zero layout.
    let p = unsafe {
        if zeroed {
            heap.alloc_zeroed(l)
        } else {
            heap.alloc(l)
        }
    };
    if p.is_null() {
        return None;
    }
    assert_eq!(
        p as usize % l.align(),
        0,
        "{p:?} not aligned to {}",
        l.align()
    );
    if zeroed {
        // SAFETY: test code: a fresh block of `l.size()` bytes.
        let s = unsafe { core::slice::from_raw_parts(p, l.size()) };
        assert!(
            s.iter().all(|&b| b == 0),
            "alloc_zeroed({l:?}) at {p:?} not zero"
        );
    }
    live.insert(p, l.size());
    fill(p, l.size(), seed);
    Some(Block(p as usize, l, seed))
}

fn free(heap: &impl GlobalAlloc, live: &Live, b: Block) {
    let p = b.0 as *mut u8;
    check(p, b.1.size(), b.2);
    live.remove(p);
    // SAFETY: test code: a live block with its layout.
    unsafe { heap.dealloc(p, b.1) };
}

fn realloc(heap: &impl GlobalAlloc, live: &Live, b: Block, new: usize, seed: u64) -> Block {
    let p = b.0 as *mut u8;
    check(p, b.1.size(), b.2);
    live.remove(p);
    // SAFETY: test code: a live block with its layout; `new` is not 0.
    let q = unsafe { heap.realloc(p, b.1, new) };
    if q.is_null() {
        live.insert(p, b.1.size());
        return b;
    }
    check(q, b.1.size().min(new), b.2);
    live.insert(q, new);
    fill(q, new, seed);
    Block(
        q as usize,
        Layout::from_size_align(new, b.1.align()).unwrap(),
        seed,
    )
}

/// Every thread's objects freed: nothing counted live, the page heap consistent.
fn settle<const F: bool>(heap: &Heap<HostPlatform, F>) {
    heap.audit_pages();
    let s = heap.stats();
    assert_eq!(s.objects(), 0, "{s}");
    assert_eq!(s.large_objects, 0, "{s}");
}

/// A worker: small objects of a few classes (so that caches fill and flush), half of them handed to
/// other threads through `pool` and freed there (remote frees), some reallocated across classes.
fn small_worker(
    heap: &impl GlobalAlloc,
    live: &Live,
    pool: &Mutex<Vec<Block>>,
    t: u64,
    steps: u64,
) {
    let mut r = Rng(0x5eed_0000 ^ (t + 1).wrapping_mul(0x9E37_79B9));
    let mut mine: Vec<Block> = Vec::new();
    for step in 0..steps {
        let seed = t << 40 | step;
        match r.below(10) {
            0..=3 => {
                let size = [8, 16, 24, 48, 100, 256, 1000, 3000][r.below(8) as usize];
                let l = Layout::from_size_align(size, 8).unwrap();
                mine.push(alloc(heap, live, l, seed, r.below(8) == 0).expect("memory"));
            }
            4..=5 if !mine.is_empty() => {
                let b = mine.swap_remove(r.below(mine.len() as u64) as usize);
                pool.lock().unwrap().push(b);
            }
            6..=7 => {
                let got = pool.lock().unwrap().pop();
                if let Some(b) = got {
                    free(heap, live, b);
                }
            }
            8 if !mine.is_empty() => {
                let i = r.below(mine.len() as u64) as usize;
                let new = 1 + r.below(2048) as usize;
                mine[i] = realloc(heap, live, mine[i], new, seed);
            }
            _ if !mine.is_empty() => {
                let b = mine.swap_remove(r.below(mine.len() as u64) as usize);
                free(heap, live, b);
            }
            _ => {}
        }
        if mine.len() > 400 {
            let b = mine.swap_remove(0);
            free(heap, live, b);
        }
    }
    for b in mine {
        free(heap, live, b);
    }
}

fn drain_pool(heap: &impl GlobalAlloc, live: &Live, pool: &Mutex<Vec<Block>>) {
    let all: Vec<Block> = pool.lock().unwrap().drain(..).collect();
    for b in all {
        free(heap, live, b);
    }
}

/// Remote frees: objects allocated on one CPU are freed on others while every CPU's cache fills and
/// flushes its classes to the same central lists; a reader takes stats meanwhile.
#[test]
fn remote_frees_race_flushes_and_stats() {
    let heap = plain_heap(512, 4 << 30, 2 << 30);
    let live = Live::new();
    let pool = Mutex::new(Vec::new());
    let stop = AtomicBool::new(false);
    std::thread::scope(|s| {
        let workers: Vec<_> = (0..8)
            .map(|t| {
                let (live, pool) = (&live, &pool);
                s.spawn(move || small_worker(heap, live, pool, t, 150_000))
            })
            .collect();
        let stop = &stop;
        s.spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                let st = heap.stats();
                assert!(st.objects() < 1 << 20, "{st}");
            }
        });
        let joined: Vec<_> = workers.into_iter().map(|h| h.join()).collect();
        stop.store(true, Ordering::Relaxed);
        for j in joined {
            j.unwrap();
        }
    });
    drain_pool(heap, &live, &pool);
    settle(heap);
}

/// More threads than `MAX_CPUS`: some get `NO_CPU` and the locked path, their objects freed by cached
/// CPUs and the reverse.
#[test]
fn more_threads_than_caches_exchange_objects() {
    let heap = plain_heap(512, 4 << 30, 2 << 30);
    let live = Live::new();
    let pool = Mutex::new(Vec::new());
    std::thread::scope(|s| {
        for t in 0..80 {
            let (live, pool) = (&live, &pool);
            s.spawn(move || small_worker(heap, live, pool, t, 2_000));
        }
    });
    drain_pool(heap, &live, &pool);
    settle(heap);
}

/// Short-lived threads: each exits with objects handed over, and its index (so its cache and page
/// cache) goes to the next thread.
#[test]
fn exiting_threads_hand_their_cache_to_new_ones() {
    let heap = plain_heap(512, 4 << 30, 2 << 30);
    let live = Live::new();
    let pool = Mutex::new(Vec::new());
    for round in 0..150 {
        std::thread::scope(|s| {
            for t in 0..6 {
                let (live, pool) = (&live, &pool);
                s.spawn(move || small_worker(heap, live, pool, round * 16 + t, 1_500));
            }
        });
    }
    drain_pool(heap, &live, &pool);
    settle(heap);
}

/// Large objects (spare tails, the large cache's range, page-cache neighbours) allocated, zeroed,
/// reallocated in place and moved, freed here and on other threads, while another thread trims,
/// takes frames (which unmaps free pages, then spare tails) and reads stats, in a heap whose frames
/// run short. Contents are checked whole, last bytes included.
fn large_race(phys_mib: usize, workers: u64, steps: u64) {
    let heap = plain_heap(phys_mib, 4 << 30, 2 << 30);
    let live = Live::new();
    let pool: Mutex<Vec<Block>> = Mutex::new(Vec::new());
    let stop = AtomicBool::new(false);
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..workers)
            .map(|t| {
                let (live, pool) = (&live, &pool);
                s.spawn(move || {
                    let mut r = Rng(0xdead_beef ^ (t + 1).wrapping_mul(0x9E37_79B9));
                    let mut mine: Vec<Block> = Vec::new();
                    let size = |r: &mut Rng| -> usize {
                        match r.below(5) {
                            // Ends in the first frame of its last page: a spare tail.
                            0 => {
                                (4 + r.below(14) as usize) * PAGE_SIZE
                                    - 4096
                                    - r.below(100) as usize
                            }
                            1 => (4 + r.below(14) as usize) * PAGE_SIZE,
                            2 => 9000 + r.below(20_000) as usize,
                            3 => 1 + r.below(4000) as usize,
                            _ => 32 << 10 | r.below(200 << 10) as usize,
                        }
                    };
                    for step in 0..steps {
                        let seed = t << 40 | step;
                        match r.below(10) {
                            0..=2 => {
                                let l = Layout::from_size_align(size(&mut r), 1 << r.below(13))
                                    .unwrap();
                                if let Some(b) = alloc(heap, live, l, seed, r.below(3) == 0) {
                                    mine.push(b);
                                }
                            }
                            3..=5 if !mine.is_empty() => {
                                let i = r.below(mine.len() as u64) as usize;
                                let new = size(&mut r);
                                mine[i] = realloc(heap, live, mine[i], new, seed);
                            }
                            6 if !mine.is_empty() => {
                                let b = mine.swap_remove(r.below(mine.len() as u64) as usize);
                                pool.lock().unwrap().push(b);
                            }
                            7 => {
                                let got = pool.lock().unwrap().pop();
                                if let Some(b) = got {
                                    free(heap, live, b);
                                }
                            }
                            _ if !mine.is_empty() => {
                                let b = mine.swap_remove(r.below(mine.len() as u64) as usize);
                                free(heap, live, b);
                            }
                            _ => {}
                        }
                        if mine.len() > 24 {
                            let b = mine.swap_remove(0);
                            free(heap, live, b);
                        }
                    }
                    for b in mine {
                        free(heap, live, b);
                    }
                })
            })
            .collect();
        let stop = &stop;
        s.spawn(move || {
            let mut r = Rng(99);
            while !stop.load(Ordering::Relaxed) {
                match r.below(4) {
                    0 => heap.trim(),
                    1 => {
                        let st = heap.stats();
                        assert!(st.large_bytes >= st.large_objects * PAGE_SIZE, "{st}");
                    }
                    _ => {
                        let n = 1 + r.below(2048);
                        if let Some(f) = heap.allocate_frames(FrameCount(n), FrameCount(1)) {
                            std::thread::yield_now();
                            // SAFETY: frames just taken from this heap, given back once.
                            unsafe {
                                heap.with_address_space(|s| {
                                    s.frames.free_contiguous(f, FrameCount(n))
                                })
                            };
                        }
                    }
                }
            }
        });
        let joined: Vec<_> = handles.into_iter().map(|h| h.join()).collect();
        stop.store(true, Ordering::Relaxed);
        for j in joined {
            j.unwrap();
        }
    });
    drain_pool(heap, &live, &pool);
    settle(heap);
}

#[test]
fn large_objects_race_trim_and_frame_takers_tight() {
    large_race(24, 4, 20_000);
}

#[test]
fn large_objects_race_trim_and_frame_takers_plenty() {
    large_race(256, 6, 15_000);
}

/// Neighbouring large objects grow and shrink in place on different threads: each thread's objects
/// lie between the others' (allocated in turn), so a growth takes pages another thread just freed or
/// is refused pages another thread holds.
#[test]
fn neighbouring_large_objects_grow_in_place() {
    let heap = plain_heap(256, 4 << 30, 2 << 30);
    let live = Live::new();
    std::thread::scope(|s| {
        for t in 0..4u64 {
            let live = &live;
            s.spawn(move || {
                let mut r = Rng(0x1111 ^ (t + 1).wrapping_mul(0x9E37_79B9));
                let mut mine: Vec<Block> = Vec::new();
                for step in 0..30_000u64 {
                    let seed = t << 40 | step;
                    let pages = 3 + r.below(6) as usize;
                    let sz = pages * PAGE_SIZE - r.below(5000) as usize;
                    match r.below(6) {
                        0..=1 => {
                            let l = Layout::from_size_align(sz, 8).unwrap();
                            if let Some(b) = alloc(heap, live, l, seed, false) {
                                mine.push(b);
                            }
                        }
                        2..=4 if !mine.is_empty() => {
                            let i = r.below(mine.len() as u64) as usize;
                            mine[i] = realloc(heap, live, mine[i], sz, seed);
                        }
                        _ if !mine.is_empty() => {
                            let b = mine.swap_remove(r.below(mine.len() as u64) as usize);
                            free(heap, live, b);
                        }
                        _ => {}
                    }
                    if mine.len() > 16 {
                        let b = mine.swap_remove(0);
                        free(heap, live, b);
                    }
                }
                for b in mine {
                    free(heap, live, b);
                }
            });
        }
    });
    settle(heap);
}

/// Remote frees and flushes with the full checks on: every allocation and free also records the
/// object's "with a user" bit under the class lock (`Central::track`), which panics if the heap hands
/// out an object a user still holds.
#[test]
fn remote_frees_with_full_checks() {
    let m = HostMachine::new(256 << 20, 4 << 30);
    let heap: &'static Heap<HostPlatform, true> = crate::host::leak(Heap::new(m.platform));
    heap.init(m.space, m.window, 2 << 30).expect("heap init");
    let live = Live::new();
    let pool = Mutex::new(Vec::new());
    std::thread::scope(|s| {
        for t in 0..6 {
            let (live, pool) = (&live, &pool);
            s.spawn(move || small_worker(heap, live, pool, t, 30_000));
        }
    });
    drain_pool(heap, &live, &pool);
    settle(heap);
}
