//! Clocks for the workloads: the CPU time of the measuring thread for rates, the TSC for single operations.
//!
//! Why CPU time and not wall time: the machine is shared (other builds and tests run beside the suite), and
//! a thread that is descheduled for a while would otherwise be charged for time in which it ran nothing.
//! A thread's CPU time still counts everything it does itself: spinning on a lock, cache misses from
//! false sharing, system calls. That holds for one thread; rates of several threads are per second of
//! wall-clock time (`workloads::mops`): their CPU times would extrapolate to T CPUs, more than the machine
//! has when T exceeds its cores (the report flags those rows as oversubscribed).
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

/// CPU time consumed by the calling thread (user + system), from `CLOCK_THREAD_CPUTIME_ID`.
pub fn thread_cpu_time() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid timespec to write; the clock id is a constant the kernel knows.
    let r = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    assert_eq!(r, 0, "clock_gettime(CLOCK_THREAD_CPUTIME_ID) failed");
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

/// A start point on the calling thread's CPU clock (only meaningful on that thread).
#[derive(Clone, Copy)]
pub struct CpuClock(Duration);

impl CpuClock {
    pub fn now() -> Self {
        CpuClock(thread_cpu_time())
    }

    pub fn elapsed(&self) -> Duration {
        thread_cpu_time().saturating_sub(self.0)
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
