//! Memory. Not a timing: a counting global allocator (in this
//! bench binary only) measures
//!
//! * `static` — the bytes of each transport for 4096 ports and 8 vCPUs:
//!   evtchn's 2-level memory (pending, mask, 8 `vcpu_info`s) and port table;
//!   the queues' 8 queues and port → vCPU table (empty queues);
//! * `storm, draining` — the heap's peak growth during a storm of 10^6 sends
//!   to one port while the vCPU thread drains (the end-to-end set-up of
//!   `benches/e2e.rs`: same handler work, same idle protocol);
//! * `storm, vCPU stalled` — the same 10^6 sends while the vCPU thread does
//!   not run (it is started after the last send): the queues' worst case.
//!
//! The static size of the `Wake` (the vCPU thread's handle, the same for
//! all) is left out. It prints the figures and writes them for
//! `benches/report.py` (`benches/extra`).

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::*};
use std::thread;

mod extra;
mod transports;

use evtchn::{Channels, OwnedMemory, TwoLevel};
use transports::{wait_until, Crossbeam, Evtchn, MutexQueue, Transport, Wake, Work};

/// Counts live heap bytes and their peak.
struct Counting;

static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

// SAFETY: forwards every call to `System` unchanged; only counts.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: same contract as the caller's.
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            let now = LIVE.fetch_add(layout.size(), Relaxed) + layout.size();
            PEAK.fetch_max(now, Relaxed);
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: same contract as the caller's.
        unsafe { System.dealloc(ptr, layout) };
        LIVE.fetch_sub(layout.size(), Relaxed);
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: same contract as the caller's.
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            if new_size >= layout.size() {
                let now =
                    LIVE.fetch_add(new_size - layout.size(), Relaxed) + new_size - layout.size();
                PEAK.fetch_max(now, Relaxed);
            } else {
                LIVE.fetch_sub(layout.size() - new_size, Relaxed);
            }
        }
        p
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

const VCPUS: usize = 8;
const STORM: u64 = 1_000_000;
const HOT: u32 = 1;

/// Live bytes now; resets the peak to them.
fn mark() -> usize {
    let now = LIVE.load(Relaxed);
    PEAK.store(now, Relaxed);
    now
}

/// Bytes of the transport `make` builds: its heap plus its own size.
fn static_bytes<T>(make: impl FnOnce() -> T) -> (T, usize) {
    let before = mark();
    let t = make();
    (t, LIVE.load(Relaxed) - before + std::mem::size_of::<T>())
}

/// The heap's peak growth over a storm of `STORM` sends to port `HOT`;
/// the vCPU thread drains during the storm, or only after it (`stalled`).
fn storm<T: Transport>(t: &T, stalled: bool) -> usize {
    let work = Work::new();
    let stop = AtomicBool::new(false);
    let started = AtomicBool::new(!stalled);
    thread::scope(|s| {
        let vcpu = s.spawn(|| {
            wait_until(|| started.load(Acquire));
            t.vcpu_loop(&work, &stop)
        });
        // A vCPU thread that was never kicked yet parks once on its own.
        let _ = t.wake().0.set(vcpu.thread().clone());
        let before = mark();
        for seq in 1..=STORM {
            work.seq[HOT as usize].store(seq, Relaxed);
            t.send(HOT);
        }
        started.store(true, Release);
        t.wake().kick();
        wait_until(|| work.seen[HOT as usize].load(Acquire) == STORM);
        let peak = PEAK.load(Relaxed) - before;
        stop.store(true, Release);
        t.wake().kick();
        vcpu.join().expect("vCPU thread");
        peak
    })
}

/// A fresh `Wake` for each transport built (its thread is set once).
fn wake() -> &'static Wake {
    Box::leak(Box::default())
}

/// Measures one transport; `bytes` is its static size (see `main`).
fn measure<T: Transport>(
    name: &str,
    bytes: usize,
    make: impl Fn(&'static Wake) -> T,
) -> extra::Record {
    let draining = storm(&make(wake()), false);
    let stalled = storm(&make(wake()), true);
    println!(
        "memory/{name:<18} static {bytes:>9} B   storm, draining +{draining:>10} B   \
         storm, vCPU stalled +{stalled:>10} B"
    );
    extra::Record::new(
        "memory",
        name,
        &[
            ("static_bytes", bytes as f64),
            ("storm_draining_bytes", draining as f64),
            ("storm_stalled_bytes", stalled as f64),
            ("storm_sends", STORM as f64),
        ],
    )
}

fn main() {
    // `cargo bench` passes criterion's options (and `--bench`): ignored;
    // this bench takes about a second, so it always runs.
    // evtchn's static size is that of `Channels` alone (the transport also
    // keeps the bench's `Port` handles); the queue transports are their
    // whole state.
    let evtchn = |w| Evtchn::new(w, VCPUS);
    let crossbeam = |w| Crossbeam::new(w, VCPUS);
    let mutex = |w| MutexQueue::new(w, VCPUS);
    let (ch, ev_bytes) =
        static_bytes(|| Channels::new(TwoLevel::new(OwnedMemory::new(64, VCPUS)), ()));
    drop(ch);
    let (t, cb_bytes) = static_bytes(|| crossbeam(wake()));
    drop(t);
    let (t, mx_bytes) = static_bytes(|| mutex(wake()));
    drop(t);
    let records = [
        measure("evtchn", ev_bytes, evtchn),
        measure("crossbeam-channel", cb_bytes, crossbeam),
        measure("mutex+vecdeque", mx_bytes, mutex),
    ];
    extra::write(&records);
}
