//! Benchmarks of the garbage collector (spanalloc::gc) on the host platform:
//!
//! 1. Pause distribution at 64 MiB live: stop-the-world vs incremental (every piece of collector work
//!    the mutator waits for — cycle, start, step, assist, termination, proportional sweep — is one
//!    pause, reported through `GcConfig::pause_hook`).
//!
//!    A `concurrent` row: the same run with mark workers on other threads beside the mutator
//!    (`Mode::Concurrent`, `GcConfig::concurrent_workers`, a persistent crew of host threads): the
//!    mutator's pauses are the cycle start, the termination, assists, and the hand-over of grey work
//!    to the workers (and the start of mark jobs) at the safe points of the mark.
//!
//! 1b. Parallel marking: the wall time of a full mark of the same 64 MiB live heap by one worker and by
//!    one per host CPU (`GcConfig::mark_workers`), as a speed-up.
//! 2. Throughput against gc-arena in the same run: binary-trees (depth 16, 17, 18) and Boehm's GCBench;
//!    where `go` is installed, binary-trees in Go too (binarytrees.go, GOMAXPROCS=1, its loop timed by
//!    itself), beside spanalloc::gc's time of the same run; and on 2 CPUs: Go with GOMAXPROCS=2 beside
//!    spanalloc::gc marking with one more worker on another thread (`GcConfig::mark_workers`), in
//!    stop-the-world mode: on binary-trees the fastest of its configurations on 2 CPUs (the incremental
//!    mode marks in steps on the mutator's CPU, its workers only finish the mark; the concurrent mode's
//!    hand-overs cost more than they save on a loop of tiny `mutate` calls).
//!    gc-arena runs with its default incremental pacing, `collect_debt` after every `mutate`; spanalloc's
//!    collector with its defaults (incremental, GOGC 100), a safe point after every `mutate`. Each
//!    benchmark runs `RUNS` times per collector, alternating, and reports the median.
//!
//! Run: `cargo run --release -p spanalloc --example gc_bench --features host,gc`
//! (`-- quick` for a short smoke run; `-- mark` for the parallel-mark line alone; `-- pauses` for the
//! pause table alone; `-- trees N [CONFIG]` for
//! spanalloc::gc's binary-trees at depth N alone, CONFIG as `trees_config` names them; `GC_BENCH_CLOCK=wall` measures pauses in wall time instead of
//! thread CPU time; `GCTRACE=1` prints the gctrace lines of the pause runs).

use std::sync::Mutex;
use std::time::Instant;

use spanalloc::gc::{
    ConcurrentWorkers, Gc, GcCell, GcConfig, GcHeap, GcRefCell, MarkWorkers, Mode, PauseKind,
    Rootable, Trace,
};
use spanalloc::host::{HostMachine, HostPlatform};
use spanalloc::Heap;

fn span_heap(phys_mib: usize) -> &'static Heap<HostPlatform> {
    let m = HostMachine::new(phys_mib << 20, 8 << 30);
    let heap: &'static Heap<HostPlatform> = Box::leak(Box::new(Heap::new(m.platform)));
    heap.init(m.space, m.window, 4 << 30).expect("heap init");
    heap
}

fn wall_ns() -> u64 {
    static START: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    START.get_or_init(Instant::now).elapsed().as_nanos() as u64
}

/// CPU time of this thread: on a shared machine a pause measured in wall time also counts the time
/// slices other processes got meanwhile.
fn cpu_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid timespec to write to.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

fn use_wall_clock() -> bool {
    std::env::var("GC_BENCH_CLOCK").is_ok_and(|c| c == "wall")
}

fn print_line(s: &str) {
    eprintln!("{s}");
}

static PAUSES: Mutex<Vec<u64>> = Mutex::new(Vec::new());

/// Pauses of the current run by kind (`PauseKind::ALL`'s order), for the concurrent row's breakdown.
static BY_KIND: Mutex<Vec<Vec<u64>>> = Mutex::new(Vec::new());

fn record_pause(kind: PauseKind, ns: u64) {
    PAUSES.lock().unwrap().push(ns);
    let mut by_kind = BY_KIND.lock().unwrap();
    by_kind.resize(PauseKind::ALL.len(), Vec::new());
    by_kind[kind as usize].push(ns);
}

