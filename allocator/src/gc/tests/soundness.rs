//! Regression tests of the collector's soundness against user code that panics (finalizers, `Trace`
//! impls, the root's `Trace`, the checkmark, the gctrace sink, the pause hook, the heap's drop) and
//! against addresses that are not objects of the heap (zero-sized values, other heaps' objects,
//! explicit-heap objects, freed slots). Each panic test catches the panic with `catch_unwind`, then
//! checks that the heap goes on: reachable objects stay intact and unfinalized, cycles complete (with
//! verification where the config has it), and the span accounting is whole.

use std::cell::Cell;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::vec::Vec;

use super::*;
use crate::addr::VirtAddr;

std::thread_local! {
    /// Armed: the next `Bomb` drop, `Split` trace, `SplitRoot` trace, sink or hook call panics.
    static ARMED: Cell<bool> = const { Cell::new(false) };
}

fn arm(on: bool) {
    ARMED.with(|a| a.set(on));
}

/// Panics if armed (and disarms, so that exactly one call panics).
fn maybe_boom(what: &str) {
    if ARMED.with(|a| a.replace(false)) {
        panic!("test: {what} panics");
    }
}

/// Catches the one panic `f` must raise.
fn must_panic(f: impl FnOnce()) {
    let r = catch_unwind(AssertUnwindSafe(f));
    assert!(r.is_err(), "the armed user code did not panic");
    arm(false);
}

/// A node whose finalizer panics when armed; `Node`'s size, so the two share spans.
struct Bomb<'gc> {
    next: GcCell<'gc, Option<Gc<'gc, Node<'gc>>>>,
    _probe: Probe,
    _pad: u64,
}

impl Drop for Bomb<'_> {
    fn drop(&mut self) {
        maybe_boom("a finalizer");
    }
}

// SAFETY: traces its one Gc field; the Drop touches no Gc.
unsafe impl<'gc> Trace for Bomb<'gc> {
    fn trace(&self, t: &mut Tracer<'_>) {
        t.trace(&self.next);
    }
}

struct BombRoot;
impl Rootable for BombRoot {
    type Root<'gc> = GcCell<'gc, Option<Gc<'gc, Bomb<'gc>>>>;
}

fn bomb<'gc>(mc: &Mutation<'gc>, id: u64, next: Option<Gc<'gc, Node<'gc>>>) -> Gc<'gc, Bomb<'gc>> {
    const { assert!(core::mem::size_of::<Bomb<'static>>() == core::mem::size_of::<Node<'static>>()) };
    Gc::new(
        mc,
        Bomb {
            next: GcCell::new(next),
            _probe: Probe(id),
            _pad: 0,
        },
    )
}

/// The ids of the root bomb and the node it holds.
fn bomb_ids(gc: &mut GcHeap<BombRoot>) -> (u64, u64) {
    gc.mutate(|_, root| {
        let b = root.get().expect("root bomb");
        (b._probe.0, b.next.get().expect("bomb's node").id)
    })
}

#[test]
fn a_panicking_finalizer_leaves_its_span_swept_and_listed() {
    let mut gc: GcHeap<BombRoot> = GcHeap::new(span_heap(64), config(), |_| GcCell::new(None));
    take_finalized();
    gc.mutate(|mc, root| {
        // Dead bombs around the live one, all in one span of the bombs' class.
        for id in 0..8 {
            bomb(mc, id, None);
        }
        root.set(mc, Some(bomb(mc, 100, Some(node(mc, 101, None)))));
        for id in 8..16 {
            bomb(mc, id, None);
        }
    });
    arm(true);
    must_panic(|| gc.collect());
    // The old sweeper left the span out of the lists with its mark bits set: the next cycles saw the
    // live bomb as marked, never scanned it, and freed node 101 (or the checkmark panicked).
    for _ in 0..3 {
        gc.collect();
    }
    assert_eq!(bomb_ids(&mut gc), (100, 101));
    let finalized = take_finalized();
    assert!(
        !finalized.contains(&100) && !finalized.contains(&101),
        "a reachable object was finalized: {finalized:?}"
    );
    // One dead bomb panicked mid-finalization and the rest of its span's dead were given up (leaked):
    // none is finalized twice.
    let mut sorted = finalized.clone();
    sorted.sort_unstable();
    sorted.dedup();
    assert_eq!(
        sorted.len(),
        finalized.len(),
        "finalized twice: {finalized:?}"
    );
    assert_eq!(gc.phase(), Phase::Idle);
    // Every span is accounted for: dropping the root frees all of them.
    gc.mutate(|mc, root| root.set(mc, None));
    gc.collect();
    assert_eq!(gc.allocated_objects(), 0);
    assert_eq!(gc.stats().pages, 0, "a span went missing from the lists");
    take_finalized();
}

