//! Scenario 17: the hypervisor side's `bind_vcpu` racing a send, and the
//! guest's own unmask racing a send. `Host` is driven directly over the
//! ABI; the guest is a Linux-like one written in the model
//! (`harness::HostWorld`): a vCPU runs the handler only of the ports the
//! guest has bound to it (Linux's per-CPU `cpu_evtchn_mask`).
//!
//! * `bind_vcpu_vs_send_2l`. The interleaving it exists for: the
//!   guest moves its binding of `p` to vCPU 1 and makes `EVTCHNOP_bind_vcpu`
//!   without masking `p` (Xen allows it); meanwhile the sender's
//!   `Host::send` sets `p` pending, reads the notify vCPU (still 0) and
//!   raises `p` on vCPU 0. vCPU 0's scan consumes its selector bit and
//!   leaves `p` (bound elsewhere in the guest's binding): the event is
//!   pending and no vCPU is told, unless `bind_vcpu` raises the pending,
//!   unmasked event again on the new vCPU (as QEMU's emulation does). Both
//!   vCPUs run. The send runs once; on vCPU 1 if it started after
//!   `bind_vcpu` returned.
//! * `bind_vcpu_vs_send_fifo`: the same on FIFO with Linux's FIFO guest,
//!   which runs every event it takes off its queue where it took it (its
//!   `consume_one` does not look at the binding). `bind_vcpu` cannot relink
//!   an event still linked on the old queue; the old vCPU runs it there.
//!   No twin: with this guest the re-raise is never the only way (an event
//!   linked on vCPU 0's queue is run by vCPU 0, one raised after the notify
//!   vCPU changed is linked on vCPU 1's), and loom finds no failure without
//!   it.
//! * Two limits, which loom must fail (`limit_*`): a FIFO guest that drops
//!   an entry of a port it has bound elsewhere, as the 2-level guest skips
//!   one, loses the event (still linked on vCPU 0's queue when `bind_vcpu`
//!   runs, so its re-raise links nothing; vCPU 0 then drops it); and a
//!   guest that moves without the mask in Linux's order (the hypercall,
//!   then its binding) loses it on 2-level (the re-raise reaches vCPU 1
//!   while its guest still binds `p` to vCPU 0, then vCPU 0 skips it too).
//!   That is why Linux masks around the move, and why the crate's guest
//!   side relinks a foreign FIFO entry (`Delivery::Foreign`).
//! * `guest_unmask_vs_send_2l`, `_fifo`. The guest masked `p` itself; a
//!   sender raises it (the raise sees the mask, notifies nobody) while the
//!   guest unmasks it as Linux does: its own conditional unmask
//!   (`try_unmask`), and `EVTCHNOP_unmask` (`Host::unmask`, which raises)
//!   when the port is pending. The interleaving: the raise lands between
//!   the guest's pending check and its mask clear (2-level: the guest
//!   clears the mask, sees the port pending and masks again; FIFO: the
//!   compare-exchange fails). The send runs once, on vCPU 0.
#![cfg(loom)]

extern crate evtchn_loom as evtchn;

use std::sync::Arc;

use evtchn::Weaken;
use loom::sync::atomic::{AtomicBool, Ordering::SeqCst};
use loom::thread;
mod harness;
use harness::*;

