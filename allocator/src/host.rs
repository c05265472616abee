//! The host platform: the allocator's machine, faked with memory from the OS, for tests and benchmarks.
//!
//! - Physical memory is a memfd of `phys_bytes`, mapped MAP_SHARED once as the direct map
//!   (`physical_memory_offset()` is that mapping's address, so physical address 0 is its first byte).
//! - The page tables the mapper builds live in that fake memory but no MMU reads them. Instead
//!   `page_mapped(page, frame)` mirrors each mapping: it maps the memfd at the frame's offset over the
//!   page's host address (MAP_FIXED|MAP_SHARED), so data written through the window lands in the fake frame
//!   and a zeroed frame reads as zero there. `pages_unmapped` puts PROT_NONE memory back, so touching an
//!   unmapped page faults as on the real machine.
//! - Virtual windows come from `reserve_window`: PROT_NONE|MAP_NORESERVE reservations aligned to
//!   [`ARENA_SIZE`], so the mapper's addresses are the host addresses.
//! - CPUs are threads: each thread takes the lowest free index on first use (the heap's slow path,
//!   `cpu_index_slow`) and gives it back when it exits, so no two live threads share one; a thread that finds all [`MAX_CPUS`] taken (or runs after
//!   its thread-local state is gone) gets [`NO_CPU`], an index past every cache, and the heap serves it
//!   through its locked path. A thread may also pin an index with [`HostPlatform::set_cpu_index`].
//!   Interrupts do not exist: masking is a no-op guard, a thread keeps its index while it lives and no
//!   handler allocates, so the fast paths guard against nothing (`INTERRUPTED_CODE_STAYS_ON_CPU`, not
//!   `INTERRUPT_HANDLERS_ALLOCATE`). The heap's tests of the kernel's busy window wrap this platform
//!   (heap/interrupt_tests.rs).
//!
//! Linux caps the mappings of a process (vm.max_map_count, 65530 by default). Each window page mapped to a
//! frame whose memfd offset does not continue its neighbour's costs one mapping, so some 250 MiB of badly
//! scattered 4 KiB pages exhaust it (mmap then fails with ENOMEM, reported by a panic naming the page).
//! Frames handed out first-fit are mostly contiguous, and neighbouring mappings then merge.
//!
//! Under Miri (no memfd, no mmap) the direct map and the windows are plain heap allocations. Mappings
//! cannot alias there, so `page_mapped` copies the frame's bytes into the window page and `pages_unmapped`
//! zero-fills the pages: reads see the frame as it was when mapped, writes through the window do not reach
//! the frame, and touching an unmapped page reads zeroes instead of faulting. Those allocations stand in
//! for OS mappings, which Miri's leak check would never see: they are registered as leak-check roots (as a
//! `static` is), and so is everything the tests leak on purpose through [`leak`].

use std::boxed::Box;
use std::cell::Cell;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;
use std::vec::Vec;

use crate::addr::{Page, PhysAddr, PhysFrame, VirtAddr, FRAME_SIZE};
use crate::arena::{AddressSpace, ArenaWindow, ARENA_SIZE};
use crate::frames::{FrameAllocator, MemoryRegion, RegionKind};
use crate::paging::Mapper;
use crate::platform::{Platform, MAX_CPUS};

/// The fake machine: physical memory, mirrored mappings, thread = CPU.
pub struct HostPlatform {
    phys: VirtAddr,
    phys_bytes: usize,
    /// `[start, end)` of every window reserved, so a wrong address can never be mapped over host memory.
    windows: Mutex<Vec<(u64, u64)>>,
    /// Whether `stack_trace` walks the stack (off until [`HostPlatform::set_stack_traces`]).
    stack_traces: AtomicBool,
    #[cfg(not(miri))]
    memfd: libc::c_int,
}

/// What [`HostPlatform::mask_interrupts`] returns: nothing to restore on the host.
pub struct HostInterruptGuard(());

/// The index a thread gets when every index is taken: at or over `MAX_CPUS`, so it reaches no cache.
pub const NO_CPU: usize = MAX_CPUS;

const _: () = assert!(MAX_CPUS <= 64, "host: TAKEN holds one bit per CPU index");

/// Indices held by live threads (bit `i`: index `i`).
static TAKEN: AtomicU64 = AtomicU64::new(0);

/// `CPU` before the thread's first `cpu_index`.
const UNASSIGNED: usize = usize::MAX;

