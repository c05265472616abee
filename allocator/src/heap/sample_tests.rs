//! Host tests of sampling in the heap: the heap profile against a known workload (decoded from the pprof
//! bytes the heap writes), sampled objects' frees and reallocs, and guard pages (reports, canary, bad
//! frees). Guarded pages are really unmapped on the host too (PROT_NONE), but these tests only ask the
//! heap about addresses; the faults themselves are the kernel tests' (kernel/src/tests/guard.rs).

use core::alloc::{GlobalAlloc, Layout};
use std::boxed::Box;
use std::collections::BTreeMap;
use std::vec;
use std::vec::Vec;

use crate::heap::SamplingError;
use crate::host::{HostMachine, HostPlatform};
use crate::platform::Sampled;
use crate::profile::decode::decode;
use crate::profile::guard::ErrorKind;
use crate::profile::{GuardSide, Sampling};
use crate::{Heap, VirtAddr};

pub(super) type SHeap = Heap<Sampled<HostPlatform>, false>;

pub(super) fn sampled_heap() -> &'static SHeap {
    let m = HostMachine::new(128 << 20, 1 << 30);
    let platform: &'static Sampled<HostPlatform> = crate::host::leak(Sampled(m.platform));
    let heap: &'static SHeap = crate::host::leak(Heap::new(platform));
    heap.init(m.space.sampled(platform), m.window, 512 << 20)
        .expect("heap init");
    heap
}

/// The message of the panic `f` must raise.
pub(super) fn refused(f: impl FnOnce()) -> std::string::String {
    let err =
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).expect_err("expected a refusal");
    err.downcast_ref::<std::string::String>()
        .cloned()
        .unwrap_or_default()
}

fn profile_of(heap: &SHeap) -> crate::profile::decode::Profile {
    let need = heap.write_heap_profile(None, &mut []).unwrap_err();
    let mut buf = vec![0u8; need];
    let n = heap.write_heap_profile(None, &mut buf).expect("fits");
    decode(&buf[..n])
}

/// Per object size: [alloc_objects, alloc_space, inuse_objects, inuse_space] summed over stacks.
fn by_size(p: &crate::profile::decode::Profile) -> BTreeMap<i64, [i64; 4]> {
    let mut m = BTreeMap::new();
    for s in &p.samples {
        let e = m.entry(s.bytes.expect("bytes label")).or_insert([0; 4]);
        for (t, v) in e.iter_mut().zip(&s.values) {
            *t += v;
        }
    }
    m
}

#[test]
fn sampling_needs_a_platform_that_compiles_it_in() {
    let m = HostMachine::new(16 << 20, 1 << 30);
    let heap: &'static Heap<HostPlatform> = crate::host::leak(Heap::new(m.platform));
    heap.init(m.space, m.window, 64 << 20).unwrap();
    assert_eq!(
        heap.set_sampling(Sampling::DEFAULT),
        Err(SamplingError::NotCompiledIn)
    );
}

#[test]
fn profile_at_rate_1_counts_a_known_workload_exactly() {
    let heap = sampled_heap();
    heap.set_sampling(Sampling {
        profile_rate: 1,
        ..Sampling::OFF
    })
    .unwrap();
    let l48 = Layout::from_size_align(48, 8).unwrap();
    let l16 = Layout::from_size_align(16, 8).unwrap();
    let big = Layout::from_size_align(100_000, 8).unwrap();
    // SAFETY: every pointer is freed once with its own layout; the bytes written are inside the objects.
    unsafe {
        let kept: Vec<*mut u8> = (0..100).map(|_| heap.alloc(l48)).collect();
        for (i, &p) in kept.iter().enumerate() {
            assert!(!p.is_null());
            p.write_bytes(i as u8, 48);
        }
        let large: Vec<*mut u8> = (0..50).map(|_| heap.alloc(big)).collect();
        for &p in &large[..20] {
            heap.dealloc(p, big);
        }
        for _ in 0..200 {
            let p = heap.alloc(l16);
            assert!(!p.is_null());
            heap.dealloc(p, l16);
        }
        for (i, &p) in kept.iter().enumerate() {
            assert!(
                std::slice::from_raw_parts(p, 48)
                    .iter()
                    .all(|&b| b == i as u8),
                "object {i} changed"
            );
        }
        let p = profile_of(heap);
        assert_eq!(p.period, 1);
        let m = by_size(&p);
        assert_eq!(m[&48], [100, 4800, 100, 4800]);
        assert_eq!(m[&100_000], [50, 5_000_000, 30, 3_000_000]);
        assert_eq!(m[&16], [200, 3200, 0, 0]);
        assert_eq!(m.len(), 3, "no other sizes: {m:?}");
        let st = heap.sampling_stats();
        assert_eq!((st.live_samples, st.dropped), (130, 0));
        for &p in &kept {
            heap.dealloc(p, l48);
        }
        for &p in &large[20..] {
            heap.dealloc(p, big);
        }
    }
    assert_eq!(heap.sampling_stats().live_samples, 0);
    let m = by_size(&profile_of(heap));
    assert_eq!(m[&48][2..], [0, 0]);
    let s = heap.stats();
    assert_eq!(s.large_objects, 0);
    assert!(
        s.classes.iter().all(|c| c.objects == 0),
        "no small objects left"
    );
}

