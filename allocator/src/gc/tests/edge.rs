//! Probes of the safe API from an attacker's review, kept as regression tests: odd layouts (over-aligned
//! to 4 and 8 KiB, zero-sized with and without a finalizer, large objects, weak references to them),
//! finalizers that build, collect and drop other heaps, a heap owned by another heap's object, heaps
//! moved mid concurrent mark, a `start` that panics without running its job, and mark jobs run on the
//! mutator's own thread in the middle of cell borrows and writes (and from the clock).

use std::vec::Vec;

use super::*;

#[derive(Clone, Copy, Trace)]
#[repr(align(4096))]
struct A4k([u8; 100]);
#[derive(Clone, Copy, Trace)]
#[repr(align(8192))]
struct A8k([u8; 10]);
#[derive(Clone, Copy, Trace)]
#[repr(align(8192))]
struct Z8k;
#[derive(Clone, Copy, Trace)]
#[repr(align(64))]
struct A64(u8);

/// A value with a finalizer and a checksum, of any layout `T`.
struct Fin<T: 'static> {
    val: T,
    id: u64,
    _p: Probe,
}
// SAFETY: holds no Gc.
unsafe impl<T: 'static> Trace for Fin<T> {
    const NEEDS_TRACE: bool = false;
    fn trace(&self, _: &mut Tracer<'_>) {}
}

struct Big {
    words: [u64; 9000],
}
// SAFETY: no Gc.
unsafe impl Trace for Big {
    const NEEDS_TRACE: bool = false;
    fn trace(&self, _: &mut Tracer<'_>) {}
}

#[derive(Trace)]
struct Holder<'gc> {
    a: GcCell<'gc, Option<Gc<'gc, Fin<A4k>>>>,
    b: GcCell<'gc, Option<Gc<'gc, Fin<A8k>>>>,
    z: GcCell<'gc, Option<Gc<'gc, Fin<Z8k>>>>,
    c: GcCell<'gc, Option<Gc<'gc, Fin<A64>>>>,
    big: GcCell<'gc, Option<Gc<'gc, Big>>>,
    zn: GcCell<'gc, Option<Gc<'gc, Z8k>>>,
    wa: GcCell<'gc, Option<GcWeak<'gc, Fin<A8k>>>>,
    wz: GcCell<'gc, Option<GcWeak<'gc, Z8k>>>,
}

struct HR;
impl Rootable for HR {
    type Root<'gc> = GcCell<'gc, Option<Gc<'gc, Holder<'gc>>>>;
}

