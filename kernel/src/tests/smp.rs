//! SMP: every CPU comes up as itself, and the heap holds under real concurrency: all CPUs allocating at
//! once, frees on another CPU than the allocation, allocations in the timer interrupt on top of
//! allocation-heavy code, unmapping (with TLB shootdowns) while others allocate, and every frame back at
//! the end.
//!
//! Each test puts the CPUs to work through `smp::run_on_all` and checks, besides its own assertions, that
//! the heap counts as many live objects afterwards as before.

use super::workload::Rng;
use crate::clock::Instant;
use crate::heap::{Quiet, HEAP};
use crate::ktest::TestCtx;
use crate::smp::{self, bits, run_on_all, shootdown};
use crate::{apic, percpu, timer};
use alloc::collections::VecDeque;
use alloc::vec::Vec;
use core::alloc::{GlobalAlloc, Layout};
use core::ptr::NonNull;
use core::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use core::time::Duration;
use spanalloc::{Stats, FRAME_SIZE};
use spin::Mutex;

/// The CPUs of a test, counted and listed once.
fn online() -> (usize, u64) {
    (smp::online_count(), smp::online_mask())
}

/// A one-shot barrier: every CPU of the job waits until all have arrived.
struct Barrier {
    arrived: AtomicUsize,
    parties: usize,
}

impl Barrier {
    fn new(parties: usize) -> Self {
        Barrier {
            arrived: AtomicUsize::new(0),
            parties,
        }
    }

    fn wait(&self) {
        self.arrived.fetch_add(1, Ordering::AcqRel);
        while self.arrived.load(Ordering::Acquire) < self.parties {
            core::hint::spin_loop();
        }
    }
}

/// Live objects of the heap, for before/after comparisons.
/// Objects in use, counted while no timer handler allocates (the count is a snapshot across CPUs).
fn live_objects() -> usize {
    let _quiet = Quiet::new();
    HEAP.stats().objects()
}

pub fn smp_all_cpus_online(ctx: &mut TestCtx) {
    let madt = smp::madt().expect("smp: the MADT was not read");
    let listed: Vec<u32> = madt.enabled().map(|p| p.apic_id).collect();
    let (count, mask) = online();
    if let Some(failure) = smp::failures().first() {
        panic!(
            "{} CPUs failed to start, the first: {failure}",
            smp::failures().len()
        );
    }
    assert_eq!(
        listed.len(),
        ctx.cpus,
        "the MADT lists {} enabled CPUs ({listed:?}), QEMU was started with {}",
        listed.len(),
        ctx.cpus
    );
    assert_eq!(
        count,
        listed.len(),
        "{count} CPUs online (mask {mask:#b}), the MADT lists {listed:?}"
    );
    assert_eq!(
        mask,
        (1u64 << count) - 1,
        "CPU indices are not 0..{count}: {mask:#b}"
    );

    // Each CPU reports, from inside a job, the index it was given, the index its GS block holds and its
    // local APIC's id.
    let seen: [AtomicU64; percpu::MAX_CPUS] = [const { AtomicU64::new(0) }; percpu::MAX_CPUS];
    let runs = AtomicUsize::new(0);
    run_on_all(&|cpu| {
        runs.fetch_add(1, Ordering::Relaxed);
        let index = percpu::current_index();
        let apic_id = apic::id();
        let previous = seen[cpu].swap(
            (1 << 63) | ((index as u64) << 32) | u64::from(apic_id),
            Ordering::SeqCst,
        );
        assert_eq!(previous, 0, "CPU {cpu} ran the job twice");
    });
    assert_eq!(runs.load(Ordering::Relaxed), count);
    let mut apic_ids = Vec::new();
    for cpu in bits(mask) {
        let report = seen[cpu].load(Ordering::SeqCst);
        assert!(report != 0, "CPU {cpu} never ran the job");
        let index = (report >> 32 & 0x7fff_ffff) as usize;
        let apic_id = report as u32;
        assert_eq!(
            index, cpu,
            "the job for CPU {cpu} ran on the CPU whose GS block says {index}"
        );
        assert_eq!(
            apic_id,
            percpu::get(cpu).apic_id.load(Ordering::Relaxed),
            "CPU {cpu}'s local APIC id differs from the one it was started as"
        );
        assert!(
            listed.contains(&apic_id),
            "CPU {cpu} has APIC id {apic_id}, which the MADT does not list"
        );
        assert!(
            !apic_ids.contains(&apic_id),
            "two CPUs have APIC id {apic_id}"
        );
        apic_ids.push(apic_id);
        log::info!("cpu {cpu}: APIC id {apic_id}, index {index} from gs:[0]");
    }

    // Every CPU's local APIC timer ticks.
    let before: Vec<u64> = bits(mask)
        .map(|cpu| percpu::get(cpu).ticks.load(Ordering::Relaxed))
        .collect();
    let start = Instant::now();
    while start.elapsed() < Duration::from_millis(100) {
        core::hint::spin_loop();
    }
    for (cpu, ticks_before) in bits(mask).zip(before) {
        let ticks = percpu::get(cpu).ticks.load(Ordering::Relaxed);
        assert!(
            ticks > ticks_before,
            "CPU {cpu}'s timer did not tick in 100 ms ({ticks} ticks in all)"
        );
    }
}

