//! Native multi-threaded stress test of the control plane over either ABI,
//! 2-level and FIFO: the contract's C1 (no lost event), C2 (no lost
//! wake-up) and C3 (never concurrent) on real threads, with rebinds,
//! priority changes, masks and close/re-bind running all the time.
//!
//! `EVTCHN_STRESS_ABI` picks the ABI: `2l`, `fifo`, or `both` (the default:
//! the 2-level run, then the FIFO run, each with the full configuration
//! below). The code is one generic run over `PortOps`; the control plane
//! does not know which ABI it drives.
//!
//! Threads:
//!
//! * `EVTCHN_STRESS_VCPUS` (default 4) vCPU threads, each looping `upcall`
//!   and halting with the idle protocol of C2: after an upcall, halt
//!   (`park_timeout`) only if `upcall_pending()` is false
//!   (`evtchn_test_support::Kicker::halt`). The `Notify` (`Kicker`) counts a
//!   kick and unparks the vCPU's thread. The park timeout is a
//!   safety net only: a vCPU that wakes by timeout with an upcall pending
//!   and no kick on its way is a lost wake-up, and is counted.
//! * `EVTCHN_STRESS_SENDERS` (default 2) sender threads, each sending to
//!   random port numbers through cached handles (so sends on closed lives
//!   are frequent, and must fail).
//! * one control thread: `set_affinity` to random vCPUs, `set_priority` to
//!   random priorities 0..=15 (on FIFO this moves events between queues
//!   while they may still be linked on the old one; the 2-level ABI only
//!   records it), bulk moves (a vCPU goes offline and back, moving every
//!   port bound to it at once, or the rebalancer moves up to a quarter of
//!   the live ports), `mask`/`unmask`, `close` and re-`bind` (both
//!   `Bind::XenCompat` and `Bind::Affinity`). Close and bind stop after 90%
//!   of the sends, so that the lives checked at the end have taken sends
//!   through rebinds, priority changes and mask/unmask.
//!
//! Accounting, per port life (number + generation), in a [`Ledger`] slot:
//! `sent` holds `generation << 32 | seq`, which a sender increments *before*
//! `send`; the handler reads it (Acquire, after the core's Acquire clear of
//! the pending bit) and keeps the highest value observed in `seen`.
//!
//! * C1 at the end: after quiescing (senders and control stopped,
//!   everything unmasked, final upcalls until no upcall is pending
//!   anywhere), every bound port must have `seen == sent` and its pending
//!   bit clear: its last send was observed by a handler run that started
//!   after that send.
//! * C1 mid-run: the control thread *watches* random ports (see [`Watch`]):
//!   a send still unobserved after [`STUCK_AFTER`] is lost.
//! * The report names two counts, both must be 0. `lost`: sends no handler
//!   observed (the ledger at the end, plus stuck watches). `dropped`:
//!   bound ports still pending after the final drain, i.e. events the raise
//!   side marked pending but never made reachable to any vCPU (on FIFO:
//!   never linked on a queue — what Xen does after three queue changes,
//!   "lost event (too many queue changes)"; on 2-level: a pending bit no
//!   selector leads to). A dropped event is also lost (its send is never
//!   observed); `dropped` says how. On FIFO the run also counts event words
//!   still LINKED and `ready` bits still set after the drain (`stale_links`),
//!   which must be 0 too: the queues end empty and well formed.
//! * C3: each port number has an `inside` flag that the handler sets on
//!   entry and clears on exit; finding it already set is a concurrent run.
//! * The handler runs counted by the handler must equal those the upcalls
//!   report; a send on the handle of a closed life must fail (C6).
//!
//! Size: `EVTCHN_STRESS_SENDS` successful sends in all, per ABI (default
//! [`DEFAULT_SENDS`], so that the default run of both ABIs takes about as
//! long as one 2-level run of twice as many sends did); 128 port numbers
//! for either ABI; `EVTCHN_STRESS_LIVE` ports bound at most (default 96;
//! fewer ports means more contention per port). A watchdog ends the process
//! if a run takes longer than `EVTCHN_STRESS_TIMEOUT_SECS` (default 600):
//! a hang is a failure too.
//!
//! ```text
//! EVTCHN_STRESS_SENDS=10000000 cargo test --release --test stress -- --nocapture
//! EVTCHN_STRESS_ABI=fifo EVTCHN_STRESS_SENDS=1000000 cargo test --release --test stress -- --nocapture
//! ```
// Native tests; under RUSTFLAGS="--cfg loom" only the models run.
#![cfg(not(loom))]

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::*};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use evtchn::xen::fifo::LINKED;
use evtchn::{
    Bind, Channels, Error, Fifo, FifoMemory, OwnedFifo, OwnedMemory, Port, PortOps, TwoLevel,
};

