//! A fixed number of 16 B alloc+free pairs through `GlobalAlloc`, the layout hidden from the optimizer
//! (as in the benchmark suite, where it comes from outside) and the object's first byte written between
//! the two calls. Prints the best ns/pair over a few repetitions.
//!
//! Its use is the instruction count, which a shared machine's load does not move:
//!
//! ```sh
//! cargo build --release -p spanalloc --features host --example pair_cost
//! valgrind --tool=cachegrind --cache-sim=no target/release/examples/pair_cost 1000000 1
//! valgrind --tool=cachegrind --cache-sim=no target/release/examples/pair_cost 2000000 1
//! ```
//!
//! The difference of the two `I refs` totals over 1,000,000 is the instructions per pair (setup cancels).
//!
//! A third argument measures heap sampling's cost (issue 13): `idle` runs the heap over
//! `Sampled<HostPlatform>` (the countdown compiled in, sampling off), `on` with `Sampling::DEFAULT`.

use core::alloc::{GlobalAlloc, Layout};
use spanalloc::host::{HostMachine, HostPlatform};
use spanalloc::platform::{Platform, Sampled};
use spanalloc::profile::Sampling;
use spanalloc::Heap;

fn main() {
    let mut args = std::env::args().skip(1);
    let pairs: usize = args.next().map_or(1_000_000, |s| s.parse().expect("pairs"));
    let reps: usize = args.next().map_or(5, |s| s.parse().expect("repetitions"));
    let mode = args.next().unwrap_or_default();
    let m = HostMachine::new(64 << 20, 1 << 30);
    match mode.as_str() {
        "" => {
            let heap: &'static Heap<HostPlatform> = spanalloc::host::leak(Heap::new(m.platform));
            heap.init(m.space, m.window, 512 << 20).expect("heap init");
            run(heap, pairs, reps);
        }
        "idle" | "on" => {
            let platform = spanalloc::host::leak(Sampled(m.platform));
            let heap: &'static Heap<Sampled<HostPlatform>> =
                spanalloc::host::leak(Heap::new(platform));
            heap.init(m.space.sampled(platform), m.window, 512 << 20)
                .expect("heap init");
            if mode == "on" {
                heap.set_sampling(Sampling::DEFAULT).expect("sampling");
            }
            run(heap, pairs, reps);
        }
        other => panic!("mode `{other}`: none, `idle` or `on`"),
    }
}

#[inline(never)]
fn run<P: Platform>(heap: &'static Heap<P>, pairs: usize, reps: usize) {
    let layout = std::hint::black_box(Layout::from_size_align(16, 8).expect("layout"));
    let mut best = f64::MAX;
    for _ in 0..reps {
        let t = std::time::Instant::now();
        for _ in 0..pairs {
            // SAFETY: a non-zero layout; the block is written in bounds and freed with its layout.
            unsafe {
                let p = heap.alloc(layout);
                assert!(!p.is_null());
                p.write_volatile(1);
                heap.dealloc(std::hint::black_box(p), layout);
            }
        }
        best = best.min(t.elapsed().as_secs_f64() * 1e9 / pairs as f64);
    }
    println!("{best:.2} ns/pair (best of {reps} runs of {pairs})");
}
