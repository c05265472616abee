//! Bad frees are caught and reported by name, at the free that makes them, in the kernel's default build:
//! a pointer the heap never gave out, a layout of another size class, double frees of large and small
//! objects, and an interior pointer of a small object.

use crate::heap::HEAP;
use crate::ktest::TestCtx;
use core::alloc::{GlobalAlloc, Layout};
use core::hint::black_box;

pub const FOREIGN_POINTER: &str = "not a live heap object";
pub const WRONG_LAYOUT: &str = "size class differs";
pub const DOUBLE_FREE_LARGE: &str = "not a live heap object";
pub const DOUBLE_FREE_SMALL: &str = "double free";
pub const INTERIOR_SMALL: &str = "interior pointer";

static NOT_FROM_THE_HEAP: [u64; 4] = [0; 4];

fn alloc(layout: Layout) -> *mut u8 {
    // SAFETY: the layouts used here have non-zero sizes.
    let p = unsafe { HEAP.alloc(layout) };
    assert!(!p.is_null(), "out of memory for {layout:?}");
    p
}

pub fn bad_free_foreign_pointer(_ctx: &mut TestCtx) {
    let p = black_box(NOT_FROM_THE_HEAP.as_ptr() as *mut u8);
    // SAFETY: deliberately not: the pointer is a static's; the heap must refuse it before touching it.
    unsafe { HEAP.dealloc(p, Layout::new::<[u64; 4]>()) };
}

pub fn bad_free_wrong_layout(_ctx: &mut TestCtx) {
    let p = alloc(Layout::from_size_align(64, 8).expect("layout"));
    // SAFETY: deliberately not: the layout's size (1 KiB) is another class than the allocation's (64 B).
    unsafe { HEAP.dealloc(p, Layout::from_size_align(1024, 8).expect("layout")) };
}

pub fn bad_free_double_large(_ctx: &mut TestCtx) {
    let layout = Layout::from_size_align(1 << 20, 8).expect("layout");
    let p = alloc(layout);
    // SAFETY: p is a live block of this layout.
    unsafe { HEAP.dealloc(p, layout) };
    // SAFETY: deliberately not: p was freed already; its span is gone, so the heap must refuse it.
    unsafe { HEAP.dealloc(black_box(p), layout) };
}

pub fn bad_free_double_small(_ctx: &mut TestCtx) {
    let layout = Layout::from_size_align(48, 8).expect("layout");
    let p = alloc(layout);
    // SAFETY: p is a live block of this layout.
    unsafe { HEAP.dealloc(p, layout) };
    // SAFETY: deliberately not: a second free of p. Its span is still in use, so the span map accepts it;
    // the free mark the first free left in it names it a double free, before anything changes.
    unsafe { HEAP.dealloc(black_box(p), layout) };
}

pub fn bad_free_interior_small(_ctx: &mut TestCtx) {
    let layout = Layout::from_size_align(64, 8).expect("layout");
    let p = alloc(layout);
    // SAFETY: deliberately not: p + 8 is inside the object, not its start.
    unsafe { HEAP.dealloc(black_box(p.wrapping_add(8)), layout) };
}
