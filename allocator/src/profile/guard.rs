//! The guard-page pool's bookkeeping (after Linux's KFENCE): [`SLOTS`] object pages in a 2 MiB stretch of
//! the heap window, each between two guard pages that are never mapped. A guarded object sits alone in
//! its slot's page, against the guard page on the side chosen ([`GuardSide`]); the rest of the page holds
//! a canary. When it is freed its page is unmapped and the slot waits in a FIFO quarantine, so a later
//! access faults and [`Pool::classify`] names it a use after free; an access past the object faults in
//! the guard page next to it (or, on the other side, damages the canary, which the free checks).
//!
//! Layout, in 4 KiB pages from the pool's base: page `2i` is a guard page, page `2i + 1` slot `i`'s object
//! page, for `i < SLOTS`; the last pages up to [`POOL_BYTES`] are guard pages too.
//!
//! Invariants:
//! - A slot is in exactly one state: free (never mapped since its last quarantine ended), live (its page
//!   mapped, the object handed out), or quarantined (its page unmapped, address remembered).
//! - Guard pages are never mapped; object pages are mapped exactly while their slot is live.
//! - The bookkeeping is pure: the heap maps and unmaps the pages and fills and checks the canary.

use core::fmt;

use super::GuardSide;

/// Objects the pool can hold (live or quarantined) at once.
pub const SLOTS: usize = 255;
/// 4 KiB pages.
pub const PAGE: u64 = 4096;
/// Bytes of address space the pool takes (a whole number of 8 KiB heap pages).
pub const POOL_BYTES: u64 = 512 * PAGE;
/// Return addresses kept per guarded object.
pub const STACK: usize = 16;
/// Largest object the pool takes (it must fit one page).
pub const MAX_SIZE: usize = PAGE as usize;

/// The canary byte at `addr`: varies with the address so that a shifted copy of it is still caught.
pub const fn canary(addr: u64) -> u8 {
    0xaa ^ (addr & 7) as u8
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
enum State {
    /// 0: zeroed memory is a pool of free slots.
    Free = 0,
    Live,
    Quarantined,
}

#[derive(Clone, Copy, Debug)]
struct Slot {
    state: State,
    addr: u64,
    size: usize,
    /// The allocation's alignment: a free must give its layout back whole.
    align: usize,
    depth: usize,
    frames: [u64; STACK],
}

/// The pool's bookkeeping. All-zero memory with its base set ([`Pool::init`]) is an empty pool.
#[repr(C)]
pub struct Pool {
    base: u64,
    slots: [Slot; SLOTS],
    /// Slots given back unused (a stack).
    free: [u16; SLOTS],
    nfree: usize,
    /// Slots `fresh..SLOTS` were never used.
    fresh: usize,
    /// Quarantined slots, oldest first (a ring).
    quarantine: [u16; SLOTS],
    qhead: usize,
    qlen: usize,
    /// Guarded allocations made, and those refused (no slot, an object a slot's page cannot hold, a
    /// page the heap could not map).
    pub allocated: u64,
    pub refused: u64,
}

/// What went wrong with a guarded object.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorKind {
    /// An access `distance` bytes past the object's end (`after`) or before its start.
    OutOfBounds { after: bool, distance: u64 },
    /// An access to the object after it was freed.
    UseAfterFree,
    /// The canary around the object was changed (found at free): a write out of bounds.
    CanaryDamaged { after: bool, distance: u64 },
    /// A guard page with no object next to it.
    Wild,
}

/// A report about a guarded object: what, where, which object, and the stack that allocated it.
#[derive(Clone, Copy, Debug)]
pub struct Report {
    pub kind: ErrorKind,
    /// The faulting (or damaged) address.
    pub access: u64,
    /// The object (0 for [`ErrorKind::Wild`]).
    pub object: u64,
    pub size: usize,
    pub depth: usize,
    pub frames: [u64; STACK],
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let side = |after: bool| if after { "after" } else { "before" };
        match self.kind {
            ErrorKind::OutOfBounds { after, distance } => write!(
                f,
                "spanalloc guard: out-of-bounds access at {:#x}, {distance} B {} the object at {:#x} ({} B)",
                self.access,
                side(after),
                self.object,
                self.size
            )?,
            ErrorKind::UseAfterFree => write!(
                f,
                "spanalloc guard: use-after-free access at {:#x}, in the freed object at {:#x} ({} B)",
                self.access, self.object, self.size
            )?,
            ErrorKind::CanaryDamaged { after, distance } => write!(
                f,
                "spanalloc guard: out-of-bounds write found at free: canary damaged at {:#x}, {distance} B {} the object at {:#x} ({} B)",
                self.access,
                side(after),
                self.object,
                self.size
            )?,
            ErrorKind::Wild => {
                return write!(
                    f,
                    "spanalloc guard: access at {:#x} to a guard page with no object next to it",
                    self.access
                )
            }
        }
        if self.depth > 0 {
            write!(f, "; allocated at")?;
            for pc in &self.frames[..self.depth] {
                write!(f, " {pc:#x}")?;
            }
        }
        Ok(())
    }
}

