//! Interrupts landing inside the fast path, simulated: cache.rs calls a hook (`interrupt_hook`, tests
//! only) where a real interrupt could find the cache half used: between the busy flag's test and its
//! setting, and between a pop's or push's loads of the stack and its stores. The "handler" installed here
//! re-enters the heap from there (allocating and freeing objects of the very classes the interrupted code
//! uses, nesting once more inside its own fast paths), and every object handed out is checked against a
//! model: no two live objects overlap, and each keeps the bytes its owner wrote until it is freed.
//!
//! Without the busy flag (a handler using the stacks the interrupted code has half updated) these tests
//! fail: an object is handed out twice, or the heap's counts go wrong.

use core::alloc::{GlobalAlloc, Layout};
use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::sync::Mutex;
use std::vec::Vec;

use crate::cache::interrupt_hook::HOOK;
use crate::host::{HostMachine, HostPlatform};
use crate::Heap;

/// The host platform as a kernel's: interrupt handlers allocate (here: the hook's simulated ones), so the
/// heap guards its fast paths with the busy window.
struct Kernelish(&'static HostPlatform);

// The host's threads keep their index while they live; that handlers allocate makes the heap guard more, not less.
crate::testing::host_platform_wrapper!(Kernelish {
    const MAX_CPUS: usize = crate::host::HostPlatform::MAX_CPUS;
    const INTERRUPTED_CODE_STAYS_ON_CPU: bool = true;
    const INTERRUPT_HANDLERS_ALLOCATE: bool = true;
});

type Plain = Heap<Kernelish, false>;

fn plain_heap(phys_mib: usize, window: usize, max: usize) -> &'static Plain {
    let m = HostMachine::new(phys_mib << 20, window);
    let platform: &'static Kernelish = crate::host::leak(Kernelish(m.platform));
    let space = crate::arena::AddressSpace::new(m.space.frames, m.space.mapper, platform);
    let heap: &'static Plain = crate::host::leak(Heap::new(platform));
    heap.init(space, m.window, max).expect("heap init");
    heap
}

/// Sizes the interrupted code and the handlers share (classes 1, 2, 4, 6 and a 1 KiB one).
const SIZES: [usize; 5] = [8, 16, 32, 64, 1024];
/// How deep simulated interrupts nest (an interrupt in the handler of an interrupt).
const MAX_NEST: u32 = 2;

const fn scaled(n: usize) -> usize {
    if cfg!(miri) {
        n / 200 + 1
    } else {
        n
    }
}

/// The live objects of every thread and handler: address -> (size, fill byte). Never locked across a heap
/// call (the hook fires inside heap calls and locks it too).
struct Live(Mutex<BTreeMap<usize, (usize, u8)>>);

impl Live {
    const fn new() -> Self {
        Live(Mutex::new(BTreeMap::new()))
    }

    /// Records a fresh object, checking it overlaps no live one, and fills it.
    fn add(&self, p: *mut u8, size: usize, fill: u8) {
        assert!(!p.is_null(), "out of memory in a small heap test");
        let a = p as usize;
        {
            let live = self.0.lock().unwrap();
            if let Some((&b, &(bsize, _))) = live.range(..=a).next_back() {
                assert!(
                    b + bsize <= a,
                    "{a:#x} ({size} B) handed out while {b:#x} ({bsize} B) is live"
                );
            }
            if let Some((&b, _)) = live.range(a..).next() {
                assert!(
                    a + size <= b,
                    "{a:#x} ({size} B) handed out over the live {b:#x}"
                );
            }
        }
        // SAFETY: a fresh object of `size` bytes, ours.
        unsafe { p.write_bytes(fill, size) };
        self.0.lock().unwrap().insert(a, (size, fill));
    }

    /// Forgets a live object after checking its bytes; returns its layout, to free it.
    fn remove(&self, p: *mut u8) -> Layout {
        let (size, fill) = self.0.lock().unwrap().remove(&(p as usize)).expect("live");
        // SAFETY: a live object of `size` bytes, ours until freed.
        let bytes = unsafe { core::slice::from_raw_parts(p, size) };
        assert!(
            bytes.iter().all(|&b| b == fill),
            "{p:?} ({size} B) changed while live"
        );
        Layout::from_size_align(size, 8).unwrap()
    }
}

/// The state of one thread's simulated interrupts.
struct Handler {
    heap: &'static Plain,
    live: &'static Live,
    /// Objects handlers hold between interrupts, shared by every thread's handlers (so objects are freed
    /// on other CPUs, by later interrupts, and some by the interrupted code).
    held: &'static Mutex<Vec<usize>>,
    depth: Cell<u32>,
    fired: Cell<u64>,
    rng: Cell<u64>,
}

std::thread_local! {
    static HANDLER: RefCell<Option<&'static Handler>> = const { RefCell::new(None) };
}