#[test]
fn profile_at_the_default_rate_estimates_the_live_heap() {
    let heap = sampled_heap();
    heap.set_sampling(Sampling {
        profile_rate: crate::profile::DEFAULT_PROFILE_RATE,
        ..Sampling::OFF
    })
    .unwrap();
    let l = Layout::from_size_align(1024, 8).unwrap();
    let n = 96 << 10; // 96 MiB in 1 KiB objects: ~192 samples expected
                      // SAFETY: each pointer freed once with its layout.
    unsafe {
        let kept: Vec<*mut u8> = (0..n).map(|_| heap.alloc(l)).collect();
        assert!(kept.iter().all(|p| !p.is_null()));
        let m = by_size(&profile_of(heap));
        let [ao, ab, io, ib] = m[&1024];
        // ~192 Poisson samples: the estimate is within 30% (over 4 standard deviations).
        for (what, est, truth) in [("objects", io, n as i64), ("bytes", ib, (n * 1024) as i64)] {
            let ratio = est as f64 / truth as f64;
            assert!(
                (0.7..1.3).contains(&ratio),
                "in-use {what}: estimated {est}, true {truth}"
            );
        }
        assert_eq!((ao, ab), (io, ib), "nothing freed yet");
        for &p in &kept {
            heap.dealloc(p, l);
        }
    }
    let m = by_size(&profile_of(heap));
    assert_eq!(m[&1024][2..], [0, 0], "all freed");
}

#[test]
fn sampled_objects_realloc_and_refuse_bad_frees() {
    let heap = sampled_heap();
    heap.set_sampling(Sampling {
        profile_rate: 1,
        ..Sampling::OFF
    })
    .unwrap();
    let l = Layout::from_size_align(40, 8).unwrap();
    // SAFETY: the frees below are deliberate bad frees, which the heap must refuse without changing
    // anything; the rest is ordinary use.
    unsafe {
        let p = heap.alloc(l);
        p.write_bytes(7, 40);
        let q = heap.realloc(p, l, 200);
        assert!(std::slice::from_raw_parts(q, 40).iter().all(|&b| b == 7));
        let l200 = Layout::from_size_align(200, 8).unwrap();
        // Wrong class for the sampled object: refused.
        let msg = refused(|| heap.dealloc(q, l));
        assert!(msg.contains("size class differs"), "{msg}");
        // A large layout for it: refused too.
        let big = Layout::from_size_align(8192, 16384).unwrap();
        let msg = refused(|| heap.dealloc(q, big));
        assert!(msg.contains("a small object of 208 B"), "{msg}");
        heap.dealloc(q, l200);
        let msg = refused(|| heap.dealloc(q, l200));
        assert!(msg.contains("not a live heap object"), "{msg}");
        // The largest small class (32 KiB) fits its span too, every byte of it.
        let l32k = Layout::from_size_align(32 << 10, 8).unwrap();
        let big_small = heap.alloc(l32k);
        big_small.write_bytes(3, 32 << 10);
        assert!(std::slice::from_raw_parts(big_small, 32 << 10)
            .iter()
            .all(|&b| b == 3));
        heap.dealloc(big_small, l32k);
        let m = by_size(&profile_of(heap));
        assert_eq!(m[&(32 << 10)], [1, 32 << 10, 0, 0]);
        // Small objects are profiled with their size class's size (40 B: 48; 200 B: 208).
        assert_eq!(m[&48], [1, 48, 0, 0]);
        assert_eq!(m[&208], [1, 208, 0, 0]);
    }
}

#[test]
fn a_guarded_object_freed_with_a_large_layout_is_named_as_such() {
    let heap = sampled_heap();
    heap.set_sampling(Sampling {
        profile_rate: 1,
        guard_interval: 1,
        guard_side: GuardSide::Right,
    })
    .unwrap();
    let l = Layout::from_size_align(24, 8).unwrap();
    // SAFETY: the large-layout free and realloc are deliberate bad calls, refused before anything
    // changes; the object is then freed with its own layout.
    unsafe {
        let p = heap.alloc(l);
        assert!(heap.is_guarded(p));
        let big = Layout::from_size_align(40 << 10, 8).unwrap();
        // The guard pool lies outside the span map: without the pool's word this read "not a live heap
        // object", which it is.
        let msg = refused(|| heap.dealloc(p, big));
        assert!(msg.contains("a small object of 24 B"), "{msg}");
        let msg = refused(|| {
            heap.realloc(p, big, 50 << 10);
        });
        assert!(msg.contains("a small object of 24 B"), "{msg}");
        assert!(heap.is_guarded(p), "a refused free changes nothing");
        heap.dealloc(p, l);
        assert!(!heap.is_guarded(p));
    }
}

