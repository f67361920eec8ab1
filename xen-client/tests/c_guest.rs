//! Forward: evtchn as the hypervisor (`evtchn::Host`), a C guest
//! (`c/guest.c`, Linux's upcall loops and its own mask and unmask) making
//! its hypercalls into it.
//!
//! Per ABI, for `XEN_CLIENT_SECS` (default 2 s): 4 vCPU threads run the C
//! guest's upcall loop, halting only after seeing no upcall pending until
//! kicked through `Notify`, and mask and unmask ports at random between
//! upcalls (the guest's own mask, Linux's unmask); 2 sender threads call
//! `host.send` on random bound ports; one thread calls `host.bind_vcpu`
//! (and, on FIFO, `host.set_priority`) on random ports; one closes a random
//! port and binds it again (`host.bind` gives the number back). Then it
//! quiesces (senders stopped, every port unmasked by the guest, vCPUs
//! drained) and counts:
//!
//! * lost: a send that returned `Ok` and was not followed by a close of its
//!   port before a handler of that port ran after it (per-port epochs), or
//!   a port still pending after the drain;
//! * clobbered: a port the guest had masked whose mask bit was clear, found
//!   by the guest's own check after every hypervisor operation and at the
//!   end;
//! * on_masked: a handler run on a port the guest had masked.
//!
//! All three must be 0. The negative controls show each can fail: a C
//! guest whose unmask never asks Xen (lost), one whose delivery ignores the
//! mask (on_masked), and a hypervisor that unmasks on rebind (clobbered).
//! The same scenario over the C raiser (`c/raiser.c`) instead of evtchn is
//! the baseline: the two C sides agree with each other.

#![cfg(not(loom))]

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::*};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use evtchn::xen::fifo::{ControlBlock, EventWord, PENDING};
use evtchn::xen::{SharedInfo, VcpuInfo};
use evtchn::{BorrowedFifo, Error, Fifo, Host, MaxVcpus, Notify, Raise, TwoLevel};
use xen_client::harness::{
    ack_and_halt, assert_clean, drain, kick_until_acked, losses, negative_control, random_port,
    run_until, scenario_duration, send_loop, serial, Abi, Book, Control, Counter, Rng, StopOnDrop,
    Summary, Tally, Wake, NR_PORTS, PORTS, VCPUS,
};
use xen_client::xen_abi::{EINVAL, ENOENT, ENOSPC};
use xen_client::{CGuest, CRaiser, EvtchnOp, GuestVariant, Hypervisor, RaiserVariant};

// ---- the hypervisor under the C guest ---------------------------------------

/// The hypervisor operations the test drives: its own threads call them
/// directly (as other domains and the toolstack would), and the C guest's
/// hypercalls reach them through [`Dispatch`].
trait Backend: Sync {
    fn bind(&self, vcpu: u32) -> Result<u32, i32>;
    fn send(&self, port: u32) -> Result<(), i32>;
    fn unmask(&self, port: u32) -> Result<(), i32>;
    fn bind_vcpu(&self, port: u32, vcpu: u32) -> Result<(), i32>;
    fn close(&self, port: u32) -> Result<(), i32>;
    fn set_priority(&self, port: u32, priority: u8) -> Result<(), i32>;
}

fn errno(e: Error) -> i32 {
    match e {
        Error::VcpuOutOfRange => -ENOENT,
        Error::NoFreePort => -ENOSPC,
        _ => -EINVAL,
    }
}

impl<R: Raise, N: Notify> Backend for Host<R, N> {
    fn bind(&self, vcpu: u32) -> Result<u32, i32> {
        Host::bind(self, vcpu).map_err(errno)
    }
    fn send(&self, port: u32) -> Result<(), i32> {
        Host::send(self, port).map_err(errno)
    }
    fn unmask(&self, port: u32) -> Result<(), i32> {
        Host::unmask(self, port).map_err(errno)
    }
    fn bind_vcpu(&self, port: u32, vcpu: u32) -> Result<(), i32> {
        Host::bind_vcpu(self, port, vcpu).map_err(errno)
    }
    fn close(&self, port: u32) -> Result<(), i32> {
        Host::close(self, port).map_err(errno)
    }
    fn set_priority(&self, port: u32, priority: u8) -> Result<(), i32> {
        Host::set_priority(self, port, priority).map_err(errno)
    }
}

