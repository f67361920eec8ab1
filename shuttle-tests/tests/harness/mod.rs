//! The harness of the randomized-schedule tests (`mod harness;` in each).
//!
//! The tests drive the *real* core (`evtchn::Channels` over
//! `TwoLevel<OwnedMemory>` or `Fifo<OwnedFifo>`), built with
//! `cfg(evtchn_shuttle)` so that every atomic, fence, spin hint and lock of
//! the core is shuttle's, under shuttle's random and PCT schedulers. Where
//! the loom models check every interleaving of two vCPUs up to a preemption
//! bound, a schedule here has 8 vCPUs, 64 ports and a dozen threads, and no
//! bound on preemptions; the price is that the schedules are sampled.
//!
//! One schedule ([`storm`]): 8 vCPU threads that halt until kicked (the
//! `Notify` hook unparks them) and run upcalls (odd vCPUs with an upcall
//! budget of 1, the others unbounded), two sender threads and a control
//! thread that moves a port (`set_affinity`), takes a vCPU offline, runs
//! the rebalancer, brings the vCPU back, and closes a port and binds its
//! number again. One port is in late-EOI mode: each handler run masks it,
//! and its vCPU ends the EOI after the upcall. The checks:
//!
//! * C1, no lost event: every send is observed by a handler run that starts
//!   after it (a sender bumps the port's send count, then sends; a run
//!   records the count it sees at its start). The vCPUs stop only once
//!   every count was observed;
//! * no lost wake-up: a vCPU parks only when it has no upcall pending, so
//!   an event whose kick is lost leaves every thread blocked, which shuttle
//!   reports as a deadlock; and after the threads are joined, the final
//!   drain must leave no port pending, in flight or masked;
//! * C3: no handler of a port runs twice at once (a flag set on entry and
//!   cleared on exit, with a scheduling point in between);
//! * C6: once `close` returned and the port is seen not in flight, no run
//!   of the closed life starts; the new life's send is observed by a run of
//!   the new life.
// Each test file uses part of the harness.
#![allow(dead_code)]

use std::sync::Arc;
use std::sync::Mutex as StdMutex;

use evtchn::{
    Bind, Channels, Error, Fifo, OwnedFifo, OwnedMemory, Port, PortOps, TwoLevel, Weaken,
};
/// A vCPU handle of a world over `A`.
type Vcpu<'a, A> = evtchn::Vcpu<'a, evtchn::InProcess<A, Kicker>>;

use shuttle::sync::atomic::{AtomicBool, AtomicU32, Ordering::SeqCst};
use shuttle::thread::{self, JoinHandle, Thread};

/// vCPUs of every test.
pub const VCPUS: usize = 8;
/// Ports of every test: one 2-level pending word, one 64-word FIFO page.
pub const PORTS: u32 = 64;

/// The 2-level ABI: one pending word (64 ports), 8 vCPUs.
pub type TwoL = TwoLevel<OwnedMemory>;
/// The FIFO ABI: 64 event words (ports 1..63; port 0 is reserved), 8 vCPUs.
pub type FifoAbi = Fifo<OwnedFifo>;

/// An ABI a test can build, plain or with one step weakened.
pub trait Abi: PortOps + Send + Sync + 'static {
    /// The ABI, with `weaken` if any.
    fn build(weaken: Option<Weaken>) -> Self;
}

impl Abi for TwoL {
    fn build(weaken: Option<Weaken>) -> Self {
        let mem = OwnedMemory::new(PORTS as usize / 64, VCPUS);
        match weaken {
            Some(w) => TwoLevel::weakened(mem, w),
            None => TwoLevel::new(mem),
        }
    }
}

impl Abi for FifoAbi {
    fn build(weaken: Option<Weaken>) -> Self {
        let mem = OwnedFifo::new(PORTS, VCPUS);
        match weaken {
            Some(w) => Fifo::weakened(mem, w),
            None => Fifo::new(mem),
        }
    }
}

/// Schedules per test: `EVTCHN_SHUTTLE_ITERATIONS`, or a short default
/// (every shuttle test together in well under a minute, debug build).
pub fn iterations() -> usize {
    std::env::var("EVTCHN_SHUTTLE_ITERATIONS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(DEFAULT_ITERATIONS)
}

/// The short default of [`iterations`].
pub const DEFAULT_ITERATIONS: usize = 500;

/// The PCT scheduler's depth (bug depth it targets).
pub const PCT_DEPTH: usize = 3;

/// Runs `f` under the PCT scheduler (depth [`PCT_DEPTH`]), [`iterations`]
/// schedules, and prints the count and the time.
pub fn pct<F: Fn() + Send + Sync + 'static>(name: &str, f: F) {
    let n = iterations();
    let t = std::time::Instant::now();
    shuttle::check_pct(f, n, PCT_DEPTH);
    eprintln!(
        "shuttle: {name}: {n} PCT schedules (depth {PCT_DEPTH}) in {:.2?}",
        t.elapsed()
    );
}

