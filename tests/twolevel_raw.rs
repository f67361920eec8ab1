//! The raw 2-level `PortOps` API used directly, as a hypervisor (raise side)
//! or a guest (deliver side) would, without the control plane: every
//! operation, typed errors for out-of-range ports and vCPUs, and hostile
//! memory contents (C7): arbitrary words in the pending, mask, selector and
//! upcall fields never make an operation panic, loop or touch memory outside
//! the port's own bits and the target vCPU's `vcpu_info`.
// Native tests; under RUSTFLAGS="--cfg loom" only the models run.
#![cfg(not(loom))]

use std::cell::Cell;
use std::sync::atomic::{AtomicU64, Ordering::SeqCst};

use evtchn::xen::{SharedInfo, VcpuInfo, XenUlong, BITS_PER_WORD};
use evtchn::{
    Bind, Channels, Delivery, Error, Memory2l, OwnedMemory, Raised, TwoLevel, TwoLevelCursor,
};
use evtchn::{Deliver, Ports, Raise};
use evtchn_test_support::Rng;

// ---------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------

/// Memory of any shape, including shapes `OwnedMemory` refuses to build.
struct Custom {
    pending: Vec<XenUlong>,
    mask: Vec<XenUlong>,
    vcpus: Vec<VcpuInfo>,
}

impl Custom {
    fn new(pending_words: usize, mask_words: usize, vcpus: usize) -> Self {
        Custom {
            pending: (0..pending_words).map(|_| AtomicU64::new(0)).collect(),
            mask: (0..mask_words).map(|_| AtomicU64::new(0)).collect(),
            vcpus: (0..vcpus).map(|_| VcpuInfo::new()).collect(),
        }
    }
}

impl Memory2l for Custom {
    fn pending(&self) -> &[XenUlong] {
        &self.pending
    }
    fn mask(&self) -> &[XenUlong] {
        &self.mask
    }
    fn vcpu_info(&self, vcpu: u32) -> Option<&VcpuInfo> {
        self.vcpus.get(vcpu as usize)
    }
    fn nr_vcpus(&self) -> u32 {
        self.vcpus.len() as u32
    }
}

/// The raw words of a memory: pending, mask, then per vCPU selector and
/// upcall flag.
#[derive(Debug, PartialEq, Clone)]
struct Raw {
    pending: Vec<u64>,
    mask: Vec<u64>,
    sel: Vec<u64>,
    flag: Vec<u8>,
}

fn raw<M: Memory2l>(m: &M) -> Raw {
    Raw {
        pending: m.pending().iter().map(|w| w.load(SeqCst)).collect(),
        mask: m.mask().iter().map(|w| w.load(SeqCst)).collect(),
        sel: (0..m.nr_vcpus())
            .filter_map(|v| m.vcpu_info(v))
            .map(|v| v.evtchn_pending_sel.load(SeqCst))
            .collect(),
        flag: (0..m.nr_vcpus())
            .filter_map(|v| m.vcpu_info(v))
            .map(|v| v.evtchn_upcall_pending.load(SeqCst))
            .collect(),
    }
}

fn scan_all<M: Memory2l>(ops: &TwoLevel<M>, v: u32, cursor: &mut TwoLevelCursor) -> Vec<u32> {
    let mut seen = Vec::new();
    ops.scan(
        v,
        cursor,
        |p| {
            seen.push(p);
            Delivery::Skipped
        },
        |_| {},
    )
    .unwrap();
    seen
}

/// A target closure that counts its calls.
fn counting(v: u32, calls: &Cell<u32>) -> impl FnOnce() -> u32 + '_ {
    move || {
        calls.set(calls.get() + 1);
        v
    }
}

/// Mostly extreme values: 0, all ones, single bits, random.
fn word(rng: &mut Rng) -> u64 {
    match rng.below(5) {
        0 => 0,
        1 => !0,
        2 => 1 << rng.below(64),
        _ => rng.next_u64(),
    }
}

// ---------------------------------------------------------------------------
// Sizes
// ---------------------------------------------------------------------------

