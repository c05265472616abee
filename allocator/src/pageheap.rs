//! The page heap (Go's mheap + pageAlloc): hands out spans of contiguous 8 KiB pages, grows by taking
//! arenas from the window, and returns memory by unmapping free pages (scavenging).
//!
//! Layout of the heap window: `[metadata area][arena 0][arena 1]...`. The metadata area holds, each as a
//! lazily mapped region: the page allocator's bitmap + summaries, the span map, the scavenged bitmap and
//! the metadata allocator (span structs, span bitmaps, per-CPU caches).
//!
//! Region mode (a kernel that keeps its own frames and page tables, `Backing::Regions`): the heap
//! lives in regions the kernel mapped. The first region starts with the page allocator's storage, the
//! span map and the scavenged bitmap, sized for the *reach* (the address range later regions may
//! extend the heap to), zeroed at init; the heap's pages follow from the next 8 KiB boundary. Nothing
//! is ever mapped or unmapped: no page is ever scavenged, and the metadata allocator takes its chunks
//! from the heap's own pages. Regions are added in increasing address order; the pages between two
//! regions (gaps) stay in use in `pages` for good and belong to no span (a region that starts where
//! the last one ended leaves no gap: the page across the boundary is whole). The reach lies in one
//! canonical half and ends at least one 8 KiB page short of the half's end (2^47 or 2^64, no address),
//! so every page address up to `capacity` is canonical.
//!
//! Invariants (all under the heap lock, except where the span map says otherwise):
//! - Page `i` is `base + i * PAGE_SIZE`; pages `[0, grown)` are tracked by `pages`, the rest do not exist.
//! - A page is *scavenged* (bit set) iff it is not mapped. A scavenged page is always free in `pages`;
//!   an in-use page is always mapped, except the second 4 KiB frame of a trimmed tail (below). Free
//!   pages may be mapped whole ("dirty") or scavenged, never half.
//! - A trimmed tail is spare: `Span::tail_unmapped` implies `Span::tail_spare` (the object ends in the
//!   first frame of its last page), which the page heap keeps current as the object is resized.
//! - `dirty_free` counts free pages that are mapped.
//! - Every mapped page has an index below `mapped_top` (mapped mode), so the scavenger starts there, not
//!   at the top of a heap whose address space may be 64 GiB of unmapped pages.
//! - The span-map entry of every page of an in-use span encodes that span and its class; every other
//!   entry is 0. Entries are written here, under the lock, and read lock-free by `dealloc` (see spanmap).
//! - Pages in a CPU's page cache (Go's pageCache: a 64-page aligned block and a bitmap of its free pages)
//!   are in use for `pages` but free for the heap: they count in `dirty_free` when mapped, never in `in_use`,
//!   and the scavenger cannot reach them until the cache is flushed (`flush_page_caches`).
//! - Spans in the large-span cache (`LargeCache`: freed large spans of the explicit heap kept whole, by
//!   page count, for the next large allocation of that count) are like page-cache pages: in use for
//!   `pages`, free for the heap (in `dirty_free`, never in `in_use`), mapped, with no span-map entries
//!   (so no free of an address in them is taken for a live object's); flushed with the page caches.
//! - A span struct and its bitmaps live in metadata and belong to the page heap while the span is free
//!   (they are released then), to its owner (central list or large-object path) while in use.
//! - `peak_in_use >= in_use` and `peak_in_use >= epoch_max >= in_use` after every allocation (see
//!   "Scavenging" below).
//!
//! Trimmed tails: a large object of the explicit heap that ends in the first 4 KiB frame of its last
//! page does not need the second; when that page has to be mapped for it (it was scavenged), its second
//! frame is left unmapped (`Span::tail_unmapped`, counted in `trimmed_tails`). Objects over 32 KiB round
//! up to 8 KiB pages, so this gives back half of what that rounding costs when memory is being mapped.
//! An object whose last page was mapped already (dirty pages, a span the large cache kept, a resize
//! in place) keeps that frame mapped but marks it spare (`Span::tail_spare`); a mapping that finds no
//! frame, once giving back the free pages was not enough, unmaps every spare frame still mapped
//! (`trim_spare_tails`, in `retry_with_frames_given_back`) before it gives up. `Heap::trim` leaves
//! them: each costs a TLB shootdown to unmap and a map again when its object grows.
//! The object's bytes are all mapped; the span's pages beyond them are not all. Whatever would use the
//! frame first maps it: a resize to the same pages that reaches into it (`untrim`, which can fail
//! without frames: the realloc then moves or fails), a growth in place (`untrim` first). A free or a
//! shrink that frees the page makes it whole again (`settle_tail`: maps the frame, no TLB shootdown) or,
//! without a frame, scavenged (unmaps its first frame). Only explicit large spans are trimmed: the
//! collector's spans and small spans never are.
//!
//! Scavenging (Go's scavenger keeps the heap mapped up to a goal instead of unmapping on every free): the
//! heap keeps mapped pages (in use + dirty free) up to a *retained goal* of 5/4 of the recent peak of
//! pages in use, at least in use + 4 MiB, so a workload whose use swings below its peak finds its pages
//! still mapped when it swings back (unmapping them meant a frame, a zeroing and a map per 4 KiB page
//! later). Frees scavenge once mapped pages exceed the goal by 1/16 (hysteresis), back down to the goal,
//! from the top of the heap. The peak forgets: each time the heap has allocated as many pages as the
//! peak (an *epoch*: allocation traffic is the only clock a heap without a timer has), the peak drops by
//! a quarter of its excess over the highest use seen in that epoch. So memory a workload stopped using is
//! returned after it turned the heap over a few times (90% of it after 8 turns); `Heap::trim` returns it
//! at once. (Go keeps 10% over its heap goal, itself twice the live heap by default.)
//!
//! All of that only under memory pressure: while at least a quarter of the frames the frame
//! allocator manages are free (`frames_short` is 0; checked on frees, as the rest of the policy),
//! the policy releases nothing; below that, it releases down to the goal and at least enough to
//! bring the free frames back to a quarter, less what the page caches and the large cache hold (out
//! of its reach) and 4 MiB of free pages it keeps for its own churn (`MIN_RETAINED_FREE`). A frame
//! the scavenger unmaps goes back to that allocator, not to some other system, and serves only
//! those who take frames from it: the heap's own next mapping, `Heap::allocate_frames`, the
//! kernel's page tables and stacks. The first two (the heap's mappings of pages and of metadata)
//! take the kept pages back whenever they find no frame (`retry_with_frames_given_back`: the free
//! pages first, live objects' spare tail frames only if those are not enough; a per-CPU cache, which
//! the heap can do without, and a large object resized in place, whose own tail could be taken, stop at
//! the free pages: `retry_with_free_pages_given_back`); a kernel that takes
//! frames straight from the allocator (`with_address_space`) finds that quarter, less those few MiB,
//! and after `Heap::trim` all but other CPUs' cached objects and live objects' spare tail frames.
//! Releasing earlier cost the heap a zeroing and a map each time it needed the page again: talc's
//! random actions, whose live set wanders between 5 and 28 MiB over tens of turns (big
//! reallocations turn the heap over every few milliseconds), remapped about 10,000 pages a second
//! under the turn-based policy alone.

use core::ptr::NonNull;

use crate::addr::{
    Page, PageCount, PageTableFlags, VirtAddr, FRAMES_PER_PAGE, FRAME_SIZE, PAGE_SIZE,
};
use crate::arena::{AddressSpace, ArenaWindow, ARENA_SIZE};
use crate::freemark;
use crate::meta::{LazyRegion, MetaAlloc};
use crate::pagealloc::{PageAlloc, CHUNK_UNITS};
use crate::platform::{Platform, MAX_CPUS};

// `PageHeap::cached_cpus` has a bit per CPU.
const _: () = assert!(MAX_CPUS <= 64);
use crate::sizeclass::{SizeClass, SpanClass};
use crate::span::Span;
use crate::spanmap::{Owner, SpanMap};

/// Heap pages per arena.
pub const ARENA_PAGES: usize = ARENA_SIZE / PAGE_SIZE;

/// Spans below this many pages come from the CPU's page cache (Go: pageCachePages / 4).
const PAGE_CACHE_MAX_SPAN: usize = 16;

/// Heaps of fewer pages use no page caches (1 GiB). A page cache reserves a 64-page block per CPU; in a
/// small heap a few CPUs' blocks cover it all and their small spans, one per block, leave no long free
/// run (16 CPUs in an 8 MiB heap: no 1 MiB object with 7.5 MiB free). Small heaps take every span
/// first-fit from the page allocator instead, which keeps them compact.
const PAGE_CACHE_MIN_CAPACITY: usize = (1 << 30) / PAGE_SIZE;

/// Large spans of at most this many pages are kept whole when freed (`LargeCache`).
const LARGE_CACHE_MAX_SPAN: usize = 16;
/// Most spans the large cache keeps of one page count.
const LARGE_CACHE_DEPTH: usize = 16;
/// A large allocation of `n` pages takes a kept span of `n` to `n + LARGE_CACHE_SLACK` pages (the
/// smallest there is) and gives the extra pages back to the page allocator, right after the object
/// (a growth in place takes them back). Talc's random actions (spans of 5 to 12 pages) then reuse the
/// spans they just freed, still warm, more often: cachegrind counted 3.6% fewer instructions and 6.8%
/// fewer misses of a 4 MiB last-level cache per operation; the rate against talc's, 0.934 -> 0.946
/// (means of 10 and 14 alternating runs on a noisy machine). A slack of 4 or 8 saved only 0.3-0.7%
/// more instructions.
const LARGE_CACHE_SLACK: usize = 2;
/// Most pages the large cache keeps in all (4 MiB). Talc's random actions (reallocations up to 90,000 B:
/// spans of 5 to 12 pages, freed and taken again all the time) found a kept span for 66% of their large
/// allocations with 1 MiB and 4 per page count, 89% with 4 MiB and 16, and ran 14% faster (median
/// of 4 alternating runs, 0.785 against 0.895 of talc's rate). TCMalloc's per-CPU caches hold up to
/// 3 MiB each for the same purpose; these pages come back with the page caches (`trim`, out of frames).
const LARGE_CACHE_PAGES: usize = (4 << 20) / PAGE_SIZE;

/// Freed large spans of the explicit heap, kept whole (pages mapped, span struct kept) for the next
/// large allocation of the same page count or up to [`LARGE_CACHE_SLACK`] pages fewer (the span is
/// then cut to it, its extra pages freed): that allocation and this free then skip the page
/// allocator's summary updates, the span struct's metadata and any remapping. Objects over 32 KiB come
/// and go by the page heap alone (a `realloc` growing a small object makes one), so a workload that
/// reallocates across 32 KiB frees and allocates such spans all the time. Bounded (`LARGE_CACHE_*`),
/// used only in heaps big enough for page caches, and flushed with them (trim, out of memory).
struct LargeCache {
    /// `spans[n][..len[n]]`: the kept spans of `n` pages.
    spans: [[Option<NonNull<Span>>; LARGE_CACHE_DEPTH]; LARGE_CACHE_MAX_SPAN + 1],
    len: [u8; LARGE_CACHE_MAX_SPAN + 1],
    pages: usize,
}

