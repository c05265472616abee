//! Concurrent marking (`Mode::Concurrent` with [`ConcurrentWorkers`]): mark workers on other CPUs drain
//! the grey set while the mutator runs on its own (Go's dedicated mark workers).
//!
//! Shape: a cycle starts at a safe point as in incremental mode (finish the sweep, barrier on, root
//! shaded). Its table phases ([`TablePhase`]) then run, each in bounded slices at safe points:
//! - *Preparing*, *Building*: a *side mark table* ([`ConcTable`]) is made: one entry per span the heap
//!   had when the mark began (base, object size and count, scan or not) and one mark bitmap per span, in
//!   chunks of pages of its own (kept from one mark to the next). Meanwhile the mark runs as an
//!   incremental one, marking in the spans (below, "Building the table").
//! - *Open*: the heap's *crew* ([`Crew`], below) is opened: at every safe point the mutator's grey
//!   chunks go into the crew's shared [`Pool`] and mark jobs ([`MarkJob`]) are handed to
//!   `ConcurrentWorkers::start` (at most `helpers` out at once); a job marks (par.rs's worker) in the
//!   table until the pool runs dry or the crew is stopped, then waits a little for the next
//!   hand-over outside the crew (`Crew::wait_for_work`) before it ends. The mutator never waits for a
//!   worker (but for a cell a worker is copying or tracing, cell.rs). At a safe point where the
//!   mutator's grey stack and the pool are empty and no worker is inside, the crew is stopped (for
//!   good).
//! - *Merging*: the side bitmaps are OR-ed into the spans' mark bits, a slice of slots per safe point,
//!   while the mutator's marks go to the spans again; then the table is put aside for the next mark and
//!   the mark terminates as an incremental one (drain, rescans, checkmark, `end_mark`).
//!
//! A forced end (`collect`, `finish_mark`) does whatever is left at once (`Inner::finish_concurrent`).
//!
//! Why a side table: while the mutator runs it allocates from its current spans (`next_free` on
//! `&mut Span`, black allocation setting mark bits), takes and files spans (list links): it holds
//! references to span structs and writes their alloc state. A worker that read a span struct or set
//! a mark bit in it meanwhile would race with those writes (or break the `&mut Span`'s uniqueness). So
//! while the crew is open workers touch no span struct at all: they find an address's span in the span
//! map (atomic entries, shared with other CPUs' heaps anyway), its entry in the table (written before the
//! crew opens, read-only until it is stopped) and set its bit in the table with an atomic `fetch_or`. The
//! mutator's own shades (barrier, root, `GcWeak::upgrade`, assists) use the same table path atomically.
//! Spans the heap takes during the mark are in no entry: all their objects are allocated during the
//! mark, hence black (mark bit set in the span by the allocation), and workers ignore addresses in them.
//! Objects allocated during the mark in older spans are in the table but white there: a worker may scan
//! one (its fields are initialised before the `Gc` to it was published) — extra work, never a missed
//! object. Nothing is swept while a mark runs, so no slot is freed or reused under a worker.
//!
//! Workers (the crew): what workers use lives in a [`Crew`] in pages of its own, not in the `GcHeap`
//! (which the program may move between `mutate` calls): the pool, the stop flag, the side table's
//! address, the workers' counters, and two counts — `inside` (workers between their look at `stop` and
//! their return) and `jobs` (jobs handed out, not yet dropped). The crew is reference counted by the
//! heap and by every `MarkJob`, and gives its pages back when the last goes: a job may outlive its mark
//! and its heap, and then does nothing. The protocol (every access `SeqCst`):
//! - A worker enters by incrementing `inside` and then reading `stop`; if set, it leaves at once. While
//!   inside it checks `stop` between small units of work (`par::SHARE_EVERY` scans) and leaves when it
//!   is set, putting its grey entries back in the pool.
//! - The heap *opens* the crew only while it is stopped with nobody inside (table address first, then
//!   `stop` cleared), and *stops* it by setting `stop` and then reading `inside`: if that is 0, no worker
//!   is inside, and any later one reads `stop` set (the two sides' write-then-read pairs are ordered in
//!   the single `SeqCst` order) and leaves without touching the pool or the table. Only then does the
//!   heap merge and release the table. A safe point stops the crew only when nobody is inside and the
//!   pool is empty (`Crew::try_stop`, non-blocking: otherwise the mark goes on and the next safe point
//!   tries again); a forced end (`finish_mark`, `collect`, the heap's drop) waits for the workers inside
//!   (`stop_and_wait`), a pause of its own.
//! - `State::concurrent` (the cells' locks, cell.rs) is set when the crew opens and cleared after it is
//!   stopped, both at safe points, so it is constant for a whole `mutate` call and set whenever a worker
//!   may be marking.
//!
//! What workers read besides the crew and the table, and why it is safe while the mutator runs:
//! - Object headers (vtables): written before any `Gc` to the object exists and never changed.
//! - Fields outside cells: immutable after allocation (`Gc<T>` gives only `&T`), initialised before
//!   the `Gc` is published; publication goes through a cell write or happened before the safe point
//!   that handed the object to the pool (the pool's lock orders it).
//! - Cells: under the locks of cell.rs (`GcCell` stripe locks, `GcRefCell` trace lock) or, for a
//!   one-word `GcCell`, through `Release` stores and `Acquire` loads; both also order the mutator's
//!   writes of a new object before a worker's reads of it.
//! - `Trace` impls: the contract (trace.rs) says they read only the value (and so only the above).
//!
//! Correctness of the mark (snapshot at the beginning): as for incremental marking (barrier.rs); the
//! table is just where this cycle's marks of old objects live until termination merges them. No object
//! reachable at the snapshot is missed: the root is shaded at start; each snapshot object is reached
//! through grey objects (drained by workers or the mutator's assists, or at termination), or a path to it
//! was cut by a cell write and the barrier shaded it; workers skip only a `GcRefCell` held by a
//! `GcRefMut`, whose old contents `borrow_mut` shaded before taking its lock.
//!
//! The crew is stopped only with the pool empty and no worker inside, so every object a worker marked
//! was scanned; what the mutator shades afterwards is drained at termination. A worker that unwinds sets
//! `lost` (its grey entries are gone) and termination then rescans the root and every marked object,
//! as in par.rs.
//! Correctness never depends on `start`: jobs it runs late find the crew stopped, jobs it drops or keeps
//! only leave work in the pool, which assists and termination drain; a job it runs at once on the
//! calling CPU marks at the safe point (a pause); a panic of `start` itself leaves the heap consistent.
//!
//! Building the table (and merging it) without a pause of O(spans): nothing walks all spans at once.
//! - Sizes: the span set counts its spans and their bitmap words as spans come and go, so the table's
//!   size is known at cycle start. The chunks it lacks (the last table's are kept) are taken from the
//!   source by the workers (`Crew::take_chunks`: a fresh page can cost tens of microseconds to map and
//!   fault in, which would be the mutator's pause): the heap asks for them through `chunks_wanted` and
//!   starts jobs; a job takes a few, touches their pages and pushes them on `ready`, a stack the heap
//!   empties at its safe points into the table's directory (`Inner::feed_table`). A worker without
//!   pages sets `chunk_failed` (the mark goes on without the table); after `CHUNK_PATIENCE` safe points
//!   without a chunk (a `start` that runs jobs late or never) the heap takes one per safe point itself
//!   until the workers' come again, as a `step` does.
//!   Chunks that come after the table is done or gone are listed if the directory has room, else given
//!   back; those still on `ready` when the crew goes are given back with it. Then the slots are zeroed
//!   a few per safe point.
//! - Which spans: at cycle start every filed span becomes *pending*: the span set swaps its swept lists
//!   into the unswept set's (empty while a mark runs: its sweep was finished first) — O(classes). A span
//!   is pending while `SpanSet::is_pending` (its `conc_epoch` is not this mark's); the builder takes
//!   pending spans off those lists, enters each (copying its mark bits), marks it entered and files it as
//!   usual; a pending span the mutator takes to allocate from stays pending and is filed back among them;
//!   spans taken from the source during the mark get this mark's epoch (never pending, never entered:
//!   their objects are all black). When no filed span is pending, the current spans still pending are
//!   entered (at most one per class) and the table opens. Nothing sweeps while `building` is set (the
//!   unswept lists hold swept spans then).
//! - Where marks live, per phase, and why every mark is kept: while preparing, in the spans only (no
//!   view may read unzeroed slots). While building, in the spans, and for an entered span also in the
//!   table (`Marker::side`): an entry starts as a copy of the span's bits, so an entered span's table
//!   bits are its span bits then, or a subset (black allocation sets span bits only). While open, the
//!   marks of entered spans are made in the table only, and an address in a span without an entry is
//!   black already. While merging (no worker runs), in the spans, an object whose table bit is set
//!   counting as marked (so it is neither marked nor scanned twice); the merge ORs every table bit into
//!   its span. So at termination every object marked anywhere is marked in its span, and an object is
//!   scanned again only when a worker finds in the table an object the mutator marked in its span after
//!   entering it — extra work, never a missed object (scanning is idempotent; counts come from bits
//!   newly set).
//!
//! Table assists: while the table is preparing or building, an allocation's assist works on the table
//! instead of marking (`Inner::table_assist`, one unit per 4 KiB allocated, at most 4), and the
//! marking the pacer asked for meanwhile is not carried over. Workers cannot mark before the table
//! opens, so marking done by the mutator then was most of its GC time (gc_bench's concurrent row:
//! assists of 215-262 ms per row, 80% of them before the table opened, for 10 ms of table work spread
//! over hundreds of safe points); finishing the table sooner hands that marking to the workers. An
//! assist does only what needs no safe point: it lists chunks the workers took (never takes one from
//! the source: a page mapping), zeroes slots and enters pending spans; starting jobs (`start` is user
//! code, called at safe points only), the last step (the current spans) and opening the crew are left
//! to the next safe point, and where only those are left the assist marks as usual. Pacing stays
//! bounded: the table has a known number of units, and once it is open the pacer's assists resume
//! with the work still to do. While merging, an assist merges slots too (units of `SLOT_SLICE`), and
//! then marks as usual (the workers are stopped: what is grey now is the mutator's to mark): the merge
//! is over sooner, and in 2-µs pieces rather than in 25-µs slices at safe points (a slice is what
//! the machine's stalls push over 0.1 ms most often).
//!
//! Costs the mutator pays (pauses): the table's slices (at most `SLICE_NS` of the clock each, beyond
//! one unit; a step spends its budget on them) and table assists, the hand-over
//! at safe points (moving chunk pointers, `start` calls), the cycle start and termination (O(span
//! classes) beyond incremental mode's) and assists, which in a concurrent mark scan at most 4 KiB each
//! (`Inner::assist_owed` keeps the rest owed, and while anything is owed every allocation pays a
//! piece: the pacing's rate is unchanged, the work comes in smaller pieces) and are paid first from the workers' scan work (published as they
//! go, `Shared::scan_work_so_far`: Go's background scan credit) (ARCHITECTURE.md, "Concurrent
//! marking").

