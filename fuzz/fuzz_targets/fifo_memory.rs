//! Hostile guest memory under the FIFO ABI: arbitrary event words, links,
//! `ready` and `head[]` between operations
//! (`tests/fuzz_bodies/fifo_memory.rs`).
#![no_main]

#[path = "../../tests/fuzz_bodies/mod.rs"]
mod bodies;

libfuzzer_sys::fuzz_target!(|data: &[u8]| bodies::fifo_memory::run(data));
