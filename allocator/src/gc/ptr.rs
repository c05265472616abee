//! `Gc<'gc, T>`: a copyable pointer to a managed object.
//!
//! Invariants:
//! - A `Gc<'gc, T>` exists only inside one `mutate` call of one heap: `'gc` is that call's brand
//!   (invariant, fresh per call), so a `Gc` can neither outlive the call nor meet another heap's
//!   `Mutation`. Outside `mutate` — where the collector may finish a cycle and free objects — no `Gc` is
//!   on the stack; between calls every `Gc` is in the root or in a managed object.
//! - The pointee is alive for the whole call: the collector frees only what it found unreachable at a
//!   point where no `Gc` was on the stack, and nothing makes such an object reachable again.

use core::fmt;
use core::marker::PhantomData;
use core::ops::Deref;
use core::ptr::NonNull;

use super::mutation::Mutation;
use super::trace::{Trace, Tracer};
use crate::addr::VirtAddr;

/// Makes `'gc` invariant.
pub(crate) type Brand<'gc> = PhantomData<core::cell::Cell<&'gc ()>>;

/// A pointer to a managed `T`, valid for one `mutate` call. Copy it freely; store it in the root or in
/// managed objects (through [`GcCell`](super::GcCell) / [`GcRefCell`](super::GcRefCell) to change it).
///
/// `repr(transparent)`: a `Gc` of a sized `T` is one pointer, and `Option<Gc<..>>` uses its null niche
/// (cells of either are accessed as atomic words while mark workers run, cell.rs).
#[repr(transparent)]
pub struct Gc<'gc, T: ?Sized + 'gc> {
    ptr: NonNull<T>,
    _brand: Brand<'gc>,
    _owns: PhantomData<&'gc T>,
}

impl<'gc, T: ?Sized + 'gc> Clone for Gc<'gc, T> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<'gc, T: ?Sized + 'gc> Copy for Gc<'gc, T> {}

impl<'gc, T: Trace + 'gc> Gc<'gc, T> {
    /// Allocates `value` in the heap of `mc`. Panics (naming the type and size) when memory runs out;
    /// see [`Gc::try_new`].
    #[inline]
    pub fn new(mc: &Mutation<'gc>, value: T) -> Gc<'gc, T> {
        match Self::try_new(mc, value) {
            Ok(gc) => gc,
            Err(_) => out_of_memory::<T>(),
        }
    }

    /// Allocates `value`, or gives it back when no memory can be had (collection does not run inside
    /// `mutate`: return and let the collector run at the safe point, then retry).
    #[inline]
    pub fn try_new(mc: &Mutation<'gc>, value: T) -> Result<Gc<'gc, T>, T> {
        let ptr = mc.state().alloc(value)?;
        Ok(Gc {
            ptr,
            _brand: PhantomData,
            _owns: PhantomData,
        })
    }
}

#[cold]
#[inline(never)]
fn out_of_memory<T: Trace>() -> ! {
    panic!(
        "gc: out of memory allocating a {} ({} bytes with header)",
        core::any::type_name::<T>(),
        super::object::Layout::<T>::SIZE
    )
}

impl<'gc, T: ?Sized + 'gc> Gc<'gc, T> {
    /// The value, for the whole `mutate` call.
    #[inline]
    #[allow(clippy::should_implement_trait)] // `AsRef` cannot give out the longer `'gc` borrow
    pub fn as_ref(self) -> &'gc T {
        // SAFETY: the pointee lives for the whole call (module invariant) and is only shared.
        unsafe { &*self.ptr.as_ptr() }
    }

    pub fn as_ptr(self) -> *const T {
        self.ptr.as_ptr()
    }

    /// Whether both point at the same object.
    pub fn ptr_eq(a: Self, b: Self) -> bool {
        core::ptr::addr_eq(a.ptr.as_ptr(), b.ptr.as_ptr())
    }

    /// # Safety
    /// `ptr` points at a live managed `T` of the heap whose brand is `'gc`.
    pub(crate) unsafe fn from_ptr(ptr: NonNull<T>) -> Self {
        Gc {
            ptr,
            _brand: PhantomData,
            _owns: PhantomData,
        }
    }

    pub(crate) fn addr(self) -> VirtAddr {
        VirtAddr::from_ptr(self.ptr.as_ptr().cast::<u8>())
    }
}

impl<'gc, T: ?Sized + 'gc> Deref for Gc<'gc, T> {
    type Target = T;
    #[inline]
    fn deref(&self) -> &T {
        self.as_ref()
    }
}

impl<'gc, T: ?Sized + 'gc> fmt::Debug for Gc<'gc, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Gc({:p})", self.ptr)
    }
}

// SAFETY: reports itself; the pointee is traced when the marker scans it. `ATOMIC_WORD`: a
// `repr(transparent)` `NonNull`, so of a sized `T` one initialized pointer-sized word (a fat pointer,
// of an unsized `T`, is two words and fails the size test).
unsafe impl<'gc, T: ?Sized + 'gc> Trace for Gc<'gc, T> {
    const ATOMIC_WORD: bool = core::mem::size_of::<Self>() == core::mem::size_of::<*const u8>()
        && core::mem::align_of::<Self>() == core::mem::align_of::<*const u8>();
    #[inline]
    fn trace(&self, t: &mut Tracer<'_>) {
        t.edge(self.addr());
    }
}
