//! The 4-level page-table mapper: maps and unmaps 4 KiB pages, walking the tables itself through the
//! physical-memory offset.
//!
//! Invariants:
//! - An entry is in use iff it is non-zero. Hardware ignores every bit of a non-present entry, so the
//!   mapper keeps one kind of non-present, non-zero entry of its own: a *detached* leaf (`DETACHED` set,
//!   `PRESENT` clear, frame address kept), i.e. a page unmapped but whose frame still waits for the TLB
//!   shootdown. A detached leaf still counts as in use, so its tables stay alive until `reclaim`.
//! - Tables the mapper creates are zeroed, present and writable (plus USER when a user page needs them),
//!   and reachable only once complete: `map` takes every missing table first and links the new path with
//!   one store, so a failure frees tables no walk (and no CPU's paging-structure cache) ever saw.
//!   Existing upper entries only ever gain WRITABLE/USER, which widens nothing: the leaf decides.
//! - A table (P3/P2/P1, never the P4) is freed when its last entry goes, and only if the frame allocator
//!   manages its frame: the bootloader's tables live in reserved memory and stay. A P3 under the kernel
//!   half of the P4 (entries 256..512) is never freed: other hierarchies (user processes' P4s) copy
//!   those entries and would keep pointing at a freed table.
//!   Every managed table reachable from the P4 therefore has at least one entry in use.
//! - Huge pages (the bootloader's 2 MiB / 1 GiB mappings) are translated but never changed or split.
//!
//! Emptiness: the mapper keeps no per-table counters (they would have to live somewhere, and the
//! bootloader's tables have none). After removing entry `i` it looks at `i + 1` and `i - 1` first, which
//! answers "not empty" at once when a range is unmapped in either direction, and scans all 512 entries
//! only when both neighbours are unused.
//!
//! TLBs: `map` and the `unmap` family only edit tables. Callers tell the platform (one shootdown per batch);
//! see `arena::AddressSpace`, which detaches a batch, shoots down once, then reclaims.

use core::fmt;
use core::sync::atomic::{compiler_fence, Ordering};

use crate::addr::{FrameCount, Page, PageTableFlags, PhysAddr, PhysFrame, VirtAddr};
use crate::frames::FrameAllocator;

const ADDR_MASK: u64 = 0x000f_ffff_ffff_f000;
const PRESENT: u64 = PageTableFlags::PRESENT.bits();
const HUGE: u64 = PageTableFlags::HUGE_PAGE.bits();
/// Marks a detached leaf (an OS-available bit; meaningless to hardware in a non-present entry).
const DETACHED: u64 = PageTableFlags::BIT_9.bits();
const ENTRIES: usize = 512;
/// Bytes of virtual address space one P4 entry covers (512 GiB).
pub const P4_ENTRY_SPAN: u64 = 1 << 39;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MapError {
    /// The page is mapped already (or detached and waiting for `reclaim`).
    AlreadyMapped { page: Page, frame: PhysFrame },
    /// No frame left for a page table (or, in `AddressSpace::map_range`, for the page itself).
    OutOfFrames { page: Page },
    /// The page lies inside a huge page, which this mapper does not split.
    HugePage { page: Page },
}

impl fmt::Display for MapError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::AlreadyMapped { page, frame } => write!(
                f,
                "paging: page {:#x} is already mapped to frame {:#x}",
                page.start_address().as_u64(),
                frame.start_address().as_u64()
            ),
            Self::OutOfFrames { page } => {
                write!(
                    f,
                    "paging: out of frames while mapping page {:#x}",
                    page.start_address().as_u64()
                )
            }
            Self::HugePage { page } => write!(
                f,
                "paging: page {:#x} lies inside a huge page, which is not split",
                page.start_address().as_u64()
            ),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UnmapError {
    /// Not mapped (or already detached, for `detach`).
    NotMapped { page: Page },
    /// Inside a huge page, which this mapper does not split.
    HugePage { page: Page },
    /// `reclaim` of a page that was not detached first.
    NotDetached { page: Page },
}

impl fmt::Display for UnmapError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (what, page) = match self {
            Self::NotMapped { page } => ("is not mapped", page),
            Self::HugePage { page } => ("lies inside a huge page, which is not split", page),
            Self::NotDetached { page } => ("was not detached before reclaim", page),
        };
        write!(
            f,
            "paging: page {:#x} {what}",
            page.start_address().as_u64()
        )
    }
}

fn table_of(entry: u64) -> PhysFrame {
    PhysFrame::containing_address(PhysAddr::new(entry & ADDR_MASK))
}

fn indices(page: Page) -> [usize; 4] {
    [
        usize::from(page.p4_index()),
        usize::from(page.p3_index()),
        usize::from(page.p2_index()),
        usize::from(page.p1_index()),
    ]
}

/// Walks and edits one 4-level hierarchy. See the module documentation for its invariants.
pub struct Mapper {
    p4: PhysFrame,
    phys_offset: VirtAddr,
}

