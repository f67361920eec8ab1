//! Scenario 16: a pending event follows its port without the old vCPU's
//! help. vCPU 0 never runs in these models (busy with interrupts off, or
//! gone); only vCPU 1 runs its halt-until-kicked loop.
//!
//! * `follows_port` (2-level): `p` is pending on vCPU 0 when
//!   `set_affinity(p, 1)` moves it. The rebind's mask → unmask re-raises
//!   it on vCPU 1 at once; vCPU 0's scan, which would re-raise it too
//!   (s12), never comes.
//! * `offline` (both ABIs): `p` is pending on vCPU 0 when vCPU 0 goes
//!   offline (`set_online(0, false)` moves its ports) while a sender sends
//!   `p` again. On FIFO the event is still linked on vCPU 0's queue, which
//!   only a consumer of that queue can relink: `set_online` drains the
//!   offline vCPU's queues itself (`PortOps::evacuate`) and hands every
//!   event to its port's new vCPU. On 2-level the rebind's unmask raised
//!   the event on vCPU 1 already and evacuation does nothing.
#![cfg(loom)]

extern crate evtchn_loom as evtchn;

use evtchn::{Bind, Weaken};
use loom::thread;
mod harness;
use harness::*;

fn follows_port(weaken: Option<Weaken>) {
    model(2, move || {
        let w = World::new(Config {
            weaken,
            sends: vec![1],
            ..Config::default()
        });
        let p = w.ch.bind(Bind::Affinity(0)).expect("bind");
        w.flag(0);
        w.ch.send(p).expect("send");
        let vcpu1 = spawn_vcpu(&w, 1);
        let r = w.clone();
        let rebinder = thread::spawn(move || r.ch.set_affinity(p, 1).expect("set_affinity"));
        rebinder.join().expect("rebinder");
        vcpu1.join().expect("vCPU 1");
        assert_eq!(w.runs(p.number()).per_vcpu, [0, 1], "C1: once, on vCPU 1");
    });
}

fn offline<A: Abi>(weaken: Option<Weaken>) {
    model(2, move || {
        let w = World::<A>::build(Config {
            weaken,
            sends: vec![1, 1],
            ..Config::default()
        });
        let p = w.ch.bind(Bind::Affinity(0)).expect("bind");
        w.flag(0);
        w.ch.send(p).expect("send");
        let vcpu1 = spawn_vcpu(&w, 1);
        let c = w.clone();
        let control = thread::spawn(move || {
            assert_eq!(c.ch.set_online(0, false), Ok(1), "p moved");
        });
        let s = w.clone();
        let sender = thread::spawn(move || {
            s.flag(1);
            s.ch.send(p).expect("send");
        });
        control.join().expect("control");
        sender.join().expect("sender");
        vcpu1.join().expect("vCPU 1");
        let r = w.runs(p.number());
        assert_eq!(r.per_vcpu[0], 0, "vCPU 0 never ran");
        assert!(r.observed[0] && r.observed[1], "C1: both sends");
    });
}

#[test]
fn pending_event_follows_its_port() {
    follows_port(None);
}

/// Without the mask → unmask, only vCPU 0's scan would raise the event on
/// vCPU 1, and vCPU 0 does not run.
#[test]
#[should_panic(expected = "deadlock")]
fn twin_rebind_without_mask() {
    follows_port(Some(Weaken::RebindWithoutMask));
}

#[test]
fn offline_vcpu_strands_nothing_2l() {
    offline::<TwoL>(None);
}

#[test]
fn offline_vcpu_strands_nothing_fifo() {
    offline::<FifoAbi>(None);
}

/// FIFO without the drain: the event stays linked on the offline vCPU's
/// queue.
#[test]
#[should_panic(expected = "deadlock")]
fn twin_offline_no_drain_fifo() {
    offline::<FifoAbi>(Some(Weaken::OfflineNoDrain));
}
