// A Gc returned from `mutate` would outlive the call, and the collector may free its object at the safe
// point that ends it.
use spanalloc::gc::{Gc, GcHeap, Rootable};

struct R;
impl Rootable for R {
    type Root<'gc> = ();
}

fn escape(gc: &mut GcHeap<R>) -> u64 {
    let leaked = gc.mutate(|mc, _| Gc::new(mc, 5u64));
    *leaked
}

fn main() {
    let _ = escape;
}
