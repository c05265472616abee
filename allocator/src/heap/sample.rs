//! Sampling in the heap: the heap profile and guard pages (profile/ holds the bookkeeping).
//!
//! Which allocations: each CPU counts down bytes allocated (`SampleState::countdown` in its cache; the
//! fast path subtracts the layout's size and branches to the miss when it goes negative, on platforms
//! with `Platform::SAMPLING`). The miss path ([`Heap::sample_small`]) then decides whether this allocation
//! is a profile sample (exponential intervals of mean `profile_rate` bytes), a guarded one (every
//! `guard_interval` bytes), both or neither, and re-arms the countdown. Large allocations count on their
//! own (slow) path.
//!
//! How a sampled small object's free is recognised at no cost to the free fast path: it never lives in a
//! small span. A profiled small object gets a large span of its own (as TCMalloc's sampled
//! objects), a guarded one a page of the guard pool (outside every span); either way the span-map check
//! the free does anyway fails, and the cold path ([`Heap::free_sampled_small`]) finds it in the profile's
//! live table or the pool, checks it as strictly as any free (address, layout, double free), and gives it
//! back. A sampled large object is its own span anyway: `free_large` looks it up.
//!
//! Invariants:
//! - Lock order: pool -> page heap -> profile tables, and setup -> page heap -> profile tables (the
//!   setup lock, held while the tables are made, is never held with the pool's). The tables' lock is
//!   never held while taking another; all of them only with interrupts masked.
//! - A profiled small object is recorded in the tables under the page-heap lock that takes its span
//!   and removed before its span is freed; a large sampled object is recorded under the page-heap
//!   lock that takes its span (or, resized in place, that finds it live with no record) and removed
//!   under the page-heap lock that frees its span or resizes it in place (an in-place `realloc` is
//!   profiled as a moving one: the old object freed, the new size counted and perhaps sampled as a
//!   new allocation). So no racing free of an address comes between a span being taken and its
//!   object being recorded: a span's address has one record at most, and none once it is freed.
//! - The tables and the pool's bookkeeping live in pages of the heap's own (`alloc_private`), made once
//!   (however many callers race to switch sampling on first: the setup lock and the pool's lock make
//!   each one caller's job), never freed.

use core::alloc::Layout;
use core::ptr::{self, NonNull};
use core::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};

use super::{bad_free, Heap, Op, Refusal};
use crate::addr::{Page, PageTableFlags, VirtAddr, PAGE_SIZE};
use crate::cache::SampleState;
use crate::platform::Platform;
use crate::profile::guard::{self, ErrorKind, FreeError, Pool, Report};
use crate::profile::pprof::{self, Header, Mapping};
use crate::profile::table::{Kind, Tables};
use crate::profile::{next_interval, GuardSide, Rng, Sampling, MAX_FRAMES};
use crate::sizeclass::{SizeClass, SpanClass};
use crate::spanmap::Owner;

/// The heap's sampling settings and state (see the module documentation).
pub(crate) struct Sampler {
    profile_rate: AtomicUsize,
    guard_interval: AtomicUsize,
    guard_left: AtomicBool,
    /// Grows with every change of settings; each CPU re-arms when it sees a new one.
    epoch: AtomicU32,
    tables: spin::Mutex<Option<NonNull<Tables>>>,
    /// Held while the tables are made (`set_sampling`), so that they are made once.
    setup: spin::Mutex<()>,
    pool: spin::Mutex<Option<NonNull<Pool>>>,
    /// The pool's base, 0 before it exists: a lock-free "could this be a guarded address?".
    pool_base: AtomicU64,
}

// SAFETY: the pointers are to the heap's own private pages, reached only under their locks.
unsafe impl Send for Sampler {}
// SAFETY: as above.
unsafe impl Sync for Sampler {}

impl Sampler {
    pub(crate) const fn new() -> Self {
        Sampler {
            profile_rate: AtomicUsize::new(0),
            guard_interval: AtomicUsize::new(0),
            guard_left: AtomicBool::new(false),
            epoch: AtomicU32::new(1),
            tables: spin::Mutex::new(None),
            setup: spin::Mutex::new(()),
            pool: spin::Mutex::new(None),
            pool_base: AtomicU64::new(0),
        }
    }

    fn in_pool(&self, addr: u64) -> bool {
        let base = self.pool_base.load(Ordering::Acquire);
        base != 0 && addr.wrapping_sub(base) < guard::POOL_BYTES
    }
}

/// A large allocation chosen as a profile sample, with its stack ([`Heap::large_sample`]).
pub(super) struct LargeSample {
    frames: [u64; MAX_FRAMES],
    depth: usize,
}

/// Why [`Heap::set_sampling`] refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SamplingError {
    /// The heap's platform does not compile sampling in (`Platform::SAMPLING` is false).
    NotCompiledIn,
    /// `Heap::init` has not run yet.
    NoHeap,
    /// No memory for the profile's tables or the guard pool.
    OutOfMemory,
    /// Guard pages need a heap that maps its own pages; a heap over memory regions (region mode) has no
    /// page tables to unmap a guard page in. The heap profile works there.
    NoAddressSpace,
}

