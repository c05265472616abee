//! The heap: Rust's `GlobalAlloc` over the whole hierarchy.
//!
//! An allocation flows: size class lookup -> this CPU's cache (cache.rs, the fast path) -> on a miss the
//! class's central list (central.rs) -> on a miss a new span from the page heap (pageheap.rs) -> on a miss
//! a new arena mapped from the window with frames from the frame allocator (arena.rs, frames.rs).
//! Objects over 32 KiB (or aligned beyond 8 KiB, the heap page) skip the caches: their own span, straight
//! from the page heap. So, in a heap smaller than full-size caches want (mapped mode), do the objects of
//! the classes over one page whose spans hold several (9.25 to 28 KiB, `own_span_in_small_heap`): a
//! large span that records the object's class, as an in-place `realloc` below 32 KiB leaves one. A CPU without a cache (an index at or over `Platform::MAX_CPUS`, or no memory for
//! one) is served through the central lists' locks.
//!
//! Invariants:
//! - Nothing here panics on a failed allocation: out of memory is a null pointer.
//! - Every `dealloc` and `realloc` is checked before anything changes, in every build: the pointer must
//!   be the start of an object of an in-use explicit-heap span (span map: not foreign, not a collector's
//!   object, not interior, not in a span's tail) of the class its layout maps to (a large object: of
//!   its page count; a small layout may also name the class a large span records: an in-place
//!   `realloc`, a span of its own), and a small object must not carry its free mark (freemark.rs: not freed twice, not
//!   a slot never handed out, not waiting in a cache). Else it panics naming the address, the layout
//!   and the reason. `debug-checks` adds a locked check of the span's bitmaps (racing double frees).
//! - Interrupts are masked on this CPU while any heap lock is held and while a slow path uses its cache;
//!   the fast paths mask nothing unless the platform asks for it (`Platform::INTERRUPTED_CODE_STAYS_ON_CPU`
//!   false): they use the cache inside its busy window (cache.rs), and an interrupt handler that lands
//!   in that window is served through the central lists' locks (no lock is held by the code it
//!   interrupted). So an interrupt handler may allocate and free at any instruction.

use core::alloc::{GlobalAlloc, Layout};
use core::mem::MaybeUninit;
use core::ptr::{self, NonNull};
use core::sync::atomic::{AtomicBool, AtomicPtr, AtomicUsize, Ordering};

use crate::addr::{FrameCount, PageCount, PhysFrame, VirtAddr, FRAME_SIZE, PAGE_SIZE};
use crate::arena::{AddressSpace, ArenaWindow};
use crate::cache::{cache_shift, Cache, Stacks};
use crate::central::Central;
use crate::freemark;
use crate::pageheap::{InitError, PageHeap, RegionInfo};
use crate::platform::{Platform, MAX_CPUS};
use crate::sizeclass::{SizeClass, SpanClass, NUM_SIZE_CLASSES};
use crate::span::Span;
use crate::spanmap::{self, Entry, Owner, SpanMap};
use crate::stats::{ClassStats, Stats};

/// Heaps smaller than this have no per-CPU caches: 16 times a cache's metadata block (a cache holds up
/// to 32 KiB of objects per class; in a smaller heap the caches would hold much of it).
const CACHES_MIN_HEAP: usize = 16 * core::mem::size_of::<Cache>().next_power_of_two();

/// Whether [`Heap`] runs its full checks unless told otherwise: the `debug-checks` feature.
pub const DEFAULT_FULL_CHECKS: bool = cfg!(feature = "debug-checks");

/// Bytes of empty spans each size class keeps for its next refills instead of handing them back to the
/// page heap at once (central.rs): eight 32 KiB spans, thirty-two 8 KiB ones, in a heap of 256 MiB or
/// more (smaller heaps keep less, as their caches hold less: `cache::cache_shift`). `trim` and an
/// allocation that finds the page heap full give them all back.
const EMPTY_SPAN_BUDGET: usize = 256 << 10;

/// The span heap. Put one in a `static` with [`Heap::new`], call [`Heap::init`] once memory is known,
/// and use it as the `#[global_allocator]`. Before `init` every allocation returns null.
///
/// Every `dealloc` and `realloc` is checked (see the module invariants): a bad free panics naming the
/// address, the layout and the reason. `FULL_CHECKS` (default: the `debug-checks` feature) adds a
/// check of the span's bitmaps under the class lock on every operation, which also catches two CPUs
/// freeing one object at the same instant.
pub struct Heap<P: Platform, const FULL_CHECKS: bool = DEFAULT_FULL_CHECKS> {
    platform: &'static P,
    caches: [AtomicPtr<Cache>; MAX_CPUS],
    central: [Central; NUM_SIZE_CLASSES],
    pages: spin::Mutex<Option<PageHeap<P>>>,
    /// Set while the heap is too small for per-CPU caches (region mode): every CPU takes the locked path.
    /// Written under the page-heap lock; `create_cache` reads it again under that lock.
    caches_off: AtomicBool,
    /// Set in a heap smaller than the memory that gets full-size caches, in mapped mode: objects of the
    /// size classes [`own_span_in_small_heap`] names get a large span of their own (see there).
    own_spans: AtomicBool,
    /// Bytes of empty spans each central list keeps ([`EMPTY_SPAN_BUDGET`] scaled as the caches are, set
    /// when a cache is made; 0, one span, until then and in heaps without caches).
    empty_span_budget: AtomicUsize,
    spanmap: SpanMap,
    large_objects: LockedCounter,
    large_pages: LockedCounter,
    /// The heap profile and guard pages (sample.rs); used only when `P::SAMPLING`.
    sampler: sample::Sampler,
    /// Operations served through the central lists because they interrupted their CPU's fast path.
    interrupted_fast_paths: AtomicUsize,
}

/// A statistics counter written only by holders of the page-heap lock and read by anyone: a plain
/// load and store, not a locked read-modify-write, which on x86 waits for every store before it to
/// reach the cache (the large paths' span-map and span writes, all misses: a fifth of a large
/// allocation's time was the `lock add` after them). The lock orders the writers.
struct LockedCounter(AtomicUsize);

impl LockedCounter {
    const fn new() -> Self {
        Self(AtomicUsize::new(0))
    }

    /// Adds `n`; the caller holds the page-heap lock.
    fn add(&self, n: usize) {
        self.0
            .store(self.0.load(Ordering::Relaxed) + n, Ordering::Relaxed);
    }

    /// Subtracts `n`; the caller holds the page-heap lock.
    fn sub(&self, n: usize) {
        self.0
            .store(self.0.load(Ordering::Relaxed) - n, Ordering::Relaxed);
    }

    fn get(&self) -> usize {
        self.0.load(Ordering::Relaxed)
    }
}

/// Which call a refused pointer came through, for the message.
#[derive(Clone, Copy)]
enum Op {
    Dealloc,
    Realloc,
}

impl<P: Platform, const FULL_CHECKS: bool> Heap<P, FULL_CHECKS> {
    pub const fn new(platform: &'static P) -> Self {
        const {
            assert!(
                P::MAX_CPUS <= MAX_CPUS,
                "spanalloc: Platform::MAX_CPUS is over spanalloc::MAX_CPUS"
            )
        };
        Self {
            platform,
            caches: [const { AtomicPtr::new(ptr::null_mut()) }; MAX_CPUS],
            central: [const { Central::new() }; NUM_SIZE_CLASSES],
            pages: spin::Mutex::new(None),
            caches_off: AtomicBool::new(false),
            own_spans: AtomicBool::new(false),
            empty_span_budget: AtomicUsize::new(0),
            spanmap: SpanMap::new(),
            large_objects: LockedCounter::new(),
            large_pages: LockedCounter::new(),
            sampler: sample::Sampler::new(),
            interrupted_fast_paths: AtomicUsize::new(0),
        }
    }

    /// Hands the heap its address space (frames + page tables) and the virtual window to grow in. The heap
    /// will hold at most `max_bytes` of heap pages (rounded down to 8 KiB pages; `usize::MAX` for no limit
    /// beyond the window), besides its metadata; the window must also hold the metadata area (whole
    /// 64 MiB arenas at its start). Errors name what does not fit. What to choose:
    /// [`crate::takeover::Limits`]; [`crate::takeover::take_over`] does all of this in one call.
    pub fn init(
        &'static self,
        space: AddressSpace<P>,
        window: ArenaWindow,
        max_bytes: usize,
    ) -> Result<(), InitError> {
        let irq = self.platform.mask_interrupts();
        let mut pages = self.pages.lock();
        if pages.is_some() {
            // Told once the lock is released: a panic path that allocates would spin on it ([`Refusal`]).
            drop((pages, irq));
            panic!("spanalloc: Heap::init called twice");
        }
        let heap = PageHeap::new(space, window, max_bytes, &self.spanmap)?;
        self.own_spans
            .store(cache_shift(heap.memory_bytes()) > 0, Ordering::Relaxed);
        *pages = Some(heap);
        Ok(())
    }

