//! The per-CPU cache (Go's mcache, in TCMalloc's per-CPU form): for each size class a stack of free
//! objects. **This is the allocation and free fast path**: pop or push on the current CPU's stack, no
//! lock, no atomic read-modify-write, and (unless the platform asks for it) no interrupt masking.
//!
//! Why stacks of objects rather than Go's "one span per class": Rust frees explicitly and `dealloc`
//! may run on any CPU. With per-CPU object stacks a free is a push on the *current* CPU whatever CPU
//! allocated the object (objects migrate, as in TCMalloc), so a remote free costs the same as a local
//! one; spans are only touched in batches by the central lists (see central.rs).
//!
//! **Interrupts: the busy flag.** A pop or push is a few loads and stores; an interrupt handler that
//! allocated on the same CPU between them would see (and leave) a half-done stack. So the fast path sets
//! the cache's `busy` flag, does the pop or push, and clears the flag ([`Cache::pop`], [`Cache::push`]);
//! it refuses (returns `None`/`false`) when it finds the flag set, and the heap then serves the operation
//! through the central lists' locks without touching this cache. The flag is only ever written by its own
//! CPU (by the code running there and by the interrupt handlers that nest in it, in LIFO order), so plain
//! stores with compiler fences are enough: an interrupt either lands before the flag is set (the handler
//! finishes its own use of the cache, leaving it consistent, before the interrupted code reads anything
//! of it) or while it is set (the handler does not touch the stacks). Slow paths use the cache with
//! interrupts masked, through [`Cache::stacks`], which also refuses a busy cache.
//!
//! Invariants:
//! - A cache is used only by its CPU: by the fast path inside a busy window, or with interrupts masked
//!   while not busy (slow paths). Anything else (an interrupt handler finding it busy) leaves the stacks
//!   alone.
//! - Every object in a stack is allocated in its span's bitmap (the central list took it out of the span)
//!   and is of the stack's size class.
//! - Stack `c` owns `slots[base(c) .. limit(c))` and holds objects in `[base, top)`; the stacks lie in
//!   `slots` without overlap, each at the start of its full-size share ([`stack_cap`]), its limit at
//!   [`scaled_cap`] of that share (a small heap's caches hold fewer objects, see [`cache_shift`]). The
//!   cache never moves after `init` (its pointers point into itself).
//! - Those pointers are used for their addresses only: a slot is always reached through a pointer derived
//!   from `slots`' `UnsafeCell` (`slot`), and no `&mut` to a cache exists after `init`: an interrupt
//!   handler may read `busy` (and another CPU the tops, for statistics) at any time.

use core::cell::UnsafeCell;
use core::sync::atomic::{compiler_fence, AtomicBool, AtomicPtr, Ordering};

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

/// Heaps with at least this much memory get full-size stacks ([`stack_cap`]); smaller ones halve them
/// per halving of the memory, down to [`MAX_CACHE_SHIFT`]: a CPU's cache may hold some 2 MiB of free
/// objects at full size (32 KiB or 256 objects for each of 67 classes), which in a 16 MiB heap would be
/// an eighth of it, stranded (and the spans those objects come from, half empty, with them).
pub(crate) const FULL_CACHE_MEMORY: usize = 256 << 20;
/// The smallest stacks: a sixteenth of full size (at least one object).
pub(crate) const MAX_CACHE_SHIFT: u32 = 4;

/// How far a heap with `memory` bytes (what it can ever map: frames, or its regions) shrinks its
/// stacks: `log2(FULL_CACHE_MEMORY / memory)` rounded up, within `0..=MAX_CACHE_SHIFT`, with an eighth
/// of slack: a machine of 256 MiB has less than that to hand out (firmware areas, the frame allocator's
/// own bitmap), and must not get half-size caches for it (measured: a 16 B batch of 256 frees then
/// overflowed its stack, 3.2 -> 20 ns per free).
pub(crate) const fn cache_shift(memory: usize) -> u32 {
    const ENOUGH: usize = FULL_CACHE_MEMORY - FULL_CACHE_MEMORY / 8;
    let mut shift = 0;
    while shift < MAX_CACHE_SHIFT && memory.saturating_mul(1 << shift) < ENOUGH {
        shift += 1;
    }
    shift
}

