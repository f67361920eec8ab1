#![cfg_attr(not(feature = "alloc"), allow(dead_code))]

//! The per-port control word: one `AtomicU64` per port in the port table,
//! holding everything the control plane and the deliver side must change
//! together.
//!
//! | bits   | field      | meaning                                             |
//! |--------|------------|-----------------------------------------------------|
//! | 0..2   | `STATE`    | `FREE` (0), `BOUND` (1), `CLOSING` (2: closed while a handler is in flight) |
//! | 2      | `ACTIVE`   | a handler of this port is running (the in-flight guard) |
//! | 3      | `REPLAY`   | a vCPU found the port pending while `ACTIVE` and left it to the runner |
//! | 4..7   | `REASONS`  | mask reasons: `EXPLICIT` (4), `REBIND` (5), `EOI` (6) |
//! | 7      | `LATEEOI`  | each handler start adds the `EOI` reason (late EOI)   |
//! | 8..12  | `PRIORITY` | FIFO priority, 0 (highest) ..= 15                    |
//! | 16..32 | `VCPU`     | the vCPU the port is bound to (`notify_vcpu_id`)     |
//! | 32..64 | `GEN`      | generation: incremented by every bind               |
//!
//! A handler starts only through a compare-exchange that sees `BOUND`, no
//! mask reason, the expected vCPU and `ACTIVE` clear, and sets `ACTIVE`; so
//! close, mask and rebind each linearise against handler starts at their own
//! compare-exchange on this word.

pub(crate) const STATE: u64 = 0b11;
pub(crate) const FREE: u64 = 0;
pub(crate) const BOUND: u64 = 1;
pub(crate) const CLOSING: u64 = 2;
pub(crate) const ACTIVE: u64 = 1 << 2;
pub(crate) const REPLAY: u64 = 1 << 3;
pub(crate) const REASONS: u64 = 0b111 << 4;
pub(crate) const LATEEOI: u64 = 1 << 7;
pub(crate) const PRIORITY_SHIFT: u32 = 8;
pub(crate) const PRIORITY: u64 = 0xf << PRIORITY_SHIFT;
pub(crate) const VCPU_SHIFT: u32 = 16;
pub(crate) const VCPU: u64 = 0xffff << VCPU_SHIFT;
pub(crate) const GEN_SHIFT: u32 = 32;

/// Why a port is masked. A port is unmasked only when no reason remains.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum MaskReason {
    /// The owner asked for it (`mask`).
    Explicit,
    /// A rebind is in progress (internal to `set_affinity`).
    Rebind,
    /// A late EOI is outstanding: the port stays masked until `eoi`.
    EoiPending,
}

impl MaskReason {
    pub(crate) const fn bit(self) -> u64 {
        match self {
            MaskReason::Explicit => 1 << 4,
            MaskReason::Rebind => 1 << 5,
            MaskReason::EoiPending => 1 << 6,
        }
    }
}

#[inline(always)]
pub(crate) const fn state(cw: u64) -> u64 {
    cw & STATE
}

#[inline(always)]
pub(crate) const fn vcpu(cw: u64) -> u32 {
    ((cw & VCPU) >> VCPU_SHIFT) as u32
}

#[inline(always)]
pub(crate) const fn generation(cw: u64) -> u32 {
    (cw >> GEN_SHIFT) as u32
}

#[inline(always)]
pub(crate) const fn priority(cw: u64) -> u8 {
    ((cw & PRIORITY) >> PRIORITY_SHIFT) as u8
}

#[inline(always)]
pub(crate) const fn with_vcpu(cw: u64, v: u32) -> u64 {
    (cw & !VCPU) | (((v as u64) << VCPU_SHIFT) & VCPU)
}

#[inline(always)]
pub(crate) const fn with_state(cw: u64, s: u64) -> u64 {
    (cw & !STATE) | (s & STATE)
}

/// A bound port: its number and the generation of the bind that made it.
///
/// A `Port` outlives its bind harmlessly: once the port is closed, every
/// operation on the old handle returns [`crate::Error::Stale`], even after
/// the number is bound again (Xen's bare port numbers cannot tell).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Port {
    pub(crate) number: u32,
    pub(crate) generation: u32,
}

impl Port {
    /// The port number, as Xen numbers it (an index into the pending bits).
    #[must_use]
    pub const fn number(self) -> u32 {
        self.number
    }

    /// The generation of the bind that made this handle.
    #[must_use]
    pub const fn generation(self) -> u32 {
        self.generation
    }
}

/// Lifecycle state of a port number.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum State {
    /// Not bound; may be handed out by the next bind.
    Free,
    /// Bound; sends are delivered.
    Bound,
    /// Closed while a handler was in flight; becomes `Free` when it ends.
    Closing,
}

/// A snapshot of one port, as `status` returns it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Status {
    /// Lifecycle state.
    pub state: State,
    /// The vCPU the port is bound to.
    pub vcpu: u32,
    /// FIFO priority (0 highest ..= 15).
    pub priority: u8,
    /// Mask reasons in force.
    pub masked_explicit: bool,
    /// A rebind is in progress.
    pub masked_rebind: bool,
    /// A late EOI is outstanding.
    pub masked_eoi: bool,
    /// The pending bit of the ABI.
    pub pending: bool,
    /// A handler is running.
    pub in_flight: bool,
    /// Late EOI: each handler run masks the port until `eoi`.
    pub lateeoi: bool,
    /// Handler runs so far (statistics for the rebalancer; not counted in
    /// loom builds).
    pub handled: u32,
    /// The generation of the current (or last) bind.
    pub generation: u32,
}
