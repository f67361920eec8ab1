//! Hostile guest memory: arbitrary writes to every guest-writable word
//! between raise-side operations (`test-support/src/fuzz/guest_memory.rs`).
#![no_main]

use evtchn_test_support::fuzz as bodies;

libfuzzer_sys::fuzz_target!(|data: &[u8]| bodies::guest_memory::run(data));
