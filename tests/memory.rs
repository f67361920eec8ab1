//! Memory as real deployments have it: 2-level `vcpu_info`s registered one
//! vCPU at a time anywhere (`VCPUOP_register_vcpu_info`, more than 32
//! vCPUs), over `RegisteredVcpus`; and the FIFO event array registered one
//! guest page at a time (`EVTCHNOP_expand_array`) with per-vCPU control
//! blocks (`EVTCHNOP_init_control`), over `RegisteredFifo`. Each in separate
//! allocations, driven through the raw ABI traits and through the control
//! plane, and registered while other threads raise and deliver.
// Native tests; under RUSTFLAGS="--cfg loom" only the models run.
#![cfg(not(loom))]

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering::SeqCst};
use std::thread;

use evtchn::xen::fifo::{ControlBlock, EventWord, LINKED, PENDING};
use evtchn::xen::{SharedInfo, VcpuInfo};
use evtchn::{
    Bind, Channels, Delivery, Error, Fifo, FifoCursor, FifoMemory, Memory2l, Raised,
    RegisteredFifo, RegisteredVcpus, TwoLevel, TwoLevelCursor,
};
use evtchn::{Deliver, Ports, Raise};
use evtchn_test_support::StopOnDrop;

type Page = [EventWord; 1024];

/// `n` vcpu_infos, each in an allocation of its own (boxed on purpose: as
/// registered ones are, nowhere near each other).
#[allow(clippy::vec_box)]
fn vcpu_infos(n: usize) -> Vec<Box<VcpuInfo>> {
    (0..n).map(|_| Box::new(VcpuInfo::new())).collect()
}

fn page() -> Box<Page> {
    Box::new(std::array::from_fn(|_| EventWord::new(0)))
}

/// Selector and upcall flag of a `vcpu_info`.
fn words(vi: &VcpuInfo) -> (u64, u8) {
    (
        vi.evtchn_pending_sel.load(SeqCst),
        vi.evtchn_upcall_pending.load(SeqCst),
    )
}

/// Every 2-level word the memory shows, and the page's legacy `vcpu_info`s.
fn snapshot_2l<M: Memory2l>(mem: &M, page: &SharedInfo) -> Vec<u64> {
    let mut all: Vec<u64> = mem.pending().iter().map(|w| w.load(SeqCst)).collect();
    all.extend(mem.mask().iter().map(|w| w.load(SeqCst)));
    for vi in (0..mem.nr_vcpus())
        .filter_map(|v| mem.vcpu_info(v))
        .chain(page.vcpu_info.iter())
    {
        let (sel, flag) = words(vi);
        all.extend([sel, u64::from(flag)]);
    }
    all
}

/// Ports the scan of `vcpu` finds pending, each claimed with
/// `test_and_clear_pending`.
fn take<D: Deliver>(abi: &D, vcpu: u32, cursor: &mut D::Cursor) -> Result<Vec<u32>, Error> {
    let mut seen = Vec::new();
    abi.scan(
        vcpu,
        cursor,
        |p| {
            if abi.test_and_clear_pending(p) == Ok(true) {
                seen.push(p);
            }
            Delivery::Handled
        },
        |_| {},
    )?;
    Ok(seen)
}

/// Whether `a` and `b` are separate allocations, not one after the other.
fn apart<T>(a: &T, b: &T) -> bool {
    let (a, b) = (a as *const T as usize, b as *const T as usize);
    a.abs_diff(b) != std::mem::size_of::<T>()
}

// ---------------------------------------------------------------------------
// 2-level: registered vcpu_infos
// ---------------------------------------------------------------------------

