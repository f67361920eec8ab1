//! Scenario 26: the set-up race of an interdomain channel (the lost set-up
//! notification). The backend (domain 0) has offered port `pb` to the
//! frontend (domain 1) with `alloc_unbound`. Thread A writes its data and
//! sends on `pb`; thread B, the frontend's vCPU, connects to `pb`
//! (`Domains::bind_interdomain`) and then runs upcalls over the frontend's
//! memory, halting until kicked; the frontend's other vCPU runs upcalls
//! on a thread of its own. A send that lands while `pb` is still
//! unbound is dropped (as Xen drops it); the bind must make up for it, or
//! the frontend never hears of the backend's first notification and its
//! vCPU halts for good (loom's deadlock). The frontend's guest runs every
//! event where it finds it (`OnForeign::RunHere`), so a spurious event on
//! the wrong vCPU shows as a run there.
//!
//! * `setup_conservative`: Xen's bind. The new port notifies vCPU 0 and is
//!   set pending at once, whatever happened before (a spurious event when
//!   nothing was dropped). The frontend's handler runs once or twice, on
//!   vCPU 0, and a run observes A's data. Twin `NoConservativeEvent` (the
//!   frontend's `Host`): A's send hit the unbound port and nothing stands
//!   for it.
//! * `setup_atomic`: the atomic-affinity bind on vCPU 1. A send on the
//!   unbound port marks it (`DROPPED`, under the backend's lock); the bind,
//!   holding that lock, replays the event only if it finds the mark; a
//!   send that comes after the bind's store sees the connected port and
//!   raises it. Exactly one run, on vCPU 1; vCPU 0 is never kicked nor run.
//!   Twins `BindIgnoresDropped` (the frontend's `Host`: the bind does not
//!   replay the mark) and `UnboundSendNoMark` (the backend's `Host`: the
//!   dropped send leaves no mark).
//! * `setup_atomic_two_sends`, `setup_conservative_two_sends`: two sends
//!   before the bind. The first marks the port under the backend's lock;
//!   the second finds the mark and drops, under the lock too, so what the
//!   backend wrote before it happens before the bind's event. Twins
//!   `MarkedSendLockFree` (the backend's `Host`: a send that finds the mark
//!   drops without the lock; the handler may miss the second send's data).
#![cfg(loom)]

extern crate evtchn_loom as evtchn;

use evtchn::{BindMode, PortKind, Weaken};
use loom::thread;
mod harness;
use harness::domains::{spawn_front_vcpu, DomConfig, DomWorld, BACK, FRONT};
use harness::*;

