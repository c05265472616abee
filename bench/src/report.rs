//! The outputs: `results.csv` (one row per metric, contestant and thread count), `results.md` (the tables),
//! and the target checks both print.
//!
//! Invariants: the CSV's comment lines start with `#` and come first; every data row has the same columns
//! as the header; numbers are written with enough digits to recompute every ratio.

use std::fmt::Write as _;

use crate::contestants::Id;
use crate::machine::Machine;
use crate::stats::{Results, Row, Summary};
use crate::workloads::{scaling, Unit};

pub const CSV_HEADER: &str =
    "workload,unit,higher_is_better,contestant,threads,reps,median,q1,q3,min,max,\
advantage_median,advantage_min,advantage_max";

/// What the run was: for the headers.
pub struct RunInfo<'a> {
    pub machine: &'a Machine,
    pub command: String,
    pub reps: usize,
    pub arena_mib: usize,
    pub duration_ms: u128,
    pub contestants: Vec<Id>,
    /// The repository's commit (see `git_commit` in main.rs).
    pub commit: String,
}

pub fn csv(results: &Results, info: &RunInfo) -> String {
    let mut s = String::new();
    writeln!(s, "# spanalloc-bench: {}", info.machine.one_line()).unwrap();
    writeln!(s, "# command: {}", info.command).unwrap();
    writeln!(s, "# commit: {}", info.commit).unwrap();
    writeln!(
        s,
        "# advantage = spanalloc's edge in that repetition (peer cost / spanalloc cost; > 1: spanalloc better)"
    )
    .unwrap();
    writeln!(s, "{CSV_HEADER}").unwrap();
    for r in results.rows() {
        let v = r.value;
        let (am, amin, amax) = r
            .advantage
            .map_or((String::new(), String::new(), String::new()), |a| {
                (num(a.median), num(a.min), num(a.max))
            });
        writeln!(
            s,
            "{},{},{},{},{},{},{},{},{},{},{},{am},{amin},{amax}",
            r.metric,
            r.unit.label(),
            r.unit.higher_is_better(),
            r.id.name(),
            r.threads,
            v.n,
            num(v.median),
            num(v.q1),
            num(v.q3),
            num(v.min),
            num(v.max)
        )
        .unwrap();
    }
    s
}

fn num(x: f64) -> String {
    format!("{x:.6}")
}

/// Three significant digits, for tables.
pub fn short(x: f64) -> String {
    if x == 0.0 || !x.is_finite() {
        return format!("{x}");
    }
    let digits = (2 - x.abs().log10().floor() as i32).max(0) as usize;
    format!("{x:.digits$}")
}

/// A checked target of the issue.
pub struct Target {
    pub what: String,
    pub value: Option<Summary>,
    pub goal: &'static str,
    pub met: Option<bool>,
}