    /// Region mode, for a kernel that keeps its own frame allocator and page tables: the heap serves
    /// objects from `[start, start + len)`, memory the kernel has mapped (present, writable), with the
    /// same size classes, central lists and page heap as ever. It never maps or unmaps anything.
    ///
    /// `start` may be any address and `len` any size that leaves two 8 KiB heap pages after the
    /// metadata (about 0.1% of the reach, from the region's start, then up to the next 8 KiB boundary;
    /// one page for objects, one for their spans' metadata): 100 KiB at a 4 KiB boundary gives 11 heap
    /// pages. Later regions may be added with
    /// [`Heap::add_region`] up to eight times `len` from `start` (or to the end of its canonical half,
    /// if that is nearer); [`Heap::init_region_with_reach`] chooses another reach. The last 8 KiB of a
    /// canonical half are never a heap page (their end, 2^47 or 2^64, is no address). Heaps under
    /// 1 MiB have no per-CPU caches (a cache takes 64 KiB of metadata): every CPU is served through the
    /// central lists' locks until regions make it bigger.
    ///
    /// ```no_run
    /// # use spanalloc::{Heap, platforms::{Uniprocessor, UNIPROCESSOR}};
    /// # const HEAP_START: usize = 0x_4444_4444_0000;
    /// # const HEAP_SIZE: usize = 100 * 1024;
    /// #[global_allocator]
    /// static HEAP: Heap<Uniprocessor> = Heap::new(&UNIPROCESSOR);
    /// // Once the kernel has mapped HEAP_SIZE bytes at HEAP_START:
    /// // SAFETY: mapped, writable, used by nothing else from now on.
    /// unsafe { HEAP.init_region(HEAP_START as *mut u8, HEAP_SIZE) }.expect("heap");
    /// ```
    ///
    /// # Panics
    /// If the heap is initialized already ([`Heap::init`] or a region-mode init succeeded).
    ///
    /// # Safety
    /// `[start, start + len)` is mapped and writable on every CPU that will use the heap, stays so for
    /// the rest of the program, and nothing else reads or writes it from now on. (A region that overlaps
    /// the `Heap` itself or its platform is refused: [`InitError::RegionHoldsHeap`].)
    pub unsafe fn init_region(
        &'static self,
        start: *mut u8,
        len: usize,
    ) -> Result<RegionInfo, InitError> {
        // SAFETY: the caller's contract is ours.
        unsafe { self.init_region_in(start, len, None) }
    }

    /// [`Heap::init_region`] for a region the program owns as a `'static` array, e.g. a
    /// `static mut` one taken once with `&raw mut`. Safe: the exclusive borrow is the contract.
    ///
    /// # Panics
    /// If the heap is initialized already.
    pub fn init_region_from_slice(
        &'static self,
        region: &'static mut [MaybeUninit<u8>],
    ) -> Result<RegionInfo, InitError> {
        // SAFETY: a `&'static mut` slice is mapped, writable, and ours alone for good.
        unsafe { self.init_region(region.as_mut_ptr().cast(), region.len()) }
    }

    /// [`Heap::init_region`] with the reach chosen: later regions must end at most `reach` bytes after
    /// `start` (at least `len`; within `start`'s canonical half, and one 8 KiB page short of its end:
    /// see [`RegionInfo::reach_end`]). The metadata covers the reach: about 8 bytes per 8 KiB of it, in
    /// the first region.
    ///
    /// # Panics
    /// If the heap is initialized already.
    ///
    /// # Safety
    /// As for [`Heap::init_region`].
    pub unsafe fn init_region_with_reach(
        &'static self,
        start: *mut u8,
        len: usize,
        reach: usize,
    ) -> Result<RegionInfo, InitError> {
        // SAFETY: the caller's contract is ours.
        unsafe { self.init_region_in(start, len, Some(reach)) }
    }

    /// `Err` if `[start, start + len)` overlaps this `Heap` or its platform (region mode writes there).
    fn region_clear_of_self(&self, start: *mut u8, len: usize) -> Result<(), InitError> {
        let (s, e) = (
            start.addr() as u64,
            (start.addr() as u64).saturating_add(len as u64),
        );
        let parts = [
            (self as *const Self as u64, size_of::<Self>() as u64),
            (self.platform as *const P as u64, size_of::<P>() as u64),
        ];
        match parts.iter().find(|&&(a, n)| n > 0 && a < e && s < a + n) {
            Some(&(heap, _)) => Err(InitError::RegionHoldsHeap {
                start: s,
                len,
                heap,
            }),
            None => Ok(()),
        }
    }

    /// Region-mode init with the reach given, or (`None`) the default one.
    ///
    /// # Safety
    /// As for [`Heap::init_region`].
    unsafe fn init_region_in(
        &'static self,
        start: *mut u8,
        len: usize,
        reach: Option<usize>,
    ) -> Result<RegionInfo, InitError> {
        let irq = self.platform.mask_interrupts();
        let mut pages = self.pages.lock();
        if pages.is_some() {
            // Told once the lock is released (see `init`).
            drop((pages, irq));
            panic!("spanalloc: Heap initialized twice");
        }
        self.region_clear_of_self(start, len)?;
        // SAFETY: the caller's contract is ours.
        let (heap, info) =
            unsafe { PageHeap::new_region(start.addr() as u64, len, reach, &self.spanmap)? };
        self.caches_off
            .store(heap.heap_bytes() < CACHES_MIN_HEAP, Ordering::Relaxed);
        *pages = Some(heap);
        Ok(info)
    }

    /// Region mode: adds `[start, start + len)`, mapped and writable, to the heap. Regions are added in
    /// increasing address order, above the heap's end and within the reach chosen at init (see
    /// [`RegionInfo::reach_end`]); the heap uses the whole 8 KiB pages the region holds. Returns those
    /// pages, `[start, end)`: a region that starts where the last one ended continues it, so the page
    /// across their boundary is used too. Errors name the region and the rule it breaks; nothing
    /// changes then.
    ///
    /// # Safety
    /// As for [`Heap::init_region`].
    pub unsafe fn add_region(
        &self,
        start: *mut u8,
        len: usize,
    ) -> Result<(VirtAddr, VirtAddr), InitError> {
        let _irq = self.platform.mask_interrupts();
        let mut pages = self.pages.lock();
        let heap = pages.as_mut().ok_or(InitError::NotRegionMode)?;
        self.region_clear_of_self(start, len)?;
        // SAFETY: the caller's contract is ours.
        let added = unsafe { heap.add_region(start.addr() as u64, len)? };
        self.caches_off
            .store(heap.heap_bytes() < CACHES_MIN_HEAP, Ordering::Relaxed);
        Ok(added)
    }

    /// Runs `f` on the heap's address space (its frame allocator, page tables and platform), e.g. to
    /// map the kernel's own pages ([`share`](crate::share)). `None` before `init` and in region mode
    /// (the kernel kept its address space). For frames alone, [`Heap::allocate_frames`] is safe. `f`
    /// runs with the page-heap lock held and interrupts masked: it must not allocate or free through
    /// this heap, which would wait for that lock for good, and should not panic (an `unwrap` of a
    /// mapping's result included): the panic handler would start with that lock held, and one that
    /// allocates (to format its message) waits for it for good. Return the error instead. The frame allocator it lends holds only the
    /// free frames: the heap keeps its free pages mapped as long as a quarter of the frames stay free
    /// (pageheap.rs, "Scavenging"); call [`Heap::trim`] first to take more than that at once.
    ///
    /// # Safety
    /// The heap's objects and metadata live in this address space, so `f` must leave them alone: it
    /// must not unmap, remap or change a mapping inside the heap's window ([`share`](crate::share)'s
    /// methods refuse to), and must not free a frame that it did not allocate itself (through this
    /// method or [`Heap::allocate_frames`]): any other frame may back a heap page or a page table.
    /// Freeing one would let the heap hand the same memory out twice.
    pub unsafe fn with_address_space<R>(
        &self,
        f: impl FnOnce(&mut AddressSpace<P>) -> R,
    ) -> Option<R> {
        let _irq = self.platform.mask_interrupts();
        // A named guard drops before `_irq`; a temporary in the tail expression would be dropped after it
        // (edition 2021), re-enabling interrupts while the lock is still held: an interrupt handler that
        // allocates would then spin on it forever.
        let mut pages = self.pages.lock();
        pages.as_mut().and_then(|h| h.space()).map(f)
    }

    /// `count` contiguous frames, the first a multiple of `align` frames (a power of two), from the
    /// heap's frame allocator, for the kernel's own use (DMA buffers, page tables of its own): they
    /// are the caller's until it gives them back through [`Heap::with_address_space`]. Frames in free
    /// pages the heap keeps mapped count as free: without enough others, the heap empties its page
    /// caches and large cache, unmaps every free page and tries again, and if that is not enough,
    /// unmaps the spare tail frame of every large object and tries once more (as its own mappings do
    /// when they find no frame); it does not try when even all of those could not make up `count`.
    /// `None` before `init`, in region mode, or without such frames (too few, or none contiguous and
    /// aligned as asked).
    /// Panics (before taking any lock) if `count` is 0 or `align` is not a power of two.
    pub fn allocate_frames(&self, count: FrameCount, align: FrameCount) -> Option<PhysFrame> {
        assert!(
            count.0 > 0 && align.0.is_power_of_two(),
            "spanalloc: allocate_frames of {} frames aligned to {} frames: the count must not be 0 and the alignment must be a power of two",
            count.0,
            align.0
        );
        let _irq = self.platform.mask_interrupts();
        // Named so it drops before `_irq` (see `with_address_space`).
        let mut pages = self.pages.lock();
        let heap = pages.as_mut()?;
        let space = heap.space()?; // Region mode: no frames.
        if let Some(first) = space.frames.allocate_contiguous(count, align) {
            return Some(first);
        }
        // The frames may sit in free pages the heap keeps mapped (its scavenger keeps them while frames
        // are plentiful, pageheap.rs): give those back and retry, unless even all of them would not
        // make up the count (then the caches stay: flushing them would cost the heap for nothing).
        let free = space.frames.free_frames().0;
        if count.0 > free.saturating_add(heap.reclaimable_frames() as u64) {
            return None;
        }
        heap.retry_with_frames_given_back(|h| h.space()?.frames.allocate_contiguous(count, align))
    }

