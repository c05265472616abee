//! The mapping layers out of frames (review F): every step of a mapping that can find no frame
//! (pages, a trimmed tail, page tables, metadata) leaves the page heap's counters, the frames held
//! and the objects' contents as they must be.

use core::alloc::{GlobalAlloc, Layout};
use std::vec::Vec;

use crate::host::{HostMachine, HostPlatform};
use crate::testing::hoard_all_but;
use crate::Heap;

const MIB: usize = 1 << 20;
/// 36 KiB: five pages, the last one's second frame spare.
const TRIMMABLE: usize = 36 << 10;

fn heap_with_usable(usable: usize) -> &'static Heap<HostPlatform> {
    let m = HostMachine::with_usable_memory(usable, 4 << 30);
    let heap: &'static Heap<HostPlatform> = crate::host::leak(Heap::new(m.platform));
    heap.init(m.space, m.window, 2 << 30).expect("heap init");
    heap
}

/// A heap of at most 64 MiB in a window of 256 MiB, small enough for `audit_mappings` to walk.
fn audited_heap(usable: usize) -> &'static Heap<HostPlatform> {
    let m = HostMachine::with_usable_memory(usable, 256 << 20);
    let heap: &'static Heap<HostPlatform> = crate::host::leak(Heap::new(m.platform));
    heap.init(m.space, m.window, 64 << 20).expect("heap init");
    heap
}

fn lay(size: usize) -> Layout {
    Layout::from_size_align(size, 8).unwrap()
}

/// Takes every free frame but `keep` (see `testing::hoard_all_but`).
fn hoard(heap: &Heap<HostPlatform>, keep: u64) -> Vec<(crate::addr::PhysFrame, crate::FrameCount)> {
    // SAFETY: takes free frames only.
    unsafe { heap.with_address_space(|s| hoard_all_but(&mut s.frames, keep)) }.unwrap()
}

fn give_back(heap: &Heap<HostPlatform>, hoard: Vec<(crate::addr::PhysFrame, crate::FrameCount)>) {
    // SAFETY: frames `hoard` took from this heap's allocator, each run given back once, unused.
    unsafe {
        heap.with_address_space(|s| {
            for (f, n) in hoard {
                s.frames.free_contiguous(f, n);
            }
        })
    };
}

/// Writes a pattern of `seed` over `[p, p + len)`.
///
/// # Safety
/// The bytes are an object of ours.
unsafe fn fill(p: *mut u8, len: usize, seed: u8) {
    for i in 0..len {
        // SAFETY: the caller's contract.
        unsafe { p.add(i).write((i as u8).wrapping_mul(7) ^ seed) };
    }
}

/// Whether `[p, p + len)` holds the pattern of `seed`.
///
/// # Safety
/// As for [`fill`].
unsafe fn holds(p: *const u8, len: usize, seed: u8) -> bool {
    // SAFETY: the caller's contract.
    (0..len).all(|i| unsafe { p.add(i).read() } == (i as u8).wrapping_mul(7) ^ seed)
}

/// A trimmed large allocation whose pages were mapped but whose span struct then finds no frame
/// for a metadata page gives its pages back; when its trimmed tail cannot be made whole either,
/// the tail page is scavenged and must not be counted as a dirty free page. Swept over the number
/// of span structs made before it (so one run meets a full metadata page) and the frames left.
#[test]
fn a_trimmed_allocation_without_a_span_struct_leaves_the_counters_right() {
    let mut met = 0;
    for k in 0..40 {
        for keep in 7..12 {
            let heap = heap_with_usable(16 * MIB);
            // SAFETY: valid layouts; every object is freed once with its layout.
            unsafe {
                let small = heap.alloc(lay(8));
                let fillers: Vec<_> = (0..k).map(|_| heap.alloc(lay(40 << 10))).collect();
                assert!(fillers.iter().all(|p| !p.is_null()));
                heap.trim();
                let h = hoard(heap, keep);
                let p = heap.alloc(lay(TRIMMABLE));
                heap.audit_pages();
                if p.is_null() {
                    met += 1;
                } else {
                    fill(p, TRIMMABLE, 1);
                    assert!(holds(p, TRIMMABLE, 1));
                    heap.dealloc(p, lay(TRIMMABLE));
                }
                heap.audit_pages();
                give_back(heap, h);
                for f in fillers {
                    heap.dealloc(f, lay(40 << 10));
                }
                heap.dealloc(small, lay(8));
                heap.audit_pages();
            }
        }
    }
    assert!(met > 0, "no run failed the allocation");
}

