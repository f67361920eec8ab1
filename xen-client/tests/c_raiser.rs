//! Reverse: evtchn as the guest (`evtchn::Guest::on_xen`), a C hypervisor
//! (`c/raiser.c`, Xen's 2-level and FIFO raise logic with its own port
//! table) serving its hypercalls.
//!
//! Per ABI, for `XEN_CLIENT_SECS` (default 2 s): 4 vCPU threads run
//! `guest.vcpu(v)?.upcall(..)`, halting only after seeing no upcall pending
//! until kicked (by the raiser's `vcpu_kick`, or evtchn's own IPI); 2 raiser
//! threads call the C raiser's `EVTCHNOP_send` on random bound ports
//! (another domain's sends); guest-side threads call `set_affinity` (and,
//! on FIFO, `set_priority`), `mask`/`unmask`, and `close` then `bind` (the
//! raiser hands the number back). Then it quiesces (every port unmasked,
//! vCPUs drained) and counts:
//!
//! * lost: a send that returned `Ok` with no handler run of its port after
//!   it and no close of the port in between, or a port still pending after
//!   the drain;
//! * clobbered: a port the guest had masked (its `mask` returned, its
//!   `unmask` not called yet) whose mask bit in shared memory was clear,
//!   checked after every raiser operation (each send and each hypercall)
//!   and at the end: the raiser writes masks only in `EVTCHNOP_unmask`;
//! * on_masked: a handler run on a port the guest had masked, counting only
//!   ports whose mask returned and whose handler in flight at that moment
//!   (if any) had ended: evtchn's `mask` promises that no handler starts
//!   after it returns, until the unmask.
//!
//! All three must be 0. Negative controls: a raiser whose unmask raises
//! nothing (lost), one whose bind_vcpu clears the mask (clobbered), and a
//! test guest thread that records a mask without masking (on_masked).

#![cfg(not(loom))]

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering::*};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use evtchn::xen::fifo::{ControlBlock, EventWord, MASKED, PENDING};
use evtchn::xen::{SharedInfo, VcpuInfo};
use evtchn::{
    Bind, BorrowedFifo, Deliver, Error, Fifo, Guest, Hypercalls, MaxVcpus, OnXen, Port, State,
    TwoLevel,
};
use xen_client::harness::{
    ack_and_halt, assert_clean, drain, kick_until_acked, losses, negative_control, random_port,
    run_until, scenario_duration, send_loop, serial, Abi, Book, Control, Counter, Rng, StopOnDrop,
    Summary, Tally, Wake, NR_PORTS, PORTS, VCPUS,
};
use xen_client::xen_abi::{ENOENT, ENOSPC};
use xen_client::{CRaiser, EvtchnOp, RaiserStats, RaiserVariant};

/// The guest's record of a port's mask.
const UNMASKED: u8 = 0;
/// Its `mask` returned and no handler that started before is still running.
const MASKED_BY_GUEST: u8 = 2;

/// A bound port as the guest-side threads see it.
struct Slot {
    /// The handle; held across mask/unmask and close/bind.
    port: Mutex<Option<Port>>,
    /// The guest's record (`UNMASKED`, `MASKED_BY_GUEST`).
    masked: AtomicU8,
    /// Odd while the record and the mask bit may disagree legitimately
    /// (an unmask, a close and bind in progress).
    seq: AtomicU64,
}

/// The guest's hypercalls: into the C raiser, each followed by the mask
/// check.
#[derive(Clone, Copy)]
struct Calls<'a> {
    raiser: &'a CRaiser<'a>,
    after: &'a (dyn Fn() + Sync),
    unmasks: &'a AtomicU64,
}

fn error(errno: i32) -> Error {
    match -errno {
        ENOENT => Error::VcpuOutOfRange,
        ENOSPC => Error::NoFreePort,
        _ => Error::NotBound,
    }
}

impl Calls<'_> {
    fn op(&self, op: EvtchnOp) -> Result<u32, Error> {
        let r = self.raiser.event_channel_op(op);
        (self.after)();
        r.map_err(error)
    }
}

