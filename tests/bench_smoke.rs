//! Smoke test of the host benchmark suite (bench/): `cargo run -p spanalloc-bench --release -- --quick`
//! must finish and produce a sane number for every workload and contestant, plus the markdown and plots.
//!
//! The suite is a benchmark, not a test: this only checks that it runs and that its numbers are numbers
//! (positive, finite, percentages within 0..100), not how fast anything is. mimalloc and jemalloc are left
//! out (`--no-default-features`): building their C code would double the time of this test.
//!
//! The nested cargo uses its own target directory, `target/bench-smoke`: the outer `cargo test` holds the
//! lock of its own build directory while the tests run.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::Command;

/// Contestants built without the `c-allocators` feature.
const CONTESTANTS: [&str; 6] = [
    "spanalloc",
    "talc",
    "rlsf",
    "buddy_system_allocator",
    "linked_list_allocator",
    "system",
];
const ARENAS: [&str; 5] = [
    "spanalloc",
    "talc",
    "rlsf",
    "buddy_system_allocator",
    "linked_list_allocator",
];

/// Every metric the suite reports, with its thread counts and who reports it.
fn expected() -> Vec<(String, Vec<usize>, &'static [&'static str])> {
    let mut v: Vec<(String, Vec<usize>, &'static [&'static str])> = Vec::new();
    for s in [16, 64, 256, 4096] {
        v.push((format!("pair_{s}"), vec![1], &CONTESTANTS));
    }
    for m in [200, 3000, 30000] {
        let t = if m == 200 { vec![1, 2, 4] } else { vec![1] };
        v.push((format!("random_actions_{m}"), t, &CONTESTANTS));
        v.push((
            format!("random_actions_{m}_norealloc"),
            vec![1],
            &CONTESTANTS,
        ));
    }
    for m in [
        "latency_p50",
        "latency_p99",
        "latency_p999",
        "align_1x4096",
        "align_4096x1",
    ] {
        v.push((m.into(), vec![1], &CONTESTANTS));
    }
    for m in ["glibc_simple", "larson", "xmalloc", "cache_scratch"] {
        v.push((m.into(), vec![1, 2, 4], &CONTESTANTS));
    }
    v.push(("xmalloc_pipeline".into(), vec![2, 4], &CONTESTANTS));
    // Instruction counts need valgrind (the suite says so and skips them without it).
    let valgrind = Command::new("valgrind")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if valgrind {
        v.push(("instr_pair_16".into(), vec![1], &CONTESTANTS));
        for variant in ["idle", "default"] {
            v.push((
                format!("instr_sampling_pair_16_{variant}"),
                vec![1],
                &["spanalloc"],
            ));
        }
    }
    for m in [
        "heap_efficiency",
        "heap_efficiency_16MiB",
        "heap_efficiency_64MiB",
    ] {
        v.push((m.into(), vec![1], &ARENAS));
    }
    for m in [
        "footprint_peak",
        "footprint_after_free",
        "footprint_after_trim",
    ] {
        v.push((m.into(), vec![1], &CONTESTANTS));
    }
    for size in ["64MiB", "1GiB"] {
        for kind in ["steady", "burst"] {
            v.push((
                format!("page_scaling_{kind}_{size}"),
                vec![1],
                &["spanalloc"],
            ));
        }
    }
    v
}

#[test]
fn bench_quick_run_reports_sane_numbers_for_every_workload() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let target = root.join("target").join("bench-smoke");
    let out = target.join("results");
    let _ = std::fs::remove_dir_all(&out);
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let output = Command::new(cargo)
        .current_dir(root)
        .args([
            "run",
            "-p",
            "spanalloc-bench",
            "--release",
            "--no-default-features",
            "--",
        ])
        .arg("--quick")
        .arg("--out")
        .arg(&out)
        .env("CARGO_TARGET_DIR", &target)
        .env_remove("CARGO_BUILD_TARGET")
        .env_remove("RUSTC_WRAPPER")
        .env_remove("RUSTC_WORKSPACE_WRAPPER")
        .output()
        .expect("spawn cargo run -p spanalloc-bench");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "the benchmark suite failed ({}):\n{}",
        output.status,
        &stderr[stderr.len().saturating_sub(6000)..]
    );

    let csv = std::fs::read_to_string(out.join("results.csv")).expect("results.csv written");
    let mut lines = csv.lines().filter(|l| !l.starts_with('#'));
    let header: Vec<&str> = lines.next().expect("a header").split(',').collect();
    let col = |name: &str| {
        header
            .iter()
            .position(|h| *h == name)
            .unwrap_or_else(|| panic!("column {name} missing from {header:?}"))
    };
    let (workload, unit, contestant, threads) = (
        col("workload"),
        col("unit"),
        col("contestant"),
        col("threads"),
    );
    let numbers = ["median", "q1", "q3", "min", "max"].map(col);
    let advantage = col("advantage_median");
    let mut seen: BTreeMap<(String, usize), BTreeSet<String>> = BTreeMap::new();
    for line in lines {
        let f: Vec<&str> = line.split(',').collect();
        assert_eq!(
            f.len(),
            header.len(),
            "row with a different number of columns: {line}"
        );
        for &c in &numbers {
            let v: f64 = f[c]
                .parse()
                .unwrap_or_else(|_| panic!("{} is not a number in {line}", header[c]));
            assert!(
                v.is_finite() && v > 0.0,
                "{} = {v} is not positive and finite: {line}",
                header[c]
            );
            if f[unit].starts_with('%') && f[workload].starts_with("heap_efficiency") {
                assert!(v <= 100.0, "heap efficiency over 100%: {line}");
            }
        }
        if f[contestant] == "spanalloc" && !f[advantage].is_empty() {
            let a: f64 = f[advantage].parse().unwrap();
            assert!(
                (a - 1.0).abs() < 1e-9,
                "spanalloc's advantage over itself is not 1: {line}"
            );
        }
        let t: usize = f[threads].parse().unwrap();
        seen.entry((f[workload].to_owned(), t))
            .or_default()
            .insert(f[contestant].to_owned());
    }
    for (metric, threads, who) in expected() {
        for t in threads {
            let got = seen.get(&(metric.clone(), t));
            for c in who {
                assert!(
                    got.is_some_and(|g| g.contains(*c)),
                    "no {metric} at {t} threads for {c} in results.csv"
                );
            }
        }
    }

    let md = std::fs::read_to_string(out.join("results.md")).expect("results.md written");
    assert!(
        md.contains("## Targets") && md.contains("| pair_16 |"),
        "results.md lacks its tables"
    );
    for svg in ["headline.svg", "latency.svg", "page_scaling.svg"] {
        let text = std::fs::read_to_string(out.join(svg)).unwrap_or_else(|e| panic!("{svg}: {e}"));
        assert!(
            text.contains("<svg") && text.contains("<rect"),
            "{svg} is not a chart"
        );
    }
}
