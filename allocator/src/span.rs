//! Spans (Go's mspan): a run of heap pages holding either `nelems` equal objects of one size class or
//! one large object, with the bitmaps that say which objects are allocated and which the collector
//! marked.
//!
//! A span is pure bookkeeping: it computes object addresses but never reads or writes object memory,
//! so it works the same on a fake base address (as the tests use) as on real pages.
//!
//! Bitmap storage. Both bitmaps have one bit per object. A span of at most 64 objects (every class of
//! 128 B and more, and large spans) keeps them inline (`[u64; 2]`, 16 B). Only classes below 128 B
//! (73 to 1024 objects: 2 to 16 words per bitmap) use caller-provided storage: `2 * bitmap_words(n)`
//! words, the alloc bitmap first, then the mark bitmap. Inline `[u64; 16]` bitmaps would cost 256 B
//! per span for every span; fully external ones would make the page heap allocate metadata for every
//! span. The split costs one well-predicted branch per bitmap access.
//!
//! Invariants:
//! - Objects are `0..nelems`; object `i` is at `base + i * elem_size`. Bits at `nelems` and above are 0
//!   in both bitmaps.
//! - The alloc bitmap is the truth: bit `i` is set iff object `i` is allocated (handed out by
//!   `next_free`/`take_free`, or kept by `sweep`), and `alloc_count` is its population count.
//! - Every object below `free_index` is allocated (freeing below it moves it back).
//! - `alloc_cache` is either 0, or exactly the free objects from `free_index` to the end of
//!   `free_index`'s bitmap word, bit `k` standing for object `free_index + k`. 0 may be stale (after
//!   the last free object of a word was taken, the next word is loaded lazily): `refill` re-reads.
//! - Mark bits are a subset of alloc bits: the collector marks only allocated objects, and freeing an
//!   object clears its mark.
//! - External bitmap storage is used by this span alone from `init_small` until the span is dropped or
//!   overwritten (the `init_small` contract), which is what makes the slices in `bits`/`bits_mut` sound.

mod badfree;
mod list;

pub use badfree::{BadFree, BadFreeReason};
pub use list::SpanList;

use core::ptr::NonNull;

use crate::addr::{PageCount, VirtAddr, PAGE_SIZE};
use crate::sizeclass::{SizeClass, SpanClass};

/// Bits per bitmap word.
const WORD_BITS: usize = 64;

/// What a span's pages are used for (Go's mSpanState).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SpanState {
    /// Not in use: the struct is on a free list or about to be released with its pages.
    Free,
    /// Holds heap objects (small objects of one class, or one large object).
    InUse,
    /// Pages handed out whole for the allocator's own use; never swept, never scanned.
    Manual,
}

