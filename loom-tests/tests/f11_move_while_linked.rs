//! FIFO scenario 11: moving an event while an old queue still names it as
//! its tail (the stale-tail corruption Xen fixed with `lastq`).
//!
//! Port `a` was linked on vCPU 0's queue and consumed there, so that queue's
//! private tail still names `a`. Then, concurrently: a rebinder moves `a` to
//! vCPU 1 and raises it (it is linked on vCPU 1's queue), a sender raises
//! `b` (bound to vCPU 0) and another raises `c` (bound to vCPU 1). Appending
//! `b` after the stale tail `a` would splice it into vCPU 1's queue, where
//! linking `c` after `a` overwrites the link and loses `b`. Every event must
//! be delivered; nothing is dropped however the moves interleave.
#![cfg(loom)]

extern crate evtchn_loom as evtchn;

use evtchn::{Bind, Weaken};
use loom::thread;
mod harness;
use harness::*;

fn scenario(weaken: Option<Weaken>) {
    model(2, move || {
        let w = World::fifo(Config {
            weaken,
            ..Config::default()
        });
        let a = w.ch.bind(Bind::Affinity(0)).expect("bind");
        let b = w.ch.bind(Bind::Affinity(0)).expect("bind");
        let c = w.ch.bind(Bind::Affinity(1)).expect("bind");
        // `a` is linked on vCPU 0's queue and consumed there: the queue's
        // private tail still names it.
        w.ch.send(a).expect("send");
        w.drain();
        let r = w.clone();
        let rebinder = thread::spawn(move || {
            r.ch.set_affinity(a, 1).expect("set_affinity");
            r.ch.send(a).expect("send");
        });
        let sb = w.clone();
        let sender_b = thread::spawn(move || sb.ch.send(b).expect("send"));
        let sc = w.clone();
        let sender_c = thread::spawn(move || sc.ch.send(c).expect("send"));
        rebinder.join().expect("rebinder");
        sender_b.join().expect("sender b");
        sender_c.join().expect("sender c");
        w.drain();
        assert_eq!(w.runs(a.number()).per_vcpu, [1, 1], "a: once on each vCPU");
        assert_eq!(
            w.runs(b.number()).per_vcpu,
            [1, 0],
            "C1: b lost or misplaced"
        );
        assert_eq!(
            w.runs(c.number()).per_vcpu,
            [0, 1],
            "C1: c lost or misplaced"
        );
    });
}

#[test]
fn fifo_move_while_linked() {
    scenario(None);
}

/// Without invalidating the old queue's tail, `b` is appended after `a` in
/// vCPU 1's queue and the link written for `c` overwrites it: `b` is lost.
#[test]
#[should_panic(expected = "C1: b lost or misplaced")]
fn twin_no_tail_invalidation() {
    scenario(Some(Weaken::NoTailInvalidation));
}
