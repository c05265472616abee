//! The bootstrap heap serves `alloc`'s collections and gets everything back when they are dropped.

use crate::heap;
use crate::ktest::TestCtx;
use alloc::collections::BTreeMap;
use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;

pub fn heap_collections(_ctx: &mut TestCtx) {
    let baseline = heap::stats();
    {
        let numbers: Vec<u64> = (0..10_000).collect();
        assert_eq!(numbers.iter().sum::<u64>(), 10_000 * 9_999 / 2);

        let mut text = String::new();
        for i in 0..100 {
            text.push_str(&format!("{i},"));
        }
        assert_eq!(text.len(), 10 * 2 + 90 * 3);
        assert!(text.starts_with("0,1,2,") && text.ends_with("98,99,"));

        let squares: BTreeMap<u32, u64> = (0..1000u32)
            .map(|i| (i, u64::from(i) * u64::from(i)))
            .collect();
        assert_eq!(squares.len(), 1000);
        assert_eq!(squares.get(&999), Some(&998_001));
        assert!(squares.keys().copied().eq(0..1000));

        // One block bigger than all the rest together, to exercise a large order.
        let big = alloc::vec![0x5au8; 1024 * 1024];
        assert!(big.iter().all(|&b| b == 0x5a));

        let during = heap::stats();
        assert!(
            during.requested >= baseline.requested + 1024 * 1024 + 10_000 * 8,
            "heap stats do not account for the live allocations: {during:?} vs baseline {baseline:?}"
        );
    }
    let after = heap::stats();
    assert_eq!(
        after.requested, baseline.requested,
        "memory not returned to the heap after dropping everything: {after:?} vs baseline {baseline:?}"
    );
}
