// `#[trace(skip)]` on a field of a type parameter needs that parameter to be 'static (it might be a
// `Gc`), and a field type with a `Drop` of its own that is not `Trace` is refused like any other.
use spanalloc::gc::{Gc, Trace};

#[derive(Trace)]
struct SkipsParam<T> {
    #[trace(skip)]
    hidden: T,
}

struct Finalizer<'gc>(Gc<'gc, u64>);

impl Drop for Finalizer<'_> {
    fn drop(&mut self) {
        let _ = *self.0;
    }
}

#[derive(Trace)]
struct HoldsFinalizer<'gc> {
    f: Finalizer<'gc>,
}

fn main() {}
