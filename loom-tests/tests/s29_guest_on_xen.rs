//! Scenario 29: a guest on a real hypervisor (`Guest::on_xen`), whose
//! deliverer runs a port wherever it finds it (Linux's behaviour: it may
//! not relink into the hypervisor's queues). An event raised on vCPU 0 is
//! still pending when the guest moves the port to vCPU 1, whose unmask
//! hypercall raises it there too: both vCPUs find it, and a send arrives
//! while they run. The in-flight guard orders the two vCPUs' runs of the
//! port (C3: the handler's data is written by each run, and loom's race
//! detector reports any two runs no happens-before edge orders), and no
//! event is left pending once both vCPUs have drained (C1).
//!
//! The interleaving that needs the claim's own `Acquire`: vCPU 0 reads the
//! control word, vCPU 1 claims, runs and releases the port (the word is back
//! to the value vCPU 0 read), the send raises it again, and vCPU 0's
//! claim exchange succeeds on vCPU 1's release and runs the new event.
#![cfg(loom)]

extern crate evtchn_loom as evtchn;

mod harness;

use std::sync::Arc;

use evtchn::{Bind, Guest, Host, OwnedMemory, Ports, TwoLevel, Weaken};
use harness::model;
use loom::cell::UnsafeCell;
use loom::thread;

type Mem = &'static OwnedMemory;

/// The handler's data: every run of the port writes it.
struct Data(UnsafeCell<u32>);

// SAFETY: written only by handler runs of the one port, which the in-flight
// guard orders (C3), and read after every writer was joined; loom reports
// any two accesses no happens-before edge orders.
unsafe impl Sync for Data {}

fn scenario(weaken: Option<Weaken>) {
    model(2, move || {
        // One memory, each side with its own half over it. Leaked: loom
        // threads need `'static`, and the memory is a few hundred bytes.
        let mem: Mem = Box::leak(Box::new(OwnedMemory::new(1, 2)));
        // The hypervisor: a `Host` over the same memory behind the guest's
        // hypercalls (leaked as the memory is).
        let host: &'static Host<TwoLevel<Mem>> =
            Box::leak(Box::new(Host::new(TwoLevel::new(mem), ())));
        let calls = host;
        let guest = Arc::new(match weaken {
            Some(w) => Guest::on_xen_weakened(TwoLevel::new(mem), calls, (), w),
            None => Guest::on_xen(TwoLevel::new(mem), calls, ()),
        });
        let p = guest.bind(Bind::Affinity(0)).expect("bind");
        guest.send(p).expect("send");
        // Masks, moves, unmasks: pending, so the guest asks the
        // hypervisor's unmask, which raises it on vCPU 1 too.
        guest.set_affinity(p, 1).expect("set_affinity");
        assert!(guest.upcall_pending(0).expect("vCPU 0"));
        assert!(guest.upcall_pending(1).expect("vCPU 1"));
        let data = Arc::new(Data(UnsafeCell::new(0)));
        let vcpus: Vec<_> = (0..2)
            .map(|v| {
                let (g, d) = (guest.clone(), data.clone());
                thread::spawn(move || {
                    let mut vcpu = g.vcpu(v).expect("vCPU");
                    // SAFETY: loom checks that no two runs of the handler
                    // access the data without a happens-before edge.
                    vcpu.upcall(|_| d.0.with_mut(|n| unsafe { *n += 1 }))
                        .expect("upcall");
                })
            })
            .collect();
        let g = guest.clone();
        let sender = thread::spawn(move || g.send(p).expect("send"));
        sender.join().expect("sender");
        for v in vcpus {
            v.join().expect("vCPU");
        }
        // Drain what the runs left: the send's event, if no run took it.
        for v in 0..2 {
            guest
                .vcpu(v)
                .expect("vCPU")
                .upcall(|_| {
                    // SAFETY: as above; the vCPU threads were joined.
                    data.0.with_mut(|n| unsafe { *n += 1 })
                })
                .expect("upcall");
        }
        // SAFETY: every thread that wrote the data has been joined.
        let runs = data.0.with(|n| unsafe { *n });
        assert!(
            !host.abi().is_pending(p.number()).expect("port"),
            "C1: pending after both vCPUs drained ({runs} runs)"
        );
        assert!((1..=2).contains(&runs), "C1: {runs} runs of two sends");
    });
}

#[test]
fn two_vcpus_find_one_port() {
    scenario(None);
}

/// Without the in-flight guard both vCPUs run the port at once: loom's
/// race detector reports the two runs' writes to the handler's data.
#[test]
#[should_panic(expected = "Causality violation: Concurrent write accesses to `UnsafeCell`")]
fn twin_no_in_flight_guard() {
    scenario(Some(Weaken::NoInFlightGuard));
}
