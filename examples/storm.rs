//! The seed's story on real threads: an event storm on vCPU 0, then the same
//! storm spread over every vCPU by rebinding ports while events fly.
//!
//! ```text
//! cargo run --release --example storm [-- --abi fifo|2l|both --secs N --vcpus N]
//! ```
//!
//! `--abi` picks the event-channel ABI under the control plane: the 2-level
//! ABI, the FIFO ABI, or both one after the other (the default). The run is
//! the same generic code over `PortOps` for either. On FIFO the rebinder
//! also changes port priorities (0..=15) in the spread phase, so events
//! move between queues while they may still be linked.
//!
//! Threads: one per vCPU, each looping `upcall` and halting when idle (it
//! parks only after seeing no upcall pending; the `Notify` unparks it);
//! sender threads sending to the storm ports as fast as they can; one
//! rebinder thread. Two phases of equal length:
//!
//! 1. **storm** — every storm port is bound Xen-compatibly (`Bind::XenCompat`),
//!    so all of them, and each bind's spurious event, land on vCPU 0. The
//!    rebinder closes and re-binds ports the same way: they stay on vCPU 0.
//!    vCPU 0 takes all the load, and its upcall runs for as long as the
//!    storm lasts (the soft lockup of the seed).
//! 2. **spread** — the rebinder moves the ports round-robin over the vCPUs
//!    with `set_affinity`, and keeps rotating them while events fly; ports
//!    it closes are re-bound atomically to their vCPU (`Bind::Affinity`).
//!
//! For each phase it prints, per vCPU, the handler runs and their share and
//! the longest single upcall, and the events handled per second. At the end
//! it checks, as `tests/stress.rs` does, that no event was lost and no
//! handler ever ran on two vCPUs at once, and exits non-zero otherwise.

use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::*};
use std::sync::OnceLock;
use std::thread::{self, Scope, ScopedJoinHandle, Thread};
use std::time::{Duration, Instant};

use evtchn::{
    Bind, Channels, Error, Fifo, Notify, OwnedFifo, OwnedMemory, Port, PortOps, TwoLevel,
};

/// Ports in the storm.
const STORM_PORTS: usize = 32;
/// Sender threads.
const SENDERS: usize = 2;
/// Safety-net timeout of a halted vCPU (kicks wake it; this only bounds the
/// damage of a lost one, which is counted).
const PARK_TIMEOUT: Duration = Duration::from_millis(20);
/// Time a vCPU that timed out with work pending waits for a kick still on
/// its way before calling the wake-up lost.
const KICK_GRACE: Duration = Duration::from_secs(1);
/// The rebinder's pace.
const REBIND_EVERY: Duration = Duration::from_micros(200);

const USAGE: &str = "\
storm: an event storm on vCPU 0, then spread by rebinds while events fly

usage: cargo run --release --example storm [-- OPTIONS]

options:
  --abi A     fifo, 2l or both (default both: 2-level, then FIFO)
  --secs N    run time in seconds per ABI, split into two phases (default 6)
  --vcpus N   number of vCPU threads, at least 2 (default 4)
  --help      print this help";

/// The event-channel ABI a run drives.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Abi {
    TwoLevel,
    Fifo,
}

impl Abi {
    fn name(self) -> &'static str {
        match self {
            Abi::TwoLevel => "2-level",
            Abi::Fifo => "FIFO",
        }
    }
}

/// Command-line options.
struct Args {
    secs: u64,
    vcpus: usize,
    abis: Vec<Abi>,
}