use evtchn_test_support::{Halt, Kicker, Rng};

/// Pending/mask words: 128 port numbers (port 0 is reserved); the FIFO run
/// gets the same 128 port numbers.
const WORDS: usize = 2;
/// The control thread keeps at least this many ports bound (or
/// `EVTCHN_STRESS_LIVE` - 1, if smaller), and at most `EVTCHN_STRESS_LIVE`.
const MIN_LIVE: usize = 8;
/// Successful sends in all per ABI, unless `EVTCHN_STRESS_SENDS` says
/// otherwise.
const DEFAULT_SENDS: u64 = 1_000_000;
/// Safety-net timeout of a halted vCPU.
const PARK_TIMEOUT: Duration = Duration::from_millis(20);
/// How long a vCPU that timed out with work pending waits for a kick that
/// may still be on its way (the raiser set the flag but has not kicked yet)
/// before calling it a lost wake-up.
const KICK_GRACE: Duration = Duration::from_secs(2);

/// Accounting of one port number; `sent` and `seen` are tagged with the
/// generation of the life they belong to.
#[derive(Default)]
struct Ledger {
    /// `generation << 32 | seq`: the sequence number of the last send
    /// claimed on that life (incremented before `send`).
    sent: AtomicU64,
    /// The highest `sent` value a handler observed (generations only grow,
    /// so the maximum across lives is the current life's once it has one).
    seen: AtomicU64,
    /// A handler of this port number is running.
    inside: AtomicBool,
}

const SEQ: u64 = 0xffff_ffff;

fn tag(p: Port) -> u64 {
    u64::from(p.generation()) << 32
}

/// The control plane over ABI `A` (2-level or FIFO).
type Ch<A> = Channels<A, Kicker>;

/// What the handler counts (per vCPU thread, summed at the end).
#[derive(Default, Debug, Clone, Copy)]
struct HandlerStats {
    /// Handler runs.
    handled: u64,
    /// Runs that observed a send no earlier run had observed.
    fresh: u64,
    /// Runs that observed nothing new (bind's event, or a send whose seq an
    /// earlier run already read).
    spurious: u64,
    /// Runs that found the port's handler already running (C3).
    concurrent: u64,
    /// Runs for a port number outside the table.
    bad_port: u64,
}

impl HandlerStats {
    fn add(&mut self, o: &HandlerStats) {
        self.handled += o.handled;
        self.fresh += o.fresh;
        self.spurious += o.spurious;
        self.concurrent += o.concurrent;
        self.bad_port += o.bad_port;
    }
}

/// The event handler: C3 check and C1 accounting.
fn handle(p: Port, ledger: &[Ledger], st: &mut HandlerStats, rng: &mut Rng) {
    st.handled += 1;
    let Some(l) = ledger.get(p.number() as usize) else {
        st.bad_port += 1;
        return;
    };
    // AcqRel: a handler that finds the flag clear saw the previous one end.
    if l.inside.swap(true, AcqRel) {
        st.concurrent += 1;
    }
    // Acquire: the core's clear of the pending bit synchronised with the
    // send; this sees the sequence number claimed before it.
    let sent = l.sent.load(Acquire);
    if sent & !SEQ == tag(p) && l.seen.fetch_max(sent, AcqRel) < sent {
        st.fresh += 1;
    } else {
        st.spurious += 1;
    }
    // Sometimes linger, to widen the window in which a second run of the
    // same port would overlap this one.
    match rng.below(64) {
        0 => thread::yield_now(),
        1..=8 => {
            for _ in 0..rng.below(256) {
                std::hint::spin_loop();
            }
        }
        _ => {}
    }
    // Release: the next run's swap sees this run ended.
    l.inside.store(false, Release);
}

#[derive(Default, Debug, Clone, Copy)]
struct VcpuStats {
    h: HandlerStats,
    upcalls: u64,
    /// Handler runs as the upcalls reported them (must equal `h.handled`).
    reported: u64,
    parks: u64,
    idle_timeouts: u64,
    lost_wakeups: u64,
    upcall_errors: u64,
}

