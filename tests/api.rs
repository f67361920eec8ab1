//! Single-threaded integration tests of the public `Channels` API over the
//! 2-level ABI: every operation, every reachable `Error`, "an error changes
//! nothing" (C8), kicks on the upcall flag's 0 → 1 edge only (C2), Xen's
//! three affinity behaviours, mask reasons, close and reuse (C6), the in-flight guard
//! (C3, single-threaded through nested upcalls), round-robin fairness, and
//! the memory variants (`OwnedMemory`, boxed `SharedInfo`, `from_ptr`).
// Native tests; under RUSTFLAGS="--cfg loom" only the models run.
#![cfg(not(loom))]

use std::collections::{BTreeSet, HashSet};
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering::SeqCst};
use std::sync::{Arc, Mutex};

use evtchn::xen::{SharedInfo, VcpuInfo, BITS_PER_WORD, LEGACY_MAX_VCPUS, NR_EVENT_CHANNELS_2L};
use evtchn::Ports;
use evtchn::{
    Bind, Channels, Error, MaxVcpus, Memory2l, OwnedMemory, Port, RegisteredVcpus, State, Status,
    TwoLevel,
};

use evtchn_test_support::{
    assert_err_unchanged_by, kicks, numbers, pending_vcpus, upcall, Kicks, Rng,
};

// ---------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------

type Ch = Channels<TwoLevel<OwnedMemory>, Kicks>;

fn new_ch(words: usize, vcpus: usize) -> Ch {
    Channels::new(
        TwoLevel::new(OwnedMemory::new(words, vcpus)),
        Kicks::default(),
    )
}

/// Everything observable about an instance: every port's status, every
/// vCPU's upcall flag (through the API), the raw ABI words and the kicks not
/// yet taken.
#[derive(Debug, PartialEq)]
struct Snap {
    statuses: Vec<Status>,
    upcalls: Vec<bool>,
    pending: Vec<u64>,
    mask: Vec<u64>,
    sel: Vec<u64>,
    flags: Vec<u8>,
    kicks: Vec<u32>,
}

fn snap<M: Memory2l>(ch: &Channels<TwoLevel<M>, Kicks>) -> Snap {
    let mem = ch.abi().memory();
    Snap {
        statuses: (1..ch.nr_ports()).map(|n| ch.status(n).unwrap()).collect(),
        upcalls: (0..ch.nr_vcpus())
            .map(|v| ch.upcall_pending(v).unwrap())
            .collect(),
        pending: mem.pending().iter().map(|w| w.load(SeqCst)).collect(),
        mask: mem.mask().iter().map(|w| w.load(SeqCst)).collect(),
        sel: (0..mem.nr_vcpus())
            .filter_map(|v| mem.vcpu_info(v))
            .map(|vi| vi.evtchn_pending_sel.load(SeqCst))
            .collect(),
        flags: (0..mem.nr_vcpus())
            .filter_map(|v| mem.vcpu_info(v))
            .map(|vi| vi.evtchn_upcall_pending.load(SeqCst))
            .collect(),
        kicks: ch.notifier().peek(),
    }
}

/// Runs `op`, expects `Err(want)`, and checks that nothing observable
/// changed (C8).
#[track_caller]
fn assert_err_unchanged<M: Memory2l, T: std::fmt::Debug>(
    ch: &Channels<TwoLevel<M>, Kicks>,
    want: Error,
    op: impl FnOnce() -> Result<T, Error>,
) {
    assert_err_unchanged_by(|| snap(ch), want, op);
}

// ---------------------------------------------------------------------------
// Bind (Xen affinity items 1 and 2 of docs/DESIGN.md §1.3)
// ---------------------------------------------------------------------------

#[test]
fn xencompat_bind_raises_one_spurious_event_handled_on_vcpu0() {
    let ch = new_ch(1, 4);
    let p = ch.bind(Bind::XenCompat).unwrap();
    let st = ch.status(p.number()).unwrap();
    assert_eq!(st.state, State::Bound);
    assert_eq!(st.vcpu, 0);
    assert!(st.pending, "XenCompat bind must leave one event pending");
    assert_eq!(kicks(&ch), [0], "vCPU 0 kicked once, nobody else");
    assert_eq!(pending_vcpus(&ch), [0]);

    // Other vCPUs have nothing.
    for v in 1..ch.nr_vcpus() {
        assert!(upcall(&ch, v).is_empty());
    }
    let seen = upcall(&ch, 0);
    assert_eq!(seen, [p], "the spurious event is handled once, on vCPU 0");
    assert!(!ch.status(p.number()).unwrap().pending);
    assert!(pending_vcpus(&ch).is_empty());
    // Only one: nothing left.
    assert!(upcall(&ch, 0).is_empty());
    assert!(kicks(&ch).is_empty());
}

#[test]
fn xencompat_binds_default_to_vcpu0_and_the_second_bind_does_not_kick() {
    let ch = new_ch(2, 3);
    let a = ch.bind(Bind::XenCompat).unwrap();
    let b = ch.bind(Bind::XenCompat).unwrap();
    for p in [a, b] {
        assert_eq!(ch.status(p.number()).unwrap().vcpu, 0);
    }
    // The second bind's event found vCPU 0's flag already set: no kick (C2).
    assert_eq!(kicks(&ch), [0]);
    let seen = upcall(&ch, 0);
    assert_eq!(
        seen.iter().copied().collect::<HashSet<_>>(),
        HashSet::from([a, b])
    );
    assert_eq!(seen.len(), 2);
    // Sends go to vCPU 0 too.
    ch.send(b).unwrap();
    assert_eq!(kicks(&ch), [0]);
    assert_eq!(pending_vcpus(&ch), [0]);
    assert_eq!(upcall(&ch, 0), [b]);
}

#[test]
fn affinity_bind_raises_nothing_anywhere_and_first_send_goes_to_target() {
    let ch = new_ch(1, 4);
    for v in 0..ch.nr_vcpus() {
        let p = ch.bind(Bind::Affinity(v)).unwrap();
        let st = ch.status(p.number()).unwrap();
        assert_eq!(st.vcpu, v);
        assert!(!st.pending, "Affinity bind must not raise an event");
        assert!(kicks(&ch).is_empty(), "Affinity bind kicked someone");
        assert!(
            pending_vcpus(&ch).is_empty(),
            "Affinity bind raised an upcall"
        );
        for u in 0..ch.nr_vcpus() {
            assert!(upcall(&ch, u).is_empty());
        }

        ch.send(p).unwrap();
        assert_eq!(kicks(&ch), [v]);
        assert_eq!(pending_vcpus(&ch), [v]);
        for u in (0..ch.nr_vcpus()).filter(|&u| u != v) {
            assert!(upcall(&ch, u).is_empty(), "vCPU {u} ran port bound to {v}");
        }
        assert_eq!(upcall(&ch, v), [p]);
    }
}

#[test]
fn bind_allocates_the_lowest_free_number_from_1() {
    let ch = new_ch(1, 2);
    let ports: Vec<Port> = (0..5)
        .map(|_| ch.bind(Bind::Affinity(1)).unwrap())
        .collect();
    assert_eq!(numbers(&ports), (1..=5).collect::<Vec<u32>>());
    ch.close(ports[2]).unwrap();
    ch.close(ports[0]).unwrap();
    let again = ch.bind(Bind::Affinity(0)).unwrap();
    assert_eq!(again.number(), ports[0].number());
    let again2 = ch.bind(Bind::Affinity(0)).unwrap();
    assert_eq!(again2.number(), ports[2].number());
    let next = ch.bind(Bind::Affinity(0)).unwrap();
    assert_eq!(next.number(), ports[4].number() + 1);
}

#[test]
fn bind_with_vcpu_out_of_range_is_an_error_and_changes_nothing() {
    let ch = new_ch(1, 3);
    let p = ch.bind(Bind::Affinity(2)).unwrap();
    ch.send(p).unwrap();
    for v in [ch.nr_vcpus(), ch.nr_vcpus() + 1, 0xffff, u32::MAX] {
        assert_err_unchanged(&ch, Error::VcpuOutOfRange, || ch.bind(Bind::Affinity(v)));
    }
    // The next good bind still gets the next number: nothing was consumed.
    assert_eq!(ch.bind(Bind::Affinity(0)).unwrap().number(), p.number() + 1);
}

#[test]
fn bind_when_every_port_is_bound_is_no_free_port_and_changes_nothing() {
    let ch = new_ch(1, 2);
    let mut ports = Vec::new();
    for i in 1..ch.nr_ports() {
        ports.push(ch.bind(Bind::Affinity(i % 2)).unwrap());
    }
    assert_eq!(ports.len() as u32, ch.nr_ports() - 1, "port 0 is reserved");
    assert!(ports.iter().all(|p| p.number() != 0));
    // Some state to preserve: a pending event and a mask.
    ch.send(ports[3]).unwrap();
    ch.mask(ports[5]).unwrap();
    ch.send(ports[5]).unwrap();
    assert_err_unchanged(&ch, Error::NoFreePort, || ch.bind(Bind::XenCompat));
    assert_err_unchanged(&ch, Error::NoFreePort, || ch.bind(Bind::Affinity(1)));
    // Freeing one makes exactly that one available.
    ch.close(ports[10]).unwrap();
    let p = ch.bind(Bind::Affinity(0)).unwrap();
    assert_eq!(p.number(), ports[10].number());
    assert_err_unchanged(&ch, Error::NoFreePort, || ch.bind(Bind::Affinity(0)));
}

