use std::collections::VecDeque;

use proptest::prelude::*;

use super::*;
use crate::sizeclass::MAX_SMALL_SIZE;

/// A fake, page-aligned base: the span never touches object memory, so nothing needs to be mapped.
const BASE: u64 = 0x4000_0000;

/// A span and the storage its bitmaps live in (kept alive, and untouched, as long as the span).
struct Owned {
    span: Span,
    _bits: Vec<u64>,
}

fn small(class: u8) -> Owned {
    let class = SpanClass::new(SizeClass::new(class).unwrap(), false);
    let mut bits = vec![0xdead_beef_u64; Span::bitmap_words_for(class)];
    let ptr = NonNull::new(bits.as_mut_ptr());
    // SAFETY: `bits` has `bitmap_words_for(class)` words and is used only through the span from here on
    // (it moves with the span in `Owned`; moving a Vec does not move its buffer).
    let span = unsafe { Span::init_small(VirtAddr::new(BASE), class, true, ptr) };
    Owned { span, _bits: bits }
}

/// The private invariants from the module documentation.
fn check_invariants(s: &Span) {
    let n = s.nelems();
    let alloc: Vec<bool> = (0..n).map(|i| s.is_allocated(i)).collect();
    assert_eq!(
        s.alloc_count(),
        alloc.iter().filter(|&&a| a).count(),
        "alloc_count"
    );
    assert!(
        alloc[..s.free_index()].iter().all(|&a| a),
        "a free object below free_index"
    );
    if s.alloc_cache != 0 {
        let fi = s.free_index();
        let end = ((fi / WORD_BITS + 1) * WORD_BITS).min(n);
        for k in 0..WORD_BITS {
            let (i, cached) = (fi + k, s.alloc_cache >> k & 1 != 0);
            assert_eq!(
                cached,
                i < end && !alloc[i],
                "alloc_cache bit for object {i}"
            );
        }
    }
    let (a, m) = s.bits();
    let words = n.div_ceil(WORD_BITS);
    for w in 0..a.len() {
        assert_eq!(m[w] & !a[w], 0, "mark bits outside alloc bits in word {w}");
        if w + 1 == words && !n.is_multiple_of(WORD_BITS) {
            assert_eq!(a[w] >> (n % WORD_BITS), 0, "alloc bits past nelems");
        }
    }
    assert_eq!(s.is_full(), s.alloc_count() == n);
    assert_eq!(s.is_empty(), s.alloc_count() == 0);
}

/// Classes of every bitmap shape: 1024 objects (16 words), odd counts, exactly 64, few, one.
const CLASSES: [u8; 9] = [1, 3, 5, 9, 10, 11, 30, 45, 67];

#[test]
fn bitmap_storage_sizes() {
    let words = |c: u8| Span::bitmap_words_for(SpanClass::new(SizeClass::new(c).unwrap(), true));
    assert_eq!(words(1), 32); // 8 B: 1024 objects, 16 words per bitmap
    assert_eq!(words(9), 4); // 112 B: 73 objects
    assert_eq!(words(10), 0); // 128 B: 64 objects fit inline
    assert_eq!(words(67), 0);
    assert_eq!(words(0), 0);
    assert_eq!(Span::bitmap_words(65), 2);
}

/// Every small class; under Miri (each object costs milliseconds there) those of [`CLASSES`].
fn classes() -> Vec<SizeClass> {
    if cfg!(miri) {
        CLASSES
            .iter()
            .map(|&c| SizeClass::new(c).unwrap())
            .collect()
    } else {
        SizeClass::small().collect()
    }
}

#[test]
fn every_class_hands_out_all_objects_in_order() {
    for c in classes() {
        let mut o = small(c.get());
        let s = &mut o.span;
        assert_eq!(
            (s.nelems(), s.elem_size(), s.npages()),
            (c.objects_per_span(), c.size(), c.pages())
        );
        assert!(s.is_empty() && !s.is_full());
        for i in 0..s.nelems() {
            assert_eq!(s.next_free(), Some(i), "class {}", c.get());
        }
        assert_eq!(s.next_free(), None);
        assert!(s.is_full());
        check_invariants(s);

        let mut o2 = small(c.get());
        let mut out = vec![VirtAddr::zero(); c.objects_per_span() + 3];
        assert_eq!(o2.span.take_free(&mut out), c.objects_per_span());
        for (i, a) in out[..c.objects_per_span()].iter().enumerate() {
            assert_eq!(*a, VirtAddr::new(BASE + (i * c.size()) as u64));
            assert_eq!(o2.span.object_index(*a), Some(i));
        }
        assert!(o2.span.is_full());
        check_invariants(&o2.span);
    }
}

