//! Two domains for the interdomain models (S26, S27): `evtchn::Domains`
//! over two `Host`s, each over its own 2-level memory (one word, two
//! vCPUs) and its own `Kicker`. Domain 0 is the backend: the models drive
//! it directly and run no guest in it. Domain 1 is the frontend: a
//! Linux-like guest written in the model, as `HostWorld`'s (a binding per
//! port, vCPU loops that run the ABI's scan and halt until kicked), with a
//! probe per port.

use std::sync::atomic::AtomicBool as GhostBool;
use std::sync::Arc;

use evtchn::xen::evtchnop::DomId;
use evtchn::{Deliver, Delivery, Domain, Domains, Host, OwnedMemory, Ports, TwoLevel, Weaken};
use loom::cell::UnsafeCell;
use loom::sync::atomic::{AtomicBool, AtomicU32, AtomicUsize, Ordering::*};
use loom::thread::{self, JoinHandle};

use super::{tr, Kicker, OnForeign, Probe, Runs, TwoL, VCPUS};

/// The backend domain (no guest runs in it).
pub const BACK: DomId = 0;
/// The frontend domain, whose model guest runs.
pub const FRONT: DomId = 1;

/// Builder options of a [`DomWorld`].
pub struct DomConfig {
    /// The weakened step of the backend's `Host`, if any.
    pub back_weaken: Option<Weaken>,
    /// The weakened step of the frontend's `Host`, if any.
    pub front_weaken: Option<Weaken>,
    /// Sender flags the frontend's vCPUs wait for: flag `k` must be
    /// observed by a handler run of the frontend's port `sends[k]`.
    pub sends: Vec<u32>,
    /// The frontend guest's way with an event of a port bound elsewhere.
    pub on_foreign: OnForeign,
}

impl Default for DomConfig {
    fn default() -> Self {
        DomConfig {
            back_weaken: None,
            front_weaken: None,
            sends: Vec::new(),
            on_foreign: OnForeign::Skip,
        }
    }
}

/// The two domains and the frontend's model guest.
pub struct DomWorld {
    /// The hypervisor side under test.
    pub doms: Domains<TwoL, Kicker>,
    /// The frontend guest's vCPU of each port (Linux's `cpu_evtchn_mask`).
    binding: Vec<AtomicU32>,
    on_foreign: OnForeign,
    probes: Vec<Probe>,
    flags: Vec<AtomicBool>,
    expect: Vec<u32>,
    observed: Vec<GhostBool>,
    done: GhostBool,
}

/// A domain's `Host` over a fresh 2-level memory, plain or weakened.
fn host(weaken: Option<Weaken>) -> Host<TwoL, Kicker> {
    let abi = TwoLevel::new(OwnedMemory::new(1, VCPUS));
    match weaken {
        Some(w) => Host::weakened(abi, Kicker::default(), w),
        None => Host::new(abi, Kicker::default()),
    }
}

impl DomWorld {
    /// Both domains, every port free; nothing written to either memory.
    pub fn build(cfg: DomConfig) -> Arc<DomWorld> {
        let mut doms = Domains::new();
        doms.add(BACK, Domain::new(host(cfg.back_weaken)))
            .expect("add backend");
        doms.add(FRONT, Domain::new(host(cfg.front_weaken)))
            .expect("add frontend");
        let ports = doms.host(FRONT).expect("frontend").nr_ports() as usize;
        Arc::new(DomWorld {
            doms,
            binding: (0..ports).map(|_| AtomicU32::new(0)).collect(),
            on_foreign: cfg.on_foreign,
            probes: (0..ports)
                .map(|_| Probe {
                    life_runs: core::array::from_fn(|_| AtomicUsize::new(0)),
                    inside: GhostBool::new(false),
                    data: UnsafeCell::new(Runs::default()),
                })
                .collect(),
            flags: cfg.sends.iter().map(|_| AtomicBool::new(false)).collect(),
            observed: cfg.sends.iter().map(|_| GhostBool::new(false)).collect(),
            expect: cfg.sends,
            done: GhostBool::new(false),
        })
    }

    /// Domain `dom`'s port table.
    pub fn host(&self, dom: DomId) -> &Host<TwoL, Kicker> {
        self.doms.host(dom).expect("domain")
    }

    /// The frontend's port table.
    pub fn front(&self) -> &Host<TwoL, Kicker> {
        self.host(FRONT)
    }

    /// Connects a fresh unbound port of the backend to the frontend's
    /// lowest free port, on the frontend's vCPU `vcpu`, with no event
    /// (nothing was sent): `(backend port, frontend port)`.
    pub fn connect(&self, vcpu: u32) -> (u32, u32) {
        let pa = self.doms.alloc_unbound(BACK, FRONT).expect("alloc_unbound");
        let pb = self
            .doms
            .bind_interdomain(FRONT, BACK, pa, evtchn::BindMode::Atomic { vcpu })
            .expect("bind_interdomain");
        self.set_binding(pb, vcpu);
        (pa, pb)
    }

    /// Marks sender flag `k` as sent (before the send itself).
    pub fn flag(&self, k: usize) {
        // Relaxed: the backend's send and the frontend's clear of the
        // pending bit must carry it to the handler; that is what the
        // models check.
        self.flags[k].store(true, Relaxed);
    }

    /// The frontend guest's vCPU of `port`.
    pub fn binding(&self, port: u32) -> u32 {
        // SeqCst: a plain flag of the model guest.
        self.binding[port as usize].load(SeqCst)
    }

