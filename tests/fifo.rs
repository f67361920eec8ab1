//! Integration tests of the FIFO ABI driven through the control plane
//! (`Channels<Fifo<OwnedFifo>>`): strict priority and FIFO order, events
//! moved between queues while still linked (scripted, under a seeded
//! single-threaded churn checked against a reference model, and on real
//! threads), 2^17 ports with the event array mapped on demand, typed errors,
//! the control-plane behaviours where the ABI matters (bind modes, mask
//! reasons, close and reuse, affinity with an event in flight), and guest
//! garbage in the FIFO memory under the control plane.
//!
//! Every test is built so that it can fail: orders are compared exactly,
//! and where the order alone would not tell FIFO from another discipline
//! a control run shows the difference.
//!
//! The raw ABI (`PortOps` over caller memory, hostile memory, BUSY) is in
//! `tests/fifo_raw.rs`.
// Native tests; under RUSTFLAGS="--cfg loom" only the models run.
#![cfg(not(loom))]

use std::cell::{Cell, RefCell};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::*};
use std::thread;
use std::time::{Duration, Instant};

use evtchn::xen::fifo::{
    EVENT_WORDS_PER_PAGE, LINKED, LINK_MASK, MASKED, MAX_QUEUES, NR_CHANNELS, PENDING,
    PRIORITY_DEFAULT,
};
use evtchn::{Bind, Channels, Error, Fifo, FifoMemory, OwnedFifo, Port, State, Status};
use evtchn::{Deliver, Ports, Raise};

use evtchn_test_support::{
    assert_err_unchanged_by, kicks, numbers, pending_vcpus, within, Kicks, Rng, StopOnDrop,
};

// ---------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------

type Ch = Channels<Fifo<OwnedFifo>, Kicks>;

fn new_ch(ports: u32, vcpus: usize) -> Ch {
    Channels::new(Fifo::new(OwnedFifo::new(ports, vcpus)), Kicks::default())
}

/// One upcall on `v` with a fresh handle; the port numbers handled, in
/// order (checked against the count the upcall returns).
fn upcall(ch: &Ch, v: u32) -> Vec<u32> {
    numbers(&evtchn_test_support::upcall(ch, v))
}

/// Upcalls on every vCPU, round after round, until none is pending; the
/// `(vcpu, port)` handler runs in order.
fn drain(ch: &Ch) -> Vec<(u32, u32)> {
    let mut runs = Vec::new();
    for _ in 0..100 {
        for v in 0..ch.nr_vcpus() {
            runs.extend(upcall(ch, v).into_iter().map(|p| (v, p)));
        }
        if !(0..ch.nr_vcpus()).any(|v| ch.upcall_pending(v).unwrap()) {
            return runs;
        }
    }
    panic!("upcalls still pending after 100 rounds");
}

/// The raw event word of `port`.
fn word(ch: &Ch, port: u32) -> u32 {
    ch.abi()
        .memory()
        .event_word(port)
        .map_or(0, |w| w.load(SeqCst))
}

fn status(ch: &Ch, p: Port) -> Status {
    ch.status(p.number()).unwrap()
}

fn bind_n(ch: &Ch, n: usize, mode: Bind) -> Vec<Port> {
    (0..n).map(|_| ch.bind(mode).unwrap()).collect()
}

// ---------------------------------------------------------------------------
// (a) Priority and FIFO order
// ---------------------------------------------------------------------------

/// The handler of the first priority-7 event sends a priority-0 port: the
/// very next handler run is that port, ahead of the priority-7 events that
/// were queued before it. The control run (the same port left at priority
/// 7) shows it then waits its turn at the tail, so the check can fail.
#[test]
fn priority0_event_overtakes_queued_priority7_events() {
    for urgent_prio in [0u8, PRIORITY_DEFAULT] {
        let ch = new_ch(64, 2);
        let p = bind_n(&ch, 5, Bind::Affinity(0));
        let (first, queued, urgent) = (p[0], &p[1..4], p[4]);
        ch.set_priority(urgent, urgent_prio).unwrap();
        assert_eq!(status(&ch, urgent).priority, urgent_prio);
        for &q in p[..4].iter() {
            ch.send(q).unwrap();
            assert_eq!(status(&ch, q).priority, PRIORITY_DEFAULT);
        }
        let mut order = Vec::new();
        let n = ch
            .vcpu(0)
            .unwrap()
            .upcall(|q| {
                order.push(q.number());
                if q == first {
                    ch.send(urgent).unwrap();
                }
            })
            .unwrap();
        assert_eq!(n, 5);
        let mut want = vec![first.number()];
        if urgent_prio == 0 {
            want.push(urgent.number());
            want.extend(numbers(queued));
        } else {
            want.extend(numbers(queued));
            want.push(urgent.number());
        }
        assert_eq!(order, want, "urgent priority {urgent_prio}");
        assert!(upcall(&ch, 0).is_empty());
    }
}

/// Sent before the upcall: a priority-0 event sent after three priority-7
/// events is handled first; a priority-15 one sent before all of them last.
#[test]
fn higher_priority_sent_later_runs_first_lower_priority_sent_earlier_runs_last() {
    let ch = new_ch(64, 1);
    let p = bind_n(&ch, 5, Bind::Affinity(0));
    ch.set_priority(p[0], 15).unwrap();
    ch.set_priority(p[4], 0).unwrap();
    for &q in &p {
        ch.send(q).unwrap();
    }
    assert_eq!(
        upcall(&ch, 0),
        [p[4], p[1], p[2], p[3], p[0]].map(|q| q.number())
    );
}

/// Within one queue events run in the order they were linked, not in port
/// order (the 2-level ABI would run them lowest port first).
#[test]
fn fifo_order_within_a_queue_is_send_order_not_port_order() {
    let ch = new_ch(64, 2);
    let p = bind_n(&ch, 6, Bind::Affinity(1));
    let order = [4usize, 1, 5, 0, 3, 2];
    for &i in &order {
        ch.send(p[i]).unwrap();
    }
    // A repeated send coalesces and keeps the first position.
    ch.send(p[4]).unwrap();
    assert_eq!(upcall(&ch, 1), order.map(|i| p[i].number()));
    // And again, in another order, on the same (now empty) queue.
    for &i in order.iter().rev() {
        ch.send(p[i]).unwrap();
    }
    let want: Vec<u32> = order.iter().rev().map(|&i| p[i].number()).collect();
    assert_eq!(upcall(&ch, 1), want);
}

/// One port at each of the 16 priorities, sent lowest priority first: one
/// upcall runs them strictly from priority 0 to 15.
#[test]
fn strict_priority_across_all_sixteen_queues() {
    let ch = new_ch(64, 2);
    let p = bind_n(&ch, MAX_QUEUES, Bind::Affinity(1));
    // Port i gets priority 15 - i, so port order and priority order differ.
    for (i, &q) in p.iter().enumerate() {
        ch.set_priority(q, (MAX_QUEUES - 1 - i) as u8).unwrap();
    }
    // Send by priority, lowest (15) first.
    for &q in &p {
        ch.send(q).unwrap();
    }
    let ready = ch
        .abi()
        .memory()
        .control_block(1)
        .unwrap()
        .ready
        .load(SeqCst);
    assert_eq!(ready, 0xffff, "one ready bit per non-empty queue");
    let want: Vec<u32> = p.iter().rev().map(|q| q.number()).collect();
    assert_eq!(upcall(&ch, 1), want);
}

/// A priority-0 port that resends itself from its handler keeps the
/// priority-7 queue waiting until it stops (strict priority, as in Xen).
#[test]
fn self_resending_high_priority_port_runs_before_the_lower_queue() {
    let ch = new_ch(64, 1);
    let p = bind_n(&ch, 3, Bind::Affinity(0));
    let hi = p[2];
    ch.set_priority(hi, 0).unwrap();
    ch.send(p[0]).unwrap();
    ch.send(p[1]).unwrap();
    ch.send(hi).unwrap();
    let mut order = Vec::new();
    let mut left = 3;
    ch.vcpu(0)
        .unwrap()
        .upcall(|q| {
            order.push(q.number());
            if q == hi && left > 0 {
                left -= 1;
                ch.send(hi).unwrap();
            }
        })
        .unwrap();
    let h = hi.number();
    assert_eq!(order, [h, h, h, h, p[0].number(), p[1].number()]);
}

