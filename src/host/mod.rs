//! The hypervisor side: a domain's port table with Xen's semantics, over the
//! raise half of an ABI ([`Raise`]).
//!
//! The guest owns its mask bits (the 2-level `evtchn_mask`, the FIFO
//! `MASKED` bit). The host reads them when it raises and writes them only
//! in [`Host::unmask`], which the guest asks for (`EVTCHNOP_unmask`). It
//! keeps, per port, only what Xen keeps in `struct evtchn`: the state, the
//! notify vCPU and the priority. [`Host::bind_vcpu`] changes the notify vCPU
//! alone and, as QEMU's emulation does, raises a pending, unmasked event
//! again on the new vCPU; [`Host::close`] clears the pending state (Xen's
//! `evtchn_free`) and resets the notify vCPU to 0; [`Host::bind`] touches
//! neither pending nor mask. Nothing is written to the guest's memory at
//! start-up.
//!
//! Locking: bind, close, bind_vcpu and set_priority serialise on the host's
//! lock (Xen's `event_lock`); send and unmask never take it.

use alloc::boxed::Box;

use crate::abi::{Raise, Raised};
use crate::sync::{AtomicU32, AtomicU64, Lock, Ordering::*};
use crate::weaken::{Weaken, Weakness};
use crate::{Error, Notify};

const STATE: u64 = 0b1;
const BOUND: u64 = 1;
const PRIORITY_SHIFT: u32 = 8;
const PRIORITY: u64 = 0xf << PRIORITY_SHIFT;
const VCPU_SHIFT: u32 = 16;
const VCPU: u64 = 0xffff << VCPU_SHIFT;

/// Xen's default FIFO priority (`EVTCHN_FIFO_PRIORITY_DEFAULT`).
pub(crate) const DEFAULT_PRIORITY: u8 = 7;

#[inline(always)]
fn vcpu_of(w: u64) -> u32 {
    // 16 bits: always fits.
    u32::try_from((w & VCPU) >> VCPU_SHIFT).unwrap_or(0)
}

#[inline(always)]
fn bound_word(vcpu: u32, priority: u8) -> u64 {
    BOUND | (u64::from(vcpu) << VCPU_SHIFT) | (u64::from(priority) << PRIORITY_SHIFT)
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
    lock: Lock<()>,
    /// No port below this one is free: bind starts its search here (a hint
    /// only; bind checks every state it passes).
    free_hint: AtomicU32,
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
            lock: Lock::new(()),
            free_hint: AtomicU32::new(1),
            weak,
            #[cfg(any(all(loom, feature = "loom"), evtchn_shuttle))]
            weak_mask: None,
        }
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
        let _guard = self.lock.lock();
        // Relaxed: a hint; the search reads every state under the lock.
        let hint = self.free_hint.load(Relaxed);
        let start = (hint as usize).clamp(1, self.table.len().max(1));
        let order = (start..self.table.len()).chain(1..start);
        let mut found = None;
        for n in order {
            let Some(slot) = self.table.get(n) else { break };
            // Relaxed: the lock orders every state change.
            if slot.load(Relaxed) & STATE != BOUND {
                found = u32::try_from(n).ok().map(|n| (n, slot));
                break;
            }
        }
        let (port, slot) = found.ok_or(Error::NoFreePort)?;
        self.abi.prepare(port).map_err(|_| Error::NoFreePort)?;
        self.abi.set_priority(port, DEFAULT_PRIORITY)?;
        // Release: a sender that finds the port bound (Acquire) sees the
        // ABI's preparation (a FIFO page registered) before it raises.
        slot.store(bound_word(vcpu, DEFAULT_PRIORITY), Release);
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
    /// [`Host::nr_ports`]; [`Error::NotBound`] if it is free. Both change
    /// nothing.
    #[inline]
    pub fn send(&self, port: u32) -> Result<(), Error> {
        let slot = self.slot(port)?;
        // Acquire: pairs with bind's Release.
        if slot.load(Acquire) & STATE != BOUND {
            return Err(Error::NotBound);
        }
        // SeqCst: read after the pending write and the mask read (see
        // `Raise::set_pending`), so that a bind_vcpu's new vCPU is seen by
        // a raise its re-raise could miss.
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

    /// `EVTCHNOP_unmask`, the guest's request: clears the guest's mask of
    /// `port` and, if the port is pending, raises it on its notify vCPU
    /// ([`Raise::unmask`]: 2-level when this call cleared the mask, FIFO
    /// whenever it is pending and not linked). As Xen, any port in range
    /// may be unmasked, bound or not.
    ///
    /// # Errors
    ///
    /// [`Error::PortOutOfRange`] if `port` is 0 or not below
    /// [`Host::nr_ports`] (or the ABI does not hold it); nothing changes.
    pub fn unmask(&self, port: u32) -> Result<(), Error> {
        let slot = self.slot(port)?;
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
    /// [`Error::VcpuOutOfRange`]; each changes nothing.
    pub fn bind_vcpu(&self, port: u32, vcpu: u32) -> Result<(), Error> {
        let slot = self.slot(port)?;
        self.check_vcpu(vcpu)?;
        let _guard = self.lock.lock();
        // Relaxed: the lock orders every state change.
        let w = slot.load(Relaxed);
        if w & STATE != BOUND {
            return Err(Error::NotBound);
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
    /// [`Error::PortOutOfRange`], [`Error::NotBound`] (free already); each
    /// changes nothing.
    pub fn close(&self, port: u32) -> Result<(), Error> {
        let slot = self.slot(port)?;
        let _guard = self.lock.lock();
        // Relaxed: the lock orders every state change.
        if slot.load(Relaxed) & STATE != BOUND {
            return Err(Error::NotBound);
        }
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
        Ok(HostStatus {
            bound,
            vcpu: vcpu_of(w),
            // 4 bits: always fits.
            priority: u8::try_from((w & PRIORITY) >> PRIORITY_SHIFT).unwrap_or(0),
            pending: self.abi.is_pending(port).unwrap_or(false),
            masked: self.abi.is_masked(port).unwrap_or(false),
        })
    }
}
