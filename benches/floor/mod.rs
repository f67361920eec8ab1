//! The hand-written baselines — the physical floor of a send and the hand
//! drain of an upcall, for the 2-level ABI and for the FIFO ABI — and the
//! re-arming stores shared by evtchn and its baseline. Used by the benches
//! and, through `#[path]`, by the callgrind examples, so both measure the
//! very same code.

#![allow(dead_code)]

use std::cell::Cell;
use std::sync::atomic::Ordering::*;
use std::sync::atomic::{AtomicBool, AtomicU32};

use evtchn::xen::fifo::{ControlBlock, EventWord, LINKED, LINK_MASK, MASKED, MAX_QUEUES, PENDING};
use evtchn::xen::{VcpuInfo, XenUlong};
use evtchn::{Bind, Channels, FifoMemory, Memory2l, PortOps};

/// The words one raise of `port` on `vcpu` touches, resolved once.
pub struct Words<'a> {
    pub pending: &'a XenUlong,
    pub mask: &'a XenUlong,
    pub vcpu: &'a VcpuInfo,
}

impl<'a> Words<'a> {
    pub fn of(mem: &'a impl Memory2l, port: u32, vcpu: u32) -> Self {
        let w = (port / 64) as usize;
        Words {
            pending: &mem.pending()[w],
            mask: &mem.mask()[w],
            vcpu: mem.vcpu_info(vcpu).expect("vcpu_info"),
        }
    }

    /// Re-arms a fresh raise: pending word, selector and upcall flag clear.
    /// Plain stores, the same for evtchn and the floor.
    #[inline(always)]
    pub fn rearm(&self) {
        // Relaxed: one thread re-arms and raises; no other reader.
        self.pending.store(0, Relaxed);
        self.vcpu.evtchn_pending_sel.store(0, Relaxed);
        self.vcpu.evtchn_upcall_pending.store(0, Relaxed);
    }

    /// The physical floor of a fresh raise: the atomic sequence and nothing
    /// else, on addresses computed once (orderings as the 2-level ABI needs
    /// them). Returns whether to kick.
    #[inline(always)]
    pub fn floor_raise(&self, port: u32) -> bool {
        // Written as `1 << n`, so that the compiler may use `lock bts`, as
        // it does for the core.
        let bit = 1u64 << (port % 64);
        let sel = 1u64 << (port / 64);
        // SeqCst: the write half of the send/unmask Dekker pattern, as in
        // the core; also the Release that publishes the sender's writes.
        if self.pending.fetch_or(bit, SeqCst) & bit != 0 {
            return false;
        }
        // SeqCst: the read half of that Dekker pattern.
        if self.mask.load(SeqCst) & bit != 0 {
            return false;
        }
        // AcqRel: Release publishes the pending bit to the guest's selector
        // swap; Acquire orders the upcall flag swap after the guest's clear.
        if self.vcpu.evtchn_pending_sel.fetch_or(sel, AcqRel) & sel != 0 {
            return false;
        }
        // AcqRel: ordered after the selector; a 0 → 1 transition kicks.
        self.vcpu.evtchn_upcall_pending.swap(1, AcqRel) == 0
    }

    /// The physical floor of a coalesced send: one `fetch_or` (a `lock
    /// bts`) that finds the bit already set. Returns the old bit (a `bool`
    /// would let the compiler turn the `lock bts` into a `cmpxchg` loop).
    #[inline(always)]
    pub fn floor_coalesce(&self, port: u32) -> u64 {
        let bit = 1u64 << (port % 64);
        // SeqCst: as in `floor_raise`.
        self.pending.fetch_or(bit, SeqCst) & bit
    }
}

/// The one pending port of a `1 of 4096` drain (word 32).
pub const DRAIN_ONE: u32 = 32 * 64 + 1;