impl Mapper {
    /// A mapper for the hierarchy rooted at `p4`.
    ///
    /// # Safety
    /// `phys_offset + p` is mapped readable and writable for every table frame reachable from `p4` (and for
    /// the frames the frame allocator passed to `map`/`unmap` hands out); those tables are well formed and
    /// edited by nobody else while the mapper lives. The caller also answers for what the mappings mean:
    /// pages it maps or unmaps through this mapper hold no Rust object it still uses, and frames it maps are
    /// its own. (The `map`/`unmap` methods are safe because this promise is made here, once.)
    pub unsafe fn new(p4: PhysFrame, phys_offset: VirtAddr) -> Self {
        Mapper { p4, phys_offset }
    }

    pub fn p4(&self) -> PhysFrame {
        self.p4
    }

    fn slot(&self, table: PhysFrame, index: usize) -> *mut u64 {
        debug_assert!(index < ENTRIES);
        (self.phys_offset + table.start_address().as_u64() + index as u64 * 8).as_mut_ptr()
    }

    fn read(&self, table: PhysFrame, index: usize) -> u64 {
        // SAFETY: `table` is reachable from the P4 (or was just created), so `new`'s contract maps it at
        // phys_offset; the slot is 8-byte aligned inside it.
        unsafe { self.slot(table, index).read() }
    }

    fn write(&mut self, table: PhysFrame, index: usize, entry: u64) {
        // SAFETY: as in `read`; `&mut self` and `new`'s contract make the mapper the only editor.
        unsafe { self.slot(table, index).write(entry) }
    }

    /// Maps `page` to `frame`. Missing tables come (zeroed) from `frames`; on failure nothing is left
    /// allocated. PRESENT is implied; HUGE_PAGE is refused (panic: a 4 KiB mapper).
    ///
    /// Missing tables are all taken before any is linked, and the new path is built bottom-up in them
    /// and goes live with one store. A table linked and then unlinked on a later failure would be freed
    /// with no shootdown, while another CPU's paging-structure cache (which may hold any present upper
    /// entry, even one only walked speculatively) could still point at its frame once reused.
    pub fn map(
        &mut self,
        page: Page,
        frame: PhysFrame,
        flags: PageTableFlags,
        frames: &mut FrameAllocator,
    ) -> Result<(), MapError> {
        assert!(
            !flags.contains(PageTableFlags::HUGE_PAGE),
            "paging: map of page {:#x} with HUGE_PAGE: this mapper maps 4 KiB pages only",
            page.start_address().as_u64()
        );
        let table_flags = PageTableFlags::PRESENT
            | PageTableFlags::WRITABLE
            | (flags & PageTableFlags::USER_ACCESSIBLE);
        let idx = indices(page);
        // Down the existing tables to the first empty entry on the way (`missing`: its level), if any.
        let mut table = self.p4;
        let mut missing = 3;
        for (level, &i) in idx[..3].iter().enumerate() {
            let e = self.read(table, i);
            if e == 0 {
                missing = level;
                break;
            }
            if e & PRESENT == 0 {
                panic!(
                    "paging: non-present, non-zero entry {e:#x} in the P{} table at {:#x} above page {:#x}",
                    4 - level,
                    table.start_address().as_u64(),
                    page.start_address().as_u64()
                );
            }
            if e & HUGE != 0 {
                // Only an existing entry can be huge, and nothing was created.
                return Err(MapError::HugePage { page });
            }
            if e & table_flags.bits() != table_flags.bits() {
                self.write(table, i, e | table_flags.bits());
            }
            table = table_of(e);
        }
        let leaf = frame.start_address().as_u64() | (flags | PageTableFlags::PRESENT).bits();
        if missing == 3 {
            let e = self.read(table, idx[3]);
            if e != 0 {
                return Err(MapError::AlreadyMapped {
                    page,
                    frame: table_of(e),
                });
            }
            self.write(table, idx[3], leaf);
            return Ok(());
        }
        // `new[level]`: the table the entry at `level` will point to (none of them reachable yet).
        let mut new: [Option<PhysFrame>; 3] = [None; 3];
        for slot in &mut new[missing..] {
            let Some(t) = frames.allocate_zeroed() else {
                for t in new.iter().flatten() {
                    frames.free(*t);
                }
                return Err(MapError::OutOfFrames { page });
            };
            *slot = Some(t);
        }
        let mut child = leaf;
        for level in (missing..3).rev() {
            let t = new[level].expect("taken above");
            self.write(t, idx[level + 1], child);
            child = t.start_address().as_u64() | table_flags.bits();
        }
        // The new tables' entries before the one store that makes them reachable (x86 keeps stores in
        // order; this keeps the compiler from moving them past it).
        compiler_fence(Ordering::Release);
        self.write(table, idx[missing], child);
        Ok(())
    }

