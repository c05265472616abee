//! Marking: shading objects (white -> grey: mark bit set, address pushed on the grey stack) and
//! scanning them (grey -> black: the vtable's trace shades their children).
//!
//! Colors: white = mark bit clear; grey = mark bit set and on the grey stack; black = mark bit set and
//! scanned (or never needing a scan: noscan objects go straight to black).
//!
//! Invariants:
//! - Only allocated objects are marked; an object is pushed at most once per cycle (when its mark bit
//!   goes from 0 to 1), so marking costs O(live objects + pointers).
//! - Only objects of this heap are marked: every address shaded or tested is checked to lie in an
//!   allocated object of an in-use span whose `owner` is this heap's id (one compare and one bitmap load
//!   on the span struct the lookup found), and the marker panics naming any other address (a `Gc` from
//!   another heap, a freed object, an explicit-heap object) instead of reading it as a header. The one
//!   exception is the address of a headerless zero-sized value (object.rs, `is_zero_sized`): it has no
//!   memory, is never marked, scanned nor freed, and shading it does nothing.
//! - In verification mode (`check` is `Some`) the same walk sets bits in the check table instead and
//!   leaves the real mark bits alone (see verify.rs).
//! - Panics: a `Trace` impl may panic in the middle of a scan (object or root), leaving a marked object
//!   whose children were not all shaded. `interrupted` is set for the length of every scan and restored
//!   only when the scan returns, so after such a panic it stays set, and termination rescans the root and
//!   every marked object before the mark may end (heap.rs `end_cycle`): a cycle never ends with a
//!   reachable white object, whatever `Trace` does. Shading itself runs no user code.

use core::ptr::NonNull;

use super::conc::ConcView;
use super::object::{is_zero_sized, Headed};
use super::spans::SpanSource;
use super::trace::Tracer;
use super::verify::CheckTable;
use super::workbuf::GreyStack;
use crate::addr::VirtAddr;
use crate::span::{SharedSpan, Span};
use crate::spanmap::SpanMap;

pub(crate) struct Marker {
    pub(crate) spans: &'static SpanMap,
    pub(crate) source: &'static (dyn SpanSource + Sync),
    /// This heap's id: the `owner` of every span holding its objects (spans.rs).
    pub(crate) owner: u32,
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
    /// A scan was cut short by a panic (module invariants): the root and every marked object must be
    /// rescanned before the mark can end.
    pub(crate) interrupted: bool,
    /// A parallel mark worker (par.rs): mark bits are set atomically through span views, and no
    /// reference to a span is made (other CPUs mark in the same spans).
    shared: bool,
    /// A concurrent mark's side table (conc.rs): while set, every shade marks there (atomically) and
    /// reads no span struct, whether by a worker or by the mutator.
    pub(crate) conc: Option<ConcView>,
    /// A concurrent mark's side table while it is built or merged (conc.rs), when marks go to the
    /// spans: an object marked in the table counts as marked, and a mark set here is set there too if
    /// the span is entered.
    pub(crate) side: Option<ConcView>,
}

impl Marker {
    pub(crate) fn new(
        spans: &'static SpanMap,
        source: &'static (dyn SpanSource + Sync),
        owner: u32,
    ) -> Self {
        Self {
            shared: false,
            conc: None,
            side: None,
            spans,
            source,
            owner,
            grey: GreyStack::new(),
            marked_bytes: 0,
            marked_objects: 0,
            scan_work: 0,
            check: None,
            overflow: false,
            interrupted: false,
        }
    }

    /// A marker for a parallel mark worker (par.rs).
    pub(crate) fn new_shared(
        spans: &'static SpanMap,
        source: &'static (dyn SpanSource + Sync),
        owner: u32,
    ) -> Self {
        Self {
            shared: true,
            ..Self::new(spans, source, owner)
        }
    }

    /// Whether this is a mark worker's marker (par.rs), not the heap's own.
    #[inline]
    pub(crate) fn is_worker(&self) -> bool {
        self.shared
    }

    /// Runs `scan` (which may run `Trace` impls) with `interrupted` set; restores it only if `scan`
    /// returns, so a panic leaves it set (module invariants).
    #[inline]
    pub(crate) fn scanning<T>(&mut self, scan: impl FnOnce(&mut Self) -> T) -> T {
        let outer = core::mem::replace(&mut self.interrupted, true);
        let out = scan(self);
        self.interrupted = outer;
        out
    }

    /// The span and index of the allocated object of this heap containing `addr`; `None` for the address
    /// of a headerless zero-sized value. Panics, naming `addr`, for anything else.
    #[inline]
    fn locate(&self, addr: VirtAddr) -> Option<(NonNull<Span>, usize)> {
        let span = self.own_span(addr)?;
        // SAFETY: the span is this heap's (its owner is our id), and only this single-threaded heap
        // touches its struct; read only here.
        let s = unsafe { span.as_ref() };
        match s.object_index(addr) {
            Some(idx) if s.is_allocated(idx) => Some((span, idx)),
            Some(_) => not_managed(addr, "in a free slot"),
            None => not_managed(addr, "past the span's last object"),
        }
    }

