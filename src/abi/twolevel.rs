//! The 2-level ABI (Xen's `event_2l.c` and the guest's upcall scan).
//!
//! State, all in shared memory (see [`crate::xen`]):
//!
//! | word                    | written by                 | read by            |
//! |-------------------------|----------------------------|--------------------|
//! | `evtchn_pending[w]`     | raiser sets, deliverer clears | both            |
//! | `evtchn_mask[w]`        | control plane / guest      | raiser, deliverer  |
//! | `evtchn_pending_sel`    | raiser sets, deliverer swaps 0 | both           |
//! | `evtchn_upcall_pending` | raiser sets, deliverer clears  | both           |
//!
//! Port `p` is bit `p % 64` of word `p / 64`; word `w` is bit `w` of a
//! vCPU's selector.
//!
//! The memory ([`Memory2l`]) gives the pending and mask words as slices and
//! each vCPU's `vcpu_info` on its own, since Xen lets a guest put each one
//! anywhere (`VCPUOP_register_vcpu_info`):
//!
//! * [`SharedInfo`]: a real page, its 32 legacy `vcpu_info`s;
//!   [`MaxVcpus`]: the first vCPUs of a memory, for smaller domains;
//! * [`RegisteredVcpus`]: the words of a memory such as a `&SharedInfo`,
//!   and each vCPU's `vcpu_info` as it registers one, while ports are
//!   raised and scanned (a Release/Acquire-published pointer per vCPU, in
//!   caller-sized inline storage: no allocation); more than 32 vCPUs;
//! * [`OwnedMemory`]: crate-owned, of any size (`alloc`).
//!
//! A vCPU without a `vcpu_info` (not registered yet) is
//! [`Error::VcpuOutOfRange`] on the deliver side, and a raise for it leaves
//! the event pending and notifies nobody.

use core::marker::PhantomData;

use crate::abi::{Deliver, Delivery, GuestUnmask, Kick, Ports, Raise, Raised};
use crate::sync::{store_load_fence, AtomicPtr, Ordering::*};
use crate::weaken::{Weaken, Weakness};
use crate::xen::{SharedInfo, VcpuInfo, XenUlong, BITS_PER_WORD};
use crate::Error;

/// Memory the 2-level ABI works over: pending and mask words and the
/// `vcpu_info` of each vCPU, found per vCPU (a `vcpu_info` need not sit
/// beside the others: Xen's `VCPUOP_register_vcpu_info` puts each
/// anywhere).
///
/// [`SharedInfo`] is one (the real page: 4096 ports, 32 vCPUs), and
/// [`MaxVcpus`] the same page for a domain of fewer vCPUs;
/// [`RegisteredVcpus`] takes the words from such a page and each vCPU's
/// `vcpu_info` from where it was registered (more than 32 vCPUs, as real
/// deployments have them); [`OwnedMemory`] is crate-owned, of any size
/// (tiny instances for model checking).
pub trait Memory2l: Sync {
    /// `evtchn_pending`.
    #[must_use]
    fn pending(&self) -> &[XenUlong];
    /// `evtchn_mask`; the same length as `pending`.
    #[must_use]
    fn mask(&self) -> &[XenUlong];
    /// The `vcpu_info` of `vcpu`: `None` beyond [`Memory2l::nr_vcpus`], and
    /// for a vCPU whose `vcpu_info` is not there (yet). The ABI reads it
    /// anew on each use, so a `vcpu_info` may appear while the memory is in
    /// use; it must not change once it has appeared.
    #[must_use]
    fn vcpu_info(&self, vcpu: u32) -> Option<&VcpuInfo>;
    /// Number of vCPUs: `0..nr_vcpus()` are the vCPUs there can be a
    /// `vcpu_info` for.
    #[must_use]
    fn nr_vcpus(&self) -> u32;
}

impl Memory2l for SharedInfo {
    #[inline]
    fn pending(&self) -> &[XenUlong] {
        &self.evtchn_pending
    }
    #[inline]
    fn mask(&self) -> &[XenUlong] {
        &self.evtchn_mask
    }
    #[inline]
    fn vcpu_info(&self, vcpu: u32) -> Option<&VcpuInfo> {
        self.vcpu_info.get(vcpu as usize)
    }
    #[inline]
    fn nr_vcpus(&self) -> u32 {
        u32::try_from(self.vcpu_info.len()).unwrap_or(u32::MAX)
    }
}

impl<T: Memory2l + ?Sized> Memory2l for &T {
    #[inline]
    fn pending(&self) -> &[XenUlong] {
        (**self).pending()
    }
    #[inline]
    fn mask(&self) -> &[XenUlong] {
        (**self).mask()
    }
    #[inline]
    fn vcpu_info(&self, vcpu: u32) -> Option<&VcpuInfo> {
        (**self).vcpu_info(vcpu)
    }
    #[inline]
    fn nr_vcpus(&self) -> u32 {
        (**self).nr_vcpus()
    }
}

