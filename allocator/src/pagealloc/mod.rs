//! Page allocator core: a bitmap of units plus a radix tree of packed summaries (Go's pageAlloc,
//! mpagealloc.go / mpallocbits.go), generic over what a unit is. The frame allocator uses it with 4 KiB
//! frames as units; the page heap with 8 KiB heap pages.
//!
//! Invariants:
//! - Storage (caller's memory, all `u64`, see `storage.rs`): `[bitmap][level 0]..[level 4]`. The bitmap
//!   has one bit per unit (1 = in use) in chunks of 512 units; level `l` has one [`Sum`] per
//!   `2^(21 - 3l)` units: level 4 (the leaves) one per chunk, level 0 (the root) one per 2^21 units,
//!   `ceil(capacity / 2^21)` of them, scanned linearly. Fan-out is 8 below the root.
//! - Only the prefixes covering the tracked chunks (`ceil(limit / 512)`) are ever read or written:
//!   see [`PageAlloc::backing_needed`]. Entries past them read as [`Sum::ZERO`] (entirely in use).
//! - Every unit at or past `limit` in a tracked chunk has its bit set; such units never become free.
//! - Every summary equals the one recomputed from its children (leaves: from the chunk's bits), with
//!   untracked children counting as entirely in use. `check_invariants` verifies this from scratch.
//! - `search_addr`: every unit below it is in use. Searches start at it; frees lower it.
//! - `free` equals the number of free units.
//!
//! Searching (`find`) is first fit with alignment and exact: it returns the lowest aligned start of
//! a free run of `n` units. It walks the tree like Go's `find`, keeping at each level the free run that
//! reaches the current entry from the left, so runs spanning entries (even root entries) are found
//! from summaries alone, and descends only into entries whose `max` could hold the run internally.
//! Alignment is handled on the way instead of by asking for `n + align - 1` units, which would miss
//! the first fit: a run reaching into an entry is tried at its first aligned start (a later aligned
//! start in the same run only ends later, so it cannot fit if that one does not); an entry is entered
//! only if `max >= n` and it is wider than `align` (otherwise its only aligned start is its base, which
//! the spanning-run check already covered). Regions without a run of `n` are skipped by summaries;
//! what a search can still visit one by one is runs of at least `n` units that admit no aligned start
//! (a few word operations each), never the bitmap at large.

mod bits;
mod storage;
mod sum;
#[cfg(test)]
mod tests;

pub use sum::{Sum, MAX_PACKED};

use core::ptr::NonNull;

use bits::Chunk;
use storage::{entries, Storage, LEAF, LEVEL_LOG};

/// Units per chunk: one leaf summary describes one chunk's 512-bit bitmap.
pub const CHUNK_UNITS: usize = 512;

const FANOUT_LOG: u32 = 3;
const FANOUT: usize = 1 << FANOUT_LOG;

/// `x` rounded up to a multiple of `align` (a power of two), if that fits in a `usize`. A mask rather
/// than `next_multiple_of`, whose division showed up as a fifth of a search's time.
fn align_up(x: usize, align: usize) -> Option<usize> {
    debug_assert!(align.is_power_of_two());
    x.checked_add(align - 1).map(|v| v & !(align - 1))
}

/// State of one search besides its answer.
struct Walk {
    n: usize,
    align: usize,
    from: usize,
    /// Every unit below it is in use: the next `search_addr`.
    first_free_lb: usize,
    /// No entry with a free unit has been passed over yet, so `first_free_lb` can still rise.
    narrowing: bool,
}

/// Bitmap + radix summaries over `capacity` units, stored in caller-provided memory.
pub struct PageAlloc {
    storage: Storage,
    capacity: usize,
    search_addr: usize,
    free: usize,
}

// SAFETY: PageAlloc exclusively owns its storage (a contract of `new`); it has no thread affinity.
unsafe impl Send for PageAlloc {}

impl PageAlloc {
    /// Bytes of storage needed to track `capacity` units (capacity is rounded up to whole chunks).
    pub const fn storage_bytes(capacity: usize) -> usize {
        Storage::bytes(capacity)
    }

