//! Counters and the gctrace line (Go's GODEBUG=gctrace=1): one line per cycle, written at mark
//! termination to the caller's sink (a `fn(&str)`: no_std has no stderr):
//!
//! `gc 7 incr: pause max 0.041 ms (root 0.012 ms, 35 steps, 12 assists), mark 1.830 ms, sweep 0.210 ms, heap 8.11 -> 9.02 -> 4.37 MiB, goal 8.74 MiB, 31208 objects marked by 1 CPU`
//!
//! - `incr`, `conc` or `stw`: how the mark ran (`conc`: with workers beside the mutator, conc.rs).
//! - pause max: the longest piece of collector work the mutator waited for in this cycle, the one still
//!   running at termination included up to the termination (for `stw`, the whole cycle from sweep
//!   termination to mark termination; `collect`'s eager sweep afterwards is not in the line); root: the
//!   cycle start (sweep termination + root scan).
//! - mark: from the cycle start to termination (wall time, mutator included when incremental).
//! - sweep: time spent sweeping the *previous* cycle's spans (sweeping is lazy, so it is only known
//!   when the next cycle starts).
//! - heap A -> B -> C: heap_live at the start, at termination, and marked (live) bytes; goal: the goal
//!   the cycle paced to.
//! - by N CPUs: the most mark workers that scanned objects in one drain of this cycle (parallel marking,
//!   `GcConfig::mark_workers`); 1 when the heap's CPU marked alone.
//!
//! Invariants: formatting never allocates (a fixed buffer; an over-long line is cut, not lost).

use core::fmt::{self, Write};

/// What a pause — a piece of collector work the mutator waited for — was spent on (`GcStats::by_kind`,
/// `GcConfig::pause_hook`). Go's names where Go has the piece.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum PauseKind {
    /// A whole stop-the-world cycle (`Mode::StopTheWorld`, `GcHeap::collect`).
    StopTheWorld,
    /// A cycle's start: the last sweep's end, mark setup and the root scan.
    Start,
    /// Sweeping: an allocation's proportional share, a slice before a cycle starts, or a step's.
    Sweep,
    /// A mark assist: an allocation paying for what it allocated while marking.
    Assist,
    /// Marking in an explicit `GcHeap::step`.
    Step,
    /// A slice of a concurrent mark's side table: taking its chunks, building or merging it (conc.rs).
    Table,
    /// A concurrent mark's hand-over at a safe point: grey work to the workers and jobs started, or the
    /// switch to merging once they are stopped.
    Handover,
    /// The mutator waiting for a concurrent worker to finish copying or tracing a cell (cell.rs).
    CellWait,
    /// Mark termination (or `finish_mark`: the rest of the mark, then termination).
    Termination,
}

impl PauseKind {
    /// Every kind, in `GcStats::by_kind`'s order.
    pub const ALL: [PauseKind; 9] = [
        PauseKind::StopTheWorld,
        PauseKind::Start,
        PauseKind::Sweep,
        PauseKind::Assist,
        PauseKind::Step,
        PauseKind::Table,
        PauseKind::Handover,
        PauseKind::CellWait,
        PauseKind::Termination,
    ];

    /// A short lowercase name, for tables.
    pub const fn name(self) -> &'static str {
        match self {
            PauseKind::StopTheWorld => "stw",
            PauseKind::Start => "start",
            PauseKind::Sweep => "sweep",
            PauseKind::Assist => "assist",
            PauseKind::Step => "step",
            PauseKind::Table => "table",
            PauseKind::Handover => "handover",
            PauseKind::CellWait => "cell wait",
            PauseKind::Termination => "termination",
        }
    }
}

/// Pauses of one kind: how many, their total and the longest (ns).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PauseStat {
    pub count: u64,
    pub total_ns: u64,
    pub max_ns: u64,
}

/// Collector counters since the heap was made (plus a snapshot of the pacer).
#[derive(Clone, Copy, Debug, Default)]
pub struct GcStats {
    pub cycles: u64,
    /// Pieces of collector work the mutator waited for, their total and the longest.
    pub pauses: u64,
    pub pause_total_ns: u64,
    pub pause_max_ns: u64,
    /// The same per kind of work, in `PauseKind::ALL`'s order ([`GcStats::pauses_of`],
    /// [`GcStats::by_kind`]; private so that a new kind breaks nobody).
    pub(crate) kinds: [PauseStat; PauseKind::ALL.len()],
    pub assists: u64,
    pub objects_freed: u64,
    pub bytes_freed: u64,
    pub spans_freed: u64,
    pub finalized: u64,
    /// Heap rescans after the grey stack could not grow.
    pub overflow_rescans: u64,
    /// Mark jobs handed to `ConcurrentWorkers::start` (conc.rs), and the bytes of objects concurrent
    /// mark workers scanned.
    pub concurrent_jobs: u64,
    pub concurrent_scan_bytes: u64,
    /// Live bytes marked by the last cycle.
    pub last_live: usize,
    pub heap_live: usize,
    pub goal: usize,
    pub trigger: usize,
    /// Pages in GC spans, and those waiting for the sweeper.
    pub pages: usize,
    pub unswept_pages: usize,
}

