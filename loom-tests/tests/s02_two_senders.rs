//! Scenario 2: two senders on one port (C1, C3).
//!
//! Two threads send to the port bound to vCPU 0 while it runs upcalls. The
//! sends coalesce or not: the handler runs once or twice, never
//! concurrently, and the last run observed both senders' writes.
#![cfg(loom)]

extern crate evtchn_loom as evtchn;

use evtchn::Bind;
use loom::thread;
mod harness;
use harness::*;

#[test]
fn two_senders_coalesce() {
    model(2, || {
        let w = World::new(Config {
            sends: vec![1, 1],
            ..Config::default()
        });
        let p = w.ch.bind(Bind::Affinity(0)).expect("bind");
        let vcpus = spawn_vcpus(&w);
        let senders: Vec<_> = (0..2)
            .map(|k| {
                let s = w.clone();
                thread::spawn(move || {
                    s.flag(k);
                    s.ch.send(p).expect("send");
                })
            })
            .collect();
        join_all(senders);
        join_all(vcpus);
        let r = w.runs(p.number());
        assert!(
            r.observed[0] && r.observed[1],
            "C1: a send was never observed"
        );
        let runs = r.per_vcpu[0];
        assert!((1..=2).contains(&runs), "C1: {runs} runs for two sends");
        assert_eq!(r.per_vcpu[1], 0, "ran on a vCPU the port is not bound to");
    });
}
