//! The FIFO ABI (Xen's `event_fifo.c` and the guest's queue consumer).
//!
//! Each vCPU has 16 queues, one per priority (0 highest). A raised event is
//! appended to the tail of queue (vCPU, priority) by writing its number into
//! the `LINK` field of the tail's event word; when the queue was empty the
//! raiser writes the control block's `head` instead and sets the queue's
//! `ready` bit, and only then (Xen's "stale HEAD" rule). Tails are private to
//! the raise side, one per queue under a per-queue lock (never the control
//! plane's lock); so is `last`, the queue each event was last linked on.
//!
//! Moving an event (a rebind or a priority change) while the queue it was
//! last linked on still names it as tail is the hard case: appending to that
//! old tail would splice the new queue's chain into the old one. Like Xen,
//! the linker takes the old queue's lock, sets `LINKED`, and invalidates the
//! old tail if it names the event. Unlike Xen it never drops the event when
//! `last` keeps changing: a change of `last` means another path linked the
//! event after this raise set its pending bit, so that link delivers it —
//! bounded work on every path, and no event lost.
//!
//! The raise side treats every word the guest can write (event words, links,
//! `ready`, `head`) as hostile: indices come only from its private state or
//! are range-checked, and every loop is bounded.
//!
//! The memory ([`FifoMemory`]) gives each port's event word, and each
//! vCPU's control block and `vcpu_info`, on their own:
//!
//! * [`OwnedFifo`]: crate-owned, pages of the event array allocated by
//!   `expand` as bind needs them;
//! * [`BorrowedFifo`]: caller-owned slices, the event array contiguous;
//! * [`RegisteredFifo`]: what a guest registers, while ports are raised and
//!   delivered: event-array pages of 1024 words anywhere, appended in order
//!   (`EVTCHNOP_expand_array`), and per vCPU a control block and its
//!   `vcpu_info` (`EVTCHNOP_init_control`); no allocation. A port on a page
//!   not registered yet is [`Error::PortOutOfRange`], and `expand` cannot
//!   map pages: bind gets only ports already covered.

use alloc::boxed::Box;
use core::marker::PhantomData;

use crate::abi::{Deliver, Delivery, GuestUnmask, Kick, Ports, Raise, Raised};
use crate::sync::{spin_loop, AtomicPtr, AtomicU32, AtomicU8, Lock, Ordering::*, SpinLock};
use crate::weaken::{Weaken, Weakness};
use crate::xen::fifo::{
    ControlBlock, EventWord, BUSY, EVENT_WORDS_PER_PAGE, LINKED, LINK_MASK, MASKED, MAX_QUEUES,
    NR_CHANNELS, PENDING, PRIORITY_DEFAULT,
};
use crate::xen::VcpuInfo;
use crate::Error;

/// [`MAX_QUEUES`] as a `u32`, and the lowest priority (the highest number).
const QUEUES: u32 = 16;
const LOWEST_PRIORITY: u32 = QUEUES - 1;
const _: () = assert!(QUEUES as usize == MAX_QUEUES);

/// Event words per page of [`OwnedFifo`]: a 4 KiB page natively; a tiny
/// page under loom, whose every word is a modelled atomic; 64 words under
/// shuttle (the randomized schedules' 64 ports), built anew every schedule.
#[cfg(not(any(all(loom, feature = "loom"), evtchn_shuttle)))]
const PAGE_WORDS: u32 = EVENT_WORDS_PER_PAGE;
#[cfg(all(loom, feature = "loom"))]
const PAGE_WORDS: u32 = 8;
#[cfg(evtchn_shuttle)]
const PAGE_WORDS: u32 = 64;

/// Memory the FIFO ABI works over: the event array, and per vCPU a control
/// block and a `vcpu_info` (whose `evtchn_upcall_pending` the FIFO ABI uses
/// too).
pub trait FifoMemory: Sync {
    /// The event word of `port`, if the event array covers it.
    #[must_use]
    fn event_word(&self, port: u32) -> Option<&EventWord>;
    /// Makes the event array cover `port` (Xen's `EVTCHNOP_expand_array`).
    ///
    /// # Errors
    ///
    /// [`Error::PortOutOfRange`] if the array cannot grow to `port`
    /// ([`FifoMemory::max_ports`]).
    fn expand(&self, port: u32) -> Result<(), Error>;
    /// The most ports the event array can grow to.
    #[must_use]
    fn max_ports(&self) -> u32;
    /// The control block of `vcpu`.
    #[must_use]
    fn control_block(&self, vcpu: u32) -> Option<&ControlBlock>;
    /// The `vcpu_info` of `vcpu`.
    #[must_use]
    fn vcpu_info(&self, vcpu: u32) -> Option<&VcpuInfo>;
    /// Number of vCPUs.
    #[must_use]
    fn nr_vcpus(&self) -> u32;
}

impl<T: FifoMemory + ?Sized> FifoMemory for &T {
    fn event_word(&self, port: u32) -> Option<&EventWord> {
        (**self).event_word(port)
    }
    fn expand(&self, port: u32) -> Result<(), Error> {
        (**self).expand(port)
    }
    fn max_ports(&self) -> u32 {
        (**self).max_ports()
    }
    fn control_block(&self, vcpu: u32) -> Option<&ControlBlock> {
        (**self).control_block(vcpu)
    }
    fn vcpu_info(&self, vcpu: u32) -> Option<&VcpuInfo> {
        (**self).vcpu_info(vcpu)
    }
    fn nr_vcpus(&self) -> u32 {
        (**self).nr_vcpus()
    }
}

