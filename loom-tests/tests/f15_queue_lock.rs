//! The FIFO queue lock: two raisers append different ports to the same
//! queue (vCPU 0, priority 7) at once. Appends to one queue are serialised
//! by its spin lock (Xen's `q->lock`); each critical section reads and
//! writes the queue's private tail. Both events must be linked and
//! delivered (C1), and the two critical sections must be ordered: loom
//! checks the tail through its `UnsafeCell`, so two holders whose accesses
//! are not ordered by happens-before are a reported race.
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
            sends: vec![1, 2],
            ..Config::default()
        });
        let ports = [
            w.ch.bind(Bind::Affinity(0)).expect("bind"),
            w.ch.bind(Bind::Affinity(0)).expect("bind"),
        ];
        let senders: Vec<_> = ports
            .iter()
            .enumerate()
            .map(|(k, &p)| {
                let s = w.clone();
                thread::spawn(move || {
                    s.flag(k);
                    s.ch.send(p).expect("send");
                })
            })
            .collect();
        join_all(senders);
        // Drained after the raisers: the model is about the appends.
        w.drain();
        for p in ports {
            assert_eq!(w.runs(p.number()).per_vcpu, [1, 0], "port {}", p.number());
        }
    });
}

#[test]
fn appends_to_one_queue_are_serialised() {
    scenario(None);
}

/// With the lock's Acquire/Release weakened to Relaxed, the second holder's
/// tail access is not ordered after the first's: loom reports the race.
#[test]
#[should_panic(expected = "Causality violation: Concurrent write accesses to `UnsafeCell`")]
fn twin_relaxed_queue_lock() {
    scenario(Some(Weaken::RelaxedQueueLock));
}
