//! Workloads whose point is threads: glibc-simple/-thread, larson-like cross-thread frees, xmalloc-like
//! remote frees and cache-scratch (false sharing). Run at 1, 2 and 4 threads.
//!
//! Invariants: blocks handed between threads travel through atomics or channels set up before the timed
//! loop; after the loop every thread meets the others (`Phase::quiesce`) before shared blocks are freed,
//! so no block is freed twice or while another thread may still take it.

use core::alloc::Layout;
use core::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, Mutex};

use super::{mops, timed_threads, Config, Phase, Ran, Sample};
use crate::contestants::Contestant;
use crate::rng::Rng;
use crate::timing::thread_cpu_time;

/// glibc's bench-malloc-simple (and -thread with several threads): batches of 100 blocks of one size
/// (16, 256, 1024, 4096 B in turn) allocated, written, then freed in allocation order. Mops/s of pairs.
pub fn glibc_simple<A: Contestant>(a: &A, cfg: &Config, threads: usize) -> Vec<Sample> {
    const BATCH: usize = 100;
    const SIZES: [usize; 4] = [16, 256, 1024, 4096];
    let runs = timed_threads(a, threads, cfg, |a: &A, _, phase: &Phase| {
        let mut ptrs = [core::ptr::null_mut::<u8>(); BATCH];
        let t = phase.begin();
        let mut ops = 0;
        let mut round = 0;
        while phase.running() {
            let layout = Layout::from_size_align(SIZES[round % SIZES.len()], 8).unwrap();
            round += 1;
            for p in ptrs.iter_mut() {
                // SAFETY: a valid non-zero layout.
                *p = unsafe { a.alloc(layout) };
                assert!(!p.is_null(), "glibc-simple: out of memory");
                // SAFETY: a fresh block of at least one byte.
                unsafe { p.write(1) };
            }
            for &p in &ptrs {
                // SAFETY: blocks just allocated with this layout.
                unsafe { a.dealloc(p, layout) };
            }
            ops += BATCH as u64;
        }
        Ran {
            ops,
            elapsed: t.elapsed(),
            extra: [0; 3],
        }
    });
    vec![Sample::new("glibc_simple", mops(&runs))]
}

/// Size of a larson block, stored in its first word so whoever frees it knows its layout.
fn block_layout(size: usize) -> Layout {
    Layout::from_size_align(size, 8).unwrap()
}

/// Allocates a larson block of `size` (>= 8) and records the size in it.
///
/// # Safety
/// `a` is a live allocator.
unsafe fn larson_alloc<A: Contestant>(a: &A, size: usize) -> usize {
    // SAFETY: a valid non-zero layout.
    let p = unsafe { a.alloc(block_layout(size)) };
    assert!(!p.is_null(), "larson: out of memory");
    // SAFETY: a fresh block of at least 8 bytes, aligned to 8.
    unsafe { p.cast::<usize>().write(size) };
    p as usize
}

/// Frees a block made by [`larson_alloc`].
///
/// # Safety
/// `p` is a live larson block of `a`, which nobody else will touch.
unsafe fn larson_free<A: Contestant>(a: &A, p: usize) {
    let p = p as *mut u8;
    // SAFETY: the block's first word holds its size (written by larson_alloc).
    let size = unsafe { p.cast::<usize>().read() };
    // SAFETY: the caller's contract.
    unsafe { a.dealloc(p, block_layout(size)) };
}

