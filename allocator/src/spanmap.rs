//! The span map: heap page -> the span that holds it, in O(1) and without a lock (Go's heapArena.spans).
//!
//! `dealloc` looks every pointer up here to check it (is it a heap object? of the class the layout says?)
//! and to find its span, so the read side is two loads and a compare.
//!
//! Invariants:
//! - Entry `i` describes heap page `base + i * PAGE_SIZE`. It is 0 unless the page belongs to an in-use
//!   span; then it packs the span struct's address (low 48 bits, sign-extended on read) and the span
//!   class (high 16 bits). Entries are written only under the heap lock.
//! - `pages` only grows, and only after the entries below it are mapped (Release store; readers Acquire),
//!   so a reader never touches an unmapped entry.

use core::ptr::NonNull;
use core::sync::atomic::{AtomicPtr, AtomicU64, AtomicUsize, Ordering};

use crate::addr::{VirtAddr, PAGE_SIZE};
use crate::sizeclass::SpanClass;
use crate::span::Span;

const ADDR_BITS: u32 = 48;
const ADDR_MASK: u64 = (1 << ADDR_BITS) - 1;

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

    /// Points the map at its entries (a zeroed region, mapped later as the heap grows) and the heap base.
    pub(crate) fn init(&self, entries: VirtAddr, heap_base: VirtAddr) {
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

    /// The span holding `addr` and its class, or `None` if `addr` is not in an in-use span.
    #[inline]
    pub(crate) fn lookup(&self, addr: VirtAddr) -> Option<(NonNull<Span>, SpanClass)> {
        let i = self.page_of(addr)?;
        let entries = self.entries.load(Ordering::Relaxed);
        // SAFETY: i < pages, and entries below `pages` are mapped for the heap's lifetime (invariant).
        let e = unsafe { (*entries.add(i)).load(Ordering::Acquire) };
        if e == 0 {
            return None;
        }
        // Sign-extend the 48-bit address back to a canonical pointer.
        let ptr = (((e & ADDR_MASK) << 16) as i64 >> 16) as u64;
        let class = SpanClass::from_raw((e >> ADDR_BITS) as u8);
        Some((NonNull::new(ptr as *mut Span)?, class))
    }

    /// Sets the entries of pages `[first, first + n)` (under the heap lock).
    pub(crate) fn set(&self, first: usize, n: usize, span: Option<(NonNull<Span>, SpanClass)>) {
        let e = match span {
            Some((s, c)) => (s.as_ptr() as u64 & ADDR_MASK) | (u64::from(c.raw()) << ADDR_BITS),
            None => 0,
        };
        let entries = self.entries.load(Ordering::Relaxed);
        assert!(
            first + n <= self.pages.load(Ordering::Relaxed),
            "spanmap: pages {first}+{n} not grown"
        );
        for i in first..first + n {
            // SAFETY: i < pages: the entry is mapped (invariant).
            unsafe { (*entries.add(i)).store(e, Ordering::Release) };
        }
    }
}