// ---------------------------------------------------------------------------------------------------
// 1. Pauses

#[derive(Trace)]
struct TNode<'gc> {
    left: GcCell<'gc, Option<Gc<'gc, TNode<'gc>>>>,
    right: GcCell<'gc, Option<Gc<'gc, TNode<'gc>>>>,
    val: u64,
}

fn tree<'gc>(mc: &spanalloc::gc::Mutation<'gc>, depth: u32, val: u64) -> Gc<'gc, TNode<'gc>> {
    let (l, r) = if depth == 0 {
        (None, None)
    } else {
        (
            Some(tree(mc, depth - 1, val * 2)),
            Some(tree(mc, depth - 1, val * 2 + 1)),
        )
    };
    Gc::new(
        mc,
        TNode {
            left: GcCell::new(l),
            right: GcCell::new(r),
            val,
        },
    )
}

fn sum(t: Gc<'_, TNode<'_>>) -> u64 {
    t.val + t.left.get().map_or(0, sum) + t.right.get().map_or(0, sum)
}

struct Forest;
impl Rootable for Forest {
    type Root<'gc> = GcRefCell<'gc, Vec<Option<Gc<'gc, TNode<'gc>>>>>;
}

struct PauseReport {
    cycles: u64,
    pauses: usize,
    /// Pauses longer than the concurrent row's target, [`PAUSE_TARGET_NS`].
    over_target: usize,
    max: u64,
    p99: u64,
    p50: u64,
    total: u64,
    wall: u64,
    /// Per kind of collector work (`PauseKind::ALL`'s order): count, p50, p99.9, max, total (ns), and
    /// how many took longer than [`PAUSE_TARGET_NS`].
    by_kind: Vec<[u64; 6]>,
    /// Concurrent rows: bytes the mark workers scanned, and their CPU time in jobs (ns).
    worker_scan: u64,
    worker_cpu: u64,
}

/// A crew of host threads for concurrent marking, started once: `crew::start` queues a mark job and
/// wakes a thread for it (spawning a thread per job would make the mutator wait for `clone` each time).
mod crew {
    use spanalloc::gc::MarkJob;
    use std::collections::VecDeque;
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::{Condvar, Mutex, OnceLock};

    /// The crew threads' CPU time inside mark jobs, in all (ns): the workers' marking cost, which a
    /// loaded machine's scheduling does not move (it only takes CPU away from them).
    pub static JOB_CPU_NS: AtomicU64 = AtomicU64::new(0);

    struct Crew {
        jobs: Mutex<VecDeque<MarkJob>>,
        wake: Condvar,
    }

    static CREW: OnceLock<Crew> = OnceLock::new();

    /// Threads of the crew (enough for the heap's `helpers`).
    pub const THREADS: usize = 4;

    fn crew() -> &'static Crew {
        let mut started = false;
        let c = CREW.get_or_init(|| {
            started = true;
            Crew {
                jobs: Mutex::new(VecDeque::new()),
                wake: Condvar::new(),
            }
        });
        if started {
            for _ in 0..THREADS {
                std::thread::spawn(move || loop {
                    let job = {
                        let mut q = c.jobs.lock().unwrap();
                        loop {
                            if let Some(j) = q.pop_front() {
                                break j;
                            }
                            q = c.wake.wait(q).unwrap();
                        }
                    };
                    let t0 = super::cpu_ns();
                    job.run();
                    JOB_CPU_NS.fetch_add(super::cpu_ns() - t0, Ordering::Relaxed);
                });
            }
        }
        c
    }

    /// Starts the crew's threads (if not yet): before a measurement, so that no pause counts the
    /// spawning of the benchmark's own threads (Go's mark workers exist before its cycles too).
    pub fn warm_up() {
        crew();
    }

    /// `ConcurrentWorkers::start` on the crew.
    pub fn start(job: MarkJob) {
        let c = crew();
        c.jobs.lock().unwrap().push_back(job);
        c.wake.notify_one();
    }
}

/// The nominal work of `timing_floor`'s samples, about a median pause.
const FLOOR_WORK_NS: u64 = 8_000;

