//! The grey stack (Go's workbufs): addresses of marked objects still to be scanned, in one-page chunks
//! taken from the page heap, so marking needs no allocator of its own and no fixed limit.
//!
//! Invariants:
//! - `top` is the newest chunk; it holds `len` entries, every older chunk is full.
//! - `push` fails (returns false) only when no page can be had, or `limit` chunks are in use; the marker
//!   then falls back to rescanning (mark.rs).
//! - At most one empty chunk is kept as `spare` (a push/pop pair at a chunk boundary must not allocate
//!   and free a page each time); the rest go back to the page heap when emptied.
//! - Chunk memory is reached only through [`ChunkPtr`], the one owning handle of a chunk (like `GcSpan`
//!   for spans): the stack's logic above it is safe code.

use core::ops::{Deref, DerefMut};
use core::ptr::NonNull;

use super::spans::{GcSpan, SpanSource};
use crate::addr::{PageCount, VirtAddr, PAGE_SIZE};
use crate::sizeclass::{SizeClass, SpanClass};

const CAP: usize = (PAGE_SIZE - 3 * 8) / 8;

/// One page of grey entries; it holds the handle of its own span.
#[repr(C)]
struct Chunk {
    prev: Option<ChunkPtr>,
    span: GcSpan,
    /// Entries in use while the chunk is in a [`Pool`] (the stack keeps its top's count in `len`).
    len: usize,
    entries: [VirtAddr; CAP],
}

const _: () = assert!(core::mem::size_of::<Chunk>() == PAGE_SIZE);

/// The owning handle of a chunk: made from a fresh span by `new`, given back by `free`; exactly one
/// exists per chunk (moved between `top`, `prev` links and `spare`, never copied).
struct ChunkPtr(NonNull<Chunk>);

// SAFETY: the handle owns its page exclusively (like a `Box`), so moving it to another CPU moves that
// ownership; the page holds addresses only. Parallel markers hand chunks over through a `Pool`.
unsafe impl Send for ChunkPtr {}

impl ChunkPtr {
    /// A chunk in the page of `span` (a fresh one-page span of the collector's own).
    fn new(span: GcSpan) -> ChunkPtr {
        let c = NonNull::new(span.base().as_mut_ptr::<Chunk>()).expect("gc: span at address 0");
        // SAFETY: the span's page is mapped, page aligned, the size of a Chunk, and ours alone (we hold
        // the span's only handle, moved into the chunk here). Every byte is written, so the chunk is
        // fully initialized before any reference to it is made.
        unsafe {
            c.as_ptr().cast::<u8>().write_bytes(0, PAGE_SIZE);
            core::ptr::addr_of_mut!((*c.as_ptr()).span).write(span);
        }
        ChunkPtr(c)
    }

    /// Gives the chunk's page back to the page heap.
    fn free(self, source: &dyn SpanSource) {
        // SAFETY: the chunk is ours (its only handle is consumed here) and initialized; its span handle
        // is moved out, and nothing touches the chunk's memory after this.
        let span = unsafe { core::ptr::addr_of!((*self.0.as_ptr()).span).read() };
        source.free_span(span);
    }
}

impl Deref for ChunkPtr {
    type Target = Chunk;
    fn deref(&self) -> &Chunk {
        // SAFETY: an initialized chunk (`new`) reached through its only handle.
        unsafe { self.0.as_ref() }
    }
}

impl DerefMut for ChunkPtr {
    fn deref_mut(&mut self) -> &mut Chunk {
        // SAFETY: as in `deref`; `&mut self` makes this the only reference.
        unsafe { &mut *self.0.as_ptr() }
    }
}

