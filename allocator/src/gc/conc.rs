//! Concurrent marking (`Mode::Concurrent` with [`ConcurrentWorkers`]): mark workers on other CPUs drain
//! the grey set while the mutator runs on its own (Go's dedicated mark workers).
//!
//! Shape: a cycle starts at a safe point as in incremental mode (finish the sweep, barrier on, root
//! shaded), and also builds a *side mark table* ([`ConcTable`]): one entry per span the heap has at
//! that moment (base, object size and count, scan or not) and one mark bitmap per span, in pages of its
//! own. Every `mutate` call while the mark runs is a *round*: the mutator's grey chunks go into the
//! heap's shared [`Pool`], `ConcurrentWorkers::run` runs the mutator's closure on the calling CPU and
//! mark jobs (par.rs workers) on `helpers` others, and when the closure returns the workers are told
//! to stop (they put their grey entries back in the pool). At a safe point with the pool and the
//! mutator's grey stack empty the mark terminates: the side bitmaps are OR-ed into the spans' mark bits,
//! the rest is an ordinary stop-the-world termination (drain, rescans, checkmark, `end_mark`).
//!
//! Why a side table: while the mutator runs it allocates from its current spans (`next_free` on
//! `&mut Span`, black allocation setting mark bits), takes and files spans (list links): it holds
//! references to span structs and writes their alloc state. A worker that read a span struct or set
//! a mark bit in it meanwhile would race with those writes (or break the `&mut Span`'s uniqueness). So
//! during a round workers touch no span struct at all: they find an address's span in the span map
//! (atomic entries, shared with other CPUs' heaps anyway), its entry in the table (written before the
//! round, read-only during it) and set its bit in the table with an atomic `fetch_or`. The mutator's
//! own shades (barrier, root, `GcWeak::upgrade`, assists) use the same table path atomically. Spans the
//! heap takes during the mark are in no entry: all their objects are allocated during the mark, hence
//! black (mark bit set in the span by the allocation), and workers ignore addresses in them. Objects
//! allocated during the mark in older spans are in the table but white there: a worker may scan one
//! (its fields are initialised before the `Gc` to it was published) — extra work, never a missed
//! object. Nothing is swept while a mark runs, so no slot is freed or reused under a worker.
//!
//! What workers read besides the table, and why it is safe while the mutator runs:
//! - Object headers (vtables): written before any `Gc` to the object exists and never changed.
//! - Fields outside cells: immutable after allocation (`Gc<T>` gives only `&T`), initialised before
//!   the `Gc` is published; publication goes through a cell write or happened before the round began.
//! - Cells: under the locks of cell.rs (`GcCell` stripe locks, `GcRefCell` trace lock), which also
//!   order the mutator's writes of a new object before a worker's reads of it.
//! - `Trace` impls: the contract (trace.rs) says they read only the value (and so only the above).
//! - The grey pool (spin lock) and the round's counters (atomics).
//!
//! Correctness of the mark (snapshot at the beginning): as for incremental marking (barrier.rs); the
//! table is just where this cycle's marks of old objects live until termination merges them. No object
//! reachable at the snapshot is missed: the root is shaded at start; each snapshot object is reached
//! through grey objects (drained by workers or the mutator's assists, or at termination), or a path to it
//! was cut by a cell write and the barrier shaded it; workers skip only a `GcRefCell` held by a
//! `GcRefMut`, whose old contents `borrow_mut` shaded before taking its lock.
//!
//! Termination hands every grey entry (pool, the mutator's stack) to the stop-the-world drain after
//! the merge, so nothing shaded during a round is lost; a worker that unwinds sets `lost` and the mark
//! rescans the root and every marked object, as in par.rs. Correctness never depends on `run`: if it
//! does not run the mutator's closure, the closure runs after it returns (no worker left); jobs it does
//! not run only leave work in the pool, which assists and termination drain.
//! A worker's panic that `run` propagates reaches the caller of `mutate` after the closure has run
//! (its result is dropped); the heap stays consistent and the mark rescans, as above.
//!
//! Costs the mutator pays (pauses): building the table at cycle start and merging it at termination
//! are O(spans) (~1-2 ms and ~0.9 ms for ~12K spans, 64 MiB live), and each round ends only when
//! every worker has left its job. Both are what stands between this mode and a 0.1 ms max pause
//! (ARCHITECTURE.md, "Concurrent marking").

use core::ptr::NonNull;
use core::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use super::heap::{Inner, State};
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
    /// Workers on other CPUs or threads (Go's dedicated workers: a quarter of the CPUs).
    pub helpers: usize,
    /// Runs `job(i)` for `i` in `1..=helpers` on other CPUs or threads while `main()` runs on the calling
    /// one, and returns once all have returned. Correctness does not depend on it (module docs).
    #[allow(clippy::type_complexity)] // spelled out: it is the whole contract
    pub run: fn(helpers: usize, job: &(dyn Fn(usize) + Sync), main: &mut dyn FnMut()),
}

