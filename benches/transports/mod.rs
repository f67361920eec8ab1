//! The transports of the end-to-end and memory benches (evtchn over either
//! ABI, and two queues), with the same handler work and the same idle
//! protocol:
//!
//! * **handler work** ([`Work::handle`]): read the port's sequence number
//!   (written by the sender just before the send) and publish it as seen;
//!   count the run.
//! * **idle protocol**: the vCPU thread parks (`thread::park`) only after
//!   finding no work flagged; the sender unparks it ([`Wake::kick`]) when the
//!   transport says to kick — evtchn: its `Notify` (the upcall flag went
//!   0 → 1); the mutex queue: the push found the queue empty; crossbeam: a
//!   per-vCPU "work flagged" flag (the analogue of the upcall flag) went
//!   0 → 1.
//! * **routing**: the queue transports look the port's vCPU up in a port
//!   table (one load), as evtchn reads the port's binding.

#![allow(dead_code)]

use std::collections::VecDeque;
use std::hint::spin_loop;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering::*};
use std::sync::OnceLock;
use std::thread::{self, Thread};

use crossbeam_channel::{Receiver, Sender};
use crossbeam_utils::CachePadded;
use evtchn::{Bind, Channels, Fifo, OwnedFifo, OwnedMemory, Port, PortOps, TwoLevel};
use parking_lot::Mutex;

/// Port numbers 0..NR_PORTS (port 0 reserved, as in Xen).
pub const NR_PORTS: u32 = 4096;

/// The handler's data, the same for every transport.
pub struct Work {
    /// Written by the sender just before a send to the port.
    pub seq: Box<[AtomicU64]>,
    /// Written by the handler: the `seq` it read.
    pub seen: Box<[AtomicU64]>,
}

impl Work {
    pub fn new() -> Self {
        let zeros = || (0..NR_PORTS).map(|_| AtomicU64::new(0)).collect();
        Work {
            seq: zeros(),
            seen: zeros(),
        }
    }

    /// The handler: the same work for every transport.
    #[inline(always)]
    pub fn handle(&self, port: u32, runs: &mut u64) {
        let s = self.seq[port as usize].load(Relaxed);
        // Release: the sender's Acquire wait sees the run complete.
        self.seen[port as usize].store(s, Release);
        *runs += 1;
    }
}

/// Unparks the vCPU thread (the `Notify` of every transport).
#[derive(Default)]
pub struct Wake(pub OnceLock<Thread>);

impl Wake {
    #[inline]
    pub fn kick(&self) {
        if let Some(t) = self.0.get() {
            t.unpark();
        }
    }
}

impl evtchn::Notify for &Wake {
    fn kick(&self, _vcpu: u32) {
        Wake::kick(self)
    }
}

/// What a transport provides: a send from the bench thread, and the loop of
/// the thread that runs vCPU 0 (returns its handler runs and parks).
pub trait Transport: Sync {
    fn send(&self, port: u32);
    fn vcpu_loop(&self, work: &Work, stop: &AtomicBool) -> (u64, u64);
    fn wake(&self) -> &Wake;
}

/// evtchn: `Channels` over memory for 4096 ports, every port bound to
/// vCPU 0 — the 2-level ABI (`Evtchn::new`) or the FIFO ABI
/// (`Evtchn::fifo`, every port at the default priority).
pub struct Evtchn<'w, A: PortOps = TwoLevel<OwnedMemory>> {
    pub ch: Channels<A, &'w Wake>,
    ports: Vec<Port>,
    wake: &'w Wake,
}

impl<'w> Evtchn<'w> {
    pub fn new(wake: &'w Wake, vcpus: usize) -> Self {
        Self::over(
            TwoLevel::new(OwnedMemory::new((NR_PORTS / 64) as usize, vcpus)),
            wake,
        )
    }
}

impl<'w> Evtchn<'w, Fifo<OwnedFifo>> {
    pub fn fifo(wake: &'w Wake, vcpus: usize) -> Self {
        Self::over(Fifo::new(OwnedFifo::new(NR_PORTS, vcpus)), wake)
    }
}

impl<'w, A: PortOps> Evtchn<'w, A> {
    fn over(abi: A, wake: &'w Wake) -> Self {
        let ch = Channels::new(abi, wake);
        let mut ports = Vec::with_capacity(NR_PORTS as usize);
        for _ in 1..NR_PORTS {
            ports.push(ch.bind(Bind::Affinity(0)).expect("bind"));
        }
        // Index by number; port 0 (reserved) gets a placeholder.
        ports.insert(0, ports[0]);
        Evtchn { ch, ports, wake }
    }
}

