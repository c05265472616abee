//! An attacker's pass over region mode (`Heap::init_region`, `Heap::add_region`): the edges of the
//! canonical halves, take-over on a region heap, gaps between regions, regions that follow each other
//! directly, and dirty memory. Each test failed before the fix it names.

use core::alloc::{GlobalAlloc, Layout};
use core::mem::MaybeUninit;
use std::boxed::Box;
use std::vec;
use std::vec::Vec;

use crate::addr::{PhysFrame, VirtAddr, PAGE_SIZE};
use crate::host::{leak, HostPlatform};
use crate::pageheap::InitError;
use crate::platform::Platform;
use crate::takeover::{take_over_tables, Limits, TakeOverError, TakeOverPlatform};
use crate::testing::Rng;
use crate::Heap;

type RegionHeap = Heap<HostPlatform, false>;

/// The end of the lower canonical half.
const LOWER_HALF_END: usize = 1 << 47;

fn new_heap() -> &'static RegionHeap {
    leak(Heap::new(leak(HostPlatform::new(4096))))
}

/// `len` bytes of leaked host memory filled with garbage, starting `misalign` bytes past an 8 KiB
/// boundary.
fn region(len: usize, misalign: usize) -> &'static mut [MaybeUninit<u8>] {
    let buf: &'static mut [MaybeUninit<u8>] = Box::leak(
        vec![MaybeUninit::new(0xAAu8); len + 2 * PAGE_SIZE + misalign].into_boxed_slice(),
    );
    let skip = buf.as_ptr().align_offset(PAGE_SIZE) + misalign;
    &mut buf[skip..skip + len]
}

/// `len` bytes of fresh memory mapped at exactly `addr` (never over an existing mapping), filled with
/// garbage, or `None` if something is there already.
fn map_at(addr: usize, len: usize) -> Option<&'static mut [MaybeUninit<u8>]> {
    let prot = libc::PROT_READ | libc::PROT_WRITE;
    let flags =
        libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE | libc::MAP_FIXED_NOREPLACE;
    // SAFETY: MAP_FIXED_NOREPLACE never replaces a mapping: the call creates a new one or fails.
    let p = unsafe { libc::mmap(addr as *mut libc::c_void, len, prot, flags, -1, 0) };
    if p == libc::MAP_FAILED {
        return None;
    }
    if p as usize != addr {
        // A kernel without MAP_FIXED_NOREPLACE took it as a hint.
        // SAFETY: the mapping just made, which nothing uses.
        unsafe { libc::munmap(p, len) };
        return None;
    }
    // SAFETY: a fresh private mapping of `len` bytes, leaked: ours alone for good.
    let r = unsafe { core::slice::from_raw_parts_mut(p.cast::<MaybeUninit<u8>>(), len) };
    r.fill(MaybeUninit::new(0xAA));
    Some(r)
}

/// `len` bytes mapped at the first of `starts` where nothing is mapped yet (the stack and the vDSO
/// sit near the top of the lower half).
fn map_first_free(starts: &[usize], len: usize) -> &'static mut [MaybeUninit<u8>] {
    starts
        .iter()
        .find_map(|&s| map_at(s, len))
        .unwrap_or_else(|| panic!("none of {starts:#x?} is free for {len:#x} bytes"))
}

fn lay(size: usize) -> Layout {
    Layout::from_size_align(size, 8).unwrap()
}

/// Page-sized objects fill the heap up to its last pages (the top ones hold metadata: span structs, a per-CPU cache), and are usable.
fn use_the_top(heap: &RegionHeap, top: u64) {
    // SAFETY: test code: fresh blocks, written within their size, freed with their layouts.
    unsafe {
        let mut got = Vec::new();
        loop {
            let p = heap.alloc(lay(PAGE_SIZE));
            if p.is_null() {
                break;
            }
            core::ptr::write_bytes(p, 0x55, PAGE_SIZE);
            got.push(p);
        }
        let highest = got.iter().map(|&p| p as u64).max().unwrap() + PAGE_SIZE as u64;
        let meta = heap.stats().pages.meta_mapped;
        assert!(
            highest <= top && top - highest <= meta,
            "the highest object ends at {highest:#x}, the heap at {top:#x}"
        );
        for p in got {
            heap.dealloc(p, lay(PAGE_SIZE));
        }
    }
}

