//! Sweeping: turning a span's mark bits into its alloc bits (`Span::sweep`), finalizing the objects that
//! die (their `Drop`, run once, here; only in spans flagged as holding such objects, object.rs) and
//! optionally poisoning them; spans left empty go back to the page heap. Lazy (a span is swept before
//! it is allocated from), proportional to allocation, by `step`, and finished when the next cycle
//! starts (sweep termination).
//!
//! Invariants:
//! - A span is swept exactly once per cycle: from sweepgen `h - 2` through `h - 1` (being swept) to `h`.
//! - Every object is finalized at most once: here when it dies, or when the heap is dropped.
//! - Panic safety (finalizers are user code, and `Drop` may panic): the span's bookkeeping is finished
//!   *before* any finalizer runs — the dead set is copied out, the bitmaps are swept, sweepgen is `h` —
//!   and while finalizers run a guard holds the span; if one panics, the guard files the span in the
//!   swept lists (consistent sweepgen, mark bits clear, pages counted). The dead objects of that span
//!   not finalized yet are then never finalized: their slots are free and reused later, so whatever they
//!   own leaks, but nothing is freed while reachable and no span is lost. `GcHeap`'s drop
//!   (`release_all`) gives every span back whatever a finalizer does.
//! - Finalizers run while the span is in no list and no allocation can happen in this heap (its state
//!   is borrowed, `busy`, or `&mut` at a safe point): the free slots of the dead are reused only after
//!   their finalizers ran (or were given up).

use super::heap::Inner;
use super::object::Headed;
use super::spans::{GcSpan, SpanSet, SpanSource};
use crate::span::Span;

/// Byte freed objects are overwritten with in poison mode.
pub(crate) const POISON: u8 = 0xA5;

/// Most objects a span holds (the 8 B class in one page): the bound of a dead set.
const MAX_OBJECTS: usize = 1024;

/// The dead objects of a span, copied out of its bitmaps before they are swept.
struct DeadSet([u64; MAX_OBJECTS / 64]);

impl DeadSet {
    fn of(s: &Span) -> Self {
        assert!(
            s.nelems() <= MAX_OBJECTS,
            "gc: span with {} objects",
            s.nelems()
        );
        let mut d = DeadSet([0; MAX_OBJECTS / 64]);
        for idx in s.unmarked_objects() {
            d.0[idx / 64] |= 1 << (idx % 64);
        }
        d
    }

    fn iter(&self) -> impl Iterator<Item = usize> + '_ {
        self.0.iter().enumerate().flat_map(|(w, &bits)| {
            let mut bits = bits;
            core::iter::from_fn(move || {
                if bits == 0 {
                    return None;
                }
                let b = bits.trailing_zeros() as usize;
                bits &= bits - 1;
                Some(w * 64 + b)
            })
        })
    }
}

/// Holds a swept span while its finalizers run; files it back in the lists if one unwinds through
/// `sweep_span` (normally the span is taken back out first).
struct Refile<'a> {
    spans: &'a mut SpanSet,
    span: Option<GcSpan>,
    h: u32,
}

impl Drop for Refile<'_> {
    fn drop(&mut self) {
        if let Some(span) = self.span.take() {
            self.spans.put_swept(span, self.h);
        }
    }
}

