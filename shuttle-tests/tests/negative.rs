//! The negative control: the storm (see `harness`, without its late-EOI
//! port) with the per-port in-flight guard removed (`Weaken::NoInFlightGuard`). Two vCPUs then run
//! one port's handler at once, and shuttle finds such a schedule within the
//! short default number of schedules: the test passes only if the C3 check
//! fails.

mod harness;

use evtchn::Weaken;
use harness::{pct, storm_with, TwoL};

#[test]
#[should_panic(expected = "C3: handler of port")]
fn no_in_flight_guard_is_caught() {
    pct("no_in_flight_guard_is_caught", || {
        storm_with::<TwoL>(Some(Weaken::NoInFlightGuard), false)
    });
}
