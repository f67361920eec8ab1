//! Scenario 19: the guest side's rebind order against a raiser that learns
//! of the move late. `Channels` (the crate's `Guest` over a `Host`): the
//! guest's `set_affinity(p, 1)` races a send made by the hypervisor side
//! (`Host::send`, as for an interdomain peer's `EVTCHNOP_send`), which reads
//! the host's notify vCPU, not the guest's binding, and reads it after its
//! pending write and mask read.
//!
//! The interleaving the model exists for: the send sets `p` pending and
//! reads the mask clear before the guest masks, then reads the notify vCPU
//! before the guest's `bind_vcpu` and raises `p` on vCPU 0. In Linux's order
//! (mask → `bind_vcpu` → the guest's binding → unmask) the unmask finds `p`
//! pending and makes `EVTCHNOP_unmask`, which raises it on vCPU 1, where
//! the guest's binding already says 1; a send that reads the mask clear
//! after the unmask reads the new notify vCPU. With the unmask before the
//! guest's own binding update (`Weaken::RebindUnmaskFirst`), the event
//! raised on vCPU 1 (by the unmask, or by a send that read the new notify
//! vCPU) can reach vCPU 1's scan while the guest's binding still says 0:
//! vCPU 1 hands it to vCPU 0 (`Delivery::Foreign`).
//!
//! * `old_vcpu_halted` (2-level): vCPU 0 never runs (as in s16); only
//!   vCPU 1 runs its halt-until-kicked loop. The send runs once, on
//!   vCPU 1. Twin `RebindUnmaskFirst`: the event handed to the halted
//!   vCPU 0 is never run (deadlock).
//! * `both_vcpus` (both ABIs): both vCPUs run. The send runs once; on
//!   vCPU 1 if it started after `set_affinity` returned. With the unmask
//!   first, vCPU 0's scan finds the port bound to vCPU 1 by then and
//!   raises it there again (`Foreign`), so this model passes with the
//!   weakening too: it has no twin. On FIFO the halted model does not
//!   apply: an event the send linked on vCPU 0's queue before the mask
//!   stays linked there, and only vCPU 0's consumer (F14) or
//!   `set_online(0, false)` (s16) moves it.
#![cfg(loom)]

extern crate evtchn_loom as evtchn;

use std::sync::Arc;

use evtchn::{Bind, Weaken};
use loom::sync::atomic::{AtomicBool, Ordering::SeqCst};
use loom::thread;
mod harness;
use harness::*;

fn scenario<A: Abi>(old_vcpu_runs: bool, weaken: Option<Weaken>) {
    model(2, move || {
        let w = World::<A>::build(Config {
            weaken,
            sends: vec![1],
            ..Config::default()
        });
        let p = w.ch.bind(Bind::Affinity(0)).expect("bind");
        // Set once set_affinity returned (std Arc: see the harness).
        let moved = Arc::new(AtomicBool::new(false));
        let vcpus = if old_vcpu_runs {
            spawn_vcpus(&w)
        } else {
            vec![spawn_vcpu(&w, 1)]
        };
        let (g, m) = (w.clone(), moved.clone());
        let guest = thread::spawn(move || {
            g.ch.set_affinity(p, 1).expect("set_affinity");
            tr(format!("set_affinity port {} to v1 returned", p.number()));
            m.store(true, SeqCst);
        });
        let (s, m) = (w.clone(), moved.clone());
        let sender = thread::spawn(move || {
            let after = m.load(SeqCst);
            s.flag(0);
            // The hypervisor side's send: the host's notify vCPU.
            s.ch.host().send(p.number()).expect("send");
            tr(format!("host sent port {}", p.number()));
            after
        });
        guest.join().expect("guest");
        let after = sender.join().expect("sender");
        join_all(vcpus);
        let runs = w.runs(p.number());
        assert!(runs.observed[0], "C1: the send was never observed");
        assert_eq!(
            runs.per_vcpu.iter().sum::<usize>(),
            1,
            "C1: the send ran {:?} times per vCPU",
            runs.per_vcpu
        );
        if after || !old_vcpu_runs {
            assert_eq!(runs.per_vcpu, [0, 1], "C5: not run on vCPU 1");
        }
    });
}

#[test]
fn rebind_order_old_vcpu_halted() {
    scenario::<TwoL>(false, None);
}

/// The unmask before the guest's binding update: vCPU 1's scan finds the
/// port still bound to vCPU 0 in the guest's table and raises it there,
/// and vCPU 0 does not run.
#[test]
#[should_panic(expected = "deadlock")]
fn twin_rebind_unmask_first() {
    scenario::<TwoL>(false, Some(Weaken::RebindUnmaskFirst));
}

#[test]
fn rebind_order_both_vcpus_2l() {
    scenario::<TwoL>(true, None);
}

#[test]
fn rebind_order_both_vcpus_fifo() {
    scenario::<FifoAbi>(true, None);
}
