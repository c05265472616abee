//! The spanalloc test kernel.
//!
//! Boots through bootloader 0.11 on the first CPU, sets the CPU up (serial, GDT/TSS, IDT), reads its command
//! line from QEMU's fw_cfg, takes memory over (spanalloc becomes the heap), then runs what the command line
//! asks for (the demo, the test list, or one in-kernel test) and ends QEMU with a pass or fail exit code.
//!
//! Invariant: nothing allocates before [`memory::take_over`]; the heap has no memory until then.
#![no_std]
#![no_main]
#![feature(abi_x86_interrupt)]
// `#[rustc_align]` on the benchmark's functions (bench.rs).
#![feature(fn_align)]

extern crate alloc;

mod acpi;
mod apic;
mod bench;
mod clock;
mod cmdline;
mod demo;
mod fw_cfg;
mod gc;
mod gc_demo;
mod gdt;
mod heap;
mod heapprofile;
mod interrupts;
mod ktest;
mod logger;
mod memory;
mod panic;
mod percpu;
mod pic;
mod platform;
mod probe;
mod qemu;
mod serial;
mod smp;
mod tests;
mod timer;

use bootloader_api::config::{BootloaderConfig, Mapping};
use bootloader_api::BootInfo;
use cmdline::Command;

/// The physical-memory mapping is what lets the kernel (and later the allocator) reach any frame.
pub static CONFIG: BootloaderConfig = {
    let mut config = BootloaderConfig::new_default();
    config.mappings.physical_memory = Some(Mapping::Dynamic);
    config
};

bootloader_api::entry_point!(kernel_main, config = &CONFIG);

fn kernel_main(boot_info: &'static mut BootInfo) -> ! {
    // First: the heap (and anything per-CPU) finds the current CPU through GS.
    percpu::install(0);
    percpu::mark_stack_top();
    serial::init();
    gdt::init();
    interrupts::init();

    let mut cmdline_buf: cmdline::Buffer = [0; cmdline::MAX_LEN];
    let raw_cmdline = cmdline::load(&mut cmdline_buf);
    let cmdline = match cmdline::parse(raw_cmdline) {
        Ok(cmdline) => cmdline,
        Err(err) => {
            println!("error: bad kernel command line `{raw_cmdline}`: {err}");
            println!("usage: {}", cmdline::USAGE);
            qemu::exit(qemu::ExitCode::Failure);
        }
    };
    logger::init(cmdline.log_level);
    gc::set_trace(cmdline.gctrace);
    println!(
        "spanalloc kernel {} booted; command line `{raw_cmdline}`",
        env!("CARGO_PKG_VERSION")
    );

    let report = memory::take_over(boot_info);
    println!("{}", report.map);
    heapprofile::KERNEL_IMAGE_OFFSET.store(
        boot_info.kernel_image_offset,
        core::sync::atomic::Ordering::Relaxed,
    );
    heap::start_sampling(&cmdline);
    clock::init();
    smp::init(boot_info, &report);

    let cpus = fw_cfg::cpu_count().unwrap_or(1);
    match cmdline.command {
        Command::Demo => demo::run(boot_info, &report, cpus),
        Command::List => ktest::list(tests::TESTS),
        Command::Bench { quick } => bench::run(quick),
        Command::HeapProfile => heapprofile::run(boot_info),
        Command::Test(name) => {
            let mut ctx = ktest::TestCtx {
                boot_info,
                memory: &report,
                cpus,
            };
            ktest::run(tests::TESTS, name, &mut ctx)
        }
    }
}
