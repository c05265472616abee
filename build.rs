//! Builds the kernel for x86_64-unknown-none with a nested cargo, then its BIOS and UEFI disk images, and hands
//! the images' paths to the runner as `BIOS_IMAGE` / `UEFI_IMAGE`. The same nested build makes the example
//! kernels (example-kernel/, the README's "use it in your kernel" lines and its region-mode lines), whose
//! BIOS images are `EXAMPLE_BIOS_IMAGE` and `EXAMPLE_REGION_BIOS_IMAGE`. A second nested build makes the
//! kernel as it ships (profile `kernel-bench`: no debug assertions, no overflow checks), whose BIOS image
//! `BENCH_BIOS_IMAGE` the runner boots for the `bench` command only.
//!
//! Why a nested cargo rather than an artifact dependency: artifact dependencies are unstable (`-Z bindeps`),
//! and stable cargo refuses to parse a manifest that uses one, yet the allocator must build on stable from
//! the repository root (`cargo +stable build -p spanalloc --target x86_64-unknown-none`).
//!
//! Invariants:
//! - The nested build uses its own target directory, `<target>/kernel-build`: the outer cargo holds the lock
//!   of its own build directory while this script runs, so sharing it would deadlock.
//! - None of the outer build's configuration reaches the nested one through the environment (host rustflags,
//!   clippy's wrapper, target and build dirs, this script's own variables): the kernel is the same whichever
//!   command (`run`, `test`, `clippy`, `--release`) ran this script.
//! - Every input of the kernel is declared with `rerun-if-changed`, so an edit rebuilds the kernel.

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

const KERNEL_PACKAGE: &str = "kernel";
/// The example kernel: package and binary name.
const EXAMPLE_PACKAGE: &str = "example-kernel";
/// The example package's region-mode kernel: binary name.
const EXAMPLE_REGION: &str = "example-region";
const KERNEL_TARGET: &str = "x86_64-unknown-none";
/// Defined in the root Cargo.toml: release with debug assertions and overflow checks.
const KERNEL_PROFILE: &str = "kernel";
/// Defined in the root Cargo.toml: the kernel as it ships (no debug assertions, no overflow checks), for the
/// in-kernel benchmark.
const BENCH_PROFILE: &str = "kernel-bench";

/// Paths, relative to the workspace root, whose changes can change the kernel.
const KERNEL_INPUTS: &[&str] = &[
    "kernel",
    "example-kernel",
    "allocator",
    "Cargo.toml",
    "Cargo.lock",
    "rust-toolchain.toml",
];

/// Variables cargo sets (or a user sets) for the outer build that would misconfigure the nested one.
const LEAKING_VARS: &[&str] = &[
    // Flags meant for the outer build; with `--target` they would land on the kernel.
    "RUSTFLAGS",
    "CARGO_ENCODED_RUSTFLAGS",
    "CARGO_BUILD_RUSTFLAGS",
    // The outer build's directories (its locks) and target.
    "CARGO_TARGET_DIR",
    "CARGO_BUILD_TARGET_DIR",
    "CARGO_BUILD_BUILD_DIR",
    "CARGO_BUILD_TARGET",
    // `cargo clippy` / `cargo fix` put their driver here for workspace members.
    "RUSTC_WORKSPACE_WRAPPER",
    "CARGO_BUILD_RUSTC_WORKSPACE_WRAPPER",
    "CARGO_PRIMARY_PACKAGE",
    // This build script's own inputs.
    "OUT_DIR",
    "TARGET",
    "HOST",
    "NUM_JOBS",
    "OPT_LEVEL",
    "DEBUG",
    "PROFILE",
    "RUSTC_LINKER",
    "CARGO_MANIFEST_DIR",
    "CARGO_MANIFEST_PATH",
    "CARGO_MANIFEST_LINKS",
];
const LEAKING_PREFIXES: &[&str] = &[
    "CARGO_FEATURE_",
    "CARGO_CFG_",
    "CARGO_PKG_",
    "DEP_",
    "__CARGO",
];
// Kept on purpose: CARGO_MAKEFLAGS (the nested build shares the outer build's job slots instead of adding its
// own), CARGO_HOME, RUSTC / RUSTC_WRAPPER / RUSTUP_TOOLCHAIN (same compiler), and settings aimed at the
// kernel itself such as CARGO_TARGET_X86_64_UNKNOWN_NONE_* or CARGO_PROFILE_KERNEL_*.