// ---------------------------------------------------------------------------
// port(), status(), Port accessors, range errors
// ---------------------------------------------------------------------------

#[test]
fn port_lookup_returns_the_current_handle_and_range_errors() {
    let ch = new_ch(2, 2);
    let a = ch.bind(Bind::Affinity(1)).unwrap();
    assert_eq!(ch.port(a.number()).unwrap(), a);
    assert_eq!(ch.port(a.number()).unwrap().generation(), a.generation());

    assert_err_unchanged(&ch, Error::PortOutOfRange, || ch.port(0));
    assert_err_unchanged(&ch, Error::PortOutOfRange, || ch.port(ch.nr_ports()));
    assert_err_unchanged(&ch, Error::PortOutOfRange, || ch.port(u32::MAX));
    assert_err_unchanged(&ch, Error::NotBound, || ch.port(a.number() + 1));
    assert_err_unchanged(&ch, Error::NotBound, || ch.port(ch.nr_ports() - 1));

    ch.close(a).unwrap();
    assert_err_unchanged(&ch, Error::NotBound, || ch.port(a.number()));
    let b = ch.bind(Bind::Affinity(0)).unwrap();
    assert_eq!(b.number(), a.number());
    let looked = ch.port(a.number()).unwrap();
    assert_eq!(looked, b);
    assert_ne!(looked, a);
}

#[test]
fn status_range_errors_and_free_port_status() {
    let ch = new_ch(1, 2);
    assert_err_unchanged(&ch, Error::PortOutOfRange, || ch.status(0));
    assert_err_unchanged(&ch, Error::PortOutOfRange, || ch.status(ch.nr_ports()));
    assert_err_unchanged(&ch, Error::PortOutOfRange, || ch.status(u32::MAX));
    // Highest valid number works.
    let st = ch.status(ch.nr_ports() - 1).unwrap();
    assert_eq!(st.state, State::Free);
    assert_eq!(st.generation, 0);
    assert!(!st.pending && !st.in_flight);
    assert!(!st.masked_explicit && !st.masked_rebind && !st.masked_eoi);
}

#[test]
fn status_fields_after_bind() {
    let ch = new_ch(1, 4);
    let p = ch.bind(Bind::Affinity(3)).unwrap();
    let st = ch.status(p.number()).unwrap();
    assert_eq!(st.state, State::Bound);
    assert_eq!(st.vcpu, 3);
    assert_eq!(st.priority, 7, "default FIFO priority is 7");
    assert!(!st.masked_explicit && !st.masked_rebind && !st.masked_eoi);
    assert!(!st.pending);
    assert!(!st.in_flight, "no handler runs outside an upcall");
    assert_eq!(st.generation, p.generation());
    assert_eq!(p.generation(), 1, "first life of a number is generation 1");

    ch.send(p).unwrap();
    let st2 = ch.status(p.number()).unwrap();
    assert!(st2.pending);
    assert!(!st2.in_flight);
    assert_eq!(
        Status {
            pending: false,
            ..st2
        },
        st
    );

    ch.mask(p).unwrap();
    assert!(ch.status(p.number()).unwrap().masked_explicit);
    ch.mask_until_eoi(p).unwrap();
    let st3 = ch.status(p.number()).unwrap();
    assert!(st3.masked_explicit && st3.masked_eoi && !st3.masked_rebind);
    // The ABI mask bit follows the reasons.
    assert!(ch.abi().is_masked(p.number()).unwrap());
}

#[test]
fn port_number_and_generation_accessors_track_lives() {
    let ch = new_ch(1, 1);
    let mut last = None;
    for life in 1..=5u32 {
        let p = ch.bind(Bind::Affinity(0)).unwrap();
        assert_eq!(p.number(), 1, "lowest free number is reused");
        assert_eq!(p.generation(), life, "every bind increments generation");
        assert_eq!(ch.status(1).unwrap().generation, life);
        if let Some(old) = last {
            assert_ne!(p, old);
        }
        ch.close(p).unwrap();
        // Closing keeps the generation of the last life.
        assert_eq!(ch.status(1).unwrap().generation, life);
        last = Some(p);
    }
}

#[test]
fn vcpu_and_upcall_pending_reject_out_of_range_vcpus() {
    let ch = new_ch(1, 3);
    let p = ch.bind(Bind::XenCompat).unwrap();
    ch.send(p).unwrap();
    for v in [3u32, 4, u32::MAX] {
        assert_err_unchanged(&ch, Error::VcpuOutOfRange, || ch.vcpu(v).map(|_| ()));
        assert_err_unchanged(&ch, Error::VcpuOutOfRange, || ch.upcall_pending(v));
    }
    for v in 0..3 {
        assert_eq!(ch.vcpu(v).unwrap().id(), v);
    }
}

#[test]
fn upcall_on_a_vcpu_with_no_work_returns_zero() {
    let ch = new_ch(1, 2);
    let mut vcpu = ch.vcpu(1).unwrap();
    assert!(!vcpu.upcall_pending());
    let mut ran = 0;
    assert_eq!(vcpu.upcall(|_| ran += 1).unwrap(), 0);
    assert_eq!(ran, 0);
    // With work elsewhere only.
    let p = ch.bind(Bind::Affinity(0)).unwrap();
    ch.send(p).unwrap();
    assert!(!vcpu.upcall_pending());
    assert_eq!(vcpu.upcall(|_| ran += 1).unwrap(), 0);
    assert_eq!(ran, 0);
    assert!(
        ch.status(p.number()).unwrap().pending,
        "not consumed by vCPU 1"
    );
}

// ---------------------------------------------------------------------------
// Send, kicks (C2), coalescing (C1)
// ---------------------------------------------------------------------------

#[test]
fn closures_are_accepted_as_notify() {
    let log = Arc::new(Mutex::new(Vec::new()));
    let sink = Arc::clone(&log);
    let ch = Channels::new(TwoLevel::new(OwnedMemory::new(1, 2)), move |v: u32| {
        sink.lock().unwrap().push(v)
    });
    let p = ch.bind(Bind::Affinity(1)).unwrap();
    assert!(log.lock().unwrap().is_empty());
    ch.send(p).unwrap();
    ch.send(p).unwrap();
    assert_eq!(*log.lock().unwrap(), [1]);
}

#[test]
fn kick_is_reported_exactly_on_the_upcall_flag_edge() {
    // Ports 1 and 2 share word 0; port 64 is in word 1. All on vCPU 1.
    let ch = new_ch(2, 2);
    let mut ports = Vec::new();
    for _ in 1..ch.nr_ports() {
        ports.push(ch.bind(Bind::Affinity(1)).unwrap());
    }
    let a = ports[0];
    let b = ports[1];
    let far = ports[63];
    assert_eq!((a.number(), b.number(), far.number()), (1, 2, 64));

    ch.send(a).unwrap();
    assert_eq!(kicks(&ch), [1], "flag 0 → 1: kick");
    ch.send(b).unwrap();
    assert!(
        kicks(&ch).is_empty(),
        "same word, selector already set: no kick"
    );
    ch.send(far).unwrap();
    assert!(kicks(&ch).is_empty(), "new word, flag already set: no kick");
    ch.send(a).unwrap();
    assert!(kicks(&ch).is_empty(), "coalesced: no kick");

    let seen = upcall(&ch, 1);
    assert_eq!(seen.len(), 3);
    assert!(!ch.upcall_pending(1).unwrap());
    // After the upcall cleared the flag, the next send kicks again.
    ch.send(far).unwrap();
    assert_eq!(kicks(&ch), [1]);
}

#[test]
fn kicks_match_upcall_flag_edges_over_a_scripted_sequence() {
    // After every operation the kicks reported are exactly the vCPUs whose
    // raw upcall flag went 0 → 1 during it.
    let ch = new_ch(2, 3);
    let ports: Vec<Port> = (0..100)
        .map(|i| ch.bind(Bind::Affinity(i % 3)).unwrap())
        .collect();
    let flags = |ch: &Ch| -> Vec<u8> {
        let mem = ch.abi().memory();
        (0..mem.nr_vcpus())
            .filter_map(|v| mem.vcpu_info(v))
            .map(|vi| vi.evtchn_upcall_pending.load(SeqCst))
            .collect()
    };
    let mut seed = 0x2545_f491_4f6c_dd1du64;
    let mut rnd = move |n: u64| {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed % n
    };
    let mut total_kicks = 0;
    // Miri runs about a thousand times slower.
    let steps = if cfg!(miri) { 200 } else { 2000 };
    for _ in 0..steps {
        let before = flags(&ch);
        let p = ports[rnd(ports.len() as u64) as usize];
        match rnd(10) {
            0..=4 => ch.send(p).unwrap(),
            5 => ch.mask(p).unwrap(),
            6 => ch.unmask(p).unwrap(),
            7 => ch.set_affinity(p, rnd(3) as u32).unwrap(),
            _ => {
                upcall(&ch, rnd(3) as u32);
            }
        }
        let after = flags(&ch);
        let edges: Vec<u32> = (0..3u32)
            .filter(|&v| before[v as usize] == 0 && after[v as usize] == 1)
            .collect();
        let mut got = kicks(&ch);
        got.sort_unstable();
        total_kicks += got.len();
        assert_eq!(got, edges, "kicks must be exactly the 0 → 1 flag edges");
    }
    assert!(total_kicks > 10, "the script must exercise kicks");
}

