//! The hypervisor side: a domain's port table with Xen's semantics, over the
//! raise half of an ABI ([`Raise`]).
//!
//! The guest owns its mask bits (the 2-level `evtchn_mask`, the FIFO
//! `MASKED` bit). The host reads them when it raises and writes them only
//! in [`Host::unmask`], which the guest asks for (`EVTCHNOP_unmask`). It
//! keeps, per port, only what Xen keeps in `struct evtchn`: the state and
//! kind (a port the embedder raises itself, an IPI, a VIRQ, a PIRQ, an
//! unbound port, with its number), the notify vCPU and the priority; and,
//! under its lock, which port each VIRQ of each vCPU and each PIRQ has. [`Host::bind_vcpu`] changes the notify vCPU
//! alone and, as QEMU's emulation does, raises a pending, unmasked event
//! again on the new vCPU; [`Host::close`] clears the pending state (Xen's
//! `evtchn_free`) and resets the notify vCPU to 0; [`Host::bind`] touches
//! neither pending nor mask. Nothing is written to the guest's memory at
//! start-up.
//!
//! Locking: the binds, close, bind_vcpu and set_priority serialise on the
//! host's lock (Xen's `event_lock`); send and unmask never take it;
//! `raise_virq` and `raise_pirq` look their port up under it (Xen's
//! `virq_lock`), so a close cannot free the port between the look-up and
//! the raise.

use alloc::boxed::Box;
use alloc::collections::BTreeMap;

use crate::abi::{Raise, Raised};
use crate::sync::{AtomicU32, AtomicU64, Lock, Ordering::*};
use crate::weaken::{Weaken, Weakness};
use crate::xen::evtchnop::virq;
use crate::{Error, Notify};

const STATE: u64 = 0b1;
const BOUND: u64 = 1;
const PRIORITY_SHIFT: u32 = 8;
const PRIORITY: u64 = 0xf << PRIORITY_SHIFT;
const VCPU_SHIFT: u32 = 16;
const VCPU: u64 = 0xffff << VCPU_SHIFT;
/// A bound port's kind: Xen's `EVTCHNSTAT_*` number, or 0 for a port the
/// embedder binds and raises itself ([`Host::bind`]).
const KIND_SHIFT: u32 = 1;
const KIND: u64 = 0b111 << KIND_SHIFT;
const K_LOCAL: u64 = 0;
const K_UNBOUND: u64 = 1;
const K_INTERDOMAIN: u64 = 2;
const K_PIRQ: u64 = 3;
const K_VIRQ: u64 = 4;
const K_IPI: u64 = 5;
/// The kind's number: the remote domain of an unbound port, the VIRQ, the
/// PIRQ; an interdomain port's peer ([`peer_detail`]).
const DETAIL_SHIFT: u32 = 32;
/// An unbound port that a send found (and dropped), set under the lock by
/// the first such send (every such send takes the lock) and read by the
/// bind that connects the port
/// ([`BindMode::Atomic`] replays it instead of Xen's conservative event).
const DROPPED: u64 = 1 << 4;
/// An interdomain peer's port number in the detail half: 17 bits, FIFO's
/// 2^17 ports; the domain in the 15 above it.
const PEER_PORT_BITS: u32 = 17;
const PEER_PORT: u32 = (1 << PEER_PORT_BITS) - 1;

/// Xen's default FIFO priority (`EVTCHN_FIFO_PRIORITY_DEFAULT`).
pub(crate) const DEFAULT_PRIORITY: u8 = 7;

#[inline(always)]
fn vcpu_of(w: u64) -> u32 {
    // 16 bits: always fits.
    u32::try_from((w & VCPU) >> VCPU_SHIFT).unwrap_or(0)
}

#[inline(always)]
fn kind_of(w: u64) -> u64 {
    (w & KIND) >> KIND_SHIFT
}

#[inline(always)]
fn detail_of(w: u64) -> u32 {
    // The high half: always fits.
    u32::try_from(w >> DETAIL_SHIFT).unwrap_or(0)
}

#[inline(always)]
fn priority_of(w: u64) -> u8 {
    // 4 bits: always fits.
    u8::try_from((w & PRIORITY) >> PRIORITY_SHIFT).unwrap_or(0)
}

/// The detail half of an interdomain port: `dom` in 15 bits (every domain
/// id below `DOMID_FIRST_RESERVED` fits), `port` in 17.
#[inline(always)]
pub(crate) fn peer_detail(dom: u16, port: u32) -> u32 {
    (u32::from(dom & 0x7fff) << PEER_PORT_BITS) | (port & PEER_PORT)
}