struct Page([EventWord; PAGE_WORDS as usize]);

/// Crate-owned FIFO memory: an event array grown on demand in pages, up to
/// `max_ports` (at most 2^17), and a control block and `vcpu_info` per vCPU.
pub struct OwnedFifo {
    pages: Box<[AtomicPtr<Page>]>,
    grow: Lock<()>,
    max_ports: u32,
    control: Box<[ControlBlock]>,
    vcpus: Box<[VcpuInfo]>,
}

impl core::fmt::Debug for OwnedFifo {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("OwnedFifo")
            .field("max_ports", &self.max_ports)
            .field("vcpus", &self.vcpus.len())
            .finish_non_exhaustive()
    }
}

impl OwnedFifo {
    /// Memory for up to `max_ports.clamp(1, 2^17)` ports (no page mapped
    /// yet) and `vcpus.max(1)` vCPUs.
    #[must_use]
    pub fn new(max_ports: u32, vcpus: usize) -> Self {
        let max_ports = max_ports.clamp(1, NR_CHANNELS);
        let nr_pages = max_ports.div_ceil(PAGE_WORDS);
        OwnedFifo {
            pages: (0..nr_pages)
                .map(|_| AtomicPtr::new(core::ptr::null_mut()))
                .collect(),
            grow: Lock::new(()),
            max_ports,
            control: (0..vcpus.max(1)).map(|_| ControlBlock::new()).collect(),
            vcpus: (0..vcpus.max(1)).map(|_| VcpuInfo::new()).collect(),
        }
    }

    /// Pages mapped so far. Acquires: a caller that sees a page mapped
    /// also sees what the mapping thread wrote before it.
    #[must_use]
    pub fn mapped_pages(&self) -> usize {
        self.pages
            .iter()
            // Acquire: pairs with the Release publication in `expand`.
            .filter(|p| !p.load(Acquire).is_null())
            .count()
    }
}

impl FifoMemory for OwnedFifo {
    #[inline]
    fn event_word(&self, port: u32) -> Option<&EventWord> {
        if port >= self.max_ports {
            return None;
        }
        let slot = self.pages.get((port / PAGE_WORDS) as usize)?;
        // Acquire: pairs with the Release publication in `expand`, so the
        // page's initialised words are visible.
        let page = slot.load(Acquire);
        if page.is_null() {
            return None;
        }
        // SAFETY: a non-null pointer in `pages` came from `Box::into_raw` in
        // `expand`, was published once and is freed only by `drop`, which
        // has `&mut self`; so it is valid for the lifetime of `&self`.
        let page = unsafe { &*page };
        page.0.get((port % PAGE_WORDS) as usize)
    }

    fn expand(&self, port: u32) -> Result<(), Error> {
        if port >= self.max_ports {
            return Err(Error::PortOutOfRange);
        }
        let slot = self
            .pages
            .get((port / PAGE_WORDS) as usize)
            .ok_or(Error::PortOutOfRange)?;
        let _guard = self.grow.lock();
        // Relaxed: the lock orders us after any earlier publication.
        if slot.load(Relaxed).is_null() {
            let page = Box::new(Page(core::array::from_fn(|_| EventWord::new(0))));
            // Release: the zeroed words are visible to whoever loads the
            // pointer with Acquire.
            slot.store(Box::into_raw(page), Release);
        }
        Ok(())
    }

    fn max_ports(&self) -> u32 {
        self.max_ports
    }

    fn control_block(&self, vcpu: u32) -> Option<&ControlBlock> {
        self.control.get(vcpu as usize)
    }

    fn vcpu_info(&self, vcpu: u32) -> Option<&VcpuInfo> {
        self.vcpus.get(vcpu as usize)
    }

    fn nr_vcpus(&self) -> u32 {
        u32::try_from(self.vcpus.len()).unwrap_or(u32::MAX)
    }
}

impl Drop for OwnedFifo {
    fn drop(&mut self) {
        for slot in self.pages.iter() {
            // Relaxed: `&mut self`, no other thread can see the table.
            let page = slot.load(Relaxed);
            if !page.is_null() {
                // SAFETY: the pointer came from `Box::into_raw` in `expand`
                // and is dropped exactly once, here.
                drop(unsafe { Box::from_raw(page) });
            }
        }
    }
}

/// Caller-provided FIFO memory: a contiguous event array (for example the
/// guest's pages mapped in a row) and per-vCPU control blocks and
/// `vcpu_info`s.
#[derive(Debug)]
pub struct BorrowedFifo<'a> {
    /// The event array; port `p` is `words[p]`.
    pub words: &'a [EventWord],
    /// One control block per vCPU.
    pub control: &'a [ControlBlock],
    /// One `vcpu_info` per vCPU (the same length as `control`).
    pub vcpus: &'a [VcpuInfo],
}

impl FifoMemory for BorrowedFifo<'_> {
    fn event_word(&self, port: u32) -> Option<&EventWord> {
        if port >= NR_CHANNELS {
            return None;
        }
        self.words.get(port as usize)
    }
    fn expand(&self, port: u32) -> Result<(), Error> {
        self.event_word(port)
            .map(|_| ())
            .ok_or(Error::PortOutOfRange)
    }
    fn max_ports(&self) -> u32 {
        u32::try_from(self.words.len())
            .unwrap_or(u32::MAX)
            .min(NR_CHANNELS)
    }
    fn control_block(&self, vcpu: u32) -> Option<&ControlBlock> {
        self.control.get(vcpu as usize)
    }
    fn vcpu_info(&self, vcpu: u32) -> Option<&VcpuInfo> {
        self.vcpus.get(vcpu as usize)
    }
    fn nr_vcpus(&self) -> u32 {
        let n = self.control.len().min(self.vcpus.len());
        u32::try_from(n).unwrap_or(u32::MAX)
    }
}

