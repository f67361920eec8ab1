//! Randomized-schedule primitives: shuttle's atomics and its spin hint, which
//! yields to shuttle's scheduler so that a spinning thread lets the others
//! run. Shuttle's atomics are sequentially consistent: this build explores
//! schedules (interleavings far past loom's preemption bound, at sizes loom
//! cannot reach), not weak memory.

pub(crate) mod atomic {
    #[allow(unused_imports)]
    pub use shuttle::sync::atomic::{AtomicPtr, AtomicU32, AtomicU64, AtomicU8, Ordering};
}

#[allow(dead_code)]
/// A busy-wait hint: a yield to shuttle's scheduler.
pub(crate) fn spin_loop() {
    shuttle::hint::spin_loop();
}