    /// Byte ranges (offsets into the storage) that must be backed by memory before [`PageAlloc::grow`]
    /// may extend tracking to `limit` units. Lets a caller back a large storage lazily.
    ///
    /// Rounding: `limit` is rounded up to whole chunks (512 units); each range is the prefix of one
    /// array (bitmap, then levels 0..=4) holding the entries that cover those chunks, in whole `u64`s,
    /// so each range starts and ends 8-byte aligned. Ranges are increasing and disjoint; empty ones are
    /// left out. Rounding them out to pages is the caller's business: backing more is always fine.
    pub fn backing_needed(
        capacity: usize,
        limit: usize,
    ) -> impl Iterator<Item = core::ops::Range<usize>> {
        assert!(
            limit <= capacity,
            "pagealloc: backing for limit {limit} units beyond capacity {capacity}"
        );
        Storage::backing(capacity, limit)
    }

    /// A page allocator over up to `capacity` units, tracking none yet (`limit` 0).
    ///
    /// # Safety
    /// `storage` is 8-byte aligned and exclusively owned by the result for its lifetime; the ranges
    /// `backing_needed(capacity, limit)` are valid for reads and writes whenever `grow(limit)` is called,
    /// and stay so for the rest of the result's lifetime. Their contents before `grow` do not matter.
    pub unsafe fn new(storage: NonNull<u8>, capacity: usize) -> Self {
        Self {
            // SAFETY: `new`'s contract is the same as ours.
            storage: unsafe { Storage::new(storage, capacity) },
            capacity,
            search_addr: 0,
            free: 0,
        }
    }

    /// Extends tracking to units `[0, limit)`. New units start in use: free them to make them available.
    ///
    /// Writes only the chunks and summaries newly covered; summaries above them need no update since
    /// in-use units were already what untracked entries stood for.
    pub fn grow(&mut self, limit: usize) {
        assert!(
            limit <= self.capacity,
            "pagealloc: grow to {limit} units beyond capacity {}",
            self.capacity
        );
        assert!(
            limit >= self.limit(),
            "pagealloc: grow to {limit} units would shrink the tracked limit {}",
            self.limit()
        );
        self.storage.grow(limit);
    }

    /// Units tracked so far.
    pub fn limit(&self) -> usize {
        self.storage.limit()
    }

    /// Units this allocator can ever track.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// First fit: finds `n` free units starting at a multiple of `align` (a power of two), marks them in
    /// use and returns the first one. `None` if no such run exists. Never scans the whole bitmap.
    ///
    /// `n == 0` returns `None`: there is no unit to return, and callers size requests before asking.
    /// An `align` that is not a power of two is a caller bug and panics.
    pub fn alloc(&mut self, n: usize, align: usize) -> Option<usize> {
        assert!(
            align.is_power_of_two(),
            "pagealloc: alignment {align} for {n} units is not a power of two"
        );
        if n == 0 || n > self.free {
            return None;
        }
        if n == 1 {
            // The first free unit is the first fit when it is aligned. Looked for in `search_addr`'s
            // own chunk first (the frame allocator asks for single frames): no descent from the root.
            if let Some(u) = self.first_free_in_search_chunk().filter(|u| u % align == 0) {
                self.set_units(u, 1, true);
                self.free -= 1;
                // Every unit below `u` is in use now: the ones below `search_addr` were, the ones
                // from there to `u` were found so.
                self.search_addr = u + 1;
                return Some(u);
            }
        }
        let mut walk = Walk {
            n,
            align,
            from: self.search_addr,
            first_free_lb: self.search_addr,
            narrowing: true,
        };
        let found = self.search_level(
            0,
            self.search_addr >> LEVEL_LOG[0],
            entries(self.limit(), 0),
            &mut walk,
        );
        let Some(start) = found else {
            self.search_addr = walk.first_free_lb;
            return None;
        };
        self.set_units(start, n, true);
        self.free -= n;
        // Units below the bound were in use; if the run starts there, it is in use up to its end now.
        self.search_addr = if walk.first_free_lb >= start {
            start + n
        } else {
            walk.first_free_lb
        };
        Some(start)
    }

