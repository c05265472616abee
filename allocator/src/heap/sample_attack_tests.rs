//! Attacks on heap sampling: the guard pool's edges, extreme settings, sampled and guarded objects
//! freed or reallocated wrongly, and sampling used from several threads at once.

use core::alloc::{GlobalAlloc, Layout};
use std::vec::Vec;

use crate::host::{HostMachine, HostPlatform};
use crate::platform::Sampled;
use crate::profile::guard;
use crate::profile::{GuardSide, Sampling};
use crate::{Heap, VirtAddr};

type SHeap = Heap<Sampled<HostPlatform>, false>;

fn sampled_heap() -> &'static SHeap {
    let m = HostMachine::new(128 << 20, 1 << 30);
    let platform: &'static Sampled<HostPlatform> = crate::host::leak(Sampled(m.platform));
    let heap: &'static SHeap = crate::host::leak(Heap::new(platform));
    heap.init(m.space.sampled(platform), m.window, 512 << 20)
        .expect("heap init");
    heap
}

fn lay(size: usize, align: usize) -> Layout {
    Layout::from_size_align(size, align).unwrap()
}

/// The message of the panic `f` must raise.
fn refused(f: impl FnOnce()) -> std::string::String {
    let err =
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).expect_err("expected a refusal");
    err.downcast_ref::<std::string::String>()
        .cloned()
        .unwrap_or_default()
}

fn guard_all(side: GuardSide) -> Sampling {
    Sampling {
        profile_rate: 1,
        guard_interval: 1,
        guard_side: side,
    }
}

/// `guard_report` is for page-fault handlers: any address of the pool gets a report or `None`, never a
/// panic. The pool's last page is a guard page above the last slot's guard page, with no slot next to it.
#[test]
fn guard_report_answers_for_every_page_of_the_pool() {
    let heap = sampled_heap();
    heap.set_sampling(guard_all(GuardSide::Right)).unwrap();
    let l = lay(24, 8);
    // SAFETY: freed once with its layout.
    unsafe {
        let p = heap.alloc(l);
        assert!(heap.is_guarded(p));
        // The first object takes slot 0, whose page is the pool's second.
        let base = (p as u64 & !(guard::PAGE - 1)) - guard::PAGE;
        for page in 0..guard::POOL_BYTES / guard::PAGE {
            for off in [0, 8, guard::PAGE - 1] {
                let a = base + page * guard::PAGE + off;
                let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    heap.guard_report(VirtAddr::new(a))
                }));
                assert!(
                    r.is_ok(),
                    "guard_report({a:#x}) (pool page {page}) panicked"
                );
            }
        }
        let last = base + guard::POOL_BYTES - 8;
        let r = heap
            .guard_report(VirtAddr::new(last))
            .expect("a pool address");
        assert_eq!(r.kind, guard::ErrorKind::Wild);
        assert!(heap
            .guard_report(VirtAddr::new(base + guard::POOL_BYTES))
            .is_none());
        heap.dealloc(p, l);
    }
}

/// The largest settings mean "almost never", not "always": an interval that does not fit the countdown
/// is the longest one it holds.
#[test]
fn the_largest_rates_sample_almost_nothing() {
    let heap = sampled_heap();
    let l = lay(64, 8);
    let big = lay(64 << 10, 8);
    for (profile_rate, guard_interval) in
        [(0, usize::MAX), (usize::MAX, 0), (usize::MAX, usize::MAX)]
    {
        heap.set_sampling(Sampling {
            profile_rate,
            guard_interval,
            guard_side: GuardSide::Right,
        })
        .unwrap();
        // SAFETY: each object freed once with its layout.
        unsafe {
            let ps: Vec<*mut u8> = (0..200).map(|_| heap.alloc(l)).collect();
            let bs: Vec<*mut u8> = (0..20).map(|_| heap.alloc(big)).collect();
            assert!(ps.iter().chain(&bs).all(|p| !p.is_null()));
            let st = heap.sampling_stats();
            assert_eq!(
                (st.guarded, st.live_samples),
                (0, 0),
                "rate {profile_rate:#x}, interval {guard_interval:#x} sampled: {st:?}"
            );
            for p in ps {
                heap.dealloc(p, l);
            }
            for p in bs {
                heap.dealloc(p, big);
            }
        }
    }
}

