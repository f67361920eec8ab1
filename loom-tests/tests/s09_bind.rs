//! Scenario 9: bind (Xen affinity items 1 and 2 of docs/DESIGN.md §1.3).
//!
//! * Xen-compatible bind: the port starts on vCPU 0 and the bind raises one
//!   spurious event there, even when the binder rebinds at once.
//! * Bind with an affinity: nothing of the port is ever raised, kicked or
//!   handled on any vCPU but the target, while both vCPUs run upcalls.
#![cfg(loom)]

extern crate evtchn_loom as evtchn;

use evtchn::Bind;
use loom::thread;
mod harness;
use harness::*;

#[test]
fn xen_compat_bind_raises_on_vcpu0() {
    model(2, || {
        let w = World::new(Config::default());
        // Each vCPU runs one upcall concurrently with the bind.
        let vcpus = spawn_vcpus(&w);
        let b = w.clone();
        let binder = thread::spawn(move || {
            let p = b.ch.bind(Bind::XenCompat).expect("bind");
            b.ch.set_affinity(p, 1).expect("set_affinity");
            (p, b.ch.notifier().kicks_by_me())
        });
        let (p, kicks) = binder.join().expect("binder");
        join_all(vcpus);
        // The bind's event is raised on vCPU 0; the rebind's unmask may
        // re-raise it on vCPU 1 if nobody took it yet (as Linux's rebind
        // does on Xen).
        assert_eq!(kicks.first(), Some(&0), "the bind's event kicks vCPU 0");
        assert!(kicks.len() <= 2 && kicks[1..].iter().all(|&v| v == 1));
        w.drain();
        let r = w.runs(p.number());
        assert_eq!(r.per_vcpu[0] + r.per_vcpu[1], 1, "one spurious event");
    });
}

#[test]
fn affinity_bind_never_touches_other_vcpus() {
    model(2, || {
        let w = World::new(Config {
            sends: vec![1],
            ..Config::default()
        });
        let vcpus = spawn_vcpus(&w);
        let b = w.clone();
        let binder = thread::spawn(move || {
            let p = b.ch.bind(Bind::Affinity(1)).expect("bind");
            b.flag(0);
            b.ch.send(p).expect("send");
            (p, b.ch.notifier().kicks_by_me())
        });
        let (p, kicks) = binder.join().expect("binder");
        join_all(vcpus);
        assert!(kicks.iter().all(|&v| v == 1), "kicked {kicks:?}");
        let r = w.runs(p.number());
        assert_eq!(r.per_vcpu, [0, 1], "ran {:?}", r.per_vcpu);
    });
}
