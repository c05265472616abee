//! Concurrent marking (conc.rs) on host threads: a mutator that keeps rewriting cells and growing and
//! shrinking `GcRefCell<Vec<_>>`s while workers trace them, checked against a model after every round
//! and by the checkmark after every mark; whatever `start` does with the jobs (run them at once, late,
//! after the heap is gone, never; a worker that panics), the mark is complete. The model test has a concurrent variant too (model.rs).

use std::collections::BTreeMap;
use std::vec::Vec;

use super::{config, now_ns, span_heap, take_finalized, Probe, Rng};
use crate::gc::conc::{TablePhase, CHUNK_PATIENCE};
use crate::gc::*;

/// An item: its id and a link to another item (rewired by the mutator while workers run), twice: in
/// a one-word cell (`link`, which workers read with an atomic load) and in a two-word one (`back`: the
/// link and its target's id, or `u64::MAX`; workers read it under its stripe lock).
struct Item<'gc> {
    id: u64,
    link: GcCell<'gc, Option<Gc<'gc, Item<'gc>>>>,
    back: GcCell<'gc, (Option<Gc<'gc, Item<'gc>>>, u64)>,
    _probe: Probe,
}

// SAFETY: traces its Gc fields; Probe's Drop touches no Gc.
unsafe impl Trace for Item<'_> {
    fn trace(&self, t: &mut Tracer<'_>) {
        t.trace(&self.link);
        t.trace(&self.back);
    }
}

/// `Item::back`'s value for a link to `to`.
fn back<'gc>(to: Option<Gc<'gc, Item<'gc>>>) -> (Option<Gc<'gc, Item<'gc>>>, u64) {
    (to, to.map_or(u64::MAX, |t| t.id))
}

/// A bag of items whose vector the mutator reallocates while workers may trace it.
struct Bag<'gc> {
    items: GcRefCell<'gc, Vec<Gc<'gc, Item<'gc>>>>,
}

// SAFETY: traces its one traced field.
unsafe impl Trace for Bag<'_> {
    fn trace(&self, t: &mut Tracer<'_>) {
        t.trace(&self.items);
    }
}

const BAGS: usize = 8;

struct Bags;
impl Rootable for Bags {
    type Root<'gc> = [GcCell<'gc, Option<Gc<'gc, Bag<'gc>>>>; BAGS];
}

/// The model: the ids in each bag, in order, and each item's link.
#[derive(Default)]
struct Model {
    bags: [Vec<u64>; BAGS],
    links: BTreeMap<u64, Option<u64>>,
    next: u64,
}

fn item<'gc>(mc: &Mutation<'gc>, id: u64, link: Option<Gc<'gc, Item<'gc>>>) -> Gc<'gc, Item<'gc>> {
    Gc::new(
        mc,
        Item {
            id,
            link: GcCell::new(link),
            back: GcCell::new(back(link)),
            _probe: Probe(id),
        },
    )
}

/// One round of mutation: `ops` random pushes, moves between bags, pops, relinks and bag swaps.
fn mutate(gc: &mut GcHeap<Bags>, m: &mut Model, rng: &mut Rng, ops: usize) {
    gc.mutate(|mc, root| {
        let mut bags: Vec<Gc<'_, Bag<'_>>> = root.iter().map(|b| b.get().unwrap()).collect();
        for _ in 0..ops {
            let b = rng.below(BAGS as u64) as usize;
            match rng.below(10) {
                0..=3 => {
                    // Push a new item linked to a random one of another bag (old or new: black).
                    let o = rng.below(BAGS as u64) as usize;
                    let target = {
                        let other = bags[o].items.borrow();
                        (!other.is_empty()).then(|| other[rng.below(other.len() as u64) as usize])
                    };
                    let id = m.next;
                    m.next += 1;
                    bags[b].items.borrow_mut(mc).push(item(mc, id, target));
                    m.bags[b].push(id);
                    m.links.insert(id, target.map(|t| t.id));
                }
                4..=6 => {
                    // Move an old item to another bag: only the Gc on the stack holds it in between (the
                    // barrier of the `borrow_mut` that takes it out shaded it).
                    let o = rng.below(BAGS as u64) as usize;
                    let taken = {
                        let mut from = bags[b].items.borrow_mut(mc);
                        let len = from.len() as u64;
                        (len > 0).then(|| from.swap_remove(rng.below(len) as usize))
                    };
                    if let Some(x) = taken {
                        Gc::new(mc, [x.id; 8]); // allocation while it is only on the stack
                        bags[o].items.borrow_mut(mc).push(x);
                        let pos = m.bags[b].iter().position(|&i| i == x.id).unwrap();
                        m.bags[b].swap_remove(pos);
                        m.bags[o].push(x.id);
                    }
                }
                7 => {
                    let popped = bags[b].items.borrow_mut(mc).pop();
                    if let Some(x) = popped {
                        assert_eq!(m.bags[b].pop(), Some(x.id));
                    }
                }
                8 => {
                    // Relink an item to another (or to nothing): the old link is cut.
                    let items = bags[b].items.borrow();
                    if !items.is_empty() {
                        let x = items[rng.below(items.len() as u64) as usize];
                        let to = (rng.below(3) != 0)
                            .then(|| items[rng.below(items.len() as u64) as usize]);
                        x.link.set(mc, to);
                        x.back.set(mc, back(to));
                        m.links.insert(x.id, to.map(|t| t.id));
                    }
                }
                _ => {
                    // Replace a bag in the root by a fresh one holding the same items (the old one is
                    // garbage now, its vector still traced by a worker perhaps).
                    let fresh = Gc::new(
                        mc,
                        Bag {
                            items: GcRefCell::new(bags[b].items.borrow().clone()),
                        },
                    );
                    root[b].set(mc, Some(fresh));
                    bags[b] = fresh;
                }
            }
        }
    });
}

