//! FIFO: the rebind-in-flight scenario (3 and 6) and close vs send
//! with port reuse (8), on the FIFO ABI. The protective step special to
//! FIFO: an event still linked on the old vCPU's queue when the rebind's
//! unmask runs cannot be linked again by it; the old vCPU, taking it off its
//! queue and finding it bound elsewhere, links it on the new vCPU.
#![cfg(loom)]

extern crate evtchn_loom as evtchn;

use evtchn::Weaken;
mod harness;
use harness::*;

#[test]
fn fifo_rebind_in_flight() {
    rebind_in_flight_scenario_on::<FifoAbi>(None);
}

/// Without the old vCPU's relink, an event linked on its queue when the
/// rebind ran is taken off and never linked where it now belongs.
#[test]
#[should_panic(expected = "deadlock")]
fn twin_no_foreign_relink() {
    rebind_in_flight_scenario_on::<FifoAbi>(Some(Weaken::NoForeignRelink));
}

#[test]
fn fifo_close_is_final() {
    close_scenario_on::<FifoAbi>(None);
}
