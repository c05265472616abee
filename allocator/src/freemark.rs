//! Free marks: how the default build catches every bad small free at the `dealloc` that makes it, for
//! the price of one load, one compare and one store per free and one store per allocation.
//!
//! Every free object of the explicit heap's small spans — sitting in a CPU cache, or free in its span's
//! bitmap, whether it was freed before or never handed out — holds its *free mark* in its mark word:
//! a hash of its address and the span-map entry of its page (the span struct's address, the page's
//! index in the span and the span's kind, spanmap.rs): `(address ^ entry) * K` with an odd `K`, a
//! bijection that spreads every bit of both over the whole word. A user holds an object only after
//! allocation cleared that word, so `dealloc` finds the mark there exactly when the object is free
//! already (a double free, a free of a slot never handed out, a free of an object waiting in some CPU's
//! cache) — or when the user's data equals that pseudo-random value, by chance (2^-64). The free path has
//! the entry in a register already (it checked the span with it), so the mark costs one multiplication
//! and no load. Interior pointers, foreign pointers, wrong layouts and collector objects are told apart
//! by the entry before the word is read (heap/mod.rs), so the word read is always inside a mapped
//! object.
//!
//! The mark word is the object's second word (bytes 8..16; the first for the 8-byte class), as glibc's
//! tcache key is: a program that writes its object's first bytes just before freeing it (a header, a
//! tag, a refcount) would otherwise make the free's 8-byte load wait for those narrower stores to reach
//! the cache (a failed store-to-load forward, some ten cycles: a third of a 16 B alloc+free pair).
//!
//! This is glibc's tcache key and mimalloc's encoded free lists turned into an exact check: a mark on
//! *every* free slot, not only on cached ones, stamped when a span is carved (pageheap.rs), before the
//! span map publishes the span.
//!
//! Invariants:
//! - Every free object of an explicit-heap small span holds `mark(addr, entry)` in its mark word.
//!   Stamped on every object of a fresh span and on every object freed; kept while the object moves
//!   between caches and its span (the entry does not change while the span is in use).
//! - An object handed to a user has had its mark word set to 0, so a fresh allocation never shows a mark.
//!
//! Out of scope: a *stale* free (an address freed, reallocated to a new owner, then freed by the old
//! one) frees the new owner's object, as in every allocator without quarantine; a double free after the
//! program wrote into the freed object's mark word (a use after free that erased the mark); and two
//! CPUs freeing the same object at the same instant, which can both miss the mark. `debug-checks`
//! catches the last two under the class lock.

use crate::sizeclass::SizeClass;
use crate::span::Span;

/// `obj`'s free mark, given the span-map entry of its page (see the module documentation).
#[inline(always)]
fn mark(obj: *const u8, entry: u64) -> u64 {
    (obj as u64 ^ entry).wrapping_mul(0x9E37_79B9_7F4A_7C15)
}

/// Where `obj`'s mark lives: its second word, or its only word in the 8-byte class. The offset sits in
/// the class's free-path table entry, next to what the object-start test reads (sizeclass.rs).
#[inline(always)]
fn word(obj: *mut u8, class: SizeClass) -> *mut u64 {
    obj.wrapping_add(class.mark_offset()).cast()
}

/// Writes `obj`'s free mark.
///
/// # Safety
/// `obj` is the start of an object of `class` of an in-use explicit-heap span, mapped, which no user
/// holds (it is being freed or is free); `entry` is the span-map entry of its page.
#[inline(always)]
pub(crate) unsafe fn stamp(obj: *mut u8, class: SizeClass, entry: u64) {
    // SAFETY: the caller's contract: the object's mark word is writable, aligned and nobody else's.
    unsafe { word(obj, class).write(mark(obj, entry)) }
}

/// Whether `obj` holds its free mark (it is free).
///
/// # Safety
/// `obj` is the start of an object of `class` of an in-use span, mapped, that the caller claims to hold
/// (so no one else writes it now); `entry` is the span-map entry of its page.
#[inline(always)]
pub(crate) unsafe fn is_free(obj: *mut u8, class: SizeClass, entry: u64) -> bool {
    // SAFETY: the caller's contract: the object's mark word is readable and aligned.
    unsafe { word(obj, class).read() == mark(obj, entry) }
}

/// Stamps `obj`'s free mark and says whether it was there already (the object was free: a bad free).
/// Stamping a free object changes nothing, so the caller may refuse the free afterwards as if nothing
/// happened.
///
/// # Safety
/// As for [`stamp`], except that the object may be free already.
#[inline(always)]
pub(crate) unsafe fn stamp_was_free(obj: *mut u8, class: SizeClass, entry: u64) -> bool {
    let mark = mark(obj, entry);
    let word = word(obj, class);
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
/// `obj` was just handed out by the heap: the start of a mapped object of `class` that only the caller
/// holds.
#[inline(always)]
pub(crate) unsafe fn clear(obj: *mut u8, class: SizeClass) {
    // SAFETY: the caller's contract.
    unsafe { word(obj, class).write(0) }
}

/// Stamps every object of a fresh small span, whose page `k` will have the span-map entry `entry(k)`.
///
/// # Safety
/// `span` is an in-use small span of the explicit heap whose pages are mapped and hold no object a user
/// holds (it was just carved).
pub(crate) unsafe fn stamp_span(span: &Span, entry: impl Fn(usize) -> u64) {
    let class = span.class().size_class();
    let base = span.base().as_u64();
    for i in 0..span.nelems() {
        let obj = span.object_addr(i);
        let page = ((obj.as_u64() - base) / crate::addr::PAGE_SIZE as u64) as usize;
        // SAFETY: object `i` of the span: mapped, 8-aligned (class sizes are multiples of 8, spans
        // page aligned), and free (the caller's contract).
        unsafe { stamp(obj.as_mut_ptr(), class, entry(page)) };
    }
}
