//! spanalloc as the kernel's global allocator: `alloc`'s collections, a million random operations, memory
//! given back to the frame allocator, and allocation failure as a null pointer.
//!
//! Heap snapshots are compared only under a [`Quiet`] guard: the timer handler allocates too.

use super::workload::{Rng, Workload};
use crate::clock::Instant;
use crate::heap::{Quiet, HEAP};
use crate::ktest::TestCtx;
use alloc::boxed::Box;
use alloc::collections::{BTreeMap, VecDeque};
use alloc::string::String;
use alloc::vec::Vec;
use core::alloc::{GlobalAlloc, Layout};
use core::fmt::Write;
use spanalloc::{Stats, FRAME_SIZE};

pub fn global_alloc_collections(_ctx: &mut TestCtx) {
    let _quiet = Quiet::new();
    let start = HEAP.stats();
    {
        let numbers: Vec<u64> = (0..10_000).collect();
        assert_eq!(numbers.iter().sum::<u64>(), 10_000 * 9_999 / 2);

        let boxed = Box::new([7u32; 100]);
        assert!(boxed.iter().all(|&x| x == 7));

        let mut text = String::new();
        for i in 0..100 {
            let _ = write!(text, "{i},");
        }
        assert_eq!(text.len(), 10 * 2 + 90 * 3);
        assert!(text.starts_with("0,1,2,") && text.ends_with("98,99,"));

        let squares: BTreeMap<u32, u64> = (0..1000u32)
            .map(|i| (i, u64::from(i) * u64::from(i)))
            .collect();
        assert_eq!(squares.len(), 1000);
        assert_eq!(squares.get(&999), Some(&998_001));
        assert!(squares.keys().copied().eq(0..1000));

        // A ring buffer that wraps and grows: contents survive its reallocations.
        let mut ring: VecDeque<u32> = VecDeque::with_capacity(4);
        for i in 0..5000 {
            ring.push_back(i);
            if i % 3 == 0 {
                assert_eq!(ring.pop_front(), Some(i / 3));
            }
        }
        assert!(ring.iter().copied().eq(1667..5000));

        // One large object (its own span, straight from the page heap).
        let big = alloc::vec![0x5au8; 1 << 20];
        assert!(big.iter().all(|&b| b == 0x5a));

        let during = HEAP.stats();
        assert!(
            during.objects() >= start.objects() + 6 && during.large_objects > start.large_objects,
            "the heap does not count the live collections:\n{during}"
        );
        log::info!("heap with the collections alive:\n{during}");
    }
    let end = HEAP.stats();
    assert_eq!(
        (end.objects(), end.bytes(), end.large_objects),
        (start.objects(), start.bytes(), start.large_objects),
        "objects not returned after dropping the collections:\nstart:\n{start}\nend:\n{end}"
    );
}

/// Slots of the random workloads (the bound on live blocks) and the cap on their bytes.
const SLOTS: usize = 4096;
const MAX_LIVE_BYTES: usize = 96 << 20;

pub fn random_workload_1m(_ctx: &mut TestCtx) {
    const OPS: u64 = 1_000_000;
    let quiet = Quiet::new();
    let start = HEAP.stats();
    let mut workload = Workload::new(SLOTS, MAX_LIVE_BYTES);
    let with_table = HEAP.stats();
    // The timer handler's allocations interleave with the run's.
    drop(quiet);
    let mut rng = Rng::new(0x5eed_1234_abcd_0001);
    let clock = Instant::now();
    let counts = workload.run(&mut rng, OPS);
    let elapsed = clock.elapsed();
    assert_eq!(counts.total(), OPS);
    let in_heap = crate::clock::ticks_to_duration(counts.heap_ticks);
    let per_second = |d: core::time::Duration| u128::from(OPS) * 1_000_000 / d.as_micros().max(1);
    log::info!(
        "{} ops ({} alloc, {} alloc_zeroed, {} dealloc, {} realloc; peak {} KiB live) in {} ms: {} ops/s \
         with every byte written and verified; {} ms inside the heap: {} ops/s (TCG)",
        counts.total(),
        counts.alloc,
        counts.alloc_zeroed,
        counts.dealloc,
        counts.realloc,
        counts.peak_live_bytes / 1024,
        elapsed.as_millis(),
        per_second(elapsed),
        in_heap.as_millis(),
        per_second(in_heap),
    );
    log::info!("heap at the end of the run:\n{}", HEAP.stats());
    let _quiet = Quiet::new();
    workload.free_all();
    let freed = HEAP.stats();
    assert_eq!(
        (freed.objects(), freed.bytes()),
        (with_table.objects(), with_table.bytes()),
        "objects still counted after freeing every block:\n{freed}"
    );
    drop(workload);
    let end = HEAP.stats();
    assert_eq!(end.objects(), start.objects());
}

