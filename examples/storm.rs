//! An event storm on real threads, and what the delivery policies make of
//! it: the story of a storm that lands on vCPU 0 and soft-locks it.
//!
//! ```text
//! cargo run --release --example storm              # six runs side by side, ~17 s
//! cargo run --release --example storm -- --help    # the options
//! ```
//!
//! Threads: one per vCPU, each running upcalls and halting when idle (it
//! parks only after seeing no upcall pending; the `Notify` hook unparks
//! it); sender threads that send to random storm ports at a paced rate; in
//! the `+rebalance` runs a rebalancer calling `Channels::rebalance`. Every
//! handler run does a fixed amount of work (`--work`, 10 µs).
//!
//! The offered load is set against what one vCPU can handle (`--load`, in
//! multiples of one vCPU's capacity, measured first on this machine): 1.5
//! by default, more than one vCPU can take and less than two. Each run binds
//! the storm ports with `Bind::Auto` under one policy:
//!
//! * `xen` (`Policy::Vcpu0`): every port on vCPU 0, as Xen binds them. vCPU 0
//!   is overloaded, its upcall never finds the ports drained and does not
//!   return for the whole run: the soft lockup.
//! * `rr` (`Policy::RoundRobin`) and `ll` (`Policy::LeastLoaded`): spread
//!   over the online vCPUs; every vCPU is below capacity and its upcalls are
//!   short. (With nothing else bound they place the ports the same way;
//!   they differ when vCPUs already carry ports, see `tests/policy.rs`.)
//! * `xen+budget`: as `xen`, but each upcall makes at most `--budget` handler
//!   runs (`Vcpu::upcall_budget`) and defers the rest: upcalls stay short, the
//!   vCPU gets back control between them, but the load stays on vCPU 0.
//!   On `--abi fifo` every upcall is bounded anyway, by the ABI's own limit
//!   of twice its ports (a guard against a guest's link cycles), so there
//!   the `xen` run looks like `xen+budget` with a budget of 2050.
//! * `xen+lateeoi`: as `xen`, with late-EOI ports (`Channels::set_lateeoi`,
//!   Linux's lateeoi of XSA-332): a port stays masked from its handler's
//!   start until the vCPU ends the EOI with `Channels::lateeoi` after the
//!   upcall, so an upcall runs each port at most once and sends to a masked
//!   port coalesce; a port whose runs keep finding nothing is held masked for
//!   a growing delay.
//! * `xen+rebalance`: as `xen`, while a rebalancer moves hot ports off the
//!   busy vCPU every `--rebalance-ms` (50 ms) with `set_affinity`, as
//!   events fly: the storm lasts until its first moves.
//!
//! Per run it prints a table per vCPU (handler runs, share, upcalls, the
//! longest single upcall in the thread's CPU time — the soft-lockup
//! measure, which a preempted thread does not inflate — and the busiest
//! port), the send-to-handle latency (p50/p99/p99.9: from the oldest send a
//! handler run observes to the start of that run; an HDR histogram per vCPU,
//! 3 significant figures, merged), events handled per second, and the
//! checks: `lost` (a send no handler observed, or a port left pending),
//! `concurrent` (a handler entered while it ran elsewhere), `spurious`
//! (handler runs that found no new send: the racing coalesced kind), lost
//! wake-ups. It ends with the runs side by side and exits non-zero if any
//! check failed.
//!
//! `--interdomain` runs the hypervisor side instead (`Domains`; see the
//! `interdomain` module): backend domains send on their ports to a frontend
//! domain that binds them (Xen's conservative bind and the atomic one in
//! turn), moves them between its vCPUs and closes and binds them again
//! while the sends fly, its vCPU threads running a Linux-like guest over
//! the deliver half of its memory. It ends with a two-line summary and exits
//! non-zero if a check failed.
//!
//! ```text
//! cargo run --release --example storm -- --interdomain --abi fifo --secs 10
//! ```

use std::io::{IsTerminal, Write};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::*};
use std::thread;
use std::time::{Duration, Instant};

use clap::builder::RangedU64ValueParser;
use clap::error::ErrorKind;
use clap::parser::ValueSource;
use clap::{value_parser, CommandFactory, FromArgMatches, Parser, ValueEnum};
use hdrhistogram::Histogram;

use evtchn::{Bind, Channels, Fifo, OwnedFifo, OwnedMemory, Policy, Port, PortOps, TwoLevel};
use evtchn_test_support::{Halt, Kicker, Rng};

/// Park timeout of a halted vCPU: kicks wake it; this only bounds the
/// damage of a lost one, which is counted.
const PARK_TIMEOUT: Duration = Duration::from_millis(20);
/// How long a vCPU that timed out with work pending waits for a kick still
/// on its way before it calls the wake-up lost.
const KICK_GRACE: Duration = Duration::from_secs(1);

/// The ABI a run drives.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Abi {
    #[value(name = "2l", alias = "2-level", alias = "twolevel")]
    TwoLevel,
    Fifo,
}

/// A fault the interdomain storm plants in its own guest or backends, to
/// show that its checks report it (a negative control; the core's own
/// weakenings exist only under loom and shuttle).
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum SelfCheck {
    /// The frontend clears its new port's pending bit as it binds it (as a
    /// guest wiping a reused number's stale state would), throwing away the
    /// conservative event and the replay: `lost` must be reported.
    ClearOnBind,
    /// The backends send without the hypervisor's lock: each reads its
    /// port's peer and raises the frontend's port by hand through the raise
    /// half (what `Weaken::InterdomainSendUnlocked` does to the core), with
    /// a yield in between standing for a preemption: a raise lands on a
    /// port the frontend has closed, and `stale` must be reported.
    UnlockedSend,
}

/// One run: a policy and its throttles.
#[derive(Clone, Debug)]
struct RunSpec {
    name: String,
    policy: Policy,
    budget: Option<usize>,
    rebalance: bool,
    lateeoi: bool,
}

/// storm: an event storm on vCPU 0, and what the delivery policies make of it
///
/// Sender threads send to random storm ports at a paced rate: --load times
/// what one vCPU can handle, measured first on this machine. Each run binds
/// the ports under one policy and prints, per vCPU, the handler runs, their
/// share, the upcalls and the longest single upcall (in the thread's CPU
/// time: the soft-lockup measure); then the send-to-handle latency
/// (p50/p99/p99.9), the events handled per second, and the checks: lost,
/// concurrent, spurious, lost wake-ups. It ends with the runs side by side,
/// and exits non-zero if a check failed.
#[derive(Parser)]
#[command(
    name = "storm",
    override_usage = "cargo run --release --example storm [-- OPTIONS]",
    verbatim_doc_comment
)]
struct Args {
    /// Comma-separated runs, each a policy with optional modifiers
    ///
    /// Policies: xen (all on vCPU 0, as Xen), rr (round-robin),
    /// ll (least-loaded). Modifiers: +budget, +lateeoi, +rebalance.
    /// E.g. xen+rebalance, rr+budget.
    #[arg(
        long,
        value_name = "LIST",
        default_value = "xen,rr,ll,xen+budget,xen+lateeoi,xen+rebalance",
        value_parser = check_runs,
        verbatim_doc_comment
    )]
    policy: String,
    /// The runs of `--policy`, with `--budget` filled in.
    #[arg(skip)]
    runs: Vec<RunSpec>,
    /// The event-channel ABI
    #[arg(
        long,
        value_name = "A",
        value_enum,
        ignore_case = true,
        default_value = "2l"
    )]
    abi: Abi,
    /// vCPU threads, 2..=64
    #[arg(long, value_name = "N", default_value_t = 4, value_parser = whole_in(2, 64))]
    vcpus: usize,
    /// Storm ports, 1..=4000
    #[arg(long, value_name = "N", default_value_t = 1024, value_parser = whole_in(1, 4000))]
    ports: usize,
    /// Sender threads (per backend with --interdomain), 1..=16
    #[arg(long, value_name = "N", default_value_t = 2, value_parser = whole_in(1, 16))]
    senders: usize,
    /// Seconds per run, decimals allowed
    #[arg(long, value_name = "S", default_value_t = 2.5, value_parser = real_in(0.1, 3600.0))]
    secs: f64,
    /// Offered load in multiples of one vCPU's capacity
    #[arg(long, value_name = "X", default_value_t = 1.5, value_parser = real_in(0.01, 100.0))]
    load: f64,
    /// Handler work per event in microseconds (2 by default with
    /// --interdomain, where a frontend vCPU with 10 µs runs saturates two
    /// cores and slows its control plane down to a few hundred binds a
    /// second)
    #[arg(
        long = "work",
        value_name = "US",
        default_value_t = 10.0,
        value_parser = real_in(0.0, 10_000.0)
    )]
    work_us: f64,
    /// Handler runs per upcall in +budget runs (and in every upcall of the
    /// --interdomain frontend)
    #[arg(long, value_name = "N", default_value_t = 64, value_parser = whole_in(1, 1 << 20))]
    budget: usize,
    /// Period of the rebalancer in +rebalance runs, in milliseconds
    #[arg(
        long,
        value_name = "N",
        default_value_t = 50,
        value_parser = value_parser!(u64).range(1..=60_000)
    )]
    rebalance_ms: u64,
    /// The interdomain storm instead: backend domains send to a frontend
    /// domain that binds, moves, closes and binds their channels again
    #[arg(long, conflicts_with_all = ["policy", "load", "rebalance_ms"])]
    interdomain: bool,
    /// Backend domains of --interdomain (dom0, dom2, dom3, ...), 1..=8
    #[arg(
        long,
        value_name = "N",
        default_value_t = 3,
        value_parser = whole_in(1, 8),
        requires = "interdomain"
    )]
    backends: usize,
    /// Channels per backend of --interdomain, 1..=1000 (4000 in all at most)
    #[arg(
        long,
        value_name = "N",
        default_value_t = 32,
        value_parser = whole_in(1, 1000),
        requires = "interdomain"
    )]
    channels: usize,
    /// Sends per second of --interdomain, all backends together
    #[arg(
        long,
        value_name = "N",
        default_value_t = 200_000.0,
        value_parser = real_in(1.0, 1e9),
        requires = "interdomain"
    )]
    rate: f64,
    /// Pause of the --interdomain frontend between two of its binds, moves
    /// or closes, in microseconds
    #[arg(
        long,
        value_name = "US",
        default_value_t = 100,
        value_parser = value_parser!(u64).range(0..=1_000_000),
        requires = "interdomain"
    )]
    churn_us: u64,
    /// A fault planted in the --interdomain storm, to see its checks fail
    #[arg(long, value_name = "FAULT", value_enum, requires = "interdomain")]
    self_check: Option<SelfCheck>,
}