impl LargeCache {
    const EMPTY: LargeCache = LargeCache {
        spans: [[None; LARGE_CACHE_DEPTH]; LARGE_CACHE_MAX_SPAN + 1],
        len: [0; LARGE_CACHE_MAX_SPAN + 1],
        pages: 0,
    };

    /// Whether a span of `n` pages would be kept.
    fn has_room(&self, n: usize) -> bool {
        n <= LARGE_CACHE_MAX_SPAN
            && usize::from(self.len[n]) < LARGE_CACHE_DEPTH
            && self.pages + n <= LARGE_CACHE_PAGES
    }

    fn push(&mut self, n: usize, span: NonNull<Span>) {
        debug_assert!(self.has_room(n));
        self.spans[n][usize::from(self.len[n])] = Some(span);
        self.len[n] += 1;
        self.pages += n;
    }

    /// Takes out a kept span whose pages, `[first(span), first(span) + n)`, meet `lo..hi`, if any.
    fn take_overlapping(
        &mut self,
        lo: usize,
        hi: usize,
        first: impl Fn(NonNull<Span>) -> usize,
    ) -> Option<(NonNull<Span>, usize)> {
        for n in 1..=LARGE_CACHE_MAX_SPAN {
            let len = usize::from(self.len[n]);
            for i in 0..len {
                let span = self.spans[n][i].expect("kept spans fill their slots");
                let f = first(span);
                if f < hi && lo < f + n {
                    self.spans[n][i] = self.spans[n][len - 1].take();
                    self.len[n] -= 1;
                    self.pages -= n;
                    return Some((span, n));
                }
            }
        }
        None
    }

    fn pop(&mut self, n: usize) -> Option<NonNull<Span>> {
        if n > LARGE_CACHE_MAX_SPAN || self.len[n] == 0 {
            return None;
        }
        self.len[n] -= 1;
        self.pages -= n;
        self.spans[n][usize::from(self.len[n])].take()
    }

    /// The most recently kept span of the fewest pages from `n` to `n + LARGE_CACHE_SLACK`, and its
    /// page count.
    fn pop_fitting(&mut self, n: usize) -> Option<(NonNull<Span>, usize)> {
        (n..=n + LARGE_CACHE_SLACK).find_map(|m| self.pop(m).map(|span| (span, m)))
    }
}

/// One CPU's page cache: pages `base + i` for each set bit `i` of `free` are reserved for it.
#[derive(Clone, Copy)]
struct PageCache {
    base: usize,
    free: u64,
}

impl PageCache {
    const EMPTY: PageCache = PageCache { base: 0, free: 0 };

    /// Takes the lowest run of `n` free pages (`n < 64`).
    fn take(&mut self, n: usize) -> Option<usize> {
        // Bit i of `starts` is set iff bits i..i+n of `free` all are.
        let mut starts = self.free;
        for _ in 1..n {
            starts &= starts >> 1;
        }
        if starts == 0 {
            return None;
        }
        let i = starts.trailing_zeros() as usize;
        self.free &= !(((1u64 << n) - 1) << i);
        Some(self.base + i)
    }
}

/// Why the heap could not be set up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InitError {
    /// The window cannot hold the metadata area plus one arena.
    WindowTooSmall { window_bytes: u64, needed: u64 },
    /// Frames ran out while mapping the first metadata.
    OutOfFrames,
    /// `max_bytes` is below one heap page.
    LimitTooSmall { max_bytes: usize },
    /// Region mode: a region at address 0, or one that leaves the canonical half.
    RegionMisplaced { start: u64, len: usize },
    /// Region mode: the region holds fewer than two whole 8 KiB heap pages besides the metadata it needs
    /// (a first region: one for objects, one for their spans' metadata), or none (a later region).
    /// `needed` is the least length from `start` that is enough.
    RegionTooSmall { start: u64, len: usize, needed: u64 },
    /// Region mode: a later region below the heap's end or overlapping it (regions are added in
    /// increasing address order), or ending beyond the reach chosen at init, or whose first whole
    /// 8 KiB page would (so that no length would do).
    RegionOutOfReach {
        start: u64,
        len: usize,
        heap_end: u64,
        reach_end: u64,
    },
    /// `add_region` on a heap that is not in region mode (or not initialized).
    NotRegionMode,
    /// Region mode: the region overlaps the `Heap` itself or its platform (say a kernel-end symbol
    /// taken before the `.bss` that holds the `static`): the heap would write over its own state.
    RegionHoldsHeap { start: u64, len: usize, heap: u64 },
}

impl core::fmt::Display for InitError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            InitError::WindowTooSmall { window_bytes, needed } => write!(
                f,
                "heap window of {window_bytes:#x} bytes is too small: metadata and one arena need {needed:#x}"
            ),
            InitError::OutOfFrames => write!(f, "out of frames while mapping the heap's metadata"),
            InitError::LimitTooSmall { max_bytes } => write!(
                f,
                "heap limit of {max_bytes} bytes is below one {PAGE_SIZE}-byte heap page"
            ),
            InitError::RegionMisplaced { start, len } => write!(
                f,
                "region {start:#x} + {len:#x} bytes: a region must not start at 0 and must lie, with \
                 its reach, in one canonical half"
            ),
            InitError::RegionHoldsHeap { start, len, heap } => write!(
                f,
                "region {start:#x} + {len:#x} bytes holds the heap's own state at {heap:#x} (the \
                 `Heap` or its platform): the region must start after the kernel's .bss"
            ),
            InitError::RegionTooSmall { start, len, needed } => write!(
                f,
                "region {start:#x} + {len:#x} bytes is too small: it needs {needed:#x} bytes for its \
                 metadata (if any) and its {PAGE_SIZE}-byte heap pages (two in a first region)"
            ),
            InitError::RegionOutOfReach {
                start,
                len,
                heap_end,
                reach_end,
            } => write!(
                f,
                "region {start:#x} + {len:#x} bytes is out of reach: regions are added above the heap's \
                 end {heap_end:#x} and up to the reach {reach_end:#x} chosen at init"
            ),
            InitError::NotRegionMode => {
                write!(f, "add_region: the heap was not initialized in region mode")
            }
        }
    }
}

/// Counters of the page heap, for [`crate::Stats`].
#[derive(Clone, Copy, Debug, Default)]
pub struct PageStats {
    /// Heap pages in spans.
    pub in_use: usize,
    /// Free heap pages still mapped.
    pub dirty_free: usize,
    /// Heap pages grown (tracked) so far.
    pub grown: usize,
    /// Pages unmapped by the scavenger since boot.
    pub released_total: u64,
    /// Arenas taken from the window.
    pub arenas: usize,
    /// Metadata bytes in use / mapped.
    pub meta_in_use: u64,
    pub meta_mapped: u64,
    /// Bytes of the page allocator's bitmap and summaries, the span map and the scavenged bitmap asked
    /// for so far (mapped mode: an upper bound of what is mapped, the summaries are backed sparsely;
    /// region mode: their size at the first region's start).
    pub meta_tables: u64,
    /// Large spans whose last page's second frame is not mapped ("Trimmed tails"): a frame each.
    pub trimmed_tails: usize,
}

/// Where the heap's pages come from.
// One per heap, inside it: the unused bytes of `Regions` cost nothing, and there is no heap to box in.
#[allow(clippy::large_enum_variant)]
enum Backing<P: Platform> {
    /// Arenas taken from a window of virtual addresses, backed with frames the heap maps itself.
    Mapped {
        space: AddressSpace<P>,
        window: ArenaWindow,
    },
    /// Regions the kernel mapped (region mode): nothing is mapped or unmapped here. Regions may reach up
    /// to `reach_end` (an address; the last whole page below it is page `capacity - 1`). The last region
    /// given ends at `regions_end` (an address, at or past the heap's end: its tail holds no whole page);
    /// `gap_pages` of the tracked pages lie between regions (in use for good, in no span).
    Regions {
        reach_end: u64,
        regions_end: u64,
        gap_pages: usize,
    },
}

/// Region mode: the bytes from `start` to the end of its canonical half (2^47 or 2^64); `None` for
/// address 0 or a non-canonical one.
fn half_room(start: u64) -> Option<u64> {
    VirtAddr::try_new(start).ok().filter(|_| start != 0)?;
    Some(if start < 1 << 47 {
        (1 << 47) - start
    } else {
        start.wrapping_neg()
    })
}

/// Region mode: the reach of a first region of `len` bytes at `start`: `reach` if given (at least
/// `len`), else ([`crate::Heap::init_region`]) eight times `len`, or up to the end of the canonical half
/// when that is nearer. In bytes from `start`.
fn region_reach(start: u64, len: u64, reach: Option<usize>) -> u64 {
    match reach {
        Some(r) => (r as u64).max(len),
        None => len
            .saturating_mul(8)
            .min(half_room(start).unwrap_or(0))
            .max(len),
    }
}

/// Heap pages a first region must hold besides its metadata: one for a span, one for the chunk of
/// metadata its span struct comes from (taken from the heap's pages, see `meta_alloc`). With one, the
/// heap could allocate nothing.
const FIRST_REGION_PAGES: u64 = 2;

/// Region mode: the bytes a first region at `start` with a reach of `reach` bytes needs for its
/// metadata (the page allocator's storage, the span map, the scavenged bitmap: see
/// [`PageHeap::new_region`]), from its first 8-byte boundary, and [`FIRST_REGION_PAGES`] heap pages
/// from the next 8 KiB boundary. In `u128`: near the top of the higher half these roundings pass 2^64
/// (`u64::MAX` then).
fn region_needed(start: u64, reach: u64) -> u64 {
    let capacity = (reach / PAGE_SIZE as u64) as usize;
    let (start, page) = (u128::from(start), PAGE_SIZE as u128);
    let meta_end = start.next_multiple_of(8) + u128::from(RegionMeta::new(capacity).bytes());
    let end = meta_end.next_multiple_of(page) + u128::from(FIRST_REGION_PAGES) * page;
    u64::try_from(end - start).unwrap_or(u64::MAX)
}

/// Region mode: the sizes of the arrays at the start of the first region, for `capacity` pages.
struct RegionMeta {
    storage: u64,
    spanmap: u64,
    scav: u64,
}

impl RegionMeta {
    fn new(capacity: usize) -> Self {
        Self {
            storage: (PageAlloc::storage_bytes(capacity) as u64).next_multiple_of(8),
            spanmap: SpanMap::bytes_for(capacity),
            scav: capacity.div_ceil(64) as u64 * 8,
        }
    }

    fn bytes(&self) -> u64 {
        self.storage + self.spanmap + self.scav
    }
}

/// Why [`PageHeap::try_grow`] failed.
enum GrowError {
    /// The capacity (or the window), or region mode: nothing to retry.
    Limit,
    /// No frame for the metadata of the new pages.
    OutOfFrames,
}