#[inline(always)]
fn peer_of(w: u64) -> (u16, u32) {
    let d = detail_of(w);
    // 15 bits: always fits.
    (
        u16::try_from(d >> PEER_PORT_BITS).unwrap_or(0),
        d & PEER_PORT,
    )
}

#[inline(always)]
fn bound_word(kind: u64, detail: u32, vcpu: u32, priority: u8) -> u64 {
    BOUND
        | (kind << KIND_SHIFT)
        | (u64::from(detail) << DETAIL_SHIFT)
        | (u64::from(vcpu) << VCPU_SHIFT)
        | (u64::from(priority) << PRIORITY_SHIFT)
}

/// Whether `virq` has a port per vCPU (Xen's "V." VIRQs: the timer, the
/// debug request, the profiling and PMU interrupts); the others are
/// global, bound on vCPU 0 and movable (the architecture's VIRQs
/// included).
#[inline]
fn virq_is_per_vcpu(v: u32) -> bool {
    matches!(v, virq::TIMER | virq::DEBUG | virq::XENOPROF | virq::XENPMU)
}

/// A port's kind, as [`Host::status`] reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum PortKind {
    /// Free.
    Free,
    /// Bound by [`Host::bind`]: a port the embedder raises itself
    /// ([`Host::send`]); movable.
    Local,
    /// `EVTCHNOP_alloc_unbound`: waiting for domain `remote` to connect. A
    /// send on it is dropped.
    Unbound {
        /// The domain allowed to connect.
        remote: u16,
    },
    /// `EVTCHNOP_bind_interdomain` (either end): a send raises the peer,
    /// port `port` of domain `remote` ([`crate::Domains`]).
    Interdomain {
        /// The peer's domain.
        remote: u16,
        /// The peer's port.
        port: u32,
    },
    /// `EVTCHNOP_bind_ipi`: fixed to its vCPU.
    Ipi,
    /// `EVTCHNOP_bind_virq`; a per-vCPU VIRQ is fixed to its vCPU.
    Virq(u32),
    /// `EVTCHNOP_bind_pirq`.
    Pirq(u32),
}

/// Where a send goes ([`Host::route`]).
pub(crate) enum Route<'a> {
    /// A port of this host: raise it.
    Raise(&'a AtomicU64),
    /// Unbound: dropped.
    Dropped,
    /// Interdomain: the peer is raised, under this host's lock.
    Remote(&'a AtomicU64),
}

/// The bindings the host looks up by number, under its lock (Xen's
/// `virq_to_evtchn` and `pirq->evtchn`).
#[derive(Default)]
struct Tables {
    /// (vCPU, VIRQ) → port; a global VIRQ is kept under vCPU 0.
    virq: BTreeMap<(u32, u32), u32>,
    /// PIRQ → port.
    pirq: BTreeMap<u32, u32>,
}

/// What the host knows of one port ([`Host::status`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub struct HostStatus {
    /// Bound (not free).
    pub bound: bool,
    /// The notify vCPU (`notify_vcpu_id`); 0 once freed, as in Xen.
    pub vcpu: u32,
    /// The FIFO priority.
    pub priority: u8,
    /// Pending in the guest's memory.
    pub pending: bool,
    /// Masked by the guest.
    pub masked: bool,
    /// The port's kind and its number.
    pub kind: PortKind,
}

/// A domain's event channels as its hypervisor keeps them: the raise half of
/// an ABI over the guest's memory, a port table, and the kicks.
///
/// # Examples
///
/// ```
/// use evtchn::{xen::SharedInfo, Host, Ports, TwoLevel};
///
/// // A guest's shared_info page (here ours); nothing is written to it yet.
/// let page = Box::new(SharedInfo::new());
/// let host = Host::new(TwoLevel::new(&*page), ());
/// let port = host.bind(1)?;
/// host.send(port)?;
/// assert!(host.abi().is_pending(port)? && host.abi().upcall_pending(1)?);
///
/// // The guest masked the port itself: the host raises nothing visible, and
/// // its bind_vcpu leaves the guest's mask alone.
/// page.evtchn_mask[0].fetch_or(1 << port, std::sync::atomic::Ordering::SeqCst);
/// host.bind_vcpu(port, 0)?;
/// assert!(host.abi().is_masked(port)? && !host.abi().upcall_pending(0)?);
/// // EVTCHNOP_unmask: clears the mask and raises the pending event on vCPU 0.
/// host.unmask(port)?;
/// assert!(host.abi().upcall_pending(0)?);
/// # Ok::<(), evtchn::Error>(())
/// ```
pub struct Host<R: Raise, N: Notify = ()> {
    abi: R,
    notify: N,
    table: Box<[AtomicU64]>,
    lock: Lock<Tables>,
    /// No port below this one is free: bind starts its search here (a hint
    /// only; bind checks every state it passes).
    free_hint: AtomicU32,
    /// The highest port number a bind may hand out (Xen's
    /// `max_evtchn_port`).
    max_port: u32,
    nr_vcpus: u32,
    weak: Weakness,
    /// The deliver half's mask, for [`Weaken::HostBindVcpuMasks`] only (the
    /// raise half has none).
    #[cfg(any(all(loom, feature = "loom"), evtchn_shuttle))]
    weak_mask: Option<MaskFn<R>>,
}

