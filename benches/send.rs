//! The uncontended send beside its physical floor.
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
//!
//! FIFO rows (the same groups; `Fifo` over `OwnedFifo`, 4096 ports, 2
//! vCPUs, the port at its default priority 7):
//!
//! * `send/fresh` — every iteration first re-arms with the same four plain
//!   stores for evtchn and the floors (`FifoWords::rearm`): event word
//!   clear (not pending, not linked), the queue's `head`, `ready` and the
//!   upcall flag — the state the guest leaves once it has consumed the
//!   event. No public-API call is needed: the raise side's private tail
//!   still names the port, exactly as after a real consumption, and the
//!   raise treats that queue as empty, as it does in use. Then:
//!   - `floor fifo`: the bare atomic sequence of a FIFO raise into an empty
//!     queue, by hand (`FifoWords::floor_raise`) — `fetch_or` PENDING
//!     (checking MASKED and LINKED in the old value), compare-exchange
//!     LINKED, store `head`, `fetch_or` the `ready` bit, `swap` the upcall
//!     flag; the tail a plain cell (one raiser);
//!   - `floor fifo + queue lock`: the same with the tail behind a
//!     `parking_lot::Mutex`, as Xen (`q->lock`) and evtchn keep it so that
//!     several raisers can append to one queue;
//!   - `evtchn fifo`: `Channels::send`;
//!   - `raw fifo set_pending`: `Fifo::set_pending` alone.
//! * `send/coalesced` — a send to a port already pending and linked, beside
//!   `floor fifo`: one `fetch_or` of PENDING on the 32-bit event word.

use std::hint::black_box;
use std::sync::atomic::Ordering::*;

use criterion::{criterion_group, criterion_main, Criterion};
use evtchn::xen::fifo::PRIORITY_DEFAULT;
use evtchn::Raise;
use evtchn::{Bind, Channels, Fifo, FifoMemory, OwnedFifo, OwnedMemory, Raised, TwoLevel};

mod floor;

use floor::{FifoWords, Words};

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

/// Ports of the FIFO rows' memory.
const FIFO_PORTS: u32 = 4096;

fn fifo_channels() -> Channels<Fifo<OwnedFifo>> {
    let ch = Channels::new(Fifo::new(OwnedFifo::new(FIFO_PORTS, 2)), ());
    let mut port = None;
    for _ in 1..=PORT {
        port = Some(ch.bind(Bind::Affinity(VCPU)).expect("bind"));
    }
    let port = port.expect("port");
    assert_eq!(port.number(), PORT);
    // One real send: the port lands on the queue the rows re-arm.
    ch.send(port).expect("send");
    let cb = ch.abi().memory().control_block(VCPU).expect("cb");
    assert_eq!(cb.ready.load(Relaxed), 1 << PRIORITY_DEFAULT);
    ch
}

/// FIFO memory for the floors and the raw row: the port's page mapped,
/// every word clear (unmasked).
fn fifo_memory() -> OwnedFifo {
    let mem = OwnedFifo::new(FIFO_PORTS, 2);
    mem.expand(PORT).expect("expand");
    mem
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

    let prio = u32::from(PRIORITY_DEFAULT);
    let fch = fifo_channels();
    let fport = fch.port(PORT).expect("port");
    let fev = FifoWords::of(fch.abi().memory(), PORT, VCPU, prio);
    let ffl_mem = fifo_memory();
    let ffl = FifoWords::of(&ffl_mem, PORT, VCPU, prio);
    let fraw = Fifo::new(fifo_memory());
    let frw = FifoWords::of(fraw.memory(), PORT, VCPU, prio);
    // Each re-armed raise takes the whole path: it links and kicks.
    ffl.rearm();
    assert!(ffl.floor_raise(PORT), "floor fifo");
    ffl.rearm();
    assert!(ffl.floor_raise_locked(PORT), "floor fifo + queue lock");
    frw.rearm();
    let raised = fraw.set_pending(PORT, || VCPU).expect("set_pending");
    assert_eq!(
        raised,
        Raised::Notified {
            vcpu: VCPU,
            kick: true
        }
    );
    fev.rearm();
    fch.send(fport).expect("send");
    assert_eq!(
        fev.vcpu.evtchn_upcall_pending.load(Relaxed),
        1,
        "evtchn fifo"
    );
    g.bench_function("floor fifo", |b| {
        b.iter(|| {
            ffl.rearm();
            black_box(ffl.floor_raise(black_box(PORT)))
        })
    });
    g.bench_function("floor fifo + queue lock", |b| {
        b.iter(|| {
            ffl.rearm();
            black_box(ffl.floor_raise_locked(black_box(PORT)))
        })
    });
    g.bench_function("evtchn fifo", |b| {
        b.iter(|| {
            fev.rearm();
            fch.send(black_box(fport))
        })
    });
    g.bench_function("raw fifo set_pending", |b| {
        b.iter(|| {
            frw.rearm();
            fraw.set_pending(black_box(PORT), || VCPU)
        })
    });
    g.finish();

    // Leave the port pending: every later send coalesces.
    ch.send(port).expect("send");
    let bit = 1u64 << (PORT % 64);
    fl.pending.store(bit, Relaxed);
    rw.pending.store(bit, Relaxed);
    // FIFO: pending and linked (a raise after the last re-arm).
    for w in [&fev, &ffl, &frw] {
        w.rearm();
    }
    fch.send(fport).expect("send");
    ffl.floor_raise(PORT);
    fraw.set_pending(PORT, || VCPU).expect("set_pending");
    let mut g = c.benchmark_group("send/coalesced");
    g.bench_function("floor", |b| {
        b.iter(|| black_box(fl.floor_coalesce(black_box(PORT))))
    });
    g.bench_function("evtchn", |b| b.iter(|| ch.send(black_box(port))));
    g.bench_function("raw set_pending", |b| {
        b.iter(|| raw.set_pending(black_box(PORT), || VCPU))
    });
    g.bench_function("floor fifo", |b| b.iter(|| black_box(ffl.floor_coalesce())));
    g.bench_function("evtchn fifo", |b| b.iter(|| fch.send(black_box(fport))));
    g.bench_function("raw fifo set_pending", |b| {
        b.iter(|| fraw.set_pending(black_box(PORT), || VCPU))
    });
    g.finish();
}

criterion_group!(benches, send);
criterion_main!(benches);
