//! The heap profile in pprof's protobuf format (github.com/google/pprof, proto/profile.proto), written
//! into a caller's buffer: what `go tool pprof` reads (raw or gzipped).
//!
//! Sample types, as Go's heap profile: `alloc_objects`/count, `alloc_space`/bytes, `inuse_objects`/count,
//! `inuse_space`/bytes; period type `space`/bytes with the sampling rate as period. One sample per bucket
//! (call stack and size), its values scaled by Go's formula for Poisson sampling: an object of `s` bytes
//! is sampled with probability `1 - exp(-s / rate)`, so each sample counts `1 / (1 - exp(-s / rate))`
//! objects (no scaling at rate 1: every allocation is sampled), `rate` being the one the bucket's samples
//! were taken at (the period is the current rate: a change of it rescales nothing already sampled). Each
//! sample carries the numeric label
//! `bytes` = the object size (the heap records a small object's size class size, as Go does).
//!
//! Locations: one per frame of each bucket (pprof merges equal addresses when it symbolizes), at the
//! return address minus one, so that a call that ends its function is attributed to it. With a
//! [`Mapping`] every location points at it, and `go tool pprof BINARY PROFILE` symbolizes them.
//!
//! Invariant: the writer never writes past the buffer; when the profile does not fit, it says how many
//! bytes it needs and the buffer's contents are unspecified.

use super::table::Bucket;
use super::MAX_FRAMES;

/// The executable the profile's addresses belong to: addresses in `[start, limit)` are at file offset
/// `offset + (address - start)` of `file`.
#[derive(Clone, Copy, Debug)]
pub struct Mapping<'a> {
    pub start: u64,
    pub limit: u64,
    pub offset: u64,
    pub file: &'a str,
}

/// What a profile needs besides the tables.
#[derive(Clone, Copy, Debug)]
pub struct Header<'a> {
    /// The sampling rate in bytes now (the profile's period); each bucket's values are scaled by the
    /// rate its samples were taken at ([`Bucket::rate`]).
    pub rate: usize,
    pub mapping: Option<Mapping<'a>>,
    /// A regular expression pprof uses to cut the allocator's own frames off each stack (field
    /// `drop_frames`: frames whose function fully matches are dropped with everything they call).
    pub drop_frames: &'a str,
}

/// Frames the heap's own functions occupy in every sampled stack: dropped by pprof (see [`Header`]).
pub const DROP_FRAMES: &str = ".*spanalloc::.*|.*__rust_alloc.*|.*__rust_realloc.*|.*__rg_alloc.*|.*__rg_realloc.*|.*__rdl_alloc.*";

const STRINGS: [&str; 9] = [
    "",
    "alloc_objects",
    "count",
    "alloc_space",
    "bytes",
    "inuse_objects",
    "inuse_space",
    "space",
    "bytes",
];
const S_BYTES: u64 = 4;
const S_SPACE: u64 = 7;
/// Index of the mapping's file name, then of `drop_frames`.
const S_FILE: u64 = STRINGS.len() as u64;
const S_DROP: u64 = S_FILE + 1;

struct Out<'a> {
    buf: &'a mut [u8],
    len: usize,
}

impl Out<'_> {
    fn byte(&mut self, b: u8) {
        if let Some(slot) = self.buf.get_mut(self.len) {
            *slot = b;
        }
        self.len += 1;
    }
    fn bytes(&mut self, b: &[u8]) {
        if let Some(dst) = self.buf.get_mut(self.len..self.len + b.len()) {
            dst.copy_from_slice(b);
        }
        self.len += b.len();
    }
    fn varint(&mut self, mut v: u64) {
        while v >= 0x80 {
            self.byte(v as u8 | 0x80);
            v >>= 7;
        }
        self.byte(v as u8);
    }
    fn key(&mut self, field: u32, wire: u8) {
        self.varint(((field as u64) << 3) | wire as u64);
    }
    fn uint(&mut self, field: u32, v: u64) {
        self.key(field, 0);
        self.varint(v);
    }
    fn len_delim(&mut self, field: u32, b: &[u8]) {
        self.key(field, 2);
        self.varint(b.len() as u64);
        self.bytes(b);
    }
}

/// A submessage built in a stack buffer (the largest, a sample, needs under 400 bytes).
struct Scratch {
    buf: [u8; 512],
    len: usize,
}

