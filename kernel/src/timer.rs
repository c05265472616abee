//! The local APIC timer: a periodic interrupt on every CPU, whose handler counts ticks and **allocates and
//! frees** (a small `Vec`), so that the heap's per-CPU caches are used from interrupt context for real,
//! interleaved with whatever allocation-heavy code the interrupt lands in.
//!
//! Invariants:
//! - [`calibrate`] runs once on the boot CPU (after `clock::init`, before any CPU starts its timer); every
//!   CPU's timer then uses the same count, so all tick at [`HZ`] (roughly: QEMU's timers are host-timed).
//! - The handler touches only its own CPU's block and the heap (which an interrupt handler may use at any
//!   point of the code it interrupts), and ends with an EOI; it never blocks on a lock that code it
//!   interrupts could hold.
//! - With [`set_hold_in_handler`] on, the handler also keeps one block from each tick to the next (in its
//!   CPU's block): it checks and frees the previous tick's block and allocates the next. Only the handler
//!   of that CPU touches it, and the CPU's own code once holding is off ([`take_held`]).

use crate::{apic, percpu};
use alloc::boxed::Box;
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

/// Whether the handler keeps a block from one tick to the next (see the module invariants).
static HOLD_IN_HANDLER: AtomicBool = AtomicBool::new(false);

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

/// Turns the held block on or off; returns the previous setting. Each CPU then takes back the block its
/// handler still holds with [`take_held`].
pub fn set_hold_in_handler(on: bool) -> bool {
    HOLD_IN_HANDLER.swap(on, Ordering::SeqCst)
}

/// The block this CPU's handler holds: checked against its tag and freed; returns its words (0 if none).
/// Called by the handler itself, and by the CPU's own code once holding is off (no later handler on this
/// CPU touches the block then, and none can run in the middle of this CPU's code and then see it on).
pub fn take_held() -> usize {
    let cpu = percpu::current();
    let p = cpu
        .timer_held
        .swap(core::ptr::null_mut(), Ordering::Relaxed);
    let Some(p) = core::ptr::NonNull::new(p) else {
        return 0;
    };
    let words = cpu.timer_held_words.load(Ordering::Relaxed);
    let tag = cpu.timer_held_tag.load(Ordering::Relaxed);
    // SAFETY: the handler leaked a boxed slice of `words` u64s at `p` into the per-CPU slot; we took it out
    // of the slot, so it is ours alone.
    let v = unsafe { Box::from_raw(core::ptr::slice_from_raw_parts_mut(p.as_ptr(), words)) };
    assert!(
        v.iter().enumerate().all(|(i, &w)| w == tag ^ i as u64),
        "timer: the block the handler held on CPU {} changed between ticks",
        cpu.index()
    );
    words
}

/// One tick's held block: the previous one checked and freed, a new one allocated.
fn hold(cpu: &percpu::PerCpu, tick: u64) {
    take_held();
    let len = 1 + (tick.wrapping_mul(7) % 64) as usize;
    let tag = tick.wrapping_mul(0x5851_f42d_4c95_7f2d) ^ cpu.index() as u64;
    let words: Box<[u64]> = (0..len as u64).map(|i| tag ^ i).collect();
    cpu.timer_held_words.store(words.len(), Ordering::Relaxed);
    cpu.timer_held_tag.store(tag, Ordering::Relaxed);
    cpu.timer_held
        .store(Box::into_raw(words).cast::<u64>(), Ordering::Relaxed);
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
        if HOLD_IN_HANDLER.load(Ordering::Relaxed) {
            hold(cpu, tick);
        }
        cpu.timer_allocs.fetch_add(1, Ordering::Relaxed);
        if cpu.in_alloc_loop.load(Ordering::Acquire) {
            cpu.timer_allocs_in_loop.fetch_add(1, Ordering::Relaxed);
        }
    }
    apic::eoi();
}
