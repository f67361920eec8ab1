//! Two domains for the interdomain models (S26, S27): `evtchn::Domains`
//! over two `Host`s, each over its own 2-level memory (one word, two
//! vCPUs) and its own `Kicker`. Domain 0 is the backend: the models drive
//! it directly and run no guest in it. Domain 1 is the frontend: the
//! harness's `ModelGuest`, as in `HostWorld` (a binding per port, vCPU
//! loops that run the ABI's scan and halt until kicked, a probe per port),
//! without a mask record of its own.

use std::sync::Arc;

use evtchn::xen::evtchnop::DomId;
use evtchn::{Domain, Domains, Host, OwnedMemory, TwoLevel, Weaken};
use loom::thread::JoinHandle;

use super::{model_host, spawn_guest_vcpu, GuestWorld, Kicker, ModelGuest, OnForeign, TwoL, VCPUS};

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
    /// The frontend's model guest (no mask record of its own).
    guest: ModelGuest,
}

impl GuestWorld for DomWorld {
    type A = TwoL;
    fn guest_host(&self) -> &Host<TwoL, Kicker> {
        self.front()
    }
    fn guest(&self) -> &ModelGuest {
        &self.guest
    }
}

/// A domain's `Host` over a fresh 2-level memory, plain or weakened.
fn host(weaken: Option<Weaken>) -> Host<TwoL, Kicker> {
    model_host(TwoLevel::new(OwnedMemory::new(1, VCPUS)), weaken)
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
            guest: ModelGuest::new(ports, cfg.sends, cfg.on_foreign, false),
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

/// Spawns the frontend guest's vCPU `v`: [`spawn_guest_vcpu`] (spawn the
/// vCPUs before any thread that may raise an event).
pub fn spawn_front_vcpu(world: &Arc<DomWorld>, v: u32) -> JoinHandle<()> {
    spawn_guest_vcpu(world, v)
}