#[cfg(feature = "alloc")]
impl<T: Memory2l + ?Sized> Memory2l for alloc::boxed::Box<T> {
    #[inline]
    fn pending(&self) -> &[XenUlong] {
        (**self).pending()
    }
    #[inline]
    fn mask(&self) -> &[XenUlong] {
        (**self).mask()
    }
    #[inline]
    fn vcpu_info(&self, vcpu: u32) -> Option<&VcpuInfo> {
        (**self).vcpu_info(vcpu)
    }
    #[inline]
    fn nr_vcpus(&self) -> u32 {
        (**self).nr_vcpus()
    }
}

/// 2-level memory `M` serving only its first `max_vcpus` vCPUs: a real
/// `shared_info` page for a domain of fewer vCPUs than the page's 32
/// `vcpu_info`s (Xen's `max_vcpus`).
///
/// As [`Memory2l`], a [`SharedInfo`] holds 32 vCPUs, and a control plane
/// over it has 32, of which a 4-vCPU domain would have to take 28 offline.
/// Through `MaxVcpus` it has `max_vcpus`: a vCPU beyond them is
/// [`Error::VcpuOutOfRange`], and their `vcpu_info`s are neither read nor
/// written. The pending and mask words are `M`'s, all of them.
///
/// ```
/// use evtchn::xen::SharedInfo;
/// use evtchn::{Bind, Channels, Error, MaxVcpus, Policy, TwoLevel};
///
/// // A 4-vCPU domain's page (zeroed here; `SharedInfo::from_ptr` overlays
/// // a real one).
/// let page = Box::new(SharedInfo::new());
/// let ch = Channels::new(TwoLevel::new(MaxVcpus::new(&*page, 4)), ());
/// assert_eq!(ch.nr_vcpus(), 4);
/// assert_eq!(ch.nr_ports(), 4096);
/// assert_eq!(ch.upcall_pending(4), Err(Error::VcpuOutOfRange));
///
/// // Round-robin goes round the domain's 4 vCPUs, not the page's 32.
/// ch.set_policy(Policy::RoundRobin);
/// let mut vcpus = Vec::new();
/// for _ in 0..5 {
///     let port = ch.bind(Bind::Auto)?;
///     vcpus.push(ch.status(port.number())?.vcpu);
/// }
/// assert_eq!(vcpus, [0, 1, 2, 3, 0]);
/// # Ok::<(), Error>(())
/// ```
pub struct MaxVcpus<M> {
    mem: M,
    max_vcpus: u32,
}

impl<M: Memory2l> MaxVcpus<M> {
    /// `mem` serving its first `max_vcpus` vCPUs, clamped to `1..=` the
    /// number `mem` holds (32 for a `shared_info` page).
    #[must_use]
    pub fn new(mem: M, max_vcpus: usize) -> Self {
        let held = mem.nr_vcpus();
        let max_vcpus = u32::try_from(max_vcpus).unwrap_or(u32::MAX);
        MaxVcpus {
            max_vcpus: max_vcpus.min(held).max(1),
            mem,
        }
    }

    /// The memory it serves the first vCPUs of.
    #[must_use]
    pub fn memory(&self) -> &M {
        &self.mem
    }
}

impl<M: Memory2l> Memory2l for MaxVcpus<M> {
    #[inline]
    fn pending(&self) -> &[XenUlong] {
        self.mem.pending()
    }
    #[inline]
    fn mask(&self) -> &[XenUlong] {
        self.mem.mask()
    }
    #[inline]
    fn vcpu_info(&self, vcpu: u32) -> Option<&VcpuInfo> {
        if vcpu >= self.max_vcpus {
            return None;
        }
        self.mem.vcpu_info(vcpu)
    }
    #[inline]
    fn nr_vcpus(&self) -> u32 {
        // `new` clamped the count to what `mem` held; should `mem` hold
        // fewer now, all it holds.
        self.max_vcpus.min(self.mem.nr_vcpus())
    }
}

impl<M: Memory2l> core::fmt::Debug for MaxVcpus<M> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("MaxVcpus")
            .field("max_vcpus", &self.nr_vcpus())
            .finish_non_exhaustive()
    }
}

/// Crate-owned 2-level memory of any size: `words` pending/mask words (64
/// ports each, at most 64 words) and `vcpus` `vcpu_info`s.
#[cfg(feature = "alloc")]
#[derive(Debug)]
pub struct OwnedMemory {
    pending: alloc::boxed::Box<[XenUlong]>,
    mask: alloc::boxed::Box<[XenUlong]>,
    vcpus: alloc::boxed::Box<[VcpuInfo]>,
}

