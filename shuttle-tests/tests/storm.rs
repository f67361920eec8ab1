//! Randomized schedules of the storm (see `harness`): 8 vCPUs, 64 ports,
//! two senders and a control thread (set_affinity, set_online, rebalance,
//! close and bind again, late EOI, upcall budgets), on both ABIs, under
//! shuttle's PCT (depth 3) and random schedulers.
//!
//! `EVTCHN_SHUTTLE_ITERATIONS` sets the schedules per test (short by
//! default); run them with `cargo test -p shuttle-tests`.

mod harness;

use harness::{pct, random, storm, FifoAbi, TwoL};

#[test]
fn twolevel_pct() {
    pct("twolevel_pct", || storm::<TwoL>(None));
}

#[test]
fn twolevel_random() {
    random("twolevel_random", || storm::<TwoL>(None));
}

#[test]
fn fifo_pct() {
    pct("fifo_pct", || storm::<FifoAbi>(None));
}

#[test]
fn fifo_random() {
    random("fifo_random", || storm::<FifoAbi>(None));
}