/// The deliver half's mask of a port ([`crate::abi::Deliver::mask`]).
#[cfg(any(all(loom, feature = "loom"), evtchn_shuttle))]
type MaskFn<R> = fn(&R, u32) -> Result<bool, Error>;

impl<R: Raise, N: Notify> core::fmt::Debug for Host<R, N> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Host")
            .field("nr_ports", &self.nr_ports())
            .field("nr_vcpus", &self.nr_vcpus)
            .finish_non_exhaustive()
    }
}

#[cfg(any(all(loom, feature = "loom"), evtchn_shuttle))]
impl<R: crate::abi::PortOps, N: Notify> Host<R, N> {
    /// A host with one protective step weakened (loom models and shuttle negative controls only).
    #[doc(hidden)]
    pub fn weakened(abi: R, notify: N, w: Weaken) -> Self {
        Host {
            weak: Weakness::new(w),
            weak_mask: Some(<R as crate::abi::Deliver>::mask),
            ..Host::new(abi, notify)
        }
    }
}

impl<R: Raise, N: Notify> Host<R, N> {
    /// The hypervisor side over `abi` (the guest's memory), kicking vCPUs
    /// through `notify`. Every port starts free; nothing is written to the
    /// guest's memory.
    #[must_use]
    pub fn new(abi: R, notify: N) -> Self {
        Self::build(abi, notify, Weakness::default())
    }

    pub(crate) fn build(abi: R, notify: N, weak: Weakness) -> Self {
        let nr_ports = abi.nr_ports();
        Host {
            table: (0..nr_ports).map(|_| AtomicU64::new(0)).collect(),
            nr_vcpus: abi.nr_vcpus().min(0xffff),
            abi,
            notify,
            lock: Lock::new(Tables::default()),
            free_hint: AtomicU32::new(1),
            max_port: nr_ports.saturating_sub(1),
            weak,
            #[cfg(any(all(loom, feature = "loom"), evtchn_shuttle))]
            weak_mask: None,
        }
    }

    /// Limits the port numbers a bind hands out to `max_port` and below
    /// (Xen's per-domain `max_evtchn_port`); a bind beyond it is
    /// [`Error::NoFreePort`] (`ENOSPC`). Ports are never above
    /// [`Host::nr_ports`] − 1 whatever `max_port` says.
    #[must_use]
    pub fn with_max_port(mut self, max_port: u32) -> Self {
        self.max_port = max_port.min(self.nr_ports().saturating_sub(1));
        self
    }

    /// The highest port number a bind may hand out.
    #[must_use]
    pub fn max_port(&self) -> u32 {
        self.max_port
    }

    /// The raise half this host drives.
    #[must_use]
    pub fn abi(&self) -> &R {
        &self.abi
    }

    /// The notification hook.
    #[must_use]
    pub fn notifier(&self) -> &N {
        &self.notify
    }

    /// Number of port numbers (port 0 is reserved, as in Xen).
    #[must_use]
    pub fn nr_ports(&self) -> u32 {
        // The table never exceeds the ABI's u32 port count.
        u32::try_from(self.table.len()).unwrap_or(u32::MAX)
    }

    /// Number of vCPUs (at most 65535).
    #[must_use]
    pub fn nr_vcpus(&self) -> u32 {
        self.nr_vcpus
    }

    fn slot(&self, port: u32) -> Result<&AtomicU64, Error> {
        if port == 0 {
            return Err(Error::PortOutOfRange);
        }
        self.table.get(port as usize).ok_or(Error::PortOutOfRange)
    }

