//! The local APIC in xAPIC mode (memory-mapped registers; QEMU's TCG has no x2APIC): this CPU's id, the
//! end-of-interrupt register, inter-processor interrupts through the ICR, and the timer.
//!
//! Invariants:
//! - Every CPU sees its own local APIC at the same physical address, so one mapping ([`BASE`], set once by
//!   [`init`] on the boot CPU from the APIC base MSR, through the physical-memory mapping) serves all.
//! - The ICR is written high half (destination) first, low half (command) second, with interrupts masked in
//!   between, so an interrupt handler that sends an IPI cannot retarget a half-written one. NMIs handlers
//!   never send IPIs.
//! - Only registers are touched; nothing here allocates, so interrupt and NMI handlers may call [`eoi`].

use crate::clock::Instant;
use core::sync::atomic::{AtomicU64, Ordering};
use core::time::Duration;
use x86_64::registers::model_specific::Msr;
use x86_64::structures::idt::InterruptStackFrame;
use x86_64::VirtAddr;

const APIC_BASE_MSR: u32 = 0x1b;
const APIC_BASE_ENABLE: u64 = 1 << 11;
const APIC_BASE_ADDR_MASK: u64 = 0x000f_ffff_ffff_f000;

const REG_ID: usize = 0x20;
const REG_TPR: usize = 0x80;
const REG_EOI: usize = 0xb0;
const REG_SVR: usize = 0xf0;
const REG_ESR: usize = 0x280;
const REG_ICR_LOW: usize = 0x300;
const REG_ICR_HIGH: usize = 0x310;
const REG_LVT_TIMER: usize = 0x320;
const REG_TIMER_INITIAL: usize = 0x380;
const REG_TIMER_CURRENT: usize = 0x390;
const REG_TIMER_DIVIDE: usize = 0x3e0;

const SVR_APIC_ENABLE: u32 = 1 << 8;
const ICR_DELIVERY_PENDING: u32 = 1 << 12;
const ICR_LEVEL_ASSERT: u32 = 1 << 14;
const ICR_FIXED: u32 = 0b000 << 8;
const ICR_NMI: u32 = 0b100 << 8;
const ICR_INIT: u32 = 0b101 << 8;
const ICR_STARTUP: u32 = 0b110 << 8;
const LVT_MASKED: u32 = 1 << 16;
const LVT_TIMER_PERIODIC: u32 = 1 << 17;
/// Divide configuration 0b0011: the timer counts at the bus clock / 16.
const TIMER_DIVIDE_16: u32 = 0b0011;

/// Spurious-interrupt vector; its handler does nothing (no EOI, by the APIC's rules).
pub const SPURIOUS_VECTOR: u8 = 0xff;

/// How long an IPI may stay "send pending" before the sender gives up on the APIC.
const ICR_IDLE_TIMEOUT: Duration = Duration::from_millis(100);

/// Virtual address of the local APIC's registers; 0 before [`init`].
static BASE: AtomicU64 = AtomicU64::new(0);

/// Why an IPI was not sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IpiError {
    pub dest_apic_id: u32,
    pub command: u32,
}

impl core::fmt::Display for IpiError {
    fn fmt(&self, f: &mut core::fmt::Formatter) -> core::fmt::Result {
        write!(
            f,
            "apic: IPI {:#x} to APIC id {} still pending after {} ms",
            self.command,
            self.dest_apic_id,
            ICR_IDLE_TIMEOUT.as_millis()
        )
    }
}

/// Finds the local APIC (boot CPU, once, after memory take-over) and enables it on this CPU. Returns the
/// registers' physical address.
pub fn init(phys_offset: VirtAddr) -> u64 {
    // SAFETY: reading IA32_APIC_BASE has no side effect; every x86_64 CPU has it.
    let msr = unsafe { Msr::new(APIC_BASE_MSR).read() };
    let phys = msr & APIC_BASE_ADDR_MASK;
    BASE.store((phys_offset + phys).as_u64(), Ordering::Release);
    enable();
    phys
}

fn reg(offset: usize) -> *mut u32 {
    let base = BASE.load(Ordering::Acquire);
    assert!(
        base != 0,
        "apic: register {offset:#x} used before apic::init"
    );
    (base as usize + offset) as *mut u32
}

