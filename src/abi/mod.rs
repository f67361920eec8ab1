//! The ABI operations, in two halves: the shape of Xen's
//! `struct evtchn_port_ops` ([`Raise`]) and of a guest's upcall
//! ([`Deliver`]), with what both read ([`Ports`]).
//!
//! A hypervisor drives the raise half alone over a guest's memory
//! ([`crate::Host`]); a guest kernel drives the deliver half alone over its
//! own ([`crate::Guest`]); in-process ([`crate::Channels`]) one value does
//! both ([`PortOps`]). Neither side knows which ABI it drives. The
//! implementations are the 2-level ABI ([`crate::TwoLevel`]) and the FIFO
//! ABI ([`crate::Fifo`]).
//!
//! Ports and vCPUs are plain indices here. The raise side checks both
//! against the sizes of the memory it was given and returns a typed error
//! otherwise; it never trusts a word of that memory for indexing.

use crate::Error;

#[cfg(feature = "alloc")]
pub(crate) mod fifo;
pub(crate) mod twolevel;

/// A vCPU the caller must notify (kick): an upcall became pending on it.
pub type Kick = Option<u32>;

/// What a raise did.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Raised {
    /// The port was already pending: the send coalesced with an earlier one,
    /// whose raiser notifies (edge semantics).
    Coalesced,
    /// The port became pending but is masked: its unmask will raise it.
    Masked,
    /// The port became pending and was made visible to `vcpu`; `kick` says
    /// whether the vCPU's upcall flag went 0 → 1 (notify it then).
    Notified {
        /// The vCPU the port was raised on.
        vcpu: u32,
        /// Whether that vCPU must be kicked.
        kick: bool,
    },
}

impl Raised {
    /// The vCPU to kick, if any.
    #[must_use = "the vCPU named must be kicked (C2)"]
    pub fn kick(self) -> Kick {
        match self {
            Raised::Notified { vcpu, kick: true } => Some(vcpu),
            _ => None,
        }
    }
}

/// What the control plane did with a port the deliver side offered it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Delivery {
    /// Its handler ran.
    Handled,
    /// Not run, and nothing for the ABI to do: not pending, masked (the
    /// unmask re-raises), closed, or in flight elsewhere (the runner
    /// re-raises when it ends).
    Skipped,
    /// Not run: the port is bound to this other vCPU now. The ABI raises
    /// the event there if it is still pending and unmasked: FIFO took it
    /// off this vCPU's queue, and on 2-level a raiser that had not learned
    /// of the move may have raised it here after the rebind's unmask.
    Foreign(u32),
}

/// What a guest's own unmask did ([`Deliver::try_unmask`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[must_use = "`Hypercall`: the port stays masked until the hypervisor's unmask"]
pub enum GuestUnmask {
    /// The port is unmasked, and nothing was pending meanwhile.
    Done,
    /// The port is pending and still masked: the guest must ask the
    /// hypervisor to unmask it (`EVTCHNOP_unmask`, [`Raise::unmask`]), which
    /// raises it.
    Hypercall,
}

/// What both halves of an ABI read: sizes, and a port's pending and mask
/// state.
///
/// Errors are those of bad indices only, and change nothing: a method taking
/// a port fails with [`Error::PortOutOfRange`] when the memory does not hold
/// it (2-level: beyond its pending and mask words, or 4096; FIFO: beyond the
/// event array, or on a page of it not registered yet), and one taking a
/// vCPU fails with [`Error::VcpuOutOfRange`] when the memory holds no state
/// for it.
///
/// The status reads (`is_pending`, `is_masked`, `upcall_pending`) acquire:
/// one that observes a send, a mask or a raise also observes what its
/// writer wrote before it (a guest that polls a port and then reads its
/// ring, without an upcall).
pub trait Ports: Sync {
    /// Number of ports this memory holds.
    #[must_use]
    fn nr_ports(&self) -> u32;
    /// Number of vCPUs this memory holds.
    #[must_use]
    fn nr_vcpus(&self) -> u32;

    /// Whether `port` is pending.
    ///
    /// # Errors
    ///
    /// [`Error::PortOutOfRange`] if the memory does not hold `port`.
    #[must_use = "a query; it changes nothing"]
    fn is_pending(&self, port: u32) -> Result<bool, Error>;

    /// Whether `port` is masked.
    ///
    /// # Errors
    ///
    /// [`Error::PortOutOfRange`] if the memory does not hold `port`.
    #[must_use = "a query; it changes nothing"]
    fn is_masked(&self, port: u32) -> Result<bool, Error>;

