//! `fifo_memory`: hostile shared memory under the FIFO ABI (contract C7).
//!
//! The FIFO counterpart of [`super::guest_memory`]. Domain A's memory
//! belongs to a hostile guest: before every operation the input writes
//! arbitrary values into any of its guest-writable words — event words (any
//! flags, links in and out of range, self-links, cycles, chains into other
//! vCPUs' queues), the `ready` bitmap and `head[]` of any vCPU's control
//! block, the upcall flag, and the 2-level fields of `vcpu_info` the FIFO
//! ABI never uses. Domain B is a bystander FIFO instance with bound,
//! pending, masked and queued ports, on two priorities.
//!
//! Two memories ([`Backend`]): an `OwnedFifo` each (A of 1 to 2100 ports,
//! its event array mapped page by page), or A and B as the two halves of
//! one caller-owned set of arrays through `BorrowedFifo` (A of any length,
//! none included, with different numbers of control blocks and
//! `vcpu_info`s), so that a write past A's end would land in B.
//!
//! Two ways to drive A ([`Mode`]):
//!
//! * the raw raise side (`PortOps`, as a hypervisor runs it over guest
//!   memory, and the guest's consumer `scan` and `guest_unmask`), each call
//!   checked against the exact words the ABI says it writes. The raise
//!   side's private queue state enters that statement only as the ABI
//!   defines it: a queue's tail is the last port linked on it, until that
//!   port is linked on another queue (Xen's `lastq`);
//! * the control plane (`Channels`) over A's memory, checked against a
//!   model of the hypervisor-private port table and against what each
//!   operation may touch.
//!
//! Checked around every operation: no panic; typed errors for out-of-range
//! ports, vCPUs and priorities, which change nothing; kicks exactly when an
//! upcall flag went 0 → 1; a scan offers only existing, pending, unmasked
//! ports it just took off a queue, never more than its budget
//! (`max(2 * ports, 64)` per call), and, undisturbed, sets no pending or
//! mask bit and no other vCPU's state; a control-plane operation on port
//! `p` writes only `p`'s word, one tail's link and its target vCPU's queue
//! state; a handler runs only for a port bound to that vCPU in its current
//! life, unmasked by the control plane, not in flight and no longer pending,
//! whatever the memory says (C3–C6); nothing of domain B ever changes, and
//! B still delivers as it should at the end.

use std::cell::Cell;
use std::sync::atomic::{AtomicU32, Ordering::SeqCst};

use evtchn::xen::fifo::{
    ControlBlock, EventWord, BUSY, EVENT_WORDS_PER_PAGE, LINKED, LINK_MASK, MASKED, MAX_QUEUES,
    NR_CHANNELS, PENDING, PRIORITY_DEFAULT,
};
use evtchn::xen::VcpuInfo;
use evtchn::InProcess;
use evtchn::{
    Bind, BorrowedFifo, Channels, Delivery, Error, Fifo, FifoCursor, FifoMemory, GuestUnmask,
    OwnedFifo, Port, Raised, Vcpu,
};
use evtchn::{Deliver, Ports, Raise};

use super::{
    bind_target, check_kicks, remember, Code, Control, ControlCodes, Input, Kicks, PortOp, Slot,
    St, Table,
};

/// Operations per input (scribbles not counted; nested ones counted).
pub const MAX_OPS: usize = 160;

/// Bits of an event word that no party ever writes.
const RESERVED: u32 = !(PENDING | MASKED | LINKED | BUSY | LINK_MASK);

/// The memory an input runs on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    /// An `OwnedFifo` for each domain.
    Owned,
    /// Both domains in one set of caller-owned arrays, A first.
    Borrowed,
}

/// How domain A is driven.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// The raw `PortOps` raise side and the guest's consumer.
    Raw,
    /// The control plane (`Channels`) over A's memory.
    Control,
}

/// A deliberately broken system under test, for the negative tests that
/// show the checks can fail (`tests/fuzz_replay.rs`): the harness does
/// what a buggy core would, right after each operation on A.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Sabotage {
    /// Sets a ready bit in domain B.
    TouchOtherDomain,
    /// Sets a ready bit of A's last control block, whatever the operation
    /// targeted.
    StrayReadyBit,
}

/// Runs one input; panics on a finding.
pub fn run(data: &[u8]) {
    run_with(data, None)
}

/// [`run`], with a simulated core bug when `sabotage` says so.
pub fn run_with(data: &[u8], sabotage: Option<Sabotage>) {
    let mut input = Input::new(data);
    let backend = if input.flip() {
        Backend::Borrowed
    } else {
        Backend::Owned
    };
    let mode = if input.flip() {
        Mode::Control
    } else {
        Mode::Raw
    };
    match backend {
        Backend::Owned => {
            const SIZES: [u32; 16] = [1, 2, 3, 5, 8, 8, 17, 17, 33, 64, 64, 64, 5, 9, 1025, 2100];
            let mut ports = SIZES[usize::from(input.byte() % 16)];
            if mode == Mode::Control {
                // Bind reaches only the lowest numbers.
                ports = ports.min(64);
            }
            let vcpus = usize::from(input.byte() % 5);
            let a = OwnedFifo::new(ports, vcpus);
            let da = Dims {
                ports: a.max_ports(),
                controls: vcpus.max(1),
                vcpus: vcpus.max(1),
            };
            let b = OwnedFifo::new(B_PORTS, 2);
            drive(a, da, b, input, mode, sabotage);
        }
        Backend::Borrowed => {
            let ports = [0u32, 1, 2, 3, 5, 8, 17, 33, 64, 70][usize::from(input.byte() % 10)];
            let controls = usize::from(input.byte() % 5);
            let vcpus = match input.byte() % 4 {
                0 => usize::from(input.byte() % 5),
                _ => controls,
            };
            let arrays = Arrays::new(ports as usize, controls, vcpus);
            let (a, b) = arrays.halves();
            let da = Dims {
                ports,
                controls,
                vcpus,
            };
            drive(a, da, b, input, mode, sabotage);
        }
    }
}

// ---------------------------------------------------------------------------
// Memories
// ---------------------------------------------------------------------------

/// Domain B's shape.
const B_PORTS: u32 = 16;
const B_VCPUS: usize = 2;

/// The sizes of a domain's arrays (which `FifoMemory` does not tell: the
/// control blocks and `vcpu_info`s may differ in number).
#[derive(Clone, Copy, Debug)]
struct Dims {
    ports: u32,
    controls: usize,
    vcpus: usize,
}