std::thread_local! {
    /// The thread's index (or `UNASSIGNED`). Without drop glue, so reading it is one TLS load, and it
    /// stays readable while other thread-locals are destroyed.
    static CPU: Cell<usize> = const { Cell::new(UNASSIGNED) };
    /// Registered on the first automatic assignment: gives the index back when the thread exits.
    static RELEASE: CpuRelease = const { CpuRelease(Cell::new(false)) };
    /// `[start, end)` of the mapping that held this thread's stack pointer when last looked up
    /// ([`stack_top`]), empty until then. No drop glue, as `CPU`.
    static STACK: Cell<(u64, u64)> = const { Cell::new((0, 0)) };
}

/// The end of the mapping that holds the running thread's stack pointer, or 0 if it cannot be had. That
/// mapping is mapped whole, so everything from the stack pointer up to its end may be read.
///
/// The mapping comes from `/proc/self/maps` and is kept per thread; it is looked up again whenever the
/// stack pointer lies outside the one kept (the main thread's stack grew past it, or the code runs on
/// another stack: a coroutine's, a signal stack), so the end returned is always that of the stack the
/// caller runs on. Not `pthread_getattr_np`: glibc's allocates (the main thread's reads `/proc/self/maps`
/// through `fopen`, every thread's gets its CPU set with `realloc`), and this runs inside the allocator,
/// which may be the program's `malloc`. Here: raw `open`/`read` into a stack buffer, no allocation.
#[cfg(all(target_os = "linux", target_arch = "x86_64", not(miri)))]
fn stack_top() -> u64 {
    // An address in the running stack: a local's.
    let probe = 0u8;
    let sp = core::hint::black_box(&probe) as *const u8 as u64;
    let (lo, hi) = STACK.try_with(Cell::get).unwrap_or((0, 0));
    if (lo..hi).contains(&sp) {
        return hi;
    }
    let (lo, hi) = mapping_containing(sp).unwrap_or((0, 0));
    let _ = STACK.try_with(|t| t.set((lo, hi)));
    if (lo..hi).contains(&sp) {
        hi
    } else {
        0
    }
}

/// The `[start, end)` of the mapping holding `addr`, read from `/proc/self/maps` without allocating.
#[cfg(all(target_os = "linux", target_arch = "x86_64", not(miri)))]
fn mapping_containing(addr: u64) -> Option<(u64, u64)> {
    // SAFETY: a NUL-terminated path; the descriptor is closed below.
    let fd = unsafe {
        libc::open(
            c"/proc/self/maps".as_ptr(),
            libc::O_RDONLY | libc::O_CLOEXEC,
        )
    };
    if fd < 0 {
        return None;
    }
    let mut buf = [0u8; 4096];
    let mut have = 0; // bytes of `buf` holding unparsed text (a partial line at its start)
    let mut found = None;
    'read: loop {
        // SAFETY: reads into the free tail of `buf`, a local.
        let n = unsafe { libc::read(fd, buf[have..].as_mut_ptr().cast(), buf.len() - have) };
        if n <= 0 {
            break;
        }
        have += n as usize;
        let mut start = 0;
        while let Some(nl) = buf[start..have].iter().position(|&b| b == b'\n') {
            if let Some((lo, hi)) = parse_range(&buf[start..start + nl]) {
                if (lo..hi).contains(&addr) {
                    found = Some((lo, hi));
                    break 'read;
                }
            }
            start += nl + 1;
        }
        if start == 0 && have == buf.len() {
            break; // a line longer than the buffer: give up rather than misparse
        }
        buf.copy_within(start..have, 0);
        have -= start;
    }
    // SAFETY: our descriptor, opened above.
    unsafe { libc::close(fd) };
    found
}

/// `start-end` (hex) at the beginning of a `/proc/self/maps` line.
#[cfg(all(target_os = "linux", target_arch = "x86_64", not(miri)))]
fn parse_range(line: &[u8]) -> Option<(u64, u64)> {
    let field = line.split(|&b| b == b' ').next()?;
    let dash = field.iter().position(|&b| b == b'-')?;
    let hex = |s: &[u8]| u64::from_str_radix(core::str::from_utf8(s).ok()?, 16).ok();
    Some((hex(&field[..dash])?, hex(&field[dash + 1..])?))
}

/// Gives an automatically taken index back when its thread exits; the thread's later calls get
/// [`NO_CPU`] (its allocations during thread-local destruction then take the locked path).
struct CpuRelease(Cell<bool>);

impl Drop for CpuRelease {
    fn drop(&mut self) {
        if self.0.get() {
            let i = CPU.with(|c| c.replace(NO_CPU));
            if i < MAX_CPUS {
                TAKEN.fetch_and(!(1 << i), Ordering::AcqRel);
            }
        }
    }
}