    /// Clears the pending state of `port`: the hypervisor's close (Xen's
    /// `evtchn_port_clear_pending`), and a guest that binds a port number
    /// again.
    ///
    /// # Errors
    ///
    /// [`Error::PortOutOfRange`] if the memory does not hold `port`.
    fn clear_pending(&self, port: u32) -> Result<(), Error>;

    /// Whether `vcpu` has an upcall pending. A vCPU may halt only after this
    /// returned `false`; a raise that sets it reports the vCPU to kick.
    ///
    /// # Errors
    ///
    /// [`Error::VcpuOutOfRange`] if the memory holds no state for `vcpu`.
    #[must_use = "a vCPU may halt only after this returned `false`"]
    fn upcall_pending(&self, vcpu: u32) -> Result<bool, Error>;
}

/// The raise half: what a hypervisor runs over a guest's memory.
///
/// It never writes the guest's mask (the 2-level `evtchn_mask` bit, the
/// FIFO `MASKED` bit) except in [`Raise::unmask`], the guest's own request.
/// A `target` closure naming a vCPU the memory does not hold is no error:
/// the event stays pending, visible to nobody.
pub trait Raise: Ports {
    /// Raises `port`: marks it pending and, if it is unmasked and was not
    /// already pending, makes it visible to the vCPU that `target` names,
    /// which is read only once the raise needs it (after the pending bit is
    /// set and the mask read), so that a concurrent rebind is seen.
    ///
    /// Returns what the raise did; [`Raised::kick`] names the vCPU to kick.
    ///
    /// # Errors
    ///
    /// [`Error::PortOutOfRange`] if the memory does not hold `port`.
    #[must_use = "`Raised::kick` names a vCPU to notify (C2)"]
    fn set_pending(&self, port: u32, target: impl FnOnce() -> u32) -> Result<Raised, Error>;

    /// `EVTCHNOP_unmask`: clears the mask of `port` and, if the port is
    /// pending, raises it on the vCPU `target` names (read after the mask
    /// is cleared). 2-level raises only when this call cleared the mask, as
    /// Xen's `evtchn_2l_unmask`; FIFO whenever the port is pending and not
    /// linked, as Xen's `evtchn_fifo_unmask`.
    ///
    /// # Errors
    ///
    /// [`Error::PortOutOfRange`] if the memory does not hold `port`.
    #[must_use = "the `Kick` names a vCPU to notify (C2)"]
    fn unmask(&self, port: u32, target: impl FnOnce() -> u32) -> Result<Kick, Error>;

    /// Makes a pending, unmasked `port` visible again to `target`, without
    /// touching its pending or mask state: a hypervisor's `bind_vcpu` of a
    /// pending port (2-level: its selector bit and upcall flag on the new
    /// vCPU; FIFO: linked there, unless it is still linked on a queue).
    ///
    /// # Errors
    ///
    /// [`Error::PortOutOfRange`] if the memory does not hold `port`.
    #[must_use = "the `Kick` names a vCPU to notify (C2)"]
    fn reraise(&self, port: u32, target: impl FnOnce() -> u32) -> Result<Kick, Error>;

    /// Makes `port` usable (the FIFO ABI registers the event array page
    /// that holds it); called by bind before the port is handed out.
    ///
    /// # Errors
    ///
    /// [`Error::PortOutOfRange`] if the memory cannot hold `port` (the FIFO
    /// event array cannot grow to it). The default accepts every port.
    fn prepare(&self, port: u32) -> Result<(), Error> {
        let _ = port;
        Ok(())
    }

    /// Whether the ABI has priorities (FIFO); Xen's `EVTCHNOP_set_priority`
    /// is `ENOSYS` without them. The default says no.
    #[must_use]
    fn has_priorities(&self) -> bool {
        false
    }

    /// Sets the priority of `port` (0 highest ..= 15). The 2-level ABI has
    /// no priorities and accepts any value in range.
    ///
    /// # Errors
    ///
    /// [`Error::PriorityOutOfRange`] if `priority` is above 15;
    /// [`Error::PortOutOfRange`] if the memory does not hold `port` (the
    /// default, which records nothing, does not check it).
    fn set_priority(&self, port: u32, priority: u8) -> Result<(), Error> {
        let _ = port;
        if priority < 16 {
            Ok(())
        } else {
            Err(Error::PriorityOutOfRange)
        }
    }
}

/// The deliver half: what a guest runs over its own memory (its upcall, and
/// the mask bits it owns).
pub trait Deliver: Ports {
    /// Scan state of one vCPU (the round-robin position), owned by whoever
    /// runs that vCPU's upcalls.
    type Cursor: Default + Send;