/// The event words of one page of the event array: 1024, 4 KiB.
const GUEST_PAGE_WORDS: usize = EVENT_WORDS_PER_PAGE as usize;
/// Pages of a full event array (`NR_CHANNELS / 1024`: 128).
const MAX_PAGES: usize = NR_CHANNELS.div_ceil(EVENT_WORDS_PER_PAGE) as usize;

/// FIFO memory as a guest registers it: the event array one page at a time
/// (`EVTCHNOP_expand_array`, pages anywhere, not in a row) and per vCPU a
/// control block and a `vcpu_info` (`EVTCHNOP_init_control`). `N` is the
/// most vCPUs it can hold; it allocates nothing.
///
/// * [`RegisteredFifo::expand_array`] appends a page: page `k` holds ports
///   `1024 k ..= 1024 k + 1023`. A port on a page not registered yet is
///   [`Error::PortOutOfRange`] for every operation, and
///   [`FifoMemory::expand`] (bind's [`crate::Raise::prepare`]) cannot map
///   one: it accepts only ports already covered.
/// * [`RegisteredFifo::init_control`] names a vCPU's control block and its
///   `vcpu_info` (the one it registered with `VCPUOP_register_vcpu_info`),
///   once. Until then the vCPU is [`Error::VcpuOutOfRange`] for
///   `upcall_pending` and the scan, and an event raised for it stays
///   pending and unlinked until it is unmasked or raised again once the
///   control block is there (Xen drops it: a guest keeps its ports masked
///   until it has initialised its control blocks).
///
/// Both may run while ports are raised and scanned: each publishes a
/// pointer once, with Release, and readers load it with Acquire.
///
/// ```
/// use evtchn::xen::fifo::{ControlBlock, EventWord};
/// use evtchn::xen::VcpuInfo;
/// use evtchn::{Error, Fifo, Ports, Raise, Raised, RegisteredFifo};
///
/// let page: Box<[EventWord; 1024]> = Box::new(core::array::from_fn(|_| EventWord::new(0)));
/// let (cb, info) = (ControlBlock::new(), VcpuInfo::new());
/// let mem = RegisteredFifo::<4>::new(4096, 2);
/// mem.expand_array(&page)?;
/// mem.init_control(0, &cb, &info)?;
/// let fifo = Fifo::new(&mem);
/// assert_eq!(fifo.nr_ports(), 4096);
/// assert_eq!(fifo.set_pending(5, || 0)?, Raised::Notified { vcpu: 0, kick: true });
/// // Port 1024 is on page 1, which is not registered.
/// assert_eq!(fifo.set_pending(1024, || 0), Err(Error::PortOutOfRange));
/// # Ok::<(), Error>(())
/// ```
pub struct RegisteredFifo<'a, const N: usize> {
    /// Page `k` of the event array, or null; each written once, from null.
    pages: [AtomicPtr<[EventWord; GUEST_PAGE_WORDS]>; MAX_PAGES],
    max_ports: u32,
    /// Per vCPU: its control block, or null; written once, after `vcpus`.
    control: [AtomicPtr<ControlBlock>; N],
    /// Per vCPU: its `vcpu_info`, or null; written once, from null.
    vcpus: [AtomicPtr<VcpuInfo>; N],
    nr_vcpus: u32,
    registered: PhantomData<&'a ControlBlock>,
}

impl<'a, const N: usize> RegisteredFifo<'a, N> {
    /// Memory for up to `max_ports.clamp(1, 2^17)` ports, no page
    /// registered yet, and `nr_vcpus` vCPUs (clamped to `1..=N`), none of
    /// which has a control block yet.
    #[must_use]
    pub fn new(max_ports: u32, nr_vcpus: u32) -> Self {
        let cap = u32::try_from(N).unwrap_or(u32::MAX);
        RegisteredFifo {
            pages: core::array::from_fn(|_| AtomicPtr::new(core::ptr::null_mut())),
            max_ports: max_ports.clamp(1, NR_CHANNELS),
            control: core::array::from_fn(|_| AtomicPtr::new(core::ptr::null_mut())),
            vcpus: core::array::from_fn(|_| AtomicPtr::new(core::ptr::null_mut())),
            nr_vcpus: nr_vcpus.min(cap).max(1),
            registered: PhantomData,
        }
    }

    /// Pages the event array may hold: enough for `max_ports`.
    fn max_pages(&self) -> usize {
        self.max_ports.div_ceil(EVENT_WORDS_PER_PAGE) as usize
    }

    /// `EVTCHNOP_expand_array`: appends `page` to the event array; its
    /// words are the ports of the first page not registered yet.
    ///
    /// # Errors
    ///
    /// [`Error::PortOutOfRange`] if the array is full (the pages registered
    /// cover `max_ports`; Xen: `ENOSPC` beyond `NR_CHANNELS / 1024`
    /// pages); nothing changes.
    pub fn expand_array(&self, page: &'a [EventWord; GUEST_PAGE_WORDS]) -> Result<(), Error> {
        let ptr = core::ptr::from_ref(page).cast_mut();
        // The first free slot, in order; a concurrent registration that
        // takes it first moves us to the next. Bounded: 128 slots.
        for slot in self.pages.iter().take(self.max_pages()) {
            // Release on success: publishes the page to the Acquire loads
            // of `event_word`. Relaxed on failure: the slot is taken, and
            // nothing is read through it.
            if slot
                .compare_exchange(core::ptr::null_mut(), ptr, Release, Relaxed)
                .is_ok()
            {
                return Ok(());
            }
        }
        Err(Error::PortOutOfRange)
    }