#[cfg(miri)]
extern "Rust" {
    /// Miri's hook: the allocation `ptr` points into, and all it reaches, is never reported as leaked.
    fn miri_static_root(ptr: *const u8);
}

/// Marks the allocation `ptr` points into as deliberately kept for the life of the process (a no-op
/// outside Miri, whose leak check would otherwise report it).
fn keep_forever(ptr: *const u8) {
    #[cfg(miri)]
    {
        // SAFETY: `ptr` points into a live allocation (each caller's own); the hook only records its id.
        unsafe { miri_static_root(ptr) };
    }
    #[cfg(not(miri))]
    let _ = ptr;
}

/// Leaks `value` for the `&'static` that platforms, address spaces and heaps need, on purpose: the tests
/// build many such machines and never tear them down.
pub fn leak<T>(value: T) -> &'static T {
    let leaked: &'static T = Box::leak(Box::new(value));
    if size_of::<T>() != 0 {
        keep_forever((leaked as *const T).cast());
    }
    leaked
}

/// First use of `cpu_index` on a thread: the lowest index no live thread holds, or [`NO_CPU`] (not
/// recorded: a later call tries again, once some thread has exited).
#[cold]
fn assign_cpu() -> usize {
    // Register the release first: a thread whose destructors can no longer be registered keeps none.
    if RELEASE.try_with(|r| r.0.set(true)).is_err() {
        return NO_CPU;
    }
    let mut taken = TAKEN.load(Ordering::Acquire);
    loop {
        let free = !taken;
        if free == 0 {
            return NO_CPU;
        }
        let i = free.trailing_zeros() as usize;
        match TAKEN.compare_exchange_weak(
            taken,
            taken | 1 << i,
            Ordering::AcqRel,
            Ordering::Acquire,
        ) {
            Ok(_) => {
                CPU.with(|c| c.set(i));
                return i;
            }
            Err(now) => taken = now,
        }
    }
}

#[cfg(not(miri))]
fn os_error(what: &str) -> ! {
    panic!("host: {what}: {}", std::io::Error::last_os_error())
}

impl HostPlatform {
    /// Fake physical memory of `phys_bytes` (a multiple of 4 KiB), all zero.
    pub fn new(phys_bytes: usize) -> Self {
        assert!(
            phys_bytes > 0 && (phys_bytes as u64).is_multiple_of(FRAME_SIZE),
            "host: physical memory of {phys_bytes:#x} bytes is not a positive multiple of 4 KiB"
        );
        Self::with_memory(phys_bytes)
    }

    #[cfg(not(miri))]
    fn with_memory(phys_bytes: usize) -> Self {
        // SAFETY: the name is a NUL-terminated string; memfd_create has no other preconditions.
        let memfd = unsafe { libc::memfd_create(c"spanalloc-phys".as_ptr(), libc::MFD_CLOEXEC) };
        if memfd < 0 {
            os_error("memfd_create");
        }
        // SAFETY: memfd is a file descriptor this platform owns.
        if unsafe { libc::ftruncate(memfd, phys_bytes as libc::off_t) } != 0 {
            os_error("ftruncate of the fake physical memory");
        }
        // SAFETY: a fresh shared mapping chosen by the kernel; it overlaps nothing Rust owns.
        let phys = unsafe {
            libc::mmap(
                core::ptr::null_mut(),
                phys_bytes,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                memfd,
                0,
            )
        };
        if phys == libc::MAP_FAILED {
            os_error("mmap of the fake physical memory");
        }
        HostPlatform {
            phys: VirtAddr::from_ptr(phys),
            phys_bytes,
            windows: Mutex::new(Vec::new()),
            stack_traces: AtomicBool::new(false),
            memfd,
        }
    }

    #[cfg(miri)]
    fn with_memory(phys_bytes: usize) -> Self {
        let layout = std::alloc::Layout::from_size_align(phys_bytes, FRAME_SIZE as usize)
            .expect("host: layout");
        // SAFETY: the layout has a non-zero size (checked in `new`).
        let phys = unsafe { std::alloc::alloc_zeroed(layout) };
        assert!(
            !phys.is_null(),
            "host: out of memory for {phys_bytes:#x} bytes of fake physical memory"
        );
        // A leaked platform holds this memory only as an address, which the leak check cannot follow.
        keep_forever(phys);
        HostPlatform {
            phys: VirtAddr::from_ptr(phys),
            phys_bytes,
            windows: Mutex::new(Vec::new()),
            stack_traces: AtomicBool::new(false),
        }
    }

    pub fn phys_bytes(&self) -> usize {
        self.phys_bytes
    }

