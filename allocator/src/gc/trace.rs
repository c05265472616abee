//! Precise tracing: the [`Trace`] trait every managed type implements, and the [`Tracer`] it reports
//! its `Gc` pointers to.
//!
//! Invariants (the contract of `unsafe impl Trace`, on which the collector's soundness rests):
//! - `trace` passes every `Gc` the value holds directly (not behind another `Gc`) to the tracer, and
//!   `NEEDS_TRACE` is false only for types that can hold none.
//! - Gc pointers inside the value change only through [`GcCell`](super::GcCell) /
//!   [`GcRefCell`](super::GcRefCell) (whose writes run the barrier), never through `core::cell` types.
//! - Neither `trace` nor the type's `Drop` (the finalizer, run when the sweeper frees the object)
//!   touches the GC heap: no allocation, no cell writes, and `Drop` dereferences no `Gc` (the object it
//!   points to may have been freed first). Holding `Gc`s and being dropped is fine.
//! - With parallel marking (`GcConfig::mark_workers`), `trace` runs on other CPUs/threads, at the same
//!   time as other objects' `trace` (never the same object's twice at once), while the mutator is
//!   stopped: it must touch nothing but the value itself and the tracer (no thread-local or other
//!   shared unsynchronised state). Every impl in this crate and every derived impl qualifies.
//! - With concurrent marking (`Mode::Concurrent`, `GcConfig::concurrent_workers`), `trace` also runs
//!   on other CPUs *while the mutator runs*: it may read only what cannot change meanwhile — the
//!   value's fields outside cells (immutable: a `Gc` gives only `&T`) — and its `GcCell`/`GcRefCell`
//!   fields only through their own `Trace` impls (`t.trace(&cell)`), which read them as the
//!   mutator's writes write them: under a lock, or as one atomic word (cell.rs). It must not read any other interior-mutable data (a `Cell`,
//!   `RefCell` or atomic field the mutator may write without the collector knowing). Derived impls
//!   qualify: they call `t.trace` on every field, and the only `Trace` types with interior
//!   mutability are the two GC cells (synchronised) and `Cell`/`RefCell` of `'static` data, whose impls
//!   read nothing (`NEEDS_TRACE == false`, so the tracer does not even call them). Safe code cannot
//!   write a `Trace` impl at all (the trait is `unsafe`), so a type the mutator mutates unseen can
//!   reach a worker only through a hand-written `unsafe impl` that breaks this contract.
//! - Panicking is allowed (it breaks no invariant of the collector, see mod.rs "Panics"): a `trace`
//!   that panics makes the mark rescan before it ends; a `Drop` that panics leaks the other dead
//!   objects of its span.

use core::cell::{Cell, RefCell};
use core::marker::PhantomData;

use super::mark::Marker;
use crate::addr::VirtAddr;

/// A type the collector can trace. See the module documentation for the contract.
///
/// # Safety
/// Implementors promise the contract in the module documentation: a missed `Gc` is freed while still
/// reachable, and a `Drop` that dereferences a `Gc` may read freed memory. `#[derive(Trace)]` writes a
/// sound impl (every field traced, no `Drop` on a type that may hold a `Gc`). An impl outside this
/// crate must leave the hidden `ATOMIC_WORD` at its default (`false`): the crate relies on it being
/// `true` only for its own `Gc` and `Option<Gc>`.
#[diagnostic::on_unimplemented(
    message = "`{Self}` cannot be traced by the garbage collector",
    label = "not `Trace`",
    note = "managed values hold `Gc`s only through `Trace` types: `Gc`, `GcCell`, `GcRefCell`, `Option`, arrays, tuples, `'static` data; derive `Trace` for your own types, or wrap the field in `#[trace(skip)]` if it is `'static`"
)]
pub unsafe trait Trace {
    /// Whether the type may hold `Gc` pointers. `false` puts headerless objects in noscan spans.
    const NEEDS_TRACE: bool = true;

    /// Whether every value is exactly one pointer-sized, pointer-aligned word whose bytes are all
    /// initialized (a thin `Gc`, an `Option` of one, whose `None` is the null word): a
    /// [`GcCell`](super::GcCell) of such a type is read by concurrent mark workers and written by the
    /// mutator with single atomic word accesses instead of a stripe lock (cell.rs). Only this crate
    /// sets it, for those types; an impl elsewhere must not (see the trait's safety section: the
    /// `Option` impl trusts a `true` to come from `Gc`, whose niche is the whole word).
    #[doc(hidden)]
    const ATOMIC_WORD: bool = false;

    /// Reports every `Gc` held by `self` to `t` (usually by calling `t.trace(&field)` on each field).
    fn trace(&self, t: &mut Tracer<'_>);
}

/// Receives the pointers a [`Trace`] impl reports; marks them (or checks them, in verification).
pub struct Tracer<'a> {
    pub(crate) m: &'a mut Marker,
}

impl Tracer<'_> {
    /// Traces `value` (a no-op for types without pointers).
    #[inline]
    pub fn trace<T: Trace + ?Sized>(&mut self, value: &T) {
        if T::NEEDS_TRACE {
            value.trace(self);
        }
    }

    /// Whether this tracer is a concurrent mark worker's: cells then read their contents as the
    /// mutator's writes write them, under their locks or as one atomic word (cell.rs). The mutator's
    /// own tracer (assists, termination) reads plainly even while workers run: it is the cells' only writer, and workers only read. Taking
    /// them, an assist could spin on a stripe a descheduled worker holds, for as long as the worker is
    /// off its CPU (assists of 1.9-2.6 ms in gc_bench's concurrent row on a loaded host).
    #[inline]
    pub(crate) fn is_concurrent(&self) -> bool {
        self.m.conc.is_some() && self.m.is_worker()
    }

    /// Shades the object at `addr` (a `Gc`'s address).
    #[inline]
    pub(crate) fn edge(&mut self, addr: VirtAddr) {
        self.m.shade(addr);
    }
}