/// Why a guarded free was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FreeError {
    /// The slot's object was freed already (it waits in quarantine).
    DoubleFree { object: u64, size: usize },
    /// Not the start of the slot's object (or the slot holds none).
    NotAnObject,
    /// The layout's size differs from the allocation's.
    WrongSize { size: usize },
    /// The layout's alignment differs from the allocation's (the size is the same).
    WrongAlign { align: usize },
}

impl Pool {
    /// An empty pool over `[base, base + POOL_BYTES)` (4 KiB aligned).
    pub fn new(base: u64) -> Pool {
        assert!(
            base.is_multiple_of(PAGE),
            "guard: pool base {base:#x} not page aligned"
        );
        Pool {
            base,
            slots: [Slot {
                state: State::Free,
                addr: 0,
                size: 0,
                align: 0,
                depth: 0,
                frames: [0; STACK],
            }; SLOTS],
            free: [0; SLOTS],
            nfree: 0,
            fresh: 0,
            quarantine: [0; SLOTS],
            qhead: 0,
            qlen: 0,
            allocated: 0,
            refused: 0,
        }
    }

    /// Makes the zeroed memory at `p` an empty pool over `[base, base + POOL_BYTES)`.
    ///
    /// # Safety
    /// `p` points to zeroed memory, valid and aligned for a `Pool`, that nothing else uses.
    pub unsafe fn init(p: *mut Pool, base: u64) {
        assert!(
            base.is_multiple_of(PAGE),
            "guard: pool base {base:#x} not page aligned"
        );
        // SAFETY: the caller's contract; all-zero is a valid Pool (integers, arrays, `State::Free`).
        unsafe { core::ptr::addr_of_mut!((*p).base).write(base) };
    }

    pub fn base(&self) -> u64 {
        self.base
    }

    pub fn contains(&self, addr: u64) -> bool {
        addr.wrapping_sub(self.base) < POOL_BYTES
    }

    /// The start of slot `i`'s object page.
    pub fn page_of(&self, slot: usize) -> u64 {
        self.base + (2 * slot as u64 + 1) * PAGE
    }

    /// Where an object of `size` bytes aligned to `align` goes in slot `slot`'s page.
    pub fn place(&self, slot: usize, size: usize, align: usize, side: GuardSide) -> u64 {
        let page = self.page_of(slot);
        match side {
            GuardSide::Left => page,
            GuardSide::Right => (page + PAGE - size as u64) & !(align as u64 - 1),
        }
    }

    /// Takes a slot for an object of `size` bytes aligned to `align` (`size <= MAX_SIZE`, `align` a power
    /// of two at most `PAGE`), recycling the oldest quarantined slot when none is free. Returns the slot
    /// and the object's address; the caller maps the slot's page, fills the canary, and then calls
    /// [`Pool::commit`]. `None` when every slot is live.
    pub fn take(&mut self, size: usize, align: usize, side: GuardSide) -> Option<(usize, u64)> {
        if size == 0 || size > MAX_SIZE || align == 0 || align as u64 > PAGE {
            self.refused += 1;
            return None;
        }
        let slot = if self.nfree > 0 {
            self.nfree -= 1;
            self.free[self.nfree] as usize
        } else if self.fresh < SLOTS {
            self.fresh += 1;
            self.fresh - 1
        } else if self.qlen > 0 {
            let s = self.quarantine[self.qhead] as usize;
            self.qhead = (self.qhead + 1) % SLOTS;
            self.qlen -= 1;
            s
        } else {
            self.refused += 1;
            return None;
        };
        self.slots[slot].state = State::Free;
        Some((slot, self.place(slot, size, align, side)))
    }

    /// Gives back a slot from [`Pool::take`] whose page could not be mapped.
    pub fn untake(&mut self, slot: usize) {
        debug_assert_eq!(self.slots[slot].state, State::Free);
        self.free[self.nfree] = slot as u16;
        self.nfree += 1;
        self.refused += 1;
    }

    /// Makes slot `slot` live with the object at `addr` of `size` bytes aligned to `align`, allocated
    /// from `frames`.
    pub fn commit(&mut self, slot: usize, addr: u64, size: usize, align: usize, frames: &[u64]) {
        let depth = frames.len().min(STACK);
        let s = &mut self.slots[slot];
        *s = Slot {
            state: State::Live,
            addr,
            size,
            align,
            depth,
            frames: [0; STACK],
        };
        s.frames[..depth].copy_from_slice(&frames[..depth]);
        self.allocated += 1;
    }