    /// The first free unit at or after `search_addr` in the chunk that holds it (and below `limit`),
    /// if there is one there.
    fn first_free_in_search_chunk(&self) -> Option<usize> {
        let at = self.search_addr;
        if at >= self.limit() {
            return None;
        }
        let base = at / CHUNK_UNITS * CHUNK_UNITS;
        let hi = self.limit().min(base + CHUNK_UNITS);
        bits::first_free(self.chunk(base / CHUNK_UNITS), at - base, hi - base).map(|f| base + f)
    }

    /// Marks `[start, start + n)` in use. Panics naming the unit if one of them is already in use.
    pub fn alloc_range(&mut self, start: usize, n: usize) {
        self.check_range("alloc_range", start, n);
        if let Some(u) = self.first_in_range(start, n, true) {
            panic!("pagealloc: alloc_range of unit {u} already in use (range {start}+{n})");
        }
        self.set_units(start, n, true);
        self.free -= n;
        if (start..start + n).contains(&self.search_addr) {
            self.search_addr = start + n;
        }
    }

    /// Marks `[start, start + n)` free. Panics naming the unit if one of them is already free (double free)
    /// or beyond `limit`.
    pub fn free(&mut self, start: usize, n: usize) {
        self.check_range("free", start, n);
        if let Some(u) = self.first_in_range(start, n, false) {
            panic!("pagealloc: double free of unit {u} (range {start}+{n})");
        }
        self.set_units(start, n, false);
        self.free += n;
        self.search_addr = self.search_addr.min(start);
    }

    /// Whether `unit` is free. Units past `limit` are never free.
    pub fn is_free(&self, unit: usize) -> bool {
        unit < self.limit() && self.bitmap()[unit / 64] >> (unit % 64) & 1 == 0
    }

    /// Free units in total (kept as a counter, O(1)).
    pub fn free_count(&self) -> usize {
        self.free
    }

    /// Whether all of `[start, start + n)` is free (true for `n == 0`; false if it passes `limit`).
    /// For growing a large object in place: follow with `alloc_range(start, n)`.
    pub fn contains_free_run(&self, start: usize, n: usize) -> bool {
        match start.checked_add(n) {
            Some(end) if end <= self.limit() => self.first_in_range(start, n, true).is_none(),
            _ => false,
        }
    }

    /// For a per-CPU page cache (Go's allocToCache): takes every free unit of the first 64-unit aligned
    /// block that has one, at or after `search_addr`. Returns the block's first unit and a bitmap of the
    /// units taken (bit `i` = unit `base + i`, now in use and owned by the caller, who returns each with
    /// `free(base + i, 1)`). `None` if no unit is free.
    pub fn alloc_block64(&mut self) -> Option<(usize, u64)> {
        if self.free == 0 {
            return None;
        }
        let mut walk = Walk {
            n: 1,
            align: 1,
            from: self.search_addr,
            first_free_lb: 0,
            narrowing: false,
        };
        let first = self.search_level(
            0,
            self.search_addr >> LEVEL_LOG[0],
            entries(self.limit(), 0),
            &mut walk,
        )?;
        let base = first & !63;
        let word = &mut self.bitmap_mut()[base / 64];
        let taken = !*word;
        *word = u64::MAX;
        self.update(base, base + 64);
        self.free -= taken.count_ones() as usize;
        // `first` was the lowest free unit, and its whole block is in use now.
        self.search_addr = base + 64;
        Some((base, taken))
    }

    /// Recomputes everything from scratch and panics on the first disagreement with the stored state.
    /// O(limit); for tests and debugging.
    pub fn check_invariants(&self) {
        let chunks = entries(self.limit(), LEAF);
        let mut free = 0;
        for ci in 0..chunks {
            let c = self.chunk(ci);
            let base = ci * CHUNK_UNITS;
            let tracked = self.limit().saturating_sub(base).min(CHUNK_UNITS);
            free += c.iter().map(|w| w.count_zeros() as usize).sum::<usize>();
            if let Some(u) = bits::first_free(c, tracked, CHUNK_UNITS) {
                panic!(
                    "pagealloc: unit {} past limit {} is free",
                    base + u,
                    self.limit()
                );
            }
            let below = self.search_addr.saturating_sub(base).min(tracked);
            if let Some(u) = bits::first_free(c, 0, below) {
                panic!(
                    "pagealloc: unit {} below search_addr {} is free",
                    base + u,
                    self.search_addr
                );
            }
            let (stored, want) = (self.sum(LEAF, ci), bits::summarize(c));
            assert_eq!(stored, want, "pagealloc: stale summary of chunk {ci}");
        }
        assert_eq!(
            free, self.free,
            "pagealloc: free counter disagrees with the bitmap"
        );
        for l in 0..LEAF {
            for p in 0..entries(self.limit(), l) {
                assert_eq!(
                    self.sum(l, p),
                    self.merged(l, p),
                    "pagealloc: stale summary {p} at level {l}"
                );
            }
        }
    }

