//! `Domains::dispatch` under a client it did not write: `c/ops.c`, a C
//! guest whose `HYPERVISOR_event_channel_op(cmd, arg)` calls use the
//! argument structures of Xen's `<xen/event_channel.h>` as the C compiler
//! lays them out, and whose expectations are Xen's behaviour (return
//! values as `<xen/errno.h>`'s `XEN_E*`, the ports a bind hands out, the
//! fields of `EVTCHNOP_status`, `OUT` fields untouched on errors).
//!
//! Two domains (backend 0, privileged; frontend 1, with 8 PIRQs; 2 vCPUs
//! and 64 ports each), over 2-level memory and over FIFO memory. The
//! script's calls cross a raw gate (`xen_client::run_ops_script`) that
//! copies the command's bytes in, calls `dispatch` and copies them back on
//! 0. Afterwards the domains must hold what the script left, read here
//! through `Domains::status`. Two negative controls run the script through
//! a wrong gate and must see it fail; a third reads the final state of
//! domains the script never ran on.

#![cfg(not(loom))]

use evtchn::xen::evtchnop::{errno, virq};
use evtchn::{
    Domain, Domains, Fifo, Host, Notify, OwnedFifo, OwnedMemory, PortKind, Raise, TwoLevel,
};
use xen_client::{c_xen_errnos, run_ops_script, GateVariant, OpsConfig, OpsOutcome};

const BACK: u16 = 0;
const FRONT: u16 = 1;
const ABSENT: u16 = 7;
const VCPUS: usize = 2;
const PORTS: u32 = 64;
const FRONT_PIRQS: u32 = 8;

/// The fewest values one run of the script compares; it compares about
/// 900, so a script cut short (or a phase skipped) shows.
const FLOOR: u64 = 800;

/// The divergences from Xen the script knows of (`known(...)` in
/// `c/ops.c`): (FIFO) set_priority after a reset, which Xen answers from
/// 2-level again (the switch of the memory is the embedder's).
const KNOWN_2L: u64 = 0;
const KNOWN_FIFO: u64 = 1;

fn two_level() -> Domains<TwoLevel<OwnedMemory>> {
    let words = (PORTS as usize).div_ceil(64);
    let host = || Host::new(TwoLevel::new(OwnedMemory::new(words, VCPUS)), ());
    let mut d = Domains::new();
    d.add(BACK, Domain::new(host()).privileged(true))
        .expect("add the backend");
    d.add(FRONT, Domain::new(host()).nr_pirqs(FRONT_PIRQS))
        .expect("add the frontend");
    // The script's backend resets the frontend, which its controller has
    // paused (Xen refuses to reset a running domain).
    d.set_paused(FRONT, true).expect("pause the frontend");
    d
}

fn fifo() -> Domains<Fifo<OwnedFifo>> {
    let host = || Host::new(Fifo::new(OwnedFifo::new(PORTS, VCPUS)), ());
    let mut d = Domains::new();
    d.add(BACK, Domain::new(host()).privileged(true))
        .expect("add the backend");
    d.add(FRONT, Domain::new(host()).nr_pirqs(FRONT_PIRQS))
        .expect("add the frontend");
    // The script's backend resets the frontend, which its controller has
    // paused (Xen refuses to reset a running domain).
    d.set_paused(FRONT, true).expect("pause the frontend");
    d
}

fn config<R: Raise, N: Notify>(doms: &Domains<R, N>, fifo: bool) -> OpsConfig {
    let nr_ports = doms.host(FRONT).expect("frontend").nr_ports();
    assert_eq!(nr_ports, PORTS);
    assert_eq!(doms.host(BACK).expect("backend").nr_ports(), PORTS);
    OpsConfig {
        front: FRONT,
        back: BACK,
        absent: ABSENT,
        nr_ports,
        nr_vcpus: doms.host(FRONT).expect("frontend").nr_vcpus(),
        front_pirqs: FRONT_PIRQS,
        fifo,
    }
}

fn run<R: Raise, N: Notify>(
    abi: &str,
    doms: &Domains<R, N>,
    fifo: bool,
    gate: GateVariant,
) -> OpsOutcome {
    let out = run_ops_script(doms, &config(doms, fifo), gate);
    for line in &out.lines {
        println!("dispatch[c] {abi}: {line}");
    }
    println!(
        "dispatch[c] {abi}: compared {} values in {} hypercalls, {} failure(s), {} known divergence(s) from Xen",
        out.compared, out.hypercalls, out.failures, out.diverged
    );
    out
}

