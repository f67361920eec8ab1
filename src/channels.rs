//! The control plane: the port table, bind/close/status, mask reasons,
//! affinity with rebind, the in-flight guard, and the upcall.
//!
//! Locking: bind, close, mask/unmask/eoi and set_affinity serialise on one
//! control-plane lock. `send` and the upcall never take it: they work with
//! atomics on the port's control word (see [`crate::port`]) and on the ABI's
//! memory only.

use alloc::boxed::Box;
use alloc::vec::Vec;

use crate::abi::{Delivery, Kick, PortOps, Raised};
use crate::policy::{plan_rebalance, Move, Plane, Policy};
use crate::port::{self, MaskReason, Port, State, Status};
use crate::port::{
    ACTIVE, BOUND, CLOSING, FREE, GEN_SHIFT, LATEEOI, PRIORITY_SHIFT, REASONS, REPLAY,
};
use crate::sync::{store_load_fence, AtomicU32, AtomicU64, Lock, Ordering::*};
#[cfg(all(loom, feature = "loom"))]
use crate::weaken::Weaken as W;
use crate::weaken::{Weaken, Weakness};
use crate::Error;

/// Tells the embedder to wake a vCPU (an IPI, an `unpark`, an eventfd...).
///
/// Called whenever an operation made an upcall pending on a vCPU whose
/// upcall-pending flag was clear (contract C2): a vCPU that halts only after
/// seeing no upcall pending is always kicked when work arrives.
///
/// # Where `kick` runs
///
/// On the thread of the operation that raised the event, in two contexts:
///
/// * *Holding the control-plane lock*: in [`Channels::bind`] (Xen's
///   spurious event, or a stale raise its unmask catches), and wherever a
///   port's last mask reason goes or a port moves: [`Channels::unmask`],
///   [`Channels::eoi`], [`Channels::lateeoi`], [`Channels::set_affinity`],
///   [`Channels::set_online`] (its rebinds, and the hand-over of what is
///   still queued on the vCPU going offline) and [`Channels::rebalance`].
/// * *Without the lock*: in [`Channels::send`]; in an upcall
///   ([`Vcpu::upcall`] and its bounded forms) raising a port it found bound
///   elsewhere on the vCPU it is bound to now; and at the end of a handler
///   run, re-raising an event another vCPU left to it, also when the
///   handler panics (the in-flight guard is released as it unwinds).
///
/// `close`, `mask`, `mask_until_eoi`, `set_lateeoi` and `set_priority`
/// never kick.
///
/// So `kick`:
///
/// * must not call a [`Channels`] method that takes the lock: `bind`,
///   `close`, `mask`, `unmask`, `mask_until_eoi`, `eoi`, `lateeoi`,
///   `set_lateeoi`, `set_affinity`, `set_priority`, `set_online`,
///   `rebalance`, `set_policy`, `policy`, `bound_ports`, `is_online`. The
///   lock is not reentrant: made where the lock is held, the call deadlocks
///   (spins forever, without `std`). The lock-free ones (`send`, `port`,
///   `status`, `upcall_pending`) do not take it;
/// * must not block for long: the lock's other users, or the sender, wait
///   for it to return;
/// * may run on several threads at once, for one vCPU or several;
/// * may be spurious: the vCPU kicked may find nothing to do (a running
///   upcall took the event first, or a concurrent rebind moved it), and may
///   be the caller's own (a handler that sends to a port bound to its
///   vCPU);
/// * should not panic: it may run while a handler unwinds, and a panic then
///   aborts the process.
pub trait Notify: Sync {
    /// Wake `vcpu`.
    fn kick(&self, vcpu: u32);
}

/// No notification: for vCPUs that poll.
impl Notify for () {
    fn kick(&self, _vcpu: u32) {}
}

impl<F: Fn(u32) + Sync> Notify for F {
    fn kick(&self, vcpu: u32) {
        self(vcpu)
    }
}

/// How `bind` chooses the vCPU of a new port.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Bind {
    /// Xen's behaviour for interdomain and pirq binds: the port is bound to
    /// vCPU 0, and the bind raises one (spurious) event, delivered on vCPU 0,
    /// to cover notifications lost during set-up.
    XenCompat,
    /// Bound to this vCPU from the first instant, with no event raised:
    /// nothing of this port is ever seen on another vCPU (Xen has no way to
    /// do this atomically).
    Affinity(u32),
    /// Bound, as `Affinity`, to the online vCPU the [`Policy`] picks.
    Auto,
}

/// Default FIFO priority (Xen's `EVTCHN_FIFO_PRIORITY_DEFAULT`).
const DEFAULT_PRIORITY: u8 = 7;

/// An event-channel instance: an ABI's memory plus the port table.
pub struct Channels<A: PortOps, N: Notify = ()> {
    abi: A,
    notify: N,
    table: Box<[AtomicU64]>,
    /// The control-plane lock, and the state it guards.
    lock: Lock<Plane>,
    /// Per port: handler runs, written only by the in-flight guard's holder
    /// (a load and a store, no read-modify-write), read by the rebalancer.
    handled: Box<[AtomicU32]>,
    /// No port below this one is free: bind starts its search for the
    /// lowest free port here. Lowered by close and by a handler's end that
    /// frees a closing port; a hint only (bind checks every state).
    free_hint: AtomicU32,
    nr_vcpus: u32,
    weak: Weakness,
}

impl<A: PortOps, N: Notify> core::fmt::Debug for Channels<A, N> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Channels")
            .field("nr_ports", &self.nr_ports())
            .field("nr_vcpus", &self.nr_vcpus)
            .finish_non_exhaustive()
    }
}

impl<A: PortOps, N: Notify> Channels<A, N> {
    /// A control plane over `abi`, kicking vCPUs through `notify`. Every
    /// port starts free and masked; vCPUs are those of the ABI's memory (at
    /// most 65535).
    ///
    /// # Examples
    ///
    /// ```
    /// use evtchn::{Channels, Fifo, OwnedFifo, OwnedMemory, TwoLevel};
    ///
    /// // 2-level: 2 words of 64 ports, 4 vCPUs; no kicks (the vCPUs poll).
    /// let ch = Channels::new(TwoLevel::new(OwnedMemory::new(2, 4)), ());
    /// assert_eq!((ch.nr_ports(), ch.nr_vcpus()), (128, 4));
    ///
    /// // FIFO: up to 1024 ports (event array pages are mapped as ports are
    /// // bound), 2 vCPUs.
    /// let ch = Channels::new(Fifo::new(OwnedFifo::new(1024, 2)), ());
    /// assert_eq!((ch.nr_ports(), ch.nr_vcpus()), (1024, 2));
    /// ```
    #[must_use]
    pub fn new(abi: A, notify: N) -> Self {
        Self::build(abi, notify, Weakness::default())
    }

    /// A control plane with one protective step weakened (loom models only).
    #[cfg(all(loom, feature = "loom"))]
    #[doc(hidden)]
    pub fn weakened(abi: A, notify: N, w: W) -> Self {
        Self::build(abi, notify, Weakness::new(w))
    }

    fn build(abi: A, notify: N, weak: Weakness) -> Self {
        let nr_ports = abi.nr_ports();
        let nr_vcpus = abi.nr_vcpus().min(0xffff);
        for p in 0..nr_ports {
            // Cannot fail: p < nr_ports.
            let _ = abi.mask(p);
        }
        Channels {
            table: (0..nr_ports).map(|_| AtomicU64::new(FREE)).collect(),
            handled: (0..nr_ports).map(|_| AtomicU32::new(0)).collect(),
            abi,
            notify,
            lock: Lock::new(Plane::new(nr_ports as usize, nr_vcpus as usize)),
            free_hint: AtomicU32::new(1),
            nr_vcpus,
            weak,
        }
    }

    /// The ABI this control plane drives.
    ///
    /// # Examples
    ///
    /// ```
    /// use evtchn::{Bind, Channels, OwnedMemory, PortOps, TwoLevel};
    ///
    /// let ch = Channels::new(TwoLevel::new(OwnedMemory::new(1, 1)), ());
    /// let port = ch.bind(Bind::Affinity(0))?;
    /// ch.send(port)?;
    /// assert!(ch.abi().is_pending(port.number())?);
    /// # Ok::<(), evtchn::Error>(())
    /// ```
    #[must_use]
    pub fn abi(&self) -> &A {
        &self.abi
    }

    /// The notification hook.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::sync::atomic::{AtomicU32, Ordering::Relaxed};
    /// use evtchn::{Bind, Channels, Notify, OwnedMemory, TwoLevel};
    ///
    /// /// Counts kicks (an embedder would wake the vCPU's thread).
    /// #[derive(Default)]
    /// struct Doorbell(AtomicU32);
    ///
    /// impl Notify for Doorbell {
    ///     fn kick(&self, _vcpu: u32) {
    ///         self.0.fetch_add(1, Relaxed);
    ///     }
    /// }
    ///
    /// let ch = Channels::new(TwoLevel::new(OwnedMemory::new(1, 2)), Doorbell::default());
    /// let port = ch.bind(Bind::Affinity(1))?;
    /// ch.send(port)?;
    /// ch.send(port)?; // coalesces: no second kick
    /// assert_eq!(ch.notifier().0.load(Relaxed), 1);
    /// # Ok::<(), evtchn::Error>(())
    /// ```
    #[must_use]
    pub fn notifier(&self) -> &N {
        &self.notify
    }

