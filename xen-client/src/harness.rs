//! What the tests share: vCPU halting and kicking, a random number
//! generator, the run length.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::*};
use std::sync::{Condvar, Mutex};
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

/// xorshift64*: fast, seedable, good enough to pick ports.
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    /// A generator from `seed` (any value).
    #[must_use]
    pub fn new(seed: u64) -> Self {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// Uniform in `0..n` (`n` > 0).
    pub fn below(&mut self, n: u32) -> u32 {
        u32::try_from(((self.next_u64() >> 32) * u64::from(n)) >> 32).unwrap_or(0)
    }

    /// True with probability `num / den`.
    pub fn chance(&mut self, num: u32, den: u32) -> bool {
        self.below(den) < num
    }
}

/// Halting vCPUs and their kicks: a vCPU halts (`wait`) only after it saw
/// no upcall pending; a kick (`kick`) wakes it, or makes its next `wait`
/// return at once.
#[derive(Debug)]
pub struct Wake {
    slots: Vec<(Mutex<bool>, Condvar)>,
    stop: AtomicBool,
    /// Kicks delivered.
    pub kicks: AtomicU64,
    /// vCPUs halted right now.
    pub halted: AtomicU64,
}

impl Wake {
    /// For `vcpus` vCPUs.
    #[must_use]
    pub fn new(vcpus: u32) -> Self {
        Wake {
            slots: (0..vcpus)
                .map(|_| (Mutex::new(false), Condvar::new()))
                .collect(),
            stop: AtomicBool::new(false),
            kicks: AtomicU64::new(0),
            halted: AtomicU64::new(0),
        }
    }

    /// Wakes `vcpu` (its IPI, or the hypervisor's `vcpu_kick`).
    pub fn kick(&self, vcpu: u32) {
        if let Some((m, c)) = self.slots.get(vcpu as usize) {
            self.kicks.fetch_add(1, Relaxed);
            *m.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = true;
            c.notify_one();
        }
    }

    /// Halts `vcpu` until kicked or stopped, or until `timeout`; returns
    /// `true` if it was kicked (or stopped), `false` on a timeout.
    pub fn wait(&self, vcpu: u32, timeout: Duration) -> bool {
        let Some((m, c)) = self.slots.get(vcpu as usize) else {
            return true;
        };
        let mut kicked = m.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        self.halted.fetch_add(1, SeqCst);
        let deadline = std::time::Instant::now() + timeout;
        while !*kicked && !self.stop.load(SeqCst) {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            if left.is_zero() {
                self.halted.fetch_sub(1, SeqCst);
                return false;
            }
            kicked = c
                .wait_timeout(kicked, left)
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .0;
        }
        *kicked = false;
        self.halted.fetch_sub(1, SeqCst);
        true
    }

    /// Whether `stop` was called.
    #[must_use]
    pub fn stopped(&self) -> bool {
        self.stop.load(SeqCst)
    }

    /// Stops every vCPU: each `wait` returns, now and from now on.
    pub fn stop(&self) {
        self.stop.store(true, SeqCst);
        for (m, c) in &self.slots {
            drop(m.lock().unwrap_or_else(std::sync::PoisonError::into_inner));
            c.notify_all();
        }
    }
}

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
        let idle =
            wake.halted.load(SeqCst) == u64::from(vcpus) && (0..vcpus).all(|v| !upcall_pending(v));
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
