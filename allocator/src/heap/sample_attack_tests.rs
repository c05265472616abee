//! Attacks on heap sampling: the guard pool's edges, extreme settings, sampled and guarded objects
//! freed or reallocated wrongly, and sampling used from several threads at once.

use core::alloc::{GlobalAlloc, Layout};
use std::vec::Vec;

use crate::host::{HostMachine, HostPlatform};
use crate::platform::Sampled;
use crate::profile::guard;
use crate::profile::{GuardSide, Sampling};
use crate::{Heap, VirtAddr};

// The sampled host heap and the refusal catcher of the sampling tests.
use super::sample_tests::{refused, sampled_heap, SHeap};

fn lay(size: usize, align: usize) -> Layout {
    Layout::from_size_align(size, align).unwrap()
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

/// A mixed workload of one thread: allocations of every kind (small, large, zero-sized, aligned up to
/// 16 KiB), reallocs across kinds and frees, each object's contents checked before it goes. Returns
/// once `rounds` operations are done; everything it allocated is freed.
fn churn<const F: bool>(heap: &Heap<Sampled<HostPlatform>, F>, seed: u64, rounds: u32) {
    let mut rng = crate::testing::Rng(seed | 1);
    let mut live: Vec<(usize, Layout, u8)> = Vec::new();
    let check = |p: usize, l: Layout, v: u8| {
        // SAFETY: `p` is a live object of `l`, written with `v` in full.
        let bytes = unsafe { std::slice::from_raw_parts(p as *const u8, l.size()) };
        assert!(
            bytes.iter().all(|&b| b == v),
            "object {p:#x} ({l:?}) changed"
        );
    };
    for step in 0..rounds {
        let v = step as u8;
        let r = rng.next();
        // SAFETY: every object is freed or reallocated once with its layout; writes stay inside.
        unsafe {
            if live.len() < 64 && r % 3 != 0 || live.is_empty() {
                let size = match r % 8 {
                    0 => 40_000 + (r >> 8) as usize % 60_000,
                    1 => 0,
                    _ => 1 + (r >> 8) as usize % 3000,
                };
                let align = 1 << ((r >> 32) % 15);
                let l = lay(size, align);
                let p = if r % 5 == 0 {
                    let p = heap.alloc_zeroed(l);
                    assert!(!p.is_null());
                    check(p as usize, l, 0);
                    p
                } else {
                    heap.alloc(l)
                };
                assert!(!p.is_null());
                assert_eq!(p as usize % align, 0, "{l:?} misaligned");
                p.write_bytes(v, size);
                live.push((p as usize, l, v));
            } else {
                let i = (r >> 16) as usize % live.len();
                let (p, l, old) = live.swap_remove(i);
                check(p, l, old);
                if r % 4 == 0 {
                    let new_size = match (r >> 40) % 3 {
                        0 => 1 + (r >> 8) as usize % 200,
                        1 => 1 + (r >> 8) as usize % 5000,
                        _ => 30_000 + (r >> 8) as usize % 70_000,
                    };
                    let q = heap.realloc(p as *mut u8, l, new_size);
                    assert!(!q.is_null());
                    let nl = lay(new_size, l.align());
                    check(q as usize, lay(l.size().min(new_size), 1), old);
                    q.write_bytes(v, new_size);
                    live.push((q as usize, nl, v));
                } else {
                    heap.dealloc(p as *mut u8, l);
                }
            }
        }
    }
    for (p, l, v) in live {
        check(p, l, v);
        // SAFETY: a live object of `l`, freed once.
        unsafe { heap.dealloc(p as *mut u8, l) };
    }
}

/// Nothing sampled is left behind and no object changed: sampling statistics and heap statistics
/// both at rest.
fn assert_at_rest<const F: bool>(heap: &Heap<Sampled<HostPlatform>, F>) {
    let st = heap.sampling_stats();
    assert_eq!(st.live_samples, 0, "{st:?}");
    let s = heap.stats();
    assert_eq!(s.large_objects, 0);
    assert!(
        s.classes.iter().all(|c| c.objects == 0),
        "small objects left"
    );
}

const SETTINGS: [Sampling; 6] = [
    Sampling::OFF,
    Sampling {
        profile_rate: 1,
        guard_interval: 0,
        guard_side: GuardSide::Right,
    },
    Sampling {
        profile_rate: 0,
        guard_interval: 1,
        guard_side: GuardSide::Left,
    },
    Sampling {
        profile_rate: 1,
        guard_interval: 1,
        guard_side: GuardSide::Right,
    },
    Sampling {
        profile_rate: 4096,
        guard_interval: 2048,
        guard_side: GuardSide::Left,
    },
    Sampling::DEFAULT,
];

/// Settings changed (every feature on and off, both sides) while other threads allocate, reallocate
/// and free every kind of object: objects allocated under one setting are freed under another, and
/// none is lost, changed or recorded wrongly.
#[test]
fn settings_changed_while_threads_allocate() {
    let heap = sampled_heap();
    std::thread::scope(|s| {
        let workers: Vec<_> = (0..2u64)
            .map(|t| s.spawn(move || churn(heap, 0x5eed + t, 4000)))
            .collect();
        // At least every setting ten times, and on until the workers are done.
        let mut i = 0;
        while i < 10 * SETTINGS.len() || !workers.iter().all(|w| w.is_finished()) {
            heap.set_sampling(SETTINGS[i % SETTINGS.len()]).unwrap();
            assert_eq!(heap.sampling(), SETTINGS[i % SETTINGS.len()]);
            i += 1;
            std::thread::yield_now();
        }
        for w in workers {
            w.join().expect("a worker failed");
        }
    });
    assert_at_rest(heap);
}

/// The profile read while other threads allocate and free sampled objects: always a well-formed
/// profile whose in-use counts never exceed its allocation counts, and all zero in the end.
#[test]
fn profile_read_while_threads_allocate() {
    let heap = sampled_heap();
    heap.set_sampling(Sampling {
        profile_rate: 1,
        guard_interval: 512,
        guard_side: GuardSide::Right,
    })
    .unwrap();
    let mut reads = 0;
    std::thread::scope(|s| {
        let workers: Vec<_> = (0..2u64)
            .map(|t| s.spawn(move || churn(heap, 0xbeef + t, 3000)))
            .collect();
        let mut buf = std::vec![0u8; 1 << 20];
        // At least one read, and on until the workers are done.
        while reads == 0 || !workers.iter().all(|w| w.is_finished()) {
            let n = heap.write_heap_profile(None, &mut buf).expect("fits 1 MiB");
            let p = crate::profile::decode::decode(&buf[..n]);
            for s in &p.samples {
                let [ao, ab, io, ib] = s.values[..] else {
                    panic!("four values: {:?}", s.values)
                };
                assert!(0 <= io && io <= ao && 0 <= ib && ib <= ab, "{:?}", s.values);
            }
            reads += 1;
        }
        for w in workers {
            w.join().expect("a worker failed");
        }
    });
    assert!(reads > 0);
    assert_at_rest(heap);
    let need = heap.write_heap_profile(None, &mut []).unwrap_err();
    let mut buf = std::vec![0u8; need];
    let n = heap.write_heap_profile(None, &mut buf).unwrap();
    let p = crate::profile::decode::decode(&buf[..n]);
    assert!(p
        .samples
        .iter()
        .all(|s| s.values[2] == 0 && s.values[3] == 0));
}

/// `trim` (every free page unmapped) and a scavenging burst leave sampled objects alone: guarded
/// pages stay mapped while live, profiled ones keep their span, contents and reports intact.
#[test]
fn trim_leaves_sampled_objects_intact() {
    let heap = sampled_heap();
    heap.set_sampling(guard_all(GuardSide::Right)).unwrap();
    let small = lay(100, 8);
    let mid = lay(6000, 8); // too big for the pool: profiled in a span of its own
    let big = lay(100 << 10, 8);
    // SAFETY: each object freed once with its layout; writes stay inside.
    unsafe {
        let objs: Vec<(*mut u8, Layout)> = (0..30)
            .map(|i| [small, mid, big][i % 3])
            .map(|l| (heap.alloc(l), l))
            .collect();
        for (i, &(p, l)) in objs.iter().enumerate() {
            assert!(!p.is_null());
            p.write_bytes(i as u8, l.size());
        }
        assert!(heap.is_guarded(objs[0].0) && !heap.is_guarded(objs[1].0));
        for _ in 0..3 {
            let junk: Vec<*mut u8> = (0..200).map(|_| heap.alloc(big)).collect();
            for p in junk {
                heap.dealloc(p, big);
            }
            heap.trim();
        }
        for (i, &(p, l)) in objs.iter().enumerate() {
            assert!(
                std::slice::from_raw_parts(p, l.size())
                    .iter()
                    .all(|&b| b == i as u8),
                "object {i} changed"
            );
            if l == small {
                assert!(heap.guard_report(VirtAddr::from_ptr(p)).is_none());
            }
        }
        assert_eq!(heap.sampling_stats().live_samples, 30);
        for (p, l) in objs {
            heap.dealloc(p, l);
        }
    }
    assert_at_rest(heap);
}

/// A sampled large object shrunk in place to a small class keeps its record, which its free with the
/// small layout forgets; a second free is refused and counts nothing.
#[test]
fn a_sampled_large_object_shrunk_to_a_small_class_is_forgotten_at_its_free() {
    let heap = sampled_heap();
    heap.set_sampling(Sampling {
        profile_rate: 1,
        ..Sampling::OFF
    })
    .unwrap();
    let big = lay(100 << 10, 8);
    // SAFETY: freed once with its current layout; the second free is refused before anything changes.
    unsafe {
        let p = heap.alloc(big);
        p.write_bytes(4, 100 << 10);
        let q = heap.realloc(p, big, 9000);
        assert_eq!(q, p, "shrunk in place");
        assert_eq!(heap.sampling_stats().live_samples, 1);
        let l = lay(9000, 8);
        heap.dealloc(q, l);
        assert_eq!(heap.sampling_stats().live_samples, 0);
        let msg = refused(|| heap.dealloc(q, l));
        assert!(msg.contains(&std::format!("{:#x}", q as u64)), "{msg}");
        assert_eq!(heap.sampling_stats().live_samples, 0);
    }
    assert_at_rest(heap);
}

/// Edge layouts with every allocation sampled: zero-sized and page-sized guarded objects on both
/// sides, alignments up to 8 KiB (beyond the pool's 4 KiB pages: profiled instead), each aligned,
/// writable in full, and freed once.
#[test]
fn edge_layouts_under_sampling_are_aligned_and_freed() {
    let heap = sampled_heap();
    for side in [GuardSide::Right, GuardSide::Left] {
        heap.set_sampling(guard_all(side)).unwrap();
        for (size, align, guarded) in [
            // Zero bytes count nothing towards the next sample: guarded or not.
            (0, 1, None),
            (1, 1, Some(true)),
            (4096, 8, Some(true)),
            (4096, 4096, Some(true)),
            (100, 4096, Some(true)),
            (4097, 8, Some(false)),
            (8, 8192, Some(false)),
            (8192, 8192, Some(false)),
        ] {
            let l = lay(size, align);
            // SAFETY: freed once with its layout; writes inside.
            unsafe {
                let p = heap.alloc(l);
                assert!(!p.is_null());
                assert_eq!(p as usize % align, 0, "{l:?}");
                if let Some(g) = guarded {
                    assert_eq!(heap.is_guarded(p), g, "{l:?} {side:?}");
                }
                p.write_bytes(0x33, size);
                let q = heap.realloc(p, l, size + 1);
                assert!(!q.is_null());
                assert!(std::slice::from_raw_parts(q, size)
                    .iter()
                    .all(|&b| b == 0x33));
                heap.dealloc(q, lay(size + 1, align));
            }
        }
    }
    assert_at_rest(heap);
}

/// A profiled small object freed twice, reallocated after its free, or freed at an interior address
/// is refused with its address named, and the profile counts one free.
#[test]
fn profiled_small_objects_refuse_double_and_interior_frees() {
    let heap = sampled_heap();
    heap.set_sampling(Sampling {
        profile_rate: 1,
        ..Sampling::OFF
    })
    .unwrap();
    let l = lay(300, 8);
    // SAFETY: the bad calls are refused before anything changes.
    unsafe {
        let p = heap.alloc(l);
        assert!(!heap.is_guarded(p));
        let msg = refused(|| heap.dealloc(p.add(16), l));
        assert!(msg.contains(&std::format!("{:#x}", p as u64 + 16)), "{msg}");
        heap.dealloc(p, l);
        let name = std::format!("{:#x}", p as u64);
        let msg = refused(|| heap.dealloc(p, l));
        assert!(msg.contains(&name) && msg.contains("bad dealloc"), "{msg}");
        let msg = refused(|| {
            heap.realloc(p, l, 600);
        });
        assert!(msg.contains(&name) && msg.contains("bad realloc"), "{msg}");
    }
    let st = heap.sampling_stats();
    assert_eq!((st.live_samples, st.buckets), (0, 1));
    assert_at_rest(heap);
}

/// More sampled objects live than the tables hold: the extra samples are dropped and counted, and
/// every object (recorded or not) is freed normally.
#[test]
fn full_tables_drop_samples_and_lose_no_object() {
    let heap = sampled_heap();
    heap.set_sampling(Sampling {
        profile_rate: 1,
        ..Sampling::OFF
    })
    .unwrap();
    let l = lay(16, 8);
    let big = lay(40 << 10, 8);
    // SAFETY: each object freed once with its layout.
    unsafe {
        let ps: Vec<*mut u8> = (0..crate::profile::table::LIVE)
            .map(|i| heap.alloc(if i % 8 == 0 { big } else { l }))
            .collect();
        assert!(ps.iter().all(|p| !p.is_null()));
        let st = heap.sampling_stats();
        assert!(st.live_samples < crate::profile::table::LIVE, "{st:?}");
        assert!(st.dropped > 0, "{st:?}");
        for (i, p) in ps.into_iter().enumerate() {
            heap.dealloc(p, if i % 8 == 0 { big } else { l });
        }
    }
    assert_at_rest(heap);
}

/// The same with the full checks on (`debug-checks`: the "with a user" bit under the class lock):
/// sampled objects live outside small spans, and nothing tracks them twice or misses them.
#[test]
fn settings_changed_while_threads_allocate_full_checks() {
    let m = HostMachine::new(128 << 20, 1 << 30);
    let platform: &'static Sampled<HostPlatform> = crate::host::leak(Sampled(m.platform));
    let heap: &'static Heap<Sampled<HostPlatform>, true> = crate::host::leak(Heap::new(platform));
    heap.init(m.space.sampled(platform), m.window, 512 << 20)
        .expect("heap init");
    std::thread::scope(|s| {
        let workers: Vec<_> = (0..2u64)
            .map(|t| s.spawn(move || churn(heap, 0xfc + t, 2000)))
            .collect();
        let mut i = 0;
        while i < 10 * SETTINGS.len() || !workers.iter().all(|w| w.is_finished()) {
            heap.set_sampling(SETTINGS[i % SETTINGS.len()]).unwrap();
            i += 1;
            std::thread::yield_now();
        }
        for w in workers {
            w.join().expect("a worker failed");
        }
    });
    assert_at_rest(heap);
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

/// Every refusal that involves a sampled object panics with no sampling lock held: a panic hook that
/// allocates (here, always a guarded and profiled object) runs at each. Refusals: a realloc of a
/// guarded object with a damaged canary, a guarded object freed with another alignment, a profiled
/// small object freed twice and freed with a large layout. Run in a child process (a global hook), with
/// a time limit.
#[test]
#[ignore = "run by sampled_refusals_release_every_lock_before_panicking in a child process"]
fn child_sampled_refusals_with_an_allocating_panic_hook() {
    use super::soundness_tests::CHILD_ENV;
    if std::env::var_os(CHILD_ENV).is_none() {
        return;
    }
    static HEAP: std::sync::OnceLock<&'static SHeap> = std::sync::OnceLock::new();
    let heap = *HEAP.get_or_init(sampled_heap);
    heap.set_sampling(guard_all(GuardSide::Left)).unwrap();
    let l = lay(24, 8);
    std::panic::set_hook(std::boxed::Box::new(move |_| {
        let h = HEAP.get().unwrap();
        // SAFETY: a valid layout; the object is freed at once.
        unsafe {
            let p = h.alloc(l);
            assert!(h.is_guarded(p), "the hook's allocation was not guarded");
            h.dealloc(p, l);
        }
        std::eprintln!("CHILD: the hook allocated");
    }));
    let catch = |f: &dyn Fn()| {
        assert!(std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).is_err());
    };
    // SAFETY: test code; each refused call changes nothing, and the objects are then freed properly.
    unsafe {
        let q = heap.alloc(l);
        assert!(heap.is_guarded(q));
        q.add(24).write(0);
        catch(&|| {
            heap.realloc(q, l, 64 << 10);
        });
        q.add(24).write(guard::canary(q as u64 + 24));
        catch(&|| heap.dealloc(q, lay(24, 1024)));
        heap.dealloc(q, l);
        // Too big for the pool: profiled in a span of its own.
        let m = lay(6000, 8);
        let p = heap.alloc(m);
        assert!(!heap.is_guarded(p));
        catch(&|| heap.dealloc(p, lay(6000, 16384)));
        heap.dealloc(p, m);
        catch(&|| heap.dealloc(p, m));
    }
    std::eprintln!("CHILD: done");
}

#[test]
fn sampled_refusals_release_every_lock_before_panicking() {
    let err = super::soundness_tests::run_child(
        "heap::sample_attack_tests::child_sampled_refusals_with_an_allocating_panic_hook",
    );
    assert_eq!(err.matches("CHILD: the hook allocated").count(), 4, "{err}");
    assert!(err.contains("CHILD: done"), "{err}");
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

/// More threads than caches (some without a cache, so without sampling), handing objects to each other:
/// sampled objects allocated on one thread and freed on another, with or without a cache, are all
/// given back and forgotten.
#[test]
fn sampled_objects_freed_by_other_threads_with_and_without_caches() {
    let heap = sampled_heap();
    heap.set_sampling(Sampling {
        profile_rate: 2048,
        guard_interval: 8192,
        guard_side: GuardSide::Right,
    })
    .unwrap();
    let shared = std::sync::Mutex::new(Vec::<(usize, Layout, u8)>::new());
    // Every thread alive before any allocates: the last two get no cache.
    let threads = crate::platform::MAX_CPUS + 2;
    let start = std::sync::Barrier::new(threads);
    let free_checked = |p: usize, l: Layout, v: u8| {
        // SAFETY: a live object of `l`, written with `v` in full, freed once here.
        unsafe {
            let bytes = std::slice::from_raw_parts(p as *const u8, l.size());
            assert!(bytes.iter().all(|&b| b == v), "object {p:#x} changed");
            heap.dealloc(p as *mut u8, l);
        }
    };
    std::thread::scope(|s| {
        for t in 0..threads as u64 {
            let (shared, free_checked, start) = (&shared, &free_checked, &start);
            s.spawn(move || {
                let mut rng = crate::testing::Rng(t * 7919 + 1);
                start.wait();
                for i in 0..30u32 {
                    let r = rng.next();
                    let size = if r % 16 == 0 {
                        40_000
                    } else {
                        1 + (r >> 8) as usize % 2000
                    };
                    let l = lay(size, 8);
                    let v = (i as u8) ^ (t as u8);
                    // SAFETY: a valid layout; the object is written in full, then handed over.
                    let p = unsafe { heap.alloc(l) };
                    assert!(!p.is_null());
                    // SAFETY: as above.
                    unsafe { p.write_bytes(v, size) };
                    let other = {
                        let mut sh = shared.lock().unwrap();
                        sh.push((p as usize, l, v));
                        if r % 3 != 0 && sh.len() > 8 {
                            let k = (r >> 20) as usize % sh.len();
                            Some(sh.swap_remove(k))
                        } else {
                            None
                        }
                    };
                    if let Some((q, ql, qv)) = other {
                        free_checked(q, ql, qv);
                    }
                }
            });
        }
    });
    for (p, l, v) in shared.into_inner().unwrap() {
        free_checked(p, l, v);
    }
    assert!(heap.sampling_stats().guarded > 0);
    assert_at_rest(heap);
}

/// A refused realloc of a guarded object names the reason its free would: a wrong size or alignment
/// of a live object, a double free of a quarantined one (not "not a live heap object", which the
/// realloc's own checks said of every pool address).
#[test]
fn a_refused_realloc_of_a_guarded_object_names_the_reason() {
    let heap = sampled_heap();
    heap.set_sampling(guard_all(GuardSide::Right)).unwrap();
    let l = lay(24, 8);
    // SAFETY: the bad reallocs are refused before anything changes; the object is freed once.
    unsafe {
        let p = heap.alloc(l);
        assert!(heap.is_guarded(p));
        let msg = refused(|| {
            heap.realloc(p, lay(20, 8), 100);
        });
        assert!(
            msg.contains("bad realloc") && msg.contains("size differs from the allocation's (24 B"),
            "{msg}"
        );
        let msg = refused(|| {
            heap.realloc(p, lay(24, 1024), 100);
        });
        assert!(msg.contains("alignment differs"), "{msg}");
        heap.dealloc(p, l);
        let msg = refused(|| {
            heap.realloc(p, l, 100);
        });
        assert!(msg.contains("double free of the guarded object"), "{msg}");
    }
    assert_at_rest(heap);
}

/// Two first-time `set_sampling` calls racing (two threads, released together) make the profile's
/// tables once: afterwards the heap has exactly the pages in use, and once trimmed the frames, of the
/// same two calls made one after the other by two threads (the second finds the tables made). Both
/// used to allocate the tables, and the loser's pages (some 300 KiB) stayed in use for good, unused.
/// Fresh heaps, a few rounds: the race is likely, not certain, in any one of them.
#[test]
fn racing_first_set_sampling_calls_make_the_tables_once() {
    use std::sync::Barrier;
    let on = Sampling {
        profile_rate: 1,
        ..Sampling::OFF
    };
    // Both threads stay alive until both have called (`done`): each has a CPU index of its own, so
    // each heap gets two caches. Each trims after its call (its own CPU's cache included), so that
    // what the heap holds does not depend on which thread ran last.
    let call = |heap: &'static SHeap, done: &Barrier| {
        let r = heap.set_sampling(on);
        heap.trim();
        done.wait();
        r
    };
    let held = |heap: &'static SHeap| {
        heap.trim();
        let s = heap.stats();
        (s.pages.in_use, s.frames_held)
    };
    let calm = sampled_heap();
    // This thread's own CPU index, taken now and kept: otherwise `held`'s trim took the index a
    // finished thread gave back, whose cache exists in one heap and not in the other.
    crate::platform::Platform::cpu_index_slow(calm.platform());
    let (first_done, done) = (Barrier::new(2), Barrier::new(2));
    std::thread::scope(|s| {
        let a = s.spawn(|| {
            let r = calm.set_sampling(on);
            calm.trim();
            first_done.wait();
            done.wait();
            r
        });
        let b = s.spawn(|| {
            first_done.wait();
            call(calm, &done)
        });
        assert_eq!(a.join().unwrap(), Ok(()));
        assert_eq!(b.join().unwrap(), Ok(()));
    });
    let want = held(calm);
    for round in 0..12 {
        let heap = sampled_heap();
        let (go, done) = (Barrier::new(2), Barrier::new(2));
        std::thread::scope(|s| {
            let ts: Vec<_> = (0..2)
                .map(|_| {
                    s.spawn(|| {
                        go.wait();
                        call(heap, &done)
                    })
                })
                .collect();
            for t in ts {
                assert_eq!(t.join().unwrap(), Ok(()), "round {round}");
            }
        });
        let (in_use, frames) = held(heap);
        assert_eq!(in_use, want.0, "round {round}: pages in use");
        // Frames: the same up to a few page-table and metadata frames, which vary with where the
        // threads' caches landed; a second table would hold 2 frames per page of it (78).
        assert!(
            frames.0 <= want.1 .0 + 8,
            "round {round}: {frames:?} frames held, {:?} after calls one after the other",
            want.1
        );
        // The tables that were kept are the ones in use: a sample lands in them. (This thread's first
        // allocation only re-arms its countdown for the new settings; the second is sampled.)
        let l = lay(48, 8);
        // SAFETY: each freed once with its layout.
        unsafe {
            let ps = [heap.alloc(l), heap.alloc(l)];
            assert!(heap.sampling_stats().live_samples >= 1, "round {round}");
            for p in ps {
                heap.dealloc(p, l);
            }
        }
        assert_eq!(heap.sampling_stats().live_samples, 0, "round {round}");
    }
}