    /// Number of port numbers (port 0 is reserved, as in Xen).
    ///
    /// # Examples
    ///
    /// ```
    /// use evtchn::{Bind, Channels, Error, OwnedMemory, TwoLevel};
    ///
    /// let ch = Channels::new(TwoLevel::new(OwnedMemory::new(1, 1)), ());
    /// assert_eq!(ch.nr_ports(), 64);
    /// // Ports 1 to 63 can be bound; port 0 never is.
    /// let ports = (1..64)
    ///     .map(|_| ch.bind(Bind::Affinity(0)))
    ///     .collect::<Result<Vec<_>, _>>()?;
    /// assert_eq!(ports[0].number(), 1);
    /// assert_eq!(ch.bind(Bind::Affinity(0)), Err(Error::NoFreePort));
    /// # Ok::<(), Error>(())
    /// ```
    #[must_use]
    pub fn nr_ports(&self) -> u32 {
        // The table never exceeds the ABI's u32 port count.
        u32::try_from(self.table.len()).unwrap_or(u32::MAX)
    }

    /// Number of vCPUs.
    ///
    /// # Examples
    ///
    /// ```
    /// use evtchn::{Channels, Error, OwnedMemory, TwoLevel};
    ///
    /// let ch = Channels::new(TwoLevel::new(OwnedMemory::new(1, 3)), ());
    /// assert_eq!(ch.nr_vcpus(), 3);
    /// assert_eq!(ch.upcall_pending(3), Err(Error::VcpuOutOfRange));
    /// ```
    #[must_use]
    pub fn nr_vcpus(&self) -> u32 {
        self.nr_vcpus
    }

    fn slot(&self, number: u32) -> Result<&AtomicU64, Error> {
        if number == 0 {
            return Err(Error::PortOutOfRange);
        }
        self.table.get(number as usize).ok_or(Error::PortOutOfRange)
    }

    fn check_vcpu(&self, vcpu: u32) -> Result<(), Error> {
        if vcpu < self.nr_vcpus {
            Ok(())
        } else {
            Err(Error::VcpuOutOfRange)
        }
    }

    fn kick(&self, k: Kick) {
        if let Some(v) = k {
            self.notify.kick(v);
        }
    }

    /// Changes the control word of a bound `port` with `f`, by
    /// compare-exchange (the deliver side changes `ACTIVE`/`REPLAY`
    /// concurrently). Returns the word before and after.
    fn update(
        &self,
        slot: &AtomicU64,
        port: Port,
        f: impl Fn(u64) -> u64,
    ) -> Result<(u64, u64), Error> {
        // Acquire: see the state published by the last writer.
        let mut cw = slot.load(Acquire);
        loop {
            check(cw, port)?;
            let new = f(cw);
            // SeqCst (AcqRel at least): Release publishes the change (and
            // the ABI writes made before it) to the deliver side's Acquire;
            // Acquire sees a concurrent deliverer's ACTIVE/REPLAY change;
            // SeqCst makes it the write half of the late-EOI Dekker pattern.
            match slot.compare_exchange(cw, new, SeqCst, Acquire) {
                Ok(_) => return Ok((cw, new)),
                Err(now) => cw = now,
            }
        }
    }

    fn reason_bit(&self, r: MaskReason) -> u64 {
        if self.weak.has(Weaken::SingleMaskReason) {
            MaskReason::Explicit.bit()
        } else {
            r.bit()
        }
    }

    /// The handle of the port bound at `number` now.
    ///
    /// # Errors
    ///
    /// [`Error::PortOutOfRange`] if `number` is 0 or not below
    /// [`Channels::nr_ports`]; [`Error::NotBound`] if no port is bound at
    /// `number` (free, or closed while its handler is still in flight).
    ///
    /// # Examples
    ///
    /// ```
    /// use evtchn::{Bind, Channels, Error, OwnedMemory, TwoLevel};
    ///
    /// let ch = Channels::new(TwoLevel::new(OwnedMemory::new(1, 1)), ());
    /// let port = ch.bind(Bind::Affinity(0))?;
    /// assert_eq!(ch.port(port.number())?, port);
    /// ch.close(port)?;
    /// assert_eq!(ch.port(port.number()), Err(Error::NotBound));
    /// assert_eq!(ch.port(0), Err(Error::PortOutOfRange));
    /// # Ok::<(), Error>(())
    /// ```
    #[must_use = "a lookup; it changes nothing"]
    pub fn port(&self, number: u32) -> Result<Port, Error> {
        let slot = self.slot(number)?;
        // Acquire: pairs with bind's Release publish.
        let cw = slot.load(Acquire);
        if port::state(cw) != BOUND {
            return Err(Error::NotBound);
        }
        Ok(Port {
            number,
            generation: port::generation(cw),
        })
    }

    /// Binds the lowest free port (as Xen allocates) and returns it.
    ///
    /// The new port has no pending event, no mask reason and no state of an
    /// earlier life of its number (C6); it is bound as `mode` says.
    ///
    /// # Errors
    ///
    /// * [`Error::VcpuOutOfRange`]: `Bind::Affinity(v)` with `v` not below
    ///   [`Channels::nr_vcpus`] (or `Bind::Auto` over memory of no vCPU);
    /// * [`Error::VcpuOffline`]: the vCPU it binds to is offline (vCPU 0 for
    ///   `Bind::XenCompat`);
    /// * [`Error::NoFreePort`]: every port is bound, or closed while its
    ///   handler is still in flight; or the ABI cannot hold the lowest free
    ///   one (a FIFO event array that cannot grow to it).
    ///
    /// # Examples
    ///
    /// ```
    /// use evtchn::{Bind, Channels, OwnedMemory, TwoLevel};
    ///
    /// let ch = Channels::new(TwoLevel::new(OwnedMemory::new(1, 2)), ());
    /// // On vCPU 1 from the first instant, with nothing raised anywhere.
    /// let a = ch.bind(Bind::Affinity(1))?;
    /// assert_eq!(ch.status(a.number())?.vcpu, 1);
    /// assert!(!ch.upcall_pending(0)? && !ch.upcall_pending(1)?);
    ///
    /// // As Xen: on vCPU 0, with one (spurious) event raised there.
    /// let x = ch.bind(Bind::XenCompat)?;
    /// assert_eq!((x.number(), ch.status(x.number())?.vcpu), (2, 0));
    /// assert!(ch.status(x.number())?.pending && ch.upcall_pending(0)?);
    /// # Ok::<(), evtchn::Error>(())
    /// ```
    #[must_use = "a bound port stays bound until it is closed: dropping its handle leaks it"]
    pub fn bind(&self, mode: Bind) -> Result<Port, Error> {
        let mut plane = self.lock.lock();
        let target = match mode {
            Bind::XenCompat => 0,
            Bind::Affinity(v) => v,
            Bind::Auto => plane.pick(None).ok_or(Error::VcpuOutOfRange)?,
        };
        self.check_vcpu(target)?;
        if !plane.is_online(target) {
            return Err(Error::VcpuOffline);
        }
        // Relaxed: a hint; the search below reads every state with Acquire.
        let hint = self.free_hint.load(Relaxed);
        let start = (hint as usize).clamp(1, self.table.len().max(1));
        let order = (start..self.table.len()).chain(1..start);
        let mut found = None;
        for n in order {
            let Some(slot) = self.table.get(n) else { break };
            // Acquire: a port freed by a handler's end (CLOSING → FREE) is
            // reused only after that handler's writes.
            let cw = slot.load(Acquire);
            if port::state(cw) == FREE {
                // Below nr_ports(), a u32.
                let Ok(number) = u32::try_from(n) else { break };
                found = Some((number, slot, cw));
                break;
            }
        }
        let (n, slot, old) = found.ok_or(Error::NoFreePort)?;
        // Map the port's memory (the FIFO event array page) first: a
        // failure leaves the port free and changes nothing.
        self.abi.prepare(n).map_err(|_| Error::NoFreePort)?;
        // Relaxed: a hint. Only if nobody lowered it meanwhile (a handler's
        // end freeing a lower port).
        let _ = self
            .free_hint
            .compare_exchange(hint, n.saturating_add(1), Relaxed, Relaxed);
        let gen = port::generation(old).wrapping_add(1);
        // 1. Mask: a sender of the port's last life that is still between
        //    its state check and its raise raises nothing visible.
        self.abi.mask(n)?;
        // 2. New generation, still FREE. A stale sender whose pending bit
        //    lands after the clear below synchronises with the clear's
        //    Release and so sees this generation, and reports `Stale`.
        //    Release here: a reader of the port table sees the FREE state
        //    no earlier than the mask above.
        slot.store((u64::from(gen) << GEN_SHIFT) | FREE, Release);
        // 3. Default priority; clear what the last life (or a stale sender)
        //    left pending. No sender of the new life exists yet: the state
        //    is not BOUND.
        self.abi.set_priority(n, DEFAULT_PRIORITY)?;
        if !self.weak.has(Weaken::NoResetOnBind) {
            self.abi.clear_pending(n)?;
        }
        let cw = port::with_vcpu(BOUND, target)
            | (u64::from(DEFAULT_PRIORITY) << PRIORITY_SHIFT)
            | (u64::from(gen) << GEN_SHIFT);
        plane.bound_moved(None, Some(target));
        if let Some(c) = plane.spurious.get_mut(n as usize) {
            *c = 0;
        }
        if let Some(h) = self.handled.get(n as usize) {
            // Relaxed: statistics; the slot is FREE, no handler runs.
            h.store(0, Relaxed);
        }
        if let Some(c) = plane.last_count.get_mut(n as usize) {
            *c = 0;
        }
        // 4. Publish. Release: a sender that reads BOUND sees the cleared
        //    pending bit; a deliverer that reads BOUND sees the binding.
        //    Nothing else writes a FREE word (the deliver side and the
        //    control plane touch only BOUND and CLOSING words). Only a
        //    sender that found the port by number (`port`) depends on this
        //    Release; one handed the `Port` by the binder is already
        //    ordered by that hand-over.
        slot.store(cw, Release);
        // Unmask: re-raises on `target` if a stale raise slipped in after
        // the clear (it is then an event of this life, raised after bind).
        let k = self.abi.unmask(n, || target)?;
        self.kick(k);
        if mode == Bind::XenCompat {
            let k = self.abi.set_pending(n, || target)?.kick();
            self.kick(k);
        }
        Ok(Port {
            number: n,
            generation: gen,
        })
    }