/// Capacity of the stack of `class` in a cache shrunk by `shift`: [`stack_cap`] divided by `2^shift`,
/// at least one object (a class that caches nothing would send every free through a lock).
pub(crate) const fn scaled_cap(class: usize, shift: u32) -> usize {
    let full = stack_cap(class);
    if full == 0 {
        0
    } else if full >> shift == 0 {
        1
    } else {
        full >> shift
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

/// One CPU's sampling state (heap/sample.rs): `countdown` is what the allocation fast path touches, on
/// platforms that compile sampling in (`Platform::SAMPLING`), inside its busy window; the rest is for the
/// cold path, through [`Stacks::sample`]. All-zero (a fresh cache) makes the first allocation take the
/// cold path, which arms it.
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

/// One CPU's cache. `repr(C)`: the busy flag shares its cache line with the first stacks' tops.
#[repr(C)]
pub(crate) struct Cache {
    /// Set while the fast path pops or pushes (see the module docs).
    busy: AtomicBool,
    stacks: [Stack; NUM_SIZE_CLASSES],
    /// Sampling (used only on platforms with `Platform::SAMPLING`): the fast path's countdown inside its
    /// busy window, the rest through [`Stacks::sample`].
    sample: UnsafeCell<SampleState>,
    slots: UnsafeCell<[VirtAddr; TOTAL_SLOTS]>,
}

impl Cache {
    /// Initializes a cache in place (the memory is zeroed metadata: all stacks empty, not busy), its
    /// stacks shrunk by `shift` ([`scaled_cap`], `shift <= MAX_CACHE_SHIFT`). The cache must not move
    /// afterwards (it lives in metadata for the heap's lifetime).
    pub(crate) fn init(&mut self, shift: u32) {
        debug_assert!(shift <= MAX_CACHE_SHIFT);
        let slots = self.slots.get_mut().as_mut_ptr();
        let mut start = 0;
        for (c, s) in self.stacks.iter_mut().enumerate() {
            let cap = stack_cap(c);
            // `start + cap <= TOTAL_SLOTS`: the caps sum to TOTAL_SLOTS (class 0 has none); the limit
            // stays inside the share, `scaled_cap <= stack_cap`.
            s.base = slots.wrapping_add(start);
            s.limit = slots.wrapping_add(start + scaled_cap(c, shift));
            s.top = AtomicPtr::new(s.base);
            start += cap;
        }
    }

    /// The slot at `at`'s address, as a pointer derived from `slots` (see the module's invariants).
    #[inline(always)]
    fn slot(&self, at: *mut VirtAddr) -> *mut VirtAddr {
        self.slots.get().cast::<VirtAddr>().with_addr(at.addr())
    }

    /// Opens the busy window; `false` if it is open already (we interrupted this CPU's fast path).
    #[inline(always)]
    fn enter(&self) -> bool {
        if self.busy.load(Ordering::Relaxed) {
            return false;
        }
        #[cfg(test)]
        interrupt_hook::fire();
        self.busy.store(true, Ordering::Relaxed);
        // The stack's loads may not move above the flag's store (an interrupt handler runs on this CPU,
        // so ordering the compiler's output is all it takes).
        compiler_fence(Ordering::SeqCst);
        true
    }

    #[inline(always)]
    fn leave(&self) {
        compiler_fence(Ordering::SeqCst);
        self.busy.store(false, Ordering::Relaxed);
    }

    /// The fast path's pop: an object of `class`, or `None` when the stack is empty or the cache is busy
    /// (an interrupt landed in this CPU's own fast path). `guard`: use the busy window (false when no
    /// interrupt can land in the middle: masked, or no handler allocates).
    ///
    /// # Safety
    /// The caller runs on this cache's CPU and stays on it until the call returns (interrupt handlers
    /// may nest, and must return to it); with `guard` false, no interrupt handler uses the heap on this
    /// CPU until the call returns.
    ///
    /// `count`: with `Some(bytes)` (sampling compiled in), the allocation first counts its bytes down to
    /// the next sampling event, and a count that goes negative is a miss (`None`, nothing popped): the
    /// cold path takes the event.
    #[inline(always)]
    pub(crate) unsafe fn pop(
        &self,
        class: SizeClass,
        guard: bool,
        count: Option<usize>,
    ) -> Option<VirtAddr> {
        if guard && !self.enter() {
            return None;
        }
        if let Some(bytes) = count {
            // SAFETY: the countdown is ours as the stacks are (the busy window or the caller's promise);
            // no reference to it outlives this statement.
            let left = unsafe {
                let st = &mut *self.sample.get();
                st.countdown = st.countdown.wrapping_sub(bytes as isize);
                st.countdown
            };
            if left < 0 {
                if guard {
                    self.leave();
                }
                return None;
            }
        }
        let s = &self.stacks[class.index()];
        let top = s.top.load(Ordering::Relaxed);
        let got = if top == s.base {
            None
        } else {
            let top = top.wrapping_sub(1);
            #[cfg(test)]
            interrupt_hook::fire();
            // SAFETY: base < top + 1 <= limit, all within `slots` (init), so `top` is an initialized slot
            // of this stack; we are its only user (our CPU, caller's contract; no handler in the middle:
            // the busy window, or the caller's promise that none uses the heap).
            let obj = unsafe { *self.slot(top) };
            s.top.store(top, Ordering::Relaxed);
            Some(obj)
        };
        if guard {
            self.leave();
        }
        got
    }

    /// The fast path's push of a freed object; `false` (nothing pushed) when the stack is full or the
    /// cache is busy. `guard` as for [`Cache::pop`].
    ///
    /// # Safety
    /// As for [`Cache::pop`].
    #[inline(always)]
    pub(crate) unsafe fn push(&self, class: SizeClass, obj: VirtAddr, guard: bool) -> bool {
        if guard && !self.enter() {
            return false;
        }
        let s = &self.stacks[class.index()];
        let top = s.top.load(Ordering::Relaxed);
        let pushed = top != s.limit;
        if pushed {
            #[cfg(test)]
            interrupt_hook::fire();
            // SAFETY: base <= top < limit: a slot of this stack inside `slots`; we are its only user (as
            // in `pop`).
            unsafe { *self.slot(top) = obj };
            s.top.store(top.wrapping_add(1), Ordering::Relaxed);
        }
        if guard {
            self.leave();
        }
        pushed
    }

    /// The slow paths' access to the stacks, `None` while the fast path is inside its busy window on this
    /// CPU (the caller interrupted it).
    ///
    /// # Safety
    /// The caller runs on this cache's CPU with interrupts masked until it drops the result, and makes no
    /// other [`Stacks`] of this cache meanwhile.
    #[inline(always)]
    pub(crate) unsafe fn stacks(&self) -> Option<Stacks<'_>> {
        (!self.busy.load(Ordering::Relaxed)).then_some(Stacks(self))
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
        (s.base as usize - self.slots.get() as usize) / core::mem::size_of::<VirtAddr>()
    }

    /// Objects cached for `class` (may be stale when read from another CPU).
    pub(crate) fn cached(&self, class: usize) -> usize {
        Self::len(&self.stacks[class])
    }
}

/// Exclusive use of a cache's stacks by a slow path (interrupts masked, cache not busy): see
/// [`Cache::stacks`].
pub(crate) struct Stacks<'a>(&'a Cache);