pub(crate) struct GreyStack {
    top: Option<ChunkPtr>,
    len: usize,
    spare: Option<ChunkPtr>,
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
        match &mut self.top {
            Some(top) if self.len < CAP => {
                top.entries[self.len] = obj;
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
        let mut chunk = match self.spare.take() {
            Some(c) => c,
            None => {
                let class = SpanClass::new(SizeClass::LARGE, true);
                let Some(span) = source.alloc_span(class, PageCount(1), 0) else {
                    return false;
                };
                ChunkPtr::new(span)
            }
        };
        chunk.prev = self.top.take();
        chunk.entries[0] = obj;
        self.top = Some(chunk);
        self.len = 1;
        self.chunks += 1;
        true
    }

    #[inline]
    pub(crate) fn pop(&mut self, source: &dyn SpanSource) -> Option<VirtAddr> {
        let top = self.top.as_ref()?;
        self.len -= 1;
        let obj = top.entries[self.len];
        if self.len == 0 {
            self.pop_chunk(source);
        }
        Some(obj)
    }

    #[cold]
    fn pop_chunk(&mut self, source: &dyn SpanSource) {
        let mut top = self.top.take().expect("a chunk to pop");
        self.top = top.prev.take();
        self.len = if self.top.is_some() { CAP } else { 0 };
        self.chunks -= 1;
        if let Some(old) = self.spare.replace(top) {
            old.free(source);
        }
    }

    /// Takes the top chunk off the stack with its entries (for a [`Pool`]); `None` when empty.
    fn take_top(&mut self) -> Option<ChunkPtr> {
        let mut top = self.top.take()?;
        top.len = self.len;
        self.top = top.prev.take();
        self.len = if self.top.is_some() { CAP } else { 0 };
        self.chunks -= 1;
        Some(top)
    }

    /// Makes `chunk` (from a [`Pool`], not empty) the stack's only chunk; the stack must be empty.
    fn adopt(&mut self, chunk: ChunkPtr) {
        debug_assert!(self.top.is_none() && chunk.len > 0 && chunk.prev.is_none());
        self.len = chunk.len;
        self.top = Some(chunk);
        self.chunks += 1;
    }

    /// Entries in the stack's chunks under the top one (all full).
    fn has_older(&self) -> bool {
        self.top.as_ref().is_some_and(|t| t.prev.is_some())
    }

    /// Takes the older half of the top chunk's entries into a chunk of their own (work to share); `None`
    /// when the top holds fewer than 2 entries or no page can be had.
    fn split(&mut self, source: &dyn SpanSource) -> Option<ChunkPtr> {
        if self.len < 2 {
            return None;
        }
        let mut chunk = match self.spare.take() {
            Some(c) => c,
            None => {
                let class = SpanClass::new(SizeClass::LARGE, true);
                ChunkPtr::new(source.alloc_span(class, PageCount(1), 0)?)
            }
        };
        let top = self.top.as_mut()?;
        let half = self.len / 2;
        chunk.entries[..half].copy_from_slice(&top.entries[..half]);
        chunk.len = half;
        chunk.prev = None;
        top.entries.copy_within(half..self.len, 0);
        self.len -= half;
        Some(chunk)
    }

    /// Gives every chunk back (the stack must be empty or abandoned).
    pub(crate) fn release(&mut self, source: &dyn SpanSource) {
        while let Some(mut c) = self.top.take() {
            self.top = c.prev.take();
            c.free(source);
        }
        self.len = 0;
        self.chunks = 0;
        if let Some(c) = self.spare.take() {
            c.free(source);
        }
    }
}

/// Grey chunks shared by parallel markers (Go's work.full list): a stack of chunks under a spin lock,
/// each carrying its entry count.
///
/// Invariants: every chunk in the pool holds at least one entry; `len` is the number of chunks (read
/// without the lock as a hint only).
pub(crate) struct Pool {
    head: spin::Mutex<Option<ChunkPtr>>,
    len: core::sync::atomic::AtomicUsize,
}

impl Pool {
    pub(crate) const fn new() -> Self {
        Self {
            head: spin::Mutex::new(None),
            len: core::sync::atomic::AtomicUsize::new(0),
        }
    }

    /// Whether the pool looks empty (a hint: chunks come and go meanwhile).
    pub(crate) fn looks_empty(&self) -> bool {
        self.len.load(core::sync::atomic::Ordering::Relaxed) == 0
    }

    fn put(&self, mut chunk: ChunkPtr) {
        debug_assert!(chunk.len > 0);
        let mut head = self.head.lock();
        chunk.prev = head.take();
        *head = Some(chunk);
        self.len.fetch_add(1, core::sync::atomic::Ordering::Relaxed);
    }

    fn take(&self) -> Option<ChunkPtr> {
        let mut head = self.head.lock();
        let mut chunk = head.take()?;
        *head = chunk.prev.take();
        self.len.fetch_sub(1, core::sync::atomic::Ordering::Relaxed);
        Some(chunk)
    }

    /// Whether the pool is empty (under its lock).
    pub(crate) fn is_empty(&self) -> bool {
        self.head.lock().is_none()
    }

    /// Moves every chunk of `stack` into the pool.
    pub(crate) fn put_all(&self, stack: &mut GreyStack) {
        while let Some(c) = stack.take_top() {
            if c.len > 0 {
                self.put(c);
            }
        }
    }

    /// Moves the stack's full older chunks into the pool.
    pub(crate) fn put_older(&self, stack: &mut GreyStack) {
        if !stack.has_older() {
            return;
        }
        // The top is never empty (a stack's emptied top becomes its spare at once), so it can be
        // taken off and put back whole.
        let top = stack.take_top().expect("a top chunk");
        self.put_all(stack);
        stack.adopt(top);
    }

    /// Shares half of the stack's top chunk; false if there was nothing to share or no page for it.
    pub(crate) fn share(&self, stack: &mut GreyStack, source: &dyn SpanSource) -> bool {
        match stack.split(source) {
            Some(c) => {
                self.put(c);
                true
            }
            None => false,
        }
    }

    /// Moves one chunk of the pool onto the (empty) stack; false if the pool is empty.
    pub(crate) fn take_into(&self, stack: &mut GreyStack) -> bool {
        match self.take() {
            Some(c) => {
                stack.adopt(c);
                true
            }
            None => false,
        }
    }

    /// Gives every chunk back to `source` (their entries are dropped: the caller has made sure the mark
    /// rescans, or the pool is empty).
    pub(crate) fn release(&self, source: &dyn SpanSource) {
        while let Some(c) = self.take() {
            c.free(source);
        }
    }
}
