//! evtchn's send beside the two designs a hypervisor author would
//! otherwise write, while another thread rebinds the same port back to
//! back.
//!
//! Functions (the same in both groups):
//!
//! * `evtchn`: `Channels::send` over `TwoLevel<OwnedMemory>`; the rebinder
//!   calls `Channels::set_affinity` (mask, rebind, unmask under the
//!   control-plane lock, as in `benches/rebind.rs`). The send takes no lock.
//! * `mutex table`: one `parking_lot::Mutex` around the whole port table
//!   (QEMU's `port_lock`): a send locks, raises (pending bit; if it was
//!   clear and the port unmasked, the selector bit and upcall flag of the
//!   port's vCPU), unlocks, and returns a kick if the upcall flag went
//!   0 → 1; a rebind locks, changes the port's vCPU and raises a pending,
//!   unmasked port on the new vCPU.
//! * `rwlock trylock`: a `parking_lot::RwLock` per channel (Xen's
//!   `chn->lock`): a send takes it with `try_read` and is omitted when that
//!   fails, as Xen's send paths that may not spin do
//!   (`evtchn_read_trylock`); under the read lock it does the lock-free
//!   2-level raise on the channel's vCPU. A rebind takes the write lock,
//!   changes the vCPU and re-raises a pending, unmasked port. parking_lot's
//!   `try_read` fails exactly when a writer holds the lock or waits for
//!   the readers to leave, as the read trylock of Xen's queued `rwlock_t`
//!   does; two readers never fail each other. Xen itself takes a channel's
//!   write lock only while the channel goes from or to free or unbound,
//!   where an omitted send has no receiver, and changes the notify vCPU
//!   under the domain's event lock, which its send path does not take; this
//!   design is that per-channel lock with the rebind made a state change
//!   under it, the direct way to give the send a stable vCPU.
//!
//! The two peers (`benches/peers/designs.rs`) keep the guest-visible words
//! in the same memory type as evtchn (`OwnedMemory`, 4096 ports, 2 vCPUs)
//! and raise with the same atomic operations and orderings; they differ in
//! how a send finds the port's vCPU and keeps it stable. No design really
//! kicks: evtchn's notifier is `()`, and the peers hand the kick back to
//! the bench, which discards it.
//!
//! Every design's rebinder runs back to back, so each makes as many
//! rebinds as its own rebind's cost (and its lock's fairness) allow; the
//! counts below give the rebinds made per send.
//!
//! Groups:
//!
//! * `peers/1 sender`: two threads on the two cores: the bench thread sends
//!   (pinned to CPU 0), the rebinder rebinds (pinned to CPU 1).
//! * `peers/2 senders`: three threads on the two cores: two senders, pinned
//!   to CPU 0 and CPU 1, and the rebinder, left to the scheduler, so that
//!   at any moment it shares a core with one of the senders (as a rebind
//!   does with a sender when vCPU threads outnumber the cores). A sample
//!   is timed until both senders have made `iters` sends each; the time
//!   reported is per send (half the sample's time per iteration).
//!
//! Every send is a fresh raise: before each send, its sender re-arms the
//! port by plain stores (the port's pending word, and both vCPUs' selector
//! and upcall flag, clear), the same stores for the three designs, as in
//! `benches/rebind.rs`. Fresh rather than coalesced, because a send to a
//! port already pending adds nothing: omitting it loses no event, so the
//! trylock design's drops are lost events only when each send would have
//! raised one; and a fresh raise is the whole path (selector, upcall
//! flag), the one a rebind interferes with. With two senders, their
//! re-arms and sends interleave and some sends find the bit the other
//! sender set (they coalesce): the same for the three designs.
//!
//! Counts, per row, over the whole criterion run of the row (warm-up
//! included), written to `target/criterion/evtchn-extra/`:
//!
//! * `sends`, and `rebinds` made while sends were timed;
//! * `drops`: sends the design's send path reports as having raised no
//!   event: evtchn's `Err`s, the trylock's failures, the mutex table's
//!   sends to a port it found unbound (none by construction, counted all
//!   the same);
//! * `checks` and `unraised`: the same check, made on the memory of each
//!   design, that the send left the port pending (so that it is non-zero
//!   for a design that loses events whatever it reports). With one sender,
//!   after every send (the sender is the only one to clear the bit); with
//!   two, after each sample, once both senders are done (the last write of
//!   the pending word is then a send's, unless that send was dropped).
//!
//! Before the rows, each design is checked to raise the port's vCPU and
//! only it, to move a pending event to the new vCPU on a rebind, and to
//! leave a masked port pending without an upcall; the trylock design to
//! drop a send while the write lock is held.

