//! A random allocation workload straight through `GlobalAlloc` on [`HEAP`], checking every byte it owns.
//!
//! Each live block is filled with a pattern derived from its id and each byte's offset, and verified in
//! full before it is freed or resized (and its kept prefix again after a resize), so a block handed out
//! twice, overlapping another, or copied wrongly by `realloc` shows up as a mismatch naming the address.
//! `alloc_zeroed` blocks are checked to be zero before they are filled.
//!
//! Shape: sizes 1 B to 1 MiB skewed small (most under 128 B, one in 500 over 256 KiB), alignments 1 to
//! 4096 skewed small, a fixed number of slots (the live set) and a cap on live bytes.

use crate::clock;
use crate::heap::HEAP;
use alloc::vec::Vec;
use core::alloc::{GlobalAlloc, Layout};
use core::ptr::NonNull;

/// xorshift64*: deterministic, so a failing seed replays.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed.max(1))
    }

    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// Uniform in `[0, n)` (n > 0; the modulo bias is irrelevant here).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    /// Uniform in `[lo, hi]`.
    pub fn between(&mut self, lo: usize, hi: usize) -> usize {
        lo + self.below((hi - lo + 1) as u64) as usize
    }
}

/// Size skewed small: 75% up to 128 B, 20% up to 2 KiB, 4.5% up to 32 KiB (the last small class), 0.45%
/// up to 256 KiB and 0.05% up to 1 MiB (large objects): about 2 KiB on average, so writing and checking
/// every byte stays affordable under emulation.
fn random_size(rng: &mut Rng) -> usize {
    match rng.below(10_000) {
        0..7500 => rng.between(1, 128),
        7500..9500 => rng.between(129, 2048),
        9500..9950 => rng.between(2049, 32 << 10),
        9950..9995 => rng.between((32 << 10) + 1, 256 << 10),
        _ => rng.between((256 << 10) + 1, 1 << 20),
    }
}

/// Alignment skewed small: 60% 1..8, 30% 16..64, 10% 128..4096.
fn random_align(rng: &mut Rng) -> usize {
    match rng.below(10) {
        0..6 => 1 << rng.below(4),
        6..9 => 16 << rng.below(3),
        _ => 128 << rng.below(6),
    }
}

/// The pattern's 8-byte word `w` of block `id`: position and id both matter, so a block moved, shifted or
/// confused with another does not match.
fn pattern_word(id: u64, w: usize) -> u64 {
    id.wrapping_mul(0x9e37_79b9_7f4a_7c15)
        .wrapping_add((w as u64).wrapping_mul(0xd6e8_feb8_6659_fd93))
}

/// Writes the pattern of block `id` over bytes `[from, len)` of the block at `ptr`.
///
/// # Safety
/// `ptr` is valid for writes of `len` bytes.
unsafe fn fill(ptr: NonNull<u8>, from: usize, len: usize, id: u64) {
    let p = ptr.as_ptr();
    let words = len / 8;
    for w in from / 8..words {
        // SAFETY: word w lies inside the block (w < len / 8); unaligned stores are fine on x86.
        unsafe {
            p.add(w * 8)
                .cast::<u64>()
                .write_unaligned(pattern_word(id, w))
        };
    }
    let tail = pattern_word(id, words).to_le_bytes();
    for i in (words * 8).max(from)..len {
        // SAFETY: i < len.
        unsafe { p.add(i).write(tail[i - words * 8]) };
    }
}

