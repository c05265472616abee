//! Compile-fail tests of the collector's type-level guarantees (trybuild): each case in compile_fail/
//! must fail to compile with the error in its committed `.stderr`, which names the guarantee it breaks.
//! - `gc_escapes_mutate*`: a `Gc` cannot leave the `mutate` call it was made in (its brand `'gc` is a
//!   fresh, higher-ranked lifetime per call): neither as the result nor through a captured variable;
//!   nor from `mutate_root` or `GcHeap::new`'s root builder (`gc_escapes_mutate_root`). A `GcWeak`, a
//!   `GcRefCell`'s `Ref` or a `GcRefMut` cannot leave `mutate` either (`ref_escapes_mutate`).
//! - `gc_crosses_heaps`: a `Gc` of one heap cannot be stored in another heap's cell (the brands differ).
//! - `*_not_send`: `Gc`, `GcHeap` and `Mutation` cannot cross threads (a heap is single-threaded: one
//!   per CPU).
//! - `finalizer_resurrects`: a `Drop` (a finalizer) cannot move a `Gc` it holds into a `'static` place.
//! - `derive_*`: what `#[derive(Trace)]` refuses: a field type that is not `Trace`, a `&'gc` field, a
//!   `Drop` impl on the derived type, `#[trace(drop)]` on a type with a lifetime, a `#[trace(skip)]`
//!   field that is not `'static` (also through a type parameter), a field of a non-`Trace` type with a
//!   `Drop` of its own, a union.
//!
//! Run by plain `cargo test` (the allocator is a default member of the workspace; its dev-dependency on
//! itself turns the `gc` feature on for integration tests); ignored in builds with `std` (`--features
//! host`), whose compiler messages also list `Box`'s impl. `TRYBUILD=overwrite cargo test -p spanalloc
//! --test gc_compile_fail` rewrites the `.stderr` files after a deliberate change of the messages.

#[test]
#[cfg_attr(
    feature = "std",
    ignore = "the committed messages list the `Trace` impls of a build without `std` (`Box` joins them \
              with it): run by plain `cargo test`"
)]
fn gc_type_guarantees_are_enforced_by_the_compiler() {
    let t = trybuild::TestCases::new();
    t.compile_fail("tests/compile_fail/*.rs");
}