    fn check_vcpu(&self, vcpu: u32) -> Result<(), Error> {
        if vcpu < self.nr_vcpus {
            Ok(())
        } else {
            Err(Error::VcpuOutOfRange)
        }
    }

    /// Binds the lowest free port to notify vCPU `vcpu` and returns it.
    /// Touches neither the pending nor the mask state of the port (Xen's
    /// bind leaves both to the guest; its close cleared pending).
    ///
    /// # Errors
    ///
    /// [`Error::VcpuOutOfRange`] if `vcpu` is not below
    /// [`Host::nr_vcpus`]; [`Error::NoFreePort`] if every port is bound, or
    /// the ABI cannot hold the lowest free one (a FIFO event array not
    /// covering it).
    pub fn bind(&self, vcpu: u32) -> Result<u32, Error> {
        self.check_vcpu(vcpu)?;
        let _tables = self.lock.lock();
        self.take_free_port(K_LOCAL, 0, vcpu)
    }

    /// `EVTCHNOP_bind_ipi`: the lowest free port, fixed to notify `vcpu`
    /// ([`Host::bind_vcpu`] refuses it).
    ///
    /// # Errors
    ///
    /// [`Error::VcpuOutOfRange`] (Xen's `ENOENT`), [`Error::NoFreePort`].
    pub fn bind_ipi(&self, vcpu: u32) -> Result<u32, Error> {
        self.check_vcpu(vcpu)?;
        let _tables = self.lock.lock();
        self.take_free_port(K_IPI, 0, vcpu)
    }

    /// `EVTCHNOP_bind_virq`: the lowest free port for VIRQ `virq` of
    /// `vcpu`. A per-vCPU VIRQ (timer, debug, profiling, PMU) has a port
    /// per vCPU, fixed to it; a global one is bound on vCPU 0 and may be
    /// moved. [`Host::raise_virq`] raises it.
    ///
    /// # Errors
    ///
    /// [`Error::VirqOutOfRange`] (`virq` not below `NR_VIRQS`; Xen's
    /// `EINVAL`), [`Error::WrongKind`] (a global VIRQ on a vCPU other than
    /// 0; `EINVAL`), [`Error::VcpuOutOfRange`] (`ENOENT`),
    /// [`Error::AlreadyBound`] (the VIRQ of that vCPU has a port; `EEXIST`),
    /// [`Error::NoFreePort`]. Each changes nothing.
    pub fn bind_virq(&self, virq: u32, vcpu: u32) -> Result<u32, Error> {
        if virq >= virq::NR_VIRQS {
            return Err(Error::VirqOutOfRange);
        }
        let per_vcpu = virq_is_per_vcpu(virq);
        if !per_vcpu && vcpu != 0 {
            return Err(Error::WrongKind);
        }
        self.check_vcpu(vcpu)?;
        let mut tables = self.lock.lock();
        if tables.virq.contains_key(&(vcpu, virq)) {
            return Err(Error::AlreadyBound);
        }
        let port = self.take_free_port(K_VIRQ, virq, vcpu)?;
        tables.virq.insert((vcpu, virq), port);
        Ok(port)
    }

    /// `EVTCHNOP_bind_pirq`: the lowest free port for physical IRQ `pirq`,
    /// on vCPU 0. [`Host::raise_pirq`] raises it. Whether the domain may
    /// use `pirq` is the embedder's to check first (Xen's `EPERM`).
    ///
    /// # Errors
    ///
    /// [`Error::AlreadyBound`] (`EEXIST`), [`Error::NoFreePort`].
    pub fn bind_pirq(&self, pirq: u32) -> Result<u32, Error> {
        let mut tables = self.lock.lock();
        if tables.pirq.contains_key(&pirq) {
            return Err(Error::AlreadyBound);
        }
        let port = self.take_free_port(K_PIRQ, pirq, 0)?;
        tables.pirq.insert(pirq, port);
        Ok(port)
    }

    /// `EVTCHNOP_alloc_unbound`: the lowest free port, waiting for domain
    /// `remote` to connect; a send on it is dropped until then.
    ///
    /// # Errors
    ///
    /// [`Error::NoFreePort`].
    pub fn alloc_unbound(&self, remote: u16) -> Result<u32, Error> {
        let _tables = self.lock.lock();
        self.take_free_port(K_UNBOUND, u32::from(remote), 0)
    }