    /// Tests: the page heap's counters recounted ([`PageHeap::audit`]); panics on a difference.
    #[cfg(test)]
    pub(crate) fn audit_pages(&self) {
        let _irq = self.platform.mask_interrupts();
        // Named so it drops before `_irq` (see `with_address_space`).
        let pages = self.pages.lock();
        if let Some(heap) = pages.as_ref() {
            heap.audit();
        }
    }

    /// Tests: [`PageHeap::audit`] and [`PageHeap::audit_mappings`]; returns the data frames mapped in
    /// the heap's pages.
    #[cfg(all(test, not(miri)))]
    pub(crate) fn audit_mappings(&self) -> u64 {
        let _irq = self.platform.mask_interrupts();
        // Named so it drops before `_irq` (see `with_address_space`).
        let pages = self.pages.lock();
        pages.as_ref().map_or(0, |heap| {
            heap.audit();
            heap.audit_frames_held();
            heap.audit_mappings()
        })
    }

    /// Whether the heap has its memory: [`Heap::init`] or a region-mode init succeeded.
    pub(crate) fn is_initialized(&self) -> bool {
        let _irq = self.platform.mask_interrupts();
        // Named so it drops before `_irq` (see `with_address_space`).
        let pages = self.pages.lock();
        pages.is_some()
    }

