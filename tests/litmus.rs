//! Litmus tests of the raw ABIs: the store-buffer (Dekker) pattern of send
//! against unmask, and the publication of what a sender wrote to the handler,
//! each as two or three threads and a check of the outcome the core forbids.
//!
//! Natively each runs many rounds; on x86_64 a weakened ordering rarely
//! shows. Their purpose is Miri's weak-memory emulation (C++20's model,
//! with stale loads and store buffering), which loom does not give:
//!
//! ```text
//! MIRIFLAGS="-Zmiri-many-seeds=0..64" cargo +nightly miri test --test litmus
//! ```
//!
//! Under Miri one round runs per schedule, and a data race on the payload
//! (a plain, non-atomic write before the send, read by the handler) is
//! reported by Miri itself. mutation/sweep.py runs them against the
//! orderings loom cannot judge.
// Native tests; under RUSTFLAGS="--cfg loom" only the models run.
#![cfg(not(loom))]

use std::cell::UnsafeCell;
use std::sync::atomic::{AtomicBool, Ordering::SeqCst};
use std::sync::Arc;
use std::thread;

use evtchn::xen::fifo::{ControlBlock, EventWord};
use evtchn::xen::VcpuInfo;
use evtchn::{
    Deliver, Delivery, Error, Fifo, GuestUnmask, OwnedFifo, OwnedMemory, PortOps, Ports, Raise,
    Raised, RegisteredFifo, RegisteredVcpus, TwoLevel,
};

#[cfg(miri)]
const ROUNDS: usize = 1;
#[cfg(not(miri))]
const ROUNDS: usize = 300;

/// The ports of the tests (FIFO's port 0 is reserved).
const P: u32 = 1;
const Q: u32 = 2;

trait Build: PortOps + Send + Sync + 'static {
    fn build() -> Self;
}

impl Build for TwoLevel<OwnedMemory> {
    fn build() -> Self {
        TwoLevel::new(OwnedMemory::new(1, 1))
    }
}

impl Build for Fifo<OwnedFifo> {
    fn build() -> Self {
        Fifo::new(OwnedFifo::new(8, 1))
    }
}

/// A payload written without atomics: a handler that reads it without
/// the send's happens-before edge is a data race (Miri reports it).
struct Payload(UnsafeCell<u64>);

// SAFETY: every access is ordered by the core's send → deliver edge, which
// is what the tests check; Miri reports an access that is not.
unsafe impl Sync for Payload {}

impl Payload {
    fn write(&self, v: u64) {
        // SAFETY: the sender writes before the send; no handler reads before
        // the delivery that follows it (the property under test).
        unsafe { *self.0.get() = v }
    }

    fn read(&self) -> u64 {
        // SAFETY: as in `write`.
        unsafe { *self.0.get() }
    }
}

/// One upcall on vCPU 0: every pending port it is offered is consumed,
/// its payload read; returns the ports handled.
fn upcall<A: PortOps>(abi: &A, cursor: &mut A::Cursor, data: &[Payload; 3]) -> Vec<u32> {
    let mut handled = Vec::new();
    if !abi.upcall_pending(0).expect("vcpu 0") {
        return handled;
    }
    abi.scan(
        0,
        cursor,
        |p| {
            if abi.test_and_clear_pending(p).expect("port") {
                assert_eq!(
                    data[p as usize].read(),
                    u64::from(p) * 10,
                    "litmus: handler saw a stale payload"
                );
                handled.push(p);
                Delivery::Handled
            } else {
                Delivery::Skipped
            }
        },
        |_| {},
    )
    .expect("scan");
    handled
}

/// Runs `f` and `g` on two threads of their own over one ABI.
fn race<A: Build>(abi: &Arc<A>, f: fn(&A), g: fn(&A)) {
    let (a, b) = (abi.clone(), abi.clone());
    let f = thread::spawn(move || f(&a));
    let g = thread::spawn(move || g(&b));
    f.join().expect("first thread");
    g.join().expect("second thread");
}

/// Tries `f` until it returns `Some`, yielding between tries; a test whose
/// other thread never makes `f` succeed fails here instead of hanging (the
/// bound is far beyond any schedule's need: the other thread is a few steps).
fn retry_some<T>(what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    for _ in 0..100_000 {
        if let Some(v) = f() {
            return v;
        }
        thread::yield_now();
    }
    panic!("litmus: {what} never became visible");
}

/// [`retry_some`] for a condition.
fn retry(what: &str, mut f: impl FnMut() -> bool) {
    retry_some(what, || f().then_some(()));
}

