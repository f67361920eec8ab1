//! The harness of the loom models of the evtchn core (`mod harness;` in
//! each model).
//!
//! The models live in `tests/`, one file per scenario; they drive the
//! *real* core (`evtchn::Channels` over `evtchn::TwoLevel` or `evtchn::Fifo`),
//! built with `--cfg loom` so that every atomic, fence and lock of the core
//! is loom's. Run them, at the workspace root, with
//!
//! ```text
//! RUSTFLAGS="--cfg loom" cargo test
//! ```
//!
//! (preemption bound 2 unless `LOOM_MAX_PREEMPTIONS` says otherwise).
//!
//! The tiny instance: one pending word (64 ports), two vCPUs, each a loom
//! thread that halts until kicked: it runs an upcall, and parks only after
//! it saw no upcall pending; the `Notify` hook unparks it. A lost wake-up
//! therefore leaves a vCPU parked forever, which loom reports as a deadlock;
//! a lost event leaves the model's "every send observed" condition unmet,
//! which ends the same way.
#![cfg(loom)]
// Every model uses part of the harness.
#![allow(dead_code)]

use std::sync::Mutex as StdMutex;

use evtchn::{
    Channels, Deliver, Delivery, Fifo, GuestUnmask, Host, OwnedFifo, OwnedMemory, Port, PortOps,
    TwoLevel, Weaken,
};
use loom::cell::UnsafeCell;
use loom::sync::atomic::{AtomicBool, AtomicU32, AtomicUsize, Ordering::*};
// Ghost state: what the checks record (a handler inside, runs, sends
// observed, the end of the run). Loom runs every model thread on one OS
// thread, so a `std` atomic is exact there and invisible to loom: it adds no
// happens-before edge of its own, and every ordering a check relies on must
// come from the core. (Loom atomics here, even `Relaxed` RMWs, would order
// successive handler runs by themselves and hide a weakened guard.)
use std::sync::atomic::AtomicBool as GhostBool;
// `std` Arc, not loom's: when loom reports a deadlock it unwinds with no
// active thread, and dropping a loom Arc then would abort the process.
use loom::thread::{self, JoinHandle, Thread};
use std::sync::Arc;
pub mod domains;

/// The 2-level ABI of the models: one pending word (64 ports).
pub type TwoL = TwoLevel<OwnedMemory>;
/// The FIFO ABI of the models: one page of 8 event words (ports 1..7; port
/// 0 is reserved).
pub type FifoAbi = Fifo<OwnedFifo>;

/// An ABI a model can build, plain or with one step weakened.
pub trait Abi: PortOps + Send + Sync + 'static {
    /// The ABI for `cfg`.
    fn build(cfg: &Config) -> Self;
}

impl Abi for TwoL {
    fn build(cfg: &Config) -> Self {
        let mem = OwnedMemory::new(cfg.words, VCPUS);
        match cfg.weaken {
            Some(w) => TwoLevel::weakened(mem, w),
            None => TwoLevel::new(mem),
        }
    }
}

impl Abi for FifoAbi {
    fn build(cfg: &Config) -> Self {
        let mem = OwnedFifo::new(8, VCPUS);
        match cfg.weaken {
            Some(w) => Fifo::weakened(mem, w),
            None => Fifo::new(mem),
        }
    }
}

/// Number of vCPUs of every model.
pub const VCPUS: usize = 2;

/// The `Notify` hook: unparks the thread running the kicked vCPU and logs
/// the kick with the loom thread that caused it.
///
/// The registry is a `std` mutex: loom runs all model threads on one OS
/// thread and never switches inside this critical section (it contains no
/// loom operation), so it neither blocks nor adds states to explore.
#[derive(Default)]
pub struct Kicker {
    threads: StdMutex<Vec<Option<Thread>>>,
    log: StdMutex<Vec<(thread::ThreadId, u32)>>,
}

/// The event trace of the current interleaving (kicks, upcalls, handler
/// runs, parks), printed when a model fails: the interleaving loom found.
static TRACE: StdMutex<Vec<String>> = StdMutex::new(Vec::new());

/// Appends `s` to the trace, tagged with the loom thread.
pub fn tr(s: String) {
    if let Ok(mut t) = TRACE.lock() {
        t.push(format!("{:?} {}", thread::current().id(), s));
    }
}

impl evtchn::Notify for Kicker {
    fn kick(&self, vcpu: u32) {
        tr(format!("kick {vcpu}"));
        if let Ok(mut log) = self.log.lock() {
            log.push((thread::current().id(), vcpu));
        }
        let t = self
            .threads
            .lock()
            .ok()
            .and_then(|ts| ts.get(vcpu as usize).cloned().flatten());
        if let Some(t) = t {
            t.unpark();
        }
    }
}

impl Kicker {
    fn register(&self, vcpu: usize, t: Thread) {
        if let Ok(mut ts) = self.threads.lock() {
            if ts.len() <= vcpu {
                ts.resize(vcpu + 1, None);
            }
            ts[vcpu] = Some(t);
        }
    }

    fn wake_all(&self) {
        let ts: Vec<Thread> = match self.threads.lock() {
            Ok(ts) => ts.iter().flatten().cloned().collect(),
            Err(_) => Vec::new(),
        };
        for t in ts {
            t.unpark();
        }
    }

