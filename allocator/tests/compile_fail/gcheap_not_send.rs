// A GcHeap is single-threaded (its mark bits and grey stack are plain memory): one per CPU, never moved.
use spanalloc::gc::{GcHeap, Rootable};

struct R;
impl Rootable for R {
    type Root<'gc> = ();
}

fn assert_send<T: Send>() {}

fn main() {
    assert_send::<GcHeap<R>>();
}