/// The heap holds exactly what the model says, links included.
fn check(gc: &mut GcHeap<Bags>, m: &Model) {
    gc.mutate(|_, root| {
        for (b, bag) in root.iter().enumerate() {
            let bag = bag.get().unwrap();
            let items = bag.items.borrow();
            let ids: Vec<u64> = items.iter().map(|x| x.id).collect();
            assert_eq!(ids, m.bags[b], "bag {b}");
            for x in items.iter() {
                assert_eq!(
                    x.link.get().map(|t| t.id),
                    m.links[&x.id],
                    "link of {}",
                    x.id
                );
                let (to, to_id) = x.back.get();
                assert_eq!(to.map(|t| t.id), m.links[&x.id], "back link of {}", x.id);
                assert_eq!(to_id, to.map_or(u64::MAX, |t| t.id), "back id of {}", x.id);
                if let Some(t) = x.link.get() {
                    // The target is alive (checked by poisoning too): its own link reads sanely.
                    assert_eq!(t.link.get().map(|u| u.id), m.links[&t.id]);
                }
            }
        }
    });
}

fn concurrent_config(workers: ConcurrentWorkers) -> GcConfig {
    GcConfig {
        mode: Mode::Concurrent,
        concurrent_workers: Some(workers),
        min_heap: 256 << 10,
        ..config()
    }
}

/// The root of a fresh heap: `BAGS` empty bags.
fn new_bags<'gc>(mc: &Mutation<'gc>) -> <Bags as Rootable>::Root<'gc> {
    core::array::from_fn(|_| {
        GcCell::new(Some(Gc::new(
            mc,
            Bag {
                items: GcRefCell::new(Vec::new()),
            },
        )))
    })
}

/// Puts items `0..items` in the bags (round robin, each linked to its bag's previous item) and returns
/// the model of that; finalizations so far are forgotten.
fn fill_bags(gc: &mut GcHeap<Bags>, items: u64) -> Model {
    take_finalized();
    let mut m = Model::default();
    gc.mutate(|mc, root| {
        for id in 0..items {
            let b = (id % BAGS as u64) as usize;
            let bag = root[b].get().unwrap();
            let link = bag.items.borrow().last().copied();
            bag.items.borrow_mut(mc).push(item(mc, id, link));
            m.bags[b].push(id);
            m.links.insert(id, link.map(|l| l.id));
        }
    });
    m.next = items;
    m
}

/// Builds the bags, then runs `rounds` rounds of `ops` mutations each, with cycles started often.
fn run(workers: ConcurrentWorkers, items: u64, rounds: usize, ops: usize) -> GcStats {
    let mut gc: GcHeap<Bags> = GcHeap::new(span_heap(256), concurrent_config(workers), new_bags);
    let mut m = fill_bags(&mut gc, items);
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    for r in 0..rounds {
        if r % 4 == 0 {
            gc.start_cycle();
        }
        mutate(&mut gc, &mut m, &mut rng, ops);
        check(&mut gc, &m);
    }
    gc.collect();
    check(&mut gc, &m);
    // Every finalized item is unreachable in the model.
    let reachable: std::collections::BTreeSet<u64> = {
        let mut seen = std::collections::BTreeSet::new();
        let mut stack: Vec<u64> = m.bags.iter().flatten().copied().collect();
        while let Some(id) = stack.pop() {
            if seen.insert(id) {
                stack.extend(m.links[&id]);
            }
        }
        seen
    };
    for id in take_finalized() {
        assert!(
            !reachable.contains(&id),
            "reachable item {id} was finalized"
        );
    }
    gc.stats()
}

/// The mutator runs through every phase of the side table (preparing, building, open, merging; one
/// unit of its work per safe point, none in assists) rewriting cells, moving items and taking new spans
/// in each, with workers on; the model after every `mutate` and the checkmark after every mark find
/// nothing lost.
#[test]
fn mutations_in_every_table_phase_lose_nothing() {
    let (items, _, ops) = sizes();
    // Under Miri a small heap: its fake memory is what the process's memory is made of.
    let mut gc: GcHeap<Bags> = GcHeap::new(
        span_heap(if cfg!(miri) { 64 } else { 256 }),
        concurrent_config(ConcurrentWorkers::threads(1)),
        new_bags,
    );
    gc.set_table_one_unit(true);
    // Each phase lasts several `mutate`s however the heap's size changes (assists that build the
    // table have a test of their own).
    gc.set_table_assists_off(true);
    let mut m = fill_bags(&mut gc, items);
    let mut rng = Rng(0x2545_F491_4F6C_DD1D);
    gc.collect();
    for _ in 0..2 {
        gc.start_cycle();
        let mut seen = Vec::new();
        let spans_before = gc.stats().pages;
        let mut look = |gc: &mut GcHeap<Bags>| {
            if let Some(p) = gc.table_phase() {
                if seen.last() != Some(&p) {
                    seen.push(p);
                }
            }
        };
        // Every safe point may change the phase: look after each.
        while gc.phase() == Phase::Marking {
            look(&mut gc);
            mutate(&mut gc, &mut m, &mut rng, ops / 4);
            look(&mut gc);
            // A large object: a span taken from the source in every phase.
            gc.mutate(|mc, _| assert_eq!(Gc::new(mc, [7u64; 8192])[8191], 7));
            look(&mut gc);
            check(&mut gc, &m);
        }
        assert_eq!(
            seen,
            [
                TablePhase::Preparing,
                TablePhase::Building,
                TablePhase::Open,
                TablePhase::Merging
            ],
            "the table's phases"
        );
        assert!(
            gc.stats().pages > spans_before,
            "no span was taken during the mark"
        );
    }
    gc.collect();
    check(&mut gc, &m);
    assert!(gc.stats().concurrent_jobs > 0);
}