/// One vCPU: upcall loop with the C2 idle protocol.
fn run_vcpu<A: PortOps>(ch: &Ch<A>, id: u32, ledger: &[Ledger], stop: &AtomicBool) -> VcpuStats {
    let kicker = ch.notifier();
    kicker.register(id);
    let mut vcpu = ch.vcpu(id).expect("vCPU index in range");
    let mut st = VcpuStats::default();
    let mut rng = Rng::new(0x1000 + u64::from(id));
    loop {
        match vcpu.upcall(|p| handle(p, ledger, &mut st.h, &mut rng)) {
            Ok(n) => {
                st.upcalls += 1;
                st.reported += n as u64;
            }
            Err(_) => st.upcall_errors += 1,
        }
        if stop.load(Acquire) {
            return st;
        }
        match kicker.halt(id, || vcpu.upcall_pending(), PARK_TIMEOUT, KICK_GRACE) {
            Halt::Pending => continue,
            Halt::Woken => st.parks += 1, // kicked, or a spurious wake-up: look again
            Halt::TimedOut => {
                st.parks += 1;
                st.idle_timeouts += 1;
            }
            Halt::LostWakeup => {
                st.parks += 1;
                st.idle_timeouts += 1;
                st.lost_wakeups += 1;
                eprintln!("vCPU {id}: lost wake-up (upcall pending, no kick for {KICK_GRACE:?})");
            }
        }
    }
}

#[derive(Default, Debug, Clone, Copy)]
struct SenderStats {
    /// Successful sends.
    ok: u64,
    /// Sends refused because the port was closed meanwhile.
    failed: u64,
    /// Picks of a number that was not bound.
    unbound: u64,
    /// Picks of a life whose ledger the control thread had not reset yet.
    unready: u64,
    /// Sends on a handle of a closed life, refused as they must be.
    stale: u64,
    /// Sends on a handle of a closed life that succeeded (a C6 bug).
    stale_ok: u64,
    /// Any other error (a bug).
    unexpected: u64,
}

/// One sender: `quota` successful sends to random port numbers, with short
/// pauses now and then so that vCPUs go idle and must be woken.
///
/// The sender caches a handle per number and keeps using it until it fails,
/// so sends on stale handles (closed lives) are frequent: those must fail.
fn run_sender<A: PortOps>(
    ch: &Ch<A>,
    ledger: &[Ledger],
    cfg: &Config,
    progress: &AtomicU64,
    abort: &AtomicBool,
    quota: u64,
    seed: u64,
) -> SenderStats {
    let mut rng = Rng::new(seed);
    let mut st = SenderStats::default();
    let nr = ch.nr_ports() as usize;
    // Bind hands out the lowest free number: with `live` ports bound, the
    // numbers in use are those up to about `live`.
    let span = (nr - 1).min(cfg.live + 16) as u64;
    let mut cache: Vec<Option<Port>> = vec![None; nr];
    while st.ok < quota && !abort.load(Relaxed) {
        let n = 1 + rng.below(span) as usize;
        let p = match cache[n] {
            Some(p) => p,
            None => match ch.port(n as u32) {
                Ok(p) => *cache[n].insert(p),
                Err(_) => {
                    st.unbound += 1;
                    continue;
                }
            },
        };
        let l = &ledger[n];
        // Claim the next sequence number of this life, before the send.
        let mut cur = l.sent.load(Acquire);
        let claimed = loop {
            if cur & !SEQ != tag(p) {
                break false;
            }
            // AcqRel: Release orders the claim before our send's raise.
            match l.sent.compare_exchange_weak(cur, cur + 1, AcqRel, Acquire) {
                Ok(_) => break true,
                Err(now) => cur = now,
            }
        };
        if !claimed {
            cache[n] = None;
            if cur & !SEQ < tag(p) {
                // Bound, but the control thread has not reset the ledger
                // for this life yet.
                st.unready += 1;
                continue;
            }
            // A later life owns the number: `p`'s life was closed before
            // that bind (which happened before the ledger reset we read),
            // so the send must fail (C6).
            match ch.send(p) {
                Err(Error::Stale | Error::NotBound) => st.stale += 1,
                Ok(()) => {
                    st.stale_ok += 1;
                    eprintln!("send({p:?}) on a closed life succeeded");
                }
                Err(e) => {
                    st.unexpected += 1;
                    eprintln!("send({p:?}): unexpected error {e}");
                }
            }
            continue;
        }
        match ch.send(p) {
            Ok(()) => {
                st.ok += 1;
                if st.ok % 256 == 0 {
                    progress.fetch_add(256, Relaxed);
                }
            }
            Err(Error::Stale | Error::NotBound) => {
                st.failed += 1;
                cache[n] = None;
            }
            Err(e) => {
                st.unexpected += 1;
                eprintln!("send({p:?}): unexpected error {e}");
            }
        }
        match rng.below(1024) {
            0 => thread::sleep(Duration::from_micros(50 + rng.below(500))),
            1..=15 => thread::yield_now(),
            _ => {}
        }
    }
    st
}

