//! Differential target: operation sequences on the real core and on the
//! reference model, compared at every step (`test-support/src/fuzz/ops.rs`).
#![no_main]

use evtchn_test_support::fuzz as bodies;

libfuzzer_sys::fuzz_target!(|data: &[u8]| bodies::ops::run(data));
