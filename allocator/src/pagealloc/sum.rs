//! The packed summary of a region of units (Go's pallocSum).
//!
//! Invariants:
//! - A summary describes a region of `size` units, `size` a power of two no larger than [`MAX_PACKED`]:
//!   `start` = free units at the region's start, `end` = free units at its end, `max` = the longest free
//!   run anywhere in it. Hence `start <= max`, `end <= max`, `max <= size`, and `start == size` exactly
//!   when the region is entirely free (then all three equal `size`).
//! - Packing: `start` in bits 0..21, `max` in bits 21..42, `end` in bits 42..63. The single value that
//!   does not fit in 21 bits, 2^21 (a fully free root entry), is bit 63 alone, meaning all three fields
//!   equal 2^21; no other packed value has bit 63 set.
//! - The all-zero summary is "entirely in use"; regions that are not tracked (past `limit`) read as it.

use core::fmt;

/// Bits per packed field.
pub const FIELD_BITS: u32 = 21;
/// The largest value a summary holds: the units under one root-level entry.
pub const MAX_PACKED: usize = 1 << FIELD_BITS;

const FIELD_MASK: u64 = (1 << FIELD_BITS) - 1;
const ALL_FREE_MAX: u64 = 1 << 63;

/// Packed (start, max, end) of a region.
#[derive(Clone, Copy, PartialEq, Eq, Default)]
pub struct Sum(u64);

impl Sum {
    /// A region entirely in use.
    pub const ZERO: Sum = Sum(0);

    /// Packs a summary. Panics if the fields are inconsistent, since a bad summary would silently
    /// misdirect every later search.
    pub fn new(start: usize, max: usize, end: usize) -> Sum {
        assert!(
            start <= max && end <= max && max <= MAX_PACKED,
            "pagealloc: inconsistent summary start {start} max {max} end {end}"
        );
        if max == MAX_PACKED {
            // Only a fully free 2^21-unit region reaches the maximum, and then start and end do too.
            assert!(
                start == MAX_PACKED && end == MAX_PACKED,
                "pagealloc: summary max {max} with start {start} end {end}"
            );
            return Sum(ALL_FREE_MAX);
        }
        Sum(start as u64 | (max as u64) << FIELD_BITS | (end as u64) << (2 * FIELD_BITS))
    }

    /// A region of `size` units entirely free.
    pub fn all_free(size: usize) -> Sum {
        Sum::new(size, size, size)
    }

    pub fn from_raw(raw: u64) -> Sum {
        Sum(raw)
    }

    pub fn raw(self) -> u64 {
        self.0
    }

    pub fn start(self) -> usize {
        if self.0 & ALL_FREE_MAX != 0 {
            return MAX_PACKED;
        }
        (self.0 & FIELD_MASK) as usize
    }

    pub fn max(self) -> usize {
        if self.0 & ALL_FREE_MAX != 0 {
            return MAX_PACKED;
        }
        ((self.0 >> FIELD_BITS) & FIELD_MASK) as usize
    }

    pub fn end(self) -> usize {
        if self.0 & ALL_FREE_MAX != 0 {
            return MAX_PACKED;
        }
        ((self.0 >> (2 * FIELD_BITS)) & FIELD_MASK) as usize
    }

    /// Summary of the concatenation of `children`, each describing `child_size` units, in address order.
    #[inline]
    pub fn merge(children: &[Sum], child_size: usize) -> Sum {
        // Children smaller than the largest region never hold the all-free bit (only a free region of
        // `MAX_PACKED` units does), so their fields unpack with masks alone: this loop is most of a
        // summary update's cost.
        assert!(
            child_size < MAX_PACKED,
            "pagealloc: merging children of {child_size} units"
        );
        let (mut start, mut max, mut end) = (0, 0, 0);
        for (i, c) in children.iter().enumerate() {
            debug_assert_eq!(c.0 & ALL_FREE_MAX, 0);
            let cs = (c.0 & FIELD_MASK) as usize;
            let cm = ((c.0 >> FIELD_BITS) & FIELD_MASK) as usize;
            let ce = ((c.0 >> (2 * FIELD_BITS)) & FIELD_MASK) as usize;
            // The region's start run keeps growing only while everything before this child was free.
            if start == i * child_size {
                start += cs;
            }
            // The best run is inside this child or joins the previous free end with this child's start.
            max = max.max(cm).max(end + cs);
            end = if ce == child_size {
                end + child_size
            } else {
                ce
            };
        }
        Sum::new(start, max, end)
    }
}