#[test]
fn sizes_follow_the_memory() {
    for (words, vcpus) in [(1usize, 1usize), (2, 3), (64, 8)] {
        let ops = TwoLevel::new(OwnedMemory::new(words, vcpus));
        assert_eq!(ops.nr_ports(), words as u32 * BITS_PER_WORD);
        assert_eq!(ops.nr_vcpus(), vcpus as u32);
    }
    let si = TwoLevel::new(Box::new(SharedInfo::new()));
    assert_eq!((si.nr_ports(), si.nr_vcpus()), (4096, 32));
    // Mismatched lengths: only ports with both a pending and a mask word.
    let odd = TwoLevel::new(Custom::new(3, 2, 0));
    assert_eq!((odd.nr_ports(), odd.nr_vcpus()), (128, 0));
    // A fresh raw memory is all clear: nothing masked, nothing pending.
    let ops = TwoLevel::new(OwnedMemory::new(1, 1));
    for p in 0..64 {
        assert!(!ops.is_masked(p).unwrap() && !ops.is_pending(p).unwrap());
    }
}

// ---------------------------------------------------------------------------
// Raise side
// ---------------------------------------------------------------------------

#[test]
fn set_pending_sets_the_bits_and_kicks_on_the_flag_edge_only() {
    let ops = TwoLevel::new(OwnedMemory::new(2, 3));
    let calls = Cell::new(0);
    assert_eq!(
        ops.set_pending(5, counting(2, &calls)).unwrap(),
        Raised::Notified {
            vcpu: 2,
            kick: true
        }
    );
    assert_eq!(calls.get(), 1);
    let r = raw(ops.memory());
    assert_eq!(r.pending, [1 << 5, 0]);
    assert_eq!(r.sel, [0, 0, 1]);
    assert_eq!(r.flag, [0, 0, 1]);
    assert!(ops.is_pending(5).unwrap());
    assert!(ops.upcall_pending(2).unwrap());
    assert!(!ops.upcall_pending(0).unwrap() && !ops.upcall_pending(1).unwrap());

    // Coalesced: no kick, and the target is not even read.
    assert_eq!(
        ops.set_pending(5, counting(0, &calls)).unwrap(),
        Raised::Coalesced
    );
    assert_eq!(calls.get(), 1);
    assert_eq!(raw(ops.memory()), r);

    // Same word, selector already set: no kick.
    assert_eq!(
        ops.set_pending(6, counting(2, &calls)).unwrap(),
        Raised::Notified {
            vcpu: 2,
            kick: false
        }
    );
    // Other word: selector bit new, flag already up: no kick.
    assert_eq!(
        ops.set_pending(64 + 9, counting(2, &calls)).unwrap(),
        Raised::Notified {
            vcpu: 2,
            kick: false
        }
    );
    assert_eq!(calls.get(), 3);
    let r = raw(ops.memory());
    assert_eq!(r.pending, [1 << 5 | 1 << 6, 1 << 9]);
    assert_eq!(r.sel[2], 0b11);
    // Another vCPU: its own edge.
    assert_eq!(ops.set_pending(7, || 0).unwrap().kick(), Some(0));
    assert_eq!(raw(ops.memory()).sel, [1, 0, 0b11]);
}

#[test]
fn set_pending_on_a_masked_port_leaves_it_pending_and_raises_nothing() {
    let ops = TwoLevel::new(OwnedMemory::new(1, 2));
    ops.mask(3).unwrap();
    assert!(ops.is_masked(3).unwrap());
    assert!(!ops.is_masked(2).unwrap() && !ops.is_masked(4).unwrap());
    let calls = Cell::new(0);
    assert_eq!(
        ops.set_pending(3, counting(1, &calls)).unwrap(),
        Raised::Masked
    );
    assert_eq!(calls.get(), 0, "masked: the target is not read");
    let r = raw(ops.memory());
    assert_eq!(r.pending, [1 << 3]);
    assert_eq!(r.mask, [1 << 3]);
    assert_eq!((r.sel, r.flag), (vec![0, 0], vec![0, 0]));

    // Unmask raises on the target named at unmask time.
    assert_eq!(ops.unmask(3, counting(1, &calls)).unwrap(), Some(1));
    assert_eq!(calls.get(), 1);
    assert!(!ops.is_masked(3).unwrap());
    let r = raw(ops.memory());
    assert_eq!((&r.sel[..], &r.flag[..]), (&[0, 1][..], &[0, 1][..]));
    // Unmask of an unmasked port: nothing, target not read.
    assert_eq!(ops.unmask(3, counting(0, &calls)).unwrap(), None);
    assert_eq!(calls.get(), 1);
    assert_eq!(raw(ops.memory()), r);
}

