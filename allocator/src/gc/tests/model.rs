//! The model-based random mutator: random operations (alloc, link, unlink, root, unroot, temporaries
//! held on the stack across allocations, step(k), start, collect) on the real heap and on a shadow graph.
//! After every operation: every object the model says is reachable is alive with its contents intact
//! and its edges as the model says, and no reachable object was finalized. After every full collection:
//! the objects not finalized are exactly the model's reachable set. At the end (heap dropped): every
//! object was finalized exactly once. Verification (checkmark) and poisoning are on throughout.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::vec::Vec;

use super::{span_heap, take_finalized, Probe, Rng};
use crate::gc::*;

const ROOTS: usize = 16;
const SLOTS: usize = 3;
const LARGE: usize = 5000;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum BlobKind {
    Tiny,
    Small,
    Large,
}

#[derive(Clone, Copy)]
enum Blob<'gc> {
    Tiny(Gc<'gc, u32>),
    Small(Gc<'gc, [u64; 6]>),
    Large(Gc<'gc, [u64; LARGE]>),
}

// SAFETY: traces the one Gc of each variant.
unsafe impl Trace for Blob<'_> {
    fn trace(&self, t: &mut Tracer<'_>) {
        match self {
            Blob::Tiny(g) => t.trace(g),
            Blob::Small(g) => t.trace(g),
            Blob::Large(g) => t.trace(g),
        }
    }
}

fn tiny_value(id: u64) -> u32 {
    (id as u32).wrapping_mul(2_654_435_761)
}

impl<'gc> Blob<'gc> {
    fn new(mc: &Mutation<'gc>, kind: BlobKind, id: u64) -> Self {
        match kind {
            BlobKind::Tiny => Blob::Tiny(Gc::new(mc, tiny_value(id))),
            BlobKind::Small => Blob::Small(Gc::new(mc, core::array::from_fn(|k| id ^ k as u64))),
            BlobKind::Large => {
                Blob::Large(Gc::new(mc, core::array::from_fn(|k| id * 3 + k as u64)))
            }
        }
    }

    /// Panics unless the blob is of `kind` and holds `id`'s pattern.
    fn check(self, kind: BlobKind, id: u64) {
        match (self, kind) {
            (Blob::Tiny(g), BlobKind::Tiny) => assert_eq!(*g, tiny_value(id), "tiny blob of {id}"),
            (Blob::Small(g), BlobKind::Small) => {
                assert!(
                    g.iter().enumerate().all(|(k, &v)| v == id ^ k as u64),
                    "small blob of {id}"
                )
            }
            (Blob::Large(g), BlobKind::Large) => assert!(
                g.iter().enumerate().all(|(k, &v)| v == id * 3 + k as u64),
                "large blob of {id}"
            ),
            _ => panic!("node {id}: blob of the wrong kind (model: {kind:?})"),
        }
    }
}

struct TNode<'gc> {
    id: u64,
    payload: [u64; 2],
    slots: [GcCell<'gc, Option<Gc<'gc, TNode<'gc>>>>; SLOTS],
    blob: GcCell<'gc, Option<Blob<'gc>>>,
    probe: Probe,
}

// SAFETY: traces every Gc field; Probe's Drop touches no Gc.
unsafe impl Trace for TNode<'_> {
    fn trace(&self, t: &mut Tracer<'_>) {
        t.trace(&self.slots);
        t.trace(&self.blob);
    }
}

type Ptr<'gc> = Gc<'gc, TNode<'gc>>;

fn tnode<'gc>(mc: &Mutation<'gc>, id: u64, blob: Option<BlobKind>) -> Ptr<'gc> {
    let blob = blob.map(|k| Blob::new(mc, k, id));
    Gc::new(
        mc,
        TNode {
            id,
            payload: [id.wrapping_mul(0x9e37_79b9_7f4a_7c15), !id],
            slots: Default::default(),
            blob: GcCell::new(blob),
            probe: Probe(id),
        },
    )
}

struct Root;
impl Rootable for Root {
    type Root<'gc> = GcRefCell<'gc, Vec<Option<Ptr<'gc>>>>;
}

#[derive(Clone, Copy, Default)]
struct MNode {
    slots: [Option<u64>; SLOTS],
    blob: Option<BlobKind>,
}

#[derive(Default)]
struct Model {
    /// Every node allocated and not finalized.
    nodes: BTreeMap<u64, MNode>,
    roots: [Option<u64>; ROOTS],
    next_id: u64,
    finalized: BTreeSet<u64>,
}

