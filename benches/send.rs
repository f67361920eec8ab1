//! Send fast path beside its physical floor, in one criterion run.
//!
//! * `send/fresh` — a raise that finds pending, selector and upcall flag
//!   clear (the benchmark re-arms them with one upcall per iteration; the
//!   floor does the same with plain stores).
//! * `send/coalesced` — a send to a port already pending, beside one
//!   `fetch_or` on a word (the floor of a coalesced send).
//!
//! Report ratios of the two rows of each group, not absolute times.

use std::hint::black_box;
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering::*};

use criterion::{criterion_group, criterion_main, Criterion};
use evtchn::{Bind, Channels, OwnedMemory, TwoLevel};

/// The bare atomic sequence a fresh 2-level raise must execute.
struct Floor {
    pending: AtomicU64,
    mask: AtomicU64,
    sel: AtomicU64,
    upcall: AtomicU8,
}

impl Floor {
    #[inline(never)]
    fn raise(&self, bit: u64) -> bool {
        if self.pending.fetch_or(bit, SeqCst) & bit != 0 {
            return false;
        }
        if self.mask.load(SeqCst) & bit != 0 {
            return false;
        }
        if self.sel.fetch_or(1, AcqRel) & 1 != 0 {
            return false;
        }
        self.upcall.swap(1, AcqRel) == 0
    }

    fn rearm(&self) {
        self.pending.store(0, Relaxed);
        self.sel.store(0, Relaxed);
        self.upcall.store(0, Relaxed);
    }
}

fn send(c: &mut Criterion) {
    let ch = Channels::new(TwoLevel::new(OwnedMemory::new(64, 2)), ());
    let port = ch.bind(Bind::Affinity(1)).expect("bind");
    let mut vcpu = ch.vcpu(1).expect("vcpu");
    let floor = Floor {
        pending: AtomicU64::new(0),
        mask: AtomicU64::new(0),
        sel: AtomicU64::new(0),
        upcall: AtomicU8::new(0),
    };

    let mut g = c.benchmark_group("send/fresh");
    g.bench_function("floor+rearm", |b| {
        b.iter(|| {
            black_box(floor.raise(black_box(2)));
            floor.rearm();
        })
    });
    g.bench_function("evtchn+upcall", |b| {
        b.iter(|| {
            ch.send(black_box(port)).expect("send");
            vcpu.upcall(|p| {
                black_box(p);
            })
            .expect("upcall");
        })
    });
    g.finish();

    ch.send(port).expect("send");
    floor.pending.store(2, Relaxed);
    let mut g = c.benchmark_group("send/coalesced");
    g.bench_function("floor fetch_or", |b| {
        b.iter(|| black_box(floor.pending.fetch_or(black_box(2), SeqCst)))
    });
    g.bench_function("evtchn", |b| b.iter(|| ch.send(black_box(port))));
    g.finish();
}

criterion_group!(benches, send);
criterion_main!(benches);