#[test]
fn guarded_objects_report_overflow_use_after_free_and_canary_damage() {
    let heap = sampled_heap();
    heap.set_sampling(Sampling {
        profile_rate: 1,
        guard_interval: 1,
        guard_side: GuardSide::Right,
    })
    .unwrap();
    let l = Layout::from_size_align(24, 8).unwrap();
    // SAFETY: writes stay inside the objects (or, deliberately, inside the canary of a mapped guarded
    // page); the bad frees are refused before anything changes.
    unsafe {
        let p = heap.alloc(l);
        assert!(
            heap.is_guarded(p),
            "interval 1: every small allocation is guarded"
        );
        p.write_bytes(0x5a, 24);
        let end = VirtAddr::from_ptr(p) + 24u64;
        let r = heap
            .guard_report(end)
            .expect("one past the end is a guard page");
        assert_eq!(
            r.kind,
            ErrorKind::OutOfBounds {
                after: true,
                distance: 1
            }
        );
        assert_eq!((r.object, r.size), (p as u64, 24));
        assert!(
            heap.guard_report(VirtAddr::from_ptr(p)).is_none(),
            "the object itself is fine"
        );
        heap.dealloc(p, l);
        let r = heap
            .guard_report(VirtAddr::from_ptr(p) + 5u64)
            .expect("freed");
        assert_eq!(r.kind, ErrorKind::UseAfterFree);
        let msg = refused(|| heap.dealloc(p, l));
        assert!(msg.contains("double free of the guarded object"), "{msg}");

        // Left side: the canary sits after the object; a write there is found at free.
        heap.set_sampling(Sampling {
            profile_rate: 1,
            guard_interval: 1,
            guard_side: GuardSide::Left,
        })
        .unwrap();
        let q = heap.alloc(l);
        assert!(heap.is_guarded(q));
        assert_eq!(q as u64 % 4096, 0, "left side: the object starts its page");
        q.add(24).write(0);
        let msg = refused(|| heap.dealloc(q, l));
        assert!(
            msg.contains("canary damaged") && msg.contains("1 B after"),
            "{msg}"
        );
        // The refused free changed nothing: mend the canary and free it properly.
        q.add(24)
            .write(crate::profile::guard::canary(q as u64 + 24));
        heap.dealloc(q, l);
        let st = heap.sampling_stats();
        assert_eq!((st.guarded, st.live_samples), (2, 0));
        // Large objects are never guarded, but still profiled.
        let big = Layout::from_size_align(64 << 10, 8).unwrap();
        let b = heap.alloc(big);
        assert!(!heap.is_guarded(b));
        heap.dealloc(b, big);
        let m = by_size(&profile_of(heap));
        assert_eq!(m[&24], [2, 48, 0, 0]);
        assert_eq!(m[&(64 << 10)], [1, 64 << 10, 0, 0]);
    }
}

#[test]
fn the_pool_recycles_quarantine_and_a_mixed_workload_is_intact() {
    let heap = sampled_heap();
    heap.set_sampling(Sampling {
        profile_rate: 4096,
        guard_interval: 2048,
        guard_side: GuardSide::Right,
    })
    .unwrap();
    let frames_before = heap.stats().frames_held;
    let mut rng = crate::profile::Rng::new(99);
    let mut live: Vec<(*mut u8, Layout, u8)> = Vec::new();
    // SAFETY: each pointer freed once with its layout; contents written and checked inside objects.
    unsafe {
        for step in 0..60_000u32 {
            let r = rng.next_u64();
            if live.len() < 2000 && r % 3 != 0 || live.is_empty() {
                let size = match r % 7 {
                    0 => 40_000 + (r >> 8) as usize % 100_000,
                    _ => 1 + (r >> 8) as usize % 2000,
                };
                let l = Layout::from_size_align(size, 8).unwrap();
                let p = heap.alloc(l);
                assert!(!p.is_null());
                p.write_bytes(step as u8, size);
                live.push((p, l, step as u8));
            } else {
                let i = (r >> 16) as usize % live.len();
                let (p, l, v) = live.swap_remove(i);
                assert!(
                    std::slice::from_raw_parts(p, l.size())
                        .iter()
                        .all(|&b| b == v),
                    "object {p:?} ({} B) changed",
                    l.size()
                );
                heap.dealloc(p, l);
            }
        }
        for (p, l, _) in live.drain(..) {
            heap.dealloc(p, l);
        }
    }
    let st = heap.sampling_stats();
    assert!(st.guarded > 300, "the pool was recycled: {st:?}");
    assert_eq!(st.live_samples, 0);
    let s = heap.stats();
    assert!(s.classes.iter().all(|c| c.objects == 0) && s.large_objects == 0);
    heap.trim();
    // Guarded pages went back unmapped; the tables and pool bookkeeping stay.
    assert!(
        heap.stats().frames_held.0 <= frames_before.0 + 64,
        "{:?} -> {:?}",
        frames_before,
        heap.stats().frames_held
    );
}

