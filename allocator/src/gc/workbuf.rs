//! The grey stack (Go's workbufs): addresses of marked objects still to be scanned, in one-page chunks
//! taken from the page heap, so marking needs no allocator of its own and no fixed limit.
//!
//! Invariants:
//! - `top` is the newest chunk; it holds `len` entries, every older chunk is full.
//! - `push` fails (returns false) only when no page can be had, or `limit` chunks are in use; the marker
//!   then falls back to rescanning (mark.rs).
//! - At most one empty chunk is kept as `spare` (a push/pop pair at a chunk boundary must not allocate
//!   and free a page each time); the rest go back to the page heap when emptied.

use core::ptr::NonNull;

use super::spans::{GcSpan, SpanSource};
use crate::addr::{PageCount, VirtAddr, PAGE_SIZE};
use crate::sizeclass::{SizeClass, SpanClass};
use crate::span::Span;

const CAP: usize = (PAGE_SIZE - 2 * 8) / 8;

#[repr(C)]
struct Chunk {
    prev: Option<NonNull<Chunk>>,
    span: NonNull<Span>,
    entries: [VirtAddr; CAP],
}

const _: () = assert!(core::mem::size_of::<Chunk>() == PAGE_SIZE);

pub(crate) struct GreyStack {
    top: Option<NonNull<Chunk>>,
    len: usize,
    spare: Option<NonNull<Chunk>>,
    /// Chunks in use (the spare not counted), and how many may be (tests force overflows with it).
    chunks: usize,
    pub(crate) limit: usize,
}

impl GreyStack {
    pub(crate) const fn new() -> Self {
        Self {
            top: None,
            len: 0,
            spare: None,
            chunks: 0,
            limit: usize::MAX,
        }
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.top.is_none()
    }

    /// Pushes `obj`; false only when no page can be had for a new chunk.
    #[inline]
    pub(crate) fn push(&mut self, obj: VirtAddr, source: &dyn SpanSource) -> bool {
        match self.top {
            Some(top) if self.len < CAP => {
                // SAFETY: `top` is a chunk we own (invariant) with room at `len`.
                unsafe { (*top.as_ptr()).entries[self.len] = obj };
                self.len += 1;
                true
            }
            _ => self.push_chunk(obj, source),
        }
    }

    #[cold]
    fn push_chunk(&mut self, obj: VirtAddr, source: &dyn SpanSource) -> bool {
        if self.chunks >= self.limit {
            return false;
        }
        let chunk = match self.spare.take() {
            Some(c) => c,
            None => {
                let class = SpanClass::new(SizeClass::LARGE, true);
                let Some(span) = source.alloc_span(class, PageCount(1), 0) else {
                    return false;
                };
                let c = span.base().as_mut_ptr::<Chunk>();
                // SAFETY: the page is ours, mapped and page aligned, the size of a Chunk. The chunk keeps
                // the span's handle (as a raw pointer) until it is freed.
                unsafe { (*c).span = span.into_raw() };
                // SAFETY: `c` is a page address, never null.
                unsafe { NonNull::new_unchecked(c) }
            }
        };
        // SAFETY: the chunk's page is ours; entries are plain addresses, any bits will do.
        unsafe {
            (*chunk.as_ptr()).prev = self.top;
            (*chunk.as_ptr()).entries[0] = obj;
        }
        self.top = Some(chunk);
        self.len = 1;
        self.chunks += 1;
        true
    }

    #[inline]
    pub(crate) fn pop(&mut self, source: &dyn SpanSource) -> Option<VirtAddr> {
        let top = self.top?;
        self.len -= 1;
        // SAFETY: `top` is ours and holds `len + 1` entries.
        let obj = unsafe { (*top.as_ptr()).entries[self.len] };
        if self.len == 0 {
            self.pop_chunk(top, source);
        }
        Some(obj)
    }

    #[cold]
    fn pop_chunk(&mut self, top: NonNull<Chunk>, source: &dyn SpanSource) {
        // SAFETY: `top` is ours; older chunks are full (invariant).
        self.top = unsafe { (*top.as_ptr()).prev };
        self.len = if self.top.is_some() { CAP } else { 0 };
        self.chunks -= 1;
        match self.spare.replace(top) {
            None => {}
            // SAFETY: the old spare is an empty chunk nobody refers to; it held its span's handle.
            Some(old) => source.free_span(unsafe { GcSpan::from_raw((*old.as_ptr()).span) }),
        }
    }

    /// Gives every chunk back (the stack must be empty or abandoned).
    pub(crate) fn release(&mut self, source: &dyn SpanSource) {
        while let Some(c) = self.top {
            // SAFETY: `c` is ours and held its span's handle; after this nobody refers to it.
            let span = unsafe {
                self.top = (*c.as_ptr()).prev;
                GcSpan::from_raw((*c.as_ptr()).span)
            };
            source.free_span(span);
        }
        self.len = 0;
        self.chunks = 0;
        if let Some(c) = self.spare.take() {
            // SAFETY: as above.
            source.free_span(unsafe { GcSpan::from_raw((*c.as_ptr()).span) });
        }
    }
}
