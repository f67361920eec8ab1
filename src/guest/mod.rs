//! The guest side: Linux's events core over the deliver half of an ABI and
//! a hypervisor's hypercalls. The port table, bind/close/status, mask
//! reasons, affinity by mask → bind_vcpu → unmask, late EOI, the policies,
//! and the upcall with its in-flight guard ([`deliver`]).
//!
//! The guest owns its mask bits: a port is masked in memory while it has a
//! mask reason (the control word's are authoritative; a late EOI masks in
//! the control word only), and unmasked by the guest's own conditional
//! unmask ([`Deliver::try_unmask`]) or, when the port is pending, by the
//! hypervisor's (`EVTCHNOP_unmask`, [`Hypercalls::unmask`]).
//!
//! Locking: bind, close, mask/unmask/eoi and set_affinity serialise on one
//! control-plane lock. `send` and the upcall never take it: they work with
//! atomics on the port's control word (see [`control`]) and on the ABI's
//! memory only.

mod control;
mod deliver;
mod plane;

pub use deliver::Vcpu;

use alloc::boxed::Box;
use alloc::vec::Vec;

use crate::abi::{Deliver, Delivery, GuestUnmask, Ports, Raised};
use crate::policy::{plan_rebalance, Move, Policy};
use crate::port::{MaskReason, Port, State, Status};
use crate::sync::{store_load_fence, AtomicU32, Lock, Ordering::*};
use crate::weaken::{Weaken, Weakness};
use crate::{Error, Notify};
use control::{Control, Snapshot};
use plane::Plane;

/// What a guest asks of its hypervisor: the event-channel hypercalls
/// (`EVTCHNOP_*`) the guest side makes. A guest kernel implements it with
/// real hypercalls; [`crate::Host`] implements it directly (the in-process
/// wiring, [`crate::Channels`]).
///
/// Each returns the hypervisor's verdict as a typed error; the guest side
/// passes it on (and, where it changed its own state first, undoes that).
pub trait Hypercalls: Sync {
    /// Binds a free port to notify vCPU `vcpu` (an IPI- or VIRQ-style
    /// bind) and returns its number.
    ///
    /// # Errors
    ///
    /// As the hypervisor says: [`Error::NoFreePort`], [`Error::VcpuOutOfRange`].
    fn bind(&self, vcpu: u32) -> Result<u32, Error>;
    /// `EVTCHNOP_close`.
    ///
    /// # Errors
    ///
    /// As the hypervisor says: [`Error::PortOutOfRange`], [`Error::NotBound`].
    fn close(&self, port: u32) -> Result<(), Error>;
    /// `EVTCHNOP_send`.
    ///
    /// # Errors
    ///
    /// As the hypervisor says: [`Error::PortOutOfRange`], [`Error::NotBound`].
    fn send(&self, port: u32) -> Result<(), Error>;
    /// `EVTCHNOP_unmask`: the hypervisor clears the mask and raises the
    /// port if it is pending.
    ///
    /// # Errors
    ///
    /// As the hypervisor says: [`Error::PortOutOfRange`].
    fn unmask(&self, port: u32) -> Result<(), Error>;
    /// `EVTCHNOP_bind_vcpu`: later raises of `port` notify `vcpu`.
    ///
    /// # Errors
    ///
    /// As the hypervisor says: [`Error::PortOutOfRange`], [`Error::NotBound`],
    /// [`Error::VcpuOutOfRange`].
    fn bind_vcpu(&self, port: u32, vcpu: u32) -> Result<(), Error>;
    /// `EVTCHNOP_set_priority`.
    ///
    /// # Errors
    ///
    /// As the hypervisor says: [`Error::PortOutOfRange`], [`Error::NotBound`],
    /// [`Error::PriorityOutOfRange`].
    fn set_priority(&self, port: u32, priority: u8) -> Result<(), Error>;
}

