//! `guest_memory`: hostile shared memory (contract C7).
//!
//! Domain A's memory belongs to a hostile guest: before every operation the
//! input writes arbitrary values into any of its guest-writable words
//! (pending and mask words, selectors, upcall flags and masks, and on the
//! real layout every other byte of the page too). Domain B is a bystander
//! with its own bound, pending and masked ports.
//!
//! Two memories ([`Backend`]): two real `shared_info` pages side by side in
//! one caller-owned buffer, overlaid with `SharedInfo::from_ptr` (so an
//! out-of-bounds write from A would land in B), or memory of any shape for A
//! (pending and mask arrays of different lengths, none at all, more than 64
//! words, no vCPU) beside an `OwnedMemory` for B.
//!
//! Two ways to drive A ([`Mode`]): the raw raise side, as a hypervisor
//! does (`PortOps` over guest memory), checked against an exact
//! bit-level statement of each operation; or the control plane over A's
//! memory, checked against a model of the hypervisor-private port table.
//!
//! Checked after every operation: no panic; typed errors for out-of-range
//! ports and vCPUs; an operation on port `p` raised on vCPU `t` changes
//! nothing but `p`'s own pending and mask bits and `t`'s selector bit and
//! upcall flag, and kicks `t` exactly when that flag went 0 → 1; no other
//! byte of either page and nothing of domain B changes; a scan visits only
//! existing, pending, unmasked ports, at most once per pass, with passes
//! bounded by the flag raises during it (bounded work: no hang); a handler
//! runs only for a port bound to that vCPU in this life, unmasked by the
//! control plane and not in flight, whatever the memory says (C3–C6).

use std::cell::Cell;
use std::sync::atomic::{AtomicU64, Ordering::SeqCst};

use evtchn::xen::{SharedInfo, VcpuInfo, XenUlong};
use evtchn::{
    Bind, Channels, Delivery, Error, Memory2l, OwnedMemory, Port, Raised, TwoLevel, TwoLevelCursor,
};
use evtchn::{Deliver, Ports, Raise};

use super::{check_kicks, remember, Code, Control, ControlCodes, Input, Kicks, St, Table};

/// Operations per input (scribbles not counted).
pub const MAX_OPS: usize = 300;

/// The memory an input runs on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    /// Two `shared_info` pages in one buffer, through `SharedInfo::from_ptr`.
    Pages,
    /// A of any shape, B an `OwnedMemory`.
    Shaped,
}

/// How domain A is driven.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// The raw `PortOps` raise side (and the guest's scan).
    Raw,
    /// The control plane (`Channels`) over A's memory.
    Control,
}

/// A deliberately broken system under test, for the negative tests that
/// show the checks can fail (`tests/fuzz_replay.rs`): the harness does
/// what a buggy core would, right after each operation on A.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Sabotage {
    /// Sets a pending bit in domain B.
    TouchOtherDomain,
    /// Sets a selector bit of a vCPU other than the one raised.
    ForeignSelector,
}

/// Runs one input; panics on a finding.
pub fn run(data: &[u8]) {
    run_with(data, None)
}

/// [`run`], with a simulated core bug when `sabotage` says so.
pub fn run_with(data: &[u8], sabotage: Option<Sabotage>) {
    let mut input = Input::new(data);
    let backend = if input.flip() {
        Backend::Shaped
    } else {
        Backend::Pages
    };
    let mode = if input.flip() {
        Mode::Control
    } else {
        Mode::Raw
    };
    match backend {
        Backend::Pages => {
            let pages = Pages::new(&mut input);
            let (a, b) = pages.domains();
            let rest = || pages.rest();
            let poke = |i: usize, v: u64| pages.words()[i % PAGE_WORDS].store(v, SeqCst);
            drive(a, b, &rest, &poke, input, mode, sabotage);
        }
        Backend::Shaped => {
            let a = Shaped::new(&mut input);
            let b = OwnedMemory::new(1, 2);
            drive(&a, &b, &Vec::new, &|_, _| {}, input, mode, sabotage);
        }
    }
}

// ---------------------------------------------------------------------------
// Memories
// ---------------------------------------------------------------------------