/// Panics, naming the block and the first bad byte, unless bytes `[0, len)` at `ptr` hold block `id`'s
/// pattern (or are all zero, with `zero`).
///
/// # Safety
/// `ptr` is valid for reads of `len` bytes.
unsafe fn check(ptr: NonNull<u8>, len: usize, id: u64, zero: bool) {
    let p = ptr.as_ptr();
    let expected = |w: usize| if zero { 0 } else { pattern_word(id, w) };
    let words = len / 8;
    for w in 0..words {
        // SAFETY: word w lies inside the block.
        let got = unsafe { p.add(w * 8).cast::<u64>().read_unaligned() };
        if got != expected(w) {
            corrupt(ptr, len, id, w * 8, zero);
        }
    }
    let tail = expected(words).to_le_bytes();
    for i in words * 8..len {
        // SAFETY: i < len.
        if unsafe { p.add(i).read() } != tail[i - words * 8] {
            corrupt(ptr, len, id, i, zero);
        }
    }
}

#[cold]
fn corrupt(ptr: NonNull<u8>, len: usize, id: u64, offset: usize, zero: bool) -> ! {
    let what = if zero {
        "zeroes (alloc_zeroed)"
    } else {
        "its pattern"
    };
    panic!(
        "workload: block {id} at {:p} ({len} B) does not hold {what} at offset {offset}",
        ptr.as_ptr()
    )
}

struct Block {
    ptr: NonNull<u8>,
    layout: Layout,
    id: u64,
}

/// Operation counts of a run.
#[derive(Debug, Default, Clone, Copy)]
pub struct Counts {
    pub alloc: u64,
    pub alloc_zeroed: u64,
    pub dealloc: u64,
    pub realloc: u64,
    /// Most bytes live at once.
    pub peak_live_bytes: usize,
    /// TSC ticks spent inside the heap's functions (the rest is the workload's own writing and checking).
    pub heap_ticks: u64,
}

impl Counts {
    pub fn total(&self) -> u64 {
        self.alloc + self.alloc_zeroed + self.dealloc + self.realloc
    }
}

/// The live set: `slots` places for blocks, at most `max_live_bytes` in them.
pub struct Workload {
    slots: Vec<Option<Block>>,
    max_live_bytes: usize,
    live_bytes: usize,
    next_id: u64,
    heap_ticks: u64,
}

impl Workload {
    /// Allocates the slot table (from the heap) up front.
    pub fn new(slots: usize, max_live_bytes: usize) -> Self {
        let mut table = Vec::with_capacity(slots);
        table.resize_with(slots, || None);
        Workload {
            slots: table,
            max_live_bytes,
            live_bytes: 0,
            next_id: 1,
            heap_ticks: 0,
        }
    }

    /// Runs `f` (one call into the heap), adding its duration to `heap_ticks`.
    fn timed<R>(&mut self, f: impl FnOnce() -> R) -> R {
        let start = clock::ticks();
        let result = f();
        self.heap_ticks += clock::ticks().wrapping_sub(start);
        result
    }

    /// A random layout that keeps live bytes under the cap (`old` is the size being replaced, if any).
    fn layout(&self, rng: &mut Rng, old: usize) -> Layout {
        let mut size = random_size(rng);
        if self.live_bytes - old + size > self.max_live_bytes {
            size = rng.between(1, 128);
        }
        Layout::from_size_align(size, random_align(rng)).expect("workload: bad layout")
    }

    /// `ops` random operations: on an empty slot alloc (3 in 4) or alloc_zeroed; on a full one dealloc
    /// (3 in 5) or realloc to a new random size.
    pub fn run(&mut self, rng: &mut Rng, ops: u64) -> Counts {
        let mut counts = Counts::default();
        let ticks_before = self.heap_ticks;
        for _ in 0..ops {
            let slot = rng.below(self.slots.len() as u64) as usize;
            match self.slots[slot].take() {
                None => {
                    let layout = self.layout(rng, 0);
                    let zeroed = rng.below(4) == 0;
                    self.slots[slot] = Some(self.alloc(layout, zeroed));
                    if zeroed {
                        counts.alloc_zeroed += 1;
                    } else {
                        counts.alloc += 1;
                    }
                }
                Some(block) if rng.below(5) < 3 => {
                    self.free(block);
                    counts.dealloc += 1;
                }
                Some(block) => {
                    let new_size = self.layout(rng, block.layout.size()).size();
                    self.slots[slot] = Some(self.realloc(block, new_size));
                    counts.realloc += 1;
                }
            }
            counts.peak_live_bytes = counts.peak_live_bytes.max(self.live_bytes);
        }
        counts.heap_ticks = self.heap_ticks - ticks_before;
        counts
    }

