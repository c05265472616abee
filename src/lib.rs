//! Boots the spanalloc kernel's disk images in QEMU and reports how the run ended.
//!
//! The same image runs any command the kernel knows (the demo, `list`, `test <name>`): [`Qemu::args`] is
//! joined with spaces and handed to the kernel as the fw_cfg file `opt/spanalloc/cmdline`.
//!
//! The kernel ends a run by writing to QEMU's `isa-debug-exit` device, which makes QEMU exit with status 33
//! (success) or 35 (failure). Anything else — QEMU's own 0 or 1 after a triple fault under `--no-reboot`, a
//! signal — is a crash, and a run past its timeout is killed.
//!
//! Invariant: every QEMU started here is waited for (or killed and waited for) before [`Qemu::run_with`]
//! returns, and the firmware-variables copy of a UEFI run is deleted with it.

pub mod cli;
pub mod heapprofile;

use std::fmt;
use std::io::{self, BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

/// The BIOS disk image built by build.rs.
pub const BIOS_IMAGE: &str = env!("BIOS_IMAGE");
/// The UEFI disk image built by build.rs.
pub const UEFI_IMAGE: &str = env!("UEFI_IMAGE");
/// The BIOS disk image of the kernel as it ships (profile `kernel-bench`), which `bench` boots.
pub const BENCH_BIOS_IMAGE: &str = env!("BENCH_BIOS_IMAGE");
/// The example kernel's BIOS disk image (example-kernel/), built by build.rs.
pub const EXAMPLE_BIOS_IMAGE: &str = env!("EXAMPLE_BIOS_IMAGE");
/// BIOS image of the region-mode example kernel (example-kernel/src/region.rs).
pub const EXAMPLE_REGION_BIOS_IMAGE: &str = env!("EXAMPLE_REGION_BIOS_IMAGE");

/// The fw_cfg file the kernel reads its command line from.
pub const CMDLINE_FW_CFG_NAME: &str = "opt/spanalloc/cmdline";

/// Debian's OVMF firmware (package `ovmf`): code (read-only) and the template of its variable store.
pub const OVMF_CODE: &str = "/usr/share/OVMF/OVMF_CODE_4M.fd";
pub const OVMF_VARS: &str = "/usr/share/OVMF/OVMF_VARS_4M.fd";

const QEMU_BINARY: &str = "qemu-system-x86_64";

/// QEMU exit statuses produced by the kernel's writes of 0x10 / 0x11 to `isa-debug-exit`.
const EXIT_SUCCESS: i32 = (0x10 << 1) | 1;
const EXIT_FAILURE: i32 = (0x11 << 1) | 1;

/// How often the run loop checks whether QEMU has exited or the timeout has passed.
const POLL_INTERVAL: Duration = Duration::from_millis(20);

/// One QEMU run of the kernel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Qemu {
    /// Boot the UEFI image under OVMF instead of the BIOS image.
    pub uefi: bool,
    /// Number of CPUs (`-smp`).
    pub smp: u32,
    /// Guest memory in QEMU's `-m` syntax, e.g. `512M`.
    pub memory: String,
    /// The run is killed and reported as [`Verdict::Timeout`] after this long.
    pub timeout: Duration,
    /// Kernel command line words, e.g. `["test", "boot_info"]`.
    pub args: Vec<String>,
    /// The QEMU executable; `qemu-system-x86_64` from `PATH` unless changed.
    pub qemu_binary: PathBuf,
    /// A disk image to boot instead of the kernel's (e.g. [`EXAMPLE_BIOS_IMAGE`]); `None`: the kernel's
    /// BIOS or UEFI image as `uefi` says.
    pub image: Option<PathBuf>,
}

impl Default for Qemu {
    fn default() -> Self {
        Self {
            uefi: false,
            smp: 4,
            memory: "512M".into(),
            timeout: Duration::from_secs(120),
            args: Vec::new(),
            qemu_binary: QEMU_BINARY.into(),
            image: None,
        }
    }
}