    /// Binds the lowest free port as `kind` (with its number `detail`) on
    /// `vcpu`. Call with the lock held.
    fn take_free_port(&self, kind: u64, detail: u32, vcpu: u32) -> Result<u32, Error> {
        let port = self.find_free_port()?;
        self.install(port, kind, detail, vcpu)
    }

    /// The port a bind would take now (the lowest free one not above
    /// [`Host::max_port`]); changes nothing.
    ///
    /// # Errors
    ///
    /// [`Error::NoFreePort`].
    pub fn free_port(&self) -> Result<u32, Error> {
        let _tables = self.lock.lock();
        self.find_free_port()
    }

    /// The lowest free port not above [`Host::max_port`]; changes nothing.
    /// Call with the lock held.
    pub(crate) fn find_free_port(&self) -> Result<u32, Error> {
        let end = (self.max_port as usize)
            .saturating_add(1)
            .min(self.table.len());
        // Relaxed: a hint; the search reads every state under the lock.
        let hint = self.free_hint.load(Relaxed);
        let start = (hint as usize).clamp(1, end.max(1));
        let order = (start..end).chain(1..start);
        for n in order {
            let Some(slot) = self.table.get(n) else { break };
            // Relaxed: the lock orders every state change.
            if slot.load(Relaxed) & STATE != BOUND {
                return u32::try_from(n).map_err(|_| Error::NoFreePort);
            }
        }
        Err(Error::NoFreePort)
    }

    /// Binds free `port` (from [`Host::find_free_port`]) as `kind`. Call
    /// with the lock held.
    pub(crate) fn install(
        &self,
        port: u32,
        kind: u64,
        detail: u32,
        vcpu: u32,
    ) -> Result<u32, Error> {
        let slot = self.slot(port)?;
        self.abi.prepare(port).map_err(|_| Error::NoFreePort)?;
        self.abi.set_priority(port, DEFAULT_PRIORITY)?;
        // Release: a sender that finds the port bound (Acquire) sees the
        // ABI's preparation (a FIFO page registered) before it raises.
        slot.store(bound_word(kind, detail, vcpu, DEFAULT_PRIORITY), Release);
        // Relaxed: a hint.
        self.free_hint.store(port.saturating_add(1), Relaxed);
        Ok(port)
    }

    /// `EVTCHNOP_send`: raises `port` on its notify vCPU, which is kicked if
    /// its upcall flag went 0 → 1. A masked port is left pending.
    ///
    /// # Errors
    ///
    /// [`Error::PortOutOfRange`] if `port` is 0 or not below
    /// [`Host::nr_ports`]; [`Error::NotBound`] if it is free;
    /// [`Error::WrongKind`] for a VIRQ or PIRQ port (raised by
    /// [`Host::raise_virq`], [`Host::raise_pirq`]). Each changes nothing.
    /// A send on an unbound port ([`Host::alloc_unbound`]) is dropped and
    /// returns `Ok`, as in Xen.
    ///
    /// An interdomain port is sent through [`crate::Domains::send`], which
    /// knows the peer; here it is [`Error::WrongKind`].
    #[inline]
    pub fn send(&self, port: u32) -> Result<(), Error> {
        let route = self.route(port)?;
        self.send_routed(port, route)
    }

    /// The send to `port` where [`Host::route`] sent it: raised here,
    /// dropped, or (interdomain, which only [`crate::Domains`] can raise)
    /// [`Error::WrongKind`].
    #[inline(always)]
    pub(crate) fn send_routed(&self, port: u32, route: Route<'_>) -> Result<(), Error> {
        match route {
            Route::Raise(slot) => {
                // SeqCst: read after the pending write and the mask read (see
                // `Raise::set_pending`), so that a bind_vcpu's new vCPU is
                // seen by a raise its re-raise could miss.
                self.raise(port, || vcpu_of(slot.load(SeqCst)))?;
                Ok(())
            }
            Route::Dropped => Ok(()),
            Route::Remote(_) => Err(Error::WrongKind),
        }
    }