#[cfg(feature = "alloc")]
impl OwnedMemory {
    /// Memory for `words.clamp(1, 64) * 64` ports and `vcpus.max(1)` vCPUs,
    /// all clear.
    #[must_use]
    pub fn new(words: usize, vcpus: usize) -> Self {
        let words = words.clamp(1, BITS_PER_WORD as usize);
        let zeroed = || (0..words).map(|_| XenUlong::new(0)).collect();
        OwnedMemory {
            pending: zeroed(),
            mask: zeroed(),
            vcpus: (0..vcpus.max(1)).map(|_| VcpuInfo::new()).collect(),
        }
    }
}

#[cfg(feature = "alloc")]
impl Memory2l for OwnedMemory {
    #[inline]
    fn pending(&self) -> &[XenUlong] {
        &self.pending
    }
    #[inline]
    fn mask(&self) -> &[XenUlong] {
        &self.mask
    }
    #[inline]
    fn vcpu_info(&self, vcpu: u32) -> Option<&VcpuInfo> {
        self.vcpus.get(vcpu as usize)
    }
    #[inline]
    fn nr_vcpus(&self) -> u32 {
        u32::try_from(self.vcpus.len()).unwrap_or(u32::MAX)
    }
}

/// 2-level memory whose pending and mask words are `M`'s and whose
/// `vcpu_info`s are registered one vCPU at a time, anywhere: Xen's
/// `VCPUOP_register_vcpu_info`, which a guest of more than 32 vCPUs must
/// use. `N` is the most vCPUs it can hold; it needs no allocation.
///
/// * [`RegisteredVcpus::register_vcpu_info`] places a vCPU's `vcpu_info`,
///   once: a second registration of the vCPU is refused, as Xen refuses
///   it. It may run while ports are raised and scanned: it publishes the
///   `vcpu_info` atomically, and marks every word pending on it as Xen
///   does (all selector bits, then the upcall flag), so that an event
///   raised before, for a vCPU that had no `vcpu_info` yet or whose raise
///   went to the legacy one, is found by the vCPU's next scan (one
///   spurious look at most).
/// * Until a vCPU registers, its `vcpu_info` is `M`'s, if `M` has one for
///   it: for a `shared_info` page, the legacy `vcpu_info[v]` of vCPUs
///   0..32, exactly as Xen serves them; vCPUs from 32 have none. A vCPU
///   with no `vcpu_info` is [`Error::VcpuOutOfRange`] for
///   `upcall_pending` and the scan, and an event raised for it stays
///   pending and notifies nobody until it registers.
///
/// ```
/// use evtchn::xen::{SharedInfo, VcpuInfo};
/// use evtchn::{Error, Ports, Raise, Raised, RegisteredVcpus, TwoLevel};
///
/// let page = SharedInfo::new();
/// let mem = RegisteredVcpus::<_, 64>::new(&page, 40);
/// let abi = TwoLevel::new(&mem);
/// assert_eq!(abi.nr_vcpus(), 40);
/// // vCPU 39 has no `vcpu_info` until it registers one.
/// assert_eq!(abi.upcall_pending(39), Err(Error::VcpuOutOfRange));
/// let info = Box::new(VcpuInfo::new());
/// mem.register_vcpu_info(39, &info)?;
/// assert_eq!(mem.register_vcpu_info(39, &info), Err(Error::VcpuOutOfRange));
/// // Registration marks the vCPU's upcall pending, as Xen's does.
/// assert_eq!(abi.upcall_pending(39), Ok(true));
/// let raised = abi.set_pending(7, || 39)?;
/// assert_eq!(raised, Raised::Notified { vcpu: 39, kick: false });
/// # Ok::<(), Error>(())
/// ```
pub struct RegisteredVcpus<'a, M, const N: usize> {
    mem: M,
    nr_vcpus: u32,
    /// Per vCPU: its registered `vcpu_info`, or null. Written once, from
    /// null, by `register_vcpu_info`; the pointer is a `&'a VcpuInfo`.
    slots: [AtomicPtr<VcpuInfo>; N],
    registered: PhantomData<&'a VcpuInfo>,
}

impl<'a, M: Memory2l, const N: usize> RegisteredVcpus<'a, M, N> {
    /// The words of `mem`, and `nr_vcpus` vCPUs (clamped to `1..=N`) none
    /// of which has registered a `vcpu_info` yet.
    #[must_use]
    pub fn new(mem: M, nr_vcpus: u32) -> Self {
        let cap = u32::try_from(N).unwrap_or(u32::MAX);
        RegisteredVcpus {
            mem,
            nr_vcpus: nr_vcpus.min(cap).max(1),
            slots: core::array::from_fn(|_| AtomicPtr::new(core::ptr::null_mut())),
            registered: PhantomData,
        }
    }

