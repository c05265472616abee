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
//!   no `into_inner`): a leaked `GcRefMut` leaves them unreachable for good, so skipping them is safe.
//!
//! Concurrent marking (conc.rs): mark workers on other CPUs trace objects while the mutator runs, so
//! every cell a worker reads is accessed under a protocol both sides follow (nothing else in an object
//! can change: fields outside cells are immutable after allocation, since a `Gc` gives only `&T`):
//! - `GcCell`: while workers may run (`State::is_concurrent`, constant for a whole `mutate` call), the
//!   mutator's writes and the workers' reads of a cell hold the cell's stripe lock (one of
//!   [`STRIPES`] spin locks chosen by the cell's address; held only for the copy of the value, so no
//!   user code runs under it and no lock is ever taken under another). The mutator's own reads need no
//!   lock, its tracing in assists and termination included: it is the only writer (so it never waits
//!   for a worker's copy but to write). A wait for a stripe counts as a pause.
//! - `GcCell` of a one-word type (`Trace::ATOMIC_WORD`: `Gc`, `Option<Gc>`, the usual link field):
//!   instead of the stripe, the mutator's writes are single atomic word stores (`Release`) and the
//!   workers' reads single atomic word loads (`Acquire`, which also makes the pointee's initialization
//!   visible, as the stripe's release/acquire did). A word is copied whole or not at all, so no lock is
//!   needed; the mutator's plain reads race with no write (it is the only writer). Measured in
//!   gc_bench's concurrent row: two stripe locks per tree node, on cache lines both CPUs take in turn,
//!   were 40% of the worker's time.
//! - `GcRefCell`: `trace_lock` is 0 (free), `WRITER` (the mutator holds a `GcRefMut`) or the number of
//!   tracers reading the contents. `borrow_mut` takes `WRITER` (waiting for tracers of this one cell to
//!   finish, a wait counted as a pause) after shading the old contents, and its guard gives it back; a
//!   tracer takes a read count unless `WRITER` is held, and skips the cell then (its snapshot was
//!   shaded). Tracers read the contents through the `RefCell`'s pointer and never touch its borrow
//!   flag, which only the mutator uses. The lock is taken on every `borrow_mut` (an uncontended CAS),
//!   so the protocol needs no mode.

use core::cell::{Cell, Ref, RefCell, RefMut};
use core::fmt;
use core::mem::{align_of, size_of, transmute_copy};
use core::ops::{Deref, DerefMut};
use core::sync::atomic::{AtomicPtr, AtomicU32, AtomicUsize, Ordering};

use super::mutation::Mutation;
use super::ptr::Brand;
use super::trace::{Trace, Tracer};

/// Spin locks guarding `GcCell` copies while concurrent mark workers run (module docs).
static STRIPES: [AtomicU32; 64] = [const { AtomicU32::new(0) }; 64];

/// Holds the stripe lock of one cell address.
struct Stripe(&'static AtomicU32);

impl Stripe {
    fn of<T>(cell: *const T) -> &'static AtomicU32 {
        let h = (cell.addr() >> 3).wrapping_mul(0x9E37_79B9_7F4A_7C15_u64 as usize)
            >> (usize::BITS - 6);
        &STRIPES[h]
    }

    fn spin(l: &'static AtomicU32) -> Stripe {
        while l
            .compare_exchange_weak(0, 1, Ordering::Acquire, Ordering::Relaxed)
            .is_err()
        {
            core::hint::spin_loop();
        }
        Stripe(l)
    }

    /// A tracer's lock.
    #[inline]
    fn lock<T>(cell: *const T) -> Stripe {
        Self::spin(Self::of(cell))
    }

    /// The mutator's lock, and when it began to wait for a worker's copy (the clock's time), if it
    /// did: the caller counts that pause once the lock is released (the clock and the pause hook are
    /// user code, which never runs under a stripe).
    #[inline]
    fn lock_mutator<T>(cell: *const T, mc: &Mutation<'_>) -> (Stripe, Option<u64>) {
        let l = Self::of(cell);
        if l.compare_exchange(0, 1, Ordering::Acquire, Ordering::Relaxed)
            .is_ok()
        {
            return (Stripe(l), None);
        }
        Self::wait(l, mc)
    }

    #[cold]
    #[inline(never)]
    fn wait(l: &'static AtomicU32, mc: &Mutation<'_>) -> (Stripe, Option<u64>) {
        let t0 = mc.state().now();
        (Self::spin(l), Some(t0))
    }
}

