//! The heap (`GlobalAlloc`) under arbitrary sequences of alloc, alloc_zeroed, dealloc, realloc and trim,
//! over every small size class (at, just under and just over each class size) and large sizes, with
//! alignments up to 2 MiB.
//!
//! Checked against a model of the live objects (address -> layout, identity): every pointer is non-null
//! and aligned, no two live objects overlap, alloc_zeroed memory reads zero, every object keeps its own
//! contents (a pattern of its identity, written over all of it) until it is freed or reallocated,
//! realloc keeps the old prefix, and once everything is freed the heap counts no live object.

#![no_main]

use std::alloc::{GlobalAlloc, Layout};
use std::collections::BTreeMap;

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use spanalloc::sizeclass::{SizeClass, MAX_SMALL_SIZE, NUM_SIZE_CLASSES};
use spanalloc_fuzz::{fill, first_corrupt, heap, MAX_LIVE_BYTES};

/// Compared against in blocks (a byte loop would cost an instrumented comparison per byte).
static ZEROES: [u8; 4096] = [0; 4096];

/// Most objects live at once (bounds the work per input).
const MAX_LIVE: usize = 512;

#[derive(Arbitrary, Debug, Clone, Copy)]
enum Size {
    /// Near the size of small class `1 + class % 67`: `delta` (-4..=4) bytes off it.
    Class { class: u8, delta: i8 },
    /// 1..=1024 bytes.
    Tiny(u16),
    /// A large object: over 32 KiB, up to 1 MiB + 32 KiB.
    Large(u32),
    /// Any size up to 4 MiB.
    Any(u32),
}

impl Size {
    fn bytes(self) -> usize {
        match self {
            Size::Class { class, delta } => {
                let class = SizeClass::new(1 + class % (NUM_SIZE_CLASSES as u8 - 1))
                    .expect("classes 1..=67 exist");
                let d = isize::from(delta % 5);
                (class.size() as isize + d).max(1) as usize
            }
            Size::Tiny(n) => 1 + usize::from(n) % 1024,
            Size::Large(n) => MAX_SMALL_SIZE + 1 + n as usize % (1 << 20),
            Size::Any(n) => 1 + n as usize % (4 << 20),
        }
    }
}

#[derive(Arbitrary, Debug)]
enum Op {
    Alloc {
        size: Size,
        /// Alignment `2^(align_log % 22)`: 1 B .. 2 MiB.
        align_log: u8,
        zeroed: bool,
    },
    /// Frees the live object `which % live` (in address order).
    Free {
        which: u16,
    },
    Realloc {
        which: u16,
        size: Size,
    },
    Trim,
}

struct Object {
    layout: Layout,
    id: u64,
}

struct Model {
    live: BTreeMap<usize, Object>,
    bytes: usize,
    next_id: u64,
}

impl Model {
    fn contents(addr: usize, size: usize) -> &'static mut [u8] {
        // SAFETY: every address passed here is a live object of the heap of at least `size` bytes, owned
        // by the model alone; the slice is dropped before the object is freed or reallocated.
        unsafe { std::slice::from_raw_parts_mut(addr as *mut u8, size) }
    }

    fn verify(addr: usize, o: &Object) {
        if let Some(i) = first_corrupt(Self::contents(addr, o.layout.size()), o.id) {
            panic!(
                "object {addr:#x} ({:?}, id {}) corrupted at byte {i}",
                o.layout, o.id
            );
        }
    }

    /// Checks a fresh object and takes it into the model with new contents.
    fn insert(&mut self, p: *mut u8, layout: Layout) {
        assert!(
            !p.is_null(),
            "out of memory for {layout:?} with {} B live",
            self.bytes
        );
        let addr = p as usize;
        assert_eq!(
            addr % layout.align(),
            0,
            "{p:?} is not aligned for {layout:?}"
        );
        if let Some((&prev, o)) = self.live.range(..=addr).next_back() {
            assert!(
                prev + o.layout.size() <= addr,
                "{p:?} ({layout:?}) overlaps the live object {prev:#x} ({:?})",
                o.layout
            );
        }
        if let Some((&next, o)) = self.live.range(addr..).next() {
            assert!(
                addr + layout.size() <= next,
                "{p:?} ({layout:?}) overlaps the live object {next:#x} ({:?})",
                o.layout
            );
        }
        let id = self.next_id;
        self.next_id += 1;
        fill(Self::contents(addr, layout.size()), id);
        self.bytes += layout.size();
        self.live.insert(addr, Object { layout, id });
    }

    fn nth(&self, which: u16) -> Option<usize> {
        let n = self.live.len();
        (n > 0).then(|| *self.live.keys().nth(usize::from(which) % n).unwrap())
    }

    fn take(&mut self, addr: usize) -> Object {
        let o = self.live.remove(&addr).unwrap();
        Self::verify(addr, &o);
        self.bytes -= o.layout.size();
        o
    }

    fn free(&mut self, addr: usize) {
        let o = self.take(addr);
        // SAFETY: a live object of this heap, allocated with this layout; the model forgets it.
        unsafe { heap().dealloc(addr as *mut u8, o.layout) };
    }
}