    /// vCPUs kicked by the calling loom thread so far.
    pub fn kicks_by_me(&self) -> Vec<u32> {
        let me = thread::current().id();
        self.log
            .lock()
            .map(|l| {
                l.iter()
                    .filter(|(t, _)| *t == me)
                    .map(|(_, v)| *v)
                    .collect()
            })
            .unwrap_or_default()
    }
}

/// A sender flag any port's handler may observe (see [`Config::sends`]).
pub const ANY: u32 = u32::MAX;

/// Per-port-number probe: what handlers saw, checked by the models.
pub struct Probe {
    /// Runs per generation (life), readable while other vCPUs run.
    life_runs: [AtomicUsize; 4],
    /// Set on handler entry, cleared on exit: two at once is a C3 breach.
    inside: GhostBool,
    /// Handler-private data: written by every run, so that two runs not
    /// ordered by happens-before are a data race loom reports.
    data: UnsafeCell<Runs>,
}

// SAFETY: `data` is written only inside a handler run of its port, which the
// core's in-flight guard serialises and orders by happens-before (the very
// property under test: loom's `UnsafeCell` reports any two accesses that are
// not so ordered), and read only after every model thread was joined.
unsafe impl Sync for Probe {}

impl Probe {
    /// A probe that saw no run.
    fn new() -> Self {
        Probe {
            life_runs: core::array::from_fn(|_| AtomicUsize::new(0)),
            inside: GhostBool::new(false),
            data: UnsafeCell::new(Runs::default()),
        }
    }
}

/// What the handler runs of one port recorded.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Runs {
    /// Runs per vCPU.
    pub per_vcpu: [usize; VCPUS],
    /// Runs per generation (life) of the port number, index = generation.
    pub per_life: [usize; 4],
    /// Per sender slot: whether some run observed that sender's flag.
    pub observed: [bool; 4],
}

/// The model world: the core, the probes, the sends to observe.
pub struct World<A: Abi = TwoL> {
    /// The core under test.
    pub ch: Channels<A, Kicker>,
    probes: Vec<Probe>,
    /// Sender flags: a sender sets its flag, then sends; a handler run
    /// records every flag it sees (the "observed that send" of C1).
    flags: Vec<AtomicBool>,
    /// Flag `k` must be observed by a handler run of port `expect[k]`
    /// before the vCPUs may stop.
    expect: Vec<u32>,
    gates: Vec<AtomicBool>,
    /// Flag `k` was observed by its port's handler.
    observed: Vec<GhostBool>,
    done: GhostBool,
    expect_done: bool,
    budget: Option<usize>,
    fresh_handles: bool,
    /// The first handler run panics (see [`Config::panic_once`]).
    panic_once: bool,
    panic_armed: GhostBool,
}

/// The message of the handler panic that [`Config::panic_once`] asks for;
/// the vCPU loops catch exactly this one and let every other panic through.
pub const DELIBERATE: &str = "deliberate handler panic";

/// Builder options of a [`World`].
pub struct Config {
    /// Pending words (64 ports each).
    pub words: usize,
    /// The weakened protective step, if any.
    pub weaken: Option<Weaken>,
    /// Gate flags: a handler may start only once every gate is open (the
    /// model opens a gate just before the call that may allow it).
    pub gates: usize,
    /// Sender flags the vCPUs wait for: flag `k` must be observed by a
    /// handler run of port number `sends[k]`, or of any port if it is
    /// [`ANY`] (binds hand out the lowest free number, so a model knows its
    /// numbers).
    pub sends: Vec<u32>,
    /// Handler runs per upcall (`Vcpu::upcall_budget`); unbounded if `None`.
    pub budget: Option<usize>,
    /// The vCPU loops take a fresh `Vcpu` handle for every upcall (a
    /// dropped handle must strand nothing).
    pub fresh_handles: bool,
    /// The first handler run of the world panics before it records
    /// anything; the vCPU loop catches the panic (`catch_unwind`, as a std
    /// VMM does) and goes on. The event that run took is consumed.
    pub panic_once: bool,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            words: 1,
            weaken: None,
            gates: 0,
            sends: Vec::new(),
            budget: None,
            fresh_handles: false,
            panic_once: false,
        }
    }
}

impl World<TwoL> {
    /// A 2-level world with `cfg`.
    pub fn new(cfg: Config) -> Arc<World<TwoL>> {
        World::build(cfg)
    }
}

impl World<FifoAbi> {
    /// A FIFO world with `cfg`.
    pub fn fifo(cfg: Config) -> Arc<World<FifoAbi>> {
        World::build(cfg)
    }
}

