//! Scenario 27: an interdomain channel's send racing the other end's
//! close, `bind_vcpu` and reset. The backend (domain 0) port `pa` and the
//! frontend (domain 1) port `pb` are connected before the threads start
//! (`harness::domains`).
//!
//! * `close_vs_send`. Thread X sends on `pa` (`Domains::send`); thread Y
//!   closes `pb` (`Domains::close`) and binds a new port in the frontend,
//!   which takes `pb`'s number again. The interleaving it exists for: the
//!   send reads `pa`'s word (connected to `pb`), the close frees `pb`
//!   (clearing its pending bit) and the bind reuses the number, then the
//!   send raises it: the new life carries an event of the old channel
//!   (C6). The send holds the backend's lock from its second look at `pa`
//!   to the raise, and the close holds both domains' locks, so the raise
//!   lands before the close (which clears it) or the send finds `pa`
//!   unbound and drops. Afterwards no free frontend port is pending, the
//!   new life is not pending, and `pa` is unbound, waiting for domain 1.
//!   Twin `InterdomainSendUnlocked` (the backend's `Host`).
//! * `bind_vcpu_vs_send`. S17 across domains: the frontend guest moves its
//!   binding of `pb` to vCPU 1 and calls `Host::bind_vcpu(pb, 1)` unmasked
//!   while the backend sends on `pa`; a Linux-like 2-level guest that
//!   skips a port bound to another vCPU; both frontend vCPUs run. A raise
//!   that read the old notify vCPU lands on vCPU 0, whose scan skips `pb`:
//!   only `bind_vcpu`'s re-raise of the pending, unmasked event tells
//!   vCPU 1. The send runs once; on vCPU 1 if it started after `bind_vcpu`
//!   returned. Twin `HostBindVcpuNoReraise` (the frontend's `Host`).
//! * `reset_vs_send`. Thread Y resets the frontend (`Domains::reset`, in
//!   chunks, as a dying domain's teardown) while thread X sends on `pa`.
//!   Afterwards every frontend port is free and not pending, and `pa` is
//!   unbound, waiting for domain 1. Twin `InterdomainSendUnlocked`.
#![cfg(loom)]

extern crate evtchn_loom as evtchn;

use std::sync::Arc;

use evtchn::{PortKind, Weaken};
use loom::sync::atomic::{AtomicBool, Ordering::SeqCst};
use loom::thread;
mod harness;
use harness::domains::{spawn_front_vcpu, DomConfig, DomWorld, BACK, FRONT};
use harness::*;

/// Checks the backend's end: unbound, waiting for the frontend again.
fn assert_back_unbound(w: &DomWorld, pa: u32) {
    let st = w.doms.status(BACK, pa).expect("status");
    assert_eq!(
        st.kind,
        PortKind::Unbound { remote: FRONT },
        "the backend's port {pa} did not return to unbound"
    );
    // Only the backend sent: nothing may raise a port of its own (a send
    // that took its end, returned to unbound, for a connected one would
    // raise the peer its unbound word seems to name).
    assert!(
        !st.pending,
        "the backend's own port {pa} is pending: a send raised a peer its end no longer has"
    );
}

fn close_scenario(back_weaken: Option<Weaken>) {
    model(2, move || {
        let w = DomWorld::build(DomConfig {
            back_weaken,
            ..DomConfig::default()
        });
        let (pa, pb) = w.connect(0);
        let x = w.clone();
        let sender = thread::spawn(move || {
            x.doms.send(BACK, pa).expect("send");
            tr(format!("backend sent port {pa}"));
        });
        let y = w.clone();
        let closer = thread::spawn(move || {
            y.doms.close(FRONT, pb).expect("close");
            tr(format!("frontend closed port {pb}"));
            let q = y.front().bind(0).expect("bind");
            tr(format!("frontend bound port {q}"));
            q
        });
        sender.join().expect("sender");
        let q = closer.join().expect("closer");
        assert_eq!(q, pb, "the new port reuses the closed number");
        assert_eq!(w.assert_free_ports_clean(), vec![q]);
        let st = w.front().status(q).expect("status");
        assert_eq!(st.kind, PortKind::Local);
        assert!(
            !st.pending,
            "C6: the new life of port {q} is pending: the old channel's send landed on it"
        );
        assert_back_unbound(&w, pa);
    });
}

