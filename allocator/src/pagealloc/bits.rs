//! One chunk's allocation bitmap: 512 units in 8 words (Go's pallocBits).
//!
//! Invariants:
//! - Bit `i % 64` of word `i / 64` is unit `i` of the chunk; 1 = in use, 0 = free. Units the allocator
//!   does not track (past its limit) are 1, so every search here treats them as unusable for free.
//! - Offsets are chunk-relative (`0..CHUNK_UNITS`); a range is `lo..hi` with `lo <= hi <= CHUNK_UNITS`.
//! - Searches work a word at a time (trailing/leading zero counts), never a bit at a time.

use super::sum::Sum;
use super::CHUNK_UNITS;

/// `x` rounded up to a multiple of `align`, a power of two (chunk offsets: no overflow).
fn align_up(x: usize, align: usize) -> usize {
    (x + align - 1) & !(align - 1)
}

/// Words of bitmap per chunk.
pub const WORDS: usize = CHUNK_UNITS / 64;

/// A chunk's bitmap.
pub type Chunk = [u64; WORDS];

/// Bits `lo..hi` of one word set, for `lo <= hi <= 64`.
fn word_mask(lo: usize, hi: usize) -> u64 {
    debug_assert!(lo <= hi && hi <= 64);
    if lo == hi {
        return 0;
    }
    (u64::MAX >> (64 - (hi - lo))) << lo
}

/// Calls `f(word_index, mask)` for each word overlapping `lo..hi`, with the mask of the bits inside it.
fn for_each_word(lo: usize, hi: usize, mut f: impl FnMut(usize, u64)) {
    let mut at = lo;
    while at < hi {
        let w = at / 64;
        let word_end = (w + 1) * 64;
        let stop = hi.min(word_end);
        f(w, word_mask(at - w * 64, stop - w * 64));
        at = stop;
    }
}

/// First unit in `lo..hi` whose bit equals `in_use`, if any.
fn first_with(c: &Chunk, lo: usize, hi: usize, in_use: bool) -> Option<usize> {
    let mut found = None;
    for_each_word(lo, hi, |w, mask| {
        if found.is_none() {
            let bits = if in_use { c[w] } else { !c[w] } & mask;
            if bits != 0 {
                found = Some(w * 64 + bits.trailing_zeros() as usize);
            }
        }
    });
    found
}

/// First in-use unit in `lo..hi`.
pub fn first_in_use(c: &Chunk, lo: usize, hi: usize) -> Option<usize> {
    first_with(c, lo, hi, true)
}

/// First free unit in `lo..hi`.
pub fn first_free(c: &Chunk, lo: usize, hi: usize) -> Option<usize> {
    first_with(c, lo, hi, false)
}

/// Marks `lo..hi` in use.
pub fn set_range(c: &mut Chunk, lo: usize, hi: usize) {
    for_each_word(lo, hi, |w, mask| c[w] |= mask);
}

/// Marks `lo..hi` free.
pub fn clear_range(c: &mut Chunk, lo: usize, hi: usize) {
    for_each_word(lo, hi, |w, mask| c[w] &= !mask);
}

/// The longest run of zero bits in `w` (0..=64), in a fixed sequence of steps without a branch on the
/// data: summaries are recomputed on every page-heap and frame allocation and free, and a loop whose
/// trip count follows the bitmap mispredicts on them.
fn longest_zero_run(w: u64) -> usize {
    // `a<n>`: bit `j` set iff units `j..j + n` are all free (a right shift brings in zeros, units in
    // use, so no run wraps past bit 63).
    let a1 = !w;
    let a2 = a1 & (a1 >> 1);
    let a4 = a2 & (a2 >> 2);
    let a8 = a4 & (a4 >> 4);
    let a16 = a8 & (a8 >> 8);
    let a32 = a16 & (a16 >> 16);
    // Greedy on the binary digits of the answer, up to 63: `cur` marks the starts of runs of `len`
    // free units, and a run of `len + k` starts at `j` iff one of `len` does and one of `k` starts at
    // `j + len`. A free word (a run of 64) comes out at 63 and gets its last unit below.
    let (mut len, mut cur) = (0usize, u64::MAX);
    for (k, ak) in [(32, a32), (16, a16), (8, a8), (4, a4), (2, a2), (1, a1)] {
        let t = cur & (ak >> len);
        if t != 0 {
            cur = t;
            len += k;
        }
    }
    len + usize::from(w == 0)
}

