//! The raw FIFO `PortOps` used directly, as a hypervisor (raise side) or a
//! guest (deliver side) would, over caller-owned memory (`BorrowedFifo`):
//! the queue protocol (READY only for a new head, BUSY, the guest's
//! conditional unmask), typed errors, and hostile memory (C7): whatever the
//! guest writes into event words, LINK fields, `ready` or `head[]`, every
//! raise-side call returns without panicking, touches only the raised
//! port's word, the private tail's LINK and the target vCPU's control block
//! and `vcpu_info`, and a second domain is unaffected; deliver-side scans
//! over the same garbage end too.
// Native tests; under RUSTFLAGS="--cfg loom" only the models run.
#![cfg(not(loom))]

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering::*};
use std::thread;
use std::time::{Duration, Instant};

use evtchn::xen::fifo::{
    ControlBlock, EventWord, BUSY, LINKED, LINK_MASK, MASKED, MAX_QUEUES, NR_CHANNELS, PENDING,
    PRIORITY_DEFAULT,
};
use evtchn::xen::VcpuInfo;
use evtchn::{
    BorrowedFifo, Delivery, Error, Fifo, FifoCursor, FifoMemory, GuestUnmask, OwnedFifo, Raised,
};
use evtchn::{Deliver, Ports, Raise};

use evtchn_test_support::{within, Rng, StopOnDrop};

// ---------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------

/// Caller-owned FIFO memory: the event array, control blocks, `vcpu_info`s.
struct Mem {
    words: Vec<EventWord>,
    control: Vec<ControlBlock>,
    vcpus: Vec<VcpuInfo>,
}

impl Mem {
    fn new(ports: usize, vcpus: usize) -> Self {
        Mem {
            words: (0..ports).map(|_| AtomicU32::new(0)).collect(),
            control: (0..vcpus).map(|_| ControlBlock::new()).collect(),
            vcpus: (0..vcpus).map(|_| VcpuInfo::new()).collect(),
        }
    }

    fn fifo(&self) -> Fifo<BorrowedFifo<'_>> {
        Fifo::new(BorrowedFifo {
            words: &self.words,
            control: &self.control,
            vcpus: &self.vcpus,
        })
    }

    fn w(&self, p: u32) -> u32 {
        self.words[p as usize].load(SeqCst)
    }

    fn raw(&self) -> Raw {
        Raw {
            words: self.words.iter().map(|w| w.load(SeqCst)).collect(),
            ready: self.control.iter().map(|c| c.ready.load(SeqCst)).collect(),
            heads: self
                .control
                .iter()
                .map(|c| c.head.iter().map(|h| h.load(SeqCst)).collect())
                .collect(),
            flags: self
                .vcpus
                .iter()
                .map(|v| v.evtchn_upcall_pending.load(SeqCst))
                .collect(),
            other: self
                .vcpus
                .iter()
                .map(|v| {
                    (
                        v.evtchn_upcall_mask.load(SeqCst),
                        v.evtchn_pending_sel.load(SeqCst),
                    )
                })
                .collect(),
        }
    }
}

/// Every word of a `Mem`.
#[derive(Clone, Debug, PartialEq)]
struct Raw {
    words: Vec<u32>,
    ready: Vec<u32>,
    heads: Vec<Vec<u32>>,
    flags: Vec<u8>,
    /// `evtchn_upcall_mask` and `evtchn_pending_sel`: the FIFO ABI never
    /// writes them.
    other: Vec<(u8, u64)>,
}

/// One scan of `v` that offers every port to `each` and records them.
fn scan_with<M: FifoMemory>(
    fifo: &Fifo<M>,
    v: u32,
    mut each: impl FnMut(u32) -> Delivery,
) -> Result<Vec<u32>, Error> {
    let mut seen = Vec::new();
    let mut kicks = Vec::new();
    fifo.scan(
        v,
        &mut FifoCursor::default(),
        |p| {
            seen.push(p);
            each(p)
        },
        |k| kicks.push(k),
    )?;
    Ok(seen)
}

/// A guest's scan that handles what it is offered: clears PENDING (as the
/// control plane does before the handler) and returns the ports it ran.
fn deliver<M: FifoMemory>(fifo: &Fifo<M>, v: u32) -> Vec<u32> {
    let mut ran = Vec::new();
    scan_with(fifo, v, |p| {
        if fifo.test_and_clear_pending(p) == Ok(true) {
            ran.push(p);
            Delivery::Handled
        } else {
            Delivery::Skipped
        }
    })
    .unwrap();
    ran
}

/// Asserts that a call failed with `PortOutOfRange`.
macro_rules! out_of_range {
    ($call:expr) => {
        assert_eq!($call.err(), Some(Error::PortOutOfRange), stringify!($call))
    };
}

/// A word a hostile guest might write: all ones, random, flag
/// combinations with links in and out of range, zero.
fn hostile_word(rng: &mut Rng, ports: u32) -> u32 {
    let flags = [
        0,
        PENDING,
        LINKED,
        PENDING | LINKED,
        MASKED | PENDING,
        BUSY,
        !0,
    ];
    let link = match rng.below(4) {
        0 => 0,
        1 => rng.below(u64::from(ports)) as u32,
        2 => LINK_MASK,
        _ => rng.next_u64() as u32,
    };
    match rng.below(8) {
        0 => !0,
        1 => rng.next_u64() as u32,
        2 => 0,
        _ => flags[rng.below(flags.len() as u64) as usize] | (link & LINK_MASK),
    }
}

// ---------------------------------------------------------------------------
// The queue protocol
// ---------------------------------------------------------------------------