#[test]
fn object_index_maps_every_byte_to_its_object() {
    for c in [1, 9, 44, 60] {
        let o = small(c);
        let s = &o.span;
        let (size, objects) = (s.elem_size(), s.nelems() * s.elem_size());
        // Under Miri, each object's first two and last bytes.
        let offsets: Vec<usize> = if cfg!(miri) {
            (0..s.nelems())
                .flat_map(|i| [i * size, i * size + 1, (i + 1) * size - 1])
                .collect()
        } else {
            (0..objects).collect()
        };
        for off in offsets {
            let addr = VirtAddr::new(BASE + off as u64);
            assert_eq!(
                s.object_index(addr),
                Some(off / s.elem_size()),
                "class {c} offset {off}"
            );
        }
        // The unused tail and the bytes around the span belong to no object.
        assert_eq!(s.object_index(VirtAddr::new(BASE + objects as u64)), None);
        assert_eq!(s.object_index(VirtAddr::new(BASE - 1)), None);
    }
}

#[test]
fn bad_frees_are_refused_with_reasons() {
    let mut o = small(5); // 48 B
    let s = &mut o.span;
    let (ia, ib) = (s.next_free().unwrap(), s.next_free().unwrap());
    let (a, b) = (s.object_addr(ia), s.object_addr(ib));
    let reason = |r: Result<(), BadFree>| r.unwrap_err().reason;
    assert_eq!(
        reason(s.free_object(b + 8u64)),
        BadFreeReason::Interior { object: b }
    );
    assert_eq!(
        reason(s.free_object(VirtAddr::new(BASE - 48))),
        BadFreeReason::NotInSpan
    );
    let tail = s.object_addr(s.nelems() - 1) + 48u64; // 8192 % 48 = 32 tail bytes
    assert_eq!(reason(s.free_object(tail)), BadFreeReason::NotInSpan);
    assert_eq!(
        reason(s.free_object(s.object_addr(7))),
        BadFreeReason::AlreadyFree
    );
    assert_eq!(s.free_object(a), Ok(()));
    let err = s.free_object(a).unwrap_err();
    assert_eq!(err.reason, BadFreeReason::AlreadyFree);
    let msg = err.to_string();
    for part in [
        &format!("{:#x}", a.as_u64()),
        &format!("{BASE:#x}"),
        "size class 5",
        "48 B",
        "double free",
    ] {
        assert!(msg.contains(part), "{msg:?} lacks {part:?}");
    }
    assert_eq!(s.alloc_count(), 1);
    check_invariants(s);
}

#[test]
fn large_span_holds_one_allocated_object() {
    let mut s = Span::init_large(VirtAddr::new(BASE), PageCount(5));
    assert!(s.class().is_large() && s.is_full() && s.is_allocated(0));
    assert_eq!(
        (s.nelems(), s.elem_size(), s.bitmap_storage()),
        (1, 5 * PAGE_SIZE, None)
    );
    let inside = VirtAddr::new(BASE + 3 * PAGE_SIZE as u64 + 5);
    assert_eq!(s.object_index(inside), Some(0));
    assert_eq!(
        s.object_index(VirtAddr::new(BASE + 5 * PAGE_SIZE as u64)),
        None
    );
    let err = s.free_object(inside).unwrap_err();
    assert_eq!(
        err.reason,
        BadFreeReason::Interior {
            object: VirtAddr::new(BASE)
        }
    );
    assert!(err.to_string().contains("large object of 40960 B"), "{err}");

    assert!(s.mark(0) && !s.mark(0) && s.is_marked(0));
    assert_eq!(s.sweep(), 0);
    assert!(s.is_full() && !s.is_marked(0));
    assert_eq!(s.sweep(), 1, "unmarked large object is swept");
    assert!(s.is_empty());

    s.set_npages(PageCount(2));
    assert_eq!(s.elem_size(), 2 * PAGE_SIZE);
}

#[test]
fn thirty_two_kib_class_has_one_object() {
    let mut o = small(67);
    let s = &mut o.span;
    assert_eq!((s.nelems(), s.elem_size()), (1, MAX_SMALL_SIZE));
    assert_eq!(s.next_free(), Some(0));
    assert_eq!(s.next_free(), None);
    assert_eq!(s.free_object(VirtAddr::new(BASE)), Ok(()));
    assert_eq!(s.next_free(), Some(0));
}