/// The chunk's summary, in one pass over its words with no branch on their contents (see
/// [`longest_zero_run`]).
pub fn summarize(c: &Chunk) -> Sum {
    // `run`: the free run reaching the current word boundary from the left; `open`: every word so far
    // was entirely free (the chunk's start run is still growing).
    let (mut start, mut open, mut max, mut run) = (0usize, true, 0usize, 0usize);
    for &w in c {
        let tz = w.trailing_zeros() as usize;
        start += if open { tz } else { 0 };
        open &= w == 0;
        max = max.max(run + tz).max(longest_zero_run(w));
        run = if w == 0 {
            run + 64
        } else {
            w.leading_zeros() as usize
        };
    }
    if start == CHUNK_UNITS {
        return Sum::all_free(CHUNK_UNITS);
    }
    Sum::new(start, max.max(run), run)
}

/// First `s >= from` with `s` a multiple of `align` such that `s..s + n` is free and inside the chunk.
///
/// `1 <= n <= CHUNK_UNITS`; `align` is a power of two no larger than `CHUNK_UNITS`, so chunk-relative
/// alignment equals absolute alignment (chunks start at multiples of `CHUNK_UNITS`). Cost: a fixed
/// number of word operations per word, whatever the fragmentation.
pub fn find(c: &Chunk, n: usize, align: usize, from: usize) -> Option<usize> {
    debug_assert!(
        (1..=CHUNK_UNITS).contains(&n) && align.is_power_of_two() && align <= CHUNK_UNITS
    );
    // Units below `from` are simply not candidates.
    let mut b = *c;
    set_range(&mut b, 0, from.min(CHUNK_UNITS));
    if n > 64 {
        find_large(&b, n, align)
    } else if align > 64 {
        // Only word starts are aligned: a handful of candidates.
        (0..=CHUNK_UNITS - n)
            .step_by(align)
            .find(|&s| first_in_use(&b, s, s + n).is_none())
    } else {
        find_small(&b, n, align)
    }
}

/// `find` for runs longer than a word (Go's findLargeN). Such a run touches a word boundary, so
/// stepping a word at a time and tracking the run that reaches each boundary sees all of them.
fn find_large(b: &Chunk, n: usize, align: usize) -> Option<usize> {
    let mut run_start = 0usize;
    for (i, &w) in b.iter().enumerate() {
        if w == 0 {
            continue;
        }
        let s = align_up(run_start, align);
        if s + n <= i * 64 + w.trailing_zeros() as usize {
            return Some(s);
        }
        run_start = (i + 1) * 64 - w.leading_zeros() as usize;
    }
    let s = align_up(run_start, align);
    (s + n <= CHUNK_UNITS).then_some(s)
}

/// `find` for `n <= 64`, `align <= 64` (Go's findSmallN): all run starts of a word at once.
fn find_small(b: &Chunk, n: usize, align: usize) -> Option<usize> {
    // Bits at the multiples of `align` in a word: a repeating pattern 1 in `align`.
    let aligned = (u64::MAX as u128 / ((1u128 << align) - 1)) as u64;
    // Free units at the top of the previous word.
    let mut end = 0;
    for (i, &w) in b.iter().enumerate() {
        if w == u64::MAX {
            end = 0;
            continue;
        }
        // A run from the previous word into this one; a later aligned start in it would end later.
        if end > 0 {
            let s = align_up(i * 64 - end, align);
            if s + n <= i * 64 + w.trailing_zeros() as usize {
                return Some(s);
            }
        }
        let starts = run_starts(!w, n) & aligned;
        if starts != 0 {
            return Some(i * 64 + starts.trailing_zeros() as usize);
        }
        end = w.leading_zeros() as usize;
    }
    None
}