impl Dims {
    fn nr_vcpus(self) -> u32 {
        self.controls.min(self.vcpus) as u32
    }
}

/// One set of caller-owned arrays holding both domains, A first.
struct Arrays {
    words: Vec<EventWord>,
    control: Vec<ControlBlock>,
    vcpus: Vec<VcpuInfo>,
    a: (usize, usize, usize),
}

impl Arrays {
    fn new(ports: usize, controls: usize, vcpus: usize) -> Self {
        Arrays {
            words: (0..ports + B_PORTS as usize)
                .map(|_| AtomicU32::new(0))
                .collect(),
            control: (0..controls + B_VCPUS)
                .map(|_| ControlBlock::new())
                .collect(),
            vcpus: (0..vcpus + B_VCPUS).map(|_| VcpuInfo::new()).collect(),
            a: (ports, controls, vcpus),
        }
    }

    fn halves(&self) -> (BorrowedFifo<'_>, BorrowedFifo<'_>) {
        let (w, c, v) = self.a;
        let (wa, wb) = self.words.split_at(w);
        let (ca, cb) = self.control.split_at(c);
        let (va, vb) = self.vcpus.split_at(v);
        (
            BorrowedFifo {
                words: wa,
                control: ca,
                vcpus: va,
            },
            BorrowedFifo {
                words: wb,
                control: cb,
                vcpus: vb,
            },
        )
    }
}

/// Every word of a FIFO memory.
#[derive(Clone, Debug, PartialEq)]
struct Words {
    /// Per port: its event word, `None` where the array does not cover it.
    words: Vec<Option<u32>>,
    ready: Vec<u32>,
    heads: Vec<[u32; MAX_QUEUES]>,
    flags: Vec<u8>,
    /// `evtchn_upcall_mask` and `evtchn_pending_sel`: the FIFO ABI never
    /// writes them.
    other: Vec<(u8, u64)>,
}

fn words<M: FifoMemory>(m: &M, d: Dims) -> Words {
    let cb = |v: usize| m.control_block(v as u32).expect("control block");
    let vi = |v: usize| m.vcpu_info(v as u32).expect("vcpu_info");
    Words {
        words: (0..d.ports)
            .map(|p| m.event_word(p).map(|w| w.load(SeqCst)))
            .collect(),
        ready: (0..d.controls).map(|v| cb(v).ready.load(SeqCst)).collect(),
        heads: (0..d.controls)
            .map(|v| core::array::from_fn(|q| cb(v).head[q].load(SeqCst)))
            .collect(),
        flags: (0..d.vcpus)
            .map(|v| vi(v).evtchn_upcall_pending.load(SeqCst))
            .collect(),
        other: (0..d.vcpus)
            .map(|v| {
                (
                    vi(v).evtchn_upcall_mask.load(SeqCst),
                    vi(v).evtchn_pending_sel.load(SeqCst),
                )
            })
            .collect(),
    }
}

impl Words {
    fn word(&self, p: u32) -> Option<u32> {
        self.words.get(p as usize).copied().flatten()
    }

    /// Words with a nonzero LINK field.
    fn links(&self) -> usize {
        self.words
            .iter()
            .flatten()
            .filter(|&&w| w & LINK_MASK != 0)
            .count()
    }

    /// What differs from `other`, for failure messages.
    fn diff(&self, other: &Words) -> String {
        let mut out = Vec::new();
        for (p, (a, b)) in self.words.iter().zip(&other.words).enumerate() {
            if a != b {
                out.push(format!("word {p}: {a:x?} vs {b:x?}"));
            }
        }
        for v in 0..self.ready.len() {
            if self.ready[v] != other.ready[v] {
                out.push(format!(
                    "ready[{v}]: {:#x} vs {:#x}",
                    self.ready[v], other.ready[v]
                ));
            }
            if self.heads[v] != other.heads[v] {
                out.push(format!(
                    "heads[{v}]: {:?} vs {:?}",
                    self.heads[v], other.heads[v]
                ));
            }
        }
        if self.flags != other.flags {
            out.push(format!("flags: {:?} vs {:?}", self.flags, other.flags));
        }
        if self.other != other.other {
            out.push("2-level fields".into());
        }
        out.join("; ")
    }
}

// ---------------------------------------------------------------------------
// The harness
// ---------------------------------------------------------------------------

type Ch<M> = Channels<Fifo<M>, Kicks>;

/// Domain B: a control plane with ports in known states.
struct Bystander<M: FifoMemory> {
    ch: Ch<M>,
    /// Pending on vCPU 1, queued in this order: `[urgent, sent, sent2]`
    /// (`urgent` on priority 0, the others on the default one).
    queued: [Port; 3],
    masked: Port,
    idle: Port,
}

impl<M: FifoMemory> Bystander<M> {
    fn new(mem: M) -> Self {
        let ch = Channels::new(Fifo::new(mem), Kicks::default());
        let sent = ch.bind(Bind::Affinity(1)).unwrap();
        let sent2 = ch.bind(Bind::Affinity(1)).unwrap();
        let urgent = ch.bind(Bind::Affinity(1)).unwrap();
        let masked = ch.bind(Bind::Affinity(0)).unwrap();
        let idle = ch.bind(Bind::XenCompat).unwrap();
        ch.set_priority(urgent, 0).unwrap();
        assert_eq!(ch.vcpu(0).unwrap().upcall(|_| {}), Ok(1));
        for p in [sent, sent2, urgent] {
            ch.send(p).unwrap();
        }
        ch.mask(masked).unwrap();
        ch.send(masked).unwrap();
        ch.notifier().take();
        Bystander {
            ch,
            queued: [urgent, sent, sent2],
            masked,
            idle,
        }
    }

    /// Everything observable of B.
    fn snapshot(&self) -> (Words, Vec<evtchn::Status>) {
        let d = Dims {
            ports: B_PORTS,
            controls: B_VCPUS,
            vcpus: B_VCPUS,
        };
        let statuses = (1..B_PORTS).map(|n| self.ch.status(n).unwrap()).collect();
        (words(self.ch.abi().memory(), d), statuses)
    }

    fn touch(&self) {
        let cb = self.ch.abi().memory().control_block(0).unwrap();
        cb.ready.fetch_or(1 << 3, SeqCst);
    }