impl Hypercalls for Calls<'_> {
    fn bind(&self, vcpu: u32) -> Result<u32, Error> {
        self.op(EvtchnOp::BindIpi { vcpu })
    }
    fn close(&self, port: u32) -> Result<(), Error> {
        self.op(EvtchnOp::Close { port }).map(drop)
    }
    fn send(&self, port: u32) -> Result<(), Error> {
        self.op(EvtchnOp::Send { port }).map(drop)
    }
    fn unmask(&self, port: u32) -> Result<(), Error> {
        self.unmasks.fetch_add(1, Relaxed);
        self.op(EvtchnOp::Unmask { port }).map(drop)
    }
    fn bind_vcpu(&self, port: u32, vcpu: u32) -> Result<(), Error> {
        self.op(EvtchnOp::BindVcpu { port, vcpu }).map(drop)
    }
    fn set_priority(&self, port: u32, priority: u8) -> Result<(), Error> {
        let priority = u32::from(priority);
        self.op(EvtchnOp::SetPriority { port, priority }).map(drop)
    }
}

#[derive(Clone, Copy, Debug)]
struct Opts {
    raiser: RaiserVariant,
    /// Negative control: the mask thread records masks without masking.
    record_without_masking: bool,
    /// Whether ports move between vCPUs: the affinity thread rebinds them,
    /// and the closer binds them again on a random vCPU. Otherwise the
    /// affinity thread only changes FIFO priorities and the closer binds a
    /// port on the vCPU it had.
    moves: bool,
    duration: Duration,
    stop_when: Option<Counter>,
    seed: u64,
}

impl Opts {
    fn new(raiser: RaiserVariant, duration: Duration) -> Self {
        Opts {
            raiser,
            record_without_masking: false,
            moves: true,
            duration,
            stop_when: None,
            seed: 0xc0ffee,
        }
    }
}

#[derive(Debug, Default)]
struct Counts {
    t: Tally,
    set_affinity: u64,
    set_affinity_stale: u64,
    raiser: RaiserStats,
}

impl Summary for Counts {
    fn tally(&self) -> &Tally {
        &self.t
    }
    fn line(&self, what: &str) -> String {
        let moves = format!(
            "set_affinity={} (stale {})",
            self.set_affinity, self.set_affinity_stale
        );
        let tail = format!(
            " raiser: lost_queue_changes={} link_gave_up={}",
            self.raiser.lost_queue_changes, self.raiser.link_gave_up
        );
        self.t.line(what, &moves, &tail)
    }
}

/// What the scenario needs of the memory: a port's mask and pending bits.
struct Bits<'a> {
    masked: &'a (dyn Fn(u32) -> bool + Sync),
    pending: &'a (dyn Fn(u32) -> bool + Sync),
    fifo: bool,
}

#[allow(clippy::too_many_lines)]
/// evtchn's guest over the C raiser: deliver half `D`, the raiser's
/// hypercalls, IPIs into the test's wake-ups.
type CGuestOf<'a, D> = Guest<OnXen<D, Calls<'a>, &'a (dyn Fn(u32) + Sync)>>;

/// What the scenario shares with its setup.
#[derive(Clone, Copy)]
struct Shared<'s> {
    slots: &'s [Slot],
    clobber: &'s Clobber,
    unmasks: &'s AtomicU64,
    wake: &'s Wake,
    book: &'s Book,
}

