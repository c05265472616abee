//! The interrupt descriptor table: CPU exceptions the kernel handles.
//!
//! Invariants:
//! - Handlers that may run while the serial lock is held (any exception can) print only through
//!   `emergency_println!`.
//! - Fatal handlers never return: they report and end QEMU with failure. The page-fault handler is fatal
//!   except for faults of a [`probe`](crate::probe) read, which it turns into values; a fault on a
//!   guarded heap object (guard sampling) panics with the heap's report.
//! - The double-fault handler runs on its own IST stack (see [`gdt`](crate::gdt)).

use crate::{apic, emergency_println, gdt, pic, probe, qemu, smp, timer};
use core::sync::atomic::{AtomicU64, Ordering};
use spin::Lazy;
use x86_64::registers::control::Cr2;
use x86_64::structures::idt::{InterruptDescriptorTable, InterruptStackFrame, PageFaultErrorCode};
use x86_64::VirtAddr;

static IDT: Lazy<InterruptDescriptorTable> = Lazy::new(|| {
    let mut idt = InterruptDescriptorTable::new();
    idt.breakpoint.set_handler_fn(breakpoint);
    idt.general_protection_fault
        .set_handler_fn(general_protection);
    idt.page_fault.set_handler_fn(page_fault);
    idt.non_maskable_interrupt
        .set_handler_fn(smp::shootdown::nmi);
    idt[timer::VECTOR].set_handler_fn(timer::handler);
    idt[smp::work::WAKE_VECTOR].set_handler_fn(smp::work::wake);
    idt[apic::SPURIOUS_VECTOR].set_handler_fn(apic::spurious);
    idt[pic::SPURIOUS_MASTER].set_handler_fn(pic::spurious);
    idt[pic::SPURIOUS_SLAVE].set_handler_fn(pic::spurious);
    // SAFETY: the IST index names the stack gdt::init installed in the TSS, used by no other handler.
    unsafe {
        idt.double_fault
            .set_handler_fn(double_fault)
            .set_stack_index(gdt::DOUBLE_FAULT_IST_INDEX);
    }
    idt
});

static BREAKPOINTS: AtomicU64 = AtomicU64::new(0);

/// Loads the IDT on this CPU; call after [`gdt::init`].
pub fn init() {
    IDT.load();
}

/// How many breakpoint exceptions (`int3`) have been handled and resumed from.
pub fn breakpoint_count() -> u64 {
    BREAKPOINTS.load(Ordering::SeqCst)
}

extern "x86-interrupt" fn breakpoint(frame: InterruptStackFrame) {
    BREAKPOINTS.fetch_add(1, Ordering::SeqCst);
    log::debug!("breakpoint at {:#x}", frame.instruction_pointer.as_u64());
}

extern "x86-interrupt" fn double_fault(frame: InterruptStackFrame, error_code: u64) -> ! {
    emergency_println!("EXCEPTION: double fault (error code {error_code:#x})\n{frame:#?}");
    qemu::exit(qemu::ExitCode::Failure)
}

extern "x86-interrupt" fn general_protection(frame: InterruptStackFrame, error_code: u64) {
    emergency_println!(
        "EXCEPTION: general protection fault at ip {:#x} (error code {error_code:#x}, a non-zero code is a \
         segment selector)\n{frame:#?}",
        frame.instruction_pointer.as_u64()
    );
    qemu::exit(qemu::ExitCode::Failure)
}

extern "x86-interrupt" fn page_fault(
    mut frame: InterruptStackFrame,
    error_code: PageFaultErrorCode,
) {
    // A page fault always reports a canonical address in CR2 (non-canonical accesses raise #GP instead).
    let fault_addr = Cr2::read().unwrap_or(VirtAddr::zero());
    if probe::recover(&mut frame, fault_addr, error_code) {
        return;
    }
    // An access to a guarded object's guard page or freed page (heap guard sampling): the heap says what
    // it was. A panic, so that the report goes through the panic handler (and a test can expect it).
    if let Some(report) =
        crate::heap::HEAP.guard_report(spanalloc::VirtAddr::new(fault_addr.as_u64()))
    {
        panic!(
            "{report} (page fault at ip {:#x}, error code {error_code:?}; kernel loaded at {:#x}: \
             `addr2line -f -e <kernel> ADDRESS-{:#x}` names an address)",
            frame.instruction_pointer.as_u64(),
            crate::heapprofile::KERNEL_IMAGE_OFFSET.load(core::sync::atomic::Ordering::Relaxed),
            crate::heapprofile::KERNEL_IMAGE_OFFSET.load(core::sync::atomic::Ordering::Relaxed),
        );
    }
    emergency_println!(
        "EXCEPTION: page fault accessing {:#x} at ip {:#x}, error code {:?}\n{frame:#?}",
        fault_addr.as_u64(),
        frame.instruction_pointer.as_u64(),
        error_code
    );
    qemu::exit(qemu::ExitCode::Failure)
}