fn layout_rounds(cfg: GcConfig) {
    let mut gc: GcHeap<HR> = GcHeap::new(span_heap(256), cfg, |_| GcCell::new(None));
    take_finalized();
    for round in 0..6u64 {
        gc.mutate(|mc, root| {
            let base = round * 10;
            let a = Gc::new(
                mc,
                Fin {
                    val: A4k([round as u8; 100]),
                    id: base + 1,
                    _p: Probe(base + 1),
                },
            );
            let b = Gc::new(
                mc,
                Fin {
                    val: A8k([round as u8; 10]),
                    id: base + 2,
                    _p: Probe(base + 2),
                },
            );
            let z = Gc::new(
                mc,
                Fin {
                    val: Z8k,
                    id: base + 3,
                    _p: Probe(base + 3),
                },
            );
            let c = Gc::new(
                mc,
                Fin {
                    val: A64(round as u8),
                    id: base + 4,
                    _p: Probe(base + 4),
                },
            );
            assert_eq!(a.as_ptr() as usize % 4096, 0);
            assert_eq!(b.as_ptr() as usize % 8192, 0);
            assert_eq!(z.as_ptr() as usize % 8192, 0);
            assert_eq!(c.as_ptr() as usize % 64, 0);
            let big = Gc::new(
                mc,
                Big {
                    words: [round; 9000],
                },
            );
            let zn = Gc::new(mc, Z8k);
            let wa = GcWeak::new(mc, b);
            let wz = GcWeak::new(mc, zn);
            // Garbage of every kind too.
            for k in 0..20 {
                Gc::new(
                    mc,
                    Fin {
                        val: A8k([0; 10]),
                        id: 1000 + k,
                        _p: Probe(1000 + k),
                    },
                );
                Gc::new(mc, Big { words: [0; 9000] });
            }
            let h = Gc::new(
                mc,
                Holder {
                    a: GcCell::new(Some(a)),
                    b: GcCell::new(Some(b)),
                    z: GcCell::new(Some(z)),
                    c: GcCell::new(Some(c)),
                    big: GcCell::new(Some(big)),
                    zn: GcCell::new(Some(zn)),
                    wa: GcCell::new(Some(wa)),
                    wz: GcCell::new(Some(wz)),
                },
            );
            root.set(mc, Some(h));
        });
        for _ in 0..3 {
            gc.collect();
            gc.mutate(|mc, root| {
                let h = root.get().unwrap();
                let a = h.a.get().unwrap();
                assert_eq!(a.val.0, [round as u8; 100]);
                assert_eq!(a.id, round * 10 + 1);
                let b = h.b.get().unwrap();
                assert_eq!(b.val.0, [round as u8; 10]);
                assert_eq!(h.z.get().unwrap().id, round * 10 + 3);
                assert_eq!(h.c.get().unwrap().val.0, round as u8);
                assert!(h.big.get().unwrap().words.iter().all(|&w| w == round));
                let up = h.wa.get().unwrap().upgrade(mc).expect("live weak");
                assert!(Gc::ptr_eq(up, b));
                assert!(h.wz.get().unwrap().upgrade(mc).is_some());
            });
        }
        let fin: Vec<u64> = take_finalized();
        assert!(
            fin.iter().all(|&i| i >= 1000 || i / 10 < round),
            "live finalized: {fin:?}"
        );
    }
    drop(gc);
    let fin = take_finalized();
    assert!(fin.contains(&51) && fin.contains(&53), "{fin:?}");
}

#[test]
#[cfg_attr(miri, ignore = "too slow under Miri")]
fn odd_layouts_survive_stw() {
    layout_rounds(config());
}

#[test]
#[cfg_attr(miri, ignore = "too slow under Miri")]
fn odd_layouts_survive_incremental() {
    layout_rounds(GcConfig {
        mode: Mode::Incremental,
        ..config()
    });
}

#[test]
#[cfg_attr(miri, ignore = "too slow under Miri")]
fn odd_layouts_survive_concurrent() {
    layout_rounds(GcConfig {
        mode: Mode::Concurrent,
        concurrent_workers: Some(ConcurrentWorkers::threads(2)),
        ..config()
    });
}

// ---- reentrancy into other heaps from finalizers; heaps owned by managed objects; moved heaps ----

struct ListRoot;
impl Rootable for ListRoot {
    type Root<'gc> = GcCell<'gc, Option<Gc<'gc, Node<'gc>>>>;
}

fn conc_cfg() -> GcConfig {
    GcConfig {
        mode: Mode::Concurrent,
        concurrent_workers: Some(ConcurrentWorkers::threads(2)),
        ..config()
    }
}

fn build_list(gc: &mut GcHeap<ListRoot>, base: u64, n: u64) {
    gc.mutate(|mc, root| {
        let mut at = root.get();
        for i in 0..n {
            at = Some(node(mc, base + i, at));
        }
        root.set(mc, at);
    });
}

fn list_len(gc: &mut GcHeap<ListRoot>) -> u64 {
    gc.mutate(|_, root| {
        let mut n = 0;
        let mut at = root.get();
        while let Some(x) = at {
            n += 1;
            at = x.next.get();
        }
        n
    })
}

