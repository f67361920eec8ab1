//! Scenario 6: the same event on two vCPUs (C3). A handler of the port is
//! in flight on vCPU 0 when the port is rebound to vCPU 1 and sent again.
//! The two runs never overlap (the per-port in-flight guard), and the
//! second event is not lost: vCPU 1 finds the port in flight, leaves a
//! replay request, and vCPU 0 re-raises the event on vCPU 1 when its
//! handler ends.
#![cfg(loom)]

use evtchn::{Bind, Weaken};
use loom::thread;
use loom_tests::*;

fn scenario(weaken: Option<Weaken>) {
    model(2, move || {
        let w = World::new(Config {
            weaken,
            sends: vec![1, 1],
            ..Config::default()
        });
        let p = w.ch.bind(Bind::Affinity(0)).expect("bind");
        w.flag(0);
        w.ch.send(p).expect("send");
        let vcpus = spawn_vcpus(&w);
        let r = w.clone();
        let rebinder = thread::spawn(move || {
            r.ch.set_affinity(p, 1).expect("set_affinity");
            r.flag(1);
            r.ch.send(p).expect("send");
        });
        rebinder.join().expect("rebinder");
        join_all(vcpus);
        let r = w.runs(p.number());
        assert!(
            r.observed[0] && r.observed[1],
            "C1: a send was never observed"
        );
    });
}

#[test]
fn handler_in_flight_during_rebind() {
    scenario(None);
}

/// Without the in-flight guard vCPU 1 runs the handler while vCPU 0 is still
/// inside it: the probe's "inside" flag (and loom's race detector on the
/// handler's data) reports it.
#[test]
#[should_panic]
fn twin_no_in_flight_guard() {
    scenario(Some(Weaken::NoInFlightGuard));
}

/// With the guard but no replay request, vCPU 1 skips the in-flight port and
/// vCPU 0 never learns of the second event: it stays pending, unhandled.
#[test]
#[should_panic]
fn twin_no_replay() {
    scenario(Some(Weaken::NoReplay));
}
