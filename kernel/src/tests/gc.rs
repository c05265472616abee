//! The garbage-collected heap in the kernel: 64 MiB of live managed objects under stop-the-world and
//! incremental (checkmark-verified) collection, mutated and verified, with every frame back afterwards;
//! the same with its stop-the-world marks spread over every CPU (parallel marking); and one managed
//! heap per CPU at once.
//!
//! Snapshots of the span heap are compared under [`Quiet`] (the timer handler allocates too).

use super::heap::non_meta_frames;
use crate::heap::{Quiet, HEAP};
use crate::ktest::TestCtx;
use crate::smp::{self, run_on_all};
use alloc::vec::Vec;
use core::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use spanalloc::gc::{
    ConcurrentWorkers, Gc, GcCell, GcConfig, GcHeap, GcStats, GcWeak, MarkWorkers, Mode, Mutation,
    Rootable, Trace,
};
use spanalloc::Stats;

/// Lists the nodes are spread over (node `i` is in list `i % LISTS`, newest first).
const LISTS: usize = 256;
/// Nodes allocated per `mutate` call while building.
const BATCH: u64 = 1024;
/// Marking work per explicit step in incremental mode.
const STEP_BUDGET: usize = 256 << 10;
/// Nodes whose id is a multiple of this are unlinked by the mutation phase.
const DROP_EVERY: u64 = 3;
/// Nodes whose id is a multiple of this get a new payload.
const RENEW_EVERY: u64 = 5;
const RENEWED: u64 = 1 << 63;

#[derive(Trace)]
struct Node<'gc> {
    id: u64,
    data: GcCell<'gc, Gc<'gc, [u64; 32]>>,
    next: GcCell<'gc, Option<Gc<'gc, Node<'gc>>>>,
}

#[derive(Trace)]
struct Lists<'gc> {
    heads: [GcCell<'gc, Option<Gc<'gc, Node<'gc>>>>; LISTS],
    /// Weak references to the first node unlinked and the first node kept.
    dropped: GcCell<'gc, Option<GcWeak<'gc, Node<'gc>>>>,
    kept: GcCell<'gc, Option<GcWeak<'gc, Node<'gc>>>>,
}

struct Root;
impl Rootable for Root {
    type Root<'gc> = Lists<'gc>;
}

fn payload(tag: u64) -> [u64; 32] {
    core::array::from_fn(|k| tag.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ k as u64)
}

/// What node `id` must hold after the mutation phase.
fn expected_payload(id: u64) -> [u64; 32] {
    payload(if id.is_multiple_of(RENEW_EVERY) {
        id ^ RENEWED
    } else {
        id
    })
}

fn new_heap(config: GcConfig) -> GcHeap<Root> {
    GcHeap::new(&HEAP, config, |_| Lists {
        heads: core::array::from_fn(|_| GcCell::new(None)),
        dropped: GcCell::new(None),
        kept: GcCell::new(None),
    })
}

fn push<'gc>(mc: &Mutation<'gc>, lists: &Lists<'gc>, id: u64) {
    let head = &lists.heads[id as usize % LISTS];
    let node = Gc::new(
        mc,
        Node {
            id,
            data: GcCell::new(Gc::new(mc, payload(id))),
            next: GcCell::new(head.get()),
        },
    );
    head.set(mc, Some(node));
}

/// Unlinks the nodes `DROP_EVERY` divides and renews the payload of those `RENEW_EVERY` divides, in
/// list `list`; keeps weak references to the first node of each kind.
fn mutate_list<'gc>(mc: &Mutation<'gc>, lists: &Lists<'gc>, list: usize) {
    let mut prev: Option<Gc<'gc, Node<'gc>>> = None;
    let mut at = lists.heads[list].get();
    while let Some(node) = at {
        at = node.next.get();
        if node.id.is_multiple_of(DROP_EVERY) {
            match prev {
                None => lists.heads[list].set(mc, at),
                Some(p) => p.next.set(mc, at),
            }
            if lists.dropped.get().is_none() {
                lists.dropped.set(mc, Some(GcWeak::new(mc, node)));
            }
            continue;
        }
        if node.id.is_multiple_of(RENEW_EVERY) {
            node.data.set(mc, Gc::new(mc, payload(node.id ^ RENEWED)));
        }
        if lists.kept.get().is_none() {
            lists.kept.set(mc, Some(GcWeak::new(mc, node)));
        }
        prev = Some(node);
    }
}

