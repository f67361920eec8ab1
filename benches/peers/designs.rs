//! The two designs a hypervisor author would otherwise write for the send
//! path of 2-level event channels, written from their published designs:
//!
//! * [`MutexTable`]: one mutex around the whole port table, as QEMU's Xen
//!   emulation keeps it (`port_lock`): every send, bind and rebind takes it.
//!   A rebind changes the port's vCPU and, if the port is pending and
//!   unmasked, raises it on the new vCPU, under the same lock.
//! * [`RwChannels`]: a reader-writer lock per channel, as Xen keeps it since
//!   4.15: the send path takes the channel's lock with a read *trylock* and
//!   omits the send when that fails (a send may run where it cannot spin);
//!   under the read lock it does the lock-free 2-level raise. A rebind takes
//!   the channel's write lock, changes the vCPU and re-raises a pending,
//!   unmasked event on the new vCPU.
//!
//! Both keep the guest-visible words (pending and mask bitmaps, each vCPU's
//! selector and upcall flag) in the same crate-owned 2-level memory evtchn
//! uses ([`OwnedMemory`]): the guest clears and masks them without any
//! host lock, so they are atomics in either design, and every raise here
//! uses the orderings of evtchn's own raise (the physical floor of
//! `benches/floor`). The designs differ from evtchn, and from each other,
//! only in how the send finds the port's vCPU and keeps it stable.

#![allow(dead_code)]

use std::sync::atomic::Ordering::*;

use evtchn::{Memory2l, OwnedMemory};
use parking_lot::{Mutex, RwLock};

/// What a send did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Sent {
    /// The pending bit went 0 → 1 and the port was unmasked: the port's
    /// word was flagged in `vcpu`'s selector; `kick` if its upcall flag
    /// went 0 → 1 (the caller then kicks the vCPU).
    Raised { vcpu: u32, kick: bool },
    /// The pending bit was already set: nothing more to do.
    Coalesced,
    /// Pending, but masked: the unmask raises it.
    Masked,
    /// The port is not bound: no event.
    NotBound,
    /// The send was omitted (a failed trylock): no event.
    Dropped,
}

impl Sent {
    /// Whether the event is pending after the send (raised, coalesced with
    /// one pending, or left to the unmask).
    pub fn delivered(self) -> bool {
        matches!(self, Sent::Raised { .. } | Sent::Coalesced | Sent::Masked)
    }
}

/// The 2-level raise of `port` on the vCPU `vcpu()` names, called only once
/// the port is found pending and unmasked (Xen's `evtchn_2l_set_pending`).
#[inline(always)]
fn raise(mem: &OwnedMemory, port: u32, vcpu: impl FnOnce() -> u32) -> Sent {
    let w = (port / 64) as usize;
    let bit = 1u64 << (port % 64);
    // SeqCst: the write half of the send/unmask Dekker pattern with a guest
    // that clears the mask bit and then reads the pending bit; also the
    // Release that publishes what the sender wrote before the send.
    if mem.pending()[w].fetch_or(bit, SeqCst) & bit != 0 {
        return Sent::Coalesced;
    }
    // SeqCst: the read half of that Dekker pattern.
    if mem.mask()[w].load(SeqCst) & bit != 0 {
        return Sent::Masked;
    }
    let vcpu = vcpu();
    Sent::Raised {
        vcpu,
        kick: raise_selector(mem, vcpu, w),
    }
}

/// Flags word `w` in `vcpu`'s selector; whether the upcall flag went 0 → 1.
#[inline(always)]
fn raise_selector(mem: &OwnedMemory, vcpu: u32, w: usize) -> bool {
    let Some(vi) = mem.vcpu_info(vcpu) else {
        return false;
    };
    let sel = 1u64 << w;
    // AcqRel: Release publishes the pending bit to the guest's selector
    // swap; Acquire orders the upcall flag swap after the guest's clear.
    if vi.evtchn_pending_sel.fetch_or(sel, AcqRel) & sel != 0 {
        return false;
    }
    // AcqRel: ordered after the selector bit; a 0 → 1 transition kicks.
    vi.evtchn_upcall_pending.swap(1, AcqRel) == 0
}

/// After a rebind to `vcpu`: raises a pending, unmasked `port` there.
/// Returns whether to kick `vcpu`.
#[inline]
fn reraise(mem: &OwnedMemory, port: u32, vcpu: u32) -> bool {
    let w = (port / 64) as usize;
    let bit = 1u64 << (port % 64);
    // SeqCst: as in `raise`; a masked port is left to the guest's unmask.
    if mem.pending()[w].load(SeqCst) & bit == 0 || mem.mask()[w].load(SeqCst) & bit != 0 {
        return false;
    }
    raise_selector(mem, vcpu, w)
}