impl Model {
    fn reachable(&self) -> BTreeSet<u64> {
        let mut seen = BTreeSet::new();
        let mut todo: Vec<u64> = self.roots.iter().flatten().copied().collect();
        while let Some(id) = todo.pop() {
            if seen.insert(id) {
                todo.extend(self.nodes[&id].slots.iter().flatten());
            }
        }
        seen
    }

    fn pick(&self, reach: &BTreeSet<u64>, r: u64) -> Option<u64> {
        (!reach.is_empty()).then(|| *reach.iter().nth(r as usize % reach.len()).unwrap())
    }

    fn new_id(&mut self) -> u64 {
        self.next_id += 1;
        self.next_id
    }
}

/// The real nodes reachable from the root, by id.
fn walk<'gc>(root: &GcRefCell<'gc, Vec<Option<Ptr<'gc>>>>) -> HashMap<u64, Ptr<'gc>> {
    let mut seen = HashMap::new();
    let mut todo: Vec<Ptr<'gc>> = root.borrow().iter().flatten().copied().collect();
    while let Some(n) = todo.pop() {
        if seen.insert(n.id, n).is_none() {
            todo.extend(n.slots.iter().filter_map(|s| s.get()));
        }
    }
    seen
}

fn blob_kind() -> impl FnMut(&mut Rng) -> Option<BlobKind> {
    |rng| match rng.below(10) {
        0..=2 => None,
        3..=5 => Some(BlobKind::Tiny),
        6..=8 => Some(BlobKind::Small),
        _ => Some(BlobKind::Large),
    }
}

/// One random operation on both the heap and the model.
fn op(gc: &mut GcHeap<Root>, m: &mut Model, rng: &mut Rng, step: usize) {
    let reach = m.reachable();
    let mut kind = blob_kind();
    match rng.below(100) {
        0..=21 => {
            let (slot, blob, id) = (rng.below(ROOTS as u64) as usize, kind(rng), m.new_id());
            gc.mutate(|mc, root| {
                let n = tnode(mc, id, blob);
                root.borrow_mut(mc)[slot] = Some(n);
            });
            m.nodes.insert(
                id,
                MNode {
                    blob,
                    ..MNode::default()
                },
            );
            m.roots[slot] = Some(id);
        }
        22..=39 => {
            // A chain of temporaries held only on the stack while more is allocated, then linked in
            // (or dropped as garbage).
            let len = 1 + rng.below(6) as usize;
            let ids: Vec<u64> = (0..len).map(|_| m.new_id()).collect();
            let blobs: Vec<Option<BlobKind>> = (0..len).map(|_| kind(rng)).collect();
            let target = m.pick(&reach, rng.next()).filter(|_| rng.below(4) != 0);
            let slot = rng.below(SLOTS as u64) as usize;
            gc.mutate(|mc, root| {
                let mut head: Option<Ptr<'_>> = None;
                for (&id, &blob) in ids.iter().zip(&blobs) {
                    let n = tnode(mc, id, blob);
                    n.slots[0].set(mc, head);
                    Gc::new(mc, [id; 40]); // garbage: more allocation while the chain is on the stack
                    head = Some(n);
                }
                if let Some(t) = target {
                    walk(root)[&t].slots[slot].set(mc, head);
                }
            });
            let mut prev = None;
            for (&id, &blob) in ids.iter().zip(&blobs) {
                let mut slots = [None; SLOTS];
                slots[0] = prev;
                m.nodes.insert(id, MNode { slots, blob });
                prev = Some(id);
            }
            if let Some(t) = target {
                m.nodes.get_mut(&t).unwrap().slots[slot] = prev;
            }
        }
        40..=57 => {
            let (Some(from), Some(to)) = (m.pick(&reach, rng.next()), m.pick(&reach, rng.next()))
            else {
                return;
            };
            let slot = rng.below(SLOTS as u64) as usize;
            gc.mutate(|mc, root| {
                let w = walk(root);
                w[&from].slots[slot].set(mc, Some(w[&to]));
            });
            m.nodes.get_mut(&from).unwrap().slots[slot] = Some(to);
        }
        58..=65 => {
            let Some(from) = m.pick(&reach, rng.next()) else {
                return;
            };
            let slot = rng.below(SLOTS as u64) as usize;
            gc.mutate(|mc, root| walk(root)[&from].slots[slot].set(mc, None));
            m.nodes.get_mut(&from).unwrap().slots[slot] = None;
        }
        66..=73 => {
            let Some(to) = m.pick(&reach, rng.next()) else {
                return;
            };
            let slot = rng.below(ROOTS as u64) as usize;
            gc.mutate(|mc, root| {
                let n = walk(root)[&to];
                root.borrow_mut(mc)[slot] = Some(n);
            });
            m.roots[slot] = Some(to);
        }
        74..=77 => {
            let slot = rng.below(ROOTS as u64) as usize;
            gc.mutate(|mc, root| root.borrow_mut(mc)[slot] = None);
            m.roots[slot] = None;
        }
        78..=83 => {
            let Some(n) = m.pick(&reach, rng.next()) else {
                return;
            };
            let blob = kind(rng);
            gc.mutate(|mc, root| {
                let node = walk(root)[&n];
                node.blob.set(mc, blob.map(|k| Blob::new(mc, k, n)));
            });
            m.nodes.get_mut(&n).unwrap().blob = blob;
        }
        84..=95 => {
            if gc.phase() != Phase::Marking {
                gc.start_cycle();
            }
            gc.step(step);
        }
        96..=97 => gc.start_cycle(),
        _ => {
            gc.collect();
            check_finalized(m);
            let live: BTreeSet<u64> = m.nodes.keys().copied().collect();
            assert_eq!(
                live,
                m.reachable(),
                "after a full collection, live == reachable"
            );
        }
    }
}

