//! Xen's event-channel hypercall numbers and argument structs
//! (`xen/event_channel.h`), as the C code passes them.
//! [`rust_layout`] lists the same figures as `c/abi.c` computes from Xen's
//! header ([`crate::c_abi_layout`]); the `layout` test compares them.

use core::mem::{offset_of, size_of};

use evtchn::xen::fifo::{ControlBlock, EventWord};
use evtchn::xen::{SharedInfo, VcpuInfo};

use evtchn::xen::evtchnop::cmd;
pub use evtchn::xen::evtchnop::errno::{EBUSY, EINVAL, ENOENT, ENOSPC, ENOSYS};
/// `evtchn_bind_ipi_t`, `evtchn_bind_vcpu_t`, `evtchn_close_t`,
/// `evtchn_send_t`, `evtchn_set_priority_t`, `evtchn_unmask_t`: the
/// crate's own declarations, which `xen_layout` checks against Xen's
/// headers.
pub use evtchn::xen::evtchnop::{
    BindIpi as EvtchnBindIpi, BindVcpu as EvtchnBindVcpu, Close as EvtchnClose, Send as EvtchnSend,
    SetPriority as EvtchnSetPriority, Unmask as EvtchnUnmask,
};

/// A command number as the C code's `int cmd` carries it (all below 14).
const fn c(cmd: u32) -> i32 {
    cmd as i32
}

/// `EVTCHNOP_close`.
pub const EVTCHNOP_CLOSE: i32 = c(cmd::CLOSE);
/// `EVTCHNOP_send`.
pub const EVTCHNOP_SEND: i32 = c(cmd::SEND);
/// `EVTCHNOP_bind_ipi`.
pub const EVTCHNOP_BIND_IPI: i32 = c(cmd::BIND_IPI);
/// `EVTCHNOP_bind_vcpu`.
pub const EVTCHNOP_BIND_VCPU: i32 = c(cmd::BIND_VCPU);
/// `EVTCHNOP_unmask`.
pub const EVTCHNOP_UNMASK: i32 = c(cmd::UNMASK);
/// `EVTCHNOP_set_priority`.
pub const EVTCHNOP_SET_PRIORITY: i32 = c(cmd::SET_PRIORITY);

fn n(x: usize) -> u32 {
    u32::try_from(x).expect("small figure")
}

/// The figures of `c/abi.c`, in its order, from the Rust side.
#[must_use]
pub fn rust_layout() -> Vec<u32> {
    vec![
        n(size_of::<EvtchnSend>()),
        n(offset_of!(EvtchnSend, port)),
        n(size_of::<EvtchnClose>()),
        n(offset_of!(EvtchnClose, port)),
        n(size_of::<EvtchnUnmask>()),
        n(offset_of!(EvtchnUnmask, port)),
        n(size_of::<EvtchnBindVcpu>()),
        n(offset_of!(EvtchnBindVcpu, port)),
        n(offset_of!(EvtchnBindVcpu, vcpu)),
        n(size_of::<EvtchnBindIpi>()),
        n(offset_of!(EvtchnBindIpi, vcpu)),
        n(offset_of!(EvtchnBindIpi, port)),
        n(size_of::<EvtchnSetPriority>()),
        n(offset_of!(EvtchnSetPriority, port)),
        n(offset_of!(EvtchnSetPriority, priority)),
        EVTCHNOP_CLOSE as u32,
        EVTCHNOP_SEND as u32,
        EVTCHNOP_BIND_IPI as u32,
        EVTCHNOP_BIND_VCPU as u32,
        EVTCHNOP_UNMASK as u32,
        EVTCHNOP_SET_PRIORITY as u32,
        n(size_of::<SharedInfo>()),
        n(size_of::<VcpuInfo>()),
        n(size_of::<ControlBlock>()),
        n(size_of::<EventWord>()),
    ]
}