/// The address space of a mapped heap; `None` in region mode.
fn space_of<P: Platform>(backing: &mut Backing<P>) -> Option<&mut AddressSpace<P>> {
    match backing {
        Backing::Mapped { space, .. } => Some(space),
        Backing::Regions { .. } => None,
    }
}

pub(crate) struct PageHeap<P: Platform> {
    backing: Backing<P>,
    base: VirtAddr,
    capacity: usize,
    grown: usize,
    pages: PageAlloc,
    pages_storage: LazyRegion,
    scav: LazyRegion,
    spanmap_region: LazyRegion,
    spanmap: &'static SpanMap,
    meta: MetaAlloc,
    in_use: usize,
    dirty_free: usize,
    released_total: u64,
    arenas: usize,
    /// Heap pages the metadata allocator took (region mode): in use in `pages` for good.
    meta_pages: usize,
    page_caches: [PageCache; MAX_CPUS],
    /// Bit `cpu` is set while `page_caches[cpu]` may hold free pages (set when it is refilled, cleared
    /// when it is flushed): what `grow_in_place` and the flushes look at, instead of every CPU's cache
    /// (a loop over 64 caches was most of an in-place growth's instructions).
    cached_cpus: u64,
    large_cache: LargeCache,
    /// The recent peak of `in_use` (see "Scavenging" in the module docs).
    peak_in_use: usize,
    /// The highest `in_use` of the current epoch, and the pages allocated in it.
    epoch_max: usize,
    epoch_allocated: usize,
    /// No page at or above it is mapped (see the invariants).
    mapped_top: usize,
    /// In-use large spans with a trimmed tail (`Span::tail_unmapped`).
    trimmed_tails: usize,
    /// Pages the scavenger has looked at, for tests of its cost.
    #[cfg(test)]
    pub(crate) scavenge_visits: u64,
}

/// The retained goal's floor above the pages in use, in pages (4 MiB).
const MIN_RETAINED_FREE: usize = (4 << 20) / PAGE_SIZE;
/// Shortest epoch of the peak's decay, in pages allocated (4 MiB).
const MIN_EPOCH: usize = (4 << 20) / PAGE_SIZE;
/// The scavenger's policy acts once fewer than `managed >> FREE_FRAMES_RESERVE_SHIFT` frames are free
/// (a quarter; module docs, "Scavenging").
const FREE_FRAMES_RESERVE_SHIFT: u32 = 2;

// SAFETY: the page heap owns its metadata and is only used under the heap lock.
unsafe impl<P: Platform> Send for PageHeap<P> {}

/// Sizes of the metadata regions for a heap of `capacity` pages, page aligned.
struct MetaLayout {
    pages_storage: u64,
    spanmap: u64,
    scav: u64,
    meta: u64,
}

/// The first region of a heap in region mode, as the heap laid it out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RegionInfo {
    /// The heap's pages in this region: `[start, end)`, 8 KiB aligned.
    pub pages: (VirtAddr, VirtAddr),
    /// Bytes at the region's start taken by metadata (page allocator, span map), with the rounding up
    /// to the first 8 KiB page.
    pub metadata_bytes: u64,
    /// Later regions ([`crate::Heap::add_region`]) must end at or below this address: `start + reach`,
    /// or one 8 KiB page short of the end of the canonical half when the reach goes that far.
    pub reach_end: VirtAddr,
}

impl core::fmt::Display for RegionInfo {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        let (start, end) = self.pages;
        write!(
            f,
            "heap pages {:#x}..{:#x} ({} KiB), {} bytes of metadata, regions may be added up to {:#x}",
            start.as_u64(),
            end.as_u64(),
            (end.as_u64() - start.as_u64()) >> 10,
            self.metadata_bytes,
            self.reach_end.as_u64()
        )
    }
}

/// Metadata bytes a heap page may need at worst. A freed block serves only blocks of its own size
/// (meta.rs), so a page may have held, one after the other, spans whose bitmaps took every block
/// size, and each size's free list can grow to one block per page whatever the order of the classes
/// (the span struct's size to two: a struct and a bitmap). One span per page at worst: the sum of
/// the bitmaps' block sizes (distinct powers of two: their OR) plus a struct's block.
fn meta_per_page() -> u64 {
    let bitmaps = SizeClass::small()
        .map(|c| Span::bitmap_words_for(SpanClass::new(c, false)) * 8)
        .filter(|&bytes| bytes > 0)
        .fold(0, |sizes, bytes| sizes | MetaAlloc::block_bytes(bytes));
    (bitmaps + MetaAlloc::block_bytes(core::mem::size_of::<Span>())) as u64
}

/// Metadata bytes of a per-CPU cache for every CPU index there can be.
fn meta_for_caches() -> u64 {
    let cache = MetaAlloc::block_bytes(core::mem::size_of::<crate::cache::Cache>());
    (MAX_CPUS * cache) as u64
}

impl MetaLayout {
    fn new(capacity: usize) -> Self {
        let round = |b: u64| b.next_multiple_of(PAGE_SIZE as u64);
        Self {
            pages_storage: round(PageAlloc::storage_bytes(capacity) as u64),
            spanmap: round(SpanMap::bytes_for(capacity)),
            scav: round(capacity.div_ceil(64) as u64 * 8),
            // Span structs and bitmaps (`META_PER_PAGE`), every CPU's cache, and 4 MiB to spare.
            meta: round(capacity as u64 * meta_per_page() + meta_for_caches() + (4 << 20)),
        }
    }

    fn total(&self) -> u64 {
        self.pages_storage + self.spanmap + self.scav + self.meta
    }
}

impl<P: Platform> PageHeap<P> {
    /// A heap of at most `max_bytes` in `window` (its metadata area is taken from the window's start).
    pub(crate) fn new(
        space: AddressSpace<P>,
        mut window: ArenaWindow,
        max_bytes: usize,
        spanmap: &'static SpanMap,
    ) -> Result<Self, InitError> {
        let window_bytes = window.end().as_u64() - window.base().as_u64();
        if max_bytes < PAGE_SIZE {
            return Err(InitError::LimitTooSmall { max_bytes });
        }
        // The metadata area (whole arenas) and the arenas holding `cap` pages must fit the window. The
        // test is monotone in `cap`, so the largest capacity that fits is found by bisection, in
        // 64-bit arithmetic that cannot overflow for any `max_bytes` (`usize::MAX` means "no limit").
        let meta_bytes_for = |cap: usize| {
            MetaLayout::new(cap)
                .total()
                .next_multiple_of(ARENA_SIZE as u64)
        };
        let fits = |cap: usize| {
            let arenas = (cap as u64).div_ceil(ARENA_PAGES as u64) * ARENA_SIZE as u64;
            meta_bytes_for(cap) + arenas <= window_bytes
        };
        let wanted = (max_bytes / PAGE_SIZE).min((window_bytes / PAGE_SIZE as u64) as usize);
        let capacity = if fits(wanted) {
            wanted
        } else {
            let (mut lo, mut hi) = (0, wanted); // fits(lo) or lo == 0; !fits(hi)
            while hi - lo > 1 {
                let mid = lo + (hi - lo) / 2;
                if fits(mid) {
                    lo = mid;
                } else {
                    hi = mid;
                }
            }
            lo
        };
        let needed = meta_bytes_for(capacity.max(1)) + ARENA_SIZE as u64;
        if capacity == 0 || needed > window_bytes {
            return Err(InitError::WindowTooSmall {
                window_bytes,
                needed,
            });
        }
        let layout = MetaLayout::new(capacity);
        let meta_bytes = meta_bytes_for(capacity);
        let meta_base = window.base();
        for _ in 0..meta_bytes / ARENA_SIZE as u64 {
            window.take_arena().ok_or(InitError::WindowTooSmall {
                window_bytes,
                needed,
            })?;
        }
        let base = meta_base + meta_bytes;

        let mut at = meta_base;
        let mut region = |size: u64| {
            let r = LazyRegion::new(at, size);
            at += size;
            r
        };
        let pages_storage = region(layout.pages_storage);
        let spanmap_region = region(layout.spanmap);
        let scav = region(layout.scav);
        let meta = MetaAlloc::new(region(layout.meta));

        let storage =
            NonNull::new(pages_storage.base().as_mut_ptr::<u8>()).expect("window at address 0");
        // SAFETY: the storage region is ours alone, 8 KiB aligned and sized `storage_bytes(capacity)`; we
        // back `backing_needed(capacity, limit)` before every `grow(limit)` (see `grow`).
        let pages = unsafe { PageAlloc::new(storage, capacity) };
        spanmap.init(spanmap_region.base(), base);
        Ok(Self {
            backing: Backing::Mapped { space, window },
            base,
            capacity,
            grown: 0,
            pages,
            pages_storage,
            scav,
            spanmap_region,
            spanmap,
            meta,
            in_use: 0,
            dirty_free: 0,
            released_total: 0,
            arenas: 0,
            meta_pages: 0,
            page_caches: [PageCache::EMPTY; MAX_CPUS],
            cached_cpus: 0,
            large_cache: LargeCache::EMPTY,
            peak_in_use: 0,
            mapped_top: 0,
            #[cfg(test)]
            scavenge_visits: 0,
            epoch_max: 0,
            epoch_allocated: 0,
            trimmed_tails: 0,
        })
    }