#[test]
fn unmask_of_a_masked_port_that_is_not_pending_only_clears_the_mask() {
    let ops = TwoLevel::new(OwnedMemory::new(1, 1));
    ops.mask(9).unwrap();
    ops.mask(9).unwrap();
    let calls = Cell::new(0);
    assert_eq!(ops.unmask(9, counting(0, &calls)).unwrap(), None);
    assert_eq!(calls.get(), 0);
    let r = raw(ops.memory());
    assert_eq!(
        (r.pending, r.mask, r.sel, r.flag),
        (vec![0], vec![0], vec![0], vec![0])
    );
}

#[test]
fn reraise_raises_only_a_pending_unmasked_port() {
    let ops = TwoLevel::new(OwnedMemory::new(1, 2));
    let calls = Cell::new(0);
    // Not pending: nothing.
    assert_eq!(ops.reraise(4, counting(1, &calls)).unwrap(), None);
    assert_eq!(raw(ops.memory()).sel, [0, 0]);
    // Pending and masked: nothing.
    ops.mask(4).unwrap();
    ops.set_pending(4, || 1).unwrap();
    assert_eq!(ops.reraise(4, counting(1, &calls)).unwrap(), None);
    assert_eq!(raw(ops.memory()).sel, [0, 0]);
    assert_eq!(calls.get(), 0);
    // Pending, unmasked, selector clear: raised, pending untouched.
    ops.memory().mask()[0].store(0, SeqCst);
    assert_eq!(ops.reraise(4, counting(1, &calls)).unwrap(), Some(1));
    assert_eq!(calls.get(), 1);
    assert!(ops.is_pending(4).unwrap());
    assert_eq!(raw(ops.memory()).sel, [0, 1]);
    // Again: selector already set, no kick.
    assert_eq!(ops.reraise(4, || 1).unwrap(), None);
    // To another vCPU: that vCPU's edge.
    assert_eq!(ops.reraise(4, || 0).unwrap(), Some(0));
}

#[test]
fn clear_and_test_and_clear_pending_touch_only_their_bit() {
    let ops = TwoLevel::new(OwnedMemory::new(1, 1));
    ops.set_pending(1, || 0).unwrap();
    ops.set_pending(2, || 0).unwrap();
    ops.clear_pending(1).unwrap();
    assert!(!ops.is_pending(1).unwrap() && ops.is_pending(2).unwrap());
    assert!(ops.test_and_clear_pending(2).unwrap());
    assert!(!ops.test_and_clear_pending(2).unwrap());
    assert!(!ops.test_and_clear_pending(1).unwrap());
    let r = raw(ops.memory());
    assert_eq!(r.pending, [0]);
    // Neither touches the selector or flag (the deliverer owns them).
    assert_eq!((r.sel, r.flag), (vec![1], vec![1]));
}

#[test]
fn port_zero_is_an_ordinary_port_at_the_raw_layer() {
    // Port 0 is reserved by the control plane, not by the ABI.
    let ops = TwoLevel::new(OwnedMemory::new(1, 1));
    assert_eq!(ops.set_pending(0, || 0).unwrap().kick(), Some(0));
    assert_eq!(raw(ops.memory()).pending, [1]);
    assert_eq!(scan_all(&ops, 0, &mut TwoLevelCursor::default()), [0]);
}

// ---------------------------------------------------------------------------
// Deliver side
// ---------------------------------------------------------------------------

#[test]
fn scan_visits_pending_unmasked_ports_of_selected_words_and_clears_the_flag() {
    let ops = TwoLevel::new(OwnedMemory::new(3, 2));
    let mem = ops.memory();
    ops.set_pending(3, || 1).unwrap();
    ops.set_pending(130, || 1).unwrap();
    // Masked: pending but never visited.
    ops.mask(7).unwrap();
    ops.set_pending(7, || 1).unwrap();
    // Pending in word 1 but no selector bit for word 1: not visited.
    mem.pending()[1].fetch_or(1 << 2, SeqCst);
    // Raised on vCPU 0 in a word only vCPU 0 selects: not visited by vCPU 1.
    ops.set_pending(70, || 0).unwrap();
    // Raised on vCPU 0 in a word vCPU 1 also selects: the raw scan offers
    // it as a candidate (the binding is checked by `each`, i.e. by the
    // control plane's deliver step, not by the ABI).
    ops.set_pending(5, || 0).unwrap();

    let mut cur = TwoLevelCursor::default();
    let seen = scan_all(&ops, 1, &mut cur);
    assert_eq!(seen, [3, 5, 130]);
    assert!(!ops.upcall_pending(1).unwrap());
    let r = raw(mem);
    assert_eq!(r.sel[1], 0, "selector exchanged with 0");
    assert_eq!(r.flag[1], 0);
    assert_eq!((r.sel[0], r.flag[0]), (0b11, 1), "vCPU 0 untouched");
    // The scan itself clears no pending bit (the caller's each() does).
    for p in [3, 5, 7, 70, 130] {
        assert!(ops.is_pending(p).unwrap());
    }
    // vCPU 0 selects words 0 and 1: its scan also finds the bit written into
    // word 1 without a selector bit of its own (port 66).
    assert_eq!(
        scan_all(&ops, 0, &mut TwoLevelCursor::default()),
        [3, 5, 66, 70]
    );
    // Nothing flagged: a second scan visits nothing.
    assert!(scan_all(&ops, 1, &mut cur).is_empty());
}

