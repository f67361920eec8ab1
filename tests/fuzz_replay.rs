//! The cargo-fuzz targets' bodies on stable, so that CI exercises them
//! without nightly: each replays its committed regression corpus
//! (`tests/fuzz-corpus/<target>/`, every crash ever found plus a minimised
//! coverage corpus) and a few thousand seeded pseudo-random inputs.
//!
//! The negative tests run the same inputs against a deliberately wrong
//! reference model, or a simulated core bug, and must fail: a comparison
//! that cannot fail proves nothing.
//!
//! To replay one input: `EVTCHN_FUZZ_INPUT=path cargo test --test
//! fuzz_replay one_input -- --ignored --nocapture` (the target is the
//! input's parent directory name, `ops`, `guest_memory`, `fifo_memory` or
//! `domains`).
// Native tests; under RUSTFLAGS="--cfg loom" only the models run.
#![cfg(not(loom))]

use std::path::{Path, PathBuf};

use evtchn_test_support::fuzz::{domains, fifo_memory, guest_memory, ops, seeded_input};

/// Seeded inputs per target. Miri runs about a thousand times slower: there
/// only the corpus's crash inputs run (see `corpus`), and every input is cut
/// to `MIRI_LEN`.
const SEEDED: u64 = if cfg!(miri) { 4 } else { 3000 };

/// Under Miri, the bytes of an input that are used (the rest decodes to
/// more of the same operations, which run natively).
const MIRI_LEN: usize = 64;

/// The input as replayed: whole natively, its start under Miri.
fn cut(data: &[u8]) -> &[u8] {
    if cfg!(miri) {
        &data[..data.len().min(MIRI_LEN)]
    } else {
        data
    }
}

/// The committed inputs of `target`, in name order (under Miri, the crash
/// inputs only).
fn corpus(target: &str) -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fuzz-corpus")
        .join(target);
    let mut names: Vec<String> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert!(
        !names.is_empty(),
        "empty regression corpus {}",
        dir.display()
    );
    if cfg!(miri) {
        // Only the crash inputs: the coverage corpus runs natively, and
        // Miri's share of the bodies is in the seeded inputs.
        names.retain(|n| n.starts_with("crash-"));
    }
    // Names, not paths: comparing paths is slow under Miri.
    names.sort_unstable();
    names.into_iter().map(|n| dir.join(n)).collect()
}

/// Names the input a panic came from.
struct Naming(String);

impl Drop for Naming {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("failing input: {}", self.0);
        }
    }
}

fn replay_corpus(target: &str, body: impl Fn(&[u8])) {
    for path in corpus(target) {
        let data = std::fs::read(&path).unwrap();
        let _name = Naming(path.display().to_string());
        body(cut(&data));
    }
}

fn replay_seeded(target: &str, body: impl Fn(&[u8])) {
    for seed in 0..SEEDED {
        // Lengths from empty to long enough to exhaust the op budget.
        let len = (seed as usize).wrapping_mul(7919) % 1200;
        let _name = Naming(format!("{target} seeded_input({seed}, {len})"));
        let mut data = seeded_input(seed, len);
        if cfg!(miri) && data.len() >= 2 {
            // The few Miri runs take every combination of the first two
            // choices (guest_memory: the backend, with the unsafe overlay,
            // and the mode).
            data[0] = (seed & 1) as u8;
            data[1] = (seed >> 1 & 1) as u8;
        }
        body(cut(&data));
    }
}

#[test]
fn ops_regression_corpus() {
    replay_corpus("ops", ops::run);
}

#[test]
fn ops_seeded_inputs() {
    replay_seeded("ops", ops::run);
}

#[test]
fn guest_memory_regression_corpus() {
    replay_corpus("guest_memory", guest_memory::run);
}

#[test]
fn guest_memory_seeded_inputs() {
    replay_seeded("guest_memory", guest_memory::run);
}

#[test]
fn domains_regression_corpus() {
    replay_corpus("domains", domains::run);
}

#[test]
fn domains_seeded_inputs() {
    replay_seeded("domains", domains::run);
}

#[test]
fn fifo_memory_regression_corpus() {
    replay_corpus("fifo_memory", fifo_memory::run);
}

#[test]
fn fifo_memory_seeded_inputs() {
    replay_seeded("fifo_memory", fifo_memory::run);
}

/// Every ABI the `ops` target knows is reached by the first input byte.
#[test]
fn ops_reaches_every_abi() {
    for b in 0..ops::Abi::ALL.len() as u8 {
        ops::run(&[b, 0, 0, 3, 0, 0, 12]);
    }
}

/// Replays the input named by `EVTCHN_FUZZ_INPUT`, to debug a crash:
/// `EVTCHN_FUZZ_INPUT=path cargo test --test fuzz_replay one_input --
/// --ignored --nocapture`.
#[test]
#[ignore = "a tool: replays the input named by EVTCHN_FUZZ_INPUT"]
fn one_input() {
    let path =
        std::env::var_os("EVTCHN_FUZZ_INPUT").expect("set EVTCHN_FUZZ_INPUT to an input file");
    let path = PathBuf::from(path);
    let data = std::fs::read(&path).unwrap();
    let target = path.parent().and_then(Path::file_name).unwrap();
    match target.to_str() {
        Some("guest_memory") => guest_memory::run(&data),
        Some("fifo_memory") => fifo_memory::run(&data),
        Some("domains") => domains::run(&data),
        _ => ops::run(&data),
    }
}