#[derive(Default, Debug, Clone, Copy)]
struct ControlStats {
    binds: u64,
    /// Binds of a number that an earlier life had used (close + re-bind).
    rebinds: u64,
    closes: u64,
    affinity: u64,
    /// `set_affinity` calls made while the port's handler was running.
    affinity_in_flight: u64,
    /// `set_priority` calls (random priorities 0..=15).
    priorities: u64,
    /// `set_affinity` / `set_priority` calls made while the port was pending
    /// (on FIFO: its event may be linked on the queue it is moved off).
    moved_pending: u64,
    masks: u64,
    unmasks: u64,
    /// Ports moved in bulk, by a vCPU going offline (every port bound to
    /// it moves at once) or by the rebalancer, and how many bulk moves.
    bulk_moved: u64,
    bulk_moves: u64,
    /// Watches started / found stuck (see [`Watch`]).
    watches: u64,
    stuck: u64,
    unexpected: u64,
}

/// A mid-run check of C1 that no later send or rebind can hide: the control
/// thread snapshots the last claimed sequence number `seq` of a bound,
/// unmasked port and leaves that port alone until a handler has observed
/// `seq`. A stranded event is healed by a later mask/unmask or rebind of
/// its port (the unmask re-raises), so only an untouched port shows it;
/// one still unobserved after [`STUCK_AFTER`] is a lost event.
struct Watch {
    port: Port,
    seq: u64,
    since: Instant,
}

/// How long a watched send may stay unobserved (vCPU threads may be
/// descheduled for a while on a loaded machine; a lost event is forever).
const STUCK_AFTER: Duration = Duration::from_secs(5);

