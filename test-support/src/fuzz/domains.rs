//! `domains`: the differential target of the hypervisor side.
//!
//! The input picks two or three domains (2-level, 64 ports, 2 vCPUs; a
//! domain id, privileged or not, a few PIRQs, a highest port below the
//! table) and then decodes into a sequence of operations, run
//! single-threaded on the real [`Domains`] and on `Model`, a reference
//! model of plain per-domain records:
//!
//! * the hypercall entry point, [`Domains::dispatch`], for every command,
//!   with argument bytes built from decoded fields: mostly in range,
//!   sometimes hostile (ports beyond the table, vCPUs, VIRQs and PIRQs out
//!   of range, domains that do not exist or are reserved, `DOMID_SELF`,
//!   arguments shorter or longer than their structure, unknown commands,
//!   `reset` of a domain paused or not and `reset_cont`);
//! * the direct calls: `alloc_unbound`, `bind_interdomain` in both
//!   [`BindMode`]s, `send`, `close` and `status` of [`Domains`], `reset` one
//!   chunk at a time or a whole domain in chunks, `remove`, `add` and
//!   `set_paused` of a domain; [`Host::raise_virq`], [`Host::raise_pirq`], [`Host::bind`],
//!   [`Host::send`], [`Host::close`] and [`Host::set_priority`];
//! * the guest's own actions on its memory: setting a mask bit, clearing
//!   one by a plain write, the conditional unmask (and the hypercall it asks
//!   for), and a drain of one vCPU's upcall (the 2-level scan, a port bound
//!   to this vCPU consumed, one bound elsewhere handed on).
//!
//! The model keeps, per domain, a port table (kind, notify vCPU, priority,
//! peer, the DROPPED mark of an unbound port), the pending and mask bits,
//! each vCPU's selector bit and upcall flag, the VIRQ and PIRQ tables, and
//! the kicks it expects; it is written from Xen's rules (the reserved port
//! 0, the lowest free port up to the domain's highest, Xen's error numbers
//! and their order, the argument structures' sizes and offsets as Xen's
//! header has them) and the core's documented choices (the atomic bind,
//! QEMU's re-raise on `bind_vcpu`, the `ENOSYS` of the FIFO commands). It
//! knows nothing of control words.
//!
//! Compared after every operation: the return value (an `errno` from
//! `dispatch`, an [`Error`] from a direct call), the argument's bytes (the
//! `OUT` fields written on success only, every other byte untouched), every
//! port's [`HostStatus`] in every domain, the pending and mask words, each
//! vCPU's selector and upcall flag, every kick, which domains exist; and,
//! independently of the model, that a refusal changed nothing observable.

use std::collections::BTreeMap;
use std::mem::{offset_of, size_of};
use std::sync::atomic::Ordering::SeqCst;

use evtchn::xen::evtchnop::{
    cmd, errno, stat, virq, AllocUnbound, BindInterdomain, BindIpi, BindPirq, BindVcpu, BindVirq,
    DomId, PortArg, Reset, SetPriority, Status, DOMID_FIRST_RESERVED, DOMID_SELF,
};
use evtchn::{
    BindMode, Deliver, Delivery, Domain, Domains, Error, GuestUnmask, Host, HostStatus, Memory2l,
    OwnedMemory, PortKind, TwoLevel, TwoLevelCursor,
};

use super::{Input, St};
use crate::Kicks;

/// Operations per input.
pub const MAX_OPS: usize = 300;

/// Ports per domain: one 2-level word.
const NR_PORTS: u32 = 64;
/// vCPUs per domain.
const NR_VCPUS: u32 = 2;
/// Xen's default FIFO priority, which every bind records.
const DEFAULT_PRIORITY: u8 = 7;
/// Xen's `NR_VIRQS`.
const NR_VIRQS: u32 = 24;

type Abi = TwoLevel<OwnedMemory>;
type Doms = Domains<Abi, Kicks>;
type Dom = Domain<Abi, Kicks>;
type H = Host<Abi, Kicks>;

/// A deliberately wrong reference model, for the negative tests that show
/// the comparisons can fail (`tests/fuzz_replay.rs`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Sabotage {
    /// The model's conservative bind (Xen's, and the hypercall's) sets
    /// nothing pending.
    ConservativeBindRaisesNothing,
    /// The model's atomic bind never replays a send the unbound end dropped.
    AtomicBindIgnoresDropped,
    /// The model's close of an interdomain end moves the peer, now unbound,
    /// back to vCPU 0.
    ClosedPeerMovesToVcpu0,
}

/// Runs one input on the real core and the model; panics on a divergence.
pub fn run(data: &[u8]) {
    run_with(data, None)
}

// ---------------------------------------------------------------------------
// The model
// ---------------------------------------------------------------------------

/// A port's state in the model.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Free,
    /// `Host::bind`: the embedder's own port.
    Local,
    /// Waiting for this domain.
    Unbound(DomId),
    /// Connected to this domain's port.
    Inter(DomId, u32),
    Ipi,
    Virq(u32),
    Pirq(u32),
}

#[derive(Clone, Copy, Debug)]
struct MPort {
    kind: Kind,
    vcpu: u32,
    priority: u8,
    /// An unbound port a send found (and dropped).
    dropped: bool,
}

/// A free port: Xen's `free_evtchn` resets the notify vCPU to 0.
const FREE: MPort = MPort {
    kind: Kind::Free,
    vcpu: 0,
    priority: 0,
    dropped: false,
};

/// What a domain is made with.
#[derive(Clone, Copy, Debug)]
struct Config {
    privileged: bool,
    nr_pirqs: u32,
    max_port: u32,
}

impl Config {
    fn decode(input: &mut Input) -> Self {
        let privileged = input.flip();
        let nr_pirqs = input.below(5);
        let max_port = match input.byte() {
            b @ 0..=95 => 1 + u32::from(b) % 15,
            b @ 96..=223 => 16 + u32::from(b) % 47,
            _ => NR_PORTS - 1,
        };
        Config {
            privileged,
            nr_pirqs,
            max_port,
        }
    }

    fn build(self) -> Dom {
        let host = Host::new(
            TwoLevel::new(OwnedMemory::new(1, NR_VCPUS as usize)),
            Kicks::default(),
        )
        .with_max_port(self.max_port);
        Domain::new(host)
            .privileged(self.privileged)
            .nr_pirqs(self.nr_pirqs)
    }
}

#[derive(Clone, Debug)]
struct MDom {
    id: DomId,
    cfg: Config,
    /// Paused by its controller: another domain may reset it.
    paused: bool,
    ports: Vec<MPort>,
    pending: u64,
    mask: u64,
    /// Each vCPU's selector bit of word 0 (the only word).
    sel: [bool; NR_VCPUS as usize],
    /// Each vCPU's upcall flag.
    flag: [bool; NR_VCPUS as usize],
    /// Xen's `virq_to_evtchn`: (vCPU, VIRQ) → port; a global VIRQ is vCPU
    /// 0's.
    virqs: BTreeMap<(u32, u32), u32>,
    /// PIRQ → port.
    pirqs: BTreeMap<u32, u32>,
    /// The kicks expected since the last comparison.
    kicks: Vec<u32>,
}

impl MDom {
    fn new(id: DomId, cfg: Config) -> Self {
        MDom {
            id,
            cfg,
            paused: false,
            // Port 0 is Xen's reserved port: no operation takes it.
            ports: vec![FREE; NR_PORTS as usize],
            pending: 0,
            mask: 0,
            sel: [false; NR_VCPUS as usize],
            flag: [false; NR_VCPUS as usize],
            virqs: BTreeMap::new(),
            pirqs: BTreeMap::new(),
            kicks: Vec::new(),
        }
    }

