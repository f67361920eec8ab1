//! FIFO scenario 12: the stale HEAD. The raiser writes a queue's `head` and
//! sets its `ready` bit only when the queue was empty (its tail no longer
//! linked); otherwise it appends after the tail. Here a sender raises two
//! ports of one queue while vCPU 0 consumes it, so every append can meet
//! the tail being taken off the queue: both events are delivered, each once.
//!
//! No negative twin: setting `ready` on every append (Xen's pre-fix
//! behaviour) makes the guest re-read a `head` it already consumed, and this
//! consumer takes a head off its queue only while its word is still
//! LINKED, relinking anything bound elsewhere; so the weakened variant
//! wastes a pass but loses nothing, and loom rightly finds no failure.
#![cfg(loom)]

extern crate evtchn_loom as evtchn;

use evtchn::Bind;
use loom::thread;
mod harness;
use harness::*;

#[test]
fn fifo_append_vs_consume() {
    model(2, || {
        let w = World::fifo(Config {
            sends: vec![1, 2],
            ..Config::default()
        });
        let a = w.ch.bind(Bind::Affinity(0)).expect("bind");
        let b = w.ch.bind(Bind::Affinity(0)).expect("bind");
        let vcpus = spawn_vcpus(&w);
        let s = w.clone();
        let sender = thread::spawn(move || {
            s.flag(0);
            s.ch.send(a).expect("send");
            s.flag(1);
            s.ch.send(b).expect("send");
        });
        sender.join().expect("sender");
        join_all(vcpus);
        assert_eq!(w.runs(a.number()).per_vcpu, [1, 0]);
        assert_eq!(w.runs(b.number()).per_vcpu, [1, 0]);
    });
}
