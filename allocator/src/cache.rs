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
//! - Stack `c` owns `slots[base(c) .. limit(c))` and holds objects in `[base, top)`; the stacks tile
//!   `slots` without overlap. The cache never moves after `init` (its pointers point into itself).
//! - Those pointers are used for their addresses only: a slot is always reached through the `&mut self`
//!   of the call (`slot`). Each `&mut Cache` the heap makes asserts unique access to the whole cache,
//!   which invalidates pointers kept from an earlier one (Stacked and Tree Borrows; Miri reports it).

use core::sync::atomic::{AtomicPtr, Ordering};

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

/// One class's stack: `slots[base .. top)` hold free objects, `top <= limit`.
///
/// `top` is atomic only so that a stats reader on another CPU may read it; the owner does plain
/// (Relaxed) loads and stores, which compile to ordinary moves.
struct Stack {
    top: AtomicPtr<VirtAddr>,
    base: *mut VirtAddr,
    limit: *mut VirtAddr,
}

/// The slot at `at`'s address, as a pointer derived from `slots` (see the module's invariants).
#[inline(always)]
fn slot(slots: &mut [VirtAddr; TOTAL_SLOTS], at: *mut VirtAddr) -> *mut VirtAddr {
    slots.as_mut_ptr().with_addr(at.addr())
}

/// One CPU's sampling state (heap/sample.rs): `countdown` is what the allocation fast path touches, on
/// platforms that compile sampling in (`Platform::SAMPLING`); the rest is for the cold path. All-zero
/// (a fresh cache) makes the first allocation take the cold path, which arms it.
#[derive(Debug)]
pub(crate) struct SampleState {
    /// Bytes left until the next sampling event; negative: the allocation that made it so is one.
    pub(crate) countdown: isize,
    /// `countdown` as last armed (bytes allocated since = armed - countdown).
    pub(crate) armed: isize,
    /// Bytes left until the next heap-profile sample and the next guarded allocation.
    pub(crate) profile_left: i64,
    pub(crate) guard_left: i64,
    pub(crate) rng: u64,
    /// The sampler's settings generation this state was armed with.
    pub(crate) epoch: u32,
}

impl SampleState {
    /// Counts `bytes` allocated; `false` when this allocation is a sampling event (the cold path decides).
    #[inline(always)]
    pub(crate) fn take(&mut self, bytes: usize) -> bool {
        self.countdown = self.countdown.wrapping_sub(bytes as isize);
        self.countdown >= 0
    }
}

/// One CPU's cache.
pub(crate) struct Cache {
    pub(crate) sample: SampleState,
    stacks: [Stack; NUM_SIZE_CLASSES],
    slots: [VirtAddr; TOTAL_SLOTS],
}

impl Cache {
    /// Initializes a cache in place (the memory is zeroed metadata: all stacks empty). The cache must not
    /// move afterwards (it lives in metadata for the heap's lifetime).
    pub(crate) fn init(&mut self) {
        let slots = self.slots.as_mut_ptr();
        let mut start = 0;
        for (c, s) in self.stacks.iter_mut().enumerate() {
            let cap = stack_cap(c);
            // `start + cap <= TOTAL_SLOTS`: the caps sum to TOTAL_SLOTS (class 0 has none).
            s.base = slots.wrapping_add(start);
            s.limit = slots.wrapping_add(start + cap);
            s.top = AtomicPtr::new(s.base);
            start += cap;
        }
    }

    /// Pops an object of `class`; `None` when the stack is empty.
    #[inline(always)]
    pub(crate) fn pop(&mut self, class: SizeClass) -> Option<VirtAddr> {
        let s = &self.stacks[class.index()];
        let top = s.top.load(Ordering::Relaxed);
        if top == s.base {
            return None;
        }
        // SAFETY: base < top <= limit, all within `slots` (init), so top - 1 is an initialized slot of
        // this stack; `&mut self` makes us its only user, and `slot` derives the pointer from it.
        unsafe {
            let top = top.sub(1);
            s.top.store(top, Ordering::Relaxed);
            Some(*slot(&mut self.slots, top))
        }
    }

    /// Pushes a freed object; `false` (nothing pushed) when the stack is full.
    #[inline(always)]
    pub(crate) fn push(&mut self, class: SizeClass, obj: VirtAddr) -> bool {
        let s = &self.stacks[class.index()];
        let top = s.top.load(Ordering::Relaxed);
        if top == s.limit {
            return false;
        }
        // SAFETY: base <= top < limit: a slot of this stack inside `slots`; `&mut self` makes us its only
        // user, and `slot` derives the pointer from it.
        unsafe {
            *slot(&mut self.slots, top) = obj;
            s.top.store(top.add(1), Ordering::Relaxed);
        }
        true
    }

    fn len(s: &Stack) -> usize {
        (s.top.load(Ordering::Relaxed) as usize - s.base as usize)
            / core::mem::size_of::<VirtAddr>()
    }

    fn cap(s: &Stack) -> usize {
        (s.limit as usize - s.base as usize) / core::mem::size_of::<VirtAddr>()
    }

    /// Index of `s`'s first slot in `slots`.
    fn start(&self, s: &Stack) -> usize {
        (s.base as usize - self.slots.as_ptr() as usize) / core::mem::size_of::<VirtAddr>()
    }

    /// The free part of `class`'s stack, to be filled by the central list; commit with [`Cache::filled`].
    pub(crate) fn spare_slots(&mut self, class: SizeClass) -> &mut [VirtAddr] {
        let s = &self.stacks[class.index()];
        let (start, len, cap) = (self.start(s), Self::len(s), Self::cap(s));
        &mut self.slots[start + len..start + cap]
    }

    /// Records that the central list wrote `n` objects into [`Cache::spare_slots`].
    pub(crate) fn filled(&mut self, class: SizeClass, n: usize) {
        let s = &self.stacks[class.index()];
        assert!(
            Self::len(s) + n <= Self::cap(s),
            "cache: overfilled class {}",
            class.get()
        );
        s.top.store(
            s.top.load(Ordering::Relaxed).wrapping_add(n),
            Ordering::Relaxed,
        );
    }

    /// Removes the oldest `n` objects of `class`'s stack (the bottom: the coldest) and passes them to `f`.
    pub(crate) fn drain_bottom(&mut self, class: SizeClass, n: usize, f: impl FnOnce(&[VirtAddr])) {
        let s = &self.stacks[class.index()];
        let (start, len) = (self.start(s), Self::len(s));
        let n = n.min(len);
        f(&self.slots[start..start + n]);
        self.slots.copy_within(start + n..start + len, start);
        let s = &self.stacks[class.index()];
        s.top.store(s.base.wrapping_add(len - n), Ordering::Relaxed);
    }

    /// Objects cached for `class` (may be stale when read from another CPU).
    pub(crate) fn cached(&self, class: usize) -> usize {
        Self::len(&self.stacks[class])
    }
}
