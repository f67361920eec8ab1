//! Instructions per send, for `valgrind --tool=callgrind` (stable where
//! wall-clock time is not). Each mode is one `#[inline(never)]` loop of `N`
//! iterations; `benches/report.py` runs
//!
//! ```text
//! valgrind --tool=callgrind --collect-atstart=no --toggle-collect='*send_loop_*' \
//!     target/release/examples/callgrind_send <mode> [N]
//! ```
//!
//! for each mode (each runs exactly one `send_loop_*` function) and divides
//! the instructions counted by `N`. Modes (the
//! set-up of `benches/send.rs`, with the floor of `benches/floor`):
//!
//! * `rearm` — the re-arming stores alone (subtracted from the fresh modes);
//! * `fresh_floor`, `fresh_evtchn`, `fresh_raw` — re-arm + fresh raise;
//! * `coalesced_floor`, `coalesced_evtchn`, `coalesced_raw` — a send to a
//!   port already pending;
//! * FIFO (`Fifo` over `OwnedFifo`, as in `benches/send.rs`): `rearm_fifo`;
//!   `fresh_fifo_floor`, `fresh_fifo_floor_locked`, `fresh_fifo_evtchn`,
//!   `fresh_fifo_raw`; `coalesced_fifo_floor`, `coalesced_fifo_evtchn`,
//!   `coalesced_fifo_raw`;
//! * the hypervisor's send alone (`Host::send`, a VMM raising for its
//!   guest): `fresh_host`, `coalesced_host`, `fresh_fifo_host`,
//!   `coalesced_fifo_host` (re-armed as the rows above).

use std::hint::black_box;
use std::process::ExitCode;
use std::sync::atomic::Ordering::*;

use evtchn::xen::fifo::PRIORITY_DEFAULT;
use evtchn::Raise;
use evtchn::{Bind, Channels, Fifo, FifoMemory, Host, OwnedFifo, OwnedMemory, Port, TwoLevel};

#[path = "../benches/floor/mod.rs"]
mod floor;

use floor::{FifoWords, Words};

const PORT: u32 = 65;
const VCPU: u32 = 1;
const FIFO_PORTS: u32 = 4096;

type Ch = Channels<TwoLevel<OwnedMemory>>;
type FifoCh = Channels<Fifo<OwnedFifo>>;
type Fw<'a> = FifoWords<'a, OwnedFifo>;
type HostTl = Host<TwoLevel<OwnedMemory>>;
type HostFifo = Host<Fifo<OwnedFifo>>;

#[inline(never)]
fn send_loop_rearm(w: &Words<'_>, n: u64) {
    for _ in 0..n {
        w.rearm();
        black_box(());
    }
}

#[inline(never)]
fn send_loop_fresh_floor(w: &Words<'_>, n: u64) {
    for _ in 0..n {
        w.rearm();
        black_box(w.floor_raise(black_box(PORT)));
    }
}

#[inline(never)]
fn send_loop_fresh_evtchn(w: &Words<'_>, ch: &Ch, port: Port, n: u64) {
    for _ in 0..n {
        w.rearm();
        let _ = black_box(ch.send(black_box(port)));
    }
}

#[inline(never)]
fn send_loop_fresh_raw(w: &Words<'_>, raw: &TwoLevel<OwnedMemory>, n: u64) {
    for _ in 0..n {
        w.rearm();
        let _ = black_box(raw.set_pending(black_box(PORT), || VCPU));
    }
}

#[inline(never)]
fn send_loop_coalesced_floor(w: &Words<'_>, n: u64) {
    for _ in 0..n {
        black_box(w.floor_coalesce(black_box(PORT)));
    }
}

#[inline(never)]
fn send_loop_coalesced_evtchn(ch: &Ch, port: Port, n: u64) {
    for _ in 0..n {
        let _ = black_box(ch.send(black_box(port)));
    }
}

#[inline(never)]
fn send_loop_coalesced_raw(raw: &TwoLevel<OwnedMemory>, n: u64) {
    for _ in 0..n {
        let _ = black_box(raw.set_pending(black_box(PORT), || VCPU));
    }
}

#[inline(never)]
fn send_loop_rearm_fifo(w: &Fw<'_>, n: u64) {
    for _ in 0..n {
        w.rearm();
        black_box(());
    }
}