impl Stacks<'_> {
    /// The cache's sampling state (exclusive, as the slots: see [`Cache::stacks`]'s contract).
    pub(crate) fn sample(&mut self) -> &mut SampleState {
        // SAFETY: as in `slots`: a `Stacks` is the cache's only user while it lives, and `&mut self`
        // keeps this borrow its only one.
        unsafe { &mut *self.0.sample.get() }
    }

    /// All slots, for the methods below (exclusive: see [`Cache::stacks`]'s contract).
    fn slots(&mut self) -> &mut [VirtAddr; TOTAL_SLOTS] {
        // SAFETY: a `Stacks` is the only user of the slots while it lives (its maker's contract), and
        // `&mut self` keeps this borrow its only one.
        unsafe { &mut *self.0.slots.get() }
    }

    /// Pops an object of `class`; `None` when the stack is empty.
    pub(crate) fn pop(&mut self, class: SizeClass) -> Option<VirtAddr> {
        let s = &self.0.stacks[class.index()];
        let (start, len) = (self.0.start(s), Cache::len(s));
        if len == 0 {
            return None;
        }
        let obj = self.slots()[start + len - 1];
        s.top.store(
            s.top.load(Ordering::Relaxed).wrapping_sub(1),
            Ordering::Relaxed,
        );
        Some(obj)
    }

    /// Pushes a freed object; `false` (nothing pushed) when the stack is full.
    pub(crate) fn push(&mut self, class: SizeClass, obj: VirtAddr) -> bool {
        let s = &self.0.stacks[class.index()];
        let (start, len) = (self.0.start(s), Cache::len(s));
        if len == Cache::cap(s) {
            return false;
        }
        self.slots()[start + len] = obj;
        s.top.store(
            s.top.load(Ordering::Relaxed).wrapping_add(1),
            Ordering::Relaxed,
        );
        true
    }

    /// The free part of `class`'s stack, to be filled by the central list; commit with [`Stacks::filled`].
    pub(crate) fn spare_slots(&mut self, class: SizeClass) -> &mut [VirtAddr] {
        let s = &self.0.stacks[class.index()];
        let (start, len, cap) = (self.0.start(s), Cache::len(s), Cache::cap(s));
        &mut self.slots()[start + len..start + cap]
    }

    /// Records that the central list wrote `n` objects into [`Stacks::spare_slots`].
    pub(crate) fn filled(&mut self, class: SizeClass, n: usize) {
        let s = &self.0.stacks[class.index()];
        assert!(
            Cache::len(s) + n <= Cache::cap(s),
            "cache: overfilled class {}",
            class.get()
        );
        s.top.store(
            s.top.load(Ordering::Relaxed).wrapping_add(n),
            Ordering::Relaxed,
        );
    }

    /// Removes the oldest `n` objects of `class`'s stack (the bottom: the coldest) and passes them to `f`.
    /// They are off the stack once `f` returns or unwinds (a central flush that refused one of them has
    /// freed the others: kept here too, they would be handed out twice).
    pub(crate) fn drain_bottom(&mut self, class: SizeClass, n: usize, f: impl FnOnce(&[VirtAddr])) {
        /// Takes the drained objects off the stack when dropped.
        struct Shorten<'c, 'a> {
            stacks: &'c mut Stacks<'a>,
            class: SizeClass,
            start: usize,
            len: usize,
            n: usize,
        }
        impl Drop for Shorten<'_, '_> {
            fn drop(&mut self) {
                let (start, len, n) = (self.start, self.len, self.n);
                self.stacks
                    .slots()
                    .copy_within(start + n..start + len, start);
                let s = &self.stacks.0.stacks[self.class.index()];
                s.top.store(s.base.wrapping_add(len - n), Ordering::Relaxed);
            }
        }
        let s = &self.0.stacks[class.index()];
        let (start, len) = (self.0.start(s), Cache::len(s));
        let n = n.min(len);
        let g = Shorten {
            stacks: self,
            class,
            start,
            len,
            n,
        };
        f(&g.stacks.slots()[start..start + n]);
    }

    /// Objects cached for `class`.
    pub(crate) fn cached(&self, class: usize) -> usize {
        self.0.cached(class)
    }

    /// Objects `class`'s stack holds at most.
    pub(crate) fn cap(&self, class: SizeClass) -> usize {
        Cache::cap(&self.0.stacks[class.index()])
    }
}

/// Test hook: called where a real interrupt could land in the fast path and find the cache half used:
/// between the busy flag's test and its setting, and inside the busy window between the loads of a stack
/// and the stores to it (heap tests simulate interrupts with it; see heap/interrupt_tests.rs).
#[cfg(test)]
pub(crate) mod interrupt_hook {
    use std::cell::Cell;
    std::thread_local! {
        pub(crate) static HOOK: Cell<Option<fn()>> = const { Cell::new(None) };
    }
    #[inline(always)]
    pub(crate) fn fire() {
        if let Some(f) = HOOK.with(Cell::get) {
            f()
        }
    }
}