/// A priority change does not move an event already linked: it runs once on
/// its old priority; the next event of the port is linked on the new one.
#[test]
fn set_priority_of_a_linked_event_applies_from_the_next_link() {
    let ch = new_ch(64, 1);
    let p = bind_n(&ch, 2, Bind::Affinity(0));
    ch.send(p[0]).unwrap();
    ch.send(p[1]).unwrap();
    assert_ne!(word(&ch, p[1].number()) & LINKED, 0);
    ch.set_priority(p[1], 0).unwrap();
    assert_eq!(status(&ch, p[1]).priority, 0);
    assert_eq!(upcall(&ch, 0), numbers(&p));
    ch.send(p[0]).unwrap();
    ch.send(p[1]).unwrap();
    assert_eq!(upcall(&ch, 0), [p[1].number(), p[0].number()]);
}

// ---------------------------------------------------------------------------
// (b) Moves while linked: scripted cases
// ---------------------------------------------------------------------------

/// docs/DESIGN.md §6, F11 (the stale-tail corruption Xen fixed with `lastq`):
/// `p` is the private tail of vCPU 0's priority-7 queue when the guest
/// consumes it; `p` then moves to vCPU 1 and is linked there. A later event
/// on vCPU 0's queue must start a new queue there (head + READY + kick of
/// vCPU 0), not be appended after `p` on vCPU 1's queue.
#[test]
fn event_moved_after_being_the_old_queues_tail_does_not_splice_the_queues() {
    let ch = new_ch(64, 2);
    let a = ch.bind(Bind::Affinity(0)).unwrap();
    let p = ch.bind(Bind::Affinity(0)).unwrap();
    ch.send(p).unwrap();
    assert_eq!(upcall(&ch, 0), [p.number()]);
    ch.set_affinity(p, 1).unwrap();
    ch.send(p).unwrap();
    kicks(&ch);
    ch.send(a).unwrap();
    assert_eq!(
        kicks(&ch),
        [0],
        "a's queue on vCPU 0 was empty: kick vCPU 0"
    );
    assert_eq!(word(&ch, p.number()) & LINK_MASK, 0, "a linked after p");
    assert_eq!(upcall(&ch, 0), [a.number()]);
    assert_eq!(upcall(&ch, 1), [p.number()]);
    assert!(drain(&ch).is_empty());
}

/// The same with a priority change instead of a rebind.
#[test]
fn event_moved_to_another_priority_after_being_tail_does_not_splice_the_queues() {
    let ch = new_ch(64, 1);
    let a = ch.bind(Bind::Affinity(0)).unwrap();
    let b = ch.bind(Bind::Affinity(0)).unwrap();
    let p = ch.bind(Bind::Affinity(0)).unwrap();
    ch.send(p).unwrap();
    assert_eq!(upcall(&ch, 0), [p.number()]);
    ch.set_priority(p, 3).unwrap();
    ch.set_priority(b, 3).unwrap();
    ch.send(b).unwrap(); // priority 3 queue: b
    ch.send(p).unwrap(); // priority 3 queue: b, p; p's old queue (7) emptied
    ch.send(a).unwrap(); // priority 7 queue: a (a new head)
    assert_eq!(word(&ch, p.number()) & LINK_MASK, 0, "a linked after p");
    let cb = ch.abi().memory().control_block(0).unwrap();
    assert_eq!(cb.ready.load(SeqCst), (1 << 3) | (1 << 7));
    assert_eq!(cb.head[7].load(SeqCst), a.number());
    assert_eq!(upcall(&ch, 0), [b.number(), p.number(), a.number()]);
}

/// Events linked on vCPU 0 and all moved to vCPU 1 (still linked) are
/// handed over by vCPU 0's upcall without running there, and run on vCPU 1
/// once each, in their original order.
#[test]
fn events_moved_while_linked_are_forwarded_in_order_and_run_once() {
    let ch = new_ch(64, 2);
    let p = bind_n(&ch, 5, Bind::Affinity(0));
    let order = [3usize, 0, 4, 1, 2];
    for &i in &order {
        ch.send(p[i]).unwrap();
    }
    for &q in &p {
        assert_ne!(word(&ch, q.number()) & LINKED, 0);
        ch.set_affinity(q, 1).unwrap();
        assert_ne!(word(&ch, q.number()) & LINKED, 0, "still on vCPU 0's queue");
    }
    kicks(&ch);
    // vCPU 1 first: nothing linked there yet.
    assert!(upcall(&ch, 1).is_empty());
    // vCPU 0 hands them over: no handler on vCPU 0, one kick for vCPU 1.
    assert!(upcall(&ch, 0).is_empty());
    assert_eq!(kicks(&ch), [1]);
    assert_eq!(upcall(&ch, 1), order.map(|i| p[i].number()));
    assert!(drain(&ch).is_empty());
}

/// The rebind-in-flight case on FIFO (C5): an event linked on vCPU 0 while
/// `set_affinity(0 → 1)` runs is handled exactly once, on vCPU 1, whichever
/// vCPU scans first; a send after `set_affinity` returned lands on vCPU 1
/// only.
#[test]
fn seed3_event_linked_during_set_affinity_is_handled_once_on_the_new_vcpu() {
    for new_first in [false, true] {
        let ch = new_ch(64, 2);
        let p = ch.bind(Bind::Affinity(0)).unwrap();
        ch.send(p).unwrap();
        assert_eq!(kicks(&ch), [0]);
        ch.set_affinity(p, 1).unwrap();
        assert!(kicks(&ch).is_empty(), "the event is still linked on vCPU 0");
        if new_first {
            assert!(upcall(&ch, 1).is_empty());
        }
        assert!(upcall(&ch, 0).is_empty(), "handler ran on the old vCPU");
        assert_eq!(kicks(&ch), [1]);
        assert_eq!(upcall(&ch, 1), [p.number()]);
        assert!(drain(&ch).is_empty());
        // The next send goes to vCPU 1 only.
        ch.send(p).unwrap();
        assert_eq!(kicks(&ch), [1]);
        assert_eq!(pending_vcpus(&ch), [1]);
        assert_eq!(drain(&ch), [(1, p.number())]);
    }
}

/// docs/DESIGN.md §6, S6 on FIFO: handler in flight on vCPU 0, rebind to
/// vCPU 1, new send, vCPU 1 runs meanwhile: never concurrent (C3), the
/// second event runs once on vCPU 1 after the first handler ends.
#[test]
fn rebind_during_handler_defers_the_new_event_then_runs_it_once_on_the_new_vcpu() {
    let ch = new_ch(64, 2);
    let p = ch.bind(Bind::Affinity(0)).unwrap();
    ch.send(p).unwrap();
    kicks(&ch);
    let mut nested = usize::MAX;
    let n = ch
        .vcpu(0)
        .unwrap()
        .upcall(|q| {
            ch.set_affinity(q, 1).unwrap();
            ch.send(q).unwrap();
            assert_eq!(kicks(&ch), [1]);
            nested = ch
                .vcpu(1)
                .unwrap()
                .upcall(|_| panic!("handler ran concurrently on vCPU 1"))
                .unwrap();
            let st = status(&ch, q);
            assert!(st.pending && st.in_flight && st.vcpu == 1);
        })
        .unwrap();
    assert_eq!((n, nested), (1, 0));
    assert_eq!(
        kicks(&ch),
        [1],
        "the end of the handler re-raised on vCPU 1"
    );
    assert_eq!(upcall(&ch, 1), [p.number()]);
    assert!(drain(&ch).is_empty());
}

// ---------------------------------------------------------------------------
// (b) Moves while linked: seeded churn against a reference model
// ---------------------------------------------------------------------------