/// Runs `f` under the PCT scheduler (depth [`PCT_DEPTH`]) from a fixed
/// seed, [`iterations`] schedules: the negative controls, whose schedules
/// (and so the failure found first) must be the same on every run.
pub fn pct_seeded<F: Fn() + Send + Sync + 'static>(name: &str, seed: u64, f: F) {
    let n = iterations();
    let t = std::time::Instant::now();
    let scheduler = shuttle::scheduler::PctScheduler::new_from_seed(seed, PCT_DEPTH, n);
    shuttle::Runner::new(scheduler, Default::default()).run(f);
    eprintln!(
        "shuttle: {name}: {n} PCT schedules (depth {PCT_DEPTH}, seed {seed}) in {:.2?}",
        t.elapsed()
    );
}

/// Runs `f` under the random scheduler, [`iterations`] schedules, and
/// prints the count and the time.
pub fn random<F: Fn() + Send + Sync + 'static>(name: &str, f: F) {
    let n = iterations();
    let t = std::time::Instant::now();
    shuttle::check_random(f, n);
    eprintln!(
        "shuttle: {name}: {n} random schedules in {:.2?}",
        t.elapsed()
    );
}

/// The `Notify` hook: unparks the thread running the kicked vCPU. The
/// registry is a `std` mutex with no shuttle operation inside, so shuttle
/// never switches threads while it is held.
#[derive(Default)]
pub struct Kicker {
    threads: StdMutex<Vec<Option<Thread>>>,
}

impl evtchn::Notify for Kicker {
    fn kick(&self, vcpu: u32) {
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
}

/// No life of a port number closed yet (see [`World::closed`]).
const NONE: u32 = u32::MAX;

/// The world of one schedule: the core and what the handlers saw.
pub struct World<A: Abi> {
    /// The core under test.
    pub ch: Channels<A, Kicker>,
    /// Per port number: the generation whose sends count (the live life).
    live: Vec<AtomicU32>,
    /// Per port number: sends of the live life so far (bumped before the
    /// send).
    sent: Vec<AtomicU32>,
    /// Per port number: the highest send count a run of the live life saw
    /// at its start.
    seen: Vec<AtomicU32>,
    /// Per port number: the send count every run must reach before the
    /// vCPUs may stop.
    target: Vec<AtomicU32>,
    /// Per port number: a handler is running (C3).
    inside: Vec<AtomicBool>,
    /// Per port number: the generation of a life that is over (closed and
    /// seen not in flight), or [`NONE`] (C6).
    closed: Vec<AtomicU32>,
    /// Per port number: late-EOI mode (set by [`World::set_lateeoi`]).
    late: Vec<AtomicBool>,
    /// Per port number: a run of a late-EOI port awaits its EOI (C3: no
    /// second run before it).
    eoi_due: Vec<AtomicBool>,
    /// Lives still to be bound (whose targets are not known yet): the
    /// vCPUs may not stop before they are.
    lives: AtomicU32,
    /// The vCPUs may stop: every target was reached.
    done: AtomicBool,
}

impl<A: Abi> World<A> {
    /// A world over ABI `A`, with `weaken` if any.
    pub fn build(weaken: Option<Weaken>) -> Arc<World<A>> {
        let abi = A::build(weaken);
        let ch = match weaken {
            Some(w) => Channels::weakened(abi, Kicker::default(), w),
            None => Channels::new(abi, Kicker::default()),
        };
        let n = ch.nr_ports() as usize;
        let v = |x: u32| (0..n).map(|_| AtomicU32::new(x)).collect::<Vec<_>>();
        Arc::new(World {
            ch,
            live: v(NONE),
            sent: v(0),
            seen: v(0),
            target: v(0),
            inside: (0..n).map(|_| AtomicBool::new(false)).collect(),
            closed: v(NONE),
            late: (0..n).map(|_| AtomicBool::new(false)).collect(),
            eoi_due: (0..n).map(|_| AtomicBool::new(false)).collect(),
            lives: AtomicU32::new(0),
            done: AtomicBool::new(false),
        })
    }

    /// Binds a port to `vcpu` whose life expects `sends` sends.
    pub fn bind(&self, vcpu: u32, sends: u32) -> Port {
        let p = self.ch.bind(Bind::Affinity(vcpu)).expect("bind");
        let i = p.number() as usize;
        // SeqCst (all harness atomics): shuttle runs one thread at a time;
        // the orders only name the intent.
        self.sent[i].store(0, SeqCst);
        self.seen[i].store(0, SeqCst);
        self.target[i].store(sends, SeqCst);
        self.live[i].store(p.generation(), SeqCst);
        p
    }

