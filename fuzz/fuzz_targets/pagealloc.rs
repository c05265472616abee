//! The page allocator (bitmap + radix summaries) against a plain `Vec<bool>` model.
//!
//! Every answer must be the model's: `alloc(n, align)` returns the lowest aligned start of a free run of
//! `n` (first fit) or `None` when the model has none; `alloc_block64` takes exactly the free units of the
//! first 64-unit block holding one; `is_free`, `contains_free_run` and `free_count` agree; `alloc_range`,
//! `free` and `grow` change exactly what the model says. The structure's own invariants
//! (`check_invariants`: summaries, counters, search start) hold after every operation on small
//! allocators and at the end of every input.

#![no_main]

use std::ptr::NonNull;

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use spanalloc::pagealloc::PageAlloc;

/// Storage words before `grow`: nonsense summaries, so reading anything `grow` did not set up shows.
const GARBAGE: u64 = 0xA5A5_5A5A_DEAD_BEEF;

/// Up to this limit the invariants are checked after every operation (it is O(limit)).
const CHECK_EVERY_OP: usize = 1 << 14;

#[derive(Arbitrary, Debug)]
struct Input {
    /// Capacity: `1 + raw % 4096` units, or (`big % 8 == 0`) `1 + raw % 2^22`, past one root entry (2^21
    /// units). Big ones cost milliseconds per input: one in eight.
    big: u8,
    capacity: u32,
    /// Units tracked and freed at the start (as a fraction of the capacity, in 1/256ths).
    initial: u8,
    ops: Vec<Op>,
}

#[derive(Arbitrary, Debug)]
enum Op {
    /// `n = 1 + n % 2^(scale % 23)` units at alignment `2^(align_log % 23)`.
    Alloc {
        n: u32,
        scale: u8,
        align_log: u8,
    },
    /// Frees `1 + len % rest` units from offset `at` of owned range `which`.
    Free {
        which: u16,
        at: u32,
        len: u32,
    },
    /// Marks `[start, start + 1 + n % 64)` in use if the model says it is free (else checks that
    /// `contains_free_run` says it is not).
    AllocRange {
        start: u32,
        n: u8,
    },
    AllocBlock64,
    /// Extends tracking by `by` units (clamped to the capacity); new units start in use.
    Grow {
        by: u32,
    },
    /// Checks `is_free(unit)` and `contains_free_run(unit, n)` (unit up to the capacity: past the limit).
    Query {
        unit: u32,
        n: u16,
    },
}

struct Model {
    /// Per tracked unit: 1 if free.
    free: Vec<u8>,
    nfree: usize,
}

impl Model {
    fn first_fit(&self, n: usize, align: usize) -> Option<usize> {
        let mut s: usize = 0;
        'next: while s.checked_add(n)? <= self.free.len() {
            if let Some(u) = self.free[s..s + n].iter().rposition(|&f| f == 0) {
                s = (s + u + 1).checked_next_multiple_of(align)?;
                continue 'next;
            }
            return Some(s);
        }
        None
    }

    fn set(&mut self, start: usize, n: usize, free: bool) {
        let run = &mut self.free[start..start + n];
        // Slice search and fill (memchr, memset) rather than a loop: the fuzzer instruments every
        // comparison in this crate, and a unit-by-unit model was most of a run.
        assert!(
            !run.contains(&u8::from(free)),
            "fuzz bug: model transition to {free} in {start}+{n}"
        );
        run.fill(u8::from(free));
        if free {
            self.nfree += n;
        } else {
            self.nfree -= n;
        }
    }

    fn run_free(&self, start: usize, n: usize) -> bool {
        start
            .checked_add(n)
            .is_some_and(|end| end <= self.free.len() && !self.free[start..end].contains(&0))
    }
}