/// Parses the command line by hand; `Err` carries the message to print.
fn parse_args() -> Result<Option<Args>, String> {
    let mut args = Args {
        secs: 6,
        vcpus: 4,
        abis: vec![Abi::TwoLevel, Abi::Fifo],
    };
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        let mut text = |name: &str| it.next().ok_or_else(|| format!("{name} needs a value"));
        let number = |name: &str, v: String| -> Result<u64, String> {
            v.parse()
                .map_err(|e| format!("{name} {v:?}: not a number ({e})"))
        };
        match a.as_str() {
            "--help" | "-h" => return Ok(None),
            "--secs" => args.secs = number("--secs", text("--secs")?)?,
            "--vcpus" => args.vcpus = number("--vcpus", text("--vcpus")?)? as usize,
            "--abi" => {
                args.abis = match text("--abi")?.to_ascii_lowercase().as_str() {
                    "fifo" => vec![Abi::Fifo],
                    "2l" | "2-level" | "twolevel" => vec![Abi::TwoLevel],
                    "both" => vec![Abi::TwoLevel, Abi::Fifo],
                    other => return Err(format!("--abi {other:?}: expected fifo, 2l or both")),
                }
            }
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    if args.secs == 0 || args.secs > 3600 {
        return Err("--secs must be in 1..=3600".into());
    }
    if !(2..=64).contains(&args.vcpus) {
        return Err("--vcpus must be in 2..=64".into());
    }
    Ok(Some(args))
}

/// Per-vCPU state shared with the kick hook and the main thread, on its own
/// cache lines.
#[repr(align(128))]
#[derive(Default)]
struct VcpuShared {
    thread: OnceLock<Thread>,
    /// Kicks received (incremented before the unpark).
    kicks: AtomicU64,
    /// Handler runs.
    handled: AtomicU64,
    /// Longest finished upcall in this phase, in nanoseconds.
    longest_ns: AtomicU64,
    /// Start of the upcall running now, in nanoseconds since `epoch` plus
    /// one; 0 when none runs (so that main sees an upcall that never ends).
    running_since: AtomicU64,
    /// Wake-ups that never came (C2).
    lost_wakeups: AtomicU64,
}

/// Accounting of one port number, as in `tests/stress.rs`: `sent` is
/// `generation << 32 | seq` of the last send claimed (before the send),
/// `seen` the highest value a handler observed, `inside` set while a
/// handler of the port runs.
#[derive(Default)]
struct Ledger {
    sent: AtomicU64,
    seen: AtomicU64,
    inside: AtomicBool,
}

const SEQ: u64 = 0xffff_ffff;

fn tag(p: Port) -> u64 {
    u64::from(p.generation()) << 32
}

/// Everything the threads share.
struct World {
    epoch: Instant,
    vcpus: Vec<VcpuShared>,
    ledger: Vec<Ledger>,
    /// Handler runs that found their port's handler already running (C3).
    concurrent: AtomicU64,
    /// Successful sends, per sender (each on its own line).
    sends: Vec<Padded>,
    /// Sends refused because the port was closed meanwhile.
    failed_sends: AtomicU64,
    /// 0: storm, 1: spread, 2: stop senders and rebinder.
    phase: AtomicUsize,
    stop_vcpus: AtomicBool,
    rebinds: AtomicU64,
    closes: AtomicU64,
    /// `set_affinity` calls.
    moves: AtomicU64,
    /// `set_priority` calls (FIFO run only).
    priorities: AtomicU64,
    /// Unexpected errors from the control plane.
    errors: AtomicU64,
}

#[repr(align(128))]
#[derive(Default)]
struct Padded(AtomicU64);

impl World {
    fn now_ns(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }
}

/// The kick hook: counts and unparks.
struct Kicker<'w>(&'w World);

impl Notify for Kicker<'_> {
    fn kick(&self, vcpu: u32) {
        if let Some(v) = self.0.vcpus.get(vcpu as usize) {
            v.kicks.fetch_add(1, SeqCst);
            if let Some(t) = v.thread.get() {
                t.unpark();
            }
        }
    }
}

/// The control plane over ABI `A`, kicking through the world `'w`.
type Ch<'w, A> = Channels<A, Kicker<'w>>;

/// xorshift64*.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Self {
        Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) % n
    }
}

