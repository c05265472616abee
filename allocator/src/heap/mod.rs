//! The heap: Rust's `GlobalAlloc` over the whole hierarchy.
//!
//! An allocation flows: size class lookup -> this CPU's cache (cache.rs, the fast path) -> on a miss the
//! class's central list (central.rs) -> on a miss a new span from the page heap (pageheap.rs) -> on a miss
//! a new arena mapped from the window with frames from the frame allocator (arena.rs, frames.rs).
//! Objects over 32 KiB (or aligned beyond 8 KiB, the heap page) skip the caches: their own span, straight
//! from the page heap.
//!
//! Invariants:
//! - Nothing here panics on a failed allocation: out of memory is a null pointer.
//! - Every `dealloc` is checked against the span map: the pointer must lie in an in-use span of the class
//!   its layout maps to, else it panics naming the address, the layout and the reason. Double frees and
//!   interior pointers of small objects are caught when the object returns to its span (central.rs); with
//!   the `debug-checks` feature, at once.
//! - Interrupts are masked on this CPU while its cache is used and while any heap lock is held, so an
//!   interrupt handler may allocate and free.

use core::alloc::{GlobalAlloc, Layout};
use core::ptr::{self, NonNull};
use core::sync::atomic::{AtomicPtr, AtomicUsize, Ordering};

use crate::addr::{FrameCount, PageCount, VirtAddr, PAGE_SIZE};
use crate::arena::{AddressSpace, ArenaWindow};
use crate::cache::{stack_cap, Cache};
use crate::central::Central;
use crate::pageheap::{InitError, PageHeap};
use crate::platform::Platform;
use crate::sizeclass::{SizeClass, SpanClass, NUM_SIZE_CLASSES};
use crate::span::Span;
use crate::spanmap::SpanMap;
use crate::stats::{ClassStats, Stats};

/// Most CPUs a heap serves (`Platform::cpu_index` must stay below it).
pub const MAX_CPUS: usize = 64;

/// Whether [`Heap`] runs its full checks unless told otherwise: the `debug-checks` feature.
pub const DEFAULT_FULL_CHECKS: bool = cfg!(feature = "debug-checks");

/// The span heap. Put one in a `static` with [`Heap::new`], call [`Heap::init`] once memory is known,
/// and use it as the `#[global_allocator]`. Before `init` every allocation returns null.
///
/// `FULL_CHECKS` (default: the `debug-checks` feature) catches every double free and interior pointer of
/// small objects at the `dealloc` that makes it, at the cost of a central-list lock per operation; without
/// it they are caught when the object goes back to its span.
pub struct Heap<P: Platform, const FULL_CHECKS: bool = DEFAULT_FULL_CHECKS> {
    platform: &'static P,
    caches: [AtomicPtr<Cache>; MAX_CPUS],
    central: [Central; NUM_SIZE_CLASSES],
    pages: spin::Mutex<Option<PageHeap<P>>>,
    spanmap: SpanMap,
    large_objects: AtomicUsize,
    large_pages: AtomicUsize,
}

impl<P: Platform, const FULL_CHECKS: bool> Heap<P, FULL_CHECKS> {
    pub const fn new(platform: &'static P) -> Self {
        Self {
            platform,
            caches: [const { AtomicPtr::new(ptr::null_mut()) }; MAX_CPUS],
            central: [const { Central::new() }; NUM_SIZE_CLASSES],
            pages: spin::Mutex::new(None),
            spanmap: SpanMap::new(),
            large_objects: AtomicUsize::new(0),
            large_pages: AtomicUsize::new(0),
        }
    }

