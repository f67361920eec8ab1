//! Halting vCPU threads and kicking them: the idle protocol of C2 (no lost
//! wake-up) on real threads.
//!
//! A vCPU thread registers itself ([`Kicker::register`]), then loops: run
//! upcalls while one is pending, then [`Kicker::halt`]. The halt reads the
//! vCPU's kick count *before* its last look at the upcall flag, and parks
//! only if that look finds nothing pending. A raiser sets the flag before it
//! kicks, and a kick ([`Kicker::kick`], or the `Notify` impl) counts itself
//! before it unparks: so a raise the last look missed kicks after the count
//! was read, its unpark makes the park return, and the changed count says
//! so. The park's timeout is only a safety net; a vCPU that wakes by timeout
//! with an upcall pending and no kick since its last look (after a grace
//! period for a kick still on its way) reports a lost wake-up.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::*};
use std::sync::OnceLock;
use std::thread::{self, Thread};
use std::time::{Duration, Instant};

use evtchn::Notify;

/// The wake-up side of one vCPU, on its own cache lines.
#[repr(align(128))]
#[derive(Debug, Default)]
struct Slot {
    thread: OnceLock<Thread>,
    /// Kicks received (counted before the unpark).
    kicks: AtomicU64,
}

/// How a [`Kicker::halt`] ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Halt {
    /// An upcall was pending at the last look (or the kicker is stopped):
    /// no park.
    Pending,
    /// Parked, and woken by a kick (or a spurious wake-up, or `stop`).
    Woken,
    /// Parked until the timeout, and rightly so: nothing was pending then,
    /// or a kick still on its way came within the grace period.
    TimedOut,
    /// Parked until the timeout with an upcall pending, and no kick came
    /// within the grace period: a lost wake-up (C2).
    LostWakeup,
}

/// Every vCPU's thread and kick count; the `Notify` of a run whose vCPUs
/// are threads.
#[derive(Debug)]
pub struct Kicker {
    slots: Box<[Slot]>,
    /// Kicks for a vCPU that does not exist (a core bug).
    bad: AtomicU64,
    /// vCPUs parked in [`Kicker::halt`] right now.
    halted: AtomicU64,
    stop: AtomicBool,
}

impl Kicker {
    /// For vCPUs `0..vcpus`.
    #[must_use]
    pub fn new(vcpus: usize) -> Self {
        Kicker {
            slots: (0..vcpus).map(|_| Slot::default()).collect(),
            bad: AtomicU64::new(0),
            halted: AtomicU64::new(0),
            stop: AtomicBool::new(false),
        }
    }

    /// The calling thread is vCPU `vcpu`'s: kicks for `vcpu` unpark it.
    /// Call it before the thread's first look at its upcall flag.
    ///
    /// # Panics
    ///
    /// If `vcpu` is out of range.
    pub fn register(&self, vcpu: u32) {
        let _ = self.slots[vcpu as usize].thread.set(thread::current());
    }

    /// Wakes `vcpu` (its IPI, or the hypervisor's `vcpu_kick`): counts the
    /// kick, then unparks the vCPU's thread. A kick for a vCPU that does
    /// not exist is counted in [`Kicker::bad_kicks`].
    pub fn kick(&self, vcpu: u32) {
        match self.slots.get(vcpu as usize) {
            Some(s) => {
                // SeqCst: the halting vCPU reads the count before its last
                // look at the flag; see `halt`.
                s.kicks.fetch_add(1, SeqCst);
                if let Some(t) = s.thread.get() {
                    t.unpark();
                }
            }
            None => {
                self.bad.fetch_add(1, Relaxed);
            }
        }
    }

    /// One halt of vCPU `vcpu`, whose upcall flag `pending` reads: parks
    /// for at most `timeout` unless an upcall is pending (or the kicker is
    /// stopped); after a timeout with an upcall pending, waits up to
    /// `grace` for a kick on its way before it reports a lost wake-up.
    ///
    /// # Panics
    ///
    /// If `vcpu` is out of range.
    pub fn halt(
        &self,
        vcpu: u32,
        pending: impl Fn() -> bool,
        timeout: Duration,
        grace: Duration,
    ) -> Halt {
        let s = &self.slots[vcpu as usize];
        // Read the kick count *before* the last look: a raise that set the
        // flag after the look kicks after this read, so an unchanged count
        // after the park means no such kick (yet).
        let k0 = s.kicks.load(SeqCst);
        if pending() || self.stopped() {
            return Halt::Pending;
        }
        self.halted.fetch_add(1, SeqCst);
        let t0 = Instant::now();
        thread::park_timeout(timeout);
        let slept = t0.elapsed();
        self.halted.fetch_sub(1, SeqCst);
        if s.kicks.load(SeqCst) != k0 || slept < timeout || self.stopped() {
            return Halt::Woken; // kicked, or a spurious wake-up: look again
        }
        if !pending() {
            return Halt::TimedOut; // idle, and rightly so
        }
        // Woke by timeout with work pending and no kick since before the
        // last look. A raiser may have set the flag and not kicked yet:
        // give it time before calling the wake-up lost.
        let g0 = Instant::now();
        while s.kicks.load(SeqCst) == k0 && g0.elapsed() < grace {
            thread::sleep(Duration::from_millis(1));
        }
        if s.kicks.load(SeqCst) == k0 {
            Halt::LostWakeup
        } else {
            Halt::TimedOut
        }
    }

