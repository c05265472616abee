//! Memory, not time: heap efficiency (talc's method) and footprint (pages held against bytes live).
//!
//! Heap efficiency runs on a fresh instance over a fresh region each repetition (spanalloc: a fresh host
//! machine of the same physical size). Footprint runs in a child process per contestant, so that the
//! process's resident set starts clean and no other workload's memory is counted.
//!
//! Invariants: as for all workloads, every block is freed before returning; the footprint child's
//! bookkeeping is allocated and touched before its baseline is taken.

use core::alloc::GlobalAlloc as _;
use core::alloc::Layout;
use std::process::Command;

use super::{Config, Sample};
use crate::contestants::{Contestant, Id};
use crate::region::{rss_bytes, Region};
use crate::rng::{talc_align, talc_size, Rng};

/// talc's heap-efficiency parameters: sizes U(4..U(16..10000)), reallocs up to 10x that.
const HE_MAX_SIZE: usize = 10_000;
const HE_REALLOC_MULTI: usize = 10;

#[derive(Clone, Copy)]
struct Block {
    ptr: *mut u8,
    layout: Layout,
}

/// The operation that failed and ended a fill.
#[derive(Clone, Copy, Debug)]
pub enum Failed {
    Alloc { size: usize },
    Realloc { from: usize, to: usize },
}

impl core::fmt::Display for Failed {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Failed::Alloc { size } => write!(f, "an allocation of {size} B"),
            Failed::Realloc { from, to } => write!(f, "a reallocation from {from} B to {to} B"),
        }
    }
}

/// One round of talc's fill: 5/10 allocate, 1/10 free a random block, 4/10 reallocate a random block to
/// U(1..100000), until the first failed allocation or reallocation, which it returns. `v` holds the live
/// blocks afterwards.
fn fill<A: Contestant>(a: &A, rng: &mut Rng, v: &mut Vec<Block>) -> Failed {
    loop {
        match rng.below(10) {
            0..=4 => {
                let layout =
                    Layout::from_size_align(talc_size(rng, HE_MAX_SIZE), talc_align(rng)).unwrap();
                // SAFETY: a valid non-zero layout.
                let ptr = unsafe { a.alloc(layout) };
                if ptr.is_null() {
                    return Failed::Alloc {
                        size: layout.size(),
                    };
                }
                v.push(Block { ptr, layout });
            }
            5 => {
                if !v.is_empty() {
                    let b = v.swap_remove(rng.below(v.len()));
                    // SAFETY: a live block with its layout, dropped from the list.
                    unsafe { a.dealloc(b.ptr, b.layout) };
                }
            }
            _ => {
                if !v.is_empty() {
                    let i = rng.below(v.len());
                    let new_size = rng.range(1, HE_MAX_SIZE * HE_REALLOC_MULTI);
                    // SAFETY: a live block with its layout; new_size > 0.
                    let p = unsafe { a.realloc(v[i].ptr, v[i].layout, new_size) };
                    if p.is_null() {
                        return Failed::Realloc {
                            from: v[i].layout.size(),
                            to: new_size,
                        };
                    }
                    v[i].ptr = p;
                    v[i].layout = Layout::from_size_align(new_size, v[i].layout.align()).unwrap();
                }
            }
        }
    }
}

/// The heap-efficiency metric of an arena of `arena_bytes`: `heap_efficiency` for the suite's arena,
/// `heap_efficiency_<N>MiB` for the fixed small ones.
pub fn heap_efficiency_metric(arena_bytes: usize, suite_arena: bool) -> String {
    if suite_arena {
        "heap_efficiency".into()
    } else {
        format!("heap_efficiency_{}MiB", arena_bytes >> 20)
    }
}

