//! The contestants: spanalloc and the allocators a kernel or program would use instead, each behind the
//! lock type a kernel would put it behind, all seen through one generic trait.
//!
//! Dispatch is static: a workload is a [`Workload`] whose `run` is generic over the contestant, and
//! [`Contestants::dispatch`] calls it once per contestant type, so every allocator's fast path is
//! monomorphized into the workload's loop exactly like the others' (no virtual call for anyone).
//!
//! Invariants:
//! - Every `no_std` peer owns its own region of `arena_bytes`, prefaulted, taken once from the system.
//! - spanalloc gets a host machine with the same amount of fake physical memory; its threads pin distinct
//!   "CPUs" through [`Contestant::enter_thread`].
//! - The userland allocators (mimalloc, jemalloc, the system's) take memory from the OS as they like.

use core::alloc::{GlobalAlloc, Layout};
use core::ptr::{null_mut, NonNull};

use spanalloc::host::{HostMachine, HostPlatform};
use spanalloc::Heap;

use crate::region::Region;

/// What a workload needs of an allocator beyond `GlobalAlloc`.
pub trait Contestant: GlobalAlloc + Sync {
    /// Called first thing in every benchmark thread with the thread's index in its run (0, 1, ...).
    #[inline]
    fn enter_thread(&self, _index: usize) {}

    /// Bytes of memory the allocator itself says it holds, if it keeps such an account (spanalloc).
    fn held_bytes(&self) -> Option<u64> {
        None
    }

    /// Gives free memory back to the system, if the allocator can be asked to. `false` if it cannot.
    fn trim(&self) -> bool {
        false
    }
}

/// Which contestant.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Id {
    Spanalloc,
    Talc,
    Rlsf,
    Buddy,
    LinkedList,
    Mimalloc,
    Jemalloc,
    System,
}

impl Id {
    pub const ALL: [Id; 8] = [
        Id::Spanalloc,
        Id::Talc,
        Id::Rlsf,
        Id::Buddy,
        Id::LinkedList,
        Id::Mimalloc,
        Id::Jemalloc,
        Id::System,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Id::Spanalloc => "spanalloc",
            Id::Talc => "talc",
            Id::Rlsf => "rlsf",
            Id::Buddy => "buddy_system_allocator",
            Id::LinkedList => "linked_list_allocator",
            Id::Mimalloc => "mimalloc",
            Id::Jemalloc => "jemalloc",
            Id::System => "system",
        }
    }

    pub fn from_name(name: &str) -> Option<Id> {
        Id::ALL.into_iter().find(|id| id.name() == name)
    }

    /// Heaps over a fixed region of memory (spanalloc's is its fake physical memory).
    pub fn is_arena(self) -> bool {
        matches!(
            self,
            Id::Spanalloc | Id::Talc | Id::Rlsf | Id::Buddy | Id::LinkedList
        )
    }

    /// Built into this binary (mimalloc and jemalloc need the `c-allocators` feature).
    pub fn available(self) -> bool {
        match self {
            Id::Mimalloc | Id::Jemalloc => cfg!(feature = "c-allocators"),
            _ => true,
        }
    }
}

/// Something to run on one contestant; `run` is instantiated per contestant type.
pub trait Workload {
    type Out;
    fn run<A: Contestant>(&self, a: &A) -> Self::Out;
}

// ---------------------------------------------------------------------------------------------- spanalloc

/// spanalloc on a host machine (memfd-backed fake physical memory, mirrored page tables).
pub struct Spanalloc {
    heap: &'static Heap<HostPlatform>,
    platform: &'static HostPlatform,
}

/// Window of address space for an ordinary heap: room for 2 GiB of heap plus its metadata.
const WINDOW_BYTES: usize = 4 << 30;
const MAX_HEAP_BYTES: usize = 2 << 30;