fn sizes() -> (u64, usize, usize) {
    if cfg!(miri) {
        (24, 6, 12)
    } else {
        (8_000, 120, 1_000)
    }
}

#[test]
fn concurrent_marks_keep_everything_reachable() {
    let (items, rounds, ops) = sizes();
    let stats = run(ConcurrentWorkers::threads(2), items, rounds, ops);
    assert!(stats.cycles >= 3, "only {} cycles", stats.cycles);
    assert!(
        stats.concurrent_jobs > 0 && stats.concurrent_scan_bytes > 0,
        "the workers never marked beside the mutator: {stats:?}"
    );
}

/// Marks one cycle of a heap of `items` items with `workers`, mutating as it goes, and returns its
/// side table's chunks and how many of them the workers took. `must_end`: the mark must end at a safe
/// point of its own (else, under Miri, it is ended after a few).
fn table_chunks_with(workers: ConcurrentWorkers, items: u64, must_end: bool) -> (usize, usize) {
    let mut gc: GcHeap<Bags> = GcHeap::new(span_heap(64), concurrent_config(workers), new_bags);
    let mut m = fill_bags(&mut gc, items);
    let mut rng = Rng(0x853C_49E6_748F_EA9B);
    gc.collect();
    gc.start_cycle();
    // Under Miri a safe point of this test costs about a second: a few safe points (enough
    // for the chunks' hand-over, and for the heap's patience to run out), then a forced end.
    let most = if cfg!(miri) {
        CHUNK_PATIENCE + 4
    } else {
        100_000
    };
    let mut safepoints = 0;
    while gc.phase() == Phase::Marking && safepoints < most {
        mutate(&mut gc, &mut m, &mut rng, if cfg!(miri) { 8 } else { 64 });
        safepoints += 1;
    }
    assert!(
        (cfg!(miri) && !must_end) || gc.phase() != Phase::Marking,
        "the mark never ended"
    );
    gc.finish_mark();
    check(&mut gc, &m);
    let chunks = gc
        .table_chunks()
        .expect("a concurrent mark made a side table");
    drop(gc);
    take_finalized();
    chunks
}

/// The side table's chunks come from the workers (a fresh page can cost the mutator tens of
/// microseconds to map); with a `start` that never runs a job, the heap takes them itself after
/// waiting a few safe points, and the mark still completes (under Miri that second mark is ended by
/// `finish_mark` after a few safe points: it needs some 160 at Miri's sizes).
#[test]
fn a_concurrent_table_takes_its_chunks_from_the_workers() {
    fn drop_it(job: MarkJob) {
        drop(job);
    }
    fn at_once(job: MarkJob) {
        job.run();
    }
    // Under Miri the job runs at once on the heap's thread: the same hand-over of chunks through
    // `ready`, without a thread spawned per job (which took Miri four minutes).
    let (items, workers) = if cfg!(miri) {
        (
            24,
            ConcurrentWorkers {
                helpers: 1,
                start: at_once,
            },
        )
    } else {
        (20_000, ConcurrentWorkers::threads(1))
    };
    // The workers' chunks let the mark end in a few safe points, under Miri too.
    let (chunks, adopted) = table_chunks_with(workers, items, true);
    assert!(
        chunks > 0 && adopted > 0,
        "{adopted} of {chunks} chunks from the workers"
    );
    let (chunks, adopted) = table_chunks_with(
        ConcurrentWorkers {
            helpers: 1,
            start: drop_it,
        },
        items,
        false,
    );
    assert!(chunks > 0, "no table");
    assert_eq!(adopted, 0, "chunks from workers that never ran");
}

/// A concurrent heap of `items` items whose mark has just opened its crew: the table built by steps,
/// jobs started with `workers.start`.
fn opened_mark(config: GcConfig, items: u64) -> (GcHeap<Bags>, Model) {
    let mut gc: GcHeap<Bags> = GcHeap::new(span_heap(64), config, new_bags);
    let m = fill_bags(&mut gc, items);
    gc.collect();
    gc.start_cycle();
    let mut steps = 0;
    while gc.table_phase().is_some_and(|p| p != TablePhase::Open) {
        gc.step(4096);
        steps += 1;
        assert!(steps < 100_000, "the table never opened");
    }
    assert!(gc.cell_locks_on(), "the crew is open");
    (gc, m)
}

/// A stand-in for workers descheduled while each holds a stripe: a thread that holds every stripe
/// lock for `held`; returns once they are all held.
fn hold_every_stripe(held: std::time::Duration) -> std::thread::JoinHandle<()> {
    let (locked_tx, locked_rx) = std::sync::mpsc::channel();
    let holder = std::thread::spawn(move || {
        let all = crate::gc::cell::AllStripes::lock();
        locked_tx.send(()).unwrap();
        std::thread::sleep(held);
        drop(all);
    });
    locked_rx.recv().unwrap();
    holder
}

fn drop_job(job: MarkJob) {
    drop(job);
}