    /// The platform the heap was made with.
    pub fn platform(&self) -> &'static P {
        self.platform
    }

    /// This CPU's cache for a slow path: created on first use; `None` for a CPU without one (index at or
    /// over `Platform::MAX_CPUS`, or no metadata to be had) or whose cache is busy (the caller
    /// interrupted this CPU's fast path), which then takes the locked path.
    ///
    /// # Safety
    /// `cpu` is the index of the CPU running the caller, interrupts stay masked on it while the result is
    /// used, and the caller makes no other `Stacks` of that cache meanwhile.
    #[inline(always)]
    unsafe fn local_cache<'a>(&'a self, cpu: usize) -> Option<Stacks<'a>> {
        if cpu >= P::MAX_CPUS || self.caches_off.load(Ordering::Relaxed) {
            return None;
        }
        let c = match NonNull::new(self.caches[cpu].load(Ordering::Acquire)) {
            Some(c) => c,
            None => self.create_cache(cpu)?,
        };
        // SAFETY: a published cache is an initialized Cache in metadata that lives as long as the heap.
        let cache = unsafe { c.as_ref() };
        // SAFETY: the caller's contract: our CPU, interrupts masked, no other `Stacks`.
        let stacks = unsafe { cache.stacks() };
        if stacks.is_none() {
            self.interrupted_fast_paths.fetch_add(1, Ordering::Relaxed);
        }
        stacks
    }

    #[cold]
    fn create_cache(&self, cpu: usize) -> Option<NonNull<Cache>> {
        debug_assert!(cpu < P::MAX_CPUS);
        let mut guard = self.pages.lock();
        let heap = guard.as_mut()?;
        // Again under the lock: `local_cache` may have read `caches_off` before a region-mode init,
        // which sets it under this lock, and waited here for that init to finish.
        if self.caches_off.load(Ordering::Relaxed) {
            return None;
        }
        let size = core::mem::size_of::<Cache>();
        // (Out of frames, this gives back the free pages the heap keeps mapped and retries; not the
        // spare tails, as this runs again on every slow path while it fails.)
        let mem = heap.meta_alloc_optional(size)?.cast::<Cache>();
        // Stacks sized by the heap's memory: a small heap's caches would strand much of it.
        let shift = cache_shift(heap.memory_bytes());
        // SAFETY: a fresh zeroed metadata block big enough for a Cache; all-zero is a valid Cache (atomics,
        // integers and addresses; not busy), and `init` then lays the stacks out. Not yet published: ours
        // alone.
        unsafe { (*mem.as_ptr()).init(shift) };
        // The empty spans the central lists keep shrink with the caches: both hold memory for reuse.
        self.empty_span_budget
            .store(EMPTY_SPAN_BUDGET >> shift, Ordering::Relaxed);
        self.caches[cpu].store(mem.as_ptr(), Ordering::Release);
        Some(mem)
    }

    #[inline(always)]
    fn alloc_small(&self, class: SizeClass, layout: Layout) -> *mut u8 {
        let p = self.alloc_small_unchecked(class, layout);
        // (A sampled object, or one with a span of its own, lives outside small spans: nothing to track.)
        if FULL_CHECKS && !p.is_null() && self.small_object_entry(class, p).is_some() {
            self.track(class, VirtAddr::from_ptr(p), true)
                .unwrap_or_else(|why| panic!("spanalloc: allocated {p:?}: {why}"));
        }
        p
    }

    /// Full checks: the object's "with a user" bit (see [`Central::track`]).
    #[cold]
    fn track(&self, class: SizeClass, addr: VirtAddr, live: bool) -> Result<(), &'static str> {
        let (span, _) = self.spanmap.lookup(addr).ok_or("not a live heap object")?;
        // The central lock is only ever taken with interrupts masked (an allocating handler would spin on it).
        let _irq = self.platform.mask_interrupts();
        self.central[class.index()].track(span, addr, live)
    }

    /// Whether the fast paths use the cache's busy window: when they run with interrupts enabled
    /// (`Platform::INTERRUPTED_CODE_STAYS_ON_CPU`) and an interrupt handler may allocate
    /// (`Platform::INTERRUPT_HANDLERS_ALLOCATE`). Otherwise nothing can land in the middle of a pop or
    /// push on this CPU's cache: interrupts are masked there, or no handler uses the heap.
    const GUARD_CACHE: bool = P::INTERRUPTED_CODE_STAYS_ON_CPU && P::INTERRUPT_HANDLERS_ALLOCATE;

    /// Masks interrupts for a fast path if the platform cannot promise that interrupted code stays on its
    /// CPU (see `Platform::INTERRUPTED_CODE_STAYS_ON_CPU`); nothing otherwise.
    #[inline(always)]
    fn fast_path_guard(&self) -> Option<P::InterruptGuard> {
        (!P::INTERRUPTED_CODE_STAYS_ON_CPU).then(|| self.platform.mask_interrupts())
    }

    /// The fast path: a pop from this CPU's existing cache. Everything else (no cache yet, or none for
    /// this CPU; an empty stack; a busy cache) is one out-of-line call, so the fast path saves no
    /// registers. With `P::SAMPLING`, the allocation also counts its bytes down to the next sampling
    /// event inside the pop (one subtraction and one branch; sample.rs).
    #[inline(always)]
    fn alloc_small_unchecked(&self, class: SizeClass, layout: Layout) -> *mut u8 {
        {
            let _irq = self.fast_path_guard();
            let cpu = self.platform.cpu_index();
            if let Some(cache) = self.existing_cache(cpu) {
                let count = P::SAMPLING.then_some(layout.size());
                // SAFETY: `cpu` is the running CPU's index, which stays ours until the block ends: the
                // platform promises interrupted code stays on its CPU, or we masked interrupts; the busy
                // window is skipped only if the platform promises no interrupt handler allocates.
                if let Some(p) = unsafe { cache.pop(class, Self::GUARD_CACHE, count) } {
                    let p = p.as_mut_ptr();
                    // SAFETY: `p` was just taken from the cache: the start of a mapped object of `class`
                    // that only we hold.
                    unsafe { freemark::clear(p, class) };
                    return p;
                }
            }
        }
        self.alloc_small_miss(class, layout)
    }

    /// CPU `cpu`'s cache if it exists (no creation): the fast paths' view.
    #[inline(always)]
    fn existing_cache(&self, cpu: usize) -> Option<&Cache> {
        if cpu >= P::MAX_CPUS {
            return None;
        }
        // SAFETY: a published cache is an initialized Cache in metadata that lives as long as the heap;
        // a shared reference asserts nothing about its stacks (interior mutability).
        unsafe { self.caches[cpu].load(Ordering::Acquire).as_ref() }
    }

    #[cold]
    #[inline(never)]
    fn alloc_small_miss(&self, class: SizeClass, layout: Layout) -> *mut u8 {
        let _irq = self.platform.mask_interrupts();
        let cpu = self.platform.cpu_index_slow();
        if P::SAMPLING {
            // The stack is recorded from this function's frame out: it starts in the heap's caller.
            let frame = crate::profile::stack::current_frame();
            // SAFETY: `cpu` is ours and interrupts are masked until we return.
            if let Some(p) = unsafe { self.sample_small(cpu, layout, frame) } {
                return p;
            }
        }
        if own_span_in_small_heap(class) && self.own_spans.load(Ordering::Relaxed) {
            // (Its bytes were counted towards sampling by the pop that missed.)
            return self.alloc_large(layout, Some(class), false);
        }
        // SAFETY: `cpu` is ours and interrupts are masked until we return.
        unsafe { self.alloc_small_slow(cpu, class) }
    }

    /// # Safety
    /// As for [`Heap::local_cache`].
    #[cold]
    unsafe fn alloc_small_slow(&self, cpu: usize, class: SizeClass) -> *mut u8 {
        // SAFETY: forwarded from the caller.
        let Some(mut cache) = (unsafe { self.local_cache(cpu) }) else {
            // No cache for this CPU (or it is busy: we interrupted its fast path): one object straight
            // from the central list.
            let mut one = [VirtAddr::zero()];
            let n = self.refill(class, &mut one, None);
            if n == 0 {
                return ptr::null_mut();
            }
            let p = one[0].as_mut_ptr();
            // SAFETY: a fresh object from its span, only ours.
            unsafe { freemark::clear(p, class) };
            return p;
        };
        let batch = (cache.cap(class) / 2).max(1);
        let spare = cache.spare_slots(class);
        let want = batch.min(spare.len());
        let mut n = self.refill(class, &mut spare[..want], Some(cpu));
        if n == 0 && cache.cached(class.index()) == 0 && self.drain_cache(&mut cache) {
            // Out of memory: the objects this CPU caches went back to their spans (and the spans left
            // empty to the page heap, in `refill`); try once more.
            let spare = cache.spare_slots(class);
            let want = batch.min(spare.len());
            n = self.refill(class, &mut spare[..want], Some(cpu));
        }
        cache.filled(class, n);
        match cache.pop(class) {
            Some(p) => {
                let p = p.as_mut_ptr();
                // SAFETY: a fresh object from the cache, only ours.
                unsafe { freemark::clear(p, class) };
                p
            }
            None => ptr::null_mut(),
        }
    }

    /// Up to `out.len()` free objects of `class` from its central list. When the page heap has no span
    /// for it, the empty spans other classes keep are given back first and the refill tried once more:
    /// in a small heap they may be all its pages.
    fn refill(&self, class: SizeClass, out: &mut [VirtAddr], cpu: Option<usize>) -> usize {
        let central = &self.central[class.index()];
        match central.refill(class, out, &self.pages, cpu) {
            0 if self.release_empty_spans() > 0 => central.refill(class, out, &self.pages, cpu),
            n => n,
        }
    }

    /// Gives every span whose objects are all free back to the page heap (the central lists each keep
    /// one against thrashing). Returns how many. Takes the class locks, then the page-heap lock: the
    /// caller holds neither.
    #[cold]
    fn release_empty_spans(&self) -> usize {
        let _irq = self.platform.mask_interrupts();
        self.central
            .iter()
            .map(|c| c.release_empty(&self.pages))
            .sum()
    }

    /// The span-map entry of `ptr`'s page if `ptr` starts an object of an in-use explicit-heap span of
    /// `class` (not foreign, not a collector's, not interior, not in a span's tail), else `None`: the
    /// entry alone answers, without touching the span.
    #[inline(always)]
    fn small_object_entry(&self, class: SizeClass, ptr: *mut u8) -> Option<u64> {
        let raw = self.spanmap.raw_entry(ptr as u64);
        // A small class's kind is never 0, so this also refuses pages without a span.
        (spanmap::kind_of(raw) == Entry::explicit_kind(class)
            && class.is_object_start(spanmap::offset_in_span(raw, ptr as u64)))
        .then_some(raw)
    }

    /// The span-map entry of `ptr` if it is a small object of `class` that a user may hold: an object
    /// start (see [`Heap::small_object_entry`]) not carrying its free mark.
    #[inline(always)]
    fn live_small_entry(&self, class: SizeClass, ptr: *mut u8) -> Option<u64> {
        self.small_object_entry(class, ptr).filter(|&entry| {
            // SAFETY: `ptr` starts an object of an in-use span (checked by `small_object_entry`), so it
            // is mapped and its mark word in bounds, as long as the caller really holds it or its span
            // stays in use (a free racing with another free of the same object is out of scope: see
            // freemark.rs); the caller claims to hold it.
            !unsafe { freemark::is_free(ptr, class, entry) }
        })
    }

    /// The span-map entry of `addr`'s page, which must belong to an in-use span of the explicit heap;
    /// panics naming the reason otherwise (the first two checks of every refused free).
    #[track_caller]
    fn explicit_entry(&self, op: Op, addr: VirtAddr, layout: Layout) -> Entry {
        self.explicit_entry_or(addr)
            .unwrap_or_else(|r| r.raise(op, addr, layout))
    }

    /// [`Heap::explicit_entry`]'s checks, returning the refusal instead of raising it (for callers
    /// that hold a lock, which must be released before the panic: [`Refusal`]).
    fn explicit_entry_or(&self, addr: VirtAddr) -> Result<Entry, Refusal> {
        let e = self.spanmap.entry(addr.as_u64()).ok_or(Refusal::NotLive)?;
        if e.owner() == Owner::Collector {
            return Err(Refusal::Collector);
        }
        Ok(e)
    }

    /// [`Heap::refuse_small`] for an object found carrying its free mark, reached by a jump: returning
    /// `()` rather than `!` lets the free path tail-call it, so that path keeps no frame for it.
    #[cold]
    #[inline(never)]
    fn refuse_marked(&self, op: Op, ptr: *mut u8, layout: Layout, class: SizeClass) {
        self.refuse_small(op, ptr, layout, class)
    }

    /// A small object failed [`Heap::live_small_entry`] (or was found carrying its free mark): find out why
    /// and panic saying so.
    #[cold]
    #[inline(never)]
    #[track_caller]
    fn refuse_small(&self, op: Op, ptr: *mut u8, layout: Layout, class: SizeClass) -> ! {
        let addr = canonical(op, ptr, layout);
        let e = self.explicit_entry(op, addr, layout);
        let got = e.class().size_class();
        if got != class {
            if got.is_large() {
                self.refuse_small_in_large(op, addr, layout, class, e)
            }
            bad_free(
                op,
                addr,
                layout,
                format_args!(
                    "the layout's size class differs from the allocation's (class {} of {} B, the layout says class {} of {} B)",
                    got.get(),
                    got.size(),
                    class.get(),
                    class.size()
                ),
            )
        }
        let offset = e.offset_in_span(ptr as u64);
        if offset >= class.objects_per_span() * class.size() {
            bad_free(
                op,
                addr,
                layout,
                format_args!("not an object: in the unused tail of its span"),
            )
        }
        let idx = class.object_start(offset);
        let Some(idx) = idx else {
            let object = addr - (offset % class.size()) as u64;
            bad_free(
                op,
                addr,
                layout,
                format_args!(
                    "interior pointer into the object at {:#x} ({} B)",
                    object.as_u64(),
                    class.size()
                ),
            )
        };
        let cached = {
            let _irq = self.platform.mask_interrupts();
            // The entry was read without a lock: under the class lock, look again (another CPU's flush
            // may have released the span meanwhile; then the free is of a freed span's object).
            self.central[class.index()].is_allocated(idx, || {
                self.spanmap
                    .entry(addr.as_u64())
                    .filter(|&now| now == e)
                    .map(|now| now.span())
            })
        };
        let Some(cached) = cached else {
            bad_free(
                op,
                addr,
                layout,
                format_args!("not a live heap object (its span was freed meanwhile)"),
            )
        };
        if cached {
            bad_free(
                op,
                addr,
                layout,
                format_args!("double free: the object is already free, waiting in a CPU cache"),
            )
        }
        bad_free(
            op,
            addr,
            layout,
            format_args!("double free: the object is already free in its span (freed before, or never allocated)"),
        )
    }

    /// [`Heap::refuse_small`] of a pointer into a large span (entry `e`): an interior pointer, or the
    /// start of an object whose layout is a large one or another small class (a span of its own, or
    /// an in-place `realloc`). Panics saying which.
    #[cold]
    #[track_caller]
    fn refuse_small_in_large(
        &self,
        op: Op,
        addr: VirtAddr,
        layout: Layout,
        class: SizeClass,
        e: Entry,
    ) -> ! {
        let found = {
            let _irq = self.platform.mask_interrupts();
            // Under the page-heap lock, which keeps the span from being released meanwhile; the entry
            // is read again (a concurrent free may have released the span since).
            let guard = self.pages.lock();
            let found = self
                .spanmap
                .entry(addr.as_u64())
                .filter(|&now| now == e)
                .map(|e| {
                    // SAFETY: an in-use large span (its entry, read under the lock), read only.
                    let s = unsafe { e.span().as_ref() };
                    (s.base(), s.small_layout(), s.npages())
                });
            drop(guard);
            found
        };
        match found {
            None => bad_free(
                op,
                addr,
                layout,
                format_args!("not a live heap object (its span was freed meanwhile)"),
            ),
            Some((base, _, _)) if base != addr => bad_free(
                op,
                addr,
                layout,
                format_args!("interior pointer of the large object at {:#x}", base.as_u64()),
            ),
            Some((_, small, npages)) => bad_free(
                op,
                addr,
                layout,
                format_args!(
                    "the layout's size class differs from the allocation's ({}, the layout says class {} of {} B)",
                    LayoutKind(small, npages),
                    class.get(),
                    class.size()
                ),
            ),
        }
    }

    /// `dealloc` of a large layout, out of line: inline, its call to check the address (which may panic)
    /// needed a register more saved and restored around every `dealloc` (measured: one instruction less
    /// per small free out of line).
    #[inline(never)]
    fn dealloc_large(&self, ptr: *mut u8, layout: Layout) {
        self.free_large(canonical(Op::Dealloc, ptr, layout), layout, None)
    }

    /// The free of a small object whose span-map entry `small_object_entry` found: the free mark (a
    /// double free is refused), full checks, then the push. Shared by `dealloc` and a moving `realloc`,
    /// which checked the object once already.
    ///
    /// # Safety
    /// `entry` is `ptr`'s span-map entry and `ptr` starts an object of `class` in that in-use span of
    /// the explicit heap ([`Heap::small_object_entry`]); the caller gives the object back.
    #[inline(always)]
    unsafe fn free_small_entry(
        &self,
        op: Op,
        ptr: *mut u8,
        layout: Layout,
        class: SizeClass,
        entry: u64,
    ) {
        // SAFETY: `ptr` starts an object of an in-use explicit-heap span (the caller's promise): mapped,
        // its mark word in bounds, while the caller holds it (the caller gives it back; a free racing
        // with another free of it is out of scope, see freemark.rs).
        if unsafe { freemark::stamp_was_free(ptr, class, entry) } {
            return self.refuse_marked(op, ptr, layout, class);
        }
        if FULL_CHECKS {
            let addr = VirtAddr::new_truncate(ptr as u64);
            if let Err(why) = self.track(class, addr, false) {
                bad_free(op, addr, layout, format_args!("{why}"))
            }
        }
        self.free_small(class, ptr)
    }

    /// Gives back an object that carries its free mark now: a push on this CPU's existing cache, or one
    /// out-of-line call for everything else (so the fast path saves no registers).
    #[inline(always)]
    fn free_small(&self, class: SizeClass, ptr: *mut u8) {
        // SAFETY: `ptr` is in the heap (checked by the caller), hence canonical.
        let obj = unsafe { VirtAddr::new_unsafe(ptr as u64) };
        {
            let _irq = self.fast_path_guard();
            let cpu = self.platform.cpu_index();
            if let Some(cache) = self.existing_cache(cpu) {
                // SAFETY: as in `alloc_small_unchecked`.
                if unsafe { cache.push(class, obj, Self::GUARD_CACHE) } {
                    return;
                }
            }
        }
        self.free_small_miss(class, obj)
    }

    #[cold]
    #[inline(never)]
    fn free_small_miss(&self, class: SizeClass, obj: VirtAddr) {
        let _irq = self.platform.mask_interrupts();
        let cpu = self.platform.cpu_index_slow();
        // SAFETY: `cpu` is ours and interrupts are masked until we return.
        let Some(mut cache) = (unsafe { self.local_cache(cpu) }) else {
            // No cache for this CPU (or it is busy: we interrupted its fast path): give the object
            // straight back to its span.
            return self.central[class.index()].flush(
                class,
                &[obj],
                self.spans(),
                &self.pages,
                self.empty_span_budget(),
            );
        };
        if !cache.push(class, obj) {
            self.flush_half(&mut cache, class);
            let pushed = cache.push(class, obj);
            debug_assert!(pushed);
        }
    }

    #[cold]
    fn flush_half(&self, cache: &mut Stacks<'_>, class: SizeClass) {
        let n = (cache.cap(class) / 2).max(1);
        let central = &self.central[class.index()];
        cache.drain_bottom(class, n, |objs| {
            central.flush(
                class,
                objs,
                self.spans(),
                &self.pages,
                self.empty_span_budget(),
            )
        });
    }

    /// Bytes of empty spans each central list keeps for its next refills (see central.rs): scaled by the
    /// heap's memory as the caches are; none beyond one span in a heap too small for per-CPU caches,
    /// where every page counts.
    fn empty_span_budget(&self) -> usize {
        if self.caches_off.load(Ordering::Relaxed) {
            0
        } else {
            self.empty_span_budget.load(Ordering::Relaxed)
        }
    }

    fn spans(&self) -> impl Fn(VirtAddr) -> Option<NonNull<Span>> + '_ {
        |a| self.spanmap.lookup(a).map(|(s, _)| s)
    }

    /// A large span for an object of `layout`: a large one (`small` is `None`), or one of the small
    /// class `small` that gets a span of its own ([`own_span_in_small_heap`]; the span records the
    /// class as an in-place `realloc` below 32 KiB does, and its bytes were counted towards sampling by
    /// the small path already). Not inlined: its frame is where a sampled large object's recorded
    /// stack starts.
    #[inline(never)]
    fn alloc_large(&self, layout: Layout, small: Option<SizeClass>, zero: bool) -> *mut u8 {
        let Some(npages) = large_pages(layout.size()) else {
            return ptr::null_mut();
        };
        let align = (layout.align() / PAGE_SIZE).max(1);
        let _irq = self.platform.mask_interrupts();
        let cpu = self.platform.cpu_index_slow();
        let cpu = (cpu < P::MAX_CPUS).then_some(cpu);
        let class = SpanClass::new(SizeClass::LARGE, false);
        // Heap sampling decides, and takes the stack, before the span is taken: a sample is recorded
        // under the page-heap lock that takes the span, as frees forget records under the lock that
        // frees it (sample.rs). Recorded after that lock was dropped, a racing free of the address and
        // an in-place `realloc` that ended meanwhile (which records only where it finds no record)
        // could leave two records of the address, one of them outliving the object.
        let sample = if P::SAMPLING && small.is_none() {
            self.large_sample(layout.size(), crate::profile::stack::current_frame())
        } else {
            None
        };
        // The span's base and whether it needs zeroing, read under the lock: no reference to the span
        // is held outside it (an allocation out of frames may trim its tail meanwhile: pageheap.rs).
        let alloc = || {
            let mut guard = self.pages.lock();
            let span = guard.as_mut()?.alloc_large_span(
                npages.0,
                align,
                class,
                cpu,
                layout.size(),
                small,
            )?;
            self.large_objects.add(1);
            self.large_pages.add(npages.0);
            // SAFETY: a fresh in-use span, read under the page-heap lock.
            let s = unsafe { span.as_ref() };
            if let Some(sample) = &sample {
                self.record_large(s.base(), layout.size(), sample);
            }
            Some((s.base(), s.needzero()))
        };
        // No room: the central lists' empty spans may hold it (see `refill`), and then the spans this
        // CPU's cached objects keep from being empty.
        let span = alloc()
            .or_else(|| (self.release_empty_spans() > 0).then(alloc).flatten())
            .or_else(|| {
                // SAFETY: `cpu` is ours (read above) and interrupts are masked until we return; no other
                // `Stacks` of our cache exists in this function.
                let drained = cpu.is_some_and(|c| unsafe { self.drain_local_cache(c) });
                // (The flushes may have given the empty spans back already: retry in any case.)
                drained
                    .then(|| self.release_empty_spans())
                    .and_then(|_| alloc())
            });
        let Some((base, needzero)) = span else {
            return ptr::null_mut();
        };
        let p = base.as_mut_ptr::<u8>();
        if zero && needzero {
            // SAFETY: the span's pages are mapped and ours; npages * PAGE_SIZE >= layout.size().
            unsafe { ptr::write_bytes(p, 0, layout.size()) };
        }
        p
    }

    /// The large span of the object at `addr` freed or resized with `layout`, checked under the page-heap
    /// lock (the caller holds it: a concurrent free may release the span): an explicit-heap large span
    /// starting at `addr` whose object has the layout's kind: `small` is the layout's size class if it
    /// is a small one (then the object must have been reallocated in place to that class), `None` for a
    /// large layout (then the object's layout must be large, of the span's page count). In both cases
    /// the layout's size must not reach a spare tail frame, mapped or trimmed (pageheap.rs): the object
    /// ends before it, and a moving `realloc` copies `layout.size()` bytes. The refusal otherwise, which the
    /// caller raises once it has released the lock ([`Refusal`]).
    fn checked_large(
        &self,
        addr: VirtAddr,
        layout: Layout,
        small: Option<SizeClass>,
    ) -> Result<NonNull<Span>, Refusal> {
        let e = self.explicit_entry_or(addr)?;
        let class = e.class().size_class();
        if !class.is_large() {
            return Err(Refusal::NotLarge(class));
        }
        let span = e.span();
        // SAFETY: a large span belongs to its object, which the caller holds; the page-heap lock (held by
        // the caller) keeps it from being released meanwhile. Read only.
        let s = unsafe { span.as_ref() };
        if s.base() != addr {
            return Err(Refusal::Interior(s.base()));
        }
        match (small, s.small_layout()) {
            (None, None) => {
                if large_pages(layout.size()) != Some(s.npages()) {
                    return Err(Refusal::Pages(s.npages()));
                }
            }
            (Some(want), Some(got)) if want == got => {}
            (want, got) => {
                return Err(Refusal::Class {
                    got,
                    want,
                    npages: s.npages(),
                })
            }
        }
        // An object whose last page's second frame is spare ends before that frame (a trimmed tail is
        // spare too): a layout reaching into it is larger than the allocation, refused whether the frame
        // is mapped now or not. Mapped now is not enough: a moving `realloc` allocates after this check,
        // and an allocation that finds no frame unmaps every spare tail frame (pageheap.rs,
        // `trim_spare_tails`), this object's too, before the move copies `layout.size()` bytes.
        debug_assert!(s.tail_spare || !s.tail_unmapped);
        let mapped = s.npages().0 * PAGE_SIZE - if s.tail_spare { FRAME_SIZE as usize } else { 0 };
        if layout.size() > mapped {
            return Err(Refusal::TrimmedTail {
                npages: s.npages(),
                mapped,
            });
        }
        Ok(span)
    }

    /// A refusal of a large layout, named more precisely where heap sampling knows the address: a
    /// guarded small object lives in the guard pool, outside the span map, so it was refused as no live
    /// object at all. Called with no lock held (the guard pool's lock is taken here).
    #[cold]
    fn diagnosed(&self, r: Refusal, addr: VirtAddr) -> Refusal {
        match r {
            Refusal::NotLive if P::SAMPLING => self
                .guarded_size(addr)
                .map_or(r, |size| Refusal::ProfiledSmall(size as u64)),
            r => r,
        }
    }

    /// [`Heap::checked_large`], then (heap sampling) the object's profile record forgotten
    /// ([`Heap::forget_large`]), both under the page-heap lock the caller holds: the object's span, or
    /// the refusal for the caller to raise once it has released that lock.
    fn checked_and_forgotten(
        &self,
        op: Op,
        addr: VirtAddr,
        layout: Layout,
        small: Option<SizeClass>,
    ) -> Result<NonNull<Span>, Refusal> {
        let span = self.checked_large(addr, layout, small)?;
        if P::SAMPLING {
            self.forget_large(op, addr)?;
        }
        Ok(span)
    }

    /// Frees the large object at `addr` (checked as [`Heap::checked_large`] does, with `small` the
    /// layout's size class when that is a small one: an object reallocated in place below 32 KiB).
    fn free_large(&self, addr: VirtAddr, layout: Layout, small: Option<SizeClass>) {
        let _irq = self.platform.mask_interrupts();
        let mut guard = self.pages.lock();
        let span = match self.checked_and_forgotten(Op::Dealloc, addr, layout, small) {
            Ok(span) => span,
            Err(r) => {
                drop((guard, _irq));
                self.diagnosed(r, addr).raise(Op::Dealloc, addr, layout)
            }
        };
        let heap = guard.as_mut().expect("large spans exist only after init");
        // SAFETY: a large span belongs to its object, which the caller is freeing.
        let npages = unsafe { span.as_ref() }.npages().0;
        // SAFETY: the caller frees the span's one object: nobody uses the span after this.
        unsafe { heap.free_large_span(span) };
        heap.scavenge_if_needed();
        self.large_objects.sub(1);
        self.large_pages.sub(npages);
    }

    /// Whether `ptr` starts a large object that was reallocated in place to a small layout of `class`
    /// (see [`Heap::realloc_large`]): where a small layout's free or realloc that found no small object
    /// looks before refusing it. Never panics; the caller's next step checks again, under the lock.
    #[cold]
    #[inline(never)]
    fn is_small_in_large(&self, ptr: *mut u8, class: SizeClass) -> bool {
        let Ok(addr) = VirtAddr::try_new(ptr as u64) else {
            return false;
        };
        let _irq = self.platform.mask_interrupts();
        // Named so it drops before `_irq` (see `with_address_space`). Held while the span is read: a
        // concurrent free of its object may release it.
        let guard = self.pages.lock();
        let Some(e) = self.spanmap.entry(addr.as_u64()) else {
            return false;
        };
        if e.owner() == Owner::Collector || !e.class().size_class().is_large() {
            return false;
        }
        // SAFETY: an in-use large span (the span map says so, under the page-heap lock that keeps it
        // from being released meanwhile). Read only.
        let s = unsafe { e.span().as_ref() };
        let found = s.base() == addr && s.small_layout() == Some(class);
        drop(guard);
        found
    }

    /// The free of a small layout whose pointer starts no object of its class in a small span: a
    /// sampled object, or a large object kept at this class by an in-place `realloc`, is given back;
    /// anything else is refused, naming the reason. One out-of-line call for the free fast path.
    #[cold]
    #[inline(never)]
    #[track_caller]
    fn free_small_elsewhere(&self, ptr: *mut u8, layout: Layout, class: SizeClass) {
        if P::SAMPLING && self.free_sampled_small(ptr, layout, class) {
            return;
        }
        if self.is_small_in_large(ptr, class) {
            return self.free_large(canonical(Op::Dealloc, ptr, layout), layout, Some(class));
        }
        self.refuse_small(Op::Dealloc, ptr, layout, class)
    }

    /// Checks the large object at `addr` (as `dealloc` would; `small` as for [`Heap::free_large`]) and
    /// tries to resize it in place to `new_size`; `true` if it now holds `new_size` bytes.
    ///
    /// In place: the span keeps the pages covering `new_size` (`PageCount::covering`) and gives its tail
    /// back to the page heap, or takes the free pages right after it (`PageHeap::grow_in_place`). That
    /// includes a new size of a small class (a large object shrinking below 32 KiB) when it is at least
    /// [`IN_PLACE_SMALL_MIN`]: the object stays in its large span, which records the class
    /// (`Span::small_layout`) so that the next `dealloc` or `realloc` with that layout is checked as
    /// strictly as any other (see the module invariants) and finds it. The waste is under one page,
    /// as for any large object, and under half the pages kept. Smaller sizes move into a size class.
    fn realloc_large(
        &self,
        addr: VirtAddr,
        layout: Layout,
        small: Option<SizeClass>,
        new_size: usize,
    ) -> bool {
        let _irq = self.platform.mask_interrupts();
        let mut guard = self.pages.lock();
        let span = match self.checked_and_forgotten(Op::Realloc, addr, layout, small) {
            Ok(span) => span,
            Err(r) => {
                drop((guard, _irq));
                self.diagnosed(r, addr).raise(Op::Realloc, addr, layout)
            }
        };
        // A base is page-aligned, so every small class's alignment is met; beyond a page the layout
        // has no small class.
        let new_class = SizeClass::for_layout(new_size, layout.align());
        if new_class.is_some() && new_size < IN_PLACE_SMALL_MIN {
            return false;
        }
        let Some(new_pages) = large_pages(new_size) else {
            return false;
        };
        let heap = guard.as_mut().expect("large spans exist only after init");
        // SAFETY: the caller owns the large object and so its span.
        let old = unsafe { span.as_ref() }.npages().0;
        if new_pages.0 == old
            && new_size + FRAME_SIZE as usize > old * PAGE_SIZE
            // SAFETY: as above.
            && !unsafe { heap.untrim_or_give_back(span) }
        {
            // The same pages, and the new size reaches a trimmed tail (pageheap.rs) no frame can map.
            return false;
        }
        if new_pages.0 < old {
            // SAFETY: as above; keep < old.
            unsafe { heap.shrink_in_place(span, new_pages.0) };
            heap.scavenge_if_needed();
            self.large_pages.sub(old - new_pages.0);
        } else if new_pages.0 > old {
            // SAFETY: as above.
            if unsafe { heap.grow_in_place(span, new_pages.0 - old) }.is_none() {
                return false;
            }
            self.large_pages.add(new_pages.0 - old);
        }
        // SAFETY: as above; the pages cover `new_size`, and a trimmed tail it reaches was mapped above
        // (same pages: `untrim`; growth: `grow_in_place` untrims; a shrink settles the trimmed page).
        unsafe { heap.set_large_object_bytes(span, new_size) };
        // SAFETY: as above; no other reference to the span is live (the page heap's ended with its
        // call), so this one does not alias.
        unsafe { &mut *span.as_ptr() }.set_small_layout(new_class);
        if P::SAMPLING {
            // Profiled as a moving `realloc` is: the old object's record goes under the lock that
            // resized it, as a free's goes under the lock that frees; the new size is then counted as
            // an allocation, once the lock is released (sampling may create this CPU's cache, which
            // takes it).
            self.forget_resized_large(addr);
            drop(guard);
            let profiled = new_class.map_or(new_size, |c| c.size());
            self.sample_resized_large(
                addr,
                new_size,
                profiled,
                crate::profile::stack::current_frame(),
            );
        }
        true
    }

    /// Returns **this CPU's** cached objects to their spans, releases spans that are empty, and unmaps
    /// every free page: afterwards the frames held are those of live objects, metadata, and the objects
    /// other CPUs still cache. A CPU's cache is used without a lock, so no other CPU can empty it: each
    /// CPU calls `trim` itself to give back what it caches (at most a few hundred KiB per CPU: 32 KiB or
    /// 256 objects per size class). A live large object keeps the spare second frame of its last page
    /// (when it ends before it): unmapping those costs a TLB shootdown each and a map again if the
    /// object grows, so only a mapping or [`Heap::allocate_frames`] that finds no other frame takes
    /// them.
    pub fn trim(&self) {
        let _irq = self.platform.mask_interrupts();
        // SAFETY: the index is ours and interrupts are masked until we return.
        if let Some(mut cache) = unsafe { self.local_cache(self.platform.cpu_index_slow()) } {
            self.drain_cache(&mut cache);
        }
        for c in &self.central {
            c.release_empty(&self.pages);
        }
        // Named so it drops before `_irq` (see `with_address_space`).
        let mut pages = self.pages.lock();
        if let Some(heap) = pages.as_mut() {
            heap.flush_page_caches();
            heap.scavenge(usize::MAX);
        }
    }

    /// Gives every object `cache` holds back to its span (spans left empty stay with their central
    /// lists: `release_empty_spans` gives them back). Returns whether it held any.
    fn drain_cache(&self, cache: &mut Stacks<'_>) -> bool {
        let mut any = false;
        for class in SizeClass::small() {
            let c = class.index();
            let n = cache.cached(c);
            if n > 0 {
                any = true;
                cache.drain_bottom(class, n, |objs| {
                    self.central[c].flush(class, objs, self.spans(), &self.pages, 0)
                });
            }
        }
        any
    }

    /// [`Heap::drain_cache`] on `cpu`'s cache if it exists and is not busy (never creates one).
    ///
    /// # Safety
    /// As for [`Heap::local_cache`].
    #[cold]
    unsafe fn drain_local_cache(&self, cpu: usize) -> bool {
        if self.existing_cache(cpu).is_none() {
            return false;
        }
        // SAFETY: forwarded from the caller.
        match unsafe { self.local_cache(cpu) } {
            Some(mut cache) => self.drain_cache(&mut cache),
            None => false,
        }
    }

    /// A snapshot of the heap's counters (like Go's MemStats).
    pub fn stats(&self) -> Stats {
        // Masked for the central locks too: an interrupt handler allocating on this CPU would spin on them.
        let _irq = self.platform.mask_interrupts();
        let mut s = Stats::default();
        for class in SizeClass::small() {
            let c = class.index();
            let central = self.central[c].stats();
            let cached: usize = (0..P::MAX_CPUS)
                .filter_map(|cpu| self.cache_ref(cpu))
                .map(|k| k.cached(c))
                .sum();
            let size = class.size();
            let objects = central.out.saturating_sub(cached);
            s.classes[c] = ClassStats {
                size,
                objects,
                bytes: objects * size,
                cached,
                spans: central.spans,
            };
        }
        s.interrupted_fast_paths = self.interrupted_fast_paths.load(Ordering::Relaxed);
        let pages = self.pages.lock();
        // Under the lock their writers hold: a consistent pair.
        s.large_objects = self.large_objects.get();
        s.large_bytes = self.large_pages.get() * PAGE_SIZE;
        if let Some(heap) = pages.as_ref() {
            s.pages = heap.stats();
            if let Some(space) = heap.space_ref() {
                s.frames_held = space.frames_held();
                s.frames_free = space.frames.free_frames();
            }
        } else {
            s.frames_held = FrameCount(0);
        }
        s
    }

    fn cache_ref(&self, cpu: usize) -> Option<&Cache> {
        // Reading stack lengths from another CPU is what their atomic tops are for.
        self.existing_cache(cpu)
    }
}

