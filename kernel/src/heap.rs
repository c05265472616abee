//! The bootstrap kernel heap: `buddy_system_allocator` over a static 4 MiB array, so `alloc` works from the
//! first instruction after `init`. A later change replaces it with spanalloc; nothing outside this module
//! knows which allocator serves `alloc`.
//!
//! Invariants: the array is handed to the allocator once, by [`init`], before the first allocation, and no
//! other code touches it. The allocator's spin lock does not mask interrupts: no interrupt handler may
//! allocate (none does; the kernel runs with interrupts disabled so far).

use buddy_system_allocator::LockedHeap;
use core::cell::UnsafeCell;
use core::sync::atomic::{AtomicBool, Ordering};

const HEAP_SIZE: usize = 4 * 1024 * 1024;

/// Enough orders for blocks up to 2^31 bytes, beyond the whole array.
const ORDER: usize = 32;

#[global_allocator]
static ALLOCATOR: LockedHeap<ORDER> = LockedHeap::empty();

#[repr(C, align(4096))]
struct HeapSpace(UnsafeCell<[u8; HEAP_SIZE]>);

// SAFETY: after `init` the bytes belong to the allocator, which serializes access behind its lock.
unsafe impl Sync for HeapSpace {}

static HEAP_SPACE: HeapSpace = HeapSpace(UnsafeCell::new([0; HEAP_SIZE]));
static INITIALIZED: AtomicBool = AtomicBool::new(false);

/// Gives the static array to the allocator. Later calls do nothing.
pub fn init() {
    if INITIALIZED.swap(true, Ordering::AcqRel) {
        return;
    }
    let start = HEAP_SPACE.0.get() as usize;
    // SAFETY: the array is static, writable, unused by anything else, and given to the allocator exactly once
    // (guarded by INITIALIZED).
    unsafe { ALLOCATOR.lock().init(start, HEAP_SIZE) };
}

/// Heap usage, in bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HeapStats {
    /// Bytes requested by live allocations.
    pub requested: usize,
    /// Bytes of live allocations after rounding up to the allocator's block sizes.
    pub allocated: usize,
    /// Bytes the heap manages in total.
    pub total: usize,
}

pub fn stats() -> HeapStats {
    let heap = ALLOCATOR.lock();
    HeapStats {
        requested: heap.stats_alloc_user(),
        allocated: heap.stats_alloc_actual(),
        total: heap.stats_total_bytes(),
    }
}