#[test]
fn a_raise_on_an_empty_queue_writes_head_sets_ready_and_kicks_once() {
    let mem = Mem::new(16, 2);
    let fifo = mem.fifo();
    assert_eq!(fifo.nr_ports(), 16);
    assert_eq!(fifo.nr_vcpus(), 2);
    let r = fifo.set_pending(3, || 1).unwrap();
    assert_eq!(
        r,
        Raised::Notified {
            vcpu: 1,
            kick: true
        }
    );
    assert_eq!(mem.w(3), PENDING | LINKED);
    assert_eq!(
        mem.control[1].head[PRIORITY_DEFAULT as usize].load(SeqCst),
        3
    );
    assert_eq!(mem.control[1].ready.load(SeqCst), 1 << PRIORITY_DEFAULT);
    assert_eq!(mem.vcpus[1].evtchn_upcall_pending.load(SeqCst), 1);
    assert_eq!(mem.raw().ready[0], 0);
    // A second send coalesces; a second port is appended: no new kick.
    assert_eq!(fifo.set_pending(3, || 1), Ok(Raised::Coalesced));
    let r = fifo.set_pending(5, || 1).unwrap();
    assert_eq!(
        r,
        Raised::Notified {
            vcpu: 1,
            kick: false
        }
    );
    assert_eq!(mem.w(3), PENDING | LINKED | 5);
    assert_eq!(mem.control[1].head[7].load(SeqCst), 3, "head unchanged");
    assert!(fifo.upcall_pending(1).unwrap());
    assert_eq!(deliver(&fifo, 1), [3, 5]);
    assert!(!fifo.upcall_pending(1).unwrap());
    assert_eq!(mem.w(3), 0);
    assert_eq!(mem.w(5), 0);
    assert_eq!(mem.control[1].ready.load(SeqCst), 0);
}

/// docs/DESIGN.md §6, F12 (stale HEAD): an event appended to a queue the
/// guest is draining sets neither READY nor the upcall flag (and kicks
/// nobody); the guest finds it by following the link. Setting READY on
/// every append would show here as a ready bit and a kick.
#[test]
fn an_append_to_a_queue_being_drained_sets_no_ready_bit_and_kicks_nobody() {
    let mem = Mem::new(16, 1);
    let fifo = mem.fifo();
    fifo.set_pending(1, || 0).unwrap();
    fifo.set_pending(2, || 0).unwrap();
    let mut inside = Vec::new();
    let ran = scan_with(&fifo, 0, |p| {
        fifo.test_and_clear_pending(p).unwrap();
        if p == 1 {
            // 2 is still linked (the tail): 3 goes after it.
            let r = fifo.set_pending(3, || 0).unwrap();
            inside.push((
                r,
                mem.control[0].ready.load(SeqCst),
                mem.vcpus[0].evtchn_upcall_pending.load(SeqCst),
                mem.w(2) & LINK_MASK,
            ));
        }
        Delivery::Handled
    })
    .unwrap();
    assert_eq!(
        inside,
        [(
            Raised::Notified {
                vcpu: 0,
                kick: false
            },
            0,
            0,
            3
        )]
    );
    assert_eq!(ran, [1, 2, 3]);
    assert!(!fifo.upcall_pending(0).unwrap());
}

/// When the queue's tail has been consumed, the next raise starts a new
/// queue (head + READY) instead of linking after the consumed tail.
#[test]
fn a_raise_after_the_tail_was_consumed_starts_a_new_head() {
    let mem = Mem::new(16, 1);
    let fifo = mem.fifo();
    fifo.set_pending(4, || 0).unwrap();
    let ran = scan_with(&fifo, 0, |p| {
        fifo.test_and_clear_pending(p).unwrap();
        if p == 4 {
            // 4 was the tail and is off the queue now.
            let r = fifo.set_pending(6, || 0).unwrap();
            assert_eq!(
                r,
                Raised::Notified {
                    vcpu: 0,
                    kick: true
                }
            );
            assert_eq!(mem.w(4) & LINK_MASK, 0, "linked after a consumed tail");
            assert_eq!(mem.control[0].head[7].load(SeqCst), 6);
        }
        Delivery::Handled
    })
    .unwrap();
    assert_eq!(ran, [4, 6], "the new head is found in the same scan");
}

#[test]
fn set_priority_selects_the_queue_and_out_of_range_changes_nothing() {
    let mem = Mem::new(16, 1);
    let fifo = mem.fifo();
    fifo.set_priority(2, 15).unwrap();
    fifo.set_priority(3, 0).unwrap();
    assert_eq!(fifo.set_priority(3, 16), Err(Error::PriorityOutOfRange));
    assert_eq!(
        fifo.set_priority(3, u8::MAX),
        Err(Error::PriorityOutOfRange)
    );
    assert_eq!(fifo.set_priority(16, 0), Err(Error::PortOutOfRange));
    for p in [1, 2, 3] {
        fifo.set_pending(p, || 0).unwrap();
    }
    let cb = &mem.control[0];
    assert_eq!(cb.ready.load(SeqCst), (1 << 0) | (1 << 7) | (1 << 15));
    assert_eq!(cb.head[0].load(SeqCst), 3);
    assert_eq!(cb.head[7].load(SeqCst), 1);
    assert_eq!(cb.head[15].load(SeqCst), 2);
    assert_eq!(deliver(&fifo, 0), [3, 1, 2]);
}

#[test]
fn masked_raise_is_left_pending_and_the_unmask_links_it_on_its_target() {
    let mem = Mem::new(16, 2);
    let fifo = mem.fifo();
    fifo.mask(5).unwrap();
    assert!(fifo.is_masked(5).unwrap());
    assert_eq!(fifo.set_pending(5, || unreachable!()), Ok(Raised::Masked));
    assert_eq!(mem.w(5), PENDING | MASKED);
    assert!(fifo.is_pending(5).unwrap());
    assert_eq!(fifo.unmask(5, || 1), Ok(Some(1)));
    assert_eq!(mem.w(5), PENDING | LINKED);
    // A second unmask of a port still linked links nothing more (Xen's
    // unmask relinks a pending port only once it is off its queue).
    assert_eq!(fifo.unmask(5, || 1), Ok(None));
    assert_eq!(deliver(&fifo, 0), [] as [u32; 0]);
    assert_eq!(deliver(&fifo, 1), [5]);
    // Pending again while unmasked, but taken off its queue: an unmask of
    // the unmasked port links it (Xen's `evtchn_fifo_unmask` relinks
    // whenever the port is pending), where 2-level raises nothing.
    mem.words[5].fetch_or(PENDING, SeqCst);
    assert_eq!(fifo.unmask(5, || 0), Ok(Some(0)));
    assert_eq!(deliver(&fifo, 0), [5]);
}

