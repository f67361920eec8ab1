//! Differential target of the hypervisor side: several domains, every port
//! kind, the hypercall entry point (`Domains::dispatch`) and the guest's
//! own actions, against a reference model at every step
//! (`test-support/src/fuzz/domains.rs`).
#![no_main]

use evtchn_test_support::fuzz as bodies;

libfuzzer_sys::fuzz_target!(|data: &[u8]| bodies::domains::run(data));
