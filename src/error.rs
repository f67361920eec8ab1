//! Typed errors. Every fallible operation returns one of these and changes
//! nothing when it does (contract C8).

use core::fmt;

/// Why an operation was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Error {
    /// The port number is not below the number of ports, or is port 0,
    /// which Xen reserves.
    PortOutOfRange,
    /// The vCPU index is not below the number of vCPUs.
    VcpuOutOfRange,
    /// The port is not bound: never bound, closed, or being closed.
    NotBound,
    /// The port handle belongs to an earlier life of this port number,
    /// which was closed (and possibly bound again since).
    Stale,
    /// Every port is in use (or still finishing an in-flight handler).
    NoFreePort,
    /// The priority is not in `0..=15`.
    PriorityOutOfRange,
    /// `eoi` on a port that is not waiting for one.
    NotEoiPending,
    /// The vCPU is offline: no port may be bound to it.
    VcpuOffline,
    /// Taking this vCPU offline would leave no vCPU online.
    LastOnlineVcpu,
    /// The operation does not apply to the port's kind or the VIRQ's (a
    /// send on a VIRQ port, `bind_vcpu` of an IPI, a global VIRQ bound on
    /// a vCPU other than 0).
    WrongKind,
    /// The VIRQ (of that vCPU) or the PIRQ already has a port.
    AlreadyBound,
    /// The VIRQ number is not below `NR_VIRQS`.
    VirqOutOfRange,
    /// No domain has this id ([`crate::Domains`]).
    NoSuchDomain,
    /// A domain with this id exists already, or the id is reserved
    /// (`DOMID_FIRST_RESERVED` and above).
    DomainExists,
    /// The calling domain may not act on another domain (it is not
    /// privileged), or on this PIRQ.
    NotPermitted,
}

impl Error {
    /// The error number Xen's `HYPERVISOR_event_channel_op` returns for it
    /// (positive; the hypercall returns its negation), so that a
    /// hypervisor can hand a refusal to its guest unchanged. The
    /// guest-side errors that have no hypercall map to `EINVAL`.
    #[must_use]
    pub fn xen_errno(self) -> i32 {
        use crate::xen::evtchnop::errno::*;
        match self {
            Error::VcpuOutOfRange | Error::VcpuOffline => ENOENT,
            Error::NoFreePort => ENOSPC,
            Error::AlreadyBound | Error::DomainExists => EEXIST,
            Error::NoSuchDomain => ESRCH,
            Error::NotPermitted => EPERM,
            Error::LastOnlineVcpu => EBUSY,
            Error::PortOutOfRange
            | Error::NotBound
            | Error::Stale
            | Error::PriorityOutOfRange
            | Error::NotEoiPending
            | Error::WrongKind
            | Error::VirqOutOfRange => EINVAL,
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Error::PortOutOfRange => "port out of range",
            Error::VcpuOutOfRange => "vCPU out of range",
            Error::NotBound => "port not bound",
            Error::Stale => "port handle from a closed life of the port",
            Error::NoFreePort => "no free port",
            Error::PriorityOutOfRange => "priority out of range",
            Error::NotEoiPending => "port is not waiting for an EOI",
            Error::VcpuOffline => "vCPU offline",
            Error::LastOnlineVcpu => "the last online vCPU cannot go offline",
            Error::WrongKind => "the operation does not apply to this kind of port or VIRQ",
            Error::AlreadyBound => "the VIRQ or PIRQ already has a port",
            Error::VirqOutOfRange => "VIRQ out of range",
            Error::NoSuchDomain => "no such domain",
            Error::DomainExists => "the domain id is taken or reserved",
            Error::NotPermitted => "not permitted",
        })
    }
}

#[cfg(feature = "std")]
impl std::error::Error for Error {}
