//! The workloads (after peers.md) and the harness that times them.
//!
//! Every timed workload runs in freshly spawned threads that first pin their "CPU"
//! ([`Contestant::enter_thread`]), set up their working set, meet at a barrier, run until the coordinator
//! raises the stop flag, and report `(operations, CPU time between the barrier and seeing the flag)`. Setup,
//! clean-up and thread creation stay outside that time. A warm-up pass of the same body precedes each
//! measured pass, so first-touch costs (thread heaps, span creation, page faults) are not measured.
//!
//! Invariants: a workload frees everything it allocated before it returns (the long-lived contestants are
//! shared by all workloads of the run); nothing in a timed loop allocates from anything but the contestant.

use std::sync::Barrier;
use std::time::Duration;

use crate::contestants::Contestant;
use crate::timing::{CpuClock, StopFlag, Tsc};

pub mod instructions;
pub mod memory;
pub mod sampling;
pub mod scaling;
pub mod single;
pub mod threaded;

/// Settings shared by every workload of a run.
#[derive(Clone, Debug)]
pub struct Config {
    pub quick: bool,
    /// Length of one measured pass.
    pub duration: Duration,
    /// Length of the warm-up pass before it.
    pub warmup: Duration,
    /// Arena of each `no_std` peer (and spanalloc's fake physical memory).
    pub arena_bytes: usize,
    pub seed: u64,
    pub tsc: Tsc,
}

/// One measured value of a metric.
#[derive(Clone, Debug)]
pub struct Sample {
    pub metric: String,
    pub value: f64,
}

impl Sample {
    pub fn new(metric: impl Into<String>, value: f64) -> Self {
        Sample {
            metric: metric.into(),
            value,
        }
    }
}

/// What a metric measures and which way is better.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Unit {
    /// Nanoseconds per operation (lower is better).
    Ns,
    /// Millions of operations per second (higher is better).
    Mops,
    /// Percent of the heap in use (higher is better).
    PercentUsed,
    /// Bytes held per byte live (lower is better).
    HeldPerLive,
    /// Percent of the peak live bytes still held (lower is better).
    PercentHeld,
    /// Instructions per operation, counted by cachegrind (lower is better).
    Instr,
}

impl Unit {
    pub fn label(self) -> &'static str {
        match self {
            Unit::Ns => "ns/op",
            Unit::Mops => "Mops/s",
            Unit::PercentUsed => "% used",
            Unit::HeldPerLive => "held/live",
            Unit::PercentHeld => "% of peak live held",
            Unit::Instr => "instr/op",
        }
    }

    pub fn higher_is_better(self) -> bool {
        matches!(self, Unit::Mops | Unit::PercentUsed)
    }
}

/// The coordination of one multi-threaded pass.
pub struct Phase {
    start: Barrier,
    quiesce: Barrier,
    stop: StopFlag,
}

impl Phase {
    fn new(threads: usize) -> Self {
        Phase {
            start: Barrier::new(threads + 1),
            quiesce: Barrier::new(threads),
            stop: StopFlag::new(),
        }
    }

    /// Waits until every thread is set up, then starts this thread's CPU clock.
    pub fn begin(&self) -> CpuClock {
        self.start.wait();
        CpuClock::now()
    }

    #[inline]
    pub fn running(&self) -> bool {
        !self.stop.raised()
    }

    /// Waits for the other threads of the pass (after the timed loop: before freeing shared state).
    pub fn quiesce(&self) {
        self.quiesce.wait();
    }
}

/// What one thread of a pass reports.
pub struct Ran {
    pub ops: u64,
    /// CPU time of the thread between `Phase::begin` and seeing the stop flag.
    pub elapsed: Duration,
    /// Side measures of the workload (e.g. cycles spent in `dealloc`, or latency percentiles).
    pub extra: [u64; 3],
}

/// The reports of one measured pass, and its wall-clock length (from the start barrier to the stop flag).
pub struct Pass {
    pub runs: Vec<Ran>,
    pub wall: Duration,
}

impl core::ops::Deref for Pass {
    type Target = [Ran];
    fn deref(&self) -> &[Ran] {
        &self.runs
    }
}

