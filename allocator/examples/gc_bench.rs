//! Benchmarks of the garbage collector (spanalloc::gc) on the host platform:
//!
//! 1. Pause distribution at 64 MiB live: stop-the-world vs incremental (every piece of collector work
//!    the mutator waits for — cycle, start, step, assist, termination, proportional sweep — is one
//!    pause, reported through `GcConfig::pause_hook`).
//! 2. Throughput against gc-arena in the same run: binary-trees (depth 16, 17, 18) and Boehm's GCBench.
//!    gc-arena runs with its default incremental pacing, `collect_debt` after every `mutate`; spanalloc's
//!    collector with its defaults (incremental, GOGC 100), a safe point after every `mutate`. Each
//!    benchmark runs `RUNS` times per collector, alternating, and reports the median.
//!
//! Run: `cargo run --release -p spanalloc --example gc_bench --features host,gc`
//! (`-- quick` for a short smoke run; `GC_BENCH_CLOCK=wall` measures pauses in wall time instead of
//! thread CPU time; `GCTRACE=1` prints the gctrace lines of the pause runs).

use std::sync::Mutex;
use std::time::Instant;

use spanalloc::gc::{Gc, GcCell, GcConfig, GcHeap, GcRefCell, Mode, Rootable, Trace, Tracer};
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

fn record_pause(ns: u64) {
    PAUSES.lock().unwrap().push(ns);
}

// ---------------------------------------------------------------------------------------------------
// 1. Pauses

struct TNode<'gc> {
    left: GcCell<'gc, Option<Gc<'gc, TNode<'gc>>>>,
    right: GcCell<'gc, Option<Gc<'gc, TNode<'gc>>>>,
    val: u64,
}

// SAFETY: traces both Gc fields; no Drop.
unsafe impl Trace for TNode<'_> {
    fn trace(&self, t: &mut Tracer<'_>) {
        t.trace(&self.left);
        t.trace(&self.right);
    }
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
    max: u64,
    p99: u64,
    p50: u64,
    total: u64,
    wall: u64,
}

fn pause_bench(mode: Mode, step: usize, cycles: u64) -> PauseReport {
    const TREES: usize = 32;
    const DEPTH: u32 = 15; // 65535 nodes of 32 B: 2 MiB per tree, 64 MiB in all
    let cfg = GcConfig {
        mode,
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
    let start_cycles = gc.stats().cycles;
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
        if mode == Mode::Incremental {
            gc.step(step);
        }
        i += 1;
    }
    let wall = wall_ns() - t0;
    let mut p = std::mem::take(&mut *PAUSES.lock().unwrap());
    p.sort_unstable();
    let pct = |q: usize| p[(p.len() * q / 100).min(p.len() - 1)];
    PauseReport {
        cycles: gc.stats().cycles - start_cycles,
        pauses: p.len(),
        max: *p.last().unwrap(),
        p99: pct(99),
        p50: pct(50),
        total: p.iter().sum(),
        wall,
    }
}

// ---------------------------------------------------------------------------------------------------
// 2. Throughput: spanalloc::gc

mod ours {
    use super::*;

