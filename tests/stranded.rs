//! A panicking handler strands nothing: an embedder that catches the panic
//! (`catch_unwind` around the upcall, as a std VMM does) finds the port
//! deliverable and closable, the replay another vCPU asked for re-raised,
//! and the ports the upcall had not reached yet still deliverable — on both
//! ABIs. Also: a raiser that has not learned of a move (the 2-level
//! foreign re-raise, single-threaded; the race is loom model
//! `s12_stale_raiser`).
// Native tests; under RUSTFLAGS="--cfg loom" only the models run.
#![cfg(not(loom))]

use std::panic::{catch_unwind, AssertUnwindSafe};

use evtchn::{
    Bind, Channels, Fifo, OwnedFifo, OwnedMemory, Port, PortOps, Raised, State, TwoLevel,
};
use evtchn_test_support::{kicks, numbers, upcall, Kicks};

/// Runs `body` on a 2-level and on a FIFO control plane with two vCPUs.
fn both(body: impl Fn(&str, &dyn Plane)) {
    body(
        "2-level",
        &Channels::new(TwoLevel::new(OwnedMemory::new(4, 2)), Kicks::default()),
    );
    body(
        "FIFO",
        &Channels::new(Fifo::new(OwnedFifo::new(256, 2)), Kicks::default()),
    );
}

/// The calls the tests make, over either ABI.
trait Plane {
    fn ch(&self) -> &dyn Ops;
}

/// Object-safe view of `Channels<A, Kicks>`.
trait Ops {
    fn bind(&self, v: u32) -> Port;
    fn send(&self, p: Port);
    fn set_affinity(&self, p: Port, v: u32);
    fn close(&self, p: Port);
    fn state(&self, p: Port) -> (State, bool, bool);
    fn upcall(&self, v: u32) -> Vec<u32>;
    /// One upcall on `v` whose handler runs `f` for each port; returns
    /// whether it panicked.
    fn upcall_catching(&self, v: u32, f: &mut dyn FnMut(Port)) -> bool;
    fn upcall_pending(&self, v: u32) -> bool;
    fn kicks(&self) -> Vec<u32>;
    /// The raw raise of a hypervisor that believes `p` is bound to `v`.
    fn raise_on(&self, p: Port, v: u32) -> Raised;
    fn take_offline(&self, v: u32);
}

impl<A: PortOps> Plane for Channels<A, Kicks> {
    fn ch(&self) -> &dyn Ops {
        self
    }
}

impl<A: PortOps> Ops for Channels<A, Kicks> {
    fn bind(&self, v: u32) -> Port {
        Channels::bind(self, Bind::Affinity(v)).unwrap()
    }
    fn send(&self, p: Port) {
        Channels::send(self, p).unwrap();
    }
    fn set_affinity(&self, p: Port, v: u32) {
        Channels::set_affinity(self, p, v).unwrap();
    }
    fn close(&self, p: Port) {
        Channels::close(self, p).unwrap();
    }
    fn state(&self, p: Port) -> (State, bool, bool) {
        let s = self.status(p.number()).unwrap();
        (s.state, s.in_flight, s.pending)
    }
    fn upcall(&self, v: u32) -> Vec<u32> {
        numbers(&upcall(self, v))
    }
    fn upcall_catching(&self, v: u32, f: &mut dyn FnMut(Port)) -> bool {
        let mut vcpu = self.vcpu(v).unwrap();
        catch_unwind(AssertUnwindSafe(|| vcpu.upcall(&mut *f))).is_err()
    }
    fn upcall_pending(&self, v: u32) -> bool {
        Channels::upcall_pending(self, v).unwrap()
    }
    fn kicks(&self) -> Vec<u32> {
        kicks(self)
    }
    fn raise_on(&self, p: Port, v: u32) -> Raised {
        self.abi().set_pending(p.number(), || v).unwrap()
    }
    fn take_offline(&self, v: u32) {
        self.set_online(v, false).unwrap();
    }
}

/// Silences the default panic message of the deliberate panics.
fn quiet<T>(f: impl FnOnce() -> T) -> T {
    let hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    let r = f();
    std::panic::set_hook(hook);
    r
}

#[test]
fn panicking_handler_leaves_port_deliverable_and_closable() {
    both(|abi, plane| {
        let ch = plane.ch();
        let p = ch.bind(0);
        ch.send(p);
        let panicked = quiet(|| ch.upcall_catching(0, &mut |_| panic!("handler fails")));
        assert!(panicked, "{abi}: the handler's panic reaches the embedder");
        assert_eq!(
            ch.state(p),
            (State::Bound, false, false),
            "{abi}: guard released, event consumed by the run that panicked"
        );
        ch.send(p);
        assert_eq!(ch.upcall(0), [p.number()], "{abi}: delivered again");
        ch.close(p);
        assert_eq!(
            ch.state(p).0,
            State::Free,
            "{abi}: close frees the port at once (no handler in flight)"
        );
    });
}

