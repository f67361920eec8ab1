//! Scenario 3, the seed's case (C5): an event is pending on vCPU 0 while
//! `set_affinity(0 → 1)` runs and both vCPUs run upcalls. The event is
//! handled exactly once, at most once on vCPU 0; the next send (made after
//! `set_affinity` returned) is raised on vCPU 1 only. The model is
//! [`loom_tests::seed_scenario`]; scenario 6 runs its other twins.
#![cfg(loom)]

use evtchn::Weaken;
use loom_tests::seed_scenario;

#[test]
fn event_in_flight_during_set_affinity() {
    seed_scenario(None);
}

/// Rebinding without mask → unmask: vCPU 0's scan skips the port (no longer
/// bound there) and nothing raises it on vCPU 1; the next send coalesces
/// with the stranded pending bit.
#[test]
#[should_panic]
fn twin_rebind_without_mask() {
    seed_scenario(Some(Weaken::RebindWithoutMask));
}
