//! `ops`: the differential target.
//!
//! The input picks an ABI ([`Abi`]) and its size, then decodes into a
//! sequence of control-plane operations — bind (both modes), send, mask,
//! unmask, mask-until-EOI, EOI, set_affinity, set_priority, close, upcall on
//! vCPU k (with or without a budget of 0..=4 handler runs), port and status
//! look-ups, handles of other instances and lives — run single-threaded on
//! the real [`Channels`] and on [`Model`], a reference model of plain
//! per-port records and per-vCPU flags (and, for the 2-level ABI, its
//! selectors; for the FIFO ABI, its queues). Handlers run further
//! operations, nested up to [`MAX_DEPTH`] deep: that is how a single thread
//! reaches the in-flight cases (a rebind, send, close or upcall on another
//! vCPU while a handler runs), as `tests/api.rs` does by hand.
//!
//! Compared, at every step:
//!
//! * every result and every error (C8), and for an error that nothing
//!   changed (every shared word, every status, no kick);
//! * every delivery as it happens: the port is bound there, in this life,
//!   unmasked, pending and not in flight (C3, C4, C5, C6); the handle count
//!   `upcall` returns;
//! * at the end of an upcall, that no port it should have run is left (C1)
//!   unless its budget ran out, and then that its flag is up with no kick;
//!   for an undisturbed upcall, the ABI's order ([`AbiUnderTest`]) cut to
//!   its budget: one round-robin pass (2-level), strict priority and then
//!   link order (FIFO);
//! * every kick, against the upcall flag the model keeps (C2), and that a
//!   vCPU with work has its upcall flag up;
//! * every port's status and every vCPU's upcall flag, and between top-level
//!   operations the ABI's own words ([`AbiUnderTest::check_quiescent`]).
//!
//! The model is deliberately not the implementation: it knows nothing of
//! control words or compare-exchanges, and keeps each ABI's shared state as
//! the ABI's specification states it, not as the core computes it.
//!
//! For the 2-level ABI the model keeps the selectors ([`Selectors`]) and
//! follows each upcall's scan port by port: a raise sets its word's bit in
//! its vCPU's selector and, if that bit was clear, the flag (a flag that
//! was clear is a kick); an upcall clears the flag, swaps the selector out
//! and offers, from just after its handle's cursor (the last port offered:
//! a vCPU's top-level handle keeps it from upcall to upcall, a nested
//! upcall's fresh handle starts at port 0), the pending unmasked ports of
//! the selected words in round-robin order, each word read when the scan
//! reaches it (the start word once, for both its parts); a port offered is
//! run if bound here, unmasked, pending and not in flight, and one in
//! flight is left to its runner's replay; another pass follows while the
//! flag is up again. Out of budget — the budget asked before each port
//! offered — the upcall gives back every selector bit its pass swapped out
//! (a word fully offered too) and sets its flag without a kick; its handle
//! resumes after the last port offered. So each delivery, kick, flag and
//! selector is exact, nested upcalls on the same vCPU included.
//!
//! For the FIFO ABI the model keeps the queues the ABI specifies
//! ([`Queues`]) and follows each upcall's scan head by head, so it knows
//! everything exactly: an event is linked — at the tail of queue (its vCPU,
//! its priority *then*), timestamped by the model's clock — when a raise
//! finds it pending, unmasked and on no queue: a send that makes it
//! pending, the unmask (or EOI, or rebind) that removes its last mask
//! reason, a handler's end that replays an event left to it, and the scan
//! that takes it off the queue of a vCPU it is no longer bound to. An event
//! still linked is not linked again: a rebind or a priority change applies
//! from its next link, and it is run once where it is. So each delivery is
//! compared with the head the model's scan reaches; every kick, flag, ready
//! bit, queue head and event word (`LINKED` and the link included) is
//! exact; an event linked on a vCPU it has left is that vCPU's work until
//! its upcall relinks it, so the final drain runs the vCPUs twice. An
//! upcall stops before a head once its own bound (twice the ports) or, when
//! that still has room, the caller's budget is spent: the queues it holds
//! go back to the control block (their `ready` bits, and heads naming their
//! fronts) and its flag goes up without a kick.
//!
//! # Adding an ABI
//!
//! Add a variant to [`Abi`] (and to [`Abi::ALL`]) and its arm in
//! [`run_with`], and implement [`AbiUnderTest`] for the new `PortOps` type
//! (whether it queues, its drain rounds, its sizes, its raw words, its
//! delivery order, its quiescent invariants). An operation only one ABI
//! gives meaning to is an [`Op`] both run (`SetPriority`: the 2-level ABI
//! records the priority and ignores it); its model effect is on [`Slot`],
//! which statuses are compared against. [`Ready::priority`] and
//! [`Ready::raised_at`] are what a priority-queue order check needs.

use std::collections::VecDeque;
use std::fmt::Debug;
use std::sync::atomic::Ordering::SeqCst;

use evtchn::xen::fifo::{BUSY, LINKED, LINK_MASK, MASKED, MAX_QUEUES, PENDING};
use evtchn::InProcess;
use evtchn::{
    Bind, Channels, Error, Fifo, FifoMemory, Memory2l, OwnedFifo, OwnedMemory, Port, PortOps,
    State, Status, TwoLevel, Vcpu,
};

use super::{Input, Kicks};

/// Operations per input, top-level and nested together.
pub const MAX_OPS: usize = 400;
/// How deep handlers may nest operations (a handler's upcall's handler...).
pub const MAX_DEPTH: u32 = 3;
/// Handles remembered for later operations (oldest forgotten first).
const MAX_HANDLES: usize = 48;
/// Xen's default FIFO priority, which every bind sets.
const DEFAULT_PRIORITY: u8 = 7;

/// The ABI an input runs on (its first byte, modulo the number of ABIs).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Abi {
    /// The 2-level ABI over crate-owned memory.
    TwoLevel,
    /// The FIFO ABI over crate-owned memory.
    Fifo,
}

impl Abi {
    /// Every ABI the target knows.
    pub const ALL: [Abi; 2] = [Abi::TwoLevel, Abi::Fifo];

    fn decode(b: u8) -> Abi {
        Self::ALL[usize::from(b) % Self::ALL.len()]
    }
}

/// A deliberately wrong reference model, for the negative tests that show
/// the comparisons can fail (`tests/fuzz_replay.rs`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Sabotage {
    /// The model forgets Xen's spurious event on a Xen-compatible bind.
    XenCompatBindRaisesNothing,
    /// The model's unmask never re-raises a pending port.
    UnmaskForgetsPending,
    /// The model frees a closed port at once, even with its handler running.
    CloseIgnoresInFlight,
    /// The model's FIFO queues ignore priorities: every event is linked on
    /// the default priority's queue.
    FifoIgnoresPriority,
    /// The model's 2-level upcall out of budget gives back no selector bit.
    BudgetDropsSelector,
    /// The model's 2-level upcall out of budget gives back only the
    /// selector bits of words with ports it did not offer (the core gives
    /// back all the pass's bits: a word fully offered comes back too).
    BudgetGivesBackUnoffered,
    /// The model's FIFO upcall out of the caller's budget keeps the queues
    /// it holds instead of handing them back to the control block.
    BudgetKeepsQueues,
}

/// Runs one input on the real core and the model; panics on a divergence.
pub fn run(data: &[u8]) {
    run_with(data, None)
}

/// [`run`], with a deliberately wrong model when `sabotage` says so.
pub fn run_with(data: &[u8], sabotage: Option<Sabotage>) {
    let mut input = Input::new(data);
    match Abi::decode(input.byte()) {
        Abi::TwoLevel => drive::<TwoLevel<OwnedMemory>>(input, sabotage),
        Abi::Fifo => drive::<Fifo<OwnedFifo>>(input, sabotage),
    }
}

// ---------------------------------------------------------------------------
// What the target needs of an ABI
// ---------------------------------------------------------------------------

/// A port the model expects an upcall to run, as the order check sees it.
#[derive(Clone, Copy, Debug)]
pub struct Ready {
    /// The port number.
    pub port: u32,
    /// Its priority: for a queued ABI, that of the queue it is linked on
    /// (a priority changed while linked applies from the next link).
    pub priority: u8,
    /// When the raise that made it pending happened (a model clock); for a
    /// queued ABI, when it was linked.
    pub raised_at: u64,
}

