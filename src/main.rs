//! `cargo run -- [OPTIONS] [KERNEL ARGS...]`: boots the kernel in QEMU, streams its serial output, and exits
//! 0 if the kernel reported success, 1 if it reported failure, crashed or timed out, 2 if QEMU could not run.

use spanalloc_runner::cli::{self, Action};
use spanalloc_runner::Verdict;
use std::io::Write;
use std::process::ExitCode;

/// Where a heap profile the kernel prints (`heapprofile` command) is written, in the current directory.
const PROFILE_FILE: &str = "heapprofile.pb";

fn main() -> ExitCode {
    let (qemu, verbose) = match cli::parse(std::env::args().skip(1)) {
        Ok(Action::Help) => {
            println!("{}", cli::USAGE);
            return ExitCode::SUCCESS;
        }
        Ok(Action::Run { qemu, verbose }) => (qemu, verbose),
        Err(err) => {
            eprintln!("error: {err}");
            return ExitCode::from(2);
        }
    };
    if verbose {
        eprintln!("running: {}", qemu.command_line());
    }
    let stdout = std::io::stdout();
    let mut profile = spanalloc_runner::heapprofile::Collector::default();
    let outcome = qemu.run_with(|line| {
        if profile.line(line) {
            return;
        }
        let mut out = stdout.lock();
        let _ = out.write_all(line.as_bytes());
        let _ = out.flush();
    });
    match profile.finish() {
        Some(Ok(bytes)) => match std::fs::write(PROFILE_FILE, &bytes) {
            Ok(()) => eprintln!(
                "heap profile ({} bytes) written to {PROFILE_FILE}; read it with:\n  go tool pprof -top {} {PROFILE_FILE}",
                bytes.len(),
                env!("KERNEL_ELF")
            ),
            Err(e) => eprintln!("error: cannot write the heap profile to {PROFILE_FILE}: {e}"),
        },
        Some(Err(e)) => eprintln!("error: the kernel's heap profile is unreadable: {e}"),
        None => {}
    }
    let outcome = match outcome {
        Ok(outcome) => outcome,
        Err(err) => {
            eprintln!("error: {err}");
            return ExitCode::from(2);
        }
    };
    // QEMU's own complaints matter most when the run went wrong.
    if verbose || outcome.verdict != Verdict::Pass {
        eprint!("{}", outcome.qemu_stderr);
    }
    let secs = outcome.elapsed.as_secs_f64();
    match outcome.verdict {
        Verdict::Pass => {
            if verbose {
                eprintln!("{} after {secs:.1} s", outcome.verdict);
            }
            ExitCode::SUCCESS
        }
        Verdict::Timeout => {
            eprintln!(
                "error: {} after {} s (raise it with --timeout)",
                outcome.verdict,
                qemu.timeout.as_secs()
            );
            ExitCode::FAILURE
        }
        verdict => {
            eprintln!("error: {verdict} after {secs:.1} s");
            ExitCode::FAILURE
        }
    }
}
