//! Allocation in the GC heap: per span class one current span allocated from with `Span::next_free`
//! (the alloc cache / ctz path), the tiny allocator for small pointer-free objects, large objects in
//! spans of their own; and what allocating pays: assists while marking, proportional sweeping after.
//!
//! Invariants:
//! - Objects allocated while marking are allocated black (mark bit set at once, never scanned).
//! - A span is swept before it becomes current (lazy sweeping: `find_span` sweeps unswept spans of the
//!   class first, Go's mcentral.cacheSpan).
//! - Headerless zero-sized values take no slot (object.rs); every other object gets a slot of its own
//!   or a tiny-block range that lies wholly inside its block.
//! - The tiny block is 0 or a 16 B noscan slot allocated in the current cycle's marking state: it is
//!   dropped when a mark starts, so a tiny object is never placed in a white block during a mark.
//! - Assists and proportional sweeps run after the new object is written (`debt` carries the bytes
//!   from the slow path to there): every allocated slot is initialized whenever user code (a `Trace`
//!   impl, a finalizer) runs.

use core::mem::{align_of, size_of};
use core::ptr::NonNull;

use super::conc::{ConcTable, Crew, TablePhase};
use super::gctrace::PauseKind;
use super::heap::{Inner, State, Stress};
use super::object::{Layout, VTable, TINY_SIZE};
use super::par::Shared;
use super::spans::GcSpan;
use super::trace::Trace;
use super::workbuf::Pool;
use crate::addr::{PageCount, VirtAddr};
use crate::sizeclass::{SizeClass, SpanClass};

/// Tiny blocks: the 16 B noscan class.
const TINY_CLASS: SpanClass = match SizeClass::for_size(TINY_SIZE) {
    Some(c) => SpanClass::new(c, true),
    None => panic!("no 16 B size class"),
};

/// Spans an allocation sweeps at most looking for room before taking a fresh one (Go's spanBudget).
const SWEEP_BUDGET: usize = 100;

/// The most scan work one assist does in a concurrent mark (bytes); the rest stays owed
/// (`Inner::assist_owed`) and is paid by the next assists.
const CONC_ASSIST_MAX: usize = 4 << 10;

/// Units of table work one assist does at most (one per 4 KiB allocated; conc.rs, "Table assists"):
/// each unit is a few microseconds (`conc::SPAN_SLICE` spans entered, or a chunk of slots zeroed).
const TABLE_ASSIST_UNITS: usize = 4;

impl Inner {
    /// Adds an allocation's assist work to what a concurrent mark's mutator owes, without paying.
    fn owe_only(&mut self, bytes: usize, credit: usize) {
        // Most calls come from allocations within a span (no new bytes, `debt` accrues per refill):
        // they only spend new credit, without the pacer's division.
        let work = if bytes == 0 {
            0
        } else {
            self.pacer
                .assist_work(bytes, self.heap_live, self.marker.scan_work + credit)
        };
        (self.assist_owed, self.credit_used) =
            owe(self.assist_owed, self.credit_used, work, credit);
        self.assist_due = self.assist_owed > 0;
    }
}

/// A concurrent mark's assist bookkeeping (Go's background scan credit): `owed` scan work plus `work`
/// for this allocation, paid first from the workers' scan work so far (`credit`) not yet spent
/// (`credit - used`); returns the work still owed and the credit spent. Credit the mutator does not
/// need stays for its next allocations.
fn owe(owed: usize, used: usize, work: usize, credit: usize) -> (usize, usize) {
    let due = owed.saturating_add(work);
    let spent = credit.saturating_sub(used).min(due);
    (due - spent, used + spent)
}