impl core::fmt::Display for SamplingError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(match self {
            SamplingError::NotCompiledIn => {
                "sampling is not compiled in: the heap's platform has Platform::SAMPLING = false"
            }
            SamplingError::NoHeap => "the heap has no memory yet (Heap::init)",
            SamplingError::OutOfMemory => "no memory for the sampling tables or the guard pool",
            SamplingError::NoAddressSpace => {
                "guard pages need a heap that maps its pages (not a heap over memory regions)"
            }
        })
    }
}

/// Counters of the sampler (see [`Heap::sampling_stats`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SamplingStats {
    /// Profile buckets (call stack and size) and sampled objects live now.
    pub buckets: usize,
    pub live_samples: usize,
    /// Samples not recorded because a table was full.
    pub dropped: u64,
    /// Guarded allocations made since the start, and those refused: guard events on small allocations
    /// the pool could not take (pool full, object over 4 KiB or aligned beyond 4 KiB, page not
    /// mapped), which were made unguarded. (An event on a large allocation is not refused: it passes
    /// to this CPU's next small allocation.)
    pub guarded: u64,
    pub guard_refused: u64,
}

const POOL_STRUCT_PAGES: usize = core::mem::size_of::<Pool>().div_ceil(PAGE_SIZE);
const TABLE_PAGES: usize = Tables::BYTES.div_ceil(PAGE_SIZE);

impl<P: Platform, const FULL_CHECKS: bool> Heap<P, FULL_CHECKS> {
    /// Switches sampling on, off, or to other rates: the heap profile ([`Heap::write_heap_profile`]) and
    /// guard pages ([`Heap::guard_report`]); see [`Sampling`]. The calling CPU follows at once, every
    /// other at its next cache refill or sampling event. The first call that switches a feature on takes
    /// its memory (some 300 KiB of tables, a 2 MiB stretch of address space for the guard pool), kept for
    /// good. Needs a platform with `Platform::SAMPLING` and an initialized heap.
    pub fn set_sampling(&self, s: Sampling) -> Result<(), SamplingError> {
        if !P::SAMPLING {
            return Err(SamplingError::NotCompiledIn);
        }
        let _irq = self.platform.mask_interrupts();
        if s.profile_rate > 0 && self.sampler.tables.lock().is_none() {
            // One caller makes the tables, and a racing one waits for it and then finds them: both
            // used to allocate them, the loser's pages kept for good, unused (and a loser refused
            // with `OutOfMemory` where the winner's tables took the last of the memory). The tables'
            // own lock cannot serve: it is never held while the page heap's is taken.
            let _setup = self.sampler.setup.lock();
            if self.sampler.tables.lock().is_none() {
                let mem = {
                    let mut pages = self.pages.lock();
                    let heap = pages.as_mut().ok_or(SamplingError::NoHeap)?;
                    heap.alloc_private(TABLE_PAGES)
                        .ok_or(SamplingError::OutOfMemory)?
                };
                *self.sampler.tables.lock() = Some(
                    NonNull::new(mem.as_mut_ptr::<Tables>()).expect("heap pages are not null"),
                );
            }
        }
        if s.guard_interval > 0 {
            self.make_pool()?;
        }
        self.sampler
            .profile_rate
            .store(s.profile_rate, Ordering::Relaxed);
        self.sampler
            .guard_interval
            .store(s.guard_interval, Ordering::Relaxed);
        self.sampler
            .guard_left
            .store(s.guard_side == GuardSide::Left, Ordering::Relaxed);
        self.sampler.epoch.fetch_add(1, Ordering::Release);
        // SAFETY: the index is ours and interrupts are masked until we return.
        if let Some(mut cache) = unsafe { self.local_cache(self.platform.cpu_index_slow()) } {
            self.rearm(cache.sample());
        }
        Ok(())
    }

    /// The current settings.
    pub fn sampling(&self) -> Sampling {
        Sampling {
            profile_rate: self.sampler.profile_rate.load(Ordering::Relaxed),
            guard_interval: self.sampler.guard_interval.load(Ordering::Relaxed),
            guard_side: if self.sampler.guard_left.load(Ordering::Relaxed) {
                GuardSide::Left
            } else {
                GuardSide::Right
            },
        }
    }

    /// Creates the guard pool if it does not exist: 2 MiB of address space from the page heap, unmapped.
    fn make_pool(&self) -> Result<(), SamplingError> {
        let mut pool = self.sampler.pool.lock();
        if pool.is_some() {
            return Ok(());
        }
        let mut pages = self.pages.lock();
        let heap = pages.as_mut().ok_or(SamplingError::NoHeap)?;
        if heap.space().is_none() {
            return Err(SamplingError::NoAddressSpace);
        }
        let npages = (guard::POOL_BYTES as usize) / PAGE_SIZE;
        // The stretch and the pool's bookkeeping after it, in one allocation: with two, a refusal of the
        // second kept the first (2 MiB) for good, at every attempt.
        let window = heap
            .alloc_private(npages + POOL_STRUCT_PAGES)
            .ok_or(SamplingError::OutOfMemory)?;
        let mem = window + guard::POOL_BYTES;
        // Every page of the stretch starts unmapped: guard pages stay so, object pages are mapped while live.
        heap.space()
            .expect("checked above: the heap maps its pages")
            .unmap_range(
                Page::containing_address(window),
                guard::POOL_BYTES / guard::PAGE,
            );
        let p = mem.as_mut_ptr::<Pool>();
        // SAFETY: fresh zeroed private pages, big enough and aligned for a Pool, ours alone.
        unsafe { Pool::init(p, window.as_u64()) };
        *pool = NonNull::new(p);
        self.sampler
            .pool_base
            .store(window.as_u64(), Ordering::Release);
        Ok(())
    }