/// Runs `body` in `threads` threads for a warm-up pass and then a measured pass of `cfg.duration`; returns
/// the measured pass's reports.
pub fn timed_threads<A, F>(a: &A, threads: usize, cfg: &Config, body: F) -> Pass
where
    A: Contestant,
    F: Fn(&A, usize, &Phase) -> Ran + Sync,
{
    one_pass(a, threads, cfg.warmup, &body);
    one_pass(a, threads, cfg.duration, &body)
}

fn one_pass<A, F>(a: &A, threads: usize, duration: Duration, body: &F) -> Pass
where
    A: Contestant,
    F: Fn(&A, usize, &Phase) -> Ran + Sync,
{
    let phase = Phase::new(threads);
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|i| {
                let phase = &phase;
                s.spawn(move || {
                    a.enter_thread(i);
                    body(a, i, phase)
                })
            })
            .collect();
        phase.start.wait();
        let t0 = std::time::Instant::now();
        std::thread::sleep(duration);
        phase.stop.raise();
        let wall = t0.elapsed();
        let runs = handles
            .into_iter()
            .map(|h| h.join().expect("bench: a workload thread panicked"))
            .collect();
        Pass { runs, wall }
    })
}

/// Millions of operations per second. One thread: per second of its CPU time (see timing.rs). Several:
/// per second of wall-clock time, all threads' operations together; their CPU time would extrapolate to
/// as many CPUs as threads, past the machine's cores when it has fewer (the report flags such rows).
pub fn mops(pass: &Pass) -> f64 {
    let ops: u64 = pass.runs.iter().map(|r| r.ops).sum();
    let secs = if pass.runs.len() == 1 {
        pass.runs[0].elapsed.as_secs_f64()
    } else {
        pass.wall.as_secs_f64()
    };
    ops as f64 / secs / 1e6
}

/// Nanoseconds per operation of a single-threaded pass.
pub fn ns_per_op(runs: &[Ran]) -> f64 {
    let ops: u64 = runs.iter().map(|r| r.ops).sum();
    let ns: f64 = runs.iter().map(|r| r.elapsed.as_nanos() as f64).sum();
    ns / ops as f64
}

/// Which contestants a benchmark is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Who {
    All,
    /// The heaps over a fixed region: spanalloc and the `no_std` peers.
    Arenas,
    Spanalloc,
}

/// What a benchmark runs.
#[derive(Clone, Copy, Debug)]
pub enum Kind {
    Pair {
        size: usize,
    },
    RandomActions {
        max: usize,
        realloc: bool,
    },
    Latency,
    HighAlign {
        size: usize,
        align: usize,
    },
    GlibcSimple,
    Larson,
    Xmalloc,
    CacheScratch,
    /// Over an arena of `mib` MiB, or of the suite's arena size (`None`).
    HeapEfficiency {
        mib: Option<usize>,
    },
    Footprint,
    PageScaling,
    SamplingCost,
    /// Instructions per operation under cachegrind, in child processes (instructions.rs); counted in the
    /// first repetition only (the counts are deterministic).
    Instructions,
}

/// A benchmark: a name to filter on, the thread counts it runs at, and who takes part.
#[derive(Clone, Debug)]
pub struct Bench {
    pub name: String,
    pub kind: Kind,
    pub threads: Vec<usize>,
    pub who: Who,
}

/// The arena sizes of the small-heap efficiency rows (`heap_efficiency_<N>MiB`), in MiB.
pub const HEAP_EFFICIENCY_SMALL_MIB: [usize; 2] = [16, 64];

