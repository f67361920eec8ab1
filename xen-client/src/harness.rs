//! What the tests share: vCPU halting and kicking and a random number
//! generator (both from `evtchn-test-support`), the accounting of sends, the
//! run length; and the pieces of a scenario both directions run the same
//! way: sizes, the sender loop, halting, quiescing, the counters and their
//! summary line, the clean assertion and the negative-control runner.

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

/// vCPUs of every scenario.
pub const VCPUS: u32 = 4;
/// Ports bound: 1..=PORTS.
pub const PORTS: u32 = 96;
/// Ports the memory holds: two 2-level words, 128 FIFO event words.
pub const NR_PORTS: u32 = 128;

/// Scenarios share the machine's two cores: one at a time.
static SERIAL: Mutex<()> = Mutex::new(());

/// Takes the lock that runs a test binary's scenarios one at a time.
pub fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// A random port of `1..=PORTS`.
pub fn random_port(rng: &mut Rng) -> u32 {
    1 + (rng.below(u64::from(PORTS)) as u32)
}

/// The event-channel ABI a scenario runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Abi {
    /// 2-level.
    TwoLevel,
    /// FIFO.
    Fifo,
}

impl Abi {
    /// Both, 2-level first.
    pub const ALL: [Abi; 2] = [Abi::TwoLevel, Abi::Fifo];

    /// As the summary lines spell it.
    #[must_use]
    pub fn name(self) -> &'static str {
        match self {
            Abi::TwoLevel => "2-level",
            Abi::Fifo => "FIFO",
        }
    }
}

/// The counters that must stay 0 (besides `lost_wakeups`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Counter {
    /// Sends no handler ran after.
    Lost,
    /// Masks the hypervisor cleared.
    Clobbered,
    /// Handlers run on masked ports.
    OnMasked,
}

impl Counter {
    /// As the summary lines spell it.
    #[must_use]
    pub fn name(self) -> &'static str {
        match self {
            Counter::Lost => "lost",
            Counter::Clobbered => "clobbered",
            Counter::OnMasked => "on_masked",
        }
    }

    /// Its value in `t`.
    #[must_use]
    pub fn of(self, t: &Tally) -> u64 {
        match self {
            Counter::Lost => t.lost,
            Counter::Clobbered => t.clobbered,
            Counter::OnMasked => t.on_masked,
        }
    }
}

/// What both directions count.
#[derive(Debug, Default)]
pub struct Tally {
    /// Sends that returned `Ok`.
    pub sends: u64,
    /// Sends that failed.
    pub send_errors: u64,
    /// Handler runs.
    pub handled: u64,
    /// FIFO priority changes.
    pub priorities: u64,
    /// Closes followed by a bind.
    pub rebinds: u64,
    /// Guest mask and unmask operations.
    pub mask_ops: u64,
    /// `EVTCHNOP_unmask` calls.
    pub unmask_hypercalls: u64,
    /// vCPU kicks.
    pub kicks: u64,
    /// Lost sends plus ports still pending after the drain.
    pub lost: u64,
    /// The lost sends, per port.
    pub lost_ports: Vec<String>,
    /// Ports still pending after the drain.
    pub stuck: Vec<u32>,
    /// Masks found cleared.
    pub clobbered: u64,
    /// The first port found with its mask cleared.
    pub first_clobbered: Option<u32>,
    /// Handlers run on masked ports.
    pub on_masked: u64,
    /// The first such port, where known.
    pub first_on_masked: Option<u32>,
    /// vCPUs halted with an upcall pending and not kicked within 1 s.
    pub lost_wakeups: u64,
    /// Seconds the scenario ran.
    pub secs: f64,
}

impl Tally {
    /// The summary line: `moves` describes the rebinding operations, `tail`
    /// (empty, or starting with a space) comes before the duration.
    #[must_use]
    pub fn line(&self, what: &str, moves: &str, tail: &str) -> String {
        format!(
            "{what}: sends={} handled={} {moves} set_priority={} close/rebind={} guest mask ops={} unmask hypercalls={} kicks={} lost={} clobbered={} on_masked={} lost_wakeups={}{tail} ({:.1} s)",
            self.sends,
            self.handled,
            self.priorities,
            self.rebinds,
            self.mask_ops,
            self.unmask_hypercalls,
            self.kicks,
            self.lost,
            self.clobbered,
            self.on_masked,
            self.lost_wakeups,
            self.secs,
        )
    }
}

/// A scenario's result: the shared counters and its summary line.
pub trait Summary: std::fmt::Debug {
    /// The shared counters.
    fn tally(&self) -> &Tally;
    /// The summary line, headed `what`.
    fn line(&self, what: &str) -> String;
}