    /// Sends an event on `port`. Lock-free: it never waits for the control
    /// plane, and a concurrent rebind never makes it lose the event (C1).
    ///
    /// Sends coalesce: a send to a port already pending adds nothing.
    /// Kicks the vCPU the port is bound to if its upcall flag went 0 → 1.
    ///
    /// `Ok` means the event was raised in the life of `port` (a later
    /// `close` discards it). If that life ended while the send was under way
    /// the send returns `Err(NotBound)` or `Err(Stale)`; when the number was
    /// meanwhile bound again, the new life may then see one spurious event,
    /// as it may see Xen's own bind event — never a lost or doubled one.
    ///
    /// # Errors
    ///
    /// [`Error::NotBound`] if `port` was closed, [`Error::Stale`] if its
    /// number was bound again since, [`Error::PortOutOfRange`] if its number
    /// is not a port here (a handle of another instance).
    ///
    /// # Examples
    ///
    /// ```
    /// use evtchn::{Bind, Channels, Error, OwnedMemory, TwoLevel};
    ///
    /// let ch = Channels::new(TwoLevel::new(OwnedMemory::new(1, 2)), ());
    /// let port = ch.bind(Bind::Affinity(1))?;
    /// ch.send(port)?;
    /// assert!(ch.upcall_pending(1)? && !ch.upcall_pending(0)?);
    ///
    /// ch.close(port)?;
    /// assert_eq!(ch.send(port), Err(Error::NotBound));
    /// let again = ch.bind(Bind::Affinity(1))?; // the same number, a new life
    /// assert_eq!(again.number(), port.number());
    /// assert_eq!(ch.send(port), Err(Error::Stale));
    /// # Ok::<(), Error>(())
    /// ```
    #[inline]
    pub fn send(&self, port: Port) -> Result<(), Error> {
        let slot = self.slot(port.number)?;
        // Acquire: pairs with bind's Release publish of BOUND, so the
        // pending bit we set is never one bind clears after us.
        let cw = slot.load(Acquire);
        check(cw, port)?;
        let mut now = cw;
        // SeqCst: `set_pending` calls the closure only after its SeqCst
        // pending write and (2-level) store-load fence, so this load is the
        // read half of a Dekker pattern with a late EOI, which writes the
        // word and then reads the pending bit (see `remove_reason`); it also
        // sees a rebinder's binding, ordered by the mask read before it.
        let raised = self.abi.set_pending(port.number, || {
            now = slot.load(SeqCst);
            port::vcpu(now)
        })?;
        match raised {
            Raised::Coalesced => Ok(()),
            Raised::Masked => {
                // Acquire: a close or bind that masked the port before our
                // mask read is visible (rare path: a masked port).
                check(slot.load(Acquire), port)
            }
            Raised::Notified { vcpu, kick } => {
                if kick {
                    self.notify.kick(vcpu);
                }
                // A bind bumps the generation before it clears the pending
                // bit; a raise that landed after that clear sees the bump.
                check(now, port)
            }
        }
    }

    /// Masks `port` (reason: explicit). Idempotent. Once it returns, no
    /// handler of `port` starts until the last mask reason is gone (C4).
    ///
    /// # Errors
    ///
    /// [`Error::NotBound`] if `port` was closed, [`Error::Stale`] if its
    /// number was bound again since, [`Error::PortOutOfRange`] if its number
    /// is not a port here (a handle of another instance).
    ///
    /// # Examples
    ///
    /// ```
    /// use evtchn::{Bind, Channels, OwnedMemory, TwoLevel};
    ///
    /// let ch = Channels::new(TwoLevel::new(OwnedMemory::new(1, 1)), ());
    /// let port = ch.bind(Bind::Affinity(0))?;
    /// ch.mask(port)?;
    /// ch.send(port)?; // pending, but nobody is told
    /// assert!(ch.status(port.number())?.pending);
    /// assert!(!ch.upcall_pending(0)?);
    /// assert_eq!(ch.vcpu(0)?.upcall(|_| {})?, 0);
    /// # Ok::<(), evtchn::Error>(())
    /// ```
    pub fn mask(&self, port: Port) -> Result<(), Error> {
        let _guard = self.lock.lock();
        self.add_reason(port, MaskReason::Explicit)
    }

    /// Removes the explicit mask reason of `port`. Idempotent. If no reason
    /// remains and the port is pending, the event is raised on the port's
    /// current vCPU (C4).
    ///
    /// # Errors
    ///
    /// [`Error::NotBound`] if `port` was closed, [`Error::Stale`] if its
    /// number was bound again since, [`Error::PortOutOfRange`] if its number
    /// is not a port here (a handle of another instance).
    ///
    /// # Examples
    ///
    /// ```
    /// use evtchn::{Bind, Channels, OwnedMemory, TwoLevel};
    ///
    /// let ch = Channels::new(TwoLevel::new(OwnedMemory::new(1, 1)), ());
    /// let port = ch.bind(Bind::Affinity(0))?;
    /// ch.mask(port)?;
    /// ch.send(port)?;
    /// assert!(!ch.upcall_pending(0)?);
    /// ch.unmask(port)?; // raises what was sent while masked
    /// assert!(ch.upcall_pending(0)?);
    /// assert_eq!(ch.vcpu(0)?.upcall(|_| {})?, 1);
    /// # Ok::<(), evtchn::Error>(())
    /// ```
    pub fn unmask(&self, port: Port) -> Result<(), Error> {
        let _guard = self.lock.lock();
        self.remove_reason(port, MaskReason::Explicit)
    }

    /// Masks `port` until [`Channels::eoi`] (a late EOI).
    ///
    /// # Errors
    ///
    /// [`Error::NotBound`] if `port` was closed, [`Error::Stale`] if its
    /// number was bound again since, [`Error::PortOutOfRange`] if its number
    /// is not a port here (a handle of another instance).
    ///
    /// # Examples
    ///
    /// ```
    /// use evtchn::{Bind, Channels, OwnedMemory, TwoLevel};
    ///
    /// let ch = Channels::new(TwoLevel::new(OwnedMemory::new(1, 1)), ());
    /// let port = ch.bind(Bind::Affinity(0))?;
    /// ch.mask_until_eoi(port)?;
    /// ch.send(port)?;
    /// ch.unmask(port)?; // removes the explicit reason only: there is none
    /// assert!(!ch.upcall_pending(0)?);
    /// ch.eoi(port)?;
    /// assert!(ch.upcall_pending(0)?);
    /// # Ok::<(), evtchn::Error>(())
    /// ```
    pub fn mask_until_eoi(&self, port: Port) -> Result<(), Error> {
        let _guard = self.lock.lock();
        self.add_reason(port, MaskReason::EoiPending)
    }