/// A heap whose frames all sit in free pages it keeps mapped (a small machine: the scavenger keeps
/// 4 MiB of free pages for its churn) and whose free pages hold no run long enough for an object must
/// grow; the metadata of the growth needs frames, which the free pages give back as they do for the
/// heap's other mappings.
#[test]
fn a_growth_whose_metadata_finds_no_frame_takes_the_free_pages_back() {
    let heap = heap_with_usable(4 * MIB);
    let five = lay(40 << 10);
    // SAFETY: valid layouts; every object is freed once with its layout.
    unsafe {
        let mut objs = Vec::new();
        loop {
            let p = heap.alloc(five);
            if p.is_null() {
                break;
            }
            fill(p, 40 << 10, objs.len() as u8);
            objs.push(p);
        }
        assert!(objs.len() > 40, "only {} objects", objs.len());
        // Every other one freed: holes of five pages, mapped, which the heap keeps.
        let mut kept = Vec::new();
        for (i, p) in objs.into_iter().enumerate() {
            if i % 2 == 0 {
                heap.dealloc(p, five);
            } else {
                kept.push((i, p));
            }
        }
        heap.audit_pages();
        // The kernel takes the few frames left free (the heap holds the rest in its free pages).
        let taken = hoard(heap, 0);
        let s = heap.stats();
        let big = lay(64 << 10 << 2); // 32 pages: no hole holds them.
        assert!(
            (s.pages.dirty_free * 2) as u64 + s.frames_free.0 > 64 + 8,
            "too few frames for the test: {s:?}"
        );
        let p = heap.alloc(big);
        assert!(
            !p.is_null(),
            "a 256 KiB object refused with {} free pages mapped and {} free frames",
            s.pages.dirty_free,
            s.frames_free.0
        );
        give_back(heap, taken);
        fill(p, big.size(), 0xa5);
        heap.audit_pages();
        for &(i, q) in &kept {
            assert!(holds(q, 40 << 10, i as u8), "object {i} changed");
        }
        assert!(holds(p, big.size(), 0xa5));
        heap.dealloc(p, big);
        for (_, q) in kept {
            heap.dealloc(q, five);
        }
    }
    heap.audit_pages();
}

/// Frames the heap holds plus the free ones plus those the test took: constant while nobody else
/// takes frames (`frames_held` counts every data frame and table the heap's address space took).
fn frames_accounted(
    heap: &Heap<HostPlatform>,
    taken: &[(crate::addr::PhysFrame, crate::FrameCount)],
) -> u64 {
    let s = heap.stats();
    s.frames_held.0 + s.frames_free.0 + taken.iter().map(|(_, n)| n.0).sum::<u64>()
}

