//! Concurrent marking (`Mode::Concurrent` with [`ConcurrentWorkers`]): mark workers on other CPUs drain
//! the grey set while the mutator runs on its own (Go's dedicated mark workers).
//!
//! Shape: a cycle starts at a safe point as in incremental mode (finish the sweep, barrier on, root
//! shaded), and also builds a *side mark table* ([`ConcTable`]): one entry per span the heap has at
//! that moment (base, object size and count, scan or not) and one mark bitmap per span, in pages of its
//! own. Then the heap's *crew* ([`Crew`], below) is opened: from then on, at every safe point, the
//! mutator's grey chunks go into the crew's shared [`Pool`] and mark jobs ([`MarkJob`]) are handed to
//! `ConcurrentWorkers::start` (at most `helpers` out at once); a job marks (par.rs's worker) until the
//! pool runs dry or the crew is stopped. The mutator never waits for a worker while the mark runs (but for
//! a cell a worker is copying or tracing, cell.rs). At a
//! safe point where the mutator's grey stack and the pool are empty and no worker is inside the crew, the
//! crew is stopped and the mark terminates: the side bitmaps are OR-ed into the spans' mark bits, the rest
//! is an ordinary stop-the-world termination (drain, rescans, checkmark, `end_mark`).
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
//! - Cells: under the locks of cell.rs (`GcCell` stripe locks, `GcRefCell` trace lock), which also
//!   order the mutator's writes of a new object before a worker's reads of it.
//! - `Trace` impls: the contract (trace.rs) says they read only the value (and so only the above).
//!
//! Correctness of the mark (snapshot at the beginning): as for incremental marking (barrier.rs); the
//! table is just where this cycle's marks of old objects live until termination merges them. No object
//! reachable at the snapshot is missed: the root is shaded at start; each snapshot object is reached
//! through grey objects (drained by workers or the mutator's assists, or at termination), or a path to it
//! was cut by a cell write and the barrier shaded it; workers skip only a `GcRefCell` held by a
//! `GcRefMut`, whose old contents `borrow_mut` shaded before taking its lock.
//!
//! Termination hands every grey entry (pool, the mutator's stack) to the stop-the-world drain after
//! the merge, so nothing shaded while workers ran is lost; a worker that unwinds sets `lost` (its grey
//! entries are gone) and termination then rescans the root and every marked object, as in par.rs.
//! Correctness never depends on `start`: jobs it runs late find the crew stopped, jobs it drops or keeps
//! only leave work in the pool, which assists and termination drain; a job it runs at once on the
//! calling CPU marks at the safe point (a pause); a panic of `start` itself leaves the heap consistent.
//!
//! Costs the mutator pays (pauses): the hand-over at safe points (moving chunk pointers, `start` calls),
//! assists, and building the table at cycle start and merging it at termination, which are O(spans)
//! (~1-2 ms and ~0.9 ms for ~12K spans, 64 MiB live) — what stands between this mode and a 0.1 ms max
//! pause (ARCHITECTURE.md, "Concurrent marking").

use core::ptr::NonNull;
use core::sync::atomic::{AtomicPtr, AtomicU64, AtomicUsize, Ordering};

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
    /// calling CPU, or drop it unrun. The heap calls it only at safe points.
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
/// the mutator until the pool of grey objects runs dry or the heap stops its workers (then it returns at
/// once). It holds the heap's shared worker state alive (not the heap): running it late, after the mark
/// or after the heap is gone, does nothing; dropping it unrun is allowed.
pub struct MarkJob(CrewRef);

impl MarkJob {
    /// Marks until there is nothing to do or the heap stops its workers (module docs).
    pub fn run(self) {
        self.0.work();
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
    source: &'static (dyn SpanSource + Sync),
    /// The crew's own pages; moved out by the last reference.
    storage: GcSpan,
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
        for _ in 0..n {
            self.jobs.fetch_add(1, Ordering::SeqCst);
            self.refs.fetch_add(1, Ordering::Relaxed);
            (workers.start)(MarkJob(CrewRef(self.0)));
        }
        n
    }
}

