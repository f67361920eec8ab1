//! Scenario 23: a port found by its number while it is bound. The binder
//! writes its own per-port data (a handler table entry, a ring) and then
//! binds; another thread that finds the port by number sees that data.
//! This is the caller-side edge of the port table's publication: bind's
//! `Release` store of the bound state and the lookup's `Acquire` load.
//!
//! * `guest_port_by_number`: the guest side, `Channels::bind` vs
//!   `Channels::port` (both ABIs).
//! * `host_status_by_number`: the hypervisor side, `Host::bind` vs
//!   `Host::status` (both ABIs; on FIFO the bind also prepares the event
//!   array page).
#![cfg(loom)]

extern crate evtchn_loom as evtchn;

use std::sync::Arc;

use evtchn::{Bind, Host};
use loom::cell::UnsafeCell;
use loom::thread;
mod harness;
use harness::*;

/// The binder's own data for the port, written before it binds.
struct Data(UnsafeCell<u64>);

// SAFETY: written once before the bind, read only by a thread that found
// the port bound; the publication under test orders the two, and loom
// reports the accesses if it does not.
unsafe impl Sync for Data {}

impl Data {
    fn write(&self) {
        // SAFETY: see the `Sync` impl.
        self.0.with_mut(|p| unsafe { *p = 42 });
    }

    fn check(&self) {
        // SAFETY: see the `Sync` impl.
        let v = self.0.with(|p| unsafe { *p });
        assert_eq!(v, 42, "a port found bound before its binder's data");
    }
}

fn guest<A: Abi>() {
    model(2, || {
        let w = World::<A>::build(Config::default());
        let data = Arc::new(Data(UnsafeCell::new(0)));
        let (b, d) = (w.clone(), data.clone());
        let binder = thread::spawn(move || {
            d.write();
            let p = b.ch.bind(Bind::Affinity(0)).expect("bind");
            assert_eq!(p.number(), 1, "the lowest free port");
        });
        let (f, d) = (w.clone(), data.clone());
        let finder = thread::spawn(move || {
            while f.ch.port(1).is_err() {
                thread::yield_now();
            }
            d.check();
        });
        binder.join().expect("binder");
        finder.join().expect("finder");
    });
}

fn host<A: Abi>() {
    model(2, || {
        let host = Arc::new(Host::new(A::build(&Config::default()), ()));
        let data = Arc::new(Data(UnsafeCell::new(0)));
        let (h, d) = (host.clone(), data.clone());
        let binder = thread::spawn(move || {
            d.write();
            assert_eq!(h.bind(0), Ok(1), "the lowest free port");
        });
        let (h, d) = (host.clone(), data.clone());
        let finder = thread::spawn(move || {
            while !h.status(1).expect("port 1").bound {
                thread::yield_now();
            }
            d.check();
        });
        binder.join().expect("binder");
        finder.join().expect("finder");
    });
}

#[test]
fn guest_port_by_number_2l() {
    guest::<TwoL>();
}

#[test]
fn guest_port_by_number_fifo() {
    guest::<FifoAbi>();
}

#[test]
fn host_status_by_number_2l() {
    host::<TwoL>();
}

#[test]
fn host_status_by_number_fifo() {
    host::<FifoAbi>();
}