    pub struct Node<'gc> {
        pub left: Option<Gc<'gc, Node<'gc>>>,
        pub right: Option<Gc<'gc, Node<'gc>>>,
    }
    // SAFETY: traces both Gc fields; no Drop.
    unsafe impl Trace for Node<'_> {
        fn trace(&self, t: &mut Tracer<'_>) {
            t.trace(&self.left);
            t.trace(&self.right);
        }
    }

    fn bottom_up<'gc>(mc: &spanalloc::gc::Mutation<'gc>, d: u32) -> Gc<'gc, Node<'gc>> {
        if d == 0 {
            return Gc::new(
                mc,
                Node {
                    left: None,
                    right: None,
                },
            );
        }
        let (l, r) = (bottom_up(mc, d - 1), bottom_up(mc, d - 1));
        Gc::new(
            mc,
            Node {
                left: Some(l),
                right: Some(r),
            },
        )
    }

    fn check(t: Gc<'_, Node<'_>>) -> u64 {
        1 + t.left.map_or(0, check) + t.right.map_or(0, check)
    }

    pub struct Long;
    impl Rootable for Long {
        type Root<'gc> = GcCell<'gc, Option<Gc<'gc, Node<'gc>>>>;
    }

    pub fn binary_trees(heap: &'static Heap<HostPlatform>, max: u32) -> u64 {
        let mut gc: GcHeap<Long> = GcHeap::new(heap, GcConfig::default(), |_| GcCell::new(None));
        let mut out = gc.mutate(|mc, _| check(bottom_up(mc, max + 1)));
        gc.mutate(|mc, root| root.set(mc, Some(bottom_up(mc, max))));
        for d in (4..=max).step_by(2) {
            for _ in 0..1u64 << (max - d + 4) {
                out += gc.mutate(|mc, _| check(bottom_up(mc, d)));
            }
        }
        out + gc.mutate(|_, root| check(root.get().unwrap()))
    }

    pub struct BNode<'gc> {
        left: GcCell<'gc, Option<Gc<'gc, BNode<'gc>>>>,
        right: GcCell<'gc, Option<Gc<'gc, BNode<'gc>>>>,
        i: i32,
        j: i32,
    }
    // SAFETY: traces both Gc fields; no Drop.
    unsafe impl Trace for BNode<'_> {
        fn trace(&self, t: &mut Tracer<'_>) {
            t.trace(&self.left);
            t.trace(&self.right);
        }
    }

    fn leaf<'gc>(mc: &spanalloc::gc::Mutation<'gc>) -> Gc<'gc, BNode<'gc>> {
        Gc::new(
            mc,
            BNode {
                left: GcCell::new(None),
                right: GcCell::new(None),
                i: 0,
                j: 0,
            },
        )
    }

    fn populate<'gc>(mc: &spanalloc::gc::Mutation<'gc>, d: u32, n: Gc<'gc, BNode<'gc>>) {
        if d == 0 {
            return;
        }
        let (l, r) = (leaf(mc), leaf(mc));
        n.left.set(mc, Some(l));
        n.right.set(mc, Some(r));
        populate(mc, d - 1, l);
        populate(mc, d - 1, r);
    }

    fn make_tree<'gc>(mc: &spanalloc::gc::Mutation<'gc>, d: u32) -> Gc<'gc, BNode<'gc>> {
        if d == 0 {
            return leaf(mc);
        }
        let (l, r) = (make_tree(mc, d - 1), make_tree(mc, d - 1));
        Gc::new(
            mc,
            BNode {
                left: GcCell::new(Some(l)),
                right: GcCell::new(Some(r)),
                i: 0,
                j: 0,
            },
        )
    }

    pub struct BRoot;
    impl Rootable for BRoot {
        type Root<'gc> = (
            GcCell<'gc, Option<Gc<'gc, BNode<'gc>>>>,
            GcCell<'gc, Option<Gc<'gc, [f64; ARRAY]>>>,
        );
    }

    pub fn gcbench(heap: &'static Heap<HostPlatform>) -> u64 {
        let mut gc: GcHeap<BRoot> = GcHeap::new(heap, GcConfig::default(), |_| {
            (GcCell::new(None), GcCell::new(None))
        });
        gc.mutate(|mc, _| {
            make_tree(mc, STRETCH);
        });
        gc.mutate(|mc, root| {
            let long = leaf(mc);
            root.0.set(mc, Some(long));
            populate(mc, LONG_LIVED, long);
        });
        gc.mutate(|mc, root| {
            let mut a = [0f64; ARRAY];
            for (k, x) in a.iter_mut().enumerate().skip(ARRAY / 2) {
                *x = 1.0 / k as f64;
            }
            root.1.set(mc, Some(Gc::new(mc, a)));
        });
        let mut touched = 0u64;
        for d in (MIN_DEPTH..=MAX_DEPTH).step_by(2) {
            for _ in 0..num_iters(d) {
                gc.mutate(|mc, _| {
                    let t = leaf(mc);
                    populate(mc, d, t);
                    touched += t.i as u64 + t.j as u64 + 1;
                });
                gc.mutate(|mc, _| {
                    let t = make_tree(mc, d);
                    touched += t.i as u64 + t.j as u64 + 1;
                });
            }
        }
        gc.mutate(|_, root| {
            assert!(root.0.get().is_some());
            assert_eq!(root.1.get().unwrap()[1000], 0.0);
            assert_eq!(root.1.get().unwrap()[ARRAY - 1], 1.0 / (ARRAY - 1) as f64);
        });
        touched
    }
}

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
// 2. Throughput: gc-arena

mod arena {
    use super::*;
    use gc_arena::barrier::unlock;
    use gc_arena::lock::Lock;
    use gc_arena::{Arena, Collect, Gc, Mutation};