/// Bit `j` set iff bits `j..j + n` of `x` are all set (`1 <= n <= 64`; runs do not wrap).
fn run_starts(mut x: u64, n: usize) -> u64 {
    // `x` marks starts of runs of `have` ones; and-ing with itself shifted by `step <= have` extends
    // that to `have + step` (the two runs overlap or touch), doubling each time.
    let mut have = 1;
    while have < n && x != 0 {
        let step = (n - have).min(have);
        x &= x >> step;
        have += step;
    }
    x
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A chunk with exactly the units in `free` free.
    fn chunk_with_free(free: impl IntoIterator<Item = core::ops::Range<usize>>) -> Chunk {
        let mut c = [u64::MAX; WORDS];
        for r in free {
            clear_range(&mut c, r.start, r.end);
        }
        c
    }

    fn naive_find(c: &Chunk, n: usize, align: usize, from: usize) -> Option<usize> {
        let free = |u: usize| c[u / 64] >> (u % 64) & 1 == 0;
        (from..=CHUNK_UNITS - n).find(|&s| s % align == 0 && (s..s + n).all(free))
    }

    fn naive_summary(c: &Chunk) -> (usize, usize, usize) {
        let free = |u: usize| c[u / 64] >> (u % 64) & 1 == 0;
        let start = (0..CHUNK_UNITS).take_while(|&u| free(u)).count();
        let end = (0..CHUNK_UNITS).rev().take_while(|&u| free(u)).count();
        let (mut max, mut run) = (0, 0);
        for u in 0..CHUNK_UNITS {
            run = if free(u) { run + 1 } else { 0 };
            max = max.max(run);
        }
        (start, max, end)
    }

    #[test]
    fn set_and_clear_across_word_boundaries() {
        let mut c = [0; WORDS];
        set_range(&mut c, 60, 130);
        assert_eq!(c[0], 0xF << 60);
        assert_eq!(c[1], u64::MAX);
        assert_eq!(c[2], 0b11);
        assert_eq!(first_in_use(&c, 0, 512), Some(60));
        assert_eq!(first_free(&c, 60, 512), Some(130));
        clear_range(&mut c, 63, 65);
        assert_eq!(first_free(&c, 60, 512), Some(63));
        assert_eq!(first_in_use(&c, 63, 512), Some(65));
        assert_eq!(first_in_use(&c, 63, 65), None);
        assert_eq!(first_in_use(&c, 62, 65), Some(62));
        set_range(&mut c, 0, 512);
        assert_eq!(c, [u64::MAX; WORDS]);
        clear_range(&mut c, 448, 512);
        assert_eq!(c[7], 0);
        assert_eq!(first_free(&c, 0, 448), None);
    }

    #[test]
    fn summaries_of_edge_patterns() {
        let s = summarize(&[0; WORDS]);
        assert_eq!((s.start(), s.max(), s.end()), (512, 512, 512));
        assert_eq!(summarize(&[u64::MAX; WORDS]), Sum::ZERO);
        let c = chunk_with_free([0..3, 63..129, 509..512]);
        let s = summarize(&c);
        assert_eq!((s.start(), s.max(), s.end()), (3, 66, 3));
        let c = chunk_with_free([10..20, 100..101]);
        let s = summarize(&c);
        assert_eq!((s.start(), s.max(), s.end()), (0, 10, 0));
        let c = chunk_with_free(core::iter::once(1..63));
        assert_eq!(summarize(&c).max(), 62);
    }

    #[test]
    fn find_respects_alignment_and_word_edges() {
        // Free: 5..70 (crosses word 0/1), 120..128 (ends at a word edge), 256..512.
        let c = chunk_with_free([5..70, 120..128, 256..512]);
        assert_eq!(find(&c, 1, 1, 0), Some(5));
        assert_eq!(find(&c, 65, 1, 0), Some(5));
        assert_eq!(find(&c, 66, 1, 0), Some(256));
        assert_eq!(find(&c, 6, 64, 0), Some(64));
        assert_eq!(find(&c, 7, 64, 0), Some(256));
        assert_eq!(find(&c, 8, 8, 0), Some(8));
        assert_eq!(find(&c, 8, 8, 63), Some(120));
        assert_eq!(find(&c, 256, 256, 0), Some(256));
        assert_eq!(find(&c, 256, 512, 0), None);
        assert_eq!(find(&c, 1, 1, 300), Some(300));
        assert_eq!(find(&c, 1, 1, 511), Some(511));
        assert_eq!(find(&c, 2, 1, 511), None);
        assert_eq!(find(&[0; WORDS], 512, 512, 0), Some(0));
        assert_eq!(find(&[u64::MAX; WORDS], 1, 1, 0), None);
    }

    #[test]
    fn run_starts_marks_runs_inside_a_word() {
        assert_eq!(run_starts(0b0111_0110, 2), 0b0011_0010);
        assert_eq!(run_starts(0b0111_0110, 3), 0b0001_0000);
        assert_eq!(run_starts(0b0111_0110, 4), 0);
        assert_eq!(run_starts(u64::MAX, 64), 1);
        assert_eq!(run_starts(u64::MAX, 63), 0b11);
        assert_eq!(run_starts(u64::MAX << 1, 63), 0b10);
        assert_eq!(run_starts(1 << 63, 1), 1 << 63);
        assert_eq!(run_starts(1 << 63, 2), 0, "runs must not wrap");
    }

    #[test]
    fn longest_zero_run_agrees_with_naive() {
        let naive = |w: u64| {
            let (mut best, mut run) = (0, 0);
            for b in 0..64 {
                run = if w >> b & 1 == 0 { run + 1 } else { 0 };
                best = best.max(run);
            }
            best
        };
        let mut x: u64 = 0x2545_F491_4F6C_DD1D;
        let mut words = vec![
            0,
            u64::MAX,
            1,
            1 << 63,
            0x5555_5555_5555_5555,
            0x8000_0000_0000_0001,
        ];
        for _ in 0..if cfg!(miri) { 50 } else { 2000 } {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            // Sparse and dense words alike: runs of every length.
            words.push(x);
            words.push(x & x.rotate_left(17) & x.rotate_left(40));
            words.push(x | x.rotate_left(9) | x.rotate_left(33));
        }
        for &w in &words {
            assert_eq!(longest_zero_run(w), naive(w), "word {w:#066b}");
        }
    }

    #[test]
    fn find_and_summarize_agree_with_naive_on_random_chunks() {
        let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
        let mut next = || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        let rounds = if cfg!(miri) { 20 } else { 400 };
        for _ in 0..rounds {
            // Mix dense and sparse words so runs of every length occur.
            let mut c = [0u64; WORDS];
            for w in c.iter_mut() {
                *w = match next() % 4 {
                    0 => 0,
                    1 => u64::MAX,
                    2 => next() & next(),
                    _ => next() | next(),
                };
            }
            let (s, m, e) = naive_summary(&c);
            let got = summarize(&c);
            assert_eq!((got.start(), got.max(), got.end()), (s, m, e), "{c:x?}");
            for _ in 0..8 {
                let n = 1 + (next() % if next() % 2 == 0 { 70 } else { 512 }) as usize;
                let align = 1 << (next() % 10);
                let from = (next() % 512) as usize;
                assert_eq!(
                    find(&c, n, align, from),
                    naive_find(&c, n, align, from),
                    "{c:x?} n {n} align {align} from {from}"
                );
            }
        }
    }
}
