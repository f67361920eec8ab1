//! The two sides on their own: the hypervisor side (`Host`) with Xen's
//! semantics over a guest's memory, and the guest side (`Guest::on_xen`)
//! over a recording hypervisor, on both ABIs. docs/DESIGN.md §1.2.
#![cfg(not(loom))]

use std::sync::atomic::Ordering::SeqCst;
use std::sync::Mutex;

use evtchn::xen::fifo::{LINKED, MASKED, PENDING};
use evtchn::xen::SharedInfo;
use evtchn::{
    Bind, Error, Fifo, FifoMemory, Guest, Host, Hypercalls, Hypervisor, OwnedFifo, OwnedMemory,
    Ports, Raise, TwoLevel,
};

/// Every word of a 2-level page: pending, mask, selectors, flags.
fn page_words(p: &SharedInfo) -> Vec<u64> {
    let mut v: Vec<u64> = p.evtchn_pending.iter().map(|w| w.load(SeqCst)).collect();
    v.extend(p.evtchn_mask.iter().map(|w| w.load(SeqCst)));
    for vi in &p.vcpu_info {
        v.push(vi.evtchn_pending_sel.load(SeqCst));
        v.push(u64::from(vi.evtchn_upcall_pending.load(SeqCst)));
    }
    v
}

#[test]
fn host_writes_nothing_at_start_up_and_bind_touches_neither_pending_nor_mask() {
    let page = Box::new(SharedInfo::new());
    // The guest's own state: port 1 masked, port 2 pending from before.
    page.evtchn_mask[0].store(0b010, SeqCst);
    page.evtchn_pending[0].store(0b100, SeqCst);
    let before = page_words(&page);
    let host = Host::new(TwoLevel::new(&*page), ());
    assert_eq!(page_words(&page), before, "Host::new wrote guest memory");
    assert_eq!(host.bind(0), Ok(1));
    assert_eq!(host.bind(1), Ok(2));
    assert_eq!(page_words(&page), before, "bind wrote guest memory");
    assert!(host.abi().is_masked(1).unwrap() && host.abi().is_pending(2).unwrap());
}

#[test]
fn host_close_clears_pending_keeps_the_mask_and_resets_the_vcpu() {
    let page = Box::new(SharedInfo::new());
    let host = Host::new(TwoLevel::new(&*page), ());
    let p = host.bind(1).unwrap();
    page.evtchn_mask[0].fetch_or(1 << p, SeqCst); // the guest masked it
    host.send(p).unwrap();
    assert!(host.abi().is_pending(p).unwrap());
    host.close(p).unwrap();
    let s = host.status(p).unwrap();
    assert!(!s.bound && !s.pending && s.masked, "{s:?}");
    assert_eq!(s.vcpu, 0, "Xen resets the notify vCPU to 0");
    assert_eq!(host.close(p), Err(Error::NotBound));
    assert_eq!(host.send(p), Err(Error::NotBound));
    // The number comes back with the guest's mask still set.
    assert_eq!(host.bind(0), Ok(p));
    assert!(host.abi().is_masked(p).unwrap());
}

#[test]
fn host_bind_vcpu_never_touches_the_mask_and_reraises_a_pending_unmasked_event() {
    let page = Box::new(SharedInfo::new());
    let host = Host::new(TwoLevel::new(&*page), ());
    let p = host.bind(0).unwrap();
    host.send(p).unwrap();
    assert!(host.abi().upcall_pending(0).unwrap());
    // Unmasked and pending: raised again on the new vCPU (QEMU's rule).
    host.bind_vcpu(p, 1).unwrap();
    assert!(host.abi().upcall_pending(1).unwrap());
    assert_eq!(page.vcpu_info[1].evtchn_pending_sel.load(SeqCst), 1);
    assert_eq!(host.status(p).unwrap().vcpu, 1);
    // Masked by the guest: bind_vcpu leaves mask and vCPUs alone.
    let q = host.bind(0).unwrap();
    page.evtchn_mask[0].fetch_or(1 << q, SeqCst);
    host.send(q).unwrap();
    let before = page_words(&page);
    host.bind_vcpu(q, 1).unwrap();
    assert_eq!(page_words(&page), before, "bind_vcpu wrote guest memory");
    // The guest's unmask hypercall raises it on the new vCPU.
    page.vcpu_info[1].evtchn_pending_sel.store(0, SeqCst);
    page.vcpu_info[1].evtchn_upcall_pending.store(0, SeqCst);
    host.unmask(q).unwrap();
    assert!(!host.abi().is_masked(q).unwrap());
    assert_eq!(page.vcpu_info[1].evtchn_upcall_pending.load(SeqCst), 1);
    // Errors change nothing.
    let before = page_words(&page);
    assert_eq!(host.bind_vcpu(q, 32), Err(Error::VcpuOutOfRange));
    assert_eq!(host.bind_vcpu(0, 1), Err(Error::PortOutOfRange));
    assert_eq!(host.bind_vcpu(4096, 1), Err(Error::PortOutOfRange));
    assert_eq!(host.bind_vcpu(q + 1, 1), Err(Error::NotBound));
    assert_eq!(host.unmask(4096), Err(Error::PortOutOfRange));
    assert_eq!(page_words(&page), before);
}