    /// Region mode: a heap in `[start, start + len)`, mapped and writable, whose later regions
    /// ([`PageHeap::add_region`]) may reach up to `start + reach` (`reach >= len`). See the module docs
    /// for the layout. The region and its reach lie in one canonical half; the half's last 8 KiB are
    /// never a heap page (their end is no address).
    ///
    /// # Safety
    /// The region is mapped, writable, and the heap's alone from now on, as is every later region.
    pub(crate) unsafe fn new_region(
        start: u64,
        len: usize,
        reach: Option<usize>,
        spanmap: &'static SpanMap,
    ) -> Result<(Self, RegionInfo), InitError> {
        let misplaced = InitError::RegionMisplaced { start, len };
        let page = PAGE_SIZE as u64;
        let room = half_room(start).ok_or(misplaced)?;
        let reach_of = |len: u64| region_reach(start, len, reach);
        let reach = reach_of(len as u64);
        if reach > room {
            return Err(misplaced);
        }
        // The end of a canonical half (2^47, 2^64) is no address: the heap stops one page short of it,
        // so every page address up to the capacity's end is canonical (and fits in a `u64`).
        let usable = room.saturating_sub(page);
        let reach_end = start + reach.min(usable);
        let end = start + (len as u64).min(usable);
        // The metadata covers every page up to the reach; sizing it for an upper bound of the page
        // count (the heap's first page comes after it) wastes a few bytes, not a page.
        let RegionMeta {
            storage,
            spanmap: spanmap_bytes,
            scav: scav_bytes,
        } = RegionMeta::new((reach / page) as usize);
        let meta_bytes = storage + spanmap_bytes + scav_bytes;
        let needed = region_needed(start, reach);
        if needed > end - start {
            // A longer region may have a longer reach, hence more metadata: name the least length
            // that is enough for its own reach (metadata is ~0.1% of the reach: a few steps).
            let mut needed = needed;
            loop {
                let more = region_needed(start, reach_of(needed));
                if more <= needed {
                    break;
                }
                needed = more;
            }
            return Err(InitError::RegionTooSmall { start, len, needed });
        }
        let meta_start = start.next_multiple_of(8);
        let base = start + needed - FIRST_REGION_PAGES * page;
        let capacity = ((reach_end - base) / page) as usize;
        let pages_here = ((end - base) / page) as usize;
        let at = |off: u64| VirtAddr::new(meta_start + off);
        // SAFETY: the caller gives us the region, mapped and writable; the metadata is its first
        // `meta_bytes` bytes, below `base` and so outside every heap page.
        unsafe { core::ptr::write_bytes(at(0).as_mut_ptr::<u8>(), 0, meta_bytes as usize) };
        let storage_ptr = NonNull::new(at(0).as_mut_ptr::<u8>()).ok_or(misplaced)?;
        // SAFETY: the storage is ours, 8-byte aligned, `storage_bytes(capacity)` long (`capacity` only
        // shrank), and mapped whole for the heap's lifetime (the caller's contract).
        let pages = unsafe { PageAlloc::new(storage_ptr, capacity) };
        spanmap.init(at(storage), VirtAddr::new(base));
        let premapped = |off: u64, size: u64| LazyRegion::premapped(at(off), size);
        let mut heap = Self {
            backing: Backing::Regions {
                reach_end,
                regions_end: end,
                gap_pages: 0,
            },
            base: VirtAddr::new(base),
            capacity,
            grown: 0,
            pages,
            pages_storage: premapped(0, storage),
            spanmap_region: premapped(storage, spanmap_bytes),
            scav: premapped(storage + spanmap_bytes, scav_bytes),
            spanmap,
            // Its chunks come from heap pages (`meta_block`).
            meta: MetaAlloc::new(LazyRegion::premapped(VirtAddr::new(base), 0)),
            in_use: 0,
            dirty_free: 0,
            released_total: 0,
            arenas: 0,
            meta_pages: 0,
            page_caches: [PageCache::EMPTY; MAX_CPUS],
            cached_cpus: 0,
            large_cache: LargeCache::EMPTY,
            peak_in_use: 0,
            mapped_top: 0,
            #[cfg(test)]
            scavenge_visits: 0,
            epoch_max: 0,
            epoch_allocated: 0,
            trimmed_tails: 0,
        };
        heap.track_region(0, pages_here);
        let info = RegionInfo {
            pages: (VirtAddr::new(base), heap.page_addr(pages_here)),
            metadata_bytes: base - start,
            reach_end: VirtAddr::new(reach_end),
        };
        Ok((heap, info))
    }

    /// Region mode: adds the heap pages of `[start, start + len)` (mapped and writable, the heap's
    /// alone from now on, above the heap's end and within its reach). Returns the pages added.
    ///
    /// # Safety
    /// As for [`PageHeap::new_region`].
    pub(crate) unsafe fn add_region(
        &mut self,
        start: u64,
        len: usize,
    ) -> Result<(VirtAddr, VirtAddr), InitError> {
        let Backing::Regions {
            reach_end,
            regions_end,
            ..
        } = self.backing
        else {
            return Err(InitError::NotRegionMode);
        };
        let page = PAGE_SIZE as u64;
        let heap_end = self.page_addr(self.grown).as_u64();
        let out_of_reach = InitError::RegionOutOfReach {
            start,
            len,
            heap_end,
            reach_end,
        };
        if start == 0 {
            return Err(InitError::RegionMisplaced { start, len });
        }
        let end = start.checked_add(len as u64).ok_or(out_of_reach)?;
        if start < heap_end || end > reach_end {
            return Err(out_of_reach);
        }
        // A region that starts where the last one ended (or in its tail) continues it: the page across
        // the boundary is whole, and the heap's.
        let from = if start <= regions_end {
            heap_end
        } else {
            start
        };
        let first = (from.next_multiple_of(page) - self.base.as_u64()) / page;
        let last = (end - self.base.as_u64()) / page;
        if first >= last {
            // The end of the region's first whole page (in `u128`: at the top of the higher half it
            // may be 2^64). Past the reach, no length would do: out of reach, not too small.
            let first_end = u128::from(from.next_multiple_of(page)) + u128::from(page);
            if first_end > u128::from(reach_end) {
                return Err(out_of_reach);
            }
            return Err(InitError::RegionTooSmall {
                start,
                len,
                needed: (first_end - u128::from(start)) as u64,
            });
        }
        self.track_region(first as usize, last as usize);
        if let Backing::Regions { regions_end, .. } = &mut self.backing {
            *regions_end = end;
        }
        Ok((
            self.page_addr(first as usize),
            self.page_addr(last as usize),
        ))
    }

    /// Region mode: starts tracking pages `[first, end)` as free and mapped; the gap `[grown, first)`
    /// stays in use for good.
    fn track_region(&mut self, first: usize, end: usize) {
        debug_assert!(self.grown <= first && first < end && end <= self.capacity);
        if let Backing::Regions { gap_pages, .. } = &mut self.backing {
            *gap_pages += first - self.grown;
        }
        // The storage is premapped whole: nothing to back.
        self.pages.grow(end);
        self.pages.free(first, end - first);
        self.dirty_free += end - first;
        self.grown = end;
        self.spanmap.publish(end);
    }

    /// A zeroed metadata block of `size` bytes (e.g. a per-CPU cache, a span struct); `None` when no
    /// frame can be had, even after giving back the free pages and spare tails
    /// ([`Self::retry_with_frames_given_back`]).
    pub(crate) fn meta_alloc(&mut self, size: usize) -> Option<NonNull<u8>> {
        if let Some(block) = self.meta.alloc(space_of(&mut self.backing), size) {
            return Some(block);
        }
        if !matches!(self.backing, Backing::Regions { .. }) {
            // Mapped mode: a new metadata page needs a frame, which may sit in free pages the heap
            // keeps mapped. (The pages of a span being built are in use and in no span: neither stage
            // touches them.)
            return self
                .retry_with_frames_given_back(|h| h.meta.alloc(space_of(&mut h.backing), size));
        }
        // Region mode: the next chunk is a run of the heap's own pages, at least one.
        let npages = MetaAlloc::block_bytes(size).div_ceil(PAGE_SIZE);
        // From the top: spans are taken first-fit from the bottom, so metadata there splits no run.
        let first = match self.take_top(npages) {
            Some(f) => f,
            None => {
                self.flush_page_caches();
                self.take_top(npages)?
            }
        };
        self.dirty_free -= npages;
        self.meta_pages += npages;
        let chunk = self.page_addr(first);
        // SAFETY: pages just taken from `pages` for good: in a region (mapped, ours), in no span.
        unsafe { core::ptr::write_bytes(chunk.as_mut_ptr::<u8>(), 0, npages * PAGE_SIZE) };
        self.meta.add_chunk(chunk, (npages * PAGE_SIZE) as u64);
        self.meta.alloc(space_of(&mut self.backing), size)
    }

    /// [`Self::meta_alloc`] for metadata the heap can do without (a per-CPU cache: its CPU is served
    /// through the central lists meanwhile): out of frames, only the free pages are given back, never
    /// live objects' spare tail frames. A CPU left without a cache asks again on every slow path,
    /// i.e. on every allocation: each would scan the span map and unmap spare tails (a shootdown
    /// each) for a block nobody needs.
    pub(crate) fn meta_alloc_optional(&mut self, size: usize) -> Option<NonNull<u8>> {
        if self.is_region_mode() {
            return self.meta_alloc(size);
        }
        if let Some(block) = self.meta.alloc(space_of(&mut self.backing), size) {
            return Some(block);
        }
        self.retry_with_free_pages_given_back(|h| h.meta.alloc(space_of(&mut h.backing), size))
    }

    /// The highest run of `n` free pages, marked in use. A scan down the bitmap: it runs only when the
    /// metadata allocator needs a chunk (metadata is never given back, so at most once per chunk of the
    /// heap's peak).
    fn take_top(&mut self, n: usize) -> Option<usize> {
        if self.pages.free_count() < n {
            return None; // A full heap costs no scan.
        }
        let mut end = self.grown;
        for i in (0..self.grown).rev() {
            if !self.pages.is_free(i) {
                end = i;
            } else if end - i == n {
                self.pages.alloc_range(i, n);
                return Some(i);
            }
        }
        None
    }

    /// Whether the heap lives in regions the kernel mapped.
    pub(crate) fn is_region_mode(&self) -> bool {
        matches!(self.backing, Backing::Regions { .. })
    }

    /// The heap's address space; `None` in region mode.
    pub(crate) fn space(&mut self) -> Option<&mut AddressSpace<P>> {
        space_of(&mut self.backing)
    }

    /// The heap's address space, shared; `None` in region mode.
    pub(crate) fn space_ref(&self) -> Option<&AddressSpace<P>> {
        match &self.backing {
            Backing::Mapped { space, .. } => Some(space),
            Backing::Regions { .. } => None,
        }
    }

    /// Bytes of heap pages tracked so far (in region mode: the regions' pages, not the gaps between
    /// them).
    pub(crate) fn heap_bytes(&self) -> usize {
        let gaps = match self.backing {
            Backing::Regions { gap_pages, .. } => gap_pages,
            Backing::Mapped { .. } => 0,
        };
        (self.grown - gaps) * PAGE_SIZE
    }

    /// The memory the heap can ever hold, in bytes, for sizing per-CPU caches: mapped mode, the frames
    /// its frame allocator manages (all of them, also those taken for others: an upper bound), capped
    /// by its page capacity; region mode, its regions' pages so far.
    pub(crate) fn memory_bytes(&self) -> usize {
        match &self.backing {
            Backing::Mapped { space, .. } => {
                let frames = space.frames.managed().bytes();
                usize::try_from(frames)
                    .unwrap_or(usize::MAX)
                    .min(self.capacity.saturating_mul(PAGE_SIZE))
            }
            Backing::Regions { .. } => self.heap_bytes(),
        }
    }

    pub(crate) fn stats(&self) -> PageStats {
        PageStats {
            in_use: self.in_use,
            dirty_free: self.dirty_free,
            grown: self.grown,
            released_total: self.released_total,
            arenas: self.arenas,
            meta_in_use: self.meta.in_use(),
            meta_mapped: self.meta.mapped(),
            trimmed_tails: self.trimmed_tails,
            meta_tables: self.pages_storage.mapped()
                + self.spanmap_region.mapped()
                + self.scav.mapped(),
        }
    }

    fn page_addr(&self, index: usize) -> VirtAddr {
        self.base + (index * PAGE_SIZE) as u64
    }

    fn page_index(&self, addr: VirtAddr) -> usize {
        ((addr.as_u64() - self.base.as_u64()) / PAGE_SIZE as u64) as usize
    }

    fn scav_words(&self) -> *mut u64 {
        self.scav.base().as_mut_ptr()
    }