/// Live sampled objects and bytes in the heap profile, summed over stacks and sizes.
fn in_use(heap: &SHeap) -> [i64; 2] {
    by_size(heap)
        .values()
        .fold([0, 0], |[n, b], v| [n + v[2], b + v[3]])
}

/// A sampled large object resized in place is profiled as a moving `realloc` would profile it: the old
/// object freed, the new size a new sample (every allocation is one at rate 1). The profile's live bytes
/// follow each resize (grow, shrink, shrink to a small class, grow back) and the free empties it; the
/// record used to keep the size the object was allocated with.
#[test]
fn a_sampled_large_object_resized_in_place_is_profiled_at_its_new_size() {
    let heap = sampled_heap();
    heap.set_sampling(Sampling {
        profile_rate: 1,
        ..Sampling::OFF
    })
    .unwrap();
    let a = 100 << 10;
    // SAFETY: every object freed once with its current layout; reads and writes stay inside them.
    unsafe {
        let mut p = heap.alloc(lay(a, 8));
        p.write_bytes(9, a);
        assert_eq!(in_use(heap), [1, a as i64]);
        let mut size = a;
        // 9000 B has a small class, kept in place (at least a heap page), and is profiled with the
        // class's size, as any small object is.
        let class = crate::sizeclass::SizeClass::for_layout(9000, 8)
            .unwrap()
            .size();
        assert!(class > 9000);
        for (new, profiled) in [
            (300 << 10, 300 << 10),
            (64 << 10, 64 << 10),
            (9000, class as i64),
            (200 << 10, 200 << 10),
        ] {
            let q = heap.realloc(p, lay(size, 8), new);
            assert_eq!(q, p, "{size} -> {new} B in place");
            assert!(std::slice::from_raw_parts(q, size.min(new))
                .iter()
                .all(|&b| b == 9));
            q.write_bytes(9, new);
            assert_eq!(in_use(heap), [1, profiled], "{size} -> {new} B");
            assert_eq!(heap.sampling_stats().live_samples, 1);
            (p, size) = (q, new);
        }
        let in_place = by_size(heap);
        heap.dealloc(p, lay(size, 8));
        assert_eq!(in_use(heap), [0, 0]);
        assert_eq!(heap.sampling_stats().live_samples, 0);
        // Every size the object had was allocated once and freed once.
        for (bytes, v) in &in_place {
            assert_eq!(v[0], 1, "{bytes} B allocated once");
        }
        assert_eq!(
            in_place.keys().copied().collect::<Vec<_>>(),
            [class as i64, 64 << 10, a as i64, 200 << 10, 300 << 10]
        );
    }
    assert_at_rest(heap);
}

