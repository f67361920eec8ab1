//! Issue item 1: the uncontended send beside its physical floor.
//!
//! * `send/fresh` — a raise that finds the port's pending bit, the vCPU's
//!   selector bit and its upcall flag all clear. Every iteration first
//!   re-arms that state with the same three plain (`Relaxed`) stores, for
//!   evtchn and for the floor alike (`Words::rearm`), then raises:
//!   - `floor`: the bare sequence a 2-level raise must execute, by hand, on
//!     addresses computed once — `fetch_or` on pending (one `lock bts`),
//!     load the mask, `fetch_or` on the selector, `swap` on upcall-pending;
//!   - `evtchn`: `Channels::send` (port-table check, then the raise);
//!   - `raw set_pending`: `TwoLevel::set_pending` alone (the raise side a
//!     hypervisor uses), to show where the control plane's share begins.
//! * `send/coalesced` — a send to a port already pending, beside one
//!   `fetch_or` of the port's bit (the floor of a coalesced send).
//!
//! The memory is the same type for all rows (`OwnedMemory`, 4096 ports, 2
//! vCPUs), so re-arm stores hit the same layout. `benches/report.py` turns
//! criterion's estimates into ratios; absolute times are noise here.

use std::hint::black_box;
use std::sync::atomic::Ordering::*;

use criterion::{criterion_group, criterion_main, Criterion};
use evtchn::{Bind, Channels, OwnedMemory, PortOps, TwoLevel};

mod floor;

use floor::Words;

/// The port every row raises: word 1, bit 1 (any bound port would do).
const PORT: u32 = 65;
/// The vCPU it is bound to.
const VCPU: u32 = 1;

fn channels() -> Channels<TwoLevel<OwnedMemory>> {
    let ch = Channels::new(TwoLevel::new(OwnedMemory::new(64, 2)), ());
    // Bind ports 1..=PORT (bind hands out the lowest free number).
    let mut port = None;
    for _ in 1..=PORT {
        port = Some(ch.bind(Bind::Affinity(VCPU)).expect("bind"));
    }
    assert_eq!(port.map(|p| p.number()), Some(PORT));
    ch
}

fn send(c: &mut Criterion) {
    let ch = channels();
    let port = ch.port(PORT).expect("port");
    let ev = Words::of(ch.abi().memory(), PORT, VCPU);
    // The floor's own memory: same type, same layout, port unmasked.
    let floor_mem = OwnedMemory::new(64, 2);
    let fl = Words::of(&floor_mem, PORT, VCPU);
    // A bare 2-level ABI for the raw row (ports start unmasked).
    let raw = TwoLevel::new(OwnedMemory::new(64, 2));
    let rw = Words::of(raw.memory(), PORT, VCPU);

    let mut g = c.benchmark_group("send/fresh");
    g.bench_function("floor", |b| {
        b.iter(|| {
            fl.rearm();
            black_box(fl.floor_raise(black_box(PORT)))
        })
    });
    g.bench_function("evtchn", |b| {
        b.iter(|| {
            ev.rearm();
            ch.send(black_box(port))
        })
    });
    g.bench_function("raw set_pending", |b| {
        b.iter(|| {
            rw.rearm();
            raw.set_pending(black_box(PORT), || VCPU)
        })
    });
    // FIFO: `g.bench_function("evtchn fifo", ...)` (and its floor, `floor
    // fifo`) belong here and in the coalesced group below; report.py
    // already lists those ids.
    g.finish();

    // Leave the port pending: every later send coalesces.
    ch.send(port).expect("send");
    let bit = 1u64 << (PORT % 64);
    fl.pending.store(bit, Relaxed);
    rw.pending.store(bit, Relaxed);
    let mut g = c.benchmark_group("send/coalesced");
    g.bench_function("floor", |b| {
        b.iter(|| black_box(fl.floor_coalesce(black_box(PORT))))
    });
    g.bench_function("evtchn", |b| b.iter(|| ch.send(black_box(port))));
    g.bench_function("raw set_pending", |b| {
        b.iter(|| raw.set_pending(black_box(PORT), || VCPU))
    });
    g.finish();
}

criterion_group!(benches, send);
criterion_main!(benches);