/// The mutator's own tracing (assists, steps, termination) reads cells without their stripe locks even
/// while workers may run: it is their only writer. With the locks, a worker descheduled while holding a
/// stripe made an assist spin until the worker ran again (1.9-2.6 ms pauses in gc_bench).
#[test]
#[cfg_attr(miri, ignore = "holds the locks for a time, on a thread")]
fn the_mutators_tracing_never_waits_for_a_workers_stripe() {
    use std::time::{Duration, Instant};
    // No job ever runs: every grey object is the mutator's to trace.
    let workers = ConcurrentWorkers {
        helpers: 1,
        start: drop_job,
    };
    let (mut gc, m) = opened_mark(concurrent_config(workers), 2_000);
    let held = Duration::from_millis(600);
    let holder = hold_every_stripe(held);
    let t = Instant::now();
    // The mutator marks what is grey (its steps drain, and trace every cell of the bags' items).
    while gc.phase() == Phase::Marking && t.elapsed() < held {
        gc.step(1 << 20);
    }
    let took = t.elapsed();
    holder.join().unwrap();
    assert!(
        took < held / 2,
        "the mutator's mark waited {took:?} for the stripes a worker held"
    );
    gc.finish_mark();
    check(&mut gc, &m);
    drop(gc);
    take_finalized();
}

/// The pause of a cell write that waited for a worker's copy is counted (clock, pause hook: user code)
/// after the cell's stripe is released: user code never runs under a stripe, where a job the hook ran
/// on this thread would spin on it for good.
///
/// The stand-in worker holds the stripes until the write waits for them, not for a fixed time: with a
/// 50 ms hold, a mutator that got no CPU for 50 ms (an oversubscribed machine: 2 runs in 150 with 24
/// busy loops on 2 CPUs) wrote after the hold and never waited, and the test failed ("MAX: never").
#[test]
#[cfg_attr(miri, ignore = "holds the locks for a time, on a thread")]
fn a_cell_wait_is_counted_after_its_stripe_is_released() {
    use core::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    use std::time::{Duration, Instant};
    static CELL: AtomicUsize = AtomicUsize::new(0);
    static SEEN_HELD: AtomicUsize = AtomicUsize::new(usize::MAX);
    // The write has begun to wait for its stripe; the write is over (it did not wait: the holder need
    // not hold on, and the assertion below fails).
    static WAITING: AtomicBool = AtomicBool::new(false);
    static WRITTEN: AtomicBool = AtomicBool::new(false);
    fn hook(kind: PauseKind, _: u64) {
        if kind == PauseKind::CellWait {
            let held = crate::gc::cell::stripe_held(CELL.load(Ordering::Relaxed));
            SEEN_HELD.store(held as usize, Ordering::Relaxed);
        }
    }
    // A write that finds its cell's stripe held reads the clock (the wait's start) before it spins:
    // that read, with the stripe held, is the sign that the write waits. `CELL` is set just before
    // the write, and nothing between reads the clock.
    fn clock() -> u64 {
        let key = CELL.load(Ordering::SeqCst);
        if key != 0 && crate::gc::cell::stripe_held(key) {
            WAITING.store(true, Ordering::SeqCst);
        }
        now_ns()
    }
    let config = GcConfig {
        pause_hook: Some(hook),
        clock: Some(clock),
        ..concurrent_config(ConcurrentWorkers {
            helpers: 1,
            start: drop_job,
        })
    };
    let (mut gc, m) = opened_mark(config, 200);
    // The write below waits for the stand-in worker's stripe: every stripe is held until the write
    // waits (or is over without waiting), however late the mutator gets to it. Bounded, so that a
    // write that waits without reading the clock hangs no test run (it then fails below, unless the
    // wait was counted after all).
    let (locked_tx, locked_rx) = std::sync::mpsc::channel();
    let holder = std::thread::spawn(move || {
        let all = crate::gc::cell::AllStripes::lock();
        locked_tx.send(()).unwrap();
        let t = Instant::now();
        while !WAITING.load(Ordering::SeqCst)
            && !WRITTEN.load(Ordering::SeqCst)
            && t.elapsed() < Duration::from_secs(60)
        {
            std::thread::sleep(Duration::from_millis(1));
        }
        drop(all);
    });
    locked_rx.recv().unwrap();
    gc.mutate(|mc, root| {
        let bag = root[0].get().unwrap();
        let item = bag.items.borrow()[0];
        // A two-word cell: a one-word one takes no stripe.
        CELL.store(item.back.stripe_key(), Ordering::SeqCst);
        let to = item.back.get();
        item.back.set(mc, to);
    });
    WRITTEN.store(true, Ordering::SeqCst);
    holder.join().unwrap();
    assert!(
        WAITING.load(Ordering::SeqCst),
        "the write did not wait for the held stripe"
    );
    assert_eq!(
        SEEN_HELD.load(Ordering::Relaxed),
        0,
        "the cell wait was counted (1: with the stripe held; MAX: never)"
    );
    gc.finish_mark();
    check(&mut gc, &m);
    drop(gc);
    take_finalized();
}

/// A one-word cell (`Option<Gc>`) is written with one atomic store while workers may run: it never
/// waits for a stripe, even with every stripe held (a two-word cell's write would wait, see above).
#[test]
#[cfg_attr(miri, ignore = "holds the locks for a time, on a thread")]
fn a_one_word_cell_write_takes_no_stripe() {
    use std::time::{Duration, Instant};
    let (mut gc, m) = opened_mark(
        concurrent_config(ConcurrentWorkers {
            helpers: 1,
            start: drop_job,
        }),
        200,
    );
    let held = Duration::from_millis(400);
    let holder = hold_every_stripe(held);
    let t = Instant::now();
    gc.mutate(|mc, root| {
        let bag = root[0].get().unwrap();
        let item = bag.items.borrow()[0];
        let to = item.link.get();
        item.link.set(mc, to);
    });
    let took = t.elapsed();
    holder.join().unwrap();
    assert!(
        took < held / 2,
        "a one-word cell write waited {took:?} for a stripe"
    );
    assert_eq!(gc.stats().pauses_of(PauseKind::CellWait).count, 0);
    gc.finish_mark();
    check(&mut gc, &m);
    drop(gc);
    take_finalized();
}