fn assert_clean(abi: &str, out: &OpsOutcome, known: u64) {
    let first = out
        .lines
        .iter()
        .find(|l| !l.contains("known divergence"))
        .map_or("", String::as_str);
    assert_eq!(
        out.failures, 0,
        "dispatch[c] {abi}: {} failure(s) comparing the C script's values with Xen's; first: {first}",
        out.failures
    );
    assert_eq!(
        out.diverged, known,
        "dispatch[c] {abi}: known divergences from Xen changed (c/ops.c's known(...) list and the notes must follow)"
    );
    assert!(
        out.compared > FLOOR,
        "dispatch[c] {abi}: only {} values compared (floor {FLOOR})",
        out.compared
    );
}

/// What `c/ops.c`'s `final_state` leaves, read through `Domains::status`.
fn assert_final_state<R: Raise, N: Notify>(abi: &str, doms: &Domains<R, N>, fifo: bool) {
    let st = |dom: u16, port: u32| {
        doms.status(dom, port)
            .unwrap_or_else(|e| panic!("{abi}: status of domain {dom} port {port}: {e}"))
    };

    let ipi = st(FRONT, 1);
    assert_eq!(
        (ipi.kind, ipi.vcpu, ipi.pending),
        (PortKind::Ipi, 1, true),
        "{abi}: frontend 1 {ipi:?}"
    );
    let fi = st(FRONT, 2);
    assert_eq!(
        (fi.kind, fi.vcpu, fi.pending),
        (
            PortKind::Interdomain {
                remote: BACK,
                port: 1
            },
            0,
            true
        ),
        "{abi}: frontend 2 {fi:?}"
    );
    let pq = st(FRONT, 3);
    assert_eq!(
        (pq.kind, pq.vcpu, pq.pending),
        (PortKind::Pirq(2), 1, false),
        "{abi}: frontend 3 {pq:?}"
    );
    let con = st(FRONT, 4);
    assert_eq!(
        (con.kind, con.vcpu, con.pending),
        (PortKind::Virq(virq::CONSOLE), 0, false),
        "{abi}: frontend 4 {con:?}"
    );
    let bo = st(BACK, 1);
    assert_eq!(
        (bo.kind, bo.vcpu, bo.pending),
        (
            PortKind::Interdomain {
                remote: FRONT,
                port: 2
            },
            0,
            true
        ),
        "{abi}: backend 1 {bo:?}"
    );
    if fifo {
        assert_eq!(bo.priority, 3, "{abi}: backend 1 priority");
        assert_eq!(fi.priority, 7, "{abi}: frontend 2 priority (the default)");
    }
    for port in 5..PORTS {
        assert!(!st(FRONT, port).bound, "{abi}: frontend {port} still bound");
    }
    for port in 2..PORTS {
        assert!(!st(BACK, port).bound, "{abi}: backend {port} still bound");
    }
}

#[test]
fn c_script_over_dispatch() {
    let d2 = two_level();
    let o2 = run("2-level", &d2, false, GateVariant::Xen);
    let df = fifo();
    let of = run("FIFO", &df, true, GateVariant::Xen);
    println!(
        "dispatch[c]: compared {} values, {} failure(s)",
        o2.compared + of.compared,
        o2.failures + of.failures
    );
    assert_clean("2-level", &o2, KNOWN_2L);
    assert_clean("FIFO", &of, KNOWN_FIFO);
    assert_final_state("2-level", &d2, false);
    assert_final_state("FIFO", &df, true);
}

#[test]
fn c_script_expects_evtchns_errno_numbers() {
    let ours = [
        errno::EPERM,
        errno::ENOENT,
        errno::ESRCH,
        errno::EFAULT,
        errno::EEXIST,
        errno::EINVAL,
        errno::ENOSPC,
        errno::ENOSYS,
    ];
    assert_eq!(
        c_xen_errnos(),
        ours,
        "<xen/errno.h> (C) vs evtchn::xen::evtchnop::errno"
    );
}

/// A gate that answers every bind with its port plus one: the script's
/// first bind sees it.
#[test]
#[should_panic(expected = "first: dom1 bind_ipi(vcpu 0): port expected 1, got 2")]
fn negative_control_bind_answers_port_plus_one() {
    let d = two_level();
    let out = run(
        "2-level, ports + 1",
        &d,
        false,
        GateVariant::BindPortPlusOne,
    );
    assert_clean("2-level, ports + 1", &out, KNOWN_2L);
}

/// A gate that never copies the structure back: the first status sees the
/// guest's own bytes.
#[test]
#[should_panic(
    expected = "first: dom1 status(dom self, port 0): status expected 0, got 2779096485"
)]
fn negative_control_no_copy_out() {
    let d = two_level();
    let out = run("2-level, no copy-out", &d, false, GateVariant::NoCopyOut);
    assert_clean("2-level, no copy-out", &out, KNOWN_2L);
}

/// The state check reads what it claims: on domains the script never ran
/// on, frontend port 1 is free.
#[test]
#[should_panic(expected = "untouched 2-level: frontend 1")]
fn negative_control_final_state_of_untouched_domains() {
    assert_final_state("untouched 2-level", &two_level(), false);
}
