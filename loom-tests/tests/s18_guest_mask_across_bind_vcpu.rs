//! Scenario 18: a port the guest masked itself, across the hypervisor
//! side's `bind_vcpu` (both ABIs). `Host` is driven directly over the ABI;
//! the guest is a Linux-like one written in the model (`harness::HostWorld`).
//!
//! The guest masked `p` in its own memory (the 2-level `evtchn_mask` bit,
//! the FIFO `MASKED` bit) and keeps it masked. The interleaving the model
//! exists for: `Host::bind_vcpu(p, 1)` runs while a sender raises `p`; the
//! raise finds the mask and notifies nobody, and `bind_vcpu` must leave the
//! guest's mask alone: its re-raise skips a masked port. A hypervisor that
//! masks around the change and unmasks afterwards (the single control plane
//! before the roles were split) clears the guest's mask, and its unmask
//! raises the pending event on vCPU 1, whose deliverer is offered a port
//! its guest has masked.
//!
//! Checks: the mask bit is still set when `bind_vcpu` returns and after
//! every thread joined; no event of `p` is offered to vCPU 1's deliverer
//! while the guest has `p` masked (the deliverer checks the guest's own
//! record before it runs anything). Then the guest unmasks `p` (pending:
//! `EVTCHNOP_unmask`) and the send runs once, on vCPU 1.
#![cfg(loom)]

extern crate evtchn_loom as evtchn;

use evtchn::Weaken;
use loom::thread;
mod harness;
use harness::*;

fn scenario<A: Abi>(weaken: Option<Weaken>) {
    model(2, move || {
        let w = HostWorld::<A>::build(HostConfig {
            weaken,
            sends: vec![1],
            ..HostConfig::default()
        });
        let p = w.bind(0);
        // The guest masks the port in its own memory.
        w.guest_mask(p);
        let vcpu1 = spawn_guest_vcpu(&w, 1);
        let r = w.clone();
        let rebinder = thread::spawn(move || {
            // Linux's order: the hypercall, then the guest's own binding.
            r.host.bind_vcpu(p, 1).expect("bind_vcpu");
            tr(format!("bind_vcpu port {p} to v1 returned"));
            assert!(
                r.abi().is_masked(p).expect("is_masked"),
                "guest mask clobbered: bind_vcpu left port {p} unmasked"
            );
            r.set_binding(p, 1);
        });
        let s = w.clone();
        let sender = thread::spawn(move || {
            s.flag(0);
            s.host.send(p).expect("send");
            tr(format!("sent port {p}"));
        });
        rebinder.join().expect("rebinder");
        sender.join().expect("sender");
        w.finish();
        vcpu1.join().expect("vCPU 1");
        assert!(
            w.abi().is_masked(p).expect("is_masked"),
            "guest mask clobbered: port {p} unmasked at the end"
        );
        assert_eq!(w.run_count(p), 0, "an event ran on the guest-masked port");
        // The guest unmasks: the event sent while masked runs once, where
        // the port is bound now.
        w.guest_unmask(p);
        w.drain();
        let runs = w.runs(p);
        assert!(runs.observed[0], "C1: the send was never observed");
        assert_eq!(runs.per_vcpu, [0, 1], "C1: once, on vCPU 1");
    });
}

#[test]
fn guest_mask_across_bind_vcpu_2l() {
    scenario::<TwoL>(None);
}

#[test]
fn guest_mask_across_bind_vcpu_fifo() {
    scenario::<FifoAbi>(None);
}

/// `bind_vcpu` masks, moves and unmasks: the unmask clears the guest's mask.
#[test]
#[should_panic(expected = "guest mask clobbered")]
fn twin_bind_vcpu_masks_2l() {
    scenario::<TwoL>(Some(Weaken::HostBindVcpuMasks));
}

/// The same on FIFO: `MASKED` cleared, the pending event linked on vCPU 1.
#[test]
#[should_panic(expected = "guest mask clobbered")]
fn twin_bind_vcpu_masks_fifo() {
    scenario::<FifoAbi>(Some(Weaken::HostBindVcpuMasks));
}
