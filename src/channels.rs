//! In-process: the guest side wired to the hypervisor side in one address
//! space. [`Channels`] is a [`Guest`] whose hypercalls are direct calls into
//! a [`Host`] over the same memory, so everything that checks `Channels`
//! (the loom models, the stress test, the fuzzers, the storm) runs the real
//! code of both sides.

use crate::abi::{PortOps, Raise, Raised};
use crate::guest::{Guest, Hypercalls, Hypervisor};
#[cfg(any(all(loom, feature = "loom"), evtchn_shuttle))]
use crate::weaken::Weaken;
use crate::weaken::Weakness;
use crate::{Error, Host, Notify};

/// An event-channel instance in one address space: the guest side
/// ([`Guest`]: bind, send, mask reasons, affinity, late EOI, policies, the
/// upcall) over a [`Host`] (the hypervisor side) that shares its memory.
///
/// All of `Guest`'s methods apply; see there.
pub type Channels<A, N = ()> = Guest<InProcess<A, N>>;

/// The in-process wiring of [`Channels`]: a [`Host`] serves as the guest's
/// hypervisor, its ABI as the guest's deliver half, its notifier as both
/// sides' kick.
#[derive(Debug)]
pub struct InProcess<A: PortOps, N: Notify> {
    host: Host<A, N>,
}

impl<R: Raise, N: Notify> Hypercalls for Host<R, N> {
    fn bind(&self, vcpu: u32) -> Result<u32, Error> {
        Host::bind(self, vcpu)
    }
    fn close(&self, port: u32) -> Result<(), Error> {
        Host::close(self, port)
    }
    fn send(&self, port: u32) -> Result<(), Error> {
        Host::send(self, port)
    }
    fn unmask(&self, port: u32) -> Result<(), Error> {
        Host::unmask(self, port)
    }
    fn bind_vcpu(&self, port: u32, vcpu: u32) -> Result<(), Error> {
        Host::bind_vcpu(self, port, vcpu)
    }
    fn set_priority(&self, port: u32, priority: u8) -> Result<(), Error> {
        Host::set_priority(self, port, priority)
    }
}

impl<A: PortOps, N: Notify> Hypervisor for InProcess<A, N> {
    type Abi = A;
    type Calls = Host<A, N>;
    type Notify = N;
    /// The raise half is the deliver half's own value: a port found bound
    /// elsewhere is linked (FIFO) or flagged (2-level) there directly.
    const RELINKS_LOCALLY: bool = true;
    #[inline(always)]
    fn abi(&self) -> &A {
        self.host.abi()
    }
    #[inline(always)]
    fn calls(&self) -> &Host<A, N> {
        &self.host
    }
    #[inline(always)]
    fn notify(&self) -> &N {
        self.host.notifier()
    }
    /// The host's raise, on the guest's binding: in one address space the
    /// host needs no state check of its own (the guest checked the port's
    /// life and checks it again after the raise), and the guest's binding
    /// equals the host's notify vCPU whenever the port is unmasked (a
    /// rebind changes both while the port is masked). One load of the
    /// control word, as before the two sides were split.
    #[inline(always)]
    fn send(&self, port: u32, binding: impl FnOnce() -> u32) -> Result<Raised, Error> {
        self.host.raise(port, binding)
    }
}

impl<A: PortOps, N: Notify> Guest<InProcess<A, N>> {
    /// An in-process instance over `abi`, kicking vCPUs through `notify`.
    /// Every port starts free and masked (the guest side masks them, as
    /// Linux does at boot); vCPUs are those of the ABI's memory (at most
    /// 65535).
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
        Self::build(
            InProcess {
                host: Host::new(abi, notify),
            },
            Weakness::default(),
        )
    }

    /// An instance with one protective step weakened (loom models and shuttle negative controls only).
    #[cfg(any(all(loom, feature = "loom"), evtchn_shuttle))]
    #[doc(hidden)]
    pub fn weakened(abi: A, notify: N, w: Weaken) -> Self {
        Self::build(
            InProcess {
                host: Host::weakened(abi, notify, w),
            },
            Weakness::new(w),
        )
    }

    /// The hypervisor side of this instance.
    #[must_use]
    pub fn host(&self) -> &Host<A, N> {
        &self.hypervisor().host
    }
}
