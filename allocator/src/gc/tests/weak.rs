//! Weak references in every mode against what the program can see: a random mix of allocations (each
//! object with a tiny `Gc` of its own, weak refs to both), drops, upgrades (stored back into the root half
//! the time), relinks and weak-list pruning, with cycles started, stepped or collected at random between
//! rounds (checkmark and poisoning on, `config()`). After each round every strongly reachable object is
//! intact and none was finalized; an upgraded weak ref is its object, intact. Also run with mark jobs
//! run on the mutator's own thread from inside the clock and the pause hook. (From an attacker's review:
//! a mutant `upgrade` that does not shade its target during a mark, or a termination that does not
//! clear dead targets, fails these.)

use std::vec::Vec;

use super::{config, span_heap, take_finalized, Probe, Rng};
use crate::gc::*;

#[derive(Trace)]
struct Obj<'gc> {
    id: u64,
    pad: [u64; 4],
    next: GcCell<'gc, Option<Gc<'gc, Obj<'gc>>>>,
    tiny: Gc<'gc, u32>,
    #[trace(skip)]
    _probe: Probe,
}

struct R;
impl Rootable for R {
    type Root<'gc> = (
        GcRefCell<'gc, Vec<Gc<'gc, Obj<'gc>>>>,
        GcRefCell<'gc, Vec<(GcWeak<'gc, Obj<'gc>>, u64)>>,
        GcRefCell<'gc, Vec<(GcWeak<'gc, u32>, u32)>>,
    );
}

fn check_obj(o: &Obj<'_>) {
    for (k, &v) in o.pad.iter().enumerate() {
        assert_eq!(v, o.id ^ k as u64, "object {} corrupted", o.id);
    }
    assert_eq!(*o.tiny, o.id as u32 ^ 0x5a5a, "tiny of {} corrupted", o.id);
}

fn weak_model(cfg: GcConfig, rounds: usize) {
    take_finalized();
    let mut gc: GcHeap<R> = GcHeap::new(span_heap(256), cfg, |_| {
        (
            GcRefCell::new(Vec::new()),
            GcRefCell::new(Vec::new()),
            GcRefCell::new(Vec::new()),
        )
    });
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    let mut next_id = 0u64;
    for round in 0..rounds {
        gc.mutate(|mc, root| {
            for _ in 0..400 {
                match rng.below(12) {
                    0..=3 => {
                        let id = next_id;
                        next_id += 1;
                        let prev = root.0.borrow().last().copied();
                        let o = Gc::new(
                            mc,
                            Obj {
                                id,
                                pad: core::array::from_fn(|k| id ^ k as u64),
                                next: GcCell::new(prev),
                                tiny: Gc::new(mc, id as u32 ^ 0x5a5a),
                                _probe: Probe(id),
                            },
                        );
                        if rng.below(3) != 0 {
                            root.0.borrow_mut(mc).push(o);
                        }
                        root.1.borrow_mut(mc).push((GcWeak::new(mc, o), id));
                        let t = Gc::new(mc, id as u32);
                        root.2.borrow_mut(mc).push((GcWeak::new(mc, t), id as u32));
                        root.2
                            .borrow_mut(mc)
                            .push((GcWeak::new(mc, o.tiny), id as u32 ^ 0x5a5a));
                    }
                    4..=5 => {
                        let mut s = root.0.borrow_mut(mc);
                        if !s.is_empty() {
                            let i = rng.below(s.len() as u64) as usize;
                            s.swap_remove(i);
                        }
                    }
                    6..=8 => {
                        let w = root.1.borrow();
                        if !w.is_empty() {
                            let (wk, id) = w[rng.below(w.len() as u64) as usize];
                            drop(w);
                            if let Some(o) = wk.upgrade(mc) {
                                assert_eq!(o.id, id);
                                check_obj(&o);
                                let mut c = o.next.get();
                                let mut n = 0;
                                while let Some(x) = c {
                                    check_obj(&x);
                                    c = x.next.get();
                                    n += 1;
                                    if n > 50 {
                                        break;
                                    }
                                }
                                if rng.below(2) == 0 {
                                    root.0.borrow_mut(mc).push(o);
                                }
                            }
                        }
                    }
                    9 => {
                        let w = root.2.borrow();
                        if !w.is_empty() {
                            let (wk, v) = w[rng.below(w.len() as u64) as usize];
                            drop(w);
                            if let Some(t) = wk.upgrade(mc) {
                                assert_eq!(*t, v, "tiny weak target corrupted");
                            }
                        }
                    }
                    10 => {
                        // Drop dead weak refs.
                        root.1.borrow_mut(mc).retain(|(w, _)| !w.is_dead());
                        root.2.borrow_mut(mc).retain(|(w, _)| !w.is_dead());
                    }
                    _ => {
                        let s = root.0.borrow();
                        if let Some(o) = s.first().copied() {
                            let to = s.get(rng.below(s.len() as u64) as usize).copied();
                            drop(s);
                            o.next.set(mc, to);
                        }
                    }
                }
            }
        });
        match rng.below(6) {
            0 => gc.collect(),
            1 => gc.start_cycle(),
            2 | 3 => {
                gc.step(1 << 12);
            }
            _ => {}
        }
        // Every strongly reachable object is intact and not finalized.
        let reach: std::collections::BTreeSet<u64> = gc.mutate(|_, root| {
            let mut seen = std::collections::BTreeSet::new();
            let mut stack: Vec<Gc<'_, Obj<'_>>> = root.0.borrow().clone();
            while let Some(o) = stack.pop() {
                if seen.insert(o.id) {
                    check_obj(&o);
                    stack.extend(o.next.get());
                }
            }
            seen
        });
        for f in take_finalized() {
            assert!(
                !reach.contains(&f),
                "round {round}: reachable {f} finalized"
            );
        }
    }
    gc.collect();
    assert!(gc.stats().cycles > 0, "no cycle ran");
    drop(gc);
    take_finalized();
}