    /// Reserves `bytes` (a multiple of [`ARENA_SIZE`]) of inaccessible address space aligned to
    /// [`ARENA_SIZE`], for an [`ArenaWindow`]. The reservation lives as long as the process.
    pub fn reserve_window(&self, bytes: usize) -> VirtAddr {
        assert!(
            bytes > 0 && bytes.is_multiple_of(ARENA_SIZE),
            "host: window of {bytes:#x} bytes is not a positive multiple of the arena size {ARENA_SIZE:#x}"
        );
        let base = reserve_aligned(bytes);
        let mut windows = self.windows.lock().unwrap_or_else(|e| e.into_inner());
        windows.push((base.as_u64(), base.as_u64() + bytes as u64));
        base
    }

    /// Turns the heap profile's call stacks on or off (`Platform::stack_trace`; off by default). On the
    /// host, finding the running stack's bounds reads `/proc/self/maps` once per thread (and again when
    /// the code moves to another stack), which costs milliseconds in a process with many mappings (a
    /// benchmark's heaps): a kernel's walk has its bounds at hand, so sampling's measured cost leaves this
    /// out unless asked for.
    pub fn set_stack_traces(&self, on: bool) {
        self.stack_traces.store(on, Ordering::Relaxed);
    }

    /// Gives this platform's memory back to the OS for good: punches the fake physical memory's pages out
    /// and unmaps every window reserved through it, with the heap pages mirrored into them. For a program
    /// that makes many short-lived heaps (a benchmark's fresh instances): each window's mappings would
    /// otherwise stay, and Linux caps a process's mappings (vm.max_map_count).
    ///
    /// # Safety
    /// Nothing touches the platform's memory or windows again: every heap over it, and every block from
    /// one, is out of use for good.
    #[cfg(not(miri))]
    pub unsafe fn release_memory(&self) {
        let windows = core::mem::take(&mut *self.windows.lock().unwrap_or_else(|e| e.into_inner()));
        // SAFETY: the caller's contract: nobody uses the memory or the windows again; the ranges are the
        // reservations this platform made (whole mappings of this process), unmapped once (taken out of
        // the list).
        unsafe {
            libc::madvise(self.phys.as_mut_ptr(), self.phys_bytes, libc::MADV_REMOVE);
            for (start, end) in windows {
                libc::munmap(start as *mut libc::c_void, (end - start) as usize);
            }
        }
    }

    /// Pins the calling thread to "CPU" `index` if no other live thread holds it, and says whether it
    /// did. An index at or over `MAX_CPUS` always pins (the thread then takes the heap's locked path); an
    /// index another live thread holds does not (the thread then takes a free index on its next
    /// allocation, as an unpinned one does): two live threads never share an index below `MAX_CPUS`,
    /// which `Platform::cpu_index` promises. The index the thread held before is given back first; the
    /// pinned one is given back when the thread exits.
    pub fn set_cpu_index(index: usize) -> bool {
        let old = CPU.with(|c| c.replace(UNASSIGNED));
        if RELEASE.with(|r| r.0.replace(false)) && old < MAX_CPUS {
            TAKEN.fetch_and(!(1 << old), Ordering::AcqRel);
        }
        if index >= MAX_CPUS {
            CPU.with(|c| c.set(NO_CPU));
            return true;
        }
        // Register the release before claiming: a thread whose destructors can no longer be registered
        // must not hold an index it would never give back.
        if RELEASE.try_with(|r| r.0.set(false)).is_err() {
            return false;
        }
        if TAKEN.fetch_or(1 << index, Ordering::AcqRel) & (1 << index) != 0 {
            return false;
        }
        RELEASE.with(|r| r.0.set(true));
        CPU.with(|c| c.set(index));
        true
    }

    /// Panics unless `count` pages from `start` lie inside one window this platform reserved: the mirrors
    /// are MAP_FIXED, and must never land on host memory that Rust uses.
    fn check_pages(&self, start: Page, count: u64) {
        let (first, end) = (
            start.start_address().as_u64(),
            start.start_address().as_u64() + count * FRAME_SIZE,
        );
        let windows = self.windows.lock().unwrap_or_else(|e| e.into_inner());
        assert!(
            windows.iter().any(|&(a, b)| a <= first && end <= b),
            "host: {count} pages at {first:#x} lie outside every window reserved by this platform"
        );
    }

    fn check_frames(&self, frame: PhysFrame, count: u64) {
        let end = frame.start_address().as_u64() + count * FRAME_SIZE;
        assert!(
            end <= self.phys_bytes as u64,
            "host: {count} frames from {:#x} reach beyond the fake physical memory of {:#x} bytes",
            frame.start_address().as_u64(),
            self.phys_bytes
        );
    }
}

