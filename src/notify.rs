//! The kick: how an embedder is told to wake a vCPU.

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
/// * *Holding the control-plane lock*: in [`Channels::bind`](crate::Guest::bind) (Xen's
///   spurious event, or a stale raise its unmask catches), and wherever a
///   port's last mask reason goes or a port moves: [`Channels::unmask`](crate::Guest::unmask),
///   [`Channels::eoi`](crate::Guest::eoi), [`Channels::lateeoi`](crate::Guest::lateeoi), [`Channels::set_affinity`](crate::Guest::set_affinity),
///   [`Channels::set_online`](crate::Guest::set_online) (its rebinds, and the hand-over of what is
///   still queued on the vCPU going offline) and [`Channels::rebalance`](crate::Guest::rebalance).
/// * *Without the lock*: in [`Channels::send`](crate::Guest::send); in an upcall
///   ([`Vcpu::upcall`](crate::Vcpu::upcall) and its bounded forms) raising a port it found bound
///   elsewhere on the vCPU it is bound to now; and at the end of a handler
///   run, re-raising an event another vCPU left to it, also when the
///   handler panics (the in-flight guard is released as it unwinds).
///
/// `close`, `mask`, `mask_until_eoi`, `set_lateeoi` and `set_priority`
/// never kick.
///
/// So `kick`:
///
/// * must not call a [`Channels`](crate::Channels) method that takes the lock: `bind`,
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
