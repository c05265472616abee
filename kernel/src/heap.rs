//! The kernel heap: spanalloc's [`Heap`] is the `#[global_allocator]`.
//!
//! Invariants:
//! - [`HEAP`] gets its memory once, from [`memory::take_over`](crate::memory::take_over); until then every
//!   allocation fails (null, then Rust's "memory allocation of N bytes failed" panic), so nothing may
//!   allocate before take-over.
//! - The heap masks interrupts around its own critical sections, so interrupt handlers may allocate (the
//!   timer handler does); a [`Quiet`] guard stops that while a test compares heap snapshots.

use crate::clock::Instant;
use crate::platform::{KernelPlatform, PLATFORM};
use core::sync::atomic::Ordering;
use core::time::Duration;
use spanalloc::Heap;

/// The most the heap may grow to; its metadata is sized for this much (lazily mapped).
pub const HEAP_MAX_BYTES: usize = 64 << 30;

#[global_allocator]
pub static HEAP: Heap<KernelPlatform> = Heap::new(&PLATFORM);

/// Switches heap sampling on as the command line asks (`profilerate=`, `guard=`, `guardside=`; the
/// `heapprofile` command profiles at Go's default rate unless told otherwise). Off by default.
pub fn start_sampling(cmdline: &crate::cmdline::Cmdline) {
    use spanalloc::profile::{GuardSide, Sampling, DEFAULT_PROFILE_RATE};
    let default_rate = match cmdline.command {
        crate::cmdline::Command::HeapProfile => DEFAULT_PROFILE_RATE,
        _ => 0,
    };
    let s = Sampling {
        profile_rate: cmdline.profile_rate.unwrap_or(default_rate),
        guard_interval: cmdline.guard_interval.unwrap_or(0),
        guard_side: if cmdline.guard_left {
            GuardSide::Left
        } else {
            GuardSide::Right
        },
    };
    if s != Sampling::OFF {
        match HEAP.set_sampling(s) {
            Ok(()) => log::info!("heap sampling on: {s:?}"),
            Err(e) => crate::println!("warning: heap sampling not started: {e}"),
        }
    }
}

/// Keeps the kernel's own background users off the heap while alive (today: the timer handler's
/// allocations, on every CPU), so that a test can compare heap snapshots taken at different times. Drop
/// restores the previous setting.
pub struct Quiet {
    was_on: bool,
}

impl Quiet {
    /// Switches the background allocations off and waits until every other online CPU has taken two more
    /// timer interrupts, so none is still inside a handler that allocates (this CPU cannot be: it is
    /// running this code). Gives up waiting on a CPU whose timer stops after 100 ms.
    #[must_use = "the heap is quiet only while the guard lives"]
    pub fn new() -> Self {
        let was_on = crate::timer::set_alloc_in_handler(false);
        let me = crate::percpu::current_index();
        let others = || crate::smp::bits(crate::smp::online_mask()).filter(move |&cpu| cpu != me);
        let mut seen = [0u64; spanalloc::MAX_CPUS];
        for cpu in others() {
            seen[cpu] = crate::percpu::get(cpu).ticks.load(Ordering::Acquire);
        }
        let start = Instant::now();
        while others()
            .any(|cpu| crate::percpu::get(cpu).ticks.load(Ordering::Acquire) < seen[cpu] + 2)
            && start.elapsed() < Duration::from_millis(100)
        {
            core::hint::spin_loop();
        }
        Quiet { was_on }
    }
}

impl Drop for Quiet {
    fn drop(&mut self) {
        crate::timer::set_alloc_in_handler(self.was_on);
    }
}
