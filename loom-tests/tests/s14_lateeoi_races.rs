//! Scenario 14: the late-EOI races that scenario 7's model (send and EOI
//! from one thread) does not run.
//!
//! * `stale_claim` (2-level): late-EOI port `p` is pending on vCPU 0, whose
//!   upcalls run through two `Vcpu` handles on two threads (allowed: the
//!   in-flight guard serialises the handlers). Deliverer A offers `p` and
//!   is preempted before its claim; deliverer B, scanning because a send
//!   of `q` in the same word set the selector bit again, runs `p`; the
//!   owner ends the EOI and sends `p` again. A's claim then adds the
//!   EOI-pending reason for an event that is gone: it must give the reason
//!   back (and re-raise), or `p` stays masked with no EOI ever coming and
//!   the owner's send is never run.
//! * `send_races_eoi` (both ABIs): after the first run, one thread ends the
//!   EOI while another sends `p` and vCPU 0 runs its upcall loop. Whichever comes first, the send runs on
//!   vCPU 0 (the EOI's re-raise covers a send skipped while it was
//!   outstanding).
#![cfg(loom)]

extern crate evtchn_loom as evtchn;

use evtchn::{Bind, Weaken};
use loom::thread;
mod harness;
use harness::*;

fn stale_claim(weaken: Option<Weaken>) {
    model(2, move || {
        let w = World::new(Config {
            weaken,
            sends: vec![1],
            ..Config::default()
        });
        let p = w.ch.bind(Bind::Affinity(0)).expect("bind");
        let q = w.ch.bind(Bind::Affinity(0)).expect("bind");
        w.ch.set_lateeoi(p, true).expect("set_lateeoi");
        w.ch.send(p).expect("send");
        let a = w.clone();
        let deliverer_a = thread::spawn(move || {
            let mut cpu = a.ch.vcpu(0).expect("vCPU 0");
            cpu.upcall(|p| a.handle(0, p)).expect("upcall");
        });
        let b = w.clone();
        let deliverer_b = thread::spawn(move || {
            b.ch.send(q).expect("send");
            let mut cpu = b.ch.vcpu(0).expect("vCPU 0");
            cpu.upcall(|p| b.handle(0, p)).expect("upcall");
        });
        let o = w.clone();
        let owner = thread::spawn(move || {
            while o.life_runs(p) == 0 {
                thread::yield_now();
            }
            assert_eq!(o.ch.lateeoi(p, false), Ok(None), "the first run's EOI");
            o.flag(0);
            o.ch.send(p).expect("send");
        });
        deliverer_a.join().expect("deliverer A");
        deliverer_b.join().expect("deliverer B");
        owner.join().expect("owner");
        // A second run (of the owner's send) is ended here, as its owner
        // would; a claim that ran nothing has no EOI to wait for.
        if w.life_runs(p) == 2 {
            assert_eq!(w.ch.lateeoi(p, false), Ok(None), "the second run's EOI");
        }
        w.drain();
        let st = w.ch.status(p.number()).expect("status");
        assert!(
            w.runs(p.number()).observed[0],
            "C1: the send after the EOI was never run (left masked: {})",
            st.masked_eoi
        );
        assert_eq!(w.runs(q.number()).per_vcpu, [1, 0], "C1: q once");
    });
}

fn send_races_eoi<A: Abi>(weaken: Option<Weaken>) {
    model(2, move || {
        let w = World::<A>::build(Config {
            weaken,
            sends: vec![1],
            ..Config::default()
        });
        let p = w.ch.bind(Bind::Affinity(0)).expect("bind");
        w.ch.set_lateeoi(p, true).expect("set_lateeoi");
        // The first run, before the race: its EOI is now outstanding.
        w.ch.send(p).expect("send");
        w.drain();
        assert!(w.ch.status(p.number()).expect("status").masked_eoi);
        let vcpu0 = spawn_vcpu(&w, 0);
        let o = w.clone();
        // Ok(None): the EOI ends at once (one run, not spurious).
        let owner = thread::spawn(move || assert_eq!(o.ch.lateeoi(p, false), Ok(None)));
        let s = w.clone();
        let sender = thread::spawn(move || {
            s.flag(0);
            s.ch.send(p).expect("send");
        });
        owner.join().expect("owner");
        sender.join().expect("sender");
        vcpu0.join().expect("vCPU 0");
        assert_eq!(w.runs(p.number()).per_vcpu, [2, 0], "C1: both sends");
    });
}

#[test]
fn lateeoi_stale_claim_gives_reason_back() {
    stale_claim(None);
}

/// Without the undo, A's claim that ran nothing leaves the EOI-pending
/// reason: the owner's send stays pending behind it.
#[test]
#[should_panic(expected = "C1: the send after the EOI was never run (left masked: true)")]
fn twin_no_stale_eoi_undo() {
    stale_claim(Some(Weaken::NoStaleEoiUndo));
}

#[test]
fn lateeoi_send_races_eoi_2l() {
    send_races_eoi::<TwoL>(None);
}

#[test]
fn lateeoi_send_races_eoi_fifo() {
    send_races_eoi::<FifoAbi>(None);
}

/// Without the EOI's re-raise, a send skipped while the EOI was
/// outstanding (the ABI's bit was never masked, so it raised, and the
/// deliverer skipped it) stays pending with nothing raised: vCPU 0 halts.
#[test]
#[should_panic(expected = "deadlock")]
fn twin_send_races_eoi_no_reraise_2l() {
    send_races_eoi::<TwoL>(Some(Weaken::NoEoiReraise));
}

#[test]
#[should_panic(expected = "deadlock")]
fn twin_send_races_eoi_no_reraise_fifo() {
    send_races_eoi::<FifoAbi>(Some(Weaken::NoEoiReraise));
}
