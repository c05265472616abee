//! `#[derive(Trace)]` (the spanalloc-derive crate) on every shape it accepts: each test keeps objects
//! reachable only through derived impls across collections with checkmark on, so a field the derive
//! failed to trace is either freed (its payload reads back wrong: poison is on) or named by the
//! checkmark. What it refuses is in allocator/tests/compile_fail/derive_*.rs.

use std::vec::Vec;

use super::{config, span_heap, take_finalized, Probe, FINALIZED};
use crate::gc::{Gc, GcCell, GcConfig, GcHeap, GcRefCell, Mode, Phase, Rootable, Trace};

#[derive(Trace)]
struct Named<'gc> {
    id: u64,
    payload: Gc<'gc, [u64; 8]>,
    next: GcCell<'gc, Option<Gc<'gc, Named<'gc>>>>,
}

#[derive(Trace)]
struct Tuple<'gc>(u32, Gc<'gc, [u64; 8]>, Option<Gc<'gc, Tuple<'gc>>>);

#[derive(Trace)]
enum Shape<'gc> {
    Empty,
    One(Gc<'gc, [u64; 8]>),
    Pair {
        left: Gc<'gc, Shape<'gc>>,
        right: Gc<'gc, Shape<'gc>>,
    },
}

/// Generic: the parameter gets a `Trace` bound; `skip` leaves a 'static field untraced.
#[derive(Trace)]
struct Holder<'gc, T> {
    items: GcRefCell<'gc, Vec<T>>,
    #[trace(skip)]
    label: &'static str,
}

/// Pointer-free: no header, no scan.
#[derive(Trace, Clone, Copy)]
struct Plain {
    a: u64,
    b: [u32; 2],
}

/// A finalizer on a 'static type: allowed with `#[trace(drop)]`.
#[derive(Trace)]
#[trace(drop)]
struct Finalized {
    id: u64,
}

impl Drop for Finalized {
    fn drop(&mut self) {
        FINALIZED.with(|f| f.borrow_mut().push(self.id));
    }
}

#[derive(Trace)]
struct DeriveRoot<'gc> {
    named: GcCell<'gc, Option<Gc<'gc, Named<'gc>>>>,
    tuple: GcCell<'gc, Option<Gc<'gc, Tuple<'gc>>>>,
    shape: GcCell<'gc, Option<Gc<'gc, Shape<'gc>>>>,
    holder: GcCell<'gc, Option<Gc<'gc, Holder<'gc, Gc<'gc, Named<'gc>>>>>>,
    finalized: GcCell<'gc, Option<Gc<'gc, Finalized>>>,
    _probe: GcCell<'gc, Option<Gc<'gc, Probe>>>,
}

struct R;
impl Rootable for R {
    type Root<'gc> = DeriveRoot<'gc>;
}

fn payload(id: u64) -> [u64; 8] {
    core::array::from_fn(|k| id.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ k as u64)
}

