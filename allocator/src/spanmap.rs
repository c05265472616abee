//! The span map: heap page -> the span that holds it, in O(1) and without a lock (Go's heapArena.spans).
//!
//! `dealloc` looks every pointer up here to check it (is it an object of this heap's explicit side? of
//! the class the layout says? the start of an object?), so the read side is two loads, and the entry
//! alone answers all three questions without touching the span struct.
//!
//! Invariants:
//! - Entry `i` describes heap page `base + i * PAGE_SIZE`. It is 0 unless the page belongs to an in-use
//!   span; then it packs the span struct's address (bits 0..48, sign-extended on read), for small spans
//!   the page's index inside its span (bits 48..55; 0 for large spans, whose object starts at the span
//!   base), and the span's *kind* (bits 55..64): its size class (bits 55..62, never 0 for a small
//!   class), noscan (bit 62) and its owner (bit 63: set for a collector's span). An explicit-heap span's
//!   kind is its size class itself, so the free path tests "in-use explicit span of this class" with one
//!   shift and one compare. Entries are written only under the heap lock.
//! - `pages` only grows, and only after the entries below it are mapped (Release store; readers Acquire),
//!   so a reader never touches an unmapped entry.

use core::ptr::NonNull;
use core::sync::atomic::{AtomicPtr, AtomicU64, AtomicUsize, Ordering};

use crate::addr::{VirtAddr, PAGE_SIZE};
use crate::sizeclass::{SizeClass, SpanClass};
use crate::span::Span;

const ADDR_BITS: u32 = 48;
const ADDR_MASK: u64 = (1 << ADDR_BITS) - 1;
/// Bits of the page-in-span index, from bit 48.
const PAGE_BITS: u32 = 7;
/// The kind: span class, then the owner bit.
const KIND_SHIFT: u32 = ADDR_BITS + PAGE_BITS;
const KIND_NOSCAN: u64 = 1 << 7;
const OWNER_GC: u64 = 1 << 8;
/// Most pages a small span may have for its page index to fit.
const MAX_SMALL_SPAN_PAGES: usize = 1 << PAGE_BITS;

const _: () = assert!(crate::sizeclass::NUM_SIZE_CLASSES as u64 <= KIND_NOSCAN);
const _: () = {
    let mut c = 1;
    while c < crate::sizeclass::NUM_SIZE_CLASSES {
        let class = match SizeClass::new(c as u8) {
            Some(class) => class,
            None => panic!(),
        };
        assert!(class.pages().0 <= MAX_SMALL_SPAN_PAGES);
        c += 1;
    }
};

/// Who allocates from a span: the explicit heap (`GlobalAlloc`) or a collector. `dealloc` frees only
/// the explicit heap's objects.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Owner {
    Explicit,
    Collector,
}

/// A span-map entry (never 0).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Entry {
    raw: u64,
}

impl Entry {
    /// The kind an explicit-heap span of `class` has: what `dealloc` compares [`kind_of`] with.
    #[inline(always)]
    pub(crate) const fn explicit_kind(class: SizeClass) -> u64 {
        class.index() as u64
    }

    #[inline(always)]
    pub(crate) fn span(self) -> NonNull<Span> {
        // Sign-extend the 48-bit address back to a canonical pointer.
        let ptr = (((self.raw & ADDR_MASK) << 16) as i64 >> 16) as u64;
        // SAFETY: entries are non-zero only for in-use spans, whose struct address is never 0.
        unsafe { NonNull::new_unchecked(ptr as *mut Span) }
    }

    #[inline(always)]
    pub(crate) fn class(self) -> SpanClass {
        let kind = self.raw >> KIND_SHIFT;
        let class = SizeClass::new((kind & (KIND_NOSCAN - 1)) as u8).expect("spanmap: bad entry");
        SpanClass::new(class, kind & KIND_NOSCAN != 0)
    }

    pub(crate) fn owner(self) -> Owner {
        if (self.raw >> KIND_SHIFT) & OWNER_GC != 0 {
            Owner::Collector
        } else {
            Owner::Explicit
        }
    }

    /// Byte offset of `addr` from its span's base (`addr` must be in the page this entry describes).
    #[inline(always)]
    pub(crate) fn offset_in_span(self, addr: u64) -> usize {
        offset_in_span(self.raw, addr)
    }
}

/// The kind bits of a raw entry (0 for no span): the span class and owner.
#[inline(always)]
pub(crate) fn kind_of(raw: u64) -> u64 {
    raw >> KIND_SHIFT
}

/// Byte offset of `addr` from the base of the span of raw entry `raw` (the entry of `addr`'s page).
#[inline(always)]
pub(crate) fn offset_in_span(raw: u64, addr: u64) -> usize {
    let page_bytes = (raw >> (ADDR_BITS - PAGE_SIZE.trailing_zeros()))
        & (((1 << PAGE_BITS) - 1) << PAGE_SIZE.trailing_zeros());
    (page_bytes | (addr & (PAGE_SIZE as u64 - 1))) as usize
}