#[test]
fn a_reach_ending_at_the_top_of_the_lower_half_is_taken_without_panicking() {
    // Reach up to exactly 2^47 (not a canonical address itself): "regions anywhere above me".
    let len = 4 << 20;
    let starts: Vec<usize> = [256, 320, 384, 448, 512]
        .iter()
        .map(|mib| LOWER_HALF_END - (mib << 20))
        .collect();
    let r = map_first_free(&starts, len);
    let start = r.as_mut_ptr() as usize;
    let heap = new_heap();
    // SAFETY: a fresh mapping of `len` bytes, leaked, given to the heap alone.
    let info =
        unsafe { heap.init_region_with_reach(start as *mut u8, len, LOWER_HALF_END - start) }
            .expect("a reach up to the end of the half");
    assert!(info.reach_end.as_u64() <= LOWER_HALF_END as u64, "{info}");
    assert!(info.pages.1.as_u64() <= (start + len) as u64, "{info}");
    // A later region just below the reach's end: its pages up to the reach are the heap's.
    let later_len = 2 << 20;
    let later_starts: Vec<usize> = [64, 96, 128, 160]
        .iter()
        .map(|mib| LOWER_HALF_END - (mib << 20))
        .collect();
    let later = map_first_free(&later_starts, later_len);
    let later_start = later.as_mut_ptr() as usize;
    // SAFETY: a fresh mapping, leaked, given to the heap alone.
    let (s, e) = unsafe { heap.add_region(later_start as *mut u8, later_len) }.unwrap();
    assert!(
        s.as_u64() >= later_start as u64 && e.as_u64() == (later_start + later_len) as u64,
        "{s:?}..{e:?}"
    );
    use_the_top(heap, e.as_u64());
}

#[test]
fn the_default_reach_stops_at_the_end_of_the_half() {
    // A region in the top 8 x `len` of the lower half: eight times `len` would leave the half, but the
    // region itself is fine and the default reach must not refuse it.
    let len = 16 << 20;
    let starts: Vec<usize> = [64, 80, 96, 112]
        .iter()
        .map(|mib| LOWER_HALF_END - (mib << 20))
        .collect();
    let r = map_first_free(&starts, len);
    let start = r.as_ptr() as usize;
    let heap = new_heap();
    let info = heap
        .init_region_from_slice(r)
        .expect("a region near the top of the lower half");
    assert!(
        info.reach_end.as_u64() > (start + len) as u64
            && info.reach_end.as_u64() <= LOWER_HALF_END as u64,
        "{info}"
    );
    use_the_top(heap, info.pages.1.as_u64());
}

#[test]
fn a_region_at_the_top_of_the_higher_half_is_refused_without_overflow() {
    let heap = new_heap();
    for (start, len, reach) in [
        (0xffff_ffff_ffff_f000u64, 0x800usize, 0x800usize),
        (0xffff_ffff_ffff_e000, 0x1000, 0x2000),
        (0xffff_ffff_ffff_ff00, 0x100, 0),
    ] {
        // SAFETY: nothing is mapped there, and nothing must be touched: the region holds no heap page.
        let err = unsafe { heap.init_region_with_reach(start as *mut u8, len, reach) }.unwrap_err();
        assert!(
            matches!(err, InitError::RegionTooSmall { .. }),
            "{start:#x} + {len:#x}: {err:?}"
        );
        let text = std::format!("{err}");
        assert!(text.contains("too small"), "{text}");
    }
    // Still uninitialized: allocations fail.
    // SAFETY: test code: a non-zero layout.
    assert!(unsafe { heap.alloc(lay(8)) }.is_null());
}