/// What the model expects of one port's ABI state between operations.
#[derive(Clone, Copy, Debug)]
pub struct PortExpect {
    /// The ABI's pending state.
    pub pending: bool,
    /// The ABI's mask: set unless the port is bound with no mask reason.
    pub masked: bool,
    /// Never bound: its words are as the memory started (the 2-level mask
    /// is set by `Channels::new`; a FIFO event word is zero from the
    /// mapping of its page).
    pub fresh: bool,
    /// Queued ABIs: linked on a queue, and the port linked after it (0 for
    /// the last).
    pub linked: Option<u32>,
}

/// What the model expects of one vCPU's ABI state between operations.
#[derive(Clone, Copy, Debug, Default)]
pub struct VcpuExpect {
    /// The 2-level ABI: the vCPU's selector (`evtchn_pending_sel`).
    pub selector: u64,
    /// Priorities whose queue is ready (the control block's `ready`).
    pub ready: u32,
    /// Per priority, the port the control block's `head` must name: the
    /// first of a queue none of which has been taken off yet.
    pub heads: [Option<u32>; MAX_QUEUES],
}

/// What the target needs of an ABI beyond [`PortOps`].
pub trait AbiUnderTest: PortOps + Sized {
    /// Whether events are linked on per-(vCPU, priority) queues (the FIFO
    /// ABI), which the model then keeps too.
    const QUEUED: bool;
    /// Upcalls on every vCPU in turn that drain everything once no mask
    /// is left: a queued event linked on a vCPU it is no longer bound to
    /// reaches its own vCPU only through that vCPU's upcall.
    const DRAIN_ROUNDS: usize;
    /// An instance sized from the input (a few ports and vCPUs).
    fn build(input: &mut Input) -> Self;
    /// Every shared word, to show that a failed operation changed nothing.
    fn raw(&self) -> Vec<u64>;
    /// Checks the order of an undisturbed upcall: it ran, in the order
    /// `delivered`, the first `max_runs` (its budget) of `ready` in the
    /// ABI's order (`ready` is in no particular order).
    fn check_order(ready: &[Ready], delivered: &[u32], max_runs: usize) -> Result<(), String>;
    /// Checks the ABI's words between top-level operations (no handler
    /// running): `ports[n]` is what the model expects of port `n`,
    /// `vcpus[v]` of vCPU `v`'s queues.
    fn check_quiescent(&self, ports: &[PortExpect], vcpus: &[VcpuExpect]) -> Result<(), String>;
}

impl AbiUnderTest for TwoLevel<OwnedMemory> {
    const QUEUED: bool = false;
    const DRAIN_ROUNDS: usize = 1;

    fn build(input: &mut Input) -> Self {
        let words = 1 + input.below(2) as usize;
        let vcpus = 1 + input.below(4) as usize;
        TwoLevel::new(OwnedMemory::new(words, vcpus))
    }

    fn raw(&self) -> Vec<u64> {
        let m = self.memory();
        let words = m.pending().iter().chain(m.mask()).map(|w| w.load(SeqCst));
        let vcpus = (0..m.nr_vcpus())
            .filter_map(|v| m.vcpu_info(v))
            .flat_map(|vi| {
                [
                    vi.evtchn_pending_sel.load(SeqCst),
                    u64::from(vi.evtchn_upcall_pending.load(SeqCst)),
                    u64::from(vi.evtchn_upcall_mask.load(SeqCst)),
                ]
            });
        words.chain(vcpus).collect()
    }

    /// One pass of the round-robin scan: ascending port order, starting
    /// anywhere and wrapping around (where it starts depends on where the
    /// handle's last scan stopped), cut to the budget.
    fn check_order(ready: &[Ready], delivered: &[u32], max_runs: usize) -> Result<(), String> {
        let mut sorted: Vec<u32> = ready.iter().map(|r| r.port).collect();
        sorted.sort_unstable();
        let Some(&first) = delivered.first() else {
            return if sorted.is_empty() || max_runs == 0 {
                Ok(())
            } else {
                Err(format!("ran nothing of {sorted:?}"))
            };
        };
        let k = sorted.iter().position(|&p| p == first).unwrap_or(0);
        let rotation: Vec<u32> = sorted[k..]
            .iter()
            .chain(&sorted[..k])
            .take(max_runs)
            .copied()
            .collect();
        if rotation == delivered {
            Ok(())
        } else {
            Err(format!(
                "not one round-robin pass over {sorted:?}: {delivered:?}"
            ))
        }
    }

    fn check_quiescent(&self, ports: &[PortExpect], vcpus: &[VcpuExpect]) -> Result<(), String> {
        let m = self.memory();
        for (n, e) in ports.iter().enumerate() {
            let (w, bit) = (n / 64, 1u64 << (n % 64));
            let pending = m.pending()[w].load(SeqCst) & bit != 0;
            let masked = m.mask()[w].load(SeqCst) & bit != 0;
            if (pending, masked) != (e.pending, e.masked) {
                return Err(format!(
                    "port {n}: ABI pending/masked {pending}/{masked}, model {}/{}",
                    e.pending, e.masked
                ));
            }
        }
        for (v, vi) in (0..m.nr_vcpus()).filter_map(|v| m.vcpu_info(v)).enumerate() {
            let sel = vi.evtchn_pending_sel.load(SeqCst);
            if vi.evtchn_upcall_pending.load(SeqCst) == 0 && sel != 0 {
                // A selector bit behind a clear flag is a word no upcall
                // will look at until something else raises this vCPU.
                return Err(format!("vCPU {v}: selector {sel:#x} under a clear flag"));
            }
            let want = vcpus.get(v).map_or(0, |e| e.selector);
            if sel != want {
                return Err(format!("vCPU {v}: selector {sel:#x}, model {want:#x}"));
            }
        }
        Ok(())
    }
}

impl AbiUnderTest for Fifo<OwnedFifo> {
    const QUEUED: bool = true;
    const DRAIN_ROUNDS: usize = 2;

    fn build(input: &mut Input) -> Self {
        // Few enough ports that `Fill` and the per-step comparisons stay
        // cheap; all of them on the event array's first page.
        let max_ports = 64 + input.below(137);
        let vcpus = 1 + input.below(4) as usize;
        Fifo::new(OwnedFifo::new(max_ports, vcpus))
    }

    fn raw(&self) -> Vec<u64> {
        let m = self.memory();
        let words = (0..m.max_ports()).map(|p| {
            // An event word not mapped yet reads as the zero it will be.
            m.event_word(p).map_or(0, |w| u64::from(w.load(SeqCst)))
        });
        let vcpus = (0..m.nr_vcpus()).flat_map(|v| {
            let cb = m.control_block(v).unwrap();
            let vi = m.vcpu_info(v).unwrap();
            [
                u64::from(cb.ready.load(SeqCst)),
                vi.evtchn_pending_sel.load(SeqCst),
                u64::from(vi.evtchn_upcall_pending.load(SeqCst)),
                u64::from(vi.evtchn_upcall_mask.load(SeqCst)),
            ]
            .into_iter()
            .chain(cb.head.iter().map(|h| u64::from(h.load(SeqCst))))
        });
        words.chain(vcpus).collect()
    }

    /// Strict priority (0 first), and within one priority the order the
    /// events were linked in; the first `max_runs` of that.
    fn check_order(ready: &[Ready], delivered: &[u32], max_runs: usize) -> Result<(), String> {
        let mut want = ready.to_vec();
        want.sort_unstable_by_key(|r| (r.priority, r.raised_at));
        let want: Vec<u32> = want.iter().map(|r| r.port).take(max_runs).collect();
        if want == delivered {
            Ok(())
        } else {
            Err(format!(
                "not by priority, then link order: want {want:?}, ran {delivered:?} \
                 (ready {ready:?})"
            ))
        }
    }

