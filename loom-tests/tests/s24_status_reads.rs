//! Scenario 24: the status reads acquire. A thread writes data of its own
//! (a ring, a table entry), then sends, masks, raises, maps or registers;
//! another thread polls the matching status read until it observes that
//! write, and then reads the data without any other synchronisation (a
//! guest polling a port, then reading its ring, with no upcall). Loom
//! reports the data read if the status read does not acquire what the
//! write it observed released (`Causality violation`).
//!
//! * `is_pending` after a send, `is_masked` after a mask, `upcall_pending`
//!   after a raise (both ABIs);
//! * `OwnedFifo::mapped_pages` after a page is mapped (`prepare`);
//! * `RegisteredFifo::registered_pages` after `expand_array`;
//! * `RegisteredVcpus::is_registered` after `register_vcpu_info`.
#![cfg(loom)]

extern crate evtchn_loom as evtchn;

use std::sync::Arc;

use evtchn::xen::fifo::EventWord;
use evtchn::xen::VcpuInfo;
use evtchn::{Delivery, OwnedFifo, OwnedMemory, RegisteredFifo, RegisteredVcpus};
use loom::cell::UnsafeCell;
use loom::thread;
mod harness;
use harness::*;

const P: u32 = 1;

/// The writer's own data, written before the write the reader observes.
struct Data(UnsafeCell<u64>);

// SAFETY: written once before the observed write, read only by a thread
// that observed it; the status read's `Acquire` orders the two, and loom
// reports the accesses if it does not.
unsafe impl Sync for Data {}

impl Data {
    fn new() -> Arc<Data> {
        Arc::new(Data(UnsafeCell::new(0)))
    }

    fn write(&self) {
        // SAFETY: see the `Sync` impl.
        self.0.with_mut(|p| unsafe { *p = 42 });
    }

    fn check(&self) {
        // SAFETY: see the `Sync` impl.
        let v = self.0.with(|p| unsafe { *p });
        assert_eq!(
            v, 42,
            "a status read observed a write before the data written ahead of it"
        );
    }
}

/// `act` on one thread after the data; `observed` polled on another until
/// it is true, then the data read.
fn publish<S: Send + Sync + 'static>(state: Arc<S>, act: fn(&S), observed: fn(&S) -> bool) {
    let data = Data::new();
    let (s, d) = (state.clone(), data.clone());
    let writer = thread::spawn(move || {
        d.write();
        act(&s);
    });
    let reader = thread::spawn(move || {
        while !observed(&state) {
            thread::yield_now();
        }
        data.check();
    });
    writer.join().expect("writer");
    reader.join().expect("reader");
}

fn abi<A: Abi>() -> Arc<A> {
    let a = A::build(&Config::default());
    a.prepare(P).expect("prepare");
    Arc::new(a)
}

fn pending<A: Abi>() {
    model(2, || {
        publish(
            abi::<A>(),
            |a| {
                a.set_pending(P, || 0).expect("send");
            },
            |a| a.is_pending(P) == Ok(true),
        );
    });
}

fn masked<A: Abi>() {
    model(2, || {
        publish(
            abi::<A>(),
            |a| {
                a.mask(P).expect("mask");
            },
            |a| a.is_masked(P) == Ok(true),
        );
    });
}

fn upcall<A: Abi>() {
    model(2, || {
        publish(
            abi::<A>(),
            |a| {
                a.set_pending(P, || 0).expect("send");
            },
            |a| a.upcall_pending(0) == Ok(true),
        );
    });
}

/// The flag a vCPU's scan sets again when its budget ends before the port
/// (the 2-level `defer`, the FIFO hand-back): a reader that sees it set sees
/// what the scan acquired from the raise, the data written before the send.
/// The scan runs on a thread of its own (a vCPU): the raise's own flag
/// write, and any fence before it, are another thread's.
fn upcall_after_deferral<A: Abi>() {
    model(2, || {
        let a = abi::<A>();
        let data = Data::new();
        let (w, d) = (a.clone(), data.clone());
        let writer = thread::spawn(move || {
            d.write();
            w.set_pending(P, || 0).expect("send");
        });
        let v = a.clone();
        let vcpu = thread::spawn(move || {
            // A budget of none: a pass that finds the port takes the
            // selector (`ready`) bits, gives them back and sets the flag
            // again; one that runs before the raise finds nothing.
            v.scan_bounded(
                0,
                &mut Default::default(),
                || false,
                |_| Delivery::Skipped,
                |_| {},
            )
            .expect("scan");
        });
        let reader = thread::spawn(move || {
            while a.upcall_pending(0) != Ok(true) {
                thread::yield_now();
            }
            data.check();
        });
        writer.join().expect("writer");
        vcpu.join().expect("vCPU");
        reader.join().expect("reader");
    });
}

#[test]
fn upcall_pending_after_deferral_acquires_2l() {
    upcall_after_deferral::<TwoL>();
}

#[test]
fn upcall_pending_after_deferral_acquires_fifo() {
    upcall_after_deferral::<FifoAbi>();
}

#[test]
fn is_pending_acquires_2l() {
    pending::<TwoL>();
}

#[test]
fn is_pending_acquires_fifo() {
    pending::<FifoAbi>();
}

#[test]
fn is_masked_acquires_2l() {
    masked::<TwoL>();
}

#[test]
fn is_masked_acquires_fifo() {
    masked::<FifoAbi>();
}

#[test]
fn upcall_pending_acquires_2l() {
    upcall::<TwoL>();
}

#[test]
fn upcall_pending_acquires_fifo() {
    upcall::<FifoAbi>();
}

#[test]
fn mapped_pages_acquires() {
    model(2, || {
        publish(
            Arc::new(OwnedFifo::new(8, 1)),
            |m| {
                evtchn::FifoMemory::expand(m, P).expect("expand");
            },
            |m| m.mapped_pages() > 0,
        );
    });
}

type RegFifo = RegisteredFifo<'static, 1>;

#[test]
fn registered_pages_acquires() {
    model(2, || {
        publish(
            Arc::new(RegFifo::new(1024, 1)),
            |m| {
                let page: &'static [EventWord; 1024] =
                    Box::leak(Box::new(core::array::from_fn(|_| EventWord::new(0))));
                m.expand_array(page).expect("expand_array");
            },
            |m| m.registered_pages() > 0,
        );
    });
}

type RegVcpus = RegisteredVcpus<'static, OwnedMemory, 1>;

#[test]
fn is_registered_acquires() {
    model(2, || {
        publish(
            Arc::new(RegVcpus::new(OwnedMemory::new(1, 0), 1)),
            |m| {
                let info: &'static VcpuInfo = Box::leak(Box::new(VcpuInfo::new()));
                m.register_vcpu_info(0, info).expect("register_vcpu_info");
            },
            |m| m.is_registered(0),
        );
    });
}