impl State {
    /// Allocates a slot for `value` and moves it in; gives it back when memory runs out.
    #[inline]
    pub(crate) fn alloc<T: Trace>(&self, value: T) -> Result<NonNull<T>, T> {
        const {
            assert!(
                Layout::<T>::ALIGN_OK,
                "gc: managed types may be aligned to 8 KiB at most"
            )
        };
        if Layout::<T>::ZERO_SIZED {
            // No memory: the dangling address the marker knows never to shade (object.rs). Nothing to
            // drop either (headerless types have no drop glue).
            core::mem::forget(value);
            return Ok(NonNull::dangling());
        }
        let (_busy, inner) = self.enter();
        let slot = if Layout::<T>::TINY {
            inner.alloc_tiny(size_of::<T>(), align_of::<T>())
        } else {
            match Layout::<T>::CLASS {
                Some(class) => inner.alloc_small(class, Layout::<T>::FINALIZED),
                None => inner.alloc_large(
                    Layout::<T>::SIZE,
                    !Layout::<T>::HEADED,
                    Layout::<T>::FINALIZED,
                ),
            }
        };
        let Some(slot) = slot else {
            return Err(value);
        };
        let base = slot.as_mut_ptr::<u8>();
        // SAFETY: `slot` is a fresh slot of at least `Layout::<T>::SIZE` bytes aligned to `ALIGN` (the size
        // class was chosen by `for_layout(SIZE, ALIGN)`; large spans are page aligned; tiny offsets are
        // aligned to `T`), allocated to us and reachable by nobody else.
        let value_ptr = unsafe {
            if Layout::<T>::HEADED {
                base.cast::<&'static VTable>().write(Layout::<T>::VTABLE);
            }
            let value_ptr = base.add(Layout::<T>::OFFSET).cast::<T>();
            value_ptr.write(value);
            NonNull::new_unchecked(value_ptr)
        };
        // Paid only now that the slot is initialized: a panicking `Trace` impl in an assist cannot leave an
        // allocated slot of garbage behind.
        if inner.debt != 0 || inner.slow_alloc || inner.assist_due {
            inner.settle(self.pool(), self.crew());
        }
        Ok(value_ptr)
    }
}

impl Inner {
    /// A slot of `class` from its current span (refilled when full); `finalized`: the object has drop
    /// glue, and the span is flagged for the sweeper (`Span::finalizers`; a constant on the fast path,
    /// so the test folds away there).
    #[inline(always)]
    pub(crate) fn alloc_small(&mut self, class: SpanClass, finalized: bool) -> Option<VirtAddr> {
        if let Some(s) = &mut self.spans.current[class.index()] {
            if let Some(idx) = s.next_free() {
                if finalized {
                    s.finalizers = true;
                }
                if self.marking {
                    s.mark(idx);
                    self.marker.marked_bytes += s.elem_size();
                    self.marker.marked_objects += 1;
                }
                return Some(s.object_addr(idx));
            }
        }
        self.alloc_small_slow(class, finalized)
    }

    #[cold]
    #[inline(never)]
    fn alloc_small_slow(&mut self, class: SpanClass, finalized: bool) -> Option<VirtAddr> {
        self.debt += self.refill(class)?;
        let slot = self.alloc_small(class, finalized);
        debug_assert!(slot.is_some(), "a fresh current span has room");
        slot
    }

    /// Packs a pointer-free object of `size < 16` bytes into the tiny block (Go's tiny allocator).
    pub(crate) fn alloc_tiny(&mut self, size: usize, align: usize) -> Option<VirtAddr> {
        let (block, used) = self.tiny;
        let at = used.next_multiple_of(align);
        if block != 0 && at + size <= TINY_SIZE {
            self.tiny.1 = at + size;
            return Some(VirtAddr::new(block + at as u64));
        }
        let fresh = self.alloc_small(TINY_CLASS, false)?;
        // Keep whichever block has more room left (as Go does).
        if block == 0 || size < used {
            self.tiny = (fresh.as_u64(), size);
        }
        Some(fresh)
    }

    /// A span of its own for an object of `size` bytes (`finalized` as for [`Inner::alloc_small`]).
    pub(crate) fn alloc_large(
        &mut self,
        size: usize,
        noscan: bool,
        finalized: bool,
    ) -> Option<VirtAddr> {
        let npages = PageCount::covering(size)?;
        let class = SpanClass::new(SizeClass::LARGE, noscan);
        let mut s = self
            .marker
            .source
            .alloc_span(class, npages, self.marker.owner)?;
        let bytes = npages.bytes();
        if self.marking {
            s.mark(0);
            self.marker.marked_bytes += bytes;
            self.marker.marked_objects += 1;
        }
        s.finalizers = finalized;
        let addr = s.base();
        self.spans.joined(&mut s);
        self.spans.put_swept(s, self.sweepgen);
        self.heap_live += bytes;
        self.debt += bytes;
        Some(addr)
    }

