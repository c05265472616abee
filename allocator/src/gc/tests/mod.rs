//! Host tests of the collector: the API and each mechanism on its own here, the model-based random
//! mutator in model.rs.

mod conc;
mod derive;
mod edge;
mod model;
mod par;
mod soundness;
mod weak;

pub(super) use crate::testing::Rng;

use std::cell::RefCell;
use std::string::{String, ToString};
use std::vec::Vec;

use super::*;
use crate::host::{HostMachine, HostPlatform};
use crate::Heap;

/// A span heap over `phys_mib` MiB of fake physical memory, leaked for the `'static` it needs. Under Miri
/// the window is a plain allocation, so it is kept small there (and the heavy tests are skipped).
pub(super) fn span_heap(phys_mib: usize) -> &'static Heap<HostPlatform> {
    let (phys, window, max) = if cfg!(miri) {
        (phys_mib.min(32) << 20, 256 << 20, 64 << 20)
    } else {
        (phys_mib << 20, 4 << 30, 2 << 30)
    };
    let m = HostMachine::new(phys, window);
    let heap: &'static Heap<HostPlatform> = crate::host::leak(Heap::new(m.platform));
    heap.init(m.space, m.window, max).expect("heap init");
    heap
}

pub(super) fn now_ns() -> u64 {
    static START: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
    START
        .get_or_init(std::time::Instant::now)
        .elapsed()
        .as_nanos() as u64
}

std::thread_local! {
    /// Ids of finalized objects, in order (finalizers run on the heap's thread).
    pub(super) static FINALIZED: RefCell<Vec<u64>> = const { RefCell::new(Vec::new()) };
    static LINES: RefCell<Vec<String>> = const { RefCell::new(Vec::new()) };
}

pub(super) fn take_finalized() -> Vec<u64> {
    FINALIZED.with(|f| core::mem::take(&mut *f.borrow_mut()))
}

/// Records its id when finalized.
pub(super) struct Probe(pub(super) u64);

impl Drop for Probe {
    fn drop(&mut self) {
        FINALIZED.with(|f| f.borrow_mut().push(self.0));
    }
}

// SAFETY: holds no Gc; its Drop touches no Gc.
unsafe impl Trace for Probe {
    const NEEDS_TRACE: bool = false;
    fn trace(&self, _: &mut Tracer<'_>) {}
}

/// A list node with a finalizer.
pub(super) struct Node<'gc> {
    pub(super) id: u64,
    pub(super) next: GcCell<'gc, Option<Gc<'gc, Node<'gc>>>>,
    pub(super) _probe: Probe,
}

// SAFETY: traces its one Gc field; Probe's Drop touches no Gc.
unsafe impl<'gc> Trace for Node<'gc> {
    fn trace(&self, t: &mut Tracer<'_>) {
        t.trace(&self.next);
    }
}

pub(super) fn node<'gc>(
    mc: &Mutation<'gc>,
    id: u64,
    next: Option<Gc<'gc, Node<'gc>>>,
) -> Gc<'gc, Node<'gc>> {
    Gc::new(
        mc,
        Node {
            id,
            next: GcCell::new(next),
            _probe: Probe(id),
        },
    )
}

/// Root: a few slots.
struct Slots;
impl Rootable for Slots {
    type Root<'gc> = [GcCell<'gc, Option<Gc<'gc, Node<'gc>>>>; 4];
}

fn config() -> GcConfig {
    GcConfig {
        verify: true,
        poison: true,
        clock: Some(now_ns),
        ..GcConfig::default()
    }
}

fn slots_heap(cfg: GcConfig) -> GcHeap<Slots> {
    GcHeap::new(span_heap(256), cfg, |_| Default::default())
}

/// Ids along the list from root slot `i`.
fn list_ids(gc: &mut GcHeap<Slots>, i: usize) -> Vec<u64> {
    gc.mutate(|_, root| {
        let mut ids = Vec::new();
        let mut cur = root[i].get();
        while let Some(n) = cur {
            ids.push(n.id);
            cur = n.next.get();
        }
        ids
    })
}

