//! Central lists (Go's mcentral): one per size class, shared by all CPUs, behind a spin lock. They
//! refill per-CPU caches in batches from spans with free slots, and take batches of freed objects back
//! into their spans.
//!
//! Invariants (under the class lock):
//! - `partial` holds the class's in-use spans with a free slot and an object out, `full` those with no
//!   free slot, `empty` those whose objects are all free (kept for the next refills); every span of the
//!   class that is on none of them is being released to the page heap.
//! - `out` = objects taken out of this class's spans and not yet returned (they sit in caches or with users).
//! - A span whose objects all come back stays on `empty` while that list holds less than the budget the
//!   heap passes (`keep_bytes` of spans, at least one span); beyond it, it goes back to the page heap.
//!   Without the budget a program that allocates and frees batches bigger than a CPU cache (glibc's
//!   bench-malloc-simple: 100 blocks of 4 KiB) handed a span back and carved a new one (page-heap lock,
//!   span-map entries, a free mark stamped in every object) for every few objects: measured, 2.5 times
//!   its throughput. `release_empty` (trim, and a page heap out of room) gives every kept span back.
//!
//! Lock order: a central lock may be held while taking the page-heap lock, never the reverse.

use core::ptr::NonNull;

use crate::addr::VirtAddr;
use crate::pageheap::PageHeap;
use crate::platform::Platform;
use crate::sizeclass::{SizeClass, SpanClass};
use crate::span::{Span, SpanList};
use crate::spanmap::Owner;

struct Lists {
    partial: SpanList,
    full: SpanList,
    empty: SpanList,
    out: usize,
    spans: usize,
}

// SAFETY: the lists own the spans linked into them; access is serialized by the lock.
unsafe impl Send for Lists {}

/// One size class's central list, padded to a cache line so classes do not share lines.
#[repr(align(64))]
pub(crate) struct Central {
    lists: spin::Mutex<Lists>,
}

/// What a central list reports for stats.
#[derive(Clone, Copy, Debug, Default)]
pub struct CentralStats {
    /// Objects taken out of spans (cached on some CPU or in use).
    pub out: usize,
    /// Spans of this class.
    pub spans: usize,
}

impl Central {
    pub(crate) const fn new() -> Self {
        Self {
            lists: spin::Mutex::new(Lists {
                partial: SpanList::new(),
                full: SpanList::new(),
                empty: SpanList::new(),
                out: 0,
                spans: 0,
            }),
        }
    }

    pub(crate) fn stats(&self) -> CentralStats {
        let l = self.lists.lock();
        CentralStats {
            out: l.out,
            spans: l.spans,
        }
    }

    /// Fills `out` with up to `out.len()` free objects of `class`, taking new spans from the page heap as
    /// needed (from `cpu`'s page cache if given). Returns how many it wrote (0 only when memory is
    /// exhausted).
    pub(crate) fn refill<P: Platform>(
        &self,
        class: SizeClass,
        out: &mut [VirtAddr],
        pages: &spin::Mutex<Option<PageHeap<P>>>,
        cpu: Option<usize>,
    ) -> usize {
        let mut l = self.lists.lock();
        let mut n = 0;
        while n < out.len() {
            // Spans with objects out first (their free slots fill up, the empty ones stay whole for
            // release), then a kept empty span, then a new one.
            let span = match l.partial.first() {
                Some(s) => s,
                None if !l.empty.is_empty() => {
                    let s = l.empty.pop().expect("checked: not empty");
                    // SAFETY: popped off `empty`, owned by this list; on `partial` once it gives objects
                    // (below, before the lock is released).
                    unsafe { l.partial.push_front(s) };
                    s
                }
                None => {
                    let mut guard = pages.lock();
                    let Some(heap) = guard.as_mut() else { break };
                    let spc = SpanClass::new(class, false);
                    let npages = class.pages().0;
                    let owner = Owner::Explicit;
                    let Some(s) = heap.alloc_span(npages, 1, spc, cpu, owner) else {
                        break;
                    };
                    drop(guard);
                    l.spans += 1;
                    // SAFETY: a fresh span from the page heap, now owned by this list.
                    unsafe { l.partial.push_front(s) };
                    s
                }
            };
            // SAFETY: spans on our lists are owned by us and we hold the lock.
            let s = unsafe { &mut *span.as_ptr() };
            let got = s.take_free(&mut out[n..]);
            n += got;
            if s.is_full() {
                // SAFETY: `span` is on `partial` (it was its front) and owned by this list.
                unsafe {
                    l.partial.remove(span);
                    l.full.push_front(span);
                }
            }
        }
        l.out += n;
        n
    }