fn run_reverse<D: Deliver>(
    opts: &Opts,
    raiser: &CRaiser<'_>,
    guest: &CGuestOf<'_, D>,
    shared: Shared<'_>,
    bits: &Bits<'_>,
) -> Counts {
    let Shared {
        slots,
        clobber,
        unmasks,
        wake,
        book,
    } = shared;
    let fifo = bits.fifo;
    let start = Instant::now();
    for p in 1..=PORTS {
        let port = guest.bind(Bind::Affinity(p % VCPUS)).expect("initial bind");
        assert_eq!(port.number(), p, "initial bind");
        *slots[p as usize].port.lock().unwrap() = Some(port);
    }

    let stop_ops = AtomicBool::new(false);
    let acks: Vec<AtomicU64> = (0..VCPUS).map(|_| AtomicU64::new(0)).collect();
    let sends = AtomicU64::new(0);
    let send_errors = AtomicU64::new(0);
    let set_affinity = AtomicU64::new(0);
    let set_affinity_stale = AtomicU64::new(0);
    let priorities = AtomicU64::new(0);
    let rebinds = AtomicU64::new(0);
    let mask_ops = AtomicU64::new(0);
    let lost_wakeups = AtomicU64::new(0);
    let on_masked = AtomicU64::new(0);
    let first_on_masked = Mutex::new(None);
    let check = || clobber.check(slots, bits);
    let handler = |p: Port| {
        let n = p.number();
        if slots
            .get(n as usize)
            .is_some_and(|s| s.masked.load(SeqCst) == MASKED_BY_GUEST)
        {
            on_masked.fetch_add(1, Relaxed);
            first_on_masked.lock().unwrap().get_or_insert(n);
        }
        book.handle(n);
    };
    let slot_port = |p: u32| slots[p as usize].port.lock().unwrap().expect("bound");

    let mut counts = std::thread::scope(|s| {
        // Whatever happens below, the threads stop before the scope ends.
        let _stop = StopOnDrop {
            ops: &stop_ops,
            wake,
        };
        let mut vcpus = Vec::new();
        for v in 0..VCPUS {
            let (acks, lost_wakeups, handler) = (&acks, &lost_wakeups, &handler);
            vcpus.push(s.spawn(move || {
                wake.register(v);
                let mut vcpu = guest.vcpu(v).expect("vCPU");
                while !wake.stopped() {
                    vcpu.upcall(handler).expect("upcall");
                    let pending = || vcpu.upcall_pending();
                    ack_and_halt(wake, v, &acks[v as usize], pending, lost_wakeups);
                }
            }));
        }

        let mut ops = Vec::new();
        for i in 0..2u64 {
            let (stop_ops, sends, send_errors, check) = (&stop_ops, &sends, &send_errors, &check);
            ops.push(s.spawn(move || {
                let send = |port| raiser.event_channel_op(EvtchnOp::Send { port }).is_ok();
                let seed = opts.seed ^ (0x100 + i);
                send_loop(seed, stop_ops, book, (sends, send_errors), send, check);
            }));
        }
        {
            let (stop_ops, set_affinity, set_affinity_stale, priorities, slot_port) = (
                &stop_ops,
                &set_affinity,
                &set_affinity_stale,
                &priorities,
                &slot_port,
            );
            ops.push(s.spawn(move || {
                let mut rng = Rng::new(opts.seed ^ 0x200);
                while !stop_ops.load(Relaxed) {
                    let port = slot_port(random_port(&mut rng));
                    let vcpu = rng.below(u64::from(VCPUS)) as u32;
                    if opts.moves {
                        match guest.set_affinity(port, vcpu) {
                            Ok(()) => set_affinity.fetch_add(1, Relaxed),
                            Err(Error::Stale | Error::NotBound) => {
                                set_affinity_stale.fetch_add(1, Relaxed)
                            }
                            Err(e) => panic!("set_affinity: {e:?}"),
                        };
                    }
                    if fifo && rng.chance(1, 8) {
                        let prio = u8::try_from(rng.below(16)).unwrap();
                        if guest.set_priority(port, prio).is_ok() {
                            priorities.fetch_add(1, Relaxed);
                        }
                    }
                    std::thread::yield_now();
                }
            }));
        }
        {
            let (stop_ops, mask_ops) = (&stop_ops, &mask_ops);
            ops.push(s.spawn(move || {
                let mut rng = Rng::new(opts.seed ^ 0x400);
                while !stop_ops.load(Relaxed) {
                    let p = random_port(&mut rng);
                    let slot = &slots[p as usize];
                    let held = slot.port.lock().unwrap();
                    let port = held.expect("bound");
                    if slot.masked.load(SeqCst) == MASKED_BY_GUEST {
                        slot.seq.fetch_add(1, SeqCst);
                        slot.masked.store(UNMASKED, SeqCst);
                        if !opts.record_without_masking {
                            guest.unmask(port).expect("unmask");
                        }
                        slot.seq.fetch_add(1, SeqCst);
                        mask_ops.fetch_add(1, Relaxed);
                    } else if rng.chance(3, 10) {
                        if !opts.record_without_masking {
                            guest.mask(port).expect("mask");
                            // A handler that started before the mask
                            // returned may still run: wait for it to end.
                            while guest.status(p).expect("status").in_flight {
                                std::thread::yield_now();
                            }
                        }
                        slot.masked.store(MASKED_BY_GUEST, SeqCst);
                        mask_ops.fetch_add(1, Relaxed);
                    }
                    drop(held);
                    std::thread::sleep(Duration::from_micros(20));
                }
            }));
        }
        {
            let (stop_ops, rebinds, check) = (&stop_ops, &rebinds, &check);
            ops.push(s.spawn(move || {
                let mut rng = Rng::new(opts.seed ^ 0x300);
                while !stop_ops.load(Relaxed) {
                    let p = random_port(&mut rng);
                    let slot = &slots[p as usize];
                    {
                        let mut port = slot.port.lock().unwrap();
                        let _g = book.lock(p);
                        slot.seq.fetch_add(1, SeqCst);
                        slot.masked.store(UNMASKED, SeqCst);
                        guest.close(port.expect("bound")).expect("close");
                        book.closed(p);
                        // A handler in flight defers the close (the port is
                        // Closing until it ends, and the hypervisor's close
                        // comes after): wait for both, so that the number
                        // comes back.
                        let t = Instant::now();
                        while guest.status(p).expect("status").state != State::Free
                            || raiser.port_bound(p)
                        {
                            assert!(
                                t.elapsed() < Duration::from_secs(10),
                                "port {p} stayed closing"
                            );
                            std::thread::yield_now();
                        }
                        let vcpu = if opts.moves {
                            rng.below(u64::from(VCPUS)) as u32
                        } else {
                            p % VCPUS
                        };
                        let again = guest.bind(Bind::Affinity(vcpu)).expect("bind");
                        assert_eq!(again.number(), p, "bind after closing port {p}");
                        *port = Some(again);
                        slot.seq.fetch_add(1, SeqCst);
                    }
                    rebinds.fetch_add(1, Relaxed);
                    check();
                    std::thread::sleep(Duration::from_micros(200));
                }
            }));
        }

        run_until(start, opts.duration, opts.stop_when, |c| match c {
            Counter::Lost => 0,
            Counter::Clobbered => clobber.count.load(Relaxed),
            Counter::OnMasked => on_masked.load(Relaxed),
        });

        // Quiesce: every operation stops, the guest unmasks everything, the
        // vCPUs drain.
        stop_ops.store(true, SeqCst);
        for h in ops {
            h.join().expect("operation thread");
        }
        check();
        for p in 1..=PORTS {
            let slot = &slots[p as usize];
            let port = slot.port.lock().unwrap();
            if slot.masked.load(SeqCst) == MASKED_BY_GUEST {
                slot.seq.fetch_add(1, SeqCst);
                slot.masked.store(UNMASKED, SeqCst);
                if !opts.record_without_masking {
                    guest.unmask(port.expect("bound")).expect("final unmask");
                }
                slot.seq.fetch_add(1, SeqCst);
            }
        }
        // Every vCPU runs one more upcall after the unmasks.
        kick_until_acked(wake, &acks, 1);
        let drained = drain(
            wake,
            VCPUS,
            |v| guest.upcall_pending(v).unwrap_or(false),
            book,
        );
        assert!(drained, "the vCPUs did not drain within 10 s");
        let t = losses(book, bits.pending);
        wake.stop();
        for h in vcpus {
            h.join().expect("vCPU thread");
        }
        Counts {
            t,
            ..Counts::default()
        }
    });

    counts.t.sends = sends.load(SeqCst);
    counts.t.send_errors = send_errors.load(SeqCst);
    counts.t.handled = book.handled.load(SeqCst);
    counts.set_affinity = set_affinity.load(SeqCst);
    counts.set_affinity_stale = set_affinity_stale.load(SeqCst);
    counts.t.priorities = priorities.load(SeqCst);
    counts.t.rebinds = rebinds.load(SeqCst);
    counts.t.mask_ops = mask_ops.load(SeqCst);
    counts.t.unmask_hypercalls = unmasks.load(SeqCst);
    counts.t.kicks = wake.total_kicks();
    counts.t.clobbered = clobber.count.load(SeqCst);
    counts.t.first_clobbered = *clobber.first.lock().unwrap();
    counts.t.on_masked = on_masked.load(SeqCst);
    counts.t.first_on_masked = *first_on_masked.lock().unwrap();
    counts.t.lost_wakeups = lost_wakeups.load(SeqCst);
    counts.raiser = raiser.stats();
    counts.t.secs = start.elapsed().as_secs_f64();
    counts
}