/// Operations of `smp_concurrent_alloc`, over all CPUs.
const CONCURRENT_OPS: u64 = 1_000_000;

/// A size skewed small, as kernel objects are: 90% up to 256 B, 9% up to 4 KiB, 1% up to 64 KiB (beyond
/// the small classes: large objects from the page heap).
fn churn_size(rng: &mut Rng) -> usize {
    match rng.below(100) {
        0..90 => rng.between(1, 256),
        90..99 => rng.between(257, 4096),
        _ => rng.between(4097, 64 << 10),
    }
}

/// The word at index `w` of the block tagged `tag`.
fn churn_word(tag: u64, w: usize) -> u64 {
    tag.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ (w as u64).wrapping_mul(0xd6e8_feb8_6659_fd93)
}

/// One CPU's live set of tagged blocks. Each block is filled with words derived from a tag unique to it
/// (CPU and sequence number) and verified in full before it is freed: a block handed out twice, to this
/// CPU or another, is overwritten by the other owner's tag and caught. Sizes are rounded up to whole words.
struct Churn {
    cpu: usize,
    live: Vec<Option<(NonNull<u64>, Layout, u64)>>,
    rng: Rng,
    next_tag: u64,
}

impl Churn {
    fn new(cpu: usize, seed: u64, slots: usize) -> Self {
        Churn {
            cpu,
            live: (0..slots).map(|_| None).collect(),
            rng: Rng::new(seed),
            next_tag: (cpu as u64) << 40,
        }
    }

    /// `ops` operations: a random slot's block is freed if there is one, else one is allocated there.
    fn run(&mut self, ops: u64) {
        for _ in 0..ops {
            let slot = self.rng.below(self.live.len() as u64) as usize;
            match self.live[slot].take() {
                Some(block) => self.free(block),
                None => self.live[slot] = Some(self.alloc()),
            }
        }
    }

    fn alloc(&mut self) -> (NonNull<u64>, Layout, u64) {
        let size = churn_size(&mut self.rng).next_multiple_of(8);
        let layout = Layout::from_size_align(size, 8).expect("layout");
        // SAFETY: the size is not zero.
        let ptr = NonNull::new(unsafe { HEAP.alloc(layout) }.cast::<u64>())
            .unwrap_or_else(|| panic!("CPU {}: out of memory for {layout:?}", self.cpu));
        let tag = self.next_tag;
        self.next_tag += 1;
        for w in 0..size / 8 {
            // SAFETY: a fresh block of size / 8 words, ours alone.
            unsafe { ptr.as_ptr().add(w).write(churn_word(tag, w)) };
        }
        (ptr, layout, tag)
    }

    fn free(&self, (ptr, layout, tag): (NonNull<u64>, Layout, u64)) {
        for w in 0..layout.size() / 8 {
            // SAFETY: w < size / 8: inside the block, which is ours until the dealloc below.
            let got = unsafe { ptr.as_ptr().add(w).read() };
            if got != churn_word(tag, w) {
                panic!(
                    "block {tag:#x} at {:p} ({} B) on CPU {} changed at word {w}: {got:#x}",
                    ptr.as_ptr(),
                    layout.size(),
                    self.cpu
                );
            }
        }
        // SAFETY: allocated from HEAP with this layout, freed once.
        unsafe { HEAP.dealloc(ptr.as_ptr().cast(), layout) };
    }
}