/// A finalizer that builds, collects and drops a whole other heap.
struct HeapInDrop;
static HEAPS_IN_DROP: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
impl Drop for HeapInDrop {
    fn drop(&mut self) {
        HEAPS_IN_DROP.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let mut other: GcHeap<ListRoot> =
            GcHeap::new(span_heap(32), conc_cfg(), |_| GcCell::new(None));
        build_list(&mut other, 5_000_000, 500);
        other.start_cycle();
        build_list(&mut other, 6_000_000, 500);
        other.collect();
        assert_eq!(list_len(&mut other), 1000);
    }
}
// SAFETY: holds no Gc.
unsafe impl Trace for HeapInDrop {
    const NEEDS_TRACE: bool = false;
    fn trace(&self, _: &mut Tracer<'_>) {}
}

/// A managed object owning another heap.
#[derive(Trace)]
struct OwnsHeap {
    #[trace(skip)]
    heap: std::cell::RefCell<Option<GcHeap<ListRoot>>>,
}

#[test]
#[cfg_attr(miri, ignore = "too slow under Miri")]
fn finalizers_may_use_other_heaps() {
    for cfg in [config(), conc_cfg()] {
        let mut gc: GcHeap<ListRoot> = GcHeap::new(span_heap(64), cfg, |_| GcCell::new(None));
        build_list(&mut gc, 0, 2000);
        gc.mutate(|mc, _| {
            for _ in 0..50 {
                Gc::new(mc, HeapInDrop);
            }
        });
        gc.start_cycle();
        build_list(&mut gc, 10_000, 2000);
        for _ in 0..20 {
            gc.step(4096);
            build_list(&mut gc, 20_000, 10);
        }
        gc.collect();
        gc.collect();
        assert_eq!(list_len(&mut gc), 4200);
        assert!(HEAPS_IN_DROP.load(std::sync::atomic::Ordering::SeqCst) >= 50);
        // A heap owned by a managed object of another heap, mid concurrent mark, dropped by that
        // heap's sweeper (lazily inside mutate).
        gc.mutate(|mc, _| {
            let mut inner: GcHeap<ListRoot> =
                GcHeap::new(span_heap(32), conc_cfg(), |_| GcCell::new(None));
            build_list(&mut inner, 0, 3000);
            inner.start_cycle();
            build_list(&mut inner, 0, 10);
            let o = Gc::new(
                mc,
                OwnsHeap {
                    heap: std::cell::RefCell::new(Some(inner)),
                },
            );
            let mut h = o.heap.borrow_mut();
            let inner = h.as_mut().unwrap();
            build_list(inner, 0, 10);
            assert_eq!(list_len(inner), 3020);
        });
        gc.collect();
        gc.mutate(|mc, _| {
            for i in 0..20000u64 {
                node(mc, 100_000 + i, None);
            }
        });
        gc.collect();
        assert_eq!(list_len(&mut gc), 4200);
        take_finalized();
    }
}

#[test]
#[cfg_attr(miri, ignore = "too slow under Miri")]
fn heaps_moved_between_mutate_calls_mid_concurrent_mark() {
    let gc: GcHeap<ListRoot> = GcHeap::new(span_heap(128), conc_cfg(), |_| GcCell::new(None));
    let mut boxed = std::boxed::Box::new(gc);
    build_list(&mut boxed, 0, 20_000);
    boxed.start_cycle();
    let mut v: Vec<GcHeap<ListRoot>> = Vec::new();
    v.push(*boxed);
    for round in 0..200u64 {
        // Move it around while workers may be marking.
        let mut gc = v.pop().unwrap();
        build_list(&mut gc, 100_000 + round * 100, 50);
        gc.mutate(|mc, root| {
            // Cut and rejoin: barrier work.
            let head = root.get().unwrap();
            let next = head.next.get();
            head.next.set(mc, None);
            head.next.set(mc, next);
        });
        gc.step(1024);
        let b = std::boxed::Box::new(gc);
        v.push(*b);
        if round % 50 == 0 {
            v[0].collect();
        }
    }
    let mut gc = v.pop().unwrap();
    gc.collect();
    assert_eq!(list_len(&mut gc), 20_000 + 200 * 50);
    take_finalized();
}

// ---- a `start` that panics (without running the job) ----

static START_BOOM: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

fn boom_start(job: MarkJob) {
    use std::sync::atomic::Ordering;
    let n = START_BOOM.fetch_add(1, Ordering::SeqCst);
    if n % 3 == 0 {
        drop(job);
        panic!("test: start panics");
    }
    if n % 3 == 1 {
        std::thread::spawn(move || job.run());
    }
    // else: dropped unrun
}

#[test]
#[cfg_attr(miri, ignore = "too slow under Miri")]
fn a_panicking_start_loses_nothing() {
    use std::panic::{catch_unwind, AssertUnwindSafe};
    let cfg = GcConfig {
        mode: Mode::Concurrent,
        concurrent_workers: Some(ConcurrentWorkers {
            helpers: 3,
            start: boom_start,
        }),
        ..config()
    };
    let mut gc: GcHeap<ListRoot> = GcHeap::new(span_heap(128), cfg, |_| GcCell::new(None));
    build_list(&mut gc, 0, 5000);
    gc.collect();
    take_finalized();
    let mut panics = 0;
    for cycle in 0..10u64 {
        let _ = catch_unwind(AssertUnwindSafe(|| gc.start_cycle()));
        for i in 0..200u64 {
            let r = catch_unwind(AssertUnwindSafe(|| {
                gc.mutate(|mc, root| {
                    // Churn: move the head's tail behind a fresh node (barrier work) and make garbage.
                    let head = root.get().unwrap();
                    let tail = head.next.get();
                    head.next.set(mc, None);
                    let n = node(mc, 1_000_000 + cycle * 1000 + i, tail);
                    head.next.set(mc, Some(n));
                    for k in 0..50 {
                        node(mc, 10_000_000 + k, None);
                    }
                })
            }));
            panics += r.is_err() as usize;
            let _ = catch_unwind(AssertUnwindSafe(|| gc.step(512)));
        }
    }
    assert!(panics > 0, "start never panicked");
    loop {
        if catch_unwind(AssertUnwindSafe(|| gc.collect())).is_ok() {
            break;
        }
    }
    let fin: Vec<u64> = take_finalized();
    assert!(
        fin.iter().all(|&id| id >= 10_000_000),
        "reachable finalized: {:?}",
        &fin[..fin.len().min(10)]
    );
    assert_eq!(list_len(&mut gc), 5000 + 2000);
}

// ---- jobs run on the mutator's own thread at arbitrary points inside `mutate` ----

std::thread_local! {
    static STASH: std::cell::RefCell<Vec<MarkJob>> = const { std::cell::RefCell::new(Vec::new()) };
}

fn stash(job: MarkJob) {
    STASH.with(|s| s.borrow_mut().push(job));
}

fn run_stashed() {
    let jobs: Vec<MarkJob> = STASH.with(|s| core::mem::take(&mut *s.borrow_mut()));
    for j in jobs {
        j.run();
    }
}

fn stash_clock() -> u64 {
    // The clock is called inside the collector: run jobs there too (on the mutator's thread).
    if let Ok(mut s) = STASH.with(|s| s.try_borrow_mut().map(|mut v| core::mem::take(&mut *v))) {
        for j in s.drain(..) {
            j.run();
        }
    }
    now_ns()
}

#[derive(Trace)]
struct Bag<'gc> {
    id: u64,
    items: GcRefCell<'gc, Vec<Option<Gc<'gc, Bag<'gc>>>>>,
    one: GcCell<'gc, Option<Gc<'gc, Bag<'gc>>>>,
    pair: GcCell<'gc, (Option<Gc<'gc, Bag<'gc>>>, u64)>,
}

