//! Scenario 4: the stranded selector. vCPU 0 exchanges its selector and
//! finds a pending port its filter no longer admits (a rebind moved it to
//! vCPU 1). Invariant: every pending, unmasked port is reachable through the
//! selector of the one vCPU that admits it — here, it is handled exactly
//! once, with no other send to rescue it.
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
        w.flag(0);
        w.ch.send(p).expect("send");
        let vcpus = spawn_vcpus(&w);
        let r = w.clone();
        let rebinder = thread::spawn(move || r.ch.set_affinity(p, 1).expect("set_affinity"));
        rebinder.join().expect("rebinder");
        join_all(vcpus);
        let r = w.runs(p.number());
        assert_eq!(
            r.per_vcpu[0] + r.per_vcpu[1],
            1,
            "C1: handled {:?}",
            r.per_vcpu
        );
    });
}

#[test]
fn rebind_leaves_no_stranded_selector() {
    scenario(None);
}

// No twin without the rebind's mask → unmask here: vCPU 0 keeps running,
// and its scan raises a foreign event on the port's vCPU (s12), which
// covers the missing unmask. What the unmask alone gives, the event
// following its port without the old vCPU's help, is model s16's.
