//! TLB shootdown by NMI: after the heap unmaps pages, every other online CPU drops its translations of
//! them before the frames are reused.
//!
//! Why an NMI and not an ordinary interrupt vector: the initiator runs with interrupts masked and holding
//! the heap lock (the heap calls `Platform::pages_unmapped` from inside its critical section), and waits for
//! every other CPU to acknowledge. Any other CPU may at that moment be spinning, interrupts masked, on the
//! very same heap lock, or on the console lock, or on any other lock taken with interrupts masked: an
//! ordinary IPI would never be taken there and the two CPUs would wait for each other forever. An NMI is
//! taken whatever the interrupt flag says, so every online CPU acknowledges within a few instructions,
//! wherever it is spinning, with no hook in any lock.
//!
//! The price of running at NMI level: the handler may interrupt any code, holding any lock, in the middle
//! of any data-structure update. So it takes no lock, allocates nothing and prints nothing: it reads the
//! request slot, invalidates, and acknowledges with atomics.
//!
//! Invariants:
//! - One request at a time: [`LOCK`] is held from writing the slot until every target acknowledged, so the
//!   slot a handler reads belongs to the request that flagged it. (Waiting for `LOCK` is safe: the waiter
//!   still takes NMIs.)
//! - A CPU is targeted iff its bit is in the online mask when the request is made. A CPU sets its bit only
//!   after its GDT, GS base and IDT are loaded (so it can take the NMI) and before it touches the heap, and
//!   the initiator reads the mask after its page-table edits (a SeqCst fence between): a CPU it does not
//!   target comes online after the edits and cannot have cached the old translations.
//! - `shootdown_pending` of a CPU is set by the initiator (Release, after the slot is written) and cleared by
//!   that CPU's handler (after invalidating), which then counts one acknowledgement.

use super::bits;
use crate::clock::Instant;
use crate::platform::{flush_local, PLATFORM};
use crate::{apic, percpu};
use core::sync::atomic::{fence, AtomicU64, AtomicUsize, Ordering};
use core::time::Duration;
use spanalloc::addr::{Page, VirtAddr};
use spanalloc::Platform;
use spin::Mutex;
use x86_64::structures::idt::InterruptStackFrame;

/// A CPU that takes longer than this to acknowledge an NMI is considered dead: the initiator panics.
const ACK_TIMEOUT: Duration = Duration::from_secs(5);

static LOCK: Mutex<()> = Mutex::new(());
static START: AtomicU64 = AtomicU64::new(0);
static COUNT: AtomicU64 = AtomicU64::new(0);
static ACKS: AtomicUsize = AtomicUsize::new(0);
/// Requests that went to at least one other CPU.
static REQUESTS: AtomicU64 = AtomicU64::new(0);
/// NMIs that carried no shootdown (from outside the kernel: QEMU's monitor, a watchdog).
static OTHER_NMIS: AtomicU64 = AtomicU64::new(0);

/// Shootdown requests sent to other CPUs so far.
pub fn requests() -> u64 {
    REQUESTS.load(Ordering::Relaxed)
}

/// NMIs taken that were not shootdowns.
pub fn other_nmis() -> u64 {
    OTHER_NMIS.load(Ordering::Relaxed)
}

/// Makes every other online CPU drop its translations of `count` pages from `start`; returns when all
/// have. Panics naming the CPUs that did not answer within [`ACK_TIMEOUT`].
pub fn shoot_down_others(start: Page, count: u64) {
    // The caller's page-table edits happen before the online mask is read (module invariants).
    fence(Ordering::SeqCst);
    let me = percpu::current_index();
    if super::online_mask() & !(1 << me) == 0 {
        return;
    }
    // Masked while holding LOCK: an interrupt handler that allocates could unmap and come back here.
    let _irq = PLATFORM.mask_interrupts();
    let _request = LOCK.lock();
    START.store(start.start_address().as_u64(), Ordering::Relaxed);
    COUNT.store(count, Ordering::Relaxed);
    ACKS.store(0, Ordering::Relaxed);
    let targets = super::online_mask() & !(1 << me);
    let mut sent = 0;
    for cpu in bits(targets) {
        let block = percpu::get(cpu);
        block.shootdown_pending.store(true, Ordering::Release);
        let apic_id = block.apic_id.load(Ordering::Relaxed);
        if let Err(err) = apic::send_nmi(apic_id) {
            panic!(
                "smp: TLB shootdown of {count} pages from {:#x} to CPU {cpu}: {err}",
                start.start_address().as_u64()
            );
        }
        sent += 1;
    }
    REQUESTS.fetch_add(1, Ordering::Relaxed);
    let began = Instant::now();
    while ACKS.load(Ordering::Acquire) < sent {
        if began.elapsed() > ACK_TIMEOUT {
            let missing = bits(targets)
                .filter(|&cpu| percpu::get(cpu).shootdown_pending.load(Ordering::Acquire))
                .fold(0u64, |mask, cpu| mask | 1 << cpu);
            panic!(
                "smp: TLB shootdown of {count} pages from {:#x}: CPUs {missing:#b} (bit = index) did not \
                 acknowledge within {} s",
                start.start_address().as_u64(),
                ACK_TIMEOUT.as_secs()
            );
        }
        core::hint::spin_loop();
    }
}

/// The NMI handler: serves this CPU's pending shootdown, if any (see the module documentation for what it
/// may and may not do).
pub extern "x86-interrupt" fn nmi(_frame: InterruptStackFrame) {
    let cpu = percpu::current();
    if !cpu.shootdown_pending.load(Ordering::Acquire) {
        OTHER_NMIS.fetch_add(1, Ordering::Relaxed);
        return;
    }
    let start = Page::containing_address(VirtAddr::new(START.load(Ordering::Relaxed)));
    flush_local(start, COUNT.load(Ordering::Relaxed));
    cpu.shootdowns.fetch_add(1, Ordering::Relaxed);
    cpu.shootdown_pending.store(false, Ordering::Release);
    ACKS.fetch_add(1, Ordering::Release);
}
