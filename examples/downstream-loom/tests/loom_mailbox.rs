//! The downstream crate's own loom model: two producers post to the
//! mailbox while vCPU 0 runs its upcall; every message is taken by a
//! handler run (evtchn's C1 and the mailbox's own orderings, checked
//! together).
//!
//! ```text
//! RUSTFLAGS="--cfg loom" cargo test --test loom_mailbox
//! ```
//!
//! (Bound the search: `loom::model` alone explores every preemption.)
#![cfg(loom)]

use std::sync::Arc;

use downstream_loom::Mailbox;
use evtchn::{Bind, Channels, OwnedMemory, TwoLevel};
use loom::sync::atomic::{AtomicU32, Ordering};
use loom::thread;

#[test]
fn every_message_is_taken() {
    // Preemption bound 2 unless LOOM_MAX_PREEMPTIONS says otherwise: an
    // unbounded search of three threads over evtchn's atomics does not end
    // in reasonable time.
    let mut model = loom::model::Builder::new();
    if model.preemption_bound.is_none() {
        model.preemption_bound = Some(2);
    }
    model.check(|| {
        let ch = Arc::new(Channels::new(TwoLevel::new(OwnedMemory::new(1, 1)), ()));
        let port = ch.bind(Bind::Affinity(0)).expect("bind");
        let mb = Arc::new(Mailbox::new(port));
        let producers: Vec<_> = (0..2)
            .map(|k| {
                let (ch, mb) = (ch.clone(), mb.clone());
                thread::spawn(move || mb.post(&ch, k).expect("post"))
            })
            .collect();
        let taken = Arc::new(AtomicU32::new(0));
        let mut vcpu = ch.vcpu(0).expect("vCPU 0");
        // One upcall racing the producers; the rest after they are done.
        vcpu.upcall(|_| {
            taken.fetch_or(mb.take(), Ordering::Relaxed);
        })
        .expect("upcall");
        for p in producers {
            p.join().expect("producer");
        }
        while vcpu.upcall_pending() {
            vcpu.upcall(|_| {
                taken.fetch_or(mb.take(), Ordering::Relaxed);
            })
            .expect("upcall");
        }
        assert_eq!(taken.load(Ordering::Relaxed), 0b11, "a message was lost");
    });
}
