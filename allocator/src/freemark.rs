//! Free marks: how the default build catches every bad small free at the `dealloc` that makes it, for
//! the price of one load, one compare and one store per free and one store per allocation.
//!
//! Every free object of the explicit heap's small spans — sitting in a CPU cache, or free in its span's
//! bitmap, whether it was freed before or never handed out — holds its *free mark* in its first word:
//! `address ^ secret`, with a per-heap random secret. A user holds an object only after allocation
//! cleared that word, so `dealloc` finds the mark in it exactly when the object is free already (a
//! double free, a free of a slot never handed out, a free of an object waiting in some CPU's cache) —
//! or when the user stored that very value there, which needs the secret (2^-64 otherwise). Interior
//! pointers, foreign pointers, wrong layouts and collector objects are told apart by the span map's
//! entry before the word is read (heap/mod.rs), so the word read is always the start of a mapped object.
//!
//! This is glibc's tcache key and mimalloc's encoded free lists turned into an exact check: a mark on
//! *every* free slot, not only on cached ones, stamped when a span is carved (central.rs).
//!
//! Invariants:
//! - Every free object of an explicit-heap small span holds `mark(addr)` in its first 8 bytes (objects
//!   are at least 8 bytes and 8-aligned). Stamped on every object of a fresh span, on every object
//!   freed; kept while the object moves between caches and its span.
//! - An object handed to a user has had its first word set to 0 (so a fresh allocation never shows a
//!   mark, and the secret never reaches a user who reads only memory they initialized).
//! - The secret is set once, at `Heap::init`, before any object exists, and is never 0.
//!
//! Out of scope: a *stale* free (an address freed, reallocated to a new owner, then freed by the old
//! one) frees the new owner's object, as in every allocator without quarantine; and two CPUs freeing the
//! same object at the same instant can both miss the mark (`debug-checks` catches that under a lock).

use core::sync::atomic::{AtomicU64, Ordering};

use crate::addr::VirtAddr;
use crate::span::Span;

/// The per-heap secret and the operations on marks.
pub(crate) struct FreeMarks {
    secret: AtomicU64,
}

impl FreeMarks {
    pub(crate) const fn new() -> Self {
        Self {
            secret: AtomicU64::new(0),
        }
    }

    /// Sets the secret from `seed` (mixed, so nearby seeds give unrelated secrets; never 0).
    pub(crate) fn init(&self, seed: u64) {
        // splitmix64's finalizer: a bijection that spreads every input bit over the whole word.
        let mut z = seed.wrapping_add(0x9E37_79B9_7F4A_7C15);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        self.secret.store(z | 1 << 63, Ordering::Relaxed);
    }

    #[inline(always)]
    fn mark(&self, obj: VirtAddr) -> u64 {
        obj.as_u64() ^ self.secret.load(Ordering::Relaxed)
    }

    /// Writes `obj`'s free mark.
    ///
    /// # Safety
    /// `obj` is the start of an object (at least 8 bytes, 8-aligned) of an in-use explicit-heap span,
    /// mapped, which no user holds (it is being freed or is free).
    #[inline(always)]
    pub(crate) unsafe fn stamp(&self, obj: VirtAddr) {
        // SAFETY: the caller's contract: 8 writable, aligned bytes nobody else uses.
        unsafe { obj.as_mut_ptr::<u64>().write(self.mark(obj)) }
    }

    /// Whether `obj` holds its free mark (it is free), reading its first word.
    ///
    /// # Safety
    /// `obj` is the start of an object (at least 8 bytes, 8-aligned) of an in-use span, mapped, that the
    /// caller claims to hold (so no one else writes it now).
    #[inline(always)]
    pub(crate) unsafe fn is_free(&self, obj: VirtAddr) -> bool {
        // SAFETY: the caller's contract: 8 readable, aligned bytes.
        unsafe { obj.as_ptr::<u64>().read() == self.mark(obj) }
    }

    /// Clears `obj`'s first word as it goes to a user.
    ///
    /// # Safety
    /// `obj` was just handed out by the heap: the start of a mapped object of at least 8 bytes, 8-aligned,
    /// that only the caller holds.
    #[inline(always)]
    pub(crate) unsafe fn clear(obj: VirtAddr) {
        // SAFETY: the caller's contract.
        unsafe { obj.as_mut_ptr::<u64>().write(0) }
    }

    /// Stamps every object of a fresh small span.
    ///
    /// # Safety
    /// `span` is an in-use small span of the explicit heap whose pages are mapped and hold no object a
    /// user holds (it was just carved).
    pub(crate) unsafe fn stamp_span(&self, span: &Span) {
        for i in 0..span.nelems() {
            // SAFETY: object `i` of the span: mapped, 8-aligned (class sizes are multiples of 8, spans
            // page aligned), and free (the caller's contract).
            unsafe { self.stamp(span.object_addr(i)) };
        }
    }
}

/// A seed for the secret that differs between boots and heaps: the time-stamp counter where there is
/// one (and Miri is not interpreting us), mixed with an address of the heap.
pub(crate) fn seed(salt: u64) -> u64 {
    #[cfg(all(target_arch = "x86_64", not(miri)))]
    {
        // SAFETY: `rdtsc` has no preconditions and touches no memory.
        #[allow(unused_unsafe)]
        let tsc = unsafe { core::arch::x86_64::_rdtsc() };
        tsc.rotate_left(32) ^ salt
    }
    #[cfg(not(all(target_arch = "x86_64", not(miri))))]
    {
        salt ^ 0x5bd1_e995_f00d_cafe
    }
}