/// How a run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// The kernel reported success.
    Pass,
    /// The kernel reported failure.
    Fail,
    /// QEMU was killed after the timeout.
    Timeout,
    /// QEMU exited without the kernel reporting: its own status (`None` if killed by a signal).
    Crashed(Option<i32>),
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        match self {
            Self::Pass => write!(f, "kernel reported success"),
            Self::Fail => write!(f, "kernel reported failure"),
            Self::Timeout => write!(f, "timed out; QEMU was killed"),
            Self::Crashed(Some(code)) => write!(
                f,
                "QEMU exited with status {code} without the kernel reporting a result \
                 (a triple fault or a firmware/boot failure)"
            ),
            Self::Crashed(None) => write!(f, "QEMU was killed by a signal"),
        }
    }
}

/// The result of a run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    pub verdict: Verdict,
    /// Everything the kernel wrote to the serial port, `\r` removed.
    pub serial: String,
    /// What QEMU itself wrote to stderr (warnings, errors).
    pub qemu_stderr: String,
    pub elapsed: Duration,
}

/// Why a run could not take place.
#[derive(Debug)]
pub enum RunError {
    /// The QEMU executable is not installed.
    QemuMissing(PathBuf),
    /// An OVMF firmware file (for `--uefi`) is not installed.
    OvmfMissing(PathBuf),
    /// Bad settings, e.g. zero CPUs.
    Config(String),
    Io(io::Error),
}

impl fmt::Display for RunError {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        match self {
            Self::QemuMissing(binary) => write!(
                f,
                "{} not found: install the Debian package `qemu-system-x86` (or run .ci/setup)",
                binary.display()
            ),
            Self::OvmfMissing(file) => write!(
                f,
                "UEFI firmware {} not found: install the Debian package `ovmf` (or run .ci/setup)",
                file.display()
            ),
            Self::Config(message) => write!(f, "{message}"),
            Self::Io(err) => write!(f, "running QEMU: {err}"),
        }
    }
}

impl std::error::Error for RunError {}

impl From<io::Error> for RunError {
    fn from(err: io::Error) -> Self {
        Self::Io(err)
    }
}

/// A copy of the OVMF variable store, deleted on drop: firmware writes to it, so parallel runs need their own.
struct TempFile(PathBuf);

