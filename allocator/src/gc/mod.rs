//! A garbage-collected heap on the span heap: tri-color mark-sweep, stop-the-world or incremental,
//! non-moving, precise (feature `gc`).
//!
//! # Usage (for kernel code)
//!
//! ```ignore
//! use spanalloc::gc::{Gc, GcCell, GcConfig, GcHeap, Mutation, Rootable, Trace};
//!
//! // A managed type. `#[derive(Trace)]` traces every field and refuses a `Drop` impl (a finalizer must
//! // not reach a Gc); a hand-written `unsafe impl Trace` must keep the same contract (trace.rs).
//! #[derive(Trace)]
//! struct Node<'gc> {
//!     value: u64,
//!     next: GcCell<'gc, Option<Gc<'gc, Node<'gc>>>>,
//! }
//!
//! // The root: everything that must survive between `mutate` calls hangs off it.
//! struct Root;
//! impl Rootable for Root {
//!     type Root<'gc> = GcCell<'gc, Option<Gc<'gc, Node<'gc>>>>;
//! }
//!
//! // HEAP: &'static spanalloc::Heap<KernelPlatform>, already `init`ed (the GC takes its spans from it).
//! let config = GcConfig { clock: Some(now_ns), trace_sink: Some(serial_line), ..GcConfig::default() };
//! let mut gc: GcHeap<Root> = GcHeap::new(HEAP, config, |_mc| GcCell::new(None));
//! for i in 0..1000 {
//!     gc.mutate(|mc, root| {
//!         let n = Gc::new(mc, Node { value: i, next: GcCell::new(root.get()) });
//!         root.set(mc, Some(n)); // every store of a Gc goes through a cell: that is the write barrier
//!     });
//!     gc.step(64 << 10); // optional: background marking/sweeping work, like Go's mark workers
//! }
//! gc.collect(); // full stop-the-world cycle, sweeps everything (finalizers run)
//! ```
//!
//! Rules of the API (all checked by the type system except the contract of a hand-written
//! `unsafe impl Trace`; `#[derive(Trace)]`, from the spanalloc-derive crate, writes sound ones):
//! - A `Gc<'gc, T>` lives inside one `mutate` call (`'gc` is that call's brand). Keep objects across
//!   calls by making them reachable from the root. Allocation never collects inside `mutate`; cycles
//!   start and end at safe points: the end of `mutate`, `step`, `collect`, `start_cycle`,
//!   `finish_mark`. Allocating while a mark runs pays marking work (assists).
//! - Gc fields change only through [`GcCell`] (`Copy` values) or [`GcRefCell`] (anything else); their
//!   writes take the `&Mutation` and run the write barrier.
//! - Pointer-free types without drop glue (`Trace::NEEDS_TRACE == false`, e.g. `[u64; 4]`, `u32`) get no
//!   header, go to noscan spans and are never scanned; below 16 B they share tiny blocks. Zero-sized ones
//!   take no memory: their `Gc` holds the dangling address `align_of::<T>()`, which the marker ignores.
//! - The marker shades only objects of its own heap: an address that is not an allocated object of a span
//!   this `GcHeap` owns (`Span::owner`, a fresh id per heap) is refused with a panic naming it, never read
//!   as a header.
//! - Finalization: a dead object's `Drop` runs once, when the sweeper frees it (or when the `GcHeap` is
//!   dropped). It must not dereference any `Gc` (its target may be freed already) nor use the heap.
//! - Weak references: [`GcWeak::new`] / [`GcWeak::upgrade`].
//! - Panics in user code (a `Drop`, a `Trace` impl, the root's `Trace`, the trace sink, the pause hook,
//!   the clock)
//!   may be caught by the caller of `mutate`/`step`/`collect`/drop: the collector is panic-safe rather
//!   than aborting. Its state is made consistent before user code runs or repaired by a guard on unwind:
//!   a span whose finalizer panicked is filed back swept (its other dead objects are leaked, never
//!   finalized); a scan cut short leaves `interrupted` set, so termination rescans the root and every
//!   marked object before the mark may end; a failed checkmark leaves the heap marking (nothing freed)
//!   and the next termination rescans and checks again; the barrier flag is switched before user code
//!   runs; dropping the heap gives every span back whatever a finalizer does. Nothing reachable is ever
//!   freed; the worst outcome is leaked finalizers. Tests: gc/tests/soundness.rs.
//! - Observability: [`GcConfig::trace_sink`] gets one gctrace line per cycle; [`GcConfig::verify`]
//!   re-marks every cycle with the world stopped and panics naming any object the mark missed;
//!   [`GcHeap::stats`] returns counters.
//! - Memory: the collector's spans come from the `Heap`'s page heap (same spans, size classes and
//!   pages as the explicit heap); dead spans go back to it, and its scavenger (or `Heap::trim`) returns
//!   their frames once frames are short (pageheap.rs, "Scavenging"), keeping free pages mapped up to
//!   110% of the heap goal (Go's scavenger goal: the heap grows back to its goal before the next cycle,
//!   and unmapping pages only to map them again is costly).
//!
//! SMP: a `GcHeap` is neither `Send` nor `Sync`; each CPU can run its own heap on the shared `Heap`
//! (spans are taken under the page-heap lock with interrupts masked). Parallel marking
//! ([`GcConfig::mark_workers`], [`MarkWorkers`]): stop-the-world marks (`collect`, `finish_mark`,
//! stop-the-world mode) are drained by workers on other CPUs too, with atomic mark bits and a shared
//! pool of grey chunks (par.rs); incremental steps and assists mark on the heap's CPU. Concurrent
//! marking ([`Mode::Concurrent`] with [`GcConfig::concurrent_workers`], [`ConcurrentWorkers`]): mark
//! workers on other CPUs drain the grey set while the mutator runs (jobs handed out at safe points)
//! (conc.rs); `Trace` impls then run beside the mutator (their contract, trace.rs, says what they may
//! read), and cells take locks (cell.rs).
//!
//! Design (ARCHITECTURE.md, "Collector"): heap.rs (state, safe points, cycle driver), alloc.rs (current
//! span per class, tiny allocator, large objects, assists), mark.rs (shade/scan), workbuf.rs (grey
//! stack, shared chunk pool), par.rs (parallel marking), conc.rs (concurrent marking), barrier.rs (the deletion barrier and why), sweep.rs (lazy sweep, finalizers), spans.rs
//! (span lists by sweepgen), pacer.rs (goal, trigger, assist ratio), cycle.rs (mark setup/termination),
//! verify.rs (checkmark), gctrace.rs (stats and trace lines), weak.rs, object.rs (headers, vtables),
//! trace.rs, ptr.rs, cell.rs, mutation.rs (the API types).

mod alloc;
mod barrier;
mod cell;
mod conc;
mod cycle;
mod gctrace;
mod heap;
mod mark;
mod mutation;
mod object;
mod pacer;
mod par;
mod ptr;
mod spans;
mod sweep;
mod trace;
mod verify;
mod weak;
mod workbuf;

pub use cell::{GcCell, GcRefCell, GcRefMut};
pub use conc::{ConcurrentWorkers, MarkJob};
pub use gctrace::{GcStats, PauseKind, PauseStat};
pub use heap::{GcConfig, GcHeap, Mode, Phase, Stress};
pub use mutation::{Mutation, Rootable};
pub use pacer::MIN_HEAP;
pub use par::MarkWorkers;
pub use ptr::Gc;
/// `#[derive(Trace)]`: a safe `Trace` impl (every field traced; no `Drop` unless the type is `'static`).
/// See the `spanalloc-derive` crate for what it refuses and why.
#[cfg(any(test, feature = "gc"))]
pub use spanalloc_derive::Trace;
pub use trace::{Trace, Tracer};
pub use weak::GcWeak;

#[cfg(test)]
mod tests;
