//! The event-channel hypercall's argument structures
//! (`HYPERVISOR_event_channel_op(cmd, arg)`, `xen/event_channel.h`), the
//! command numbers, the port states `EVTCHNOP_status` reports, the VIRQ
//! numbers and the error numbers Xen returns (`xen/errno.h`).
//!
//! Unlike the shared pages, these are not memory another party writes
//! while it is read: a hypervisor copies the argument in from the guest,
//! acts, and copies the `OUT` fields back; a guest fills one in and makes
//! the call. So they are plain `#[repr(C)]` integers, `Copy`, with Xen's
//! sizes and offsets (pinned here and compared with the real headers by
//! the `xen_layout` test). `Default` is all zero.

/// `domid_t`.
pub type DomId = u16;

/// `DOMID_SELF`: the calling domain.
pub const DOMID_SELF: DomId = 0x7ff0;
/// `DOMID_FIRST_RESERVED`: domain identifiers from here up are special.
pub const DOMID_FIRST_RESERVED: DomId = 0x7ff0;

/// `EVTCHNOP_*`: the command numbers of `HYPERVISOR_event_channel_op`.
pub mod cmd {
    /// `EVTCHNOP_bind_interdomain`.
    pub const BIND_INTERDOMAIN: u32 = 0;
    /// `EVTCHNOP_bind_virq`.
    pub const BIND_VIRQ: u32 = 1;
    /// `EVTCHNOP_bind_pirq`.
    pub const BIND_PIRQ: u32 = 2;
    /// `EVTCHNOP_close`.
    pub const CLOSE: u32 = 3;
    /// `EVTCHNOP_send`.
    pub const SEND: u32 = 4;
    /// `EVTCHNOP_status`.
    pub const STATUS: u32 = 5;
    /// `EVTCHNOP_alloc_unbound`.
    pub const ALLOC_UNBOUND: u32 = 6;
    /// `EVTCHNOP_bind_ipi`.
    pub const BIND_IPI: u32 = 7;
    /// `EVTCHNOP_bind_vcpu`.
    pub const BIND_VCPU: u32 = 8;
    /// `EVTCHNOP_unmask`.
    pub const UNMASK: u32 = 9;
    /// `EVTCHNOP_reset`.
    pub const RESET: u32 = 10;
    /// `EVTCHNOP_init_control`.
    pub const INIT_CONTROL: u32 = 11;
    /// `EVTCHNOP_expand_array`.
    pub const EXPAND_ARRAY: u32 = 12;
    /// `EVTCHNOP_set_priority`.
    pub const SET_PRIORITY: u32 = 13;
    /// `EVTCHNOP_reset_cont`: continues a preempted reset. Xen serves it
    /// to guests, but its public header defines it only for Xen itself
    /// (`__XEN__`), so the layout test does not compare it.
    pub const RESET_CONT: u32 = 14;
}

/// `EVTCHNSTAT_*`: a port's state as `EVTCHNOP_status` reports it.
pub mod stat {
    /// `EVTCHNSTAT_closed`: not in use.
    pub const CLOSED: u32 = 0;
    /// `EVTCHNSTAT_unbound`: waiting for a remote domain to connect.
    pub const UNBOUND: u32 = 1;
    /// `EVTCHNSTAT_interdomain`: connected to a remote domain's port.
    pub const INTERDOMAIN: u32 = 2;
    /// `EVTCHNSTAT_pirq`: bound to a physical IRQ.
    pub const PIRQ: u32 = 3;
    /// `EVTCHNSTAT_virq`: bound to a virtual IRQ.
    pub const VIRQ: u32 = 4;
    /// `EVTCHNSTAT_ipi`: bound to an inter-processor interrupt.
    pub const IPI: u32 = 5;
}