#[test]
fn a_region_heap_profiles_but_has_no_guard_pages() {
    use core::mem::MaybeUninit;
    let platform: &'static Sampled<HostPlatform> =
        crate::host::leak(Sampled(crate::host::leak(HostPlatform::new(4096))));
    let heap: &'static SHeap = crate::host::leak(Heap::new(platform));
    let region: &'static mut [MaybeUninit<u8>] =
        Box::leak(vec![MaybeUninit::new(0u8); 8 << 20].into_boxed_slice());
    heap.init_region_from_slice(region).expect("init_region");
    assert_eq!(
        heap.set_sampling(Sampling {
            guard_interval: 1,
            ..Sampling::OFF
        }),
        Err(SamplingError::NoAddressSpace)
    );
    heap.set_sampling(Sampling {
        profile_rate: 1,
        ..Sampling::OFF
    })
    .expect("the profile needs no mapping");
    let l = Layout::from_size_align(100, 8).unwrap();
    // SAFETY: each pointer freed once with its layout.
    unsafe {
        let ps: Vec<*mut u8> = (0..10).map(|_| heap.alloc(l)).collect();
        for &p in &ps {
            assert!(!p.is_null());
            p.write_bytes(9, 100);
        }
        for &p in &ps[..4] {
            heap.dealloc(p, l);
        }
        let m = by_size(&profile_of(heap));
        assert_eq!(m[&112], [10, 1120, 6, 672]);
        for &p in &ps[4..] {
            heap.dealloc(p, l);
        }
    }
}

/// A refused free of a guarded object (a double free, a wrong size, a damaged canary) panics only once
/// the guard pool's lock is released: a panic path that allocates may be handed a guarded slot (here
/// every small allocation is guarded), and must not spin on that lock for good. Run in a child process
/// (a global panic hook), with a time limit.
#[test]
#[ignore = "run by refused_guarded_frees_release_the_pool_lock_before_panicking in a child process"]
fn child_refused_guarded_free_with_an_allocating_panic_hook() {
    use super::soundness_tests::CHILD_ENV;
    // Only as `run_child`'s child: its global panic hook must not outlive it in a test run.
    if std::env::var_os(CHILD_ENV).is_none() {
        return;
    }
    static HEAP: std::sync::OnceLock<&'static SHeap> = std::sync::OnceLock::new();
    let heap = *HEAP.get_or_init(sampled_heap);
    heap.set_sampling(Sampling {
        profile_rate: 1,
        guard_interval: 1,
        guard_side: GuardSide::Left,
    })
    .unwrap();
    let l = Layout::from_size_align(24, 8).unwrap();
    std::panic::set_hook(Box::new(move |_| {
        let h = HEAP.get().unwrap();
        // SAFETY: a valid layout; the object is freed at once.
        unsafe {
            let p = h.alloc(l);
            assert!(h.is_guarded(p), "the hook's allocation was not guarded");
            h.dealloc(p, l);
        }
        std::eprintln!("CHILD: the hook allocated a guarded object");
    }));
    // SAFETY: test code; each refused free changes nothing, and the object is then freed properly.
    unsafe {
        let p = heap.alloc(l);
        assert!(heap.is_guarded(p));
        let wrong = Layout::from_size_align(16, 8).unwrap();
        assert!(
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| heap.dealloc(p, wrong)))
                .is_err()
        );
        heap.dealloc(p, l);
        assert!(
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| heap.dealloc(p, l))).is_err()
        );
    }
    std::eprintln!("CHILD: done");
}

#[test]
fn refused_guarded_frees_release_the_pool_lock_before_panicking() {
    let err = super::soundness_tests::run_child(
        "heap::sample_tests::child_refused_guarded_free_with_an_allocating_panic_hook",
    );
    assert_eq!(
        err.matches("CHILD: the hook allocated a guarded object")
            .count(),
        2,
        "{err}"
    );
    assert!(err.contains("CHILD: done"), "{err}");
}
