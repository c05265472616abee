//! Deterministic randomness for the workloads, and talc's size and alignment distributions.
//!
//! Invariants: every generator is seeded explicitly (a run replays from its seed); nothing here allocates,
//! so drawing numbers inside a timed loop costs a few instructions and touches no allocator.

/// wyrand: one multiply-xor step per number, good enough for picking sizes and victims.
#[derive(Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        // Mixing the seed keeps small consecutive seeds (thread indices) from giving correlated streams.
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ 0xD1B5_4A32_D192_ED03)
    }

    #[inline]
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0xA076_1D64_78BD_642F);
        let t = u128::from(self.0) * u128::from(self.0 ^ 0xE703_7ED1_A0B4_28DB);
        (t as u64) ^ ((t >> 64) as u64)
    }

    /// Uniform in `lo..hi` (`lo < hi`), by multiply-shift: no division in the hot loops.
    #[inline]
    pub fn range(&mut self, lo: usize, hi: usize) -> usize {
        debug_assert!(lo < hi, "empty range {lo}..{hi}");
        let span = (hi - lo) as u64;
        lo + ((u128::from(self.next_u64()) * u128::from(span)) >> 64) as usize
    }

    /// Uniform in `0..n` (`n > 0`).
    #[inline]
    pub fn below(&mut self, n: usize) -> usize {
        self.range(0, n)
    }

    /// Fisher-Yates shuffle.
    pub fn shuffle<T>(&mut self, items: &mut [T]) {
        for i in (1..items.len()).rev() {
            let j = self.below(i + 1);
            items.swap(i, j);
        }
    }
}

/// talc's size distribution: U(4..U(16..max)). Biased toward small sizes, as programs are.
#[inline]
pub fn talc_size(rng: &mut Rng, max: usize) -> usize {
    let cap = rng.range(16, max);
    rng.range(4, cap.max(5))
}

/// talc's alignment distribution: 8 for 75% of blocks, 16 for 19%, 32 for 4%, ... up to 2048.
#[inline]
pub fn talc_align(rng: &mut Rng) -> usize {
    let bits = rng.next_u64() as u16;
    core::mem::align_of::<usize>() << (bits.trailing_zeros() / 2)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn range_stays_in_bounds_and_covers_it() {
        let mut r = Rng::new(1);
        let mut seen = [false; 7];
        for _ in 0..10_000 {
            let x = r.range(3, 10);
            assert!((3..10).contains(&x), "{x} outside 3..10");
            seen[x - 3] = true;
        }
        assert!(
            seen.iter().all(|&s| s),
            "some value of 3..10 never drawn: {seen:?}"
        );
    }

    #[test]
    fn talc_distributions_respect_their_bounds() {
        let mut r = Rng::new(7);
        for _ in 0..10_000 {
            let s = talc_size(&mut r, 200);
            assert!((4..200).contains(&s), "size {s}");
            let a = talc_align(&mut r);
            assert!(a.is_power_of_two() && (8..=2048).contains(&a), "align {a}");
        }
    }
}