/// Which cells take the atomic-word path (`Trace::ATOMIC_WORD`): thin `Gc`s and their `Option`s,
/// nothing wider or with a tag beside the pointer.
#[test]
fn atomic_word_cells_are_exactly_the_one_pointer_ones() {
    type G<'gc> = Gc<'gc, Item<'gc>>;
    let cases = [
        ("Gc", <G<'_> as Trace>::ATOMIC_WORD, true),
        ("Option<Gc>", <Option<G<'_>> as Trace>::ATOMIC_WORD, true),
        // Two words: no niche left.
        (
            "Option<Option<Gc>>",
            <Option<Option<G<'_>>> as Trace>::ATOMIC_WORD,
            false,
        ),
        // A fat pointer.
        ("Gc<[u64]>", <Gc<'_, [u64]> as Trace>::ATOMIC_WORD, false),
        (
            "Option<Gc<[u64]>>",
            <Option<Gc<'_, [u64]>> as Trace>::ATOMIC_WORD,
            false,
        ),
        (
            "(Option<Gc>, u64)",
            <(Option<G<'_>>, u64) as Trace>::ATOMIC_WORD,
            false,
        ),
        // Holds no Gc: never traced.
        ("u64", <u64 as Trace>::ATOMIC_WORD, false),
        // A hand-written impl keeps the default.
        ("Item", <Item<'_> as Trace>::ATOMIC_WORD, false),
    ];
    for (ty, got, want) in cases {
        assert_eq!(got, want, "{ty}");
    }
}

/// A pause hook (or clock) that panics at the end of the table slice that opens the crew must not
/// leave the workers marking while the mutator writes its cells without their locks.
#[test]
#[cfg_attr(miri, ignore = "a thread per job is too slow under Miri")]
fn a_pause_hook_panicking_as_the_table_opens_leaves_the_cells_locked() {
    use std::panic::{catch_unwind, AssertUnwindSafe};
    std::thread_local!(static BOOM: core::cell::Cell<bool> = const { core::cell::Cell::new(false) });
    fn hook(kind: PauseKind, _: u64) {
        if kind == PauseKind::Table && BOOM.with(core::cell::Cell::get) {
            panic!("test: the pause hook panics");
        }
    }
    let config = GcConfig {
        pause_hook: Some(hook),
        ..concurrent_config(ConcurrentWorkers::threads(1))
    };
    let mut gc: GcHeap<Bags> = GcHeap::new(span_heap(64), config, new_bags);
    let m = fill_bags(&mut gc, 2_000);
    gc.collect();
    gc.start_cycle();
    BOOM.with(|b| b.set(true));
    let mut steps = 0;
    while gc.table_phase().is_some_and(|p| p != TablePhase::Open) {
        // Every table slice's pause panics, the one that opens the crew too.
        let _ = catch_unwind(AssertUnwindSafe(|| gc.step(4096)));
        steps += 1;
        assert!(steps < 100_000, "the table never opened");
    }
    BOOM.with(|b| b.set(false));
    assert_eq!(gc.table_phase(), Some(TablePhase::Open));
    assert!(
        gc.cell_locks_on(),
        "the crew is open but the mutator takes no cell locks"
    );
    gc.finish_mark();
    check(&mut gc, &m);
    drop(gc);
    take_finalized();
}

/// A pause hook (or clock) that panics when `borrow_mut` has waited for a tracer must not leave the
/// cell's trace lock held: every later trace would skip its contents (and the next `borrow_mut` spin
/// forever).
#[test]
#[cfg_attr(miri, ignore = "sleeps for a thread")]
fn a_pause_hook_panicking_after_a_cell_wait_leaves_the_cell_unlocked() {
    use core::sync::atomic::Ordering;
    use std::panic::{catch_unwind, AssertUnwindSafe};
    std::thread_local!(static BOOM: core::cell::Cell<bool> = const { core::cell::Cell::new(false) });
    fn hook(kind: PauseKind, _: u64) {
        if kind == PauseKind::CellWait && BOOM.with(|b| b.replace(false)) {
            panic!("test: the pause hook panics");
        }
    }
    let config = GcConfig {
        pause_hook: Some(hook),
        ..config()
    };
    let mut gc: GcHeap<Bags> = GcHeap::new(span_heap(64), config, new_bags);
    let m = fill_bags(&mut gc, 64);
    gc.mutate(|mc, root| {
        let bag = root[0].get().unwrap();
        let lock = bag.items.trace_lock();
        // A tracer on another CPU reads the bag, and is done in a while.
        lock.fetch_add(1, Ordering::Acquire);
        std::thread::scope(|s| {
            s.spawn(|| {
                std::thread::sleep(std::time::Duration::from_millis(20));
                lock.fetch_sub(1, Ordering::Release);
            });
            BOOM.with(|b| b.set(true));
            let r = catch_unwind(AssertUnwindSafe(|| drop(bag.items.borrow_mut(mc))));
            assert!(r.is_err(), "the pause hook did not panic");
        });
        assert_eq!(lock.load(Ordering::Relaxed), 0, "the cell stays locked");
    });
    gc.collect();
    let freed = take_finalized();
    assert!(
        m.bags[0].iter().all(|id| !freed.contains(id)),
        "items of the bag were freed: {freed:?}"
    );
    check(&mut gc, &m);
    drop(gc);
    take_finalized();
}

/// Jobs a `start` kept instead of running them (run after their heap is gone).
static KEPT: std::sync::Mutex<Vec<MarkJob>> = std::sync::Mutex::new(Vec::new());
static STARTS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

#[test]
#[cfg_attr(
    miri,
    ignore = "three heaps: Miri's memory (the small version above runs under Miri)"
)]
fn whatever_start_does_the_mark_is_complete() {
    fn drop_it(job: MarkJob) {
        STARTS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        drop(job);
    }
    fn at_once(job: MarkJob) {
        STARTS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        job.run();
    }
    fn keep(job: MarkJob) {
        STARTS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        KEPT.lock().unwrap().push(job);
    }
    let (items, rounds, ops) = sizes();
    for start in [drop_it, at_once, keep] {
        run(
            ConcurrentWorkers { helpers: 2, start },
            items / 4,
            rounds / 4,
            ops,
        );
        take_finalized();
    }
    assert!(STARTS.load(std::sync::atomic::Ordering::Relaxed) >= 3);
    // The kept jobs outlived their heap: they hold the workers' shared state, see that no mark is
    // open and return at once.
    let kept = std::mem::take(&mut *KEPT.lock().unwrap());
    assert_eq!(kept.len(), 2, "the heap kept asking for more jobs");
    for job in kept {
        job.run();
    }
}

/// A job run late, after its mark ended and its heap is gone, does nothing (under Miri: nothing freed
/// is touched).
#[test]
fn a_mark_job_run_after_its_heap_is_gone_does_nothing() {
    fn keep(job: MarkJob) {
        LATE.lock().unwrap().push(job);
    }
    static LATE: std::sync::Mutex<Vec<MarkJob>> = std::sync::Mutex::new(Vec::new());
    let mut gc: GcHeap<Bags> = GcHeap::new(
        span_heap(64),
        concurrent_config(ConcurrentWorkers {
            helpers: 1,
            start: keep,
        }),
        |mc| {
            core::array::from_fn(|_| {
                GcCell::new(Some(Gc::new(
                    mc,
                    Bag {
                        items: GcRefCell::new(Vec::new()),
                    },
                )))
            })
        },
    );
    gc.start_cycle();
    // Safe points until the table is built and the workers get the root's grey objects.
    for _ in 0..100 {
        gc.mutate(|mc, root| root[0].set(mc, None));
        if gc.stats().concurrent_jobs > 0 {
            break;
        }
    }
    gc.collect();
    let stats = gc.stats();
    drop(gc);
    take_finalized();
    let late = std::mem::take(&mut *LATE.lock().unwrap());
    assert_eq!(late.len(), 1, "one job handed out: {stats:?}");
    assert_eq!(stats.concurrent_jobs, 1);
    for job in late {
        job.run();
    }
}

/// The mutator's pauses in a concurrent mark are recorded (the clock runs).
#[test]
#[cfg_attr(miri, ignore = "timing only")]
fn concurrent_jobs_record_pauses() {
    let (items, rounds, ops) = sizes();
    let stats = run(ConcurrentWorkers::threads(1), items / 4, rounds / 4, ops);
    assert!(stats.pauses > 0 && stats.pause_total_ns > 0);
    let _ = now_ns();
}

static BOOM: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Two lists; its `Trace` panics between them once armed.
struct Split<'gc> {
    a: GcCell<'gc, Option<Gc<'gc, super::Node<'gc>>>>,
    b: GcCell<'gc, Option<Gc<'gc, super::Node<'gc>>>>,
}

// SAFETY: traces both Gc fields (unless it panics in between).
unsafe impl Trace for Split<'_> {
    fn trace(&self, t: &mut Tracer<'_>) {
        t.trace(&self.a);
        if BOOM.swap(false, std::sync::atomic::Ordering::SeqCst) {
            panic!("test: a Trace impl panics on a concurrent mark worker");
        }
        t.trace(&self.b);
    }
}

/// A `Trace` impl panics on a worker (which `start` runs on a thread of its own at once and joins):
/// whether `start` hands the panic on to the heap (`propagates`: the caller of `mutate` gets it)
/// or swallows it, the mark rescans before it ends (checkmark on) and nothing reachable is freed.
fn panicking_concurrent_worker(start: fn(MarkJob), propagates: bool) {
    use std::panic::{catch_unwind, AssertUnwindSafe};
    struct R;
    impl Rootable for R {
        type Root<'gc> = GcCell<'gc, Option<Gc<'gc, Split<'gc>>>>;
    }
    let workers = ConcurrentWorkers { helpers: 1, start };
    let mut gc: GcHeap<R> = GcHeap::new(span_heap(64), concurrent_config(workers), |_| {
        GcCell::new(None)
    });
    take_finalized();
    let len = if cfg!(miri) { 8 } else { 2000 };
    gc.mutate(|mc, root| {
        let (mut a, mut b) = (None, None);
        for id in 0..len {
            a = Some(super::node(mc, id, a));
            b = Some(super::node(mc, len + id, b));
        }
        let s = Gc::new(
            mc,
            Split {
                a: GcCell::new(a),
                b: GcCell::new(b),
            },
        );
        root.set(mc, Some(s));
    });
    gc.collect();
    BOOM.store(true, std::sync::atomic::Ordering::SeqCst);
    // The root scan leaves the Split grey; once the table is built (a few safe points), a safe point
    // hands it to the worker.
    gc.start_cycle();
    let mut caught = false;
    for _ in 0..100 {
        caught |= catch_unwind(AssertUnwindSafe(|| gc.mutate(|_, _| ()))).is_err();
        if !BOOM.load(std::sync::atomic::Ordering::SeqCst) {
            break;
        }
    }
    assert_eq!(caught, propagates, "the panic reached mutate: {caught}");
    assert!(
        !BOOM.load(std::sync::atomic::Ordering::SeqCst),
        "the armed Trace impl did not run"
    );
    assert_eq!(gc.phase(), Phase::Marking);
    gc.collect();
    let freed = take_finalized();
    assert!(freed.is_empty(), "freed while reachable: {freed:?}");
    let count = gc.mutate(|_, root| {
        let s = root.get().unwrap();
        let mut n = 0;
        for mut at in [s.a.get(), s.b.get()] {
            while let Some(node) = at {
                n += 1;
                at = node.next.get();
            }
        }
        n
    });
    assert_eq!(count, 2 * len);
}

/// Both panic tests arm the one global `BOOM`: they must not run at once.
static BOOM_LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());

