//! Size classes (Go's sizeclasses.go), generated at compile time by the rule of Go's mksizeclasses.go.
//!
//! A small request (<= 32 KiB) is rounded up to one of 67 object sizes; every span of a class holds
//! `objects_per_span` objects of that size in `pages` heap pages. Class 0 stands for "large": one object
//! in a span of its own, straight from the page heap.
//!
//! The rule (see `generate`): candidate sizes step by 8 B, by 16 B from 32 B, by size/8 from 128 B and
//! by 256 B from 2 KiB (each step change happens at a power of two), so rounding a request up wastes at
//! most about 1/8. A class's span is the fewest pages whose tail (the bytes after the last whole object)
//! is at most 1/8 of the span. A candidate that gets the same page count and object count as the class
//! before it replaces that class (same memory use, bigger objects). Last, every class is widened to the
//! biggest multiple of 128 B that still fits the same number of objects in its span.
//!
//! Invariants (checked at compile time where cheap, the rest by the tests below):
//! - Exactly 67 small classes; sizes strictly increase, are multiples of 8 (of 16 from 32 B, of 128 B
//!   above 1 KiB) and the last is 32 KiB. The table equals the one Go publishes.
//! - For every class, `pages * PAGE_SIZE % size <= pages * PAGE_SIZE / 8`.
//! - `for_size(n)` is the smallest class with `size >= n`; `for_layout(n, a)` the smallest such class
//!   whose size is a multiple of `a`: spans start 8 KiB-aligned, so then every object is `a`-aligned.
//! - `(off * magic) >> 32 == off / size` for every offset `off` in `0..=pages * PAGE_SIZE`.

use crate::addr::{PageCount, PAGE_SIZE};

/// Number of size classes including class 0 (large).
pub const NUM_SIZE_CLASSES: usize = 68;
/// Number of span classes: every size class in a scan and a noscan flavour.
pub const NUM_SPAN_CLASSES: usize = NUM_SIZE_CLASSES * 2;
/// Largest size served by a size class; bigger objects are large.
pub const MAX_SMALL_SIZE: usize = 32 * 1024;
/// Largest alignment a size class can honour (spans are only page-aligned).
pub const MAX_SMALL_ALIGN: usize = PAGE_SIZE;

/// Smallest object alignment the allocator guarantees: every class size is a multiple of it.
const MIN_ALIGN: usize = 8;
/// Lookup granularity up to `SMALL_SIZE_MAX` (Go's smallSizeDiv).
const SMALL_SIZE_DIV: usize = 8;
/// Boundary between the two lookup tables (Go's smallSizeMax).
const SMALL_SIZE_MAX: usize = 1024;
/// Lookup granularity above `SMALL_SIZE_MAX` (Go's largeSizeDiv); every class boundary up there is a
/// multiple of it, which is why the widening step rounds down to it.
const LARGE_SIZE_DIV: usize = 128;
/// Rows of the alignment table: alignments 16, 32, ..., 8192 (2^4 ..= 2^13).
const ALIGN_ROWS: usize = (MAX_SMALL_ALIGN.trailing_zeros() - MIN_ALIGN.trailing_zeros()) as usize;

struct Tables {
    size: [u16; NUM_SIZE_CLASSES],
    pages: [u8; NUM_SIZE_CLASSES],
    objects: [u16; NUM_SIZE_CLASSES],
    magic: [u32; NUM_SIZE_CLASSES],
    /// What `dealloc` needs to tell an object's start, in one place: see [`SizeClass::is_object_start`].
    starts: [Starts; NUM_SIZE_CLASSES],
    /// Class for sizes `0..=SMALL_SIZE_MAX`, indexed by `ceil(size / 8)`.
    by8: [u8; SMALL_SIZE_MAX / SMALL_SIZE_DIV + 1],
    /// Class for sizes `SMALL_SIZE_MAX+1..=MAX_SMALL_SIZE`, indexed by `ceil((size - 1024) / 128)`.
    by128: [u8; (MAX_SMALL_SIZE - SMALL_SIZE_MAX) / LARGE_SIZE_DIV + 1],
    /// `aligned[r][c]`: the smallest class `>= c` whose size is a multiple of `16 << r` (0: none).
    aligned: [[u8; NUM_SIZE_CLASSES]; ALIGN_ROWS],
}