#[test]
fn panicking_handler_strands_no_other_port() {
    both(|abi, plane| {
        let ch = plane.ch();
        let ports: Vec<Port> = (0..6).map(|_| ch.bind(0)).collect();
        for &p in &ports {
            ch.send(p);
        }
        let victim = ports[2].number();
        let mut before = Vec::new();
        let panicked = quiet(|| {
            ch.upcall_catching(0, &mut |p| {
                if p.number() == victim {
                    panic!("handler fails");
                }
                before.push(p.number());
            })
        });
        assert!(panicked, "{abi}");
        assert!(
            ch.upcall_pending(0),
            "{abi}: the ports the upcall did not reach are flagged again"
        );
        let mut all = before.clone();
        all.extend(ch.upcall(0));
        all.sort_unstable();
        let mut want: Vec<u32> = numbers(&ports);
        want.retain(|&n| n != victim);
        assert_eq!(all, want, "{abi}: every other port runs exactly once");
        assert!(!ch.upcall_pending(0), "{abi}");
    });
}

#[test]
fn panicking_handler_replays_what_another_vcpu_left() {
    both(|abi, plane| {
        let ch = plane.ch();
        let p = ch.bind(0);
        ch.send(p);
        ch.kicks();
        let panicked = quiet(|| {
            ch.upcall_catching(0, &mut |p| {
                // While this handler runs: the port moves to vCPU 1 and is
                // sent again; vCPU 1 finds it in flight and leaves a replay.
                ch.set_affinity(p, 1);
                ch.send(p);
                assert!(ch.upcall(1).is_empty(), "in flight on vCPU 0");
                panic!("handler fails");
            })
        });
        assert!(panicked, "{abi}");
        assert!(
            ch.upcall_pending(1),
            "{abi}: the guard's release re-raised the replay on vCPU 1"
        );
        assert_eq!(ch.upcall(1), [p.number()], "{abi}: the second send runs");
        assert_eq!(ch.state(p), (State::Bound, false, false), "{abi}");
    });
}

#[test]
fn panicking_handler_of_a_closed_port_frees_it() {
    both(|abi, plane| {
        let ch = plane.ch();
        let p = ch.bind(0);
        ch.send(p);
        let panicked = quiet(|| {
            ch.upcall_catching(0, &mut |p| {
                ch.close(p);
                assert_eq!(ch.state(p).0, State::Closing, "handler in flight");
                panic!("handler fails");
            })
        });
        assert!(panicked, "{abi}");
        assert_eq!(ch.state(p).0, State::Free, "{abi}: closing → free");
        let q = ch.bind(0);
        assert_eq!(q.number(), p.number(), "{abi}: the number is reused");
    });
}

#[test]
fn stale_raise_on_old_vcpu_is_raised_on_the_new_one() {
    both(|abi, plane| {
        let ch = plane.ch();
        let p = ch.bind(0);
        ch.set_affinity(p, 1);
        ch.kicks();
        // A hypervisor that has not learned of the move raises on vCPU 0.
        assert_eq!(
            ch.raise_on(p, 0),
            Raised::Notified {
                vcpu: 0,
                kick: true
            },
            "{abi}"
        );
        assert!(!ch.upcall_pending(1), "{abi}: vCPU 1 not told yet");
        assert!(ch.upcall(0).is_empty(), "{abi}: not run on vCPU 0");
        assert_eq!(ch.kicks(), [1], "{abi}: vCPU 0's scan kicks vCPU 1");
        assert_eq!(ch.upcall(1), [p.number()], "{abi}: run on vCPU 1");
        assert_eq!(ch.state(p), (State::Bound, false, false), "{abi}");
    });
}

#[test]
fn vcpu_going_offline_strands_nothing() {
    both(|abi, plane| {
        let ch = plane.ch();
        let p = ch.bind(0);
        ch.send(p);
        ch.take_offline(0);
        assert_eq!(ch.state(p), (State::Bound, false, true), "{abi}");
        // vCPU 0 never runs again: the event must reach vCPU 1 by itself.
        assert!(ch.upcall_pending(1), "{abi}: vCPU 1 told");
        assert_eq!(ch.upcall(1), [p.number()], "{abi}: run on vCPU 1");
    });
}