/// Words of one 4096-byte page.
const PAGE_WORDS: usize = 512;
/// Word offsets of the 2-level fields in `shared_info` (Xen's layout).
const PENDING_AT: usize = 2048 / 8;
const MASK_AT: usize = 2560 / 8;
const VCPU_WORDS: usize = 64 / 8;
const LEGACY_VCPUS: usize = 32;

/// Two pages in one caller-owned allocation: A at 0, B at 4096.
struct Pages {
    raw: *mut [u64; 2 * PAGE_WORDS],
}

impl Pages {
    /// Zeroed pages, then the input's opening scribbles over page A.
    fn new(input: &mut Input) -> Self {
        let raw = Box::into_raw(Box::new([0u64; 2 * PAGE_WORDS]));
        let pages = Pages { raw };
        for _ in 0..input.below(8) {
            let i = input.below(PAGE_WORDS as u32) as usize;
            let v = input.word();
            pages.words()[i].store(v, SeqCst);
        }
        pages
    }

    /// Every word of both pages, accessed atomically only (as
    /// `SharedInfo::from_ptr` requires of every other party).
    fn words(&self) -> &[AtomicU64; 2 * PAGE_WORDS] {
        // SAFETY: `raw` is a live, 8-aligned allocation of this size, freed
        // only by `drop`, after every borrow of `self`; `AtomicU64` has the
        // size and alignment of `u64`, and every access is atomic.
        unsafe { &*self.raw.cast::<[AtomicU64; 2 * PAGE_WORDS]>() }
    }

    /// Domain A's and domain B's `shared_info`.
    fn domains(&self) -> (&SharedInfo, &SharedInfo) {
        let base = self.raw.cast::<u64>();
        // SAFETY: both pointers are 8-aligned, 4096 bytes apart inside the
        // allocation (each page holds the 3136 bytes of a `shared_info`);
        // the allocation outlives the borrow of `self`; every other access
        // (`words`) is atomic.
        unsafe {
            (
                SharedInfo::from_ptr(base.cast::<SharedInfo>()),
                SharedInfo::from_ptr(base.add(PAGE_WORDS).cast::<SharedInfo>()),
            )
        }
    }

    /// Every word the core must leave alone: both pages but for A's
    /// pending, mask and selector words and A's upcall-flag bytes.
    fn rest(&self) -> Vec<u64> {
        let mut w: Vec<u64> = self.words().iter().map(|w| w.load(SeqCst)).collect();
        for x in &mut w[PENDING_AT..MASK_AT + 64] {
            *x = 0;
        }
        for v in 0..LEGACY_VCPUS {
            w[v * VCPU_WORDS] &= !0xff; // evtchn_upcall_pending (little-endian)
            w[v * VCPU_WORDS + 1] = 0; // evtchn_pending_sel
        }
        w
    }
}

impl Drop for Pages {
    fn drop(&mut self) {
        // SAFETY: `raw` came from `Box::into_raw`; no borrow of `self`, and
        // so no view of the memory, outlives this call.
        drop(unsafe { Box::from_raw(self.raw) });
    }
}

/// Memory of any shape, including shapes `OwnedMemory` refuses to build.
struct Shaped {
    pending: Vec<XenUlong>,
    mask: Vec<XenUlong>,
    vcpus: Vec<VcpuInfo>,
}

impl Shaped {
    fn new(input: &mut Input) -> Self {
        let mut words = || match input.byte() % 16 {
            0 => 0,
            1 => 65,
            2 => 64,
            b => usize::from(b % 3) + 1,
        };
        let (p, m) = (words(), words());
        let vcpus = match input.byte() % 8 {
            0 => 0,
            b => usize::from(b % 4) + 1,
        };
        let s = Shaped {
            pending: (0..p).map(|_| AtomicU64::new(input.word())).collect(),
            mask: (0..m).map(|_| AtomicU64::new(input.word())).collect(),
            vcpus: (0..vcpus).map(|_| VcpuInfo::new()).collect(),
        };
        for vi in &s.vcpus {
            vi.evtchn_pending_sel.store(input.word(), SeqCst);
            vi.evtchn_upcall_pending.store(input.byte(), SeqCst);
        }
        s
    }
}

