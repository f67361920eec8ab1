//! FIFO scenario 13: the guest's own unmask vs a raise (Linux's XSA-332 fix
//! to `evtchn_fifo_unmask`). The port is masked in shared memory by the
//! guest; a sender raises it while the guest unmasks it. The guest clears
//! MASKED itself only if the port is not pending (and the raiser is not
//! rewriting the word, BUSY); otherwise it asks the hypervisor, whose unmask
//! links the event. No lost event, no double delivery.
#![cfg(loom)]

use evtchn::{Bind, Deliver, GuestUnmask, Raise, Weaken};
use loom::thread;
mod harness;
use harness::*;

fn scenario(weaken: Option<Weaken>) {
    model(2, move || {
        let w = World::fifo(Config {
            weaken,
            sends: vec![1],
            ..Config::default()
        });
        let p = w.ch.bind(Bind::Affinity(0)).expect("bind");
        // The guest masks the port in its own memory.
        w.ch.abi().mask(p.number()).expect("mask");
        let vcpus = spawn_vcpus(&w);
        let s = w.clone();
        let sender = thread::spawn(move || {
            s.flag(0);
            s.ch.send(p).expect("send");
        });
        let g = w.clone();
        let guest = thread::spawn(move || {
            let n = p.number();
            if g.ch.abi().try_unmask(n).expect("guest_unmask") == GuestUnmask::Hypercall {
                let k = g.ch.abi().unmask(n, || 0).expect("unmask");
                if let Some(v) = k {
                    evtchn::Notify::kick(g.ch.notifier(), v);
                }
            }
        });
        sender.join().expect("sender");
        guest.join().expect("guest");
        join_all(vcpus);
        assert_eq!(
            w.runs(p.number()).per_vcpu,
            [1, 0],
            "handled once on vCPU 0"
        );
    });
}

#[test]
fn fifo_guest_unmask_vs_raise() {
    scenario(None);
}

/// A guest unmask that clears MASKED although the port is pending: the
/// raise saw the mask and linked nothing, and nobody links it now.
#[test]
#[should_panic(expected = "deadlock")]
fn twin_guest_unmask_ignores_pending() {
    scenario(Some(Weaken::GuestUnmaskIgnoresPending));
}
