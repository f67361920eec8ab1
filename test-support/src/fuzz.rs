//! The bodies of the cargo-fuzz targets, shared by `fuzz/fuzz_targets/*.rs`
//! (nightly, libFuzzer) and `tests/fuzz_replay.rs` (stable: the committed
//! regression corpus plus seeded pseudo-random inputs), both through this
//! crate.
//!
//! Every body takes raw bytes and panics on a finding. Every byte string is
//! a valid input: [`Input`] decodes it as a stream of small numbers and reads
//! zeros past its end, so the fuzzer never wastes work on rejected inputs,
//! and every loop of a body is bounded by the input's length.
//!
//! * [`ops`]: differential — an operation sequence on the real control plane
//!   and on a small reference model of plain per-port records, compared
//!   after every step (deliveries, errors, kicks, statuses, final state).
//! * [`guest_memory`]: hostile memory — arbitrary values written into every
//!   guest-writable word between operations; no panic, bounded work, no
//!   effect outside the port and vCPU an operation names, nor on a second
//!   domain.
//! * [`fifo_memory`]: the same under the FIFO ABI — arbitrary event words,
//!   links, `ready` and `head[]` between raw or control-plane operations;
//!   exact effects of each raw call, bounded scans, handlers only for ports
//!   the control plane would run, and a bystander domain left untouched.
//!
//! Shared here: [`Kicks`](crate::Kicks) (all three bodies, from the crate
//! root); for the two hostile-memory bodies, their run state [`St`], the
//! decoder of their control-plane operations ([`ControlCodes`]: each body's byte-to-operation table, so
//! that each corpus keeps its meaning) and the reference [`Table`] those
//! operations are checked against.

use evtchn::{Bind, Channels, Error, Notify, Port, PortOps, State, Status};

use crate::Kicks;
use crate::Rng;

pub mod domains;
pub mod fifo_memory;
pub mod guest_memory;
pub mod ops;

/// A fuzz input read as a stream of small numbers; zeros past the end.
pub struct Input<'a> {
    data: &'a [u8],
    pos: usize,
}

impl<'a> Input<'a> {
    /// Reads `data` from its start.
    pub fn new(data: &'a [u8]) -> Self {
        Input { data, pos: 0 }
    }

    /// Whether every byte has been read.
    pub fn is_empty(&self) -> bool {
        self.pos >= self.data.len()
    }

    /// The next byte, or 0 past the end.
    pub fn byte(&mut self) -> u8 {
        let b = self.data.get(self.pos).copied().unwrap_or(0);
        self.pos = self.pos.saturating_add(1);
        b
    }

    /// A number below `n` (`n > 0`) from as few bytes as it needs.
    pub fn below(&mut self, n: u32) -> u32 {
        debug_assert!(n > 0);
        if n <= 0x100 {
            u32::from(self.byte()) % n
        } else if n <= 0x1_0000 {
            u32::from(u16::from_le_bytes([self.byte(), self.byte()])) % n
        } else {
            self.u32() % n
        }
    }

    /// Whether the next byte is odd.
    pub fn flip(&mut self) -> bool {
        self.byte() & 1 != 0
    }

    /// Four bytes, little-endian.
    pub fn u32(&mut self) -> u32 {
        u32::from_le_bytes([self.byte(), self.byte(), self.byte(), self.byte()])
    }

    /// Eight bytes, little-endian.
    pub fn u64(&mut self) -> u64 {
        u64::from(self.u32()) | (u64::from(self.u32()) << 32)
    }

    /// A shared-memory word an attacker would try: mostly extremes (0, all
    /// ones, one bit, all but one bit), sometimes any value.
    pub fn word(&mut self) -> u64 {
        match self.byte() % 8 {
            0 => 0,
            1 | 2 => !0,
            3 | 4 => 1 << (self.byte() % 64),
            5 => !(1 << (self.byte() % 64)),
            _ => self.u64(),
        }
    }
}