#[test]
fn reraise_links_only_a_pending_unmasked_unlinked_port() {
    let mem = Mem::new(16, 2);
    let fifo = mem.fifo();
    assert_eq!(fifo.reraise(3, || unreachable!()), Ok(None), "not pending");
    fifo.set_pending(3, || 0).unwrap();
    assert_eq!(fifo.reraise(3, || unreachable!()), Ok(None), "linked");
    // The guest takes it off the queue without handling it.
    assert_eq!(scan_with(&fifo, 0, |_| Delivery::Skipped).unwrap(), [3]);
    assert_eq!(mem.w(3), PENDING);
    fifo.mask(3).unwrap();
    assert_eq!(fifo.reraise(3, || unreachable!()), Ok(None), "masked");
    mem.words[3].fetch_and(!MASKED, SeqCst);
    assert_eq!(fifo.reraise(3, || 1), Ok(Some(1)));
    assert_eq!(deliver(&fifo, 1), [3]);
}

/// A deliver side that finds an event bound elsewhere (`Foreign`) links it
/// on that vCPU's queue.
#[test]
fn a_foreign_event_taken_off_one_queue_is_linked_on_the_other_vcpu() {
    let mem = Mem::new(16, 2);
    let fifo = mem.fifo();
    fifo.set_pending(2, || 0).unwrap();
    fifo.set_pending(7, || 0).unwrap();
    let mut kicks = Vec::new();
    fifo.scan(
        0,
        &mut FifoCursor::default(),
        |p| {
            if p == 2 {
                Delivery::Foreign(1)
            } else {
                fifo.test_and_clear_pending(p).unwrap();
                Delivery::Handled
            }
        },
        |k| kicks.push(k),
    )
    .unwrap();
    assert_eq!(kicks, [1]);
    assert_eq!(mem.w(2), PENDING | LINKED);
    assert_eq!(deliver(&fifo, 1), [2]);
}

// ---------------------------------------------------------------------------
// The guest's conditional unmask and BUSY
// ---------------------------------------------------------------------------

#[test]
fn guest_unmask_is_done_unless_pending_then_the_hypercall_links_it() {
    let mem = Mem::new(16, 1);
    let fifo = mem.fifo();
    // Not masked: nothing to do, nothing changed.
    assert_eq!(fifo.try_unmask(4), Ok(GuestUnmask::Done));
    assert_eq!(mem.w(4), 0);
    // Masked, not pending: cleared by the guest alone.
    fifo.mask(4).unwrap();
    assert_eq!(fifo.try_unmask(4), Ok(GuestUnmask::Done));
    assert_eq!(mem.w(4), 0);
    // Masked and pending: the guest must not clear MASKED itself (the event
    // would then never be linked); it asks for the hypercall.
    fifo.mask(4).unwrap();
    assert_eq!(fifo.set_pending(4, || 0), Ok(Raised::Masked));
    assert_eq!(fifo.try_unmask(4), Ok(GuestUnmask::Hypercall));
    assert_eq!(mem.w(4), PENDING | MASKED, "guest_unmask changed the word");
    assert_eq!(deliver(&fifo, 0), [] as [u32; 0]);
    // The hypervisor's unmask links it.
    assert_eq!(fifo.unmask(4, || 0), Ok(Some(0)));
    assert_eq!(deliver(&fifo, 0), [4]);
    // Out of range.
    assert_eq!(fifo.try_unmask(16), Err(Error::PortOutOfRange));
    assert_eq!(fifo.try_unmask(u32::MAX), Err(Error::PortOutOfRange));
}

/// While the raise side holds BUSY on a word, the guest's conditional
/// unmask changes nothing; held past its bounded wait, the unmask is left
/// to the hypervisor (`Hypercall`, the word untouched), whose unmask is
/// always correct. A BUSY that goes within the wait lets it complete.
#[test]
fn guest_unmask_under_busy_changes_nothing_and_falls_back_to_the_hypercall() {
    let mem = Mem::new(8, 1);
    let fifo = mem.fifo();
    mem.words[3].store(MASKED | BUSY, SeqCst);
    assert_eq!(fifo.try_unmask(3), Ok(GuestUnmask::Hypercall));
    assert_eq!(mem.w(3), MASKED | BUSY, "the word changed under BUSY");
    // The hypervisor's unmask: not pending, so nothing is linked.
    assert_eq!(fifo.unmask(3, || 0), Ok(None));
    assert_eq!(mem.w(3), BUSY);
    // BUSY released at once by another thread: the guest completes itself
    // (or, if BUSY outlasts its wait there, leaves it to the hypercall).
    for pending_meanwhile in [false, true] {
        let mem: &'static Mem = Box::leak(Box::new(Mem::new(8, 1)));
        let v = if pending_meanwhile {
            MASKED | PENDING
        } else {
            MASKED
        };
        mem.words[3].store(v | BUSY, SeqCst);
        let t = thread::spawn(move || mem.words[3].fetch_and(!BUSY, SeqCst));
        let got = mem.fifo().try_unmask(3);
        t.join().unwrap();
        if pending_meanwhile {
            assert_eq!(got, Ok(GuestUnmask::Hypercall));
            assert_eq!(mem.w(3), PENDING | MASKED);
        } else if got == Ok(GuestUnmask::Done) {
            assert_eq!(mem.w(3), 0);
        } else {
            assert_eq!(got, Ok(GuestUnmask::Hypercall));
            assert_eq!(mem.w(3), MASKED);
        }
    }
}

