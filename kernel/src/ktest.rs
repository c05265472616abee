//! The in-kernel test framework: a static registry of tests (see [`crate::tests`]), each run alone in its own
//! boot (`test <name>` on the command line) so that one test's crash cannot hide another's result.
//!
//! Output protocol, read by the host tests: `list` prints `TEST <name> min_cpus=<n>` per test; a run prints
//! `RUN <name>`, then `PASS <name>` (QEMU exits with success) or `FAIL <name>: <reason>` (failure).
//!
//! Invariant: [`RUNNING`] names the test in progress from just before its function is called until the boot
//! ends, so the panic handler knows whether a panic was expected.

use crate::memory::MemoryReport;
use crate::{emergency_println, println, qemu};
use bootloader_api::BootInfo;
use spin::Mutex;

/// What a test gets to work with.
pub struct TestCtx<'a> {
    pub boot_info: &'a BootInfo,
    pub memory: &'a MemoryReport,
    /// CPUs the machine has (QEMU's `-smp`); SMP bring-up has started all it could before the test.
    pub cpus: usize,
}

/// One registered test; build with [`KernelTest::new`] and the `const` modifiers.
#[derive(Debug, Clone, Copy)]
pub struct KernelTest {
    pub name: &'static str,
    pub run: fn(&mut TestCtx),
    /// The test passes only if it panics with a message containing this substring.
    pub should_panic: Option<&'static str>,
    /// Fewer CPUs than this and the test fails without running; the host boots it with at least this many.
    pub min_cpus: usize,
}

impl KernelTest {
    pub const fn new(name: &'static str, run: fn(&mut TestCtx)) -> Self {
        Self {
            name,
            run,
            should_panic: None,
            min_cpus: 1,
        }
    }

    pub const fn should_panic(self, expected: &'static str) -> Self {
        Self {
            should_panic: Some(expected),
            ..self
        }
    }

    pub const fn min_cpus(self, cpus: usize) -> Self {
        Self {
            min_cpus: cpus,
            ..self
        }
    }
}

static RUNNING: Mutex<Option<KernelTest>> = Mutex::new(None);

pub fn list(tests: &[KernelTest]) -> ! {
    for test in tests {
        println!("TEST {} min_cpus={}", test.name, test.min_cpus);
    }
    qemu::exit(qemu::ExitCode::Success)
}

/// Runs the test called `name` and ends the boot with its verdict.
pub fn run(tests: &[KernelTest], name: &str, ctx: &mut TestCtx) -> ! {
    let Some(test) = tests.iter().find(|test| test.name == name) else {
        println!("FAIL {name}: no such test (the `list` command prints the registered tests)");
        qemu::exit(qemu::ExitCode::Failure);
    };
    if ctx.cpus < test.min_cpus {
        println!(
            "FAIL {name}: needs at least {} CPUs, the machine has {} (run with --smp {})",
            test.min_cpus, ctx.cpus, test.min_cpus
        );
        qemu::exit(qemu::ExitCode::Failure);
    }
    println!("RUN {name}");
    *RUNNING.lock() = Some(*test);
    (test.run)(ctx);
    match test.should_panic {
        Some(expected) => {
            println!("FAIL {name}: returned without panicking (expected a panic containing \"{expected}\")");
            qemu::exit(qemu::ExitCode::Failure)
        }
        None => {
            println!("PASS {name}");
            qemu::exit(qemu::ExitCode::Success)
        }
    }
}

/// Called by the panic handler with (the start of) the panic message; ends the boot with the verdict.
pub fn on_panic(message: &str) -> ! {
    // try_lock: the panic may have struck while this CPU held the lock; then no test verdict is possible.
    let running = RUNNING.try_lock().and_then(|running| *running);
    match running {
        Some(KernelTest {
            name,
            should_panic: Some(expected),
            ..
        }) if message.contains(expected) => {
            emergency_println!(
                "PASS {name} (panicked as expected: message contains \"{expected}\")"
            );
            qemu::exit(qemu::ExitCode::Success)
        }
        Some(KernelTest {
            name,
            should_panic: Some(expected),
            ..
        }) => {
            emergency_println!(
                "FAIL {name}: panic message does not contain the expected \"{expected}\""
            );
            qemu::exit(qemu::ExitCode::Failure)
        }
        Some(KernelTest { name, .. }) => {
            emergency_println!("FAIL {name}: panicked");
            qemu::exit(qemu::ExitCode::Failure)
        }
        None => qemu::exit(qemu::ExitCode::Failure),
    }
}
