//! Arena window, address space and host platform, on the host machine.

use std::sync::atomic::{AtomicU64, Ordering};
use std::vec::Vec;

use super::*;
use crate::addr::{PhysFrame, FRAME_SIZE};
use crate::host::{HostMachine, HostPlatform};

const RW: PageTableFlags = PageTableFlags::WRITABLE;
const MIB: usize = 1 << 20;

fn read_u64(addr: VirtAddr) -> u64 {
    // SAFETY: the callers pass addresses of mapped window pages or of the direct map.
    unsafe { addr.as_ptr::<u64>().read_volatile() }
}

fn write_u64(addr: VirtAddr, value: u64) {
    // SAFETY: as in `read_u64`.
    unsafe { addr.as_mut_ptr::<u64>().write_volatile(value) }
}

#[test]
fn window_hands_out_arenas_upward() {
    let arena = ARENA_SIZE as u64;
    let base = VirtAddr::new(16 * arena);
    let mut w = ArenaWindow::new(base, 3 * arena);
    assert_eq!((w.base(), w.end()), (base, base + 3 * arena));
    assert_eq!(w.take_arena(), Some(base));
    assert_eq!(w.take_arena(), Some(base + arena));
    assert_eq!(w.arenas_end(), base + 2 * arena);
    assert_eq!(w.take_arena(), Some(base + 2 * arena));
    assert_eq!(w.take_arena(), None);
    assert!(w.contains(base) && w.contains(base + 3 * arena - 1) && !w.contains(base + 3 * arena));
    assert!(!w.contains(base - 1u64));
    let err = std::panic::catch_unwind(|| ArenaWindow::new(base + 4096u64, arena)).unwrap_err();
    assert!(err
        .downcast_ref::<String>()
        .unwrap()
        .contains("not aligned to the arena size"));
}

#[test]
fn host_window_is_aligned_and_reserved() {
    let m = HostMachine::new(8 * MIB, 2 * ARENA_SIZE);
    assert!(m.window.base().is_aligned(ARENA_SIZE as u64));
    assert_eq!(m.window.end() - m.window.base(), 2 * ARENA_SIZE as u64);
    assert!(m.space.mapper.translate(m.window.base()).is_none());
}

#[test]
fn host_refuses_pages_outside_windows() {
    let m = HostMachine::new(8 * MIB, ARENA_SIZE);
    let frame = PhysFrame::containing_address(crate::addr::PhysAddr::new(0x20_0000));
    let outside = [
        m.window.base() - 4096u64,
        m.window.end(),
        VirtAddr::new(0x1000),
    ];
    for addr in outside {
        let page = Page::containing_address(addr);
        let err = std::panic::catch_unwind(|| m.platform.page_mapped(page, frame)).unwrap_err();
        let msg = err.downcast_ref::<String>().unwrap();
        assert!(msg.contains("outside every window"), "{msg}");
    }
    let last = Page::containing_address(m.window.end() - 4096u64);
    let err = std::panic::catch_unwind(|| m.platform.pages_unmapped(last, 2)).unwrap_err();
    assert!(err.downcast_ref::<String>().unwrap().contains("2 pages at"));
}