    /// The tables and indices on the way to `page`'s leaf entry: `path[0]` is the P4 slot, `path[3]` the leaf.
    fn path(&self, page: Page) -> Result<[(PhysFrame, usize); 4], UnmapError> {
        let idx = indices(page);
        let mut path = [(self.p4, idx[0]); 4];
        for level in 0..3 {
            let (table, index) = path[level];
            let e = self.read(table, index);
            if e & PRESENT == 0 {
                return Err(UnmapError::NotMapped { page });
            }
            if e & HUGE != 0 {
                return Err(UnmapError::HugePage { page });
            }
            path[level + 1] = (table_of(e), idx[level + 1]);
        }
        Ok(path)
    }

    /// Unmaps `page` and frees the tables that became empty; returns the page's frame, which the caller
    /// may reuse only after a TLB shootdown. The tables are freed at once, so this is for a hierarchy no
    /// other CPU walks; otherwise use `detach`, shoot down, `reclaim`.
    pub fn unmap(
        &mut self,
        page: Page,
        frames: &mut FrameAllocator,
    ) -> Result<PhysFrame, UnmapError> {
        self.detach(page)?;
        self.reclaim(page, frames).map(|(frame, _)| frame)
    }

    /// First half of an unmap: makes `page` non-present but keeps its entry (and tables) until `reclaim`.
    /// Returns the frame it mapped.
    pub fn detach(&mut self, page: Page) -> Result<PhysFrame, UnmapError> {
        let [.., (p1, i)] = self.path(page)?;
        let e = self.read(p1, i);
        if e & PRESENT == 0 {
            return Err(UnmapError::NotMapped { page });
        }
        self.write(p1, i, (e & ADDR_MASK) | DETACHED);
        Ok(table_of(e))
    }

    /// Second half, after the shootdown: clears `page`'s detached entry and frees every table that became
    /// empty. Returns the page's frame (for the caller to free) and the number of table frames freed.
    pub fn reclaim(
        &mut self,
        page: Page,
        frames: &mut FrameAllocator,
    ) -> Result<(PhysFrame, FrameCount), UnmapError> {
        let path = self.path(page)?;
        let (p1, i) = path[3];
        let e = self.read(p1, i);
        if e & (PRESENT | DETACHED) != DETACHED {
            return Err(UnmapError::NotDetached { page });
        }
        self.write(p1, i, 0);
        let mut freed = 0;
        for level in (1..4).rev() {
            let (table, removed) = path[level];
            // A P3 under the kernel half of the P4 stays: user P4s copy those entries (share.rs).
            if level == 1 && path[0].1 >= ENTRIES / 2 {
                break;
            }
            if !self.is_empty_after_removing(table, removed) || !frames.manages(table) {
                break;
            }
            let (parent, slot) = path[level - 1];
            self.write(parent, slot, 0);
            frames.free(table);
            freed += 1;
        }
        Ok((table_of(e), FrameCount(freed)))
    }

    fn is_empty_after_removing(&self, table: PhysFrame, removed: usize) -> bool {
        let neighbour_used =
            |i: Option<usize>| i.is_some_and(|i| i < ENTRIES && self.read(table, i) != 0);
        if neighbour_used(removed.checked_add(1)) || neighbour_used(removed.checked_sub(1)) {
            return false;
        }
        (0..ENTRIES).all(|i| self.read(table, i) == 0)
    }

    /// The physical address `addr` maps to, through 4 KiB or huge pages; `None` if not mapped (or detached).
    pub fn translate(&self, addr: VirtAddr) -> Option<PhysAddr> {
        let idx = indices(Page::containing_address(addr));
        let mut table = self.p4;
        for (level, &index) in idx.iter().enumerate() {
            let e = self.read(table, index);
            if e & PRESENT == 0 {
                return None;
            }
            // Level 1 is P3 (1 GiB pages), level 2 is P2 (2 MiB pages); a leaf at level 3 is 4 KiB.
            let span = 1u64 << (12 + 9 * (3 - level));
            if level == 3 || (level > 0 && e & HUGE != 0) {
                return Some(PhysAddr::new(
                    (e & ADDR_MASK & !(span - 1)) + addr.as_u64() % span,
                ));
            }
            table = table_of(e);
        }
        unreachable!()
    }

    /// The start of the first run of `entries` unused P4 entries (512 GiB each) in the higher half
    /// (indices 256..512) or the lower half (indices 1..256: index 0 would put the null pointer inside).
    pub fn free_p4_range(&self, higher_half: bool, entries: usize) -> Option<VirtAddr> {
        assert!(entries > 0, "paging: free_p4_range of 0 entries");
        let candidates = if higher_half { 256..ENTRIES } else { 1..256 };
        let mut run = 0;
        for i in candidates {
            run = if self.read(self.p4, i) == 0 {
                run + 1
            } else {
                0
            };
            if run == entries {
                let first = (i + 1 - entries) as u64;
                return Some(VirtAddr::new_truncate(first * P4_ENTRY_SPAN));
            }
        }
        None
    }
}

#[cfg(test)]
mod tests;
