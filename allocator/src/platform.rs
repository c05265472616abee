//! The platform trait: everything spanalloc needs from the machine, and nothing more.
//!
//! A kernel implements it once (current CPU from its per-CPU block, interrupt masking, where physical
//! memory is mapped, TLB shootdown). The `host` feature implements it over memory from the OS, so the same
//! allocator code runs in host tests and benchmarks.

use crate::addr::{Page, PhysFrame, VirtAddr};

/// Most CPUs a heap keeps per-CPU caches for: [`Platform::MAX_CPUS`] may not exceed it (checked when a
/// heap is built). Per-CPU state is laid out for this many CPUs, used up to `Platform::MAX_CPUS`.
pub const MAX_CPUS: usize = 64;

/// What spanalloc needs from the machine. Ready implementations for x86_64: [`crate::platforms`].
///
/// The heap calls `page_mapped`, `pages_mapped` and `pages_unmapped` with interrupts masked on the calling
/// CPU and the page-heap lock held, and `cpu_index` on every allocation and free: no method may allocate,
/// nor panic (a panic handler that allocates would wait for good for the lock held; unwinding out of
/// a mapping leaves the page heap's bookkeeping half done).
///
/// **Interrupt handlers may allocate and free**, at any point of the code they interrupt, including the
/// heap's own code. NMI handlers (and anything else that runs while interrupts are masked, e.g. a
/// machine-check handler) must not: the code they interrupt may hold a heap lock.
///
/// # Safety
/// Implementors promise what each method documents: above all that `physical_memory_offset` really maps
/// all physical memory the frame allocator manages, and that `pages_unmapped` leaves no CPU with a stale
/// translation. The allocator's soundness rests on these.
pub unsafe trait Platform: Sync + 'static {
    /// Restores the previous interrupt state when dropped.
    type InterruptGuard;

    /// CPU indices below this get a per-CPU cache (lock-free fast path); at most [`MAX_CPUS`] (a heap
    /// over a platform that says more does not compile). A CPU whose index is at or above it is still
    /// served, through the central lists' locks (slower, never unsound).
    const MAX_CPUS: usize;

    /// Whether a heap on this platform compiles in sampling (the heap profile and guard pages, see
    /// [`Heap::set_sampling`](crate::Heap::set_sampling)): one subtraction and one branch on the small
    /// allocation fast path, whether sampling is switched on or not. The default, `false`, leaves the fast
    /// path exactly as without it; [`Sampled`] turns it on for any platform.
    const SAMPLING: bool = false;

    /// The running code's call stack from the frame `from` outward (`from` is the frame pointer of the
    /// heap's entry function, see [`crate::profile::stack::current_frame`], so that the first address is
    /// the return address into the code that called the heap): return addresses innermost first, written
    /// to `out`; returns how many. Called (with interrupts masked) for sampled allocations only; it must
    /// not allocate or fault, whatever `from` is (on code without frame pointers it may be any value). The
    /// default records none. On x86_64, [`crate::profile::stack::frame_pointer_walk`] up to the running
    /// stack's top does it for code built with frame pointers.
    fn stack_trace(&self, from: u64, out: &mut [u64]) -> usize {
        let _ = (from, out);
        0
    }

    /// Whether code an interrupt lands in always resumes on the CPU it was interrupted on: `true` for a
    /// kernel that never moves interrupted code to another CPU (no scheduler, or one that preempts but
    /// only resumes a thread on the CPU it left; also any uniprocessor kernel). The heap then runs its
    /// fast paths with interrupts enabled: it marks the CPU's cache busy for the few instructions of a pop
    /// or push, and an interrupt handler that allocates or frees while it is busy is served through
    /// locks instead (a thread preempted inside that window only makes the others on its CPU take the
    /// locked path until it resumes). `false` (the default) masks interrupts around every use of a cache,
    /// which is right whatever the kernel does (e.g. a scheduler that migrates preempted threads), and on
    /// x86 costs a `pushf`/`cli`/`popf` per allocation and per free.
    const INTERRUPTED_CODE_STAYS_ON_CPU: bool = false;

    /// Whether an interrupt handler (or, on a hosted platform, a signal handler) may allocate or free
    /// through the heap. `false` promises none ever does on a CPU the heap serves (the host platform:
    /// threads as CPUs, no handler allocates); with [`Platform::INTERRUPTED_CODE_STAYS_ON_CPU`] the fast
    /// paths then guard against nothing (no busy flag). The default, `true`, is what a kernel wants.
    const INTERRUPT_HANDLERS_ALLOCATE: bool = true;

    /// Index of the CPU running this code. Two CPUs (or threads) running at once must never report the
    /// same index below `MAX_CPUS`: the cache of an index is used without a lock. Stable while
    /// interrupts are masked, and (if [`Platform::INTERRUPTED_CODE_STAYS_ON_CPU`]) for as long as the
    /// calling code runs.
    fn cpu_index(&self) -> usize;

    /// The running CPU's index for the heap's slow paths, which call it after `cpu_index` gave an index
    /// at or over `MAX_CPUS` (or the CPU's cache missed). A platform that hands out indices lazily (the
    /// host test platform: one per thread, on first use) may return an out-of-range index from
    /// `cpu_index` until this has assigned one, which keeps any call out of the fast path. The default is
    /// `cpu_index`.
    fn cpu_index_slow(&self) -> usize {
        self.cpu_index()
    }

    /// Masks interrupts on this CPU until the guard is dropped (nesting allowed).
    fn mask_interrupts(&self) -> Self::InterruptGuard;

    /// Physical address `p` is readable and writable at `physical_memory_offset() + p`.
    fn physical_memory_offset(&self) -> VirtAddr;

    /// Called after the 4 KiB `page` was mapped to the 4 KiB `frame` in the active page tables.
    /// A kernel has nothing to do (no CPU caches a not-present translation); the host mirrors the mapping.
    fn page_mapped(&self, page: Page, frame: PhysFrame);

    /// Called after the `count` 4 KiB pages from `start` were mapped to the `count` contiguous frames
    /// from `frame` (page `start + i` to frame `frame + i`): the heap maps runs of pages and reports each
    /// run of contiguous frames in one call. The default calls [`Platform::page_mapped`] for each page.
    fn pages_mapped(&self, start: Page, frame: PhysFrame, count: u64) {
        for i in 0..count {
            self.page_mapped(start + i, frame + i);
        }
    }

    /// Called after the pages `[start, start + count)` were unmapped: `start` is a 4 KiB page and `count`
    /// counts 4 KiB pages (not the heap's 8 KiB pages). On return no CPU may still hold a translation for
    /// them (TLB shootdown: the local flush plus every other CPU's).
    fn pages_unmapped(&self, start: Page, count: u64);
}