#[inline(never)]
fn send_loop_fresh_fifo_floor(w: &Fw<'_>, n: u64) {
    for _ in 0..n {
        w.rearm();
        black_box(w.floor_raise(black_box(PORT)));
    }
}

#[inline(never)]
fn send_loop_fresh_fifo_floor_locked(w: &Fw<'_>, n: u64) {
    for _ in 0..n {
        w.rearm();
        black_box(w.floor_raise_locked(black_box(PORT)));
    }
}

#[inline(never)]
fn send_loop_fresh_fifo_evtchn(w: &Fw<'_>, ch: &FifoCh, port: Port, n: u64) {
    for _ in 0..n {
        w.rearm();
        let _ = black_box(ch.send(black_box(port)));
    }
}

#[inline(never)]
fn send_loop_fresh_fifo_raw(w: &Fw<'_>, raw: &Fifo<OwnedFifo>, n: u64) {
    for _ in 0..n {
        w.rearm();
        let _ = black_box(raw.set_pending(black_box(PORT), || VCPU));
    }
}

#[inline(never)]
fn send_loop_coalesced_fifo_floor(w: &Fw<'_>, n: u64) {
    for _ in 0..n {
        black_box(w.floor_coalesce());
    }
}

#[inline(never)]
fn send_loop_coalesced_fifo_evtchn(ch: &FifoCh, port: Port, n: u64) {
    for _ in 0..n {
        let _ = black_box(ch.send(black_box(port)));
    }
}

#[inline(never)]
fn send_loop_coalesced_fifo_raw(raw: &Fifo<OwnedFifo>, n: u64) {
    for _ in 0..n {
        let _ = black_box(raw.set_pending(black_box(PORT), || VCPU));
    }
}

#[inline(never)]
fn send_loop_fresh_host(w: &Words<'_>, host: &HostTl, n: u64) {
    for _ in 0..n {
        w.rearm();
        let _ = black_box(host.send(black_box(PORT)));
    }
}

#[inline(never)]
fn send_loop_coalesced_host(host: &HostTl, n: u64) {
    for _ in 0..n {
        let _ = black_box(host.send(black_box(PORT)));
    }
}

#[inline(never)]
fn send_loop_fresh_fifo_host(w: &Fw<'_>, host: &HostFifo, n: u64) {
    for _ in 0..n {
        w.rearm();
        let _ = black_box(host.send(black_box(PORT)));
    }
}

#[inline(never)]
fn send_loop_coalesced_fifo_host(host: &HostFifo, n: u64) {
    for _ in 0..n {
        let _ = black_box(host.send(black_box(PORT)));
    }
}

/// FIFO memory with the port's page mapped, every word clear.
fn fifo_memory() -> OwnedFifo {
    let mem = OwnedFifo::new(FIFO_PORTS, 2);
    mem.expand(PORT).expect("expand");
    mem
}