    fn is_scavenged(&self, i: usize) -> bool {
        // SAFETY: word i/64 lies in the scavenged bitmap's mapped prefix, which covers `grown` pages.
        unsafe { *self.scav_words().add(i / 64) & (1 << (i % 64)) != 0 }
    }

    fn set_scavenged(&mut self, i: usize, on: bool) {
        // SAFETY: as in `is_scavenged`; we hold the heap lock (&mut self).
        unsafe {
            let w = self.scav_words().add(i / 64);
            if on {
                *w |= 1 << (i % 64);
            } else {
                *w &= !(1 << (i % 64));
            }
        }
    }

    /// Tracks at least `npages` more pages: at least an eighth of the pages tracked so far, in whole
    /// page-allocator chunks (4 MiB), or up to the capacity when that is less. Takes arenas from the
    /// window as the tracked pages reach into them. Fails when the capacity, the window or frames for
    /// metadata run out; the frames only once giving back the free pages and spare tails did not
    /// help ([`Self::retry_with_frames_given_back`], as for the heap's other mappings).
    ///
    /// Growing by chunks rather than whole 64 MiB arenas sizes the metadata that covers the tracked
    /// pages (span map: 8 B per page; the page allocator's bitmap and summaries) for what the heap uses:
    /// a whole arena's span map is 64 KiB, 0.4% of a 16 MiB heap. The eighth keeps a big heap's
    /// growths few.
    fn grow(&mut self, npages: usize) -> bool {
        match self.try_grow(npages) {
            Ok(()) => true,
            Err(GrowError::Limit) => false,
            // A small heap may hold every frame in free pages it keeps mapped (the scavenger keeps
            // `MIN_RETAINED_FREE` of them), with no run among them long enough for `npages`.
            Err(GrowError::OutOfFrames) => self
                .retry_with_frames_given_back(|h| h.try_grow(npages).ok())
                .is_some(),
        }
    }

    /// [`Self::grow`] without giving frames back; a failure leaves the heap as it was (metadata
    /// pages mapped on the way stay mapped, zeroed, and are found mapped next time).
    fn try_grow(&mut self, npages: usize) -> Result<(), GrowError> {
        let Backing::Mapped { space, window } = &mut self.backing else {
            // Region mode: the kernel adds regions (`add_region`), the heap cannot.
            return Err(GrowError::Limit);
        };
        let Some(want) = npages
            .max(self.grown / 8)
            .checked_next_multiple_of(CHUNK_UNITS)
            .and_then(|n| n.checked_add(self.grown))
        else {
            return Err(GrowError::Limit);
        };
        let target = want.min(self.capacity);
        if target - self.grown < npages {
            return Err(GrowError::Limit);
        }
        let old = self.grown;
        // Back the metadata of the new pages first, so a failure leaves the heap as it was.
        for range in PageAlloc::backing_needed(self.capacity, target) {
            // Each array's prefix on its own: the bitmap of a large capacity comes first in the storage,
            // and mapping everything up to a summary level's prefix would map all of it.
            if self
                .pages_storage
                .ensure_pages(Some(&mut *space), range.start as u64, range.end as u64)
                .is_err()
            {
                return Err(GrowError::OutOfFrames);
            }
        }
        if self
            .scav
            .ensure(Some(&mut *space), target.div_ceil(64) as u64 * 8)
            .is_err()
            || self
                .spanmap_region
                .ensure(Some(&mut *space), SpanMap::bytes_for(target))
                .is_err()
        {
            return Err(GrowError::OutOfFrames);
        }
        while self.arenas * ARENA_PAGES < target {
            let arena = window.take_arena().expect("window holds `capacity` pages");
            debug_assert_eq!(
                arena,
                self.base + (self.arenas * ARENA_PAGES * PAGE_SIZE) as u64
            );
            self.arenas += 1;
        }
        self.grown = target;
        for i in old..target {
            self.set_scavenged(i, true);
        }
        self.spanmap.publish(target);
        self.pages.grow(target);
        self.pages.free(old, target - old);
        Ok(())
    }

    /// Maps the scavenged pages of `[first, first + n)`; with `trim`, not the second frame of the last
    /// page if that page was scavenged (see "Trimmed tails"). Returns whether all pages were scavenged
    /// before (then the whole range is known zero) and whether the last page's second frame was left
    /// unmapped. On failure, unmaps what it mapped here.
    ///
    /// Every fresh frame is zeroed (through the direct map), though most spans are written before they
    /// are read. Zeroing only for `alloc_zeroed` and private pages was tried: 2% fewer instructions in
    /// talc's random actions on the host, but in the kernel under QEMU's TCG the 1-CPU bench fell from
    /// 23.3 to 7.9 Mops/s (every repetition; 2 and 4 CPUs slower too). Frames written with garbage
    /// through the direct map instead ran at 19.6: what mattered was a write through the direct map
    /// before the window's first use, not the bytes. Not understood (a first touch through the window
    /// should cost once, not on every operation; QEMU's own memory was backed alike, 100 MiB of host
    /// huge pages in both, and the bench's grown TLBs, kernel/src/bench.rs, left it at 7.1); not kept.
    fn back(&mut self, first: usize, n: usize, trim: bool) -> Result<(bool, bool), ()> {
        let flags = PageTableFlags::PRESENT | PageTableFlags::WRITABLE | PageTableFlags::NO_EXECUTE;
        let mut all_fresh = true;
        let mut trimmed = false;
        let mut i = first;
        while i < first + n {
            if !self.is_scavenged(i) {
                all_fresh = false;
                self.dirty_free -= 1;
                i += 1;
                continue;
            }
            let run_start = i;
            while i < first + n && self.is_scavenged(i) {
                i += 1;
            }
            let start = Page::containing_address(self.page_addr(run_start));
            let mut frames = ((i - run_start) as u64) * FRAMES_PER_PAGE;
            // The run ends at the span's last page: its second frame stays unmapped.
            let trim_here = trim && i == first + n;
            if trim_here {
                frames -= 1;
            }
            let Some(space) = space_of(&mut self.backing) else {
                unreachable!("pageheap: a scavenged page in region mode");
            };
            if space.map_range(start, frames, flags, true).is_err() {
                // Undo: the pages mapped so far in this call go back to scavenged.
                self.unback(first, run_start);
                return Err(());
            }
            for p in run_start..i {
                self.set_scavenged(p, false);
            }
            trimmed |= trim_here;
            self.mapped_top = self.mapped_top.max(i);
        }
        Ok((all_fresh, trimmed))
    }

    /// Rolls back the accounting of a `back(first, _)` that failed at `stop`: every page of
    /// `[first, stop)` is mapped now (dirty before, or mapped by `back`) and is about to be free again.
    fn unback(&mut self, first: usize, stop: usize) {
        self.dirty_free += stop - first;
    }

    /// Allocates a span of `npages` pages aligned to `align` pages. Grows the heap and, when frames run
    /// out, scavenges and retries once. Returns the span with `needzero` set from what the pages held.
    pub(crate) fn alloc_pages(
        &mut self,
        npages: usize,
        align: usize,
        cpu: Option<usize>,
    ) -> Option<(usize, bool)> {
        self.alloc_pages_trimmed(npages, align, cpu, false)
            .map(|(first, needzero, _)| (first, needzero))
    }

    /// [`PageHeap::alloc_pages`], leaving the last page's second frame unmapped with `trim` when that
    /// page was scavenged; the third value says whether it did.
    fn alloc_pages_trimmed(
        &mut self,
        npages: usize,
        align: usize,
        cpu: Option<usize>,
        trim: bool,
    ) -> Option<(usize, bool, bool)> {
        if npages == 0 || npages > self.capacity {
            return None;
        }
        let cached = match cpu {
            Some(cpu)
                if npages < PAGE_CACHE_MAX_SPAN
                    && align == 1
                    && cpu < MAX_CPUS
                    && self.capacity >= PAGE_CACHE_MIN_CAPACITY =>
            {
                self.take_from_page_cache(cpu, npages)
            }
            _ => None,
        };
        let first = match cached {
            Some(f) => f,
            None => self.find_aligned(npages, align)?,
        };
        let (fresh, trimmed) = match self.back(first, npages, trim) {
            Ok(r) => r,
            Err(()) => {
                // Out of frames: give back the dirty free pages (then, if need be, the spare tail
                // frames of large objects) and try again.
                match self.retry_with_frames_given_back(|h| h.back(first, npages, trim).ok()) {
                    Some(r) => r,
                    None => {
                        self.pages.free(first, npages);
                        return None;
                    }
                }
            }
        };
        self.note_alloc(npages);
        Some((first, !fresh, trimmed))
    }

    /// Counts `npages` more pages in use, and moves the recent peak (module docs, "Scavenging").
    fn note_alloc(&mut self, npages: usize) {
        self.in_use += npages;
        self.epoch_max = self.epoch_max.max(self.in_use);
        self.peak_in_use = self.peak_in_use.max(self.in_use);
        self.epoch_allocated += npages;
        if self.epoch_allocated >= self.peak_in_use.max(MIN_EPOCH) {
            self.peak_in_use = self.epoch_max + (self.peak_in_use - self.epoch_max) * 3 / 4;
            self.epoch_max = self.in_use;
            self.epoch_allocated = 0;
        }
    }

    /// First fit for `npages` pages whose *address* is a multiple of `align` pages, growing the heap if
    /// needed; marks them in use in `pages`.
    ///
    /// The page allocator aligns page indices, which aligns addresses as far as the heap's base is
    /// aligned (at least an arena, 64 MiB). Beyond that it takes `npages + align - base_align` pages
    /// aligned to the base's alignment — a run that always holds an aligned start — and gives back
    /// the pages before and after it.
    fn find_aligned(&mut self, npages: usize, align: usize) -> Option<usize> {
        let base_align = 1usize
            << (self.base.as_u64() / PAGE_SIZE as u64)
                .trailing_zeros()
                .min(63);
        let (run, step) = if align <= base_align {
            (npages, align)
        } else {
            (npages.checked_add(align - base_align)?, base_align)
        };
        if run > self.capacity {
            return None;
        }
        let first = match self.pages.alloc(run, step) {
            Some(f) => f,
            None => match run
                .checked_add(step - 1)
                .filter(|&n| self.grow(n))
                .and_then(|_| self.pages.alloc(run, step))
            {
                Some(f) => f,
                None => {
                    // No room, and the heap cannot grow (its limit, or the window): pages may still
                    // sit unused in the CPUs' page caches (64-page blocks each). Give them back, retry.
                    self.flush_page_caches();
                    self.pages.alloc(run, step)?
                }
            },
        };
        if run == npages {
            return Some(first);
        }
        let base_page = (self.base.as_u64() / PAGE_SIZE as u64) as usize;
        let start = (base_page + first).next_multiple_of(align) - base_page;
        debug_assert!(start + npages <= first + run);
        if start > first {
            self.pages.free(first, start - first);
        }
        if first + run > start + npages {
            self.pages
                .free(start + npages, first + run - (start + npages));
        }
        Some(start)
    }