    /// `VCPUOP_register_vcpu_info`: from now on the `vcpu_info` of `vcpu`
    /// is `info`. Marks every pending word on it, as Xen does: the whole
    /// selector, then the upcall flag (the vCPU sees the flag on its next
    /// check of `upcall_pending`; a hypervisor registering for a halted
    /// vCPU kicks it itself). The upcall scan of a vCPU should not be
    /// running on its old `vcpu_info` meanwhile (a guest registers before
    /// it enables events, or from the vCPU itself).
    ///
    /// # Errors
    ///
    /// [`Error::VcpuOutOfRange`] if `vcpu` is not below the number of
    /// vCPUs, or has registered a `vcpu_info` already (Xen: `EINVAL`; the
    /// first registration stays, and nothing changes).
    pub fn register_vcpu_info(&self, vcpu: u32, info: &'a VcpuInfo) -> Result<(), Error> {
        if vcpu >= self.nr_vcpus {
            return Err(Error::VcpuOutOfRange);
        }
        let slot = self.slots.get(vcpu as usize).ok_or(Error::VcpuOutOfRange)?;
        let ptr = core::ptr::from_ref(info).cast_mut();
        // SeqCst: on success, one total order with the raisers' SeqCst load
        // in `vcpu_info` (see the loads below); Release of the caller's
        // initialisation of `info` is part of it. Relaxed on failure:
        // nothing is read or changed.
        if slot
            .compare_exchange(core::ptr::null_mut(), ptr, SeqCst, Relaxed)
            .is_err()
        {
            return Err(Error::VcpuOutOfRange);
        }
        // A raiser that set a pending bit and then found no `vcpu_info`, or
        // the legacy one, for this vCPU read the slot before our store: its
        // pending bit is then visible to the loads below (a store-buffer
        // pattern: its SeqCst RMW and load against our SeqCst store and
        // loads; under loom, `store_load_fence` on both sides).
        store_load_fence();
        for word in self.mem.pending().iter().take(BITS_PER_WORD as usize) {
            // SeqCst: the read half of the pattern above; the Release below
            // hands what it saw on to the scan that takes the selector.
            let _ = word.load(SeqCst);
        }
        // AcqRel. Release: a scan whose Acquire swap reads these bits also
        // sees every pending bit the loads above saw. Acquire: pairs with
        // the Release swap of a scan already running on `info`, so that
        // scan's flag clear happens before our flag set below; without it
        // the clear may land after the set in the flag's modification
        // order, and the vCPU halts with the whole selector marked.
        info.evtchn_pending_sel.fetch_or(!0, AcqRel);
        // Release: after the selector; pairs with `upcall_pending`'s
        // Acquire load, so a vCPU that sees the flag finds the bits.
        info.evtchn_upcall_pending.store(1, Release);
        Ok(())
    }

    /// Whether `vcpu` has registered a `vcpu_info`. Acquires: a caller that
    /// sees it registered also sees what the registering thread wrote before
    /// it.
    #[must_use]
    pub fn is_registered(&self, vcpu: u32) -> bool {
        self.slots
            .get(vcpu as usize)
            // Acquire: a status read; pairs with the registration's store.
            .is_some_and(|s| !s.load(Acquire).is_null())
    }

    /// The memory whose words (and legacy `vcpu_info`s) it serves.
    #[must_use]
    pub fn memory(&self) -> &M {
        &self.mem
    }
}

impl<M: Memory2l, const N: usize> Memory2l for RegisteredVcpus<'_, M, N> {
    #[inline]
    fn pending(&self) -> &[XenUlong] {
        self.mem.pending()
    }
    #[inline]
    fn mask(&self) -> &[XenUlong] {
        self.mem.mask()
    }
    #[inline]
    fn vcpu_info(&self, vcpu: u32) -> Option<&VcpuInfo> {
        if vcpu >= self.nr_vcpus {
            return None;
        }
        let slot = self.slots.get(vcpu as usize)?;
        // SeqCst: pairs with the registration's SeqCst compare-exchange
        // (Acquire: the registered `vcpu_info`'s initialisation is
        // visible); a raiser that reads null here had its pending bit seen
        // by the registration's marking (see `register_vcpu_info`).
        let ptr = slot.load(SeqCst);
        if ptr.is_null() {
            // Not registered: the legacy `vcpu_info`, if `M` has one.
            return if vcpu < self.mem.nr_vcpus() {
                self.mem.vcpu_info(vcpu)
            } else {
                None
            };
        }
        // SAFETY: a non-null pointer in `slots` was made from a
        // `&'a VcpuInfo` by `register_vcpu_info` and is never changed
        // afterwards (the slot is written once, from null); `'a` outlives
        // `self` (the type holds a `PhantomData<&'a VcpuInfo>`), so the
        // pointee is valid for the lifetime of `&self`. It is only ever
        // read through shared references: `VcpuInfo` is all atomics.
        Some(unsafe { &*ptr })
    }
    #[inline]
    fn nr_vcpus(&self) -> u32 {
        self.nr_vcpus
    }
}