impl Backend for CRaiser<'_> {
    fn bind(&self, vcpu: u32) -> Result<u32, i32> {
        self.event_channel_op(EvtchnOp::BindIpi { vcpu })
    }
    fn send(&self, port: u32) -> Result<(), i32> {
        self.event_channel_op(EvtchnOp::Send { port }).map(drop)
    }
    fn unmask(&self, port: u32) -> Result<(), i32> {
        self.event_channel_op(EvtchnOp::Unmask { port }).map(drop)
    }
    fn bind_vcpu(&self, port: u32, vcpu: u32) -> Result<(), i32> {
        self.event_channel_op(EvtchnOp::BindVcpu { port, vcpu })
            .map(drop)
    }
    fn close(&self, port: u32) -> Result<(), i32> {
        self.event_channel_op(EvtchnOp::Close { port }).map(drop)
    }
    fn set_priority(&self, port: u32, priority: u8) -> Result<(), i32> {
        let priority = u32::from(priority);
        self.event_channel_op(EvtchnOp::SetPriority { port, priority })
            .map(drop)
    }
}

/// The C guest's `HYPERVISOR_event_channel_op`: a match onto the backend.
struct Dispatch<'a, B> {
    backend: &'a B,
    unmasks: AtomicU64,
}

impl<'a, B: Backend> Dispatch<'a, B> {
    fn new(backend: &'a B) -> Self {
        Dispatch {
            backend,
            unmasks: AtomicU64::new(0),
        }
    }
}

impl<B: Backend> Hypervisor for Dispatch<'_, B> {
    fn event_channel_op(&self, op: EvtchnOp) -> Result<u32, i32> {
        let b = self.backend;
        match op {
            EvtchnOp::BindIpi { vcpu } => b.bind(vcpu),
            EvtchnOp::Close { port } => b.close(port).map(|()| 0),
            EvtchnOp::Send { port } => b.send(port).map(|()| 0),
            EvtchnOp::Unmask { port } => {
                self.unmasks.fetch_add(1, Relaxed);
                b.unmask(port).map(|()| 0)
            }
            EvtchnOp::BindVcpu { port, vcpu } => b.bind_vcpu(port, vcpu).map(|()| 0),
            EvtchnOp::SetPriority { port, priority } => {
                let p = u8::try_from(priority).map_err(|_| -EINVAL)?;
                b.set_priority(port, p).map(|()| 0)
            }
        }
    }
}

// ---- the scenario ----------------------------------------------------------

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum BackendKind {
    Evtchn,
    CRaiser,
}

#[derive(Clone, Copy, Debug)]
struct Opts {
    guest: GuestVariant,
    /// Negative control: the hypervisor unmasks every port it rebinds.
    host_unmasks_on_rebind: bool,
    duration: Duration,
    stop_when: Option<Counter>,
    seed: u64,
}

impl Opts {
    fn new(guest: GuestVariant, duration: Duration) -> Self {
        Opts {
            guest,
            host_unmasks_on_rebind: false,
            duration,
            stop_when: None,
            seed: 0x5eed,
        }
    }
}

#[derive(Debug, Default)]
struct Counts {
    t: Tally,
    bind_vcpu: u64,
    bind_vcpu_closed: u64,
}

impl Summary for Counts {
    fn tally(&self) -> &Tally {
        &self.t
    }
    fn line(&self, what: &str) -> String {
        let moves = format!(
            "bind_vcpu={} (on a closed port {})",
            self.bind_vcpu, self.bind_vcpu_closed
        );
        self.t.line(what, &moves, "")
    }
}