/// Finds ports the guest has masked whose mask bit is clear.
#[derive(Default)]
struct Clobber {
    count: AtomicU64,
    first: Mutex<Option<u32>>,
}

impl Clobber {
    fn check(&self, slots: &[Slot], bits: &Bits<'_>) {
        for (p, slot) in slots.iter().enumerate().skip(1) {
            let s1 = slot.seq.load(SeqCst);
            if s1 % 2 == 1 || slot.masked.load(SeqCst) != MASKED_BY_GUEST {
                continue;
            }
            let p = u32::try_from(p).unwrap();
            let bit = (bits.masked)(p);
            if !bit && slot.seq.load(SeqCst) == s1 && slot.masked.load(SeqCst) == MASKED_BY_GUEST {
                self.count.fetch_add(1, Relaxed);
                self.first.lock().unwrap().get_or_insert(p);
            }
        }
    }
}

fn reverse(abi: Abi, opts: &Opts) -> Counts {
    let _serial = serial();
    let wake = Wake::new(VCPUS as usize);
    let kick = |v: u32| wake.kick(v);
    let ipi: &(dyn Fn(u32) + Sync) = &kick;
    let book = Book::new(NR_PORTS);
    let slots: Vec<Slot> = (0..NR_PORTS)
        .map(|_| Slot {
            port: Mutex::new(None),
            masked: AtomicU8::new(UNMASKED),
            seq: AtomicU64::new(0),
        })
        .collect();
    let clobber = Clobber::default();
    let unmasks = AtomicU64::new(0);
    let shared = Shared {
        slots: &slots,
        clobber: &clobber,
        unmasks: &unmasks,
        wake: &wake,
        book: &book,
    };
    match abi {
        Abi::TwoLevel => {
            let page = Box::new(SharedInfo::new());
            let masked =
                |p: u32| page.evtchn_mask[(p / 64) as usize].load(SeqCst) & (1u64 << (p % 64)) != 0;
            let pending = |p: u32| {
                page.evtchn_pending[(p / 64) as usize].load(SeqCst) & (1u64 << (p % 64)) != 0
            };
            let bits = Bits {
                masked: &masked,
                pending: &pending,
                fifo: false,
            };
            let raiser = CRaiser::new_2l(opts.raiser, &page, VCPUS, NR_PORTS, &kick);
            let after = || clobber.check(&slots, &bits);
            let calls = Calls {
                raiser: &raiser,
                after: &after,
                unmasks: &unmasks,
            };
            let guest = Guest::on_xen(
                TwoLevel::new(MaxVcpus::new(&*page, VCPUS as usize)),
                calls,
                ipi,
            );
            run_reverse(opts, &raiser, &guest, shared, &bits)
        }
        Abi::Fifo => {
            let words: Vec<EventWord> = (0..NR_PORTS).map(|_| EventWord::new(0)).collect();
            let control: Vec<ControlBlock> = (0..VCPUS).map(|_| ControlBlock::new()).collect();
            let vcpus: Vec<VcpuInfo> = (0..VCPUS).map(|_| VcpuInfo::new()).collect();
            let masked = |p: u32| words[p as usize].load(SeqCst) & MASKED != 0;
            let pending = |p: u32| words[p as usize].load(SeqCst) & PENDING != 0;
            let bits = Bits {
                masked: &masked,
                pending: &pending,
                fifo: true,
            };
            let raiser = CRaiser::new_fifo(opts.raiser, &words, &control, &vcpus, &kick);
            let after = || clobber.check(&slots, &bits);
            let calls = Calls {
                raiser: &raiser,
                after: &after,
                unmasks: &unmasks,
            };
            let mem = BorrowedFifo {
                words: &words,
                control: &control,
                vcpus: &vcpus,
            };
            let guest = Guest::on_xen(Fifo::new(mem), calls, ipi);
            run_reverse(opts, &raiser, &guest, shared, &bits)
        }
    }
}