    fn check_quiescent(&self, ports: &[PortExpect], vcpus: &[VcpuExpect]) -> Result<(), String> {
        let m = self.memory();
        for (n, e) in ports.iter().enumerate() {
            let want = if e.fresh {
                0
            } else {
                let mut w = 0;
                if e.pending {
                    w |= PENDING;
                }
                if e.masked {
                    w |= MASKED;
                }
                if let Some(next) = e.linked {
                    w |= LINKED | (next & LINK_MASK);
                }
                w
            };
            let got = m.event_word(n as u32).map(|w| w.load(SeqCst));
            match got {
                Some(got) if got == want => {}
                None if e.fresh => {}
                _ => {
                    return Err(format!(
                        "port {n}: event word {got:#x?}, model {want:#x} \
                         (PENDING|MASKED|LINKED|BUSY = {PENDING:#x}|{MASKED:#x}|{LINKED:#x}|{BUSY:#x}; {e:?})"
                    ))
                }
            }
        }
        for (v, e) in vcpus.iter().enumerate() {
            let cb = m.control_block(v as u32).unwrap();
            let ready = cb.ready.load(SeqCst);
            if ready != e.ready {
                return Err(format!("vCPU {v}: ready {ready:#x}, model {:#x}", e.ready));
            }
            for (prio, want) in e.heads.iter().enumerate() {
                let head = cb.head[prio].load(SeqCst);
                if want.is_some_and(|w| w != head) {
                    return Err(format!(
                        "vCPU {v}: head of priority {prio} is {head}, model {want:?}"
                    ));
                }
            }
        }
        Ok(())
    }
}

// ---------------------------------------------------------------------------
// The reference model
// ---------------------------------------------------------------------------

/// Lifecycle of a port number.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Life {
    Free,
    Bound,
    /// Closed while its handler runs; free when the handler ends.
    Closing,
}

/// Whether a vCPU found a port in flight and left its event to the runner.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Replay {
    No,
    Yes,
}

/// A vCPU's upcall-pending flag.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Flag {
    Clear,
    Set,
}

/// One port number.
#[derive(Clone, Copy, Debug)]
pub struct Slot {
    life: Life,
    generation: u32,
    vcpu: u32,
    /// FIFO priority; every bind sets the default.
    pub priority: u8,
    explicit: bool,
    eoi: bool,
    pending: bool,
    raised_at: u64,
    in_flight: bool,
    replay: Replay,
}

impl Slot {
    const NEVER_BOUND: Slot = Slot {
        life: Life::Free,
        generation: 0,
        vcpu: 0,
        priority: 0,
        explicit: false,
        eoi: false,
        pending: false,
        raised_at: 0,
        in_flight: false,
        replay: Replay::No,
    };

    fn masked(&self) -> bool {
        self.explicit || self.eoi
    }

    /// Bound to `v`, unmasked, pending and not in flight: an upcall on `v`
    /// must run it.
    fn ready_on(&self, v: u32) -> bool {
        self.life == Life::Bound
            && self.vcpu == v
            && !self.masked()
            && self.pending
            && !self.in_flight
    }
}

/// Kicks an operation must make.
#[derive(Default, Debug)]
struct KickExpect {
    must: Vec<u32>,
}

/// The queue a port is linked on (queued ABIs).
#[derive(Clone, Copy, Debug)]
struct Link {
    vcpu: u32,
    priority: u8,
    /// When it was linked (the model's clock).
    at: u64,
}

/// Where an upcall's scan is, between the handlers the core runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    /// The flag is cleared and the ready queues taken.
    PassStart,
    /// The next queue is chosen, or the pass ends.
    Next,
    /// A queue's head was taken; queues made ready meanwhile are taken.
    Taken,
    Done,
}

/// One upcall's scan of the queues (queued ABIs).
#[derive(Debug)]
struct Scan {
    vcpu: u32,
    /// Ready queues taken and not yet emptied.
    ready: u32,
    /// Heads it may still take before it leaves the rest to the next upcall
    /// (the ABI's own bound).
    budget: u32,
    /// The caller's budget: handler runs it may make.
    max_runs: usize,
    /// Handler runs it made.
    ran: usize,
    /// Out of budget (either): it handed its queues back.
    deferred: bool,
    phase: Phase,
}

/// A 2-level scan position (the `Vcpu` handle's cursor): the last port
/// offered, as word and bit.
#[derive(Clone, Copy, Debug, Default)]
struct Cursor2l {
    word: u32,
    bit: u32,
}

/// Where a 2-level upcall's scan is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Pass {
    /// The flag is cleared and the selector swapped out.
    Start,
    /// Offering the bits of one word after another.
    Offer,
    Done,
}

/// One upcall's scan of the 2-level selector and words.
#[derive(Debug)]
struct Scan2l {
    vcpu: u32,
    /// Runs through the vCPU's persistent handle (top level), whose cursor
    /// carries over; else a fresh handle's, from port 0.
    persistent: bool,
    cursor: Cursor2l,
    max_runs: usize,
    ran: usize,
    deferred: bool,
    /// The selector bits the current pass swapped out.
    sel: u64,
    /// The pass's words still to offer, in order: word, the bits of it to
    /// offer, and the word as loaded at the pass's start (the start word,
    /// read once for both of its parts), else loaded when reached.
    words: VecDeque<(u32, u64, Option<u64>)>,
    /// The word being offered, and its bits not offered yet.
    word: u32,
    bits: u64,
    pass: Pass,
}

/// The 2-level ABI's selectors as its specification states them: a raise
/// of a port of word `w` on vCPU `v` sets bit `w` of `v`'s selector and,
/// if that bit was clear, `v`'s upcall flag (a flag that was clear is a
/// kick). An upcall clears the flag, swaps the selector out and offers, in
/// round-robin order from just after its cursor, the pending unmasked
/// ports of every word selected, reading each word when it reaches it;
/// it starts another pass while the flag is set again. Out of budget it
/// gives back the whole pass's selector bits and sets the flag (no kick).
struct Selectors {
    /// Per vCPU: `evtchn_pending_sel`.
    sel: Vec<u64>,
    /// Per vCPU: the cursor of its persistent handle.
    cursors: Vec<Cursor2l>,
    /// The scans of the upcalls running, innermost last.
    scans: Vec<Scan2l>,
}

/// The pending, unmasked ports of 2-level word `w` (an ABI mask is set on
/// every port not bound or with a mask reason).
fn word_bits(slots: &[Slot], w: u32) -> u64 {
    let first = w as usize * 64;
    let mut bits = 0;
    for (b, s) in slots.iter().skip(first).take(64).enumerate() {
        if s.pending && s.life == Life::Bound && !s.masked() {
            bits |= 1u64 << b;
        }
    }
    bits
}

/// The FIFO ABI's queues as its specification states them: a raised event
/// that is pending, unmasked and not already on a queue is linked at the
/// tail of queue (its vCPU, its priority); a queue that was empty becomes
/// ready (the control block's `ready` bit), and a ready bit that was clear
/// raises the vCPU's upcall flag. An upcall takes the ready queues, then
/// always the head of the highest-priority one, runs it if it is pending,
/// unmasked and bound here, relinks it on its vCPU if it is bound elsewhere,
/// and takes queues made ready meanwhile after every head.
struct Queues {
    /// Per port: the queue it is linked on.
    linked: Vec<Option<Link>>,
    /// Per vCPU and priority: the linked ports, oldest first.
    queues: Vec<Vec<VecDeque<u32>>>,
    /// Per vCPU: queues whose control-block head names a port already
    /// taken off (the queue is then followed through the links only).
    taken_from: Vec<u32>,
    /// Per vCPU: the control block's ready bits.
    ready: Vec<u32>,
    /// The scans of the upcalls running, innermost last.
    scans: Vec<Scan>,
    /// Heads one upcall takes at most.
    budget: u32,
}

impl Queues {
    fn new(nr_ports: u32, nr_vcpus: u32) -> Self {
        let v = nr_vcpus as usize;
        Queues {
            linked: vec![None; nr_ports as usize],
            queues: (0..v)
                .map(|_| (0..MAX_QUEUES).map(|_| VecDeque::new()).collect())
                .collect(),
            taken_from: vec![0; v],
            ready: vec![0; v],
            scans: Vec::new(),
            budget: nr_ports.saturating_mul(2).max(64),
        }
    }
}

/// The reference model: plain per-port records and per-vCPU flags, and for
/// a queued ABI the queues.
pub struct Model {
    slots: Vec<Slot>,
    flags: Vec<Flag>,
    clock: u64,
    sabotage: Option<Sabotage>,
    queues: Option<Queues>,
    selectors: Option<Selectors>,
}

impl Model {
    fn new(nr_ports: u32, nr_vcpus: u32, queued: bool, sabotage: Option<Sabotage>) -> Self {
        Model {
            slots: vec![Slot::NEVER_BOUND; nr_ports as usize],
            flags: vec![Flag::Clear; nr_vcpus as usize],
            clock: 0,
            sabotage,
            queues: queued.then(|| Queues::new(nr_ports, nr_vcpus)),
            selectors: (!queued).then(|| Selectors {
                sel: vec![0; nr_vcpus as usize],
                cursors: vec![Cursor2l::default(); nr_vcpus as usize],
                scans: Vec::new(),
            }),
        }
    }

