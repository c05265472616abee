//! The runner's command line: `[OPTIONS] [KERNEL ARGS...]`, parsed by hand to keep dependencies minimal.
//!
//! Options come first; the first word that is not an option (or everything after `--`) starts the kernel's
//! arguments, which are passed on untouched, so `cargo run -- test boot_info log=debug` works.

use crate::{Qemu, BENCH_BIOS_IMAGE};
use std::fmt;
use std::time::Duration;

pub const USAGE: &str = "\
Boots the spanalloc kernel in QEMU and exits with its verdict (0 pass, 1 fail/crash/timeout, 2 setup error).

Usage: cargo run -- [OPTIONS] [KERNEL ARGS...]

Options:
  --uefi            boot the UEFI image under OVMF (default: BIOS)
  --smp N           number of CPUs (default 4)
  --memory SIZE     guest memory, QEMU syntax such as 512M or 2G (default 512M)
  --timeout SECS    kill QEMU after this many seconds (default 120)
  --verbose         print the QEMU command line and the run time
  -h, --help        print this help

Kernel args (joined with spaces, read by the kernel from fw_cfg):
  (none) | demo     boot, report the memory map, exit
  list              print the in-kernel tests
  bench [quick]     the in-kernel benchmark: spanalloc vs locked buddy and linked-list heaps on 1, 2
                    and 4 CPUs; boots the kernel as it ships (no debug assertions, no overflow
                    checks), BIOS only; `quick` is the smoke test's short run
  test NAME         run one in-kernel test
  heapprofile       run a workload with the heap profile on; the runner writes it to heapprofile.pb
  profilerate=BYTES heap profile sampling rate (0 off; 524288 for heapprofile); with demo, the
                    demo dumps its profile at the end (written to heapprofile.pb)
  guard=BYTES       one small allocation per BYTES allocated gets a guard page (0 off, the default)
  guardside=SIDE    right (overflows fault, default) or left (underflows fault)
  log=LEVEL         kernel log level: off, error, warn, info (default), debug, trace";

/// What the command line asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    Help,
    Run { qemu: Qemu, verbose: bool },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArgError(pub String);

impl fmt::Display for ArgError {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "{} (see --help)", self.0)
    }
}

impl std::error::Error for ArgError {}

/// Parses the arguments after the program name.
pub fn parse<I>(args: I) -> Result<Action, ArgError>
where
    I: IntoIterator,
    I::Item: Into<String>,
{
    let mut qemu = Qemu::default();
    let mut verbose = false;
    let mut args = args.into_iter().map(Into::into);
    while let Some(arg) = args.next() {
        // `--name=value` and `--name value` are both accepted.
        let (name, inline_value) = match arg.split_once('=') {
            Some((name, value)) if name.starts_with("--") => {
                (name.to_string(), Some(value.to_string()))
            }
            _ => (arg.clone(), None),
        };
        let mut value = |what: &str| -> Result<String, ArgError> {
            inline_value
                .clone()
                .or_else(|| args.next())
                .ok_or_else(|| ArgError(format!("{name} needs a value ({what})")))
        };
        match name.as_str() {
            "-h" | "--help" => return Ok(Action::Help),
            "--uefi" => qemu.uefi = true,
            "--verbose" | "-v" => verbose = true,
            "--smp" => qemu.smp = parse_smp(&value("a CPU count")?)?,
            "--memory" | "-m" => qemu.memory = parse_memory(&value("a size such as 512M")?)?,
            "--timeout" => {
                qemu.timeout = Duration::from_secs(parse_timeout(&value("seconds")?)?);
            }
            "--" => {
                qemu.args.extend(args);
                break;
            }
            option if option.starts_with('-') => {
                return Err(ArgError(format!("unknown option `{option}`")));
            }
            _ => {
                qemu.args.push(arg);
                qemu.args.extend(args);
                break;
            }
        }
    }
    // `bench` measures the kernel as it ships, not the test kernel (build.rs, `kernel-bench`). Found as the
    // kernel finds its command: the arguments joined with spaces, split at whitespace, the first word
    // that is not a `key=value` option (options may come first).
    if qemu
        .cmdline()
        .split_ascii_whitespace()
        .find(|word| !word.contains('='))
        .is_some_and(|command| command == "bench")
    {
        if qemu.uefi {
            return Err(ArgError(
                "`bench` boots the bench kernel's BIOS image only: drop --uefi".into(),
            ));
        }
        qemu.image = Some(BENCH_BIOS_IMAGE.into());
    }
    Ok(Action::Run { qemu, verbose })
}

/// QEMU's TCG accepts up to 255 CPUs on the default machine; more is surely a typo.
fn parse_smp(value: &str) -> Result<u32, ArgError> {
    match value.parse::<u32>() {
        Ok(n @ 1..=255) => Ok(n),
        _ => Err(ArgError(format!(
            "--smp `{value}`: expected a CPU count from 1 to 255"
        ))),
    }
}

/// Digits with an optional K/M/G/T suffix (QEMU's `-m` syntax, bare numbers meaning MiB).
fn parse_memory(value: &str) -> Result<String, ArgError> {
    let digits = value.trim_end_matches(['K', 'M', 'G', 'T', 'k', 'm', 'g', 't']);
    let suffix_len = value.len() - digits.len();
    if digits.is_empty() || suffix_len > 1 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(ArgError(format!(
            "--memory `{value}`: expected a size such as 512M or 2G"
        )));
    }
    if digits.bytes().all(|b| b == b'0') {
        return Err(ArgError(format!("--memory `{value}`: must not be zero")));
    }
    Ok(value.to_string())
}

fn parse_timeout(value: &str) -> Result<u64, ArgError> {
    match value.parse::<u64>() {
        Ok(secs) if secs > 0 => Ok(secs),
        _ => Err(ArgError(format!(
            "--timeout `{value}`: expected a whole number of seconds, at least 1"
        ))),
    }
}
