//! The differential test: four threads run 10 million random heap operations between them (alloc,
//! alloc_zeroed, dealloc, realloc, and hand-overs through a shared slot array, so that objects are freed
//! by a thread other than the one that allocated them), against a model that says, for every live
//! address, which object lives there.
//!
//! Each object gets a fresh id and is filled with that id's pattern over its whole length. Before an
//! object is freed or reallocated its contents are compared with the pattern, and the model must agree
//! that the address holds that object; a new object's address must not be live in the model (the heap
//! handed out no live memory twice), and must be aligned. At the end every object is freed and the heap
//! must count none.

use core::alloc::{GlobalAlloc, Layout};
use std::collections::HashMap;
use std::sync::Mutex;
use std::vec::Vec;

use crate::host::{leak, HostMachine, HostPlatform};
use crate::testing::Rng;
use crate::Heap;

const THREADS: usize = 4;
/// Operations of all threads together.
const OPS: usize = 10_000_000;
/// Hand-over slots shared by the threads.
const SLOTS: usize = 1024;
/// Objects a thread holds at most (beyond it, it frees).
const LOCAL: usize = 256;
/// Model shards, by address: four threads rarely wait for one another.
const SHARDS: usize = 64;

/// An object as the threads pass it around.
#[derive(Clone, Copy)]
struct Obj {
    addr: usize,
    layout: Layout,
    id: u64,
}

/// Length of the block an object's pattern repeats: a prime, so a shifted copy or another object's bytes
/// show.
const PERIOD: usize = 61;

fn block(id: u64) -> [u8; PERIOD] {
    let mut x = id.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    core::array::from_fn(|i| {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        (x >> 24) as u8 ^ i as u8
    })
}

fn bytes<'a>(addr: usize, len: usize) -> &'a mut [u8] {
    // SAFETY: test code: every caller passes a live object of the test's heap, at least `len` bytes,
    // owned by the calling thread alone until it frees or hands it over (after the slice is gone).
    unsafe { core::slice::from_raw_parts_mut(addr as *mut u8, len) }
}

fn fill(o: &Obj) {
    let b = block(o.id);
    for c in bytes(o.addr, o.layout.size()).chunks_mut(PERIOD) {
        c.copy_from_slice(&b[..c.len()]);
    }
}

/// Panics unless the first `len` bytes of `o` hold its pattern.
fn verify(o: &Obj, len: usize, what: &str) {
    let b = block(o.id);
    for (k, c) in bytes(o.addr, len).chunks(PERIOD).enumerate() {
        if c != &b[..c.len()] {
            let i = c.iter().zip(&b).position(|(x, y)| x != y).unwrap();
            panic!(
                "{what}: object {} at {:#x} ({:?}) corrupted at byte {}",
                o.id,
                o.addr,
                o.layout,
                k * PERIOD + i
            );
        }
    }
}

/// Live address -> id of the object there, sharded by address.
struct Model {
    shards: Vec<Mutex<HashMap<usize, u64>>>,
}

impl Model {
    fn shard(&self, addr: usize) -> std::sync::MutexGuard<'_, HashMap<usize, u64>> {
        // Objects are at least 8-byte apart: mix the address so neighbours spread over the shards.
        let h = (addr as u64 >> 3).wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 58;
        self.shards[h as usize % SHARDS].lock().unwrap()
    }

    fn born(&self, o: &Obj) {
        if let Some(old) = self.shard(o.addr).insert(o.addr, o.id) {
            panic!(
                "object {} handed out at {:#x}, where object {old} is live",
                o.id, o.addr
            );
        }
    }

    fn dies(&self, o: &Obj) {
        let was = self.shard(o.addr).remove(&o.addr);
        assert_eq!(
            was,
            Some(o.id),
            "the model has another object at {:#x} than {}",
            o.addr,
            o.id
        );
    }

    fn live(&self) -> usize {
        self.shards.iter().map(|s| s.lock().unwrap().len()).sum()
    }
}

struct Shared {
    heap: &'static Heap<HostPlatform>,
    model: Model,
    slots: Vec<Mutex<Option<Obj>>>,
}

/// Sizes: mostly small, across every class, sometimes up to 32 KiB, rarely large (up to 256 KiB);
/// alignments mostly 8 and 16, sometimes up to 4 KiB.
fn random_layout(r: &mut Rng) -> Layout {
    let size = match r.below(1000) {
        0..=799 => 1 + r.below(256),
        800..=989 => 1 + r.below(4096),
        990..=998 => 1 + r.below(32 << 10),
        _ => (32 << 10) + r.below(224 << 10),
    } as usize;
    let align = match r.below(16) {
        0..=9 => 8,
        10..=13 => 16,
        _ => 1 << r.below(13),
    };
    Layout::from_size_align(size, align).unwrap()
}