/// Maps pages of a fresh arena, checks every page reads zero through the window and that writes land in
/// the frame the mapper chose, then unmaps and checks every frame came back.
#[test]
fn map_write_read_unmap_returns_every_frame() {
    let mut m = HostMachine::new(16 * MIB, ARENA_SIZE);
    let arena = m.window.take_arena().unwrap();
    // 1100 pages span three P1 tables. Under Miri, where a page costs a good part of a second, four pages
    // straddling a P1 boundary span two.
    let (first, count, p1s) = if cfg!(miri) {
        (510, 4, 2)
    } else {
        (0, 1100, 3)
    };
    let start = Page::containing_address(arena) + first;
    let baseline = m.space.frames.free_frames();
    m.space.map_range(start, count, RW, true).unwrap();
    let held = m.space.frames_held();
    assert_eq!(held.0, count + 2 + p1s, "data, P3, P2, the P1s");
    assert_eq!(m.space.frames.free_frames().0, baseline.0 - held.0);
    let offset = m.platform.physical_memory_offset();
    for i in 0..count {
        let page = (start + i).start_address();
        assert_eq!(read_u64(page), 0, "page {i} not zeroed");
        assert_eq!(read_u64(page + (FRAME_SIZE - 8)), 0);
        write_u64(page, i ^ 0x5a5a);
        write_u64(page + (FRAME_SIZE - 8), !i);
    }
    for i in 0..count {
        let page = (start + i).start_address();
        assert_eq!(read_u64(page), i ^ 0x5a5a);
        let phys = m.space.mapper.translate(page + (FRAME_SIZE - 8)).unwrap();
        // Under Miri the window holds copies, so writes there never reach the frame.
        if cfg!(not(miri)) {
            assert_eq!(
                read_u64(offset + phys.as_u64()),
                !i,
                "write did not land in the frame"
            );
        }
    }
    assert_eq!(m.space.unmap_range(start, count), held);
    assert_eq!(m.space.frames_held(), FrameCount(0));
    assert_eq!(m.space.frames.free_frames(), baseline);
    assert!(m.space.mapper.translate(start.start_address()).is_none());
}

/// Data is written through the direct map (the Miri host platform copies frames into the window only when
/// a page is mapped), then read back through the window after remapping with and without zeroing.
#[test]
fn zeroed_and_unzeroed_frames() {
    let mut m = HostMachine::new(8 * MIB, ARENA_SIZE);
    let offset = m.platform.physical_memory_offset();
    let start = Page::containing_address(m.window.take_arena().unwrap());
    m.space.map_range(start, 4, RW, true).unwrap();
    let mut stale: Vec<PhysFrame> = Vec::new();
    for i in 0..4 {
        let phys = m
            .space
            .mapper
            .translate((start + i).start_address())
            .unwrap();
        write_u64(offset + phys.as_u64() + 8u64, 0xdead_beef);
        stale.push(PhysFrame::containing_address(phys));
    }
    m.space.unmap_range(start, 4);
    // Without zeroing, frames come back as they were.
    m.space.map_range(start, 4, RW, false).unwrap();
    let mut reused = 0;
    for i in 0..4 {
        let page = (start + i).start_address();
        let frame = PhysFrame::containing_address(m.space.mapper.translate(page).unwrap());
        if stale.contains(&frame) {
            assert_eq!(
                read_u64(page + 8u64),
                0xdead_beef,
                "frame zeroed though not asked"
            );
            reused += 1;
        }
    }
    assert!(reused > 0, "no frame was reused, nothing checked");
    m.space.unmap_range(start, 4);
    m.space.map_range(start, 4, RW, true).unwrap();
    assert!((0..4).all(|i| read_u64((start + i).start_address() + 8u64) == 0));
}

#[test]
fn failed_map_range_leaks_nothing() {
    let mut m = HostMachine::new(4 * MIB, ARENA_SIZE);
    let start = Page::containing_address(m.window.take_arena().unwrap());
    // Miri would take minutes to map the machine's ~700 frames: leave it a few.
    let hoard = if cfg!(miri) {
        crate::testing::hoard_all_but(&mut m.space.frames, 8)
    } else {
        Vec::new()
    };
    let before = m.space.frames.free_frames();
    let too_many = before.0; // data frames alone use them all; the tables cannot fit
    let err = m.space.map_range(start, too_many, RW, true).unwrap_err();
    assert!(matches!(err, MapError::OutOfFrames { .. }), "{err}");
    assert_eq!(m.space.frames.free_frames(), before);
    assert_eq!(m.space.frames_held(), FrameCount(0));
    assert!(m.space.mapper.translate(start.start_address()).is_none());
    for (run, n) in hoard {
        m.space.frames.free_contiguous(run, n);
    }
    // Mapping over an existing page fails too, and gives back what it took.
    m.space.map_range(start + 10, 1, RW, false).unwrap();
    let before = m.space.frames.free_frames();
    let err = m.space.map_range(start, 20, RW, false).unwrap_err();
    assert!(
        matches!(err, MapError::AlreadyMapped { page, .. } if page == start + 10),
        "{err}"
    );
    assert_eq!(m.space.frames.free_frames(), before);
    assert_eq!(m.space.frames_held().0, 1 + 3);
}