    /// Signals the end of interrupt of a port masked by
    /// [`Channels::mask_until_eoi`]: removes that reason (and only that one).
    ///
    /// # Errors
    ///
    /// [`Error::NotEoiPending`] if `port` is not masked for an EOI.
    /// [`Error::NotBound`] if `port` was closed, [`Error::Stale`] if its
    /// number was bound again since, [`Error::PortOutOfRange`] if its number
    /// is not a port here (a handle of another instance).
    ///
    /// # Examples
    ///
    /// ```
    /// use evtchn::{Bind, Channels, Error, OwnedMemory, TwoLevel};
    ///
    /// let ch = Channels::new(TwoLevel::new(OwnedMemory::new(1, 1)), ());
    /// let port = ch.bind(Bind::Affinity(0))?;
    /// assert_eq!(ch.eoi(port), Err(Error::NotEoiPending));
    /// ch.mask_until_eoi(port)?;
    /// ch.send(port)?;
    /// assert!(ch.status(port.number())?.masked_eoi);
    /// ch.eoi(port)?;
    /// assert!(!ch.status(port.number())?.masked_eoi);
    /// assert_eq!(ch.vcpu(0)?.upcall(|_| {})?, 1);
    /// # Ok::<(), Error>(())
    /// ```
    pub fn eoi(&self, port: Port) -> Result<(), Error> {
        let _guard = self.lock.lock();
        let slot = self.slot(port.number)?;
        // Acquire: see the current mask reasons.
        let cw = slot.load(Acquire);
        check(cw, port)?;
        if cw & self.reason_bit(MaskReason::EoiPending) == 0 {
            return Err(Error::NotEoiPending);
        }
        self.remove_reason(port, MaskReason::EoiPending)
    }

    /// Call with the lock held.
    fn add_reason(&self, port: Port, r: MaskReason) -> Result<(), Error> {
        let slot = self.slot(port.number)?;
        let bit = self.reason_bit(r);
        let (old, _) = self.update(slot, port, |cw| cw | bit)?;
        if old & REASONS == 0 {
            self.abi.mask(port.number)?;
        }
        Ok(())
    }

    /// Call with the lock held.
    fn remove_reason(&self, port: Port, r: MaskReason) -> Result<(), Error> {
        let slot = self.slot(port.number)?;
        let bit = self.reason_bit(r);
        let (old, new) = self.update(slot, port, |cw| cw & !bit)?;
        if old & REASONS != 0 && new & REASONS == 0 {
            // A late EOI masks in the control word only (the deliver side
            // sets it lock-free and leaves the ABI's bit alone): if the
            // ABI's bit is clear, an event skipped meanwhile is pending with
            // nothing raised, and the unmask below raises nothing.
            let abi_masked = self.abi.is_masked(port.number)?;
            // Relaxed: the lock orders this read after our own update.
            let k = self
                .abi
                .unmask(port.number, || port::vcpu(slot.load(Relaxed)))?;
            self.kick(k);
            // So raise it. The store-load fence pairs our word update with a
            // sender's pending write, as the unmask's does (C1).
            if !abi_masked && !self.weak.has(Weaken::NoEoiReraise) {
                store_load_fence();
                let k = self
                    .abi
                    .reraise(port.number, || port::vcpu(slot.load(Relaxed)))?;
                self.kick(k);
            }
        }
        Ok(())
    }

    /// Binds `port` to `vcpu` while events may be in flight (C5).
    ///
    /// Masks (reason: rebind), changes the binding, unmasks: a pending event
    /// is either handled on the old vCPU (if its upcall already took it) or
    /// re-raised on the new one by the unmask, never lost; once this returns
    /// every later send is raised on `vcpu`. A handler still running on the
    /// old vCPU is never joined by one on the new (the in-flight guard).
    /// Binding a port to the vCPU it is bound to does nothing.
    ///
    /// # Errors
    ///
    /// [`Error::VcpuOutOfRange`] if `vcpu` is not below
    /// [`Channels::nr_vcpus`], [`Error::VcpuOffline`] if it is offline.
    /// [`Error::NotBound`] if `port` was closed, [`Error::Stale`] if its
    /// number was bound again since, [`Error::PortOutOfRange`] if its number
    /// is not a port here (a handle of another instance).
    ///
    /// # Examples
    ///
    /// ```
    /// use evtchn::{Bind, Channels, Error, OwnedMemory, TwoLevel};
    ///
    /// let ch = Channels::new(TwoLevel::new(OwnedMemory::new(1, 2)), ());
    /// let port = ch.bind(Bind::Affinity(0))?;
    /// ch.send(port)?; // pending on vCPU 0, not handled yet
    /// ch.set_affinity(port, 1)?;
    /// // The rebind's unmask raised it on vCPU 1, where it runs, once.
    /// assert_eq!(ch.vcpu(0)?.upcall(|_| {})?, 0);
    /// assert_eq!(ch.vcpu(1)?.upcall(|_| {})?, 1);
    /// assert_eq!(ch.set_affinity(port, 2), Err(Error::VcpuOutOfRange));
    /// # Ok::<(), Error>(())
    /// ```
    pub fn set_affinity(&self, port: Port, vcpu: u32) -> Result<(), Error> {
        self.check_vcpu(vcpu)?;
        let mut plane = self.lock.lock();
        if !plane.is_online(vcpu) {
            return Err(Error::VcpuOffline);
        }
        self.rebind(&mut plane, port, vcpu)
    }

    /// The rebind protocol; call with the lock held (`plane` is its data).
    fn rebind(&self, plane: &mut Plane, port: Port, vcpu: u32) -> Result<(), Error> {
        let slot = self.slot(port.number)?;
        // Acquire: see the current binding.
        let cw = slot.load(Acquire);
        check(cw, port)?;
        let from = port::vcpu(cw);
        if from == vcpu {
            return Ok(());
        }
        let masked = !self.weak.has(Weaken::RebindWithoutMask);
        if masked {
            self.add_reason(port, MaskReason::Rebind)?;
        }
        self.update(slot, port, |cw| port::with_vcpu(cw, vcpu))?;
        if masked {
            self.remove_reason(port, MaskReason::Rebind)?;
        }
        plane.bound_moved(Some(from), Some(vcpu));
        Ok(())
    }

    /// The policy `bind(Bind::Auto)` follows (and `set_online` uses to place
    /// the ports of a vCPU going offline).
    ///
    /// # Examples
    ///
    /// ```
    /// use evtchn::{Bind, Channels, OwnedMemory, Policy, TwoLevel};
    ///
    /// let ch = Channels::new(TwoLevel::new(OwnedMemory::new(1, 3)), ());
    /// ch.set_policy(Policy::RoundRobin);
    /// let mut vcpus = Vec::new();
    /// for _ in 0..4 {
    ///     let port = ch.bind(Bind::Auto)?;
    ///     vcpus.push(ch.status(port.number())?.vcpu);
    /// }
    /// assert_eq!(vcpus, [0, 1, 2, 0]);
    /// # Ok::<(), evtchn::Error>(())
    /// ```
    pub fn set_policy(&self, policy: Policy) {
        self.lock.lock().policy = policy;
    }

    /// The current policy.
    ///
    /// # Examples
    ///
    /// ```
    /// use evtchn::{Channels, OwnedMemory, Policy, TwoLevel};
    ///
    /// let ch = Channels::new(TwoLevel::new(OwnedMemory::new(1, 2)), ());
    /// assert_eq!(ch.policy(), Policy::Vcpu0); // Xen's, by default
    /// ch.set_policy(Policy::LeastLoaded);
    /// assert_eq!(ch.policy(), Policy::LeastLoaded);
    /// ```
    #[must_use]
    pub fn policy(&self) -> Policy {
        self.lock.lock().policy
    }

    /// Number of ports bound to `vcpu`.
    ///
    /// # Errors
    ///
    /// [`Error::VcpuOutOfRange`] if `vcpu` is not below
    /// [`Channels::nr_vcpus`].
    ///
    /// # Examples
    ///
    /// ```
    /// use evtchn::{Bind, Channels, OwnedMemory, TwoLevel};
    ///
    /// let ch = Channels::new(TwoLevel::new(OwnedMemory::new(1, 2)), ());
    /// let a = ch.bind(Bind::Affinity(1))?;
    /// let b = ch.bind(Bind::Affinity(1))?;
    /// assert_eq!((ch.bound_ports(0)?, ch.bound_ports(1)?), (0, 2));
    /// ch.set_affinity(a, 0)?;
    /// ch.close(b)?;
    /// assert_eq!((ch.bound_ports(0)?, ch.bound_ports(1)?), (1, 0));
    /// # Ok::<(), evtchn::Error>(())
    /// ```
    #[must_use = "a query; it changes nothing"]
    pub fn bound_ports(&self, vcpu: u32) -> Result<u32, Error> {
        self.check_vcpu(vcpu)?;
        Ok(self
            .lock
            .lock()
            .bound
            .get(vcpu as usize)
            .copied()
            .unwrap_or(0))
    }