#[test]
fn many_sends_coalesce_into_one_handler_run() {
    let ch = new_ch(1, 2);
    let p = ch.bind(Bind::Affinity(1)).unwrap();
    for _ in 0..100 {
        ch.send(p).unwrap();
    }
    assert_eq!(kicks(&ch), [1]);
    assert_eq!(upcall(&ch, 1), [p]);
    assert!(upcall(&ch, 1).is_empty());
    // And again after delivery: a fresh edge.
    for _ in 0..7 {
        ch.send(p).unwrap();
    }
    assert_eq!(kicks(&ch), [1]);
    assert_eq!(upcall(&ch, 1), [p]);
}

#[test]
fn upcall_runs_only_the_ports_bound_to_that_vcpu() {
    let ch = new_ch(1, 3);
    let ports: Vec<Port> = (0..9)
        .map(|i| ch.bind(Bind::Affinity(i % 3)).unwrap())
        .collect();
    for p in &ports {
        ch.send(*p).unwrap();
    }
    let mut k = kicks(&ch);
    k.sort_unstable();
    assert_eq!(k, [0, 1, 2]);
    for v in 0..3u32 {
        let seen: BTreeSet<u32> = numbers(&upcall(&ch, v)).into_iter().collect();
        let want: BTreeSet<u32> = ports
            .iter()
            .filter(|p| ch.status(p.number()).unwrap().vcpu == v)
            .map(|p| p.number())
            .collect();
        assert_eq!(seen, want);
    }
    assert!(ports
        .iter()
        .all(|p| !ch.status(p.number()).unwrap().pending));
}

// ---------------------------------------------------------------------------
// Masking (C4) and mask reasons
// ---------------------------------------------------------------------------

#[test]
fn masked_port_handler_never_runs_and_unmask_delivers_once() {
    let ch = new_ch(1, 2);
    let p = ch.bind(Bind::Affinity(1)).unwrap();
    ch.mask(p).unwrap();
    for _ in 0..3 {
        ch.send(p).unwrap();
    }
    assert!(kicks(&ch).is_empty(), "masked send must not kick");
    assert!(!ch.upcall_pending(1).unwrap());
    assert!(upcall(&ch, 1).is_empty());
    assert!(upcall(&ch, 0).is_empty());
    let st = ch.status(p.number()).unwrap();
    assert!(st.pending && st.masked_explicit);

    ch.unmask(p).unwrap();
    assert_eq!(kicks(&ch), [1]);
    assert_eq!(upcall(&ch, 1), [p]);
    assert!(upcall(&ch, 1).is_empty());
}

#[test]
fn mask_after_raise_suppresses_the_raised_event_until_unmask() {
    let ch = new_ch(1, 2);
    let p = ch.bind(Bind::Affinity(0)).unwrap();
    ch.send(p).unwrap();
    assert_eq!(kicks(&ch), [0]);
    ch.mask(p).unwrap();
    // The upcall flag is up, but the handler must not run.
    assert!(ch.upcall_pending(0).unwrap());
    assert!(upcall(&ch, 0).is_empty());
    assert!(ch.status(p.number()).unwrap().pending, "masked event kept");
    ch.unmask(p).unwrap();
    assert_eq!(kicks(&ch), [0], "unmask of a pending port re-raises");
    assert_eq!(upcall(&ch, 0), [p]);
}

#[test]
fn unmask_delivers_to_the_current_vcpu_after_set_affinity_while_masked() {
    let ch = new_ch(1, 3);
    let p = ch.bind(Bind::Affinity(0)).unwrap();
    ch.mask(p).unwrap();
    ch.send(p).unwrap();
    ch.set_affinity(p, 2).unwrap();
    let st = ch.status(p.number()).unwrap();
    assert_eq!(st.vcpu, 2);
    assert!(
        st.masked_explicit && !st.masked_rebind,
        "rebind reason removed"
    );
    assert!(kicks(&ch).is_empty(), "still masked: nothing raised");
    assert!(pending_vcpus(&ch).is_empty());

    ch.unmask(p).unwrap();
    assert_eq!(kicks(&ch), [2]);
    assert_eq!(pending_vcpus(&ch), [2]);
    assert!(upcall(&ch, 0).is_empty());
    assert!(upcall(&ch, 1).is_empty());
    assert_eq!(upcall(&ch, 2), [p]);
}

#[test]
fn mask_and_unmask_are_idempotent() {
    let ch = new_ch(1, 2);
    let p = ch.bind(Bind::Affinity(1)).unwrap();
    ch.mask(p).unwrap();
    ch.mask(p).unwrap();
    ch.send(p).unwrap();
    assert!(kicks(&ch).is_empty());
    ch.unmask(p).unwrap();
    assert!(!ch.status(p.number()).unwrap().masked_explicit);
    assert_eq!(kicks(&ch), [1], "one unmask after two masks unmasks");
    ch.unmask(p).unwrap();
    assert!(kicks(&ch).is_empty(), "a second unmask raises nothing");
    assert_eq!(upcall(&ch, 1), [p]);
    // Unmask of an unmasked, non-pending port: no effect at all.
    let before = snap(&ch);
    ch.unmask(p).unwrap();
    assert_eq!(snap(&ch), before);
}

#[test]
fn unmask_alone_does_not_deliver_while_eoi_pending() {
    let ch = new_ch(1, 2);
    let p = ch.bind(Bind::Affinity(1)).unwrap();
    ch.mask(p).unwrap();
    ch.mask_until_eoi(p).unwrap();
    ch.send(p).unwrap();
    ch.unmask(p).unwrap();
    let st = ch.status(p.number()).unwrap();
    assert!(!st.masked_explicit && st.masked_eoi);
    assert!(kicks(&ch).is_empty(), "EOI still pending: no raise");
    assert!(upcall(&ch, 1).is_empty());
    ch.eoi(p).unwrap();
    assert!(!ch.status(p.number()).unwrap().masked_eoi);
    assert_eq!(kicks(&ch), [1]);
    assert_eq!(upcall(&ch, 1), [p]);
    assert!(upcall(&ch, 1).is_empty());
}

#[test]
fn eoi_alone_does_not_deliver_while_explicitly_masked() {
    let ch = new_ch(1, 2);
    let p = ch.bind(Bind::Affinity(0)).unwrap();
    ch.mask_until_eoi(p).unwrap();
    ch.mask(p).unwrap();
    ch.send(p).unwrap();
    ch.eoi(p).unwrap();
    let st = ch.status(p.number()).unwrap();
    assert!(st.masked_explicit && !st.masked_eoi);
    assert!(kicks(&ch).is_empty());
    assert!(upcall(&ch, 0).is_empty());
    ch.unmask(p).unwrap();
    assert_eq!(kicks(&ch), [0]);
    assert_eq!(upcall(&ch, 0), [p]);
    assert!(upcall(&ch, 0).is_empty());
}

#[test]
fn eoi_without_an_outstanding_eoi_is_an_error_and_changes_nothing() {
    let ch = new_ch(1, 2);
    let p = ch.bind(Bind::Affinity(1)).unwrap();
    assert_err_unchanged(&ch, Error::NotEoiPending, || ch.eoi(p));
    // On an explicitly masked, pending port: still refused, still masked.
    ch.mask(p).unwrap();
    ch.send(p).unwrap();
    assert_err_unchanged(&ch, Error::NotEoiPending, || ch.eoi(p));
    assert!(ch.status(p.number()).unwrap().masked_explicit);
    // A second eoi after a good one.
    ch.mask_until_eoi(p).unwrap();
    ch.mask_until_eoi(p).unwrap(); // a reason, not a counter
    ch.eoi(p).unwrap();
    assert!(!ch.status(p.number()).unwrap().masked_eoi);
    assert_err_unchanged(&ch, Error::NotEoiPending, || ch.eoi(p));
}

#[test]
fn late_eoi_from_the_handler_holds_later_events_until_eoi() {
    let ch = new_ch(1, 2);
    let p = ch.bind(Bind::Affinity(1)).unwrap();
    ch.send(p).unwrap();
    kicks(&ch);
    let mut vcpu = ch.vcpu(1).unwrap();
    let n = vcpu
        .upcall(|q| {
            ch.mask_until_eoi(q).unwrap();
            // Events arriving while the EOI is outstanding are held.
            ch.send(q).unwrap();
            ch.send(q).unwrap();
        })
        .unwrap();
    assert_eq!(n, 1, "the sends in the handler must not be handled yet");
    assert!(kicks(&ch).is_empty());
    assert!(ch.status(p.number()).unwrap().pending);
    assert_eq!(
        vcpu.upcall(|_| panic!("handler ran before EOI")).unwrap(),
        0
    );
    ch.eoi(p).unwrap();
    assert_eq!(kicks(&ch), [1]);
    let mut seen = Vec::new();
    assert_eq!(vcpu.upcall(|q| seen.push(q)).unwrap(), 1);
    assert_eq!(seen, [p]);
}

// ---------------------------------------------------------------------------
// set_affinity (Xen affinity item 3, C5)
// ---------------------------------------------------------------------------