/// The least new size of a small class a large object is reallocated to in place (see
/// [`Heap::realloc_large`]): one heap page, so that the pages it keeps are at most twice what it needs.
/// Below it, a copy of at most 8 KiB into a size class costs less than the page-heap lock its free
/// would take as a large object, and packs tighter.
const IN_PLACE_SMALL_MIN: usize = PAGE_SIZE;

/// Whether objects of `class` get a large span of their own in a heap with `Heap::own_spans` set:
/// classes over one heap page whose spans hold several objects (9.25 to 28 KiB; their spans are 5 to
/// 10 pages). In a small heap the partly used span each such class keeps was the biggest loss when
/// memory ran out (talc's heap-efficiency fill at 16 MiB: some 2% of the heap in those spans' free
/// slots); a span of its own wastes under one page, half of that on average once its spare tail frame
/// is trimmed (pageheap.rs). It costs the page-heap lock on every allocation and free of these sizes,
/// which a heap with full-size caches keeps.
const fn own_span_in_small_heap(class: SizeClass) -> bool {
    class.size() > PAGE_SIZE && class.objects_per_span() > 1
}

/// Why a free or realloc is refused, found under a lock and raised (a panic naming it, `bad_free`)
/// only once the lock is released: a panic path that allocates (a hook that formats, std boxing the
/// payload when this heap is the global allocator) would otherwise spin on the page-heap lock for good,
/// and the message would never get out.
enum Refusal {
    /// No span-map entry.
    NotLive,
    /// The collector's object.
    Collector,
    /// A small object of this class, freed with a large layout.
    NotLarge(SizeClass),
    /// Inside the large object starting at this address.
    Interior(VirtAddr),
    /// A large layout of another page count than the object's.
    Pages(PageCount),
    /// The layout's kind differs from the object's (a small class kept in a large span, or none).
    Class {
        got: Option<SizeClass>,
        want: Option<SizeClass>,
        npages: PageCount,
    },
    /// The layout's size reaches into the object's last page's second frame, which holds none of the
    /// object (spare, or trimmed: pageheap.rs), so it is larger than the object.
    TrimmedTail { npages: PageCount, mapped: usize },
    /// The heap profile knows a small object of this size at the address.
    ProfiledSmall(u64),
}