    fn nr_ports(&self) -> u32 {
        self.slots.len() as u32
    }

    fn nr_vcpus(&self) -> u32 {
        self.flags.len() as u32
    }

    fn sabotaged(&self, s: Sabotage) -> bool {
        self.sabotage == Some(s)
    }

    /// The slot of a live handle, or the error every operation on it gives.
    fn check(&self, p: Port) -> Result<usize, Error> {
        let n = p.number() as usize;
        if n == 0 || n >= self.slots.len() {
            return Err(Error::PortOutOfRange);
        }
        let s = &self.slots[n];
        if s.generation != p.generation() {
            Err(Error::Stale)
        } else if s.life != Life::Bound {
            Err(Error::NotBound)
        } else {
            Ok(n)
        }
    }

    fn check_vcpu(&self, v: u32) -> Result<(), Error> {
        if v < self.nr_vcpus() {
            Ok(())
        } else {
            Err(Error::VcpuOutOfRange)
        }
    }

    fn check_number(&self, n: u32) -> Result<usize, Error> {
        if n == 0 || n >= self.nr_ports() {
            Err(Error::PortOutOfRange)
        } else {
            Ok(n as usize)
        }
    }

    /// Makes port `n` visible to its vCPU: the 2-level ABI sets its word's
    /// selector bit and, if that bit was clear, the vCPU's flag; a queued
    /// ABI links it.
    fn raise(&mut self, n: usize, k: &mut KickExpect) {
        let v = self.slots[n].vcpu;
        if self.queues.is_some() {
            self.link(n, v, k);
            return;
        }
        if let Some(s) = self.selectors.as_mut() {
            let bit = 1u64 << (n / 64);
            if s.sel[v as usize] & bit != 0 {
                // Whoever set the bit owns the flag.
                return;
            }
            s.sel[v as usize] |= bit;
        }
        self.flag_up(v, k);
    }

    /// Raises `v`'s upcall flag; a flag that was clear is a kick.
    fn flag_up(&mut self, v: u32, k: &mut KickExpect) {
        let f = &mut self.flags[v as usize];
        if *f == Flag::Clear {
            k.must.push(v);
        }
        *f = Flag::Set;
    }

    /// Marks port `n` pending; raises it if it was not and is unmasked.
    fn set_pending(&mut self, n: usize, k: &mut KickExpect) {
        let s = &mut self.slots[n];
        if s.pending {
            return; // coalesced
        }
        s.pending = true;
        s.raised_at = self.clock;
        self.clock += 1;
        if !s.masked() {
            self.raise(n, k);
        }
    }

    /// Links port `n` at the tail of queue (`v`, its priority) if it is
    /// pending, unmasked and on no queue.
    fn link(&mut self, n: usize, v: u32, k: &mut KickExpect) {
        let s = self.slots[n];
        let priority = if self.sabotaged(Sabotage::FifoIgnoresPriority) {
            DEFAULT_PRIORITY
        } else {
            s.priority
        };
        let Some(q) = self.queues.as_mut() else {
            return;
        };
        if !s.pending || s.life != Life::Bound || s.masked() || q.linked[n].is_some() {
            return;
        }
        q.linked[n] = Some(Link {
            vcpu: v,
            priority,
            at: self.clock,
        });
        self.clock += 1;
        let (vi, bit) = (v as usize, 1u32 << priority);
        let queue = &mut q.queues[vi][usize::from(priority)];
        queue.push_back(n as u32);
        if queue.len() > 1 {
            return; // appended after a linked tail
        }
        q.taken_from[vi] &= !bit;
        if q.ready[vi] & bit != 0 {
            return;
        }
        q.ready[vi] |= bit;
        self.flag_up(v, k);
    }

    /// An upcall on `v` starts, with a budget of `max_runs` handler runs;
    /// `persistent`: through the vCPU's persistent handle.
    fn upcall_started(&mut self, v: u32, max_runs: usize, persistent: bool) {
        if let Some(q) = self.queues.as_mut() {
            // Every scan starts holding nothing: one that ran out of budget
            // handed its queues back to the control block.
            q.scans.push(Scan {
                vcpu: v,
                ready: 0,
                budget: q.budget,
                max_runs,
                ran: 0,
                deferred: false,
                phase: Phase::PassStart,
            });
        }
        if let Some(s) = self.selectors.as_mut() {
            let cursor = if persistent {
                s.cursors[v as usize]
            } else {
                Cursor2l::default()
            };
            s.scans.push(Scan2l {
                vcpu: v,
                persistent,
                cursor,
                max_runs,
                ran: 0,
                deferred: false,
                sel: 0,
                words: VecDeque::new(),
                word: 0,
                bits: 0,
                pass: Pass::Start,
            });
        }
    }

    /// Runs the innermost upcall's scan to the next port it must run (or
    /// to its end: `None`): for a queued ABI taking off and relinking what
    /// it passes, for the 2-level ABI offering what its words hold.
    fn next_delivery(&mut self, k: &mut KickExpect) -> Option<u32> {
        if self.selectors.is_some() {
            return self.next_delivery_2l(k);
        }
        loop {
            let q = self.queues.as_mut()?;
            let sc = q.scans.last_mut()?;
            let vi = sc.vcpu as usize;
            match sc.phase {
                Phase::PassStart => {
                    self.flags[vi] = Flag::Clear;
                    sc.ready |= std::mem::take(&mut q.ready[vi]);
                    sc.phase = Phase::Next;
                }
                Phase::Next => {
                    if sc.ready == 0 {
                        sc.phase = if self.flags[vi] == Flag::Clear {
                            Phase::Done
                        } else {
                            Phase::PassStart
                        };
                        continue;
                    }
                    // The caller's budget is asked only while the ABI's own
                    // has room.
                    if sc.budget == 0 || sc.ran >= sc.max_runs {
                        // The rest is left to the next upcall, which the
                        // flag asks for.
                        self.flags[vi] = Flag::Set;
                        sc.deferred = true;
                        sc.phase = Phase::Done;
                        return None;
                    }
                    sc.budget -= 1;
                    sc.phase = Phase::Taken;
                    let prio = sc.ready.trailing_zeros() as usize;
                    if let Some(n) = self.take_head(prio, k) {
                        if let Some(sc) = self.queues.as_mut().and_then(|q| q.scans.last_mut()) {
                            sc.ran += 1;
                        }
                        return Some(n);
                    }
                }
                Phase::Taken => {
                    sc.ready |= std::mem::take(&mut q.ready[vi]);
                    sc.phase = Phase::Next;
                }
                Phase::Done => return None,
            }
        }
    }

    /// The innermost scan takes the head of its queue `prio`: returns it if
    /// its handler must run.
    fn take_head(&mut self, prio: usize, k: &mut KickExpect) -> Option<u32> {
        let q = self.queues.as_mut()?;
        let sc = q.scans.last_mut()?;
        let (v, bit) = (sc.vcpu, 1u32 << prio);
        let queue = &mut q.queues[v as usize][prio];
        let head = queue.pop_front();
        if queue.is_empty() {
            sc.ready &= !bit;
            q.taken_from[v as usize] &= !bit;
        } else {
            q.taken_from[v as usize] |= bit;
        }
        let n = head? as usize;
        q.linked[n] = None;
        let s = self.slots[n];
        if !s.pending || s.life != Life::Bound || s.masked() {
            return None;
        }
        if s.vcpu != v {
            // Bound elsewhere since it was linked here.
            self.link(n, s.vcpu, k);
            return None;
        }
        if s.in_flight {
            // Left to the runner, which re-raises it when it ends.
            self.slots[n].replay = Replay::Yes;
            return None;
        }
        Some(n as u32)
    }