/// A span of heap pages; see the module documentation for its invariants.
#[derive(Debug)]
pub struct Span {
    /// Intrusive links, owned by the [`SpanList`] the span is in (both `None` when in none).
    pub(crate) next: Option<NonNull<Span>>,
    pub(crate) prev: Option<NonNull<Span>>,
    base: VirtAddr,
    npages: PageCount,
    elem_size: usize,
    alloc_cache: u64,
    /// Alloc then mark bitmap, `2 * bitmap_words(nelems)` words, when the span has more than 64 objects.
    ext_bits: Option<NonNull<u64>>,
    /// `[alloc, mark]` when the span has at most 64 objects.
    inline_bits: [u64; 2],
    magic: u32,
    /// Sweep generation (Go's meaning). With `h` the heap's sweepgen, which grows by 2 per collection:
    /// `h - 2`: needs sweeping; `h - 1`: being swept; `h`: swept, ready; `h + 1`: cached by a CPU
    /// before sweeping began (still needs sweeping); `h + 3`: swept and then cached. Compare with
    /// wrapping arithmetic.
    pub(crate) sweepgen: u32,
    nelems: u16,
    free_index: u16,
    alloc_count: u16,
    class: SpanClass,
    pub(crate) state: SpanState,
    /// The pages may hold old data (false when known zero, e.g. fresh frames).
    pub(crate) needzero: bool,
    /// Which garbage-collected heap holds the span's objects: 0 for none (the explicit heap, or a span
    /// the collector uses for its own metadata), else that `GcHeap`'s id. Set by the collector when it
    /// takes a span for objects and cleared when it gives it back; its marker refuses any address whose
    /// span does not carry its own id (gc/mark.rs).
    #[cfg_attr(not(any(test, feature = "gc")), allow(dead_code))]
    pub(crate) owner: u32,
    /// The collector's concurrent-mark epoch in which this span entered its mark's side table, or was
    /// taken (gc/conc.rs, "Building the table"); 0 for a span made outside one. Collector spans only.
    #[cfg_attr(not(any(test, feature = "gc")), allow(dead_code))]
    pub(crate) conc_epoch: u32,
    /// A collector span some object with drop glue was allocated in since the collector took it (or
    /// since it was last swept empty): its sweep must read its dead objects' headers to finalize them.
    /// False: none of its objects has a finalizer, and the sweep never touches the dead ones (for a
    /// pointer-rich type without `Drop`, that walk was most of the sweep's time). Collector spans only.
    #[cfg_attr(not(any(test, feature = "gc")), allow(dead_code))]
    pub(crate) finalizers: bool,
    /// A large span of the explicit heap whose object ends in the first frame of its last page: that
    /// page's second frame is not mapped (pageheap.rs, "Trimmed tails"). Always false for other spans.
    pub(crate) tail_unmapped: bool,
    /// A large span of the explicit heap whose object ends in the first frame of its last page, so that
    /// page's second frame holds none of it (`tail_unmapped` implies it): what an allocation about to
    /// fail may unmap (pageheap.rs, "Trimmed tails"). Set by the page heap when the object is allocated
    /// or resized; always false for other spans.
    pub(crate) tail_spare: bool,
    /// A large span only: 0 while its object's layout is a large one (of `npages` pages), else the
    /// small size class of the layout it was reallocated to in place (heap/mod.rs, `realloc_large`),
    /// which its next `dealloc` or `realloc` must name. Always 0 in a small span.
    small_layout: u8,
}

// SAFETY: a Span owns its external bitmap storage exclusively (the `init_small` contract), like a Box,
// so moving it to another CPU moves that ownership too. `next`/`prev` are plain values to the span;
// only `SpanList`'s methods follow them, under that list's own contract.
unsafe impl Send for Span {}

impl Span {
    /// Words each bitmap of a span of `nelems` objects needs in caller storage: 0 when the bitmaps fit
    /// inline (at most 64 objects). The storage holds two bitmaps: `2 * bitmap_words(nelems)` words.
    pub const fn bitmap_words(nelems: usize) -> usize {
        if nelems <= WORD_BITS {
            0
        } else {
            nelems.div_ceil(WORD_BITS)
        }
    }

    /// Words of caller storage (both bitmaps) a span of `class` needs; 0 for none.
    pub const fn bitmap_words_for(class: SpanClass) -> usize {
        2 * Self::bitmap_words(class.size_class().objects_per_span())
    }

