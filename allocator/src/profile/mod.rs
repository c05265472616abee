//! Sampled heap profiling and sampled guard pages: the bookkeeping, apart from the heap.
//!
//! The heap (heap/sample.rs) decides *which* allocations are sampled with a per-CPU byte countdown
//! (cache.rs: one subtraction and one branch on the allocation fast path) and calls in here on the cold
//! path. This module holds what needs no heap: the bounded tables of the heap profile ([`table`]), the
//! pprof encoder ([`pprof`]), the frame-pointer walk ([`stack`]), the guard-page pool's bookkeeping
//! ([`guard`]) and the random sampling intervals ([`next_interval`]).
//!
//! Invariants:
//! - Every table here is fixed-size: sampling costs bounded memory whatever the program does. A sample
//!   that finds its table full is dropped and counted (`dropped`), never half-recorded.
//! - Nothing here allocates or locks: the heap keeps these structures in memory of its own, behind its
//!   own locks, and calls in with interrupts masked.

pub mod guard;
pub mod pprof;
pub mod stack;
pub mod table;

#[cfg(test)]
pub(crate) mod decode;

/// Go's `runtime.MemProfileRate` default: one sample per 512 KiB allocated, on average.
pub const DEFAULT_PROFILE_RATE: usize = 512 << 10;

/// The default guard-page interval: one small allocation per 16 MiB allocated (per CPU) gets a guarded page
/// (mapping and unmapping its page is the costly part of guard sampling).
pub const DEFAULT_GUARD_INTERVAL: usize = 16 << 20;

/// Return addresses kept per sampled call stack (deeper stacks are cut at the caller end).
pub const MAX_FRAMES: usize = 24;

/// Which side of its page a guarded object touches, i.e. which overrun faults at once.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GuardSide {
    /// The object ends at its page's end: an overflow past its last byte faults (KFENCE's default).
    Right,
    /// The object starts at its page's start: an underflow before its first byte faults.
    Left,
}

/// What a heap samples; all off by default ([`Sampling::OFF`]), [`Sampling::DEFAULT`] for the default
/// rates.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Sampling {
    /// Heap profile: on average one sample per this many bytes allocated (Go's `MemProfileRate`); 0 = off,
    /// 1 = every allocation.
    pub profile_rate: usize,
    /// Guard pages: one small allocation per this many bytes allocated on a CPU gets a page of its own
    /// next to an unmapped guard page; 0 = off, 1 = every small allocation while the pool has room.
    pub guard_interval: usize,
    /// Where a guarded object sits in its page.
    pub guard_side: GuardSide,
}

impl Sampling {
    /// Nothing sampled.
    pub const OFF: Sampling = Sampling {
        profile_rate: 0,
        guard_interval: 0,
        guard_side: GuardSide::Right,
    };
    /// Go's profile rate and the default guard interval, overflows caught.
    pub const DEFAULT: Sampling = Sampling {
        profile_rate: DEFAULT_PROFILE_RATE,
        guard_interval: DEFAULT_GUARD_INTERVAL,
        guard_side: GuardSide::Right,
    };
}

/// A small, fast pseudo-random generator (xorshift64*) for sampling intervals; never 0 inside.
#[derive(Clone, Copy, Debug)]
pub struct Rng(u64);

impl Rng {
    pub const fn new(seed: u64) -> Self {
        Rng(seed | 1)
    }

    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
}

/// Bytes until the next profile sample: exponentially distributed with mean `rate` (as Go's
/// `nextSample`), so every byte allocated is equally likely to be the sampled one and an object of `s`
/// bytes is sampled with probability `1 - exp(-s / rate)` (what [`pprof`] scales by). `rate <= 1`: 0
/// (sample everything).
pub fn next_interval(rate: usize, rng: &mut Rng) -> u64 {
    if rate <= 1 {
        return 0;
    }
    // u in (0, 1]: 53 random bits, plus one so that ln(u) is finite.
    let u = ((rng.next_u64() >> 11) + 1) as f64 / (1u64 << 53) as f64;
    let x = -ln(u) * rate as f64;
    // At most 64 times the mean (probability e^-64: never in practice), and a whole number of bytes.
    x.min(rate as f64 * 64.0) as u64
}

/// Natural logarithm of `x > 0` without `std` (core has no `f64::ln`): `x = m * 2^e` with `m` in
/// [sqrt(1/2), sqrt(2)), then `ln m = 2 atanh((m - 1) / (m + 1))` by its series (|z| < 0.172: ten terms
/// give far more precision than sampling needs).
pub fn ln(x: f64) -> f64 {
    debug_assert!(x > 0.0);
    let bits = x.to_bits();
    let mut e = ((bits >> 52) & 0x7ff) as i64 - 1023;
    let mut m = f64::from_bits((bits & ((1u64 << 52) - 1)) | (1023u64 << 52));
    if m > core::f64::consts::SQRT_2 {
        m /= 2.0;
        e += 1;
    }
    let z = (m - 1.0) / (m + 1.0);
    let z2 = z * z;
    let mut term = z;
    let mut sum = 0.0;
    let mut k = 1.0;
    for _ in 0..10 {
        sum += term / k;
        term *= z2;
        k += 2.0;
    }
    2.0 * sum + e as f64 * core::f64::consts::LN_2
}

/// `e^x` for `x <= 0` without `std`: `x = k ln 2 + r` with |r| <= ln2/2, `e^r` by its Taylor series.
pub fn exp_neg(x: f64) -> f64 {
    debug_assert!(x <= 0.0);
    if x < -700.0 {
        return 0.0;
    }
    let k = (x / core::f64::consts::LN_2 - 0.5) as i64; // rounds toward 0 from below: nearest-ish
    let r = x - k as f64 * core::f64::consts::LN_2;
    let mut term = 1.0;
    let mut sum = 1.0;
    for i in 1..20 {
        term *= r / i as f64;
        sum += term;
    }
    // 2^k for k in [-1010, 1]: build the exponent directly.
    sum * f64::from_bits(((k + 1023) as u64) << 52)
}

#[cfg(test)]
mod tests;