/// The rebind-in-flight case: an event pending on vCPU 0 while `set_affinity(p, 1)`
/// runs. The rebind's unmask re-raises it on vCPU 1; vCPU 0's scan sees
/// the port is no longer bound there. Handled exactly once.
#[test]
fn seed3_event_pending_during_set_affinity_old_vcpu_scans_first() {
    let ch = new_ch(1, 2);
    let p = ch.bind(Bind::Affinity(0)).unwrap();
    ch.send(p).unwrap();
    assert_eq!(kicks(&ch), [0]);

    ch.set_affinity(p, 1).unwrap();
    let st = ch.status(p.number()).unwrap();
    assert_eq!(st.vcpu, 1);
    assert!(st.pending);
    assert!(!st.masked_rebind && !st.masked_explicit);
    assert_eq!(kicks(&ch), [1], "the rebind's unmask re-raises on vCPU 1");
    assert_eq!(pending_vcpus(&ch), [0, 1], "vCPU 0's stale flag stays up");

    // vCPU 0 runs first: it sees the flag but the port is not bound there.
    assert!(upcall(&ch, 0).is_empty());
    assert!(
        ch.status(p.number()).unwrap().pending,
        "not consumed by vCPU 0"
    );
    assert_eq!(upcall(&ch, 1), [p]);
    assert!(upcall(&ch, 0).is_empty());
    assert!(upcall(&ch, 1).is_empty());
    assert!(pending_vcpus(&ch).is_empty());

    // The next send lands on vCPU 1 only.
    ch.send(p).unwrap();
    assert_eq!(kicks(&ch), [1]);
    assert_eq!(pending_vcpus(&ch), [1]);
    assert!(upcall(&ch, 0).is_empty());
    assert_eq!(upcall(&ch, 1), [p]);
}

#[test]
fn seed3_event_pending_during_set_affinity_new_vcpu_scans_first() {
    let ch = new_ch(1, 2);
    let p = ch.bind(Bind::Affinity(0)).unwrap();
    ch.send(p).unwrap();
    ch.set_affinity(p, 1).unwrap();
    assert_eq!(kicks(&ch), [0, 1]);
    assert_eq!(upcall(&ch, 1), [p]);
    assert!(upcall(&ch, 0).is_empty(), "handled once only");
    ch.send(p).unwrap();
    assert_eq!(kicks(&ch), [1]);
    assert_eq!(pending_vcpus(&ch), [1]);
    assert_eq!(upcall(&ch, 1), [p]);
}

#[test]
fn xencompat_bind_then_set_affinity_moves_the_spurious_event() {
    // Seed item 2: without an atomic bind, vCPU 0 is disturbed even though
    // the port is rebound at once; the event itself runs on the new vCPU.
    let ch = new_ch(1, 2);
    let p = ch.bind(Bind::XenCompat).unwrap();
    ch.set_affinity(p, 1).unwrap();
    assert_eq!(kicks(&ch), [0, 1]);
    assert!(ch.upcall_pending(0).unwrap(), "vCPU 0 was disturbed");
    assert!(upcall(&ch, 0).is_empty());
    assert_eq!(upcall(&ch, 1), [p]);
    // Contrast: the atomic bind disturbs nobody but its target, and only
    // when sent to.
    let q = ch.bind(Bind::Affinity(1)).unwrap();
    assert!(kicks(&ch).is_empty());
    assert!(pending_vcpus(&ch).is_empty());
    ch.send(q).unwrap();
    assert_eq!(kicks(&ch), [1]);
}

#[test]
fn set_affinity_of_idle_port_raises_nothing_and_redirects_sends() {
    let ch = new_ch(1, 4);
    let p = ch.bind(Bind::Affinity(0)).unwrap();
    for v in [3u32, 1, 2, 0, 3] {
        ch.set_affinity(p, v).unwrap();
        assert!(kicks(&ch).is_empty());
        assert!(pending_vcpus(&ch).is_empty());
        let st = ch.status(p.number()).unwrap();
        assert_eq!(st.vcpu, v);
        assert!(!st.masked_rebind && !st.masked_explicit && !st.pending);
        ch.send(p).unwrap();
        assert_eq!(kicks(&ch), [v]);
        assert_eq!(pending_vcpus(&ch), [v]);
        assert_eq!(upcall(&ch, v), [p]);
    }
}

#[test]
fn set_affinity_to_the_same_vcpu_changes_nothing() {
    let ch = new_ch(1, 2);
    let p = ch.bind(Bind::Affinity(1)).unwrap();
    ch.send(p).unwrap();
    kicks(&ch);
    let before = snap(&ch);
    ch.set_affinity(p, 1).unwrap();
    assert_eq!(snap(&ch), before);
}

#[test]
fn set_affinity_out_of_range_is_an_error_and_changes_nothing() {
    let ch = new_ch(1, 2);
    let p = ch.bind(Bind::Affinity(1)).unwrap();
    ch.send(p).unwrap();
    for v in [2u32, 3, 0xffff, 0x1_0000, u32::MAX] {
        assert_err_unchanged(&ch, Error::VcpuOutOfRange, || ch.set_affinity(p, v));
    }
    assert_eq!(ch.status(p.number()).unwrap().vcpu, 1);
    assert_eq!(upcall(&ch, 1), [p]);
}

#[test]
fn set_affinity_while_masked_keeps_the_explicit_mask() {
    let ch = new_ch(1, 2);
    let p = ch.bind(Bind::Affinity(0)).unwrap();
    ch.mask(p).unwrap();
    ch.set_affinity(p, 1).unwrap();
    let st = ch.status(p.number()).unwrap();
    assert!(st.masked_explicit && !st.masked_rebind);
    assert!(ch.abi().is_masked(p.number()).unwrap());
    ch.send(p).unwrap();
    assert!(kicks(&ch).is_empty());
    assert!(upcall(&ch, 1).is_empty());
}

// ---------------------------------------------------------------------------
// The in-flight guard (C3), single-threaded through nested upcalls
// ---------------------------------------------------------------------------

#[test]
fn rebind_during_handler_new_vcpu_defers_then_runs_once() {
    let ch = new_ch(1, 2);
    let p = ch.bind(Bind::Affinity(0)).unwrap();
    ch.send(p).unwrap();
    kicks(&ch);
    let running = std::cell::Cell::new(0u32);
    let total = std::cell::Cell::new(0u32);
    let mut nested_ran = usize::MAX;

    let mut v0 = ch.vcpu(0).unwrap();
    let n = v0
        .upcall(|q| {
            assert_eq!(running.get(), 0, "handler re-entered");
            running.set(1);
            total.set(total.get() + 1);
            let st = ch.status(q.number()).unwrap();
            assert!(st.in_flight && !st.pending);
            ch.set_affinity(q, 1).unwrap();
            ch.send(q).unwrap();
            assert_eq!(ch.notifier().take(), [1], "the new send targets vCPU 1");
            // vCPU 1 runs while our handler is still in flight: it must not
            // start the handler, and must not lose the event either.
            let mut v1 = ch.vcpu(1).unwrap();
            nested_ran = v1
                .upcall(|_| panic!("handler ran concurrently on vCPU 1"))
                .unwrap();
            assert!(ch.status(q.number()).unwrap().pending);
            running.set(0);
        })
        .unwrap();
    assert_eq!(n, 1);
    assert_eq!(nested_ran, 0);
    // Ending the handler re-raised the deferred event on vCPU 1.
    assert_eq!(kicks(&ch), [1]);
    assert!(ch.upcall_pending(1).unwrap());
    let st = ch.status(p.number()).unwrap();
    assert!(!st.in_flight && st.pending && st.vcpu == 1);
    assert_eq!(upcall(&ch, 1), [p]);
    assert_eq!(total.get(), 1);
    assert!(upcall(&ch, 0).is_empty());
    assert!(upcall(&ch, 1).is_empty());
}

#[test]
fn nested_upcall_on_the_same_vcpu_does_not_reenter_the_handler() {
    let ch = new_ch(1, 1);
    let p = ch.bind(Bind::Affinity(0)).unwrap();
    ch.send(p).unwrap();
    let depth = std::cell::Cell::new(0u32);
    let runs = std::cell::Cell::new(0u32);
    let mut outer = ch.vcpu(0).unwrap();
    let n = outer
        .upcall(|q| {
            assert_eq!(depth.get(), 0, "re-entered");
            depth.set(1);
            runs.set(runs.get() + 1);
            if runs.get() == 1 {
                ch.send(q).unwrap();
                let mut inner = ch.vcpu(0).unwrap();
                assert_eq!(inner.upcall(|_| panic!("re-entered")).unwrap(), 0);
            }
            depth.set(0);
        })
        .unwrap();
    // The deferred send was handled after the first run ended, in the same
    // outer upcall.
    assert_eq!(n, 2);
    assert_eq!(runs.get(), 2);
    assert!(!ch.status(p.number()).unwrap().pending);
    assert!(!ch.upcall_pending(0).unwrap());
}

// ---------------------------------------------------------------------------
// Upcall loop, sends from handlers, in_flight
// ---------------------------------------------------------------------------

#[test]
fn handler_resending_its_own_port_is_handled_again_in_the_same_upcall() {
    let ch = new_ch(1, 2);
    let p = ch.bind(Bind::Affinity(1)).unwrap();
    ch.send(p).unwrap();
    assert_eq!(kicks(&ch), [1]);
    let mut left = 3;
    let mut seen = Vec::new();
    let n = ch
        .vcpu(1)
        .unwrap()
        .upcall(|q| {
            seen.push(q);
            if left > 0 {
                left -= 1;
                ch.send(q).unwrap();
            }
        })
        .unwrap();
    assert_eq!(n, 4);
    assert_eq!(seen, [p; 4]);
    // Each re-send found the flag cleared by the upcall: a kick each (C2).
    assert_eq!(kicks(&ch), [1, 1, 1]);
    assert!(!ch.upcall_pending(1).unwrap());
    assert!(!ch.status(p.number()).unwrap().pending);
}

