//! The real-mode trampoline an application processor starts in, and its installation in a page below 1 MiB.
//!
//! A STARTUP IPI starts the AP in 16-bit real mode at `CS = page >> 4, IP = 0`. The trampoline code is
//! copied to that page and runs: 16-bit -> (its own GDT) 32-bit protected mode -> PAE, EFER.LME and
//! EFER.NXE (the bootloader's tables set NX bits, which are reserved bits without NXE), paging with a CR3
//! below 4 GiB -> 64-bit mode -> the kernel's real CR3, the AP's stack, and a call to the Rust entry.
//!
//! Invariants:
//! - The code assembles position-independently: every address in it is `page base + offset`, the base being
//!   computed from CS at run time (EBX/RBX) and the offsets being differences of labels. The only absolute
//!   fields, the GDT pointer's base and the [`Params`], are written by [`Trampoline::new`] into the copy.
//! - The page is identity-mapped (virtual = physical) in the kernel's page tables while any AP may run in it:
//!   turning paging on continues at the same address. [`Trampoline::remove`] unmaps it (detach, shootdown,
//!   reclaim) once every AP has left, then frees the frames.
//! - While in 32-bit mode the AP's CR3 points at a copy of the kernel's P4 in a second low frame (a 32-bit
//!   `mov cr3` cannot reach a table above 4 GiB); the copy shares all lower tables, so it maps the trampoline
//!   page and the kernel the same way. 64-bit code switches to the real CR3 before leaving the page.
//! - One AP at a time uses the page (its stack is the top of the page until the Rust stack is loaded): the
//!   boot CPU starts APs one after another, each only after the previous one checked in or was parked.

use crate::heap::HEAP;
use core::arch::global_asm;
use spanalloc::addr::{Page, PageTableFlags, PhysAddr, PhysFrame, VirtAddr, FRAME_SIZE};
use spanalloc::Platform;
use x86_64::registers::control::{Cr0, Cr3, Cr4, Cr4Flags};
use x86_64::structures::paging::PageTable;

global_asm!(
    ".pushsection .text.smp_trampoline, \"ax\", @progbits",
    ".balign 16",
    ".global smp_trampoline_start",
    "smp_trampoline_start:",
    ".code16",
    "    cli",
    "    cld",
    "    mov %cs, %ax",
    "    mov %ax, %ds",
    "    mov %ax, %ss",
    // The stack is the top of this very page until the Rust stack is loaded.
    "    mov $0x1000, %sp",
    "    movb $1, (smp_trampoline_started - smp_trampoline_start)",
    "    xor %ebx, %ebx",
    "    mov %ax, %bx",
    "    shl $4, %ebx",
    "    lgdtl (smp_trampoline_gdtr - smp_trampoline_start)",
    "    mov %cr0, %eax",
    "    or $1, %eax",
    "    mov %eax, %cr0",
    "    lea (2f - smp_trampoline_start)(%ebx), %eax",
    "    pushl $0x08",
    "    pushl %eax",
    "    lretl",
    ".code32",
    "2:",
    "    mov $0x10, %ax",
    "    mov %ax, %ds",
    "    mov %ax, %es",
    "    mov %ax, %ss",
    "    lea 0x1000(%ebx), %esp",
    "    mov (smp_trampoline_params + 24 - smp_trampoline_start)(%ebx), %eax",
    "    mov %eax, %cr4",
    "    mov (smp_trampoline_params + 0 - smp_trampoline_start)(%ebx), %eax",
    "    mov %eax, %cr3",
    "    mov $0xc0000080, %ecx",
    "    rdmsr",
    // EFER.LME (bit 8) and EFER.NXE (bit 11).
    "    or $0x900, %eax",
    "    wrmsr",
    "    mov (smp_trampoline_params + 16 - smp_trampoline_start)(%ebx), %eax",
    "    mov %eax, %cr0",
    "    lea (3f - smp_trampoline_start)(%ebx), %eax",
    "    push $0x18",
    "    push %eax",
    "    lret",
    ".code64",
    "3:",
    "    mov $0x10, %ax",
    "    mov %ax, %ds",
    "    mov %ax, %es",
    "    mov %ax, %ss",
    // Upper halves of registers are undefined after the switch from 32-bit mode.
    "    mov %ebx, %ebx",
    "    mov (smp_trampoline_params + 8 - smp_trampoline_start)(%rbx), %rax",
    "    mov %rax, %cr3",
    "    mov (smp_trampoline_params + 32 - smp_trampoline_start)(%rbx), %rsp",
    "    mov (smp_trampoline_params + 40 - smp_trampoline_start)(%rbx), %rdi",
    "    mov (smp_trampoline_params + 48 - smp_trampoline_start)(%rbx), %rax",
    "    call *%rax",
    "    ud2",
    ".balign 8",
    ".global smp_trampoline_gdt",
    "smp_trampoline_gdt:",
    "    .quad 0",
    // 0x08: 32-bit code, 0x10: data, 0x18: 64-bit code; flat.
    "    .quad 0x00cf9a000000ffff",
    "    .quad 0x00cf92000000ffff",
    "    .quad 0x00209a0000000000",
    ".global smp_trampoline_gdtr",
    "smp_trampoline_gdtr:",
    "    .word 31",
    "    .long 0",
    ".balign 8",
    ".global smp_trampoline_params",
    "smp_trampoline_params:",
    "    .fill 7, 8, 0",
    "smp_trampoline_started:",
    "    .quad 0",
    ".global smp_trampoline_end",
    "smp_trampoline_end:",
    ".popsection",
    options(att_syntax)
);