#[test]
fn values_of_every_kind_read_back() {
    struct R;
    impl Rootable for R {
        type Root<'gc> = ();
    }
    let mut gc: GcHeap<R> = GcHeap::new(span_heap(64), config(), |_| ());
    gc.mutate(|mc, _| {
        let a = Gc::new(mc, 7u8);
        let b = Gc::new(mc, 0xdead_beefu32);
        let c = Gc::new(mc, [3u64; 6]);
        let big = Gc::new(mc, [9u64; 8192]);
        let n = node(mc, 1, None);
        let n2 = node(mc, 2, Some(n));
        let wide: Gc<[GcCell<_>; 5000]> =
            Gc::new(mc, core::array::from_fn(|_| GcCell::new(Some(n2))));
        assert_eq!((*a, *b), (7, 0xdead_beef));
        assert!(c.iter().all(|&x| x == 3) && big.iter().all(|&x| x == 9));
        assert!(Gc::ptr_eq(n2.next.get().unwrap(), n));
        assert!(wide.iter().all(|c| Gc::ptr_eq(c.get().unwrap(), n2)));
        // Tiny objects share a 16 B block.
        let (x, y) = (Gc::new(mc, 1u16), Gc::new(mc, 2u16));
        let gap = (y.as_ptr() as usize).wrapping_sub(x.as_ptr() as usize);
        assert_eq!(gap, 2, "consecutive u16s are packed in one tiny block");
        assert_eq!((*x, *y), (1, 2));
    });
    take_finalized();
}

#[test]
fn collect_frees_the_unreachable_and_finalizes_each_once() {
    let mut gc = slots_heap(config());
    take_finalized();
    gc.mutate(|mc, root| {
        let mut kept = None;
        for id in 0..1000 {
            let n = node(mc, id, None);
            if id % 2 == 0 {
                n.next.set(mc, kept);
                kept = Some(n);
            }
        }
        root[0].set(mc, kept);
    });
    gc.collect();
    let mut dead = take_finalized();
    dead.sort_unstable();
    assert_eq!(dead, (0..1000).filter(|i| i % 2 == 1).collect::<Vec<_>>());
    assert_eq!(list_ids(&mut gc, 0).len(), 500);
    gc.collect();
    assert!(
        take_finalized().is_empty(),
        "a second cycle finalizes nothing"
    );
    gc.mutate(|mc, root| root[0].set(mc, None));
    gc.collect();
    assert_eq!(take_finalized().len(), 500);
    drop(gc);
    assert!(take_finalized().is_empty());
}

#[test]
fn dropping_the_heap_finalizes_the_live() {
    let mut gc = slots_heap(config());
    take_finalized();
    gc.mutate(|mc, root| root[1].set(mc, Some(node(mc, 5, Some(node(mc, 6, None))))));
    drop(gc);
    let mut f = take_finalized();
    f.sort_unstable();
    assert_eq!(f, [5, 6]);
}

/// `Node`'s size without a finalizer: the same size class, so the two share spans.
pub(super) struct Plain<'gc> {
    _id: u64,
    _next: GcCell<'gc, Option<Gc<'gc, Node<'gc>>>>,
    _pad: u64,
}

// SAFETY: traces its one Gc field; no Drop.
unsafe impl<'gc> Trace for Plain<'gc> {
    fn trace(&self, t: &mut Tracer<'_>) {
        t.trace(&self._next);
    }
}

/// A `Plain` (no finalizer, `Node`'s size class).
pub(super) fn plain<'gc>(mc: &Mutation<'gc>, id: u64) -> Gc<'gc, Plain<'gc>> {
    Gc::new(
        mc,
        Plain {
            _id: id,
            _next: GcCell::new(None),
            _pad: 0,
        },
    )
}

/// A large object with a finalizer.
struct BigProbe {
    _bytes: [u64; 8192],
    _probe: Probe,
}