#[test]
fn host_unmask_is_xen_s_on_each_abi() {
    // 2-level: raises only when the call cleared the mask.
    let page = Box::new(SharedInfo::new());
    let host = Host::new(TwoLevel::new(&*page), ());
    let p = host.bind(0).unwrap();
    page.evtchn_pending[0].fetch_or(1 << p, SeqCst); // pending, unmasked
    host.unmask(p).unwrap();
    assert!(
        !host.abi().upcall_pending(0).unwrap(),
        "2-level: no 1 -> 0, no raise"
    );
    page.evtchn_mask[0].fetch_or(1 << p, SeqCst);
    host.unmask(p).unwrap();
    assert!(host.abi().upcall_pending(0).unwrap());

    // FIFO: links whenever pending and not linked.
    let host = Host::new(Fifo::new(OwnedFifo::new(64, 1)), ());
    let q = host.bind(0).unwrap();
    let word = host.abi().memory().event_word(q).unwrap();
    word.fetch_or(PENDING, SeqCst);
    host.unmask(q).unwrap();
    assert_eq!(word.load(SeqCst), PENDING | LINKED);
    assert!(host.abi().upcall_pending(0).unwrap());
    // Still linked: nothing more.
    word.fetch_or(MASKED, SeqCst);
    host.unmask(q).unwrap();
    assert_eq!(word.load(SeqCst), PENDING | LINKED);
}

/// A hypervisor that records the hypercalls and forwards them to a `Host`.
struct Recorder<'h, R: Raise> {
    host: &'h Host<R>,
    log: Mutex<Vec<String>>,
}

impl<R: Raise> Recorder<'_, R> {
    fn take(&self) -> Vec<String> {
        std::mem::take(&mut self.log.lock().unwrap())
    }
    fn note(&self, s: String) {
        self.log.lock().unwrap().push(s);
    }
}

impl<R: Raise> Hypercalls for Recorder<'_, R> {
    fn bind(&self, vcpu: u32) -> Result<u32, Error> {
        let r = self.host.bind(vcpu);
        self.note(format!("bind({vcpu}) = {r:?}"));
        r
    }
    fn close(&self, port: u32) -> Result<(), Error> {
        self.note(format!("close({port})"));
        self.host.close(port)
    }
    fn send(&self, port: u32) -> Result<(), Error> {
        self.note(format!("send({port})"));
        self.host.send(port)
    }
    fn unmask(&self, port: u32) -> Result<(), Error> {
        self.note(format!("unmask({port})"));
        self.host.unmask(port)
    }
    fn bind_vcpu(&self, port: u32, vcpu: u32) -> Result<(), Error> {
        self.note(format!("bind_vcpu({port}, {vcpu})"));
        self.host.bind_vcpu(port, vcpu)
    }
    fn set_priority(&self, port: u32, priority: u8) -> Result<(), Error> {
        self.note(format!("set_priority({port}, {priority})"));
        self.host.set_priority(port, priority)
    }
}

