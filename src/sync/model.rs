//! Model-checked primitives: loom's atomics and its spin hint, which yields
//! to the scheduler so that loom explores the other threads while one spins.

pub(crate) mod atomic {
    #[allow(unused_imports)]
    pub use loom::sync::atomic::{
        fence, AtomicBool, AtomicPtr, AtomicU32, AtomicU64, AtomicU8, Ordering,
    };
}

#[allow(dead_code)]
pub(crate) fn spin_loop() {
    loom::hint::spin_loop();
}
