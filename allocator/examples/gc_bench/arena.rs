//! The same workloads on gc-arena (incremental, default pacing, `collect_debt` after every `mutate`).

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