fuzz_target!(|ops: Vec<Op>| {
    let heap = heap();
    let mut m = Model {
        live: BTreeMap::new(),
        bytes: 0,
        next_id: 1,
    };
    for op in ops {
        match op {
            Op::Alloc {
                size,
                align_log,
                zeroed,
            } => {
                let layout = Layout::from_size_align(size.bytes(), 1 << (align_log % 22)).unwrap();
                if m.live.len() >= MAX_LIVE || m.bytes + layout.size() > MAX_LIVE_BYTES {
                    continue;
                }
                // SAFETY: the layout has a non-zero size.
                let p = unsafe {
                    if zeroed {
                        heap.alloc_zeroed(layout)
                    } else {
                        heap.alloc(layout)
                    }
                };
                if zeroed && !p.is_null() {
                    let bytes = Model::contents(p as usize, layout.size());
                    if bytes.chunks(4096).any(|c| c != &ZEROES[..c.len()]) {
                        let i = bytes.iter().position(|&b| b != 0).unwrap();
                        panic!(
                            "alloc_zeroed({layout:?}) at {p:?}: byte {i} is {:#x}",
                            bytes[i]
                        );
                    }
                }
                m.insert(p, layout);
            }
            Op::Free { which } => {
                if let Some(addr) = m.nth(which) {
                    m.free(addr);
                }
            }
            Op::Realloc { which, size } => {
                let Some(addr) = m.nth(which) else { continue };
                let new_size = size.bytes();
                let old = &m.live[&addr];
                if m.bytes - old.layout.size() + new_size > MAX_LIVE_BYTES {
                    continue;
                }
                let o = m.take(addr);
                // SAFETY: a live object of this heap with this layout; new_size > 0 and, rounded up to
                // the alignment, does not overflow. The model has forgotten the old object.
                let p = unsafe { heap.realloc(addr as *mut u8, o.layout, new_size) };
                assert!(
                    !p.is_null(),
                    "realloc of {addr:#x} ({:?}) to {new_size} failed",
                    o.layout
                );
                let kept = o.layout.size().min(new_size);
                if let Some(i) = first_corrupt(Model::contents(p as usize, kept), o.id) {
                    panic!(
                        "realloc of {addr:#x} ({:?}) to {new_size} at {p:?} lost byte {i} of the prefix",
                        o.layout
                    );
                }
                m.insert(
                    p,
                    Layout::from_size_align(new_size, o.layout.align()).unwrap(),
                );
            }
            Op::Trim => {
                heap.trim();
                // Trimming moves objects nowhere: every live object is intact.
                for (&addr, o) in &m.live {
                    Model::verify(addr, o);
                }
            }
        }
    }
    while let Some(addr) = m.nth(0) {
        m.free(addr);
    }
    let stats = heap.stats();
    assert_eq!(
        stats.objects(),
        0,
        "objects counted live after everything was freed:\n{stats}"
    );
});
