//! The kernel command line: what the runner asked this boot to do.
//!
//! Grammar (space-separated words): options `key=value` anywhere, and at most one command:
//! empty or `demo` (boot, report, exit), `list` (print the in-kernel tests), `test <name>` (run one test).
//! Options: `log=<off|error|warn|info|debug|trace>` (default `info`).

use alloc::string::String;
use alloc::vec;
use core::fmt;
use log::LevelFilter;

/// The fw_cfg file the runner writes the command line to.
pub const FW_CFG_FILE: &str = "opt/spanalloc/cmdline";

pub const USAGE: &str = "[demo | list | test <name>] [log=<off|error|warn|info|debug|trace>]";

/// Longest command line accepted; anything longer is a runner bug, not a real request.
const MAX_LEN: u32 = 4096;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command<'a> {
    Demo,
    List,
    Test(&'a str),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cmdline<'a> {
    pub command: Command<'a>,
    pub log_level: LevelFilter,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CmdlineError<'a> {
    UnknownCommand(&'a str),
    MissingTestName,
    UnexpectedWord(&'a str),
    UnknownOption(&'a str),
    BadLogLevel(&'a str),
}

impl fmt::Display for CmdlineError<'_> {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        match self {
            Self::UnknownCommand(word) => write!(f, "unknown command `{word}`"),
            Self::MissingTestName => write!(f, "`test` needs a test name (`list` prints them)"),
            Self::UnexpectedWord(word) => write!(f, "unexpected extra word `{word}`"),
            Self::UnknownOption(key) => write!(f, "unknown option `{key}=`"),
            Self::BadLogLevel(level) => write!(f, "bad log level `{level}`"),
        }
    }
}

/// Reads the command line the runner passed through fw_cfg; empty when there is none (no fw_cfg device, or
/// no file). Invalid UTF-8 is replaced rather than rejected, so the parser reports the odd word by name.
pub fn load() -> String {
    let Some(file) = crate::fw_cfg::find(FW_CFG_FILE) else {
        return String::new();
    };
    let len = file.size.min(MAX_LEN);
    let mut bytes = vec![0u8; len as usize];
    crate::fw_cfg::read(file, &mut bytes);
    // QEMU's `string=` items may or may not carry a terminating NUL depending on the version.
    while bytes.last() == Some(&0) {
        bytes.pop();
    }
    String::from_utf8_lossy(&bytes).into_owned()
}

pub fn parse(line: &str) -> Result<Cmdline<'_>, CmdlineError<'_>> {
    let mut log_level = LevelFilter::Info;
    let mut words = alloc::vec::Vec::new();
    for word in line.split_ascii_whitespace() {
        match word.split_once('=') {
            Some(("log", level)) => {
                log_level = level
                    .parse()
                    .map_err(|_| CmdlineError::BadLogLevel(level))?;
            }
            Some((key, _)) => return Err(CmdlineError::UnknownOption(key)),
            None => words.push(word),
        }
    }
    let (command, rest) = match words.as_slice() {
        [] | ["demo"] => (Command::Demo, &[][..]),
        ["demo", rest @ ..] => (Command::Demo, rest),
        ["list", rest @ ..] => (Command::List, rest),
        ["test"] => return Err(CmdlineError::MissingTestName),
        ["test", name, rest @ ..] => (Command::Test(name), rest),
        [unknown, ..] => return Err(CmdlineError::UnknownCommand(unknown)),
    };
    if let Some(extra) = rest.first() {
        return Err(CmdlineError::UnexpectedWord(extra));
    }
    Ok(Cmdline { command, log_level })
}
