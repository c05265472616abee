//! Exceptions the kernel survives: a probed page fault comes back as a value, a breakpoint resumes.

use crate::interrupts;
use crate::ktest::TestCtx;
use crate::probe::probe_read;
use x86_64::registers::control::Cr3;
use x86_64::structures::idt::PageFaultErrorCode;
use x86_64::structures::paging::{PageTable, PageTableFlags, PhysFrame};
use x86_64::VirtAddr;

/// Canonical (below 2^47), lower half, far above where the bootloader maps anything; the test checks it is
/// unmapped before relying on it. (0xdead_0000_0000 would be non-canonical: bit 47 set, a #GP not a #PF.)
const UNMAPPED: u64 = 0x7ead_0000_0000;

static KNOWN_BYTE: u8 = 0xa5;

pub fn page_fault_is_observed(ctx: &mut TestCtx) {
    let phys_offset = ctx
        .boot_info
        .physical_memory_offset
        .into_option()
        .expect("no physical memory offset");
    let target = VirtAddr::new(UNMAPPED);
    assert!(
        !is_mapped(phys_offset, target),
        "precondition: {target:?} is mapped; pick another unmapped address for this test"
    );

    let known = VirtAddr::from_ptr(&KNOWN_BYTE);
    assert_eq!(
        probe_read(known),
        Ok(0xa5),
        "probe of a mapped byte at {known:?}"
    );

    // Twice: the first recovery must leave the machinery ready for the next fault.
    for attempt in 1..=2 {
        let fault = probe_read(target).expect_err("reading an unmapped address did not fault");
        assert_eq!(fault.addr, target, "CR2 on attempt {attempt}");
        assert!(
            !fault
                .error_code
                .contains(PageFaultErrorCode::PROTECTION_VIOLATION),
            "error code {:?}: expected a not-present fault",
            fault.error_code
        );
        assert!(
            !fault
                .error_code
                .contains(PageFaultErrorCode::CAUSED_BY_WRITE),
            "error code {:?}: the probe only reads",
            fault.error_code
        );
        log::info!("attempt {attempt}: caught {fault:?}");
    }

    assert_eq!(probe_read(known), Ok(0xa5), "probe after recovering");
}

pub fn breakpoint_resumes(_ctx: &mut TestCtx) {
    let before = interrupts::breakpoint_count();
    x86_64::instructions::interrupts::int3();
    x86_64::instructions::interrupts::int3();
    assert_eq!(interrupts::breakpoint_count(), before + 2);
}

/// Walks the live page tables (read-only) to tell whether `addr` has a present mapping.
fn is_mapped(phys_offset: u64, addr: VirtAddr) -> bool {
    let (mut table_frame, _) = Cr3::read();
    let indices = [
        addr.p4_index(),
        addr.p3_index(),
        addr.p2_index(),
        addr.p1_index(),
    ];
    for (level, index) in indices.into_iter().enumerate() {
        let table = (phys_offset + table_frame.start_address().as_u64()) as *const PageTable;
        // SAFETY: page tables live in physical memory, all of which is mapped at `phys_offset`; the tables are
        // only read, and nothing changes them while this test runs on the only running CPU.
        let entry = unsafe { &(&*table)[index] };
        let flags = entry.flags();
        if !flags.contains(PageTableFlags::PRESENT) {
            return false;
        }
        if level == 3 || flags.contains(PageTableFlags::HUGE_PAGE) {
            return true;
        }
        table_frame = PhysFrame::containing_address(entry.addr());
    }
    unreachable!("the loop returns at level 3")
}