#[test]
fn unmap_range_of_unmapped_page_panics_first() {
    let mut m = HostMachine::new(8 * MIB, ARENA_SIZE);
    let start = Page::containing_address(m.window.take_arena().unwrap());
    m.space.map_range(start, 3, RW, false).unwrap();
    let held = m.space.frames_held();
    let space = std::panic::AssertUnwindSafe(&mut m.space);
    let err = std::panic::catch_unwind(move || {
        let space = space;
        space.0.unmap_range(start, 5)
    })
    .unwrap_err();
    let msg = err.downcast_ref::<String>().unwrap();
    let expected = std::format!(
        "page {:#x} is not mapped",
        (start + 3).start_address().as_u64()
    );
    assert!(msg.contains(&expected), "{msg}");
    assert_eq!(
        m.space.frames_held(),
        held,
        "state changed before the panic"
    );
    assert!(m.space.mapper.translate(start.start_address()).is_some());
}

#[test]
fn one_shootdown_per_unmap_range() {
    let host = HostMachine::new(8 * MIB, ARENA_SIZE);
    let HostMachine {
        space, mut window, ..
    } = host;
    let mut space = AddressSpace::new(space.frames, space.mapper, leak_counting(space.platform));
    let start = Page::containing_address(window.take_arena().unwrap());
    // Enough pages to free a P1 table on the way; under Miri, a few either side of its boundary.
    let (first, count) = if cfg!(miri) { (510, 4) } else { (0, 700) };
    space.map_range(start + first, count, RW, true).unwrap();
    let before = space.platform.shootdowns.load(Ordering::Relaxed);
    space.unmap_range(start + first, count);
    assert_eq!(
        space.platform.shootdowns.load(Ordering::Relaxed),
        before + 1
    );
    assert_eq!(space.frames_held(), FrameCount(0));
}

/// A run of pages mapped to contiguous frames is reported to the platform in one call (on the host: one
/// mmap instead of one per 4 KiB page), and the mirrors hold what the frames hold.
#[test]
fn contiguous_frames_are_reported_in_one_call() {
    let host = HostMachine::new(16 * MIB, ARENA_SIZE);
    let HostMachine {
        space, mut window, ..
    } = host;
    let mut space = AddressSpace::new(space.frames, space.mapper, leak_counting(space.platform));
    let start = Page::containing_address(window.take_arena().unwrap());
    let count = if cfg!(miri) { 8 } else { 600 };
    space.map_range(start, count, RW, true).unwrap();
    let frames: Vec<PhysFrame> = (0..count)
        .map(|i| {
            let at = (start + i).start_address();
            PhysFrame::containing_address(space.mapper.translate(at).expect("mapped"))
        })
        .collect();
    let runs = 1 + frames.windows(2).filter(|w| w[1] != w[0] + 1).count() as u64;
    let p = space.platform;
    assert_eq!(
        p.mapped_calls.load(Ordering::Relaxed),
        runs,
        "one call per run of contiguous frames"
    );
    assert_eq!(p.mapped_pages.load(Ordering::Relaxed), count);
    assert!(runs < count / 2, "{runs} runs of frames in {count} pages");
    // Writes through the window land in the frames (the host mirrors each run).
    for (i, &f) in frames.iter().enumerate() {
        let page = (start + i as u64).start_address();
        write_u64(page + 8u64, 0xf00d + i as u64);
        let direct = space.platform.physical_memory_offset() + f.start_address().as_u64();
        assert_eq!(read_u64(direct + 8u64), 0xf00d + i as u64, "page {i}");
    }
}