impl Spanalloc {
    /// A heap over `bytes` of usable fake physical memory ([`Spanalloc::with_usable_memory`]), against a
    /// peer's arena of `bytes`: a machine with holes would give it less, and smaller per-CPU caches (a heap
    /// under 256 MiB of memory shrinks them, `cache::cache_shift`).
    pub fn new(bytes: usize) -> Self {
        Self::with_usable_memory(bytes)
    }

    /// A heap whose machine has exactly `usable_bytes` of memory the heap may use (no holes, nothing
    /// reserved besides the first MiB, which no heap gets): against a peer's arena of `usable_bytes`. The
    /// frame allocator's metadata and the page tables come out of those bytes.
    pub fn with_usable_memory(usable_bytes: usize) -> Self {
        Self::on(
            HostMachine::with_usable_memory(usable_bytes, WINDOW_BYTES),
            MAX_HEAP_BYTES,
        )
    }

    /// [`Spanalloc::new`] with its fake physical memory faulted in before the heap takes it, as every
    /// `no_std` peer's arena is (`Region::new(.., true)`): otherwise the measured passes pay the host's
    /// first touch of each frame (a page fault and the kernel's zeroing of a memfd page), which the peers
    /// paid before the run — a host artifact, not the allocator's cost (a kernel's memory is there).
    pub fn prefaulted(bytes: usize) -> Self {
        use spanalloc::Platform;
        let m = HostMachine::with_usable_memory(bytes, WINDOW_BYTES);
        let phys = m.platform.physical_memory_offset().as_mut_ptr::<u8>();
        for off in (0..m.platform.phys_bytes()).step_by(4096) {
            // SAFETY: `off` is inside the fake physical memory's direct map; the byte is written back as
            // read (the frame allocator's bitmap and the first page table live there already), on this
            // thread, before any heap uses the memory.
            unsafe {
                let at = phys.add(off);
                at.write_volatile(at.read_volatile());
            }
        }
        Self::on(m, MAX_HEAP_BYTES)
    }

    /// A heap of at most `max_heap_bytes` in a window of `window_bytes` (metadata + heap).
    pub fn with_window(phys_bytes: usize, window_bytes: usize, max_heap_bytes: usize) -> Self {
        Self::on(HostMachine::new(phys_bytes, window_bytes), max_heap_bytes)
    }

    fn on(m: HostMachine, max_heap_bytes: usize) -> Self {
        let phys_bytes = m.platform.phys_bytes();
        let platform = m.platform;
        let heap: &'static Heap<HostPlatform> = Box::leak(Box::new(Heap::new(platform)));
        heap.init(m.space, m.window, max_heap_bytes)
            .unwrap_or_else(|e| panic!("bench: spanalloc init over {phys_bytes:#x} bytes: {e}"));
        Spanalloc { heap, platform }
    }

    pub fn heap(&self) -> &'static Heap<HostPlatform> {
        self.heap
    }

    /// Frees the fake physical memory of a heap nobody will use again (the heap and its platform are
    /// leaked `'static`s, so nothing else would ever return it to the system).
    pub fn retire(self) {
        // SAFETY: `self` was the last handle on this heap (taken by value; workloads only borrow it, and
        // free every block before they return), so nothing touches its memory or windows again.
        unsafe { self.platform.release_memory() };
    }
}

// SAFETY: forwards to the heap, a `GlobalAlloc` with the same contract.
unsafe impl GlobalAlloc for Spanalloc {
    #[inline(always)]
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: the caller's contract is forwarded.
        unsafe { self.heap.alloc(layout) }
    }
    #[inline(always)]
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: as above.
        unsafe { self.heap.dealloc(ptr, layout) }
    }
    #[inline(always)]
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: as above.
        unsafe { self.heap.alloc_zeroed(layout) }
    }
    #[inline(always)]
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: as above.
        unsafe { self.heap.realloc(ptr, layout, new_size) }
    }
}

impl Contestant for Spanalloc {
    #[inline]
    fn enter_thread(&self, index: usize) {
        HostPlatform::set_cpu_index(index);
    }

