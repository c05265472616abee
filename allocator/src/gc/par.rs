//! Parallel marking: the grey set drained by mark workers on several CPUs (or host threads) at once,
//! while the mutator is stopped (Go's gcDrain run by several mark workers, with its work.full list).
//!
//! How: the heap's own grey chunks go into a shared [`Pool`]; [`MarkWorkers::run`] runs `job(i)` on
//! other CPUs besides the heap's own; each job is a worker with a private `Marker` (its own grey stack,
//! counters) that sets mark bits with atomic read-modify-writes through [`SharedSpan`] views, hands full
//! chunks to the pool, and splits off half of its chunk when another worker waits and the pool is empty.
//!
//! Invariants:
//! - While workers run, the mutator is stopped (the heap's `&mut self` is held by the caller, which
//!   waits in `run`) and nothing writes the heap's spans or objects except mark bits, which are set
//!   only atomically: workers read span fields and objects that do not change, and `SharedSpan` makes
//!   no reference to a span that another CPU's mark-bit write could invalidate.
//! - An object is pushed by exactly one worker (the one whose atomic `fetch_or` set its mark bit) and
//!   scanned once per mark, as in the single-threaded marker.
//! - Termination: a worker holding grey entries is counted in `busy`; only busy workers put chunks in
//!   the pool; a worker leaves when it sees `busy == 0` and then the pool empty (nothing can appear after
//!   that: a worker becomes busy only by taking a chunk). The last worker to leave sees every chunk.
//! - Whatever `run` does (a job never run, run twice, run one after another, a worker that panics), the
//!   mark stays correct: after `run` the caller drains whatever the pool still holds on its own CPU,
//!   and a worker that unwinds gives back its chunks, leaves `busy`, and sets `lost`, which makes the
//!   mark rescan the root and every marked object before it may end (mark.rs, `interrupted`). A safe
//!   `run` cannot keep a job past its return (the job borrows the caller's frame).
//! - `Trace` impls run on the workers' CPUs, at the same time as other objects' (the `Trace` contract
//!   in trace.rs).
//! - The same workers run the jobs of a concurrent mark (conc.rs) beside the mutator: there they mark
//!   in the side table (`work`'s `conc`, no span struct touched), share the pool of the heap's crew
//!   (whose `Shared` lives in pages of its own), and leave when `stop` is set (putting their grey
//!   entries back in the pool) or the pool runs dry; the first invariant above is then conc.rs's to
//!   keep, and a job's counters are read only once the crew is stopped with no worker inside.
use core::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use super::conc::ConcView;
use super::heap::Inner;
use super::mark::Marker;
use super::object::Headed;
use super::spans::SpanSource;
use super::workbuf::Pool;
use crate::spanmap::SpanMap;

/// How to run mark workers on other CPUs or threads (`GcConfig::mark_workers`): stop-the-world marks
/// (`collect`, `finish_mark`, stop-the-world mode) spread over `1 + helpers` workers.
#[derive(Clone, Copy, Debug)]
pub struct MarkWorkers {
    /// Workers besides the heap's own CPU.
    pub helpers: usize,
    /// Runs `job(i)` for `i` in `1..=helpers` on other CPUs or threads, concurrently with `job(0)` on
    /// the calling CPU, and returns once all have returned. Correctness does not depend on it (module
    /// docs): a `run` that runs fewer jobs, or one after another, only marks slower.
    pub run: fn(helpers: usize, job: &(dyn Fn(usize) + Sync)),
}

#[cfg(any(test, feature = "std"))]
impl MarkWorkers {
    /// `helpers` host threads (scoped threads spawned for each mark), besides the caller's.
    pub fn threads(helpers: usize) -> Self {
        fn run(helpers: usize, job: &(dyn Fn(usize) + Sync)) {
            std::thread::scope(|s| {
                for i in 1..=helpers {
                    s.spawn(move || job(i));
                }
                job(0);
            });
        }
        Self { helpers, run }
    }
}

/// Scans between looks at the other workers (sharing work, handing over full chunks).
const SHARE_EVERY: usize = 32;

/// What the workers of one parallel drain (or of a concurrent mark, conc.rs) share.
pub(crate) struct Shared {
    pub(crate) pool: Pool,
    spans: &'static SpanMap,
    source: &'static (dyn SpanSource + Sync),
    owner: u32,
    /// Set when the workers of a concurrent mark must stop (they put their grey entries back in the
    /// pool); never set in a stop-the-world drain.
    pub(crate) stop: AtomicBool,
    /// Workers holding grey entries.
    busy: AtomicUsize,
    /// Workers waiting for work.
    idle: AtomicUsize,
    /// A concurrent mark's mutator owes assist work and found none in the pool: workers share (as
    /// for an idle worker) so that its assists can pay (alloc.rs).
    wants_work: AtomicBool,
    marked_bytes: AtomicUsize,
    marked_objects: AtomicUsize,
    scan_work: AtomicUsize,
    /// Workers (jobs) that scanned at least one object.
    workers: AtomicUsize,
    overflow: AtomicBool,
    /// A worker unwound with grey entries in hand (they are lost: the mark must rescan).
    lost: AtomicBool,
}

