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

use std::io::{IsTerminal, Write};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::*};
use std::thread;
use std::time::{Duration, Instant};

use clap::builder::RangedU64ValueParser;
use clap::error::ErrorKind;
use clap::{value_parser, CommandFactory, Parser, ValueEnum};
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
    /// Sender threads, 1..=16
    #[arg(long, value_name = "N", default_value_t = 2, value_parser = whole_in(1, 16))]
    senders: usize,
    /// Seconds per run, decimals allowed
    #[arg(long, value_name = "S", default_value_t = 2.5, value_parser = real_in(0.1, 3600.0))]
    secs: f64,
    /// Offered load in multiples of one vCPU's capacity
    #[arg(long, value_name = "X", default_value_t = 1.5, value_parser = real_in(0.01, 100.0))]
    load: f64,
    /// Handler work per event in microseconds
    #[arg(
        long = "work",
        value_name = "US",
        default_value_t = 10.0,
        value_parser = real_in(0.0, 10_000.0)
    )]
    work_us: f64,
    /// Handler runs per upcall in +budget runs
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
}

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
    let mut args = Args::parse();
    match parse_runs(&args.policy, args.budget) {
        Ok(runs) => args.runs = runs,
        Err(msg) => Args::command()
            .error(ErrorKind::ValueValidation, format!("--policy: {msg}"))
            .exit(),
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
