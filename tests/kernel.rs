//! Host tests that boot the kernel in QEMU (libtest-mimic, `harness = false`).
//!
//! The kernel image is booted once with `list` to learn the in-kernel tests; each then becomes its own trial
//! `kernel::<name>`, booting `test <name>` and failing with the kernel's whole serial output. The other trials
//! check the demo under BIOS and UEFI, that a failing kernel run is seen as failing, and the runner itself.
//! The `example::` trials boot the example kernel (example-kernel/) and check that the README's "Use
//! spanalloc in your kernel" snippet is, line for line, the glue that kernel runs.
//!
//! At most two trials run at once by default (the machines have two cores; each QEMU is one busy thread with
//! `-smp 1`).

use libtest_mimic::{Arguments, Failed, Trial};
use spanalloc_runner::cli::{self, Action};
use spanalloc_runner::{
    Outcome, Qemu, RunError, Verdict, BENCH_BIOS_IMAGE, EXAMPLE_BIOS_IMAGE,
    EXAMPLE_REGION_BIOS_IMAGE,
};
use std::time::Duration;

const TEST_TIMEOUT: Duration = Duration::from_secs(180);
const DEFAULT_PARALLEL_TRIALS: usize = 2;
const MIB: u64 = 1024 * 1024;

fn qemu(args: &[&str], smp: u32) -> Qemu {
    Qemu {
        smp,
        timeout: TEST_TIMEOUT,
        args: args.iter().map(|arg| arg.to_string()).collect(),
        ..Qemu::default()
    }
}

/// Everything a failing trial should show.
fn describe(qemu: &Qemu, outcome: &Outcome) -> String {
    format!(
        "`{}` ended after {:.1} s: {}\n--- QEMU stderr ---\n{}--- kernel serial output ---\n{}",
        qemu.cmdline(),
        outcome.elapsed.as_secs_f64(),
        outcome.verdict,
        outcome.qemu_stderr,
        outcome.serial
    )
}

fn boot(qemu: &Qemu) -> Result<Outcome, Failed> {
    qemu.run()
        .map_err(|err| Failed::from(format!("could not run QEMU: {err}")))
}

/// Boots and requires the kernel to report success.
fn boot_passing(qemu: &Qemu) -> Result<Outcome, Failed> {
    let outcome = boot(qemu)?;
    if outcome.verdict != Verdict::Pass {
        return Err(describe(qemu, &outcome).into());
    }
    Ok(outcome)
}

fn has_line(serial: &str, line: &str) -> bool {
    serial.lines().any(|l| l == line)
}

/// Reads `key=<bytes>` from the kernel's `memory map:` line.
fn memory_bytes(serial: &str, key: &str) -> Option<u64> {
    let line = serial.lines().find(|l| l.starts_with("memory map:"))?;
    let prefix = format!("{key}=");
    let word = line
        .split_whitespace()
        .find_map(|w| w.strip_prefix(&prefix))?;
    word.parse().ok()
}

/// A registered in-kernel test, as `list` prints it: `TEST <name> min_cpus=<n>`.
struct ListedTest {
    name: String,
    min_cpus: u32,
}

fn list_kernel_tests() -> Result<Vec<ListedTest>, String> {
    let list = qemu(&["list"], 1);
    let outcome = list
        .run()
        .map_err(|err| format!("could not run QEMU: {err}"))?;
    if outcome.verdict != Verdict::Pass {
        return Err(describe(&list, &outcome));
    }
    let mut tests = Vec::new();
    for line in outcome.serial.lines() {
        let mut words = line.split_whitespace();
        if words.next() != Some("TEST") {
            continue;
        }
        let name = words.next().ok_or(format!("bad list line `{line}`"))?;
        let mut min_cpus = 1;
        for word in words {
            if let Some(n) = word.strip_prefix("min_cpus=") {
                min_cpus = n.parse().map_err(|_| format!("bad list line `{line}`"))?;
            }
        }
        tests.push(ListedTest {
            name: name.to_string(),
            min_cpus,
        });
    }
    if tests.is_empty() {
        return Err(format!(
            "`list` printed no tests\n{}",
            describe(&list, &outcome)
        ));
    }
    Ok(tests)
}

fn kernel_test_trial(test: ListedTest) -> Trial {
    Trial::test(format!("kernel::{}", test.name), move || {
        let qemu = qemu(&["test", &test.name], test.min_cpus.max(1));
        let outcome = boot_passing(&qemu)?;
        // The verdict alone could come from the wrong code path; the kernel must also say which test passed.
        let expected = format!("PASS {}", test.name);
        if !outcome.serial.lines().any(|l| l.starts_with(&expected)) {
            return Err(format!("no `{expected}` line\n{}", describe(&qemu, &outcome)).into());
        }
        Ok(())
    })
}

