//! Unit tests of the sampling bookkeeping: math, tables, stack walk, guard pool, pprof encoding.

use std::vec;
use std::vec::Vec;

use super::decode::decode;
use super::guard::{self, ErrorKind, FreeError, Pool};
use super::pprof::{self, Header, Mapping};
use super::stack::walk;
use super::table::{Kind, Tables, LIVE};
use super::*;

#[test]
fn ln_and_exp_match_std() {
    for &x in &[
        1e-9, 0.001, 0.1, 0.5, 0.7, 1.0, 1.5, 2.0, 10.0, 12345.678, 1e300,
    ] {
        let got = ln(x);
        let want = f64::ln(x);
        assert!(
            (got - want).abs() <= 1e-9 * want.abs().max(1.0),
            "ln({x}) = {got}, std says {want}"
        );
    }
    for &x in &[0.0, -1e-6, -0.3, -1.0, -2.5, -10.0, -100.0, -700.0] {
        let got = exp_neg(x);
        let want = f64::exp(x);
        assert!(
            (got - want).abs() <= 1e-12 * want.max(1e-300) + 1e-300,
            "exp({x}) = {got}, std says {want}"
        );
    }
}

#[test]
fn intervals_average_the_rate() {
    let mut rng = Rng::new(42);
    let rate = 512 << 10;
    let n = 20_000;
    let sum: u64 = (0..n).map(|_| next_interval(rate, &mut rng)).sum();
    let mean = sum as f64 / n as f64;
    // The mean of 20,000 exponential draws is within 3% of the rate (sd: 0.7%).
    assert!(
        (mean / rate as f64 - 1.0).abs() < 0.03,
        "mean interval {mean} for rate {rate}"
    );
    assert_eq!(next_interval(1, &mut rng), 0, "rate 1 samples everything");
}

#[test]
fn table_counts_allocs_and_frees_per_stack_and_size() {
    let mut t = Tables::boxed();
    let a = [0x1000, 0x2000, 0x3000];
    let b = [0x1000, 0x2004];
    t.record(0x10, 64, 1, &a, Kind::Small).unwrap();
    t.record(0x20, 64, 1, &a, Kind::Small).unwrap();
    t.record(0x30, 64, 1, &b, Kind::Large).unwrap();
    t.record(0x40, 128, 1, &a, Kind::Small).unwrap();
    assert_eq!(t.nbuckets, 3, "two stacks, two sizes on one of them");
    assert_eq!(t.live(0x30), Some((Kind::Large, 64)));
    assert_eq!(t.live_stack(0x20), Some(&a[..]));
    assert_eq!(t.remove_live(0x20), Some(Kind::Small));
    assert_eq!(t.remove_live(0x20), None, "a second free is not counted");
    assert_eq!(t.live(0x20), None);
    let b64 = t.buckets().find(|b| b.size == 64 && b.depth == 3).unwrap();
    assert_eq!((b64.allocs, b64.frees), (2, 1));
    assert_eq!(t.nlive, 3);
}

#[test]
fn table_deletion_keeps_every_other_entry_findable() {
    let mut t = Tables::boxed();
    // Addresses crowded into few home slots, removed in a scrambled order.
    let addrs: Vec<u64> = (1..=2000u64)
        .map(|i| i * 8 * LIVE as u64 / 7 + i * 8)
        .collect();
    for &a in &addrs {
        t.record(a, 8, 1, &[1], Kind::Small).unwrap();
    }
    let mut rng = Rng::new(7);
    let mut left: Vec<u64> = addrs.clone();
    while !left.is_empty() {
        let i = (rng.next_u64() % left.len() as u64) as usize;
        let a = left.swap_remove(i);
        assert_eq!(t.remove_live(a), Some(Kind::Small), "removing {a:#x}");
        if left.len() % 97 == 0 {
            for &b in &left {
                assert!(t.live(b).is_some(), "{b:#x} lost after removing {a:#x}");
            }
        }
    }
    assert_eq!(t.nlive, 0);
    let bucket = t.buckets().next().unwrap();
    assert_eq!((bucket.allocs, bucket.frees), (2000, 2000));
}