impl Memory2l for Shaped {
    fn pending(&self) -> &[XenUlong] {
        &self.pending
    }
    fn mask(&self) -> &[XenUlong] {
        &self.mask
    }
    fn vcpu_info(&self, vcpu: u32) -> Option<&VcpuInfo> {
        self.vcpus.get(vcpu as usize)
    }
    fn nr_vcpus(&self) -> u32 {
        self.vcpus.len() as u32
    }
}

/// The 2-level words of a memory, through its `Memory2l` view.
#[derive(Clone, Debug, PartialEq)]
struct Words {
    pending: Vec<u64>,
    mask: Vec<u64>,
    sel: Vec<u64>,
    flag: Vec<u8>,
    upcall_mask: Vec<u8>,
}

fn words<M: Memory2l>(m: &M) -> Words {
    Words {
        pending: m.pending().iter().map(|w| w.load(SeqCst)).collect(),
        mask: m.mask().iter().map(|w| w.load(SeqCst)).collect(),
        sel: (0..m.nr_vcpus())
            .filter_map(|v| m.vcpu_info(v))
            .map(|v| v.evtchn_pending_sel.load(SeqCst))
            .collect(),
        flag: (0..m.nr_vcpus())
            .filter_map(|v| m.vcpu_info(v))
            .map(|v| v.evtchn_upcall_pending.load(SeqCst))
            .collect(),
        upcall_mask: (0..m.nr_vcpus())
            .filter_map(|v| m.vcpu_info(v))
            .map(|v| v.evtchn_upcall_mask.load(SeqCst))
            .collect(),
    }
}

/// Bit `b` of word `w` of `ws`, false where the word does not exist.
fn bit(ws: &[u64], w: usize, b: u64) -> bool {
    ws.get(w).is_some_and(|x| x & b != 0)
}

// ---------------------------------------------------------------------------
// The harness
// ---------------------------------------------------------------------------

/// Domain B: a control plane with a few ports in known states.
struct Bystander<'m, M: Memory2l> {
    ch: Channels<TwoLevel<&'m M>, Kicks>,
    sent: Port,
    masked: Port,
    idle: Port,
}

impl<'m, M: Memory2l> Bystander<'m, M> {
    fn new(mem: &'m M) -> Self {
        let ch = Channels::new(TwoLevel::new(mem), Kicks::default());
        let sent = ch.bind(Bind::Affinity(1)).unwrap();
        let masked = ch.bind(Bind::Affinity(0)).unwrap();
        let idle = ch.bind(Bind::XenCompat).unwrap();
        ch.vcpu(0).unwrap().upcall(|_| {}).unwrap();
        ch.send(sent).unwrap();
        ch.mask(masked).unwrap();
        ch.send(masked).unwrap();
        ch.notifier().take();
        Bystander {
            ch,
            sent,
            masked,
            idle,
        }
    }

    /// Everything observable of B.
    fn snapshot(&self) -> (Words, Vec<evtchn::Status>) {
        let statuses = (1..8).map(|n| self.ch.status(n).unwrap()).collect();
        (words(*self.ch.abi().memory()), statuses)
    }

    /// B still works as it did: its pending event runs on vCPU 1, its
    /// masked one after unmask, its idle one on send.
    fn still_works(&self) {
        let run = |v: u32| {
            let mut seen = Vec::new();
            self.ch.vcpu(v).unwrap().upcall(|p| seen.push(p)).unwrap();
            seen
        };
        assert_eq!(run(1), [self.sent], "domain B lost its pending event");
        self.ch.unmask(self.masked).unwrap();
        self.ch.send(self.idle).unwrap();
        assert_eq!(run(0), [self.masked, self.idle], "domain B misdelivers");
    }
}

/// The checks around every operation on A: nothing outside A's event words
/// changed (when the guest wrote nothing meanwhile), nor anything of B.
struct Watch<'w> {
    rest: &'w dyn Fn() -> Vec<u64>,
    b_unchanged: &'w dyn Fn() -> bool,
    /// The simulated core bug of a negative test, if any.
    sabotage: &'w dyn Fn(),
}

