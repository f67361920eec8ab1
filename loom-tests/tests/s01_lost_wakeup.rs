//! Scenario 1: send vs upcall, lost wake-up (C1, C2).
//!
//! vCPU 0 is a halt-until-kicked loop with two ports of one pending word
//! bound to it: port `a` is raised before the vCPUs start, port `b` by a
//! sender while vCPU 0 runs its upcall. The
//! upcall clears `evtchn_upcall_pending` before it exchanges the selector
//! with 0; the raiser sets the selector bit (Acquire/Release) and then the
//! flag. If the vCPU could miss both the selector bit and the kick, it would
//! halt forever: loom reports the deadlock.
#![cfg(loom)]

extern crate evtchn_loom as evtchn;

use evtchn::{Bind, Weaken};
use loom::thread;
mod harness;
use harness::*;

fn scenario(weaken: Option<Weaken>) {
    model(2, move || {
        let w = World::new(Config {
            weaken,
            sends: vec![1, 2],
            ..Config::default()
        });
        let a = w.ch.bind(Bind::Affinity(0)).expect("bind");
        let b = w.ch.bind(Bind::Affinity(0)).expect("bind");
        assert_eq!((a.number(), b.number()), (1, 2));
        // Port `a` is raised before the vCPUs start: vCPU 0 begins with its
        // upcall flag and the word's selector bit set, so the raise of `b`
        // can fall between its selector exchange and its flag clear.
        w.flag(0);
        w.ch.send(a).expect("send");
        let vcpus = spawn_vcpus(&w);
        let s = w.clone();
        let sender = thread::spawn(move || {
            s.flag(1);
            s.ch.send(b).expect("send");
        });
        sender.join().expect("sender");
        join_all(vcpus);
        let (ra, rb) = (w.runs(a.number()), w.runs(b.number()));
        assert!(
            ra.observed[0] && rb.observed[1],
            "C1: a send was never observed"
        );
        assert_eq!(rb.per_vcpu[0], 1, "C1: port b ran {:?} times", rb.per_vcpu);
        assert_eq!(ra.per_vcpu[1] + rb.per_vcpu[1], 0, "ran on an unbound vCPU");
    });
}

#[test]
fn send_vs_upcall() {
    scenario(None);
}

/// Clearing the upcall flag after the selector exchange: the raiser sets the
/// selector bit after the exchange but sees the flag still set and kicks
/// nobody; the vCPU then clears the flag and halts with work pending.
#[test]
#[should_panic(expected = "deadlock")]
fn twin_clear_upcall_after_selector() {
    scenario(Some(Weaken::ClearUpcallAfterSelector));
}

/// A Relaxed selector hand-off: the raiser's swap of the upcall flag need
/// not see the vCPU's clear, so it reports no kick while the clear lands
/// after it.
#[test]
#[should_panic(expected = "deadlock")]
fn twin_relaxed_selector() {
    scenario(Some(Weaken::RelaxedSelector));
}

/// A Relaxed pending bit: the handler that consumes the send need not see
/// the sender's flag written before it.
#[test]
#[should_panic(expected = "deadlock")]
fn twin_relaxed_pending() {
    scenario(Some(Weaken::RelaxedPending));
}