fn main() {
    let root = PathBuf::from(var("CARGO_MANIFEST_DIR"));
    let out_dir = PathBuf::from(var("OUT_DIR"));

    for input in KERNEL_INPUTS {
        println!("cargo:rerun-if-changed={}", root.join(input).display());
    }

    let kernel_build = target_dir(&out_dir, &root).join("kernel-build");
    let [kernel, example, example_region] = build_kernels(
        &root,
        &kernel_build,
        KERNEL_PROFILE,
        &[KERNEL_PACKAGE, EXAMPLE_PACKAGE],
        [KERNEL_PACKAGE, EXAMPLE_PACKAGE, EXAMPLE_REGION],
    );
    // The same kernel built as a kernel ships, for `cargo run -- bench` only: its own profile, so the same
    // target directory keeps both builds (about 20 s more on a fresh build, nothing when up to date).
    let [bench_kernel] = build_kernels(
        &root,
        &kernel_build,
        BENCH_PROFILE,
        &[KERNEL_PACKAGE],
        [KERNEL_PACKAGE],
    );

    let bios = bios_image(&kernel, out_dir.join("bios.img"), "the BIOS image");
    let uefi = out_dir.join("uefi.img");
    bootloader::UefiBoot::new(&kernel)
        .create_disk_image(&uefi)
        .unwrap_or_else(|e| {
            panic!(
                "creating the UEFI image {} from {}: {e:#}",
                uefi.display(),
                kernel.display()
            )
        });
    let bench_bios = bios_image(
        &bench_kernel,
        out_dir.join("bench-bios.img"),
        "the bench kernel's BIOS image",
    );
    let example_bios = bios_image(
        &example,
        out_dir.join("example-bios.img"),
        "the example BIOS image",
    );
    let example_region_bios = bios_image(
        &example_region,
        out_dir.join("example-region-bios.img"),
        "the region example's BIOS image",
    );

    println!("cargo:rustc-env=BIOS_IMAGE={}", bios.display());
    // The kernel executable itself, for symbolizing its heap profiles (`go tool pprof KERNEL_ELF ...`).
    println!("cargo:rustc-env=KERNEL_ELF={}", kernel.display());
    println!("cargo:rustc-env=UEFI_IMAGE={}", uefi.display());
    println!("cargo:rustc-env=BENCH_BIOS_IMAGE={}", bench_bios.display());
    println!(
        "cargo:rustc-env=EXAMPLE_BIOS_IMAGE={}",
        example_bios.display()
    );
    println!(
        "cargo:rustc-env=EXAMPLE_REGION_BIOS_IMAGE={}",
        example_region_bios.display()
    );
}

/// Makes the BIOS disk image `image` (`what`, for the error) of the kernel executable `kernel`.
fn bios_image(kernel: &Path, image: PathBuf, what: &str) -> PathBuf {
    bootloader::BiosBoot::new(kernel)
        .create_disk_image(&image)
        .unwrap_or_else(|e| {
            panic!(
                "creating {what} {} from {}: {e:#}",
                image.display(),
                kernel.display()
            )
        });
    image
}

fn var(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|e| panic!("build.rs: cargo did not set {name}: {e}"))
}

/// The outer build's target directory. `OUT_DIR` is `<target>/<profile>/build/<package>/<hash>/out` (older
/// cargo: `.../build/<package>-<hash>/out`), and cargo marks `<target>` with a CACHEDIR.TAG; only those two
/// depths are tried, so an unrelated tagged directory further up is never taken. Deriving it from `OUT_DIR`
/// follows `--target-dir` and `CARGO_TARGET_DIR`, so builds in private target dirs don't share a kernel lock.
fn target_dir(out_dir: &Path, root: &Path) -> PathBuf {
    [4, 5]
        .into_iter()
        .filter_map(|depth| out_dir.ancestors().nth(depth))
        .find(|dir| dir.join("CACHEDIR.TAG").is_file())
        .map_or_else(|| root.join("target"), Path::to_path_buf)
}

/// Runs `cargo build --package P... --target x86_64-unknown-none --profile PROFILE` (one build per profile,
/// so its packages share their dependencies' artifacts) and returns the paths of the executables `names`,
/// in that order. The nested cargo's stderr (its progress and errors) goes to this script's stderr, which
/// cargo shows when the script fails; its stdout carries the JSON messages that name the executables.
fn build_kernels<const N: usize>(
    root: &Path,
    target_dir: &Path,
    profile: &str,
    packages: &[&str],
    names: [&str; N],
) -> [PathBuf; N] {
    let cargo = var("CARGO");
    let mut cmd = Command::new(&cargo);
    cmd.current_dir(root)
        .arg("build")
        .arg("--manifest-path")
        .arg(root.join("Cargo.toml"))
        .args(packages.iter().flat_map(|package| ["--package", package]))
        .args(["--target", KERNEL_TARGET, "--profile", profile])
        .arg("--target-dir")
        .arg(target_dir)
        .arg("--message-format=json-render-diagnostics")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    for (name, _) in std::env::vars_os() {
        let Some(name) = name.to_str() else { continue };
        if LEAKING_VARS.contains(&name)
            || LEAKING_PREFIXES
                .iter()
                .any(|prefix| name.starts_with(prefix))
        {
            cmd.env_remove(name);
        }
    }

    // Frame pointers in every kernel function: the heap profile's call stacks are frame-pointer walks
    // (spanalloc::profile::stack). Set after the clean-up above, for the kernels only (with `--target`,
    // cargo gives these flags to target artifacts, not to build scripts).
    cmd.env("CARGO_ENCODED_RUSTFLAGS", "-Cforce-frame-pointers=yes");

    let shown = format!(
        "{cargo} {}",
        cmd.get_args()
            .map(OsStr::to_string_lossy)
            .collect::<Vec<_>>()
            .join(" ")
    );
    let output = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot start the kernel build `{shown}`: {e}"));
    if !output.status.success() {
        panic!(
            "building the kernel failed ({}); its errors are above, under `--- stderr`.\ncommand: {shown}",
            output.status
        );
    }

    let stdout = String::from_utf8_lossy(&output.stdout);
    let messages: Vec<serde_json::Value> = stdout
        .lines()
        .filter_map(|line| serde_json::from_str(line).ok())
        .collect();
    names.map(|name| {
        messages
            .iter()
            .find_map(|message| executable(message, name))
            .unwrap_or_else(|| {
                panic!("the kernel build succeeded but named no `{name}` executable.\ncommand: {shown}")
            })
    })
}

/// The executable of a `compiler-artifact` message for the binary `name`, if `message` is one.
fn executable(message: &serde_json::Value, name: &str) -> Option<PathBuf> {
    let target = &message["target"];
    let is_bin = message["reason"] == "compiler-artifact"
        && target["name"] == name
        && target["kind"].as_array()?.iter().any(|kind| kind == "bin");
    if !is_bin {
        return None;
    }
    message["executable"].as_str().map(PathBuf::from)
}