/// What [`Watch::after`] compares with.
struct Before {
    rest: Vec<u64>,
    scribbles: usize,
}

impl Watch<'_> {
    fn before(&self, st: &St) -> Before {
        Before {
            rest: (self.rest)(),
            scribbles: st.scribbles,
        }
    }

    fn after(&self, st: &St, before: &Before, what: &str) {
        (self.sabotage)();
        if st.scribbles == before.scribbles && (self.rest)() != before.rest {
            st.fail(format!("{what} wrote outside A's event words"));
        }
        if !(self.b_unchanged)() {
            st.fail(format!("{what} changed domain B"));
        }
    }
}

/// A port argument: mostly in range or just past it, sometimes far out.
fn port_arg(input: &mut Input, nr_ports: u32) -> u32 {
    match input.byte() {
        0..=243 => input.below(nr_ports + 8),
        244 => u32::MAX,
        245 => 4096,
        246 => 64 * 64 + 1,
        247 => nr_ports,
        b => nr_ports.wrapping_add(u32::from(b)),
    }
}

/// A vCPU argument: mostly in range or just past it, sometimes far out.
fn vcpu_arg(input: &mut Input, nr_vcpus: u32) -> u32 {
    match input.byte() {
        b @ 0..=249 => u32::from(b) % (nr_vcpus + 2),
        250 => u32::MAX,
        251 => 0xffff,
        b => nr_vcpus + u32::from(b),
    }
}

/// What the hostile guest may write: one of A's words.
fn scribble<M: Memory2l>(st: &mut St, a: &M, poke: &dyn Fn(usize, u64)) {
    let value = st.input.word();
    let vcpus: Vec<&VcpuInfo> = (0..a.nr_vcpus()).filter_map(|v| a.vcpu_info(v)).collect();
    let what = st.input.byte() % 8;
    let i = usize::from(st.input.byte());
    let done = match what {
        0 | 1 => a.pending().get(i % a.pending().len().max(1)).map(|w| {
            w.store(value, SeqCst);
            "pending"
        }),
        2 | 3 => a.mask().get(i % a.mask().len().max(1)).map(|w| {
            w.store(value, SeqCst);
            "mask"
        }),
        4 => vcpus.get(i % vcpus.len().max(1)).map(|v| {
            v.evtchn_pending_sel.store(value, SeqCst);
            "sel"
        }),
        5 => vcpus.get(i % vcpus.len().max(1)).map(|v| {
            v.evtchn_upcall_pending.store(value as u8, SeqCst);
            "flag"
        }),
        6 => vcpus.get(i % vcpus.len().max(1)).map(|v| {
            v.evtchn_upcall_mask.store(value as u8, SeqCst);
            "upcall_mask"
        }),
        _ => {
            // Any word of page A (no-op for shaped memory).
            poke(i * 2 % PAGE_WORDS, value);
            Some("page")
        }
    };
    if let Some(what) = done {
        st.scribbles += 1;
        st.trace.push(format!("scribble {what}[{i}] = {value:#x}"));
    }
}

fn drive<MA: Memory2l, MB: Memory2l>(
    a: &MA,
    b: &MB,
    rest: &dyn Fn() -> Vec<u64>,
    poke: &dyn Fn(usize, u64),
    input: Input,
    mode: Mode,
    sabotage: Option<Sabotage>,
) {
    let bystander = Bystander::new(b);
    let b_before = bystander.snapshot();
    let b_unchanged = || bystander.snapshot() == b_before;
    let simulate_bug = || match sabotage {
        Some(Sabotage::TouchOtherDomain) => {
            b.pending()[0].fetch_or(1 << 63, SeqCst);
        }
        Some(Sabotage::ForeignSelector) => {
            if let Some(v) = a.nr_vcpus().checked_sub(1).and_then(|v| a.vcpu_info(v)) {
                v.evtchn_pending_sel.fetch_or(1, SeqCst);
            }
        }
        None => {}
    };
    let watch = Watch {
        rest,
        b_unchanged: &b_unchanged,
        sabotage: &simulate_bug,
    };
    let first = format!(
        "{mode:?}, A of {}/{} words, {} vCPUs",
        a.pending().len(),
        a.mask().len(),
        a.nr_vcpus()
    );
    let mut st = St::new("guest_memory", MAX_OPS, input, first);
    match mode {
        Mode::Raw => raw(&mut st, a, poke, &watch),
        Mode::Control => control(&mut st, a, poke, &watch),
    }
    bystander.still_works();
}

