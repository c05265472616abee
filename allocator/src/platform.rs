//! The platform trait: everything spanalloc needs from the machine, and nothing more.
//!
//! A kernel implements it once (current CPU from its per-CPU block, interrupt masking, where physical
//! memory is mapped, TLB shootdown). The `host` feature implements it over memory from the OS, so the same
//! allocator code runs in host tests and benchmarks.

use crate::addr::{Page, PhysFrame, VirtAddr};

/// What spanalloc needs from the machine. Ready implementations for x86_64: [`crate::platforms`].
///
/// The heap calls `cpu_index`, `page_mapped` and `pages_unmapped` with interrupts masked on the calling CPU,
/// the last two also with the page-heap lock held: no method may allocate.
///
/// # Safety
/// Implementors promise what each method documents: above all that `physical_memory_offset` really maps
/// all physical memory the frame allocator manages, and that `pages_unmapped` leaves no CPU with a stale
/// translation. The allocator's soundness rests on these.
pub unsafe trait Platform: Sync + 'static {
    /// Restores the previous interrupt state when dropped.
    type InterruptGuard;

    /// Upper bound on CPU indices; per-CPU state is sized by it.
    const MAX_CPUS: usize;

    /// Index of the CPU running this code, `< MAX_CPUS`. Stable while interrupts are masked.
    fn cpu_index(&self) -> usize;

    /// Masks interrupts on this CPU until the guard is dropped (nesting allowed).
    fn mask_interrupts(&self) -> Self::InterruptGuard;

    /// Physical address `p` is readable and writable at `physical_memory_offset() + p`.
    fn physical_memory_offset(&self) -> VirtAddr;

    /// Called after the 4 KiB `page` was mapped to the 4 KiB `frame` in the active page tables.
    /// A kernel has nothing to do (no CPU caches a not-present translation); the host mirrors the mapping.
    fn page_mapped(&self, page: Page, frame: PhysFrame);

    /// Called after the pages `[start, start + count)` were unmapped: `start` is a 4 KiB page and `count`
    /// counts 4 KiB pages (not the heap's 8 KiB pages). On return no CPU may still hold a translation for
    /// them (TLB shootdown: the local flush plus every other CPU's).
    fn pages_unmapped(&self, start: Page, count: u64);
}