/// A deterministic pseudo-random byte string, for the stable replay's
/// seeded inputs: `seed` picks the string, `len` its length. Each byte is
/// the top byte of one [`Rng`] output, so `seeded_input(seed, len)` as a
/// failing replay names it stays the same input.
pub fn seeded_input(seed: u64, len: usize) -> Vec<u8> {
    let mut rng = Rng::new(seed);
    (0..len).map(|_| (rng.next_u64() >> 56) as u8).collect()
}

/// The state of one run of a hostile-memory body: its input, the
/// operations and hostile writes so far, and the trace a failure prints.
pub struct St<'i> {
    pub input: Input<'i>,
    pub ops: usize,
    /// Hostile writes so far (a check of untouched words holds only across
    /// an operation during which the guest wrote nothing).
    pub scribbles: usize,
    pub trace: Vec<String>,
    /// The body's name, which starts every failure message.
    target: &'static str,
    max_ops: usize,
}

impl<'i> St<'i> {
    /// A run of the body `target` on `input`, of at most `max_ops`
    /// operations; `first` opens the trace.
    pub fn new(target: &'static str, max_ops: usize, input: Input<'i>, first: String) -> Self {
        St {
            input,
            ops: 0,
            scribbles: 0,
            trace: vec![first],
            target,
            max_ops,
        }
    }

    #[track_caller]
    pub fn fail(&self, msg: impl std::fmt::Display) -> ! {
        let tail = self.trace.len().saturating_sub(30);
        panic!(
            "{}: {msg}\nlast operations (of {}):\n  {}",
            self.target,
            self.trace.len(),
            self.trace[tail..].join("\n  ")
        );
    }

    /// Whether another operation may run: the budget is not spent and input
    /// is left.
    pub fn budget_left(&self) -> bool {
        self.ops < self.max_ops && !self.input.is_empty()
    }
}

// ---------------------------------------------------------------------------
// The control plane of the hostile-memory bodies
// ---------------------------------------------------------------------------

/// What an operation byte of the hostile-memory bodies' control-plane phase
/// selects (see [`ControlCodes`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Code {
    BindXenCompat,
    BindAffinity,
    Send,
    Mask,
    Unmask,
    MaskUntilEoi,
    Eoi,
    SetAffinity,
    SetPriority,
    Close,
    Upcall,
}

/// How a body decodes a control-plane operation: one byte picks
/// `codes[byte % codes.len()]`; then `vcpu` reads the vCPU argument (for
/// every operation); an operation on a handle then reads one byte that
/// picks a remembered handle (modulo their number), and stops there when
/// there is none; `set_priority` then reads its priority with `priority`.
pub struct ControlCodes {
    pub codes: &'static [Code],
    pub vcpu: fn(&mut Input, u32) -> u32,
    pub priority: fn(&mut Input) -> u8,
}

/// An operation on a handle.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PortOp {
    Send,
    Mask,
    Unmask,
    MaskUntilEoi,
    Eoi,
    SetAffinity(u32),
    SetPriority(u8),
    Close,
}

/// A decoded control-plane operation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Control {
    Bind(Bind),
    Port(PortOp, Port),
    Upcall(u32),
}

impl ControlCodes {
    /// The next operation for `nr_vcpus` vCPUs and the remembered `handles`
    /// (oldest first); `None` for an operation on a handle when there is
    /// none.
    pub fn decode(&self, input: &mut Input, nr_vcpus: u32, handles: &[Port]) -> Option<Control> {
        let code = self.codes[usize::from(input.byte()) % self.codes.len()];
        let v = (self.vcpu)(input, nr_vcpus);
        let op = match code {
            Code::BindXenCompat => return Some(Control::Bind(Bind::XenCompat)),
            Code::BindAffinity => return Some(Control::Bind(Bind::Affinity(v))),
            Code::Upcall => return Some(Control::Upcall(v)),
            Code::Send => PortOp::Send,
            Code::Mask => PortOp::Mask,
            Code::Unmask => PortOp::Unmask,
            Code::MaskUntilEoi => PortOp::MaskUntilEoi,
            Code::Eoi => PortOp::Eoi,
            Code::SetAffinity => PortOp::SetAffinity(v),
            Code::SetPriority => PortOp::SetPriority(0),
            Code::Close => PortOp::Close,
        };
        let i = usize::from(input.byte());
        let p = *handles.get(i % handles.len().max(1))?;
        let op = match op {
            PortOp::SetPriority(_) => PortOp::SetPriority((self.priority)(input)),
            op => op,
        };
        Some(Control::Port(op, p))
    }
}