    /// B still works as it did: its queued events run on vCPU 1 in
    /// priority order, its masked one after unmask, its idle one on send.
    fn still_works(&self) {
        let run = |v: u32| {
            let mut seen = Vec::new();
            self.ch.vcpu(v).unwrap().upcall(|p| seen.push(p)).unwrap();
            seen
        };
        assert_eq!(run(1), self.queued, "fifo_memory: domain B misdelivers");
        self.ch.unmask(self.masked).unwrap();
        self.ch.send(self.idle).unwrap();
        assert_eq!(
            run(0),
            [self.masked, self.idle],
            "fifo_memory: domain B misdelivers"
        );
    }
}

impl St<'_> {
    /// How many hostile writes precede an operation: mostly none.
    fn scribbles(&mut self) -> u32 {
        match self.input.byte() {
            0..=159 => 0,
            160..=239 => 1,
            _ => 2 + self.input.below(3),
        }
    }

    /// A LINK a hostile guest would try, for the word of port `p`.
    fn link(&mut self, p: u32, nr: u32) -> u32 {
        match self.input.byte() % 8 {
            0 => 0,
            1 => p,
            2..=4 => self.input.below(nr.max(1)),
            5 => nr,
            6 => LINK_MASK,
            _ => self.input.u32() & LINK_MASK,
        }
    }

    /// An event word a hostile guest would write for port `p`.
    fn event_word(&mut self, p: u32, nr: u32) -> u32 {
        let b = self.input.byte();
        match b % 8 {
            0 => 0,
            1 => !0,
            2 => self.input.u32(),
            3 => 1 << (self.input.byte() % 32),
            _ => {
                // Any combination of the four flags, with a link.
                let flags = u32::from(self.input.byte() & 0xf) << 28;
                let reserved = if b & 0x80 != 0 { RESERVED } else { 0 };
                flags | reserved | self.link(p, nr)
            }
        }
    }

    /// A head a hostile guest would write.
    fn head(&mut self, nr: u32) -> u32 {
        match self.input.byte() % 8 {
            0 => u32::MAX,
            1 => NR_CHANNELS,
            b => self.link(u32::from(b), nr),
        }
    }
}

/// A port argument: mostly in range, sometimes just past it or far out.
fn port_arg(input: &mut Input, nr: u32) -> u32 {
    match input.byte() {
        0..=191 => input.below(nr.max(1)),
        192..=243 => input.below(nr + 8),
        244 => u32::MAX,
        245 => NR_CHANNELS,
        246 => LINK_MASK,
        247 => nr,
        b => nr.wrapping_add(u32::from(b)),
    }
}

/// A vCPU argument: mostly in range, sometimes just past it or far out.
fn vcpu_arg(input: &mut Input, nv: u32) -> u32 {
    match input.byte() {
        b @ 0..=191 => u32::from(b) % nv.max(1),
        b @ 192..=249 => u32::from(b) % (nv + 2),
        250 => u32::MAX,
        251 => 0xffff,
        b => nv + u32::from(b),
    }
}

/// A priority argument: mostly in range, sometimes 16 or far out.
fn priority_arg(input: &mut Input) -> u8 {
    match input.byte() {
        b @ 0..=249 => b % 16,
        250 => 16,
        b => b,
    }
}

/// What the hostile guest may write: some of A's words.
fn scribble<M: FifoMemory>(st: &mut St, m: &M, d: Dims) {
    let nr = d.ports;
    let what = st.input.byte() % 16;
    let p = st.input.below(nr.max(1));
    let v = st.input.below(d.controls.max(d.vcpus).max(1) as u32);
    let q = st.input.below(32);
    let cb = m.control_block(v);
    let vi = m.vcpu_info(v);
    let done = match what {
        0..=5 => {
            let value = st.event_word(p, nr);
            m.event_word(p)
                .map(|w| w.store(value, SeqCst))
                .map(|()| format!("word[{p}] = {value:#x}"))
        }
        6 | 7 => {
            // A cycle of pending, linked words, made ready on some queue.
            let len = 1 + st.input.below(4);
            let step = 1 + st.input.below(nr.max(1));
            let ring: Vec<u32> = (0..len).map(|i| (p + i * step) % nr.max(1)).collect();
            let flags = PENDING | LINKED | if st.input.flip() { MASKED } else { 0 };
            for (i, &x) in ring.iter().enumerate() {
                let next = ring[(i + 1) % ring.len()];
                if let Some(w) = m.event_word(x) {
                    w.store(flags | next, SeqCst);
                }
            }
            if let Some(cb) = cb {
                cb.head[q as usize % MAX_QUEUES].store(p, SeqCst);
                cb.ready.fetch_or(1 << (q % 16), SeqCst);
            }
            Some(format!("cycle {ring:?} at head[{v}][{}]", q % 16))
        }
        8 | 9 => {
            let value = match st.input.byte() % 4 {
                0 => 0,
                1 => !0,
                2 => 1 << q,
                _ => st.input.u32(),
            };
            cb.map(|cb| cb.ready.store(value, SeqCst))
                .map(|()| format!("ready[{v}] = {value:#x}"))
        }
        10 | 11 => {
            let value = st.head(nr);
            let q = q as usize % MAX_QUEUES;
            cb.map(|cb| cb.head[q].store(value, SeqCst))
                .map(|()| format!("head[{v}][{q}] = {value:#x}"))
        }
        12 => {
            let value = st.input.byte();
            vi.map(|vi| vi.evtchn_upcall_pending.store(value, SeqCst))
                .map(|()| format!("flag[{v}] = {value}"))
        }
        13 => {
            let (mask, sel) = (st.input.byte(), st.input.u64());
            vi.map(|vi| {
                vi.evtchn_upcall_mask.store(mask, SeqCst);
                vi.evtchn_pending_sel.store(sel, SeqCst);
            })
            .map(|()| format!("2-level fields[{v}]"))
        }
        14 => {
            // The guest starts over: every word of A zeroed.
            for p in 0..nr {
                if let Some(w) = m.event_word(p) {
                    w.store(0, SeqCst);
                }
            }
            for v in 0..d.controls {
                let cb = m.control_block(v as u32).expect("control block");
                cb.ready.store(0, SeqCst);
                cb.head.iter().for_each(|h| h.store(0, SeqCst));
            }
            Some("reset".into())
        }
        _ => {
            // A chain link from `p` to another port, pending and linked.
            let to = st.input.below(nr.max(1));
            m.event_word(p)
                .map(|w| w.store(PENDING | LINKED | to, SeqCst))
                .map(|()| format!("word[{p}] -> {to}"))
        }
    };
    if let Some(what) = done {
        st.scribbles += 1;
        st.trace.push(format!("scribble {what}"));
    }
}

