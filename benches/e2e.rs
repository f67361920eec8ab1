//! End to end on two threads — the bench thread sends, one
//! vCPU thread runs the handlers — beside what a Rust programmer would pick
//! instead: a `parking_lot::Mutex<VecDeque<u32>>` per vCPU and a
//! `crossbeam-channel` per vCPU, carrying port numbers.
//!
//! * `e2e/distinct ports` — sends cycle over ports 1..=4095, and a port is
//!   sent again only once the vCPU has seen its previous send (a window of
//!   4095 events in flight, the same for every row): no send coalesces, so
//!   every row runs one handler per send;
//! * `e2e/hot port` — every send goes to port 1 (a storm).
//!
//! evtchn runs twice: over the 2-level ABI (`evtchn`) and over the FIFO ABI
//! (`evtchn fifo`: `Fifo` over `OwnedFifo`, 4096 ports, every port at the
//! default priority, so the distinct-port row keeps one queue busy).
//!
//! The four rows do the same handler work under the same idle protocol
//! (the vCPU thread parks when idle; the sender unparks it when the
//! transport says to kick): see `benches/transports/mod.rs`.
//!
//! * **timing** (`iter_custom`): from the first send of a sample until the
//!   vCPU has seen the last send of every port sent to — so the time covers
//!   delivery, not just enqueueing. Criterion's slope over the samples takes
//!   out the per-sample constant (the wake-up of a parked vCPU, the final
//!   check).
//!
//! evtchn coalesces: a send to a port still pending adds nothing, so it may
//! run fewer handlers than there were sends. The bench counts sends and
//! handler runs (and the vCPU's parks) of every row, for the report
//! (`benches/extra`).

use std::hint::black_box;
use std::sync::atomic::{AtomicBool, Ordering::*};
use std::thread;
use std::time::Instant;

use criterion::measurement::WallTime;
use criterion::{criterion_group, criterion_main, BenchmarkGroup, Criterion};
use crossbeam_utils::CachePadded;

mod cpu;
mod extra;
mod transports;

use transports::{wait_until, Crossbeam, Evtchn, MutexQueue, Transport, Wake, Work, NR_PORTS};

/// vCPUs the transports are built for; the vCPU thread runs vCPU 0.
const NR_VCPUS: usize = 2;

/// Which ports a scenario sends to.
#[derive(Clone, Copy)]
enum Pattern {
    /// 1, 2, ..., 4095, 1, 2, ...
    Distinct,
    /// Always port 1.
    Hot,
}

/// Runs one row: spawns the vCPU thread, measures, stops it; records the
/// sends and handler runs.
fn row<T: Transport>(
    g: &mut BenchmarkGroup<'_, WallTime>,
    stats: &mut Vec<extra::Record>,
    scenario: &str,
    name: &str,
    pattern: Pattern,
    t: &T,
) {
    let work = Work::new();
    // Padded: the vCPU thread reads it beside the sender's hot locals.
    let stop = CachePadded::new(AtomicBool::new(false));
    let mut last = vec![0u64; NR_PORTS as usize];
    let mut next_seq = 1u64;
    let mut cursor = 0u32;
    let mut sends = 0u64;
    let (runs, parks) = thread::scope(|s| {
        // The sender on one CPU, the vCPU thread on the other.
        cpu::pin(cpu::SENDER);
        let vcpu = s.spawn(|| {
            cpu::pin(cpu::OTHER);
            t.vcpu_loop(&work, &stop)
        });
        t.wake()
            .0
            .set(vcpu.thread().clone())
            .expect("one vCPU thread per transport");
        g.bench_function(name, |b| {
            b.iter_custom(|iters| {
                let start = Instant::now();
                for _ in 0..iters {
                    let port = match pattern {
                        Pattern::Distinct => {
                            cursor = cursor % (NR_PORTS - 1) + 1;
                            cursor
                        }
                        Pattern::Hot => 1,
                    };
                    if let Pattern::Distinct = pattern {
                        // No coalescing: a port is sent again only once its
                        // last send was seen (at most 4095 in flight).
                        let want = last[port as usize];
                        // Acquire: pairs with the handler's Release.
                        wait_until(|| work.seen[port as usize].load(Acquire) == want);
                    }
                    let seq = next_seq;
                    next_seq += 1;
                    work.seq[port as usize].store(seq, Relaxed);
                    t.send(black_box(port));
                    last[port as usize] = seq;
                }
                let touched = match pattern {
                    Pattern::Distinct => 1..NR_PORTS,
                    Pattern::Hot => 1..2,
                };
                for p in touched {
                    let want = last[p as usize];
                    // Acquire: pairs with the handler's Release.
                    wait_until(|| work.seen[p as usize].load(Acquire) == want);
                }
                sends += iters;
                start.elapsed()
            })
        });
        stop.store(true, Release);
        t.wake().kick();
        let counts = vcpu.join().expect("vCPU thread");
        cpu::unpin();
        counts
    });
    if sends == 0 {
        // Filtered out by a criterion filter: nothing to record.
        return;
    }
    stats.push(extra::Record::new(
        scenario,
        name,
        &[
            ("sends", sends as f64),
            ("handler_runs", runs as f64),
            ("parks", parks as f64),
        ],
    ));
}

fn e2e(c: &mut Criterion) {
    let mut stats = Vec::new();
    for (scenario, pattern) in [
        ("e2e/distinct ports", Pattern::Distinct),
        ("e2e/hot port", Pattern::Hot),
    ] {
        let mut g = c.benchmark_group(scenario);
        // Each sample ends by waiting for the vCPU: keep samples few.
        g.sample_size(30);
        {
            let wake = Wake::default();
            row(
                &mut g,
                &mut stats,
                scenario,
                "evtchn",
                pattern,
                &Evtchn::new(&wake, NR_VCPUS),
            );
        }
        {
            let wake = Wake::default();
            row(
                &mut g,
                &mut stats,
                scenario,
                "evtchn fifo",
                pattern,
                &Evtchn::fifo(&wake, NR_VCPUS),
            );
        }
        {
            let wake = Wake::default();
            let t = Crossbeam::new(&wake, NR_VCPUS);
            row(
                &mut g,
                &mut stats,
                scenario,
                "crossbeam-channel",
                pattern,
                &t,
            );
        }
        {
            let wake = Wake::default();
            let t = MutexQueue::new(&wake, NR_VCPUS);
            row(&mut g, &mut stats, scenario, "mutex+vecdeque", pattern, &t);
        }
        g.finish();
    }
    extra::write(&stats);
}

criterion_group!(benches, e2e);
criterion_main!(benches);
