// A Gc of heap `a` stored in a cell of heap `b`: `b` would never trace it into `a`'s mark, and `a` would
// free the object while `b` still holds it.
use spanalloc::gc::{Gc, GcCell, GcHeap, Rootable};

struct R;
impl Rootable for R {
    type Root<'gc> = GcCell<'gc, Option<Gc<'gc, u64>>>;
}

fn cross(a: &mut GcHeap<R>, b: &mut GcHeap<R>) {
    a.mutate(|mc_a, _| {
        let x = Gc::new(mc_a, 1u64);
        b.mutate(|mc_b, root_b| root_b.set(mc_b, Some(x)));
    });
}

fn main() {
    let _ = cross;
}