/// Re-arms a drain on `vi`: `DRAIN_ONE` pending, or every port but the
/// reserved port 0 (`all`); the selector bits and the upcall flag set.
/// Plain stores, the same for evtchn and the hand scan.
#[inline(always)]
pub fn rearm_drain(pending: &[XenUlong], vi: &VcpuInfo, all: bool) {
    // Relaxed throughout: one thread re-arms and drains.
    if all {
        for (w, p) in pending.iter().enumerate() {
            p.store(if w == 0 { !1 } else { !0 }, Relaxed);
        }
        vi.evtchn_pending_sel.store(!0, Relaxed);
    } else {
        pending[(DRAIN_ONE / 64) as usize].store(1 << (DRAIN_ONE % 64), Relaxed);
        vi.evtchn_pending_sel.store(1 << (DRAIN_ONE / 64), Relaxed);
    }
    vi.evtchn_upcall_pending.store(1, Relaxed);
}

/// The hand-written two-level trailing-zeros scan: what a guest writes with
/// no control plane (Linux's `xen_evtchn_do_upcall` without its fairness).
/// Clear the upcall flag, swap the selector, for each selected word
/// `pending & !mask`, for each bit a `fetch_and` that clears it (the raiser
/// sets bits concurrently, so the clear must be atomic) and the handler;
/// again while the upcall flag was set meanwhile.
#[inline(never)]
pub fn hand_scan(
    pending: &[XenUlong],
    mask: &[XenUlong],
    vi: &VcpuInfo,
    mut each: impl FnMut(u32),
) {
    scan_words(pending, mask, vi, |p, port, bit| {
        // AcqRel: Acquire pairs with the raiser's Release fetch_or, so the
        // sender's writes are visible to the handler.
        if p.fetch_and(!bit, AcqRel) & bit != 0 {
            each(port);
        }
    });
}

/// The hand scan with a per-port guard in the style of Linux's edge flow
/// handler (`handle_edge_irq`, from its published design), which a Linux
/// guest runs for an event channel bound as an ordinary interrupt: per
/// port a descriptor ([`FlowDesc`]) with a spin lock, taken by a `lock
/// cmpxchg` and given back by a Release store, and a state word under it
/// (`INPROGRESS`, `REPLAY`). Per event: lock; if a handler of the port is
/// in progress, leave the event pending and mark it for that runner, as
/// Linux's `IRQS_PENDING`; else clear the pending bit (the chip's ack),
/// mark the port in progress, unlock; the handler; lock, clear the mark,
/// unlock. Three locked instructions per event, as evtchn's claim, clear
/// and release: the baseline of a drain that keeps one handler of a port
/// running at a time while the port may move. (Linux's own path adds the
/// descriptor lookup and its statistics; a per-CPU interrupt skips the
/// lock.) One thread here, so the replay mark is never set, but its test
/// is paid.
#[inline(never)]
pub fn hand_scan_flow(
    pending: &[XenUlong],
    mask: &[XenUlong],
    vi: &VcpuInfo,
    desc: &[FlowDesc],
    mut each: impl FnMut(u32),
) {
    scan_words(pending, mask, vi, |p, port, bit| {
        let Some(d) = desc.get(port as usize) else {
            return;
        };
        d.lock();
        // Relaxed: the state is read and written under the lock only.
        let state = d.state.load(Relaxed);
        if state & FLOW_INPROGRESS != 0 {
            // Relaxed: under the lock.
            d.state.store(state | FLOW_REPLAY, Relaxed);
            d.unlock();
            return;
        }
        // AcqRel: as the hand scan's clear.
        if p.fetch_and(!bit, AcqRel) & bit == 0 {
            d.unlock();
            return;
        }
        // Relaxed: under the lock.
        d.state.store(FLOW_INPROGRESS, Relaxed);
        d.unlock();
        each(port);
        d.lock();
        // Relaxed: under the lock (a load and a store: a swap would be one
        // more locked instruction, `xchg`).
        let replay = d.state.load(Relaxed) & FLOW_REPLAY != 0;
        d.state.store(0, Relaxed);
        d.unlock();
        if replay {
            // Another runner left the event pending for us: raise it
            // again (never taken here, one thread). AcqRel, as a raiser's
            // selector fetch_or: Release publishes the pending bit to the
            // scan's Acquire swap; Acquire orders the flag store below
            // after a scan's flag clear.
            vi.evtchn_pending_sel.fetch_or(1 << (port / 64), AcqRel);
            // Release: after the selector bit.
            vi.evtchn_upcall_pending.store(1, Release);
        }
    });
}