/// The backend sends `sends` times (its data, then a send, each time);
/// the frontend binds in `mode`.
fn setup_scenario(
    sends: usize,
    mode: BindMode,
    back_weaken: Option<Weaken>,
    front_weaken: Option<Weaken>,
) {
    model(2, move || {
        let w = DomWorld::build(DomConfig {
            back_weaken,
            front_weaken,
            // The frontend's new port is its lowest free one.
            sends: vec![1; sends],
            on_foreign: OnForeign::RunHere,
        });
        let pb = w.doms.alloc_unbound(BACK, FRONT).expect("alloc_unbound");
        let target = match mode {
            BindMode::Atomic { vcpu } => vcpu,
            _ => 0,
        };
        // The frontend's other vCPU runs too: an event raised there would
        // run there.
        let other = spawn_front_vcpu(&w, 1 - target);
        let a = w.clone();
        let sender = thread::spawn(move || {
            for k in 0..sends {
                a.flag(k);
                a.doms.send(BACK, pb).expect("send");
                tr(format!("backend sent port {pb} ({k})"));
            }
        });
        let b = w.clone();
        let frontend = thread::spawn(move || {
            b.register_vcpu(target);
            let port = b
                .doms
                .bind_interdomain(FRONT, BACK, pb, mode)
                .expect("bind_interdomain");
            tr(format!("frontend bound port {port}"));
            assert_eq!(port, 1);
            b.set_binding(port, target);
            b.run_vcpu(target);
        });
        sender.join().expect("sender");
        frontend.join().expect("frontend");
        other.join().expect("other vCPU");
        w.drain();
        let runs = w.runs(1);
        assert!(
            runs.observed[..sends].iter().all(|&o| o),
            "set-up notification lost: no run of the frontend's port saw a send: {:?}",
            &runs.observed[..sends]
        );
        match mode {
            BindMode::Atomic { .. } => {
                // No spurious event: the bind raises only for a dropped
                // send, so at most one run per send, and none on vCPU 0.
                assert!(
                    runs.per_vcpu[0] == 0 && (1..=sends).contains(&runs.per_vcpu[1]),
                    "atomic bind: runs per vCPU {:?} for {sends} sends",
                    runs.per_vcpu
                );
                let kicks = w.front_kicks();
                assert!(
                    kicks.iter().all(|&v| v == 1),
                    "atomic bind: the frontend's vCPU 0 was kicked: {kicks:?}"
                );
            }
            _ => {
                assert_eq!(runs.per_vcpu[1], 0, "conservative bind: a run on vCPU 1");
                // The conservative event, and at most one run per send.
                assert!(
                    (1..=sends + 1).contains(&runs.per_vcpu[0]),
                    "conservative bind: {} runs on vCPU 0",
                    runs.per_vcpu[0]
                );
            }
        }
        assert_eq!(
            w.doms.status(BACK, pb).expect("status").kind,
            PortKind::Interdomain {
                remote: FRONT,
                port: 1
            }
        );
        assert_eq!(
            w.doms.status(FRONT, 1).expect("status").kind,
            PortKind::Interdomain {
                remote: BACK,
                port: pb
            }
        );
    });
}

#[test]
fn setup_conservative() {
    setup_scenario(1, BindMode::Conservative, None, None);
}

/// Without the conservative event, a send that hit the unbound port is
/// gone: the frontend's vCPU 0 halts for good.
#[test]
#[should_panic(expected = "deadlock")]
fn twin_no_conservative_event() {
    setup_scenario(
        1,
        BindMode::Conservative,
        None,
        Some(Weaken::NoConservativeEvent),
    );
}

#[test]
fn setup_atomic() {
    setup_scenario(1, BindMode::Atomic { vcpu: 1 }, None, None);
}

/// The bind finds the mark of the dropped send and does not replay it.
#[test]
#[should_panic(expected = "deadlock")]
fn twin_bind_ignores_dropped() {
    setup_scenario(
        1,
        BindMode::Atomic { vcpu: 1 },
        None,
        Some(Weaken::BindIgnoresDropped),
    );
}

/// The dropped send leaves no mark for the bind to replay.
#[test]
#[should_panic(expected = "deadlock")]
fn twin_unbound_send_no_mark() {
    setup_scenario(
        1,
        BindMode::Atomic { vcpu: 1 },
        Some(Weaken::UnboundSendNoMark),
        None,
    );
}

/// Two sends before the bind: the first marks the unbound port under the
/// backend's lock, the second finds the mark and drops, also under the
/// lock, so both sends happen before the bind's event (replayed or
/// conservative), and the run it starts observes the data written before
/// the second.
#[test]
fn setup_atomic_two_sends() {
    setup_scenario(2, BindMode::Atomic { vcpu: 1 }, None, None);
}

/// The same with Xen's bind.
#[test]
fn setup_conservative_two_sends() {
    setup_scenario(2, BindMode::Conservative, None, None);
}

/// A send that finds the mark drops without the lock: it publishes nothing
/// to the bind, whose event happens after the first send only. The
/// handler may miss the data written before the second; nothing is sent
/// after it, and the frontend halts.
#[test]
#[should_panic(expected = "deadlock")]
fn twin_marked_send_lock_free_atomic() {
    setup_scenario(
        2,
        BindMode::Atomic { vcpu: 1 },
        Some(Weaken::MarkedSendLockFree),
        None,
    );
}

/// The same with Xen's bind.
#[test]
#[should_panic(expected = "deadlock")]
fn twin_marked_send_lock_free_conservative() {
    setup_scenario(
        2,
        BindMode::Conservative,
        Some(Weaken::MarkedSendLockFree),
        None,
    );
}