/// Checks that list `list` holds exactly the kept ids below `nodes`, newest first, with their payloads.
fn verify_list(lists: &Lists<'_>, list: usize, nodes: u64) -> u64 {
    let mut expected = (0..nodes)
        .rev()
        .filter(|id| *id as usize % LISTS == list && !id.is_multiple_of(DROP_EVERY));
    let mut at = lists.heads[list].get();
    let mut count = 0;
    while let Some(node) = at {
        assert_eq!(Some(node.id), expected.next(), "list {list}: wrong node");
        assert_eq!(
            *node.data.get().as_ref(),
            expected_payload(node.id),
            "list {list}: node {} has a wrong payload",
            node.id
        );
        count += 1;
        at = node.next.get();
    }
    assert_eq!(expected.next(), None, "list {list} lost its tail");
    count
}

/// Builds `nodes` nodes, mutates, collects and verifies them in `heap`; returns the live bytes after
/// the build and after the mutation.
fn build_mutate_verify(gc: &mut GcHeap<Root>, nodes: u64, incremental: bool) -> (usize, usize) {
    for batch in 0..nodes.div_ceil(BATCH) {
        gc.mutate(|mc, lists| {
            for id in batch * BATCH..((batch + 1) * BATCH).min(nodes) {
                push(mc, lists, id);
            }
        });
        if incremental {
            gc.step(STEP_BUDGET);
        }
    }
    gc.collect();
    let built = gc.stats().last_live;
    let freed_before = gc.stats().objects_freed;
    if incremental {
        // Mutate while a mark runs: the barrier must keep what the mutation moves around.
        gc.start_cycle();
    }
    for list in 0..LISTS {
        gc.mutate(|mc, lists| mutate_list(mc, lists, list));
        if incremental {
            gc.step(STEP_BUDGET);
        }
    }
    gc.collect();
    gc.collect();
    let stats = gc.stats();
    let dropped = nodes.div_ceil(DROP_EVERY);
    assert!(
        stats.objects_freed >= freed_before + 2 * dropped,
        "{} objects freed after unlinking {dropped} nodes and their payloads",
        stats.objects_freed - freed_before
    );
    let kept = gc.mutate(|mc, lists| {
        assert!(
            lists
                .dropped
                .get()
                .expect("a node was unlinked")
                .upgrade(mc)
                .is_none(),
            "an unlinked node survived two collections"
        );
        let kept = lists.kept.get().expect("a node was kept").upgrade(mc);
        assert!(
            kept.is_some_and(|n| !n.id.is_multiple_of(DROP_EVERY)),
            "a kept node was freed"
        );
        (0..LISTS)
            .map(|list| verify_list(lists, list, nodes))
            .sum::<u64>()
    });
    assert_eq!(kept, nodes - dropped);
    (built, stats.last_live)
}

/// Grows the span heap past the managed heap's peak once and trims it: arenas and the page tables that
/// map them stay once made (as metadata does), so only a baseline taken after them can be compared.
fn warm_up() {
    const PEAK: usize = 192 << 20;
    let block: Vec<u8> = core::hint::black_box(Vec::with_capacity(PEAK));
    drop(block);
    HEAP.trim();
}

/// The span heap's counters that must come back once the managed heap is gone and trimmed.
fn footprint(s: &Stats) -> (usize, usize, i64) {
    (s.objects(), s.pages.dirty_free, non_meta_frames(s))
}

fn managed_64mib(mode: Mode, verify: bool, mark_workers: Option<MarkWorkers>) {
    managed_64mib_with(mode, verify, mark_workers, None);
}

fn managed_64mib_with(
    mode: Mode,
    verify: bool,
    mark_workers: Option<MarkWorkers>,
    concurrent_workers: Option<ConcurrentWorkers>,
) -> GcStats {
    // 64 MiB of nodes with their payloads (a 32 B node and a 256 B payload).
    const NODES: u64 = (64 << 20) / 288 + 8192;
    let _quiet = Quiet::new();
    warm_up();
    let before = HEAP.stats();
    let mut gc = new_heap(GcConfig {
        verify,
        mark_workers,
        concurrent_workers,
        ..crate::gc::config(mode)
    });
    let (built, kept) = build_mutate_verify(&mut gc, NODES, mode != Mode::StopTheWorld);
    let stats = gc.stats();
    log::info!(
        "{NODES} nodes: {} MiB live after the build, {} MiB after unlinking every {DROP_EVERY}rd; {} cycles, \
         max pause {} us, heap at its peak:\n{}",
        built >> 20,
        kept >> 20,
        stats.cycles,
        stats.pause_max_ns / 1000,
        HEAP.stats()
    );
    assert!(built >= 64 << 20, "only {built} B live after the build");
    assert!(
        kept < built * 3 / 4 && kept > built / 2,
        "{kept} B live after unlinking a third of {built} B"
    );
    drop(gc);
    HEAP.trim();
    let after = HEAP.stats();
    assert_eq!(
        footprint(&after),
        footprint(&before),
        "(objects, dirty free pages, frames besides metadata) not back after dropping the managed heap:\n\
         before:\n{before}\nafter:\n{after}"
    );
    stats
}