/// What the model knows of one port number.
#[derive(Clone, Debug, Default)]
struct ModelPort {
    /// The bound life, if any.
    handle: Option<Port>,
    vcpu: u32,
    prio: u8,
    /// Explicitly masked (the only mask reason the churn uses).
    masked: bool,
    /// Sent (or bound Xen-compatibly) since the last handler run.
    pending: bool,
}

#[derive(Default, Debug)]
struct ChurnStats {
    steps: u64,
    sends: u64,
    runs: u64,
    affinity: u64,
    priority: u64,
    /// `set_affinity` / `set_priority` of a port whose event word was LINKED.
    moved_linked: u64,
    closes: u64,
    binds: u64,
    nested_upcalls: u64,
}

/// A single-threaded world: the control plane, the model, and handlers that
/// act on the world from inside upcalls (sends, moves, masks, closes,
/// binds and nested upcalls of any vCPU), which gives partial upcalls:
/// queues half consumed while events on them move.
struct Churn {
    ch: Ch,
    vcpus: u32,
    m: RefCell<Vec<ModelPort>>,
    /// A handler of this port number runs (C3 in nested upcalls).
    inside: Vec<Cell<bool>>,
    rng: RefCell<Rng>,
    depth: Cell<u32>,
    stats: RefCell<ChurnStats>,
    /// No nested operations (the final drain).
    quiet: Cell<bool>,
}

const CHURN_PORTS: u32 = 24;
const CHURN_MIN_LIVE: usize = 6;

impl Churn {
    fn new(seed: u64, vcpus: u32) -> Self {
        let ch = new_ch(CHURN_PORTS, vcpus as usize);
        let nr = ch.nr_ports() as usize;
        let c = Churn {
            ch,
            vcpus,
            m: RefCell::new(vec![ModelPort::default(); nr]),
            inside: (0..nr).map(|_| Cell::new(false)).collect(),
            rng: RefCell::new(Rng::new(seed)),
            depth: Cell::new(0),
            stats: RefCell::new(ChurnStats::default()),
            quiet: Cell::new(false),
        };
        for _ in 0..CHURN_PORTS - 4 {
            c.bind();
        }
        c
    }

    fn rnd(&self, n: u64) -> u64 {
        self.rng.borrow_mut().below(n)
    }

    fn live(&self) -> Vec<Port> {
        self.m.borrow().iter().filter_map(|m| m.handle).collect()
    }

    fn pick(&self) -> Option<Port> {
        let live = self.live();
        (!live.is_empty()).then(|| live[self.rnd(live.len() as u64) as usize])
    }

    fn bind(&self) {
        let v = self.rnd(u64::from(self.vcpus)) as u32;
        let xen = self.rnd(4) == 0;
        let mode = if xen {
            Bind::XenCompat
        } else {
            Bind::Affinity(v)
        };
        match self.ch.bind(mode) {
            Ok(p) => {
                let mut m = self.m.borrow_mut();
                let e = &mut m[p.number() as usize];
                assert!(e.handle.is_none(), "bind handed out a bound number");
                *e = ModelPort {
                    handle: Some(p),
                    vcpu: if xen { 0 } else { v },
                    prio: PRIORITY_DEFAULT,
                    masked: false,
                    pending: xen,
                };
                self.stats.borrow_mut().binds += 1;
            }
            // Every free number may still be closing behind a handler.
            Err(Error::NoFreePort) => {}
            Err(e) => panic!("bind: {e:?}"),
        }
    }

    fn is_linked(&self, p: Port) -> bool {
        word(&self.ch, p.number()) & LINKED != 0
    }

    /// One random operation; `top` says whether it runs outside upcalls.
    fn op(&self, top: bool) {
        let Some(p) = self.pick() else {
            self.bind();
            return;
        };
        let n = p.number() as usize;
        match self.rnd(100) {
            0..=29 => {
                self.ch.send(p).unwrap();
                self.m.borrow_mut()[n].pending = true;
                self.stats.borrow_mut().sends += 1;
            }
            30..=44 => {
                let v = self.rnd(u64::from(self.vcpus)) as u32;
                let linked = self.is_linked(p);
                self.ch.set_affinity(p, v).unwrap();
                self.m.borrow_mut()[n].vcpu = v;
                let mut st = self.stats.borrow_mut();
                st.affinity += 1;
                st.moved_linked += u64::from(linked);
            }
            45..=59 => {
                let prio = self.rnd(16) as u8;
                let linked = self.is_linked(p);
                self.ch.set_priority(p, prio).unwrap();
                self.m.borrow_mut()[n].prio = prio;
                let mut st = self.stats.borrow_mut();
                st.priority += 1;
                st.moved_linked += u64::from(linked);
            }
            60..=65 => {
                self.ch.mask(p).unwrap();
                self.m.borrow_mut()[n].masked = true;
            }
            66..=73 => {
                self.ch.unmask(p).unwrap();
                self.m.borrow_mut()[n].masked = false;
            }
            74..=76 if self.live().len() > CHURN_MIN_LIVE => {
                self.ch.close(p).unwrap();
                self.m.borrow_mut()[n] = ModelPort::default();
                self.stats.borrow_mut().closes += 1;
            }
            77..=79 => self.bind(),
            _ => {
                let v = self.rnd(u64::from(self.vcpus)) as u32;
                if !top {
                    self.stats.borrow_mut().nested_upcalls += 1;
                }
                self.upcall(v);
            }
        }
    }

    fn upcall(&self, v: u32) {
        self.depth.set(self.depth.get() + 1);
        let mut runs = 0;
        let n = self
            .ch
            .vcpu(v)
            .unwrap()
            .upcall(|p| {
                runs += 1;
                self.handler(v, p)
            })
            .unwrap();
        assert_eq!(n, runs, "upcall's count disagrees with handler runs");
        self.depth.set(self.depth.get() - 1);
    }

    fn handler(&self, v: u32, p: Port) {
        let n = p.number() as usize;
        {
            let mut m = self.m.borrow_mut();
            let e = &mut m[n];
            assert_eq!(e.handle, Some(p), "handler of a life that is not bound");
            assert_eq!(e.vcpu, v, "handler of {p:?} on a vCPU it is not bound to");
            assert!(!e.masked, "handler of masked {p:?} ran (C4)");
            assert!(
                e.pending,
                "handler of {p:?} ran without a send since its last run"
            );
            assert!(!self.inside[n].replace(true), "{p:?} ran concurrently (C3)");
            e.pending = false;
        }
        self.stats.borrow_mut().runs += 1;
        if !self.quiet.get() && self.depth.get() < 3 {
            for _ in 0..self.rnd(4) {
                self.op(false);
            }
        }
        self.inside[n].set(false);
    }

