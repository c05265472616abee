//! The panic handler: reports the panic and ends QEMU; if the running test expects this panic (its
//! `should_panic` substring is in the message), ends it with success instead (see [`ktest`](crate::ktest)).
//!
//! Out of memory: `alloc`'s default handler for a failed allocation (`handle_alloc_error`, used by `Box`,
//! `Vec` and friends when the heap returns null) panics with "memory allocation of N bytes failed". The
//! handler recognizes that message and prints the heap's statistics before reporting, so an exhausted heap
//! shows where its memory went.
//!
//! Invariants: the handler never allocates (the heap may be what panicked) and never blocks on the console
//! lock; a panic inside the handler ends QEMU with failure at once. It takes the heap's lock (for the
//! statistics) only for an allocation failure, which the heap reports after releasing all its locks.

use crate::heap::HEAP;
use crate::{emergency_println, ktest, qemu};
use core::fmt::{self, Write};
use core::panic::PanicInfo;
use core::sync::atomic::{AtomicBool, Ordering};

static PANICKING: AtomicBool = AtomicBool::new(false);

/// Room for the part of the message that `should_panic` substrings are matched against (the whole message
/// is printed regardless).
const MESSAGE_CAPACITY: usize = 512;

/// Formats into a fixed buffer, keeping the first `MESSAGE_CAPACITY` bytes (cut at a char boundary).
struct MessageBuf {
    bytes: [u8; MESSAGE_CAPACITY],
    len: usize,
}

impl MessageBuf {
    fn as_str(&self) -> &str {
        match core::str::from_utf8(&self.bytes[..self.len]) {
            Ok(text) => text,
            // `write_str` only copies whole chars, so this cannot happen; keep the valid prefix regardless.
            Err(err) => core::str::from_utf8(&self.bytes[..err.valid_up_to()]).unwrap_or(""),
        }
    }
}

impl Write for MessageBuf {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        for c in s.chars() {
            let mut utf8 = [0; 4];
            let encoded = c.encode_utf8(&mut utf8).as_bytes();
            if self.len + encoded.len() > MESSAGE_CAPACITY {
                return Ok(());
            }
            self.bytes[self.len..self.len + encoded.len()].copy_from_slice(encoded);
            self.len += encoded.len();
        }
        Ok(())
    }
}

#[panic_handler]
fn panic(info: &PanicInfo) -> ! {
    x86_64::instructions::interrupts::disable();
    if PANICKING.swap(true, Ordering::SeqCst) {
        emergency_println!("PANIC while panicking: {}", info.message());
        qemu::exit(qemu::ExitCode::Failure);
    }
    match info.location() {
        Some(location) => emergency_println!("PANIC at {location}: {}", info.message()),
        None => emergency_println!("PANIC: {}", info.message()),
    }
    let mut message = MessageBuf {
        bytes: [0; MESSAGE_CAPACITY],
        len: 0,
    };
    let _ = write!(message, "{}", info.message());
    if is_allocation_failure(message.as_str()) {
        emergency_println!(
            "heap statistics at the failed allocation:\n{}",
            HEAP.stats()
        );
    }
    ktest::on_panic(message.as_str())
}

/// Whether `message` is the panic of `alloc`'s default allocation-error handler.
fn is_allocation_failure(message: &str) -> bool {
    message
        .strip_prefix("memory allocation of ")
        .and_then(|rest| rest.strip_suffix(" bytes failed"))
        .is_some_and(|size| !size.is_empty() && size.bytes().all(|b| b.is_ascii_digit()))
}