    /// Hands the heap its address space (frames + page tables) and the virtual window to grow in; the heap
    /// will hold at most `max_bytes` (fitted to the window; what to choose: [`crate::takeover::Limits`]).
    /// [`crate::takeover::take_over`] does all of this in one call.
    pub fn init(
        &'static self,
        space: AddressSpace<P>,
        window: ArenaWindow,
        max_bytes: usize,
    ) -> Result<(), InitError> {
        let _irq = self.platform.mask_interrupts();
        let mut pages = self.pages.lock();
        assert!(pages.is_none(), "spanalloc: Heap::init called twice");
        *pages = Some(PageHeap::new(space, window, max_bytes, &self.spanmap)?);
        Ok(())
    }

    /// Runs `f` on the heap's address space, e.g. to take frames for other uses. `None` before `init`.
    pub fn with_address_space<R>(&self, f: impl FnOnce(&mut AddressSpace<P>) -> R) -> Option<R> {
        let _irq = self.platform.mask_interrupts();
        // A named guard drops before `_irq`; a temporary in the tail expression would be dropped after it
        // (edition 2021), re-enabling interrupts while the lock is still held: an interrupt handler that
        // allocates would then spin on it forever.
        let mut pages = self.pages.lock();
        pages.as_mut().map(|h| f(&mut h.space))
    }

