//! Scenario 6: the same event on two vCPUs (C3). A handler of the port is
//! in flight on vCPU 0 when the port is rebound to vCPU 1 and sent again.
//! The two runs never overlap (the per-port in-flight guard), and the
//! second event is not lost: vCPU 1 finds the port in flight, leaves a
//! replay request, and vCPU 0 re-raises the event on vCPU 1 when its
//! handler ends.
//!
//! The interleavings are those of the rebind-in-flight scenario (s03, whose positive
//! model covers them); this file holds the twins of the two steps that make
//! it safe.
#![cfg(loom)]

extern crate evtchn_loom as evtchn;

use evtchn::Weaken;
mod harness;
use harness::rebind_in_flight_scenario;

/// Without the in-flight guard vCPU 1 runs the handler while vCPU 0 is still
/// inside it: loom's race detector reports the two runs' writes to the
/// handler's data, which no happens-before edge orders (the probe's
/// "inside" flag is ghost state and orders nothing).
#[test]
#[should_panic(expected = "Causality violation: Concurrent write accesses to `UnsafeCell`")]
fn twin_no_in_flight_guard() {
    rebind_in_flight_scenario(Some(Weaken::NoInFlightGuard));
}

/// With the guard but no replay request, vCPU 1 skips the in-flight port and
/// vCPU 0 never learns of the second event: it stays pending, unhandled.
#[test]
#[should_panic(expected = "deadlock")]
fn twin_no_replay() {
    rebind_in_flight_scenario(Some(Weaken::NoReplay));
}

/// With a release that stores the word its claim installed instead of
/// compare-exchanging from it, what the rebinder wrote while vCPU 0's
/// handler ran is overwritten, binding included: the port is bound to
/// vCPU 0 again, and the second send runs there.
#[test]
#[should_panic(expected = "C5: 2 runs on the old vCPU")]
fn twin_release_ignores_changes() {
    rebind_in_flight_scenario(Some(Weaken::ReleaseIgnoresChanges));
}