impl TempFile {
    fn copy_of(template: &Path) -> io::Result<Self> {
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let path = std::env::temp_dir().join(format!(
            "spanalloc-ovmf-vars-{}-{}.fd",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::copy(template, &path)?;
        Ok(Self(path))
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// QEMU's `-drive`/`-fw_cfg` option values are comma-separated; a literal comma is written twice.
fn escape_option_value(value: &str) -> String {
    value.replace(',', ",,")
}

/// A line of QEMU output, from whichever stream.
enum Line {
    Serial(String),
    Stderr(String),
}

/// Forwards `reader`'s lines (lossily decoded, `\r` removed) until EOF.
fn forward_lines(
    reader: impl Read + Send + 'static,
    wrap: fn(String) -> Line,
    sender: mpsc::Sender<Line>,
) -> thread::JoinHandle<()> {
    thread::spawn(move || {
        let mut reader = BufReader::new(reader);
        let mut buf = Vec::new();
        loop {
            buf.clear();
            match reader.read_until(b'\n', &mut buf) {
                Ok(0) | Err(_) => break,
                Ok(_) => {
                    let line = String::from_utf8_lossy(&buf).replace('\r', "");
                    if sender.send(wrap(line)).is_err() {
                        break;
                    }
                }
            }
        }
    })
}

impl Qemu {
    /// The kernel command line as the kernel will see it.
    pub fn cmdline(&self) -> String {
        self.args.join(" ")
    }

    /// The QEMU command for this run; `vars` is the firmware-variables copy for UEFI runs.
    fn command(&self, vars: Option<&Path>) -> Command {
        let mut cmd = Command::new(&self.qemu_binary);
        let image = match &self.image {
            Some(image) => image.to_string_lossy(),
            None if self.uefi => UEFI_IMAGE.into(),
            None => BIOS_IMAGE.into(),
        };
        if let Some(vars) = vars {
            cmd.arg("-drive").arg(format!(
                "if=pflash,format=raw,readonly=on,file={}",
                escape_option_value(OVMF_CODE)
            ));
            cmd.arg("-drive").arg(format!(
                "if=pflash,format=raw,file={}",
                escape_option_value(&vars.to_string_lossy())
            ));
        }
        // snapshot=on: writes go to a throwaway overlay, so parallel runs can share the image file.
        cmd.arg("-drive").arg(format!(
            "format=raw,snapshot=on,file={}",
            escape_option_value(&image)
        ));
        cmd.args(["-serial", "stdio", "-display", "none", "--no-reboot"]);
        cmd.args(["-device", "isa-debug-exit,iobase=0xf4,iosize=0x04"]);
        cmd.arg("-smp").arg(self.smp.to_string());
        cmd.arg("-m").arg(&self.memory);
        let cmdline = self.cmdline();
        // QEMU rejects an empty `string=`; no file means an empty command line to the kernel.
        if !cmdline.is_empty() {
            cmd.arg("-fw_cfg").arg(format!(
                "name={CMDLINE_FW_CFG_NAME},string={}",
                escape_option_value(&cmdline)
            ));
        }
        cmd
    }

    /// The QEMU command line as a shell would show it (for `--verbose`); OVMF's variables appear as a template.
    pub fn command_line(&self) -> String {
        let vars = self.uefi.then(|| Path::new(OVMF_VARS));
        let cmd = self.command(vars);
        let mut words = vec![cmd.get_program().to_string_lossy().into_owned()];
        for arg in cmd.get_args() {
            let arg = arg.to_string_lossy();
            if arg.contains(' ') {
                words.push(format!("'{arg}'"));
            } else {
                words.push(arg.into_owned());
            }
        }
        words.join(" ")
    }

    /// Runs QEMU to the end, capturing the serial output.
    pub fn run(&self) -> Result<Outcome, RunError> {
        self.run_with(|_| {})
    }

    /// Runs QEMU to the end, calling `on_serial_line` with each line the kernel prints (newline included) as
    /// soon as it arrives, and capturing it too.
    pub fn run_with(&self, mut on_serial_line: impl FnMut(&str)) -> Result<Outcome, RunError> {
        if self.smp == 0 {
            return Err(RunError::Config("QEMU needs at least one CPU".into()));
        }
        let vars = if self.uefi {
            for file in [OVMF_CODE, OVMF_VARS] {
                if !Path::new(file).is_file() {
                    return Err(RunError::OvmfMissing(file.into()));
                }
            }
            Some(TempFile::copy_of(Path::new(OVMF_VARS))?)
        } else {
            None
        };
        let mut cmd = self.command(vars.as_ref().map(|file| file.0.as_path()));
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let start = Instant::now();
        let mut child = cmd.spawn().map_err(|err| match err.kind() {
            io::ErrorKind::NotFound => RunError::QemuMissing(self.qemu_binary.clone()),
            _ => RunError::Io(err),
        })?;

        let (sender, receiver) = mpsc::channel();
        let readers = [
            forward_lines(
                child.stdout.take().expect("stdout is piped"),
                Line::Serial,
                sender.clone(),
            ),
            forward_lines(
                child.stderr.take().expect("stderr is piped"),
                Line::Stderr,
                sender,
            ),
        ];

        let mut serial = String::new();
        let mut qemu_stderr = String::new();
        let mut on_line = |line: Line| match line {
            Line::Serial(text) => {
                on_serial_line(&text);
                serial.push_str(&text);
            }
            Line::Stderr(text) => qemu_stderr.push_str(&text),
        };
        let status = loop {
            if let Some(status) = child.try_wait()? {
                break Some(status);
            }
            if start.elapsed() >= self.timeout {
                kill(&mut child)?;
                break None;
            }
            if let Ok(line) = receiver.recv_timeout(POLL_INTERVAL) {
                on_line(line);
            }
        };
        // QEMU is gone, so both pipes reach EOF and the readers end; then collect what is still queued.
        for reader in readers {
            let _ = reader.join();
        }
        for line in receiver.try_iter() {
            on_line(line);
        }
        drop(vars);

        Ok(Outcome {
            verdict: status.map_or(Verdict::Timeout, verdict),
            serial,
            qemu_stderr,
            elapsed: start.elapsed(),
        })
    }
}

fn kill(child: &mut Child) -> io::Result<()> {
    // An error means QEMU exited on its own in the meantime; `wait` reaps it either way.
    let _ = child.kill();
    child.wait().map(drop)
}

fn verdict(status: ExitStatus) -> Verdict {
    match status.code() {
        Some(EXIT_SUCCESS) => Verdict::Pass,
        Some(EXIT_FAILURE) => Verdict::Fail,
        code => Verdict::Crashed(code),
    }
}
