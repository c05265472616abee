//! The legacy 8259 interrupt controllers, switched off: the kernel takes interrupts from the local APIC
//! only. Left as the firmware programmed them, they would deliver the PIT's IRQ 0 on vector 8, where the
//! CPU's double-fault handler sits, as soon as interrupts are enabled.
//!
//! Invariant: [`disable`] runs once on the boot CPU before interrupts are first enabled. It moves the PICs'
//! vectors to [`VECTOR_BASE`].. (clear of the CPU exceptions) and masks every line; a masked 8259 can still
//! raise a spurious IRQ 7 or 15, which lands on [`SPURIOUS_MASTER`] / [`SPURIOUS_SLAVE`] and is ignored.

use x86_64::instructions::port::Port;
use x86_64::structures::idt::InterruptStackFrame;

const MASTER_COMMAND: u16 = 0x20;
const MASTER_DATA: u16 = 0x21;
const SLAVE_COMMAND: u16 = 0xa0;
const SLAVE_DATA: u16 = 0xa1;
/// ICW1: initialization, ICW4 follows.
const ICW1_INIT: u8 = 0x11;
/// ICW4: 8086 mode.
const ICW4_8086: u8 = 0x01;

pub const VECTOR_BASE: u8 = 0x20;
pub const SPURIOUS_MASTER: u8 = VECTOR_BASE + 7;
pub const SPURIOUS_SLAVE: u8 = VECTOR_BASE + 15;

/// Remaps both PICs away from the exception vectors and masks all their lines.
pub fn disable() {
    let mut master_command = Port::<u8>::new(MASTER_COMMAND);
    let mut master_data = Port::<u8>::new(MASTER_DATA);
    let mut slave_command = Port::<u8>::new(SLAVE_COMMAND);
    let mut slave_data = Port::<u8>::new(SLAVE_DATA);
    // SAFETY: the 8259 initialization sequence on the standard PC ports; it only reprograms the PICs,
    // touching no memory, and ends with every line masked.
    unsafe {
        master_command.write(ICW1_INIT);
        slave_command.write(ICW1_INIT);
        master_data.write(VECTOR_BASE);
        slave_data.write(VECTOR_BASE + 8);
        // ICW3: the slave hangs off the master's line 2.
        master_data.write(1 << 2);
        slave_data.write(2);
        master_data.write(ICW4_8086);
        slave_data.write(ICW4_8086);
        master_data.write(0xff);
        slave_data.write(0xff);
    }
}

/// Handler for the PICs' spurious vectors: a spurious IRQ is not in service, so nothing to acknowledge.
pub extern "x86-interrupt" fn spurious(_frame: InterruptStackFrame) {}