/// A port's descriptor for [`hand_scan_flow`]: a spin lock and the state
/// it guards (8 bytes, as evtchn's control word).
#[derive(Default)]
pub struct FlowDesc {
    lock: AtomicU32,
    state: AtomicU32,
}

/// A handler of the port is in progress.
const FLOW_INPROGRESS: u32 = 1;
/// An event was left pending for the handler in progress.
const FLOW_REPLAY: u32 = 2;

impl FlowDesc {
    #[inline(always)]
    fn lock(&self) {
        // Acquire: the previous holder's writes (and its handler's) are
        // visible once the lock is ours.
        while self
            .lock
            .compare_exchange_weak(0, 1, Acquire, Relaxed)
            .is_err()
        {
            std::hint::spin_loop();
        }
    }

    #[inline(always)]
    fn unlock(&self) {
        // Release: publishes what was written under the lock.
        self.lock.store(0, Release);
    }

    /// Unlocked, with no handler in progress and no mark.
    pub fn is_idle(&self) -> bool {
        // Relaxed: read after the scan, on its thread.
        self.lock.load(Relaxed) == 0 && self.state.load(Relaxed) == 0
    }
}

/// The scan shared by the hand scans: calls `take(pending word, port,
/// bit)` for each pending, unmasked bit of each selected word, and loops
/// while the upcall flag was set meanwhile.
#[inline(always)]
fn scan_words(
    pending: &[XenUlong],
    mask: &[XenUlong],
    vi: &VcpuInfo,
    mut take: impl FnMut(&XenUlong, u32, u64),
) {
    loop {
        // Relaxed: published by the Release half of the selector swap.
        vi.evtchn_upcall_pending.store(0, Relaxed);
        // AcqRel: Acquire pairs with the raiser's selector fetch_or (its
        // pending bits are visible); Release publishes the flag clear.
        let mut sel = vi.evtchn_pending_sel.swap(0, AcqRel);
        while sel != 0 {
            let w = sel.trailing_zeros();
            sel &= sel - 1;
            let (p, m) = (&pending[w as usize], &mask[w as usize]);
            // Acquire: the pending bits the raiser published, and the mask.
            let mut bits = p.load(Acquire) & !m.load(Acquire);
            while bits != 0 {
                let b = bits.trailing_zeros();
                bits &= bits - 1;
                take(p, w * 64 + b, 1u64 << b);
            }
        }
        // Acquire: pairs with a raiser's swap of the flag.
        if vi.evtchn_upcall_pending.load(Acquire) == 0 {
            return;
        }
    }
}

// --- FIFO ABI ---------------------------------------------------------------

/// The words one FIFO raise of `port` on queue (`vcpu`, `prio`) touches,
/// resolved once, and the raiser's private tail of that queue (0: empty).
pub struct FifoWords<'a, M: FifoMemory> {
    pub mem: &'a M,
    pub word: &'a EventWord,
    pub cb: &'a ControlBlock,
    pub vcpu: &'a VcpuInfo,
    pub prio: u32,
    /// The floor's tail: single-threaded, a plain cell.
    pub tail: Cell<u32>,
    /// The same tail behind a per-queue spin lock (the `+ queue lock`
    /// floor): taken by a `lock cmpxchg`, given back by a Release store.
    pub queue_lock: AtomicBool,
}