impl Scratch {
    fn new() -> Self {
        Scratch {
            buf: [0; 512],
            len: 0,
        }
    }
    fn out(&mut self) -> Out<'_> {
        Out {
            buf: &mut self.buf[self.len..],
            len: 0,
        }
    }
    /// Runs `f` on a writer that appends to the scratch buffer.
    fn with(&mut self, f: impl FnOnce(&mut Out<'_>)) {
        let mut o = self.out();
        f(&mut o);
        let n = o.len;
        assert!(self.len + n <= self.buf.len(), "pprof: scratch overflow");
        self.len += n;
    }
    fn get(&self) -> &[u8] {
        &self.buf[..self.len]
    }
}

/// Go's `scaleHeapSample`: (objects, bytes) estimated from `count` samples of `size` bytes each.
pub fn scale(count: u64, size: u64, rate: usize) -> (i64, i64) {
    if count == 0 || size == 0 {
        return (0, 0);
    }
    let bytes = count.saturating_mul(size);
    if rate <= 1 {
        return (count as i64, bytes as i64);
    }
    let x = size as f64 / rate as f64;
    // 1 - e^-x, accurately for small x (the series) and directly otherwise.
    let p = if x < 1e-3 {
        x - x * x / 2.0 + x * x * x / 6.0
    } else {
        1.0 - super::exp_neg(-x)
    };
    let s = 1.0 / p;
    ((count as f64 * s) as i64, (bytes as f64 * s) as i64)
}

fn value_type(o: &mut Out<'_>, field: u32, ty: u64, unit: u64) {
    let mut s = Scratch::new();
    s.with(|m| {
        m.uint(1, ty);
        m.uint(2, unit);
    });
    o.len_delim(field, s.get());
}

fn sample(o: &mut Out<'_>, index: usize, b: &Bucket) {
    let rate = usize::try_from(b.rate).unwrap_or(usize::MAX);
    let (ao, ab) = scale(b.allocs, b.size, rate);
    let (io, ib) = scale(b.allocs - b.frees, b.size, rate);
    let mut ids = Scratch::new();
    ids.with(|m| {
        for k in 0..b.depth as usize {
            m.varint(location_id(index, k));
        }
    });
    let mut values = Scratch::new();
    values.with(|m| {
        for v in [ao, ab, io, ib] {
            m.varint(v as u64);
        }
    });
    let mut label = Scratch::new();
    label.with(|m| {
        m.uint(1, S_BYTES);
        m.uint(3, b.size);
    });
    let mut s = Scratch::new();
    s.with(|m| {
        m.len_delim(1, ids.get());
        m.len_delim(2, values.get());
        m.len_delim(3, label.get());
    });
    o.len_delim(2, s.get());
}

fn location_id(bucket: usize, frame: usize) -> u64 {
    (bucket * MAX_FRAMES + frame + 1) as u64
}

/// Writes the profile of `tables` into `out`: `Ok(bytes written)`, or `Err(bytes needed)` when `out` is
/// too small (then write again into a buffer of that size, after no further sampling, to get it all).
pub fn encode<'b>(
    buckets: impl Iterator<Item = &'b Bucket> + Clone,
    header: &Header<'_>,
    out: &mut [u8],
) -> Result<usize, usize> {
    let mut o = Out { buf: out, len: 0 };
    value_type(&mut o, 1, 1, 2);
    value_type(&mut o, 1, 3, 4);
    value_type(&mut o, 1, 5, 2);
    value_type(&mut o, 1, 6, 4);
    for (i, b) in buckets.clone().enumerate() {
        sample(&mut o, i, b);
    }
    if let Some(m) = header.mapping {
        let mut s = Scratch::new();
        s.with(|w| {
            w.uint(1, 1);
            w.uint(2, m.start);
            w.uint(3, m.limit);
            w.uint(4, m.offset);
            w.uint(5, S_FILE);
        });
        o.len_delim(3, s.get());
    }
    for (i, b) in buckets.clone().enumerate() {
        for (k, &pc) in b.frames[..b.depth as usize].iter().enumerate() {
            let addr = pc.saturating_sub(1);
            let mut s = Scratch::new();
            s.with(|w| {
                w.uint(1, location_id(i, k));
                if header
                    .mapping
                    .is_some_and(|m| m.start <= addr && addr < m.limit)
                {
                    w.uint(2, 1);
                }
                w.uint(3, addr);
            });
            o.len_delim(4, s.get());
        }
    }
    for s in STRINGS {
        o.len_delim(6, s.as_bytes());
    }
    o.len_delim(6, header.mapping.map_or("", |m| m.file).as_bytes());
    o.len_delim(6, header.drop_frames.as_bytes());
    if !header.drop_frames.is_empty() {
        o.uint(7, S_DROP);
    }
    value_type(&mut o, 11, S_SPACE, S_BYTES);
    o.uint(12, header.rate as u64);
    if o.len <= o.buf.len() {
        Ok(o.len)
    } else {
        Err(o.len)
    }
}
