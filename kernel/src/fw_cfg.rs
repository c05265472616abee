//! QEMU's firmware configuration device (fw_cfg) through its legacy I/O ports: the runner's way to hand the
//! kernel a command line (`-fw_cfg name=opt/spanalloc/cmdline,string=...`) and the machine's CPU count.
//!
//! Protocol: writing a 16-bit key to the selector port selects an item and rewinds it; each byte read from the
//! data port then yields the item's next byte. Item 0x19 is the file directory: a big-endian u32 count, then
//! 64-byte entries `{size: be32, select: be16, reserved: u16, name: [u8; 56]}` (NUL-padded name).
//!
//! Invariants: every access selects its item first and holds [`PORTS`] from select to last read, so a
//! select/read sequence is never interleaved with another one.

use spin::Mutex;
use x86_64::instructions::port::Port;

const SELECTOR_PORT: u16 = 0x510;
const DATA_PORT: u16 = 0x511;

const KEY_SIGNATURE: u16 = 0x00;
const KEY_NB_CPUS: u16 = 0x05;
const KEY_FILE_DIR: u16 = 0x19;

const SIGNATURE: [u8; 4] = *b"QEMU";
const DIR_ENTRY_NAME_LEN: usize = 56;

/// A file found in the fw_cfg directory.
#[derive(Debug, Clone, Copy)]
pub struct File {
    pub size: u32,
    select: u16,
}

struct Ports {
    selector: Port<u16>,
    data: Port<u8>,
}

impl Ports {
    /// Selects `key` (rewinding it) and fills `buf` with its first bytes.
    fn read(&mut self, key: u16, buf: &mut [u8]) {
        // SAFETY: the fw_cfg ports only move data between the device and the CPU, never touching memory.
        unsafe {
            self.selector.write(key);
            for byte in buf.iter_mut() {
                *byte = self.data.read();
            }
        }
    }
}

static PORTS: Mutex<Ports> = Mutex::new(Ports {
    selector: Port::new(SELECTOR_PORT),
    data: Port::new(DATA_PORT),
});

fn with_ports<R>(f: impl FnOnce(&mut Ports) -> R) -> R {
    x86_64::instructions::interrupts::without_interrupts(|| f(&mut PORTS.lock()))
}

/// Whether the machine has a fw_cfg device (reading absent ports yields 0xff, never the signature).
pub fn present() -> bool {
    let mut signature = [0; 4];
    with_ports(|ports| ports.read(KEY_SIGNATURE, &mut signature));
    signature == SIGNATURE
}

/// The number of CPUs QEMU was started with (`-smp`).
pub fn cpu_count() -> Option<usize> {
    if !present() {
        return None;
    }
    let mut count = [0; 2];
    // Legacy numeric items are little-endian, unlike the file directory.
    with_ports(|ports| ports.read(KEY_NB_CPUS, &mut count));
    Some(usize::from(u16::from_le_bytes(count)))
}

/// Looks `name` up in the file directory.
pub fn find(name: &str) -> Option<File> {
    if !present() {
        return None;
    }
    with_ports(|ports| {
        // The directory is read as one stream under one selection, header first.
        let mut header = [0; 4];
        ports.read(KEY_FILE_DIR, &mut header);
        let count = u32::from_be_bytes(header);
        for _ in 0..count {
            let mut entry = [0; 8 + DIR_ENTRY_NAME_LEN];
            // Continue the stream: reading the data port without reselecting yields the next entry.
            for byte in entry.iter_mut() {
                // SAFETY: reading the fw_cfg data port has no effect on memory.
                *byte = unsafe { ports.data.read() };
            }
            let entry_name = &entry[8..];
            let len = entry_name
                .iter()
                .position(|&b| b == 0)
                .unwrap_or(DIR_ENTRY_NAME_LEN);
            if &entry_name[..len] == name.as_bytes() {
                return Some(File {
                    size: u32::from_be_bytes([entry[0], entry[1], entry[2], entry[3]]),
                    select: u16::from_be_bytes([entry[4], entry[5]]),
                });
            }
        }
        None
    })
}

/// Reads the first `buf.len()` bytes of `file` (callers size `buf` from [`File::size`]).
pub fn read(file: File, buf: &mut [u8]) {
    with_ports(|ports| ports.read(file.select, buf));
}