    /// `npages` pages from `cpu`'s page cache, refilling it with a fresh 64-page block when it cannot
    /// serve (the old block's remaining pages go back to the page allocator). Saves the summary updates of
    /// a page-allocator call for most small spans.
    fn take_from_page_cache(&mut self, cpu: usize, npages: usize) -> Option<usize> {
        // As Go's pageCache: refill only an empty cache; a cache whose free pages hold no run of `npages`
        // sends this one request to the page allocator (refilling would cost summary updates every time).
        if self.page_caches[cpu].free == 0 {
            let (base, free) = match self.pages.alloc_block64() {
                Some(b) => b,
                None if self.grow(1) => self.pages.alloc_block64()?,
                None => return None,
            };
            self.page_caches[cpu] = PageCache { base, free };
            self.cached_cpus |= 1 << cpu;
        }
        self.page_caches[cpu].take(npages)
    }

    fn flush_page_cache(&mut self, cpu: usize) {
        let PageCache { base, mut free } =
            core::mem::replace(&mut self.page_caches[cpu], PageCache::EMPTY);
        self.cached_cpus &= !(1 << cpu);
        while free != 0 {
            let i = free.trailing_zeros() as usize;
            let run = (!(free >> i)).trailing_zeros() as usize;
            self.pages.free(base + i, run);
            free &= !(u64::MAX >> (64 - run) << i);
        }
    }

    /// `npages` zeroed, mapped pages for the heap's own use outside any span (the sampler's tables, the
    /// guard pool's stretch of address space): never freed, never in the span map (so no free of an
    /// address in them is taken for an object's). `None` when memory runs out.
    pub(crate) fn alloc_private(&mut self, npages: usize) -> Option<VirtAddr> {
        let (first, needzero) = self.alloc_pages(npages, 1, None)?;
        let base = self.page_addr(first);
        if needzero {
            // SAFETY: the pages were just allocated (mapped by `alloc_pages`) and belong to no one else.
            unsafe { core::ptr::write_bytes(base.as_mut_ptr::<u8>(), 0, npages * PAGE_SIZE) };
        }
        Some(base)
    }

    /// Gives every CPU's cached pages and the large cache's spans back to the page allocator (before
    /// scavenging everything).
    pub(crate) fn flush_page_caches(&mut self) {
        while self.cached_cpus != 0 {
            self.flush_page_cache(self.cached_cpus.trailing_zeros() as usize);
        }
        for n in 1..=LARGE_CACHE_MAX_SPAN {
            while let Some(span) = self.large_cache.pop(n) {
                self.release_kept_span(span, n);
            }
        }
    }

    /// Gives a span just taken out of the large cache back to the page allocator, and its struct to
    /// the metadata allocator.
    fn release_kept_span(&mut self, span: NonNull<Span>, npages: usize) {
        // SAFETY: a kept span is a large span struct from `new_span_struct` (no bitmaps), used by
        // nothing since its object was freed.
        let base = unsafe { span.as_ref() }.base();
        // SAFETY: as above; released once (it just left the cache).
        unsafe { self.meta.free(span.cast(), core::mem::size_of::<Span>()) };
        // Already free for the heap (in `dirty_free`): only the page allocator learns it now.
        self.pages.free(self.page_index(base), npages);
    }

    /// Tests: recounts the page heap's page counters from its bitmaps, page caches and large cache, and
    /// panics on any difference. Mapped mode only (region mode's metadata and gap pages are in use in
    /// no span and counted apart). Checks: the page allocator's own invariants; every kept span is whole,
    /// of its slot's page count, in use in the page allocator, unscavenged and in no span-map entry, and
    /// `large_cache.pages` is their sum; every page a page cache holds is in use in the page allocator
    /// and in no span-map entry; every free page is in no span-map entry and, if mapped, below
    /// `mapped_top`; `dirty_free` is the mapped pages among the free, cached and kept ones; `in_use`
    /// the grown pages that are none of those; `peak_in_use >= epoch_max >= in_use`.
    #[cfg(test)]
    pub(crate) fn audit(&self) {
        if self.is_region_mode() {
            return;
        }
        self.pages.check_invariants();
        let unmapped_entry = |p: usize| self.spanmap.entry(self.page_addr(p).as_u64()).is_none();
        let mut kept = 0;
        for n in 1..=LARGE_CACHE_MAX_SPAN {
            for slot in &self.large_cache.spans[n][..usize::from(self.large_cache.len[n])] {
                let span = slot.expect("kept spans fill their slots");
                // SAFETY: a kept span's struct is the page heap's, and we hold it (`&self`).
                let s = unsafe { span.as_ref() };
                assert_eq!(
                    s.npages().0,
                    n,
                    "audit: a kept span of the wrong page count"
                );
                assert!(!s.tail_unmapped, "audit: a kept span with a trimmed tail");
                let first = self.page_index(s.base());
                for p in first..first + n {
                    assert!(!self.pages.is_free(p), "audit: kept page {p} is free");
                    assert!(!self.is_scavenged(p), "audit: kept page {p} is scavenged");
                    assert!(
                        unmapped_entry(p),
                        "audit: kept page {p} has a span-map entry"
                    );
                }
                kept += n;
            }
        }
        assert_eq!(kept, self.large_cache.pages, "audit: large cache pages");
        let (mut cached, mut cached_mapped) = (0, 0);
        for (cpu, c) in self.page_caches.iter().enumerate() {
            assert!(
                c.free == 0 || self.cached_cpus & 1 << cpu != 0,
                "audit: CPU {cpu}'s page cache holds pages but is not marked"
            );
            for i in (0..64).filter(|i| c.free >> i & 1 == 1) {
                let p = c.base + i;
                assert!(!self.pages.is_free(p), "audit: cached page {p} is free");
                assert!(
                    unmapped_entry(p),
                    "audit: cached page {p} has a span-map entry"
                );
                cached += 1;
                cached_mapped += usize::from(!self.is_scavenged(p));
            }
        }
        let (mut free, mut free_mapped) = (0, 0);
        for p in (0..self.grown).filter(|&p| self.pages.is_free(p)) {
            assert!(
                unmapped_entry(p),
                "audit: free page {p} has a span-map entry"
            );
            free += 1;
            if !self.is_scavenged(p) {
                assert!(
                    p < self.mapped_top,
                    "audit: free page {p} mapped above mapped_top"
                );
                free_mapped += 1;
            }
        }
        assert_eq!(
            self.dirty_free,
            free_mapped + cached_mapped + kept,
            "audit: dirty_free (free {free_mapped}, cached {cached_mapped}, kept {kept} mapped)"
        );
        assert_eq!(
            self.in_use,
            self.grown - free - cached - kept,
            "audit: in_use (grown {}, free {free}, cached {cached}, kept {kept})",
            self.grown
        );
        assert!(
            self.peak_in_use >= self.epoch_max && self.epoch_max >= self.in_use,
            "audit: peak {} / epoch max {} / in use {}",
            self.peak_in_use,
            self.epoch_max,
            self.in_use
        );
    }

    /// Tests: checks every tracked page's mapping against the page heap's word for it (mapped mode):
    /// a scavenged page has neither frame mapped; any other page has its first frame mapped and its
    /// second too, unless it is the last page of an in-use span with a trimmed tail
    /// (`Span::tail_unmapped`), whose count is `trimmed_tails`; no page at or above `mapped_top` is
    /// mapped. Returns the data frames mapped in the heap's pages.
    #[cfg(all(test, not(miri)))]
    pub(crate) fn audit_mappings(&self) -> u64 {
        let Backing::Mapped { space, .. } = &self.backing else {
            return 0;
        };
        let mapped = |a: VirtAddr| space.mapper.translate(a).is_some();
        let (mut frames, mut trimmed) = (0, 0);
        for p in 0..self.grown {
            let a = self.page_addr(p);
            let (m0, m1) = (mapped(a), mapped(a + FRAME_SIZE));
            if self.is_scavenged(p) {
                assert!(
                    !m0 && !m1,
                    "audit: scavenged page {p} is mapped ({m0}, {m1})"
                );
                continue;
            }
            assert!(
                m0,
                "audit: page {p} is not scavenged but its first frame is unmapped"
            );
            assert!(
                p < self.mapped_top,
                "audit: page {p} mapped above mapped_top"
            );
            frames += 1 + u64::from(m1);
            if !m1 {
                let e = self
                    .spanmap
                    .entry(a.as_u64())
                    .unwrap_or_else(|| panic!("audit: page {p} half mapped, in no span"));
                // SAFETY: an in-use span (its span-map entry, read under the heap lock); read only.
                let s = unsafe { e.span().as_ref() };
                let last = self.page_index(s.base()) + s.npages().0 - 1;
                assert!(
                    p == last && s.tail_unmapped && s.tail_spare,
                    "audit: page {p} half mapped, not a trimmed tail"
                );
                trimmed += 1;
            }
        }
        assert_eq!(trimmed, self.trimmed_tails, "audit: trimmed tails");
        frames
    }

    /// Tests, for an address space that maps the heap's window only (a host machine): the frames it
    /// holds are exactly the window's mapped frames plus one table per 2 MiB, 1 GiB and 512 GiB
    /// stretch of the window with a mapped frame in it (so no table is kept empty nor freed while it
    /// maps something, and no frame is lost from the count).
    #[cfg(all(test, not(miri)))]
    pub(crate) fn audit_frames_held(&self) {
        let Backing::Mapped { space, window } = &self.backing else {
            return;
        };
        let (start, end) = (window.base().as_u64(), self.page_addr(self.grown).as_u64());
        let mut frames = 0u64;
        let mut last = [u64::MAX; 3];
        let mut tables = 0u64;
        for a in (start..end).step_by(FRAME_SIZE as usize) {
            if space.mapper.translate(VirtAddr::new(a)).is_none() {
                continue;
            }
            frames += 1;
            for (level, shift) in [21u32, 30, 39].into_iter().enumerate() {
                if a >> shift != last[level] {
                    last[level] = a >> shift;
                    tables += 1;
                }
            }
        }
        assert_eq!(
            space.frames_held().0,
            frames + tables,
            "audit: frames held vs {frames} mapped frames and {tables} tables"
        );
    }

    /// Pages the large cache keeps (tests).
    #[cfg(all(test, not(miri)))]
    pub(crate) fn large_cache_pages(&self) -> usize {
        self.large_cache.pages
    }

    /// Frees a large span of the explicit heap (from [`PageHeap::alloc_large_span`]): the large cache
    /// keeps it whole when it has room, else [`PageHeap::free_span`].
    ///
    /// # Safety
    /// As for [`PageHeap::free_span`].
    pub(crate) unsafe fn free_large_span(&mut self, span: NonNull<Span>) {
        // SAFETY: the caller hands the span back; it is a valid Span.
        let (base, npages) = unsafe {
            let s = span.as_ref();
            debug_assert!(s.class().is_large());
            (s.base(), s.npages().0)
        };
        if self.capacity >= PAGE_CACHE_MIN_CAPACITY
            && self.large_cache.has_room(npages)
            // The cache keeps whole spans only: a trimmed tail gets its frame first (or, with no frame
            // to be had, the span is freed below, where its tail is settled).
            // SAFETY: the caller hands back an in-use large span of this heap.
            && unsafe { self.untrim(span) }
        {
            let first = self.page_index(base);
            self.spanmap.set(first, npages, None);
            self.large_cache.push(npages, span);
            self.in_use -= npages;
            self.dirty_free += npages;
            return;
        }
        // SAFETY: forwarded from the caller.
        unsafe { self.free_span(span) }
    }

