//! Domains: the hypervisor-level object that owns every domain's port
//! table and connects them (interdomain channels, Xen's `struct domain`
//! list and `evtchn_bind_interdomain`).
//!
//! Locking, as Xen's `event_lock`: an interdomain send holds the sending
//! domain's lock while it raises the peer; a close of an interdomain end,
//! and the bind that connects one, hold both domains' locks (the lower
//! domain id first, one lock for a loopback). So a send never lands on a
//! peer number that was closed, and possibly bound again, after the send
//! read it: the close waits for the send. Every other send stays lock-free.

use alloc::vec::Vec;

use super::{
    bound_word, kind_of, peer_detail, peer_of, priority_of, vcpu_of, Host, HostStatus, Route,
    BOUND, DROPPED, K_INTERDOMAIN, K_UNBOUND, STATE,
};
use crate::abi::{Raise, Raised};
use crate::sync::{AtomicBool, Ordering::*};
use crate::weaken::Weaken;
use crate::xen::evtchnop::{DomId, DOMID_FIRST_RESERVED};
use crate::{Error, Notify};

/// How [`Domains::bind_interdomain`] sets the new port up.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum BindMode {
    /// As Xen: the new port notifies vCPU 0 and is set pending at once (a
    /// conservative event: a send on the remote end while it was unbound
    /// was dropped, and this one stands for it). The guest may move it
    /// afterwards with `bind_vcpu`.
    Conservative,
    /// The new port notifies `vcpu` from the start, and no spurious event
    /// is raised: a send the remote end dropped while unbound marked it,
    /// and the bind raises the new port only if it finds that mark.
    Atomic {
        /// The notify vCPU.
        vcpu: u32,
    },
}

/// The vCPU a raise of a peer asks to kick, with the peer's domain.
type PeerKick<'a, R, N> = Option<(&'a Host<R, N>, u32)>;

/// Kicks the vCPU a raise named, if any.
fn kick_after<R: Raise, N: Notify>(kick: PeerKick<'_, R, N>) {
    if let Some((host, vcpu)) = kick {
        host.notify.kick(vcpu);
    }
}

/// One domain: its [`Host`] and what the hypercall surface checks about it.
pub struct Domain<R: Raise, N: Notify = ()> {
    host: Host<R, N>,
    privileged: bool,
    nr_pirqs: u32,
    /// Paused by its controller ([`Domains::set_paused`]).
    paused: AtomicBool,
}

impl<R: Raise, N: Notify> core::fmt::Debug for Domain<R, N> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Domain")
            .field("host", &self.host)
            .field("privileged", &self.privileged)
            .field("nr_pirqs", &self.nr_pirqs)
            .field("paused", &self.is_paused())
            .finish()
    }
}

impl<R: Raise, N: Notify> Domain<R, N> {
    /// A domain over `host`: not privileged, no PIRQs.
    #[must_use]
    pub fn new(host: Host<R, N>) -> Self {
        Domain {
            host,
            privileged: false,
            nr_pirqs: 0,
            paused: AtomicBool::new(false),
        }
    }

    /// May act on other domains through [`Domains::dispatch`]
    /// (`alloc_unbound`, `status` and `reset` of another domain; Xen's
    /// XSM default allows a privileged domain).
    #[must_use]
    pub fn privileged(mut self, yes: bool) -> Self {
        self.privileged = yes;
        self
    }

    /// The PIRQs below `n` are this domain's to bind through
    /// [`Domains::dispatch`] (Xen's `nr_pirqs`; `EINVAL` at or above it).
    #[must_use]
    pub fn nr_pirqs(mut self, n: u32) -> Self {
        self.nr_pirqs = n;
        self
    }

    /// The domain's port table.
    #[must_use]
    pub fn host(&self) -> &Host<R, N> {
        &self.host
    }

    pub(super) fn is_privileged(&self) -> bool {
        self.privileged
    }

    pub(super) fn pirqs(&self) -> u32 {
        self.nr_pirqs
    }

    pub(super) fn is_paused(&self) -> bool {
        // Acquire: pairs with `set_paused`'s Release (the controller paused
        // the domain, then asked for the reset).
        self.paused.load(Acquire)
    }
}

