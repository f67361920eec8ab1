//! Send and drain cost against the number of ports and of vCPUs: each
//! group is one row measured at several sizes, and the claim is that the
//! time does not grow with the size (`benches/scale_report.py` gives each
//! size's time as a ratio to the smallest size's; goal: flat within 1.2×).
//!
//! Every instance binds all its ports (1 to the highest; port 0 is
//! reserved), port `p` to vCPU `p mod vcpus`; the rows send to and drain
//! the highest port, which is on the last vCPU (the highest port is odd,
//! and every vCPU count is a power of two). Binding the 131071 ports of the
//! largest FIFO instance maps the whole event array and takes a few
//! milliseconds. Before its rows run, each instance makes one real send and
//! one real upcall, which must handle that port once.
//!
//! * `scale/send ports` — `Channels::send`, fresh raise, over the 2-level
//!   ABI (`OwnedMemory`, 2 vCPUs) of 64, 256, 1024 and 4096 ports (1 to 64
//!   words; a selector of 64 bits names at most 4096 ports). Re-armed every
//!   iteration as in `benches/send.rs`, by the same three plain stores
//!   (`floor::Words::rearm`: pending word, selector, upcall flag).
//! * `scale/send ports fifo` — the same over `Fifo<OwnedFifo>` (2 vCPUs,
//!   priority 7) of 64, 1024, 4096, 32768 and 131072 (2^17, the FIFO ABI's
//!   limit) ports, re-armed by `floor::FifoWords::rearm` (event word,
//!   `head`, `ready`, upcall flag), as in `benches/send.rs`.
//! * `scale/drain ports`, `scale/drain ports fifo` — `Vcpu::upcall` of the
//!   last vCPU with the highest port alone pending, on the same instances.
//!   Re-armed by plain stores, as in `benches/drain.rs`: 2-level, the
//!   port's pending word, its selector bit and the upcall flag; FIFO, the
//!   event word pending and linked (no link), the queue's `head`, its
//!   `ready` bit and the upcall flag.
//! * `scale/send vcpus`, `scale/drain vcpus` — the same send and drain on
//!   4096 ports over 2, 8, 16 and 64 vCPUs, for both ABIs (functions
//!   `evtchn` and `evtchn fifo`).
//!
//! The function is the line and the size the parameter of a
//! `BenchmarkId`, so criterion draws each group's line plot
//! (`target/criterion/<group>/report/lines.svg`, the group's `/` written
//! as `_`: `target/criterion/scale_send ports/report/lines.svg`).

use std::hint::black_box;
use std::sync::atomic::Ordering::*;

use criterion::measurement::WallTime;
use criterion::{criterion_group, criterion_main, BenchmarkGroup, BenchmarkId, Criterion};
use evtchn::xen::fifo::{LINKED, PENDING, PRIORITY_DEFAULT};
use evtchn::{Bind, Channels, Fifo, OwnedFifo, OwnedMemory, Port, PortOps, TwoLevel};

mod floor;

use floor::{FifoWords, Words};

/// Ports of the 2-level `ports` rows (64 per word).
const PORTS_2L: [u32; 4] = [64, 256, 1024, 4096];
/// Ports of the FIFO `ports` rows.
const PORTS_FIFO: [u32; 5] = [64, 1024, 4096, 32768, 131_072];
/// vCPUs of the `ports` rows.
const PORT_ROWS_VCPUS: u32 = 2;
/// vCPUs of the `vcpus` rows.
const VCPUS: [u32; 4] = [2, 8, 16, 64];
/// Ports of the `vcpus` rows.
const VCPU_ROWS_PORTS: u32 = 4096;
/// Bootstrap resamples of each row's analysis (criterion's default: 100 000).
/// Criterion's plots of a row's estimates run a kernel density estimate over
/// every resample: several seconds a row at the default. 10 000 keep the
/// whole bench within about two minutes; the count sets how precisely the
/// interval's ends are estimated, not how wide the interval is.
const NRESAMPLES: usize = 10_000;
/// The priority every port has (bind's default).
const PRIO: u32 = PRIORITY_DEFAULT as u32;

/// An instance with every port bound, the highest port and its vCPU.
struct Case<A: PortOps> {
    ch: Channels<A>,
    port: Port,
    vcpu: u32,
}