#[test]
#[cfg_attr(
    miri,
    ignore = "one more heap: Miri's memory (the swallowed variant runs under Miri)"
)]
fn a_trace_impl_panicking_on_a_concurrent_worker_cannot_free_a_reachable_object() {
    /// Runs the job on a thread and hands its panic on to the heap.
    fn handing_on(job: MarkJob) {
        if let Err(p) = std::thread::spawn(move || job.run()).join() {
            std::panic::resume_unwind(p);
        }
    }
    let _one = BOOM_LOCK.lock().unwrap_or_else(|e| e.into_inner());
    panicking_concurrent_worker(handing_on, true);
}

#[test]
fn a_concurrent_worker_panic_that_start_swallows_makes_the_mark_rescan() {
    fn swallowing(job: MarkJob) {
        let _ = std::thread::spawn(move || job.run()).join();
    }
    let _one = BOOM_LOCK.lock().unwrap_or_else(|e| e.into_inner());
    panicking_concurrent_worker(swallowing, false);
}

/// A node of a binary tree (scan work in every object, as in binary-trees).
struct Twig<'gc> {
    left: Option<Gc<'gc, Twig<'gc>>>,
    right: Option<Gc<'gc, Twig<'gc>>>,
}

// SAFETY: traces both Gc fields.
unsafe impl Trace for Twig<'_> {
    fn trace(&self, t: &mut Tracer<'_>) {
        t.trace(&self.left);
        t.trace(&self.right);
    }
}

