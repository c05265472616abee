//! The frame allocator built from arbitrary boot memory maps: unsorted, overlapping, unaligned, empty,
//! inverted and huge regions (up to 1 TiB of physical address space).
//!
//! Building must give the error the map deserves or a correct allocator:
//! - a region ending before it starts: `InvertedRegion` naming the first such region;
//! - no usable frame at or above 1 MiB: `NoUsableMemory`;
//! - `NoRoomForMetadata` only with the largest usable run the model finds, and less than needed.
//!
//! A frame is usable when one usable region holds all of it and no reserved region touches a byte of it
//! (ARCHITECTURE.md / frames/sweep.rs). The model computes the runs of usable frames from the region
//! boundaries alone (between boundaries nothing changes), so huge maps cost no more than small ones.
//! On an allocator, arbitrary operations check: `allocate`, `allocate_zeroed` and `allocate_contiguous`
//! hand out only usable frames at or above 1 MiB, never a metadata frame, never one that is out, aligned
//! as asked, zeroed when asked; `allocate_low` only usable frames in 1..256; `free` takes them back;
//! `manages` and the counters agree with the model. On small maps the allocator is drained at the end:
//! the frames handed out plus the metadata are exactly the model's usable frames.

#![no_main]

use std::collections::BTreeSet;
use std::sync::OnceLock;

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use spanalloc::frames::{FrameAllocator, FrameInitError, MemoryRegion, RegionKind};
use spanalloc::{FrameCount, PhysAddr, PhysFrame, VirtAddr, FRAME_SIZE};

/// The physical address space the maps live in: [0, 1 TiB).
const LIMIT: u64 = 1 << 40;
/// Frames below this (1 MiB) are only for `allocate_low`.
const LOW: u64 = 256;
/// Drain and compare whole sets when the model counts at most this many usable frames.
const DRAIN_MAX: u64 = 2048;

const REASONS: [&str; 3] = ["firmware", "bootloader", "acpi"];

/// The fake physical memory: one inaccessible-until-touched reservation of `LIMIT` bytes (MAP_NORESERVE:
/// only the pages the allocator writes, its metadata and zeroed frames, ever get memory), made once.
fn phys() -> u64 {
    static BASE: OnceLock<u64> = OnceLock::new();
    *BASE.get_or_init(|| {
        // SAFETY: a fresh private anonymous mapping chosen by the kernel; it overlaps nothing Rust owns.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                LIMIT as usize,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                -1,
                0,
            )
        };
        assert!(
            p != libc::MAP_FAILED,
            "fuzz: cannot reserve {LIMIT:#x} bytes of fake physical memory: {}",
            std::io::Error::last_os_error()
        );
        p as u64
    })
}

#[derive(Arbitrary, Debug)]
struct Region {
    /// Start `start * unit(start_unit)`, clamped to `LIMIT`.
    start: u16,
    start_unit: u8,
    /// Length `len * unit(len_unit)`; the region ends that far after (or, `inverted`, before) its start.
    len: u16,
    len_unit: u8,
    inverted: bool,
    /// Even: usable; odd: reserved with one of `REASONS`.
    kind: u8,
}

#[derive(Arbitrary, Debug)]
enum Op {
    Alloc,
    AllocZeroed,
    /// `1 + count % 64` frames aligned to `2^(align_log % 10)` frames.
    AllocContiguous {
        count: u8,
        align_log: u8,
    },
    AllocLow,
    /// Frees the held run `which % held` (single frames, runs and low frames alike).
    Free {
        which: u16,
    },
    /// Checks `manages` on frame `frame << (shift % 29)`.
    Manages {
        frame: u32,
        shift: u8,
    },
}

#[derive(Arbitrary, Debug)]
struct Input {
    regions: Vec<Region>,
    ops: Vec<Op>,
}

/// `v` units of bytes (below 64 KiB: unaligned anywhere), frames (up to 256 MiB), MiB (up to 64 GiB) or
/// 16 MiB (up to `LIMIT`). Maps reaching far up make the allocator's metadata big (a bit per frame up to
/// the last usable one: 32 MiB at 1 TiB), and so an input slow: they are the rarer kinds.
fn scaled(v: u16, unit: u8) -> u64 {
    let unit = match unit % 32 {
        0..=7 => 1,
        8..=28 => FRAME_SIZE,
        29 | 30 => 1 << 20,
        _ => 16 << 20,
    };
    (u64::from(v) * unit).min(LIMIT)
}

fn region(r: &Region) -> MemoryRegion {
    let start = scaled(r.start, r.start_unit);
    let len = scaled(r.len, r.len_unit);
    let end = if r.inverted {
        start.saturating_sub(len)
    } else {
        (start + len).min(LIMIT)
    };
    MemoryRegion {
        start: PhysAddr::new(start),
        end: PhysAddr::new(end),
        kind: if r.kind % 2 == 0 {
            RegionKind::Usable
        } else {
            RegionKind::Reserved(REASONS[usize::from(r.kind / 2) % REASONS.len()])
        },
    }
}