impl GcStats {
    /// The pauses of `kind`.
    pub fn pauses_of(&self, kind: PauseKind) -> PauseStat {
        self.kinds[kind as usize]
    }

    /// Every kind with its pauses, in `PauseKind::ALL`'s order.
    pub fn by_kind(&self) -> impl Iterator<Item = (PauseKind, PauseStat)> + '_ {
        PauseKind::ALL.into_iter().zip(self.kinds)
    }

    /// Counts a pause of `ns` spent on `kind` (saturating: the clock is the user's).
    pub(crate) fn count_pause(&mut self, kind: PauseKind, ns: u64) {
        self.pauses += 1;
        self.pause_total_ns = self.pause_total_ns.saturating_add(ns);
        self.pause_max_ns = self.pause_max_ns.max(ns);
        let k = &mut self.kinds[kind as usize];
        k.count += 1;
        k.total_ns = k.total_ns.saturating_add(ns);
        k.max_ns = k.max_ns.max(ns);
    }
}

/// What one cycle logs.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct CycleLog {
    pub(crate) stw: bool,
    /// The mark had a side table: workers could run beside the mutator (conc.rs).
    pub(crate) concurrent: bool,
    pub(crate) start_ns: u64,
    pub(crate) root_ns: u64,
    pub(crate) pause_max_ns: u64,
    /// Start of the pause that runs the termination (the stop-the-world cycle, `finish_mark` or the
    /// termination itself): it ends after the line is made, so the line counts it up to termination.
    pub(crate) pause_t0: Option<u64>,
    pub(crate) steps: u64,
    /// Most CPUs that marked at once in this cycle (parallel marking, par.rs); 0 if nothing was scanned.
    pub(crate) mark_cpus: usize,
    pub(crate) assists: u64,
    /// Scan work the mutator's assists did in this cycle (not its steps, termination or forced
    /// end): the pacer's sign that a concurrent mark's workers started too late (pacer.rs).
    pub(crate) assist_scan: usize,
    pub(crate) sweep_ns: u64,
    pub(crate) heap_start: usize,
    pub(crate) goal: usize,
}

/// One finished cycle, as the line shows it.
pub(crate) struct Line {
    pub(crate) cycle: u64,
    pub(crate) log: CycleLog,
    pub(crate) mark_ns: u64,
    pub(crate) heap_end: usize,
    pub(crate) live: usize,
    pub(crate) marked_objects: usize,
}

struct Ms(u64);
impl fmt::Display for Ms {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{:03} ms", self.0 / 1_000_000, self.0 / 1000 % 1000)
    }
}

struct Mib(usize);
impl fmt::Display for Mib {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let hundredths = self.0 as u64 * 100 / (1 << 20);
        write!(f, "{}.{:02}", hundredths / 100, hundredths % 100)
    }
}

impl fmt::Display for Line {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let l = &self.log;
        write!(
            f,
            "gc {} {}: pause max {} (root {}, {} steps, {} assists), mark {}, sweep {}, heap {} -> {} -> {} MiB, goal {} MiB, {} objects marked by {} CPU{}",
            self.cycle,
            if l.stw {
                "stw"
            } else if l.concurrent {
                "conc"
            } else {
                "incr"
            },
            Ms(l.pause_max_ns),
            Ms(l.root_ns),
            l.steps,
            l.assists,
            Ms(self.mark_ns),
            Ms(l.sweep_ns),
            Mib(l.heap_start),
            Mib(self.heap_end),
            Mib(self.live),
            Mib(l.goal),
            self.marked_objects,
            l.mark_cpus.max(1),
            if l.mark_cpus > 1 { "s" } else { "" }
        )
    }
}

/// A fixed line buffer.
struct Buf {
    bytes: [u8; 320],
    len: usize,
}

impl Write for Buf {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        let n = s.len().min(self.bytes.len() - self.len);
        self.bytes[self.len..self.len + n].copy_from_slice(&s.as_bytes()[..n]);
        self.len += n;
        Ok(())
    }
}

/// Formats `line` and hands it to `sink`.
pub(crate) fn emit(sink: fn(&str), line: &Line) {
    let mut b = Buf {
        bytes: [0; 320],
        len: 0,
    };
    let _ = write!(b, "{line}");
    // A cut may split a UTF-8 sequence; the line is ASCII except type names, so keep the valid prefix.
    let s = match core::str::from_utf8(&b.bytes[..b.len]) {
        Ok(s) => s,
        Err(e) => core::str::from_utf8(&b.bytes[..e.valid_up_to()]).unwrap_or(""),
    };
    sink(s);
}
