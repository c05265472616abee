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

fn lay(size: usize) -> Layout {
    Layout::from_size_align(size, 8).unwrap()
}

fn held(heap: &Heap<HostPlatform>) -> u64 {
    heap.stats().frames_held.0
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