/// The domains a hypervisor runs, each with its port table, and the
/// interdomain channels between them (a loopback, a domain connected to
/// itself, included; a backend in the hypervisor or VMM itself is one more
/// domain whose memory it reads).
///
/// Every domain's ABI is the same type `R` (a hypervisor that mixes
/// 2-level and FIFO domains makes `R` an enum over both).
///
/// # Examples
///
/// ```
/// use evtchn::{BindMode, Domain, Domains, Host, OwnedMemory, PortKind, TwoLevel};
///
/// let mut doms = Domains::new();
/// doms.add(0, Domain::new(Host::new(TwoLevel::new(OwnedMemory::new(1, 2)), ())))?;
/// doms.add(1, Domain::new(Host::new(TwoLevel::new(OwnedMemory::new(1, 2)), ())))?;
///
/// // The backend (0) offers a port to the frontend (1), which binds it on
/// // its vCPU 1.
/// let back = doms.alloc_unbound(0, 1)?;
/// doms.send(0, back)?; // dropped: nobody is connected yet
/// let front = doms.bind_interdomain(1, 0, back, BindMode::Atomic { vcpu: 1 })?;
/// // The dropped send is replayed, on vCPU 1 only.
/// let fe = doms.host(1)?;
/// assert!(fe.abi().is_pending(front)? && fe.abi().upcall_pending(1)?);
/// assert_eq!(doms.status(0, back)?.kind, PortKind::Interdomain { remote: 1, port: front });
///
/// // Closing one end returns the other to unbound.
/// doms.close(1, front)?;
/// assert_eq!(doms.status(0, back)?.kind, PortKind::Unbound { remote: 1 });
/// # use evtchn::Ports;
/// # Ok::<(), evtchn::Error>(())
/// ```
pub struct Domains<R: Raise, N: Notify = ()> {
    /// Sorted by id.
    doms: Vec<(DomId, Domain<R, N>)>,
}

impl<R: Raise, N: Notify> core::fmt::Debug for Domains<R, N> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_map()
            .entries(self.doms.iter().map(|(id, d)| (id, d)))
            .finish()
    }
}

impl<R: Raise, N: Notify> Default for Domains<R, N> {
    fn default() -> Self {
        Self::new()
    }
}

impl<R: Raise, N: Notify> Domains<R, N> {
    /// No domains.
    #[must_use]
    pub fn new() -> Self {
        Domains { doms: Vec::new() }
    }

    /// Adds domain `id`.
    ///
    /// # Errors
    ///
    /// [`Error::DomainExists`] if `id` is taken or reserved (at or above
    /// `DOMID_FIRST_RESERVED`); nothing changes.
    pub fn add(&mut self, id: DomId, domain: Domain<R, N>) -> Result<(), Error> {
        if id >= DOMID_FIRST_RESERVED {
            return Err(Error::DomainExists);
        }
        match self.doms.binary_search_by_key(&id, |(d, _)| *d) {
            Ok(_) => Err(Error::DomainExists),
            Err(at) => {
                self.doms.insert(at, (id, domain));
                Ok(())
            }
        }
    }

    /// Removes domain `id` (it is dying): closes every port first, so each
    /// interdomain peer returns to unbound, as Xen's `evtchn_destroy`.
    ///
    /// # Errors
    ///
    /// [`Error::NoSuchDomain`]; nothing changes.
    pub fn remove(&mut self, id: DomId) -> Result<Domain<R, N>, Error> {
        let at = self
            .doms
            .binary_search_by_key(&id, |(d, _)| *d)
            .map_err(|_| Error::NoSuchDomain)?;
        let mut next = Some(1);
        while let Some(from) = next {
            next = self.reset(id, from, u32::MAX)?;
        }
        Ok(self.doms.remove(at).1)
    }

    /// Records whether domain `id` is paused by its controller: another
    /// domain's `EVTCHNOP_reset` ([`Domains::dispatch`]) is refused
    /// (`EINVAL`) unless it is, as Xen refuses to reset a running domain.
    ///
    /// # Errors
    ///
    /// [`Error::NoSuchDomain`].
    pub fn set_paused(&self, id: DomId, paused: bool) -> Result<(), Error> {
        // Release: what the controller did before pausing is seen by the
        // reset that reads the flag (Acquire).
        self.domain(id)?.paused.store(paused, Release);
        Ok(())
    }

    /// Domain `id`.
    ///
    /// # Errors
    ///
    /// [`Error::NoSuchDomain`] (Xen's `ESRCH`).
    pub fn domain(&self, id: DomId) -> Result<&Domain<R, N>, Error> {
        self.doms
            .binary_search_by_key(&id, |(d, _)| *d)
            .ok()
            .and_then(|at| self.doms.get(at))
            .map(|(_, d)| d)
            .ok_or(Error::NoSuchDomain)
    }

