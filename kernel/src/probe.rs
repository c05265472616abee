//! Reading memory that may be unmapped, and getting the page fault back as a value instead of dying of it.
//!
//! Mechanism: [`probe_read`] reads through one known instruction, `spanalloc_probe_load`, inside a tiny
//! assembly routine. The page-fault handler asks [`recover`] first: if and only if the faulting instruction is
//! that load, `recover` records CR2 and the error code and rewrites the saved instruction pointer to
//! `spanalloc_probe_faulted`, a landing that returns "faulted" to the caller. Any other page fault is not ours
//! and stays fatal.
//!
//! Invariants:
//! - A probe holds [`PROBE`] with interrupts masked from before the load until the fault record is read, so
//!   the record belongs to exactly one probe and only the probing CPU can be at the load instruction.
//! - The load pushes nothing and clobbers only `eax`, so at the landing the stack and registers are as the
//!   routine's `ret` expects.

use core::arch::global_asm;
use core::sync::atomic::{AtomicU64, Ordering};
use spin::Mutex;
use x86_64::structures::idt::{InterruptStackFrame, PageFaultErrorCode};
use x86_64::VirtAddr;

/// A page fault caught by [`probe_read`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PageFaultInfo {
    /// The faulting address (CR2).
    pub addr: VirtAddr,
    pub error_code: PageFaultErrorCode,
    /// The instruction that faulted (the probe's load).
    pub ip: VirtAddr,
}

// rdi = address; returns rax = the byte read (0 after a fault), rdx = 1 if the read faulted, else 0.
global_asm!(
    ".pushsection .text.spanalloc_probe, \"ax\", @progbits",
    ".global spanalloc_probe_read_u8",
    "spanalloc_probe_read_u8:",
    "    xor edx, edx",
    ".global spanalloc_probe_load",
    "spanalloc_probe_load:",
    "    movzx eax, byte ptr [rdi]",
    "    ret",
    ".global spanalloc_probe_faulted",
    "spanalloc_probe_faulted:",
    "    xor eax, eax",
    "    mov edx, 1",
    "    ret",
    ".popsection",
);

#[repr(C)]
struct ProbeResult {
    value: u64,
    faulted: u64,
}

extern "sysv64" {
    fn spanalloc_probe_read_u8(addr: u64) -> ProbeResult;
    static spanalloc_probe_load: u8;
    static spanalloc_probe_faulted: u8;
}

static PROBE: Mutex<()> = Mutex::new(());
static FAULT_ADDR: AtomicU64 = AtomicU64::new(0);
static FAULT_CODE: AtomicU64 = AtomicU64::new(0);

fn load_ip() -> VirtAddr {
    VirtAddr::from_ptr(&raw const spanalloc_probe_load)
}

fn landing_ip() -> VirtAddr {
    VirtAddr::from_ptr(&raw const spanalloc_probe_faulted)
}

/// Reads the byte at `addr`, returning the page fault the read caused instead of taking the kernel down.
pub fn probe_read(addr: VirtAddr) -> Result<u8, PageFaultInfo> {
    x86_64::instructions::interrupts::without_interrupts(|| {
        let _probe = PROBE.lock();
        // SAFETY: the routine reads one byte and touches nothing else; a fault on that read is turned into a
        // return by `recover` (see the module comment), and any address is acceptable to fault on.
        let result = unsafe { spanalloc_probe_read_u8(addr.as_u64()) };
        if result.faulted == 0 {
            return Ok(result.value as u8);
        }
        Err(PageFaultInfo {
            addr: VirtAddr::new_truncate(FAULT_ADDR.load(Ordering::Relaxed)),
            error_code: PageFaultErrorCode::from_bits_retain(FAULT_CODE.load(Ordering::Relaxed)),
            ip: load_ip(),
        })
    })
}

/// Called by the page-fault handler: if the fault is a probe's, records it, redirects the return to the
/// probe's landing and returns true; otherwise returns false and changes nothing.
pub fn recover(
    frame: &mut InterruptStackFrame,
    fault_addr: VirtAddr,
    error_code: PageFaultErrorCode,
) -> bool {
    if frame.instruction_pointer != load_ip() {
        return false;
    }
    FAULT_ADDR.store(fault_addr.as_u64(), Ordering::Relaxed);
    FAULT_CODE.store(error_code.bits(), Ordering::Relaxed);
    // SAFETY: the new instruction pointer is the probe routine's landing, in the same routine, same code
    // segment and same stack as the faulting load (see the module invariants), so `iretq` resumes validly.
    unsafe {
        frame
            .as_mut()
            .update(|value| value.instruction_pointer = landing_ip());
    }
    true
}