    fn bound(&self) -> impl Iterator<Item = u32> + '_ {
        (1..NR_PORTS).filter(|&p| self.ports[p as usize].kind != Kind::Free)
    }
}

/// Xen's per-vCPU ("V.") VIRQs: the timer, the debug request, the profiler
/// and the PMU; every other one is global.
fn virq_per_vcpu(v: u32) -> bool {
    matches!(v, 0 | 1 | 7 | 13)
}

/// The `errno` Xen returns for each refusal the model states as an
/// [`Error`].
fn errno_of(e: Error) -> i32 {
    match e {
        Error::NoSuchDomain => errno::ESRCH,
        Error::VcpuOutOfRange => errno::ENOENT,
        Error::NoFreePort => errno::ENOSPC,
        Error::AlreadyBound => errno::EEXIST,
        Error::NotPermitted => errno::EPERM,
        _ => errno::EINVAL,
    }
}

/// The port number `port` as an index into the table: port 0 and numbers
/// beyond the table are out of range.
fn in_table(port: u32) -> Result<usize, Error> {
    if port == 0 || port >= NR_PORTS {
        Err(Error::PortOutOfRange)
    } else {
        Ok(port as usize)
    }
}

fn rd16(a: &[u8], off: usize) -> u16 {
    u16::from_ne_bytes([a[off], a[off + 1]])
}

fn rd32(a: &[u8], off: usize) -> u32 {
    u32::from_ne_bytes([a[off], a[off + 1], a[off + 2], a[off + 3]])
}

fn wr16(a: &mut [u8], off: usize, v: u16) {
    a[off..off + 2].copy_from_slice(&v.to_ne_bytes());
}

fn wr32(a: &mut [u8], off: usize, v: u32) {
    a[off..off + 4].copy_from_slice(&v.to_ne_bytes());
}

/// The reference model: every domain, as Xen's rules say.
struct Model {
    doms: Vec<MDom>,
    sabotage: Option<Sabotage>,
}

impl Model {
    fn sabotaged(&self, s: Sabotage) -> bool {
        self.sabotage == Some(s)
    }

    fn find(&self, id: DomId) -> Result<usize, Error> {
        self.doms
            .iter()
            .position(|d| d.id == id)
            .ok_or(Error::NoSuchDomain)
    }

    fn has(&self, id: DomId) -> bool {
        self.find(id).is_ok()
    }

    /// The lowest free port of domain `d` up to its highest.
    fn lowest_free(&self, d: usize) -> Result<u32, Error> {
        let dom = &self.doms[d];
        (1..=dom.cfg.max_port.min(NR_PORTS - 1))
            .find(|&p| dom.ports[p as usize].kind == Kind::Free)
            .ok_or(Error::NoFreePort)
    }

    fn install(&mut self, d: usize, p: u32, kind: Kind, vcpu: u32) {
        self.doms[d].ports[p as usize] = MPort {
            kind,
            vcpu,
            priority: DEFAULT_PRIORITY,
            dropped: false,
        };
    }

    /// Makes word 0 visible to vCPU `v`: its selector bit, and its upcall
    /// flag (a kick if the flag was clear) if the selector bit was clear.
    fn flag_up(&mut self, d: usize, v: u32) {
        let dom = &mut self.doms[d];
        let Some(i) = (v < NR_VCPUS).then_some(v as usize) else {
            return;
        };
        if dom.sel[i] {
            return;
        }
        dom.sel[i] = true;
        if !dom.flag[i] {
            dom.flag[i] = true;
            dom.kicks.push(v);
        }
    }

    /// Xen's `evtchn_port_set_pending` on port `p` of domain `d`, at its
    /// notify vCPU: coalesced if pending already, left for the unmask if
    /// masked.
    fn raise(&mut self, d: usize, p: u32) {
        let bit = 1u64 << p;
        let dom = &mut self.doms[d];
        if dom.pending & bit != 0 {
            return;
        }
        dom.pending |= bit;
        if dom.mask & bit != 0 {
            return;
        }
        let v = dom.ports[p as usize].vcpu;
        self.flag_up(d, v);
    }

    /// Xen's `free_evtchn`: no pending event, notify vCPU 0.
    fn free(&mut self, d: usize, p: usize) {
        let dom = &mut self.doms[d];
        dom.ports[p] = FREE;
        dom.pending &= !(1u64 << p);
    }

    fn add(&mut self, id: DomId, cfg: Config) -> Result<(), Error> {
        if id >= DOMID_FIRST_RESERVED || self.has(id) {
            return Err(Error::DomainExists);
        }
        self.doms.push(MDom::new(id, cfg));
        Ok(())
    }

    fn remove(&mut self, id: DomId) -> Result<(), Error> {
        self.find(id)?;
        self.reset(id, 1, u32::MAX)?;
        let d = self.find(id)?;
        self.doms.remove(d);
        Ok(())
    }

    fn set_paused(&mut self, id: DomId, paused: bool) -> Result<(), Error> {
        let d = self.find(id)?;
        self.doms[d].paused = paused;
        Ok(())
    }

    fn alloc_unbound(&mut self, dom: DomId, remote: DomId) -> Result<u32, Error> {
        let d = self.find(dom)?;
        let p = self.lowest_free(d)?;
        self.install(d, p, Kind::Unbound(remote), 0);
        Ok(p)
    }

    fn bind_interdomain(
        &mut self,
        local: DomId,
        remote: DomId,
        rport: u32,
        atomic: Option<u32>,
    ) -> Result<u32, Error> {
        let l = self.find(local)?;
        let r = self.find(remote)?;
        let vcpu = match atomic {
            Some(v) if v >= NR_VCPUS => return Err(Error::VcpuOutOfRange),
            Some(v) => v,
            None => 0,
        };
        // Xen's order: the free port, then the remote port.
        let lport = self.lowest_free(l)?;
        let rp = in_table(rport)?;
        let old = self.doms[r].ports[rp];
        if old.kind != Kind::Unbound(local) {
            return Err(Error::WrongKind);
        }
        self.install(l, lport, Kind::Inter(remote, rport), vcpu);
        self.doms[r].ports[rp] = MPort {
            kind: Kind::Inter(local, lport),
            dropped: false,
            ..old
        };
        let replay = match atomic {
            None => !self.sabotaged(Sabotage::ConservativeBindRaisesNothing),
            Some(_) => old.dropped && !self.sabotaged(Sabotage::AtomicBindIgnoresDropped),
        };
        if replay {
            self.raise(l, lport);
        }
        Ok(lport)
    }

    /// `EVTCHNOP_send`; `host_only`: [`Host::send`], which does not know
    /// the peer of an interdomain port.
    fn send(&mut self, dom: DomId, port: u32, host_only: bool) -> Result<(), Error> {
        let d = self.find(dom)?;
        let p = in_table(port)?;
        match self.doms[d].ports[p].kind {
            Kind::Free => Err(Error::NotBound),
            Kind::Local | Kind::Ipi => {
                self.raise(d, port);
                Ok(())
            }
            Kind::Unbound(_) => {
                self.doms[d].ports[p].dropped = true;
                Ok(())
            }
            Kind::Inter(rd, rp) if !host_only => {
                let r = self.find(rd)?;
                self.raise(r, rp);
                Ok(())
            }
            Kind::Inter(..) | Kind::Virq(_) | Kind::Pirq(_) => Err(Error::WrongKind),
        }
    }