    /// Where a send on `port` goes. A send on an unbound port is dropped,
    /// as Xen drops it, under the lock, and the first one marks the port
    /// [`DROPPED`] so that the bind connecting it can replay it
    /// ([`Host::mark_dropped`]).
    /// Every change of a port's word is made under the lock.
    #[inline]
    pub(crate) fn route(&self, port: u32) -> Result<Route<'_>, Error> {
        let slot = self.slot(port)?;
        // Acquire: pairs with bind's Release.
        let mut w = slot.load(Acquire);
        loop {
            if w & STATE != BOUND {
                return Err(Error::NotBound);
            }
            match kind_of(w) {
                K_LOCAL | K_IPI => return Ok(Route::Raise(slot)),
                K_INTERDOMAIN => return Ok(Route::Remote(slot)),
                K_UNBOUND => {
                    if w & DROPPED != 0 && self.weak.has(Weaken::MarkedSendLockFree) {
                        return Ok(Route::Dropped);
                    }
                    // Every send on an unbound port takes the lock, marked
                    // or not (as Xen's per-channel lock): a later send must
                    // happen before the bind that replays the mark, or the
                    // replayed run may miss what it wrote (loom S26's two
                    // sends).
                    match self.mark_dropped(slot) {
                        None => return Ok(Route::Dropped),
                        Some(now) => w = now,
                    }
                }
                _ => return Err(Error::WrongKind),
            }
        }
    }

    /// Raises VIRQ `virq` of `vcpu` (Xen's `send_guest_vcpu_virq`; for a
    /// global VIRQ `vcpu` is ignored and the port's notify vCPU is raised,
    /// `send_guest_global_virq`). Nothing happens if the VIRQ has no port.
    ///
    /// # Errors
    ///
    /// [`Error::VirqOutOfRange`]; [`Error::VcpuOutOfRange`] for a per-vCPU
    /// VIRQ. Both change nothing.
    pub fn raise_virq(&self, vcpu: u32, virq: u32) -> Result<(), Error> {
        if virq >= virq::NR_VIRQS {
            return Err(Error::VirqOutOfRange);
        }
        let vcpu = if virq_is_per_vcpu(virq) {
            self.check_vcpu(vcpu)?;
            vcpu
        } else {
            0
        };
        // Under the lock, as Xen's `virq_lock`: a close cannot free the
        // port between the look-up and the raise.
        let tables = self.lock.lock();
        let port = tables.virq.get(&(vcpu, virq)).copied();
        if self.weak.has(Weaken::VirqRaiseUnlocked) {
            drop(tables);
        }
        port.map_or(Ok(()), |p| self.raise_bound(p))
    }

    /// Raises the port bound to physical IRQ `pirq` (Xen's
    /// `send_guest_pirq`). Nothing happens if `pirq` has no port.
    ///
    /// # Errors
    ///
    /// Only what the ABI reports for the port (a hostile memory).
    pub fn raise_pirq(&self, pirq: u32) -> Result<(), Error> {
        let tables = self.lock.lock();
        match tables.pirq.get(&pirq) {
            Some(&port) => self.raise_bound(port),
            None => Ok(()),
        }
    }

    /// Raises a port the tables name on its notify vCPU. Call with the
    /// lock held.
    fn raise_bound(&self, port: u32) -> Result<(), Error> {
        let slot = self.slot(port)?;
        // SeqCst: as in `send`.
        self.raise(port, || vcpu_of(slot.load(SeqCst)))?;
        Ok(())
    }

    /// The raise and its kick, on the vCPU `target` names (read late, as
    /// [`Raise::set_pending`] says). [`Host::send`] names the notify vCPU;
    /// the in-process wiring names the guest's own binding, which its
    /// `bind_vcpu` keeps equal to it.
    #[inline]
    pub(crate) fn raise(&self, port: u32, target: impl FnOnce() -> u32) -> Result<Raised, Error> {
        let raised = self.abi.set_pending(port, target)?;
        if let Raised::Notified { vcpu, kick: true } = raised {
            self.notify.kick(vcpu);
        }
        Ok(raised)
    }

    /// Marks unbound `port` ([`Host::route`]) [`DROPPED`], under the lock,
    /// so that the bind connecting it (which holds the lock) reads the mark
    /// and the send happens before it, or, if the bind came first, this
    /// send sees the connected port. Returns the word to route again when
    /// the port is no longer unbound.
    #[cold]
    fn mark_dropped(&self, slot: &AtomicU64) -> Option<u64> {
        let _tables = self.lock.lock();
        // Relaxed: under the lock, which orders every change of the word.
        let w = slot.load(Relaxed);
        if w & STATE != BOUND || kind_of(w) != K_UNBOUND {
            return Some(w);
        }
        if w & DROPPED != 0 || self.weak.has(Weaken::UnboundSendNoMark) {
            // Marked already; the lock still orders this send before the bind.
            return None;
        }
        // Relaxed: under the lock; the bind that connects the port takes
        // the lock before it reads the mark, so what the sender wrote
        // before this send happens before the bind's replay.
        slot.store(w | DROPPED, Relaxed);
        None
    }

    /// `EVTCHNOP_unmask`, the guest's request: clears the guest's mask of
    /// `port` and, if the port is pending, raises it on its notify vCPU
    /// ([`Raise::unmask`]: 2-level when this call cleared the mask, FIFO
    /// whenever it is pending and not linked). A free port is left alone
    /// (its mask too) and `Ok` returned, as Xen does since it asks whether
    /// the channel is usable (`evtchn_usable`).
    ///
    /// # Errors
    ///
    /// [`Error::PortOutOfRange`] if `port` is 0 or not below
    /// [`Host::nr_ports`] (or the ABI does not hold it); nothing changes.
    pub fn unmask(&self, port: u32) -> Result<(), Error> {
        let slot = self.slot(port)?;
        // Acquire: a port found bound was prepared by its bind (Release)
        // before the ABI is touched below.
        if slot.load(Acquire) & STATE != BOUND {
            return Ok(());
        }
        // SeqCst: read after the mask is cleared; a bind_vcpu before this
        // unmask (Linux's mask, bind_vcpu, unmask) is seen.
        let k = self.abi.unmask(port, || vcpu_of(slot.load(SeqCst)))?;
        if let Some(v) = k {
            self.notify.kick(v);
        }
        Ok(())
    }

    /// `EVTCHNOP_bind_vcpu`: makes `vcpu` the notify vCPU of `port`. The
    /// guest's mask is not touched; a pending, unmasked event is raised
    /// again on `vcpu` (as QEMU's emulation does), so an event raised on
    /// the old vCPU just before is seen on the new one too (at most one
    /// spurious upcall).
    ///
    /// # Errors
    ///
    /// [`Error::PortOutOfRange`], [`Error::NotBound`] (free port),
    /// [`Error::VcpuOutOfRange`] (Xen's `ENOENT`), [`Error::WrongKind`] (an
    /// IPI or a per-vCPU VIRQ; `EINVAL`); each changes nothing.
    pub fn bind_vcpu(&self, port: u32, vcpu: u32) -> Result<(), Error> {
        // Xen's order: the vCPU (ENOENT) before the port (EINVAL).
        self.check_vcpu(vcpu)?;
        let slot = self.slot(port)?;
        let _guard = self.lock.lock();
        // Relaxed: the lock orders every state change.
        let w = slot.load(Relaxed);
        if w & STATE != BOUND {
            return Err(Error::NotBound);
        }
        // Xen's rules: an IPI and a per-vCPU VIRQ stay on their vCPU.
        match kind_of(w) {
            K_IPI => return Err(Error::WrongKind),
            K_VIRQ if virq_is_per_vcpu(detail_of(w)) => return Err(Error::WrongKind),
            _ => {}
        }
        #[cfg(any(all(loom, feature = "loom"), evtchn_shuttle))]
        if let (true, Some(mask)) = (self.weak.has(Weaken::HostBindVcpuMasks), self.weak_mask) {
            mask(&self.abi, port)?;
        }
        // SeqCst: a raise that reads the old vCPU read it before this store
        // in the total order, so its pending bit is visible to the re-raise
        // below (both sides write, then read).
        slot.store((w & !VCPU) | (u64::from(vcpu) << VCPU_SHIFT), SeqCst);
        crate::sync::store_load_fence();
        let k = if self.weak.has(Weaken::HostBindVcpuMasks) {
            self.abi.unmask(port, || vcpu)?
        } else if self.weak.has(Weaken::HostBindVcpuNoReraise) {
            None
        } else {
            self.abi.reraise(port, || vcpu)?
        };
        drop(_guard);
        if let Some(v) = k {
            self.notify.kick(v);
        }
        Ok(())
    }

    /// `EVTCHNOP_close`: clears the pending state of `port` (Xen's
    /// `evtchn_free`), resets its notify vCPU to 0 and frees it. The
    /// guest's mask is not touched.
    ///
    /// # Errors
    ///
    /// [`Error::PortOutOfRange`], [`Error::NotBound`] (free already);
    /// [`Error::WrongKind`] for an interdomain port, whose peer
    /// [`crate::Domains::close`] returns to unbound. Each changes nothing.
    pub fn close(&self, port: u32) -> Result<(), Error> {
        let slot = self.slot(port)?;
        let mut tables = self.lock.lock();
        // Relaxed: the lock orders every state change.
        let w = slot.load(Relaxed);
        if w & STATE != BOUND {
            return Err(Error::NotBound);
        }
        if kind_of(w) == K_INTERDOMAIN {
            return Err(Error::WrongKind);
        }
        self.free_locked(&mut tables, port, slot, w)
    }

    /// Frees bound `port` (its state word `w`, read under the lock, which
    /// the caller holds as `tables`).
    fn free_locked(
        &self,
        tables: &mut Tables,
        port: u32,
        slot: &AtomicU64,
        w: u64,
    ) -> Result<(), Error> {
        match kind_of(w) {
            K_VIRQ => {
                let virq = detail_of(w);
                // A per-vCPU VIRQ never moves; a global one is kept under 0.
                let vcpu = if virq_is_per_vcpu(virq) {
                    vcpu_of(w)
                } else {
                    0
                };
                tables.virq.remove(&(vcpu, virq));
            }
            K_PIRQ => {
                tables.pirq.remove(&detail_of(w));
            }
            _ => {}
        }
        self.free_slot(port, slot)
    }

    /// Frees `port` (its slot `slot`), whose look-up tables are already
    /// cleared. Call with the lock held.
    fn free_slot(&self, port: u32, slot: &AtomicU64) -> Result<(), Error> {
        // Release: pairs with a sender's Acquire state check. A sender that
        // reads the free state stops; one that read BOUND before may still
        // raise after the clear below, and leaves a pending bit on a free
        // port (Xen's per-channel lock excludes that; a guest that binds
        // the number again clears it, as `Guest::bind` does).
        slot.store(0, Release);
        // Xen's "clear pending event to avoid unexpected behavior on
        // re-bind": the number's next life starts with no event (C6).
        if !self.weak.has(Weaken::NoClearOnClose) {
            self.abi.clear_pending(port)?;
        }
        // Relaxed: a hint.
        self.free_hint.fetch_min(port, Relaxed);
        Ok(())
    }

    /// `EVTCHNOP_set_priority` (FIFO; the 2-level ABI only records it).
    ///
    /// # Errors
    ///
    /// [`Error::PriorityOutOfRange`] if `priority` is above 15;
    /// [`Error::PortOutOfRange`], [`Error::NotBound`]; each changes nothing.
    pub fn set_priority(&self, port: u32, priority: u8) -> Result<(), Error> {
        if priority > 15 {
            return Err(Error::PriorityOutOfRange);
        }
        let slot = self.slot(port)?;
        let _guard = self.lock.lock();
        // Relaxed: the lock orders every state change.
        let w = slot.load(Relaxed);
        if w & STATE != BOUND {
            return Err(Error::NotBound);
        }
        self.abi.set_priority(port, priority)?;
        // Relaxed: bookkeeping for `status`; the ABI holds the priority the
        // raise reads.
        slot.store(
            (w & !PRIORITY) | (u64::from(priority) << PRIORITY_SHIFT),
            Relaxed,
        );
        Ok(())
    }

    /// `EVTCHNOP_status`, with the guest memory's pending and mask bits.
    ///
    /// # Errors
    ///
    /// [`Error::PortOutOfRange`] if `port` is 0 or not below
    /// [`Host::nr_ports`].
    #[must_use = "a snapshot; taking it changes nothing"]
    pub fn status(&self, port: u32) -> Result<HostStatus, Error> {
        let slot = self.slot(port)?;
        // Acquire: what the last writer published.
        let w = slot.load(Acquire);
        let bound = w & STATE == BOUND;
        let kind = if !bound {
            PortKind::Free
        } else {
            match kind_of(w) {
                K_UNBOUND => PortKind::Unbound {
                    // 16 bits were stored: always fits.
                    remote: u16::try_from(detail_of(w)).unwrap_or(0),
                },
                K_IPI => PortKind::Ipi,
                K_VIRQ => PortKind::Virq(detail_of(w)),
                K_PIRQ => PortKind::Pirq(detail_of(w)),
                K_INTERDOMAIN => {
                    let (remote, port) = peer_of(w);
                    PortKind::Interdomain { remote, port }
                }
                _ => PortKind::Local,
            }
        };
        Ok(HostStatus {
            kind,
            bound,
            vcpu: vcpu_of(w),
            priority: priority_of(w),
            pending: self.abi.is_pending(port).unwrap_or(false),
            masked: self.abi.is_masked(port).unwrap_or(false),
        })
    }
}

mod domains;
pub use domains::{BindMode, Domain, Domains};
mod dispatch;
