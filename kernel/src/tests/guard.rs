//! Heap sampling in the kernel: guard pages catch an overflow and a use after free at the faulting
//! access (the page-fault handler panics with the heap's report, which these tests expect), a canary
//! write is caught at free, and the ordinary random workload runs unchanged with both the heap profile
//! and guard pages sampling at high rates.

use crate::heap::{Quiet, HEAP};
use crate::ktest::TestCtx;
use crate::tests::workload::{Rng, Workload};
use core::alloc::{GlobalAlloc, Layout};
use core::hint::black_box;
use spanalloc::profile::{GuardSide, Sampling};

pub const OVERFLOW: &str = "spanalloc guard: out-of-bounds access";
pub const USE_AFTER_FREE: &str = "spanalloc guard: use-after-free access";
pub const CANARY: &str = "canary damaged";

/// Every small allocation on this CPU guarded from now on (while the pool has room).
fn guard_everything(side: GuardSide) {
    HEAP.set_sampling(Sampling {
        profile_rate: 1,
        guard_interval: 1,
        guard_side: side,
    })
    .expect("sampling is compiled into the kernel's heap");
}

fn guarded(layout: Layout) -> *mut u8 {
    // Masked: a timer interrupt that allocates between the fast path's countdown and the miss path takes
    // this sampling event for its own allocation (an event per interval, whoever allocates), and this
    // allocation would then not be guarded.
    // SAFETY: a non-zero layout.
    let p = x86_64::instructions::interrupts::without_interrupts(|| unsafe { HEAP.alloc(layout) });
    assert!(!p.is_null(), "allocation of {layout:?} failed");
    assert!(HEAP.is_guarded(p), "interval 1: {p:p} should be guarded");
    p
}

pub fn guard_overflow_faults(_ctx: &mut TestCtx) {
    guard_everything(GuardSide::Right);
    let layout = Layout::from_size_align(40, 8).expect("layout");
    let p = guarded(layout);
    // SAFETY: inside the object.
    unsafe { p.write_bytes(1, 40) };
    log::info!("writing one byte past the guarded object at {p:p} (40 B)");
    // SAFETY: deliberately not: one byte past the end, in the guard page; the fault handler panics.
    unsafe { black_box(p).add(40).write_volatile(0xee) };
}

pub fn guard_use_after_free_faults(_ctx: &mut TestCtx) {
    guard_everything(GuardSide::Right);
    let layout = Layout::from_size_align(100, 8).expect("layout");
    let p = guarded(layout);
    // SAFETY: p is live with this layout.
    unsafe { HEAP.dealloc(p, layout) };
    log::info!("reading the freed guarded object at {p:p}");
    // SAFETY: deliberately not: a read of freed memory (its page is unmapped); the fault handler panics.
    let v = unsafe { black_box(p).add(8).read_volatile() };
    log::error!("read {v} from a freed guarded object without a fault");
}

pub fn guard_canary_damage_at_free(_ctx: &mut TestCtx) {
    guard_everything(GuardSide::Left);
    let layout = Layout::from_size_align(24, 8).expect("layout");
    let p = guarded(layout);
    // SAFETY: deliberately not: one byte past the end, inside the mapped page (the canary); no fault.
    unsafe { black_box(p).add(24).write_volatile(0) };
    // SAFETY: p is live with this layout; the heap finds the canary damaged and panics.
    unsafe { HEAP.dealloc(p, layout) };
}

pub fn sampling_workload_unchanged(_ctx: &mut TestCtx) {
    const OPS: u64 = 300_000;
    let quiet = Quiet::new();
    let start = HEAP.stats();
    HEAP.set_sampling(Sampling {
        profile_rate: 16 << 10,
        guard_interval: 32 << 10,
        guard_side: GuardSide::Right,
    })
    .expect("sampling is compiled into the kernel's heap");
    let mut workload = Workload::new(2048, 32 << 20);
    let with_table = HEAP.stats();
    drop(quiet);
    let counts = workload.run(&mut Rng::new(0x5a3b_1e5a_3b1e), OPS);
    assert_eq!(counts.total(), OPS);
    let during = HEAP.sampling_stats();
    let _quiet = Quiet::new();
    workload.free_all();
    let freed = HEAP.stats();
    assert_eq!(
        (freed.objects(), freed.bytes()),
        (with_table.objects(), with_table.bytes()),
        "objects still counted after freeing every block:\n{freed}"
    );
    drop(workload);
    assert_eq!(HEAP.stats().objects(), start.objects());
    let after = HEAP.sampling_stats();
    log::info!(
        "{OPS} ops with every byte checked; sampling during the run: {during:?}, after: {after:?}"
    );
    assert!(
        during.buckets > 0 && during.live_samples > 0,
        "profile samples taken: {during:?}"
    );
    assert!(after.guarded > 100, "guarded allocations made: {after:?}");
    assert_eq!(
        after.live_samples, 0,
        "every sampled object's free was recognised: {after:?}"
    );
    let mut buf = alloc::vec![0u8; 1 << 20];
    let n = HEAP
        .write_heap_profile(None, &mut buf)
        .expect("a 1 MiB buffer holds the profile");
    assert!(n > 100, "a profile of {n} bytes");
    HEAP.set_sampling(Sampling::OFF).expect("off");
}
