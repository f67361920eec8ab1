#![cfg_attr(
    all(
        not(any(all(loom, feature = "loom"), evtchn_shuttle)),
        not(feature = "alloc")
    ),
    allow(dead_code)
)]

//! The locks: one API over three backends.
//!
//! | build              | [`Lock`] (control plane)          | [`SpinLock`] (FIFO queue tails)   |
//! |--------------------|-----------------------------------|-----------------------------------|
//! | `cfg(loom)` + `loom` feature | `loom::sync::Mutex`     | the spin lock, on loom's atomics  |
//! | `cfg(evtchn_shuttle)` | `shuttle::sync::Mutex`         | the spin lock, on shuttle's atomics |
//! | `std` feature      | `parking_lot::Mutex`              | spin lock, yielding after a while |
//! | neither (`no_std`) | a test-and-test-and-set spin lock | the same spin lock                |
//!
//! Every control-plane operation of `Channels` takes the control-plane
//! lock (bind, close, the mask operations and EOIs, set_affinity,
//! set_priority, set_lateeoi, set_online, rebalance, the policy and
//! bookkeeping reads); the send path and the upcall path never do. A FIFO raise takes the
//! spin lock of its queue for a few instructions (Xen's `q->lock` is a
//! spin lock too): its release is a plain Release store, where
//! `parking_lot`'s is a compare-exchange, one locked instruction more on
//! every fresh FIFO send. `lock()` returns the guard directly (no
//! poisoning).

#[cfg(all(loom, feature = "loom"))]
pub(crate) struct Lock<T>(loom::sync::Mutex<T>);

#[cfg(all(loom, feature = "loom"))]
impl<T> Lock<T> {
    pub(crate) fn new(t: T) -> Self {
        Lock(loom::sync::Mutex::new(t))
    }

    pub(crate) fn lock(&self) -> loom::sync::MutexGuard<'_, T> {
        // A model thread panics only when an assertion fails; loom then
        // reports that failure, so a poisoned lock is never observed here.
        match self.0.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        }
    }
}

#[cfg(evtchn_shuttle)]
pub(crate) struct Lock<T>(::shuttle::sync::Mutex<T>);

#[cfg(evtchn_shuttle)]
impl<T> Lock<T> {
    pub(crate) const fn new(t: T) -> Self {
        Lock(::shuttle::sync::Mutex::new(t))
    }

    pub(crate) fn lock(&self) -> ::shuttle::sync::MutexGuard<'_, T> {
        // A shuttle thread panics only when an assertion fails; shuttle then
        // ends the schedule and reports it, so a poisoned lock is never
        // observed by a check that matters.
        match self.0.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        }
    }
}

#[cfg(all(not(any(all(loom, feature = "loom"), evtchn_shuttle)), feature = "std"))]
pub(crate) struct Lock<T>(parking_lot::Mutex<T>);

#[cfg(all(not(any(all(loom, feature = "loom"), evtchn_shuttle)), feature = "std"))]
impl<T> Lock<T> {
    pub(crate) const fn new(t: T) -> Self {
        Lock(parking_lot::Mutex::new(t))
    }

    pub(crate) fn lock(&self) -> parking_lot::MutexGuard<'_, T> {
        self.0.lock()
    }
}

#[cfg(all(
    not(any(all(loom, feature = "loom"), evtchn_shuttle)),
    not(feature = "std")
))]
pub(crate) use spin::Lock;

pub(crate) use spin::Lock as SpinLock;

/// The spin lock. Under loom it is built from loom's atomics and cell, so
/// the FIFO models check it (and its weakened variant) with the queues it
/// guards.
mod spin {
    use core::ops::{Deref, DerefMut};

    #[cfg(not(all(loom, feature = "loom")))]
    use core::cell::UnsafeCell;
    #[cfg(all(loom, feature = "loom"))]
    use loom::cell::{MutPtr, UnsafeCell};

    use super::super::{spin_loop, AtomicU8, Ordering};
    use crate::weaken::{Weaken, Weakness};