/// The scenario over a backend and a C guest already set up; `pending`
/// reads a port's pending bit.
/// What the scenario shares with its setup: the vCPUs' wake-ups, the
/// bookkeeping, a port's pending bit, and whether the ABI is FIFO.
#[derive(Clone, Copy)]
struct Shared<'s> {
    wake: &'s Wake,
    book: &'s Book,
    pending: &'s (dyn Fn(u32) -> bool + Sync),
    fifo: bool,
}

fn run_forward<B: Backend>(
    opts: &Opts,
    backend: &B,
    guest: &CGuest<'_>,
    dispatch: &Dispatch<'_, B>,
    shared: Shared<'_>,
) -> Counts {
    let Shared {
        wake,
        book,
        pending,
        fifo,
    } = shared;
    let start = Instant::now();
    for p in 1..=PORTS {
        assert_eq!(backend.bind(p % VCPUS), Ok(p), "initial bind of port {p}");
    }

    let stop_ops = AtomicBool::new(false);
    let mask_ops_on = AtomicBool::new(true);
    let acks: Vec<AtomicU64> = (0..VCPUS).map(|_| AtomicU64::new(0)).collect();
    let sends = AtomicU64::new(0);
    let send_errors = AtomicU64::new(0);
    let bind_vcpu = AtomicU64::new(0);
    let bind_vcpu_closed = AtomicU64::new(0);
    let priorities = AtomicU64::new(0);
    let rebinds = AtomicU64::new(0);
    let mask_ops = AtomicU64::new(0);
    let lost_wakeups = AtomicU64::new(0);
    let clobbered = AtomicU64::new(0);
    let first_clobbered = Mutex::new(None);
    let check = || {
        let (n, first) = guest.check_masks();
        if n > 0 {
            clobbered.fetch_add(u64::from(n), Relaxed);
            first_clobbered
                .lock()
                .unwrap()
                .get_or_insert(first.unwrap_or(0));
        }
    };

    let mut counts = std::thread::scope(|s| {
        // Whatever happens below, the threads stop before the scope ends.
        let _stop = StopOnDrop {
            ops: &stop_ops,
            wake,
        };
        let mut vcpus = Vec::new();
        for v in 0..VCPUS {
            let (acks, mask_ops_on, mask_ops, lost_wakeups) =
                (&acks, &mask_ops_on, &mask_ops, &lost_wakeups);
            vcpus.push(s.spawn(move || {
                wake.register(v);
                let mut rng = Rng::new(opts.seed ^ u64::from(v) << 8);
                while !wake.stopped() {
                    guest.upcall(v).expect("one upcall per vCPU thread");
                    if mask_ops_on.load(SeqCst) && rng.chance(1, 2) {
                        let p = random_port(&mut rng);
                        if guest.masked_by_guest(p) {
                            guest.unmask(p).expect("guest unmask");
                            mask_ops.fetch_add(1, Relaxed);
                        } else if rng.chance(3, 10) {
                            guest.mask(p).expect("guest mask");
                            mask_ops.fetch_add(1, Relaxed);
                        }
                    }
                    let pending = || guest.upcall_pending(v);
                    ack_and_halt(wake, v, &acks[v as usize], pending, lost_wakeups);
                }
            }));
        }

        let mut ops = Vec::new();
        for i in 0..2u64 {
            let (stop_ops, sends, send_errors, check) = (&stop_ops, &sends, &send_errors, &check);
            ops.push(s.spawn(move || {
                let send = |p| backend.send(p).is_ok();
                let seed = opts.seed ^ (0x100 + i);
                send_loop(seed, stop_ops, book, (sends, send_errors), send, check);
            }));
        }
        {
            let (stop_ops, bind_vcpu, bind_vcpu_closed, priorities, check) = (
                &stop_ops,
                &bind_vcpu,
                &bind_vcpu_closed,
                &priorities,
                &check,
            );
            ops.push(s.spawn(move || {
                let mut rng = Rng::new(opts.seed ^ 0x200);
                while !stop_ops.load(Relaxed) {
                    let p = random_port(&mut rng);
                    match backend.bind_vcpu(p, rng.below(u64::from(VCPUS)) as u32) {
                        Ok(()) => bind_vcpu.fetch_add(1, Relaxed),
                        Err(_) => bind_vcpu_closed.fetch_add(1, Relaxed),
                    };
                    if opts.host_unmasks_on_rebind {
                        let _ = backend.unmask(p);
                    }
                    check();
                    if fifo && rng.chance(1, 8) {
                        let prio = u8::try_from(rng.below(16)).unwrap();
                        if backend.set_priority(p, prio).is_ok() {
                            priorities.fetch_add(1, Relaxed);
                        }
                        check();
                    }
                    std::thread::yield_now();
                }
            }));
        }
        {
            let (stop_ops, rebinds, check) = (&stop_ops, &rebinds, &check);
            ops.push(s.spawn(move || {
                let mut rng = Rng::new(opts.seed ^ 0x300);
                while !stop_ops.load(Relaxed) {
                    let p = random_port(&mut rng);
                    {
                        let _g = book.lock(p);
                        backend.close(p).expect("close of a bound port");
                        check();
                        book.closed(p);
                        let again = backend.bind(rng.below(u64::from(VCPUS)) as u32);
                        assert_eq!(again, Ok(p), "bind after closing port {p}");
                    }
                    rebinds.fetch_add(1, Relaxed);
                    check();
                    std::thread::sleep(Duration::from_micros(200));
                }
            }));
        }

        // Run.
        run_until(start, opts.duration, opts.stop_when, |c| match c {
            Counter::Lost => 0,
            Counter::Clobbered => clobbered.load(Relaxed),
            Counter::OnMasked => guest.stats().on_masked,
        });

        // Quiesce: the hypervisor's operations stop, then the guest's mask
        // operations, then the guest unmasks everything and the vCPUs drain.
        stop_ops.store(true, SeqCst);
        for h in ops {
            h.join().expect("operation thread");
        }
        check();
        mask_ops_on.store(false, SeqCst);
        kick_until_acked(wake, &acks, 2);
        for p in 1..=PORTS {
            if guest.masked_by_guest(p) {
                guest.unmask(p).expect("final unmask");
            }
        }
        let drained = drain(wake, VCPUS, |v| guest.upcall_pending(v), book);
        assert!(drained, "the vCPUs did not drain within 10 s");
        let t = losses(book, pending);
        wake.stop();
        for h in vcpus {
            h.join().expect("vCPU thread");
        }
        Counts {
            t,
            ..Counts::default()
        }
    });

    let g = guest.stats();
    counts.t.sends = sends.load(SeqCst);
    counts.t.send_errors = send_errors.load(SeqCst);
    counts.t.handled = g.handled;
    counts.bind_vcpu = bind_vcpu.load(SeqCst);
    counts.bind_vcpu_closed = bind_vcpu_closed.load(SeqCst);
    counts.t.priorities = priorities.load(SeqCst);
    counts.t.rebinds = rebinds.load(SeqCst);
    counts.t.mask_ops = mask_ops.load(SeqCst);
    counts.t.unmask_hypercalls = dispatch.unmasks.load(SeqCst);
    counts.t.kicks = wake.total_kicks();
    counts.t.clobbered = clobbered.load(SeqCst);
    counts.t.first_clobbered = *first_clobbered.lock().unwrap();
    counts.t.on_masked = g.on_masked;
    counts.t.lost_wakeups = lost_wakeups.load(SeqCst);
    counts.t.secs = start.elapsed().as_secs_f64();
    counts
}