/// The checks around every operation on A that hold whatever the guest
/// wrote: nothing of B changed.
struct Guard<'g> {
    b_unchanged: &'g dyn Fn() -> bool,
    touch_b: &'g dyn Fn(),
    sabotage: Option<Sabotage>,
}

impl Guard<'_> {
    fn after<M: FifoMemory>(&self, st: &St, a: &M, d: Dims, what: &str) {
        match self.sabotage {
            Some(Sabotage::TouchOtherDomain) => (self.touch_b)(),
            Some(Sabotage::StrayReadyBit) => {
                if let Some(cb) = d
                    .controls
                    .checked_sub(1)
                    .and_then(|v| a.control_block(v as u32))
                {
                    cb.ready.fetch_or(1 << 31, SeqCst);
                }
            }
            None => {}
        }
        if !(self.b_unchanged)() {
            st.fail(format!("{what} changed domain B"));
        }
    }
}

fn drive<MA: FifoMemory, MB: FifoMemory>(
    a: MA,
    da: Dims,
    b: MB,
    input: Input,
    mode: Mode,
    sabotage: Option<Sabotage>,
) {
    let bystander = Bystander::new(b);
    let b_before = bystander.snapshot();
    let b_unchanged = || bystander.snapshot() == b_before;
    let touch_b = || bystander.touch();
    let guard = Guard {
        b_unchanged: &b_unchanged,
        touch_b: &touch_b,
        sabotage,
    };
    let first = format!("{mode:?}, A of {da:?}");
    let mut st = St::new("fifo_memory", MAX_OPS, input, first);
    // The guest's opening writes.
    for _ in 0..st.input.below(6) {
        scribble(&mut st, &a, da);
    }
    match mode {
        Mode::Raw => raw(&mut st, a, da, &guard),
        Mode::Control => control(&mut st, a, da, &guard),
    }
    bystander.still_works();
}

// ---------------------------------------------------------------------------
// Raw raise side
// ---------------------------------------------------------------------------

/// The raise side's private queue state as the ABI defines it: each port's
/// priority, the queue (`vcpu * 16 + priority`) it was last linked on, and
/// each queue's tail — the last port linked on it, until that port is
/// linked on another queue (so appending never follows a moved event into
/// its new queue).
struct Queues {
    priority: Vec<u8>,
    last: Vec<Option<usize>>,
    tails: Vec<u32>,
    nr_vcpus: u32,
}

impl Queues {
    fn new(ports: u32, nr_vcpus: u32) -> Self {
        Queues {
            priority: vec![PRIORITY_DEFAULT; ports as usize],
            last: vec![None; ports as usize],
            tails: vec![0; nr_vcpus as usize * MAX_QUEUES],
            nr_vcpus,
        }
    }

    /// What linking pending, unmasked `p` on vCPU `t` does to `mem` (the
    /// state before the link), and the vCPU it kicks: `p` is marked
    /// LINKED with an empty link; it is appended after the queue's tail if
    /// that tail is still linked (only the tail's LINK changes, and BUSY
    /// clears); otherwise it becomes the queue's head, and only a newly set
    /// `ready` bit raises the upcall flag.
    fn link(&mut self, mem: &mut Words, p: u32, t: u32) -> Option<u32> {
        if t >= self.nr_vcpus {
            return None;
        }
        let w = mem.word(p)?;
        if w & PENDING == 0 || w & MASKED != 0 || w & LINKED != 0 {
            return None;
        }
        let prio = usize::from(self.priority[p as usize].min(MAX_QUEUES as u8 - 1));
        let q = t as usize * MAX_QUEUES + prio;
        let old = self.last[p as usize].unwrap_or(q);
        mem.words[p as usize] = Some((w | LINKED) & !LINK_MASK);
        if self.tails[old] == p {
            self.tails[old] = 0;
        }
        self.last[p as usize] = Some(q);
        let tail = std::mem::replace(&mut self.tails[q], p);
        if tail != 0 && tail != p {
            if let Some(tw) = mem.word(tail).filter(|tw| tw & LINKED != 0) {
                mem.words[tail as usize] = Some((tw & !(BUSY | LINK_MASK)) | (p & LINK_MASK));
                return None;
            }
        }
        let t = t as usize;
        mem.heads[t][prio] = p;
        let bit = 1 << prio;
        if mem.ready[t] & bit != 0 {
            return None;
        }
        mem.ready[t] |= bit;
        let flag = std::mem::replace(&mut mem.flags[t], 1);
        (flag == 0).then_some(t as u32)
    }
}

fn raw<M: FifoMemory>(st: &mut St, a: M, d: Dims, g: &Guard) {
    let fifo = Fifo::new(a);
    let nr = fifo.nr_ports();
    let nv = fifo.nr_vcpus();
    if nr != d.ports.min(NR_CHANNELS) || nv != d.nr_vcpus() {
        st.fail(format!("sizes: {nr} ports, {nv} vCPUs of {d:?}"));
    }
    let mut queues = Queues::new(nr, nv);
    let mut cursors = vec![FifoCursor::default(); nv as usize];
    if st.input.byte() % 8 != 0 {
        // The guest has set up its whole event array (`OwnedFifo` maps
        // pages on demand; `prepare` is also among the operations).
        for p in (0..nr).step_by(EVENT_WORDS_PER_PAGE as usize) {
            if fifo.prepare(p).is_err() {
                st.fail(format!("prepare({p}) of {nr} ports failed"));
            }
        }
    }
    while st.budget_left() {
        st.ops += 1;
        for _ in 0..st.scribbles() {
            scribble(st, fifo.memory(), d);
        }
        raw_op(st, &fifo, d, &mut queues, g, Some(&mut cursors));
    }
}