    /// Whether `vcpu` is online (all are, at first).
    ///
    /// # Errors
    ///
    /// [`Error::VcpuOutOfRange`] if `vcpu` is not below
    /// [`Channels::nr_vcpus`].
    ///
    /// # Examples
    ///
    /// ```
    /// use evtchn::{Channels, Error, OwnedMemory, TwoLevel};
    ///
    /// let ch = Channels::new(TwoLevel::new(OwnedMemory::new(1, 2)), ());
    /// assert!(ch.is_online(1)?);
    /// ch.set_online(1, false)?;
    /// assert!(!ch.is_online(1)?);
    /// assert_eq!(ch.is_online(2), Err(Error::VcpuOutOfRange));
    /// # Ok::<(), Error>(())
    /// ```
    #[must_use = "a query; it changes nothing"]
    pub fn is_online(&self, vcpu: u32) -> Result<bool, Error> {
        self.check_vcpu(vcpu)?;
        Ok(self.lock.lock().is_online(vcpu))
    }

    /// Brings `vcpu` online or takes it offline. Offline, no port may be
    /// bound to it, and every port bound to it now is moved, with the rebind
    /// protocol (nothing lost, C1/C5), to the vCPU the policy picks among
    /// the others; what is still queued on `vcpu` is then handed to the
    /// vCPUs its ports are bound to, so the offline vCPU need not run
    /// another upcall. Returns how many ports moved (none when `vcpu` is
    /// already as asked, or comes online).
    ///
    /// # Errors
    ///
    /// [`Error::VcpuOutOfRange`] if `vcpu` is not below
    /// [`Channels::nr_vcpus`]; [`Error::LastOnlineVcpu`] if it is the only
    /// vCPU online and `online` is `false`.
    ///
    /// # Examples
    ///
    /// ```
    /// use evtchn::{Bind, Channels, Error, OwnedMemory, TwoLevel};
    ///
    /// let ch = Channels::new(TwoLevel::new(OwnedMemory::new(1, 2)), ());
    /// let port = ch.bind(Bind::Affinity(1))?;
    /// assert_eq!(ch.set_online(1, false)?, 1);
    /// assert_eq!(ch.status(port.number())?.vcpu, 0);
    /// assert_eq!(ch.bind(Bind::Affinity(1)), Err(Error::VcpuOffline));
    /// assert_eq!(ch.set_online(0, false), Err(Error::LastOnlineVcpu));
    /// assert_eq!(ch.set_online(1, true)?, 0); // nothing moves back by itself
    /// # Ok::<(), Error>(())
    /// ```
    pub fn set_online(&self, vcpu: u32, online: bool) -> Result<usize, Error> {
        self.check_vcpu(vcpu)?;
        let mut plane = self.lock.lock();
        if online || !plane.is_online(vcpu) {
            if let Some(o) = plane.online.get_mut(vcpu as usize) {
                *o = online;
            }
            return Ok(0);
        }
        if plane.online.iter().filter(|&&o| o).count() <= 1 {
            return Err(Error::LastOnlineVcpu);
        }
        if let Some(o) = plane.online.get_mut(vcpu as usize) {
            *o = false;
        }
        let mut moved = 0usize;
        for (n, slot) in (0u32..).zip(self.table.iter()) {
            // Acquire: the current binding (the lock keeps it current).
            let cw = slot.load(Acquire);
            if port::state(cw) != BOUND || port::vcpu(cw) != vcpu {
                continue;
            }
            let port = Port {
                number: n,
                generation: port::generation(cw),
            };
            let to = plane.pick(Some(vcpu)).ok_or(Error::LastOnlineVcpu)?;
            self.rebind(&mut plane, port, to)?;
            moved = moved.saturating_add(1);
        }
        if !self.weak.has(Weaken::OfflineNoDrain) {
            self.drain_offline(vcpu);
        }
        Ok(moved)
    }

    /// Hands what is still queued on offline `vcpu` to the vCPUs its ports
    /// are bound to now ([`PortOps::evacuate`]; Linux drains a dying CPU's
    /// queues the same way): a FIFO event still linked on one of its queues
    /// when its port moved is relinked only by a consumer of that queue,
    /// and an offline vCPU may never run another upcall. Call with the lock
    /// held: no port can be bound to `vcpu` meanwhile, so every port found
    /// is bound elsewhere (`Foreign`), closed, or masked (its unmask raises
    /// it).
    fn drain_offline(&self, vcpu: u32) {
        let _ = self.abi.evacuate(
            vcpu,
            |number| {
                let Ok(slot) = self.slot(number) else {
                    return Delivery::Skipped;
                };
                // Acquire: the binding the lock keeps current, as published.
                let cw = slot.load(Acquire);
                if port::state(cw) != BOUND || cw & REASONS != 0 {
                    Delivery::Skipped
                } else {
                    Delivery::Foreign(port::vcpu(cw))
                }
            },
            |v| self.notify.kick(v),
        );
    }

    /// Moves hot ports off overloaded vCPUs (at most `max_moves`), judged
    /// by the handler runs of each port since the last rebalance (counted
    /// by the deliver side, never by the send path), with the rebind
    /// protocol: nothing is lost, nothing runs twice at once. See
    /// [`plan_rebalance`] for the rule.
    ///
    /// # Errors
    ///
    /// Only an error of the ABI's mask or unmask of a port it moves, which
    /// this crate's ABIs do not return (every port moved is bound, and the
    /// lock keeps it so); the moves made before it stand.
    ///
    /// # Examples
    ///
    /// ```
    /// use evtchn::{Bind, Channels, Move, OwnedMemory, TwoLevel};
    ///
    /// let ch = Channels::new(TwoLevel::new(OwnedMemory::new(1, 2)), ());
    /// let hot = ch.bind(Bind::Affinity(0))?;
    /// let warm = ch.bind(Bind::Affinity(0))?;
    /// let mut vcpu0 = ch.vcpu(0)?;
    /// for i in 0..10 {
    ///     ch.send(hot)?;
    ///     if i % 2 == 0 {
    ///         ch.send(warm)?;
    ///     }
    ///     vcpu0.upcall(|_| {})?;
    /// }
    /// // vCPU 0 ran 15 handlers and vCPU 1 none: the hot port moves.
    /// let moves = ch.rebalance(4)?;
    /// assert_eq!(moves, [Move { port: hot, from: 0, to: 1 }]);
    /// assert_eq!(ch.status(hot.number())?.vcpu, 1);
    /// # Ok::<(), evtchn::Error>(())
    /// ```
    pub fn rebalance(&self, max_moves: usize) -> Result<Vec<Move>, Error> {
        let mut plane = self.lock.lock();
        let mut loads: Vec<Option<u64>> = (0..self.nr_vcpus)
            .map(|v| plane.is_online(v).then_some(0))
            .collect();
        let mut ports = Vec::new();
        for (n, slot) in (0u32..).zip(self.table.iter()) {
            // Acquire: the current binding (the lock keeps it current).
            let cw = slot.load(Acquire);
            if port::state(cw) != BOUND {
                continue;
            }
            // Relaxed: statistics.
            let now = self.handled.get(n as usize).map_or(0, |h| h.load(Relaxed));
            let last = plane.last_count.get_mut(n as usize);
            let delta = last.map_or(0, |l| {
                let d = now.wrapping_sub(*l);
                *l = now;
                d
            });
            let v = port::vcpu(cw);
            if let Some(Some(l)) = loads.get_mut(v as usize) {
                *l = l.saturating_add(u64::from(delta));
            }
            ports.push((n, v, u64::from(delta)));
        }
        let mut moves = Vec::new();
        for (n, from, to) in plan_rebalance(&loads, &ports, max_moves) {
            let Some(slot) = self.table.get(n as usize) else {
                continue;
            };
            // Acquire: the generation of the bound life.
            let port = Port {
                number: n,
                generation: port::generation(slot.load(Acquire)),
            };
            self.rebind(&mut plane, port, to)?;
            moves.push(Move { port, from, to });
        }
        Ok(moves)
    }

    /// Makes `port` a late-EOI port (or not): from its next handler start
    /// on, the port stays masked (reason: EOI pending) until its owner calls
    /// [`Channels::eoi`] or [`Channels::lateeoi`] — Linux's lateeoi, the
    /// storm throttle of XSA-332.
    ///
    /// # Errors
    ///
    /// [`Error::NotBound`] if `port` was closed, [`Error::Stale`] if its
    /// number was bound again since, [`Error::PortOutOfRange`] if its number
    /// is not a port here (a handle of another instance).
    ///
    /// # Examples
    ///
    /// ```
    /// use evtchn::{Bind, Channels, OwnedMemory, TwoLevel};
    ///
    /// let ch = Channels::new(TwoLevel::new(OwnedMemory::new(1, 1)), ());
    /// let port = ch.bind(Bind::Affinity(0))?;
    /// ch.set_lateeoi(port, true)?;
    /// let mut vcpu0 = ch.vcpu(0)?;
    /// ch.send(port)?;
    /// assert_eq!(vcpu0.upcall(|_| {})?, 1);
    /// // That run masked the port until its EOI.
    /// ch.send(port)?;
    /// assert_eq!(vcpu0.upcall(|_| {})?, 0);
    /// ch.eoi(port)?;
    /// assert_eq!(vcpu0.upcall(|_| {})?, 1);
    /// # Ok::<(), evtchn::Error>(())
    /// ```
    pub fn set_lateeoi(&self, port: Port, on: bool) -> Result<(), Error> {
        let _plane = self.lock.lock();
        let slot = self.slot(port.number)?;
        self.update(
            slot,
            port,
            |cw| if on { cw | LATEEOI } else { cw & !LATEEOI },
        )?;
        Ok(())
    }