/// Zero-sized values.
struct Unit;
impl Rootable for Unit {
    type Root<'gc> = (
        GcCell<'gc, Option<Gc<'gc, ()>>>,
        GcCell<'gc, Option<Gc<'gc, [u64; 0]>>>,
        GcCell<'gc, Option<Gc<'gc, u64>>>,
        GcCell<'gc, Option<GcWeak<'gc, ()>>>,
    );
}

#[test]
fn a_zero_sized_gc_after_a_full_tiny_block_is_never_shaded() {
    let mut gc: GcHeap<Unit> = GcHeap::new(span_heap(64), config(), |_| Default::default());
    gc.mutate(|mc, root| {
        // Fill the tiny block exactly (two u64 halves of 16 B), then ask for zero-sized values.
        let a = Gc::new(mc, 1u32);
        let b = Gc::new(mc, 2u32);
        let c = Gc::new(mc, 3u64);
        assert_eq!(
            c.as_ptr() as usize - a.as_ptr() as usize,
            8,
            "one tiny block"
        );
        let (u, e) = (Gc::new(mc, ()), Gc::new(mc, [0u64; 0]));
        for addr in [u.as_ptr() as usize, e.as_ptr() as usize] {
            assert!(
                (1..=crate::PAGE_SIZE).contains(&addr),
                "a zero-sized value at {addr:#x}, not the dangling address"
            );
        }
        assert_eq!(*b, 2);
        root.0.set(mc, Some(u));
        root.1.set(mc, Some(e));
        root.2.set(mc, Some(c));
    });
    for _ in 0..3 {
        gc.collect();
    }
    gc.mutate(|mc, root| {
        assert_eq!(*root.2.get().unwrap(), 3);
        assert_eq!(*root.0.get().unwrap(), ());
        assert!(root.1.get().unwrap().is_empty());
        // A weak ref to a zero-sized value: its target has no memory, counts as marked, never dies.
        root.3.set(mc, Some(GcWeak::new(mc, root.0.get().unwrap())));
        root.0.set(mc, None);
    });
    gc.collect();
    gc.mutate(|mc, root| {
        let w = root.3.get().unwrap();
        assert!(!w.is_dead() && w.upgrade(mc).is_some());
    });
}

/// A zero-sized type with a finalizer: headed, in a slot of its own.
struct ZeroFin;

impl Drop for ZeroFin {
    fn drop(&mut self) {
        FINALIZED.with(|f| f.borrow_mut().push(7));
    }
}