/// Runs `f` and `g` on two scoped threads and joins both. The handles are
/// held until both threads ended: dropping the handle of a thread that has
/// already ended can make the spawning thread synchronise with it (the
/// last reference to the handle's shared state acquires what the thread
/// released when it dropped its own), and a thread spawned after that would
/// be ordered after the first one's every write, hiding the race under test.
fn pair(f: impl FnOnce() + Send, g: impl FnOnce() + Send) {
    thread::scope(|s| {
        let a = s.spawn(f);
        let b = s.spawn(g);
        a.join().expect("first thread");
        b.join().expect("second thread");
    });
}

/// Store buffering: the sender writes *pending* then reads *mask*; the
/// hypervisor's unmask writes *mask* then reads *pending*. The outcome in
/// which both reads miss the other's write leaves a pending, unmasked port
/// raised on no vCPU.
fn send_vs_unmask<A: Build>() {
    for _ in 0..ROUNDS {
        let abi = Arc::new(A::build());
        abi.prepare(P).expect("prepare");
        abi.mask(P).expect("mask");
        race(
            &abi,
            |a| {
                let _ = a.set_pending(P, || 0).expect("send");
            },
            |a| {
                let _ = a.unmask(P, || 0).expect("unmask");
            },
        );
        assert!(
            abi.is_pending(P).expect("port"),
            "the send is not lost outright"
        );
        assert!(
            !abi.is_masked(P).expect("port") && abi.upcall_pending(0).expect("vcpu 0"),
            "litmus: send vs unmask stranded the event"
        );
    }
}

/// The guest's conditional unmask against a send: the guest reads
/// *pending*, clears *mask*, reads *pending* again; the sender sets
/// *pending* and reads *mask*. Whatever the order, the event ends raised,
/// by the sender or by the hypervisor's unmask the guest asks for.
fn send_vs_guest_unmask<A: Build>() {
    for _ in 0..ROUNDS {
        let abi = Arc::new(A::build());
        abi.prepare(P).expect("prepare");
        abi.mask(P).expect("mask");
        race(
            &abi,
            |a| {
                let _ = a.set_pending(P, || 0).expect("send");
            },
            |a| {
                if a.try_unmask(P).expect("unmask") == GuestUnmask::Hypercall {
                    let _ = a.unmask(P, || 0).expect("hypervisor unmask");
                }
            },
        );
        assert!(
            !abi.is_masked(P).expect("port") && abi.upcall_pending(0).expect("vcpu 0"),
            "litmus: send vs guest unmask stranded the event"
        );
    }
}

/// Publication: senders write a payload and send; vCPU 0 runs upcalls
/// meanwhile. A handler must see the payload written before its send, and
/// each send is handled once (after the senders end, one more upcall takes
/// what is left).
fn send_vs_upcall<A: Build>(ports: &'static [u32]) {
    for _ in 0..ROUNDS {
        let abi = Arc::new(A::build());
        let data = Arc::new([0, 1, 2].map(|_| Payload(UnsafeCell::new(0))));
        for &p in ports {
            abi.prepare(p).expect("prepare");
        }
        let stop = Arc::new(AtomicBool::new(false));
        let (a, d, s) = (abi.clone(), data.clone(), stop.clone());
        let vcpu = thread::spawn(move || {
            let mut cursor = A::Cursor::default();
            let mut handled = Vec::new();
            // SeqCst: a flag, not the property under test.
            while !s.load(SeqCst) {
                handled.extend(upcall(&*a, &mut cursor, &d));
                thread::yield_now();
            }
            (handled, cursor)
        });
        let senders: Vec<_> = ports
            .iter()
            .map(|&p| {
                let (a, d) = (abi.clone(), data.clone());
                thread::spawn(move || {
                    d[p as usize].write(u64::from(p) * 10);
                    let _ = a.set_pending(p, || 0).expect("send");
                })
            })
            .collect();
        for s in senders {
            s.join().expect("sender");
        }
        stop.store(true, SeqCst);
        let (mut handled, mut cursor) = vcpu.join().expect("vcpu");
        handled.extend(upcall(&*abi, &mut cursor, &data));
        handled.sort_unstable();
        assert_eq!(handled, ports, "litmus: a send lost or handled twice");
    }
}

#[test]
fn two_level_send_vs_unmask() {
    send_vs_unmask::<TwoLevel<OwnedMemory>>();
}

#[test]
fn fifo_send_vs_unmask() {
    send_vs_unmask::<Fifo<OwnedFifo>>();
}

#[test]
fn two_level_send_vs_guest_unmask() {
    send_vs_guest_unmask::<TwoLevel<OwnedMemory>>();
}

