// A finalizer of a type holding `Gc`s could dereference one whose target the sweeper freed first: the
// derive refuses any `Drop` impl on the type it derives for (unless `#[trace(drop)]` on a 'static type).
use spanalloc::gc::{Gc, Trace};

#[derive(Trace)]
struct Node<'gc> {
    next: Option<Gc<'gc, Node<'gc>>>,
    value: u64,
}

impl Drop for Node<'_> {
    fn drop(&mut self) {
        if let Some(next) = self.next {
            // Reads an object that may be freed already.
            let _ = next.value;
        }
    }
}

fn main() {}