/// A reference serves as the hypervisor it names: several guests, or a
/// guest and the code that serves it, can share one [`crate::Host`].
///
/// # Examples
///
/// ```
/// use evtchn::{Bind, Guest, Host, OwnedMemory, TwoLevel};
///
/// // One memory: the hypervisor's raise half and the guest's deliver half.
/// let mem = OwnedMemory::new(1, 2);
/// let host = Host::new(TwoLevel::new(&mem), ());
/// let guest = Guest::on_xen(TwoLevel::new(&mem), &host, ());
/// let port = guest.bind(Bind::Affinity(1))?; // EVTCHNOP_bind_* on `host`
/// host.send(port.number())?; // the hypervisor raises it
/// let mut seen = Vec::new();
/// assert_eq!(guest.vcpu(1)?.upcall(|p| seen.push(p))?, 1);
/// assert_eq!(seen, [port]);
/// # Ok::<(), evtchn::Error>(())
/// ```
impl<H: Hypercalls + ?Sized> Hypercalls for &H {
    fn bind(&self, vcpu: u32) -> Result<u32, Error> {
        (**self).bind(vcpu)
    }
    fn close(&self, port: u32) -> Result<(), Error> {
        (**self).close(port)
    }
    fn send(&self, port: u32) -> Result<(), Error> {
        (**self).send(port)
    }
    fn unmask(&self, port: u32) -> Result<(), Error> {
        (**self).unmask(port)
    }
    fn bind_vcpu(&self, port: u32, vcpu: u32) -> Result<(), Error> {
        (**self).bind_vcpu(port, vcpu)
    }
    fn set_priority(&self, port: u32, priority: u8) -> Result<(), Error> {
        (**self).set_priority(port, priority)
    }
}

/// What a [`Guest`] runs against: the deliver half over its memory, the
/// hypercalls, and its kicks (IPIs). [`OnXen`] wires the three a guest
/// kernel has; `InProcess` wires a [`crate::Host`] in the same address
/// space ([`crate::Channels`]).
pub trait Hypervisor: Sync {
    /// The deliver half of the ABI over the guest's memory.
    type Abi: Deliver;
    /// The hypercalls.
    type Calls: Hypercalls;
    /// The kick of a vCPU the guest side itself made an upcall pending on
    /// (a port it found bound elsewhere, a vCPU's queue handed over).
    type Notify: Notify;
    /// Whether the deliver half raises a port it found bound to another
    /// vCPU on that vCPU itself ([`Delivery::Foreign`]: the 2-level ABI
    /// sets that vCPU's selector bit and flag, the FIFO ABI links the event
    /// on its queue), so that a handler runs only on the vCPU its port is
    /// bound to (C5). Only a hypervisor in the same address space, whose
    /// raise half is the same value, allows it. A guest on a real
    /// hypervisor (the default) runs such an event where it found it, as
    /// Linux does: the FIFO queue tails are the hypervisor's.
    const RELINKS_LOCALLY: bool = false;
    /// The deliver half.
    fn abi(&self) -> &Self::Abi;
    /// The hypercalls.
    fn calls(&self) -> &Self::Calls;
    /// The kick.
    fn notify(&self) -> &Self::Notify;
    /// Sends on `port`; `binding` reads the guest's binding of the port (a
    /// hypervisor in the same address space may raise on it; see
    /// `InProcess`). Returns what the raise did where that is known here;
    /// the default makes the hypercall and reports [`Raised::Masked`],
    /// which tells the guest what a masked raise tells it: to read the
    /// port's life again before it answers.
    ///
    /// # Errors
    ///
    /// As [`Hypercalls::send`].
    #[inline]
    fn send(&self, port: u32, binding: impl FnOnce() -> u32) -> Result<Raised, Error> {
        let _ = binding;
        self.calls().send(port).map(|()| Raised::Masked)
    }
}

/// A guest kernel's wiring: the deliver half over its own memory (`D`), the
/// hypervisor's hypercalls (`H`) and its IPIs (`N`).
#[derive(Debug)]
pub struct OnXen<D, H, N> {
    abi: D,
    calls: H,
    notify: N,
}

