//! Scenario 5: a send during the rebind's mask → rebind → unmask (C1, C4).
//!
//! The sender writes *pending* then reads *mask*; the unmask writes *mask*
//! then reads *pending* (a store-buffer pattern). Either the sender sees the
//! port unmasked and raises it on the vCPU it reads after that, or the
//! unmask sees it pending and raises it on the new vCPU.
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
            sends: vec![1],
            ..Config::default()
        });
        let p = w.ch.bind(Bind::Affinity(0)).expect("bind");
        let vcpus = spawn_vcpus(&w);
        let s = w.clone();
        let sender = thread::spawn(move || {
            s.flag(0);
            s.ch.send(p).expect("send");
        });
        let r = w.clone();
        let rebinder = thread::spawn(move || r.ch.set_affinity(p, 1).expect("set_affinity"));
        sender.join().expect("sender");
        rebinder.join().expect("rebinder");
        join_all(vcpus);
        let r = w.runs(p.number());
        assert!(r.observed[0], "C1: the send was never observed");
        assert_eq!(r.per_vcpu[0] + r.per_vcpu[1], 1, "handled {:?}", r.per_vcpu);
    });
}

#[test]
fn send_during_rebind() {
    scenario(None);
}

/// Without the store-load fence both sides may read the old value: the
/// sender sees the rebind's mask, the unmask misses the pending bit.
#[test]
#[should_panic(expected = "deadlock")]
fn twin_no_store_load_fence() {
    scenario(Some(Weaken::NoStoreLoadFence));
}

// No twin without the rebind's mask → unmask here: vCPU 0 keeps running,
// and its scan raises a foreign event on the port's vCPU (s12), which
// covers the missing unmask. What the unmask alone gives, the event
// following its port without the old vCPU's help, is model s16's.
