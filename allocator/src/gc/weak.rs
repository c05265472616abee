//! Weak references: [`GcWeak`] points at a small managed *weak box* holding the target's address; the
//! box is traced (strongly), the target is not. Every box is on one intrusive list; at mark termination
//! the collector drops dead boxes from it and clears boxes whose target was not marked, before any
//! sweeping, so a box never points at a freed (or reused) slot.
//!
//! Invariants:
//! - The list holds every box a `GcWeak` was made from (boxes are only freed by the sweeper, after
//!   termination removed the dead ones from the list). A box whose allocation panicked in an assist
//!   (a `Trace` impl) before `GcWeak::new` linked it is reachable from nowhere and simply freed.
//! - A box's target is `None` or an object that was marked by the last termination or allocated since.
//!   A zero-sized target (object.rs) has no memory: it counts as marked and is never cleared.
//! - No user code runs here: `clear_dead` and `upgrade` only test and set mark bits, so a panic can only
//!   come from the marker refusing an address that is not this heap's object (a bug, reported).
//! - Upgrading while a mark runs shades the target: it becomes visible to the mutator, so a
//!   snapshot-at-the-beginning mark must keep it (it may have been unreachable at the snapshot).

use core::cell::Cell;
use core::marker::PhantomData;
use core::ptr::NonNull;

use super::mark::Marker;
use super::mutation::Mutation;
use super::ptr::Gc;
use super::trace::{Trace, Tracer};
use crate::addr::VirtAddr;

/// The managed cell a weak reference points through (pointer-free to the collector: headerless).
pub(crate) struct WeakBox {
    target: Cell<Option<NonNull<u8>>>,
    next: Cell<Option<NonNull<WeakBox>>>,
}

// SAFETY: holds no traced pointer (the target is weak; `next` is the collector's own list).
unsafe impl Trace for WeakBox {
    const NEEDS_TRACE: bool = false;
    fn trace(&self, _: &mut Tracer<'_>) {}
}

/// The list of all weak boxes.
pub(crate) struct WeakList {
    head: Option<NonNull<WeakBox>>,
}

impl WeakList {
    pub(crate) const fn new() -> Self {
        Self { head: None }
    }

    /// At termination: unlinks unmarked boxes, clears boxes whose target is unmarked.
    pub(crate) fn clear_dead(&mut self, marker: &Marker) {
        let mut prev: Option<NonNull<WeakBox>> = None;
        let mut cur = self.head;
        while let Some(b) = cur {
            // SAFETY: listed boxes are allocated (invariant) and initialized.
            let bx = unsafe { b.as_ref() };
            cur = bx.next.get();
            if !marker.is_marked(VirtAddr::from_ptr(b.as_ptr())) {
                match prev {
                    // SAFETY: as above.
                    Some(p) => unsafe { p.as_ref() }.next.set(cur),
                    None => self.head = cur,
                }
                continue;
            }
            if let Some(t) = bx.target.get() {
                if !marker.is_marked(VirtAddr::from_ptr(t.as_ptr())) {
                    bx.target.set(None);
                }
            }
            prev = Some(b);
        }
    }
}

/// A weak reference: does not keep its target alive; [`GcWeak::upgrade`] gives it back while it lives.
pub struct GcWeak<'gc, T: 'gc> {
    bx: Gc<'gc, WeakBox>,
    _target: PhantomData<Gc<'gc, T>>,
}

impl<'gc, T: 'gc> Clone for GcWeak<'gc, T> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<'gc, T: 'gc> Copy for GcWeak<'gc, T> {}

impl<'gc, T: Trace + 'gc> GcWeak<'gc, T> {
    /// A weak reference to `target` (allocates its box).
    pub fn new(mc: &Mutation<'gc>, target: Gc<'gc, T>) -> Self {
        let bx = Gc::new(
            mc,
            WeakBox {
                target: Cell::new(NonNull::new(target.as_ptr() as *mut u8)),
                next: Cell::new(None),
            },
        );
        let (_busy, inner) = mc.state().enter();
        bx.next.set(inner.weak.head);
        inner.weak.head = NonNull::new(bx.as_ptr() as *mut WeakBox);
        GcWeak {
            bx,
            _target: PhantomData,
        }
    }

    /// The target, if it has not been collected.
    pub fn upgrade(self, mc: &Mutation<'gc>) -> Option<Gc<'gc, T>> {
        let t = self.bx.target.get()?;
        if mc.is_marking() {
            let (_busy, inner) = mc.state().enter();
            inner.marker.shade(VirtAddr::from_ptr(t.as_ptr()));
        }
        // SAFETY: a set target is alive (module invariant) and is a `T` (set from a `Gc<T>` in `new`).
        Some(unsafe { Gc::from_ptr(t.cast::<T>()) })
    }

    /// Whether the target has been collected.
    pub fn is_dead(self) -> bool {
        self.bx.target.get().is_none()
    }
}

// SAFETY: traces the box (strongly), not the target.
unsafe impl<'gc, T: 'gc> Trace for GcWeak<'gc, T> {
    fn trace(&self, t: &mut Tracer<'_>) {
        t.trace(&self.bx);
    }
}
