//! Differential target: operation sequences on the real core and on the
//! reference model, compared at every step (`test-support/src/fuzz/ops.rs`);
//! and, on the input's second half, the hypervisor side's domains, port
//! kinds and hypercall entry point against theirs
//! (`test-support/src/fuzz/domains.rs`, also its own target, `domains`).
#![no_main]

use evtchn_test_support::fuzz as bodies;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    bodies::ops::run(data);
    bodies::domains::run(&data[data.len() / 2..]);
});