// SAFETY: holds nothing; the Drop touches no Gc.
unsafe impl Trace for ZeroFin {
    const NEEDS_TRACE: bool = false;
    fn trace(&self, _: &mut Tracer<'_>) {}
}

#[test]
fn a_zero_sized_value_with_a_finalizer_points_into_its_own_slot() {
    struct R;
    impl Rootable for R {
        type Root<'gc> = GcCell<'gc, Option<Gc<'gc, ZeroFin>>>;
    }
    let mut gc: GcHeap<R> = GcHeap::new(span_heap(64), config(), |_| GcCell::new(None));
    take_finalized();
    gc.mutate(|mc, root| {
        let kept = Gc::new(mc, ZeroFin);
        root.set(mc, Some(kept));
    });
    gc.collect();
    gc.collect();
    assert!(
        take_finalized().is_empty(),
        "a reachable ZeroFin was finalized"
    );
    gc.mutate(|mc, root| root.set(mc, None));
    gc.collect();
    assert_eq!(take_finalized(), [7]);
}

#[test]
#[should_panic(expected = "is not an object of this GC heap (in a span this GC heap does not own)")]
fn the_marker_refuses_an_explicit_heap_object() {
    use core::alloc::{GlobalAlloc, Layout};
    let heap = span_heap(64);
    let mut gc: GcHeap<Slots> = GcHeap::new(heap, config(), |_| Default::default());
    // SAFETY: a valid non-zero layout; the block is never freed (the test panics).
    let boxed = unsafe { heap.alloc(Layout::new::<[u64; 2]>()) };
    assert!(!boxed.is_null());
    gc.state.get_mut().marker.shade(VirtAddr::from_ptr(boxed));
}

#[test]
#[should_panic(expected = "is not an object of this GC heap (in a span this GC heap does not own)")]
fn the_marker_refuses_an_object_of_another_gc_heap() {
    let heap = span_heap(64);
    let mut a: GcHeap<Slots> = GcHeap::new(heap, config(), |_| Default::default());
    let mut b: GcHeap<Slots> = GcHeap::new(heap, config(), |_| Default::default());
    let addr = a.mutate(|mc, root| {
        let n = node(mc, 1, None);
        root[0].set(mc, Some(n));
        n.as_ptr() as u64
    });
    b.state.get_mut().marker.shade(VirtAddr::new(addr));
}

#[test]
#[should_panic(expected = "is not an object of this GC heap (in a free slot)")]
fn the_marker_refuses_a_freed_object() {
    let mut gc = slots_heap(config());
    let addr = gc.mutate(|mc, root| {
        root[0].set(mc, Some(node(mc, 1, None)));
        node(mc, 2, None).as_ptr() as u64
    });
    gc.collect();
    take_finalized();
    gc.state.get_mut().marker.shade(VirtAddr::new(addr));
}

/// Two children; its trace panics between them when armed.
struct Split<'gc> {
    a: GcCell<'gc, Option<Gc<'gc, Node<'gc>>>>,
    b: GcCell<'gc, Option<Gc<'gc, Node<'gc>>>>,
}

// SAFETY: traces both Gc fields (unless it panics in between, which is what is tested).
unsafe impl<'gc> Trace for Split<'gc> {
    fn trace(&self, t: &mut Tracer<'_>) {
        t.trace(&self.a);
        maybe_boom("a Trace impl");
        t.trace(&self.b);
    }
}

#[test]
fn a_trace_impl_panicking_mid_scan_cannot_free_a_reachable_object() {
    struct R;
    impl Rootable for R {
        type Root<'gc> = GcCell<'gc, Option<Gc<'gc, Split<'gc>>>>;
    }
    for mode in [Mode::Incremental, Mode::StopTheWorld] {
        // No checkmark: what is tested is that node 2 is not freed (poisoned and finalized).
        let cfg = GcConfig {
            mode,
            verify: false,
            ..config()
        };
        let mut gc: GcHeap<R> = GcHeap::new(span_heap(64), cfg, |_| GcCell::new(None));
        take_finalized();
        gc.mutate(|mc, root| {
            let s = Gc::new(
                mc,
                Split {
                    // Node 3 shares node 1's span: the rescan marks into the span it walks.
                    a: GcCell::new(Some(node(mc, 1, Some(node(mc, 3, None))))),
                    b: GcCell::new(Some(node(mc, 2, None))),
                },
            );
            root.set(mc, Some(s));
        });
        arm(true);
        match mode {
            Mode::Incremental => {
                gc.start_cycle();
                must_panic(|| {
                    gc.step(usize::MAX);
                });
                gc.finish_mark();
            }
            Mode::StopTheWorld => must_panic(|| gc.collect()),
            Mode::Concurrent => unreachable!(),
        }
        gc.collect();
        assert!(
            !take_finalized().contains(&2),
            "{mode:?}: node 2 was freed while reachable"
        );
        let ids = gc.mutate(|_, root| {
            let s = root.get().unwrap();
            let a = s.a.get().unwrap();
            (a.id, a.next.get().unwrap().id, s.b.get().unwrap().id)
        });
        assert_eq!(ids, (1, 3, 2), "{mode:?}");
    }
}

/// A root whose trace panics between its two slots when armed.
struct SplitRoot<'gc> {
    a: GcCell<'gc, Option<Gc<'gc, Node<'gc>>>>,
    b: GcCell<'gc, Option<Gc<'gc, Node<'gc>>>>,
}