#[test]
fn reverse_two_level() {
    let c = reverse(
        Abi::TwoLevel,
        &Opts::new(RaiserVariant::Xen, scenario_duration()),
    );
    assert_clean("reverse 2-level", &c);
}

#[test]
fn reverse_fifo() {
    let c = reverse(
        Abi::Fifo,
        &Opts::new(RaiserVariant::Xen, scenario_duration()),
    );
    assert_clean("reverse FIFO", &c);
}

/// FIFO with no port moving between vCPUs (so no event is found
/// `Foreign`): sends, masks, priority changes, close and bind on the same
/// vCPU.
#[test]
fn reverse_fifo_without_vcpu_moves() {
    let mut opts = Opts::new(RaiserVariant::Xen, scenario_duration());
    opts.moves = false;
    let c = reverse(Abi::Fifo, &opts);
    assert_clean("reverse FIFO without vCPU moves", &c);
}

/// A negative control of the reverse direction: a broken C raiser or test
/// guest, and what the summary line calls it.
struct Negative {
    raiser: RaiserVariant,
    record_without_masking: bool,
    control: Control,
}

/// The reverse negative controls, one per counter.
const NEGATIVES: [Negative; 3] = [
    Negative {
        raiser: RaiserVariant::BrokenUnmask,
        record_without_masking: false,
        control: Control {
            label: "raiser unmask raises nothing",
            counter: Counter::Lost,
            still_zero: None,
            duration: Duration::from_millis(500),
        },
    },
    Negative {
        raiser: RaiserVariant::UnmaskingBindVcpu,
        record_without_masking: false,
        control: Control {
            label: "raiser bind_vcpu unmasks",
            counter: Counter::Clobbered,
            still_zero: Some(Counter::OnMasked),
            duration: Duration::from_secs(5),
        },
    },
    Negative {
        raiser: RaiserVariant::Xen,
        record_without_masking: true,
        control: Control {
            label: "mask recorded, not made",
            counter: Counter::OnMasked,
            still_zero: None,
            duration: Duration::from_secs(5),
        },
    },
];

