//! The heap profile's tables: buckets (one per call stack and size, as Go's `memRecord` buckets, and
//! sampling rate) with their allocation and free counts, and the live sampled objects (address -> bucket), so that a free
//! of a sampled object is counted against the stack that allocated it.
//!
//! Invariants:
//! - Fixed capacity ([`BUCKETS`], [`LIVE`]); open addressing with linear probing. Buckets are never
//!   removed (Go keeps them too); live entries are removed with backward-shift deletion, so a probe
//!   sequence never crosses an empty slot.
//! - `frees <= allocs` in every bucket: a free is only counted for an address [`Tables::remove_live`]
//!   found, which [`Tables::record`] put there with its bucket.
//! - All-zero memory is an empty table (the heap hands in zeroed pages).

use super::MAX_FRAMES;

/// Distinct (call stack, size) pairs the profile can hold.
pub const BUCKETS: usize = 1024;
/// Sampled objects that can be live at once.
pub const LIVE: usize = 4096;

/// What kind of sampled object a live entry is: how the heap gives it back.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Kind {
    /// A small object the heap placed alone in a one-page large span (so its free misses the fast path).
    Small = 1,
    /// A large object (its own span anyway).
    Large = 2,
    /// A small object in a guard-pool page (guard.rs), sampled for the profile as well.
    Guarded = 3,
}

/// One call stack and size with its counts, sampled at one rate.
#[derive(Clone, Copy, Debug)]
#[repr(C)]
pub struct Bucket {
    /// 0: empty slot (a real hash is forced non-zero).
    pub hash: u64,
    pub size: u64,
    /// The profile rate its samples were taken at, which the profile scales them by: the rate may
    /// change later (pprof.rs).
    pub rate: u64,
    pub allocs: u64,
    pub frees: u64,
    pub depth: u32,
    pub frames: [u64; MAX_FRAMES],
}

#[derive(Clone, Copy, Debug)]
#[repr(C)]
struct Live {
    /// 0: empty slot.
    addr: u64,
    bucket: u32,
    kind: u8,
}

/// The profile's tables. Lives in zeroed memory (see the invariants).
#[repr(C)]
pub struct Tables {
    buckets: [Bucket; BUCKETS],
    live: [Live; LIVE],
    /// Samples not recorded because a table was full.
    pub dropped: u64,
    /// Buckets in use.
    pub nbuckets: usize,
    /// Live entries in use.
    pub nlive: usize,
}

/// Why a sample could not be recorded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Full {
    Buckets,
    Live,
}

fn stack_hash(size: u64, frames: &[u64]) -> u64 {
    let mut h = size.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ frames.len() as u64;
    for &f in frames {
        h = (h ^ f).wrapping_mul(0x0000_0100_0000_01B3).rotate_left(29);
    }
    h | 1
}

fn addr_slot(addr: u64) -> usize {
    ((addr >> 3).wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 40) as usize % LIVE
}

impl Tables {
    /// A fresh table on the host (tests): boxed, as it is large.
    #[cfg(test)]
    pub fn boxed() -> std::boxed::Box<Tables> {
        // SAFETY: all-zero is a valid, empty `Tables` (integers and arrays of them).
        unsafe { std::boxed::Box::new_zeroed().assume_init() }
    }

    /// Bytes a `Tables` takes (the heap maps this much, zeroed).
    pub const BYTES: usize = core::mem::size_of::<Tables>();

    /// Whether a live entry can be added: the heap asks before it places a sampled small object.
    pub fn has_room(&self) -> bool {
        self.nlive < LIVE * 3 / 4 && self.nbuckets < BUCKETS * 3 / 4
    }