    /// `EVTCHNOP_init_control`: the control block of `vcpu` is `control`
    /// and its `vcpu_info` is `info`.
    ///
    /// # Errors
    ///
    /// [`Error::VcpuOutOfRange`] if `vcpu` is not below the number of
    /// vCPUs, or has a control block already (Xen: `EINVAL`; the first
    /// stays, and nothing changes).
    pub fn init_control(
        &self,
        vcpu: u32,
        control: &'a ControlBlock,
        info: &'a VcpuInfo,
    ) -> Result<(), Error> {
        if vcpu >= self.nr_vcpus {
            return Err(Error::VcpuOutOfRange);
        }
        let (Some(cb_slot), Some(vi_slot)) = (
            self.control.get(vcpu as usize),
            self.vcpus.get(vcpu as usize),
        ) else {
            return Err(Error::VcpuOutOfRange);
        };
        // Release on success: publishes `info` to the Acquire loads of
        // `vcpu_info`; claims the vCPU, so that only one registration
        // writes its control block. Relaxed on failure: nothing is read.
        if vi_slot
            .compare_exchange(
                core::ptr::null_mut(),
                core::ptr::from_ref(info).cast_mut(),
                Release,
                Relaxed,
            )
            .is_err()
        {
            return Err(Error::VcpuOutOfRange);
        }
        // Release: after the `vcpu_info`; a raiser that finds the control
        // block (Acquire) finds the `vcpu_info` too, and so sets the
        // upcall flag for the `ready` bit it set.
        cb_slot.store(core::ptr::from_ref(control).cast_mut(), Release);
        Ok(())
    }

    /// Pages of the event array registered so far. Acquires: a caller that
    /// sees a page registered also sees what the registering thread wrote
    /// before it.
    #[must_use]
    pub fn registered_pages(&self) -> usize {
        self.pages
            .iter()
            // Acquire: a status read; pairs with the registration.
            .filter(|p| !p.load(Acquire).is_null())
            .count()
    }

    /// Whether `vcpu` has a control block.
    #[must_use]
    pub fn has_control_block(&self, vcpu: u32) -> bool {
        self.control_block(vcpu).is_some()
    }
}

impl<const N: usize> FifoMemory for RegisteredFifo<'_, N> {
    #[inline]
    fn event_word(&self, port: u32) -> Option<&EventWord> {
        if port >= self.max_ports {
            return None;
        }
        let slot = self.pages.get((port / EVENT_WORDS_PER_PAGE) as usize)?;
        // Acquire: pairs with the Release publication in `expand_array`,
        // so the page's words are visible.
        let page = slot.load(Acquire);
        if page.is_null() {
            return None;
        }
        // SAFETY: a non-null pointer in `pages` was made from a
        // `&'a [EventWord; 1024]` by `expand_array` and is never changed
        // afterwards (the slot is written once, from null); `'a` outlives
        // `self` (the type holds a `PhantomData` of `'a`), so the page is
        // valid for the lifetime of `&self`. It is only read through shared
        // references: event words are atomics.
        let page = unsafe { &*page };
        page.get((port % EVENT_WORDS_PER_PAGE) as usize)
    }

    fn expand(&self, port: u32) -> Result<(), Error> {
        // Pages are the guest's to register: a port not covered yet stays
        // out of range.
        self.event_word(port)
            .map(|_| ())
            .ok_or(Error::PortOutOfRange)
    }

    fn max_ports(&self) -> u32 {
        self.max_ports
    }

    fn control_block(&self, vcpu: u32) -> Option<&ControlBlock> {
        if vcpu >= self.nr_vcpus {
            return None;
        }
        // Acquire: pairs with the Release store in `init_control`; the
        // control block, and the `vcpu_info` stored before it, are visible.
        let cb = self.control.get(vcpu as usize)?.load(Acquire);
        if cb.is_null() {
            return None;
        }
        // SAFETY: as in `event_word`: made from a `&'a ControlBlock` by
        // `init_control`, written once, valid for `'a`, which outlives
        // `self`; a control block is all atomics.
        Some(unsafe { &*cb })
    }

    fn vcpu_info(&self, vcpu: u32) -> Option<&VcpuInfo> {
        if vcpu >= self.nr_vcpus {
            return None;
        }
        // Acquire: pairs with the Release compare-exchange in
        // `init_control`.
        let vi = self.vcpus.get(vcpu as usize)?.load(Acquire);
        if vi.is_null() {
            return None;
        }
        // SAFETY: as in `event_word`: made from a `&'a VcpuInfo` by
        // `init_control`, written once, valid for `'a`, which outlives
        // `self`; a `vcpu_info` is all atomics.
        Some(unsafe { &*vi })
    }

    fn nr_vcpus(&self) -> u32 {
        self.nr_vcpus
    }
}

impl<const N: usize> core::fmt::Debug for RegisteredFifo<'_, N> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("RegisteredFifo")
            .field("max_ports", &self.max_ports)
            .field("pages", &self.registered_pages())
            .field("nr_vcpus", &self.nr_vcpus)
            .finish_non_exhaustive()
    }
}

/// `last` of an event never linked.
const NEVER: u32 = u32::MAX;
/// Attempts to link after a tail whose word keeps changing under us.
const SET_LINK_TRIES: usize = 4;

