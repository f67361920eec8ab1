//! Scenario 13: the guest's own unmask vs a raise (Linux's XSA-332 fix to
//! `evtchn_fifo_unmask`), on both ABIs. The port is masked in shared memory
//! by the guest; a sender raises it while the guest unmasks it. The guest
//! clears the mask itself only if the port is not pending (on FIFO: and the
//! raiser is not rewriting the word, BUSY); otherwise it asks the
//! hypervisor, whose unmask raises the event. No lost event, no double
//! delivery.
//!
//! On 2-level the guest clears the mask bit first and then looks at the
//! pending bit again (a raise between its two looks saw the mask and
//! notified nobody): pending, it sets the mask again and asks the
//! hypervisor. A neighbour port in the same mask word stays masked
//! throughout, so the re-mask must look at its own bit alone.
#![cfg(loom)]

extern crate evtchn_loom as evtchn;

use evtchn::{Bind, GuestUnmask, Weaken};
use loom::thread;
mod harness;
use harness::*;

fn scenario<A: Abi>(weaken: Option<Weaken>) {
    model(2, move || {
        let w = World::<A>::build(Config {
            weaken,
            sends: vec![1],
            ..Config::default()
        });
        let p = w.ch.bind(Bind::Affinity(0)).expect("bind");
        let neighbour = w.ch.bind(Bind::Affinity(0)).expect("bind");
        // The guest masks both ports in its own memory.
        w.ch.abi().mask(p.number()).expect("mask");
        w.ch.abi().mask(neighbour.number()).expect("mask");
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
        assert!(
            w.ch.abi().is_masked(neighbour.number()).expect("status"),
            "the neighbour is still masked"
        );
    });
}

#[test]
fn fifo_guest_unmask_vs_raise() {
    scenario::<FifoAbi>(None);
}

#[test]
fn twolevel_guest_unmask_vs_raise() {
    scenario::<TwoL>(None);
}

/// A guest unmask that clears MASKED although the port is pending: the
/// raise saw the mask and linked nothing, and nobody links it now.
#[test]
#[should_panic(expected = "deadlock")]
fn twin_guest_unmask_ignores_pending() {
    scenario::<FifoAbi>(Some(Weaken::GuestUnmaskIgnoresPending));
}

/// On 2-level: the guest clears the mask and returns although the port
/// became pending between its two looks; the raise saw the mask.
#[test]
#[should_panic(expected = "deadlock")]
fn twin_twolevel_guest_unmask_ignores_pending() {
    scenario::<TwoL>(Some(Weaken::GuestUnmaskIgnoresPending));
}

/// On 2-level without the fence between the guest's mask clear and its
/// second look: the look may miss a raise that missed the clear.
#[test]
#[should_panic(expected = "deadlock")]
fn twin_twolevel_guest_unmask_without_fence() {
    scenario::<TwoL>(Some(Weaken::NoStoreLoadFence));
}