// SAFETY: holds no Gc; Probe's Drop touches no Gc.
unsafe impl Trace for BigProbe {
    const NEEDS_TRACE: bool = false;
    fn trace(&self, _: &mut Tracer<'_>) {}
}

#[test]
fn finalizers_run_in_spans_shared_with_objects_without_one() {
    // The sweep reads dead objects only in spans flagged at allocation as holding one with drop glue
    // (object.rs): a span whose first objects have none, flagged by a later one, and a large one.
    let n: u64 = if cfg!(miri) { 90 } else { 600 };
    for poison in [false, true] {
        let mut gc = slots_heap(GcConfig { poison, ..config() });
        take_finalized();
        gc.mutate(|mc, root| {
            let mut kept = None;
            for id in 0..n {
                let plain = plain(mc, id);
                let n = node(mc, id, None);
                let gap = (n.as_ptr() as usize).wrapping_sub(plain.as_ptr() as usize);
                if id == 0 {
                    assert_eq!(gap, 32, "the two types share a span, slot after slot");
                }
                if id % 3 == 0 {
                    n.next.set(mc, kept);
                    kept = Some(n);
                }
            }
            Gc::new(
                mc,
                BigProbe {
                    _bytes: [7; 8192],
                    _probe: Probe(1_000_000),
                },
            );
            root[0].set(mc, kept);
        });
        gc.collect();
        let mut dead = take_finalized();
        dead.sort_unstable();
        let mut want: Vec<u64> = (0..n).filter(|i| i % 3 != 0).collect();
        want.push(1_000_000);
        assert_eq!(dead, want, "poison {poison}");
        // Swept empty, a span decides anew; the survivors still have their finalizers.
        gc.mutate(|mc, root| root[0].set(mc, None));
        gc.collect();
        assert_eq!(take_finalized().len() as u64, n / 3, "poison {poison}");
        gc.mutate(|mc, root| root[0].set(mc, Some(node(mc, 7, None))));
        drop(gc);
        assert_eq!(take_finalized(), [7], "the heap's drop finalizes the live");
    }
}

#[test]
#[cfg_attr(miri, ignore = "too slow under Miri")]
fn dead_spans_go_back_to_the_page_heap_and_frames_to_the_frame_allocator() {
    let heap = span_heap(256);
    let mut gc: GcHeap<Slots> = GcHeap::new(heap, config(), |_| Default::default());
    let before = heap.stats();
    gc.mutate(|mc, root| {
        for i in 0..20_000 {
            let n = node(mc, i, root[0].get());
            root[0].set(mc, Some(n));
            Gc::new(mc, [i; 100]);
        }
    });
    let full = heap.stats();
    assert!(full.pages.in_use > before.pages.in_use + 2000);
    gc.mutate(|mc, root| root[0].set(mc, None));
    gc.collect();
    let after = gc.stats();
    assert_eq!(gc.allocated_objects(), 0);
    assert_eq!(after.pages, 0, "every span went back");
    let s = heap.stats();
    assert!(s.pages.in_use <= before.pages.in_use + 1, "{s}");
    heap.trim();
    let trimmed = heap.stats();
    assert!(
        trimmed.frames_held.0 + 4000 < full.frames_held.0,
        "frames held: {} full, {} trimmed",
        full.frames_held.0,
        trimmed.frames_held.0
    );
    take_finalized();
}

/// The collector's dead spans go back to the page heap, which keeps their pages mapped while frames are
/// plentiful (pageheap.rs, "Scavenging"); once frames are short, sweeps give pages back (in steps, down
/// to what the collector's heap goal will use again) as the page heap's peak decays.
#[test]
#[cfg_attr(miri, ignore = "too slow under Miri")]
fn dead_spans_keep_their_pages_until_frames_are_short() {
    let heap = span_heap(256);
    let mut gc: GcHeap<Slots> = GcHeap::new(
        heap,
        GcConfig {
            verify: false,
            ..config()
        },
        |_| Default::default(),
    );
    // 16 MiB live, then dead.
    gc.mutate(|mc, root| {
        for i in 0..16_000 {
            let n = node(mc, i, root[0].get());
            root[0].set(mc, Some(n));
            Gc::new(mc, [i; 120]);
        }
    });
    gc.mutate(|mc, root| root[0].set(mc, None));
    gc.collect();
    let released = |h: &Heap<HostPlatform>| h.stats().pages.released_total;
    let before = released(heap);
    // Plentiful frames: 256 MiB of garbage in cycles (16 turns of the old peak, enough for the peak to
    // decay) releases nothing.
    churn(&mut gc, 256, 100);
    assert_eq!(released(heap), before, "{}", heap.stats());
    // Frames short: the same traffic lets the peak decay and the sweeps give pages back.
    let held = crate::testing::squeeze_frames(heap);
    churn(&mut gc, 64, 100);
    let after = heap.stats();
    assert!(
        after.pages.released_total > before,
        "nothing released with frames short:\n{after}"
    );
    assert_eq!(list_ids(&mut gc, 0).len(), 100);
    crate::testing::give_back_frames(heap, held);
    take_finalized();
}

/// root[0] -> A -> W, root[1] -> B. The mark scans B first (LIFO), then the mutator moves W from A to B.
fn move_behind_the_marker(barrier: bool) {
    let mut gc = slots_heap(config());
    gc.mutate(|mc, root| {
        root[0].set(mc, Some(node(mc, 1, Some(node(mc, 99, None)))));
        root[1].set(mc, Some(node(mc, 2, None)));
    });
    gc.start_cycle();
    assert_eq!(gc.phase(), Phase::Marking);
    gc.step(1); // scans B (pushed last), leaving A grey and W white
    gc.set_barrier_off(!barrier);
    gc.mutate(|mc, root| {
        let (a, b) = (root[0].get().unwrap(), root[1].get().unwrap());
        b.next.set(mc, a.next.get());
        a.next.set(mc, None);
    });
    gc.set_barrier_off(false);
    gc.finish_mark();
    gc.collect();
    assert_eq!(list_ids(&mut gc, 1), [2, 99]);
    take_finalized();
}

#[test]
fn the_barrier_keeps_an_object_moved_behind_the_marker() {
    move_behind_the_marker(true);
}

#[test]
#[should_panic(expected = "reachable from the roots but the mark missed it")]
fn checkmark_names_an_object_the_mark_missed() {
    move_behind_the_marker(false);
}

#[test]
fn objects_allocated_while_marking_are_black() {
    let mut gc = slots_heap(config());
    take_finalized();
    gc.mutate(|mc, root| {
        let mut list = None;
        for id in 10..110 {
            list = Some(node(mc, id, list));
        }
        root[0].set(mc, list);
        root[3].set(mc, Some(node(mc, 1, None)));
    });
    gc.start_cycle();
    gc.step(1); // the root pushed node 1 last: it is scanned (black), the list is still grey
    gc.mutate(|mc, root| {
        assert!(mc.is_marking());
        let a = root[3].get().unwrap();
        a.next.set(mc, Some(node(mc, 2, Some(node(mc, 3, None)))));
    });
    gc.finish_mark(); // verification fails here if 2 and 3 were white
    while gc.step(1 << 20) == Phase::Sweeping {}
    assert_eq!(take_finalized(), [] as [u64; 0]);
    assert_eq!(list_ids(&mut gc, 3), [1, 2, 3]);
    assert_eq!(list_ids(&mut gc, 0).len(), 100);
}

#[test]
fn weak_refs_follow_their_target() {
    struct R;
    impl Rootable for R {
        type Root<'gc> = (
            GcCell<'gc, Option<Gc<'gc, Node<'gc>>>>,
            GcRefCell<'gc, Vec<GcWeak<'gc, Node<'gc>>>>,
        );
    }
    let mut gc: GcHeap<R> = GcHeap::new(span_heap(64), config(), |_| {
        (GcCell::new(None), GcRefCell::new(Vec::new()))
    });
    gc.mutate(|mc, root| {
        let (a, b) = (node(mc, 1, None), node(mc, 2, None));
        root.0.set(mc, Some(a));
        let mut w = root.1.borrow_mut(mc);
        w.push(GcWeak::new(mc, a));
        w.push(GcWeak::new(mc, b));
    });
    gc.collect();
    gc.mutate(|mc, root| {
        let w = root.1.borrow();
        assert_eq!(w[0].upgrade(mc).map(|n| n.id), Some(1));
        assert!(w[1].is_dead() && w[1].upgrade(mc).is_none());
        root.0.set(mc, None);
    });
    // Upgrading during a mark keeps an otherwise unreachable target alive.
    gc.start_cycle();
    gc.mutate(|mc, root| {
        let a = root.1.borrow()[0].upgrade(mc).unwrap();
        root.0.set(mc, Some(a));
    });
    gc.collect();
    gc.mutate(|mc, root| {
        assert_eq!(root.1.borrow()[0].upgrade(mc).map(|n| n.id), Some(1));
        root.0.set(mc, None);
    });
    gc.collect();
    gc.mutate(|mc, root| assert!(root.1.borrow()[0].upgrade(mc).is_none()));
    take_finalized();
}