#[test]
fn forty_vcpus_with_registered_vcpu_infos_raise_and_scan() {
    let page = Box::new(SharedInfo::new());
    let infos = vcpu_infos(40);
    let mem = RegisteredVcpus::<_, 64>::new(&*page, 40);
    for (v, info) in (0..).zip(&infos) {
        mem.register_vcpu_info(v, info).unwrap();
    }
    assert!(infos.windows(2).all(|w| apart(&*w[0], &*w[1])));
    let abi = TwoLevel::new(&mem);
    assert_eq!((abi.nr_vcpus(), abi.nr_ports()), (40, 4096));

    // Registration marked every word pending on each vCPU, as Xen does: a
    // scan finds nothing and clears the flag.
    let mut cursors = vec![TwoLevelCursor::default(); 40];
    for v in 0..40u32 {
        assert_eq!(words(&infos[v as usize]), (!0, 1));
        assert_eq!(abi.upcall_pending(v), Ok(true));
        assert_eq!(take(&abi, v, &mut cursors[v as usize]), Ok(vec![]));
        assert_eq!(abi.upcall_pending(v), Ok(false));
    }

    // One port per vCPU, each in its own pending word.
    let port = |v: u32| 64 * v + 1 + v % 63;
    for v in 0..40u32 {
        let raised = abi.set_pending(port(v), || v).unwrap();
        assert_eq!(
            raised,
            Raised::Notified {
                vcpu: v,
                kick: true
            }
        );
        let w = port(v) / 64;
        assert_eq!(words(&infos[v as usize]), (1 << w, 1));
        // A second send coalesces.
        assert_eq!(abi.set_pending(port(v), || v), Ok(Raised::Coalesced));
    }
    // The page's legacy vcpu_infos are not used once a vCPU registered.
    assert!(page.vcpu_info.iter().all(|vi| words(vi) == (0, 0)));
    for v in (0..40u32).rev() {
        assert_eq!(abi.upcall_pending(v), Ok(true));
        assert_eq!(take(&abi, v, &mut cursors[v as usize]), Ok(vec![port(v)]));
        assert_eq!(abi.upcall_pending(v), Ok(false));
        assert_eq!(abi.is_pending(port(v)), Ok(false));
    }
}

#[test]
fn unregistered_vcpus_use_the_legacy_vcpu_info_below_32_and_none_above() {
    let page = Box::new(SharedInfo::new());
    let infos = vcpu_infos(40);
    let mem = RegisteredVcpus::<_, 40>::new(&*page, 40);
    let abi = TwoLevel::new(&mem);

    // vCPU 5 is served by the page's vcpu_info[5] until it registers.
    assert!(std::ptr::eq(mem.vcpu_info(5).unwrap(), &page.vcpu_info[5]));
    assert_eq!(abi.upcall_pending(5), Ok(false));
    assert_eq!(
        abi.set_pending(70, || 5),
        Ok(Raised::Notified {
            vcpu: 5,
            kick: true
        })
    );
    assert_eq!(words(&page.vcpu_info[5]), (1 << 1, 1));

    // Registering moves it: the event raised on the legacy vcpu_info is
    // found through the new one (registration marks every word).
    mem.register_vcpu_info(5, &infos[5]).unwrap();
    assert!(mem.is_registered(5));
    assert!(std::ptr::eq(mem.vcpu_info(5).unwrap(), &*infos[5]));
    assert_eq!(abi.upcall_pending(5), Ok(true));
    assert_eq!(take(&abi, 5, &mut TwoLevelCursor::default()), Ok(vec![70]));
    assert_eq!(abi.upcall_pending(5), Ok(false));

    // vCPUs from 32 have no vcpu_info before they register.
    for v in 32..40 {
        assert!(mem.vcpu_info(v).is_none());
    }
    // Beyond the vCPUs: out of range for good.
    assert!(mem.vcpu_info(40).is_none());
    assert_eq!(
        mem.register_vcpu_info(40, &infos[0]),
        Err(Error::VcpuOutOfRange)
    );
    assert_eq!(abi.upcall_pending(40), Err(Error::VcpuOutOfRange));
}

