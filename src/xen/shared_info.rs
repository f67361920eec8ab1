//! `struct vcpu_info` and `struct shared_info` of `xen/xen.h` (x86_64).

use super::{XenUlong, BITS_PER_WORD, LEGACY_MAX_VCPUS};
use crate::sync::{AtomicU32, AtomicU64, AtomicU8};

const NR_WORDS: usize = BITS_PER_WORD as usize;

/// `struct vcpu_info`: one vCPU's event-delivery state (64 bytes).
///
/// | offset | field                   | meaning                                 |
/// |--------|-------------------------|-----------------------------------------|
/// | 0      | `evtchn_upcall_pending` | set by the raiser, cleared by the upcall |
/// | 1      | `evtchn_upcall_mask`    | the guest's "interrupts off" flag        |
/// | 8      | `evtchn_pending_sel`    | bit `i`: pending word `i` may hold work  |
/// | 16     | `arch`                  | opaque here (`cr2`, padding)             |
/// | 32     | `time`                  | opaque here (`vcpu_time_info`)           |
#[repr(C)]
#[derive(Debug)]
pub struct VcpuInfo {
    /// Set when an event was raised for this vCPU since its last upcall.
    pub evtchn_upcall_pending: AtomicU8,
    /// The guest's own mask of upcalls; not consulted by the raise side.
    pub evtchn_upcall_mask: AtomicU8,
    _pad: [AtomicU8; 6],
    /// Selector: bit `i` says pending word `i` may hold work for this vCPU.
    pub evtchn_pending_sel: XenUlong,
    arch: [AtomicU64; 2],
    time: [AtomicU64; 4],
}

impl VcpuInfo {
    /// A zeroed `vcpu_info`.
    #[must_use]
    pub fn new() -> Self {
        VcpuInfo {
            evtchn_upcall_pending: AtomicU8::new(0),
            evtchn_upcall_mask: AtomicU8::new(0),
            _pad: core::array::from_fn(|_| AtomicU8::new(0)),
            evtchn_pending_sel: AtomicU64::new(0),
            arch: core::array::from_fn(|_| AtomicU64::new(0)),
            time: core::array::from_fn(|_| AtomicU64::new(0)),
        }
    }
}

impl Default for VcpuInfo {
    fn default() -> Self {
        Self::new()
    }
}

/// `struct shared_info`: the page shared between Xen and a guest (3136 bytes
/// used; the page is 4096).
///
/// As [`crate::Memory2l`] it holds 32 vCPUs, one per `vcpu_info`;
/// [`crate::MaxVcpus`] serves a domain of fewer from the same page.
///
/// | offset | field            | meaning                                   |
/// |--------|------------------|-------------------------------------------|
/// | 0      | `vcpu_info[32]`  | legacy per-vCPU state                      |
/// | 2048   | `evtchn_pending` | 4096 pending bits                          |
/// | 2560   | `evtchn_mask`    | 4096 mask bits                             |
/// | 3072   | `wc_*`           | wall clock, opaque here                    |
/// | 3088   | `arch`           | `arch_shared_info`, opaque here            |
#[repr(C)]
#[derive(Debug)]
pub struct SharedInfo {
    /// `vcpu_info` of vCPUs 0..32.
    pub vcpu_info: [VcpuInfo; LEGACY_MAX_VCPUS],
    /// Pending bit per port: bit `p % 64` of word `p / 64`.
    pub evtchn_pending: [XenUlong; NR_WORDS],
    /// Mask bit per port, same indexing as `evtchn_pending`.
    pub evtchn_mask: [XenUlong; NR_WORDS],
    wc: [AtomicU32; 4],
    arch: [AtomicU64; 6],
}

impl SharedInfo {
    /// A zeroed `shared_info`: nothing pending, nothing masked.
    #[must_use]
    pub fn new() -> Self {
        SharedInfo {
            vcpu_info: core::array::from_fn(|_| VcpuInfo::new()),
            evtchn_pending: core::array::from_fn(|_| AtomicU64::new(0)),
            evtchn_mask: core::array::from_fn(|_| AtomicU64::new(0)),
            wc: core::array::from_fn(|_| AtomicU32::new(0)),
            arch: core::array::from_fn(|_| AtomicU64::new(0)),
        }
    }

    /// Views caller-owned memory, such as a real `shared_info` page, as a
    /// `SharedInfo`.
    ///
    /// # Safety
    ///
    /// * `ptr` is non-null, aligned to 8 bytes, and valid for reads and
    ///   writes of `size_of::<SharedInfo>()` (3136) bytes for all of `'a`;
    /// * for all of `'a`, every other party (a guest, the hypervisor, another
    ///   thread) accesses that memory only with atomic instructions of the
    ///   field's width, or not at all — which is what Xen and its guests do
    ///   with the event-channel fields; the memory is never deallocated or
    ///   unmapped during `'a`.
    ///
    /// Contents need not be valid in any sense: every bit pattern is a valid
    /// `SharedInfo`, and the raise side treats it all as untrusted.
    #[must_use]
    pub unsafe fn from_ptr<'a>(ptr: *mut SharedInfo) -> &'a SharedInfo {
        // SAFETY: the caller guarantees validity, alignment and lifetime; all
        // fields are atomics (interior mutability), so concurrent atomic
        // writes by others do not invalidate a shared reference, and any bit
        // pattern is a valid value of an integer atomic.
        unsafe { &*ptr }
    }
}

impl Default for SharedInfo {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(not(any(all(loom, feature = "loom"), evtchn_shuttle)))]
mod layout {
    use super::{SharedInfo, VcpuInfo};
    use core::mem::{align_of, offset_of, size_of};
    use static_assertions::const_assert_eq;

    const_assert_eq!(size_of::<VcpuInfo>(), 64);
    const_assert_eq!(offset_of!(VcpuInfo, evtchn_upcall_pending), 0);
    const_assert_eq!(offset_of!(VcpuInfo, evtchn_upcall_mask), 1);
    const_assert_eq!(offset_of!(VcpuInfo, evtchn_pending_sel), 8);
    const_assert_eq!(offset_of!(VcpuInfo, arch), 16);
    const_assert_eq!(offset_of!(VcpuInfo, time), 32);

    const_assert_eq!(size_of::<SharedInfo>(), 3136);
    const_assert_eq!(align_of::<SharedInfo>(), 8);
    const_assert_eq!(offset_of!(SharedInfo, vcpu_info), 0);
    const_assert_eq!(offset_of!(SharedInfo, evtchn_pending), 2048);
    const_assert_eq!(offset_of!(SharedInfo, evtchn_mask), 2560);
    const_assert_eq!(offset_of!(SharedInfo, wc), 3072);
    const_assert_eq!(offset_of!(SharedInfo, arch), 3088);
}