#[test]
fn gctrace_writes_one_line_per_cycle() {
    fn sink(s: &str) {
        LINES.with(|l| l.borrow_mut().push(s.to_string()));
    }
    let mut gc = slots_heap(GcConfig {
        trace_sink: Some(sink),
        ..config()
    });
    gc.mutate(|mc, root| root[0].set(mc, Some(node(mc, 1, None))));
    gc.collect();
    gc.start_cycle();
    while gc.step(64) == Phase::Marking {}
    let lines = LINES.with(|l| core::mem::take(&mut *l.borrow_mut()));
    assert_eq!(lines.len(), 2, "{lines:?}");
    assert!(lines[0].starts_with("gc 1 stw: pause max "), "{}", lines[0]);
    assert!(
        lines[1].starts_with("gc 2 incr: pause max "),
        "{}",
        lines[1]
    );
    for l in &lines {
        assert!(
            l.contains(" -> ") && l.contains("goal 4.00 MiB") && l.contains("1 objects marked")
        );
    }
    take_finalized();
}

/// The number before " ms" after `key` in a gctrace line, in microseconds.
fn trace_us(line: &str, key: &str) -> u64 {
    let rest = &line[line.find(key).unwrap_or_else(|| panic!("{key} in {line}")) + key.len()..];
    let num = &rest[..rest.find(" ms").expect("ms")];
    let (ms, frac) = num.split_once('.').expect("ms with 3 decimals");
    ms.parse::<u64>().expect("ms") * 1000 + frac.parse::<u64>().expect("us")
}

