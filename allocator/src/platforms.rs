//! Ready-made [`Platform`]s for x86_64 kernels, so that most kernels implement nothing:
//!
//! - [`Uniprocessor`] (and its one instance [`UNIPROCESSOR`]): a kernel that runs on one CPU. CPU index 0,
//!   interrupts masked with `cli` and restored on drop (slow paths only: with one CPU, interrupted code
//!   always resumes on it, so the fast paths mask nothing), TLB entries dropped on this CPU only
//!   (`invlpg`, or a CR3 reload for long ranges).
//! - [`Smp`]: a kernel that runs on several CPUs. It takes two functions from the kernel: the index of the
//!   running CPU and a TLB shootdown of the other CPUs; masking and the local flush are done here.
//!   `Smp<true>` (built the same way) is for a kernel that never moves interrupted code to another CPU:
//!   its fast paths mask nothing ([`Platform::INTERRUPTED_CODE_STAYS_ON_CPU`]).
//!
//! Both learn where physical memory is mapped from [`take_over`](crate::takeover::take_over) (through
//! [`TakeOverPlatform`]), so they can be built in a `static` before the kernel knows it.
//!
//! Invariants:
//! - The physical-memory offset is unknown until set (0 is a valid offset: physical memory identity-mapped),
//!   and set at most once: a second call with another value panics, since the frame allocator and the
//!   mapper were built with the first. It is 4 KiB-aligned (a page mapping can put memory nowhere else).
//! - An [`InterruptGuard`] re-enables interrupts on drop only if they were enabled when it was made, so
//!   guards nest and the outermost restores what it found (a guard made with interrupts off changes
//!   nothing). It is neither `Send` nor `Sync`: it restores the state of the CPU that made it.
//! - `pages_unmapped` returns only once no CPU can still use a translation of the pages: [`Uniprocessor`]
//!   has no other CPU; [`Smp`] flushes locally and then calls the kernel's shootdown, which must not
//!   return before every other CPU has flushed.
//!
//! Only on x86_64 (they use its instructions); other targets implement [`Platform`] themselves.

use core::marker::PhantomData;
use core::sync::atomic::{AtomicU64, Ordering};

use x86_64::instructions::{interrupts, tlb};

use crate::addr::{Page, PhysFrame, VirtAddr};
use crate::platform::Platform;
use crate::takeover::TakeOverPlatform;

/// Above this many pages one full TLB flush (a CR3 reload) is cheaper than one `invlpg` per page. The heap
/// maps its pages without the GLOBAL flag, so a CR3 reload drops them.
pub const INVLPG_MAX_PAGES: u64 = 32;

/// Drops this CPU's translations of the `count` 4 KiB pages from `start`: one `invlpg` per page, or a CR3
/// reload above [`INVLPG_MAX_PAGES`] (which drops every non-global translation).
///
/// An SMP kernel's shootdown handler can call this on each CPU it interrupts.
pub fn flush_local(start: Page, count: u64) {
    if count > INVLPG_MAX_PAGES {
        tlb::flush_all();
    } else {
        for i in 0..count {
            tlb::flush((start + i).start_address());
        }
    }
}

/// Masks interrupts on this CPU while alive (see the module invariants). Made by
/// [`Platform::mask_interrupts`] of the ready platforms.
pub struct InterruptGuard {
    reenable: bool,
    /// Not `Send`/`Sync`: the guard belongs to the CPU (and the interrupt state) it was made on.
    _this_cpu: PhantomData<*const ()>,
}

impl InterruptGuard {
    /// Masks interrupts (`cli`) if they are enabled; the guard re-enables them (`sti`) when dropped.
    #[inline(always)]
    pub fn new() -> Self {
        let reenable = interrupts::are_enabled();
        if reenable {
            interrupts::disable();
        }
        InterruptGuard {
            reenable,
            _this_cpu: PhantomData,
        }
    }
}

impl Default for InterruptGuard {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for InterruptGuard {
    #[inline(always)]
    fn drop(&mut self) {
        if self.reenable {
            interrupts::enable();
        }
    }
}

/// Where physical memory is mapped: [`PhysOffset::UNSET`] (not 4 KiB-aligned, so never an offset)
/// until [`PhysOffset::set`].
struct PhysOffset(AtomicU64);

impl PhysOffset {
    const UNSET: u64 = u64::MAX;

    const fn unset() -> Self {
        PhysOffset(AtomicU64::new(Self::UNSET))
    }

    fn set(&self, offset: VirtAddr) {
        assert!(
            offset.is_aligned(crate::addr::FRAME_SIZE),
            "spanalloc platform: physical memory offset {:#x} is not 4 KiB-aligned",
            offset.as_u64()
        );
        if let Err(old) = self.0.compare_exchange(
            Self::UNSET,
            offset.as_u64(),
            Ordering::AcqRel,
            Ordering::Acquire,
        ) {
            assert_eq!(
                old,
                offset.as_u64(),
                "spanalloc platform: physical memory offset set twice ({old:#x}, then {:#x})",
                offset.as_u64()
            );
        }
    }

