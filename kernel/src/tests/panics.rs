//! A panic in a test is reported and ends the boot; with `should_panic` the expected message passes.

use crate::ktest::TestCtx;

/// Matched against the formatted message, so it includes the formatted argument.
pub const EXPECTED_MESSAGE: &str = "deliberate test panic #42";

pub fn panic_is_reported(_ctx: &mut TestCtx) {
    // Opaque to the optimizer, so the message is really formatted at run time.
    let number = core::hint::black_box(42);
    panic!("deliberate test panic #{number}");
}