// SAFETY: traces both Gc fields (unless it panics in between).
unsafe impl<'gc> Trace for SplitRoot<'gc> {
    fn trace(&self, t: &mut Tracer<'_>) {
        t.trace(&self.a);
        maybe_boom("the root's Trace impl");
        t.trace(&self.b);
    }
}

struct SplitRootable;
impl Rootable for SplitRootable {
    type Root<'gc> = SplitRoot<'gc>;
}

#[test]
fn a_root_trace_panicking_at_mark_start_leaves_the_barrier_on_and_is_retraced() {
    let cfg = GcConfig {
        verify: false,
        ..config()
    };
    let mut gc: GcHeap<SplitRootable> = GcHeap::new(span_heap(64), cfg, |_| SplitRoot {
        a: GcCell::new(None),
        b: GcCell::new(None),
    });
    take_finalized();
    gc.mutate(|mc, root| {
        root.a.set(mc, Some(node(mc, 1, Some(node(mc, 3, None)))));
        root.b.set(mc, Some(node(mc, 2, None)));
    });
    arm(true);
    must_panic(|| gc.start_cycle());
    assert_eq!(gc.phase(), Phase::Marking);
    gc.mutate(|mc, root| {
        assert!(mc.is_marking(), "a mark runs but the barrier is off");
        // Move node 3 from (grey) node 1 to (white) node 2: only the barrier keeps it.
        let (one, two) = (root.a.get().unwrap(), root.b.get().unwrap());
        two.next.set(mc, one.next.get());
        one.next.set(mc, None);
    });
    gc.finish_mark();
    gc.collect();
    let f = take_finalized();
    assert!(
        !f.contains(&2) && !f.contains(&3),
        "freed while reachable: {f:?}"
    );
    let ids = gc.mutate(|_, root| {
        let two = root.b.get().unwrap();
        (two.id, two.next.get().unwrap().id)
    });
    assert_eq!(ids, (2, 3));
}

#[test]
fn a_failed_checkmark_leaves_the_real_mark_state_alone_and_the_next_termination_recovers() {
    let mut gc = slots_heap(config());
    gc.mutate(|mc, root| {
        root[0].set(mc, Some(node(mc, 1, Some(node(mc, 99, None)))));
        root[1].set(mc, Some(node(mc, 2, None)));
    });
    gc.start_cycle();
    gc.step(1); // scans node 2, leaving node 1 grey and node 99 white
    gc.set_barrier_off(true);
    gc.mutate(|mc, root| {
        let (a, b) = (root[0].get().unwrap(), root[1].get().unwrap());
        b.next.set(mc, a.next.get());
        a.next.set(mc, None);
    });
    gc.set_barrier_off(false);
    let r = catch_unwind(AssertUnwindSafe(|| gc.finish_mark()));
    let msg = r.expect_err("the checkmark must see the missed object");
    let msg = msg
        .downcast_ref::<String>()
        .map(String::as_str)
        .unwrap_or_default();
    assert!(msg.contains("the mark missed it"), "{msg}");
    // Nothing was freed and the heap still marks; the check table is gone (the marker shades into the
    // real mark bits again), and the next termination rescans everything marked before checking again.
    assert_eq!(gc.phase(), Phase::Marking);
    assert!(gc.state.get_mut().marker.check.is_none());
    gc.finish_mark();
    gc.collect();
    assert_eq!(list_ids(&mut gc, 1), [2, 99]);
    take_finalized();
}

fn boom_sink(_: &str) {
    maybe_boom("the trace sink");
}

#[test]
fn a_panicking_trace_sink_leaves_the_barrier_matching_the_phase() {
    let mut gc = slots_heap(GcConfig {
        trace_sink: Some(boom_sink),
        ..config()
    });
    gc.mutate(|mc, root| root[0].set(mc, Some(node(mc, 1, Some(node(mc, 2, None))))));
    gc.start_cycle();
    arm(true);
    must_panic(|| gc.finish_mark());
    assert_ne!(gc.phase(), Phase::Marking);
    gc.mutate(|mc, root| {
        assert!(!mc.is_marking(), "the barrier is on after the mark ended");
        root[1].set(mc, root[0].get());
        root[0].set(mc, None);
    });
    for _ in 0..3 {
        gc.collect();
    }
    assert_eq!(list_ids(&mut gc, 1), [1, 2]);
    assert_eq!(take_finalized(), [] as [u64; 0]);
}