/// A guard event that falls on a small allocation the pool cannot take (over 4 KiB, or aligned beyond
/// its 4 KiB pages) is refused: the allocation succeeds unguarded, aligned and writable, and the
/// stats count it in `guard_refused` (as they count one the full pool refuses); nothing is counted as
/// guarded. Those events used to be dropped uncounted: the stats showed no refusal while small
/// allocations went unguarded at every event.
#[test]
fn guard_events_on_objects_too_big_for_the_pool_are_counted_as_refused() {
    let heap = sampled_heap();
    heap.set_sampling(Sampling {
        guard_interval: 1,
        ..Sampling::OFF
    })
    .unwrap();
    let mut live = Vec::new();
    // (size, align, guarded): interval 1, so each of these small allocations is a guard event.
    for (size, align, guarded) in [
        (4097, 8, false),
        (32 << 10, 8, false),
        (8, 8192, false),
        (4096, 4096, true),
        (24, 8, true),
    ] {
        let l = lay(size, align);
        let before = heap.sampling_stats();
        // SAFETY: freed once below with its layout; writes inside.
        unsafe {
            let p = heap.alloc(l);
            assert!(!p.is_null(), "{l:?}");
            assert_eq!(p as usize % align, 0, "{l:?}");
            p.write_bytes(0x5c, size);
            assert_eq!(heap.is_guarded(p), guarded, "{l:?}");
            live.push((p, l));
        }
        let after = heap.sampling_stats();
        let want = if guarded {
            (before.guarded + 1, before.guard_refused)
        } else {
            (before.guarded, before.guard_refused + 1)
        };
        assert_eq!((after.guarded, after.guard_refused), want, "{l:?}");
    }
    let counts = heap.sampling_stats();
    for (p, l) in live {
        // SAFETY: allocated above with `l`, freed once.
        unsafe { heap.dealloc(p, l) };
    }
    assert_eq!(heap.sampling_stats(), counts, "frees count no event");
    assert_at_rest(heap);
}