/// Binds ports 1 to the highest of `abi`, port `p` to vCPU `p mod vcpus`,
/// makes one real send to the highest and one upcall that must handle it.
fn case<A: PortOps>(abi: A, vcpus: u32) -> Case<A> {
    let ch = Channels::new(abi, ());
    assert_eq!(ch.nr_vcpus(), vcpus);
    let mut port = None;
    for p in 1..ch.nr_ports() {
        // Bind hands out the lowest free number: `p` itself.
        let bound = ch.bind(Bind::Affinity(p % vcpus)).expect("bind");
        assert_eq!(bound.number(), p);
        port = Some(bound);
    }
    let port = port.expect("a bindable port");
    let vcpu = port.number() % vcpus;
    assert_eq!(vcpu, vcpus - 1, "the highest port is on the last vCPU");
    ch.send(port).expect("send");
    let mut seen = Vec::new();
    let ran = ch
        .vcpu(vcpu)
        .expect("vcpu")
        .upcall(|p| seen.push(p))
        .expect("upcall");
    assert_eq!((ran, seen.as_slice()), (1, &[port][..]));
    Case { ch, port, vcpu }
}

fn two_level(ports: u32, vcpus: u32) -> Case<TwoLevel<OwnedMemory>> {
    let words = (ports / 64) as usize;
    case(
        TwoLevel::new(OwnedMemory::new(words, vcpus as usize)),
        vcpus,
    )
}

fn fifo(ports: u32, vcpus: u32) -> Case<Fifo<OwnedFifo>> {
    case(Fifo::new(OwnedFifo::new(ports, vcpus as usize)), vcpus)
}

/// Re-arms a 2-level drain of `port` alone: its pending bit, its selector
/// bit and the upcall flag set. Plain stores, as `floor::rearm_drain`.
#[inline(always)]
fn rearm_drain_2l(w: &Words<'_>, port: u32) {
    // Relaxed throughout: one thread re-arms and drains.
    w.pending.store(1 << (port % 64), Relaxed);
    w.vcpu.evtchn_pending_sel.store(1 << (port / 64), Relaxed);
    w.vcpu.evtchn_upcall_pending.store(1, Relaxed);
}

/// Re-arms a FIFO drain of `port` alone on its queue: the event word
/// pending and linked with no link, the queue's `head`, its `ready` bit and
/// the upcall flag. Plain stores, as `floor::FifoDrain::rearm`.
#[inline(always)]
fn rearm_drain_fifo(w: &FifoWords<'_, OwnedFifo>, port: u32) {
    // Relaxed throughout: one thread re-arms and drains.
    w.word.store(PENDING | LINKED, Relaxed);
    w.cb.head[w.prio as usize].store(port, Relaxed);
    w.cb.ready.store(1 << w.prio, Relaxed);
    w.vcpu.evtchn_upcall_pending.store(1, Relaxed);
}

/// A fresh 2-level send to the case's port, re-armed every iteration.
fn send_2l(g: &mut BenchmarkGroup<'_, WallTime>, id: BenchmarkId, c: &Case<TwoLevel<OwnedMemory>>) {
    let (n, v) = (c.port.number(), c.vcpu);
    let w = Words::of(c.ch.abi().memory(), n, v);
    // The measured path: the raise finds everything clear and kicks.
    w.rearm();
    c.ch.send(c.port).expect("send");
    // Relaxed: the same thread raised.
    assert_eq!(w.vcpu.evtchn_upcall_pending.load(Relaxed), 1, "send");
    g.bench_function(id, |b| {
        b.iter(|| {
            w.rearm();
            c.ch.send(black_box(c.port))
        })
    });
}

/// A fresh FIFO send to the case's port, re-armed every iteration.
fn send_fifo(g: &mut BenchmarkGroup<'_, WallTime>, id: BenchmarkId, c: &Case<Fifo<OwnedFifo>>) {
    let (n, v) = (c.port.number(), c.vcpu);
    let w = FifoWords::of(c.ch.abi().memory(), n, v, PRIO);
    // The measured path: the raise links into an empty queue and kicks.
    w.rearm();
    c.ch.send(c.port).expect("send");
    // Relaxed (both): the same thread raised.
    assert_eq!(w.cb.head[PRIO as usize].load(Relaxed), n, "send fifo");
    assert_eq!(w.vcpu.evtchn_upcall_pending.load(Relaxed), 1, "send fifo");
    g.bench_function(id, |b| {
        b.iter(|| {
            w.rearm();
            c.ch.send(black_box(c.port))
        })
    });
}