/// Checked at compile time: the test binary does not build if the derive gets one wrong.
#[test]
fn needs_trace_is_the_or_of_the_fields() {
    const {
        assert!(!<Plain as Trace>::NEEDS_TRACE);
        assert!(!<Finalized as Trace>::NEEDS_TRACE);
        assert!(<Named<'static> as Trace>::NEEDS_TRACE);
        assert!(<Tuple<'static> as Trace>::NEEDS_TRACE);
        assert!(<Shape<'static> as Trace>::NEEDS_TRACE);
        assert!(!<Holder<'static, u64> as Trace>::NEEDS_TRACE);
        assert!(<Holder<'static, Gc<'static, u64>> as Trace>::NEEDS_TRACE);
    }
}

fn derived_shapes_survive(mode: Mode) {
    let mut gc: GcHeap<R> = GcHeap::new(span_heap(64), GcConfig { mode, ..config() }, |_| {
        DeriveRoot {
            named: GcCell::new(None),
            tuple: GcCell::new(None),
            shape: GcCell::new(None),
            holder: GcCell::new(None),
            finalized: GcCell::new(None),
            _probe: GcCell::new(None),
        }
    });
    let n = if cfg!(miri) { 20 } else { 400 };
    gc.mutate(|mc, root| {
        for id in 0..n {
            let named = Gc::new(
                mc,
                Named {
                    id,
                    payload: Gc::new(mc, payload(id)),
                    next: GcCell::new(root.named.get()),
                },
            );
            root.named.set(mc, Some(named));
            let tuple = Tuple(id as u32, Gc::new(mc, payload(id)), root.tuple.get());
            root.tuple.set(mc, Some(Gc::new(mc, tuple)));
        }
        let leaf = |id| Gc::new(mc, Shape::One(Gc::new(mc, payload(id))));
        let pair = Shape::Pair {
            left: leaf(1),
            right: Gc::new(
                mc,
                Shape::Pair {
                    left: leaf(2),
                    right: Gc::new(mc, Shape::Empty),
                },
            ),
        };
        root.shape.set(mc, Some(Gc::new(mc, pair)));
        let holder = Holder {
            items: GcRefCell::new(Vec::new()),
            label: "holder",
        };
        let holder = Gc::new(mc, holder);
        for id in 0..n {
            let item = Gc::new(
                mc,
                Named {
                    id: 1000 + id,
                    payload: Gc::new(mc, payload(1000 + id)),
                    next: GcCell::new(None),
                },
            );
            holder.items.borrow_mut(mc).push(item);
        }
        root.holder.set(mc, Some(holder));
        root.finalized
            .set(mc, Some(Gc::new(mc, Finalized { id: 77 })));
        // Garbage between the live objects, so that freed slots get reused (and poisoned).
        for id in 0..n {
            Gc::new(mc, payload(id));
        }
    });
    for round in 0..3 {
        if mode == Mode::Incremental {
            // Steps interleaved with allocation: the derived impls run under the barrier and assists.
            gc.start_cycle();
            while gc.step(512) == Phase::Marking {
                gc.mutate(|mc, _| {
                    Gc::new(mc, payload(round));
                });
            }
        } else {
            gc.collect();
        }
        gc.mutate(|mc, root| {
            let mut at = root.named.get();
            let mut count = 0;
            while let Some(node) = at {
                assert_eq!(*node.payload, payload(node.id), "round {round}");
                count += 1;
                at = node.next.get();
            }
            assert_eq!(count, n);
            let mut at = root.tuple.get();
            let mut count = 0;
            while let Some(t) = at {
                assert_eq!(*t.1, payload(u64::from(t.0)));
                count += 1;
                at = t.2;
            }
            assert_eq!(count, n);
            let Shape::Pair { left, right } = *root.shape.get().expect("shape") else {
                panic!("the root shape is a pair");
            };
            assert!(matches!(*left, Shape::One(p) if *p == payload(1)));
            assert!(matches!(*right, Shape::Pair { left, .. } if matches!(*left, Shape::One(p) if *p == payload(2))));
            let holder = root.holder.get().expect("holder");
            assert_eq!(holder.label, "holder");
            for (i, item) in holder.items.borrow().iter().enumerate() {
                assert_eq!(item.id, 1000 + i as u64);
                assert_eq!(*item.payload, payload(item.id));
            }
            // Garbage for the next round.
            for id in 0..n {
                Gc::new(mc, payload(id));
            }
        });
    }
    assert!(take_finalized().is_empty());
    gc.mutate(|mc, root| root.finalized.set(mc, None));
    gc.collect();
    assert_eq!(take_finalized(), [77]);
}

#[test]
fn derived_shapes_survive_stop_the_world_collections() {
    derived_shapes_survive(Mode::StopTheWorld);
}

#[test]
fn derived_shapes_survive_incremental_collections() {
    derived_shapes_survive(Mode::Incremental);
}
