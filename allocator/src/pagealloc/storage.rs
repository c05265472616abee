//! Where the bitmap and the summary levels live in the caller's memory, and the only raw access to it.
//!
//! Invariants:
//! - Layout, in `u64` words: `[bitmap: 8 per chunk][level 0][level 1][level 2][level 3][level 4]`,
//!   level `l` holding `entries(capacity, l)` summaries, one per `2^LEVEL_LOG[l]` units.
//! - `limit` is the tracked limit: the prefix of each array covering `entries(limit, l)` entries (the
//!   bitmap: `entries(limit, LEAF)` chunks) is backed and initialized; nothing past it is ever read
//!   or written, so a caller may back the rest lazily.
//! - Slices handed out borrow `self`, so the borrow checker keeps `&mut` access exclusive.

use core::ops::Range;
use core::ptr::NonNull;

use super::bits::WORDS;

pub(super) const LEVELS: usize = 5;
pub(super) const LEAF: usize = LEVELS - 1;
/// log2 of the units under one entry of each level, root first.
pub(super) const LEVEL_LOG: [u32; LEVELS] = [21, 18, 15, 12, 9];

/// Entries of level `l` that cover units `[0, units)`.
pub(super) const fn entries(units: usize, l: usize) -> usize {
    units.div_ceil(1 << LEVEL_LOG[l])
}

/// Word offsets of the arrays.
#[derive(Clone, Copy, Debug)]
struct Layout {
    level_off: [usize; LEVELS],
    total_words: usize,
}

impl Layout {
    const fn new(capacity: usize) -> Layout {
        let mut off = entries(capacity, LEAF) * WORDS;
        let mut level_off = [0; LEVELS];
        let mut l = 0;
        while l < LEVELS {
            level_off[l] = off;
            off += entries(capacity, l);
            l += 1;
        }
        Layout {
            level_off,
            total_words: off,
        }
    }

    /// Words of the bitmap (`None`) or of level `l` covering units `[0, limit)`.
    fn prefix(&self, array: Option<usize>, limit: usize) -> Range<usize> {
        match array {
            None => 0..entries(limit, LEAF) * WORDS,
            Some(l) => self.level_off[l]..self.level_off[l] + entries(limit, l),
        }
    }
}

/// The caller's memory for one page allocator.
pub(super) struct Storage {
    base: NonNull<u64>,
    layout: Layout,
    limit: usize,
}

impl Storage {
    pub(super) const fn bytes(capacity: usize) -> usize {
        Layout::new(capacity).total_words * 8
    }

    /// Byte ranges to back before tracking `limit` units: see `PageAlloc::backing_needed`.
    pub(super) fn backing(capacity: usize, limit: usize) -> impl Iterator<Item = Range<usize>> {
        let layout = Layout::new(capacity);
        core::iter::once(None)
            .chain((0..LEVELS).map(Some))
            .map(move |array| {
                let words = layout.prefix(array, limit);
                words.start * 8..words.end * 8
            })
            .filter(|r| !r.is_empty())
    }

    /// # Safety
    /// As `PageAlloc::new`: `base` is 8-byte aligned, exclusively owned by the result, and the ranges
    /// `backing(capacity, limit)` are valid for reads and writes from `grow(limit)` on.
    pub(super) unsafe fn new(base: NonNull<u8>, capacity: usize) -> Storage {
        assert!(
            base.as_ptr() as usize % 8 == 0,
            "pagealloc: storage at {:p} for {capacity} units is not 8-byte aligned",
            base
        );
        Storage {
            base: base.cast(),
            layout: Layout::new(capacity),
            limit: 0,
        }
    }

    pub(super) fn limit(&self) -> usize {
        self.limit
    }

    /// Extends the initialized prefixes to `limit` (not below the current one): new bitmap words all
    /// in use, new summaries entirely in use, as untracked entries were read before.
    pub(super) fn grow(&mut self, limit: usize) {
        debug_assert!(limit >= self.limit);
        for array in core::iter::once(None).chain((0..LEVELS).map(Some)) {
            let fresh =
                self.layout.prefix(array, self.limit).end..self.layout.prefix(array, limit).end;
            let value = if array.is_none() { u64::MAX } else { 0 };
            for w in fresh {
                debug_assert!(w < self.layout.total_words);
                // SAFETY: `w` is inside `backing(capacity, limit)`, valid for writes by `new`'s
                // contract. It is written through the raw pointer because its contents may be
                // anything until now, and no reference to it exists (`&mut self`).
                unsafe { self.base.as_ptr().add(w).write(value) };
            }
        }
        self.limit = limit;
    }

    /// The tracked bitmap (`None`) or level `l`.
    pub(super) fn words(&self, array: Option<usize>) -> &[u64] {
        let r = self.layout.prefix(array, self.limit);
        // SAFETY: `r` is inside `backing(capacity, self.limit)`: valid by `new`'s contract and
        // initialized by `grow`. `&self` excludes any `&mut` into the storage for the borrow.
        unsafe { core::slice::from_raw_parts(self.base.as_ptr().add(r.start), r.len()) }
    }

    /// Mutable [`Storage::words`].
    pub(super) fn words_mut(&mut self, array: Option<usize>) -> &mut [u64] {
        let r = self.layout.prefix(array, self.limit);
        // SAFETY: as in `words`; `&mut self` makes this the only reference into the storage.
        unsafe { core::slice::from_raw_parts_mut(self.base.as_ptr().add(r.start), r.len()) }
    }
}