impl<D: Deliver, H: Hypercalls, N: Notify> Hypervisor for OnXen<D, H, N> {
    type Abi = D;
    type Calls = H;
    type Notify = N;
    fn abi(&self) -> &D {
        &self.abi
    }
    fn calls(&self) -> &H {
        &self.calls
    }
    fn notify(&self) -> &N {
        &self.notify
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
const DEFAULT_PRIORITY: u8 = crate::host::DEFAULT_PRIORITY;

/// The guest side of event channels: Linux's events core over a
/// [`Hypervisor`]. [`Guest::on_xen`] makes one for a guest kernel;
/// [`crate::Channels`] is one wired in-process to a [`crate::Host`].
pub struct Guest<V: Hypervisor> {
    v: V,
    table: Box<[Control]>,
    /// The control-plane lock, and the state it guards.
    lock: Lock<Plane>,
    /// Per port: handler runs, written only by the in-flight guard's holder
    /// (a load and a store, no read-modify-write), read by the rebalancer.
    handled: Box<[AtomicU32]>,
    nr_vcpus: u32,
    weak: Weakness,
}

impl<V: Hypervisor> core::fmt::Debug for Guest<V> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Guest")
            .field("nr_ports", &self.nr_ports())
            .field("nr_vcpus", &self.nr_vcpus)
            .finish_non_exhaustive()
    }
}

impl<D: Deliver, H: Hypercalls, N: Notify> Guest<OnXen<D, H, N>> {
    /// The guest side of a guest kernel: the deliver half over its own
    /// memory, its hypervisor's hypercalls, and its IPIs (`notify`). As
    /// Linux at boot, every port of the memory is masked first.
    #[must_use]
    pub fn on_xen(abi: D, calls: H, notify: N) -> Self {
        Self::build(OnXen { abi, calls, notify }, Weakness::default())
    }

    /// [`Guest::on_xen`] with one protective step weakened (loom models and
    /// shuttle negative controls only).
    #[cfg(any(all(loom, feature = "loom"), evtchn_shuttle))]
    #[doc(hidden)]
    pub fn on_xen_weakened(abi: D, calls: H, notify: N, w: Weaken) -> Self {
        Self::build(OnXen { abi, calls, notify }, Weakness::new(w))
    }
}

impl<V: Hypervisor> Guest<V> {
    pub(crate) fn build(v: V, weak: Weakness) -> Self {
        let nr_ports = v.abi().nr_ports();
        let nr_vcpus = v.abi().nr_vcpus().min(0xffff);
        // As Linux at boot: no port is live yet.
        for p in 0..nr_ports {
            // Cannot fail: p < nr_ports.
            let _ = v.abi().mask(p);
        }
        Guest {
            table: (0..nr_ports).map(|_| Control::new()).collect(),
            handled: (0..nr_ports).map(|_| AtomicU32::new(0)).collect(),
            v,
            lock: Lock::new(Plane::new(nr_ports as usize, nr_vcpus as usize)),
            nr_vcpus,
            weak,
        }
    }

    /// The ABI this control plane drives.
    ///
    /// # Examples
    ///
    /// ```
    /// use evtchn::{Bind, Channels, OwnedMemory, Ports, TwoLevel};
    ///
    /// let ch = Channels::new(TwoLevel::new(OwnedMemory::new(1, 1)), ());
    /// let port = ch.bind(Bind::Affinity(0))?;
    /// ch.send(port)?;
    /// assert!(ch.abi().is_pending(port.number())?);
    /// # Ok::<(), evtchn::Error>(())
    /// ```
    #[must_use]
    pub fn abi(&self) -> &V::Abi {
        self.v.abi()
    }