/// `P` with sampling compiled in ([`Platform::SAMPLING`]): everything else is `P`'s, provided items
/// included (so that a benchmark of `Sampled<P>` against `P` measures sampling alone). For a heap that
/// profiles over a platform that does not say so itself (the host benchmarks compare both).
pub struct Sampled<P: Platform>(pub &'static P);

// SAFETY: every duty is delegated to `P`, which keeps its promises; `SAMPLING` is no promise about the
// machine.
unsafe impl<P: Platform> Platform for Sampled<P> {
    type InterruptGuard = P::InterruptGuard;
    const MAX_CPUS: usize = P::MAX_CPUS;
    const SAMPLING: bool = true;
    const INTERRUPTED_CODE_STAYS_ON_CPU: bool = P::INTERRUPTED_CODE_STAYS_ON_CPU;
    const INTERRUPT_HANDLERS_ALLOCATE: bool = P::INTERRUPT_HANDLERS_ALLOCATE;

    #[inline(always)]
    fn cpu_index(&self) -> usize {
        self.0.cpu_index()
    }
    fn cpu_index_slow(&self) -> usize {
        self.0.cpu_index_slow()
    }
    #[inline(always)]
    fn mask_interrupts(&self) -> Self::InterruptGuard {
        self.0.mask_interrupts()
    }
    fn physical_memory_offset(&self) -> VirtAddr {
        self.0.physical_memory_offset()
    }
    fn page_mapped(&self, page: Page, frame: PhysFrame) {
        self.0.page_mapped(page, frame)
    }
    fn pages_mapped(&self, start: Page, frame: PhysFrame, count: u64) {
        self.0.pages_mapped(start, frame, count)
    }
    fn pages_unmapped(&self, start: Page, count: u64) {
        self.0.pages_unmapped(start, count)
    }
    fn stack_trace(&self, from: u64, out: &mut [u64]) -> usize {
        self.0.stack_trace(from, out)
    }
}

#[cfg(test)]
mod tests {
    use super::{Platform, Sampled};
    use crate::host::HostPlatform;

    /// `Sampled` changes `SAMPLING` only: a provided item it failed to forward would give the wrapped
    /// platform the trait's default (the host's masking and per-page mapping), and the sampling
    /// benchmark would measure that too.
    #[test]
    fn sampled_forwards_every_provided_const() {
        type S = Sampled<HostPlatform>;
        type H = HostPlatform;
        // Checked by the compiler: a wrong forward fails the build of the tests.
        const {
            assert!(S::SAMPLING && !H::SAMPLING);
            assert!(S::INTERRUPTED_CODE_STAYS_ON_CPU == H::INTERRUPTED_CODE_STAYS_ON_CPU);
            assert!(S::INTERRUPT_HANDLERS_ALLOCATE == H::INTERRUPT_HANDLERS_ALLOCATE);
            assert!(S::MAX_CPUS == H::MAX_CPUS);
        }
    }
}