#[test]
fn handler_sending_to_another_port_on_the_same_vcpu_is_handled_in_the_same_upcall() {
    let ch = new_ch(2, 2);
    let ports: Vec<Port> = (0..70)
        .map(|_| ch.bind(Bind::Affinity(0)).unwrap())
        .collect();
    let (a, same_word_lower, other_word) = (ports[5], ports[1], ports[66]);
    ch.send(a).unwrap();
    kicks(&ch);
    let mut seen = Vec::new();
    let n = ch
        .vcpu(0)
        .unwrap()
        .upcall(|q| {
            seen.push(q);
            if q == a {
                ch.send(same_word_lower).unwrap();
                ch.send(other_word).unwrap();
            }
        })
        .unwrap();
    assert_eq!(n, 3);
    assert_eq!(seen[0], a);
    assert_eq!(
        seen[1..].iter().copied().collect::<HashSet<_>>(),
        HashSet::from([same_word_lower, other_word])
    );
    assert_eq!(kicks(&ch), [0], "first send from handler: flag 0 → 1");
}

#[test]
fn handler_sending_to_a_port_on_another_vcpu_kicks_that_vcpu() {
    let ch = new_ch(1, 3);
    let a = ch.bind(Bind::Affinity(0)).unwrap();
    let b = ch.bind(Bind::Affinity(2)).unwrap();
    ch.send(a).unwrap();
    kicks(&ch);
    let seen = {
        let mut seen = Vec::new();
        ch.vcpu(0)
            .unwrap()
            .upcall(|q| {
                seen.push(q);
                ch.send(b).unwrap();
            })
            .unwrap();
        seen
    };
    assert_eq!(seen, [a]);
    assert_eq!(kicks(&ch), [2]);
    assert_eq!(pending_vcpus(&ch), [2]);
    assert_eq!(upcall(&ch, 2), [b]);
}

#[test]
fn status_in_flight_is_true_only_inside_the_handler() {
    let ch = new_ch(1, 2);
    let p = ch.bind(Bind::Affinity(1)).unwrap();
    let q = ch.bind(Bind::Affinity(1)).unwrap();
    ch.send(p).unwrap();
    ch.send(q).unwrap();
    let mut checked = 0;
    ch.vcpu(1)
        .unwrap()
        .upcall(|r| {
            let st = ch.status(r.number()).unwrap();
            assert!(st.in_flight, "own port in flight during its handler");
            assert!(!st.pending, "pending cleared before the handler");
            let other = if r == p { q } else { p };
            assert!(!ch.status(other.number()).unwrap().in_flight);
            checked += 1;
        })
        .unwrap();
    assert_eq!(checked, 2);
    for r in [p, q] {
        assert!(!ch.status(r.number()).unwrap().in_flight);
    }
}

// ---------------------------------------------------------------------------
// Round-robin fairness of the scan
// ---------------------------------------------------------------------------

#[test]
fn scan_resumes_after_the_last_port_handled() {
    let ch = new_ch(1, 1);
    let ports: Vec<Port> = (0..6)
        .map(|_| ch.bind(Bind::Affinity(0)).unwrap())
        .collect();
    let (a, b, c) = (ports[1], ports[3], ports[5]);
    let mut vcpu = ch.vcpu(0).unwrap();
    let mut run = |send: &[Port]| {
        for p in send {
            ch.send(*p).unwrap();
        }
        let mut seen = Vec::new();
        vcpu.upcall(|p| seen.push(p)).unwrap();
        seen
    };
    // First upcall stops at b (c not pending).
    assert_eq!(run(&[a, b]), [a, b]);
    // The next starts after b: c first, then wraps to a, b.
    assert_eq!(run(&[a, b, c]), [c, a, b]);
    // Stopped at b again.
    assert_eq!(run(&[a, b, c]), [c, a, b]);
    // Stop at a, then start at b.
    assert_eq!(run(&[a]), [a]);
    assert_eq!(run(&[c, b, a]), [b, c, a]);
}

#[test]
fn self_resending_ports_are_served_round_robin_not_starved() {
    let ch = new_ch(1, 1);
    let ports: Vec<Port> = (0..3)
        .map(|_| ch.bind(Bind::Affinity(0)).unwrap())
        .collect();
    let (a, b, c) = (ports[0], ports[1], ports[2]);
    let mut vcpu = ch.vcpu(0).unwrap();

    // Only `a` storms (re-sends itself once): b and c still run in the
    // first pass, before `a`'s second run.
    for p in [a, b, c] {
        ch.send(p).unwrap();
    }
    let mut seen = Vec::new();
    let mut resend = 1;
    vcpu.upcall(|p| {
        seen.push(p);
        if p == a && resend > 0 {
            resend -= 1;
            ch.send(p).unwrap();
        }
    })
    .unwrap();
    assert_eq!(seen, [a, b, c, a]);
    // The next upcall starts after `a`, the last one handled.
    for p in [a, b, c] {
        ch.send(p).unwrap();
    }
    let mut seen = Vec::new();
    vcpu.upcall(|p| seen.push(p)).unwrap();
    assert_eq!(seen, [b, c, a]);

    // All three storm (each re-sends itself 3 times): strict rotation.
    for p in [a, b, c] {
        ch.send(p).unwrap();
    }
    let mut budget = std::collections::HashMap::from([(a, 3), (b, 3), (c, 3)]);
    let mut seen = Vec::new();
    vcpu.upcall(|p| {
        seen.push(p);
        let left = budget.get_mut(&p).unwrap();
        if *left > 0 {
            *left -= 1;
            ch.send(p).unwrap();
        }
    })
    .unwrap();
    assert_eq!(seen.len(), 12);
    for w in seen.windows(3) {
        let set: HashSet<Port> = w.iter().copied().collect();
        assert_eq!(set.len(), 3, "not round-robin: {:?}", numbers(&seen));
    }
}

/// Fairness across selector words: with the same set of ports pending at
/// every upcall, no port should be handled twice in a row (the next upcall
/// starts *after* the last one handled). Linux scans the start word in two
/// parts (upper bits first, lower bits last); the core scans the whole start
/// word first, so the port handled last is handled first again.
#[test]
fn round_robin_across_words_never_repeats_the_last_port_first() {
    let ch = new_ch(2, 1);
    let ports: Vec<Port> = (0..64)
        .map(|_| ch.bind(Bind::Affinity(0)).unwrap())
        .collect();
    let (a, b) = (ports[0], ports[63]);
    assert_eq!((a.number() / 64, b.number() / 64), (0, 1));
    let mut vcpu = ch.vcpu(0).unwrap();
    let mut order = Vec::new();
    for _ in 0..4 {
        ch.send(a).unwrap();
        ch.send(b).unwrap();
        vcpu.upcall(|p| order.push(p.number())).unwrap();
    }
    assert_eq!(order.len(), 8);
    for w in order.windows(2) {
        assert_ne!(w[0], w[1], "same port handled twice in a row: {order:?}");
    }
}

/// Same fairness question at the word boundary: the last port handled is
/// bit 63 of word 0; the next upcall should continue with word 1.
#[test]
fn round_robin_after_bit_63_continues_with_the_next_word() {
    let ch = new_ch(2, 1);
    let ports: Vec<Port> = (0..64)
        .map(|_| ch.bind(Bind::Affinity(0)).unwrap())
        .collect();
    let (a, b) = (ports[62], ports[63]);
    assert_eq!((a.number(), b.number()), (63, 64));
    let mut vcpu = ch.vcpu(0).unwrap();
    let mut order = Vec::new();
    for _ in 0..4 {
        ch.send(a).unwrap();
        ch.send(b).unwrap();
        vcpu.upcall(|p| order.push(p.number())).unwrap();
    }
    for w in order.windows(2) {
        assert_ne!(w[0], w[1], "same port handled twice in a row: {order:?}");
    }
}

// ---------------------------------------------------------------------------
// Close (C6)
// ---------------------------------------------------------------------------

#[test]
fn handler_never_runs_after_close_even_if_the_event_was_raised() {
    let ch = new_ch(1, 2);
    let p = ch.bind(Bind::XenCompat).unwrap();
    ch.send(p).unwrap();
    let q = ch.bind(Bind::Affinity(1)).unwrap();
    ch.send(q).unwrap();
    assert!(ch.upcall_pending(0).unwrap() && ch.upcall_pending(1).unwrap());
    ch.close(p).unwrap();
    ch.close(q).unwrap();
    let st = ch.status(p.number()).unwrap();
    assert_eq!(st.state, State::Free);
    assert!(!st.masked_explicit && !st.masked_eoi && !st.masked_rebind);
    assert!(
        ch.abi().is_masked(p.number()).unwrap(),
        "ABI mask set by close"
    );
    assert!(upcall(&ch, 0).is_empty());
    assert!(upcall(&ch, 1).is_empty());
}

#[test]
fn every_operation_on_a_closed_handle_is_not_bound_and_changes_nothing() {
    let ch = new_ch(1, 2);
    let p = ch.bind(Bind::Affinity(1)).unwrap();
    let other = ch.bind(Bind::Affinity(1)).unwrap();
    ch.send(other).unwrap();
    ch.close(p).unwrap();
    assert_err_unchanged(&ch, Error::NotBound, || ch.send(p));
    assert_err_unchanged(&ch, Error::NotBound, || ch.mask(p));
    assert_err_unchanged(&ch, Error::NotBound, || ch.unmask(p));
    assert_err_unchanged(&ch, Error::NotBound, || ch.mask_until_eoi(p));
    assert_err_unchanged(&ch, Error::NotBound, || ch.eoi(p));
    assert_err_unchanged(&ch, Error::NotBound, || ch.set_affinity(p, 0));
    assert_err_unchanged(&ch, Error::NotBound, || ch.close(p));
    assert_err_unchanged(&ch, Error::NotBound, || ch.port(p.number()));
    // vCPU range is checked first on set_affinity.
    assert_err_unchanged(&ch, Error::VcpuOutOfRange, || ch.set_affinity(p, 2));
    assert_eq!(upcall(&ch, 1), [other]);
}

