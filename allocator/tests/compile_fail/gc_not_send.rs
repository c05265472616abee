// A Gc sent to another thread would be used there while its heap's thread runs the collector.
use spanalloc::gc::{Gc, GcHeap, Rootable};

struct R;
impl Rootable for R {
    type Root<'gc> = ();
}

fn assert_send<T: Send>(_: &T) {}

fn send(gc: &mut GcHeap<R>) {
    gc.mutate(|mc, _| {
        let x = Gc::new(mc, 1u64);
        assert_send(&x);
    });
}

fn main() {
    let _ = send;
}