/// Sets up memory, the backend and the C guest for `abi`, and runs.
fn forward(abi: Abi, backend: BackendKind, opts: &Opts) -> Counts {
    let _serial = serial();
    let wake = Wake::new(VCPUS as usize);
    let kick = |v: u32| wake.kick(v);
    let book = Book::new(NR_PORTS);
    let handler = |port: u32, _vcpu: u32| book.handle(port);
    match abi {
        Abi::TwoLevel => {
            let page = Box::new(SharedInfo::new());
            let pending = |p: u32| {
                page.evtchn_pending[(p / 64) as usize].load(SeqCst) & (1u64 << (p % 64)) != 0
            };
            let shared = Shared {
                wake: &wake,
                book: &book,
                pending: &pending,
                fifo: false,
            };
            match backend {
                BackendKind::Evtchn => {
                    let host =
                        Host::new(TwoLevel::new(MaxVcpus::new(&*page, VCPUS as usize)), &kick);
                    let dispatch = Dispatch::new(&host);
                    let guest =
                        CGuest::new_2l(opts.guest, &page, VCPUS, NR_PORTS, &dispatch, &handler);
                    run_forward(opts, &host, &guest, &dispatch, shared)
                }
                BackendKind::CRaiser => {
                    let raiser = CRaiser::new_2l(RaiserVariant::Xen, &page, VCPUS, NR_PORTS, &kick);
                    let dispatch = Dispatch::new(&raiser);
                    let guest =
                        CGuest::new_2l(opts.guest, &page, VCPUS, NR_PORTS, &dispatch, &handler);
                    run_forward(opts, &raiser, &guest, &dispatch, shared)
                }
            }
        }
        Abi::Fifo => {
            let words: Vec<EventWord> = (0..NR_PORTS).map(|_| EventWord::new(0)).collect();
            let control: Vec<ControlBlock> = (0..VCPUS).map(|_| ControlBlock::new()).collect();
            let vcpus: Vec<VcpuInfo> = (0..VCPUS).map(|_| VcpuInfo::new()).collect();
            let pending = |p: u32| words[p as usize].load(SeqCst) & PENDING != 0;
            let shared = Shared {
                wake: &wake,
                book: &book,
                pending: &pending,
                fifo: true,
            };
            match backend {
                BackendKind::Evtchn => {
                    let host = Host::new(
                        Fifo::new(BorrowedFifo {
                            words: &words,
                            control: &control,
                            vcpus: &vcpus,
                        }),
                        &kick,
                    );
                    let dispatch = Dispatch::new(&host);
                    let guest =
                        CGuest::new_fifo(opts.guest, &words, &control, &vcpus, &dispatch, &handler);
                    run_forward(opts, &host, &guest, &dispatch, shared)
                }
                BackendKind::CRaiser => {
                    let raiser =
                        CRaiser::new_fifo(RaiserVariant::Xen, &words, &control, &vcpus, &kick);
                    let dispatch = Dispatch::new(&raiser);
                    let guest =
                        CGuest::new_fifo(opts.guest, &words, &control, &vcpus, &dispatch, &handler);
                    run_forward(opts, &raiser, &guest, &dispatch, shared)
                }
            }
        }
    }
}

