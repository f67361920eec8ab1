//! A guest on a real hypervisor (`Guest::on_xen`, a `Host` behind its
//! hypercalls over the same memory) on real threads: two vCPUs running
//! upcalls, a sender, and a thread moving the ports between the vCPUs. Such
//! a guest runs a port wherever it finds it, so both vCPUs claim the same
//! ports around each move (loom's S29 in the small). Checked: no handler
//! run of a port while another runs (C3), and every port's last send
//! observed by a run that started after it, once both vCPUs drained (C1).
#![cfg(not(loom))]

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::*};
use std::thread;

use evtchn::{Bind, Guest, Host, Hypervisor, OwnedMemory, Port, Ports, TwoLevel};
use evtchn_test_support::Rng;

/// Per port: the last send's sequence number, the newest one a run saw at
/// its start, and whether a run is inside the handler.
#[derive(Default)]
struct Ledger {
    sent: AtomicU64,
    seen: AtomicU64,
    inside: AtomicBool,
}

const PORTS: usize = 8;
const SENDS: u64 = 2_000_000;

#[test]
fn guest_on_xen_two_vcpus_moves_and_sends() {
    let mem = OwnedMemory::new(1, 2);
    let guest = Guest::on_xen(TwoLevel::new(&mem), Host::new(TwoLevel::new(&mem), ()), ());
    let ports: Vec<Port> = (0..PORTS)
        .map(|i| guest.bind(Bind::Affinity(i as u32 % 2)).expect("bind"))
        .collect();
    let ledger: Vec<Ledger> = (0..PORTS).map(|_| Ledger::default()).collect();
    let index = |p: Port| ports.iter().position(|&q| q == p).expect("a bound port");
    let concurrent = AtomicU64::new(0);
    let handler = |p: Port| {
        let l = &ledger[index(p)];
        // AcqRel: pairs with the previous run's Release clear below; a run
        // that finds the flag set overlapped another.
        if l.inside.swap(true, AcqRel) {
            // Relaxed: a count, read after every thread was joined.
            concurrent.fetch_add(1, Relaxed);
        }
        // Acquire: pairs with the sender's Release store before its send;
        // AcqRel on the maximum: ordered with the other vCPU's runs.
        l.seen.fetch_max(l.sent.load(Acquire), AcqRel);
        // A handler long enough for a send, and the other vCPU's run of
        // it, to land inside.
        for _ in 0..200 {
            std::hint::spin_loop();
        }
        // Release: the next run's swap sees this run out.
        l.inside.store(false, Release);
    };
    let (stop, sent) = (AtomicBool::new(false), AtomicBool::new(false));
    thread::scope(|s| {
        for v in 0..2 {
            let (guest, stop, handler) = (&guest, &stop, &handler);
            s.spawn(move || {
                let mut vcpu = guest.vcpu(v).expect("vCPU");
                // Acquire: pairs with the Release store once the mover ends.
                while !stop.load(Acquire) {
                    if vcpu.upcall_pending() {
                        vcpu.upcall(handler).expect("upcall");
                    } else {
                        thread::yield_now();
                    }
                }
            });
        }
        s.spawn(|| {
            let mut rng = Rng::new(1);
            for k in 1..=SENDS {
                let i = rng.below(PORTS as u64) as usize;
                // Release: a run that reads it sees what came before.
                ledger[i].sent.store(k, Release);
                guest.send(ports[i]).expect("send");
            }
            // Release: the mover stops after the last send.
            sent.store(true, Release);
        });
        let mover = s.spawn(|| {
            let mut rng = Rng::new(2);
            // Acquire: pairs with the sender's Release store.
            while !sent.load(Acquire) {
                let i = rng.below(PORTS as u64) as usize;
                guest
                    .set_affinity(ports[i], rng.below(2) as u32)
                    .expect("set_affinity");
            }
        });
        mover.join().expect("mover");
        // Release: the vCPU threads' Acquire loads stop them.
        stop.store(true, Release);
    });
    // Both vCPUs drain what is left.
    while (0..2).any(|v| guest.upcall_pending(v).expect("vCPU")) {
        for v in 0..2 {
            guest
                .vcpu(v)
                .expect("vCPU")
                .upcall(handler)
                .expect("upcall");
        }
    }
    // Relaxed, here and below: every thread has been joined.
    assert_eq!(concurrent.load(Relaxed), 0, "C3: concurrent runs");
    for (i, l) in ledger.iter().enumerate() {
        assert!(
            !guest
                .hypervisor()
                .calls()
                .abi()
                .is_pending(ports[i].number())
                .expect("port"),
            "C1: port {} left pending",
            ports[i].number()
        );
        assert_eq!(
            l.seen.load(Relaxed),
            l.sent.load(Relaxed),
            "C1: port {}'s last send never observed",
            ports[i].number()
        );
    }
}
