//! The mutator's side: [`Mutation`], the capability to allocate and to write cells during one `mutate`
//! call, and [`Rootable`], which names the root type for every brand.
//!
//! Roots are explicit: one root value per heap, of type `R::Root<'gc>`, holding every `Gc` that must
//! survive between `mutate` calls (a root set is just a root holding a `GcRefCell<Vec<...>>` or an array
//! of `GcCell`s). Nothing on the stack is ever a root: the collector only finishes work at safe points
//! between `mutate` calls, when no `Gc` is on the stack (see ptr.rs).
//!
//! Invariants:
//! - A `&'gc Mutation<'gc>` exists only inside `mutate` (it is created there, for a fresh `'gc`).
//! - `Mutation` is `#[repr(transparent)]` over the heap's state, so the state can be lent as one.

use super::heap::State;
use super::ptr::{Brand, Gc};
use super::trace::Trace;

/// Names the root type of a heap for every brand `'gc`:
/// `struct MyRoot; impl Rootable for MyRoot { type Root<'gc> = MyRootData<'gc>; }`.
pub trait Rootable: 'static {
    type Root<'gc>: Trace + 'gc;
}

/// Allocation and barriered writes for one `mutate` call of one heap.
#[repr(transparent)]
pub struct Mutation<'gc> {
    state: State,
    _brand: Brand<'gc>,
}

impl<'gc> Mutation<'gc> {
    pub(crate) fn new(state: &State) -> &Mutation<'gc> {
        // SAFETY: `Mutation` is repr(transparent) over `State` (the brand is a ZST).
        unsafe { &*(state as *const State as *const Mutation<'gc>) }
    }

    pub(crate) fn state(&self) -> &State {
        &self.state
    }

    /// Allocates `value`; same as [`Gc::new`].
    pub fn alloc<T: Trace + 'gc>(&self, value: T) -> Gc<'gc, T> {
        Gc::new(self, value)
    }

    /// Whether a mark is in progress (the write barrier is on).
    pub fn is_marking(&self) -> bool {
        self.state.is_marking()
    }

    /// The write barrier for a value about to be overwritten in a managed object or the root: while
    /// marking, shades every `Gc` it holds. Crate-private: the cells call it with values of their own
    /// brand, so it never shades another heap's objects.
    #[inline]
    pub(crate) fn barrier<T: Trace + ?Sized>(&self, old: &T) {
        if T::NEEDS_TRACE && self.state.is_marking() {
            self.state.shade_value(old);
        }
    }
}