#[test]
fn guest_moves_a_port_in_linux_order_and_a_pending_event_follows() {
    let page = Box::new(SharedInfo::new());
    let host = Host::new(TwoLevel::new(&*page), ());
    let calls = Recorder {
        host: &host,
        log: Mutex::new(Vec::new()),
    };
    let guest = Guest::on_xen(TwoLevel::new(&*page), calls, ());
    // As Linux at boot, every port masked.
    assert!(page.evtchn_mask.iter().all(|w| w.load(SeqCst) == !0));
    let p = guest.bind(Bind::Affinity(0)).unwrap();
    let log = guest_log(&guest);
    assert_eq!(
        log,
        ["bind(0) = Ok(1)"],
        "the guest's own unmask: not pending"
    );
    assert!(!host.abi().is_masked(p.number()).unwrap());
    guest.mask(p).unwrap();
    guest.send(p).unwrap(); // pending, masked: nobody told
    assert!(!host.abi().upcall_pending(0).unwrap());
    let _ = guest_log(&guest);
    guest.set_affinity(p, 1).unwrap();
    // Masked explicitly too: the move unmasks nothing.
    assert_eq!(guest_log(&guest), [format!("bind_vcpu({}, 1)", p.number())]);
    guest.unmask(p).unwrap();
    // Pending: the guest leaves its mask set and asks the hypervisor, whose
    // unmask raises on the new vCPU.
    assert_eq!(guest_log(&guest), [format!("unmask({})", p.number())]);
    assert!(host.abi().upcall_pending(1).unwrap());
    assert_eq!(guest.vcpu(1).unwrap().upcall(|_| {}).unwrap(), 1);
}

fn guest_log<R: Raise, D: evtchn::Deliver, N: evtchn::Notify>(
    g: &Guest<evtchn::OnXen<D, Recorder<'_, R>, N>>,
) -> Vec<String> {
    g.hypervisor().calls().take()
}

#[test]
fn guest_closes_at_the_hypervisor_only_once_its_handler_has_ended() {
    // One memory, each side with its own half over it (the FIFO raise
    // half's queue tails are the host's alone).
    let mem = OwnedFifo::new(64, 1);
    let host = Host::new(Fifo::new(&mem), ());
    let calls = Recorder {
        host: &host,
        log: Mutex::new(Vec::new()),
    };
    let guest = Guest::on_xen(Fifo::new(&mem), calls, ());
    let p = guest.bind(Bind::Affinity(0)).unwrap();
    let _ = guest_log(&guest);
    host.send(p.number()).unwrap();
    let mut inside = Vec::new();
    guest
        .vcpu(0)
        .unwrap()
        .upcall(|q| {
            guest.close(q).unwrap();
            inside = guest_log(&guest);
        })
        .unwrap();
    assert!(
        inside.is_empty(),
        "closed at the hypervisor while in flight: {inside:?}"
    );
    assert_eq!(guest_log(&guest), [format!("close({})", p.number())]);
    assert!(!host.status(p.number()).unwrap().bound);
}

#[test]
fn in_process_channels_keep_host_and_guest_in_step() {
    let ch = evtchn::Channels::new(TwoLevel::new(OwnedMemory::new(1, 2)), ());
    let p = ch.bind(Bind::Affinity(1)).unwrap();
    assert_eq!(ch.host().status(p.number()).unwrap().vcpu, 1);
    ch.set_affinity(p, 0).unwrap();
    assert_eq!(ch.host().status(p.number()).unwrap().vcpu, 0);
    ch.send(p).unwrap();
    ch.close(p).unwrap();
    let s = ch.host().status(p.number()).unwrap();
    assert!(!s.bound && !s.pending, "{s:?}");
}

#[test]
fn host_reports_its_size_and_prints_it() {
    let page = Box::new(SharedInfo::new());
    let host = Host::new(TwoLevel::new(&*page), ());
    let nr_ports = host.abi().nr_ports();
    assert_eq!(host.nr_ports(), nr_ports);
    assert_eq!(host.nr_vcpus(), host.abi().nr_vcpus());
    // The last number is usable, the one past it is not.
    assert_eq!(host.status(nr_ports - 1).map(|s| s.bound), Ok(false));
    assert_eq!(host.status(nr_ports), Err(Error::PortOutOfRange));
    // Xen's default (7), then every priority reads back as set.
    let p = host.bind(1).unwrap();
    assert_eq!(host.status(p).unwrap().priority, 7);
    for prio in [15, 9, 0] {
        host.set_priority(p, prio).unwrap();
        assert_eq!(host.status(p).unwrap().priority, prio);
    }
    assert_eq!(host.set_priority(p, 16), Err(Error::PriorityOutOfRange));
    assert_eq!(
        format!("{host:?}"),
        format!(
            "Host {{ nr_ports: {nr_ports}, nr_vcpus: {}, .. }}",
            host.nr_vcpus()
        )
    );
}
