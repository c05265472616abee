//! The collector's spans: where they come from (the explicit heap's page heap, through [`SpanSource`])
//! and the lists that hold them (Go's mcentral partial/full sets, swept and unswept, per span class).
//!
//! Invariants:
//! - Every span of the GC heap is exactly one of: the current span of its class (allocated from), in
//!   `partial[class][set]` (has a free slot) or in `full[class][set]`. Large spans are always "full".
//! - Set `swept(h) = (h / 2) % 2` holds spans swept in this cycle (sweepgen `h`), the other set spans
//!   still to sweep (sweepgen `h - 2`). Adding 2 to `h` at mark termination turns every swept span into
//!   an unswept one without touching the lists (Go's trick).
//! - Current spans are swept and cached (sweepgen `h + 3`); they are put back on the lists (sweepgen `h`)
//!   before `h` grows, so no span is allocated from while unswept.
//! - `pages` counts the pages of all spans; `unswept_pages` those in the unswept set.

use core::ptr::NonNull;

use crate::addr::PageCount;
use crate::heap::Heap;
use crate::platform::Platform;
use crate::sizeclass::{SpanClass, NUM_SPAN_CLASSES};
use crate::span::{Span, SpanList};

/// Where the collector gets spans: the page heap of an explicit [`Heap`].
pub(crate) trait SpanSource {
    /// A fresh span whose `owner` is `owner` (a `GcHeap`'s id for object spans, 0 for the collector's
    /// own metadata: grey-stack chunks, check tables).
    fn alloc_span(&self, class: SpanClass, npages: PageCount, owner: u32) -> Option<NonNull<Span>>;
    /// # Safety
    /// `span` came from `alloc_span` here and nobody uses it after this call.
    unsafe fn free_span(&self, span: NonNull<Span>);
}

impl<P: Platform, const FULL_CHECKS: bool> SpanSource for Heap<P, FULL_CHECKS> {
    fn alloc_span(&self, class: SpanClass, npages: PageCount, owner: u32) -> Option<NonNull<Span>> {
        let span = self.gc_alloc_span(class, npages)?;
        // SAFETY: a fresh span struct, published in the span map but not yet known to anybody who
        // would write it; markers only read `owner`.
        unsafe { (*span.as_ptr()).owner = owner };
        Some(span)
    }
    unsafe fn free_span(&self, span: NonNull<Span>) {
        // SAFETY: the caller gives the span up; nobody else writes its struct. Cleared first, so no
        // marker takes the span for one of its own while the page heap reuses it.
        unsafe { (*span.as_ptr()).owner = 0 };
        // SAFETY: forwarded from the caller.
        unsafe { self.gc_free_span(span) }
    }
}

/// Index of the swept set for heap sweepgen `h`.
pub(crate) const fn swept_set(h: u32) -> usize {
    ((h / 2) % 2) as usize
}

pub(crate) struct SpanSet {
    pub(crate) current: [Option<NonNull<Span>>; NUM_SPAN_CLASSES],
    partial: [[SpanList; 2]; NUM_SPAN_CLASSES],
    full: [[SpanList; 2]; NUM_SPAN_CLASSES],
    pub(crate) pages: usize,
    pub(crate) unswept_pages: usize,
    /// Next class the background sweeper looks at.
    cursor: usize,
}

impl SpanSet {
    pub(crate) const fn new() -> Self {
        Self {
            current: [None; NUM_SPAN_CLASSES],
            partial: [const { [const { SpanList::new() }; 2] }; NUM_SPAN_CLASSES],
            full: [const { [const { SpanList::new() }; 2] }; NUM_SPAN_CLASSES],
            pages: 0,
            unswept_pages: 0,
            cursor: 0,
        }
    }

    /// Files a swept span (not current) under the swept set of `h`.
    pub(crate) fn put_swept(&mut self, span: NonNull<Span>, h: u32) {
        // SAFETY: GC spans are ours; no reference to this one is live.
        let s = unsafe { &mut *span.as_ptr() };
        s.sweepgen = h;
        let (c, set) = (s.class().index(), swept_set(h));
        let list = if s.is_full() || s.class().is_large() {
            &mut self.full[c][set]
        } else {
            &mut self.partial[c][set]
        };
        // SAFETY: the span is in no list (it was current, fresh, or just popped) and stays put.
        unsafe { list.push_front(span) };
    }

    /// A swept span of `class` with a free slot, if one is filed.
    pub(crate) fn take_swept_partial(&mut self, class: SpanClass, h: u32) -> Option<NonNull<Span>> {
        self.partial[class.index()][swept_set(h)].pop()
    }

    /// An unswept span of `class`, partial ones first (they are likelier to have room).
    pub(crate) fn take_unswept(&mut self, class: SpanClass, h: u32) -> Option<NonNull<Span>> {
        let (c, set) = (class.index(), 1 - swept_set(h));
        let span = self.partial[c][set]
            .pop()
            .or_else(|| self.full[c][set].pop())?;
        // SAFETY: GC spans are ours.
        self.unswept_pages -= unsafe { span.as_ref() }.npages().0;
        Some(span)
    }

    /// The next unswept span of any class (the proportional and background sweeper's walk).
    pub(crate) fn next_unswept(&mut self, h: u32) -> Option<NonNull<Span>> {
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
    pub(crate) fn for_each(&self, mut f: impl FnMut(NonNull<Span>)) {
        for s in self.current.iter().flatten() {
            f(*s);
        }
        for lists in self.partial.iter().chain(self.full.iter()) {
            for list in lists {
                list.iter().for_each(&mut f);
            }
        }
    }

    /// Unlinks and returns some span, current or filed (the heap is going away); `None` when none is left.
    pub(crate) fn take_any(&mut self) -> Option<NonNull<Span>> {
        if let Some(s) = self.current.iter_mut().find_map(Option::take) {
            return Some(s);
        }
        for lists in self.partial.iter_mut().chain(self.full.iter_mut()) {
            for list in lists {
                if let Some(s) = list.pop() {
                    return Some(s);
                }
            }
        }
        self.unswept_pages = 0;
        None
    }
}
