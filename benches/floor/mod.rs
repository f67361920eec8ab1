//! The hand-written baselines of the 2-level ABI — the physical floor of a
//! send and the hand scan of a drain — and the re-arming stores shared by
//! evtchn and the floor. Used by the benches and, through `#[path]`, by the
//! callgrind examples, so both measure the very same code.

#![allow(dead_code)]

use std::sync::atomic::Ordering::*;

use evtchn::abi::{VcpuInfo, XenUlong};
use evtchn::Memory2l;

/// The words one raise of `port` on `vcpu` touches, resolved once.
pub struct Words<'a> {
    pub pending: &'a XenUlong,
    pub mask: &'a XenUlong,
    pub vcpu: &'a VcpuInfo,
}

impl<'a> Words<'a> {
    pub fn of(mem: &'a impl Memory2l, port: u32, vcpu: u32) -> Self {
        let w = (port / 64) as usize;
        Words {
            pending: &mem.pending()[w],
            mask: &mem.mask()[w],
            vcpu: &mem.vcpu_info()[vcpu as usize],
        }
    }

    /// Re-arms a fresh raise: pending word, selector and upcall flag clear.
    /// Plain stores, the same for evtchn and the floor.
    #[inline(always)]
    pub fn rearm(&self) {
        self.pending.store(0, Relaxed);
        self.vcpu.evtchn_pending_sel.store(0, Relaxed);
        self.vcpu.evtchn_upcall_pending.store(0, Relaxed);
    }

    /// The physical floor of a fresh raise: the atomic sequence and nothing
    /// else, on addresses computed once (orderings as the 2-level ABI needs
    /// them). Returns whether to kick.
    #[inline(always)]
    pub fn floor_raise(&self, port: u32) -> bool {
        // Written as `1 << n`, so that the compiler may use `lock bts`, as
        // it does for the core.
        let bit = 1u64 << (port % 64);
        let sel = 1u64 << (port / 64);
        if self.pending.fetch_or(bit, SeqCst) & bit != 0 {
            return false;
        }
        if self.mask.load(SeqCst) & bit != 0 {
            return false;
        }
        if self.vcpu.evtchn_pending_sel.fetch_or(sel, AcqRel) & sel != 0 {
            return false;
        }
        self.vcpu.evtchn_upcall_pending.swap(1, AcqRel) == 0
    }

    /// The physical floor of a coalesced send: one `fetch_or` (a `lock
    /// bts`) that finds the bit already set. Returns the old bit (a `bool`
    /// would let the compiler turn the `lock bts` into a `cmpxchg` loop).
    #[inline(always)]
    pub fn floor_coalesce(&self, port: u32) -> u64 {
        let bit = 1u64 << (port % 64);
        self.pending.fetch_or(bit, SeqCst) & bit
    }
}

/// The one pending port of a `1 of 4096` drain (word 32).
pub const DRAIN_ONE: u32 = 32 * 64 + 1;

/// Re-arms a drain on `vi`: `DRAIN_ONE` pending, or every port but the
/// reserved port 0 (`all`); the selector bits and the upcall flag set.
/// Plain stores, the same for evtchn and the hand scan.
#[inline(always)]
pub fn rearm_drain(pending: &[XenUlong], vi: &VcpuInfo, all: bool) {
    if all {
        for (w, p) in pending.iter().enumerate() {
            p.store(if w == 0 { !1 } else { !0 }, Relaxed);
        }
        vi.evtchn_pending_sel.store(!0, Relaxed);
    } else {
        pending[(DRAIN_ONE / 64) as usize].store(1 << (DRAIN_ONE % 64), Relaxed);
        vi.evtchn_pending_sel.store(1 << (DRAIN_ONE / 64), Relaxed);
    }
    vi.evtchn_upcall_pending.store(1, Relaxed);
}

/// The hand-written two-level trailing-zeros scan: what a guest writes with
/// no control plane (Linux's `xen_evtchn_do_upcall` without its fairness).
/// Clear the upcall flag, swap the selector, for each selected word
/// `pending & !mask`, for each bit a `fetch_and` that clears it (the raiser
/// sets bits concurrently, so the clear must be atomic) and the handler;
/// again while the upcall flag was set meanwhile.
#[inline(never)]
pub fn hand_scan(
    pending: &[XenUlong],
    mask: &[XenUlong],
    vi: &VcpuInfo,
    mut each: impl FnMut(u32),
) {
    loop {
        vi.evtchn_upcall_pending.store(0, Relaxed);
        let mut sel = vi.evtchn_pending_sel.swap(0, AcqRel);
        while sel != 0 {
            let w = sel.trailing_zeros();
            sel &= sel - 1;
            let (p, m) = (&pending[w as usize], &mask[w as usize]);
            let mut bits = p.load(Acquire) & !m.load(Acquire);
            while bits != 0 {
                let b = bits.trailing_zeros();
                bits &= bits - 1;
                let bit = 1u64 << b;
                if p.fetch_and(!bit, AcqRel) & bit != 0 {
                    each(w * 64 + b);
                }
            }
        }
        if vi.evtchn_upcall_pending.load(Acquire) == 0 {
            return;
        }
    }
}
