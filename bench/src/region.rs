//! Memory regions taken from the system once, outside any timed code: the arenas of the `no_std` peers.
//!
//! Invariants: a region is an anonymous private mapping of `len` bytes, page aligned, that nothing but its
//! one allocator instance uses; it is never unmapped while an allocator may still hand out blocks from it
//! (regions behind the long-lived contestants are leaked; fresh per-run instances end before theirs).

use core::ptr::NonNull;

pub struct Region {
    base: NonNull<u8>,
    len: usize,
}

// SAFETY: a region is plain memory; who may use it is the allocator's business (see the module invariants).
unsafe impl Send for Region {}
// SAFETY: as above; `Region` itself only hands out its base and length.
unsafe impl Sync for Region {}

impl Region {
    /// Maps `len` bytes (a positive multiple of 4 KiB). With `prefault`, touches every page now, as a kernel's
    /// heap memory is present from the start and page faults must not land in a timed loop.
    pub fn new(len: usize, prefault: bool) -> Self {
        assert!(
            len > 0 && len.is_multiple_of(4096),
            "bench: region of {len:#x} bytes is not a positive multiple of 4 KiB"
        );
        let flags = libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE;
        let prot = libc::PROT_READ | libc::PROT_WRITE;
        // SAFETY: a fresh anonymous mapping chosen by the kernel; it overlaps nothing Rust owns.
        let p = unsafe { libc::mmap(core::ptr::null_mut(), len, prot, flags, -1, 0) };
        if p == libc::MAP_FAILED {
            panic!(
                "bench: mmap of a {len:#x}-byte arena failed: {}",
                std::io::Error::last_os_error()
            );
        }
        let base = NonNull::new(p.cast::<u8>()).expect("mmap returned address 0");
        if prefault {
            for off in (0..len).step_by(4096) {
                // SAFETY: `off < len`: inside the mapping just made, which nothing else uses yet.
                unsafe { base.as_ptr().add(off).write_volatile(0) };
            }
        }
        Region { base, len }
    }

    pub fn base(&self) -> *mut u8 {
        self.base.as_ptr()
    }

    pub fn len(&self) -> usize {
        self.len
    }

    /// Leaks the region: it backs an allocator that lives as long as the process.
    pub fn leak(self) -> &'static Region {
        Box::leak(Box::new(self))
    }
}

/// Resident set size of this process in bytes, from /proc/self/statm.
pub fn rss_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").expect("bench: read /proc/self/statm");
    let pages: u64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("bench: unexpected /proc/self/statm: {statm:?}"));
    // SAFETY: sysconf has no preconditions.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) } as u64;
    pages * page
}