    /// The structural invariants of the shared memory and their agreement
    /// with the model, checked between top-level steps (no upcall running).
    fn check(&self, when: &str) {
        let mem = self.ch.abi().memory();
        let nr = self.ch.nr_ports();
        let words: Vec<u32> = (0..nr)
            .map(|p| mem.event_word(p).map_or(0, |w| w.load(SeqCst)))
            .collect();
        // Links among LINKED words: in range, in-degree at most one.
        let mut pred = vec![None; nr as usize];
        for (p, &w) in words.iter().enumerate() {
            if w & LINKED == 0 {
                continue;
            }
            let next = w & LINK_MASK;
            if next == 0 {
                continue;
            }
            assert!(next < nr, "{when}: port {p} links to {next}, out of range");
            if words[next as usize] & LINKED != 0 {
                if let Some(q) = pred[next as usize].replace(p) {
                    panic!("{when}: ports {q} and {p} both link to {next}: queues merged");
                }
            }
        }
        // Every LINKED word is reachable from the head of a ready queue,
        // and a vCPU with a ready queue has its upcall flag set (C2). The
        // walk is bounded by the port count: a longer one is a cycle.
        let mut reached = vec![false; nr as usize];
        for v in 0..self.vcpus {
            let cb = mem.control_block(v).unwrap();
            let ready = cb.ready.load(SeqCst);
            let flag = mem.vcpu_info(v).unwrap().evtchn_upcall_pending.load(SeqCst);
            assert!(
                ready == 0 || flag != 0,
                "{when}: vCPU {v} ready without upcall"
            );
            for q in 0..MAX_QUEUES {
                if ready & (1 << q) == 0 {
                    continue;
                }
                let mut x = cb.head[q].load(SeqCst);
                let mut steps = 0;
                while x != 0 && x < nr && words[x as usize] & LINKED != 0 {
                    assert!(
                        !reached[x as usize],
                        "{when}: port {x} reached twice (a cycle or a merge)"
                    );
                    reached[x as usize] = true;
                    x = words[x as usize] & LINK_MASK;
                    steps += 1;
                    assert!(steps <= nr, "{when}: queue ({v}, {q}) does not end");
                }
            }
        }
        for (p, &w) in words.iter().enumerate() {
            if w & LINKED != 0 {
                assert!(
                    reached[p],
                    "{when}: port {p} is LINKED but on no ready queue: it can never \
                     be delivered nor linked again ({w:#x})"
                );
            }
        }
        // Agreement with the model.
        let m = self.m.borrow();
        for (p, e) in m.iter().enumerate().skip(1) {
            let w = words[p];
            // A free port's word is not checked: a closed one keeps what
            // its last life left (bind resets it), and one never bound
            // lies on a page mapped zeroed.
            let Some(h) = e.handle else {
                continue;
            };
            let st = self.ch.status(p as u32).unwrap();
            assert_eq!(st.state, State::Bound);
            assert_eq!(st.generation, h.generation());
            assert_eq!((st.vcpu, st.priority), (e.vcpu, e.prio), "{when}: port {p}");
            assert_eq!(w & PENDING != 0, e.pending, "{when}: port {p} pending");
            assert_eq!(w & MASKED != 0, e.masked, "{when}: port {p} masked");
            if e.pending && !e.masked {
                assert_ne!(
                    w & LINKED,
                    0,
                    "{when}: port {p} pending and unmasked but not linked: stranded"
                );
            }
            assert!(!st.in_flight, "{when}: port {p} in flight between steps");
        }
    }

    /// Unmask everything, upcall every vCPU until nothing is pending; then
    /// nothing the model holds pending may be left, and the queues are
    /// empty.
    fn final_drain(&self) {
        self.quiet.set(true);
        for p in self.live() {
            self.ch.unmask(p).unwrap();
            self.m.borrow_mut()[p.number() as usize].masked = false;
        }
        let mut rounds = 0;
        loop {
            for v in 0..self.vcpus {
                self.upcall(v);
            }
            if !(0..self.vcpus).any(|v| self.ch.upcall_pending(v).unwrap()) {
                break;
            }
            rounds += 1;
            assert!(rounds < 100, "upcalls stay pending");
        }
        self.check("after the final drain");
        let mem = self.ch.abi().memory();
        for (p, e) in self.m.borrow().iter().enumerate() {
            assert!(!e.pending, "port {p}: sent, unmasked, never handled (C1)");
            // Every queue is empty; a bound port has nothing pending (a
            // closed one may keep its last life's pending bit).
            let w = word(&self.ch, p as u32);
            let must_be_clear = if e.handle.is_some() {
                LINKED | PENDING
            } else {
                LINKED
            };
            assert_eq!(w & must_be_clear, 0, "port {p}: {w:#x} after drain");
        }
        for v in 0..self.vcpus {
            assert_eq!(mem.control_block(v).unwrap().ready.load(SeqCst), 0);
        }
    }
}

fn churn(seed: u64, vcpus: u32, steps: u64) -> ChurnStats {
    let c = Churn::new(seed, vcpus);
    for step in 0..steps {
        c.op(true);
        // Upcalls now and then at top level too, so queues both fill up
        // and empty.
        if c.rnd(16) == 0 {
            let v = c.rnd(u64::from(vcpus)) as u32;
            c.upcall(v);
        }
        c.check(&format!("seed {seed:#x} step {step}"));
    }
    c.final_drain();
    let mut st = std::mem::take(&mut *c.stats.borrow_mut());
    st.steps = steps;
    st
}

/// (b) Events linked on vCPU queues while `set_affinity` and `set_priority`
/// move them back and forth, interleaved with sends, masks, close/re-bind
/// and partial (nested) upcalls, many seeded random steps; after every step
/// the queues are well formed and agree with a reference model, and at the
/// end every sent-and-unmasked event was handled exactly once per run.
#[test]
fn move_while_linked_churn_agrees_with_a_reference_model() {
    let mut total = ChurnStats::default();
    for (seed, vcpus) in [(1u64, 2u32), (2, 3), (3, 4), (0xfeed, 3)] {
        let st = churn(seed, vcpus, 10_000);
        assert!(st.sends > 1000 && st.runs > 500, "seed {seed}: {st:?}");
        assert!(st.moved_linked > 200, "seed {seed}: too few moves: {st:?}");
        assert!(
            st.nested_upcalls > 100 && st.closes > 10,
            "seed {seed}: {st:?}"
        );
        total.steps += st.steps;
        total.sends += st.sends;
        total.runs += st.runs;
        total.moved_linked += st.moved_linked;
        total.affinity += st.affinity;
        total.priority += st.priority;
        total.closes += st.closes;
        total.binds += st.binds;
        total.nested_upcalls += st.nested_upcalls;
    }
    println!("churn: {total:?}");
}

/// (b) on real threads: vCPU threads run upcalls without pause while a
/// mover thread keeps changing the affinity and priority of a few ports and
/// two senders send to them. Nothing is lost (every port's last send is
/// observed by a handler after the final drain), and no handler runs on two
/// vCPUs at once.
#[test]
fn move_while_linked_on_threads_loses_nothing_and_never_runs_concurrently() {
    const PORTS: usize = 6;
    const VCPUS: usize = 3;
    let run_for = Duration::from_millis(1000);
    let ch: Channels<Fifo<OwnedFifo>, ()> = Channels::new(Fifo::new(OwnedFifo::new(64, VCPUS)), ());
    let ports: Vec<Port> = (0..PORTS)
        .map(|i| ch.bind(Bind::Affinity((i % VCPUS) as u32)).unwrap())
        .collect();
    let sent: Vec<AtomicU64> = (0..64).map(|_| AtomicU64::new(0)).collect();
    let seen: Vec<AtomicU64> = (0..64).map(|_| AtomicU64::new(0)).collect();
    let inside: Vec<AtomicBool> = (0..64).map(|_| AtomicBool::new(false)).collect();
    let concurrent = AtomicU64::new(0);
    let stop_vcpus = AtomicBool::new(false);
    let stop_mover = AtomicBool::new(false);
    let moves = AtomicU64::new(0);
    let runs = AtomicU64::new(0);
    let handle = |p: Port| {
        runs.fetch_add(1, Relaxed);
        let n = p.number() as usize;
        if inside[n].swap(true, AcqRel) {
            concurrent.fetch_add(1, Relaxed);
        }
        // Acquire: the core's clear of PENDING synchronised with the send.
        seen[n].fetch_max(sent[n].load(Acquire), AcqRel);
        inside[n].store(false, Release);
    };
    let t0 = Instant::now();
    let mut sends = 0u64;
    thread::scope(|s| {
        // A failed check below stops the looping threads (or the scope hangs).
        let _stop = StopOnDrop([&stop_vcpus, &stop_mover]);
        let (ch, ports, handle) = (&ch, &ports, &handle);
        for v in 0..VCPUS as u32 {
            let stop = &stop_vcpus;
            s.spawn(move || {
                let mut vcpu = ch.vcpu(v).unwrap();
                while !stop.load(Acquire) {
                    vcpu.upcall(handle).unwrap();
                    if !vcpu.upcall_pending() {
                        thread::yield_now();
                    }
                }
            });
        }
        let mover = {
            let (stop, moves) = (&stop_mover, &moves);
            s.spawn(move || {
                let mut rng = Rng::new(99);
                while !stop.load(Acquire) {
                    let p = ports[rng.below(PORTS as u64) as usize];
                    if rng.below(2) == 0 {
                        ch.set_affinity(p, rng.below(VCPUS as u64) as u32).unwrap();
                    } else {
                        ch.set_priority(p, rng.below(16) as u8).unwrap();
                    }
                    if moves.fetch_add(1, Relaxed) % 4 == 0 {
                        thread::yield_now();
                    }
                }
            })
        };
        let deadline = t0 + run_for;
        let senders: Vec<_> = (0..2u64)
            .map(|i| {
                let sent = &sent;
                s.spawn(move || {
                    let mut rng = Rng::new(7 + i);
                    let mut n = 0u64;
                    while Instant::now() < deadline {
                        n += 1;
                        let p = ports[rng.below(PORTS as u64) as usize];
                        // Release: the handler that observes the send sees
                        // the count claimed before it.
                        sent[p.number() as usize].fetch_add(1, AcqRel);
                        ch.send(p).unwrap();
                        // Leave the vCPU threads time to run, or nearly
                        // every send coalesces.
                        if n % 8 == 0 {
                            thread::yield_now();
                        }
                    }
                    n
                })
            })
            .collect();
        for t in senders {
            sends += t.join().unwrap();
        }
        stop_mover.store(true, Release);
        mover.join().unwrap();
        // Let the vCPU threads drain, then stop them.
        let t = Instant::now();
        while (0..VCPUS as u32).any(|v| ch.upcall_pending(v).unwrap())
            && t.elapsed() < Duration::from_secs(10)
        {
            thread::sleep(Duration::from_millis(1));
        }
        stop_vcpus.store(true, Release);
    });
    // Final upcalls on this thread, then the books.
    for _ in 0..100 {
        for v in 0..VCPUS as u32 {
            ch.vcpu(v).unwrap().upcall(handle).unwrap();
        }
    }
    let mut lost = 0;
    for p in &ports {
        let n = p.number() as usize;
        let (s, o) = (sent[n].load(SeqCst), seen[n].load(SeqCst));
        if o < s || ch.status(p.number()).unwrap().pending {
            eprintln!(
                "port {n}: sent {s}, last observed {o}: {:?}",
                ch.status(n as u32)
            );
            lost += 1;
        }
    }
    println!(
        "threads: sends={sends} handler runs={} moves={} secs={:.2}",
        runs.load(Relaxed),
        moves.load(Relaxed),
        t0.elapsed().as_secs_f64()
    );
    assert_eq!(lost, 0, "lost events (C1)");
    assert_eq!(concurrent.load(SeqCst), 0, "concurrent handler runs (C3)");
    assert!(moves.load(SeqCst) > 100, "the mover barely ran");
    assert!(runs.load(SeqCst) > 100, "the vCPUs barely ran handlers");
}

