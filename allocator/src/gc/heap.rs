//! [`GcHeap`]: one managed heap — its configuration, its state, the `mutate` entry point and the safe
//! points where cycles start and end.
//!
//! A cycle: *start* (safe point: finish sweeping the last cycle, drop the tiny block, turn the barrier
//! on, shade the root) -> *mark* (incremental: `step`s and allocation assists drain the grey stack;
//! stop-the-world: all at once) -> *termination* (safe point, grey stack empty: optional checkmark,
//! clear dead weak refs, put current spans back, `sweepgen += 2`, new goal, gctrace line) -> *sweep*
//! (lazy: a span is swept before it is allocated from; proportional sweeping on allocation; `step`;
//! the next start finishes it).
//!
//! Invariants:
//! - Cycles start and terminate only at safe points (`GcHeap` methods taking `&mut self`, and the end of
//!   `mutate`), where no `Gc` is on the stack and no cell is borrowed. Inside `mutate` the collector
//!   only drains the grey stack (assists) and sweeps spans (lazy sweeping), both of which are safe with
//!   `Gc`s on the stack (see barrier.rs).
//! - `State::marking` mirrors `Inner::marking`, and is synchronised before any user code runs after a
//!   change (the root's `Trace` at mark start, the trace sink at termination), so the barrier is on
//!   exactly while a mark runs even if that code panics. `busy` is set while `Inner` is borrowed mutably,
//!   so a `Trace` impl or finalizer that calls back into the heap (breaking the Trace contract) panics
//!   instead of aliasing; its guard clears it on unwind too, which is right because every operation
//!   leaves `Inner` consistent whenever user code can panic (sweep.rs, mark.rs, cycle.rs).
//! - `heap_live` (Go's heapLive): bytes of objects allocated since the last termination plus the bytes
//!   marked by it; a current span counts whole when it is cached and gives back its free slots when put
//!   back, so the allocation fast path updates no counter.

use core::cell::{Cell, UnsafeCell};
use core::marker::PhantomData;

use super::conc::{ConcTable, ConcurrentWorkers, Crew, CrewRef, TablePhase};
use super::gctrace::{emit, CycleLog, GcStats, PauseKind};
use super::mark::Marker;
use super::mutation::{Mutation, Rootable};
use super::pacer::{Pacer, MIN_HEAP};
use super::par::MarkWorkers;
use super::spans::{SpanSet, SpanSource};
use super::weak::WeakList;
use super::workbuf::Pool;
use crate::heap::Heap;
use crate::platform::Platform;

/// How automatic collections run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Mark in bounded steps interleaved with the mutator (explicit `step` and allocation assists).
    Incremental,
    /// Mark the whole heap at one safe point (sweeping stays lazy).
    StopTheWorld,
    /// As `Incremental`, with mark workers on other CPUs draining the grey set while the mutator runs
    /// (`GcConfig::concurrent_workers`; without them this is `Incremental`). See conc.rs.
    Concurrent,
}

/// Debug modes that make the collector run far more often than the pacer would.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stress {
    None,
    /// A full stop-the-world collection at every safe point (the end of every `mutate`). Inside
    /// `mutate` there are no safe points: this is "collect at every allocation" for a mutator that
    /// allocates once per `mutate`.
    CollectEverySafepoint,
    /// Every allocation while marking scans this many bytes of grey objects; every safe point starts a
    /// cycle if none runs.
    StepEveryAlloc(usize),
}

/// Configuration of a [`GcHeap`].
#[derive(Clone, Copy, Debug)]
pub struct GcConfig {
    pub mode: Mode,
    /// Heap growth over the live heap before the next cycle, in percent (Go's GOGC); `None` = off.
    pub gogc: Option<u32>,
    /// Smallest heap goal (Go's heapMinimum, 4 MiB).
    pub min_heap: usize,
    /// Soft cap on the heap goal (Go's GOMEMLIMIT).
    pub memory_limit: Option<usize>,
    /// Re-mark every cycle with the world stopped and panic on any object the mark missed.
    pub verify: bool,
    /// Overwrite freed objects with 0xA5 (Go's clobberfree): use-after-free reads garbage at once.
    pub poison: bool,
    pub stress: Stress,
    /// Monotonic nanoseconds, for gctrace times and pauses (no clock: times read 0). Read only where the
    /// collector's state is consistent, so a panicking clock is as harmless as a panicking hook.
    pub clock: Option<fn() -> u64>,
    /// Receives one gctrace line per cycle.
    pub trace_sink: Option<fn(&str)>,
    /// Called with the kind and the length in ns of every piece of collector work the mutator waited
    /// for (stop-the-world cycle, cycle start, sweep, assist, step, table slice, hand-over, cell wait,
    /// termination: [`PauseKind`]).
    pub pause_hook: Option<fn(PauseKind, u64)>,
    /// Mark workers on other CPUs for stop-the-world marks (par.rs); `None`: mark on the heap's CPU.
    /// With workers, `Trace` impls run on their CPUs too (trace.rs).
    pub mark_workers: Option<MarkWorkers>,
    /// Mark workers beside the running mutator in `Mode::Concurrent` (conc.rs). With them, `Trace`
    /// impls run on other CPUs while the mutator runs (trace.rs).
    pub concurrent_workers: Option<ConcurrentWorkers>,
}