/// One raw call on A, checked against the exact words the ABI says it
/// writes. `cursors`: the guest's consumer state, `None` inside a scan's
/// handler (no nested scan there).
fn raw_op<M: FifoMemory>(
    st: &mut St,
    fifo: &Fifo<M>,
    d: Dims,
    queues: &mut Queues,
    g: &Guard,
    cursors: Option<&mut Vec<FifoCursor>>,
) {
    let mem = fifo.memory();
    let nr = fifo.nr_ports();
    let nv = fifo.nr_vcpus();
    let code = st.input.byte() % 16;
    if code >= 13 {
        if let Some(cursors) = cursors {
            let v = vcpu_arg(&mut st.input, nv);
            raw_scan(st, fifo, d, queues, g, cursors, v);
        }
        return;
    }
    let p = port_arg(&mut st.input, nr);
    let t = vcpu_arg(&mut st.input, nv);
    let before = words(mem, d);
    let own = before.word(p);
    let mut want = before.clone();
    let mut want_calls = 0;
    let calls = Cell::new(0u32);
    let target = || {
        calls.set(calls.get() + 1);
        t
    };
    let oor = Err(Error::PortOutOfRange);
    let (name, got, want_result): (&str, Result<String, Error>, Result<String, Error>);
    match code {
        0..=2 => {
            name = "set_pending";
            want_result = own.map_or(oor, |w| {
                want.words[p as usize] = Some(w | PENDING);
                let r = if w & PENDING != 0 {
                    Raised::Coalesced
                } else if w & MASKED != 0 {
                    Raised::Masked
                } else {
                    want_calls = 1;
                    let kick = queues.link(&mut want, p, t).is_some();
                    Raised::Notified { vcpu: t, kick }
                };
                Ok(format!("{r:?}"))
            });
            got = fifo.set_pending(p, target).map(|r| format!("{r:?}"));
        }
        3 => {
            name = "unmask";
            want_result = own.map_or(oor, |w| {
                want.words[p as usize] = Some(w & !MASKED);
                // Xen's `evtchn_fifo_unmask`: relink whenever pending (the
                // link itself leaves a port still on a queue alone).
                let kick = if w & PENDING != 0 {
                    want_calls = 1;
                    if w & LINKED == 0 {
                        queues.link(&mut want, p, t)
                    } else {
                        None
                    }
                } else {
                    None
                };
                Ok(format!("{kick:?}"))
            });
            got = fifo.unmask(p, target).map(|k| format!("{k:?}"));
        }
        4 => {
            name = "reraise";
            want_result = own.map_or(oor, |w| {
                let kick = if w & (PENDING | MASKED | LINKED) == PENDING {
                    want_calls = 1;
                    queues.link(&mut want, p, t)
                } else {
                    None
                };
                Ok(format!("{kick:?}"))
            });
            got = fifo.reraise(p, target).map(|k| format!("{k:?}"));
        }
        5..=7 => {
            let (label, set, clear) = match code {
                5 => ("mask", MASKED, 0),
                6 => ("clear_pending", 0, PENDING),
                _ => ("test_and_clear_pending", 0, PENDING),
            };
            name = label;
            want_result = own.map_or(oor, |w| {
                want.words[p as usize] = Some((w | set) & !clear);
                Ok(if code == 7 {
                    (w & PENDING != 0).to_string()
                } else {
                    String::new()
                })
            });
            got = match code {
                5 => fifo.mask(p).map(|_| String::new()),
                6 => fifo.clear_pending(p).map(|()| String::new()),
                _ => fifo.test_and_clear_pending(p).map(|x| x.to_string()),
            };
        }
        8 => {
            name = "is_pending/is_masked";
            want_result = own.map_or(oor, |w| {
                Ok(format!("{} {}", w & PENDING != 0, w & MASKED != 0))
            });
            got = fifo
                .is_pending(p)
                .and_then(|x| Ok(format!("{x} {}", fifo.is_masked(p)?)));
        }
        9 => {
            name = "set_priority";
            let prio = priority_arg(&mut st.input);
            want_result = if usize::from(prio) >= MAX_QUEUES {
                Err(Error::PriorityOutOfRange)
            } else if p >= nr {
                oor
            } else {
                // Unmapped ports of an `OwnedFifo` have a priority too.
                queues.priority[p as usize] = prio;
                Ok(String::new())
            };
            got = fifo.set_priority(p, prio).map(|()| String::new());
            st.trace.push(format!("  (priority {prio})"));
        }
        10 => {
            name = "guest_unmask";
            if own.is_some_and(|w| w & (MASKED | PENDING | BUSY) == MASKED | BUSY) {
                // The guest's conditional unmask waits for the raise side's
                // BUSY, as Linux's does; a BUSY the guest wrote itself is
                // never cleared, and waiting for it would be the guest's
                // own hang.
                st.trace.push(format!(
                    "guest_unmask({p}) skipped: BUSY written by the guest"
                ));
                return;
            }
            want_result = own.map_or(oor, |w| {
                Ok(format!(
                    "{:?}",
                    if w & MASKED == 0 {
                        GuestUnmask::Done
                    } else if w & PENDING != 0 {
                        GuestUnmask::Hypercall
                    } else {
                        want.words[p as usize] = Some(w & !MASKED);
                        GuestUnmask::Done
                    }
                ))
            });
            got = fifo.try_unmask(p).map(|r| format!("{r:?}"));
        }
        11 => {
            name = "upcall_pending";
            want_result = if t < nv {
                Ok((before.flags[t as usize] != 0).to_string())
            } else {
                Err(Error::VcpuOutOfRange)
            };
            got = fifo.upcall_pending(t).map(|x| x.to_string());
        }
        _ => {
            name = "prepare";
            want_result = if p < nr {
                // Maps the page holding `p` (a no-op for borrowed memory).
                let page = p / EVENT_WORDS_PER_PAGE * EVENT_WORDS_PER_PAGE;
                for x in page..(page + EVENT_WORDS_PER_PAGE).min(nr) {
                    want.words[x as usize].get_or_insert(0);
                }
                Ok(String::new())
            } else {
                oor
            };
            got = fifo.prepare(p).map(|()| String::new());
        }
    }
    st.trace
        .push(format!("{name}(port {p}, target {t}) = {got:?}"));
    g.after(st, mem, d, name);
    let after = words(mem, d);
    if got != want_result {
        st.fail(format!("{name}: {got:?}, want {want_result:?}"));
    }
    if calls.get() != want_calls {
        st.fail(format!(
            "{name}: target read {} times, want {want_calls}",
            calls.get()
        ));
    }
    if after != want {
        st.fail(format!(
            "{name} of port {p} on vCPU {t}: memory (after vs want) {}",
            after.diff(&want)
        ));
    }
}