impl<A: Abi> World<A> {
    /// A world over ABI `A` with `cfg`.
    pub fn build(cfg: Config) -> Arc<World<A>> {
        let abi = A::build(&cfg);
        let ch = match cfg.weaken {
            Some(w) => Channels::weakened(abi, Kicker::default(), w),
            None => Channels::new(abi, Kicker::default()),
        };
        let ports = ch.nr_ports() as usize;
        Arc::new(World {
            ch,
            probes: (0..ports).map(|_| Probe::new()).collect(),
            flags: cfg.sends.iter().map(|_| AtomicBool::new(false)).collect(),
            observed: cfg.sends.iter().map(|_| GhostBool::new(false)).collect(),
            gates: (0..cfg.gates).map(|_| AtomicBool::new(false)).collect(),
            done: GhostBool::new(cfg.sends.is_empty()),
            expect_done: !cfg.sends.is_empty(),
            expect: cfg.sends,
            budget: cfg.budget,
            fresh_handles: cfg.fresh_handles,
            panic_once: cfg.panic_once,
            panic_armed: GhostBool::new(cfg.panic_once),
        })
    }

    /// Marks sender flag `k` as sent (before the send itself).
    pub fn flag(&self, k: usize) {
        // Relaxed: the core's raise (Release) and clear (Acquire) must carry
        // it to the handler; that is what the models check.
        self.flags[k].store(true, Relaxed);
    }

    /// The handler every model uses: checks C3 and records the run.
    pub fn handle(&self, vcpu: u32, port: Port) {
        let probe = &self.probes[port.number() as usize];
        // Ghost (see the imports): two handlers inside at once is the breach.
        assert!(
            !probe.inside.swap(true, Relaxed),
            "C3: handler of port {} entered on vCPU {} while running elsewhere",
            port.number(),
            vcpu
        );
        for (g, gate) in self.gates.iter().enumerate() {
            // Relaxed: opened before the control-plane call whose Release
            // update the handler's start (an Acquire compare-exchange) saw;
            // only the core's edge may make it visible.
            assert!(
                gate.load(Relaxed),
                "C4: handler of port {} started while mask reason {} remained",
                port.number(),
                g
            );
        }
        tr(format!("handle v{vcpu} port {}", port.number()));
        let number = port.number();
        let seen: Vec<bool> = self
            .flags
            .iter()
            .zip(&self.expect)
            .map(|(f, &want)| (want == number || want == ANY) && f.load(Relaxed))
            .collect();
        probe.data.with_mut(|d| {
            // SAFETY: the in-flight guard serialises handler runs of a port
            // and orders them by happens-before; loom reports a race if not.
            let d = unsafe { &mut *d };
            d.per_vcpu[vcpu as usize] += 1;
            let life = (port.generation() as usize).min(3);
            d.per_life[life] += 1;
            // Release: a thread that waits for a run (Acquire) acts after
            // it, as an owner told by its handler would. Not Acquire: runs
            // of the handler are not ordered by this counter.
            probe.life_runs[life].fetch_add(1, Release);
            for (k, s) in seen.iter().enumerate() {
                d.observed[k] |= *s;
            }
        });
        for (k, s) in seen.iter().enumerate() {
            if *s {
                self.observed[k].store(true, Relaxed);
            }
        }
        let all = self.observed.iter().all(|o| o.load(Relaxed));
        probe.inside.store(false, Relaxed);
        if all && self.expect_done {
            // Ghost: read by the vCPU loops before they park.
            self.done.store(true, Relaxed);
            self.ch.notifier().wake_all();
        }
    }

    /// Opens gate `g`.
    pub fn open(&self, g: usize) {
        // Relaxed: a handler may see it only through the core's edge from
        // the control-plane call that follows.
        self.gates[g].store(true, Relaxed);
    }

    /// Closes gate `g` again.
    pub fn close_gate(&self, g: usize) {
        // Relaxed: as in `open`.
        self.gates[g].store(false, Relaxed);
    }

    /// Handler runs so far of the life of `port` (any thread, any time).
    pub fn life_runs(&self, port: Port) -> usize {
        let life = (port.generation() as usize).min(3);
        self.probes[port.number() as usize].life_runs[life].load(Acquire)
    }

    /// Runs upcalls on every vCPU from the calling thread until none is
    /// pending: the final drain after the model threads were joined.
    pub fn drain(&self) {
        let mut cpus: Vec<_> = (0..VCPUS as u32)
            .map(|v| self.ch.vcpu(v).expect("vCPU in range"))
            .collect();
        loop {
            let mut any = false;
            for cpu in &mut cpus {
                let v = cpu.id();
                cpu.upcall(|p| self.handle(v, p)).expect("upcall");
                any |= cpu.upcall_pending();
            }
            if !any {
                break;
            }
        }
    }

    /// Runs of port `number` (call after every vCPU joined).
    pub fn runs(&self, number: u32) -> Runs {
        self.probes[number as usize]
            .data
            // SAFETY: called after the vCPU threads were joined.
            .with(|d| unsafe { (*d).clone() })
    }

    /// Whether every expected send was observed.
    pub fn done(&self) -> bool {
        self.done.load(Relaxed)
    }
}

