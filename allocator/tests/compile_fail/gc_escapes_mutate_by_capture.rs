// A Gc stored in a variable outside the closure would outlive the `mutate` call.
use spanalloc::gc::{Gc, GcHeap, Rootable};

struct R;
impl Rootable for R {
    type Root<'gc> = ();
}

fn escape(gc: &mut GcHeap<R>) -> u64 {
    let mut outside = None;
    gc.mutate(|mc, _| outside = Some(Gc::new(mc, 5u64)));
    *outside.unwrap()
}

fn main() {
    let _ = escape;
}
