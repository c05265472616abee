//! The collector's spans: where they come from (the explicit heap's page heap, through [`SpanSource`])
//! and the lists that hold them (Go's mcentral partial/full sets, swept and unswept, per span class).
//!
//! Invariants:
//! - Every span of the GC heap is exactly one of: the current span of its class (allocated from), in
//!   `partial[class][set]` (has a free slot) or in `full[class][set]`. Large spans are always "full".
//! - Set `swept(h) = (h / 2) % 2` holds spans swept in this cycle (sweepgen `h`), the other set spans
//!   still to sweep (sweepgen `h - 2`). Adding 2 to `h` at mark termination turns every swept span into
//!   an unswept one without touching the lists (Go's trick). Exception: while a concurrent mark builds
//!   its side table (`building`, conc.rs), the unswept set's lists hold swept spans still *pending*
//!   (not yet in the table) and nothing takes unswept spans; `end_pending` files the rest back.
//! - Current spans are swept and cached (sweepgen `h + 3`); they are put back on the lists (sweepgen `h`)
//!   before `h` grows, so no span is allocated from while unswept.
//! - `pages` counts the pages of all spans; `unswept_pages` those in the unswept set.

use core::ops::{Deref, DerefMut};
use core::ptr::NonNull;

use crate::addr::{PageCount, VirtAddr};
use crate::heap::Heap;
use crate::platform::Platform;
use crate::sizeclass::{SpanClass, NUM_SPAN_CLASSES};
use crate::span::{Span, SpanList};

/// The collector's handle on a span it took from its [`SpanSource`]: the one door to span structs in
/// the collector (the marker's span-map lookups aside, mark.rs).
///
/// Exactly one handle exists per span the collector holds: `SpanSource::alloc_span` makes it, it is
/// moved (never copied) into a `SpanSet` list and back out, and `SpanSource::free_span` consumes it.
/// While the collector holds a span nobody else writes its struct (the explicit heap never touches a
/// span the page heap handed out to the collector; markers of other heaps only read `owner`), and a
/// heap is single-threaded. So whoever has `&mut GcSpan` has the span struct to itself, and reaching it
/// through `Deref`/`DerefMut` is safe; the `unsafe` is in making a handle (`from_raw`), where the one-
/// handle rule is promised.
pub(crate) struct GcSpan(NonNull<Span>);

impl GcSpan {
    /// # Safety
    /// `span` is a live span struct the collector took from its source, and no other handle to it
    /// exists (it was just made, or just unlinked from the list that stood for its handle).
    pub(crate) unsafe fn from_raw(span: NonNull<Span>) -> Self {
        GcSpan(span)
    }

    /// Gives up the handle (to link the span in a list, or store it in raw memory).
    pub(crate) fn into_raw(self) -> NonNull<Span> {
        self.0
    }
}

impl Deref for GcSpan {
    type Target = Span;
    fn deref(&self) -> &Span {
        // SAFETY: the only handle to a live span struct nobody else writes (type docs).
        unsafe { self.0.as_ref() }
    }
}

impl DerefMut for GcSpan {
    fn deref_mut(&mut self) -> &mut Span {
        // SAFETY: as in `deref`; `&mut self` makes this the only reference made through the handle.
        unsafe { &mut *self.0.as_ptr() }
    }
}

/// Where the collector gets spans: the page heap of an explicit [`Heap`].
pub(crate) trait SpanSource {
    /// A fresh span whose `owner` is `owner` (a `GcHeap`'s id for object spans, 0 for the collector's
    /// own metadata: grey-stack chunks, check tables).
    fn alloc_span(&self, class: SpanClass, npages: PageCount, owner: u32) -> Option<GcSpan>;
    /// Gives the span back (its objects, finalized or not, are gone with it).
    fn free_span(&self, span: GcSpan) {
        self.free_span_keeping(span, 0);
    }
    /// As `free_span`, keeping free pages mapped up to `mapped_goal` bytes in the page heap (the sweeper
    /// passes 110% of the heap goal: the heap grows back to it before the next cycle).
    fn free_span_keeping(&self, span: GcSpan, mapped_goal: usize);
}

impl<P: Platform, const FULL_CHECKS: bool> SpanSource for Heap<P, FULL_CHECKS> {
    fn alloc_span(&self, class: SpanClass, npages: PageCount, owner: u32) -> Option<GcSpan> {
        // SAFETY: a fresh span from the page heap, handed to the collector alone: this is its handle.
        let mut span = unsafe { GcSpan::from_raw(self.gc_alloc_span(class, npages)?) };
        // Published in the span map already, but markers only read `owner` (mark.rs).
        span.owner = owner;
        Some(span)
    }

    fn free_span_keeping(&self, mut span: GcSpan, mapped_goal: usize) {
        // Cleared first, so no marker takes the span for one of its own while the page heap reuses it.
        span.owner = 0;
        // SAFETY: the span came from `gc_alloc_span` on this heap, and its only handle is consumed here:
        // nobody uses it after this call.
        unsafe { self.gc_free_span(span.into_raw(), mapped_goal) }
    }
}

