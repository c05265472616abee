//! The `bench` command: throughput of one fixed alloc/free workload on 1, 2 and 4 CPUs in one boot, for
//! spanalloc (the global heap) and, as the baselines a hobby kernel would otherwise use,
//! `buddy_system_allocator::LockedHeap` (one spin lock around a buddy heap) and
//! `linked_list_allocator::LockedHeap` (one spin lock around a first-fit free list), each over an arena of
//! its own.
//!
//! Output: a table and the spread of the per-repetition ratios, then, for scripts, one line per
//! measurement, `BENCH <allocator> <cpus> <ops_per_sec>`, and two per ratio,
//! `BENCH_RATIO spanalloc/<peer> <cpus> <median>x` and `BENCH_RATIO_RANGE spanalloc/<peer> <cpus>
//! <least>x <greatest>x`.
//!
//! Method: every CPU of a run does the same number of operations (so total work grows with the CPUs: ideal
//! scaling keeps the time flat and multiplies ops/s); a run's time is from the first CPU's start to the last
//! CPU's end, after a barrier. Each CPU count runs [`REPEATS`] repetitions; a repetition runs every
//! allocator once, back to back (the order rotating between repetitions), so the ratios of one repetition
//! share the machine's load of that moment. Reported: the median ops/s of each allocator, and the median of
//! the per-repetition ratios (which a load spike in one repetition moves less than a ratio of medians).
//! Before the runs every CPU's emulated TLB is grown to thousands of entries ([`grow_emulator_tlbs`]:
//! under TCG its size is otherwise an accident of what the CPU did before).
//! The timer interrupt (which itself allocates from spanalloc) stays on, as in the tests. Under QEMU's TCG
//! the vCPUs share the host's cores: numbers compare allocators within one boot, not machines.
//!
//! Build: the runner boots this command in the bench kernel (build.rs), the kernel built as it ships: profile
//! `kernel-bench`, without debug assertions (and the standard library's unsafe-precondition checks they turn
//! on) and overflow checks, for spanalloc, its peers and the kernel alike. Booted in the test kernel (only
//! through the runner's library, `Qemu::image`: its command line always picks the bench kernel),
//! spanalloc keeps both while the peers still have neither (the root Cargo.toml's `profile.kernel.package`
//! overrides); the header line says which, and such ratios err against spanalloc.
//!
//! `bench quick` runs three repetitions of a sixtieth of the pairs each: a smoke test of the command and
//! the bench kernel, not a measurement.
//!
//! Invariant: the peer heaps are only used here, and never from an interrupt handler (their locks do not
//! mask interrupts, so an allocating handler could deadlock on them).

use crate::clock::{self, Instant};
use crate::heap::HEAP;
use crate::smp::{self, run_on};
use crate::{println, qemu};
use alloc::vec::Vec;
use buddy_system_allocator::LockedHeap;
use core::alloc::{GlobalAlloc, Layout};
use core::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

/// Alloc+free pairs per CPU per run (`bench quick`: a sixtieth).
const PAIRS_PER_CPU: u64 = 400_000;
/// Blocks each CPU keeps live (a ring: each allocation replaces the oldest block).
const LIVE: usize = 64;
const REPEATS: usize = 7;
/// `bench quick`'s share of the pairs.
const QUICK_DIVISOR: u64 = 60;
/// `bench quick`'s repetitions: more than one, so that its spread is a real least and greatest.
const QUICK_REPEATS: usize = 3;
/// Each peer heap's arena.
const PEER_ARENA: usize = 32 << 20;

static BUDDY: LockedHeap<32> = LockedHeap::empty();
static LINKED_LIST: linked_list_allocator::LockedHeap = linked_list_allocator::LockedHeap::empty();

/// An arena for a peer heap, from the global heap (never freed: the boot ends with this command).
fn peer_arena(name: &str) -> *mut u8 {
    let arena = Layout::from_size_align(PEER_ARENA, 4096).expect("layout");
    // SAFETY: a non-zero layout.
    let base = unsafe { HEAP.alloc(arena) };
    assert!(
        !base.is_null(),
        "bench: no memory for the {name} heap's {PEER_ARENA} B arena"
    );
    base
}