impl Default for GcConfig {
    fn default() -> Self {
        Self {
            mode: Mode::Incremental,
            gogc: Some(100),
            min_heap: MIN_HEAP,
            memory_limit: None,
            verify: false,
            poison: false,
            stress: Stress::None,
            clock: None,
            trace_sink: None,
            pause_hook: None,
            mark_workers: None,
            concurrent_workers: None,
        }
    }
}

/// Where the collector is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    /// No mark running; spans of the last cycle may still wait for the sweeper.
    Sweeping,
    /// Marking: the barrier is on, allocation is black.
    Marking,
    /// No mark running and nothing left to sweep.
    Idle,
}

pub(crate) struct Inner {
    pub(crate) config: GcConfig,
    pub(crate) marker: Marker,
    pub(crate) spans: SpanSet,
    pub(crate) pacer: Pacer,
    pub(crate) weak: WeakList,
    pub(crate) marking: bool,
    /// Heap sweepgen (Go's mheap.sweepgen): grows by 2 per cycle.
    pub(crate) sweepgen: u32,
    pub(crate) heap_live: usize,
    /// The trigger was reached inside `mutate`: start a cycle at the next safe point.
    pub(crate) cycle_requested: bool,
    /// Tiny allocator block and the offset of its first free byte (block 0: none).
    pub(crate) tiny: (u64, usize),
    /// Allocations take the slow path (a stress mode is on).
    pub(crate) slow_alloc: bool,
    /// Bytes allocated (whole spans when cached) not yet paid for with assists or sweeping.
    pub(crate) debt: usize,
    /// Assist work owed in a concurrent mark: paid at most `alloc::CONC_ASSIST_MAX` per assist, so that
    /// no single allocation waits long (the workers mark meanwhile).
    pub(crate) assist_owed: usize,
    /// `assist_owed` is not 0: the next allocation pays a piece of it (alloc.rs).
    pub(crate) assist_due: bool,
    /// The workers' scan work (`State::worker_credit`) already set against `assist_owed`.
    pub(crate) credit_used: usize,
    pub(crate) stats: GcStats,
    pub(crate) log: CycleLog,
    /// The side mark table of a concurrent mark (conc.rs), from mark setup to termination.
    pub(crate) conc_table: Option<ConcTable>,
    /// The pages of the last concurrent mark's table, kept for the next one (conc.rs).
    pub(crate) conc_spare: Option<ConcTable>,
    #[cfg(test)]
    pub(crate) barrier_off: bool,
    /// One unit of the side table's work per safe point (so that tests see every phase).
    #[cfg(test)]
    pub(crate) table_one_unit: bool,
    /// Units of table work done by assists (conc.rs, "Table assists").
    #[cfg(test)]
    pub(crate) table_assists: u64,
    /// No table assists: the table advances at safe points only (with `table_one_unit`, a unit each).
    #[cfg(test)]
    pub(crate) table_assists_off: bool,
}

impl Inner {
    pub(crate) fn now(&self) -> u64 {
        self.config.clock.map_or(0, |c| c())
    }

    /// Records a pause that began at `t0`, spent on `kind`.
    pub(crate) fn pause_end(&mut self, t0: u64, kind: PauseKind) {
        let d = self.now().saturating_sub(t0);
        self.stats.count_pause(kind, d);
        self.log.pause_max_ns = self.log.pause_max_ns.max(d);
        if let Some(h) = self.config.pause_hook {
            h(kind, d);
        }
    }
}