#[cfg(not(miri))]
fn reserve_aligned(bytes: usize) -> VirtAddr {
    let flags = libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE;
    let over = bytes + ARENA_SIZE;
    // SAFETY: a fresh inaccessible mapping chosen by the kernel; it overlaps nothing Rust owns.
    let raw = unsafe { libc::mmap(core::ptr::null_mut(), over, libc::PROT_NONE, flags, -1, 0) };
    if raw == libc::MAP_FAILED {
        os_error("mmap of an arena window");
    }
    let raw = raw as usize;
    let base = raw.next_multiple_of(ARENA_SIZE);
    let (head, tail) = (base - raw, raw + over - (base + bytes));
    // SAFETY: both ranges are the parts of the reservation just made that lie outside the aligned window;
    // nothing uses them.
    unsafe {
        if head > 0 {
            libc::munmap(raw as *mut libc::c_void, head);
        }
        if tail > 0 {
            libc::munmap((base + bytes) as *mut libc::c_void, tail);
        }
    }
    VirtAddr::new(base as u64)
}

#[cfg(miri)]
fn reserve_aligned(bytes: usize) -> VirtAddr {
    let layout =
        std::alloc::Layout::from_size_align(bytes, ARENA_SIZE).expect("host: window layout");
    // SAFETY: the layout has a non-zero size (checked by the caller).
    let window = unsafe { std::alloc::alloc_zeroed(layout) };
    assert!(
        !window.is_null(),
        "host: out of memory for a window of {bytes:#x} bytes"
    );
    // Like the OS reservation, the window lives as long as the process.
    keep_forever(window);
    VirtAddr::from_ptr(window)
}

#[cfg(not(miri))]
impl Drop for HostPlatform {
    fn drop(&mut self) {
        // SAFETY: the direct map and the memfd belong to this platform; the mirrors in windows keep the
        // memfd's pages alive on their own.
        unsafe {
            libc::munmap(self.phys.as_mut_ptr(), self.phys_bytes);
            libc::close(self.memfd);
        }
    }
}

#[cfg(miri)]
impl Drop for HostPlatform {
    fn drop(&mut self) {
        let layout = std::alloc::Layout::from_size_align(self.phys_bytes, FRAME_SIZE as usize)
            .expect("host: layout");
        // SAFETY: `with_memory` allocated the fake physical memory with this layout; the platform owns it,
        // and the heap pages mirrored from it are copies in the windows, not borrows of it.
        unsafe { std::alloc::dealloc(self.phys.as_mut_ptr(), layout) };
    }
}

// SAFETY: the direct map covers all of the fake physical memory, and `check_frames` refuses frames beyond it;
// `pages_unmapped` replaces the mirrors before returning, and no CPU (thread) caches translations the host
// kernel does not keep coherent.
unsafe impl Platform for HostPlatform {
    type InterruptGuard = HostInterruptGuard;
    const MAX_CPUS: usize = MAX_CPUS;
    /// A thread keeps its index while it lives.
    const INTERRUPTED_CODE_STAYS_ON_CPU: bool = true;
    /// No signal handler allocates (none may: the heap is not async-signal-safe on the host).
    const INTERRUPT_HANDLERS_ALLOCATE: bool = false;

    /// One TLS load: a thread without an index yet reads `UNASSIGNED` (past every cache), so the heap
    /// takes its slow path, whose `cpu_index_slow` assigns one. No call on the fast path.
    #[inline]
    fn cpu_index(&self) -> usize {
        CPU.with(Cell::get)
    }

    fn cpu_index_slow(&self) -> usize {
        match CPU.with(Cell::get) {
            UNASSIGNED => assign_cpu(),
            index => index,
        }
    }

    #[inline]
    fn mask_interrupts(&self) -> HostInterruptGuard {
        HostInterruptGuard(())
    }

    /// With [`HostPlatform::set_stack_traces`] on, a frame-pointer walk over the running thread's stack,
    /// as the kernel's: real call stacks where the program keeps frame pointers
    /// (`RUSTFLAGS="-C force-frame-pointers=yes"`; without it, debug builds included, the walk mostly stops
    /// at once), and never a fault: it reads only inside the stack the caller runs on, from its stack
    /// pointer to the end of that stack's mapping (profile/stack.rs, [`stack_top`]). None under Miri or
    /// off x86_64 Linux.
    fn stack_trace(&self, from: u64, out: &mut [u64]) -> usize {
        #[cfg(all(target_os = "linux", target_arch = "x86_64", not(miri)))]
        {
            if !self.stack_traces.load(Ordering::Relaxed) {
                return 0;
            }
            let top = stack_top();
            if top == 0 {
                return 0;
            }
            // SAFETY: from the stack pointer up to `top` is this thread's live stack, all mapped
            // (`stack_top`); the walk runs on this thread.
            unsafe { crate::profile::stack::frame_pointer_walk(from, top, out) }
        }
        #[cfg(not(all(target_os = "linux", target_arch = "x86_64", not(miri))))]
        {
            let _ = (from, out);
            0
        }
    }

