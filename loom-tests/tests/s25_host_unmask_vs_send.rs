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

use evtchn::Weaken;
use loom::thread;
mod harness;
use harness::*;

fn scenario<A: Abi>(weaken: Option<Weaken>) {
    model(2, move || {
        let w = HostWorld::<A>::build(HostConfig {
            weaken,
            sends: vec![1],
            ..HostConfig::default()
        });
        let p = w.bind(0);
        w.guest_mask(p);
        let vcpu0 = spawn_guest_vcpu(&w, 0);
        let s = w.clone();
        let sender = thread::spawn(move || {
            s.flag(0);
            s.host.send(p).expect("send");
            tr(format!("sent port {p}"));
        });
        let u = w.clone();
        let unmasker = thread::spawn(move || u.guest_unmask_by_hypercall(p));
        sender.join().expect("sender");
        unmasker.join().expect("unmasker");
        // vCPU 0's loop ends once a run has observed the send; a lost
        // event leaves it parked for ever (loom reports the deadlock).
        vcpu0.join().expect("vCPU 0");
        let runs = w.runs(p);
        assert!(runs.observed[0], "C1: the send was never observed");
        assert_eq!(runs.per_vcpu, [1, 0], "C1: once, on vCPU 0");
    });
}

#[test]
fn host_unmask_vs_send_2l() {
    scenario::<TwoL>(None);
}

#[test]
fn host_unmask_vs_send_fifo() {
    scenario::<FifoAbi>(None);
}

/// Without the store-load fences: the send reads the mask still set, the
/// unmask reads the pending bit still clear, and nobody raises the event.
#[test]
#[should_panic(expected = "deadlock")]
fn twin_host_unmask_without_fence_2l() {
    scenario::<TwoL>(Some(Weaken::NoStoreLoadFence));
}
