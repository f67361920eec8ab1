//! The upcall: each vCPU's scan, the in-flight guard that keeps a port's
//! handler on one vCPU at a time (C3), its release (which frees a port
//! closed meanwhile and re-raises an event another vCPU left to it), and
//! the per-vCPU handle.

use super::control::{Claim, Control, Snapshot};
use super::{Guest, Hypercalls, Hypervisor};
use crate::abi::{Deliver, Delivery, Ports};
use crate::port::{MaskReason, Port};
use crate::sync::store_load_fence;
#[cfg(not(all(loom, feature = "loom")))]
use crate::sync::Ordering::Relaxed;
use crate::weaken::Weaken;
use crate::{Error, Notify};

impl<V: Hypervisor> Guest<V> {
    /// Runs `handler` for candidate `number` on `vcpu` if the port is bound
    /// there, unmasked, pending, and not in flight elsewhere. Returns
    /// what it did.
    #[inline]
    fn deliver(&self, vcpu: u32, number: u32, handler: &mut impl FnMut(Port)) -> Delivery {
        // Port 0's slot is never bound (`bind` refuses the number), so a
        // hostile pending bit 0 is skipped by the claim like a closed port.
        let Some(slot) = self.table.get(number as usize) else {
            return Delivery::Skipped;
        };
        let guard = !self.weak.has(Weaken::NoInFlightGuard);
        // In one address space a port found bound elsewhere is raised
        // there (`Foreign`). A guest on a real hypervisor runs it where it
        // found it, as Linux does: it may neither link into the
        // hypervisor's FIFO queues (their tails are the hypervisor's) nor
        // retrigger it without touching a mask its control plane may be
        // setting meanwhile. The event was raised on this vCPU before the
        // move reached the hypervisor; later raises go to the new vCPU.
        let on = if V::RELINKS_LOCALLY { Some(vcpu) } else { None };
        let cw = match slot.claim(on, guard, !self.weak.has(Weaken::NoReplay)) {
            Claim::Held(cw) => cw,
            Claim::Skip => return Delivery::Skipped,
            Claim::Foreign(v) => return Delivery::Foreign(v),
        };
        let port = Port {
            number,
            generation: cw.generation(),
        };
        // Clear pending only while holding the guard: each raise is handled
        // at most once, and a send during the handler raises anew.
        // The guard ends when `held` drops: after the handler, or while a
        // panicking handler unwinds (an embedder that catches the panic
        // finds the port deliverable, closable, and its replay re-raised).
        // Each outcome builds its own guard, so the run's release is
        // compiled with `undo_eoi` known false: its late-EOI branch and the
        // merged flag leave the hot path.
        let guard_of = |undo_eoi| {
            guard.then(|| InFlight {
                guest: self,
                slot,
                held: cw.claimed(),
                number,
                undo_eoi,
            })
        };
        if let Ok(true) = self.v.abi().test_and_clear_pending(number) {
            let held = guard_of(false);
            handler(port);
            #[cfg(not(all(loom, feature = "loom")))]
            if let Some(h) = self.handled.get(number as usize) {
                // Relaxed, and no read-modify-write: statistics written only
                // by the guard's holder (not modelled under loom: no protocol
                // depends on them).
                h.store(h.load(Relaxed).wrapping_add(1), Relaxed);
            }
            drop(held);
            Delivery::Handled
        } else {
            // A late EOI taken for an event that was not there (another
            // vCPU handled it first) is given back at once.
            drop(guard_of(
                !self.weak.has(Weaken::NoStaleEoiUndo) && cw.is_lateeoi(),
            ));
            Delivery::Skipped
        }
    }

    /// Ends the in-flight guard of `number`: frees a port closed meanwhile,
    /// and re-raises an event another vCPU left for us.
    /// `undo_eoi`: drop the late-EOI mask reason this claim added (set
    /// only when the handler did not run).
    #[inline(always)]
    fn release(&self, slot: &Control, held: Snapshot, number: u32, undo_eoi: bool) {
        let cw = slot.release(held, undo_eoi, self.weak.has(Weaken::ReleaseIgnoresChanges));
        // The common end (no close, no replay, no EOI given back) is the
        // compare-exchange alone; the rest is out of line.
        if cw.release_has_work() || undo_eoi {
            self.after_release(cw, number, undo_eoi);
        }
    }