/// One port's entry in either design's table.
#[derive(Clone, Copy, Debug, Default)]
struct Entry {
    /// The vCPU notified of the port's events.
    vcpu: u32,
    bound: bool,
}

/// A port table behind one mutex (QEMU's `port_lock`).
pub struct MutexTable {
    mem: OwnedMemory,
    table: Mutex<Box<[Entry]>>,
}

impl MutexTable {
    /// `words * 64` ports (every one free and unmasked), `vcpus` vCPUs.
    pub fn new(words: usize, vcpus: usize) -> Self {
        let mem = OwnedMemory::new(words, vcpus);
        let ports = mem.pending().len() * 64;
        MutexTable {
            mem,
            table: Mutex::new(vec![Entry::default(); ports].into_boxed_slice()),
        }
    }

    /// The guest-visible words.
    pub fn memory(&self) -> &OwnedMemory {
        &self.mem
    }

    /// Binds `port` to `vcpu`.
    pub fn bind(&self, port: u32, vcpu: u32) {
        self.table.lock()[port as usize] = Entry { vcpu, bound: true };
    }

    /// Sends an event on `port`: the whole raise under the lock, the kick
    /// (the caller's) after it.
    #[inline]
    pub fn send(&self, port: u32) -> Sent {
        let table = self.table.lock();
        match table.get(port as usize) {
            Some(e) if e.bound => raise(&self.mem, port, || e.vcpu),
            _ => Sent::NotBound,
        }
    }

    /// Moves `port` to `vcpu` and raises it there if it is pending and
    /// unmasked. Returns whether to kick `vcpu`, or `None` if `port` is not
    /// bound.
    #[inline]
    pub fn rebind(&self, port: u32, vcpu: u32) -> Option<bool> {
        let mut table = self.table.lock();
        let e = table.get_mut(port as usize).filter(|e| e.bound)?;
        e.vcpu = vcpu;
        Some(reraise(&self.mem, port, vcpu))
    }
}

/// A channel table with a reader-writer lock per channel (Xen's `chn->lock`).
pub struct RwChannels {
    mem: OwnedMemory,
    chans: Box<[RwLock<Entry>]>,
}

impl RwChannels {
    /// `words * 64` ports (every one free and unmasked), `vcpus` vCPUs.
    pub fn new(words: usize, vcpus: usize) -> Self {
        let mem = OwnedMemory::new(words, vcpus);
        let ports = mem.pending().len() * 64;
        RwChannels {
            mem,
            chans: (0..ports).map(|_| RwLock::new(Entry::default())).collect(),
        }
    }

    /// The guest-visible words.
    pub fn memory(&self) -> &OwnedMemory {
        &self.mem
    }

    /// Binds `port` to `vcpu` (under the channel's write lock).
    pub fn bind(&self, port: u32, vcpu: u32) {
        *self.chans[port as usize].write() = Entry { vcpu, bound: true };
    }

    /// Sends an event on `port`: read trylock, the raise under the read
    /// lock; a failed trylock omits the send.
    #[inline]
    pub fn send(&self, port: u32) -> Sent {
        let Some(chan) = self.chans.get(port as usize) else {
            return Sent::NotBound;
        };
        let Some(e) = chan.try_read() else {
            return Sent::Dropped;
        };
        if !e.bound {
            return Sent::NotBound;
        }
        raise(&self.mem, port, || e.vcpu)
    }

    /// Moves `port` to `vcpu` under the channel's write lock and raises it
    /// there if it is pending and unmasked. Returns whether to kick `vcpu`,
    /// or `None` if `port` is not bound.
    #[inline]
    pub fn rebind(&self, port: u32, vcpu: u32) -> Option<bool> {
        let mut e = self.chans.get(port as usize)?.write();
        if !e.bound {
            return None;
        }
        e.vcpu = vcpu;
        Some(reraise(&self.mem, port, vcpu))
    }

    /// Runs `f` while holding `port`'s write lock (the set-up checks show
    /// that a send meanwhile is dropped).
    pub fn with_write_locked<R>(&self, port: u32, f: impl FnOnce() -> R) -> R {
        let _guard = self.chans[port as usize].write();
        f()
    }
}