    /// Domain `id`'s port table.
    ///
    /// # Errors
    ///
    /// [`Error::NoSuchDomain`].
    pub fn host(&self, id: DomId) -> Result<&Host<R, N>, Error> {
        self.domain(id).map(Domain::host)
    }

    /// `EVTCHNOP_alloc_unbound`: the lowest free port of domain `dom`,
    /// waiting for domain `remote` (which need not exist yet) to connect.
    ///
    /// # Errors
    ///
    /// [`Error::NoSuchDomain`] (`ESRCH`), [`Error::NoFreePort`] (`ENOSPC`).
    pub fn alloc_unbound(&self, dom: DomId, remote: DomId) -> Result<u32, Error> {
        self.host(dom)?.alloc_unbound(remote)
    }

    /// `EVTCHNOP_bind_interdomain` by domain `local`: connects port
    /// `remote_port` of domain `remote`, which must be unbound for `local`,
    /// to the lowest free port of `local`, and returns that port. Both ends
    /// become interdomain. `mode` says where the new port notifies and
    /// whether it gets Xen's conservative event.
    ///
    /// # Errors
    ///
    /// In Xen's order: [`Error::NoSuchDomain`] (`ESRCH`),
    /// [`Error::VcpuOutOfRange`] (`ENOENT`; [`BindMode::Atomic`] only),
    /// [`Error::NoFreePort`] (`ENOSPC`), [`Error::PortOutOfRange`]
    /// (`EINVAL`), [`Error::WrongKind`] (`EINVAL`: the remote port is not
    /// unbound, or is for another domain). Each changes nothing.
    pub fn bind_interdomain(
        &self,
        local: DomId,
        remote: DomId,
        remote_port: u32,
        mode: BindMode,
    ) -> Result<u32, Error> {
        let lh = self.host(local)?;
        let rh = self.host(remote)?;
        let vcpu = match mode {
            BindMode::Conservative => 0,
            BindMode::Atomic { vcpu } => {
                lh.check_vcpu(vcpu)?;
                vcpu
            }
        };
        // Both locks, the lower domain id first; one for a loopback.
        let (first, second) = if local <= remote { (lh, rh) } else { (rh, lh) };
        let _g1 = first.lock.lock();
        let _g2 = (local != remote).then(|| second.lock.lock());

        let lport = lh.find_free_port()?;
        let rslot = rh.slot(remote_port)?;
        // Relaxed: the remote lock orders every change of the word, a
        // send's DROPPED mark included.
        let rw = rslot.load(Relaxed);
        if rw & STATE != BOUND
            || kind_of(rw) != K_UNBOUND
            || super::detail_of(rw) != u32::from(local)
        {
            return Err(Error::WrongKind);
        }
        lh.install(lport, K_INTERDOMAIN, peer_detail(remote, remote_port), vcpu)?;
        // Connect the remote end, keeping its notify vCPU and priority.
        // Release: a lock-free sender on it that reads the connected word
        // (Acquire) then takes this domain's lock, which orders the rest.
        rslot.store(
            bound_word(
                K_INTERDOMAIN,
                peer_detail(local, lport),
                vcpu_of(rw),
                priority_of(rw),
            ),
            Release,
        );
        let replay = match mode {
            BindMode::Conservative => !lh.weak.has(Weaken::NoConservativeEvent),
            BindMode::Atomic { .. } => {
                rw & DROPPED != 0 && !lh.weak.has(Weaken::BindIgnoresDropped)
            }
        };
        if replay {
            lh.raise_bound(lport)?;
        }
        Ok(lport)
    }