#[test]
fn a_stop_the_world_line_counts_its_own_pause() {
    // A clock that advances 10 us per read: every measured interval is non-zero and deterministic.
    std::thread_local!(static TICKS: core::cell::Cell<u64> = const { core::cell::Cell::new(0) });
    fn ticking() -> u64 {
        TICKS.with(|t| t.replace(t.get() + 10_000))
    }
    fn sink(s: &str) {
        LINES.with(|l| l.borrow_mut().push(s.to_string()));
    }
    let mut gc = slots_heap(GcConfig {
        trace_sink: Some(sink),
        clock: Some(ticking),
        mode: Mode::StopTheWorld,
        ..config()
    });
    gc.mutate(|mc, root| root[0].set(mc, Some(node(mc, 1, None))));
    gc.collect();
    // An incremental cycle ended by `finish_mark`: its last pause is the whole remaining mark.
    gc.start_cycle();
    gc.finish_mark();
    let lines = LINES.with(|l| core::mem::take(&mut *l.borrow_mut()));
    assert_eq!(lines.len(), 2, "{lines:?}");
    for l in &lines {
        let (pause, mark) = (trace_us(l, "pause max "), trace_us(l, "mark "));
        assert!(pause > 0, "{l}");
        if l.contains(" stw: ") {
            // The mark is part of the stop-the-world pause.
            assert!(pause >= mark, "{l}");
        }
    }
    assert!(lines[0].contains(" stw: "), "{}", lines[0]);
    // The stop-the-world pause as the pause hook and stats see it (its eager sweep included).
    let stw_pause = trace_us(&lines[0], "pause max ") * 1000;
    assert!(gc.stats().pause_max_ns >= stw_pause);
    take_finalized();
}