    /// `EVTCHNOP_close`; `host_only`: [`Host::close`], which refuses an
    /// interdomain end.
    fn close(&mut self, dom: DomId, port: u32, host_only: bool) -> Result<(), Error> {
        let d = self.find(dom)?;
        let p = in_table(port)?;
        let old = self.doms[d].ports[p];
        match old.kind {
            Kind::Free => return Err(Error::NotBound),
            Kind::Inter(..) if host_only => return Err(Error::WrongKind),
            Kind::Inter(rd, rp) => {
                // The peer waits for the closing domain again, on its own
                // notify vCPU, with its pending event.
                let to_0 = self.sabotaged(Sabotage::ClosedPeerMovesToVcpu0);
                let r = self.find(rd)?;
                let peer = &mut self.doms[r].ports[rp as usize];
                *peer = MPort {
                    kind: Kind::Unbound(dom),
                    vcpu: if to_0 { 0 } else { peer.vcpu },
                    priority: peer.priority,
                    dropped: false,
                };
            }
            Kind::Virq(n) => {
                // Xen clears every vCPU's entry naming this port.
                self.doms[d]
                    .virqs
                    .retain(|&(_, v), &mut q| !(v == n && q == port));
            }
            Kind::Pirq(n) => {
                self.doms[d].pirqs.remove(&n);
            }
            _ => {}
        }
        self.free(d, p);
        Ok(())
    }

    /// The status of port `port` of `dom`: its record, pending, masked.
    fn status(&self, dom: DomId, port: u32) -> Result<(MPort, bool, bool), Error> {
        let d = &self.doms[self.find(dom)?];
        let p = in_table(port)?;
        let bit = 1u64 << p;
        Ok((d.ports[p], d.pending & bit != 0, d.mask & bit != 0))
    }

    /// [`Domains::reset`]: closes the bound ports from `from` on, at most
    /// `budget` numbers, and says where to continue.
    fn reset(&mut self, dom: DomId, from: u32, budget: u32) -> Result<Option<u32>, Error> {
        self.find(dom)?;
        let from = from.max(1);
        let end = from.saturating_add(budget).min(NR_PORTS);
        for p in from..end {
            match self.close(dom, p, false) {
                Ok(()) | Err(Error::NotBound) => {}
                Err(e) => return Err(e),
            }
        }
        Ok((end < NR_PORTS).then_some(end))
    }

    fn bind_virq(&mut self, d: usize, virq: u32, vcpu: u32) -> Result<u32, Error> {
        if virq >= NR_VIRQS {
            return Err(Error::VirqOutOfRange);
        }
        if !virq_per_vcpu(virq) && vcpu != 0 {
            return Err(Error::WrongKind);
        }
        if vcpu >= NR_VCPUS {
            return Err(Error::VcpuOutOfRange);
        }
        if self.doms[d].virqs.contains_key(&(vcpu, virq)) {
            return Err(Error::AlreadyBound);
        }
        let p = self.lowest_free(d)?;
        self.install(d, p, Kind::Virq(virq), vcpu);
        self.doms[d].virqs.insert((vcpu, virq), p);
        Ok(p)
    }

    fn bind_pirq(&mut self, d: usize, pirq: u32) -> Result<u32, Error> {
        if self.doms[d].pirqs.contains_key(&pirq) {
            return Err(Error::AlreadyBound);
        }
        let p = self.lowest_free(d)?;
        self.install(d, p, Kind::Pirq(pirq), 0);
        self.doms[d].pirqs.insert(pirq, p);
        Ok(p)
    }

    /// `EVTCHNOP_bind_ipi` (`Kind::Ipi`) or [`Host::bind`] (`Kind::Local`).
    fn bind_on(&mut self, d: usize, vcpu: u32, kind: Kind) -> Result<u32, Error> {
        if vcpu >= NR_VCPUS {
            return Err(Error::VcpuOutOfRange);
        }
        let p = self.lowest_free(d)?;
        self.install(d, p, kind, vcpu);
        Ok(p)
    }

    /// [`Host::unmask`]: a free port is not usable and is left alone (its
    /// mask too; Xen's `evtchn_usable`); Xen's 2-level unmask raises only
    /// when it cleared the mask of a pending port.
    fn unmask(&mut self, d: usize, port: u32) -> Result<(), Error> {
        let p = in_table(port)?;
        let bit = 1u64 << p;
        let dom = &mut self.doms[d];
        if dom.ports[p].kind == Kind::Free {
            return Ok(());
        }
        let was = dom.mask & bit != 0;
        dom.mask &= !bit;
        if was && dom.pending & bit != 0 {
            let v = dom.ports[p].vcpu;
            self.flag_up(d, v);
        }
        Ok(())
    }

    fn bind_vcpu(&mut self, d: usize, port: u32, vcpu: u32) -> Result<(), Error> {
        if vcpu >= NR_VCPUS {
            return Err(Error::VcpuOutOfRange);
        }
        let p = in_table(port)?;
        match self.doms[d].ports[p].kind {
            Kind::Free => return Err(Error::NotBound),
            Kind::Ipi => return Err(Error::WrongKind),
            Kind::Virq(n) if virq_per_vcpu(n) => return Err(Error::WrongKind),
            _ => {}
        }
        let dom = &mut self.doms[d];
        dom.ports[p].vcpu = vcpu;
        let bit = 1u64 << p;
        // QEMU's re-raise: a pending, unmasked event is seen on the new vCPU.
        if dom.pending & bit != 0 && dom.mask & bit == 0 {
            self.flag_up(d, vcpu);
        }
        Ok(())
    }

    fn set_priority(&mut self, d: usize, port: u32, priority: u8) -> Result<(), Error> {
        if priority > 15 {
            return Err(Error::PriorityOutOfRange);
        }
        let p = in_table(port)?;
        let s = &mut self.doms[d].ports[p];
        if s.kind == Kind::Free {
            return Err(Error::NotBound);
        }
        s.priority = priority;
        Ok(())
    }

    fn raise_virq(&mut self, d: usize, vcpu: u32, virq: u32) -> Result<(), Error> {
        if virq >= NR_VIRQS {
            return Err(Error::VirqOutOfRange);
        }
        let key = if virq_per_vcpu(virq) {
            if vcpu >= NR_VCPUS {
                return Err(Error::VcpuOutOfRange);
            }
            (vcpu, virq)
        } else {
            (0, virq)
        };
        if let Some(&p) = self.doms[d].virqs.get(&key) {
            self.raise(d, p);
        }
        Ok(())
    }

    fn raise_pirq(&mut self, d: usize, pirq: u32) {
        if let Some(&p) = self.doms[d].pirqs.get(&pirq) {
            self.raise(d, p);
        }
    }

    /// The guest's own mask: returns whether it was masked.
    fn mask(&mut self, d: usize, port: u32) -> Result<bool, Error> {
        if port >= NR_PORTS {
            return Err(Error::PortOutOfRange);
        }
        let bit = 1u64 << port;
        let dom = &mut self.doms[d];
        let was = dom.mask & bit != 0;
        dom.mask |= bit;
        Ok(was)
    }

    /// The guest's conditional unmask: a pending port keeps its mask and
    /// needs the hypercall.
    fn try_unmask(&mut self, d: usize, port: u32) -> Result<GuestUnmask, Error> {
        if port >= NR_PORTS {
            return Err(Error::PortOutOfRange);
        }
        let bit = 1u64 << port;
        let dom = &mut self.doms[d];
        if dom.pending & bit != 0 {
            return Ok(GuestUnmask::Hypercall);
        }
        dom.mask &= !bit;
        Ok(GuestUnmask::Done)
    }