    /// Masks `port` (the guest's own mask bit): later raises leave it
    /// pending but notify nobody. Returns whether it was masked already.
    ///
    /// # Errors
    ///
    /// [`Error::PortOutOfRange`] if the memory does not hold `port`.
    fn mask(&self, port: u32) -> Result<bool, Error>;

    /// The guest's own unmask: clears the mask of `port` unless the port is
    /// pending, in which case the mask stays and the hypervisor's unmask
    /// ([`Raise::unmask`], `EVTCHNOP_unmask`) must raise it. 2-level: a
    /// port raised between the check and the clear is masked again and
    /// reported as [`GuestUnmask::Hypercall`] (Xen raises only on the mask's
    /// 1 → 0); FIFO: one compare-exchange (Linux's conditional unmask).
    ///
    /// # Errors
    ///
    /// [`Error::PortOutOfRange`] if the memory does not hold `port`.
    fn try_unmask(&self, port: u32) -> Result<GuestUnmask, Error>;

    /// Clears the pending state of `port`; returns whether it was pending.
    /// The deliverer calls it, holding the port's in-flight guard, just
    /// before the handler runs; Acquire, so the handler sees what the sender
    /// wrote before its `set_pending`.
    ///
    /// # Errors
    ///
    /// [`Error::PortOutOfRange`] if the memory does not hold `port`.
    #[must_use = "`true`: the event is consumed, and its handler must run"]
    fn test_and_clear_pending(&self, port: u32) -> Result<bool, Error>;

    /// Clears the upcall-pending flag of `vcpu` and calls `each` for every
    /// port that may be pending and unmasked for it, in the ABI's order
    /// (round-robin for 2-level, strict priority for FIFO), repeating while
    /// new work was flagged meanwhile. `each` decides (it checks the
    /// binding and takes the in-flight guard) and says what it did; `kick`
    /// receives the vCPUs an ABI's own re-raise made pending.
    ///
    /// # Errors
    ///
    /// [`Error::VcpuOutOfRange`] if the memory holds no state for `vcpu`;
    /// nothing is scanned then.
    fn scan(
        &self,
        vcpu: u32,
        cursor: &mut Self::Cursor,
        each: impl FnMut(u32) -> Delivery,
        kick: impl FnMut(u32),
    ) -> Result<(), Error> {
        self.scan_bounded(vcpu, cursor, || true, each, kick)
    }

    /// Hands what is still queued on `vcpu` (going offline; no port is
    /// bound to it any more) to the vCPUs `each` names: a pass of a
    /// deliverer of `vcpu` in which `each` answers `Foreign(v)` for a port
    /// bound to `v`, or `Skipped` for a closed or masked one. The FIFO ABI
    /// takes every event off `vcpu`'s queues and links it on `v`; the
    /// 2-level ABI queues nothing on a vCPU (a rebind's unmask raised a
    /// pending port on its new vCPU) and by default does nothing.
    ///
    /// # Errors
    ///
    /// [`Error::VcpuOutOfRange`] if the memory holds no state for `vcpu`
    /// (the default does not check it).
    fn evacuate(
        &self,
        vcpu: u32,
        each: impl FnMut(u32) -> Delivery,
        kick: impl FnMut(u32),
    ) -> Result<(), Error> {
        let _ = (vcpu, each, kick);
        Ok(())
    }

    /// [`Deliver::scan`] with a budget: `more` is asked before each port is
    /// taken, and once it says `false` the scan stops, leaves every port it
    /// did not offer where the next scan finds it (the 2-level selector
    /// bits, the FIFO queues), and sets the vCPU's upcall-pending flag, so
    /// that a vCPU which halts only after seeing no upcall pending runs
    /// another upcall for the rest. No port is lost; the cursor resumes at
    /// the first port not offered. (The FIFO ABI also bounds an upcall by
    /// itself, at twice the ports it can hold, against a guest's cycles.)
    ///
    /// # Errors
    ///
    /// [`Error::VcpuOutOfRange`] if the memory holds no state for `vcpu`;
    /// nothing is scanned then.
    fn scan_bounded(
        &self,
        vcpu: u32,
        cursor: &mut Self::Cursor,
        more: impl FnMut() -> bool,
        each: impl FnMut(u32) -> Delivery,
        kick: impl FnMut(u32),
    ) -> Result<(), Error>;
}

/// Both halves over one memory: an in-process instance
/// ([`crate::Channels`]) raises and delivers through one value.
pub trait PortOps: Raise + Deliver {}

impl<T: Raise + Deliver> PortOps for T {}
