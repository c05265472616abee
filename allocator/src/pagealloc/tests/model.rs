//! Model-based tests: every answer of the allocator must equal a naive first fit with alignment over
//! a plain `Vec<bool>`, and the structure must pass `check_invariants` after every operation.

use super::super::*;
use super::Host;
use proptest::prelude::*;
use std::vec::Vec;

/// The model: `free[u]` for each tracked unit.
#[derive(Default)]
struct Model {
    free: Vec<bool>,
    /// Count of `true` in `free` (counting it each time is too slow under Miri).
    nfree: usize,
}

impl Model {
    /// Lowest `s`, a multiple of `align`, with `s..s + n` free: checks each candidate window and jumps
    /// past the in-use unit that spoiled it.
    fn first_fit(&self, n: usize, align: usize) -> Option<usize> {
        let mut s = 0;
        'next: while s + n <= self.free.len() {
            for u in (s..s + n).rev() {
                if !self.free[u] {
                    s = (u + 1).next_multiple_of(align);
                    continue 'next;
                }
            }
            return Some(s);
        }
        None
    }

    fn set(&mut self, start: usize, n: usize, free: bool) {
        for f in &mut self.free[start..start + n] {
            assert_ne!(*f, free, "test bug: model transition");
            *f = free;
        }
        if free {
            self.nfree += n;
        } else {
            self.nfree -= n;
        }
    }

    fn free_count(&self) -> usize {
        self.nfree
    }
}

#[derive(Clone, Debug)]
enum Op {
    Alloc {
        n: usize,
        align_log: u32,
    },
    /// Frees part of an owned range, chosen by the seeds.
    Free {
        which: usize,
        at: usize,
        len: usize,
    },
    AllocRange {
        at: usize,
        len: usize,
    },
    Grow {
        by: usize,
    },
    Block64,
    CheckRun {
        at: usize,
        len: usize,
    },
}

fn op_strategy() -> impl Strategy<Value = Op> {
    let n = prop_oneof![6 => 1usize..=16, 3 => 17usize..=1100, 1 => 1101usize..=80_000];
    prop_oneof![
        8 => (n, prop_oneof![3 => Just(0u32), 5 => 0u32..=12]).prop_map(|(n, align_log)| Op::Alloc { n, align_log }),
        7 => (any::<usize>(), any::<usize>(), any::<usize>()).prop_map(|(which, at, len)| Op::Free { which, at, len }),
        2 => (any::<usize>(), any::<usize>()).prop_map(|(at, len)| Op::AllocRange { at, len }),
        1 => (1usize..20_000).prop_map(|by| Op::Grow { by }),
        1 => Just(Op::Block64),
        1 => (any::<usize>(), any::<usize>()).prop_map(|(at, len)| Op::CheckRun { at, len }),
    ]
}

/// The allocator, the model and the ranges the test owns (in use, free to hand back).
struct Harness {
    pa: Host,
    model: Model,
    owned: Vec<(usize, usize)>,
}

impl Harness {
    fn new(capacity: usize) -> Harness {
        Harness {
            pa: Host::new(capacity),
            model: Model::default(),
            owned: Vec::new(),
        }
    }

    fn grow(&mut self, limit: usize) {
        let old = self.pa.limit();
        self.pa.grow(limit);
        self.model.free.resize(limit, false);
        if limit > old {
            self.owned.push((old, limit - old));
        }
    }

    fn apply(&mut self, op: &Op) {
        match *op {
            Op::Alloc { n, align_log } => {
                let align = 1 << align_log;
                let want = self.model.first_fit(n, align);
                let got = self.pa.alloc(n, align);
                assert_eq!(
                    got,
                    want,
                    "alloc({n}, {align}) with {} free",
                    self.model.free_count()
                );
                if let Some(s) = got {
                    self.model.set(s, n, false);
                    self.owned.push((s, n));
                }
            }
            Op::Free { which, at, len } => {
                if self.owned.is_empty() {
                    return;
                }
                let (s, n) = self.owned.swap_remove(which % self.owned.len());
                let a = s + at % n;
                let b = a + 1 + len % (s + n - a);
                self.pa.free(a, b - a);
                self.model.set(a, b - a, true);
                for piece in [(s, a - s), (b, s + n - b)] {
                    if piece.1 > 0 {
                        self.owned.push(piece);
                    }
                }
            }
            Op::AllocRange { at, len } => {
                let limit = self.pa.limit();
                if limit == 0 {
                    return;
                }
                let a = at % limit;
                let run = self.model.free[a..].iter().take_while(|&&f| f).count();
                if run == 0 {
                    return;
                }
                let n = 1 + len % run;
                self.pa.alloc_range(a, n);
                self.model.set(a, n, false);
                self.owned.push((a, n));
            }
            Op::Grow { by } => {
                let limit = (self.pa.limit() + by).min(self.pa.capacity());
                self.grow(limit);
            }
            Op::Block64 => {
                let want = self.model.free.iter().position(|&f| f).map(|u| {
                    let base = u & !63;
                    let end = (base + 64).min(self.model.free.len());
                    let mask = (base..end)
                        .filter(|&v| self.model.free[v])
                        .fold(0u64, |m, v| m | 1 << (v - base));
                    (base, mask)
                });
                let got = self.pa.alloc_block64();
                assert_eq!(got, want, "alloc_block64");
                if let Some((base, mask)) = got {
                    for i in (0..64).filter(|i| mask >> i & 1 == 1) {
                        self.model.set(base + i, 1, false);
                        self.owned.push((base + i, 1));
                    }
                }
            }
            Op::CheckRun { at, len } => {
                let limit = self.pa.limit() + 2;
                let a = at % limit;
                let n = len % 700;
                let want =
                    a + n <= self.model.free.len() && self.model.free[a..a + n].iter().all(|&f| f);
                assert_eq!(
                    self.pa.contains_free_run(a, n),
                    want,
                    "contains_free_run({a}, {n})"
                );
            }
        }
        assert_eq!(
            self.pa.free_count(),
            self.model.free_count(),
            "free_count after {op:?}"
        );
        self.pa.check_invariants();
    }

