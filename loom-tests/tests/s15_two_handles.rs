//! Scenario 15: two deliverers on one vCPU. `Channels::vcpu` may hand out
//! several handles for one vCPU and they may run upcalls at once (an
//! embedder that delivers from an interrupt and from a polling thread);
//! only fairness is per handle. Port `p` on vCPU 0 is sent twice by a
//! sender while two threads each run one upcall of vCPU 0 through handles
//! of their own; a final drain runs what is left. Both sends are observed
//! (C1), and the two deliverers never run `p`'s handler at once (C3: the
//! probe's `inside` flag and its loom `UnsafeCell`).
#![cfg(loom)]

extern crate evtchn_loom as evtchn;

use evtchn::{Bind, Weaken};
use loom::thread;
mod harness;
use harness::*;

fn scenario<A: Abi>(weaken: Option<Weaken>) {
    model(2, move || {
        let w = World::<A>::build(Config {
            weaken,
            sends: vec![1, 1],
            ..Config::default()
        });
        let p = w.ch.bind(Bind::Affinity(0)).expect("bind");
        let deliverers: Vec<_> = (0..2)
            .map(|_| {
                let d = w.clone();
                thread::spawn(move || {
                    let mut cpu = d.ch.vcpu(0).expect("vCPU 0");
                    cpu.upcall(|p| d.handle(0, p)).expect("upcall");
                })
            })
            .collect();
        let s = w.clone();
        let sender = thread::spawn(move || {
            for k in 0..2 {
                s.flag(k);
                s.ch.send(p).expect("send");
            }
        });
        sender.join().expect("sender");
        join_all(deliverers);
        w.drain();
        let r = w.runs(p.number());
        assert!(r.observed[0] && r.observed[1], "C1: a send never observed");
        assert!(r.per_vcpu[0] <= 2, "a send ran twice");
    });
}

#[test]
fn two_handles_one_vcpu_2l() {
    scenario::<TwoL>(None);
}

#[test]
fn two_handles_one_vcpu_fifo() {
    scenario::<FifoAbi>(None);
}

/// Without the in-flight guard, the second deliverer runs the second send
/// while the first still runs the first: loom reports the two runs'
/// unordered writes to the handler's data.
#[test]
#[should_panic(expected = "Causality violation: Concurrent write accesses to `UnsafeCell`")]
fn twin_two_handles_no_guard_2l() {
    scenario::<TwoL>(Some(Weaken::NoInFlightGuard));
}

#[test]
#[should_panic(expected = "Causality violation: Concurrent write accesses to `UnsafeCell`")]
fn twin_two_handles_no_guard_fifo() {
    scenario::<FifoAbi>(Some(Weaken::NoInFlightGuard));
}