    /// Allocates a span struct for `[first, first + npages)` and publishes it in the span map; small spans
    /// come from `cpu`'s page cache when given. Every object of a small span of the explicit heap gets its
    /// free mark before the span is published.
    pub(crate) fn alloc_span(
        &mut self,
        npages: usize,
        align: usize,
        class: SpanClass,
        cpu: Option<usize>,
        owner: Owner,
    ) -> Option<NonNull<Span>> {
        let (first, needzero) = self.alloc_pages(npages, align, cpu)?;
        let base = self.page_addr(first);
        let span = match self.new_span_struct(base, PageCount(npages), class, needzero) {
            Some(s) => s,
            None => {
                self.free_pages(first, npages);
                return None;
            }
        };
        if owner == Owner::Explicit && !class.is_large() {
            // Before the span map publishes the span: a free of one of its slots, however early, finds
            // the slot's mark (freemark.rs).
            // SAFETY: a fresh small span, its pages mapped (alloc_pages backed them), no object out.
            unsafe {
                freemark::stamp_span(span.as_ref(), |k| SpanMap::encode(span, class, owner, k))
            };
        }
        self.spanmap.set(first, npages, Some((span, class, owner)));
        Some(span)
    }

    /// A large span of the explicit heap (`class`) for an object of `bytes` bytes (`npages` pages,
    /// aligned to `align` pages), published in the span map: a span the large cache keeps for that page
    /// count or a little more if there is one (whole: a trimmed span is never kept; cut to `npages`,
    /// its extra pages freed), else fresh pages. When a fresh
    /// object ends in the first frame of its last page and that page needs mapping, its second frame is
    /// left unmapped ("Trimmed tails"). `small`: the small size class the object's layout has, if it
    /// has one (`Span::small_layout`).
    pub(crate) fn alloc_large_span(
        &mut self,
        npages: usize,
        align: usize,
        class: SpanClass,
        cpu: Option<usize>,
        bytes: usize,
        small: Option<SizeClass>,
    ) -> Option<NonNull<Span>> {
        debug_assert!(class.is_large());
        let trim = bytes + FRAME_SIZE as usize <= npages * PAGE_SIZE;
        // Any page-aligned base meets an alignment of one page.
        if align == 1 {
            if let Some((span, kept)) = self.large_cache.pop_fitting(npages) {
                // SAFETY: a kept span is ours alone until published below.
                let s = unsafe { &mut *span.as_ptr() };
                debug_assert!(!s.tail_unmapped, "the large cache keeps whole spans only");
                s.needzero = true;
                s.tail_spare = trim;
                s.set_small_layout(small);
                let first = self.page_index(s.base());
                if kept > npages {
                    // The extra pages go back to the page allocator as free pages, still mapped (they
                    // were counted free while kept, and have no span-map entries).
                    s.set_npages(PageCount(npages));
                    self.pages.free(first + npages, kept - npages);
                }
                self.dirty_free -= npages;
                self.note_alloc(npages);
                self.spanmap
                    .set(first, npages, Some((span, s.class(), Owner::Explicit)));
                return Some(span);
            }
        }
        let (first, needzero, trimmed) = self.alloc_pages_trimmed(npages, align, cpu, trim)?;
        self.trimmed_tails += usize::from(trimmed);
        let base = self.page_addr(first);
        let Some(mut span) = self.new_span_struct(base, PageCount(npages), class, needzero) else {
            // As in `free_span`: a tail that no frame can make whole is scavenged, not dirty.
            let scavenged = trimmed && self.settle_tail(first + npages - 1);
            self.free_pages(first, npages);
            if scavenged {
                self.dirty_free -= 1;
            }
            return None;
        };
        // SAFETY: a fresh span struct, ours alone until published below.
        unsafe {
            let s = span.as_mut();
            s.tail_unmapped = trimmed;
            s.tail_spare = trim;
            s.set_small_layout(small);
        }
        self.spanmap
            .set(first, npages, Some((span, class, Owner::Explicit)));
        Some(span)
    }

    /// Records that the object of the large span `span` (of the explicit heap) is `bytes` long now,
    /// after a resize in place: whether its last page's second frame is spare (`Span::tail_spare`).
    ///
    /// # Safety
    /// `span` is an in-use large span of this heap owned by the caller, whose pages cover `bytes`,
    /// and whose tail is not trimmed if `bytes` reaches into it (the caller untrimmed it first).
    pub(crate) unsafe fn set_large_object_bytes(&mut self, span: NonNull<Span>, bytes: usize) {
        // SAFETY: the caller owns the span.
        let s = unsafe { &mut *span.as_ptr() };
        debug_assert!(bytes <= s.npages().bytes());
        s.tail_spare = bytes + FRAME_SIZE as usize <= s.npages().bytes();
        debug_assert!(
            s.tail_spare || !s.tail_unmapped,
            "an object reaching into its span's trimmed tail"
        );
    }

    /// The last resort of whoever found no frame: gives frames back to the frame allocator in two
    /// stages and calls `retry` after each, returning its first success. First every CPU's cached
    /// pages and the large cache's spans go back and every free page is unmapped; only if that was not
    /// enough, the spare tail frame of every live large object (`trim_spare_tails`), which that object
    /// would have to map again to grow in place: free pages are given first because nobody uses them.
    pub(crate) fn retry_with_frames_given_back<T>(
        &mut self,
        mut retry: impl FnMut(&mut Self) -> Option<T>,
    ) -> Option<T> {
        if let Some(t) = self.retry_with_free_pages_given_back(&mut retry) {
            return Some(t);
        }
        if self.trim_spare_tails() == 0 {
            return None;
        }
        retry(self)
    }

    /// The first stage of [`Self::retry_with_frames_given_back`] alone: every CPU's cached pages and
    /// the large cache's spans go back, every free page is unmapped, then `retry`. For mappings that
    /// must not take live objects' spare tails: optional ones, and those of a large span being
    /// resized (its `tail_spare` still describes the old size, so its own tail could be taken).
    pub(crate) fn retry_with_free_pages_given_back<T>(
        &mut self,
        retry: impl FnOnce(&mut Self) -> Option<T>,
    ) -> Option<T> {
        self.flush_page_caches();
        self.scavenge(usize::MAX);
        retry(self)
    }

    /// Frames [`PageHeap::retry_with_frames_given_back`] could return at most: two per free mapped page (page
    /// caches and the large cache included), one per spare tail (at most one per in-use page: a spare
    /// tail is the last page of an in-use span), and the page tables unmapping those frames may empty
    /// (at most one per 512 frames and level, and one per level more for the ends).
    pub(crate) fn reclaimable_frames(&self) -> usize {
        let frames = self.dirty_free * FRAMES_PER_PAGE as usize + self.in_use;
        frames + frames / 256 + 4
    }

    /// Unmaps the spare second frame of every in-use large span's last page that still has it mapped
    /// (`Span::tail_spare` and not `tail_unmapped`), making those tails trimmed: the last resort of an
    /// allocation that found no frame. Returns the frames given back. One pass over the span map up to
    /// `mapped_top`, as `scavenge` makes over the page bitmap, and one TLB shootdown per tail (they are
    /// scattered): only failing allocations pay for it.
    fn trim_spare_tails(&mut self) -> usize {
        if self.is_region_mode() {
            return 0;
        }
        let mut trimmed = 0;
        let mut i = 0;
        let end = self.mapped_top.min(self.grown);
        while i < end {
            let addr = self.page_addr(i);
            let Some(e) = self.spanmap.entry(addr.as_u64()) else {
                i += 1;
                continue;
            };
            if e.owner() != Owner::Explicit || !e.class().is_large() {
                i += 1;
                continue;
            }
            let span = e.span();
            let (last, spare) = {
                // SAFETY: an in-use large span of the explicit heap (its span-map entry, read under the
                // heap lock, which every change to the span and to its object's size holds): a valid
                // struct; read only, as its owner may read it meanwhile.
                let s = unsafe { span.as_ref() };
                let last = self.page_index(s.base()) + s.npages().0 - 1;
                (last, s.tail_spare && !s.tail_unmapped)
            };
            if spare {
                let frame = Page::containing_address(self.page_addr(last) + FRAME_SIZE);
                space_of(&mut self.backing)
                    .expect("not in region mode")
                    .unmap_range(frame, 1);
                // SAFETY: as above; one field written through the raw pointer, under the heap lock that
                // every access to it holds (no owner holds a reference to the span outside the lock).
                unsafe { (*span.as_ptr()).tail_unmapped = true };
                self.trimmed_tails += 1;
                trimmed += 1;
            }
            i = i.max(last) + 1;
        }
        trimmed
    }

    /// Maps the missing second frame of `span`'s last page if its tail is trimmed (zeroed: the object's
    /// bytes there were never written). `false` when no frame can be had; the span is as it was.
    ///
    /// # Safety
    /// `span` is an in-use large span of this heap owned by the caller.
    pub(crate) unsafe fn untrim(&mut self, span: NonNull<Span>) -> bool {
        // SAFETY: the caller owns the span.
        let s = unsafe { &mut *span.as_ptr() };
        if !s.tail_unmapped {
            return true;
        }
        let last = self.page_index(s.base()) + s.npages().0 - 1;
        let page = Page::containing_address(self.page_addr(last) + FRAME_SIZE);
        let flags = PageTableFlags::PRESENT | PageTableFlags::WRITABLE | PageTableFlags::NO_EXECUTE;
        let space = space_of(&mut self.backing).expect("trimmed tails exist only in mapped mode");
        if space.map_range(page, 1, flags, true).is_err() {
            return false;
        }
        s.tail_unmapped = false;
        self.trimmed_tails -= 1;
        true
    }

    /// [`Self::untrim`], giving back the free pages if no frame is free (never spare tails: see
    /// [`Self::retry_with_free_pages_given_back`]), for a resize that needs the tail.
    ///
    /// # Safety
    /// As for [`Self::untrim`].
    pub(crate) unsafe fn untrim_or_give_back(&mut self, span: NonNull<Span>) -> bool {
        // SAFETY: forwarded from the caller.
        if unsafe { self.untrim(span) } {
            return true;
        }
        self.retry_with_free_pages_given_back(|h| {
            // SAFETY: forwarded from the caller.
            unsafe { h.untrim(span) }.then_some(())
        })
        .is_some()
    }

