//! Call stacks by frame-pointer walk (x86_64 System V with `-C force-frame-pointers=yes`): each frame
//! starts with the caller's saved frame pointer, followed by the return address.
//!
//! Invariant: the walk reads only 16-byte records `[fp, fp + 16)` with `lo <= fp` and `fp + 16 <= hi`,
//! each strictly above the previous one, so a platform that passes the bounds of the running stack
//! (whose every byte is mapped) never makes it fault, however corrupt the chain (code built without
//! frame pointers, a frame pointer used as a general register).

/// Walks the frame-pointer chain from `fp`, storing return addresses (innermost first) into `out`;
/// returns how many. `read(addr)` loads the 8-byte word at `addr`; it is only called for addresses in
/// `[lo, hi - 8]` (see the module invariant). Stops at a null, misaligned, out-of-bounds or
/// non-increasing frame pointer, a null return address, or when `out` is full.
pub fn walk(fp: u64, lo: u64, hi: u64, out: &mut [u64], read: impl Fn(u64) -> u64) -> usize {
    let mut fp = fp;
    let mut n = 0;
    while n < out.len() {
        if fp == 0 || !fp.is_multiple_of(8) || fp < lo || fp.saturating_add(16) > hi {
            break;
        }
        let next = read(fp);
        let ret = read(fp + 8);
        if ret == 0 {
            break;
        }
        out[n] = ret;
        n += 1;
        if next <= fp {
            break;
        }
        fp = next;
    }
    n
}

/// The frame pointer of the calling function (inline: the caller's own frame), 0 where there is none
/// (not x86_64). Only an address: reading through it is the walk's business.
#[inline(always)]
pub fn current_frame() -> u64 {
    #[cfg(target_arch = "x86_64")]
    {
        let fp: u64;
        // SAFETY: reads a register; no memory, no flags.
        unsafe {
            core::arch::asm!("mov {}, rbp", out(reg) fp, options(nomem, nostack, preserves_flags))
        };
        fp
    }
    #[cfg(not(target_arch = "x86_64"))]
    0
}

/// The stack on x86_64 by frame pointers, from the frame at `from` (see [`current_frame`]) up to `top`
/// (exclusive): the first address is the return address into the caller of the function whose frame
/// `from` is. Pass the top of the running stack as `top`, or the frame of a function that never returns
/// (the walk stops below it).
///
/// # Safety
/// Every byte from the current stack pointer up to `top` is mapped and readable while this runs (it is
/// the running CPU's own stack).
#[cfg(target_arch = "x86_64")]
#[inline(never)]
pub unsafe fn frame_pointer_walk(from: u64, top: u64, out: &mut [u64]) -> usize {
    let sp: u64;
    // SAFETY: reads a register; no memory, no flags.
    unsafe {
        core::arch::asm!("mov {}, rsp", out(reg) sp, options(nomem, nostack, preserves_flags))
    };
    walk(from, sp, top, out, |a| {
        // SAFETY: `walk` reads only 8-aligned words inside [sp, top), mapped by the caller's contract;
        // a volatile read, since the stack may belong to frames the compiler considers dead.
        unsafe { core::ptr::read_volatile(a as *const u64) }
    })
}