/// The control thread: rebinds, masks and close/re-bind while events fly.
///
/// Close and bind stop once the senders have made 90% of their sends, so
/// that the lives checked at the end have lived through affinity changes
/// and mask/unmask with sends in flight (a close legitimately drops pending
/// events, and only the events of live ports can be checked).
fn run_control<A: PortOps>(
    ch: &Ch<A>,
    ledger: &[Ledger],
    cfg: &Config,
    progress: &AtomicU64,
    stop: &AtomicBool,
) -> ControlStats {
    let mut rng = Rng::new(0xc0de);
    let mut st = ControlStats::default();
    let mut live: Vec<Port> = Vec::new();
    let mut masked: Vec<Port> = Vec::new();
    let mut watches: Vec<Watch> = Vec::new();
    let vcpus = u64::from(ch.nr_vcpus());
    let min_live = MIN_LIVE.min(cfg.live - 1);
    let churn_until = cfg.sends / 10 * 9;
    let bad = |st: &mut ControlStats, what: &str, p: Option<Port>, e: Error| {
        st.unexpected += 1;
        eprintln!("control: {what}({p:?}): unexpected error {e}");
    };
    let mut op = 0u64;
    while !stop.load(Acquire) {
        op += 1;
        // Settle the watches.
        watches.retain(|w| {
            let l = &ledger[w.port.number() as usize];
            if l.seen.load(Acquire) >= w.seq {
                return false;
            }
            if w.since.elapsed() < STUCK_AFTER {
                return true;
            }
            st.stuck += 1;
            eprintln!(
                "control: port {:?}: send #{} unobserved for {STUCK_AFTER:?} (last seen #{}): {:?}",
                w.port,
                w.seq & SEQ,
                l.seen.load(Acquire) & SEQ,
                ch.status(w.port.number())
            );
            false
        });
        // A random live port that no watch holds.
        let pick = |rng: &mut Rng, v: &[Port]| -> Option<usize> {
            let i = rng.below(v.len().max(1) as u64) as usize;
            v.get(i)
                .filter(|p| !watches.iter().any(|w| w.port == **p))
                .map(|_| i)
        };
        let churn = progress.load(Relaxed) < churn_until;
        match rng.below(40) {
            // Bind, in either mode; keep the ledger in step first.
            0..=5 if churn && live.len() < cfg.live => {
                let mode = if rng.below(2) == 0 {
                    Bind::XenCompat
                } else {
                    Bind::Affinity(rng.below(vcpus) as u32)
                };
                match ch.bind(mode) {
                    Ok(p) => {
                        // Release: a sender that reads this tag claims
                        // sequence numbers of the new life.
                        ledger[p.number() as usize].sent.store(tag(p), Release);
                        live.push(p);
                        st.binds += 1;
                        if p.generation() > 1 {
                            st.rebinds += 1;
                        }
                    }
                    // Every number may be closing behind a running handler.
                    Err(Error::NoFreePort) => {}
                    Err(e) => bad(&mut st, "bind", None, e),
                }
            }
            6..=9 if churn && live.len() > min_live => {
                let Some(i) = pick(&mut rng, &live) else {
                    continue;
                };
                let p = live.swap_remove(i);
                masked.retain(|m| *m != p);
                match ch.close(p) {
                    Ok(()) => st.closes += 1,
                    Err(e) => bad(&mut st, "close", Some(p), e),
                }
            }
            10..=21 => {
                let Some(i) = pick(&mut rng, &live) else {
                    continue;
                };
                let p = live[i];
                let v = rng.below(vcpus) as u32;
                let status = ch.status(p.number());
                // The rebind-in-flight case: a rebind while a handler is in flight.
                if status.is_ok_and(|s| s.in_flight && s.vcpu != v) {
                    st.affinity_in_flight += 1;
                }
                if status.is_ok_and(|s| s.pending && s.vcpu != v) {
                    st.moved_pending += 1;
                }
                match ch.set_affinity(p, v) {
                    Ok(()) => st.affinity += 1,
                    Err(e) => bad(&mut st, "set_affinity", Some(p), e),
                }
            }
            22..=25 => {
                let Some(i) = pick(&mut rng, &live) else {
                    continue;
                };
                let p = live[i];
                match ch.mask(p) {
                    Ok(()) => {
                        st.masks += 1;
                        if !masked.contains(&p) {
                            masked.push(p);
                        }
                    }
                    Err(e) => bad(&mut st, "mask", Some(p), e),
                }
            }
            26..=29 => {
                let Some(i) = pick(&mut rng, &masked) else {
                    continue;
                };
                let p = masked.swap_remove(i);
                match ch.unmask(p) {
                    Ok(()) => st.unmasks += 1,
                    Err(e) => bad(&mut st, "unmask", Some(p), e),
                }
            }
            30 if watches.len() < 8 => {
                let Some(i) = pick(&mut rng, &live) else {
                    continue;
                };
                let p = live[i];
                let seq = ledger[p.number() as usize].sent.load(Acquire);
                if !masked.contains(&p) && seq & !SEQ == tag(p) && seq & SEQ != 0 {
                    st.watches += 1;
                    watches.push(Watch {
                        port: p,
                        seq,
                        since: Instant::now(),
                    });
                }
            }
            // A new priority: on FIFO the next link goes to another queue,
            // while the event may still be linked on the old one.
            31..=38 => {
                let Some(i) = pick(&mut rng, &live) else {
                    continue;
                };
                let p = live[i];
                let prio = rng.below(16) as u8;
                if ch
                    .status(p.number())
                    .is_ok_and(|s| s.pending && s.priority != prio)
                {
                    st.moved_pending += 1;
                }
                match ch.set_priority(p, prio) {
                    Ok(()) => st.priorities += 1,
                    Err(e) => bad(&mut st, "set_priority", Some(p), e),
                }
            }
            // Many ports at once, with their events linked on the queues
            // they leave: a vCPU goes offline (every port bound to it
            // moves, as `set_online` places them) and comes back, or the
            // rebalancer moves up to a quarter of the live ports.
            39 => {
                let moved = if rng.below(2) == 0 {
                    let v = rng.below(vcpus) as u32;
                    let moved = match ch.set_online(v, false) {
                        Ok(n) => n as u64,
                        Err(e) => {
                            bad(&mut st, "set_online", None, e);
                            0
                        }
                    };
                    if let Err(e) = ch.set_online(v, true) {
                        bad(&mut st, "set_online", None, e);
                    }
                    moved
                } else {
                    match ch.rebalance(live.len() / 4 + 1) {
                        Ok(m) => m.len() as u64,
                        Err(e) => {
                            bad(&mut st, "rebalance", None, e);
                            0
                        }
                    }
                };
                st.bulk_moves += 1;
                st.bulk_moved += moved;
            }
            _ => {}
        }
        if op % 4 == 0 {
            thread::yield_now();
        }
    }
    st
}

fn env_u64(name: &str, default: u64) -> u64 {
    match std::env::var(name) {
        Ok(s) => s
            .trim()
            .replace('_', "")
            .parse()
            .unwrap_or_else(|e| panic!("{name}={s:?}: not a number: {e}")),
        Err(_) => default,
    }
}

/// The run's size, from the environment.
struct Config {
    sends: u64,
    vcpus: usize,
    senders: usize,
    live: usize,
    timeout_secs: u64,
    abis: Vec<Abi>,
}

/// The ABI a run drives.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Abi {
    TwoLevel,
    Fifo,
}

impl Abi {
    fn name(self) -> &'static str {
        match self {
            Abi::TwoLevel => "2l",
            Abi::Fifo => "fifo",
        }
    }
}