// ---------------------------------------------------------------------------
// Raw raise side
// ---------------------------------------------------------------------------

fn raw<M: Memory2l>(st: &mut St, mem: &M, poke: &dyn Fn(usize, u64), watch: &Watch) {
    let ops = TwoLevel::new(mem);
    let nr = ops.nr_ports();
    let nv = ops.nr_vcpus();
    let expect_nr = (mem.pending().len().min(mem.mask().len()).min(64) * 64) as u32;
    if nr != expect_nr || nv != mem.nr_vcpus() {
        st.fail(format!("sizes: {nr} ports, {nv} vCPUs"));
    }
    while st.budget_left() {
        st.ops += 1;
        for _ in 0..st.input.below(4) {
            scribble(st, mem, poke);
        }
        let code = st.input.byte() % 10;
        let p = port_arg(&mut st.input, nr);
        let t = vcpu_arg(&mut st.input, nv);
        let before = words(mem);
        let snap = watch.before(st);
        let calls = Cell::new(0u32);
        let target = || {
            calls.set(calls.get() + 1);
            t
        };
        let (w, b) = ((p / 64) as usize, 1u64 << (p % 64));
        let pending = bit(&before.pending, w, b);
        let masked = bit(&before.mask, w, b);
        // What the raise of `p` on `t` does to `t`'s words, and its kick.
        let raised = |before: &Words| -> (Words, Option<u32>) {
            let mut after = before.clone();
            let Some(sel) = after.sel.get_mut(t as usize) else {
                return (after, None);
            };
            if *sel & (1 << w) != 0 {
                return (after, None);
            }
            *sel |= 1 << w;
            let flag = &mut after.flag[t as usize];
            let old = std::mem::replace(flag, 1);
            (after, (old == 0).then_some(t))
        };
        let mut want = before.clone();
        let (name, got, want_result, want_calls): (
            &str,
            Result<String, Error>,
            Result<String, Error>,
            u32,
        );
        match code {
            0..=3 => {
                // The raising operations.
                let (label, result) = match code {
                    0 | 1 => (
                        "set_pending",
                        ops.set_pending(p, target).map(|r| format!("{r:?}")),
                    ),
                    2 => ("unmask", ops.unmask(p, target).map(|k| format!("{k:?}"))),
                    _ => ("reraise", ops.reraise(p, target).map(|k| format!("{k:?}"))),
                };
                name = label;
                got = result;
                let raises = p < nr
                    && match code {
                        0 | 1 => !pending && !masked,
                        2 => masked && pending,
                        _ => pending && !masked,
                    };
                if code <= 1 {
                    if let Some(x) = want.pending.get_mut(w) {
                        *x |= b;
                    }
                }
                if code == 2 {
                    if let Some(x) = want.mask.get_mut(w) {
                        *x &= !b;
                    }
                }
                let kick = if raises {
                    let (after, kick) = raised(&want);
                    want = after;
                    kick
                } else {
                    None
                };
                want_result = Ok(match code {
                    0 | 1 if pending => format!("{:?}", Raised::Coalesced),
                    0 | 1 if masked => format!("{:?}", Raised::Masked),
                    0 | 1 => format!(
                        "{:?}",
                        Raised::Notified {
                            vcpu: t,
                            kick: kick.is_some()
                        }
                    ),
                    _ => format!("{kick:?}"),
                });
                want_calls = u32::from(raises);
            }
            4 => {
                name = "mask";
                got = ops.mask(p).map(|_| String::new());
                if let Some(x) = want.mask.get_mut(w) {
                    *x |= b;
                }
                want_result = Ok(String::new());
                want_calls = 0;
            }
            5 => {
                name = "clear_pending";
                got = ops.clear_pending(p).map(|()| String::new());
                if let Some(x) = want.pending.get_mut(w) {
                    *x &= !b;
                }
                want_result = Ok(String::new());
                want_calls = 0;
            }
            6 => {
                name = "test_and_clear_pending";
                got = ops.test_and_clear_pending(p).map(|x| x.to_string());
                if let Some(x) = want.pending.get_mut(w) {
                    *x &= !b;
                }
                want_result = Ok(pending.to_string());
                want_calls = 0;
            }
            7 => {
                name = "is_pending/is_masked";
                got = ops
                    .is_pending(p)
                    .and_then(|x| Ok(format!("{x} {}", ops.is_masked(p)?)));
                want_result = Ok(format!("{pending} {masked}"));
                want_calls = 0;
            }
            8 => {
                let v = t;
                name = "upcall_pending";
                got = ops.upcall_pending(v).map(|x| x.to_string());
                want_result = match before.flag.get(v as usize) {
                    Some(f) => Ok((*f != 0).to_string()),
                    None => Err(Error::VcpuOutOfRange),
                };
                watch.after(st, &snap, name);
                if got != want_result || words(mem) != before {
                    st.fail(format!("{name}({v}): {got:?}, want {want_result:?}"));
                }
                continue;
            }
            _ => {
                scan(st, &ops, mem, t, poke, watch);
                continue;
            }
        }
        st.trace
            .push(format!("{name}(port {p}, target {t}) = {got:?}"));
        watch.after(st, &snap, name);
        let after = words(mem);
        if p >= nr {
            if got != Err(Error::PortOutOfRange) || after != before || calls.get() != 0 {
                st.fail(format!(
                    "{name} of out-of-range port {p}: {got:?}, {} target reads, memory {}",
                    calls.get(),
                    if after == before {
                        "unchanged"
                    } else {
                        "changed"
                    }
                ));
            }
            continue;
        }
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
                "{name} of port {p} on vCPU {t}: memory\n  before {before:?}\n  after  {after:?}\n  want   {want:?}"
            ));
        }
    }
}

