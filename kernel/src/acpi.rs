//! Just enough ACPI to find the CPUs: RSDP -> XSDT (or RSDT) -> MADT, and the MADT's local APIC entries.
//!
//! Why not the `acpi` crate: this needs three tables and two entry types, read once at boot; a parser of
//! ~150 lines over the physical-memory mapping is smaller than adapting the crate's handler/mapping API,
//! and it reports exactly which table or entry is bad.
//!
//! Invariants:
//! - Tables are read through the bootloader's physical-memory mapping, which covers the first 4 GiB and all
//!   of RAM, where firmware keeps its ACPI tables; nothing is written.
//! - Every table's length is checked against its header before an entry is read, and every checksum is
//!   verified, so a bad table is an `Err` naming it, never a wild read past its end.

use alloc::vec::Vec;
use core::fmt;
use x86_64::{PhysAddr, VirtAddr};

const SDT_HEADER_LEN: usize = 36;
const MADT_ENTRIES_OFFSET: usize = SDT_HEADER_LEN + 8;
/// Tables longer than this are taken as garbage rather than read.
const MAX_TABLE_LEN: u32 = 1 << 20;

const MADT_LOCAL_APIC: u8 = 0;
const MADT_LAPIC_ADDRESS_OVERRIDE: u8 = 5;
const MADT_LOCAL_X2APIC: u8 = 9;
const LAPIC_ENABLED: u32 = 1 << 0;

/// A processor the MADT lists.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Processor {
    pub apic_id: u32,
    pub acpi_uid: u32,
    /// Usable now (the enabled flag). A processor only "online capable" is hot-pluggable, not present.
    pub enabled: bool,
    /// Listed as an x2APIC entry (an id xAPIC may not be able to address).
    pub x2apic: bool,
}

/// What the MADT says about interrupt controllers that SMP bring-up needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Madt {
    /// Physical address of the local APIC registers (every CPU sees its own there).
    pub local_apic: PhysAddr,
    /// In table order; the firmware lists the boot CPU first by convention, but nothing relies on it.
    pub processors: Vec<Processor>,
}

impl Madt {
    /// The processors usable now.
    pub fn enabled(&self) -> impl Iterator<Item = &Processor> {
        self.processors.iter().filter(|p| p.enabled)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AcpiError {
    BadRsdpSignature {
        rsdp: PhysAddr,
    },
    BadChecksum {
        table: [u8; 4],
        at: PhysAddr,
    },
    BadLength {
        table: [u8; 4],
        at: PhysAddr,
        len: u32,
    },
    BadSignature {
        expected: [u8; 4],
        found: [u8; 4],
        at: PhysAddr,
    },
    NoMadt,
    BadMadtEntry {
        entry_type: u8,
        offset: usize,
        len: u8,
    },
}

struct Sig<'a>(&'a [u8; 4]);

impl fmt::Display for Sig<'_> {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        for &b in self.0 {
            let c = if b.is_ascii_graphic() { b as char } else { '?' };
            write!(f, "{c}")?;
        }
        Ok(())
    }
}

impl fmt::Display for AcpiError {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        match self {
            Self::BadRsdpSignature { rsdp } => {
                write!(f, "acpi: no `RSD PTR ` signature at the RSDP address {:#x}", rsdp.as_u64())
            }
            Self::BadChecksum { table, at } => {
                write!(f, "acpi: table {} at {:#x} fails its checksum", Sig(table), at.as_u64())
            }
            Self::BadLength { table, at, len } => write!(
                f,
                "acpi: table {} at {:#x} has an implausible length of {len} bytes",
                Sig(table),
                at.as_u64()
            ),
            Self::BadSignature {
                expected,
                found,
                at,
            } => write!(
                f,
                "acpi: expected table {} at {:#x}, found {}",
                Sig(expected),
                at.as_u64(),
                Sig(found)
            ),
            Self::NoMadt => write!(f, "acpi: the XSDT/RSDT lists no MADT (`APIC`) table"),
            Self::BadMadtEntry {
                entry_type,
                offset,
                len,
            } => write!(
                f,
                "acpi: MADT entry of type {entry_type} at offset {offset} has a bad length of {len} bytes"
            ),
        }
    }
}

/// Physical memory, read-only, through the bootloader's mapping.
#[derive(Clone, Copy)]
struct PhysMem {
    offset: VirtAddr,
}

impl PhysMem {
    fn bytes(&self, at: PhysAddr, len: usize) -> &'static [u8] {
        let ptr = (self.offset + at.as_u64()).as_ptr::<u8>();
        // SAFETY: the mapping covers all RAM and the first 4 GiB (module invariants), where firmware tables
        // live; `len` is bounded by the table's checked header; the bytes are only read, and firmware tables
        // are not written while the kernel runs.
        unsafe { core::slice::from_raw_parts(ptr, len) }
    }

    fn u32_at(&self, at: PhysAddr) -> u32 {
        le32(self.bytes(at, 4), 0)
    }
}

fn le32(bytes: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]])
}

