//! Instructions per drained port, for `valgrind --tool=callgrind` (stable
//! where wall-clock time is not). Each mode is one `#[inline(never)]` loop
//! of `N` drains; `benches/report.py` runs
//!
//! ```text
//! valgrind --tool=callgrind --collect-atstart=no --toggle-collect='*drain_loop_*' \
//!     target/release/examples/callgrind_drain <mode> [N]
//! ```
//!
//! for each mode (each runs exactly one `drain_loop_*` function) and divides
//! the instructions counted by `N` (and by 4095 for the `all` modes). Modes (the set-up of `benches/drain.rs`, with the
//! hand scan of `benches/floor`):
//!
//! * `rearm_one`, `rearm_all` — the re-arming stores alone (subtracted);
//! * `one_hand`, `one_evtchn` — re-arm + drain of 1 pending port of 4096;
//! * `all_hand`, `all_evtchn` — re-arm + drain of all 4095 bindable ports.

use std::hint::black_box;
use std::process::ExitCode;
use std::sync::atomic::Ordering::*;

use evtchn::{Bind, Channels, Memory2l, OwnedMemory, TwoLevel, Vcpu};

#[path = "../benches/floor/mod.rs"]
mod floor;

use floor::{hand_scan, rearm_drain};

const WORDS: usize = 64;

type V<'a> = Vcpu<'a, TwoLevel<OwnedMemory>, ()>;

#[inline(never)]
fn drain_loop_rearm(mem: &OwnedMemory, all: bool, n: u64) {
    for _ in 0..n {
        rearm_drain(mem.pending(), &mem.vcpu_info()[0], all);
        black_box(());
    }
}

#[inline(never)]
fn drain_loop_hand(mem: &OwnedMemory, all: bool, n: u64) {
    for _ in 0..n {
        rearm_drain(mem.pending(), &mem.vcpu_info()[0], all);
        hand_scan(mem.pending(), mem.mask(), &mem.vcpu_info()[0], |p| {
            black_box(p);
        });
    }
}

#[inline(never)]
fn drain_loop_evtchn(mem: &OwnedMemory, vcpu: &mut V<'_>, all: bool, n: u64) {
    for _ in 0..n {
        rearm_drain(mem.pending(), &mem.vcpu_info()[0], all);
        let _ = vcpu.upcall(|p| {
            black_box(p);
        });
    }
}

fn main() -> ExitCode {
    let mut args = std::env::args().skip(1);
    let mode = args.next().unwrap_or_default();
    let n: u64 = match args.next().map(|a| a.parse()) {
        None => 10_000,
        Some(Ok(n)) => n,
        Some(Err(e)) => {
            eprintln!("callgrind_drain: N: {e}");
            return ExitCode::FAILURE;
        }
    };

    let ch = Channels::new(TwoLevel::new(OwnedMemory::new(WORDS, 2)), ());
    for _ in 1..WORDS * 64 {
        ch.bind(Bind::Affinity(0)).expect("bind");
    }
    let mut vcpu = ch.vcpu(0).expect("vcpu");
    let ev = ch.abi().memory();
    let fl = OwnedMemory::new(WORDS, 2);
    fl.mask()[0].store(1, Relaxed);

    match mode.as_str() {
        "rearm_one" => drain_loop_rearm(&fl, false, n),
        "rearm_all" => drain_loop_rearm(&fl, true, n),
        "one_hand" => drain_loop_hand(&fl, false, n),
        "one_evtchn" => drain_loop_evtchn(ev, &mut vcpu, false, n),
        "all_hand" => drain_loop_hand(&fl, true, n),
        "all_evtchn" => drain_loop_evtchn(ev, &mut vcpu, true, n),
        _ => {
            eprintln!(
                "usage: callgrind_drain MODE [N]\n\
                 MODE: rearm_one, rearm_all, one_hand, one_evtchn, all_hand, all_evtchn"
            );
            return ExitCode::FAILURE;
        }
    }
    ExitCode::SUCCESS
}
