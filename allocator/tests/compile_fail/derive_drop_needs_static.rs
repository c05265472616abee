// `#[trace(drop)]` allows a finalizer only on a 'static type (which can hold no `Gc`): a type with a
// lifetime parameter is refused, and a skipped field must be 'static too.
use spanalloc::gc::{Gc, Trace};

#[derive(Trace)]
#[trace(drop)]
struct Finalized<'gc> {
    target: Gc<'gc, u64>,
}

impl Drop for Finalized<'_> {
    fn drop(&mut self) {
        let _ = *self.target;
    }
}

#[derive(Trace)]
struct Skips<'gc> {
    #[trace(skip)]
    hidden: Option<Gc<'gc, u64>>,
}

#[derive(Trace)]
union Either {
    a: u64,
    b: f64,
}

fn main() {}
