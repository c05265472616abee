//! Interior mutability for managed objects, with the write barrier built in: [`GcCell`] (like `Cell`,
//! for `Copy` values such as `Option<Gc<..>>`) and [`GcRefCell`] (like `RefCell`).
//!
//! The barrier is a deletion (Yuasa, snapshot-at-the-beginning) barrier, see barrier.rs: before a value
//! is overwritten while marking, every `Gc` in it is shaded.
//!
//! Invariants:
//! - Writes need a `&Mutation<'gc>` of the cell's own brand `'gc`, so a cell is only written in its own
//!   heap's `mutate` and the barrier shades into the right heap.
//! - `GcRefCell::borrow_mut` shades the whole old contents before handing out `&mut`; so while it is
//!   mutably borrowed, the marker may skip it (its snapshot is already shaded, and everything stored in
//!   it meanwhile is black or reachable from the snapshot).
//! - A `GcRefCell`'s contents are never reachable except through `borrow`/`borrow_mut` (no `get_mut`,
//!   no `into_inner`): a leaked `RefMut` leaves them unreachable for good, so skipping them is safe.

use core::cell::{Cell, Ref, RefCell, RefMut};
use core::fmt;

use super::mutation::Mutation;
use super::ptr::Brand;
use super::trace::{Trace, Tracer};

/// A `Cell` for managed objects: `get` freely, `set` with the heap's [`Mutation`].
pub struct GcCell<'gc, T: Copy> {
    value: Cell<T>,
    _brand: Brand<'gc>,
}

impl<'gc, T: Copy + Trace> GcCell<'gc, T> {
    pub fn new(value: T) -> Self {
        Self {
            value: Cell::new(value),
            _brand: Brand::default(),
        }
    }

    #[inline]
    pub fn get(&self) -> T {
        self.value.get()
    }

    /// Stores `value`, shading the old value first while marking.
    #[inline]
    pub fn set(&self, mc: &Mutation<'gc>, value: T) {
        mc.barrier(&self.value.get());
        self.value.set(value);
    }

    /// Stores `value` and returns the old one (shaded while marking).
    pub fn replace(&self, mc: &Mutation<'gc>, value: T) -> T {
        let old = self.value.get();
        mc.barrier(&old);
        self.value.set(value);
        old
    }
}

impl<T: Copy + Trace + Default> Default for GcCell<'_, T> {
    fn default() -> Self {
        GcCell::new(T::default())
    }
}

impl<T: Copy + fmt::Debug> fmt::Debug for GcCell<'_, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("GcCell").field(&self.value.get()).finish()
    }
}

// SAFETY: traces the current value (a copy: no borrow of the cell is held while tracing).
unsafe impl<T: Copy + Trace> Trace for GcCell<'_, T> {
    const NEEDS_TRACE: bool = T::NEEDS_TRACE;
    #[inline]
    fn trace(&self, t: &mut Tracer<'_>) {
        t.trace(&self.value.get());
    }
}

/// A `RefCell` for managed objects: `borrow` freely, `borrow_mut` with the heap's [`Mutation`].
pub struct GcRefCell<'gc, T> {
    value: RefCell<T>,
    _brand: Brand<'gc>,
}

impl<'gc, T: Trace> GcRefCell<'gc, T> {
    pub fn new(value: T) -> Self {
        Self {
            value: RefCell::new(value),
            _brand: Brand::default(),
        }
    }

    /// Shares the value; panics if it is mutably borrowed (as `RefCell::borrow`).
    pub fn borrow(&self) -> Ref<'_, T> {
        self.value.borrow()
    }

    /// Mutable access; while marking, every `Gc` the value holds now is shaded first. Panics if the value
    /// is borrowed (as `RefCell::borrow_mut`).
    pub fn borrow_mut(&self, mc: &Mutation<'gc>) -> RefMut<'_, T> {
        let r = self.value.borrow_mut();
        mc.barrier(&*r);
        r
    }
}

impl<T: fmt::Debug> fmt::Debug for GcRefCell<'_, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("GcRefCell").field(&self.value).finish()
    }
}

// SAFETY: traces the value unless it is mutably borrowed — then its old contents were shaded by
// `borrow_mut` (module invariants), which is all a snapshot-at-the-beginning mark needs from it.
unsafe impl<T: Trace> Trace for GcRefCell<'_, T> {
    const NEEDS_TRACE: bool = T::NEEDS_TRACE;
    fn trace(&self, t: &mut Tracer<'_>) {
        if let Ok(v) = self.value.try_borrow() {
            t.trace(&*v);
        }
    }
}