/// The handles a body remembers: at most 32, the oldest forgotten first.
pub fn remember(handles: &mut Vec<Port>, p: Port) {
    if handles.len() >= 32 {
        handles.remove(0);
    }
    handles.push(p);
}

impl PortOp {
    /// Runs the operation on `p`.
    pub fn call<A: PortOps, N: Notify>(self, ch: &Channels<A, N>, p: Port) -> Result<(), Error> {
        match self {
            PortOp::Send => ch.send(p),
            PortOp::Mask => ch.mask(p),
            PortOp::Unmask => ch.unmask(p),
            PortOp::MaskUntilEoi => ch.mask_until_eoi(p),
            PortOp::Eoi => ch.eoi(p),
            PortOp::SetAffinity(v) => ch.set_affinity(p, v),
            PortOp::SetPriority(prio) => ch.set_priority(p, prio),
            PortOp::Close => ch.close(p),
        }
    }

    /// The call as a trace line shows it.
    pub fn name(self, p: Port) -> String {
        match self {
            PortOp::Send => format!("send({p:?})"),
            PortOp::Mask => format!("mask({p:?})"),
            PortOp::Unmask => format!("unmask({p:?})"),
            PortOp::MaskUntilEoi => format!("mask_until_eoi({p:?})"),
            PortOp::Eoi => format!("eoi({p:?})"),
            PortOp::SetAffinity(v) => format!("set_affinity({p:?}, {v})"),
            PortOp::SetPriority(prio) => format!("set_priority({p:?}, {prio})"),
            PortOp::Close => format!("close({p:?})"),
        }
    }
}

/// The hypervisor-private state of one port number.
#[derive(Clone, Copy, Debug, Default)]
pub struct Slot {
    pub bound: bool,
    pub closing: bool,
    pub generation: u32,
    pub vcpu: u32,
    /// The FIFO priority (the 2-level body leaves it at 0).
    pub priority: u8,
    pub explicit: bool,
    pub eoi: bool,
    pub in_flight: bool,
}

/// The reference model of the control plane: what every port number must
/// be, and what every operation must return.
pub struct Table {
    pub slots: Vec<Slot>,
    pub nr_vcpus: u32,
}

impl Table {
    /// `nr_ports` free port numbers on `nr_vcpus` vCPUs.
    pub fn new(nr_ports: u32, nr_vcpus: u32) -> Self {
        Table {
            slots: vec![Slot::default(); nr_ports as usize],
            nr_vcpus,
        }
    }

    /// The slot of the live handle `p`, or the error an operation on it
    /// must return.
    pub fn check(&self, p: Port) -> Result<usize, Error> {
        let n = p.number() as usize;
        if n == 0 || n >= self.slots.len() {
            return Err(Error::PortOutOfRange);
        }
        let s = &self.slots[n];
        if s.generation != p.generation() {
            Err(Error::Stale)
        } else if !s.bound {
            Err(Error::NotBound)
        } else {
            Ok(n)
        }
    }

    /// The port number a bind with `mode` must take (the lowest free one),
    /// or its error.
    pub fn bind_want(&self, mode: Bind) -> Result<usize, Error> {
        if bind_target(mode) >= self.nr_vcpus {
            Err(Error::VcpuOutOfRange)
        } else {
            (1..self.slots.len())
                .find(|&n| !self.slots[n].bound && !self.slots[n].closing)
                .ok_or(Error::NoFreePort)
        }
    }

    /// Compares the result `r` of a bind with `mode` with the model, and
    /// records a bind of the expected number at `priority`: `Some` handle
    /// when it bound as it must, `None` when it failed as it must, why it
    /// is wrong otherwise.
    pub fn bind(
        &mut self,
        mode: Bind,
        r: Result<Port, Error>,
        priority: u8,
    ) -> Result<Option<Port>, String> {
        match (r, self.bind_want(mode)) {
            (Ok(p), Ok(n)) if p.number() as usize == n => {
                let s = &mut self.slots[n];
                *s = Slot {
                    bound: true,
                    generation: s.generation.wrapping_add(1),
                    vcpu: bind_target(mode),
                    priority,
                    ..Slot::default()
                };
                if p.generation() == s.generation {
                    Ok(Some(p))
                } else {
                    Err(format!("generation {}", s.generation))
                }
            }
            (Err(e), Err(w)) if e == w => Ok(None),
            (_, w) => Err(format!("want port {w:?}")),
        }
    }