/// Fills the heap until the first failed allocation or reallocation ([`fill`]). The result is the bytes
/// requested by live blocks at that point, as a percentage of the arena (`arena_bytes`); averaged over a
/// few rounds on the same heap (it is emptied between rounds).
pub fn heap_efficiency<A: Contestant>(
    a: &A,
    cfg: &Config,
    arena_bytes: usize,
    metric: &str,
) -> Vec<Sample> {
    a.enter_thread(0);
    let rounds = if cfg.quick { 1 } else { 3 };
    let mut rng = Rng::new(cfg.seed ^ 0xeff1);
    let mut v: Vec<Block> = Vec::with_capacity(1 << 20);
    let mut sum = 0.0;
    for _ in 0..rounds {
        fill(a, &mut rng, &mut v);
        let used: usize = v.iter().map(|b| b.layout.size()).sum();
        sum += used as f64 / arena_bytes as f64 * 100.0;
        for b in v.drain(..) {
            // SAFETY: live blocks with their layouts.
            unsafe { a.dealloc(b.ptr, b.layout) };
        }
    }
    vec![Sample::new(metric, sum / rounds as f64)]
}

/// Where spanalloc's memory went when talc's fill failed on a fresh heap of `arena_bytes` of usable
/// memory (the suite's method and instance, first round): printed as a table of bytes and percentages
/// of the arena.
pub fn heap_efficiency_breakdown(arena_bytes: usize, seed: u64) {
    use spanalloc::sizeclass::SizeClass;
    use spanalloc::{FRAME_SIZE, PAGE_SIZE};

    let s = crate::contestants::Spanalloc::with_usable_memory(arena_bytes);
    s.enter_thread(0);
    let heap = s.heap();
    let mut rng = Rng::new(seed ^ 0xeff1);
    let mut v: Vec<Block> = Vec::with_capacity(1 << 20);
    let failed = fill(&s, &mut rng, &mut v);
    let st = heap.stats();

    // What the blocks asked for, and the rounding of each to its class or its pages. A block of a small
    // class may sit in a large span of the pages covering it (a span of its own, or a large object
    // reallocated in place): a class's blocks beyond the objects its small spans hold; those are
    // page-aligned, as is only the first object of a small span (of the same rounding for the classes
    // of one object per span, whose objects are all page-aligned).
    let mut in_large = vec![0usize; spanalloc::sizeclass::NUM_SIZE_CLASSES];
    for b in &v {
        if let Some(c) = SizeClass::for_layout(b.layout.size(), b.layout.align()) {
            in_large[c.index()] += 1;
        }
    }
    for c in SizeClass::small() {
        in_large[c.index()] = in_large[c.index()].saturating_sub(st.classes[c.index()].objects);
    }
    let (mut requested, mut small_round, mut large_round) = (0usize, 0usize, 0usize);
    let mut small_in_large = 0;
    for b in &v {
        requested += b.layout.size();
        let pages_round = b.layout.size().div_ceil(PAGE_SIZE) * PAGE_SIZE - b.layout.size();
        match SizeClass::for_layout(b.layout.size(), b.layout.align()) {
            Some(c) if in_large[c.index()] > 0 && (b.ptr as usize).is_multiple_of(PAGE_SIZE) => {
                in_large[c.index()] -= 1;
                small_in_large += 1;
                large_round += pages_round;
            }
            Some(c) => small_round += c.size() - b.layout.size(),
            None => large_round += pages_round,
        }
    }
    // Small spans: free slots, objects sitting in the CPU caches, span tails no object fits in.
    let (mut free_slots, mut cached, mut tails, mut small_span_bytes) = (0, 0, 0, 0);
    for c in SizeClass::small() {
        let cs = &st.classes[c.index()];
        let span = c.pages().0 * PAGE_SIZE;
        small_span_bytes += cs.spans * span;
        tails += cs.spans * (span - c.objects_per_span() * c.size());
        cached += cs.cached * c.size();
        free_slots += (cs.spans * c.objects_per_span() - cs.objects - cs.cached) * c.size();
    }
    let p = &st.pages;
    let frame = FRAME_SIZE as usize;
    let held = st.frames_held.0 as usize * frame;
    // Trimmed tails: the second frame of a large object's last page, unmapped when the object ends
    // before it (pageheap.rs).
    let data = (p.in_use + p.dirty_free) * PAGE_SIZE - p.trimmed_tails * frame;
    let meta = (p.meta_mapped + p.meta_tables) as usize;
    let tables = held.saturating_sub(data + meta);
    let free_frames = st.frames_free.0 as usize * frame;
    // The machine has `arena_bytes` usable from 1 MiB (`Spanalloc::with_usable_memory`).
    let outside = arena_bytes - held - free_frames;
    let other_in_use = (p.in_use * PAGE_SIZE).saturating_sub(small_span_bytes + st.large_bytes);

    let pct = |b: usize| b as f64 / arena_bytes as f64 * 100.0;
    let row = |what: &str, b: usize| println!("{what:<58} {:>12} {:>7.2}%", b, pct(b));
    println!(
        "heap efficiency breakdown: spanalloc, {} MiB of usable memory; the fill ended at {failed} \
         with {} blocks live",
        arena_bytes >> 20,
        v.len()
    );
    row("requested by live blocks (the efficiency)", requested);
    row("small objects: rounding up to the size class", small_round);
    row(
        &format!(
            "large spans: rounding up to 8 KiB pages ({} trimmed tails, {small_in_large} small)",
            p.trimmed_tails
        ),
        large_round - p.trimmed_tails * frame,
    );
    row("small spans: free slots", free_slots);
    row("small spans: free objects in per-CPU caches", cached);
    row("small spans: tails no object fits in", tails);
    row(
        "other pages in use (private: sampler, guard pool)",
        other_in_use,
    );
    row("free heap pages still mapped", p.dirty_free * PAGE_SIZE);
    row(
        &format!(
            "metadata: spans, bitmaps, caches ({} KiB in use)",
            p.meta_in_use >> 10
        ),
        p.meta_mapped as usize,
    );
    row(
        "metadata: page-alloc bitmap+summaries, span map, scav bits",
        p.meta_tables as usize,
    );
    row("page tables (held - data - metadata)", tables);
    row("free frames", free_frames);
    row("frame allocator's metadata, the top page table", outside);
    let sum = requested
        + small_round
        + (large_round - p.trimmed_tails * frame)
        + free_slots
        + cached
        + tails
        + other_in_use
        + p.dirty_free * PAGE_SIZE
        + meta
        + tables
        + free_frames
        + outside;
    row("sum (should be the arena)", sum);
    println!("{st}");
    for b in v.drain(..) {
        // SAFETY: live blocks with their layouts.
        unsafe { s.dealloc(b.ptr, b.layout) };
    }
    s.retire();
}

