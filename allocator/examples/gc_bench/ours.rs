//! Throughput workloads on spanalloc::gc: binary-trees and Boehm's GCBench.

use super::*;

#[derive(Trace)]
pub struct Node<'gc> {
    pub left: Option<Gc<'gc, Node<'gc>>>,
    pub right: Option<Gc<'gc, Node<'gc>>>,
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
    binary_trees_with(heap, max, GcConfig::default())
}

/// binary-trees on a collector configured by `config` (e.g. with mark workers on other threads).
pub fn binary_trees_with(heap: &'static Heap<HostPlatform>, max: u32, config: GcConfig) -> u64 {
    let mut gc: GcHeap<Long> = GcHeap::new(heap, config, |_| GcCell::new(None));
    let mut out = gc.mutate(|mc, _| check(bottom_up(mc, max + 1)));
    gc.mutate(|mc, root| root.set(mc, Some(bottom_up(mc, max))));
    for d in (4..=max).step_by(2) {
        for _ in 0..1u64 << (max - d + 4) {
            out += gc.mutate(|mc, _| check(bottom_up(mc, d)));
        }
    }
    out + gc.mutate(|_, root| check(root.get().unwrap()))
}

#[derive(Trace)]
pub struct BNode<'gc> {
    left: GcCell<'gc, Option<Gc<'gc, BNode<'gc>>>>,
    right: GcCell<'gc, Option<Gc<'gc, BNode<'gc>>>>,
    i: i32,
    j: i32,
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
