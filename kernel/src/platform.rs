//! The kernel's side of spanalloc's [`Platform`] trait: which CPU runs, interrupt masking, where physical
//! memory is mapped, and TLB invalidation after the heap unmaps pages.
//!
//! Everything the allocator needs from the machine is in this one file. Two places change when SMP arrives,
//! both marked `SMP:` below: [`current_cpu_index`] (read the index from the per-CPU block) and
//! [`shoot_down_other_cpus`] (IPI the other CPUs and wait for them to invalidate).
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
/// SMP: only the boot CPU runs so far, so this is 0. With application processors, read the index from
/// the per-CPU block (`mov reg, gs:[offset]`); it must be valid from the first allocation a CPU makes.
#[inline(always)]
pub fn current_cpu_index() -> usize {
    0
}

/// Makes every CPU other than this one drop its translations of `count` pages from `start`, returning
/// when all have.
///
/// SMP: a no-op while only the boot CPU runs (no other CPU can hold a translation). With application
/// processors, send a shootdown IPI (the range, or "flush all" above [`INVLPG_MAX_PAGES`]) to every other
/// online CPU and wait for each to acknowledge. Interrupts are masked here (the heap calls this under its
/// lock), so the wait must not depend on this CPU taking interrupts, and the handler on the other CPUs
/// must not allocate.
fn shoot_down_other_cpus(start: Page, count: u64) {
    let _ = (start, count);
}

/// Drops this CPU's translations of `count` pages from `start`.
fn flush_local(start: Page, count: u64) {
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
// `shoot_down_other_cpus`, every other CPU's (none run yet); `cpu_index` is below MAX_CPUS and stable while
// interrupts are masked (a CPU never changes its index).
unsafe impl Platform for KernelPlatform {
    type InterruptGuard = InterruptGuard;
    const MAX_CPUS: usize = spanalloc::MAX_CPUS;

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
