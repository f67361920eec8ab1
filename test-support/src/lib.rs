//! What evtchn's integration tests, fuzz targets, examples and xen-client
//! share, in one place:
//!
//! * [`Rng`]: the one seeded, deterministic PRNG.
//! * [`Kicker`] and [`Kicker::halt`]: vCPU threads that halt until kicked
//!   (the idle protocol of C2), with lost wake-ups counted.
//! * The control-plane helpers ([`Kicks`], [`upcall`],
//!   [`assert_err_unchanged_by`], [`within`], …).
//! * [`fuzz`]: the cargo-fuzz targets' bodies and their reference models,
//!   replayed on stable by `tests/fuzz_replay.rs`.
//!
//! The reference models of the port table, and what each checks:
//!
//! * [`fuzz::ops`]'s `Model` — the full one: both ABIs, every operation
//!   (budgeted upcalls and handlers that run operations included), each
//!   2-level selector and round-robin cursor, each FIFO queue head by head,
//!   every kick, status and ABI word, after every step of a byte-decoded
//!   operation sequence.
//! * [`fuzz::Table`] — the hostile-memory bodies' model of the control
//!   plane: what each operation returns and which ports a handler may run
//!   for, while the guest scribbles over the shared memory (so no claim
//!   about pending bits or queues).
//! * `tests/api.rs`'s `random_operations_agree_with_a_reference_model`
//!   keeps its own small model (per port: vCPU, masks, pending), inline:
//!   one 20 000-operation run on the 2-level ABI, with statuses every 16
//!   steps, the exact set each upcall runs, and a final drain. Its checks
//!   look covered by `fuzz::ops`'s; what it adds is the one long run.
//! * `tests/fifo.rs`'s `Churn` keeps its own FIFO model: after every step
//!   of a seeded churn of moves while linked, nested upcalls and
//!   close/re-bind, the queues in memory are well formed and agree with it.
//!
//! Neither is used outside its test.

//! Not shipped (`publish = false`).

mod control;
pub mod fuzz;
mod halt;
mod rng;

pub use control::{
    assert_err_unchanged_by, kicks, numbers, pending_vcpus, upcall, within, Kicks, StopOnDrop,
};
pub use halt::{Halt, Kicker};
pub use rng::Rng;