/// The concurrent row's max-pause target (issue 12): 0.1 ms.
const PAUSE_TARGET_NS: u64 = 100_000;

/// What `timing_floor` measured.
struct Floor {
    p999: u64,
    max: u64,
    /// Samples longer than [`PAUSE_TARGET_NS`], although each is [`FLOOR_WORK_NS`] of work.
    over_target: usize,
    /// All samples' time together (ns).
    total: u64,
}

/// Bytes the memory floor's loop reads at random: about the concurrent row's heap.
const FLOOR_MEMORY: usize = 256 << 20;

/// What the machine adds to short pauses: a busy loop of about `FLOOR_WORK_NS` timed `n` times with
/// the pause clock (a mutator's worth of work between samples), while `busy` other threads spin as the
/// concurrent row's workers do. `memory`: each step of the loop also reads a random word of
/// `FLOOR_MEMORY` bytes, as collector work touches memory all over the heap (this machine stretches
/// such a loop past 0.1 ms several times as often as a loop of arithmetic).
fn timing_floor(n: usize, busy: usize, memory: bool) -> Floor {
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let spinners: Vec<_> = (0..busy)
        .map(|_| {
            let stop = stop.clone();
            std::thread::spawn(move || {
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    std::hint::spin_loop();
                }
            })
        })
        .collect();
    let clock = if use_wall_clock() { wall_ns } else { cpu_ns };
    // Written once, so every page is mapped before the loop runs.
    let heap: Vec<u64> = if memory {
        vec![1; FLOOR_MEMORY / 8]
    } else {
        Vec::new()
    };
    // One sequence across all calls: a loop that read the same addresses every time would find
    // them cached.
    let state = std::cell::Cell::new(1u64);
    let spin = |iters: u64, touch: bool| {
        let mut x = state.get();
        for i in 0..iters {
            x = std::hint::black_box(x.wrapping_mul(6364136223846793005).wrapping_add(i));
            if touch {
                x = x.wrapping_add(heap[(x >> 33) as usize % heap.len()]);
            }
        }
        state.set(x);
    };
    // Calibrate: iterations per FLOOR_WORK_NS.
    let t0 = clock();
    spin(1 << 20, memory);
    let per_iter = (clock() - t0).max(1) as f64 / f64::from(1 << 20);
    let iters = (FLOOR_WORK_NS as f64 / per_iter) as u64;
    let mut d: Vec<u64> = (0..n.max(1))
        .map(|_| {
            // The mutator's work between pauses: arithmetic.
            spin(3 * (FLOOR_WORK_NS as f64 / per_iter) as u64, false);
            let t0 = clock();
            spin(iters, memory);
            clock() - t0
        })
        .collect();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for t in spinners {
        t.join().unwrap();
    }
    d.sort_unstable();
    Floor {
        p999: d[(d.len() * 999 / 1000).min(d.len() - 1)],
        max: d[d.len() - 1],
        over_target: d.iter().filter(|&&t| t > PAUSE_TARGET_NS).count(),
        total: d.iter().sum(),
    }
}

fn pause_bench(mode: Mode, step: usize, cycles: u64) -> PauseReport {
    pause_bench_with(mode, step, cycles, None)
}