extern "C" {
    static smp_trampoline_start: u8;
    static smp_trampoline_gdt: u8;
    static smp_trampoline_gdtr: u8;
    static smp_trampoline_params: u8;
    static smp_trampoline_end: u8;
}

/// The fields at `smp_trampoline_params`, in the order the assembly reads them (offsets 0, 8, .. 56).
#[repr(C)]
struct Params {
    /// CR3 in 32-bit mode: the low copy of the P4.
    cr3_low: u64,
    /// The kernel's CR3, loaded in 64-bit mode.
    cr3: u64,
    /// CR0 to enable paging with (the boot CPU's: PG, PE, WP, ...).
    cr0: u64,
    /// CR4 for the AP (the boot CPU's, PAE included, without PCIDE which 32-bit mode may not set).
    cr4: u64,
    stack_top: u64,
    arg: u64,
    entry: u64,
    /// Set to 1 by the AP's first instructions.
    started: u64,
}

/// The Rust entry an AP calls with `arg` on its new stack.
pub type Entry = extern "C" fn(arg: u64) -> !;

/// Why the trampoline could not be installed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TrampolineError {
    NoLowFrame,
    TooLarge {
        bytes: usize,
    },
    /// The page is mapped to something else, or could not be mapped (message from the mapper).
    Map {
        page: u64,
        reason: &'static str,
    },
    /// A table on the way to the page forbids execution.
    NotExecutable {
        page: u64,
        level: usize,
    },
}

impl core::fmt::Display for TrampolineError {
    fn fmt(&self, f: &mut core::fmt::Formatter) -> core::fmt::Result {
        match self {
            Self::NoLowFrame => write!(f, "smp: no free frame below 1 MiB for the AP trampoline"),
            Self::TooLarge { bytes } => {
                write!(
                    f,
                    "smp: the trampoline is {bytes} bytes, too large for its page"
                )
            }
            Self::Map { page, reason } => {
                write!(
                    f,
                    "smp: cannot identity-map the trampoline page {page:#x}: {reason}"
                )
            }
            Self::NotExecutable { page, level } => write!(
                f,
                "smp: the level-{level} table entry above the trampoline page {page:#x} has NX set"
            ),
        }
    }
}

/// The installed trampoline: its page (identity-mapped) and the low P4 copy.
pub struct Trampoline {
    code: PhysFrame,
    p4_copy: PhysFrame,
    /// Whether we created the identity mapping (and so must remove it).
    mapped_here: bool,
    phys_offset: VirtAddr,
}

/// Room left at the top of the page for the trampoline's stack.
const STACK_ROOM: usize = 512;

/// Offset of a trampoline symbol from the trampoline's start (= its offset in the page).
fn offset_in_page(symbol: *const u8) -> usize {
    symbol as usize - (&raw const smp_trampoline_start) as usize
}

