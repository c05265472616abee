//! The pacer (Go's gcControllerState, simplified): when to start a cycle and how much marking each
//! allocation pays for, so that marking ends near the heap goal.
//!
//! - Goal: `live + live * gogc / 100` (`gogc` off: no goal from growth), at least `min_heap`, capped by
//!   the memory limit (but never below `live + live / 16`, so a heap over its limit still runs
//!   mutator code between cycles instead of collecting forever).
//! - Trigger (incremental): `live + (goal - live) * trigger / 1000`. Assists pace marking to finish
//!   exactly at the goal (below), so the trigger only decides how long the cycle runs: it starts at 70%
//!   of the runway and moves by feedback — earlier when the last cycle overran the goal, or when in a
//!   concurrent mark the mutator's assists did more than an eighth of the scan work (its workers
//!   started too late to keep up: Go's pacer aims at a trigger where the background workers do the
//!   mark; steps, termination and a forced end are not assists and do not count), later
//!   when it finished in the first half of its runway (explicit steps or workers did the work); never
//!   before 40% of the runway. Stop-the-world: the goal.
//! - Assists: while marking, allocating `b` bytes pays `b * remaining / (goal - heap_live)` bytes of
//!   scan work (at least `b`), where `remaining` is the expected scan work (the last cycle's) less what
//!   is done. Past the goal, an assist finishes the mark.
//! - Sweeping: after mark termination, allocating `b` bytes sweeps `b * unswept / (trigger - live)` pages'
//!   worth of spans, so sweeping is done before the next trigger.
//!
//! Integer arithmetic only (a kernel may run without floating point).

/// Minimum heap goal (Go's heapMinimum).
pub const MIN_HEAP: usize = 4 << 20;

pub(crate) struct Pacer {
    pub(crate) gogc: Option<u32>,
    pub(crate) min_heap: usize,
    pub(crate) limit: Option<usize>,
    pub(crate) goal: usize,
    pub(crate) trigger: usize,
    /// Trigger position in the runway, per mille.
    trigger_permille: usize,
    /// Scan work expected for the cycle (the last cycle's).
    pub(crate) expected_work: usize,
    /// Pages to sweep per KiB allocated, fixed point 16.16.
    sweep_per_kib: usize,
    /// Sweeping owed, in pages, fixed point 16.16.
    sweep_debt: usize,
}

impl Pacer {
    pub(crate) fn new(gogc: Option<u32>, min_heap: usize, limit: Option<usize>) -> Self {
        let mut p = Self {
            gogc,
            min_heap,
            limit,
            goal: 0,
            trigger: 0,
            trigger_permille: 700,
            expected_work: 0,
            sweep_per_kib: 0,
            sweep_debt: 0,
        };
        p.set_goal(0, false);
        p
    }

    fn set_goal(&mut self, live: usize, stw: bool) {
        let grown = match self.gogc {
            Some(g) => live
                .saturating_add(live / 100 * g as usize)
                .max(self.min_heap),
            None => usize::MAX,
        };
        self.goal = match self.limit {
            Some(l) => grown.min(l).max(live + live / 16),
            None => grown,
        };
        self.trigger = if stw || self.goal == usize::MAX {
            self.goal
        } else {
            live + (self.goal - live) / 1000 * self.trigger_permille
        };
    }

    /// A cycle ended: `live` bytes marked, the heap was `heap_at_end` at termination, `scan_work` bytes
    /// were scanned (`mutator_scan` of them by the mutator's assists, in a concurrent mark),
    /// `unswept_pages` now wait for the sweeper.
    pub(crate) fn end_cycle(
        &mut self,
        live: usize,
        heap_at_end: usize,
        scan_work: usize,
        unswept_pages: usize,
        stw_mode: bool,
        mutator_scan: Option<usize>,
    ) {
        if !stw_mode {
            let half = self.trigger + (self.goal.saturating_sub(self.trigger)) / 2;
            let outran = mutator_scan.is_some_and(|m| m > scan_work / 8);
            if heap_at_end > self.goal || outran {
                self.trigger_permille = self.trigger_permille.saturating_sub(100).max(400);
            } else if heap_at_end < half {
                self.trigger_permille = (self.trigger_permille + 50).min(950);
            }
        }
        self.expected_work = scan_work;
        self.set_goal(live, stw_mode);
        let runway_kib = (self.trigger.saturating_sub(live) / 1024).max(1);
        self.sweep_per_kib = (unswept_pages << 16) / runway_kib + 1;
        self.sweep_debt = 0;
    }

    /// Scan work an allocation of `bytes` pays while marking.
    pub(crate) fn assist_work(&self, bytes: usize, heap_live: usize, done: usize) -> usize {
        let remaining = self.expected_work.saturating_sub(done) as u128;
        // Near and past the goal the runway is taken as a sixteenth of the goal: assists grow steep
        // but stay bounded, trading a small overshoot for bounded pauses (a cycle can only start at a
        // safe point, so one long `mutate` may run past the goal before marking even begins).
        let runway = (self.goal.saturating_sub(heap_live))
            .max(self.goal / 16)
            .max(1) as u128;
        let work = bytes as u128 * remaining / runway;
        (work as usize).max(bytes)
    }

    /// Pages to sweep for an allocation of `bytes`.
    pub(crate) fn sweep_pages(&mut self, bytes: usize) -> usize {
        self.sweep_debt += bytes.saturating_mul(self.sweep_per_kib) / 1024;
        let pages = self.sweep_debt >> 16;
        self.sweep_debt &= 0xffff;
        pages
    }
}

#[cfg(test)]
mod tests {
    use super::Pacer;

    /// A pacer after one cycle that marked 64 MiB live, its trigger where it is now.
    fn pacer() -> Pacer {
        let mut p = Pacer::new(Some(100), 4 << 20, None);
        p.end_cycle(64 << 20, 100 << 20, 64 << 20, 0, false, None);
        p
    }

    fn permille(p: &Pacer, live: usize) -> usize {
        (p.trigger - live) * 1000 / (p.goal - live)
    }

    #[test]
    fn a_concurrent_mark_the_mutator_did_much_of_moves_the_trigger_earlier_down_to_40_percent() {
        let live = 64 << 20;
        let mut p = pacer();
        let start = permille(&p, live);
        // Ended below the goal, in the second half of the runway: only the mutator's share moves it.
        let end = p.trigger + (p.goal - p.trigger) * 3 / 4;
        p.end_cycle(live, end, 80 << 20, 0, false, Some(20 << 20));
        assert!(
            permille(&p, live) < start,
            "{} -> {}",
            start,
            permille(&p, live)
        );
        for _ in 0..10 {
            let end = p.trigger + (p.goal - p.trigger) * 3 / 4;
            p.end_cycle(live, end, 80 << 20, 0, false, Some(20 << 20));
        }
        let floor = permille(&p, live);
        assert!((395..=405).contains(&floor), "{floor}");
        // Workers that did nearly all of it, the mark over early: later again.
        let end = p.trigger + 1;
        p.end_cycle(live, end, 80 << 20, 0, false, Some(1 << 20));
        assert!(permille(&p, live) > floor);
    }

    #[test]
    fn the_mutators_share_moves_nothing_in_incremental_marks() {
        let live = 64 << 20;
        let mut p = pacer();
        let start = permille(&p, live);
        let end = p.trigger + (p.goal - p.trigger) * 3 / 4;
        // Incremental: all the work is the mutator's by design (`None`).
        p.end_cycle(live, end, 80 << 20, 0, false, None);
        assert_eq!(permille(&p, live), start);
    }
}