// ---------------------------------------------------------------------------
// (c) 2^17 ports, mapped on demand
// ---------------------------------------------------------------------------

#[test]
fn all_2_pow_17_ports_bind_map_pages_on_demand_and_the_highest_delivers() {
    let ch = new_ch(1 << 17, 2);
    let mem = ch.abi().memory();
    assert_eq!(NR_CHANNELS, 1 << 17);
    assert_eq!(ch.nr_ports(), NR_CHANNELS);
    assert_eq!(mem.max_ports(), NR_CHANNELS);
    assert_eq!(mem.mapped_pages(), 0, "no page before the first bind");
    let mut last = 0;
    loop {
        match ch.bind(Bind::Affinity(1)) {
            Ok(p) => {
                assert_eq!(p.number(), last + 1, "lowest free number first");
                last = p.number();
                // Exactly the pages up to the one holding `last`.
                if last % EVENT_WORDS_PER_PAGE <= 1 || last % 4093 == 0 {
                    assert_eq!(
                        mem.mapped_pages() as u32,
                        last / EVENT_WORDS_PER_PAGE + 1,
                        "pages mapped after binding port {last}"
                    );
                }
            }
            Err(Error::NoFreePort) => break,
            Err(e) => panic!("bind #{}: {e:?}", last + 1),
        }
    }
    let highest = NR_CHANNELS - 1;
    assert_eq!(last, highest, "2^17 - 1 ports (port 0 reserved)");
    assert_eq!(
        mem.mapped_pages() as u32,
        NR_CHANNELS / EVENT_WORDS_PER_PAGE
    );
    assert_eq!(ch.bind(Bind::Affinity(0)), Err(Error::NoFreePort));
    assert_eq!(ch.port(NR_CHANNELS).unwrap_err(), Error::PortOutOfRange);

    // The highest port delivers, and is linked through the full 17-bit
    // LINK field: 1 → highest → 2 on one queue.
    let hp = ch.port(highest).unwrap();
    assert_eq!(status(&ch, hp).state, State::Bound);
    let (p1, p2) = (ch.port(1).unwrap(), ch.port(2).unwrap());
    kicks(&ch);
    ch.send(p1).unwrap();
    ch.send(hp).unwrap();
    ch.send(p2).unwrap();
    assert_eq!(kicks(&ch), [1]);
    assert_eq!(word(&ch, 1) & LINK_MASK, highest);
    assert_eq!(word(&ch, highest) & LINK_MASK, 2);
    assert_eq!(upcall(&ch, 1), [1, highest, 2]);
    assert!(upcall(&ch, 0).is_empty());
    // At priority 0, alone.
    ch.set_priority(hp, 0).unwrap();
    ch.send(p1).unwrap();
    ch.send(hp).unwrap();
    assert_eq!(upcall(&ch, 1), [highest, 1]);
    // Close and re-bind: the highest number comes back, clean.
    ch.send(hp).unwrap();
    ch.close(hp).unwrap();
    let again = ch.bind(Bind::Affinity(0)).unwrap();
    assert_eq!(again.number(), highest);
    let st = status(&ch, again);
    assert!(!st.pending && st.priority == PRIORITY_DEFAULT && st.vcpu == 0);
    assert!(drain(&ch).is_empty(), "the closed life's event ran");
    ch.send(again).unwrap();
    assert_eq!(drain(&ch), [(0, highest)]);
}

#[test]
fn owned_fifo_clamps_to_2_pow_17_ports_and_maps_only_what_bind_needs() {
    for (asked, got) in [(0u32, 1u32), (1, 1), (100, 100), (1 << 17, 1 << 17)] {
        assert_eq!(OwnedFifo::new(asked, 1).max_ports(), got, "asked {asked}");
    }
    assert_eq!(OwnedFifo::new(u32::MAX, 1).max_ports(), NR_CHANNELS);
    assert_eq!(OwnedFifo::new((1 << 17) + 1, 1).max_ports(), NR_CHANNELS);
    assert_eq!(OwnedFifo::new(10, 0).nr_vcpus(), 1);

    // A few binds map one page; a bind past a page boundary maps one more.
    let ch = new_ch(3 * EVENT_WORDS_PER_PAGE, 1);
    let mem = ch.abi().memory();
    assert_eq!(mem.mapped_pages(), 0);
    let first = ch.bind(Bind::Affinity(0)).unwrap();
    assert_eq!(mem.mapped_pages(), 1);
    // Words of unmapped pages do not exist yet.
    assert!(mem.event_word(EVENT_WORDS_PER_PAGE).is_none());
    assert!(mem.event_word(EVENT_WORDS_PER_PAGE - 1).is_some());
    for _ in 1..EVENT_WORDS_PER_PAGE - 1 {
        ch.bind(Bind::Affinity(0)).unwrap();
    }
    assert_eq!(mem.mapped_pages(), 1, "ports 1..1023 fit in page 0");
    let p = ch.bind(Bind::Affinity(0)).unwrap();
    assert_eq!(p.number(), EVENT_WORDS_PER_PAGE);
    assert_eq!(mem.mapped_pages(), 2);
    ch.send(p).unwrap();
    ch.send(first).unwrap();
    assert_eq!(upcall(&ch, 0), [p.number(), first.number()]);
}

// ---------------------------------------------------------------------------
// (e) Errors
// ---------------------------------------------------------------------------