    /// One upcall of vCPU `v`: clears its flag and selector; if the word
    /// was selected, every pending unmasked port bound here is consumed,
    /// and one bound to another vCPU is raised there. Returns the ports
    /// consumed, lowest first.
    fn drain(&mut self, d: usize, v: u32) -> Result<Vec<u32>, Error> {
        if v >= NR_VCPUS {
            return Err(Error::VcpuOutOfRange);
        }
        let i = v as usize;
        let dom = &mut self.doms[d];
        let selected = dom.sel[i];
        dom.sel[i] = false;
        dom.flag[i] = false;
        let mut consumed = Vec::new();
        if !selected {
            return Ok(consumed);
        }
        let offered = dom.pending & !dom.mask;
        for p in 0..NR_PORTS {
            let s = self.doms[d].ports[p as usize];
            if offered & (1u64 << p) == 0 || s.kind == Kind::Free || p == 0 {
                continue;
            }
            if s.vcpu == v {
                self.doms[d].pending &= !(1u64 << p);
                consumed.push(p);
            } else {
                self.flag_up(d, s.vcpu);
            }
        }
        Ok(consumed)
    }

    /// Who may act on domain `dom` through the hypercall: itself, or a
    /// privileged caller (Xen's XSM default for `XSM_TARGET`).
    fn permit(&self, caller: usize, dom: DomId) -> Result<(), i32> {
        let c = &self.doms[caller];
        if dom != c.id && !c.cfg.privileged {
            Err(errno::EPERM)
        } else {
            Ok(())
        }
    }

    /// `HYPERVISOR_event_channel_op(c, arg)` by `caller`: the return value
    /// and the argument's bytes after the call.
    fn dispatch(&mut self, caller: DomId, c: u32, arg: &[u8]) -> (i32, Vec<u8>) {
        let mut out = arg.to_vec();
        match self.dispatch_inner(caller, c, &mut out) {
            Ok(()) => (0, out),
            Err(e) => (-e, arg.to_vec()),
        }
    }

    fn dispatch_inner(&mut self, caller: DomId, c: u32, a: &mut [u8]) -> Result<(), i32> {
        // The structures' sizes as Xen's `event_channel.h` lays them out.
        let need = match c {
            cmd::BIND_INTERDOMAIN | cmd::BIND_VIRQ | cmd::BIND_PIRQ => 12,
            cmd::CLOSE | cmd::SEND | cmd::UNMASK => 4,
            cmd::STATUS => 24,
            cmd::ALLOC_UNBOUND | cmd::BIND_IPI | cmd::BIND_VCPU | cmd::SET_PRIORITY => 8,
            cmd::RESET | cmd::RESET_CONT => 2,
            // Unknown, and the FIFO set-up the embedder does itself.
            _ => return Err(errno::ENOSYS),
        };
        if a.len() < need {
            return Err(errno::EFAULT);
        }
        let me = self.find(caller).map_err(errno_of)?;
        let self_or = |d: DomId| if d == DOMID_SELF { caller } else { d };
        match c {
            cmd::ALLOC_UNBOUND => {
                let dom = self_or(rd16(a, 0));
                let d = self.find(dom).map_err(errno_of)?;
                // Xen takes the free port before it asks XSM.
                self.lowest_free(d).map_err(errno_of)?;
                self.permit(me, dom)?;
                let remote = self_or(rd16(a, 2));
                let p = self.alloc_unbound(dom, remote).map_err(errno_of)?;
                wr32(a, 4, p);
            }
            cmd::BIND_INTERDOMAIN => {
                let rd = self_or(rd16(a, 0));
                let p = self
                    .bind_interdomain(caller, rd, rd32(a, 4), None)
                    .map_err(errno_of)?;
                wr32(a, 8, p);
            }
            cmd::BIND_VIRQ => {
                let p = self
                    .bind_virq(me, rd32(a, 0), rd32(a, 4))
                    .map_err(errno_of)?;
                wr32(a, 8, p);
            }
            cmd::BIND_PIRQ => {
                let pirq = rd32(a, 0);
                if pirq >= self.doms[me].cfg.nr_pirqs {
                    return Err(errno::EINVAL);
                }
                let p = self.bind_pirq(me, pirq).map_err(errno_of)?;
                wr32(a, 8, p);
            }
            cmd::BIND_IPI => {
                let p = self.bind_on(me, rd32(a, 0), Kind::Ipi).map_err(errno_of)?;
                wr32(a, 4, p);
            }
            cmd::CLOSE => self.close(caller, rd32(a, 0), false).map_err(errno_of)?,
            cmd::SEND => self.send(caller, rd32(a, 0), false).map_err(errno_of)?,
            cmd::UNMASK => match rd32(a, 0) {
                p if p >= NR_PORTS => return Err(errno::EINVAL),
                // The reserved port is not usable: nothing happens.
                0 => {}
                p => self.unmask(me, p).map_err(errno_of)?,
            },
            cmd::STATUS => {
                let dom = self_or(rd16(a, 0));
                let d = self.find(dom).map_err(errno_of)?;
                let port = rd32(a, 4);
                // Xen checks the port before it asks XSM.
                if port >= NR_PORTS {
                    return Err(errno::EINVAL);
                }
                self.permit(me, dom)?;
                let s = self.doms[d].ports[port as usize];
                let status = match (port, s.kind) {
                    (0, _) | (_, Kind::Free) => stat::CLOSED,
                    (_, Kind::Unbound(r)) => {
                        wr16(a, 16, r);
                        stat::UNBOUND
                    }
                    (_, Kind::Inter(r, q)) => {
                        wr16(a, 16, r);
                        wr32(a, 20, q);
                        stat::INTERDOMAIN
                    }
                    (_, Kind::Pirq(n)) => {
                        wr32(a, 16, n);
                        stat::PIRQ
                    }
                    (_, Kind::Virq(n)) => {
                        wr32(a, 16, n);
                        stat::VIRQ
                    }
                    (_, Kind::Ipi | Kind::Local) => stat::IPI,
                };
                wr32(a, 8, status);
                wr32(a, 12, if port == 0 { 0 } else { s.vcpu });
            }
            cmd::BIND_VCPU => self
                .bind_vcpu(me, rd32(a, 0), rd32(a, 4))
                .map_err(errno_of)?,
            cmd::RESET | cmd::RESET_CONT => {
                let dom = self_or(rd16(a, 0));
                let d = self.find(dom).map_err(errno_of)?;
                self.permit(me, dom)?;
                // Xen resets another domain only while its controller has
                // it paused.
                if dom != caller && !self.doms[d].paused {
                    return Err(errno::EINVAL);
                }
                // Every reset runs to its end: none is left to continue.
                if c == cmd::RESET_CONT {
                    return Err(errno::EBUSY);
                }
                self.reset(dom, 1, u32::MAX).map_err(errno_of)?;
            }
            // SET_PRIORITY: a port beyond the table, then the 2-level ABI's
            // lack of priorities.
            _ => {
                return Err(if rd32(a, 0) >= NR_PORTS {
                    errno::EINVAL
                } else {
                    errno::ENOSYS
                })
            }
        }
        Ok(())
    }
}

// ---------------------------------------------------------------------------
// Operations
// ---------------------------------------------------------------------------

#[derive(Clone, Debug)]
enum Op {
    Dispatch {
        caller: DomId,
        cmd: u32,
        arg: Vec<u8>,
    },
    AllocUnbound(DomId, DomId),
    /// `Some(v)`: [`BindMode::Atomic`] on `v`; `None`: conservative.
    BindInterdomain(DomId, DomId, u32, Option<u32>),
    Send(DomId, u32),
    Close(DomId, u32),
    Status(DomId, u32),
    Reset(DomId, u32, u32),
    /// The whole domain, this many ports per call (at least 1).
    ResetChunks(DomId, u32),
    RaiseVirq(DomId, u32, u32),
    RaisePirq(DomId, u32),
    HostBind(DomId, u32),
    HostSend(DomId, u32),
    HostClose(DomId, u32),
    SetPriority(DomId, u32, u8),
    Mask(DomId, u32),
    /// The guest clears a mask bit by a plain write.
    ClearMask(DomId, u32),
    /// The conditional unmask, and `EVTCHNOP_unmask` if it asks for it.
    TryUnmask(DomId, u32),
    Drain(DomId, u32),
    Remove(DomId),
    Add(DomId, Config),
    SetPaused(DomId, bool),
}