/// The model's rule for one frame: wholly inside one usable region, touched by no reserved one.
fn usable(regions: &[MemoryRegion], f: u64) -> bool {
    let (a, b) = (f * FRAME_SIZE, (f + 1) * FRAME_SIZE);
    let mut inside = false;
    for r in regions {
        let (s, e) = (r.start.as_u64(), r.end.as_u64());
        match r.kind {
            RegionKind::Usable => inside |= s <= a && b <= e,
            RegionKind::Reserved(_) => {
                if s < b && a < e {
                    return false;
                }
            }
        }
    }
    inside
}

/// The maximal runs `[a, b)` of usable frames at or above 1 MiB, in order. Frame breakpoints are the
/// frames holding a region boundary and the ones after them; between two breakpoints every frame but
/// the first sees the same regions, so two evaluations per breakpoint decide everything.
fn usable_runs(regions: &[MemoryRegion]) -> Vec<(u64, u64)> {
    let mut points: Vec<u64> = vec![LOW];
    for r in regions {
        for x in [r.start.as_u64(), r.end.as_u64()] {
            points.push(x / FRAME_SIZE);
            points.push(x.div_ceil(FRAME_SIZE));
        }
    }
    let points: BTreeSet<u64> = points.into_iter().filter(|&p| p >= LOW).collect();
    let points: Vec<u64> = points.into_iter().collect();
    let mut runs: Vec<(u64, u64)> = Vec::new();
    let mut add = |a: u64, b: u64| {
        if a >= b {
            return;
        }
        match runs.last_mut() {
            Some(last) if last.1 == a => last.1 = b,
            _ => runs.push((a, b)),
        }
    };
    for (i, &p) in points.iter().enumerate() {
        // The last breakpoint is past every region: nothing there or beyond is usable.
        let Some(&next) = points.get(i + 1) else {
            break;
        };
        if usable(regions, p) {
            add(p, p + 1);
        }
        if p + 1 < next && usable(regions, p + 1) {
            add(p + 1, next);
        }
    }
    runs
}

fn in_runs(runs: &[(u64, u64)], f: u64) -> bool {
    let i = runs.partition_point(|r| r.1 <= f);
    runs.get(i).is_some_and(|r| r.0 <= f)
}

fn number(f: PhysFrame) -> u64 {
    f.start_address().as_u64() / FRAME_SIZE
}

fn frame(n: u64) -> PhysFrame {
    PhysFrame::containing_address(PhysAddr::new(n * FRAME_SIZE))
}

struct Held {
    /// Runs handed out: (first frame, count, low).
    runs: Vec<(u64, u64, bool)>,
    /// Every frame handed out and not freed.
    frames: BTreeSet<u64>,
    managed: u64,
}

impl Held {
    fn take(&mut self, first: u64, count: u64, low: bool) {
        for f in first..first + count {
            assert!(self.frames.insert(f), "frame {f:#x} handed out twice");
        }
        self.runs.push((first, count, low));
        if !low {
            self.managed += count;
        }
    }
}

