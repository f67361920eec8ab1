//! Scenario 20: a pass that runs out of budget hands its work to another
//! deliverer of the same vCPU. Ports `p` and `q` are pending on vCPU 0;
//! one thread runs an upcall of vCPU 0 with a budget of one handler run
//! while a second thread runs an unbounded upcall of vCPU 0 through a
//! handle of its own (two deliverers of one vCPU, as in s15); a final
//! drain runs what is left.
//!
//! When the budgeted pass takes the queue (FIFO) or the selector word
//! (2-level) first, it runs one of the two events and gives the other
//! back: FIFO writes the queue's next head back to the control block and
//! sets the `ready` bit again; 2-level sets the selector bit again. The
//! other deliverer, which takes that bit, must find the event the bit
//! stands for: FIFO's `head` as handed back, not the head the budgeted
//! pass already consumed. Each event runs exactly once (C1, and no
//! double run). The final drain runs upcalls only while the upcall flag is
//! set, as a vCPU that halts otherwise: the budgeted pass sets the flag
//! after giving its work back, and the other deliverer's flag clear, made
//! before its own selector (ready) swap, must not land after that set in
//! the flag's modification order. The give-back's `fetch_or` acquires the
//! other deliverer's swap to exclude it (loom explores the store order).
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
            sends: vec![1, 2],
            ..Config::default()
        });
        let p = w.ch.bind(Bind::Affinity(0)).expect("bind");
        let q = w.ch.bind(Bind::Affinity(0)).expect("bind");
        w.flag(0);
        w.ch.send(p).expect("send");
        w.flag(1);
        w.ch.send(q).expect("send");
        let d = w.clone();
        let budgeted = thread::spawn(move || {
            let mut cpu = d.ch.vcpu(0).expect("vCPU 0");
            cpu.upcall_budget(1, |x| d.handle(0, x)).expect("upcall");
        });
        let d = w.clone();
        let other = thread::spawn(move || {
            let mut cpu = d.ch.vcpu(0).expect("vCPU 0");
            cpu.upcall(|x| d.handle(0, x)).expect("upcall");
        });
        budgeted.join().expect("budgeted deliverer");
        other.join().expect("other deliverer");
        // As a vCPU that halts when its upcall flag is clear: a deferred
        // event must leave the flag set (a drain that ignores the flag
        // would hide a flag clear that lands after the deferral's set).
        let mut cpu = w.ch.vcpu(0).expect("vCPU 0");
        while cpu.upcall_pending() {
            cpu.upcall(|x| w.handle(0, x)).expect("upcall");
        }
        for port in [p, q] {
            let runs = w.runs(port.number()).per_vcpu[0];
            assert_eq!(
                runs,
                1,
                "C1: port {} ran {runs} times, not once (stranded by a hand-back, or run twice)",
                port.number()
            );
        }
    });
}

#[test]
fn hand_back_to_another_deliverer_2l() {
    scenario::<TwoL>(None);
}

#[test]
fn hand_back_to_another_deliverer_fifo() {
    scenario::<FifoAbi>(None);
}

/// A 2-level pass out of budget that drops the selector bits it took: the
/// event it did not run stays pending behind no selector bit.
#[test]
#[should_panic(expected = "C1: port 2 ran 0 times")]
fn twin_budget_drops_selector_2l() {
    scenario::<TwoL>(Some(Weaken::BudgetDropsSelector));
}

/// A FIFO pass out of budget that does not hand its queues back: the
/// event it did not run stays linked behind a head nobody reads.
#[test]
#[should_panic(expected = "C1: port 2 ran 0 times")]
fn twin_budget_no_hand_back_fifo() {
    scenario::<FifoAbi>(Some(Weaken::BudgetNoHandBack));
}
