//! Clocks for the workloads: wall time by `Instant`, single operations by the TSC.
//!
//! Invariants: `Tsc::ns_per_cycle` is calibrated once against `Instant` (the TSC is invariant on any x86_64
//! machine this runs on); loops look at the stop flag only every few dozen operations, to keep the check out
//! of the measurement.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// Reads the time-stamp counter after all earlier instructions retired (lfence), so the interval between
/// two reads covers exactly the code between them.
#[inline(always)]
pub fn rdtsc() -> u64 {
    // SAFETY: lfence and rdtsc have no memory effects; both exist on every x86_64 CPU.
    unsafe {
        core::arch::x86_64::_mm_lfence();
        let t = core::arch::x86_64::_rdtsc();
        core::arch::x86_64::_mm_lfence();
        t
    }
}

/// TSC to nanoseconds.
#[derive(Clone, Copy, Debug)]
pub struct Tsc {
    pub ns_per_cycle: f64,
}

impl Tsc {
    /// Calibrates over `over` of wall time (busy-waiting).
    pub fn calibrate(over: Duration) -> Self {
        let (t0, c0) = (Instant::now(), rdtsc());
        while t0.elapsed() < over {
            std::hint::spin_loop();
        }
        let (ns, cycles) = (t0.elapsed().as_nanos() as f64, (rdtsc() - c0) as f64);
        Tsc {
            ns_per_cycle: ns / cycles,
        }
    }

    pub fn ns(&self, cycles: u64) -> f64 {
        cycles as f64 * self.ns_per_cycle
    }
}

/// A stop flag the coordinating thread raises when a multi-threaded phase is over.
pub struct StopFlag(AtomicBool);

impl StopFlag {
    pub const fn new() -> Self {
        StopFlag(AtomicBool::new(false))
    }

    #[inline]
    pub fn raised(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }

    pub fn raise(&self) {
        self.0.store(true, Ordering::Relaxed);
    }
}