impl Refusal {
    #[cold]
    #[inline(never)]
    #[track_caller]
    fn raise(self, op: Op, addr: VirtAddr, layout: Layout) -> ! {
        match self {
            Refusal::NotLive => bad_free(
                op,
                addr,
                layout,
                format_args!(
                    "not a live heap object (freed already, or never allocated by this heap)"
                ),
            ),
            Refusal::Collector => bad_free(
                op,
                addr,
                layout,
                format_args!("an object of a garbage-collected heap (only its collector frees it)"),
            ),
            Refusal::NotLarge(class) => bad_free(
                op,
                addr,
                layout,
                format_args!(
                    "the layout's size class differs from the allocation's (class {} of {} B, the layout says a large object)",
                    class.get(),
                    class.size()
                ),
            ),
            Refusal::Interior(base) => bad_free(
                op,
                addr,
                layout,
                format_args!("interior pointer of the large object at {:#x}", base.as_u64()),
            ),
            Refusal::Pages(npages) => bad_free(
                op,
                addr,
                layout,
                format_args!(
                    "the layout's size differs from the allocation's ({} pages)",
                    npages.0
                ),
            ),
            Refusal::Class { got, want, npages } => bad_free(
                op,
                addr,
                layout,
                format_args!(
                    "the layout's size class differs from the allocation's ({}, the layout says {})",
                    LayoutKind(got, npages),
                    LayoutKind(want, npages),
                ),
            ),
            Refusal::TrimmedTail { npages, mapped } => bad_free(
                op,
                addr,
                layout,
                format_args!(
                    "the layout's size is larger than the allocation ({} pages, ending before the last one's second 4 KiB frame: at most {mapped} B)",
                    npages.0
                ),
            ),
            Refusal::ProfiledSmall(size) => bad_free(
                op,
                addr,
                layout,
                format_args!("the layout's size class differs from the allocation's (a small object of {size} B, the layout says a large object)"),
            ),
        }
    }
}