/// A take-over platform over the host one (take-over needs to tell it the physical-memory offset).
struct TakeOverHost(&'static HostPlatform);

// Every call is the host platform's.
crate::testing::host_platform_wrapper!(TakeOverHost {
    const MAX_CPUS: usize = crate::host::HostPlatform::MAX_CPUS;
});

impl TakeOverPlatform for TakeOverHost {
    fn set_physical_memory_offset(&self, _offset: VirtAddr) {}
}

#[test]
fn take_over_refuses_a_heap_in_region_mode() {
    let heap: &'static Heap<TakeOverHost, false> =
        leak(Heap::new(leak(TakeOverHost(leak(HostPlatform::new(4096))))));
    heap.init_region_from_slice(region(256 << 10, 0)).unwrap();
    // SAFETY: the heap is initialized, so take-over must refuse before reading the (empty) memory map
    // or any page table.
    let err = unsafe {
        take_over_tables(
            heap,
            core::iter::empty(),
            VirtAddr::new(0x1000_0000_0000),
            PhysFrame::containing_address(crate::PhysAddr::new(0x1000)),
            Limits::default(),
        )
    }
    .unwrap_err();
    assert!(matches!(err, TakeOverError::AlreadyInitialized), "{err:?}");
    // The region heap still serves.
    // SAFETY: test code: a fresh block, freed with its layout.
    unsafe { heap.dealloc(heap.alloc(lay(64)), lay(64)) };
}

#[test]
fn a_gap_between_regions_does_not_turn_the_caches_on() {
    let heap = new_heap();
    let all = region(4 << 20, 0);
    let base = all.as_mut_ptr().cast::<u8>();
    // 200 KiB, then 100 KiB 3 MiB further on: 300 KiB of heap, under the 1 MiB caches need.
    // SAFETY: test code: two disjoint parts of a leaked buffer, given to the heap once each.
    unsafe {
        heap.init_region_with_reach(base, 200 << 10, 4 << 20)
            .unwrap();
        heap.add_region(base.add(3 << 20), 100 << 10).unwrap();
    }
    // SAFETY: test code: a fresh block, freed with its layout.
    unsafe { heap.dealloc(heap.alloc(lay(64)), lay(64)) };
    let st = heap.stats();
    assert!(
        st.pages.meta_mapped < 64 << 10,
        "a 300 KiB heap made a per-CPU cache: {} bytes of metadata",
        st.pages.meta_mapped
    );
}

#[test]
fn a_region_right_after_the_last_one_loses_no_page() {
    let heap = new_heap();
    // The first region ends 4 KiB into an 8 KiB page; the next one starts right there.
    let all = region(600 << 10, 0);
    let base = all.as_mut_ptr().cast::<u8>();
    let first_len = (200 << 10) + 4096;
    // SAFETY: test code: consecutive parts of a leaked buffer, given to the heap once each.
    let info = unsafe { heap.init_region(base, first_len) }.unwrap();
    assert_eq!(info.pages.1.as_u64(), base as u64 + (200 << 10));
    // SAFETY: as above.
    let (s, e) = unsafe { heap.add_region(base.add(first_len), (304 << 10) - 4096) }.unwrap();
    assert_eq!(
        s, info.pages.1,
        "the page across the two regions' boundary was lost"
    );
    assert_eq!(e.as_u64(), base as u64 + (504 << 10));
    // One object across the boundary: both regions' pages in one run.
    // SAFETY: test code: a fresh block, written within its size, freed with its layout.
    unsafe {
        let big = lay(400 << 10);
        let p = heap.alloc(big);
        assert!(!p.is_null());
        core::ptr::write_bytes(p, 1, big.size());
        heap.dealloc(p, big);
    }
}

#[test]
fn zeroed_allocations_are_zero_in_dirty_regions() {
    let heap = new_heap();
    heap.init_region_from_slice(region(2 << 20, 4096)).unwrap();
    for round in 0..3 {
        // SAFETY: test code: fresh blocks, written within their size, freed with their layouts.
        unsafe {
            for size in [8, 100, 4096, 20 << 10, 40 << 10, 300 << 10] {
                let p = heap.alloc_zeroed(lay(size));
                assert!(!p.is_null(), "round {round}: {size} B");
                assert!(
                    core::slice::from_raw_parts(p, size).iter().all(|&b| b == 0),
                    "round {round}: {size} B at {p:?} not zeroed"
                );
                core::ptr::write_bytes(p, 0xEE, size);
                heap.dealloc(p, lay(size));
            }
        }
    }
}

#[test]
fn regions_added_while_threads_allocate_with_page_caches_on() {
    // A reach of 2 GiB: capacity over the page caches' minimum, so small spans come from per-CPU page
    // caches, while regions are added and metadata chunks are taken from the top.
    let heap = new_heap();
    let first = 4 << 20;
    let parts = 6;
    let part = 1 << 20;
    let all = region(first + parts * 2 * part, 0);
    let base = all.as_mut_ptr().cast::<u8>();
    let (lo, hi) = (base as usize, base as usize + all.len());
    // SAFETY: test code: disjoint parts of a leaked buffer, given to the heap once each.
    unsafe { heap.init_region_with_reach(base, first, 2 << 30) }.unwrap();
    std::thread::scope(|s| {
        for t in 0..3usize {
            s.spawn(move || {
                let mut live: Vec<(usize, usize)> = Vec::new();
                for i in 0..30_000usize {
                    let size = [24, 200, 3000, 20 << 10, 70 << 10][(i + t) % 5];
                    // SAFETY: test code: live blocks of this heap, freed once with their layout.
                    unsafe {
                        let p = heap.alloc(lay(size));
                        if !p.is_null() {
                            assert!(lo <= p as usize && p as usize + size <= hi, "{p:?}");
                            core::ptr::write_bytes(p, t as u8 + 1, size);
                            live.push((p as usize, size));
                        }
                        if live.len() > 40 || (p.is_null() && !live.is_empty()) {
                            let (q, n) = live.swap_remove((i * 7) % live.len());
                            let q = q as *mut u8;
                            assert!(
                                *q == t as u8 + 1 && *q.add(n - 1) == t as u8 + 1,
                                "block {q:?} overwritten"
                            );
                            heap.dealloc(q, lay(n));
                        }
                    }
                }
                for (q, n) in live {
                    // SAFETY: test code: the blocks left, live.
                    unsafe { heap.dealloc(q as *mut u8, lay(n)) };
                }
            });
        }
        let base = base as usize;
        s.spawn(move || {
            for k in 0..parts {
                std::thread::yield_now();
                // SAFETY: test code: every other part of the buffer, in increasing order.
                unsafe { heap.add_region((base + first + (2 * k + 1) * part) as *mut u8, part) }
                    .unwrap();
            }
        });
    });
    assert_eq!(heap.stats().objects(), 0);
    heap.trim();
    // Every page of the regions but metadata is free again: one large object takes most of the last
    // region.
    // SAFETY: test code: a fresh block, freed with its layout.
    unsafe {
        let p = heap.alloc(lay(part / 2));
        assert!(!p.is_null());
        heap.dealloc(p, lay(part / 2));
    }
}

#[test]
fn the_collector_runs_on_a_region_heap() {
    use crate::gc::{Gc, GcCell, GcConfig, GcHeap, Rootable, Trace, Tracer};

    struct Cell<'gc> {
        id: u64,
        data: [u64; 6],
        next: GcCell<'gc, Option<Gc<'gc, Cell<'gc>>>>,
    }
    // SAFETY: `trace` traces the one `Gc` a Cell holds.
    unsafe impl<'gc> Trace for Cell<'gc> {
        fn trace(&self, t: &mut Tracer<'_>) {
            t.trace(&self.next);
        }
    }
    struct Root;
    impl Rootable for Root {
        type Root<'gc> = GcCell<'gc, Option<Gc<'gc, Cell<'gc>>>>;
    }
    let heap = new_heap();
    heap.init_region_from_slice(region(2 << 20, 4096)).unwrap();
    let config = GcConfig {
        verify: true,
        poison: true,
        ..GcConfig::default()
    };
    let mut gc: GcHeap<Root> = GcHeap::new(heap, config, |_| GcCell::new(None));
    for round in 0..30u64 {
        gc.mutate(|mc, root| {
            // A list of 2000 cells, every other one kept; big arrays come and go beside it.
            let mut kept = None;
            for id in 0..2000 {
                let c = Gc::new(
                    mc,
                    Cell {
                        id: round * 10_000 + id,
                        data: [id; 6],
                        next: GcCell::new(None),
                    },
                );
                if id % 2 == 0 {
                    c.next.set(mc, kept);
                    kept = Some(c);
                }
                if id % 500 == 0 {
                    let big = Gc::new(mc, [round; 4096]);
                    assert!(big.iter().all(|&x| x == round));
                }
            }
            root.set(mc, kept);
        });
        gc.collect();
        gc.mutate(|_, root| {
            let (mut n, mut cur) = (0, root.get());
            while let Some(c) = cur {
                assert_eq!(c.id, round * 10_000 + 1998 - 2 * n, "round {round}");
                assert!(c.data.iter().all(|&x| x == 1998 - 2 * n));
                n += 1;
                cur = c.next.get();
            }
            assert_eq!(n, 1000, "round {round}");
        });
    }
}