    fn get(&self) -> VirtAddr {
        let offset = self.0.load(Ordering::Acquire);
        assert!(
            offset != Self::UNSET,
            "spanalloc platform: physical memory offset asked for before take-over set it"
        );
        VirtAddr::new(offset)
    }
}

/// The platform of a kernel that runs on one CPU: index 0, `cli`/restore interrupt masking (slow paths),
/// local TLB flushes. Use its one instance, [`UNIPROCESSOR`].
///
/// Only for a kernel that never starts a second CPU: with another CPU running, it would share CPU 0's cache
/// and keep stale translations.
pub struct Uniprocessor {
    phys_offset: PhysOffset,
}

/// The one [`Uniprocessor`]: `static HEAP: Heap<Uniprocessor> = Heap::new(&UNIPROCESSOR);`.
pub static UNIPROCESSOR: Uniprocessor = Uniprocessor::new();

impl Uniprocessor {
    /// A platform whose physical-memory offset is set later, by take-over. Prefer [`UNIPROCESSOR`].
    pub const fn new() -> Self {
        Uniprocessor {
            phys_offset: PhysOffset::unset(),
        }
    }
}

impl Default for Uniprocessor {
    fn default() -> Self {
        Self::new()
    }
}

impl TakeOverPlatform for Uniprocessor {
    fn set_physical_memory_offset(&self, offset: VirtAddr) {
        self.phys_offset.set(offset);
    }
}

// SAFETY: one CPU, so index 0 is always right and below MAX_CPUS (1), and interrupted code can only resume
// on it; the guard really masks interrupts on it; the offset is the one take-over was given (whose caller
// promises it maps all physical memory), and asking before it is known panics instead of guessing;
// `pages_unmapped` flushes the only TLB there is.
unsafe impl Platform for Uniprocessor {
    type InterruptGuard = InterruptGuard;
    const MAX_CPUS: usize = 1;
    const INTERRUPTED_CODE_STAYS_ON_CPU: bool = true;

    #[inline(always)]
    fn cpu_index(&self) -> usize {
        0
    }

    #[inline(always)]
    fn mask_interrupts(&self) -> InterruptGuard {
        InterruptGuard::new()
    }

    fn physical_memory_offset(&self) -> VirtAddr {
        self.phys_offset.get()
    }

    fn page_mapped(&self, _page: Page, _frame: PhysFrame) {
        // Nothing: no CPU caches a translation of a page that was not present.
    }

    fn pages_unmapped(&self, start: Page, count: u64) {
        flush_local(start, count);
    }
}

/// The platform of a kernel that runs on several CPUs. The kernel supplies what only it knows:
///
/// - `cpu_index`: the index of the running CPU, below [`crate::MAX_CPUS`], fixed for each CPU (e.g. read
///   from its per-CPU block through GS). Called with interrupts masked, on every allocation: keep it a
///   load or two.
/// - `shoot_down_others(start, count)`: make every *other* online CPU drop its translations of the `count`
///   4 KiB pages from `start` (e.g. with [`flush_local`] in an IPI handler), and return only when all have.
///   It is called with interrupts masked and the page-heap lock held, while other CPUs may spin on that
///   lock with their interrupts masked: an ordinary IPI would not be taken there, so use an NMI or make
///   the waiting CPUs serve requests (see ARCHITECTURE.md, "TLB shootdown"). It must not allocate.
///
/// `Smp` (that is, `Smp<false>`) masks interrupts around every use of a CPU's cache, which is right
/// whatever the kernel's scheduler does. `Smp<true>` adds one duty: code an interrupt lands in always
/// resumes on the CPU it was interrupted on (no scheduler, or one that never migrates a preempted thread);
/// in exchange the fast paths mask nothing (see [`Platform::INTERRUPTED_CODE_STAYS_ON_CPU`]).
///
/// ```no_run
/// # fn my_cpu_index() -> usize { 0 }
/// # fn my_shootdown(_: spanalloc::addr::Page, _: u64) {}
/// use spanalloc::{platforms::Smp, Heap};
/// // SAFETY: `my_cpu_index` and `my_shootdown` do what `Smp::new` asks of them.
/// static PLATFORM: Smp = unsafe { Smp::new(my_cpu_index, my_shootdown) };
/// #[global_allocator]
/// static HEAP: Heap<Smp> = Heap::new(&PLATFORM);
/// // A kernel that never migrates interrupted code: `static PLATFORM: Smp<true> = unsafe { Smp::new(...) };`
/// // and `Heap<Smp<true>>`.
/// ```
///
/// `Smp::new` is `unsafe`: the heap's soundness rests on both functions (two CPUs given one index would
/// share a cache without a lock; a shootdown that returns early leaves stale translations of freed
/// frames), so safe code must not be able to make an `Smp` from any two functions:
///
/// ```compile_fail
/// # fn my_shootdown(_: spanalloc::addr::Page, _: u64) {}
/// fn every_cpu_is_zero() -> usize {
///     0
/// }
/// // Refused outside `unsafe`.
/// static PLATFORM: spanalloc::platforms::Smp =
///     spanalloc::platforms::Smp::new(every_cpu_is_zero, my_shootdown);
/// ```
pub struct Smp<const INTERRUPTED_CODE_STAYS_ON_CPU: bool = false> {
    phys_offset: PhysOffset,
    cpu_index: fn() -> usize,
    shoot_down_others: fn(Page, u64),
}

impl<const STAYS: bool> Smp<STAYS> {
    /// A platform over the kernel's CPU-index function and TLB shootdown (their duties: see [`Smp`]).
    ///
    /// # Safety
    /// `cpu_index` never gives two CPUs running at once the same index below [`crate::MAX_CPUS`], and
    /// a CPU's index is fixed; `shoot_down_others(start, count)` returns only once every other CPU has
    /// dropped its translations of those pages, and neither allocates. With `STAYS` (`Smp<true>`), code
    /// an interrupt lands in always resumes on the CPU it was interrupted on.
    pub const unsafe fn new(cpu_index: fn() -> usize, shoot_down_others: fn(Page, u64)) -> Self {
        Smp {
            phys_offset: PhysOffset::unset(),
            cpu_index,
            shoot_down_others,
        }
    }
}

impl<const STAYS: bool> TakeOverPlatform for Smp<STAYS> {
    fn set_physical_memory_offset(&self, offset: VirtAddr) {
        self.phys_offset.set(offset);
    }
}

// SAFETY: the CPU index and the shootdown are the kernel's, which the caller of the `unsafe` `Smp::new`
// promised to be right (an index
// below MAX_CPUS fixed per CPU; a shootdown that returns once every other CPU flushed; with `STAYS`, no
// migration of interrupted code); the local flush and the masking are done here; the offset is set by
// take-over as for `Uniprocessor`.
unsafe impl<const STAYS: bool> Platform for Smp<STAYS> {
    type InterruptGuard = InterruptGuard;
    const MAX_CPUS: usize = crate::MAX_CPUS;
    const INTERRUPTED_CODE_STAYS_ON_CPU: bool = STAYS;