/// The handler work of `--interdomain` unless `--work` says otherwise.
const INTERDOMAIN_WORK_US: f64 = 2.0;

/// A parser of a whole number in `lo..=hi`.
fn whole_in(lo: u64, hi: u64) -> RangedU64ValueParser<usize> {
    RangedU64ValueParser::new().range(lo..=hi)
}

/// A parser of a real number in `lo..=hi`.
fn real_in(lo: f64, hi: f64) -> impl Fn(&str) -> Result<f64, String> + Clone + Send + Sync {
    move |s| match s.parse::<f64>() {
        Ok(v) if (lo..=hi).contains(&v) => Ok(v),
        _ => Err(format!("expected a number in {lo}..={hi}")),
    }
}

/// Checks a `--policy` list (the runs are made once `--budget` is known).
fn check_runs(list: &str) -> Result<String, String> {
    parse_runs(list, 0).map(|_| list.to_string())
}

fn parse_runs(list: &str, budget: usize) -> Result<Vec<RunSpec>, String> {
    list.split(',')
        .map(|item| {
            let mut parts = item.trim().split('+');
            let base = parts.next().unwrap_or("");
            let policy = match base {
                "xen" | "vcpu0" => Policy::Vcpu0,
                "rr" | "round-robin" => Policy::RoundRobin,
                "ll" | "least-loaded" => Policy::LeastLoaded,
                other => return Err(format!("unknown policy {other:?}")),
            };
            let mut spec = RunSpec {
                name: item.trim().to_string(),
                policy,
                budget: None,
                rebalance: false,
                lateeoi: false,
            };
            for m in parts {
                match m {
                    "budget" => spec.budget = Some(budget),
                    "rebalance" => spec.rebalance = true,
                    "lateeoi" => spec.lateeoi = true,
                    other => return Err(format!("unknown modifier +{other}")),
                }
            }
            Ok(spec)
        })
        .collect()
}

/// Parses the command line; on an error or `--help`, clap prints and exits
/// (with status 2 on an error).
fn parse_args() -> Args {
    let matches = Args::command().get_matches();
    let mut args = Args::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    if args.interdomain && matches.value_source("work_us") == Some(ValueSource::DefaultValue) {
        args.work_us = INTERDOMAIN_WORK_US;
    }
    match parse_runs(&args.policy, args.budget) {
        Ok(runs) => args.runs = runs,
        Err(msg) => Args::command()
            .error(ErrorKind::ValueValidation, format!("--policy: {msg}"))
            .exit(),
    }
    if args.interdomain && args.backends * args.channels > 4000 {
        Args::command()
            .error(
                ErrorKind::ValueValidation,
                "--backends times --channels: at most 4000 channels",
            )
            .exit()
    }
    args
}

/// The calling thread's CPU time in nanoseconds: what an upcall cost its
/// vCPU, not counting the time the thread was preempted.
#[cfg(unix)]
fn thread_cpu_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, exclusively borrowed timespec for the call to
    // write; CLOCK_THREAD_CPUTIME_ID needs nothing else.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    if rc != 0 {
        return 0;
    }
    (ts.tv_sec as u64)
        .saturating_mul(1_000_000_000)
        .saturating_add(ts.tv_nsec as u64)
}

/// Without a per-thread CPU clock, wall time (preemption included).
#[cfg(not(unix))]
fn thread_cpu_ns() -> u64 {
    static START: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    START.get_or_init(Instant::now).elapsed().as_nanos() as u64
}

/// Bounds of the latency histograms, in nanoseconds: 1 ns to 60 s, at 3
/// significant figures. A latency beyond 60 s counts as 60 s.
const LATENCY_MAX_NS: u64 = 60_000_000_000;
const LATENCY_SIGFIG: u8 = 3;

/// An empty latency histogram.
fn latency_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, LATENCY_MAX_NS, LATENCY_SIGFIG).expect("valid histogram bounds")
}

/// The value below which a fraction `q` of the samples lie; `None` when
/// there are none.
fn quantile(h: &Histogram<u64>, q: f64) -> Option<u64> {
    (!h.is_empty()).then(|| h.value_at_quantile(q))
}

/// Per-vCPU state shared with the kick hook and the progress line, on its
/// own cache lines.
#[repr(align(128))]
#[derive(Default)]
struct VcpuLive {
    /// Handler runs so far.
    handled: AtomicU64,
    /// Wall-clock start of the upcall running now (ns since the epoch, plus
    /// one); 0 when none runs.
    running_since: AtomicU64,
    /// Wake-ups that never came (C2).
    lost_wakeups: AtomicU64,
}

/// Accounting of one storm port: `sent` counts sends claimed (before each
/// send), `seen` the highest count a handler observed, `first` the time
/// of the oldest send no handler run has observed yet (ns since the epoch,
/// plus one; 0 when none), `inside` is set while a handler runs.
#[repr(align(64))]
#[derive(Default)]
struct Ledger {
    sent: AtomicU64,
    seen: AtomicU64,
    first: AtomicU64,
    inside: AtomicBool,
}

/// What the threads of one run share.
struct World {
    epoch: Instant,
    vcpus: Vec<VcpuLive>,
    /// The vCPU threads and their kicks: the `Notify`.
    kicker: Kicker,
    /// Indexed by port number.
    ledger: Vec<Ledger>,
    /// Spin iterations of one handler's work.
    work_iters: u64,
    concurrent: AtomicU64,
    errors: AtomicU64,
    stop_senders: AtomicBool,
    /// Set once the senders and the rebalancer have stopped: the vCPUs end
    /// their delayed EOIs at once, then acknowledge in `stopped`.
    stop_vcpus: AtomicBool,
    /// vCPUs that saw `stop_vcpus` and hold no delayed EOI any more.
    stopped: AtomicU64,
    /// vCPUs inside an active stretch: an upcall and the EOIs after it.
    /// With the senders and the rebalancer stopped, only such a stretch can
    /// raise an event (a FIFO relink of an event bound elsewhere, the
    /// re-raise of an in-flight guard's replay or of an EOI).
    active: AtomicU64,
    /// Active stretches begun so far.
    starts: AtomicU64,
    /// Set by the run once every vCPU is idle for good: the vCPUs return.
    exit_vcpus: AtomicBool,
    moves: AtomicU64,
}

impl World {
    fn now_ns(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }
}

type Ch<'w, A> = Channels<A, &'w Kicker>;

/// The handler's work: `iters` turns of a loop the optimiser keeps.
fn work(iters: u64) {
    let mut x = 0u64;
    for i in 0..iters {
        x = std::hint::black_box(x.wrapping_add(i));
    }
    std::hint::black_box(x);
}

/// Spin iterations per microsecond on this machine.
fn calibrate_work() -> f64 {
    let n = 2_000_000;
    work(n / 10);
    let t = Instant::now();
    work(n);
    n as f64 / t.elapsed().as_secs_f64() / 1e6
}

/// What one vCPU thread measured, returned when it ends.
struct VcpuReport {
    /// Late-EOI runs: the ports this upcall ran, and whether each found
    /// no new send (spurious), to end with `lateeoi` after the upcall.
    to_eoi: Option<Vec<(Port, bool)>>,
    handled: u64,
    upcalls: u64,
    longest_cpu_ns: u64,
    longest_wall_ns: u64,
    spurious: u64,
    per_port: Vec<u64>,
    latency: Histogram<u64>,
}

impl VcpuReport {
    fn new(ports: usize) -> Self {
        VcpuReport {
            to_eoi: None,
            handled: 0,
            upcalls: 0,
            longest_cpu_ns: 0,
            longest_wall_ns: 0,
            spurious: 0,
            per_port: vec![0; ports],
            latency: latency_histogram(),
        }
    }
}

/// The handler: checks C3, measures the latency of the oldest send it
/// observes, records what it saw, and does its work.
fn handle(w: &World, live: &VcpuLive, r: &mut VcpuReport, p: Port) {
    r.handled += 1;
    // Relaxed: a statistic for the progress line, on this vCPU's own line.
    live.handled.fetch_add(1, Relaxed);
    let n = p.number() as usize;
    if let Some(c) = r.per_port.get_mut(n) {
        *c += 1;
    }
    let Some(l) = w.ledger.get(n) else { return };
    if l.inside.swap(true, AcqRel) {
        w.concurrent.fetch_add(1, Relaxed);
    }
    // AcqRel: the core's clear of the pending bit (Acquire) synchronised
    // with the send, so the stamp and count claimed before it are visible.
    let first = l.first.swap(0, AcqRel);
    let now = w.now_ns();
    if first == 0 {
        r.spurious += 1;
    } else {
        // Beyond the histogram's 60 s: counted as 60 s.
        r.latency.saturating_record(now.saturating_sub(first - 1));
    }
    if let Some(list) = &mut r.to_eoi {
        list.push((p, first == 0));
    }
    l.seen.fetch_max(l.sent.load(Acquire), AcqRel);
    work(w.work_iters);
    l.inside.store(false, Release);
}