    /// What a release does beyond the compare-exchange; `cw` is the word
    /// just before it.
    #[cold]
    #[inline(never)]
    fn after_release(&self, cw: Snapshot, number: u32, undo_eoi: bool) {
        if cw.is_closing() {
            // Closed while this handler ran: the guest's port is free now,
            // and so may the hypervisor's be (whatever it answers).
            let _ = self.v.calls().close(number);
        }
        let reopened = undo_eoi && cw.reasons() == MaskReason::EoiPending.bit();
        if reopened {
            // A sender may have seen the transient reason's effect (a skip):
            // re-raise, as `remove_reason` does after an unmask.
            store_load_fence();
        }
        if (cw.replay_requested() || reopened) && cw.is_bound() {
            // On the port's notify vCPU, which a rebind sets before its
            // unmask. An error is only a hostile hypervisor's.
            let _ = self.reraise(number);
        }
    }
}

/// A held in-flight guard: released (with the replay re-raise) when
/// dropped, on the normal path and when a handler unwinds.
pub(super) struct InFlight<'c, V: Hypervisor> {
    guest: &'c Guest<V>,
    slot: &'c Control,
    /// The word the claim installed.
    held: Snapshot,
    number: u32,
    undo_eoi: bool,
}

impl<V: Hypervisor> Drop for InFlight<'_, V> {
    #[inline]
    fn drop(&mut self) {
        if !self.guest.weak.has(Weaken::GuardNotUnwindSafe) || !unwinding() {
            self.guest
                .release(self.slot, self.held, self.number, self.undo_eoi);
        }
    }
}

/// Whether the thread is unwinding from a panic (only a weakened guard asks,
/// in loom models; `false` without std, where a panic aborts).
#[inline(always)]
fn unwinding() -> bool {
    #[cfg(feature = "std")]
    {
        std::thread::panicking()
    }
    #[cfg(not(feature = "std"))]
    {
        false
    }
}

/// The deliver side of one vCPU: its upcall and its round-robin position.
///
/// Whoever runs vCPU `id` holds one. Several handles for one vCPU may exist
/// and run concurrently: correctness does not depend on it (the in-flight
/// guard serialises handlers), only fairness is per handle.
pub struct Vcpu<'a, V: Hypervisor> {
    pub(super) guest: &'a Guest<V>,
    pub(super) id: u32,
    pub(super) cursor: <V::Abi as Deliver>::Cursor,
}

impl<V: Hypervisor> core::fmt::Debug for Vcpu<'_, V> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Vcpu")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