/// xorshift64*: the same size sequence for both allocators.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn between(&mut self, lo: usize, hi: usize) -> usize {
        lo + (self.next() % (hi - lo + 1) as u64) as usize
    }
}

/// Sizes skewed small, as kernel objects are: 75% 8..128 B, 25% 129..1024 B.
fn size(rng: &mut Rng) -> usize {
    if rng.next() % 4 < 3 {
        rng.between(8, 128)
    } else {
        rng.between(129, 1024)
    }
}

/// The allocation call of every contestant, never inlined into the loop: a kernel reaches its allocator
/// through `__rust_alloc`, a call, whichever allocator it is (inlined into the loop, a peer's whole
/// alloc and free melt into it, which no kernel's `Box` gets). Inside, each allocator's own code is
/// inlined as its crate allows.
///
/// Each contestant's `alloc_call`, `dealloc_call` and `workload` start on a page boundary. QEMU's
/// TCG chains translated blocks directly only within a guest page; a jump to another page goes
/// through a lookup. Placed by the linker, one contestant's code could straddle a page boundary and
/// pay that lookup on its fast path while another's did not: in one build buddy's `alloc_call`
/// began 16 bytes before a page boundary, in another spanalloc's `workload` crossed one, and the
/// 1-CPU ratio moved with such builds. Page-aligned, the calls between the three cross pages for
/// every contestant, and none of the three crosses one itself. What the compiler inlines into them
/// is still its choice: a peer's `GlobalAlloc` methods kept out of line cost that peer one more jump
/// per call, to another page (buddy's, in some builds), or an indirect jump through the GOT, which
/// TCG never chains (linked-list's); spanalloc's `alloc` and `dealloc` are `#[inline]`.
///
/// # Safety
/// As `GlobalAlloc::alloc`.
#[inline(never)]
#[rustc_align(4096)]
unsafe fn alloc_call<A: GlobalAlloc>(heap: &A, layout: Layout) -> *mut u8 {
    // SAFETY: forwarded from the caller.
    unsafe { heap.alloc(layout) }
}

/// The free call of every contestant, never inlined (as [`alloc_call`]).
///
/// # Safety
/// As `GlobalAlloc::dealloc`.
#[inline(never)]
#[rustc_align(4096)]
unsafe fn dealloc_call<A: GlobalAlloc>(heap: &A, p: *mut u8, layout: Layout) {
    // SAFETY: forwarded from the caller.
    unsafe { heap.dealloc(p, layout) }
}

/// One CPU's share: `pairs` allocations and as many frees, touching each block's first and last byte.
#[rustc_align(4096)]
fn workload<A: GlobalAlloc>(heap: &A, seed: u64, pairs: u64) {
    let mut rng = Rng(seed);
    let mut ring: [(*mut u8, Layout); LIVE] = [(core::ptr::null_mut(), Layout::new::<u8>()); LIVE];
    for i in 0..pairs as usize + LIVE {
        let slot = &mut ring[i % LIVE];
        if !slot.0.is_null() {
            // SAFETY: allocated below from `heap` with this layout, freed once.
            unsafe { dealloc_call(heap, slot.0, slot.1) };
            slot.0 = core::ptr::null_mut();
        }
        if i >= pairs as usize {
            continue;
        }
        let layout = Layout::from_size_align(size(&mut rng), 8).expect("layout");
        // SAFETY: the size is not zero.
        let p = unsafe { alloc_call(heap, layout) };
        assert!(!p.is_null(), "bench: out of memory for {layout:?}");
        // SAFETY: a fresh block of layout.size() >= 1 bytes.
        unsafe {
            p.write(i as u8);
            p.add(layout.size() - 1).write(i as u8);
        }
        *slot = (p, layout);
    }
}

/// Pages each CPU touches between the flushes of [`grow_emulator_tlbs`], and the rounds.
const TLB_WARM_PAGES: usize = 4096;
const TLB_WARM_ROUNDS: usize = 8;