/// Runs mksizeclasses.go's rule; panics (at compile time) if the outcome stops looking like Go's.
const fn generate() -> Tables {
    let mut t = Tables {
        size: [0; NUM_SIZE_CLASSES],
        pages: [0; NUM_SIZE_CLASSES],
        objects: [0; NUM_SIZE_CLASSES],
        magic: [0; NUM_SIZE_CLASSES],
        starts: [Starts {
            inverse: 0,
            threshold: 0,
            mark: 0,
        }; NUM_SIZE_CLASSES],
        by8: [0; SMALL_SIZE_MAX / SMALL_SIZE_DIV + 1],
        by128: [0; (MAX_SMALL_SIZE - SMALL_SIZE_MAX) / LARGE_SIZE_DIV + 1],
        aligned: [[0; NUM_SIZE_CLASSES]; ALIGN_ROWS],
    };

    // Candidates and page counts; merge neighbours that use memory identically.
    let mut n = 1; // class 0 is "large" and keeps zeros everywhere
    let mut step = MIN_ALIGN;
    let mut size = MIN_ALIGN;
    while size <= MAX_SMALL_SIZE {
        if size.is_power_of_two() {
            if size >= 2048 {
                step = 256;
            } else if size >= 128 {
                step = size / 8;
            } else if size >= 32 {
                // Go's heap bitmaps want objects of 32 B and more 16-byte aligned.
                step = 16;
            }
        }
        let mut span = PAGE_SIZE;
        while span % size > span / 8 {
            span += PAGE_SIZE;
        }
        let pages = span / PAGE_SIZE;
        let prev = n - 1;
        if n > 1 && pages == t.pages[prev] as usize && span / size == span / t.size[prev] as usize {
            t.size[prev] = size as u16;
        } else {
            assert!(
                n < NUM_SIZE_CLASSES,
                "size class rule yields more than 67 classes"
            );
            t.size[n] = size as u16;
            t.pages[n] = pages as u8;
            n += 1;
        }
        size += step;
    }
    assert!(
        n == NUM_SIZE_CLASSES,
        "size class rule yields fewer than 67 classes"
    );

    // Widen each class to the biggest size that keeps its object count, staying on the 128 B grid.
    let mut c = 1;
    while c < NUM_SIZE_CLASSES {
        let span = t.pages[c] as usize * PAGE_SIZE;
        let widened = (span / (span / t.size[c] as usize)) & !(LARGE_SIZE_DIV - 1);
        if widened > t.size[c] as usize {
            t.size[c] = widened as u16;
        }
        let s = t.size[c] as usize;
        assert!(
            s.is_multiple_of(MIN_ALIGN) && s > t.size[c - 1] as usize,
            "size classes must increase"
        );
        t.objects[c] = (span / s) as u16;
        t.magic[c] = u32::MAX / s as u32 + 1;
        let inverse = u64::MAX / s as u64 + 1;
        // `excess` = size * inverse - 2^64, in wrapping arithmetic; 0 for a power of two.
        let excess = (s as u64).wrapping_mul(inverse);
        t.starts[c] = Starts {
            inverse,
            threshold: if excess == 0 {
                1
            } else {
                (t.objects[c] as u64 * excess) as u32
            },
            mark: if s > 8 { 8 } else { 0 },
        };
        c += 1;
    }

    // Lookup tables: the smallest class that fits each grid point.
    let mut c = 1;
    let mut i = 0;
    while i < t.by8.len() {
        while (t.size[c] as usize) < i * SMALL_SIZE_DIV {
            c += 1;
        }
        t.by8[i] = c as u8;
        i += 1;
    }
    let mut i = 0;
    while i < t.by128.len() {
        while (t.size[c] as usize) < SMALL_SIZE_MAX + i * LARGE_SIZE_DIV {
            c += 1;
        }
        t.by128[i] = c as u8;
        i += 1;
    }

    // Alignment table, filled from the top so each entry is "this class or the next fitting one".
    let mut r = 0;
    while r < ALIGN_ROWS {
        let align = (MIN_ALIGN * 2) << r;
        let mut next = 0u8;
        let mut c = NUM_SIZE_CLASSES - 1;
        while c >= 1 {
            if (t.size[c] as usize).is_multiple_of(align) {
                next = c as u8;
            }
            t.aligned[r][c] = next;
            c -= 1;
        }
        r += 1;
    }
    t
}