    /// The innermost 2-level scan goes on to the next port it must run.
    fn next_delivery_2l(&mut self, k: &mut KickExpect) -> Option<u32> {
        let Model {
            slots,
            flags,
            selectors,
            sabotage,
            ..
        } = self;
        let s = selectors.as_mut()?;
        loop {
            let sc = s.scans.last_mut()?;
            let v = sc.vcpu;
            let vi = v as usize;
            match sc.pass {
                Pass::Start => {
                    flags[vi] = Flag::Clear;
                    sc.sel = std::mem::take(&mut s.sel[vi]);
                    // Just after the cursor: the start word's bits above
                    // it, the other selected words in order (wrapping),
                    // then the start word's bits up to it.
                    let start = sc.cursor.word % 64;
                    let above = match sc.cursor.bit % 64 {
                        63 => 0,
                        b => !0u64 << b << 1,
                    };
                    let start_bits = if sc.sel & (1u64 << start) != 0 {
                        word_bits(slots, start)
                    } else {
                        0
                    };
                    sc.words.clear();
                    sc.words.push_back((start, above, Some(start_bits)));
                    let mut others = (sc.sel & !(1u64 << start)).rotate_right(start);
                    while others != 0 {
                        let w = (others.trailing_zeros() + start) % 64;
                        others &= others - 1;
                        sc.words.push_back((w, !0, None));
                    }
                    sc.words.push_back((start, !above, Some(start_bits)));
                    sc.bits = 0;
                    sc.pass = Pass::Offer;
                }
                Pass::Offer if sc.bits == 0 => match sc.words.pop_front() {
                    Some((w, part, loaded)) => {
                        sc.word = w;
                        sc.bits = loaded.unwrap_or_else(|| word_bits(slots, w)) & part;
                    }
                    // The pass is over; another if the flag is up again.
                    None if flags[vi] == Flag::Clear => sc.pass = Pass::Done,
                    None => sc.pass = Pass::Start,
                },
                Pass::Offer => {
                    if sc.ran >= sc.max_runs {
                        // Out of budget: the pass's selector bits go back
                        // (words fully offered too) and the flag goes up,
                        // with no kick (the vCPU is running).
                        let kept = match sabotage {
                            Some(Sabotage::BudgetDropsSelector) => 0,
                            Some(Sabotage::BudgetGivesBackUnoffered) => {
                                let mut left = 1u64 << sc.word;
                                for &(w, part, loaded) in &sc.words {
                                    if loaded.unwrap_or(!0) & part != 0 {
                                        left |= 1u64 << w;
                                    }
                                }
                                sc.sel & left
                            }
                            _ => sc.sel,
                        };
                        s.sel[vi] |= kept;
                        flags[vi] = Flag::Set;
                        sc.deferred = true;
                        sc.pass = Pass::Done;
                        return None;
                    }
                    let b = sc.bits.trailing_zeros();
                    sc.bits &= sc.bits - 1;
                    sc.cursor = Cursor2l {
                        word: sc.word,
                        bit: b,
                    };
                    let n = (sc.word * 64 + b) as usize;
                    // What the control plane does with the port offered.
                    let slot = &mut slots[n];
                    if slot.life != Life::Bound || slot.masked() {
                        // Closed, or masked (the unmask raises it).
                        continue;
                    }
                    if slot.vcpu != v {
                        // Bound elsewhere: raised there again if still
                        // pending (its selector bit, and the flag if that
                        // bit was clear), as a raiser that had not learned
                        // of the move needs.
                        let to = slot.vcpu as usize;
                        let bit = 1u64 << sc.word;
                        if slot.pending && s.sel[to] & bit == 0 {
                            s.sel[to] |= bit;
                            if flags[to] == Flag::Clear {
                                k.must.push(slot.vcpu);
                            }
                            flags[to] = Flag::Set;
                        }
                        continue;
                    }
                    if slot.in_flight {
                        // Left to the runner, which re-raises it when it
                        // ends.
                        slot.replay = Replay::Yes;
                        continue;
                    }
                    if !slot.pending {
                        // Run since the word was read.
                        continue;
                    }
                    sc.ran += 1;
                    return Some(n as u32);
                }
                Pass::Done => return None,
            }
        }
    }

    /// The innermost upcall's scan ends (its handlers all ran); returns
    /// whether it ran out of budget.
    fn scan_ended(&mut self) -> bool {
        if let Some(s) = self.selectors.as_mut() {
            let Some(sc) = s.scans.pop() else {
                return false;
            };
            if sc.persistent {
                s.cursors[sc.vcpu as usize] = sc.cursor;
            }
            return sc.deferred;
        }
        let keep = self.sabotaged(Sabotage::BudgetKeepsQueues);
        let Some(q) = self.queues.as_mut() else {
            return false;
        };
        let Some(sc) = q.scans.pop() else {
            return false;
        };
        let v = sc.vcpu as usize;
        // A scan that ran out of budget hands the queues it held back to
        // the control block: their ready bits, and heads naming their
        // current fronts, so any handle's next upcall resumes them.
        if !(keep && sc.ran >= sc.max_runs) {
            q.ready[v] |= sc.ready;
            q.taken_from[v] &= !sc.ready;
        }
        sc.deferred
    }

    /// What an upcall on `v` must leave in its upcall flag: set if it ran
    /// out of budget (or work came for a scan on `v` still running).
    fn flag_after_upcall(&self, v: u32) -> bool {
        self.flags[v as usize] == Flag::Set
    }

    fn set_priority(&mut self, p: Port, priority: u8) -> Result<(), Error> {
        if priority > 15 {
            return Err(Error::PriorityOutOfRange);
        }
        let n = self.check(p)?;
        // An event already linked stays on its queue; the next link uses
        // the new priority (the 2-level ABI only records it).
        self.slots[n].priority = priority;
        Ok(())
    }

    fn bind(&mut self, mode: Bind, k: &mut KickExpect) -> Result<(u32, u32), Error> {
        // Xen-compatible binds go to vCPU 0.
        let target = if let Bind::Affinity(v) = mode { v } else { 0 };
        self.check_vcpu(target)?;
        let n = (1..self.slots.len())
            .find(|&n| self.slots[n].life == Life::Free)
            .ok_or(Error::NoFreePort)?;
        let generation = self.slots[n].generation.wrapping_add(1);
        self.slots[n] = Slot {
            life: Life::Bound,
            generation,
            vcpu: target,
            priority: DEFAULT_PRIORITY,
            ..Slot::NEVER_BOUND
        };
        if mode == Bind::XenCompat && !self.sabotaged(Sabotage::XenCompatBindRaisesNothing) {
            self.set_pending(n, k);
        }
        Ok((n as u32, generation))
    }

    fn send(&mut self, p: Port, k: &mut KickExpect) -> Result<(), Error> {
        let n = self.check(p)?;
        self.set_pending(n, k);
        Ok(())
    }

    fn mask(&mut self, p: Port, eoi: bool) -> Result<(), Error> {
        let n = self.check(p)?;
        if eoi {
            self.slots[n].eoi = true;
        } else {
            self.slots[n].explicit = true;
        }
        Ok(())
    }

    /// Removes a mask reason; the last one gone re-raises a pending port.
    fn unmask(&mut self, p: Port, eoi: bool, k: &mut KickExpect) -> Result<(), Error> {
        let n = self.check(p)?;
        let s = &mut self.slots[n];
        if eoi && !s.eoi {
            return Err(Error::NotEoiPending);
        }
        let was = s.masked();
        if eoi {
            s.eoi = false;
        } else {
            s.explicit = false;
        }
        if was && !s.masked() && s.pending && !self.sabotaged(Sabotage::UnmaskForgetsPending) {
            self.raise(n, k);
        }
        Ok(())
    }

    fn set_affinity(&mut self, p: Port, v: u32, k: &mut KickExpect) -> Result<(), Error> {
        self.check_vcpu(v)?;
        let n = self.check(p)?;
        let s = &mut self.slots[n];
        if s.vcpu == v {
            return Ok(());
        }
        s.vcpu = v;
        // Mask, rebind, unmask: the unmask re-raises on the new vCPU.
        if !s.masked() && s.pending {
            self.raise(n, k);
        }
        Ok(())
    }

    fn close(&mut self, p: Port) -> Result<(), Error> {
        let n = self.check(p)?;
        let keep_closing = !self.sabotaged(Sabotage::CloseIgnoresInFlight);
        let s = &mut self.slots[n];
        s.life = if s.in_flight && keep_closing {
            Life::Closing
        } else {
            Life::Free
        };
        s.explicit = false;
        s.eoi = false;
        s.replay = Replay::No;
        // Freed: the hypervisor's close clears the pending state (Xen's
        // `evtchn_free`); a port still closing keeps it until its handler
        // ends and the close reaches the hypervisor.
        if s.life == Life::Free {
            s.pending = false;
        }
        Ok(())
    }