/// Random allocations, reallocations and frees of sizes around the trimmed-tail boundaries on a
/// small machine, with frames taken away and given back at random, `trim` and `allocate_frames`
/// among them: after every step the page heap's audit passes, every frame is accounted for, and
/// every live object holds its pattern.
#[test]
fn random_operations_on_a_machine_out_of_frames_keep_every_count() {
    for seed in 1..=5u64 {
        let heap = audited_heap(3 * MIB);
        let mut rng = crate::testing::Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15));
        let total = frames_accounted(heap, &[]);
        let sizes = [
            8usize,
            4000,
            9000,
            20 << 10,
            28 << 10,
            (32 << 10) + 1,
            36 << 10,
            (36 << 10) + 1,
            40 << 10,
            60 << 10,
            68 << 10,
            100 << 10,
            300 << 10,
            1 << 20,
        ];
        let mut live: Vec<(*mut u8, Layout, u8)> = Vec::new();
        let mut taken = Vec::new();
        let mut dma: Vec<(crate::addr::PhysFrame, crate::FrameCount)> = Vec::new();
        for step in 0..700 {
            let op = rng.below(100);
            // SAFETY: valid layouts; live objects are resized or freed once with their layouts;
            // frames taken are given back once.
            unsafe {
                match op {
                    0..=39 => {
                        let size = sizes[rng.below(sizes.len() as u64) as usize];
                        let align = if rng.below(8) == 0 { 16 << 10 } else { 8 };
                        let l = Layout::from_size_align(size, align).unwrap();
                        let p = heap.alloc(l);
                        if !p.is_null() {
                            let seed = rng.below(256) as u8;
                            fill(p, size, seed);
                            live.push((p, l, seed));
                        }
                    }
                    40..=59 if !live.is_empty() => {
                        let i = rng.below(live.len() as u64) as usize;
                        let (p, l, seed) = live.swap_remove(i);
                        assert!(
                            holds(p, l.size(), seed),
                            "seed {seed}: step {step}: object changed"
                        );
                        heap.dealloc(p, l);
                    }
                    60..=79 if !live.is_empty() => {
                        let i = rng.below(live.len() as u64) as usize;
                        let (p, l, seed) = live[i];
                        let new = sizes[rng.below(sizes.len() as u64) as usize];
                        let q = heap.realloc(p, l, new);
                        let keep = l.size().min(new);
                        if q.is_null() {
                            assert!(
                                holds(p, l.size(), seed),
                                "step {step}: failed realloc changed it"
                            );
                        } else {
                            assert!(
                                holds(q, keep, seed),
                                "step {step}: realloc lost the contents"
                            );
                            let nl = Layout::from_size_align(new, l.align()).unwrap();
                            fill(q, new, seed);
                            live[i] = (q, nl, seed);
                        }
                    }
                    80..=86 => {
                        let keep = rng.below(16);
                        taken.extend(hoard(heap, keep));
                    }
                    87..=91 => give_back(heap, core::mem::take(&mut taken)),
                    92..=93 => heap.trim(),
                    94..=96 => {
                        let n = 1 + rng.below(8);
                        if let Some(f) =
                            heap.allocate_frames(crate::FrameCount(n), crate::FrameCount(1))
                        {
                            dma.push((f, crate::FrameCount(n)));
                        }
                    }
                    _ => give_back(heap, core::mem::take(&mut dma)),
                }
            }
            heap.audit_mappings();
            let mut all = taken.clone();
            all.extend(dma.iter().copied());
            assert_eq!(
                frames_accounted(heap, &all),
                total,
                "seed {seed}: step {step} (op {op}): frames held + free + taken drifted: {:?}",
                heap.stats().pages
            );
        }
        give_back(heap, taken);
        give_back(heap, dma);
        for (p, l, seed) in live {
            // SAFETY: live objects of these layouts, freed once.
            unsafe {
                assert!(holds(p, l.size(), seed));
                heap.dealloc(p, l);
            }
        }
        heap.trim();
        heap.audit_pages();
        let s = heap.stats();
        assert_eq!(s.pages.in_use, 0, "seed {seed}: pages still in use");
        assert_eq!(s.pages.trimmed_tails, 0);
        assert_eq!(frames_accounted(heap, &[]), total);
    }
}