/// The guest's scan of vCPU `v` over hostile memory, with a handler that
/// consumes events, raises others and scribbles meanwhile.
fn scan<M: Memory2l>(
    st: &mut St,
    ops: &TwoLevel<&M>,
    mem: &M,
    v: u32,
    poke: &dyn Fn(usize, u64),
    watch: &Watch,
) {
    let nr = ops.nr_ports();
    let before = words(mem);
    let snap = watch.before(st);
    let mut visits: Vec<u32> = Vec::new();
    let mut disturbances = 0u32;
    let mut undisturbed_ok = true;
    let mut cursor = TwoLevelCursor::default();
    // A few upcalls with one cursor: the round-robin position carries over.
    let each = |q| {
        visits.push(q);
        if q >= nr {
            st.fail(format!("scan({v}) visited port {q} of {nr}"));
        }
        let (w, b) = ((q / 64) as usize, 1u64 << (q % 64));
        let now = words(mem);
        if disturbances == 0 && (!bit(&now.pending, w, b) || bit(&now.mask, w, b)) {
            undisturbed_ok = false;
        }
        for _ in 0..st.input.below(3) {
            match st.input.byte() % 4 {
                0 | 1 => {
                    let _ = ops.test_and_clear_pending(q);
                }
                2 => {
                    disturbances += 1;
                    scribble(st, mem, poke);
                }
                _ => {
                    disturbances += 1;
                    let x = st.input.below(nr.max(1));
                    let _ = ops.set_pending(x, || v);
                }
            }
        }
        // The 2-level scan ignores what the control plane did with a port.
        Delivery::Skipped
    };
    let got = ops.scan(v, &mut cursor, each, |_| {});
    st.trace
        .push(format!("scan({v}) = {got:?}, visits {visits:?}"));
    watch.after(st, &snap, "scan");
    if v as usize >= before.flag.len() {
        if got != Err(Error::VcpuOutOfRange) || !visits.is_empty() || words(mem) != before {
            st.fail(format!("scan of out-of-range vCPU {v}: {got:?}"));
        }
        return;
    }
    if got.is_err() {
        st.fail(format!("scan({v}) = {got:?}"));
    }
    // Bounded work: each pass visits a port at most once, and a pass
    // follows only a flag raise during the scan.
    let bound = (nr as usize) * (1 + disturbances as usize);
    if visits.len() > bound {
        st.fail(format!(
            "scan({v}) made {} visits over {nr} ports with {disturbances} raises",
            visits.len()
        ));
    }
    let after = words(mem);
    if after.flag[v as usize] != 0 {
        st.fail(format!("scan({v}) returned with the flag up"));
    }
    if disturbances == 0 {
        if !undisturbed_ok {
            st.fail(format!("scan({v}) visited a port not pending and unmasked"));
        }
        // Exactly one pass over what the selector named: every pending,
        // unmasked port of every selected word that exists, once.
        let words_n = before.pending.len().min(before.mask.len()).min(64);
        let mut want: Vec<u32> = (0..words_n)
            .filter(|&w| before.sel[v as usize] & (1 << w) != 0)
            .flat_map(|w| {
                let bits = before.pending[w] & !before.mask[w];
                (0..64)
                    .filter(move |b| bits & (1 << b) != 0)
                    .map(move |b| (w * 64 + b) as u32)
            })
            .collect();
        want.sort_unstable();
        let mut got_sorted = visits.clone();
        got_sorted.sort_unstable();
        if got_sorted != want {
            st.fail(format!("scan({v}) visited {visits:?}, want {want:?}"));
        }
        // Only v's selector and flag change, and pending bits it consumed.
        let mut expect = before.clone();
        expect.sel[v as usize] = 0;
        expect.flag[v as usize] = 0;
        expect.pending = after.pending.clone();
        if after != expect {
            st.fail(format!("scan({v}) changed other words"));
        }
        for (w, (x, y)) in before.pending.iter().zip(&after.pending).enumerate() {
            if y & !x != 0 {
                st.fail(format!("scan({v}) set pending bits in word {w}"));
            }
        }
    }
}