    /// Moves the frontend guest's binding of `port` to `vcpu`.
    pub fn set_binding(&self, port: u32, vcpu: u32) {
        tr(format!("guest binds port {port} to v{vcpu}"));
        // SeqCst: a plain flag of the model guest.
        self.binding[port as usize].store(vcpu, SeqCst);
    }

    /// What the frontend guest's upcall on `vcpu` does with `port`, which
    /// the ABI's scan offers it.
    fn deliver(&self, vcpu: u32, port: u32) -> Delivery {
        if self.binding(port) != vcpu && self.on_foreign == OnForeign::Skip {
            tr(format!("v{vcpu} skips port {port} (bound elsewhere)"));
            return Delivery::Skipped;
        }
        if !self
            .front()
            .abi()
            .test_and_clear_pending(port)
            .expect("clear")
        {
            return Delivery::Skipped;
        }
        self.handle(vcpu, port);
        Delivery::Handled
    }

    /// The handler: checks C3 and records the run and the flags it saw.
    fn handle(&self, vcpu: u32, port: u32) {
        let probe = &self.probes[port as usize];
        // Ghost (see the harness's imports): two handlers inside at once is
        // the breach.
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
            .map(|(f, &want)| want == port && f.load(Relaxed))
            .collect();
        tr(format!("port {port} saw {seen:?}"));
        probe.data.with_mut(|d| {
            // SAFETY: two runs not ordered by happens-before are a race loom
            // reports; the models' property is that runs of a port are
            // serialised by the pending bit the guest clears.
            let d = unsafe { &mut *d };
            d.per_vcpu[vcpu as usize] += 1;
            d.per_life[0] += 1;
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
            self.finish();
        }
    }

    /// Lets the vCPU loops stop: they run one more upcall and end.
    pub fn finish(&self) {
        // Ghost: read by the vCPU loops before they park.
        self.done.store(true, Relaxed);
        self.front().notifier().wake_all();
    }

    /// Whether the vCPU loops may stop.
    pub fn done(&self) -> bool {
        // Ghost: set by `finish`.
        self.done.load(Relaxed)
    }

    /// One upcall of the frontend guest on `vcpu`.
    fn upcall(&self, vcpu: u32, cursor: &mut <TwoL as Deliver>::Cursor) {
        self.front()
            .abi()
            .scan(
                vcpu,
                cursor,
                |p| self.deliver(vcpu, p),
                |k| evtchn::Notify::kick(self.front().notifier(), k),
            )
            .expect("scan");
    }

    /// Makes the calling loom thread the frontend's vCPU `v`: its kicks
    /// unpark this thread. Call before anything can raise an event on `v`.
    pub fn register_vcpu(&self, v: u32) {
        self.front()
            .notifier()
            .register(v as usize, thread::current());
    }

    /// The halt-until-kicked loop of the frontend's vCPU `v` on the calling
    /// thread (registered with [`DomWorld::register_vcpu`]): stops once
    /// every expected send was observed.
    pub fn run_vcpu(&self, v: u32) {
        let mut cursor = <TwoL as Deliver>::Cursor::default();
        loop {
            tr(format!("upcall v{v} start"));
            self.upcall(v, &mut cursor);
            let pending = self.front().abi().upcall_pending(v).expect("vCPU");
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

    /// Runs upcalls on every frontend vCPU from the calling thread until
    /// none is pending (after the model threads were joined).
    pub fn drain(&self) {
        let mut cursors: Vec<<TwoL as Deliver>::Cursor> =
            (0..VCPUS).map(|_| Default::default()).collect();
        loop {
            let mut any = false;
            for (v, cursor) in (0..VCPUS as u32).zip(&mut cursors) {
                self.upcall(v, cursor);
                any |= self.front().abi().upcall_pending(v).expect("vCPU");
            }
            if !any {
                break;
            }
        }
    }

    /// What the handler runs of the frontend's `port` recorded (after every
    /// vCPU joined).
    pub fn runs(&self, port: u32) -> Runs {
        self.probes[port as usize]
            .data
            // SAFETY: called after the vCPU threads were joined.
            .with(|d| unsafe { (*d).clone() })
    }

    /// Every vCPU of the frontend that a raise kicked so far (any thread).
    pub fn front_kicks(&self) -> Vec<u32> {
        self.front()
            .notifier()
            .log
            .lock()
            .map(|l| l.iter().map(|(_, v)| *v).collect())
            .unwrap_or_default()
    }

    /// Checks that every free port of the frontend is not pending, and
    /// returns the bound ones.
    pub fn assert_free_ports_clean(&self) -> Vec<u32> {
        let front = self.front();
        let mut bound = Vec::new();
        for port in 1..front.nr_ports() {
            let st = front.status(port).expect("status");
            if st.bound {
                bound.push(port);
            } else {
                assert!(
                    !st.pending,
                    "C6: the frontend's free port {port} is pending: a send landed after its close"
                );
            }
        }
        bound
    }
}

/// Spawns the frontend guest's vCPU `v`: [`DomWorld::run_vcpu`] on a new
/// thread, registered before the call returns (spawn the vCPUs before any
/// thread that may raise an event).
pub fn spawn_front_vcpu(world: &Arc<DomWorld>, v: u32) -> JoinHandle<()> {
    let w = world.clone();
    let h = thread::spawn(move || w.run_vcpu(v));
    world
        .front()
        .notifier()
        .register(v as usize, h.thread().clone());
    h
}
