//! Scenario 28: the close of a VIRQ port racing the hypervisor's raise of
//! that VIRQ (`Host::close` vs `Host::raise_virq`), on one domain's `Host`
//! (`harness::HostWorld`, 2-level; no guest runs, the checks read the
//! guest's memory).
//!
//! `raise_virq` looks the VIRQ's port up and raises it under the host's
//! lock (Xen's `virq_lock`); `close` removes the look-up entry, frees the
//! port and clears its pending bit under the same lock. So the raise lands
//! before the close, which clears it, or finds no port and does nothing.
//! The interleaving the models exist for: the raise looks the port up, the
//! close frees it (and a bind takes the number again), then the raise sets
//! the pending bit of a port that is free, or that lives a new life which
//! was never sent anything (C6).
//!
//! * `virq_close_vs_raise`: a per-vCPU VIRQ (the timer of vCPU 1); after
//!   both, the freed port is not pending.
//! * `virq_close_rebind_vs_raise`: a global VIRQ (the console); the closer
//!   then binds a port the embedder raises itself, which takes the number
//!   again; after both, the new life is not pending.
//!
//! Twins `VirqRaiseUnlocked` (the raise lets the lock go between the
//! look-up and the raise).
#![cfg(loom)]

extern crate evtchn_loom as evtchn;

use evtchn::xen::evtchnop::virq;
use evtchn::{PortKind, Weaken};
use loom::thread;
mod harness;
use harness::*;

/// `rebind`: the closer binds a new port after the close (the number's
/// next life); else the VIRQ is the timer of vCPU 1 and the port stays
/// free.
fn virq_close_scenario(rebind: bool, weaken: Option<Weaken>) {
    model(2, move || {
        let w = HostWorld::<TwoL>::build(HostConfig {
            weaken,
            ..HostConfig::default()
        });
        let (v, vcpu) = if rebind {
            (virq::CONSOLE, 0)
        } else {
            (virq::TIMER, 1)
        };
        let p = w.host.bind_virq(v, vcpu).expect("bind_virq");
        let r = w.clone();
        let raiser = thread::spawn(move || {
            r.host.raise_virq(vcpu, v).expect("raise_virq");
            tr(format!("raised VIRQ {v} of v{vcpu}"));
        });
        let c = w.clone();
        let closer = thread::spawn(move || {
            c.host.close(p).expect("close");
            tr(format!("closed port {p}"));
            rebind.then(|| {
                let q = c.host.bind(0).expect("bind");
                tr(format!("bound port {q}"));
                q
            })
        });
        raiser.join().expect("raiser");
        let q = closer.join().expect("closer");
        let st = w.host.status(p).expect("status");
        match q {
            Some(q) => {
                assert_eq!(q, p, "the new port reuses the closed number");
                assert_eq!(st.kind, PortKind::Local);
                assert!(
                    !st.pending,
                    "C6: the new life of port {p} is pending: the closed VIRQ's raise landed on it"
                );
            }
            None => {
                assert_eq!(st.kind, PortKind::Free);
                assert!(
                    !st.pending,
                    "C6: the freed port {p} is pending: the VIRQ's raise landed after its close"
                );
                // The number's next life starts clean.
                let q = w.host.bind(0).expect("bind");
                assert_eq!(q, p);
                assert!(!w.host.status(q).expect("status").pending);
            }
        }
    });
}

#[test]
fn virq_close_vs_raise() {
    virq_close_scenario(false, None);
}

/// The raise looked the port up, let the lock go, and raises it after
/// the close freed it.
#[test]
#[should_panic(expected = "C6: the freed port 1 is pending")]
fn twin_virq_raise_unlocked() {
    virq_close_scenario(false, Some(Weaken::VirqRaiseUnlocked));
}

#[test]
fn virq_close_rebind_vs_raise() {
    virq_close_scenario(true, None);
}

/// The late raise lands on the number's next life.
#[test]
#[should_panic(expected = "C6: the new life of port 1 is pending")]
fn twin_virq_raise_unlocked_rebind() {
    virq_close_scenario(true, Some(Weaken::VirqRaiseUnlocked));
}