#[test]
fn scan_repeats_while_the_upcall_flag_is_raised_again() {
    let ops = TwoLevel::new(OwnedMemory::new(1, 1));
    ops.set_pending(1, || 0).unwrap();
    let mut seen = Vec::new();
    let mut resends = 3;
    ops.scan(
        0,
        &mut TwoLevelCursor::default(),
        |p| {
            seen.push(p);
            ops.test_and_clear_pending(p).unwrap();
            if resends > 0 {
                resends -= 1;
                // The flag went 0 → 1 again: a kick each time.
                assert_eq!(ops.set_pending(p, || 0).unwrap().kick(), Some(0));
            }
            Delivery::Skipped
        },
        |_| {},
    )
    .unwrap();
    assert_eq!(seen, [1; 4]);
    assert!(!ops.upcall_pending(0).unwrap());
}

#[test]
fn scan_round_robin_resumes_after_the_last_port_visited() {
    let ops = TwoLevel::new(OwnedMemory::new(1, 1));
    let mut cur = TwoLevelCursor::default();
    let mut run = |ports: &[u32]| {
        for &p in ports {
            ops.set_pending(p, || 0).unwrap();
        }
        let mut seen = Vec::new();
        ops.scan(
            0,
            &mut cur,
            |p| {
                ops.test_and_clear_pending(p).unwrap();
                {
                    seen.push(p);
                    Delivery::Skipped
                }
            },
            |_| {},
        )
        .unwrap();
        seen
    };
    assert_eq!(run(&[10, 20]), [10, 20]);
    assert_eq!(run(&[10, 20, 30]), [30, 10, 20]);
    assert_eq!(run(&[10]), [10]);
    assert_eq!(run(&[30, 20, 10]), [20, 30, 10]);
}

// ---------------------------------------------------------------------------
// Out-of-range input: typed errors, nothing changed
// ---------------------------------------------------------------------------

#[test]
fn out_of_range_ports_are_typed_errors_and_change_nothing() {
    let ops = TwoLevel::new(OwnedMemory::new(1, 2));
    ops.set_pending(1, || 1).unwrap();
    ops.mask(2).unwrap();
    let before = raw(ops.memory());
    let calls = Cell::new(0);
    for p in [64u32, 65, 128, 4096, u32::MAX] {
        let e = Error::PortOutOfRange;
        assert_eq!(ops.set_pending(p, counting(0, &calls)), Err(e));
        assert_eq!(ops.unmask(p, counting(0, &calls)), Err(e));
        assert_eq!(ops.reraise(p, counting(0, &calls)), Err(e));
        assert_eq!(ops.clear_pending(p), Err(e));
        assert_eq!(ops.test_and_clear_pending(p), Err(e));
        assert_eq!(ops.is_pending(p), Err(e));
        assert_eq!(ops.mask(p), Err(e));
        assert_eq!(ops.is_masked(p), Err(e));
    }
    assert_eq!(calls.get(), 0);
    assert_eq!(raw(ops.memory()), before);
}