/// Spawns vCPU `v`: a halt-until-kicked upcall loop that stops once every
/// expected send was observed. Returns its join handle; the thread is
/// registered with the kicker before this returns.
pub fn spawn_vcpu<A: Abi>(world: &Arc<World<A>>, v: u32) -> JoinHandle<()> {
    let w = world.clone();
    let h = thread::spawn(move || {
        let mut cpu = w.ch.vcpu(v).expect("vCPU in range");
        loop {
            if w.fresh_handles {
                cpu = w.ch.vcpu(v).expect("vCPU in range");
            }
            tr(format!("upcall v{v} start"));
            let handler = |p: Port| {
                // Ghost: the one panic of the world, whichever vCPU runs
                // the first handler.
                if w.panic_once && w.panic_armed.swap(false, Relaxed) {
                    tr(format!("panic v{v} port {}", p.number()));
                    panic!("{DELIBERATE}");
                }
                w.handle(v, p)
            };
            let run = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| match w.budget {
                Some(b) => cpu.upcall_budget(b, handler),
                None => cpu.upcall(handler),
            }));
            match run {
                Ok(r) => {
                    r.expect("upcall");
                }
                Err(e) if is_deliberate(&*e) => tr(format!("upcall v{v} unwound")),
                Err(e) => std::panic::resume_unwind(e),
            }
            tr(format!("upcall v{v} end pending={}", cpu.upcall_pending()));
            if w.done() {
                break;
            }
            if !cpu.upcall_pending() {
                // Halt until kicked (a kick before the park is kept as the
                // unpark token, so it is not lost).
                tr(format!("park v{v}"));
                thread::park();
                tr(format!("unparked v{v}"));
            }
        }
    });
    world.ch.notifier().register(v as usize, h.thread().clone());
    h
}

/// Whether a panic's payload is the [`DELIBERATE`] one.
fn is_deliberate(payload: &(dyn std::any::Any + Send)) -> bool {
    payload
        .downcast_ref::<String>()
        .is_some_and(|m| m == DELIBERATE)
}

/// Spawns both vCPUs.
pub fn spawn_vcpus<A: Abi>(world: &Arc<World<A>>) -> Vec<JoinHandle<()>> {
    (0..VCPUS as u32).map(|v| spawn_vcpu(world, v)).collect()
}

/// Joins all handles, propagating a panic of any.
pub fn join_all(hs: Vec<JoinHandle<()>>) {
    for h in hs {
        h.join().expect("model thread panicked");
    }
}

/// Runs `f` under loom with the suite's bounds: `LOOM_MAX_PREEMPTIONS`
/// from the environment (the suite sets 2), or `default_preemptions`.
pub fn model<F>(default_preemptions: usize, f: F)
where
    F: Fn() + Sync + Send + 'static,
{
    std::panic::set_hook(Box::new(|info| {
        // loom's coroutines unwind with internal panics; only report ours,
        // and not the deliberate handler panic the vCPU loops catch.
        if info
            .location()
            .is_some_and(|l| l.file().contains("/generator-"))
            || is_deliberate(info.payload())
        {
            return;
        }
        eprintln!("{info}");
        if let Ok(t) = TRACE.lock() {
            eprintln!("trace of the failing interleaving:");
            for line in t.iter() {
                eprintln!("  {line}");
            }
        }
    }));
    let mut b = loom::model::Builder::new();
    if b.preemption_bound.is_none() {
        b.preemption_bound = Some(default_preemptions);
    }
    let runs = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = runs.clone();
    let started = std::time::Instant::now();
    b.check(move || {
        counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        if let Ok(mut t) = TRACE.lock() {
            t.clear();
        }
        f()
    });
    eprintln!(
        "loom: {} explored {} interleavings in {:.2?}",
        std::thread::current().name().unwrap_or("model"),
        runs.load(std::sync::atomic::Ordering::Relaxed),
        started.elapsed()
    );
}

/// The rebind-in-flight scenario (docs/DESIGN.md §6, S3 and S6): an event is pending on
/// vCPU 0 when a rebinder moves the port to vCPU 1 and then sends again,
/// while both vCPUs run upcalls. Checks C1 (both sends observed), C5 (at
/// most one run on vCPU 0; the send after `set_affinity` kicks only vCPU 1)
/// and, through the handler probe, C3.
pub fn rebind_in_flight_scenario(weaken: Option<Weaken>) {
    rebind_in_flight_scenario_on::<TwoL>(weaken);
}

/// [`rebind_in_flight_scenario`] over ABI `A`.
pub fn rebind_in_flight_scenario_on<A: Abi>(weaken: Option<Weaken>) {
    model(2, move || {
        let w = World::<A>::build(Config {
            weaken,
            sends: vec![1, 1],
            ..Config::default()
        });
        let p = w.ch.bind(evtchn::Bind::Affinity(0)).expect("bind");
        w.flag(0);
        w.ch.send(p).expect("send");
        let vcpus = spawn_vcpus(&w);
        let r = w.clone();
        let rebinder = thread::spawn(move || {
            r.ch.set_affinity(p, 1).expect("set_affinity");
            let before = r.ch.notifier().kicks_by_me().len();
            r.flag(1);
            r.ch.send(p).expect("send");
            let kicks = r.ch.notifier().kicks_by_me();
            assert!(
                kicks[before..].iter().all(|&v| v == 1),
                "C5: a send after set_affinity kicked {kicks:?}"
            );
        });
        rebinder.join().expect("rebinder");
        join_all(vcpus);
        let r = w.runs(p.number());
        assert!(
            r.observed[0] && r.observed[1],
            "C1: a send was never observed"
        );
        assert!(
            r.per_vcpu[0] <= 1,
            "C5: {} runs on the old vCPU",
            r.per_vcpu[0]
        );
    });
}

