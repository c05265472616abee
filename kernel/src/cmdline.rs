//! The kernel command line: what the runner asked this boot to do.
//!
//! Grammar (space-separated words): options `key=value` anywhere, and at most one command:
//! empty or `demo` (boot, report, exit), `list` (print the in-kernel tests), `test <name>` (run one test),
//! `bench [quick]` (measure allocator throughput on 1, 2 and 4 CPUs; `quick`: one short repetition), `heapprofile` (run a workload with the heap
//! profile on and dump the profile over serial, see `heapprofile.rs`).
//! Options: `log=<off|error|warn|info|debug|trace>` (default `info`); `gctrace=<0|1>` (default 1: the
//! garbage collector prints one line per cycle, as Go's GODEBUG=gctrace=1); `profilerate=<bytes>` (heap
//! profile sampling rate, 0 = off: the default, except 512 KiB for `heapprofile`; the demo dumps its
//! profile at the end when it is on); `guard=<bytes>` (one
//! small allocation per that many bytes gets a guarded page, 0 = off: the default); `guardside=<right|left>`
//! (which overrun faults at once, default right).

use core::fmt;
use log::LevelFilter;

/// The fw_cfg file the runner writes the command line to.
pub const FW_CFG_FILE: &str = "opt/spanalloc/cmdline";

pub const USAGE: &str =
    "[demo | list | test <name> | bench [quick] | heapprofile] [log=<off|error|warn|info|debug|trace>] [gctrace=<0|1>] [profilerate=<bytes>] [guard=<bytes>] [guardside=<right|left>]";

/// Longest command line accepted; anything longer is a runner bug, not a real request.
pub const MAX_LEN: usize = 4096;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command<'a> {
    Demo,
    List,
    Test(&'a str),
    /// The benchmark; `quick`: one short repetition (the smoke test).
    Bench {
        quick: bool,
    },
    HeapProfile,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cmdline<'a> {
    pub command: Command<'a>,
    pub log_level: LevelFilter,
    /// Print the collector's per-cycle trace lines.
    pub gctrace: bool,
    /// Heap sampling asked for (`profilerate=`, `guard=`, `guardside=`); `None` fields: not given.
    pub profile_rate: Option<usize>,
    pub guard_interval: Option<usize>,
    pub guard_left: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CmdlineError<'a> {
    UnknownCommand(&'a str),
    MissingTestName,
    UnexpectedWord(&'a str),
    UnknownOption(&'a str),
    BadLogLevel(&'a str),
    BadGctrace(&'a str),
    BadNumber(&'a str, &'a str),
    BadGuardSide(&'a str),
}

impl fmt::Display for CmdlineError<'_> {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        match self {
            Self::UnknownCommand(word) => write!(f, "unknown command `{word}`"),
            Self::MissingTestName => write!(f, "`test` needs a test name (`list` prints them)"),
            Self::UnexpectedWord(word) => write!(f, "unexpected extra word `{word}`"),
            Self::UnknownOption(key) => write!(f, "unknown option `{key}=`"),
            Self::BadLogLevel(level) => write!(f, "bad log level `{level}`"),
            Self::BadGctrace(value) => write!(f, "bad gctrace value `{value}` (0 or 1)"),
            Self::BadNumber(key, value) => {
                write!(f, "bad {key} value `{value}` (a number of bytes)")
            }
            Self::BadGuardSide(value) => write!(f, "bad guardside value `{value}` (right or left)"),
        }
    }
}

/// Room for the command line: [`load`] reads into a buffer of this size.
pub type Buffer = [u8; MAX_LEN];

/// Reads the command line the runner passed through fw_cfg into `buf`; empty when there is none (no fw_cfg
/// device, or no file). Allocation-free: it runs before memory take-over. Bytes that are not valid UTF-8 are
/// replaced by `?` rather than rejected, so the parser reports the odd word by name.
pub fn load(buf: &mut Buffer) -> &str {
    let Some(file) = crate::fw_cfg::find(FW_CFG_FILE) else {
        return "";
    };
    let mut bytes = &mut buf[..file.size.min(MAX_LEN as u32) as usize];
    crate::fw_cfg::read(file, bytes);
    // QEMU's `string=` items may or may not carry a terminating NUL depending on the version.
    while let [rest @ .., 0] = bytes {
        bytes = rest;
    }
    loop {
        match core::str::from_utf8(bytes) {
            Ok(_) => break,
            Err(err) => {
                let bad = err.valid_up_to();
                let len = err.error_len().unwrap_or(bytes.len() - bad);
                bytes[bad..bad + len].fill(b'?');
            }
        }
    }
    core::str::from_utf8(bytes).unwrap_or("")
}

pub fn parse(line: &str) -> Result<Cmdline<'_>, CmdlineError<'_>> {
    let mut log_level = LevelFilter::Info;
    let mut gctrace = true;
    let mut profile_rate = None;
    let mut guard_interval = None;
    let mut guard_left = false;
    // A command takes at most two words, so the third one, if any, is the first extra word to report.
    let mut words = [""; 3];
    let mut count = 0;
    for word in line.split_ascii_whitespace() {
        match word.split_once('=') {
            Some(("log", level)) => {
                log_level = level
                    .parse()
                    .map_err(|_| CmdlineError::BadLogLevel(level))?;
            }
            Some(("gctrace", value)) => {
                gctrace = match value {
                    "0" => false,
                    "1" => true,
                    _ => return Err(CmdlineError::BadGctrace(value)),
                };
            }
            Some((key @ ("profilerate" | "guard"), value)) => {
                let n = value
                    .parse::<usize>()
                    .map_err(|_| CmdlineError::BadNumber(key, value))?;
                if key == "guard" {
                    guard_interval = Some(n);
                } else {
                    profile_rate = Some(n);
                }
            }
            Some(("guardside", value)) => {
                guard_left = match value {
                    "left" => true,
                    "right" => false,
                    _ => return Err(CmdlineError::BadGuardSide(value)),
                };
            }
            Some((key, _)) => return Err(CmdlineError::UnknownOption(key)),
            None if count < words.len() => {
                words[count] = word;
                count += 1;
            }
            None => {}
        }
    }
    let (command, rest) = match &words[..count] {
        [] | ["demo"] => (Command::Demo, &[][..]),
        ["demo", rest @ ..] => (Command::Demo, rest),
        ["list", rest @ ..] => (Command::List, rest),
        ["bench", "quick", rest @ ..] => (Command::Bench { quick: true }, rest),
        ["bench", rest @ ..] => (Command::Bench { quick: false }, rest),
        ["heapprofile", rest @ ..] => (Command::HeapProfile, rest),
        ["test"] => return Err(CmdlineError::MissingTestName),
        ["test", name, rest @ ..] => (Command::Test(name), rest),
        [unknown, ..] => return Err(CmdlineError::UnknownCommand(unknown)),
    };
    if let Some(extra) = rest.first() {
        return Err(CmdlineError::UnexpectedWord(extra));
    }
    Ok(Cmdline {
        command,
        log_level,
        gctrace,
        profile_rate,
        guard_interval,
        guard_left,
    })
}
