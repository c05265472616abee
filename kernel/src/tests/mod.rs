//! The in-kernel test registry. Adding a test: write `fn name(ctx: &mut TestCtx)` in a module here and add
//! one line to [`TESTS`]; the host's `cargo test` picks it up as `kernel::<name>` through the `list` command.

mod arena;
mod bad_free;
mod boot_info;
mod faults;
mod frames;
mod gc;
mod guard;
mod heap;
mod panics;
mod smp;
pub mod workload;

use crate::ktest::KernelTest;

pub static TESTS: &[KernelTest] = &[
    KernelTest::new("boot_info", boot_info::boot_info),
    KernelTest::new("page_fault_is_observed", faults::page_fault_is_observed),
    KernelTest::new("breakpoint_resumes", faults::breakpoint_resumes),
    KernelTest::new("panic_is_reported", panics::panic_is_reported)
        .should_panic(panics::EXPECTED_MESSAGE),
    // Memory take-over: frames, page tables, the heap window.
    KernelTest::new("frames_all_then_free", frames::frames_all_then_free),
    KernelTest::new("arena_map_write_read", arena::arena_map_write_read),
    KernelTest::new(
        "unmapped_arena_page_faults",
        arena::unmapped_arena_page_faults,
    ),
    // The span heap as the global allocator.
    KernelTest::new("global_alloc_collections", heap::global_alloc_collections),
    KernelTest::new("random_workload_1m", heap::random_workload_1m),
    KernelTest::new("frames_return_to_baseline", heap::frames_return_to_baseline),
    KernelTest::new(
        "out_of_memory_returns_null",
        heap::out_of_memory_returns_null,
    ),
    KernelTest::new("allocation_failure_panics", heap::allocation_failure_panics)
        .should_panic(heap::ALLOCATION_FAILURE),
    KernelTest::new(
        "bad_free_foreign_pointer",
        bad_free::bad_free_foreign_pointer,
    )
    .should_panic(bad_free::FOREIGN_POINTER),
    KernelTest::new("bad_free_wrong_layout", bad_free::bad_free_wrong_layout)
        .should_panic(bad_free::WRONG_LAYOUT),
    KernelTest::new("bad_free_double_large", bad_free::bad_free_double_large)
        .should_panic(bad_free::DOUBLE_FREE_LARGE),
    KernelTest::new("bad_free_double_small", bad_free::bad_free_double_small)
        .should_panic(bad_free::DOUBLE_FREE_SMALL),
    KernelTest::new("bad_free_interior_small", bad_free::bad_free_interior_small)
        .should_panic(bad_free::INTERIOR_SMALL),
    // Heap sampling: guard pages (faults and canaries reported) and the profile, under the workload.
    KernelTest::new("guard_overflow_faults", guard::guard_overflow_faults)
        .should_panic(guard::OVERFLOW),
    KernelTest::new(
        "guard_use_after_free_faults",
        guard::guard_use_after_free_faults,
    )
    .should_panic(guard::USE_AFTER_FREE),
    KernelTest::new(
        "guard_canary_damage_at_free",
        guard::guard_canary_damage_at_free,
    )
    .should_panic(guard::CANARY),
    KernelTest::new(
        "sampling_workload_unchanged",
        guard::sampling_workload_unchanged,
    ),
    // The garbage-collected heap (spanalloc::gc) on the kernel's span heap.
    KernelTest::new("gc_stw_64mib", gc::gc_stw_64mib),
    KernelTest::new("gc_incremental_64mib", gc::gc_incremental_64mib),
    KernelTest::new("gc_parallel_64mib", gc::gc_parallel_64mib).min_cpus(4),
    KernelTest::new("gc_concurrent_64mib", gc::gc_concurrent_64mib).min_cpus(4),
    KernelTest::new("gc_per_cpu_heaps", gc::gc_per_cpu_heaps).min_cpus(4),
    // SMP: every CPU up, and the heap under real concurrency (booted with 4 CPUs, QEMU's default here).
    KernelTest::new("smp_all_cpus_online", smp::smp_all_cpus_online).min_cpus(4),
    KernelTest::new("smp_concurrent_alloc", smp::smp_concurrent_alloc).min_cpus(4),
    KernelTest::new("smp_remote_free", smp::smp_remote_free).min_cpus(4),
    KernelTest::new(
        "smp_alloc_in_timer_interrupt",
        smp::smp_alloc_in_timer_interrupt,
    )
    .min_cpus(4),
    KernelTest::new(
        "interrupts_inside_the_fast_path",
        smp::interrupts_inside_the_fast_path,
    ),
    KernelTest::new(
        "smp_unmap_while_others_allocate",
        smp::smp_unmap_while_others_allocate,
    )
    .min_cpus(4),
    KernelTest::new(
        "smp_frames_return_to_baseline",
        smp::smp_frames_return_to_baseline,
    )
    .min_cpus(4),
];
