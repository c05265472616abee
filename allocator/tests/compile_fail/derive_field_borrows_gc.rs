// A reference into the heap (`&'gc`) as a field is refused: only `&'static T` is `Trace`, and a `'gc`
// reference could reach a `Gc` the collector would never see.
use spanalloc::gc::{Gc, Trace};

#[derive(Trace)]
struct Holder<'gc> {
    direct: Gc<'gc, u64>,
    hidden: &'gc Gc<'gc, u64>,
}

fn main() {}
