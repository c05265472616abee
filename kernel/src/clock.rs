//! Elapsed time for measurements: the time-stamp counter, calibrated once against the PIT.
//!
//! The TSC counts at a rate the kernel has to measure (under QEMU's TCG it follows the host's clock); the
//! PIT runs at a fixed 1.193182 MHz. [`init`] counts TSC ticks while PIT channel 2 counts down a known
//! interval, with the same method Linux's `pit_calibrate_tsc` uses: channel 2 in mode 0, gated through
//! port 0x61, its output bit polled there.
//!
//! Invariant: [`init`] runs once, before [`Instant::elapsed`] is used; before it, elapsed times are zero.

use core::sync::atomic::{AtomicU64, Ordering};
use core::time::Duration;
use x86_64::instructions::port::Port;

const PIT_HZ: u64 = 1_193_182;
/// Calibration interval: 50 ms (fits PIT's 16-bit counter: 59659 ticks).
const CALIBRATION_PIT_TICKS: u16 = (PIT_HZ / 20) as u16;
const PIT_CHANNEL2: u16 = 0x42;
const PIT_COMMAND: u16 = 0x43;
/// Bit 0: channel 2 gate; bit 1: speaker data (kept off); bit 5: channel 2 output (read-only).
const SPEAKER_PORT: u16 = 0x61;

/// TSC ticks per second; 0 until [`init`].
static TSC_HZ: AtomicU64 = AtomicU64::new(0);

/// Measures the TSC's rate. Takes 50 ms.
pub fn init() {
    let mut speaker = Port::<u8>::new(SPEAKER_PORT);
    let mut command = Port::<u8>::new(PIT_COMMAND);
    let mut channel2 = Port::<u8>::new(PIT_CHANNEL2);
    let [low, high] = CALIBRATION_PIT_TICKS.to_le_bytes();
    let (start, end) = x86_64::instructions::interrupts::without_interrupts(|| {
        // SAFETY: the PIT and speaker ports only program the timer chip; nothing else in the kernel uses
        // channel 2 or the speaker, and no memory is touched.
        unsafe {
            let gate = (speaker.read() & !0x02) | 0x01;
            speaker.write(gate);
            // Channel 2, low byte then high byte, mode 0 (output goes high at terminal count), binary.
            command.write(0b1011_0000);
            channel2.write(low);
            channel2.write(high);
            let start = rdtsc();
            while speaker.read() & 0x20 == 0 {
                core::hint::spin_loop();
            }
            (start, rdtsc())
        }
    });
    let hz = (end - start) * PIT_HZ / u64::from(CALIBRATION_PIT_TICKS);
    TSC_HZ.store(hz.max(1), Ordering::Relaxed);
    log::debug!("clock: TSC runs at {} MHz", hz / 1_000_000);
}

#[inline(always)]
fn rdtsc() -> u64 {
    // SAFETY: RDTSC only reads the time-stamp counter.
    unsafe { core::arch::x86_64::_rdtsc() }
}

/// Raw TSC ticks, for summing many short intervals (convert the sum with [`ticks_to_duration`]).
#[inline(always)]
pub fn ticks() -> u64 {
    rdtsc()
}

/// The time `ticks` TSC ticks take (zero before [`init`]).
pub fn ticks_to_duration(ticks: u64) -> Duration {
    let hz = TSC_HZ.load(Ordering::Relaxed);
    if hz == 0 {
        return Duration::ZERO;
    }
    Duration::from_nanos((u128::from(ticks) * 1_000_000_000 / u128::from(hz)) as u64)
}

/// A point in time, for measuring how long something took.
#[derive(Debug, Clone, Copy)]
pub struct Instant(u64);

impl Instant {
    pub fn now() -> Self {
        Instant(rdtsc())
    }

    /// Time since `self` (zero before [`init`]).
    pub fn elapsed(&self) -> Duration {
        ticks_to_duration(rdtsc().saturating_sub(self.0))
    }
}