#[test]
#[should_panic(expected = "large class")]
fn init_small_refuses_large_class() {
    let class = SpanClass::new(SizeClass::LARGE, false);
    // SAFETY: no storage is passed; the call panics before any use.
    let _ = unsafe { Span::init_small(VirtAddr::new(BASE), class, false, None) };
}

#[test]
#[should_panic(expected = "0x40001000: base not 8192-aligned")]
fn init_small_refuses_unaligned_base() {
    let class = SpanClass::new(SizeClass::new(20).unwrap(), false);
    // SAFETY: class 20 needs no storage.
    let _ = unsafe { Span::init_small(VirtAddr::new(BASE + 4096), class, false, None) };
}

#[test]
#[should_panic(expected = "needs 32 words of bitmap storage")]
fn init_small_refuses_missing_storage() {
    let class = SpanClass::new(SizeClass::new(1).unwrap(), false);
    // SAFETY: no storage is passed; the call panics before any use.
    let _ = unsafe { Span::init_small(VirtAddr::new(BASE), class, false, None) };
}

#[derive(Clone, Debug)]
enum Op {
    Alloc,
    Take(usize),
    Free(usize),
    Interior(usize, usize),
    Foreign(u64),
    Mark(usize),
    Sweep,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        8 => Just(Op::Alloc),
        3 => (0usize..80).prop_map(Op::Take),
        6 => any::<usize>().prop_map(Op::Free),
        1 => (any::<usize>(), any::<usize>()).prop_map(|(i, o)| Op::Interior(i, o)),
        1 => prop_oneof![Just(1u64), Just(8), Just(PAGE_SIZE as u64 * 20)].prop_map(Op::Foreign),
        3 => any::<usize>().prop_map(Op::Mark),
        1 => Just(Op::Sweep),
    ]
}

/// Classes for the model. Under Miri, where checking every object after every op dominates, those with up
/// to 170 objects (bitmaps of 1 to 3 words).
fn model_classes() -> &'static [u8] {
    if cfg!(miri) {
        &CLASSES[2..]
    } else {
        &CLASSES[..]
    }
}

/// The span against a `Vec<bool>` of allocated objects and one of marked objects.
fn run_model(class: u8, ops: &[Op]) {
    let mut o = small(class);
    let s = &mut o.span;
    let n = s.nelems();
    let (mut alloc, mut mark) = (vec![false; n], vec![false; n]);
    let lowest_free = |alloc: &[bool]| alloc.iter().position(|&a| !a);
    for op in ops {
        match *op {
            Op::Alloc => {
                let want = lowest_free(&alloc);
                assert_eq!(
                    s.next_free(),
                    want,
                    "next_free must return the lowest free object"
                );
                if let Some(i) = want {
                    alloc[i] = true;
                }
            }
            Op::Take(k) => {
                let mut out = vec![VirtAddr::zero(); k];
                let got = s.take_free(&mut out);
                let want: Vec<usize> = (0..n).filter(|&i| !alloc[i]).take(k).collect();
                assert_eq!(got, want.len());
                for (a, &i) in out.iter().zip(&want) {
                    assert_eq!(*a, s.object_addr(i), "take_free = repeated next_free");
                    alloc[i] = true;
                }
            }
            Op::Free(i) => {
                let i = i % n;
                let r = s.free_object(s.object_addr(i));
                if alloc[i] {
                    assert_eq!(r, Ok(()));
                    alloc[i] = false;
                    mark[i] = false;
                } else {
                    assert_eq!(r.unwrap_err().reason, BadFreeReason::AlreadyFree);
                }
            }
            Op::Interior(i, off) => {
                let (i, off) = (i % n, 1 + off % (s.elem_size() - 1));
                let r = s.free_object(s.object_addr(i) + off as u64);
                assert_eq!(
                    r.unwrap_err().reason,
                    BadFreeReason::Interior {
                        object: s.object_addr(i)
                    }
                );
            }
            Op::Foreign(d) => {
                for addr in [BASE - d, BASE + (n * s.elem_size()) as u64 + d - 1] {
                    let r = s.free_object(VirtAddr::new(addr));
                    assert_eq!(r.unwrap_err().reason, BadFreeReason::NotInSpan, "{addr:#x}");
                }
            }
            Op::Mark(i) => {
                // The collector only marks allocated objects.
                if let Some(i) = (0..n).map(|k| (i + k) % n).find(|&k| alloc[k]) {
                    assert_eq!(s.mark(i), !mark[i]);
                    mark[i] = true;
                }
            }
            Op::Sweep => {
                let freed = (0..n).filter(|&i| alloc[i] && !mark[i]).count();
                assert_eq!(s.sweep(), freed);
                alloc.clone_from(&mark);
                mark.fill(false);
            }
        }
        check_invariants(s);
        for i in 0..n {
            assert_eq!(
                (s.is_allocated(i), s.is_marked(i)),
                (alloc[i], mark[i]),
                "object {i}"
            );
        }
    }
}