#[test]
fn reused_number_starts_clean_and_the_old_handle_is_stale() {
    let ch = new_ch(1, 3);
    let old = ch.bind(Bind::XenCompat).unwrap();
    // Give the old life every kind of state: pending, all mask reasons.
    ch.send(old).unwrap();
    ch.mask(old).unwrap();
    ch.mask_until_eoi(old).unwrap();
    ch.close(old).unwrap();
    kicks(&ch);

    let new = ch.bind(Bind::Affinity(2)).unwrap();
    assert_eq!(new.number(), old.number());
    assert_eq!(new.generation(), old.generation() + 1);
    let st = ch.status(new.number()).unwrap();
    assert_eq!(st.state, State::Bound);
    assert_eq!(st.vcpu, 2, "affinity as the new bind asked");
    assert!(!st.pending, "no pending event carried over");
    assert!(!st.masked_explicit && !st.masked_eoi && !st.masked_rebind);
    assert!(!ch.abi().is_masked(new.number()).unwrap());
    assert!(
        kicks(&ch).is_empty(),
        "Affinity bind of a reused number kicked"
    );
    assert!(!ch.upcall_pending(2).unwrap());
    // vCPU 0 may still hold the old life's upcall flag; it runs nothing.
    assert!(upcall(&ch, 0).is_empty());
    assert!(upcall(&ch, 2).is_empty());

    // The old handle is Stale for everything and changes nothing.
    assert_err_unchanged(&ch, Error::Stale, || ch.send(old));
    assert_err_unchanged(&ch, Error::Stale, || ch.mask(old));
    assert_err_unchanged(&ch, Error::Stale, || ch.unmask(old));
    assert_err_unchanged(&ch, Error::Stale, || ch.mask_until_eoi(old));
    assert_err_unchanged(&ch, Error::Stale, || ch.eoi(old));
    assert_err_unchanged(&ch, Error::Stale, || ch.set_affinity(old, 0));
    assert_err_unchanged(&ch, Error::Stale, || ch.set_affinity(old, 2));
    assert_err_unchanged(&ch, Error::Stale, || ch.close(old));

    // The new life works, unmasked, on vCPU 2.
    ch.send(new).unwrap();
    assert_eq!(kicks(&ch), [2]);
    assert_eq!(upcall(&ch, 2), [new]);
}

#[test]
fn stale_handles_stay_stale_across_several_lives() {
    let ch = new_ch(1, 2);
    let first = ch.bind(Bind::Affinity(0)).unwrap();
    ch.close(first).unwrap();
    let second = ch.bind(Bind::Affinity(1)).unwrap();
    ch.close(second).unwrap();
    // Number free again: the handle of the last life is NotBound, older ones
    // Stale.
    assert_err_unchanged(&ch, Error::NotBound, || ch.send(second));
    assert_err_unchanged(&ch, Error::Stale, || ch.send(first));
    let third = ch.bind(Bind::Affinity(0)).unwrap();
    assert_err_unchanged(&ch, Error::Stale, || ch.send(second));
    assert_err_unchanged(&ch, Error::Stale, || ch.send(first));
    ch.send(third).unwrap();
    assert_eq!(upcall(&ch, 0), [third]);
}

#[test]
fn close_inside_the_handler_defers_reuse_until_the_handler_ends() {
    let ch = new_ch(1, 2);
    let p = ch.bind(Bind::Affinity(0)).unwrap();
    ch.send(p).unwrap();
    let mut replacement = None;
    let n = ch
        .vcpu(0)
        .unwrap()
        .upcall(|q| {
            ch.close(q).unwrap();
            let st = ch.status(q.number()).unwrap();
            assert_eq!(st.state, State::Closing);
            assert!(st.in_flight);
            assert_eq!(ch.send(q).unwrap_err(), Error::NotBound);
            assert_eq!(ch.port(q.number()).unwrap_err(), Error::NotBound);
            // The number is not reused while its handler runs.
            let r = ch.bind(Bind::Affinity(0)).unwrap();
            assert_ne!(r.number(), q.number());
            replacement = Some(r);
        })
        .unwrap();
    assert_eq!(n, 1);
    let st = ch.status(p.number()).unwrap();
    assert_eq!(st.state, State::Free, "handler end frees a closing port");
    assert!(!st.in_flight);
    let again = ch.bind(Bind::Affinity(1)).unwrap();
    assert_eq!(again.number(), p.number());
    assert_eq!(again.generation(), p.generation() + 1);
    assert!(replacement.is_some());
}

#[test]
fn send_in_a_handler_before_close_is_not_delivered_after_close() {
    let ch = new_ch(1, 1);
    let p = ch.bind(Bind::Affinity(0)).unwrap();
    ch.send(p).unwrap();
    let n = ch
        .vcpu(0)
        .unwrap()
        .upcall(|q| {
            ch.send(q).unwrap(); // would run again in this upcall...
            ch.close(q).unwrap(); // ...but close is final
        })
        .unwrap();
    assert_eq!(n, 1);
    assert!(upcall(&ch, 0).is_empty());
    // The reused number carries none of it.
    let r = ch.bind(Bind::Affinity(0)).unwrap();
    assert_eq!(r.number(), p.number());
    assert!(!ch.status(r.number()).unwrap().pending);
    assert!(upcall(&ch, 0).is_empty());
}

// ---------------------------------------------------------------------------
// Handles used on the wrong instance
// ---------------------------------------------------------------------------

#[test]
fn handle_beyond_this_instance_is_port_out_of_range_and_changes_nothing() {
    let big = new_ch(4, 2);
    let mut far = None;
    for _ in 0..100 {
        far = Some(big.bind(Bind::Affinity(0)).unwrap());
    }
    let far = far.unwrap();
    assert_eq!(far.number(), 100);

    let ch = new_ch(1, 2);
    let p = ch.bind(Bind::XenCompat).unwrap();
    ch.send(p).unwrap();
    assert!(far.number() >= ch.nr_ports());
    assert_err_unchanged(&ch, Error::PortOutOfRange, || ch.send(far));
    assert_err_unchanged(&ch, Error::PortOutOfRange, || ch.mask(far));
    assert_err_unchanged(&ch, Error::PortOutOfRange, || ch.unmask(far));
    assert_err_unchanged(&ch, Error::PortOutOfRange, || ch.mask_until_eoi(far));
    assert_err_unchanged(&ch, Error::PortOutOfRange, || ch.eoi(far));
    assert_err_unchanged(&ch, Error::PortOutOfRange, || ch.set_affinity(far, 1));
    assert_err_unchanged(&ch, Error::PortOutOfRange, || ch.close(far));
}

#[test]
fn handle_of_another_instance_with_another_generation_is_stale() {
    let a = new_ch(1, 2);
    for _ in 0..3 {
        let p = a.bind(Bind::Affinity(0)).unwrap();
        a.close(p).unwrap();
    }
    let foreign = a.bind(Bind::Affinity(0)).unwrap();
    assert_eq!((foreign.number(), foreign.generation()), (1, 4));

    let ch = new_ch(1, 2);
    let own = ch.bind(Bind::Affinity(1)).unwrap();
    assert_eq!(own.number(), foreign.number());
    assert_err_unchanged(&ch, Error::Stale, || ch.send(foreign));
    assert_err_unchanged(&ch, Error::Stale, || ch.close(foreign));
}

// ---------------------------------------------------------------------------
// A model-based run: random operations against a reference model
// ---------------------------------------------------------------------------

#[derive(Clone, Copy, Debug, Default)]
struct Model {
    vcpu: u32,
    explicit: bool,
    eoi: bool,
    pending: bool,
}