/// Index of the swept set for heap sweepgen `h`.
pub(crate) const fn swept_set(h: u32) -> usize {
    ((h / 2) % 2) as usize
}

pub(crate) struct SpanSet {
    pub(crate) current: [Option<GcSpan>; NUM_SPAN_CLASSES],
    partial: [[SpanList; 2]; NUM_SPAN_CLASSES],
    full: [[SpanList; 2]; NUM_SPAN_CLASSES],
    pub(crate) pages: usize,
    pub(crate) unswept_pages: usize,
    /// Next class the background sweeper looks at.
    cursor: usize,
    /// Spans, and the words of one bitmap of one bit per object over all of them: a concurrent mark's
    /// side table size (conc.rs).
    pub(crate) count: usize,
    pub(crate) words: usize,
    /// While a concurrent mark builds its side table (conc.rs, "Building the table"): the number of
    /// spans of the snapshot not yet in the table that are filed. They are filed in the unswept set's
    /// lists, which are empty while a mark runs (its sweep was finished first); nothing takes an
    /// unswept span while `building` is set. A span is pending exactly when `building` is set and its
    /// `conc_epoch` is not `epoch`.
    pending_count: usize,
    building: bool,
    pub(crate) epoch: u32,
    /// Next class `take_pending` looks at.
    pending_cursor: usize,
}

impl SpanSet {
    pub(crate) const fn new() -> Self {
        Self {
            current: [const { None }; NUM_SPAN_CLASSES],
            partial: [const { [const { SpanList::new() }; 2] }; NUM_SPAN_CLASSES],
            full: [const { [const { SpanList::new() }; 2] }; NUM_SPAN_CLASSES],
            pages: 0,
            unswept_pages: 0,
            cursor: 0,
            count: 0,
            words: 0,
            pending_count: 0,
            building: false,
            epoch: 0,
            pending_cursor: 0,
        }
    }

    /// Counts a span the collector just took from its source (not filed yet).
    pub(crate) fn joined(&mut self, span: &mut Span) {
        self.pages += span.npages().0;
        self.count += 1;
        self.words += span.nelems().div_ceil(64);
        // Taken during a mark: not of its snapshot (its objects are all allocated black).
        span.conc_epoch = self.epoch;
    }

    /// Uncounts a span about to go back to the source.
    pub(crate) fn left(&mut self, span: &Span) {
        self.pages -= span.npages().0;
        self.count -= 1;
        self.words -= span.nelems().div_ceil(64);
    }

    /// Whether `span` is a snapshot span not yet in the side table being built.
    pub(crate) fn is_pending(&self, span: &Span) -> bool {
        self.building && span.conc_epoch != self.epoch
    }

    /// Starts building a concurrent mark's side table (conc.rs): every filed span becomes pending (the
    /// swept set's lists are swapped into the empty unswept set's, not walked); current spans are
    /// pending too until entered.
    pub(crate) fn begin_pending(&mut self) {
        debug_assert!(!self.building && self.pending_count == 0 && self.unswept_pages == 0);
        self.epoch = self.epoch.wrapping_add(1).max(1);
        self.building = true;
        self.pending_cursor = 0;
        for c in 0..NUM_SPAN_CLASSES {
            self.partial[c].swap(0, 1);
            self.full[c].swap(0, 1);
        }
        self.pending_count = self.count - self.current.iter().flatten().count();
    }

    /// A pending filed span, unlinked (the builder's walk); `None` when none is left.
    pub(crate) fn take_pending(&mut self, h: u32) -> Option<GcSpan> {
        let set = 1 - swept_set(h);
        while self.pending_cursor < NUM_SPAN_CLASSES {
            let c = self.pending_cursor;
            if let Some(s) = self.partial[c][set]
                .pop()
                .or_else(|| self.full[c][set].pop())
            {
                self.pending_count -= 1;
                return Some(Self::unlinked(s));
            }
            self.pending_cursor += 1;
        }
        None
    }

    /// Marks `span` as in the side table (it is filed as an ordinary span from now on).
    pub(crate) fn registered(&self, span: &mut Span) {
        span.conc_epoch = self.epoch;
    }

    /// Filed pending spans left.
    pub(crate) fn pending_count(&self) -> usize {
        self.pending_count
    }

    /// Ends the building (done, or abandoned): any pending span left is filed as an ordinary one.
    pub(crate) fn end_pending(&mut self, h: u32) {
        self.building = false;
        self.pending_cursor = 0;
        while let Some(s) = self.take_pending(h) {
            self.put_swept(s, h);
        }
        debug_assert_eq!(self.pending_count, 0);
    }

