// A field whose type is not `Trace` makes the derive fail: every field is traced through its own `Trace`
// impl, so a type that might hide a `Gc` from the collector cannot be a field.
use spanalloc::gc::{Gc, Trace};

struct Opaque;

#[derive(Trace)]
struct Holder<'gc> {
    direct: Gc<'gc, u64>,
    opaque: Opaque,
}

fn main() {}