impl<M: Memory2l, const N: usize> core::fmt::Debug for RegisteredVcpus<'_, M, N> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        let registered = (0..self.nr_vcpus)
            .filter(|&v| self.is_registered(v))
            .count();
        f.debug_struct("RegisteredVcpus")
            .field("nr_vcpus", &self.nr_vcpus)
            .field("registered", &registered)
            .finish_non_exhaustive()
    }
}

/// The 2-level ABI over memory `M`.
#[derive(Debug)]
pub struct TwoLevel<M> {
    mem: M,
    weak: Weakness,
}

/// Round-robin position of one vCPU's scan: where the last upcall stopped.
#[derive(Clone, Copy, Debug, Default)]
pub struct Cursor {
    word: u32,
    bit: u32,
}

impl<M: Memory2l> TwoLevel<M> {
    /// The 2-level ABI over `mem`.
    #[must_use]
    pub fn new(mem: M) -> Self {
        TwoLevel {
            mem,
            weak: Weakness::default(),
        }
    }

    /// The 2-level ABI with one protective step weakened (loom models and shuttle negative controls only).
    #[cfg(any(all(loom, feature = "loom"), evtchn_shuttle))]
    #[doc(hidden)]
    pub fn weakened(mem: M, w: Weaken) -> Self {
        TwoLevel {
            mem,
            weak: Weakness::new(w),
        }
    }

    /// The memory this ABI works over.
    #[must_use]
    pub fn memory(&self) -> &M {
        &self.mem
    }

    /// The `vcpu_info` of `vcpu`, if it is one of the memory's vCPUs and its
    /// `vcpu_info` is there.
    #[inline(always)]
    fn vcpu_info(&self, vcpu: u32) -> Option<&VcpuInfo> {
        // The memory answers `None` beyond its vCPUs (`Memory2l`'s rule).
        self.mem.vcpu_info(vcpu)
    }

    /// Word, bit mask and the pending and mask words of `port`.
    #[inline]
    fn locate(&self, port: u32) -> Result<(u32, u64, &XenUlong, &XenUlong), Error> {
        let w = port / BITS_PER_WORD;
        // A selector names at most 64 words, whatever the memory holds.
        if w >= BITS_PER_WORD {
            return Err(Error::PortOutOfRange);
        }
        let bit = 1u64 << (port % BITS_PER_WORD);
        let pending = self.mem.pending().get(w as usize);
        let mask = self.mem.mask().get(w as usize);
        match (pending, mask) {
            (Some(p), Some(m)) => Ok((w, bit, p, m)),
            _ => Err(Error::PortOutOfRange),
        }
    }

    /// The pending, unmasked ports of word `w`; none for a word the memory
    /// does not have (a hostile selector bit).
    #[inline]
    fn load_word(pending: &[XenUlong], mask: &[XenUlong], w: u32) -> u64 {
        let (Some(p), Some(m)) = (pending.get(w as usize), mask.get(w as usize)) else {
            return 0;
        };
        // Acquire: pairs with the raiser's Release fetch_or (the deliverer
        // re-acquires on its clear; this orders the mask read after it).
        p.load(Acquire) & !m.load(Acquire)
    }

    /// Offers the ports `bits` of word `w` to `each`, lowest first, moving
    /// the cursor along; asks `more` before each and returns `false` as soon
    /// as it says no (the cursor then names the last port offered).
    #[inline(always)]
    fn offer(
        w: u32,
        bits: u64,
        cursor: &mut Cursor,
        more: &mut impl FnMut() -> bool,
        each: &mut impl FnMut(u32),
    ) -> bool {
        if bits == 0 {
            // Most calls of a pass (a start word with nothing above or
            // below the cursor): no call frame, no cursor write.
            return true;
        }
        Self::offer_bits(w, bits, cursor, more, each)
    }

    /// [`TwoLevel::offer`] of a non-empty `bits`, out of line: the scan
    /// inlines the empty case only.
    #[inline(never)]
    fn offer_bits(
        w: u32,
        mut bits: u64,
        cursor: &mut Cursor,
        more: &mut impl FnMut() -> bool,
        each: &mut impl FnMut(u32),
    ) -> bool {
        // The cursor is written once per word, not per port: it names the
        // last port offered when the word is done or the budget runs out.
        // (A handler that unwinds leaves it where the word began: only the
        // round-robin start of the next pass depends on it.)
        let mut last = None;
        let done = loop {
            if bits == 0 {
                break true;
            }
            if !more() {
                break false;
            }
            let b = bits.trailing_zeros();
            // Clears the lowest set bit (bits != 0, so no wrap happens).
            bits &= bits.wrapping_sub(1);
            last = Some(b);
            // w and b are below 64 (a selector and a word bit): the port is
            // below 4096 and the shift and or cannot overflow.
            each(w << BITS_PER_WORD.trailing_zeros() | b);
        };
        if let Some(b) = last {
            cursor.word = w;
            cursor.bit = b;
        }
        done
    }