    fn lookup(&self, n: u32) -> Result<(u32, u32), Error> {
        let i = self.check_number(n)?;
        let s = &self.slots[i];
        if s.life != Life::Bound {
            return Err(Error::NotBound);
        }
        Ok((n, s.generation))
    }

    /// What an upcall on `v` must run, now. For a queued ABI, only what is
    /// linked on `v`'s queues (an event linked on another vCPU reaches `v`
    /// through that vCPU's upcall).
    fn ready(&self, v: u32) -> Vec<Ready> {
        self.slots
            .iter()
            .enumerate()
            .filter(|(_, s)| s.ready_on(v))
            .filter_map(|(n, s)| match &self.queues {
                None => Some(Ready {
                    port: n as u32,
                    priority: s.priority,
                    raised_at: s.raised_at,
                }),
                Some(q) => q.linked[n].filter(|l| l.vcpu == v).map(|l| Ready {
                    port: n as u32,
                    priority: l.priority,
                    raised_at: l.at,
                }),
            })
            .collect()
    }

    /// A handler of `p` starts on `v`: checks that it may.
    fn deliver(&mut self, v: u32, p: Port) -> Result<(), String> {
        let n = self
            .check(p)
            .map_err(|e| format!("ran a handler of {p:?} on vCPU {v}, which is {e:?}"))?;
        let s = &mut self.slots[n];
        let why = if s.vcpu != v {
            Some("bound to another vCPU (C5)")
        } else if s.masked() {
            Some("masked (C4)")
        } else if !s.pending {
            Some("not pending (run twice for one send?)")
        } else if s.in_flight {
            Some("already in flight (C3)")
        } else {
            None
        };
        if let Some(why) = why {
            return Err(format!("ran {p:?} on vCPU {v}, but it is {why}: {s:?}"));
        }
        s.pending = false;
        s.in_flight = true;
        Ok(())
    }

    /// The handler of port `n` ended: a closing port is freed, and an event
    /// another vCPU left for it is raised on its current vCPU.
    fn release(&mut self, n: usize, k: &mut KickExpect) {
        let s = &mut self.slots[n];
        s.in_flight = false;
        let replay = std::mem::replace(&mut s.replay, Replay::No);
        match s.life {
            Life::Closing => {
                s.life = Life::Free;
                s.pending = false;
            }
            Life::Bound if s.pending && !s.masked() => match replay {
                Replay::Yes => self.raise(n, k),
                Replay::No => {}
            },
            _ => {}
        }
    }

    /// An upcall on `v` ended. `outermost`: no other upcall on `v` is still
    /// running (one would own the raises this one's scan did not see).
    fn upcall_ended(&mut self, v: u32, outermost: bool) -> Result<(), String> {
        // The scan was followed step by step: it ran what the model says
        // (else `next_delivery` said what it missed), and the flag is known.
        let deferred = self.scan_ended();
        if self.queues.is_some() || !outermost || deferred {
            // A queued ABI's queues are checked by `next_delivery`; an
            // outer scan on `v` may still offer what this one did not; what
            // a scan out of budget left is checked between operations.
            return Ok(());
        }
        // Whatever the model's scan did: nothing ready here is left.
        for (n, s) in self.slots.iter().enumerate() {
            if s.ready_on(v) {
                return Err(format!(
                    "lost event (C1): port {n} is pending, unmasked and bound to \
                     vCPU {v} after its upcall: {s:?}"
                ));
            }
        }
        Ok(())
    }

    fn expect_ports(&self, nr_abi_ports: u32) -> Vec<PortExpect> {
        let mut next = vec![None; nr_abi_ports as usize];
        if let Some(q) = &self.queues {
            for queue in q.queues.iter().flatten() {
                for (i, &n) in queue.iter().enumerate() {
                    if let Some(x) = next.get_mut(n as usize) {
                        *x = Some(queue.get(i + 1).copied().unwrap_or(0));
                    }
                }
            }
        }
        (0..nr_abi_ports as usize)
            .map(|n| match self.slots.get(n) {
                Some(s) if n > 0 => PortExpect {
                    pending: s.pending,
                    masked: s.life != Life::Bound || s.masked(),
                    fresh: s.generation == 0,
                    linked: next[n],
                },
                _ => PortExpect {
                    pending: false,
                    masked: true,
                    fresh: true,
                    linked: None,
                },
            })
            .collect()
    }

    fn expect_vcpus(&self) -> Vec<VcpuExpect> {
        let Some(q) = &self.queues else {
            let sel = self.selectors.as_ref().map_or(&[][..], |s| &s.sel[..]);
            return sel
                .iter()
                .map(|&selector| VcpuExpect {
                    selector,
                    ..VcpuExpect::default()
                })
                .collect();
        };
        (0..self.flags.len())
            .map(|v| {
                let mut e = VcpuExpect {
                    ready: q.ready[v],
                    ..VcpuExpect::default()
                };
                for (prio, queue) in q.queues[v].iter().enumerate() {
                    if q.taken_from[v] & (1 << prio) == 0 {
                        e.heads[prio] = queue.front().copied();
                    }
                }
                e
            })
            .collect()
    }
}

/// A `Port` with this number and generation, made the only way a caller
/// can: by binding on a side instance (closing and re-binding for later
/// generations).
fn forge(n: u32, generation: u32) -> Option<Port> {
    if n == 0 || generation == 0 || n >= evtchn::xen::NR_EVENT_CHANNELS_2L {
        return None;
    }
    let side = Channels::new(TwoLevel::new(OwnedMemory::new(n as usize / 64 + 1, 1)), ());
    let mut p = side.bind(Bind::Affinity(0)).ok()?;
    while p.number() < n {
        p = side.bind(Bind::Affinity(0)).ok()?;
    }
    while p.generation() < generation {
        side.close(p).ok()?;
        p = side.bind(Bind::Affinity(0)).ok()?;
    }
    Some(p)
}

// ---------------------------------------------------------------------------
// Operations
// ---------------------------------------------------------------------------

#[derive(Clone, Copy, Debug)]
enum Op {
    Bind(Bind),
    Send(Port),
    Mask(Port),
    Unmask(Port),
    MaskUntilEoi(Port),
    Eoi(Port),
    SetAffinity(Port, u32),
    /// Any value up to 20 (above 15 is out of range).
    SetPriority(Port, u8),
    Close(Port),
    Upcall(u32),
    /// An upcall that makes at most this many handler runs
    /// ([`Vcpu::upcall_budget`]).
    UpcallBudget(u32, usize),
    Lookup(u32),
    Status(u32),
    UpcallPending(u32),
    /// Bind until every port is taken (reaches `NoFreePort`).
    Fill,
    /// Remember a handle of a side instance: another life, or a number
    /// this instance does not have.
    Forge(u32, u32),
}

type Ch<A> = Channels<A, Kicks>;

/// Everything but the core: the input, the model, the handles, the kicks
/// expected, the trace for failure messages.
struct St<'i> {
    input: Input<'i>,
    model: Model,
    handles: Vec<Port>,
    expect: KickExpect,
    ops: usize,
    /// vCPUs with an upcall running, outermost first.
    active: Vec<u32>,
    trace: Vec<(u32, Op)>,
}