#[test]
fn unregistered_vcpu_is_out_of_range_and_a_raise_for_it_notifies_nobody() {
    let page = Box::new(SharedInfo::new());
    let infos = vcpu_infos(40);
    let mem = RegisteredVcpus::<_, 64>::new(&*page, 40);
    for v in (0..40).filter(|&v| v != 35) {
        mem.register_vcpu_info(v, &infos[v as usize]).unwrap();
    }
    let abi = TwoLevel::new(&mem);
    for v in (0..40).filter(|&v| v != 35) {
        take(&abi, v, &mut TwoLevelCursor::default()).unwrap();
    }
    assert_eq!(abi.upcall_pending(35), Err(Error::VcpuOutOfRange));
    assert_eq!(
        take(&abi, 35, &mut TwoLevelCursor::default()),
        Err(Error::VcpuOutOfRange)
    );

    let before = snapshot_2l(&mem, &page);
    let raised = abi.set_pending(200, || 35).unwrap();
    assert_eq!(
        raised,
        Raised::Notified {
            vcpu: 35,
            kick: false
        }
    );
    assert_eq!(raised.kick(), None);
    // Pending, and nothing else changed: no selector, no flag, anywhere.
    assert_eq!(abi.is_pending(200), Ok(true));
    let mut after = snapshot_2l(&mem, &page);
    after[200 / 64] &= !(1 << (200 % 64));
    assert_eq!(after, before);
    for v in (0..40).filter(|&v| v != 35) {
        assert_eq!(abi.upcall_pending(v), Ok(false));
    }
    // So do the unmask and the re-raise for it.
    assert_eq!(abi.reraise(200, || 35), Ok(None));

    // Once vCPU 35 registers, its scan finds the event.
    mem.register_vcpu_info(35, &infos[35]).unwrap();
    assert_eq!(abi.upcall_pending(35), Ok(true));
    assert_eq!(
        take(&abi, 35, &mut TwoLevelCursor::default()),
        Ok(vec![200])
    );
}

#[test]
fn second_registration_is_refused_and_changes_nothing() {
    let page = Box::new(SharedInfo::new());
    let (first, second) = (Box::new(VcpuInfo::new()), Box::new(VcpuInfo::new()));
    let mem = RegisteredVcpus::<_, 64>::new(&*page, 40);
    let abi = TwoLevel::new(&mem);
    mem.register_vcpu_info(33, &first).unwrap();
    take(&abi, 33, &mut TwoLevelCursor::default()).unwrap();
    assert_eq!(
        abi.set_pending(9, || 33),
        Ok(Raised::Notified {
            vcpu: 33,
            kick: true
        })
    );

    let before = snapshot_2l(&mem, &page);
    assert_eq!(
        mem.register_vcpu_info(33, &second),
        Err(Error::VcpuOutOfRange)
    );
    // Again with the same vcpu_info: refused too.
    assert_eq!(
        mem.register_vcpu_info(33, &first),
        Err(Error::VcpuOutOfRange)
    );
    assert_eq!(snapshot_2l(&mem, &page), before);
    assert!(std::ptr::eq(mem.vcpu_info(33).unwrap(), &*first));
    assert_eq!(words(&second), (0, 0));
    assert_eq!(take(&abi, 33, &mut TwoLevelCursor::default()), Ok(vec![9]));
}

#[test]
fn control_plane_over_registered_vcpu_infos_delivers_on_vcpu_39() {
    let page = Box::new(SharedInfo::new());
    let infos = vcpu_infos(40);
    let mem = RegisteredVcpus::<_, 64>::new(&*page, 40);
    for (v, info) in (0..).zip(&infos) {
        mem.register_vcpu_info(v, info).unwrap();
    }
    let ch = Channels::new(TwoLevel::new(&mem), ());
    assert_eq!(ch.nr_vcpus(), 40);
    for v in 0..40 {
        ch.vcpu(v).unwrap().upcall(|_| {}).unwrap();
    }
    let port = ch.bind(Bind::Affinity(39)).unwrap();
    ch.send(port).unwrap();
    assert_eq!(ch.upcall_pending(39), Ok(true));
    let mut seen = Vec::new();
    ch.vcpu(39)
        .unwrap()
        .upcall(|p| seen.push(p.number()))
        .unwrap();
    assert_eq!(seen, [port.number()]);
    assert_eq!(ch.upcall_pending(39), Ok(false));
}