    /// Records a sampled allocation of `size` bytes at `addr`, sampled at profile rate `rate`, with call
    /// stack `frames` (innermost first): its bucket's `allocs` grows and the address becomes live. A full
    /// table drops the sample (counted).
    pub fn record(
        &mut self,
        addr: u64,
        size: u64,
        rate: u64,
        frames: &[u64],
        kind: Kind,
    ) -> Result<(), Full> {
        debug_assert!(addr != 0);
        if self.nlive >= LIVE * 3 / 4 {
            self.dropped += 1;
            return Err(Full::Live);
        }
        let frames = &frames[..frames.len().min(MAX_FRAMES)];
        let Some(b) = self.bucket(size, rate, frames) else {
            self.dropped += 1;
            return Err(Full::Buckets);
        };
        self.buckets[b].allocs += 1;
        let mut i = addr_slot(addr);
        while self.live[i].addr != 0 {
            debug_assert!(
                self.live[i].addr != addr,
                "profile: {addr:#x} recorded twice"
            );
            i = (i + 1) % LIVE;
        }
        self.live[i] = Live {
            addr,
            bucket: b as u32,
            kind: kind as u8,
        };
        self.nlive += 1;
        Ok(())
    }

    /// The bucket of (`size`, `rate`, `frames`), created if missing; `None` when the bucket table is full.
    fn bucket(&mut self, size: u64, rate: u64, frames: &[u64]) -> Option<usize> {
        let hash = stack_hash(size, frames);
        let mut i = (hash >> 32) as usize % BUCKETS;
        loop {
            let b = &self.buckets[i];
            if b.hash == 0 {
                break;
            }
            if b.hash == hash
                && b.size == size
                && b.rate == rate
                && b.frames[..b.depth as usize] == *frames
            {
                return Some(i);
            }
            i = (i + 1) % BUCKETS;
        }
        if self.nbuckets >= BUCKETS * 3 / 4 {
            return None;
        }
        let b = &mut self.buckets[i];
        b.hash = hash;
        b.size = size;
        b.rate = rate;
        b.depth = frames.len() as u32;
        b.frames[..frames.len()].copy_from_slice(frames);
        self.nbuckets += 1;
        Some(i)
    }

    /// The kind and size of the live sampled object at `addr`, if it is one.
    pub fn live(&self, addr: u64) -> Option<(Kind, u64)> {
        self.find(addr).map(|i| {
            let e = &self.live[i];
            (kind(e.kind), self.buckets[e.bucket as usize].size)
        })
    }

    /// The call stack recorded for the live sampled object at `addr`.
    pub fn live_stack(&self, addr: u64) -> Option<&[u64]> {
        let b = &self.buckets[self.live[self.find(addr)?].bucket as usize];
        Some(&b.frames[..b.depth as usize])
    }

    fn find(&self, addr: u64) -> Option<usize> {
        if addr == 0 {
            return None;
        }
        let mut i = addr_slot(addr);
        loop {
            match self.live[i].addr {
                0 => return None,
                a if a == addr => return Some(i),
                _ => i = (i + 1) % LIVE,
            }
        }
    }

    /// Counts the free of the live sampled object at `addr` and forgets it; its kind, or `None` (and
    /// nothing changes) if `addr` is not one.
    pub fn remove_live(&mut self, addr: u64) -> Option<Kind> {
        let mut hole = self.find(addr)?;
        let entry = self.live[hole];
        self.buckets[entry.bucket as usize].frees += 1;
        self.nlive -= 1;
        // Backward-shift deletion: pull later members of the probe run into the hole when their home
        // slot does not lie (cyclically) after the hole.
        let mut j = hole;
        loop {
            j = (j + 1) % LIVE;
            let a = self.live[j].addr;
            if a == 0 {
                break;
            }
            let home = addr_slot(a);
            let dist_home = (j + LIVE - home) % LIVE;
            let dist_hole = (j + LIVE - hole) % LIVE;
            if dist_home >= dist_hole {
                self.live[hole] = self.live[j];
                hole = j;
            }
        }
        self.live[hole] = Live {
            addr: 0,
            bucket: 0,
            kind: 0,
        };
        Some(kind(entry.kind))
    }

    /// The buckets in use.
    pub fn buckets(&self) -> impl Iterator<Item = &Bucket> + Clone {
        self.buckets.iter().filter(|b| b.hash != 0)
    }
}

fn kind(raw: u8) -> Kind {
    match raw {
        1 => Kind::Small,
        2 => Kind::Large,
        _ => Kind::Guarded,
    }
}
