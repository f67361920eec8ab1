//! The hypervisor side's port kinds (`Host`): IPIs, VIRQs (per vCPU and
//! global), PIRQs and unbound ports, each with Xen's rules for binding,
//! sending, moving and closing, and its error for every refusal (which
//! changes nothing). The errors' Xen numbers are in each test's comments.
#![cfg(not(loom))]

use evtchn::xen::evtchnop::virq;
use evtchn::{Error, Host, HostStatus, OwnedMemory, PortKind, Ports, TwoLevel};

type H = Host<TwoLevel<OwnedMemory>>;

/// A host over 64 ports and 4 vCPUs.
fn host() -> H {
    Host::new(TwoLevel::new(OwnedMemory::new(1, 4)), ())
}

/// Every port's status and every vCPU's upcall flag: what an error must
/// leave as it was.
fn snapshot(h: &H) -> (Vec<HostStatus>, Vec<bool>) {
    (
        (1..h.nr_ports()).map(|p| h.status(p).unwrap()).collect(),
        (0..h.nr_vcpus())
            .map(|v| h.abi().upcall_pending(v).unwrap())
            .collect(),
    )
}

/// `f` fails with `want` and changes nothing.
fn refused<T: std::fmt::Debug>(h: &H, want: Error, f: impl FnOnce(&H) -> Result<T, Error>) {
    let before = snapshot(h);
    let got = f(h);
    assert_eq!(got.as_ref().err(), Some(&want), "{got:?}");
    assert_eq!(
        snapshot(h),
        before,
        "a refused call ({want:?}) changed something"
    );
}

#[test]
fn ipi_is_fixed_to_its_vcpu_and_raised_there() {
    let h = host();
    let p = h.bind_ipi(2).unwrap();
    let s = h.status(p).unwrap();
    assert_eq!((s.kind, s.vcpu, s.bound), (PortKind::Ipi, 2, true));
    h.send(p).unwrap();
    assert!(h.abi().upcall_pending(2).unwrap());
    // EINVAL: an IPI stays on its vCPU.
    refused(&h, Error::WrongKind, |h| h.bind_vcpu(p, 1));
    // ENOENT: no such vCPU.
    refused(&h, Error::VcpuOutOfRange, |h| h.bind_ipi(4));
    h.close(p).unwrap();
    assert_eq!(h.status(p).unwrap().kind, PortKind::Free);
}

#[test]
fn per_vcpu_virq_has_a_port_per_vcpu_fixed_to_it() {
    let h = host();
    let t0 = h.bind_virq(virq::TIMER, 0).unwrap();
    let t3 = h.bind_virq(virq::TIMER, 3).unwrap();
    assert_ne!(t0, t3);
    let s = h.status(t3).unwrap();
    assert_eq!((s.kind, s.vcpu), (PortKind::Virq(virq::TIMER), 3));
    // EEXIST: the timer of vCPU 3 has its port.
    refused(&h, Error::AlreadyBound, |h| h.bind_virq(virq::TIMER, 3));
    // EINVAL: a per-vCPU VIRQ does not move.
    refused(&h, Error::WrongKind, |h| h.bind_vcpu(t3, 0));
    // EINVAL: a VIRQ port is raised by the hypervisor, not sent on.
    refused(&h, Error::WrongKind, |h| h.send(t3));
    h.raise_virq(3, virq::TIMER).unwrap();
    assert!(h.abi().is_pending(t3).unwrap() && h.abi().upcall_pending(3).unwrap());
    assert!(!h.abi().is_pending(t0).unwrap(), "vCPU 0's timer untouched");
    // Closed, the VIRQ has no port: raising it does nothing, and it can be
    // bound again.
    h.close(t3).unwrap();
    let before = snapshot(&h);
    h.raise_virq(3, virq::TIMER).unwrap();
    assert_eq!(
        snapshot(&h),
        before,
        "a VIRQ without a port raised something"
    );
    assert_eq!(h.bind_virq(virq::TIMER, 3), Ok(t3));
}

