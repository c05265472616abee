//! Symmetric multiprocessing: finds the CPUs in the ACPI MADT, starts every application processor (AP)
//! through INIT-SIPI-SIPI and the real-mode trampoline, and gives each its stack, GDT/TSS, per-CPU block,
//! local APIC and timer.
//!
//! CPU indices: the boot CPU is 0; APs get 1, 2, .. in MADT order as they come up. The index is what
//! `percpu` and the heap's per-CPU caches are keyed by; the APIC id is only for addressing IPIs.
//!
//! Invariants:
//! - APs are started one at a time by the boot CPU (they share the trampoline page). Each AP's GDT/TSS and
//!   stack are allocated by the boot CPU before its STARTUP IPI, so the AP loads its GDT, GS base and IDT
//!   before it can take any interrupt (NMIs included) and before it touches the heap.
//! - An AP sets its bit in [`ONLINE`] once it can take a shootdown NMI (see `shootdown`); it never clears it.
//!   A CPU that does not check in within [`CHECK_IN_TIMEOUT`] is reported, parked with INIT (so it can never
//!   run on in the shared trampoline page later) and skipped; its bit, if it set it, is cleared then.
//! - [`ONLINE`] only changes during [`init`]; afterwards the set of CPUs is fixed.

pub mod shootdown;
mod stacks;
mod trampoline;
pub mod work;

use crate::acpi::{self, Madt};
use crate::clock::Instant;
use crate::memory::MemoryReport;
use crate::{apic, gdt, interrupts, percpu, pic, println, timer};
use alloc::vec::Vec;
use bootloader_api::BootInfo;
use core::sync::atomic::{AtomicBool, AtomicPtr, AtomicU64, Ordering};
use core::time::Duration;
use percpu::MAX_CPUS;
use spin::Once;
use trampoline::Trampoline;
use x86_64::PhysAddr;

pub use work::{post, run_on, run_on_all};

/// How long an AP may take from its STARTUP IPI to checking in. Generous: under TCG on a loaded host a
/// vCPU thread may wait a while for a core.
const CHECK_IN_TIMEOUT: Duration = Duration::from_secs(3);
/// The MP specification's wait after INIT.
const INIT_DELAY: Duration = Duration::from_millis(10);
/// Wait after the first STARTUP before sending the second.
const SIPI_RETRY_DELAY: Duration = Duration::from_micros(300);

/// Online CPUs by index (bit 0 is the boot CPU).
static ONLINE: AtomicU64 = AtomicU64::new(0);
/// Per index: the AP finished its set-up (stack, tables, APIC, timer).
static CHECKED_IN: [AtomicBool; MAX_CPUS] = [const { AtomicBool::new(false) }; MAX_CPUS];
/// Per index: the GDT/TSS the boot CPU built for that AP.
static AP_TABLES: [AtomicPtr<gdt::CpuTables>; MAX_CPUS] =
    [const { AtomicPtr::new(core::ptr::null_mut()) }; MAX_CPUS];
/// What the MADT listed (after [`init`]).
static MADT: Once<Madt> = Once::new();
/// The CPUs that did not come up (after [`init`]).
static FAILED: Once<Vec<Failure>> = Once::new();

/// The online CPUs, as a mask of indices.
pub fn online_mask() -> u64 {
    ONLINE.load(Ordering::SeqCst)
}

/// How many CPUs are online.
pub fn online_count() -> usize {
    online_mask().count_ones() as usize
}

/// The MADT's processors, if it was read.
pub fn madt() -> Option<&'static Madt> {
    MADT.get()
}

/// The CPUs that failed to start (empty before [`init`]).
pub fn failures() -> &'static [Failure] {
    FAILED.get().map_or(&[], Vec::as_slice)
}

/// The indices of the set bits of `mask`, lowest first.
pub fn bits(mask: u64) -> impl Iterator<Item = usize> {
    (0..64).filter(move |bit| mask & (1 << bit) != 0)
}

/// A CPU that did not come up.
#[derive(Debug, Clone, Copy)]
pub struct Failure {
    pub apic_id: u32,
    pub reason: &'static str,
}

impl core::fmt::Display for Failure {
    fn fmt(&self, f: &mut core::fmt::Formatter) -> core::fmt::Result {
        write!(f, "APIC id {}: {}", self.apic_id, self.reason)
    }
}