/// The heap's state, lent to the mutator as a [`Mutation`].
pub(crate) struct State {
    /// Single-threaded by design, not by accident of the fields below: the heap's mark bits, grey stack
    /// and spans are touched without atomics (parallel mark workers, par.rs, run only inside a call that
    /// holds the heap mutably, and set mark bits atomically), and finalizers run on the heap's thread.
    /// This makes `GcHeap` and `Mutation` neither `Send` nor `Sync` whatever the other fields are.
    _single_threaded: SingleThreaded,
    inner: UnsafeCell<Inner>,
    busy: Cell<bool>,
    marking: Cell<bool>,
    /// Mark workers may run on other CPUs now (while a concurrent mark is open, conc.rs: set at the
    /// safe point that opens it and cleared at the one that stops every worker, so it is constant for a
    /// whole `mutate` call).
    concurrent: Cell<bool>,
    /// Grey chunks of a heap without concurrent workers (assists and steps take from it; empty).
    own_pool: Pool,
    /// The concurrent mark workers' shared state, with the pool they share with the mutator (conc.rs);
    /// `None` unless the heap is configured for concurrent marking.
    crew: Option<CrewRef>,
}

/// Neither `Send` nor `Sync` (see `State`).
pub(crate) struct SingleThreaded(PhantomData<*mut ()>);

/// Clears `busy` when a mutable borrow of `Inner` ends.
pub(crate) struct Busy<'a>(&'a Cell<bool>);

impl Drop for Busy<'_> {
    fn drop(&mut self) {
        self.0.set(false);
    }
}

impl State {
    /// Mutable access to the state for one operation.
    #[inline]
    #[allow(clippy::mut_from_ref)] // unique by the `busy` flag, checked at run time
    pub(crate) fn enter(&self) -> (Busy<'_>, &mut Inner) {
        if self.busy.replace(true) {
            reentered();
        }
        // SAFETY: `busy` was clear, so no other `&mut Inner` is live (every one is made here and lives
        // no longer than its `Busy`), and `Inner` is only reached through this cell.
        (Busy(&self.busy), unsafe { &mut *self.inner.get() })
    }

    #[inline]
    pub(crate) fn is_marking(&self) -> bool {
        self.marking.get()
    }

    #[inline]
    pub(crate) fn is_concurrent(&self) -> bool {
        self.concurrent.get()
    }

    pub(crate) fn set_concurrent(&self, on: bool) {
        self.concurrent.set(on);
    }

    fn has_crew(&self) -> bool {
        self.crew.is_some()
    }

    /// The clock (0 without one).
    pub(crate) fn now(&self) -> u64 {
        self.enter().1.now()
    }

    /// Records a wait of the mutator for collector work that began at `t0` (a pause).
    pub(crate) fn waited(&self, t0: u64) {
        self.enter().1.pause_end(t0, PauseKind::CellWait);
    }

    /// Exclusive access at a safe point.
    pub(crate) fn get_mut(&mut self) -> &mut Inner {
        self.inner.get_mut()
    }

    /// The pool of grey chunks shared with concurrent mark workers (an empty one without them).
    /// The concurrent mark workers' crew (`None` without one).
    pub(crate) fn crew(&self) -> Option<&Crew> {
        self.crew.as_deref()
    }

    pub(crate) fn pool(&self) -> &Pool {
        match &self.crew {
            Some(c) => &c.sh.pool,
            None => &self.own_pool,
        }
    }

    /// The state, the shared pool and the workers' crew, at a safe point.
    pub(crate) fn parts(&mut self) -> (&mut Inner, &Pool, Option<&CrewRef>) {
        let pool = match &self.crew {
            Some(c) => &c.sh.pool,
            None => &self.own_pool,
        };
        (self.inner.get_mut(), pool, self.crew.as_ref())
    }

    pub(crate) fn sync_marking(&mut self) {
        let m = self.inner.get_mut().marking;
        self.marking.set(m);
    }
}

/// A fresh heap id (the `owner` of its spans): ids are never reused, so a span of a dropped heap can
/// never pass for one of a later heap's.
fn next_heap_id() -> u32 {
    use core::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(1);
    let mut id = NEXT.load(Ordering::Relaxed);
    loop {
        let next = id
            .checked_add(1)
            .expect("gc: 2^32 - 1 GC heaps made; heap ids are never reused");
        match NEXT.compare_exchange_weak(id, next, Ordering::Relaxed, Ordering::Relaxed) {
            Ok(_) => return id,
            Err(now) => id = now,
        }
    }
}