/// The event handler: counts the run, checks C3, records what it observed.
fn handle(w: &World, vcpu: &VcpuShared, p: Port) {
    vcpu.handled.fetch_add(1, Relaxed);
    let Some(l) = w.ledger.get(p.number() as usize) else {
        return;
    };
    if l.inside.swap(true, AcqRel) {
        w.concurrent.fetch_add(1, Relaxed);
    }
    // Acquire: the core's clear of the pending bit synchronised with the
    // send, so this sees the sequence number claimed before it.
    let sent = l.sent.load(Acquire);
    if sent & !SEQ == tag(p) {
        l.seen.fetch_max(sent, AcqRel);
    }
    // A little work, as a real handler does.
    for _ in 0..64 {
        std::hint::spin_loop();
    }
    l.inside.store(false, Release);
}

/// One vCPU: the upcall loop with the idle protocol of C2.
fn run_vcpu<A: PortOps>(w: &World, ch: &Ch<'_, A>, id: u32) {
    let me = &w.vcpus[id as usize];
    let _ = me.thread.set(thread::current());
    let mut vcpu = ch.vcpu(id).expect("vCPU index is in range");
    loop {
        let t0 = w.now_ns();
        me.running_since.store(t0 + 1, Relaxed);
        if let Err(e) = vcpu.upcall(|p| handle(w, me, p)) {
            eprintln!("vcpu{id}: upcall failed: {e}");
            w.errors.fetch_add(1, Relaxed);
        }
        me.running_since.store(0, Relaxed);
        me.longest_ns
            .fetch_max(w.now_ns().saturating_sub(t0), Relaxed);
        if w.stop_vcpus.load(Acquire) {
            return;
        }
        // The kick count before the last look: a raise after that look
        // kicks after this read.
        let k0 = me.kicks.load(SeqCst);
        if vcpu.upcall_pending() {
            continue;
        }
        let parked = Instant::now();
        thread::park_timeout(PARK_TIMEOUT);
        if me.kicks.load(SeqCst) != k0 || parked.elapsed() < PARK_TIMEOUT || !vcpu.upcall_pending()
        {
            continue;
        }
        // Timed out with work pending and no kick: give a kick that may be
        // on its way time to arrive.
        let g0 = Instant::now();
        while me.kicks.load(SeqCst) == k0 && g0.elapsed() < KICK_GRACE {
            thread::sleep(Duration::from_millis(1));
        }
        if me.kicks.load(SeqCst) == k0 {
            me.lost_wakeups.fetch_add(1, Relaxed);
            eprintln!("vcpu{id}: lost wake-up");
        }
    }
}

/// One sender: sends to random storm ports as fast as it can until the
/// phase says stop, claiming a sequence number before each send.
fn run_sender<A: PortOps>(w: &World, ch: &Ch<'_, A>, id: usize) {
    let mut rng = Rng::new(0x5e2d + id as u64);
    // A re-bind takes the lowest free number, which may lie past the storm
    // ports while a closed one still finishes a handler: look a bit further.
    let span = STORM_PORTS as u64 + 8;
    let mut cache: Vec<Option<Port>> = vec![None; span as usize + 1];
    let mine = &w.sends[id].0;
    let mut n_ok = 0u64;
    while w.phase.load(Relaxed) < 2 {
        let n = 1 + rng.below(span) as usize;
        let p = match cache[n] {
            Some(p) => p,
            None => match ch.port(n as u32) {
                Ok(p) => *cache[n].insert(p),
                Err(_) => continue,
            },
        };
        let l = &w.ledger[n];
        let mut cur = l.sent.load(Acquire);
        let claimed = loop {
            if cur & !SEQ != tag(p) {
                break false;
            }
            match l.sent.compare_exchange_weak(cur, cur + 1, AcqRel, Acquire) {
                Ok(_) => break true,
                Err(now) => cur = now,
            }
        };
        if !claimed {
            cache[n] = None;
            continue;
        }
        match ch.send(p) {
            Ok(()) => {
                n_ok += 1;
                if n_ok % 64 == 0 {
                    mine.fetch_add(64, Relaxed);
                }
            }
            Err(Error::Stale | Error::NotBound) => {
                cache[n] = None;
                w.failed_sends.fetch_add(1, Relaxed);
            }
            Err(e) => {
                eprintln!("sender{id}: send({p:?}): {e}");
                w.errors.fetch_add(1, Relaxed);
            }
        }
    }
    mine.fetch_add(n_ok % 64, Relaxed);
}