/// Everything observable: statuses, upcall flags, raw words, control blocks.
#[derive(Debug, PartialEq)]
struct Snap {
    statuses: Vec<Status>,
    words: Vec<u32>,
    ready: Vec<u32>,
    heads: Vec<Vec<u32>>,
    flags: Vec<u8>,
}

fn snap(ch: &Ch) -> Snap {
    let mem = ch.abi().memory();
    Snap {
        statuses: (1..ch.nr_ports()).map(|n| ch.status(n).unwrap()).collect(),
        words: (0..ch.nr_ports()).map(|p| word(ch, p)).collect(),
        ready: (0..ch.nr_vcpus())
            .map(|v| mem.control_block(v).unwrap().ready.load(SeqCst))
            .collect(),
        heads: (0..ch.nr_vcpus())
            .map(|v| {
                let cb = mem.control_block(v).unwrap();
                cb.head.iter().map(|h| h.load(SeqCst)).collect()
            })
            .collect(),
        flags: (0..ch.nr_vcpus())
            .map(|v| mem.vcpu_info(v).unwrap().evtchn_upcall_pending.load(SeqCst))
            .collect(),
    }
}

#[track_caller]
fn assert_err_unchanged<T: std::fmt::Debug>(
    ch: &Ch,
    want: Error,
    op: impl FnOnce() -> Result<T, Error>,
) {
    assert_err_unchanged_by(|| snap(ch), want, op);
    assert!(kicks(ch).is_empty(), "a failed operation kicked");
}

#[test]
fn set_priority_out_of_range_is_an_error_and_changes_nothing() {
    let ch = new_ch(64, 2);
    let p = bind_n(&ch, 3, Bind::Affinity(1));
    ch.set_priority(p[2], 2).unwrap();
    ch.send(p[0]).unwrap();
    ch.send(p[1]).unwrap();
    kicks(&ch);
    for bad in [16u8, 17, 100, u8::MAX] {
        for &q in &p {
            assert_err_unchanged(&ch, Error::PriorityOutOfRange, || ch.set_priority(q, bad));
        }
        // The raw ABI refuses too, and keeps the old priority.
        assert_eq!(
            ch.abi().set_priority(p[2].number(), bad),
            Err(Error::PriorityOutOfRange)
        );
    }
    // p[2] still links on priority 2, p[1] still on 7.
    ch.send(p[2]).unwrap();
    let cb = ch.abi().memory().control_block(1).unwrap();
    assert_eq!(cb.ready.load(SeqCst), (1 << 2) | (1 << 7));
    assert_eq!(upcall(&ch, 1), [p[2], p[0], p[1]].map(|q| q.number()));
    // 15 is the last valid priority.
    ch.set_priority(p[0], 15).unwrap();
    assert_eq!(status(&ch, p[0]).priority, 15);
}

#[test]
fn ports_beyond_max_are_port_out_of_range_and_change_nothing() {
    let ch = new_ch(100, 2);
    assert_eq!(ch.nr_ports(), 100);
    let ports = bind_n(&ch, 99, Bind::Affinity(0));
    assert_eq!(ports.last().unwrap().number(), 99);
    assert_err_unchanged(&ch, Error::NoFreePort, || ch.bind(Bind::Affinity(1)));
    for n in [0u32, 100, 101, 1024, NR_CHANNELS, u32::MAX] {
        assert_err_unchanged(&ch, Error::PortOutOfRange, || ch.port(n));
        assert_err_unchanged(&ch, Error::PortOutOfRange, || ch.status(n));
    }
    // A handle from a bigger instance names a port this one lacks.
    let big = new_ch(300, 2);
    let far = loop {
        let p = big.bind(Bind::Affinity(0)).unwrap();
        if p.number() >= 100 {
            break p;
        }
    };
    assert_err_unchanged(&ch, Error::PortOutOfRange, || ch.send(far));
    assert_err_unchanged(&ch, Error::PortOutOfRange, || ch.set_priority(far, 0));
    assert_err_unchanged(&ch, Error::PortOutOfRange, || ch.set_affinity(far, 1));
    assert_err_unchanged(&ch, Error::PortOutOfRange, || ch.mask(far));
    assert_err_unchanged(&ch, Error::PortOutOfRange, || ch.close(far));
    // The raw ABI: out of range, and in range but on a page not mapped.
    let abi = ch.abi();
    for n in [100u32, 1024, NR_CHANNELS, u32::MAX] {
        assert_err_unchanged(&ch, Error::PortOutOfRange, || abi.set_pending(n, || 0));
        assert_err_unchanged(&ch, Error::PortOutOfRange, || abi.unmask(n, || 0));
        assert_err_unchanged(&ch, Error::PortOutOfRange, || abi.reraise(n, || 0));
        assert_err_unchanged(&ch, Error::PortOutOfRange, || abi.set_priority(n, 0));
        assert_err_unchanged(&ch, Error::PortOutOfRange, || abi.mask(n));
        assert_err_unchanged(&ch, Error::PortOutOfRange, || abi.try_unmask(n));
        assert_err_unchanged(&ch, Error::PortOutOfRange, || abi.prepare(n));
    }
    let sparse = new_ch(4 * EVENT_WORDS_PER_PAGE, 1);
    sparse.bind(Bind::Affinity(0)).unwrap();
    let unmapped = 2 * EVENT_WORDS_PER_PAGE + 5;
    let abi = sparse.abi();
    assert_eq!(abi.set_pending(unmapped, || 0), Err(Error::PortOutOfRange));
    assert_eq!(abi.is_pending(unmapped), Err(Error::PortOutOfRange));
    assert_eq!(abi.try_unmask(unmapped), Err(Error::PortOutOfRange));
    assert_eq!(
        abi.memory().mapped_pages(),
        1,
        "a failed raise mapped a page"
    );
    // Out-of-range vCPUs.
    assert_err_unchanged(&ch, Error::VcpuOutOfRange, || ch.bind(Bind::Affinity(2)));
    assert_err_unchanged(&ch, Error::VcpuOutOfRange, || ch.upcall_pending(2));
    assert!(matches!(ch.vcpu(2), Err(Error::VcpuOutOfRange)));
}

// ---------------------------------------------------------------------------
// (f) Control-plane behaviours on FIFO
// ---------------------------------------------------------------------------

#[test]
fn xencompat_bind_raises_one_event_on_vcpu0_affinity_bind_none() {
    let ch = new_ch(64, 3);
    let x = ch.bind(Bind::XenCompat).unwrap();
    let st = status(&ch, x);
    assert!(st.pending && st.vcpu == 0 && st.priority == PRIORITY_DEFAULT);
    assert_ne!(
        word(&ch, x.number()) & LINKED,
        0,
        "linked on vCPU 0's queue"
    );
    assert_eq!(kicks(&ch), [0]);
    let a = ch.bind(Bind::Affinity(2)).unwrap();
    assert!(!status(&ch, a).pending);
    assert_eq!(word(&ch, a.number()) & (PENDING | LINKED | MASKED), 0);
    assert!(kicks(&ch).is_empty(), "the affinity bind kicked");
    assert_eq!(pending_vcpus(&ch), [0]);
    assert_eq!(drain(&ch), [(0, x.number())]);
    ch.send(a).unwrap();
    assert_eq!(kicks(&ch), [2]);
    assert_eq!(drain(&ch), [(2, a.number())]);
}

/// A masked port's handler never runs, even when its event was already
/// linked before the mask; the unmask links it again, on the port's vCPU of
/// the moment, and it runs once.
#[test]
fn mask_after_link_silences_and_unmask_after_set_affinity_delivers_once_on_the_new_vcpu() {
    let ch = new_ch(64, 2);
    let p = ch.bind(Bind::Affinity(0)).unwrap();
    let other = ch.bind(Bind::Affinity(0)).unwrap();
    ch.send(p).unwrap();
    ch.send(other).unwrap();
    ch.mask(p).unwrap();
    assert_ne!(word(&ch, p.number()) & LINKED, 0);
    kicks(&ch);
    // vCPU 0 takes p off its queue without running it; other still runs.
    assert_eq!(upcall(&ch, 0), [other.number()]);
    assert_eq!(word(&ch, p.number()) & (PENDING | LINKED), PENDING);
    ch.send(p).unwrap(); // coalesces, stays silent
    assert!(drain(&ch).is_empty());
    ch.set_affinity(p, 1).unwrap();
    assert!(status(&ch, p).masked_explicit, "the rebind kept the mask");
    assert!(drain(&ch).is_empty());
    kicks(&ch);
    ch.unmask(p).unwrap();
    assert_eq!(kicks(&ch), [1]);
    assert_eq!(drain(&ch), [(1, p.number())]);
}

