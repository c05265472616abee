//! spanalloc-bench: spanalloc side by side with the allocators a kernel or program would use instead,
//! on the host, in one process, with one command:
//!
//! ```sh
//! cargo run -p spanalloc-bench --release -- [--quick] [--filter NAME] [--reps N] [--out DIR]
//! ```
//!
//! Method: every repetition runs every selected benchmark on every contestant, in an order shuffled per
//! repetition and benchmark; a contestant's value is the median over the repetitions, and ratios against
//! spanalloc are taken within each repetition. Outputs (in `bench/results/` unless `--out`): `results.csv`,
//! `results.md`, `headline.svg`, `latency.svg`, `page_scaling.svg`.

mod contestants;
mod machine;
mod plot;
mod region;
mod report;
mod rng;
mod stats;
mod timing;
mod workloads;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use contestants::{Contestants, Id};
use region::Region;
use stats::Results;
use workloads::scaling::ScaledHeap;
use workloads::{Bench, Config, Job, Kind, Sample, Who};

const USAGE: &str = "\
usage: cargo run -p spanalloc-bench --release -- [OPTIONS]

  --quick              one repetition of tiny passes (the smoke test's mode)
  --filter NAME        run only benchmarks whose name contains NAME (repeatable)
  --reps N             repetitions (default 7; 1 with --quick)
  --out DIR            where to write the results (default bench/results)
  --duration-ms N      length of one measured pass (default 100; 5 with --quick)
  --contestants A,B    only these contestants (spanalloc is always included)
  --list               print the benchmarks and contestants, then exit
  --breakdown MIB      where spanalloc's memory goes when heap efficiency's fill fails on a heap of MIB
";

struct Args {
    quick: bool,
    filters: Vec<String>,
    reps: Option<usize>,
    out: Option<PathBuf>,
    duration_ms: Option<u64>,
    contestants: Option<Vec<Id>>,
    list: bool,
    footprint_child: Option<Id>,
    /// `--instr-child NAME WORKLOAD N` (instructions.rs).
    instr_child: Option<(String, String, u64)>,
    seed: u64,
    arena_mib: Option<usize>,
    breakdown_mib: Option<usize>,
}

fn parse_args() -> Args {
    let mut a = Args {
        quick: false,
        filters: Vec::new(),
        reps: None,
        out: None,
        duration_ms: None,
        contestants: None,
        list: false,
        footprint_child: None,
        instr_child: None,
        seed: 0x5eed,
        arena_mib: None,
        breakdown_mib: None,
    };
    let mut it = std::env::args().skip(1);
    let fail = |msg: String| -> ! {
        eprintln!("spanalloc-bench: {msg}\n\n{USAGE}");
        std::process::exit(2)
    };
    while let Some(arg) = it.next() {
        let mut value = |name: &str| {
            it.next()
                .unwrap_or_else(|| fail(format!("{name} needs a value")))
        };
        let number = |name: &str, v: String| -> u64 {
            v.parse()
                .unwrap_or_else(|_| fail(format!("{name}: '{v}' is not a number")))
        };
        match arg.as_str() {
            "--quick" => a.quick = true,
            "--list" => a.list = true,
            "--filter" => a.filters.push(value("--filter")),
            "--reps" => {
                let n = number("--reps", value("--reps"));
                if n == 0 {
                    fail("--reps must be at least 1".into());
                }
                a.reps = Some(n as usize);
            }
            "--out" => a.out = Some(PathBuf::from(value("--out"))),
            "--duration-ms" => {
                a.duration_ms = Some(number("--duration-ms", value("--duration-ms")))
            }
            "--seed" => a.seed = number("--seed", value("--seed")),
            "--arena-mib" => {
                a.arena_mib = Some(number("--arena-mib", value("--arena-mib")) as usize)
            }
            "--breakdown" => {
                a.breakdown_mib = Some(number("--breakdown", value("--breakdown")) as usize)
            }
            "--contestants" => {
                let list = value("--contestants");
                let ids = list
                    .split(',')
                    .map(|n| {
                        Id::from_name(n.trim())
                            .unwrap_or_else(|| fail(format!("unknown contestant '{n}'")))
                    })
                    .collect();
                a.contestants = Some(ids);
            }
            "--footprint-child" => {
                let n = value("--footprint-child");
                a.footprint_child = Some(
                    Id::from_name(&n).unwrap_or_else(|| fail(format!("unknown contestant '{n}'"))),
                );
            }
            "--instr-child" => {
                let name = value("--instr-child");
                let workload = value("--instr-child");
                let n = number("--instr-child", value("--instr-child"));
                a.instr_child = Some((name, workload, n));
            }
            "--help" | "-h" => {
                print!("{USAGE}");
                std::process::exit(0)
            }
            other => fail(format!("unknown argument '{other}'")),
        }
    }
    a
}

fn main() {
    let args = parse_args();
    let arena_bytes = args.arena_mib.unwrap_or(if args.quick { 32 } else { 256 }) << 20;
    if let Some(mib) = args.breakdown_mib {
        workloads::memory::heap_efficiency_breakdown(mib << 20, args.seed);
        return;
    }
    if let Some(id) = args.footprint_child {
        workloads::memory::run_footprint_child(id, arena_bytes, args.quick, args.seed);
        return;
    }
    if let Some((name, workload, n)) = &args.instr_child {
        workloads::instructions::run_child(name, workload, *n, args.seed);
        return;
    }
    let benches: Vec<Bench> = workloads::suite()
        .into_iter()
        .filter(|b| {
            args.filters.is_empty() || args.filters.iter().any(|f| b.name.contains(f.as_str()))
        })
        .collect();
    let mut ids: Vec<Id> = Id::ALL.into_iter().filter(|id| id.available()).collect();
    if let Some(only) = &args.contestants {
        ids.retain(|id| *id == Id::Spanalloc || only.contains(id));
    }
    if args.list {
        for b in &benches {
            println!("{:<28} threads {:?} ({:?})", b.name, b.threads, b.who);
        }
        println!(
            "contestants: {}",
            ids.iter().map(|i| i.name()).collect::<Vec<_>>().join(", ")
        );
        return;
    }
    if benches.is_empty() {
        eprintln!("spanalloc-bench: no benchmark matches {:?}", args.filters);
        std::process::exit(2);
    }

    let machine = machine::Machine::probe();
    let reps = args.reps.unwrap_or(if args.quick { 1 } else { 7 });
    let duration =
        Duration::from_millis(args.duration_ms.unwrap_or(if args.quick { 5 } else { 100 }));
    let cfg = Config {
        quick: args.quick,
        duration,
        warmup: (duration / 5).max(Duration::from_millis(2)),
        arena_bytes,
        seed: args.seed,
        tsc: timing::Tsc::calibrate(Duration::from_millis(50)),
    };
    let command = format!(
        "cargo run -p spanalloc-bench --release -- {}",
        std::env::args().skip(1).collect::<Vec<_>>().join(" ")
    );
    eprintln!("spanalloc-bench on {}", machine.one_line());
    eprintln!(
        "{} benchmarks x {} contestants x {reps} repetitions; arenas of {} MiB; TSC {:.3} ns/cycle",
        benches.len(),
        ids.len(),
        arena_bytes >> 20,
        cfg.tsc.ns_per_cycle
    );

    let started = Instant::now();
    let results = run(&benches, &ids, reps, &cfg);
    eprintln!("ran in {:.1} s", started.elapsed().as_secs_f64());

    let out = args
        .out
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("results"));
    std::fs::create_dir_all(&out)
        .unwrap_or_else(|e| panic!("bench: create {}: {e}", out.display()));
    let info = report::RunInfo {
        machine: &machine,
        command,
        reps,
        arena_mib: arena_bytes >> 20,
        duration_ms: duration.as_millis(),
        contestants: ids.clone(),
        commit: git_commit(),
    };
    let write = |name: &str, text: String| {
        let p = out.join(name);
        std::fs::write(&p, text).unwrap_or_else(|e| panic!("bench: write {}: {e}", p.display()));
    };
    write("results.csv", report::csv(&results, &info));
    let mut plots = vec!["headline.svg"];
    plot::headline(&out.join("headline.svg"), &results, &ids, &machine).expect("headline plot");
    if results.values("latency_p50", 1, Id::Spanalloc).is_some() {
        plot::latency(&out.join("latency.svg"), &results, &ids, &machine).expect("latency plot");
        plots.push("latency.svg");
    }
    if results
        .metrics()
        .iter()
        .any(|m| m.starts_with("page_scaling"))
    {
        plot::page_scaling(&out.join("page_scaling.svg"), &results, &machine)
            .expect("scaling plot");
        plots.push("page_scaling.svg");
    }
    write("results.md", report::markdown(&results, &info, &plots));
    println!("results in {}", out.display());
    for t in report::targets(&results) {
        if let Some(v) = t.value {
            let met = if t.met == Some(true) { "met" } else { "MISSED" };
            println!(
                "{:<66} {:>10} (goal {}) {met}",
                t.what,
                report::short(v.median),
                t.goal
            );
        }
    }
}

