//! The kernel's side of spanalloc's garbage collector: a [`GcConfig`] wired to the TSC clock and the
//! serial console, the `gctrace=` switch, a recorder of pauses for summaries (max, p99, total), and
//! mark workers on the other CPUs (parallel and concurrent marking).
//!
//! Invariants:
//! - The pause hook never allocates: it writes into a buffer reserved by [`PauseLog::start`] before the
//!   run, so recording a pause cannot disturb the heaps being measured (nor recurse into them).
//! - Only one pause log records at a time (the demo's); heaps run concurrently on several CPUs use a
//!   configuration without the hook.

use crate::clock;
use crate::percpu;
use crate::println;
use crate::smp;
use alloc::vec::Vec;
use core::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use core::time::Duration;
use spanalloc::gc::{ConcurrentWorkers, GcConfig, MarkJob, MarkWorkers, Mode};
use spin::Mutex;

static TRACE: AtomicBool = AtomicBool::new(true);

/// Whether the collector's per-cycle lines reach the console (`gctrace=` on the command line).
pub fn set_trace(on: bool) {
    TRACE.store(on, Ordering::Relaxed);
}

fn now_ns() -> u64 {
    clock::ticks_to_duration(clock::ticks()).as_nanos() as u64
}

fn trace_line(line: &str) {
    if TRACE.load(Ordering::Relaxed) {
        println!("{line}");
    }
}

/// A collector in `mode` that reads the TSC and prints its trace lines to the console.
pub fn config(mode: Mode) -> GcConfig {
    GcConfig {
        mode,
        clock: Some(now_ns),
        trace_sink: Some(trace_line),
        ..GcConfig::default()
    }
}

/// Parallel marking on the online CPUs (the boot CPU's marks get a worker on every AP); `None` on one
/// CPU. For heaps on the boot CPU only: the workers are started with `smp::run_on`.
pub fn mark_workers() -> Option<MarkWorkers> {
    let helpers = smp::online_count().saturating_sub(1);
    (helpers > 0).then_some(MarkWorkers {
        helpers,
        run: run_mark_workers,
    })
}

fn run_mark_workers(helpers: usize, job: &(dyn Fn(usize) + Sync)) {
    // The boot CPU (bit 0) and the first `helpers` APs.
    let targets = smp::bits(smp::online_mask())
        .take(helpers + 1)
        .fold(1u64, |mask, cpu| mask | 1 << cpu);
    smp::run_on(targets, &|cpu: usize| job(cpu));
}

/// Concurrent marking (`Mode::Concurrent`) with a mark job at most on every AP beside the mutator;
/// `None` on one CPU. Jobs are posted to idle APs (`smp::post`); one the APs have no room for is dropped
/// (the mark does not depend on its jobs running).
pub fn concurrent_workers() -> Option<ConcurrentWorkers> {
    let helpers = smp::online_count().saturating_sub(1);
    (helpers > 0).then_some(ConcurrentWorkers {
        helpers,
        start: start_on_ap,
    })
}

/// The mark job posted to each AP, waiting for it to run.
static AP_JOBS: [Mutex<Option<MarkJob>>; percpu::MAX_CPUS] =
    [const { Mutex::new(None) }; percpu::MAX_CPUS];

/// The APs that ran a concurrent mark job (bit per CPU index), for tests.
pub static CONCURRENT_JOB_CPUS: AtomicU64 = AtomicU64::new(0);

/// The AP `start_on_ap` tries first: it goes round, so that jobs spread over every AP rather than
/// piling on the lowest-numbered ones (whose slots empty as soon as their jobs start).
static NEXT_AP: AtomicUsize = AtomicUsize::new(0);

fn start_on_ap(job: MarkJob) {
    let aps = smp::online_mask() & !1;
    let first = NEXT_AP.fetch_add(1, Ordering::Relaxed);
    let n = aps.count_ones() as usize;
    for i in 0..n {
        let Some(cpu) = smp::bits(aps).nth((first + i) % n) else {
            break;
        };
        let mut slot = AP_JOBS[cpu].lock();
        if slot.is_none() {
            *slot = Some(job);
            drop(slot);
            if !smp::post(cpu, run_posted_job) {
                // The AP has another task waiting: the job is taken back and dropped unrun (allowed).
                drop(AP_JOBS[cpu].lock().take());
            }
            return;
        }
    }
    // Every AP has a job already: this one is dropped unrun.
}

/// The task `start_on_ap` posts: runs the job waiting for this AP.
fn run_posted_job(cpu: usize) {
    let job = AP_JOBS[cpu].lock().take();
    if let Some(job) = job {
        CONCURRENT_JOB_CPUS.fetch_or(1 << cpu, Ordering::Relaxed);
        job.run();
    }
}

/// Pauses of the current run, in ns; never grows past the capacity `start` reserved.
static PAUSES: Mutex<Vec<u64>> = Mutex::new(Vec::new());

fn record_pause(_: spanalloc::gc::PauseKind, ns: u64) {
    let mut pauses = PAUSES.lock();
    if pauses.len() < pauses.capacity() {
        pauses.push(ns);
    }
}

/// Records every pause of the heaps built with [`PauseLog::config`] until [`PauseLog::finish`].
pub struct PauseLog(());

/// What the mutator waited for during one run.
#[derive(Debug, Clone, Copy)]
pub struct PauseSummary {
    pub count: usize,
    pub max: Duration,
    pub p99: Duration,
    pub total: Duration,
}

impl PauseLog {
    /// Starts a log with room for `capacity` pauses (later ones are not recorded).
    pub fn start(capacity: usize) -> Self {
        let mut pauses = PAUSES.lock();
        pauses.clear();
        pauses.reserve_exact(capacity);
        PauseLog(())
    }

    /// [`config`] plus this log's pause hook.
    pub fn config(&self, mode: Mode) -> GcConfig {
        GcConfig {
            pause_hook: Some(record_pause),
            ..config(mode)
        }
    }

    /// The summary of the recorded pauses; frees the buffer.
    pub fn finish(self) -> PauseSummary {
        let mut pauses = core::mem::take(&mut *PAUSES.lock());
        pauses.sort_unstable();
        let count = pauses.len();
        // Nearest-rank p99: the smallest pause at least 99% of all pauses do not exceed.
        let p99 = match count {
            0 => 0,
            n => pauses[(n * 99).div_ceil(100) - 1],
        };
        PauseSummary {
            count,
            max: Duration::from_nanos(pauses.last().copied().unwrap_or(0)),
            p99: Duration::from_nanos(p99),
            total: Duration::from_nanos(pauses.iter().sum()),
        }
    }
}