fuzz_target!(|input: Input| {
    let capacity = 1 + if input.big % 8 == 0 {
        input.capacity as usize % (1 << 22)
    } else {
        input.capacity as usize % 4096
    };
    let words = PageAlloc::storage_bytes(capacity).div_ceil(8).max(1);
    let mut storage = vec![GARBAGE; words];
    let ptr = NonNull::new(storage.as_mut_ptr()).unwrap().cast::<u8>();
    // SAFETY: `storage` is 8-byte aligned, big enough for `capacity` units, all of it valid for reads and
    // writes, and used only through `pa`, which is declared after it and so dropped before it.
    let mut pa = unsafe { PageAlloc::new(ptr, capacity) };
    let mut m = Model {
        free: Vec::new(),
        nfree: 0,
    };
    // Owned (allocated by us) runs: (start, len).
    let mut owned: Vec<(usize, usize)> = Vec::new();

    let initial = capacity * usize::from(input.initial) / 255;
    pa.grow(initial);
    m.free.resize(initial, 0);
    if initial > 0 {
        pa.free(0, initial);
        m.set(0, initial, true);
    }

    for op in input.ops {
        match op {
            Op::Alloc {
                n,
                scale,
                align_log,
            } => {
                let n = 1 + n as usize % (1usize << (scale % 23));
                let align = 1usize << (align_log % 23);
                let want = m.first_fit(n, align);
                let got = pa.alloc(n, align);
                assert_eq!(
                    got, want,
                    "alloc({n}, align {align}): first fit is {want:?}"
                );
                if let Some(s) = got {
                    m.set(s, n, false);
                    owned.push((s, n));
                }
            }
            Op::Free { which, at, len } => {
                if owned.is_empty() {
                    continue;
                }
                let i = usize::from(which) % owned.len();
                let (s, n) = owned.swap_remove(i);
                let at = at as usize % n;
                let len = 1 + len as usize % (n - at);
                pa.free(s + at, len);
                m.set(s + at, len, true);
                if at > 0 {
                    owned.push((s, at));
                }
                if at + len < n {
                    owned.push((s + at + len, n - at - len));
                }
            }
            Op::AllocRange { start, n } => {
                let limit = m.free.len();
                if limit == 0 {
                    continue;
                }
                let start = start as usize % limit;
                let n = 1 + usize::from(n) % 64;
                let free = m.run_free(start, n);
                assert_eq!(
                    pa.contains_free_run(start, n),
                    free,
                    "contains_free_run({start}, {n})"
                );
                if free {
                    pa.alloc_range(start, n);
                    m.set(start, n, false);
                    owned.push((start, n));
                }
            }
            Op::AllocBlock64 => {
                let want = m.free.iter().position(|&f| f == 1).map(|u| {
                    let base = u & !63;
                    let mut taken = 0u64;
                    for i in 0..64 {
                        if m.free.get(base + i) == Some(&1) {
                            taken |= 1 << i;
                        }
                    }
                    (base, taken)
                });
                let got = pa.alloc_block64();
                assert_eq!(got, want, "alloc_block64");
                if let Some((base, taken)) = got {
                    for i in 0..64 {
                        if taken & (1 << i) != 0 {
                            m.set(base + i, 1, false);
                            owned.push((base + i, 1));
                        }
                    }
                }
            }
            Op::Grow { by } => {
                let old = pa.limit();
                let new = old
                    .saturating_add(by as usize % (capacity + 1))
                    .min(capacity);
                pa.grow(new);
                m.free.resize(new, 0);
                assert_eq!(pa.limit(), new, "grow({new})");
                // Newly tracked units start in use and belong to nobody: free them as one run.
                if new > old {
                    owned.push((old, new - old));
                }
            }
            Op::Query { unit, n } => {
                let u = unit as usize % (capacity + 1);
                assert_eq!(pa.is_free(u), m.free.get(u) == Some(&1), "is_free({u})");
                let n = usize::from(n);
                assert_eq!(
                    pa.contains_free_run(u, n),
                    m.run_free(u, n),
                    "contains_free_run({u}, {n})"
                );
            }
        }
        assert_eq!(pa.free_count(), m.nfree, "free_count");
        if pa.limit() <= CHECK_EVERY_OP {
            pa.check_invariants();
        }
    }
    pa.check_invariants();
});