impl Drop for Churn {
    /// Frees (and checks) every block still live.
    fn drop(&mut self) {
        for slot in 0..self.live.len() {
            if let Some(block) = self.live[slot].take() {
                self.free(block);
            }
        }
    }
}

pub fn smp_concurrent_alloc(_ctx: &mut TestCtx) {
    let (count, _) = online();
    let start = live_objects();
    let per_cpu = CONCURRENT_OPS.div_ceil(count as u64);
    let barrier = Barrier::new(count);
    let clock = Instant::now();
    run_on_all(&|cpu| {
        let mut churn = Churn::new(cpu, 0xc0c0_0000 + cpu as u64, 1024);
        barrier.wait();
        churn.run(per_cpu);
    });
    log::info!(
        "{} operations on {count} CPUs in {} ms",
        per_cpu * count as u64,
        clock.elapsed().as_millis()
    );
    assert!(per_cpu * count as u64 >= CONCURRENT_OPS);
    assert_eq!(
        live_objects(),
        start,
        "objects leaked or double-counted:\n{}",
        HEAP.stats()
    );
}

/// One block in flight from its producer to its consumer.
struct InFlight {
    ptr: NonNull<u8>,
    layout: Layout,
    tag: u64,
}

// SAFETY: the block is owned by whoever holds the InFlight; moving it to another CPU moves that ownership.
unsafe impl Send for InFlight {}

/// Blocks each CPU sends to the next in `smp_remote_free`.
const REMOTE_BLOCKS_PER_CPU: u64 = 50_000;
const QUEUE_CAPACITY: usize = 256;

fn remote_layout(rng: &mut Rng) -> Layout {
    Layout::from_size_align(churn_size(rng).next_multiple_of(8), 8).expect("layout")
}

pub fn smp_remote_free(_ctx: &mut TestCtx) {
    let (count, _) = online();
    let start = live_objects();
    // Queue `i` carries blocks from CPU i to CPU (i + 1) % count; capacity reserved up front.
    let queues: Vec<Mutex<VecDeque<InFlight>>> = (0..count)
        .map(|_| Mutex::new(VecDeque::with_capacity(QUEUE_CAPACITY)))
        .collect();
    let total = REMOTE_BLOCKS_PER_CPU * count as u64;
    let seen: Vec<AtomicU64> = (0..total.div_ceil(64)).map(|_| AtomicU64::new(0)).collect();
    let consumed = AtomicU64::new(0);
    let barrier = Barrier::new(count);
    run_on_all(&|cpu| {
        let outbox = &queues[cpu];
        let inbox = &queues[(cpu + count - 1) % count];
        let mut rng = Rng::new(0x7e40_7e00 + cpu as u64);
        let mut produced = 0;
        let mut received = 0;
        barrier.wait();
        while produced < REMOTE_BLOCKS_PER_CPU || received < REMOTE_BLOCKS_PER_CPU {
            if produced < REMOTE_BLOCKS_PER_CPU && outbox.lock().len() < QUEUE_CAPACITY {
                let layout = remote_layout(&mut rng);
                // SAFETY: the layout has a non-zero size.
                let ptr = NonNull::new(unsafe { HEAP.alloc(layout) })
                    .unwrap_or_else(|| panic!("out of memory for {layout:?}"));
                let tag = cpu as u64 * REMOTE_BLOCKS_PER_CPU + produced;
                for w in 0..layout.size() / 8 {
                    // SAFETY: w < size / 8; the block is fresh and ours.
                    unsafe { ptr.as_ptr().cast::<u64>().add(w).write(churn_word(tag, w)) };
                }
                outbox.lock().push_back(InFlight { ptr, layout, tag });
                produced += 1;
            }
            let Some(block) = inbox.lock().pop_front() else {
                core::hint::spin_loop();
                continue;
            };
            for w in 0..block.layout.size() / 8 {
                // SAFETY: the producer wrote the whole block before queueing it; it is ours now.
                let got = unsafe { block.ptr.as_ptr().cast::<u64>().add(w).read() };
                assert_eq!(
                    got,
                    churn_word(block.tag, w),
                    "block {} at {:p} ({} B) from CPU {} arrived on CPU {cpu} changed at word {w}",
                    block.tag,
                    block.ptr.as_ptr(),
                    block.layout.size(),
                    block.tag / REMOTE_BLOCKS_PER_CPU
                );
            }
            let bit = 1 << (block.tag % 64);
            let before = seen[(block.tag / 64) as usize].fetch_or(bit, Ordering::Relaxed);
            assert!(before & bit == 0, "block {} was received twice", block.tag);
            // SAFETY: allocated from HEAP with this layout on the producer's CPU; freed once, here.
            unsafe { HEAP.dealloc(block.ptr.as_ptr(), block.layout) };
            received += 1;
            consumed.fetch_add(1, Ordering::Relaxed);
        }
    });
    assert_eq!(
        consumed.load(Ordering::Relaxed),
        total,
        "blocks lost in transit"
    );
    let missing = (0..total)
        .find(|&tag| seen[(tag / 64) as usize].load(Ordering::Relaxed) & 1 << (tag % 64) == 0);
    assert_eq!(missing, None, "a block never arrived");
    assert!(queues.iter().all(|q| q.lock().is_empty()));
    drop((queues, seen));
    assert_eq!(live_objects(), start, "objects leaked:\n{}", HEAP.stats());
}

