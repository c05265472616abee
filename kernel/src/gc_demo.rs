//! The garbage collector's demo, run after the heap demo: binary-trees (the benchmarks game's GC test) and
//! a long-lived linked structure under mutation, once with stop-the-world marking, once incremental and
//! (with more than one CPU) once stop-the-world with parallel marking on every CPU, each printing the
//! collector's gctrace lines and a summary of the pauses the mutator saw.

use crate::clock::Instant;
use crate::gc::PauseLog;
use crate::heap::HEAP;
use crate::println;
use crate::tests::workload::Rng;
use alloc::vec;
use spanalloc::gc::{Gc, GcCell, GcConfig, GcHeap, Mode, Mutation, PauseKind, Rootable, Trace};

/// Depth of binary-trees' long-lived tree (its stretch tree is one deeper); a few seconds under TCG.
const MAX_DEPTH: u32 = 14;
const MIN_DEPTH: u32 = 4;
/// Lists of the long-lived structure, and records per list.
const LISTS: usize = 64;
const LIST_LEN: usize = 64;
/// Rounds of mutation of the long-lived structure, each in its own `mutate` call.
const ROUNDS: usize = 20_000;
/// Marking work per explicit step in incremental mode (Go's background mark worker, in bytes).
const STEP_BUDGET: usize = 32 << 10;

#[derive(Trace)]
struct Tree<'gc> {
    left: Option<Gc<'gc, Tree<'gc>>>,
    right: Option<Gc<'gc, Tree<'gc>>>,
}

/// A record of the long-lived structure: its payload is a function of its id, so a record the
/// collector freed too early (and something else reused) shows up as a wrong payload.
#[derive(Trace)]
struct Record<'gc> {
    id: u64,
    data: GcCell<'gc, Gc<'gc, [u64; 32]>>,
    next: GcCell<'gc, Option<Gc<'gc, Record<'gc>>>>,
}

#[derive(Trace)]
struct DemoRoot<'gc> {
    long_lived: GcCell<'gc, Option<Gc<'gc, Tree<'gc>>>>,
    lists: [GcCell<'gc, Option<Gc<'gc, Record<'gc>>>>; LISTS],
}

struct Root;
impl Rootable for Root {
    type Root<'gc> = DemoRoot<'gc>;
}

fn tree<'gc>(mc: &Mutation<'gc>, depth: u32) -> Gc<'gc, Tree<'gc>> {
    let (left, right) = if depth == 0 {
        (None, None)
    } else {
        (Some(tree(mc, depth - 1)), Some(tree(mc, depth - 1)))
    };
    Gc::new(mc, Tree { left, right })
}

fn count(t: Gc<'_, Tree<'_>>) -> u64 {
    1 + t.left.map_or(0, count) + t.right.map_or(0, count)
}

/// Builds and checks a tree of `depth` in one `mutate` call; panics if it lost nodes.
fn check_tree(gc: &mut GcHeap<Root>, mode: Mode, depth: u32) -> u64 {
    let nodes = gc.mutate(|mc, _| count(tree(mc, depth)));
    assert_eq!(nodes, (1 << (depth + 1)) - 1, "a tree of depth {depth}");
    pause_point(gc, mode);
    nodes
}

/// Background marking work between mutator steps (incremental mode only).
fn pause_point(gc: &mut GcHeap<Root>, mode: Mode) {
    if mode == Mode::Incremental {
        gc.step(STEP_BUDGET);
    }
}

fn binary_trees(gc: &mut GcHeap<Root>, mode: Mode) {
    let stretch = check_tree(gc, mode, MAX_DEPTH + 1);
    println!(
        "gc demo: stretch tree of depth {} check {stretch}",
        MAX_DEPTH + 1
    );
    gc.mutate(|mc, root| root.long_lived.set(mc, Some(tree(mc, MAX_DEPTH))));
    for depth in (MIN_DEPTH..=MAX_DEPTH).step_by(2) {
        let iterations = 1u64 << (MAX_DEPTH - depth + MIN_DEPTH);
        let check: u64 = (0..iterations).map(|_| check_tree(gc, mode, depth)).sum();
        println!("gc demo: {iterations} trees of depth {depth} check {check}");
    }
    let long_lived = gc.mutate(|_, root| root.long_lived.get().map_or(0, count));
    assert_eq!(long_lived, (1 << (MAX_DEPTH + 1)) - 1);
    println!("gc demo: long lived tree of depth {MAX_DEPTH} check {long_lived}");
}