#[test]
fn random_operations_agree_with_a_reference_model() {
    const VCPUS: u32 = 3;
    let ch = new_ch(2, VCPUS as usize);
    let nr = ch.nr_ports();
    let mut live: Vec<Option<(Port, Model)>> = vec![None; nr as usize];
    let mut dead: Vec<Port> = Vec::new();
    let mut handles: Vec<_> = (0..VCPUS).map(|v| ch.vcpu(v).unwrap()).collect();
    let mut rng = Rng::new(0x9e37_79b9_7f4a_7c15);
    let mut rnd = move |n: u64| rng.below(n);
    let mut handled_total = 0;
    // Miri runs about a thousand times slower.
    let steps = if cfg!(miri) { 650 } else { 20_000 };
    for step in 0..steps {
        let n = 1 + rnd(u64::from(nr - 1)) as usize;
        let v = rnd(u64::from(VCPUS)) as u32;
        let op = rnd(12);
        match (&mut live[n], op) {
            (None, _) => {
                if rnd(2) == 0 {
                    // Bind the lowest free number; the model follows.
                    let mode = if rnd(4) == 0 {
                        Bind::XenCompat
                    } else {
                        Bind::Affinity(v)
                    };
                    let p = ch.bind(mode).unwrap();
                    let first_free = live
                        .iter()
                        .enumerate()
                        .skip(1)
                        .find(|(_, s)| s.is_none())
                        .unwrap()
                        .0;
                    assert_eq!(p.number() as usize, first_free, "step {step}");
                    live[first_free] = Some((
                        p,
                        Model {
                            vcpu: if mode == Bind::XenCompat { 0 } else { v },
                            pending: mode == Bind::XenCompat,
                            ..Model::default()
                        },
                    ));
                } else if let Some(&d) = dead.last() {
                    // The last life of a free number is NotBound; any other
                    // (older, or the number is bound again) is Stale.
                    let st = ch.status(d.number()).unwrap();
                    let want = if st.state == State::Free && st.generation == d.generation() {
                        Error::NotBound
                    } else {
                        Error::Stale
                    };
                    assert_err_unchanged(&ch, want, || ch.send(d));
                }
            }
            (Some((p, m)), 0..=3) => {
                ch.send(*p).unwrap();
                m.pending = true;
            }
            (Some((p, m)), 4) => {
                ch.mask(*p).unwrap();
                m.explicit = true;
            }
            (Some((p, m)), 5) => {
                ch.unmask(*p).unwrap();
                m.explicit = false;
            }
            (Some((p, m)), 6) => {
                ch.mask_until_eoi(*p).unwrap();
                m.eoi = true;
            }
            (Some((p, m)), 7) => {
                if m.eoi {
                    ch.eoi(*p).unwrap();
                    m.eoi = false;
                } else {
                    let p = *p;
                    assert_err_unchanged(&ch, Error::NotEoiPending, || ch.eoi(p));
                }
            }
            (Some((p, m)), 8) => {
                ch.set_affinity(*p, v).unwrap();
                m.vcpu = v;
            }
            (Some((p, _)), 9) => {
                ch.close(*p).unwrap();
                dead.push(*p);
                live[n] = None;
            }
            (Some(_), _) => {
                // Upcall on v: exactly the deliverable ports bound to v run.
                let mut want = BTreeSet::new();
                for (i, s) in live.iter_mut().enumerate() {
                    if let Some((_, m)) = s {
                        if m.vcpu == v && !m.explicit && !m.eoi && m.pending {
                            want.insert(i as u32);
                            m.pending = false;
                        }
                    }
                }
                let mut got = Vec::new();
                handles[v as usize].upcall(|p| got.push(p)).unwrap();
                let got_set: BTreeSet<u32> = got.iter().map(|p| p.number()).collect();
                assert_eq!(got.len(), got_set.len(), "a port ran twice, step {step}");
                assert_eq!(got_set, want, "step {step}, vCPU {v}");
                for p in &got {
                    assert_eq!(Some(*p), live[p.number() as usize].map(|s| s.0));
                }
                handled_total += got.len();
            }
        }
        // Status agrees with the model for every number.
        if step % 16 == 0 {
            for (i, s) in live.iter().enumerate().skip(1) {
                let st = ch.status(i as u32).unwrap();
                match s {
                    None => assert_eq!(st.state, State::Free),
                    Some((p, m)) => {
                        assert_eq!(st.state, State::Bound);
                        assert_eq!(st.generation, p.generation());
                        assert_eq!(st.vcpu, m.vcpu);
                        assert_eq!(st.masked_explicit, m.explicit);
                        assert_eq!(st.masked_eoi, m.eoi);
                        assert!(!st.masked_rebind && !st.in_flight);
                        assert_eq!(st.pending, m.pending, "port {i} step {step}");
                    }
                }
            }
        }
    }
    assert!(handled_total > 100, "the run must deliver events");
    // Finally, unmask everything and drain: nothing is lost (C1).
    for s in live.iter_mut().flatten() {
        ch.unmask(s.0).unwrap();
        if s.1.eoi {
            ch.eoi(s.0).unwrap();
        }
    }
    let mut drained = BTreeSet::new();
    for (v, h) in handles.iter_mut().enumerate() {
        h.upcall(|p| {
            assert!(drained.insert(p.number()));
            assert_eq!(live[p.number() as usize].unwrap().1.vcpu, v as u32);
        })
        .unwrap();
    }
    let want: BTreeSet<u32> = live
        .iter()
        .enumerate()
        .filter(|(_, s)| s.is_some_and(|(_, m)| m.pending))
        .map(|(i, _)| i as u32)
        .collect();
    assert_eq!(drained, want);
}

// ---------------------------------------------------------------------------
// Memory variants
// ---------------------------------------------------------------------------

#[test]
fn owned_memory_sizes_give_64_ports_per_word() {
    for (words, vcpus, want_ports, want_vcpus) in [
        (1usize, 1usize, 64u32, 1u32),
        (2, 2, 128, 2),
        (3, 5, 192, 5),
        (64, 40, 4096, 40),
        (0, 0, 64, 1),     // clamped up
        (100, 3, 4096, 3), // clamped down to 64 words
    ] {
        if cfg!(miri) && want_ports > 256 {
            // Binding 4095 ports takes minutes under Miri; the clamping
            // itself is checked natively.
            continue;
        }
        let ch = new_ch(words, vcpus);
        assert_eq!(ch.nr_ports(), want_ports, "words={words}");
        assert_eq!(ch.nr_vcpus(), want_vcpus, "vcpus={vcpus}");
        assert_eq!(ch.abi().nr_ports(), want_ports);
        assert_eq!(ch.abi().nr_vcpus(), want_vcpus);
        // Every port starts masked in the ABI (Channels::new).
        for p in 0..want_ports {
            assert!(ch.abi().is_masked(p).unwrap());
        }
        assert_err_unchanged(&ch, Error::PortOutOfRange, || ch.status(want_ports));
        // Fill every port; the last one works end to end on the last vCPU.
        let last_v = want_vcpus - 1;
        let mut last = None;
        for _ in 1..want_ports {
            last = Some(ch.bind(Bind::Affinity(last_v)).unwrap());
        }
        let last = last.unwrap();
        assert_eq!(last.number(), want_ports - 1);
        assert_err_unchanged(&ch, Error::NoFreePort, || ch.bind(Bind::Affinity(0)));
        ch.send(last).unwrap();
        assert_eq!(kicks(&ch), [last_v]);
        assert_eq!(upcall(&ch, last_v), [last]);
    }
}

#[test]
#[cfg_attr(
    miri,
    ignore = "65 537 vcpu_infos take minutes under Miri; no unsafe code on this path"
)]
fn vcpu_count_is_capped_to_what_the_port_word_can_name() {
    let ch = new_ch(1, 0x1_0001);
    assert_eq!(ch.abi().nr_vcpus(), 0x1_0001);
    assert_eq!(ch.nr_vcpus(), 0xffff);
    let p = ch.bind(Bind::Affinity(0xfffe)).unwrap();
    assert_eq!(ch.status(p.number()).unwrap().vcpu, 0xfffe);
    assert_err_unchanged(&ch, Error::VcpuOutOfRange, || {
        ch.bind(Bind::Affinity(0xffff))
    });
    assert_err_unchanged(&ch, Error::VcpuOutOfRange, || ch.set_affinity(p, 0x1_0000));
    ch.send(p).unwrap();
    assert_eq!(kicks(&ch), [0xfffe]);
    assert_eq!(upcall(&ch, 0xfffe), [p]);
}

#[test]
fn boxed_shared_info_has_4096_ports_and_32_vcpus_in_xen_layout() {
    let ch = Channels::new(TwoLevel::new(Box::new(SharedInfo::new())), Kicks::default());
    assert_eq!(ch.nr_ports(), NR_EVENT_CHANNELS_2L);
    assert_eq!(ch.nr_ports(), 4096);
    assert_eq!(ch.nr_vcpus(), LEGACY_MAX_VCPUS as u32);
    let si: &SharedInfo = ch.abi().memory();
    // Channels::new masks every port.
    assert!(si.evtchn_mask.iter().all(|w| w.load(SeqCst) == !0));

    let mut ports = Vec::new();
    for i in 0..130u32 {
        ports.push(ch.bind(Bind::Affinity(i % 32)).unwrap());
    }
    let p = ports[128];
    let (w, b) = (
        (p.number() / BITS_PER_WORD) as usize,
        p.number() % BITS_PER_WORD,
    );
    assert_eq!((w, b), (2, 1));
    let v = ch.status(p.number()).unwrap().vcpu as usize;
    assert_eq!(
        si.evtchn_mask[w].load(SeqCst) & (1 << b),
        0,
        "bound: unmasked"
    );
    assert!(si.evtchn_pending.iter().all(|w| w.load(SeqCst) == 0));

    ch.send(p).unwrap();
    assert_eq!(kicks(&ch), [v as u32]);
    for (i, word) in si.evtchn_pending.iter().enumerate() {
        let want = if i == w { 1u64 << b } else { 0 };
        assert_eq!(word.load(SeqCst), want, "evtchn_pending[{i}]");
    }
    for (u, vi) in si.vcpu_info.iter().enumerate() {
        let (sel, up) = if u == v { (1u64 << w, 1u8) } else { (0, 0) };
        assert_eq!(vi.evtchn_pending_sel.load(SeqCst), sel, "sel of vCPU {u}");
        assert_eq!(
            vi.evtchn_upcall_pending.load(SeqCst),
            up,
            "flag of vCPU {u}"
        );
    }
    assert_eq!(upcall(&ch, v as u32), [p]);
    assert!(si.evtchn_pending.iter().all(|w| w.load(SeqCst) == 0));
    assert!(si
        .vcpu_info
        .iter()
        .all(|vi| vi.evtchn_pending_sel.load(SeqCst) == 0
            && vi.evtchn_upcall_pending.load(SeqCst) == 0));

    if cfg!(miri) {
        // Binding the other 3965 ports takes minutes under Miri; the last
        // port and vCPU are checked natively and in `from_ptr_over_...`.
        return;
    }
    // The last port and the last vCPU.
    for _ in 131..4096 {
        ch.bind(Bind::Affinity(31)).unwrap();
    }
    let top = ch.port(4095).unwrap();
    ch.send(top).unwrap();
    assert_eq!(si.evtchn_pending[63].load(SeqCst), 1 << 63);
    assert_eq!(si.vcpu_info[31].evtchn_pending_sel.load(SeqCst), 1 << 63);
    assert_eq!(upcall(&ch, 31), [top]);
}

