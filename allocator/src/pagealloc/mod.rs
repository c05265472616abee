//! Page allocator core: a bitmap of units plus a radix tree of packed summaries (Go's pageAlloc,
//! mpagealloc.go / mpallocbits.go), generic over what a unit is. The frame allocator uses it with 4 KiB
//! frames as units; the page heap with 8 KiB heap pages.
//!
//! TODO(pagealloc helper): state the invariants here, as mpagealloc.go does.

use core::ptr::NonNull;

/// Units per chunk: one leaf summary describes one chunk's 512-bit bitmap.
pub const CHUNK_UNITS: usize = 512;

/// Bitmap + radix summaries over `capacity` units, stored in caller-provided memory.
pub struct PageAlloc {
    _storage: NonNull<u8>,
}

// SAFETY: PageAlloc exclusively owns its storage (a contract of `new`); it has no thread affinity.
unsafe impl Send for PageAlloc {}

impl PageAlloc {
    /// Bytes of storage needed to track `capacity` units (capacity is rounded up to whole chunks).
    pub const fn storage_bytes(capacity: usize) -> usize {
        let _ = capacity;
        todo!()
    }

    /// Byte ranges (offsets into the storage) that must be backed by memory before [`PageAlloc::grow`]
    /// may extend tracking to `limit` units. Lets a caller back a large storage lazily.
    pub fn backing_needed(
        capacity: usize,
        limit: usize,
    ) -> impl Iterator<Item = core::ops::Range<usize>> {
        let _ = (capacity, limit);
        core::iter::empty()
    }

    /// A page allocator over up to `capacity` units, tracking none yet (`limit` 0).
    ///
    /// # Safety
    /// `storage` is 8-byte aligned and exclusively owned by the result for its lifetime; the ranges
    /// `backing_needed(capacity, limit)` are valid for reads and writes whenever `grow(limit)` is called.
    pub unsafe fn new(storage: NonNull<u8>, capacity: usize) -> Self {
        let _ = capacity;
        Self { _storage: storage }
    }

    /// Extends tracking to units `[0, limit)`. New units start in use: free them to make them available.
    pub fn grow(&mut self, limit: usize) {
        let _ = limit;
        todo!()
    }

    /// Units tracked so far.
    pub fn limit(&self) -> usize {
        todo!()
    }

    /// First fit: finds `n` free units starting at a multiple of `align` (a power of two), marks them in
    /// use and returns the first one. `None` if no such run exists. Never scans the whole bitmap.
    pub fn alloc(&mut self, n: usize, align: usize) -> Option<usize> {
        let _ = (n, align);
        todo!()
    }

    /// Marks `[start, start + n)` in use. Panics naming the unit if one of them is already in use.
    pub fn alloc_range(&mut self, start: usize, n: usize) {
        let _ = (start, n);
        todo!()
    }

    /// Marks `[start, start + n)` free. Panics naming the unit if one of them is already free (double free)
    /// or beyond `limit`.
    pub fn free(&mut self, start: usize, n: usize) {
        let _ = (start, n);
        todo!()
    }

    pub fn is_free(&self, unit: usize) -> bool {
        let _ = unit;
        todo!()
    }

    /// Free units in total (kept as a counter, O(1)).
    pub fn free_count(&self) -> usize {
        todo!()
    }
}
