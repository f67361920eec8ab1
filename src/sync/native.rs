//! Native primitives: `core::sync::atomic` and the CPU's spin hint.

pub(crate) mod atomic {
    pub use core::sync::atomic::{AtomicU32, AtomicU64, AtomicU8, Ordering};
}

#[cfg(not(feature = "std"))]
/// A busy-wait hint (`pause` on x86_64, `yield` on aarch64).
#[inline(always)]
pub(crate) fn spin_loop() {
    core::hint::spin_loop();
}
