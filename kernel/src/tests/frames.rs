//! The frame allocator spanalloc built from the boot memory map: its counts agree with the map, and every
//! free frame can be taken once, is real memory of its own, and goes back.

use crate::heap::HEAP;
use crate::ktest::TestCtx;
use alloc::vec;
use bootloader_api::info::MemoryRegionKind;
use spanalloc::frames::{LOW_REASON, METADATA_REASON};
use spanalloc::{PhysAddr, PhysFrame, VirtAddr, FRAME_SIZE};

/// What a taken frame holds at its start and end: its own number, scrambled so zeroed memory never passes.
fn tag(frame_number: u64) -> u64 {
    frame_number ^ 0x7a67_0000_0000_0000
}

pub fn frames_all_then_free(ctx: &mut TestCtx) {
    let report = &ctx.memory.frames;
    let phys_offset = ctx.memory.phys_offset;

    // Whole frames of the usable regions. The bootloader's map is frame-aligned and its regions are
    // disjoint (the `boot_info` test checks that), so no reserved region touches a usable frame: each is
    // managed, below 1 MiB (kept for `allocate_low`) or holds the frame allocator's metadata.
    let usable_frames: u64 = ctx
        .boot_info
        .memory_regions
        .iter()
        .filter(|r| r.kind == MemoryRegionKind::Usable)
        .map(|r| (r.end / FRAME_SIZE).saturating_sub(r.start.div_ceil(FRAME_SIZE)))
        .sum();
    let low = report.reserved_for(LOW_REASON);
    let metadata = report.reserved_for(METADATA_REASON);
    assert_eq!(
        usable_frames,
        report.managed.0 + low.0 + metadata.0,
        "usable frames of the boot map != managed + low + metadata:\n{report}"
    );

    // One bit per frame of the map, allocated before the heap lock is taken (allocating under it would
    // deadlock): a frame handed out twice finds its bit set.
    let frame_limit = ctx
        .boot_info
        .memory_regions
        .iter()
        .map(|r| r.end.div_ceil(FRAME_SIZE))
        .max()
        .expect("empty memory map");
    let mut taken = vec![0u64; frame_limit.div_ceil(64) as usize];
    let taken_addr = VirtAddr::from_ptr(taken.as_ptr());
    let taken_bytes = (taken.len() * 8) as u64;

    let take_all = |s: &mut spanalloc::arena::AddressSpace<crate::platform::KernelPlatform>| {
        let free_before = s.frames.free_frames();
        let held = s.frames_held();
        assert_eq!(
            s.frames.managed().0,
            free_before.0 + held.0,
            "managed frames != free + held by the heap (nothing else takes frames yet)"
        );
        // The bitmap's own frames are the heap's: remember them (the first 256 KiB of it, all of it for
        // up to 8 GiB of memory), none may be handed out.
        let mut bitmap_frames = [None; 64];
        let first_page = taken_addr.align_down(FRAME_SIZE);
        for (i, slot) in bitmap_frames.iter_mut().enumerate() {
            let page = first_page + i as u64 * FRAME_SIZE;
            if page < taken_addr + taken_bytes {
                *slot = s.mapper.translate(page).map(|p| p.as_u64() / FRAME_SIZE);
            }
        }

        let mut count = 0u64;
        while let Some(frame) = s.frames.allocate() {
            let n = frame.start_address().as_u64() / FRAME_SIZE;
            assert!(
                n < frame_limit,
                "frame {:#x} lies beyond the memory map",
                n * FRAME_SIZE
            );
            assert!(
                !bitmap_frames.contains(&Some(n)),
                "frame {:#x} handed out while the heap maps it",
                n * FRAME_SIZE
            );
            let (word, bit) = ((n / 64) as usize, 1u64 << (n % 64));
            assert!(
                taken[word] & bit == 0,
                "frame {:#x} handed out twice",
                n * FRAME_SIZE
            );
            taken[word] |= bit;
            let base = (phys_offset + n * FRAME_SIZE).as_mut_ptr::<u64>();
            // SAFETY: the frame was just handed to us, so nothing else uses it, and physical memory is
            // mapped read-write at phys_offset; both words lie inside the frame.
            unsafe {
                base.write_volatile(tag(n));
                base.add(FRAME_SIZE as usize / 8 - 1).write_volatile(tag(n));
            }
            count += 1;
        }
        assert_eq!(
            count, free_before.0,
            "took {count} frames, the allocator had {free_before} free"
        );
        assert_eq!(s.frames.free_frames().0, 0);

        // Every tag is intact: no two frames share memory, and writing one frame touched no other.
        for n in 0..frame_limit {
            if taken[(n / 64) as usize] & (1 << (n % 64)) == 0 {
                continue;
            }
            let base = (phys_offset + n * FRAME_SIZE).as_ptr::<u64>();
            // SAFETY: the frame is still ours, mapped at phys_offset; both words lie inside it.
            let (first, last) = unsafe {
                (
                    base.read_volatile(),
                    base.add(FRAME_SIZE as usize / 8 - 1).read_volatile(),
                )
            };
            assert_eq!(
                (first, last),
                (tag(n), tag(n)),
                "frame {:#x} lost its tag",
                n * FRAME_SIZE
            );
            s.frames
                .free(PhysFrame::containing_address(PhysAddr::new(n * FRAME_SIZE)));
        }
        assert_eq!(
            s.frames.free_frames(),
            free_before,
            "free count not restored"
        );
        assert_eq!(
            s.frames.managed().0,
            s.frames.free_frames().0 + s.frames_held().0
        );
        count
    };
    // SAFETY: `take_all` reads and takes frames, and gives back only those it took.
    let count = unsafe { HEAP.with_address_space(take_all) }
        .expect("the heap has no address space: memory was not taken over");
    log::info!(
        "took and gave back all {count} free frames ({} MiB); usable {usable_frames} = managed {} + low {} + \
         metadata {}",
        (count * FRAME_SIZE) >> 20,
        report.managed.0,
        low.0,
        metadata.0
    );
}