/// docs/DESIGN.md §6, F13 on real threads: the raise side appends after
/// tails that a guest keeps rewriting (it flips a reserved bit of LINKED
/// words, honouring BUSY as the guest's conditional unmask does). The
/// raiser's first compare-exchange then fails and it takes BUSY; with BUSY
/// honoured it always gets through: every event is linked, in order, and no
/// BUSY is left behind.
#[test]
fn raise_side_busy_hold_gets_through_a_guest_that_keeps_writing_the_tail() {
    const N: u32 = 64;
    const RESERVED: u32 = 1 << 24;
    // Rounds until the guest has seen BUSY a few times (or a time budget).
    let (min_rounds, budget) = (2_000, Duration::from_secs(1));
    let mem = Mem::new(N as usize + 1, 1);
    let fifo = mem.fifo();
    let busy_seen = AtomicU64::new(0);
    let flips = AtomicU64::new(0);
    let started = AtomicBool::new(false);
    let stop = AtomicBool::new(false);
    // The tail the raiser links after next.
    let tail = AtomicU32::new(0);
    let rounds = thread::scope(|s| {
        // A failed check below stops the looping threads (or the scope hangs).
        let _stop = StopOnDrop([&stop]);
        s.spawn(|| {
            started.store(true, Release);
            while !stop.load(Relaxed) {
                // Hammer the word the raiser is about to link after.
                let w = &mem.words[tail.load(Relaxed) as usize];
                let v = w.load(Relaxed);
                if v & BUSY != 0 {
                    busy_seen.fetch_add(1, Relaxed);
                    continue;
                }
                if v & LINKED == 0 {
                    continue;
                }
                match w.compare_exchange(v, v ^ RESERVED, AcqRel, Relaxed) {
                    Ok(_) => {
                        flips.fetch_add(1, Relaxed);
                        // A raiser whose compare-exchange this flip broke
                        // takes BUSY now: watch for it for a moment.
                        for _ in 0..64 {
                            if w.load(Relaxed) & BUSY != 0 {
                                busy_seen.fetch_add(1, Relaxed);
                                break;
                            }
                        }
                    }
                    Err(now) if now & BUSY != 0 => {
                        busy_seen.fetch_add(1, Relaxed);
                    }
                    Err(_) => {}
                }
            }
        });
        while !started.load(Acquire) {
            thread::yield_now();
        }
        let t0 = Instant::now();
        let mut rounds = 0;
        while rounds < min_rounds || (busy_seen.load(Relaxed) < 10 && t0.elapsed() < budget) {
            let round = rounds;
            rounds += 1;
            for p in 1..=N {
                tail.store(p - 1, Relaxed);
                fifo.set_pending(p, || 0).unwrap();
            }
            let ran = deliver(&fifo, 0);
            assert_eq!(
                ran,
                (1..=N).collect::<Vec<_>>(),
                "round {round}: a link was lost"
            );
            for (p, w) in mem.words.iter().enumerate() {
                let v = w.load(SeqCst);
                let left = v & (BUSY | LINKED | PENDING | LINK_MASK);
                assert_eq!(left, 0, "round {round}: port {p}: {v:#x}");
            }
        }
        stop.store(true, Relaxed);
        rounds
    });
    println!(
        "busy: rounds={rounds} tail rewrites by the guest={} BUSY observed by the guest {} times",
        flips.load(Relaxed),
        busy_seen.load(Relaxed)
    );
    assert!(flips.load(Relaxed) > 0, "the guest never wrote a tail");
}

// ---------------------------------------------------------------------------
// Errors and shapes
// ---------------------------------------------------------------------------

#[test]
fn out_of_range_ports_and_vcpus_are_typed_errors_and_change_nothing() {
    let mem = Mem::new(16, 2);
    let fifo = mem.fifo();
    fifo.set_pending(1, || 1).unwrap();
    fifo.mask(2).unwrap();
    let before = mem.raw();
    for p in [16u32, 17, NR_CHANNELS, u32::MAX] {
        out_of_range!(fifo.set_pending(p, || unreachable!()));
        out_of_range!(fifo.unmask(p, || unreachable!()));
        out_of_range!(fifo.reraise(p, || unreachable!()));
        out_of_range!(fifo.clear_pending(p));
        out_of_range!(fifo.test_and_clear_pending(p));
        out_of_range!(fifo.is_pending(p));
        out_of_range!(fifo.mask(p));
        out_of_range!(fifo.is_masked(p));
        out_of_range!(fifo.set_priority(p, 0));
        out_of_range!(fifo.prepare(p));
        out_of_range!(fifo.try_unmask(p));
    }
    for v in [2u32, 3, u32::MAX] {
        assert_eq!(fifo.upcall_pending(v), Err(Error::VcpuOutOfRange));
        let r = scan_with(&fifo, v, |_| panic!("offered a port"));
        assert_eq!(r, Err(Error::VcpuOutOfRange));
    }
    assert_eq!(mem.raw(), before);
}

/// A target vCPU the memory lacks raises nothing and touches nothing but
/// the port's own word (the event stays pending; the control plane never
/// names such a vCPU).
#[test]
fn an_out_of_range_target_raises_nothing_elsewhere() {
    let mem = Mem::new(16, 2);
    let fifo = mem.fifo();
    let before = mem.raw();
    let r = fifo.set_pending(3, || 9).unwrap();
    assert_eq!(
        r,
        Raised::Notified {
            vcpu: 9,
            kick: false
        }
    );
    let after = mem.raw();
    assert_eq!(after.ready, before.ready);
    assert_eq!(after.heads, before.heads);
    assert_eq!(after.flags, before.flags);
    assert_eq!(mem.w(3) & !LINKED, PENDING);
}