/// Takes the finalized ids: none twice, none reachable.
fn check_finalized(m: &mut Model) {
    let reach = m.reachable();
    for id in take_finalized() {
        assert!(m.finalized.insert(id), "node {id} finalized twice");
        assert!(!reach.contains(&id), "reachable node {id} was finalized");
        assert!(
            m.nodes.remove(&id).is_some(),
            "finalized node {id} was never allocated"
        );
    }
}

/// The real heap matches the model on everything reachable.
fn check(gc: &mut GcHeap<Root>, m: &mut Model) {
    check_finalized(m);
    let reach = m.reachable();
    gc.mutate(|_, root| {
        let roots = root.borrow();
        for (i, r) in roots.iter().enumerate() {
            assert_eq!(r.map(|n| n.id), m.roots[i], "root slot {i}");
        }
        drop(roots);
        let w = walk(root);
        assert_eq!(w.keys().copied().collect::<BTreeSet<_>>(), reach);
        for (&id, n) in &w {
            let mn = &m.nodes[&id];
            assert_eq!(n.payload, [id.wrapping_mul(0x9e37_79b9_7f4a_7c15), !id]);
            assert_eq!(n.probe.0, id);
            for s in 0..SLOTS {
                assert_eq!(
                    n.slots[s].get().map(|t| t.id),
                    mn.slots[s],
                    "node {id} slot {s}"
                );
            }
            match (n.blob.get(), mn.blob) {
                (None, None) => {}
                (Some(b), Some(k)) => b.check(k, id),
                (b, k) => panic!(
                    "node {id}: blob {:?} in the heap, {k:?} in the model",
                    b.is_some()
                ),
            }
        }
    });
}

fn run(cfg: GcConfig, step: usize, seeds: u64, ops: usize) {
    for seed in 1..=seeds {
        let cfg = GcConfig {
            verify: true,
            poison: true,
            min_heap: 256 << 10,
            ..cfg
        };
        let mut gc: GcHeap<Root> = GcHeap::new(span_heap(256), cfg, |_| {
            GcRefCell::new(std::vec![None; ROOTS])
        });
        take_finalized();
        let mut m = Model::default();
        let mut rng = Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1);
        for _ in 0..ops {
            op(&mut gc, &mut m, &mut rng, step);
            check(&mut gc, &mut m);
        }
        gc.collect();
        check_finalized(&mut m);
        assert_eq!(
            m.nodes.keys().copied().collect::<BTreeSet<_>>(),
            m.reachable()
        );
        let cycles = gc.stats().cycles;
        assert!(cycles > 5, "seed {seed}: only {cycles} cycles");
        drop(gc);
        m.roots = [None; ROOTS]; // dropping the heap finalizes everything
        check_finalized(&mut m);
        assert!(
            m.nodes.is_empty(),
            "seed {seed}: never finalized: {:?}",
            m.nodes.keys()
        );
        assert_eq!(m.finalized.len() as u64, m.next_id, "seed {seed}");
    }
}

#[test]
#[cfg_attr(miri, ignore = "too slow under Miri")]
fn model_stop_the_world() {
    run(
        GcConfig {
            mode: Mode::StopTheWorld,
            ..GcConfig::default()
        },
        usize::MAX,
        4,
        4000,
    );
}

/// Stop-the-world marks on 3 threads: random mutation against parallel workers, checkmark on.
#[test]
#[cfg_attr(miri, ignore = "too slow under Miri")]
fn model_stop_the_world_parallel() {
    run(
        GcConfig {
            mode: Mode::StopTheWorld,
            mark_workers: Some(MarkWorkers::threads(2)),
            ..GcConfig::default()
        },
        usize::MAX,
        3,
        3000,
    );
}