/// `VIRQ_*`: virtual IRQ numbers (`xen/xen.h`). "V." ones are per vCPU,
/// the others global.
pub mod virq {
    /// `VIRQ_TIMER` (V.).
    pub const TIMER: u32 = 0;
    /// `VIRQ_DEBUG` (V.).
    pub const DEBUG: u32 = 1;
    /// `VIRQ_CONSOLE`.
    pub const CONSOLE: u32 = 2;
    /// `VIRQ_DOM_EXC`.
    pub const DOM_EXC: u32 = 3;
    /// `VIRQ_TBUF`.
    pub const TBUF: u32 = 4;
    /// `VIRQ_DEBUGGER`.
    pub const DEBUGGER: u32 = 6;
    /// `VIRQ_XENOPROF` (V.).
    pub const XENOPROF: u32 = 7;
    /// `VIRQ_CON_RING`.
    pub const CON_RING: u32 = 8;
    /// `VIRQ_PCPU_STATE`.
    pub const PCPU_STATE: u32 = 9;
    /// `VIRQ_MEM_EVENT`.
    pub const MEM_EVENT: u32 = 10;
    /// `VIRQ_ARGO`.
    pub const ARGO: u32 = 11;
    /// `VIRQ_ENOMEM`.
    pub const ENOMEM: u32 = 12;
    /// `VIRQ_XENPMU` (V.).
    pub const XENPMU: u32 = 13;
    /// `VIRQ_ARCH_0`: the first of eight architecture-specific VIRQs.
    pub const ARCH_0: u32 = 16;
    /// `NR_VIRQS`.
    pub const NR_VIRQS: u32 = 24;
}

/// Xen's error numbers (`xen/errno.h`); a hypercall returns the negated
/// value.
pub mod errno {
    /// `EPERM`: operation not permitted.
    pub const EPERM: i32 = 1;
    /// `ENOENT`: no such port or binding.
    pub const ENOENT: i32 = 2;
    /// `ESRCH`: no such domain.
    pub const ESRCH: i32 = 3;
    /// `EAGAIN`: try again.
    pub const EAGAIN: i32 = 11;
    /// `ENOMEM`: out of memory.
    pub const ENOMEM: i32 = 12;
    /// `EACCES`: permission denied (`set_priority` of a free port).
    pub const EACCES: i32 = 13;
    /// `EFAULT`: bad guest address.
    pub const EFAULT: i32 = 14;
    /// `EBUSY`: resource busy.
    pub const EBUSY: i32 = 16;
    /// `EEXIST`: already exists (a binding).
    pub const EEXIST: i32 = 17;
    /// `EINVAL`: invalid argument.
    pub const EINVAL: i32 = 22;
    /// `ENOSPC`: no free port.
    pub const ENOSPC: i32 = 28;
    /// `ENOSYS`: command not implemented.
    pub const ENOSYS: i32 = 38;
    /// `EOPNOTSUPP`: operation not supported.
    pub const EOPNOTSUPP: i32 = 95;
}

/// `BIND_PIRQ__WILL_SHARE`: the flag of [`BindPirq::flags`].
pub const BIND_PIRQ_WILL_SHARE: u32 = 1;

/// `struct evtchn_alloc_unbound`: a port of `dom` that `remote_dom` may
/// connect to.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AllocUnbound {
    /// In: the domain that gets the port (`DOMID_SELF` for the caller).
    pub dom: DomId,
    /// In: the domain allowed to connect.
    pub remote_dom: DomId,
    /// Out: the port.
    pub port: u32,
}

/// `struct evtchn_bind_interdomain`: connect to a remote domain's unbound
/// port.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BindInterdomain {
    /// In: the remote domain.
    pub remote_dom: DomId,
    /// In: its unbound port.
    pub remote_port: u32,
    /// Out: the caller's new port.
    pub local_port: u32,
}

/// `struct evtchn_bind_virq`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BindVirq {
    /// In: the VIRQ number ([`virq`]).
    pub virq: u32,
    /// In: the vCPU to notify.
    pub vcpu: u32,
    /// Out: the port.
    pub port: u32,
}

/// `struct evtchn_bind_pirq`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BindPirq {
    /// In: the physical IRQ.
    pub pirq: u32,
    /// In: [`BIND_PIRQ_WILL_SHARE`] or 0.
    pub flags: u32,
    /// Out: the port.
    pub port: u32,
}

/// `struct evtchn_bind_ipi`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BindIpi {
    /// In: the vCPU to notify.
    pub vcpu: u32,
    /// Out: the port.
    pub port: u32,
}

/// `struct evtchn_close`, `struct evtchn_send` and `struct evtchn_unmask`:
/// a port alone.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PortArg {
    /// In: the port.
    pub port: u32,
}

/// `struct evtchn_close`.
pub type Close = PortArg;
/// `struct evtchn_send`.
pub type Send = PortArg;
/// `struct evtchn_unmask`.
pub type Unmask = PortArg;