#[test]
fn out_of_range_vcpus_are_typed_errors_on_the_deliver_side() {
    let ops = TwoLevel::new(OwnedMemory::new(1, 2));
    ops.set_pending(1, || 1).unwrap();
    let before = raw(ops.memory());
    for v in [2u32, 3, u32::MAX] {
        assert_eq!(ops.upcall_pending(v), Err(Error::VcpuOutOfRange));
        let mut visited = false;
        assert_eq!(
            ops.scan(
                v,
                &mut TwoLevelCursor::default(),
                |_| {
                    visited = true;
                    Delivery::Skipped
                },
                |_| {}
            ),
            Err(Error::VcpuOutOfRange)
        );
        assert!(!visited);
    }
    assert_eq!(raw(ops.memory()), before);
}

/// The raise side names its target through a closure and does not return an
/// error for a bad one: the event is left pending and nobody is notified
/// (documented on `raise_selector`: the control plane never passes one).
#[test]
fn out_of_range_raise_target_leaves_the_event_pending_and_touches_no_vcpu() {
    let ops = TwoLevel::new(OwnedMemory::new(1, 2));
    // Reported as `Notified` without a kick, though no vCPU was touched.
    assert_eq!(ops.set_pending(4, || 2).unwrap().kick(), None);
    assert_eq!(ops.set_pending(5, || u32::MAX).unwrap().kick(), None);
    let r = raw(ops.memory());
    assert_eq!(r.pending, [1 << 4 | 1 << 5]);
    assert_eq!((r.sel, r.flag), (vec![0, 0], vec![0, 0]));
    ops.mask(4).unwrap();
    assert_eq!(ops.unmask(4, || 7).unwrap(), None);
    assert_eq!(ops.reraise(5, || 9).unwrap(), None);
    let r2 = raw(ops.memory());
    assert_eq!((r2.sel, r2.flag), (vec![0, 0], vec![0, 0]));
    // A later good target still raises it: nothing was lost.
    assert_eq!(ops.reraise(4, || 1).unwrap(), Some(1));
}

// ---------------------------------------------------------------------------
// Hostile memory (C7)
// ---------------------------------------------------------------------------

#[test]
fn selector_bits_for_words_that_do_not_exist_are_ignored() {
    let ops = TwoLevel::new(OwnedMemory::new(1, 1));
    let vi = ops.memory().vcpu_info(0).unwrap();
    vi.evtchn_pending_sel.store(!0, SeqCst);
    vi.evtchn_upcall_pending.store(1, SeqCst);
    ops.memory().pending()[0].store(1 << 17, SeqCst);
    let seen = scan_all(&ops, 0, &mut TwoLevelCursor::default());
    assert_eq!(seen, [17]);
    assert_eq!(vi.evtchn_pending_sel.load(SeqCst), 0);
    assert_eq!(vi.evtchn_upcall_pending.load(SeqCst), 0);
}

#[test]
fn all_ones_everywhere_never_panics_and_every_operation_returns() {
    let ops = TwoLevel::new(OwnedMemory::new(1, 2));
    let mem = ops.memory();
    let fill = || {
        mem.pending()[0].store(!0, SeqCst);
        mem.mask()[0].store(!0, SeqCst);
        for vi in (0..mem.nr_vcpus()).filter_map(|v| mem.vcpu_info(v)) {
            vi.evtchn_pending_sel.store(!0, SeqCst);
            vi.evtchn_upcall_pending.store(0xff, SeqCst);
            vi.evtchn_upcall_mask.store(0xff, SeqCst);
        }
    };
    fill();
    for p in 0..64 {
        assert_eq!(ops.set_pending(p, || 1).unwrap(), Raised::Coalesced);
        assert!(ops.is_pending(p).unwrap() && ops.is_masked(p).unwrap());
        assert_eq!(ops.reraise(p, || 1).unwrap(), None, "masked");
    }
    // Masked everywhere: the scan visits nothing and terminates.
    assert!(scan_all(&ops, 0, &mut TwoLevelCursor::default()).is_empty());
    // Unmask everything: a flag of 0xff is "already set" (no kick), and the
    // selector bit was set already.
    fill();
    for p in 0..64 {
        assert_eq!(ops.unmask(p, || 1).unwrap(), None);
    }
    // Now every port is pending and unmasked: one visit each, and it ends.
    let seen = scan_all(&ops, 1, &mut TwoLevelCursor::default());
    assert_eq!(seen.len(), 64);
    let mut sorted = seen.clone();
    sorted.sort_unstable();
    assert_eq!(sorted, (0..64).collect::<Vec<u32>>());
    assert!(!ops.upcall_pending(1).unwrap());
}