    /// Ends a late EOI, saying whether the handler found work. A port whose
    /// handler found none more than once in a row stays masked, and this
    /// returns the delay in milliseconds (1, 2, 4, ... up to 1000) after
    /// which the owner calls [`Channels::eoi`]; otherwise the port is
    /// unmasked at once (pending events are raised) and it returns `None`.
    ///
    /// # Errors
    ///
    /// [`Error::NotEoiPending`] if `port` is not masked for an EOI.
    /// [`Error::NotBound`] if `port` was closed, [`Error::Stale`] if its
    /// number was bound again since, [`Error::PortOutOfRange`] if its number
    /// is not a port here (a handle of another instance).
    ///
    /// # Examples
    ///
    /// ```
    /// use evtchn::{Bind, Channels, OwnedMemory, TwoLevel};
    ///
    /// let ch = Channels::new(TwoLevel::new(OwnedMemory::new(1, 1)), ());
    /// let port = ch.bind(Bind::Affinity(0))?;
    /// ch.set_lateeoi(port, true)?;
    /// let mut vcpu0 = ch.vcpu(0)?;
    /// // A handler that found work: unmasked at once.
    /// ch.send(port)?;
    /// vcpu0.upcall(|_| {})?;
    /// assert_eq!(ch.lateeoi(port, false)?, None);
    /// // Two spurious ones in a row: back off 1 ms, then `eoi`.
    /// for backoff in [None, Some(1)] {
    ///     ch.send(port)?;
    ///     vcpu0.upcall(|_| {})?;
    ///     assert_eq!(ch.lateeoi(port, true)?, backoff);
    /// }
    /// assert!(ch.status(port.number())?.masked_eoi);
    /// ch.eoi(port)?;
    /// # Ok::<(), evtchn::Error>(())
    /// ```
    #[must_use = "`Some(delay)`: the port stays masked until `eoi` is called after the delay"]
    pub fn lateeoi(&self, port: Port, spurious: bool) -> Result<Option<u32>, Error> {
        let mut plane = self.lock.lock();
        let slot = self.slot(port.number)?;
        // Acquire: see the current mask reasons.
        let cw = slot.load(Acquire);
        check(cw, port)?;
        if cw & self.reason_bit(MaskReason::EoiPending) == 0 {
            return Err(Error::NotEoiPending);
        }
        let count = plane
            .spurious
            .get_mut(port.number as usize)
            .ok_or(Error::PortOutOfRange)?;
        if !spurious {
            *count = 0;
        } else {
            *count = count.saturating_add(1);
            if *count > 1 {
                // count > 1 here: no wrap.
                let shift = u32::from(count.wrapping_sub(2)).min(10);
                return Ok(Some((1u32 << shift).min(1000)));
            }
        }
        self.remove_reason(port, MaskReason::EoiPending)?;
        Ok(None)
    }

    /// Sets the priority of `port`: 0 (highest) ..= 15; 7 after bind. The
    /// FIFO ABI links the port's next event on the queue of that priority
    /// (an event already linked is delivered once on its old priority); the
    /// 2-level ABI has no priorities and only records it.
    ///
    /// # Errors
    ///
    /// [`Error::PriorityOutOfRange`] if `priority` is above 15.
    /// [`Error::NotBound`] if `port` was closed, [`Error::Stale`] if its
    /// number was bound again since, [`Error::PortOutOfRange`] if its number
    /// is not a port here (a handle of another instance).
    ///
    /// # Examples
    ///
    /// ```
    /// use evtchn::{Bind, Channels, Error, Fifo, OwnedFifo};
    ///
    /// let ch = Channels::new(Fifo::new(OwnedFifo::new(64, 1)), ());
    /// let low = ch.bind(Bind::Affinity(0))?;
    /// let high = ch.bind(Bind::Affinity(0))?;
    /// ch.set_priority(high, 0)?;
    /// ch.send(low)?;
    /// ch.send(high)?;
    /// let mut order = Vec::new();
    /// ch.vcpu(0)?.upcall(|p| order.push(p))?;
    /// assert_eq!(order, [high, low]); // strict priority, sent last or not
    /// assert_eq!(ch.set_priority(low, 16), Err(Error::PriorityOutOfRange));
    /// # Ok::<(), Error>(())
    /// ```
    pub fn set_priority(&self, port: Port, priority: u8) -> Result<(), Error> {
        if priority > 15 {
            return Err(Error::PriorityOutOfRange);
        }
        let _guard = self.lock.lock();
        let slot = self.slot(port.number)?;
        // Acquire: see the current state.
        check(slot.load(Acquire), port)?;
        self.abi.set_priority(port.number, priority)?;
        self.update(slot, port, |cw| {
            (cw & !port::PRIORITY) | (u64::from(priority) << PRIORITY_SHIFT)
        })?;
        Ok(())
    }

    /// Closes `port`. Once this returns, no handler of this life of the port
    /// starts again (C6); a handler already running finishes, and the number
    /// is reused only after it has (state `Closing` until then). Sends on
    /// the handle fail with `NotBound`, and after a rebind with `Stale`.
    ///
    /// # Errors
    ///
    /// [`Error::NotBound`] if `port` is closed already, [`Error::Stale`] if
    /// its number was bound again since, [`Error::PortOutOfRange`] if its
    /// number is not a port here (a handle of another instance).
    ///
    /// # Examples
    ///
    /// ```
    /// use evtchn::{Bind, Channels, Error, OwnedMemory, State, TwoLevel};
    ///
    /// let ch = Channels::new(TwoLevel::new(OwnedMemory::new(1, 1)), ());
    /// let port = ch.bind(Bind::Affinity(0))?;
    /// ch.send(port)?;
    /// ch.close(port)?;
    /// assert_eq!(ch.vcpu(0)?.upcall(|_| {})?, 0); // the event went with it
    /// assert_eq!(ch.status(port.number())?.state, State::Free);
    /// assert_eq!(ch.close(port), Err(Error::NotBound));
    /// # Ok::<(), Error>(())
    /// ```
    pub fn close(&self, port: Port) -> Result<(), Error> {
        let mut plane = self.lock.lock();
        let slot = self.slot(port.number)?;
        let keep_closing = !self.weak.has(Weaken::CloseIgnoresInFlight);
        self.update(slot, port, |cw| {
            let next = if cw & ACTIVE != 0 && keep_closing {
                CLOSING
            } else {
                FREE
            };
            port::with_state(cw & !(REASONS | REPLAY), next)
        })?;
        // Mask, so that a raise still in flight notifies nobody; the pending
        // bit it may leave is cleared by the next bind.
        self.abi.mask(port.number)?;
        // Relaxed: a hint (see `free_hint`).
        self.free_hint.fetch_min(port.number, Relaxed);
        // Relaxed: the lock orders this read after our own update.
        plane.bound_moved(Some(port::vcpu(slot.load(Relaxed))), None);
        Ok(())
    }

    /// A snapshot of port `number`.
    ///
    /// # Errors
    ///
    /// [`Error::PortOutOfRange`] if `number` is 0 or not below
    /// [`Channels::nr_ports`].
    ///
    /// # Examples
    ///
    /// ```
    /// use evtchn::{Bind, Channels, OwnedMemory, State, TwoLevel};
    ///
    /// let ch = Channels::new(TwoLevel::new(OwnedMemory::new(1, 2)), ());
    /// let port = ch.bind(Bind::Affinity(1))?;
    /// ch.mask(port)?;
    /// ch.send(port)?;
    /// let s = ch.status(port.number())?;
    /// assert_eq!((s.state, s.vcpu, s.priority), (State::Bound, 1, 7));
    /// assert!(s.pending && s.masked_explicit && !s.in_flight);
    /// assert_eq!(ch.status(2)?.state, State::Free);
    /// # Ok::<(), evtchn::Error>(())
    /// ```
    #[must_use = "a snapshot; taking it changes nothing"]
    pub fn status(&self, number: u32) -> Result<Status, Error> {
        let slot = self.slot(number)?;
        // Acquire: a consistent snapshot of what the last writer published.
        let cw = slot.load(Acquire);
        let state = match port::state(cw) {
            BOUND => State::Bound,
            CLOSING => State::Closing,
            _ => State::Free,
        };
        Ok(Status {
            state,
            vcpu: port::vcpu(cw),
            priority: port::priority(cw),
            masked_explicit: cw & MaskReason::Explicit.bit() != 0,
            masked_rebind: cw & MaskReason::Rebind.bit() != 0,
            masked_eoi: cw & MaskReason::EoiPending.bit() != 0,
            // A free port of a FIFO event-array page not mapped yet has no
            // pending bit anywhere.
            lateeoi: cw & LATEEOI != 0,
            handled: self.handled.get(number as usize).map_or(0, |h| {
                // Relaxed: statistics.
                h.load(Relaxed)
            }),
            pending: match self.abi.is_pending(number) {
                Ok(p) => p,
                Err(_) if state == State::Free => false,
                Err(e) => return Err(e),
            },
            in_flight: cw & ACTIVE != 0,
            generation: port::generation(cw),
        })
    }

