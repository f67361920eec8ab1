//! The ABI operations: the shape of Xen's `struct evtchn_port_ops`.
//!
//! The control plane ([`crate::Channels`]) drives an ABI only through this
//! trait and never knows which ABI it drives. An implementation has a *raise*
//! side (what a hypervisor runs over guest memory) and a *deliver* side (what
//! the receiving vCPU runs); a hypervisor uses the first alone, a guest
//! kernel the second alone.
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

/// One event-channel ABI.
///
/// Errors are those of bad indices only, and change nothing: a method taking
/// a port fails with [`Error::PortOutOfRange`] when the memory does not hold
/// it (2-level: beyond its pending and mask words, or 4096; FIFO: beyond
/// the event array, or on a page of it not mapped yet), and one taking a vCPU fails
/// with [`Error::VcpuOutOfRange`] when the memory holds no state for it. A
/// `target` closure naming a vCPU the memory does not hold is no error: the
/// event stays pending, visible to nobody.
pub trait PortOps: Sync {
    /// Deliver-side scan state of one vCPU (the round-robin position),
    /// owned by whoever runs that vCPU's upcalls.
    type Cursor: Default + Send;

    /// Number of ports this memory holds.
    #[must_use]
    fn nr_ports(&self) -> u32;
    /// Number of vCPUs this memory holds.
    #[must_use]
    fn nr_vcpus(&self) -> u32;

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

    /// Clears the pending state of `port` (used on close and bind).
    ///
    /// # Errors
    ///
    /// [`Error::PortOutOfRange`] if the memory does not hold `port`.
    fn clear_pending(&self, port: u32) -> Result<(), Error>;

    /// Clears the pending state of `port`; returns whether it was pending.
    /// The deliver side calls it, holding the port's in-flight guard, just
    /// before the handler runs; Acquire, so the handler sees what the sender
    /// wrote before its `set_pending`.
    ///
    /// # Errors
    ///
    /// [`Error::PortOutOfRange`] if the memory does not hold `port`.
    #[must_use = "`true`: the event is consumed, and its handler must run"]
    fn test_and_clear_pending(&self, port: u32) -> Result<bool, Error>;

    /// Makes `port` usable (the FIFO ABI maps the event array page that
    /// holds it); called by bind before the port is handed out.
    ///
    /// # Errors
    ///
    /// [`Error::PortOutOfRange`] if the memory cannot hold `port` (the FIFO
    /// event array cannot grow to it). The default accepts every port.
    fn prepare(&self, port: u32) -> Result<(), Error> {
        let _ = port;
        Ok(())
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

    /// Whether `port` is pending.
    ///
    /// # Errors
    ///
    /// [`Error::PortOutOfRange`] if the memory does not hold `port`.
    #[must_use = "a query; it changes nothing"]
    fn is_pending(&self, port: u32) -> Result<bool, Error>;

    /// Masks `port`: later raises leave it pending but notify nobody.
    ///
    /// # Errors
    ///
    /// [`Error::PortOutOfRange`] if the memory does not hold `port`.
    fn mask(&self, port: u32) -> Result<(), Error>;

    /// Unmasks `port`; if it was masked and is pending, raises it on the
    /// vCPU `target` names (read after the mask is cleared).
    ///
    /// # Errors
    ///
    /// [`Error::PortOutOfRange`] if the memory does not hold `port`.
    #[must_use = "the `Kick` names a vCPU to notify (C2)"]
    fn unmask(&self, port: u32, target: impl FnOnce() -> u32) -> Result<Kick, Error>;

    /// Whether `port` is masked.
    ///
    /// # Errors
    ///
    /// [`Error::PortOutOfRange`] if the memory does not hold `port`.
    #[must_use = "a query; it changes nothing"]
    fn is_masked(&self, port: u32) -> Result<bool, Error>;

    /// Makes a pending, unmasked `port` visible again to `target`, without
    /// touching its pending or mask state (used when a vCPU hands over an
    /// event it could not run because the port was in flight elsewhere).
    ///
    /// # Errors
    ///
    /// [`Error::PortOutOfRange`] if the memory does not hold `port`.
    #[must_use = "the `Kick` names a vCPU to notify (C2)"]
    fn reraise(&self, port: u32, target: impl FnOnce() -> u32) -> Result<Kick, Error>;

    /// Whether `vcpu` has an upcall pending. A vCPU may halt only after this
    /// returned `false`; a raise that sets it reports the vCPU to kick.
    ///
    /// # Errors
    ///
    /// [`Error::VcpuOutOfRange`] if the memory holds no state for `vcpu`.
    #[must_use = "a vCPU may halt only after this returned `false`"]
    fn upcall_pending(&self, vcpu: u32) -> Result<bool, Error>;

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

    /// [`PortOps::scan`] with a budget: `more` is asked before each port is
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