/// Concurrent marks with 2 worker threads beside the mutator: random mutation while workers trace,
/// checkmark on. Small under Miri (its data-race detector checks the cell and table protocols).
#[test]
fn model_concurrent() {
    // Under Miri: one heap (every test leaks its heap's window, which Miri keeps).
    let (seeds, ops, steps): (u64, usize, &[usize]) = if cfg!(miri) {
        (1, 60, &[64])
    } else {
        (3, 3000, &[64, 4096])
    };
    for &step in steps {
        run(
            GcConfig {
                mode: Mode::Concurrent,
                concurrent_workers: Some(ConcurrentWorkers::threads(2)),
                ..GcConfig::default()
            },
            step,
            seeds,
            ops,
        );
    }
}

#[test]
#[cfg_attr(miri, ignore = "too slow under Miri")]
fn model_incremental_step_sizes() {
    for step in [1, 100, 4096, usize::MAX] {
        run(GcConfig::default(), step, 3, 3000);
    }
}

#[test]
#[cfg_attr(miri, ignore = "too slow under Miri")]
fn model_stress_collect_every_safepoint() {
    run(
        GcConfig {
            stress: Stress::CollectEverySafepoint,
            ..GcConfig::default()
        },
        64,
        2,
        1500,
    );
}

/// A parallel mark at every safe point: many small marks, where workers mostly find little to share.
#[test]
#[cfg_attr(miri, ignore = "too slow under Miri")]
fn model_stress_collect_every_safepoint_parallel() {
    run(
        GcConfig {
            stress: Stress::CollectEverySafepoint,
            mark_workers: Some(MarkWorkers::threads(2)),
            ..GcConfig::default()
        },
        64,
        2,
        1000,
    );
}

#[test]
#[cfg_attr(miri, ignore = "too slow under Miri")]
fn model_stress_step_every_alloc() {
    for budget in [1, 512] {
        run(
            GcConfig {
                stress: Stress::StepEveryAlloc(budget),
                ..GcConfig::default()
            },
            64,
            3,
            3000,
        );
    }
}

/// Mode and worker combinations the tests above do not cover: concurrent marks with parallel
/// termination, with stress steps, with a collection at every safe point, without workers, and with
/// jobs run at once inside `start`.
#[test]
#[cfg_attr(miri, ignore = "too slow under Miri")]
fn model_mode_combinations() {
    let cw = Some(ConcurrentWorkers::threads(2));
    let mw = Some(MarkWorkers::threads(2));
    let combos: &[(&str, GcConfig)] = &[
        (
            "conc+par",
            GcConfig {
                mode: Mode::Concurrent,
                concurrent_workers: cw,
                mark_workers: mw,
                ..GcConfig::default()
            },
        ),
        (
            "conc+stress1",
            GcConfig {
                mode: Mode::Concurrent,
                concurrent_workers: cw,
                stress: Stress::StepEveryAlloc(1),
                ..GcConfig::default()
            },
        ),
        (
            "conc+par+stress512",
            GcConfig {
                mode: Mode::Concurrent,
                concurrent_workers: cw,
                mark_workers: mw,
                stress: Stress::StepEveryAlloc(512),
                ..GcConfig::default()
            },
        ),
        (
            "incr+par+stress1",
            GcConfig {
                mark_workers: mw,
                stress: Stress::StepEveryAlloc(1),
                ..GcConfig::default()
            },
        ),
        (
            "conc+collect",
            GcConfig {
                mode: Mode::Concurrent,
                concurrent_workers: cw,
                stress: Stress::CollectEverySafepoint,
                ..GcConfig::default()
            },
        ),
        (
            "conc-noworkers",
            GcConfig {
                mode: Mode::Concurrent,
                ..GcConfig::default()
            },
        ),
        (
            "conc-zero-helpers",
            GcConfig {
                mode: Mode::Concurrent,
                concurrent_workers: Some(ConcurrentWorkers {
                    helpers: 0,
                    start: |j| j.run(),
                }),
                ..GcConfig::default()
            },
        ),
        (
            "conc-inline-start",
            GcConfig {
                mode: Mode::Concurrent,
                concurrent_workers: Some(ConcurrentWorkers {
                    helpers: 3,
                    start: |j| j.run(),
                }),
                ..GcConfig::default()
            },
        ),
    ];
    for (name, cfg) in combos {
        std::eprintln!("combo {name}");
        for step in [64, 4096] {
            run(*cfg, step, 2, 1500);
        }
    }
}