#[test]
fn close_vs_send() {
    close_scenario(None);
}

/// The send raises the peer it read without the backend's lock: the close
/// and the bind of the same number fit between its read and its raise.
#[test]
#[should_panic(expected = "C6: the new life of port 1 is pending")]
fn twin_close_vs_send_unlocked() {
    close_scenario(Some(Weaken::InterdomainSendUnlocked));
}

fn bind_vcpu_scenario(front_weaken: Option<Weaken>) {
    model(2, move || {
        let w = DomWorld::build(DomConfig {
            front_weaken,
            sends: vec![1],
            on_foreign: OnForeign::Skip,
            ..DomConfig::default()
        });
        let (pa, pb) = w.connect(0);
        assert_eq!(pb, 1);
        // Set once bind_vcpu returned (std Arc: see the harness).
        let moved = Arc::new(AtomicBool::new(false));
        let vcpus = vec![spawn_front_vcpu(&w, 0), spawn_front_vcpu(&w, 1)];
        let (s, m) = (w.clone(), moved.clone());
        let sender = thread::spawn(move || {
            // SeqCst: a plain flag of the model.
            let after = m.load(SeqCst);
            s.flag(0);
            s.doms.send(BACK, pa).expect("send");
            tr(format!("backend sent port {pa}"));
            after
        });
        let (r, m) = (w.clone(), moved.clone());
        let rebinder = thread::spawn(move || {
            r.set_binding(pb, 1);
            r.front().bind_vcpu(pb, 1).expect("bind_vcpu");
            tr(format!("bind_vcpu port {pb} to v1 returned"));
            // SeqCst: a plain flag of the model.
            m.store(true, SeqCst);
        });
        let after = sender.join().expect("sender");
        rebinder.join().expect("rebinder");
        join_all(vcpus);
        let runs = w.runs(pb);
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
fn bind_vcpu_vs_send() {
    bind_vcpu_scenario(None);
}

/// Without the re-raise, vCPU 0 has consumed the selector bit of the event
/// its guest binds to vCPU 1, and vCPU 1 is never told: both park.
#[test]
#[should_panic(expected = "deadlock")]
fn twin_bind_vcpu_no_reraise() {
    bind_vcpu_scenario(Some(Weaken::HostBindVcpuNoReraise));
}

/// Port numbers per `Domains::reset` call of the teardown.
const RESET_CHUNK: u32 = 16;

fn reset_scenario(back_weaken: Option<Weaken>) {
    model(2, move || {
        let w = DomWorld::build(DomConfig {
            back_weaken,
            ..DomConfig::default()
        });
        let (pa, _pb) = w.connect(0);
        let x = w.clone();
        let sender = thread::spawn(move || {
            x.doms.send(BACK, pa).expect("send");
            tr(format!("backend sent port {pa}"));
        });
        let y = w.clone();
        let resetter = thread::spawn(move || {
            let mut next = Some(1);
            while let Some(from) = next {
                next = y.doms.reset(FRONT, from, RESET_CHUNK).expect("reset");
            }
            tr("frontend reset".to_string());
        });
        sender.join().expect("sender");
        resetter.join().expect("resetter");
        let bound = w.assert_free_ports_clean();
        assert!(bound.is_empty(), "ports {bound:?} bound after reset");
        assert_back_unbound(&w, pa);
    });
}

#[test]
fn reset_vs_send() {
    reset_scenario(None);
}

/// The unlocked send raises the frontend's port after the reset freed it.
#[test]
#[should_panic(expected = "C6: the frontend's free port 1 is pending")]
fn twin_reset_vs_send_unlocked() {
    reset_scenario(Some(Weaken::InterdomainSendUnlocked));
}
