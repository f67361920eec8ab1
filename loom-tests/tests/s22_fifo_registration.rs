//! Scenario 22: a guest registers FIFO memory (`RegisteredFifo`:
//! `EVTCHNOP_init_control`, `EVTCHNOP_expand_array`) while the hypervisor
//! side raises on it or reads its state. The guest initialises each piece
//! just before it registers it (here: creates it in the registering
//! thread). A raiser or reader that reaches a piece must do so after its
//! initialisation; loom reports an access that is not (`Causality
//! violation`), as it would report a race on the guest's plain writes.
//!
//! * `page_after_control_vs_raise`: control block and `vcpu_info` first,
//!   then the first page of the event array; a raiser retries until the
//!   page is there and links the event.
//! * `control_after_page_vs_raise`: the page first, then the control block;
//!   a raiser waits until it sees the control block and links the event
//!   into it (the page's publication does not carry the control block).
//! * `vcpu_info_vs_status_read`: a reader polls `upcall_pending` while the
//!   guest registers its control block and `vcpu_info`.
#![cfg(loom)]

extern crate evtchn_loom as evtchn;

use std::sync::Arc;

use evtchn::xen::fifo::{ControlBlock, EventWord};
use evtchn::xen::VcpuInfo;
use evtchn::{Error, Fifo, Ports, Raise, Raised, RegisteredFifo};
use loom::thread;
mod harness;
use harness::model;

const P: u32 = 1;

type Mem = RegisteredFifo<'static, 1>;

/// The pieces a guest registers, created (initialised) by the caller's
/// thread and leaked: the registration takes `&'static` memory, as a
/// guest's pages outlive the hypervisor's view of them.
fn page() -> &'static [EventWord; 1024] {
    Box::leak(Box::new(core::array::from_fn(|_| EventWord::new(0))))
}

fn control(mem: &Mem) {
    let cb: &'static ControlBlock = Box::leak(Box::new(ControlBlock::new()));
    let info: &'static VcpuInfo = Box::leak(Box::new(VcpuInfo::new()));
    mem.init_control(0, cb, info).expect("init_control");
}

fn world() -> (&'static Mem, Arc<Fifo<&'static Mem>>) {
    let mem: &'static Mem = Box::leak(Box::new(RegisteredFifo::new(1024, 1)));
    (mem, Arc::new(Fifo::new(mem)))
}

#[test]
fn page_after_control_vs_raise() {
    model(2, || {
        let (mem, abi) = world();
        let guest = thread::spawn(move || {
            control(mem);
            mem.expand_array(page()).expect("expand_array");
        });
        let a = abi.clone();
        let raiser = thread::spawn(move || loop {
            match a.set_pending(P, || 0) {
                Err(Error::PortOutOfRange) => thread::yield_now(),
                r => {
                    assert!(
                        matches!(r, Ok(Raised::Notified { .. })),
                        "C1: a raise on the registered page was not linked: {r:?}"
                    );
                    break;
                }
            }
        });
        guest.join().expect("guest");
        raiser.join().expect("raiser");
        assert_eq!(
            abi.upcall_pending(0),
            Ok(true),
            "C2: the raise set no upcall flag"
        );
    });
}

#[test]
fn control_after_page_vs_raise() {
    model(2, || {
        let (mem, abi) = world();
        let guest = thread::spawn(move || {
            mem.expand_array(page()).expect("expand_array");
            control(mem);
        });
        let a = abi.clone();
        let raiser = thread::spawn(move || {
            while !mem.has_control_block(0) {
                thread::yield_now();
            }
            let r = a.set_pending(P, || 0);
            assert!(
                matches!(r, Ok(Raised::Notified { .. })),
                "C1: a raise after the registration was not linked: {r:?}"
            );
        });
        guest.join().expect("guest");
        raiser.join().expect("raiser");
        assert_eq!(
            abi.upcall_pending(0),
            Ok(true),
            "C2: the raise set no upcall flag"
        );
    });
}

#[test]
fn vcpu_info_vs_status_read() {
    model(2, || {
        let (mem, abi) = world();
        let guest = thread::spawn(move || control(mem));
        let reader = thread::spawn(move || loop {
            match abi.upcall_pending(0) {
                Ok(flag) => {
                    assert!(!flag, "a fresh vcpu_info read as pending");
                    break;
                }
                Err(_) => thread::yield_now(),
            }
        });
        guest.join().expect("guest");
        reader.join().expect("reader");
    });
}