/// Frames held by the heap other than its metadata (which stays at its peak, as in Go) and the tables
/// covering the pages it tracks (span map, page allocator: the heap grows by 4 MiB chunks, so a later
/// run may track more).
pub(super) fn non_meta_frames(s: &Stats) -> i64 {
    s.frames_held.0 as i64 - ((s.pages.meta_mapped + s.pages.meta_tables) / FRAME_SIZE) as i64
}

pub fn frames_return_to_baseline(_ctx: &mut TestCtx) {
    const OPS: u64 = 100_000;
    const SEED: u64 = 0xba5e_11fe;
    let _quiet = Quiet::new();
    let mut workload = Workload::new(SLOTS, MAX_LIVE_BYTES);
    let before = HEAP.stats();
    let mut run = || {
        workload.reset_ids();
        let counts = workload.run(&mut Rng::new(SEED), OPS);
        let peak = HEAP.stats();
        workload.free_all();
        HEAP.trim();
        (counts, peak)
    };
    let (counts, peak) = run();
    let baseline = HEAP.stats();
    run();
    let after = HEAP.stats();
    log::info!(
        "{} ops, peak {} KiB live; heap at the peak:\n{peak}\nafter the first run and trim:\n{baseline}\nafter \
         the second:\n{after}",
        counts.total(),
        counts.peak_live_bytes / 1024
    );

    assert!(
        peak.frames_held.0 > baseline.frames_held.0 + 1024,
        "the workload did not make the heap grow (a vacuous test):\n{peak}"
    );
    for (when, s) in [("first", &baseline), ("second", &after)] {
        assert_eq!(
            (s.objects(), s.pages.dirty_free),
            (before.objects(), 0),
            "after the {when} run and trim: objects or free mapped pages are not back:\n{s}"
        );
    }
    assert_eq!(
        after.pages.in_use, baseline.pages.in_use,
        "pages in spans differ between the runs:\nfirst:\n{baseline}\nsecond:\n{after}"
    );
    assert!(
        after.pages.released_total > baseline.pages.released_total,
        "trim released nothing"
    );
    assert_eq!(
        non_meta_frames(&after),
        non_meta_frames(&baseline),
        "frames held besides metadata differ between the runs:\nfirst:\n{baseline}\nsecond:\n{after}"
    );
    // Nobody but the heap takes frames while the test runs: every frame is free or the heap's, always.
    for s in [&baseline, &after] {
        assert_eq!(
            s.frames_free.0 + s.frames_held.0,
            before.frames_free.0 + before.frames_held.0,
            "frames lost between the frame allocator and the heap"
        );
    }
    // The same operations again need no more metadata than the first time, so every frame is back.
    assert_eq!(
        after.frames_free, baseline.frames_free,
        "the frame allocator's free count is not restored:\nfirst:\n{baseline}\nsecond:\n{after}"
    );
}

pub fn out_of_memory_returns_null(ctx: &mut TestCtx) {
    let huge = Layout::from_size_align(2 << 30, 4096).expect("layout");
    assert!(
        ctx.memory.frames.managed.bytes() < huge.size() as u64,
        "the machine has {} B of managed memory: not too little for {huge:?}",
        ctx.memory.frames.managed.bytes()
    );
    let _quiet = Quiet::new();
    let before = HEAP.stats();
    // SAFETY: a valid layout with a non-zero size.
    let p = unsafe { HEAP.alloc(huge) };
    assert!(p.is_null(), "an allocation of {huge:?} succeeded at {p:p}");
    let after = HEAP.stats();
    // Before giving up, the allocation gave this CPU's cached objects back to their spans, which may
    // have freed spans: fewer pages in use, never more.
    assert!(
        after.objects() == before.objects() && after.pages.in_use <= before.pages.in_use,
        "the failed allocation left something allocated:\nbefore:\n{before}\nafter:\n{after}"
    );
    assert_eq!(
        after.frames_free.0 + after.frames_held.0,
        before.frames_free.0 + before.frames_held.0,
        "the failed allocation lost frames"
    );
    log::info!("heap after the failed allocation of {huge:?}:\n{after}");

    // The heap still works, for small and large objects.
    let v: Vec<u64> = (0..100_000).collect();
    assert_eq!(v.iter().sum::<u64>(), 100_000 * 99_999 / 2);
    let s = alloc::format!("{}", v.len());
    assert_eq!(s, "100000");
}

/// Matched against the panic message of `alloc`'s default allocation-error handler.
pub const ALLOCATION_FAILURE: &str = "memory allocation of 2147483648 bytes failed";

pub fn allocation_failure_panics(_ctx: &mut TestCtx) {
    // `Vec` gets null from the heap and calls `handle_alloc_error`; the panic handler prints the heap's
    // statistics, then reports the expected panic.
    // black_box: an allocation whose memory is never used may be optimized away, failure included.
    let v: Vec<u8> = core::hint::black_box(Vec::with_capacity(2 << 30));
    panic!("allocated {} bytes of a 512 MiB machine", v.capacity());
}