/// The guest's consumer on vCPU `v`, with a handler that consumes events,
/// forwards some to other vCPUs (`Delivery::Foreign`, as the control plane
/// does for a rebound port), scribbles and makes raw calls meanwhile.
fn raw_scan<M: FifoMemory>(
    st: &mut St,
    fifo: &Fifo<M>,
    d: Dims,
    queues: &mut Queues,
    g: &Guard,
    cursors: &mut [FifoCursor],
    v: u32,
) {
    let mem = fifo.memory();
    let nr = fifo.nr_ports();
    let nv = fifo.nr_vcpus();
    let budget = (2 * nr as usize).max(64);
    let before = words(mem, d);
    let mut fresh = FifoCursor::default();
    let keep = st.input.flip();
    let cursor = match cursors.get_mut(v as usize) {
        Some(c) if keep => c,
        _ => &mut fresh,
    };
    let mut offers: Vec<u32> = Vec::new();
    let mut cleared: Vec<u32> = Vec::new();
    let mut forwarded: Vec<(u32, u32)> = Vec::new();
    let mut want_kicks: Vec<u32> = Vec::new();
    let mut kicks: Vec<u32> = Vec::new();
    let mut disturbances = 0usize;
    let got = fifo.scan(
        v,
        cursor,
        |port| {
            offers.push(port);
            if offers.len() > budget {
                st.fail(format!(
                    "scan({v}) offered more than its budget of {budget}: {offers:?}"
                ));
            }
            // Just taken off a queue: pending, unmasked, unlinked.
            let w = mem.event_word(port).map(|w| w.load(SeqCst));
            if port == 0 || port >= nr || w.map(|w| w & !(BUSY | RESERVED)) != Some(PENDING) {
                st.fail(format!(
                    "scan({v}) offered port {port} of {nr}, word {w:x?}"
                ));
            }
            for _ in 0..st.input.below(3) {
                match st.input.byte() % 4 {
                    0 | 1 => {
                        if fifo.test_and_clear_pending(port) == Ok(true) {
                            cleared.push(port);
                        }
                    }
                    2 => {
                        disturbances += 1;
                        scribble(st, mem, d);
                    }
                    _ => {
                        disturbances += 1;
                        st.ops += 1;
                        raw_op(st, fifo, d, queues, g, None);
                    }
                }
            }
            match st.input.byte() % 4 {
                0 | 1 => Delivery::Handled,
                2 => Delivery::Skipped,
                _ => {
                    let u = vcpu_arg(&mut st.input, nv);
                    if u == v {
                        return Delivery::Skipped;
                    }
                    // The core links it on `u` as soon as this returns.
                    let mut now = words(mem, d);
                    want_kicks.extend(queues.link(&mut now, port, u));
                    forwarded.push((port, u));
                    Delivery::Foreign(u)
                }
            }
        },
        |k| kicks.push(k),
    );
    st.trace.push(format!(
        "scan({v}) = {got:?}, offers {offers:?}, forwarded {forwarded:?}"
    ));
    g.after(st, mem, d, "scan");
    let after = words(mem, d);
    if v >= nv {
        if got != Err(Error::VcpuOutOfRange) || !offers.is_empty() || after != before {
            st.fail(format!("scan of out-of-range vCPU {v}: {got:?}"));
        }
        return;
    }
    if got.is_err() {
        st.fail(format!("scan({v}) = {got:?}"));
    }
    if kicks != want_kicks {
        st.fail(format!("scan({v}) kicked {kicks:?}, want {want_kicks:?}"));
    }
    let flag = after.flags[v as usize];
    if flag > 1 {
        st.fail(format!("scan({v}) left the upcall flag at {flag}"));
    }
    if disturbances == 0 {
        scan_effect(
            st, &before, &after, v, &offers, &cleared, &forwarded, budget,
        );
    }
}

/// What an undisturbed scan of `v` may do to A's words: take events off
/// queues (clear LINKED and LINK), clear the pending bits its handler
/// cleared, link forwarded events on their vCPUs; set no pending, mask or
/// BUSY bit, write no head, and leave `v`'s `ready` empty and, when the
/// queues could not exhaust the budget, its upcall flag down.
#[allow(clippy::too_many_arguments)]
fn scan_effect(
    st: &St,
    before: &Words,
    after: &Words,
    v: u32,
    offers: &[u32],
    cleared: &[u32],
    forwarded: &[(u32, u32)],
    budget: usize,
) {
    for (p, (b, a)) in before.words.iter().zip(&after.words).enumerate() {
        let (b, a) = match (b, a) {
            (Some(b), Some(a)) => (*b, *a),
            (None, None) => continue,
            _ => st.fail(format!("scan({v}) changed the mapping of port {p}")),
        };
        let pending_ok = if cleared.contains(&(p as u32)) {
            a & PENDING == 0
        } else {
            (a ^ b) & PENDING == 0
        };
        if !pending_ok || (a ^ b) & (MASKED | RESERVED) != 0 || a & BUSY & !b != 0 {
            st.fail(format!("scan({v}): word of port {p}: {b:#x} -> {a:#x}"));
        }
    }
    let targets: Vec<usize> = forwarded.iter().map(|&(_, u)| u as usize).collect();
    for u in 0..before.ready.len() {
        let (rb, ra) = (before.ready[u], after.ready[u]);
        let heads_ok = (0..MAX_QUEUES).all(|q| {
            let h = after.heads[u][q];
            h == before.heads[u][q] || forwarded.iter().any(|&(p, w)| p == h && w as usize == u)
        });
        let ok = if u == v as usize {
            ra == 0 && after.heads[u] == before.heads[u]
        } else if targets.contains(&u) {
            ra & rb == rb && heads_ok
        } else {
            ra == rb && after.heads[u] == before.heads[u]
        };
        if !ok {
            st.fail(format!(
                "scan({v}) changed vCPU {u}'s control block: {}",
                after.diff(before)
            ));
        }
    }
    for u in 0..before.flags.len() {
        let (fb, fa) = (before.flags[u], after.flags[u]);
        let ok = u == v as usize || fa == fb || (fa == 1 && targets.contains(&u));
        if !ok {
            st.fail(format!("scan({v}) changed vCPU {u}'s flag {fb} -> {fa}"));
        }
    }
    if after.other != before.other {
        st.fail(format!("scan({v}) wrote 2-level fields"));
    }
    // Bounded work: with nothing forwarded, each step of the scan either
    // ends a queue (at most once per `ready` bit) or clears a nonzero LINK.
    if forwarded.is_empty() {
        let steps = before.links() + 32;
        if offers.len() > steps {
            st.fail(format!(
                "scan({v}) offered {} events with {steps} possible steps",
                offers.len()
            ));
        }
        if steps < budget && after.flags[v as usize] != 0 {
            st.fail(format!("scan({v}) returned with its flag up"));
        }
    }
}

// ---------------------------------------------------------------------------
// The control plane over hostile memory
// ---------------------------------------------------------------------------