    fn check_bitmap(&self) {
        for (u, &f) in self.model.free.iter().enumerate() {
            assert_eq!(self.pa.is_free(u), f, "is_free({u})");
        }
        assert!(!self.pa.is_free(self.model.free.len()));
        let counted = self.model.free.iter().filter(|&&f| f).count();
        assert_eq!(self.model.nfree, counted, "test bug: model counter");
    }
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: if cfg!(miri) { 3 } else { 96 },
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    /// Every answer equals the naive first fit over the model, and the structure stays consistent.
    #[test]
    fn pagealloc_agrees_with_model(
        capacity in prop_oneof![Just(1usize), Just(100), Just(512), Just(1500), Just(9000), Just(40_000)],
        initial in 0usize..=40_000,
        ops in proptest::collection::vec(op_strategy(), 1..if cfg!(miri) { 25 } else { 150 }),
    ) {
        let mut h = Harness::new(capacity);
        h.grow(initial.min(capacity));
        for op in &ops {
            h.apply(op);
        }
        h.check_bitmap();
    }
}

#[test]
// Past 2^21 units the model alone is millions of steps per operation: hours under Miri, which has
// nothing more to check here than in the smaller tests (same code, same storage accesses).
#[cfg_attr(
    miri,
    ignore = "hours under Miri past 2^21 units; smaller tests run the same code"
)]
fn multiple_root_entries_deterministic() {
    // Three root entries (the last one partial).
    const R: usize = MAX_PACKED;
    let capacity = 2 * R + 1000;
    let mut h = Harness::new(capacity);
    // Grow in uneven steps, then free everything.
    for limit in [700, 5000, R - 1, capacity] {
        h.grow(limit);
    }
    let ranges = core::mem::take(&mut h.owned);
    for (s, n) in ranges {
        h.pa.free(s, n);
        h.model.set(s, n, true);
    }
    h.pa.check_invariants();
    assert_eq!(h.pa.free_count(), capacity);

    // A run across the first root boundary, found from the root summaries alone.
    h.apply(&Op::Alloc {
        n: R + 5,
        align_log: 0,
    });
    assert_eq!(h.owned.pop(), Some((0, R + 5)));
    h.pa.free(0, R + 5);
    h.model.set(0, R + 5, true);
    h.pa.alloc_range(100, 1);
    h.model.set(100, 1, false);
    h.apply(&Op::Alloc { n: R, align_log: 0 });
    assert_eq!(h.owned.last(), Some(&(101, R)));
    // Root-aligned: root 1 is partly taken, so nothing of 2^21 units at a multiple of 2^21 fits.
    h.apply(&Op::Alloc {
        n: R,
        align_log: 21,
    });
    assert_eq!(h.owned.len(), 1);
    // Alignment beyond one root entry.
    h.apply(&Op::Alloc {
        n: 1000,
        align_log: 22,
    });
    assert_eq!(h.owned.last(), Some(&(2 * R, 1000)));
    // The run that begins at the end of root 0 (after 101 + R) and reaches into the last root.
    h.apply(&Op::Alloc {
        n: 300,
        align_log: 9,
    });
    assert_eq!(h.owned.last().unwrap().0, (101 + R).next_multiple_of(512));
    h.apply(&Op::Alloc { n: 1, align_log: 0 });
    assert_eq!(h.owned.last(), Some(&(0, 1)));

    // Random traffic against the model.
    let mut x: usize = 0x2545_F491_4F6C_DD1D;
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    for _ in 0..60 {
        let op = match next() % 5 {
            0 | 1 => Op::Alloc {
                n: 1 + next() % 3000,
                align_log: (next() % 14) as u32,
            },
            2 => Op::Alloc {
                n: 1 + next() % (3 * R),
                align_log: (next() % 23) as u32,
            },
            _ => Op::Free {
                which: next(),
                at: next(),
                len: next(),
            },
        };
        h.apply(&op);
    }
    h.check_bitmap();
}
