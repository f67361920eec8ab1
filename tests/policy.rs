//! Delivery policy, vCPU online/offline, late EOI and the rebalancer,
//! single-threaded and deterministic.
// Native tests; under RUSTFLAGS="--cfg loom" only the models run.
#![cfg(not(loom))]

use evtchn::{plan_rebalance, Bind, Channels, Error, OwnedMemory, Policy, TwoLevel};

type Ch = Channels<TwoLevel<OwnedMemory>>;

fn ch(vcpus: usize) -> Ch {
    Channels::new(TwoLevel::new(OwnedMemory::new(2, vcpus)), ())
}

fn vcpus_of(c: &Ch, n: usize) -> Vec<u32> {
    (0..n)
        .map(|_| {
            let p = c.bind(Bind::Auto).unwrap();
            c.status(p.number()).unwrap().vcpu
        })
        .collect()
}

#[test]
fn vcpu0_policy_places_everything_on_vcpu0() {
    let c = ch(4);
    assert_eq!(c.policy(), Policy::Vcpu0);
    assert_eq!(vcpus_of(&c, 5), [0, 0, 0, 0, 0]);
    assert_eq!(c.bound_ports(0), Ok(5));
}

#[test]
fn round_robin_skips_offline_vcpus() {
    let c = ch(4);
    c.set_policy(Policy::RoundRobin);
    assert_eq!(vcpus_of(&c, 5), [0, 1, 2, 3, 0]);
    // Taking vCPU 2 offline moves its port to the next in turn (1).
    assert_eq!(c.set_online(2, false), Ok(1));
    assert_eq!(vcpus_of(&c, 4), [3, 0, 1, 3]);
}

#[test]
fn least_loaded_counts_bound_ports() {
    let c = ch(3);
    let a = c.bind(Bind::Affinity(0)).unwrap();
    c.bind(Bind::Affinity(0)).unwrap();
    c.bind(Bind::Affinity(1)).unwrap();
    c.set_policy(Policy::LeastLoaded);
    assert_eq!(vcpus_of(&c, 3), [2, 1, 2]);
    c.close(a).unwrap();
    assert_eq!(c.bound_ports(0), Ok(1));
    assert_eq!(vcpus_of(&c, 1), [0]);
}

#[test]
fn offline_moves_ports_and_loses_no_pending_event() {
    let c = ch(3);
    c.set_policy(Policy::RoundRobin);
    let p = c.bind(Bind::Affinity(1)).unwrap();
    c.send(p).unwrap();
    assert_eq!(c.set_online(1, false), Ok(1));
    let to = c.status(p.number()).unwrap().vcpu;
    assert_ne!(to, 1);
    assert_eq!(c.bind(Bind::Affinity(1)), Err(Error::VcpuOffline));
    assert_eq!(c.set_affinity(p, 1), Err(Error::VcpuOffline));
    let mut seen = Vec::new();
    c.vcpu(to).unwrap().upcall(|q| seen.push(q)).unwrap();
    assert_eq!(
        seen,
        [p],
        "the event pending at offline time runs on the new vCPU"
    );
}

#[test]
fn the_last_online_vcpu_stays_online() {
    let c = ch(2);
    c.set_online(0, false).unwrap();
    assert_eq!(c.set_online(1, false), Err(Error::LastOnlineVcpu));
    assert_eq!(c.is_online(1), Ok(true));
    assert_eq!(c.bind(Bind::XenCompat), Err(Error::VcpuOffline));
    c.set_online(0, true).unwrap();
    assert!(c.bind(Bind::XenCompat).is_ok());
}

#[test]
fn lateeoi_keeps_the_port_masked_until_eoi() {
    let c = ch(1);
    let p = c.bind(Bind::Affinity(0)).unwrap();
    c.set_lateeoi(p, true).unwrap();
    let mut cpu = c.vcpu(0).unwrap();
    c.send(p).unwrap();
    assert_eq!(cpu.upcall(|_| {}).unwrap(), 1);
    assert!(c.status(p.number()).unwrap().masked_eoi);
    c.send(p).unwrap();
    assert_eq!(
        cpu.upcall(|_| {}).unwrap(),
        0,
        "held while the EOI is outstanding"
    );
    assert_eq!(c.lateeoi(p, false), Ok(None));
    assert_eq!(cpu.upcall(|_| {}).unwrap(), 1, "released by the EOI");
    assert_eq!(c.lateeoi(p, false), Ok(None));
    assert_eq!(c.lateeoi(p, false), Err(Error::NotEoiPending));
}

