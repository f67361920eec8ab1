//! `ops`: the differential target.
//!
//! The input picks an ABI ([`Abi`]) and its size, then decodes into a
//! sequence of control-plane operations — bind (both modes), send, mask,
//! unmask, mask-until-EOI, EOI, set_affinity, set_priority, close, upcall on
//! vCPU k, port and status look-ups, handles of other instances and lives —
//! run single-threaded on the real [`Channels`] and on [`Model`], a
//! reference model of plain per-port records and per-vCPU flags (and, for
//! the FIFO ABI, its queues). Handlers run further
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
//! * at the end of an upcall, that no port it should have run is left (C1);
//!   for an undisturbed upcall, the ABI's order ([`AbiUnderTest`]): one
//!   round-robin pass (2-level), strict priority and then link order (FIFO);
//! * every kick, against the upcall flag the model keeps (C2), and that a
//!   vCPU with work has its upcall flag up;
//! * every port's status and every vCPU's upcall flag, and between top-level
//!   operations the ABI's own words ([`AbiUnderTest::check_quiescent`]).
//!
//! The model is deliberately not the implementation: it knows nothing of
//! selectors, control words or compare-exchanges. Where single-threaded
//! nesting makes the real core's behaviour depend on its scan's pass
//! boundaries (which the model does not see), the model says "either" (a
//! [`Flag::Unknown`] upcall flag, a [`Replay::Maybe`]) rather than guess.
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
//! its upcall relinks it, so the final drain runs the vCPUs twice.
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
use std::sync::Mutex;

use evtchn::abi::fifo::{BUSY, LINKED, LINK_MASK, MASKED, MAX_QUEUES, PENDING};
use evtchn::{
    Bind, Channels, Error, Fifo, FifoMemory, Memory2l, Notify, OwnedFifo, OwnedMemory, Port,
    PortOps, State, Status, TwoLevel, Vcpu,
};

use super::Input;

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