    /// Files a swept span (not current) under the swept set of `h`.
    pub(crate) fn put_swept(&mut self, mut span: GcSpan, h: u32) {
        span.sweepgen = h;
        let (c, set) = (span.class().index(), swept_set(h));
        let full = span.is_full() || span.class().is_large();
        let set = if self.is_pending(&span) {
            self.pending_count += 1;
            // The builder may have passed this class already.
            self.pending_cursor = self.pending_cursor.min(c);
            1 - set
        } else {
            set
        };
        let list = if full {
            &mut self.full[c][set]
        } else {
            &mut self.partial[c][set]
        };
        // SAFETY: a span with a handle is in no list; the list stands for the handle from now on.
        unsafe { list.push_front(span.into_raw()) };
    }

    /// The handle of a span just unlinked from one of the lists.
    fn unlinked(span: NonNull<Span>) -> GcSpan {
        // SAFETY: listed spans are the collector's, and a listed span has no handle (the list stood for
        // it, `put_swept`) until this one.
        unsafe { GcSpan::from_raw(span) }
    }

    /// A swept span of `class` with a free slot, if one is filed.
    pub(crate) fn take_swept_partial(&mut self, class: SpanClass, h: u32) -> Option<GcSpan> {
        if let Some(s) = self.partial[class.index()][swept_set(h)].pop() {
            return Some(Self::unlinked(s));
        }
        // A pending one (it stays pending while current, and is filed back as one).
        if !self.building {
            return None;
        }
        let s = self.partial[class.index()][1 - swept_set(h)].pop()?;
        self.pending_count -= 1;
        Some(Self::unlinked(s))
    }

    /// An unswept span of `class`, partial ones first (they are likelier to have room).
    pub(crate) fn take_unswept(&mut self, class: SpanClass, h: u32) -> Option<GcSpan> {
        if self.building {
            // The unswept lists hold pending spans (swept ones) while a table is built.
            return None;
        }
        let (c, set) = (class.index(), 1 - swept_set(h));
        let span = self.partial[c][set]
            .pop()
            .or_else(|| self.full[c][set].pop())
            .map(Self::unlinked)?;
        self.unswept_pages -= span.npages().0;
        Some(span)
    }

    /// The next unswept span of any class (the proportional and background sweeper's walk).
    pub(crate) fn next_unswept(&mut self, h: u32) -> Option<GcSpan> {
        while self.cursor < NUM_SPAN_CLASSES {
            let class = SpanClass::from_raw(self.cursor as u8);
            if let Some(s) = self.take_unswept(class, h) {
                return Some(s);
            }
            self.cursor += 1;
        }
        None
    }

    /// Starts a new sweep: every span filed is unswept now (the caller has just added 2 to `h`).
    pub(crate) fn begin_sweep(&mut self) {
        debug_assert!(self.current.iter().all(Option::is_none));
        self.unswept_pages = self.pages;
        self.cursor = 0;
    }

    /// Every span, current and filed, in no particular order. The set must not change meanwhile.
    pub(crate) fn for_each(&self, mut f: impl FnMut(&Span)) {
        for s in self.current.iter().flatten() {
            f(s);
        }
        for lists in self.partial.iter().chain(self.full.iter()) {
            for list in lists {
                // SAFETY: listed spans are the collector's and have no handle (`put_swept`); `&self` keeps
                // the lists, hence every span in them, unchanged while `f` looks.
                list.iter().for_each(|s| f(unsafe { s.as_ref() }));
            }
        }
    }

    /// Calls `f` with the address of every marked object of every scan span, current or filed. Holds no
    /// reference to any span struct while `f` runs, so `f` may mark objects (write the mark bits of these
    /// spans). The set must not change meanwhile (`&self`).
    pub(crate) fn for_each_marked_scan_object(&self, mut f: impl FnMut(VirtAddr)) {
        let mut visit = |span: NonNull<Span>| {
            let view = || {
                // SAFETY: a span of the collector (current or listed); the reference lives only inside
                // this closure call, never across `f`.
                unsafe { span.as_ref() }
            };
            if view().class().noscan() {
                return;
            }
            for idx in 0..view().nelems() {
                let (marked, obj) = (view().is_marked(idx), view().object_addr(idx));
                if marked {
                    f(obj);
                }
            }
        };
        for s in self.current.iter().flatten() {
            visit(s.0);
        }
        for lists in self.partial.iter().chain(self.full.iter()) {
            for list in lists {
                list.iter().for_each(&mut visit);
            }
        }
    }

    /// Unlinks and returns some span, current or filed (the heap is going away); `None` when none is left.
    pub(crate) fn take_any(&mut self) -> Option<GcSpan> {
        if let Some(s) = self.current.iter_mut().find_map(Option::take) {
            return Some(s);
        }
        for lists in self.partial.iter_mut().chain(self.full.iter_mut()) {
            for list in lists {
                if let Some(s) = list.pop() {
                    return Some(Self::unlinked(s));
                }
            }
        }
        self.unswept_pages = 0;
        None
    }
}