fn twigs<'gc>(mc: &Mutation<'gc>, depth: u32) -> Gc<'gc, Twig<'gc>> {
    let (left, right) = if depth == 0 {
        (None, None)
    } else {
        (Some(twigs(mc, depth - 1)), Some(twigs(mc, depth - 1)))
    };
    Gc::new(mc, Twig { left, right })
}

struct Grove;
impl Rootable for Grove {
    type Root<'gc> = GcRefCell<'gc, Vec<Option<Gc<'gc, Twig<'gc>>>>>;
}

/// When the workers do no marking at all (a `start` that drops every job) and the mutator allocates
/// scan-heavy garbage as fast as it can, its assists, each of bounded size, still keep up: it pays
/// them more often rather than letting its debt (and the heap) grow without bound.
#[test]
#[cfg_attr(miri, ignore = "too slow under Miri")]
fn assists_keep_the_heap_bounded_when_workers_never_run() {
    fn drop_it(job: MarkJob) {
        drop(job);
    }
    const TREES: usize = 16;
    let mut gc: GcHeap<Grove> = GcHeap::new(
        span_heap(256),
        GcConfig {
            verify: false,
            ..concurrent_config(ConcurrentWorkers {
                helpers: 1,
                start: drop_it,
            })
        },
        |_| GcRefCell::new(vec![None; TREES]),
    );
    // 16 trees of 2^13 nodes (24 B each with the header): about 3 MiB live.
    for i in 0..TREES {
        gc.mutate(|mc, root| root.borrow_mut(mc)[i] = Some(twigs(mc, 12)));
    }
    gc.collect();
    let mut peak = 0;
    for i in 0..3_000 {
        gc.mutate(|mc, root| {
            // Garbage with pointers, and now and then a live tree replaced.
            let _ = twigs(mc, 8);
            if i % 32 == 0 {
                root.borrow_mut(mc)[i / 32 % TREES] = Some(twigs(mc, 12));
            }
        });
        peak = peak.max(gc.stats().pages);
    }
    let s = gc.stats();
    assert!(s.cycles >= 3, "{s:?}");
    assert!(s.assists > 0 && s.concurrent_scan_bytes == 0, "{s:?}");
    assert!(
        peak * crate::PAGE_SIZE < 32 << 20,
        "the heap grew to {} MiB for about 3 MiB live: {s:?}",
        (peak * crate::PAGE_SIZE) >> 20
    );
}

/// A `start` that never runs its jobs (a saturated pool that drops them) costs the table's preparation
/// one wait of `CHUNK_PATIENCE` safe points, then the heap takes a chunk per safe point itself: the
/// mark, which cannot terminate before its table opens, is not held up per chunk.
#[test]
#[cfg_attr(miri, ignore = "a large table")]
fn a_table_whose_jobs_never_run_waits_once_then_takes_a_chunk_per_safe_point() {
    fn drop_it(job: MarkJob) {
        drop(job);
    }
    let workers = ConcurrentWorkers {
        helpers: 1,
        start: drop_it,
    };
    let mut gc: GcHeap<Bags> = GcHeap::new(span_heap(512), concurrent_config(workers), new_bags);
    let mut m = fill_bags(&mut gc, 400_000);
    let mut rng = Rng(0x853C_49E6_748F_EA9B);
    gc.collect();
    gc.start_cycle();
    assert_eq!(gc.table_phase(), Some(TablePhase::Preparing));
    let mut preparing = 0usize;
    while gc.table_phase() == Some(TablePhase::Preparing) {
        mutate(&mut gc, &mut m, &mut rng, 16);
        preparing += 1;
        assert!(preparing < 100_000, "the table never got ready");
    }
    let (chunks, adopted) = gc.table_chunks().expect("a table");
    let s = gc.stats();
    drop(gc);
    take_finalized();
    assert_eq!(adopted, 0);
    assert!(
        preparing <= 2 * chunks + 16,
        "{preparing} safe points preparing a table of {chunks} chunks (marking all along, no termination possible): {s:?}"
    );
}