    /// The span of this heap holding `addr`; `None` for the address of a headerless zero-sized value.
    /// Panics, naming `addr`, if it is in no span of this heap.
    #[inline]
    fn own_span(&self, addr: VirtAddr) -> Option<NonNull<Span>> {
        let Some((span, _)) = self.spans.lookup(addr) else {
            return if is_zero_sized(addr) {
                None
            } else {
                not_managed(addr, "in no in-use span")
            };
        };
        // SAFETY: span-map entries point at live span structs. Only the `owner` field is read until it
        // says the span is ours: collectors write it only when they take or give back a span, and the
        // explicit heap never does.
        let owner = unsafe { core::ptr::addr_of!((*span.as_ptr()).owner).read() };
        if owner != self.owner {
            not_managed(addr, "in a span this GC heap does not own");
        }
        Some(span)
    }

    /// `shade` for a parallel worker: the same checks, on a span view, with an atomic mark.
    fn shade_shared(&mut self, addr: VirtAddr) {
        let Some(span) = self.own_span(addr) else {
            return;
        };
        // SAFETY: the span is ours and live; while parallel workers run, nothing writes this heap's spans
        // but mark bits, set only through views (par.rs invariants).
        let s = unsafe { SharedSpan::new(span) };
        let idx = match s.object_index(addr) {
            Some(idx) if s.is_allocated(idx) => idx,
            Some(_) => not_managed(addr, "in a free slot"),
            None => not_managed(addr, "past the span's last object"),
        };
        if !s.mark(idx) {
            return;
        }
        self.marked_bytes += s.elem_size();
        self.marked_objects += 1;
        if !s.class().noscan() && !self.grey.push(s.object_addr(idx), self.source) {
            // Marked but not pushed: the rescan at termination finds it (as in `shade`).
            self.overflow = true;
        }
    }

    /// `shade` in a concurrent mark: the span through the span map (atomic entries), its entry in the
    /// side table, the mark bit there (atomic). No span struct is read: the mutator may be writing
    /// them. An address in a span missing from the table is in a span taken during this mark, whose
    /// objects are all allocated black; the branded API makes every `Gc` one of this heap's, and the
    /// full checks of `shade` run on every marked object at termination (rescan, checkmark).
    fn shade_conc(&mut self, view: ConcView, addr: VirtAddr) {
        let Some((span, _)) = self.spans.lookup(addr) else {
            if is_zero_sized(addr) {
                return;
            }
            not_managed(addr, "in no in-use span");
        };
        let Some(e) = view.find(span) else {
            return;
        };
        let Some(idx) = e.index(addr) else {
            not_managed(addr, "past the span's last object");
        };
        // The object counts as marked when the table is merged (conc.rs), not here.
        if view.mark(&e, idx) && !e.noscan && !self.grey.push(e.object_addr(idx), self.source) {
            // Marked but not pushed: the rescan at termination (after the merge) finds it.
            self.overflow = true;
        }
    }

    pub(crate) fn tracer(&mut self) -> Tracer<'_> {
        Tracer { m: self }
    }

    /// Shades the object containing `addr` (panics if it is not an object of this heap).
    #[inline]
    pub(crate) fn shade(&mut self, addr: VirtAddr) {
        if let Some(view) = self.conc.filter(|_| self.check.is_none()) {
            return self.shade_conc(view, addr);
        }
        if self.shared {
            return self.shade_shared(addr);
        }
        let Some((span, idx)) = self.locate(addr) else {
            return;
        };
        // SAFETY: `locate` found the span ours; only this (single-threaded) heap touches its struct, and
        // no other reference to it is live.
        let s = unsafe { &mut *span.as_ptr() };
        let class = s.class();
        if let Some(check) = &mut self.check {
            if !check.shade(s, idx) {
                return;
            }
        } else {
            if s.is_marked(idx) {
                return;
            }
            if let Some(side) = self.side {
                if let Some(e) = side.find(span) {
                    if !side.mark(&e, idx) {
                        // Marked in the side table (by a worker): merged into the span later.
                        return;
                    }
                }
            }
            s.mark(idx);
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
        let done = self.scanning(|m| {
            let mut done = 0;
            while done < budget {
                let Some(obj) = m.grey.pop(m.source) else {
                    break;
                };
                // SAFETY: only allocated objects of scan spans are pushed (`shade`), and every allocated
                // slot is initialized whenever the marker runs (alloc.rs).
                done += m.scan(unsafe { Headed::new(obj) });
            }
            done
        });
        if self.check.is_none() {
            self.scan_work += done;
        }
        done
    }
}

impl Marker {
    /// Scans `obj` (grey -> black); returns its size. The caller sets `interrupted` around it
    /// (`scanning`): the object's `Trace` impl may panic.
    #[inline]
    pub(crate) fn scan(&mut self, obj: Headed) -> usize {
        obj.trace(&mut self.tracer());
        obj.size()
    }

    /// Whether the object containing `addr` is marked (panics if it is not an object of this heap; the
    /// address of a zero-sized value, which is never freed, counts as marked).
    pub(crate) fn is_marked(&self, addr: VirtAddr) -> bool {
        let Some((span, idx)) = self.locate(addr) else {
            return true;
        };
        // SAFETY: `locate` found the span ours; read only.
        unsafe { span.as_ref() }.is_marked(idx)
    }
}

#[cold]
#[inline(never)]
fn not_managed(addr: VirtAddr, why: &str) -> ! {
    panic!(
        "gc: {:#x} is not an object of this GC heap ({why}): a Gc from another heap, a freed object or \
         a foreign pointer reached the marker",
        addr.as_u64()
    )
}