#[test]
fn random_hostile_words_never_break_the_raise_side() {
    // Random memory contents between random raw operations: nothing panics,
    // every result is Ok or a typed error for an out-of-range input, a kick
    // names the target exactly when its flag went 0 → 1, and an operation
    // on port p never changes another port's pending or mask bit, nor the
    // vCPU words of a vCPU other than its target.
    let ops = TwoLevel::new(Custom::new(2, 2, 3));
    let mem = ops.memory();
    let nr = ops.nr_ports();
    let mut rng = Rng::new(0x1234_5678_9abc_def1);
    // Miri runs about a thousand times slower.
    let steps = if cfg!(miri) { 1_000 } else { 20_000 };
    for _ in 0..steps {
        // The hostile party writes a few words.
        for _ in 0..rng.below(3) {
            match rng.below(4) {
                0 => mem.pending()[rng.below(2) as usize].store(word(&mut rng), SeqCst),
                1 => mem.mask()[rng.below(2) as usize].store(word(&mut rng), SeqCst),
                2 => mem.vcpus[rng.below(3) as usize]
                    .evtchn_pending_sel
                    .store(word(&mut rng), SeqCst),
                _ => mem.vcpus[rng.below(3) as usize]
                    .evtchn_upcall_pending
                    .store(word(&mut rng) as u8, SeqCst),
            }
        }
        let p = rng.below(u64::from(nr) + 8) as u32; // sometimes out of range
        let t = rng.below(4) as u32; // sometimes an out-of-range target
        let before = raw(mem);
        let kick = match rng.below(5) {
            0 => ops.set_pending(p, || t).map(Raised::kick),
            1 => ops.unmask(p, || t),
            2 => ops.reraise(p, || t),
            3 => ops.mask(p).map(|_| None),
            _ => ops.test_and_clear_pending(p).map(|_| None),
        };
        let after = raw(mem);
        if p >= nr {
            assert_eq!(kick, Err(Error::PortOutOfRange));
            assert_eq!(after, before);
            continue;
        }
        let kick = kick.unwrap();
        let (w, bit) = ((p / 64) as usize, 1u64 << (p % 64));
        for i in 0..2 {
            let keep = if i == w { !bit } else { !0 };
            assert_eq!(after.pending[i] & keep, before.pending[i] & keep);
            assert_eq!(after.mask[i] & keep, before.mask[i] & keep);
        }
        for v in 0..3usize {
            if v as u32 != t {
                assert_eq!(after.sel[v], before.sel[v], "foreign selector");
                assert_eq!(after.flag[v], before.flag[v], "foreign flag");
            } else {
                // Only the port's own word may be added to the selector.
                assert_eq!(after.sel[v] & !(1 << w), before.sel[v] & !(1 << w));
            }
        }
        let edge = (t as usize) < 3 && before.flag[t as usize] == 0 && after.flag[t as usize] == 1;
        assert_eq!(kick, edge.then_some(t), "kick iff the flag went 0 → 1");

        // Sometimes the guest scans: it must end, visiting only in-range,
        // pending, unmasked ports, each at most once per pass.
        if rng.below(8) == 0 {
            let v = rng.below(3) as u32;
            let mut visits = 0u32;
            ops.scan(
                v,
                &mut TwoLevelCursor::default(),
                |q| {
                    assert!(q < nr);
                    {
                        visits += 1;
                        Delivery::Skipped
                    }
                },
                |_| {},
            )
            .unwrap();
            assert!(visits <= nr, "one pass at most without re-raises");
            assert_eq!(mem.vcpus[v as usize].evtchn_upcall_pending.load(SeqCst), 0);
        }
    }
}

#[test]
fn mismatched_memory_lengths_are_bounded_by_the_shorter_array() {
    // 3 pending words but 2 mask words and 1 vCPU.
    let ops = TwoLevel::new(Custom::new(3, 2, 1));
    assert_eq!(ops.nr_ports(), 128);
    assert_eq!(ops.set_pending(130, || 0), Err(Error::PortOutOfRange));
    assert_eq!(ops.mask(130), Err(Error::PortOutOfRange));
    assert_eq!(ops.memory().pending[2].load(SeqCst), 0);
    // Hostile: the unreachable third pending word and its selector bit.
    ops.memory().pending[2].store(!0, SeqCst);
    ops.memory().vcpus[0]
        .evtchn_pending_sel
        .store(0b100, SeqCst);
    ops.memory().vcpus[0].evtchn_upcall_pending.store(1, SeqCst);
    assert!(scan_all(&ops, 0, &mut TwoLevelCursor::default()).is_empty());
}