use std::hint::black_box;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::*};
use std::thread;
use std::time::Instant;

use criterion::{criterion_group, criterion_main, BenchmarkGroup, Criterion};
use crossbeam_utils::CachePadded;
use evtchn::{Bind, Channels, Memory2l, OwnedMemory, Port, TwoLevel};

mod cpu;
#[path = "peers/designs.rs"]
mod designs;
mod extra;

use designs::{MutexTable, RwChannels, Sent};

type Ch = Channels<TwoLevel<OwnedMemory>>;

/// Pending/mask words of every design's memory (64 ports each).
const WORDS: usize = 64;
/// The port every design sends on (the first `Channels::bind` hands out).
const PORT: u32 = 1;

/// A design under test: one port, bound to vCPU 0 at first.
trait Design: Sync {
    /// One send on the port; whether the send path says it raised an event
    /// (`false`: dropped).
    fn send_one(&self) -> bool;
    /// Rebinds the port to `vcpu`.
    fn rebind_to(&self, vcpu: u32);
    /// Masks or unmasks the port as the guest does.
    fn set_masked(&self, masked: bool);
    /// The guest-visible words.
    fn memory(&self) -> &OwnedMemory;
}

struct Evtchn {
    ch: Ch,
    port: Port,
}

impl Evtchn {
    fn new() -> Self {
        let ch: Ch = Channels::new(TwoLevel::new(OwnedMemory::new(WORDS, 2)), ());
        let port = ch.bind(Bind::Affinity(0)).expect("bind");
        assert_eq!(port.number(), PORT);
        Evtchn { ch, port }
    }
}

impl Design for Evtchn {
    #[inline(always)]
    fn send_one(&self) -> bool {
        self.ch.send(black_box(self.port)).is_ok()
    }
    fn rebind_to(&self, vcpu: u32) {
        self.ch.set_affinity(self.port, vcpu).expect("set_affinity");
    }
    fn set_masked(&self, masked: bool) {
        if masked {
            self.ch.mask(self.port).expect("mask");
        } else {
            self.ch.unmask(self.port).expect("unmask");
        }
    }
    fn memory(&self) -> &OwnedMemory {
        self.ch.abi().memory()
    }
}

/// A peer's mask: the guest's own write to the mask word (no hypercall).
fn guest_mask(mem: &OwnedMemory, masked: bool) {
    let bit = 1u64 << (PORT % 64);
    let word = &mem.mask()[(PORT / 64) as usize];
    // SeqCst: the guest's half of the send/unmask Dekker pattern (set-up
    // only; no send runs concurrently).
    if masked {
        word.fetch_or(bit, SeqCst);
    } else {
        word.fetch_and(!bit, SeqCst);
    }
}

/// The two peers share their `Design` glue: a send, a rebind and the
/// guest's mask over their own methods and memory.
macro_rules! peer_design {
    ($($t:ty),*) => {$(
        impl Design for $t {
            #[inline(always)]
            fn send_one(&self) -> bool {
                black_box(self.send(black_box(PORT))).delivered()
            }
            fn rebind_to(&self, vcpu: u32) {
                black_box(self.rebind(PORT, vcpu).expect("rebind"));
            }
            fn set_masked(&self, masked: bool) {
                guest_mask(self.memory(), masked);
            }
            fn memory(&self) -> &OwnedMemory {
                <$t>::memory(self)
            }
        }
    )*};
}

peer_design!(MutexTable, RwChannels);