/// Runs negative control `n` of [`NEGATIVES`] on both ABIs.
fn negative(n: &Negative) {
    let mut opts = Opts::new(n.raiser, n.control.duration);
    opts.record_without_masking = n.record_without_masking;
    opts.stop_when = n.control.stop_when();
    negative_control("reverse", &n.control, |abi| reverse(abi, &opts));
}

/// Negative control: a raiser whose unmask raises nothing loses the events
/// that arrived while the port was masked.
#[test]
fn negative_lost_with_broken_raiser_unmask() {
    negative(&NEGATIVES[0]);
}

/// Negative control: a raiser whose bind_vcpu clears the mask clobbers the
/// guest's masks (evtchn's guest still runs no handler on them: its own
/// record of the mask decides).
#[test]
fn negative_clobbered_with_unmasking_bind_vcpu() {
    negative(&NEGATIVES[1]);
}

/// Negative control for the on_masked counter itself: a test guest that
/// records ports as masked without masking them sees their handlers run.
#[test]
fn negative_on_masked_with_mask_not_made() {
    negative(&NEGATIVES[2]);
}

/// A port rebound while its event is still queued on its old vCPU is found
/// there by the old vCPU's upcall. A guest that linked it onto the new
/// vCPU's queue itself would overwrite the head the hypervisor wrote (the
/// queue tails are the hypervisor's) and lose A and everything after it;
/// the guest runs it where it found it instead, as Linux does.
#[test]
fn fifo_event_queued_before_a_move_runs_where_found() {
    let _serial = serial();
    let words: Vec<EventWord> = (0..NR_PORTS).map(|_| EventWord::new(0)).collect();
    let control: Vec<ControlBlock> = (0..VCPUS).map(|_| ControlBlock::new()).collect();
    let vcpus: Vec<VcpuInfo> = (0..VCPUS).map(|_| VcpuInfo::new()).collect();
    let kick = |_v: u32| {};
    let ipi: &(dyn Fn(u32) + Sync) = &kick;
    let raiser = CRaiser::new_fifo(RaiserVariant::Xen, &words, &control, &vcpus, &kick);
    let nothing = || {};
    let unmasks = AtomicU64::new(0);
    let calls = Calls {
        raiser: &raiser,
        after: &nothing,
        unmasks: &unmasks,
    };
    let mem = BorrowedFifo {
        words: &words,
        control: &control,
        vcpus: &vcpus,
    };
    let guest = Guest::on_xen(Fifo::new(mem), calls, ipi);
    let send = |p: Port| {
        raiser
            .event_channel_op(EvtchnOp::Send { port: p.number() })
            .unwrap()
    };

    let a = guest.bind(Bind::Affinity(1)).unwrap();
    let b = guest.bind(Bind::Affinity(0)).unwrap();
    // B is raised on vCPU 0 and stays queued there.
    send(b);
    // The guest moves B to vCPU 1: mask, EVTCHNOP_bind_vcpu, unmask (B is
    // pending: EVTCHNOP_unmask, which finds B still LINKED and leaves it).
    guest.set_affinity(b, 1).unwrap();
    // A is raised on vCPU 1: the hypervisor's queue (vCPU 1, priority 7) is
    // A, and its tail is A.
    send(a);
    let head = |v: usize| control[v].head[7].load(SeqCst);
    println!(
        "before vCPU 0's upcall: vCPU 1 head {} (A = {})",
        head(1),
        a.number()
    );
    // vCPU 0 finds B, bound to vCPU 1 now, on its queue and runs it there;
    // vCPU 1's queue (A) is left as the hypervisor wrote it.
    let mut seen = Vec::new();
    guest
        .vcpu(0)
        .unwrap()
        .upcall(|p| seen.push(p.number()))
        .unwrap();
    println!(
        "after vCPU 0's upcall: vCPU 1 head {} (B = {})",
        head(1),
        b.number()
    );
    guest
        .vcpu(1)
        .unwrap()
        .upcall(|p| seen.push(p.number()))
        .unwrap();
    guest
        .vcpu(1)
        .unwrap()
        .upcall(|p| seen.push(p.number()))
        .unwrap();
    println!(
        "handled: {seen:?}; A pending: {}",
        words[a.number() as usize].load(SeqCst) & PENDING != 0
    );
    assert!(
        seen.contains(&a.number()),
        "A (port {}) was lost: handled {seen:?}",
        a.number()
    );
    assert!(
        seen.contains(&b.number()),
        "B (port {}) was lost: handled {seen:?}",
        b.number()
    );
}
