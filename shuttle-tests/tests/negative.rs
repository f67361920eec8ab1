//! The negative controls: the storm (see `harness`) with one protective
//! step weakened, each marked with the failure it must produce, found
//! within the short default number of schedules.
//!
//! The first: the per-port in-flight guard removed
//! (`Weaken::NoInFlightGuard`; the storm without its late-EOI port, since
//! without the guard there is no late-EOI claim either). Two vCPUs then run
//! one port's handler at once: the test passes only if the C3 check fails.

mod harness;

// Each control runs PCT from a fixed seed: a weakened step can fail in more
// than one way (a run beside another, or a lost event ending in a
// deadlock), and the control must name the one its schedules find first,
// on every run. Overridable for exploring: EVTCHN_SHUTTLE_SEED.
fn seed(default: u64) -> u64 {
    std::env::var("EVTCHN_SHUTTLE_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

use evtchn::Weaken;
use harness::{pct_seeded, storm, storm_with, FifoAbi, TwoL};

#[test]
#[should_panic(expected = "C3: handler of port")]
fn no_in_flight_guard_is_caught() {
    pct_seeded("no_in_flight_guard_is_caught", seed(1), || {
        storm_with::<TwoL>(Some(Weaken::NoInFlightGuard), false)
    });
}

/// FIFO, `Weaken::NoForeignRelink`: a vCPU that takes an event of a port
/// bound elsewhere off its queue drops it; the event is lost, the vCPUs
/// park for good, and shuttle reports the deadlock.
#[test]
#[should_panic(expected = "deadlock!")]
fn fifo_no_foreign_relink_is_caught() {
    pct_seeded("fifo_no_foreign_relink_is_caught", seed(1), || {
        storm::<FifoAbi>(Some(Weaken::NoForeignRelink))
    });
}

/// FIFO, `Weaken::CloseIgnoresInFlight`: the number is bound again while
/// the old life's handler runs, and the new life's handler enters beside
/// it (C3 across lives).
#[test]
#[should_panic(expected = "C3: handler of port")]
fn fifo_close_ignores_in_flight_is_caught() {
    pct_seeded("fifo_close_ignores_in_flight_is_caught", seed(1), || {
        storm::<FifoAbi>(Some(Weaken::CloseIgnoresInFlight))
    });
}