/// What the workers did, once they are all gone.
pub(crate) struct Done {
    pub(crate) marked_bytes: usize,
    pub(crate) marked_objects: usize,
    pub(crate) scan_work: usize,
    pub(crate) cpus: usize,
    pub(crate) overflow: bool,
    pub(crate) lost: bool,
}

impl Shared {
    /// `stopped`: the value of `stop` to begin with.
    pub(crate) fn new(
        spans: &'static SpanMap,
        source: &'static (dyn SpanSource + Sync),
        owner: u32,
        stopped: bool,
    ) -> Self {
        Shared {
            pool: Pool::new(),
            spans,
            source,
            owner,
            stop: AtomicBool::new(stopped),
            busy: AtomicUsize::new(0),
            idle: AtomicUsize::new(0),
            wants_work: AtomicBool::new(false),
            marked_bytes: AtomicUsize::new(0),
            marked_objects: AtomicUsize::new(0),
            scan_work: AtomicUsize::new(0),
            workers: AtomicUsize::new(0),
            overflow: AtomicBool::new(false),
            lost: AtomicBool::new(false),
        }
    }

    fn stopped(&self) -> bool {
        self.stop.load(Ordering::Relaxed)
    }

    /// Scan work the workers have done since the last `take_result`, as far as they have published it
    /// (every `SHARE_EVERY` scans): a concurrent mark's assists count it as done (alloc.rs, Go's
    /// background scan credit).
    pub(crate) fn scan_work_so_far(&self) -> usize {
        self.scan_work.load(Ordering::Relaxed)
    }

    /// Whether a worker holds grey entries (that the pool does not).
    pub(crate) fn workers_hold_work(&self) -> bool {
        self.busy.load(Ordering::SeqCst) > 0
    }

    /// The mutator wants (`true`) or got (`false`) work to assist with.
    pub(crate) fn set_wants_work(&self, wants: bool) {
        // Stored only when it changes: every concurrent assist says so, and a store would take the
        // line the workers poll away from them each time. The load-then-store is no race because the
        // heap's mutator is the flag's only writer (workers only read it); a worker that reset it would
        // need a swap here.
        if self.wants_work.load(Ordering::Relaxed) != wants {
            self.wants_work.store(wants, Ordering::Relaxed);
        }
    }

    /// What the workers did since the last call (their counters are reset): call it with no worker
    /// running.
    pub(crate) fn take_result(&self) -> Done {
        Done {
            marked_bytes: self.marked_bytes.swap(0, Ordering::Relaxed),
            marked_objects: self.marked_objects.swap(0, Ordering::Relaxed),
            scan_work: self.scan_work.swap(0, Ordering::Relaxed),
            cpus: self.workers.swap(0, Ordering::Relaxed),
            overflow: self.overflow.swap(false, Ordering::Relaxed),
            lost: self.lost.swap(false, Ordering::SeqCst),
        }
    }
}

/// Gives a drain's own pool back when it goes (normally empty; after a panic in `run`, the chunks go
/// back and the caller's marker rescans).
struct ReleasePool<'a>(&'a Pool, &'a dyn SpanSource);

impl Drop for ReleasePool<'_> {
    fn drop(&mut self) {
        self.0.release(self.1);
    }
}

/// One mark worker's life: drains the pool until the mark is over (or, in a concurrent mark, `stop` is
/// set or the pool runs dry). `conc`: the side table a concurrent mark's workers mark in (conc.rs).
///
/// `counted`: whether the caller (a concurrent mark's job, which may visit several times) was
/// counted in `Shared::workers` already; set when this visit counts it (it scanned something).
pub(crate) fn work(sh: &Shared, conc: Option<ConcView>, counted: &mut bool) {
    let mut m = Marker::new_shared(sh.spans, sh.source, sh.owner);
    m.conc = conc;
    let mut w = Worker {
        sh,
        m,
        busy: false,
        idle: false,
        done: false,
    };
    if w.run() && !*counted {
        // Inside the visit (before the heap can stop the crew and take the result).
        sh.workers.fetch_add(1, Ordering::Relaxed);
        *counted = true;
    }
}

/// A worker's state; gives its chunks back and leaves the counts if it unwinds.
struct Worker<'a> {
    sh: &'a Shared,
    m: Marker,
    busy: bool,
    idle: bool,
    done: bool,
}