use core::ptr::NonNull;
use core::sync::atomic::{AtomicBool, AtomicPtr, AtomicU64, AtomicUsize, Ordering};

use super::heap::Inner;
use super::par::{self, Shared};
use super::spans::{GcSpan, SpanSet, SpanSource};
use super::workbuf::Pool;
use crate::addr::{PageCount, VirtAddr};
use crate::sizeclass::{SizeClass, SpanClass};
use crate::span::Span;
use crate::spanmap::SpanMap;

/// How to run mark workers beside the mutator (`GcConfig::concurrent_workers`, `Mode::Concurrent`).
#[derive(Clone, Copy, Debug)]
pub struct ConcurrentWorkers {
    /// Mark jobs handed out and not yet finished, at most (Go's dedicated workers: a quarter of the
    /// CPUs).
    pub helpers: usize,
    /// Starts `job` (calls [`MarkJob::run`]) on another CPU or thread and returns without waiting for
    /// it. Correctness does not depend on it (module docs): it may run the job late, at once on the
    /// calling CPU, or drop it unrun. The heap calls it only at safe points. A job run later on the
    /// mutator's own CPU (from a pause hook, say) costs a pause: it may take up to 64 chunks of a
    /// concurrent mark's table from the page heap (8 inside `start`), and before it ends, a job whose
    /// pool ran dry looks for more work a bounded number of times (`MarkJob::run`), which only a job
    /// run inside `start` knows to skip.
    pub start: fn(job: MarkJob),
}

#[cfg(any(test, feature = "std"))]
impl ConcurrentWorkers {
    /// `helpers` jobs at most, each on a host thread spawned for it.
    pub fn threads(helpers: usize) -> Self {
        fn start(job: MarkJob) {
            std::thread::spawn(move || job.run());
        }
        Self { helpers, start }
    }
}

/// A mark job of a concurrent mark, for [`ConcurrentWorkers::start`]: [`MarkJob::run`] marks beside
/// the mutator until the pool of grey objects stays dry for a while (it looks a bounded number of
/// times for the mutator's next hand-over) or the heap stops its workers (then it returns at once).
/// It holds the heap's shared worker state alive (not the heap): running it late, after the mark or
/// after the heap is gone, does nothing; dropping it unrun is allowed.
pub struct MarkJob(CrewRef);

impl MarkJob {
    /// Marks until there is nothing to do or the heap stops its workers (module docs).
    pub fn run(self) {
        // Whether this job has been counted among the mark's workers (`Shared::workers`: once per
        // job, not per visit).
        let mut counted = false;
        loop {
            self.0.work(&mut counted);
            // The pool ran dry (or the crew stopped): more may come at the mutator's next safe point.
            if !self.0.wait_for_work() {
                return;
            }
        }
    }
}

impl Drop for MarkJob {
    fn drop(&mut self) {
        self.0.jobs.fetch_sub(1, Ordering::SeqCst);
    }
}

impl core::fmt::Debug for MarkJob {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str("MarkJob")
    }
}