/// A small heap's efficiency goal: arena in MiB, the goal as printed, the test.
type SmallHeapGoal = (usize, &'static str, fn(f64) -> bool);

/// The targets, each computed per repetition and summarized.
pub fn targets(r: &Results) -> Vec<Target> {
    let mut t = Vec::new();
    let adv = |metric: &str, threads: usize, peer: Id| {
        r.rows()
            .into_iter()
            .find(|x| x.metric == metric && x.threads == threads && x.id == peer)
            .and_then(|x| x.advantage)
    };
    let mut push =
        |what: String, value: Option<Summary>, goal: &'static str, ok: fn(f64) -> bool| {
            let met = value.map(|v| ok(v.median));
            t.push(Target {
                what,
                value,
                goal,
                met,
            });
        };
    for peer in [Id::Mimalloc, Id::Jemalloc] {
        let what = format!("16 B pair: {} ns / spanalloc ns", peer.name());
        push(what, adv("pair_16", 1, peer), "> 1 (faster)", |x| x > 1.0);
    }
    push(
        "random actions max 200 B: spanalloc ops/s / talc ops/s".into(),
        adv("random_actions_200", 1, Id::Talc),
        ">= 1.5",
        |x| x >= 1.5,
    );
    for m in [
        "random_actions_200",
        "larson",
        "glibc_simple",
        "cache_scratch",
    ] {
        let s = r.paired((m, 2, Id::Spanalloc), (m, 1, Id::Spanalloc), |two, one| {
            two / one
        });
        push(
            format!("{m}: spanalloc 2 threads / 1 thread"),
            s,
            ">= 1.8",
            |x| x >= 1.8,
        );
    }
    for peer in [Id::System, Id::Mimalloc] {
        let name = match peer {
            Id::System => "system (glibc)",
            _ => peer.name(),
        };
        push(
            format!("remote free (xmalloc, 2 threads), consumer's ns per free: {name} / spanalloc"),
            adv("xmalloc", 2, peer),
            ">= 1",
            |x| x >= 1.0,
        );
        push(
            format!(
                "remote free (xmalloc, 2 threads), producer and consumer, wall ns per object: {name} / spanalloc"
            ),
            adv("xmalloc_pipeline", 2, peer),
            ">= 1",
            |x| x >= 1.0,
        );
    }
    let eff = r
        .values("heap_efficiency", 1, Id::Spanalloc)
        .and_then(|v| Summary::of(&v.iter().flatten().copied().collect::<Vec<_>>()));
    push(
        "heap efficiency of spanalloc (%)".into(),
        eff,
        ">= 90",
        |x| x >= 90.0,
    );
    for wl in ["pair_16", "random_actions_200"] {
        push(
            format!("heap sampling at default rates, {wl}: instructions / without sampling"),
            sampling_instr_ratio(r, wl, "default"),
            "<= 1.03",
            |x| x <= 1.03,
        );
    }
    // Small heaps (issue 11): the goals of the two rows of `workloads::HEAP_EFFICIENCY_SMALL_MIB`.
    let small: [SmallHeapGoal; 2] = [(16, ">= 90", |x| x >= 90.0), (64, ">= 93", |x| x >= 93.0)];
    for (mib, goal, ok) in small {
        let metric = crate::workloads::memory::heap_efficiency_metric(mib << 20, false);
        let eff = r
            .values(&metric, 1, Id::Spanalloc)
            .and_then(|v| Summary::of(&v.iter().flatten().copied().collect::<Vec<_>>()));
        push(
            format!("heap efficiency of spanalloc at {mib} MiB (%)"),
            eff,
            goal,
            ok,
        );
    }
    let sizes = scaling::sizes(false);
    let (small, big) = (
        scaling::size_label(sizes[0]),
        scaling::size_label(sizes[sizes.len() - 1]),
    );
    for kind in ["steady", "burst"] {
        let (a, b) = (
            format!("page_scaling_{kind}_{big}"),
            format!("page_scaling_{kind}_{small}"),
        );
        let s = r.paired((&a, 1, Id::Spanalloc), (&b, 1, Id::Spanalloc), |x, y| x / y);
        push(
            format!("page heap {kind}: ns at {big} / ns at {small}"),
            s,
            "<= 1.5",
            |x| x <= 1.5,
        );
    }
    t
}

fn spread(s: &Summary) -> String {
    if s.n > 1 {
        format!("{} ({}–{})", short(s.median), short(s.min), short(s.max))
    } else {
        short(s.median)
    }
}

