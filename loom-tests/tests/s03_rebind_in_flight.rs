//! Scenario 3, the rebind-in-flight case (C5): an event is pending on vCPU 0 while
//! `set_affinity(0 → 1)` runs and both vCPUs run upcalls. The event is
//! handled exactly once, at most once on vCPU 0; the next send (made after
//! `set_affinity` returned) is raised on vCPU 1 only. The model is
//! [`harness::rebind_in_flight_scenario`]; scenario 6 runs its other twins.
#![cfg(loom)]

extern crate evtchn_loom as evtchn;

mod harness;
use harness::rebind_in_flight_scenario;

#[test]
fn event_in_flight_during_set_affinity() {
    rebind_in_flight_scenario(None);
}

// No twin without the rebind's mask → unmask here: vCPU 0 keeps running,
// and its scan raises a foreign event on the port's vCPU (s12), which
// covers the missing unmask. What the unmask alone gives, the event
// following its port without the old vCPU's help, is model s16's.
