//! Page-heap scaling: the cost of 8-page (64 KiB) allocations as spanalloc's heap grows from 64 MiB to
//! 64 GiB of address space.
//!
//! A heap of N bytes is made to span all N without memory behind it: one allocation of N bytes grows the
//! page heap over the whole window (taking arenas and backing only the summaries and span map), then fails
//! for want of frames and gives the pages back — free and unmapped. The bottom of the heap is then
//! fragmented (256 spans of 5 pages, every other one freed: 128 holes an 8-page span cannot use), so each
//! search has to skip them. Two measures per size:
//! - steady: 16 live 64 KiB blocks, each step frees the oldest and allocates one (no scavenging);
//! - burst: 512 blocks allocated, then all freed (the scavenger unmaps most of them, and the next burst
//!   maps them again: this measures the host's mapping cost as much as the page heap).
//!
//! Invariants: each heap is built once per process (outside any timed code) on a thread pinned to CPU 0,
//! and measured on such a thread; a heap's physical memory is the same for every size (256 MiB).

use crate::timing::CpuClock;
use core::alloc::{GlobalAlloc, Layout};

use super::{Config, Sample};
use crate::contestants::{Contestant, Spanalloc};

const BLOCK: usize = 64 << 10;
const PHYS_BYTES: usize = 256 << 20;
const STEADY_LIVE: usize = 16;

/// Heap sizes measured: 64 MiB .. 64 GiB by factors of 4 (64 MiB and 1 GiB with `--quick`).
pub fn sizes(quick: bool) -> Vec<usize> {
    if quick {
        vec![64 << 20, 1 << 30]
    } else {
        (0..6).map(|i| (64usize << 20) << (2 * i)).collect()
    }
}

/// "64MiB", "4GiB".
pub fn size_label(bytes: usize) -> String {
    if bytes >= 1 << 30 {
        format!("{}GiB", bytes >> 30)
    } else {
        format!("{}MiB", bytes >> 20)
    }
}

/// A heap grown to `heap_bytes` of address space with a fragmented bottom.
pub struct ScaledHeap {
    heap: Spanalloc,
    heap_bytes: usize,
    /// The 5-page spans kept to fragment the bottom (freed never: the heap lives as long as the process).
    _pins: Vec<usize>,
}

impl ScaledHeap {
    pub fn build(heap_bytes: usize) -> Self {
        // Window: the heap plus its metadata (span structs take up to 512 B per page, +64 MiB for caches).
        let window = (heap_bytes + heap_bytes / 8 + (256 << 20)).next_multiple_of(64 << 20);
        let heap = Spanalloc::with_window(PHYS_BYTES, window, heap_bytes);
        std::thread::scope(|s| {
            s.spawn(|| {
                heap.enter_thread(0);
                let everything = Layout::from_size_align(heap_bytes, 8192).unwrap();
                // SAFETY: a valid layout; the allocation is expected to fail (frames run out), and if it
                // does not, it is freed at once.
                unsafe {
                    let p = heap.alloc(everything);
                    if !p.is_null() {
                        heap.dealloc(p, everything);
                    }
                }
            });
        });
        let grown = heap.heap().stats().pages.grown * spanalloc::PAGE_SIZE;
        assert_eq!(
            grown,
            heap_bytes,
            "page scaling: the heap grew to {grown:#x} bytes, not {heap_bytes:#x} (window too small?)"
        );
        let pins = std::thread::scope(|s| {
            s.spawn(|| {
                heap.enter_thread(0);
                let frag = Layout::from_size_align(5 * 8192, 8).unwrap();
                // SAFETY: valid layouts; every other block is freed with its layout.
                let blocks: Vec<usize> = (0..256)
                    .map(|_| unsafe { heap.alloc(frag) } as usize)
                    .collect();
                assert!(
                    blocks.iter().all(|&p| p != 0),
                    "page scaling: out of memory while fragmenting"
                );
                let mut keep = Vec::new();
                for (i, p) in blocks.into_iter().enumerate() {
                    if i % 2 == 0 {
                        // SAFETY: allocated just above with `frag`.
                        unsafe { heap.dealloc(p as *mut u8, frag) };
                    } else {
                        keep.push(p);
                    }
                }
                keep
            })
            .join()
            .expect("page scaling: fragmenting panicked")
        });
        ScaledHeap {
            heap,
            heap_bytes,
            _pins: pins,
        }
    }

    /// Measures steady and burst 64 KiB allocations; samples `page_scaling_{steady,burst}_<size>` in ns per
    /// alloc+free.
    pub fn measure(&self, cfg: &Config) -> Vec<Sample> {
        let label = size_label(self.heap_bytes);
        let (steady, burst) = std::thread::scope(|s| {
            s.spawn(|| {
                self.heap.enter_thread(0);
                steady(&self.heap, cfg, cfg.warmup);
                let st = steady(&self.heap, cfg, cfg.duration);
                burst(&self.heap, cfg, cfg.warmup);
                (st, burst(&self.heap, cfg, cfg.duration))
            })
            .join()
            .expect("page scaling: measuring panicked")
        });
        vec![
            Sample::new(format!("page_scaling_steady_{label}"), steady),
            Sample::new(format!("page_scaling_burst_{label}"), burst),
        ]
    }
}

fn layout() -> Layout {
    Layout::from_size_align(BLOCK, 8).unwrap()
}

fn steady(a: &Spanalloc, _cfg: &Config, d: std::time::Duration) -> f64 {
    let mut ring = [0usize; STEADY_LIVE];
    for r in ring.iter_mut() {
        // SAFETY: a valid layout.
        *r = unsafe { a.alloc(layout()) } as usize;
        assert!(*r != 0, "page scaling: out of memory");
    }
    let t = CpuClock::now();
    let mut ops = 0u64;
    let mut i = 0;
    while ops % 64 != 0 || t.elapsed() < d {
        // SAFETY: ring holds live blocks of `layout()`.
        unsafe {
            a.dealloc(ring[i] as *mut u8, layout());
            ring[i] = a.alloc(layout()) as usize;
        }
        assert!(ring[i] != 0, "page scaling: out of memory");
        i = (i + 1) % STEADY_LIVE;
        ops += 1;
    }
    let ns = t.elapsed().as_nanos() as f64 / ops as f64;
    for r in ring {
        // SAFETY: live blocks of `layout()`.
        unsafe { a.dealloc(r as *mut u8, layout()) };
    }
    ns
}

fn burst(a: &Spanalloc, cfg: &Config, d: std::time::Duration) -> f64 {
    let n = if cfg.quick { 64 } else { 512 };
    let mut v = vec![0usize; n];
    let t = CpuClock::now();
    let mut ops = 0u64;
    while ops == 0 || t.elapsed() < d {
        for p in v.iter_mut() {
            // SAFETY: a valid layout.
            *p = unsafe { a.alloc(layout()) } as usize;
            assert!(*p != 0, "page scaling: out of memory in a burst");
        }
        for &p in &v {
            // SAFETY: allocated just above with `layout()`.
            unsafe { a.dealloc(p as *mut u8, layout()) };
        }
        ops += n as u64;
    }
    t.elapsed().as_nanos() as f64 / ops as f64
}