fn main() -> ExitCode {
    let mut args = std::env::args().skip(1);
    let mode = args.next().unwrap_or_default();
    let n: u64 = match args.next().map(|a| a.parse()) {
        None => 100_000,
        Some(Ok(n)) => n,
        Some(Err(e)) => {
            eprintln!("callgrind_send: N: {e}");
            return ExitCode::FAILURE;
        }
    };

    let ch: Ch = Channels::new(TwoLevel::new(OwnedMemory::new(64, 2)), ());
    let mut port = None;
    for _ in 1..=PORT {
        port = Some(ch.bind(Bind::Affinity(VCPU)).expect("bind"));
    }
    let port = port.expect("port");
    let ev = Words::of(ch.abi().memory(), PORT, VCPU);
    let floor_mem = OwnedMemory::new(64, 2);
    let fl = Words::of(&floor_mem, PORT, VCPU);
    let raw = TwoLevel::new(OwnedMemory::new(64, 2));
    let rw = Words::of(raw.memory(), PORT, VCPU);
    let bit = 1u64 << (PORT % 64);

    let prio = u32::from(PRIORITY_DEFAULT);
    let fch: FifoCh = Channels::new(Fifo::new(OwnedFifo::new(FIFO_PORTS, 2)), ());
    let mut fport = None;
    for _ in 1..=PORT {
        fport = Some(fch.bind(Bind::Affinity(VCPU)).expect("bind"));
    }
    let fport = fport.expect("port");
    let fev = FifoWords::of(fch.abi().memory(), PORT, VCPU, prio);
    let ffl_mem = fifo_memory();
    let ffl = FifoWords::of(&ffl_mem, PORT, VCPU, prio);
    let fraw = Fifo::new(fifo_memory());
    let frw = FifoWords::of(fraw.memory(), PORT, VCPU, prio);

    // The hypervisor side alone (`Host::send`: a VMM raising for its
    // guest), port `PORT` bound to `VCPU` on each ABI.
    let host: HostTl = Host::new(TwoLevel::new(OwnedMemory::new(64, 2)), ());
    let fhost: HostFifo = Host::new(Fifo::new(OwnedFifo::new(FIFO_PORTS, 2)), ());
    for h in 1..=PORT {
        assert_eq!(host.bind(VCPU), Ok(h), "host bind");
        assert_eq!(fhost.bind(VCPU), Ok(h), "host bind (FIFO)");
    }
    let hw = Words::of(host.abi().memory(), PORT, VCPU);
    let fhw = FifoWords::of(fhost.abi().memory(), PORT, VCPU, prio);

    match mode.as_str() {
        "rearm" => send_loop_rearm(&fl, n),
        "fresh_floor" => send_loop_fresh_floor(&fl, n),
        "fresh_evtchn" => send_loop_fresh_evtchn(&ev, &ch, port, n),
        "fresh_raw" => send_loop_fresh_raw(&rw, &raw, n),
        "coalesced_floor" => {
            fl.pending.store(bit, Relaxed);
            send_loop_coalesced_floor(&fl, n)
        }
        "coalesced_evtchn" => {
            ch.send(port).expect("send");
            send_loop_coalesced_evtchn(&ch, port, n)
        }
        "coalesced_raw" => {
            rw.pending.store(bit, Relaxed);
            send_loop_coalesced_raw(&raw, n)
        }
        "rearm_fifo" => send_loop_rearm_fifo(&ffl, n),
        "fresh_fifo_floor" => send_loop_fresh_fifo_floor(&ffl, n),
        "fresh_fifo_floor_locked" => send_loop_fresh_fifo_floor_locked(&ffl, n),
        "fresh_fifo_evtchn" => send_loop_fresh_fifo_evtchn(&fev, &fch, fport, n),
        "fresh_fifo_raw" => send_loop_fresh_fifo_raw(&frw, &fraw, n),
        "coalesced_fifo_floor" => {
            ffl.floor_raise(PORT);
            send_loop_coalesced_fifo_floor(&ffl, n)
        }
        "coalesced_fifo_evtchn" => {
            fch.send(fport).expect("send");
            send_loop_coalesced_fifo_evtchn(&fch, fport, n)
        }
        "coalesced_fifo_raw" => {
            fraw.set_pending(PORT, || VCPU).expect("set_pending");
            send_loop_coalesced_fifo_raw(&fraw, n)
        }
        "fresh_host" => send_loop_fresh_host(&hw, &host, n),
        "coalesced_host" => {
            host.send(PORT).expect("send");
            send_loop_coalesced_host(&host, n)
        }
        "fresh_fifo_host" => send_loop_fresh_fifo_host(&fhw, &fhost, n),
        "coalesced_fifo_host" => {
            fhost.send(PORT).expect("send");
            send_loop_coalesced_fifo_host(&fhost, n)
        }
        _ => {
            eprintln!(
                "usage: callgrind_send MODE [N]\n\
                 MODE: rearm, fresh_floor, fresh_evtchn, fresh_raw, \
                 coalesced_floor, coalesced_evtchn, coalesced_raw, \
                 rearm_fifo, fresh_fifo_floor, fresh_fifo_floor_locked, \
                 fresh_fifo_evtchn, fresh_fifo_raw, coalesced_fifo_floor, \
                 coalesced_fifo_evtchn, coalesced_fifo_raw, fresh_host, \
                 coalesced_host, fresh_fifo_host, coalesced_fifo_host"
            );
            return ExitCode::FAILURE;
        }
    }
    ExitCode::SUCCESS
}
