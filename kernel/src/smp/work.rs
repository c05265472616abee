//! Putting the CPUs to work: [`run_on`] runs a closure on a chosen set of online CPUs at once (the boot
//! CPU included, if chosen) and returns when all are done; [`post`] hands one AP a task to run when it is
//! next idle, and returns at once. Between jobs the application processors halt
//! with interrupts enabled (their timers keep ticking), and a wake-up IPI brings them to the next job.
//!
//! Invariants:
//! - Jobs are published only by the boot CPU, after bring-up, one at a time: [`JOB`] and [`GENERATION`]
//!   change only in [`run_on`].
//! - Every online AP acknowledges every generation (running the closure only if it is a target), and
//!   `run_on` returns only after all acknowledged. So the job, on `run_on`'s stack, outlives every use, and
//!   no AP can still be looking at one generation when the next is published.
//! - A posted task is a plain `fn` (no borrowed data): it may run any time after `post`, so it reaches
//!   what it needs through statics. An AP runs it between `run_on` jobs (so a `run_on` waits for it).

use super::{bits, online_mask};
use crate::{apic, percpu};
use core::sync::atomic::{AtomicBool, AtomicPtr, AtomicU64, AtomicUsize, Ordering};
use x86_64::instructions::interrupts;
use x86_64::structures::idt::InterruptStackFrame;

/// The wake-up IPI's vector.
pub const WAKE_VECTOR: u8 = 0x31;

struct Job {
    /// `call::<F>`: calls `data` as an `&F` with the CPU index.
    call: unsafe fn(*const (), usize),
    data: *const (),
    targets: u64,
    /// APs that have not yet acknowledged.
    pending: AtomicUsize,
}

static JOB: AtomicPtr<Job> = AtomicPtr::new(core::ptr::null_mut());
static GENERATION: AtomicU64 = AtomicU64::new(0);

/// One AP's posted task ([`post`]); `waiting` says (without the lock) that `task` holds one.
struct Posted {
    waiting: AtomicBool,
    task: spin::Mutex<Option<fn(usize)>>,
}

static POSTED: [Posted; percpu::MAX_CPUS] = [const {
    Posted {
        waiting: AtomicBool::new(false),
        task: spin::Mutex::new(None),
    }
}; percpu::MAX_CPUS];

/// Has the online AP `cpu` run `task(cpu)` when it is next idle (after the `run_on` job it may be in),
/// and returns at once. False (nothing posted) if `cpu` is not an online AP or has a task waiting
/// already.
pub fn post(cpu: usize, task: fn(usize)) -> bool {
    if cpu == 0 || cpu >= percpu::MAX_CPUS || online_mask() & (1 << cpu) == 0 {
        return false;
    }
    {
        let mut slot = POSTED[cpu].task.lock();
        if slot.is_some() {
            return false;
        }
        *slot = Some(task);
        POSTED[cpu].waiting.store(true, Ordering::Release);
    }
    let apic_id = percpu::get(cpu).apic_id.load(Ordering::Relaxed);
    apic::send_fixed(apic_id, WAKE_VECTOR)
        .unwrap_or_else(|err| panic!("smp: waking CPU {cpu}: {err}"));
    true
}

/// The task posted to this CPU, if any (taken: it runs once).
fn take_posted(me: usize) -> Option<fn(usize)> {
    if !POSTED[me].waiting.load(Ordering::Acquire) {
        return None;
    }
    let task = POSTED[me].task.lock().take();
    POSTED[me].waiting.store(false, Ordering::Release);
    task
}

/// # Safety
/// `data` points to a live `F`.
unsafe fn call<F: Fn(usize) + Sync>(data: *const (), cpu: usize) {
    // SAFETY: the caller's promise; `F: Sync`, so calling it through a shared reference on several CPUs at
    // once is allowed.
    let f = unsafe { &*data.cast::<F>() };
    f(cpu);
}

/// Runs `f(cpu_index)` on every CPU of `targets` (a mask of online CPU indices; bit 0 is the boot CPU, which
/// runs its part itself) and returns when all have finished. Boot CPU only, after SMP bring-up.
pub fn run_on<F: Fn(usize) + Sync>(targets: u64, f: &F) {
    assert_eq!(
        percpu::current_index(),
        0,
        "smp: run_on is for the boot CPU (called on CPU {})",
        percpu::current_index()
    );
    let online = online_mask();
    assert_eq!(
        targets & !online,
        0,
        "smp: run_on targets CPUs {targets:#b}, but only {online:#b} are online"
    );
    let aps = online & !1;
    let job = Job {
        call: call::<F>,
        data: (f as *const F).cast(),
        targets,
        pending: AtomicUsize::new(aps.count_ones() as usize),
    };
    JOB.store((&raw const job).cast_mut(), Ordering::Release);
    GENERATION.fetch_add(1, Ordering::AcqRel);
    for cpu in bits(aps) {
        let apic_id = percpu::get(cpu).apic_id.load(Ordering::Relaxed);
        apic::send_fixed(apic_id, WAKE_VECTOR)
            .unwrap_or_else(|err| panic!("smp: waking CPU {cpu}: {err}"));
    }
    if targets & 1 != 0 {
        f(0);
    }
    // Halt rather than spin: under emulation the vCPUs share the host's cores, and a spinning waiter takes
    // time from the CPUs it waits for. The timer wakes it within a tick.
    let halt = interrupts::are_enabled();
    while job.pending.load(Ordering::Acquire) != 0 {
        if halt {
            x86_64::instructions::hlt();
        } else {
            core::hint::spin_loop();
        }
    }
    JOB.store(core::ptr::null_mut(), Ordering::Release);
}

/// Runs `f(cpu_index)` on every online CPU.
pub fn run_on_all<F: Fn(usize) + Sync>(f: &F) {
    run_on(online_mask(), f);
}

/// Where an AP spends its life after bring-up: halted, interrupts on, until a job arrives.
pub(super) fn idle_loop() -> ! {
    let me = percpu::current_index();
    let mut seen = 0;
    loop {
        // Check and halt with interrupts masked in between: a wake-up IPI arriving after the check is taken
        // right after `sti; hlt` starts (sti's one-instruction shadow), so it cannot be missed.
        interrupts::disable();
        let generation = GENERATION.load(Ordering::Acquire);
        if generation == seen && !POSTED[me].waiting.load(Ordering::Acquire) {
            interrupts::enable_and_hlt();
            continue;
        }
        interrupts::enable();
        if let Some(task) = take_posted(me) {
            task(me);
            continue;
        }
        if generation == seen {
            continue;
        }
        seen = generation;
        let job = JOB.load(Ordering::Acquire);
        // SAFETY: a new generation's job stays alive until this CPU acknowledges it (module invariants).
        let job = unsafe { &*job };
        if job.targets & (1 << me) != 0 {
            // SAFETY: `data` is the `F` that `call` was instantiated for, alive as `job` is.
            unsafe { (job.call)(job.data, me) };
        }
        job.pending.fetch_sub(1, Ordering::Release);
    }
}

/// The wake-up IPI's handler: the wake-up is the whole point; just acknowledge it.
pub extern "x86-interrupt" fn wake(_frame: InterruptStackFrame) {
    apic::eoi();
}
