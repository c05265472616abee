//! Kernel stacks for the application processors, each with an unmapped guard page below it, in a 512 GiB
//! region of their own (one free P4 entry of the higher half, not the heap's window).
//!
//! Invariants:
//! - Stacks are carved upward from the region's base: `[guard][stack pages]`, each guard page never mapped,
//!   so running off the bottom of a stack is a page fault (then a double fault on its IST stack), not a
//!   silent write into the neighbour.
//! - The pages are mapped through the heap's address space (frames from its frame allocator, counted in its
//!   frames held) and never unmapped: an AP runs until the machine stops.
//! - [`REGION`] is only touched under its lock; the mapping itself under the heap lock.

use crate::heap::HEAP;
use spanalloc::addr::{Page, PageTableFlags, VirtAddr, FRAME_SIZE};
use spanalloc::paging::{Mapper, P4_ENTRY_SPAN};
use spin::Mutex;

/// Pages of one AP stack (64 KiB; the tests recurse little, but formatting panics need room).
pub const STACK_PAGES: u64 = 16;

struct Region {
    next: VirtAddr,
    end: VirtAddr,
}

static REGION: Mutex<Option<Region>> = Mutex::new(None);

/// Why a stack could not be had.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StackError {
    /// The heap (whose address space maps the stacks) is not initialized, or [`init`] did not run.
    NotReady,
    NoFreeP4Entry,
    RegionFull,
    OutOfFrames {
        pages: u64,
    },
}

impl core::fmt::Display for StackError {
    fn fmt(&self, f: &mut core::fmt::Formatter) -> core::fmt::Result {
        match self {
            Self::NotReady => write!(
                f,
                "smp: AP stacks asked for before the heap and stack region exist"
            ),
            Self::NoFreeP4Entry => {
                write!(f, "smp: no free P4 entry in the higher half for AP stacks")
            }
            Self::RegionFull => write!(f, "smp: the AP stack region is full"),
            Self::OutOfFrames { pages } => {
                write!(f, "smp: out of frames for an AP stack of {pages} pages")
            }
        }
    }
}

/// The first free P4 entry of the higher half other than `avoid` (the heap's window, which may still be
/// empty if the heap has mapped nothing yet).
fn free_slot(mapper: &Mapper, avoid: VirtAddr) -> Option<VirtAddr> {
    let one = mapper.free_p4_range(true, 1)?;
    if one != avoid {
        return Some(one);
    }
    // `avoid` is the first free entry: the first run of two starts there or later, and then holds neither.
    let two = mapper.free_p4_range(true, 2)?;
    Some(if two == avoid {
        two + P4_ENTRY_SPAN
    } else {
        two
    })
}

/// Reserves the region. `heap_window` is the heap's window base, to stay out of it.
pub fn init(heap_window: VirtAddr) -> Result<(), StackError> {
    // SAFETY: reads the page tables only.
    let base = unsafe { HEAP.with_address_space(|space| free_slot(&space.mapper, heap_window)) }
        .ok_or(StackError::NotReady)?
        .ok_or(StackError::NoFreeP4Entry)?;
    *REGION.lock() = Some(Region {
        next: base,
        end: base + P4_ENTRY_SPAN,
    });
    Ok(())
}

/// Maps a stack of [`STACK_PAGES`] pages above an unmapped guard page; returns its top (16-byte aligned).
pub fn allocate() -> Result<VirtAddr, StackError> {
    let mut region = REGION.lock();
    let region = region.as_mut().ok_or(StackError::NotReady)?;
    let bytes = (STACK_PAGES + 1) * FRAME_SIZE;
    if region.end - region.next < bytes {
        return Err(StackError::RegionFull);
    }
    let guard = region.next;
    let first = Page::containing_address(guard + FRAME_SIZE);
    let flags = PageTableFlags::PRESENT | PageTableFlags::WRITABLE | PageTableFlags::NO_EXECUTE;
    // SAFETY: maps fresh frames in the stack region, a top-level entry of its own outside the heap's
    // window (`init`).
    unsafe { HEAP.with_address_space(|space| space.map_range(first, STACK_PAGES, flags, true)) }
        .ok_or(StackError::NotReady)?
        .map_err(|_| StackError::OutOfFrames { pages: STACK_PAGES })?;
    region.next = guard + bytes;
    Ok(guard + bytes)
}