    /// A span of small objects of `class` at `base` (page-aligned), all free.
    ///
    /// `bits` is the bitmap storage when [`Span::bitmap_words_for`] is not 0, and is ignored otherwise.
    /// Panics (naming the address and class) if `class` is large, `base` is not page-aligned or the
    /// needed storage is missing.
    ///
    /// # Safety
    /// If used, `bits` must be valid for reads and writes of `bitmap_words_for(class)` `u64`s (it may
    /// be uninitialised: it is zeroed here) and must not be accessed other than through the returned
    /// span until that span is dropped or overwritten.
    pub unsafe fn init_small(
        base: VirtAddr,
        class: SpanClass,
        needzero: bool,
        bits: Option<NonNull<u64>>,
    ) -> Span {
        let c = class.size_class();
        assert!(
            !c.is_large(),
            "span at {:#x}: init_small with large class {class:?}",
            base.as_u64()
        );
        assert!(
            base.is_aligned(PAGE_SIZE as u64),
            "span of size class {} at {:#x}: base not {PAGE_SIZE}-aligned",
            c.get(),
            base.as_u64()
        );
        let nelems = c.objects_per_span();
        let words = Self::bitmap_words(nelems);
        let ext_bits = if words == 0 {
            None
        } else {
            let Some(p) = bits else {
                panic!(
                    "span of size class {} ({} B) at {:#x}: needs {} words of bitmap storage, got none",
                    c.get(),
                    c.size(),
                    base.as_u64(),
                    2 * words
                );
            };
            // SAFETY: the caller guarantees `p` is valid for writes of `2 * words` u64s.
            unsafe { p.as_ptr().write_bytes(0, 2 * words) };
            Some(p)
        };
        let mut span = Span {
            next: None,
            prev: None,
            base,
            npages: c.pages(),
            elem_size: c.size(),
            alloc_cache: 0,
            ext_bits,
            inline_bits: [0; 2],
            magic: c.magic(),
            sweepgen: 0,
            nelems: nelems as u16,
            free_index: 0,
            alloc_count: 0,
            class,
            state: SpanState::InUse,
            needzero,
            owner: 0,
            conc_epoch: 0,
            finalizers: false,
            tail_unmapped: false,
            tail_spare: false,
            small_layout: 0,
        };
        span.alloc_cache = span.free_mask_from(0);
        span
    }

    /// A span holding one large object (allocated) of `npages` pages at `base` (page-aligned).
    /// `needzero` starts true (contents unknown); the page heap clears it when it knows better.
    pub fn init_large(base: VirtAddr, npages: PageCount) -> Span {
        Self::large(base, npages, SpanClass::new(SizeClass::LARGE, false), true)
    }

    /// Either kind of span, as the page heap builds them: small when `class` is, else large.
    ///
    /// # Safety
    /// As for [`Span::init_small`] when `class` is small; nothing otherwise.
    pub unsafe fn new(
        base: VirtAddr,
        npages: PageCount,
        class: SpanClass,
        needzero: bool,
        bits: Option<NonNull<u64>>,
    ) -> Span {
        if class.is_large() {
            return Self::large(base, npages, class, needzero);
        }
        assert_eq!(
            npages,
            class.size_class().pages(),
            "span at {:#x}: wrong page count for size class {}",
            base.as_u64(),
            class.size_class().get()
        );
        // SAFETY: forwarded from the caller.
        unsafe { Self::init_small(base, class, needzero, bits) }
    }

    fn large(base: VirtAddr, npages: PageCount, class: SpanClass, needzero: bool) -> Span {
        assert!(
            npages.0 >= 1 && base.is_aligned(PAGE_SIZE as u64),
            "large span at {:#x} of {npages}: needs >= 1 page and a page-aligned base",
            base.as_u64()
        );
        Span {
            next: None,
            prev: None,
            base,
            npages,
            elem_size: npages.bytes(),
            alloc_cache: 0,
            ext_bits: None,
            inline_bits: [1, 0],
            // Every offset inside the one object maps to index 0.
            magic: 0,
            sweepgen: 0,
            nelems: 1,
            free_index: 1,
            alloc_count: 1,
            class,
            state: SpanState::InUse,
            needzero,
            owner: 0,
            conc_epoch: 0,
            finalizers: false,
            tail_unmapped: false,
            tail_spare: false,
            small_layout: 0,
        }
    }

    pub fn base(&self) -> VirtAddr {
        self.base
    }
    pub fn npages(&self) -> PageCount {
        self.npages
    }
    pub fn class(&self) -> SpanClass {
        self.class
    }
    pub fn elem_size(&self) -> usize {
        self.elem_size
    }
    pub fn nelems(&self) -> usize {
        self.nelems as usize
    }
    /// The object index's reciprocal: `(off * magic) >> 32 == off / elem_size` for every offset in
    /// the span (`SizeClass::magic`); 0 for a large span, whose one object has index 0. (Read by the
    /// collector's side table only: compiled where the `gc` module is.)
    #[cfg(any(test, feature = "gc"))]
    pub(crate) fn magic(&self) -> u32 {
        self.magic
    }
    pub fn alloc_count(&self) -> usize {
        self.alloc_count as usize
    }
    pub fn free_index(&self) -> usize {
        self.free_index as usize
    }
    pub fn state(&self) -> SpanState {
        self.state
    }
    pub fn sweepgen(&self) -> u32 {
        self.sweepgen
    }
    pub fn needzero(&self) -> bool {
        self.needzero
    }
    pub fn is_full(&self) -> bool {
        self.alloc_count == self.nelems
    }
    pub fn is_empty(&self) -> bool {
        self.alloc_count == 0
    }
    /// Whether `addr` lies in the span's pages.
    pub fn contains(&self, addr: VirtAddr) -> bool {
        addr.as_u64().wrapping_sub(self.base.as_u64()) < self.npages.bytes() as u64
    }

