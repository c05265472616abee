//! Parallel marking (par.rs) on host threads: everything reachable survives marks spread over several
//! workers (checkmark on), whatever the `run` function does with the jobs, and a `Trace` impl that
//! panics on a worker thread frees nothing reachable. The model test has a parallel variant too
//! (model.rs).

use core::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::vec::Vec;

use super::{config, node, span_heap, take_finalized, Node};
use crate::gc::{Gc, GcCell, GcConfig, GcHeap, MarkWorkers, Mode, Rootable, Trace, Tracer};

/// Lists of nodes: node `i` in list `i % LISTS`, newest first.
const LISTS: usize = 16;

struct Lists;
impl Rootable for Lists {
    type Root<'gc> = [GcCell<'gc, Option<Gc<'gc, Node<'gc>>>>; LISTS];
}

fn nodes() -> u64 {
    if cfg!(miri) {
        32
    } else {
        60_000
    }
}

fn heap(cfg: GcConfig) -> GcHeap<Lists> {
    GcHeap::new(span_heap(256), cfg, |_| Default::default())
}

/// Builds `n` nodes in the lists, with as much garbage in between.
fn build(gc: &mut GcHeap<Lists>, n: u64) {
    for chunk in (0..n).collect::<Vec<_>>().chunks(512) {
        gc.mutate(|mc, root| {
            for &id in chunk {
                let l = id as usize % LISTS;
                root[l].set(mc, Some(node(mc, id, root[l].get())));
                node(mc, 1 << 40 | id, None);
            }
        });
    }
}

/// Every list holds exactly the ids it was built with, newest first, minus those `gone` says were
/// unlinked.
fn verify(gc: &mut GcHeap<Lists>, n: u64, gone: impl Fn(u64) -> bool) {
    gc.mutate(|_, root| {
        for (l, head) in root.iter().enumerate() {
            let mut at = head.get();
            let mut want = (0..n)
                .rev()
                .filter(|id| *id as usize % LISTS == l && !gone(*id));
            while let Some(node) = at {
                assert_eq!(Some(node.id), want.next(), "list {l}");
                at = node.next.get();
            }
            assert_eq!(want.next(), None, "list {l} lost its tail");
        }
    });
}

/// Unlinks every node whose id is a multiple of 3 (except list heads).
fn unlink_thirds(gc: &mut GcHeap<Lists>) {
    gc.mutate(|mc, root| {
        for head in root.iter() {
            let mut at = head.get();
            while let Some(node) = at {
                let mut next = node.next.get();
                while let Some(n) = next.filter(|n| n.id % 3 == 0) {
                    next = n.next.get();
                }
                node.next.set(mc, next);
                at = next;
            }
        }
    });
}

fn parallel_config(workers: MarkWorkers, mode: Mode) -> GcConfig {
    GcConfig {
        mode,
        mark_workers: Some(workers),
        ..config()
    }
}

fn survives(workers: MarkWorkers, mode: Mode) -> u64 {
    let mut gc = heap(parallel_config(workers, mode));
    let n = nodes();
    build(&mut gc, n);
    gc.collect();
    verify(&mut gc, n, |_| false);
    unlink_thirds(&mut gc);
    let gone = |id: u64| id % 3 == 0 && id + (LISTS as u64) < n;
    gc.collect();
    verify(&mut gc, n, gone);
    let freed = take_finalized();
    assert!(freed.iter().all(|id| gone(*id) || *id >= 1 << 40));
    assert_eq!(
        freed.iter().filter(|id| **id < 1 << 40).count() as u64,
        (0..n).filter(|id| gone(*id)).count() as u64
    );
    // More cycles, in the configured mode, while allocating.
    build(&mut gc, n / 4);
    gc.collect();
    gc.stats().cycles
}

#[test]
fn parallel_marks_keep_everything_reachable() {
    for mode in [Mode::StopTheWorld, Mode::Incremental] {
        assert!(survives(MarkWorkers::threads(3), mode) >= 3);
        take_finalized();
    }
}

/// Counts the jobs `run` functions ran.
static JOBS: AtomicUsize = AtomicUsize::new(0);

#[test]
fn whatever_run_does_with_the_jobs_the_mark_is_complete() {
    fn none(_: usize, _: &(dyn Fn(usize) + Sync)) {}
    fn in_sequence(helpers: usize, job: &(dyn Fn(usize) + Sync)) {
        for i in (0..=helpers).rev() {
            JOBS.fetch_add(1, Ordering::Relaxed);
            job(i);
        }
    }
    fn twice(_: usize, job: &(dyn Fn(usize) + Sync)) {
        std::thread::scope(|s| {
            s.spawn(|| job(0));
            s.spawn(|| job(0));
        });
    }
    for run in [none, in_sequence, twice] {
        survives(MarkWorkers { helpers: 2, run }, Mode::StopTheWorld);
        take_finalized();
    }
    assert!(JOBS.load(Ordering::Relaxed) >= 3);
}