    fn alloc(&mut self, layout: Layout, zeroed: bool) -> Block {
        let raw = self.timed(|| {
            // SAFETY: the layout has a non-zero size.
            unsafe {
                if zeroed {
                    HEAP.alloc_zeroed(layout)
                } else {
                    HEAP.alloc(layout)
                }
            }
        });
        let ptr = NonNull::new(raw).unwrap_or_else(|| {
            panic!(
                "workload: out of memory for {layout:?} with {} B live",
                self.live_bytes
            )
        });
        assert!(
            (ptr.as_ptr() as usize).is_multiple_of(layout.align()),
            "workload: {:p} is not aligned to {} ({layout:?})",
            ptr.as_ptr(),
            layout.align()
        );
        let id = self.next_id;
        self.next_id += 1;
        // SAFETY: a fresh block of `layout.size()` bytes, ours alone.
        unsafe {
            if zeroed {
                check(ptr, layout.size(), id, true);
            }
            fill(ptr, 0, layout.size(), id);
        }
        self.live_bytes += layout.size();
        Block { ptr, layout, id }
    }

    fn free(&mut self, block: Block) {
        // SAFETY: the block is live and ours.
        unsafe { check(block.ptr, block.layout.size(), block.id, false) };
        // SAFETY: the block was allocated from HEAP with this layout and is not used again.
        self.timed(|| unsafe { HEAP.dealloc(block.ptr.as_ptr(), block.layout) });
        self.live_bytes -= block.layout.size();
    }

    fn realloc(&mut self, block: Block, new_size: usize) -> Block {
        let old_size = block.layout.size();
        // SAFETY: the block is live and ours.
        unsafe { check(block.ptr, old_size, block.id, false) };
        // SAFETY: the block is from HEAP with this layout and not used again through the old pointer;
        // new_size > 0 and, rounded up to the alignment, far below isize::MAX.
        let raw =
            self.timed(|| unsafe { HEAP.realloc(block.ptr.as_ptr(), block.layout, new_size) });
        let ptr = NonNull::new(raw).unwrap_or_else(|| {
            panic!(
                "workload: realloc of {:p} ({:?}) to {new_size} B failed",
                block.ptr.as_ptr(),
                block.layout
            )
        });
        let layout =
            Layout::from_size_align(new_size, block.layout.align()).expect("workload: bad layout");
        assert!(
            (ptr.as_ptr() as usize).is_multiple_of(layout.align()),
            "workload: realloc gave {:p}, not aligned to {}",
            ptr.as_ptr(),
            layout.align()
        );
        // SAFETY: the block now has `new_size` bytes, ours alone; the first min(old, new) are the old ones.
        unsafe {
            check(ptr, old_size.min(new_size), block.id, false);
            fill(ptr, old_size.min(new_size), new_size, block.id);
        }
        self.live_bytes = self.live_bytes - old_size + new_size;
        Block {
            ptr,
            layout,
            id: block.id,
        }
    }

    /// Frees every live block (checking each); the slot table stays.
    pub fn free_all(&mut self) {
        for slot in 0..self.slots.len() {
            if let Some(block) = self.slots[slot].take() {
                self.free(block);
            }
        }
        debug_assert_eq!(self.live_bytes, 0);
    }

    /// Restarts block ids, so a run with the same seed repeats the same operations exactly.
    pub fn reset_ids(&mut self) {
        assert!(
            self.slots.iter().all(Option::is_none),
            "workload: reset_ids with live blocks"
        );
        self.next_id = 1;
    }
}

impl Drop for Workload {
    fn drop(&mut self) {
        self.free_all();
    }
}