/// Hostile sizes and alignments (allocations, reallocations, frames for the kernel) are refused
/// without a panic and without a trace in the counters.
#[test]
fn huge_sizes_and_alignments_are_refused_cleanly() {
    let heap = heap_with_usable(3 * MIB);
    let total = frames_accounted(heap, &[]);
    for (count, align) in [
        (u64::MAX, 1),
        (u64::MAX / 2, 1 << 62),
        (1, 1 << 63),
        (1, 1 << 40),
        (1 << 40, 1),
        (1000, 1),
    ] {
        let got = heap.allocate_frames(crate::FrameCount(count), crate::FrameCount(align));
        assert!(got.is_none(), "{count} frames aligned to {align}: {got:?}");
        heap.audit_pages();
        assert_eq!(frames_accounted(heap, &[]), total);
    }
    let layouts = [
        (isize::MAX as usize - (1 << 20), 8),
        (1 << 40, 8),
        (1, 1 << 40),
        (3 << 20, 1 << 30),
        (8, 1 << 30),
        (2 << 20, 4096),
    ];
    // SAFETY: valid layouts; the one object is resized and freed with its layouts.
    unsafe {
        for (size, align) in layouts {
            let l = Layout::from_size_align(size, align).unwrap();
            let p = heap.alloc_zeroed(l);
            if size <= 8 {
                // A page aligned to 1 GiB is within reach (the window is 4 GiB): met, or null.
                assert!(
                    p.is_null() || (p as usize).is_multiple_of(align),
                    "{p:?} aligned to {align}"
                );
            } else {
                assert!(p.is_null(), "{size} bytes aligned to {align}");
            }
            if !p.is_null() {
                assert_eq!(*p, 0);
                fill(p, size, 4);
                heap.dealloc(p, l);
            }
            heap.audit_pages();
        }
        let l = lay(40 << 10);
        let p = heap.alloc(l);
        assert!(!p.is_null());
        fill(p, 40 << 10, 3);
        for new in [isize::MAX as usize - 4096, 1 << 40, 3 << 20] {
            assert!(heap.realloc(p, l, new).is_null(), "realloc to {new}");
            assert!(holds(p, 40 << 10, 3));
            heap.audit_pages();
        }
        heap.dealloc(p, l);
    }
    heap.trim();
    heap.audit_pages();
    assert_eq!(heap.stats().pages.in_use, 0);
    assert_eq!(frames_accounted(heap, &[]), total);
}

/// Large objects whose spare tail frames are taken (an allocation out of frames) and mapped again
/// (a realloc into them) over and over: their bytes survive every step, the audit passes, and the
/// trimmed tails and frames come back in the end.
#[test]
fn spare_tails_trimmed_and_untrimmed_again_keep_their_objects() {
    let heap = audited_heap(4 * MIB);
    let total = frames_accounted(heap, &[]);
    let (short, long) = (lay(TRIMMABLE), lay(40 << 10));
    let page = lay(crate::PAGE_SIZE);
    // SAFETY: valid layouts; every object is resized and freed with its current layout.
    unsafe {
        let objs: Vec<*mut u8> = (0..6)
            .map(|i| {
                let p = heap.alloc(long);
                assert!(!p.is_null());
                fill(p, 40 << 10, i);
                p
            })
            .collect();
        for round in 0..8u8 {
            // Shrink within the same pages: the tails become spare, still mapped.
            for (i, &p) in objs.iter().enumerate() {
                assert_eq!(heap.realloc(p, long, TRIMMABLE), p);
                assert!(holds(p, TRIMMABLE, i as u8 ^ round));
            }
            heap.trim();
            assert_eq!(
                heap.stats().pages.trimmed_tails,
                0,
                "trim took a spare tail"
            );
            // Out of frames: a page allocation takes the spare tails (all of them, one pass).
            let h = hoard(heap, 1);
            let r = heap.alloc(page);
            assert!(
                !r.is_null(),
                "round {round}: the spare tails were not taken back"
            );
            assert_eq!(heap.stats().pages.trimmed_tails, objs.len());
            fill(r, crate::PAGE_SIZE, 0xee);
            heap.audit_pages();
            give_back(heap, h);
            for (i, &p) in objs.iter().enumerate() {
                assert!(
                    holds(p, TRIMMABLE, i as u8 ^ round),
                    "round {round}: object {i}"
                );
                // Growing back into the tail maps it again.
                assert_eq!(heap.realloc(p, short, 40 << 10), p);
                fill(p, 40 << 10, i as u8 ^ (round + 1));
            }
            assert_eq!(heap.stats().pages.trimmed_tails, 0);
            assert!(holds(r, crate::PAGE_SIZE, 0xee));
            heap.dealloc(r, page);
            heap.audit_mappings();
            assert_eq!(frames_accounted(heap, &[]), total);
        }
        for (i, p) in objs.into_iter().enumerate() {
            assert!(holds(p, 40 << 10, i as u8 ^ 8));
            heap.dealloc(p, long);
        }
    }
    heap.trim();
    heap.audit_pages();
    assert_eq!(heap.stats().pages.in_use, 0);
    assert_eq!(frames_accounted(heap, &[]), total);
}