/// An in-place `realloc` follows the settings of its time, as a moving one would: an object allocated
/// while profiling was off becomes a sample when resized at rate 1, and a sampled one resized after
/// profiling was switched off leaves the profile (its old size counted as freed); either way its free
/// then balances the profile, and no record of it is left behind for the next object at its address.
#[test]
fn an_in_place_realloc_follows_the_profiling_settings_of_its_time() {
    let heap = sampled_heap();
    let rate = |profile_rate| {
        heap.set_sampling(Sampling {
            profile_rate,
            ..Sampling::OFF
        })
        .unwrap()
    };
    let (a, b) = (100 << 10, 200 << 10);
    // SAFETY: each object freed once with its current layout.
    unsafe {
        // Make the tables, then switch profiling off before the allocation.
        rate(1);
        rate(0);
        let p = heap.alloc(lay(a, 8));
        assert_eq!(in_use(heap), [0, 0]);
        rate(1);
        assert_eq!(heap.realloc(p, lay(a, 8), b), p, "grown in place");
        assert_eq!(in_use(heap), [1, b as i64]);
        rate(0);
        assert_eq!(heap.realloc(p, lay(b, 8), a), p, "shrunk in place");
        assert_eq!(in_use(heap), [0, 0]);
        assert_eq!(by_size(heap)[&(b as i64)], [1, b as i64, 0, 0]);
        heap.dealloc(p, lay(a, 8));
        assert_eq!(heap.sampling_stats().live_samples, 0);
        // The next object at that address, sampled, is recorded once and freed once.
        rate(1);
        let q = heap.alloc(lay(a, 8));
        assert_eq!(in_use(heap), [1, a as i64]);
        heap.dealloc(q, lay(a, 8));
        assert_eq!(in_use(heap), [0, 0]);
    }
    assert_at_rest(heap);
}