/// Every pause is counted under the kind of work it was (`GcStats::by_kind`, the pause hook's
/// first argument), the kinds add up to the totals, and each mode shows the kinds it is made of.
///
/// Deterministic but for the last mode: no wall clock (a clock that ticks per read) and, for the
/// concurrent mark, a job run at once inside `start`. With a worker on a thread of its own, how many
/// cycles 16 MiB of churn completes depended on the OS: a concurrent mark ends only at a safe point
/// where no worker is inside (`Crew::try_stop`; the mutator never waits for one), so a worker thread
/// descheduled inside (3 runs in 1,000 on 2 CPUs with two busy loops beside the test) kept the first
/// mark open for the rest of the churn, every allocation meanwhile black: 0 cycles, or 1 that marked
/// ~10 MB "live" and set a trigger (15.8 MB) the churn never reached.
#[test]
#[cfg_attr(
    miri,
    ignore = "too slow under Miri: a few cycles of 16 MiB of garbage per mode"
)]
fn pauses_are_counted_by_kind() {
    use std::time::{Duration, Instant};
    std::thread_local!(static HOOKED: core::cell::RefCell<[u64; 9]> = const {
        core::cell::RefCell::new([0; 9])
    });
    std::thread_local!(static TICKS: core::cell::Cell<u64> = const { core::cell::Cell::new(0) });
    fn hook(kind: PauseKind, _: u64) {
        HOOKED.with(|h| h.borrow_mut()[kind as usize] += 1);
    }
    // 1 us per read: every pause is non-zero, and a table slice (`conc::SLICE_NS`) does the same
    // units in every run, however the machine is loaded.
    fn ticking() -> u64 {
        TICKS.with(|t| t.replace(t.get() + 1_000))
    }
    // The job's whole run at the safe point that starts it (on the heap's thread: `HOOKED` and
    // `TICKS` are its), so each of the concurrent mark's steps — table slices, the hand-over, the
    // crew's stop and the merge — comes at the same safe point in every run.
    fn at_once(job: MarkJob) {
        job.run();
    }
    for (i, k) in PauseKind::ALL.iter().enumerate() {
        assert_eq!(*k as usize, i, "PauseKind::ALL is in declaration order");
    }
    let at_once = ConcurrentWorkers {
        helpers: 1,
        start: at_once,
    };
    // The last field: a worker on a thread of its own (the only run that depends on timing).
    let modes = [
        (Mode::StopTheWorld, None, Stress::None, false),
        (Mode::Incremental, None, Stress::None, false),
        // Stress mode's step at every allocation stands for an assist.
        (Mode::Incremental, None, Stress::StepEveryAlloc(64), false),
        (Mode::Concurrent, Some(at_once), Stress::None, false),
        (
            Mode::Concurrent,
            Some(ConcurrentWorkers::threads(1)),
            Stress::None,
            true,
        ),
    ];
    for (mode, concurrent_workers, stress, threads) in modes {
        HOOKED.with(|h| *h.borrow_mut() = [0; 9]);
        let mut gc = slots_heap(GcConfig {
            mode,
            concurrent_workers,
            stress,
            pause_hook: Some(hook),
            clock: Some(ticking),
            verify: false,
            ..config()
        });
        churn(&mut gc, 16, 1000);
        if threads {
            // How long the worker thread's marks stay open is the OS's to say (above): more safe
            // points until two cycles are done. While a mark runs they allocate nothing (its end
            // needs safe points, not allocation, and the heap does not grow while the worker is
            // away) and give up the CPU so that a descheduled worker runs; between marks, a MiB of
            // churn brings the next one. Bounded, so that a mark that never ends fails the test.
            let t = Instant::now();
            while gc.stats().cycles < 2 {
                assert!(
                    t.elapsed() < Duration::from_secs(60),
                    "worker threads: a mark never ended: {:?}",
                    gc.stats()
                );
                if gc.phase() == Phase::Marking {
                    std::thread::sleep(Duration::from_millis(1));
                    gc.mutate(|_, _| ());
                } else {
                    churn(&mut gc, 1, 1000);
                }
            }
        }
        if mode == Mode::Incremental {
            // Explicit steps in a running cycle.
            gc.start_cycle();
            gc.step(4096);
            gc.finish_mark();
        }
        let s = gc.stats();
        let of = |k: PauseKind| s.pauses_of(k).count;
        assert_eq!(s.by_kind().map(|(_, k)| k.count).sum::<u64>(), s.pauses);
        assert_eq!(
            s.by_kind().map(|(_, k)| k.total_ns).sum::<u64>(),
            s.pause_total_ns
        );
        assert_eq!(
            s.by_kind().map(|(_, k)| k.max_ns).max(),
            Some(s.pause_max_ns)
        );
        let hooked = HOOKED.with(|h| *h.borrow());
        for k in PauseKind::ALL {
            assert_eq!(
                hooked[k as usize],
                of(k),
                "{mode:?}: the hook's {} pauses",
                k.name()
            );
        }
        assert!(s.cycles >= 2, "{mode:?}: {} cycles: {s:?}", s.cycles);
        assert_eq!(
            of(PauseKind::Assist),
            s.assists,
            "{mode:?} {stress:?}: every assist is a pause"
        );
        match mode {
            Mode::StopTheWorld => {
                assert_eq!(of(PauseKind::StopTheWorld), s.cycles, "{s:?}");
                for k in PauseKind::ALL {
                    if k != PauseKind::StopTheWorld && k != PauseKind::Sweep {
                        assert_eq!(of(k), 0, "stop-the-world: {} pauses", k.name());
                    }
                }
            }
            Mode::Incremental => {
                for k in [
                    PauseKind::Start,
                    PauseKind::Assist,
                    PauseKind::Sweep,
                    PauseKind::Step,
                    PauseKind::Termination,
                ] {
                    assert!(of(k) > 0, "incremental: no {} pause: {s:?}", k.name());
                }
                for k in [
                    PauseKind::StopTheWorld,
                    PauseKind::Table,
                    PauseKind::Handover,
                ] {
                    assert_eq!(of(k), 0, "incremental: {} pauses", k.name());
                }
            }
            Mode::Concurrent => {
                for k in [
                    PauseKind::Start,
                    PauseKind::Table,
                    PauseKind::Handover,
                    PauseKind::Termination,
                ] {
                    assert!(of(k) > 0, "concurrent: no {} pause: {s:?}", k.name());
                }
                if !threads {
                    // The hand-overs gave the job work, and it marked (a job run inside `start`
                    // always runs).
                    assert!(s.concurrent_scan_bytes > 0, "{s:?}");
                }
            }
        }
        drop(gc);
        take_finalized();
    }
}

/// Allocates `mib` MiB of garbage in many `mutate` calls, keeping a list of `keep` nodes alive.
fn churn(gc: &mut GcHeap<Slots>, mib: usize, keep: u64) {
    gc.mutate(|mc, root| {
        let mut head = None;
        for id in 0..keep {
            head = Some(node(mc, id, head));
        }
        root[0].set(mc, head);
    });
    for _ in 0..mib * 64 {
        gc.mutate(|mc, _| {
            for i in 0..256 {
                Gc::new(mc, [i as u64; 8]);
            }
        });
    }
}

#[test]
#[cfg_attr(miri, ignore = "too slow under Miri")]
fn the_pacer_runs_cycles_and_keeps_the_heap_near_its_goal() {
    // Concurrent with a `start` that never runs a job: assists do all the marking.
    fn drop_it(job: MarkJob) {
        drop(job);
    }
    for mode in [Mode::Incremental, Mode::StopTheWorld, Mode::Concurrent] {
        let mut gc = slots_heap(GcConfig {
            mode,
            verify: false,
            concurrent_workers: Some(ConcurrentWorkers {
                helpers: 1,
                start: drop_it,
            }),
            ..config()
        });
        churn(&mut gc, 64, 20_000);
        let s = gc.stats();
        assert!(s.cycles >= 8, "{mode:?}: {s:?}");
        assert!(s.pages * crate::PAGE_SIZE < 3 * MIN_HEAP, "{mode:?}: {s:?}");
        assert_eq!(list_ids(&mut gc, 0).len(), 20_000);
        if mode != Mode::StopTheWorld {
            assert!(s.assists > 0, "{s:?}");
        }
        take_finalized();
    }
}