#[test]
fn mismatched_and_empty_memory_shapes_are_bounded_by_the_shortest_array() {
    // Two control blocks, three vcpu_infos: two vCPUs.
    let words: Vec<EventWord> = (0..8).map(|_| AtomicU32::new(0)).collect();
    let control: Vec<ControlBlock> = (0..2).map(|_| ControlBlock::new()).collect();
    let vcpus: Vec<VcpuInfo> = (0..3).map(|_| VcpuInfo::new()).collect();
    let fifo = Fifo::new(BorrowedFifo {
        words: &words,
        control: &control,
        vcpus: &vcpus,
    });
    assert_eq!(fifo.nr_vcpus(), 2);
    assert_eq!(
        scan_with(&fifo, 2, |_| Delivery::Skipped),
        Err(Error::VcpuOutOfRange)
    );
    let r = fifo.set_pending(1, || 2).unwrap();
    assert_eq!(
        r,
        Raised::Notified {
            vcpu: 2,
            kick: false
        }
    );
    assert_eq!(vcpus[2].evtchn_upcall_pending.load(SeqCst), 0);
    // Nothing at all.
    let fifo = Fifo::new(BorrowedFifo {
        words: &[],
        control: &[],
        vcpus: &[],
    });
    assert_eq!((fifo.nr_ports(), fifo.nr_vcpus()), (0, 0));
    assert_eq!(fifo.set_pending(0, || 0), Err(Error::PortOutOfRange));
    assert_eq!(fifo.set_priority(0, 0), Err(Error::PortOutOfRange));
    assert_eq!(
        scan_with(&fifo, 0, |_| Delivery::Skipped),
        Err(Error::VcpuOutOfRange)
    );
}

/// `nr_vcpus()` is the shorter of the control-block and `vcpu_info`
/// arrays, and `scan` refuses a vCPU beyond it; `upcall_pending` must too.
#[test]
fn upcall_pending_refuses_a_vcpu_beyond_nr_vcpus() {
    let words: Vec<EventWord> = (0..8).map(|_| AtomicU32::new(0)).collect();
    let control: Vec<ControlBlock> = (0..2).map(|_| ControlBlock::new()).collect();
    let vcpus: Vec<VcpuInfo> = (0..3).map(|_| VcpuInfo::new()).collect();
    let fifo = Fifo::new(BorrowedFifo {
        words: &words,
        control: &control,
        vcpus: &vcpus,
    });
    assert_eq!(fifo.nr_vcpus(), 2);
    assert_eq!(fifo.upcall_pending(2), Err(Error::VcpuOutOfRange));
}

/// An event array longer than 2^17 words: the ABI has 2^17 ports
/// (`nr_ports`), and a port beyond them cannot be named by a LINK field.
/// Like the 2-level ABI for ports past 4096, every operation on such a port
/// must be `PortOutOfRange` and change nothing (C8) — not an `Ok` that
/// sets PENDING and links nothing.
#[test]
fn ports_beyond_2_pow_17_of_a_longer_array_are_port_out_of_range() {
    let n = NR_CHANNELS as usize + 2;
    let mem = Mem::new(n, 1);
    let fifo = mem.fifo();
    assert_eq!(fifo.nr_ports(), NR_CHANNELS);
    for p in [NR_CHANNELS, NR_CHANNELS + 1] {
        out_of_range!(fifo.set_pending(p, || 0));
        out_of_range!(fifo.mask(p));
        out_of_range!(fifo.unmask(p, || 0));
        out_of_range!(fifo.is_pending(p));
        out_of_range!(fifo.try_unmask(p));
        out_of_range!(fifo.prepare(p));
        assert_eq!(mem.w(p), 0, "port {p} written");
    }
}

#[test]
fn owned_fifo_raw_ops_need_the_page_mapped_first() {
    let fifo = Fifo::new(OwnedFifo::new(4096, 2));
    assert_eq!(fifo.nr_ports(), 4096);
    assert_eq!(fifo.set_pending(1500, || 0), Err(Error::PortOutOfRange));
    assert_eq!(fifo.memory().mapped_pages(), 0);
    fifo.prepare(1500).unwrap();
    assert_eq!(fifo.memory().mapped_pages(), 1);
    assert_eq!(fifo.prepare(4096), Err(Error::PortOutOfRange));
    let r = fifo.set_pending(1500, || 1).unwrap();
    assert_eq!(
        r,
        Raised::Notified {
            vcpu: 1,
            kick: true
        }
    );
    assert_eq!(deliver(&fifo, 1), [1500]);
    // Port 1024 shares the page of 1500; 1023 does not.
    assert!(fifo.set_pending(1024, || 1).is_ok());
    assert_eq!(fifo.set_pending(1023, || 1), Err(Error::PortOutOfRange));
}

// ---------------------------------------------------------------------------
// Hostile memory (C7)
// ---------------------------------------------------------------------------

/// Ports `0..RAISED` are the ones the hypervisor raises; `RAISED..PORTS`
/// are bystanders it never names; vCPU 2 is never a target.
const PORTS: u32 = 64;
const RAISED: u32 = 40;
const VCPUS: u32 = 3;

/// What one raise-side call may change: the raised port's word (the bits
/// of `own`), the LINK field (and BUSY) of at most one other, previously
/// raised, word (the private tail), and on the target vCPU only: `ready`
/// bits added, at most one head, the upcall flag set. Anything else is
/// corruption of another port's or vCPU's state.
#[track_caller]
fn assert_confined(
    before: &Raw,
    after: &Raw,
    port: u32,
    own: u32,
    target: Option<u32>,
    what: &str,
) {
    let mut others = 0;
    for (p, (&b, &a)) in before.words.iter().zip(&after.words).enumerate() {
        if p as u32 == port {
            assert_eq!((b ^ a) & !own, 0, "{what}: own word {b:#x} -> {a:#x}");
            continue;
        }
        if b == a {
            continue;
        }
        others += 1;
        assert!(
            (p as u32) < RAISED,
            "{what}: bystander port {p} written: {b:#x} -> {a:#x}"
        );
        assert_eq!(
            (b ^ a) & !(LINK_MASK | BUSY),
            0,
            "{what}: port {p}: more than its LINK changed: {b:#x} -> {a:#x}"
        );
    }
    assert!(others <= 1, "{what}: {others} other words written");
    for v in 0..VCPUS as usize {
        if Some(v as u32) != target {
            assert_eq!(after.ready[v], before.ready[v], "{what}: vCPU {v} ready");
            assert_eq!(after.heads[v], before.heads[v], "{what}: vCPU {v} heads");
            assert_eq!(after.flags[v], before.flags[v], "{what}: vCPU {v} flag");
            continue;
        }
        assert_eq!(
            after.ready[v] & before.ready[v],
            before.ready[v],
            "{what}: ready bits cleared"
        );
        let heads = (0..MAX_QUEUES)
            .filter(|&q| after.heads[v][q] != before.heads[v][q])
            .count();
        assert!(heads <= 1, "{what}: {heads} heads written");
        assert!(
            after.flags[v] == before.flags[v] || after.flags[v] == 1,
            "{what}: flag {} -> {}",
            before.flags[v],
            after.flags[v]
        );
    }
    assert_eq!(after.other, before.other, "{what}: 2-level fields written");
}