/// Threads allocating, resizing and freeing large and small objects (patterns checked) while
/// another trims the heap and takes and gives back frames (so that mappings find none and take
/// free pages and spare tails back): no object changes, and the counters add up afterwards.
#[test]
fn trim_and_frame_takers_racing_allocating_threads() {
    let heap = audited_heap(6 * MIB);
    let total = frames_accounted(heap, &[]);
    std::thread::scope(|s| {
        for t in 0..3u64 {
            s.spawn(move || {
                let mut rng = crate::testing::Rng(0x1234_5678 + t);
                let sizes = [24usize, 3000, TRIMMABLE, 40 << 10, 68 << 10, 200 << 10];
                let mut live: Vec<(*mut u8, Layout, u8)> = Vec::new();
                for _ in 0..1500 {
                    // SAFETY: valid layouts; objects resized and freed once with their layouts.
                    unsafe {
                        match rng.below(3) {
                            0 => {
                                let l = lay(sizes[rng.below(sizes.len() as u64) as usize]);
                                let p = heap.alloc(l);
                                if !p.is_null() {
                                    let seed = rng.below(256) as u8;
                                    fill(p, l.size(), seed);
                                    live.push((p, l, seed));
                                }
                            }
                            1 if !live.is_empty() => {
                                let i = rng.below(live.len() as u64) as usize;
                                let (p, l, seed) = live.swap_remove(i);
                                assert!(holds(p, l.size(), seed), "thread {t}: object changed");
                                heap.dealloc(p, l);
                            }
                            _ if !live.is_empty() => {
                                let i = rng.below(live.len() as u64) as usize;
                                let (p, l, seed) = live[i];
                                let new = sizes[rng.below(sizes.len() as u64) as usize];
                                let q = heap.realloc(p, l, new);
                                if q.is_null() {
                                    assert!(holds(p, l.size(), seed));
                                } else {
                                    assert!(holds(q, l.size().min(new), seed), "thread {t}");
                                    fill(q, new, seed);
                                    live[i] = (q, lay(new), seed);
                                }
                            }
                            _ => {}
                        }
                    }
                }
                for (p, l, seed) in live {
                    // SAFETY: live objects of these layouts, freed once.
                    unsafe {
                        assert!(holds(p, l.size(), seed), "thread {t}: object changed");
                        heap.dealloc(p, l);
                    }
                }
                heap.trim();
            });
        }
        s.spawn(|| {
            let mut rng = crate::testing::Rng(99);
            for _ in 0..400 {
                match rng.below(3) {
                    0 => heap.trim(),
                    1 => {
                        let h = hoard(heap, rng.below(8));
                        std::thread::yield_now();
                        give_back(heap, h);
                    }
                    _ => {
                        if let Some(f) =
                            heap.allocate_frames(crate::FrameCount(4), crate::FrameCount(1))
                        {
                            give_back(heap, std::vec![(f, crate::FrameCount(4))]);
                        }
                    }
                }
                heap.audit_mappings();
            }
        });
    });
    heap.trim();
    heap.audit_pages();
    let s = heap.stats();
    assert_eq!(s.pages.trimmed_tails, 0);
    assert_eq!(frames_accounted(heap, &[]), total);
}