/// Panics (once) in the worker that traces it, when armed: a global flag, since workers are other
/// threads.
static BOOM: AtomicBool = AtomicBool::new(false);

struct Split<'gc> {
    a: GcCell<'gc, Option<Gc<'gc, Node<'gc>>>>,
    b: GcCell<'gc, Option<Gc<'gc, Node<'gc>>>>,
}

// SAFETY: traces both Gc fields (unless it panics in between).
unsafe impl Trace for Split<'_> {
    fn trace(&self, t: &mut Tracer<'_>) {
        t.trace(&self.a);
        if BOOM.swap(false, Ordering::SeqCst) {
            panic!("test: a Trace impl panics on a mark worker");
        }
        t.trace(&self.b);
    }
}

/// Builds two lists under a `Split`, arms it and collects with `workers`; `propagates`: whether the
/// panic reaches `collect`'s caller. Then collects again and checks that nothing reachable was freed.
fn panicking_worker(workers: MarkWorkers, propagates: bool, verify: bool) {
    struct R;
    impl Rootable for R {
        type Root<'gc> = GcCell<'gc, Option<Gc<'gc, Split<'gc>>>>;
    }
    let cfg = GcConfig {
        verify,
        ..parallel_config(workers, Mode::StopTheWorld)
    };
    let mut gc: GcHeap<R> = GcHeap::new(span_heap(64), cfg, |_| GcCell::new(None));
    take_finalized();
    let len = if cfg!(miri) { 8 } else { 2000 };
    gc.mutate(|mc, root| {
        let mut a = None;
        let mut b = None;
        for id in 0..len {
            a = Some(node(mc, id, a));
            b = Some(node(mc, len + id, b));
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
    BOOM.store(true, Ordering::SeqCst);
    let r = catch_unwind(AssertUnwindSafe(|| gc.collect()));
    assert_eq!(
        r.is_err(),
        propagates,
        "the panic reached collect: {}",
        r.is_err()
    );
    assert!(
        !BOOM.load(Ordering::SeqCst),
        "the armed Trace impl did not run"
    );
    gc.collect();
    let freed = take_finalized();
    assert!(freed.is_empty(), "freed while reachable: {freed:?}");
    fn count<'gc>(mut at: Option<Gc<'gc, Node<'gc>>>) -> u64 {
        let mut n = 0;
        while let Some(node) = at {
            n += 1;
            at = node.next.get();
        }
        n
    }
    let (na, nb) = gc.mutate(|_, root| {
        let s = root.get().unwrap();
        (count(s.a.get()), count(s.b.get()))
    });
    assert_eq!((na, nb), (len, len));
}

/// Both panic tests arm the one global `BOOM`: they must not run at once.
static BOOM_LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());

#[test]
fn a_trace_impl_panicking_on_a_worker_cannot_free_a_reachable_object() {
    let _one = BOOM_LOCK.lock().unwrap_or_else(|e| e.into_inner());
    // No checkmark: what is tested is that the nodes behind `b` are not freed (poisoned, finalized).
    panicking_worker(MarkWorkers::threads(2), true, false);
}

#[test]
fn a_worker_panic_that_run_swallows_makes_the_mark_rescan() {
    /// Catches each job's panic: the collector never sees it, only the lost work.
    fn swallowing(helpers: usize, job: &(dyn Fn(usize) + Sync)) {
        std::thread::scope(|s| {
            for i in 0..=helpers {
                s.spawn(move || {
                    let _ = catch_unwind(AssertUnwindSafe(|| job(i)));
                });
            }
        });
    }
    let _one = BOOM_LOCK.lock().unwrap_or_else(|e| e.into_inner());
    // With checkmark: the same collect's termination must already see everything marked.
    panicking_worker(
        MarkWorkers {
            helpers: 2,
            run: swallowing,
        },
        false,
        true,
    );
}

#[test]
fn gctrace_names_the_cpus_that_marked() {
    std::thread_local!(static LINES: core::cell::RefCell<Vec<std::string::String>> = const { core::cell::RefCell::new(Vec::new()) });
    fn sink(s: &str) {
        LINES.with(|l| l.borrow_mut().push(s.into()));
    }
    // Jobs in sequence on this thread: each one that finds work counts, so the count is known exactly.
    fn one_after_another(helpers: usize, job: &(dyn Fn(usize) + Sync)) {
        for i in 0..=helpers {
            job(i);
        }
    }
    let mut gc = heap(GcConfig {
        trace_sink: Some(sink),
        ..parallel_config(
            MarkWorkers {
                helpers: 3,
                run: one_after_another,
            },
            Mode::StopTheWorld,
        )
    });
    build(&mut gc, 100);
    gc.collect();
    let lines = LINES.with(|l| core::mem::take(&mut *l.borrow_mut()));
    // The first job drains everything: one CPU marked.
    assert!(lines.last().unwrap().ends_with(" by 1 CPU"), "{lines:?}");
    take_finalized();
}