    /// `EVTCHNOP_send` by domain `dom` on `port`: an interdomain port
    /// raises its peer on the peer's notify vCPU; an unbound port drops
    /// the event (marking it for [`BindMode::Atomic`]); any other kind is
    /// [`Host::send`].
    ///
    /// # Errors
    ///
    /// [`Error::NoSuchDomain`]; as [`Host::send`] (`EINVAL` for a free
    /// port, a VIRQ or a PIRQ). Each changes nothing.
    pub fn send(&self, dom: DomId, port: u32) -> Result<(), Error> {
        let host = self.host(dom)?;
        loop {
            match host.route(port)? {
                Route::Remote(slot) => {
                    if host.weak.has(Weaken::InterdomainSendUnlocked) {
                        // Acquire: as the lock-free route's load.
                        let kick = self.raise_peer(slot.load(Acquire))?;
                        kick_after(kick);
                        return Ok(());
                    }
                    let g = host.lock.lock();
                    // Relaxed: under the lock, which orders every change of
                    // an interdomain end.
                    let w = slot.load(Relaxed);
                    if w & STATE == BOUND && kind_of(w) == K_INTERDOMAIN {
                        // The peer cannot be closed while this lock is held.
                        let kick = self.raise_peer(w)?;
                        // The kick (an interrupt, a wake-up) outside the lock.
                        drop(g);
                        kick_after(kick);
                        return Ok(());
                    }
                    // Closed (or returned to unbound) since: route again.
                }
                local => return host.send_routed(port, local),
            }
        }
    }

    /// Raises the peer that interdomain word `w` names; returns the vCPU
    /// to kick, with its domain.
    fn raise_peer(&self, w: u64) -> Result<PeerKick<'_, R, N>, Error> {
        let (rd, rp) = peer_of(w);
        let peer = self.host(rd)?;
        let slot = peer.slot(rp)?;
        // SeqCst: as in `Host::send`.
        let raised = peer.abi.set_pending(rp, || vcpu_of(slot.load(SeqCst)))?;
        Ok(match raised {
            Raised::Notified { vcpu, kick: true } => Some((peer, vcpu)),
            _ => None,
        })
    }

    /// `EVTCHNOP_close` by domain `dom`: as [`Host::close`]; an interdomain
    /// end is freed and its peer returns to unbound, waiting for `dom`
    /// again (as Xen).
    ///
    /// # Errors
    ///
    /// [`Error::NoSuchDomain`], [`Error::PortOutOfRange`],
    /// [`Error::NotBound`]; each changes nothing.
    pub fn close(&self, dom: DomId, port: u32) -> Result<(), Error> {
        let host = self.host(dom)?;
        let slot = host.slot(port)?;
        loop {
            // Acquire: the peer named here is checked again under the locks.
            let w = slot.load(Acquire);
            if w & STATE != BOUND || kind_of(w) != K_INTERDOMAIN {
                match host.close(port) {
                    // Became interdomain since the load: look again.
                    Err(Error::WrongKind) => continue,
                    r => return r,
                }
            }
            let (rd, rp) = peer_of(w);
            let peer = self.host(rd)?;
            let (first, second) = if dom <= rd {
                (host, peer)
            } else {
                (peer, host)
            };
            let _g1 = first.lock.lock();
            let _g2 = (dom != rd).then(|| second.lock.lock());
            // Relaxed: under both locks.
            if slot.load(Relaxed) != w {
                continue;
            }
            let pslot = peer.slot(rp)?;
            // Relaxed: under both locks.
            let pw = pslot.load(Relaxed);
            // Release: a lock-free sender on the peer that reads the
            // unbound word (Acquire) finds nothing of the closed end to use.
            pslot.store(
                bound_word(K_UNBOUND, u32::from(dom), vcpu_of(pw), priority_of(pw)),
                Release,
            );
            return host.free_slot(port, slot);
        }
    }

    /// `EVTCHNOP_status` of port `port` of domain `dom`.
    ///
    /// # Errors
    ///
    /// [`Error::NoSuchDomain`], [`Error::PortOutOfRange`].
    pub fn status(&self, dom: DomId, port: u32) -> Result<HostStatus, Error> {
        self.host(dom)?.status(port)
    }

    /// `EVTCHNOP_reset`, in chunks: closes every bound port of domain `dom`
    /// from `from` on, at most `budget` port numbers per call, and returns
    /// where the next call continues (`None`: done). A huge table never
    /// holds the caller for more than `budget` ports. A FIFO domain's
    /// return to 2-level is its memory's, which the embedder owns.
    ///
    /// # Errors
    ///
    /// [`Error::NoSuchDomain`] (nothing changes); what a close reports for
    /// a hostile memory.
    pub fn reset(&self, dom: DomId, from: u32, budget: u32) -> Result<Option<u32>, Error> {
        let host = self.host(dom)?;
        let nr = host.nr_ports();
        let from = from.max(1);
        let end = from.saturating_add(budget).min(nr);
        for port in from..end {
            match self.close(dom, port) {
                Ok(()) | Err(Error::NotBound) => {}
                Err(e) => return Err(e),
            }
        }
        Ok((end < nr).then_some(end))
    }
}