    /// The external bitmap storage (to give back when the span is released), if any.
    pub fn bitmap_storage(&self) -> Option<NonNull<u64>> {
        self.ext_bits
    }

    /// Resizes a large span in place (the page heap grew or shrank it).
    pub fn set_npages(&mut self, npages: PageCount) {
        assert!(
            self.class.is_large() && npages.0 >= 1,
            "span at {:#x}: set_npages({npages}) needs a large span and >= 1 page",
            self.base.as_u64()
        );
        self.npages = npages;
        self.elem_size = npages.bytes();
    }

    /// A large span's object: the small size class its layout has since an in-place `realloc` below
    /// 32 KiB, or `None` while its layout is a large one (always `None` for a small span).
    pub fn small_layout(&self) -> Option<SizeClass> {
        SizeClass::new(self.small_layout).filter(|c| !c.is_large())
    }

    /// Records the layout a large span's object now has: a small class, or `None` for a large one.
    pub fn set_small_layout(&mut self, class: Option<SizeClass>) {
        assert!(
            self.class.is_large(),
            "span at {:#x}: set_small_layout needs a large span",
            self.base.as_u64()
        );
        self.small_layout = class.map_or(0, |c| c.get());
    }

    /// Address of object `idx`.
    #[inline]
    pub fn object_addr(&self, idx: usize) -> VirtAddr {
        debug_assert!(idx < self.nelems());
        self.base + (idx * self.elem_size) as u64
    }

    /// Index of the object containing `addr`, or `None` if `addr` is not in any object of this span.
    #[inline]
    pub fn object_index(&self, addr: VirtAddr) -> Option<usize> {
        let off = addr.as_u64().wrapping_sub(self.base.as_u64());
        if off >= self.nelems as u64 * self.elem_size as u64 {
            return None;
        }
        // Small spans: off < 10 pages, magic < 2^32, so the product fits; large: magic is 0.
        Some(((off * self.magic as u64) >> 32) as usize)
    }

    /// Allocates the lowest free object and returns its index (Go's nextFreeFast + nextFreeIndex).
    #[inline]
    pub fn next_free(&mut self) -> Option<usize> {
        if self.alloc_cache == 0 && !self.refill() {
            return None;
        }
        let bit = self.alloc_cache.trailing_zeros() as usize;
        let idx = self.free_index as usize + bit;
        // Two shifts: `bit + 1` may be 64.
        self.alloc_cache = (self.alloc_cache >> bit) >> 1;
        self.free_index = idx as u16 + 1;
        self.alloc_count += 1;
        self.bits_mut().0[idx / WORD_BITS] |= 1 << (idx % WORD_BITS);
        Some(idx)
    }

    /// Allocates up to `out.len()` objects, lowest first, writes their addresses to `out` and returns
    /// how many. Same result as repeated `next_free`, but one bitmap write per word.
    pub fn take_free(&mut self, out: &mut [VirtAddr]) -> usize {
        let mut n = 0;
        while n < out.len() {
            if self.alloc_cache == 0 && !self.refill() {
                break;
            }
            let from = self.free_index as usize;
            let mut cache = self.alloc_cache;
            let mut taken = 0u64;
            while cache != 0 && n < out.len() {
                let bit = cache.trailing_zeros();
                taken |= 1 << bit;
                cache &= cache - 1;
                out[n] = self.object_addr(from + bit as usize);
                n += 1;
            }
            // `cache` now holds only bits above the highest taken one.
            let high = (WORD_BITS - 1) as u32 - taken.leading_zeros();
            self.alloc_cache = (cache >> high) >> 1;
            self.free_index = (from + high as usize + 1) as u16;
            self.alloc_count += taken.count_ones() as u16;
            // `from`'s word holds all taken bits: the cache never reaches past it.
            self.bits_mut().0[from / WORD_BITS] |= taken << (from % WORD_BITS);
        }
        n
    }

