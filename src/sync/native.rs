//! Native primitives: `core::sync::atomic` and the CPU's spin hint.

pub(crate) mod atomic {
    #[allow(unused_imports)]
    pub use core::sync::atomic::{AtomicBool, AtomicPtr, AtomicU32, AtomicU64, AtomicU8, Ordering};
}

#[allow(dead_code)]
/// A busy-wait hint (`pause` on x86_64, `yield` on aarch64).
#[inline(always)]
pub(crate) fn spin_loop() {
    core::hint::spin_loop();
}
