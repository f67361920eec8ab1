//! Scenario 7's storm throttle: a late-EOI port (Linux's lateeoi, XSA-332).
//! Each handler start masks the port (reason: EOI pending) in the control
//! word only, lock-free; the owner ends it with `lateeoi`. Here the owner
//! waits for the first run, rebinds the port to vCPU 1, sends again while
//! the EOI is still outstanding, and only then ends the EOI: the second
//! event must not run before the EOI (C4), and must then run, on vCPU 1
//! (C1, C5).
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
            gates: 1,
            sends: vec![1, 1],
            ..Config::default()
        });
        let p = w.ch.bind(Bind::Affinity(0)).expect("bind");
        w.ch.set_lateeoi(p, true).expect("set_lateeoi");
        w.flag(0);
        // The first run happens before any gate is needed: open it for it.
        w.open(0);
        w.ch.send(p).expect("send");
        let vcpus = spawn_vcpus(&w);
        let o = w.clone();
        let owner = thread::spawn(move || {
            while o.life_runs(p) == 0 {
                thread::yield_now();
            }
            o.close_gate(0);
            o.ch.set_affinity(p, 1).expect("set_affinity");
            o.flag(1);
            o.ch.send(p).expect("send");
            o.open(0);
            assert_eq!(o.ch.lateeoi(p, false), Ok(None));
        });
        owner.join().expect("owner");
        join_all(vcpus);
        let r = w.runs(p.number());
        assert_eq!(
            r.per_vcpu,
            [1, 1],
            "one run before the EOI, one after, on vCPU 1"
        );
    });
}

#[test]
fn lateeoi_holds_events_until_eoi() {
    scenario(None);
}

/// Without the re-raise when the last reason goes, the event skipped while
/// the EOI was outstanding (the ABI's mask bit was never set) stays pending
/// with nothing raised.
#[test]
#[should_panic(expected = "deadlock")]
fn twin_no_eoi_reraise() {
    scenario(Some(Weaken::NoEoiReraise));
}