/// Compare-exchange attempts of the guest's own unmask before it leaves the
/// port to the hypervisor's unmask.
const UNMASK_TRIES: usize = 64;

/// The FIFO ABI over memory `M`.
pub struct Fifo<M> {
    mem: M,
    /// Private tail of each queue, index `vcpu * 16 + priority`; 0 = empty.
    tails: Box<[SpinLock<u32>]>,
    /// Per port: the queue it was last linked on (`vcpu * 16 + priority`).
    last: Box<[AtomicU32]>,
    /// Per port: its priority.
    priority: Box<[AtomicU8]>,
    weak: Weakness,
}

impl<M: FifoMemory> core::fmt::Debug for Fifo<M> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Fifo")
            .field("max_ports", &self.mem.max_ports())
            .field("vcpus", &self.mem.nr_vcpus())
            .finish_non_exhaustive()
    }
}

/// One vCPU's deliver-side state: its local copy of `ready` and the head it
/// reached in each queue (Linux's `evtchn_fifo_queue`).
#[derive(Clone, Copy, Debug, Default)]
pub struct FifoCursor {
    ready: u32,
    head: [u32; MAX_QUEUES],
}

impl<M: FifoMemory> Fifo<M> {
    /// The FIFO ABI over `mem`.
    #[must_use]
    pub fn new(mem: M) -> Self {
        Self::build(mem, Weakness::default())
    }

    /// The FIFO ABI with one protective step weakened (loom models and shuttle negative controls only).
    #[cfg(any(all(loom, feature = "loom"), evtchn_shuttle))]
    #[doc(hidden)]
    pub fn weakened(mem: M, w: Weaken) -> Self {
        Self::build(mem, Weakness::new(w))
    }

    fn build(mem: M, weak: Weakness) -> Self {
        let ports = mem.max_ports() as usize;
        let queues = (mem.nr_vcpus() as usize).saturating_mul(MAX_QUEUES);
        Fifo {
            tails: (0..queues)
                .map(|_| SpinLock::with_weakness(0, weak))
                .collect(),
            last: (0..ports).map(|_| AtomicU32::new(NEVER)).collect(),
            priority: (0..ports)
                .map(|_| AtomicU8::new(PRIORITY_DEFAULT))
                .collect(),
            mem,
            weak,
        }
    }

    /// The memory this ABI works over.
    #[must_use]
    pub fn memory(&self) -> &M {
        &self.mem
    }

    fn word(&self, port: u32) -> Result<&EventWord, Error> {
        self.mem.event_word(port).ok_or(Error::PortOutOfRange)
    }

    /// Links pending, unmasked, unlinked `port` onto queue (`vcpu`, its
    /// priority). Returns the vCPU to kick when a queue became ready and
    /// the upcall flag went 0 → 1.
    fn link(&self, port: u32, vcpu: u32) -> Kick {
        self.link_word(port, self.mem.event_word(port)?, vcpu)
    }

    /// [`Fifo::link`] with `port`'s event word already looked up.
    #[inline]
    fn link_word(&self, port: u32, word: &EventWord, vcpu: u32) -> Kick {
        let cb = self.mem.control_block(vcpu)?;
        let (Some(last_slot), Some(prio_slot)) = (
            self.last.get(port as usize),
            self.priority.get(port as usize),
        ) else {
            return None;
        };
        // Relaxed: a priority change races a raise as in Xen: the event may
        // be signalled once more on the old priority.
        let prio = u32::from(prio_slot.load(Relaxed)).min(LOWEST_PRIORITY);
        let q = vcpu.checked_mul(QUEUES)?.checked_add(prio)?;
        let new_q = self.tails.get(q as usize)?;
        // Acquire: pairs with the Release store of `last` by the previous
        // linker (made under that queue's lock).
        let last = last_slot.load(Acquire);
        let old = if last == NEVER { q } else { last };
        let old_q = self.tails.get(old as usize)?;
        let mut old_tail = old_q.lock();
        // Relaxed: `last` changes only under the lock of the queue it names,
        // which we hold.
        if last_slot.load(Relaxed) != last {
            // The event was linked by another path since we read `last`,
            // after this raise set its pending bit: that link delivers it.
            return None;
        }
        if !self.take_linked(word) {
            // Not pending, masked (the unmask links it), or already linked.
            return None;
        }
        if *old_tail == port && !self.weak.has(Weaken::NoTailInvalidation) {
            // The event was the old queue's tail and is no longer linked
            // there: that queue is empty. Appending to it must not follow
            // this event into the queue it is about to join.
            *old_tail = 0;
        }
        // Release: the next linker's Acquire load sees it with our writes.
        last_slot.store(q, Release);
        let mut tail = if old == q {
            old_tail
        } else {
            drop(old_tail);
            new_q.lock()
        };
        let linked = *tail != 0 && *tail != port && self.set_link(*tail, port);
        if !linked {
            // Release: a guest that reads this head sees the LINKED word.
            cb.head.get(prio as usize)?.store(port, Release);
        }
        *tail = port;
        drop(tail);
        if linked {
            // Appended after a linked tail: the guest reaches it through
            // that link; `ready` and `head` are left alone (the stale-HEAD
            // rule).
            return None;
        }
        let bit = 1u32 << prio;
        // AcqRel: Release publishes the head above to the guest's Acquire
        // swap of `ready`; Acquire pairs with that swap's Release, so the
        // guest's earlier upcall-flag clear is visible to our swap below.
        if cb.ready.fetch_or(bit, AcqRel) & bit != 0 {
            return None;
        }
        let vi = self.mem.vcpu_info(vcpu)?;
        // AcqRel: ordered after `ready`, as in the 2-level ABI.
        if vi.evtchn_upcall_pending.swap(1, AcqRel) == 0 {
            Some(vcpu)
        } else {
            None
        }
    }