#[test]
fn fifo_send_vs_guest_unmask() {
    send_vs_guest_unmask::<Fifo<OwnedFifo>>();
}

#[test]
fn two_level_send_vs_upcall() {
    send_vs_upcall::<TwoLevel<OwnedMemory>>(&[P]);
}

#[test]
fn fifo_send_vs_upcall() {
    send_vs_upcall::<Fifo<OwnedFifo>>(&[P]);
}

#[test]
fn two_level_two_senders_vs_upcall() {
    send_vs_upcall::<TwoLevel<OwnedMemory>>(&[P, Q]);
}

#[test]
fn fifo_two_senders_vs_upcall() {
    send_vs_upcall::<Fifo<OwnedFifo>>(&[P, Q]);
}

/// Memory a thread allocates and initialises before it registers it; the
/// test frees it after every thread ended. A raiser that reaches it without
/// the registration's happens-before edge races with its initialisation
/// (Miri reports it).
struct Leaked<T: 'static>(std::sync::atomic::AtomicPtr<T>);

impl<T> Leaked<T> {
    fn new() -> Self {
        Leaked(std::sync::atomic::AtomicPtr::new(std::ptr::null_mut()))
    }

    /// Allocates `v`; the reference lives until `free`.
    fn alloc(&self, v: T) -> &'static T {
        // Written as a guest writes its page: through a unique reference.
        let r: &'static mut T = Box::leak(Box::new(v));
        // Relaxed: read back only by `free`, after the threads were joined.
        self.0.store(r, std::sync::atomic::Ordering::Relaxed);
        r
    }

    /// Frees the allocation; call after every reference is gone.
    fn free(&self) {
        // Relaxed: the threads that wrote it were joined.
        let p = self
            .0
            .swap(std::ptr::null_mut(), std::sync::atomic::Ordering::Relaxed);
        if !p.is_null() {
            // SAFETY: `p` came from `Box::into_raw` in `alloc`, and nothing
            // refers to it any more.
            drop(unsafe { Box::from_raw(p) });
        }
    }
}

/// Publication of memory registered while a raiser runs: the guest
/// registers its control block, then a page of the event array, each
/// allocated and initialised just before; a raiser that finds the page
/// finds the control block (registered before it), links the event and
/// raises the upcall.
#[test]
fn fifo_registration_vs_raise() {
    for _ in 0..ROUNDS {
        let page = Leaked::<[EventWord; 1024]>::new();
        let (cb, info) = (Leaked::<ControlBlock>::new(), Leaked::<VcpuInfo>::new());
        {
            let mem = RegisteredFifo::<1>::new(1024, 1);
            let abi = Fifo::new(&mem);
            pair(
                || {
                    let (cb, info) = (cb.alloc(ControlBlock::new()), info.alloc(VcpuInfo::new()));
                    mem.init_control(0, cb, info).expect("init_control");
                    let page = page.alloc(core::array::from_fn(|_| EventWord::new(0)));
                    mem.expand_array(page).expect("expand_array");
                },
                || {
                    retry("the page's registration", || {
                        abi.set_pending(P, || 0) != Err(Error::PortOutOfRange)
                    });
                    assert!(
                        abi.upcall_pending(0) == Ok(true),
                        "litmus: a raise on a registered page found no control block"
                    );
                    let data = [0, 1, 2].map(|_| Payload(UnsafeCell::new(u64::from(P) * 10)));
                    let mut cursor = Default::default();
                    assert_eq!(
                        upcall(&abi, &mut cursor, &data),
                        [P],
                        "litmus: the raise was not linked"
                    );
                },
            );
        }
        page.free();
        cb.free();
        info.free();
    }
}

/// Publication of a control block registered after the event array's first
/// page: the raiser finds the page (published before the control block, so
/// that edge does not carry the control block), waits until it sees the
/// control block, and links the event into it.
#[test]
fn fifo_control_after_page_vs_raise() {
    for _ in 0..ROUNDS {
        let page = Leaked::<[EventWord; 1024]>::new();
        let (cb, info) = (Leaked::<ControlBlock>::new(), Leaked::<VcpuInfo>::new());
        {
            let mem = RegisteredFifo::<1>::new(1024, 1);
            let abi = Fifo::new(&mem);
            pair(
                || {
                    let page = page.alloc(core::array::from_fn(|_| EventWord::new(0)));
                    mem.expand_array(page).expect("expand_array");
                    let (cb, info) = (cb.alloc(ControlBlock::new()), info.alloc(VcpuInfo::new()));
                    mem.init_control(0, cb, info).expect("init_control");
                },
                || {
                    retry("the control block", || mem.has_control_block(0));
                    assert!(
                        matches!(abi.set_pending(P, || 0), Ok(Raised::Notified { .. })),
                        "litmus: a raise after registration was not linked"
                    );
                    let data = [0, 1, 2].map(|_| Payload(UnsafeCell::new(u64::from(P) * 10)));
                    let mut cursor = Default::default();
                    assert_eq!(
                        upcall(&abi, &mut cursor, &data),
                        [P],
                        "litmus: the linked event was not delivered"
                    );
                },
            );
        }
        page.free();
        cb.free();
        info.free();
    }
}

