//! Delivery policy: which vCPU a new port is bound to, which vCPUs are
//! online, and how hot ports are moved off an overloaded vCPU.
//!
//! Everything here runs under the control-plane lock and never on the send
//! path. The rebalancing plan is a pure function of per-vCPU loads and
//! per-port event counts, so it is tested deterministically.

use alloc::vec::Vec;

/// How `bind(Bind::Auto)` picks the vCPU of a new port.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Policy {
    /// vCPU 0, as Xen binds interdomain and pirq channels (the first online
    /// vCPU if vCPU 0 is offline).
    #[default]
    Vcpu0,
    /// Online vCPUs in turn, as Linux's user-space event-channel driver did.
    RoundRobin,
    /// The online vCPU with the fewest bound ports, as Linux does now (ties:
    /// the lowest-numbered).
    LeastLoaded,
}

/// A move the rebalancer made: `port` from vCPU `from` to vCPU `to`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Move {
    /// The port moved.
    pub port: crate::Port,
    /// Its vCPU before.
    pub from: u32,
    /// Its vCPU after.
    pub to: u32,
}

/// Plans moves that even out the load: repeatedly take the busiest and the
/// least busy online vCPU and move the busiest's hottest port that makes
/// the pair more even (the moved load `d` must satisfy `d < busiest - idlest`,
/// so the maximum strictly drops), at most `max_moves` times. It stops once
/// the busiest and the least busy differ by at most an eighth of the mean
/// load: loads that even are noise, and moving ports for noise only churns.
///
/// `loads[v]` is vCPU `v`'s load (`None` when offline); `ports` lists
/// `(port number, vCPU, load)` of the candidate ports. Returns
/// `(port number, from, to)` triples. Deterministic: ties go to the lowest
/// vCPU and port numbers.
#[must_use]
pub fn plan_rebalance(
    loads: &[Option<u64>],
    ports: &[(u32, u32, u64)],
    max_moves: usize,
) -> Vec<(u32, u32, u32)> {
    let mut loads: Vec<Option<u64>> = loads.to_vec();
    let mut ports: Vec<(u32, u32, u64)> = ports.to_vec();
    let (sum, online) = loads.iter().flatten().fold((0u64, 0u64), |(s, n), &l| {
        (s.saturating_add(l), n.saturating_add(1))
    });
    // An eighth of the mean; no online vCPU: nothing to plan.
    let tolerance = sum.checked_div(online).unwrap_or(0) / 8;
    let mut moves = Vec::new();
    while moves.len() < max_moves {
        let online = || {
            (0u32..)
                .zip(loads.iter())
                .filter_map(|(v, l)| l.map(|l| (v, l)))
        };
        let Some((busy, busy_load)) = online().max_by_key(|&(v, l)| (l, core::cmp::Reverse(v)))
        else {
            break;
        };
        let Some((idle, idle_load)) = online().min_by_key(|&(v, l)| (l, v)) else {
            break;
        };
        if busy == idle {
            break;
        }
        let gap = busy_load.saturating_sub(idle_load);
        if gap <= tolerance {
            break;
        }
        // The hottest port of the busiest vCPU whose move narrows the gap.
        let best = ports
            .iter()
            .enumerate()
            .filter(|(_, &(_, v, d))| v == busy && d > 0 && d < gap)
            .max_by_key(|(_, &(n, _, d))| (d, core::cmp::Reverse(n)))
            .map(|(i, _)| i);
        let Some(i) = best else { break };
        let Some(p) = ports.get_mut(i) else { break };
        let (number, _, d) = *p;
        p.1 = idle;
        // d < gap: neither load wraps; saturating only says so.
        if let Some(Some(l)) = loads.get_mut(busy as usize) {
            *l = l.saturating_sub(d);
        }
        if let Some(Some(l)) = loads.get_mut(idle as usize) {
            *l = l.saturating_add(d);
        }
        moves.push((number, busy, idle));
    }
    moves
}