#[test]
fn global_virq_binds_on_vcpu_0_and_moves() {
    let h = host();
    // EINVAL: a global VIRQ binds on vCPU 0 only.
    refused(&h, Error::WrongKind, |h| h.bind_virq(virq::CONSOLE, 1));
    let p = h.bind_virq(virq::CONSOLE, 0).unwrap();
    h.bind_vcpu(p, 2).unwrap();
    assert_eq!(h.status(p).unwrap().vcpu, 2);
    // The `vcpu` argument of a global VIRQ's raise is ignored: it goes to
    // the port's notify vCPU.
    h.raise_virq(1, virq::CONSOLE).unwrap();
    assert!(h.abi().upcall_pending(2).unwrap());
    assert!(!h.abi().upcall_pending(1).unwrap());
    refused(&h, Error::AlreadyBound, |h| h.bind_virq(virq::CONSOLE, 0));
}

#[test]
fn virq_and_vcpu_ranges_are_checked_first() {
    let h = host();
    // EINVAL: no such VIRQ.
    refused(&h, Error::VirqOutOfRange, |h| {
        h.bind_virq(virq::NR_VIRQS, 0)
    });
    refused(&h, Error::VirqOutOfRange, |h| {
        h.raise_virq(0, virq::NR_VIRQS)
    });
    // ENOENT: no such vCPU.
    refused(&h, Error::VcpuOutOfRange, |h| h.bind_virq(virq::TIMER, 4));
    refused(&h, Error::VcpuOutOfRange, |h| h.raise_virq(4, virq::TIMER));
}

#[test]
fn pirq_binds_once_on_vcpu_0_and_is_raised_by_number() {
    let h = host();
    let p = h.bind_pirq(33).unwrap();
    let s = h.status(p).unwrap();
    assert_eq!((s.kind, s.vcpu), (PortKind::Pirq(33), 0));
    // EEXIST: PIRQ 33 has its port.
    refused(&h, Error::AlreadyBound, |h| h.bind_pirq(33));
    refused(&h, Error::WrongKind, |h| h.send(p));
    h.bind_vcpu(p, 1).unwrap();
    h.raise_pirq(33).unwrap();
    assert!(h.abi().is_pending(p).unwrap() && h.abi().upcall_pending(1).unwrap());
    // A PIRQ with no port: nothing happens.
    let before = snapshot(&h);
    h.raise_pirq(34).unwrap();
    assert_eq!(snapshot(&h), before);
    h.close(p).unwrap();
    assert_eq!(h.bind_pirq(33), Ok(p));
}

#[test]
fn unbound_port_drops_sends_and_reports_its_remote() {
    let h = host();
    let p = h.alloc_unbound(5).unwrap();
    let s = h.status(p).unwrap();
    assert_eq!((s.kind, s.vcpu), (PortKind::Unbound { remote: 5 }, 0));
    // Xen drops a send on an unbound port silently.
    let before = snapshot(&h);
    assert_eq!(h.send(p), Ok(()));
    assert_eq!(snapshot(&h), before, "a send on an unbound port raised");
    h.bind_vcpu(p, 3).unwrap();
    assert_eq!(h.status(p).unwrap().vcpu, 3);
    h.close(p).unwrap();
    let s = h.status(p).unwrap();
    assert_eq!((s.kind, s.vcpu), (PortKind::Free, 0));
}

#[test]
fn kinds_share_one_port_space_and_free_numbers_are_reused_lowest_first() {
    let h = host();
    let a = h.bind(0).unwrap();
    let b = h.bind_ipi(1).unwrap();
    let c = h.bind_virq(virq::DEBUG, 2).unwrap();
    let d = h.alloc_unbound(0).unwrap();
    assert_eq!([a, b, c, d], [1, 2, 3, 4]);
    assert_eq!(h.status(a).unwrap().kind, PortKind::Local);
    h.close(b).unwrap();
    h.close(c).unwrap();
    assert_eq!(h.bind_pirq(7), Ok(b));
    assert_eq!(h.bind_virq(virq::DEBUG, 2), Ok(c));
}

#[test]
fn no_free_port_is_an_error_for_every_kind() {
    let h = host();
    while h.bind(0).is_ok() {}
    // ENOSPC.
    refused(&h, Error::NoFreePort, |h| h.bind_ipi(0));
    refused(&h, Error::NoFreePort, |h| h.bind_virq(virq::TIMER, 0));
    refused(&h, Error::NoFreePort, |h| h.bind_pirq(1));
    refused(&h, Error::NoFreePort, |h| h.alloc_unbound(0));
    // The failed VIRQ and PIRQ binds left no table entry behind.
    h.close(9).unwrap();
    assert_eq!(h.bind_virq(virq::TIMER, 0), Ok(9));
    h.close(9).unwrap();
    assert_eq!(h.bind_pirq(1), Ok(9));
}
