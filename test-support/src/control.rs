//! The control-plane helpers of the integration tests: a recording
//! [`Notify`] ([`Kicks`]) and helpers built on it, generic over the ABI:
//! [`kicks`], [`upcall`], [`pending_vcpus`], [`numbers`], and
//! [`assert_err_unchanged_by`] (C8: an error changes nothing); [`within`]: a
//! hang is a failure.

use std::fmt::Debug;
use std::sync::atomic::{AtomicBool, Ordering::Release};
use std::sync::{mpsc, Mutex};
use std::thread;
use std::time::Duration;

use evtchn::{Channels, Error, Notify, Port, PortOps};

/// A recording `Notify`: every kick, in order.
#[derive(Default)]
pub struct Kicks(Mutex<Vec<u32>>);

impl Notify for Kicks {
    fn kick(&self, vcpu: u32) {
        self.0.lock().unwrap().push(vcpu);
    }
}

impl Kicks {
    /// The kicks since the last `take`, and forget them.
    pub fn take(&self) -> Vec<u32> {
        std::mem::take(&mut *self.0.lock().unwrap())
    }

    /// The kicks since the last `take`.
    pub fn peek(&self) -> Vec<u32> {
        self.0.lock().unwrap().clone()
    }
}

/// The kicks of `ch` since the last call, and forget them.
pub fn kicks<A: PortOps>(ch: &Channels<A, Kicks>) -> Vec<u32> {
    ch.notifier().take()
}

/// One upcall on `v` with a fresh handle; returns the ports handled, in
/// order, and checks the returned count against them.
pub fn upcall<A: PortOps, N: Notify>(ch: &Channels<A, N>, v: u32) -> Vec<Port> {
    let mut vcpu = ch.vcpu(v).unwrap();
    let mut seen = Vec::new();
    let n = vcpu.upcall(|p| seen.push(p)).unwrap();
    assert_eq!(n, seen.len(), "upcall's count disagrees with handler runs");
    seen
}

/// The numbers of `ports`, in order.
pub fn numbers(ports: &[Port]) -> Vec<u32> {
    ports.iter().map(|p| p.number()).collect()
}

/// The vCPUs whose upcall flag is set, in order.
pub fn pending_vcpus<A: PortOps, N: Notify>(ch: &Channels<A, N>) -> Vec<u32> {
    (0..ch.nr_vcpus())
        .filter(|&v| ch.upcall_pending(v).unwrap())
        .collect()
}

/// Runs `op`, expects `Err(want)`, and checks that `observe` (everything
/// observable about the instance) sees no change (C8).
#[track_caller]
pub fn assert_err_unchanged_by<S: PartialEq + Debug, T: Debug>(
    observe: impl Fn() -> S,
    want: Error,
    op: impl FnOnce() -> Result<T, Error>,
) {
    let before = observe();
    assert_eq!(op().unwrap_err(), want);
    assert_eq!(
        observe(),
        before,
        "a failed operation ({want:?}) changed state"
    );
}

/// Sets each flag when dropped. A scoped test whose threads loop until a
/// stop flag holds one from the start of its scope: if the test's own thread
/// panics (a failed check), the flags are still set, the threads end, and
/// the test fails instead of the scope waiting for them forever.
pub struct StopOnDrop<'a, const N: usize>(pub [&'a AtomicBool; N]);

impl<const N: usize> Drop for StopOnDrop<'_, N> {
    fn drop(&mut self) {
        for flag in self.0 {
            // Release: as the tests' own stop stores.
            flag.store(true, Release);
        }
    }
}

/// Runs `f` on its own thread and fails the test if it does not finish in
/// `limit` (a hang is a failure; the stuck thread is abandoned).
pub fn within<T: Send + 'static>(limit: Duration, f: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = mpsc::channel();
    let t = thread::spawn(move || {
        let _ = tx.send(f());
    });
    match rx.recv_timeout(limit) {
        Ok(v) => {
            t.join().unwrap();
            v
        }
        Err(mpsc::RecvTimeoutError::Disconnected) => {
            // The closure panicked: re-raise its panic here.
            std::panic::resume_unwind(t.join().unwrap_err())
        }
        Err(mpsc::RecvTimeoutError::Timeout) => {
            panic!("did not return within {limit:?}: an unbounded loop")
        }
    }
}