#[test]
fn a_full_table_drops_and_counts() {
    let mut t = Tables::boxed();
    let mut ok = 0;
    for i in 1..=LIVE as u64 {
        if t.record(i * 16, 8, 1, &[i], Kind::Small).is_ok() {
            ok += 1;
        }
    }
    assert!(
        ok < LIVE && t.dropped > 0,
        "recorded {ok} of {LIVE}, dropped {}",
        t.dropped
    );
    assert!(!t.has_room());
}

#[test]
fn walk_follows_a_frame_chain_and_stops_at_its_bounds() {
    // A fake stack: frames at 0x100, 0x140, 0x1a0; the last links to one above the bound.
    let mem = |a: u64| match a {
        0x100 => 0x140,
        0x108 => 0xaaa1,
        0x140 => 0x1a0,
        0x148 => 0xaaa2,
        0x1a0 => 0x900,
        0x1a8 => 0xaaa3,
        _ => panic!("read outside the frames at {a:#x}"),
    };
    let mut out = [0u64; 8];
    assert_eq!(walk(0x100, 0x100, 0x200, &mut out, mem), 3);
    assert_eq!(&out[..3], &[0xaaa1, 0xaaa2, 0xaaa3]);
    // A tighter upper bound stops before reading the third frame; out of room stops too.
    assert_eq!(walk(0x100, 0x100, 0x1a8, &mut out, mem), 2);
    assert_eq!(walk(0x100, 0x100, 0x200, &mut out[..1], mem), 1);
    // A chain going down (corrupt) stops; a misaligned or low start reads nothing.
    let down = |a: u64| if a == 0x140 { 0x100 } else { 0xbbb };
    assert_eq!(walk(0x140, 0x100, 0x200, &mut out, down), 1);
    assert_eq!(walk(0x104, 0x100, 0x200, &mut out, mem), 0);
    assert_eq!(walk(0x100, 0x108, 0x200, &mut out, mem), 0);
}

#[test]
fn guard_pool_places_quarantines_and_classifies() {
    let base = 0x10_0000_0000u64;
    let mut pool = std::boxed::Box::new(Pool::new(base));
    let (slot, addr) = pool.take(13, 1, GuardSide::Right).unwrap();
    assert_eq!(slot, 0);
    let page = pool.page_of(0);
    assert_eq!(
        page,
        base + guard::PAGE,
        "slot 0 is the second page (the first is a guard)"
    );
    assert_eq!(
        addr,
        page + guard::PAGE - 13,
        "right side: the object ends at its page's end"
    );
    pool.commit(slot, addr, 13, 1, &[0x1234, 0x5678]);
    assert_eq!(pool.live_size(addr), Some(13));

    // One byte past the end: the next guard page.
    let r = pool.classify(addr + 13).unwrap();
    assert_eq!(
        r.kind,
        ErrorKind::OutOfBounds {
            after: true,
            distance: 1
        }
    );
    assert_eq!((r.object, r.size, r.depth), (addr, 13, 2));
    assert!(std::format!("{r}").contains("out-of-bounds access"), "{r}");
    // Before the page: the guard page below, closest to... nothing below slot 0 but this object above it.
    let r = pool.classify(page - 1).unwrap();
    assert_eq!(
        r.kind,
        ErrorKind::OutOfBounds {
            after: false,
            distance: addr - (page - 1)
        }
    );
    assert!(
        pool.classify(addr).is_none(),
        "a live object's page is not the pool's fault"
    );

    assert_eq!(
        pool.check_free(addr + 1, 13, 1),
        Err(FreeError::NotAnObject)
    );
    assert_eq!(
        pool.check_free(addr, 12, 1),
        Err(FreeError::WrongSize { size: 13 })
    );
    assert_eq!(
        pool.check_free(addr, 13, 8),
        Err(FreeError::WrongAlign { align: 1 })
    );
    let s = pool.check_free(addr, 13, 1).unwrap();
    pool.release(s);
    let r = pool.classify(addr + 3).unwrap();
    assert_eq!(r.kind, ErrorKind::UseAfterFree);
    assert!(std::format!("{r}").contains("use-after-free"), "{r}");
    assert_eq!(
        pool.check_free(addr, 13, 1),
        Err(FreeError::DoubleFree {
            object: addr,
            size: 13
        })
    );

    // Left side, aligned; then every slot once: the quarantined one is recycled last.
    let (s1, a1) = pool.take(24, 16, GuardSide::Left).unwrap();
    assert_eq!((s1, a1), (1, pool.page_of(1)));
    pool.commit(s1, a1, 24, 16, &[]);
    let r = pool.classify(a1 - 2).unwrap();
    assert_eq!(
        r.kind,
        ErrorKind::OutOfBounds {
            after: false,
            distance: 2
        }
    );
    let mut taken = vec![];
    while let Some((s, a)) = pool.take(8, 8, GuardSide::Right) {
        pool.commit(s, a, 8, 8, &[]);
        taken.push(s);
    }
    assert_eq!(
        taken.len(),
        guard::SLOTS - 1,
        "every slot but the live one, the quarantined last"
    );
    assert_eq!(*taken.last().unwrap(), 0);
    assert!(pool.refused > 0);
    assert!(pool
        .take(guard::MAX_SIZE + 1, 1, GuardSide::Right)
        .is_none());
}