#[test]
fn unmask_and_eoi_each_remove_only_their_reason() {
    let ch = new_ch(64, 1);
    let p = ch.bind(Bind::Affinity(0)).unwrap();
    ch.mask(p).unwrap();
    ch.mask_until_eoi(p).unwrap();
    ch.send(p).unwrap();
    ch.unmask(p).unwrap();
    assert!(drain(&ch).is_empty(), "ran with an EOI outstanding");
    assert_ne!(word(&ch, p.number()) & MASKED, 0);
    ch.eoi(p).unwrap();
    assert_eq!(word(&ch, p.number()) & MASKED, 0);
    assert_eq!(drain(&ch), [(0, p.number())]);
    assert_eq!(ch.eoi(p), Err(Error::NotEoiPending));
}

/// Close while the event is linked: the handler never runs again, the
/// number comes back clean (priority 7, no pending, unmasked) although the
/// old link is still on vCPU 0's queue, the old handle is stale, and the
/// new life's first event runs exactly once on its own vCPU.
#[test]
fn close_while_linked_then_reuse_starts_clean_and_delivers_once() {
    let ch = new_ch(64, 2);
    let q = ch.bind(Bind::Affinity(0)).unwrap();
    let p = ch.bind(Bind::Affinity(0)).unwrap();
    ch.set_priority(p, 0).unwrap();
    ch.send(q).unwrap();
    ch.send(p).unwrap();
    ch.close(p).unwrap();
    assert_eq!(ch.send(p), Err(Error::NotBound));
    let again = ch.bind(Bind::Affinity(1)).unwrap();
    assert_eq!(again.number(), p.number());
    let st = status(&ch, again);
    assert_eq!(st.state, State::Bound);
    assert!(!st.pending && !st.masked_explicit && !st.in_flight);
    assert_eq!((st.vcpu, st.priority), (1, PRIORITY_DEFAULT));
    assert_eq!(ch.send(p), Err(Error::Stale));
    assert_eq!(ch.set_priority(p, 3), Err(Error::Stale));
    // Nothing of the old life runs.
    assert_eq!(drain(&ch), [(0, q.number())]);
    // The new life's event runs once, on vCPU 1, and at priority 7: behind
    // an earlier priority-7 event of the same vCPU.
    let r = ch.bind(Bind::Affinity(1)).unwrap();
    ch.send(r).unwrap();
    ch.send(again).unwrap();
    assert_eq!(drain(&ch), [(1, r.number()), (1, again.number())]);
}

/// The same, but the close happens while the old life's link is still
/// unconsumed when the new life sends: the event is found on vCPU 0's
/// queue and handed over to vCPU 1, where it runs once.
#[test]
fn reused_number_still_linked_from_its_last_life_is_forwarded_not_lost() {
    let ch = new_ch(64, 2);
    let p = ch.bind(Bind::Affinity(0)).unwrap();
    ch.send(p).unwrap();
    ch.close(p).unwrap();
    let again = ch.bind(Bind::Affinity(1)).unwrap();
    assert_eq!(again.number(), p.number());
    assert_ne!(word(&ch, p.number()) & LINKED, 0, "old link still queued");
    ch.send(again).unwrap();
    let runs = drain(&ch);
    assert_eq!(runs, [(1, again.number())]);
}

#[test]
fn handler_never_runs_after_close_even_if_linked_behind_the_running_one() {
    let ch = new_ch(64, 1);
    let a = ch.bind(Bind::Affinity(0)).unwrap();
    let b = ch.bind(Bind::Affinity(0)).unwrap();
    ch.send(a).unwrap();
    ch.send(b).unwrap();
    let mut order = Vec::new();
    ch.vcpu(0)
        .unwrap()
        .upcall(|q| {
            order.push(q.number());
            if q == a {
                ch.close(b).unwrap();
            }
        })
        .unwrap();
    assert_eq!(order, [a.number()]);
    assert!(drain(&ch).is_empty());
}

/// A port moved to another vCPU *and* another priority while linked runs on
/// the new vCPU at the new priority once forwarded.
#[test]
fn moved_vcpu_and_priority_while_linked_runs_on_the_new_queue() {
    let ch = new_ch(64, 2);
    let p = ch.bind(Bind::Affinity(0)).unwrap();
    let low = ch.bind(Bind::Affinity(1)).unwrap();
    ch.send(p).unwrap();
    ch.send(low).unwrap();
    ch.set_affinity(p, 1).unwrap();
    ch.set_priority(p, 1).unwrap();
    assert!(upcall(&ch, 0).is_empty());
    let cb = ch.abi().memory().control_block(1).unwrap();
    assert_eq!(cb.ready.load(SeqCst), (1 << 1) | (1 << 7));
    assert_eq!(cb.head[1].load(SeqCst), p.number());
    assert_eq!(upcall(&ch, 1), [p.number(), low.number()]);
}

// ---------------------------------------------------------------------------
// (b) The churn, long
// ---------------------------------------------------------------------------

/// The reference-model churn with many more seeds (300 take about 3 s in
/// release).
#[test]
#[ignore = "long: CHURN_SEEDS=300 cargo test --release --test fifo -- --ignored"]
fn move_while_linked_churn_many_seeds() {
    let n: u64 = std::env::var("CHURN_SEEDS").map_or(50, |s| s.parse().unwrap());
    for seed in 0..n {
        churn(seed * 7919 + 11, 2 + (seed % 3) as u32, 20_000);
    }
}

// ---------------------------------------------------------------------------
// (d) Hostile memory under the control plane
// ---------------------------------------------------------------------------

/// What the guest may scribble in [`hostile_control_plane`].
#[derive(Clone, Copy, PartialEq)]
enum Garbage {
    /// Anything: event words with any LINK, `ready`, `head[]`, upcall flags.
    Everything,
    /// Only the flag bits of event words (PENDING, MASKED, LINKED, BUSY);
    /// LINK fields, `ready` and `head[]` stay the raise side's.
    FlagsOnly,
}

