//! What the tests share: vCPU halting and kicking and a random number
//! generator (both from `evtchn-test-support`), the accounting of sends, the
//! run length.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::*};
use std::sync::Mutex;
use std::time::Duration;

/// Environment variable: seconds per scenario (default 2; fractions allowed).
pub const SECS_VAR: &str = "XEN_CLIENT_SECS";

/// How long each scenario runs: `XEN_CLIENT_SECS`, or 2 s.
#[must_use]
pub fn scenario_duration() -> Duration {
    std::env::var(SECS_VAR)
        .ok()
        .and_then(|s| s.parse::<f64>().ok())
        .filter(|s| s.is_finite() && *s > 0.0)
        .map_or(Duration::from_secs(2), Duration::from_secs_f64)
}

/// The tests' PRNG and their halting, kicked vCPUs: `evtchn-test-support`'s.
pub use evtchn_test_support::{Halt, Kicker as Wake, Rng};

/// Per port: the epoch of the last send (incremented before the send), the
/// highest epoch a handler saw, and the epoch at the port's last close.
///
/// A send that returned `Ok` is lost unless a handler of its port later
/// read its epoch or a close of the port came after it. A send racing a
/// handler may be credited by it early; if that send's event is then never
/// delivered, its pending bit outlives the drain, which the tests count too.
#[derive(Debug)]
pub struct Book {
    /// Epoch of the last send, per port.
    pub sent: Vec<AtomicU64>,
    /// Highest epoch a handler read, per port.
    pub seen: Vec<AtomicU64>,
    /// Epoch at the last close, per port.
    pub forgiven: Vec<AtomicU64>,
    /// Held around (epoch, send) and around (close, forgive, bind).
    lock: Vec<Mutex<()>>,
    /// Handler runs.
    pub handled: AtomicU64,
}

impl Book {
    /// For ports `0..ports`.
    #[must_use]
    pub fn new(ports: u32) -> Self {
        let v = || (0..ports).map(|_| AtomicU64::new(0)).collect();
        Book {
            sent: v(),
            seen: v(),
            forgiven: v(),
            lock: (0..ports).map(|_| Mutex::new(())).collect(),
            handled: AtomicU64::new(0),
        }
    }

    /// Locks `port` against sends, closes and binds.
    ///
    /// # Panics
    ///
    /// If `port` is out of range.
    pub fn lock(&self, port: u32) -> std::sync::MutexGuard<'_, ()> {
        self.lock[port as usize]
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Before a send of `port` (under [`Book::lock`]): a new epoch.
    pub fn sending(&self, port: u32) {
        if let Some(s) = self.sent.get(port as usize) {
            s.fetch_add(1, SeqCst);
        }
    }

    /// After a close of `port` (under [`Book::lock`]): sends so far are
    /// forgiven.
    pub fn closed(&self, port: u32) {
        if let (Some(s), Some(f)) = (
            self.sent.get(port as usize),
            self.forgiven.get(port as usize),
        ) {
            f.store(s.load(SeqCst), SeqCst);
        }
    }

    /// A handler of `port` runs.
    pub fn handle(&self, port: u32) {
        if let (Some(sent), Some(seen)) =
            (self.sent.get(port as usize), self.seen.get(port as usize))
        {
            seen.fetch_max(sent.load(SeqCst), SeqCst);
        }
        self.handled.fetch_add(1, Relaxed);
    }

    /// The ports among `ports` with a send nobody handled or forgave.
    #[must_use]
    pub fn lost(&self, ports: impl IntoIterator<Item = u32>) -> Vec<String> {
        ports
            .into_iter()
            .filter_map(|p| {
                let i = p as usize;
                let (s, h, f) = (
                    self.sent.get(i)?.load(SeqCst),
                    self.seen.get(i)?.load(SeqCst),
                    self.forgiven.get(i)?.load(SeqCst),
                );
                (s > h && s > f)
                    .then(|| format!("port {p}: sent epoch {s}, handled up to {h}, closed at {f}"))
            })
            .collect()
    }
}

/// Waits (up to 10 s) until every vCPU is halted with no upcall pending and
/// no handler has run for 50 ms. Returns whether that happened.
pub fn drain(wake: &Wake, vcpus: u32, upcall_pending: impl Fn(u32) -> bool, book: &Book) -> bool {
    let t = std::time::Instant::now();
    let mut last = u64::MAX;
    let mut quiet_since = std::time::Instant::now();
    while t.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(5));
        let handled = book.handled.load(SeqCst);
        let idle = wake.halted() == u64::from(vcpus) && (0..vcpus).all(|v| !upcall_pending(v));
        if handled != last || !idle {
            last = handled;
            quiet_since = std::time::Instant::now();
        } else if quiet_since.elapsed() >= Duration::from_millis(50) {
            return true;
        }
    }
    false
}

/// Stops a scenario's threads when dropped, so that a panicking thread (an
/// assertion, a poisoned lock) ends the scenario instead of leaving the
/// vCPUs halted for ever inside `std::thread::scope`.
#[derive(Debug)]
pub struct StopOnDrop<'a> {
    /// Set to `true`: the operation threads stop.
    pub ops: &'a AtomicBool,
    /// Stopped: the vCPU threads stop.
    pub wake: &'a Wake,
}

impl Drop for StopOnDrop<'_> {
    fn drop(&mut self) {
        self.ops.store(true, SeqCst);
        self.wake.stop();
    }
}