/// Raisers on every port while one thread registers the vcpu_infos and
/// another delivers: every raise is delivered exactly once, including those
/// raised for a vCPU before it registered (through the page's legacy
/// vcpu_info below 32, or with no vcpu_info at all from 32).
#[test]
fn registration_while_raising_and_scanning_loses_nothing() {
    const VCPUS: u32 = 40;
    const PORTS: u32 = 4096;
    const RAISERS: u32 = 2;
    for round in 0..4u32 {
        let page = Box::new(SharedInfo::new());
        let infos = vcpu_infos(VCPUS as usize);
        let mem = RegisteredVcpus::<_, 64>::new(&*page, VCPUS);
        let abi = TwoLevel::new(&mem);
        let delivered: Vec<AtomicU32> = (0..PORTS).map(|_| AtomicU32::new(0)).collect();
        let raised: Vec<AtomicU32> = (0..PORTS).map(|_| AtomicU32::new(0)).collect();
        let early = AtomicU32::new(0);
        let stop = AtomicBool::new(false);
        thread::scope(|s| {
            // A failed check below stops the looping threads (or the scope hangs).
            let _stop = StopOnDrop([&stop]);
            let deliverer = s.spawn(|| {
                let mut cursors = vec![TwoLevelCursor::default(); VCPUS as usize];
                let sweep = |cursors: &mut [TwoLevelCursor]| {
                    let mut any = false;
                    for v in 0..VCPUS {
                        if abi.upcall_pending(v) == Ok(true) {
                            any = true;
                            for p in take(&abi, v, &mut cursors[v as usize]).unwrap() {
                                delivered[p as usize].fetch_add(1, SeqCst);
                            }
                        }
                    }
                    any
                };
                while !stop.load(SeqCst) {
                    if !sweep(&mut cursors) {
                        thread::yield_now();
                    }
                }
                while sweep(&mut cursors) {}
            });
            let registrar = s.spawn(|| {
                // Interleaved with the raisers: a high vCPU, then a low one.
                let order = (0..VCPUS).map(|i| if i % 2 == 0 { VCPUS - 1 - i / 2 } else { i / 2 });
                for v in order {
                    for _ in 0..(v + round) % 5 * 50 {
                        thread::yield_now();
                    }
                    mem.register_vcpu_info(v, &infos[v as usize]).unwrap();
                }
            });
            let raisers: Vec<_> = (0..RAISERS)
                .map(|r| {
                    let (mem, abi, raised, early) = (&mem, &abi, &raised, &early);
                    s.spawn(move || {
                        for p in (1..PORTS).filter(|p| p % RAISERS == r) {
                            // All ports of a word on one vCPU: the word is
                            // found only through that vCPU's selector.
                            let target = (p / 64 + round) % VCPUS;
                            if !mem.is_registered(target) {
                                early.fetch_add(1, SeqCst);
                            }
                            match abi.set_pending(p, || target) {
                                Ok(Raised::Notified { vcpu, .. }) => {
                                    assert_eq!(vcpu, target);
                                    raised[p as usize].fetch_add(1, SeqCst);
                                }
                                other => panic!("port {p}: {other:?}"),
                            }
                            if p % 64 == 0 {
                                thread::yield_now();
                            }
                        }
                    })
                })
                .collect();
            for r in raisers {
                r.join().unwrap();
            }
            registrar.join().unwrap();
            stop.store(true, SeqCst);
            deliverer.join().unwrap();
        });
        assert!(early.load(SeqCst) > 0, "no raise met an unregistered vCPU");
        for p in 1..PORTS as usize {
            assert_eq!(raised[p].load(SeqCst), 1);
            assert_eq!(
                delivered[p].load(SeqCst),
                1,
                "round {round}: port {p} delivered {} times",
                delivered[p].load(SeqCst)
            );
        }
        assert!(mem.pending().iter().all(|w| w.load(SeqCst) == 0));
    }
}

// ---------------------------------------------------------------------------
// FIFO: registered pages and control blocks
// ---------------------------------------------------------------------------

/// Every word of the pages, control blocks and vcpu_infos given.
fn snapshot_fifo(pages: &[&Page], cbs: &[ControlBlock], infos: &[Box<VcpuInfo>]) -> Vec<u32> {
    let mut all: Vec<u32> = pages
        .iter()
        .flat_map(|p| p.iter().map(|w| w.load(SeqCst)))
        .collect();
    for cb in cbs {
        all.push(cb.ready.load(SeqCst));
        all.extend(cb.head.iter().map(|h| h.load(SeqCst)));
    }
    for vi in infos {
        all.push(u32::from(vi.evtchn_upcall_pending.load(SeqCst)));
    }
    all
}