/// What the model expects of one vCPU's queues (queued ABIs only).
#[derive(Clone, Copy, Debug, Default)]
pub struct VcpuExpect {
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
    /// Checks the order of an undisturbed upcall: it ran exactly `ready`
    /// (in no particular order), in the order `delivered`.
    fn check_order(ready: &[Ready], delivered: &[u32]) -> Result<(), String>;
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
        let vcpus = m.vcpu_info().iter().flat_map(|vi| {
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
    /// handle's last scan stopped).
    fn check_order(ready: &[Ready], delivered: &[u32]) -> Result<(), String> {
        let mut sorted: Vec<u32> = ready.iter().map(|r| r.port).collect();
        sorted.sort_unstable();
        let Some(&first) = delivered.first() else {
            return if sorted.is_empty() {
                Ok(())
            } else {
                Err(format!("ran nothing of {sorted:?}"))
            };
        };
        let k = sorted.iter().position(|&p| p == first).unwrap_or(0);
        let rotation: Vec<u32> = sorted[k..].iter().chain(&sorted[..k]).copied().collect();
        if rotation == delivered {
            Ok(())
        } else {
            Err(format!(
                "not one round-robin pass over {sorted:?}: {delivered:?}"
            ))
        }
    }

    fn check_quiescent(&self, ports: &[PortExpect], _: &[VcpuExpect]) -> Result<(), String> {
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
        for (v, vi) in m.vcpu_info().iter().enumerate() {
            let sel = vi.evtchn_pending_sel.load(SeqCst);
            if vi.evtchn_upcall_pending.load(SeqCst) == 0 && sel != 0 {
                // A selector bit behind a clear flag is a word no upcall
                // will look at until something else raises this vCPU.
                return Err(format!("vCPU {v}: selector {sel:#x} under a clear flag"));
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
    /// events were linked in.
    fn check_order(ready: &[Ready], delivered: &[u32]) -> Result<(), String> {
        let mut want = ready.to_vec();
        want.sort_unstable_by_key(|r| (r.priority, r.raised_at));
        let want: Vec<u32> = want.iter().map(|r| r.port).collect();
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
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Replay {
    No,
    /// Only if the scan of a nested upcall on a vCPU with an outer upcall
    /// still running offered the port (the outer scan may own the raise).
    Maybe,
    Yes,
}

/// A vCPU's upcall-pending flag as the model knows it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Flag {
    Clear,
    Set,
    /// Set, but an upcall running on this vCPU may have started a new pass
    /// (which clears it) since.
    Unknown,
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

/// Kicks an operation must make, and kicks it may make.
#[derive(Default, Debug)]
struct KickExpect {
    must: Vec<u32>,
    may: Vec<u32>,
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
    /// Heads it may still take before it leaves the rest to the next upcall.
    budget: u32,
    phase: Phase,
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
}

impl Model {
    fn new(nr_ports: u32, nr_vcpus: u32, queued: bool, sabotage: Option<Sabotage>) -> Self {
        Model {
            slots: vec![Slot::NEVER_BOUND; nr_ports as usize],
            flags: vec![Flag::Clear; nr_vcpus as usize],
            clock: 0,
            sabotage,
            queues: queued.then(|| Queues::new(nr_ports, nr_vcpus)),
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

    /// Makes port `n` visible to its vCPU: that vCPU's flag goes up, and a
    /// flag that was clear is a kick. A queued ABI links it instead.
    fn raise(&mut self, n: usize, k: &mut KickExpect) {
        let v = self.slots[n].vcpu;
        if self.queues.is_some() {
            self.link(n, v, k);
            return;
        }
        self.flag_up(v, k);
    }

    /// Raises `v`'s upcall flag; a flag that was clear is a kick.
    fn flag_up(&mut self, v: u32, k: &mut KickExpect) {
        let f = &mut self.flags[v as usize];
        match *f {
            Flag::Clear => k.must.push(v),
            Flag::Set => {}
            Flag::Unknown => k.may.push(v),
        }
        *f = Flag::Set;
    }

    /// A raise that may or may not happen.
    fn maybe_raise(&mut self, n: usize, k: &mut KickExpect) {
        let v = self.slots[n].vcpu;
        let f = &mut self.flags[v as usize];
        match *f {
            Flag::Clear => {
                k.may.push(v);
                *f = Flag::Unknown;
            }
            Flag::Set => {}
            Flag::Unknown => k.may.push(v),
        }
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

    /// An upcall on `v` starts.
    fn upcall_started(&mut self, v: u32) {
        self.flags[v as usize] = Flag::Clear;
        if let Some(q) = self.queues.as_mut() {
            // Every scan starts holding nothing: one that ran out of budget
            // handed its queues back to the control block.
            q.scans.push(Scan {
                vcpu: v,
                ready: 0,
                budget: q.budget,
                phase: Phase::PassStart,
            });
        }
    }

    /// Runs the innermost upcall's scan to the next port it must run (or
    /// to its end: `None`), taking off and relinking what it passes.
    fn next_delivery(&mut self, k: &mut KickExpect) -> Option<u32> {
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
                    if sc.budget == 0 {
                        // The rest is left to the next upcall, which the
                        // flag asks for.
                        self.flags[vi] = Flag::Set;
                        sc.phase = Phase::Done;
                        return None;
                    }
                    sc.budget -= 1;
                    sc.phase = Phase::Taken;
                    let prio = sc.ready.trailing_zeros() as usize;
                    if let Some(n) = self.take_head(prio, k) {
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

    /// The innermost upcall's scan ends (its handlers all ran).
    fn scan_ended(&mut self) -> Result<(), String> {
        let Some(q) = self.queues.as_mut() else {
            return Ok(());
        };
        let Some(sc) = q.scans.pop() else {
            return Ok(());
        };
        let v = sc.vcpu as usize;
        // A scan that ran out of budget hands the queues it held back to
        // the control block: their ready bits, and heads naming their
        // current fronts, so any handle's next upcall resumes them.
        q.ready[v] |= sc.ready;
        q.taken_from[v] &= !sc.ready;
        Ok(())
    }

    /// What an upcall on `v` must leave in its upcall flag.
    fn flag_after_upcall(&self, v: u32) -> bool {
        self.queues.is_some() && self.flags[v as usize] == Flag::Set
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
        // The pending state stays (the ABI bit is cleared by the next bind).
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
        if self.queues.is_none() && self.flags[v as usize] == Flag::Set {
            // The scan may have started a new pass, clearing the flag.
            self.flags[v as usize] = Flag::Unknown;
        }
        Ok(())
    }

    /// The handler of port `n` ended: a closing port is freed, and an event
    /// another vCPU left for it is raised on its current vCPU.
    fn release(&mut self, n: usize, k: &mut KickExpect) {
        let s = &mut self.slots[n];
        s.in_flight = false;
        let replay = std::mem::replace(&mut s.replay, Replay::No);
        match s.life {
            Life::Closing => s.life = Life::Free,
            Life::Bound if s.pending && !s.masked() => match replay {
                Replay::Yes => self.raise(n, k),
                Replay::Maybe => self.maybe_raise(n, k),
                Replay::No => {}
            },
            _ => {}
        }
    }

    /// An upcall on `v` ended. `outermost`: no other upcall on `v` is still
    /// running (one would own the raises this one's scan did not see).
    fn upcall_ended(&mut self, v: u32, outermost: bool) -> Result<(), String> {
        if self.queues.is_some() {
            // The scan was followed step by step: it ran everything its
            // queues held (else `next_delivery` said what it missed), and
            // the flag is known.
            return self.scan_ended();
        }
        for (n, s) in self.slots.iter_mut().enumerate() {
            if s.life != Life::Bound || s.vcpu != v || s.masked() || !s.pending {
                continue;
            }
            if s.in_flight {
                // Found in flight on another vCPU: left to its runner.
                let seen = if outermost {
                    Replay::Yes
                } else {
                    Replay::Maybe
                };
                s.replay = s.replay.max(seen);
            } else if outermost {
                return Err(format!(
                    "lost event (C1): port {n} is pending, unmasked and bound to \
                     vCPU {v} after its upcall: {s:?}"
                ));
            }
        }
        self.flags[v as usize] = Flag::Clear;
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
            return Vec::new();
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
    if n == 0 || generation == 0 || n >= evtchn::abi::NR_EVENT_CHANNELS_2L {
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
    Lookup(u32),
    Status(u32),
    UpcallPending(u32),
    /// Bind until every port is taken (reaches `NoFreePort`).
    Fill,
    /// Remember a handle of a side instance: another life, or a number
    /// this instance does not have.
    Forge(u32, u32),
}

/// A recording `Notify`: every kick, in order.
#[derive(Default)]
pub struct KickLog(Mutex<Vec<u32>>);

impl Notify for KickLog {
    fn kick(&self, vcpu: u32) {
        self.0.lock().unwrap().push(vcpu);
    }
}

impl KickLog {
    fn take(&self) -> Vec<u32> {
        std::mem::take(&mut *self.0.lock().unwrap())
    }
}

type Ch<A> = Channels<A, KickLog>;

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
            _ => {
                if self.input.byte() & 7 == 0 {
                    Op::Fill
                } else {
                    Op::Upcall(self.vcpu_arg())
                }
            }
        }
    }

    /// Compares the kicks made since the last call with those expected.
    fn settle<A: AbiUnderTest>(&mut self, ch: &Ch<A>) {
        let mut got = ch.notifier().take();
        let KickExpect { must, mut may } = std::mem::take(&mut self.expect);
        got.sort_unstable();
        let mut want = must.clone();
        want.sort_unstable();
        let mut extra = Vec::new();
        for v in &got {
            if let Some(i) = want.iter().position(|w| w == v) {
                want.remove(i);
            } else if let Some(i) = may.iter().position(|w| w == v) {
                may.remove(i);
            } else {
                extra.push(*v);
            }
        }
        if !want.is_empty() || !extra.is_empty() {
            self.fail(format!(
                "kicks (C2): missing {want:?}, unexpected {extra:?} (got {got:?}, must {must:?})"
            ));
        }
    }

    /// Compares every status and every known upcall flag with the model.
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
            let f = &mut self.model.flags[v as usize];
            match (*f, got) {
                (Flag::Unknown, true) => *f = Flag::Set,
                (Flag::Unknown, false) => *f = Flag::Clear,
                (Flag::Set, true) | (Flag::Clear, false) => {}
                (want, got) => self.fail(format!("upcall flag of vCPU {v}: {got}, model {want:?}")),
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
            if !self.model.ready(v).is_empty() && ch.upcall_pending(v) != Ok(true) {
                self.fail(format!("vCPU {v} has work but no upcall pending (C2)"));
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
    let ch: Ch<A> = Channels::new(abi, KickLog::default());
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
    let mut vcpus: Vec<Vcpu<'_, A, KickLog>> =
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
    vcpus: Option<&mut [Vcpu<'c, A, KickLog>]>,
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
            upcall(ch, st, v, depth, vcpus);
        }
    }
    st.expect.must.append(&mut k.must);
    st.expect.may.append(&mut k.may);
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

fn upcall<'c, A: AbiUnderTest>(
    ch: &'c Ch<A>,
    st: &mut St,
    v: u32,
    depth: u32,
    vcpus: Option<&mut [Vcpu<'c, A, KickLog>]>,
) {
    let mut fresh;
    let handle = match vcpus.and_then(|hs| hs.get_mut(v as usize)) {
        Some(h) => h,
        None => {
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
    st.model.upcall_started(v);
    st.active.push(v);
    let mut delivered = Vec::new();
    let mut disturbed = false;
    let got = handle.upcall(|p| {
        // A queued ABI: what the scan took off and relinked on the way.
        let mut k = KickExpect::default();
        let next = st.model.next_delivery(&mut k);
        st.expect.must.append(&mut k.must);
        st.expect.may.append(&mut k.may);
        // The kicks of the previous handler's end (a replay's re-raise).
        st.settle(ch);
        if st.model.queues.is_some() && next != Some(p.number()) {
            st.fail(format!(
                "upcall({v}) ran {p:?}, but the head the model's queues give is {next:?}"
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
    });
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
            "lost event (C1): upcall({v}) returned, but its queues still hold \
             port {n}, ready to run"
        ));
    }
    st.expect.must.append(&mut k.must);
    st.expect.may.append(&mut k.may);
    st.settle(ch);
    // Down, unless a FIFO scan ran out of budget (the next upcall goes on).
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
        if let Err(msg) = A::check_order(&ready, &delivered) {
            st.fail(format!("upcall({v}) order: {msg}"));
        }
    }
}