fn boom_hook(_: PauseKind, _: u64) {
    maybe_boom("the pause hook");
}

#[test]
fn a_panicking_pause_hook_leaves_the_heap_consistent() {
    let mut gc = slots_heap(GcConfig {
        pause_hook: Some(boom_hook),
        stress: Stress::StepEveryAlloc(64),
        ..config()
    });
    take_finalized();
    type Op = dyn Fn(&mut GcHeap<Slots>);
    let ops: [&Op; 5] = [
        &|gc| gc.start_cycle(),
        &|gc| {
            gc.step(64);
        },
        &|gc| gc.finish_mark(),
        &|gc| gc.collect(),
        &|gc| {
            gc.mutate(|mc, root| {
                for id in 0..2000 {
                    let n = node(mc, 1000 + id, root[2].get());
                    root[2].set(mc, Some(n));
                }
            });
        },
    ];
    gc.mutate(|mc, root| root[0].set(mc, Some(node(mc, 1, Some(node(mc, 2, None))))));
    for op in ops {
        arm(true);
        let _ = catch_unwind(AssertUnwindSafe(|| op(&mut gc)));
        arm(false);
        gc.collect();
        assert_eq!(list_ids(&mut gc, 0), [1, 2]);
    }
    let f = take_finalized();
    assert!(!f.contains(&1) && !f.contains(&2), "{f:?}");
}

#[test]
#[cfg_attr(miri, ignore = "too slow under Miri")]
fn a_finalizer_panicking_while_the_heap_is_dropped_gives_every_span_back() {
    let heap = span_heap(64);
    let before = heap.stats().pages.in_use;
    let mut gc: GcHeap<BombRoot> = GcHeap::new(heap, config(), |_| GcCell::new(None));
    gc.mutate(|mc, root| {
        let mut list = None;
        for id in 0..5000 {
            list = Some(node(mc, id, list));
            Gc::new(mc, [id; 40]);
        }
        root.set(mc, Some(bomb(mc, 1, list)));
    });
    assert!(heap.stats().pages.in_use > before + 20);
    arm(true);
    must_panic(|| drop(gc));
    let after = heap.stats().pages.in_use;
    assert!(
        after <= before + 1,
        "pages in use: {before} before, {after} after"
    );
    take_finalized();
}

#[test]
fn a_panicking_finalizer_in_a_lazy_sweep_inside_mutate_is_contained() {
    let mut gc: GcHeap<BombRoot> = GcHeap::new(span_heap(64), config(), |_| GcCell::new(None));
    take_finalized();
    gc.mutate(|mc, root| {
        for id in 0..64 {
            bomb(mc, id, None);
        }
        root.set(mc, Some(bomb(mc, 100, Some(node(mc, 101, None)))));
    });
    gc.start_cycle();
    gc.finish_mark(); // the dead bombs' span waits for the lazy sweeper
    arm(true);
    must_panic(|| {
        gc.mutate(|mc, _| {
            // Allocating bombs sweeps their class's unswept span first, running the finalizers.
            let mut v = Vec::new();
            for id in 200..400 {
                v.push(bomb(mc, id, None));
            }
        })
    });
    for _ in 0..3 {
        gc.collect();
    }
    assert_eq!(bomb_ids(&mut gc), (100, 101));
    take_finalized();
}

std::thread_local! {
    /// 0: off; n: the n-th clock read from now panics.
    static CLOCK_FUSE: Cell<u32> = const { Cell::new(0) };
}

fn fused_clock() -> u64 {
    let n = CLOCK_FUSE.with(|f| f.get());
    if n != 0 {
        CLOCK_FUSE.with(|f| f.set(n - 1));
        if n == 1 {
            panic!("test: the clock panics");
        }
    }
    now_ns()
}