    /// Whether `vcpu` has an upcall pending. A vCPU halts only after this
    /// returned `false` (C2).
    ///
    /// # Errors
    ///
    /// [`Error::VcpuOutOfRange`] if `vcpu` is not below
    /// [`Channels::nr_vcpus`].
    ///
    /// # Examples
    ///
    /// ```
    /// use evtchn::{Bind, Channels, OwnedMemory, TwoLevel};
    ///
    /// let ch = Channels::new(TwoLevel::new(OwnedMemory::new(1, 2)), ());
    /// let port = ch.bind(Bind::Affinity(1))?;
    /// assert!(!ch.upcall_pending(1)?);
    /// ch.send(port)?;
    /// assert!(ch.upcall_pending(1)? && !ch.upcall_pending(0)?);
    /// # Ok::<(), evtchn::Error>(())
    /// ```
    #[must_use = "a vCPU may halt only after this returned `false`"]
    pub fn upcall_pending(&self, vcpu: u32) -> Result<bool, Error> {
        self.check_vcpu(vcpu)?;
        self.abi.upcall_pending(vcpu)
    }

    /// The deliver side of `vcpu`: run its upcalls through the handle.
    ///
    /// Keep one handle per vCPU for as long as the vCPU runs: the handle
    /// holds the scan position, so budgeted upcalls
    /// ([`Vcpu::upcall_budget`]) take turns over the pending ports. A fresh
    /// handle starts a 2-level scan at port 0 again, and under a storm of a
    /// low port a fresh handle per upcall would never reach the others.
    ///
    /// # Errors
    ///
    /// [`Error::VcpuOutOfRange`] if `vcpu` is not below
    /// [`Channels::nr_vcpus`].
    ///
    /// # Examples
    ///
    /// ```
    /// use evtchn::{Bind, Channels, Error, OwnedMemory, TwoLevel};
    ///
    /// let ch = Channels::new(TwoLevel::new(OwnedMemory::new(1, 2)), ());
    /// let port = ch.bind(Bind::Affinity(1))?;
    /// let mut vcpu1 = ch.vcpu(1)?; // kept for as long as vCPU 1 runs
    /// ch.send(port)?;
    /// assert_eq!(vcpu1.upcall(|p| assert_eq!(p, port))?, 1);
    /// assert!(matches!(ch.vcpu(2), Err(Error::VcpuOutOfRange)));
    /// # Ok::<(), Error>(())
    /// ```
    #[must_use = "the handle runs the vCPU's upcalls; making one does nothing"]
    pub fn vcpu(&self, vcpu: u32) -> Result<Vcpu<'_, A, N>, Error> {
        self.check_vcpu(vcpu)?;
        Ok(Vcpu {
            channels: self,
            id: vcpu,
            cursor: A::Cursor::default(),
        })
    }

    /// Runs `handler` for candidate `number` on `vcpu` if the port is bound
    /// there, unmasked, pending, and not in flight elsewhere. Returns
    /// what it did.
    #[inline]
    fn deliver(&self, vcpu: u32, number: u32, handler: &mut impl FnMut(Port)) -> Delivery {
        let Ok(slot) = self.slot(number) else {
            return Delivery::Skipped;
        };
        let guard = !self.weak.has(Weaken::NoInFlightGuard);
        // Acquire: pairs with the control plane's Release updates, so the
        // binding and mask reasons read here are the published ones.
        let mut cw = slot.load(Acquire);
        loop {
            if port::state(cw) != BOUND || cw & REASONS != 0 {
                // Masked (the unmask re-raises) or closed.
                return Delivery::Skipped;
            }
            if port::vcpu(cw) != vcpu {
                // Bound elsewhere now (a rebind moved it). Confirm with a
                // compare-exchange, which reads the latest word, so that the
                // vCPU named is the current one. AcqRel: as for any update.
                match slot.compare_exchange(cw, cw, AcqRel, Acquire) {
                    Ok(_) => return Delivery::Foreign(port::vcpu(cw)),
                    Err(now) => cw = now,
                }
                continue;
            }
            if !guard {
                break;
            }
            if cw & ACTIVE != 0 {
                // In flight on another vCPU (an older binding). Leave the
                // event pending and ask the runner to re-raise it when it
                // ends, so it is neither lost nor run concurrently (C3).
                if self.weak.has(Weaken::NoReplay) {
                    return Delivery::Skipped;
                }
                // Even when REPLAY looks set already, confirm with a
                // compare-exchange: `cw` may be a stale view of a guard the
                // runner has since released (and re-raised nothing).
                // AcqRel: Release orders our read of the pending bit before
                // the runner's Acquire release of the guard, so its re-raise
                // sees that bit.
                match slot.compare_exchange(cw, cw | REPLAY, AcqRel, Acquire) {
                    Ok(_) => return Delivery::Skipped,
                    Err(now) => cw = now,
                }
                continue;
            }
            // A late-EOI port is masked (in the control word) from this
            // handler start until its owner's `eoi`.
            let eoi = if cw & LATEEOI != 0 {
                MaskReason::EoiPending.bit()
            } else {
                0
            };
            // Acquire: the previous runner's handler (released with Release)
            // happens before ours; Release: a closer or rebinder that reads
            // ACTIVE sees our claim.
            match slot.compare_exchange(cw, cw | ACTIVE | eoi, AcqRel, Acquire) {
                Ok(_) => break,
                Err(now) => cw = now,
            }
        }
        let port = Port {
            number,
            generation: port::generation(cw),
        };
        // Clear pending only while holding the guard: each raise is handled
        // at most once, and a send during the handler raises anew.
        let ran = matches!(self.abi.test_and_clear_pending(number), Ok(true));
        // The guard ends when `held` drops: after the handler, or while a
        // panicking handler unwinds (an embedder that catches the panic
        // finds the port deliverable, closable, and its replay re-raised).
        // A late EOI taken for an event that was not there (another vCPU
        // handled it first) is given back at once.
        let held = guard.then(|| InFlight {
            channels: self,
            slot,
            number,
            undo_eoi: if ran || self.weak.has(Weaken::NoStaleEoiUndo) {
                0
            } else {
                cw & LATEEOI
            },
        });
        if ran {
            handler(port);
            #[cfg(not(all(loom, feature = "loom")))]
            if let Some(h) = self.handled.get(number as usize) {
                // Relaxed, and no read-modify-write: statistics written only
                // by the guard's holder (not modelled under loom: no protocol
                // depends on them).
                h.store(h.load(Relaxed).wrapping_add(1), Relaxed);
            }
        }
        drop(held);
        if ran {
            Delivery::Handled
        } else {
            Delivery::Skipped
        }
    }

    /// Ends the in-flight guard of `number`: frees a port closed meanwhile,
    /// and re-raises an event another vCPU left for us.
    /// `undo_eoi`: drop the late-EOI mask reason this claim added (nonzero
    /// only when the handler did not run).
    fn release(&self, slot: &AtomicU64, number: u32, undo_eoi: u64) {
        let undo = if undo_eoi != 0 {
            MaskReason::EoiPending.bit()
        } else {
            0
        };
        // Relaxed: only a first guess for the compare-exchange.
        let mut cw = slot.load(Relaxed);
        loop {
            let mut new = cw & !(ACTIVE | REPLAY | undo);
            if port::state(cw) == CLOSING {
                new = port::with_state(new, FREE);
            }
            // SeqCst (AcqRel at least): Release ends the handler's critical
            // section for the next runner's Acquire (C3); Acquire pairs with
            // a REPLAY request, so its pending bit is visible to `reraise`;
            // SeqCst for the Dekker pattern when a late EOI is given back.
            match slot.compare_exchange(cw, new, SeqCst, Relaxed) {
                Ok(_) => break,
                Err(now) => cw = now,
            }
        }
        if port::state(cw) == CLOSING {
            // Relaxed: a hint (see `free_hint`); the port is free now.
            self.free_hint.fetch_min(number, Relaxed);
        }
        let reopened = undo != 0 && cw & REASONS == undo;
        if reopened {
            // A sender may have seen the transient reason's effect (a skip):
            // re-raise, as `remove_reason` does after an unmask.
            store_load_fence();
        }
        if (cw & REPLAY != 0 || reopened) && port::state(cw) == BOUND {
            // Relaxed: `reraise` reads the target after its mask load,
            // ordered as in `send`.
            if let Ok(k) = self.abi.reraise(number, || port::vcpu(slot.load(Relaxed))) {
                self.kick(k);
            }
        }
    }
}