    /// Puts `p` in late-EOI mode: each run masks it until its EOI, which
    /// the vCPU that ran it ends after its upcall.
    pub fn set_lateeoi(&self, p: Port) {
        self.ch.set_lateeoi(p, true).expect("set_lateeoi");
        // SeqCst: read by every handler run.
        self.late[p.number() as usize].store(true, SeqCst);
    }

    /// One more life will be bound (with [`World::bind_late`]) while the
    /// vCPUs run.
    pub fn expect_life(&self) {
        // SeqCst: read by every handler run's stop check.
        self.lives.fetch_add(1, SeqCst);
    }

    /// [`World::bind`] of a life announced by [`World::expect_life`].
    pub fn bind_late(&self, vcpu: u32, sends: u32) -> Port {
        let p = self.bind(vcpu, sends);
        // SeqCst: the life's target is set above; the stop check reads both.
        self.lives.fetch_sub(1, SeqCst);
        p
    }

    /// One send of the live life of `p`, counted before it is made.
    pub fn send(&self, p: Port) {
        // SeqCst: bumped before the send, read by a run at its start (C1).
        self.sent[p.number() as usize].fetch_add(1, SeqCst);
        self.ch.send(p).expect("send");
    }

    /// The life of `p` is over: closed, and seen not in flight.
    pub fn over(&self, p: Port) {
        // SeqCst: read by every handler run (C6).
        self.closed[p.number() as usize].store(p.generation(), SeqCst);
    }

    /// The handler: checks C3 and C6 and records the sends it observed.
    pub fn handle(&self, vcpu: u32, p: Port) {
        let i = p.number() as usize;
        assert!(
            // SeqCst: a plain flag; two handlers inside at once is the breach.
            !self.inside[i].swap(true, SeqCst),
            "C3: handler of port {} entered on vCPU {vcpu} while running elsewhere",
            p.number()
        );
        assert!(
            // SeqCst: set by the closer once the life is over.
            self.closed[i].load(SeqCst) != p.generation(),
            "C6: handler of port {} of a closed life (generation {}) ran on vCPU {vcpu}",
            p.number(),
            p.generation()
        );
        // SeqCst: set before the first send of the port.
        if self.late[i].load(SeqCst) {
            assert!(
                // SeqCst: cleared by the vCPU just before the EOI.
                !self.eoi_due[i].swap(true, SeqCst),
                "C3: handler of port {} ran again on vCPU {vcpu} before its late EOI",
                p.number()
            );
        }
        // SeqCst: the live generation, set at bind.
        if self.live[i].load(SeqCst) == p.generation() {
            let s = self.sent[i].load(SeqCst);
            self.seen[i].fetch_max(s, SeqCst);
        }
        // A scheduling point while inside: another run of this port may be
        // scheduled here if the in-flight guard lets it.
        thread::yield_now();
        // SeqCst: leaves the handler (C3).
        self.inside[i].store(false, SeqCst);
        // SeqCst: one run ends the storm and wakes every vCPU.
        if self.all_seen() && !self.done.swap(true, SeqCst) {
            self.ch.notifier().wake_all();
        }
    }

    /// Whether every port's live life reached its target.
    fn all_seen(&self) -> bool {
        // SeqCst: read with the counts below.
        self.lives.load(SeqCst) == 0
            && self
                .seen
                .iter()
                .zip(&self.target)
                .all(|(s, t)| s.load(SeqCst) >= t.load(SeqCst))
    }

    /// Whether the vCPUs may stop.
    pub fn done(&self) -> bool {
        // SeqCst: set by the run that saw the last target.
        self.done.load(SeqCst)
    }

    /// One upcall on `cpu` (with `budget` if any), then the late EOIs of
    /// the late-EOI ports it ran. Returns whether an upcall is pending.
    fn upcall(&self, cpu: &mut Vcpu<'_, A>, budget: Option<usize>) -> bool {
        let v = cpu.id();
        let mut due: Vec<Port> = Vec::new();
        let h = |p: Port| {
            self.handle(v, p);
            due.push(p);
        };
        match budget {
            Some(b) => cpu.upcall_budget(b, h),
            None => cpu.upcall(h),
        }
        .expect("upcall");
        for p in due {
            // SeqCst: set before the first send of the port.
            if !self.late[p.number() as usize].load(SeqCst) {
                continue;
            }
            // Before the EOI: the next run may start right after it.
            // SeqCst: read by the next run of the port.
            self.eoi_due[p.number() as usize].store(false, SeqCst);
            match self.ch.lateeoi(p, false) {
                Ok(None) => {}
                Ok(Some(_)) => self.ch.eoi(p).expect("eoi after the back-off"),
                // The life ended since (closed, or bound again).
                Err(Error::NotBound | Error::Stale) => {}
                Err(e) => panic!("late EOI of port {}: {e:?}", p.number()),
            }
        }
        cpu.upcall_pending()
    }