impl Handler {
    fn next(&self) -> u64 {
        let mut x = self.rng.get();
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.rng.set(x);
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// The simulated interrupt handler: a few allocations and frees on the interrupted CPU.
    fn interrupt(&self) {
        if self.depth.get() >= MAX_NEST || self.next() % 3 == 0 {
            return;
        }
        self.depth.set(self.depth.get() + 1);
        self.fired.set(self.fired.get() + 1);
        for _ in 0..2 {
            let r = self.next();
            let size = SIZES[(r % SIZES.len() as u64) as usize];
            let layout = Layout::from_size_align(size, 8).unwrap();
            // SAFETY: test code; a non-zero size.
            let p = unsafe { self.heap.alloc(layout) };
            self.live.add(p, size, (r >> 8) as u8 | 1);
            if r & (1 << 20) != 0 {
                self.held.lock().unwrap().push(p as usize);
            } else {
                let layout = self.live.remove(p);
                // SAFETY: allocated just above with this layout, freed once.
                unsafe { self.heap.dealloc(p, layout) };
            }
            let old = {
                let mut held = self.held.lock().unwrap();
                let n = held.len();
                (n > 8).then(|| held.swap_remove((r >> 24) as usize % n))
            };
            if let Some(old) = old {
                let old = old as *mut u8;
                let layout = self.live.remove(old);
                // SAFETY: allocated by an earlier interrupt (or handed over) with this layout, freed once.
                unsafe { self.heap.dealloc(old, layout) };
            }
        }
        self.depth.set(self.depth.get() - 1);
    }
}

fn fire() {
    let h = HANDLER.with(|h| *h.borrow());
    if let Some(h) = h {
        h.interrupt();
    }
}

/// The interrupted code: `ops` allocations and frees of the shared sizes on this thread, with simulated
/// interrupts in every fast path; then everything it and its handlers hold is freed. Returns how many
/// interrupts fired.
fn hammer(
    heap: &'static Plain,
    live: &'static Live,
    held: &'static Mutex<Vec<usize>>,
    seed: u64,
    ops: usize,
) -> u64 {
    let h: &'static Handler = crate::host::leak(Handler {
        heap,
        live,
        held,
        depth: Cell::new(0),
        fired: Cell::new(0),
        rng: Cell::new(seed | 1),
    });
    HANDLER.with(|c| *c.borrow_mut() = Some(h));
    HOOK.with(|c| c.set(Some(fire)));
    let mut mine: Vec<*mut u8> = Vec::new();
    let mut rng = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    for i in 0..ops {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        if mine.len() < 48 && (rng % 5 < 3 || mine.is_empty()) {
            let size = SIZES[(rng >> 32) as usize % SIZES.len()];
            // SAFETY: test code; a non-zero size.
            let p = unsafe { heap.alloc(Layout::from_size_align(size, 8).unwrap()) };
            live.add(p, size, i as u8 | 0x80);
            mine.push(p);
        } else {
            let p = mine.swap_remove((rng >> 40) as usize % mine.len());
            let layout = live.remove(p);
            // SAFETY: allocated above with this layout, freed once.
            unsafe { heap.dealloc(p, layout) };
        }
        if i % 64 == 0 {
            // Take over an object a handler held: freed outside interrupts.
            let p = h.held.lock().unwrap().pop();
            mine.extend(p.map(|p| p as *mut u8));
        }
    }
    HOOK.with(|c| c.set(None));
    let rest: Vec<usize> = h.held.lock().unwrap().drain(..).collect();
    mine.extend(rest.into_iter().map(|p| p as *mut u8));
    for p in mine {
        let layout = live.remove(p);
        // SAFETY: live objects of this heap with these layouts, freed once.
        unsafe { heap.dealloc(p, layout) };
    }
    h.fired.get()
}

#[test]
fn interrupts_inside_the_fast_path() {
    static LIVE: Live = Live::new();
    static HELD: Mutex<Vec<usize>> = Mutex::new(Vec::new());
    let heap = plain_heap(16, 256 << 20, 64 << 20);
    let fired = std::thread::scope(|s| {
        s.spawn(|| hammer(heap, &LIVE, &HELD, 0x1234_5678, scaled(40_000)))
            .join()
            .unwrap()
    });
    assert!(fired > scaled(40_000) as u64 / 2, "only {fired} interrupts");
    let stats = heap.stats();
    assert_eq!(
        stats.objects(),
        0,
        "objects leaked or counted twice:\n{stats}"
    );
    assert!(
        stats.interrupted_fast_paths > 0,
        "no interrupt found the cache busy (the hook fires inside the busy window)"
    );
    assert!(LIVE.0.lock().unwrap().is_empty());
}

/// The same on four threads ("CPUs") at once, whose objects also go back on other CPUs (handlers free
/// objects of a shared pool).
#[test]
#[cfg_attr(
    miri,
    ignore = "four threads of simulated interrupts: minutes under Miri"
)]
fn interrupts_inside_the_fast_path_on_four_cpus() {
    static LIVE: Live = Live::new();
    static HELD: Mutex<Vec<usize>> = Mutex::new(Vec::new());
    let heap = plain_heap(64, 1 << 30, 256 << 20);
    let fired: u64 = std::thread::scope(|s| {
        let threads: Vec<_> = (0..4u64)
            .map(|t| s.spawn(move || hammer(heap, &LIVE, &HELD, 0xabc0 + t, 20_000)))
            .collect();
        threads.into_iter().map(|t| t.join().unwrap()).sum()
    });
    assert!(fired > 4 * 20_000 / 2, "only {fired} interrupts");
    let stats = heap.stats();
    assert_eq!(
        stats.objects(),
        0,
        "objects leaked or counted twice:\n{stats}"
    );
    assert!(stats.interrupted_fast_paths > 0);
}