    /// Kicks received by `vcpu` so far.
    ///
    /// # Panics
    ///
    /// If `vcpu` is out of range.
    #[must_use]
    pub fn kicks(&self, vcpu: u32) -> u64 {
        self.slots[vcpu as usize].kicks.load(SeqCst)
    }

    /// Kicks received by every vCPU so far.
    #[must_use]
    pub fn total_kicks(&self) -> u64 {
        self.slots.iter().map(|s| s.kicks.load(SeqCst)).sum()
    }

    /// Kicks for vCPUs that do not exist.
    #[must_use]
    pub fn bad_kicks(&self) -> u64 {
        self.bad.load(Relaxed)
    }

    /// vCPUs parked in `halt` right now.
    #[must_use]
    pub fn halted(&self) -> u64 {
        self.halted.load(SeqCst)
    }

    /// Unparks every registered vCPU thread (without counting a kick).
    pub fn unpark_all(&self) {
        for s in self.slots.iter() {
            if let Some(t) = s.thread.get() {
                t.unpark();
            }
        }
    }

    /// Stops every vCPU: each `halt` returns at once, now and from now on.
    pub fn stop(&self) {
        self.stop.store(true, SeqCst);
        self.unpark_all();
    }

    /// Whether `stop` was called.
    #[must_use]
    pub fn stopped(&self) -> bool {
        self.stop.load(SeqCst)
    }
}

impl Notify for Kicker {
    fn kick(&self, vcpu: u32) {
        Kicker::kick(self, vcpu);
    }
}

impl Notify for &Kicker {
    fn kick(&self, vcpu: u32) {
        Kicker::kick(self, vcpu);
    }
}

#[cfg(test)]
mod tests {
    use super::{Halt, Kicker};
    use std::sync::atomic::{AtomicBool, Ordering::SeqCst};
    use std::time::Duration;

    const LONG: Duration = Duration::from_secs(5);
    const GRACE: Duration = Duration::from_millis(10);

    #[test]
    fn a_pending_upcall_is_not_halted_on() {
        let k = Kicker::new(1);
        k.register(0);
        assert_eq!(k.halt(0, || true, LONG, GRACE), Halt::Pending);
    }

    /// A kick before the park (after the last look) is not lost: the park
    /// returns at once.
    #[test]
    fn a_kick_between_the_look_and_the_park_wakes() {
        let k = Kicker::new(1);
        k.register(0);
        let t = std::time::Instant::now();
        let r = k.halt(
            0,
            || {
                k.kick(0);
                false
            },
            LONG,
            GRACE,
        );
        assert_eq!(r, Halt::Woken);
        assert!(t.elapsed() < LONG);
    }

    #[test]
    fn a_timeout_with_nothing_pending_is_idle() {
        let k = Kicker::new(1);
        k.register(0);
        let r = k.halt(0, || false, Duration::from_millis(5), GRACE);
        // A spurious wake-up reads as `Woken`.
        assert!(matches!(r, Halt::TimedOut | Halt::Woken), "{r:?}");
    }

    /// The negative control: a flag raised without a kick is a lost
    /// wake-up.
    #[test]
    fn a_pending_upcall_without_a_kick_is_a_lost_wake_up() {
        let k = Kicker::new(1);
        k.register(0);
        let raised = AtomicBool::new(false);
        let mut lost = false;
        for _ in 0..10 {
            let r = k.halt(
                0,
                || raised.swap(true, SeqCst),
                Duration::from_millis(5),
                GRACE,
            );
            raised.store(false, SeqCst);
            lost |= r == Halt::LostWakeup;
        }
        assert!(lost);
    }

    #[test]
    fn stop_ends_every_halt() {
        let k = Kicker::new(2);
        k.register(0);
        k.stop();
        assert_eq!(k.halt(0, || false, LONG, GRACE), Halt::Pending);
        k.kick(7);
        assert_eq!(k.bad_kicks(), 1);
    }
}