pub(crate) struct SpanMap {
    entries: AtomicPtr<AtomicU64>,
    base: AtomicU64,
    pages: AtomicUsize,
}

impl SpanMap {
    pub(crate) const fn new() -> Self {
        Self {
            entries: AtomicPtr::new(core::ptr::null_mut()),
            base: AtomicU64::new(0),
            pages: AtomicUsize::new(0),
        }
    }

    /// Bytes of entries for a heap of `capacity` pages.
    pub(crate) const fn bytes_for(capacity: usize) -> u64 {
        capacity as u64 * 8
    }

    /// Points the map at its entries (a zeroed region, mapped later as the heap grows) and the heap base
    /// (page aligned, so `addr % PAGE_SIZE` is the offset in a page).
    pub(crate) fn init(&self, entries: VirtAddr, heap_base: VirtAddr) {
        assert!(
            heap_base.is_aligned(PAGE_SIZE as u64),
            "spanmap: heap base {:#x} is not page aligned",
            heap_base.as_u64()
        );
        self.base.store(heap_base.as_u64(), Ordering::Relaxed);
        self.entries.store(entries.as_mut_ptr(), Ordering::Release);
    }

    /// Declares entries `[0, pages)` mapped.
    pub(crate) fn publish(&self, pages: usize) {
        self.pages.store(pages, Ordering::Release);
    }

    /// Whether `addr` lies in the heap's grown pages (cheap pre-check for foreign pointers). A raw
    /// address: a pointer that passes is inside the heap, hence canonical, with no check of its own.
    #[inline(always)]
    pub(crate) fn page_of(&self, addr: u64) -> Option<usize> {
        let off = addr.wrapping_sub(self.base.load(Ordering::Relaxed));
        let i = (off / PAGE_SIZE as u64) as usize;
        (i < self.pages.load(Ordering::Acquire)).then_some(i)
    }

    /// The raw entry of the page holding `addr` (a raw address, see `page_of`): 0 if `addr` is not in
    /// an in-use span.
    #[inline(always)]
    pub(crate) fn raw_entry(&self, addr: u64) -> u64 {
        let Some(i) = self.page_of(addr) else {
            return 0;
        };
        let entries = self.entries.load(Ordering::Relaxed);
        // SAFETY: i < pages, and entries below `pages` are mapped for the heap's lifetime (invariant).
        unsafe { (*entries.add(i)).load(Ordering::Acquire) }
    }

    /// The entry of the page holding `addr` (a raw address, see `page_of`), or `None` if `addr` is not
    /// in an in-use span.
    #[inline(always)]
    pub(crate) fn entry(&self, addr: u64) -> Option<Entry> {
        let raw = self.raw_entry(addr);
        (raw != 0).then_some(Entry { raw })
    }

    /// The span holding `addr` and its class, or `None` if `addr` is not in an in-use span.
    #[inline]
    pub(crate) fn lookup(&self, addr: VirtAddr) -> Option<(NonNull<Span>, SpanClass)> {
        self.entry(addr.as_u64()).map(|e| (e.span(), e.class()))
    }

    /// The entry page `k` of span `s` of class `c` has (what [`SpanMap::set`] writes).
    pub(crate) fn encode(s: NonNull<Span>, c: SpanClass, owner: Owner, k: usize) -> u64 {
        let mut kind = c.size_class().index() as u64;
        if c.noscan() {
            kind |= KIND_NOSCAN;
        }
        if owner == Owner::Collector {
            kind |= OWNER_GC;
        }
        let page = if c.is_large() {
            0
        } else {
            debug_assert!(k < MAX_SMALL_SPAN_PAGES);
            k as u64
        };
        (s.as_ptr() as u64 & ADDR_MASK) | page << ADDR_BITS | kind << KIND_SHIFT
    }

    /// Sets the entries of pages `[first, first + n)` (under the heap lock): to `span` if given, whose
    /// first page is `first` when it is small (large spans record no page index), else to 0.
    pub(crate) fn set(
        &self,
        first: usize,
        n: usize,
        span: Option<(NonNull<Span>, SpanClass, Owner)>,
    ) {
        let entries = self.entries.load(Ordering::Relaxed);
        assert!(
            first + n <= self.pages.load(Ordering::Relaxed),
            "spanmap: pages {first}+{n} not grown"
        );
        for (k, i) in (first..first + n).enumerate() {
            let e = span.map_or(0, |(s, c, owner)| Self::encode(s, c, owner, k));
            // SAFETY: i < pages: the entry is mapped (invariant).
            unsafe { (*entries.add(i)).store(e, Ordering::Release) };
        }
    }
}
