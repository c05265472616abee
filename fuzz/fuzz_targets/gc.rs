//! The collector under arbitrary operation sequences, against a model graph of reachability.
//!
//! Operations: allocate nodes into root slots, allocate chains of temporaries held only on the stack
//! (with garbage allocated in between) and maybe link them in, link, unlink, root, unroot, replace a
//! node's blob (tiny, small or large pointer-free data, or a traced one without drop glue that shares
//! the nodes' spans), create, drop and upgrade weak references, `step`, `start_cycle`, `finish_mark`,
//! `collect`. The heap runs with `verify` (every cycle re-marks with
//! the world stopped and panics on anything the mark missed) and `poison` on, in the mode and stress
//! setting the input picks.
//!
//! Checked after every operation: everything the model says is reachable is reachable in the heap, with
//! its contents and edges as the model says; no reachable node was finalized; no node was finalized
//! twice; a weak reference to a reachable node upgrades to it, one to a finalized node is dead. After every
//! `collect`: the nodes not finalized are exactly the reachable ones, and a weak reference is dead exactly
//! when its target is unreachable. At the end (heap dropped): every node was finalized exactly once.

#![no_main]

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet, HashMap};

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use spanalloc::gc::{
    Gc, GcCell, GcConfig, GcHeap, GcRefCell, GcWeak, Mode, Mutation, Phase, Rootable, Stress,
    Trace, Tracer,
};

const ROOTS: usize = 8;
const SLOTS: usize = 3;
const LARGE: usize = 5000;

std::thread_local! {
    /// Ids of finalized nodes, in order (finalizers run on the heap's thread).
    static FINALIZED: RefCell<Vec<u64>> = const { RefCell::new(Vec::new()) };
}

fn take_finalized() -> Vec<u64> {
    FINALIZED.with(|f| std::mem::take(&mut *f.borrow_mut()))
}

/// Records its id when finalized.
struct Probe(u64);

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

#[derive(Arbitrary, Clone, Copy, Debug, PartialEq, Eq)]
enum BlobKind {
    Tiny,
    Small,
    Large,
    /// Traced, without drop glue, and of `Node`'s size class: shares spans with nodes, whose
    /// finalizers the sweep must still find (`Span::finalizers`).
    Scan,
}

/// A `BlobKind::Scan` blob: a `Gc` (so it is traced) and no drop glue.
struct ScanBlob<'gc> {
    tiny: GcCell<'gc, Option<Gc<'gc, u32>>>,
    words: [u64; 8],
}

// SAFETY: traces its one Gc field; no Drop.
unsafe impl Trace for ScanBlob<'_> {
    fn trace(&self, t: &mut Tracer<'_>) {
        t.trace(&self.tiny);
    }
}

const _: () = assert!(
    std::mem::size_of::<ScanBlob<'static>>() == std::mem::size_of::<Node<'static>>(),
    "a scan blob shares the node's size class"
);

#[derive(Clone, Copy)]
enum Blob<'gc> {
    Tiny(Gc<'gc, u32>),
    Small(Gc<'gc, [u64; 6]>),
    Large(Gc<'gc, [u64; LARGE]>),
    Scan(Gc<'gc, ScanBlob<'gc>>),
}

// SAFETY: traces the one Gc of each variant.
unsafe impl Trace for Blob<'_> {
    fn trace(&self, t: &mut Tracer<'_>) {
        match self {
            Blob::Tiny(g) => t.trace(g),
            Blob::Small(g) => t.trace(g),
            Blob::Large(g) => t.trace(g),
            Blob::Scan(g) => t.trace(g),
        }
    }
}

fn tiny_value(id: u64) -> u32 {
    (id as u32).wrapping_mul(2_654_435_761) ^ 0x5a5a
}

impl<'gc> Blob<'gc> {
    fn new(mc: &Mutation<'gc>, kind: BlobKind, id: u64) -> Self {
        match kind {
            BlobKind::Tiny => Blob::Tiny(Gc::new(mc, tiny_value(id))),
            BlobKind::Small => Blob::Small(Gc::new(mc, std::array::from_fn(|k| id ^ k as u64))),
            BlobKind::Large => Blob::Large(Gc::new(mc, std::array::from_fn(|k| id * 7 + k as u64))),
            BlobKind::Scan => Blob::Scan(Gc::new(
                mc,
                ScanBlob {
                    tiny: GcCell::new(Some(Gc::new(mc, tiny_value(id)))),
                    words: std::array::from_fn(|k| id ^ (k as u64) << 3),
                },
            )),
        }
    }

    fn check(self, kind: BlobKind, id: u64) {
        match (self, kind) {
            (Blob::Tiny(g), BlobKind::Tiny) => assert_eq!(*g, tiny_value(id), "tiny blob of {id}"),
            (Blob::Small(g), BlobKind::Small) => assert!(
                g.iter().enumerate().all(|(k, &v)| v == id ^ k as u64),
                "small blob of {id}"
            ),
            (Blob::Large(g), BlobKind::Large) => assert!(
                g.iter().enumerate().all(|(k, &v)| v == id * 7 + k as u64),
                "large blob of {id}"
            ),
            (Blob::Scan(g), BlobKind::Scan) => assert!(
                g.tiny.get().is_some_and(|t| *t == tiny_value(id))
                    && g.words.iter().enumerate().all(|(k, &v)| v == id ^ (k as u64) << 3),
                "scan blob of {id}"
            ),
            _ => panic!("node {id}: blob of the wrong kind (model: {kind:?})"),
        }
    }
}

struct Node<'gc> {
    id: u64,
    payload: [u64; 2],
    slots: [GcCell<'gc, Option<Ptr<'gc>>>; SLOTS],
    blob: GcCell<'gc, Option<Blob<'gc>>>,
    probe: Probe,
}