fn demo_bios() -> Result<(), Failed> {
    let qemu = qemu(&[], 1);
    let outcome = boot_passing(&qemu)?;
    let usable = memory_bytes(&outcome.serial, "usable")
        .ok_or_else(|| format!("no usable memory reported\n{}", describe(&qemu, &outcome)))?;
    // QEMU gives 512 MiB; the bootloader takes a few MiB and the BIOS a little below 1 MiB.
    if !(400 * MIB..=512 * MIB).contains(&usable) {
        return Err(format!(
            "usable memory {usable} bytes is implausible for -m 512M\n{}",
            describe(&qemu, &outcome)
        )
        .into());
    }
    if !has_line(&outcome.serial, "demo: booted by BIOS on 1 CPU(s)") {
        return Err(format!("no BIOS demo line\n{}", describe(&qemu, &outcome)).into());
    }
    Ok(())
}

fn demo_uefi() -> Result<(), Failed> {
    let qemu = Qemu {
        uefi: true,
        ..qemu(&[], 1)
    };
    let outcome = boot_passing(&qemu)?;
    let firmware_bytes = memory_bytes(&outcome.serial, "unknown_uefi").unwrap_or(0);
    if firmware_bytes == 0 || !has_line(&outcome.serial, "demo: booted by UEFI on 1 CPU(s)") {
        return Err(format!("no UEFI memory or demo line\n{}", describe(&qemu, &outcome)).into());
    }
    Ok(())
}

/// `heapprofile`: the kernel prints a heap profile the runner's extraction reads back; with `go` on the
/// PATH, `go tool pprof` opens it and names the workload's kernel functions.
fn heap_profile() -> Result<(), Failed> {
    let qemu = qemu(&["heapprofile"], 1);
    let outcome = boot_passing(&qemu)?;
    let bytes = extract_profile(&qemu, &outcome)?;
    pprof_names(&bytes, &["kernel_main", "churn"])
}

/// The demo with `profilerate=` on dumps its own profile at the end, which names the demo's functions.
fn demo_heap_profile() -> Result<(), Failed> {
    let qemu = qemu(&["profilerate=65536"], 1);
    let outcome = boot_passing(&qemu)?;
    if !has_line(&outcome.serial, "demo: done") {
        return Err(format!("the demo did not finish\n{}", describe(&qemu, &outcome)).into());
    }
    let bytes = extract_profile(&qemu, &outcome)?;
    pprof_names(&bytes, &["kernel_main", "run"])
}

/// The heap profile a boot printed, read back by the runner's extraction; it must carry the heap
/// profile's sample types.
fn extract_profile(qemu: &Qemu, outcome: &Outcome) -> Result<Vec<u8>, Failed> {
    let mut collector = spanalloc_runner::heapprofile::Collector::default();
    for line in outcome.serial.lines() {
        collector.line(line);
    }
    let bytes = match collector.finish() {
        Some(Ok(bytes)) => bytes,
        Some(Err(e)) => return Err(format!("bad profile: {e}\n{}", describe(qemu, outcome)).into()),
        None => return Err(format!("no profile printed\n{}", describe(qemu, outcome)).into()),
    };
    let has = |s: &[u8]| bytes.windows(s.len()).any(|w| w == s);
    if !has(b"inuse_space") || !has(b"alloc_objects") {
        return Err(format!(
            "{} bytes without the heap profile's sample types",
            bytes.len()
        )
        .into());
    }
    Ok(bytes)
}

/// With `go` on the PATH, `go tool pprof -top` opens the profile and names each of `names` (the kernel's
/// functions); without it, nothing more is checked.
fn pprof_names(bytes: &[u8], names: &[&str]) -> Result<(), Failed> {
    let Ok(go) = std::process::Command::new("go").arg("version").output() else {
        eprintln!("heap_profile: `go` not found; go tool pprof not tried (Debian: golang-go)");
        return Ok(());
    };
    if !go.status.success() {
        return Ok(());
    }
    let file =
        std::env::temp_dir().join(format!("spanalloc-heapprofile-{}.pb", std::process::id()));
    std::fs::write(&file, bytes).map_err(|e| format!("writing {}: {e}", file.display()))?;
    let out = std::process::Command::new("go")
        .args([
            "tool",
            "pprof",
            "-sample_index=alloc_space",
            "-top",
            env!("KERNEL_ELF"),
        ])
        .arg(&file)
        .output()
        .map_err(|e| format!("go tool pprof: {e}"))?;
    let _ = std::fs::remove_file(&file);
    let text = String::from_utf8_lossy(&out.stdout);
    for name in names {
        if !text.contains(name) {
            return Err(format!(
                "go tool pprof -top does not name `{name}`:\n{text}\n{}",
                String::from_utf8_lossy(&out.stderr)
            )
            .into());
        }
    }
    Ok(())
}

