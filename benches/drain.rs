//! Issue item 2: the upcall drain beside a hand-written two-level scan.
//!
//! 4096 ports (64 words), all bound to vCPU 0 (port 0 is reserved, as in
//! Xen, and stays masked). Every iteration re-arms the pending words, the
//! selector and the upcall flag with the same plain (`Relaxed`) stores for
//! both rows (`floor::rearm_drain`), then drains:
//!
//! * `drain/1 of 4096` — one pending port (word 32);
//! * `drain/4095 of 4096` — every bindable port pending.
//!
//! Rows:
//!
//! * `hand scan` (`floor::hand_scan`) — what a guest writes with no control
//!   plane: clear the upcall flag, `swap` the selector, for each selected
//!   word `pending & !mask`, for each bit a `fetch_and` that clears it, then
//!   the handler. The words are plain `AtomicU64`s; the clear must be
//!   atomic (the raiser sets bits concurrently), so this is the least a
//!   correct drain does.
//! * `evtchn` — `Vcpu::upcall`: the same scan, round-robin, plus for each
//!   port the port-table check and the in-flight guard (C3).
//!
//! The handler is `black_box(port)` for both.

use std::hint::black_box;
use std::sync::atomic::Ordering::*;

use criterion::{criterion_group, criterion_main, Criterion};
use evtchn::{Bind, Channels, Memory2l, OwnedMemory, TwoLevel};

mod floor;

use floor::{hand_scan, rearm_drain};

const WORDS: usize = 64;

fn drain(c: &mut Criterion) {
    let ch = Channels::new(TwoLevel::new(OwnedMemory::new(WORDS, 2)), ());
    for _ in 1..WORDS * 64 {
        ch.bind(Bind::Affinity(0)).expect("bind");
    }
    let mut vcpu = ch.vcpu(0).expect("vcpu");
    let ev = ch.abi().memory();
    let fl = OwnedMemory::new(WORDS, 2);
    // Port 0 masked, as the control plane leaves it.
    fl.mask()[0].store(1, Relaxed);

    for (name, all) in [("drain/1 of 4096", false), ("drain/4095 of 4096", true)] {
        let mut g = c.benchmark_group(name);
        g.bench_function("hand scan", |b| {
            b.iter(|| {
                rearm_drain(fl.pending(), &fl.vcpu_info()[0], all);
                hand_scan(fl.pending(), fl.mask(), &fl.vcpu_info()[0], |p| {
                    black_box(p);
                })
            })
        });
        // FIFO: `g.bench_function("evtchn fifo", ...)` belongs in this
        // group; report.py already lists its id.
        g.bench_function("evtchn", |b| {
            b.iter(|| {
                rearm_drain(ev.pending(), &ev.vcpu_info()[0], all);
                vcpu.upcall(|p| {
                    black_box(p);
                })
            })
        });
        g.finish();
    }
}

criterion_group!(benches, drain);
criterion_main!(benches);
