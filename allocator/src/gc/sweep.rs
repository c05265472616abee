//! Sweeping: turning a span's mark bits into its alloc bits (`Span::sweep`), after finalizing the
//! objects that die (their `Drop`, run once, here) and optionally poisoning them; spans left empty go
//! back to the page heap. Lazy (a span is swept before it is allocated from), proportional to
//! allocation, by `step`, and finished when the next cycle starts (sweep termination).
//!
//! Invariants:
//! - A span is swept exactly once per cycle: from sweepgen `h - 2` through `h - 1` (being swept) to `h`.
//! - Every object is finalized exactly once: here when it dies, or when the heap is dropped.
//! - Finalizers run with the span's metadata untouched until they are all done; they may not use the
//!   heap (Trace contract), so nothing else changes meanwhile.

use core::ptr::NonNull;

use super::heap::Inner;
use super::object::vtable_of;
use crate::span::Span;

/// Byte freed objects are overwritten with in poison mode.
pub(crate) const POISON: u8 = 0xA5;

impl Inner {
    /// Sweeps `span` (unswept, in no list and not current). Returns it unless it came out empty and
    /// `keep` is false: then its pages go back to the page heap.
    pub(crate) fn sweep_span(&mut self, span: NonNull<Span>, keep: bool) -> Option<NonNull<Span>> {
        let h = self.sweepgen;
        // SAFETY: GC spans are ours; nothing else refers to this one while it is in no list.
        let s = unsafe { &mut *span.as_ptr() };
        assert!(
            s.sweepgen == h.wrapping_sub(2),
            "gc: span at {:#x} swept with sweepgen {} while the heap's is {h}",
            s.base().as_u64(),
            s.sweepgen
        );
        s.sweepgen = h.wrapping_sub(1);
        let noscan = s.class().noscan();
        let large = s.class().is_large();
        if !noscan || (self.config.poison && !large) {
            let size = s.elem_size();
            for idx in s.unmarked_objects() {
                let slot = s.object_addr(idx).as_mut_ptr::<u8>();
                let slot = NonNull::new(slot).expect("object at address 0");
                if !noscan {
                    // SAFETY: an allocated, initialized object of a scan span that nothing reachable
                    // points to: its value is dropped here, once, and never used again.
                    if let Some(drop) = unsafe { vtable_of(slot) }.drop {
                        // SAFETY: as above.
                        unsafe { drop(slot) };
                        self.stats.finalized += 1;
                    }
                }
                if self.config.poison && !large {
                    // SAFETY: the dead slot is ours (it is freed right below) and `size` bytes long.
                    unsafe { slot.as_ptr().write_bytes(POISON, size) };
                }
            }
        }
        let freed = s.sweep();
        self.stats.objects_freed += freed as u64;
        self.stats.bytes_freed += (freed * s.elem_size()) as u64;
        s.sweepgen = h;
        if s.is_empty() && !keep {
            self.spans.pages -= s.npages().0;
            self.stats.spans_freed += 1;
            // SAFETY: the span came from this source, is in no list and holds no object now.
            unsafe { self.marker.source.free_span(span) };
            return None;
        }
        Some(span)
    }

    /// Sweeps spans until at least `pages` pages are swept or none is left.
    pub(crate) fn sweep_pages(&mut self, pages: usize) {
        let t0 = self.now();
        let mut done = 0;
        while done < pages {
            let Some(span) = self.spans.next_unswept(self.sweepgen) else {
                break;
            };
            // SAFETY: GC spans are ours.
            done += unsafe { span.as_ref() }.npages().0;
            if let Some(span) = self.sweep_span(span, false) {
                self.spans.put_swept(span, self.sweepgen);
            }
        }
        self.log.sweep_ns += self.now().saturating_sub(t0);
    }

    /// Sweeps every span still unswept (sweep termination).
    pub(crate) fn sweep_all(&mut self) {
        self.sweep_pages(usize::MAX);
        debug_assert_eq!(self.spans.unswept_pages, 0);
    }

    /// The heap is going away: finalize every allocated object and give every span back.
    pub(crate) fn release_all(&mut self) {
        let source = self.marker.source;
        let mut spans = core::mem::replace(&mut self.spans, super::spans::SpanSet::new());
        let mut release = |span: NonNull<Span>| {
            // SAFETY: GC spans are ours; the heap is being dropped, so nothing else uses them.
            let s = unsafe { span.as_ref() };
            if !s.class().noscan() {
                for idx in (0..s.nelems()).filter(|&i| s.is_allocated(i)) {
                    let slot =
                        NonNull::new(s.object_addr(idx).as_mut_ptr::<u8>()).expect("object at 0");
                    // SAFETY: an allocated, initialized object of a scan span, finalized once, here.
                    if let Some(drop) = unsafe { vtable_of(slot) }.drop {
                        // SAFETY: as above.
                        unsafe { drop(slot) };
                    }
                }
            }
            // SAFETY: from this source, in no list now, and nothing refers to it after this.
            unsafe { source.free_span(span) };
        };
        for c in spans.current.iter_mut() {
            if let Some(s) = c.take() {
                release(s);
            }
        }
        spans.drain(&mut release);
        self.marker.grey.release(source);
    }
}
