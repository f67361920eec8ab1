//! The per-port control word: one [`Control`] (an `AtomicU64`) per port in
//! the port table,
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

//!
//! [`Snapshot`] is one value of the word, with its fields and transitions
//! named; [`Control`] holds the word and performs the three compare-exchange
//! loops on it: the control plane's [`Control::update`] of a bound life,
//! the deliverer's [`Control::claim`] of the in-flight guard, and its
//! [`Control::release`].

use crate::port::{MaskReason, Port};
use crate::sync::{AtomicU64, Ordering, Ordering::*};
use crate::Error;

const STATE: u64 = 0b11;
const FREE: u64 = 0;
const BOUND: u64 = 1;
const CLOSING: u64 = 2;
const ACTIVE: u64 = 1 << 2;
const REPLAY: u64 = 1 << 3;
pub(super) const REASONS: u64 = 0b111 << 4;
const LATEEOI: u64 = 1 << 7;
const PRIORITY_SHIFT: u32 = 8;
const PRIORITY: u64 = 0xf << PRIORITY_SHIFT;
const VCPU_SHIFT: u32 = 16;
const VCPU: u64 = 0xffff << VCPU_SHIFT;
const GEN_SHIFT: u32 = 32;
const GEN: u64 = 0xffff_ffff << GEN_SHIFT;

/// One value of a control word.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Snapshot(u64);

impl Snapshot {
    /// A free word of generation `generation`.
    #[inline(always)]
    pub(super) const fn free(generation: u32) -> Self {
        Snapshot(((generation as u64) << GEN_SHIFT) | FREE)
    }

    /// A bound word: no mask reason, not in flight.
    #[inline(always)]
    pub(super) const fn bound(vcpu: u32, priority: u8, generation: u32) -> Self {
        Snapshot(
            BOUND
                | (((vcpu as u64) << VCPU_SHIFT) & VCPU)
                | (((priority as u64) << PRIORITY_SHIFT) & PRIORITY)
                | ((generation as u64) << GEN_SHIFT),
        )
    }

    #[inline(always)]
    pub(super) const fn is_free(self) -> bool {
        self.0 & STATE == FREE
    }

    #[inline(always)]
    pub(super) const fn is_bound(self) -> bool {
        self.0 & STATE == BOUND
    }

    #[inline(always)]
    pub(super) const fn is_closing(self) -> bool {
        self.0 & STATE == CLOSING
    }

    /// The vCPU the port is bound to.
    #[inline(always)]
    pub(super) const fn vcpu(self) -> u32 {
        ((self.0 & VCPU) >> VCPU_SHIFT) as u32
    }

    #[inline(always)]
    pub(super) const fn generation(self) -> u32 {
        (self.0 >> GEN_SHIFT) as u32
    }

    #[inline(always)]
    pub(super) const fn priority(self) -> u8 {
        ((self.0 & PRIORITY) >> PRIORITY_SHIFT) as u8
    }

    /// Whether any mask reason holds.
    #[inline(always)]
    pub(super) const fn is_masked(self) -> bool {
        self.0 & REASONS != 0
    }

    /// The mask-reason bits.
    #[inline(always)]
    pub(super) const fn reasons(self) -> u64 {
        self.0 & REASONS
    }

    /// Whether the reason of bit `bit` (a [`MaskReason::bit`]) holds.
    #[inline(always)]
    pub(super) const fn has_reason(self, bit: u64) -> bool {
        self.0 & bit != 0
    }

    /// A handler of the port is running (the in-flight guard is held).
    #[inline(always)]
    pub(super) const fn is_active(self) -> bool {
        self.0 & ACTIVE != 0
    }

    /// Another vCPU left an event to the guard's holder.
    #[inline(always)]
    pub(super) const fn replay_requested(self) -> bool {
        self.0 & REPLAY != 0
    }

    /// Whether the guard's release has more to do than its
    /// compare-exchange: a close to finish, or a replay to raise.
    #[inline(always)]
    pub(super) const fn release_has_work(self) -> bool {
        // CLOSING is the state's bit 1, which no other state has.
        self.0 & (CLOSING | REPLAY) != 0
    }

    #[inline(always)]
    pub(super) const fn is_lateeoi(self) -> bool {
        self.0 & LATEEOI != 0
    }