/// A held in-flight guard: released (with the replay re-raise) when
/// dropped, on the normal path and when a handler unwinds.
struct InFlight<'c, A: PortOps, N: Notify> {
    channels: &'c Channels<A, N>,
    slot: &'c AtomicU64,
    number: u32,
    undo_eoi: u64,
}

impl<A: PortOps, N: Notify> Drop for InFlight<'_, A, N> {
    #[inline]
    fn drop(&mut self) {
        if !self.channels.weak.has(Weaken::GuardNotUnwindSafe) || !unwinding() {
            self.channels.release(self.slot, self.number, self.undo_eoi);
        }
    }
}

/// Whether the thread is unwinding from a panic (only a weakened guard asks,
/// in loom models; `false` without std, where a panic aborts).
#[inline(always)]
fn unwinding() -> bool {
    #[cfg(feature = "std")]
    {
        std::thread::panicking()
    }
    #[cfg(not(feature = "std"))]
    {
        false
    }
}

/// Checks that `cw` is the bound life of `port`.
#[inline(always)]
fn check(cw: u64, port: Port) -> Result<(), Error> {
    if port::generation(cw) != port.generation {
        Err(Error::Stale)
    } else if port::state(cw) != BOUND {
        Err(Error::NotBound)
    } else {
        Ok(())
    }
}

/// The deliver side of one vCPU: its upcall and its round-robin position.
///
/// Whoever runs vCPU `id` holds one. Several handles for one vCPU may exist
/// and run concurrently: correctness does not depend on it (the in-flight
/// guard serialises handlers), only fairness is per handle.
pub struct Vcpu<'a, A: PortOps, N: Notify> {
    channels: &'a Channels<A, N>,
    id: u32,
    cursor: A::Cursor,
}

impl<A: PortOps, N: Notify> core::fmt::Debug for Vcpu<'_, A, N> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Vcpu")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

impl<A: PortOps, N: Notify> Vcpu<'_, A, N> {
    /// This vCPU's index.
    ///
    /// # Examples
    ///
    /// ```
    /// use evtchn::{Channels, OwnedMemory, TwoLevel};
    ///
    /// let ch = Channels::new(TwoLevel::new(OwnedMemory::new(1, 2)), ());
    /// assert_eq!(ch.vcpu(1)?.id(), 1);
    /// # Ok::<(), evtchn::Error>(())
    /// ```
    #[must_use]
    pub fn id(&self) -> u32 {
        self.id
    }

    /// Runs one upcall: clears the upcall flag, scans the selected words in
    /// round-robin order and runs `handler` once for every pending, unmasked
    /// port bound here, repeating while new work was flagged. Returns how
    /// many handler runs it made.
    ///
    /// Under a storm that re-raises ports as fast as they are handled this
    /// call does not return; bound it with [`Vcpu::upcall_budget`] or
    /// [`Vcpu::upcall_until`].
    ///
    /// # Errors
    ///
    /// [`Error::VcpuOutOfRange`] if the ABI's memory holds no state for this
    /// vCPU; [`Channels::vcpu`] checked that it does, so over this crate's
    /// ABIs an upcall does not fail.
    ///
    /// # Examples
    ///
    /// ```
    /// use evtchn::{Bind, Channels, OwnedMemory, TwoLevel};
    ///
    /// let ch = Channels::new(TwoLevel::new(OwnedMemory::new(1, 2)), ());
    /// let a = ch.bind(Bind::Affinity(0))?;
    /// let b = ch.bind(Bind::Affinity(1))?;
    /// ch.send(a)?;
    /// ch.send(b)?;
    /// let mut seen = Vec::new();
    /// assert_eq!(ch.vcpu(0)?.upcall(|p| seen.push(p))?, 1);
    /// assert_eq!(seen, [a]); // `b` is vCPU 1's
    /// assert!(ch.upcall_pending(1)?);
    /// # Ok::<(), evtchn::Error>(())
    /// ```
    pub fn upcall(&mut self, handler: impl FnMut(Port)) -> Result<usize, Error> {
        self.upcall_until(|_| false, handler)
    }

    /// One upcall that makes at most `max_runs` handler runs, as Linux
    /// bounds its event loop since XSA-332. What it leaves stays pending
    /// where the next upcall finds it, and the upcall flag stays set
    /// ([`Vcpu::upcall_pending`] says `true`), so the vCPU's loop runs
    /// another upcall before it halts: nothing is lost, and the vCPU gets
    /// to do other work in between. The next upcall resumes after the last
    /// port offered (2-level round-robin; FIFO keeps its strict priority).
    ///
    /// # Errors
    ///
    /// As [`Vcpu::upcall`]: none over this crate's ABIs.
    ///
    /// # Examples
    ///
    /// ```
    /// use evtchn::{Bind, Channels, OwnedMemory, TwoLevel};
    ///
    /// let ch = Channels::new(TwoLevel::new(OwnedMemory::new(1, 1)), ());
    /// let ports: Vec<_> = (0..3).map(|_| ch.bind(Bind::Affinity(0)).unwrap()).collect();
    /// for &p in &ports {
    ///     ch.send(p).unwrap();
    /// }
    /// let mut vcpu = ch.vcpu(0).unwrap();
    /// assert_eq!(vcpu.upcall_budget(2, |_| {}).unwrap(), 2);
    /// assert!(vcpu.upcall_pending(), "the third event is deferred, not lost");
    /// assert_eq!(vcpu.upcall_budget(2, |_| {}).unwrap(), 1);
    /// assert!(!vcpu.upcall_pending());
    /// ```
    pub fn upcall_budget(
        &mut self,
        max_runs: usize,
        handler: impl FnMut(Port),
    ) -> Result<usize, Error> {
        self.upcall_until(|ran| ran >= max_runs, handler)
    }

    /// One upcall that stops once `stop(runs so far)` says `true`; it is
    /// asked before each port is taken. A time budget is
    /// `|_| clock() >= deadline` (the core has no clock of its own). What is
    /// left is deferred as by [`Vcpu::upcall_budget`].
    ///
    /// # Errors
    ///
    /// As [`Vcpu::upcall`]: none over this crate's ABIs.
    ///
    /// # Examples
    ///
    /// ```
    /// use evtchn::{Bind, Channels, OwnedMemory, TwoLevel};
    ///
    /// let ch = Channels::new(TwoLevel::new(OwnedMemory::new(1, 1)), ());
    /// for _ in 0..3 {
    ///     let port = ch.bind(Bind::Affinity(0))?;
    ///     ch.send(port)?;
    /// }
    /// let mut vcpu = ch.vcpu(0)?;
    /// // A clock that ticks once per port taken; the deadline is tick 2.
    /// let mut clock = 0;
    /// let mut deadline_passed = |_runs: usize| {
    ///     clock += 1;
    ///     clock > 2
    /// };
    /// assert_eq!(vcpu.upcall_until(&mut deadline_passed, |_| {})?, 2);
    /// assert!(vcpu.upcall_pending(), "the third event is deferred");
    /// assert_eq!(vcpu.upcall_until(|_| false, |_| {})?, 1);
    /// # Ok::<(), evtchn::Error>(())
    /// ```
    pub fn upcall_until(
        &mut self,
        mut stop: impl FnMut(usize) -> bool,
        mut handler: impl FnMut(Port),
    ) -> Result<usize, Error> {
        let channels = self.channels;
        let id = self.id;
        let ran = core::cell::Cell::new(0usize);
        channels.abi.scan_bounded(
            id,
            &mut self.cursor,
            || !stop(ran.get()),
            |number| {
                let d = channels.deliver(id, number, &mut handler);
                if d == Delivery::Handled {
                    ran.set(ran.get().saturating_add(1));
                }
                d
            },
            |v| channels.notify.kick(v),
        )?;
        Ok(ran.get())
    }

    /// Whether an upcall is pending here; halt only after `false`.
    ///
    /// # Examples
    ///
    /// ```
    /// use evtchn::{Bind, Channels, OwnedMemory, TwoLevel};
    ///
    /// let ch = Channels::new(TwoLevel::new(OwnedMemory::new(1, 1)), ());
    /// let port = ch.bind(Bind::Affinity(0))?;
    /// let mut vcpu = ch.vcpu(0)?;
    /// ch.send(port)?;
    /// // The vCPU's loop: upcalls while one is pending, then halt.
    /// while vcpu.upcall_pending() {
    ///     vcpu.upcall_budget(64, |_| {})?;
    /// }
    /// assert_eq!(ch.status(port.number())?.handled, 1);
    /// # Ok::<(), evtchn::Error>(())
    /// ```
    #[must_use = "a vCPU may halt only after this returned `false`"]
    pub fn upcall_pending(&self) -> bool {
        matches!(self.channels.abi.upcall_pending(self.id), Ok(true))
    }
}