    /// What this guest runs against.
    #[must_use]
    pub fn hypervisor(&self) -> &V {
        &self.v
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
    pub fn notifier(&self) -> &V::Notify {
        self.v.notify()
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

    fn slot(&self, number: u32) -> Result<&Control, Error> {
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

    /// Changes the control word of a bound `port` with `f` (see
    /// [`Control::update`]). Returns the word before and after.
    fn update(
        &self,
        slot: &Control,
        port: Port,
        f: impl Fn(Snapshot) -> Snapshot,
    ) -> Result<(Snapshot, Snapshot), Error> {
        slot.update(port, f)
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
    /// [`Guest::nr_ports`]; [`Error::NotBound`] if no port is bound at
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
        if !cw.is_bound() {
            return Err(Error::NotBound);
        }
        Ok(Port {
            number,
            generation: cw.generation(),
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
    ///   [`Guest::nr_vcpus`] (or `Bind::Auto` over memory of no vCPU);
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
        // The hypervisor picks the number (the lowest free one, as Xen).
        let n = self.v.calls().bind(target)?;
        // A number the guest cannot hold, or one it holds bound or closing
        // (only a hypervisor that disagrees with the guest returns one):
        // refused, and the guest's table is left alone.
        let slot = self.slot(n).map_err(|_| Error::NoFreePort)?;
        // Acquire: a port freed by a handler's end (CLOSING → FREE) is
        // reused only after that handler's writes.
        let old = slot.load(Acquire);
        if !old.is_free() {
            return Err(Error::NoFreePort);
        }
        let gen = old.generation().wrapping_add(1);
        // 1. Mask (the guest's own bit): a sender of the port's last life
        //    that is still between its state check and its raise raises
        //    nothing visible. (The hypervisor's close cleared the pending
        //    state of that life; a stale sender's bit that lands after it
        //    is at most one spurious event of this life, whose send
        //    returns `NotBound` or `Stale`.)
        self.v.abi().mask(n)?;
        // 2. New generation, still FREE. Release: a reader of the port
        //    table sees the FREE state no earlier than the mask above.
        slot.store(Snapshot::free(gen), Release);
        let cw = Snapshot::bound(target, DEFAULT_PRIORITY, gen);
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
        // 5. Unmask: raises on `target` if a stale raise slipped in after
        //    the clear (it is then an event of this life, raised after bind).
        self.unmask_port(n)?;
        if mode == Bind::XenCompat {
            // Xen's spurious event of an interdomain or pirq bind.
            self.v.send(n, || target)?;
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
        // No test for port 0: a `Port` never names it (only a bound slot
        // makes one, and `bind` never binds 0).
        let slot = (self.table.get(port.number as usize)).ok_or(Error::PortOutOfRange)?;
        // Acquire: pairs with bind's Release publish of BOUND, so the
        // pending bit we set is never one bind clears after us.
        let cw = slot.load(Acquire);
        if !cw.is_life_of(port) {
            return Err(cw.refusal(port));
        }
        let mut now = cw;
        // SeqCst: `set_pending` calls the closure only after its SeqCst
        // pending write and (2-level) store-load fence, so this load is the
        // read half of a Dekker pattern with a late EOI, which writes the
        // word and then reads the pending bit (see `remove_reason`); it also
        // sees a rebinder's binding, ordered by the mask read before it.
        let raised = self.v.send(port.number, || {
            now = slot.load(SeqCst);
            now.vcpu()
        })?;
        match raised {
            Raised::Coalesced => Ok(()),
            // The word unchanged since the first check (the common case)
            // needs no second one.
            Raised::Notified { .. } if now == cw => Ok(()),
            // A bind bumps the generation before it unmasks; a raise that
            // landed after that sees the bump.
            Raised::Notified { .. } => now.check(port),
            Raised::Masked => {
                // Acquire: a close or bind that masked the port before our
                // mask read is visible (rare path: a masked port, or a
                // hypercall whose outcome is not known here).
                slot.load(Acquire).check(port)
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

    /// Masks `port` until [`Guest::eoi`] (a late EOI).
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
    /// [`Guest::mask_until_eoi`]: removes that reason (and only that one).
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
        cw.check(port)?;
        if !cw.has_reason(self.reason_bit(MaskReason::EoiPending)) {
            return Err(Error::NotEoiPending);
        }
        self.remove_reason(port, MaskReason::EoiPending)
    }

    /// The guest's unmask of its own mask bit: cleared here unless the port
    /// is pending, else by the hypervisor's unmask, which raises it (on the
    /// notify vCPU, which a rebind set before unmasking).
    fn unmask_port(&self, number: u32) -> Result<(), Error> {
        match self.v.abi().try_unmask(number)? {
            GuestUnmask::Done => Ok(()),
            GuestUnmask::Hypercall => self.v.calls().unmask(number),
        }
    }

    /// Raises a pending event of an unmasked port again, on its notify
    /// vCPU, as Linux's retrigger does: mask it, and unmask it (through the
    /// hypervisor when pending). A port masked already is left to whoever
    /// masked it, whose unmask raises it.
    fn reraise(&self, number: u32) -> Result<(), Error> {
        if self.v.abi().mask(number)? {
            return Ok(());
        }
        self.unmask_port(number)
    }

    /// Call with the lock held.
    fn add_reason(&self, port: Port, r: MaskReason) -> Result<(), Error> {
        let slot = self.slot(port.number)?;
        let bit = self.reason_bit(r);
        let (old, _) = self.update(slot, port, |cw| cw.with_reason(bit))?;
        if !old.is_masked() {
            self.v.abi().mask(port.number)?;
        }
        Ok(())
    }

    /// Call with the lock held.
    fn remove_reason(&self, port: Port, r: MaskReason) -> Result<(), Error> {
        let slot = self.slot(port.number)?;
        let bit = self.reason_bit(r);
        let (old, new) = self.update(slot, port, |cw| cw.without_reason(bit))?;
        if old.is_masked() && !new.is_masked() {
            // A late EOI masks in the control word only (the deliver side
            // sets it lock-free and leaves the ABI's bit alone): if the
            // ABI's bit is clear, an event skipped meanwhile is pending with
            // nothing raised, and the unmask below raises nothing.
            let abi_masked = self.v.abi().is_masked(port.number)?;
            self.unmask_port(port.number)?;
            // So raise it. The store-load fence pairs our word update with a
            // sender's pending write, as the unmask's does (C1).
            if !abi_masked && !self.weak.has(Weaken::NoEoiReraise) {
                store_load_fence();
                self.reraise(port.number)?;
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
    /// [`Guest::nr_vcpus`], [`Error::VcpuOffline`] if it is offline.
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
        cw.check(port)?;
        let from = cw.vcpu();
        if from == vcpu {
            return Ok(());
        }
        let masked = !self.weak.has(Weaken::RebindWithoutMask);
        if masked {
            self.add_reason(port, MaskReason::Rebind)?;
        }
        // As Linux: mask, EVTCHNOP_bind_vcpu, unmask. The hypervisor's
        // unmask then raises a pending event on the new vCPU.
        if let Err(e) = self.v.calls().bind_vcpu(port.number, vcpu) {
            if masked {
                self.remove_reason(port, MaskReason::Rebind)?;
            }
            return Err(e);
        }
        let unmask_first = masked && self.weak.has(Weaken::RebindUnmaskFirst);
        if unmask_first {
            self.remove_reason(port, MaskReason::Rebind)?;
        }
        self.update(slot, port, |cw| cw.with_vcpu(vcpu))?;
        if masked && !unmask_first {
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
    /// [`Guest::nr_vcpus`].
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
    /// [`Guest::nr_vcpus`].
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
    /// [`Guest::nr_vcpus`]; [`Error::LastOnlineVcpu`] if it is the only
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
            if !cw.is_bound() || cw.vcpu() != vcpu {
                continue;
            }
            let port = Port {
                number: n,
                generation: cw.generation(),
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
    /// are bound to now ([`Deliver::evacuate`]; Linux drains a dying CPU's
    /// queues the same way): a FIFO event still linked on one of its queues
    /// when its port moved is relinked only by a consumer of that queue,
    /// and an offline vCPU may never run another upcall. Call with the lock
    /// held: no port can be bound to `vcpu` meanwhile, so every port found
    /// is bound elsewhere (`Foreign`), closed, or masked (its unmask raises
    /// it).
    fn drain_offline(&self, vcpu: u32) {
        let _ = self.v.abi().evacuate(
            vcpu,
            |number| {
                let Ok(slot) = self.slot(number) else {
                    return Delivery::Skipped;
                };
                // Acquire: the binding the lock keeps current, as published.
                let cw = slot.load(Acquire);
                if !cw.is_bound() || cw.is_masked() {
                    Delivery::Skipped
                } else {
                    Delivery::Foreign(cw.vcpu())
                }
            },
            |v| self.v.notify().kick(v),
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
            if !cw.is_bound() {
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
            let v = cw.vcpu();
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
                generation: slot.load(Acquire).generation(),
            };
            self.rebind(&mut plane, port, to)?;
            moves.push(Move { port, from, to });
        }
        Ok(moves)
    }

    /// Makes `port` a late-EOI port (or not): from its next handler start
    /// on, the port stays masked (reason: EOI pending) until its owner calls
    /// [`Guest::eoi`] or [`Guest::lateeoi`] — Linux's lateeoi, the
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
        self.update(slot, port, |cw| cw.with_lateeoi(on))?;
        Ok(())
    }

    /// Ends a late EOI, saying whether the handler found work. A port whose
    /// handler found none more than once in a row stays masked, and this
    /// returns the delay in milliseconds (1, 2, 4, ... up to 1000) after
    /// which the owner calls [`Guest::eoi`]; otherwise the port is
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
        cw.check(port)?;
        if !cw.has_reason(self.reason_bit(MaskReason::EoiPending)) {
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
        slot.load(Acquire).check(port)?;
        self.v.calls().set_priority(port.number, priority)?;
        self.update(slot, port, |cw| cw.with_priority(priority))?;
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
        let (_, new) = self.update(slot, port, |cw| cw.closed(keep_closing))?;
        // Mask, so that a raise still in flight notifies nobody; the pending
        // bit it may leave is cleared by the hypervisor's close, or by the
        // next bind of the number.
        self.v.abi().mask(port.number)?;
        if new.is_free() {
            // The guest's port is closed whatever the hypervisor answers.
            // A port closing with its handler in flight is closed at the
            // hypervisor when that handler ends, so that the hypervisor
            // cannot hand the number out while the guest still holds it.
            let _ = self.v.calls().close(port.number);
        }
        // Relaxed: the lock orders this read after our own update.
        plane.bound_moved(Some(slot.load(Relaxed).vcpu()), None);
        Ok(())
    }

    /// A snapshot of port `number`.
    ///
    /// # Errors
    ///
    /// [`Error::PortOutOfRange`] if `number` is 0 or not below
    /// [`Guest::nr_ports`].
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
        let state = if cw.is_bound() {
            State::Bound
        } else if cw.is_closing() {
            State::Closing
        } else {
            State::Free
        };
        Ok(Status {
            state,
            vcpu: cw.vcpu(),
            priority: cw.priority(),
            masked_explicit: cw.has_reason(MaskReason::Explicit.bit()),
            masked_rebind: cw.has_reason(MaskReason::Rebind.bit()),
            masked_eoi: cw.has_reason(MaskReason::EoiPending.bit()),
            // A free port of a FIFO event-array page not mapped yet has no
            // pending bit anywhere.
            lateeoi: cw.is_lateeoi(),
            handled: self.handled.get(number as usize).map_or(0, |h| {
                // Relaxed: statistics.
                h.load(Relaxed)
            }),
            pending: match self.v.abi().is_pending(number) {
                Ok(p) => p,
                Err(_) if state == State::Free => false,
                Err(e) => return Err(e),
            },
            in_flight: cw.is_active(),
            generation: cw.generation(),
        })
    }

    /// Whether `vcpu` has an upcall pending. A vCPU halts only after this
    /// returned `false` (C2).
    ///
    /// # Errors
    ///
    /// [`Error::VcpuOutOfRange`] if `vcpu` is not below
    /// [`Guest::nr_vcpus`].
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
        self.v.abi().upcall_pending(vcpu)
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
    /// [`Guest::nr_vcpus`].
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
    pub fn vcpu(&self, vcpu: u32) -> Result<Vcpu<'_, V>, Error> {
        self.check_vcpu(vcpu)?;
        Ok(Vcpu {
            guest: self,
            id: vcpu,
            cursor: Default::default(),
        })
    }
}