/// Grows every CPU's software TLB in QEMU's TCG to some thousands of entries before the runs.
///
/// TCG resizes a vCPU's TLB only when the guest flushes it whole (a CR3 load), by how many entries
/// it used since the last resize: over 70% doubles it, under 30% over 100 ms shrinks it, down to 64
/// entries, direct-mapped (plus 8 victims). So each CPU's TLB had whatever size its history left:
/// an AP that idled before the bench ran with a small one, and so did CPU 0 in builds whose start
/// touched fewer pages. The runs then measured that size as much as the allocators: measured in one
/// sitting, spanalloc ran 6.5 Mops/s on CPU 1 against 21.5 on CPU 0 (buddy 17.1 and 17.4), and a
/// build that skipped zeroing fresh frames at map time fell to 7.9 on CPU 0. With every TLB grown
/// first, the 2- and 4-CPU rates about doubled. Hardware TLBs do not shrink to the working set (a
/// current x86 core has some 1,500 second-level entries), so the runs are closer to a machine's with
/// TLBs this size. Touching `TLB_WARM_PAGES` pages then flushing, `TLB_WARM_ROUNDS` times, takes a
/// 64-entry TLB past 4,096 entries; nothing in the runs flushes a whole TLB afterwards (spanalloc
/// releases no pages here: the summary line counts its shootdowns), so the size stays.
fn grow_emulator_tlbs() {
    let pages = alloc::vec![0u8; TLB_WARM_PAGES * 4096];
    let base = pages.as_ptr() as usize;
    smp::run_on_all(&|_| {
        for _ in 0..TLB_WARM_ROUNDS {
            for page in 0..TLB_WARM_PAGES {
                // SAFETY: an address inside `pages`, which lives until every CPU has returned.
                unsafe { core::ptr::read_volatile((base + page * 4096) as *const u8) };
            }
            x86_64::instructions::tlb::flush_all();
        }
    });
}

/// Runs the workload on CPUs `0..cpus` at once; returns operations (allocs + frees) per second.
fn measure<A: GlobalAlloc + Sync>(heap: &A, cpus: usize, pairs: u64) -> u64 {
    let arrived = AtomicUsize::new(0);
    let first_start = AtomicU64::new(u64::MAX);
    let last_end = AtomicU64::new(0);
    run_on((1u64 << cpus) - 1, &|cpu| {
        arrived.fetch_add(1, Ordering::AcqRel);
        while arrived.load(Ordering::Acquire) < cpus {
            core::hint::spin_loop();
        }
        first_start.fetch_min(clock::ticks(), Ordering::AcqRel);
        workload(heap, 0xbe4c_0000 + cpu as u64, pairs);
        last_end.fetch_max(clock::ticks(), Ordering::AcqRel);
    });
    let elapsed = clock::ticks_to_duration(last_end.into_inner() - first_start.into_inner());
    let ops = 2 * pairs * cpus as u64;
    (u128::from(ops) * 1_000_000_000 / elapsed.as_nanos().max(1)) as u64
}

/// The median, least and greatest of some samples (ops/s or per-repetition ratios).
#[derive(Clone, Copy)]
struct Spread {
    median: u64,
    least: u64,
    greatest: u64,
}

fn spread(mut samples: Vec<u64>) -> Spread {
    samples.sort_unstable();
    Spread {
        median: samples[samples.len() / 2],
        least: samples[0],
        greatest: samples[samples.len() - 1],
    }
}