impl fmt::Debug for Sum {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "Sum(start {} max {} end {})",
            self.start(),
            self.max(),
            self.end()
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pack_unpack_round_trips_each_field() {
        for &(s, m, e) in &[
            (0, 0, 0),
            (1, 1, 0),
            (0, 7, 7),
            (3, 9, 5),
            (MAX_PACKED - 1, MAX_PACKED - 1, MAX_PACKED - 1),
            (0, MAX_PACKED - 1, 0),
            (12345, 1 << 20, 54321),
        ] {
            let p = Sum::new(s, m, e);
            assert_eq!((p.start(), p.max(), p.end()), (s, m, e), "{p:?}");
            assert_eq!(p.raw() >> 63, 0, "only the 2^21 value may use bit 63");
        }
    }

    #[test]
    fn fields_do_not_bleed_into_each_other() {
        let p = Sum::new(FIELD_MASK as usize, FIELD_MASK as usize, 0);
        assert_eq!(p.end(), 0);
        let p = Sum::new(0, FIELD_MASK as usize, FIELD_MASK as usize);
        assert_eq!(p.start(), 0);
        assert_eq!(p.raw(), FIELD_MASK << 21 | FIELD_MASK << 42);
    }

    #[test]
    fn max_value_is_bit_63_alone() {
        let p = Sum::all_free(MAX_PACKED);
        assert_eq!(p.raw(), 1 << 63);
        assert_eq!(
            (p.start(), p.max(), p.end()),
            (MAX_PACKED, MAX_PACKED, MAX_PACKED)
        );
        // One below the edge still packs into the fields.
        let q = Sum::all_free(MAX_PACKED - 1);
        assert_eq!(q.raw() >> 63, 0);
        assert_eq!(q.max(), MAX_PACKED - 1);
    }

    #[test]
    #[should_panic(expected = "summary max 2097152 with start 0")]
    fn max_value_requires_full_region() {
        Sum::new(0, MAX_PACKED, MAX_PACKED);
    }

    #[test]
    #[should_panic(expected = "inconsistent summary start 5 max 4")]
    fn start_above_max_is_rejected() {
        Sum::new(5, 4, 0);
    }

    #[test]
    fn merge_of_free_children_is_free_and_reaches_2_pow_21() {
        let child = Sum::all_free(1 << 18);
        let m = Sum::merge(&[child; 8], 1 << 18);
        assert_eq!(m, Sum::all_free(MAX_PACKED));
        assert_eq!(m.raw(), 1 << 63);
    }

    #[test]
    fn merge_joins_runs_across_children() {
        // child size 8: [2 free at end] [all free] [3 free at start, 1 in use, 2 free at end]
        let kids = [
            Sum::new(0, 2, 2),
            Sum::all_free(8),
            Sum::new(3, 3, 2),
            Sum::ZERO,
        ];
        let m = Sum::merge(&kids, 8);
        assert_eq!((m.start(), m.max(), m.end()), (0, 2 + 8 + 3, 0));
    }

    #[test]
    fn merge_start_stops_at_first_used_unit_and_end_restarts() {
        let kids = [
            Sum::all_free(8),
            Sum::new(5, 5, 0),
            Sum::new(0, 6, 1),
            Sum::all_free(8),
        ];
        let m = Sum::merge(&kids, 8);
        assert_eq!(m.start(), 13);
        assert_eq!(m.max(), 13);
        assert_eq!(m.end(), 9);
    }

    #[test]
    fn merge_keeps_inner_max() {
        let kids = [Sum::new(1, 1, 0), Sum::new(0, 7, 0), Sum::new(0, 0, 0)];
        let m = Sum::merge(&kids, 16);
        assert_eq!((m.start(), m.max(), m.end()), (1, 7, 0));
    }
}