/// A caller-owned page (4096 bytes, 8-aligned, zeroed) viewed through
/// `SharedInfo::from_ptr`: the core's writes land at Xen's offsets.
#[test]
fn from_ptr_over_a_caller_owned_page_writes_the_xen_layout() {
    const PAGE_WORDS: usize = 512;
    let page: Box<[u64; PAGE_WORDS]> = Box::new([0; PAGE_WORDS]);
    let raw = Box::into_raw(page);
    // Views of the same bytes, accessed atomically only (as `from_ptr`
    // requires of every other party).
    // SAFETY: `raw` is a live, 8-aligned allocation of 4096 bytes (≥ 3136),
    // freed only at the end of this test, after every view is gone; every
    // access below is atomic.
    let words: &[AtomicU64; PAGE_WORDS] = unsafe { &*raw.cast::<[AtomicU64; PAGE_WORDS]>() };
    let bytes: &[AtomicU8; PAGE_WORDS * 8] = unsafe { &*raw.cast::<[AtomicU8; PAGE_WORDS * 8]>() };
    let si: &SharedInfo = unsafe { SharedInfo::from_ptr(raw.cast::<SharedInfo>()) };

    const PENDING: usize = 2048 / 8;
    const MASK: usize = 2560 / 8;
    let sel = |v: usize| words[v * 8 + 1].load(SeqCst); // vcpu_info[v] @ 64v, sel @ +8
    let flag = |v: usize| bytes[v * 64].load(SeqCst); // upcall_pending @ 64v + 0

    {
        let ch = Channels::new(TwoLevel::new(si), Kicks::default());
        assert_eq!(ch.nr_ports(), 4096);
        assert_eq!(ch.nr_vcpus(), 32);
        for w in 0..64 {
            assert_eq!(words[MASK + w].load(SeqCst), !0, "mask word {w}");
        }
        // Bind 70 ports so that port 65 (word 1, bit 1) exists; on vCPU 7.
        let ports: Vec<Port> = (0..70)
            .map(|_| ch.bind(Bind::Affinity(7)).unwrap())
            .collect();
        let p = ports[64];
        assert_eq!(p.number(), 65);
        assert_eq!(words[MASK + 1].load(SeqCst) & 0b10, 0);
        assert_eq!(words[MASK].load(SeqCst), 1, "port 0 stays masked");

        ch.send(p).unwrap();
        assert_eq!(kicks(&ch), [7]);
        for w in 0..64 {
            let want = if w == 1 { 1u64 << 1 } else { 0 };
            assert_eq!(words[PENDING + w].load(SeqCst), want, "pending word {w}");
        }
        for v in 0..32 {
            assert_eq!(sel(v), if v == 7 { 1 << 1 } else { 0 }, "sel {v}");
            assert_eq!(flag(v), u8::from(v == 7), "upcall flag {v}");
        }
        // The upcall consumes exactly those bits.
        assert_eq!(upcall(&ch, 7), [p]);
        assert_eq!(words[PENDING + 1].load(SeqCst), 0);
        assert_eq!((sel(7), flag(7)), (0, 0));

        // And the guest side: a raise written by "the hypervisor" directly
        // into the page (Xen's set_pending sequence) is delivered.
        let q = ports[2]; // port 3, word 0 bit 3
        words[PENDING].fetch_or(1 << 3, SeqCst);
        words[7 * 8 + 1].fetch_or(1, SeqCst);
        bytes[7 * 64].store(1, SeqCst);
        assert!(ch.upcall_pending(7).unwrap());
        assert_eq!(upcall(&ch, 7), [q]);
        assert_eq!(words[PENDING].load(SeqCst) & (1 << 3), 0);

        // Bytes beyond shared_info (3136..4096) are never touched.
        assert!(words[3136 / 8..].iter().all(|w| w.load(SeqCst) == 0));
    }
    // SAFETY: every view above is out of use; `raw` came from Box::into_raw.
    drop(unsafe { Box::from_raw(raw) });
}

// ---------------------------------------------------------------------------
// Hostile shared memory under the control plane (C7)
// ---------------------------------------------------------------------------

#[test]
fn hostile_memory_cannot_run_handlers_of_unbound_masked_or_foreign_ports() {
    let mem = OwnedMemory::new(2, 2);
    let ch = Channels::new(TwoLevel::new(&mem), Kicks::default());
    let on0 = ch.bind(Bind::Affinity(0)).unwrap();
    let on1 = ch.bind(Bind::Affinity(1)).unwrap();
    let masked = ch.bind(Bind::Affinity(0)).unwrap();
    ch.mask(masked).unwrap();
    let closed = ch.bind(Bind::Affinity(0)).unwrap();
    ch.close(closed).unwrap();

    // The "guest" scribbles ones over everything: pending, mask cleared,
    // every selector bit (including words that do not exist), flags.
    for w in mem.pending() {
        w.store(!0, SeqCst);
    }
    for w in mem.mask() {
        w.store(0, SeqCst);
    }
    for vi in (0..mem.nr_vcpus()).filter_map(|v| mem.vcpu_info(v)) {
        vi.evtchn_pending_sel.store(!0, SeqCst);
        vi.evtchn_upcall_pending.store(0xff, SeqCst);
        vi.evtchn_upcall_mask.store(0xff, SeqCst);
    }
    let seen0 = upcall(&ch, 0);
    assert_eq!(seen0, [on0], "only the bound, unmasked port of vCPU 0");
    let seen1 = upcall(&ch, 1);
    assert_eq!(seen1, [on1]);
    assert!(upcall(&ch, 0).is_empty());

    // Sends still work and stay correct afterwards.
    for vi in (0..mem.nr_vcpus()).filter_map(|v| mem.vcpu_info(v)) {
        vi.evtchn_pending_sel.store(0, SeqCst);
        vi.evtchn_upcall_pending.store(0, SeqCst);
    }
    for w in mem.pending() {
        w.store(0, SeqCst);
    }
    kicks(&ch);
    ch.send(on1).unwrap();
    assert_eq!(kicks(&ch), [1]);
    assert_eq!(upcall(&ch, 1), [on1]);
    // The closed number, rebound, starts clean despite the scribbling.
    let again = ch.bind(Bind::Affinity(1)).unwrap();
    assert_eq!(again.number(), closed.number());
    assert!(!ch.status(again.number()).unwrap().pending);
}

/// The Debug output of the memory adapters and of a vCPU handle names the
/// type and its figures.
#[test]
fn debug_output_names_the_type_and_its_figures() {
    let m = MaxVcpus::new(OwnedMemory::new(1, 4), 2);
    assert_eq!(format!("{m:?}"), "MaxVcpus { max_vcpus: 2, .. }");

    let info = VcpuInfo::new();
    let r = RegisteredVcpus::<_, 4>::new(OwnedMemory::new(1, 4), 3);
    assert_eq!(
        format!("{r:?}"),
        "RegisteredVcpus { nr_vcpus: 3, registered: 0, .. }"
    );
    r.register_vcpu_info(1, &info).unwrap();
    assert_eq!(
        format!("{r:?}"),
        "RegisteredVcpus { nr_vcpus: 3, registered: 1, .. }"
    );

    let ch = Channels::new(TwoLevel::new(OwnedMemory::new(1, 2)), ());
    let v = ch.vcpu(1).unwrap();
    assert_eq!(format!("{v:?}"), "Vcpu { id: 1, .. }");
}

/// Late EOI turned on shows in the status and holds the port after a run;
/// turned off again, it shows as off, leaves the binding as it was, and
/// the next events go through without an EOI.
#[test]
fn lateeoi_turned_off_lets_events_through_again() {
    let ch = Channels::new(TwoLevel::new(OwnedMemory::new(1, 2)), ());
    let p = ch.bind(Bind::Affinity(1)).unwrap();
    ch.set_priority(p, 3).unwrap();
    ch.set_lateeoi(p, true).unwrap();
    let on = ch.status(p.number()).unwrap();
    assert!(on.lateeoi, "status shows late EOI on: {on:?}");
    let mut v1 = ch.vcpu(1).unwrap();
    ch.send(p).unwrap();
    assert_eq!(v1.upcall(|_| {}).unwrap(), 1);
    ch.send(p).unwrap();
    assert_eq!(v1.upcall(|_| {}).unwrap(), 0, "held until the EOI");
    ch.eoi(p).unwrap();
    assert_eq!(v1.upcall(|_| {}).unwrap(), 1);
    ch.eoi(p).unwrap();

    ch.set_lateeoi(p, false).unwrap();
    let off = ch.status(p.number()).unwrap();
    assert!(!off.lateeoi, "status shows late EOI off: {off:?}");
    assert_eq!(
        (off.state, off.vcpu, off.priority, off.masked_eoi),
        (on.state, on.vcpu, on.priority, false),
        "turning late EOI off changes nothing else"
    );
    for _ in 0..2 {
        ch.send(p).unwrap();
        assert_eq!(v1.upcall(|_| {}).unwrap(), 1, "no EOI needed any more");
    }
}
