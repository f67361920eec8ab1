//! Scenario 12: a raiser that has not learned of a move (2-level).
//!
//! The deliver side is the guest's: its `set_affinity` rebinds port `p`
//! from vCPU 0 to vCPU 1 while a hypervisor that still believes `p` is
//! bound to vCPU 0 raises it there (Xen's 2-level `set_pending` with a
//! `notify_vcpu_id` that lags: pending bit, then selector bit and upcall
//! flag of vCPU 0). When the raise lands after the rebind's unmask, the
//! unmask found nothing pending and only vCPU 0 is told; vCPU 0's scan
//! finds the port bound to vCPU 1 (`Delivery::Foreign`) and must raise it
//! there, or no vCPU ever runs it (C1).
//!
//! Both vCPUs run their halt-until-kicked loops; they stop once the raise
//! was observed by a handler run. A lost event leaves both parked, which
//! loom reports as a deadlock.
#![cfg(loom)]

extern crate evtchn_loom as evtchn;

use evtchn::{Bind, Raise, Weaken};
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
        let g = w.clone();
        let guest = thread::spawn(move || g.ch.set_affinity(p, 1).expect("set_affinity"));
        let h = w.clone();
        let hypervisor = thread::spawn(move || {
            h.flag(0);
            // The raw raise with the binding it knew: vCPU 0.
            let raised = h.ch.abi().set_pending(p.number(), || 0).expect("raise");
            if let Some(v) = raised.kick() {
                evtchn::Notify::kick(h.ch.notifier(), v);
            }
        });
        guest.join().expect("guest");
        hypervisor.join().expect("hypervisor");
        join_all(vcpus);
        let r = w.runs(p.number());
        assert!(r.observed[0], "C1: the stale raise was never observed");
        assert_eq!(r.per_vcpu.iter().sum::<usize>(), 1, "one run");
    });
}

#[test]
fn stale_raiser_after_rebind() {
    scenario(None);
}

/// Without the re-raise, vCPU 0 skips the foreign event and vCPU 1 is never
/// told: both vCPUs park for good.
#[test]
#[should_panic(expected = "deadlock")]
fn twin_no_foreign_reraise() {
    scenario(Some(Weaken::NoForeignRelink));
}
