//! A lock-free, model-checked event-delivery core modelled on Xen event
//! channels.
//!
//! * [`xen`] — Xen's shared-memory layouts (`shared_info`, `vcpu_info`),
//!   bit for bit, usable over a real page ([`MaxVcpus`] serves a domain of
//!   fewer than its 32 vCPUs).
//! * [`PortOps`] — the ABI operations (Xen's `evtchn_port_ops`), with two
//!   implementations: the 2-level ABI, [`TwoLevel`], and the FIFO ABI,
//!   [`Fifo`] (per-vCPU queues of 16 priorities, 2^17 ports). Each has a
//!   raise side for the hypervisor and a deliver side for the guest.
//! * [`Channels`] — the control plane: bind (Xen-compatible or with an
//!   atomic affinity), send, mask reasons, `set_affinity` with events in
//!   flight, close, status, and the per-vCPU upcall ([`Vcpu`]) with its
//!   in-flight guard.
//! * Delivery policy and storm control: default affinity for new ports
//!   ([`Policy`]: vCPU 0 as Xen, round-robin, least-loaded), vCPUs going
//!   offline, late EOI with back-off for spurious events
//!   ([`Channels::set_lateeoi`], [`Channels::lateeoi`]), upcalls with a
//!   budget ([`Vcpu::upcall_budget`], [`Vcpu::upcall_until`]) and a
//!   rebalancer ([`Channels::rebalance`]).
//!
//! The contract it keeps, and which the loom models, the stress test and the
//! fuzzers check: no lost event (C1), no lost wake-up (C2), a port's handler
//! never runs on two vCPUs at once (C3), a masked port is silent (C4),
//! affinity holds once `set_affinity` returns (C5), close is final and a
//! reused number starts clean (C6), hostile shared memory cannot make the
//! raise side panic, hang or read out of bounds (C7), bad input is a typed
//! error that changes nothing (C8).
//!
//! ```
//! use evtchn::{Bind, Channels, OwnedMemory, TwoLevel};
//!
//! // 64 ports, 2 vCPUs; kicks are ignored here (the vCPUs poll).
//! let ch = Channels::new(TwoLevel::new(OwnedMemory::new(1, 2)), ());
//! let port = ch.bind(Bind::Affinity(1))?;
//! ch.send(port)?;
//! ch.send(port)?; // coalesces with the first
//!
//! let mut vcpu1 = ch.vcpu(1)?;
//! assert!(vcpu1.upcall_pending());
//! let mut seen = Vec::new();
//! vcpu1.upcall(|p| seen.push(p.number()))?;
//! assert_eq!(seen, [port.number()]);
//! assert!(!vcpu1.upcall_pending());
//! # Ok::<(), evtchn::Error>(())
//! ```
//!
//! The crate is `#![no_std]`; the `alloc` feature brings the control plane
//! and crate-owned memory, the `std` feature (default) a `parking_lot` lock
//! for the control plane.

#![no_std]
#![warn(missing_docs, missing_debug_implementations)]
#![deny(unsafe_op_in_unsafe_fn)]
// The core does not panic on any input: no unwrap, expect, panic, indexing,
// unchecked arithmetic or truncating cast outside the tests. Arithmetic is
// checked, saturating or wrapping (each wrapping use says why it cannot
// wrap), slices are read with `get`, and conversions use `try_from`. There
// are no exceptions: no `allow` of these lints anywhere in `src/`.
#![cfg_attr(
    not(test),
    deny(
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::panic,
        clippy::indexing_slicing,
        clippy::arithmetic_side_effects,
        clippy::unreachable,
        clippy::todo,
        clippy::unimplemented,
        clippy::cast_possible_truncation
    )
)]

// Each port's control word is one `AtomicU64` (see `port`), and so is each
// 2-level pending, mask and selector word (`xen_ulong_t`): without 64-bit
// atomics there is no core to build. Said once here, rather than as an
// unresolved import deep in the atomics layer.
#[cfg(not(target_has_atomic = "64"))]
compile_error!(
    "evtchn needs 64-bit atomics (`AtomicU64`), which this target lacks: each port's control word is one, and so is each 2-level pending, mask and selector word"
);

#[cfg(feature = "alloc")]
extern crate alloc;
#[cfg(feature = "std")]
extern crate std;

mod abi;
mod error;
mod port;
mod sync;
mod weaken;
pub mod xen;

mod notify;

#[cfg(feature = "alloc")]
mod channels;
#[cfg(feature = "alloc")]
mod guest;
#[cfg(feature = "alloc")]
mod host;
#[cfg(feature = "alloc")]
mod policy;

#[cfg(feature = "alloc")]
pub use abi::fifo::{BorrowedFifo, Fifo, FifoCursor, FifoMemory, OwnedFifo, RegisteredFifo};
#[cfg(feature = "alloc")]
pub use abi::twolevel::OwnedMemory;
pub use abi::twolevel::{Cursor as TwoLevelCursor, MaxVcpus, Memory2l, RegisteredVcpus, TwoLevel};
pub use abi::{Deliver, Delivery, GuestUnmask, Kick, PortOps, Ports, Raise, Raised};
#[cfg(feature = "alloc")]
pub use channels::{Channels, InProcess};
pub use error::Error;
#[cfg(feature = "alloc")]
pub use guest::{Bind, Guest, Hypercalls, Hypervisor, OnXen, Vcpu};
#[cfg(feature = "alloc")]
pub use host::{BindMode, Domain, Domains, Host, HostStatus, PortKind};
pub use notify::Notify;
#[cfg(feature = "alloc")]
pub use policy::{plan_rebalance, Move, Policy};
pub use port::{MaskReason, Port, State, Status};
#[doc(hidden)]
pub use weaken::Weaken;
