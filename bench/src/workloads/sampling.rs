//! The cost of heap sampling (heap profile and guard pages, issue 13) on spanalloc's fast path: the same
//! workloads on three heaps, measured in a shuffled order in every repetition:
//!
//! - `off`: the ordinary heap (`Heap<HostPlatform>`: sampling not compiled in);
//! - `idle`: sampling compiled in (`Heap<Sampled<HostPlatform>>`: the per-CPU byte countdown on the
//!   fast path) but switched off;
//! - `default`: compiled in and on at the default rates (`Sampling::DEFAULT`: a profile sample per 512 KiB
//!   on average, a guarded allocation per 16 MiB).
//!
//! Metrics `sampling_<workload>_<variant>`, recorded under spanalloc; the report gives each variant's
//! cost as a ratio to `off`, taken per repetition.

use core::alloc::{GlobalAlloc, Layout};

use spanalloc::host::{HostMachine, HostPlatform};
use spanalloc::platform::Sampled;
use spanalloc::profile::Sampling;
use spanalloc::Heap;

use super::{single, Config, Sample};
use crate::contestants::Contestant;

/// A heap over a sampling platform, as a contestant.
pub struct SampledSpanalloc {
    heap: &'static Heap<Sampled<HostPlatform>>,
}

impl SampledSpanalloc {
    pub fn new(phys_bytes: usize, sampling: Sampling) -> Self {
        // As `Spanalloc::new` builds the heap without sampling: the same usable memory.
        let m = HostMachine::with_usable_memory(phys_bytes, 4 << 30);
        let platform: &'static Sampled<HostPlatform> = Box::leak(Box::new(Sampled(m.platform)));
        let heap: &'static Heap<Sampled<HostPlatform>> = Box::leak(Box::new(Heap::new(platform)));
        heap.init(m.space.sampled(platform), m.window, 2 << 30)
            .unwrap_or_else(|e| panic!("bench: sampled spanalloc init: {e}"));
        HostPlatform::set_cpu_index(0);
        heap.set_sampling(sampling)
            .unwrap_or_else(|e| panic!("bench: set_sampling: {e}"));
        SampledSpanalloc { heap }
    }
}

// SAFETY: forwards to the heap, a `GlobalAlloc` with the same contract.
unsafe impl GlobalAlloc for SampledSpanalloc {
    #[inline(always)]
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: the caller's contract is forwarded.
        unsafe { self.heap.alloc(layout) }
    }
    #[inline(always)]
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: as above.
        unsafe { self.heap.dealloc(ptr, layout) }
    }
    #[inline(always)]
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: as above.
        unsafe { self.heap.alloc_zeroed(layout) }
    }
    #[inline(always)]
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: as above.
        unsafe { self.heap.realloc(ptr, layout, new_size) }
    }
}

impl Contestant for SampledSpanalloc {
    #[inline]
    fn enter_thread(&self, index: usize) {
        HostPlatform::set_cpu_index(index);
    }
}

/// The three heaps, built once.
pub struct SamplingHeaps {
    off: crate::contestants::Spanalloc,
    idle: SampledSpanalloc,
    default: SampledSpanalloc,
}

/// The variants, in the report's order.
pub const VARIANTS: [&str; 3] = ["off", "idle", "default"];
/// The workloads, as metric stems.
pub const WORKLOADS: [&str; 2] = ["pair_16", "random_actions_200"];

impl SamplingHeaps {
    pub fn build(phys_bytes: usize) -> Self {
        SamplingHeaps {
            off: crate::contestants::Spanalloc::new(phys_bytes),
            idle: SampledSpanalloc::new(phys_bytes, Sampling::OFF),
            default: SampledSpanalloc::new(phys_bytes, Sampling::DEFAULT),
        }
    }

    /// Every workload on every variant: [`ROUNDS`] rounds of short passes (a tenth of a pass each), the
    /// variants in a fresh random order in every round, and for each variant its best pass (least time per
    /// operation, most operations per second). A shared machine's load only ever slows a pass, and it
    /// drifts over seconds: short passes interleaved and the best of each keep the ratios between
    /// variants (a few percent) above that noise, where one long pass per variant did not (ratios of
    /// 0.66-1.8 between repetitions).
    pub fn measure(&self, cfg: &Config, rng: &mut crate::rng::Rng) -> Vec<Sample> {
        let short = Config {
            duration: cfg.duration / ROUNDS as u32,
            warmup: cfg.warmup / ROUNDS as u32,
            ..cfg.clone()
        };
        let mut best: Vec<Option<Sample>> = Vec::new();
        let mut order = [0, 1, 2];
        for _ in 0..ROUNDS {
            rng.shuffle(&mut order);
            for &v in &order {
                let samples = match v {
                    0 => run(&self.off, &short),
                    1 => run(&self.idle, &short),
                    _ => run(&self.default, &short),
                };
                for (i, s) in samples.into_iter().enumerate() {
                    let slot = v * WORKLOADS.len() + i;
                    if best.len() <= slot {
                        best.resize(slot + 1, None);
                    }
                    let better = |old: &Sample| {
                        if super::unit_of(&s.metric).higher_is_better() {
                            s.value > old.value
                        } else {
                            s.value < old.value
                        }
                    };
                    if best[slot].as_ref().is_none_or(better) {
                        best[slot] = Some(s);
                    }
                }
            }
        }
        let out = best
            .into_iter()
            .enumerate()
            .filter_map(|(slot, s)| {
                let s = s?;
                Some(Sample::new(
                    format!("sampling_{}_{}", s.metric, VARIANTS[slot / WORKLOADS.len()]),
                    s.value,
                ))
            })
            .collect();
        eprintln!(
            "sampling cost: default-rate heap so far: {:?}",
            self.default.heap.sampling_stats()
        );
        out
    }
}

/// Interleaved rounds per repetition (see [`SamplingHeaps::measure`]).
const ROUNDS: usize = 10;

fn run<A: Contestant>(a: &A, cfg: &Config) -> Vec<Sample> {
    let mut v = single::pair(a, cfg, 16);
    v.extend(single::random_actions(a, cfg, 1, 200, true));
    v
}