/// Scenario 8 over ABI `A`: an event is pending on vCPU 0 when another
/// thread closes the port, binds again (to vCPU 1) and sends on the new
/// port. Checks C6 (no old-life run once the guard is seen released; the new
/// life runs exactly once) and, through the probe, C3 across lives.
pub fn close_scenario_on<A: Abi>(weaken: Option<Weaken>) {
    model(2, move || {
        let w = World::<A>::build(Config {
            weaken,
            sends: vec![ANY],
            ..Config::default()
        });
        let old = w.ch.bind(evtchn::Bind::Affinity(0)).expect("bind");
        w.ch.send(old).expect("send");
        let vcpus = spawn_vcpus(&w);
        let c = w.clone();
        let closer = thread::spawn(move || {
            c.ch.close(old).expect("close");
            // Once the guard is seen released, the old life is over.
            let over = !c.ch.status(old.number()).expect("status").in_flight;
            let snapshot = over.then(|| c.life_runs(old));
            assert_eq!(c.ch.send(old), Err(evtchn::Error::NotBound));
            let new = c.ch.bind(evtchn::Bind::Affinity(1)).expect("bind");
            c.flag(0);
            c.ch.send(new).expect("send");
            (snapshot, new)
        });
        let (snapshot, new) = closer.join().expect("closer");
        join_all(vcpus);
        w.drain();
        if let Some(n) = snapshot {
            assert_eq!(w.life_runs(old), n, "C6: the old life ran after close");
        }
        assert_eq!(
            w.life_runs(new),
            1,
            "C6: new life ran {} times",
            w.life_runs(new)
        );
    });
}

// ---------------------------------------------------------------------------
// Models of the hypervisor side alone (s17, s18).

/// What the model guest of a [`HostWorld`] does with a pending event that
/// its upcall on vCPU `v` finds for a port it has bound to another vCPU.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OnForeign {
    /// Leaves it, handler not run: Linux's 2-level scan, which sees only
    /// the ports of its per-CPU `cpu_evtchn_mask` (the selector bit is
    /// consumed, the event stays pending); on FIFO, the entry is taken off
    /// the queue and dropped.
    Skip,
    /// Runs its handler here: Linux's FIFO `consume_one`, which does not
    /// look at the binding.
    RunHere,
}

/// Builder options of a [`HostWorld`].
pub struct HostConfig {
    /// The weakened protective step, if any (given to the `Host` and the
    /// ABI).
    pub weaken: Option<Weaken>,
    /// Sender flags the vCPUs wait for, as [`Config::sends`] (here port
    /// numbers of the host's binds).
    pub sends: Vec<u32>,
    /// The model guest's way with an event bound elsewhere.
    pub on_foreign: OnForeign,
}

impl Default for HostConfig {
    fn default() -> Self {
        HostConfig {
            weaken: None,
            sends: Vec::new(),
            on_foreign: OnForeign::Skip,
        }
    }
}

/// The Linux-like guest written in the model instead of the crate's
/// `Guest`, for one domain's [`Host`]: a binding per port (Linux's
/// `cpu_evtchn_mask`), optionally its own mask bits, a probe per port, the
/// sender flags it waits for, and vCPU loops that run the ABI's scan (the
/// deliver half) with [`ModelGuest::deliver`]. Nothing of the crate's guest
/// side runs. Every method takes the `Host` the guest runs over.
pub struct ModelGuest {
    /// The model guest's vCPU of each port.
    binding: Vec<AtomicU32>,
    /// The ports the model guest has masked itself (its own record; the
    /// mask bit in its memory is the ABI's). Empty for a guest that keeps
    /// no record (see [`ModelGuest::new`]).
    masked: Vec<AtomicBool>,
    /// Whether every handler run counts itself in its probe's run counter
    /// (see [`ModelGuest::new`]).
    counted: bool,
    on_foreign: OnForeign,
    probes: Vec<Probe>,
    /// Sender flags: a sender sets its flag, then sends; a handler run of
    /// port `expect[k]` records flag `k` if it sees it.
    flags: Vec<AtomicBool>,
    expect: Vec<u32>,
    /// Flag `k` was observed by its port's handler.
    observed: Vec<GhostBool>,
    done: GhostBool,
}

impl ModelGuest {
    /// A guest of `ports` ports, every port bound to vCPU 0, waiting for
    /// `sends` (as [`Config::sends`], port numbers of the guest's domain).
    /// With `record`, it keeps its own mask record, checked on every
    /// delivery, and counts handler runs for [`ModelGuest::run_count`];
    /// both are loom atomics that add states to explore, so a model that
    /// needs neither goes without them.
    pub fn new(ports: usize, sends: Vec<u32>, on_foreign: OnForeign, record: bool) -> Self {
        ModelGuest {
            binding: (0..ports).map(|_| AtomicU32::new(0)).collect(),
            masked: if record {
                (0..ports).map(|_| AtomicBool::new(false)).collect()
            } else {
                Vec::new()
            },
            counted: record,
            on_foreign,
            probes: (0..ports).map(|_| Probe::new()).collect(),
            flags: sends.iter().map(|_| AtomicBool::new(false)).collect(),
            observed: sends.iter().map(|_| GhostBool::new(false)).collect(),
            expect: sends,
            done: GhostBool::new(false),
        }
    }

