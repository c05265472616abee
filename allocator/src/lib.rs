#![doc = include_str!("../README.md")]
//!
//! ## Modules
//!
//! Layers, bottom up (see ARCHITECTURE.md in the repository):
//! - [`addr`]: typed addresses and units (frames, heap pages, counts).
//! - [`platform`]: the small trait a kernel (or the host, for tests) implements; [`platforms`]: ready ones.
//! - [`pagealloc`]: bitmap + radix tree of summaries that finds N contiguous free units without scanning;
//!   used for physical frames and for heap pages alike.
//! - [`frames`]: the physical frame allocator built from the boot memory map.
//! - [`paging`]: the 4-level page-table mapper.
//! - [`arena`]: the reserved virtual window the heap takes its arenas from.
//! - [`sizeclass`]: Go's 67 size classes, generated at compile time, with O(1) lookup.
//! - [`span`]: spans (runs of pages holding objects of one class) and their intrusive lists.
//! - `meta`, `pageheap`, `spanmap`: metadata, the page heap (Go's mheap) and the page -> span map.
//! - `central`, `cache`: per-class central lists and per-CPU caches (the fast path lives in cache.rs);
//!   `freemark`: the marks on free objects that let every free be checked.
//! - [`heap`]: [`Heap`], the `GlobalAlloc`; [`stats`]: its counters.
//! - [`takeover`]: boot memory map to running heap in one call; `bootloader` (feature `bootloader`): the
//!   same from `bootloader_api`'s `BootInfo`; [`share`]: the kernel's frames and mappings after take-over.
//! - `gc` (feature `gc`): a garbage-collected heap on the same spans and page heap.
#![cfg_attr(not(any(test, feature = "std")), no_std)]
#![deny(unsafe_op_in_unsafe_fn)]

pub mod addr;
pub mod arena;
#[cfg(feature = "bootloader")]
pub mod bootloader;
mod cache;
mod central;
pub mod frames;
mod freemark;
#[cfg(any(test, feature = "gc"))]
pub mod gc;
pub mod heap;
mod meta;
pub mod pagealloc;
pub mod pageheap;
pub mod paging;
pub mod platform;
#[cfg(target_arch = "x86_64")]
pub mod platforms;
pub mod share;
pub mod sizeclass;
pub mod span;
mod spanmap;
pub mod stats;
pub mod takeover;

#[cfg(test)]
mod differential;
#[cfg(any(test, feature = "host"))]
pub mod host;
#[cfg(test)]
mod testing;

pub use addr::{FrameCount, PageCount, PhysAddr, PhysFrame, VirtAddr, FRAME_SIZE, PAGE_SIZE};
pub use heap::Heap;
pub use pageheap::{InitError, RegionInfo};
pub use platform::{Platform, MAX_CPUS};
pub use stats::Stats;
#[cfg(target_arch = "x86_64")]
pub use takeover::take_over;
pub use takeover::{Limits, TakeOver, TakeOverError, TakeOverPlatform};