    /// Ends a scan out of budget: gives back the selector bits `sel` its
    /// pass took (a word fully offered comes back too and costs the next
    /// pass one load; the ports not offered are still pending in their
    /// words, so their selector bits are all the next pass needs), then sets
    /// the vCPU's own upcall flag so that it runs another upcall before it
    /// halts (no kick: the vCPU is running).
    #[inline]
    fn defer(&self, vi: &VcpuInfo, sel: u64) {
        if !self.weak.has(Weaken::BudgetDropsSelector) {
            // AcqRel. Release: a scan on another handle of this vCPU whose
            // Acquire swap reads these bits also sees the pending bits we
            // acquired. Acquire: pairs with that scan's Release swap, so
            // its flag clear happens before our flag set below; without it
            // the clear may land after the set in the flag's modification
            // order, and both scans end with the bits given back behind a
            // clear flag (s20).
            vi.evtchn_pending_sel.fetch_or(sel, AcqRel);
        }
        if !self.weak.has(Weaken::BudgetNoUpcallFlag) {
            // Release: after the selector bits; pairs with `upcall_pending`'s
            // Acquire load, so a vCPU that sees the flag finds the bits.
            vi.evtchn_upcall_pending.store(1, Release);
        }
    }

    /// Sets selector bit `w` of `vcpu` and then its upcall flag; returns the
    /// vCPU to kick if the flag went 0 → 1. An out-of-range vCPU raises
    /// nothing: the event stays pending (the control plane never passes one).
    #[inline]
    fn raise_selector(&self, vcpu: u32, w: u32) -> Kick {
        let vi = self.vcpu_info(vcpu)?;
        let sel = 1u64 << w;
        // AcqRel. Release: a deliverer whose selector swap reads this bit
        // also sees our pending bit. Acquire: pairs with the deliverer's
        // Release swap, so its earlier `upcall_pending = 0` is visible to our
        // swap below and a needed kick is not missed.
        let old = vi
            .evtchn_pending_sel
            .fetch_or(sel, self.weak.ord(Weaken::RelaxedSelector, AcqRel));
        if old & sel != 0 {
            // Someone else raised this word and owns the upcall flag.
            return None;
        }
        // AcqRel: ordered after the selector bit, so a deliverer that sees
        // the flag set and loops again also sees the selector bit.
        if vi.evtchn_upcall_pending.swap(1, AcqRel) == 0 {
            Some(vcpu)
        } else {
            None
        }
    }
}

/// One pass of a 2-level scan. Dropped only when a handler unwinds out of
/// the pass (the pass `forget`s it otherwise): its selector bits go back and
/// the vCPU's upcall flag is set, as when the scan runs out of budget, so
/// that the ports the pass had not offered yet are not stranded.
struct Unwind<'a, M: Memory2l> {
    abi: &'a TwoLevel<M>,
    vi: &'a VcpuInfo,
    sel: u64,
}

impl<M: Memory2l> Drop for Unwind<'_, M> {
    fn drop(&mut self) {
        if !self.abi.weak.has(Weaken::ScanNotUnwindSafe) {
            self.abi.defer(self.vi, self.sel);
        }
    }
}

impl<M: Memory2l> Ports for TwoLevel<M> {
    fn nr_ports(&self) -> u32 {
        // A selector names at most 64 words: ports beyond 4096 are ignored.
        let words = self.mem.pending().len().min(self.mem.mask().len());
        u32::try_from(words.min(BITS_PER_WORD as usize))
            .map_or(0, |w| w.saturating_mul(BITS_PER_WORD))
    }

    #[inline]
    fn nr_vcpus(&self) -> u32 {
        self.mem.nr_vcpus()
    }

    fn clear_pending(&self, port: u32) -> Result<(), Error> {
        let (_, bit, pending, _) = self.locate(port)?;
        // Release: a raiser whose fetch_or reads this value (or a later
        // one) sees what the control plane wrote before: bind's new
        // generation, so a stale sender landing after the reset says so.
        // (Loom cannot show this one: its SeqCst model orders bind's mask
        // before the sender's fence, which C++20 does not promise.)
        pending.fetch_and(!bit, Release);
        Ok(())
    }

    fn is_pending(&self, port: u32) -> Result<bool, Error> {
        let (_, bit, pending, _) = self.locate(port)?;
        // Acquire: a status read; pairs with the raiser's Release.
        Ok(pending.load(Acquire) & bit != 0)
    }

    fn is_masked(&self, port: u32) -> Result<bool, Error> {
        let (_, bit, _, mask) = self.locate(port)?;
        // Acquire: a status read.
        Ok(mask.load(Acquire) & bit != 0)
    }