/// What the free path needs of a class, in one 16-byte entry.
///
/// Object starts: with `inverse = ceil(2^64 / size)` and `excess = size * inverse - 2^64` (< size), an
/// offset `off = k * size + r` (`0 <= r < size`) maps to `off * inverse mod 2^64 = k * excess + r *
/// inverse` (Lemire's divisibility test, no wrap for offsets within a span). So `off` starts object `k`
/// exactly when the product is `k * excess`, and starts one of the span's `objects` exactly when it is
/// below `threshold = objects * excess` — one multiplication and one compare, tail included. A power of
/// two has `excess = 0` and no tail: every multiple below the span's end starts an object
/// (`threshold = 1`). The tests check every offset of every class.
///
/// `mark`: the offset of the object's free-mark word (freemark.rs).
#[derive(Clone, Copy)]
struct Starts {
    inverse: u64,
    threshold: u32,
    mark: u32,
}

const TABLES: Tables = generate();

/// A size class: 1..=67 for small objects, 0 for "large" (an object with a span of its own).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SizeClass(u8);

impl SizeClass {
    /// Class 0: a large object, one per span.
    pub const LARGE: SizeClass = SizeClass(0);

    /// Class number `n`, if it exists (`0..NUM_SIZE_CLASSES`).
    pub const fn new(n: u8) -> Option<SizeClass> {
        if (n as usize) < NUM_SIZE_CLASSES {
            Some(SizeClass(n))
        } else {
            None
        }
    }

    /// All small classes, smallest first.
    pub fn small() -> impl Iterator<Item = SizeClass> + Clone {
        (1..NUM_SIZE_CLASSES as u8).map(SizeClass)
    }

    pub const fn get(self) -> u8 {
        self.0
    }

    /// Index into arrays of `NUM_SIZE_CLASSES` entries; known to the optimizer to be in bounds.
    #[inline(always)]
    pub const fn index(self) -> usize {
        // SAFETY: every `SizeClass` holds a class below NUM_SIZE_CLASSES: `new` checks, the tables hold
        // only such classes, and `SpanClass` (whose `size_class` is the only other maker) is checked in
        // `from_raw` and built from a valid class in `new`. Lets per-class arrays skip bounds checks on the
        // allocation fast path.
        unsafe { core::hint::assert_unchecked((self.0 as usize) < NUM_SIZE_CLASSES) };
        self.0 as usize
    }

    pub const fn is_large(self) -> bool {
        self.0 == 0
    }

    /// Bytes per object (0 for [`SizeClass::LARGE`]: a large object's size is its span's).
    #[inline]
    pub const fn size(self) -> usize {
        TABLES.size[self.0 as usize] as usize
    }

    /// Pages per span (0 for [`SizeClass::LARGE`]).
    #[inline]
    pub const fn pages(self) -> PageCount {
        PageCount(TABLES.pages[self.0 as usize] as usize)
    }

    /// Objects per span (0 for [`SizeClass::LARGE`]).
    #[inline]
    pub const fn objects_per_span(self) -> usize {
        TABLES.objects[self.0 as usize] as usize
    }

    /// Division-free object index: `(off * magic) >> 32 == off / size()` for every offset in a span of
    /// this class (0 for [`SizeClass::LARGE`], which maps every offset to object 0).
    #[inline]
    pub const fn magic(self) -> u32 {
        TABLES.magic[self.0 as usize]
    }

    /// Whether an object starts exactly `offset` bytes into a span of this class (not inside an object,
    /// not in the span's unused tail). One table entry, one multiplication: it runs on every `dealloc`.
    #[inline(always)]
    pub const fn is_object_start(self, offset: usize) -> bool {
        let t = TABLES.starts[self.index()];
        (offset as u64).wrapping_mul(t.inverse) < t.threshold as u64
    }

    /// Offset of an object's free-mark word: 8 (the second word), or 0 in the 8-byte class.
    #[inline(always)]
    pub const fn mark_offset(self) -> usize {
        TABLES.starts[self.index()].mark as usize
    }