    /// The model guest's vCPU of `port` (its `cpu_evtchn_mask`).
    pub fn binding(&self, port: u32) -> u32 {
        // SeqCst: a plain flag of the model guest.
        self.binding[port as usize].load(SeqCst)
    }

    /// Moves the model guest's binding of `port` to `vcpu`.
    pub fn set_binding(&self, port: u32, vcpu: u32) {
        tr(format!("guest binds port {port} to v{vcpu}"));
        // SeqCst: a plain flag of the model guest.
        self.binding[port as usize].store(vcpu, SeqCst);
    }

    /// The model guest masks `port` in its own memory (its record first).
    pub fn mask<A: Abi>(&self, host: &Host<A, Kicker>, port: u32) {
        // SeqCst: a plain flag of the model guest.
        self.masked[port as usize].store(true, SeqCst);
        let _ = host.abi().mask(port).expect("mask");
    }

    /// Whether the model guest has masked `port` (its own record; never,
    /// for a guest that keeps none).
    pub fn masked(&self, port: u32) -> bool {
        self.masked
            .get(port as usize)
            // SeqCst: a plain flag of the model guest.
            .is_some_and(|m| m.load(SeqCst))
    }

    /// The model guest unmasks `port` as Linux does (its record first):
    /// its own conditional unmask, and `EVTCHNOP_unmask` (`Host::unmask`)
    /// when the port is pending.
    pub fn unmask<A: Abi>(&self, host: &Host<A, Kicker>, port: u32) {
        // SeqCst: a plain flag of the model guest.
        self.masked[port as usize].store(false, SeqCst);
        let how = host.abi().try_unmask(port).expect("try_unmask");
        tr(format!("guest try_unmask port {port}: {how:?}"));
        if how == GuestUnmask::Hypercall {
            host.unmask(port).expect("unmask");
        }
    }

    /// The model guest unmasks `port` by `EVTCHNOP_unmask` alone, as a
    /// guest without the conditional unmask does (its record first).
    pub fn unmask_by_hypercall<A: Abi>(&self, host: &Host<A, Kicker>, port: u32) {
        // SeqCst: a plain flag of the model guest.
        self.masked[port as usize].store(false, SeqCst);
        host.unmask(port).expect("unmask");
        tr(format!("guest EVTCHNOP_unmask port {port} returned"));
    }

    /// Marks sender flag `k` as sent (before the send itself).
    pub fn flag(&self, k: usize) {
        // Relaxed: the raise (Release) and the clear of the pending bit
        // (Acquire) must carry it to the handler; that is what the models
        // check.
        self.flags[k].store(true, Relaxed);
    }

    /// What the model guest's upcall on `vcpu` does with `port`, which the
    /// ABI's scan offers it (pending and unmasked when the scan looked).
    /// A port the guest has masked itself must never be offered: its mask
    /// was cleared by someone else.
    pub fn deliver<A: Abi>(&self, host: &Host<A, Kicker>, vcpu: u32, port: u32) -> Delivery {
        assert!(
            !self.masked(port),
            "guest mask clobbered: event on a guest-masked port {port} offered to vCPU {vcpu}"
        );
        if self.binding(port) != vcpu && self.on_foreign == OnForeign::Skip {
            tr(format!("v{vcpu} skips port {port} (bound elsewhere)"));
            return Delivery::Skipped;
        }
        if !host.abi().test_and_clear_pending(port).expect("clear") {
            return Delivery::Skipped;
        }
        self.handle(host, vcpu, port);
        Delivery::Handled
    }

    /// The handler: checks C3 and records the run and the flags it saw.
    fn handle<A: Abi>(&self, host: &Host<A, Kicker>, vcpu: u32, port: u32) {
        let probe = &self.probes[port as usize];
        // Ghost (see the imports): two handlers inside at once is the breach.
        assert!(
            !probe.inside.swap(true, Relaxed),
            "C3: handler of port {port} entered on vCPU {vcpu} while running elsewhere"
        );
        tr(format!("handle v{vcpu} port {port}"));
        let seen: Vec<bool> = self
            .flags
            .iter()
            .zip(&self.expect)
            // Relaxed: only the core's edges may make the flag visible.
            .map(|(f, &want)| (want == port || want == ANY) && f.load(Relaxed))
            .collect();
        tr(format!("port {port} saw {seen:?}"));
        probe.data.with_mut(|d| {
            // SAFETY: two runs not ordered by happens-before are a race loom
            // reports; the models' property is that runs of a port are
            // serialised by the pending bit the guest clears.
            let d = unsafe { &mut *d };
            d.per_vcpu[vcpu as usize] += 1;
            d.per_life[0] += 1;
            if self.counted {
                // Release: as in `World::handle`.
                probe.life_runs[0].fetch_add(1, Release);
            }
            for (k, s) in seen.iter().enumerate() {
                d.observed[k] |= *s;
            }
        });
        for (k, s) in seen.iter().enumerate() {
            if *s {
                // Ghost: read by the check below and the vCPU loops.
                self.observed[k].store(true, Relaxed);
            }
        }
        // Ghost: the run is over.
        probe.inside.store(false, Relaxed);
        // Ghost: every expected flag seen by some run.
        if !self.expect.is_empty() && self.observed.iter().all(|o| o.load(Relaxed)) {
            self.finish(host);
        }
    }

