//! The per-upcall budget (`Vcpu::upcall_budget`, `Vcpu::upcall_until`): an
//! upcall does bounded work and defers the rest, on both ABIs, and nothing
//! deferred is lost, run twice, or starved. Single-threaded; the races with
//! senders are in the loom model `s11_budget`.
// Native tests; under RUSTFLAGS="--cfg loom" only the models run.
#![cfg(not(loom))]

use evtchn::{Bind, Channels, Fifo, OwnedFifo, OwnedMemory, Port, PortOps, TwoLevel};

/// Runs `body` on a 2-level and on a FIFO control plane with two vCPUs and
/// at least 128 usable ports.
fn both(body: impl Fn(&str, &dyn Plane)) {
    body(
        "2-level",
        &Channels::new(TwoLevel::new(OwnedMemory::new(4, 2)), ()),
    );
    body(
        "FIFO",
        &Channels::new(Fifo::new(OwnedFifo::new(256, 2)), ()),
    );
}

/// The calls the tests make, over either ABI.
trait Plane {
    fn bind0(&self) -> Port;
    fn send(&self, p: Port);
    fn pending(&self, p: Port) -> bool;
    /// One budgeted upcall on vCPU 0 through a handle of its own (dropped
    /// at the end); `handler` may send.
    fn upcall(&self, budget: usize, handler: &mut dyn FnMut(Port)) -> usize;
    fn upcall_pending(&self) -> bool;
    fn until(&self, stop: &mut dyn FnMut(usize) -> bool, handler: &mut dyn FnMut(Port)) -> usize;
}

impl<A: PortOps> Plane for Channels<A> {
    fn bind0(&self) -> Port {
        self.bind(Bind::Affinity(0)).unwrap()
    }
    fn send(&self, p: Port) {
        Channels::send(self, p).unwrap();
    }
    fn pending(&self, p: Port) -> bool {
        self.status(p.number()).unwrap().pending
    }
    fn upcall(&self, budget: usize, handler: &mut dyn FnMut(Port)) -> usize {
        self.vcpu(0)
            .unwrap()
            .upcall_budget(budget, handler)
            .unwrap()
    }
    fn upcall_pending(&self) -> bool {
        Channels::upcall_pending(self, 0).unwrap()
    }
    fn until(&self, stop: &mut dyn FnMut(usize) -> bool, handler: &mut dyn FnMut(Port)) -> usize {
        self.vcpu(0).unwrap().upcall_until(stop, handler).unwrap()
    }
}

#[test]
fn each_upcall_makes_at_most_its_budget_of_runs_and_the_rest_follows() {
    both(|abi, c| {
        let ports: Vec<Port> = (0..100).map(|_| c.bind0()).collect();
        for &p in &ports {
            c.send(p);
        }
        let mut seen = Vec::new();
        let mut upcalls = 0;
        while c.upcall_pending() {
            let n = c.upcall(7, &mut |p| seen.push(p.number()));
            assert!(n <= 7, "{abi}: an upcall of budget 7 made {n} runs");
            upcalls += 1;
            assert!(upcalls < 100, "{abi}: the deferred rest never drains");
        }
        seen.sort_unstable();
        let want: Vec<u32> = ports.iter().map(|p| p.number()).collect();
        assert_eq!(seen, want, "{abi}: every port exactly once");
        assert_eq!(upcalls, 15, "{abi}: 100 runs at 7 per upcall");
        assert!(ports.iter().all(|&p| !c.pending(p)));
    });
}

#[test]
fn a_self_storm_cannot_hold_an_upcall() {
    // The handler re-sends its own port: an unbounded upcall never returns
    // (its flag is raised again by every run). A budgeted one returns after
    // its budget, with the storm still pending for the next upcall.
    both(|abi, c| {
        let p = c.bind0();
        c.send(p);
        for _ in 0..5 {
            let n = c.upcall(32, &mut |q| c.send(q));
            assert_eq!(n, 32, "{abi}");
            assert!(c.upcall_pending(), "{abi}: the storm goes on");
            assert!(c.pending(p), "{abi}");
        }
    });
}