/// The guest scribbles over the FIFO memory of a `Channels` instance
/// between sends, moves, masks, close/re-bind and upcalls. Nothing panics
/// or hangs, and the control plane still never runs a handler of a port
/// that is not bound, is masked, is bound to another vCPU, or is running
/// already: garbage can at most cause spurious runs of the guest's own
/// bound ports, or drop its events. A second instance used alongside
/// delivers exactly.
fn hostile_control_plane(vcpus: u32, garbage: Garbage, seed: u64, steps: u32) -> u64 {
    let ch = new_ch(64, vcpus as usize);
    let other = new_ch(64, 2);
    let mem = ch.abi().memory();
    let mut rng = Rng::new(seed);
    let mut live: Vec<Option<Port>> = vec![None; 64];
    let mut masked = [false; 64];
    let inside: Vec<Cell<bool>> = (0..64).map(|_| Cell::new(false)).collect();
    let b = bind_n(&other, 3, Bind::Affinity(1));
    let mut runs = 0u64;
    for step in 0..steps {
        // Scribbles.
        for _ in 0..rng.below(3) {
            let x = rng.next_u64() as u32;
            let v = rng.below(u64::from(vcpus)) as u32;
            let p = 1 + rng.below(40) as u32;
            let flags = [PENDING | LINKED, LINKED, !0, 0, PENDING, MASKED][x as usize % 6];
            match (garbage, rng.below(6)) {
                (Garbage::Everything, 0 | 1) => {
                    if let Some(w) = mem.event_word(p) {
                        w.store(flags | (rng.below(70) as u32 & LINK_MASK), SeqCst);
                    }
                }
                (Garbage::FlagsOnly, 0..=3) => {
                    if let Some(w) = mem.event_word(p) {
                        let keep = w.load(SeqCst) & LINK_MASK;
                        w.store((flags & !LINK_MASK) | keep, SeqCst);
                    }
                }
                (Garbage::Everything, 2) => {
                    mem.control_block(v).unwrap().ready.store(x, SeqCst);
                }
                (Garbage::Everything, 3) => {
                    let cb = mem.control_block(v).unwrap();
                    cb.head[rng.below(16) as usize].store(rng.below(80) as u32, SeqCst);
                }
                (_, 4) => {
                    let vi = mem.vcpu_info(v).unwrap();
                    vi.evtchn_upcall_pending.store(x as u8, SeqCst);
                }
                _ => {}
            }
        }
        // Control-plane operations on a random port number.
        let n = 1 + rng.below(40) as usize;
        match (live[n], rng.below(10)) {
            (None, _) => {
                let v = rng.below(u64::from(vcpus)) as u32;
                if let Ok(p) = ch.bind(Bind::Affinity(v)) {
                    live[p.number() as usize] = Some(p);
                    masked[p.number() as usize] = false;
                }
            }
            // A send on a bound port succeeds, whatever the memory holds.
            (Some(p), 0..=3) => ch.send(p).unwrap(),
            (Some(p), 4) => {
                let v = rng.below(u64::from(vcpus)) as u32;
                ch.set_affinity(p, v).unwrap()
            }
            (Some(p), 5) => ch.set_priority(p, rng.below(16) as u8).unwrap(),
            (Some(p), 6) => {
                ch.mask(p).unwrap();
                masked[n] = true;
            }
            (Some(p), 7) => {
                ch.unmask(p).unwrap();
                masked[n] = false;
            }
            (Some(p), 8) if rng.below(4) == 0 => {
                ch.close(p).unwrap();
                live[n] = None;
            }
            _ => {}
        }
        // An upcall on a random vCPU: every handler run must be allowed.
        let v = rng.below(u64::from(vcpus)) as u32;
        let n_ran = ch
            .vcpu(v)
            .unwrap()
            .upcall(|p| {
                let k = p.number() as usize;
                assert_eq!(
                    live.get(k).copied().flatten(),
                    Some(p),
                    "step {step}: not bound"
                );
                assert!(!masked[k], "step {step}: masked port {k} ran");
                assert_eq!(status(&ch, p).vcpu, v, "step {step}: foreign port {k} ran");
                assert!(!inside[k].replace(true), "step {step}: concurrent run");
                runs += 1;
                inside[k].set(false);
            })
            .unwrap();
        assert!(
            n_ran <= 10_000,
            "step {step}: one upcall ran {n_ran} handlers"
        );
        // The other instance: exact.
        if step % 16 == 0 {
            other.send(b[2]).unwrap();
            other.send(b[0]).unwrap();
            other.send(b[1]).unwrap();
            assert_eq!(upcall(&other, 1), [b[2], b[0], b[1]].map(|q| q.number()));
        }
    }
    assert!(runs > 100, "the upcalls barely ran handlers ({runs})");
    runs
}

/// (d) One vCPU, any garbage.
#[test]
fn hostile_memory_one_vcpu_any_garbage_runs_no_handler_it_must_not() {
    within(Duration::from_secs(120), || {
        for seed in 1..=3 {
            hostile_control_plane(1, Garbage::Everything, seed, 10_000);
        }
    });
}

/// (d) Three vCPUs, garbage in the flag bits of event words and in the
/// upcall flags (the chain structure stays the raise side's).
#[test]
fn hostile_memory_three_vcpus_flag_garbage_runs_no_handler_it_must_not() {
    within(Duration::from_secs(120), || {
        for seed in 1..=3 {
            hostile_control_plane(3, Garbage::FlagsOnly, seed, 10_000);
        }
    });
}

/// (d) Three vCPUs, any garbage: hangs today (see the minimal case below).
#[test]
fn hostile_memory_three_vcpus_any_garbage_runs_no_handler_it_must_not() {
    within(Duration::from_secs(120), || {
        for seed in 1..=3 {
            hostile_control_plane(3, Garbage::Everything, seed, 10_000);
        }
    });
}

/// The minimal case of the hang. Ports `a` and `b` are bound to vCPU 1; the
/// guest writes a two-port cycle `a -> b -> a` (both PENDING|LINKED) and
/// makes vCPU 2's priority-7 queue start at `a`. vCPU 2's upcall takes `a`
/// off (next: `b`), finds it bound to vCPU 1 (`Foreign`) and links it
/// there: head of vCPU 1's queue, private tail `a`. It takes `b` (next:
/// `a`, from the garbage link), links `b` after the tail `a`: `a.LINK = b`.
/// It takes `a` again (linked once more, next: `b`, the link just
/// written), links `a` after the tail `b`: `b.LINK = a`. And so on for
/// ever: every Foreign re-link writes the link the scan follows next.
///
/// Expected: the upcall returns (no handler runs on vCPU 2; `a` and `b`
/// may then be delivered, spuriously, on vCPU 1). Actual: it never returns
/// (`Fifo::scan` loops in `consume_one` → `link` → `set_link`).
#[test]
fn upcall_returns_when_a_garbage_chain_leads_into_another_vcpus_queue() {
    let ch: &'static Ch = Box::leak(Box::new(new_ch(64, 3)));
    let a = ch.bind(Bind::Affinity(1)).unwrap().number();
    let b = ch.bind(Bind::Affinity(1)).unwrap().number();
    let mem = ch.abi().memory();
    mem.event_word(a)
        .unwrap()
        .store(PENDING | LINKED | b, SeqCst);
    mem.event_word(b)
        .unwrap()
        .store(PENDING | LINKED | a, SeqCst);
    let cb = mem.control_block(2).unwrap();
    cb.head[PRIORITY_DEFAULT as usize].store(a, SeqCst);
    cb.ready.store(1 << PRIORITY_DEFAULT, SeqCst);
    mem.vcpu_info(2)
        .unwrap()
        .evtchn_upcall_pending
        .store(1, SeqCst);
    let ran = within(Duration::from_secs(10), move || {
        ch.vcpu(2)
            .unwrap()
            .upcall(|p| panic!("{p:?} ran on vCPU 2"))
    });
    assert_eq!(ran, Ok(0));
    // The guest's own (spurious) events of a and b end up on vCPU 1.
    let runs = drain(ch);
    assert!(runs.iter().all(|&(v, _)| v == 1), "{runs:?}");
}

/// An upcall that runs out of budget hands the queues it took back to the
/// control block: a new handle's upcall resumes them (nothing is stranded
/// in a dropped cursor).
#[test]
fn an_upcall_out_of_budget_leaves_its_queues_to_any_later_handle() {
    let ch = new_ch(64, 1);
    let a = ch.bind(Bind::Affinity(0)).unwrap();
    let b = ch.bind(Bind::Affinity(0)).unwrap();
    ch.send(a).unwrap();
    let runs = Cell::new(0u32);
    // A handler that re-sends its own port: every head is a new event, so
    // the scan stops at its budget (2 × 64 heads) with the queue held.
    ch.vcpu(0)
        .unwrap()
        .upcall(|p| {
            runs.set(runs.get() + 1);
            if runs.get() < 10_000 {
                ch.send(p).unwrap();
            }
        })
        .unwrap();
    assert_eq!(runs.get(), 128, "the budget bounds the upcall");
    assert_eq!(ch.upcall_pending(0), Ok(true), "the rest is left for later");
    ch.send(b).unwrap();
    let mut seen = Vec::new();
    for _ in 0..3 {
        seen.extend(upcall(&ch, 0));
    }
    assert_eq!(seen, vec![a.number(), b.number()]);
    assert!(!status(&ch, a).pending && !status(&ch, b).pending);
    assert_eq!(ch.upcall_pending(0), Ok(false));
}
