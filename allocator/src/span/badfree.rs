//! The error a span gives for a refused free: the address, the span it was checked against (base,
//! class, object size) and the reason, so a bad `dealloc` can be reported precisely.

use core::fmt;

use crate::addr::VirtAddr;
use crate::sizeclass::SpanClass;

/// Why a free was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BadFreeReason {
    /// The address is not inside the span's objects (outside its pages, or in its unused tail).
    NotInSpan,
    /// The address is inside an object but not at its start.
    Interior { object: VirtAddr },
    /// The object is not allocated (double free).
    AlreadyFree,
}

/// A refused free: the address, the span it was checked against and the reason.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BadFree {
    pub addr: VirtAddr,
    pub span_base: VirtAddr,
    pub class: SpanClass,
    pub elem_size: usize,
    pub reason: BadFreeReason,
}

impl fmt::Display for BadFree {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "bad free of {:#x}: ", self.addr.as_u64())?;
        match self.reason {
            BadFreeReason::NotInSpan => write!(f, "not an object of this span")?,
            BadFreeReason::Interior { object } => write!(
                f,
                "interior pointer into the object at {:#x}",
                object.as_u64()
            )?,
            BadFreeReason::AlreadyFree => write!(f, "object is not allocated (double free)")?,
        }
        write!(f, " (span at {:#x}, ", self.span_base.as_u64())?;
        if self.class.is_large() {
            write!(f, "large object of {} B)", self.elem_size)
        } else {
            let c = self.class.size_class();
            write!(f, "size class {} of {} B objects)", c.get(), self.elem_size)
        }
    }
}

impl core::error::Error for BadFree {}