#[test]
fn fifo_ports_work_page_by_page_as_pages_are_registered() {
    let page0 = page();
    let spacer = page();
    let page1 = page();
    assert!(apart(&*page0, &*page1) && apart(&*page0, &*spacer));
    let cbs: Vec<ControlBlock> = (0..2).map(|_| ControlBlock::new()).collect();
    let infos = vcpu_infos(2);
    let mem = RegisteredFifo::<4>::new(4096, 2);
    mem.expand_array(&page0).unwrap();
    for v in 0..2u32 {
        mem.init_control(v, &cbs[v as usize], &infos[v as usize])
            .unwrap();
    }
    let fifo = Fifo::new(&mem);
    assert_eq!((fifo.nr_ports(), fifo.nr_vcpus()), (4096, 2));
    let mut cursors = [FifoCursor::default(), FifoCursor::default()];

    // Page 0: its ports work, and their words are page 0's.
    assert_eq!(
        fifo.set_pending(5, || 1),
        Ok(Raised::Notified {
            vcpu: 1,
            kick: true
        })
    );
    assert_eq!(
        fifo.set_pending(1023, || 1),
        Ok(Raised::Notified {
            vcpu: 1,
            kick: false
        })
    );
    assert_eq!(page0[5].load(SeqCst) & (PENDING | LINKED), PENDING | LINKED);
    assert_eq!(fifo.upcall_pending(1), Ok(true));
    assert_eq!(take(&fifo, 1, &mut cursors[1]), Ok(vec![5, 1023]));

    // A port on page 1, not registered: out of range, and nothing changes.
    let before = snapshot_fifo(&[&page0, &spacer, &page1], &cbs, &infos);
    assert_eq!(fifo.set_pending(1030, || 0), Err(Error::PortOutOfRange));
    assert_eq!(fifo.is_pending(1030), Err(Error::PortOutOfRange));
    assert_eq!(fifo.unmask(1030, || 0), Err(Error::PortOutOfRange));
    assert_eq!(fifo.prepare(1030), Err(Error::PortOutOfRange));
    assert_eq!(mem.expand(1030), Err(Error::PortOutOfRange));
    assert!(mem.event_word(1030).is_none());
    assert_eq!(
        snapshot_fifo(&[&page0, &spacer, &page1], &cbs, &infos),
        before
    );
    assert_eq!(fifo.upcall_pending(0), Ok(false));

    // Page 1 registered: port 1030 is its word 6.
    mem.expand_array(&page1).unwrap();
    assert_eq!(mem.registered_pages(), 2);
    assert_eq!(fifo.prepare(1030), Ok(()));
    assert!(std::ptr::eq(mem.event_word(1030).unwrap(), &page1[6]));
    assert_eq!(
        fifo.set_pending(1030, || 0),
        Ok(Raised::Notified {
            vcpu: 0,
            kick: true
        })
    );
    assert_eq!(page1[6].load(SeqCst) & PENDING, PENDING);
    assert!(spacer.iter().all(|w| w.load(SeqCst) == 0));
    assert_eq!(take(&fifo, 0, &mut cursors[0]), Ok(vec![1030]));
    // Links across pages: 1030 then 7 on one queue.
    fifo.set_pending(1031, || 0).unwrap();
    fifo.set_pending(7, || 0).unwrap();
    assert_eq!(take(&fifo, 0, &mut cursors[0]), Ok(vec![1031, 7]));
}

#[test]
fn fifo_event_array_refuses_pages_beyond_its_ports() {
    let pages: Vec<Box<Page>> = (0..5).map(|_| page()).collect();
    let mem = RegisteredFifo::<1>::new(3000, 1);
    for p in &pages[..3] {
        mem.expand_array(p).unwrap();
    }
    // 3000 ports fit in 3 pages: a fourth is refused and changes nothing.
    assert_eq!(mem.expand_array(&pages[3]), Err(Error::PortOutOfRange));
    assert_eq!(mem.registered_pages(), 3);
    assert!(mem.event_word(2999).is_some());
    assert!(mem.event_word(3000).is_none());
    assert_eq!(mem.expand(3000), Err(Error::PortOutOfRange));

    // A full array: NR_CHANNELS / 1024 = 128 pages, no more.
    let all: Vec<Box<Page>> = (0..129).map(|_| page()).collect();
    let full = RegisteredFifo::<1>::new(u32::MAX, 1);
    assert_eq!(full.max_ports(), 1 << 17);
    for p in &all[..128] {
        full.expand_array(p).unwrap();
    }
    assert_eq!(full.expand_array(&all[128]), Err(Error::PortOutOfRange));
    assert!(std::ptr::eq(
        full.event_word((1 << 17) - 1).unwrap(),
        &all[127][1023]
    ));
}