#[test]
#[cfg_attr(miri, ignore = "too slow under Miri")]
fn a_panicking_clock_leaves_the_heap_consistent_wherever_it_is_read() {
    // The clock is user code read all over the collector: fail its n-th read for every n along a lazy
    // sweep, a cycle start, a step and a termination.
    let mut panicked = 0;
    for fuse in 1..=40 {
        let mut gc = slots_heap(GcConfig {
            clock: Some(fused_clock),
            ..config()
        });
        gc.mutate(|mc, root| {
            for id in 0..50 {
                let n = node(mc, id, root[0].get());
                root[0].set(mc, Some(n));
                node(mc, 1000 + id, None);
            }
        });
        gc.start_cycle();
        gc.finish_mark(); // the nodes' spans wait for the lazy sweeper
        CLOCK_FUSE.with(|f| f.set(fuse));
        let r = catch_unwind(AssertUnwindSafe(|| {
            gc.mutate(|mc, _| {
                for id in 0..100 {
                    node(mc, 2000 + id, None);
                }
            });
            gc.start_cycle();
            gc.step(1);
            gc.finish_mark();
        }));
        CLOCK_FUSE.with(|f| f.set(0));
        panicked += usize::from(r.is_err());
        let marking = gc.phase() == Phase::Marking;
        gc.mutate(|mc, _| assert_eq!(mc.is_marking(), marking, "fuse {fuse}"));
        for _ in 0..2 {
            gc.collect();
        }
        assert_eq!(list_ids(&mut gc, 0).len(), 50, "fuse {fuse}");
        gc.mutate(|mc, root| root[0].set(mc, None));
        gc.collect();
        assert_eq!(gc.stats().pages, 0, "fuse {fuse}: a span went missing");
        take_finalized();
    }
    assert!(panicked > 5, "only {panicked} clock reads were failed");
}

/// A finalizer panicking in a span flagged for finalizers (`Span::finalizers`), swept empty (the flag
/// reset) or not (kept): objects allocated later, in the reused spans, are still finalized once, the
/// survivors of the span whose finalizer panicked too; nothing twice.
#[test]
fn a_panicking_finalizer_leaves_the_finalizer_flag_right() {
    // Objects per round, and every how many a survivor is kept (smaller under Miri).
    let (n, every): (u64, u64) = if cfg!(miri) { (60, 20) } else { (200, 50) };
    for poison in [false, true] {
        for keep_one in [false, true] {
            let mut gc = slots_heap(GcConfig { poison, ..config() });
            take_finalized();
            gc.mutate(|mc, root| {
                for i in 0..n {
                    super::plain(mc, i);
                    bomb(mc, 10_000 + i, None);
                    let n = node(mc, i, None);
                    if keep_one && i % every == every - 1 {
                        n.next.set(mc, root[0].get());
                        root[0].set(mc, Some(n));
                    }
                }
            });
            arm(true);
            must_panic(|| gc.collect());
            gc.collect();
            let before = take_finalized();
            // Reuse the swept spans: plain first, then nodes; half of them die.
            gc.mutate(|mc, root| {
                for i in 0..2 * n {
                    super::plain(mc, i);
                    let n = node(mc, 1000 + i, None);
                    if i % 2 == 0 {
                        n.next.set(mc, root[1].get());
                        root[1].set(mc, Some(n));
                    }
                }
            });
            gc.collect();
            let mut dead: Vec<u64> = take_finalized()
                .into_iter()
                .filter(|&i| (1000..2000).contains(&i))
                .collect();
            dead.sort_unstable();
            assert_eq!(
                dead,
                (0..2 * n)
                    .filter(|i| i % 2 == 1)
                    .map(|i| 1000 + i)
                    .collect::<Vec<_>>(),
                "poison {poison} keep {keep_one}"
            );
            gc.mutate(|mc, root| {
                root[0].set(mc, None);
                root[1].set(mc, None);
            });
            gc.collect();
            let after = take_finalized();
            let survivors: Vec<u64> = after.iter().copied().filter(|&i| i < 1000).collect();
            if keep_one {
                let mut s = survivors.clone();
                s.sort_unstable();
                let kept: Vec<u64> = (0..n).filter(|i| i % every == every - 1).collect();
                assert_eq!(s, kept, "kept nodes of a panicked span still finalized");
            }
            assert_eq!(
                after.iter().filter(|&&i| (1000..2000).contains(&i)).count() as u64,
                n
            );
            let mut all: Vec<u64> = before.into_iter().chain(after).collect();
            let count = all.len();
            all.sort_unstable();
            all.dedup();
            assert_eq!(all.len(), count, "finalized twice");
            drop(gc);
            assert!(take_finalized().is_empty());
        }
    }
}