/// Binds a storm port and resets its ledger for the new life.
fn bind<A: PortOps>(w: &World, ch: &Ch<'_, A>, mode: Bind) -> Option<Port> {
    match ch.bind(mode) {
        Ok(p) => {
            // Release: a sender that reads this tag sends on the new life.
            w.ledger[p.number() as usize].sent.store(tag(p), Release);
            Some(p)
        }
        Err(e) => {
            eprintln!("bind({mode:?}): {e}");
            w.errors.fetch_add(1, Relaxed);
            None
        }
    }
}

/// The rebinder. Storm phase: closes a port and re-binds it Xen-compatibly
/// (it lands on vCPU 0 again, with bind's spurious event). Spread phase:
/// moves each port to its round-robin vCPU, rotating the assignment all the
/// time, and re-binds closed ports atomically to their vCPU; with
/// `priorities` (the FIFO run) it also gives ports random priorities.
fn run_rebinder<A: PortOps>(
    w: &World,
    ch: &Ch<'_, A>,
    mut ports: Vec<Port>,
    priorities: bool,
) -> Vec<Port> {
    let mut rng = Rng::new(0xc0de);
    let vcpus = w.vcpus.len();
    let mut rotation = 0usize;
    let mut op = 0usize;
    loop {
        let phase = w.phase.load(Relaxed);
        if phase >= 2 {
            return ports;
        }
        op += 1;
        let i = rng.below(ports.len() as u64) as usize;
        if phase == 0 || op % 16 == 0 {
            // Close and re-bind: the handle changes, senders see `Stale`.
            match ch.close(ports[i]) {
                Ok(()) => {
                    w.closes.fetch_add(1, Relaxed);
                }
                Err(e) => {
                    eprintln!("close({:?}): {e}", ports[i]);
                    w.errors.fetch_add(1, Relaxed);
                }
            }
            let mode = if phase == 0 {
                Bind::XenCompat
            } else {
                Bind::Affinity(((i + rotation) % vcpus) as u32)
            };
            // The lowest free number: the one just closed, or another one
            // closed behind a handler still in flight.
            if let Some(p) = bind(w, ch, mode) {
                ports[i] = p;
                w.rebinds.fetch_add(1, Relaxed);
            }
        } else if priorities && op % 4 == 0 {
            // A new priority: the port's next event joins another queue,
            // while the last one may still be linked on the old queue.
            let prio = rng.below(16) as u8;
            match ch.set_priority(ports[i], prio) {
                Ok(()) => {
                    w.priorities.fetch_add(1, Relaxed);
                }
                Err(e) => {
                    eprintln!("set_priority({:?}, {prio}): {e}", ports[i]);
                    w.errors.fetch_add(1, Relaxed);
                }
            }
        } else {
            // Rotate: every pass over the ports shifts the assignment by one.
            if op % ports.len() == 0 {
                rotation += 1;
            }
            let v = ((i + rotation) % vcpus) as u32;
            match ch.set_affinity(ports[i], v) {
                Ok(()) => {
                    w.moves.fetch_add(1, Relaxed);
                }
                Err(e) => {
                    eprintln!("set_affinity({:?}, {v}): {e}", ports[i]);
                    w.errors.fetch_add(1, Relaxed);
                }
            }
        }
        thread::sleep(REBIND_EVERY);
    }
}

/// Stops every thread when dropped: senders and rebinder by the phase, the
/// vCPUs by their flag and an unpark.
struct StopAll<'w>(&'w World);

