//! The guest control plane's lock-guarded state, beside the code that
//! guards it: the policy, which vCPUs are online, the bound-port counts,
//! and the late-EOI and rebalance bookkeeping.

use alloc::boxed::Box;

use crate::policy::Policy;

/// State of the control plane guarded by its lock.
pub(super) struct Plane {
    pub(super) policy: Policy,
    /// Next vCPU for round-robin.
    pub(super) rr_next: u32,
    pub(super) online: Box<[bool]>,
    /// Bound ports per vCPU.
    pub(super) bound: Box<[u32]>,
    /// Per port: spurious late EOIs in a row.
    pub(super) spurious: Box<[u8]>,
    /// Per port: the event count at the last rebalance.
    pub(super) last_count: Box<[u32]>,
}

impl Plane {
    pub(super) fn new(ports: usize, vcpus: usize) -> Self {
        Plane {
            policy: Policy::default(),
            rr_next: 0,
            online: (0..vcpus).map(|_| true).collect(),
            bound: (0..vcpus).map(|_| 0).collect(),
            spurious: (0..ports).map(|_| 0).collect(),
            last_count: (0..ports).map(|_| 0).collect(),
        }
    }

    pub(super) fn is_online(&self, vcpu: u32) -> bool {
        self.online.get(vcpu as usize).copied().unwrap_or(false)
    }

    /// The vCPU the policy picks for a new port, skipping `except`.
    pub(super) fn pick(&mut self, except: Option<u32>) -> Option<u32> {
        // One entry per vCPU, and vCPU numbers are u32.
        let n = u32::try_from(self.online.len()).unwrap_or(u32::MAX);
        let ok = |p: &Plane, v: u32| p.is_online(v) && Some(v) != except;
        match self.policy {
            Policy::Vcpu0 => (0..n).find(|&v| ok(self, v)),
            Policy::RoundRobin => {
                let start = self.rr_next;
                let v = (0..n)
                    .filter_map(|i| start.wrapping_add(i).checked_rem(n))
                    .find(|&v| ok(self, v))?;
                self.rr_next = v.wrapping_add(1).checked_rem(n).unwrap_or(0);
                Some(v)
            }
            Policy::LeastLoaded => (0..n)
                .filter(|&v| ok(self, v))
                .min_by_key(|&v| (self.bound.get(v as usize).copied().unwrap_or(0), v)),
        }
    }

    pub(super) fn bound_moved(&mut self, from: Option<u32>, to: Option<u32>) {
        if let Some(c) = from.and_then(|v| self.bound.get_mut(v as usize)) {
            *c = c.saturating_sub(1);
        }
        if let Some(c) = to.and_then(|v| self.bound.get_mut(v as usize)) {
            *c = c.saturating_add(1);
        }
    }
}
