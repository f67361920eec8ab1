//! Hostile guest memory under the FIFO ABI: arbitrary event words, links,
//! `ready` and `head[]` between operations
//! (`test-support/src/fuzz/fifo_memory.rs`).
#![no_main]

use evtchn_test_support::fuzz as bodies;

libfuzzer_sys::fuzz_target!(|data: &[u8]| bodies::fifo_memory::run(data));