std::thread_local! {
    /// A one-shot hook run by this thread's next [`Hooked::stack_trace`] (taken out first, so that
    /// heap calls made by the hook itself do not run it again).
    static STACK_HOOK: core::cell::RefCell<Option<std::boxed::Box<dyn FnOnce()>>> =
        const { core::cell::RefCell::new(None) };
}

/// The sampled host platform, with a hook in `stack_trace`: the sampler calls it after deciding on a
/// sample and before recording it, with no heap lock held, which lets a test put another thread's
/// work at exactly that point.
struct Hooked(&'static HostPlatform);

// (`SAMPLING` is no promise about the machine, and the hook is test code that keeps the heap's
// contract.)
crate::testing::host_platform_wrapper!(Hooked {
    const MAX_CPUS: usize = HostPlatform::MAX_CPUS;
    const SAMPLING: bool = true;
    fn stack_trace(&self, _from: u64, _out: &mut [u64]) -> usize {
        if let Some(hook) = STACK_HOOK.with(|h| h.borrow_mut().take()) {
            hook();
        }
        0
    }
});

type HHeap = Heap<Hooked, false>;

fn hooked_heap() -> &'static HHeap {
    let m = HostMachine::new(128 << 20, 1 << 30);
    let platform: &'static Hooked = crate::host::leak(Hooked(m.platform));
    let space = crate::arena::AddressSpace::new(m.space.frames, m.space.mapper, platform);
    let heap: &'static HHeap = crate::host::leak(Heap::new(platform));
    heap.init(space, m.window, 512 << 20).expect("heap init");
    heap
}

