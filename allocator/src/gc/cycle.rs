//! The two ends of a mark: setup (barrier on, counters reset, tiny block dropped) and termination
//! (checkmark, weak refs, current spans put back, sweepgen += 2, pacer, gctrace line).
//!
//! Invariants: both run at safe points only (heap.rs), with the previous sweep finished before setup
//! (so no object is freed while a mark runs) and the grey stack empty at termination.

use super::gctrace::{emit, CycleLog, Line};
use super::heap::{Inner, Mode};
use super::trace::Trace;
use super::verify::CheckTable;
use crate::sizeclass::NUM_SPAN_CLASSES;

impl Inner {
    /// Mark setup; the caller shades the root next.
    pub(crate) fn begin_mark(&mut self) {
        debug_assert!(!self.marking && self.spans.unswept_pages == 0);
        self.cycle_requested = false;
        self.tiny = (0, 0);
        self.marking = true;
        self.marker.marked_bytes = 0;
        self.marker.marked_objects = 0;
        self.marker.scan_work = 0;
        self.log = CycleLog {
            start_ns: self.now(),
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
            spans.for_each(|span| {
                // SAFETY: GC spans are ours; read only while their objects are scanned.
                let s = unsafe { span.as_ref() };
                if s.class().noscan() {
                    return;
                }
                for idx in (0..s.nelems()).filter(|&i| s.is_marked(i)) {
                    // SAFETY: a marked object is allocated, and at a safe point initialized.
                    unsafe { marker.scan(s.object_addr(idx)) };
                    marker.drain(usize::MAX);
                }
            });
        }
    }

    /// Mark termination.
    pub(crate) fn end_mark(&mut self) {
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
        );
        if let Some(sink) = self.config.trace_sink {
            let line = Line {
                cycle: self.stats.cycles,
                log: self.log,
                mark_ns: self.now().saturating_sub(self.log.start_ns),
                heap_end,
                live,
                marked_objects: self.marker.marked_objects,
            };
            emit(sink, &line);
        }
        self.log.sweep_ns = 0;
    }

    /// Verification: marks everything reachable from `root` again into a check table; panics on any
    /// object the mark missed (verify.rs).
    pub(crate) fn checkmark<T: Trace + ?Sized>(&mut self, root: &T) {
        debug_assert!(self.marker.grey.is_empty());
        let (mut n, mut words) = (0, 0);
        self.spans.for_each(|s| {
            n += 1;
            // SAFETY: GC spans are ours; read only.
            words += unsafe { s.as_ref() }.nelems().div_ceil(64);
        });
        let spans = &self.spans;
        let table = CheckTable::build(self.marker.source, n, words, self.stats.cycles + 1, |f| {
            spans.for_each(f)
        })
        .unwrap_or_else(|| panic!("gc checkmark: no memory for the check table ({n} spans)"));
        self.marker.check = Some(table);
        // The check has no overflow fallback: lift a test's cap on the grey stack while it runs.
        let limit = core::mem::replace(&mut self.marker.grey.limit, usize::MAX);
        self.marker.tracer().trace(root);
        self.marker.drain(usize::MAX);
        self.marker.grey.limit = limit;
        let table = self.marker.check.take().expect("check table");
        table.release(self.marker.source);
    }
}