impl Inner {
    /// Sweeps `span` (unswept, in no list and not current). Returns it unless it came out empty and
    /// `keep` is false: then its pages go back to the page heap. If a finalizer panics, the span is filed
    /// in the swept lists before the panic goes on (module invariants).
    pub(crate) fn sweep_span(&mut self, mut s: GcSpan, keep: bool) -> Option<GcSpan> {
        let h = self.sweepgen;
        assert!(
            s.sweepgen == h.wrapping_sub(2),
            "gc: span at {:#x} swept with sweepgen {} while the heap's is {h}",
            s.base().as_u64(),
            s.sweepgen
        );
        s.sweepgen = h.wrapping_sub(1);
        // Only a span that held an object with drop glue has dead objects to finalize (object.rs): the
        // others' dead objects are never read, unless to poison them.
        let finalize = !s.class().noscan() && s.finalizers;
        let poison = self.config.poison && !s.class().is_large();
        let dead = (finalize || poison).then(|| DeadSet::of(&s));
        let freed = s.sweep();
        if s.alloc_count() == 0 {
            // Swept empty: whatever held a finalizer is dead (finalized below, or given up if one of
            // them panics), so the span's next tenants decide anew.
            s.finalizers = false;
        }
        self.stats.objects_freed += freed as u64;
        self.stats.bytes_freed += (freed * s.elem_size()) as u64;
        s.sweepgen = h;
        // The span is consistent from here on; only now does user code run.
        if let Some(dead) = dead.filter(|_| freed != 0) {
            let mut guard = Refile {
                spans: &mut self.spans,
                span: Some(s),
                h,
            };
            let held = guard.span.as_ref().expect("held");
            for idx in dead.iter() {
                let slot = held.object_addr(idx);
                if finalize {
                    // SAFETY: an initialized object of a scan span that was allocated until the sweep
                    // above and that nothing reachable points to (unmarked); its slot is reused only
                    // after this loop. Finalized once: here (it is no longer allocated, so neither a later
                    // sweep nor `release_all` sees it).
                    if unsafe { Headed::new(slot).finalize() } {
                        self.stats.finalized += 1;
                    }
                }
                if poison {
                    // SAFETY: the dead slot is ours (freed above, not reused yet) and `elem_size` long.
                    unsafe {
                        slot.as_mut_ptr::<u8>()
                            .write_bytes(POISON, held.elem_size())
                    };
                }
            }
            s = guard.span.take().expect("held");
        }
        if s.is_empty() && !keep {
            self.spans.left(&s);
            self.stats.spans_freed += 1;
            let goal = self.pacer.goal;
            self.marker
                .source
                .free_span_keeping(s, goal.saturating_add(goal / 10));
            return None;
        }
        Some(s)
    }

    /// Sweeps spans until at least `pages` pages are swept or none is left.
    pub(crate) fn sweep_pages(&mut self, pages: usize) {
        let t0 = self.now();
        let mut done = 0;
        while done < pages {
            let Some(span) = self.spans.next_unswept(self.sweepgen) else {
                break;
            };
            done += span.npages().0;
            if let Some(span) = self.sweep_span(span, false) {
                self.spans.put_swept(span, self.sweepgen);
            }
        }
        self.log.sweep_ns += self.now().saturating_sub(t0);
    }

    /// A bounded piece of the sweep at a safe point (a pause): spans until `conc::SLICE_NS` of the clock
    /// have passed, or `SLICE_PAGES` pages without a clock. The safe point that would start a cycle
    /// sweeps what is left this way first, so that the cycle start does not finish a long sweep at once.
    pub(crate) fn sweep_slice(&mut self) {
        const SLICE_PAGES: usize = 16;
        let Some(clock) = self.config.clock else {
            return self.sweep_pages(SLICE_PAGES);
        };
        let t0 = clock();
        while self.spans.unswept_pages > 0 && clock().saturating_sub(t0) < super::conc::SLICE_NS {
            self.sweep_pages(1);
        }
    }

    /// Sweeps every span still unswept (sweep termination).
    pub(crate) fn sweep_all(&mut self) {
        self.sweep_pages(usize::MAX);
        debug_assert_eq!(self.spans.unswept_pages, 0);
    }

    /// The heap is going away: finalize every allocated object and give every span back. If a finalizer
    /// panics, every span still goes back to the page heap (the guard's drop), those not finalized yet
    /// without finalizing their objects.
    pub(crate) fn release_all(&mut self) {
        let source = self.marker.source;
        self.marker.grey.release(source);
        let mut all = ReleaseAll {
            spans: core::mem::replace(&mut self.spans, SpanSet::new()),
            source,
        };
        while let Some(span) = all.spans.take_any() {
            let held = ReleaseOne {
                span: Some(span),
                source,
            };
            let s = held.span.as_ref().expect("held");
            if !s.class().noscan() && s.finalizers {
                for idx in (0..s.nelems()).filter(|&i| s.is_allocated(i)) {
                    // SAFETY: an allocated, initialized object of a scan span. The heap is going away:
                    // nothing uses the object after this, and its span is freed right after its objects
                    // (never finalized twice).
                    unsafe { Headed::new(s.object_addr(idx)).finalize() };
                }
            }
            drop(held);
        }
    }
}

/// Gives one span back to the page heap when dropped (normally or by a panicking finalizer).
struct ReleaseOne {
    span: Option<GcSpan>,
    source: &'static dyn SpanSource,
}

impl Drop for ReleaseOne {
    fn drop(&mut self) {
        if let Some(span) = self.span.take() {
            self.source.free_span(span);
        }
    }
}

/// Gives every span left in `spans` back when dropped, without finalizing (a finalizer panicked).
struct ReleaseAll {
    spans: SpanSet,
    source: &'static dyn SpanSource,
}

impl Drop for ReleaseAll {
    fn drop(&mut self) {
        while let Some(span) = self.spans.take_any() {
            self.source.free_span(span);
        }
    }
}