/// A small heap with a cache on every CPU (64 KiB of metadata each), whose pages are filled with
/// one small class after another: the span structs and bitmaps of each class need metadata blocks
/// of their own size, which the blocks the classes before freed cannot serve. The metadata region
/// must hold them all: every class fills nearly the whole heap.
#[test]
fn a_small_heap_with_every_cpus_cache_fills_with_class_after_class() {
    let m = HostMachine::new(64 << 20, 256 << 20);
    let heap: &'static Heap<HostPlatform> = crate::host::leak(Heap::new(m.platform));
    heap.init(m.space, m.window, 512 << 10).expect("heap init");
    std::thread::scope(|s| {
        for cpu in 0..crate::platform::MAX_CPUS {
            s.spawn(move || {
                HostPlatform::set_cpu_index(cpu);
                // SAFETY: a valid layout, freed at once.
                unsafe {
                    let p = heap.alloc(lay(16));
                    assert!(!p.is_null(), "CPU {cpu}: no object");
                    heap.dealloc(p, lay(16));
                }
            });
        }
    });
    // SAFETY: valid layouts; every object freed once with its layout.
    unsafe {
        for size in [8usize, 16, 32, 64, 256, 1024, 8] {
            let mut objs = Vec::new();
            loop {
                let p = heap.alloc(lay(size));
                if p.is_null() {
                    break;
                }
                objs.push(p);
            }
            let s = heap.stats().pages;
            assert!(
                objs.len() * size >= 448 << 10,
                "{size} B objects: {} KiB of a 512 KiB heap ({} of {} pages free; metadata {} of {} \
                 KiB mapped)",
                (objs.len() * size) >> 10,
                s.grown - s.in_use,
                s.grown,
                s.meta_in_use >> 10,
                s.meta_mapped >> 10
            );
            for p in objs {
                heap.dealloc(p, lay(size));
            }
            heap.trim();
        }
    }
}

/// Machines of a few dozen to a few hundred frames: the first growth, the first span struct, the
/// first cache and the first page table each may find no frame. Every allocation succeeds or is
/// refused with null, and the counters and mappings stay right.
#[test]
fn tiny_machines_refuse_cleanly_at_every_first_step() {
    for frames in [8usize, 16, 24, 32, 40, 48, 64, 96, 128, 200, 300] {
        let heap = {
            let m = HostMachine::with_usable_memory(frames * 4096, 256 << 20);
            let heap: &'static Heap<HostPlatform> = crate::host::leak(Heap::new(m.platform));
            heap.init(m.space, m.window, 64 << 20).expect("heap init");
            heap
        };
        let total = frames_accounted(heap, &[]);
        let mut live = Vec::new();
        // SAFETY: valid layouts; every object is freed once with its layout.
        unsafe {
            for (i, size) in [8usize, 4000, 36 << 10, 100 << 10, 8, 40 << 10, 300 << 10]
                .into_iter()
                .cycle()
                .take(40)
                .enumerate()
            {
                let p = heap.alloc(lay(size));
                heap.audit_mappings();
                if !p.is_null() {
                    fill(p, size, i as u8);
                    live.push((p, size, i as u8));
                }
                assert_eq!(frames_accounted(heap, &[]), total, "{frames} frames");
            }
            for (p, size, seed) in live {
                assert!(holds(p, size, seed), "{frames} frames: object changed");
                heap.dealloc(p, lay(size));
            }
        }
        heap.trim();
        heap.audit_mappings();
        assert_eq!(heap.stats().pages.in_use, 0);
        assert_eq!(frames_accounted(heap, &[]), total);
    }
}

/// A CPU whose cache cannot be made (no frame for its metadata) is served through the central
/// lists, and asks for the cache again on every slow path: that must not take live objects' spare
/// tail frames each time (the last resort of a mapping that cannot do without its frame), when the
/// objects it allocates need no frame at all.
#[test]
fn a_cpu_without_a_cache_takes_no_spare_tails() {
    let heap = audited_heap(8 * MIB);
    // SAFETY: valid layouts; every object is freed once with its layout; frames taken are given
    // back.
    unsafe {
        let big = heap.alloc(lay(40 << 10));
        assert!(!big.is_null());
        fill(big, TRIMMABLE, 9);
        // Its last page's second frame is spare now, and still mapped.
        assert_eq!(heap.realloc(big, lay(40 << 10), TRIMMABLE), big);
        // A span of 16 B objects with room, so the allocations below need no frame.
        let warm: Vec<_> = (0..10).map(|_| heap.alloc(lay(16))).collect();
        for p in warm {
            heap.dealloc(p, lay(16));
        }
        heap.trim();
        let h = hoard(heap, 2);
        std::thread::scope(|s| {
            s.spawn(|| {
                HostPlatform::set_cpu_index(40);
                for _ in 0..20 {
                    let p = heap.alloc(lay(16));
                    assert!(!p.is_null());
                    heap.dealloc(p, lay(16));
                }
            });
        });
        let s = heap.stats().pages;
        give_back(heap, h);
        assert_eq!(
            s.trimmed_tails, 0,
            "small allocations trimmed a live object's tail"
        );
        heap.audit_mappings();
        assert!(holds(big, TRIMMABLE, 9));
        heap.dealloc(big, lay(TRIMMABLE));
    }
}