/// Larson-like server churn: 1024 slots per thread shared by all threads; each step picks a random slot
/// anywhere, puts a fresh block of U(8..1000) B there and frees the block it displaced, which another
/// thread allocated with probability (T-1)/T. Mops/s of (alloc + free).
pub fn larson<A: Contestant>(a: &A, cfg: &Config, threads: usize) -> Vec<Sample> {
    const SLOTS_PER_THREAD: usize = 1024;
    let slots: Vec<AtomicUsize> = (0..SLOTS_PER_THREAD * threads)
        .map(|_| AtomicUsize::new(0))
        .collect();
    let runs = timed_threads(a, threads, cfg, |a: &A, i, phase: &Phase| {
        let mut rng = Rng::new(cfg.seed ^ 0x1a250 ^ i as u64);
        let n = slots.len();
        for s in slots.iter().skip(i).step_by(threads) {
            // SAFETY: `a` is live.
            s.store(
                unsafe { larson_alloc(a, rng.range(8, 1000)) },
                Ordering::Release,
            );
        }
        let t = phase.begin();
        let mut ops = 0;
        while phase.running() {
            for _ in 0..64 {
                // SAFETY: `a` is live.
                let new = unsafe { larson_alloc(a, rng.range(8, 1000)) };
                let old = slots[rng.below(n)].swap(new, Ordering::AcqRel);
                // SAFETY: the swap made us the block's only owner (slots are filled before `begin`).
                unsafe { larson_free(a, old) };
            }
            ops += 64;
        }
        let elapsed = t.elapsed();
        phase.quiesce();
        for s in slots.iter().skip(i).step_by(threads) {
            // SAFETY: after quiesce nobody swaps; each thread empties its own stripe of slots.
            unsafe { larson_free(a, s.swap(0, Ordering::AcqRel)) };
        }
        Ran {
            ops,
            elapsed,
            extra: [0; 3],
        }
    });
    vec![Sample::new("larson", mops(&runs))]
}

/// xmalloc-like remote free: producers allocate 64 B blocks in batches of 256 and pass each batch to their
/// consumer, which frees them; ns per free, CPU time of the consumer around its `dealloc` loop only. With one
/// thread the same thread allocates a batch and frees it (a local free, the baseline); with T >= 2 threads,
/// T/2 producer-consumer pairs.
pub fn xmalloc<A: Contestant>(a: &A, cfg: &Config, threads: usize) -> Vec<Sample> {
    const BATCH: usize = 256;
    const QUEUE: usize = 64;
    type Batch = Vec<usize>;
    let layout = Layout::from_size_align(64, 8).unwrap();
    let pairs = (threads / 2).max(1);
    // Each pass's producer makes its pair's channel and leaves the receiving end here for the consumer.
    let clock_cost = clock_overhead_ns();
    let rendezvous: Vec<Mutex<Option<mpsc::Receiver<Batch>>>> =
        (0..pairs).map(|_| Mutex::new(None)).collect();
    let runs = timed_threads(a, threads, cfg, |a: &A, i, phase: &Phase| {
        let fill = |batch: &mut Batch| {
            for _ in 0..BATCH {
                // SAFETY: a valid non-zero layout.
                let p = unsafe { a.alloc(layout) };
                assert!(!p.is_null(), "xmalloc: out of memory");
                // SAFETY: a fresh block of 64 bytes.
                unsafe { p.write(1) };
                batch.push(p as usize);
            }
        };
        // CPU time (not the TSC) so that a preemption inside a batch is not charged to the frees.
        let free_timed = |batch: &mut Batch| -> u64 {
            let t0 = thread_cpu_time();
            for &p in batch.iter() {
                // SAFETY: blocks of this allocator with this layout, now owned by this thread.
                unsafe { a.dealloc(p as *mut u8, layout) };
            }
            let ns = (thread_cpu_time() - t0).as_nanos() as u64;
            batch.clear();
            ns.saturating_sub(clock_cost)
        };
        let (mut frees, mut free_ns) = (0u64, 0u64);
        if threads == 1 {
            let mut batch = Vec::with_capacity(BATCH);
            let t = phase.begin();
            while phase.running() {
                fill(&mut batch);
                free_ns += free_timed(&mut batch);
                frees += BATCH as u64;
            }
            return Ran {
                ops: frees,
                elapsed: t.elapsed(),
                extra: [free_ns, frees, 0],
            };
        }
        let slot = &rendezvous[i / 2];
        if i % 2 == 0 {
            // Producer: a fresh Vec per batch (from the process allocator, outside any timed region).
            let (tx, rx) = mpsc::sync_channel::<Batch>(QUEUE);
            *slot.lock().unwrap() = Some(rx);
            let t = phase.begin();
            let mut produced = 0;
            while phase.running() {
                let mut batch = Vec::with_capacity(BATCH);
                fill(&mut batch);
                produced += BATCH as u64;
                tx.send(batch).expect("xmalloc: consumer gone");
            }
            // Dropping `tx` tells the consumer to drain and stop.
            Ran {
                ops: produced,
                elapsed: t.elapsed(),
                extra: [0; 3],
            }
        } else {
            let rx = loop {
                if let Some(rx) = slot.lock().unwrap().take() {
                    break rx;
                }
                std::thread::yield_now();
            };
            let t = phase.begin();
            // Every batch sent is freed, also those still queued at the stop: nothing leaks.
            for mut batch in rx {
                free_ns += free_timed(&mut batch);
                frees += BATCH as u64;
            }
            Ran {
                ops: frees,
                elapsed: t.elapsed(),
                extra: [free_ns, frees, 0],
            }
        }
    });
    let (free_ns, frees) = runs
        .iter()
        .fold((0, 0), |(c, f), r| (c + r.extra[0], f + r.extra[1]));
    let mut v = vec![Sample::new("xmalloc", free_ns as f64 / frees as f64)];
    if threads > 1 {
        // The whole pipeline, producer and consumer both: wall-clock ns per object a pair moved (allocated
        // by its producer, freed by its consumer, the two at once) while the pass ran.
        let produced: u64 = runs.iter().step_by(2).map(|r| r.ops).sum();
        v.push(Sample::new(
            "xmalloc_pipeline",
            runs.wall.as_nanos() as f64 * pairs as f64 / produced as f64,
        ));
    }
    v
}