    /// Whether a deliverer of `vcpu` (`None`: one that runs a port wherever
    /// it finds it) claims this word by installing `ACTIVE` alone: bound
    /// (there), unmasked, not in flight, not late-EOI.
    #[inline(always)]
    pub(super) fn plainly_claimable(self, vcpu: Option<u32>) -> bool {
        self.0 & (STATE | ACTIVE | REPLAY | REASONS | LATEEOI) == BOUND
            && match vcpu {
                Some(v) => self.vcpu() == v,
                None => true,
            }
    }

    /// Whether this is the bound life of `port`, in one masked comparison:
    /// the send's test. [`Snapshot::check`] is the same test with the
    /// refusal named; the send builds that refusal out of line
    /// ([`Snapshot::refusal`]). Routing every `check` through the cold
    /// refusal instead was measured to cost the send 1 to 6 instructions
    /// (its two rare re-checks then call out too).
    #[inline(always)]
    pub(super) const fn is_life_of(self, port: Port) -> bool {
        self.0 & (GEN | STATE) == ((port.generation as u64) << GEN_SHIFT) | BOUND
    }

    /// Why this is not the bound life of `port` ([`Snapshot::is_life_of`]
    /// said `false`): another life, or this one not bound.
    #[cold]
    #[inline(never)]
    pub(super) fn refusal(self, port: Port) -> Error {
        if self.generation() != port.generation {
            Error::Stale
        } else {
            Error::NotBound
        }
    }

    /// Checks that this is the bound life of `port`.
    #[inline(always)]
    pub(super) fn check(self, port: Port) -> Result<(), Error> {
        if self.generation() != port.generation {
            Err(Error::Stale)
        } else if !self.is_bound() {
            Err(Error::NotBound)
        } else {
            Ok(())
        }
    }

    /// Bound to `vcpu` instead.
    #[inline(always)]
    pub(super) const fn with_vcpu(self, vcpu: u32) -> Self {
        Snapshot((self.0 & !VCPU) | (((vcpu as u64) << VCPU_SHIFT) & VCPU))
    }

    #[inline(always)]
    pub(super) const fn with_priority(self, priority: u8) -> Self {
        Snapshot((self.0 & !PRIORITY) | (((priority as u64) << PRIORITY_SHIFT) & PRIORITY))
    }

    #[inline(always)]
    pub(super) const fn with_reason(self, bit: u64) -> Self {
        Snapshot(self.0 | (bit & REASONS))
    }

    #[inline(always)]
    pub(super) const fn without_reason(self, bit: u64) -> Self {
        Snapshot(self.0 & !(bit & REASONS))
    }

    #[inline(always)]
    pub(super) const fn with_lateeoi(self, on: bool) -> Self {
        if on {
            Snapshot(self.0 | LATEEOI)
        } else {
            Snapshot(self.0 & !LATEEOI)
        }
    }

    /// Closed: `CLOSING` while a handler is in flight (and `keep_closing`),
    /// else `FREE`; mask reasons and a replay request go with the life.
    #[inline(always)]
    pub(super) const fn closed(self, keep_closing: bool) -> Self {
        let next = if self.0 & ACTIVE != 0 && keep_closing {
            CLOSING
        } else {
            FREE
        };
        Snapshot((self.0 & !(STATE | REASONS | REPLAY)) | next)
    }

    /// The in-flight guard taken; a late-EOI port is masked (reason: EOI
    /// pending) from this handler start until its owner's EOI.
    #[inline(always)]
    pub(super) const fn claimed(self) -> Self {
        let eoi = if self.0 & LATEEOI != 0 {
            MaskReason::EoiPending.bit()
        } else {
            0
        };
        Snapshot(self.0 | ACTIVE | eoi)
    }

    /// The guard released: `ACTIVE` and `REPLAY` cleared, a closing port
    /// freed, and (`undo_eoi`) the EOI reason this claim added given back.
    #[inline(always)]
    const fn released(self, undo_eoi: bool) -> Self {
        let undo = if undo_eoi {
            MaskReason::EoiPending.bit()
        } else {
            0
        };
        let w = self.0 & !(ACTIVE | REPLAY | undo);
        if w & STATE == CLOSING {
            Snapshot((w & !STATE) | FREE)
        } else {
            Snapshot(w)
        }
    }
}