/// A scripted second domain: three sends and one scan, always the same
/// outcome, whatever happens to the first domain.
fn second_domain_round(mem: &Mem, fifo: &Fifo<BorrowedFifo<'_>>, round: u64) {
    let a = 1 + (round % 20) as u32;
    let (b, c) = (a + 20, a + 40);
    fifo.set_priority(c, 0).unwrap();
    for p in [a, b, c] {
        let r = fifo.set_pending(p, || 1).unwrap();
        assert!(
            matches!(r, Raised::Notified { vcpu: 1, .. }),
            "domain B: {r:?}"
        );
    }
    assert_eq!(deliver(fifo, 1), [c, a, b], "domain B round {round}");
    fifo.set_priority(c, PRIORITY_DEFAULT).unwrap();
    let raw = mem.raw();
    assert!(raw.words.iter().all(|&w| w == 0), "domain B left words");
    assert!(
        raw.ready.iter().all(|&r| r == 0),
        "domain B left ready bits"
    );
}

/// Random guest scribbles between random raise-side calls and deliver-side
/// scans: no panic, every call returns, every raise-side call confined to
/// what it may touch, every scan offers only ports of the array and ends,
/// and a second domain running alongside behaves exactly as alone.
#[test]
fn hostile_scribbles_between_calls_never_panic_hang_or_spill() {
    within(Duration::from_secs(120), || {
        for seed in 1..=4u64 {
            hostile_run(seed, 4_000);
        }
    });
}

fn hostile_run(seed: u64, steps: u64) {
    let mem = Mem::new(PORTS as usize, VCPUS as usize);
    let fifo = mem.fifo();
    let memb = Mem::new(64, 2);
    let fifob = memb.fifo();
    let mut rng = Rng::new(seed);
    let mut scans = 0;
    for step in 0..steps {
        // The guest scribbles.
        for _ in 0..rng.below(4) {
            match rng.below(8) {
                0..=2 => {
                    let p = rng.below(u64::from(PORTS)) as usize;
                    mem.words[p].store(hostile_word(&mut rng, PORTS), SeqCst);
                }
                3 => {
                    let v = rng.below(u64::from(VCPUS)) as usize;
                    let r = if rng.below(2) == 0 {
                        !0
                    } else {
                        rng.next_u64() as u32
                    };
                    mem.control[v].ready.store(r, SeqCst);
                }
                4 => {
                    let v = rng.below(u64::from(VCPUS)) as usize;
                    let q = rng.below(MAX_QUEUES as u64) as usize;
                    let h = match rng.below(3) {
                        0 => rng.below(u64::from(PORTS)) as u32,
                        1 => rng.next_u64() as u32,
                        _ => LINK_MASK,
                    };
                    mem.control[v].head[q].store(h, SeqCst);
                }
                5 => {
                    let v = rng.below(u64::from(VCPUS)) as usize;
                    mem.vcpus[v]
                        .evtchn_upcall_pending
                        .store(rng.next_u64() as u8, SeqCst);
                }
                6 => {
                    // A cycle of LINKED, pending words at a ready head.
                    let a = 1 + rng.below(u64::from(PORTS) - 1) as u32;
                    let b = 1 + rng.below(u64::from(PORTS) - 1) as u32;
                    mem.words[a as usize].store(PENDING | LINKED | b, SeqCst);
                    mem.words[b as usize].store(PENDING | LINKED | a, SeqCst);
                    let v = rng.below(u64::from(VCPUS)) as usize;
                    let q = rng.below(MAX_QUEUES as u64) as usize;
                    mem.control[v].head[q].store(a, SeqCst);
                    mem.control[v].ready.fetch_or(1 << q, SeqCst);
                }
                _ => {}
            }
        }
        // A raise-side call (sometimes on a port out of range, sometimes
        // naming a vCPU the memory lacks).
        let p = if rng.below(16) == 0 {
            PORTS + rng.below(8) as u32
        } else {
            rng.below(u64::from(RAISED)) as u32
        };
        let t = if rng.below(16) == 0 {
            7
        } else {
            rng.below(2) as u32
        };
        let before = mem.raw();
        let what = format!("seed {seed} step {step}");
        let (res, own, target) = match rng.below(7) {
            0 | 1 => (
                fifo.set_pending(p, || t).map(Raised::kick),
                PENDING | LINKED | LINK_MASK,
                Some(t),
            ),
            2 => (fifo.unmask(p, || t), MASKED | LINKED | LINK_MASK, Some(t)),
            3 => (fifo.reraise(p, || t), LINKED | LINK_MASK, Some(t)),
            4 => (fifo.mask(p).map(|_| None), MASKED, None),
            5 => (
                fifo.set_priority(p, rng.below(20) as u8).map(|()| None),
                0,
                None,
            ),
            _ => (fifo.test_and_clear_pending(p).map(|_| None), PENDING, None),
        };
        let after = mem.raw();
        if p >= PORTS {
            // (set_priority checks the priority first.)
            assert!(
                matches!(res, Err(Error::PortOutOfRange | Error::PriorityOutOfRange)),
                "{what}: {res:?}"
            );
            assert_eq!(after, before, "{what}: a failed call wrote");
        } else {
            match res {
                Ok(kick) => {
                    let edge = target.is_some_and(|t| {
                        t < VCPUS && before.flags[t as usize] == 0 && after.flags[t as usize] == 1
                    });
                    assert_eq!(
                        kick.is_some(),
                        edge,
                        "{what}: kick iff the flag went 0 -> 1"
                    );
                }
                Err(e) => assert_eq!(e, Error::PriorityOutOfRange, "{what}"),
            }
            assert_confined(&before, &after, p, own, target, &what);
        }
        // Sometimes the guest scans: it ends and offers only ports of the
        // array; events it forwards go to the other raised vCPU.
        if rng.below(4) == 0 {
            scans += 1;
            let v = rng.below(u64::from(VCPUS) + 1) as u32;
            let mut visits = 0u32;
            let r = scan_with(&fifo, v, |q| {
                assert!(q < PORTS, "{what}: scan offered port {q}");
                visits += 1;
                assert!(visits < 100_000, "{what}: the scan does not end");
                match rng.below(3) {
                    0 if q < RAISED && v < 2 => Delivery::Foreign(1 - v),
                    1 => {
                        let _ = fifo.test_and_clear_pending(q);
                        Delivery::Handled
                    }
                    _ => Delivery::Skipped,
                }
            });
            if v >= VCPUS {
                assert_eq!(r, Err(Error::VcpuOutOfRange));
            } else {
                r.unwrap();
            }
        }
        second_domain_round(&memb, &fifob, step);
    }
    assert!(scans > 0);
}