/// What a heap's concurrent mark workers share (module docs, "Workers"), in pages of its own: it stays
/// put when the `GcHeap` moves, and lives while the heap or a [`MarkJob`] refers to it.
pub(crate) struct Crew {
    /// The pool of grey chunks (the heap's, also between marks), the stop flag and the workers'
    /// counters. `stop` is set whenever no concurrent mark is open.
    pub(crate) sh: Shared,
    /// The heap's reference and every `MarkJob`'s; the last one gives the pages back.
    refs: AtomicUsize,
    /// Jobs handed to `start` and not yet dropped.
    jobs: AtomicUsize,
    /// Workers inside `work` (between their check of `stop` and their return).
    inside: AtomicUsize,
    /// The open mark's side table (a `ConcView`): written only while `stop` is set.
    words: AtomicPtr<u64>,
    mask: AtomicUsize,
    /// Chunks a preparing table still wants from the workers (module docs, "Building the table"); a
    /// worker takes one from the source after decrementing this.
    chunks_wanted: AtomicUsize,
    /// Chunks workers have taken and not handed over yet: a stack through the chunks' first words
    /// (pushed by workers, emptied at once by the heap, so no node is popped while another is pushed).
    ready: AtomicPtr<ReadyChunk>,
    /// A worker found no pages for a chunk.
    chunk_failed: AtomicBool,
    /// The heap is inside `start_jobs`: a job that finds it set may be running inside `start` on the
    /// heap's own CPU, where no more work can come while it runs (`Crew::wait_for_work`).
    starting: AtomicBool,
    source: &'static (dyn SpanSource + Sync),
    /// The crew's own pages; moved out by the last reference.
    storage: GcSpan,
}

/// A table chunk a worker has taken, waiting in `Crew::ready`: written at the chunk's base.
struct ReadyChunk {
    /// The chunk's span (its only handle, `GcSpan::into_raw`).
    span: NonNull<Span>,
    next: *mut ReadyChunk,
}

/// Looks at a dry pool before a job ends (`Crew::wait_for_work`): each a spin-loop hint, and with
/// `std` a yield (about 0.1-0.3 ms in all on a host; some 10 µs of spinning without `std`): enough to
/// bridge the gap to a mutator's next safe point in gc_bench, short enough for a job that runs on the
/// mutator's CPU after all (`ConcurrentWorkers::start`).
const DRY_LOOKS: usize = 256;

/// Chunks one job takes at most before it goes on to mark when it may be running inside `start` on
/// the heap's CPU (`Crew::starting`: they would be a pause), and otherwise (`JOB_CHUNKS_AWAY`: one job
/// per safe point, 8 chunks each, made the table wait a dozen safe points or more while the mutator
/// marked alone; a job run later on the heap's CPU, from a pause hook say, is still bounded).
const JOB_CHUNKS: usize = 8;
const JOB_CHUNKS_AWAY: usize = 64;

/// Safe points a preparing table waits for the workers' chunks before the heap takes one itself (a
/// `start` that runs jobs late or never only slows the table down).
pub(crate) const CHUNK_PATIENCE: usize = 16;

/// Takes one from `count` unless it is 0; whether it did.
fn claim(count: &AtomicUsize) -> bool {
    let mut n = count.load(Ordering::SeqCst);
    while n > 0 {
        match count.compare_exchange_weak(n, n - 1, Ordering::SeqCst, Ordering::SeqCst) {
            Ok(_) => return true,
            Err(now) => n = now,
        }
    }
    false
}

/// A counted reference to a [`Crew`].
pub(crate) struct CrewRef(NonNull<Crew>);

// SAFETY: a crew is used only through `&Crew`, whose fields are atomics, the pool (behind its lock, with
// `Send` chunks) and data nobody writes; `storage` is touched only by the last reference (`drop`), when
// no other exists. So references may move to and be used on other CPUs.
unsafe impl Send for CrewRef {}
// SAFETY: as for `Send`.
unsafe impl Sync for CrewRef {}

impl core::ops::Deref for CrewRef {
    type Target = Crew;
    fn deref(&self) -> &Crew {
        // SAFETY: the crew is initialised (`new`) and alive while any reference counts (`drop`).
        unsafe { self.0.as_ref() }
    }
}

impl Drop for CrewRef {
    fn drop(&mut self) {
        if self.refs.fetch_sub(1, Ordering::Release) != 1 {
            return;
        }
        core::sync::atomic::fence(Ordering::Acquire);
        // SAFETY: the last reference: nobody else can reach the crew, so it is moved out of its pages
        // (read once, never used there again) and the pages go back.
        let crew = unsafe { self.0.as_ptr().read() };
        crew.sh.pool.release(crew.source);
        crew.free_ready();
        crew.source.free_span(crew.storage);
    }
}

/// Leaves `inside` when dropped (normally or by unwinding).
struct Leave<'a>(&'a AtomicUsize);

impl Drop for Leave<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

impl CrewRef {
    /// A crew for the heap `owner`, stopped; `None` when no pages can be had for it.
    pub(crate) fn new(
        spans: &'static SpanMap,
        source: &'static (dyn SpanSource + Sync),
        owner: u32,
    ) -> Option<CrewRef> {
        let pages = PageCount::covering(core::mem::size_of::<Crew>())?;
        let storage = source.alloc_span(SpanClass::new(SizeClass::LARGE, true), pages, 0)?;
        let at = NonNull::new(storage.base().as_mut_ptr::<Crew>())?;
        const { assert!(core::mem::align_of::<Crew>() <= crate::addr::PAGE_SIZE) };
        // SAFETY: the span's pages are mapped, page aligned (enough for a `Crew`), at least its size, and
        // ours alone (we hold the span's only handle, moved into the crew here).
        unsafe {
            at.as_ptr().write(Crew {
                sh: Shared::new(spans, source, owner, true),
                refs: AtomicUsize::new(1),
                jobs: AtomicUsize::new(0),
                inside: AtomicUsize::new(0),
                words: AtomicPtr::new(core::ptr::null_mut()),
                mask: AtomicUsize::new(0),
                chunks_wanted: AtomicUsize::new(0),
                ready: AtomicPtr::new(core::ptr::null_mut()),
                chunk_failed: AtomicBool::new(false),
                starting: AtomicBool::new(false),
                source,
                storage,
            });
        }
        Some(CrewRef(at))
    }

    /// Hands `helpers` jobs minus those still out to `start` (counted once, first: a `start` that runs
    /// its job at once gives it back before the next); returns how many.
    pub(crate) fn start_jobs(&self, workers: &ConcurrentWorkers) -> usize {
        let n = workers
            .helpers
            .saturating_sub(self.jobs.load(Ordering::SeqCst));
        // Reset however `start` (user code) returns.
        struct Started<'a>(&'a AtomicBool);
        impl Drop for Started<'_> {
            fn drop(&mut self) {
                self.0.store(false, Ordering::Relaxed);
            }
        }
        self.starting.store(true, Ordering::Relaxed);
        let _started = Started(&self.starting);
        for _ in 0..n {
            self.jobs.fetch_add(1, Ordering::SeqCst);
            self.refs.fetch_add(1, Ordering::Relaxed);
            (workers.start)(MarkJob(CrewRef(self.0)));
        }
        n
    }
}

impl Crew {
    /// After a visit that left the pool dry: whether work came back within `DRY_LOOKS` looks at the
    /// pool, while the crew stays open. The mutator hands its grey entries over at every safe point,
    /// so a job that ended at once would leave them to the mutator's assists until the next job's
    /// start (a thread to wake: tens of µs) — measured in gc_bench's concurrent row, the one worker
    /// then ran a fifth of each mark. The wait is outside `inside`, so the heap may stop the crew
    /// meanwhile; a job run at once inside `start` (`starting` set) does not wait, since nothing can
    /// come while it runs on the heap's CPU.
    fn wait_for_work(&self) -> bool {
        if self.starting.load(Ordering::Relaxed) {
            return false;
        }
        for _ in 0..DRY_LOOKS {
            if self.sh.stop.load(Ordering::Relaxed) {
                return false;
            }
            if !self.sh.pool.looks_empty() {
                return true;
            }
            core::hint::spin_loop();
            #[cfg(any(test, feature = "std"))]
            std::thread::yield_now();
        }
        false
    }