    // ---- search ----

    /// First aligned start of a free run of `walk.n` units that begins in entries `lo..hi` of level `l`
    /// and, below the root, lies inside them (runs leaving a node are the caller's: they continue in
    /// its siblings).
    fn search_level(&self, l: usize, lo: usize, hi: usize, walk: &mut Walk) -> Option<usize> {
        let size = 1usize << LEVEL_LOG[l];
        let sums = self.level(l);
        // The free run reaching the current entry from the left is [run_start, base). No run reaches
        // entry `lo` from outside: at the root, units below `from` are in use; below, see above.
        let mut run_start = lo << LEVEL_LOG[l];
        for (i, &raw) in sums.iter().enumerate().take(hi).skip(lo) {
            let base = i << LEVEL_LOG[l];
            let s = Sum::from_raw(raw);
            if s.max() == 0 {
                if walk.narrowing {
                    walk.first_free_lb = walk.first_free_lb.max(base + size);
                }
                run_start = base + size;
                continue;
            }
            if walk.narrowing {
                walk.first_free_lb = walk.first_free_lb.max(base);
                // The base itself is free: the bound is exact.
                walk.narrowing = s.start() == 0;
            }
            // A run from the left into this entry's start: its first aligned start is the only one to try.
            if let Some(cand) = align_up(run_start, walk.align) {
                if cand
                    .checked_add(walk.n)
                    .is_some_and(|e| e <= base + s.start())
                {
                    return Some(cand);
                }
            }
            // A run inside this entry. A fully free entry was covered above; in an entry no wider than
            // `align` only the base is aligned, also covered above.
            let descend = walk.align < size && s.max() >= walk.n && s.start() < size;
            if descend {
                let found = if l == LEAF {
                    self.search_chunk(i, walk)
                } else {
                    let child_lo = (i << FANOUT_LOG).max(walk.from >> LEVEL_LOG[l + 1]);
                    let child_hi = ((i + 1) << FANOUT_LOG).min(entries(self.limit(), l + 1));
                    self.search_level(l + 1, child_lo, child_hi, walk)
                };
                if found.is_some() {
                    return found;
                }
            }
            // Entries passed over hold a free unit the bound cannot see past.
            walk.narrowing &= descend;
            if s.start() < size {
                run_start = base + size - s.end();
            }
        }
        None
    }

    /// The descent's last step: first aligned free run of `walk.n` inside chunk `ci`.
    fn search_chunk(&self, ci: usize, walk: &mut Walk) -> Option<usize> {
        let base = ci * CHUNK_UNITS;
        let c = self.chunk(ci);
        let from = walk.from.saturating_sub(base);
        if walk.narrowing {
            if let Some(f) = bits::first_free(c, from, CHUNK_UNITS) {
                walk.first_free_lb = walk.first_free_lb.max(base + f);
            }
            walk.narrowing = false;
        }
        bits::find(c, walk.n, walk.align, from).map(|off| base + off)
    }

    // ---- updates ----

    fn check_range(&self, op: &str, start: usize, n: usize) {
        if start.checked_add(n).is_none_or(|end| end > self.limit()) {
            panic!(
                "pagealloc: {op} of range {start}+{n} beyond limit {}",
                self.limit()
            );
        }
    }

    /// First unit of `[start, start + n)` that is in use (`in_use`) or free (`!in_use`). Range checked.
    fn first_in_range(&self, start: usize, n: usize, in_use: bool) -> Option<usize> {
        let end = start + n;
        let mut at = start;
        while at < end {
            let base = at / CHUNK_UNITS * CHUNK_UNITS;
            let hi = end.min(base + CHUNK_UNITS);
            let c = self.chunk(base / CHUNK_UNITS);
            let hit = if in_use {
                bits::first_in_use(c, at - base, hi - base)
            } else {
                bits::first_free(c, at - base, hi - base)
            };
            if let Some(off) = hit {
                return Some(base + off);
            }
            at = hi;
        }
        None
    }