/// `bench quick` through the runner's own command line: it must boot the bench kernel (built without
/// debug assertions, so its header says so) and print a ratio against each peer for 1, 2 and 4 CPUs,
/// with the range of the per-repetition ratios around it.
fn bench_quick() -> Result<(), Failed> {
    let (qemu, _) = parse_run(&["bench", "quick"])?;
    let qemu = Qemu {
        timeout: TEST_TIMEOUT,
        ..qemu
    };
    let outcome = boot_passing(&qemu)?;
    let serial = &outcome.serial;
    if !serial.lines().any(|l| {
        l.starts_with("bench: the bench kernel: ") && l.contains("without debug assertions")
    }) {
        return Err(format!(
            "no header naming the bench kernel\n{}",
            describe(&qemu, &outcome)
        )
        .into());
    }
    for cpus in [1, 2, 4] {
        for peer in ["buddy_locked", "linked_list_locked"] {
            let prefix = format!("BENCH_RATIO spanalloc/{peer} {cpus} ");
            let ratio = serial
                .lines()
                .find_map(|l| l.strip_prefix(prefix.as_str()))
                .and_then(|r| r.strip_suffix('x'))
                .and_then(|r| r.parse::<f64>().ok());
            let Some(ratio) = ratio.filter(|&r| r > 0.0) else {
                return Err(format!(
                    "no positive `{prefix}<ratio>x` line\n{}",
                    describe(&qemu, &outcome)
                )
                .into());
            };
            // The spread of the per-repetition ratios (three repetitions) must hold the median.
            let prefix = format!("BENCH_RATIO_RANGE spanalloc/{peer} {cpus} ");
            let range: Option<Vec<f64>> = serial
                .lines()
                .find_map(|l| l.strip_prefix(prefix.as_str()))
                .and_then(|r| {
                    r.split(' ')
                        .map(|x| x.strip_suffix('x')?.parse().ok())
                        .collect()
                });
            if !range.is_some_and(|r| r.len() == 2 && 0.0 < r[0] && r[0] <= ratio && ratio <= r[1])
            {
                return Err(format!(
                    "no `{prefix}<least>x <greatest>x` line around the median {ratio}\n{}",
                    describe(&qemu, &outcome)
                )
                .into());
            }
        }
    }
    Ok(())
}

fn unknown_test_fails() -> Result<(), Failed> {
    let qemu = qemu(&["test", "no_such_test"], 1);
    let outcome = boot(&qemu)?;
    if outcome.verdict != Verdict::Fail
        || !outcome.serial.contains("FAIL no_such_test: no such test")
    {
        return Err(format!("expected a reported failure\n{}", describe(&qemu, &outcome)).into());
    }
    Ok(())
}

/// Boots the example kernel: it must pass and print what it did (take-over, `alloc`, the GC, a page of its
/// own, the stats).
fn example_hello_kernel() -> Result<(), Failed> {
    let qemu = Qemu {
        image: Some(EXAMPLE_BIOS_IMAGE.into()),
        ..qemu(&[], 1)
    };
    let outcome = boot_passing(&qemu)?;
    let serial = &outcome.serial;
    for (what, found) in [
        (
            "the take-over line",
            serial
                .lines()
                .any(|l| l.starts_with("example: spanalloc: ") && l.contains("heap window")),
        ),
        ("`example: alloc ok`", has_line(serial, "example: alloc ok")),
        (
            "the GC line with 100 live objects",
            serial
                .lines()
                .any(|l| l.starts_with("example: gc ok: ") && l.ends_with(", 100 live")),
        ),
        ("`example: share ok`", has_line(serial, "example: share ok")),
        (
            "the heap stats",
            serial.lines().any(|l| l.starts_with("in use: ")),
        ),
        ("`example: done`", has_line(serial, "example: done")),
    ] {
        if !found {
            return Err(format!("no {what}\n{}", describe(&qemu, &outcome)).into());
        }
    }
    Ok(())
}