/// Bytes live at the footprint's peak: 64 MiB (1 MiB with `--quick`).
pub fn footprint_live_bytes(quick: bool) -> usize {
    if quick {
        1 << 20
    } else {
        64 << 20
    }
}

/// What a footprint child reports, in bytes.
#[derive(Clone, Copy, Debug)]
pub struct Footprint {
    pub live: u64,
    pub peak_held: u64,
    pub after_free: u64,
    pub after_trim: u64,
}

/// Runs the footprint workload in a child process for `id` and turns its report into samples:
/// `footprint_peak` (held / live at the peak), `footprint_after_free` and `footprint_after_trim` (held as %
/// of the peak live bytes after freeing everything, before and after asking the allocator to trim).
pub fn footprint_in_child(id: Id, cfg: &Config) -> Vec<Sample> {
    let exe = std::env::current_exe().expect("bench: path of this executable");
    let mut cmd = Command::new(exe);
    cmd.args([
        "--footprint-child",
        id.name(),
        "--seed",
        &cfg.seed.to_string(),
    ]);
    cmd.args(["--arena-mib", &(cfg.arena_bytes >> 20).to_string()]);
    if cfg.quick {
        cmd.arg("--quick");
    }
    let out = cmd.output().expect("bench: spawn footprint child");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "bench: footprint child for {} failed ({}): {}{}",
        id.name(),
        out.status,
        stdout,
        String::from_utf8_lossy(&out.stderr)
    );
    let f = parse_footprint(&stdout)
        .unwrap_or_else(|| panic!("bench: bad footprint report for {}: {stdout:?}", id.name()));
    let live = f.live as f64;
    vec![
        Sample::new("footprint_peak", f.peak_held as f64 / live),
        Sample::new("footprint_after_free", f.after_free as f64 / live * 100.0),
        Sample::new("footprint_after_trim", f.after_trim as f64 / live * 100.0),
    ]
}