#[test]
fn spurious_late_eois_back_off_exponentially() {
    let c = ch(1);
    let p = c.bind(Bind::Affinity(0)).unwrap();
    c.set_lateeoi(p, true).unwrap();
    let mut cpu = c.vcpu(0).unwrap();
    let mut delays = Vec::new();
    for _ in 0..5 {
        c.send(p).unwrap();
        assert_eq!(cpu.upcall(|_| {}).unwrap(), 1);
        let d = c.lateeoi(p, true).unwrap();
        delays.push(d);
        if d.is_some() {
            // The owner waits, then ends the EOI.
            c.eoi(p).unwrap();
        }
    }
    assert_eq!(delays, [None, Some(1), Some(2), Some(4), Some(8)]);
    c.send(p).unwrap();
    assert_eq!(cpu.upcall(|_| {}).unwrap(), 1);
    assert_eq!(
        c.lateeoi(p, false),
        Ok(None),
        "real work resets the back-off"
    );
}

#[test]
fn plan_moves_the_hottest_port_that_narrows_the_gap() {
    let loads = [Some(100), Some(0), Some(10)];
    let ports = [(1, 0, 60), (2, 0, 30), (3, 0, 10), (4, 2, 10)];
    // 100/0/10 → 40/60/10; then vCPU 1 is busiest and its only port (60)
    // is wider than the gap (50): the greedy plan stops.
    assert_eq!(plan_rebalance(&loads, &ports, 8), [(1, 0, 1)]);
    assert_eq!(plan_rebalance(&loads, &ports, 0), []);
    let ports = [(1, 0, 40), (2, 0, 30), (3, 0, 30)];
    assert_eq!(plan_rebalance(&loads, &ports, 8), [(1, 0, 1), (2, 0, 2)]);
    // A port as hot as the gap would only swap the roles: not moved.
    assert_eq!(plan_rebalance(&[Some(50), Some(0)], &[(1, 0, 50)], 8), []);
    // Loads within an eighth of the mean (105) are left alone, though the
    // port (4 < gap 10) would narrow the gap: noise is not moved.
    assert_eq!(
        plan_rebalance(&[Some(110), Some(100)], &[(1, 0, 4)], 8),
        Vec::<(u32, u32, u32)>::new()
    );
    assert_eq!(
        plan_rebalance(&[Some(130), Some(100)], &[(1, 0, 4)], 8),
        [(1, 0, 1)]
    );
    // Offline vCPUs take nothing.
    assert_eq!(
        plan_rebalance(&[Some(100), None], &[(1, 0, 10)], 8),
        Vec::<(u32, u32, u32)>::new()
    );
    // A port with no load narrows nothing: moving it only churns.
    assert_eq!(
        plan_rebalance(&[Some(100), Some(0)], &[(1, 0, 0), (2, 0, 0)], 8),
        Vec::<(u32, u32, u32)>::new()
    );
}

#[test]
fn rebalance_moves_a_hot_port_off_a_busy_vcpu() {
    let c = ch(2);
    let hot = c.bind(Bind::Affinity(0)).unwrap();
    let cold = c.bind(Bind::Affinity(0)).unwrap();
    let mut cpu0 = c.vcpu(0).unwrap();
    for _ in 0..10 {
        c.send(hot).unwrap();
        cpu0.upcall(|_| {}).unwrap();
    }
    c.send(cold).unwrap();
    cpu0.upcall(|_| {}).unwrap();
    let moves = c.rebalance(4).unwrap();
    assert_eq!(moves.len(), 1);
    // Loads 11/0: moving the hot port (10) lowers the maximum to 10.
    assert_eq!((moves[0].port, moves[0].from, moves[0].to), (hot, 0, 1));
    assert_eq!(c.status(hot.number()).unwrap().vcpu, 1);
    assert_eq!(c.status(cold.number()).unwrap().vcpu, 0);
    // Counts restart: nothing more to move.
    assert!(c.rebalance(4).unwrap().is_empty());
}