/// Re-arms a fresh raise of `PORT`: its pending word, and the selector and
/// upcall flag of both vCPUs, clear (plain stores).
#[inline(always)]
fn rearm(mem: &OwnedMemory) {
    // Relaxed throughout: plain stores that put the words back; the raise
    // that follows is ordered after them by its own thread.
    mem.pending()[(PORT / 64) as usize].store(0, Relaxed);
    for vi in (0..2).filter_map(|v| mem.vcpu_info(v)) {
        vi.evtchn_pending_sel.store(0, Relaxed);
        vi.evtchn_upcall_pending.store(0, Relaxed);
    }
}

/// Whether `PORT`'s pending bit is set.
#[inline(always)]
fn pending(mem: &OwnedMemory) -> bool {
    // Relaxed: read by the thread whose send wrote the bit (or, with two
    // senders, after an Acquire that orders every send before it);
    // coherence gives that write or a later one.
    mem.pending()[(PORT / 64) as usize].load(Relaxed) & (1 << (PORT % 64)) != 0
}

/// The selector bit of `PORT`'s word and the upcall flag of `vcpu`.
fn raised_on(mem: &OwnedMemory, vcpu: u32) -> (bool, bool) {
    let vi = mem.vcpu_info(vcpu).expect("vcpu_info");
    (
        // Relaxed: set-up checks, one thread.
        vi.evtchn_pending_sel.load(Relaxed) & (1 << (PORT / 64)) != 0,
        // Relaxed: as above.
        vi.evtchn_upcall_pending.load(Relaxed) != 0,
    )
}

/// Checks that `d` raises the port's vCPU and only it, moves a pending
/// event on a rebind, and leaves a masked port pending without an upcall.
/// Leaves the port bound to vCPU 0, unmasked, re-armed.
fn check(d: &impl Design, name: &str) {
    let mem = d.memory();
    d.rebind_to(1);
    rearm(mem);
    assert!(d.send_one(), "{name}: send");
    assert!(pending(mem), "{name}: not pending after a send");
    assert_eq!(raised_on(mem, 1), (true, true), "{name}: vCPU 1 not raised");
    assert_eq!(raised_on(mem, 0), (false, false), "{name}: vCPU 0 raised");
    // Still pending: the rebind raises it on the new vCPU.
    rearm(mem);
    assert!(d.send_one(), "{name}: send");
    for v in 0..2 {
        let vi = mem.vcpu_info(v).expect("vcpu_info");
        // Relaxed: one thread.
        vi.evtchn_pending_sel.store(0, Relaxed);
        // Relaxed: one thread.
        vi.evtchn_upcall_pending.store(0, Relaxed);
    }
    d.rebind_to(0);
    assert_eq!(raised_on(mem, 0), (true, true), "{name}: rebind lost it");
    assert_eq!(raised_on(mem, 1), (false, false), "{name}: old vCPU raised");
    // Masked: pending, nobody told.
    d.set_masked(true);
    rearm(mem);
    assert!(d.send_one(), "{name}: masked send");
    assert!(pending(mem), "{name}: masked send not pending");
    assert_eq!(raised_on(mem, 0), (false, false), "{name}: masked raised");
    assert_eq!(raised_on(mem, 1), (false, false), "{name}: masked raised");
    d.set_masked(false);
    rearm(mem);
}

/// The rebinder: moves the port between vCPUs 0 and 1 until `stop`;
/// publishes how many rebinds it made so far in `count`.
fn rebinder(d: &impl Design, stop: &AtomicBool, count: &AtomicU64) {
    let mut v = 0;
    let mut n = 0u64;
    // Relaxed: a flag polled in a loop; nothing is published with it.
    while !stop.load(Relaxed) {
        v ^= 1;
        d.rebind_to(v);
        n += 1;
        // Relaxed: a statistic, read between samples.
        count.store(n, Relaxed);
    }
}

/// What one sender counted in one batch.
#[derive(Clone, Copy, Default)]
struct Batch {
    drops: u64,
    unraised: u64,
}