/// Boots the region-mode example kernel (its own paging, 100 KiB at 0x4444_4444_0000, a second region
/// added later): it must pass and print what it did.
fn example_region_kernel() -> Result<(), Failed> {
    let qemu = Qemu {
        image: Some(EXAMPLE_REGION_BIOS_IMAGE.into()),
        ..qemu(&[], 1)
    };
    let outcome = boot_passing(&qemu)?;
    let serial = &outcome.serial;
    for (what, found) in [
        (
            "the region line",
            serial.lines().any(|l| {
                l.starts_with("example-region: heap pages 0x444444442000..")
                    || l.starts_with("example-region: heap pages 0x444444444000..")
            }),
        ),
        (
            "`example-region: tutorial tests ok`",
            has_line(serial, "example-region: tutorial tests ok"),
        ),
        (
            "the added region",
            serial
                .lines()
                .any(|l| l.starts_with("example-region: added ") && l.ends_with("big vec ok")),
        ),
        (
            "the heap stats",
            serial.lines().any(|l| l.starts_with("in use: ")),
        ),
        (
            "`example-region: done`",
            has_line(serial, "example-region: done"),
        ),
    ] {
        if !found {
            return Err(format!("no {what}\n{}", describe(&qemu, &outcome)).into());
        }
    }
    Ok(())
}

/// The README's snippet (the ```rust block after "Use spanalloc in your kernel") must be the example kernel's
/// glue: every non-blank line not starting `// ...` appears in example-kernel/src/main.rs, in the same order.
fn example_readme_snippet() -> Result<(), Failed> {
    readme_snippet_in("## Use spanalloc in your kernel", "main.rs")
}

/// The README's region-mode snippet (the ```rust block after "### Region mode") is the region example's
/// glue, line by line, in order.
fn example_region_readme_snippet() -> Result<(), Failed> {
    readme_snippet_in("### Region mode", "region.rs")
}

/// Every non-blank, non-`// ...` line of the first ```rust block after `heading` in README.md appears in
/// example-kernel/src/`file`, in the same order; at least five of them.
fn readme_snippet_in(heading: &str, file: &str) -> Result<(), Failed> {
    let root = env!("CARGO_MANIFEST_DIR");
    let readme = std::fs::read_to_string(format!("{root}/README.md")).map_err(|e| e.to_string())?;
    let example = std::fs::read_to_string(format!("{root}/example-kernel/src/{file}"))
        .map_err(|e| e.to_string())?;
    let section = readme
        .split(heading)
        .nth(1)
        .ok_or_else(|| format!("README.md has no `{heading}` section"))?;
    let snippet = section
        .split("```rust\n")
        .nth(1)
        .and_then(|rest| rest.split("```").next())
        .ok_or("the README section has no ```rust block")?;
    let mut example_lines = example.lines().map(str::trim);
    let mut checked = 0;
    for line in snippet.lines().map(str::trim) {
        if line.is_empty() || line.starts_with("// ...") {
            continue;
        }
        if !example_lines.any(|l| l == line) {
            return Err(format!(
                "README snippet line `{line}` is not in example-kernel/src/{file} (in order)"
            )
            .into());
        }
        checked += 1;
    }
    if checked < 5 {
        return Err(format!("the README snippet has only {checked} lines").into());
    }
    Ok(())
}

fn parse_run(args: &[&str]) -> Result<(Qemu, bool), String> {
    match cli::parse(args.iter().copied()) {
        Ok(Action::Run { qemu, verbose }) => Ok((qemu, verbose)),
        Ok(Action::Help) => Err(format!("{args:?} parsed as --help")),
        Err(err) => Err(format!("{args:?} rejected: {err}")),
    }
}

