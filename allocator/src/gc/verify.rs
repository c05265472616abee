//! Verification mode (Go's gccheckmark): after a mark, mark again from the roots with the world
//! stopped, into a separate bitmap, and panic naming any reachable object the first mark missed.
//!
//! The check table is built from every span of the heap: one entry per span, sorted by base address,
//! and one bitmap per span, all in pages taken from the page heap and given back afterwards (safe
//! slices over the pages: the one `unsafe` is `words_mut`).
//!
//! Invariants:
//! - While a check runs, the real mark bits are read, never written.
//! - Entries are sorted by `base` and do not overlap, so a binary search finds an address's span.

use core::ptr::NonNull;

use super::object::Headed;
use super::spans::{GcSpan, SpanSource};
use crate::addr::{PageCount, VirtAddr};
use crate::sizeclass::{SizeClass, SpanClass};
use crate::span::Span;

/// The check table in its storage pages, as words: `n` entries of two words (`[span base, first word
/// of its bitmap]`) sorted by base, then the bitmaps.
pub(crate) struct CheckTable {
    storage: GcSpan,
    words: NonNull<[u64]>,
    n: usize,
    /// Objects found reachable by the check.
    pub(crate) reached: usize,
    cycle: u64,
}

impl CheckTable {
    /// A table over `spans` (their count is `n`, their bitmaps `words` words); `None` when the pages for
    /// it cannot be had.
    pub(crate) fn build(
        source: &dyn SpanSource,
        n: usize,
        words: usize,
        cycle: u64,
        for_each: impl FnOnce(&mut dyn FnMut(&Span)),
    ) -> Option<Self> {
        let len = 2 * n + words;
        let pages = PageCount::covering((len * 8).max(1))?;
        let storage = source.alloc_span(SpanClass::new(SizeClass::LARGE, true), pages, 0)?;
        let base = NonNull::new(storage.base().as_mut_ptr::<u64>())?;
        let mut t = CheckTable {
            words: NonNull::slice_from_raw_parts(base, len),
            storage,
            n,
            reached: 0,
            cycle,
        };
        let table = t.words_mut();
        table.fill(0);
        let (entries, _) = table.as_chunks_mut::<2>();
        let (mut i, mut word) = (0, 0);
        for_each(&mut |s| {
            assert!(i < n, "gc checkmark: more spans than counted");
            entries[i] = [s.base().as_u64(), word as u64];
            word += s.nelems().div_ceil(64);
            i += 1;
        });
        assert!(i == n && word == words, "gc checkmark: span count changed");
        entries[..n].sort_unstable_by_key(|e| e[0]);
        Some(t)
    }

    /// The table's words; `&mut self` makes this the only view.
    fn words_mut(&mut self) -> &mut [u64] {
        // SAFETY: `words` lies in the storage span's pages (mapped, page aligned, `len * 8` bytes at most
        // their size), which only this table uses until `release` gives them back; plain words, so any
        // bits are valid.
        unsafe { self.words.as_mut() }
    }

    /// Sets the check bit of object `idx` of `s`; returns whether it was clear. Panics, naming the object,
    /// if the real mark missed it.
    pub(crate) fn shade(&mut self, s: &Span, idx: usize) -> bool {
        let base = s.base().as_u64();
        let (cycle, n) = (self.cycle, self.n);
        let (table, bits) = self.words_mut().split_at_mut(2 * n);
        let (entries, _) = table.as_chunks::<2>();
        let Ok(e) = entries.binary_search_by_key(&base, |e| e[0]) else {
            panic!(
                "gc checkmark (cycle {cycle}): span at {base:#x} is not one of this heap's spans"
            );
        };
        // `build` counted `nelems` bits for the span, so the word is in its bitmap.
        let w = &mut bits[entries[e][1] as usize + idx / 64];
        let bit = 1u64 << (idx % 64);
        if *w & bit != 0 {
            return false;
        }
        *w |= bit;
        self.reached += 1;
        if !s.is_marked(idx) {
            missed(s, idx, cycle);
        }
        true
    }

    pub(crate) fn release(self, source: &dyn SpanSource) {
        source.free_span(self.storage);
    }
}

#[cold]
#[inline(never)]
fn missed(s: &Span, idx: usize, cycle: u64) -> ! {
    let addr: VirtAddr = s.object_addr(idx);
    let what = if s.class().noscan() {
        "a pointer-free object"
    } else {
        // SAFETY: an allocated object of a scan span (it is reachable, hence initialized).
        unsafe { Headed::new(addr) }.name()
    };
    panic!(
        "gc checkmark (cycle {cycle}): object at {:#x} ({what}, {} B slot, span at {:#x}) is reachable \
         from the roots but the mark missed it",
        addr.as_u64(),
        s.elem_size(),
        s.base().as_u64()
    )
}