/// Brings every CPU up; call once on the boot CPU after memory take-over and `clock::init`. Interrupts are
/// enabled on every CPU when it returns. Problems are reported and leave fewer CPUs online; nothing hangs.
pub fn init(boot_info: &BootInfo, memory: &MemoryReport) {
    pic::disable();
    let phys = apic::init(memory.phys_offset);
    let bsp = percpu::get(0);
    bsp.apic_id.store(apic::id(), Ordering::Relaxed);
    ONLINE.fetch_or(1, Ordering::SeqCst);
    timer::calibrate();
    timer::start_on_this_cpu();
    log::debug!("smp: local APIC at {phys:#x}");
    println!("smp: cpu 0 online (boot CPU), APIC id {}", apic::id());

    let mut listed = 0;
    let mut failed = Vec::new();
    let madt = boot_info
        .rsdp_addr
        .into_option()
        .ok_or("no ACPI RSDP from the bootloader")
        .and_then(|rsdp| {
            acpi::read_madt(PhysAddr::new(rsdp), memory.phys_offset).map_err(|err| {
                println!("smp: {err}");
                "the MADT could not be read"
            })
        });
    match madt {
        Ok(madt) => {
            let madt = MADT.call_once(|| madt);
            listed = madt.enabled().count();
            start_aps(madt, memory, &mut failed);
        }
        Err(why) => println!("smp: {why}; running on the boot CPU only"),
    }
    FAILED.call_once(|| failed);
    x86_64::instructions::interrupts::enable();
    println!("smp: {} of {} CPUs online", online_count(), listed.max(1));
}

fn start_aps(madt: &Madt, memory: &MemoryReport, failed: &mut Vec<Failure>) {
    let bsp_apic = apic::id();
    let aps: Vec<_> = madt
        .enabled()
        .filter(|p| p.apic_id != bsp_apic)
        .copied()
        .collect();
    if aps.is_empty() {
        return;
    }
    if let Err(err) = stacks::init(memory.window_base) {
        println!("smp: {err}; running on the boot CPU only");
        return;
    }
    let trampoline = match Trampoline::new() {
        Ok(t) => t,
        Err(err) => {
            println!("smp: {err}; running on the boot CPU only");
            return;
        }
    };
    log::debug!("smp: trampoline at {:#x}", trampoline.phys().as_u64());
    let mut next_index = 1;
    for ap in aps {
        let mut fail = |reason| {
            println!(
                "smp: CPU with APIC id {} failed to start: {reason}; skipped",
                ap.apic_id
            );
            failed.push(Failure {
                apic_id: ap.apic_id,
                reason,
            });
        };
        if ap.apic_id > 0xfe {
            fail("its APIC id is beyond xAPIC's 8-bit destinations");
            continue;
        }
        if next_index >= MAX_CPUS {
            fail("more CPUs than the kernel's limit (spanalloc::MAX_CPUS)");
            continue;
        }
        match start_ap(&trampoline, ap.apic_id, next_index) {
            Ok(()) => {
                println!("smp: cpu {next_index} online, APIC id {}", ap.apic_id);
                next_index += 1;
            }
            Err(reason) => {
                fail(reason);
                // The index is not reused: the AP may have touched its per-CPU block.
                next_index += 1;
            }
        }
    }
    trampoline.remove();
}

/// Starts one AP as CPU `index` and waits for it to check in.
fn start_ap(trampoline: &Trampoline, apic_id: u32, index: usize) -> Result<(), &'static str> {
    let stack_top = stacks::allocate().map_err(|_| "no memory for its stack")?;
    let tables = gdt::allocate_for_ap();
    // Before the AP can be a shootdown target: initiators address it by this id.
    percpu::get(index).apic_id.store(apic_id, Ordering::Relaxed);
    AP_TABLES[index].store(
        (tables as *const gdt::CpuTables).cast_mut(),
        Ordering::Release,
    );
    trampoline.prepare(stack_top, ap_entry, index as u64);

    apic::send_init(apic_id).map_err(|_| "its INIT IPI was not delivered")?;
    wait(INIT_DELAY, || false);
    apic::send_startup(apic_id, trampoline.startup_page())
        .map_err(|_| "its STARTUP IPI was not delivered")?;
    if !wait(SIPI_RETRY_DELAY, || trampoline.started()) {
        apic::send_startup(apic_id, trampoline.startup_page())
            .map_err(|_| "its second STARTUP IPI was not delivered")?;
    }
    if wait(CHECK_IN_TIMEOUT, || {
        CHECKED_IN[index].load(Ordering::Acquire)
    }) {
        return Ok(());
    }
    // Park it before anything else uses the trampoline page or its slot, then forget it.
    let _ = apic::send_init(apic_id);
    ONLINE.fetch_and(!(1 << index), Ordering::SeqCst);
    Err(if trampoline.started() {
        "it entered the trampoline but did not check in"
    } else {
        "it never reached the trampoline"
    })
}

/// Spins until `done` or `timeout`; returns `done()`'s last answer.
fn wait(timeout: Duration, mut done: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    while start.elapsed() < timeout {
        if done() {
            return true;
        }
        core::hint::spin_loop();
    }
    done()
}

/// Where an AP arrives from the trampoline, on its own stack, with interrupts masked.
extern "C" fn ap_entry(index: u64) -> ! {
    let index = index as usize;
    percpu::install(index);
    percpu::mark_stack_top();
    let tables = AP_TABLES[index].load(Ordering::Acquire);
    // SAFETY: the boot CPU stored a leaked (so 'static) CpuTables for this index before starting us.
    gdt::load(unsafe { &*tables });
    interrupts::init();
    ONLINE.fetch_or(1 << index, Ordering::SeqCst);
    apic::enable();
    timer::start_on_this_cpu();
    CHECKED_IN[index].store(true, Ordering::Release);
    work::idle_loop()
}