/// The commit the allocator was built from, and whether its sources had uncommitted changes.
fn git_commit() -> String {
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/..");
    let git = |args: &[&str]| {
        std::process::Command::new("git")
            .arg("-C")
            .arg(root)
            .args(args)
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
    };
    match git(&["rev-parse", "--short", "HEAD"]) {
        Some(head) => match git(&["status", "--porcelain", "--", "allocator"]) {
            Some(changes) if !changes.is_empty() => {
                format!("{head} (allocator/ with uncommitted changes)")
            }
            _ => head,
        },
        None => "unknown".into(),
    }
}

/// Runs every repetition of every benchmark.
fn run(benches: &[Bench], ids: &[Id], reps: usize, cfg: &Config) -> Results {
    let needs = |k: fn(&Kind) -> bool| benches.iter().any(|b| k(&b.kind));
    let shared = needs(|k| {
        !matches!(
            k,
            Kind::HeapEfficiency { .. }
                | Kind::Footprint
                | Kind::PageScaling
                | Kind::SamplingCost
                | Kind::Instructions
        )
    })
    .then(|| Contestants::new(cfg.arena_bytes));
    // One region per arena size of the heap-efficiency rows, reused by every fresh instance of that size.
    let fresh_regions: Vec<(usize, Region)> = benches
        .iter()
        .filter_map(|b| match b.kind {
            Kind::HeapEfficiency { mib } => Some(mib.map_or(cfg.arena_bytes, |m| m << 20)),
            _ => None,
        })
        .map(|bytes| (bytes, Region::new(bytes, false)))
        .collect();
    let mut scaled: Vec<ScaledHeap> = Vec::new();
    let mut sampling: Option<workloads::sampling::SamplingHeaps> = None;
    let valgrind =
        needs(|k| matches!(k, Kind::Instructions)) && workloads::instructions::valgrind_available();
    if needs(|k| matches!(k, Kind::Instructions)) && !valgrind {
        eprintln!("instructions: valgrind not found, no instruction counts (Debian: apt install valgrind)");
    }
    let mut results = Results::new(reps);
    let mut order_rng = rng::Rng::new(cfg.seed ^ 0x0bde);
    for rep in 0..reps {
        let cfg = Config {
            seed: cfg.seed.wrapping_add(rep as u64),
            ..cfg.clone()
        };
        for bench in benches {
            let mut who: Vec<Id> = ids
                .iter()
                .copied()
                .filter(|id| match bench.who {
                    Who::All => true,
                    Who::Arenas => id.is_arena(),
                    Who::Spanalloc => *id == Id::Spanalloc,
                })
                .collect();
            for &threads in &bench.threads {
                order_rng.shuffle(&mut who);
                for &id in &who {
                    let samples = match bench.kind {
                        Kind::HeapEfficiency { mib } => {
                            let bytes = mib.map_or(cfg.arena_bytes, |m| m << 20);
                            let region = fresh_regions
                                .iter()
                                .find(|(b, _)| *b == bytes)
                                .map(|(_, r)| r)
                                .expect("region for fresh heaps");
                            let job = Job {
                                kind: bench.kind,
                                threads,
                                cfg: &cfg,
                            };
                            std::thread::scope(|s| {
                                s.spawn(|| contestants::dispatch_fresh(id, region, &job))
                                    .join()
                                    .expect("heap efficiency panicked")
                            })
                        }
                        Kind::Footprint => workloads::memory::footprint_in_child(id, &cfg),
                        Kind::Instructions if rep > 0 || !valgrind => Vec::new(),
                        Kind::Instructions => {
                            let mut v = workloads::instructions::count(id.name(), &cfg);
                            if id == Id::Spanalloc {
                                for variant in workloads::instructions::SAMPLING_VARIANTS {
                                    v.extend(workloads::instructions::count(variant, &cfg));
                                }
                            }
                            v
                        }
                        Kind::PageScaling => page_scaling(&mut scaled, &cfg, &mut order_rng),
                        Kind::SamplingCost => {
                            let heaps = sampling.get_or_insert_with(|| {
                                workloads::sampling::SamplingHeaps::build(cfg.arena_bytes)
                            });
                            heaps.measure(&cfg, &mut order_rng)
                        }
                        _ => {
                            let job = Job {
                                kind: bench.kind,
                                threads,
                                cfg: &cfg,
                            };
                            shared
                                .as_ref()
                                .expect("shared contestants")
                                .dispatch(id, &job)
                        }
                    };
                    for s in &samples {
                        eprintln!(
                            "[{}/{reps}] {:<30} T={threads} {:<24} {:>12} {}",
                            rep + 1,
                            s.metric,
                            id.name(),
                            report::short(s.value),
                            workloads::unit_of(&s.metric).label()
                        );
                        results.record(rep, &s.metric, threads, id, s.value);
                    }
                }
            }
        }
    }
    results
}

/// Page-heap scaling: builds the heaps on first use, then measures them in a shuffled order.
fn page_scaling(scaled: &mut Vec<ScaledHeap>, cfg: &Config, rng: &mut rng::Rng) -> Vec<Sample> {
    if scaled.is_empty() {
        for b in workloads::scaling::sizes(cfg.quick) {
            let t = Instant::now();
            scaled.push(ScaledHeap::build(b));
            eprintln!(
                "page scaling: heap of {} built in {:.2} s",
                workloads::scaling::size_label(b),
                t.elapsed().as_secs_f64()
            );
        }
    }
    let mut order: Vec<usize> = (0..scaled.len()).collect();
    rng.shuffle(&mut order);
    order
        .into_iter()
        .flat_map(|i| scaled[i].measure(cfg))
        .collect()
}