macro_rules! leaf {
    ($($t:ty),*) => {$(
        // SAFETY: holds no Gc.
        unsafe impl Trace for $t {
            const NEEDS_TRACE: bool = false;
            #[inline]
            fn trace(&self, _: &mut Tracer<'_>) {}
        }
    )*};
}

leaf!(
    u8,
    u16,
    u32,
    u64,
    u128,
    usize,
    i8,
    i16,
    i32,
    i64,
    i128,
    isize,
    f32,
    f64,
    bool,
    char,
    (),
    str
);

// SAFETY: a `'static` reference cannot point at a `Gc<'gc, _>` (those never live for `'static`).
unsafe impl<T: ?Sized + 'static> Trace for &'static T {
    const NEEDS_TRACE: bool = false;
    fn trace(&self, _: &mut Tracer<'_>) {}
}

// SAFETY: holds no value.
unsafe impl<T: ?Sized> Trace for PhantomData<T> {
    const NEEDS_TRACE: bool = false;
    fn trace(&self, _: &mut Tracer<'_>) {}
}

// SAFETY: a `'static` type holds no `Gc` (module docs of `&'static T`), so unbarriered mutation is fine.
unsafe impl<T: Copy + 'static> Trace for Cell<T> {
    const NEEDS_TRACE: bool = false;
    fn trace(&self, _: &mut Tracer<'_>) {}
}

// SAFETY: as for `Cell`.
unsafe impl<T: 'static> Trace for RefCell<T> {
    const NEEDS_TRACE: bool = false;
    fn trace(&self, _: &mut Tracer<'_>) {}
}

// SAFETY: traces the value when present. `ATOMIC_WORD`: `T::ATOMIC_WORD` is true only for a thin
// `Gc` (the trait's safety section forbids it elsewhere), a `repr(transparent)` `NonNull`, so an
// `Option<T>` of `T`'s size is the null-pointer-optimised one: each value is the `Gc`'s initialized
// word or the null word. (For a payload whose niche is narrower than the word, `None` would leave
// bytes uninitialized, which is why the flag is the crate's alone.)
unsafe impl<T: Trace> Trace for Option<T> {
    const NEEDS_TRACE: bool = T::NEEDS_TRACE;
    const ATOMIC_WORD: bool =
        T::ATOMIC_WORD && core::mem::size_of::<Option<T>>() == core::mem::size_of::<T>();
    #[inline]
    fn trace(&self, t: &mut Tracer<'_>) {
        if let Some(v) = self {
            t.trace(v);
        }
    }
}

// SAFETY: traces both variants' values.
unsafe impl<T: Trace, E: Trace> Trace for Result<T, E> {
    const NEEDS_TRACE: bool = T::NEEDS_TRACE || E::NEEDS_TRACE;
    fn trace(&self, t: &mut Tracer<'_>) {
        match self {
            Ok(v) => t.trace(v),
            Err(e) => t.trace(e),
        }
    }
}

// SAFETY: traces every element.
unsafe impl<T: Trace> Trace for [T] {
    const NEEDS_TRACE: bool = T::NEEDS_TRACE;
    fn trace(&self, t: &mut Tracer<'_>) {
        for v in self {
            t.trace(v);
        }
    }
}

// SAFETY: traces every element.
unsafe impl<T: Trace, const N: usize> Trace for [T; N] {
    const NEEDS_TRACE: bool = T::NEEDS_TRACE;
    fn trace(&self, t: &mut Tracer<'_>) {
        for v in self {
            t.trace(v);
        }
    }
}

macro_rules! tuple {
    ($($n:tt $t:ident),*) => {
        // SAFETY: traces every field.
        unsafe impl<$($t: Trace),*> Trace for ($($t,)*) {
            const NEEDS_TRACE: bool = false $(|| $t::NEEDS_TRACE)*;
            fn trace(&self, t: &mut Tracer<'_>) {
                $(t.trace(&self.$n);)*
            }
        }
    };
}

tuple!(0 A);
tuple!(0 A, 1 B);
tuple!(0 A, 1 B, 2 C);
tuple!(0 A, 1 B, 2 C, 3 D);

#[cfg(any(test, feature = "std"))]
mod std_impls {
    use super::{Trace, Tracer};
    use std::boxed::Box;
    use std::vec::Vec;

    // SAFETY: traces every element. A `Vec` of `Gc`s may only be changed inside a `GcRefCell`, whose
    // `borrow_mut` runs the barrier (Trace contract), so the buffer never changes unseen.
    unsafe impl<T: Trace> Trace for Vec<T> {
        const NEEDS_TRACE: bool = T::NEEDS_TRACE;
        fn trace(&self, t: &mut Tracer<'_>) {
            for v in self {
                t.trace(v);
            }
        }
    }

    // SAFETY: traces the boxed value.
    unsafe impl<T: Trace + ?Sized> Trace for Box<T> {
        const NEEDS_TRACE: bool = T::NEEDS_TRACE;
        fn trace(&self, t: &mut Tracer<'_>) {
            t.trace(&**self);
        }
    }
}
