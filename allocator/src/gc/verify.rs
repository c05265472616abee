//! Verification mode (Go's gccheckmark): after a mark, mark again from the roots with the world
//! stopped, into a separate bitmap, and panic naming any reachable object the first mark missed.
//!
//! The check table is built from every span of the heap: one entry per span, sorted by base address,
//! and one bitmap per span, all in pages taken from the page heap and given back afterwards.
//!
//! Invariants:
//! - While a check runs, the real mark bits are read, never written.
//! - Entries are sorted by `base` and do not overlap, so a binary search finds an address's span.

use core::ptr::NonNull;

use super::object::Headed;
use super::spans::SpanSource;
use crate::addr::{PageCount, VirtAddr};
use crate::sizeclass::{SizeClass, SpanClass};
use crate::span::Span;

#[derive(Clone, Copy)]
struct Entry {
    base: u64,
    /// First word of this span's bitmap in `bits`.
    word: usize,
}

pub(crate) struct CheckTable {
    storage: NonNull<Span>,
    entries: NonNull<Entry>,
    n: usize,
    bits: NonNull<u64>,
    /// Objects found reachable by the check.
    pub(crate) reached: usize,
    cycle: u64,
}

impl CheckTable {
    /// A table over `spans` (their count is `n`); `None` when the pages for it cannot be had.
    pub(crate) fn build(
        source: &dyn SpanSource,
        n: usize,
        words: usize,
        cycle: u64,
        for_each: impl FnOnce(&mut dyn FnMut(NonNull<Span>)),
    ) -> Option<Self> {
        let entry_bytes = (n * core::mem::size_of::<Entry>()).next_multiple_of(8);
        let bytes = entry_bytes + words * 8;
        let pages = PageCount::covering(bytes.max(1))?;
        let storage = source.alloc_span(SpanClass::new(SizeClass::LARGE, true), pages, 0)?;
        // SAFETY: a fresh span: its pages are mapped and ours.
        let base = unsafe { storage.as_ref() }.base().as_mut_ptr::<u8>();
        let entries = NonNull::new(base.cast::<Entry>())?;
        // SAFETY: entries come first in the storage, the bitmaps right after them, 8-aligned.
        let bits = NonNull::new(unsafe { base.add(entry_bytes) }.cast::<u64>())?;
        // SAFETY: `words` words after the entries lie in the storage.
        unsafe { bits.as_ptr().write_bytes(0, words) };
        let (mut i, mut word) = (0, 0);
        for_each(&mut |span| {
            assert!(i < n, "gc checkmark: more spans than counted");
            // SAFETY: GC spans are ours; read only.
            let s = unsafe { span.as_ref() };
            // SAFETY: `i < n` entries fit in the storage.
            unsafe {
                entries.as_ptr().add(i).write(Entry {
                    base: s.base().as_u64(),
                    word,
                })
            };
            word += s.nelems().div_ceil(64);
            i += 1;
        });
        assert!(i == n && word == words, "gc checkmark: span count changed");
        let mut t = CheckTable {
            storage,
            entries,
            n,
            bits,
            reached: 0,
            cycle,
        };
        t.entries_mut().sort_unstable_by_key(|e| e.base);
        Some(t)
    }

    fn entries_mut(&mut self) -> &mut [Entry] {
        // SAFETY: `n` entries were written in `build`; `&mut self` makes this the only view.
        unsafe { core::slice::from_raw_parts_mut(self.entries.as_ptr(), self.n) }
    }

    /// Sets the check bit of object `idx` of `s`; returns whether it was clear. Panics, naming the object,
    /// if the real mark missed it.
    pub(crate) fn shade(&mut self, s: &Span, idx: usize) -> bool {
        let base = s.base().as_u64();
        let cycle = self.cycle;
        let entries = self.entries_mut();
        let Ok(e) = entries.binary_search_by_key(&base, |e| e.base) else {
            panic!(
                "gc checkmark (cycle {cycle}): span at {base:#x} is not one of this heap's spans"
            );
        };
        let word = entries[e].word + idx / 64;
        // SAFETY: the span's bitmap words lie in the storage (`build` counted `nelems` bits per span).
        let w = unsafe { &mut *self.bits.as_ptr().add(word) };
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
        // SAFETY: the storage span is ours and nothing refers to it after this.
        unsafe { source.free_span(self.storage) };
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
