//! Hostile guest memory: arbitrary writes to every guest-writable word
//! between raise-side operations (`tests/fuzz_bodies/guest_memory.rs`).
#![no_main]

#[path = "../../tests/fuzz_bodies/mod.rs"]
mod bodies;

libfuzzer_sys::fuzz_target!(|data: &[u8]| bodies::guest_memory::run(data));
