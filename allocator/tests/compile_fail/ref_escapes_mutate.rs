// A `GcWeak`, a `GcRefCell`'s `Ref` or a `GcRefMut` carries the call's brand too: none of them can
// leave `mutate` (the `Ref` would read the root's contents after the collector freed them).
use spanalloc::gc::{Gc, GcHeap, GcRefCell, GcWeak, Rootable};

struct R;
impl Rootable for R {
    type Root<'gc> = GcRefCell<'gc, [Option<Gc<'gc, u64>>; 2]>;
}

fn weak(gc: &mut GcHeap<R>) {
    let w = gc.mutate(|mc, _| GcWeak::new(mc, Gc::new(mc, 5u64)));
    let _ = w;
}

fn shared(gc: &mut GcHeap<R>) -> bool {
    let r = gc.mutate(|_, root| root.borrow());
    r[0].is_some()
}

fn exclusive(gc: &mut GcHeap<R>) {
    let mut r = gc.mutate(|mc, root| root.borrow_mut(mc));
    r[0] = None;
}

fn main() {
    let _ = (weak, shared, exclusive);
}