/// Whether the stripe of the cell whose `GcCell::stripe_key` is `key` is held.
#[cfg(test)]
pub(crate) fn stripe_held(key: usize) -> bool {
    Stripe::of(key as *const u8).load(Ordering::Relaxed) != 0
}

/// Every stripe lock, held until dropped: a test's stand-in for workers holding them (and then
/// descheduled).
#[cfg(test)]
pub(crate) struct AllStripes(#[allow(dead_code)] std::vec::Vec<Stripe>);

#[cfg(test)]
impl AllStripes {
    pub(crate) fn lock() -> Self {
        AllStripes(STRIPES.iter().map(Stripe::spin).collect())
    }
}

impl Drop for Stripe {
    #[inline]
    fn drop(&mut self) {
        self.0.store(0, Ordering::Release);
    }
}

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
        self.replace(mc, value);
    }

    /// Stores `value` and returns the old one (shaded while marking).
    #[inline]
    pub fn replace(&self, mc: &Mutation<'gc>, value: T) -> T {
        let old = self.value.get();
        mc.barrier(&old);
        if T::ATOMIC_WORD && mc.state().is_concurrent() {
            // SAFETY: `T::ATOMIC_WORD`: every byte of `value` is initialized, and its one word is
            // a pointer's size (checked in `word`).
            let w = unsafe { transmute_copy::<T, *mut u8>(&value) };
            self.word().store(w, Ordering::Release);
        } else if T::NEEDS_TRACE && mc.state().is_concurrent() {
            let waited = {
                let (_g, waited) = Stripe::lock_mutator(self.value.as_ptr(), mc);
                self.value.set(value);
                waited
            };
            if let Some(t0) = waited {
                mc.state().waited(t0);
            }
        } else {
            self.value.set(value);
        }
        old
    }

    /// The value as one atomic word: only for `T::ATOMIC_WORD` types (module docs), whose size and
    /// alignment are a pointer's (a compile-time check).
    #[inline]
    fn word(&self) -> &AtomicPtr<u8> {
        const {
            assert!(
                !T::ATOMIC_WORD
                    || (size_of::<T>() == size_of::<AtomicPtr<u8>>()
                        && align_of::<T>() >= align_of::<AtomicPtr<u8>>()),
                "Trace::ATOMIC_WORD on a type that is not one aligned pointer-sized word"
            )
        };
        debug_assert!(T::ATOMIC_WORD);
        // SAFETY: the cell's value is an `AtomicPtr`'s size and alignment (checked above) and lives
        // as long as `&self`. While workers may run, every access to it from two threads at once is
        // atomic (the workers' loads and the mutator's stores here) or a read against a read (the
        // mutator's `get`); outside that window only the mutator touches it (module docs).
        unsafe { AtomicPtr::from_ptr(self.value.as_ptr().cast::<*mut u8>()) }
    }

    /// The cell's address as its stripe lock knows it.
    #[cfg(test)]
    pub(crate) fn stripe_key(&self) -> usize {
        self.value.as_ptr() as usize
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

// SAFETY: traces the current value (a copy: no borrow of the cell is held while tracing); a concurrent
// mark worker copies it under the stripe lock the mutator's writes take meanwhile, or for a one-word
// `T` loads it atomically as the mutator stores it; the mutator's own tracer reads it plainly (it is
// the only writer, module docs).
unsafe impl<T: Copy + Trace> Trace for GcCell<'_, T> {
    const NEEDS_TRACE: bool = T::NEEDS_TRACE;
    #[inline]
    fn trace(&self, t: &mut Tracer<'_>) {
        let v = if T::ATOMIC_WORD && t.is_concurrent() {
            let w = self.word().load(Ordering::Acquire);
            // SAFETY: the word holds a `T`'s bytes (the value the cell was built with, or one the
            // mutator stored whole in `replace`), so it is a valid `T`.
            unsafe { transmute_copy::<*mut u8, T>(&w) }
        } else if t.is_concurrent() {
            let _g = Stripe::lock(self.value.as_ptr());
            self.value.get()
        } else {
            self.value.get()
        };
        t.trace(&v);
    }
}

/// `GcRefCell::trace_lock` while the mutator holds a [`GcRefMut`].
const WRITER: usize = usize::MAX;

/// A `RefCell` for managed objects: `borrow` freely, `borrow_mut` with the heap's [`Mutation`].
pub struct GcRefCell<'gc, T> {
    value: RefCell<T>,
    /// Excludes tracers on other CPUs while the contents may change (module docs).
    trace_lock: AtomicUsize,
    _brand: Brand<'gc>,
}