    fn physical_memory_offset(&self) -> VirtAddr {
        self.phys
    }

    fn page_mapped(&self, page: Page, frame: PhysFrame) {
        self.pages_mapped(page, frame, 1)
    }

    /// One mmap for the whole run (a host artifact: one per 4 KiB page would weigh on the heap's numbers).
    #[cfg(not(miri))]
    fn pages_mapped(&self, start: Page, frame: PhysFrame, count: u64) {
        self.check_pages(start, count);
        self.check_frames(frame, count);
        let at = start.start_address().as_mut_ptr::<libc::c_void>();
        let offset = frame.start_address().as_u64() as libc::off_t;
        let prot = libc::PROT_READ | libc::PROT_WRITE;
        let flags = libc::MAP_FIXED | libc::MAP_SHARED;
        let len = (count * FRAME_SIZE) as usize;
        // SAFETY: the pages lie in a window this platform reserved (checked), which holds no Rust object;
        // MAP_FIXED replaces the reservation there.
        let got = unsafe { libc::mmap(at, len, prot, flags, self.memfd, offset) };
        if got == libc::MAP_FAILED {
            os_error(&std::format!(
                "mmap of {count} frames from {:#x} at page {:#x} (vm.max_map_count reached?)",
                frame.start_address().as_u64(),
                start.start_address().as_u64()
            ));
        }
    }

    #[cfg(miri)]
    fn pages_mapped(&self, start: Page, frame: PhysFrame, count: u64) {
        self.check_pages(start, count);
        self.check_frames(frame, count);
        let from = (self.phys + frame.start_address().as_u64()).as_ptr::<u8>();
        // SAFETY: `from` starts `count` frames inside the fake physical memory (checked), the pages lie in
        // a window allocation; they are different allocations, so they do not overlap.
        unsafe {
            core::ptr::copy_nonoverlapping(
                from,
                start.start_address().as_mut_ptr(),
                (count * FRAME_SIZE) as usize,
            )
        };
    }

    #[cfg(not(miri))]
    fn pages_unmapped(&self, start: Page, count: u64) {
        self.check_pages(start, count);
        let flags = libc::MAP_FIXED | libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE;
        let len = (count * FRAME_SIZE) as usize;
        // SAFETY: the pages lie in a window this platform reserved (checked); the allocator unmapped them, so
        // no Rust object lives there any more.
        let got = unsafe {
            libc::mmap(
                start.start_address().as_mut_ptr(),
                len,
                libc::PROT_NONE,
                flags,
                -1,
                0,
            )
        };
        if got == libc::MAP_FAILED {
            os_error(&std::format!(
                "PROT_NONE remap of {count} pages at {:#x}",
                start.start_address().as_u64()
            ));
        }
    }

    #[cfg(miri)]
    fn pages_unmapped(&self, start: Page, count: u64) {
        self.check_pages(start, count);
        // SAFETY: the pages lie in a window allocation and hold no Rust object any more.
        unsafe {
            start
                .start_address()
                .as_mut_ptr::<u8>()
                .write_bytes(0, (count * FRAME_SIZE) as usize)
        };
    }
}

/// A whole fake machine: a memory map, a frame allocator over it, a fresh P4, an address space and an
/// arena window. The platform is leaked to get the `&'static` the address space needs.
pub struct HostMachine {
    pub platform: &'static HostPlatform,
    pub space: AddressSpace<HostPlatform>,
    pub window: ArenaWindow,
    /// The memory map the frame allocator was built from.
    pub regions: Vec<MemoryRegion>,
}

/// Size of the reserved hole [`HostMachine::memory_map`] puts in the middle of memory.
pub const HOLE_BYTES: u64 = 1 << 20;

impl HostMachine {
    /// `phys_bytes` (a multiple of 4 KiB, at least 4 MiB) of fake physical memory and a window of
    /// `window_bytes` (a multiple of [`ARENA_SIZE`]).
    pub fn new(phys_bytes: usize, window_bytes: usize) -> Self {
        Self::with_memory_map(
            phys_bytes,
            window_bytes,
            Self::memory_map(phys_bytes as u64),
        )
    }