    /// Lets the vCPU loops stop: they run one more upcall and end.
    pub fn finish<A: Abi>(&self, host: &Host<A, Kicker>) {
        // Ghost: read by the vCPU loops before they park.
        self.done.store(true, Relaxed);
        host.notifier().wake_all();
    }

    /// Whether the vCPU loops may stop.
    pub fn done(&self) -> bool {
        // Ghost: set by `finish`.
        self.done.load(Relaxed)
    }

    /// Handler runs of `port` so far (any thread, any time; a guest built
    /// with its record).
    pub fn run_count(&self, port: u32) -> usize {
        assert!(self.counted, "run_count: this guest counts no runs");
        // Acquire: pairs with the handler's Release count.
        self.probes[port as usize].life_runs[0].load(Acquire)
    }

    /// What the handler runs of `port` recorded (after every vCPU joined).
    pub fn runs(&self, port: u32) -> Runs {
        self.probes[port as usize]
            .data
            // SAFETY: called after the vCPU threads were joined.
            .with(|d| unsafe { (*d).clone() })
    }

    /// One upcall of the model guest on `vcpu`.
    fn upcall<A: Abi>(
        &self,
        host: &Host<A, Kicker>,
        vcpu: u32,
        cursor: &mut <A as Deliver>::Cursor,
    ) {
        host.abi()
            .scan(
                vcpu,
                cursor,
                |p| self.deliver(host, vcpu, p),
                |k| evtchn::Notify::kick(host.notifier(), k),
            )
            .expect("scan");
    }

    /// The halt-until-kicked loop of vCPU `v` on the calling thread (whose
    /// kicks must unpark it): stops once every expected send was observed,
    /// or once the model calls [`ModelGuest::finish`].
    pub fn run_vcpu<A: Abi>(&self, host: &Host<A, Kicker>, v: u32) {
        let mut cursor = <A as Deliver>::Cursor::default();
        loop {
            tr(format!("upcall v{v} start"));
            self.upcall(host, v, &mut cursor);
            let pending = host.abi().upcall_pending(v).expect("vCPU");
            tr(format!("upcall v{v} end pending={pending}"));
            if self.done() {
                break;
            }
            if !pending {
                tr(format!("park v{v}"));
                thread::park();
                tr(format!("unparked v{v}"));
            }
        }
    }

    /// Runs upcalls on every vCPU from the calling thread until none is
    /// pending (after the model threads were joined).
    pub fn drain<A: Abi>(&self, host: &Host<A, Kicker>) {
        let mut cursors: Vec<<A as Deliver>::Cursor> =
            (0..VCPUS).map(|_| Default::default()).collect();
        loop {
            let mut any = false;
            for (v, cursor) in (0..VCPUS as u32).zip(&mut cursors) {
                self.upcall(host, v, cursor);
                any |= host.abi().upcall_pending(v).expect("vCPU");
            }
            if !any {
                break;
            }
        }
    }
}

/// A world whose one [`ModelGuest`] runs over one of its [`Host`]s: the
/// guest's calls without the `Host` argument.
pub trait GuestWorld: Send + Sync + 'static {
    /// The guest's ABI.
    type A: Abi;
    /// The `Host` the model guest runs over.
    fn guest_host(&self) -> &Host<Self::A, Kicker>;
    /// The model guest.
    fn guest(&self) -> &ModelGuest;

    /// [`ModelGuest::binding`].
    fn binding(&self, port: u32) -> u32 {
        self.guest().binding(port)
    }
    /// [`ModelGuest::set_binding`].
    fn set_binding(&self, port: u32, vcpu: u32) {
        self.guest().set_binding(port, vcpu)
    }
    /// [`ModelGuest::flag`].
    fn flag(&self, k: usize) {
        self.guest().flag(k)
    }
    /// [`ModelGuest::finish`].
    fn finish(&self) {
        self.guest().finish(self.guest_host())
    }
    /// [`ModelGuest::done`].
    fn done(&self) -> bool {
        self.guest().done()
    }
    /// [`ModelGuest::run_count`].
    fn run_count(&self, port: u32) -> usize {
        self.guest().run_count(port)
    }
    /// [`ModelGuest::runs`].
    fn runs(&self, port: u32) -> Runs {
        self.guest().runs(port)
    }
    /// [`ModelGuest::drain`].
    fn drain(&self) {
        self.guest().drain(self.guest_host())
    }
    /// Makes the calling loom thread the guest's vCPU `v`: its kicks
    /// unpark this thread. Call before anything can raise an event on `v`.
    fn register_vcpu(&self, v: u32) {
        self.guest_host()
            .notifier()
            .register(v as usize, thread::current());
    }
    /// [`ModelGuest::run_vcpu`] on the calling thread (registered with
    /// [`GuestWorld::register_vcpu`]).
    fn run_vcpu(&self, v: u32) {
        self.guest().run_vcpu(self.guest_host(), v)
    }
}