#[test]
fn a_region_of_exactly_the_size_needed_serves_and_one_byte_less_is_refused() {
    for misalign in [0, 1, 7, 8, 4095, 4096, 8191] {
        for reach in [0, 1 << 20, 1 << 30] {
            let heap = new_heap();
            let r = region(64 << 10, misalign);
            let start = r.as_mut_ptr().cast::<u8>();
            // SAFETY: test code: a leaked buffer; a refused region is not touched.
            let needed = match unsafe { heap.init_region_with_reach(start, 1, reach) } {
                Err(InitError::RegionTooSmall { needed, .. }) => needed as usize,
                other => panic!("{other:?}"),
            };
            if needed > r.len() {
                continue;
            }
            // SAFETY: as above.
            let err = unsafe { heap.init_region_with_reach(start, needed - 1, reach) }.unwrap_err();
            assert!(matches!(err, InitError::RegionTooSmall { .. }), "{err:?}");
            // SAFETY: as above: the first `needed` bytes of the buffer, the heap's alone.
            let info = unsafe { heap.init_region_with_reach(start, needed, reach) }.unwrap();
            assert_eq!(
                info.pages.1 - info.pages.0,
                2 * PAGE_SIZE as u64,
                "misalign {misalign}, reach {reach:#x}: {info}"
            );
            assert_eq!(info.pages.1.as_u64(), start as u64 + needed as u64);
            // SAFETY: test code: fresh blocks within the one page, freed with their layouts.
            unsafe {
                let p = heap.alloc(lay(16));
                assert!(!p.is_null(), "misalign {misalign}, reach {reach:#x}");
                let q = heap.alloc(lay(PAGE_SIZE));
                assert!(q.is_null(), "one page holds objects, the other metadata");
                heap.dealloc(p, lay(16));
            }
        }
    }
}