/// How a large span's object is laid out, for messages: a small class kept in place, or its pages.
struct LayoutKind(Option<SizeClass>, PageCount);

impl core::fmt::Display for LayoutKind {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self.0 {
            Some(c) => write!(
                f,
                "class {} of {} B, kept in a large span of {} pages",
                c.get(),
                c.size(),
                self.1 .0
            ),
            None => write!(f, "a large object"),
        }
    }
}

/// The pages of a large object of `size` bytes: at least one (a zero size, outside `GlobalAlloc`'s
/// contract, with an alignment only a large span meets, gets a page); `None` if that overflows.
fn large_pages(size: usize) -> Option<PageCount> {
    PageCount::covering(size.max(1))
}

/// The address of a pointer given back; a non-canonical one is refused as not a heap object.
#[track_caller]
fn canonical(op: Op, ptr: *mut u8, layout: Layout) -> VirtAddr {
    VirtAddr::try_new(ptr as u64).unwrap_or_else(|_| {
        bad_free(
            op,
            VirtAddr::new_truncate(ptr as u64),
            layout,
            format_args!("not a live heap object (not even a canonical address: {ptr:p})"),
        )
    })
}

#[cold]
#[inline(never)]
#[track_caller]
fn bad_free(op: Op, addr: VirtAddr, layout: Layout, why: core::fmt::Arguments<'_>) -> ! {
    let op = match op {
        Op::Dealloc => "dealloc",
        Op::Realloc => "realloc",
    };
    panic!(
        "spanalloc: bad {op} of {:#x} (size {}, align {}): {why}",
        addr.as_u64(),
        layout.size(),
        layout.align(),
    )
}

impl<P: Platform, const FULL_CHECKS: bool> Heap<P, FULL_CHECKS> {
    /// `alloc` of a layout that is not common (over 1 KiB or aligned to more than 8), out of line.
    #[inline(never)]
    fn alloc_other(&self, layout: Layout) -> *mut u8 {
        match SizeClass::for_layout(layout.size(), layout.align()) {
            Some(class) => self.alloc_small(class, layout),
            None => self.alloc_large(layout, None, false),
        }
    }

    /// `dealloc` of a layout that is not common, out of line.
    ///
    /// # Safety
    /// As `GlobalAlloc::dealloc`.
    #[inline(never)]
    unsafe fn dealloc_other(&self, ptr: *mut u8, layout: Layout) {
        match SizeClass::for_layout(layout.size(), layout.align()) {
            // SAFETY: the caller's contract, passed on.
            Some(class) => unsafe { self.dealloc_small(ptr, layout, class) },
            None => self.dealloc_large(ptr, layout),
        }
    }