    /// Frees the object at `addr`, refusing addresses that are not the start of an allocated object.
    pub fn free_object(&mut self, addr: VirtAddr) -> Result<(), BadFree> {
        let bad = |reason| BadFree {
            addr,
            span_base: self.base,
            class: self.class,
            elem_size: self.elem_size,
            reason,
        };
        let idx = self
            .object_index(addr)
            .ok_or_else(|| bad(BadFreeReason::NotInSpan))?;
        let object = self.object_addr(idx);
        if object != addr {
            return Err(bad(BadFreeReason::Interior { object }));
        }
        if !self.is_allocated(idx) {
            return Err(bad(BadFreeReason::AlreadyFree));
        }
        let (w, bit) = (idx / WORD_BITS, 1u64 << (idx % WORD_BITS));
        let (alloc, mark) = self.bits_mut();
        alloc[w] &= !bit;
        mark[w] &= !bit;
        self.alloc_count -= 1;
        if idx < self.free_index as usize {
            self.free_index = idx as u16;
        }
        if w == self.free_index as usize / WORD_BITS {
            self.alloc_cache = self.free_mask_from(self.free_index as usize);
        }
        Ok(())
    }

    /// Whether object `idx` is allocated.
    pub fn is_allocated(&self, idx: usize) -> bool {
        self.check_index(idx);
        self.bits().0[idx / WORD_BITS] & (1 << (idx % WORD_BITS)) != 0
    }

    /// Marks allocated object `idx` reachable; returns whether it was not marked before.
    pub fn mark(&mut self, idx: usize) -> bool {
        self.check_index(idx);
        debug_assert!(
            self.is_allocated(idx),
            "span at {:#x}: marking free object {idx}",
            self.base.as_u64()
        );
        let (w, bit) = (idx / WORD_BITS, 1u64 << (idx % WORD_BITS));
        let mark = &mut self.bits_mut().1[w];
        let newly = *mark & bit == 0;
        *mark |= bit;
        newly
    }

    /// Mark bitmap word `w` (objects `64 * w ..`): copied into a concurrent mark's side table, gc/conc.rs.
    #[cfg(any(test, feature = "gc"))]
    pub(crate) fn mark_word(&self, w: usize) -> u64 {
        self.bits().1[w]
    }

    /// ORs `bits` (objects of mark word `w`, all allocated) into the mark bits; returns the bits that were
    /// clear (a concurrent mark's side bitmap merged at termination, gc/conc.rs).
    #[cfg(any(test, feature = "gc"))]
    pub(crate) fn or_marks(&mut self, w: usize, bits: u64) -> u64 {
        let (alloc, mark) = self.bits_mut();
        debug_assert_eq!(
            bits & !alloc[w],
            0,
            "span at {:#x}: marking free objects",
            self.base.as_u64()
        );
        let new = bits & !mark[w];
        mark[w] |= bits;
        new
    }

    /// Clears object `idx`'s mark; returns whether it was marked. (The explicit heap's full checks use the
    /// mark bits as "handed to a user" bits: that heap never collects.)
    pub fn unmark(&mut self, idx: usize) -> bool {
        self.check_index(idx);
        let (w, bit) = (idx / WORD_BITS, 1u64 << (idx % WORD_BITS));
        let mark = &mut self.bits_mut().1[w];
        let was = *mark & bit != 0;
        *mark &= !bit;
        was
    }