    /// Runs upcalls on every vCPU from the calling thread until none is
    /// pending (after every other thread was joined), then checks that
    /// nothing is left: no port pending, in flight or masked, and every
    /// send of every live life observed.
    pub fn drain_and_check(&self) {
        let mut cpus: Vec<_> = (0..VCPUS as u32)
            .map(|v| self.ch.vcpu(v).expect("vCPU in range"))
            .collect();
        loop {
            let mut any = false;
            for cpu in &mut cpus {
                any |= self.upcall(cpu, None);
            }
            if !any {
                break;
            }
        }
        for n in 1..self.ch.nr_ports() {
            let s = self.ch.status(n).expect("status");
            if s.state != evtchn::State::Bound {
                continue;
            }
            assert!(
                !s.pending && !s.in_flight && !s.masked_rebind && !s.masked_eoi,
                "quiescence: port {n} left {s:?}"
            );
            let i = n as usize;
            // SeqCst: every thread but this one was joined.
            let (seen, sent) = (self.seen[i].load(SeqCst), self.sent[i].load(SeqCst));
            assert!(
                seen >= sent,
                "C1: port {n}: {sent} sends, a run observed {seen}"
            );
        }
    }
}

/// Spawns vCPU `v`: a halt-until-kicked upcall loop (with an upcall budget
/// of 1 on odd vCPUs) that stops once every target was reached.
pub fn spawn_vcpu<A: Abi>(world: &Arc<World<A>>, v: u32) -> JoinHandle<()> {
    let w = world.clone();
    let budget = (v % 2 == 1).then_some(1);
    let h = thread::spawn(move || {
        let mut cpu = w.ch.vcpu(v).expect("vCPU in range");
        loop {
            let pending = w.upcall(&mut cpu, budget);
            if w.done() {
                break;
            }
            if !pending {
                // Halt until kicked (a kick before the park is kept as the
                // unpark token, so it is not lost).
                thread::park();
            }
        }
    });
    world.ch.notifier().register(v as usize, h.thread().clone());
    h
}

/// One schedule of the storm over ABI `A`, with `weaken` if any.
pub fn storm<A: Abi>(weaken: Option<Weaken>) {
    storm_with::<A>(weaken, true);
}

/// [`storm`], with or without the late-EOI port (a core without the
/// in-flight guard takes no late-EOI claim either, so the negative control
/// leaves late EOI out and checks C3 alone).
pub fn storm_with<A: Abi>(weaken: Option<Weaken>, late_eoi: bool) {
    let w = World::<A>::build(weaken);
    // a: hot, moved by the control thread; b: late EOI; c: closed and
    // bound again; d: on the vCPU taken offline.
    let a = w.bind(0, 3);
    let b = w.bind(3, 2);
    let c = w.bind(5, 0);
    let d = w.bind(2, 2);
    if late_eoi {
        w.set_lateeoi(b);
    }
    w.expect_life();
    let vcpus: Vec<_> = (0..VCPUS as u32).map(|v| spawn_vcpu(&w, v)).collect();
    let s0 = {
        let w = w.clone();
        thread::spawn(move || {
            w.send(a);
            w.send(d);
            w.send(a);
            w.send(b);
        })
    };
    let s1 = {
        let w = w.clone();
        thread::spawn(move || {
            w.send(b);
            w.send(a);
            w.send(d);
        })
    };
    let ctl = {
        let w = w.clone();
        thread::spawn(move || {
            w.ch.send(c).expect("send on the old life");
            w.ch.set_affinity(a, 4).expect("set_affinity");
            w.ch.set_affinity(b, 6).expect("set_affinity");
            w.ch.set_online(2, false).expect("offline");
            w.ch.rebalance(2).expect("rebalance");
            w.ch.set_online(2, true).expect("online");
            w.ch.close(c).expect("close");
            if !w.ch.status(c.number()).expect("status").in_flight {
                w.over(c);
            }
            assert_eq!(w.ch.send(c), Err(Error::NotBound));
            let c2 = w.bind_late(7, 1);
            w.send(c2);
            w.ch.set_affinity(a, 1).expect("set_affinity");
        })
    };
    for h in [s0, s1, ctl] {
        h.join().expect("sender or control thread");
    }
    for h in vcpus {
        h.join().expect("vCPU thread");
    }
    w.drain_and_check();
}
