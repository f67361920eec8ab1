//! Scenario 3, the seed's case (C5): an event is pending on vCPU 0 while
//! `set_affinity(0 → 1)` runs and both vCPUs run upcalls. The event is
//! handled exactly once, at most once on vCPU 0; the next send (made after
//! `set_affinity` returned) is raised on vCPU 1 only.
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
            let before = r.ch.notifier().kicks_by_me().len();
            r.flag(1);
            r.ch.send(p).expect("send");
            let kicks = r.ch.notifier().kicks_by_me();
            assert!(
                kicks[before..].iter().all(|&v| v == 1),
                "C5: a send after set_affinity kicked {kicks:?}"
            );
        });
        rebinder.join().expect("rebinder");
        join_all(vcpus);
        let r = w.runs(p.number());
        assert!(
            r.observed[0] && r.observed[1],
            "C1: a send was never observed"
        );
        assert!(
            r.per_vcpu[0] <= 1,
            "C5: {} runs on the old vCPU",
            r.per_vcpu[0]
        );
    });
}

#[test]
fn event_in_flight_during_set_affinity() {
    scenario(None);
}

/// Rebinding without mask → unmask: vCPU 0's scan skips the port (no longer
/// bound there) and nothing raises it on vCPU 1; the next send coalesces
/// with the stranded pending bit.
#[test]
#[should_panic]
fn twin_rebind_without_mask() {
    scenario(Some(Weaken::RebindWithoutMask));
}