#[test]
fn fifo_control_blocks_are_registered_once_per_vcpu() {
    let page0 = page();
    let cbs: Vec<ControlBlock> = (0..3).map(|_| ControlBlock::new()).collect();
    let infos = vcpu_infos(3);
    let mem = RegisteredFifo::<4>::new(1024, 2);
    mem.expand_array(&page0).unwrap();
    let fifo = Fifo::new(&mem);

    // No control block yet: out of range for the deliver side; a raise for
    // it leaves the event pending, unlinked, and notifies nobody.
    assert_eq!(fifo.upcall_pending(1), Err(Error::VcpuOutOfRange));
    assert_eq!(
        take(&fifo, 1, &mut FifoCursor::default()),
        Err(Error::VcpuOutOfRange)
    );
    assert_eq!(
        fifo.set_pending(3, || 1),
        Ok(Raised::Notified {
            vcpu: 1,
            kick: false
        })
    );
    assert_eq!(page0[3].load(SeqCst), PENDING);

    mem.init_control(1, &cbs[1], &infos[1]).unwrap();
    assert!(mem.has_control_block(1) && !mem.has_control_block(0));
    // The event raised before is linked by a raise again (a hypervisor's
    // unmask or re-raise).
    assert_eq!(fifo.reraise(3, || 1), Ok(Some(1)));
    assert_eq!(take(&fifo, 1, &mut FifoCursor::default()), Ok(vec![3]));

    // A second registration is refused and changes nothing.
    let before = snapshot_fifo(&[&page0], &cbs, &infos);
    assert_eq!(
        mem.init_control(1, &cbs[2], &infos[2]),
        Err(Error::VcpuOutOfRange)
    );
    assert_eq!(snapshot_fifo(&[&page0], &cbs, &infos), before);
    assert!(std::ptr::eq(mem.control_block(1).unwrap(), &cbs[1]));
    assert!(std::ptr::eq(mem.vcpu_info(1).unwrap(), &*infos[1]));
    // Beyond the vCPUs.
    assert_eq!(
        mem.init_control(2, &cbs[2], &infos[2]),
        Err(Error::VcpuOutOfRange)
    );
    assert!(mem.control_block(2).is_none());
}

#[test]
fn control_plane_binds_only_ports_on_registered_pages() {
    let pages: Vec<Box<Page>> = (0..2).map(|_| page()).collect();
    let cb = ControlBlock::new();
    let info = VcpuInfo::new();
    let mem = RegisteredFifo::<1>::new(2048, 1);
    mem.expand_array(&pages[0]).unwrap();
    mem.init_control(0, &cb, &info).unwrap();
    let ch = Channels::new(Fifo::new(&mem), ());
    // Ports 1..1024 are on page 0; the next bind needs page 1.
    let ports: Vec<_> = (1..1024)
        .map(|_| ch.bind(Bind::Affinity(0)).unwrap())
        .collect();
    assert_eq!(ports.last().unwrap().number(), 1023);
    assert_eq!(ch.bind(Bind::Affinity(0)), Err(Error::NoFreePort));
    mem.expand_array(&pages[1]).unwrap();
    let port = ch.bind(Bind::Affinity(0)).unwrap();
    assert_eq!(port.number(), 1024);
    ch.send(port).unwrap();
    ch.send(ports[10]).unwrap();
    let mut seen = Vec::new();
    ch.vcpu(0)
        .unwrap()
        .upcall(|p| seen.push(p.number()))
        .unwrap();
    assert_eq!(seen, [1024, 11]);
}