pub fn markdown(results: &Results, info: &RunInfo, plots: &[&str]) -> String {
    let mut s = String::new();
    let w = &mut s;
    writeln!(w, "# spanalloc vs its peers (host benchmarks)\n").unwrap();
    writeln!(w, "- machine: {}", info.machine.one_line()).unwrap();
    writeln!(w, "- command: `{}`; commit {}", info.command, info.commit).unwrap();
    writeln!(
        w,
        "- {} repetitions, contestants in random order in each; {} ms per measured pass (after a warm-up \
         pass); rates of one thread per second of its CPU time, of several threads per second of wall-clock \
         time; arenas of {} MiB (spanalloc: as much fake physical memory); T above the machine's {} cores \
         is marked *oversubscribed*",
        info.reps, info.duration_ms, info.arena_mib, info.machine.cores
    )
    .unwrap();
    writeln!(
        w,
        "- cells: median over the repetitions, and in brackets spanalloc's advantage (peer cost / spanalloc \
         cost, taken per repetition, median): **>1 means spanalloc is better**"
    )
    .unwrap();
    writeln!(
        w,
        "- `instr_*` rows: instructions per operation counted by valgrind's cachegrind (deterministic, counted \
         once), every contestant called through the same non-inlined functions; the harness's own \
         instructions (loop, calls, random numbers) are included, the same for all \
         (bench/src/workloads/instructions.rs)\n"
    )
    .unwrap();
    for p in plots {
        writeln!(w, "![{p}]({p})\n").unwrap();
    }

    writeln!(w, "## Targets\n").unwrap();
    writeln!(
        w,
        "| target | median (min–max over repetitions) | goal | met |"
    )
    .unwrap();
    writeln!(w, "|---|---|---|---|").unwrap();
    for t in targets(results) {
        let v = t.value.as_ref().map_or("–".into(), spread);
        let met = match t.met {
            Some(true) => "yes",
            Some(false) => "**no**",
            None => "not run",
        };
        writeln!(w, "| {} | {v} | {} | {met} |", t.what, t.goal).unwrap();
    }

    let rows = results.rows();
    let ids: Vec<Id> = info.contestants.clone();
    writeln!(w, "\n## All results (median, [advantage])\n").unwrap();
    write!(w, "| workload | unit | threads |").unwrap();
    for id in &ids {
        write!(w, " {} |", id.name()).unwrap();
    }
    writeln!(w).unwrap();
    writeln!(w, "|---|---|---|{}", "---|".repeat(ids.len())).unwrap();
    for (metric, threads) in keys(&rows) {
        if metric.starts_with("page_scaling") || metric.starts_with("instr_sampling") {
            continue;
        }
        let unit = crate::workloads::unit_of(&metric);
        write!(
            w,
            "| {metric} | {} | {} |",
            unit.label(),
            threads_cell(threads, info)
        )
        .unwrap();
        for id in &ids {
            match rows
                .iter()
                .find(|r| r.metric == metric && r.threads == threads && r.id == *id)
            {
                Some(r) => {
                    let adv = match (r.id, r.advantage) {
                        (Id::Spanalloc, _) | (_, None) => String::new(),
                        (_, Some(a)) => format!(" [{}]", short(a.median)),
                    };
                    write!(w, " {}{adv} |", short(r.value.median)).unwrap();
                }
                None => write!(w, " – |").unwrap(),
            }
        }
        writeln!(w).unwrap();
    }

    writeln!(w, "\n## Spread (median, min–max over repetitions)\n").unwrap();
    write!(w, "| workload | threads |").unwrap();
    for id in &ids {
        write!(w, " {} |", id.name()).unwrap();
    }
    writeln!(w).unwrap();
    writeln!(w, "|---|---|{}", "---|".repeat(ids.len())).unwrap();
    for (metric, threads) in keys(&rows) {
        if metric.starts_with("page_scaling") || metric.starts_with("instr_sampling") {
            continue;
        }
        write!(w, "| {metric} | {} |", threads_cell(threads, info)).unwrap();
        for id in &ids {
            match rows
                .iter()
                .find(|r| r.metric == metric && r.threads == threads && r.id == *id)
            {
                Some(r) => write!(w, " {} |", spread(&r.value)).unwrap(),
                None => write!(w, " – |").unwrap(),
            }
        }
        writeln!(w).unwrap();
    }

    thread_scaling(w, results, &rows, &ids, info);
    page_scaling(w, results);
    sampling_cost(w, results);
    sampling_instructions(w, results);
    s
}

