//! Deliberate weakenings of protective steps, for the negative loom models.
//!
//! Each protective step of the core (a mask around a rebind, the in-flight
//! guard, an Acquire/Release pair, the store-load fence, ...) can be switched
//! off one at a time under `cfg(loom)` so that the model suite can show that
//! loom catches the weakened variant (and under `cfg(evtchn_shuttle)`, for
//! the randomized schedules' negative control). Natively [`Weakness`] is a zero-sized
//! type whose [`Weakness::has`] is a constant `false`: the checks compile
//! away and the API to set a weakness does not exist.

use crate::sync::Ordering;

/// One protective step to remove. Exists only for the negative loom models
/// and the shuttle negative controls.
#[doc(hidden)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Weaken {
    /// `set_affinity` changes the binding without the mask → unmask that
    /// re-raises a pending event on the new vCPU.
    RebindWithoutMask,
    /// The upcall runs a handler without taking the per-port in-flight guard.
    NoInFlightGuard,
    /// A vCPU that finds the port in flight elsewhere skips it without
    /// leaving a replay request for the running vCPU.
    NoReplay,
    /// The upcall clears `evtchn_upcall_pending` *after* exchanging the
    /// selector instead of before.
    ClearUpcallAfterSelector,
    /// The store-load fence of the send/unmask Dekker pattern is removed.
    NoStoreLoadFence,
    /// The pending bit is set and consumed with `Relaxed` instead of
    /// Release/Acquire: the handler need not observe what the sender wrote.
    RelaxedPending,
    /// The selector bit is set and exchanged with `Relaxed` instead of
    /// Release/Acquire: the raiser need not see the cleared upcall flag.
    RelaxedSelector,
    /// Mask reasons collapse into one bit: any unmask clears every reason.
    SingleMaskReason,
    /// The hypervisor's close frees a port without clearing its pending
    /// state (Xen's `evtchn_free` clears it): the number's next life
    /// inherits the event.
    NoClearOnClose,
    /// `close` frees a port at once even while its handler is in flight.
    CloseIgnoresInFlight,
    /// Removing the last mask reason unmasks the ABI's bit but does not
    /// re-raise an event skipped while a late EOI (which masks in the
    /// control word only) was outstanding.
    NoEoiReraise,
    /// FIFO: moving an event does not invalidate the old queue's tail
    /// when it names the event (Xen's `lastq` fix).
    NoTailInvalidation,
    /// FIFO: the guest's conditional unmask clears MASKED even when the
    /// port is pending, instead of asking the hypervisor to link it.
    GuestUnmaskIgnoresPending,
    /// A vCPU that finds a pending event of a port bound elsewhere does not
    /// raise it on the vCPU it is bound to now (FIFO: does not link it
    /// there after taking it off its own queue; 2-level: does not set the
    /// selector bit and upcall flag of that vCPU).
    NoForeignRelink,
    /// 2-level: an upcall out of budget sets its upcall flag but does not
    /// give back the selector bits its pass took.
    BudgetDropsSelector,
    /// An upcall out of budget leaves the ports it did not offer where the
    /// next scan finds them but does not set its own upcall flag.
    BudgetNoUpcallFlag,
    /// FIFO: an upcall out of budget keeps the queues it took in its
    /// cursor instead of handing them back to the control block.
    BudgetNoHandBack,
    /// A late-EOI claim that finds the event gone (another deliverer ran
    /// it) keeps the EOI-pending mask reason it added instead of giving it
    /// back: the port stays masked with no EOI ever coming.
    NoStaleEoiUndo,
    /// `set_online(v, false)` moves the ports but does not hand what is
    /// still queued on `v` to their new vCPUs.
    OfflineNoDrain,
    /// The in-flight guard is released after the handler returns but not
    /// when the handler panics (the release is not in a `Drop`).
    GuardNotUnwindSafe,
    /// The guard's release stores the word its claim installed, without
    /// `ACTIVE`, instead of compare-exchanging from it: what was written
    /// while the handler ran (a replay request, a close) is overwritten.
    ReleaseIgnoresChanges,
    /// An upcall whose handler panics does not give back what its scan had
    /// taken (2-level selector bits, FIFO queues) nor set its upcall flag.
    ScanNotUnwindSafe,
    /// FIFO: the queue lock (a spin lock) is taken and given back with
    /// `Relaxed` instead of Acquire/Release: two raisers' critical sections
    /// on one queue's tail are not ordered.
    RelaxedQueueLock,
    /// The hypervisor side: `Host::bind_vcpu` changes the notify vCPU but
    /// does not raise a pending, unmasked event again on the new vCPU.
    HostBindVcpuNoReraise,
    /// The hypervisor side: `Host::bind_vcpu` masks the port, changes the
    /// notify vCPU and unmasks it (what the single control plane did before
    /// the roles were split), clearing a mask the guest had set itself.
    HostBindVcpuMasks,
    /// The guest side's rebind removes its mask reason (unmasks) after the
    /// hypervisor's `bind_vcpu` but before its own binding is updated.
    RebindUnmaskFirst,
    /// The hypervisor side: `raise_virq` looks its port up under the lock
    /// but raises it after letting the lock go, so a close can free the
    /// port in between.
    VirqRaiseUnlocked,
    /// Interdomain: a send raises the peer without holding the sender
    /// domain's lock, so the peer's close can free (and a bind reuse) the
    /// number in between.
    InterdomainSendUnlocked,
    /// Interdomain, Xen's bind: the new local port is not set pending (the
    /// conservative event that covers a send dropped while the remote end
    /// was unbound).
    NoConservativeEvent,
    /// Interdomain, the atomic-affinity bind: the bind ignores the remote
    /// end's mark of a dropped send instead of replaying it.
    BindIgnoresDropped,
    /// A send on an unbound port drops the event without marking the port.
    UnboundSendNoMark,
    /// A send on an unbound port that is marked already drops the event
    /// without the lock: nothing orders it before the bind that connects
    /// the port.
    MarkedSendLockFree,
}

/// The weakness a core object was built with; zero-sized natively.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Weakness(#[cfg(any(all(loom, feature = "loom"), evtchn_shuttle))] Option<Weaken>);

impl Weakness {
    #[cfg(any(all(loom, feature = "loom"), evtchn_shuttle))]
    pub(crate) fn new(w: Weaken) -> Self {
        Weakness(Some(w))
    }

    /// Whether step `w` is weakened; a constant `false` natively.
    #[inline(always)]
    pub(crate) fn has(self, w: Weaken) -> bool {
        #[cfg(any(all(loom, feature = "loom"), evtchn_shuttle))]
        {
            self.0 == Some(w)
        }
        #[cfg(not(any(all(loom, feature = "loom"), evtchn_shuttle)))]
        {
            let _ = w;
            false
        }
    }

    /// `strong`, or `Relaxed` when step `w` is weakened.
    #[inline(always)]
    pub(crate) fn ord(self, w: Weaken, strong: Ordering) -> Ordering {
        if self.has(w) {
            Ordering::Relaxed
        } else {
            strong
        }
    }
}