/// The raw form of the deliver-side hang (see `tests/fifo.rs`,
/// `upcall_returns_when_a_garbage_chain_leads_into_another_vcpus_queue`):
/// a guest cycle `1 -> 2 -> 1` at vCPU 0's head, both events found bound to
/// vCPU 1 (`Foreign`) and linked there; each re-link writes the LINK that
/// vCPU 0's scan follows next. The scan must end: one upcall does bounded
/// work.
#[test]
fn scan_ends_when_foreign_relinks_feed_a_garbage_cycle() {
    within(Duration::from_secs(10), || {
        let mem = Mem::new(8, 2);
        let fifo = mem.fifo();
        mem.words[1].store(PENDING | LINKED | 2, SeqCst);
        mem.words[2].store(PENDING | LINKED | 1, SeqCst);
        mem.control[0].head[7].store(1, SeqCst);
        mem.control[0].ready.store(1 << 7, SeqCst);
        let mut offered = 0u32;
        let mut kicks = Vec::new();
        fifo.scan(
            0,
            &mut FifoCursor::default(),
            |_| {
                offered += 1;
                assert!(
                    offered < 1_000_000,
                    "offered {offered} times: the scan does not end"
                );
                Delivery::Foreign(1)
            },
            |k| kicks.push(k),
        )
        .unwrap();
        // One upcall consumes at most twice the ports the memory holds
        // (at least 64); the rest is left for the next upcall.
        assert!(offered <= 64, "offered {offered} times");
    });
}

/// The named cases, each followed by raises, unmasks, reraises, priority
/// changes and scans on every port and vCPU: all ones everywhere; LINK
/// fields out of range; cycles in LINK chains; `ready` all ones with empty
/// heads; `head[]` garbage. Afterwards a guest that zeroes its memory gets
/// delivery back.
#[test]
fn named_hostile_states_never_panic_or_hang_and_a_reset_guest_recovers() {
    within(Duration::from_secs(60), || {
        type Scribble = fn(&Mem);
        let cases: [(&str, Scribble); 6] = [
            ("all ones", |m| {
                m.words.iter().for_each(|w| w.store(!0, SeqCst));
                for c in &m.control {
                    c.ready.store(!0, SeqCst);
                    c.head.iter().for_each(|h| h.store(!0, SeqCst));
                }
                m.vcpus
                    .iter()
                    .for_each(|v| v.evtchn_upcall_pending.store(!0, SeqCst));
            }),
            ("links out of range", |m| {
                for (i, w) in m.words.iter().enumerate() {
                    let link = [LINK_MASK, PORTS, PORTS + 1, LINK_MASK - 1][i % 4];
                    w.store(PENDING | LINKED | link, SeqCst);
                }
                for c in &m.control {
                    c.ready.store(!0, SeqCst);
                    for (q, h) in c.head.iter().enumerate() {
                        h.store(q as u32 + 1, SeqCst);
                    }
                }
            }),
            ("cycles", |m| {
                // 1 -> 2 -> ... -> 9 -> 1, and self-loops on 10..20.
                for p in 1..10u32 {
                    let next = if p == 9 { 1 } else { p + 1 };
                    m.words[p as usize].store(PENDING | LINKED | next, SeqCst);
                }
                for p in 10..20u32 {
                    m.words[p as usize].store(PENDING | LINKED | p, SeqCst);
                }
                for c in &m.control {
                    c.ready.store(!0, SeqCst);
                    for (q, h) in c.head.iter().enumerate() {
                        h.store(if q % 2 == 0 { 1 } else { 10 + q as u32 }, SeqCst);
                    }
                }
            }),
            ("ready all ones, heads empty", |m| {
                for c in &m.control {
                    c.ready.store(!0, SeqCst);
                    c.head.iter().for_each(|h| h.store(0, SeqCst));
                }
            }),
            ("head garbage", |m| {
                for (v, c) in m.control.iter().enumerate() {
                    c.ready.store(0xffff, SeqCst);
                    for (q, h) in c.head.iter().enumerate() {
                        let g = [u32::MAX, LINK_MASK, PORTS, 0, 5, NR_CHANNELS];
                        h.store(g[(q + v) % g.len()], SeqCst);
                    }
                }
            }),
            ("BUSY and LINKED stuck on every word", |m| {
                m.words
                    .iter()
                    .enumerate()
                    .for_each(|(i, w)| w.store(BUSY | LINKED | i as u32, SeqCst));
            }),
        ];
        for (name, scribble) in cases {
            let mem = Mem::new(PORTS as usize, VCPUS as usize);
            let fifo = mem.fifo();
            // Some honest history first, so that private tails exist.
            for p in 1..RAISED {
                fifo.set_pending(p, || p % 2).unwrap();
            }
            deliver(&fifo, 0);
            for p in 1..RAISED / 2 {
                fifo.set_pending(p, || p % 2).unwrap();
            }
            scribble(&mem);
            for p in 0..PORTS + 2 {
                for t in 0..VCPUS + 1 {
                    let _ = fifo.set_pending(p, || t);
                    let _ = fifo.reraise(p, || t);
                    let _ = fifo.mask(p);
                    let _ = fifo.unmask(p, || t);
                    let _ = fifo.set_priority(p, (p % 16) as u8);
                    let _ = fifo.is_pending(p);
                    // Not guest_unmask here: it is the guest's own call and
                    // waits for BUSY as Linux does.
                }
            }
            for v in 0..VCPUS + 1 {
                let mut visits = 0;
                let _ = scan_with(&fifo, v, |q| {
                    assert!(q < PORTS, "{name}: offered port {q}");
                    visits += 1;
                    assert!(visits < 100_000, "{name}: the scan does not end");
                    if q % 3 == 0 && v < 2 {
                        Delivery::Foreign(1 - v)
                    } else {
                        let _ = fifo.test_and_clear_pending(q);
                        Delivery::Handled
                    }
                });
            }
            // The guest resets its memory: the next events are delivered,
            // in order, although the raise side's private tails are stale.
            mem.words.iter().for_each(|w| w.store(0, SeqCst));
            for c in &mem.control {
                c.ready.store(0, SeqCst);
                c.head.iter().for_each(|h| h.store(0, SeqCst));
            }
            for p in 1..RAISED {
                fifo.set_priority(p, PRIORITY_DEFAULT).unwrap();
                fifo.set_pending(p, || 0).unwrap();
            }
            assert_eq!(
                deliver(&fifo, 0),
                (1..RAISED).collect::<Vec<_>>(),
                "{name}: no recovery after a reset"
            );
        }
    });
}