    #[derive(Collect)]
    #[collect(no_drop)]
    pub struct Node<'gc> {
        left: Option<Gc<'gc, Node<'gc>>>,
        right: Option<Gc<'gc, Node<'gc>>>,
    }

    fn bottom_up<'gc>(mc: &Mutation<'gc>, d: u32) -> Gc<'gc, Node<'gc>> {
        if d == 0 {
            return Gc::new(
                mc,
                Node {
                    left: None,
                    right: None,
                },
            );
        }
        let (l, r) = (bottom_up(mc, d - 1), bottom_up(mc, d - 1));
        Gc::new(
            mc,
            Node {
                left: Some(l),
                right: Some(r),
            },
        )
    }

    fn check(t: Gc<'_, Node<'_>>) -> u64 {
        1 + t.left.map_or(0, check) + t.right.map_or(0, check)
    }

    type Long = gc_arena::Rootable![Option<Gc<'_, Node<'_>>>];

    pub fn binary_trees(max: u32) -> u64 {
        let mut a: Arena<Long> = Arena::new(|_| None);
        let mut out = a.mutate(|mc, _| check(bottom_up(mc, max + 1)));
        a.collect_debt();
        a.mutate_root(|mc, root| *root = Some(bottom_up(mc, max)));
        a.collect_debt();
        for d in (4..=max).step_by(2) {
            for _ in 0..1u64 << (max - d + 4) {
                out += a.mutate(|mc, _| check(bottom_up(mc, d)));
                a.collect_debt();
            }
        }
        out + a.mutate(|_, root| check(root.unwrap()))
    }

    #[derive(Collect)]
    #[collect(no_drop)]
    pub struct BNode<'gc> {
        left: Lock<Option<Gc<'gc, BNode<'gc>>>>,
        right: Lock<Option<Gc<'gc, BNode<'gc>>>>,
        i: i32,
        j: i32,
    }

    fn leaf<'gc>(mc: &Mutation<'gc>) -> Gc<'gc, BNode<'gc>> {
        Gc::new(
            mc,
            BNode {
                left: Lock::new(None),
                right: Lock::new(None),
                i: 0,
                j: 0,
            },
        )
    }

    fn populate<'gc>(mc: &Mutation<'gc>, d: u32, n: Gc<'gc, BNode<'gc>>) {
        if d == 0 {
            return;
        }
        let (l, r) = (leaf(mc), leaf(mc));
        unlock!(Gc::write(mc, n), BNode, left).set(Some(l));
        unlock!(Gc::write(mc, n), BNode, right).set(Some(r));
        populate(mc, d - 1, l);
        populate(mc, d - 1, r);
    }

    fn make_tree<'gc>(mc: &Mutation<'gc>, d: u32) -> Gc<'gc, BNode<'gc>> {
        if d == 0 {
            return leaf(mc);
        }
        let (l, r) = (make_tree(mc, d - 1), make_tree(mc, d - 1));
        Gc::new(
            mc,
            BNode {
                left: Lock::new(Some(l)),
                right: Lock::new(Some(r)),
                i: 0,
                j: 0,
            },
        )
    }

    #[derive(Collect)]
    #[collect(no_drop)]
    pub struct BRoot<'gc> {
        long: Option<Gc<'gc, BNode<'gc>>>,
        array: Option<Gc<'gc, [f64; ARRAY]>>,
    }

    pub fn gcbench() -> u64 {
        let mut a: Arena<gc_arena::Rootable![BRoot<'_>]> = Arena::new(|_| BRoot {
            long: None,
            array: None,
        });
        a.mutate(|mc, _| {
            make_tree(mc, STRETCH);
        });
        a.collect_debt();
        a.mutate_root(|mc, root| {
            let long = leaf(mc);
            root.long = Some(long);
            populate(mc, LONG_LIVED, long);
        });
        a.collect_debt();
        a.mutate_root(|mc, root| {
            let mut arr = [0f64; ARRAY];
            for (k, x) in arr.iter_mut().enumerate().skip(ARRAY / 2) {
                *x = 1.0 / k as f64;
            }
            root.array = Some(Gc::new(mc, arr));
        });
        a.collect_debt();
        let mut touched = 0u64;
        for d in (MIN_DEPTH..=MAX_DEPTH).step_by(2) {
            for _ in 0..num_iters(d) {
                a.mutate(|mc, _| {
                    let t = leaf(mc);
                    populate(mc, d, t);
                    touched += t.i as u64 + t.j as u64 + 1;
                });
                a.collect_debt();
                a.mutate(|mc, _| {
                    let t = make_tree(mc, d);
                    touched += t.i as u64 + t.j as u64 + 1;
                });
                a.collect_debt();
            }
        }
        a.mutate(|_, root| {
            assert!(root.long.is_some());
            assert_eq!(root.array.unwrap()[1000], 0.0);
        });
        touched
    }
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

    let runs = if quick { 1 } else { 3 };
    println!("\n== throughput vs gc-arena (median of {runs} runs, alternating)");
    let depths: &[u32] = if quick { &[14] } else { &[16, 17, 18] };
    for &d in depths {
        let (mut a, mut o) = (Vec::new(), Vec::new());
        let (mut ca, mut co) = (0, 0);
        for _ in 0..runs {
            let heap = span_heap(2048);
            let (t, c) = time(1, || ours::binary_trees(heap, d));
            o.push(t);
            co = c;
            let (t, c) = time(1, || arena::binary_trees(d));
            a.push(t);
            ca = c;
        }
        assert_eq!(ca, co, "binary-trees checksums differ");
        let (a, o) = (median(a), median(o));
        println!(
            "binary-trees {d}: spanalloc::gc {:>10}  gc-arena {:>10}  speedup {:.2}x",
            ms(o),
            ms(a),
            a as f64 / o as f64
        );
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

fn main() {
    let quick = std::env::args().any(|a| a == "quick");
    // GCBench builds its 4 MB array on the stack before moving it into the heap.
    std::thread::Builder::new()
        .stack_size(256 << 20)
        .spawn(move || bench(quick))
        .expect("bench thread")
        .join()
        .expect("bench panicked");
}