    /// A machine whose memory the heap may use is exactly `usable_bytes` (a multiple of 4 KiB): one
    /// usable region from 1 MiB (frames below 1 MiB are never handed out) to `1 MiB + usable_bytes`,
    /// nothing reserved in it. For measurements that compare the heap with an allocator given an arena
    /// of `usable_bytes`: the frame allocator's metadata and every page table then come out of the same
    /// bytes, as the peer's own metadata comes out of its arena.
    pub fn with_usable_memory(usable_bytes: usize, window_bytes: usize) -> Self {
        let low = 1u64 << 20;
        let map = std::vec![MemoryRegion {
            start: PhysAddr::new(low),
            end: PhysAddr::new(low + usable_bytes as u64),
            kind: RegionKind::Usable,
        }];
        Self::with_memory_map(low as usize + usable_bytes, window_bytes, map)
    }

    /// A machine of `phys_bytes` of fake memory described by `regions` (which must lie below
    /// `phys_bytes`).
    pub fn with_memory_map(
        phys_bytes: usize,
        window_bytes: usize,
        regions: Vec<MemoryRegion>,
    ) -> Self {
        assert!(
            regions.iter().all(|r| r.end.as_u64() <= phys_bytes as u64),
            "host: a memory-map region ends beyond the fake memory of {phys_bytes:#x} bytes"
        );
        let platform: &'static HostPlatform = leak(HostPlatform::new(phys_bytes));
        // SAFETY: the fake physical memory covers every region of the map (it ends at phys_bytes) and is
        // mapped at the platform's offset; nothing else uses it.
        let frames = unsafe {
            FrameAllocator::new(regions.iter().copied(), platform.physical_memory_offset())
        };
        let mut frames = frames.unwrap_or_else(|e| panic!("host: {e}"));
        let p4 = frames
            .allocate_zeroed()
            .expect("host: no frame for the P4 table");
        // SAFETY: the P4 is a fresh zeroed frame of the fake memory, mapped at the offset; this mapper is
        // its only editor, and it will only map window pages, which hold no Rust objects.
        let mapper = unsafe { Mapper::new(p4, platform.physical_memory_offset()) };
        let window = ArenaWindow::new(platform.reserve_window(window_bytes), window_bytes as u64);
        HostMachine {
            platform,
            space: AddressSpace::new(frames, mapper, platform),
            window,
            regions,
        }
    }

    /// The map `new` uses, shaped like a PC's: usable below 640 KiB, firmware from there to 1 MiB, usable from 1 MiB to `phys_bytes` except a reserved [`HOLE_BYTES`] "bootloader" hole in
    /// the middle (2 MiB-aligned).
    pub fn memory_map(phys_bytes: u64) -> Vec<MemoryRegion> {
        assert!(
            phys_bytes >= 4 << 20,
            "host: fake memory of {phys_bytes:#x} bytes is below the 4 MiB minimum"
        );
        let hole = (phys_bytes / 2) & !((2 << 20) - 1);
        let region = |start: u64, end: u64, kind| MemoryRegion {
            start: PhysAddr::new(start),
            end: PhysAddr::new(end),
            kind,
        };
        std::vec![
            region(0, 0xA_0000, RegionKind::Usable),
            region(0xA_0000, 0x10_0000, RegionKind::Reserved("firmware")),
            region(0x10_0000, hole, RegionKind::Usable),
            region(hole, hole + HOLE_BYTES, RegionKind::Reserved("bootloader")),
            region(hole + HOLE_BYTES, phys_bytes, RegionKind::Usable),
        ]
    }
}

#[cfg(all(test, target_os = "linux", target_arch = "x86_64", not(miri)))]
mod stack_tests {
    use super::stack_top;
    use crate::platform::Platform;