#[test]
fn a_region_whose_first_page_would_pass_the_reach_is_out_of_reach() {
    let heap = new_heap();
    let all = region(256 << 10, 0);
    let base = all.as_mut_ptr().cast::<u8>();
    // SAFETY: test code: parts of a leaked buffer, given to the heap once each.
    let info = unsafe { heap.init_region_with_reach(base, 100 << 10, 200 << 10) }.unwrap();
    let reach_end = info.reach_end.as_u64() as usize;
    assert_eq!(reach_end, base as usize + (200 << 10));
    // 4 KiB just below the reach's end: its first whole page would end past the reach, so no length
    // would do; "too small, needs N bytes" would send the caller to a region the heap refuses.
    // SAFETY: as above.
    let err = unsafe { heap.add_region((reach_end - 4096) as *mut u8, 4096) }.unwrap_err();
    assert!(matches!(err, InitError::RegionOutOfReach { .. }), "{err:?}");
    // Where a longer region would do, the length it names is enough.
    // SAFETY: as above.
    let err = unsafe { heap.add_region((reach_end - (20 << 10)) as *mut u8, 4096) }.unwrap_err();
    let InitError::RegionTooSmall { needed, .. } = err else {
        panic!("{err:?}")
    };
    // SAFETY: as above.
    let (s, e) =
        unsafe { heap.add_region((reach_end - (20 << 10)) as *mut u8, needed as usize) }.unwrap();
    assert_eq!(e - s, PAGE_SIZE as u64);
}

#[test]
fn an_allocation_racing_init_makes_no_cache_in_a_small_heap() {
    // The interleaving: a CPU allocates while another initializes the heap. It reads `caches_off`
    // (false: not set yet) in `local_cache`, finds no cache and calls `create_cache`, which waits for
    // the page-heap lock that init holds. Init sets `caches_off` (a 200 KiB heap) and lets go; the
    // CPU then gets the lock and finds a heap. Here the second half of that, on one thread.
    let heap = new_heap();
    heap.init_region_from_slice(region(200 << 10, 0)).unwrap();
    assert!(heap.caches_off.load(core::sync::atomic::Ordering::Relaxed));
    let cpu = heap.platform().cpu_index_slow();
    assert!(
        heap.create_cache(cpu).is_none(),
        "a 200 KiB heap made a per-CPU cache"
    );
    // SAFETY: test code: a fresh block, freed with its layout.
    unsafe { heap.dealloc(heap.alloc(lay(64)), lay(64)) };
    let st = heap.stats();
    assert!(
        st.pages.meta_mapped < 64 << 10,
        "{} bytes of metadata",
        st.pages.meta_mapped
    );
}