/// Where a control-plane operation may write A's words.
struct Reach {
    port: u32,
    /// vCPUs whose queue state the operation may extend.
    targets: Vec<u32>,
    /// A bind, which maps its port's page.
    bind: bool,
    /// Bits of the port's word the operation may change.
    own: u32,
    /// Bits the port's word must have set, and clear, afterwards.
    set: u32,
    clear: u32,
}

/// Checks that an operation wrote only where `r` says: its port's word (as
/// `r` says), the LINK and BUSY bits of at most one other word (the tail
/// it was appended to), and on its target vCPUs only `ready` bits added,
/// at most one head (its port), the upcall flag raised to 1.
fn confined(before: &Words, after: &Words, r: &Reach) -> Result<(), String> {
    let mut others = 0;
    for (p, (b, a)) in before.words.iter().zip(&after.words).enumerate() {
        let (b, a) = match (b, a) {
            (Some(b), Some(a)) => (*b, *a),
            (None, None) => continue,
            (None, Some(a)) if r.bind && (*a == 0 || p as u32 == r.port) => (0, *a),
            _ => return Err(format!("mapping of port {p} changed")),
        };
        if p as u32 == r.port {
            if (a ^ b) & !r.own != 0 || a & r.set != r.set || a & r.clear != 0 {
                return Err(format!("own word {b:#x} -> {a:#x}"));
            }
            continue;
        }
        if a != b {
            others += 1;
            if (a ^ b) & !(LINK_MASK | BUSY) != 0 || a & BUSY & !b != 0 || others > 1 {
                return Err(format!("word of port {p}: {b:#x} -> {a:#x}"));
            }
        }
    }
    let mut heads = 0;
    for u in 0..before.ready.len() {
        let target = r.targets.contains(&(u as u32));
        let (rb, ra) = (before.ready[u], after.ready[u]);
        for q in 0..MAX_QUEUES {
            let (hb, ha) = (before.heads[u][q], after.heads[u][q]);
            if hb != ha {
                heads += 1;
                if !target || ha != r.port || heads > 1 {
                    return Err(format!("head[{u}][{q}] {hb} -> {ha}"));
                }
            }
        }
        if ra & rb != rb || (!target && ra != rb) {
            return Err(format!("ready[{u}] {rb:#x} -> {ra:#x}"));
        }
    }
    for u in 0..before.flags.len() {
        let (fb, fa) = (before.flags[u], after.flags[u]);
        if fa != fb && !(fa == 1 && r.targets.contains(&(u as u32))) {
            return Err(format!("flag[{u}] {fb} -> {fa}"));
        }
    }
    if after.other != before.other {
        return Err("2-level fields written".into());
    }
    Ok(())
}

/// The control-plane operations of this body, by operation byte.
const CONTROL: ControlCodes = ControlCodes {
    codes: &[
        Code::BindXenCompat,
        Code::BindAffinity,
        Code::BindAffinity,
        Code::Send,
        Code::Send,
        Code::Send,
        Code::Mask,
        Code::Unmask,
        Code::MaskUntilEoi,
        Code::Eoi,
        Code::SetAffinity,
        Code::SetPriority,
        Code::Close,
        Code::Upcall,
        Code::Upcall,
        Code::Upcall,
    ],
    vcpu: vcpu_arg,
    priority: priority_arg,
};

fn control<M: FifoMemory>(st: &mut St, a: M, d: Dims, g: &Guard) {
    let ch = Channels::new(Fifo::new(a), Kicks::default());
    let nv = ch.nr_vcpus();
    if ch.nr_ports() != d.ports || nv != d.nr_vcpus() {
        st.fail(format!(
            "sizes: {} ports, {nv} vCPUs of {d:?}",
            ch.nr_ports()
        ));
    }
    // Every port starts masked (the guest's opening writes notwithstanding).
    let start = words(ch.abi().memory(), d);
    if let Some(p) = start
        .words
        .iter()
        .position(|w| w.is_some_and(|w| w & MASKED == 0))
    {
        st.fail(format!("port {p} not masked by Channels::new"));
    }
    let mut table = Table::new(ch.nr_ports(), nv);
    let mut handles: Vec<Port> = Vec::new();
    // The vCPUs' own handles: their cursors carry over between upcalls.
    let mut vcpus: Vec<FifoVcpu<'_, M>> = (0..nv).map(|v| ch.vcpu(v).unwrap()).collect();
    control_ops(st, &ch, d, &mut table, &mut handles, g, Some(&mut vcpus), 0);
}

/// Where `op` on `p` may write, given the model's `slot` of `p` before it
/// (`None`: the operation fails).
fn port_reach(op: PortOp, p: Port, slot: Option<Slot>, nv: u32) -> Reach {
    let mut reach = Reach {
        port: p.number(),
        targets: Vec::new(),
        bind: false,
        own: 0,
        set: 0,
        clear: 0,
    };
    let reasons = slot.is_some_and(|s| s.explicit || s.eoi);
    // What a raise may change of its own port's word.
    let linking = PENDING | LINKED | LINK_MASK;
    // Unmasks when it removes the last reason.
    let last = |explicit: bool| {
        slot.is_some_and(|s| {
            if explicit {
                s.explicit && !s.eoi
            } else {
                s.eoi && !s.explicit
            }
        })
    };
    match op {
        PortOp::Send => {
            reach.targets.extend(slot.map(|s| s.vcpu));
            reach.own = linking;
            reach.set = PENDING;
        }
        PortOp::Mask | PortOp::MaskUntilEoi => {
            if !reasons {
                reach.own = MASKED;
                reach.set = MASKED;
            }
        }
        PortOp::Unmask | PortOp::Eoi => {
            if last(op == PortOp::Unmask) {
                reach.targets.extend(slot.map(|s| s.vcpu));
                reach.own = MASKED | linking;
                reach.clear = MASKED;
            }
        }
        PortOp::SetAffinity(v) => {
            // Masked for the move, then unmasked on the new vCPU. A port
            // masked by a late EOI alone (in the control word, not in
            // memory) may be linked there by the hypervisor's bind_vcpu.
            if v < nv && slot.is_some_and(|s| s.vcpu != v) {
                reach.targets.push(v);
                reach.own = linking;
                if slot.is_some_and(|s| !s.explicit && !s.eoi) {
                    reach.own |= MASKED;
                    reach.clear = MASKED;
                }
            }
        }
        PortOp::SetPriority(_) => {}
        PortOp::Close => {
            // Masked by the guest; the hypervisor's close clears PENDING
            // (unless the port stays closing while its handler runs).
            reach.own = MASKED | PENDING;
            reach.set = MASKED;
        }
    }
    reach
}

