//! The kernel's side of spanalloc's [`Platform`](spanalloc::Platform) trait: spanalloc's ready SMP
//! platform ([`Smp`]) over the two things only this kernel knows, which CPU runs and how to shoot down the
//! other CPUs' TLBs.
//!
//! The CPU index is read from the per-CPU block ([`percpu`](crate::percpu)), other CPUs' TLBs are shot down
//! by NMI ([`smp::shootdown`](crate::smp::shootdown)); interrupt masking and the local flush are
//! spanalloc's ([`spanalloc::platforms`]).
//!
//! Invariants:
//! - The physical-memory offset is set once, through
//!   [`TakeOverPlatform::set_physical_memory_offset`](spanalloc::TakeOverPlatform) during memory take-over,
//!   before the heap is initialized; it never changes afterwards.
//! - `pages_unmapped` returns only once no CPU can still use a translation of the unmapped pages: the local
//!   TLB is invalidated by spanalloc, the other CPUs' by [`shoot_down_other_cpus`] (a CPU not yet online
//!   has cached none of them, see smp::shootdown).
//! - `cpu_index` is below `spanalloc::MAX_CPUS` (percpu::install checks) and never changes on a CPU.

use spanalloc::addr::Page;
pub use spanalloc::platforms::flush_local;
use spanalloc::platforms::Smp;

/// The machine as spanalloc sees it.
pub type KernelPlatform = Smp;

/// The one instance.
pub static PLATFORM: KernelPlatform = Smp::new(current_cpu_index, shoot_down_other_cpus);

/// The index of the CPU running this code, below [`spanalloc::MAX_CPUS`].
///
/// One load through GS (`mov reg, gs:[0]`); every CPU installs its per-CPU block before its first
/// allocation.
#[inline(always)]
pub fn current_cpu_index() -> usize {
    crate::percpu::current_index()
}

/// Makes every CPU other than this one drop its translations of `count` pages from `start`, returning
/// when all have.
///
/// Interrupts are masked here (the heap calls this under its lock), and the other CPUs may be spinning with
/// theirs masked too: so the request goes by NMI (see [`smp::shootdown`](crate::smp::shootdown)), whose
/// handler takes no lock and allocates nothing.
fn shoot_down_other_cpus(start: Page, count: u64) {
    crate::smp::shootdown::shoot_down_others(start, count);
}