impl<A: PortOps + Sync> Transport for Evtchn<'_, A> {
    #[inline]
    fn send(&self, port: u32) {
        self.ch.send(self.ports[port as usize]).expect("send");
    }

    fn vcpu_loop(&self, work: &Work, stop: &AtomicBool) -> (u64, u64) {
        let mut vcpu = self.ch.vcpu(0).expect("vcpu");
        let (mut runs, mut parks) = (0, 0);
        loop {
            if vcpu.upcall_pending() {
                vcpu.upcall(|p| work.handle(p.number(), &mut runs))
                    .expect("upcall");
                continue;
            }
            if stop.load(Acquire) {
                return (runs, parks);
            }
            parks += 1;
            thread::park();
        }
    }

    fn wake(&self) -> &Wake {
        self.wake
    }
}

/// Port → vCPU table of the queue transports (every port on vCPU 0).
fn routes() -> Box<[AtomicU32]> {
    (0..NR_PORTS).map(|_| AtomicU32::new(0)).collect()
}

/// A `parking_lot::Mutex<VecDeque<u32>>` per vCPU.
pub struct MutexQueue<'w> {
    route: Box<[AtomicU32]>,
    queues: Vec<CachePadded<Mutex<VecDeque<u32>>>>,
    wake: &'w Wake,
}

impl<'w> MutexQueue<'w> {
    pub fn new(wake: &'w Wake, vcpus: usize) -> Self {
        MutexQueue {
            route: routes(),
            queues: (0..vcpus).map(|_| Default::default()).collect(),
            wake,
        }
    }
}

impl Transport for MutexQueue<'_> {
    #[inline]
    fn send(&self, port: u32) {
        let v = self.route[port as usize].load(Relaxed) as usize;
        let was_empty = {
            let mut q = self.queues[v].lock();
            let e = q.is_empty();
            q.push_back(port);
            e
        };
        if was_empty {
            self.wake.kick();
        }
    }

    fn vcpu_loop(&self, work: &Work, stop: &AtomicBool) -> (u64, u64) {
        let (mut runs, mut parks) = (0, 0);
        let mut local = VecDeque::new();
        loop {
            {
                let mut q = self.queues[0].lock();
                if !q.is_empty() {
                    // Take the whole batch; leave the (empty) spare.
                    std::mem::swap(&mut *q, &mut local);
                }
            }
            if !local.is_empty() {
                for p in local.drain(..) {
                    work.handle(p, &mut runs);
                }
                continue;
            }
            if stop.load(Acquire) {
                return (runs, parks);
            }
            parks += 1;
            thread::park();
        }
    }

    fn wake(&self) -> &Wake {
        self.wake
    }
}

/// An unbounded `crossbeam-channel` per vCPU, with a "work flagged" flag
/// per vCPU for the idle protocol.
pub struct Crossbeam<'w> {
    route: Box<[AtomicU32]>,
    tx: Vec<Sender<u32>>,
    rx: Vec<Receiver<u32>>,
    flagged: Vec<CachePadded<AtomicBool>>,
    wake: &'w Wake,
}

impl<'w> Crossbeam<'w> {
    pub fn new(wake: &'w Wake, vcpus: usize) -> Self {
        let (tx, rx) = (0..vcpus).map(|_| crossbeam_channel::unbounded()).unzip();
        Crossbeam {
            route: routes(),
            tx,
            rx,
            flagged: (0..vcpus).map(|_| Default::default()).collect(),
            wake,
        }
    }
}

impl Transport for Crossbeam<'_> {
    #[inline]
    fn send(&self, port: u32) {
        let v = self.route[port as usize].load(Relaxed) as usize;
        self.tx[v].send(port).expect("send");
        // AcqRel: Release publishes the message to the vCPU's swap; a swap
        // that finds the flag set leaves the kick to whoever set it.
        if !self.flagged[v].swap(true, AcqRel) {
            self.wake.kick();
        }
    }

    fn vcpu_loop(&self, work: &Work, stop: &AtomicBool) -> (u64, u64) {
        let (mut runs, mut parks) = (0, 0);
        loop {
            // AcqRel: Acquire pairs with the senders' swaps, so every message
            // sent before a swap that found the flag set is received below.
            self.flagged[0].swap(false, AcqRel);
            while let Ok(p) = self.rx[0].try_recv() {
                work.handle(p, &mut runs);
            }
            if self.flagged[0].load(Acquire) {
                continue;
            }
            if stop.load(Acquire) {
                return (runs, parks);
            }
            parks += 1;
            thread::park();
        }
    }

    fn wake(&self) -> &Wake {
        self.wake
    }
}

/// Waits for `cond`, spinning a little, then yielding the core.
pub fn wait_until(mut cond: impl FnMut() -> bool) {
    let mut spins = 0u32;
    while !cond() {
        if spins < 64 {
            spin_loop();
            spins += 1;
        } else {
            thread::yield_now();
        }
    }
}
