// `mutate_root` and `GcHeap::new`'s root builder brand their `Gc`s as `mutate` does: neither a `Gc`
// returned nor one captured from the builder outlives the call.
use spanalloc::gc::{Gc, GcConfig, GcHeap, GcRefCell, Rootable};

struct R;
impl Rootable for R {
    type Root<'gc> = GcRefCell<'gc, [Option<Gc<'gc, u64>>; 2]>;
}

fn from_mutate_root(gc: &mut GcHeap<R>) -> u64 {
    let g = gc.mutate_root(|mc, _| Gc::new(mc, 5u64));
    *g
}

fn from_new<P: spanalloc::platform::Platform>(heap: &'static spanalloc::Heap<P>) {
    let mut outside = None;
    let _gc: GcHeap<R> = GcHeap::new(heap, GcConfig::default(), |mc| {
        outside = Some(Gc::new(mc, 1u64));
        GcRefCell::new([None; 2])
    });
    let _ = outside;
}

fn main() {
    let _ = from_mutate_root;
    let _ = from_new::<spanalloc::platforms::Uniprocessor>;
}
