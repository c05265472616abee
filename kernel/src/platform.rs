//! The kernel's side of spanalloc's [`Platform`] trait: which CPU runs, interrupt masking, where physical
//! memory is mapped, and TLB invalidation after the heap unmaps pages.
//!
//! Everything the allocator needs from the machine is in this one file; the SMP parts delegate: the CPU index
//! is read from the per-CPU block ([`percpu`](crate::percpu)), other CPUs' TLBs are shot down by NMI
//! ([`smp::shootdown`](crate::smp::shootdown)).
//!
//! Invariants:
//! - The physical-memory offset is set once, by [`KernelPlatform::set_physical_memory_offset`] during memory
//!   take-over, before the heap is initialized; it never changes afterwards.
//! - An [`InterruptGuard`] re-enables interrupts on drop only if they were enabled when it was made, so
//!   guards nest: the outermost one restores the state it found.
//! - `pages_unmapped` returns only once no CPU can still use a translation of the unmapped pages: the local
//!   TLB is invalidated here, the other CPUs' by [`shoot_down_other_cpus`].

use core::marker::PhantomData;
use core::sync::atomic::{AtomicU64, Ordering};
use spanalloc::addr::{Page, PhysFrame, VirtAddr};
use spanalloc::Platform;
use x86_64::instructions::{interrupts, tlb};

/// Above this many pages one full TLB flush (a CR3 reload) is cheaper than one `invlpg` per page.
const INVLPG_MAX_PAGES: u64 = 32;

/// The machine as spanalloc sees it. One instance, [`PLATFORM`].
pub struct KernelPlatform {
    /// 0 until take-over sets it (0 is never the offset: the bootloader's dynamic mapping is not at 0).
    phys_offset: AtomicU64,
}

pub static PLATFORM: KernelPlatform = KernelPlatform {
    phys_offset: AtomicU64::new(0),
};

impl KernelPlatform {
    /// Records where the bootloader mapped physical memory. Called once, at take-over; a second call with
    /// another offset is a kernel bug and panics.
    pub fn set_physical_memory_offset(&self, offset: VirtAddr) {
        assert!(
            offset.as_u64() != 0,
            "platform: physical memory offset 0 is not a valid mapping"
        );
        if let Err(old) = self.phys_offset.compare_exchange(
            0,
            offset.as_u64(),
            Ordering::AcqRel,
            Ordering::Acquire,
        ) {
            assert_eq!(
                old,
                offset.as_u64(),
                "platform: physical memory offset set twice ({old:#x}, then {:#x})",
                offset.as_u64()
            );
        }
    }
}

/// Masks interrupts on this CPU while alive; see the module invariants. Not `Send`: it restores the state
/// of the CPU that made it.
pub struct InterruptGuard {
    reenable: bool,
    _this_cpu: PhantomData<*const ()>,
}

impl Drop for InterruptGuard {
    fn drop(&mut self) {
        if self.reenable {
            interrupts::enable();
        }
    }
}

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

/// Drops this CPU's translations of `count` pages from `start` (also the shootdown NMI handler's work).
pub(crate) fn flush_local(start: Page, count: u64) {
    if count > INVLPG_MAX_PAGES {
        // Heap pages are mapped without the GLOBAL flag, so a CR3 reload drops them.
        tlb::flush_all();
    } else {
        for i in 0..count {
            tlb::flush((start + i).start_address());
        }
    }
}

// SAFETY: `physical_memory_offset` returns the bootloader's mapping of all physical memory (set at take-over
// from BootInfo, requested with `Mapping::Dynamic`); `pages_unmapped` invalidates the local TLB and, through
// `shoot_down_other_cpus`, every other online CPU's (a CPU not yet online has cached none of them, see
// smp::shootdown); `cpu_index` is below MAX_CPUS (percpu::install checks) and never changes on a CPU; no
// code ever changes CPU (no scheduler, no migration: each CPU runs the work it is given to the end).
unsafe impl Platform for KernelPlatform {
    type InterruptGuard = InterruptGuard;
    const MAX_CPUS: usize = spanalloc::MAX_CPUS;
    /// Heap profiles and guard pages compiled in (switched on from the command line: `profilerate=`,
    /// `guard=`, the `heapprofile` command).
    const SAMPLING: bool = true;

    /// A frame-pointer walk (the kernel is built with frame pointers, build.rs) over this CPU's stack,
    /// from the heap's frame up to the frame of the CPU's entry function (`percpu::mark_stack_top`).
    fn stack_trace(&self, from: u64, out: &mut [u64]) -> usize {
        let top = crate::percpu::current().stack_top.load(Ordering::Relaxed);
        if top == 0 {
            return 0;
        }
        // SAFETY: from the stack pointer up to `top` is the live part of this CPU's one stack (allocations,
        // interrupt handlers included, run on it: the only IST stack is the double fault's, which
        // allocates nothing), all mapped; `top` is the frame of an entry function that never returns.
        unsafe { spanalloc::profile::stack::frame_pointer_walk(from, top, out) }
    }

    /// The kernel has no scheduler: an interrupt handler always returns to the code it interrupted.
    const INTERRUPTED_CODE_STAYS_ON_CPU: bool = true;

    #[inline(always)]
    fn cpu_index(&self) -> usize {
        current_cpu_index()
    }

    #[inline(always)]
    fn mask_interrupts(&self) -> InterruptGuard {
        let reenable = interrupts::are_enabled();
        if reenable {
            interrupts::disable();
        }
        InterruptGuard {
            reenable,
            _this_cpu: PhantomData,
        }
    }

    fn physical_memory_offset(&self) -> VirtAddr {
        let offset = self.phys_offset.load(Ordering::Acquire);
        assert!(
            offset != 0,
            "platform: physical memory offset asked for before memory take-over"
        );
        VirtAddr::new(offset)
    }

    fn page_mapped(&self, _page: Page, _frame: PhysFrame) {
        // Nothing to do: no CPU caches a not-present translation, so a new mapping needs no invalidation.
    }

    fn pages_unmapped(&self, start: Page, count: u64) {
        flush_local(start, count);
        shoot_down_other_cpus(start, count);
    }
}