proptest! {
    #![proptest_config(crate::testing::proptest_config(if cfg!(miri) { 3 } else { 64 }))]

    #[test]
    fn span_matches_model(class in proptest::sample::select(model_classes()), ops in prop::collection::vec(op(), 1..if cfg!(miri) { 16 } else { 400 })) {
        run_model(class, &ops);
    }
}

#[test]
fn freed_object_is_found_again_across_words() {
    let mut o = small(1);
    let s = &mut o.span;
    let mut out = vec![VirtAddr::zero(); 1024];
    assert_eq!(s.take_free(&mut out), 1024);
    for i in [1000, 64, 63, 500] {
        s.free_object(s.object_addr(i)).unwrap();
    }
    assert_eq!((s.next_free(), s.next_free()), (Some(63), Some(64)));
    assert_eq!(
        (s.next_free(), s.next_free(), s.next_free()),
        (Some(500), Some(1000), None)
    );
    check_invariants(s);
}

fn boxed(base_page: u64) -> NonNull<Span> {
    let span = Span::init_large(
        VirtAddr::new(BASE + base_page * PAGE_SIZE as u64),
        PageCount(1),
    );
    NonNull::from(Box::leak(Box::new(span)))
}

fn bases(list: &SpanList) -> Vec<u64> {
    // SAFETY: linked spans are valid boxes owned by the test.
    list.iter()
        .map(|s| (unsafe { s.as_ref() }.base().as_u64() - BASE) / PAGE_SIZE as u64)
        .collect()
}

#[derive(Clone, Debug)]
enum ListOp {
    Front,
    Back,
    Pop,
    Remove(usize),
}

proptest! {
    #![proptest_config(crate::testing::proptest_config(if cfg!(miri) { 3 } else { 256 }))]

    #[test]
    fn span_list_matches_deque(ops in prop::collection::vec(prop_oneof![
        Just(ListOp::Front), Just(ListOp::Back), Just(ListOp::Pop), any::<usize>().prop_map(ListOp::Remove)
    ], 0..if cfg!(miri) { 20 } else { 60 })) {
        let mut list = SpanList::new();
        let mut model: VecDeque<(u64, NonNull<Span>)> = VecDeque::new();
        let mut unlinked = Vec::new();
        for (k, op) in ops.iter().enumerate() {
            match *op {
                // SAFETY: fresh boxed spans, in no list, freed only after the list is done with them.
                ListOp::Front => { let s = boxed(k as u64); unsafe { list.push_front(s) }; model.push_front((k as u64, s)); }
                // SAFETY: as above: a fresh boxed span, in no list, freed after the list is done
                // with it.
                ListOp::Back => { let s = boxed(k as u64); unsafe { list.push_back(s) }; model.push_back((k as u64, s)); }
                ListOp::Pop => {
                    let got = list.pop();
                    let want = model.pop_front();
                    prop_assert_eq!(got, want.map(|(_, s)| s));
                    unlinked.extend(got);
                }
                ListOp::Remove(i) if !model.is_empty() => {
                    let (_, s) = model.remove(i % model.len()).unwrap();
                    // SAFETY: `s` is linked in `list` (the model says so).
                    unsafe { list.remove(s) };
                    unlinked.push(s);
                }
                ListOp::Remove(_) => {}
            }
            prop_assert_eq!(bases(&list), model.iter().map(|&(b, _)| b).collect::<Vec<_>>());
            prop_assert_eq!((list.len(), list.is_empty()), (model.len(), model.is_empty()));
            prop_assert_eq!(list.first(), model.front().map(|&(_, s)| s));
        }
        for s in unlinked {
            // SAFETY: every span came from `Box::leak` in `boxed`, is in no list and is freed once.
            let span = unsafe { Box::from_raw(s.as_ptr()) };
            prop_assert!(span.next.is_none() && span.prev.is_none(), "unlinked span keeps links");
        }
        while let Some(s) = list.pop() {
            // SAFETY: as above; popped from the list first.
            drop(unsafe { Box::from_raw(s.as_ptr()) });
        }
    }
}