#[test]
fn random_regions_and_operations_keep_every_block_in_its_regions() {
    for seed in 1..=24u64 {
        let mut rng = Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1);
        let heap = new_heap();
        let total = 6 << 20;
        let all = region(total, rng.below(8192) as usize);
        let base = all.as_mut_ptr() as usize;
        // The first region, then later ones: contiguous, or after a gap, of random lengths.
        let mut first = (24 << 10) + rng.below(400 << 10) as usize;
        let reach = [0, total, 1 << 30][rng.below(3) as usize];
        // SAFETY: test code: disjoint parts of a leaked buffer, given to the heap once each.
        if let Err(InitError::RegionTooSmall { needed, .. }) =
            // SAFETY: the first `first` bytes of `all`, a leaked buffer: nothing else touches them.
            // If refused (too small), the heap wrote nothing there and keeps nothing: the retry
            // below gives a longer prefix of the same buffer.
            unsafe { heap.init_region_with_reach(base as *mut u8, first, reach) }
        {
            first = needed as usize + rng.below(100 << 10) as usize;
            // SAFETY: as above.
            unsafe { heap.init_region_with_reach(base as *mut u8, first, reach) }.unwrap();
        }
        let mut regions = vec![(base, base + first)];
        let mut at = base + first;
        let mut live: Vec<(usize, Layout, u8)> = Vec::new();
        for step in 0..4000u32 {
            match rng.below(100) {
                0..=1 => {
                    let gap = if rng.below(2) == 0 {
                        0
                    } else {
                        rng.below(100 << 10) as usize
                    };
                    let len = 1 + rng.below(600 << 10) as usize;
                    let (s, e) = (at + gap, at + gap + len);
                    if e <= base + total {
                        // SAFETY: as above.
                        if unsafe { heap.add_region(s as *mut u8, len) }.is_ok() {
                            // Contiguous regions are one range of memory: a block may span both.
                            match regions.last_mut() {
                                Some(last) if last.1 == s => last.1 = e,
                                _ => regions.push((s, e)),
                            }
                            at = e;
                        }
                    }
                }
                2..=50 => {
                    let size = match rng.below(10) {
                        0..=6 => 1 + rng.below(2048),
                        7..=8 => 1 + rng.below(40 << 10),
                        _ => 1 + rng.below(300 << 10),
                    } as usize;
                    let align = 1usize << rng.below(17);
                    let layout = Layout::from_size_align(size, align).unwrap();
                    let zero = rng.below(4) == 0;
                    // SAFETY: test code: a non-zero layout.
                    let p = unsafe {
                        if zero {
                            heap.alloc_zeroed(layout)
                        } else {
                            heap.alloc(layout)
                        }
                    };
                    if p.is_null() {
                        continue;
                    }
                    let a = p as usize;
                    assert!(
                        a.is_multiple_of(align),
                        "seed {seed} step {step}: {p:?} not aligned to {align}"
                    );
                    assert!(
                        regions.iter().any(|&(s, e)| s <= a && a + size <= e),
                        "seed {seed} step {step}: {p:?}+{size} outside the regions {regions:#x?}"
                    );
                    // SAFETY: a fresh block of `size` bytes.
                    unsafe {
                        if zero {
                            assert!(
                                core::slice::from_raw_parts(p, size).iter().all(|&b| b == 0),
                                "seed {seed} step {step}: zeroed {p:?}+{size} is not"
                            );
                        }
                        let tag = (step % 251) as u8 + 1;
                        core::ptr::write_bytes(p, tag, size);
                        live.push((a, layout, tag));
                    }
                }
                51..=85 if !live.is_empty() => {
                    let (a, layout, tag) = live.swap_remove(rng.below(live.len() as u64) as usize);
                    // SAFETY: test code: a live block, checked, freed once with its layout.
                    unsafe {
                        let s = core::slice::from_raw_parts(a as *const u8, layout.size());
                        assert!(
                            s.iter().all(|&b| b == tag),
                            "seed {seed} step {step}: block {a:#x}+{} overwritten",
                            layout.size()
                        );
                        heap.dealloc(a as *mut u8, layout);
                    }
                }
                86..=97 if !live.is_empty() => {
                    let i = rng.below(live.len() as u64) as usize;
                    let (a, layout, tag) = live[i];
                    let new_size = 1 + rng.below(400 << 10) as usize;
                    // SAFETY: test code: a live block with its layout; on success the old one is gone.
                    unsafe {
                        let p = heap.realloc(a as *mut u8, layout, new_size);
                        if p.is_null() {
                            continue;
                        }
                        let kept = layout.size().min(new_size);
                        let s = core::slice::from_raw_parts(p, kept);
                        assert!(
                            s.iter().all(|&b| b == tag),
                            "seed {seed} step {step}: realloc lost contents"
                        );
                        let q = p as usize;
                        assert!(
                            regions.iter().any(|&(s, e)| s <= q && q + new_size <= e),
                            "seed {seed} step {step}: realloc to {p:?}+{new_size} outside the regions {regions:#x?}"
                        );
                        core::ptr::write_bytes(p, tag, new_size);
                        let nl = Layout::from_size_align(new_size, layout.align()).unwrap();
                        live[i] = (q, nl, tag);
                    }
                }
                _ => heap.trim(),
            }
            if step % 500 == 0 {
                // No two live blocks overlap.
                let mut v: Vec<(usize, usize)> =
                    live.iter().map(|&(a, l, _)| (a, a + l.size())).collect();
                v.sort_unstable();
                for w in v.windows(2) {
                    assert!(w[0].1 <= w[1].0, "seed {seed} step {step}: {w:#x?} overlap");
                }
            }
        }
        for (a, layout, tag) in live {
            // SAFETY: test code: the blocks left, live.
            unsafe {
                assert!(core::slice::from_raw_parts(a as *const u8, layout.size())
                    .iter()
                    .all(|&b| b == tag));
                heap.dealloc(a as *mut u8, layout);
            }
        }
        assert_eq!(heap.stats().objects(), 0, "seed {seed}");
    }
}