/// `EVTCHN_STRESS_ABI`: `2l`, `fifo` or `both` (the default).
fn abis_from_env() -> Vec<Abi> {
    match std::env::var("EVTCHN_STRESS_ABI") {
        Err(_) => vec![Abi::TwoLevel, Abi::Fifo],
        Ok(s) => match s.trim().to_ascii_lowercase().as_str() {
            "2l" | "2-level" | "twolevel" | "two-level" => vec![Abi::TwoLevel],
            "fifo" => vec![Abi::Fifo],
            "both" | "" => vec![Abi::TwoLevel, Abi::Fifo],
            other => panic!("EVTCHN_STRESS_ABI={other:?}: expected 2l, fifo or both"),
        },
    }
}

impl Config {
    fn from_env() -> Self {
        let senders = env_u64("EVTCHN_STRESS_SENDERS", 2).clamp(1, 64) as usize;
        Config {
            sends: env_u64("EVTCHN_STRESS_SENDS", DEFAULT_SENDS).max(senders as u64),
            vcpus: env_u64("EVTCHN_STRESS_VCPUS", 4).clamp(1, 256) as usize,
            senders,
            live: env_u64("EVTCHN_STRESS_LIVE", 96).clamp(1, 64 * WORDS as u64 - 2) as usize,
            timeout_secs: env_u64("EVTCHN_STRESS_TIMEOUT_SECS", 600),
            abis: abis_from_env(),
        }
    }
}

/// Sets the stop flags and wakes every vCPU when dropped: the main thread
/// holds one, so that its panic ends the other threads too.
struct StopAll<'a>([&'a AtomicBool; 3], &'a Kicker);

impl Drop for StopAll<'_> {
    fn drop(&mut self) {
        for f in self.0 {
            f.store(true, Release);
        }
        self.1.unpark_all();
    }
}

/// Ends the process if the run hangs (a hang is a failure, and a scoped
/// thread cannot be abandoned). The run joins it once it set `done`, so no
/// thread outlives the test (Miri reports one that does).
fn watchdog(secs: u64, done: Arc<AtomicBool>) -> thread::JoinHandle<()> {
    thread::spawn(move || {
        let t0 = Instant::now();
        while t0.elapsed() < Duration::from_secs(secs) {
            if done.load(Acquire) {
                return;
            }
            thread::sleep(Duration::from_millis(100));
        }
        eprintln!("stress: watchdog: no completion after {secs} s: the core hangs");
        std::process::exit(101);
    })
}

#[test]
fn stress() {
    let cfg = Config::from_env();
    for &abi in &cfg.abis {
        let kicker = Kicker::new(cfg.vcpus);
        match abi {
            Abi::TwoLevel => run(
                abi,
                Channels::new(TwoLevel::new(OwnedMemory::new(WORDS, cfg.vcpus)), kicker),
                &cfg,
                |_| 0,
            ),
            Abi::Fifo => run(
                abi,
                Channels::new(
                    Fifo::new(OwnedFifo::new(64 * WORDS as u32, cfg.vcpus)),
                    kicker,
                ),
                &cfg,
                stale_links,
            ),
        }
    }
}

/// FIFO: event words still LINKED, plus vCPUs with `ready` bits still set,
/// after the final drain (the queues must end empty).
fn stale_links(fifo: &Fifo<OwnedFifo>) -> u64 {
    let mem = fifo.memory();
    let words = (0..mem.max_ports())
        .filter_map(|p| mem.event_word(p))
        .filter(|w| w.load(SeqCst) & LINKED != 0)
        .count();
    let ready = (0..mem.nr_vcpus())
        .filter_map(|v| mem.control_block(v))
        .filter(|cb| cb.ready.load(SeqCst) != 0)
        .count();
    (words + ready) as u64
}

