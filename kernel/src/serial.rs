//! The serial console on COM1, where every byte of kernel output goes (QEMU maps it to its stdout).
//!
//! Invariants:
//! - [`SERIAL`] is only ever locked with interrupts masked on this CPU, so an interrupt handler can never spin
//!   on a lock that the code it interrupted holds.
//! - Fatal paths (panic, fatal exceptions) print through [`_print_emergency`], which never blocks: it waits a
//!   bounded time for the lock and then writes to the UART directly, accepting interleaved output over a hang.

use core::fmt::{self, Write};
use spin::Mutex;
use uart_16550::SerialPort;

const COM1: u16 = 0x3f8;

/// How many times a fatal path retries the lock before bypassing it; long enough for another CPU to finish a
/// line, short enough not to matter when the holder is the faulting code itself.
const EMERGENCY_LOCK_ATTEMPTS: usize = 1_000_000;

// SAFETY: COM1 is a standard 16550 at 0x3f8 on every machine QEMU emulates; this is the only owner of it
// apart from the emergency path, which knowingly shares it.
static SERIAL: Mutex<SerialPort> = Mutex::new(unsafe { SerialPort::new(COM1) });

/// Programs the UART (baud rate, FIFO); call once, before the first print.
pub fn init() {
    x86_64::instructions::interrupts::without_interrupts(|| SERIAL.lock().init());
}

#[doc(hidden)]
pub fn _print(args: fmt::Arguments) {
    x86_64::instructions::interrupts::without_interrupts(|| {
        // A serial port cannot fail to accept bytes; the Result only carries fmt errors of the arguments.
        let _ = SERIAL.lock().write_fmt(args);
    });
}

#[doc(hidden)]
pub fn _print_emergency(args: fmt::Arguments) {
    x86_64::instructions::interrupts::without_interrupts(|| {
        for _ in 0..EMERGENCY_LOCK_ATTEMPTS {
            if let Some(mut port) = SERIAL.try_lock() {
                let _ = port.write_fmt(args);
                return;
            }
            core::hint::spin_loop();
        }
        // SAFETY: the UART was initialized by `init` (or this is so early that output is lost anyway); a second
        // handle only risks interleaving bytes with the lock holder, which is what a fatal path accepts.
        let mut port = unsafe { SerialPort::new(COM1) };
        let _ = port.write_fmt(args);
    });
}

/// Prints to the serial console.
#[macro_export]
macro_rules! print {
    ($($arg:tt)*) => ($crate::serial::_print(format_args!($($arg)*)));
}

/// Prints a line to the serial console.
#[macro_export]
macro_rules! println {
    () => ($crate::print!("\n"));
    ($($arg:tt)*) => ($crate::serial::_print(format_args!("{}\n", format_args!($($arg)*))));
}

/// Prints a line from a fatal path (panic, fatal exception) without ever blocking on the console lock.
#[macro_export]
macro_rules! emergency_println {
    ($($arg:tt)*) => ($crate::serial::_print_emergency(format_args!("{}\n", format_args!($($arg)*))));
}