    /// `dealloc` of an object whose layout maps to `class`: checked, then freed.
    ///
    /// # Safety
    /// As `GlobalAlloc::dealloc`; `class` is `layout`'s.
    #[inline(always)]
    unsafe fn dealloc_small(&self, ptr: *mut u8, layout: Layout, class: SizeClass) {
        let Some(entry) = self.small_object_entry(class, ptr) else {
            return self.free_small_elsewhere(ptr, layout, class);
        };
        // SAFETY: `entry` is `ptr`'s, which starts an object of `class` in an in-use span of the
        // explicit heap (checked just above); the caller gives it back.
        unsafe { self.free_small_entry(Op::Dealloc, ptr, layout, class, entry) }
    }
}

// SAFETY: every pointer returned is null or the start of a free block of at least `layout.size()` bytes
// aligned to `layout.align()` (size classes are chosen by `for_layout`, large spans are placed at an
// address aligned as requested), not handed out again until it is deallocated.
unsafe impl<P: Platform, const FULL_CHECKS: bool> GlobalAlloc for Heap<P, FULL_CHECKS> {
    /// A zero size (which `GlobalAlloc` callers must not ask for) gets an 8-byte object, freed as one: no
    /// test for it on the fast path.
    ///
    /// Common layouts (`SizeClass::for_common_layout`) take the inline path; the others one call to
    /// `Heap::alloc_other`, so that the inline path makes no call at all.
    #[inline]
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        match SizeClass::for_common_layout(layout.size(), layout.align()) {
            Some(class) => self.alloc_small(class, layout),
            None => self.alloc_other(layout),
        }
    }

    /// Common layouts inline, the others through `Heap::dealloc_other` (as `alloc`).
    #[inline]
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        match SizeClass::for_common_layout(layout.size(), layout.align()) {
            // SAFETY: the caller's contract, passed on.
            Some(class) => unsafe { self.dealloc_small(ptr, layout, class) },
            // SAFETY: as above.
            None => unsafe { self.dealloc_other(ptr, layout) },
        }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        match SizeClass::for_layout(layout.size(), layout.align()) {
            Some(class) => {
                let p = self.alloc_small(class, layout);
                if !p.is_null() {
                    // SAFETY: p is a fresh block of at least layout.size() bytes.
                    unsafe { ptr::write_bytes(p, 0, layout.size()) };
                }
                p
            }
            None => self.alloc_large(layout, None, true),
        }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // Check the old block first, as `dealloc` would: nothing is copied from or resized on a pointer
        // that is not a live object of this layout.
        match SizeClass::for_layout(layout.size(), layout.align()) {
            Some(class) => {
                if let Some(entry) = self.live_small_entry(class, ptr) {
                    if SizeClass::for_layout(new_size, layout.align()) == Some(class) {
                        return ptr;
                    }
                    // Moves to another class. The old object was checked just now: its free skips the
                    // lookups `dealloc` would repeat.
                    // SAFETY: `ptr` is a live object of `layout` (checked above), given up by the caller;
                    // `entry` is its span-map entry, found by that check.
                    return unsafe {
                        self.realloc_move(ptr, layout, new_size, || {
                            self.free_small_entry(Op::Realloc, ptr, layout, class, entry)
                        })
                    };
                }
                if P::SAMPLING && self.is_sampled_small(ptr, layout, class) {
                    // A sampled object lives alone: it always moves (and its free is counted).
                } else if self.is_small_in_large(ptr, class) {
                    // A large object reallocated in place to this class before.
                    let addr = canonical(Op::Realloc, ptr, layout);
                    if self.realloc_large(addr, layout, Some(class), new_size) {
                        return ptr;
                    }
                } else {
                    self.refuse_small(Op::Realloc, ptr, layout, class)
                }
            }
            None => {
                let addr = canonical(Op::Realloc, ptr, layout);
                if self.realloc_large(addr, layout, None, new_size) {
                    return ptr;
                }
            }
        }
        // SAFETY: `ptr` is a live object of `layout` (checked above), given up by the caller.
        unsafe { self.realloc_move(ptr, layout, new_size, || self.dealloc(ptr, layout)) }
    }
}

impl<P: Platform, const FULL_CHECKS: bool> Heap<P, FULL_CHECKS> {
    /// A moving `realloc`: a new block of `new_size` (`layout`'s alignment), the contents copied, then
    /// `free_old` gives the old block back; null (the old block untouched) if there is no memory.
    ///
    /// # Safety
    /// `ptr` is a live object of `layout` that the caller gives up once a new block is returned, and
    /// `free_old` frees exactly it.
    unsafe fn realloc_move(
        &self,
        ptr: *mut u8,
        layout: Layout,
        new_size: usize,
        free_old: impl FnOnce(),
    ) -> *mut u8 {
        let Ok(new_layout) = Layout::from_size_align(new_size, layout.align()) else {
            return ptr::null_mut();
        };
        // SAFETY: new_layout is valid and non-zero (GlobalAlloc::realloc's contract: new_size > 0).
        let new = unsafe { self.alloc(new_layout) };
        if !new.is_null() {
            // SAFETY: the old block is a live object of `layout` (the caller's promise), so both blocks
            // are valid for the smaller size, and they do not overlap (new is a fresh block).
            unsafe { ptr::copy_nonoverlapping(ptr, new, layout.size().min(new_size)) };
            free_old();
        }
        new
    }
}

/// Most pages one span freed by the collector makes the scavenger unmap.
#[cfg(any(test, feature = "gc"))]
const GC_SCAVENGE_STEP: usize = 64;

/// The garbage collector's door to the page heap (see gc/): it takes spans straight from the page heap and
/// keeps them itself, never on the central lists, so the explicit heap's caches never see its objects.
#[cfg(any(test, feature = "gc"))]
impl<P: Platform, const FULL_CHECKS: bool> Heap<P, FULL_CHECKS> {
    /// A fresh span of `class` (small classes get their own page count and ignore `npages`; large ones get
    /// `npages`), published in the span map. `None` before `init` or when memory runs out.
    pub(crate) fn gc_alloc_span(
        &self,
        class: SpanClass,
        npages: PageCount,
    ) -> Option<NonNull<Span>> {
        let n = if class.is_large() {
            npages.0
        } else {
            class.size_class().pages().0
        };
        let _irq = self.platform.mask_interrupts();
        // Named so it drops before `_irq` (see `with_address_space`).
        let mut pages = self.pages.lock();
        pages
            .as_mut()?
            .alloc_span(n, 1, class, None, Owner::Collector)
    }

    /// Gives a span from [`Heap::gc_alloc_span`] back to the page heap (whose scavenger may then return its
    /// frames). `mapped_goal`: the collector's goal for the pages it keeps mapped, in bytes (Go's
    /// scavenger keeps 110% of the heap goal): free pages are kept up to it, because the collected heap
    /// grows back to its goal before the next cycle, and returning them only to map them again costs
    /// more than the sweep that freed them. 0: the page heap's own policy alone.
    ///
    /// # Safety
    /// `span` came from `gc_alloc_span` on this heap and nobody uses it or its objects after this call.
    pub(crate) unsafe fn gc_free_span(&self, span: NonNull<Span>, mapped_goal: usize) {
        let _irq = self.platform.mask_interrupts();
        let mut guard = self.pages.lock();
        let heap = guard.as_mut().expect("spans exist only after init");
        // SAFETY: forwarded from the caller.
        unsafe { heap.free_span(span) };
        // The page heap's policy (nothing while frames are plentiful; while they are short, its
        // retained goal and the quarter rule, see pageheap.rs), but keeping mapped what the
        // collector's heap goal will use again (`mapped_goal`, Go's scavenger goal), and in steps of at
        // most `GC_SCAVENGE_STEP` pages: a sweep frees spans in bursts, and unmapping a whole burst at
        // once would be a pause of many milliseconds inside an allocation.
        let s = heap.stats();
        let for_gc = s.dirty_free
            - (mapped_goal / PAGE_SIZE)
                .saturating_sub(s.in_use)
                .min(s.dirty_free);
        let excess = heap.excess_pages().min(for_gc);
        if excess > 0 {
            heap.scavenge(excess.min(GC_SCAVENGE_STEP));
        }
    }

    /// The span map, for the collector's pointer -> span lookups while marking.
    pub(crate) fn gc_span_map(&self) -> &SpanMap {
        &self.spanmap
    }
}

mod sample;
pub use sample::{SamplingError, SamplingStats};

// Heavy (huge windows, dozens of threads): not under Miri.
#[cfg(all(test, not(miri)))]
mod attack_tests;
#[cfg(all(test, not(miri)))]
mod concurrency_tests;
#[cfg(all(test, not(miri)))]
mod exhaustion_tests;
#[cfg(all(test, not(miri)))]
mod hostile_caller_tests;
#[cfg(test)]
mod interrupt_tests;
#[cfg(all(test, not(miri)))]
mod realloc_tests;
#[cfg(all(test, not(miri)))]
mod region_attack_tests;
#[cfg(all(test, not(miri)))]
mod region_tests;
#[cfg(all(test, not(miri)))]
mod sample_attack_tests;
#[cfg(all(test, not(miri)))]
mod sample_tests;
#[cfg(test)]
mod small_heap_tests;
#[cfg(test)]
mod soundness_tests;
#[cfg(test)]
mod tests;