/// An upcall of the case's vCPU with its port alone pending (2-level).
fn drain_2l(
    g: &mut BenchmarkGroup<'_, WallTime>,
    id: BenchmarkId,
    c: &Case<TwoLevel<OwnedMemory>>,
) {
    let (n, v) = (c.port.number(), c.vcpu);
    let w = Words::of(c.ch.abi().memory(), n, v);
    let mut vcpu = c.ch.vcpu(v).expect("vcpu");
    // Each drain handles that port, once.
    rearm_drain_2l(&w, n);
    let mut seen = Vec::new();
    assert_eq!(vcpu.upcall(|p| seen.push(p)).expect("upcall"), 1);
    assert_eq!(seen, [c.port], "drain");
    g.bench_function(id, |b| {
        b.iter(|| {
            rearm_drain_2l(&w, n);
            vcpu.upcall(|p| {
                black_box(p);
            })
        })
    });
}

/// An upcall of the case's vCPU with its port alone on its queue (FIFO).
fn drain_fifo(g: &mut BenchmarkGroup<'_, WallTime>, id: BenchmarkId, c: &Case<Fifo<OwnedFifo>>) {
    let (n, v) = (c.port.number(), c.vcpu);
    let w = FifoWords::of(c.ch.abi().memory(), n, v, PRIO);
    let mut vcpu = c.ch.vcpu(v).expect("vcpu");
    rearm_drain_fifo(&w, n);
    let mut seen = Vec::new();
    assert_eq!(vcpu.upcall(|p| seen.push(p)).expect("upcall"), 1);
    assert_eq!(seen, [c.port], "drain fifo");
    g.bench_function(id, |b| {
        b.iter(|| {
            rearm_drain_fifo(&w, n);
            vcpu.upcall(|p| {
                black_box(p);
            })
        })
    });
}

/// A group of this bench: `NRESAMPLES` resamples.
fn group<'c>(c: &'c mut Criterion, name: &str) -> BenchmarkGroup<'c, WallTime> {
    let mut g = c.benchmark_group(name);
    g.nresamples(NRESAMPLES);
    g
}

fn scale(c: &mut Criterion) {
    let by_ports_2l: Vec<_> = PORTS_2L
        .iter()
        .map(|&p| (p, two_level(p, PORT_ROWS_VCPUS)))
        .collect();
    let by_ports_fifo: Vec<_> = PORTS_FIFO
        .iter()
        .map(|&p| (p, fifo(p, PORT_ROWS_VCPUS)))
        .collect();
    let by_vcpus: Vec<_> = VCPUS
        .iter()
        .map(|&v| (v, two_level(VCPU_ROWS_PORTS, v), fifo(VCPU_ROWS_PORTS, v)))
        .collect();

    let mut g = group(c, "scale/send ports");
    for (p, case) in &by_ports_2l {
        send_2l(&mut g, BenchmarkId::new("evtchn", p), case);
    }
    g.finish();
    let mut g = group(c, "scale/send ports fifo");
    for (p, case) in &by_ports_fifo {
        send_fifo(&mut g, BenchmarkId::new("evtchn fifo", p), case);
    }
    g.finish();
    let mut g = group(c, "scale/drain ports");
    for (p, case) in &by_ports_2l {
        drain_2l(&mut g, BenchmarkId::new("evtchn", p), case);
    }
    g.finish();
    let mut g = group(c, "scale/drain ports fifo");
    for (p, case) in &by_ports_fifo {
        drain_fifo(&mut g, BenchmarkId::new("evtchn fifo", p), case);
    }
    g.finish();

    let mut g = group(c, "scale/send vcpus");
    for (v, two, fi) in &by_vcpus {
        send_2l(&mut g, BenchmarkId::new("evtchn", v), two);
        send_fifo(&mut g, BenchmarkId::new("evtchn fifo", v), fi);
    }
    g.finish();
    let mut g = group(c, "scale/drain vcpus");
    for (v, two, fi) in &by_vcpus {
        drain_2l(&mut g, BenchmarkId::new("evtchn", v), two);
        drain_fifo(&mut g, BenchmarkId::new("evtchn fifo", v), fi);
    }
    g.finish();
}

criterion_group!(benches, scale);
criterion_main!(benches);
