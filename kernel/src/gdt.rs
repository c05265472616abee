//! The kernel's GDT and TSS, replacing the bootloader's so the TSS can give the double-fault handler a stack
//! of its own (IST): a double fault caused by a kernel stack overflow then still runs on valid memory.
//!
//! Invariants: loaded once on the boot CPU before the IDT; the IST stack is used by nothing but the
//! double-fault handler. (Application processors will need their own TSS and stack when SMP arrives.)

use core::cell::UnsafeCell;
use spin::Lazy;
use x86_64::instructions::segmentation::{Segment, CS, DS, ES, SS};
use x86_64::instructions::tables::load_tss;
use x86_64::structures::gdt::{Descriptor, GlobalDescriptorTable, SegmentSelector};
use x86_64::structures::tss::TaskStateSegment;
use x86_64::VirtAddr;

pub const DOUBLE_FAULT_IST_INDEX: u16 = 0;

const DOUBLE_FAULT_STACK_SIZE: usize = 5 * 4096;

#[repr(C, align(16))]
struct Stack(UnsafeCell<[u8; DOUBLE_FAULT_STACK_SIZE]>);

// SAFETY: the stack's bytes are only touched by the CPU while it runs the double-fault handler; Rust code
// never reads or writes them.
unsafe impl Sync for Stack {}

static DOUBLE_FAULT_STACK: Stack = Stack(UnsafeCell::new([0; DOUBLE_FAULT_STACK_SIZE]));

static TSS: Lazy<TaskStateSegment> = Lazy::new(|| {
    let mut tss = TaskStateSegment::new();
    let bottom = VirtAddr::from_ptr(DOUBLE_FAULT_STACK.0.get());
    // Stacks grow down: the IST entry holds the end of the array.
    tss.interrupt_stack_table[usize::from(DOUBLE_FAULT_IST_INDEX)] =
        bottom + DOUBLE_FAULT_STACK_SIZE as u64;
    tss
});

struct Gdt {
    table: GlobalDescriptorTable,
    code: SegmentSelector,
    data: SegmentSelector,
    tss: SegmentSelector,
}

static GDT: Lazy<Gdt> = Lazy::new(|| {
    let mut table = GlobalDescriptorTable::new();
    let code = table.append(Descriptor::kernel_code_segment());
    let data = table.append(Descriptor::kernel_data_segment());
    let tss = table.append(Descriptor::tss_segment(&TSS));
    Gdt {
        table,
        code,
        data,
        tss,
    }
});

pub fn init() {
    GDT.table.load();
    // SAFETY: the selectors index descriptors of the GDT just loaded, which lives for the whole run; the code
    // and data segments are flat 64-bit kernel segments, so no address changes meaning.
    unsafe {
        CS::set_reg(GDT.code);
        SS::set_reg(GDT.data);
        DS::set_reg(GDT.data);
        ES::set_reg(GDT.data);
        load_tss(GDT.tss);
    }
}
