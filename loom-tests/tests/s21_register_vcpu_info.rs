//! Scenario 21: 2-level `vcpu_info` registration (`VCPUOP_register_vcpu_info`,
//! `RegisteredVcpus::register_vcpu_info`) racing a raise and a scan. A
//! raiser sets port `P` pending; before the registration it raises on the
//! legacy `vcpu_info` of the shared page, which nobody scans once vCPU 0
//! registers another, so the registration must pick the event up: it
//! reads every pending word, then marks the whole selector and the upcall
//! flag of the new `vcpu_info`. A third thread waits until the
//! registration is visible and runs one scan of vCPU 0 on the new
//! `vcpu_info` without reading the upcall flag first (a guest upcall
//! entered by injection does not). After all three, a final upcall runs
//! what is left if the upcall flag is set, as a vCPU that halts otherwise:
//! `P` is handled exactly once, and its handler sees what the raiser wrote
//! before the raise (loom's `UnsafeCell`).
//!
//! Two edges are under test. The scan's reads of the pending words are
//! ordered after the raiser's write only through the registration: the
//! registrar's reads of the words, then the `Release` of its selector
//! marking, which the scan's selector swap acquires. And the marking's
//! selector write must acquire the scan's selector swap: otherwise the
//! scan's earlier flag clear may land after the registration's flag set in
//! the flag's modification order (loom explores that), and the vCPU halts
//! with the selector marked and its flag clear.
#![cfg(loom)]

extern crate evtchn_loom as evtchn;

use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::sync::Arc;

use evtchn::xen::VcpuInfo;
use evtchn::{Deliver, Delivery, OwnedMemory, Ports, Raise, RegisteredVcpus, TwoLevel};
use loom::cell::UnsafeCell;
use loom::thread;
mod harness;
use harness::model;

const P: u32 = 1;

type Mem = RegisteredVcpus<'static, OwnedMemory, 1>;
type Abi = TwoLevel<&'static Mem>;

struct World {
    abi: Abi,
    /// Written by the raiser before its raise, read by every run of `P`.
    payload: UnsafeCell<u64>,
    /// Ghost: runs of `P` (a `std` atomic: loom runs every model thread on
    /// one OS thread, and this adds no edge loom sees).
    runs: AtomicUsize,
}

// SAFETY: `payload` is written once by the raiser before its raise and
// read only by handler runs of `P`, which the raise's Release and the
// clear's Acquire order after the write; loom reports any access not so
// ordered.
unsafe impl Sync for World {}

/// One scan of vCPU 0; runs `P` when its pending bit is taken.
fn scan(w: &World) {
    let mut cursor = Default::default();
    w.abi
        .scan(
            0,
            &mut cursor,
            |port| {
                if w.abi.test_and_clear_pending(port) == Ok(true) {
                    // SAFETY: see `World`.
                    let v = w.payload.with(|p| unsafe { *p });
                    assert_eq!(v, 7, "C1: the handler of port {port} saw a stale payload");
                    w.runs.fetch_add(1, Relaxed);
                    Delivery::Handled
                } else {
                    Delivery::Skipped
                }
            },
            |_| {},
        )
        .expect("scan");
}

fn scenario() {
    model(2, || {
        // Leaked per execution: the registration takes `&'static` memory,
        // as a guest's pages outlive the hypervisor's view of them.
        let mem: &'static Mem =
            Box::leak(Box::new(RegisteredVcpus::new(OwnedMemory::new(1, 0), 1)));
        let w = Arc::new(World {
            abi: TwoLevel::new(mem),
            payload: UnsafeCell::new(0),
            runs: AtomicUsize::new(0),
        });
        let r = w.clone();
        let raiser = thread::spawn(move || {
            // SAFETY: see `World`.
            r.payload.with_mut(|p| unsafe { *p = 7 });
            r.abi.set_pending(P, || 0).expect("raise");
        });
        let registrar = thread::spawn(move || {
            let info: &'static VcpuInfo = Box::leak(Box::new(VcpuInfo::new()));
            mem.register_vcpu_info(0, info).expect("register_vcpu_info");
        });
        let s = w.clone();
        let scanner = thread::spawn(move || {
            while !mem.is_registered(0) {
                thread::yield_now();
            }
            scan(&s);
        });
        raiser.join().expect("raiser");
        registrar.join().expect("registrar");
        scanner.join().expect("scanner");
        if w.abi.upcall_pending(0) == Ok(true) {
            scan(&w);
        }
        assert_eq!(
            w.runs.load(Relaxed),
            1,
            "C1: port {P} ran {} times, not once (a raise before the registration lost or doubled)",
            w.runs.load(Relaxed)
        );
    });
}

#[test]
fn register_vcpu_info_vs_raise_and_scan() {
    scenario();
}