impl Drop for StopAll<'_> {
    fn drop(&mut self) {
        self.0.phase.store(2, Relaxed);
        self.0.stop_vcpus.store(true, Release);
        for v in &self.0.vcpus {
            if let Some(t) = v.thread.get() {
                t.unpark();
            }
        }
    }
}

/// Spawns a named scoped thread.
fn spawn<'s, 'e, T: Send + 's>(
    s: &'s Scope<'s, 'e>,
    name: String,
    f: impl FnOnce() -> T + Send + 's,
) -> ScopedJoinHandle<'s, T> {
    thread::Builder::new()
        .name(name)
        .spawn_scoped(s, f)
        .expect("cannot spawn a thread")
}

/// What main samples at a phase boundary.
struct Snapshot {
    at: Instant,
    handled: Vec<u64>,
    sends: u64,
}

fn snapshot(w: &World) -> Snapshot {
    Snapshot {
        at: Instant::now(),
        handled: w.vcpus.iter().map(|v| v.handled.load(Relaxed)).collect(),
        sends: w.sends.iter().map(|s| s.0.load(Relaxed)).sum(),
    }
}

/// The longest upcall of each vCPU since the last call (an upcall still
/// running counts with its length so far), and starts a new period.
fn take_longest(w: &World) -> Vec<Duration> {
    let now = w.now_ns();
    w.vcpus
        .iter()
        .map(|v| {
            let done = v.longest_ns.swap(0, Relaxed);
            let since = v.running_since.load(Relaxed);
            let running = if since == 0 {
                0
            } else {
                now.saturating_sub(since - 1)
            };
            Duration::from_nanos(done.max(running))
        })
        .collect()
}

/// Prints a phase's table; returns the events handled per second.
fn report(title: &str, from: &Snapshot, to: &Snapshot, longest: &[Duration]) -> f64 {
    let secs = to.at.duration_since(from.at).as_secs_f64().max(1e-9);
    let handled: Vec<u64> = to
        .handled
        .iter()
        .zip(&from.handled)
        .map(|(a, b)| a - b)
        .collect();
    let total: u64 = handled.iter().sum();
    println!("{title}");
    println!("  vcpu     handled   share  longest upcall");
    for (i, (h, l)) in handled.iter().zip(longest).enumerate() {
        let share = if total == 0 {
            0.0
        } else {
            100.0 * *h as f64 / total as f64
        };
        println!("  {i:>4} {h:>11} {share:>6.1}%  {l:>14.3?}");
    }
    let sends = to.sends - from.sends;
    println!(
        "  events handled: {:.2} M/s   sends: {:.2} M/s ({:.0}% coalesced)",
        total as f64 / secs / 1e6,
        sends as f64 / secs / 1e6,
        if sends == 0 {
            0.0
        } else {
            100.0 * (1.0 - (total as f64 / sends as f64).min(1.0))
        }
    );
    total as f64 / secs
}

/// What one run ends with.
struct Outcome {
    abi: Abi,
    lost: u64,
    concurrent: u64,
    lost_wakeups: u64,
    errors: u64,
    /// Events handled per second in the storm and the spread phase.
    rates: [f64; 2],
}

impl Outcome {
    fn ok(&self) -> bool {
        self.lost == 0 && self.concurrent == 0 && self.lost_wakeups == 0 && self.errors == 0
    }
}