// ---------------------------------------------------------------------------
// The control plane over hostile memory
// ---------------------------------------------------------------------------

/// The control-plane operations of this body, by operation byte.
const CONTROL: ControlCodes = ControlCodes {
    codes: &[
        Code::BindXenCompat,
        Code::BindAffinity,
        Code::Send,
        Code::Send,
        Code::Mask,
        Code::Unmask,
        Code::MaskUntilEoi,
        Code::Eoi,
        Code::SetAffinity,
        Code::Close,
        Code::Upcall,
        Code::Upcall,
    ],
    vcpu: vcpu_arg,
    priority: no_priority,
};

/// The 2-level codes have no `set_priority`.
fn no_priority(_: &mut Input) -> u8 {
    unreachable!("guest_memory: no set_priority")
}

fn control<M: Memory2l>(st: &mut St, mem: &M, poke: &dyn Fn(usize, u64), watch: &Watch) {
    let ch = Channels::new(TwoLevel::new(mem), Kicks::default());
    let mut table = Table::new(ch.nr_ports(), ch.nr_vcpus());
    let mut handles: Vec<Port> = Vec::new();
    control_ops(st, &ch, mem, &mut table, &mut handles, poke, watch, 0);
}

type ACh<'m, M> = Channels<TwoLevel<&'m M>, Kicks>;

