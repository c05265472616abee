//! Per-CPU data: one [`PerCpu`] block per CPU, reached through the GS base, with the CPU's index at offset
//! 0 so that finding the current CPU is one load, `mov reg, gs:[0]`.
//!
//! Invariants:
//! - Block `i` lives in [`BLOCKS`] at index `i` and holds `index == i` from compile time on: installing a
//!   block is only pointing GS at it, so a CPU's index is valid from the first instruction after
//!   [`install`], before it allocates anything (the heap asks for it on every allocation).
//! - A CPU installs exactly one block, its own, once; nothing writes the GS base afterwards (the kernel has
//!   no user mode, so no `swapgs`). So a CPU's index never changes and a block has one owner.
//! - The counters are atomics so that other CPUs (tests, reports) may read them; they are written only by
//!   the owning CPU, from normal code and its interrupt handlers.

use core::sync::atomic::{AtomicBool, AtomicPtr, AtomicU32, AtomicU64, AtomicUsize};
use x86_64::registers::model_specific::GsBase;
use x86_64::VirtAddr;

/// Most CPUs the kernel runs on: the heap's limit.
pub const MAX_CPUS: usize = spanalloc::MAX_CPUS;

/// One CPU's block. `repr(C)` keeps `index` at offset 0; a cache line each, so CPUs do not share lines.
#[repr(C, align(64))]
pub struct PerCpu {
    index: usize,
    /// The local APIC id, recorded when the CPU comes up.
    pub apic_id: AtomicU32,
    /// Local APIC timer interrupts taken.
    pub ticks: AtomicU64,
    /// Timer interrupts whose handler allocated and freed.
    pub timer_allocs: AtomicU64,
    /// Set by code that wants to know whether the timer handler allocated while it was inside a loop of
    /// allocations (the `smp_alloc_in_timer_interrupt` test).
    pub in_alloc_loop: AtomicBool,
    /// Timer-handler allocations that happened while `in_alloc_loop` was set.
    pub timer_allocs_in_loop: AtomicU64,
    /// A block the timer handler allocated and keeps until its next tick (see `timer::set_hold_in_handler`),
    /// null if none; its length in `u64` words and its tag.
    pub timer_held: AtomicPtr<u64>,
    pub timer_held_words: AtomicUsize,
    pub timer_held_tag: AtomicU64,
    /// A TLB shootdown for this CPU waits in the request slot (see `smp::shootdown`).
    pub shootdown_pending: AtomicBool,
    /// TLB shootdowns this CPU served.
    pub shootdowns: AtomicU64,
    /// The frame pointer of this CPU's entry function (which never returns), 0 until recorded: the top
    /// of the stack the heap profile's frame-pointer walks may read (see `platform::stack_trace`).
    pub stack_top: AtomicU64,
}

impl PerCpu {
    const fn new(index: usize) -> Self {
        PerCpu {
            index,
            apic_id: AtomicU32::new(0),
            ticks: AtomicU64::new(0),
            timer_allocs: AtomicU64::new(0),
            in_alloc_loop: AtomicBool::new(false),
            timer_allocs_in_loop: AtomicU64::new(0),
            timer_held: AtomicPtr::new(core::ptr::null_mut()),
            timer_held_words: AtomicUsize::new(0),
            timer_held_tag: AtomicU64::new(0),
            shootdown_pending: AtomicBool::new(false),
            shootdowns: AtomicU64::new(0),
            stack_top: AtomicU64::new(0),
        }
    }

    pub fn index(&self) -> usize {
        self.index
    }
}

static BLOCKS: [PerCpu; MAX_CPUS] = {
    let mut blocks = [const { PerCpu::new(0) }; MAX_CPUS];
    let mut i = 0;
    while i < MAX_CPUS {
        blocks[i].index = i;
        i += 1;
    }
    blocks
};

/// Points this CPU's GS base at block `index`. Call once per CPU, before it allocates or takes an
/// interrupt, with an index no other CPU uses.
pub fn install(index: usize) {
    assert!(
        index < MAX_CPUS,
        "percpu: CPU index {index} is over the limit of {MAX_CPUS} CPUs"
    );
    GsBase::write(VirtAddr::from_ptr(&BLOCKS[index]));
}

/// Records the calling function's frame as the top of this CPU's stack: call it first thing in the CPU's
/// entry function (which never returns), after [`install`]. Frame-pointer walks stop below it.
#[inline(always)]
pub fn mark_stack_top() {
    let fp: u64;
    // SAFETY: reads a register (the caller's frame pointer: this function is inlined).
    unsafe {
        core::arch::asm!("mov {}, rbp", out(reg) fp, options(nomem, nostack, preserves_flags))
    };
    current()
        .stack_top
        .store(fp, core::sync::atomic::Ordering::Relaxed);
}

/// The index of the CPU running this code (after its [`install`]).
#[inline(always)]
pub fn current_index() -> usize {
    let index: usize;
    // SAFETY: GS points at this CPU's block (module invariants), whose first field is its index; the load
    // reads 8 bytes of that static block and changes nothing.
    unsafe {
        core::arch::asm!("mov {}, gs:[0]", out(reg) index, options(nostack, preserves_flags, readonly));
    }
    index
}

/// This CPU's block.
pub fn current() -> &'static PerCpu {
    &BLOCKS[current_index()]
}

/// CPU `index`'s block (to read its counters).
pub fn get(index: usize) -> &'static PerCpu {
    &BLOCKS[index]
}
