//! Scenario 13: a handler panics and the embedder catches the panic
//! (`catch_unwind` around the upcall, as a std VMM does). Nothing may be
//! stranded: not the port whose handler panicked (its in-flight guard), not
//! a replay another vCPU left for it, not the ports the upcall had not
//! reached yet.
//!
//! * `guard`: port `p` is pending on vCPU 0, whose first handler run
//!   panics, while a rebinder (once that run took the event) moves `p` to
//!   vCPU 1 and sends again. If the
//!   send lands while the panicking handler holds the guard, vCPU 1 leaves
//!   a replay; the guard's release (in a `Drop`, so also on unwinding)
//!   re-raises it. Afterwards `close` frees the port at once.
//! * `scan`: ports `p` and `q` are pending on vCPU 0, a sender raises `r`
//!   on vCPU 0 concurrently; the first handler run (of `p`) panics. The
//!   upcall's scan gives back what it had taken (2-level: the pass's
//!   selector bits; FIFO: the queues its cursor holds) and sets the upcall
//!   flag, so `q` and `r` still run.
//!
//! A stranded event leaves the vCPUs parked for good: loom reports a
//! deadlock.
#![cfg(loom)]

extern crate evtchn_loom as evtchn;

use evtchn::{Bind, State, Weaken};
use loom::thread;
mod harness;
use harness::*;

fn guard<A: Abi>(weaken: Option<Weaken>) {
    model(2, move || {
        let w = World::<A>::build(Config {
            weaken,
            sends: vec![1],
            panic_once: true,
            ..Config::default()
        });
        let p = w.ch.bind(Bind::Affinity(0)).expect("bind");
        // Taken by the run that panics.
        w.ch.send(p).expect("send");
        let vcpus = spawn_vcpus(&w);
        let r = w.clone();
        let rebinder = thread::spawn(move || {
            // Once the run that panics has taken the first event (a send
            // before that would coalesce into it).
            while r.ch.status(p.number()).expect("status").pending {
                thread::yield_now();
            }
            r.ch.set_affinity(p, 1).expect("set_affinity");
            r.flag(0);
            r.ch.send(p).expect("send");
        });
        rebinder.join().expect("rebinder");
        join_all(vcpus);
        assert!(w.runs(p.number()).observed[0], "C1: the second send");
        w.ch.close(p).expect("close");
        assert_eq!(
            w.ch.status(p.number()).expect("status").state,
            State::Free,
            "C6: no handler in flight, close frees at once"
        );
    });
}

fn scan<A: Abi>(weaken: Option<Weaken>) {
    model(2, move || {
        let w = World::<A>::build(Config {
            weaken,
            sends: vec![2, 3],
            panic_once: true,
            ..Config::default()
        });
        let p = w.ch.bind(Bind::Affinity(0)).expect("bind");
        let q = w.ch.bind(Bind::Affinity(0)).expect("bind");
        let r = w.ch.bind(Bind::Affinity(0)).expect("bind");
        assert_eq!([p, q, r].map(|p| p.number()), [1, 2, 3]);
        w.ch.send(p).expect("send");
        w.flag(0);
        w.ch.send(q).expect("send");
        let vcpu0 = spawn_vcpu(&w, 0);
        let s = w.clone();
        let sender = thread::spawn(move || {
            s.flag(1);
            s.ch.send(r).expect("send");
        });
        sender.join().expect("sender");
        vcpu0.join().expect("vCPU 0");
        assert_eq!(w.runs(p.number()).per_vcpu, [0, 0], "p's run panicked");
        assert_eq!(w.runs(q.number()).per_vcpu, [1, 0], "C1: q once");
        assert_eq!(w.runs(r.number()).per_vcpu, [1, 0], "C1: r once");
    });
}

#[test]
fn panicking_handler_releases_guard_2l() {
    guard::<TwoL>(None);
}

#[test]
fn panicking_handler_releases_guard_fifo() {
    guard::<FifoAbi>(None);
}

/// The guard released only after a normal return: `p` stays in flight for
/// good, vCPU 1 leaves a replay nobody serves.
#[test]
#[should_panic(expected = "deadlock")]
fn twin_guard_not_unwind_safe() {
    guard::<TwoL>(Some(Weaken::GuardNotUnwindSafe));
}

#[test]
fn panicking_handler_strands_no_port_2l() {
    scan::<TwoL>(None);
}

#[test]
fn panicking_handler_strands_no_port_fifo() {
    scan::<FifoAbi>(None);
}

/// 2-level: the pass's selector bit is lost with the unwinding scan; `q`
/// (and `r`, when its raise came before the swap) is never offered again.
#[test]
#[should_panic(expected = "deadlock")]
fn twin_scan_not_unwind_safe_2l() {
    scan::<TwoL>(Some(Weaken::ScanNotUnwindSafe));
}

/// FIFO: the queue taken by the unwinding scan is not handed back and the
/// upcall flag stays clear: vCPU 0 halts with `q` in its cursor.
#[test]
#[should_panic(expected = "deadlock")]
fn twin_scan_not_unwind_safe_fifo() {
    scan::<FifoAbi>(Some(Weaken::ScanNotUnwindSafe));
}