fuzz_target!(|input: Input| {
    let regions: Vec<MemoryRegion> = input.regions.iter().take(48).map(region).collect();
    let base = phys();
    // SAFETY: every region lies below LIMIT, and [base, base + LIMIT) is mapped readable and writable and
    // used by nothing else; the allocator and its frames are dropped at the end of this input, before the
    // next input builds another one over the same memory.
    let built = unsafe { FrameAllocator::new(regions.iter().copied(), VirtAddr::new(base)) };
    if let Some(r) = regions.iter().find(|r| r.end < r.start) {
        assert_eq!(
            built.err(),
            Some(FrameInitError::InvertedRegion {
                start: r.start,
                end: r.end
            })
        );
        return;
    }
    let runs = usable_runs(&regions);
    let total: u64 = runs.iter().map(|r| r.1 - r.0).sum();
    let largest = runs.iter().map(|r| r.1 - r.0).max().unwrap_or(0);
    let mut frames = match built {
        Err(FrameInitError::InvertedRegion { .. }) => {
            panic!("InvertedRegion for a map without one")
        }
        Err(FrameInitError::NoUsableMemory) => {
            assert_eq!(
                total, 0,
                "NoUsableMemory, but the model has usable runs {runs:?}"
            );
            return;
        }
        Err(FrameInitError::NoRoomForMetadata {
            needed,
            largest_run,
        }) => {
            assert_eq!(largest_run, FrameCount(largest), "largest usable run");
            assert!(
                needed.0 > largest,
                "NoRoomForMetadata, yet {needed} fit in {largest} frames"
            );
            assert!(total > 0, "NoRoomForMetadata instead of NoUsableMemory");
            return;
        }
        Ok(frames) => frames,
    };
    assert!(total > 0, "an allocator over no usable frame");
    let (meta, meta_count) = frames.metadata();
    let meta = number(meta)..number(meta) + meta_count.0;
    assert!(meta_count.0 > 0, "no metadata frames");
    assert!(
        runs.iter().any(|r| r.0 <= meta.start && meta.end <= r.1),
        "metadata {meta:?} outside the usable runs {runs:?}"
    );
    assert_eq!(frames.managed().0, total - meta_count.0, "managed frames");
    assert_eq!(frames.free_frames(), frames.managed());
    let low: BTreeSet<u64> = (1..LOW).filter(|&f| usable(&regions, f)).collect();
    let managed_frame = |f: u64| f >= LOW && in_runs(&runs, f) && !meta.contains(&f);

    let mut held = Held {
        runs: Vec::new(),
        frames: BTreeSet::new(),
        managed: 0,
    };
    for op in input.ops {
        match op {
            Op::Alloc | Op::AllocZeroed => {
                let zeroed = matches!(op, Op::AllocZeroed);
                let got = if zeroed {
                    frames.allocate_zeroed()
                } else {
                    frames.allocate()
                };
                let Some(f) = got else {
                    assert_eq!(
                        held.managed,
                        frames.managed().0,
                        "allocate failed with frames free"
                    );
                    continue;
                };
                let n = number(f);
                assert!(
                    managed_frame(n),
                    "allocate handed out frame {n:#x}, not a managed frame"
                );
                held.take(n, 1, false);
                if zeroed {
                    // SAFETY: the frame lies below LIMIT, inside the mapping, and is ours now.
                    let bytes = unsafe {
                        std::slice::from_raw_parts(
                            (base + n * FRAME_SIZE) as *const u8,
                            FRAME_SIZE as usize,
                        )
                    };
                    assert!(
                        bytes.iter().all(|&b| b == 0),
                        "allocate_zeroed: frame {n:#x} not zero"
                    );
                }
            }
            Op::AllocContiguous { count, align_log } => {
                let count = 1 + u64::from(count % 64);
                let align = 1u64 << (align_log % 10);
                let Some(f) = frames.allocate_contiguous(FrameCount(count), FrameCount(align))
                else {
                    continue;
                };
                let n = number(f);
                assert_eq!(
                    n % align,
                    0,
                    "run of {count} at {n:#x} not aligned to {align} frames"
                );
                for g in n..n + count {
                    assert!(
                        managed_frame(g),
                        "allocate_contiguous handed out frame {g:#x}"
                    );
                }
                held.take(n, count, false);
            }
            Op::AllocLow => {
                let Some(f) = frames.allocate_low() else {
                    let out = held.runs.iter().filter(|r| r.2).count();
                    assert_eq!(out, low.len(), "allocate_low failed with low frames free");
                    continue;
                };
                let n = number(f);
                assert!(low.contains(&n), "allocate_low handed out frame {n:#x}");
                held.take(n, 1, true);
            }
            Op::Free { which } => {
                if held.runs.is_empty() {
                    continue;
                }
                let i = usize::from(which) % held.runs.len();
                let (first, count, low) = held.runs.swap_remove(i);
                frames.free_contiguous(frame(first), FrameCount(count));
                for f in first..first + count {
                    held.frames.remove(&f);
                }
                if !low {
                    held.managed -= count;
                }
            }
            Op::Manages { frame: f, shift } => {
                let f = u64::from(f)
                    .checked_shl(u32::from(shift % 29))
                    .unwrap_or(u64::MAX)
                    % (LIMIT / FRAME_SIZE);
                let want = managed_frame(f) || low.contains(&f);
                assert_eq!(frames.manages(frame(f)), want, "manages({f:#x})");
            }
        }
        assert_eq!(
            frames.free_frames().0,
            frames.managed().0 - held.managed,
            "free frames"
        );
    }

    if total <= DRAIN_MAX {
        let mut got: BTreeSet<u64> = held.frames.iter().copied().filter(|&f| f >= LOW).collect();
        while let Some(f) = frames.allocate() {
            let n = number(f);
            assert!(got.insert(n), "frame {n:#x} handed out twice");
            held.runs.push((n, 1, false));
        }
        assert_eq!(frames.free_frames(), FrameCount(0));
        got.extend(meta.clone());
        let want: BTreeSet<u64> = runs.iter().flat_map(|r| r.0..r.1).collect();
        assert_eq!(
            got, want,
            "frames handed out plus metadata differ from the usable frames"
        );
    }
    for (first, count, _) in held.runs.drain(..) {
        frames.free_contiguous(frame(first), FrameCount(count));
    }
    assert_eq!(
        frames.free_frames(),
        frames.managed(),
        "not every frame came back"
    );
    // Give the pages the allocator touched back to the OS, so the process stays small across inputs.
    let end = regions.iter().map(|r| r.end.as_u64()).max().unwrap_or(0);
    // SAFETY: [base, base + end) lies in the mapping, and nothing uses it any more (`frames` is not used
    // after this);
    // MADV_DONTNEED on a private anonymous mapping makes it read as zero again.
    unsafe {
        libc::madvise(
            base as *mut libc::c_void,
            end.next_multiple_of(4096) as usize,
            libc::MADV_DONTNEED,
        )
    };
});
