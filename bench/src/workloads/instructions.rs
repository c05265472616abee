//! Instructions per operation, counted by valgrind's cachegrind: a figure the shared machine's load does
//! not move (the machines expose no hardware counters; time on them drifts by tens of percent).
//!
//! Method: a child process (this executable with `--instr-child NAME WORKLOAD N`) builds a fresh
//! contestant and runs exactly `N` operations of a workload; the parent runs it under
//! `valgrind --tool=cachegrind --cache-sim=no` with `N` and with `2N` and takes the difference of the two
//! instruction totals over `N`. Everything else (process start, heap creation, the first `N` operations'
//! warm-up) is the same in both runs and cancels; what is left is the steady state of `N` operations.
//!
//! Every contestant is called through the same non-inlined functions ([`alloc`], [`dealloc`],
//! [`realloc`]), as a program calls a C allocator's `malloc` or Rust calls `__rust_alloc`: the harness
//! around them is one piece of code for all, so its instructions are the same for every contestant, and a
//! difference between two contestants (or between spanalloc with and without sampling compiled in) is the
//! allocator's. The figures include that harness (the loop, the random numbers of random actions, the
//! call and return): compare them, don't read them as the allocator's own count.
//!
//! Invariants: a child frees every block before it exits; the operations are the same sequence for every
//! contestant (a fixed seed), so the counts compare like for like.

use core::alloc::{GlobalAlloc, Layout};
use std::path::Path;
use std::process::Command;

use super::{Config, Sample};
use crate::contestants::{Contestant, Id};
use crate::region::Region;
use crate::rng::{talc_align, talc_size, Rng};

/// The workloads counted, as metric stems.
pub const WORKLOADS: [&str; 3] = ["pair_16", "random_actions_200", "random_actions_30000"];

/// Variants of spanalloc counted beside the contestants (heap sampling's cost, issue 13): sampling compiled
/// in but off, and on at the default rates.
pub const SAMPLING_VARIANTS: [&str; 2] = ["spanalloc-sampling-idle", "spanalloc-sampling-default"];

/// Operations of the shorter run (the longer does twice as many).
fn ops(workload: &str, quick: bool) -> u64 {
    let n = match workload {
        "random_actions_30000" => 200_000,
        _ => 1_000_000,
    };
    if quick {
        n / 100
    } else {
        n
    }
}

/// Physical memory / arena of a child's contestant: the suite's default arena, so that spanalloc's caches
/// are sized as in the timed workloads (a smaller heap gets smaller per-CPU caches, `cache::cache_shift`).
const CHILD_ARENA_BYTES: usize = 256 << 20;

/// Whether valgrind can be run here.
pub fn valgrind_available() -> bool {
    Command::new("valgrind")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
}

/// Counts for contestant `name` (a contestant's name or one of [`SAMPLING_VARIANTS`]): samples
/// `instr_<workload>` per operation, or for a sampling variant `instr_sampling_<workload>_<idle|default>`.
pub fn count(name: &str, cfg: &Config) -> Vec<Sample> {
    let metric = |wl: &str| match name.strip_prefix("spanalloc-sampling-") {
        Some(variant) => format!("instr_sampling_{wl}_{variant}"),
        None => format!("instr_{wl}"),
    };
    // `--quick` (the smoke test) counts the first workload only.
    let workloads = if cfg.quick {
        &WORKLOADS[..1]
    } else {
        &WORKLOADS[..]
    };
    workloads
        .iter()
        .map(|wl| {
            let n = ops(wl, cfg.quick);
            let one = instructions(name, wl, n, cfg.seed);
            let two = instructions(name, wl, 2 * n, cfg.seed);
            Sample::new(metric(wl), two.saturating_sub(one) as f64 / n as f64)
        })
        .collect()
}

