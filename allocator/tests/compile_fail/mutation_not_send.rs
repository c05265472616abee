// The `&Mutation` of a `mutate` call cannot reach another thread (it allocates in the heap's state).
use spanalloc::gc::{GcHeap, Mutation, Rootable};

struct R;
impl Rootable for R {
    type Root<'gc> = ();
}

fn assert_send<T: Send>(_: T) {}

fn send(gc: &mut GcHeap<R>) {
    gc.mutate(|mc: &Mutation<'_>, _| assert_send(mc));
}

fn main() {
    let _ = send;
}