impl Worker<'_> {
    fn set_busy(&mut self, busy: bool) {
        if busy != self.busy {
            self.busy = busy;
            if busy {
                self.sh.busy.fetch_add(1, Ordering::SeqCst);
            } else {
                self.sh.busy.fetch_sub(1, Ordering::SeqCst);
            }
        }
    }

    fn set_idle(&mut self, idle: bool) {
        if idle != self.idle {
            self.idle = idle;
            if idle {
                self.sh.idle.fetch_add(1, Ordering::Relaxed);
            } else {
                self.sh.idle.fetch_sub(1, Ordering::Relaxed);
            }
        }
    }

    /// Takes a chunk from the pool (becoming busy); false when the mark is over (module invariants).
    fn acquire(&mut self) -> bool {
        debug_assert!(!self.busy && self.m.grey.is_empty());
        loop {
            if self.sh.stopped() {
                self.set_idle(false);
                return false;
            }
            if !self.sh.pool.looks_empty() {
                self.set_busy(true);
                if self.sh.pool.take_into(&mut self.m.grey) {
                    self.set_idle(false);
                    return true;
                }
                self.set_busy(false);
            }
            if self.sh.busy.load(Ordering::SeqCst) == 0 && self.sh.pool.is_empty() {
                self.set_idle(false);
                return false;
            }
            self.set_idle(true);
            core::hint::spin_loop();
            #[cfg(any(test, feature = "std"))]
            std::thread::yield_now();
        }
    }

    /// Drains until the mark is over (`acquire`); whether it scanned anything.
    fn run(&mut self) -> bool {
        let mut scanned = 0usize;
        // Scan work added to `sh.scan_work` so far (published as it goes, for the mutator's pacing).
        let mut published = 0usize;
        while self.acquire() {
            let mut n = 0;
            while let Some(obj) = self.m.grey.pop(self.sh.source) {
                // SAFETY: only allocated objects of scan spans are pushed (`shade`), and every allocated
                // slot is initialized while the mutator is stopped (alloc.rs) — or, in a concurrent
                // mark, was initialized before the `Gc` that led here was published (conc.rs).
                self.m.scan_work += self.m.scan(unsafe { Headed::new(obj) });
                n += 1;
                if n % SHARE_EVERY == 0 {
                    self.sh
                        .scan_work
                        .fetch_add(self.m.scan_work - published, Ordering::Relaxed);
                    published = self.m.scan_work;
                    if self.sh.stopped() {
                        // The workers must stop: the rest waits in the pool (for the mutator's
                        // termination, or the next jobs).
                        self.sh.pool.put_all(&mut self.m.grey);
                        break;
                    }
                    self.sh.pool.put_older(&mut self.m.grey);
                    let wanted = self.sh.idle.load(Ordering::Relaxed) > 0
                        || self.sh.wants_work.load(Ordering::Relaxed);
                    if wanted && self.sh.pool.looks_empty() {
                        self.sh.pool.share(&mut self.m.grey, self.sh.source);
                    }
                }
            }
            scanned += n;
            self.set_busy(false);
        }
        let sh = self.sh;
        sh.marked_bytes
            .fetch_add(self.m.marked_bytes, Ordering::Relaxed);
        sh.marked_objects
            .fetch_add(self.m.marked_objects, Ordering::Relaxed);
        sh.scan_work
            .fetch_add(self.m.scan_work - published, Ordering::Relaxed);
        if self.m.overflow {
            sh.overflow.store(true, Ordering::Relaxed);
        }
        self.done = true;
        scanned > 0
    }
}

impl Drop for Worker<'_> {
    fn drop(&mut self) {
        if !self.done {
            // Unwinding from a `Trace` impl: this worker's grey entries are lost.
            self.sh.lost.store(true, Ordering::SeqCst);
        }
        self.m.grey.release(self.sh.source);
        self.set_busy(false);
        self.set_idle(false);
    }
}

impl Inner {
    /// Drains the grey stack to empty, with the configured mark workers if there are any (not during a
    /// checkmark, which stays on the heap's CPU). Records how many CPUs marked.
    pub(crate) fn drain_all(&mut self) {
        let workers = match self.config.mark_workers {
            Some(w) if w.helpers > 0 && self.marker.check.is_none() => w,
            _ => {
                if self.marker.drain(usize::MAX) > 0 {
                    self.log.mark_cpus = self.log.mark_cpus.max(1);
                }
                return;
            }
        };
        let m = &mut self.marker;
        let sh = Shared::new(m.spans, m.source, m.owner, false);
        let _release = ReleasePool(&sh.pool, m.source);
        sh.pool.put_all(&mut m.grey);
        if sh.pool.is_empty() {
            return;
        }
        let job = |_: usize| work(&sh, None, &mut false);
        // `run` may panic (a worker's `Trace` impl): `interrupted` then stays set and the mark rescans.
        m.scanning(|_| (workers.run)(workers.helpers, &job));
        let done = sh.take_result();
        if done.lost {
            m.interrupted = true;
        }
        m.overflow |= done.overflow;
        m.marked_bytes += done.marked_bytes;
        m.marked_objects += done.marked_objects;
        m.scan_work += done.scan_work;
        let cpus = done.cpus;
        // Whatever the workers left (a `run` that did not run them all) is drained here.
        while sh.pool.take_into(&mut m.grey) {
            m.drain(usize::MAX);
        }
        self.log.mark_cpus = self.log.mark_cpus.max(cpus.max(1));
    }
}
