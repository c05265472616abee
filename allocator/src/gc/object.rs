//! Object layout: where a managed value sits in its slot and what the collector knows about its type.
//!
//! A type that holds `Gc` pointers or has drop glue is *headed*: its slot starts with one word, a
//! `&'static VTable` {trace, drop, size, name}, and the value follows at `max(8, align)`. The header is
//! the simplest precise type information (Go uses per-span pointer bitmaps for small objects and a type
//! header for big ones); one word per object buys tracing of any `Trace` type and finalization.
//!
//! A type with neither (no pointers, no drop glue) is *headerless*: the value is the whole slot, it lives
//! in a noscan span, is never scanned and never finalized; below 16 B it is packed by the tiny allocator.
//! A headerless *zero-sized* value needs no memory at all: it gets no slot, and its `Gc` holds the
//! dangling address `align_of::<T>()` (at most `PAGE_SIZE`, so never a heap address), which the marker
//! recognises (`is_zero_sized`) and never shades. A headed zero-sized value (one with a `Drop`) gets a
//! slot of at least header + 1 byte, so its `Gc` points inside its own slot, not at the next one.
//!
//! Raw object memory is read only through [`Headed`]: a handle whose (unsafe) constructor states the
//! one fact everything rests on — the address starts an allocated, initialized object of a scan span —
//! and whose methods (vtable, trace, size, name) are then safe; finalizing stays `unsafe` (the object
//! must be dead).
//!
//! Invariants:
//! - A span's class says which kind it holds: noscan spans hold only headerless objects, scan spans only
//!   headed ones. So the span class alone tells the marker whether to scan.
//! - A scan span that holds, or held since it was last swept empty, an object with drop glue is flagged
//!   (`Span::finalizers`, set when the object is allocated, before it exists for anyone): the sweeper finalizes only in flagged spans, and
//!   never reads the dead objects of the others (Go's sweeper, too, touches a dead object only when it
//!   has a special such as a finalizer).
//! - The header of every allocated object in a scan span is written before any `Gc` to it exists and is
//!   never changed while the object is allocated.

use core::marker::PhantomData;
use core::mem::{align_of, needs_drop, size_of};
use core::ptr::NonNull;

use super::trace::{Trace, Tracer};
use crate::addr::{VirtAddr, PAGE_SIZE};
use crate::sizeclass::{SizeClass, SpanClass};

/// Bytes of the header word.
pub(crate) const HEADER: usize = size_of::<&'static VTable>();
/// Objects below this size without pointers or drop glue share 16 B blocks (Go's maxTinySize).
pub(crate) const TINY_SIZE: usize = 16;

/// What the collector knows about one headed type.
pub(crate) struct VTable {
    /// Traces the value whose slot starts at the argument; `None` for types without pointers.
    pub(crate) trace: Option<unsafe fn(NonNull<u8>, &mut Tracer<'_>)>,
    /// Drops the value in place (the finalizer); `None` without drop glue.
    pub(crate) drop: Option<unsafe fn(NonNull<u8>)>,
    /// Slot bytes used: header, padding and value (the scan work the object costs).
    pub(crate) size: usize,
    /// The type name (a function: `type_name` is not const).
    pub(crate) name: fn() -> &'static str,
}

/// Compile-time layout of a managed `T`.
pub(crate) struct Layout<T>(PhantomData<T>);

const fn max(a: usize, b: usize) -> usize {
    if a > b {
        a
    } else {
        b
    }
}

impl<T: Trace> Layout<T> {
    pub(crate) const HEADED: bool = T::NEEDS_TRACE || needs_drop::<T>();
    /// Has a finalizer (drop glue): its span is flagged (`Span::finalizers`) so that the sweep looks
    /// at its dead objects; headed, as every type with drop glue is.
    pub(crate) const FINALIZED: bool = needs_drop::<T>();
    /// Offset of the value in its slot.
    pub(crate) const OFFSET: usize = if Self::HEADED {
        max(HEADER, align_of::<T>())
    } else {
        0
    };
    /// A headerless zero-sized value: no slot at all (module docs).
    pub(crate) const ZERO_SIZED: bool = !Self::HEADED && size_of::<T>() == 0;
    /// Slot bytes needed; a headed value takes at least one byte past its header, so that the value's
    /// address lies inside its own slot even when `T` is zero-sized.
    pub(crate) const SIZE: usize = Self::OFFSET
        + if Self::HEADED {
            max(size_of::<T>(), 1)
        } else {
            size_of::<T>()
        };
    pub(crate) const ALIGN: usize = max(8, align_of::<T>());
    /// Packed by the tiny allocator.
    pub(crate) const TINY: bool =
        !Self::HEADED && !Self::ZERO_SIZED && size_of::<T>() < TINY_SIZE && align_of::<T>() <= 8;
    /// The span class of a small object; `None` for a large one (its own span).
    pub(crate) const CLASS: Option<SpanClass> = match SizeClass::for_layout(Self::SIZE, Self::ALIGN)
    {
        Some(c) => Some(SpanClass::new(c, !Self::HEADED)),
        None => None,
    };
    /// Large objects are page aligned; more than that cannot be had.
    pub(crate) const ALIGN_OK: bool = Self::ALIGN <= PAGE_SIZE;