    fn upcall_pending(&self, vcpu: u32) -> Result<bool, Error> {
        let vi = self.vcpu_info(vcpu).ok_or(Error::VcpuOutOfRange)?;
        // Acquire: pairs with the raiser's AcqRel swap, so a vCPU that sees
        // the flag also sees the selector bit set before it.
        Ok(vi.evtchn_upcall_pending.load(Acquire) != 0)
    }
}

impl<M: Memory2l> Raise for TwoLevel<M> {
    #[inline]
    fn set_pending(&self, port: u32, target: impl FnOnce() -> u32) -> Result<Raised, Error> {
        let (w, bit, pending, mask) = self.locate(port)?;
        // SeqCst: the write half of the send/unmask Dekker pattern (see
        // `store_load_fence`); it is also the Release that publishes what the
        // sender wrote before the send to the handler's Acquire clear.
        let old = pending.fetch_or(bit, self.weak.ord(Weaken::RelaxedPending, SeqCst));
        if old & bit != 0 {
            // Coalesced: whoever set it first raises (edge semantics).
            return Ok(Raised::Coalesced);
        }
        if !self.weak.has(Weaken::NoStoreLoadFence) {
            store_load_fence();
        }
        // SeqCst: the read half of the Dekker pattern; a masked port is
        // raised by the unmask, which is certain to see our pending bit.
        // Also Acquire: pairs with the unmask's Release, so `target()` sees
        // the binding a rebinder wrote before unmasking.
        if mask.load(SeqCst) & bit != 0 {
            return Ok(Raised::Masked);
        }
        let vcpu = target();
        let kick = self.raise_selector(vcpu, w).is_some();
        Ok(Raised::Notified { vcpu, kick })
    }

    fn unmask(&self, port: u32, target: impl FnOnce() -> u32) -> Result<Kick, Error> {
        let (w, bit, pending, mask) = self.locate(port)?;
        // SeqCst: the write half of the Dekker pattern with `set_pending`;
        // Release: a raiser that reads the cleared bit sees the binding the
        // control plane wrote before unmasking.
        let old = mask.fetch_and(!bit, SeqCst);
        if old & bit == 0 {
            return Ok(None);
        }
        if !self.weak.has(Weaken::NoStoreLoadFence) {
            store_load_fence();
        }
        // SeqCst: the read half of the Dekker pattern: if the raiser saw the
        // mask still set, this load sees its pending bit.
        if pending.load(SeqCst) & bit == 0 {
            return Ok(None);
        }
        Ok(self.raise_selector(target(), w))
    }

    fn reraise(&self, port: u32, target: impl FnOnce() -> u32) -> Result<Kick, Error> {
        let (w, bit, pending, mask) = self.locate(port)?;
        // SeqCst: a masked port is left to its unmask, exactly as in
        // `set_pending`; the caller's Acquire on the port state already
        // ordered the pending bit it saw before this load.
        if pending.load(SeqCst) & bit == 0 || mask.load(SeqCst) & bit != 0 {
            return Ok(None);
        }
        Ok(self.raise_selector(target(), w))
    }
}

impl<M: Memory2l> Deliver for TwoLevel<M> {
    type Cursor = Cursor;
    #[inline]
    fn test_and_clear_pending(&self, port: u32) -> Result<bool, Error> {
        // The pending word alone is touched; the range is the ABI's
        // (`locate`'s: below 64 words, and in both arrays).
        let (w, b) = (port / BITS_PER_WORD, port % BITS_PER_WORD);
        if w >= BITS_PER_WORD || w as usize >= self.mem.mask().len() {
            return Err(Error::PortOutOfRange);
        }
        let pending = (self.mem.pending())
            .get(w as usize)
            .ok_or(Error::PortOutOfRange)?;
        // Acquire: pairs with the raiser's Release fetch_or, so the handler
        // that runs next sees everything written before the send (C1).
        let old = pending.fetch_and(!(1u64 << b), self.weak.ord(Weaken::RelaxedPending, AcqRel));
        Ok((old >> b) & 1 != 0)
    }

    #[inline]
    fn mask(&self, port: u32) -> Result<bool, Error> {
        let (_, bit, _, mask) = self.locate(port)?;
        // SeqCst: a raiser that misses this bit is one the unmask Dekker
        // pattern covers; setting needs no more than the RMW's own order.
        Ok(mask.fetch_or(bit, SeqCst) & bit != 0)
    }

