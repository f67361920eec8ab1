//! What the crate allocates, it frees: the owned memories and the channels
//! give back every byte when dropped, including the FIFO pages mapped on
//! demand. The binary's allocator counts the bytes live in the process, so
//! the binary has no test harness (`harness = false`): its `main` runs the
//! check on the only thread there is. Under libtest, the harness's main
//! thread allocated beside the test thread while the count was open (900
//! bytes "left behind" in one loaded run).

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicIsize, Ordering::SeqCst};

use evtchn::{Bind, Channels, Fifo, OwnedFifo, OwnedMemory, TwoLevel};

/// The system allocator, counting the bytes it has handed out and not yet
/// been given back.
struct Counting;

// SeqCst: a counter read after the work it counts, on the same thread.
static LIVE: AtomicIsize = AtomicIsize::new(0);

fn bytes(layout: Layout) -> isize {
    isize::try_from(layout.size()).expect("an allocation fits in isize")
}

// SAFETY: every call is passed on to `System` unchanged; only the count is
// added.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: the caller's contract for `alloc`, passed on.
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            LIVE.fetch_add(bytes(layout), SeqCst);
        }
        p
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: the caller's contract for `alloc_zeroed`, passed on.
        let p = unsafe { System.alloc_zeroed(layout) };
        if !p.is_null() {
            LIVE.fetch_add(bytes(layout), SeqCst);
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(bytes(layout), SeqCst);
        // SAFETY: the caller's contract for `dealloc`, passed on.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: the caller's contract for `realloc`, passed on.
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            LIVE.fetch_add(
                isize::try_from(new_size).expect("fits") - bytes(layout),
                SeqCst,
            );
        }
        p
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

/// The bytes `f` left allocated once everything it built was dropped.
fn left_behind(f: impl FnOnce()) -> isize {
    let before = LIVE.load(SeqCst);
    f();
    LIVE.load(SeqCst) - before
}

fn main() {
    dropping_frees_every_byte();
    println!("leaks: dropping_frees_every_byte ... ok");
}

fn dropping_frees_every_byte() {
    // FIFO: ports spread over three pages, so three pages are mapped.
    let fifo = left_behind(|| {
        let ch = Channels::new(Fifo::new(OwnedFifo::new(4 * 1024, 2)), ());
        let ports: Vec<_> = (0..2100)
            .map(|_| ch.bind(Bind::Affinity(1)).unwrap())
            .collect();
        assert_eq!(
            ch.abi().memory().mapped_pages(),
            3,
            "the test maps three pages"
        );
        ch.send(ports[2099]).unwrap();
        drop(ports);
        drop(ch);
    });
    assert_eq!(fifo, 0, "bytes left behind by a dropped FIFO instance");

    let twolevel = left_behind(|| {
        let ch = Channels::new(TwoLevel::new(OwnedMemory::new(64, 2)), ());
        let p = ch.bind(Bind::Affinity(1)).unwrap();
        ch.send(p).unwrap();
        drop(ch);
    });
    assert_eq!(
        twolevel, 0,
        "bytes left behind by a dropped 2-level instance"
    );

    // The count itself can fail: a leaked allocation shows (`black_box`:
    // an optimiser may drop an allocation nothing reads).
    let leaked = left_behind(|| {
        std::hint::black_box(Box::leak(Box::new([0u8; 64])));
    });
    assert_eq!(leaked, 64, "the counter sees a leak");
}
