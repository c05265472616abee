//! The kernel's GDT and TSS, replacing the bootloader's so the TSS can give the double-fault handler a stack
//! of its own (IST): a double fault caused by a kernel stack overflow then still runs on valid memory.
//!
//! Invariants: every CPU loads its own GDT and TSS ([`CpuTables`]) once, before its IDT; all GDTs have the
//! same layout, so the selectors the shared IDT's entries name (taken from the boot CPU's CS) are valid on
//! every CPU. A CPU's IST stack is used by nothing but its double-fault handler.

use alloc::boxed::Box;
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

/// One CPU's GDT, pointing at its TSS.
pub struct CpuTables {
    table: GlobalDescriptorTable,
    code: SegmentSelector,
    data: SegmentSelector,
    tss: SegmentSelector,
}

impl CpuTables {
    fn new(tss: &'static TaskStateSegment) -> Self {
        let mut table = GlobalDescriptorTable::new();
        let code = table.append(Descriptor::kernel_code_segment());
        let data = table.append(Descriptor::kernel_data_segment());
        let tss = table.append(Descriptor::tss_segment(tss));
        CpuTables {
            table,
            code,
            data,
            tss,
        }
    }
}

static GDT: Lazy<CpuTables> = Lazy::new(|| CpuTables::new(&TSS));

/// Loads the boot CPU's GDT and TSS.
pub fn init() {
    load(&GDT);
}

/// Builds an application processor's GDT and TSS, with a double-fault stack of its own, on the heap (the
/// boot CPU does this before starting the AP, so the AP can load them before it takes any interrupt).
pub fn allocate_for_ap() -> &'static CpuTables {
    let stack = Box::leak(alloc::vec![0u8; DOUBLE_FAULT_STACK_SIZE].into_boxed_slice());
    let top = VirtAddr::from_ptr(stack.as_ptr_range().end).align_down(16u64);
    let mut tss = TaskStateSegment::new();
    tss.interrupt_stack_table[usize::from(DOUBLE_FAULT_IST_INDEX)] = top;
    let tss = Box::leak(Box::new(tss));
    Box::leak(Box::new(CpuTables::new(tss)))
}

/// Loads `tables` on this CPU; each CPU loads its own, once.
pub fn load(tables: &'static CpuTables) {
    tables.table.load();
    // SAFETY: the selectors index descriptors of the GDT just loaded, which lives for the whole run; the code
    // and data segments are flat 64-bit kernel segments, so no address changes meaning. The TSS is this
    // CPU's alone (a TSS loaded on two CPUs would be marked busy twice).
    unsafe {
        CS::set_reg(tables.code);
        SS::set_reg(tables.data);
        DS::set_reg(tables.data);
        ES::set_reg(tables.data);
        load_tss(tables.tss);
    }
}
