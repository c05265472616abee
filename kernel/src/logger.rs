//! The `log` backend: records at or above the level chosen on the command line (`log=<level>`) go to serial.
//!
//! Invariant: installed once, after the command line is parsed; records logged before that are dropped by
//! the `log` crate (its default logger is a no-op).

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