    /// Re-arms a CPU's countdown for the current settings, without a sample.
    fn rearm(&self, st: &mut SampleState) {
        let epoch = self.sampler.epoch.load(Ordering::Acquire);
        if st.rng == 0 {
            st.rng = (st as *mut SampleState as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        }
        st.epoch = epoch;
        let mut rng = Rng::new(st.rng);
        st.profile_left = bytes_left(next_interval(
            self.sampler.profile_rate.load(Ordering::Relaxed),
            &mut rng,
        ));
        st.guard_left = bytes_left(
            self.sampler
                .guard_interval
                .load(Ordering::Relaxed)
                .saturating_sub(1) as u64,
        );
        st.rng = rng.next_u64();
        self.arm(st);
    }

    fn arm(&self, st: &mut SampleState) {
        let rate = self.sampler.profile_rate.load(Ordering::Relaxed);
        let interval = self.sampler.guard_interval.load(Ordering::Relaxed);
        let mut next = i64::MAX / 4;
        if rate > 0 {
            next = next.min(st.profile_left.max(0));
        }
        if interval > 0 {
            next = next.min(st.guard_left.max(0));
        }
        st.countdown = next as isize;
        st.armed = next as isize;
    }

    /// A sampling event on this CPU (its countdown went negative): which of profile and guard it is,
    /// with the countdown re-armed.
    fn sample_event(&self, st: &mut SampleState) -> (bool, bool) {
        if st.epoch != self.sampler.epoch.load(Ordering::Acquire) {
            self.rearm(st);
            return (false, false);
        }
        let consumed = (st.armed as i64).saturating_sub(st.countdown as i64);
        st.profile_left = st.profile_left.saturating_sub(consumed);
        st.guard_left = st.guard_left.saturating_sub(consumed);
        let rate = self.sampler.profile_rate.load(Ordering::Relaxed);
        let interval = self.sampler.guard_interval.load(Ordering::Relaxed);
        let profile = rate > 0 && st.profile_left < 0;
        let guard = interval > 0 && st.guard_left < 0;
        if profile {
            let mut rng = Rng::new(st.rng);
            st.profile_left = bytes_left(next_interval(rate, &mut rng));
            st.rng = rng.next_u64();
        }
        if guard {
            st.guard_left = bytes_left(interval.saturating_sub(1) as u64);
        }
        self.arm(st);
        (profile, guard)
    }

    /// The miss path's sampling step for a small allocation of `layout` on CPU `cpu`: a sampled object
    /// (profiled and/or guarded), or `None` to allocate as usual.
    ///
    /// # Safety
    /// `cpu` is the running CPU's index and interrupts are masked.
    #[cold]
    #[inline(never)]
    pub(super) unsafe fn sample_small(
        &self,
        cpu: usize,
        layout: Layout,
        frame: u64,
    ) -> Option<*mut u8> {
        // SAFETY: forwarded from the caller.
        let mut cache = unsafe { self.local_cache(cpu) }?;
        let st = cache.sample();
        if st.countdown >= 0 {
            if st.epoch != self.sampler.epoch.load(Ordering::Relaxed) {
                self.rearm(st);
            }
            return None;
        }
        let (profile, guard) = self.sample_event(st);
        if !profile && !guard {
            return None;
        }
        let mut frames = [0u64; MAX_FRAMES];
        let depth = self
            .platform
            .stack_trace(frame, &mut frames)
            .min(MAX_FRAMES);
        let frames = &frames[..depth];
        if guard {
            if let Some(p) = self.alloc_guarded(layout, frames) {
                if profile {
                    self.record(p as u64, class_size(layout), frames, Kind::Guarded);
                }
                return Some(p);
            }
        }
        if profile {
            return self.alloc_profiled_small(layout, frames);
        }
        None
    }

    /// Counts a large allocation of `size` bytes on this CPU; whether it is a profile sample (guard pages
    /// are for small objects only).
    pub(super) fn sample_large(&self, size: usize) -> bool {
        let _irq = self.platform.mask_interrupts();
        // SAFETY: the index is ours and interrupts are masked until we return.
        let Some(mut cache) = (unsafe { self.local_cache(self.platform.cpu_index_slow()) }) else {
            return false;
        };
        let st = cache.sample();
        st.countdown = st
            .countdown
            .saturating_sub(size.min(isize::MAX as usize) as isize);
        if st.countdown >= 0 {
            return false;
        }
        let (profile, guard) = self.sample_event(st);
        if guard {
            // The guard event falls on an object the pool cannot take: the next small allocation gets it.
            st.guard_left = -1;
            st.countdown = 0;
            st.armed = 0;
        }
        profile
    }

    /// A large allocation's sampling step, taken before its span is: counts `size` bytes on this CPU
    /// and, if the allocation is a profile sample, takes the stack from `frame` (`alloc_large`'s)
    /// outward, for [`Heap::record_large`] to record once the span is had. (A sample whose allocation
    /// then fails is lost, as its bytes were counted: a failed allocation is rare, and the stack
    /// cannot be taken under the page-heap lock, nor the countdown run: it may create this CPU's
    /// cache, which takes that lock.)
    pub(super) fn large_sample(&self, size: usize, frame: u64) -> Option<LargeSample> {
        if !self.sample_large(size) {
            return None;
        }
        let mut frames = [0u64; MAX_FRAMES];
        let depth = self
            .platform
            .stack_trace(frame, &mut frames)
            .min(MAX_FRAMES);
        Some(LargeSample { frames, depth })
    }

    /// Records the sampled large allocation at `addr`. Called under the page-heap lock that took its
    /// span (page heap -> tables is the lock order): a free forgets a large object's record under the
    /// lock that frees it, and an in-place `realloc` records only where the address starts a large
    /// object with no record (`sample_resized_large`), so a record made after that lock was dropped
    /// could follow a racing free of the address (a record of a freed object), or a resize's record of
    /// it (two records of one address: one outlives the object, and the next object there finds it).
    pub(super) fn record_large(&self, addr: VirtAddr, size: usize, sample: &LargeSample) {
        self.record(
            addr.as_u64(),
            size,
            &sample.frames[..sample.depth],
            Kind::Large,
        );
    }

    fn record(&self, addr: u64, size: usize, frames: &[u64], kind: Kind) -> bool {
        let _irq = self.platform.mask_interrupts();
        let mut t = self.sampler.tables.lock();
        let Some(t) = t.as_mut() else { return false };
        // The rate the profile scales this sample by, whatever it becomes later.
        let rate = self.sampler.profile_rate.load(Ordering::Relaxed) as u64;
        // SAFETY: the tables live in the heap's private pages; the lock makes us their only user.
        unsafe { t.as_mut() }
            .record(addr, size as u64, rate, frames, kind)
            .is_ok()
    }

    /// A profiled small object: alone in a large span of its own, recorded before it is handed out.
    fn alloc_profiled_small(&self, layout: Layout, frames: &[u64]) -> Option<*mut u8> {
        {
            let t = self.sampler.tables.lock();
            // SAFETY: as in `record`.
            if !t.is_some_and(|t| unsafe { t.as_ref() }.has_room()) {
                return None;
            }
        }
        let class = SpanClass::new(SizeClass::LARGE, false);
        // Small classes go up to 32 KiB: the pages the object's whole class size needs (a realloc may use
        // all of it), a heap page at least (alignment: a span starts a heap page, and small layouts are
        // aligned to at most a heap page).
        let npages = class_size(layout).div_ceil(PAGE_SIZE).max(1);
        let mut pages = self.pages.lock();
        let heap = pages.as_mut()?;
        let span = heap.alloc_span(npages, 1, class, None, Owner::Explicit)?;
        // SAFETY: a fresh large span, ours.
        let p = unsafe { span.as_ref() }.base().as_mut_ptr::<u8>();
        // Recorded under the page-heap lock that took the span, as a large sample is (see
        // `record_large`): recorded after it was dropped, an in-place `realloc` that found the span
        // live with no record meanwhile (after a racing free of its own object at this address)
        // could record it too, and the stale "large" record would then refuse this object's free.
        if !self.record(p as u64, class_size(layout), frames, Kind::Small) {
            // SAFETY: the span was never handed out.
            unsafe { heap.free_span(span) };
            return None;
        }
        // An object in a span of its own, counted as such in `Heap::stats` (as a small object that
        // gets a span of its own in a small heap is), under the lock its counters' writers hold.
        self.large_objects.add(1);
        self.large_pages.add(npages);
        Some(p)
    }

    /// A guarded object in the pool: its own page, mapped now, the rest of the page canary. `None`
    /// (counted in the pool's `refused`) when the pool cannot take it: full, its page not mapped, or
    /// an object too big or too aligned for a 4 KiB page. The last used to return before the pool
    /// saw it, uncounted: the guard event was lost and the stats said nothing was refused.
    fn alloc_guarded(&self, layout: Layout, frames: &[u64]) -> Option<*mut u8> {
        let side = self.sampling().guard_side;
        let mut pool = self.sampler.pool.lock();
        // SAFETY: the pool's bookkeeping lives in the heap's private pages; its lock is held.
        let pool = unsafe { pool.as_mut()?.as_mut() };
        // `take` refuses (and counts) an object over a page or aligned beyond one.
        let (slot, addr) = pool.take(layout.size().max(1), layout.align(), side)?;
        let page = pool.page_of(slot);
        let mapped = {
            let mut pages = self.pages.lock();
            let flags =
                PageTableFlags::PRESENT | PageTableFlags::WRITABLE | PageTableFlags::NO_EXECUTE;
            pages.as_mut().and_then(|h| h.space()).is_some_and(|space| {
                space
                    .map_range(
                        Page::containing_address(VirtAddr::new(page)),
                        1,
                        flags,
                        false,
                    )
                    .is_ok()
            })
        };
        if !mapped {
            pool.untake(slot);
            return None;
        }
        let end = addr + layout.size().max(1) as u64;
        // SAFETY: the slot's page was just mapped and is ours; both ranges lie in it, outside the object.
        unsafe {
            fill_canary(page, addr);
            fill_canary(end, page + guard::PAGE);
        }
        pool.commit(slot, addr, layout.size().max(1), layout.align(), frames);
        Some(addr as *mut u8)
    }

    /// Whether `ptr` is a live sampled small object that `layout` (of class `class`) may free or
    /// reallocate (the cold path of `realloc`, after the small-object check failed). A pool address
    /// its free would refuse (a damaged canary, another layout, a double free) is refused here, with
    /// the free's reason: the moving `realloc` that follows allocates and copies before it frees (a
    /// refusal then lost the new block), and `realloc`'s own refusal knows no pool address.
    #[track_caller]
    pub(super) fn is_sampled_small(&self, ptr: *mut u8, layout: Layout, class: SizeClass) -> bool {
        let addr = ptr as u64;
        let _irq = self.platform.mask_interrupts();
        if self.sampler.in_pool(addr) {
            // Checked under the pool's lock, told once it is released (see `free_guarded`).
            let checked = {
                let pool = self.sampler.pool.lock();
                let Some(p) = *pool else { return false };
                // SAFETY: as in `alloc_guarded`.
                let p = unsafe { p.as_ref() };
                p.check_free(addr, layout.size().max(1), layout.align())
                    .map(|slot| check_canary(p, slot))
            };
            return match checked {
                Ok(None) => true,
                Ok(Some(report)) => panic!("{report}"),
                // Refused as its free would refuse it, naming the reason: no span holds a pool address,
                // so `realloc`'s own refusal would call a live guarded object no heap object at all.
                Err(e) => refuse_guarded(Op::Realloc, VirtAddr::new_truncate(addr), layout, e),
            };
        }
        let t = self.sampler.tables.lock();
        // SAFETY: as in `record`.
        t.and_then(|t| unsafe { t.as_ref() }.live(addr))
            .is_some_and(|(kind, size)| {
                kind == Kind::Small
                    && SizeClass::for_layout(size as usize, layout.align()) == Some(class)
            })
    }

    /// The free of a small layout that is not in a small span: a sampled object is checked and given
    /// back (`true`); anything else is left to the caller to refuse (`false`).
    #[cold]
    #[inline(never)]
    #[track_caller]
    pub(super) fn free_sampled_small(
        &self,
        ptr: *mut u8,
        layout: Layout,
        class: SizeClass,
    ) -> bool {
        let addr = ptr as u64;
        let _irq = self.platform.mask_interrupts();
        if self.sampler.in_pool(addr) {
            self.free_guarded(addr, layout);
            return true;
        }
        let removed = {
            let mut t = self.sampler.tables.lock();
            let Some(t) = t.as_mut() else { return false };
            // SAFETY: as in `record`.
            let t = unsafe { t.as_mut() };
            match t.live(addr) {
                Some((Kind::Small, size))
                    if SizeClass::for_layout(size as usize, layout.align()) == Some(class) =>
                {
                    t.remove_live(addr)
                }
                _ => None,
            }
        };
        if removed.is_none() {
            return false;
        }
        let mut pages = self.pages.lock();
        let heap = pages
            .as_mut()
            .expect("sampled objects exist only after init");
        let span = self
            .spanmap
            .lookup(VirtAddr::new_truncate(addr))
            .map(|(s, _)| s)
            .expect("spanalloc: a recorded sampled object lost its span");
        // SAFETY: the span holds only this object, which the caller gives back (its record is gone, so
        // no other free of it gets here).
        let npages = unsafe { span.as_ref() }.npages().0;
        // SAFETY: as above.
        unsafe { heap.free_span(span) };
        self.large_objects.sub(1);
        self.large_pages.sub(npages);
        true
    }

    #[track_caller]
    fn free_guarded(&self, addr: u64, layout: Layout) {
        let va = VirtAddr::new_truncate(addr);
        // What is wrong, found under the pool's lock and told once it is released (a panic path that
        // allocates could take a guarded slot, and spin on that lock for good).
        let failed = {
            let mut pool = self.sampler.pool.lock();
            // SAFETY: as in `alloc_guarded`.
            let pool = unsafe { pool.as_mut().expect("the pool exists").as_mut() };
            match pool.check_free(addr, layout.size().max(1), layout.align()) {
                Err(e) => Some(Err(e)),
                // A damaged canary: the slot is not released (its page stays in quarantine).
                Ok(slot) => match check_canary(pool, slot) {
                    Some(report) => Some(Ok(report)),
                    None => {
                        let page = pool.page_of(slot);
                        {
                            let mut pages = self.pages.lock();
                            let heap = pages
                                .as_mut()
                                .expect("guarded objects exist only after init");
                            heap.space()
                                .expect("the pool exists only on a heap that maps its pages")
                                .unmap_range(Page::containing_address(VirtAddr::new(page)), 1);
                        }
                        // The profile record goes before the slot is released (pool -> tables is the
                        // lock order): once released, the slot and so this address may be handed out
                        // again on another CPU, whose record of it must not find this one.
                        if let Some(t) = self.sampler.tables.lock().as_mut() {
                            // SAFETY: as in `record`.
                            unsafe { t.as_mut() }.remove_live(addr);
                        }
                        pool.release(slot);
                        None
                    }
                },
            }
        };
        match failed {
            None => {}
            Some(Ok(report)) => panic!("{report}"),
            Some(Err(e)) => refuse_guarded(Op::Dealloc, va, layout, e),
        }
    }

    /// Checks and forgets a large object's profile record, under the page-heap lock that frees it; the
    /// refusal if `addr` is a profiled *small* object (a large layout for it), for the caller to raise
    /// once it has released that lock (this one is released on return).
    pub(super) fn forget_large(&self, op: Op, addr: VirtAddr) -> Result<(), Refusal> {
        let mut t = self.sampler.tables.lock();
        let Some(t) = t.as_mut() else { return Ok(()) };
        // SAFETY: as in `record`.
        let t = unsafe { t.as_mut() };
        match t.live(addr.as_u64()) {
            Some((Kind::Large, _)) if matches!(op, Op::Dealloc) => {
                t.remove_live(addr.as_u64());
                Ok(())
            }
            Some((Kind::Small, size)) => Err(Refusal::ProfiledSmall(size)),
            _ => Ok(()),
        }
    }

    /// Forgets the profile record of the large object at `addr`, resized in place under the page-heap
    /// lock the caller holds (see [`Heap::sample_resized_large`]).
    pub(super) fn forget_resized_large(&self, addr: VirtAddr) {
        let mut t = self.sampler.tables.lock();
        let Some(t) = t.as_mut() else { return };
        // SAFETY: as in `record`.
        let t = unsafe { t.as_mut() };
        // Only a large object's: the resize was checked as `forget_large` checks (a profiled small
        // object's address is refused there), so nothing else can be found here.
        if let Some((Kind::Large, _)) = t.live(addr.as_u64()) {
            t.remove_live(addr.as_u64());
        }
    }

    /// The allocation side of a large object at `addr` resized in place to `new_size` bytes, its record
    /// forgotten already ([`Heap::forget_resized_large`]): counted on this CPU as an allocation of that
    /// size is, and, if it is a sample, recorded with `profiled` bytes (the size class's size for a
    /// small new size, as any small object is profiled) and the stack from `frame` outward. So an
    /// in-place `realloc` is profiled as a moving one (its old block freed, its new one allocated), and
    /// the profile never keeps the size the object had before. Called with no lock held.
    pub(super) fn sample_resized_large(
        &self,
        addr: VirtAddr,
        new_size: usize,
        profiled: usize,
        frame: u64,
    ) {
        let Some(sample) = self.large_sample(new_size, frame) else {
            return;
        };
        let _irq = self.platform.mask_interrupts();
        // Recorded under the page-heap lock, where frees forget records, and only if `addr` still starts
        // a large object with no record: a racing (wrong) free of it since the resize must not leave a
        // record of a freed object behind, which the next object there would find.
        let _pages = self.pages.lock();
        let live = self.explicit_entry_or(addr).is_ok_and(|e| {
            // SAFETY: an in-use span (the span map says so, under the page-heap lock that keeps it
            // from being released meanwhile). Read only.
            e.class().size_class().is_large() && unsafe { e.span().as_ref() }.base() == addr
        });
        if !live {
            return;
        }
        let mut t = self.sampler.tables.lock();
        let Some(t) = t.as_mut() else { return };
        // SAFETY: as in `record`.
        let t = unsafe { t.as_mut() };
        if t.live(addr.as_u64()).is_none() {
            let rate = self.sampler.profile_rate.load(Ordering::Relaxed) as u64;
            // A full table drops the sample (counted there).
            let _ = t.record(
                addr.as_u64(),
                profiled as u64,
                rate,
                &sample.frames[..sample.depth],
                Kind::Large,
            );
        }
    }

    /// What a fault at `addr` means if it lies in the guard pool: a use after free or an out-of-bounds
    /// access, naming the object, its size and (with the profile's stacks) where it was allocated. For a
    /// page-fault handler: takes no lock it could wait on (`None` if the pool is busy), allocates nothing.
    pub fn guard_report(&self, addr: VirtAddr) -> Option<Report> {
        if !self.sampler.in_pool(addr.as_u64()) {
            return None;
        }
        let pool = self.sampler.pool.try_lock()?;
        // SAFETY: as in `alloc_guarded`.
        pool.and_then(|p| unsafe { p.as_ref() }.classify(addr.as_u64()))
    }

    /// Whether `ptr` is a live guarded object (tests, diagnostics).
    pub fn is_guarded(&self, ptr: *const u8) -> bool {
        self.guarded_size(VirtAddr::new_truncate(ptr as u64))
            .is_some()
    }

    /// The size of the live guarded object starting at `addr`, if there is one.
    pub(super) fn guarded_size(&self, addr: VirtAddr) -> Option<usize> {
        let addr = addr.as_u64();
        if !self.sampler.in_pool(addr) {
            return None;
        }
        let _irq = self.platform.mask_interrupts();
        let pool = self.sampler.pool.lock();
        // SAFETY: as in `alloc_guarded`.
        pool.and_then(|p| unsafe { p.as_ref() }.live_size(addr))
    }

    /// Writes the heap profile in pprof's protobuf format into `out` (see [`crate::profile::pprof`]):
    /// `Ok(bytes written)` or `Err(bytes needed)`. `mapping` names the executable the stacks' addresses
    /// belong to, so that `go tool pprof` can name the functions. Empty (no samples) before profiling
    /// was switched on.
    pub fn write_heap_profile(
        &self,
        mapping: Option<Mapping<'_>>,
        out: &mut [u8],
    ) -> Result<usize, usize> {
        let header = Header {
            rate: self.sampler.profile_rate.load(Ordering::Relaxed),
            mapping,
            drop_frames: pprof::DROP_FRAMES,
        };
        let _irq = self.platform.mask_interrupts();
        let t = self.sampler.tables.lock();
        match *t {
            // SAFETY: as in `record`.
            Some(t) => pprof::encode(unsafe { t.as_ref() }.buckets(), &header, out),
            None => pprof::encode(core::iter::empty(), &header, out),
        }
    }

    /// The sampler's counters.
    pub fn sampling_stats(&self) -> SamplingStats {
        let _irq = self.platform.mask_interrupts();
        let mut s = SamplingStats::default();
        if let Some(t) = *self.sampler.tables.lock() {
            // SAFETY: as in `record`.
            let t = unsafe { t.as_ref() };
            s.buckets = t.nbuckets;
            s.live_samples = t.nlive;
            s.dropped = t.dropped;
        }
        if let Some(p) = *self.sampler.pool.lock() {
            // SAFETY: as in `alloc_guarded`.
            let p = unsafe { p.as_ref() };
            s.guarded = p.allocated;
            s.guard_refused = p.refused;
        }
        s
    }
}

/// A countdown of `bytes` (an interval of the settings): the longest one an `i64` holds when it does not
/// fit. A plain cast made an interval of 2^63 bytes or more negative, i.e. due at once: a profile rate
/// or guard interval of `usize::MAX` ("almost never") sampled every allocation.
fn bytes_left(bytes: u64) -> i64 {
    i64::try_from(bytes).unwrap_or(i64::MAX)
}

/// The refusal of a guarded object's free or realloc.
#[cold]
#[inline(never)]
#[track_caller]
fn refuse_guarded(op: Op, va: VirtAddr, layout: Layout, e: FreeError) -> ! {
    match e {
        FreeError::DoubleFree { object, size } => bad_free(
            op,
            va,
            layout,
            format_args!("double free of the guarded object at {object:#x} ({size} B), which waits in quarantine"),
        ),
        FreeError::WrongSize { size } => bad_free(
            op,
            va,
            layout,
            format_args!("the layout's size differs from the allocation's ({size} B, a guarded object)"),
        ),
        FreeError::WrongAlign { align } => bad_free(
            op,
            va,
            layout,
            format_args!("the layout's alignment differs from the allocation's ({align}, a guarded object)"),
        ),
        FreeError::NotAnObject => bad_free(
            op,
            va,
            layout,
            format_args!("not a live heap object (an address in the guard pool that starts no live object)"),
        ),
    }
}

/// The size a small object of `layout` is profiled with: its size class's (as Go's profile, which also keeps
/// the number of buckets down: one per stack and class, not per requested size).
fn class_size(layout: Layout) -> usize {
    SizeClass::for_layout(layout.size(), layout.align()).map_or(layout.size(), |c| c.size())
}

/// The first damaged canary byte around slot `slot`'s object, as a report.
fn check_canary(pool: &Pool, slot: usize) -> Option<Report> {
    let (addr, size) = pool.object(slot);
    let page = pool.page_of(slot);
    let end = addr + size as u64;
    // After the object first (an overflow is the likelier damage), then before it; the report names the
    // damaged byte nearest the object on the side it found.
    // SAFETY: the slot is live, so its page is mapped; both ranges lie in it, outside the object.
    if let Some(a) = unsafe { first_bad_canary(end, page + guard::PAGE, true) } {
        let kind = ErrorKind::CanaryDamaged {
            after: true,
            distance: a - end + 1,
        };
        return Some(pool.report(slot, kind, a));
    }
    // SAFETY: as above.
    let a = unsafe { first_bad_canary(page, addr, false) }?;
    let kind = ErrorKind::CanaryDamaged {
        after: false,
        distance: addr - a,
    };
    Some(pool.report(slot, kind, a))
}

/// The canary as a word: the canary bytes of an 8-byte aligned word (the byte depends on the address's low
/// three bits only), so the middle of a range is filled and checked a word at a time, which matters: a
/// guarded 16 B object has some 8 KiB of canary around it.
const fn canary_word() -> u64 {
    let mut w = 0u64;
    let mut i = 0;
    while i < 8 {
        w |= (guard::canary(i) as u64) << (8 * i);
        i += 1;
    }
    w
}

/// Fills `[from, to)` with the canary.
///
/// # Safety
/// The range is mapped, writable and nobody else's.
unsafe fn fill_canary(from: u64, to: u64) {
    let mut a = from;
    while a < to {
        if a % 8 == 0 && to - a >= 8 {
            // SAFETY: an aligned word inside the range (the caller's promise).
            unsafe { (a as *mut u64).write(canary_word()) };
            a += 8;
        } else {
            // SAFETY: a byte inside the range.
            unsafe { (a as *mut u8).write(guard::canary(a)) };
            a += 1;
        }
    }
}

/// The address of the damaged canary byte in `[from, to)` nearest `from` (`from_low`) or nearest `to`,
/// if any. Reads are volatile: the bytes are compared against what the program may have written out of
/// bounds, which the compiler cannot see.
///
/// # Safety
/// The range is mapped and readable.
unsafe fn first_bad_canary(from: u64, to: u64, from_low: bool) -> Option<u64> {
    // Word-wise over the aligned middle, byte-wise at the edges and inside a damaged word.
    let bad_byte = |a: u64| {
        // SAFETY: `a` is inside the range (the caller's promise).
        (unsafe { ptr::read_volatile(a as *const u8) } != guard::canary(a)).then_some(a)
    };
    let bad_in_word = |w: u64| {
        let mut bytes = (w..w + 8).filter_map(bad_byte);
        if from_low {
            bytes.next()
        } else {
            bytes.next_back()
        }
    };
    let mid_lo = from.next_multiple_of(8).min(to);
    let mid_hi = (to & !7).max(mid_lo);
    let words = (mid_hi - mid_lo) / 8;
    let scan_words = |i: u64| {
        let w = mid_lo + 8 * i;
        // SAFETY: an aligned word inside the range.
        let v = unsafe { ptr::read_volatile(w as *const u64) };
        if v == canary_word() {
            None
        } else {
            bad_in_word(w)
        }
    };
    if from_low {
        (from..mid_lo)
            .find_map(bad_byte)
            .or_else(|| (0..words).find_map(scan_words))
            .or_else(|| (mid_hi..to).find_map(bad_byte))
    } else {
        (mid_hi..to)
            .rev()
            .find_map(bad_byte)
            .or_else(|| (0..words).rev().find_map(scan_words))
            .or_else(|| (from..mid_lo).rev().find_map(bad_byte))
    }
}

#[cfg(test)]
mod canary_tests {
    use super::{fill_canary, first_bad_canary, guard};
    use std::vec;