pub fn gc_stw_64mib(_ctx: &mut TestCtx) {
    managed_64mib(Mode::StopTheWorld, false, None);
}

/// CPUs that ran a mark job in `gc_parallel_64mib` (each counts once).
static MARK_CPUS: AtomicU64 = AtomicU64::new(0);

fn counting_mark_workers(helpers: usize, job: &(dyn Fn(usize) + Sync)) {
    let workers = crate::gc::mark_workers().expect("more than one CPU");
    (workers.run)(helpers, &|cpu| {
        MARK_CPUS.fetch_or(1 << cpu, Ordering::Relaxed);
        job(cpu);
    });
}

/// Stop-the-world marks spread over every online CPU, checkmark on.
pub fn gc_parallel_64mib(_ctx: &mut TestCtx) {
    let workers = crate::gc::mark_workers().expect("more than one CPU");
    MARK_CPUS.store(0, Ordering::Relaxed);
    managed_64mib(
        Mode::StopTheWorld,
        true,
        Some(MarkWorkers {
            run: counting_mark_workers,
            ..workers
        }),
    );
    let cpus = MARK_CPUS.load(Ordering::Relaxed).count_ones() as usize;
    assert_eq!(cpus, smp::online_count(), "mark jobs ran on {cpus} CPUs");
    log::info!("parallel marks ran on {cpus} CPUs");
}

/// Concurrent marking: mark jobs on the 3 APs beside the mutator on the boot CPU, checkmark on.
pub fn gc_concurrent_64mib(_ctx: &mut TestCtx) {
    let workers = crate::gc::concurrent_workers().expect("more than one CPU");
    crate::gc::CONCURRENT_JOB_CPUS.store(0, Ordering::Relaxed);
    let stats = managed_64mib_with(Mode::Concurrent, true, None, Some(workers));
    let cpus = crate::gc::CONCURRENT_JOB_CPUS
        .load(Ordering::Relaxed)
        .count_ones() as usize;
    assert_eq!(
        cpus,
        smp::online_count() - 1,
        "concurrent mark jobs ran on {cpus} APs"
    );
    assert!(
        stats.concurrent_jobs > 0 && stats.concurrent_scan_bytes > 0,
        "no marking beside the mutator: {stats:?}"
    );
    log::info!(
        "concurrent marks: {} jobs beside the mutator, {} MiB scanned by workers on {cpus} APs",
        stats.concurrent_jobs,
        stats.concurrent_scan_bytes >> 20
    );
}

pub fn gc_incremental_64mib(_ctx: &mut TestCtx) {
    managed_64mib(Mode::Incremental, true, None);
}

pub fn gc_per_cpu_heaps(_ctx: &mut TestCtx) {
    // 8 MiB per CPU, several cycles each.
    const NODES: u64 = (8 << 20) / 288;
    let _quiet = Quiet::new();
    warm_up();
    let before = HEAP.stats();
    let done = AtomicUsize::new(0);
    run_on_all(&|cpu| {
        let mode = if cpu % 2 == 0 {
            Mode::Incremental
        } else {
            Mode::StopTheWorld
        };
        let mut gc = new_heap(GcConfig {
            verify: true,
            ..crate::gc::config(mode)
        });
        build_mutate_verify(&mut gc, NODES, mode == Mode::Incremental);
        assert!(gc.stats().cycles >= 3, "CPU {cpu}: too few cycles");
        drop(gc);
        done.fetch_add(1, Ordering::Relaxed);
    });
    assert_eq!(done.load(Ordering::Relaxed), smp::online_count());
    HEAP.trim();
    let after = HEAP.stats();
    assert_eq!(
        footprint(&after),
        footprint(&before),
        "(objects, dirty free pages, frames besides metadata) not back after every CPU's heap:\n\
         before:\n{before}\nafter:\n{after}"
    );
}