/// Timer-handler allocations each CPU must see while it is inside its allocation loop.
const TIMER_ALLOCS_WANTED: u64 = 50;
const TIMER_TEST_LIMIT: Duration = Duration::from_secs(20);

pub fn smp_alloc_in_timer_interrupt(_ctx: &mut TestCtx) {
    let (count, mask) = online();
    let was_on = timer::set_alloc_in_handler(true);
    let start = live_objects();
    let got: [AtomicU64; percpu::MAX_CPUS] = [const { AtomicU64::new(0) }; percpu::MAX_CPUS];
    let ops: [AtomicU64; percpu::MAX_CPUS] = [const { AtomicU64::new(0) }; percpu::MAX_CPUS];
    let barrier = Barrier::new(count);
    run_on_all(&|cpu| {
        let me = percpu::current();
        let mut churn = Churn::new(cpu, 0x71e3_0000 + cpu as u64, 256);
        let before = me.timer_allocs_in_loop.load(Ordering::Relaxed);
        barrier.wait();
        let clock = Instant::now();
        me.in_alloc_loop.store(true, Ordering::Release);
        let mut done = 0;
        while me.timer_allocs_in_loop.load(Ordering::Relaxed) - before < TIMER_ALLOCS_WANTED
            && clock.elapsed() < TIMER_TEST_LIMIT
        {
            churn.run(100);
            done += 100;
        }
        me.in_alloc_loop.store(false, Ordering::Release);
        drop(churn);
        got[cpu].store(
            me.timer_allocs_in_loop.load(Ordering::Relaxed) - before,
            Ordering::Relaxed,
        );
        ops[cpu].store(done, Ordering::Relaxed);
    });
    timer::set_alloc_in_handler(was_on);
    for cpu in bits(mask) {
        let n = got[cpu].load(Ordering::Relaxed);
        log::info!(
            "cpu {cpu}: {n} timer-handler allocations during {} loop operations",
            ops[cpu].load(Ordering::Relaxed)
        );
        assert!(
            n >= TIMER_ALLOCS_WANTED,
            "CPU {cpu}: only {n} timer-handler allocations while inside its allocation loop in {} s",
            TIMER_TEST_LIMIT.as_secs()
        );
    }
    assert_eq!(live_objects(), start, "objects leaked:\n{}", HEAP.stats());
}

/// Interrupts that must land inside a CPU's fast path (the heap's count of operations served through
/// its locks because they found their CPU's cache busy), all CPUs together.
const INTERRUPTED_FAST_PATHS_WANTED: usize = 40;

