//! Marking: shading objects (white -> grey: mark bit set, address pushed on the grey stack) and
//! scanning them (grey -> black: the vtable's trace shades their children).
//!
//! Colors: white = mark bit clear; grey = mark bit set and on the grey stack; black = mark bit set and
//! scanned (or never needing a scan: noscan objects go straight to black).
//!
//! Invariants:
//! - Only allocated objects are marked; an object is pushed at most once per cycle (when its mark bit
//!   goes from 0 to 1), so marking costs O(live objects + pointers).
//! - In verification mode (`check` is `Some`) the same walk sets bits in the check table instead and
//!   leaves the real mark bits alone (see verify.rs).

use core::ptr::NonNull;

use super::object::vtable_of;
use super::spans::SpanSource;
use super::trace::Tracer;
use super::verify::CheckTable;
use super::workbuf::GreyStack;
use crate::addr::VirtAddr;
use crate::spanmap::SpanMap;

pub(crate) struct Marker {
    spans: &'static SpanMap,
    pub(crate) source: &'static dyn SpanSource,
    pub(crate) grey: GreyStack,
    /// Bytes (slot sizes) and objects marked this cycle, black allocation included.
    pub(crate) marked_bytes: usize,
    pub(crate) marked_objects: usize,
    /// Slot bytes scanned this cycle: the unit of mark work.
    pub(crate) scan_work: usize,
    pub(crate) check: Option<CheckTable>,
    /// An object was marked but could not be pushed (no memory for the grey stack): marked objects must
    /// be rescanned before the mark can end (`Inner::rescan_overflow`).
    pub(crate) overflow: bool,
}

impl Marker {
    pub(crate) fn new(spans: &'static SpanMap, source: &'static dyn SpanSource) -> Self {
        Self {
            spans,
            source,
            grey: GreyStack::new(),
            marked_bytes: 0,
            marked_objects: 0,
            scan_work: 0,
            check: None,
            overflow: false,
        }
    }

    pub(crate) fn tracer(&mut self) -> Tracer<'_> {
        Tracer { m: self }
    }

    /// Shades the object containing `addr`.
    #[inline]
    pub(crate) fn shade(&mut self, addr: VirtAddr) {
        let Some((span, class)) = self.spans.lookup(addr) else {
            not_managed(addr)
        };
        // SAFETY: `addr` comes from a live `Gc`, so its span is an in-use span of this GC heap, whose
        // struct only this (single-threaded) heap touches; no other reference to it is live.
        let s = unsafe { &mut *span.as_ptr() };
        let Some(idx) = s.object_index(addr) else {
            not_managed(addr)
        };
        if let Some(check) = &mut self.check {
            if !check.shade(s, idx) {
                return;
            }
        } else {
            if !s.mark(idx) {
                return;
            }
            self.marked_bytes += s.elem_size();
            self.marked_objects += 1;
        }
        if !class.noscan() && !self.grey.push(s.object_addr(idx), self.source) {
            // Marked but not pushed: it is grey in the mark bits only, found again by the rescan.
            assert!(
                self.check.is_none(),
                "gc checkmark: out of memory for the grey stack at {:#x}",
                addr.as_u64()
            );
            self.overflow = true;
        }
    }

    /// Scans grey objects until `budget` bytes of them are scanned or none is left; returns the work done.
    pub(crate) fn drain(&mut self, budget: usize) -> usize {
        let mut done = 0;
        while done < budget {
            let Some(obj) = self.grey.pop(self.source) else {
                break;
            };
            // SAFETY: only allocated, initialized objects of scan spans are pushed (`shade`).
            done += unsafe { self.scan(obj) };
        }
        if self.check.is_none() {
            self.scan_work += done;
        }
        done
    }
}

impl Marker {
    /// Scans the object at `obj` (grey -> black); returns its size.
    ///
    /// # Safety
    /// `obj` is the start of an allocated, initialized object of a scan span.
    #[inline]
    pub(crate) unsafe fn scan(&mut self, obj: VirtAddr) -> usize {
        let slot = NonNull::new(obj.as_mut_ptr::<u8>()).expect("grey object at address 0");
        // SAFETY: the caller's contract.
        let vt = unsafe { vtable_of(slot) };
        if let Some(trace) = vt.trace {
            // SAFETY: as above: `slot` holds the initialized value this vtable describes.
            unsafe { trace(slot, &mut self.tracer()) };
        }
        vt.size
    }
}

#[cold]
#[inline(never)]
fn not_managed(addr: VirtAddr) -> ! {
    panic!(
        "gc: {:#x} is not an object of this GC heap (a Gc from another heap, or a freed object)",
        addr.as_u64()
    )
}

impl Marker {
    /// Whether the object containing `addr` is marked (an object of this heap).
    pub(crate) fn is_marked(&self, addr: VirtAddr) -> bool {
        let Some((span, _)) = self.spans.lookup(addr) else {
            not_managed(addr)
        };
        // SAFETY: GC spans are ours; read only.
        let s = unsafe { span.as_ref() };
        let Some(idx) = s.object_index(addr) else {
            not_managed(addr)
        };
        s.is_marked(idx)
    }
}
