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
//! * `all_hand`, `all_evtchn` — re-arm + drain of all 4095 bindable ports;
//! * `one_flow`, `all_flow` — the same drains by the hand scan with a
//!   per-port guard in the style of Linux's edge flow handler
//!   (`floor::hand_scan_flow`);
//! * FIFO (`Fifo` over `OwnedFifo`, with the hand walk of `benches/floor`):
//!   `rearm_fifo_one`, `rearm_fifo_all`; `one_walk`, `one_fifo`;
//!   `all_walk`, `all_fifo`.

use std::hint::black_box;
use std::process::ExitCode;
use std::sync::atomic::Ordering::*;

use evtchn::xen::fifo::PRIORITY_DEFAULT;
use evtchn::InProcess;
use evtchn::{Fifo, Memory2l, OwnedFifo, OwnedMemory, TwoLevel, Vcpu};

#[path = "../benches/floor/mod.rs"]
mod floor;

use floor::{hand_scan, hand_scan_flow, hand_walk, rearm_drain, FifoDrain, FifoPlain, FlowDesc};

const WORDS: usize = 64;
const PORTS: u32 = WORDS as u32 * 64;

type V<'a> = Vcpu<'a, InProcess<TwoLevel<OwnedMemory>, ()>>;
type FifoV<'a> = Vcpu<'a, InProcess<Fifo<OwnedFifo>, ()>>;

#[inline(never)]
fn drain_loop_rearm_fifo(d: &FifoDrain<'_>, all: bool, n: u64) {
    for _ in 0..n {
        d.rearm(all);
        black_box(());
    }
}

#[inline(never)]
fn drain_loop_walk(d: &FifoDrain<'_>, plain: &FifoPlain, all: bool, n: u64) {
    for _ in 0..n {
        d.rearm(all);
        hand_walk(&plain.words, &plain.cb, &plain.vcpu, |p| {
            black_box(p);
        });
    }
}

#[inline(never)]
fn drain_loop_fifo(d: &FifoDrain<'_>, vcpu: &mut FifoV<'_>, all: bool, n: u64) {
    for _ in 0..n {
        d.rearm(all);
        let _ = vcpu.upcall(|p| {
            black_box(p);
        });
    }
}

#[inline(never)]
fn drain_loop_rearm(mem: &OwnedMemory, all: bool, n: u64) {
    for _ in 0..n {
        rearm_drain(mem.pending(), mem.vcpu_info(0).expect("vcpu_info"), all);
        black_box(());
    }
}

#[inline(never)]
fn drain_loop_hand(mem: &OwnedMemory, all: bool, n: u64) {
    for _ in 0..n {
        rearm_drain(mem.pending(), mem.vcpu_info(0).expect("vcpu_info"), all);
        hand_scan(
            mem.pending(),
            mem.mask(),
            mem.vcpu_info(0).expect("vcpu_info"),
            |p| {
                black_box(p);
            },
        );
    }
}

#[inline(never)]
fn drain_loop_flow(mem: &OwnedMemory, desc: &[FlowDesc], all: bool, n: u64) {
    for _ in 0..n {
        rearm_drain(mem.pending(), mem.vcpu_info(0).expect("vcpu_info"), all);
        hand_scan_flow(
            mem.pending(),
            mem.mask(),
            mem.vcpu_info(0).expect("vcpu_info"),
            desc,
            |p| {
                black_box(p);
            },
        );
    }
}

#[inline(never)]
fn drain_loop_evtchn(mem: &OwnedMemory, vcpu: &mut V<'_>, all: bool, n: u64) {
    for _ in 0..n {
        rearm_drain(mem.pending(), mem.vcpu_info(0).expect("vcpu_info"), all);
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

    let ch = floor::all_bound_to_vcpu0(TwoLevel::new(OwnedMemory::new(WORDS, 2)));
    let mut vcpu = ch.vcpu(0).expect("vcpu");
    let ev = ch.abi().memory();
    let fl = OwnedMemory::new(WORDS, 2);
    fl.mask()[0].store(1, Relaxed);
    let desc: Vec<FlowDesc> = (0..PORTS).map(|_| FlowDesc::default()).collect();

    let fch = floor::all_bound_to_vcpu0(Fifo::new(OwnedFifo::new(PORTS, 2)));
    let mut fvcpu = fch.vcpu(0).expect("vcpu");
    let fmem = fch.abi().memory();
    let prio = u32::from(PRIORITY_DEFAULT);
    let fev = FifoDrain::of_memory(fmem, PORTS, 0, prio);
    let plain = FifoPlain::new(PORTS);
    let ffl = FifoDrain::of(plain.words.iter().collect(), &plain.cb, &plain.vcpu, prio);

    match mode.as_str() {
        "rearm_one" => drain_loop_rearm(&fl, false, n),
        "rearm_all" => drain_loop_rearm(&fl, true, n),
        "one_hand" => drain_loop_hand(&fl, false, n),
        "one_evtchn" => drain_loop_evtchn(ev, &mut vcpu, false, n),
        "all_hand" => drain_loop_hand(&fl, true, n),
        "all_evtchn" => drain_loop_evtchn(ev, &mut vcpu, true, n),
        "one_flow" => drain_loop_flow(&fl, &desc, false, n),
        "all_flow" => drain_loop_flow(&fl, &desc, true, n),
        "rearm_fifo_one" => drain_loop_rearm_fifo(&ffl, false, n),
        "rearm_fifo_all" => drain_loop_rearm_fifo(&ffl, true, n),
        "one_walk" => drain_loop_walk(&ffl, &plain, false, n),
        "one_fifo" => drain_loop_fifo(&fev, &mut fvcpu, false, n),
        "all_walk" => drain_loop_walk(&ffl, &plain, true, n),
        "all_fifo" => drain_loop_fifo(&fev, &mut fvcpu, true, n),
        _ => {
            eprintln!(
                "usage: callgrind_drain MODE [N]\n\
                 MODE: rearm_one, rearm_all, one_hand, one_evtchn, all_hand, all_evtchn, one_flow, \
                 all_flow, \
                 rearm_fifo_one, rearm_fifo_all, one_walk, one_fifo, all_walk, all_fifo"
            );
            return ExitCode::FAILURE;
        }
    }
    ExitCode::SUCCESS
}