/// A host platform that counts shootdowns and mapping reports.
fn leak_counting(host: &'static HostPlatform) -> &'static CountingPlatform {
    crate::host::leak(CountingPlatform {
        host,
        shootdowns: AtomicU64::new(0),
        mapped_calls: AtomicU64::new(0),
        mapped_pages: AtomicU64::new(0),
    })
}

struct CountingPlatform {
    host: &'static HostPlatform,
    shootdowns: AtomicU64,
    mapped_calls: AtomicU64,
    mapped_pages: AtomicU64,
}

// SAFETY: delegates everything to the host platform.
unsafe impl Platform for CountingPlatform {
    type InterruptGuard = <HostPlatform as Platform>::InterruptGuard;
    const MAX_CPUS: usize = HostPlatform::MAX_CPUS;
    fn cpu_index(&self) -> usize {
        self.host.cpu_index()
    }
    fn cpu_index_slow(&self) -> usize {
        self.host.cpu_index_slow()
    }
    fn mask_interrupts(&self) -> Self::InterruptGuard {
        self.host.mask_interrupts()
    }
    fn physical_memory_offset(&self) -> VirtAddr {
        self.host.physical_memory_offset()
    }
    fn page_mapped(&self, page: Page, frame: PhysFrame) {
        self.pages_mapped(page, frame, 1)
    }
    fn pages_mapped(&self, start: Page, frame: PhysFrame, count: u64) {
        self.mapped_calls.fetch_add(1, Ordering::Relaxed);
        self.mapped_pages.fetch_add(count, Ordering::Relaxed);
        self.host.pages_mapped(start, frame, count)
    }
    fn pages_unmapped(&self, start: Page, count: u64) {
        self.shootdowns.fetch_add(1, Ordering::Relaxed);
        self.host.pages_unmapped(start, count)
    }
}

#[test]
fn cpu_indices() {
    use std::sync::{Arc, Barrier};
    let p = HostPlatform::new(4 * MIB);
    let mine = p.cpu_index_slow();
    assert_eq!(p.cpu_index_slow(), mine, "index not stable on one thread");
    assert!(mine < HostPlatform::MAX_CPUS);
    // Live threads never share an index below MAX_CPUS; once all are taken, the rest get one past the
    // caches (other tests' threads hold some indices meanwhile, so count only what must hold).
    let n = HostPlatform::MAX_CPUS + 16;
    let barrier = Arc::new(Barrier::new(n));
    let threads: Vec<_> = (0..n)
        .map(|_| {
            let b = Arc::clone(&barrier);
            std::thread::spawn(move || {
                let i = HostPlatform::new(4 * MIB).cpu_index_slow();
                b.wait(); // every thread holds its index until all have one
                i
            })
        })
        .collect();
    let got: Vec<usize> = threads.into_iter().map(|t| t.join().unwrap()).collect();
    let mut cached: Vec<usize> = got
        .iter()
        .copied()
        .filter(|&i| i < HostPlatform::MAX_CPUS)
        .collect();
    let before = cached.len();
    cached.sort_unstable();
    cached.dedup();
    assert_eq!(cached.len(), before, "live threads share an index: {got:?}");
    assert!(
        got.iter().filter(|&&i| i == crate::host::NO_CPU).count() >= 16,
        "{n} live threads but fewer than 16 without a cache: {got:?}"
    );
    // Indices come back when threads exit.
    let again = std::thread::spawn(|| HostPlatform::new(4 * MIB).cpu_index_slow())
        .join()
        .unwrap();
    assert!(
        again < HostPlatform::MAX_CPUS,
        "no index came back: {again}"
    );
    std::thread::spawn(|| {
        // Pinned unless another live thread (another test's) holds 42 right now.
        let pinned = HostPlatform::set_cpu_index(42);
        assert_eq!(HostPlatform::new(4 * MIB).cpu_index_slow() == 42, pinned);
    })
    .join()
    .unwrap();
    // A live thread's index cannot be pinned by another; an index past the caches always pins.
    let p2: &'static HostPlatform = crate::host::leak(HostPlatform::new(4 * MIB));
    let held = p2.cpu_index_slow();
    assert!(held < HostPlatform::MAX_CPUS);
    std::thread::spawn(move || {
        assert!(
            !HostPlatform::set_cpu_index(held),
            "pinned index {held}, held by a live thread"
        );
        assert_ne!(p2.cpu_index_slow(), held);
        assert!(HostPlatform::set_cpu_index(usize::MAX));
        assert_eq!(p2.cpu_index_slow(), crate::host::NO_CPU);
    })
    .join()
    .unwrap();
    let _guard = p.mask_interrupts();
}

/// Set in the child process of `touching_an_unmapped_page_faults`.
const FAULT_CHILD: &str = "SPANALLOC_FAULT_CHILD";

#[test]
#[cfg_attr(
    miri,
    ignore = "the Miri host platform zero-fills unmapped pages instead of faulting"
)]
fn touching_an_unmapped_page_faults() {
    use std::os::unix::process::ExitStatusExt;
    let mut m = HostMachine::new(8 * MIB, ARENA_SIZE);
    let start = Page::containing_address(m.window.take_arena().unwrap());
    m.space.map_range(start, 2, RW, true).unwrap();
    write_u64(start.start_address(), 1);
    m.space.unmap_range(start, 1);
    assert_eq!(
        read_u64((start + 1).start_address()),
        0,
        "the neighbour stays mapped"
    );
    if std::env::var_os(FAULT_CHILD).is_some() {
        read_u64(start.start_address()); // must fault
        std::process::exit(0);
    }
    let status = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "arena::tests::touching_an_unmapped_page_faults",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(FAULT_CHILD, "1")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .unwrap();
    assert_eq!(
        status.signal(),
        Some(libc::SIGSEGV),
        "child status {status:?}"
    );
}