    /// Sets `LINKED` (and clears a stale link) if the event is pending,
    /// unmasked and not linked. Bounded: it retries only when the word
    /// changed, and gives up when a condition fails.
    fn take_linked(&self, word: &EventWord) -> bool {
        // Acquire: see the latest state before the compare-exchange.
        let mut w = word.load(Acquire);
        for _ in 0..SET_LINK_TRIES * 4 {
            if w & PENDING == 0 || w & MASKED != 0 || w & LINKED != 0 {
                return false;
            }
            // AcqRel: the link is published with the pending bit we saw.
            match word.compare_exchange(w, (w | LINKED) & !LINK_MASK, AcqRel, Acquire) {
                Ok(_) => return true,
                Err(now) => w = now,
            }
        }
        // A word that keeps changing is the guest's own doing: it keeps the
        // event pending; its next unmask or raise links it.
        false
    }

    /// Writes `port` into the `LINK` of the tail's word if the tail is still
    /// linked (not yet consumed by the guest). Xen's `evtchn_fifo_set_link`:
    /// after one failed attempt it sets `BUSY` so the guest's conditional
    /// unmask waits, and gives up after a bounded number of attempts.
    fn set_link(&self, tail: u32, port: u32) -> bool {
        let Some(word) = self.mem.event_word(tail) else {
            return false;
        };
        // Acquire: the tail's current state.
        let mut w = word.load(Acquire);
        let mut busy = false;
        let mut linked = false;
        for attempt in 0..=SET_LINK_TRIES {
            if w & LINKED == 0 {
                break;
            }
            let new = (w & !(BUSY | LINK_MASK)) | (port & LINK_MASK);
            // AcqRel: Release publishes our event's LINKED word (set before
            // under the queue lock) to the guest that follows this link.
            match word.compare_exchange(w, new, AcqRel, Acquire) {
                Ok(_) => {
                    linked = true;
                    busy = false; // the new value has BUSY clear
                    break;
                }
                Err(now) => w = now,
            }
            if attempt == 0 {
                // AcqRel: hold the guest's conditional unmask off the word.
                w = word.fetch_or(BUSY, AcqRel) | BUSY;
                busy = true;
            }
        }
        if busy {
            // Release: end of our hold on the word.
            word.fetch_and(!BUSY, Release);
        }
        linked
    }

    /// Takes the head of queue `prio` off the queue and offers it to `each`.
    /// Returns the queues `cursor` holds to the control block, so that the
    /// next upcall resumes them whatever cursor it uses (a dropped cursor
    /// must not strand a queue whose `ready` bit it took).
    ///
    /// Writing `head[q]` races no raiser: a queue the cursor holds with a
    /// local head is not empty (that head is still LINKED, and only this
    /// vCPU's consumer unlinks), so a raiser appends behind its tail and
    /// writes no head.
    fn hand_back(cb: &ControlBlock, cursor: &mut FifoCursor) {
        let mut held = cursor.ready;
        while held != 0 {
            let prio = held.trailing_zeros();
            // Clears the lowest set bit (held != 0).
            held &= held.wrapping_sub(1);
            let (Some(local), Some(shared)) = (
                cursor.head.get_mut(prio as usize),
                cb.head.get(prio as usize),
            ) else {
                continue;
            };
            if *local != 0 {
                // Release: the consumer that reads it (Acquire) sees the
                // words this cursor unlinked before it.
                shared.store(*local, Release);
                *local = 0;
            }
        }
        // AcqRel. Release: after the heads; pairs with the AcqRel swap of
        // the next upcall, which then reads the heads written above.
        // Acquire: pairs with the Release swap of a scan running on another
        // handle of this vCPU, so its flag clear happens before the flag
        // set that follows a hand-back (budget, unwind); without it the
        // clear may land after the set in the flag's modification order,
        // and both scans end with the queues handed back behind a clear
        // flag (s20).
        cb.ready.fetch_or(cursor.ready, AcqRel);
        cursor.ready = 0;
    }

    fn consume_one(
        &self,
        cb: &ControlBlock,
        cursor: &mut FifoCursor,
        prio: u32,
        each: &mut impl FnMut(u32) -> Delivery,
        kick: &mut impl FnMut(u32),
    ) {
        let bit = 1u32 << prio;
        let local = cursor.head.get_mut(prio as usize);
        let Some(local) = local else {
            cursor.ready &= !bit;
            return;
        };
        let mut head = *local;
        if head == 0 {
            // Acquire: pairs with the raiser's Release head store, so the
            // head's LINKED word is visible.
            head = cb.head.get(prio as usize).map_or(0, |h| h.load(Acquire));
        }
        let Some(word) = (head != 0).then(|| self.mem.event_word(head)).flatten() else {
            cursor.ready &= !bit;
            *local = 0;
            return;
        };
        // Take it off the queue: clear LINKED and the link, keeping the
        // next port. Acquire: see what the raiser wrote before linking.
        let mut w = word.load(Acquire);
        loop {
            // AcqRel: Acquire pairs with the raiser's Release set_link (the
            // next event's word is then visible); Release orders our clear
            // before a raiser that finds the word unlinked.
            match word.compare_exchange(w, w & !(LINKED | LINK_MASK), AcqRel, Acquire) {
                Ok(_) => break,
                Err(now) => w = now,
            }
        }
        let next = w & LINK_MASK;
        if next == 0 {
            cursor.ready &= !bit;
        }
        *local = next;
        if w & LINKED == 0 || w & PENDING == 0 || w & MASKED != 0 {
            // A stale head, a port whose pending state was cleared, or a
            // masked one (its unmask links it again).
            return;
        }
        if let Delivery::Foreign(vcpu) = each(head) {
            // Bound elsewhere since it was linked here: link it where it
            // belongs now (the rebind's unmask found it still linked here).
            if !self.weak.has(Weaken::NoForeignRelink) {
                if let Some(k) = self.link(head, vcpu) {
                    kick(k);
                }
            }
        }
    }
}