/// The deliver side of one vCPU of the instance under test.
type FifoVcpu<'c, M> = Vcpu<'c, InProcess<Fifo<M>, Kicks>>;

#[allow(clippy::too_many_arguments)]
fn control_ops<'c, M: FifoMemory>(
    st: &mut St,
    ch: &'c Ch<M>,
    d: Dims,
    table: &mut Table,
    handles: &mut Vec<Port>,
    g: &Guard,
    mut vcpus: Option<&mut Vec<FifoVcpu<'c, M>>>,
    depth: u32,
) {
    let mem = ch.abi().memory();
    let nv = table.nr_vcpus;
    let mut count = if depth == 0 {
        usize::MAX
    } else {
        st.input.below(3) as usize
    };
    while st.budget_left() && count > 0 {
        count -= 1;
        st.ops += 1;
        for _ in 0..st.scribbles() {
            scribble(st, mem, d);
        }
        let Some(op) = CONTROL.decode(&mut st.input, nv, handles) else {
            continue;
        };
        // Kicks made before this operation (a handler's end re-raising an
        // event) are not this operation's.
        ch.notifier().take();
        let before = words(mem, d);
        let (name, verdict, failed, reach) = match op {
            Control::Upcall(v) => {
                st.trace.push(format!("upcall({v})"));
                let own = vcpus.as_deref_mut().and_then(|h| h.get_mut(v as usize));
                control_upcall(st, ch, d, table, handles, g, own, v, depth);
                continue;
            }
            Control::Bind(mode) => {
                let r = ch.bind(mode);
                let verdict = table.bind(mode, r, PRIORITY_DEFAULT);
                let xen = mode == Bind::XenCompat;
                let reach = Reach {
                    port: r.map_or(0, |p| p.number()),
                    targets: vec![bind_target(mode)],
                    bind: true,
                    own: !0,
                    // Bind leaves pending alone (the hypervisor's close
                    // cleared it): a pending bit found here (scribbled) is
                    // raised for the new life by the unmask.
                    set: if xen { PENDING } else { 0 },
                    clear: MASKED,
                };
                if let Ok(Some(p)) = verdict {
                    remember(handles, p);
                }
                let failed = matches!(verdict, Ok(None));
                (
                    format!("bind({mode:?}) = {r:?}"),
                    verdict.map(|_| ()),
                    failed,
                    reach,
                )
            }
            Control::Port(op, p) => {
                let slot = table.check(p).ok().map(|n| table.slots[n]);
                let reach = port_reach(op, p, slot, nv);
                let want = table.apply(op, p);
                let got = op.call(ch, p);
                let verdict = if got == want {
                    Ok(())
                } else {
                    Err(format!("want {want:?}"))
                };
                (
                    format!("{} = {got:?}", op.name(p)),
                    verdict,
                    got.is_err(),
                    reach,
                )
            }
        };
        st.trace.push(name.clone());
        g.after(st, mem, d, &name);
        if let Err(e) = verdict {
            st.fail(format!("{name}, {e}"));
        }
        let after = words(mem, d);
        if failed {
            if after != before {
                st.fail(format!("{name} failed and wrote: {}", after.diff(&before)));
            }
        } else if let Err(e) = confined(&before, &after, &reach) {
            st.fail(format!("{name} wrote outside its reach: {e}"));
        }
        // Kicks: exactly the vCPUs whose flag went 0 → 1.
        let vcpus_flags = before.flags.len().min(nv as usize);
        let kicks = ch.notifier().take();
        if let Err(e) = check_kicks(&before.flags[..vcpus_flags], &after.flags, kicks) {
            st.fail(format!("{name}: {e}"));
        }
        check_table(st, ch, table);
    }
}

#[allow(clippy::too_many_arguments)]
fn control_upcall<'c, M: FifoMemory>(
    st: &mut St,
    ch: &'c Ch<M>,
    d: Dims,
    table: &mut Table,
    handles: &mut Vec<Port>,
    g: &Guard,
    own: Option<&mut FifoVcpu<'c, M>>,
    v: u32,
    depth: u32,
) {
    let mem = ch.abi().memory();
    let nv = table.nr_vcpus;
    let mut fresh;
    let handle = match own {
        Some(h) => h,
        None => match ch.vcpu(v) {
            Ok(h) if v < nv => {
                fresh = h;
                &mut fresh
            }
            Err(Error::VcpuOutOfRange) if v >= nv => return,
            other => st.fail(format!("vcpu({v}) = {:?}", other.map(|h| h.id()))),
        },
    };
    let before = words(mem, d);
    let scribbles = st.scribbles;
    let budget = (2 * table.slots.len()).max(64);
    let mut runs = 0usize;
    let got = handle.upcall(|p| {
        runs += 1;
        if runs > budget {
            st.fail(format!("upcall({v}) ran more than its budget of {budget}"));
        }
        let n = table.may_run(p, v).unwrap_or_else(|e| st.fail(e));
        // The event was consumed before its handler runs.
        let w = mem.event_word(p.number()).map(|w| w.load(SeqCst));
        if !w.is_some_and(|w| w & PENDING == 0) {
            st.fail(format!("upcall({v}) ran {p:?} with word {w:x?}"));
        }
        st.trace.push(format!("  ran {p:?} on vCPU {v}"));
        if depth < 2 {
            table.slots[n].in_flight = true;
            control_ops(st, ch, d, table, handles, g, None, depth + 1);
            let s = &mut table.slots[n];
            s.in_flight = false;
            s.closing = false;
        }
        // Kicks inside an upcall are the vCPU's own business; drop them.
        ch.notifier().take();
    });
    g.after(st, mem, d, "upcall");
    if got != Ok(runs) {
        st.fail(format!("upcall({v}) = {got:?} after {runs} runs"));
    }
    ch.notifier().take();
    if st.scribbles == scribbles && words(mem, d).other != before.other {
        st.fail(format!("upcall({v}) wrote 2-level fields"));
    }
    check_table(st, ch, table);
}

fn check_table<M: FifoMemory>(st: &St, ch: &Ch<M>, table: &Table) {
    for n in 1..table.slots.len() {
        let got = match ch.status(n as u32) {
            Ok(x) => x,
            Err(e) => st.fail(format!("status({n}) = {e:?}")),
        };
        if let Err(e) = table.agrees(n, &got, true) {
            st.fail(e);
        }
    }
}