impl<'a, M: FifoMemory> FifoWords<'a, M> {
    /// The words of `port` on (`vcpu`, `prio`); the port's page must be
    /// mapped (`FifoMemory::expand`).
    pub fn of(mem: &'a M, port: u32, vcpu: u32, prio: u32) -> Self {
        FifoWords {
            mem,
            word: mem.event_word(port).expect("event word mapped"),
            cb: mem.control_block(vcpu).expect("control block"),
            vcpu: mem.vcpu_info(vcpu).expect("vcpu_info"),
            prio,
            tail: Cell::new(0),
            queue_lock: AtomicBool::new(false),
        }
    }

    /// Re-arms a fresh FIFO raise: the state a guest leaves once it has
    /// taken the event off its queue (`LINKED` and the link clear), its
    /// handler has cleared `PENDING`, and it has swapped `ready` and
    /// cleared its upcall flag. The queue's `head` is cleared too (a raiser
    /// into an empty queue overwrites it anyway). Plain stores, the same
    /// for evtchn and the floor. The raise side's private tail still names
    /// the port, as after a real consumption; the next raise finds it and
    /// treats the queue as empty.
    #[inline(always)]
    pub fn rearm(&self) {
        // Relaxed: one thread re-arms and raises; no other reader.
        self.word.store(0, Relaxed);
        self.cb.head[self.prio as usize].store(0, Relaxed);
        self.cb.ready.store(0, Relaxed);
        self.vcpu.evtchn_upcall_pending.store(0, Relaxed);
    }

    /// The physical floor of a fresh FIFO raise: the atomic sequence of
    /// Xen's `evtchn_fifo_set_pending` and nothing else, with the tail in a
    /// plain cell (one raiser). Returns whether to kick.
    #[inline(always)]
    pub fn floor_raise(&self, port: u32) -> bool {
        let tail = self.tail.get();
        let (kick, tail) = self.raise(port, tail);
        self.tail.set(tail);
        kick
    }

    /// The same floor with the tail behind a per-queue spin lock, as Xen
    /// keeps it (`q->lock`) and as any multi-raiser FIFO must serialise
    /// appends to one queue: lock, raise, unlock.
    #[inline(always)]
    pub fn floor_raise_locked(&self, port: u32) -> bool {
        // Acquire: the previous holder's tail is visible (one thread here;
        // the order is what a lock must have).
        while self
            .queue_lock
            .compare_exchange_weak(false, true, Acquire, Relaxed)
            .is_err()
        {
            std::hint::spin_loop();
        }
        let (kick, new_tail) = self.raise(port, self.tail.get());
        self.tail.set(new_tail);
        // Release: publishes the tail to the next holder.
        self.queue_lock.store(false, Release);
        kick
    }

    #[inline(always)]
    fn raise(&self, port: u32, tail: u32) -> (bool, u32) {
        // AcqRel: Release publishes the sender's writes to the handler's
        // Acquire clear of PENDING; PENDING and MASKED share the word.
        let old = self.word.fetch_or(PENDING, AcqRel);
        if old & (PENDING | MASKED | LINKED) != 0 {
            // Coalesced, masked (the unmask links it) or still linked.
            return (false, tail);
        }
        let w = old | PENDING;
        // AcqRel: the link is published with the PENDING bit set above.
        if self
            .word
            .compare_exchange(w, (w | LINKED) & !LINK_MASK, AcqRel, Relaxed)
            .is_err()
        {
            // The guest changed the word meanwhile: no retry in the floor.
            return (false, tail);
        }
        if tail != 0 && tail != port && self.set_link(tail, port) {
            // Appended behind a linked tail: `ready` and `head` untouched.
            return (false, port);
        }
        // Release: a guest that reads this head sees the LINKED word.
        self.cb.head[self.prio as usize].store(port, Release);
        let bit = 1u32 << self.prio;
        // AcqRel: Release publishes the head; Acquire pairs with the
        // guest's swap of `ready`, so its flag clear precedes our swap.
        if self.cb.ready.fetch_or(bit, AcqRel) & bit != 0 {
            return (false, port);
        }
        // AcqRel: ordered after `ready`, as in the 2-level floor.
        (self.vcpu.evtchn_upcall_pending.swap(1, AcqRel) == 0, port)
    }