impl Shared {
    fn alloc(&self, r: &mut Rng, next_id: &mut u64) -> Obj {
        let layout = random_layout(r);
        let zeroed = r.below(8) == 0;
        // SAFETY: test code: the layout has a non-zero size.
        let p = unsafe {
            if zeroed {
                self.heap.alloc_zeroed(layout)
            } else {
                self.heap.alloc(layout)
            }
        };
        assert!(!p.is_null(), "out of memory for {layout:?}");
        assert_eq!(
            p as usize % layout.align(),
            0,
            "{p:?} not aligned: {layout:?}"
        );
        if zeroed {
            assert!(
                bytes(p as usize, layout.size()).iter().all(|&b| b == 0),
                "alloc_zeroed({layout:?}) at {p:?} is not zero"
            );
        }
        *next_id += 1;
        let o = Obj {
            addr: p as usize,
            layout,
            id: *next_id,
        };
        self.model.born(&o);
        fill(&o);
        o
    }

    fn free(&self, o: Obj) {
        verify(&o, o.layout.size(), "free");
        self.model.dies(&o);
        // SAFETY: test code: a live object of this heap with this layout, given up here.
        unsafe { self.heap.dealloc(o.addr as *mut u8, o.layout) };
    }

    fn realloc(&self, o: Obj, r: &mut Rng, next_id: &mut u64) -> Obj {
        verify(&o, o.layout.size(), "realloc");
        let new_size = random_layout(r).size();
        self.model.dies(&o);
        // SAFETY: test code: a live object of this heap with this layout; new_size > 0 and small.
        let p = unsafe { self.heap.realloc(o.addr as *mut u8, o.layout, new_size) };
        assert!(!p.is_null(), "realloc to {new_size} failed");
        let moved = Obj {
            addr: p as usize,
            layout: Layout::from_size_align(new_size, o.layout.align()).unwrap(),
            id: o.id,
        };
        verify(&moved, o.layout.size().min(new_size), "realloc's copy");
        *next_id += 1;
        let n = Obj {
            id: *next_id,
            ..moved
        };
        self.model.born(&n);
        fill(&n);
        n
    }
}

fn worker(shared: &Shared, t: usize) {
    HostPlatform::set_cpu_index(t);
    let mut r = Rng(0xD1FF_0000 + t as u64);
    // Ids: thread number in the top bits, so they are unique across threads.
    let mut next_id = (t as u64) << 48;
    let mut mine: Vec<Obj> = Vec::new();
    for _ in 0..OPS / THREADS {
        match r.below(10) {
            0..=3 => {
                let o = shared.alloc(&mut r, &mut next_id);
                mine.push(o);
            }
            4..=5 if !mine.is_empty() => {
                let o = mine.swap_remove(r.below(mine.len() as u64) as usize);
                shared.free(o);
            }
            6 if !mine.is_empty() => {
                let i = r.below(mine.len() as u64) as usize;
                mine[i] = shared.realloc(mine[i], &mut r, &mut next_id);
            }
            _ => {
                // Hand-over: put one of ours in a slot, take whatever another thread left there.
                let give = (!mine.is_empty())
                    .then(|| mine.swap_remove(r.below(mine.len() as u64) as usize));
                let slot = r.below(SLOTS as u64) as usize;
                let got = core::mem::replace(&mut *shared.slots[slot].lock().unwrap(), give);
                mine.extend(got);
            }
        }
        if mine.len() > LOCAL {
            let o = mine.swap_remove(r.below(mine.len() as u64) as usize);
            shared.free(o);
        }
    }
    for o in mine {
        shared.free(o);
    }
}

#[test]
#[cfg_attr(
    miri,
    ignore = "even 2,000 operations take Miri over seven minutes (four caches to map); \
              heap::tests covers threads and cross-thread frees under Miri"
)]
fn differential_10m_ops_4_threads_cross_thread_frees() {
    let m = HostMachine::new(512 << 20, 4 << 30);
    let heap: &'static Heap<HostPlatform> = leak(Heap::new(m.platform));
    heap.init(m.space, m.window, 2 << 30).expect("heap init");
    let shared = Shared {
        heap,
        model: Model {
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
        },
        slots: (0..SLOTS).map(|_| Mutex::new(None)).collect(),
    };
    std::thread::scope(|s| {
        for t in 0..THREADS {
            let shared = &shared;
            s.spawn(move || worker(shared, t));
        }
    });
    // What the threads left in the slots: freed here, by yet another thread.
    HostPlatform::set_cpu_index(THREADS);
    let left: Vec<Obj> = shared
        .slots
        .iter()
        .filter_map(|s| s.lock().unwrap().take())
        .collect();
    assert!(
        left.len() > SLOTS / 2,
        "the hand-over slots were hardly used: {} objects in them",
        left.len()
    );
    for o in left {
        shared.free(o);
    }
    assert_eq!(
        shared.model.live(),
        0,
        "objects the model still counts live"
    );
    assert_eq!(
        heap.stats().objects(),
        0,
        "objects the heap still counts live"
    );
}