    pub(crate) const VTABLE: &'static VTable = &VTable {
        trace: if T::NEEDS_TRACE {
            Some(trace_slot::<T>)
        } else {
            None
        },
        drop: if needs_drop::<T>() {
            Some(drop_slot::<T>)
        } else {
            None
        },
        size: Self::SIZE,
        name: core::any::type_name::<T>,
    };
}

/// # Safety
/// `slot` is the start of an allocated, initialized headed slot holding a `T`.
unsafe fn trace_slot<T: Trace>(slot: NonNull<u8>, t: &mut Tracer<'_>) {
    // SAFETY: the caller's contract: a live `T` sits at the value offset.
    let value = unsafe { &*slot.as_ptr().add(Layout::<T>::OFFSET).cast::<T>() };
    value.trace(t);
}

/// # Safety
/// `slot` is the start of an allocated, initialized headed slot holding a `T` that is never used again.
unsafe fn drop_slot<T: Trace>(slot: NonNull<u8>) {
    // SAFETY: the caller's contract: a live `T` sits at the value offset and is dead after this.
    unsafe { core::ptr::drop_in_place(slot.as_ptr().add(Layout::<T>::OFFSET).cast::<T>()) };
}

/// Whether `addr` is the address of a headerless zero-sized value (`NonNull::dangling()` of a type
/// aligned to at most `PAGE_SIZE`): never a heap address, never an object.
#[inline]
pub(crate) fn is_zero_sized(addr: VirtAddr) -> bool {
    (1..=PAGE_SIZE as u64).contains(&addr.as_u64())
}

/// An allocated, initialized object of a scan span (its slot start): the audited door to raw object
/// memory (module docs).
#[derive(Clone, Copy)]
pub(crate) struct Headed {
    slot: NonNull<u8>,
    vtable: &'static VTable,
}

impl Headed {
    /// # Safety
    /// `slot` is the start of an initialized object of a scan span — allocated, or dead and not finalized
    /// yet (the sweeper's case) — that is not finalized nor reused while the handle is used.
    #[inline]
    pub(crate) unsafe fn new(slot: VirtAddr) -> Headed {
        let slot = NonNull::new(slot.as_mut_ptr::<u8>()).expect("gc: object at address 0");
        // SAFETY: scan-span objects start with their header (module invariant), written at allocation
        // before any `Gc` to them exists; the caller's contract says this one is allocated.
        let vtable = unsafe { *slot.as_ptr().cast::<&'static VTable>() };
        Headed { slot, vtable }
    }

    /// Slot bytes used (the scan work the object costs).
    pub(crate) fn size(self) -> usize {
        self.vtable.size
    }

    /// The type name.
    pub(crate) fn name(self) -> &'static str {
        (self.vtable.name)()
    }

    /// Reports the object's `Gc`s to `t` (runs its `Trace` impl, which may panic).
    #[inline]
    pub(crate) fn trace(self, t: &mut Tracer<'_>) {
        if let Some(trace) = self.vtable.trace {
            // SAFETY: the slot holds the initialized value this vtable describes (`new`'s contract).
            unsafe { trace(self.slot, t) };
        }
    }

    /// Drops the value (runs its `Drop`, which may panic); returns whether it had drop glue.
    ///
    /// # Safety
    /// The object is dead: nothing uses it after this call (the slot is freed or about to be).
    pub(crate) unsafe fn finalize(self) -> bool {
        match self.vtable.drop {
            Some(drop) => {
                // SAFETY: the slot holds the value this vtable describes, used never again (contract).
                unsafe { drop(self.slot) };
                true
            }
            None => false,
        }
    }
}