    /// A worker's visit (`MarkJob::run`): marks while the crew is open and the pool has work.
    fn work(&self, counted: &mut bool) {
        self.inside.fetch_add(1, Ordering::SeqCst);
        let _leave = Leave(&self.inside);
        // Wanted while the crew is stopped too (the table is made before it opens).
        self.take_chunks();
        if self.sh.stop.load(Ordering::SeqCst) {
            return;
        }
        let Some(words) = NonNull::new(self.words.load(Ordering::Relaxed)) else {
            return;
        };
        let view = ConcView {
            words,
            mask: self.mask.load(Ordering::Relaxed),
        };
        par::work(&self.sh, Some(view), counted);
    }

    /// Takes up to `JOB_CHUNKS_AWAY` of the chunks the table wants from the source (`JOB_CHUNKS` if the
    /// heap is inside `start`; a fresh page can cost tens of microseconds to map: here, not at the
    /// heap's safe points), touches their pages and hands them over through `ready`.
    fn take_chunks(&self) {
        for taken in 0..JOB_CHUNKS_AWAY {
            if taken >= JOB_CHUNKS && self.starting.load(Ordering::Relaxed) {
                return;
            }
            if !claim(&self.chunks_wanted) {
                return;
            }
            let class = SpanClass::new(SizeClass::LARGE, true);
            let Some(chunk) = self.source.alloc_span(class, PageCount(CHUNK_PAGES), 0) else {
                self.chunk_failed.store(true, Ordering::SeqCst);
                return;
            };
            let at = NonNull::new(chunk.base().as_mut_ptr::<ReadyChunk>()).expect("gc: span at 0");
            let span = chunk.into_raw();
            let mut head = self.ready.load(Ordering::Relaxed);
            // SAFETY: the chunk's pages are mapped, page aligned, `CHUNK_WORDS` words long and ours
            // alone until the push below publishes them (we hold the span's only handle, moved into
            // the node); zeroing touches every page here rather than on the heap's CPU.
            unsafe { at.as_ptr().cast::<u64>().write_bytes(0, CHUNK_WORDS) };
            loop {
                // SAFETY: as above: the node is not published until the exchange succeeds.
                unsafe { at.as_ptr().write(ReadyChunk { span, next: head }) };
                match self.ready.compare_exchange_weak(
                    head,
                    at.as_ptr(),
                    Ordering::Release,
                    Ordering::Relaxed,
                ) {
                    Ok(_) => break,
                    Err(h) => head = h,
                }
            }
        }
    }

    /// Asks for no more table chunks (workers inside may still hand over the ones they claimed).
    pub(crate) fn cancel_chunks(&self) {
        self.chunks_wanted.store(0, Ordering::SeqCst);
    }

    /// Takes every chunk in `ready` (the heap's CPU only): the first node of their list.
    fn take_ready(&self) -> Option<NonNull<ReadyChunk>> {
        NonNull::new(self.ready.swap(core::ptr::null_mut(), Ordering::Acquire))
    }

    /// Gives back the chunks in `ready` (no worker is inside, or none ever will be).
    pub(crate) fn free_ready(&self) {
        let mut node = self.take_ready();
        while let Some(at) = node {
            // SAFETY: a node a worker wrote at a chunk's base before pushing it (Release), taken off
            // the stack by our Acquire swap: read once, by us alone.
            let ReadyChunk { span, next } = unsafe { at.as_ptr().read() };
            node = NonNull::new(next);
            // SAFETY: the node held the chunk span's only handle (`into_raw` in `take_chunks`).
            self.source.free_span(unsafe { GcSpan::from_raw(span) });
        }
    }

    /// Whether workers may mark now.
    pub(crate) fn is_open(&self) -> bool {
        !self.sh.stop.load(Ordering::Relaxed)
    }

    /// Lets workers mark in `view`'s table (the crew is stopped: no worker is inside).
    pub(crate) fn open(&self, view: ConcView) {
        debug_assert!(self.sh.stop.load(Ordering::SeqCst));
        self.words.store(view.words.as_ptr(), Ordering::Relaxed);
        self.mask.store(view.mask, Ordering::Relaxed);
        self.sh.stop.store(false, Ordering::SeqCst);
    }

    /// Stops the workers if none is inside and the pool is empty; otherwise leaves them be (the next
    /// safe point tries again). True when stopped: then no worker touches the pool or the table until
    /// the next `open`.
    pub(crate) fn try_stop(&self) -> bool {
        if self.sh.stop.load(Ordering::SeqCst) {
            return self.inside.load(Ordering::SeqCst) == 0;
        }
        if self.inside.load(Ordering::SeqCst) != 0 {
            return false;
        }
        self.sh.stop.store(true, Ordering::SeqCst);
        // A worker that comes in after this load sees `stop` (both sides use SeqCst).
        if self.inside.load(Ordering::SeqCst) == 0 && self.sh.pool.looks_empty() {
            return true;
        }
        self.sh.stop.store(false, Ordering::SeqCst);
        false
    }

    /// Stops the workers and waits until none is inside (a pause the caller counts).
    pub(crate) fn stop_and_wait(&self) {
        self.sh.stop.store(true, Ordering::SeqCst);
        while self.inside.load(Ordering::SeqCst) != 0 {
            core::hint::spin_loop();
            #[cfg(any(test, feature = "std"))]
            std::thread::yield_now();
        }
    }
}

/// Words of one table entry: span struct address (the key, 0 = empty), base, `elem_size | nelems << 32 |
/// noscan << 48`, `first bitmap word | magic << 32` (`Span::magic`: a worker finds an object's index
/// with a multiplication, not a division, which was a tenth of its marking time).
const ENTRY: usize = 4;

/// The table's storage is in chunks of `CHUNK_PAGES` pages (`CHUNK_WORDS` words each), found through a
/// directory, so that it can be had a few chunks per safe point: a fresh page can cost microseconds
/// (mapping it).
const CHUNK_PAGES: usize = 2;
const CHUNK_WORDS: usize = CHUNK_PAGES * crate::addr::PAGE_SIZE / 8;

/// The units of the table's work (module docs, "Building the table"): chunks taken from the source,
/// chunks of slots zeroed, spans entered, slots merged. A safe point does units until `SLICE_NS` of the
/// clock have passed (the pause it adds), or `UNITS` of them without a clock. Not shorter: the build
/// advances only at safe points, and while it runs workers cannot mark, so a slower build lets the heap
/// grow, which makes the next build longer (with 8 µs slices a fast-allocating bench never converged).
const ZERO_SLICE: usize = 1;
const SPAN_SLICE: usize = 8;
const SLOT_SLICE: usize = 32;
pub(crate) const SLICE_NS: u64 = 25_000;
const UNITS: usize = 8;

/// Where a concurrent mark's side table is (module docs).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum TablePhase {
    /// Its chunks are being taken from the source and its slots zeroed (no view may read them);
    /// marks go to the spans only.
    Preparing,
    /// Snapshot spans are being entered; marks go to the spans (and to the table for entered ones).
    Building,
    /// Complete: workers may mark in it (while the crew is open); every mark of an entered span goes
    /// to the table.
    Open,
    /// Being merged into the spans' mark bits; marks go to the spans, and one set in the table counts.
    Merging,
}