impl Trampoline {
    /// Copies the trampoline to a fresh page below 1 MiB and identity-maps it.
    pub fn new() -> Result<Self, TrampolineError> {
        let start = &raw const smp_trampoline_start;
        let len = offset_in_page(&raw const smp_trampoline_end);
        if len + STACK_ROOM > FRAME_SIZE as usize {
            return Err(TrampolineError::TooLarge { bytes: len });
        }
        let phys_offset = crate::platform::PLATFORM.physical_memory_offset();
        // SAFETY: takes two frames, and gives back only the one it took.
        let (code, p4_copy) = unsafe {
            HEAP.with_address_space(|space| {
                let code = space.frames.allocate_low()?;
                match space.frames.allocate_low() {
                    Some(copy) => Some((code, copy)),
                    None => {
                        space.frames.free(code);
                        None
                    }
                }
            })
        }
        .flatten()
        .ok_or(TrampolineError::NoLowFrame)?;
        let mut trampoline = Trampoline {
            code,
            p4_copy,
            mapped_here: false,
            phys_offset,
        };
        let base = code.start_address().as_u64();
        let page = trampoline.page_ptr();
        // SAFETY: `page` is the direct-map view of a frame we just took (ours alone); the copy stays inside it
        // (len checked above) and the source is the assembled trampoline in the kernel image.
        unsafe {
            core::ptr::write_bytes(page, 0, FRAME_SIZE as usize);
            core::ptr::copy_nonoverlapping(start, page, len);
            let gdtr_base = page
                .add(offset_in_page(&raw const smp_trampoline_gdtr) + 2)
                .cast::<u32>();
            gdtr_base.write_unaligned(
                (base + offset_in_page(&raw const smp_trampoline_gdt) as u64) as u32,
            );
        }
        debug_assert_eq!(offset_in_page(&raw const smp_trampoline_params) % 8, 0);
        if let Err(err) = trampoline.identity_map() {
            trampoline.free_frames();
            return Err(err);
        }
        trampoline.copy_p4();
        Ok(trampoline)
    }

    fn page_ptr(&self) -> *mut u8 {
        (self.phys_offset + self.code.start_address().as_u64()).as_mut_ptr()
    }

    fn params(&self) -> *mut Params {
        let offset = offset_in_page(&raw const smp_trampoline_params);
        // SAFETY: the params field lies inside the copied page (the copy holds the whole trampoline).
        unsafe { self.page_ptr().add(offset).cast() }
    }

    /// Physical address of the trampoline page, for reports.
    pub fn phys(&self) -> PhysAddr {
        self.code.start_address()
    }

    /// The STARTUP IPI's vector: the page number of the trampoline.
    pub fn startup_page(&self) -> u8 {
        (self.code.start_address().as_u64() / FRAME_SIZE) as u8
    }

    /// Prepares the page for the next AP: its stack, its entry and argument; clears the started flag.
    pub fn prepare(&self, stack_top: VirtAddr, entry: Entry, arg: u64) {
        let (cr3_frame, cr3_flags) = Cr3::read();
        let params = Params {
            cr3_low: self.p4_copy.start_address().as_u64(),
            cr3: cr3_frame.start_address().as_u64() | cr3_flags.bits(),
            cr0: Cr0::read_raw(),
            cr4: (Cr4::read() - Cr4Flags::PCID).bits()
                | Cr4Flags::PHYSICAL_ADDRESS_EXTENSION.bits(),
            stack_top: stack_top.as_u64(),
            arg,
            entry: entry as usize as u64,
            started: 0,
        };
        // SAFETY: the params live in our page; no AP runs in it now (module invariants: one at a time, and
        // the previous one left or was parked by INIT).
        unsafe { self.params().write_volatile(params) };
    }

    /// Whether the AP reached the trampoline's first instructions.
    pub fn started(&self) -> bool {
        // SAFETY: reads the `started` field of our page, which the AP writes; volatile because it does.
        unsafe { (&raw const (*self.params()).started).read_volatile() != 0 }
    }