/// `frames_held` counts the tables the address space created; a kernel mapping next to the heap's
/// window (`share`) shares the upper tables with it. Whichever side frees a table the other created,
/// the count must stay the frames the heap's mappings hold.
#[test]
fn frames_held_survives_tables_shared_with_kernel_pages() {
    for (kernel_first, heap_unmaps_first) in
        [(false, false), (false, true), (true, false), (true, true)]
    {
        let mut m = HostMachine::new(8 * MIB, 2 * ARENA_SIZE);
        let half = m.window.base() + ARENA_SIZE as u64;
        let heap_window = ArenaWindow::new(m.window.base(), ARENA_SIZE as u64);
        m.space.set_heap_window(&heap_window);
        let free0 = m.space.frames.free_frames().0;
        let heap_page = Page::containing_address(m.window.base());
        let kernel_page = Page::containing_address(half);
        // SAFETY: nothing lives at the kernel page (reserved, untouched host window memory).
        let kernel_map = |s: &mut AddressSpace<HostPlatform>| unsafe {
            s.map_fresh_kernel_page(kernel_page, RW).unwrap()
        };
        let mut kframe = None;
        if kernel_first {
            kframe = Some(kernel_map(&mut m.space));
        }
        m.space.map_range(heap_page, 1, RW, true).unwrap();
        if !kernel_first {
            kframe = Some(kernel_map(&mut m.space));
        }
        let kframe = kframe.unwrap();
        // Every frame taken from the allocator is held, but the kernel's own data frame.
        let check = |s: &AddressSpace<HostPlatform>, kernel_frame: u64, what: &str| {
            let taken = free0 - s.frames.free_frames().0;
            assert_eq!(
                s.frames_held().0 + kernel_frame,
                taken,
                "kernel first: {kernel_first}, {what}: frames held vs frames taken"
            );
        };
        check(&m.space, 1, "both mapped");
        if heap_unmaps_first {
            m.space.unmap_range(heap_page, 1);
            check(&m.space, 1, "heap page unmapped");
        }
        // SAFETY: nothing uses the kernel page.
        let unmapped = unsafe { m.space.unmap_kernel_page(kernel_page) };
        assert_eq!(unmapped, Ok(kframe));
        m.space.frames.free(kframe);
        check(&m.space, 0, "kernel page unmapped");
        if !heap_unmaps_first {
            m.space.unmap_range(heap_page, 1);
        }
        assert_eq!(m.space.frames.free_frames().0, free0);
        assert_eq!(m.space.frames_held().0, 0, "kernel first: {kernel_first}");
    }
}