/// A region that holds the `Heap` itself (a kernel that hands over "everything after its image" with
/// the image's end taken before the `.bss` that holds the `static`): refused, naming the heap's
/// address, before anything is written; a region after it serves.
#[test]
fn a_region_holding_the_heap_itself_is_refused() {
    let all = region(1 << 20, 0);
    let base = all.as_mut_ptr().cast::<u8>();
    let platform = leak(HostPlatform::new(4096));
    // The heap lives 64 KiB into the buffer.
    // SAFETY: test code: an aligned slot inside the leaked buffer, written once, leaked.
    let heap: &'static RegionHeap = unsafe {
        let at = base.add(64 << 10).cast::<RegionHeap>();
        assert!(at.is_aligned());
        at.write(Heap::new(platform));
        &*at
    };
    let heap_at = heap as *const RegionHeap as u64;
    // SAFETY: the buffer is leaked; a refused region is not touched.
    let err = unsafe { heap.init_region(base, 512 << 10) }.unwrap_err();
    assert_eq!(
        err,
        InitError::RegionHoldsHeap {
            start: base as u64,
            len: 512 << 10,
            heap: heap_at
        }
    );
    let text = std::format!("{err}");
    assert!(text.contains(&std::format!("{heap_at:#x}")), "{text}");
    // The heap is untouched and still uninitialized: a region past it serves.
    // SAFETY: the second half of the buffer, the heap's alone from now on.
    unsafe { heap.init_region(base.add(512 << 10), 256 << 10) }.expect("a region past the heap");
    // A later region over the heap is refused too.
    // SAFETY: as above: refused before anything is written.
    let err = unsafe { heap.add_region(base.add(32 << 10), 200 << 10) }.unwrap_err();
    assert!(matches!(err, InitError::RegionHoldsHeap { .. }), "{err:?}");
    // SAFETY: test code: a fresh block, freed with its layout.
    unsafe { heap.dealloc(heap.alloc(lay(64)), lay(64)) };
}