/// `u.unbound` and `u.interdomain` of `struct evtchn_status`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RemoteEnd {
    /// The remote domain (allowed to connect, or connected).
    pub dom: DomId,
    /// The remote port (interdomain only).
    pub port: u32,
}

/// The union `u` of `struct evtchn_status`: which member is meaningful
/// follows from [`Status::status`].
#[repr(C)]
#[derive(Clone, Copy)]
pub union StatusDetail {
    /// `EVTCHNSTAT_unbound` (`dom` only) and `EVTCHNSTAT_interdomain`.
    pub remote: RemoteEnd,
    /// `EVTCHNSTAT_pirq` and `EVTCHNSTAT_virq`: the IRQ number.
    pub irq: u32,
}

impl Default for StatusDetail {
    fn default() -> Self {
        StatusDetail {
            remote: RemoteEnd::default(),
        }
    }
}

impl core::fmt::Debug for StatusDetail {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        // No member can be read here whatever was written: `irq` leaves
        // bytes 4..8 uninitialised, `remote` bytes 2..4 (padding). Which
        // one is meant is `Status::status`'s to say.
        f.debug_struct("StatusDetail").finish_non_exhaustive()
    }
}

/// `struct evtchn_status`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct Status {
    /// In: the domain (`DOMID_SELF` for the caller).
    pub dom: DomId,
    /// In: the port.
    pub port: u32,
    /// Out: [`stat`].
    pub status: u32,
    /// Out: the vCPU the port notifies.
    pub vcpu: u32,
    /// Out: the state's details.
    pub u: StatusDetail,
}

/// `struct evtchn_bind_vcpu`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BindVcpu {
    /// In: the port.
    pub port: u32,
    /// In: the vCPU to notify from now on.
    pub vcpu: u32,
}

/// `struct evtchn_reset`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Reset {
    /// In: the domain (`DOMID_SELF` for the caller).
    pub dom: DomId,
}

/// `struct evtchn_init_control`: the FIFO ABI's control block of a vCPU.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct InitControl {
    /// In: the guest frame of the page holding the control block.
    pub control_gfn: u64,
    /// In: the control block's offset in that page.
    pub offset: u32,
    /// In: the vCPU.
    pub vcpu: u32,
    /// Out: the bits of a link (17).
    pub link_bits: u8,
    /// Padding, zero.
    pub pad: [u8; 7],
}

/// `struct evtchn_expand_array`: one more page of the FIFO event array.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ExpandArray {
    /// In: the guest frame of the page.
    pub array_gfn: u64,
}

/// `struct evtchn_set_priority`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SetPriority {
    /// In: the port.
    pub port: u32,
    /// In: the priority, 0 (highest) to 15.
    pub priority: u32,
}

#[cfg(not(any(all(loom, feature = "loom"), evtchn_shuttle)))]
mod layout {
    use super::*;
    use core::mem::{offset_of, size_of};
    use static_assertions::const_assert_eq;

    const_assert_eq!(size_of::<AllocUnbound>(), 8);
    const_assert_eq!(offset_of!(AllocUnbound, port), 4);
    const_assert_eq!(size_of::<BindInterdomain>(), 12);
    const_assert_eq!(offset_of!(BindInterdomain, remote_port), 4);
    const_assert_eq!(offset_of!(BindInterdomain, local_port), 8);
    const_assert_eq!(size_of::<BindVirq>(), 12);
    const_assert_eq!(size_of::<BindPirq>(), 12);
    const_assert_eq!(size_of::<BindIpi>(), 8);
    const_assert_eq!(size_of::<PortArg>(), 4);
    const_assert_eq!(size_of::<StatusDetail>(), 8);
    const_assert_eq!(size_of::<Status>(), 24);
    const_assert_eq!(offset_of!(Status, u), 16);
    const_assert_eq!(size_of::<BindVcpu>(), 8);
    const_assert_eq!(size_of::<Reset>(), 2);
    const_assert_eq!(size_of::<InitControl>(), 24);
    const_assert_eq!(offset_of!(InitControl, link_bits), 16);
    const_assert_eq!(size_of::<ExpandArray>(), 8);
    const_assert_eq!(size_of::<SetPriority>(), 8);
}