/// A FIFO scan in progress. Dropped only when a handler unwinds out of the
/// scan (both returns `forget` it): the queues its cursor holds go back to
/// the control block and the vCPU's upcall flag is set, as when the scan
/// runs out of budget, so that the panic strands nothing.
struct Unwind<'a, M: FifoMemory> {
    fifo: &'a Fifo<M>,
    cb: &'a ControlBlock,
    vi: &'a VcpuInfo,
    cursor: &'a mut FifoCursor,
}

impl<M: FifoMemory> Unwind<'_, M> {
    /// Hands the held queues back (`queues`) and sets the upcall flag
    /// (`flag`).
    fn give_back(&mut self, queues: bool, flag: bool) {
        if queues {
            Fifo::<M>::hand_back(self.cb, self.cursor);
        }
        if flag {
            // Release: after the hand-back; pairs with `upcall_pending`'s
            // Acquire. The vCPU's own flag: it runs another upcall before it
            // halts.
            self.vi.evtchn_upcall_pending.store(1, Release);
        }
    }
}

impl<M: FifoMemory> Drop for Unwind<'_, M> {
    fn drop(&mut self) {
        let keep = !self.fifo.weak.has(Weaken::ScanNotUnwindSafe);
        self.give_back(keep, keep);
    }
}

impl<M: FifoMemory> Ports for Fifo<M> {
    fn nr_ports(&self) -> u32 {
        self.mem.max_ports()
    }

    fn nr_vcpus(&self) -> u32 {
        self.mem.nr_vcpus()
    }

    fn clear_pending(&self, port: u32) -> Result<(), Error> {
        // Release: a raiser whose fetch_or reads this value sees what the
        // control plane wrote before (bind's new generation).
        self.word(port)?.fetch_and(!PENDING, Release);
        Ok(())
    }

    fn is_pending(&self, port: u32) -> Result<bool, Error> {
        // Acquire: a status read.
        Ok(self.word(port)?.load(Acquire) & PENDING != 0)
    }

    fn is_masked(&self, port: u32) -> Result<bool, Error> {
        // Acquire: a status read.
        Ok(self.word(port)?.load(Acquire) & MASKED != 0)
    }

    fn upcall_pending(&self, vcpu: u32) -> Result<bool, Error> {
        if vcpu >= self.mem.nr_vcpus() {
            return Err(Error::VcpuOutOfRange);
        }
        let vi = self.mem.vcpu_info(vcpu).ok_or(Error::VcpuOutOfRange)?;
        // Acquire: pairs with the raiser's AcqRel swap.
        Ok(vi.evtchn_upcall_pending.load(Acquire) != 0)
    }
}

impl<M: FifoMemory> Raise for Fifo<M> {
    fn has_priorities(&self) -> bool {
        true
    }

    fn prepare(&self, port: u32) -> Result<(), Error> {
        self.mem.expand(port)
    }

    fn set_priority(&self, port: u32, priority: u8) -> Result<(), Error> {
        if usize::from(priority) >= MAX_QUEUES {
            return Err(Error::PriorityOutOfRange);
        }
        let slot = self
            .priority
            .get(port as usize)
            .ok_or(Error::PortOutOfRange)?;
        // Relaxed: read by the next link; an event linked meanwhile is
        // delivered once on its old priority (as in Xen).
        slot.store(priority, Relaxed);
        Ok(())
    }

    fn set_pending(&self, port: u32, target: impl FnOnce() -> u32) -> Result<Raised, Error> {
        let word = self.word(port)?;
        // AcqRel. Release: publishes what the sender wrote before the send
        // to the handler's Acquire clear. Acquire: pairs with the unmask's
        // Release, so `target()` sees a rebinder's binding. PENDING and
        // MASKED share this word, so no store-load fence is needed.
        let old = word.fetch_or(PENDING, self.weak.ord(Weaken::RelaxedPending, AcqRel));
        if old & PENDING != 0 {
            return Ok(Raised::Coalesced);
        }
        if old & MASKED != 0 {
            return Ok(Raised::Masked);
        }
        let vcpu = target();
        let kick = self.link_word(port, word, vcpu).is_some();
        Ok(Raised::Notified { vcpu, kick })
    }

    fn unmask(&self, port: u32, target: impl FnOnce() -> u32) -> Result<Kick, Error> {
        // AcqRel: Release publishes the binding written before it to a
        // raiser's Acquire fetch_or; Acquire sees its PENDING.
        // As Xen's `evtchn_fifo_unmask`: link whenever the port is pending
        // (`link` does nothing to a port still linked).
        let old = self.word(port)?.fetch_and(!MASKED, AcqRel);
        if old & PENDING == 0 {
            return Ok(None);
        }
        Ok(self.link(port, target()))
    }

