//! Workloads of one thread each (random actions also runs in several, each thread on its own blocks):
//! same-size pairs, talc's random actions, per-operation latency, high alignment.
//!
//! Invariants: each body frees every block it allocated before returning; the bookkeeping vectors are
//! allocated (from the process allocator) before the timed loop and never grow inside it.

use core::alloc::Layout;
use std::hint::black_box;

use super::{mops, ns_per_op, timed_threads, Config, Phase, Ran, Sample};
use crate::contestants::Contestant;
use crate::rng::{talc_align, talc_size, Rng};
use crate::timing::rdtsc;

/// Operations between two looks at the stop flag.
const CHUNK: u64 = 64;

/// Allocates, writes one byte, frees: the cost of the fast path.
pub fn pair<A: Contestant>(a: &A, cfg: &Config, size: usize) -> Vec<Sample> {
    let layout = Layout::from_size_align(size, 8).expect("pair layout");
    let runs = timed_threads(a, 1, cfg, |a: &A, _, phase: &Phase| {
        let t = phase.begin();
        let mut ops = 0;
        while phase.running() {
            for _ in 0..CHUNK {
                // SAFETY: a valid non-zero layout; the block is freed with the same layout right after.
                unsafe {
                    let p = a.alloc(layout);
                    assert!(!p.is_null(), "pair: out of memory at {size} B");
                    p.write_volatile(1);
                    a.dealloc(black_box(p), layout);
                }
            }
            ops += CHUNK;
        }
        Ran {
            ops,
            elapsed: t.elapsed(),
            extra: [0; 3],
        }
    });
    vec![Sample::new(format!("pair_{size}"), ns_per_op(&runs))]
}

/// A live block.
#[derive(Clone, Copy)]
struct Block {
    ptr: *mut u8,
    layout: Layout,
}

/// talc's random actions: with realloc, 1/7 reallocate a random block to U(1..3*max), 3/7 free a random
/// block, 3/7 allocate (always allocate while fewer than 300 blocks live); without realloc, 1/2 and 1/2.
/// Sizes U(4..U(16..max)), alignments 8 (75%), 16, 32, ... Each thread works on its own blocks.
pub fn random_actions<A: Contestant>(
    a: &A,
    cfg: &Config,
    threads: usize,
    max: usize,
    realloc: bool,
) -> Vec<Sample> {
    const MIN_LIVE: usize = 300;
    let runs = timed_threads(a, threads, cfg, |a: &A, i, phase: &Phase| {
        let mut rng = Rng::new(cfg.seed ^ (i as u64) << 32 ^ max as u64);
        let mut v: Vec<Block> = Vec::with_capacity(200_000);
        let (mut ops, mut failures) = (0u64, 0u64);
        let t = phase.begin();
        while phase.running() {
            for _ in 0..CHUNK {
                let action = rng.below(6 + realloc as usize);
                if action == 6 {
                    if !v.is_empty() {
                        let i = rng.below(v.len());
                        let b = &mut v[i];
                        let new_size = rng.range(1, max * 3);
                        // SAFETY: a live block of this allocator with its layout; new_size > 0.
                        let p = unsafe { a.realloc(b.ptr, b.layout, new_size) };
                        if p.is_null() {
                            failures += 1;
                        } else {
                            b.ptr = p;
                            b.layout = Layout::from_size_align(new_size, b.layout.align()).unwrap();
                            ops += 1;
                        }
                    }
                } else if action < 3 || v.len() < MIN_LIVE {
                    let size = talc_size(&mut rng, max);
                    let layout = Layout::from_size_align(size, talc_align(&mut rng)).unwrap();
                    // SAFETY: a valid non-zero layout.
                    let p = unsafe { a.alloc(layout) };
                    if p.is_null() {
                        failures += 1;
                    } else if v.len() < v.capacity() {
                        // SAFETY: a fresh block of at least one byte.
                        unsafe { p.write(1) };
                        v.push(Block { ptr: p, layout });
                        ops += 1;
                    } else {
                        // SAFETY: the block just allocated, with its layout.
                        unsafe { a.dealloc(p, layout) };
                    }
                } else {
                    let b = v.swap_remove(rng.below(v.len()));
                    // SAFETY: a live block of this allocator with its layout, dropped from the list.
                    unsafe { a.dealloc(b.ptr, b.layout) };
                    ops += 1;
                }
            }
        }
        let elapsed = t.elapsed();
        for b in v.drain(..) {
            // SAFETY: live blocks of this allocator with their layouts.
            unsafe { a.dealloc(b.ptr, b.layout) };
        }
        assert!(
            failures <= ops / 100,
            "random actions (max {max}): {failures} failed allocations in {ops} operations"
        );
        Ran {
            ops,
            elapsed,
            extra: [0; 3],
        }
    });
    let name = format!(
        "random_actions_{max}{}",
        if realloc { "" } else { "_norealloc" }
    );
    vec![Sample::new(name, mops(&runs))]
}

