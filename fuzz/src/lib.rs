//! Helpers shared by the fuzz targets in `fuzz_targets/`.

use std::sync::OnceLock;

use spanalloc::host::{leak, HostMachine, HostPlatform};
use spanalloc::Heap;

/// Fake physical memory of the process-wide heap: room for the largest live set a target keeps
/// ([`MAX_LIVE_BYTES`]) several times over, so running out is never the input's fault.
pub const PHYS_BYTES: usize = 512 << 20;

/// Most bytes the heap target keeps live at once.
pub const MAX_LIVE_BYTES: usize = 64 << 20;

/// One heap per process, built on first use over the host platform. Building a machine per input would
/// leak a window reservation and a memfd each time (host machines are never torn down), so every input
/// runs on this heap, and each target leaves it as it found it (everything freed) at the end of an input.
pub fn heap() -> &'static Heap<HostPlatform> {
    static HEAP: OnceLock<&'static Heap<HostPlatform>> = OnceLock::new();
    HEAP.get_or_init(|| {
        let m = HostMachine::new(PHYS_BYTES, 4 << 30);
        let heap: &'static Heap<HostPlatform> = leak(Heap::new(m.platform));
        heap.init(m.space, m.window, 2 << 30)
            .unwrap_or_else(|e| panic!("fuzz: heap init: {e:?}"));
        heap
    })
}

/// Length of the block an object's pattern repeats: a prime, so a copy shifted by anything but a
/// multiple of it (or from another object) shows.
const PERIOD: usize = 251;

/// The pattern block of the object with identity `id` (different for every id).
fn block(id: u64) -> [u8; PERIOD] {
    let mut x = id.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    std::array::from_fn(|i| {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        (x >> 32) as u8 ^ i as u8
    })
}

/// Fills `bytes` with `id`'s pattern. Block copies and compares rather than a loop over bytes: the
/// fuzzer instruments every comparison, and a byte loop made checking contents most of a run.
pub fn fill(bytes: &mut [u8], id: u64) {
    let b = block(id);
    for chunk in bytes.chunks_mut(PERIOD) {
        chunk.copy_from_slice(&b[..chunk.len()]);
    }
}

/// The first byte of `bytes` that differs from `id`'s pattern, if any.
pub fn first_corrupt(bytes: &[u8], id: u64) -> Option<usize> {
    let b = block(id);
    let (k, chunk) = bytes
        .chunks(PERIOD)
        .enumerate()
        .find(|(_, c)| *c != &b[..c.len()])?;
    let i = chunk.iter().zip(&b).position(|(x, y)| x != y).unwrap();
    Some(k * PERIOD + i)
}