fn cmd_name(c: u32) -> String {
    let name = match c {
        cmd::BIND_INTERDOMAIN => "bind_interdomain",
        cmd::BIND_VIRQ => "bind_virq",
        cmd::BIND_PIRQ => "bind_pirq",
        cmd::CLOSE => "close",
        cmd::SEND => "send",
        cmd::STATUS => "status",
        cmd::ALLOC_UNBOUND => "alloc_unbound",
        cmd::BIND_IPI => "bind_ipi",
        cmd::BIND_VCPU => "bind_vcpu",
        cmd::UNMASK => "unmask",
        cmd::RESET => "reset",
        cmd::INIT_CONTROL => "init_control",
        cmd::EXPAND_ARRAY => "expand_array",
        cmd::RESET_CONT => "reset_cont",
        cmd::SET_PRIORITY => "set_priority",
        _ => return format!("cmd {c:#x}"),
    };
    name.to_string()
}

fn hex(a: &[u8]) -> String {
    a.iter().map(|b| format!("{b:02x}")).collect()
}

impl std::fmt::Display for Op {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Op::Dispatch { caller, cmd, arg } => {
                write!(f, "dispatch({caller}, {}, [{}])", cmd_name(*cmd), hex(arg))
            }
            op => write!(f, "{op:?}"),
        }
    }
}

/// What one domain shows, for the check that a refusal changed nothing.
type Snapshot = Vec<(DomId, Vec<Result<HostStatus, Error>>, Vec<u64>)>;

/// The run: input and trace, the model, each vCPU's round-robin position.
struct Run<'i> {
    st: St<'i>,
    model: Model,
    cursors: BTreeMap<(DomId, u32), TwoLevelCursor>,
    /// Ids of domains removed, for arguments naming them and for re-adding.
    gone: Vec<DomId>,
}