/// The side mark table of a concurrent mark (module docs): chunks of pages of its own, listed in a
/// directory (one page or more) that holds each chunk's base address and, after those, its span's.
/// The chunks stay from one mark to the next (more are taken when the heap has grown).
pub(crate) struct ConcTable {
    dir: GcSpan,
    /// Chunks the directory has room for, and chunks it lists (each one held through its entry).
    dir_cap: usize,
    chunks: usize,
    view: ConcView,
    /// This mark's hash slots (a power of two), words, and the chunks they need.
    slots: usize,
    len: usize,
    need: usize,
    phase: TablePhase,
    /// Preparing: chunks of slots zeroed so far; Merging: the next slot to merge.
    cursor: usize,
    /// The next free bitmap word.
    next_word: usize,
    /// Spans entered, and the most that fit (the spans of the heap when the mark began).
    n: usize,
    cap: usize,
    /// Preparing: whether the workers were asked for the missing chunks, and the safe points since
    /// the last chunk came.
    asked: bool,
    waits: usize,
    /// Chunks listed from the workers' (over the table's life, for tests).
    adopted: usize,
}

/// What one `Inner::feed_table` did.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Fed {
    /// Chunks the workers took went into the table.
    Adopted,
    /// The heap took a chunk from the source itself.
    Took,
    /// Nothing came yet.
    Waiting,
}

/// Read access and atomic marking for workers and the mutator. Entries are written only by
/// `ConcTable::enter` while the table is building (no worker runs then, and only the heap's CPU uses a
/// view); bitmap words are accessed only atomically.
#[derive(Clone, Copy)]
pub(crate) struct ConcView {
    /// The directory: chunk base addresses (exposed), word `w` in chunk `w / CHUNK_WORDS`.
    words: NonNull<u64>,
    /// Hash slots - 1 (a power of two minus one).
    mask: usize,
}

// SAFETY: a view only reads entries nobody writes while views are in use on other CPUs and sets bitmap
// bits with atomics (type docs); the table outlives every view's use (released after the workers are
// stopped for good, conc.rs module docs).
unsafe impl Send for ConcView {}
// SAFETY: as for `Send`.
unsafe impl Sync for ConcView {}

/// One span's entry.
#[derive(Clone, Copy)]
pub(crate) struct Entry {
    base: u64,
    elem_size: u64,
    nelems: u64,
    pub(crate) noscan: bool,
    bits: usize,
    /// `Span::magic`.
    magic: u64,
}

impl Entry {
    /// The index of the object holding `addr`; `None` past the last object.
    #[inline]
    pub(crate) fn index(&self, addr: VirtAddr) -> Option<usize> {
        let off = addr.as_u64().wrapping_sub(self.base);
        // Within the span, `(off * magic) >> 32 == off / elem_size` (`Span::magic`; the product fits
        // in 64 bits as in `Span::object_index`).
        (off < self.nelems * self.elem_size).then(|| ((off * self.magic) >> 32) as usize)
    }

    pub(crate) fn object_addr(&self, idx: usize) -> VirtAddr {
        VirtAddr::new(self.base + idx as u64 * self.elem_size)
    }
}

#[inline]
fn slot_of(key: u64, mask: usize) -> usize {
    ((key >> 4).wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 32) as usize & mask
}

impl ConcTable {
    /// A table for a mark over `spans` spans of `words` bitmap words in all, made of `spare`'s chunks
    /// (the last table's) and more as needed (`Inner::feed_table`); `None` when no page can be had for a
    /// directory.
    pub(crate) fn new(
        source: &dyn SpanSource,
        spare: Option<ConcTable>,
        spans: usize,
        words: usize,
    ) -> Option<ConcTable> {
        let slots = (2 * spans).next_power_of_two().max(2);
        let len = slots * ENTRY + words;
        let need = len.div_ceil(CHUNK_WORDS);
        let mut t = match spare {
            Some(t) if t.dir_cap >= need => t,
            spare => {
                // A directory for twice the chunks needed (a growing heap seldom needs another).
                let dir_cap = 2 * need;
                let class = SpanClass::new(SizeClass::LARGE, true);
                let dir = PageCount::covering(dir_cap * 16)
                    .and_then(|pages| source.alloc_span(class, pages, 0));
                let Some(dir) = dir else {
                    // No pages: the old table's go back too.
                    if let Some(old) = spare {
                        old.free(source);
                    }
                    return None;
                };
                let pages = dir.npages();
                let at =
                    NonNull::new(dir.base().as_mut_ptr::<u64>()).expect("gc: span at address 0");
                let mut t = ConcTable {
                    dir,
                    dir_cap: pages.bytes() / 16,
                    chunks: 0,
                    view: ConcView { words: at, mask: 0 },
                    slots: 0,
                    len: 0,
                    need: 0,
                    phase: TablePhase::Preparing,
                    cursor: 0,
                    next_word: 0,
                    n: 0,
                    cap: 0,
                    asked: false,
                    waits: 0,
                    adopted: 0,
                };
                if let Some(old) = spare {
                    // The old chunks move to the new directory.
                    for c in 0..old.chunks {
                        let (base, span) = (old.dir_word(c), old.dir_word(old.dir_cap + c));
                        t.set_dir(c, base, span);
                    }
                    t.chunks = old.chunks;
                    t.adopted = old.adopted;
                    source.free_span(old.dir);
                }
                t
            }
        };
        t.view.mask = slots - 1;
        t.slots = slots;
        t.len = len;
        t.need = need;
        t.phase = TablePhase::Preparing;
        t.cursor = 0;
        t.next_word = slots * ENTRY;
        t.n = 0;
        t.cap = spans;
        t.asked = false;
        t.waits = 0;
        Some(t)
    }

    fn dir_word(&self, i: usize) -> u64 {
        debug_assert!(i < 2 * self.dir_cap);
        // SAFETY: word `i` of the directory's pages (`i < 2 * dir_cap`, which fit them), 8-aligned; the
        // directory is written only here while no view is used elsewhere, read atomically.
        unsafe { AtomicU64::from_ptr(self.view.words.as_ptr().add(i)) }.load(Ordering::Relaxed)
    }

    fn set_dir(&mut self, c: usize, base: u64, span: u64) {
        assert!(c < self.dir_cap);
        for (i, v) in [(c, base), (self.dir_cap + c, span)] {
            // SAFETY: as in `dir_word`; `&mut self` while no worker runs (the table is preparing).
            unsafe { AtomicU64::from_ptr(self.view.words.as_ptr().add(i)) }
                .store(v, Ordering::Relaxed);
        }
    }

    /// Takes one chunk from the source on the heap's CPU; `None` when it has no pages left.
    fn take_chunk(&mut self, source: &dyn SpanSource) -> Option<()> {
        let chunk = source.alloc_span(
            SpanClass::new(SizeClass::LARGE, true),
            PageCount(CHUNK_PAGES),
            0,
        )?;
        let base = chunk.base().as_mut_ptr::<u64>().expose_provenance() as u64;
        let span = chunk.into_raw().as_ptr().expose_provenance() as u64;
        self.set_dir(self.chunks, base, span);
        self.chunks += 1;
        Some(())
    }