impl<'gc, T: Trace> GcRefCell<'gc, T> {
    pub fn new(value: T) -> Self {
        Self {
            value: RefCell::new(value),
            trace_lock: AtomicUsize::new(0),
            _brand: Brand::default(),
        }
    }

    /// Shares the value; panics if it is mutably borrowed (as `RefCell::borrow`).
    pub fn borrow(&self) -> Ref<'_, T> {
        self.value.borrow()
    }

    /// Mutable access; while marking, every `Gc` the value holds now is shaded first. Panics if the value
    /// is borrowed (as `RefCell::borrow_mut`). Waits for a mark worker tracing this cell on another CPU.
    pub fn borrow_mut(&self, mc: &Mutation<'gc>) -> GcRefMut<'_, T> {
        let r = self.value.borrow_mut();
        mc.barrier(&*r);
        let waited = self
            .trace_lock
            .compare_exchange(0, WRITER, Ordering::Acquire, Ordering::Relaxed)
            .is_err()
            .then(|| self.wait_for_tracers(mc));
        let g = GcRefMut {
            lock: &self.trace_lock,
            r,
        };
        if let Some(t0) = waited {
            // Counted once the guard holds the lock: a panicking clock or pause hook gives it back.
            mc.state().waited(t0);
        }
        g
    }

    /// The lock tracers on other CPUs take (a test's stand-in for one).
    #[cfg(test)]
    pub(crate) fn trace_lock(&self) -> &AtomicUsize {
        &self.trace_lock
    }

    /// Takes `WRITER` once the tracers are gone; returns when the wait began (the clock's time).
    #[cold]
    #[inline(never)]
    fn wait_for_tracers(&self, mc: &Mutation<'gc>) -> u64 {
        let t0 = mc.state().now();
        while self
            .trace_lock
            .compare_exchange_weak(0, WRITER, Ordering::Acquire, Ordering::Relaxed)
            .is_err()
        {
            core::hint::spin_loop();
        }
        t0
    }
}

impl<T: fmt::Debug> fmt::Debug for GcRefCell<'_, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("GcRefCell").field(&self.value).finish()
    }
}

// SAFETY: traces the value unless it is mutably borrowed — then its old contents were shaded by
// `borrow_mut` (module invariants), which is all a snapshot-at-the-beginning mark needs from it. The
// read count keeps the mutator from changing the contents while they are traced, from any CPU.
unsafe impl<T: Trace> Trace for GcRefCell<'_, T> {
    const NEEDS_TRACE: bool = T::NEEDS_TRACE;
    fn trace(&self, t: &mut Tracer<'_>) {
        let mut n = self.trace_lock.load(Ordering::Relaxed);
        loop {
            if n == WRITER || n == WRITER - 1 {
                return;
            }
            match self.trace_lock.compare_exchange_weak(
                n,
                n + 1,
                Ordering::Acquire,
                Ordering::Relaxed,
            ) {
                Ok(_) => break,
                Err(now) => n = now,
            }
        }
        let _reading = Reading(&self.trace_lock);
        // SAFETY: no `GcRefMut` exists (the lock was not `WRITER`, and `borrow_mut` cannot take it while
        // the read count is held), so nothing writes the contents until `_reading` drops; `RefCell`'s
        // borrow flag is not touched (only the mutator's thread uses it).
        let v = unsafe { &*self.value.as_ptr() };
        t.trace(v);
    }
}

/// A tracer's read count on a `GcRefCell` (released on unwind too).
struct Reading<'a>(&'a AtomicUsize);

impl Drop for Reading<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Release);
    }
}

/// The mutable borrow of a [`GcRefCell`]: a `RefMut` that also keeps mark workers out of the contents.
pub struct GcRefMut<'a, T> {
    lock: &'a AtomicUsize,
    r: RefMut<'a, T>,
}

impl<T> Drop for GcRefMut<'_, T> {
    fn drop(&mut self) {
        // Before the `RefMut` goes (fields drop after this): the contents are final for tracers.
        self.lock.store(0, Ordering::Release);
    }
}

impl<T> Deref for GcRefMut<'_, T> {
    type Target = T;
    #[inline]
    fn deref(&self) -> &T {
        &self.r
    }
}

impl<T> DerefMut for GcRefMut<'_, T> {
    #[inline]
    fn deref_mut(&mut self) -> &mut T {
        &mut self.r
    }
}

impl<T: fmt::Debug> fmt::Debug for GcRefMut<'_, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&**self, f)
    }
}