    /// Makes a span with a free slot the current span of `class`; returns the bytes it brings.
    fn refill(&mut self, class: SpanClass) -> Option<usize> {
        let c = class.index();
        if let Some(old) = self.spans.current[c].take() {
            self.uncache(old);
        }
        // The clock is user code: read only while no span is out of the lists (a panic must lose none).
        let t0 = self.now();
        let (mut s, swept) = self.find_span(class)?;
        s.sweepgen = self.sweepgen.wrapping_add(3);
        let bytes = (s.nelems() - s.alloc_count()) * s.elem_size();
        self.heap_live += bytes;
        self.spans.current[c] = Some(s);
        if swept {
            self.log.sweep_ns += self.now().saturating_sub(t0);
        }
        Some(bytes)
    }

    /// Puts a current span back on the lists; its free slots stop counting as live.
    pub(crate) fn uncache(&mut self, s: GcSpan) {
        self.heap_live -= (s.nelems() - s.alloc_count()) * s.elem_size();
        self.spans.put_swept(s, self.sweepgen);
    }

    /// A swept span of `class` with room: a swept partial one, else one swept now, else a fresh one; and
    /// whether any span was swept. Runs no user code but finalizers (inside `sweep_span`, which files
    /// its span back if one panics).
    fn find_span(&mut self, class: SpanClass) -> Option<(GcSpan, bool)> {
        let h = self.sweepgen;
        if let Some(s) = self.spans.take_swept_partial(class, h) {
            return Some((s, false));
        }
        let mut swept = false;
        for _ in 0..SWEEP_BUDGET {
            let Some(span) = self.spans.take_unswept(class, h) else {
                break;
            };
            swept = true;
            let Some(span) = self.sweep_span(span, true) else {
                continue;
            };
            if !span.is_full() {
                return Some((span, true));
            }
            self.spans.put_swept(span, h);
        }
        let mut s = self
            .marker
            .source
            .alloc_span(class, PageCount(0), self.marker.owner)?;
        s.sweepgen = h;
        self.spans.joined(&mut s);
        Some((s, swept))
    }

    /// Pays for the bytes allocated since the last call (stress mode: and does its step).
    fn settle(&mut self, pool: &Pool, crew: Option<&Crew>) {
        let bytes = core::mem::take(&mut self.debt);
        if bytes != 0 || self.assist_due {
            self.pay(bytes, pool, crew);
        }
        if self.slow_alloc {
            self.stress_step(pool);
        }
    }

