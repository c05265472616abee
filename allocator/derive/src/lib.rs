//! `#[derive(Trace)]` for spanalloc's garbage-collected heap: the safe way to make a type managed,
//! re-exported as `spanalloc::gc::Trace` (feature `gc`).
//!
//! ```ignore
//! use spanalloc::gc::{Gc, GcCell, Trace};
//!
//! #[derive(Trace)]
//! struct Node<'gc> {
//!     value: u64,
//!     next: GcCell<'gc, Option<Gc<'gc, Node<'gc>>>>,
//! }
//! ```
//!
//! Invariants (why the generated `unsafe impl Trace` keeps the trait's contract, spanalloc/src/gc/trace.rs):
//! - **Every `Gc` is reported.** `trace` passes every field of every variant to the tracer, each through
//!   its own `Trace` impl, so a field whose type is not `Trace` does not compile (that is what refuses
//!   `&'gc T`, `Cell<Gc<..>>`, `UnsafeCell`, raw pointers: the `Trace` impls of the library admit no
//!   unbarriered mutation of a `Gc`). `NEEDS_TRACE` is the OR of the fields' (false only when none may
//!   hold a `Gc`). Type parameters get a `Trace` bound.
//! - **`#[trace(skip)]`** leaves a field untraced; the generated code requires its type to be
//!   `'static`, and no `'static` type can hold a `Gc<'gc, _>` (none lives for `'static`).
//! - **No finalizer reaches a `Gc`.** The type must not implement `Drop` (a conflicting-impl check,
//!   error E0119 naming `DeriveTraceRefusesDrop`): a `Drop` of a type holding `Gc`s could dereference one
//!   whose target was freed first. A finalizer is allowed with `#[trace(drop)]`, which requires the type
//!   to be `'static` (no lifetime parameters; type parameters get a `'static` bound), so it holds no `Gc`.
//!   Fields' own `Drop`s are their types' business (derived: checked the same way; hand-written: promised
//!   by their `unsafe impl`).
//! - Unions are refused (the active field is unknown).
//!
//! The generated code names `::spanalloc::gc`, so the `spanalloc` crate must be a dependency under that
//! name.

use proc_macro::TokenStream;
use proc_macro2::{Span, TokenStream as Tokens};
use quote::{format_ident, quote, quote_spanned};
use syn::spanned::Spanned;
use syn::{parse_macro_input, Data, DeriveInput, Error, Fields, GenericParam, Result};

/// Implements `spanalloc::gc::Trace` for a struct or enum (see the crate documentation).
#[proc_macro_derive(Trace, attributes(trace))]
pub fn derive_trace(input: TokenStream) -> TokenStream {
    let input = parse_macro_input!(input as DeriveInput);
    expand(input)
        .unwrap_or_else(Error::into_compile_error)
        .into()
}

/// Options of `#[trace(..)]`.
#[derive(Default)]
struct ContainerOpts {
    /// `#[trace(drop)]`: the type may implement `Drop`; it must be `'static`.
    drop: bool,
}

fn container_opts(input: &DeriveInput) -> Result<ContainerOpts> {
    let mut opts = ContainerOpts::default();
    for attr in input.attrs.iter().filter(|a| a.path().is_ident("trace")) {
        attr.parse_nested_meta(|meta| {
            if meta.path.is_ident("drop") {
                opts.drop = true;
                Ok(())
            } else {
                Err(meta.error("unknown #[trace] option on a type (expected `drop`)"))
            }
        })?;
    }
    Ok(opts)
}

/// Whether a field carries `#[trace(skip)]`.
fn skipped(field: &syn::Field) -> Result<bool> {
    let mut skip = false;
    for attr in field.attrs.iter().filter(|a| a.path().is_ident("trace")) {
        attr.parse_nested_meta(|meta| {
            if meta.path.is_ident("skip") {
                skip = true;
                Ok(())
            } else {
                Err(meta.error("unknown #[trace] option on a field (expected `skip`)"))
            }
        })?;
    }
    Ok(skip)
}

/// One variant (or the struct itself): its pattern and the code for its fields.
struct Arm {
    pattern: Tokens,
    traces: Vec<Tokens>,
}