/// One vCPU: the upcall loop with the idle protocol of C2.
fn run_vcpu<A: PortOps>(w: &World, ch: &Ch<'_, A>, id: u32, spec: &RunSpec) -> VcpuReport {
    let me = &w.vcpus[id as usize];
    w.kicker.register(id);
    let mut r = VcpuReport::new(w.ledger.len());
    if spec.lateeoi {
        r.to_eoi = Some(Vec::new());
    }
    // Late EOIs the back-off delayed: (port, when to end it).
    let mut delayed: Vec<(Port, Instant)> = Vec::new();
    let Ok(mut vcpu) = ch.vcpu(id) else {
        w.errors.fetch_add(1, Relaxed);
        return r;
    };
    let mut acked = false;
    loop {
        // SeqCst (both): the quiescence check reads `starts`, `active` and
        // the upcall flags in one total order with these updates.
        w.starts.fetch_add(1, SeqCst);
        w.active.fetch_add(1, SeqCst);
        let wall0 = w.now_ns();
        let cpu0 = thread_cpu_ns();
        me.running_since.store(wall0 + 1, Relaxed);
        let res = match spec.budget {
            Some(b) => vcpu.upcall_budget(b, |p| handle(w, me, &mut r, p)),
            None => vcpu.upcall(|p| handle(w, me, &mut r, p)),
        };
        let cpu = thread_cpu_ns().saturating_sub(cpu0);
        me.running_since.store(0, Relaxed);
        if let Err(e) = res {
            eprintln!("vcpu{id}: upcall failed: {e}");
            w.errors.fetch_add(1, Relaxed);
        }
        // Late EOI, after the upcall: each port ran at most once in it (it
        // stayed masked from its handler's start), and a port that keeps
        // firing for nothing is held masked for a growing delay.
        let stopping = w.stop_vcpus.load(Acquire);
        for (p, spurious) in r.to_eoi.as_mut().map(std::mem::take).unwrap_or_default() {
            match ch.lateeoi(p, spurious) {
                Ok(None) => {}
                Ok(Some(ms)) => {
                    delayed.push((p, Instant::now() + Duration::from_millis(ms.into())))
                }
                Err(e) => {
                    eprintln!("vcpu{id}: lateeoi({p:?}): {e}");
                    w.errors.fetch_add(1, Relaxed);
                }
            }
        }
        delayed.retain(|&(p, due)| {
            if due > Instant::now() && !stopping {
                return true;
            }
            if let Err(e) = ch.eoi(p) {
                eprintln!("vcpu{id}: eoi({p:?}): {e}");
                w.errors.fetch_add(1, Relaxed);
            }
            false
        });
        r.upcalls += 1;
        r.longest_cpu_ns = r.longest_cpu_ns.max(cpu);
        r.longest_wall_ns = r.longest_wall_ns.max(w.now_ns().saturating_sub(wall0));
        if stopping && !acked {
            // Every delayed EOI was ended above (`stopping`).
            acked = true;
            // SeqCst: read by the run before its quiescence check.
            w.stopped.fetch_add(1, SeqCst);
        }
        // SeqCst: see `starts` above.
        w.active.fetch_sub(1, SeqCst);
        if stopping {
            // The senders have stopped. Another vCPU's upcall may still
            // raise an event here (a FIFO relink of a port moved while it
            // was queued), so this vCPU keeps serving its upcalls until the
            // run has seen every vCPU idle at once (`exit_vcpus`).
            if vcpu.upcall_pending() {
                continue;
            }
            // Acquire: pairs with the run's Release store.
            if w.exit_vcpus.load(Acquire) {
                return r;
            }
            thread::park_timeout(Duration::from_millis(1));
            continue;
        }
        if let Some(due) = delayed.iter().map(|&(_, due)| due).min() {
            // A delayed EOI to end first: nap until it is due.
            if vcpu.upcall_pending() {
                continue;
            }
            thread::park_timeout(
                due.saturating_duration_since(Instant::now())
                    .min(PARK_TIMEOUT),
            );
            continue;
        }
        if w.kicker
            .halt(id, || vcpu.upcall_pending(), PARK_TIMEOUT, KICK_GRACE)
            == Halt::LostWakeup
        {
            me.lost_wakeups.fetch_add(1, Relaxed);
            eprintln!("vcpu{id}: lost wake-up");
        }
    }
}

/// Whether the vCPUs are idle for good, once the senders and the
/// rebalancer have stopped.
///
/// A glance at the upcall flags is not enough, and the run used to stop the
/// vCPU threads after one. On FIFO with the rebalancer that lost events
/// (the core had delivered them; the example had stopped serving them):
///
/// 1. The rebalancer moves port P, pending and LINKED on vCPU 0's queue of
///    priority 7, to vCPU 1. The rebind's unmask cannot link P (still
///    LINKED); vCPU 0's consumer will relink it when it takes it off.
/// 2. The senders stop. The run reads vCPU 0's flag 0 (vCPU 0 is inside an
///    upcall, which clears its flag first) and vCPU 1's flag 0 (idle), and
///    stops the vCPUs. vCPU 1 runs an empty upcall, sees the stop and a
///    clear flag, and returns.
/// 3. vCPU 0 takes P off its queue; P is bound to vCPU 1
///    (`Delivery::Foreign`), so it links P on vCPU 1's queue 7: `head[7] =
///    P`, `ready |= 1 << 7`, vCPU 1's upcall flag 0 → 1, and a kick to a
///    thread that has returned.
/// 4. At the end P is PENDING and LINKED at the head of vCPU 1's queue,
///    whose `ready` bit and upcall flag are set: "still pending after
///    quiescing", "1 send(s) never observed". One more upcall on vCPU 1
///    runs it (checked on every stranded port of the failing runs).
///
/// So the check is a termination detection: every vCPU has ended its
/// delayed EOIs, and while no vCPU was inside an active stretch (none at
/// the first read of `active`, none begun by the second) every upcall flag
/// read clear. Only an active stretch raises an event then, so no event can
/// arrive later, and a clear flag means the vCPU has nothing queued (C2).
/// The reads are SeqCst, as are the counters' updates.
fn quiescent<A: PortOps>(w: &World, ch: &Ch<'_, A>, vcpus: u32) -> bool {
    if w.stopped.load(SeqCst) < u64::from(vcpus) {
        return false;
    }
    let starts = w.starts.load(SeqCst);
    if w.active.load(SeqCst) != 0 {
        return false;
    }
    let idle = (0..vcpus).all(|v| !ch.upcall_pending(v).unwrap_or(true));
    idle && w.active.load(SeqCst) == 0 && w.starts.load(SeqCst) == starts
}

/// One sender: sends to random storm ports at `rate` per second, in small
/// bursts between short sleeps (so that senders leave the CPUs to the
/// vCPUs). Returns its sends.
fn run_sender<A: PortOps>(w: &World, ch: &Ch<'_, A>, ports: &[Port], rate: f64, id: u64) -> u64 {
    let mut rng = Rng::new(0x5e2d + id);
    let start = Instant::now();
    let mut sent = 0u64;
    while !w.stop_senders.load(Relaxed) {
        let due = (start.elapsed().as_secs_f64() * rate) as u64;
        if sent >= due {
            thread::sleep(Duration::from_micros(50));
            continue;
        }
        // A sender that fell behind (a long sleep) catches up in bursts of
        // at most 256.
        for _ in 0..(due - sent).min(256) {
            let p = ports[rng.below(ports.len() as u64) as usize];
            let Some(l) = w.ledger.get(p.number() as usize) else {
                continue;
            };
            // Release (both): published by the send's Release raise.
            l.sent.fetch_add(1, Release);
            let _ = l
                .first
                .compare_exchange(0, w.now_ns() + 1, Release, Relaxed);
            if let Err(e) = ch.send(p) {
                eprintln!("sender{id}: send({p:?}): {e}");
                w.errors.fetch_add(1, Relaxed);
            }
            sent += 1;
        }
    }
    sent
}

/// What one run measured.
struct RunResult {
    name: String,
    vcpus: Vec<VcpuReport>,
    latency: Histogram<u64>,
    handled_per_s: f64,
    offered_per_s: f64,
    sends: u64,
    moves: u64,
    lost: u64,
    concurrent: u64,
    lost_wakeups: u64,
    errors: u64,
}

impl RunResult {
    fn ok(&self) -> bool {
        self.lost == 0 && self.concurrent == 0 && self.lost_wakeups == 0 && self.errors == 0
    }
    fn spurious(&self) -> u64 {
        self.vcpus.iter().map(|v| v.spurious).sum()
    }
    fn handled(&self) -> u64 {
        self.vcpus.iter().map(|v| v.handled).sum()
    }
    fn share(&self, v: usize) -> f64 {
        let total = self.handled();
        match self.vcpus.get(v) {
            Some(r) if total > 0 => 100.0 * r.handled as f64 / total as f64,
            _ => 0.0,
        }
    }
}

/// Handler capacity of one vCPU: events per second of upcall time, every
/// port pending, with the handler's work (the sends are not counted: the
/// senders make them).
fn capacity<A: PortOps>(ops: A, ports: usize, work_iters: u64) -> f64 {
    let w = world(1, ports + 1, work_iters);
    let ch: Ch<'_, A> = Channels::new(ops, &w.kicker);
    let ports: Vec<Port> = (0..ports)
        .filter_map(|_| ch.bind(Bind::Affinity(0)).ok())
        .collect();
    let Ok(mut vcpu) = ch.vcpu(0) else { return 0.0 };
    let mut r = VcpuReport::new(w.ledger.len());
    let t = Instant::now();
    let mut in_upcalls = Duration::ZERO;
    while t.elapsed() < Duration::from_millis(300) {
        for &p in &ports {
            let _ = ch.send(p);
        }
        let u = Instant::now();
        let _ = vcpu.upcall(|p| handle(&w, &w.vcpus[0], &mut r, p));
        in_upcalls += u.elapsed();
    }
    r.handled as f64 / in_upcalls.as_secs_f64().max(1e-9)
}

