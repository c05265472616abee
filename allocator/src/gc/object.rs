//! Object layout: where a managed value sits in its slot and what the collector knows about its type.
//!
//! A type that holds `Gc` pointers or has drop glue is *headed*: its slot starts with one word, a
//! `&'static VTable` {trace, drop, size, name}, and the value follows at `max(8, align)`. The header is
//! the simplest precise type information (Go uses per-span pointer bitmaps for small objects and a type
//! header for big ones); one word per object buys tracing of any `Trace` type and finalization.
//!
//! A type with neither (no pointers, no drop glue) is *headerless*: the value is the whole slot, it lives
//! in a noscan span, is never scanned and never finalized; below 16 B it is packed by the tiny allocator.
//!
//! Invariants:
//! - A span's class says which kind it holds: noscan spans hold only headerless objects, scan spans only
//!   headed ones. So the span class alone tells the marker whether to scan and the sweeper whether to
//!   finalize.
//! - The header of every allocated object in a scan span is written before any `Gc` to it exists and is
//!   never changed while the object is allocated.

use core::marker::PhantomData;
use core::mem::{align_of, needs_drop, size_of};
use core::ptr::NonNull;

use super::trace::{Trace, Tracer};
use crate::addr::PAGE_SIZE;
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
    /// Offset of the value in its slot.
    pub(crate) const OFFSET: usize = if Self::HEADED {
        max(HEADER, align_of::<T>())
    } else {
        0
    };
    /// Slot bytes needed.
    pub(crate) const SIZE: usize = Self::OFFSET + size_of::<T>();
    pub(crate) const ALIGN: usize = max(8, align_of::<T>());
    /// Packed by the tiny allocator.
    pub(crate) const TINY: bool =
        !Self::HEADED && size_of::<T>() < TINY_SIZE && align_of::<T>() <= 8;
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

/// The vtable of the headed object whose slot starts at `slot`.
///
/// # Safety
/// `slot` is the start of an allocated, initialized object in a scan span.
#[inline]
pub(crate) unsafe fn vtable_of(slot: NonNull<u8>) -> &'static VTable {
    // SAFETY: scan-span objects start with their header (module invariant), written at allocation.
    unsafe { *slot.as_ptr().cast::<&'static VTable>() }
}