/// Timer interrupts landing inside the heap's fast path: every CPU hammers alloc/free of the sizes the
/// timer handler uses (8..512 B) while the handler allocates and frees, and keeps a block from one tick
/// to the next. Every block is filled and checked before it is freed, so an object handed out twice (an
/// interrupt that used a half-updated cache) shows as changed contents; the heap must report interrupts
/// that found the cache busy, and count as many live objects at the end as at the start.
pub fn interrupts_inside_the_fast_path(_ctx: &mut TestCtx) {
    const RING: usize = 64;
    let (count, _) = online();
    let was_on = timer::set_alloc_in_handler(true);
    let was_holding = timer::set_hold_in_handler(true);
    let start = live_objects();
    let interrupted_before = HEAP.stats().interrupted_fast_paths;
    let interrupted = || HEAP.stats().interrupted_fast_paths - interrupted_before;
    let ops = AtomicU64::new(0);
    let barrier = Barrier::new(count);
    run_on_all(&|cpu| {
        let mut rng = Rng::new(0x1a7e_0000 + cpu as u64);
        let mut ring: [(*mut u64, usize, u64); RING] = [(core::ptr::null_mut(), 0, 0); RING];
        barrier.wait();
        let clock = Instant::now();
        let mut done = 0u64;
        while !(done % 4096 == 0
            && (interrupted() >= INTERRUPTED_FAST_PATHS_WANTED
                || clock.elapsed() >= TIMER_TEST_LIMIT))
        {
            let slot = &mut ring[done as usize % RING];
            if !slot.0.is_null() {
                let (p, words, tag) = *slot;
                for i in 0..words {
                    // SAFETY: a live block of `words` u64s, written below.
                    let w = unsafe { p.add(i).read() };
                    assert_eq!(
                        w,
                        tag ^ i as u64,
                        "CPU {cpu}: block {p:p} changed at word {i}"
                    );
                }
                // SAFETY: allocated below with this layout, freed once.
                unsafe { HEAP.dealloc(p.cast(), Layout::array::<u64>(words).unwrap()) };
            }
            let words = rng.between(1, 64);
            let tag = rng.next();
            // SAFETY: a non-zero size.
            let p = unsafe { HEAP.alloc(Layout::array::<u64>(words).unwrap()) }.cast::<u64>();
            assert!(!p.is_null(), "CPU {cpu}: out of memory");
            for i in 0..words {
                // SAFETY: a fresh block of `words` u64s.
                unsafe { p.add(i).write(tag ^ i as u64) };
            }
            *slot = (p, words, tag);
            done += 1;
        }
        for &(p, words, _) in &ring {
            if !p.is_null() {
                // SAFETY: live blocks of this layout, freed once.
                unsafe { HEAP.dealloc(p.cast(), Layout::array::<u64>(words).unwrap()) };
            }
        }
        ops.fetch_add(done, Ordering::Relaxed);
    });
    timer::set_hold_in_handler(was_holding);
    // Each CPU takes back the block its handler still holds (holding is off: no handler touches it now).
    run_on_all(&|_| {
        timer::take_held();
    });
    timer::set_alloc_in_handler(was_on);
    let n = interrupted();
    log::info!(
        "{n} interrupts landed inside a fast path during {} operations on {count} CPUs",
        ops.load(Ordering::Relaxed)
    );
    assert!(
        n >= INTERRUPTED_FAST_PATHS_WANTED,
        "only {n} interrupts landed inside a fast path in {} s",
        TIMER_TEST_LIMIT.as_secs()
    );
    assert_eq!(live_objects(), start, "objects leaked:\n{}", HEAP.stats());
}

/// Operations each allocating CPU runs in `smp_unmap_while_others_allocate`.
const UNMAP_TEST_OPS: u64 = 150_000;