// SAFETY: traces every Gc field; Probe's Drop touches no Gc.
unsafe impl Trace for Node<'_> {
    fn trace(&self, t: &mut Tracer<'_>) {
        t.trace(&self.slots);
        t.trace(&self.blob);
    }
}

type Ptr<'gc> = Gc<'gc, Node<'gc>>;

fn payload(id: u64) -> [u64; 2] {
    [id.wrapping_mul(0x9E37_79B9_7F4A_7C15), !id]
}

fn node<'gc>(mc: &Mutation<'gc>, id: u64, blob: Option<BlobKind>) -> Ptr<'gc> {
    let blob = blob.map(|k| Blob::new(mc, k, id));
    Gc::new(
        mc,
        Node {
            id,
            payload: payload(id),
            slots: Default::default(),
            blob: GcCell::new(blob),
            probe: Probe(id),
        },
    )
}

struct Root;
impl Rootable for Root {
    type Root<'gc> = (
        GcRefCell<'gc, Vec<Option<Ptr<'gc>>>>,
        GcRefCell<'gc, Vec<GcWeak<'gc, Node<'gc>>>>,
    );
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
    /// The target of each weak reference in the root's weak list, in order.
    weak: Vec<u64>,
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

    fn pick(reach: &BTreeSet<u64>, r: u16) -> Option<u64> {
        (!reach.is_empty()).then(|| *reach.iter().nth(usize::from(r) % reach.len()).unwrap())
    }

    fn new_id(&mut self) -> u64 {
        self.next_id += 1;
        self.next_id
    }

    /// Takes the finalized ids: none twice, none reachable, each one allocated.
    fn take_finalized(&mut self) {
        let reach = self.reachable();
        for id in take_finalized() {
            assert!(self.finalized.insert(id), "node {id} finalized twice");
            assert!(!reach.contains(&id), "reachable node {id} was finalized");
            assert!(
                self.nodes.remove(&id).is_some(),
                "finalized node {id} was never allocated"
            );
        }
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

#[derive(Arbitrary, Debug)]
enum Op {
    Alloc {
        root: u8,
        blob: Option<BlobKind>,
    },
    /// A chain of `1 + len % 6` temporaries on the stack, with garbage allocated between them, linked
    /// into slot `slot` of a reachable node (`target`) or dropped.
    Chain {
        len: u8,
        blobs: [Option<BlobKind>; 2],
        target: Option<u16>,
        slot: u8,
    },
    Link {
        from: u16,
        to: u16,
        slot: u8,
    },
    Unlink {
        from: u16,
        slot: u8,
    },
    Root {
        to: u16,
        root: u8,
    },
    Unroot {
        root: u8,
    },
    SetBlob {
        node: u16,
        blob: Option<BlobKind>,
    },
    Weak {
        to: u16,
    },
    DropWeak {
        which: u16,
    },
    /// Upgrades weak reference `which`; if the model says its target is reachable, roots it in `root`.
    Upgrade {
        which: u16,
        root: Option<u8>,
    },
    Step {
        budget: u16,
    },
    StartCycle,
    FinishMark,
    Collect,
}

#[derive(Arbitrary, Debug)]
struct Input {
    stop_the_world: bool,
    /// 0..=5: none; 6: collect at every safe point; 7: a step of `stress_budget` bytes per allocation.
    stress: u8,
    stress_budget: u16,
    /// Heap goal floor: `16 KiB << (min_heap % 8)`, small enough for the pacer to start cycles itself.
    min_heap: u8,
    ops: Vec<Op>,
}

fn op(gc: &mut GcHeap<Root>, m: &mut Model, op: Op) {
    let reach = m.reachable();
    match op {
        Op::Alloc { root, blob } => {
            let (slot, id) = (usize::from(root) % ROOTS, m.new_id());
            gc.mutate(|mc, root| {
                let n = node(mc, id, blob);
                root.0.borrow_mut(mc)[slot] = Some(n);
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
        Op::Chain {
            len,
            blobs,
            target,
            slot,
        } => {
            let len = 1 + usize::from(len % 6);
            let ids: Vec<u64> = (0..len).map(|_| m.new_id()).collect();
            let target = target.and_then(|t| Model::pick(&reach, t));
            let slot = usize::from(slot) % SLOTS;
            gc.mutate(|mc, root| {
                let mut head: Option<Ptr<'_>> = None;
                for (i, &id) in ids.iter().enumerate() {
                    let n = node(mc, id, blobs[i % 2]);
                    n.slots[0].set(mc, head);
                    Gc::new(mc, [id; 40]); // garbage, allocated while the chain lives on the stack only
                    head = Some(n);
                }
                if let Some(t) = target {
                    walk(&root.0)[&t].slots[slot].set(mc, head);
                }
            });
            let mut prev = None;
            for (i, &id) in ids.iter().enumerate() {
                let mut slots = [None; SLOTS];
                slots[0] = prev;
                m.nodes.insert(
                    id,
                    MNode {
                        slots,
                        blob: blobs[i % 2],
                    },
                );
                prev = Some(id);
            }
            if let Some(t) = target {
                m.nodes.get_mut(&t).unwrap().slots[slot] = prev;
            }
        }
        Op::Link { from, to, slot } => {
            let (Some(from), Some(to)) = (Model::pick(&reach, from), Model::pick(&reach, to))
            else {
                return;
            };
            let slot = usize::from(slot) % SLOTS;
            gc.mutate(|mc, root| {
                let w = walk(&root.0);
                w[&from].slots[slot].set(mc, Some(w[&to]));
            });
            m.nodes.get_mut(&from).unwrap().slots[slot] = Some(to);
        }
        Op::Unlink { from, slot } => {
            let Some(from) = Model::pick(&reach, from) else {
                return;
            };
            let slot = usize::from(slot) % SLOTS;
            gc.mutate(|mc, root| walk(&root.0)[&from].slots[slot].set(mc, None));
            m.nodes.get_mut(&from).unwrap().slots[slot] = None;
        }
        Op::Root { to, root } => {
            let Some(to) = Model::pick(&reach, to) else {
                return;
            };
            let slot = usize::from(root) % ROOTS;
            gc.mutate(|mc, root| {
                let n = walk(&root.0)[&to];
                root.0.borrow_mut(mc)[slot] = Some(n);
            });
            m.roots[slot] = Some(to);
        }
        Op::Unroot { root } => {
            let slot = usize::from(root) % ROOTS;
            gc.mutate(|mc, root| root.0.borrow_mut(mc)[slot] = None);
            m.roots[slot] = None;
        }
        Op::SetBlob { node: n, blob } => {
            let Some(n) = Model::pick(&reach, n) else {
                return;
            };
            gc.mutate(|mc, root| {
                let node = walk(&root.0)[&n];
                node.blob.set(mc, blob.map(|k| Blob::new(mc, k, n)));
            });
            m.nodes.get_mut(&n).unwrap().blob = blob;
        }
        Op::Weak { to } => {
            let Some(to) = Model::pick(&reach, to) else {
                return;
            };
            gc.mutate(|mc, root| {
                let n = walk(&root.0)[&to];
                let w = GcWeak::new(mc, n);
                root.1.borrow_mut(mc).push(w);
            });
            m.weak.push(to);
        }
        Op::DropWeak { which } => {
            if m.weak.is_empty() {
                return;
            }
            let i = usize::from(which) % m.weak.len();
            gc.mutate(|mc, root| {
                root.1.borrow_mut(mc).remove(i);
            });
            m.weak.remove(i);
        }
        Op::Upgrade { which, root: slot } => {
            if m.weak.is_empty() {
                return;
            }
            let i = usize::from(which) % m.weak.len();
            let target = m.weak[i];
            let reachable = reach.contains(&target);
            let finalized = m.finalized.contains(&target);
            let slot = slot.map(|s| usize::from(s) % ROOTS).filter(|_| reachable);
            gc.mutate(|mc, root| {
                let got = root.1.borrow()[i].upgrade(mc);
                match got {
                    // An unreachable target may still be alive until a cycle finds it dead.
                    Some(n) => {
                        assert!(!finalized, "weak ref to finalized node {target} upgraded");
                        assert_eq!(n.id, target, "weak ref upgraded to the wrong node");
                        assert_eq!(n.payload, payload(target), "weak target {target} corrupted");
                        if let Some(s) = slot {
                            root.0.borrow_mut(mc)[s] = Some(n);
                        }
                    }
                    None => assert!(!reachable, "weak ref to reachable node {target} is dead"),
                }
            });
            if let Some(s) = slot {
                m.roots[s] = Some(target);
            }
        }
        Op::Step { budget } => {
            if gc.phase() != Phase::Marking {
                gc.start_cycle();
            }
            gc.step(usize::from(budget) * 16 + 1);
        }
        Op::StartCycle => gc.start_cycle(),
        Op::FinishMark => gc.finish_mark(),
        Op::Collect => {
            gc.collect();
            m.take_finalized();
            let reach = m.reachable();
            let live: BTreeSet<u64> = m.nodes.keys().copied().collect();
            assert_eq!(live, reach, "after a full collection, live == reachable");
            gc.mutate(|_, root| {
                for (w, &target) in root.1.borrow().iter().zip(&m.weak) {
                    assert_eq!(
                        w.is_dead(),
                        !reach.contains(&target),
                        "after a full collection, weak ref to {target}: dead iff unreachable"
                    );
                }
            });
        }
    }
}

/// The real heap matches the model on everything reachable.
fn check(gc: &mut GcHeap<Root>, m: &mut Model) {
    m.take_finalized();
    let reach = m.reachable();
    gc.mutate(|mc, root| {
        for (i, r) in root.0.borrow().iter().enumerate() {
            assert_eq!(r.map(|n| n.id), m.roots[i], "root slot {i}");
        }
        let w = walk(&root.0);
        assert_eq!(
            w.keys().copied().collect::<BTreeSet<_>>(),
            reach,
            "reachable set"
        );
        for (&id, n) in &w {
            let mn = &m.nodes[&id];
            assert_eq!(n.payload, payload(id), "node {id} payload");
            assert_eq!(n.probe.0, id, "node {id} probe");
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
        let weak = root.1.borrow();
        assert_eq!(weak.len(), m.weak.len(), "weak refs");
        for (w, &target) in weak.iter().zip(&m.weak) {
            if reach.contains(&target) {
                // Upgrading a reachable target only shades what the mark keeps anyway.
                let n = w.upgrade(mc);
                assert_eq!(
                    n.map(|n| n.id),
                    Some(target),
                    "weak ref to reachable node {target}"
                );
            } else if m.finalized.contains(&target) {
                assert!(
                    w.is_dead(),
                    "weak ref to finalized node {target} is not dead"
                );
            }
        }
    });
}

fuzz_target!(|input: Input| {
    let config = GcConfig {
        mode: if input.stop_the_world {
            Mode::StopTheWorld
        } else {
            Mode::Incremental
        },
        stress: match input.stress % 8 {
            6 => Stress::CollectEverySafepoint,
            7 => Stress::StepEveryAlloc(usize::from(input.stress_budget) + 1),
            _ => Stress::None,
        },
        min_heap: (16 << 10) << (input.min_heap % 8),
        verify: true,
        poison: true,
        ..GcConfig::default()
    };
    let mut gc: GcHeap<Root> = GcHeap::new(spanalloc_fuzz::heap(), config, |_| {
        (
            GcRefCell::new(vec![None; ROOTS]),
            GcRefCell::new(Vec::new()),
        )
    });
    take_finalized();
    let mut m = Model::default();
    for o in input.ops.into_iter().take(400) {
        op(&mut gc, &mut m, o);
        check(&mut gc, &mut m);
    }
    gc.collect();
    m.take_finalized();
    let live: BTreeSet<u64> = m.nodes.keys().copied().collect();
    assert_eq!(
        live,
        m.reachable(),
        "after the last collection, live == reachable"
    );
    drop(gc);
    // Dropping the heap finalizes everything left, once.
    m.roots = [None; ROOTS];
    m.take_finalized();
    assert!(m.nodes.is_empty(), "never finalized: {:?}", m.nodes.keys());
    assert_eq!(m.finalized.len() as u64, m.next_id, "finalizer runs");
});