fn world(vcpus: usize, ports: usize, work_iters: u64) -> World {
    World {
        epoch: Instant::now(),
        vcpus: (0..vcpus).map(|_| VcpuLive::default()).collect(),
        kicker: Kicker::new(vcpus),
        ledger: (0..ports).map(|_| Ledger::default()).collect(),
        work_iters,
        concurrent: AtomicU64::new(0),
        errors: AtomicU64::new(0),
        stop_senders: AtomicBool::new(false),
        stop_vcpus: AtomicBool::new(false),
        stopped: AtomicU64::new(0),
        active: AtomicU64::new(0),
        starts: AtomicU64::new(0),
        exit_vcpus: AtomicBool::new(false),
        moves: AtomicU64::new(0),
    }
}

/// Prints the live progress line (a terminal only).
fn progress(w: &World, name: &str, elapsed: Duration, secs: f64, last: &mut (u64, Instant)) {
    let handled: u64 = w.vcpus.iter().map(|v| v.handled.load(Relaxed)).sum();
    let rate = (handled - last.0) as f64 / last.1.elapsed().as_secs_f64().max(1e-3);
    *last = (handled, Instant::now());
    let shares: Vec<String> = w
        .vcpus
        .iter()
        .map(|v| {
            let h = v.handled.load(Relaxed);
            if handled == 0 {
                "  -".into()
            } else {
                format!("{:>3.0}", 100.0 * h as f64 / handled as f64)
            }
        })
        .collect();
    let since = w.vcpus[0].running_since.load(Relaxed);
    let in_upcall = if since == 0 {
        "idle".to_string()
    } else {
        ms(w.now_ns().saturating_sub(since - 1))
    };
    let mut err = std::io::stderr().lock();
    let _ = write!(
        err,
        "\r\x1b[2K  {name:<14} {:>4.1}/{secs:.1} s  {:>6.0}k events/s  shares % [{}]  vCPU0 in its upcall: {in_upcall}",
        elapsed.as_secs_f64(),
        rate / 1e3,
        shares.join(" "),
    );
    let _ = err.flush();
}

/// `ns` as a short duration.
fn ms(ns: u64) -> String {
    let ms = ns as f64 / 1e6;
    if ms >= 1000.0 {
        format!("{:.2} s", ms / 1000.0)
    } else if ms >= 1.0 {
        format!("{ms:.1} ms")
    } else {
        format!("{:.0} µs", ms * 1000.0)
    }
}

fn opt_ms(ns: Option<u64>) -> String {
    ns.map_or_else(|| "-".into(), ms)
}

/// One run of `spec` over `ops`.
fn run<A: PortOps>(
    args: &Args,
    spec: &RunSpec,
    ops: A,
    rate: f64,
    work_iters: u64,
) -> Result<RunResult, String> {
    let w = world(args.vcpus, ops.nr_ports() as usize, work_iters);
    let w = &w;
    let ch: Ch<'_, A> = Channels::new(ops, &w.kicker);
    let ch = &ch;
    ch.set_policy(spec.policy);
    let ports: Vec<Port> = (0..args.ports)
        .map(|_| ch.bind(Bind::Auto).map_err(|e| format!("bind: {e}")))
        .collect::<Result<_, _>>()?;
    if spec.lateeoi {
        for &p in &ports {
            ch.set_lateeoi(p, true)
                .map_err(|e| format!("set_lateeoi: {e}"))?;
        }
    }
    let ports = &ports;
    let period = Duration::from_secs_f64(args.secs);
    let live = std::io::stderr().is_terminal();

    let (reports, sends) = thread::scope(|s| {
        let vcpus: Vec<_> = (0..args.vcpus as u32)
            .map(|id| {
                thread::Builder::new()
                    .name(format!("vcpu{id}"))
                    .spawn_scoped(s, move || run_vcpu(w, ch, id, spec))
                    .expect("spawn a vCPU thread")
            })
            .collect();
        let senders: Vec<_> = (0..args.senders as u64)
            .map(|id| {
                let r = rate / args.senders as f64;
                thread::Builder::new()
                    .name(format!("sender{id}"))
                    .spawn_scoped(s, move || run_sender(w, ch, ports, r, id))
                    .expect("spawn a sender thread")
            })
            .collect();
        let rebalancer = spec.rebalance.then(|| {
            let every = Duration::from_millis(args.rebalance_ms);
            let max_moves = (args.ports / 4).max(1);
            thread::Builder::new()
                .name("rebalancer".into())
                .spawn_scoped(s, move || {
                    while !w.stop_senders.load(Relaxed) {
                        thread::sleep(every);
                        match ch.rebalance(max_moves) {
                            Ok(m) => {
                                w.moves.fetch_add(m.len() as u64, Relaxed);
                            }
                            Err(e) => {
                                eprintln!("rebalance: {e}");
                                w.errors.fetch_add(1, Relaxed);
                            }
                        }
                    }
                })
                .expect("spawn the rebalancer")
        });

        let t0 = Instant::now();
        let mut last = (0u64, Instant::now());
        while t0.elapsed() < period {
            thread::sleep(Duration::from_millis(100).min(period.saturating_sub(t0.elapsed())));
            if live {
                progress(w, &spec.name, t0.elapsed(), args.secs, &mut last);
            }
        }
        if live {
            eprint!("\r\x1b[2K");
        }
        // Quiesce: senders (and the rebalancer) stop, the vCPUs drain what
        // is pending, then stop.
        w.stop_senders.store(true, Relaxed);
        let sends: u64 = senders.into_iter().map(|t| t.join().unwrap_or(0)).sum();
        if let Some(t) = rebalancer {
            let _ = t.join();
        }
        // The vCPUs end their delayed EOIs and acknowledge; then the run
        // waits until every vCPU is idle at once (or 10 s have passed: what
        // is left then is reported as lost).
        w.stop_vcpus.store(true, Release);
        let unpark_all = || w.kicker.unpark_all();
        unpark_all();
        let drain = Instant::now();
        while !quiescent(w, ch, args.vcpus as u32) && drain.elapsed() < Duration::from_secs(10) {
            thread::sleep(Duration::from_millis(1));
        }
        // Release: the vCPUs' Acquire load.
        w.exit_vcpus.store(true, Release);
        unpark_all();
        let reports: Vec<VcpuReport> = vcpus.into_iter().filter_map(|t| t.join().ok()).collect();
        (reports, sends)
    });
    if reports.len() != args.vcpus {
        return Err("a vCPU thread panicked".into());
    }

    // C1: every send was observed by a handler run, and no port is left
    // pending.
    let mut lost = 0u64;
    for &p in ports {
        let Some(l) = w.ledger.get(p.number() as usize) else {
            continue;
        };
        let (sent, seen) = (l.sent.load(Acquire), l.seen.load(Acquire));
        if seen < sent {
            eprintln!(
                "port {}: {} send(s) never observed",
                p.number(),
                sent - seen
            );
            lost += sent - seen;
        }
        if ch.status(p.number()).map_or(true, |s| s.pending) {
            eprintln!("port {}: still pending after quiescing", p.number());
            lost += 1;
        }
    }
    let mut latency = latency_histogram();
    for r in &reports {
        // Same bounds on every histogram: the sum always fits.
        if let Err(e) = latency.add(&r.latency) {
            eprintln!("latency: {e}");
            w.errors.fetch_add(1, Relaxed);
        }
    }
    let handled: u64 = reports.iter().map(|r| r.handled).sum();
    Ok(RunResult {
        name: spec.name.clone(),
        handled_per_s: handled as f64 / args.secs,
        offered_per_s: rate,
        latency,
        vcpus: reports,
        sends,
        moves: w.moves.load(Relaxed),
        lost,
        concurrent: w.concurrent.load(Relaxed),
        lost_wakeups: w.vcpus.iter().map(|v| v.lost_wakeups.load(Relaxed)).sum(),
        errors: w.errors.load(Relaxed),
    })
}

fn describe(spec: &RunSpec, args: &Args) -> String {
    let mut s = match spec.policy {
        Policy::Vcpu0 => "Policy::Vcpu0 (Xen): every port on vCPU 0".to_string(),
        Policy::RoundRobin => "Policy::RoundRobin: ports spread in turn".to_string(),
        Policy::LeastLoaded => "Policy::LeastLoaded: ports to the vCPU with fewest".to_string(),
    };
    if let Some(b) = spec.budget {
        s += &format!("; upcalls of at most {b} handler runs");
    }
    if spec.lateeoi {
        s += "; late EOI after each upcall (a port runs at most once per upcall)";
    }
    if spec.rebalance {
        s += &format!("; rebalance every {} ms", args.rebalance_ms);
    }
    s
}

fn print_run(r: &RunResult, spec: &RunSpec, args: &Args) {
    println!("\n== {} — {}", r.name, describe(spec, args));
    println!("  vcpu     handled   share   upcalls   longest upcall (CPU / wall)   busiest port (its share)");
    let total = r.handled();
    for (v, rep) in r.vcpus.iter().enumerate() {
        let busiest = rep
            .per_port
            .iter()
            .enumerate()
            .max_by_key(|&(n, &c)| (c, std::cmp::Reverse(n)))
            .filter(|&(_, &c)| c > 0)
            .map_or_else(
                || "-".to_string(),
                |(n, &c)| format!("{n} ({:.1}%)", 100.0 * c as f64 / rep.handled.max(1) as f64),
            );
        println!(
            "  {v:>4} {:>11} {:>6.1}% {:>9}   {:>12} / {:<12}   {busiest}",
            rep.handled,
            if total == 0 {
                0.0
            } else {
                100.0 * rep.handled as f64 / total as f64
            },
            rep.upcalls,
            ms(rep.longest_cpu_ns),
            ms(rep.longest_wall_ns),
        );
    }
    println!(
        "  latency send→handle: p50 {}  p99 {}  p99.9 {}   events {:.0}k/s (offered {:.0}k/s, {} sends{})",
        opt_ms(quantile(&r.latency, 0.5)),
        opt_ms(quantile(&r.latency, 0.99)),
        opt_ms(quantile(&r.latency, 0.999)),
        r.handled_per_s / 1e3,
        r.offered_per_s / 1e3,
        r.sends,
        if spec.rebalance { format!(", {} ports moved", r.moves) } else { String::new() },
    );
    println!(
        "  lost={} concurrent={} spurious={} lost_wakeups={} errors={}",
        r.lost,
        r.concurrent,
        r.spurious(),
        r.lost_wakeups,
        r.errors
    );
}

