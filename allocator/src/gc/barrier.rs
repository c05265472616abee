//! The write barrier: a deletion barrier (Yuasa's, snapshot-at-the-beginning), object-value granular.
//!
//! Rule: while a mark runs, before a value in a managed object or the root is overwritten, every `Gc`
//! it holds is shaded (`GcCell::set` shades the old value; `GcRefCell::borrow_mut` shades the whole
//! contents before handing out `&mut`). Together with black allocation and the root shaded at mark
//! start, this marks every object reachable at the start of the mark (the snapshot) and every object
//! allocated since: the weak tri-color invariant holds because no path from a grey object to a white
//! snapshot object can be cut without the barrier shading the cut-off object.
//!
//! Why not Go's hybrid (Yuasa + Dijkstra insertion): the insertion half exists because Go's stacks are
//! not rescanned and are grey while they run. Here no `Gc` is on the stack at a safe point and marks
//! start only at safe points, so the snapshot taken from the root is complete and the deletion half
//! alone suffices: a `Gc` the mutator holds inside `mutate` is either allocated since the snapshot
//! (black) or was reachable at it (so it gets marked, whatever the mutator does with it). Why not
//! gc-arena's (Lua's) backward barrier (re-grey a black object written to): it needs the container
//! object at every write and may rescan the same object many times per cycle, and then termination must
//! re-scan the roots; the snapshot barrier needs only the old value, never rescans, and mark work is
//! bounded by the snapshot plus nothing (allocation is black) — which is what lets the pacer bound it.
//!
//! Consequences the rest of the collector relies on:
//! - Marking may run inside `mutate` (allocation assists) with arbitrary `Gc`s on the stack.
//! - A mutably borrowed `GcRefCell` may be skipped by the marker (its snapshot was shaded).
//! - Termination needs no root rescan; objects that die during the mark are freed next cycle.
//!
//! Concurrent marking (conc.rs) changes nothing in the argument: the mutator's shades go through the
//! same atomic side-table path as the workers', and a worker that finds a `GcRefCell` held by a
//! `GcRefMut` skips it exactly as the single-threaded marker skips a mutably borrowed one (its old
//! contents were shaded before the lock was taken, cell.rs).
//!
//! Invariants: the barrier is on exactly while `Inner::marking` is (mirrored in `State::marking` for a
//! one-load check); shading never scans (it pushes on the grey stack), so it costs O(pointers in the old
//! value).

use super::heap::State;
use super::trace::Trace;

impl State {
    /// The barrier's slow path: shade every `Gc` in `old`.
    #[cold]
    pub(crate) fn shade_value<T: Trace + ?Sized>(&self, old: &T) {
        let (_busy, inner) = self.enter();
        #[cfg(test)]
        if inner.barrier_off {
            return;
        }
        old.trace(&mut inner.marker.tracer());
    }
}