/// Raisers on every port of an event array whose pages another thread
/// registers meanwhile, and a deliverer scanning: a raise is refused
/// (`PortOutOfRange`, retried later) until its page is there, and every
/// raise that returned `Ok` is delivered exactly once.
#[test]
fn page_registration_while_raising_and_scanning_loses_nothing() {
    const VCPUS: u32 = 4;
    const PAGES: usize = 8;
    const PORTS: u32 = PAGES as u32 * 1024;
    const RAISERS: u32 = 2;
    for round in 0..4u32 {
        let pages: Vec<Box<Page>> = (0..PAGES).map(|_| page()).collect();
        let cbs: Vec<ControlBlock> = (0..VCPUS).map(|_| ControlBlock::new()).collect();
        let infos = vcpu_infos(VCPUS as usize);
        let mem = RegisteredFifo::<{ VCPUS as usize }>::new(PORTS, VCPUS);
        for v in 0..VCPUS {
            mem.init_control(v, &cbs[v as usize], &infos[v as usize])
                .unwrap();
        }
        let fifo = Fifo::new(&mem);
        let delivered: Vec<AtomicU32> = (0..PORTS).map(|_| AtomicU32::new(0)).collect();
        let raised: Vec<AtomicU32> = (0..PORTS).map(|_| AtomicU32::new(0)).collect();
        let refused = AtomicU32::new(0);
        let refused_on: Vec<AtomicU32> = (0..PAGES).map(|_| AtomicU32::new(0)).collect();
        let stop = AtomicBool::new(false);
        thread::scope(|s| {
            // A failed check below stops the looping threads (or the scope hangs).
            let _stop = StopOnDrop([&stop]);
            let deliverer = s.spawn(|| {
                let mut cursors = vec![FifoCursor::default(); VCPUS as usize];
                let sweep = |cursors: &mut [FifoCursor]| {
                    let mut any = false;
                    for v in 0..VCPUS {
                        if fifo.upcall_pending(v) == Ok(true) {
                            any = true;
                            for p in take(&fifo, v, &mut cursors[v as usize]).unwrap() {
                                delivered[p as usize].fetch_add(1, SeqCst);
                            }
                        }
                    }
                    any
                };
                while !stop.load(SeqCst) {
                    if !sweep(&mut cursors) {
                        thread::yield_now();
                    }
                }
                while sweep(&mut cursors) {}
            });
            // Each page is registered only once a raise on it was refused,
            // so every round runs raises against missing pages (left to
            // timing, a registrar that outran the raisers registered every
            // page before a raise reached it, and nothing was refused).
            let registrar = s.spawn(|| {
                for (i, p) in pages.iter().enumerate() {
                    while refused_on[i].load(SeqCst) == 0 && !stop.load(SeqCst) {
                        thread::yield_now();
                    }
                    for _ in 0..round * 100 {
                        thread::yield_now();
                    }
                    mem.expand_array(p).unwrap();
                }
            });
            let raisers: Vec<_> = (0..RAISERS)
                .map(|r| {
                    let (fifo, raised, refused, refused_on) =
                        (&fifo, &raised, &refused, &refused_on);
                    s.spawn(move || {
                        let mut left: Vec<u32> = (1..PORTS).filter(|p| p % RAISERS == r).collect();
                        while !left.is_empty() {
                            left.retain(|&p| {
                                let target = (p + round) % VCPUS;
                                match fifo.set_pending(p, || target) {
                                    Ok(Raised::Notified { vcpu, .. }) => {
                                        assert_eq!(vcpu, target);
                                        raised[p as usize].fetch_add(1, SeqCst);
                                        false
                                    }
                                    Err(Error::PortOutOfRange) => {
                                        refused.fetch_add(1, SeqCst);
                                        refused_on[(p / 1024) as usize].fetch_add(1, SeqCst);
                                        true
                                    }
                                    other => panic!("port {p}: {other:?}"),
                                }
                            });
                            thread::yield_now();
                        }
                    })
                })
                .collect();
            for r in raisers {
                r.join().unwrap();
            }
            registrar.join().unwrap();
            stop.store(true, SeqCst);
            deliverer.join().unwrap();
        });
        for (i, r) in refused_on.iter().enumerate() {
            assert!(
                r.load(SeqCst) > 0,
                "round {round}: no raise met page {i} missing"
            );
        }
        for p in 1..PORTS as usize {
            assert_eq!(raised[p].load(SeqCst), 1);
            assert_eq!(
                delivered[p].load(SeqCst),
                1,
                "round {round}: port {p} delivered {} times",
                delivered[p].load(SeqCst)
            );
        }
        for page in &pages {
            assert!(page.iter().all(|w| w.load(SeqCst) == 0));
        }
    }
}
