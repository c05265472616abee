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
    fn new(phys_bytes: usize, sampling: Sampling) -> Self {
        let m = HostMachine::new(phys_bytes, 4 << 30);
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

    /// Every workload on every variant, the variants in the order `order` (indices into [`VARIANTS`]).
    pub fn measure(&self, cfg: &Config, order: &[usize]) -> Vec<Sample> {
        let mut out = Vec::new();
        for &v in order {
            let name = VARIANTS[v];
            let samples = match v {
                0 => run(&self.off, cfg),
                1 => run(&self.idle, cfg),
                _ => run(&self.default, cfg),
            };
            out.extend(
                samples
                    .into_iter()
                    .map(|s| Sample::new(format!("sampling_{}_{name}", s.metric), s.value)),
            );
        }
        eprintln!(
            "sampling cost: default-rate heap so far: {:?}",
            self.default.heap.sampling_stats()
        );
        out
    }
}

fn run<A: Contestant>(a: &A, cfg: &Config) -> Vec<Sample> {
    let mut v = single::pair(a, cfg, 16);
    v.extend(single::random_actions(a, cfg, 1, 200, true));
    v
}