fn main() -> ExitCode {
    let args = match parse_args() {
        Ok(Some(a)) => a,
        Ok(None) => {
            println!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Err(msg) => {
            eprintln!("storm: {msg}\n\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    let mut outcomes = Vec::new();
    for (i, &abi) in args.abis.iter().enumerate() {
        if i > 0 {
            println!();
        }
        println!(
            "==================== {} ABI ====================",
            abi.name()
        );
        // 64 port numbers (63 usable), more than the storm needs.
        let run = match abi {
            Abi::TwoLevel => storm(&args, abi, TwoLevel::new(OwnedMemory::new(1, args.vcpus))),
            Abi::Fifo => storm(&args, abi, Fifo::new(OwnedFifo::new(64, args.vcpus))),
        };
        match run {
            Ok(o) => outcomes.push(o),
            Err(msg) => {
                eprintln!("storm ({}): {msg}", abi.name());
                return ExitCode::FAILURE;
            }
        }
    }
    if outcomes.len() > 1 {
        println!("\nsummary");
        println!("  abi      storm M/s  spread M/s  lost  concurrent  lost_wakeups  errors");
        for o in &outcomes {
            println!(
                "  {:<7} {:>10.2} {:>11.2} {:>5} {:>11} {:>13} {:>7}",
                o.abi.name(),
                o.rates[0] / 1e6,
                o.rates[1] / 1e6,
                o.lost,
                o.concurrent,
                o.lost_wakeups,
                o.errors
            );
        }
    }
    if outcomes.iter().all(Outcome::ok) {
        ExitCode::SUCCESS
    } else {
        eprintln!("storm: contract violated");
        ExitCode::FAILURE
    }
}

/// One run of both phases over `ops`; `Err` if it could not run to the end.
fn storm<A: PortOps>(args: &Args, abi: Abi, ops: A) -> Result<Outcome, String> {
    let phase_len = Duration::from_millis(args.secs * 500);

    let world = World {
        epoch: Instant::now(),
        vcpus: (0..args.vcpus).map(|_| VcpuShared::default()).collect(),
        ledger: (0..64).map(|_| Ledger::default()).collect(),
        concurrent: AtomicU64::new(0),
        sends: (0..SENDERS).map(|_| Padded::default()).collect(),
        failed_sends: AtomicU64::new(0),
        phase: AtomicUsize::new(0),
        stop_vcpus: AtomicBool::new(false),
        rebinds: AtomicU64::new(0),
        closes: AtomicU64::new(0),
        moves: AtomicU64::new(0),
        priorities: AtomicU64::new(0),
        errors: AtomicU64::new(0),
    };
    let w = &world;
    let ch: Ch<'_, A> = Channels::new(ops, Kicker(w));
    let ch = &ch;
    if ch.nr_ports() as usize > w.ledger.len() {
        return Err("more ports than ledger slots".into());
    }

    println!(
        "storm: {} ABI, {} vCPUs, {SENDERS} senders, {STORM_PORTS} ports, {} s ({:?} per phase)\n",
        abi.name(),
        args.vcpus,
        args.secs,
        phase_len
    );

    let outcome = thread::scope(|s| {
        // Whichever way this closure ends (an early error, a panic), the
        // other threads stop, or the scope would wait for them forever.
        let _guard = StopAll(w);
        let vcpu_threads: Vec<_> = (0..args.vcpus as u32)
            .map(|id| spawn(s, format!("vcpu{id}"), move || run_vcpu(w, ch, id)))
            .collect();

        // The storm ports: Xen-compatible binds, all on vCPU 0.
        let ports: Vec<Port> = (0..STORM_PORTS)
            .filter_map(|_| bind(w, ch, Bind::XenCompat))
            .collect();
        if ports.len() != STORM_PORTS {
            return Err("could not bind the storm ports".to_string());
        }
        let priorities = abi == Abi::Fifo;
        let rebinder = spawn(s, "rebinder".into(), move || {
            run_rebinder(w, ch, ports, priorities)
        });
        let senders: Vec<_> = (0..SENDERS)
            .map(|i| spawn(s, format!("sender{i}"), move || run_sender(w, ch, i)))
            .collect();

        // Phase 1: the storm on vCPU 0.
        let s0 = snapshot(w);
        take_longest(w);
        thread::sleep(phase_len);
        let s1 = snapshot(w);
        let l1 = take_longest(w);
        // Phase 2: spread by rebinds while events fly.
        w.phase.store(1, Relaxed);
        thread::sleep(phase_len);
        let s2 = snapshot(w);
        let l2 = take_longest(w);
        let storm_rate = report(
            "phase 1 — storm: all ports bound Xen-compatibly, on vCPU 0 (re-binds stay there)",
            &s0,
            &s1,
            &l1,
        );
        println!();
        let spread_rate = report(
            if priorities {
                "phase 2 — spread: ports moved round-robin by set_affinity, rotating while events \
                 fly, and given random priorities"
            } else {
                "phase 2 — spread: ports moved round-robin by set_affinity, rotating while events fly"
            },
            &s1,
            &s2,
            &l2,
        );

        // Quiesce: senders and rebinder stop, the vCPUs drain, then final
        // upcalls until no upcall is pending anywhere.
        w.phase.store(2, Relaxed);
        for t in senders {
            t.join().map_err(|_| "a sender panicked".to_string())?;
        }
        rebinder
            .join()
            .map_err(|_| "the rebinder panicked".to_string())?;
        let drain = Instant::now();
        while (0..args.vcpus as u32).any(|v| ch.upcall_pending(v).unwrap_or(true))
            && drain.elapsed() < Duration::from_secs(5)
        {
            thread::sleep(Duration::from_millis(5));
        }
        w.stop_vcpus.store(true, Release);
        for v in &w.vcpus {
            if let Some(t) = v.thread.get() {
                t.unpark();
            }
        }
        for t in vcpu_threads {
            t.join().map_err(|_| "a vCPU thread panicked".to_string())?;
        }
        let mut handles: Vec<_> = (0..args.vcpus as u32)
            .filter_map(|v| ch.vcpu(v).ok())
            .collect();
        for _round in 0..1000 {
            for (v, h) in handles.iter_mut().enumerate() {
                if let Err(e) = h.upcall(|p| handle(w, &w.vcpus[v], p)) {
                    return Err(format!("final upcall on vcpu{v}: {e}"));
                }
            }
            if !handles.iter().any(|h| h.upcall_pending()) {
                return Ok([storm_rate, spread_rate]);
            }
        }
        Err("upcalls still pending after 1000 final rounds".to_string())
    });
    let rates = outcome?;

    // C1: every bound port's last send was observed by a handler, and none
    // is left pending (a pending one was raised but never made reachable:
    // dropped; it counts as lost too).
    let mut lost = 0u64;
    let mut dropped = 0u64;
    for n in 1..ch.nr_ports() {
        let Ok(p) = ch.port(n) else { continue };
        let Some(l) = w.ledger.get(n as usize) else {
            continue;
        };
        let (sent, seen) = (l.sent.load(Acquire), l.seen.load(Acquire));
        if sent & !SEQ == tag(p) && sent & SEQ != 0 && seen < sent {
            let missed = (sent & SEQ) - (seen.max(tag(p)) & SEQ);
            eprintln!("port {n}: {missed} send(s) never observed");
            lost += missed;
        }
        if ch.status(n).map_or(true, |s| s.pending) {
            eprintln!("port {n}: still pending after quiescing");
            lost += 1;
            dropped += 1;
        }
    }
    let concurrent = w.concurrent.load(Relaxed);
    let lost_wakeups: u64 = w.vcpus.iter().map(|v| v.lost_wakeups.load(Relaxed)).sum();
    let errors = w.errors.load(Relaxed);
    let sends: u64 = w.sends.iter().map(|s| s.0.load(Relaxed)).sum();
    let handled: u64 = w.vcpus.iter().map(|v| v.handled.load(Relaxed)).sum();
    println!(
        "\nchecks: lost={lost} concurrent={concurrent} dropped={dropped} \
         lost_wakeups={lost_wakeups} errors={errors}"
    );
    println!(
        "        (sends={sends} failed_sends={} handled={handled} set_affinity={} \
         set_priority={} closes={} rebinds={})",
        w.failed_sends.load(Relaxed),
        w.moves.load(Relaxed),
        w.priorities.load(Relaxed),
        w.closes.load(Relaxed),
        w.rebinds.load(Relaxed)
    );
    Ok(Outcome {
        abi,
        lost,
        concurrent,
        lost_wakeups,
        errors,
        rates,
    })
}