fn payload(id: u64) -> [u64; 32] {
    core::array::from_fn(|k| id.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ k as u64)
}

fn record<'gc>(
    mc: &Mutation<'gc>,
    id: u64,
    next: Option<Gc<'gc, Record<'gc>>>,
) -> Gc<'gc, Record<'gc>> {
    Gc::new(
        mc,
        Record {
            id,
            data: GcCell::new(Gc::new(mc, payload(id))),
            next: GcCell::new(next),
        },
    )
}

/// Fills the lists, then replaces records (relinking) and payloads at random; checks every record.
fn linked_structure(gc: &mut GcHeap<Root>, mode: Mode) {
    let mut next_id = 0;
    for list in 0..LISTS {
        gc.mutate(|mc, root| {
            for _ in 0..LIST_LEN {
                let head = record(mc, next_id, root.lists[list].get());
                root.lists[list].set(mc, Some(head));
                next_id += 1;
            }
        });
        pause_point(gc, mode);
    }
    let mut rng = Rng::new(0x6c_1e57);
    for _ in 0..ROUNDS {
        let list = rng.below(LISTS as u64) as usize;
        let at = rng.below(LIST_LEN as u64 - 1) as usize;
        let id = next_id;
        next_id += 1;
        gc.mutate(|mc, root| {
            let mut prev = root.lists[list].get().expect("lists are never empty");
            for _ in 0..at {
                prev = prev.next.get().expect("lists keep their length");
            }
            // Replace the record after `prev` by a new one, and renew `prev`'s payload.
            let old = prev.next.get().expect("lists keep their length");
            prev.next.set(mc, Some(record(mc, id, old.next.get())));
            prev.data.set(mc, Gc::new(mc, payload(prev.id)));
        });
        pause_point(gc, mode);
    }
    let records = gc.mutate(|_, root| {
        let mut records = 0;
        for head in &root.lists {
            let mut at = head.get();
            while let Some(r) = at {
                assert_eq!(*r.data.get().as_ref(), payload(r.id), "record {}", r.id);
                records += 1;
                at = r.next.get();
            }
        }
        records
    });
    assert_eq!(records, LISTS * LIST_LEN);
    println!(
        "gc demo: {ROUNDS} rounds of relinking and payload renewal; {records} records verified"
    );
}

pub fn run() {
    let mut runs = vec![
        (Mode::StopTheWorld, "stw", None),
        (Mode::Incremental, "incremental", None),
    ];
    // Stop-the-world again with its marks spread over every CPU (its gctrace lines say by how many).
    if let Some(workers) = crate::gc::mark_workers() {
        runs.push((Mode::StopTheWorld, "stw, parallel mark", Some(workers)));
    }
    for (mode, name, workers) in runs {
        println!("gc demo: {name} mode");
        let log = PauseLog::start(1 << 16);
        let wall = Instant::now();
        let config = GcConfig {
            mark_workers: workers,
            ..log.config(mode)
        };
        let mut gc: GcHeap<Root> = GcHeap::new(&HEAP, config, |_| DemoRoot {
            long_lived: GcCell::new(None),
            lists: core::array::from_fn(|_| GcCell::new(None)),
        });
        binary_trees(&mut gc, mode);
        linked_structure(&mut gc, mode);
        let stats = gc.stats();
        drop(gc);
        let wall = wall.elapsed();
        let pauses = log.finish();
        println!(
            "gc demo: {name}: {} cycles, {} pauses: max {} us, p99 {} us, total GC {} ms of {} ms; {} MiB freed",
            stats.cycles,
            pauses.count,
            pauses.max.as_micros(),
            pauses.p99.as_micros(),
            pauses.total.as_millis(),
            wall.as_millis(),
            stats.bytes_freed >> 20
        );
        // What the pauses were spent on (`PauseKind`): kinds that occurred, count and longest.
        let mut kinds = alloc::string::String::new();
        for kind in PauseKind::ALL {
            let k = stats.pauses_of(kind);
            if k.count > 0 {
                use core::fmt::Write;
                let _ = write!(
                    kinds,
                    " {} {} (max {} us);",
                    kind.name(),
                    k.count,
                    k.max_ns / 1000
                );
            }
        }
        println!(
            "gc demo: {name}: pauses by kind:{}",
            kinds.trim_end_matches(';')
        );
    }
}