    /// The platform the heap was made with.
    pub fn platform(&self) -> &'static P {
        self.platform
    }

    /// This CPU's cache: created on first use, `None` only when metadata cannot be had.
    ///
    /// # Safety
    /// `cpu` is the index of the CPU running the caller, interrupts stay masked on it while the result is
    /// used, and the caller makes no other reference to that cache meanwhile.
    #[inline(always)]
    unsafe fn local_cache<'a>(&self, cpu: usize) -> Option<&'a mut Cache> {
        let c = match NonNull::new(self.caches[cpu].load(Ordering::Acquire)) {
            Some(c) => c,
            None => self.create_cache(cpu)?,
        };
        // SAFETY: a published cache is an initialized Cache in metadata that lives as long as the heap;
        // only its CPU uses it mutably, and (caller's contract) that is us, uninterrupted.
        Some(unsafe { &mut *c.as_ptr() })
    }

    #[cold]
    fn create_cache(&self, cpu: usize) -> Option<NonNull<Cache>> {
        assert!(
            cpu < MAX_CPUS,
            "spanalloc: cpu index {cpu} is over MAX_CPUS ({MAX_CPUS})"
        );
        let mut guard = self.pages.lock();
        let heap = guard.as_mut()?;
        let (meta, space) = heap.meta();
        let mem = meta
            .alloc(space, core::mem::size_of::<Cache>())?
            .cast::<Cache>();
        // SAFETY: a fresh zeroed metadata block big enough for a Cache; all-zero is a valid Cache (atomics,
        // integers and addresses), and `init` then lays the stacks out. Not yet published: ours alone.
        unsafe { (*mem.as_ptr()).init() };
        self.caches[cpu].store(mem.as_ptr(), Ordering::Release);
        Some(mem)
    }

    #[inline(always)]
    fn alloc_small(&self, class: SizeClass) -> *mut u8 {
        let p = self.alloc_small_unchecked(class);
        if FULL_CHECKS && !p.is_null() {
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

    #[inline(always)]
    fn alloc_small_unchecked(&self, class: SizeClass) -> *mut u8 {
        let _irq = self.platform.mask_interrupts();
        let cpu = self.platform.cpu_index();
        // SAFETY: `cpu` is ours and interrupts are masked until we return.
        if let Some(cache) = unsafe { self.local_cache(cpu) } {
            if let Some(p) = cache.pop(class) {
                return p.as_mut_ptr();
            }
        }
        // SAFETY: as above.
        unsafe { self.alloc_small_slow(cpu, class) }
    }

    /// # Safety
    /// As for [`Heap::cache`].
    #[cold]
    unsafe fn alloc_small_slow(&self, cpu: usize, class: SizeClass) -> *mut u8 {
        // SAFETY: forwarded from the caller.
        let Some(cache) = (unsafe { self.local_cache(cpu) }) else {
            return ptr::null_mut();
        };
        let batch = (stack_cap(class.index()) / 2).max(1);
        let spare = cache.spare_slots(class);
        let want = batch.min(spare.len());
        let n = self.central[class.index()].refill(class, &mut spare[..want], &self.pages, cpu);
        cache.filled(class, n);
        cache.pop(class).map_or(ptr::null_mut(), |p| p.as_mut_ptr())
    }

    #[inline(always)]
    fn free_small(&self, class: SizeClass, obj: VirtAddr) {
        let _irq = self.platform.mask_interrupts();
        let cpu = self.platform.cpu_index();
        // SAFETY: `cpu` is ours and interrupts are masked until we return.
        let Some(cache) = (unsafe { self.local_cache(cpu) }) else {
            // No memory even for a cache: give the object straight back to its span.
            return self.central[class.index()].flush(&[obj], self.spans(), &self.pages);
        };
        if !cache.push(class, obj) {
            self.flush_half(cache, class);
            let pushed = cache.push(class, obj);
            debug_assert!(pushed);
        }
    }

    #[cold]
    fn flush_half(&self, cache: &mut Cache, class: SizeClass) {
        let n = (stack_cap(class.index()) / 2).max(1);
        let central = &self.central[class.index()];
        cache.drain_bottom(class, n, |objs| {
            central.flush(objs, self.spans(), &self.pages)
        });
    }

    fn spans(&self) -> impl Fn(VirtAddr) -> Option<NonNull<Span>> + '_ {
        |a| self.spanmap.lookup(a).map(|(s, _)| s)
    }

    fn alloc_large(&self, layout: Layout, zero: bool) -> *mut u8 {
        let Some(npages) = PageCount::covering(layout.size()) else {
            return ptr::null_mut();
        };
        let align = (layout.align() / PAGE_SIZE).max(1);
        let _irq = self.platform.mask_interrupts();
        let mut guard = self.pages.lock();
        let Some(heap) = guard.as_mut() else {
            return ptr::null_mut();
        };
        let cpu = Some(self.platform.cpu_index());
        let Some(span) = heap.alloc_span(
            npages.0,
            align,
            SpanClass::new(SizeClass::LARGE, false),
            cpu,
        ) else {
            return ptr::null_mut();
        };
        drop(guard);
        self.large_objects.fetch_add(1, Ordering::Relaxed);
        self.large_pages.fetch_add(npages.0, Ordering::Relaxed);
        // SAFETY: the span is ours (large spans belong to their one object).
        let s = unsafe { span.as_ref() };
        let p = s.base().as_mut_ptr::<u8>();
        if zero && s.needzero() {
            // SAFETY: the span's pages are mapped and ours; npages * PAGE_SIZE >= layout.size().
            unsafe { ptr::write_bytes(p, 0, layout.size()) };
        }
        p
    }

    fn free_large(&self, addr: VirtAddr, layout: Layout) {
        let _irq = self.platform.mask_interrupts();
        let mut guard = self.pages.lock();
        let heap = guard.as_mut().expect("large spans exist only after init");
        // Look again under the lock: a concurrent double free may have released the span meanwhile.
        let Some((span, class)) = self.spanmap.lookup(addr) else {
            bad_free(addr, layout, "no span holds it (double free?)")
        };
        debug_assert!(class.is_large());
        // SAFETY: a large span belongs to its object, which the caller is freeing.
        let s = unsafe { span.as_ref() };
        if s.base() != addr {
            bad_free(addr, layout, "interior pointer of a large object");
        }
        let npages = s.npages().0;
        // SAFETY: the caller frees the span's one object: nobody uses the span after this.
        unsafe { heap.free_span(span) };
        heap.scavenge_if_needed();
        self.large_objects.fetch_sub(1, Ordering::Relaxed);
        self.large_pages.fetch_sub(npages, Ordering::Relaxed);
    }

    /// Tries to resize a large object in place; `true` if it now holds `new_size` bytes.
    fn realloc_large_in_place(&self, addr: VirtAddr, new_size: usize) -> bool {
        let Some(new_pages) = PageCount::covering(new_size) else {
            return false;
        };
        let _irq = self.platform.mask_interrupts();
        let mut guard = self.pages.lock();
        let Some(heap) = guard.as_mut() else {
            return false;
        };
        let Some((span, _)) = self.spanmap.lookup(addr) else {
            return false;
        };
        // SAFETY: the caller owns the large object and so its span.
        let s = unsafe { span.as_ref() };
        if s.base() != addr {
            return false; // not the object's start: the fallback's dealloc reports it
        }
        let old = s.npages().0;
        if new_pages.0 == old {
            return true;
        }
        if new_pages.0 < old {
            // SAFETY: as above; keep < old.
            unsafe { heap.shrink_in_place(span, new_pages.0) };
            self.large_pages
                .fetch_sub(old - new_pages.0, Ordering::Relaxed);
            return true;
        }
        // SAFETY: as above.
        if unsafe { heap.grow_in_place(span, new_pages.0 - old) }.is_some() {
            self.large_pages
                .fetch_add(new_pages.0 - old, Ordering::Relaxed);
            return true;
        }
        false
    }

    /// Returns this CPU's cached objects to their spans, releases spans that are empty, and unmaps every
    /// free page: afterwards the frames held are those of live objects and metadata.
    pub fn trim(&self) {
        let _irq = self.platform.mask_interrupts();
        // SAFETY: the index is ours and interrupts are masked until we return.
        if let Some(cache) = unsafe { self.local_cache(self.platform.cpu_index()) } {
            for class in SizeClass::small() {
                let c = class.index();
                let n = cache.cached(c);
                if n > 0 {
                    cache.drain_bottom(class, n, |objs| {
                        self.central[c].flush(objs, self.spans(), &self.pages)
                    });
                }
            }
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

    /// A snapshot of the heap's counters (like Go's MemStats).
    pub fn stats(&self) -> Stats {
        // Masked for the central locks too: an interrupt handler allocating on this CPU would spin on them.
        let _irq = self.platform.mask_interrupts();
        let mut s = Stats::default();
        for class in SizeClass::small() {
            let c = class.index();
            let central = self.central[c].stats();
            let cached: usize = (0..MAX_CPUS)
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
        s.large_objects = self.large_objects.load(Ordering::Relaxed);
        s.large_bytes = self.large_pages.load(Ordering::Relaxed) * PAGE_SIZE;
        if let Some(heap) = self.pages.lock().as_ref() {
            s.pages = heap.stats();
            s.frames_held = heap.space.frames_held();
            s.frames_free = heap.space.frames.free_frames();
        } else {
            s.frames_held = FrameCount(0);
        }
        s
    }

    fn cache_ref(&self, cpu: usize) -> Option<&Cache> {
        // SAFETY: caches live as long as the heap; reading stack lengths from another CPU is what their
        // atomic `len` is for (a shared reference reads nothing else).
        unsafe { self.caches[cpu].load(Ordering::Acquire).as_ref() }
    }
}

#[cold]
#[track_caller]
fn bad_free(addr: VirtAddr, layout: Layout, why: &str) -> ! {
    panic!(
        "spanalloc: bad dealloc of {:#x} (size {}, align {}): {}",
        addr.as_u64(),
        layout.size(),
        layout.align(),
        why
    )
}

// SAFETY: every pointer returned is null or the start of a free block of at least `layout.size()` bytes
// aligned to `layout.align()` (size classes are chosen by `for_layout`, large spans are page aligned with the
// requested alignment), not handed out again until it is deallocated.
unsafe impl<P: Platform, const FULL_CHECKS: bool> GlobalAlloc for Heap<P, FULL_CHECKS> {
    #[inline]
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if layout.size() == 0 {
            return ptr::null_mut();
        }
        match SizeClass::for_layout(layout.size(), layout.align()) {
            Some(class) => self.alloc_small(class),
            None => self.alloc_large(layout, false),
        }
    }

    #[inline]
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        let addr = VirtAddr::from_ptr(ptr);
        let Some((_, span_class)) = self.spanmap.lookup(addr) else {
            bad_free(
                addr,
                layout,
                "not a live heap object (freed already, or never allocated by this heap)",
            )
        };
        match SizeClass::for_layout(layout.size(), layout.align()) {
            Some(class) if span_class.size_class() == class => {
                if FULL_CHECKS {
                    if let Err(why) = self.track(class, addr, false) {
                        bad_free(addr, layout, why)
                    }
                }
                self.free_small(class, addr)
            }
            None if span_class.is_large() => self.free_large(addr, layout),
            _ => bad_free(
                addr,
                layout,
                "the layout's size class differs from the allocation's",
            ),
        }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        if layout.size() == 0 {
            return ptr::null_mut();
        }
        match SizeClass::for_layout(layout.size(), layout.align()) {
            Some(class) => {
                let p = self.alloc_small(class);
                if !p.is_null() {
                    // SAFETY: p is a fresh block of at least layout.size() bytes.
                    unsafe { ptr::write_bytes(p, 0, layout.size()) };
                }
                p
            }
            None => self.alloc_large(layout, true),
        }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let Ok(new_layout) = Layout::from_size_align(new_size, layout.align()) else {
            return ptr::null_mut();
        };
        let old_class = SizeClass::for_layout(layout.size(), layout.align());
        let new_class = SizeClass::for_layout(new_size, layout.align());
        match (old_class, new_class) {
            (Some(a), Some(b)) if a == b => return ptr,
            (None, None) if self.realloc_large_in_place(VirtAddr::from_ptr(ptr), new_size) => {
                return ptr
            }
            _ => {}
        }
        // SAFETY: new_layout is valid and non-zero (GlobalAlloc::realloc's contract: new_size > 0).
        let new = unsafe { self.alloc(new_layout) };
        if !new.is_null() {
            // SAFETY: both blocks are valid for the smaller size and do not overlap (new is a fresh block);
            // the caller gives up `ptr`.
            unsafe {
                ptr::copy_nonoverlapping(ptr, new, layout.size().min(new_size));
                self.dealloc(ptr, layout);
            }
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
        pages.as_mut()?.alloc_span(n, 1, class, None)
    }

    /// Gives a span from [`Heap::gc_alloc_span`] back to the page heap (whose scavenger may then return its
    /// frames).
    ///
    /// # Safety
    /// `span` came from `gc_alloc_span` on this heap and nobody uses it or its objects after this call.
    pub(crate) unsafe fn gc_free_span(&self, span: NonNull<Span>) {
        let _irq = self.platform.mask_interrupts();
        let mut guard = self.pages.lock();
        let heap = guard.as_mut().expect("spans exist only after init");
        // SAFETY: forwarded from the caller.
        unsafe { heap.free_span(span) };
        // The page heap's policy (keep an eighth of the in-use pages, at least 4 MiB, as mapped free
        // pages), but in steps of at most `GC_SCAVENGE_STEP` pages: a sweep frees spans in bursts, and
        // unmapping a whole burst at once would be a pause of many milliseconds inside an allocation.
        let s = heap.stats();
        let retain = (s.in_use / 8).max((4 << 20) / PAGE_SIZE);
        if s.dirty_free > retain + retain / 2 {
            heap.scavenge((s.dirty_free - retain).min(GC_SCAVENGE_STEP));
        }
    }

    /// The span map, for the collector's pointer -> span lookups while marking.
    pub(crate) fn gc_span_map(&self) -> &SpanMap {
        &self.spanmap
    }
}

#[cfg(test)]
mod tests;
