//! Scenario 7's other throttle: an upcall with a budget (one handler run
//! here) defers the rest while a sender raises another port of the same
//! vCPU. What the upcall did not offer must stay where the next upcall finds
//! it (2-level: the selector bits its pass took; FIFO: the queue it took,
//! handed back to the control block), and the vCPU's upcall flag must stay
//! set so that it does not halt with work left (C1, C2). The vCPU takes a
//! fresh handle for every upcall, so nothing may stay behind in a cursor.
#![cfg(loom)]

extern crate evtchn_loom as evtchn;

use evtchn::{Bind, Weaken};
use loom::thread;
mod harness;
use harness::*;

fn scenario<A: Abi>(weaken: Option<Weaken>) {
    model(2, move || {
        let w = World::<A>::build(Config {
            weaken,
            sends: vec![1, 2, 3],
            budget: Some(1),
            fresh_handles: true,
            ..Config::default()
        });
        let ports: Vec<_> = (0..3)
            .map(|_| w.ch.bind(Bind::Affinity(0)).expect("bind"))
            .collect();
        for (k, &p) in ports.iter().take(2).enumerate() {
            w.flag(k);
            w.ch.send(p).expect("send");
        }
        let vcpu = spawn_vcpu(&w, 0);
        let s = w.clone();
        let last = ports[2];
        let sender = thread::spawn(move || {
            s.flag(2);
            s.ch.send(last).expect("send");
        });
        sender.join().expect("sender");
        vcpu.join().expect("vcpu");
        for p in ports {
            assert_eq!(
                w.runs(p.number()).per_vcpu,
                [1, 0],
                "port {}: one run, on vCPU 0",
                p.number()
            );
        }
    });
}

#[test]
fn budget_defers_without_loss_2l() {
    scenario::<TwoL>(None);
}

#[test]
fn budget_defers_without_loss_fifo() {
    scenario::<FifoAbi>(None);
}

/// Without giving back the selector bits, the deferred port stays pending
/// in its word with no selector bit: the next upcall never looks there.
#[test]
#[should_panic(expected = "deadlock")]
fn twin_budget_drops_selector() {
    scenario::<TwoL>(Some(Weaken::BudgetDropsSelector));
}

/// Without the upcall flag, the vCPU halts with a port deferred, and a
/// send to the same word (or queue) kicks nobody: its bit is already set.
#[test]
#[should_panic(expected = "deadlock")]
fn twin_budget_no_upcall_flag_2l() {
    scenario::<TwoL>(Some(Weaken::BudgetNoUpcallFlag));
}

#[test]
#[should_panic(expected = "deadlock")]
fn twin_budget_no_upcall_flag_fifo() {
    scenario::<FifoAbi>(Some(Weaken::BudgetNoUpcallFlag));
}

/// Without the hand-back, the queue's `ready` bit and local head leave
/// with the dropped handle: the next handle finds no ready queue, or the
/// stale shared head of an event already taken.
#[test]
#[should_panic(expected = "deadlock")]
fn twin_budget_no_hand_back() {
    scenario::<FifoAbi>(Some(Weaken::BudgetNoHandBack));
}
