//! Differential target: operation sequences on the real core and on the
//! reference model, compared at every step (`tests/fuzz_bodies/ops.rs`).
#![no_main]

#[path = "../../tests/fuzz_bodies/mod.rs"]
mod bodies;

libfuzzer_sys::fuzz_target!(|data: &[u8]| bodies::ops::run(data));
