//! The allocator must build on stable Rust from the repository root, with the command a user would type:
//! `cargo +stable build -p spanalloc --target x86_64-unknown-none`, and again with `--features bootloader,gc`
//! (what a kernel adds). This catches nightly-only code in the allocator and anything in the workspace's
//! manifests or cargo config (.cargo/config.toml) that stable cargo cannot parse (such as an artifact
//! dependency).
//!
//! It needs rustup and a stable toolchain with the x86_64-unknown-none target (`.ci/setup` adds the target).
//! When any of them is missing the test fails and says what to do: a skipped check would pass silently.

use std::path::Path;
use std::process::{Command, Output};

const TARGET: &str = "x86_64-unknown-none";

/// Variables of the environment `cargo test` runs in that would make the check test something else: the
/// pinned nightly's cargo and rustc, nightly features unlocked on stable, flags and directories of the outer
/// build.
const LEAKING_VARS: &[&str] = &[
    "CARGO",
    "RUSTC",
    "RUSTDOC",
    "RUSTUP_TOOLCHAIN",
    "RUSTC_BOOTSTRAP",
    "RUSTC_WORKSPACE_WRAPPER",
    "RUSTFLAGS",
    "CARGO_ENCODED_RUSTFLAGS",
    "CARGO_BUILD_RUSTFLAGS",
    "CARGO_TARGET_DIR",
    "CARGO_BUILD_TARGET_DIR",
    "CARGO_BUILD_BUILD_DIR",
    "CARGO_BUILD_TARGET",
];
const LEAKING_PREFIXES: &[&str] = &["CARGO_UNSTABLE_"];

/// Runs `cmd` to completion; a program that cannot start at all is a setup problem, reported as one.
fn run(cmd: &mut Command) -> Output {
    cmd.output().unwrap_or_else(|e| {
        panic!(
            "cannot run `{}` ({e}): the stable-build check needs rustup with a stable toolchain; install rustup, \
             then run .ci/setup",
            cmd.get_program().to_string_lossy()
        )
    })
}

/// Runs a rustup query and returns its stdout, failing with rustup's stderr if it fails.
fn rustup(args: &[&str]) -> String {
    let output = run(Command::new("rustup").args(args));
    assert!(
        output.status.success(),
        "`rustup {}` failed ({}):\n{}",
        args.join(" "),
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

#[test]
fn allocator_builds_on_stable() {
    let toolchains = rustup(&["toolchain", "list"]);
    assert!(
        toolchains.lines().any(|line| line.starts_with("stable-")),
        "no stable toolchain installed (`rustup toolchain list`:\n{toolchains}): install one with \
         `rustup toolchain install stable --profile minimal`, then run .ci/setup"
    );
    let targets = rustup(&["target", "list", "--installed", "--toolchain", "stable"]);
    assert!(
        targets.lines().any(|line| line.trim() == TARGET),
        "the stable toolchain lacks the {TARGET} target (installed: {}): run .ci/setup",
        targets.split_whitespace().collect::<Vec<_>>().join(", ")
    );

    // Without features (what a kernel gets by default), then with those a kernel adds (the bootloader_api
    // integration, the collector).
    for features in [None, Some("bootloader,gc")] {
        stable_build(features);
    }
}

fn stable_build(features: Option<&str>) {
    // Own target directory: the outer `cargo test` holds the lock on the usual one.
    let target_dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("stable-check");
    let mut cargo = Command::new("cargo");
    cargo
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .args(["+stable", "build", "-p", "spanalloc", "--target", TARGET])
        .arg("--target-dir")
        .arg(&target_dir);
    if let Some(features) = features {
        cargo.args(["--features", features]);
    }
    for (name, _) in std::env::vars_os() {
        let Some(name) = name.to_str() else { continue };
        if LEAKING_VARS.contains(&name)
            || LEAKING_PREFIXES
                .iter()
                .any(|prefix| name.starts_with(prefix))
        {
            cargo.env_remove(name);
        }
    }
    let output = run(&mut cargo);
    assert!(
        output.status.success(),
        "`cargo +stable build -p spanalloc --target {TARGET}{}` failed ({}):\n{}",
        features.map_or(String::new(), |f| format!(" --features {f}")),
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
}