    /// The word-wise fill and scan against their byte-wise definition: every range of a buffer (aligned
    /// and not, shorter than a word and longer), clean and with one or two damaged bytes anywhere.
    #[test]
    fn word_wise_canary_matches_the_byte_wise_definition() {
        let mut buf = vec![0u64; 8]; // 64 B, 8-aligned
        let base = buf.as_mut_ptr() as u64;
        for from in 0..24u64 {
            for to in from..64u64 {
                let (lo, hi) = (base + from, base + to);
                buf.fill(0);
                // SAFETY: the range lies in `buf`, ours.
                unsafe { fill_canary(lo, hi) };
                for a in base..base + 64 {
                    // SAFETY: inside `buf`.
                    let b = unsafe { *(a as *const u8) };
                    let want = if (lo..hi).contains(&a) {
                        guard::canary(a)
                    } else {
                        0
                    };
                    assert_eq!(b, want, "fill [{from}, {to}) at {}", a - base);
                }
                for low in [true, false] {
                    // SAFETY: as above.
                    assert_eq!(unsafe { first_bad_canary(lo, hi, low) }, None);
                }
                for bad in lo..hi {
                    for second in [None, Some(lo), Some(hi.saturating_sub(1)), Some(bad ^ 9)] {
                        let second = second.filter(|s| (lo..hi).contains(s));
                        // SAFETY: inside the range.
                        unsafe {
                            fill_canary(lo, hi);
                            *(bad as *mut u8) ^= 0x40;
                            if let Some(s) = second.filter(|&s| s != bad) {
                                *(s as *mut u8) ^= 0x01;
                            }
                        }
                        let damaged: vec::Vec<u64> = (lo..hi)
                            // SAFETY: inside the range, in `buf`.
                            .filter(|&a| unsafe { *(a as *const u8) } != guard::canary(a))
                            .collect();
                        // SAFETY: inside the range.
                        let (first, last) = unsafe {
                            (
                                first_bad_canary(lo, hi, true),
                                first_bad_canary(lo, hi, false),
                            )
                        };
                        assert_eq!(
                            first,
                            damaged.first().copied(),
                            "[{from}, {to}) bad {bad:#x}"
                        );
                        assert_eq!(last, damaged.last().copied(), "[{from}, {to}) bad {bad:#x}");
                    }
                }
            }
        }
    }
}