#[cold]
#[inline(never)]
fn reentered() -> ! {
    panic!("gc: the heap was entered from inside the collector (a Trace impl or finalizer used it)")
}

/// A garbage-collected heap on the span heap `Heap<P>`, with root type `R`. Single-threaded (neither
/// `Send` nor `Sync`): run one per CPU.
pub struct GcHeap<R: Rootable> {
    pub(crate) state: State,
    /// The root, stored with its brand erased; lent out re-branded inside `mutate`.
    pub(crate) root: R::Root<'static>,
}

impl<R: Rootable> GcHeap<R> {
    /// A heap allocating its spans from `heap`, with the root `init` builds.
    pub fn new<P: Platform, const FULL_CHECKS: bool>(
        heap: &'static Heap<P, FULL_CHECKS>,
        config: GcConfig,
        init: impl for<'gc> FnOnce(&'gc Mutation<'gc>) -> R::Root<'gc>,
    ) -> Self {
        let source: &'static (dyn SpanSource + Sync) = heap;
        let owner = next_heap_id();
        let inner = Inner {
            config,
            marker: Marker::new(heap.gc_span_map(), source, owner),
            spans: SpanSet::new(),
            pacer: Pacer::new(config.gogc, config.min_heap, config.memory_limit),
            weak: WeakList::new(),
            marking: false,
            sweepgen: 2,
            heap_live: 0,
            cycle_requested: false,
            tiny: (0, 0),
            slow_alloc: config.stress != Stress::None,
            debt: 0,
            assist_owed: 0,
            credit_used: 0,
            assist_due: false,
            stats: GcStats::default(),
            log: CycleLog::default(),
            conc_table: None,
            conc_spare: None,
            #[cfg(test)]
            barrier_off: false,
            #[cfg(test)]
            table_one_unit: false,
            #[cfg(test)]
            table_assists: 0,
            #[cfg(test)]
            table_assists_off: false,
        };
        let state = State {
            _single_threaded: SingleThreaded(PhantomData),
            inner: UnsafeCell::new(inner),
            busy: Cell::new(false),
            marking: Cell::new(false),
            concurrent: Cell::new(false),
            own_pool: Pool::new(),
            crew: (config.mode == Mode::Concurrent
                && config.concurrent_workers.is_some_and(|w| w.helpers > 0))
            .then(|| CrewRef::new(heap.gc_span_map(), source, owner))
            .flatten(),
        };
        let root = init(Mutation::new(&state));
        let root = core::mem::ManuallyDrop::new(root);
        // SAFETY: only the brand changes (lifetimes do not change layout); the original is not dropped.
        let root =
            unsafe { core::ptr::read(core::ptr::from_ref(&*root).cast::<R::Root<'static>>()) };
        GcHeap { state, root }
    }

    /// Runs `f` with the heap's [`Mutation`] and the root; then a safe point (a cycle may start or end).
    pub fn mutate<T>(
        &mut self,
        f: impl for<'gc> FnOnce(&'gc Mutation<'gc>, &'gc R::Root<'gc>) -> T,
    ) -> T {
        let out = f(Mutation::new(&self.state), rebrand::<R>(&self.root));
        self.safepoint();
        out
    }

    /// As [`GcHeap::mutate`], with the root mutable (no barrier is needed on it: the root is shaded
    /// whole when a mark starts).
    pub fn mutate_root<T>(
        &mut self,
        f: impl for<'gc> FnOnce(&'gc Mutation<'gc>, &'gc mut R::Root<'gc>) -> T,
    ) -> T {
        let out = {
            // SAFETY: as in `rebrand`: only the brand changes, and the borrow of `self` bounds it.
            let root = unsafe { &mut *core::ptr::from_mut(&mut self.root).cast::<R::Root<'_>>() };
            f(Mutation::new(&self.state), root)
        };
        self.safepoint();
        out
    }

    /// Where the collector is.
    pub fn phase(&mut self) -> Phase {
        let inner = self.state.get_mut();
        if inner.marking {
            Phase::Marking
        } else if inner.spans.unswept_pages > 0 {
            Phase::Sweeping
        } else {
            Phase::Idle
        }
    }

    /// Counters, like Go's MemStats for the collector.
    pub fn stats(&mut self) -> GcStats {
        let inner = self.state.get_mut();
        let mut s = inner.stats;
        s.heap_live = inner.heap_live;
        s.goal = inner.pacer.goal;
        s.trigger = inner.pacer.trigger;
        s.pages = inner.spans.pages;
        s.unswept_pages = inner.spans.unswept_pages;
        s
    }

    /// Objects allocated in the heap now (dead ones not yet swept included; tiny blocks count once).
    pub fn allocated_objects(&mut self) -> usize {
        let mut n = 0;
        self.state
            .get_mut()
            .spans
            .for_each(|s| n += s.alloc_count());
        n
    }

    /// Changes the growth percentage (`None` = off) from the next cycle on.
    pub fn set_gogc(&mut self, gogc: Option<u32>) {
        self.state.get_mut().pacer.gogc = gogc;
    }

    /// Changes the memory limit from the next cycle on.
    pub fn set_memory_limit(&mut self, limit: Option<usize>) {
        self.state.get_mut().pacer.limit = limit;
    }

    #[cfg(test)]
    pub(crate) fn set_barrier_off(&mut self, off: bool) {
        self.state.get_mut().barrier_off = off;
    }

    /// One unit of a concurrent mark's table work per safe point (conc.rs).
    #[cfg(test)]
    pub(crate) fn set_table_one_unit(&mut self, on: bool) {
        self.state.get_mut().table_one_unit = on;
    }

    /// Whether the mutator takes the cells' locks (a concurrent mark's workers may run).
    #[cfg(test)]
    pub(crate) fn cell_locks_on(&self) -> bool {
        self.state.is_concurrent()
    }

    /// Where a concurrent mark's side table is; `None` without one.
    #[cfg(test)]
    pub(crate) fn table_phase(&mut self) -> Option<TablePhase> {
        self.state
            .get_mut()
            .conc_table
            .as_ref()
            .map(ConcTable::phase)
    }

    /// Turns table assists off (on by default).
    #[cfg(test)]
    pub(crate) fn set_table_assists_off(&mut self, off: bool) {
        self.state.get_mut().table_assists_off = off;
    }

    /// Units of table work the mutator's assists did (conc.rs, "Table assists").
    #[cfg(test)]
    pub(crate) fn table_assists(&mut self) -> u64 {
        self.state.get_mut().table_assists
    }

    /// The side table's chunks (the current table's, else the spare's), and how many workers took.
    #[cfg(test)]
    pub(crate) fn table_chunks(&mut self) -> Option<(usize, usize)> {
        let inner = self.state.get_mut();
        inner
            .conc_table
            .as_ref()
            .or(inner.conc_spare.as_ref())
            .map(ConcTable::chunk_counts)
    }

    /// Asks for a cycle at the next safe point (as the pacer's trigger does).
    #[cfg(test)]
    pub(crate) fn request_cycle(&mut self) {
        self.state.get_mut().cycle_requested = true;
    }

    /// Caps the grey stack at `chunks` pages, to force overflows.
    #[cfg(test)]
    pub(crate) fn set_grey_limit(&mut self, chunks: usize) {
        self.state.get_mut().marker.grey.limit = chunks;
    }

    /// What happens at the end of every `mutate`.
    fn safepoint(&mut self) {
        let inner = self.state.get_mut();
        match inner.config.stress {
            Stress::CollectEverySafepoint => return self.collect(),
            Stress::StepEveryAlloc(_) if !inner.marking => inner.cycle_requested = true,
            _ => {}
        }
        if inner.marking {
            self.mark_safepoint();
        } else if inner.cycle_requested {
            match inner.config.mode {
                Mode::StopTheWorld => self.stw_cycle(false),
                Mode::Incremental | Mode::Concurrent if inner.spans.unswept_pages > 0 => {
                    // The last sweep first, in bounded slices (the cycle starts at a later safe
                    // point): finishing it in the cycle start would be a pause of O(heap).
                    let t0 = inner.now();
                    inner.sweep_slice();
                    inner.pause_end(t0, PauseKind::Sweep);
                }
                Mode::Incremental | Mode::Concurrent => self.start_cycle(),
            }
        }
    }

    /// A safe point during a mark: one bounded slice of a concurrent mark's table work (conc.rs), the
    /// hand-over to its workers, the switch to merging, or termination — at most one of them, each a
    /// pause of its own.
    fn mark_safepoint(&mut self) {
        let phase = self
            .state
            .get_mut()
            .conc_table
            .as_ref()
            .map(ConcTable::phase);
        match phase {
            None => {
                if self.mark_done() {
                    self.terminate();
                }
            }
            Some(TablePhase::Open) => {
                let stopped = self.mark_done();
                let (inner, _, crew) = self.state.parts();
                let Some(crew) = crew else { return };
                let t0 = inner.now();
                if stopped {
                    // No worker runs from now on: the table is merged at the next safe points.
                    inner.begin_merge(crew);
                    self.state.set_concurrent(false);
                    self.state.get_mut().pause_end(t0, PauseKind::Handover);
                } else if inner.kick(crew) {
                    inner.pause_end(t0, PauseKind::Handover);
                }
            }
            Some(_) => self.table_work(None),
        }
    }

    /// A slice of a concurrent mark's table work (`units` of it, else as many as fit a slice's time,
    /// conc.rs), a pause; opens the crew when the table is complete.
    fn table_work(&mut self, units: Option<usize>) {
        let (inner, _, crew) = self.state.parts();
        let t0 = inner.now();
        let opened = inner.table_slice(units, crew) == Some(TablePhase::Open);
        if opened {
            // The cells' locks go on before any worker may mark, and before any user code (a job's
            // `start`, the clock, the pause hook) can unwind past this.
            self.state.set_concurrent(true);
        }
        let (inner, _, crew) = self.state.parts();
        if let (true, Some(crew), Some(view)) = (opened, crew, inner.marker.conc) {
            // Workers may mark from now on.
            crew.open(view);
            inner.kick(crew);
        }
        inner.pause_end(t0, PauseKind::Table);
    }

    /// Whether the mark may terminate now: no grey entry left (the mutator's, the pool's) and no
    /// concurrent worker marking (they are stopped by this call then, conc.rs).
    fn mark_done(&mut self) -> bool {
        let (inner, pool, crew) = self.state.parts();
        inner.marker.grey.is_empty() && pool.looks_empty() && crew.is_none_or(|c| c.try_stop())
    }

    /// A full stop-the-world collection: finishes any cycle in progress, then marks from the root and
    /// sweeps every span (finalizing every dead object) before returning.
    pub fn collect(&mut self) {
        if self.state.get_mut().marking {
            self.finish_mark();
        }
        self.stw_cycle(true);
    }

    /// Does up to `budget` bytes of collector work (like a background mark worker): marking if a cycle
    /// runs (terminating it when the grey stack empties), else sweeping; starts a cycle when the
    /// trigger has been reached. Returns the phase afterwards.
    pub fn step(&mut self, budget: usize) -> Phase {
        let (inner, pool, _) = self.state.parts();
        let t0 = inner.now();
        if inner.marking {
            if let Some(TablePhase::Preparing | TablePhase::Building | TablePhase::Merging) =
                inner.conc_table.as_ref().map(ConcTable::phase)
            {
                // A step in a concurrent mark goes to its table first (one unit per 4 KiB of budget):
                // the sooner the table is built, the sooner workers mark.
                inner.log.steps += 1;
                self.table_work(Some((budget / 4096).max(1)));
                return self.phase();
            }
            inner.drain_with_pool(pool, budget.max(1));
            inner.log.steps += 1;
            inner.pause_end(t0, PauseKind::Step);
            self.mark_safepoint();
        } else if inner.spans.unswept_pages > 0 {
            inner.sweep_pages(budget.div_ceil(crate::addr::PAGE_SIZE).max(1));
            inner.pause_end(t0, PauseKind::Sweep);
        } else if inner.cycle_requested || inner.heap_live >= inner.pacer.trigger {
            self.start_cycle();
        }
        self.phase()
    }

    /// Starts an incremental cycle now if none is running (finishing the last cycle's sweep first).
    pub fn start_cycle(&mut self) {
        if self.state.get_mut().marking {
            return;
        }
        let t0 = self.state.get_mut().now();
        self.begin_cycle(true);
        self.state.get_mut().pause_end(t0, PauseKind::Start);
    }

    /// Marks until the grey stack is empty and terminates the cycle in progress.
    pub fn finish_mark(&mut self) {
        let inner = self.state.get_mut();
        if !inner.marking {
            return;
        }
        let t0 = inner.now();
        inner.log.pause_t0 = Some(t0);
        self.end_cycle();
        self.state.get_mut().pause_end(t0, PauseKind::Termination);
    }

    /// Sweep termination, mark setup and the root scan; `concurrent`: a mark that workers may run
    /// beside the mutator (its side table is built, conc.rs).
    fn begin_cycle(&mut self, concurrent: bool) {
        let inner = self.state.get_mut();
        let t0 = inner.now();
        inner.sweep_all();
        inner.begin_mark();
        if concurrent && inner.config.mode == Mode::Concurrent && self.state.has_crew() {
            self.state.get_mut().begin_concurrent();
        }
        // The barrier goes on with the mark, before any user code (the root's `Trace`) runs.
        self.state.sync_marking();
        let inner = self.state.get_mut();
        let root = rebrand::<R>(&self.root);
        // A panic here leaves `interrupted` set: termination traces the root again (mark.rs).
        inner.marker.scanning(|m| m.tracer().trace(root));
        inner.log.root_ns = inner.now().saturating_sub(t0);
    }

    fn stw_cycle(&mut self, eager_sweep: bool) {
        let t0 = self.state.get_mut().now();
        self.begin_cycle(false);
        let inner = self.state.get_mut();
        inner.log.stw = true;
        inner.log.pause_t0 = Some(t0);
        inner.drain_all();
        self.end_cycle();
        let inner = self.state.get_mut();
        if eager_sweep {
            inner.sweep_all();
        }
        inner.pause_end(t0, PauseKind::StopTheWorld);
    }

    /// Mark termination as a pause of its own.
    fn terminate(&mut self) {
        let inner = self.state.get_mut();
        let t0 = inner.now();
        inner.log.pause_t0 = Some(t0);
        self.end_cycle();
        self.state.get_mut().pause_end(t0, PauseKind::Termination);
    }

    /// Mark termination; the grey stack must be empty.
    ///
    /// Panic safety: until `end_mark` the heap stays in the marking phase, and everything before it can
    /// be redone (a panicking `Trace` impl or checkmark leaves the mark unfinished and the next safe
    /// point tries again); `end_mark` and the barrier's switch run no user code; the trace sink runs
    /// last, with the state consistent.
    fn end_cycle(&mut self) {
        // A concurrent mark's workers are stopped, its side table merged (and what is grey drained)
        // before anything else.
        let (inner, pool, crew) = self.state.parts();
        inner.finish_concurrent(pool, crew.map(|c| &**c));
        self.state.set_concurrent(false);
        let inner = self.state.get_mut();
        let root = rebrand::<R>(&self.root);
        if inner.marker.interrupted {
            // A scan was cut short by a panic: the root (this trace) and every marked object (the
            // rescan below) are scanned again; `interrupted` is cleared only once both are done.
            inner.marker.tracer().trace(root);
            inner.marker.drain(usize::MAX);
            inner.marker.overflow = true;
        }
        inner.rescan_overflow();
        inner.marker.interrupted = false;
        debug_assert!(inner.marking && inner.marker.grey.is_empty());
        if inner.config.verify {
            inner.checkmark(root);
        }
        let line = inner.end_mark();
        self.state.sync_marking();
        let inner = self.state.get_mut();
        if let (Some(sink), Some(line)) = (inner.config.trace_sink, line) {
            emit(sink, &line);
        }
    }
}

/// The stored root, lent with its brand bounded by the borrow: shared, as the marker and `mutate` use it.
/// Only `GcHeap`'s own root goes through here, and a `Mutation` of the same brand exists only inside
/// `mutate`, where the borrow of the heap bounds both.
fn rebrand<'a, R: Rootable>(root: &'a R::Root<'static>) -> &'a R::Root<'a> {
    // SAFETY: only the brand changes (lifetimes do not change layout), shortened to the borrow's.
    unsafe { &*core::ptr::from_ref(root).cast::<R::Root<'a>>() }
}

impl<R: Rootable> Drop for GcHeap<R> {
    fn drop(&mut self) {
        // Every object still allocated is finalized once and every span goes back to the page heap.
        let (inner, pool, crew) = self.state.parts();
        let source = inner.marker.source;
        if let Some(crew) = crew {
            // No chunk is taken after this (a late job finds none wanted); those handed over go
            // back now.
            crew.cancel_chunks();
            crew.stop_and_wait();
            crew.free_ready();
        }
        pool.release(source);
        inner.marker.conc = None;
        if let Some(table) = inner.conc_table.take() {
            table.free(source);
        }
        if let Some(spare) = inner.conc_spare.take() {
            spare.free(source);
        }
        inner.release_all();
    }
}