impl Crew {
    /// A worker's visit (`MarkJob::run`): marks while the crew is open and the pool has work.
    fn work(&self) {
        self.inside.fetch_add(1, Ordering::SeqCst);
        let _leave = Leave(&self.inside);
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
        par::work(&self.sh, Some(view));
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
/// noscan << 48`, first bitmap word.
const ENTRY: usize = 4;

/// The side mark table of a concurrent mark (module docs), in pages of its own.
pub(crate) struct ConcTable {
    storage: GcSpan,
    view: ConcView,
    /// Spans and bitmap words, for the merge.
    n: usize,
}

/// Read access and atomic marking for workers and the mutator: entries are written only by
/// `ConcTable::build` before any view is used, bitmap words are accessed only atomically until the
/// table is merged with every worker gone.
#[derive(Clone, Copy)]
pub(crate) struct ConcView {
    words: NonNull<u64>,
    /// Hash slots - 1 (a power of two minus one).
    mask: usize,
}

// SAFETY: a view only reads entries nobody writes while views are in use and sets bitmap bits with
// atomics (type docs); the table outlives every view's use (released at termination, after workers).
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
}

impl Entry {
    /// The index of the object holding `addr`; `None` past the last object.
    #[inline]
    pub(crate) fn index(&self, addr: VirtAddr) -> Option<usize> {
        let off = addr.as_u64().wrapping_sub(self.base);
        (off < self.nelems * self.elem_size).then(|| (off / self.elem_size) as usize)
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
    /// A table over every span of `spans`; `None` when no pages can be had for it.
    pub(crate) fn build(source: &dyn SpanSource, spans: &SpanSet) -> Option<ConcTable> {
        let (mut n, mut words) = (0usize, 0usize);
        spans.for_each(|s| {
            n += 1;
            words += s.nelems().div_ceil(64);
        });
        let slots = (2 * n).next_power_of_two().max(2);
        let len = slots * ENTRY + words;
        let pages = PageCount::covering(len * 8)?;
        let storage = source.alloc_span(SpanClass::new(SizeClass::LARGE, true), pages, 0)?;
        let base = NonNull::new(storage.base().as_mut_ptr::<u64>())?;
        // SAFETY: the storage span's pages are mapped, page aligned, at least `len * 8` bytes, and ours
        // alone (we hold its only handle); no view exists yet, so this is the only reference.
        let table = unsafe { core::slice::from_raw_parts_mut(base.as_ptr(), len) };
        table.fill(0);
        let (entries, _) = table.split_at_mut(slots * ENTRY);
        let mask = slots - 1;
        let mut word = slots * ENTRY;
        spans.for_each(|s| {
            let key = core::ptr::from_ref(s).addr() as u64;
            let mut i = slot_of(key, mask);
            while entries[i * ENTRY] != 0 {
                i = (i + 1) & mask;
            }
            let meta = s.elem_size() as u64
                | (s.nelems() as u64) << 32
                | u64::from(s.class().noscan()) << 48;
            entries[i * ENTRY..(i + 1) * ENTRY].copy_from_slice(&[
                key,
                s.base().as_u64(),
                meta,
                word as u64,
            ]);
            word += s.nelems().div_ceil(64);
        });
        Some(ConcTable {
            storage,
            view: ConcView { words: base, mask },
            n,
        })
    }

    pub(crate) fn view(&self) -> ConcView {
        self.view
    }

    /// ORs the side bitmaps into the spans' mark bits (no worker may run); returns the objects and bytes
    /// this newly marked (black allocation counted the rest).
    pub(crate) fn merge(&self, spans: &mut SpanSet) -> (usize, usize) {
        let (mut objects, mut bytes, mut seen) = (0, 0, 0);
        spans.for_each_mut(|s| {
            let Some(e) = self.view.find(NonNull::from(&*s)) else {
                // A span taken during the mark: allocated black throughout.
                return;
            };
            seen += 1;
            for w in 0..s.nelems().div_ceil(64) {
                let bits = self.view.word(e.bits + w);
                if bits != 0 {
                    let new = s.or_marks(w, bits).count_ones() as usize;
                    objects += new;
                    bytes += new * s.elem_size();
                }
            }
        });
        debug_assert_eq!(seen, self.n, "gc: a span of the mark table left the heap");
        (objects, bytes)
    }

    pub(crate) fn release(self, source: &dyn SpanSource) {
        source.free_span(self.storage);
    }
}

impl ConcView {
    /// The entry of the span struct at `span`; `None` for a span not in the table.
    #[inline]
    pub(crate) fn find(&self, span: NonNull<Span>) -> Option<Entry> {
        let key = span.as_ptr().addr() as u64;
        let mut i = slot_of(key, self.mask);
        loop {
            // SAFETY: slot `i` is within the entries (`i <= mask`), which nobody writes while views are
            // used (type docs).
            let e = unsafe { self.words.as_ptr().add(i * ENTRY) };
            // SAFETY: as above, for the entry's words.
            let (k, base, meta, bits) =
                unsafe { (e.read(), e.add(1).read(), e.add(2).read(), e.add(3).read()) };
            if k == key {
                return Some(Entry {
                    base,
                    elem_size: meta & 0xffff_ffff,
                    nelems: (meta >> 32) & 0xffff,
                    noscan: meta >> 48 & 1 != 0,
                    bits: bits as usize,
                });
            }
            if k == 0 {
                return None;
            }
            i = (i + 1) & self.mask;
        }
    }

    fn atomic(&self, word: usize) -> &AtomicU64 {
        // SAFETY: `word` is a bitmap word of the table (an entry's `bits` plus an index below its span's
        // bitmap length), 8-aligned in the table's pages, accessed only atomically while views are used.
        unsafe { AtomicU64::from_ptr(self.words.as_ptr().add(word)) }
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
    /// Starts a concurrent mark's table (mark setup, before the root is shaded); without pages for
    /// it the cycle marks as an incremental one.
    pub(crate) fn begin_concurrent(&mut self) {
        if let Some(table) = ConcTable::build(self.marker.source, &self.spans) {
            self.marker.conc = Some(table.view());
            self.conc_table = Some(table);
            self.log.concurrent = true;
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

    /// Ends the concurrent part of a mark: stops the workers (waiting for any still inside, a pause
    /// of the caller's), folds in what they did, merges the side table into the mark bits and drains
    /// every grey entry left (pool and the mutator's) with the world stopped.
    pub(crate) fn finish_concurrent(&mut self, pool: &Pool, crew: Option<&Crew>) {
        if let Some(crew) = crew {
            crew.stop_and_wait();
            let done = crew.sh.take_result();
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
        if let Some(table) = self.conc_table.take() {
            self.marker.conc = None;
            let (objects, bytes) = table.merge(&mut self.spans);
            self.marker.marked_objects += objects;
            self.marker.marked_bytes += bytes;
            table.release(self.marker.source);
        }
        self.drain_all();
        while pool.take_into(&mut self.marker.grey) {
            self.drain_all();
        }
    }
}
