//! The per-CPU cache (Go's mcache, in TCMalloc's per-CPU form): for each size class a stack of free
//! objects. **This is the allocation and free fast path**: pop or push on the current CPU's stack with
//! interrupts masked; no lock, no atomic read-modify-write.
//!
//! Why stacks of objects rather than Go's "one span per class": Rust frees explicitly and `dealloc`
//! may run on any CPU. With per-CPU object stacks a free is a push on the *current* CPU whatever CPU
//! allocated the object (objects migrate, as in TCMalloc), so a remote free costs the same as a local
//! one; spans are only touched in batches by the central lists (see central.rs).
//!
//! Invariants:
//! - A cache is used only by its CPU, with interrupts masked on that CPU for the whole operation
//!   (an interrupt handler that allocates would otherwise interleave with a half-done push/pop).
//! - Every object in a stack is allocated in its span's bitmap (the central list took it out of the span)
//!   and is of the stack's size class.
//! - `len <= cap`; stack `c` owns `slots[start(c) .. start(c) + cap(c)]`. `len` is atomic only so that a
//!   stats reader on another CPU can read it; the owner uses plain loads and stores (no RMW).

use core::sync::atomic::{AtomicU32, Ordering};

use crate::addr::VirtAddr;
use crate::sizeclass::{SizeClass, NUM_SIZE_CLASSES};

/// Bytes of objects one class's stack may hold at most (bounded in objects too).
const STACK_BYTES: usize = 32 << 10;
const MAX_STACK: usize = 256;
const MIN_STACK: usize = 4;

/// Capacity of the stack of `class`.
pub(crate) const fn stack_cap(class: usize) -> usize {
    if class == 0 {
        return 0;
    }
    let size = match SizeClass::new(class as u8) {
        Some(c) => c.size(),
        None => return 0,
    };
    let n = STACK_BYTES / size;
    if n > MAX_STACK {
        MAX_STACK
    } else if n < MIN_STACK {
        MIN_STACK
    } else {
        n
    }
}

const fn total_slots() -> usize {
    let mut total = 0;
    let mut c = 1;
    while c < NUM_SIZE_CLASSES {
        total += stack_cap(c);
        c += 1;
    }
    total
}

const TOTAL_SLOTS: usize = total_slots();

struct Stack {
    len: AtomicU32,
    cap: u32,
    start: u32,
}

/// One CPU's cache.
pub(crate) struct Cache {
    stacks: [Stack; NUM_SIZE_CLASSES],
    slots: [VirtAddr; TOTAL_SLOTS],
}

impl Cache {
    /// Initializes a cache in place (the memory is zeroed metadata: all stacks empty).
    pub(crate) fn init(&mut self) {
        let mut start = 0;
        for (c, s) in self.stacks.iter_mut().enumerate() {
            s.len = AtomicU32::new(0);
            s.cap = stack_cap(c) as u32;
            s.start = start;
            start += s.cap;
        }
    }

    /// Pops an object of `class`; `None` when the stack is empty.
    #[inline(always)]
    pub(crate) fn pop(&mut self, class: SizeClass) -> Option<VirtAddr> {
        let s = &self.stacks[class.index()];
        let len = s.len.load(Ordering::Relaxed);
        if len == 0 {
            return None;
        }
        s.len.store(len - 1, Ordering::Relaxed);
        let i = (s.start + len - 1) as usize;
        // SAFETY of the index: start + len - 1 < start + cap <= TOTAL_SLOTS (invariant), checked by debug.
        debug_assert!(i < TOTAL_SLOTS);
        Some(self.slots[i])
    }

    /// Pushes a freed object; `false` (nothing pushed) when the stack is full.
    #[inline(always)]
    pub(crate) fn push(&mut self, class: SizeClass, obj: VirtAddr) -> bool {
        let s = &self.stacks[class.index()];
        let len = s.len.load(Ordering::Relaxed);
        if len == s.cap {
            return false;
        }
        self.slots[(s.start + len) as usize] = obj;
        s.len.store(len + 1, Ordering::Relaxed);
        true
    }

    /// The free part of `class`'s stack, to be filled by the central list; commit with [`Cache::filled`].
    pub(crate) fn spare_slots(&mut self, class: SizeClass) -> &mut [VirtAddr] {
        let s = &self.stacks[class.index()];
        let len = s.len.load(Ordering::Relaxed);
        &mut self.slots[(s.start + len) as usize..(s.start + s.cap) as usize]
    }

    /// Records that the central list wrote `n` objects into [`Cache::spare_slots`].
    pub(crate) fn filled(&mut self, class: SizeClass, n: usize) {
        let s = &self.stacks[class.index()];
        let len = s.len.load(Ordering::Relaxed) + n as u32;
        debug_assert!(len <= s.cap);
        s.len.store(len, Ordering::Relaxed);
    }

    /// Removes the oldest `n` objects of `class`'s stack (the bottom: the coldest) and passes them to `f`.
    pub(crate) fn drain_bottom(&mut self, class: SizeClass, n: usize, f: impl FnOnce(&[VirtAddr])) {
        let s = &self.stacks[class.index()];
        let len = s.len.load(Ordering::Relaxed) as usize;
        let n = n.min(len);
        let start = s.start as usize;
        f(&self.slots[start..start + n]);
        self.slots.copy_within(start + n..start + len, start);
        s.len.store((len - n) as u32, Ordering::Relaxed);
    }

    /// Objects cached for `class` (may be stale when read from another CPU).
    pub(crate) fn cached(&self, class: usize) -> usize {
        self.stacks[class].len.load(Ordering::Relaxed) as usize
    }
}