#[test]
#[cfg_attr(miri, ignore = "too slow under Miri")]
fn weak_refs_in_incremental_marks() {
    weak_model(
        GcConfig {
            mode: Mode::Incremental,
            min_heap: 64 << 10,
            ..config()
        },
        150,
    );
}

#[test]
#[cfg_attr(miri, ignore = "too slow under Miri")]
fn weak_refs_in_concurrent_marks() {
    weak_model(
        GcConfig {
            mode: Mode::Concurrent,
            concurrent_workers: Some(ConcurrentWorkers::threads(1)),
            min_heap: 64 << 10,
            ..config()
        },
        150,
    );
}

#[test]
#[cfg_attr(miri, ignore = "too slow under Miri")]
fn weak_refs_in_parallel_stop_the_world_marks() {
    weak_model(
        GcConfig {
            mode: Mode::StopTheWorld,
            mark_workers: Some(MarkWorkers::threads(1)),
            min_heap: 64 << 10,
            ..config()
        },
        100,
    );
}

std::thread_local! {
    /// Mark jobs the last test's `start` kept for the mutator's thread to run later.
    static KEPT: core::cell::RefCell<Vec<MarkJob>> = const { core::cell::RefCell::new(Vec::new()) };
}

/// Keeps a job for `run_kept`.
fn keep(job: MarkJob) {
    KEPT.with(|k| k.borrow_mut().push(job));
}

/// Runs the newest kept job, if any (not from inside another `run_kept` on this thread).
fn run_kept() {
    let job = KEPT.with(|k| k.try_borrow_mut().ok().and_then(|mut k| k.pop()));
    if let Some(j) = job {
        j.run();
    }
}

/// A pause hook that runs a kept job (user code the collector calls at every pause).
fn hook(_: PauseKind, _: u64) {
    run_kept();
}

/// A clock that runs a kept job before it reads the time.
fn clock() -> u64 {
    run_kept();
    super::now_ns()
}

/// Jobs run on the mutator's own thread, from inside the clock and the pause hook (wherever the
/// collector calls them), plus one real thread.
#[test]
#[cfg_attr(miri, ignore = "too slow under Miri")]
fn weak_refs_with_jobs_run_from_the_clock_and_the_pause_hook() {
    fn start(job: MarkJob) {
        static N: core::sync::atomic::AtomicUsize = core::sync::atomic::AtomicUsize::new(0);
        if N.fetch_add(1, core::sync::atomic::Ordering::Relaxed) % 3 == 0 {
            std::thread::spawn(move || job.run());
        } else {
            keep(job);
        }
    }
    weak_model(
        GcConfig {
            mode: Mode::Concurrent,
            concurrent_workers: Some(ConcurrentWorkers { helpers: 3, start }),
            min_heap: 64 << 10,
            clock: Some(clock),
            pause_hook: Some(hook),
            ..config()
        },
        150,
    );
    KEPT.with(|k| k.borrow_mut().clear());
}
