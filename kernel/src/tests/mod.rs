//! The in-kernel test registry. Adding a test: write `fn name(ctx: &mut TestCtx)` in a module here and add
//! one line to [`TESTS`]; the host's `cargo test` picks it up as `kernel::<name>` through the `list` command.

mod boot_info;
mod faults;
mod heap;
mod panics;

use crate::ktest::KernelTest;

pub static TESTS: &[KernelTest] = &[
    KernelTest::new("boot_info", boot_info::boot_info),
    KernelTest::new("page_fault_is_observed", faults::page_fault_is_observed),
    KernelTest::new("breakpoint_resumes", faults::breakpoint_resumes),
    KernelTest::new("panic_is_reported", panics::panic_is_reported)
        .should_panic(panics::EXPECTED_MESSAGE),
    KernelTest::new("heap_collections", heap::heap_collections),
];