/// A cycle asked for while the last one's sweep is unfinished starts only once the sweep is done, which
/// the safe points do in bounded slices meanwhile (the cycle start would otherwise sweep it all at once,
/// a pause of O(heap)); nothing reachable is lost.
#[test]
#[cfg_attr(miri, ignore = "too slow under Miri")]
fn a_cycle_asked_for_while_sweeping_waits_for_the_sweep_in_slices() {
    let mut gc = slots_heap(GcConfig {
        mode: Mode::Incremental,
        gogc: None,
        clock: None,
        ..config()
    });
    churn(&mut gc, 4, 100);
    gc.start_cycle();
    gc.finish_mark();
    let unswept = gc.stats().unswept_pages;
    assert!(unswept > 32, "{unswept} unswept pages");
    gc.request_cycle();
    let mut safepoints = 0;
    while gc.phase() == Phase::Sweeping {
        let before = gc.stats().unswept_pages;
        gc.mutate(|_, _| {});
        safepoints += 1;
        let after = gc.stats().unswept_pages;
        assert!(after < before || after == 0, "a safe point swept nothing");
        // Without a clock a slice is 16 pages (one span may be larger).
        assert!(
            before - after <= 16 + 8,
            "{} pages swept at once",
            before - after
        );
    }
    assert!(safepoints > 1, "the sweep was finished in one safe point");
    // The next safe point starts the cycle.
    assert_eq!(gc.phase(), Phase::Idle);
    gc.mutate(|_, _| {});
    assert_eq!(
        gc.phase(),
        Phase::Marking,
        "the cycle did not start after the sweep"
    );
    gc.finish_mark();
    assert_eq!(list_ids(&mut gc, 0).len(), 100);
    take_finalized();
}

#[test]
#[cfg_attr(miri, ignore = "too slow under Miri")]
fn gogc_off_never_collects_and_a_memory_limit_still_does() {
    let mut gc = slots_heap(GcConfig {
        gogc: None,
        ..config()
    });
    churn(&mut gc, 16, 10);
    assert_eq!(gc.stats().cycles, 0);
    gc.set_memory_limit(Some(8 << 20));
    gc.collect();
    churn(&mut gc, 32, 10);
    let s = gc.stats();
    assert!(s.cycles >= 3, "{s:?}");
    assert!(s.pages * crate::PAGE_SIZE <= 10 << 20, "{s:?}");
    take_finalized();
}

#[test]
#[cfg_attr(miri, ignore = "too slow under Miri")]
fn a_grey_stack_overflow_is_recovered_by_rescanning() {
    type Wide<'gc> = [GcCell<'gc, Option<Gc<'gc, Node<'gc>>>>; 3000];
    struct R;
    impl Rootable for R {
        type Root<'gc> = GcCell<'gc, Option<Gc<'gc, Wide<'gc>>>>;
    }
    for mode in [Mode::Incremental, Mode::StopTheWorld] {
        let mut gc: GcHeap<R> = GcHeap::new(span_heap(64), GcConfig { mode, ..config() }, |_| {
            GcCell::new(None)
        });
        gc.set_grey_limit(1); // 1022 entries: the 3000 children overflow it
        take_finalized();
        gc.mutate(|mc, root| {
            let wide: Gc<Wide> = Gc::new(
                mc,
                core::array::from_fn(|i| {
                    GcCell::new(Some(node(
                        mc,
                        i as u64,
                        Some(node(mc, 10_000 + i as u64, None)),
                    )))
                }),
            );
            root.set(mc, Some(wide));
        });
        gc.collect();
        assert!(
            take_finalized().is_empty(),
            "{mode:?}: a reachable node was freed"
        );
        gc.mutate(|mc, root| {
            let wide = root.get().unwrap();
            for (i, c) in wide.iter().enumerate() {
                let n = c.get().unwrap();
                assert_eq!(
                    (n.id, n.next.get().unwrap().id),
                    (i as u64, 10_000 + i as u64)
                );
                if i % 2 == 1 {
                    c.set(mc, None);
                }
            }
        });
        gc.collect();
        assert_eq!(take_finalized().len(), 3000, "{mode:?}");
    }
}