/// The instructions a child running `n` operations executes, whole process.
fn instructions(name: &str, workload: &str, n: u64, seed: u64) -> u64 {
    let exe = std::env::current_exe().expect("bench: path of this executable");
    let out_file = std::env::temp_dir().join(format!(
        "spanalloc-bench-cg-{}-{name}-{workload}-{n}",
        std::process::id()
    ));
    let out = Command::new("valgrind")
        .args(["--tool=cachegrind", "--cache-sim=no"])
        .arg(format!("--cachegrind-out-file={}", out_file.display()))
        .arg(&exe)
        .args(["--instr-child", name, workload, &n.to_string()])
        .args(["--seed", &seed.to_string()])
        .output()
        .expect("bench: spawn valgrind");
    assert!(
        out.status.success(),
        "bench: cachegrind child {name} {workload} {n} failed ({}): {}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let total = read_total(&out_file);
    let _ = std::fs::remove_file(&out_file);
    total.unwrap_or_else(|| panic!("bench: no instruction total in {}", out_file.display()))
}

/// The `summary:` line of a cachegrind output file (`--cache-sim=no`: instructions only).
fn read_total(path: &Path) -> Option<u64> {
    parse_summary(&std::fs::read_to_string(path).ok()?)
}

fn parse_summary(text: &str) -> Option<u64> {
    text.lines()
        .find_map(|l| l.strip_prefix("summary:"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

// ------------------------------------------------------------------------------------------------- child

/// Entry point of the child: `n` operations of `workload` on a fresh `name`.
pub fn run_child(name: &str, workload: &str, n: u64, seed: u64) {
    struct W<'a> {
        workload: &'a str,
        n: u64,
        seed: u64,
    }
    impl crate::contestants::Workload for W<'_> {
        type Out = ();
        fn run<A: Contestant>(&self, a: &A) {
            a.enter_thread(0);
            run_ops(a, self.workload, self.n, self.seed);
        }
    }
    let w = W { workload, n, seed };
    match name {
        "spanalloc-sampling-idle" => {
            let a = super::sampling::SampledSpanalloc::new(
                CHILD_ARENA_BYTES,
                spanalloc::profile::Sampling::OFF,
            );
            crate::contestants::Workload::run(&w, &a)
        }
        "spanalloc-sampling-default" => {
            let a = super::sampling::SampledSpanalloc::new(
                CHILD_ARENA_BYTES,
                spanalloc::profile::Sampling::DEFAULT,
            );
            crate::contestants::Workload::run(&w, &a)
        }
        _ => {
            let id = Id::from_name(name)
                .unwrap_or_else(|| panic!("bench: unknown contestant '{name}' for --instr-child"));
            let region = Region::new(CHILD_ARENA_BYTES, false);
            crate::contestants::dispatch_fresh(id, &region, &w)
        }
    }
}

/// The non-inlined entry points every contestant is called through (see the module documentation).
#[inline(never)]
unsafe fn alloc<A: GlobalAlloc>(a: &A, layout: Layout) -> *mut u8 {
    // SAFETY: the caller's contract.
    unsafe { a.alloc(layout) }
}

#[inline(never)]
unsafe fn dealloc<A: GlobalAlloc>(a: &A, ptr: *mut u8, layout: Layout) {
    // SAFETY: the caller's contract.
    unsafe { a.dealloc(ptr, layout) }
}

#[inline(never)]
unsafe fn realloc<A: GlobalAlloc>(a: &A, ptr: *mut u8, layout: Layout, size: usize) -> *mut u8 {
    // SAFETY: the caller's contract.
    unsafe { a.realloc(ptr, layout, size) }
}

fn run_ops<A: Contestant>(a: &A, workload: &str, n: u64, seed: u64) {
    match workload {
        "pair_16" => {
            let layout = std::hint::black_box(Layout::from_size_align(16, 8).expect("layout"));
            for _ in 0..n {
                // SAFETY: a valid non-zero layout; the block is written in bounds and freed with it.
                unsafe {
                    let p = alloc(a, layout);
                    assert!(!p.is_null(), "pair: out of memory");
                    p.write_volatile(1);
                    dealloc(a, p, layout);
                }
            }
        }
        "random_actions_200" => random_actions(a, n, seed, 200),
        "random_actions_30000" => random_actions(a, n, seed, 30_000),
        other => panic!("bench: unknown workload '{other}' for --instr-child"),
    }
}

/// talc's random actions with realloc, as in single.rs's timed version (1/7 realloc, 3/7 free, 3/7
/// alloc; at least 300 blocks live), for exactly `n` actions.
fn random_actions<A: Contestant>(a: &A, n: u64, seed: u64, max: usize) {
    let mut rng = Rng::new(seed ^ max as u64);
    let mut v: Vec<(*mut u8, Layout)> = Vec::with_capacity(4096);
    for _ in 0..n {
        let action = rng.below(7);
        if action == 6 && !v.is_empty() {
            let i = rng.below(v.len());
            let (p, layout) = v[i];
            let new_size = rng.range(1, max * 3);
            // SAFETY: a live block with its layout; new_size > 0.
            let q = unsafe { realloc(a, p, layout, new_size) };
            assert!(!q.is_null(), "random actions: realloc failed");
            v[i] = (
                q,
                Layout::from_size_align(new_size, layout.align()).expect("layout"),
            );
        } else if action < 3 || v.len() < 300 {
            let layout =
                Layout::from_size_align(talc_size(&mut rng, max), talc_align(&mut rng)).unwrap();
            // SAFETY: a valid non-zero layout.
            let p = unsafe { alloc(a, layout) };
            assert!(!p.is_null(), "random actions: out of memory");
            // SAFETY: a fresh block of at least one byte.
            unsafe { p.write(1) };
            if v.len() < v.capacity() {
                v.push((p, layout));
            } else {
                // SAFETY: the block just allocated, with its layout.
                unsafe { dealloc(a, p, layout) };
            }
        } else if !v.is_empty() {
            let (p, layout) = v.swap_remove(rng.below(v.len()));
            // SAFETY: a live block with its layout, dropped from the list.
            unsafe { dealloc(a, p, layout) };
        }
    }
    for (p, layout) in v {
        // SAFETY: live blocks with their layouts.
        unsafe { dealloc(a, p, layout) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_summary_line() {
        let text = "desc: I1 cache: ...\ncmd: x\nevents: Ir\nfl=a\n1 2\nsummary: 123456 \n";
        assert_eq!(parse_summary(text), Some(123456));
        assert_eq!(parse_summary("events: Ir\n"), None);
        assert_eq!(parse_summary("summary: many\n"), None);
    }
}
