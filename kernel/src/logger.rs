//! The `log` backend: records at or above the level chosen on the command line (`log=<level>`) go to serial.
//!
//! Invariant: installed once, after the command line is parsed; records logged before that are dropped by
//! the `log` crate (its default logger is a no-op).

use core::fmt::{self, Write};
use log::{LevelFilter, Log, Metadata, Record};

struct SerialLogger;

static LOGGER: SerialLogger = SerialLogger;

impl Log for SerialLogger {
    fn enabled(&self, metadata: &Metadata) -> bool {
        metadata.level() <= log::max_level()
    }

    fn log(&self, record: &Record) {
        if self.enabled(record.metadata()) {
            crate::println!(
                "[{:<5}] {}: {}",
                record.level(),
                record.target(),
                record.args()
            );
        }
    }

    fn flush(&self) {}
}

pub fn init(level: LevelFilter) {
    if log::set_logger(&LOGGER).is_err() {
        log::warn!("logger already installed; keeping it");
    }
    log::set_max_level(level);
}

/// Shows a multi-line `Display` (a report ending in a newline) inside one log record: each line after the
/// first is indented, and the trailing newline is dropped. Formats straight through, never allocating.
pub struct Block<'a, T: fmt::Display>(pub &'a T);

impl<T: fmt::Display> fmt::Display for Block<'_, T> {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        let mut out = Indent {
            out: f,
            pending_newline: false,
        };
        write!(out, "\n{}", self.0)
    }
}

/// Holds back each newline until more text follows, so a trailing one is never written.
struct Indent<'a, 'b> {
    out: &'a mut fmt::Formatter<'b>,
    pending_newline: bool,
}

impl fmt::Write for Indent<'_, '_> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        for (i, line) in s.split('\n').enumerate() {
            if i > 0 {
                self.pending_newline = true;
            }
            if line.is_empty() {
                continue;
            }
            if self.pending_newline {
                self.out.write_str("\n    ")?;
                self.pending_newline = false;
            }
            self.out.write_str(line)?;
        }
        Ok(())
    }
}