    /// The host's stack walk finds its thread's stack in `/proc/self/maps` and follows a frame chain in it:
    /// a chain of two records laid out by hand in a local array (the test build has no frame pointers to
    /// walk), and one whose next record would lie past the stack's end, which the walk must not read.
    #[test]
    fn host_stack_walk_follows_a_chain_inside_the_thread_stack_only() {
        let top = stack_top();
        let local = 0u8;
        let at = core::hint::black_box(&local) as *const u8 as u64;
        assert!(
            top > at,
            "the stack's end {top:#x} lies above a local ({at:#x})"
        );
        assert!(
            top - at < 64 << 20,
            "the stack's end {top:#x} is this thread's, near a local ({at:#x})"
        );
        let m = crate::host::HostMachine::new(4 << 20, 1 << 30);
        let p = m.platform;
        let mut out = [0u64; 8];
        let local = [0u64; 2];
        let from = core::hint::black_box(&local) as *const [u64; 2] as u64;
        assert_eq!(p.stack_trace(from, &mut out), 0, "off by default");
        p.set_stack_traces(true);
        let mut chain = [0u64; 4];
        chain[0] = core::ptr::addr_of!(chain[2]) as u64; // next record
        chain[1] = 0x1111; // return address
        chain[2] = 0; // the end of the chain
        chain[3] = 0x2222;
        let from = core::hint::black_box(&chain) as *const [u64; 4] as u64;
        let mut out = [0u64; 8];
        let n = p.stack_trace(from, &mut out);
        assert_eq!(&out[..n], &[0x1111, 0x2222]);

        let mut beyond = [0u64; 2];
        beyond[0] = top - 8; // a record straddling the end of the stack
        beyond[1] = 0x3333;
        let from = core::hint::black_box(&beyond) as *const [u64; 2] as u64;
        let n = p.stack_trace(from, &mut out);
        assert_eq!(&out[..n], &[0x3333], "stops before the record past the end");
    }

    /// A kept mapping that does not hold the stack pointer (the stack grew past it, or the code runs on
    /// another stack) is looked up again, not trusted.
    #[test]
    fn a_stale_stack_mapping_is_looked_up_again() {
        let top = stack_top();
        super::STACK.with(|s| s.set((0x1000, 0x2000)));
        assert_eq!(stack_top(), top);
        super::STACK.with(|s| s.set((0x1000, top)));
        assert_eq!(
            stack_top(),
            top,
            "a range holding the stack pointer is used as kept"
        );
        let heap = std::boxed::Box::new(0u64);
        let at = &*heap as *const u64 as u64;
        let (lo, hi) = super::mapping_containing(at).expect("the heap is mapped");
        assert!((lo..hi).contains(&at));
        assert!(
            super::mapping_containing(8).is_none(),
            "page 0 is not mapped"
        );
    }

    /// The same from another thread: each thread finds its own stack.
    #[test]
    fn each_thread_finds_its_own_stack() {
        let main_top = stack_top();
        let other_top = std::thread::spawn(stack_top).join().unwrap();
        assert!(main_top != 0 && other_top != 0);
        assert_ne!(main_top, other_top);
    }
}

#[cfg(all(test, target_os = "linux", target_arch = "x86_64", not(miri)))]
mod release_tests {
    use core::alloc::{GlobalAlloc, Layout};

    /// Set in the child process of `release_memory_unmaps_the_windows`.
    const RELEASE_CHILD: &str = "SPANALLOC_RELEASE_CHILD";

    /// `release_memory` unmaps the windows (they are mappings no more) and punches out the fake memory.
    ///
    /// The body runs alone in a child process (this test binary, filtered to this test, one
    /// thread): in the parent, other tests' threads map memory concurrently and may be given the
    /// hole the release just left, which would make "nothing is mapped there" fail spuriously.
    #[test]
    fn release_memory_unmaps_the_windows() {
        if std::env::var_os(RELEASE_CHILD).is_none() {
            let out = std::process::Command::new(std::env::current_exe().unwrap())
                .args([
                    "--exact",
                    "host::release_tests::release_memory_unmaps_the_windows",
                    "--nocapture",
                    "--test-threads=1",
                ])
                .env(RELEASE_CHILD, "1")
                .output()
                .unwrap();
            let stdout = String::from_utf8_lossy(&out.stdout);
            assert!(
                out.status.success() && stdout.contains("1 passed"),
                "the child failed ({:?}):\n{stdout}\n{}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
            );
            return;
        }
        let m = super::HostMachine::new(16 << 20, 1 << 30);
        let window = m.window.base().as_u64();
        let heap: &crate::Heap<super::HostPlatform> = super::leak(crate::Heap::new(m.platform));
        heap.init(m.space, m.window, 8 << 20).expect("heap init");
        let l = Layout::from_size_align(64 << 10, 8).unwrap();
        // SAFETY: test code: a fresh block of this layout, written in bounds and freed once.
        let p = unsafe { heap.alloc(l) };
        assert!(!p.is_null());
        // SAFETY: as above.
        unsafe {
            p.write_bytes(7, l.size());
            heap.dealloc(p, l);
        }
        assert!(super::mapping_containing(p as u64).is_some());
        assert!(super::mapping_containing(window).is_some());
        // SAFETY: the heap and its blocks are out of use for good (nothing below touches them).
        unsafe { m.platform.release_memory() };
        assert!(
            super::mapping_containing(p as u64).is_none(),
            "the heap's pages are unmapped"
        );
        assert!(
            super::mapping_containing(window).is_none(),
            "the window is unmapped"
        );
    }
}