#[test]
fn canary_depends_on_the_address() {
    assert_ne!(guard::canary(0x1000), guard::canary(0x1001));
    assert_eq!(guard::canary(0x1000), guard::canary(0x2000));
}

#[test]
fn scale_follows_go() {
    // Rate 1 or less: as counted.
    assert_eq!(pprof::scale(3, 100, 1), (3, 300));
    // Objects far above the rate are (almost) always sampled: scale ~1.
    assert_eq!(pprof::scale(2, 64 << 20, 512 << 10), (2, 2 * (64 << 20)));
    // Small objects: 1 / (1 - e^-(s/r)) ~ r/s.
    let (n, bytes) = pprof::scale(1, 16, 512 << 10);
    assert!((n - 32768).abs() <= 1, "{n}");
    assert!((bytes - 16 * 32768).abs() <= 16, "{bytes}");
}

#[test]
fn pprof_roundtrip() {
    let mut t = Tables::boxed();
    let s1 = [0xffff_8000_0000_1234u64, 0xffff_8000_0000_2000];
    let s2 = [0xffff_8000_0000_3000u64];
    for i in 0..5 {
        t.record(0x1000 + i * 16, 16, 1, &s1, Kind::Small).unwrap();
    }
    t.record(0x9000, 100_000, 1, &s2, Kind::Large).unwrap();
    t.remove_live(0x1000);
    t.remove_live(0x1010);
    let header = Header {
        rate: 1,
        mapping: Some(Mapping {
            start: 0xffff_8000_0000_0000,
            limit: 0xffff_8000_0010_0000,
            offset: 0,
            file: "kernel",
        }),
        drop_frames: pprof::DROP_FRAMES,
    };
    let mut small = [0u8; 16];
    let need = pprof::encode(t.buckets(), &header, &mut small).unwrap_err();
    let mut buf = vec![0u8; need];
    assert_eq!(pprof::encode(t.buckets(), &header, &mut buf), Ok(need));
    let p = decode(&buf);
    let names: Vec<(&str, &str)> = p
        .sample_types
        .iter()
        .map(|(a, b)| (a.as_str(), b.as_str()))
        .collect();
    assert_eq!(
        names,
        [
            ("alloc_objects", "count"),
            ("alloc_space", "bytes"),
            ("inuse_objects", "count"),
            ("inuse_space", "bytes")
        ]
    );
    assert_eq!(p.period, 1);
    assert_eq!(p.period_type, ("space".into(), "bytes".into()));
    assert_eq!(p.drop_frames, pprof::DROP_FRAMES);
    assert_eq!(p.mappings.len(), 1);
    assert_eq!(p.mappings[0].4, "kernel");
    assert_eq!(p.samples.len(), 2);
    let small = p.samples.iter().find(|s| s.bytes == Some(16)).unwrap();
    assert_eq!(small.values, [5, 80, 3, 48]);
    let addrs: Vec<u64> = small.locations.iter().map(|id| p.locations[id].1).collect();
    assert_eq!(
        addrs,
        [s1[0] - 1, s1[1] - 1],
        "return addresses minus one, innermost first"
    );
    assert!(
        small.locations.iter().all(|id| p.locations[id].0 == 1),
        "in the mapping"
    );
    let large = p.samples.iter().find(|s| s.bytes == Some(100_000)).unwrap();
    assert_eq!(large.values, [1, 100_000, 1, 100_000]);
}
