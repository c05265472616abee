//! An intrusive doubly linked list of spans (Go's mSpanList): the links live in the spans, so central
//! lists and the page heap keep spans in lists without allocating.
//!
//! Invariants:
//! - `head`..`tail` following `next` visits exactly `len` spans, each once; `prev` mirrors `next`;
//!   `head.prev` and `tail.next` are `None`; `head` and `tail` are both `None` iff `len == 0`.
//! - Every linked span is valid and stays at its address while linked, and its links are written only
//!   by this list (the `push_*` contract). A span in no list has both links `None`.

use core::ptr::NonNull;

use super::Span;

/// An intrusive list of spans; it does not own them.
#[derive(Debug, Default)]
pub struct SpanList {
    head: Option<NonNull<Span>>,
    tail: Option<NonNull<Span>>,
    len: usize,
}

// SAFETY: the list has exclusive use of its spans' links (the `push_*` contract) and Span is Send, so
// the list can move to another CPU with them, as a `Vec<Box<Span>>`-like owner of links would.
unsafe impl Send for SpanList {}

impl SpanList {
    pub const fn new() -> Self {
        SpanList {
            head: None,
            tail: None,
            len: 0,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.head.is_none()
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn first(&self) -> Option<NonNull<Span>> {
        self.head
    }

    /// Links `span` at the front.
    ///
    /// # Safety
    /// `span` is valid, in no list, and stays valid and unmoved until it is unlinked again (`pop`,
    /// `remove`); while it is linked, no reference to it is live across a call on this list and its
    /// `next`/`prev` are left to the list.
    pub unsafe fn push_front(&mut self, span: NonNull<Span>) {
        // SAFETY: `span` is valid (caller) and so is the old head (list invariant); writes go through
        // raw places, not references, so the caller's other pointers to these spans stay usable.
        unsafe {
            debug_assert!((*span.as_ptr()).next.is_none() && (*span.as_ptr()).prev.is_none());
            (*span.as_ptr()).next = self.head;
            match self.head {
                Some(h) => (*h.as_ptr()).prev = Some(span),
                None => self.tail = Some(span),
            }
        }
        self.head = Some(span);
        self.len += 1;
    }

    /// Links `span` at the back.
    ///
    /// # Safety
    /// As for [`SpanList::push_front`].
    pub unsafe fn push_back(&mut self, span: NonNull<Span>) {
        // SAFETY: as in `push_front`, with the old tail.
        unsafe {
            debug_assert!((*span.as_ptr()).next.is_none() && (*span.as_ptr()).prev.is_none());
            (*span.as_ptr()).prev = self.tail;
            match self.tail {
                Some(t) => (*t.as_ptr()).next = Some(span),
                None => self.head = Some(span),
            }
        }
        self.tail = Some(span);
        self.len += 1;
    }

    /// Unlinks and returns the first span.
    pub fn pop(&mut self) -> Option<NonNull<Span>> {
        let span = self.head?;
        // SAFETY: `span` is linked here, hence valid (list invariant).
        unsafe { self.remove(span) };
        Some(span)
    }

    /// Unlinks `span`.
    ///
    /// # Safety
    /// `span` is linked in this list (not merely in some list).
    pub unsafe fn remove(&mut self, span: NonNull<Span>) {
        // SAFETY: `span` and its neighbours are linked here, hence valid (caller + list invariant).
        unsafe {
            let s = span.as_ptr();
            let (next, prev) = ((*s).next, (*s).prev);
            match prev {
                Some(p) => (*p.as_ptr()).next = next,
                None => {
                    assert!(
                        self.head == Some(span),
                        "SpanList::remove: span {span:p} not in this list"
                    );
                    self.head = next;
                }
            }
            match next {
                Some(n) => (*n.as_ptr()).prev = prev,
                None => {
                    debug_assert!(self.tail == Some(span));
                    self.tail = prev;
                }
            }
            (*s).next = None;
            (*s).prev = None;
        }
        self.len -= 1;
    }

    /// The linked spans, front to back. The list must not change while iterating.
    pub fn iter(&self) -> impl Iterator<Item = NonNull<Span>> + '_ {
        let mut cur = self.head;
        core::iter::from_fn(move || {
            let span = cur?;
            // SAFETY: linked spans are valid (list invariant); `&self` keeps the list unchanged.
            cur = unsafe { (*span.as_ptr()).next };
            Some(span)
        })
    }
}
