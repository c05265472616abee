//! The two ends of a mark: setup (barrier on, counters reset, tiny block dropped) and termination
//! (checkmark, weak refs, current spans put back, sweepgen += 2, pacer, gctrace line).
//!
//! Invariants: both run at safe points only (heap.rs), with the previous sweep finished before setup
//! (so no object is freed while a mark runs) and the grey stack empty at termination.
//!
//! Panic safety: the rescan and the checkmark run user `Trace` impls (and the checkmark panics on a
//! missed object). Both can be cut short and redone: the rescan keeps `interrupted` set while it runs;
//! the checkmark's guard gives its table back, empties the grey stack of check entries and restores the
//! grey-stack limit whatever happens, so the real mark state is untouched and the heap stays in the
//! marking phase (nothing is freed) until a termination completes. `begin_mark` and `end_mark` read the
//! clock (user code) before changing anything and run no other user code; `end_mark` returns the
//! gctrace line for the caller to emit once the barrier flag matches the phase.

use super::gctrace::{CycleLog, Line};
use super::heap::{Inner, Mode};
use super::mark::Marker;
use super::object::Headed;
use super::trace::Trace;
use super::verify::CheckTable;
use crate::sizeclass::NUM_SPAN_CLASSES;

impl Inner {
    /// Mark setup; the caller shades the root next.
    pub(crate) fn begin_mark(&mut self) {
        debug_assert!(!self.marking && self.spans.unswept_pages == 0);
        // The clock is user code: read before any state changes.
        let start_ns = self.now();
        self.cycle_requested = false;
        // Owed assist work is a concurrent mark's, paced for it alone.
        self.assist_owed = 0;
        self.assist_due = false;
        self.tiny = (0, 0);
        self.marking = true;
        // Every mark bit was cleared by the sweep: an interruption of an earlier mark means nothing now.
        self.marker.interrupted = false;
        self.marker.marked_bytes = 0;
        self.marker.marked_objects = 0;
        self.marker.scan_work = 0;
        self.log = CycleLog {
            start_ns,
            heap_start: self.heap_live,
            goal: self.pacer.goal,
            sweep_ns: self.log.sweep_ns,
            ..CycleLog::default()
        };
    }

    /// After a grey-stack overflow: scans every marked object of every scan span again (marking is
    /// idempotent, so rescanning black objects only costs time) until no push fails. Safe points only:
    /// every allocated object is initialized there.
    pub(crate) fn rescan_overflow(&mut self) {
        while self.marker.overflow {
            self.marker.overflow = false;
            self.stats.overflow_rescans += 1;
            let (spans, marker) = (&self.spans, &mut self.marker);
            marker.scanning(|marker| {
                // Scanning marks objects of these very spans: no span reference may be held meanwhile.
                spans.for_each_marked_scan_object(|obj| {
                    // SAFETY: a marked object is allocated, and at a safe point initialized.
                    marker.scan(unsafe { Headed::new(obj) });
                    marker.drain(usize::MAX);
                })
            });
        }
    }

    /// Mark termination; returns the gctrace line to emit, if a sink is set.
    pub(crate) fn end_mark(&mut self) -> Option<Line> {
        // The clock is user code: read before any state changes.
        let end_ns = self.now();
        self.weak.clear_dead(&self.marker);
        for c in 0..NUM_SPAN_CLASSES {
            if let Some(span) = self.spans.current[c].take() {
                self.uncache(span);
            }
        }
        let heap_end = self.heap_live;
        let live = self.marker.marked_bytes;
        self.marking = false;
        self.sweepgen = self.sweepgen.wrapping_add(2);
        self.spans.begin_sweep();
        self.heap_live = live;
        self.stats.cycles += 1;
        self.stats.last_live = live;
        self.pacer.end_cycle(
            live,
            heap_end,
            self.marker.scan_work,
            self.spans.unswept_pages,
            self.config.mode == Mode::StopTheWorld,
            self.log.concurrent.then_some(self.log.assist_scan),
        );
        let mut log = self.log;
        if let Some(t0) = log.pause_t0 {
            log.pause_max_ns = log.pause_max_ns.max(end_ns.saturating_sub(t0));
        }
        let line = self.config.trace_sink.map(|_| Line {
            cycle: self.stats.cycles,
            log,
            mark_ns: end_ns.saturating_sub(self.log.start_ns),
            heap_end,
            live,
            marked_objects: self.marker.marked_objects,
        });
        self.log.sweep_ns = 0;
        line
    }

    /// Verification: marks everything reachable from `root` again into a check table; panics on any
    /// object the mark missed (verify.rs).
    pub(crate) fn checkmark<T: Trace + ?Sized>(&mut self, root: &T) {
        debug_assert!(self.marker.grey.is_empty());
        let (mut n, mut words) = (0, 0);
        self.spans.for_each(|s| {
            n += 1;
            words += s.nelems().div_ceil(64);
        });
        let spans = &self.spans;
        let table = CheckTable::build(self.marker.source, n, words, self.stats.cycles + 1, |f| {
            spans.for_each(f)
        })
        .unwrap_or_else(|| panic!("gc checkmark: no memory for the check table ({n} spans)"));
        self.marker.check = Some(table);
        // The check has no overflow fallback: lift a test's cap on the grey stack while it runs.
        let limit = core::mem::replace(&mut self.marker.grey.limit, usize::MAX);
        // A failed (panicking) check leaves `interrupted` set: the next termination rescans the root and
        // every marked object before checking again.
        self.marker.interrupted = true;
        let check = CheckRun {
            marker: &mut self.marker,
            limit,
        };
        check.marker.tracer().trace(root);
        check.marker.drain(usize::MAX);
        check.marker.interrupted = false;
    }
}

/// Ends a checkmark run, normally or by a panic (module docs): the real mark state is as before it.
struct CheckRun<'a> {
    marker: &'a mut Marker,
    limit: usize,
}

impl Drop for CheckRun<'_> {
    fn drop(&mut self) {
        let m = &mut *self.marker;
        let source = m.source;
        while m.grey.pop(source).is_some() {}
        m.grey.limit = self.limit;
        if let Some(table) = m.check.take() {
            table.release(source);
        }
    }
}