#[test]
fn forward_two_level() {
    let c = forward(
        Abi::TwoLevel,
        BackendKind::Evtchn,
        &Opts::new(GuestVariant::Linux, scenario_duration()),
    );
    assert_clean("forward 2-level", &c);
}

#[test]
fn forward_fifo() {
    let c = forward(
        Abi::Fifo,
        BackendKind::Evtchn,
        &Opts::new(GuestVariant::Linux, scenario_duration()),
    );
    assert_clean("forward FIFO", &c);
}

/// The baseline: the C guest over the C raiser, no evtchn.
#[test]
fn baseline_c_guest_on_c_raiser() {
    for abi in Abi::ALL {
        let c = forward(
            abi,
            BackendKind::CRaiser,
            &Opts::new(GuestVariant::Linux, scenario_duration() / 4),
        );
        assert_clean(&format!("baseline C guest on C raiser {}", abi.name()), &c);
    }
}

/// A negative control of the forward direction: a broken C guest or
/// hypervisor, and what the summary line calls it.
struct Negative {
    guest: GuestVariant,
    host_unmasks_on_rebind: bool,
    control: Control,
}

/// The forward negative controls, one per counter.
const NEGATIVES: [Negative; 3] = [
    Negative {
        guest: GuestVariant::BrokenUnmask,
        host_unmasks_on_rebind: false,
        control: Control {
            label: "guest unmask without hypercall",
            counter: Counter::Lost,
            still_zero: None,
            duration: Duration::from_millis(500),
        },
    },
    Negative {
        guest: GuestVariant::IgnoreMask,
        host_unmasks_on_rebind: false,
        control: Control {
            label: "delivery ignores the mask",
            counter: Counter::OnMasked,
            still_zero: None,
            duration: Duration::from_secs(5),
        },
    },
    Negative {
        guest: GuestVariant::Linux,
        host_unmasks_on_rebind: true,
        control: Control {
            label: "hypervisor unmasks on rebind",
            counter: Counter::Clobbered,
            still_zero: None,
            duration: Duration::from_secs(5),
        },
    },
];