/// A world for the hypervisor side alone: a [`Host`] over the guest's
/// memory, driven directly (`host.send`, `host.bind_vcpu`, `host.unmask`),
/// and a [`ModelGuest`] (with its own mask record) instead of the crate's
/// `Guest`. Its guest's calls are [`GuestWorld`]'s.
pub struct HostWorld<A: Abi = TwoL> {
    /// The hypervisor side under test.
    pub host: Host<A, Kicker>,
    guest: ModelGuest,
}

impl<A: Abi> GuestWorld for HostWorld<A> {
    type A = A;
    fn guest_host(&self) -> &Host<A, Kicker> {
        &self.host
    }
    fn guest(&self) -> &ModelGuest {
        &self.guest
    }
}

impl<A: Abi> HostWorld<A> {
    /// A world over ABI `A` with `cfg`. Nothing is written to the guest's
    /// memory: every port starts unmasked, not pending.
    pub fn build(cfg: HostConfig) -> Arc<HostWorld<A>> {
        let abi = A::build(&Config {
            weaken: cfg.weaken,
            ..Config::default()
        });
        let host = model_host(abi, cfg.weaken);
        let ports = host.nr_ports() as usize;
        Arc::new(HostWorld {
            host,
            guest: ModelGuest::new(ports, cfg.sends, cfg.on_foreign, true),
        })
    }

    /// The guest's memory (both halves of the ABI).
    pub fn abi(&self) -> &A {
        self.host.abi()
    }

    /// The host binds a port to `vcpu`; the model guest binds it there too.
    pub fn bind(&self, vcpu: u32) -> u32 {
        let p = self.host.bind(vcpu).expect("bind");
        self.guest.set_binding(p, vcpu);
        p
    }

    /// [`ModelGuest::mask`].
    pub fn guest_mask(&self, port: u32) {
        self.guest.mask(&self.host, port)
    }

    /// [`ModelGuest::masked`].
    pub fn guest_masked(&self, port: u32) -> bool {
        self.guest.masked(port)
    }

    /// [`ModelGuest::unmask`].
    pub fn guest_unmask(&self, port: u32) {
        self.guest.unmask(&self.host, port)
    }

    /// [`ModelGuest::unmask_by_hypercall`].
    pub fn guest_unmask_by_hypercall(&self, port: u32) {
        self.guest.unmask_by_hypercall(&self.host, port)
    }
}

/// A domain's `Host` over `abi`, plain or with `weaken`, kicking with a
/// fresh [`Kicker`].
pub fn model_host<A: Abi>(abi: A, weaken: Option<Weaken>) -> Host<A, Kicker> {
    match weaken {
        Some(w) => Host::weakened(abi, Kicker::default(), w),
        None => Host::new(abi, Kicker::default()),
    }
}

/// Spawns the model guest's vCPU `v` of `world`: [`GuestWorld::run_vcpu`]
/// on a new thread, registered before the call returns (spawn the vCPUs
/// before any thread that may raise an event).
pub fn spawn_guest_vcpu<W: GuestWorld>(world: &Arc<W>, v: u32) -> JoinHandle<()> {
    let w = world.clone();
    let h = thread::spawn(move || w.run_vcpu(v));
    world
        .guest_host()
        .notifier()
        .register(v as usize, h.thread().clone());
    h
}

/// How the model guest of a [`HostWorld`] unmasks a port it masked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UnmaskBy {
    /// Linux's conditional unmask, `EVTCHNOP_unmask` when the port is
    /// pending ([`HostWorld::guest_unmask`]).
    Conditional,
    /// `EVTCHNOP_unmask` alone ([`HostWorld::guest_unmask_by_hypercall`]).
    Hypercall,
}

/// Scenarios 17 (`guest_unmask_vs_send`) and 25: the model guest masked
/// port `p` in its own memory and unmasks it (`by`) while `Host::send`
/// raises it. Checks C1: the send runs once, on vCPU 0 (a lost event
/// leaves vCPU 0 parked: loom's deadlock).
pub fn host_unmask_scenario_on<A: Abi>(weaken: Option<Weaken>, by: UnmaskBy) {
    model(2, move || {
        let w = HostWorld::<A>::build(HostConfig {
            weaken,
            sends: vec![1],
            ..HostConfig::default()
        });
        let p = w.bind(0);
        w.guest_mask(p);
        let vcpu0 = spawn_guest_vcpu(&w, 0);
        let s = w.clone();
        let sender = thread::spawn(move || {
            s.flag(0);
            s.host.send(p).expect("send");
            tr(format!("sent port {p}"));
        });
        let g = w.clone();
        let guest = thread::spawn(move || match by {
            UnmaskBy::Conditional => g.guest_unmask(p),
            UnmaskBy::Hypercall => g.guest_unmask_by_hypercall(p),
        });
        sender.join().expect("sender");
        guest.join().expect("guest");
        vcpu0.join().expect("vCPU 0");
        let runs = w.runs(p);
        assert!(runs.observed[0], "C1: the send was never observed");
        assert_eq!(runs.per_vcpu, [1, 0], "C1: handled once, on vCPU 0");
    });
}
