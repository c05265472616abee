//! The heap's address space maps and unmaps pages in the live page tables: mapped pages are memory,
//! unmapped ones fault (the TLB was invalidated), and every frame, data and table alike, goes back.
//!
//! Scratch pages come from the top 1 GiB of the heap window, which the heap never reaches (see
//! [`scratch`]), so the tests can map there while the heap runs. The heap is kept [`Quiet`] meanwhile, so
//! the frame counts move only with what the tests map.

use crate::heap::{Quiet, HEAP, HEAP_MAX_BYTES};
use crate::ktest::TestCtx;
use crate::platform::{KernelPlatform, PLATFORM};
use crate::probe::probe_read;
use spanalloc::addr::{Page, PageTableFlags};
use spanalloc::arena::AddressSpace;
use spanalloc::Platform;
use spanalloc::{FrameCount, VirtAddr, FRAME_SIZE};
use x86_64::instructions::interrupts;
use x86_64::structures::idt::PageFaultErrorCode;

const PAGES: u64 = 256;
const GIB: u64 = 1 << 30;

/// The first page of the scratch range. The heap fills its window from the bottom: its metadata (a
/// fraction of the heap's size) and then at most `HEAP_MAX_BYTES` of arenas, together under twice
/// `HEAP_MAX_BYTES`, well below the window's last GiB.
fn scratch(ctx: &TestCtx) -> Page {
    let (base, end) = (ctx.memory.window_base, ctx.memory.window_end);
    assert!(
        base + 2 * HEAP_MAX_BYTES as u64 <= end - GIB,
        "the heap window {:#x}..{:#x} leaves no room above the heap for scratch pages",
        base.as_u64(),
        end.as_u64()
    );
    Page::containing_address(end - GIB)
}

/// The heap's address space, for this module's tests only: every `f` here maps, unmaps and frees only
/// scratch pages in the window's last GiB, which the heap never reaches ([`scratch`]), and the frames
/// those took.
fn with_space<R>(f: impl FnOnce(&mut AddressSpace<KernelPlatform>) -> R) -> R {
    // SAFETY: this module's callers leave the heap's window and frames alone (above).
    unsafe { HEAP.with_address_space(f) }
        .expect("the heap has no address space: memory was not taken over")
}

/// What word `w` of scratch page `page` holds.
fn word(page: u64, w: u64) -> u64 {
    (page << 32 | w) ^ 0x5c7a_7c40_0000_0000
}

/// Frames free and held before a test; checked to be exactly back at the end.
struct Baseline {
    free: FrameCount,
    held: FrameCount,
}

impl Baseline {
    fn take() -> Self {
        with_space(|s| Baseline {
            free: s.frames.free_frames(),
            held: s.frames_held(),
        })
    }

    fn assert_restored(&self, what: &str) {
        let (free, held) = with_space(|s| (s.frames.free_frames(), s.frames_held()));
        assert_eq!(
            (free, held),
            (self.free, self.held),
            "{what}: frames (free, held by the heap) not back to the baseline"
        );
    }
}

/// Maps `PAGES` scratch pages with fresh frames; returns the frames that took (data and tables).
fn map_scratch(start: Page) -> FrameCount {
    with_space(|s| {
        for i in 0..PAGES {
            let addr = (start + i).start_address();
            assert!(
                s.mapper.translate(addr).is_none(),
                "scratch page {:#x} is mapped already",
                addr.as_u64()
            );
        }
        let free = s.frames.free_frames();
        let flags = PageTableFlags::PRESENT | PageTableFlags::WRITABLE | PageTableFlags::NO_EXECUTE;
        s.map_range(start, PAGES, flags, false)
            .unwrap_or_else(|err| panic!("mapping {PAGES} scratch pages: {err}"));
        FrameCount(free.0 - s.frames.free_frames().0)
    })
}

fn page_ptr(start: Page, i: u64) -> *mut u64 {
    (start + i).start_address().as_mut_ptr()
}