fn runner_parses_options() -> Result<(), Failed> {
    let (qemu, verbose) = parse_run(&[])?;
    assert_eq!(
        (verbose, qemu.clone()),
        (false, Qemu::default()),
        "no arguments"
    );
    assert_eq!((qemu.smp, qemu.memory.as_str()), (4, "512M"));
    assert_eq!(qemu.timeout, Duration::from_secs(120));

    let (qemu, verbose) = parse_run(&[
        "--uefi",
        "--smp",
        "2",
        "--memory=1G",
        "--timeout",
        "30",
        "--verbose",
        "test",
        "boot_info",
        "--smp",
        "log=debug",
    ])?;
    assert!(verbose && qemu.uefi);
    assert_eq!((qemu.smp, qemu.memory.as_str()), (2, "1G"));
    assert_eq!(qemu.timeout, Duration::from_secs(30));
    // Everything from the first kernel word on is the kernel's, even what looks like a runner option.
    assert_eq!(qemu.cmdline(), "test boot_info --smp log=debug");

    let (qemu, _) = parse_run(&["--", "--weird"])?;
    assert_eq!(qemu.args, ["--weird"]);
    // `bench` boots the bench kernel, every other command the test kernel.
    let (qemu, _) = parse_run(&["--smp", "2", "bench"])?;
    assert_eq!(qemu.image, Some(BENCH_BIOS_IMAGE.into()));
    assert_eq!((qemu.smp, qemu.cmdline().as_str()), (2, "bench"));
    for args in [
        &["--", "bench", "quick"][..],
        &["log=debug", "bench"],
        // The kernel splits the joined words at whitespace: so does the runner.
        &["bench quick"],
        &["", "bench"],
        &["log=debug bench"],
    ] {
        assert_eq!(
            parse_run(args)?.0.image,
            Some(BENCH_BIOS_IMAGE.into()),
            "{args:?}"
        );
    }
    for args in [&["demo"][..], &["test", "bench"], &["list"], &["log=debug"]] {
        assert_eq!(parse_run(args)?.0.image, None, "{args:?}");
    }
    assert_eq!(cli::parse(["--help"]), Ok(Action::Help));
    Ok(())
}

fn runner_rejects_bad_options() -> Result<(), Failed> {
    for (args, expected) in [
        (&["--smp", "0"][..], "--smp `0`"),
        (&["--smp", "four"], "--smp `four`"),
        (&["--smp"], "--smp needs a value"),
        (&["--memory", "12Q"], "--memory `12Q`"),
        (&["--memory", "0M"], "must not be zero"),
        (&["--timeout", "0"], "--timeout `0`"),
        (&["--bogus"], "unknown option `--bogus`"),
        (&["--uefi", "bench"], "drop --uefi"),
    ] {
        match cli::parse(args.iter().copied()) {
            Err(err) if err.to_string().contains(expected) => {}
            other => {
                return Err(format!(
                    "{args:?}: expected an error naming `{expected}`, got {other:?}"
                )
                .into())
            }
        }
    }
    Ok(())
}

fn runner_reports_missing_qemu() -> Result<(), Failed> {
    let qemu = Qemu {
        qemu_binary: "/nonexistent/qemu-system-x86_64".into(),
        ..Qemu::default()
    };
    match qemu.run() {
        Err(err @ RunError::QemuMissing(_)) if err.to_string().contains("qemu-system-x86") => {
            Ok(())
        }
        other => {
            Err(format!("expected QemuMissing naming the Debian package, got {other:?}").into())
        }
    }
}

fn runner_kills_on_timeout() -> Result<(), Failed> {
    // A boot takes seconds, so half a second always times out.
    let qemu = Qemu {
        timeout: Duration::from_millis(500),
        ..qemu(&[], 1)
    };
    let outcome = boot(&qemu)?;
    if outcome.verdict != Verdict::Timeout || outcome.elapsed > Duration::from_secs(10) {
        return Err(format!("expected a prompt timeout\n{}", describe(&qemu, &outcome)).into());
    }
    Ok(())
}

fn main() {
    let mut args = Arguments::from_args();
    args.test_threads = args.test_threads.or(Some(DEFAULT_PARALLEL_TRIALS));

    let mut trials = vec![
        Trial::test("kernel::demo", demo_bios),
        Trial::test("kernel::uefi_boot", demo_uefi),
        Trial::test("kernel::unknown_test_fails", unknown_test_fails),
        Trial::test("kernel::bench_quick", bench_quick),
        Trial::test("kernel::heap_profile", heap_profile),
        Trial::test("kernel::demo_heap_profile", demo_heap_profile),
        Trial::test("example::hello_kernel", example_hello_kernel),
        Trial::test("example::readme_snippet", example_readme_snippet),
        Trial::test("example::region_kernel", example_region_kernel),
        Trial::test(
            "example::region_readme_snippet",
            example_region_readme_snippet,
        ),
        Trial::test("runner::parses_options", runner_parses_options),
        Trial::test("runner::rejects_bad_options", runner_rejects_bad_options),
        Trial::test("runner::reports_missing_qemu", runner_reports_missing_qemu),
        Trial::test("runner::kills_on_timeout", runner_kills_on_timeout),
    ];
    match list_kernel_tests() {
        Ok(tests) => trials.extend(tests.into_iter().map(kernel_test_trial)),
        Err(report) => trials.push(Trial::test("kernel::list", move || Err(report.into()))),
    }
    libtest_mimic::run(&args, trials).exit();
}