    /// The index of the object starting exactly `offset` bytes into a span of this class; `None` for an
    /// offset inside an object or in the span's unused tail. `offset` must be below the span's size
    /// (`pages().bytes()`), where the magic division is exact. Two multiplications, no division: it runs
    /// on every `dealloc`.
    #[inline(always)]
    pub const fn object_start(self, offset: usize) -> Option<usize> {
        let idx = (offset as u64 * self.magic() as u64) >> 32;
        if (idx as usize) < self.objects_per_span() && idx as usize * self.size() == offset {
            Some(idx as usize)
        } else {
            None
        }
    }

    /// The smallest class holding `size` bytes (size 0 gets the smallest class); `None` above 32 KiB.
    ///
    /// Go switches tables after 1016 B and lets `size - 1024` wrap for 1017..=1024; the first table
    /// here has one more entry (1024 B) so no wrap is needed.
    #[inline]
    pub const fn for_size(size: usize) -> Option<SizeClass> {
        if size <= SMALL_SIZE_MAX {
            Some(SizeClass(TABLES.by8[size.div_ceil(SMALL_SIZE_DIV)]))
        } else if size <= MAX_SMALL_SIZE {
            Some(SizeClass(
                TABLES.by128[(size - SMALL_SIZE_MAX).div_ceil(LARGE_SIZE_DIV)],
            ))
        } else {
            None
        }
    }

    /// The class of a *common* layout (up to 1 KiB, alignment up to 8: one table load); `None` for every
    /// other layout, which [`SizeClass::for_layout`] answers. The heap's `alloc` and `dealloc` ask this
    /// inline and send the rest to a function of its own, so that their fast path makes no call (under
    /// QEMU's TCG, where the kernel benchmark runs, each call and return ends a translation block, and a
    /// call on any path makes the whole function save registers).
    #[inline(always)]
    pub const fn for_common_layout(size: usize, align: usize) -> Option<SizeClass> {
        if size <= SMALL_SIZE_MAX && align <= MIN_ALIGN {
            Some(SizeClass(TABLES.by8[size.div_ceil(SMALL_SIZE_DIV)]))
        } else {
            None
        }
    }

    /// The smallest class holding `size` bytes whose objects are all `align`-aligned; `None` when only
    /// a large span can serve (size > 32 KiB or align > 8 KiB).
    ///
    /// `align` must be a power of two (as `core::alloc::Layout` guarantees).
    #[inline]
    pub const fn for_layout(size: usize, align: usize) -> Option<SizeClass> {
        debug_assert!(align.is_power_of_two());
        let Some(c) = Self::for_size(size) else {
            return None;
        };
        // Every class size is a multiple of 8, so the common case needs no table.
        if align <= MIN_ALIGN {
            return Some(c);
        }
        if align > MAX_SMALL_ALIGN {
            return None;
        }
        let row = (align.trailing_zeros() - MIN_ALIGN.trailing_zeros() - 1) as usize;
        match TABLES.aligned[row][c.0 as usize] {
            0 => None,
            a => Some(SizeClass(a)),
        }
    }
}

/// A span class: a size class plus whether its objects hold no pointers (`noscan`), packed as Go packs
/// it (`class << 1 | noscan`), so the 136 span classes index arrays of per-class state directly.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SpanClass(u8);

impl SpanClass {
    pub const fn new(class: SizeClass, noscan: bool) -> SpanClass {
        SpanClass(class.0 << 1 | noscan as u8)
    }

    /// Rebuilds a span class from [`SpanClass::raw`]. Panics on a value no span class has (the size
    /// class inside must stay below `NUM_SIZE_CLASSES`, see [`SizeClass::index`]).
    #[inline]
    pub const fn from_raw(raw: u8) -> SpanClass {
        assert!(
            (raw as usize) < NUM_SPAN_CLASSES,
            "sizeclass: not a span class"
        );
        SpanClass(raw)
    }

    pub const fn raw(self) -> u8 {
        self.0
    }

    /// Index into arrays of `NUM_SPAN_CLASSES` entries.
    pub const fn index(self) -> usize {
        self.0 as usize
    }

    pub const fn size_class(self) -> SizeClass {
        SizeClass(self.0 >> 1)
    }

    pub const fn noscan(self) -> bool {
        self.0 & 1 != 0
    }

