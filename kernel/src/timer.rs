//! The local APIC timer: a periodic interrupt on every CPU, whose handler counts ticks and **allocates and
//! frees** (a small `Vec`), so that the heap's per-CPU caches are used from interrupt context for real,
//! interleaved with whatever allocation-heavy code the interrupt lands in.
//!
//! Invariants:
//! - [`calibrate`] runs once on the boot CPU (after `clock::init`, before any CPU starts its timer); every
//!   CPU's timer then uses the same count, so all tick at [`HZ`] (roughly: QEMU's timers are host-timed).
//! - The handler touches only its own CPU's block and the heap (which masks interrupts around its own
//!   critical sections), and ends with an EOI; it never blocks on a lock that code it interrupts could hold.

use crate::{apic, percpu};
use alloc::vec::Vec;
use core::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use core::time::Duration;
use x86_64::structures::idt::InterruptStackFrame;

/// The timer's interrupt vector.
pub const VECTOR: u8 = 0x30;

/// Ticks per second on each CPU.
pub const HZ: u32 = 1000;

/// Timer counts per tick; 0 until [`calibrate`].
static COUNTS_PER_TICK: AtomicU32 = AtomicU32::new(0);

/// Whether the handler allocates (tests that compare heap snapshots switch it off for the measurement).
static ALLOC_IN_HANDLER: AtomicBool = AtomicBool::new(true);

/// Measures the local APIC timer against the TSC (boot CPU, once).
pub fn calibrate() {
    const SAMPLE: Duration = Duration::from_millis(10);
    let counts = apic::timer_counts_per(SAMPLE);
    let per_tick = (u64::from(counts) * 1000 / SAMPLE.as_millis() as u64 / u64::from(HZ)).max(1);
    COUNTS_PER_TICK.store(per_tick.min(u64::from(u32::MAX)) as u32, Ordering::Relaxed);
    log::debug!("timer: {per_tick} APIC timer counts per tick");
}

/// Starts the periodic timer on this CPU.
pub fn start_on_this_cpu() {
    let counts = COUNTS_PER_TICK.load(Ordering::Relaxed);
    assert!(counts != 0, "timer: started before timer::calibrate");
    apic::start_periodic_timer(VECTOR, counts);
}

/// Turns the handler's allocation on or off; returns the previous setting.
pub fn set_alloc_in_handler(on: bool) -> bool {
    ALLOC_IN_HANDLER.swap(on, Ordering::SeqCst)
}

pub extern "x86-interrupt" fn handler(_frame: InterruptStackFrame) {
    let cpu = percpu::current();
    let tick = cpu.ticks.fetch_add(1, Ordering::Relaxed);
    if ALLOC_IN_HANDLER.load(Ordering::Relaxed) {
        // Sizes 8..=512 bytes across ticks, so several size classes see interrupt-time traffic.
        let len = 1 + (tick % 64) as usize;
        let tag = tick.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ cpu.index() as u64;
        let mut words: Vec<u64> = Vec::with_capacity(len);
        words.extend((0..len as u64).map(|i| tag ^ i));
        // Opaque to the optimizer, which could otherwise drop an allocation whose contents it can predict.
        let words = core::hint::black_box(words);
        assert!(
            words.iter().enumerate().all(|(i, &w)| w == tag ^ i as u64),
            "timer: a block allocated in the timer handler on CPU {} changed under it",
            cpu.index()
        );
        drop(words);
        cpu.timer_allocs.fetch_add(1, Ordering::Relaxed);
        if cpu.in_alloc_loop.load(Ordering::Acquire) {
            cpu.timer_allocs_in_loop.fetch_add(1, Ordering::Relaxed);
        }
    }
    apic::eoi();
}