impl Run<'_> {
    #[track_caller]
    fn fail(&self, msg: impl std::fmt::Display) -> ! {
        self.st.fail(msg)
    }

    // -- Decoding ----------------------------------------------------------

    /// A domain that exists (the first one when none does: an absent id).
    fn known_dom(&mut self) -> DomId {
        let b = usize::from(self.st.input.byte());
        match self.model.doms.len() {
            0 => self.absent_dom(),
            n => self.model.doms[b % n].id,
        }
    }

    /// A domain id nobody has: one removed, or the lowest free small id.
    fn absent_dom(&mut self) -> DomId {
        if let Some(&g) = self.gone.last() {
            if !self.model.has(g) {
                return g;
            }
        }
        (0..DOMID_FIRST_RESERVED)
            .find(|&d| !self.model.has(d))
            .unwrap_or(0)
    }

    /// A domain argument: mostly one that exists, sometimes the caller
    /// (`DOMID_SELF`, `self_ok`), one that does not, or a reserved id.
    fn dom_arg(&mut self, self_ok: bool) -> DomId {
        match self.st.input.byte() {
            0..=199 => self.known_dom(),
            200..=219 if self_ok => DOMID_SELF,
            200..=234 => self.absent_dom(),
            b => [DOMID_SELF, DOMID_SELF + 1, 0x7fef, u16::MAX][usize::from(b) % 4],
        }
    }

    /// A port of domain `dom`: mostly one the model has bound (an unbound
    /// one waiting for `waiting_for` first, when asked), sometimes any in
    /// the table or just beyond, sometimes a hostile number.
    fn port_arg(&mut self, dom: DomId, waiting_for: Option<DomId>) -> u32 {
        let b = self.st.input.byte();
        let d = self.model.find(dom).ok().map(|d| &self.model.doms[d]);
        let bound: Vec<u32> = d.map(|d| d.bound().collect()).unwrap_or_default();
        if let (Some(w), Some(d), 0..=159) = (waiting_for, d, b) {
            let waiting: Vec<u32> = d
                .bound()
                .filter(|&p| d.ports[p as usize].kind == Kind::Unbound(w))
                .collect();
            if !waiting.is_empty() {
                return waiting[usize::from(b) % waiting.len()];
            }
        }
        match b {
            0..=159 if !bound.is_empty() => bound[usize::from(b) % bound.len()],
            0..=229 => u32::from(b) % (NR_PORTS + 1),
            _ => [0, NR_PORTS - 1, NR_PORTS, 4096, 0x1_0000, 1 << 31, u32::MAX][usize::from(b) % 7],
        }
    }

    fn vcpu_arg(&mut self) -> u32 {
        match self.st.input.byte() {
            b @ 0..=199 => u32::from(b) % NR_VCPUS,
            200..=229 => NR_VCPUS,
            b => [0xffff, 0x1_0000, u32::MAX, NR_VCPUS + 1][usize::from(b) % 4],
        }
    }

    fn virq_arg(&mut self) -> u32 {
        const COMMON: [u32; 8] = [
            virq::TIMER,
            virq::DEBUG,
            virq::CONSOLE,
            virq::DOM_EXC,
            virq::XENOPROF,
            virq::XENPMU,
            virq::ARCH_0,
            NR_VIRQS - 1,
        ];
        match self.st.input.byte() {
            b @ 0..=127 => COMMON[usize::from(b) % COMMON.len()],
            b @ 128..=229 => u32::from(b) % NR_VIRQS,
            b => [NR_VIRQS, 31, 0x100, u32::MAX][usize::from(b) % 4],
        }
    }

    fn pirq_arg(&mut self) -> u32 {
        match self.st.input.byte() {
            b @ 0..=229 => u32::from(b) % 6,
            b => [255, 0x1_0000, u32::MAX][usize::from(b) % 3],
        }
    }

    /// A hypercall: the caller, the command, its argument's bytes (the
    /// `IN` fields written over a fill byte, sometimes cut short or with
    /// bytes beyond the structure).
    fn dispatch_op(&mut self) -> Op {
        const CMDS: [u32; 20] = [
            cmd::BIND_INTERDOMAIN,
            cmd::BIND_INTERDOMAIN,
            cmd::ALLOC_UNBOUND,
            cmd::ALLOC_UNBOUND,
            cmd::SEND,
            cmd::SEND,
            cmd::SEND,
            cmd::BIND_VIRQ,
            cmd::BIND_IPI,
            cmd::BIND_PIRQ,
            cmd::CLOSE,
            cmd::CLOSE,
            cmd::STATUS,
            cmd::STATUS,
            cmd::BIND_VCPU,
            cmd::UNMASK,
            cmd::RESET,
            cmd::SET_PRIORITY,
            cmd::RESET_CONT,
            u32::MAX,
        ];
        let caller = match self.st.input.byte() {
            0..=239 => self.known_dom(),
            b if b % 2 == 0 => DOMID_SELF,
            _ => self.absent_dom(),
        };
        let c = match CMDS[usize::from(self.st.input.byte()) % CMDS.len()] {
            u32::MAX => [cmd::INIT_CONTROL, cmd::EXPAND_ARRAY, 15, 0x100, u32::MAX]
                [usize::from(self.st.input.byte()) % 5],
            c => c,
        };
        let fill = self.st.input.byte();
        let shape = self.st.input.byte();
        let need = match c {
            cmd::BIND_INTERDOMAIN => size_of::<BindInterdomain>(),
            cmd::BIND_VIRQ => size_of::<BindVirq>(),
            cmd::BIND_PIRQ => size_of::<BindPirq>(),
            cmd::CLOSE | cmd::SEND | cmd::UNMASK => size_of::<PortArg>(),
            cmd::STATUS => size_of::<Status>(),
            cmd::ALLOC_UNBOUND => size_of::<AllocUnbound>(),
            cmd::BIND_IPI => size_of::<BindIpi>(),
            cmd::BIND_VCPU => size_of::<BindVcpu>(),
            cmd::RESET | cmd::RESET_CONT => size_of::<Reset>(),
            cmd::SET_PRIORITY => size_of::<SetPriority>(),
            _ => 8,
        };
        let mut a = vec![fill; need + usize::from(shape % 8)];
        let me = if caller == DOMID_SELF { 0 } else { caller };
        match c {
            cmd::ALLOC_UNBOUND => {
                let dom = self.dom_arg(true);
                let remote = self.dom_arg(true);
                put16(&mut a, offset_of!(AllocUnbound, dom), dom);
                put16(&mut a, offset_of!(AllocUnbound, remote_dom), remote);
            }
            cmd::BIND_INTERDOMAIN => {
                let rd = self.dom_arg(true);
                let on = if rd == DOMID_SELF { me } else { rd };
                let rp = self.port_arg(on, Some(me));
                put16(&mut a, offset_of!(BindInterdomain, remote_dom), rd);
                put32(&mut a, offset_of!(BindInterdomain, remote_port), rp);
            }
            cmd::BIND_VIRQ => {
                let v = self.virq_arg();
                let vcpu = self.vcpu_arg();
                put32(&mut a, offset_of!(BindVirq, virq), v);
                put32(&mut a, offset_of!(BindVirq, vcpu), vcpu);
            }
            cmd::BIND_PIRQ => {
                let pirq = self.pirq_arg();
                let flags = u32::from(self.st.input.byte() % 3);
                put32(&mut a, offset_of!(BindPirq, pirq), pirq);
                put32(&mut a, offset_of!(BindPirq, flags), flags);
            }
            cmd::BIND_IPI => {
                let vcpu = self.vcpu_arg();
                put32(&mut a, offset_of!(BindIpi, vcpu), vcpu);
            }
            cmd::CLOSE | cmd::SEND | cmd::UNMASK => {
                let p = self.port_arg(me, None);
                put32(&mut a, offset_of!(PortArg, port), p);
            }
            cmd::STATUS => {
                let dom = self.dom_arg(true);
                let on = if dom == DOMID_SELF { me } else { dom };
                let p = self.port_arg(on, None);
                put16(&mut a, offset_of!(Status, dom), dom);
                put32(&mut a, offset_of!(Status, port), p);
            }
            cmd::BIND_VCPU => {
                let p = self.port_arg(me, None);
                let vcpu = self.vcpu_arg();
                put32(&mut a, offset_of!(BindVcpu, port), p);
                put32(&mut a, offset_of!(BindVcpu, vcpu), vcpu);
            }
            cmd::RESET | cmd::RESET_CONT => {
                let dom = self.dom_arg(true);
                put16(&mut a, offset_of!(Reset, dom), dom);
            }
            cmd::SET_PRIORITY => {
                let p = self.port_arg(me, None);
                let prio = u32::from(self.st.input.byte() % 20);
                put32(&mut a, offset_of!(SetPriority, port), p);
                put32(&mut a, offset_of!(SetPriority, priority), prio);
            }
            _ => {}
        }
        // One in eight is cut short (a failed copy), possibly to nothing.
        if shape >= 224 {
            a.truncate(usize::from(shape) % need);
        }
        Op::Dispatch {
            caller,
            cmd: c,
            arg: a,
        }
    }

    fn decode(&mut self) -> Op {
        let code = self.st.input.byte() % 32;
        match code {
            0..=11 | 30 | 31 => self.dispatch_op(),
            12 | 13 => {
                let local = self.dom_arg(false);
                let remote = self.dom_arg(false);
                let rp = self.port_arg(remote, Some(local));
                let atomic = (code == 13).then(|| self.vcpu_arg());
                Op::BindInterdomain(local, remote, rp, atomic)
            }
            14 => Op::AllocUnbound(self.dom_arg(false), self.dom_arg(false)),
            15 | 16 => {
                let d = self.dom_arg(false);
                Op::Send(d, self.port_arg(d, None))
            }
            17 => {
                let d = self.dom_arg(false);
                match self.st.input.byte() % 3 {
                    0 => Op::HostSend(d, self.port_arg(d, None)),
                    1 => Op::HostClose(d, self.port_arg(d, None)),
                    _ => Op::HostBind(d, self.vcpu_arg()),
                }
            }
            18 => {
                let d = self.dom_arg(false);
                Op::Close(d, self.port_arg(d, None))
            }
            19 => {
                let d = self.dom_arg(false);
                Op::Status(d, self.port_arg(d, None))
            }
            20 => {
                let d = self.dom_arg(false);
                let from = match self.st.input.byte() {
                    b @ 0..=239 => u32::from(b) % (NR_PORTS + 4),
                    _ => u32::MAX,
                };
                let budget = match self.st.input.byte() {
                    b @ 0..=239 => u32::from(b) % 12,
                    _ => u32::MAX,
                };
                Op::Reset(d, from, budget)
            }
            21 => {
                let d = self.dom_arg(false);
                Op::ResetChunks(d, 1 + self.st.input.below(24))
            }
            22 => {
                let d = self.dom_arg(false);
                let vcpu = self.vcpu_arg();
                Op::RaiseVirq(d, vcpu, self.virq_arg())
            }
            23 => {
                let d = self.dom_arg(false);
                Op::RaisePirq(d, self.pirq_arg())
            }
            24 => {
                let d = self.dom_arg(false);
                Op::Mask(d, self.port_arg(d, None))
            }
            25 => {
                let d = self.dom_arg(false);
                let p = self.port_arg(d, None);
                if self.st.input.flip() {
                    Op::ClearMask(d, p % NR_PORTS)
                } else {
                    Op::TryUnmask(d, p)
                }
            }
            26 | 27 => {
                let d = self.dom_arg(false);
                Op::Drain(d, self.vcpu_arg())
            }
            28 => {
                let d = self.dom_arg(false);
                let p = self.port_arg(d, None);
                Op::SetPriority(d, p, self.st.input.byte() % 20)
            }
            _ => match self.st.input.byte() % 4 {
                0 => Op::Remove(self.dom_arg(false)),
                1 => {
                    let id = match self.st.input.byte() % 4 {
                        0 => self.known_dom(),
                        1 => DOMID_SELF,
                        _ => self.absent_dom(),
                    };
                    Op::Add(id, Config::decode(&mut self.st.input))
                }
                2 => {
                    let d = self.dom_arg(false);
                    Op::SetPaused(d, self.st.input.flip())
                }
                _ => {
                    let d = self.dom_arg(false);
                    Op::HostBind(d, self.vcpu_arg())
                }
            },
        }
    }

    // -- Checking ----------------------------------------------------------

    fn compare<T: PartialEq + std::fmt::Debug>(&self, what: &str, got: T, want: T) {
        if got != want {
            self.fail(format!("{what}: core {got:?}, model {want:?}"));
        }
    }

    fn snapshot(&self, doms: &Doms) -> Snapshot {
        self.model
            .doms
            .iter()
            .map(|d| {
                let host = doms.host(d.id).expect("a domain the model has");
                let st = (0..=NR_PORTS).map(|p| host.status(p)).collect();
                (d.id, st, raw_words(host.abi().memory()))
            })
            .collect()
    }

    /// Every domain, port and word against the model; the kicks of the
    /// operation (`extra`: those a drain reported).
    fn check(&mut self, doms: &Doms, extra: &[(DomId, u32)]) {
        for probe in (0..12).chain([0x7fef, DOMID_SELF, u16::MAX]) {
            let has = doms.domain(probe).is_ok();
            if has != self.model.has(probe) {
                self.fail(format!("domain {probe} exists: core {has}, model {}", !has));
            }
        }
        for i in 0..self.model.doms.len() {
            let id = self.model.doms[i].id;
            let Ok(host) = doms.host(id) else {
                self.fail(format!("domain {id} is missing"));
            };
            if host.max_port() != self.model.doms[i].cfg.max_port
                || host.nr_ports() != NR_PORTS
                || host.nr_vcpus() != NR_VCPUS
            {
                self.fail(format!("domain {id}: sizes {host:?}"));
            }
            let free = host.free_port();
            if free != self.model.lowest_free(i) {
                self.fail(format!(
                    "domain {id}: free_port core {free:?}, model {:?}",
                    self.model.lowest_free(i)
                ));
            }
            for p in [0, NR_PORTS] {
                if host.status(p) != Err(Error::PortOutOfRange) {
                    self.fail(format!("status({id}, {p}) = {:?}", host.status(p)));
                }
            }
            for p in 1..NR_PORTS {
                let got = host.status(p);
                let want = self.model.status(id, p);
                match (got, want) {
                    (Ok(g), Ok(w)) if agrees(&g, w) => {}
                    (g, w) => self.fail(format!("status({id}, {p}): core {g:?}, model {w:?}")),
                }
            }
            let m = &self.model.doms[i];
            let want = vec![
                m.pending,
                m.mask,
                u64::from(m.sel[0]),
                u64::from(m.flag[0]),
                u64::from(m.sel[1]),
                u64::from(m.flag[1]),
            ];
            let got = raw_words(host.abi().memory());
            if got != want {
                self.fail(format!(
                    "domain {id} words [pending, mask, sel0, flag0, sel1, flag1]: \
                     core {got:x?}, model {want:x?}"
                ));
            }
            let mut got = host.notifier().take();
            got.extend(extra.iter().filter(|(d, _)| *d == id).map(|&(_, v)| v));
            got.sort_unstable();
            let mut want = std::mem::take(&mut self.model.doms[i].kicks);
            want.sort_unstable();
            if got != want {
                self.fail(format!("domain {id} kicks: core {got:?}, model {want:?}"));
            }
        }
    }

    // -- Running -----------------------------------------------------------

    /// Runs `op` on both; returns whether the core refused it.
    fn exec(&mut self, doms: &mut Doms, op: Op, extra: &mut Vec<(DomId, u32)>) -> bool {
        let m = &mut self.model;
        match op {
            Op::Dispatch { caller, cmd, arg } => {
                let mut got = arg.clone();
                let r = doms.dispatch(caller, cmd, &mut got);
                let (want_r, want_arg) = m.dispatch(caller, cmd, &arg);
                self.compare("dispatch's return", r, want_r);
                if got != want_arg {
                    self.fail(format!(
                        "dispatch's argument after: core [{}], model [{}]",
                        hex(&got),
                        hex(&want_arg)
                    ));
                }
                r != 0
            }
            Op::AllocUnbound(d, r) => {
                let want = m.alloc_unbound(d, r);
                self.result("alloc_unbound", doms.alloc_unbound(d, r), want)
            }
            Op::BindInterdomain(l, r, rp, atomic) => {
                let want = m.bind_interdomain(l, r, rp, atomic);
                let mode = match atomic {
                    Some(vcpu) => BindMode::Atomic { vcpu },
                    None => BindMode::Conservative,
                };
                self.result(
                    "bind_interdomain",
                    doms.bind_interdomain(l, r, rp, mode),
                    want,
                )
            }
            Op::Send(d, p) => {
                let want = m.send(d, p, false);
                self.result("send", doms.send(d, p), want)
            }
            Op::Close(d, p) => {
                let want = m.close(d, p, false);
                self.result("close", doms.close(d, p), want)
            }
            Op::Status(d, p) => {
                let want = m.status(d, p);
                match (doms.status(d, p), want) {
                    (Ok(g), Ok(w)) if agrees(&g, w) => false,
                    (Err(g), Err(w)) if g == w => true,
                    (g, w) => self.fail(format!("status: core {g:?}, model {w:?}")),
                }
            }
            Op::Reset(d, from, budget) => {
                let want = m.reset(d, from, budget);
                self.result("reset", doms.reset(d, from, budget), want)
            }
            Op::ResetChunks(d, chunk) => {
                let mut from = Some(1);
                let mut calls = 0;
                while let Some(f) = from {
                    let want = self.model.reset(d, f, chunk);
                    let got = doms.reset(d, f, chunk);
                    self.compare("reset chunk", got, want);
                    calls += 1;
                    if calls > NR_PORTS + 1 {
                        self.fail("reset in chunks does not end");
                    }
                    from = got.ok().flatten();
                }
                !self.model.has(d)
            }
            Op::RaiseVirq(d, vcpu, v) => self.on_host(doms, d, "raise_virq", |m, i| {
                (m.raise_virq(i, vcpu, v), move |h: &H| h.raise_virq(vcpu, v))
            }),
            Op::RaisePirq(d, pirq) => self.on_host(doms, d, "raise_pirq", |m, i| {
                m.raise_pirq(i, pirq);
                (Ok(()), move |h: &H| h.raise_pirq(pirq))
            }),
            Op::HostBind(d, vcpu) => self.on_host(doms, d, "Host::bind", |m, i| {
                (m.bind_on(i, vcpu, Kind::Local), move |h: &H| h.bind(vcpu))
            }),
            Op::HostSend(d, p) => self.on_host(doms, d, "Host::send", |m, _| {
                (m.send(d, p, true), move |h: &H| h.send(p))
            }),
            Op::HostClose(d, p) => self.on_host(doms, d, "Host::close", |m, _| {
                (m.close(d, p, true), move |h: &H| h.close(p))
            }),
            Op::SetPriority(d, p, prio) => self.on_host(doms, d, "set_priority", |m, i| {
                (m.set_priority(i, p, prio), move |h: &H| {
                    h.set_priority(p, prio)
                })
            }),
            Op::Mask(d, p) => self.on_host(doms, d, "guest mask", |m, i| {
                (m.mask(i, p), move |h: &H| h.abi().mask(p))
            }),
            Op::ClearMask(d, p) => self.on_host(doms, d, "guest mask clear", |m, i| {
                m.doms[i].mask &= !(1u64 << p);
                (Ok(()), move |h: &H| {
                    // SeqCst: the guest's plain clear, single-threaded here;
                    // the strongest order costs nothing.
                    h.abi().memory().mask()[0].fetch_and(!(1u64 << p), SeqCst);
                    Ok(())
                })
            }),
            Op::TryUnmask(d, p) => {
                let refused = self.on_host(doms, d, "guest try_unmask", |m, i| {
                    (m.try_unmask(i, p), move |h: &H| h.abi().try_unmask(p))
                });
                // Still masked and pending: the guest asks the hypervisor.
                let asks = self.model.find(d).is_ok_and(|i| {
                    let m = &self.model.doms[i];
                    p < NR_PORTS && m.mask & m.pending & (1u64 << p) != 0
                });
                if !refused && asks {
                    let mut a = p.to_ne_bytes().to_vec();
                    let r = doms.dispatch(d, cmd::UNMASK, &mut a);
                    let (want, _) = self.model.dispatch(d, cmd::UNMASK, &a);
                    self.compare("the unmask hypercall", r, want);
                }
                refused
            }
            Op::Drain(d, v) => self.drain(doms, d, v, extra),
            Op::Remove(d) => {
                let want = m.remove(d);
                let got = doms.remove(d).map(|_| ());
                if got.is_ok() {
                    self.gone.push(d);
                    self.cursors.retain(|&(id, _), _| id != d);
                }
                self.result("remove", got, want)
            }
            Op::Add(d, cfg) => {
                let want = m.add(d, cfg);
                self.result("add", doms.add(d, cfg.build()), want)
            }
            Op::SetPaused(d, paused) => {
                let want = m.set_paused(d, paused);
                self.result("set_paused", doms.set_paused(d, paused), want)
            }
        }
    }

    /// Compares the results of a direct call; returns whether it refused.
    fn result<T: PartialEq + std::fmt::Debug>(
        &self,
        what: &str,
        got: Result<T, Error>,
        want: Result<T, Error>,
    ) -> bool {
        let refused = got.is_err();
        self.compare(what, got, want);
        refused
    }

    /// A call on domain `d`'s [`Host`] (or its memory): `both` applies the
    /// call to the model's domain (its index) and returns the model's
    /// result and the core's call. A domain that does not exist is
    /// [`Error::NoSuchDomain`] from [`Domains::host`].
    fn on_host<T, F>(
        &mut self,
        doms: &Doms,
        d: DomId,
        what: &str,
        both: impl FnOnce(&mut Model, usize) -> (Result<T, Error>, F),
    ) -> bool
    where
        T: PartialEq + std::fmt::Debug,
        F: FnOnce(&H) -> Result<T, Error>,
    {
        match (doms.host(d), self.model.find(d)) {
            (Ok(h), Ok(i)) => {
                let (want, call) = both(&mut self.model, i);
                self.result(what, call(h), want)
            }
            (Err(Error::NoSuchDomain), Err(Error::NoSuchDomain)) => true,
            (g, w) => self.fail(format!("{what}: host({d}) core {g:?}, model {w:?}")),
        }
    }

    /// One upcall of vCPU `v` of `d`, as the guest runs it: a port bound
    /// to `v` is consumed, one bound elsewhere handed on, a free one left.
    fn drain(&mut self, doms: &Doms, d: DomId, v: u32, extra: &mut Vec<(DomId, u32)>) -> bool {
        let (host, i) = match (doms.host(d), self.model.find(d)) {
            (Ok(h), Ok(i)) => (h, i),
            (Err(Error::NoSuchDomain), Err(Error::NoSuchDomain)) => return true,
            (g, w) => self.fail(format!("drain: host({d}) core {g:?}, model {w:?}")),
        };
        // The guest's view of its ports, as before the upcall.
        let ports: Vec<MPort> = self.model.doms[i].ports.clone();
        let want = self.model.drain(i, v);
        let mut consumed = Vec::new();
        let mut kicks = Vec::new();
        let mut bad = None;
        let abi = host.abi();
        let cursor = self.cursors.entry((d, v)).or_default();
        let got = abi.scan(
            v,
            cursor,
            |p| match ports.get(p as usize) {
                Some(s) if p != 0 && s.kind != Kind::Free => {
                    if s.vcpu != v {
                        return Delivery::Foreign(s.vcpu);
                    }
                    match abi.test_and_clear_pending(p) {
                        Ok(true) => consumed.push(p),
                        r => bad = Some(format!("port {p} offered, then {r:?}")),
                    }
                    Delivery::Handled
                }
                Some(_) => Delivery::Skipped,
                None => {
                    bad = Some(format!("port {p} offered, beyond the table"));
                    Delivery::Skipped
                }
            },
            |k| kicks.push(k),
        );
        if let Some(msg) = bad {
            self.fail(format!("drain({d}, {v}): {msg}"));
        }
        consumed.sort_unstable();
        let refused = got.is_err();
        self.compare("drain", got.map(|()| consumed), want);
        extra.extend(kicks.into_iter().map(|k| (d, k)));
        refused
    }
}

