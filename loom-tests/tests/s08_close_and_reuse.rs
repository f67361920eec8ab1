//! Scenario 8: close vs send vs an in-flight handler, and port reuse (C6).
//!
//! * `close_is_final`: an event is pending on vCPU 0 when another thread
//!   closes the port, binds again (to vCPU 1) and sends on the new port.
//!   No run of the old life starts once `close` returned and the guard was
//!   seen released; the number is reused only after the old handler ended,
//!   so the two lives never run at once; the new life runs exactly once,
//!   for its one send, and inherits nothing.
//! * `stale_sender`: a sender with the old handle races the close and the
//!   re-bind. If its send returned `Ok`, the new life sees nothing of it.
#![cfg(loom)]

extern crate evtchn_loom as evtchn;

use evtchn::{Bind, Weaken};

use loom::thread;
mod harness;
use harness::*;

fn close_scenario(weaken: Option<Weaken>) {
    close_scenario_on::<TwoL>(weaken);
}

#[test]
fn close_is_final() {
    close_scenario(None);
}

/// Without the hypervisor's clear on close the reused number keeps the
/// pending bit of its last life: the new life runs for an event it was
/// never sent.
#[test]
#[should_panic(expected = "C6: new life ran 2 times")]
fn twin_no_clear_on_close() {
    close_scenario(Some(Weaken::NoClearOnClose));
}

/// Freeing the number at once while the old handler is in flight lets the
/// new life's handler run on vCPU 1 while the old one runs on vCPU 0: loom
/// reports the two runs' unordered writes to the handler's data.
#[test]
#[should_panic(expected = "Causality violation: Concurrent write accesses to `UnsafeCell`")]
fn twin_close_ignores_in_flight() {
    close_scenario(Some(Weaken::CloseIgnoresInFlight));
}

fn stale_scenario(weaken: Option<Weaken>) {
    model(2, move || {
        let w = World::new(Config {
            weaken,
            ..Config::default()
        });
        let old = w.ch.bind(Bind::Affinity(0)).expect("bind");
        let s = w.clone();
        let sender = thread::spawn(move || s.ch.send(old));
        let c = w.clone();
        let closer = thread::spawn(move || {
            c.ch.close(old).expect("close");
            c.ch.bind(Bind::Affinity(1)).expect("bind")
        });
        let sent = sender.join().expect("sender");
        let new = closer.join().expect("closer");
        w.drain();
        assert_eq!(new.number(), old.number(), "the number is reused");
        if sent.is_ok() {
            assert_eq!(
                w.life_runs(new),
                0,
                "C6: an Ok send of the old life ran in the new"
            );
        } else {
            assert!(w.life_runs(new) <= 1, "more than one spurious event");
        }
    });
}

#[test]
fn stale_sender() {
    stale_scenario(None);
}

/// A release that stores the word its claim installed, instead of
/// compare-exchanging from it, overwrites the `CLOSING` a close wrote
/// while the handler ran: the closed life is bound again, and a send on
/// its handle returns `Ok` instead of `NotBound`.
#[test]
#[should_panic(expected = "left: Ok(())\n right: Err(NotBound)")]
fn twin_release_ignores_changes() {
    close_scenario(Some(Weaken::ReleaseIgnoresChanges));
}