    /// Makes a trimmed last page `last` (in use, its second frame unmapped), about to be freed, a page the
    /// invariants allow: whole (its missing frame mapped) or, when no frame can be had, scavenged (its
    /// first frame unmapped). Returns whether it is scavenged now; the caller frees it then without
    /// counting it dirty.
    fn settle_tail(&mut self, last: usize) -> bool {
        self.trimmed_tails -= 1;
        let flags = PageTableFlags::PRESENT | PageTableFlags::WRITABLE | PageTableFlags::NO_EXECUTE;
        let first_frame = Page::containing_address(self.page_addr(last));
        let space = space_of(&mut self.backing).expect("trimmed tails exist only in mapped mode");
        // Mapping a frame needs no TLB shootdown; unmapping one does.
        if space.map_range(first_frame + 1, 1, flags, true).is_ok() {
            return false;
        }
        space.unmap_range(first_frame, 1);
        self.set_scavenged(last, true);
        true
    }

    fn new_span_struct(
        &mut self,
        base: VirtAddr,
        npages: PageCount,
        class: SpanClass,
        needzero: bool,
    ) -> Option<NonNull<Span>> {
        let words = Span::bitmap_words_for(class);
        let bits = if words == 0 {
            None
        } else {
            Some(self.meta_alloc(words * 8)?.cast::<u64>())
        };
        let Some(mem) = self.meta_alloc(core::mem::size_of::<Span>()) else {
            if let Some(b) = bits {
                // SAFETY: `b` came from `alloc(words * 8)` just above and was not shared.
                unsafe { self.meta.free(b.cast(), words * 8) };
            }
            return None;
        };
        let span = mem.cast::<Span>();
        // SAFETY: `mem` is a fresh, aligned metadata block big enough for a Span; `bits` has `words` words.
        unsafe {
            span.as_ptr()
                .write(Span::new(base, npages, class, needzero, bits))
        };
        Some(span)
    }

    /// Returns a span's pages to the heap and releases its struct.
    ///
    /// # Safety
    /// `span` came from `alloc_span` on this heap and nobody uses it after this call.
    pub(crate) unsafe fn free_span(&mut self, span: NonNull<Span>) {
        // SAFETY: the caller hands the span back; it is a valid Span written by `new_span_struct`.
        let (base, npages, class, bits) = unsafe {
            let s = span.as_ref();
            (s.base(), s.npages().0, s.class(), s.bitmap_storage())
        };
        let first = self.page_index(base);
        self.spanmap.set(first, npages, None);
        // SAFETY: as above; the span is ours until the end of this call.
        let trimmed = unsafe { span.as_ref() }.tail_unmapped;
        let words = Span::bitmap_words_for(class);
        // SAFETY: the bitmaps and the struct came from `meta` with these sizes; nobody uses them now.
        unsafe {
            if let Some(b) = bits {
                self.meta.free(b.cast(), words * 8);
            }
            self.meta.free(span.cast(), core::mem::size_of::<Span>());
        }
        let scavenged = trimmed && self.settle_tail(first + npages - 1);
        self.free_pages(first, npages);
        if scavenged {
            self.dirty_free -= 1;
        }
    }

    fn free_pages(&mut self, first: usize, npages: usize) {
        self.pages.free(first, npages);
        self.in_use -= npages;
        self.dirty_free += npages;
    }

    /// Grows a large span in place by `extra` pages if the pages right after it are free.
    ///
    /// # Safety
    /// `span` is an in-use large span of this heap owned by the caller.
    pub(crate) unsafe fn grow_in_place(
        &mut self,
        span: NonNull<Span>,
        extra: usize,
    ) -> Option<bool> {
        // SAFETY: the caller owns the span (forwarded to `untrim_or_give_back`).
        if !unsafe { self.untrim_or_give_back(span) } {
            return None;
        }
        // SAFETY: the caller owns the span.
        let s = unsafe { &mut *span.as_ptr() };
        let first = self.page_index(s.base());
        let end = first + s.npages().0;
        if end + extra > self.grown {
            return None;
        }
        // Free pages right after the span may sit in a page cache, or be a span the large cache
        // keeps: give them back first.
        let mut cpus = self.cached_cpus;
        while cpus != 0 {
            let cpu = cpus.trailing_zeros() as usize;
            cpus &= cpus - 1;
            let c = &self.page_caches[cpu];
            if c.free != 0 && c.base < end + extra && end < c.base + 64 {
                self.flush_page_cache(cpu);
            }
        }
        let base = self.base.as_u64();
        let first_of = |k: NonNull<Span>| {
            // SAFETY: a kept span is a valid span struct that nothing else uses; read only.
            let b = unsafe { k.as_ref() }.base().as_u64();
            ((b - base) / PAGE_SIZE as u64) as usize
        };
        while let Some((kept, n)) = self
            .large_cache
            .take_overlapping(end, end + extra, first_of)
        {
            self.release_kept_span(kept, n);
        }
        if !self.pages.contains_free_run(end, extra) {
            return None;
        }
        self.pages.alloc_range(end, extra);
        // Out of frames: the free pages only (a spare tail taken now could be this span's own, which
        // the growth makes a middle page).
        let backed = match self.back(end, extra, false) {
            Ok(r) => Some(r),
            Err(()) => self.retry_with_free_pages_given_back(|h| h.back(end, extra, false).ok()),
        };
        let Some((fresh, _)) = backed else {
            self.pages.free(end, extra);
            return None;
        };
        self.note_alloc(extra);
        s.set_npages(PageCount(s.npages().0 + extra));
        // Only the explicit heap resizes large objects in place.
        self.spanmap
            .set(end, extra, Some((span, s.class(), Owner::Explicit)));
        Some(!fresh)
    }

    /// Shrinks a large span in place to `keep` pages, freeing the tail.
    ///
    /// # Safety
    /// `span` is an in-use large span of this heap owned by the caller, with more than `keep` pages.
    pub(crate) unsafe fn shrink_in_place(&mut self, span: NonNull<Span>, keep: usize) {
        // SAFETY: the caller owns the span.
        let s = unsafe { &mut *span.as_ptr() };
        let first = self.page_index(s.base());
        let old = s.npages().0;
        self.spanmap.set(first + keep, old - keep, None);
        s.set_npages(PageCount(keep));
        // The trimmed page is among those freed; the kept ones are whole.
        let scavenged =
            core::mem::replace(&mut s.tail_unmapped, false) && self.settle_tail(first + old - 1);
        self.free_pages(first + keep, old - keep);
        if scavenged {
            self.dirty_free -= 1;
        }
    }

    /// Unmaps up to `max_pages` free, mapped pages and returns their frames. Returns the pages released.
    pub(crate) fn scavenge(&mut self, max_pages: usize) -> usize {
        // From the top down, as Go does: first-fit allocation reuses the lowest free pages next, so those are
        // the ones worth keeping mapped.
        if self.is_region_mode() {
            return 0; // The kernel's pages stay mapped.
        }
        let mut released = 0;
        // Pages at or above `end` have been looked at; the highest of them still mapped (in use).
        let mut end = self.mapped_top.min(self.grown);
        let mut mapped_above = 0;
        while end > 0 && released < max_pages && self.dirty_free > 0 {
            let dirty_free = |h: &Self, p: usize| h.pages.is_free(p) && !h.is_scavenged(p);
            #[cfg(test)]
            {
                self.scavenge_visits += 1;
            }
            if !dirty_free(self, end - 1) {
                if mapped_above == 0 && !self.is_scavenged(end - 1) {
                    mapped_above = end;
                }
                end -= 1;
                continue;
            }
            let mut start = end - 1;
            while start > 0 && end - start < max_pages - released && dirty_free(self, start - 1) {
                start -= 1;
            }
            let page = Page::containing_address(self.page_addr(start));
            space_of(&mut self.backing)
                .expect("not in region mode")
                .unmap_range(page, ((end - start) as u64) * FRAMES_PER_PAGE);
            for p in start..end {
                self.set_scavenged(p, true);
            }
            released += end - start;
            self.dirty_free -= end - start;
            end = start;
        }
        // Pages below `end` were not looked at; above it only `mapped_above` bounds what is mapped.
        self.mapped_top = end.max(mapped_above);
        self.released_total += released as u64;
        released
    }

    /// What the scavenger should release (module docs, "Scavenging"): nothing while frames are
    /// plentiful; else the mapped pages over the retained goal, once they exceed it by the hysteresis
    /// band, and at least the pages whose frames bring the free frames back to a quarter.
    pub(crate) fn excess_pages(&self) -> usize {
        let short = self.frames_short();
        if short == 0 {
            return 0;
        }
        let goal = (self.peak_in_use + self.peak_in_use / 4).max(self.in_use + MIN_RETAINED_FREE);
        let mapped = self.in_use + self.dirty_free;
        let over_goal = if mapped > goal + goal / 16 {
            mapped - goal
        } else {
            0
        };
        // Free pages in the caches are out of the scavenger's reach: asking for them would only make it
        // scan the heap on every free. And the heap keeps `MIN_RETAINED_FREE` pages for its own churn:
        // without them, a heap whose kernel keeps the frames short would unmap (and shoot down) on
        // every free and map again on the next allocation.
        let cached = self.large_cache.pages
            + self
                .page_caches
                .iter()
                .map(|c| c.free.count_ones() as usize)
                .sum::<usize>();
        let reachable = self
            .dirty_free
            .saturating_sub(cached)
            .saturating_sub(MIN_RETAINED_FREE);
        over_goal.max(short.div_ceil(FRAMES_PER_PAGE as usize).min(reachable))
    }

    /// Frames missing for a quarter of the frames the frame allocator manages to be free (module docs,
    /// "Scavenging"); 0 while frames are plentiful, and always in region mode, which maps nothing.
    fn frames_short(&self) -> usize {
        self.space_ref().map_or(0, |space| {
            let reserve = space.frames.managed().0 >> FREE_FRAMES_RESERVE_SHIFT;
            reserve.saturating_sub(space.frames.free_frames().0) as usize
        })
    }

    /// Scavenging policy on a free (module docs, "Scavenging"): nothing while frames are plentiful;
    /// while they are short, back down to the retained goal, and release at least enough reachable
    /// pages to bring the free frames back to a quarter ([`Self::excess_pages`]).
    pub(crate) fn scavenge_if_needed(&mut self) {
        if self.is_region_mode() {
            return;
        }
        let excess = self.excess_pages();
        if excess > 0 {
            self.scavenge(excess);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::PageCache;

    #[test]
    fn page_cache_takes_the_lowest_fitting_run() {
        // Free: pages 0-1, 4-9, 20-63.
        let free = 0b11 | (0b11_1111 << 4) | (u64::MAX << 20);
        let mut c = PageCache { base: 640, free };
        assert_eq!(c.take(3), Some(644));
        assert_eq!(c.take(2), Some(640));
        assert_eq!(c.take(4), Some(660), "pages 7-9 are a run of 3 only");
        assert_eq!(c.take(3), Some(647));
        assert_eq!(c.take(15), Some(664));
        assert_eq!(c.take(15), Some(679));
        assert_eq!(
            c.take(15),
            None,
            "only 64 - 694 + 640 = 10 pages are left at the end"
        );
        assert_eq!(c.free.count_ones(), 10);
    }
}
