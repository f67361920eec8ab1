//! Scenario 25: the hypervisor side's unmask (`EVTCHNOP_unmask`,
//! `Host::unmask`) racing a send of the same port (both ABIs). The guest
//! masked `p` in its own memory and unmasks it by hypercall alone, without
//! Linux's conditional unmask (a guest older than XSA-332, or one written
//! another way): nothing but the hypervisor's unmask can raise an event
//! the send left behind the mask.
//!
//! On 2-level the send sets the pending bit and then reads the mask; the
//! unmask clears the mask bit and then reads the pending bit (a Dekker
//! pattern: each side's store, a store-load fence, its load). Without the
//! fence both loads may miss the other side's store: the send sees the
//! mask, the unmask sees nothing pending, and the event is never raised.
//! On FIFO both sides change the one event word, so no fence is needed.
#![cfg(loom)]

extern crate evtchn_loom as evtchn;

use evtchn::Weaken;
mod harness;
use harness::*;

#[test]
fn host_unmask_vs_send_2l() {
    host_unmask_scenario_on::<TwoL>(None, UnmaskBy::Hypercall);
}

#[test]
fn host_unmask_vs_send_fifo() {
    host_unmask_scenario_on::<FifoAbi>(None, UnmaskBy::Hypercall);
}

/// Without the store-load fences: the send reads the mask still set, the
/// unmask reads the pending bit still clear, and nobody raises the event.
#[test]
#[should_panic(expected = "deadlock")]
fn twin_host_unmask_without_fence_2l() {
    host_unmask_scenario_on::<TwoL>(Some(Weaken::NoStoreLoadFence), UnmaskBy::Hypercall);
}