/// Live blocks during the latency run, and the most samples kept.
const LATENCY_LIVE: usize = 1024;
const LATENCY_MAX_SAMPLES: usize = 2_000_000;

/// Latency of one free + alloc in a steady heap of 1024 live blocks of talc sizes up to 1 KiB: p50, p99
/// and p99.9 in nanoseconds (TSC, with the cost of reading it subtracted).
pub fn latency<A: Contestant>(a: &A, cfg: &Config) -> Vec<Sample> {
    let overhead = timer_overhead();
    let runs = timed_threads(a, 1, cfg, |a: &A, _, phase: &Phase| {
        let mut rng = Rng::new(cfg.seed ^ 0x1a7e);
        let mut live: Vec<Block> = (0..LATENCY_LIVE)
            .map(|_| {
                let layout = Layout::from_size_align(talc_size(&mut rng, 1024), 8).unwrap();
                // SAFETY: a valid non-zero layout.
                let ptr = unsafe { a.alloc(layout) };
                assert!(!ptr.is_null(), "latency: out of memory while filling");
                Block { ptr, layout }
            })
            .collect();
        let mut samples: Vec<u32> = Vec::with_capacity(LATENCY_MAX_SAMPLES);
        let t = phase.begin();
        while phase.running() && samples.len() < LATENCY_MAX_SAMPLES {
            let slot = rng.below(LATENCY_LIVE);
            let layout = Layout::from_size_align(talc_size(&mut rng, 1024), 8).unwrap();
            let old = live[slot];
            let c0 = rdtsc();
            // SAFETY: `old` is live with its layout; the new layout is valid and non-zero.
            let p = unsafe {
                a.dealloc(old.ptr, old.layout);
                a.alloc(layout)
            };
            let c1 = rdtsc();
            assert!(!p.is_null(), "latency: out of memory");
            // SAFETY: a fresh block of at least one byte.
            unsafe { p.write(1) };
            live[slot] = Block { ptr: p, layout };
            samples.push((c1 - c0).saturating_sub(overhead).min(u32::MAX as u64) as u32);
        }
        let elapsed = t.elapsed();
        for b in live {
            // SAFETY: live blocks with their layouts.
            unsafe { a.dealloc(b.ptr, b.layout) };
        }
        samples.sort_unstable();
        let pct = |q: f64| u64::from(samples[((samples.len() - 1) as f64 * q) as usize]);
        let extra = [pct(0.5), pct(0.99), pct(0.999)];
        Ran {
            ops: samples.len() as u64,
            elapsed,
            extra,
        }
    });
    let [p50, p99, p999] = runs[0].extra;
    vec![
        Sample::new("latency_p50", cfg.tsc.ns(p50)),
        Sample::new("latency_p99", cfg.tsc.ns(p99)),
        Sample::new("latency_p999", cfg.tsc.ns(p999)),
    ]
}

/// Cycles between two back-to-back `rdtsc` reads (median of many).
fn timer_overhead() -> u64 {
    let mut v: Vec<u64> = (0..10_001)
        .map(|_| {
            let c0 = rdtsc();
            rdtsc() - c0
        })
        .collect();
    v.sort_unstable();
    v[v.len() / 2]
}

/// Batches of 32 blocks of `Layout(size, align)`: allocate all, then free all. ns per alloc+free.
pub fn high_align<A: Contestant>(a: &A, cfg: &Config, size: usize, align: usize) -> Vec<Sample> {
    const BATCH: usize = 32;
    let layout = Layout::from_size_align(size, align).expect("high-alignment layout");
    let runs = timed_threads(a, 1, cfg, |a: &A, _, phase: &Phase| {
        let mut ptrs = [core::ptr::null_mut::<u8>(); BATCH];
        let t = phase.begin();
        let mut ops = 0;
        while phase.running() {
            for p in ptrs.iter_mut() {
                // SAFETY: a valid non-zero layout.
                *p = unsafe { a.alloc(layout) };
                assert!(!p.is_null(), "high alignment: out of memory");
                assert!(
                    (*p as usize).is_multiple_of(align),
                    "high alignment: {p:?} not aligned to {align}"
                );
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
    vec![Sample::new(
        format!("align_{size}x{align}"),
        ns_per_op(&runs),
    )]
}