/// Cost of reading the thread CPU clock twice, in ns (median of many), subtracted from each timed batch.
fn clock_overhead_ns() -> u64 {
    let mut v: Vec<u64> = (0..1001)
        .map(|_| {
            let t0 = thread_cpu_time();
            (thread_cpu_time() - t0).as_nanos() as u64
        })
        .collect();
    v.sort_unstable();
    v[v.len() / 2]
}

/// Hoard's cache-scratch: thread 0 allocates one 8 B object per thread (neighbours in memory), each thread
/// frees its object and then repeatedly allocates an 8 B object, writes it 100 times and frees it. An
/// allocator that hands a thread back the object it just freed keeps the threads on one cache line.
/// Mops/s of iterations.
pub fn cache_scratch<A: Contestant>(a: &A, cfg: &Config, threads: usize) -> Vec<Sample> {
    const WRITES: usize = 100;
    let layout = Layout::from_size_align(8, 8).unwrap();
    let handed: Vec<AtomicUsize> = (0..threads).map(|_| AtomicUsize::new(0)).collect();
    let runs = timed_threads(a, threads, cfg, |a: &A, i, phase: &Phase| {
        if i == 0 {
            for h in &handed {
                // SAFETY: a valid non-zero layout.
                let p = unsafe { a.alloc(layout) };
                assert!(!p.is_null(), "cache-scratch: out of memory");
                h.store(p as usize, Ordering::Release);
            }
        }
        phase.quiesce();
        let mine = handed[i].swap(0, Ordering::AcqRel) as *mut u8;
        // SAFETY: thread 0 allocated it with this layout and handed it to this thread alone.
        unsafe { a.dealloc(mine, layout) };
        let t = phase.begin();
        let mut ops = 0;
        while phase.running() {
            for _ in 0..16 {
                // SAFETY: a valid non-zero layout.
                let p = unsafe { a.alloc(layout) };
                assert!(!p.is_null(), "cache-scratch: out of memory");
                for w in 0..WRITES {
                    // SAFETY: a fresh 8-byte block.
                    unsafe { p.write_volatile(w as u8) };
                }
                // SAFETY: the block just allocated.
                unsafe { a.dealloc(p, layout) };
            }
            ops += 16;
        }
        Ran {
            ops,
            elapsed: t.elapsed(),
            extra: [0; 3],
        }
    });
    vec![Sample::new("cache_scratch", mops(&runs))]
}