fn print_summary(results: &[RunResult]) {
    let col = |f: &dyn Fn(&RunResult) -> String| {
        results
            .iter()
            .map(|r| format!("{:>15}", f(r)))
            .collect::<Vec<_>>()
            .join("")
    };
    println!("\n== side by side");
    println!("  {:<28}{}", "", col(&|r| r.name.clone()));
    println!(
        "  {:<28}{}",
        "vCPU0 longest upcall (CPU)",
        col(&|r| ms(r.vcpus[0].longest_cpu_ns))
    );
    println!(
        "  {:<28}{}",
        "longest upcall, any vCPU",
        col(&|r| ms(r.vcpus.iter().map(|v| v.longest_cpu_ns).max().unwrap_or(0)))
    );
    println!(
        "  {:<28}{}",
        "vCPU0 share",
        col(&|r| format!("{:.1}%", r.share(0)))
    );
    println!(
        "  {:<28}{}",
        "events handled/s",
        col(&|r| format!("{:.0}k", r.handled_per_s / 1e3))
    );
    println!(
        "  {:<28}{}",
        "latency p50",
        col(&|r| opt_ms(quantile(&r.latency, 0.5)))
    );
    println!(
        "  {:<28}{}",
        "latency p99",
        col(&|r| opt_ms(quantile(&r.latency, 0.99)))
    );
    println!(
        "  {:<28}{}",
        "latency p99.9",
        col(&|r| opt_ms(quantile(&r.latency, 0.999)))
    );
    println!("  {:<28}{}", "lost", col(&|r| r.lost.to_string()));
    println!(
        "  {:<28}{}",
        "concurrent",
        col(&|r| r.concurrent.to_string())
    );
    println!("  {:<28}{}", "spurious", col(&|r| r.spurious().to_string()));
    println!(
        "  {:<28}{}",
        "lost wake-ups",
        col(&|r| r.lost_wakeups.to_string())
    );
}

fn main() -> ExitCode {
    let args = parse_args();
    if args.interdomain {
        return interdomain::main(&args);
    }
    // Enough port numbers for the storm (port 0 is never bound).
    let nr_ports = args.ports + 1;
    let words = nr_ports.div_ceil(64);
    let make_2l = || TwoLevel::new(OwnedMemory::new(words, args.vcpus));
    let make_fifo = || Fifo::new(OwnedFifo::new(nr_ports as u32, args.vcpus));

    let per_us = calibrate_work();
    let work_iters = (args.work_us * per_us).round() as u64;
    let cap = match args.abi {
        Abi::TwoLevel => capacity(make_2l(), args.ports, work_iters),
        Abi::Fifo => capacity(make_fifo(), args.ports, work_iters),
    };
    let rate = args.load * cap;
    let cores = thread::available_parallelism().map_or(0, |n| n.get());
    println!(
        "storm: {} ABI, {} vCPUs, {} ports, {} senders, {} s per run; {cores} cores here",
        match args.abi {
            Abi::TwoLevel => "2-level",
            Abi::Fifo => "FIFO",
        },
        args.vcpus,
        args.ports,
        args.senders,
        args.secs
    );
    println!(
        "  handler work {} µs; one vCPU handles {:.0}k events/s; offered {:.0}k sends/s = {:.2}x that",
        args.work_us,
        cap / 1e3,
        rate / 1e3,
        args.load
    );
    if cores != 0 && cores < args.vcpus + 1 {
        println!(
            "  (fewer cores than vCPU threads: wall times include preemption; the CPU times do not)"
        );
    }

    let mut results = Vec::new();
    for spec in &args.runs {
        let r = match args.abi {
            Abi::TwoLevel => run(&args, spec, make_2l(), rate, work_iters),
            Abi::Fifo => run(&args, spec, make_fifo(), rate, work_iters),
        };
        match r {
            Ok(r) => {
                print_run(&r, spec, &args);
                results.push(r);
            }
            Err(msg) => {
                eprintln!("storm ({}): {msg}", spec.name);
                return ExitCode::FAILURE;
            }
        }
    }
    if results.len() > 1 {
        print_summary(&results);
    }
    if results.iter().all(RunResult::ok) {
        ExitCode::SUCCESS
    } else {
        eprintln!("storm: contract violated");
        ExitCode::FAILURE
    }
}

/// The interdomain storm (`--interdomain`): the hypervisor side
/// ([`Domains`]) under the set-up race, `bind_vcpu` and close/re-bind, with
/// a Linux-like frontend guest written here over the deliver half of its
/// memory.
///
/// Domains: the frontend, dom1, with `--vcpus` vCPU threads; `--backends`
/// backends (dom0, dom2, dom3, ...), each offering `--channels` ports to
/// the frontend (`alloc_unbound`) and sending on them from `--senders`
/// threads at `--rate` sends per second in all, from the start: before the
/// frontend has bound anything, while it binds, and on. A channel is one
/// backend port; the frontend connects it to one of its own ports and may
/// close that end and connect the channel again later, each connection a
/// *life* with a generation of its own.
///
/// The frontend's guest, as Linux's: every port of its memory masked at
/// boot (the FIFO event array's pages mapped and masked first); a table
/// from its port numbers to (channel, generation), and the vCPU it binds
/// each port to (Linux's `cpu_evtchn_mask`). Its vCPU threads run upcalls
/// (`Deliver::scan_bounded`, `--budget` handler runs each) and halt until
/// kicked; on 2-level an upcall leaves a port bound to another vCPU alone
/// (Linux's scan sees only its own), on FIFO it runs every event it takes
/// off its queues where it found it (Linux's `consume_one`). A control
/// thread (the frontend's control plane) picks a channel at random every
/// `--churn-us`: an unbound one is bound (`bind_interdomain`, Xen's
/// `BindMode::Conservative` and `BindMode::Atomic` on a random vCPU in
/// turn), then entered in the table and unmasked (its own conditional
/// unmask, `EVTCHNOP_unmask` when pending); a connected one is closed (one
/// time in three: masked, `Domains::close`, removed from the table, then a
/// grace period that waits for every upcall that may still hold the old
/// entry, as Linux's event-channel lock does) or moved (masked,
/// `Host::bind_vcpu`, table, unmasked). About a quarter of the channels
/// are unbound at any time, and the backends send into them.
///
/// Accounting: each sender counts a send on its channel (`sent`) before
/// `Domains::send`, and `done` after it; a handler run reads `sent` and
/// records the highest value it saw in the life's record (its generation
/// and that count, one word). When the frontend closes a life it reads
/// `sent` (the life's `floor`): a send counted beyond it cannot have
/// raised the closed end (it would have held the backend's lock before the
/// close took it, and the close's return would show its count), so it is
/// dropped while unbound or raises the next life. The checks:
///
/// * `lost` (C1): at the end (senders stopped, every upcall drained) every
///   connected life whose channel was sent on past its floor has seen the
///   last send (counted: the sends between the floor, or the last one
///   seen, and the last). This is checked twice: on the lives the storm
///   left, and after a final set-up round in which the frontend closes
///   every channel, each backend sends once more (dropped: nobody is
///   connected) and the frontend binds every channel again, so each last
///   send exists only as the conservative event or the atomic bind's
///   replay.
/// * `replay_missing`: an atomic bind after which the port is not pending
///   (still masked, nobody can have taken it), although a send past the
///   floor had returned (`done`) before the bind began: that send was
///   dropped, so the port is marked, and the bind must replay it.
/// * `no_conservative`: a conservative bind that left the new port not
///   pending.
/// * `stale`: a frontend port found pending while free (after its close,
///   before its next bind, and every free port at the end): a raise of a
///   closed channel, which would land on the next life of the number.
/// * `crossed`: a handler run for a life that has ended (its generation is
///   not the channel's current one).
/// * `wrong_status`: after a bind or a move, `status` of either end not
///   what was asked (kind, peer, notify vCPU).
/// * `still_pending` (a connected port pending once every upcall is
///   drained), lost wake-ups, errors.
mod interdomain {
    use std::sync::atomic::AtomicU32;

    use evtchn::xen::evtchnop::DomId;
    use evtchn::{BindMode, Deliver, Delivery, Domain, Domains, GuestUnmask, Host, PortKind};

    use super::*;

    /// The frontend's domain id.
    const FRONT: DomId = 1;
    /// Low bits of a life word: the highest send count its runs saw.
    const SEEN_BITS: u32 = 40;
    const SEEN: u64 = (1 << SEEN_BITS) - 1;
    /// Generations wrap at 2^24 (a life word's high bits).
    const GEN_MASK: u64 = (1 << (64 - SEEN_BITS)) - 1;

    /// Backend `i`'s domain id: 0, 2, 3, ... (the frontend is 1).
    fn backend_id(i: usize) -> DomId {
        let i = DomId::try_from(i).unwrap_or(DomId::MAX);
        if i == 0 {
            0
        } else {
            i.saturating_add(1)
        }
    }

    /// One channel: a backend's port, and its accounting.
    #[repr(align(128))]
    struct Chan {
        dom: DomId,
        port: u32,
        /// Sends counted so far (before each send).
        sent: AtomicU64,
        /// Sends returned so far.
        done: AtomicU64,
        /// The current life: its generation above [`SEEN_BITS`], the
        /// highest `sent` a run of it observed below.
        life: AtomicU64,
    }

    /// A vCPU's read-side section: odd while an upcall runs.
    #[repr(align(128))]
    #[derive(Default)]
    struct Section(AtomicU64);