    /// Allocated objects the collector did not mark (what `sweep` will free), lowest first: one pass over
    /// the bitmaps, so a sweeper can finalize the dead without testing every object.
    pub fn unmarked_objects(&self) -> impl Iterator<Item = usize> + '_ {
        let (alloc, mark) = self.bits();
        alloc.iter().zip(mark).enumerate().flat_map(|(w, (a, m))| {
            let mut dead = a & !m;
            core::iter::from_fn(move || {
                if dead == 0 {
                    return None;
                }
                let bit = dead.trailing_zeros() as usize;
                dead &= dead - 1;
                Some(w * WORD_BITS + bit)
            })
        })
    }

    pub fn is_marked(&self, idx: usize) -> bool {
        self.check_index(idx);
        self.bits().1[idx / WORD_BITS] & (1 << (idx % WORD_BITS)) != 0
    }

    /// Ends a collection for this span: marked objects stay allocated, unmarked ones become free (their
    /// memory untouched), all marks are cleared. Returns how many objects were freed.
    pub fn sweep(&mut self) -> usize {
        let (alloc, mark) = self.bits_mut();
        let (mut freed, mut live) = (0, 0);
        for (a, m) in alloc.iter_mut().zip(mark.iter_mut()) {
            debug_assert_eq!(*m & !*a, 0, "mark bits outside alloc bits");
            freed += (*a & !*m).count_ones() as usize;
            live += m.count_ones() as u16;
            *a = *m;
            *m = 0;
        }
        self.alloc_count = live;
        self.free_index = 0;
        self.alloc_cache = self.free_mask_from(0);
        freed
    }

    fn check_index(&self, idx: usize) {
        assert!(
            idx < self.nelems(),
            "span at {:#x}: object index {idx} out of range ({} objects of {} B)",
            self.base.as_u64(),
            self.nelems,
            self.elem_size
        );
    }

    /// Loads `alloc_cache` from the bitmap, from `free_index` on; false (and `free_index = nelems`) if
    /// no object is free. Kept out of line so `next_free` stays small.
    #[inline(never)]
    fn refill(&mut self) -> bool {
        let nelems = self.nelems as usize;
        // A zero cache may be stale for `free_index`'s own word, so start there.
        let mut from = self.free_index as usize;
        while from < nelems {
            let mask = self.free_mask_from(from);
            if mask != 0 {
                self.free_index = from as u16;
                self.alloc_cache = mask;
                return true;
            }
            from = (from / WORD_BITS + 1) * WORD_BITS;
        }
        self.free_index = nelems as u16;
        self.alloc_cache = 0;
        false
    }

    /// Free objects from `from` to the end of its word, bit 0 standing for `from`.
    fn free_mask_from(&self, from: usize) -> u64 {
        let nelems = self.nelems as usize;
        if from >= nelems {
            return 0;
        }
        let w = from / WORD_BITS;
        let mut free = !self.bits().0[w];
        let in_word = nelems - w * WORD_BITS;
        if in_word < WORD_BITS {
            free &= (1 << in_word) - 1;
        }
        free >> (from % WORD_BITS)
    }

    /// The alloc and mark bitmaps.
    #[inline]
    fn bits(&self) -> (&[u64], &[u64]) {
        match self.ext_bits {
            Some(p) => {
                let words = Self::bitmap_words(self.nelems as usize);
                // SAFETY: `p` holds `2 * words` initialised u64s used by this span alone (init_small's
                // contract; zeroed there); `&self` keeps `bits_mut` from running meanwhile.
                let all = unsafe { core::slice::from_raw_parts(p.as_ptr(), 2 * words) };
                all.split_at(words)
            }
            None => {
                let [alloc, mark] = &self.inline_bits;
                (core::slice::from_ref(alloc), core::slice::from_ref(mark))
            }
        }
    }

    #[inline]
    fn bits_mut(&mut self) -> (&mut [u64], &mut [u64]) {
        match self.ext_bits {
            Some(p) => {
                let words = Self::bitmap_words(self.nelems as usize);
                // SAFETY: as in `bits`; `&mut self` makes this the only live view of the storage.
                let all = unsafe { core::slice::from_raw_parts_mut(p.as_ptr(), 2 * words) };
                all.split_at_mut(words)
            }
            None => {
                let [alloc, mark] = &mut self.inline_bits;
                (core::slice::from_mut(alloc), core::slice::from_mut(mark))
            }
        }
    }
}

