//! Xen's event-channel hypercall numbers and argument structs
//! (`xen/event_channel.h`), as the C code passes them.
//! [`rust_layout`] lists the same figures as `c/abi.c` computes from Xen's
//! header ([`crate::c_abi_layout`]); the `layout` test compares them.

use core::mem::{offset_of, size_of};

use evtchn::xen::fifo::{ControlBlock, EventWord};
use evtchn::xen::{SharedInfo, VcpuInfo};

/// `EVTCHNOP_close`.
pub const EVTCHNOP_CLOSE: i32 = 3;
/// `EVTCHNOP_send`.
pub const EVTCHNOP_SEND: i32 = 4;
/// `EVTCHNOP_bind_ipi`.
pub const EVTCHNOP_BIND_IPI: i32 = 7;
/// `EVTCHNOP_bind_vcpu`.
pub const EVTCHNOP_BIND_VCPU: i32 = 8;
/// `EVTCHNOP_unmask`.
pub const EVTCHNOP_UNMASK: i32 = 9;
/// `EVTCHNOP_set_priority`.
pub const EVTCHNOP_SET_PRIORITY: i32 = 13;

/// `ENOENT`.
pub const ENOENT: i32 = 2;
/// `EBUSY`.
pub const EBUSY: i32 = 16;
/// `EINVAL`.
pub const EINVAL: i32 = 22;
/// `ENOSPC`.
pub const ENOSPC: i32 = 28;
/// `ENOSYS`.
pub const ENOSYS: i32 = 38;

/// `evtchn_send_t`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct EvtchnSend {
    /// The port.
    pub port: u32,
}

/// `evtchn_close_t`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct EvtchnClose {
    /// The port.
    pub port: u32,
}

/// `evtchn_unmask_t`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct EvtchnUnmask {
    /// The port.
    pub port: u32,
}

/// `evtchn_bind_vcpu_t`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct EvtchnBindVcpu {
    /// The port.
    pub port: u32,
    /// Its new notify vCPU.
    pub vcpu: u32,
}

/// `evtchn_bind_ipi_t`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct EvtchnBindIpi {
    /// IN: the vCPU to notify.
    pub vcpu: u32,
    /// OUT: the new port.
    pub port: u32,
}

/// `evtchn_set_priority_t`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct EvtchnSetPriority {
    /// The port.
    pub port: u32,
    /// 0 (highest) ..= 15.
    pub priority: u32,
}

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