impl St<'_> {
    #[track_caller]
    fn fail(&self, msg: impl std::fmt::Display) -> ! {
        let tail = self.trace.len().saturating_sub(40);
        let mut t = String::new();
        for (depth, op) in &self.trace[tail..] {
            t.push_str(&format!("\n  {}{op:?}", "  ".repeat(*depth as usize)));
        }
        panic!("ops: {msg}\nlast operations (of {}):{t}", self.trace.len());
    }

    fn budget_left(&self) -> bool {
        self.ops < MAX_OPS && !self.input.is_empty()
    }

    fn remember(&mut self, p: Port) {
        if self.handles.len() >= MAX_HANDLES {
            self.handles.remove(0);
        }
        self.handles.push(p);
    }

    fn vcpu_arg(&mut self) -> u32 {
        let nv = self.model.nr_vcpus();
        match self.input.byte() {
            b @ 0..=247 => u32::from(b) % (nv + 1),
            248 => 0xffff,
            249 => 0x1_0000,
            250 => u32::MAX,
            b => nv + u32::from(b),
        }
    }

    fn number_arg(&mut self) -> u32 {
        let np = self.model.nr_ports();
        match self.input.byte() {
            b @ 0..=249 => u32::from(b) % (np + 1),
            250 => np,
            251 => u32::MAX,
            252 => 4096,
            b => np + u32::from(b),
        }
    }

    /// A handle: the port being handled, or a remembered one.
    fn pick(&mut self, current: Option<Port>) -> Option<Port> {
        let b = self.input.byte();
        match current {
            Some(c) if b & 1 == 0 || self.handles.is_empty() => Some(c),
            _ if self.handles.is_empty() => None,
            _ => Some(self.handles[usize::from(b) % self.handles.len()]),
        }
    }

    fn decode(&mut self, current: Option<Port>) -> Op {
        let code = self.input.byte() % 16;
        let with = |st: &mut Self, f: fn(Port) -> Op| match st.pick(current) {
            Some(p) => f(p),
            None => Op::Bind(Bind::Affinity(0)),
        };
        match code {
            0..=2 => with(self, Op::Send),
            3 => Op::Bind(Bind::XenCompat),
            4 => Op::Bind(Bind::Affinity(self.vcpu_arg())),
            5 => with(self, Op::Mask),
            6 => with(self, Op::Unmask),
            7 => with(self, Op::MaskUntilEoi),
            8 => with(self, Op::Eoi),
            9 => match self.pick(current) {
                Some(p) => Op::SetAffinity(p, self.vcpu_arg()),
                None => Op::Bind(Bind::Affinity(0)),
            },
            10 => with(self, Op::Close),
            11 => Op::Upcall(self.vcpu_arg()),
            12 => match self.pick(current) {
                Some(p) => Op::SetPriority(p, self.input.byte() % 21),
                None => Op::Bind(Bind::Affinity(0)),
            },
            13 => match self.input.byte() % 3 {
                0 => Op::Lookup(self.number_arg()),
                1 => Op::Status(self.number_arg()),
                _ => Op::UpcallPending(self.vcpu_arg()),
            },
            14 => Op::Forge(self.number_arg(), 1 + self.input.below(4)),
            // The low three bits of the next byte: 0 fills, 7 runs an
            // upcall with a budget (its five bits above: 0..=4 handler
            // runs), the rest an upcall without one. A budget that is not
            // used up leaves an upcall as it is without one, and the op
            // reads the same bytes either way, so inputs written before
            // budgets existed keep their meaning unless a budget runs out.
            _ => {
                let b = self.input.byte();
                match b & 7 {
                    0 => Op::Fill,
                    7 => Op::UpcallBudget(self.vcpu_arg(), usize::from(b >> 3) % 5),
                    _ => Op::Upcall(self.vcpu_arg()),
                }
            }
        }
    }

    /// Compares the kicks made since the last call with those expected.
    fn settle<A: AbiUnderTest>(&mut self, ch: &Ch<A>) {
        let mut got = ch.notifier().take();
        let KickExpect { mut must } = std::mem::take(&mut self.expect);
        got.sort_unstable();
        must.sort_unstable();
        if got != must {
            self.fail(format!("kicks (C2): got {got:?}, model {must:?}"));
        }
    }

    /// Compares every status and every upcall flag with the model.
    fn check_state<A: AbiUnderTest>(&mut self, ch: &Ch<A>) {
        for n in 1..self.model.nr_ports() {
            let got = match ch.status(n) {
                Ok(s) => s,
                Err(e) => self.fail(format!("status({n}) = {e:?}")),
            };
            if let Err(msg) = status_agrees(&got, &self.model.slots[n as usize]) {
                self.fail(format!("status of port {n}: {msg}"));
            }
        }
        for v in 0..self.model.nr_vcpus() {
            let got = match ch.upcall_pending(v) {
                Ok(b) => b,
                Err(e) => self.fail(format!("upcall_pending({v}) = {e:?}")),
            };
            let want = self.model.flags[v as usize];
            if got != (want == Flag::Set) {
                self.fail(format!("upcall flag of vCPU {v}: {got}, model {want:?}"));
            }
        }
    }

    /// Between top-level operations: the ABI's words, and a vCPU with work
    /// has its flag up (else a vCPU could halt on work: C2).
    fn check_quiescent<A: AbiUnderTest>(&mut self, ch: &Ch<A>) {
        let expect = self.model.expect_ports(ch.abi().nr_ports());
        let vcpus = self.model.expect_vcpus();
        if let Err(msg) = ch.abi().check_quiescent(&expect, &vcpus) {
            self.fail(msg);
        }
        for v in 0..self.model.nr_vcpus() {
            let ready = self.model.ready(v);
            if !ready.is_empty() && ch.upcall_pending(v) != Ok(true) {
                self.fail(format!("vCPU {v} has work but no upcall pending (C2)"));
            }
            // 2-level: no scan looks at a word without its selector bit.
            let sel = vcpus.get(v as usize).map_or(0, |e| e.selector);
            if let Some(r) = ready.iter().find(|r| sel & (1 << (r.port / 64)) == 0) {
                if !A::QUEUED {
                    self.fail(format!(
                        "vCPU {v}: port {} is ready, but its word is not in the selector {sel:#x} (C1)",
                        r.port
                    ));
                }
            }
        }
    }
}

fn status_agrees(got: &Status, s: &Slot) -> Result<(), String> {
    let state = match s.life {
        Life::Free => State::Free,
        Life::Bound => State::Bound,
        Life::Closing => State::Closing,
    };
    // Field by field: what a free number reports as its vCPU and priority
    // is not part of the contract (a bind sets both).
    let live = s.life != Life::Free;
    let agrees = got.state == state
        && got.generation == s.generation
        && (!live || (got.vcpu, got.priority) == (s.vcpu, s.priority))
        && got.masked_explicit == s.explicit
        && !got.masked_rebind
        && got.masked_eoi == s.eoi
        && got.pending == s.pending
        && got.in_flight == s.in_flight;
    if agrees {
        Ok(())
    } else {
        Err(format!("core {got:?}\n   model {s:?}"))
    }
}

// ---------------------------------------------------------------------------
// Driving both
// ---------------------------------------------------------------------------

fn drive<A: AbiUnderTest>(mut input: Input, sabotage: Option<Sabotage>) {
    let abi = A::build(&mut input);
    let ch: Ch<A> = Channels::new(abi, Kicks::default());
    let model = Model::new(ch.nr_ports(), ch.nr_vcpus(), A::QUEUED, sabotage);
    let mut st = St {
        input,
        model,
        handles: Vec::new(),
        expect: KickExpect::default(),
        ops: 0,
        active: Vec::new(),
        trace: Vec::new(),
    };
    // One persistent handle per vCPU: their round-robin positions carry over
    // from upcall to upcall, as a real vCPU's do.
    let mut vcpus: Vec<Vcpu<'_, InProcess<A, Kicks>>> =
        (0..ch.nr_vcpus()).map(|v| ch.vcpu(v).unwrap()).collect();
    st.check_state(&ch);
    st.check_quiescent(&ch);
    while st.budget_left() {
        let op = st.decode(None);
        exec(&ch, &mut st, op, 0, Some(&mut vcpus));
        st.check_quiescent(&ch);
    }
    // Finally: lift every mask and drain every vCPU; nothing is left (C1).
    for n in 1..st.model.nr_ports() {
        let Ok(p) = ch.port(n) else { continue };
        for op in [Op::Unmask(p), Op::Eoi(p)] {
            if op_is_useful(&st.model, op) {
                exec(&ch, &mut st, op, 0, Some(&mut vcpus));
            }
        }
    }
    for _ in 0..A::DRAIN_ROUNDS {
        for v in 0..st.model.nr_vcpus() {
            exec(&ch, &mut st, Op::Upcall(v), 0, Some(&mut vcpus));
        }
    }
    for v in 0..st.model.nr_vcpus() {
        if !st.model.ready(v).is_empty() {
            st.fail(format!("vCPU {v} still has work after the drain"));
        }
    }
    for (n, s) in st.model.slots.iter().enumerate() {
        if s.life == Life::Bound && s.pending {
            st.fail(format!("port {n} still pending after the drain: {s:?}"));
        }
    }
    st.check_quiescent(&ch);
}

fn op_is_useful(m: &Model, op: Op) -> bool {
    match op {
        Op::Eoi(p) => m.check(p).is_ok_and(|n| m.slots[n].eoi),
        _ => true,
    }
}