    /// A test-and-test-and-set spin lock. With `std` (natively), a waiter that has spun
    /// for a while yields its CPU, so that a holder preempted in its few
    /// instructions gets to run.
    pub(crate) struct Lock<T> {
        locked: AtomicU8,
        value: UnsafeCell<T>,
        weak: Weakness,
    }

    // SAFETY: the lock hands out `&mut T` to one holder at a time (see
    // `lock`), so sharing the lock across threads is sound when `T: Send`.
    unsafe impl<T: Send> Sync for Lock<T> {}
    // SAFETY: moving the lock moves the `T` inside it.
    unsafe impl<T: Send> Send for Lock<T> {}

    pub(crate) struct Guard<'a, T> {
        lock: &'a Lock<T>,
        /// Loom's record of this holder's exclusive access to `value`, for
        /// as long as the guard lives: an access by another holder not
        /// ordered after it is a reported race.
        #[cfg(all(loom, feature = "loom"))]
        access: MutPtr<T>,
    }

    impl<T> Lock<T> {
        /// Used as the control-plane lock of `no_std` builds.
        #[cfg_attr(
            any(all(loom, feature = "loom"), evtchn_shuttle, feature = "std"),
            allow(dead_code)
        )]
        pub(crate) fn new(t: T) -> Self {
            Self::with_weakness(t, Weakness::default())
        }

        /// A lock with one protective step weakened (natively `weak` is
        /// zero-sized and never weakens anything).
        pub(crate) fn with_weakness(t: T, weak: Weakness) -> Self {
            Lock {
                locked: AtomicU8::new(0),
                value: UnsafeCell::new(t),
                weak,
            }
        }

        #[inline]
        pub(crate) fn lock(&self) -> Guard<'_, T> {
            loop {
                // Acquire: pairs with the Release store in `Guard::drop`, so
                // the previous holder's writes to `value` are visible.
                let acquire = self.weak.ord(Weaken::RelaxedQueueLock, Ordering::Acquire);
                if self
                    .locked
                    .compare_exchange_weak(0, 1, acquire, Ordering::Relaxed)
                    .is_ok()
                {
                    return Guard {
                        lock: self,
                        #[cfg(all(loom, feature = "loom"))]
                        access: self.value.get_mut(),
                    };
                }
                #[cfg(all(feature = "std", not(any(all(loom, feature = "loom"), evtchn_shuttle))))]
                let mut spins = 0u32;
                // Relaxed: only a hint to retry the CAS; the CAS orders.
                while self.locked.load(Ordering::Relaxed) != 0 {
                    spin_loop();
                    #[cfg(all(
                        feature = "std",
                        not(any(all(loom, feature = "loom"), evtchn_shuttle))
                    ))]
                    {
                        spins = spins.saturating_add(1);
                        if spins >= 128 {
                            std::thread::yield_now();
                        }
                    }
                }
            }
        }
    }

    impl<T> Deref for Guard<'_, T> {
        type Target = T;
        #[inline]
        fn deref(&self) -> &T {
            #[cfg(not(all(loom, feature = "loom")))]
            // SAFETY: the guard exists only while `locked` is held by us.
            unsafe {
                &*self.lock.value.get()
            }
            #[cfg(all(loom, feature = "loom"))]
            // SAFETY: as above; loom checks the claim through `access`.
            unsafe {
                self.access.deref()
            }
        }
    }

    impl<T> DerefMut for Guard<'_, T> {
        #[inline]
        fn deref_mut(&mut self) -> &mut T {
            #[cfg(not(all(loom, feature = "loom")))]
            // SAFETY: the guard exists only while `locked` is held by us,
            // and `&mut self` makes this the only live reference.
            unsafe {
                &mut *self.lock.value.get()
            }
            #[cfg(all(loom, feature = "loom"))]
            // SAFETY: as above; loom checks the claim through `access`.
            unsafe {
                self.access.deref()
            }
        }
    }

    impl<T> Drop for Guard<'_, T> {
        #[inline]
        fn drop(&mut self) {
            // Release: publishes this holder's writes to the next Acquire.
            let release = self
                .lock
                .weak
                .ord(Weaken::RelaxedQueueLock, Ordering::Release);
            self.lock.locked.store(0, release);
        }
    }
}