/// A realloc that stays in its pages but reaches its trimmed tail needs one frame; with none free
/// but free pages the heap keeps mapped, it gives those back and maps the tail, as every other
/// mapping does, instead of failing (its fallback, a move, needs a whole new object's frames).
#[test]
fn a_realloc_into_a_trimmed_tail_takes_the_free_pages_back() {
    let heap = audited_heap(8 * MIB);
    // SAFETY: valid layouts; every object is resized and freed once with its layout; frames taken
    // are given back.
    unsafe {
        // The heap's first pages mapped and given back, so that the next object's last page is
        // mapped for it: trimmed.
        let small = heap.alloc(lay(8));
        heap.trim();
        let t = heap.alloc(lay(TRIMMABLE));
        assert!(!t.is_null());
        assert_eq!(heap.stats().pages.trimmed_tails, 1);
        fill(t, TRIMMABLE, 5);
        // One free page, mapped: a six-page object shrunk in place to five.
        let b = heap.alloc(lay(48 << 10));
        assert_eq!(heap.realloc(b, lay(48 << 10), 40 << 10), b);
        assert_eq!(heap.stats().pages.dirty_free, 1);
        let h = hoard(heap, 0);
        let q = heap.realloc(t, lay(TRIMMABLE), 40 << 10);
        let s = heap.stats().pages;
        give_back(heap, h);
        assert_eq!(
            q, t,
            "a realloc into the trimmed tail failed with a free page to give back"
        );
        assert_eq!(s.trimmed_tails, 0);
        assert!(holds(q, TRIMMABLE, 5));
        fill(q, 40 << 10, 6);
        heap.audit_mappings();
        heap.dealloc(q, lay(40 << 10));
        heap.dealloc(b, lay(40 << 10));
        heap.dealloc(small, lay(8));
    }
}

/// The same for a realloc growing in place over scavenged pages: with no frame free, it gives the
/// free pages back and maps the new ones (a move would need a whole new object's frames).
#[test]
fn a_growth_in_place_takes_the_free_pages_back() {
    let heap = audited_heap(8 * MIB);
    // SAFETY: valid layouts; every object is resized and freed once with its layout; frames taken
    // are given back.
    unsafe {
        let small = heap.alloc(lay(8));
        heap.trim();
        // One free page, mapped (a six-page object shrunk in place to five), then the object to grow,
        // with scavenged pages after it.
        let b = heap.alloc(lay(48 << 10));
        let c = heap.alloc(lay(40 << 10));
        assert_eq!(heap.realloc(b, lay(48 << 10), 40 << 10), b);
        let a = heap.alloc(lay(40 << 10));
        assert!(a as usize > c as usize, "the object went into the hole");
        fill(a, 40 << 10, 7);
        assert_eq!(heap.stats().pages.dirty_free, 1);
        let h = hoard(heap, 0);
        let q = heap.realloc(a, lay(40 << 10), 48 << 10);
        give_back(heap, h);
        assert_eq!(
            q, a,
            "a growth in place failed with a free page to give back"
        );
        assert!(holds(q, 40 << 10, 7));
        fill(q, 48 << 10, 8);
        heap.audit_mappings();
        heap.dealloc(q, lay(48 << 10));
        heap.dealloc(b, lay(40 << 10));
        heap.dealloc(c, lay(40 << 10));
        heap.dealloc(small, lay(8));
    }
}