fn pause_bench_with(
    mode: Mode,
    step: usize,
    cycles: u64,
    concurrent_workers: Option<ConcurrentWorkers>,
) -> PauseReport {
    const TREES: usize = 32;
    const DEPTH: u32 = 15; // 65535 nodes of 32 B: 2 MiB per tree, 64 MiB in all
    if concurrent_workers.is_some() {
        crew::warm_up();
    }
    let cfg = GcConfig {
        mode,
        concurrent_workers,
        clock: Some(if use_wall_clock() { wall_ns } else { cpu_ns }),
        pause_hook: Some(record_pause),
        trace_sink: std::env::var("GCTRACE")
            .is_ok()
            .then_some(print_line as fn(&str)),
        ..GcConfig::default()
    };
    let mut gc: GcHeap<Forest> =
        GcHeap::new(span_heap(1024), cfg, |_| GcRefCell::new(vec![None; TREES]));
    for i in 0..TREES {
        gc.mutate(|mc, root| {
            let t = tree(mc, DEPTH, i as u64);
            root.borrow_mut(mc)[i] = Some(t);
        });
    }
    gc.collect();
    PAUSES.lock().unwrap().clear();
    BY_KIND.lock().unwrap().clear();
    let start_cycles = gc.stats().cycles;
    let start_scan = gc.stats().concurrent_scan_bytes;
    crew::JOB_CPU_NS.store(0, std::sync::atomic::Ordering::Relaxed);
    let t0 = wall_ns();
    let mut i = 0u64;
    while gc.stats().cycles < start_cycles + cycles {
        gc.mutate(|mc, root| {
            // Short-lived garbage: a 64 KiB tree, walked once.
            let t = tree(mc, 10, i);
            assert!(sum(t) > 0);
            // Old garbage: now and then a long-lived tree is replaced.
            if i % 64 == 0 {
                let k = (i / 64) as usize % TREES;
                let fresh = tree(mc, DEPTH, i);
                root.borrow_mut(mc)[k] = Some(fresh);
            }
        });
        if mode == Mode::Incremental && step > 0 {
            gc.step(step);
        }
        i += 1;
    }
    let wall = wall_ns() - t0;
    let worker_scan = gc.stats().concurrent_scan_bytes - start_scan;
    let worker_cpu = crew::JOB_CPU_NS.load(std::sync::atomic::Ordering::Relaxed);
    let mut p = std::mem::take(&mut *PAUSES.lock().unwrap());
    p.sort_unstable();
    let pct = |q: usize| p[(p.len() * q / 100).min(p.len() - 1)];
    let mut by_kind = std::mem::take(&mut *BY_KIND.lock().unwrap());
    by_kind.resize(PauseKind::ALL.len(), Vec::new());
    let by_kind = by_kind
        .into_iter()
        .map(|mut d| {
            d.sort_unstable();
            let at = |q: usize| d.get((d.len() * q / 1000).min(d.len().saturating_sub(1)));
            [
                d.len() as u64,
                at(500).copied().unwrap_or(0),
                at(999).copied().unwrap_or(0),
                d.last().copied().unwrap_or(0),
                d.iter().sum(),
                d.iter().filter(|&&t| t > PAUSE_TARGET_NS).count() as u64,
            ]
        })
        .collect();
    PauseReport {
        cycles: gc.stats().cycles - start_cycles,
        pauses: p.len(),
        over_target: p.iter().filter(|&&t| t > PAUSE_TARGET_NS).count(),
        max: *p.last().unwrap(),
        p99: pct(99),
        p50: pct(50),
        total: p.iter().sum(),
        wall,
        by_kind,
        worker_scan,
        worker_cpu,
    }
}