/// `Node`'s size class, no `Drop` impl, drop glue only through a field (an `Rc`).
struct FieldDrop<'gc> {
    _next: GcCell<'gc, Option<Gc<'gc, Node<'gc>>>>,
    _rc: std::rc::Rc<()>,
    _pad: u64,
}
// SAFETY: traces its Gc field; the Rc's drop touches no Gc.
unsafe impl<'gc> Trace for FieldDrop<'gc> {
    fn trace(&self, t: &mut Tracer<'_>) {
        t.trace(&self._next);
    }
}

/// Objects with and without drop glue interleaved at random in shared spans (`Span::finalizers`), in
/// every mode (stop-the-world, incremental steps, concurrent with workers), cycles started and finished
/// at random while allocating: every `Node` is finalized exactly once (at death or the heap's drop),
/// none while reachable, and every field-only drop runs.
#[test]
#[cfg_attr(
    miri,
    ignore = "too slow under Miri (finalizers_run_in_spans_shared_with_objects_without_one runs)"
)]
fn mixed_spans_finalize_exactly_once_in_every_mode() {
    use std::collections::BTreeSet;
    let modes: [(&str, GcConfig); 4] = [
        (
            "stw",
            GcConfig {
                mode: Mode::StopTheWorld,
                ..config()
            },
        ),
        (
            "incr",
            GcConfig {
                mode: Mode::Incremental,
                min_heap: 256 << 10,
                ..config()
            },
        ),
        (
            "incr-nopoison",
            GcConfig {
                mode: Mode::Incremental,
                poison: false,
                min_heap: 256 << 10,
                ..config()
            },
        ),
        (
            "conc",
            GcConfig {
                mode: Mode::Concurrent,
                concurrent_workers: Some(ConcurrentWorkers::threads(2)),
                min_heap: 256 << 10,
                ..config()
            },
        ),
    ];
    for (name, cfg) in modes {
        let rc = std::rc::Rc::new(());
        let mut gc = slots_heap(cfg);
        take_finalized();
        let mut rng: u64 = 0x1234_5678_9abc_def1;
        let mut next = || {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            rng
        };
        let mut id = 0u64;
        let mut finalized = BTreeSet::new();
        let mut allocated = 0u64;
        for round in 0..60 {
            let r0 = next();
            let r1 = next();
            let r2 = next();
            let seq: Vec<u64> = (0..3000).map(|_| next()).collect();
            gc.mutate(|mc, root| {
                if r0 % 3 == 0 {
                    root[(r1 % 4) as usize].set(mc, None);
                }
                for (k, &r) in seq.iter().enumerate() {
                    match r % 4 {
                        0 | 1 => {
                            plain(mc, r);
                        }
                        2 => {
                            Gc::new(
                                mc,
                                FieldDrop {
                                    _next: GcCell::new(None),
                                    _rc: rc.clone(),
                                    _pad: 0,
                                },
                            );
                        }
                        _ => {
                            let slot = (r >> 8) as usize % 4;
                            let n = node(mc, id, None);
                            id += 1;
                            allocated += 1;
                            if (r >> 16) % 3 == 0 || k == seq.len() - 1 {
                                n.next.set(mc, root[slot].get());
                                root[slot].set(mc, Some(n));
                            }
                        }
                    }
                }
            });
            match r2 % 5 {
                0 => gc.collect(),
                1 => gc.start_cycle(),
                2 => {
                    gc.step(1 << 14);
                }
                _ => {}
            }
            let reach: BTreeSet<u64> = (0..4).flat_map(|i| list_ids(&mut gc, i)).collect();
            for f in take_finalized() {
                assert!(
                    finalized.insert(f),
                    "{name}: node {f} finalized twice (round {round})"
                );
                assert!(!reach.contains(&f), "{name}: reachable node {f} finalized");
            }
        }
        gc.collect();
        gc.collect();
        let reach: BTreeSet<u64> = (0..4).flat_map(|i| list_ids(&mut gc, i)).collect();
        for f in take_finalized() {
            assert!(finalized.insert(f), "{name}: node {f} finalized twice");
            assert!(!reach.contains(&f), "{name}: reachable node {f} finalized");
        }
        assert_eq!(
            finalized.len() + reach.len(),
            allocated as usize,
            "{name}: after two full collections, the unreachable are all finalized"
        );
        drop(gc);
        for f in take_finalized() {
            assert!(
                finalized.insert(f),
                "{name}: node {f} finalized twice at drop"
            );
        }
        assert_eq!(
            finalized.len() as u64,
            allocated,
            "{name}: every node finalized once"
        );
        assert_eq!(
            std::rc::Rc::strong_count(&rc),
            1,
            "{name}: every field-only drop ran"
        );
    }
}