    /// Lists the chunks workers have handed over (`Crew::ready`) while the directory has room, and
    /// gives the rest back (a stale worker's, from an abandoned table); returns how many it listed.
    fn adopt_ready(&mut self, crew: &Crew, source: &dyn SpanSource) -> usize {
        let mut node = crew.take_ready();
        let mut n = 0;
        while let Some(at) = node {
            // SAFETY: a node a worker wrote at a chunk's base before pushing it (Release), taken off
            // the stack by our Acquire swap: read once, by us alone.
            let ReadyChunk { span, next } = unsafe { at.as_ptr().read() };
            node = NonNull::new(next);
            if self.chunks < self.dir_cap {
                let base = at.as_ptr().expose_provenance() as u64;
                self.set_dir(self.chunks, base, span.as_ptr().expose_provenance() as u64);
                self.chunks += 1;
                self.adopted += 1;
                n += 1;
            } else {
                // SAFETY: the node held the chunk span's only handle (`Crew::take_chunks`).
                source.free_span(unsafe { GcSpan::from_raw(span) });
            }
        }
        n
    }

    /// With every chunk listed, zeroes the next chunks of slots; true when the table is ready (then
    /// `Building`).
    pub(crate) fn prepare_slice(&mut self) -> bool {
        debug_assert!(self.phase == TablePhase::Preparing && self.chunks >= self.need);
        let slot_chunks = (self.slots * ENTRY).div_ceil(CHUNK_WORDS);
        let end = (self.cursor + ZERO_SLICE).min(slot_chunks);
        for c in self.cursor..end {
            let base = core::ptr::with_exposed_provenance_mut::<u64>(self.dir_word(c) as usize);
            // SAFETY: chunk `c` is a span of `CHUNK_PAGES` mapped pages the table holds (its base was
            // exposed when it was listed); no view reads it while the table is preparing.
            unsafe { base.write_bytes(0, CHUNK_WORDS) };
        }
        self.cursor = end;
        if end == slot_chunks {
            self.phase = TablePhase::Building;
        }
        self.phase == TablePhase::Building
    }

    /// Gives every page back (the heap is going away, or pages are short).
    pub(crate) fn free(self, source: &dyn SpanSource) {
        for c in 0..self.chunks {
            let span = core::ptr::with_exposed_provenance_mut::<Span>(
                self.dir_word(self.dir_cap + c) as usize,
            );
            // SAFETY: the directory holds the only handle of each chunk's span (`into_raw` in
            // `take_chunk` or `Crew::take_chunks`, exposed when listed); it is made again once, here,
            // and given back.
            let chunk = unsafe { GcSpan::from_raw(NonNull::new(span).expect("a chunk span")) };
            source.free_span(chunk);
        }
        source.free_span(self.dir);
    }

    /// Chunks held, and how many of them workers took.
    #[cfg(test)]
    pub(crate) fn chunk_counts(&self) -> (usize, usize) {
        (self.chunks, self.adopted)
    }

    pub(crate) fn phase(&self) -> TablePhase {
        self.phase
    }

    pub(crate) fn view(&self) -> ConcView {
        self.view
    }

    /// Enters `span` (a snapshot span not entered yet) with a copy of its mark bits.
    pub(crate) fn enter(&mut self, span: &Span) {
        debug_assert_eq!(self.phase, TablePhase::Building);
        let nwords = span.nelems().div_ceil(64);
        assert!(
            self.n < self.cap && self.next_word + nwords <= self.len,
            "gc: more snapshot spans than the concurrent mark's table was made for"
        );
        let key = core::ptr::from_ref(span).expose_provenance() as u64;
        let mut i = slot_of(key, self.view.mask);
        while self.view.word(i * ENTRY) != 0 {
            i = (i + 1) & self.view.mask;
        }
        let meta = span.elem_size() as u64
            | (span.nelems() as u64) << 32
            | u64::from(span.class().noscan()) << 48;
        // A table of 2^32 words would be 32 GiB of mark bits.
        let first = u32::try_from(self.next_word).expect("gc: a side table under 2^32 words");
        let words = u64::from(first) | u64::from(span.magic()) << 32;
        for (k, v) in [key, span.base().as_u64(), meta, words]
            .into_iter()
            .enumerate()
        {
            self.view.atomic(i * ENTRY + k).store(v, Ordering::Relaxed);
        }
        for w in 0..nwords {
            self.view
                .atomic(self.next_word + w)
                .store(span.mark_word(w), Ordering::Relaxed);
        }
        self.next_word += nwords;
        self.n += 1;
    }

    /// The table is complete: workers may use it.
    pub(crate) fn open(&mut self) {
        debug_assert_eq!(self.phase, TablePhase::Building);
        self.phase = TablePhase::Open;
    }

    /// Starts merging (no worker may run from now on).
    pub(crate) fn begin_merge(&mut self) {
        self.phase = TablePhase::Merging;
        self.cursor = 0;
    }

    /// ORs the side bitmaps of the next `max_slots` slots into their spans' mark bits (`Merging`: no
    /// worker runs); returns the objects and bytes this newly marked (black allocation and the
    /// mutator's own marks counted the rest), and whether every slot is merged.
    pub(crate) fn merge_slice(
        &mut self,
        spans: &mut SpanSet,
        max_slots: usize,
    ) -> (usize, usize, bool) {
        debug_assert_eq!(self.phase, TablePhase::Merging);
        // Only the heap's `&mut SpanSet` may reach its span structs: it proves no other reference to
        // one is live here.
        let _exclusive = spans;
        let (mut objects, mut bytes) = (0, 0);
        let end = self.cursor.saturating_add(max_slots).min(self.slots);
        for slot in self.cursor..end {
            let key = self.view.word(slot * ENTRY);
            if key == 0 {
                continue;
            }
            let first = (self.view.word(slot * ENTRY + 3) & 0xffff_ffff) as usize;
            let words = ((self.view.word(slot * ENTRY + 2) >> 32) & 0xffff).div_ceil(64) as usize;
            // Most entered spans got no mark in the table (gc_bench: 60%, the garbage of the last
            // cycle): their span structs, cold by now, are not touched.
            if (first..first + words).all(|w| self.view.word(w) == 0) {
                continue;
            }
            let span = core::ptr::with_exposed_provenance_mut::<Span>(key as usize);
            // SAFETY: `key` is the exposed address of a span struct entered from this heap's span set
            // during this mark; no span leaves the set while a mark runs (nothing is swept or freed), so
            // it is alive and the collector's; `&mut SpanSet` (above) makes this the only reference to
            // it while it lives (no worker runs while merging).
            let s = unsafe { &mut *span };
            debug_assert_eq!(words, s.nelems().div_ceil(64));
            for w in 0..words {
                let bits = self.view.word(first + w);
                if bits != 0 {
                    let new = s.or_marks(w, bits).count_ones() as usize;
                    objects += new;
                    bytes += new * s.elem_size();
                }
            }
        }
        self.cursor = end;
        (objects, bytes, end == self.slots)
    }
}

impl ConcView {
    /// The entry of the span struct at `span`; `None` for a span not in the table.
    #[inline]
    pub(crate) fn find(&self, span: NonNull<Span>) -> Option<Entry> {
        let key = span.as_ptr().addr() as u64;
        let mut i = slot_of(key, self.mask);
        loop {
            let k = self.word(i * ENTRY);
            let (base, meta, bits) = if k == key {
                (
                    self.word(i * ENTRY + 1),
                    self.word(i * ENTRY + 2),
                    self.word(i * ENTRY + 3),
                )
            } else {
                (0, 0, 0)
            };
            if k == key {
                return Some(Entry {
                    base,
                    elem_size: meta & 0xffff_ffff,
                    nelems: (meta >> 32) & 0xffff,
                    noscan: meta >> 48 & 1 != 0,
                    bits: (bits & 0xffff_ffff) as usize,
                    magic: bits >> 32,
                });
            }
            if k == 0 {
                return None;
            }
            i = (i + 1) & self.mask;
        }
    }