/// The pending and mask words, then each vCPU's selector and upcall flag.
fn raw_words(m: &OwnedMemory) -> Vec<u64> {
    let mut w = vec![
        // SeqCst: a snapshot between operations, single-threaded.
        m.pending()[0].load(SeqCst),
        // SeqCst: as above.
        m.mask()[0].load(SeqCst),
    ];
    for v in 0..NR_VCPUS {
        let vi = m.vcpu_info(v).expect("the memory's vCPUs");
        // SeqCst: as above.
        w.push(vi.evtchn_pending_sel.load(SeqCst));
        // SeqCst: as above.
        w.push(u64::from(vi.evtchn_upcall_pending.load(SeqCst)));
    }
    w
}

/// Whether the core's status of a port is the model's record.
fn agrees(got: &HostStatus, (s, pending, masked): (MPort, bool, bool)) -> bool {
    let kind = match got.kind {
        PortKind::Free => Kind::Free,
        PortKind::Local => Kind::Local,
        PortKind::Unbound { remote } => Kind::Unbound(remote),
        PortKind::Interdomain { remote, port } => Kind::Inter(remote, port),
        PortKind::Ipi => Kind::Ipi,
        PortKind::Virq(n) => Kind::Virq(n),
        PortKind::Pirq(n) => Kind::Pirq(n),
        // A kind the model does not know: never its record.
        _ => return false,
    };
    kind == s.kind
        && got.bound == (s.kind != Kind::Free)
        && got.vcpu == s.vcpu
        && got.priority == s.priority
        && got.pending == pending
        && got.masked == masked
}

