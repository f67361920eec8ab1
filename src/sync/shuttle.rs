//! Randomized-schedule primitives: shuttle's atomics and its spin hint, which
//! yields to shuttle's scheduler so that the other threads run while one
//! spins. Shuttle runs one thread at a time and switches only at these
//! operations; its atomics are sequentially consistent whatever the
//! ordering argument (the weak orders are loom's job).

pub(crate) mod atomic {
    #[allow(unused_imports)]
    pub use ::shuttle::sync::atomic::{
        fence, AtomicBool, AtomicPtr, AtomicU32, AtomicU64, AtomicU8, Ordering,
    };
}

#[allow(dead_code)]
pub(crate) fn spin_loop() {
    ::shuttle::hint::spin_loop();
}