/// Runs `op` on the core and the model and compares. `vcpus`: the
/// persistent vCPU handles (top level only; nested upcalls use fresh ones).
fn exec<'c, A: AbiUnderTest>(
    ch: &'c Ch<A>,
    st: &mut St,
    op: Op,
    depth: u32,
    vcpus: Option<&mut [Vcpu<'c, InProcess<A, Kicks>>]>,
) {
    st.ops += 1;
    st.trace.push((depth, op));
    let mut k = KickExpect::default();
    match op {
        Op::Bind(mode) => {
            let want = st.model.bind(mode, &mut k);
            let got = compare(ch, st, "bind", want, || ch.bind(mode), key);
            if let Ok(p) = got {
                st.remember(p);
            }
        }
        Op::Send(p) => {
            let want = st.model.send(p, &mut k);
            let _ = compare(ch, st, "send", want, || ch.send(p), same);
        }
        Op::Mask(p) => {
            let want = st.model.mask(p, false);
            let _ = compare(ch, st, "mask", want, || ch.mask(p), same);
        }
        Op::MaskUntilEoi(p) => {
            let want = st.model.mask(p, true);
            let _ = compare(
                ch,
                st,
                "mask_until_eoi",
                want,
                || ch.mask_until_eoi(p),
                same,
            );
        }
        Op::Unmask(p) => {
            let want = st.model.unmask(p, false, &mut k);
            let _ = compare(ch, st, "unmask", want, || ch.unmask(p), same);
        }
        Op::Eoi(p) => {
            let want = st.model.unmask(p, true, &mut k);
            let _ = compare(ch, st, "eoi", want, || ch.eoi(p), same);
        }
        Op::SetAffinity(p, v) => {
            let want = st.model.set_affinity(p, v, &mut k);
            let _ = compare(ch, st, "set_affinity", want, || ch.set_affinity(p, v), same);
        }
        Op::SetPriority(p, prio) => {
            let want = st.model.set_priority(p, prio);
            let _ = compare(
                ch,
                st,
                "set_priority",
                want,
                || ch.set_priority(p, prio),
                same,
            );
        }
        Op::Close(p) => {
            let want = st.model.close(p);
            let _ = compare(ch, st, "close", want, || ch.close(p), same);
        }
        Op::Lookup(n) => {
            let want = st.model.lookup(n);
            if let Ok(p) = compare(ch, st, "port", want, || ch.port(n), key) {
                st.remember(p);
            }
        }
        Op::Status(n) => {
            let want = st.model.check_number(n).map(|_| ());
            let _ = compare(ch, st, "status", want, || ch.status(n).map(|_| ()), same);
        }
        Op::UpcallPending(v) => {
            if let Err(e) = st.model.check_vcpu(v) {
                let want = Err::<bool, _>(e);
                let _ = compare(
                    ch,
                    st,
                    "upcall_pending",
                    want,
                    || ch.upcall_pending(v),
                    same,
                );
            }
            // In range: compared with the model's flag by `check_state`.
        }
        Op::Fill => {
            for i in 0..st.model.nr_ports() {
                let mode = Bind::Affinity(i % st.model.nr_vcpus());
                let want = st.model.bind(mode, &mut k);
                let full = want.is_err();
                if let Ok(p) = compare(ch, st, "bind (fill)", want, || ch.bind(mode), key) {
                    st.remember(p);
                }
                if full {
                    break;
                }
            }
        }
        Op::Forge(n, generation) => {
            if let Some(p) = forge(n, generation) {
                st.remember(p);
            }
        }
        Op::Upcall(v) => {
            // Kicks so far belong to earlier operations.
            st.settle(ch);
            upcall(ch, st, v, None, depth, vcpus);
        }
        Op::UpcallBudget(v, max_runs) => {
            st.settle(ch);
            upcall(ch, st, v, Some(max_runs), depth, vcpus);
        }
    }
    st.expect.must.append(&mut k.must);
    st.settle(ch);
    st.check_state(ch);
}

/// The model's view of a result.
fn same<T: Copy>(t: &T) -> T {
    *t
}

/// The model's view of a port handle.
fn key(p: &Port) -> (u32, u32) {
    (p.number(), p.generation())
}

/// Runs `real` and compares its result, as `key` sees it, with the model's
/// `want`; for an error, checks that no shared word changed (C8).
fn compare<A: AbiUnderTest, T: Debug, U: PartialEq + Debug>(
    ch: &Ch<A>,
    st: &mut St,
    what: &str,
    want: Result<U, Error>,
    real: impl FnOnce() -> Result<T, Error>,
    key: impl Fn(&T) -> U,
) -> Result<T, Error> {
    let before = want.is_err().then(|| ch.abi().raw());
    let got = real();
    if got.as_ref().map(&key).map_err(|e| *e) != want {
        st.fail(format!("{what}: core {got:?}, model {want:?}"));
    }
    if let Some(before) = before {
        if ch.abi().raw() != before {
            st.fail(format!(
                "{what} failed ({got:?}) but changed shared memory (C8)"
            ));
        }
    }
    got
}

/// An upcall on `v`, with a budget of `max_runs` handler runs if given.
fn upcall<'c, A: AbiUnderTest>(
    ch: &'c Ch<A>,
    st: &mut St,
    v: u32,
    max_runs: Option<usize>,
    depth: u32,
    vcpus: Option<&mut [Vcpu<'c, InProcess<A, Kicks>>]>,
) {
    let mut fresh;
    let persistent;
    let handle = match vcpus.and_then(|hs| hs.get_mut(v as usize)) {
        Some(h) => {
            persistent = true;
            h
        }
        None => {
            persistent = false;
            let want = st.model.check_vcpu(v);
            match (ch.vcpu(v), want) {
                (Ok(h), Ok(())) => {
                    fresh = h;
                    &mut fresh
                }
                (Err(e), Err(w)) if e == w => return,
                (got, want) => st.fail(format!(
                    "vcpu({v}): core {:?}, model {want:?}",
                    got.map(|h| h.id())
                )),
            }
        }
    };
    let outermost = !st.active.contains(&v);
    let ready = st.model.ready(v);
    let limit = max_runs.unwrap_or(usize::MAX);
    st.model.upcall_started(v, limit, persistent);
    st.active.push(v);
    let mut delivered = Vec::new();
    let mut disturbed = false;
    let mut handler = |p: Port| {
        // What the scan passed on the way (a queued ABI: took off and
        // relinked; the 2-level ABI: offered and skipped).
        let mut k = KickExpect::default();
        let next = st.model.next_delivery(&mut k);
        st.expect.must.append(&mut k.must);
        // The kicks of the previous handler's end (a replay's re-raise).
        st.settle(ch);
        if next != Some(p.number()) {
            st.fail(format!(
                "upcall({v}) ran {p:?}, but the model's scan gives {next:?}"
            ));
        }
        if let Err(msg) = st.model.deliver(v, p) {
            st.fail(msg);
        }
        delivered.push(p.number());
        let nested = if depth < MAX_DEPTH && st.budget_left() {
            st.input.below(4)
        } else {
            0
        };
        for _ in 0..nested {
            if !st.budget_left() {
                break;
            }
            disturbed = true;
            let op = st.decode(Some(p));
            exec(ch, st, op, depth + 1, None);
        }
        let mut k = KickExpect::default();
        st.model.release(p.number() as usize, &mut k);
        st.expect = k;
    };
    let got = match max_runs {
        None => handle.upcall(&mut handler),
        Some(m) => handle.upcall_budget(m, &mut handler),
    };
    st.active.pop();
    match got {
        Ok(n) if n == delivered.len() => {}
        other => st.fail(format!(
            "upcall({v}) = {other:?} after running {} handlers",
            delivered.len()
        )),
    }
    let mut k = KickExpect::default();
    if let Some(n) = st.model.next_delivery(&mut k) {
        st.fail(format!(
            "lost event (C1): upcall({v}) returned, but the model's scan still \
             has port {n} to run"
        ));
    }
    st.expect.must.append(&mut k.must);
    st.settle(ch);
    // Down, unless the scan ran out of budget (the next upcall goes on) or
    // an outer scan on `v` has work coming.
    let up = st.model.flag_after_upcall(v);
    let got = ch.upcall_pending(v);
    if got != Ok(up) {
        st.fail(format!(
            "upcall({v}) returned with its upcall flag {got:?}, model {up}"
        ));
    }
    if let Err(msg) = st.model.upcall_ended(v, outermost) {
        st.fail(msg);
    }
    if outermost && !disturbed {
        if let Err(msg) = A::check_order(&ready, &delivered, limit) {
            st.fail(format!("upcall({v}) order: {msg}"));
        }
    }
}