fn put16(a: &mut [u8], off: usize, v: u16) {
    a[off..off + 2].copy_from_slice(&v.to_ne_bytes());
}

fn put32(a: &mut [u8], off: usize, v: u32) {
    a[off..off + 4].copy_from_slice(&v.to_ne_bytes());
}

/// [`run`], with a deliberately wrong model when `sabotage` says so.
pub fn run_with(data: &[u8], sabotage: Option<Sabotage>) {
    let mut input = Input::new(data);
    let n = 2 + input.below(2);
    let mut model = Model {
        doms: Vec::new(),
        sabotage,
    };
    let mut doms: Doms = Domains::new();
    let mut first = String::from("domains:");
    for _ in 0..n {
        let mut id = match input.byte() {
            b @ 0..=247 => DomId::from(b % 8),
            b => DOMID_FIRST_RESERVED - 1 - DomId::from(b - 248),
        };
        while model.has(id) {
            id = (id + 1) % DOMID_FIRST_RESERVED;
        }
        let cfg = Config::decode(&mut input);
        first.push_str(&format!(" {id}: {cfg:?};"));
        model.add(id, cfg).expect("a fresh id");
        if let Err(e) = doms.add(id, cfg.build()) {
            panic!("domains: add({id}) = {e:?}");
        }
    }
    let mut run = Run {
        st: St::new("domains", MAX_OPS, input, first),
        model,
        cursors: BTreeMap::new(),
        gone: Vec::new(),
    };
    run.check(&doms, &[]);
    while run.st.budget_left() {
        let op = run.decode();
        run.st.ops += 1;
        run.st.trace.push(op.to_string());
        let before = run.snapshot(&doms);
        let mut extra = Vec::new();
        let refused = run.exec(&mut doms, op, &mut extra);
        if refused {
            let after = run.snapshot(&doms);
            if after != before {
                run.fail("a refused operation changed the domains' state");
            }
        }
        run.check(&doms, &extra);
    }
}