/// The guest's move of `p`, unmasked: its binding and then the hypercall
/// (`binding_first`), or Linux's order (the hypercall, then its binding).
fn bind_vcpu_scenario<A: Abi>(on_foreign: OnForeign, binding_first: bool, weaken: Option<Weaken>) {
    model(2, move || {
        let w = HostWorld::<A>::build(HostConfig {
            weaken,
            sends: vec![1],
            on_foreign,
        });
        let p = w.bind(0);
        assert_eq!(p, 1);
        // Set once bind_vcpu returned (std Arc: see the harness).
        let moved = Arc::new(AtomicBool::new(false));
        let vcpus = vec![spawn_guest_vcpu(&w, 0), spawn_guest_vcpu(&w, 1)];
        let (s, m) = (w.clone(), moved.clone());
        let sender = thread::spawn(move || {
            let after = m.load(SeqCst);
            s.flag(0);
            s.host.send(p).expect("send");
            tr(format!("sent port {p}"));
            after
        });
        let (r, m) = (w.clone(), moved.clone());
        let rebinder = thread::spawn(move || {
            if binding_first {
                r.set_binding(p, 1);
            }
            r.host.bind_vcpu(p, 1).expect("bind_vcpu");
            tr(format!("bind_vcpu port {p} to v1 returned"));
            if !binding_first {
                r.set_binding(p, 1);
            }
            m.store(true, SeqCst);
        });
        let after = sender.join().expect("sender");
        rebinder.join().expect("rebinder");
        join_all(vcpus);
        let runs = w.runs(p);
        assert!(runs.observed[0], "C1: the send was never observed");
        assert_eq!(
            runs.per_vcpu.iter().sum::<usize>(),
            1,
            "C1: the send ran {:?} times per vCPU",
            runs.per_vcpu
        );
        if after {
            assert_eq!(
                runs.per_vcpu,
                [0, 1],
                "C5: a send after bind_vcpu returned ran on vCPU 0"
            );
        }
    });
}

#[test]
fn bind_vcpu_vs_send_2l() {
    bind_vcpu_scenario::<TwoL>(OnForeign::Skip, true, None);
}

/// Without the re-raise, vCPU 0 has dropped the selector bit of the event
/// its guest no longer binds there, and vCPU 1 is never told: both park.
#[test]
#[should_panic(expected = "deadlock")]
fn twin_bind_vcpu_no_reraise() {
    bind_vcpu_scenario::<TwoL>(OnForeign::Skip, true, Some(Weaken::HostBindVcpuNoReraise));
}

#[test]
fn bind_vcpu_vs_send_fifo() {
    bind_vcpu_scenario::<FifoAbi>(OnForeign::RunHere, true, None);
}

/// A limit: a FIFO guest that drops the entry of a port it has bound
/// elsewhere. The event was still linked on vCPU 0's queue when `bind_vcpu`
/// re-raised it (nothing to link); vCPU 0 then takes it off and drops it.
#[test]
#[should_panic(expected = "deadlock")]
fn limit_fifo_guest_drops_foreign_entry() {
    bind_vcpu_scenario::<FifoAbi>(OnForeign::Skip, true, None);
}

/// A limit: an unmasked move in Linux's order. `bind_vcpu` re-raises the
/// event on vCPU 1 before the guest binds `p` there: vCPU 1 skips it, and
/// vCPU 0 skips it once the binding has moved.
#[test]
#[should_panic(expected = "deadlock")]
fn limit_unmasked_move_hypercall_first() {
    bind_vcpu_scenario::<TwoL>(OnForeign::Skip, false, None);
}

#[test]
fn guest_unmask_vs_send_2l() {
    host_unmask_scenario_on::<TwoL>(None, UnmaskBy::Conditional);
}

#[test]
fn guest_unmask_vs_send_fifo() {
    host_unmask_scenario_on::<FifoAbi>(None, UnmaskBy::Conditional);
}

/// 2-level: the guest clears the mask, finds the port pending (the raise
/// saw the mask and notified nobody) and leaves it unmasked instead of
/// asking the hypervisor: pending, unmasked, on no selector.
#[test]
#[should_panic(expected = "deadlock")]
fn twin_guest_unmask_ignores_pending_2l() {
    host_unmask_scenario_on::<TwoL>(
        Some(Weaken::GuestUnmaskIgnoresPending),
        UnmaskBy::Conditional,
    );
}

/// FIFO: the guest clears MASKED although the port is pending: the raise
/// saw the mask and linked nothing, and nobody links it now.
#[test]
#[should_panic(expected = "deadlock")]
fn twin_guest_unmask_ignores_pending_fifo() {
    host_unmask_scenario_on::<FifoAbi>(
        Some(Weaken::GuestUnmaskIgnoresPending),
        UnmaskBy::Conditional,
    );
}