pub fn smp_unmap_while_others_allocate(_ctx: &mut TestCtx) {
    let (count, mask) = online();
    let start = live_objects();
    let stats_before = HEAP.stats();
    let requests_before = shootdown::requests();
    let served_before: u64 = bits(mask)
        .map(|cpu| percpu::get(cpu).shootdowns.load(Ordering::Relaxed))
        .sum();
    let workers_done = AtomicUsize::new(0);
    let trims = AtomicU64::new(0);
    let trims_that_released = AtomicU64::new(0);
    let barrier = Barrier::new(count);
    run_on_all(&|cpu| {
        if cpu == 0 {
            barrier.wait();
            while workers_done.load(Ordering::Acquire) < count - 1 {
                let before = HEAP.stats().pages.released_total;
                HEAP.trim();
                trims.fetch_add(1, Ordering::Relaxed);
                if HEAP.stats().pages.released_total > before {
                    trims_that_released.fetch_add(1, Ordering::Relaxed);
                }
                // Until the next tick: a trim per millisecond keeps unmapping going without starving the
                // others of the locks (and, under emulation, of the host's cores).
                x86_64::instructions::hlt();
            }
            return;
        }
        let mut churn = Churn::new(cpu, 0x0a3a_0000 + cpu as u64, 1024);
        barrier.wait();
        churn.run(UNMAP_TEST_OPS);
        drop(churn);
        workers_done.fetch_add(1, Ordering::Release);
    });
    let stats_after = HEAP.stats();
    let requests = shootdown::requests() - requests_before;
    let served: u64 = bits(mask)
        .map(|cpu| percpu::get(cpu).shootdowns.load(Ordering::Relaxed))
        .sum::<u64>()
        - served_before;
    log::info!(
        "{} trims ({} released pages), {} pages released in all, {requests} shootdown requests, {served} \
         served by other CPUs ({} NMIs that were not shootdowns)",
        trims.load(Ordering::Relaxed),
        trims_that_released.load(Ordering::Relaxed),
        stats_after.pages.released_total - stats_before.pages.released_total,
        shootdown::other_nmis()
    );
    assert!(
        trims_that_released.load(Ordering::Relaxed) > 0,
        "no trim unmapped anything while the others allocated (a vacuous run)"
    );
    assert!(
        requests > 0 && served >= requests,
        "{requests} shootdown requests but {served} served: unmapping did not reach the other CPUs"
    );
    assert_eq!(live_objects(), start, "objects leaked:\n{}", HEAP.stats());
}

/// Frames held by the heap other than its metadata (which stays at its peak, as in Go) and the tables
/// covering the pages it tracks (span map, page allocator: the heap grows by 4 MiB chunks, so a later
/// run may track more).
fn non_meta_frames(s: &Stats) -> i64 {
    s.frames_held.0 as i64 - ((s.pages.meta_mapped + s.pages.meta_tables) / FRAME_SIZE) as i64
}

pub fn smp_frames_return_to_baseline(_ctx: &mut TestCtx) {
    const OPS_PER_CPU: u64 = 50_000;
    let (count, _) = online();
    // The measurement compares heap snapshots: the timer handler's own allocations would take spans
    // between them, so they are off for this test (the concurrency comes from the workloads).
    let quiet = Quiet::new();
    let before = HEAP.stats();
    let peak_frames = AtomicU64::new(0);
    let run = || {
        let barrier = Barrier::new(count);
        run_on_all(&|cpu| {
            let mut churn = Churn::new(cpu, 0xf4a3_0000 + cpu as u64, 4096);
            barrier.wait();
            churn.run(OPS_PER_CPU);
            peak_frames.fetch_max(HEAP.stats().frames_held.0, Ordering::Relaxed);
        });
        // Every CPU gives back its cached objects; each trim ends with a full scavenge.
        run_on_all(&|_| HEAP.trim());
        HEAP.stats()
    };
    let baseline = run();
    let after = run();
    drop(quiet);
    log::info!("peak {} frames held; after the first run and trims:\n{baseline}\nafter the second:\n{after}",
        peak_frames.load(Ordering::Relaxed));
    assert!(
        peak_frames.load(Ordering::Relaxed) > baseline.frames_held.0 + 1024,
        "the workload did not make the heap grow (a vacuous test)"
    );
    for (when, s) in [("first", &baseline), ("second", &after)] {
        assert_eq!(
            (s.objects(), s.pages.dirty_free),
            (before.objects(), 0),
            "after the {when} run and trims: objects or free mapped pages are not back:\n{s}"
        );
        let cached: usize = s.classes.iter().map(|c| c.cached).sum();
        assert_eq!(
            cached, 0,
            "objects still cached after every CPU trimmed:\n{s}"
        );
    }
    assert_eq!(
        after.pages.in_use, baseline.pages.in_use,
        "pages in spans differ between the runs:\nfirst:\n{baseline}\nsecond:\n{after}"
    );
    assert!(
        after.pages.released_total > baseline.pages.released_total,
        "the trims released nothing"
    );
    assert_eq!(
        non_meta_frames(&after),
        non_meta_frames(&baseline),
        "frames held besides metadata differ between the runs:\nfirst:\n{baseline}\nsecond:\n{after}"
    );
    assert_eq!(
        after.frames_free.0 + after.frames_held.0,
        before.frames_free.0 + before.frames_held.0,
        "frames lost between the frame allocator and the heap"
    );
}