fn parse_footprint(s: &str) -> Option<Footprint> {
    let line = s.lines().find(|l| l.starts_with("FOOTPRINT "))?;
    let mut f = Footprint {
        live: 0,
        peak_held: 0,
        after_free: 0,
        after_trim: 0,
    };
    for kv in line.split_whitespace().skip(1) {
        let (k, v) = kv.split_once('=')?;
        let v: u64 = v.parse().ok()?;
        match k {
            "live" => f.live = v,
            "peak_held" => f.peak_held = v,
            "after_free" => f.after_free = v,
            "after_trim" => f.after_trim = v,
            _ => return None,
        }
    }
    (f.live > 0).then_some(f)
}

/// The child's side: grows a heap of talc-sized blocks (up to 30000 B, one free per three allocations) until
/// `live` bytes are live, touching every page of every block, then frees everything. "Held" is what the
/// allocator says it holds where it keeps that account (spanalloc: frames mapped, including metadata and
/// page tables), else the growth of this process's resident set (for the arena peers: the pages of their
/// region they touched, which they never give back).
pub fn footprint_child<A: Contestant>(a: &A, quick: bool, seed: u64) -> Footprint {
    a.enter_thread(0);
    let target = footprint_live_bytes(quick) as u64;
    let mut v: Vec<Block> = Vec::with_capacity(1 << 20);
    // Touch the bookkeeping now so that its pages are in the baseline.
    v.resize(
        v.capacity(),
        Block {
            ptr: core::ptr::null_mut(),
            layout: Layout::new::<u8>(),
        },
    );
    v.clear();
    let held = |a: &A, base: u64| {
        a.held_bytes()
            .unwrap_or_else(|| rss_bytes().saturating_sub(base))
    };
    let base = rss_bytes();
    let mut rng = Rng::new(seed ^ 0xf007);
    let mut live = 0u64;
    while live < target {
        if rng.below(4) == 0 && !v.is_empty() {
            let b = v.swap_remove(rng.below(v.len()));
            live -= b.layout.size() as u64;
            // SAFETY: a live block with its layout, dropped from the list.
            unsafe { a.dealloc(b.ptr, b.layout) };
            continue;
        }
        let layout = Layout::from_size_align(talc_size(&mut rng, 30_000), 8).unwrap();
        // SAFETY: a valid non-zero layout.
        let ptr = unsafe { a.alloc(layout) };
        assert!(
            !ptr.is_null(),
            "footprint: out of memory at {live} live bytes"
        );
        for off in (0..layout.size()).step_by(4096) {
            // SAFETY: inside the fresh block.
            unsafe { ptr.add(off).write(1) };
        }
        live += layout.size() as u64;
        v.push(Block { ptr, layout });
    }
    let peak_held = held(a, base);
    for b in v.drain(..) {
        // SAFETY: live blocks with their layouts.
        unsafe { a.dealloc(b.ptr, b.layout) };
    }
    let after_free = held(a, base);
    let after_trim = if a.trim() { held(a, base) } else { after_free };
    Footprint {
        live,
        peak_held,
        after_free,
        after_trim,
    }
}

/// Entry point of the footprint child: builds a fresh, unprefaulted contestant and prints its report.
pub fn run_footprint_child(id: Id, arena_bytes: usize, quick: bool, seed: u64) {
    struct W {
        quick: bool,
        seed: u64,
    }
    impl crate::contestants::Workload for W {
        type Out = Footprint;
        fn run<A: Contestant>(&self, a: &A) -> Footprint {
            footprint_child(a, self.quick, self.seed)
        }
    }
    let region = Region::new(arena_bytes, false);
    let f = crate::contestants::dispatch_fresh(id, &region, &W { quick, seed });
    println!(
        "FOOTPRINT live={} peak_held={} after_free={} after_trim={}",
        f.live, f.peak_held, f.after_free, f.after_trim
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn footprint_report_round_trips() {
        let f =
            parse_footprint("noise\nFOOTPRINT live=10 peak_held=20 after_free=5 after_trim=1\n")
                .unwrap();
        assert_eq!(
            (f.live, f.peak_held, f.after_free, f.after_trim),
            (10, 20, 5, 1)
        );
        assert!(
            parse_footprint("FOOTPRINT live=0 peak_held=1 after_free=1 after_trim=1").is_none()
        );
        assert!(parse_footprint("FOOTPRINT live=1 bogus=1").is_none());
    }
}