struct BagRoot;
impl Rootable for BagRoot {
    type Root<'gc> = GcRefCell<'gc, Vec<Option<Gc<'gc, Bag<'gc>>>>>;
}

fn bag<'gc>(mc: &Mutation<'gc>, id: u64) -> Gc<'gc, Bag<'gc>> {
    Gc::new(
        mc,
        Bag {
            id,
            items: GcRefCell::new(Vec::new()),
            one: GcCell::new(None),
            pair: GcCell::new((None, id)),
        },
    )
}

fn count_bags<'gc>(root: &GcRefCell<'gc, Vec<Option<Gc<'gc, Bag<'gc>>>>>) -> usize {
    let mut seen = std::collections::HashSet::new();
    let mut todo: Vec<Gc<'gc, Bag<'gc>>> = root.borrow().iter().flatten().copied().collect();
    while let Some(b) = todo.pop() {
        if !seen.insert(b.as_ptr() as usize) {
            continue;
        }
        assert_eq!(b.pair.get().1, b.id, "bag {} corrupted", b.id);
        todo.extend(b.items.borrow().iter().flatten().copied());
        todo.extend(b.one.get());
        todo.extend(b.pair.get().0);
    }
    seen.len()
}

#[test]
#[cfg_attr(miri, ignore = "too slow under Miri")]
fn jobs_run_on_the_mutator_thread_mid_mutation() {
    let cfg = GcConfig {
        mode: Mode::Concurrent,
        concurrent_workers: Some(ConcurrentWorkers {
            helpers: 4,
            start: stash,
        }),
        clock: Some(stash_clock),
        min_heap: 64 << 10,
        ..config()
    };
    let mut gc: GcHeap<BagRoot> = GcHeap::new(span_heap(256), cfg, |_| GcRefCell::new(Vec::new()));
    let mut rng = Rng(0x1234_5678_9abc_def1);
    let mut next = 0u64;
    for round in 0..3000u64 {
        let r1 = rng.next();
        let r2 = rng.next();
        let r3 = rng.next();
        gc.mutate(|mc, root| {
            let mut roots = root.borrow_mut(mc);
            run_stashed();
            if roots.len() < 64 {
                next += 1;
                roots.push(Some(bag(mc, next)));
            }
            let n = roots.len() as u64;
            let a = roots[(r1 % n) as usize];
            let b = roots[(r2 % n) as usize];
            drop(roots);
            run_stashed();
            if let (Some(a), Some(b)) = (a, b) {
                let mut items = a.items.borrow_mut(mc);
                run_stashed();
                next += 1;
                let fresh = bag(mc, next);
                fresh.one.set(mc, Some(b));
                items.push(Some(fresh));
                if items.len() > 8 {
                    items.remove((r3 % 8) as usize);
                }
                drop(items);
                run_stashed();
                let old = b.one.replace(mc, a.one.get());
                run_stashed();
                a.one.set(mc, old);
                a.pair
                    .set(mc, (b.items.borrow().first().copied().flatten(), a.id));
                run_stashed();
                for _ in 0..(r3 % 40) {
                    next += 1;
                    bag(mc, next);
                }
            }
            if r3 % 7 == 0 {
                let mut roots = root.borrow_mut(mc);
                let i = (r1 % roots.len() as u64) as usize;
                roots[i] = None;
            }
            run_stashed();
        });
        if round % 100 == 0 {
            gc.mutate(|_, root| count_bags(root));
        }
    }
    let st = gc.stats();
    std::eprintln!(
        "cycles {} jobs {} scan {} freed {}",
        st.cycles,
        st.concurrent_jobs,
        st.concurrent_scan_bytes,
        st.objects_freed
    );
    assert!(st.cycles > 5 && st.concurrent_jobs > 0 && st.concurrent_scan_bytes > 0);
    gc.collect();
    gc.mutate(|_, root| count_bags(root));
    STASH.with(|s| s.borrow_mut().clear());
    take_finalized();
}