    /// Writes `port` into the link of `tail` if the tail is still linked
    /// (not on the measured path: the queue is empty after a re-arm).
    #[cold]
    fn set_link(&self, tail: u32, port: u32) -> bool {
        let Some(word) = self.mem.event_word(tail) else {
            return false;
        };
        // Relaxed: a first guess for the compare-exchange.
        let mut w = word.load(Relaxed);
        while w & LINKED != 0 {
            // AcqRel: Release publishes our event's LINKED word to the
            // guest that follows this link.
            match word.compare_exchange(w, (w & !LINK_MASK) | port, AcqRel, Relaxed) {
                Ok(_) => return true,
                Err(now) => w = now,
            }
        }
        false
    }

    /// The physical floor of a coalesced FIFO send: one `fetch_or` of
    /// PENDING that finds it already set. Returns the old bit (a `bool`
    /// would let the compiler turn the `lock bts` into a `cmpxchg` loop).
    #[inline(always)]
    pub fn floor_coalesce(&self) -> u32 {
        // AcqRel: as in `raise`.
        self.word.fetch_or(PENDING, AcqRel) & PENDING
    }
}

/// The event words of ports 0..n, a control block and a `vcpu_info`, as a
/// guest maps them: the memory of the hand walk.
pub struct FifoPlain {
    pub words: Box<[EventWord]>,
    pub cb: ControlBlock,
    pub vcpu: VcpuInfo,
}

impl FifoPlain {
    pub fn new(ports: u32) -> Self {
        FifoPlain {
            words: (0..ports).map(|_| EventWord::new(0)).collect(),
            cb: ControlBlock::new(),
            vcpu: VcpuInfo::new(),
        }
    }
}

/// The words a FIFO drain re-arms, resolved once (index: port number).
pub struct FifoDrain<'a> {
    pub words: Vec<&'a EventWord>,
    pub cb: &'a ControlBlock,
    pub vcpu: &'a VcpuInfo,
    pub prio: u32,
}

impl<'a> FifoDrain<'a> {
    pub fn of(
        words: Vec<&'a EventWord>,
        cb: &'a ControlBlock,
        vcpu: &'a VcpuInfo,
        prio: u32,
    ) -> Self {
        FifoDrain {
            words,
            cb,
            vcpu,
            prio,
        }
    }

    /// The view of ports `0..ports` and vCPU `vcpu` of a FIFO memory (the
    /// one evtchn drains).
    pub fn of_memory(mem: &'a impl FifoMemory, ports: u32, vcpu: u32, prio: u32) -> Self {
        Self::of(
            (0..ports)
                .map(|p| mem.event_word(p).expect("event word mapped"))
                .collect(),
            mem.control_block(vcpu).expect("control block"),
            mem.vcpu_info(vcpu).expect("vcpu_info"),
            prio,
        )
    }

    /// Re-arms a FIFO drain: `DRAIN_ONE` pending and linked alone on the
    /// queue of priority `prio`, or every port but the reserved port 0
    /// (`all`) pending and linked in order 1 → 2 → … → 4095; the queue's
    /// head, its `ready` bit and the upcall flag set — the state raises
    /// leave. Plain stores, the same for evtchn and the hand walk.
    #[inline(always)]
    pub fn rearm(&self, all: bool) {
        // Relaxed throughout: one thread re-arms and drains.
        let linked = PENDING | LINKED;
        let head = if all {
            let last = self.words.len() - 1;
            for (p, w) in self.words.iter().enumerate().skip(1) {
                let next = if p == last { 0 } else { p as u32 + 1 };
                w.store(linked | next, Relaxed);
            }
            1
        } else {
            self.words[DRAIN_ONE as usize].store(linked, Relaxed);
            DRAIN_ONE
        };
        self.cb.head[self.prio as usize].store(head, Relaxed);
        self.cb.ready.store(1 << self.prio, Relaxed);
        self.vcpu.evtchn_upcall_pending.store(1, Relaxed);
    }
}