    /// Marks `[start, start + n)` in use or free and brings the summaries up to date. Range checked.
    fn set_units(&mut self, start: usize, n: usize, in_use: bool) {
        if n == 0 {
            return;
        }
        let end = start + n;
        let mut at = start;
        while at < end {
            let base = at / CHUNK_UNITS * CHUNK_UNITS;
            let hi = end.min(base + CHUNK_UNITS);
            let c = self.chunk_mut(base / CHUNK_UNITS);
            if in_use {
                bits::set_range(c, at - base, hi - base);
            } else {
                bits::clear_range(c, at - base, hi - base);
            }
            at = hi;
        }
        self.update(start, end);
    }

    /// Recomputes the leaves of the chunks overlapping `[start, end)` (non-empty), then their ancestors
    /// level by level, stopping at the first level where no summary changed.
    fn update(&mut self, start: usize, end: usize) {
        let (mut lo, mut hi) = (start / CHUNK_UNITS, (end - 1) / CHUNK_UNITS);
        let mut changed = false;
        for ci in lo..=hi {
            let s = bits::summarize(self.chunk(ci));
            changed |= self.set_sum(LEAF, ci, s);
        }
        for l in (0..LEAF).rev() {
            if !changed {
                return;
            }
            changed = false;
            (lo, hi) = (lo >> FANOUT_LOG, hi >> FANOUT_LOG);
            for p in lo..=hi {
                let s = self.merged(l, p);
                changed |= self.set_sum(l, p, s);
            }
        }
    }

    /// Summary of entry `p` of level `l` (not the leaf level), recomputed from its children (those
    /// past the tracked prefix count as entirely in use).
    fn merged(&self, l: usize, p: usize) -> Sum {
        let children = self.level(l + 1);
        let first = p << FANOUT_LOG;
        let kids: [Sum; FANOUT] = match children.get(first..first + FANOUT) {
            // All eight tracked (every entry but the last of a level): no test per child.
            Some(raw) => core::array::from_fn(|j| Sum::from_raw(raw[j])),
            None => core::array::from_fn(|j| {
                children
                    .get(first + j)
                    .map_or(Sum::ZERO, |&raw| Sum::from_raw(raw))
            }),
        };
        Sum::merge(&kids, 1 << LEVEL_LOG[l + 1])
    }

    // ---- storage ----

    /// Stored summary; untracked entries are entirely in use.
    fn sum(&self, l: usize, i: usize) -> Sum {
        self.level(l)
            .get(i)
            .map_or(Sum::ZERO, |&raw| Sum::from_raw(raw))
    }

    /// Stores a summary of a tracked entry; returns whether it changed.
    fn set_sum(&mut self, l: usize, i: usize, s: Sum) -> bool {
        let slot = &mut self.level_mut(l)[i];
        let changed = *slot != s.raw();
        *slot = s.raw();
        changed
    }

    fn bitmap(&self) -> &[u64] {
        self.storage.words(None)
    }

    fn bitmap_mut(&mut self) -> &mut [u64] {
        self.storage.words_mut(None)
    }

    fn level(&self, l: usize) -> &[u64] {
        self.storage.words(Some(l))
    }

    fn level_mut(&mut self, l: usize) -> &mut [u64] {
        self.storage.words_mut(Some(l))
    }

    fn chunk(&self, ci: usize) -> &Chunk {
        let w = ci * bits::WORDS;
        self.bitmap()[w..w + bits::WORDS]
            .try_into()
            .expect("chunk is 8 words")
    }

    fn chunk_mut(&mut self, ci: usize) -> &mut Chunk {
        let w = ci * bits::WORDS;
        (&mut self.bitmap_mut()[w..w + bits::WORDS])
            .try_into()
            .expect("chunk is 8 words")
    }
}

impl core::fmt::Debug for PageAlloc {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("PageAlloc")
            .field("capacity", &self.capacity)
            .field("limit", &self.limit())
            .field("free", &self.free)
            .field("search_addr", &self.search_addr)
            .finish()
    }
}
