//! The per-port control word: one `AtomicU64` per port in the port table,
//! holding everything the guest's control plane and its deliver side must
//! change together.
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

pub(super) const STATE: u64 = 0b11;
pub(super) const FREE: u64 = 0;
pub(super) const BOUND: u64 = 1;
pub(super) const CLOSING: u64 = 2;
pub(super) const ACTIVE: u64 = 1 << 2;
pub(super) const REPLAY: u64 = 1 << 3;
pub(super) const REASONS: u64 = 0b111 << 4;
pub(super) const LATEEOI: u64 = 1 << 7;
pub(super) const PRIORITY_SHIFT: u32 = 8;
pub(super) const PRIORITY: u64 = 0xf << PRIORITY_SHIFT;
pub(super) const VCPU_SHIFT: u32 = 16;
pub(super) const VCPU: u64 = 0xffff << VCPU_SHIFT;
pub(super) const GEN_SHIFT: u32 = 32;

#[inline(always)]
pub(super) const fn state(cw: u64) -> u64 {
    cw & STATE
}

#[inline(always)]
pub(super) const fn vcpu(cw: u64) -> u32 {
    ((cw & VCPU) >> VCPU_SHIFT) as u32
}

#[inline(always)]
pub(super) const fn generation(cw: u64) -> u32 {
    (cw >> GEN_SHIFT) as u32
}

#[inline(always)]
pub(super) const fn priority(cw: u64) -> u8 {
    ((cw & PRIORITY) >> PRIORITY_SHIFT) as u8
}

#[inline(always)]
pub(super) const fn with_vcpu(cw: u64, v: u32) -> u64 {
    (cw & !VCPU) | (((v as u64) << VCPU_SHIFT) & VCPU)
}

#[inline(always)]
pub(super) const fn with_state(cw: u64, s: u64) -> u64 {
    (cw & !STATE) | (s & STATE)
}