/// What a deliverer's [`Control::claim`] found.
#[derive(Clone, Copy, Debug)]
pub(super) enum Claim {
    /// The guard is the deliverer's; the word as it was just before.
    Held(Snapshot),
    /// The guard is not to be taken and the handler not run; nothing for
    /// the ABI to do (closed; masked, whose unmask raises it; or in flight
    /// elsewhere, with a replay request left to the runner).
    Skip,
    /// Bound to this other vCPU now.
    Foreign(u32),
}

/// One port's control word.
#[derive(Debug)]
pub(super) struct Control(AtomicU64);

impl Control {
    /// A free word of generation 0.
    pub(super) fn new() -> Self {
        Control(AtomicU64::new(FREE))
    }

    #[inline(always)]
    pub(super) fn load(&self, order: Ordering) -> Snapshot {
        Snapshot(self.0.load(order))
    }

    /// Stores `s`: only bind does, on a word no one else writes (a FREE one).
    #[inline(always)]
    pub(super) fn store(&self, s: Snapshot, order: Ordering) {
        self.0.store(s.0, order);
    }

    /// The control plane changes the bound life `port` with `f`, by
    /// compare-exchange (the deliver side changes `ACTIVE` and `REPLAY`
    /// concurrently). Returns the word before and after.
    ///
    /// # Errors
    ///
    /// [`Error::Stale`] or [`Error::NotBound`] if the word is not the bound
    /// life of `port`; nothing changes then.
    pub(super) fn update(
        &self,
        port: Port,
        f: impl Fn(Snapshot) -> Snapshot,
    ) -> Result<(Snapshot, Snapshot), Error> {
        // Acquire: see the state published by the last writer.
        let mut cw = self.load(Acquire);
        loop {
            cw.check(port)?;
            let new = f(cw);
            // SeqCst (AcqRel at least): Release publishes the change (and
            // the ABI writes made before it) to the deliver side's Acquire;
            // Acquire sees a concurrent deliverer's ACTIVE/REPLAY change;
            // SeqCst makes it the write half of the late-EOI Dekker pattern.
            match self.0.compare_exchange(cw.0, new.0, SeqCst, Acquire) {
                Ok(_) => return Ok((cw, new)),
                Err(now) => cw = Snapshot(now),
            }
        }
    }

    /// A deliverer of `vcpu` claims the in-flight guard of a port its scan
    /// offered; `None`: a deliverer that runs a port wherever it finds it
    /// (a guest on a real hypervisor, as Linux), never `Foreign`.
    /// `guard: false` and `replay: false` are the weakened variants of the
    /// negative models (no guard taken; no replay request left).
    #[inline(always)]
    pub(super) fn claim(&self, vcpu: Option<u32>, guard: bool, replay: bool) -> Claim {
        // Acquire: pairs with the control plane's Release updates, so the
        // binding and mask reasons read here are the published ones.
        let mut cw = self.load(Acquire);
        if guard && cw.plainly_claimable(vcpu) {
            // The common case, decided by one comparison: bound (here),
            // unmasked, not in flight, not late-EOI; the claim installs
            // `ACTIVE` alone. AcqRel and Acquire: as below.
            match self
                .0
                .compare_exchange(cw.0, cw.0 | ACTIVE, AcqRel, Acquire)
            {
                Ok(_) => return Claim::Held(cw),
                Err(now) => cw = Snapshot(now),
            }
        }
        loop {
            if !cw.is_bound() || cw.is_masked() {
                return Claim::Skip;
            }
            let (new, outcome) = if vcpu.is_some_and(|v| cw.vcpu() != v) {
                // Bound elsewhere now (a rebind moved it). Confirm with a
                // compare-exchange, which reads the latest word, so that the
                // vCPU named is the current one.
                (cw, Claim::Foreign(cw.vcpu()))
            } else if !guard {
                return Claim::Held(cw);
            } else if cw.is_active() {
                // In flight on another vCPU (an older binding). Leave the
                // event pending and ask the runner to re-raise it when it
                // ends, so it is neither lost nor run concurrently (C3).
                // Even when REPLAY looks set already, confirm with a
                // compare-exchange: `cw` may be a stale view of a guard the
                // runner has since released (and re-raised nothing).
                if !replay {
                    return Claim::Skip;
                }
                (Snapshot(cw.0 | REPLAY), Claim::Skip)
            } else {
                (cw.claimed(), Claim::Held(cw))
            };
            // AcqRel. Claim: Acquire makes the previous runner's handler
            // (released with Release) happen before ours; Release lets a
            // closer or rebinder that reads ACTIVE see our claim. Replay
            // request: Release orders our read of the pending bit before the
            // runner's Acquire release, so its re-raise sees that bit.
            // Foreign: as for any update.
            match self.0.compare_exchange(cw.0, new.0, AcqRel, Acquire) {
                Ok(_) => return outcome,
                Err(now) => cw = Snapshot(now),
            }
        }
    }