fn read(offset: usize) -> u32 {
    // SAFETY: `reg` points into the local APIC's 4 KiB register page, mapped by the physical-memory mapping
    // (which covers the first 4 GiB); APIC registers are read as aligned 32-bit words.
    unsafe { reg(offset).read_volatile() }
}

fn write(offset: usize, value: u32) {
    // SAFETY: as in `read`; the callers write values the register's definition allows.
    unsafe { reg(offset).write_volatile(value) }
}

/// Enables this CPU's local APIC (globally through the MSR, then software-enabled through the SVR) and lets
/// every interrupt priority through.
pub fn enable() {
    let mut msr = Msr::new(APIC_BASE_MSR);
    // SAFETY: setting the global-enable bit of IA32_APIC_BASE, keeping its address, only switches the APIC on
    // (xAPIC mode: the x2APIC bit stays as the firmware left it, clear under TCG).
    unsafe {
        let value = msr.read();
        msr.write(value | APIC_BASE_ENABLE);
    }
    write(REG_TPR, 0);
    write(REG_SVR, SVR_APIC_ENABLE | u32::from(SPURIOUS_VECTOR));
    // The error status register latches errors; a write re-arms it.
    write(REG_ESR, 0);
}

/// This CPU's local APIC id.
pub fn id() -> u32 {
    read(REG_ID) >> 24
}

/// Signals the end of the interrupt being handled (not for NMIs or spurious interrupts).
pub fn eoi() {
    write(REG_EOI, 0);
}

fn send(dest_apic_id: u32, command: u32) -> Result<(), IpiError> {
    let error = IpiError {
        dest_apic_id,
        command,
    };
    let wait_idle = || {
        let start = Instant::now();
        while read(REG_ICR_LOW) & ICR_DELIVERY_PENDING != 0 {
            if start.elapsed() > ICR_IDLE_TIMEOUT {
                return Err(error);
            }
            core::hint::spin_loop();
        }
        Ok(())
    };
    x86_64::instructions::interrupts::without_interrupts(|| {
        wait_idle()?;
        write(REG_ICR_HIGH, dest_apic_id << 24);
        write(REG_ICR_LOW, command);
        wait_idle()
    })
}

/// INIT: resets the target into its wait-for-startup state.
pub fn send_init(dest_apic_id: u32) -> Result<(), IpiError> {
    send(dest_apic_id, ICR_INIT | ICR_LEVEL_ASSERT)
}

/// STARTUP: the target, waiting after INIT, starts in real mode at `page_number * 4096`.
pub fn send_startup(dest_apic_id: u32, page_number: u8) -> Result<(), IpiError> {
    send(
        dest_apic_id,
        ICR_STARTUP | ICR_LEVEL_ASSERT | u32::from(page_number),
    )
}

/// An NMI: delivered even while the target has interrupts masked.
pub fn send_nmi(dest_apic_id: u32) -> Result<(), IpiError> {
    send(dest_apic_id, ICR_NMI | ICR_LEVEL_ASSERT)
}

/// An ordinary interrupt on `vector`.
pub fn send_fixed(dest_apic_id: u32, vector: u8) -> Result<(), IpiError> {
    send(
        dest_apic_id,
        ICR_FIXED | ICR_LEVEL_ASSERT | u32::from(vector),
    )
}

/// Measures how many timer counts (at bus clock / 16) pass in `sample` (boot CPU, after clock::init).
pub fn timer_counts_per(sample: Duration) -> u32 {
    write(REG_TIMER_DIVIDE, TIMER_DIVIDE_16);
    write(REG_LVT_TIMER, LVT_MASKED);
    write(REG_TIMER_INITIAL, u32::MAX);
    let start = Instant::now();
    while start.elapsed() < sample {
        core::hint::spin_loop();
    }
    let counted = u32::MAX - read(REG_TIMER_CURRENT);
    write(REG_TIMER_INITIAL, 0);
    counted
}

/// Starts this CPU's timer: an interrupt on `vector` every `counts` timer counts.
pub fn start_periodic_timer(vector: u8, counts: u32) {
    write(REG_TIMER_DIVIDE, TIMER_DIVIDE_16);
    write(REG_LVT_TIMER, LVT_TIMER_PERIODIC | u32::from(vector));
    write(REG_TIMER_INITIAL, counts.max(1));
}

/// The spurious-interrupt handler: nothing to do, and no EOI (a spurious interrupt is not in service).
pub extern "x86-interrupt" fn spurious(_frame: InterruptStackFrame) {}