fn le64(bytes: &[u8], at: usize) -> u64 {
    u64::from(le32(bytes, at)) | (u64::from(le32(bytes, at + 4)) << 32)
}

fn checksum_ok(bytes: &[u8]) -> bool {
    bytes.iter().fold(0u8, |sum, &b| sum.wrapping_add(b)) == 0
}

fn signature(bytes: &[u8]) -> [u8; 4] {
    [bytes[0], bytes[1], bytes[2], bytes[3]]
}

/// A whole system description table (header included), length and checksum verified.
fn table(mem: PhysMem, at: PhysAddr) -> Result<&'static [u8], AcpiError> {
    let header = mem.bytes(at, SDT_HEADER_LEN);
    let sig = signature(header);
    let len = mem.u32_at(at + 4u64);
    if !(SDT_HEADER_LEN as u32..=MAX_TABLE_LEN).contains(&len) {
        return Err(AcpiError::BadLength {
            table: sig,
            at,
            len,
        });
    }
    let bytes = mem.bytes(at, len as usize);
    if !checksum_ok(bytes) {
        return Err(AcpiError::BadChecksum { table: sig, at });
    }
    Ok(bytes)
}

/// Finds and parses the MADT from the RSDP's physical address.
pub fn read_madt(rsdp: PhysAddr, phys_offset: VirtAddr) -> Result<Madt, AcpiError> {
    let mem = PhysMem {
        offset: phys_offset,
    };
    let head = mem.bytes(rsdp, 20);
    if &head[..8] != b"RSD PTR " {
        return Err(AcpiError::BadRsdpSignature { rsdp });
    }
    if !checksum_ok(head) {
        return Err(AcpiError::BadChecksum {
            table: *b"RSDP",
            at: rsdp,
        });
    }
    let revision = head[15];
    // ACPI 2.0+: prefer the XSDT (64-bit entries); its extended checksum covers the whole RSDP.
    let (root, entry_size, root_sig) = if revision >= 2 {
        let full = mem.bytes(rsdp, 36);
        if !checksum_ok(full) {
            return Err(AcpiError::BadChecksum {
                table: *b"RSDP",
                at: rsdp,
            });
        }
        (PhysAddr::new(le64(full, 24)), 8, *b"XSDT")
    } else {
        (PhysAddr::new(u64::from(le32(head, 16))), 4, *b"RSDT")
    };
    let root_table = table(mem, root)?;
    if signature(root_table) != root_sig {
        return Err(AcpiError::BadSignature {
            expected: root_sig,
            found: signature(root_table),
            at: root,
        });
    }
    let entries = &root_table[SDT_HEADER_LEN..];
    for entry in entries.chunks_exact(entry_size) {
        let at = PhysAddr::new(if entry_size == 8 {
            le64(entry, 0)
        } else {
            u64::from(le32(entry, 0))
        });
        if signature(mem.bytes(at, 4)) == *b"APIC" {
            return parse_madt(table(mem, at)?);
        }
    }
    Err(AcpiError::NoMadt)
}

fn parse_madt(madt: &[u8]) -> Result<Madt, AcpiError> {
    if madt.len() < MADT_ENTRIES_OFFSET {
        return Err(AcpiError::BadLength {
            table: *b"APIC",
            at: PhysAddr::zero(),
            len: madt.len() as u32,
        });
    }
    let mut local_apic = PhysAddr::new(u64::from(le32(madt, SDT_HEADER_LEN)));
    let mut processors = Vec::new();
    let mut offset = MADT_ENTRIES_OFFSET;
    while offset + 2 <= madt.len() {
        let entry_type = madt[offset];
        let len = madt[offset + 1];
        let bad = AcpiError::BadMadtEntry {
            entry_type,
            offset,
            len,
        };
        if len < 2 || offset + usize::from(len) > madt.len() {
            return Err(bad);
        }
        let entry = &madt[offset..offset + usize::from(len)];
        match entry_type {
            MADT_LOCAL_APIC if len >= 8 => {
                let flags = le32(entry, 4);
                processors.push(Processor {
                    apic_id: u32::from(entry[3]),
                    acpi_uid: u32::from(entry[2]),
                    enabled: flags & LAPIC_ENABLED != 0,
                    x2apic: false,
                });
            }
            MADT_LOCAL_X2APIC if len >= 16 => {
                let flags = le32(entry, 8);
                processors.push(Processor {
                    apic_id: le32(entry, 4),
                    acpi_uid: le32(entry, 12),
                    enabled: flags & LAPIC_ENABLED != 0,
                    x2apic: true,
                });
            }
            MADT_LAPIC_ADDRESS_OVERRIDE if len >= 12 => {
                local_apic = PhysAddr::new(le64(entry, 4));
            }
            MADT_LOCAL_APIC | MADT_LOCAL_X2APIC | MADT_LAPIC_ADDRESS_OVERRIDE => return Err(bad),
            _ => {}
        }
        offset += usize::from(len);
    }
    Ok(Madt {
        local_apic,
        processors,
    })
}