/// The hand-written FIFO queue walk: what a guest writes with no control
/// plane (Linux's `evtchn_fifo_handle_events` and `consume_one_event`,
/// with a plain load of `ready` before each extra swap, as evtchn does).
/// Clear the upcall flag, swap `ready`; while a queue is ready, take the
/// highest priority's head off it (a compare-exchange that clears `LINKED`
/// and the link: the raiser may be writing the link), and if it is pending
/// and unmasked, a `fetch_and` that clears `PENDING`, then the handler;
/// again while the upcall flag was set meanwhile. The event array is a
/// plain slice, as a guest maps it.
#[inline(never)]
pub fn hand_walk(words: &[EventWord], cb: &ControlBlock, vi: &VcpuInfo, mut each: impl FnMut(u32)) {
    let mut heads = [0u32; MAX_QUEUES];
    let mut ready = 0u32;
    loop {
        // Relaxed: published by the Release half of the swap of `ready`.
        vi.evtchn_upcall_pending.store(0, Relaxed);
        // AcqRel: Acquire pairs with the raiser's fetch_or of `ready` (the
        // head it wrote is visible); Release publishes the flag clear.
        ready |= cb.ready.swap(0, AcqRel);
        while ready != 0 {
            let q = ready.trailing_zeros() as usize % MAX_QUEUES;
            let bit = 1u32 << q;
            let mut head = heads[q];
            if head == 0 {
                // Acquire: pairs with the raiser's Release head store.
                head = cb.head[q].load(Acquire);
            }
            let Some(word) = words.get(head as usize).filter(|_| head != 0) else {
                ready &= !bit;
                heads[q] = 0;
                continue;
            };
            // Relaxed: a first guess for the compare-exchange.
            let mut w = word.load(Relaxed);
            loop {
                // AcqRel: Acquire pairs with the raiser's Release link write
                // (the next event's word is visible); Release orders the
                // unlink before a raiser that finds the word unlinked.
                match word.compare_exchange(w, w & !(LINKED | LINK_MASK), AcqRel, Relaxed) {
                    Ok(_) => break,
                    Err(now) => w = now,
                }
            }
            let next = w & LINK_MASK;
            if next == 0 {
                ready &= !bit;
            }
            heads[q] = next;
            // AcqRel: Acquire pairs with the raiser's Release fetch_or of
            // PENDING, so the sender's writes are visible to the handler.
            if w & (LINKED | PENDING | MASKED) == LINKED | PENDING
                && word.fetch_and(!PENDING, AcqRel) & PENDING != 0
            {
                each(head);
            }
            // Relaxed: only a hint; the swap orders.
            if cb.ready.load(Relaxed) != 0 {
                // AcqRel: as above; a higher priority overtakes.
                ready |= cb.ready.swap(0, AcqRel);
            }
        }
        // Acquire: pairs with a raiser's swap of the flag.
        if vi.evtchn_upcall_pending.load(Acquire) == 0 {
            return;
        }
    }
}

/// A control plane over `abi` with every port but the reserved port 0 bound
/// to vCPU 0: the set-up of the drain rows.
pub fn all_bound_to_vcpu0<A: PortOps>(abi: A) -> Channels<A> {
    let ch = Channels::new(abi, ());
    for _ in 1..ch.nr_ports() {
        ch.bind(Bind::Affinity(0)).expect("bind");
    }
    ch
}
