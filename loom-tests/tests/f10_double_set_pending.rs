//! FIFO scenario 10: double set_pending (C1, C2). Two raisers race on one
//! port while vCPU 0 consumes: one sets PENDING, the other finds it set.
//! The raiser that turned PENDING 0 → 1 links the event (PENDING and MASKED
//! share the word, so it sees the mask atomically); the event ends up
//! linked, the guest woken, and both sends observed.
#![cfg(loom)]

extern crate evtchn_loom as evtchn;

use evtchn::{Bind, Weaken};
use loom::thread;
mod harness;
use harness::*;

fn scenario(weaken: Option<Weaken>) {
    model(2, move || {
        let w = World::fifo(Config {
            weaken,
            sends: vec![1, 1],
            ..Config::default()
        });
        let p = w.ch.bind(Bind::Affinity(0)).expect("bind");
        let vcpus = spawn_vcpus(&w);
        let senders: Vec<_> = (0..2)
            .map(|k| {
                let s = w.clone();
                thread::spawn(move || {
                    s.flag(k);
                    s.ch.send(p).expect("send");
                })
            })
            .collect();
        join_all(senders);
        join_all(vcpus);
        let r = w.runs(p.number());
        assert!(
            r.observed[0] && r.observed[1],
            "C1: a send was never observed"
        );
        assert_eq!(r.per_vcpu[1], 0, "ran on a vCPU the port is not bound to");
    });
}

#[test]
fn fifo_double_set_pending() {
    scenario(None);
}

/// The FIFO pending bit set and consumed with Relaxed: the handler that
/// consumes the event need not see the sender's write.
#[test]
#[should_panic(expected = "deadlock")]
fn twin_fifo_relaxed_pending() {
    scenario(Some(Weaken::RelaxedPending));
}