std::thread_local! {
    /// Set while the test's `mutate` closure runs: `start` must not be called then.
    static IN_MUTATOR: core::cell::Cell<bool> = const { core::cell::Cell::new(false) };
}

/// While the side table is being made or merged, allocations work on it (conc.rs, "Table assists"):
/// one long `mutate` builds much of it between two safe points, so that workers can mark sooner, and
/// another merges it. Those assists never call `start` (user code, called at safe points only) and
/// never open the table (the cells' locks go on at a safe point); the mark loses nothing.
#[test]
#[cfg_attr(miri, ignore = "a large table")]
fn allocations_build_the_table_between_safe_points() {
    fn start(job: MarkJob) {
        assert!(
            !IN_MUTATOR.with(|m| m.get()),
            "start called inside an allocation"
        );
        std::thread::spawn(move || job.run());
    }
    let workers = ConcurrentWorkers { helpers: 1, start };
    let mut gc: GcHeap<Bags> = GcHeap::new(span_heap(256), concurrent_config(workers), new_bags);
    // One unit per safe point and per assist: the assists' share is plain.
    gc.set_table_one_unit(true);
    let mut m = fill_bags(&mut gc, 100_000);
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    gc.collect();
    gc.start_cycle();
    let mut safepoints = 0;
    while gc.table_phase() == Some(TablePhase::Preparing) {
        mutate(&mut gc, &mut m, &mut rng, 4);
        safepoints += 1;
        assert!(safepoints < 100_000, "the table never got ready");
    }
    assert_eq!(gc.table_phase(), Some(TablePhase::Building));
    let before = gc.table_assists();
    let scanned = gc.stats().concurrent_scan_bytes;
    gc.mutate(|mc, _| {
        IN_MUTATOR.with(|m| m.set(true));
        // 2 MiB of garbage: a new span every 8 KiB, an assist each.
        for i in 0..(2 << 20) / 32 {
            assert_eq!(Gc::new(mc, [i as u64; 4])[3], i as u64);
        }
        IN_MUTATOR.with(|m| m.set(false));
    });
    let units = gc.table_assists() - before;
    assert!(
        units >= 16,
        "{units} units of table work in the allocations of one mutate"
    );
    while gc.table_phase().is_some_and(|p| p != TablePhase::Merging) {
        mutate(&mut gc, &mut m, &mut rng, 16);
        safepoints += 1;
        assert!(safepoints < 1_000_000, "the table never merged");
    }
    // Merging: the same long `mutate` merges the whole table (a unit per safe point would take
    // dozens), and the mark terminates at the safe point that ends it.
    assert_eq!(gc.table_phase(), Some(TablePhase::Merging));
    gc.mutate(|mc, _| {
        for i in 0..(2 << 20) / 32 {
            assert_eq!(Gc::new(mc, [i as u64; 4])[3], i as u64);
        }
    });
    assert_ne!(
        gc.phase(),
        Phase::Marking,
        "the merge was not done in the allocations"
    );
    while gc.phase() == Phase::Marking {
        mutate(&mut gc, &mut m, &mut rng, 16);
        safepoints += 1;
        assert!(safepoints < 1_000_000, "the mark never ended");
    }
    // The table was opened where the crew opens with it (a table opened inside an allocation would
    // have left the workers stopped).
    assert!(
        gc.stats().concurrent_scan_bytes > scanned,
        "the workers never marked: {:?}",
        gc.stats()
    );
    check(&mut gc, &m);
    drop(gc);
    take_finalized();
}

/// The pacer moves a concurrent mark's trigger earlier only when the mutator's assists did much of the
/// marking (its workers started too late): marks that `step` or `finish_mark` finish, with workers that
/// never run and no allocation during the mark, leave it where the runway feedback puts it (later: each
/// mark is over in the first half of its runway).
#[test]
#[cfg_attr(miri, ignore = "several marks of a large heap")]
fn marks_finished_by_steps_or_finish_mark_do_not_pull_the_trigger_earlier() {
    fn drop_it(job: MarkJob) {
        drop(job);
    }
    for by_steps in [true, false] {
        let workers = ConcurrentWorkers {
            helpers: 1,
            start: drop_it,
        };
        let mut gc: GcHeap<Bags> =
            GcHeap::new(span_heap(256), concurrent_config(workers), new_bags);
        let _m = fill_bags(&mut gc, 50_000);
        gc.collect();
        let permille = |s: &GcStats| (s.trigger - s.last_live) * 1000 / (s.goal - s.last_live);
        let first = permille(&gc.stats());
        for _ in 0..4 {
            gc.start_cycle();
            if by_steps {
                while gc.step(1 << 20) == Phase::Marking {}
            } else {
                gc.mutate(|_, _| {});
                gc.finish_mark();
            }
            let s = gc.stats();
            assert!(
                permille(&s) >= first,
                "steps {by_steps}: the trigger moved from {first}‰ to {}‰ of the runway: {s:?}",
                permille(&s)
            );
        }
        drop(gc);
        take_finalized();
    }
}