    fn reraise(&self, port: u32, target: impl FnOnce() -> u32) -> Result<Kick, Error> {
        // Acquire: see PENDING/MASKED/LINKED as last written; `link` checks
        // them again atomically.
        let w = self.word(port)?.load(Acquire);
        if w & PENDING == 0 || w & MASKED != 0 || w & LINKED != 0 {
            return Ok(None);
        }
        Ok(self.link(port, target()))
    }
}

impl<M: FifoMemory> Deliver for Fifo<M> {
    type Cursor = FifoCursor;

    fn test_and_clear_pending(&self, port: u32) -> Result<bool, Error> {
        // Acquire: pairs with the raiser's Release fetch_or (C1).
        let old = self.word(port)?.fetch_and(!PENDING, AcqRel);
        Ok(old & PENDING != 0)
    }

    fn mask(&self, port: u32) -> Result<bool, Error> {
        // AcqRel: one total order with the raiser's fetch_or on this word.
        Ok(self.word(port)?.fetch_or(MASKED, AcqRel) & MASKED != 0)
    }

    // Linux's conditional unmask (after XSA-332): clear MASKED only if the
    // port is not pending and the raise side is not rewriting the word
    // (BUSY).
    fn try_unmask(&self, port: u32) -> Result<GuestUnmask, Error> {
        let word = self.word(port)?;
        // Acquire: see the raiser's PENDING before deciding.
        let mut w = word.load(Acquire);
        // Bounded: a word the other side keeps BUSY (or keeps changing) is
        // left to the hypervisor's unmask, which is always correct, so that
        // hostile memory cannot hang the guest here.
        for _ in 0..UNMASK_TRIES {
            if w & MASKED == 0 {
                return Ok(GuestUnmask::Done);
            }
            if w & PENDING != 0 && !self.weak.has(Weaken::GuestUnmaskIgnoresPending) {
                return Ok(GuestUnmask::Hypercall);
            }
            let old = w & !BUSY;
            // AcqRel: the compare-exchange fails while BUSY or PENDING
            // appear, and otherwise orders the unmask after the raiser's
            // last write to the word.
            match word.compare_exchange(old, old & !MASKED, AcqRel, Acquire) {
                Ok(_) => return Ok(GuestUnmask::Done),
                Err(now) => {
                    if now & BUSY != 0 {
                        spin_loop();
                    }
                    w = now;
                }
            }
        }
        Ok(GuestUnmask::Hypercall)
    }

    fn evacuate(
        &self,
        vcpu: u32,
        each: impl FnMut(u32) -> Delivery,
        kick: impl FnMut(u32),
    ) -> Result<(), Error> {
        // A consumer of `vcpu`'s queues with a cursor of its own, beside the
        // vCPU's own deliverer if it still runs (two deliverers of one vCPU
        // may run at once).
        self.scan(vcpu, &mut FifoCursor::default(), each, kick)
    }

    fn scan_bounded(
        &self,
        vcpu: u32,
        cursor: &mut FifoCursor,
        mut more: impl FnMut() -> bool,
        mut each: impl FnMut(u32) -> Delivery,
        mut kick: impl FnMut(u32),
    ) -> Result<(), Error> {
        let vi = self.mem.vcpu_info(vcpu).ok_or(Error::VcpuOutOfRange)?;
        let cb = self.mem.control_block(vcpu).ok_or(Error::VcpuOutOfRange)?;
        // Held until the scan returns: a handler that unwinds through it
        // hands the queues back (see `Unwind`).
        let mut scan = Unwind {
            fifo: self,
            cb,
            vi,
            cursor,
        };
        // A guest's garbage links can form a cycle that the relinking of
        // events bound elsewhere keeps feeding (each relink writes the next
        // link followed). Bound one upcall: twice the ports it could hold
        // honestly; what is left stays queued for the next upcall, which
        // the flag set here asks for.
        let mut budget = self.mem.max_ports().saturating_mul(2).max(64);
        loop {
            // Relaxed: released by the AcqRel swap of `ready` below, as the
            // 2-level ABI's flag clear is by its selector swap.
            vi.evtchn_upcall_pending.store(0, Relaxed);
            // AcqRel: Acquire pairs with the raiser's Release fetch_or (the
            // head it wrote is visible); Release publishes the flag clear.
            scan.cursor.ready |= cb.ready.swap(0, AcqRel);
            while scan.cursor.ready != 0 {
                // Strict priority: always the highest ready queue.
                let left = budget.checked_sub(1).filter(|_| more());
                let Some(left) = left else {
                    // Out of budget (ours or the caller's): the queues we
                    // hold go back to the control block, so that whichever
                    // cursor runs the next upcall resumes them.
                    scan.give_back(
                        !self.weak.has(Weaken::BudgetNoHandBack),
                        !self.weak.has(Weaken::BudgetNoUpcallFlag),
                    );
                    core::mem::forget(scan);
                    return Ok(());
                };
                budget = left;
                let prio = scan.cursor.ready.trailing_zeros();
                self.consume_one(cb, scan.cursor, prio, &mut each, &mut kick);
                // Relaxed: only a hint; the swap orders.
                if cb.ready.load(Relaxed) != 0 {
                    // AcqRel: as above; a higher priority made ready
                    // meanwhile overtakes the queue we were draining.
                    scan.cursor.ready |= cb.ready.swap(0, AcqRel);
                }
            }
            // Acquire: pairs with a raiser's flag swap.
            if vi.evtchn_upcall_pending.load(Acquire) == 0 {
                core::mem::forget(scan);
                return Ok(());
            }
        }
    }
}