#[allow(clippy::too_many_arguments)]
fn control_ops<M: Memory2l>(
    st: &mut St,
    ch: &ACh<'_, M>,
    mem: &M,
    table: &mut Table,
    handles: &mut Vec<Port>,
    poke: &dyn Fn(usize, u64),
    watch: &Watch,
    depth: u32,
) {
    let nv = table.nr_vcpus;
    let mut count = if depth == 0 {
        usize::MAX
    } else {
        st.input.below(3) as usize
    };
    while st.budget_left() && count > 0 {
        count -= 1;
        st.ops += 1;
        for _ in 0..st.input.below(3) {
            scribble(st, mem, poke);
        }
        let Some(op) = CONTROL.decode(&mut st.input, nv, handles) else {
            continue;
        };
        // Kicks made before this operation (a handler's end re-raising an
        // event between two handlers) are not this operation's.
        ch.notifier().take();
        let flags_before: Vec<u8> = words(mem).flag;
        let snap = watch.before(st);
        let (name, verdict) = match op {
            Control::Upcall(v) => {
                st.trace.push(format!("upcall({v})"));
                control_upcall(st, ch, mem, table, handles, v, poke, watch, depth);
                continue;
            }
            Control::Bind(mode) => {
                let r = ch.bind(mode);
                let verdict = table.bind(mode, r, 0).map(|p| {
                    if let Some(p) = p {
                        remember(handles, p);
                    }
                });
                (format!("bind({mode:?}) = {r:?}"), verdict)
            }
            Control::Port(op, p) => {
                let want = table.apply(op, p);
                let got = op.call(ch, p);
                let verdict = if got == want {
                    Ok(())
                } else {
                    Err(format!("want {want:?}"))
                };
                (format!("{} = {got:?}", op.name(p)), verdict)
            }
        };
        st.trace.push(name.clone());
        watch.after(st, &snap, &name);
        if let Err(e) = verdict {
            st.fail(format!("{name}, {e}"));
        }
        // Kicks: exactly the vCPUs whose flag went 0 → 1.
        let flags_after = words(mem).flag;
        if let Err(e) = check_kicks(&flags_before, &flags_after, ch.notifier().take()) {
            st.fail(format!("{name}: {e}"));
        }
        check_table(st, ch, table);
    }
}

#[allow(clippy::too_many_arguments)]
fn control_upcall<M: Memory2l>(
    st: &mut St,
    ch: &ACh<'_, M>,
    mem: &M,
    table: &mut Table,
    handles: &mut Vec<Port>,
    v: u32,
    poke: &dyn Fn(usize, u64),
    watch: &Watch,
    depth: u32,
) {
    let snap = watch.before(st);
    let mut handle = match ch.vcpu(v) {
        Ok(h) if v < table.nr_vcpus => h,
        Err(Error::VcpuOutOfRange) if v >= table.nr_vcpus => return,
        other => st.fail(format!("vcpu({v}) = {:?}", other.map(|h| h.id()))),
    };
    let nr = table.slots.len();
    let mut runs = 0usize;
    let mut disturbances = 0usize;
    let got = handle.upcall(|p| {
        runs += 1;
        let n = table.may_run(p, v).unwrap_or_else(|e| st.fail(e));
        if depth < 2 {
            table.slots[n].in_flight = true;
            let (ops_before, scribbles_before) = (st.ops, st.scribbles);
            control_ops(st, ch, mem, table, handles, poke, watch, depth + 1);
            // Each operation raises at most twice (a Xen-compatible bind),
            // each scribble may raise a flag once.
            disturbances += 2 * (st.ops - ops_before) + (st.scribbles - scribbles_before);
            let s = &mut table.slots[n];
            s.in_flight = false;
            s.closing = false;
        }
        // Kicks inside an upcall are the vCPU's own business; drop them.
        ch.notifier().take();
    });
    watch.after(st, &snap, "upcall");
    if got != Ok(runs) {
        st.fail(format!("upcall({v}) = {got:?} after {runs} runs"));
    }
    // Bounded: one run per port per pass, and a pass after the first needs
    // a raise during the upcall.
    let bound = nr * (1 + disturbances);
    if runs > bound {
        st.fail(format!("upcall({v}) ran {runs} handlers"));
    }
    ch.notifier().take();
    check_table(st, ch, table);
}

fn check_table<M: Memory2l>(st: &St, ch: &ACh<'_, M>, table: &Table) {
    // Under Miri (a thousand times slower), only the numbers up to the
    // highest one a bind could have reached; natively every number.
    let upto = if cfg!(miri) {
        let bound = table.slots.iter().rposition(|s| s.generation != 0);
        bound.map_or(2, |n| n + 2)
    } else {
        table.slots.len()
    };
    for n in 1..upto.min(table.slots.len()) {
        let got = match ch.status(n as u32) {
            Ok(x) => x,
            Err(e) => st.fail(format!("status({n}) = {e:?}")),
        };
        if let Err(e) = table.agrees(n, &got, false) {
            st.fail(e);
        }
    }
}