// ---------------------------------------------------------------------------
// Negative tests: the checks fail on a wrong model or a broken core
// ---------------------------------------------------------------------------

fn ops_sabotaged(s: ops::Sabotage) {
    let body = |d: &[u8]| ops::run_with(d, Some(s));
    replay_corpus("ops", body);
    replay_seeded("ops", body);
}

fn guest_memory_sabotaged(s: guest_memory::Sabotage) {
    let body = |d: &[u8]| guest_memory::run_with(d, Some(s));
    replay_corpus("guest_memory", body);
    replay_seeded("guest_memory", body);
}

#[test]
#[cfg_attr(miri, ignore = "needs many inputs; the same code runs natively")]
#[should_panic(expected = "ops:")]
fn ops_catches_a_model_without_the_xen_bind_event() {
    ops_sabotaged(ops::Sabotage::XenCompatBindRaisesNothing);
}

#[test]
#[cfg_attr(miri, ignore = "needs many inputs; the same code runs natively")]
#[should_panic(expected = "ops:")]
fn ops_catches_a_model_whose_unmask_forgets_pending() {
    ops_sabotaged(ops::Sabotage::UnmaskForgetsPending);
}

#[test]
#[cfg_attr(miri, ignore = "needs many inputs; the same code runs natively")]
#[should_panic(expected = "ops:")]
fn ops_catches_a_model_that_frees_a_closing_port() {
    ops_sabotaged(ops::Sabotage::CloseIgnoresInFlight);
}

#[test]
#[cfg_attr(miri, ignore = "needs many inputs; the same code runs natively")]
#[should_panic(expected = "ops:")]
fn ops_catches_a_fifo_model_without_priorities() {
    ops_sabotaged(ops::Sabotage::FifoIgnoresPriority);
}

#[test]
#[cfg_attr(miri, ignore = "needs many inputs; the same code runs natively")]
#[should_panic(expected = "ops:")]
fn ops_catches_a_budget_model_that_drops_the_selector() {
    ops_sabotaged(ops::Sabotage::BudgetDropsSelector);
}

/// The subtle one: only a 2-level upcall that runs out of budget after
/// offering a whole word of a pass over several words tells the two apart.
#[test]
#[cfg_attr(miri, ignore = "needs many inputs; the same code runs natively")]
#[should_panic(expected = "ops:")]
fn ops_catches_a_budget_model_that_gives_back_unoffered_words_only() {
    ops_sabotaged(ops::Sabotage::BudgetGivesBackUnoffered);
}

#[test]
#[cfg_attr(miri, ignore = "needs many inputs; the same code runs natively")]
#[should_panic(expected = "ops:")]
fn ops_catches_a_fifo_budget_model_that_keeps_its_queues() {
    ops_sabotaged(ops::Sabotage::BudgetKeepsQueues);
}

#[test]
#[cfg_attr(miri, ignore = "needs many inputs; the same code runs natively")]
// Caught as a write outside A's words (B's page is in the same buffer) or
// as a change of B's state.
#[should_panic(expected = "guest_memory:")]
fn guest_memory_catches_a_write_to_the_other_domain() {
    guest_memory_sabotaged(guest_memory::Sabotage::TouchOtherDomain);
}

#[test]
#[cfg_attr(miri, ignore = "needs many inputs; the same code runs natively")]
#[should_panic(expected = "guest_memory:")]
fn guest_memory_catches_a_foreign_selector_write() {
    guest_memory_sabotaged(guest_memory::Sabotage::ForeignSelector);
}

fn fifo_memory_sabotaged(s: fifo_memory::Sabotage) {
    let body = |d: &[u8]| fifo_memory::run_with(d, Some(s));
    replay_corpus("fifo_memory", body);
    replay_seeded("fifo_memory", body);
}

#[test]
#[cfg_attr(miri, ignore = "needs many inputs; the same code runs natively")]
#[should_panic(expected = "fifo_memory:")]
fn fifo_memory_catches_a_write_to_the_other_domain() {
    fifo_memory_sabotaged(fifo_memory::Sabotage::TouchOtherDomain);
}

#[test]
#[cfg_attr(miri, ignore = "needs many inputs; the same code runs natively")]
#[should_panic(expected = "fifo_memory:")]
fn fifo_memory_catches_a_stray_ready_bit() {
    fifo_memory_sabotaged(fifo_memory::Sabotage::StrayReadyBit);
}

fn domains_sabotaged(s: domains::Sabotage) {
    let body = |d: &[u8]| domains::run_with(d, Some(s));
    replay_corpus("domains", body);
    replay_seeded("domains", body);
}

#[test]
#[cfg_attr(miri, ignore = "needs many inputs; the same code runs natively")]
#[should_panic(expected = "domains:")]
fn domains_catches_a_model_without_the_conservative_event() {
    domains_sabotaged(domains::Sabotage::ConservativeBindRaisesNothing);
}

#[test]
#[cfg_attr(miri, ignore = "needs many inputs; the same code runs natively")]
#[should_panic(expected = "domains:")]
fn domains_catches_a_model_whose_atomic_bind_forgets_the_dropped_send() {
    domains_sabotaged(domains::Sabotage::AtomicBindIgnoresDropped);
}

#[test]
#[cfg_attr(miri, ignore = "needs many inputs; the same code runs natively")]
#[should_panic(expected = "domains:")]
fn domains_catches_a_model_that_moves_a_closed_peer() {
    domains_sabotaged(domains::Sabotage::ClosedPeerMovesToVcpu0);
}