    fn identity_map(&mut self) -> Result<(), TrampolineError> {
        let addr = self.code.start_address().as_u64();
        let page = Page::containing_address(VirtAddr::new(addr));
        let flags = PageTableFlags::PRESENT | PageTableFlags::WRITABLE;
        // SAFETY: maps the trampoline's own frame at its identity address, below 1 MiB: outside the
        // heap's window (which lies in the upper half).
        let mapped = unsafe {
            HEAP.with_address_space(|space| match space.mapper.translate(page.start_address()) {
                Some(phys) if phys.as_u64() == addr => Ok(false),
                Some(_) => Err("the page is mapped to another frame"),
                None => space
                    .mapper
                    .map(page, self.code, flags, &mut space.frames)
                    .map(|()| true)
                    .map_err(|_| "the mapper refused (huge page, or out of frames)"),
            })
        }
        .unwrap_or(Err("the heap is not initialized"))
        .map_err(|reason| TrampolineError::Map { page: addr, reason })?;
        self.mapped_here = mapped;
        self.check_executable()
    }

    /// Walks the live tables to the trampoline page: every level must be present and allow execution.
    fn check_executable(&self) -> Result<(), TrampolineError> {
        let addr = VirtAddr::new(self.code.start_address().as_u64());
        let indices = [
            addr.p4_index(),
            addr.p3_index(),
            addr.p2_index(),
            addr.p1_index(),
        ];
        let (mut table, _) = Cr3::read();
        for (level, index) in indices.into_iter().enumerate() {
            let ptr = (self.phys_offset + table.start_address().as_u64()).as_ptr::<PageTable>();
            // SAFETY: page tables are in physical memory, all mapped at phys_offset; only read here, by the
            // only CPU that edits tables now (bring-up runs on the boot CPU, the heap lock is not needed to
            // read an entry the heap never changes: the heap only maps into its window).
            let table_ref = unsafe { &*ptr };
            let entry = &table_ref[index];
            let flags = entry.flags();
            let page_level = 4 - level;
            if !flags.contains(PageTableFlags::PRESENT) {
                return Err(TrampolineError::Map {
                    page: addr.as_u64(),
                    reason: "not present after mapping",
                });
            }
            if flags.contains(PageTableFlags::NO_EXECUTE) {
                return Err(TrampolineError::NotExecutable {
                    page: addr.as_u64(),
                    level: page_level,
                });
            }
            if level == 3 || flags.contains(PageTableFlags::HUGE_PAGE) {
                return Ok(());
            }
            table = PhysFrame::containing_address(entry.addr());
        }
        Ok(())
    }

    /// Copies the live P4 into the low frame (after the identity mapping exists, so the copy has it too).
    fn copy_p4(&self) {
        let (p4, _) = Cr3::read();
        let from = (self.phys_offset + p4.start_address().as_u64()).as_ptr::<u8>();
        let to = (self.phys_offset + self.p4_copy.start_address().as_u64()).as_mut_ptr::<u8>();
        // SAFETY: both are whole frames in the direct map; the copy frame is ours alone.
        unsafe { core::ptr::copy_nonoverlapping(from, to, FRAME_SIZE as usize) };
    }

    fn free_frames(&self) {
        // SAFETY: gives back the two frames `new` took, which nothing maps any longer.
        unsafe {
            HEAP.with_address_space(|space| {
                space.frames.free(self.code);
                space.frames.free(self.p4_copy);
            })
        };
    }

    /// Removes the identity mapping (with a shootdown: APs ran through it and may cache it) and frees both
    /// frames. Call once every AP has left the page (checked in, or parked by INIT).
    pub fn remove(self) {
        let addr = self.code.start_address().as_u64();
        let page = Page::containing_address(VirtAddr::new(addr));
        if self.mapped_here {
            // SAFETY: unmaps the trampoline's identity page (below 1 MiB, outside the heap's window)
            // and frees only the page-table frames that mapping alone used.
            unsafe {
                HEAP.with_address_space(|space| {
                    space
                        .mapper
                        .detach(page)
                        .unwrap_or_else(|err| panic!("smp: unmapping the trampoline: {err}"));
                    space.platform.pages_unmapped(page, 1);
                    let (frame, _tables) = space
                        .mapper
                        .reclaim(page, &mut space.frames)
                        .unwrap_or_else(|err| panic!("smp: unmapping the trampoline: {err}"));
                    debug_assert_eq!(frame, self.code);
                })
            };
        }
        self.free_frames();
    }
}
