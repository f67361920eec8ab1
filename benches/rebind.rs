//! The cost of `set_affinity`, and the send while another
//! thread rebinds the same port continuously.
//!
//! * `rebind/set_affinity` — `Channels::set_affinity`, moving one bound,
//!   idle port between vCPU 0 and 1, beside what a queue-based design pays to
//!   move a port: lock a `parking_lot::Mutex` and store the port's new vCPU
//!   in a routing table (`lock+store`). No goal; the ratio says what the
//!   mask → rebind → unmask sequence (C5) costs on top.
//! * `rebind/send fresh` and `rebind/send coalesced` — the sends of
//!   `benches/send.rs` (a fresh raise, re-armed by plain stores of the
//!   pending word and of both vCPUs' selector and upcall flag; a send to a
//!   port left pending), three times: `idle`; `beside a spinning thread` (a
//!   second thread of pure register arithmetic, sharing no memory with the
//!   sender); `during rebinds` (a second thread calls `set_affinity` on the
//!   same port back to back). The send path takes no lock, so it never waits
//!   for a rebind; what the rebinder still costs it are the cache lines it
//!   writes or reads (the port's control word, its mask word, and its
//!   pending word, which the unmask reads). The spinning row is the fair
//!   "without rebinds": on a machine whose cores are shared with other
//!   work, any second busy thread slows the sender (on this one, the
//!   spinner alone costs the sender as much as the rebinder).
//!
//! The rebinds done per send are written to
//! `target/criterion/evtchn-extra/rebind.json`.

use std::cell::Cell;
use std::hint::black_box;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering::*};
use std::thread;
use std::time::Instant;

use criterion::{criterion_group, criterion_main, Criterion};
use crossbeam_utils::CachePadded;
use evtchn::{Bind, Channels, Memory2l, OwnedMemory, Port, TwoLevel};
use parking_lot::Mutex;

mod cpu;
mod extra;

type Ch = Channels<TwoLevel<OwnedMemory>>;

/// Re-arms a fresh raise of `port`: pending bit, and the selector and
/// upcall flag of both vCPUs, clear (plain stores).
#[inline(always)]
fn rearm(ch: &Ch, port: Port) {
    let mem = ch.abi().memory();
    mem.pending()[(port.number() / 64) as usize].store(0, Relaxed);
    for vi in (0..2).filter_map(|v| mem.vcpu_info(v)) {
        vi.evtchn_pending_sel.store(0, Relaxed);
        vi.evtchn_upcall_pending.store(0, Relaxed);
    }
}

/// The rebinder: moves `port` between vCPUs 0 and 1 until `stop`; publishes
/// how many rebinds it made so far in `count`.
fn rebinder(ch: &Ch, port: Port, stop: &AtomicBool, count: &AtomicU64) {
    let mut v = 0;
    let mut n = 0u64;
    while !stop.load(Relaxed) {
        v ^= 1;
        ch.set_affinity(port, v).expect("set_affinity");
        n += 1;
        count.store(n, Relaxed);
    }
}

/// A second busy thread that shares nothing with the sender (arithmetic on
/// registers) until `stop`: the baseline of "during rebinds" on a machine
/// where another busy thread of ours costs the sender CPU time.
fn spinner(stop: &AtomicBool) {
    let mut x = 1u64;
    while !stop.load(Relaxed) {
        for _ in 0..100 {
            x = black_box(x.wrapping_mul(3).wrapping_add(1));
        }
    }
}

fn rebind(c: &mut Criterion) {
    let ch: Ch = Channels::new(TwoLevel::new(OwnedMemory::new(64, 2)), ());
    let port = ch.bind(Bind::Affinity(0)).expect("bind");
    let mut records = Vec::new();

    let mut g = c.benchmark_group("rebind/set_affinity");
    {
        let lock = Mutex::new(());
        let route: Box<[AtomicU32]> = (0..4096).map(|_| AtomicU32::new(0)).collect();
        let mut v = 0u32;
        g.bench_function("lock+store", |b| {
            b.iter(|| {
                v ^= 1;
                let _guard = lock.lock();
                route[black_box(port.number()) as usize].store(v, Release);
            })
        });
    }
    {
        let mut v = 0u32;
        g.bench_function("evtchn", |b| {
            b.iter(|| {
                v ^= 1;
                ch.set_affinity(black_box(port), v)
            })
        });
    }
    g.finish();

    for (group, fresh) in [
        ("rebind/send fresh", true),
        ("rebind/send coalesced", false),
    ] {
        let mut g = c.benchmark_group(group);
        if !fresh {
            ch.send(port).expect("send");
        }
        // Padded, as the flags below: the rebinder writes it all the time,
        // and a line shared with the sender's data would cost the sender.
        let count = CachePadded::new(AtomicU64::new(0));
        // Sends, and rebinds made while they were timed.
        let (sends, rebinds) = (Cell::new(0u64), Cell::new(0u64));
        let send = |b: &mut criterion::Bencher<'_>| {
            b.iter_custom(|iters| {
                let before = count.load(Relaxed);
                let start = Instant::now();
                for _ in 0..iters {
                    if fresh {
                        rearm(&ch, port);
                    }
                    black_box(ch.send(black_box(port)).is_ok());
                }
                let t = start.elapsed();
                sends.set(sends.get() + iters);
                rebinds.set(rebinds.get() + count.load(Relaxed) - before);
                t
            })
        };
        // The sender on one CPU, the spinner or rebinder on the other.
        cpu::pin(cpu::SENDER);
        g.bench_function("idle", send);
        let stop = CachePadded::new(AtomicBool::new(false));
        thread::scope(|s| {
            s.spawn(|| {
                cpu::pin(cpu::OTHER);
                spinner(&stop)
            });
            g.bench_function("beside a spinning thread", send);
            stop.store(true, Relaxed);
        });
        sends.set(0);
        rebinds.set(0);
        let stop = CachePadded::new(AtomicBool::new(false));
        thread::scope(|s| {
            s.spawn(|| {
                cpu::pin(cpu::OTHER);
                rebinder(&ch, port, &stop, &count)
            });
            g.bench_function("during rebinds", send);
            stop.store(true, Relaxed);
        });
        cpu::unpin();
        let (sends, rebinds) = (sends.get(), rebinds.get());
        if rebinds > 0 {
            records.push(extra::Record::new(
                group,
                "during rebinds",
                &[("sends", sends as f64), ("rebinds", rebinds as f64)],
            ));
        }
        g.finish();
    }
    extra::write(&records);
}

criterion_group!(benches, rebind);
criterion_main!(benches);
