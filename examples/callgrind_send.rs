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
//!   port already pending.

use std::hint::black_box;
use std::process::ExitCode;
use std::sync::atomic::Ordering::*;

use evtchn::{Bind, Channels, OwnedMemory, Port, PortOps, TwoLevel};

#[path = "../benches/floor/mod.rs"]
mod floor;

use floor::Words;

const PORT: u32 = 65;
const VCPU: u32 = 1;

type Ch = Channels<TwoLevel<OwnedMemory>>;

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
        _ => {
            eprintln!(
                "usage: callgrind_send MODE [N]\n\
                 MODE: rearm, fresh_floor, fresh_evtchn, fresh_raw, \
                 coalesced_floor, coalesced_evtchn, coalesced_raw"
            );
            return ExitCode::FAILURE;
        }
    }
    ExitCode::SUCCESS
}