    fn held_bytes(&self) -> Option<u64> {
        Some(self.heap.stats().frames_held.bytes())
    }

    fn trim(&self) -> bool {
        self.heap.trim();
        true
    }
}

// ------------------------------------------------------------------------------------------ no_std peers

/// The spin lock every locked peer uses (spanalloc's own locks are spin 0.10 too).
type RawSpin = spin::mutex::SpinMutex<()>;

/// talc 5: `TalcLock` (v4's `Talck`) over a manually claimed region.
pub type Talc = talc::TalcLock<RawSpin, talc::source::Manual>;

pub fn new_talc(region: &Region) -> Talc {
    let t = Talc::new(talc::source::Manual);
    // SAFETY: the region is ours alone for as long as this allocator is used (module invariant).
    let claimed = unsafe { t.lock().claim(region.base(), region.len()) };
    claimed.expect("bench: talc refused its arena");
    t
}

/// rlsf's TLSF (no lock of its own) behind a spin lock, with the parameters talc's benchmarks use.
pub struct Rlsf(
    spin::Mutex<
        rlsf::Tlsf<'static, usize, usize, { usize::BITS as usize - 12 }, { usize::BITS as usize }>,
    >,
);

// SAFETY: the TLSF's raw pointers point into its region, which only it uses; the mutex serializes all access.
unsafe impl Send for Rlsf {}
// SAFETY: as above.
unsafe impl Sync for Rlsf {}

pub fn new_rlsf(region: &Region) -> Rlsf {
    let mut t = rlsf::Tlsf::new();
    let block = core::ptr::slice_from_raw_parts_mut(region.base(), region.len());
    // SAFETY: the region is valid, writable, ours alone while this allocator is used (module invariant).
    let added = unsafe { t.insert_free_block_ptr(NonNull::new(block).expect("region at 0")) };
    added.expect("bench: rlsf refused its arena");
    Rlsf(spin::Mutex::new(t))
}

// SAFETY: forwards to `Tlsf`, whose allocate/deallocate/reallocate keep GlobalAlloc's contract.
unsafe impl GlobalAlloc for Rlsf {
    #[inline]
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        self.0
            .lock()
            .allocate(layout)
            .map_or(null_mut(), NonNull::as_ptr)
    }
    #[inline]
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: the caller passes a live block of this allocator with its layout.
        unsafe {
            self.0
                .lock()
                .deallocate(NonNull::new_unchecked(ptr), layout.align())
        }
    }
    #[inline]
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let new = Layout::from_size_align(new_size, layout.align()).expect("realloc layout");
        // SAFETY: as for dealloc; the alignment is unchanged, as `reallocate` requires.
        unsafe { self.0.lock().reallocate(NonNull::new_unchecked(ptr), new) }
            .map_or(null_mut(), NonNull::as_ptr)
    }
}

/// buddy_system_allocator's `LockedHeap` (spin lock) with 32 orders (blocks up to 4 GiB).
pub type Buddy = buddy_system_allocator::LockedHeap<32>;

pub fn new_buddy(region: &Region) -> Buddy {
    let b = Buddy::new();
    // SAFETY: the region is ours alone for as long as this allocator is used (module invariant).
    unsafe { b.lock().init(region.base() as usize, region.len()) };
    b
}

/// linked_list_allocator's `LockedHeap` (spinning_top lock).
pub type LinkedList = linked_list_allocator::LockedHeap;

pub fn new_linked_list(region: &Region) -> LinkedList {
    // SAFETY: the region is ours alone for as long as this allocator is used (module invariant).
    unsafe { LinkedList::new(region.base(), region.len()) }
}

impl Contestant for Talc {}
impl Contestant for Rlsf {}
impl Contestant for Buddy {}
impl Contestant for LinkedList {}

// -------------------------------------------------------------------------------------- userland peers

impl Contestant for std::alloc::System {
    fn trim(&self) -> bool {
        // SAFETY: malloc_trim has no preconditions.
        unsafe { libc::malloc_trim(0) };
        true
    }
}