    /// What allocating `bytes` costs: an assist while marking (table work while a concurrent mark's
    /// table is being made); else proportional sweeping and the trigger check. `crew`: the concurrent
    /// mark workers' (their scan work so far in this mark is credit).
    fn pay(&mut self, bytes: usize, pool: &Pool, crew: Option<&Crew>) {
        if let Some(phase) = self.table_due().filter(|_| bytes > 0) {
            if let Some(t0) = self.table_assist(crew, (bytes / 4096).clamp(1, TABLE_ASSIST_UNITS)) {
                self.pause_end(t0, PauseKind::Table);
                if phase != TablePhase::Merging {
                    // What the table is for: workers marking instead of the mutator (conc.rs,
                    // "Table assists"); marking owed meanwhile is not carried over.
                    self.assist_owed = 0;
                    self.assist_due = false;
                    return;
                }
            }
        }
        let crew = crew.map(|c| &c.sh);
        let credit = crew.map_or(0, Shared::scan_work_so_far);
        if self.marking {
            if self.marker.grey.is_empty() && pool.looks_empty() {
                if let Some(crew) = crew.filter(|c| self.log.concurrent && c.workers_hold_work()) {
                    // The workers hold what is grey: they are asked to share, and the work stays
                    // owed (paid at the next allocations, once there is some to take).
                    crew.set_wants_work(true);
                    self.owe_only(bytes, credit);
                    return;
                }
                // Nothing grey anywhere but at termination's reach: an assist would find no work,
                // so none is made (not even a pause to look) and nothing is owed.
                self.assist_owed = 0;
                self.assist_due = false;
                return;
            }
            if let Some(crew) = crew {
                crew.set_wants_work(false);
            }
            let mut work =
                self.pacer
                    .assist_work(bytes, self.heap_live, self.marker.scan_work + credit);
            if self.log.concurrent {
                // A concurrent mark: the work is owed, less what the workers did meanwhile (Go's
                // background scan credit), and paid in bounded pieces (conc.rs).
                (self.assist_owed, self.credit_used) =
                    owe(self.assist_owed, self.credit_used, work, credit);
                if self.assist_owed == 0 {
                    self.assist_due = false;
                    return;
                }
                work = self.assist_owed.min(CONC_ASSIST_MAX);
            }
            let t0 = self.now();
            // In a concurrent mark, the pool's chunks when the mutator outruns the workers (conc.rs).
            let done = self.drain_with_pool(pool, work);
            self.log.assist_scan += done;
            if self.log.concurrent {
                // Less found than owed: the rest stays owed while workers hold grey entries (they
                // are asked to share), else nothing is left to mark before termination.
                let workers_busy = crew.is_some_and(Shared::workers_hold_work);
                self.assist_owed = if done >= work || workers_busy {
                    self.assist_owed - work.min(done)
                } else {
                    0
                };
                if done < work && workers_busy {
                    if let Some(crew) = crew {
                        crew.set_wants_work(true);
                    }
                }
                // What is still owed is paid at the next allocations, a piece each: the pacing's
                // rate holds whatever the cap (while there is grey work in the mutator's reach;
                // what the workers hold, they mark).
                self.assist_due = self.assist_owed > 0;
            }
            self.stats.assists += 1;
            self.log.assists += 1;
            self.pause_end(t0, PauseKind::Assist);
            return;
        }
        self.assist_due = false;
        if self.spans.unswept_pages > 0 {
            let pages = self.pacer.sweep_pages(bytes);
            if pages > 0 {
                let t0 = self.now();
                self.sweep_pages(pages);
                self.pause_end(t0, PauseKind::Sweep);
            }
        }
        if self.heap_live >= self.pacer.trigger {
            self.cycle_requested = true;
        }
    }

    /// The phase of a concurrent mark's side table while it is being made or merged (`Preparing`,
    /// `Building`, `Merging`): then an allocation's assist works on the table (conc.rs, "Table
    /// assists").
    fn table_due(&self) -> Option<TablePhase> {
        self.conc_table
            .as_ref()
            .map(ConcTable::phase)
            .filter(|&p| self.marking && p != TablePhase::Open)
    }

    /// Stress mode: mark work on every allocation.
    fn stress_step(&mut self, pool: &Pool) {
        if let Stress::StepEveryAlloc(budget) = self.config.stress {
            if self.marking {
                // Counted as the assist it stands for, pause included, as every piece of GC work the
                // mutator waits for is.
                let t0 = self.now();
                self.drain_with_pool(pool, budget.max(1));
                self.stats.assists += 1;
                self.log.assists += 1;
                self.pause_end(t0, PauseKind::Assist);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::owe;

    #[test]
    fn assists_spend_the_workers_credit_first_and_bank_the_rest() {
        // No credit: everything is owed.
        assert_eq!(owe(0, 0, 100, 0), (100, 0));
        // The workers did 120: the 150 due is paid down to 30.
        assert_eq!(owe(100, 0, 50, 120), (30, 120));
        // No new credit: the debt grows.
        assert_eq!(owe(30, 120, 10, 120), (40, 120));
        // More credit than due: nothing owed, and the surplus (460) stays for later allocations.
        assert_eq!(owe(40, 120, 10, 630), (0, 170));
        assert_eq!(owe(0, 170, 400, 630), (0, 570));
        assert_eq!(owe(0, 570, 100, 630), (40, 630));
    }
}