pub fn arena_map_write_read(ctx: &mut TestCtx) {
    let start = scratch(ctx);
    let _quiet = Quiet::new();
    interrupt_guards_nest();
    let baseline = Baseline::take();
    let took = map_scratch(start);
    // 256 pages in one 2 MiB-aligned run need one P1 table, plus a P2 and a P3 unless the window has them.
    assert!(
        (PAGES..=PAGES + 3).contains(&took.0),
        "mapping {PAGES} pages took {took}"
    );
    assert_eq!(
        with_space(|s| s.frames_held().0),
        baseline.held.0 + took.0,
        "the address space does not count the frames it took"
    );

    for i in 0..PAGES {
        let p = page_ptr(start, i);
        for w in 0..FRAME_SIZE / 8 {
            // SAFETY: the page was just mapped writable to a frame of its own; nothing else uses it.
            unsafe { p.add(w as usize).write_volatile(word(i, w)) };
        }
    }
    for i in 0..PAGES {
        let p = page_ptr(start, i);
        for w in 0..FRAME_SIZE / 8 {
            // SAFETY: as above.
            let got = unsafe { p.add(w as usize).read_volatile() };
            assert_eq!(
                got,
                word(i, w),
                "scratch page {:#x} word {w} does not read back",
                (start + i).start_address().as_u64()
            );
        }
    }

    let freed = with_space(|s| s.unmap_range(start, PAGES));
    assert_eq!(
        freed, took,
        "unmapping returned other frames than mapping took"
    );
    baseline.assert_restored("after unmapping");
}

/// The address space is used with interrupts masked, and the platform's guards nest: an inner guard's drop
/// leaves them masked, the outer one's restores them.
fn interrupt_guards_nest() {
    assert!(
        interrupts::are_enabled(),
        "precondition: tests run with interrupts enabled (smp::init enables them)"
    );
    with_space(|_| {
        assert!(
            !interrupts::are_enabled(),
            "the heap's guard did not mask interrupts"
        );
        drop(PLATFORM.mask_interrupts());
        assert!(
            !interrupts::are_enabled(),
            "an inner guard re-enabled interrupts while the outer one lives"
        );
    });
    assert!(
        interrupts::are_enabled(),
        "the outer guard did not restore interrupts"
    );
}

/// Probes `addr`, which must fault as a not-present read at exactly that address.
fn assert_faults(addr: VirtAddr, why: &str) {
    let fault = probe_read(addr)
        .map(|byte| panic!("read of {:#x} {why} returned {byte:#x}", addr.as_u64()))
        .unwrap_err();
    assert_eq!(fault.addr, addr, "CR2 of the fault {why}");
    assert!(
        !fault
            .error_code
            .contains(PageFaultErrorCode::PROTECTION_VIOLATION),
        "fault {why}: error code {:?}, expected not-present",
        fault.error_code
    );
}

pub fn unmapped_arena_page_faults(ctx: &mut TestCtx) {
    let start = scratch(ctx);
    let _quiet = Quiet::new();
    let baseline = Baseline::take();
    map_scratch(start);
    // An odd offset inside each page, so CR2 is checked to the byte.
    let addr = |i: u64| (start + i).start_address() + 0x123u64;
    for i in 0..PAGES {
        // SAFETY: the page is mapped writable to a frame of its own; nothing else uses it.
        unsafe { addr(i).as_mut_ptr::<u8>().write_volatile(i as u8 ^ 0xa5) };
    }
    // Every page is read once more through the probe, so each has a live TLB entry before it is unmapped.
    for i in 0..PAGES {
        assert_eq!(probe_read(addr(i)), Ok(i as u8 ^ 0xa5), "mapped page {i}");
    }

    // A few pages (invalidated one by one with invlpg): they fault, their neighbours still read.
    let (hole, hole_len) = (100, 8);
    with_space(|s| s.unmap_range(start + hole, hole_len));
    for i in hole..hole + hole_len {
        assert_faults(addr(i), "after unmapping 8 pages");
    }
    for i in [hole - 1, hole + hole_len] {
        assert_eq!(
            probe_read(addr(i)),
            Ok(i as u8 ^ 0xa5),
            "neighbour page {i}"
        );
    }

    // The rest, in runs long enough for a whole-TLB flush: everything faults, the frames are all back.
    with_space(|s| {
        s.unmap_range(start, hole);
        s.unmap_range(start + hole + hole_len, PAGES - hole - hole_len);
    });
    for i in 0..PAGES {
        assert_faults(addr(i), "after unmapping everything");
    }
    baseline.assert_restored("after unmapping");
    log::info!(
        "{PAGES} pages at {:#x}: mapped, read, unmapped; every page faults at its address",
        start.start_address().as_u64()
    );
}
