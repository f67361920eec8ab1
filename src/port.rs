#![cfg_attr(not(feature = "alloc"), allow(dead_code))]

//! The public port types: the handle of one life of a port, its state, and
//! a snapshot of it.

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