/// `iters` fresh sends; with `check_each`, each followed by the pending
/// check.
#[inline(always)]
fn batch(d: &impl Design, iters: u64, check_each: bool) -> Batch {
    let mem = d.memory();
    let mut b = Batch::default();
    for _ in 0..iters {
        rearm(mem);
        if !d.send_one() {
            b.drops += 1;
        }
        if check_each && !pending(mem) {
            b.unraised += 1;
        }
    }
    b
}

/// The figures of one row.
#[derive(Default)]
struct Counts {
    sends: u64,
    rebinds: u64,
    drops: u64,
    checks: u64,
    unraised: u64,
}

impl Counts {
    fn record(&self, group: &str, function: &str) -> extra::Record {
        extra::Record::new(
            group,
            function,
            &[
                ("sends", self.sends as f64),
                ("rebinds", self.rebinds as f64),
                ("drops", self.drops as f64),
                ("checks", self.checks as f64),
                ("unraised", self.unraised as f64),
            ],
        )
    }
}

/// Runs `f` with a rebinder of `d` running, pinned to `cpu` if given, else
/// free to run on any CPU; `f` gets the rebinder's count.
fn with_rebinder<D: Design, R>(d: &D, cpu: Option<usize>, f: impl FnOnce(&AtomicU64) -> R) -> R {
    // Padded: the rebinder writes it all the time.
    let count = CachePadded::new(AtomicU64::new(0));
    let stop = CachePadded::new(AtomicBool::new(false));
    thread::scope(|s| {
        s.spawn(|| {
            // A thread starts with its creator's CPUs: the bench thread's one
            // CPU, unless it is given its own or all of them.
            match cpu {
                Some(c) => {
                    cpu::pin(c);
                }
                None => cpu::unpin(),
            }
            rebinder(d, &stop, &count)
        });
        let r = f(&count);
        // Relaxed: the rebinder only polls it; the scope joins it.
        stop.store(true, Relaxed);
        r
    })
}

/// `peers/1 sender`: the bench thread sends, pinned to one CPU; the
/// rebinder runs on the other.
fn one_sender<D: Design>(
    g: &mut BenchmarkGroup<'_, criterion::measurement::WallTime>,
    name: &str,
    d: &D,
) -> Counts {
    let mut c = Counts::default();
    cpu::pin(cpu::SENDER);
    with_rebinder(d, Some(cpu::OTHER), |count| {
        g.bench_function(name, |b| {
            b.iter_custom(|iters| {
                // Relaxed: a statistic.
                let before = count.load(Relaxed);
                let start = Instant::now();
                let r = batch(d, iters, true);
                let t = start.elapsed();
                // Relaxed: a statistic.
                c.rebinds += count.load(Relaxed) - before;
                c.sends += iters;
                c.drops += r.drops;
                c.checks += iters;
                c.unraised += r.unraised;
                t
            })
        });
    });
    cpu::unpin();
    c
}

/// The second sender's side of a `peers/2 senders` sample.
struct Second {
    /// Sample number; the bench thread bumps it to start a sample.
    go: CachePadded<AtomicU64>,
    /// Sends per sender in the current sample.
    iters: AtomicU64,
    /// The last sample the second sender finished.
    done: CachePadded<AtomicU64>,
    /// Its drops over all samples (published by `done`).
    drops: AtomicU64,
    quit: AtomicBool,
}

/// The second sender: waits for a sample, makes its sends, reports.
fn second_sender(d: &impl Design, s: &Second) {
    cpu::pin(cpu::OTHER);
    let mut last = 0;
    loop {
        // Acquire: pairs with the Release bump, so `iters` is this sample's.
        let go = s.go.load(Acquire);
        if go == last {
            // Relaxed: polled; set only after the last sample.
            if s.quit.load(Relaxed) {
                return;
            }
            std::hint::spin_loop();
            thread::yield_now();
            continue;
        }
        last = go;
        // Relaxed: ordered by the Acquire above.
        let r = batch(d, s.iters.load(Relaxed), false);
        // Relaxed: published by the Release store of `done` below.
        s.drops.fetch_add(r.drops, Relaxed);
        // Release: the bench thread's Acquire then sees every send of this
        // sample and the drop count.
        s.done.store(go, Release);
    }
}