#[cfg(feature = "c-allocators")]
mod c_allocators {
    use super::Contestant;

    extern "C" {
        // Part of the mimalloc library libmimalloc-sys builds (declared by its `extended` feature only).
        fn mi_collect(force: bool);
    }

    impl Contestant for mimalloc::MiMalloc {
        fn trim(&self) -> bool {
            // SAFETY: mi_collect has no preconditions.
            unsafe { mi_collect(true) };
            true
        }
    }

    impl Contestant for tikv_jemallocator::Jemalloc {
        fn trim(&self) -> bool {
            // arena.<MALLCTL_ARENAS_ALL>.purge: return every arena's unused dirty pages now.
            let name = c"arena.4096.purge";
            // SAFETY: a NUL-terminated name of a void mallctl: no old or new value.
            let r = unsafe {
                tikv_jemalloc_sys::mallctl(
                    name.as_ptr(),
                    core::ptr::null_mut(),
                    core::ptr::null_mut(),
                    core::ptr::null_mut(),
                    0,
                )
            };
            r == 0
        }
    }
}

// --------------------------------------------------------------------------------------------- the set

/// The long-lived contestants of a run.
pub struct Contestants {
    pub spanalloc: Spanalloc,
    talc: Talc,
    rlsf: Rlsf,
    buddy: Buddy,
    linked_list: LinkedList,
}

impl Contestants {
    /// Every `no_std` peer gets a prefaulted region of `arena_bytes`, spanalloc as much fake physical
    /// memory, prefaulted too.
    pub fn new(arena_bytes: usize) -> Self {
        let region = || Region::new(arena_bytes, true).leak();
        Contestants {
            spanalloc: Spanalloc::prefaulted(arena_bytes),
            talc: new_talc(region()),
            rlsf: new_rlsf(region()),
            buddy: new_buddy(region()),
            linked_list: new_linked_list(region()),
        }
    }

    /// Runs `w` on contestant `id`.
    pub fn dispatch<W: Workload>(&self, id: Id, w: &W) -> W::Out {
        match id {
            Id::Spanalloc => w.run(&self.spanalloc),
            Id::Talc => w.run(&self.talc),
            Id::Rlsf => w.run(&self.rlsf),
            Id::Buddy => w.run(&self.buddy),
            Id::LinkedList => w.run(&self.linked_list),
            Id::Mimalloc | Id::Jemalloc | Id::System => dispatch_userland(id, w),
        }
    }
}

/// Runs `w` on a fresh instance of arena contestant `id` over `region` (spanalloc: a fresh machine with
/// as much usable fake physical memory, retired afterwards: see [`Spanalloc::with_usable_memory`]). The
/// instance is gone when this returns, so the caller may hand the same region to the next fresh instance.
pub fn dispatch_fresh<W: Workload>(id: Id, region: &Region, w: &W) -> W::Out {
    match id {
        Id::Spanalloc => {
            let s = Spanalloc::with_usable_memory(region.len());
            let out = w.run(&s);
            s.retire();
            out
        }
        Id::Talc => w.run(&new_talc(region)),
        Id::Rlsf => w.run(&new_rlsf(region)),
        Id::Buddy => w.run(&new_buddy(region)),
        Id::LinkedList => w.run(&new_linked_list(region)),
        _ => dispatch_userland(id, w),
    }
}

fn dispatch_userland<W: Workload>(id: Id, w: &W) -> W::Out {
    match id {
        #[cfg(feature = "c-allocators")]
        Id::Mimalloc => w.run(&mimalloc::MiMalloc),
        #[cfg(feature = "c-allocators")]
        Id::Jemalloc => w.run(&tikv_jemallocator::Jemalloc),
        Id::System => w.run(&std::alloc::System),
        _ => panic!(
            "bench: {} is not built into this binary (build with the `c-allocators` feature)",
            id.name()
        ),
    }
}