impl<V: Hypervisor> Vcpu<'_, V> {
    /// This vCPU's index.
    ///
    /// # Examples
    ///
    /// ```
    /// use evtchn::{Channels, OwnedMemory, TwoLevel};
    ///
    /// let ch = Channels::new(TwoLevel::new(OwnedMemory::new(1, 2)), ());
    /// assert_eq!(ch.vcpu(1)?.id(), 1);
    /// # Ok::<(), evtchn::Error>(())
    /// ```
    #[must_use]
    pub fn id(&self) -> u32 {
        self.id
    }

    /// Runs one upcall: clears the upcall flag, scans the selected words in
    /// round-robin order and runs `handler` once for every pending, unmasked
    /// port bound here, repeating while new work was flagged. Returns how
    /// many handler runs it made.
    ///
    /// Under a storm that re-raises ports as fast as they are handled this
    /// call does not return; bound it with [`Vcpu::upcall_budget`] or
    /// [`Vcpu::upcall_until`].
    ///
    /// # Errors
    ///
    /// [`Error::VcpuOutOfRange`] if the ABI's memory holds no state for this
    /// vCPU; [`Guest::vcpu`] checked that it does, so over this crate's
    /// ABIs an upcall does not fail.
    ///
    /// # Examples
    ///
    /// ```
    /// use evtchn::{Bind, Channels, OwnedMemory, TwoLevel};
    ///
    /// let ch = Channels::new(TwoLevel::new(OwnedMemory::new(1, 2)), ());
    /// let a = ch.bind(Bind::Affinity(0))?;
    /// let b = ch.bind(Bind::Affinity(1))?;
    /// ch.send(a)?;
    /// ch.send(b)?;
    /// let mut seen = Vec::new();
    /// assert_eq!(ch.vcpu(0)?.upcall(|p| seen.push(p))?, 1);
    /// assert_eq!(seen, [a]); // `b` is vCPU 1's
    /// assert!(ch.upcall_pending(1)?);
    /// # Ok::<(), evtchn::Error>(())
    /// ```
    pub fn upcall(&mut self, handler: impl FnMut(Port)) -> Result<usize, Error> {
        self.upcall_until(|_| false, handler)
    }

    /// One upcall that makes at most `max_runs` handler runs, as Linux
    /// bounds its event loop since XSA-332. What it leaves stays pending
    /// where the next upcall finds it, and the upcall flag stays set
    /// ([`Vcpu::upcall_pending`] says `true`), so the vCPU's loop runs
    /// another upcall before it halts: nothing is lost, and the vCPU gets
    /// to do other work in between. The next upcall resumes after the last
    /// port offered (2-level round-robin; FIFO keeps its strict priority).
    ///
    /// # Errors
    ///
    /// As [`Vcpu::upcall`]: none over this crate's ABIs.
    ///
    /// # Examples
    ///
    /// ```
    /// use evtchn::{Bind, Channels, OwnedMemory, TwoLevel};
    ///
    /// let ch = Channels::new(TwoLevel::new(OwnedMemory::new(1, 1)), ());
    /// let ports: Vec<_> = (0..3).map(|_| ch.bind(Bind::Affinity(0)).unwrap()).collect();
    /// for &p in &ports {
    ///     ch.send(p).unwrap();
    /// }
    /// let mut vcpu = ch.vcpu(0).unwrap();
    /// assert_eq!(vcpu.upcall_budget(2, |_| {}).unwrap(), 2);
    /// assert!(vcpu.upcall_pending(), "the third event is deferred, not lost");
    /// assert_eq!(vcpu.upcall_budget(2, |_| {}).unwrap(), 1);
    /// assert!(!vcpu.upcall_pending());
    /// ```
    pub fn upcall_budget(
        &mut self,
        max_runs: usize,
        handler: impl FnMut(Port),
    ) -> Result<usize, Error> {
        self.upcall_until(|ran| ran >= max_runs, handler)
    }

    /// One upcall that stops once `stop(runs so far)` says `true`; it is
    /// asked before each port is taken. A time budget is
    /// `|_| clock() >= deadline` (the core has no clock of its own). What is
    /// left is deferred as by [`Vcpu::upcall_budget`].
    ///
    /// # Errors
    ///
    /// As [`Vcpu::upcall`]: none over this crate's ABIs.
    ///
    /// # Examples
    ///
    /// ```
    /// use evtchn::{Bind, Channels, OwnedMemory, TwoLevel};
    ///
    /// let ch = Channels::new(TwoLevel::new(OwnedMemory::new(1, 1)), ());
    /// for _ in 0..3 {
    ///     let port = ch.bind(Bind::Affinity(0))?;
    ///     ch.send(port)?;
    /// }
    /// let mut vcpu = ch.vcpu(0)?;
    /// // A clock that ticks once per port taken; the deadline is tick 2.
    /// let mut clock = 0;
    /// let mut deadline_passed = |_runs: usize| {
    ///     clock += 1;
    ///     clock > 2
    /// };
    /// assert_eq!(vcpu.upcall_until(&mut deadline_passed, |_| {})?, 2);
    /// assert!(vcpu.upcall_pending(), "the third event is deferred");
    /// assert_eq!(vcpu.upcall_until(|_| false, |_| {})?, 1);
    /// # Ok::<(), evtchn::Error>(())
    /// ```
    pub fn upcall_until(
        &mut self,
        mut stop: impl FnMut(usize) -> bool,
        mut handler: impl FnMut(Port),
    ) -> Result<usize, Error> {
        let guest = self.guest;
        let id = self.id;
        let ran = core::cell::Cell::new(0usize);
        guest.v.abi().scan_bounded(
            id,
            &mut self.cursor,
            || !stop(ran.get()),
            |number| {
                let d = guest.deliver(id, number, &mut handler);
                if d == Delivery::Handled {
                    ran.set(ran.get().saturating_add(1));
                }
                d
            },
            |v| guest.v.notify().kick(v),
        )?;
        Ok(ran.get())
    }

    /// Whether an upcall is pending here; halt only after `false`.
    ///
    /// # Examples
    ///
    /// ```
    /// use evtchn::{Bind, Channels, OwnedMemory, TwoLevel};
    ///
    /// let ch = Channels::new(TwoLevel::new(OwnedMemory::new(1, 1)), ());
    /// let port = ch.bind(Bind::Affinity(0))?;
    /// let mut vcpu = ch.vcpu(0)?;
    /// ch.send(port)?;
    /// // The vCPU's loop: upcalls while one is pending, then halt.
    /// while vcpu.upcall_pending() {
    ///     vcpu.upcall_budget(64, |_| {})?;
    /// }
    /// assert_eq!(ch.status(port.number())?.handled, 1);
    /// # Ok::<(), evtchn::Error>(())
    /// ```
    #[must_use = "a vCPU may halt only after this returned `false`"]
    pub fn upcall_pending(&self) -> bool {
        matches!(self.guest.v.abi().upcall_pending(self.id), Ok(true))
    }
}