/// One run over `ch`, whichever ABI it drives; `leftover` counts what the
/// ABI's memory still holds after the final drain (it must be 0).
fn run<A: PortOps>(abi: Abi, ch: Ch<A>, cfg: &Config, leftover: impl Fn(&A) -> u64) {
    let total = cfg.sends;
    let (vcpus, senders) = (cfg.vcpus, cfg.senders);
    let done = Arc::new(AtomicBool::new(false));
    let watchdog = watchdog(cfg.timeout_secs, done.clone());

    let nr = ch.nr_ports() as usize;
    let ledger: Vec<Ledger> = (0..nr).map(|_| Ledger::default()).collect();
    let ledger = &ledger[..];
    let stop_vcpus = AtomicBool::new(false);
    let stop_control = AtomicBool::new(false);
    let abort = AtomicBool::new(false);
    // Successful sends so far, in steps of 256 (for the control phases).
    let progress = AtomicU64::new(0);
    let t0 = Instant::now();

    let (mut hs, vs, ss, cs, mut miscounted) = thread::scope(|s| {
        // If this thread panics, stop every other thread, or the scope would
        // wait for them forever.
        let _guard = StopAll([&stop_vcpus, &stop_control, &abort], ch.notifier());
        let ch = &ch;
        let cfg = &cfg;
        let progress = &progress;
        let abort = &abort;
        let vcpu_threads: Vec<_> = (0..vcpus as u32)
            .map(|id| {
                let stop = &stop_vcpus;
                thread::Builder::new()
                    .name(format!("vcpu{id}"))
                    .spawn_scoped(s, move || run_vcpu(ch, id, ledger, stop))
                    .expect("spawn vCPU thread")
            })
            .collect();
        let control = thread::Builder::new()
            .name("control".into())
            .spawn_scoped(s, || run_control(ch, ledger, cfg, progress, &stop_control))
            .expect("spawn control thread");
        let senders: Vec<_> = (0..senders as u64)
            .map(|i| {
                let quota = total / senders as u64 + u64::from(i < total % senders as u64);
                thread::Builder::new()
                    .name(format!("sender{i}"))
                    .spawn_scoped(s, move || {
                        run_sender(ch, ledger, cfg, progress, abort, quota, 0x5e2d + i)
                    })
                    .expect("spawn sender thread")
            })
            .collect();

        // Quiesce: senders finish, the control thread stops.
        let ss: Vec<SenderStats> = senders
            .into_iter()
            .map(|t| t.join().expect("sender thread panicked"))
            .collect();
        stop_control.store(true, Release);
        let cs = control.join().expect("control thread panicked");

        // Unmask everything still bound (unmask re-raises pending ports).
        for n in 1..ch.nr_ports() {
            if let Ok(p) = ch.port(n) {
                ch.unmask(p).expect("unmask of a bound port");
            }
        }
        // Let the vCPU threads drain on their own (a lost wake-up shows
        // here as a timeout with work pending), then stop them.
        let drain = Instant::now();
        let mut quiet = 0;
        while quiet < 5 && drain.elapsed() < Duration::from_secs(10) {
            let busy = (0..vcpus as u32).any(|v| ch.upcall_pending(v).unwrap_or(true));
            quiet = if busy { 0 } else { quiet + 1 };
            thread::sleep(Duration::from_millis(5));
        }
        stop_vcpus.store(true, Release);
        ch.notifier().unpark_all();
        let vs: Vec<VcpuStats> = vcpu_threads
            .into_iter()
            .map(|t| t.join().expect("vCPU thread panicked"))
            .collect();

        // Final upcalls on every vCPU until no upcall is pending anywhere.
        let mut hs = HandlerStats::default();
        let mut rng = Rng::new(7);
        let mut handles: Vec<_> = (0..vcpus as u32)
            .map(|v| ch.vcpu(v).expect("vCPU index in range"))
            .collect();
        let mut rounds = 0;
        let mut reported = 0;
        loop {
            for v in handles.iter_mut() {
                reported += v
                    .upcall(|p| handle(p, ledger, &mut hs, &mut rng))
                    .expect("final upcall") as u64;
            }
            if !handles.iter().any(|v| v.upcall_pending()) {
                break;
            }
            rounds += 1;
            assert!(rounds < 1000, "upcalls stay pending after 1000 rounds");
        }
        let miscounted = reported.abs_diff(hs.handled);
        (hs, vs, ss, cs, miscounted)
    });
    let elapsed = t0.elapsed();
    done.store(true, Release);
    watchdog.join().expect("watchdog thread panicked");
    let final_runs = hs.handled;

    // C1: every live port's last send was observed, and nothing is left
    // pending (so a run started after each send).
    // Sends found stuck mid-run count as lost too.
    let mut lost = cs.stuck;
    // Bound ports still pending after the drain: raised, never reachable.
    let mut dropped = 0u64;
    let mut live = 0u64;
    for n in 1..ch.nr_ports() {
        let Ok(p) = ch.port(n) else { continue };
        live += 1;
        let l = &ledger[n as usize];
        let sent = l.sent.load(Acquire);
        let seen = l.seen.load(Acquire);
        let st = ch.status(n).expect("status of a bound port");
        if sent & !SEQ == tag(p) && sent & SEQ != 0 && seen < sent {
            let missed = (sent & SEQ) - (seen.max(tag(p)) & SEQ);
            eprintln!(
                "port {n} (gen {}): {missed} send(s) never observed",
                p.generation()
            );
            lost += missed;
        }
        if st.pending {
            eprintln!("port {n}: still pending after quiescing (dropped): {st:?}");
            dropped += 1;
            lost += 1;
        }
        assert!(
            !st.masked_explicit && !st.masked_rebind && !st.masked_eoi && !st.in_flight,
            "port {n} not quiescent: {st:?}"
        );
    }

    for v in &vs {
        // The upcall's count of handler runs must match the handler's own.
        miscounted += v.reported.abs_diff(v.h.handled);
        hs.add(&v.h);
    }
    let sends: u64 = ss.iter().map(|s| s.ok).sum();
    let failed: u64 = ss.iter().map(|s| s.failed).sum();
    let stale: u64 = ss.iter().map(|s| s.stale).sum();
    let stale_ok: u64 = ss.iter().map(|s| s.stale_ok).sum();
    let unexpected: u64 = ss.iter().map(|s| s.unexpected).sum::<u64>() + cs.unexpected;
    let lost_wakeups: u64 = vs.iter().map(|v| v.lost_wakeups).sum();
    let upcall_errors: u64 = vs.iter().map(|v| v.upcall_errors).sum();
    let parks: u64 = vs.iter().map(|v| v.parks).sum();
    let idle_timeouts: u64 = vs.iter().map(|v| v.idle_timeouts).sum();
    let kicks: u64 = ch.notifier().total_kicks();
    let bad_kicks = ch.notifier().bad_kicks();
    // Sends that shared a handler run (or died with their port), plus runs
    // that carried no new send.
    let coalesced_or_spurious = sends.saturating_sub(hs.fresh) + hs.spurious;
    let rebinds = cs.rebinds;
    let stale_links = leftover(ch.abi());

    println!(
        "abi={} sends={sends} handled={} coalesced-or-spurious={coalesced_or_spurious} lost={lost} \
         concurrent={} dropped={dropped} stale_links={stale_links} rebinds={rebinds} closes={} \
         set_priority={} lost_wakeups={lost_wakeups}",
        abi.name(),
        hs.handled,
        hs.concurrent,
        cs.closes,
        cs.priorities
    );
    println!(
        "  vcpus={vcpus} senders={senders} max_live={} ports={} live_at_end={live} fresh={} spurious={} \
         failed_sends={failed} stale_sends={stale} binds={} set_affinity={} (in flight {}) \
         moves_while_pending={} bulk_moves={} (ports {}) masks={} unmasks={} watches={} stuck={} kicks={kicks} miscounted={miscounted} \
         parks={parks} idle_timeouts={idle_timeouts} final_runs={final_runs} secs={:.2}",
        cfg.live,
        nr - 1,
        hs.fresh,
        hs.spurious,
        cs.binds,
        cs.affinity,
        cs.affinity_in_flight,
        cs.moved_pending,
        cs.bulk_moves,
        cs.bulk_moved,
        cs.masks,
        cs.unmasks,
        cs.watches,
        cs.stuck,
        elapsed.as_secs_f64()
    );
    for (i, v) in vs.iter().enumerate() {
        println!(
            "  vcpu{i}: handled={} upcalls={} parks={}",
            v.h.handled, v.upcalls, v.parks
        );
    }

    assert_eq!(lost, 0, "lost events (C1)");
    assert_eq!(dropped, 0, "events left pending, never made reachable (C1)");
    assert_eq!(stale_links, 0, "queue state left after the drain");
    assert_eq!(hs.concurrent, 0, "concurrent handler runs (C3)");
    assert_eq!(lost_wakeups, 0, "lost wake-ups (C2)");
    assert_eq!(unexpected, 0, "unexpected errors from the control plane");
    assert_eq!(upcall_errors, 0, "upcall errors");
    assert_eq!(miscounted, 0, "handler runs made vs reported by upcall");
    assert_eq!(stale_ok, 0, "sends on closed lives succeeded (C6)");
    assert_eq!(hs.bad_port, 0, "handler runs for out-of-range ports");
    assert_eq!(bad_kicks, 0, "kicks for out-of-range vCPUs");
    assert!(sends >= total, "sends short of the quota");
    assert!(cs.closes > 0 && rebinds > 0, "no close/re-bind happened");
    assert!(
        cs.affinity > 0 && cs.masks > 0 && cs.priorities > 0,
        "no set_affinity/set_priority/mask happened"
    );
    // Miri's short run makes a few hundred control operations, among which
    // a bulk move (1 in 40) may not be.
    assert!(cfg!(miri) || cs.bulk_moved > 0, "no bulk move happened");
}
