//! The upcall drain beside a hand-written two-level scan.
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
//! * `hand scan + flow lock` (`floor::hand_scan_flow`) — the hand scan
//!   with the per-port guard of Linux's edge flow handler, which a Linux
//!   guest runs for an event channel bound as an ordinary interrupt: lock
//!   the port's descriptor, clear the pending bit, mark it in progress,
//!   unlock, the handler, lock, clear the mark, unlock. Three locked
//!   instructions per event, as evtchn's claim, clear and release: the
//!   baseline of a drain that keeps one handler of a port running at a
//!   time (C3) while ports may move. A descriptor is a 32-bit lock and a
//!   32-bit state word per port: 8 bytes, as evtchn's control word.
//!
//! FIFO rows (the same groups; `Fifo` over `OwnedFifo`, 4096 ports, 2
//! vCPUs, ports 1..=4095 bound to vCPU 0 at the default priority 7). Every
//! iteration re-arms the state raises leave — the event words pending and
//! linked (one port alone, or 1 → 2 → … → 4095 in one chain), the queue's
//! `head`, its `ready` bit and the upcall flag — with the same plain stores
//! for both rows (`floor::FifoDrain::rearm`), then drains:
//!
//! * `hand walk` (`floor::hand_walk`) — what a FIFO guest writes with no
//!   control plane: clear the upcall flag, swap `ready`, and per event a
//!   compare-exchange that takes it off the queue and a `fetch_and` that
//!   clears PENDING, then the handler. This is the FIFO ABI's own floor
//!   (FIFO links each event, so its drain costs what the 2-level hand scan
//!   does not: the 2-level rows stay the 2-level ABI's baseline);
//! * `evtchn fifo` — `Vcpu::upcall` over `Fifo`: the same walk, plus per
//!   port the port-table check and the in-flight guard (C3).
//!
//! The handler is `black_box(port)` for all rows.

use std::hint::black_box;
use std::sync::atomic::Ordering::*;

use criterion::{criterion_group, criterion_main, Criterion};
use evtchn::xen::fifo::PRIORITY_DEFAULT;
use evtchn::{Fifo, Memory2l, OwnedFifo, OwnedMemory, TwoLevel};

mod floor;

use floor::{hand_scan, hand_scan_flow, hand_walk, rearm_drain, FifoDrain, FifoPlain, FlowDesc};

const WORDS: usize = 64;
const PORTS: u32 = WORDS as u32 * 64;

fn drain(c: &mut Criterion) {
    let ch = floor::all_bound_to_vcpu0(TwoLevel::new(OwnedMemory::new(WORDS, 2)));
    let mut vcpu = ch.vcpu(0).expect("vcpu");
    let ev = ch.abi().memory();
    let fl = OwnedMemory::new(WORDS, 2);
    // Port 0 masked, as the control plane leaves it.
    fl.mask()[0].store(1, Relaxed);
    let desc: Vec<FlowDesc> = (0..PORTS).map(|_| FlowDesc::default()).collect();
    let (fp, fm, fvi) = (fl.pending(), fl.mask(), fl.vcpu_info(0).expect("vcpu_info"));

    let fch = floor::all_bound_to_vcpu0(Fifo::new(OwnedFifo::new(PORTS, 2)));
    let mut fvcpu = fch.vcpu(0).expect("vcpu");
    let fmem = fch.abi().memory();
    let prio = u32::from(PRIORITY_DEFAULT);
    let fev = FifoDrain::of_memory(fmem, PORTS, 0, prio);
    let plain = FifoPlain::new(PORTS);
    let ffl = FifoDrain::of(plain.words.iter().collect(), &plain.cb, &plain.vcpu, prio);

    for (name, all) in [("drain/1 of 4096", false), ("drain/4095 of 4096", true)] {
        // Every row handles every port it re-armed, once.
        let want = if all { PORTS as usize - 1 } else { 1 };
        let mut n = 0;
        rearm_drain(fp, fvi, all);
        hand_scan(fp, fm, fvi, |_| n += 1);
        assert_eq!(n, want, "hand scan");
        n = 0;
        rearm_drain(fp, fvi, all);
        hand_scan_flow(fp, fm, fvi, &desc, |_| n += 1);
        assert_eq!(n, want, "hand scan + flow lock");
        assert!(
            desc.iter().all(FlowDesc::is_idle),
            "every descriptor unlocked and idle after the scan"
        );
        rearm_drain(ev.pending(), ev.vcpu_info(0).expect("vcpu_info"), all);
        assert_eq!(vcpu.upcall(|_| {}).expect("upcall"), want, "evtchn");
        n = 0;
        ffl.rearm(all);
        hand_walk(&plain.words, &plain.cb, &plain.vcpu, |_| n += 1);
        assert_eq!(n, want, "hand walk");
        fev.rearm(all);
        assert_eq!(fvcpu.upcall(|_| {}).expect("upcall"), want, "evtchn fifo");

        let mut g = c.benchmark_group(name);
        g.bench_function("hand scan", |b| {
            b.iter(|| {
                rearm_drain(fp, fvi, all);
                hand_scan(fp, fm, fvi, |p| {
                    black_box(p);
                })
            })
        });
        g.bench_function("hand scan + flow lock", |b| {
            b.iter(|| {
                rearm_drain(fp, fvi, all);
                hand_scan_flow(fp, fm, fvi, &desc, |p| {
                    black_box(p);
                })
            })
        });
        g.bench_function("evtchn", |b| {
            b.iter(|| {
                rearm_drain(ev.pending(), ev.vcpu_info(0).expect("vcpu_info"), all);
                vcpu.upcall(|p| {
                    black_box(p);
                })
            })
        });
        g.bench_function("hand walk", |b| {
            b.iter(|| {
                ffl.rearm(all);
                hand_walk(&plain.words, &plain.cb, &plain.vcpu, |p| {
                    black_box(p);
                })
            })
        });
        g.bench_function("evtchn fifo", |b| {
            b.iter(|| {
                fev.rearm(all);
                fvcpu.upcall(|p| {
                    black_box(p);
                })
            })
        });
        g.finish();
    }
}

criterion_group!(benches, drain);
criterion_main!(benches);