    fn try_unmask(&self, port: u32) -> Result<GuestUnmask, Error> {
        let (_, bit, pending, mask) = self.locate(port)?;
        // SeqCst: a status read that decides; a port pending now keeps its
        // mask, and Xen's unmask (which raises on the mask's 1 -> 0) raises it.
        if pending.load(SeqCst) & bit != 0 {
            return Ok(GuestUnmask::Hypercall);
        }
        // SeqCst: the write half of the Dekker pattern with `set_pending`:
        // a raiser that read the mask still set is seen by the load below.
        let old = mask.fetch_and(!bit, SeqCst);
        if old & bit == 0 {
            return Ok(GuestUnmask::Done);
        }
        if !self.weak.has(Weaken::NoStoreLoadFence) {
            store_load_fence();
        }
        // SeqCst: the read half. Pending now: a raise between the first
        // load and the clear saw the mask and notified nobody. Mask again;
        // if nobody else did meanwhile, the hypervisor's unmask raises it
        // (a raiser that saw the mask clear raised it too: one spurious
        // upcall at most).
        if pending.load(SeqCst) & bit != 0
            && !self.weak.has(Weaken::GuestUnmaskIgnoresPending)
            && mask.fetch_or(bit, SeqCst) & bit == 0
        {
            return Ok(GuestUnmask::Hypercall);
        }
        Ok(GuestUnmask::Done)
    }

    fn scan_bounded(
        &self,
        vcpu: u32,
        cursor: &mut Cursor,
        mut more: impl FnMut() -> bool,
        mut each: impl FnMut(u32) -> Delivery,
        mut kick: impl FnMut(u32),
    ) -> Result<(), Error> {
        // A pending port bound elsewhere is raised again on the vCPU it is
        // bound to now, as the FIFO ABI relinks it. When the rebind's
        // unmask already raised it there this costs that vCPU one look;
        // but a raiser that has not learned of the move yet (a hypervisor
        // whose `notify_vcpu_id` lags the guest's `set_affinity`) sets the
        // pending bit and the selector bit here, after the unmask: nobody
        // else would ever raise it on the new vCPU.
        let mut each = |port| {
            if let Delivery::Foreign(v) = each(port) {
                if !self.weak.has(Weaken::NoForeignRelink) {
                    if let Ok(Some(k)) = self.reraise(port, || v) {
                        kick(k);
                    }
                }
            }
        };
        let vi = self.vcpu_info(vcpu).ok_or(Error::VcpuOutOfRange)?;
        let pending = self.mem.pending();
        let mask = self.mem.mask();
        loop {
            let clear_after = self.weak.has(Weaken::ClearUpcallAfterSelector);
            if !clear_after {
                // Relaxed: the AcqRel selector swap below is after this store
                // in program order and releases it; a raiser whose selector
                // fetch_or reads our swap then sees the flag clear and kicks.
                vi.evtchn_upcall_pending.store(0, Relaxed);
            }
            // AcqRel. Acquire: pairs with the raiser's Release fetch_or, so
            // the pending bits behind the selector bits are visible. Release:
            // publishes the flag clear above to the next raiser.
            let sel = vi
                .evtchn_pending_sel
                .swap(0, self.weak.ord(Weaken::RelaxedSelector, AcqRel));
            if clear_after {
                // The weakened order (loom models only): see `Weaken`.
                vi.evtchn_upcall_pending.store(0, Relaxed);
            }
            // Round-robin (fairness, as Linux's scan): resume just after the
            // last port handled, i.e. the start word's bits above it, then
            // the other selected words in order, then the start word's bits
            // up to and including it.
            let start = cursor.word % BITS_PER_WORD;
            let above = match cursor.bit % BITS_PER_WORD {
                63 => 0,
                b => !0u64 << b << 1,
            };
            // The start word is read once for both of its parts: a port of
            // it raised after this read set its selector bit again after our
            // swap, so the next pass takes it.
            let start_bits = if sel & (1u64 << start) != 0 {
                Self::load_word(pending, mask, start)
            } else {
                0
            };
            // Held while ports are offered: a handler that unwinds through
            // the pass gives this pass's selector bits back (see `Unwind`).
            let pass = Unwind { abi: self, vi, sel };
            let mut done = Self::offer(start, start_bits & above, cursor, &mut more, &mut each);
            let mut others = (sel & !(1u64 << start)).rotate_right(start);
            while done && others != 0 {
                // Both terms are below 64: the sum cannot wrap.
                let w = others.trailing_zeros().wrapping_add(start) % BITS_PER_WORD;
                // Clears the lowest set bit (others != 0).
                others &= others.wrapping_sub(1);
                let bits = Self::load_word(pending, mask, w);
                done = Self::offer(w, bits, cursor, &mut more, &mut each);
            }
            done = done && Self::offer(start, start_bits & !above, cursor, &mut more, &mut each);
            core::mem::forget(pass);
            if !done {
                self.defer(vi, sel);
                return Ok(());
            }
            // Acquire: pairs with a raiser's swap; its selector bit is then
            // visible to the next pass's swap.
            if vi.evtchn_upcall_pending.load(Acquire) == 0 {
                return Ok(());
            }
        }
    }
}