/// (metric, threads) in report order.
fn keys(rows: &[Row]) -> Vec<(String, usize)> {
    let mut k: Vec<(String, usize)> = Vec::new();
    for r in rows {
        if !k.iter().any(|(m, t)| *m == r.metric && *t == r.threads) {
            k.push((r.metric.clone(), r.threads));
        }
    }
    k
}

/// A thread count, marked when it exceeds the machine's cores.
fn threads_cell(threads: usize, info: &RunInfo) -> String {
    if threads > info.machine.cores {
        format!("{threads} (*oversubscribed*)")
    } else {
        threads.to_string()
    }
}

fn thread_scaling(w: &mut String, results: &Results, rows: &[Row], ids: &[Id], info: &RunInfo) {
    writeln!(
        w,
        "\n## Thread scaling (throughput at T threads / at 1 thread, per repetition, median)\n"
    )
    .unwrap();
    writeln!(
        w,
        "Rates at T threads are operations per second of wall-clock time (at 1 thread, of its CPU time; see \
         bench/src/timing.rs): where T exceeds the machine's cores the threads share them, and the ratio \
         says so rather than what T CPUs would do.\n"
    )
    .unwrap();
    write!(w, "| workload | T |").unwrap();
    for id in ids {
        write!(w, " {} |", id.name()).unwrap();
    }
    writeln!(w).unwrap();
    writeln!(w, "|---|---|{}", "---|".repeat(ids.len())).unwrap();
    for (metric, threads) in keys(rows) {
        if threads == 1 || crate::workloads::unit_of(&metric) != Unit::Mops {
            continue;
        }
        write!(w, "| {metric} | {} |", threads_cell(threads, info)).unwrap();
        for &id in ids {
            match results.paired((&metric, threads, id), (&metric, 1, id), |t, one| t / one) {
                Some(s) => write!(w, " {} |", short(s.median)).unwrap(),
                None => write!(w, " – |").unwrap(),
            }
        }
        writeln!(w).unwrap();
    }
}

/// Heap sampling's cost (bench/src/workloads/sampling.rs): each variant's cost over the heap without
/// sampling compiled in, per repetition (time per op ratio; for throughput, the inverse ratio).
fn sampling_cost(w: &mut String, results: &Results) {
    use crate::workloads::sampling::{VARIANTS, WORKLOADS};
    let have = WORKLOADS.iter().any(|wl| {
        results
            .values(&format!("sampling_{wl}_off"), 1, Id::Spanalloc)
            .is_some()
    });
    if !have {
        return;
    }
    writeln!(
        w,
        "\n## Heap sampling's cost (spanalloc; cost ratio to the heap without sampling compiled in, per repetition; > 1: slower)\n"
    )
    .unwrap();
    writeln!(w, "| workload | unit | off | idle (compiled in, off) | default rates | idle ratio | default ratio |").unwrap();
    writeln!(w, "|---|---|---|---|---|---|---|").unwrap();
    for wl in WORKLOADS {
        let base = format!("sampling_{wl}_off");
        let unit = crate::workloads::unit_of(&base);
        write!(w, "| {wl} | {} |", unit.label()).unwrap();
        for v in VARIANTS {
            let m = format!("sampling_{wl}_{v}");
            let s = results
                .values(&m, 1, Id::Spanalloc)
                .and_then(|v| Summary::of(&v.iter().flatten().copied().collect::<Vec<_>>()));
            write!(w, " {} |", s.as_ref().map_or("–".into(), spread)).unwrap();
        }
        for v in &VARIANTS[1..] {
            let m = format!("sampling_{wl}_{v}");
            let higher_better = unit.higher_is_better();
            let r = results.paired((&m, 1, Id::Spanalloc), (&base, 1, Id::Spanalloc), |x, y| {
                if higher_better {
                    y / x
                } else {
                    x / y
                }
            });
            write!(w, " {} |", r.as_ref().map_or("–".into(), spread)).unwrap();
        }
        writeln!(w).unwrap();
    }
}