pub fn run(quick: bool) -> ! {
    let (pairs, repeats) = if quick {
        (PAIRS_PER_CPU / QUICK_DIVISOR, QUICK_REPEATS)
    } else {
        (PAIRS_PER_CPU, REPEATS)
    };
    // SAFETY: each arena is ours, writable, and handed to its heap once.
    unsafe {
        BUDDY.lock().init(peer_arena("buddy") as usize, PEER_ARENA);
        LINKED_LIST
            .lock()
            .init(peer_arena("linked-list"), PEER_ARENA);
    }

    grow_emulator_tlbs();
    let online = smp::online_count();
    let counts: Vec<usize> = [1, 2, 4].into_iter().filter(|&n| n <= online).collect();
    println!(
        "bench: {pairs} alloc+free pairs per CPU (8..1024 B, {LIVE} live per CPU), median of \
         {repeats} runs, {online} CPUs online"
    );
    if cfg!(debug_assertions) {
        println!(
            "bench: the test kernel: spanalloc built with debug assertions and overflow checks, the \
             peers without (the ratios err against spanalloc)"
        );
    } else {
        println!(
            "bench: the bench kernel: spanalloc, its peers and the kernel built as they ship, without \
             debug assertions and overflow checks"
        );
    }
    let clock = Instant::now();
    let (released_before, shootdowns_before) = (
        HEAP.stats().pages.released_total,
        crate::smp::shootdown::requests(),
    );
    let mut results: Vec<(&str, usize, u64)> = Vec::new();
    // Per CPU count: the per-repetition ratios spanalloc/buddy and spanalloc/linked, in 1/100, as
    // (median, least, greatest).
    let mut ratios: Vec<(usize, Spread, Spread)> = Vec::new();
    let ratio = |a: u64, b: u64| a * 100 / b.max(1);
    for &cpus in &counts {
        let mut samples: [Vec<u64>; 3] = [Vec::new(), Vec::new(), Vec::new()];
        for rep in 0..repeats {
            for k in 0..3 {
                let which = (rep + k) % 3;
                let ops = match which {
                    0 => measure(&HEAP, cpus, pairs),
                    1 => measure(&BUDDY, cpus, pairs),
                    _ => measure(&LINKED_LIST, cpus, pairs),
                };
                samples[which].push(ops);
            }
        }
        let per_rep = |other: usize| {
            spread(
                (0..repeats)
                    .map(|r| ratio(samples[0][r], samples[other][r]))
                    .collect(),
            )
        };
        ratios.push((cpus, per_rep(1), per_rep(2)));
        let [ours, buddy, linked] = samples;
        results.push(("spanalloc", cpus, spread(ours).median));
        results.push(("buddy_locked", cpus, spread(buddy).median));
        results.push(("linked_list_locked", cpus, spread(linked).median));
    }
    println!(
        "bench: {:>5} {:>16} {:>16} {:>16} {:>9} {:>9}",
        "cpus", "spanalloc ops/s", "buddy ops/s", "linked ops/s", "vs buddy", "vs linked"
    );
    let shown = |r: u64| alloc::format!("{}.{:02}x", r / 100, r % 100);
    for (row, &(cpus, vs_buddy, vs_linked)) in results.chunks(3).zip(&ratios) {
        let (ours, buddy, linked) = (row[0].2, row[1].2, row[2].2);
        println!(
            "bench: {cpus:>5} {ours:>16} {buddy:>16} {linked:>16} {:>9} {:>9}",
            shown(vs_buddy.median),
            shown(vs_linked.median)
        );
    }
    println!(
        "bench: ops/s are medians; the ratios are medians of the {repeats} per-repetition ratios"
    );
    // The spread says how far one boot's figure can be trusted: under TCG the ratio also moves
    // from boot to boot (README, "Benchmarks").
    for &(cpus, vs_buddy, vs_linked) in &ratios {
        println!(
            "bench: cpus {cpus}: per-repetition ratios from least to greatest: vs buddy {} to {}, \
             vs linked {} to {}",
            shown(vs_buddy.least),
            shown(vs_buddy.greatest),
            shown(vs_linked.least),
            shown(vs_linked.greatest)
        );
    }
    let stats = HEAP.stats();
    println!(
        "bench: spanalloc released {} pages ({} TLB shootdowns); {} operations interrupted a fast path",
        stats.pages.released_total - released_before,
        crate::smp::shootdown::requests() - shootdowns_before,
        stats.interrupted_fast_paths
    );
    for (name, cpus, ops) in &results {
        println!("BENCH {name} {cpus} {ops}");
    }
    for (cpus, vs_buddy, vs_linked) in &ratios {
        for (peer, r) in [
            ("buddy_locked", vs_buddy),
            ("linked_list_locked", vs_linked),
        ] {
            println!("BENCH_RATIO spanalloc/{peer} {cpus} {}", shown(r.median));
            println!(
                "BENCH_RATIO_RANGE spanalloc/{peer} {cpus} {} {}",
                shown(r.least),
                shown(r.greatest)
            );
        }
    }
    println!("bench: done in {} ms", clock.elapsed().as_millis());
    qemu::exit(qemu::ExitCode::Success)
}