/// Runs negative control `n` of [`NEGATIVES`] on both ABIs.
fn negative(n: &Negative) {
    let mut opts = Opts::new(n.guest, n.control.duration);
    opts.host_unmasks_on_rebind = n.host_unmasks_on_rebind;
    opts.stop_when = n.control.stop_when();
    negative_control("forward", &n.control, |abi| {
        forward(abi, BackendKind::Evtchn, &opts)
    });
}

/// Negative control: an unmask that never asks the hypervisor loses the
/// events that arrived while the port was masked.
#[test]
fn negative_lost_with_broken_guest_unmask() {
    negative(&NEGATIVES[0]);
}

/// Negative control: a guest whose delivery ignores its mask runs handlers
/// on ports it masked.
#[test]
fn negative_on_masked_with_guest_ignoring_mask() {
    negative(&NEGATIVES[1]);
}

/// Negative control: a hypervisor that unmasks a port when it rebinds it
/// clears masks the guest set.
#[test]
fn negative_clobbered_with_host_unmasking_on_rebind() {
    negative(&NEGATIVES[2]);
}

/// The C guest's own hypercalls reach the hypervisor: bind an IPI, send to
/// it, handle it, rebind and close it.
#[test]
fn guest_hypercalls_reach_host() {
    let _serial = serial();
    let page = Box::new(SharedInfo::new());
    let kicked = Mutex::new(Vec::new());
    let kick = |v: u32| kicked.lock().unwrap().push(v);
    let host = Host::new(TwoLevel::new(MaxVcpus::new(&*page, VCPUS as usize)), &kick);
    let dispatch = Dispatch::new(&host);
    let seen = Mutex::new(Vec::new());
    let handler = |port: u32, vcpu: u32| seen.lock().unwrap().push((port, vcpu));
    let guest = CGuest::new_2l(
        GuestVariant::Linux,
        &page,
        VCPUS,
        NR_PORTS,
        &dispatch,
        &handler,
    );

    let port = guest.bind_ipi(2).expect("bind_ipi");
    assert_eq!(port, 1);
    guest.send(port).expect("send");
    assert_eq!(*kicked.lock().unwrap(), [2]);
    assert!(guest.upcall_pending(2));
    assert_eq!(guest.upcall(2), Ok(1));
    assert_eq!(*seen.lock().unwrap(), [(1, 2)]);

    // Masked by the guest: the send notifies nobody; the unmask asks the
    // hypervisor, which raises it on the port's vCPU (now 3).
    guest.bind_vcpu(port, 3).expect("bind_vcpu");
    guest.mask(port).expect("mask");
    guest.send(port).expect("send");
    assert!(!guest.upcall_pending(3));
    guest.unmask(port).expect("unmask");
    assert_eq!(dispatch.unmasks.load(SeqCst), 1);
    assert!(guest.upcall_pending(3));
    assert_eq!(guest.upcall(3), Ok(1));
    assert_eq!(seen.lock().unwrap().last(), Some(&(1, 3)));
    assert_eq!(guest.check_masks(), (0, None));

    guest.close(port).expect("close");
    assert_eq!(guest.send(port), Err(-EINVAL));
    assert_eq!(guest.stats().on_masked, 0);
}