    /// The slot whose page holds `addr` (a guard page: `None`).
    fn slot_of(&self, addr: u64) -> Option<usize> {
        let page = (addr - self.base) / PAGE;
        (page % 2 == 1 && ((page - 1) / 2) < SLOTS as u64).then(|| ((page - 1) / 2) as usize)
    }

    /// The live object starting at `addr` of `size` bytes aligned to `align`: its slot (the free can go
    /// on), or why not. `addr` must be in the pool.
    pub fn check_free(&self, addr: u64, size: usize, align: usize) -> Result<usize, FreeError> {
        let slot = self.slot_of(addr).ok_or(FreeError::NotAnObject)?;
        let s = &self.slots[slot];
        match s.state {
            State::Quarantined if s.addr == addr => Err(FreeError::DoubleFree {
                object: s.addr,
                size: s.size,
            }),
            State::Live if s.addr == addr && s.size == size && s.align == align => Ok(slot),
            State::Live if s.addr == addr && s.size == size => {
                Err(FreeError::WrongAlign { align: s.align })
            }
            State::Live if s.addr == addr => Err(FreeError::WrongSize { size: s.size }),
            _ => Err(FreeError::NotAnObject),
        }
    }

    /// The live object starting at `addr`: its size, if it is one.
    pub fn live_size(&self, addr: u64) -> Option<usize> {
        let slot = self.slot_of(addr)?;
        let s = &self.slots[slot];
        (s.state == State::Live && s.addr == addr).then_some(s.size)
    }

    /// The object of a slot, for the canary check: (address, size).
    pub fn object(&self, slot: usize) -> (u64, usize) {
        (self.slots[slot].addr, self.slots[slot].size)
    }

    /// A report of `kind` at `access` about slot `slot`'s object.
    pub fn report(&self, slot: usize, kind: ErrorKind, access: u64) -> Report {
        let s = &self.slots[slot];
        Report {
            kind,
            access,
            object: s.addr,
            size: s.size,
            depth: s.depth,
            frames: s.frames,
        }
    }

    /// Quarantines a live slot whose page the caller has unmapped (after [`Pool::check_free`]).
    pub fn release(&mut self, slot: usize) {
        debug_assert_eq!(self.slots[slot].state, State::Live);
        self.slots[slot].state = State::Quarantined;
        let at = (self.qhead + self.qlen) % SLOTS;
        self.quarantine[at] = slot as u16;
        self.qlen += 1;
    }

    /// What a fault at `addr` (inside the pool) means: an access to a quarantined object (use after
    /// free), or to a guard page next to an object (out of bounds: the nearer of its two neighbours that
    /// holds or held one). `None` for a fault on a live object's own page (not the pool's doing).
    pub fn classify(&self, addr: u64) -> Option<Report> {
        if !self.contains(addr) {
            return None;
        }
        if let Some(slot) = self.slot_of(addr) {
            let s = &self.slots[slot];
            return match s.state {
                State::Quarantined => Some(self.report(slot, ErrorKind::UseAfterFree, addr)),
                State::Live => None,
                State::Free => Some(Report {
                    kind: ErrorKind::Wild,
                    access: addr,
                    object: 0,
                    size: 0,
                    depth: 0,
                    frames: [0; STACK],
                }),
            };
        }
        // A guard page: its neighbours are the slots whose pages are just below and just above it. The
        // pool's last page (above the last slot's guard page) has no slot below it either.
        let page = (addr - self.base) / PAGE;
        let below = (page >= 1 && (page - 1) / 2 < SLOTS as u64).then(|| ((page - 1) / 2) as usize);
        let above = ((page / 2) < SLOTS as u64).then_some((page / 2) as usize);
        let candidate = |slot: usize| {
            let s = &self.slots[slot];
            (s.state != State::Free).then_some(s)
        };
        let dist_below = below
            .and_then(candidate)
            .map(|s| (addr + 1 - (s.addr + s.size as u64), below.unwrap_or(0)));
        let dist_above = above
            .and_then(candidate)
            .map(|s| (s.addr - addr, above.unwrap_or(0)));
        let (after, distance, slot) = match (dist_below, dist_above) {
            (Some((d1, s1)), Some((d2, _))) if d1 <= d2 => (true, d1, s1),
            (_, Some((d2, s2))) => (false, d2, s2),
            (Some((d1, s1)), None) => (true, d1, s1),
            (None, None) => {
                return Some(Report {
                    kind: ErrorKind::Wild,
                    access: addr,
                    object: 0,
                    size: 0,
                    depth: 0,
                    frames: [0; STACK],
                })
            }
        };
        let kind = if self.slots[slot].state == State::Quarantined {
            ErrorKind::UseAfterFree
        } else {
            ErrorKind::OutOfBounds { after, distance }
        };
        Some(self.report(slot, kind, addr))
    }
}
