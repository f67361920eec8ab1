//! Xen's shared-memory layouts, bit for bit.
//!
//! Every type here is `#[repr(C)]` and made of atomics only, so it can be
//! overlaid on a real `shared_info` page that another party (a guest, or the
//! hypervisor) writes concurrently: a `&SharedInfo` never asserts that the
//! memory is unchanging. Sizes and offsets are pinned by `static_assertions`
//! against the figures of Xen's public headers (`xen/xen.h`, x86_64); the
//! `xen_layout` test compiles a C program against the real headers and
//! compares every one of them.

pub mod evtchnop;
pub mod fifo;
mod shared_info;

pub use shared_info::{SharedInfo, VcpuInfo};

use crate::sync::AtomicU64;

/// `xen_ulong_t`: the unit of the 2-level pending, mask and selector words.
/// It is 64 bits on every architecture Xen supports for this ABI here
/// (x86_64, aarch64, and arm32, where Xen also defines it as 64 bits).
pub type XenUlong = AtomicU64;

/// Bits per `xen_ulong_t`, i.e. ports per pending word.
pub const BITS_PER_WORD: u32 = 64;

/// `NR_EVENT_CHANNELS` for the 2-level ABI: 64 words of 64 ports.
pub const NR_EVENT_CHANNELS_2L: u32 = BITS_PER_WORD * BITS_PER_WORD;

/// `XEN_LEGACY_MAX_VCPUS`: vCPUs whose `vcpu_info` lives in `shared_info`.
pub const LEGACY_MAX_VCPUS: usize = 32;