/// Instructions per operation of spanalloc with sampling compiled in (`variant`: idle or default) over
/// those of the heap without it (instructions.rs; counted once, so a single value).
fn sampling_instr_ratio(r: &Results, workload: &str, variant: &str) -> Option<Summary> {
    let one = |m: &str| {
        r.values(m, 1, Id::Spanalloc)
            .and_then(|v| v.iter().flatten().copied().next())
    };
    let with = one(&format!("instr_sampling_{workload}_{variant}"))?;
    let without = one(&format!("instr_{workload}"))?;
    Summary::of(&[with / without])
}

/// Heap sampling's cost in instructions (cachegrind; instructions.rs): deterministic, unlike the times.
fn sampling_instructions(w: &mut String, results: &Results) {
    use crate::workloads::instructions::WORKLOADS;
    if sampling_instr_ratio(results, WORKLOADS[0], "idle").is_none() {
        return;
    }
    writeln!(
        w,
        "\n## Heap sampling's cost in instructions per operation (spanalloc, cachegrind; ratio to the heap without sampling compiled in)\n"
    )
    .unwrap();
    writeln!(
        w,
        "| workload | off | idle (compiled in, off) | default rates | idle ratio | default ratio |"
    )
    .unwrap();
    writeln!(w, "|---|---|---|---|---|---|").unwrap();
    let one = |m: &str| {
        results
            .values(m, 1, Id::Spanalloc)
            .and_then(|v| v.iter().flatten().copied().next())
            .map_or("–".into(), short)
    };
    for wl in WORKLOADS {
        let ratio = |v: &str| {
            sampling_instr_ratio(results, wl, v)
                .map_or("–".into(), |s| format!("{:.4}", s.median))
        };
        writeln!(
            w,
            "| {wl} | {} | {} | {} | {} | {} |",
            one(&format!("instr_{wl}")),
            one(&format!("instr_sampling_{wl}_idle")),
            one(&format!("instr_sampling_{wl}_default")),
            ratio("idle"),
            ratio("default")
        )
        .unwrap();
    }
}

fn page_scaling(w: &mut String, results: &Results) {
    let sizes: Vec<usize> = scaling::sizes(false)
        .into_iter()
        .filter(|&b| {
            let m = format!("page_scaling_steady_{}", scaling::size_label(b));
            results.values(&m, 1, Id::Spanalloc).is_some()
        })
        .collect();
    if sizes.is_empty() {
        return;
    }
    let first = scaling::size_label(sizes[0]);
    writeln!(
        w,
        "\n## Page-heap scaling (spanalloc, 64 KiB alloc+free, ns; ratio to the {first} heap per repetition)\n"
    )
    .unwrap();
    writeln!(
        w,
        "| heap | steady ns | steady ratio | burst ns | burst ratio |"
    )
    .unwrap();
    writeln!(w, "|---|---|---|---|---|").unwrap();
    for b in sizes {
        let l = scaling::size_label(b);
        write!(w, "| {l} |").unwrap();
        for kind in ["steady", "burst"] {
            let (m, base) = (
                format!("page_scaling_{kind}_{l}"),
                format!("page_scaling_{kind}_{first}"),
            );
            let v = results
                .values(&m, 1, Id::Spanalloc)
                .and_then(|v| Summary::of(&v.iter().flatten().copied().collect::<Vec<_>>()));
            let ratio =
                results.paired((&m, 1, Id::Spanalloc), (&base, 1, Id::Spanalloc), |x, y| {
                    x / y
                });
            let cell = |s: Option<Summary>| s.as_ref().map_or("–".into(), spread);
            write!(w, " {} | {} |", cell(v), cell(ratio)).unwrap();
        }
        writeln!(w).unwrap();
    }
}