/// Prints the summary line and asserts that nothing was lost, clobbered,
/// handled while masked or left halted.
///
/// # Panics
///
/// If any of those counters moved, or nothing ran.
pub fn assert_clean(what: &str, c: &impl Summary) {
    println!("{}", c.line(what));
    let t = c.tally();
    assert!(t.sends > 0 && t.handled > 0, "{what}: nothing ran: {c:?}");
    assert_eq!(t.send_errors, 0, "{what}: a send to a bound port failed");
    assert!(
        t.lost == 0,
        "{what}: lost events on {} ports, first {:?}; still pending after the drain: {:?}\n{}",
        t.lost_ports.len(),
        t.lost_ports.iter().take(8).collect::<Vec<_>>(),
        t.stuck,
        c.line(what)
    );
    assert_eq!(
        t.clobbered, 0,
        "{what}: the hypervisor cleared the guest's mask of port {:?}",
        t.first_clobbered
    );
    assert_eq!(
        t.on_masked, 0,
        "{what}: handlers ran on ports the guest had masked (first known: {:?})",
        t.first_on_masked
    );
    assert_eq!(
        t.lost_wakeups, 0,
        "{what}: a vCPU halted with an upcall pending"
    );
}

/// A negative control: a broken side whose `counter` must move.
#[derive(Clone, Copy, Debug)]
pub struct Control {
    /// What is broken, as the summary line says it.
    pub label: &'static str,
    /// The counter that must move; the scenario stops once it has (except
    /// `Lost`, known only at the end).
    pub counter: Counter,
    /// A counter that must stay 0 all the same.
    pub still_zero: Option<Counter>,
    /// How long at most.
    pub duration: Duration,
}

impl Control {
    /// When the scenario may stop early.
    #[must_use]
    pub fn stop_when(&self) -> Option<Counter> {
        (self.counter != Counter::Lost).then_some(self.counter)
    }
}

/// Runs `control` per ABI (`run`), prints each summary line
/// (`negative {direction} {abi} ({label})`) and asserts its counter moved.
///
/// # Panics
///
/// If the counter stayed 0, or `still_zero` moved.
pub fn negative_control<S: Summary>(direction: &str, control: &Control, run: impl Fn(Abi) -> S) {
    for abi in Abi::ALL {
        let c = run(abi);
        let what = format!("negative {direction} {} ({})", abi.name(), control.label);
        println!("{}", c.line(&what));
        let counter = control.counter;
        assert!(
            counter.of(c.tally()) > 0,
            "{what}: the {} counter stayed 0",
            counter.name()
        );
        if let Some(z) = control.still_zero {
            assert_eq!(z.of(c.tally()), 0, "{what}: the {} counter moved", z.name());
        }
    }
}

/// Sleeps until `duration` has passed since `start` or, with `stop_when`,
/// that counter (read by `count`) has moved.
pub fn run_until(
    start: std::time::Instant,
    duration: Duration,
    stop_when: Option<Counter>,
    count: impl Fn(Counter) -> u64,
) {
    loop {
        std::thread::sleep(Duration::from_millis(10));
        let done = stop_when.is_some_and(|c| count(c) > 0);
        if done || start.elapsed() >= duration {
            break;
        }
    }
}

/// Kicks each vCPU until its `acks` counter has gone up by `more`, or 10 s
/// passed.
pub fn kick_until_acked(wake: &Wake, acks: &[AtomicU64], more: u64) {
    for (v, a) in acks.iter().enumerate() {
        let a0 = a.load(SeqCst);
        let t = std::time::Instant::now();
        while a.load(SeqCst) < a0 + more && t.elapsed() < Duration::from_secs(10) {
            wake.kick(u32::try_from(v).unwrap_or(u32::MAX));
            std::thread::sleep(Duration::from_millis(1));
        }
    }
}

/// One vCPU thread's halt after an upcall: acknowledges it in `ack`, halts
/// until kicked and counts a lost wake-up.
pub fn ack_and_halt(
    wake: &Wake,
    v: u32,
    ack: &AtomicU64,
    upcall_pending: impl Fn() -> bool,
    lost_wakeups: &AtomicU64,
) {
    ack.fetch_add(1, SeqCst);
    if wake.halt(v, upcall_pending, Duration::from_secs(1), Duration::ZERO) == Halt::LostWakeup {
        // Halted with an upcall pending and nobody kicked.
        lost_wakeups.fetch_add(1, Relaxed);
    }
}

/// A sender thread's loop: until `stop`, a send (`send`, which answers
/// whether it returned `Ok`) of a random port under the book's lock, then
/// `check`.
pub fn send_loop(
    seed: u64,
    stop: &AtomicBool,
    book: &Book,
    counts: (&AtomicU64, &AtomicU64),
    send: impl Fn(u32) -> bool,
    check: impl Fn(),
) {
    let (sends, send_errors) = counts;
    let mut rng = Rng::new(seed);
    while !stop.load(Relaxed) {
        let p = random_port(&mut rng);
        {
            let _g = book.lock(p);
            book.sending(p);
            if send(p) {
                sends.fetch_add(1, Relaxed);
            } else {
                send_errors.fetch_add(1, Relaxed);
            }
        }
        check();
    }
}

/// After the drain: the lost sends and the ports still pending, in a
/// [`Tally`] with nothing else set.
#[must_use]
pub fn losses(book: &Book, pending: impl Fn(u32) -> bool) -> Tally {
    let stuck: Vec<u32> = (1..=PORTS).filter(|&p| pending(p)).collect();
    let lost_ports = book.lost(1..=PORTS);
    Tally {
        lost: (lost_ports.len() + stuck.len()) as u64,
        lost_ports,
        stuck,
        ..Tally::default()
    }
}