/// Publication of a `vcpu_info` to a status read: a thread that polls
/// `upcall_pending` of a vCPU while it registers reads the flag of the
/// registered `vcpu_info` only after its initialisation.
#[test]
fn fifo_vcpu_info_vs_status_read() {
    for _ in 0..ROUNDS {
        let (cb, info) = (Leaked::<ControlBlock>::new(), Leaked::<VcpuInfo>::new());
        {
            let mem = RegisteredFifo::<1>::new(1024, 1);
            let abi = Fifo::new(&mem);
            pair(
                || {
                    let (cb, info) = (cb.alloc(ControlBlock::new()), info.alloc(VcpuInfo::new()));
                    mem.init_control(0, cb, info).expect("init_control");
                },
                || {
                    let flag = retry_some("the vcpu_info's registration", || {
                        abi.upcall_pending(0).ok()
                    });
                    assert!(!flag, "litmus: a fresh vcpu_info read as pending");
                },
            );
        }
        cb.free();
        info.free();
    }
}

/// 2-level registration racing a raise (`register_vcpu_info`): a raise that
/// found no `vcpu_info` left its bit in the pending word only; the
/// registration's marking (selector and flag) must carry that bit to a scan
/// on another thread. The scan does not read the upcall flag first (a guest
/// upcall entered by injection does not), so only the selector's edge
/// orders the pending word before the scan's read of it. After both
/// threads, whatever is still raised is drained; the event is handled
/// exactly once.
#[test]
fn two_level_registration_vs_raise() {
    for _ in 0..ROUNDS {
        let info = Leaked::<VcpuInfo>::new();
        let mem = RegisteredVcpus::<_, 1>::new(OwnedMemory::new(1, 0), 1);
        let abi = TwoLevel::new(&mem);
        let data = [0, 1, 2].map(|_| Payload(UnsafeCell::new(0)));
        // The handles are held until the end (see `pair`).
        let handled = thread::scope(|s| {
            let raiser = s.spawn(|| {
                data[P as usize].write(u64::from(P) * 10);
                abi.set_pending(P, || 0).expect("raise");
            });
            let registrar = s.spawn(|| {
                mem.register_vcpu_info(0, info.alloc(VcpuInfo::new()))
                    .expect("register_vcpu_info");
            });
            let scanner = s.spawn(|| {
                retry("the registration", || mem.is_registered(0));
                let mut handled = Vec::new();
                let mut cursor = Default::default();
                abi.scan(
                    0,
                    &mut cursor,
                    |p| {
                        if abi.test_and_clear_pending(p).expect("port") {
                            assert_eq!(
                                data[p as usize].read(),
                                u64::from(p) * 10,
                                "litmus: handler saw a stale payload"
                            );
                            handled.push(p);
                            Delivery::Handled
                        } else {
                            Delivery::Skipped
                        }
                    },
                    |_| {},
                )
                .expect("scan");
                handled
            });
            raiser.join().expect("raiser");
            registrar.join().expect("registrar");
            scanner.join().expect("scanner")
        });
        let mut cursor = Default::default();
        let rest = upcall(&abi, &mut cursor, &data);
        assert_eq!(
            [handled, rest].concat(),
            [P],
            "litmus: the registration lost or doubled an event raised before it"
        );
        info.free();
    }
}

/// The crate-owned FIFO memory grows a page while a raiser waits for it:
/// the raiser's first access to the new page's words must see them
/// initialised.
#[test]
fn fifo_owned_expand_vs_raise() {
    for _ in 0..ROUNDS {
        let abi = Fifo::new(OwnedFifo::new(8, 1));
        pair(
            || abi.prepare(P).expect("prepare"),
            || {
                retry("the page's preparation", || {
                    abi.set_pending(P, || 0) != Err(Error::PortOutOfRange)
                });
                assert_eq!(abi.is_pending(P), Ok(true), "litmus: the raise was lost");
            },
        );
    }
}