/// A guest thread writes garbage into its memory without pause while a
/// raiser thread runs raise-side calls on it, and another thread runs a
/// second domain: every raise-side call returns (the run finishes), and the
/// second domain's results are exact.
#[test]
fn concurrent_hostile_guest_cannot_stall_the_raise_side_or_touch_another_domain() {
    within(Duration::from_secs(120), || {
        let calls: u64 = if cfg!(debug_assertions) {
            1_000_000
        } else {
            10_000_000
        };
        let mem = Mem::new(PORTS as usize, VCPUS as usize);
        let memb = Mem::new(64, 2);
        let stop = AtomicBool::new(false);
        let t0 = Instant::now();
        let (scribbles, rounds_b) = thread::scope(|s| {
            // A failed check below stops the looping threads (or the scope hangs).
            let _stop = StopOnDrop([&stop]);
            let scribbler = s.spawn(|| {
                let mut rng = Rng::new(5);
                let mut n = 0u64;
                while !stop.load(Relaxed) {
                    let p = rng.below(u64::from(PORTS)) as usize;
                    mem.words[p].store(hostile_word(&mut rng, PORTS), Relaxed);
                    if rng.below(8) == 0 {
                        let v = rng.below(u64::from(VCPUS)) as usize;
                        mem.control[v].ready.store(rng.next_u64() as u32, Relaxed);
                        let q = rng.below(16) as usize;
                        mem.control[v].head[q].store(hostile_word(&mut rng, PORTS), Relaxed);
                    }
                    n += 1;
                }
                n
            });
            let domain_b = s.spawn(|| {
                let fifob = memb.fifo();
                let mut round = 0;
                while !stop.load(Relaxed) {
                    second_domain_round(&memb, &fifob, round);
                    round += 1;
                }
                round
            });
            let fifo = mem.fifo();
            let mut rng = Rng::new(6);
            for _ in 0..calls {
                let p = rng.below(u64::from(PORTS)) as u32;
                let t = rng.below(2) as u32;
                let r = match rng.below(5) {
                    0 | 1 => fifo.set_pending(p, || t).map(|_| ()),
                    2 => fifo.unmask(p, || t).map(|_| ()),
                    3 => fifo.reraise(p, || t).map(|_| ()),
                    _ => fifo.set_priority(p, rng.below(16) as u8),
                };
                r.unwrap();
                if rng.below(64) == 0 {
                    let _ = fifo.mask(p);
                }
            }
            stop.store(true, Relaxed);
            (scribbler.join().unwrap(), domain_b.join().unwrap())
        });
        println!(
            "hostile threads: {calls} raise-side calls, {scribbles} scribbles, \
             {rounds_b} domain-B rounds in {:.2} s",
            t0.elapsed().as_secs_f64()
        );
        assert!(rounds_b > 0 && scribbles > 0);
    });
}

/// The FIFO words of two domains over one `OwnedFifo` each never mix: a
/// control block of one domain is never written by the other's raises.
#[test]
fn two_owned_domains_are_independent() {
    let a = Fifo::new(OwnedFifo::new(64, 2));
    let b = Fifo::new(OwnedFifo::new(64, 2));
    a.prepare(1).unwrap();
    b.prepare(1).unwrap();
    // Garbage in domain A's control block and words.
    let ma = a.memory();
    ma.control_block(1).unwrap().ready.store(!0, SeqCst);
    ma.control_block(1)
        .unwrap()
        .head
        .iter()
        .for_each(|h| h.store(!0, SeqCst));
    for p in 1..64 {
        ma.event_word(p).unwrap().store(!0, SeqCst);
    }
    for p in 1..10 {
        let _ = a.set_pending(p, || 1);
        b.set_pending(p, || 1).unwrap();
        let _ = scan_with(&a, 1, |_| Delivery::Skipped);
    }
    assert_eq!(deliver(&b, 1), (1..10).collect::<Vec<_>>());
    let mb = b.memory();
    assert_eq!(mb.control_block(1).unwrap().ready.load(SeqCst), 0);
    assert_eq!(mb.control_block(0).unwrap().ready.load(SeqCst), 0);
}