/// Port 1 re-sends itself on every run; ports 2..=9 were sent once. With
/// a budget of 1 per upcall through one kept handle, every quiet port still
/// runs within a bounded number of upcalls: the 2-level cursor resumes after
/// the last port offered, and FIFO appends the re-sent port at its queue's
/// tail. (The round-robin position lives in the handle: a fresh handle per
/// upcall starts from port 0 on the 2-level ABI, as a vCPU that forgot its
/// position would.)
fn no_starvation<A: PortOps>(abi: &str, c: &Channels<A>) {
    let ports: Vec<Port> = (0..9).map(|_| c.bind(Bind::Affinity(0)).unwrap()).collect();
    let storm = ports[0];
    for &p in &ports {
        c.send(p).unwrap();
    }
    let mut v = c.vcpu(0).unwrap();
    let mut quiet = Vec::new();
    let mut upcalls = 0;
    while quiet.len() < 8 {
        v.upcall_budget(1, |q| {
            if q == storm {
                c.send(q).unwrap();
            } else {
                quiet.push(q);
            }
        })
        .unwrap();
        upcalls += 1;
        assert!(upcalls <= 18, "{abi}: quiet ports starved by a storm");
    }
    assert_eq!(quiet, ports[1..], "{abi}");
    assert!(c.status(storm.number()).unwrap().pending, "{abi}");
}

#[test]
fn a_storming_port_does_not_starve_the_others() {
    no_starvation(
        "2-level",
        &Channels::new(TwoLevel::new(OwnedMemory::new(4, 2)), ()),
    );
    no_starvation(
        "FIFO",
        &Channels::new(Fifo::new(OwnedFifo::new(256, 2)), ()),
    );
}

#[test]
fn upcall_until_asks_before_each_port() {
    both(|abi, c| {
        let ports: Vec<Port> = (0..5).map(|_| c.bind0()).collect();
        for &p in &ports {
            c.send(p);
        }
        let mut asked = Vec::new();
        let n = c.until(
            &mut |ran| {
                asked.push(ran);
                ran == 3
            },
            &mut |_| {},
        );
        assert_eq!(n, 3, "{abi}");
        assert_eq!(asked, [0, 1, 2, 3], "{abi}: asked before each port taken");
        assert!(c.upcall_pending(), "{abi}");
        assert_eq!(c.until(&mut |_| false, &mut |_| {}), 2, "{abi}");
        assert!(!c.upcall_pending(), "{abi}");
        // A zero budget defers everything and loses nothing.
        c.send(ports[4]);
        assert_eq!(c.upcall(0, &mut |_| {}), 0, "{abi}");
        assert!(c.upcall_pending() && c.pending(ports[4]), "{abi}");
        assert_eq!(c.upcall(1, &mut |_| {}), 1, "{abi}");
    });
}

#[test]
fn kept_handles_resume_round_robin_on_the_2_level_abi() {
    let c = Channels::new(TwoLevel::new(OwnedMemory::new(4, 1)), ());
    // Ports in two words, so the pass crosses a selector word.
    let ports: Vec<Port> = (0..70)
        .map(|_| c.bind(Bind::Affinity(0)).unwrap())
        .collect();
    let pick = [3usize, 10, 62, 63, 64, 69];
    for &i in &pick {
        c.send(ports[i]).unwrap();
    }
    let mut v = c.vcpu(0).unwrap();
    let mut order = Vec::new();
    while v.upcall_pending() {
        assert!(v.upcall_budget(2, |p| order.push(p.number())).unwrap() <= 2);
    }
    let want: Vec<u32> = pick.iter().map(|&i| ports[i].number()).collect();
    assert_eq!(order, want, "in port order across deferrals");
    // Resumes after port `want[5]`: a port below it comes after one above.
    c.send(ports[1]).unwrap();
    c.send(ports[69]).unwrap();
    let mut order = Vec::new();
    v.upcall_budget(1, |p| order.push(p.number())).unwrap();
    v.upcall_budget(1, |p| order.push(p.number())).unwrap();
    assert_eq!(order, [ports[1].number(), ports[69].number()]);
}

#[test]
fn kept_handles_keep_strict_priority_on_fifo() {
    let c = Channels::new(Fifo::new(OwnedFifo::new(64, 1)), ());
    let low: Vec<Port> = (0..3).map(|_| c.bind(Bind::Affinity(0)).unwrap()).collect();
    let high = c.bind(Bind::Affinity(0)).unwrap();
    c.set_priority(high, 2).unwrap();
    for &p in &low {
        c.send(p).unwrap();
    }
    let mut v = c.vcpu(0).unwrap();
    let mut order = Vec::new();
    assert_eq!(v.upcall_budget(1, |p| order.push(p)).unwrap(), 1);
    // A higher priority raised between two budgeted upcalls goes first.
    c.send(high).unwrap();
    while v.upcall_pending() {
        v.upcall_budget(1, |p| order.push(p)).unwrap();
    }
    assert_eq!(order, [low[0], high, low[1], low[2]]);
}