    /// Applies `op` on `p` to the model: what the core must return.
    pub fn apply(&mut self, op: PortOp, p: Port) -> Result<(), Error> {
        let checked = self.check(p);
        let slots = &mut self.slots;
        match op {
            PortOp::Send => checked.map(|_| ()),
            PortOp::Mask => checked.map(|n| slots[n].explicit = true),
            PortOp::Unmask => checked.map(|n| slots[n].explicit = false),
            PortOp::MaskUntilEoi => checked.map(|n| slots[n].eoi = true),
            PortOp::Eoi => checked.and_then(|n| {
                if slots[n].eoi {
                    slots[n].eoi = false;
                    Ok(())
                } else {
                    Err(Error::NotEoiPending)
                }
            }),
            PortOp::SetAffinity(v) if v >= self.nr_vcpus => Err(Error::VcpuOutOfRange),
            PortOp::SetAffinity(v) => checked.map(|n| slots[n].vcpu = v),
            PortOp::SetPriority(prio) if prio > 15 => Err(Error::PriorityOutOfRange),
            PortOp::SetPriority(prio) => checked.map(|n| slots[n].priority = prio),
            PortOp::Close => checked.map(|n| {
                let s = &mut slots[n];
                s.bound = false;
                s.closing = s.in_flight;
                s.explicit = false;
                s.eoi = false;
            }),
        }
    }

    /// The slot of `p`, which an upcall on `v` has just offered to its
    /// handler, or why it must not have been.
    pub fn may_run(&self, p: Port, v: u32) -> Result<usize, String> {
        let n = self
            .check(p)
            .map_err(|e| format!("upcall({v}) ran {p:?}, which is {e:?} (C6)"))?;
        let s = self.slots[n];
        if s.vcpu != v || s.explicit || s.eoi || s.in_flight {
            return Err(format!("upcall({v}) ran {p:?}: {s:?} (C3/C4/C5)"));
        }
        Ok(n)
    }

    /// Whether the core's status of number `n` is the model's (its
    /// priority too, with `priority`).
    pub fn agrees(&self, n: usize, got: &Status, priority: bool) -> Result<(), String> {
        let s = &self.slots[n];
        let state = if s.bound {
            State::Bound
        } else if s.closing {
            State::Closing
        } else {
            State::Free
        };
        let ok = got.state == state
            && got.generation == s.generation
            && (!s.bound || (got.vcpu == s.vcpu && (!priority || got.priority == s.priority)))
            && got.masked_explicit == s.explicit
            && got.masked_eoi == s.eoi
            && !got.masked_rebind
            && got.in_flight == s.in_flight;
        if ok {
            Ok(())
        } else {
            Err(format!("status({n}): core {got:?}, model {s:?}"))
        }
    }
}

/// The vCPU a bind with `mode` targets (the bodies bind `XenCompat`, on
/// vCPU 0, or with an affinity).
pub fn bind_target(mode: Bind) -> u32 {
    match mode {
        Bind::Affinity(v) => v,
        _ => 0,
    }
}

/// Checks that the kicks of an operation were exactly the vCPUs whose
/// upcall flag went from 0 (`before`) to 1 (`after`).
pub fn check_kicks(before: &[u8], after: &[u8], mut kicks: Vec<u32>) -> Result<(), String> {
    let mut edges: Vec<u32> = (0..before.len())
        .filter(|&u| before[u] == 0 && after[u] == 1)
        .map(|u| u as u32)
        .collect();
    kicks.sort_unstable();
    edges.sort_unstable();
    if kicks == edges {
        Ok(())
    } else {
        Err(format!("kicks {kicks:?}, flag edges {edges:?}"))
    }
}
