//! The benchmark suite's "random actions with realloc" (talc's workload: alloc / free / realloc, sizes
//! U(4..U(16..max)), reallocs to U(1..3 max), at least 300 live blocks) for a fixed number of operations,
//! reporting what a shared machine's load does not move: pages the scavenger released (each one a later
//! remap: a frame, a zeroing, on the host an mmap), frames held at the end, and how many reallocs kept
//! their block in place, by kind. Time is printed too, for what it is worth.
//!
//! ```sh
//! cargo run --release -p spanalloc --features host --example churn [OPS] [MAX]
//! ```

use core::alloc::{GlobalAlloc, Layout};
use spanalloc::host::{HostMachine, HostPlatform};
use spanalloc::{Heap, PAGE_SIZE};

/// wyrand, as the benchmark suite's.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0xA076_1D64_78BD_642F);
        let t = u128::from(self.0) * u128::from(self.0 ^ 0xE703_7ED1_A0B4_28DB);
        (t as u64) ^ ((t >> 64) as u64)
    }

    fn range(&mut self, lo: usize, hi: usize) -> usize {
        lo + ((u128::from(self.next()) * (hi - lo) as u128) >> 64) as usize
    }
}

/// Kind of a size: small (a size class, up to 32 KiB) or large.
fn kind(size: usize) -> usize {
    usize::from(size > 32 << 10)
}

fn main() {
    let mut args = std::env::args().skip(1);
    let ops: usize = args.next().map_or(2_000_000, |s| s.parse().expect("ops"));
    let max: usize = args.next().map_or(30_000, |s| s.parse().expect("max"));
    let m = HostMachine::new(256 << 20, 4 << 30);
    let heap: &'static Heap<HostPlatform> = spanalloc::host::leak(Heap::new(m.platform));
    heap.init(m.space, m.window, 2 << 30).expect("heap init");
    let mut rng = Rng(0x5eed ^ max as u64);
    let mut live: Vec<(*mut u8, Layout)> = Vec::new();
    // [from kind][to kind] = (reallocs, kept in place); kinds: 0 small, 1 large.
    let mut reallocs = [[(0u64, 0u64); 2]; 2];
    let mut peak_frames = 0;
    // CHURN_TRACE=1: a line of page counts every 100,000 operations, on stderr.
    let trace = std::env::var_os("CHURN_TRACE").is_some();
    let t = std::time::Instant::now();
    for i in 0..ops {
        let action = rng.range(0, 7);
        if action == 6 && !live.is_empty() {
            let k = rng.range(0, live.len());
            let (p, layout) = live[k];
            let new_size = rng.range(1, max * 3);
            // SAFETY: a live block of this heap with its layout; new_size > 0.
            let q = unsafe { heap.realloc(p, layout, new_size) };
            assert!(!q.is_null(), "out of memory");
            let r = &mut reallocs[kind(layout.size())][kind(new_size)];
            r.0 += 1;
            r.1 += u64::from(q == p);
            live[k] = (
                q,
                Layout::from_size_align(new_size, layout.align()).unwrap(),
            );
        } else if action < 3 || live.len() < 300 {
            let cap = rng.range(16, max);
            let size = rng.range(4, cap.max(5));
            let align = 8usize << ((rng.next() as u16).trailing_zeros() / 2);
            let layout = Layout::from_size_align(size, align).unwrap();
            // SAFETY: a non-zero layout.
            let p = unsafe { heap.alloc(layout) };
            assert!(!p.is_null(), "out of memory");
            // SAFETY: a fresh block of at least one byte.
            unsafe { p.write(1) };
            live.push((p, layout));
        } else {
            let (p, layout) = live.swap_remove(rng.range(0, live.len()));
            // SAFETY: a live block with its layout, dropped from the list.
            unsafe { heap.dealloc(p, layout) };
        }
        if trace && i % 100_000 == 0 {
            let p = heap.stats().pages;
            eprintln!(
                "{i}: in use {} dirty free {} released {} live {}",
                p.in_use,
                p.dirty_free,
                p.released_total,
                live.len()
            );
        }
        if i % 4096 == 0 {
            peak_frames = peak_frames.max(heap.stats().frames_held.0);
        }
    }
    let elapsed = t.elapsed();
    let s = heap.stats();
    println!(
        "{ops} operations (max {max} B) in {:.0} ms: {:.2} Mops/s",
        elapsed.as_secs_f64() * 1e3,
        ops as f64 / elapsed.as_secs_f64() / 1e6
    );
    println!(
        "pages released by the scavenger: {} ({} MiB); frames held: {} at the end, {} at the peak; {} live \
         blocks, {} KiB in use",
        s.pages.released_total,
        (s.pages.released_total as usize * PAGE_SIZE) >> 20,
        s.frames_held.0,
        peak_frames,
        live.len(),
        s.bytes() >> 10
    );
    let names = ["small", "large"];
    let (mut all, mut kept) = (0, 0);
    for (from, row) in reallocs.iter().enumerate() {
        for (to, &(n, k)) in row.iter().enumerate() {
            all += n;
            kept += k;
            println!(
                "realloc {:>5} -> {:<5}: {n:>8}, {:>5.1}% in place",
                names[from],
                names[to],
                100.0 * k as f64 / n.max(1) as f64
            );
        }
    }
    println!(
        "realloc all          : {all:>8}, {:>5.1}% in place",
        100.0 * kept as f64 / all.max(1) as f64
    );
    for (p, layout) in live {
        // SAFETY: live blocks with their layouts.
        unsafe { heap.dealloc(p, layout) };
    }
}