    /// Returns freed objects of `class` to their spans; spans that became empty are kept up to
    /// `keep_bytes` of them (at least one span), the others released.
    ///
    /// Panics on an object that is not free-able (double free, interior pointer): the message names the
    /// address, the span and the reason (the first, if several are). The panic comes after every other
    /// object is freed and the class lock is released; a refused object is left as it was. (Only racing
    /// or stale frees, out of the default build's scope, and `debug-checks`' double frees get here.)
    pub(crate) fn flush<P: Platform>(
        &self,
        class: SizeClass,
        objs: &[VirtAddr],
        spans: impl Fn(VirtAddr) -> Option<NonNull<Span>>,
        pages: &spin::Mutex<Option<PageHeap<P>>>,
        keep_bytes: usize,
    ) {
        let keep = (keep_bytes / class.pages().bytes()).max(1);
        let mut l = self.lists.lock();
        // A refused object is left alone (it is some live object's, or free already: a second hand-out
        // is what must not happen) and the flush goes on with the others; the first refusal is told once
        // the lock is released (a panic path that allocates could need it).
        let mut refused = None;
        for &addr in objs {
            let Some(span) = spans(addr) else {
                refused.get_or_insert(Err(addr));
                continue;
            };
            // SAFETY: the span is in use and of this class (checked when the object was freed), so it is on
            // one of our lists, owned by us under the lock.
            let s = unsafe { &mut *span.as_ptr() };
            let was_full = s.is_full();
            if let Err(e) = s.free_object(addr) {
                refused.get_or_insert(Ok(e));
                continue;
            }
            // Read before the list operations below, which reach the span through `span`: `s` (a unique
            // borrow) may not be used after them (Stacked Borrows; Miri reported it).
            let now_empty = s.is_empty();
            l.out -= 1;
            // `span` is on the list its state before this free says: `full` if it was full, else
            // `partial` (it had an object out: this one); owned by us under the lock.
            match (was_full, now_empty) {
                // SAFETY: on `full` (above); it now has a free slot and an object out.
                (true, false) => unsafe {
                    l.full.remove(span);
                    l.partial.push_front(span);
                },
                // SAFETY: on `full` (above); filed below as empty.
                (true, true) => unsafe { l.full.remove(span) },
                // SAFETY: on `partial` (above); filed below as empty.
                (false, true) => unsafe { l.partial.remove(span) },
                (false, false) => {}
            }
            if now_empty {
                if l.empty.len() < keep {
                    // SAFETY: unlinked above; all its objects are free.
                    unsafe { l.empty.push_front(span) };
                } else {
                    l.spans -= 1;
                    let mut guard = pages.lock();
                    let heap = guard.as_mut().expect("spans exist only after init");
                    // SAFETY: the span came from this page heap and is unlinked and unused now.
                    unsafe { heap.free_span(span) };
                    heap.scavenge_if_needed();
                }
            }
        }
        drop(l);
        match refused {
            None => {}
            Some(Err(addr)) => panic!(
                "spanalloc: free of {addr:#x}: no span holds it (freed twice, or never allocated)"
            ),
            Some(Ok(e)) => panic!("spanalloc: {e}"),
        }
    }

    /// Whether the class lock is held (tests: a refused flush panics only after releasing it).
    #[cfg(test)]
    pub(crate) fn is_locked(&self) -> bool {
        self.lists.is_locked()
    }

    /// Releases every span of the class whose objects are all free (those `flush` keeps). Returns how
    /// many it released.
    pub(crate) fn release_empty<P: Platform>(
        &self,
        pages: &spin::Mutex<Option<PageHeap<P>>>,
    ) -> usize {
        let mut l = self.lists.lock();
        let mut released = 0;
        // Popped off `empty`: owned by us under the lock, and nobody else refers to it.
        while let Some(span) = l.empty.pop() {
            l.spans -= 1;
            let mut guard = pages.lock();
            let heap = guard.as_mut().expect("spans exist only after init");
            // SAFETY: the span came from this page heap and is unlinked and unused now.
            unsafe { heap.free_span(span) };
            released += 1;
        }
        released
    }

    /// Whether object `idx` of the span `span()` finds, under the class lock, is allocated in its span's
    /// bitmap (taken out by a refill): for naming what a refused free was (a cached object, or one free
    /// in its span). `None` if `span()` finds no span (it was released meanwhile).
    pub(crate) fn is_allocated(
        &self,
        idx: usize,
        span: impl FnOnce() -> Option<NonNull<Span>>,
    ) -> Option<bool> {
        let _l = self.lists.lock();
        let span = span()?;
        // SAFETY: the span is an in-use span of this class (the span map says so, read under our lock,
        // which every release of one of our spans holds), so it is on one of our lists; read only.
        Some(unsafe { span.as_ref() }.is_allocated(idx))
    }

    /// Full checks: records that the object at `addr` went to a user (`live`) or came back from one, using
    /// its span's mark bit as the "with a user" bit. Returns why a free is bad (interior pointer, double
    /// free); panics if the allocator handed out an object a user still holds (an allocator bug).
    pub(crate) fn track(
        &self,
        span: NonNull<Span>,
        addr: VirtAddr,
        live: bool,
    ) -> Result<(), &'static str> {
        let _l = self.lists.lock();
        // SAFETY: the span is in use and of this class (the span map says so), so it is on one of our lists;
        // we hold the lock.
        let s = unsafe { &mut *span.as_ptr() };
        let idx = s
            .object_index(addr)
            .ok_or("not inside its span's objects")?;
        if s.object_addr(idx) != addr {
            return Err("interior pointer (not the start of an object)");
        }
        if live {
            assert!(
                s.mark(idx),
                "spanalloc: handed out {addr:#x} while a user still holds it"
            );
        } else if !s.unmark(idx) {
            return Err("double free (the object is already free)");
        }
        Ok(())
    }
}