/// A realloc of a guarded object whose canary is damaged is refused before anything changes: no new
/// block is allocated (and lost) before the refusal.
#[test]
fn a_realloc_of_a_guarded_object_with_a_damaged_canary_changes_nothing() {
    let heap = sampled_heap();
    heap.set_sampling(guard_all(GuardSide::Left)).unwrap();
    let l = lay(24, 8);
    // SAFETY: the write past the object lands in its mapped page's canary (deliberately); the refused
    // realloc changes nothing, and the object is freed once the canary is mended.
    unsafe {
        let q = heap.alloc(l);
        assert!(heap.is_guarded(q));
        q.add(24).write(0);
        let before = heap.stats();
        let st = heap.sampling_stats();
        let msg = refused(|| {
            heap.realloc(q, l, 64 << 10);
        });
        assert!(msg.contains("canary damaged"), "{msg}");
        let after = heap.stats();
        assert_eq!(
            (after.large_objects, after.large_bytes),
            (before.large_objects, before.large_bytes),
            "the refused realloc left a new block behind"
        );
        assert_eq!(heap.sampling_stats().live_samples, st.live_samples);
        assert!(heap.is_guarded(q));
        q.add(24).write(guard::canary(q as u64 + 24));
        heap.dealloc(q, l);
        assert_eq!(heap.sampling_stats().live_samples, 0);
    }
}
/// A guarded object freed or reallocated with a layout of another size class (the same size, another
/// alignment) is refused, as for any small object.
#[test]
fn a_guarded_object_with_another_alignment_is_refused() {
    let heap = sampled_heap();
    heap.set_sampling(guard_all(GuardSide::Right)).unwrap();
    let l = lay(24, 8);
    let other = lay(24, 1024);
    assert_ne!(
        crate::sizeclass::SizeClass::for_layout(24, 8),
        crate::sizeclass::SizeClass::for_layout(24, 1024)
    );
    // SAFETY: the bad calls are refused before anything changes; the object is then freed properly.
    unsafe {
        let plain = {
            heap.set_sampling(Sampling::OFF).unwrap();
            let p = heap.alloc(l);
            heap.set_sampling(guard_all(GuardSide::Right)).unwrap();
            p
        };
        assert!(!heap.is_guarded(plain));
        let msg = refused(|| heap.dealloc(plain, other));
        assert!(msg.contains("size class differs"), "plain object: {msg}");
        heap.dealloc(plain, l);
        let p = heap.alloc(l);
        assert!(heap.is_guarded(p));
        let msg = refused(|| {
            heap.realloc(p, other, 100);
        });
        assert!(msg.contains("bad realloc"), "{msg}");
        let msg = refused(|| heap.dealloc(p, other));
        assert!(msg.contains("bad dealloc"), "{msg}");
        assert!(heap.is_guarded(p), "a refused free changes nothing");
        heap.dealloc(p, l);
    }
}

/// Two threads recycle the pool's last free slots (so that each reuses the address the other just
/// freed) while a third reads the profile: a guarded object's profile record must be gone before its
/// slot (and so its address) can be handed out again, or the new object's record finds the old one
/// still there (a debug assertion: "recorded twice").
#[test]
fn guarded_addresses_recycled_across_threads_are_recorded_once() {
    let heap = sampled_heap();
    heap.set_sampling(guard_all(GuardSide::Right)).unwrap();
    // Many buckets (one per large size), so that a profile holds the tables' lock a while.
    // SAFETY: each object freed once with its layout.
    unsafe {
        for i in 0..600 {
            let l = lay((40 << 10) + 8 * i, 8);
            let p = heap.alloc(l);
            assert!(!p.is_null());
            heap.dealloc(p, l);
        }
    }
    let l = lay(24, 8);
    // SAFETY: as above.
    let held: Vec<usize> = unsafe {
        (0..guard::SLOTS - 2)
            .map(|_| {
                let p = heap.alloc(l);
                assert!(heap.is_guarded(p));
                p as usize
            })
            .collect()
    };
    let stop = std::sync::atomic::AtomicBool::new(false);
    std::thread::scope(|s| {
        s.spawn(|| {
            let mut buf = std::vec![0u8; 1 << 20];
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let _ = heap.write_heap_profile(None, &mut buf);
                // A pause (spinning, to stay on the CPU): a spin lock is not fair, and without one
                // this thread could keep the tables from the workers for good.
                let t = std::time::Instant::now();
                while t.elapsed() < std::time::Duration::from_micros(20) {
                    core::hint::spin_loop();
                }
            }
        });
        let workers: Vec<_> = (0..2)
            .map(|t| {
                s.spawn(move || {
                    for i in 0..2000u32 {
                        // SAFETY: each object freed once with its layout, written inside.
                        unsafe {
                            let p = heap.alloc(l);
                            assert!(!p.is_null());
                            p.write_bytes((i as u8) ^ t, 24);
                            assert!(std::slice::from_raw_parts(p, 24)
                                .iter()
                                .all(|&b| b == (i as u8) ^ t));
                            heap.dealloc(p, l);
                        }
                    }
                })
            })
            .collect();
        let results: Vec<_> = workers.into_iter().map(|w| w.join()).collect();
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        assert!(results.iter().all(|r| r.is_ok()), "a worker panicked");
    });
    // SAFETY: as above.
    unsafe {
        for p in held {
            heap.dealloc(p as *mut u8, l);
        }
    }
    let st = heap.sampling_stats();
    assert_eq!(st.live_samples, 0, "{st:?}");
}