/// CPU time of the whole process (all mark workers).
fn process_cpu_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid timespec to write to.
    unsafe { libc::clock_gettime(libc::CLOCK_PROCESS_CPUTIME_ID, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// Medians of full marks of one configuration: wall time and process CPU time.
struct MarkTimes {
    wall: u64,
    cpu: u64,
}

/// Full marks (`start_cycle` + `finish_mark`: the root scan, the drain and termination) of the same 64
/// MiB live forest by one worker and by `workers`, alternating, `runs` each.
fn parallel_mark(workers: MarkWorkers, runs: usize) -> (MarkTimes, MarkTimes) {
    const TREES: usize = 32;
    const DEPTH: u32 = 15;
    let heap_with = |w: Option<MarkWorkers>| {
        let cfg = GcConfig {
            mode: Mode::StopTheWorld,
            gogc: None,
            mark_workers: w,
            ..GcConfig::default()
        };
        let mut gc: GcHeap<Forest> =
            GcHeap::new(span_heap(1024), cfg, |_| GcRefCell::new(vec![None; TREES]));
        for i in 0..TREES {
            gc.mutate(|mc, root| {
                let t = tree(mc, DEPTH, i as u64);
                root.borrow_mut(mc)[i] = Some(t);
            });
        }
        gc.collect();
        gc
    };
    let mut heaps = [heap_with(None), heap_with(Some(workers))];
    let mut wall = [Vec::new(), Vec::new()];
    let mut cpu = [Vec::new(), Vec::new()];
    for _ in 0..runs {
        for ((gc, w), c) in heaps.iter_mut().zip(&mut wall).zip(&mut cpu) {
            gc.start_cycle();
            let (t0, c0) = (Instant::now(), process_cpu_ns());
            gc.finish_mark();
            c.push(process_cpu_ns() - c0);
            w.push(t0.elapsed().as_nanos() as u64);
        }
    }
    let [w1, wp] = wall;
    let [c1, cp] = cpu;
    (
        MarkTimes {
            wall: median(w1),
            cpu: median(c1),
        },
        MarkTimes {
            wall: median(wp),
            cpu: median(cp),
        },
    )
}

// ---------------------------------------------------------------------------------------------------
// 2. Throughput (ours.rs, arena.rs)

mod arena;
mod ours;

// GCBench's parameters (Boehm).
const STRETCH: u32 = 18;
const LONG_LIVED: u32 = 16;
const ARRAY: usize = 500_000;
const MIN_DEPTH: u32 = 4;
const MAX_DEPTH: u32 = 16;

fn tree_size(d: u32) -> u64 {
    (1 << (d + 1)) - 1
}
fn num_iters(d: u32) -> u64 {
    2 * tree_size(STRETCH) / tree_size(d)
}

// ---------------------------------------------------------------------------------------------------

fn ms(ns: u64) -> String {
    format!("{:.3} ms", ns as f64 / 1e6)
}

fn median(mut v: Vec<u64>) -> u64 {
    v.sort_unstable();
    v[v.len() / 2]
}

/// Times `f` over `runs` runs; returns the median ns and the checksum of the last run.
fn time(runs: usize, mut f: impl FnMut() -> u64) -> (u64, u64) {
    let mut t = Vec::new();
    let mut out = 0;
    for _ in 0..runs {
        let t0 = Instant::now();
        out = f();
        t.push(t0.elapsed().as_nanos() as u64);
    }
    (median(t), out)
}

/// The Go version of binary-trees (binarytrees.go), built into the temporary directory, if `go` is
/// installed (Debian's `golang-go`; the reference is Go 1.19).
fn go_binary_trees() -> Option<std::path::PathBuf> {
    let src =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/gc_bench/binarytrees.go");
    let out = std::env::temp_dir().join(format!("spanalloc-gc-bench-go-{}", std::process::id()));
    let version = std::process::Command::new("go")
        .arg("version")
        .output()
        .ok()?;
    let built = std::process::Command::new("go")
        .args(["build", "-o"])
        .arg(&out)
        .arg(&src)
        .status()
        .ok()?;
    if !built.success() {
        println!(
            "(go is installed but building {} failed: no Go row)",
            src.display()
        );
        return None;
    }
    println!(
        "Go rows: {}",
        String::from_utf8_lossy(&version.stdout).trim()
    );
    Some(out)
}

/// One run of the Go binary-trees at depth `d` with GOMAXPROCS=`procs`: (its own timing in ns, checksum).
fn go_run(go: &std::path::Path, d: u32, procs: usize) -> (u64, u64) {
    let out = std::process::Command::new(go)
        .arg(d.to_string())
        .env("GOMAXPROCS", procs.to_string())
        .output()
        .expect("running the Go binary-trees");
    assert!(out.status.success(), "Go binary-trees failed");
    let text = String::from_utf8_lossy(&out.stdout);
    let mut words = text
        .split_whitespace()
        .map(|w| w.parse::<u64>().expect("a number"));
    let (check, ns) = (words.next().expect("checksum"), words.next().expect("time"));
    (ns, check)
}

fn parallel_mark_line(quick: bool) {
    let helpers = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .max(2)
        - 1;
    let runs = if quick { 3 } else { 9 };
    let (one, par) = parallel_mark(MarkWorkers::threads(helpers), runs);
    println!(
        "parallel mark at 64 MiB live: {} mark workers (host threads): {} vs one worker {}: speed-up {:.2}x (median of {runs}, wall time; target on 2 cores: 1.7x)",
        helpers + 1,
        ms(par.wall),
        ms(one.wall),
        one.wall as f64 / par.wall as f64
    );
    // What the machine gave: CPUs busy during the parallel mark (at most the worker count; less on a
    // loaded machine), and the CPU time all workers spent over one worker's (the cost of sharing work).
    println!(
        "  CPUs in use during the parallel mark: {:.2}; its CPU time over one worker's: {:.2}x",
        par.cpu as f64 / par.wall as f64,
        par.cpu as f64 / one.cpu as f64
    );
}

fn bench(quick: bool) {
    let cycles = if quick { 2 } else { 6 };
    println!(
        "== pauses at 64 MiB live ({cycles} cycles each; every piece of GC work is a pause; {} time)",
        if use_wall_clock() { "wall" } else { "thread CPU" }
    );
    let stw = pause_bench(Mode::StopTheWorld, 0, cycles);
    let mut rows = vec![("stop-the-world".to_string(), stw)];
    for step in [32 << 10, 256 << 10] {
        rows.push((
            format!("incremental, step {} KiB", step >> 10),
            pause_bench(Mode::Incremental, step, cycles),
        ));
    }
    // Go's dedicated workers: a quarter of the CPUs, at least one (this machine: the CPUs besides the
    // mutator's, at most 3).
    let cpus = std::thread::available_parallelism().map_or(2, |n| n.get());
    let helpers = (cpus / 4).max(1);
    // The concurrent row's pauses are short enough for the machine's own interruptions (timer ticks,
    // a vCPU descheduled: tens of microseconds charged to whatever runs) to set its maximum, so it is
    // measured in 3 repetitions and the row is the one with the median maximum (all of them printed
    // below, with the machine's floor).
    let reps = if quick { 1 } else { 3 };
    let mut conc: Vec<PauseReport> = (0..reps)
        .map(|_| {
            pause_bench_with(
                Mode::Concurrent,
                0,
                cycles,
                Some(ConcurrentWorkers {
                    helpers: helpers.min(crew::THREADS),
                    start: crew::start,
                }),
            )
        })
        .collect();
    // Each repetition's max, the kind of work it was (the kind whose longest pause it is), and how
    // many of its pauses were over the target.
    let conc_maxes: Vec<(u64, &str, usize)> = conc
        .iter()
        .map(|r| {
            let kind = PauseKind::ALL
                .iter()
                .zip(&r.by_kind)
                .max_by_key(|(_, k)| k[3])
                .map_or("?", |(kind, _)| kind.name());
            (r.max, kind, r.over_target)
        })
        .collect();
    // Pauses over the target, and the time they were drawn from, over all repetitions: the row's rate
    // of pauses over the target, beside the floor's rate of busy loops over it (below).
    let conc_over: usize = conc.iter().map(|r| r.over_target).sum();
    let conc_time: u64 = conc.iter().map(|r| r.total).sum();
    conc.sort_by_key(|r| r.max);
    let conc_pauses = conc[reps / 2].pauses;
    rows.push((
        format!(
            "concurrent, {helpers} worker{}",
            if helpers > 1 { "s" } else { "" }
        ),
        conc.swap_remove(reps / 2),
    ));
    println!(
        "{:<28} {:>6} {:>8} {:>12} {:>12} {:>12} {:>12} {:>12}",
        "mode", "cycles", "pauses", "max", "p99", "p50", "GC total", "wall"
    );
    for (name, r) in &rows {
        println!(
            "{:<28} {:>6} {:>8} {:>12} {:>12} {:>12} {:>12} {:>12}",
            name,
            r.cycles,
            r.pauses,
            ms(r.max),
            ms(r.p99),
            ms(r.p50),
            ms(r.total),
            ms(r.wall)
        );
    }
    let stw_max = rows[0].1.max;
    for (name, r) in &rows[1..] {
        println!(
            "{name}: max pause = 1/{:.1} of the stop-the-world pause (target: 1/20 or less)",
            stw_max as f64 / r.max as f64
        );
    }
    if let Some((name, r)) = rows.iter().find(|(n, _)| n.starts_with("concurrent")) {
        let all: Vec<String> = conc_maxes
            .iter()
            .map(|&(m, kind, over)| format!("{} ({kind}; {over} over 0.1 ms)", ms(m)))
            .collect();
        println!(
            "{name}: max pause {} (median of {reps} repetitions' maxima: {}; target: 0.100 ms or less)",
            ms(r.max),
            all.join(", ")
        );
        // The workers' own speed, which the machine's load does not move (their CPU time): what
        // decides how much marking is left to the mutator's assists.
        println!(
            "  mark workers: {} MiB scanned in {} of their CPU time ({:.2} ns per byte); the mutator's assists: {}",
            r.worker_scan >> 20,
            ms(r.worker_cpu),
            r.worker_cpu as f64 / r.worker_scan.max(1) as f64,
            ms(r.by_kind[PauseKind::ALL.iter().position(|k| *k == PauseKind::Assist).unwrap()][4])
        );
        let per_s = |n: usize, t: u64| n as f64 * 1e9 / t.max(1) as f64;
        // A pause over the target is, at these lengths, one the machine stretched: compare how often
        // that happens per second of pauses with how often it stretches the floor's fixed-work loops,
        // one of arithmetic and one that also reads memory at random, as collector work does.
        println!(
            "  over 0.1 ms: {conc_over} concurrent pauses in {} of them ({:.1} per second of pauses)",
            ms(conc_time),
            per_s(conc_over, conc_time),
        );
        for (memory, what) in [(false, "arithmetic"), (true, "random reads of 256 MiB")] {
            let floor = timing_floor(conc_pauses, helpers, memory);
            println!(
                "  this machine's floor, a {} µs loop of {what} timed {conc_pauses} times with the same clock, {helpers} other thread{} spinning: p99.9 {}, max {}; over 0.1 ms {} times in {} ({:.1} per second)",
                FLOOR_WORK_NS / 1000,
                if helpers > 1 { "s" } else { "" },
                ms(floor.p999),
                ms(floor.max),
                floor.over_target,
                ms(floor.total),
                per_s(floor.over_target, floor.total)
            );
        }
        // Where the row's pauses come from (the median repetition): the kinds of collector work, each
        // with its own distribution (`PauseKind`). A kind's max far above its p99.9 is the machine's
        // interruption of one short pause, as the floor line shows.
        println!(
            "  by kind: {:<12} {:>8} {:>10} {:>10} {:>10} {:>12} {:>10}",
            "", "count", "p50", "p99.9", "max", "total", "over 0.1 ms"
        );
        for (kind, k) in PauseKind::ALL.iter().zip(&r.by_kind) {
            if k[0] > 0 {
                println!(
                    "           {:<12} {:>8} {:>10} {:>10} {:>10} {:>12} {:>10}",
                    kind.name(),
                    k[0],
                    ms(k[1]),
                    ms(k[2]),
                    ms(k[3]),
                    ms(k[4]),
                    k[5]
                );
            }
        }
    }
    // `-- pauses`: the pause table alone.
    if std::env::args().any(|a| a == "pauses") {
        return;
    }

    println!();
    parallel_mark_line(quick);

    let runs = if quick { 1 } else { 3 };
    println!("\n== throughput vs gc-arena (median of {runs} runs, alternating)");
    let depths: &[u32] = if quick { &[14] } else { &[16, 17, 18] };
    let go = go_binary_trees();
    for &d in depths {
        let (mut a, mut o, mut g) = (Vec::new(), Vec::new(), Vec::new());
        // The 2-CPU pair: spanalloc::gc with a mark worker on another thread, Go with GOMAXPROCS=2.
        let (mut o2, mut g2) = (Vec::new(), Vec::new());
        let (mut ca, mut co) = (0, 0);
        for _ in 0..runs {
            let heap = span_heap(2048);
            let (t, c) = time(1, || ours::binary_trees(heap, d));
            o.push(t);
            co = c;
            let (t, c) = time(1, || arena::binary_trees(d));
            a.push(t);
            ca = c;
            if let Some(go) = &go {
                let (t, c) = go_run(go, d, 1);
                assert_eq!(c, co, "binary-trees checksums differ (Go)");
                g.push(t);
                let heap = span_heap(2048);
                let (t, c) = time(1, || ours::binary_trees_with(heap, d, trees_config("stw2")));
                assert_eq!(c, co, "binary-trees checksums differ (2 CPUs)");
                o2.push(t);
                let (t, c) = go_run(go, d, 2);
                assert_eq!(c, co, "binary-trees checksums differ (Go, GOMAXPROCS=2)");
                g2.push(t);
            }
        }
        assert_eq!(ca, co, "binary-trees checksums differ");
        let (a, o) = (median(a), median(o));
        println!(
            "binary-trees {d}: spanalloc::gc {:>10}  gc-arena {:>10}  speedup {:.2}x",
            ms(o),
            ms(a),
            a as f64 / o as f64
        );
        if !g.is_empty() {
            let g = median(g);
            println!(
                "binary-trees {d}: spanalloc::gc {:>10}  Go (GOMAXPROCS=1) {:>10}  speedup {:.2}x",
                ms(o),
                ms(g),
                g as f64 / o as f64
            );
            let (o2, g2) = (median(o2), median(g2));
            println!(
                "binary-trees {d}: spanalloc::gc, stop-the-world, 2 mark workers {:>10}  Go (GOMAXPROCS=2) {:>10}  speedup {:.2}x",
                ms(o2),
                ms(g2),
                g2 as f64 / o2 as f64
            );
        }
    }
    if let Some(go) = go {
        let _ = std::fs::remove_file(go);
    }
    if !quick {
        let (mut a, mut o) = (Vec::new(), Vec::new());
        for _ in 0..runs {
            let heap = span_heap(2048);
            o.push(time(1, || ours::gcbench(heap)).0);
            a.push(time(1, arena::gcbench).0);
        }
        let (a, o) = (median(a), median(o));
        println!(
            "GCBench:         spanalloc::gc {:>10}  gc-arena {:>10}  speedup {:.2}x",
            ms(o),
            ms(a),
            a as f64 / o as f64
        );
    }
}

/// The collector's configuration for a binary-trees run: `default` (one CPU), `par` (the default mode
/// with one mark worker on another thread), `stw`, `stw2` (stop-the-world, alone or with one mark worker
/// on another thread: the "2 CPUs" rows), `conc` (concurrent marking: one worker beside the mutator,
/// and one in marks that stop it).
fn trees_config(name: &str) -> GcConfig {
    let par = Some(MarkWorkers::threads(1));
    match name {
        "default" => GcConfig::default(),
        "par" => GcConfig {
            mark_workers: par,
            ..GcConfig::default()
        },
        "stw" => GcConfig {
            mode: Mode::StopTheWorld,
            ..GcConfig::default()
        },
        "stw2" => GcConfig {
            mode: Mode::StopTheWorld,
            mark_workers: par,
            ..GcConfig::default()
        },
        "conc" => GcConfig {
            mode: Mode::Concurrent,
            mark_workers: par,
            concurrent_workers: Some(ConcurrentWorkers {
                helpers: 1,
                start: crew::start,
            }),
            ..GcConfig::default()
        },
        v => panic!("unknown binary-trees configuration {v} (default, par, stw, stw2, conc)"),
    }
}

fn main() {
    let quick = std::env::args().any(|a| a == "quick");
    // `-- trees N`: only spanalloc::gc's binary-trees at depth N, once (for profiling).
    let args: Vec<String> = std::env::args().collect();
    if let Some(d) = args
        .iter()
        .position(|a| a == "trees")
        .and_then(|i| args.get(i + 1))
    {
        let d: u32 = d.parse().expect("a depth");
        let variant = args
            .iter()
            .position(|a| a == "trees")
            .and_then(|i| args.get(i + 2));
        let cfg = trees_config(variant.map_or("default", String::as_str));
        let (t, c) = time(1, || ours::binary_trees_with(span_heap(2048), d, cfg));
        println!("binary-trees {d}: spanalloc::gc {} (check {c})", ms(t));
        return;
    }
    // `-- mark`: only the parallel-mark line.
    if std::env::args().any(|a| a == "mark") {
        return parallel_mark_line(quick);
    }
    // GCBench builds its 4 MB array on the stack before moving it into the heap.
    std::thread::Builder::new()
        .stack_size(256 << 20)
        .spawn(move || bench(quick))
        .expect("bench thread")
        .join()
        .expect("bench panicked");
}