    /// What the threads share.
    struct World<'k, A: PortOps> {
        doms: Domains<A, &'k Kicker>,
        kicker: &'k Kicker,
        chans: Vec<Chan>,
        /// The frontend guest's table, by port number: 0 when free, else
        /// the generation above bit 32 and the channel index plus one.
        entry: Vec<AtomicU64>,
        /// The vCPU the guest binds each port to.
        binding: Vec<AtomicU32>,
        sections: Vec<Section>,
        /// FIFO (Linux's `consume_one`): an event found on this vCPU for a
        /// port bound elsewhere runs here; 2-level: it is left alone.
        run_foreign_here: bool,
        budget: usize,
        work_iters: u64,
        self_check: Option<SelfCheck>,
        stop_senders: AtomicBool,
        stop_control: AtomicBool,
        exit_vcpus: AtomicBool,
        errors: AtomicU64,
    }

    impl<'k, A: PortOps> World<'k, A> {
        fn front(&self) -> &Host<A, &'k Kicker> {
            self.doms
                .host(FRONT)
                .expect("the frontend domain was added")
        }

        fn error(&self, what: std::fmt::Arguments<'_>) {
            eprintln!("interdomain: {what}");
            // Relaxed: a count, read after the threads are joined.
            self.errors.fetch_add(1, Relaxed);
        }

        /// One send by channel `c`'s backend; the calling thread is the
        /// channel's only sender.
        fn send(&self, c: usize) {
            let ch = &self.chans[c];
            // Relaxed: this thread is the only writer.
            let k = ch.sent.load(Relaxed) + 1;
            // Relaxed: the send below publishes it: to the handler by its
            // raise (a Release read-modify-write), to a bind or close by
            // the release of the backend's lock, which the send takes both
            // to raise the peer and to drop on an unbound port.
            ch.sent.store(k, Relaxed);
            let r = if self.self_check == Some(SelfCheck::UnlockedSend) {
                self.send_unlocked(ch)
            } else {
                self.doms.send(ch.dom, ch.port)
            };
            if let Err(e) = r {
                self.error(format_args!("send dom{}:{}: {e}", ch.dom, ch.port));
            }
            // Release: a control thread that reads `k` (Acquire) before a
            // bind knows this send's route came before that bind.
            ch.done.store(k, Release);
        }

        /// `--self-check unlocked-send`: the send of a hypervisor that reads
        /// the peer without holding the sender's lock, preempted before it
        /// raises the port it read.
        fn send_unlocked(&self, ch: &Chan) -> Result<(), evtchn::Error> {
            let st = self.doms.status(ch.dom, ch.port)?;
            let PortKind::Interdomain { remote, port } = st.kind else {
                return self.doms.send(ch.dom, ch.port);
            };
            thread::yield_now();
            let fe = self.doms.host(remote)?;
            let vcpu = fe.status(port).map_or(0, |s| s.vcpu);
            if let Some(k) = fe.abi().set_pending(port, || vcpu)?.kick() {
                self.kicker.kick(k);
            }
            Ok(())
        }

        /// Waits until no upcall that began before this call still runs:
        /// after it, no vCPU holds a table entry read before it.
        fn grace(&self) {
            for s in &self.sections {
                // SeqCst: with the vCPU's SeqCst increments and table loads,
                // and the caller's SeqCst table store before this load: an
                // upcall whose start this load does not see reads the new
                // table entry.
                let s0 = s.0.load(SeqCst);
                if s0 % 2 == 1 {
                    // SeqCst: as above.
                    while s.0.load(SeqCst) == s0 {
                        thread::yield_now();
                    }
                }
            }
        }

        /// Whether every vCPU is idle for good, once the senders and the
        /// control plane have stopped: no upcall ran between the two reads
        /// of the sections (only an upcall raises then: a FIFO relink, a
        /// budget's hand-back) and every upcall flag read clear meanwhile.
        fn quiescent(&self) -> bool {
            // SeqCst (both reads): one total order with the vCPUs'
            // increments and their flag clears.
            let before: Vec<u64> = self.sections.iter().map(|s| s.0.load(SeqCst)).collect();
            if before.iter().any(|s| s % 2 == 1) {
                return false;
            }
            let fe = self.front();
            let idle = (0..self.sections.len() as u32)
                .all(|v| !fe.abi().upcall_pending(v).unwrap_or(true));
            idle && self
                .sections
                .iter()
                .zip(&before)
                .all(|(s, b)| s.0.load(SeqCst) == *b)
        }

        /// Waits (10 s at most) until [`World::quiescent`].
        fn drain(&self) -> bool {
            let t = Instant::now();
            while t.elapsed() < Duration::from_secs(10) {
                if self.quiescent() {
                    return true;
                }
                thread::sleep(Duration::from_millis(1));
            }
            false
        }
    }

    /// What one vCPU counted.
    #[derive(Default)]
    struct VcpuTally {
        upcalls: u64,
        runs: u64,
        /// Runs that saw a send no earlier run of the life had seen.
        fresh: u64,
        crossed: u64,
        /// Ports offered while free (not pending: a close cleared them).
        free_offers: u64,
        /// 2-level: ports offered here while bound elsewhere, left alone.
        foreign: u64,
        lost_wakeups: u64,
    }

    /// The guest's decision on port `p`, which vCPU `v`'s scan offers.
    fn deliver<A: PortOps>(w: &World<'_, A>, v: u32, p: u32, t: &mut VcpuTally) -> Delivery {
        // SeqCst: the table read of the grace period (see `World::grace`).
        let e = w.entry.get(p as usize).map_or(0, |e| e.load(SeqCst));
        if e == 0 {
            t.free_offers += 1;
            return Delivery::Skipped;
        }
        // Acquire: the control thread stores the binding before its unmask,
        // whose raise (or the raise of a send that read the cleared mask)
        // offered the port here.
        if !w.run_foreign_here && w.binding[p as usize].load(Acquire) != v {
            t.foreign += 1;
            return Delivery::Skipped;
        }
        match w.front().abi().test_and_clear_pending(p) {
            Ok(true) => {}
            Ok(false) => return Delivery::Skipped,
            Err(e) => {
                w.error(format_args!("vcpu{v}: test_and_clear_pending({p}): {e}"));
                return Delivery::Skipped;
            }
        }
        handle(w, t, e);
        Delivery::Handled
    }

    /// The handler of the life that table entry `e` names: records the
    /// highest send count it observes.
    fn handle<A: PortOps>(w: &World<'_, A>, t: &mut VcpuTally, e: u64) {
        t.runs += 1;
        let gen = e >> 32;
        let Some(ch) = usize::try_from(e & 0xffff_ffff)
            .ok()
            .and_then(|c| c.checked_sub(1))
            .and_then(|c| w.chans.get(c))
        else {
            return;
        };
        // Acquire: the pending clear (Acquire) synchronised with the raise,
        // which follows the count of the send that made it.
        let seen = ch.sent.load(Acquire);
        // Relaxed: a read-modify-write reads the latest life word (the
        // control thread stored the generation before the table entry this
        // run read); the final check reads it after the drain's SeqCst.
        let r = ch.life.fetch_update(Relaxed, Relaxed, |l| {
            (l >> SEEN_BITS == gen && seen > l & SEEN).then_some((gen << SEEN_BITS) | seen)
        });
        match r {
            Ok(_) => t.fresh += 1,
            Err(l) if l >> SEEN_BITS != gen => {
                t.crossed += 1;
                eprintln!(
                    "interdomain: a run for dom{}:{} generation {gen} after generation {} began",
                    ch.dom,
                    ch.port,
                    l >> SEEN_BITS
                );
            }
            Err(_) => {}
        }
        work(w.work_iters);
    }

    /// One vCPU of the frontend: budgeted upcalls, halting when idle.
    fn run_vcpu<A: PortOps>(w: &World<'_, A>, v: u32) -> VcpuTally {
        w.kicker.register(v);
        let fe = w.front();
        let section = &w.sections[v as usize].0;
        let mut cursor = <A as Deliver>::Cursor::default();
        let mut t = VcpuTally::default();
        loop {
            // SeqCst: opens the read-side section (see `World::grace`).
            section.fetch_add(1, SeqCst);
            // The budget counts handler runs: the ports a 2-level scan
            // offers here while they are bound elsewhere (pending for their
            // own vCPU) are skipped at no cost, as Linux's scan never sees
            // them (its per-CPU mask filters them out first).
            let handled = std::cell::Cell::new(0usize);
            let r = fe.abi().scan_bounded(
                v,
                &mut cursor,
                || handled.get() < w.budget,
                |p| {
                    let d = deliver(w, v, p, &mut t);
                    if d == Delivery::Handled {
                        handled.set(handled.get() + 1);
                    }
                    d
                },
                |k| w.kicker.kick(k),
            );
            // SeqCst: closes it.
            section.fetch_add(1, SeqCst);
            t.upcalls += 1;
            if let Err(e) = r {
                w.error(format_args!("vcpu{v}: upcall: {e}"));
            }
            // Acquire: pairs with the run's Release store.
            if w.exit_vcpus.load(Acquire) {
                return t;
            }
            let pending = || fe.abi().upcall_pending(v).unwrap_or(true);
            if w.kicker.halt(v, pending, PARK_TIMEOUT, KICK_GRACE) == Halt::LostWakeup {
                t.lost_wakeups += 1;
                eprintln!("interdomain: vcpu{v}: lost wake-up");
            }
        }
    }

    /// One backend sender: sends on its channels `mine`, at random, at
    /// `rate` per second. Returns its sends.
    fn run_sender<A: PortOps>(w: &World<'_, A>, mine: &[usize], rate: f64, seed: u64) -> u64 {
        let mut rng = Rng::new(seed);
        let start = Instant::now();
        let mut sent = 0u64;
        // Relaxed: a flag; the join orders what follows.
        while !w.stop_senders.load(Relaxed) {
            let due = (start.elapsed().as_secs_f64() * rate) as u64;
            if sent >= due {
                thread::sleep(Duration::from_micros(50));
                continue;
            }
            for _ in 0..(due - sent).min(256) {
                w.send(mine[rng.below(mine.len() as u64) as usize]);
                sent += 1;
            }
        }
        sent
    }

    /// A channel as the frontend's control plane sees it.
    #[derive(Clone, Copy)]
    enum Life {
        /// Not connected; `floor`: the send count read after its last
        /// close (0 at first).
        Unbound { floor: u64 },
        Connected {
            fp: u32,
            gen: u64,
            floor: u64,
            conservative: bool,
        },
    }

    /// The frontend's control plane and what it counted.
    struct Frontend {
        lives: Vec<Life>,
        /// Ports closed since the last bind: free, each must stay not
        /// pending.
        quarantine: Vec<u32>,
        next_gen: u64,
        next_atomic: bool,
        rng: Rng,
        conservative_binds: u64,
        atomic_binds: u64,
        /// Atomic binds with a dropped send to replay (`done` past the
        /// floor before the bind).
        replays_due: u64,
        closes: u64,
        moves: u64,
        stale: u64,
        no_conservative: u64,
        replay_missing: u64,
        wrong_status: u64,
    }

    impl Frontend {
        fn new(channels: usize) -> Self {
            Frontend {
                lives: vec![Life::Unbound { floor: 0 }; channels],
                quarantine: Vec::new(),
                next_gen: 1,
                next_atomic: false,
                rng: Rng::new(0x1d0f),
                conservative_binds: 0,
                atomic_binds: 0,
                replays_due: 0,
                closes: 0,
                moves: 0,
                stale: 0,
                no_conservative: 0,
                replay_missing: 0,
                wrong_status: 0,
            }
        }

        /// The guest's unmask: its own conditional one, the hypercall when
        /// the port is pending.
        fn unmask<A: PortOps>(w: &World<'_, A>, fp: u32) {
            let fe = w.front();
            match fe.abi().try_unmask(fp) {
                Ok(GuestUnmask::Done) => {}
                Ok(GuestUnmask::Hypercall) => {
                    if let Err(e) = fe.unmask(fp) {
                        w.error(format_args!("EVTCHNOP_unmask {fp}: {e}"));
                    }
                }
                Err(e) => w.error(format_args!("try_unmask {fp}: {e}")),
            }
        }

        fn mask<A: PortOps>(w: &World<'_, A>, fp: u32) {
            if let Err(e) = w.front().abi().mask(fp) {
                w.error(format_args!("mask {fp}: {e}"));
            }
        }

        /// A free port found pending: a raise of a closed channel.
        fn check_free<A: PortOps>(&mut self, w: &World<'_, A>, fp: u32, when: &str) {
            if w.front().abi().is_pending(fp).unwrap_or(false) {
                self.stale += 1;
                eprintln!("interdomain: dom1 port {fp} pending while free ({when})");
            }
        }

        /// Checks that both ends of channel `c` are connected to each
        /// other and the frontend's notifies `vcpu`.
        fn check_status<A: PortOps>(&mut self, w: &World<'_, A>, c: usize, fp: u32, vcpu: u32) {
            let ch = &w.chans[c];
            let front = w.doms.status(FRONT, fp);
            let back = w.doms.status(ch.dom, ch.port);
            let ok = matches!(&front, Ok(s) if s.vcpu == vcpu
                && s.kind == PortKind::Interdomain { remote: ch.dom, port: ch.port })
                && matches!(&back, Ok(s)
                    if s.kind == PortKind::Interdomain { remote: FRONT, port: fp });
            if !ok {
                self.wrong_status += 1;
                eprintln!(
                    "interdomain: dom1:{fp} (vCPU {vcpu} asked) / dom{}:{}: {front:?} / {back:?}",
                    ch.dom, ch.port
                );
            }
        }

        /// Connects channel `c` (unbound): the next mode in turn.
        fn bind<A: PortOps>(&mut self, w: &World<'_, A>, c: usize) {
            let Life::Unbound { floor } = self.lives[c] else {
                return;
            };
            for fp in std::mem::take(&mut self.quarantine) {
                self.check_free(w, fp, "before a bind");
            }
            let ch = &w.chans[c];
            let nr_vcpus = w.sections.len() as u64;
            let (mode, vcpu) = if self.next_atomic {
                let v = self.rng.below(nr_vcpus) as u32;
                (BindMode::Atomic { vcpu: v }, v)
            } else {
                (BindMode::Conservative, 0)
            };
            self.next_atomic = !self.next_atomic;
            // Acquire: pairs with the sender's Release: the send counted
            // `done` routed before this bind.
            let done = ch.done.load(Acquire);
            let fp = match w.doms.bind_interdomain(FRONT, ch.dom, ch.port, mode) {
                Ok(fp) => fp,
                Err(e) => {
                    w.error(format_args!(
                        "bind_interdomain dom{}:{}: {e}",
                        ch.dom, ch.port
                    ));
                    return;
                }
            };
            self.check_status(w, c, fp, vcpu);
            // The port is masked (every free port is): nobody has taken
            // its event.
            let pending = w.front().abi().is_pending(fp).unwrap_or(false);
            let conservative = mode == BindMode::Conservative;
            if conservative {
                self.conservative_binds += 1;
                if !pending {
                    self.no_conservative += 1;
                    eprintln!("interdomain: conservative bind of dom1:{fp}: not pending");
                }
            } else {
                self.atomic_binds += 1;
                if done > floor {
                    // Send `done` came after the close (it is past the
                    // floor) and returned before the bind: it was dropped
                    // and the port marked.
                    self.replays_due += 1;
                    if !pending {
                        self.replay_missing += 1;
                        eprintln!(
                            "interdomain: atomic bind of dom{}:{} as dom1:{fp}: send {done} \
                             dropped before it, not replayed",
                            ch.dom, ch.port
                        );
                    }
                }
            }
            let gen = self.next_gen & GEN_MASK;
            self.next_gen += 1;
            // Release: before the table entry; see `handle`.
            ch.life.store(gen << SEEN_BITS, Release);
            // Release: pairs with `deliver`'s Acquire.
            w.binding[fp as usize].store(vcpu, Release);
            if w.self_check == Some(SelfCheck::ClearOnBind) {
                if let Err(e) = w.front().abi().clear_pending(fp) {
                    w.error(format_args!("clear_pending {fp}: {e}"));
                }
            }
            // SeqCst: the table store of the grace period.
            w.entry[fp as usize].store((gen << 32) | (c as u64 + 1), SeqCst);
            Self::unmask(w, fp);
            self.lives[c] = Life::Connected {
                fp,
                gen,
                floor,
                conservative,
            };
        }

        /// Closes the frontend's end of channel `c` (connected).
        fn close<A: PortOps>(&mut self, w: &World<'_, A>, c: usize) {
            let Life::Connected { fp, .. } = self.lives[c] else {
                return;
            };
            Self::mask(w, fp);
            if let Err(e) = w.doms.close(FRONT, fp) {
                w.error(format_args!("close dom1:{fp}: {e}"));
                return;
            }
            // SeqCst: the table store of the grace period.
            w.entry[fp as usize].store(0, SeqCst);
            w.grace();
            self.check_free(w, fp, "after its close");
            // Acquire: a send that raised the closed end held the
            // backend's lock before the close took it, so its count is
            // seen here.
            let floor = w.chans[c].sent.load(Acquire);
            self.lives[c] = Life::Unbound { floor };
            self.quarantine.push(fp);
            self.closes += 1;
        }

        /// Moves the frontend's end of channel `c` (connected) to `vcpu`,
        /// masked, as Linux does.
        fn move_to<A: PortOps>(&mut self, w: &World<'_, A>, c: usize, vcpu: u32) {
            let Life::Connected { fp, .. } = self.lives[c] else {
                return;
            };
            Self::mask(w, fp);
            if let Err(e) = w.front().bind_vcpu(fp, vcpu) {
                w.error(format_args!("bind_vcpu dom1:{fp} to {vcpu}: {e}"));
            }
            self.check_status(w, c, fp, vcpu);
            // Release: pairs with `deliver`'s Acquire.
            w.binding[fp as usize].store(vcpu, Release);
            Self::unmask(w, fp);
            self.moves += 1;
        }

        /// One operation on a channel picked at random.
        fn churn<A: PortOps>(&mut self, w: &World<'_, A>) {
            let c = self.rng.below(self.lives.len() as u64) as usize;
            match self.lives[c] {
                Life::Unbound { .. } => self.bind(w, c),
                Life::Connected { .. } if self.rng.chance(1, 3) => self.close(w, c),
                Life::Connected { .. } => {
                    let v = self.rng.below(w.sections.len() as u64) as u32;
                    self.move_to(w, c, v);
                }
            }
        }

        /// C1 on every connected life, the free ports, and connected ports
        /// left pending; after a drain. Returns the lives checked, sends
        /// lost and ports left pending.
        fn check<A: PortOps>(&mut self, w: &World<'_, A>) -> (u64, u64, u64) {
            let (mut lives, mut lost, mut left) = (0, 0, 0);
            let fe = w.front();
            for (c, life) in self.lives.iter().enumerate() {
                let Life::Connected {
                    fp,
                    gen,
                    floor,
                    conservative,
                } = *life
                else {
                    continue;
                };
                lives += 1;
                let ch = &w.chans[c];
                // Acquire (both): after the senders were joined and the
                // drain; the drain's SeqCst reads ordered the runs before.
                let sent = ch.sent.load(Acquire);
                let l = ch.life.load(Acquire);
                let seen = if l >> SEEN_BITS == gen { l & SEEN } else { 0 };
                if sent > floor && seen < sent {
                    lost += sent - seen.max(floor);
                    eprintln!(
                        "interdomain: dom{}:{} -> dom1:{fp} ({}): send {sent} never observed \
                         (last seen {seen}, floor {floor})",
                        ch.dom,
                        ch.port,
                        if conservative {
                            "conservative"
                        } else {
                            "atomic"
                        }
                    );
                }
                if fe.abi().is_pending(fp).unwrap_or(true) {
                    left += 1;
                    eprintln!("interdomain: dom1:{fp} still pending after the drain");
                }
            }
            for fp in 1..fe.nr_ports() {
                // Relaxed: only this thread writes the table now.
                if w.entry[fp as usize].load(Relaxed) == 0 {
                    self.check_free(w, fp, "at the end");
                }
            }
            self.quarantine.clear();
            (lives, lost, left)
        }
    }

    /// The frontend's control thread: binds every channel, then churns
    /// until stopped.
    fn run_control<A: PortOps>(w: &World<'_, A>, mut f: Frontend, pause: Duration) -> Frontend {
        for c in 0..f.lives.len() {
            f.bind(w, c);
        }
        // Relaxed: a flag; the join orders what follows.
        while !w.stop_control.load(Relaxed) {
            if !pause.is_zero() {
                thread::sleep(pause);
            }
            f.churn(w);
        }
        f
    }

    /// What a run found.
    struct Outcome {
        sends: u64,
        vcpus: Vec<VcpuTally>,
        f: Frontend,
        /// Lives checked at the end of the storm and after the final round.
        lives: (u64, u64),
        lost: u64,
        left: u64,
        drained: bool,
        errors: u64,
        bad_kicks: u64,
    }

    fn run<A: PortOps>(
        args: &Args,
        work_iters: u64,
        run_foreign_here: bool,
        make: impl Fn(u32, usize) -> A,
    ) -> Outcome {
        let nr_chans = args.backends * args.channels;
        let kicker = Kicker::new(args.vcpus);
        // Nothing raises a backend's ports (the frontend never sends).
        let quiet = Kicker::new(1);
        let mut doms = Domains::new();
        let front = Host::new(make(nr_chans as u32 + 1, args.vcpus), &kicker);
        doms.add(FRONT, Domain::new(front))
            .expect("distinct domain ids below DOMID_FIRST_RESERVED");
        for b in 0..args.backends {
            let host = Host::new(make(args.channels as u32 + 1, 1), &quiet);
            doms.add(backend_id(b), Domain::new(host))
                .expect("distinct domain ids below DOMID_FIRST_RESERVED");
        }
        let mut chans = Vec::with_capacity(nr_chans);
        for b in 0..args.backends {
            for _ in 0..args.channels {
                let dom = backend_id(b);
                let port = doms
                    .alloc_unbound(dom, FRONT)
                    .expect("a backend has a port per channel");
                chans.push(Chan {
                    dom,
                    port,
                    sent: AtomicU64::new(0),
                    done: AtomicU64::new(0),
                    life: AtomicU64::new(0),
                });
            }
        }
        let nr_front = doms.host(FRONT).map_or(0, |h| h.nr_ports());
        let w = World {
            doms,
            kicker: &kicker,
            chans,
            entry: (0..nr_front).map(|_| AtomicU64::new(0)).collect(),
            binding: (0..nr_front).map(|_| AtomicU32::new(0)).collect(),
            sections: (0..args.vcpus).map(|_| Section::default()).collect(),
            run_foreign_here,
            budget: args.budget,
            work_iters,
            self_check: args.self_check,
            stop_senders: AtomicBool::new(false),
            stop_control: AtomicBool::new(false),
            exit_vcpus: AtomicBool::new(false),
            errors: AtomicU64::new(0),
        };
        let w = &w;
        // The guest's boot: the FIFO event array mapped in full (its
        // EVTCHNOP_expand_array), every port masked (Linux's
        // `init_array_page`, `xen_evtchn_mask_all`).
        let fe = w.front();
        for p in 1..nr_front {
            if let Err(e) = fe.abi().prepare(p).and_then(|()| fe.abi().mask(p)) {
                w.error(format_args!("boot: port {p}: {e}"));
            }
        }
        let pause = Duration::from_micros(args.churn_us);
        let period = Duration::from_secs_f64(args.secs);
        let n_senders = args.backends * args.senders;
        let rate = args.rate / n_senders as f64;

        let (sends, vcpus, f, lives, lost, left, drained) = thread::scope(|s| {
            let vcpus: Vec<_> = (0..args.vcpus as u32)
                .map(|v| {
                    thread::Builder::new()
                        .name(format!("dom1-vcpu{v}"))
                        .spawn_scoped(s, move || run_vcpu(w, v))
                        .expect("spawn a vCPU thread")
                })
                .collect();
            let senders: Vec<_> = (0..n_senders)
                .map(|i| {
                    let (b, k) = (i / args.senders, i % args.senders);
                    let mine: Vec<usize> = (b * args.channels..(b + 1) * args.channels)
                        .filter(|c| c % args.senders == k)
                        .collect();
                    thread::Builder::new()
                        .name(format!("dom{}-sender{k}", backend_id(b)))
                        .spawn_scoped(s, move || {
                            if mine.is_empty() {
                                0
                            } else {
                                run_sender(w, &mine, rate, 0x5e2d + i as u64)
                            }
                        })
                        .expect("spawn a sender thread")
                })
                .collect();
            let control = thread::Builder::new()
                .name("dom1-control".into())
                .spawn_scoped(s, move || run_control(w, Frontend::new(nr_chans), pause))
                .expect("spawn the control thread");
            thread::sleep(period);

            // Quiesce: the control plane stops, then the senders; the
            // upcalls drain.
            w.stop_control.store(true, Relaxed);
            let mut f = control.join().expect("the control thread");
            w.stop_senders.store(true, Relaxed);
            let sends: u64 = senders.into_iter().map(|t| t.join().unwrap_or(0)).sum();
            let mut drained = w.drain();
            let (lives_storm, mut lost, mut left) = f.check(w);

            // The final set-up round: every channel closed, one more send
            // on each (dropped), every channel bound again.
            for c in 0..nr_chans {
                f.close(w, c);
            }
            for c in 0..nr_chans {
                w.send(c);
            }
            for c in 0..nr_chans {
                f.bind(w, c);
            }
            drained &= w.drain();
            let (lives_final, lost2, left2) = f.check(w);
            lost += lost2;
            left += left2;

            // Release: pairs with the vCPUs' Acquire load.
            w.exit_vcpus.store(true, Release);
            kicker.stop();
            let vcpus: Vec<VcpuTally> = vcpus.into_iter().filter_map(|t| t.join().ok()).collect();
            (
                sends + nr_chans as u64,
                vcpus,
                f,
                (lives_storm, lives_final),
                lost,
                left,
                drained,
            )
        });
        if vcpus.len() != args.vcpus {
            w.error(format_args!("a vCPU thread panicked"));
        }
        Outcome {
            sends,
            vcpus,
            f,
            lives,
            lost,
            left,
            drained,
            // Relaxed: after the joins.
            errors: w.errors.load(Relaxed),
            bad_kicks: kicker.bad_kicks() + quiet.total_kicks(),
        }
    }

    pub(super) fn main(args: &Args) -> ExitCode {
        let per_us = calibrate_work();
        let work_iters = (args.work_us * per_us).round() as u64;
        let cores = thread::available_parallelism().map_or(0, |n| n.get());
        let abi = match args.abi {
            Abi::TwoLevel => "2-level",
            Abi::Fifo => "FIFO",
        };
        let backs: Vec<String> = (0..args.backends)
            .map(|b| format!("dom{}", backend_id(b)))
            .collect();
        println!(
            "storm --interdomain: {abi} ABI; frontend dom1 with {} vCPUs; backends {} with {} \
             channels and {} senders each; {:.0} sends/s; handler work {} µs; {} s; {cores} cores here",
            args.vcpus,
            backs.join(", "),
            args.channels,
            args.senders,
            args.rate,
            args.work_us,
            args.secs
        );
        let o = match args.abi {
            Abi::TwoLevel => run(args, work_iters, false, |ports, vcpus| {
                TwoLevel::new(OwnedMemory::new((ports as usize).div_ceil(64), vcpus))
            }),
            Abi::Fifo => run(args, work_iters, true, |ports, vcpus| {
                Fifo::new(OwnedFifo::new(ports, vcpus))
            }),
        };
        let sum = |f: fn(&VcpuTally) -> u64| o.vcpus.iter().map(f).sum::<u64>();
        let (runs, fresh, crossed) = (sum(|t| t.runs), sum(|t| t.fresh), sum(|t| t.crossed));
        let lost_wakeups = sum(|t| t.lost_wakeups);
        let f = &o.f;
        let violations = o.lost
            + f.stale
            + crossed
            + f.no_conservative
            + f.replay_missing
            + f.wrong_status
            + o.left
            + lost_wakeups
            + o.errors
            + o.bad_kicks
            + u64::from(!o.drained);
        println!(
            "interdomain ({abi}): {} sends, {runs} handler runs ({fresh} saw a new send, {:.1} \
             sends each), {} upcalls ({} offers of a port bound elsewhere and {} of a free port \
             left alone); binds {} conservative + {} atomic ({} with a dropped send to \
             replay), {} closes, {} bind_vcpu moves; lives checked {} + {}",
            o.sends,
            o.sends as f64 / fresh.max(1) as f64,
            sum(|t| t.upcalls),
            sum(|t| t.foreign),
            sum(|t| t.free_offers),
            f.conservative_binds,
            f.atomic_binds,
            f.replays_due,
            f.closes,
            f.moves,
            o.lives.0,
            o.lives.1,
        );
        println!(
            "  lost={} stale={} crossed={crossed} no_conservative={} replay_missing={} \
             wrong_status={} still_pending={} lost_wakeups={lost_wakeups} errors={}{} violations={violations}",
            o.lost,
            f.stale,
            f.no_conservative,
            f.replay_missing,
            f.wrong_status,
            o.left,
            o.errors + o.bad_kicks,
            if o.drained { "" } else { " (no drain)" },
        );
        if let Some(fault) = args.self_check {
            println!(
                "  self-check {}: {}",
                fault
                    .to_possible_value()
                    .map_or("?".into(), |v| v.get_name().to_string()),
                if violations > 0 {
                    "the checks reported the planted fault"
                } else {
                    "NOT reported"
                }
            );
        }
        if violations == 0 {
            ExitCode::SUCCESS
        } else {
            eprintln!("storm: contract violated");
            ExitCode::FAILURE
        }
    }
}