/// Switching guard pages on when memory is short fails cleanly: a refused `set_sampling` holds no page
/// more than before it, however close to enough memory there was (here the free pages grow by a
/// large object's worth between attempts, through every count the pool and its bookkeeping need).
#[test]
fn a_guard_pool_that_does_not_fit_takes_nothing() {
    let m = HostMachine::new(64 << 20, 1 << 30);
    let platform: &'static Sampled<HostPlatform> = crate::host::leak(Sampled(m.platform));
    let heap: &'static SHeap = crate::host::leak(Heap::new(platform));
    heap.init(m.space.sampled(platform), m.window, 16 << 20)
        .expect("heap init");
    let l = lay(40 << 10, 8);
    // SAFETY: each object freed once with its layout.
    unsafe {
        let mut held = Vec::new();
        loop {
            let p = heap.alloc(l);
            if p.is_null() {
                break;
            }
            held.push(p as usize);
        }
        held.sort_unstable();
        let on = Sampling {
            guard_interval: 1,
            ..Sampling::OFF
        };
        let mut failed = 0;
        let mut held = held.into_iter();
        for p in held.by_ref() {
            heap.dealloc(p as *mut u8, l);
            let before = heap.stats().pages.in_use;
            match heap.set_sampling(on) {
                Ok(()) => break,
                Err(e) => {
                    assert_eq!(e, crate::heap::SamplingError::OutOfMemory);
                    failed += 1;
                    assert_eq!(
                        heap.stats().pages.in_use,
                        before,
                        "a refused set_sampling kept pages (attempt {failed})"
                    );
                }
            }
        }
        assert!(failed > 10, "memory was never short: {failed}");
        for p in held {
            heap.dealloc(p as *mut u8, l);
        }
        assert_eq!(heap.sampling().guard_interval, 1, "switched on in the end");
        let g = heap.alloc(lay(24, 8));
        assert!(heap.is_guarded(g));
        heap.dealloc(g, lay(24, 8));
    }
}

/// Per object size: [alloc_objects, alloc_space, inuse_objects, inuse_space] summed over stacks.
fn by_size(heap: &SHeap) -> std::collections::BTreeMap<i64, [i64; 4]> {
    let need = heap.write_heap_profile(None, &mut []).unwrap_err();
    let mut buf = std::vec![0u8; need];
    let n = heap.write_heap_profile(None, &mut buf).expect("fits");
    let mut m = std::collections::BTreeMap::new();
    for s in crate::profile::decode::decode(&buf[..n]).samples {
        let e = m.entry(s.bytes.expect("bytes label")).or_insert([0; 4]);
        for (t, v) in e.iter_mut().zip(&s.values) {
            *t += v;
        }
    }
    m
}

/// Samples are scaled by the rate they were taken at: a later change of the rate (or profiling
/// switched off) must not rescale what is already in the profile.
#[test]
fn a_rate_change_does_not_rescale_earlier_samples() {
    let heap = sampled_heap();
    let at_rate_1 = Sampling {
        profile_rate: 1,
        ..Sampling::OFF
    };
    heap.set_sampling(at_rate_1).unwrap();
    let l = lay(48, 8);
    // SAFETY: each object freed once with its layout.
    unsafe {
        let ps: Vec<*mut u8> = (0..100).map(|_| heap.alloc(l)).collect();
        assert_eq!(by_size(heap)[&48], [100, 4800, 100, 4800]);
        for rate in [crate::profile::DEFAULT_PROFILE_RATE, 0, 1] {
            heap.set_sampling(Sampling {
                profile_rate: rate,
                ..Sampling::OFF
            })
            .unwrap();
            assert_eq!(
                by_size(heap)[&48],
                [100, 4800, 100, 4800],
                "after a change to rate {rate}"
            );
        }
        for p in ps {
            heap.dealloc(p, l);
        }
        assert_eq!(by_size(heap)[&48], [100, 4800, 0, 0]);
    }
}

/// Profiled small objects (each in a span of its own) count in `Heap::stats` as the objects in a span
/// of their own they are: live objects and bytes add up with the profile on, and come back to where
/// they were once freed.
#[test]
fn stats_count_profiled_small_objects() {
    let heap = sampled_heap();
    heap.set_sampling(Sampling {
        profile_rate: 1,
        ..Sampling::OFF
    })
    .unwrap();
    let l = lay(48, 8);
    let before = heap.stats();
    // SAFETY: each object freed once with its layout.
    unsafe {
        let ps: Vec<*mut u8> = (0..100).map(|_| heap.alloc(l)).collect();
        assert_eq!(heap.sampling_stats().live_samples, 100);
        let s = heap.stats();
        assert_eq!(s.objects() - before.objects(), 100, "100 live objects: {s}");
        assert_eq!(
            s.large_bytes - before.large_bytes,
            100 * crate::addr::PAGE_SIZE
        );
        for p in ps {
            heap.dealloc(p, l);
        }
    }
    let s = heap.stats();
    assert_eq!(
        (s.objects(), s.large_bytes),
        (before.objects(), before.large_bytes)
    );
}