/// A racing (wrong) free of a large object while it is resized in place, its address handed at once
/// to another thread's sampled large allocation: the resize's sample (recorded after the page-heap
/// lock was dropped and taken again) and the new object's must not both be recorded at that address.
/// Two records of one address are a debug assertion ("recorded twice"); in a release build one of them
/// outlives the new object's free, and a later object at that address inherits it (a profiled small
/// object there then has its free refused, as the stale record says "large"). The new object's record
/// used to be made after its span was taken and the page-heap lock released, so the resize's check
/// ("the address starts a large object with no record") passed in between.
#[test]
fn a_racing_free_during_an_in_place_realloc_leaves_one_record_per_address() {
    use std::sync::atomic::{AtomicU32, Ordering::SeqCst};
    use std::sync::Arc;
    let heap = hooked_heap();
    heap.set_sampling(Sampling {
        profile_rate: 1,
        ..Sampling::OFF
    })
    .unwrap();
    let (big, small) = (lay(200 << 10, 8), lay(100 << 10, 8));
    // 4: the other thread is warmed up; 1: it may allocate; 2: it is in its sample's stack trace;
    // 3: it may go on.
    let step = Arc::new(AtomicU32::new(0));
    let s = step.clone();
    let other = std::thread::spawn(move || {
        // Warm up first: this thread's countdown is armed by its first allocations (which at rate 1
        // are samples of their own, placed before the address the test is about is free).
        for _ in 0..4 {
            let l = lay(64, 8);
            // SAFETY: test code: freed once with its layout.
            unsafe { heap.dealloc(heap.alloc(l), l) };
        }
        let s2 = s.clone();
        STACK_HOOK.with(|h| {
            *h.borrow_mut() = Some(std::boxed::Box::new(move || {
                s2.store(2, SeqCst);
                while s2.load(SeqCst) != 3 {
                    std::thread::yield_now();
                }
            }))
        });
        s.store(4, SeqCst);
        while s.load(SeqCst) != 1 {
            std::thread::yield_now();
        }
        // SAFETY: test code: freed once by the test.
        unsafe { heap.alloc(small) as usize }
    });
    while step.load(SeqCst) != 4 {
        std::thread::yield_now();
    }
    // SAFETY: test code: freed once, by the hook (the racing free).
    let p = unsafe { heap.alloc(big) };
    assert!(!p.is_null());
    let (pa, s) = (p as usize, step.clone());
    // The hook runs in the resize's sampling step, after the old record went and the lock was dropped.
    STACK_HOOK.with(|h| {
        *h.borrow_mut() = Some(std::boxed::Box::new(move || {
            // The racing free (as another thread's would land here).
            // SAFETY: test code: `p` is a live object of `small` now (resized in place); freed once.
            unsafe { heap.dealloc(pa as *mut u8, small) };
            s.store(1, SeqCst);
            // Until the other thread's sample is about to be recorded (or, with the record made
            // under the page-heap lock, to be taken), or its allocation is over.
            let t = std::time::Instant::now();
            while s.load(SeqCst) != 2 && t.elapsed() < std::time::Duration::from_secs(2) {
                std::thread::yield_now();
            }
        }))
    });
    // SAFETY: test code: a live object of `big`; shrunk in place (its pages are kept).
    let r = unsafe { heap.realloc(p, big, small.size()) };
    assert_eq!(r, p, "shrunk in place");
    assert!(
        STACK_HOOK.with(|h| h.borrow_mut().take()).is_none(),
        "the resize took no sample"
    );
    step.store(3, SeqCst);
    let q = other
        .join()
        .expect("the other thread's allocation panicked") as *mut u8;
    assert_eq!(
        q, p,
        "the new object is at the freed address (else this proves nothing)"
    );
    assert_eq!(
        heap.sampling_stats().live_samples,
        1,
        "{:?}",
        heap.sampling_stats()
    );
    // SAFETY: test code: the other thread's live object, freed once.
    unsafe { heap.dealloc(q, small) };
    assert_eq!(
        heap.sampling_stats().live_samples,
        0,
        "a record outlived its object: {:?}",
        heap.sampling_stats()
    );
    assert_eq!(heap.stats().large_objects, 0);
}