#[cfg(any(test, feature = "std"))]
impl ConcurrentWorkers {
    /// `helpers` host threads (scoped threads spawned for each round), besides the caller's.
    pub fn threads(helpers: usize) -> Self {
        fn run(helpers: usize, job: &(dyn Fn(usize) + Sync), main: &mut dyn FnMut()) {
            std::thread::scope(|s| {
                for i in 1..=helpers {
                    s.spawn(move || job(i));
                }
                main();
            });
        }
        Self { helpers, run }
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

/// What a round needs from the heap, copied out of it before the mutator runs.
pub(crate) struct Round {
    workers: ConcurrentWorkers,
    spans: &'static SpanMap,
    source: &'static (dyn SpanSource + Sync),
    owner: u32,
    view: ConcView,
    clock: Option<fn() -> u64>,
}

/// What a round did.
pub(crate) struct RoundOut {
    pub(crate) scan_work: usize,
    pub(crate) overflow: bool,
    pub(crate) lost: bool,
    pub(crate) cpus: usize,
    /// The mutator's waits: from the round's start to its closure's, and from its closure's end to the
    /// workers' (0 when `run` did not run the closure).
    pub(crate) waits: [u64; 2],
}

/// Sets a flag when dropped (normally or by unwinding).
struct SetOnDrop<'a>(&'a AtomicBool);

impl Drop for SetOnDrop<'_> {
    fn drop(&mut self) {
        self.0.store(true, Ordering::SeqCst);
    }
}

/// Clears `State::concurrent` when dropped.
struct ConcurrentOff<'a>(&'a State);

impl Drop for ConcurrentOff<'_> {
    fn drop(&mut self) {
        self.0.set_concurrent(false);
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

    /// A round to run the mutator in, if workers are configured, a concurrent mark runs and there is
    /// grey work for them (which goes into `pool`).
    pub(crate) fn begin_round(&mut self, pool: &Pool) -> Option<Round> {
        let workers = self.config.concurrent_workers.filter(|w| w.helpers > 0)?;
        let view = self.marker.conc.filter(|_| self.marking)?;
        pool.put_all(&mut self.marker.grey);
        if pool.looks_empty() {
            return None;
        }
        Some(Round {
            workers,
            spans: self.marker.spans,
            source: self.marker.source,
            owner: self.marker.owner,
            view,
            clock: self.config.clock,
        })
    }

    /// Folds a round's results in.
    pub(crate) fn end_round(&mut self, out: RoundOut) {
        self.marker.scan_work += out.scan_work;
        self.marker.overflow |= out.overflow;
        if out.lost {
            self.marker.interrupted = true;
        }
        self.log.mark_cpus = self.log.mark_cpus.max(out.cpus);
        self.stats.concurrent_rounds += 1;
        self.stats.concurrent_scan_bytes += out.scan_work as u64;
        for w in out.waits {
            if w != 0 {
                self.pause_ns(w);
            }
        }
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

    /// Ends the concurrent part of a mark (no worker runs): merges the side table into the mark bits
    /// and drains every grey entry left (pool and the mutator's) with the world stopped.
    pub(crate) fn finish_concurrent(&mut self, pool: &Pool) {
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

impl Round {
    /// Runs `main` (the mutator's closure) beside the mark workers; returns its result.
    pub(crate) fn run<T>(self, state: &State, main: impl FnOnce() -> T) -> (T, RoundOut) {
        let stop = AtomicBool::new(false);
        let sh = Shared::new(
            &state.pool,
            self.spans,
            self.source,
            self.owner,
            Some(&stop),
            Some(self.view),
        );
        let job = |_: usize| par::work(&sh);
        let now = || self.clock.map_or(0, |c| c());
        let mut main = Some(main);
        let mut out = None;
        let mut times = [0u64; 2];
        let t0 = now();
        let ran;
        {
            let _off = ConcurrentOff(state);
            state.set_concurrent(true);
            let mut call = || {
                let _stop = SetOnDrop(&stop);
                if let Some(m) = main.take() {
                    times[0] = now();
                    out = Some(m());
                    times[1] = now();
                }
            };
            (self.workers.run)(self.workers.helpers, &job, &mut call);
            ran = main.is_none();
        }
        let t1 = now();
        let out = match (out, main.take()) {
            (Some(o), _) => o,
            // `run` did not call `main`: every worker is gone, run it plainly.
            (None, Some(m)) => m(),
            (None, None) => {
                panic!("gc: the mutator's closure did not return inside ConcurrentWorkers::run")
            }
        };
        let waits = if ran {
            [times[0].saturating_sub(t0), t1.saturating_sub(times[1])]
        } else {
            [0, 0]
        };
        let r = sh.result();
        (
            out,
            RoundOut {
                scan_work: r.scan_work,
                overflow: r.overflow,
                lost: r.lost,
                cpus: r.cpus,
                waits,
            },
        )
    }
}