    /// The guard's holder releases it (see [`Snapshot::released`]);
    /// returns the word just before. `held` is the word the claim
    /// installed ([`Snapshot::claimed`] of what [`Control::claim`]
    /// returned), BOUND with `ACTIVE` and without `REPLAY`; it is the word
    /// still, unless somebody wrote it meanwhile (a close, rebind, mask
    /// change or replay request), so the common end is one
    /// compare-exchange from a value known without a load.
    #[inline(always)]
    pub(super) fn release(&self, held: Snapshot, undo_eoi: bool, blind: bool) -> Snapshot {
        if blind {
            // The weakened release (loom twins only): see `Weaken`.
            // Release: as below.
            self.0.store(held.0 & !ACTIVE, Release);
            return held;
        }
        if !undo_eoi {
            // Release: ends the handler's critical section for the next
            // runner's Acquire (C3). No Acquire: on success the word read is
            // the claim's own (or a control-plane change undone since, which
            // this release does not act on), and a replay request or a close
            // makes it fail. No SeqCst: no late EOI is given back here, so
            // this write is in no store-load pattern; every other writer of
            // the word is a read-modify-write, ordered with this one by the
            // word's modification order. `held` is BOUND with no replay
            // request: `released` is `ACTIVE` cleared. On failure the loop
            // below reads the word again with its own compare-exchange.
            if let Err(now) = self
                .0
                .compare_exchange(held.0, held.0 & !ACTIVE, Release, Relaxed)
            {
                return self.release_changed(Snapshot(now), false);
            }
            return held;
        }
        self.release_changed(held, undo_eoi)
    }

    /// The release when the word may have changed since the claim: from
    /// the guess `cw`, until the compare-exchange succeeds.
    #[cold]
    #[inline(never)]
    fn release_changed(&self, mut cw: Snapshot, undo_eoi: bool) -> Snapshot {
        loop {
            // SeqCst (AcqRel at least): Release ends the handler's critical
            // section for the next runner's Acquire (C3); Acquire pairs with
            // a REPLAY request, so its pending bit is visible to the
            // re-raise; SeqCst for the Dekker pattern when a late EOI is
            // given back.
            match self
                .0
                .compare_exchange(cw.0, cw.released(undo_eoi).0, SeqCst, Relaxed)
            {
                Ok(_) => return cw,
                Err(now) => cw = Snapshot(now),
            }
        }
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    /// `check`, and the send's `is_life_of` with its `refusal`, against
    /// their definition, for every state, four generations on each side,
    /// and the other fields set or clear: another generation is `Stale`,
    /// the same one not bound `NotBound`.
    #[test]
    fn check_refuses_exactly_other_lives() {
        let others = [0, ACTIVE | REPLAY | REASONS | LATEEOI | PRIORITY | VCPU];
        for state in [FREE, BOUND, CLOSING, 3] {
            for word_gen in [0u32, 1, 7, u32::MAX] {
                for other in others {
                    let s = Snapshot(((word_gen as u64) << GEN_SHIFT) | other | state);
                    for generation in [0u32, 1, 7, u32::MAX] {
                        let port = Port {
                            number: 1,
                            generation,
                        };
                        let expected = if word_gen != generation {
                            Err(Error::Stale)
                        } else if state != BOUND {
                            Err(Error::NotBound)
                        } else {
                            Ok(())
                        };
                        assert_eq!(s.check(port), expected, "{s:?} {port:?}");
                        // The send's form: the test, then the refusal.
                        let send = if s.is_life_of(port) {
                            Ok(())
                        } else {
                            Err(s.refusal(port))
                        };
                        assert_eq!(send, expected, "send's form: {s:?} {port:?}");
                    }
                }
            }
        }
    }
}
