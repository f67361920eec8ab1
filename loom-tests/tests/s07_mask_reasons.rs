//! Scenario 7: unmask while an EOI is pending (C4). The port is masked for
//! two reasons, explicit and EOI-pending, with an event pending. One thread
//! unmasks, another signals the EOI; the handler may start only once both
//! reasons are gone, and then it must run (the last removal re-raises).
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
            gates: 2,
            sends: vec![1],
            ..Config::default()
        });
        let p = w.ch.bind(Bind::Affinity(0)).expect("bind");
        w.ch.mask(p).expect("mask");
        w.ch.mask_until_eoi(p).expect("mask_until_eoi");
        w.flag(0);
        w.ch.send(p).expect("send");
        let vcpus = spawn_vcpus(&w);
        let u = w.clone();
        let unmasker = thread::spawn(move || {
            u.open(0);
            u.ch.unmask(p).expect("unmask");
        });
        let e = w.clone();
        let eoi = thread::spawn(move || {
            e.open(1);
            e.ch.eoi(p).expect("eoi");
        });
        unmasker.join().expect("unmasker");
        eoi.join().expect("eoi");
        join_all(vcpus);
        assert_eq!(w.runs(p.number()).per_vcpu[0], 1, "C4: not delivered once");
    });
}

#[test]
fn unmask_and_eoi_race() {
    scenario(None);
}

/// With one mask bit instead of reasons, the first of unmask and eoi opens
/// the port while the other reason still holds.
#[test]
#[should_panic(expected = "C4: handler of port 1 started while mask reason 1 remained")]
fn twin_single_mask_reason() {
    scenario(Some(Weaken::SingleMaskReason));
}