#[test]
fn empty_memories_are_refused_cleanly_by_the_control_plane() {
    // No vCPU: nothing can be bound (every bind needs a vCPU).
    let ch = Channels::new(TwoLevel::new(Custom::new(1, 1, 0)), ());
    assert_eq!(ch.nr_vcpus(), 0);
    assert_eq!(ch.bind(Bind::XenCompat), Err(Error::VcpuOutOfRange));
    assert_eq!(ch.bind(Bind::Affinity(0)), Err(Error::VcpuOutOfRange));
    assert_eq!(ch.status(1).unwrap().state, evtchn::State::Free);
    assert_eq!(ch.upcall_pending(0), Err(Error::VcpuOutOfRange));
    // No word: no port.
    let ch = Channels::new(TwoLevel::new(Custom::new(0, 0, 2)), ());
    assert_eq!(ch.nr_ports(), 0);
    assert_eq!(ch.bind(Bind::Affinity(1)), Err(Error::NoFreePort));
    assert_eq!(ch.status(1), Err(Error::PortOutOfRange));
    let mut v = ch.vcpu(1).unwrap();
    ch.abi().memory().vcpus[1]
        .evtchn_pending_sel
        .store(!0, SeqCst);
    ch.abi().memory().vcpus[1]
        .evtchn_upcall_pending
        .store(1, SeqCst);
    assert_eq!(v.upcall(|_| panic!("no port exists")).unwrap(), 0);
}

/// `Memory2l` is a safe public trait and nothing limits its slices to Xen's
/// 64 words. With 65 words, `nr_ports()` is 4160, and a raise of port 4096
/// (word 64) computes the selector bit as `1u64 << 64`: a panic in debug
/// builds ("attempt to shift left with overflow"), and in release the shift
/// wraps to bit 0, so the selector names word 0 and the event is stranded.
#[test]
fn memory_with_more_than_64_words_is_clamped_or_refused() {
    let ops = TwoLevel::new(Custom::new(65, 65, 1));
    let p = 64 * 64; // word 64
    match ops.set_pending(p, || 0) {
        Err(e) => {
            assert_eq!(e, Error::PortOutOfRange);
            assert!(ops.nr_ports() <= p, "nr_ports admits a port it refuses");
        }
        Ok(_) => {
            let seen = scan_all(&ops, 0, &mut TwoLevelCursor::default());
            assert_eq!(seen, [p], "the raised event must be reachable");
        }
    }
}

// ---------------------------------------------------------------------------
// Over the real layout
// ---------------------------------------------------------------------------

#[test]
fn raw_ops_over_shared_info_use_xens_bit_positions() {
    let ops = TwoLevel::new(Box::new(SharedInfo::new()));
    let si: &SharedInfo = ops.memory();
    for (p, v) in [(0u32, 0u32), (63, 1), (64, 2), (4095, 31), (2049, 17)] {
        let (w, b) = ((p / 64) as usize, p % 64);
        let kick = ops.set_pending(p, || v).unwrap().kick();
        assert_eq!(kick, Some(v));
        assert_eq!(si.evtchn_pending[w].load(SeqCst), 1 << b, "port {p}");
        assert_eq!(
            si.vcpu_info[v as usize].evtchn_pending_sel.load(SeqCst),
            1 << w
        );
        assert_eq!(
            si.vcpu_info[v as usize].evtchn_upcall_pending.load(SeqCst),
            1
        );
        ops.mask(p).unwrap();
        assert_eq!(si.evtchn_mask[w].load(SeqCst), 1 << b);
        ops.memory().evtchn_mask[w].store(0, SeqCst);
        assert_eq!(scan_all(&ops, v, &mut TwoLevelCursor::default()), [p]);
        assert!(ops.test_and_clear_pending(p).unwrap());
        assert_eq!(si.evtchn_pending[w].load(SeqCst), 0);
        assert_eq!(si.vcpu_info[v as usize].evtchn_pending_sel.load(SeqCst), 0);
        assert_eq!(
            si.vcpu_info[v as usize].evtchn_upcall_pending.load(SeqCst),
            0
        );
    }
    assert_eq!(ops.set_pending(4096, || 0), Err(Error::PortOutOfRange));
    assert_eq!(ops.upcall_pending(32), Err(Error::VcpuOutOfRange));
}
