//! The span map: heap page -> the span that holds it, in O(1) and without a lock (Go's heapArena.spans).
//!
//! `dealloc` looks every pointer up here to check it (is it an object of this heap's explicit side? of
//! the class the layout says? the start of an object?), so the read side is two loads, and the entry
//! alone answers all three questions without touching the span struct.
//!
//! Invariants:
//! - Entry `i` describes heap page `base + i * PAGE_SIZE`. It is 0 unless the page belongs to an in-use
//!   span; then it packs the span struct's address (low 48 bits, sign-extended on read) and a 16-bit
//!   tag: the span class (bits 0..8), the owner (bit 8: set for a collector's span) and, for small
//!   spans, the page's index inside its span (bits 9..16; 0 for large spans, whose object starts at the
//!   span base). Entries are written only under the heap lock.
//! - `pages` only grows, and only after the entries below it are mapped (Release store; readers Acquire),
//!   so a reader never touches an unmapped entry.

use core::ptr::NonNull;
use core::sync::atomic::{AtomicPtr, AtomicU64, AtomicUsize, Ordering};

use crate::addr::{VirtAddr, PAGE_SIZE};
use crate::sizeclass::{SizeClass, SpanClass};
use crate::span::Span;

const ADDR_BITS: u32 = 48;
const ADDR_MASK: u64 = (1 << ADDR_BITS) - 1;
const OWNER_GC: u16 = 1 << 8;
const PAGE_SHIFT: u32 = 9;
/// Most pages a small span may have for its page index to fit the tag.
const MAX_SMALL_SPAN_PAGES: usize = 1 << (16 - PAGE_SHIFT);

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

/// A decoded span-map entry.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Entry {
    raw: u64,
}

impl Entry {
    /// The tag an explicit-heap span of `class` has on its first page: what `dealloc` compares against.
    #[inline(always)]
    pub(crate) const fn explicit_tag(class: SizeClass) -> u16 {
        SpanClass::new(class, false).raw() as u16
    }

    /// Class and owner bits of the tag (the page index left out).
    #[inline(always)]
    pub(crate) fn kind(self) -> u16 {
        (self.raw >> ADDR_BITS) as u16 & ((1 << PAGE_SHIFT) - 1)
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
        SpanClass::from_raw((self.raw >> ADDR_BITS) as u8)
    }

    pub(crate) fn owner(self) -> Owner {
        if (self.raw >> ADDR_BITS) as u16 & OWNER_GC != 0 {
            Owner::Collector
        } else {
            Owner::Explicit
        }
    }

    /// Byte offset of `addr` from its span's base (`addr` must be in the page this entry describes).
    #[inline(always)]
    pub(crate) fn offset_in_span(self, addr: VirtAddr) -> usize {
        let page = (self.raw >> (ADDR_BITS + PAGE_SHIFT)) as usize;
        page * PAGE_SIZE + (addr.as_u64() as usize & (PAGE_SIZE - 1))
    }
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

    /// Whether `addr` lies in the heap's grown pages (cheap pre-check for foreign pointers).
    #[inline]
    pub(crate) fn page_of(&self, addr: VirtAddr) -> Option<usize> {
        let off = addr
            .as_u64()
            .wrapping_sub(self.base.load(Ordering::Relaxed));
        let i = (off / PAGE_SIZE as u64) as usize;
        (i < self.pages.load(Ordering::Acquire)).then_some(i)
    }

    /// The entry of the page holding `addr`, or `None` if `addr` is not in an in-use span.
    #[inline(always)]
    pub(crate) fn entry(&self, addr: VirtAddr) -> Option<Entry> {
        let i = self.page_of(addr)?;
        let entries = self.entries.load(Ordering::Relaxed);
        // SAFETY: i < pages, and entries below `pages` are mapped for the heap's lifetime (invariant).
        let raw = unsafe { (*entries.add(i)).load(Ordering::Acquire) };
        (raw != 0).then_some(Entry { raw })
    }

    /// The span holding `addr` and its class, or `None` if `addr` is not in an in-use span.
    #[inline]
    pub(crate) fn lookup(&self, addr: VirtAddr) -> Option<(NonNull<Span>, SpanClass)> {
        self.entry(addr).map(|e| (e.span(), e.class()))
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
            let e = match span {
                Some((s, c, owner)) => {
                    let mut tag = u16::from(c.raw());
                    if owner == Owner::Collector {
                        tag |= OWNER_GC;
                    }
                    if !c.is_large() {
                        debug_assert!(k < MAX_SMALL_SPAN_PAGES);
                        tag |= (k as u16) << PAGE_SHIFT;
                    }
                    (s.as_ptr() as u64 & ADDR_MASK) | (u64::from(tag) << ADDR_BITS)
                }
                None => 0,
            };
            // SAFETY: i < pages: the entry is mapped (invariant).
            unsafe { (*entries.add(i)).store(e, Ordering::Release) };
        }
    }
}