    pub const fn is_large(self) -> bool {
        self.0 >> 1 == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Go's published table (sizeclasses.go, Go 1.2x), copied from the design notes.
    const GO_SIZES: [usize; 67] = [
        8, 16, 24, 32, 48, 64, 80, 96, 112, 128, 144, 160, 176, 192, 208, 224, 240, 256, 288, 320,
        352, 384, 416, 448, 480, 512, 576, 640, 704, 768, 896, 1024, 1152, 1280, 1408, 1536, 1792,
        2048, 2304, 2688, 3072, 3200, 3456, 4096, 4864, 5376, 6144, 6528, 6784, 6912, 8192, 9472,
        9728, 10240, 10880, 12288, 13568, 14336, 16384, 18432, 19072, 20480, 21760, 24576, 27264,
        28672, 32768,
    ];
    /// Pages per span of classes 35..=67; classes 1..=34 use one page.
    const GO_PAGES_FROM_35: [usize; 33] = [
        2, 1, 2, 1, 2, 1, 3, 2, 3, 1, 3, 2, 3, 4, 5, 6, 1, 7, 6, 5, 4, 3, 5, 7, 2, 9, 7, 5, 8, 3,
        10, 7, 4,
    ];

    #[test]
    fn generated_table_equals_gos() {
        let sizes: Vec<usize> = SizeClass::small().map(|c| c.size()).collect();
        assert_eq!(sizes, GO_SIZES);
        for c in SizeClass::small() {
            let want = if c.get() < 35 {
                1
            } else {
                GO_PAGES_FROM_35[c.index() - 35]
            };
            assert_eq!(
                c.pages(),
                PageCount(want),
                "pages of class {} ({} B)",
                c.get(),
                c.size()
            );
            assert_eq!(
                c.objects_per_span(),
                want * PAGE_SIZE / c.size(),
                "class {}",
                c.get()
            );
        }
        assert_eq!(SizeClass::new(1).unwrap().objects_per_span(), 1024);
        assert_eq!(SizeClass::new(67).unwrap().objects_per_span(), 1);
        assert_eq!(SizeClass::new(68), None);
        let large = SizeClass::LARGE;
        assert!(large.is_large());
        assert_eq!(
            (large.size(), large.pages(), large.objects_per_span()),
            (0, PageCount(0), 0)
        );
    }

    /// Waste a request of `prev + 1` bytes causes in a full span (Go's "max waste" column).
    fn max_waste(c: SizeClass) -> f64 {
        let prev = SizeClass(c.0 - 1).size();
        let span = c.pages().bytes();
        let tail = span % c.size();
        ((c.size() - prev - 1) * c.objects_per_span() + tail) as f64 / span as f64
    }

    #[test]
    fn table_obeys_the_rule() {
        let mut prev = 0;
        for c in SizeClass::small() {
            let (size, span) = (c.size(), c.pages().bytes());
            assert!(
                size > prev && size.is_multiple_of(MIN_ALIGN),
                "class {} size {size}",
                c.get()
            );
            if size >= 32 {
                assert_eq!(
                    size % 16,
                    0,
                    "class {}: objects >= 32 B are 16-aligned",
                    c.get()
                );
            }
            if size > SMALL_SIZE_MAX {
                assert_eq!(size % LARGE_SIZE_DIV, 0, "class {}: lookup grid", c.get());
            }
            assert!(
                span % size <= span / 8,
                "class {} ({size} B): tail waste above 1/8",
                c.get()
            );
            if size < 128 {
                assert!(
                    size - prev <= 16,
                    "class {}: step above 16 B below 128 B",
                    c.get()
                );
            } else {
                // Go's published worst case is 16.65%, for the 4864 B class.
                assert!(
                    max_waste(c) < 0.1666,
                    "class {} ({size} B): waste {}",
                    c.get(),
                    max_waste(c)
                );
            }
            prev = size;
        }
        let worst = SizeClass::for_size(4864).unwrap();
        assert_eq!(worst.size(), 4864);
        assert!(max_waste(worst) > 0.1664);
    }

    fn naive(size: usize, align: usize) -> Option<SizeClass> {
        if align > MAX_SMALL_ALIGN {
            return None;
        }
        SizeClass::small().find(|c| c.size() >= size && c.size().is_multiple_of(align))
    }

    /// Every small size; under Miri, which runs this safe arithmetic a million times slower, the sizes at
    /// and next to each class's size (where a lookup could be off by one) and the ends.
    fn sizes() -> Vec<usize> {
        if !cfg!(miri) {
            return (0..=MAX_SMALL_SIZE).collect();
        }
        let mut sizes = std::vec![0, 1, MAX_SMALL_SIZE];
        for c in SizeClass::small() {
            sizes.extend([c.size() - 1, c.size(), c.size() + 1]);
        }
        sizes.retain(|&s| s <= MAX_SMALL_SIZE);
        sizes.sort_unstable();
        sizes.dedup();
        sizes
    }

    #[test]
    fn for_size_is_smallest_fitting_class() {
        for size in sizes() {
            assert_eq!(SizeClass::for_size(size), naive(size, 1), "size {size}");
        }
        assert_eq!(SizeClass::for_size(0), SizeClass::new(1));
        for size in [MAX_SMALL_SIZE + 1, 1 << 20, usize::MAX] {
            assert_eq!(SizeClass::for_size(size), None, "size {size}");
        }
    }

    #[test]
    fn for_layout_is_smallest_aligned_class() {
        let sizes = sizes();
        // Under Miri byte, 16-byte and the largest alignment.
        let shifts: Vec<u32> = if cfg!(miri) {
            std::vec![0, 4, MAX_SMALL_ALIGN.trailing_zeros()]
        } else {
            (0..=MAX_SMALL_ALIGN.trailing_zeros()).collect()
        };
        for shift in shifts {
            let align = 1 << shift;
            for &size in &sizes {
                let got = SizeClass::for_layout(size, align);
                assert_eq!(got, naive(size, align), "size {size} align {align}");
                // The property the table exists for: every object of an 8 KiB-aligned span is aligned.
                let c = got.unwrap();
                let base = 3 * PAGE_SIZE;
                assert!(
                    (0..c.objects_per_span()).all(|i| (base + i * c.size()).is_multiple_of(align))
                );
            }
        }
        for align in [2 * MAX_SMALL_ALIGN, 1 << 20] {
            assert_eq!(SizeClass::for_layout(8, align), None, "align {align}");
        }
        assert_eq!(SizeClass::for_layout(MAX_SMALL_SIZE + 1, 8), None);
    }

    #[test]
    fn magic_division_is_exact_over_every_span() {
        for c in SizeClass::small() {
            let (size, magic) = (c.size() as u64, c.magic() as u64);
            let span = c.pages().bytes() as u64;
            // Under Miri, where the quotient steps (and next to it) for the first and last objects, whose
            // offsets are the smallest and largest products, and the span's end.
            let n = span / size;
            let offsets: Vec<u64> = if cfg!(miri) {
                (0..=n)
                    .filter(|&k| k < 4 || k + 4 > n)
                    .flat_map(|k| [k * size, k * size + 1, (k + 1) * size - 1])
                    .chain([span])
                    .filter(|&off| off <= span)
                    .collect()
            } else {
                (0..=span).collect()
            };
            for off in offsets {
                assert_eq!(
                    (off * magic) >> 32,
                    off / size,
                    "class {} offset {off}",
                    c.get()
                );
            }
        }
    }

    #[test]
    fn object_start_accepts_exactly_object_starts() {
        for c in SizeClass::small() {
            let span = c.pages().bytes();
            let used = c.objects_per_span() * c.size();
            let step = if cfg!(miri) { c.size() / 2 + 1 } else { 1 };
            for off in (0..span).step_by(step) {
                let want = (off < used && off % c.size() == 0).then(|| off / c.size());
                assert_eq!(c.object_start(off), want, "class {} offset {off}", c.get());
                assert_eq!(
                    c.is_object_start(off),
                    want.is_some(),
                    "class {} offset {off}",
                    c.get()
                );
            }
        }
    }

    #[test]
    fn span_class_packs_class_and_noscan() {
        for c in (0..NUM_SIZE_CLASSES as u8).map(|n| SizeClass::new(n).unwrap()) {
            for noscan in [false, true] {
                let sc = SpanClass::new(c, noscan);
                assert_eq!((sc.size_class(), sc.noscan()), (c, noscan));
                assert_eq!(SpanClass::from_raw(sc.raw()), sc);
                assert!(sc.index() < NUM_SPAN_CLASSES);
                assert_eq!(sc.index(), c.index() * 2 + noscan as usize);
                assert_eq!(sc.is_large(), c.is_large());
            }
        }
    }
}