fn expand(mut input: DeriveInput) -> Result<Tokens> {
    let opts = container_opts(&input)?;
    let krate = quote!(::spanalloc::gc);
    let name = input.ident.clone();

    let mut needs = Vec::new();
    let mut arms = Vec::new();
    let mut fields_of = |path: Tokens, fields: &Fields| -> Result<Arm> {
        let mut binds = Vec::new();
        let mut traces = Vec::new();
        for (i, field) in fields.iter().enumerate() {
            let ty = &field.ty;
            let bind = format_ident!("__field{}", i);
            let member = match &field.ident {
                Some(id) => quote!(#id),
                None => {
                    let index = syn::Index::from(i);
                    quote!(#index)
                }
            };
            binds.push(quote!(#member: #bind));
            if skipped(field)? {
                // A 'static type cannot hold a Gc<'gc, _>: requiring it is what makes the skip sound.
                traces.push(quote_spanned! {ty.span()=>
                    __assert_static::<#ty>();
                });
            } else {
                traces.push(quote_spanned! {ty.span()=>
                    #krate::Tracer::trace::<#ty>(__tracer, #bind);
                });
                needs.push(quote_spanned! {ty.span()=>
                    <#ty as #krate::Trace>::NEEDS_TRACE
                });
            }
        }
        Ok(Arm {
            pattern: quote!(#path { #(#binds,)* .. }),
            traces,
        })
    };
    match &input.data {
        Data::Struct(s) => arms.push(fields_of(quote!(Self), &s.fields)?),
        Data::Enum(e) => {
            for v in &e.variants {
                let ident = &v.ident;
                arms.push(fields_of(quote!(Self::#ident), &v.fields)?);
            }
        }
        Data::Union(u) => {
            return Err(Error::new(
                u.union_token.span,
                "#[derive(Trace)] cannot trace a union (which field holds a value is unknown): write an \
                 `unsafe impl Trace` by hand",
            ))
        }
    }

    if opts.drop {
        // The finalizer may run arbitrary code: the type must hold no Gc, i.e. be 'static.
        if let Some(lt) = input.generics.lifetimes().next() {
            return Err(Error::new(
                lt.span(),
                "#[trace(drop)] needs a 'static type (a Drop impl must not reach a Gc): remove the lifetime \
                 parameters",
            ));
        }
    }
    for param in &mut input.generics.params {
        if let GenericParam::Type(t) = param {
            t.bounds.push(syn::parse_quote!(#krate::Trace));
            if opts.drop {
                t.bounds.push(syn::parse_quote!('static));
            }
        }
    }
    let (impl_generics, ty_generics, where_clause) = input.generics.split_for_impl();

    let no_drop = if opts.drop {
        quote!()
    } else {
        // Conflicts with a `Drop` impl of the type (E0119): a finalizer could dereference a freed Gc.
        quote! {
            const _: () = {
                trait DeriveTraceRefusesDrop {}
                #[allow(drop_bounds)]
                impl<T: ::core::ops::Drop + ?::core::marker::Sized> DeriveTraceRefusesDrop for T {}
                impl #impl_generics DeriveTraceRefusesDrop for #name #ty_generics #where_clause {}
            };
        }
    };

    let match_arms = arms.iter().map(|a| {
        let (pattern, traces) = (&a.pattern, &a.traces);
        quote!(#pattern => { #(#traces)* })
    });
    let body = if arms.is_empty() {
        // An enum without variants has no values.
        quote!(match *self {})
    } else {
        quote!(match self { #(#match_arms)* })
    };
    let span = Span::call_site();
    Ok(quote_spanned! {span=>
        // SAFETY: see spanalloc-derive's invariants: every field is traced through its own `Trace` impl
        // (or is 'static when skipped), and the type has no `Drop` unless it is 'static.
        #[automatically_derived]
        unsafe impl #impl_generics #krate::Trace for #name #ty_generics #where_clause {
            const NEEDS_TRACE: bool = false #(|| #needs)*;
            #[inline]
            #[allow(unused_variables, clippy::needless_borrow)]
            fn trace(&self, __tracer: &mut #krate::Tracer<'_>) {
                #[allow(dead_code)]
                fn __assert_static<T: ?::core::marker::Sized + 'static>() {}
                #body
            }
        }
        #no_drop
    })
}