    fn atomic(&self, word: usize) -> &AtomicU64 {
        // SAFETY: directory word `word / CHUNK_WORDS` exists (`word` is below the table's words, which
        // its chunks cover) and is not written while views are used.
        let base = unsafe { self.words.as_ptr().add(word / CHUNK_WORDS).read() };
        let at = core::ptr::with_exposed_provenance_mut::<u64>(base as usize)
            .wrapping_add(word % CHUNK_WORDS);
        // SAFETY: `at` is word `word % CHUNK_WORDS` of a chunk the table holds (its base was exposed when
        // listed), 8-aligned; table words are accessed only atomically while views are used (`find`
        // and `enter` included), and the chunks outlive every view's use.
        unsafe { AtomicU64::from_ptr(at) }
    }

    fn word(&self, word: usize) -> u64 {
        self.atomic(word).load(Ordering::Relaxed)
    }

    /// Sets the side mark bit of object `idx` of `e`; whether it was clear (exactly one caller gets true).
    #[inline]
    pub(crate) fn mark(&self, e: &Entry, idx: usize) -> bool {
        debug_assert!((idx as u64) < e.nelems);
        let bit = 1u64 << (idx % 64);
        self.atomic(e.bits + idx / 64)
            .fetch_or(bit, Ordering::Relaxed)
            & bit
            == 0
    }
}

impl Inner {
    /// Starts a concurrent mark's table (mark setup, before the root is shaded): O(span classes), the
    /// filed spans become pending (spans.rs) and the table is built in slices at the next safe points.
    /// Without pages for it the cycle marks as an incremental one.
    pub(crate) fn begin_concurrent(&mut self) {
        let spare = self.conc_spare.take();
        let (spans, words) = (self.spans.count, self.spans.words);
        if let Some(table) = ConcTable::new(self.marker.source, spare, spans, words) {
            self.spans.begin_pending();
            self.assist_owed = 0;
            self.assist_due = false;
            self.credit_used = 0;
            self.conc_table = Some(table);
            self.log.concurrent = true;
        }
    }

    /// One bounded slice of the table's work at a safe point (`Preparing`, `Building`, `Merging`):
    /// `units_wanted` units, else units until `SLICE_NS` have passed (`UNITS` without a clock);
    /// returns the phase after it (`None`: merged and kept as the spare, or abandoned). `crew`: the
    /// heap's workers, who take the table's chunks from the source.
    pub(crate) fn table_slice(
        &mut self,
        units_wanted: Option<usize>,
        crew: Option<&CrewRef>,
    ) -> Option<TablePhase> {
        let clock = self.config.clock.filter(|_| units_wanted.is_none());
        let t0 = clock.map_or(0, |c| c());
        let mut units = 0;
        loop {
            let (phase, end) = self.table_unit(crew, units_wanted.is_some())?;
            units += 1;
            let more = match clock {
                Some(c) => c().saturating_sub(t0) < SLICE_NS,
                None => units < units_wanted.unwrap_or(UNITS),
            };
            #[cfg(test)]
            let more = more && !self.table_one_unit;
            if phase == TablePhase::Open || !more || end {
                return Some(phase);
            }
        }
    }

    /// Preparing with chunks missing: lists the chunks the workers took (asking them for every
    /// missing one the first time, and starting jobs for them); the heap takes one from the source
    /// itself without workers, when `force`d (a step), or after `CHUNK_PATIENCE` safe points without a
    /// chunk from them. `None`: no pages for a chunk.
    fn feed_table(&mut self, crew: Option<&CrewRef>, force: bool) -> Option<Fed> {
        let source = self.marker.source;
        let workers = self.config.concurrent_workers.filter(|w| w.helpers > 0);
        let table = self.conc_table.as_mut()?;
        let (Some(crew), Some(workers)) = (crew, workers) else {
            return table.take_chunk(source).map(|()| Fed::Took);
        };
        if !table.asked {
            table.asked = true;
            crew.chunk_failed.store(false, Ordering::SeqCst);
            crew.chunks_wanted
                .store(table.need - table.chunks, Ordering::SeqCst);
        }
        if table.adopt_ready(crew, source) > 0 {
            table.waits = 0;
            return Some(Fed::Adopted);
        }
        if crew.chunk_failed.load(Ordering::SeqCst) {
            return None;
        }
        table.waits += 1;
        if force || table.waits > CHUNK_PATIENCE {
            // One fewer for the workers if they have not claimed them all (a claimed chunk that
            // comes late is listed if the directory has room, else given back). Patience is spent
            // once: from now on a chunk per safe point until one comes from the workers again.
            claim(&crew.chunks_wanted);
            return table.take_chunk(source).map(|()| Fed::Took);
        }
        if crew.chunks_wanted.load(Ordering::SeqCst) > 0 {
            self.stats.concurrent_jobs += crew.start_jobs(&workers) as u64;
        }
        Some(Fed::Waiting)
    }

    /// One unit of `table_slice`, and whether the slice should end after it (a chunk taken from the
    /// source, or none to be had yet).
    fn table_unit(&mut self, crew: Option<&CrewRef>, force: bool) -> Option<(TablePhase, bool)> {
        let phase = self.conc_table.as_ref()?.phase();
        let mut end = false;
        match phase {
            TablePhase::Preparing => {
                let table = self.conc_table.as_ref()?;
                let fed = if table.chunks < table.need {
                    self.feed_table(crew, force)
                } else {
                    Some(Fed::Adopted)
                };
                let Some(fed) = fed else {
                    // No pages: the mark goes on as an incremental one (every mark is in the spans).
                    if let Some(crew) = crew {
                        crew.cancel_chunks();
                    }
                    self.spans.end_pending(self.sweepgen);
                    if let Some(table) = self.conc_table.take() {
                        table.free(self.marker.source);
                    }
                    return None;
                };
                // A chunk taken here may cost a page mapping: one per safe point (a step's units take
                // as many as it asks).
                end = fed == Fed::Waiting || (fed == Fed::Took && !force);
                let table = self.conc_table.as_mut()?;
                if table.chunks >= table.need && table.prepare_slice() {
                    // Marks of entered spans go to the table too from now on.
                    self.marker.side = Some(table.view());
                }
            }
            TablePhase::Building => {
                self.enter_pending();
                let table = self.conc_table.as_mut()?;
                if self.spans.pending_count() == 0 {
                    // The current spans last (they may be filed back, pending, meanwhile): at most one
                    // per class.
                    let epoch = self.spans.epoch;
                    for span in self.spans.current.iter_mut().flatten() {
                        if span.conc_epoch != epoch {
                            table.enter(span);
                            span.conc_epoch = epoch;
                        }
                    }
                    self.spans.end_pending(self.sweepgen);
                    table.open();
                    self.marker.side = None;
                    self.marker.conc = Some(table.view());
                }
            }
            TablePhase::Open => {}
            TablePhase::Merging => {
                if self.merge_unit() {
                    return None;
                }
            }
        }
        self.conc_table.as_ref().map(|t| (t.phase(), end))
    }

