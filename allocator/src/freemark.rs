//! Free marks: how the default build catches every bad small free at the `dealloc` that makes it, for
//! the price of one load, one compare and one store per free and one store per allocation.
//!
//! Every free object of the explicit heap's small spans — sitting in a CPU cache, or free in its span's
//! bitmap, whether it was freed before or never handed out — holds its *free mark* in its mark word:
//! `address ^ secret`, with a per-heap random secret. A user holds an object only after allocation
//! cleared that word, so `dealloc` finds the mark in it exactly when the object is free already (a
//! double free, a free of a slot never handed out, a free of an object waiting in some CPU's cache) —
//! or when the user stored that very value there, which needs the secret (2^-64 otherwise). Interior
//! pointers, foreign pointers, wrong layouts and collector objects are told apart by the span map's
//! entry before the word is read (heap/mod.rs), so the word read is always inside a mapped object.
//!
//! The mark word is the object's second word (bytes 8..16; the first for the 8-byte class), as glibc's
//! tcache key is: a program that writes its object's first bytes just before freeing it (a header, a
//! tag, a refcount) would otherwise make the free's 8-byte load wait for those narrower stores to reach
//! the cache (a failed store-to-load forward, some ten cycles: a third of a 16 B alloc+free pair).
//!
//! This is glibc's tcache key and mimalloc's encoded free lists turned into an exact check: a mark on
//! *every* free slot, not only on cached ones, stamped when a span is carved (central.rs).
//!
//! Invariants:
//! - Every free object of an explicit-heap small span holds `mark(addr)` in its mark word (objects are
//!   at least 8 bytes and 8-aligned). Stamped on every object of a fresh span, on every object freed;
//!   kept while the object moves between caches and its span.
//! - An object handed to a user has had its mark word set to 0 (so a fresh allocation never shows a
//!   mark, and the secret never reaches a user who reads only memory they initialized).
//! - The secret is set once, at `Heap::init`, before any object exists, and is never 0.
//!
//! Out of scope: a *stale* free (an address freed, reallocated to a new owner, then freed by the old
//! one) frees the new owner's object, as in every allocator without quarantine; and two CPUs freeing the
//! same object at the same instant can both miss the mark (`debug-checks` catches that under a lock).

use core::sync::atomic::{AtomicU64, Ordering};

use crate::sizeclass::SizeClass;
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
    fn mark(&self, obj: *const u8) -> u64 {
        obj as u64 ^ self.secret.load(Ordering::Relaxed)
    }

    /// Where `obj`'s mark lives: its second word, or its only word in the 8-byte class.
    #[inline(always)]
    fn word(obj: *mut u8, class: SizeClass) -> *mut u64 {
        obj.wrapping_add(class.mark_offset()).cast()
    }

    /// Writes `obj`'s free mark.
    ///
    /// # Safety
    /// `obj` is the start of an object of `class` of an in-use explicit-heap span, mapped, which no user
    /// holds (it is being freed or is free).
    #[inline(always)]
    pub(crate) unsafe fn stamp(&self, obj: *mut u8, class: SizeClass) {
        // SAFETY: the caller's contract: the object's mark word is writable, aligned and nobody else's.
        unsafe { Self::word(obj, class).write(self.mark(obj)) }
    }

    /// Whether `obj` holds its free mark (it is free).
    ///
    /// # Safety
    /// `obj` is the start of an object of `class` of an in-use span, mapped, that the caller claims to
    /// hold (so no one else writes it now).
    #[inline(always)]
    pub(crate) unsafe fn is_free(&self, obj: *mut u8, class: SizeClass) -> bool {
        // SAFETY: the caller's contract: the object's mark word is readable and aligned.
        unsafe { Self::word(obj, class).read() == self.mark(obj) }
    }

    /// Stamps `obj`'s free mark and says whether it was there already (the object was free: a bad
    /// free). One load of the secret and one of the word for the check and the stamp together; stamping a
    /// free object changes nothing, so the caller may refuse the free afterwards as if nothing happened.
    ///
    /// # Safety
    /// As for [`FreeMarks::stamp`], except that the object may be free already.
    #[inline(always)]
    pub(crate) unsafe fn stamp_was_free(&self, obj: *mut u8, class: SizeClass) -> bool {
        let mark = self.mark(obj);
        let word = Self::word(obj, class);
        // SAFETY: the caller's contract: the mark word is readable, writable, aligned, nobody else's.
        unsafe {
            let was = word.read();
            word.write(mark);
            was == mark
        }
    }

    /// Clears `obj`'s mark word as it goes to a user.
    ///
    /// # Safety
    /// `obj` was just handed out by the heap: the start of a mapped object of `class` that only the
    /// caller holds.
    #[inline(always)]
    pub(crate) unsafe fn clear(obj: *mut u8, class: SizeClass) {
        // SAFETY: the caller's contract.
        unsafe { Self::word(obj, class).write(0) }
    }

    /// Stamps every object of a fresh small span.
    ///
    /// # Safety
    /// `span` is an in-use small span of the explicit heap whose pages are mapped and hold no object a
    /// user holds (it was just carved).
    pub(crate) unsafe fn stamp_span(&self, span: &Span) {
        let class = span.class().size_class();
        for i in 0..span.nelems() {
            // SAFETY: object `i` of the span: mapped, 8-aligned (class sizes are multiples of 8, spans
            // page aligned), and free (the caller's contract).
            unsafe { self.stamp(span.object_addr(i).as_mut_ptr(), class) };
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
