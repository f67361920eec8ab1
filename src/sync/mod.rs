//! The abstract atomics: the one place that chooses between the native
//! primitives and loom's model-checked ones.
//!
//! Nothing else in the crate names `core::sync::atomic`, `loom` or
//! `shuttle`. Natively this is `core::sync::atomic`; with the `loom`
//! feature under `RUSTFLAGS="--cfg loom"` every atomic, fence, spin hint
//! and the control-plane lock come from loom, so the model checker sees
//! every access the core makes. (`--cfg loom` alone leaves the crate
//! native: a user's own loom build does not switch it unasked.) Under
//! `cfg(evtchn_shuttle)`, which only the `shuttle-tests` workspace member
//! sets (its build script), they come from shuttle instead, whose
//! schedulers run the core's threads in random (and PCT) orders.

#[cfg(all(evtchn_shuttle, all(loom, feature = "loom")))]
compile_error!("cfg(evtchn_shuttle) and the loom build are exclusive");

#[cfg(not(any(all(loom, feature = "loom"), evtchn_shuttle)))]
mod native;
#[cfg(not(any(all(loom, feature = "loom"), evtchn_shuttle)))]
use native as imp;

#[cfg(evtchn_shuttle)]
mod shuttle;
#[cfg(evtchn_shuttle)]
use self::shuttle as imp;

#[cfg(all(loom, feature = "loom"))]
mod model;
#[cfg(all(loom, feature = "loom"))]
use model as imp;

mod lock;

#[cfg(any(all(loom, feature = "loom"), evtchn_shuttle))]
#[allow(unused_imports)]
pub(crate) use imp::atomic::fence;
#[cfg(feature = "alloc")]
pub(crate) use imp::atomic::AtomicBool;
pub(crate) use imp::atomic::AtomicPtr;
pub(crate) use imp::atomic::Ordering;
pub use imp::atomic::{AtomicU32, AtomicU64, AtomicU8};
#[allow(unused_imports)]
pub(crate) use imp::spin_loop;
#[allow(unused_imports)]
pub(crate) use lock::{Lock, SpinLock};

/// Orders a store before a later load of *another* location, on both sides of
/// a store-buffer (Dekker) pattern.
///
/// The raise side writes *pending* then reads *mask*; the unmask side writes
/// *mask* then reads *pending*. Acquire/Release alone allows both loads to
/// read the old values, which strands the event. Every caller pairs this
/// helper with a `SeqCst` read-modify-write before it and a `SeqCst` load
/// after it.
///
/// * Natively the helper is empty: under the C++20 model, `SeqCst` RMW
///   followed by a `SeqCst` load on both sides already forbids the outcome in
///   which both loads read the old value (both pairs are in the single total
///   order S; a load that misses the other side's write precedes it in S,
///   which contradicts program order on the other side). On x86_64 the RMW is
///   a `lock`-prefixed instruction, itself a full barrier, so an `mfence`
///   here would be paid twice.
/// * Under loom the helper is `fence(SeqCst)`. Loom 0.7 treats a `SeqCst`
///   *access* as `AcqRel` plus one rule (an RMW reads the newest store), which
///   is weaker than C++20 here: without the fence it reports the stranded
///   outcome that C++20 forbids. Its `SeqCst` *fences*, on the other hand,
///   all join one global clock, which is stronger than C++20 (two C++20
///   fences need not synchronise). For this pattern the fence restores the
///   C++20 guarantee (a fence on each side forbids the outcome in both
///   models), so the loom build checks what the native build relies on.
///   What loom cannot show is a failure that needs the `SeqCst` accesses to
///   be weaker than C++20 makes them, or two fences not to synchronise: a
///   weakened access (say the mask load to `Acquire`) passes loom and must
///   be argued instead. mutation/RESULTS.md lists those mutants with their
///   arguments, and each call site repeats the one that applies to it.
/// * Under shuttle it is empty, as natively: shuttle runs one thread
///   at a time and every access is sequentially consistent.
#[inline(always)]
pub(crate) fn store_load_fence() {
    #[cfg(all(loom, feature = "loom"))]
    fence(Ordering::SeqCst);
}
