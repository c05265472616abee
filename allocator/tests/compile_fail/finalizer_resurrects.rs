// A finalizer that moved the Gc it holds into a 'static place would keep a pointer to an object the
// sweeper may have freed already (or is freeing): Drop impls are generic over the brand, so 'gc cannot
// be 'static there.
use std::cell::RefCell;

use spanalloc::gc::{Gc, Trace, Tracer};

thread_local! {
    static RESURRECTED: RefCell<Option<Gc<'static, u64>>> = const { RefCell::new(None) };
}

struct Zombie<'gc> {
    target: Gc<'gc, u64>,
}

// SAFETY: traces its one Gc; the Drop below is what the compiler must reject.
unsafe impl<'gc> Trace for Zombie<'gc> {
    fn trace(&self, t: &mut Tracer<'_>) {
        t.trace(&self.target);
    }
}

/// Keeps a Gc past its heap's control.
fn resurrect(g: Gc<'static, u64>) {
    RESURRECTED.with(|r| *r.borrow_mut() = Some(g));
}

impl<'gc> Drop for Zombie<'gc> {
    fn drop(&mut self) {
        resurrect(self.target);
    }
}

fn main() {}