/// `peers/2 senders`: the bench thread and a second sender, `iters` sends
/// each; the rebinder left to the scheduler.
fn two_senders<D: Design>(
    g: &mut BenchmarkGroup<'_, criterion::measurement::WallTime>,
    name: &str,
    d: &D,
) -> Counts {
    let mut c = Counts::default();
    let s = Second {
        go: CachePadded::new(AtomicU64::new(0)),
        iters: AtomicU64::new(0),
        done: CachePadded::new(AtomicU64::new(0)),
        drops: AtomicU64::new(0),
        quit: AtomicBool::new(false),
    };
    cpu::pin(cpu::SENDER);
    with_rebinder(d, None, |count| {
        thread::scope(|scope| {
            scope.spawn(|| second_sender(d, &s));
            let mut sample = 0u64;
            g.bench_function(name, |b| {
                b.iter_custom(|iters| {
                    sample += 1;
                    // Relaxed: published by the Release bump below.
                    s.iters.store(iters, Relaxed);
                    // Relaxed: a statistic.
                    let before = count.load(Relaxed);
                    let start = Instant::now();
                    // Release: publishes `iters`.
                    s.go.store(sample, Release);
                    let r = batch(d, iters, false);
                    // Acquire: pairs with the second sender's Release.
                    while s.done.load(Acquire) != sample {
                        std::hint::spin_loop();
                        thread::yield_now();
                    }
                    let t = start.elapsed();
                    // Relaxed: a statistic.
                    c.rebinds += count.load(Relaxed) - before;
                    c.sends += 2 * iters;
                    c.drops += r.drops;
                    c.checks += 1;
                    c.unraised += u64::from(!pending(d.memory()));
                    // Per send: both senders made `iters`.
                    t / 2
                })
            });
            // Relaxed: the scope joins the second sender.
            s.quit.store(true, Relaxed);
        });
    });
    cpu::unpin();
    // Relaxed: the second sender was joined.
    c.drops += s.drops.load(Relaxed);
    c
}

fn peers(c: &mut Criterion) {
    let ev = Evtchn::new();
    let mt = MutexTable::new(WORDS, 2);
    mt.bind(PORT, 0);
    let rw = RwChannels::new(WORDS, 2);
    rw.bind(PORT, 0);

    check(&ev, "evtchn");
    check(&mt, "mutex table");
    check(&rw, "rwlock trylock");
    // The trylock design omits a send while a rebind holds the lock.
    rearm(rw.memory());
    let sent = rw.with_write_locked(PORT, || rw.send(PORT));
    assert_eq!(
        sent,
        Sent::Dropped,
        "rwlock trylock: send under the write lock"
    );
    assert!(
        !pending(rw.memory()),
        "rwlock trylock: a dropped send raised"
    );
    // And a fresh raise kicks the port's vCPU, in both peers.
    for (name, sent) in [
        ("mutex table", mt.send(PORT)),
        ("rwlock trylock", rw.send(PORT)),
    ] {
        assert_eq!(
            sent,
            Sent::Raised {
                vcpu: 0,
                kick: true
            },
            "{name}: fresh raise"
        );
    }
    rearm(mt.memory());
    rearm(rw.memory());

    let mut records = Vec::new();
    let group = "peers/1 sender";
    let mut g = c.benchmark_group(group);
    records.push(one_sender(&mut g, "evtchn", &ev).record(group, "evtchn"));
    records.push(one_sender(&mut g, "mutex table", &mt).record(group, "mutex table"));
    records.push(one_sender(&mut g, "rwlock trylock", &rw).record(group, "rwlock trylock"));
    g.finish();

    let group = "peers/2 senders";
    let mut g = c.benchmark_group(group);
    records.push(two_senders(&mut g, "evtchn", &ev).record(group, "evtchn"));
    records.push(two_senders(&mut g, "mutex table", &mt).record(group, "mutex table"));
    records.push(two_senders(&mut g, "rwlock trylock", &rw).record(group, "rwlock trylock"));
    g.finish();
    extra::write(&records);
}

criterion_group!(benches, peers);
criterion_main!(benches);