    /// A unit of `Merging` (the table is merging): merges `SLOT_SLICE` slots; when every slot is
    /// merged, marks go to the spans alone and the table is kept as the spare. Whether it was the last.
    fn merge_unit(&mut self) -> bool {
        let Some(table) = self.conc_table.as_mut() else {
            return true;
        };
        let (objects, bytes, done) = table.merge_slice(&mut self.spans, SLOT_SLICE);
        self.marker.marked_objects += objects;
        self.marker.marked_bytes += bytes;
        if done {
            self.marker.side = None;
            self.conc_spare = self.conc_table.take();
        }
        done
    }

    /// A unit of `Building`: enters up to `SPAN_SLICE` pending spans (the table is building).
    fn enter_pending(&mut self) {
        let Some(table) = self.conc_table.as_mut() else {
            return;
        };
        for _ in 0..SPAN_SLICE {
            let Some(mut span) = self.spans.take_pending(self.sweepgen) else {
                break;
            };
            table.enter(&span);
            self.spans.registered(&mut span);
            self.spans.put_swept(span, self.sweepgen);
        }
    }

    /// An assist's table work (module docs, "Table assists"), during an allocation rather than at a
    /// safe point: up to `units` units of `Preparing` (listing the chunks the workers took, zeroing
    /// slots), `Building` (entering pending spans) or `Merging` (merging slots). It neither takes a
    /// chunk from the source (a page mapping), nor starts jobs (`start` is called at safe points
    /// only), nor opens the table (the crew and the cells' locks go on at a safe point): where only
    /// those are left it does nothing.
    ///
    /// Returns when the work began, or `None` if it did no unit. The clock is read only once a unit
    /// may be done (in `Preparing`, before asking the crew for chunks): an assist in a phase with
    /// nothing for it, or without a crew to ask, reads no clock.
    pub(crate) fn table_assist(&mut self, crew: Option<&Crew>, units: usize) -> Option<u64> {
        #[cfg(test)]
        if self.table_assists_off {
            return None;
        }
        let source = self.marker.source;
        let mut began = None;
        let mut did = false;
        for _ in 0..units {
            let mut last = false;
            let Some(table) = self.conc_table.as_ref() else {
                break;
            };
            let work = match table.phase() {
                // Adopting the chunks the workers took is the unit's first part.
                TablePhase::Preparing => table.chunks >= table.need || crew.is_some(),
                TablePhase::Building => self.spans.pending_count() > 0,
                TablePhase::Open => false,
                TablePhase::Merging => true,
            };
            if !work {
                break;
            }
            if began.is_none() {
                began = Some(self.now());
            }
            let Some(table) = self.conc_table.as_mut() else {
                break;
            };
            match table.phase() {
                TablePhase::Preparing => {
                    if table.chunks < table.need {
                        match crew {
                            Some(crew) if table.adopt_ready(crew, source) > 0 => table.waits = 0,
                            _ => break,
                        }
                    }
                    if table.chunks >= table.need && table.prepare_slice() {
                        // Marks of entered spans go to the table too from now on (`table_unit`).
                        self.marker.side = Some(table.view());
                    }
                }
                TablePhase::Building if self.spans.pending_count() > 0 => self.enter_pending(),
                TablePhase::Building | TablePhase::Open => break,
                // The last unit leaves no table: the mark terminates at a safe point.
                TablePhase::Merging => last = self.merge_unit(),
            }
            did = true;
            #[cfg(test)]
            {
                self.table_assists += 1;
                last |= self.table_one_unit;
            }
            if last {
                break;
            }
        }
        began.filter(|_| did)
    }

    /// Stops using the workers (the crew is stopped, none inside): folds in what they did.
    fn fold_workers(&mut self, crew: &Crew) {
        let done = crew.sh.take_result();
        crew.sh.set_wants_work(false);
        // Their credit is in `scan_work` from now on.
        self.credit_used = 0;
        self.marker.scan_work += done.scan_work;
        self.marker.marked_objects += done.marked_objects;
        self.marker.marked_bytes += done.marked_bytes;
        self.marker.overflow |= done.overflow;
        if done.lost {
            // A worker unwound with grey entries in hand: rescan (mark.rs).
            self.marker.interrupted = true;
        }
        let helpers = self.config.concurrent_workers.map_or(0, |w| w.helpers);
        self.log.mark_cpus = self.log.mark_cpus.max(done.cpus.min(helpers));
        self.stats.concurrent_scan_bytes += done.scan_work as u64;
    }

    /// The open table goes to `Merging` (the crew is stopped, none inside): marks go to the spans from
    /// now on, a mark in the table still counting.
    pub(crate) fn begin_merge(&mut self, crew: &Crew) {
        self.fold_workers(crew);
        if let Some(table) = self.conc_table.as_mut() {
            table.begin_merge();
            self.marker.conc = None;
            self.marker.side = Some(table.view());
        }
    }

    /// Hands the mutator's grey entries to the workers and starts jobs for them (if a concurrent mark
    /// is open and there is work); returns whether it did anything.
    pub(crate) fn kick(&mut self, crew: &CrewRef) -> bool {
        let Some(workers) = self.config.concurrent_workers else {
            return false;
        };
        if !crew.is_open() {
            return false;
        }
        let moved = !self.marker.grey.is_empty();
        crew.sh.pool.put_all(&mut self.marker.grey);
        if crew.sh.pool.looks_empty() {
            return moved;
        }
        let n = crew.start_jobs(&workers);
        self.stats.concurrent_jobs += n as u64;
        moved || n > 0
    }

    /// Assist or step work in a concurrent mark: the mutator's own grey entries, then chunks from the
    /// pool (when the mutator outruns the workers). Returns the work done.
    pub(crate) fn drain_with_pool(&mut self, pool: &Pool, budget: usize) -> usize {
        let mut done = self.marker.drain(budget);
        while done < budget && self.marker.grey.is_empty() && pool.take_into(&mut self.marker.grey)
        {
            done += self.marker.drain(budget - done);
        }
        done
    }

    /// Ends the concurrent part of a mark at once (termination, or a forced end: `collect`, an
    /// interrupted cycle): stops the workers (waiting for any still inside, a pause of the caller's),
    /// folds in what they did, finishes with the table whatever its phase and drains every grey entry
    /// left (pool and the mutator's) with the world stopped.
    pub(crate) fn finish_concurrent(&mut self, pool: &Pool, crew: Option<&Crew>) {
        if let Some(crew) = crew {
            // No more chunks: those taken meanwhile are listed (or given back) below.
            crew.cancel_chunks();
            crew.stop_and_wait();
            self.fold_workers(crew);
        }
        if let (Some(table), Some(crew)) = (self.conc_table.as_mut(), crew) {
            table.adopt_ready(crew, self.marker.source);
        }
        if let Some(mut table) = self.conc_table.take() {
            self.marker.conc = None;
            self.marker.side = None;
            match table.phase() {
                // Every mark is in the spans (the table holds copies).
                TablePhase::Preparing | TablePhase::Building => {
                    self.spans.end_pending(self.sweepgen)
                }
                TablePhase::Open | TablePhase::Merging => {
                    if table.phase() == TablePhase::Open {
                        table.begin_merge();
                    }
                    let (objects, bytes, _) = table.merge_slice(&mut self.spans, usize::MAX);
                    self.marker.marked_objects += objects;
                    self.marker.marked_bytes += bytes;
                }
            }
            self.conc_spare = Some(table);
        }
        self.drain_all();
        while pool.take_into(&mut self.marker.grey) {
            self.drain_all();
        }
    }
}