/// A read-only view of a span for markers on several CPUs at once (gc/par.rs): the fields that do not
/// change while a mark runs with the mutator stopped, read once through a raw pointer, and the mark
/// bitmap set with atomic read-modify-writes. No reference to the `Span` is made, so other CPUs may set
/// mark bits of the same span meanwhile.
#[cfg(any(test, feature = "gc"))]
#[derive(Clone, Copy)]
pub(crate) struct SharedSpan {
    base: VirtAddr,
    elem_size: usize,
    nelems: u16,
    magic: u32,
    class: SpanClass,
    alloc: *const u64,
    mark: *mut u64,
}

#[cfg(any(test, feature = "gc"))]
impl SharedSpan {
    /// The view of `span`.
    ///
    /// # Safety
    /// `span` points at a live, initialized span, and until the view's last use nothing writes the span
    /// or its bitmaps except [`SharedSpan::mark`] (of this or another view).
    #[inline]
    pub(crate) unsafe fn new(span: NonNull<Span>) -> Self {
        let p = span.as_ptr();
        // SAFETY: (all reads) `p` is a live initialized span that nobody writes meanwhile (contract);
        // field reads through the raw pointer make no reference to the span.
        unsafe {
            let nelems = core::ptr::addr_of!((*p).nelems).read();
            let (alloc, mark) = match core::ptr::addr_of!((*p).ext_bits).read() {
                Some(bits) => {
                    let words = Span::bitmap_words(nelems as usize);
                    (bits.as_ptr().cast_const(), bits.as_ptr().add(words))
                }
                None => {
                    let inline = core::ptr::addr_of_mut!((*p).inline_bits).cast::<u64>();
                    (inline.cast_const(), inline.add(1))
                }
            };
            SharedSpan {
                base: core::ptr::addr_of!((*p).base).read(),
                elem_size: core::ptr::addr_of!((*p).elem_size).read(),
                nelems,
                magic: core::ptr::addr_of!((*p).magic).read(),
                class: core::ptr::addr_of!((*p).class).read(),
                alloc,
                mark,
            }
        }
    }

    pub(crate) fn class(&self) -> SpanClass {
        self.class
    }

    pub(crate) fn elem_size(&self) -> usize {
        self.elem_size
    }

    /// As [`Span::object_index`].
    #[inline]
    pub(crate) fn object_index(&self, addr: VirtAddr) -> Option<usize> {
        let off = addr.as_u64().wrapping_sub(self.base.as_u64());
        if off >= self.nelems as u64 * self.elem_size as u64 {
            return None;
        }
        Some(((off * self.magic as u64) >> 32) as usize)
    }

    /// As [`Span::object_addr`].
    #[inline]
    pub(crate) fn object_addr(&self, idx: usize) -> VirtAddr {
        debug_assert!(idx < self.nelems as usize);
        self.base + (idx * self.elem_size) as u64
    }

    /// As [`Span::is_allocated`]; `idx` must be below the span's object count (`object_index` made it).
    #[inline]
    pub(crate) fn is_allocated(&self, idx: usize) -> bool {
        assert!(idx < self.nelems as usize);
        // SAFETY: the alloc bitmap has a word for every 64 objects; nobody writes it meanwhile (`new`).
        let word = unsafe { self.alloc.add(idx / WORD_BITS).read() };
        word & (1 << (idx % WORD_BITS)) != 0
    }

    /// Sets object `idx`'s mark bit atomically; returns whether it was clear (exactly one of several
    /// CPUs marking the same object at once gets `true`).
    #[inline]
    pub(crate) fn mark(&self, idx: usize) -> bool {
        assert!(idx < self.nelems as usize);
        let bit = 1u64 << (idx % WORD_BITS);
        // SAFETY: the mark word exists (as above), is 8-aligned (u64 storage: the span struct's field or
        // the page-heap's bitmap words), and during the view's life is accessed only atomically (`new`).
        let word =
            unsafe { core::sync::atomic::AtomicU64::from_ptr(self.mark.add(idx / WORD_BITS)) };
        word.fetch_or(bit, core::sync::atomic::Ordering::Relaxed) & bit == 0
    }
}

#[cfg(test)]
mod tests;