    #[inline(always)]
    fn cpu_index(&self) -> usize {
        (self.cpu_index)()
    }

    #[inline(always)]
    fn mask_interrupts(&self) -> InterruptGuard {
        InterruptGuard::new()
    }

    fn physical_memory_offset(&self) -> VirtAddr {
        self.phys_offset.get()
    }

    fn page_mapped(&self, _page: Page, _frame: PhysFrame) {
        // Nothing: no CPU caches a translation of a page that was not present.
    }

    fn pages_unmapped(&self, start: Page, count: u64) {
        flush_local(start, count);
        (self.shoot_down_others)(start, count);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offset_is_set_once() {
        let p = Uniprocessor::new();
        p.set_physical_memory_offset(VirtAddr::new(0x1000_0000_0000));
        // The same value again is fine (take-over retried after an error, say).
        p.set_physical_memory_offset(VirtAddr::new(0x1000_0000_0000));
        assert_eq!(p.physical_memory_offset(), VirtAddr::new(0x1000_0000_0000));
    }

    /// A kernel that identity-maps physical memory takes over with offset 0.
    #[test]
    fn offset_zero_is_an_identity_mapping() {
        let p = Uniprocessor::new();
        p.set_physical_memory_offset(VirtAddr::zero());
        assert_eq!(p.physical_memory_offset(), VirtAddr::zero());
    }

    #[test]
    #[should_panic(expected = "set twice")]
    fn a_second_offset_panics() {
        let p = Uniprocessor::new();
        p.set_physical_memory_offset(VirtAddr::new(0x1000_0000_0000));
        p.set_physical_memory_offset(VirtAddr::new(0x2000_0000_0000));
    }

    #[test]
    #[should_panic(expected = "before take-over")]
    fn offset_before_take_over_panics() {
        Uniprocessor::new().physical_memory_offset();
    }

    #[test]
    fn smp_calls_the_kernels_functions() {
        use core::sync::atomic::AtomicUsize;
        static SHOT: AtomicUsize = AtomicUsize::new(0);
        fn cpu() -> usize {
            3
        }
        fn shoot(_: Page, count: u64) {
            SHOT.fetch_add(count as usize, Ordering::Relaxed);
        }
        // SAFETY: test code: the platform's methods that rely on the duties are never called.
        let p: Smp = unsafe { Smp::new(cpu, shoot) };
        assert_eq!(p.cpu_index(), 3);
        const { assert!(!Smp::<false>::INTERRUPTED_CODE_STAYS_ON_CPU) };
        const { assert!(Smp::<true>::INTERRUPTED_CODE_STAYS_ON_CPU) };
        // `pages_unmapped` is not called here: its local `invlpg` is a privileged instruction.
        (p.shoot_down_others)(Page::containing_address(VirtAddr::new(0x1000)), 2);
        assert_eq!(SHOT.load(Ordering::Relaxed), 2);
    }
}