/// Every benchmark of the suite, in report order.
pub fn suite() -> Vec<Bench> {
    let b = |name: String, kind, threads: &[usize], who| Bench {
        name,
        kind,
        threads: threads.to_vec(),
        who,
    };
    let mut v = Vec::new();
    for size in [16, 64, 256, 4096] {
        v.push(b(
            format!("pair_{size}"),
            Kind::Pair { size },
            &[1],
            Who::All,
        ));
    }
    for max in [200, 3000, 30000] {
        for realloc in [true, false] {
            let name = format!(
                "random_actions_{max}{}",
                if realloc { "" } else { "_norealloc" }
            );
            // Multi-threaded random actions at the smallest sizes: talc's "random-actions-multi".
            let threads: &[usize] = if max == 200 && realloc {
                &[1, 2, 4]
            } else {
                &[1]
            };
            v.push(b(
                name,
                Kind::RandomActions { max, realloc },
                threads,
                Who::All,
            ));
        }
    }
    v.push(b("latency".into(), Kind::Latency, &[1], Who::All));
    v.push(b(
        "align_1x4096".into(),
        Kind::HighAlign {
            size: 1,
            align: 4096,
        },
        &[1],
        Who::All,
    ));
    v.push(b(
        "align_4096x1".into(),
        Kind::HighAlign {
            size: 4096,
            align: 1,
        },
        &[1],
        Who::All,
    ));
    v.push(b(
        "glibc_simple".into(),
        Kind::GlibcSimple,
        &[1, 2, 4],
        Who::All,
    ));
    v.push(b("larson".into(), Kind::Larson, &[1, 2, 4], Who::All));
    v.push(b("xmalloc".into(), Kind::Xmalloc, &[1, 2, 4], Who::All));
    v.push(b(
        "cache_scratch".into(),
        Kind::CacheScratch,
        &[1, 2, 4],
        Who::All,
    ));
    v.push(b(
        "heap_efficiency".into(),
        Kind::HeapEfficiency { mib: None },
        &[1],
        Who::Arenas,
    ));
    // Small heaps, whatever the suite's arena: where fixed overheads show.
    for mib in HEAP_EFFICIENCY_SMALL_MIB {
        v.push(b(
            memory::heap_efficiency_metric(mib << 20, false),
            Kind::HeapEfficiency { mib: Some(mib) },
            &[1],
            Who::Arenas,
        ));
    }
    v.push(b("footprint".into(), Kind::Footprint, &[1], Who::All));
    v.push(b(
        "page_scaling".into(),
        Kind::PageScaling,
        &[1],
        Who::Spanalloc,
    ));
    v.push(b(
        "sampling_cost".into(),
        Kind::SamplingCost,
        &[1],
        Who::Spanalloc,
    ));
    v.push(b("instructions".into(), Kind::Instructions, &[1], Who::All));
    v
}

/// The unit of a metric, from its name (metrics are named `<benchmark>[_<variant>]`).
pub fn unit_of(metric: &str) -> Unit {
    if metric.starts_with("instr_") {
        Unit::Instr
    } else if metric.starts_with("random_actions")
        || metric.starts_with("sampling_random_actions")
        || metric.starts_with("glibc_simple")
        || metric.starts_with("larson")
        || metric.starts_with("cache_scratch")
    {
        Unit::Mops
    } else if metric.starts_with("heap_efficiency") {
        Unit::PercentUsed
    } else if metric == "footprint_peak" {
        Unit::HeldPerLive
    } else if metric.starts_with("footprint") {
        Unit::PercentHeld
    } else {
        Unit::Ns
    }
}

/// A [`crate::contestants::Workload`] running one benchmark at one thread count.
pub struct Job<'a> {
    pub kind: Kind,
    pub threads: usize,
    pub cfg: &'a Config,
}

impl crate::contestants::Workload for Job<'_> {
    type Out = Vec<Sample>;

    fn run<A: Contestant>(&self, a: &A) -> Vec<Sample> {
        let (cfg, t) = (self.cfg, self.threads);
        match self.kind {
            Kind::Pair { size } => single::pair(a, cfg, size),
            Kind::RandomActions { max, realloc } => single::random_actions(a, cfg, t, max, realloc),
            Kind::Latency => single::latency(a, cfg),
            Kind::HighAlign { size, align } => single::high_align(a, cfg, size, align),
            Kind::GlibcSimple => threaded::glibc_simple(a, cfg, t),
            Kind::Larson => threaded::larson(a, cfg, t),
            Kind::Xmalloc => threaded::xmalloc(a, cfg, t),
            Kind::CacheScratch => threaded::cache_scratch(a, cfg, t),
            Kind::HeapEfficiency { mib } => {
                let bytes = mib.map_or(cfg.arena_bytes, |m| m << 20);
                let metric = memory::heap_efficiency_metric(bytes, mib.is_none());
                memory::heap_efficiency(a, cfg, bytes, &metric)
            }
            Kind::Footprint | Kind::PageScaling | Kind::SamplingCost | Kind::Instructions => {
                unreachable!(
                    "footprint, page scaling, sampling cost and instruction counts run outside the shared contestants"
                )
            }
        }
    }
}
