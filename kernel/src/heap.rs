//! The kernel heap: spanalloc's [`Heap`] is the `#[global_allocator]`.
//!
//! Invariants:
//! - [`HEAP`] gets its memory once, from [`memory::take_over`](crate::memory::take_over); until then every
//!   allocation fails (null, then Rust's "memory allocation of N bytes failed" panic), so nothing may
//!   allocate before take-over.
//! - The heap masks interrupts around its own critical sections, so interrupt handlers may allocate.

use crate::platform::{KernelPlatform, PLATFORM};
use spanalloc::Heap;

/// The most the heap may grow to; its metadata is sized for this much (lazily mapped).
pub const HEAP_MAX_BYTES: usize = 64 << 30;

#[global_allocator]
pub static HEAP: Heap<KernelPlatform> = Heap::new(&PLATFORM);
