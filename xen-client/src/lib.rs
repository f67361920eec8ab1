//! evtchn against C code written to Xen's public headers.
//!
//! * [`CGuest`]: a Linux-style guest in C (`c/guest.c`) over a `shared_info`
//!   page (2-level) or a FIFO event array, control blocks and `vcpu_info`s,
//!   making its hypercalls through a [`Hypervisor`] that the Rust side
//!   implements (with `evtchn::Host` behind it in the tests).
//! * [`CRaiser`]: a Xen-style hypervisor raise side in C (`c/raiser.c`) over
//!   the same memory, serving Xen's `EVTCHNOP_*` commands, for evtchn's
//!   guest side to run against.
//! * [`run_ops_script`]: a C script (`c/ops.c`) of `EVTCHNOP_*` calls, all
//!   14 commands with the argument structures of Xen's header, made by two
//!   domains through a raw hypercall gate into evtchn's
//!   `Domains::dispatch`, each value checked against Xen's behaviour.
//! * [`xen_abi`]: Xen's hypercall argument structs, checked against the C
//!   compiler's view of Xen's headers ([`c_abi_layout`]).
//! * [`harness`]: what the tests share: vCPU wake-ups, a small random number
//!   generator, the run length, the send accounting, the scenario's sizes,
//!   counters, summary lines, clean assertion and negative-control runner.
//!
//! Memory is allocated by Rust (evtchn's layouts are Xen's, bit for bit) and
//! lent to the C code for the lifetime `'a` of the wrapper.

use std::ffi::{c_char, c_int, c_void, CStr};
use std::marker::PhantomData;
use std::ptr::NonNull;

use evtchn::xen::evtchnop::{self as op, DomId};
use evtchn::xen::fifo::{ControlBlock, EventWord};
use evtchn::xen::{SharedInfo, VcpuInfo, LEGACY_MAX_VCPUS};
use evtchn::{Domains, Notify, Raise};

pub mod harness;
pub mod xen_abi;

use xen_abi::{
    EvtchnBindIpi, EvtchnBindVcpu, EvtchnClose, EvtchnSend, EvtchnSetPriority, EvtchnUnmask,
    EINVAL, ENOSYS, EVTCHNOP_BIND_IPI, EVTCHNOP_BIND_VCPU, EVTCHNOP_CLOSE, EVTCHNOP_SEND,
    EVTCHNOP_SET_PRIORITY, EVTCHNOP_UNMASK,
};

/// One `HYPERVISOR_event_channel_op` call, decoded from Xen's command
/// number and argument struct.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EvtchnOp {
    /// `EVTCHNOP_bind_ipi`: a new port notifying `vcpu`; answers the port.
    BindIpi {
        /// The vCPU to notify.
        vcpu: u32,
    },
    /// `EVTCHNOP_close`.
    Close {
        /// The port.
        port: u32,
    },
    /// `EVTCHNOP_send`.
    Send {
        /// The port.
        port: u32,
    },
    /// `EVTCHNOP_unmask`.
    Unmask {
        /// The port.
        port: u32,
    },
    /// `EVTCHNOP_bind_vcpu`.
    BindVcpu {
        /// The port.
        port: u32,
        /// Its new notify vCPU.
        vcpu: u32,
    },
    /// `EVTCHNOP_set_priority`.
    SetPriority {
        /// The port.
        port: u32,
        /// 0 (highest) ..= 15.
        priority: u32,
    },
}

/// The hypervisor a [`CGuest`] calls: `Ok` carries the port of a bind (0
/// otherwise), `Err` a negative errno.
pub trait Hypervisor: Sync {
    /// Serves one event-channel hypercall.
    ///
    /// # Errors
    ///
    /// A negative errno, as Xen returns it.
    fn event_channel_op(&self, op: EvtchnOp) -> Result<u32, i32>;
}

type HypercallFn = unsafe extern "C" fn(*mut c_void, c_int, *mut c_void) -> c_int;
type HandlerFn = unsafe extern "C" fn(*mut c_void, u32, u32);
type KickFn = unsafe extern "C" fn(*mut c_void, u32);

/// Decodes a hypercall of the C guest and hands it to `H`.
///
/// # Safety
///
/// `ctx` points to a live `H`; `arg` is null or points to the argument
/// struct Xen defines for `cmd`, valid for reads and writes.
unsafe extern "C" fn hypercall_trampoline<H: Hypervisor>(
    ctx: *mut c_void,
    cmd: c_int,
    arg: *mut c_void,
) -> c_int {
    if arg.is_null() {
        return -EINVAL;
    }
    // SAFETY: the caller (CGuest, which stores a `&'a H` as ctx) guarantees
    // that ctx points to a live H for the guest's lifetime.
    let hv = unsafe { &*ctx.cast::<H>() };
    // SAFETY: (all reads, and the write below) the C guest passes, for each
    // command, a pointer to the struct Xen's header defines for it (the
    // `xen_abi` structs mirror them; `c_abi_layout` and the layout test check that).
    let op = unsafe {
        match cmd {
            EVTCHNOP_BIND_IPI => EvtchnOp::BindIpi {
                vcpu: (*arg.cast::<EvtchnBindIpi>()).vcpu,
            },
            EVTCHNOP_CLOSE => EvtchnOp::Close {
                port: (*arg.cast::<EvtchnClose>()).port,
            },
            EVTCHNOP_SEND => EvtchnOp::Send {
                port: (*arg.cast::<EvtchnSend>()).port,
            },
            EVTCHNOP_UNMASK => EvtchnOp::Unmask {
                port: (*arg.cast::<EvtchnUnmask>()).port,
            },
            EVTCHNOP_BIND_VCPU => {
                let a = &*arg.cast::<EvtchnBindVcpu>();
                EvtchnOp::BindVcpu {
                    port: a.port,
                    vcpu: a.vcpu,
                }
            }
            EVTCHNOP_SET_PRIORITY => {
                let a = &*arg.cast::<EvtchnSetPriority>();
                EvtchnOp::SetPriority {
                    port: a.port,
                    priority: a.priority,
                }
            }
            _ => return -ENOSYS,
        }
    };
    match hv.event_channel_op(op) {
        Ok(port) => {
            if cmd == EVTCHNOP_BIND_IPI {
                // SAFETY: as above: arg is an evtchn_bind_ipi_t, writable.
                unsafe { (*arg.cast::<EvtchnBindIpi>()).port = port };
            }
            0
        }
        Err(e) => e,
    }
}

/// Calls the handler closure `F` of a [`CGuest`].
///
/// # Safety
///
/// `ctx` points to a live `F`.
unsafe extern "C" fn handler_trampoline<F: Fn(u32, u32) + Sync>(
    ctx: *mut c_void,
    port: u32,
    vcpu: u32,
) {
    // SAFETY: CGuest stores a `&'a F` as ctx, live for the guest's lifetime.
    let f = unsafe { &*ctx.cast::<F>() };
    f(port, vcpu);
}

/// Calls the kick closure `K` of a [`CRaiser`].
///
/// # Safety
///
/// `ctx` points to a live `K`.
unsafe extern "C" fn kick_trampoline<K: Fn(u32) + Sync>(ctx: *mut c_void, vcpu: u32) {
    // SAFETY: CRaiser stores a `&'a K` as ctx, live for the raiser's lifetime.
    let k = unsafe { &*ctx.cast::<K>() };
    k(vcpu);
}

/// Counters of a [`CGuest`] (`struct xg_stats`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GuestStats {
    /// Handler runs.
    pub handled: u64,
    /// Handler runs on a port the guest had masked (and not unmasked since).
    pub on_masked: u64,
    /// Guest mask operations.
    pub masks: u64,
    /// Guest unmask operations.
    pub unmasks: u64,
    /// Unmasks that needed `EVTCHNOP_unmask` (the port was pending).
    pub unmask_hypercalls: u64,
    /// Upcall loops run.
    pub upcalls: u64,
    /// Ports offered by a scan whose pending bit was already clear.
    pub spurious: u64,
}

/// `struct xg_ops` of `c/guest.c`.
#[repr(C)]
struct GuestOps {
    new_2l: unsafe extern "C" fn(
        *mut c_void,
        u32,
        u32,
        HypercallFn,
        *mut c_void,
        HandlerFn,
        *mut c_void,
    ) -> *mut c_void,
    new_fifo: unsafe extern "C" fn(
        *mut u32,
        u32,
        *mut c_void,
        *mut c_void,
        u32,
        HypercallFn,
        *mut c_void,
        HandlerFn,
        *mut c_void,
    ) -> *mut c_void,
    free: unsafe extern "C" fn(*mut c_void),
    upcall: unsafe extern "C" fn(*mut c_void, u32) -> i64,
    upcall_pending: unsafe extern "C" fn(*mut c_void, u32) -> c_int,
    mask: unsafe extern "C" fn(*mut c_void, u32) -> c_int,
    unmask: unsafe extern "C" fn(*mut c_void, u32) -> c_int,
    masked_by_guest: unsafe extern "C" fn(*mut c_void, u32) -> c_int,
    check_masks: unsafe extern "C" fn(*mut c_void, *mut u32) -> u32,
    stats: unsafe extern "C" fn(*mut c_void, *mut GuestStats),
    bind_ipi: unsafe extern "C" fn(*mut c_void, u32, *mut u32) -> c_int,
    send: unsafe extern "C" fn(*mut c_void, u32) -> c_int,
    close: unsafe extern "C" fn(*mut c_void, u32) -> c_int,
    bind_vcpu: unsafe extern "C" fn(*mut c_void, u32, u32) -> c_int,
}

/// Counters of a [`CRaiser`] (`struct xr_stats`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RaiserStats {
    /// `EVTCHNOP_send` on a bound port.
    pub sends: u64,
    /// Raises that made an event newly pending.
    pub raised: u64,
    /// Upcall flags set 0 -> 1 (vCPUs kicked).
    pub kicks: u64,
    /// `EVTCHNOP_unmask` calls.
    pub unmasks: u64,
    /// Unmasks that raised the event.
    pub unmask_raises: u64,
    /// FIFO: raises that gave up locking the old queue after 3 changes
    /// (Xen's "lost event (too many queue changes)").
    pub lost_queue_changes: u64,
    /// FIFO: links given up after a tail kept changing (Xen's "not linked").
    pub link_gave_up: u64,
}

/// `struct xr_ops` of `c/raiser.c`.
#[repr(C)]
struct RaiserOps {
    new_2l: unsafe extern "C" fn(*mut c_void, u32, u32, KickFn, *mut c_void) -> *mut c_void,
    new_fifo: unsafe extern "C" fn(
        *mut u32,
        u32,
        *mut c_void,
        *mut c_void,
        u32,
        KickFn,
        *mut c_void,
    ) -> *mut c_void,
    free: unsafe extern "C" fn(*mut c_void),
    event_channel_op: unsafe extern "C" fn(*mut c_void, c_int, *mut c_void) -> c_int,
    stats: unsafe extern "C" fn(*mut c_void, *mut RaiserStats),
    port_bound: unsafe extern "C" fn(*mut c_void, u32) -> c_int,
}

extern "C" {
    static xg_ops: GuestOps;
    static xg_broken_unmask_ops: GuestOps;
    static xg_ignore_mask_ops: GuestOps;
    static xr_ops: RaiserOps;
    static xr_broken_unmask_ops: RaiserOps;
    static xr_unmasking_bind_vcpu_ops: RaiserOps;
    fn xc_abi_layout(out: *mut u32, n: u32) -> u32;
    fn xo_run(
        hc: HypercallFn,
        front: *mut c_void,
        back: *mut c_void,
        cfg: *const XoConfig,
        log: LogFn,
        log_ctx: *mut c_void,
        report: *mut XoReport,
    ) -> c_int;
    fn xo_errnos(out: *mut i32);
}

/// Which build of `c/guest.c`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum GuestVariant {
    /// As Linux does it.
    Linux,
    /// Negative control: unmask clears the mask bit and never issues
    /// `EVTCHNOP_unmask`, so an event raised while masked is lost.
    BrokenUnmask,
    /// Negative control: delivery ignores the mask bit.
    IgnoreMask,
}

impl GuestVariant {
    fn ops(self) -> &'static GuestOps {
        // SAFETY: the statics are constant tables defined by the C files
        // build.rs links in; nothing writes them.
        unsafe {
            match self {
                GuestVariant::Linux => &*std::ptr::addr_of!(xg_ops),
                GuestVariant::BrokenUnmask => &*std::ptr::addr_of!(xg_broken_unmask_ops),
                GuestVariant::IgnoreMask => &*std::ptr::addr_of!(xg_ignore_mask_ops),
            }
        }
    }
}

/// Which build of `c/raiser.c`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum RaiserVariant {
    /// As Xen does it.
    Xen,
    /// Negative control: unmask clears the mask and raises nothing.
    BrokenUnmask,
    /// Negative control: bind_vcpu also clears the port's mask.
    UnmaskingBindVcpu,
}

impl RaiserVariant {
    fn ops(self) -> &'static RaiserOps {
        // SAFETY: constant tables defined by the C files; nothing writes them.
        unsafe {
            match self {
                RaiserVariant::Xen => &*std::ptr::addr_of!(xr_ops),
                RaiserVariant::BrokenUnmask => &*std::ptr::addr_of!(xr_broken_unmask_ops),
                RaiserVariant::UnmaskingBindVcpu => {
                    &*std::ptr::addr_of!(xr_unmasking_bind_vcpu_ops)
                }
            }
        }
    }
}

/// Errors of the C code: a negative errno.
pub type Errno = i32;

/// `r` as the `void *` context or memory pointer the C constructors take.
fn ctx<T: ?Sized>(r: &T) -> *mut c_void {
    std::ptr::from_ref(r).cast_mut().cast()
}

/// FIFO memory as the C constructors take it: the event array and its
/// length, the control blocks, the `vcpu_info`s and their count.
type FifoArgs = (*mut u32, u32, *mut c_void, *mut c_void, u32);

/// [`FifoArgs`] of the slices.
///
/// # Panics
///
/// If `control` and `vcpus` differ in length, or the counts overflow `u32`.
fn fifo_args(words: &[EventWord], control: &[ControlBlock], vcpus: &[VcpuInfo]) -> FifoArgs {
    assert_eq!(control.len(), vcpus.len());
    (
        words.as_ptr().cast_mut().cast(),
        u32::try_from(words.len()).expect("at most 2^17 ports"),
        ctx(control),
        ctx(vcpus),
        u32::try_from(vcpus.len()).expect("vCPU count"),
    )
}

fn rc(v: c_int) -> Result<(), Errno> {
    if v < 0 {
        Err(v)
    } else {
        Ok(())
    }
}

/// The C guest (`c/guest.c`) over memory lent for `'a`.
///
/// Thread-safe: per-port locks, one upcall per vCPU at a time (a second
/// concurrent upcall of the same vCPU returns `-EBUSY`), atomics on shared
/// memory.
pub struct CGuest<'a> {
    ops: &'static GuestOps,
    g: NonNull<c_void>,
    _lent: PhantomData<&'a ()>,
}

// SAFETY: the C guest synchronises all its state (see the type's docs), and
// the callbacks it holds are `Sync` (checked by the constructors).
unsafe impl Send for CGuest<'_> {}
// SAFETY: as above.
unsafe impl Sync for CGuest<'_> {}

impl std::fmt::Debug for CGuest<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CGuest")
            .field("stats", &self.stats())
            .finish()
    }
}

impl<'a> CGuest<'a> {
    /// A 2-level guest of `nr_vcpus` vCPUs and `nr_ports` ports over `page`.
    ///
    /// # Panics
    ///
    /// If the C code refuses the sizes (`nr_vcpus` 0 or above 32, more
    /// than 4096 ports).
    pub fn new_2l<H: Hypervisor, F: Fn(u32, u32) + Sync>(
        variant: GuestVariant,
        page: &'a SharedInfo,
        nr_vcpus: u32,
        nr_ports: u32,
        hv: &'a H,
        handler: &'a F,
    ) -> Self {
        assert!(nr_vcpus as usize <= LEGACY_MAX_VCPUS);
        let ops = variant.ops();
        // SAFETY: `page` is a live SharedInfo, made only of atomics, lent
        // for 'a (the C code uses atomic builtins on it); hv and handler are
        // live for 'a and match the trampolines' type parameters.
        let g = unsafe {
            (ops.new_2l)(
                ctx(page),
                nr_vcpus,
                nr_ports,
                hypercall_trampoline::<H>,
                ctx(hv),
                handler_trampoline::<F>,
                ctx(handler),
            )
        };
        CGuest {
            ops,
            g: NonNull::new(g).expect("xg new_2l refused its arguments"),
            _lent: PhantomData,
        }
    }

    /// A FIFO guest over an event array (`words.len()` ports) and one
    /// control block and `vcpu_info` per vCPU.
    ///
    /// # Panics
    ///
    /// If `control` and `vcpus` are empty or of different lengths, or the
    /// C code refuses the sizes.
    pub fn new_fifo<H: Hypervisor, F: Fn(u32, u32) + Sync>(
        variant: GuestVariant,
        words: &'a [EventWord],
        control: &'a [ControlBlock],
        vcpus: &'a [VcpuInfo],
        hv: &'a H,
        handler: &'a F,
    ) -> Self {
        let (w, n, c, v, nv) = fifo_args(words, control, vcpus);
        let ops = variant.ops();
        // SAFETY: the slices are live for 'a, made of atomics with Xen's
        // layouts (checked by evtchn's xen_layout test), and their lengths
        // are passed along; callbacks as in `new_2l`.
        let g = unsafe {
            (ops.new_fifo)(
                w,
                n,
                c,
                v,
                nv,
                hypercall_trampoline::<H>,
                ctx(hv),
                handler_trampoline::<F>,
                ctx(handler),
            )
        };
        CGuest {
            ops,
            g: NonNull::new(g).expect("xg new_fifo refused its arguments"),
            _lent: PhantomData,
        }
    }

    /// Runs one upcall of `vcpu`; returns the handler runs.
    ///
    /// # Errors
    ///
    /// `-EINVAL` for a vCPU out of range, `-EBUSY` if another thread runs
    /// this vCPU's upcall.
    pub fn upcall(&self, vcpu: u32) -> Result<u32, Errno> {
        // SAFETY: self.g is the live guest this wrapper owns.
        let n = unsafe { (self.ops.upcall)(self.g.as_ptr(), vcpu) };
        if n < 0 {
            Err(i32::try_from(n).unwrap_or(-EINVAL))
        } else {
            Ok(u32::try_from(n).unwrap_or(u32::MAX))
        }
    }

    /// Whether `vcpu`'s `evtchn_upcall_pending` is set.
    #[must_use]
    pub fn upcall_pending(&self, vcpu: u32) -> bool {
        // SAFETY: live guest.
        unsafe { (self.ops.upcall_pending)(self.g.as_ptr(), vcpu) > 0 }
    }

    /// The guest masks `port`.
    ///
    /// # Errors
    ///
    /// `-EINVAL` for a port out of range.
    pub fn mask(&self, port: u32) -> Result<(), Errno> {
        // SAFETY: live guest.
        rc(unsafe { (self.ops.mask)(self.g.as_ptr(), port) })
    }

    /// The guest unmasks `port` (with `EVTCHNOP_unmask` when it is pending).
    ///
    /// # Errors
    ///
    /// `-EINVAL` for a port out of range, or the hypercall's error.
    pub fn unmask(&self, port: u32) -> Result<(), Errno> {
        // SAFETY: live guest.
        rc(unsafe { (self.ops.unmask)(self.g.as_ptr(), port) })
    }

    /// Whether the guest has masked `port` (its own record).
    #[must_use]
    pub fn masked_by_guest(&self, port: u32) -> bool {
        // SAFETY: live guest.
        unsafe { (self.ops.masked_by_guest)(self.g.as_ptr(), port) > 0 }
    }

    /// Ports the guest has masked whose mask bit is clear, and the first.
    #[must_use]
    pub fn check_masks(&self) -> (u32, Option<u32>) {
        let mut first = 0u32;
        // SAFETY: live guest; `first` is a valid out-pointer.
        let n = unsafe { (self.ops.check_masks)(self.g.as_ptr(), &mut first) };
        (n, (n > 0).then_some(first))
    }

    /// The guest's counters.
    #[must_use]
    pub fn stats(&self) -> GuestStats {
        let mut s = GuestStats::default();
        // SAFETY: live guest; `s` has the layout of struct xg_stats.
        unsafe { (self.ops.stats)(self.g.as_ptr(), &mut s) };
        s
    }

    /// `EVTCHNOP_bind_ipi` from the guest.
    ///
    /// # Errors
    ///
    /// The hypercall's error.
    pub fn bind_ipi(&self, vcpu: u32) -> Result<u32, Errno> {
        let mut port = 0u32;
        // SAFETY: live guest; `port` is a valid out-pointer.
        rc(unsafe { (self.ops.bind_ipi)(self.g.as_ptr(), vcpu, &mut port) })?;
        Ok(port)
    }

    /// `EVTCHNOP_send` from the guest.
    ///
    /// # Errors
    ///
    /// The hypercall's error.
    pub fn send(&self, port: u32) -> Result<(), Errno> {
        // SAFETY: live guest.
        rc(unsafe { (self.ops.send)(self.g.as_ptr(), port) })
    }

    /// `EVTCHNOP_close` from the guest.
    ///
    /// # Errors
    ///
    /// The hypercall's error.
    pub fn close(&self, port: u32) -> Result<(), Errno> {
        // SAFETY: live guest.
        rc(unsafe { (self.ops.close)(self.g.as_ptr(), port) })
    }

    /// `EVTCHNOP_bind_vcpu` from the guest.
    ///
    /// # Errors
    ///
    /// The hypercall's error.
    pub fn bind_vcpu(&self, port: u32, vcpu: u32) -> Result<(), Errno> {
        // SAFETY: live guest.
        rc(unsafe { (self.ops.bind_vcpu)(self.g.as_ptr(), port, vcpu) })
    }
}

impl Drop for CGuest<'_> {
    fn drop(&mut self) {
        // SAFETY: the guest was made by this table's constructor and is
        // freed once; `&mut self` means no call is running.
        unsafe { (self.ops.free)(self.g.as_ptr()) };
    }
}

/// The C raiser (`c/raiser.c`) over memory lent for `'a`. Thread-safe:
/// a domain lock, per-port and per-queue locks, atomics on shared memory.
pub struct CRaiser<'a> {
    ops: &'static RaiserOps,
    r: NonNull<c_void>,
    _lent: PhantomData<&'a ()>,
}

// SAFETY: the C raiser synchronises all its state; the kick closure is Sync.
unsafe impl Send for CRaiser<'_> {}
// SAFETY: as above.
unsafe impl Sync for CRaiser<'_> {}

impl std::fmt::Debug for CRaiser<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CRaiser")
            .field("stats", &self.stats())
            .finish()
    }
}

impl<'a> CRaiser<'a> {
    /// A 2-level raiser for `nr_vcpus` vCPUs and `nr_ports` ports of `page`;
    /// `kick` wakes a vCPU whose upcall flag it set.
    ///
    /// # Panics
    ///
    /// If the C code refuses the sizes.
    pub fn new_2l<K: Fn(u32) + Sync>(
        variant: RaiserVariant,
        page: &'a SharedInfo,
        nr_vcpus: u32,
        nr_ports: u32,
        kick: &'a K,
    ) -> Self {
        let ops = variant.ops();
        // SAFETY: `page` is live for 'a and made of atomics; kick is live
        // for 'a and matches the trampoline's type parameter.
        let r = unsafe {
            (ops.new_2l)(
                ctx(page),
                nr_vcpus,
                nr_ports,
                kick_trampoline::<K>,
                ctx(kick),
            )
        };
        CRaiser {
            ops,
            r: NonNull::new(r).expect("xr new_2l refused its arguments"),
            _lent: PhantomData,
        }
    }

    /// A FIFO raiser over an event array and per-vCPU control blocks and
    /// `vcpu_info`s.
    ///
    /// # Panics
    ///
    /// If `control` and `vcpus` differ in length or the C code refuses the
    /// sizes.
    pub fn new_fifo<K: Fn(u32) + Sync>(
        variant: RaiserVariant,
        words: &'a [EventWord],
        control: &'a [ControlBlock],
        vcpus: &'a [VcpuInfo],
        kick: &'a K,
    ) -> Self {
        let (w, n, c, v, nv) = fifo_args(words, control, vcpus);
        let ops = variant.ops();
        // SAFETY: as in `new_2l`; the lengths are passed along.
        let r = unsafe { (ops.new_fifo)(w, n, c, v, nv, kick_trampoline::<K>, ctx(kick)) };
        CRaiser {
            ops,
            r: NonNull::new(r).expect("xr new_fifo refused its arguments"),
            _lent: PhantomData,
        }
    }

    fn call<T>(&self, cmd: c_int, arg: &mut T) -> Result<(), Errno> {
        // SAFETY: live raiser; `arg` is the Xen struct for `cmd` (each
        // caller below pairs them), valid for reads and writes.
        rc(unsafe {
            (self.ops.event_channel_op)(self.r.as_ptr(), cmd, std::ptr::from_mut(arg).cast())
        })
    }

    /// Serves one hypercall, with Xen's argument structs.
    ///
    /// # Errors
    ///
    /// A negative errno.
    pub fn event_channel_op(&self, op: EvtchnOp) -> Result<u32, Errno> {
        match op {
            EvtchnOp::BindIpi { vcpu } => {
                let mut a = EvtchnBindIpi { vcpu, port: 0 };
                self.call(EVTCHNOP_BIND_IPI, &mut a)?;
                return Ok(a.port);
            }
            EvtchnOp::Close { port } => self.call(EVTCHNOP_CLOSE, &mut EvtchnClose { port }),
            EvtchnOp::Send { port } => self.call(EVTCHNOP_SEND, &mut EvtchnSend { port }),
            EvtchnOp::Unmask { port } => self.call(EVTCHNOP_UNMASK, &mut EvtchnUnmask { port }),
            EvtchnOp::BindVcpu { port, vcpu } => {
                self.call(EVTCHNOP_BIND_VCPU, &mut EvtchnBindVcpu { port, vcpu })
            }
            EvtchnOp::SetPriority { port, priority } => self.call(
                EVTCHNOP_SET_PRIORITY,
                &mut EvtchnSetPriority { port, priority },
            ),
        }?;
        Ok(0)
    }

    /// Whether the raiser's port table has `port` bound.
    #[must_use]
    pub fn port_bound(&self, port: u32) -> bool {
        // SAFETY: live raiser.
        unsafe { (self.ops.port_bound)(self.r.as_ptr(), port) > 0 }
    }

    /// The raiser's counters.
    #[must_use]
    pub fn stats(&self) -> RaiserStats {
        let mut s = RaiserStats::default();
        // SAFETY: live raiser; `s` has the layout of struct xr_stats.
        unsafe { (self.ops.stats)(self.r.as_ptr(), &mut s) };
        s
    }
}

impl Drop for CRaiser<'_> {
    fn drop(&mut self) {
        // SAFETY: made by this table's constructor, freed once, no call
        // running (`&mut self`).
        unsafe { (self.ops.free)(self.r.as_ptr()) };
    }
}

/// The figures `c/abi.c` reports (sizes, offsets, command numbers).
#[must_use]
pub fn c_abi_layout() -> Vec<u32> {
    // SAFETY: a null buffer of length 0 is never written; the call returns
    // the count.
    let n = unsafe { xc_abi_layout(std::ptr::null_mut(), 0) };
    let mut v = vec![0u32; n as usize];
    // SAFETY: `v` holds `n` elements.
    unsafe { xc_abi_layout(v.as_mut_ptr(), n) };
    v
}

// ---- the raw gate into `Domains::dispatch` and the script of `c/ops.c` ----

/// How the raw gate under `c/ops.c` hands a call to `Domains::dispatch`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum GateVariant {
    /// As Xen's `do_event_channel_op`: copy the command's structure in,
    /// dispatch, copy it back only when the call returned 0.
    Xen,
    /// Negative control: every bind answers its port plus one.
    BindPortPlusOne,
    /// Negative control: nothing is ever copied back.
    NoCopyOut,
}

/// The size of `cmd`'s argument structure (`evtchn::xen::evtchnop`'s copy
/// of Xen's header); `None` for a command Xen does not know.
fn arg_size(cmd: u32) -> Option<usize> {
    use std::mem::size_of;
    Some(match cmd {
        op::cmd::BIND_INTERDOMAIN => size_of::<op::BindInterdomain>(),
        op::cmd::BIND_VIRQ => size_of::<op::BindVirq>(),
        op::cmd::BIND_PIRQ => size_of::<op::BindPirq>(),
        op::cmd::CLOSE => size_of::<op::Close>(),
        op::cmd::SEND => size_of::<op::Send>(),
        op::cmd::STATUS => size_of::<op::Status>(),
        op::cmd::ALLOC_UNBOUND => size_of::<op::AllocUnbound>(),
        op::cmd::BIND_IPI => size_of::<op::BindIpi>(),
        op::cmd::BIND_VCPU => size_of::<op::BindVcpu>(),
        op::cmd::UNMASK => size_of::<op::Unmask>(),
        op::cmd::RESET | op::cmd::RESET_CONT => size_of::<op::Reset>(),
        op::cmd::INIT_CONTROL => size_of::<op::InitControl>(),
        op::cmd::EXPAND_ARRAY => size_of::<op::ExpandArray>(),
        op::cmd::SET_PRIORITY => size_of::<op::SetPriority>(),
        _ => return None,
    })
}

/// Where a bind command's `OUT` port lies in its structure.
fn bind_port_offset(cmd: u32) -> Option<usize> {
    use std::mem::offset_of;
    Some(match cmd {
        op::cmd::BIND_INTERDOMAIN => offset_of!(op::BindInterdomain, local_port),
        op::cmd::BIND_VIRQ => offset_of!(op::BindVirq, port),
        op::cmd::BIND_PIRQ => offset_of!(op::BindPirq, port),
        op::cmd::ALLOC_UNBOUND => offset_of!(op::AllocUnbound, port),
        op::cmd::BIND_IPI => offset_of!(op::BindIpi, port),
        _ => return None,
    })
}

/// One domain's hypercall gate: the `ctx` [`dispatch_gate`] receives.
struct Gate<'a, R: Raise, N: Notify> {
    doms: &'a Domains<R, N>,
    caller: DomId,
    variant: GateVariant,
}

/// `HYPERVISOR_event_channel_op(cmd, arg)` of the gate's domain, served by
/// `Domains::dispatch`: the command's structure is copied in (nothing for
/// an unknown command or a null `arg`, which dispatch answers with
/// `-ENOSYS` and `-EFAULT`), dispatched, and copied back only on 0, as
/// Xen's `copy_to_guest` of the `OUT` fields.
///
/// # Safety
///
/// `ctx` points to a live `Gate<R, N>`; `arg` is null or points to the
/// structure Xen's header defines for `cmd`, valid for reads and writes of
/// its size.
unsafe extern "C" fn dispatch_gate<R: Raise, N: Notify>(
    ctx: *mut c_void,
    cmd: c_int,
    arg: *mut c_void,
) -> c_int {
    // SAFETY: run_ops_script lends a `&Gate<R, N>` as ctx for the whole run.
    let gate = unsafe { &*ctx.cast::<Gate<'_, R, N>>() };
    // Xen reads `int cmd`; a negative one is unknown, as u32::MAX is.
    let cmd = u32::try_from(cmd).unwrap_or(u32::MAX);
    let size = if arg.is_null() {
        0
    } else {
        arg_size(cmd).unwrap_or(0)
    };
    let mut bytes = vec![0u8; size];
    if size > 0 {
        // SAFETY: arg is the structure of `cmd` (the caller's contract),
        // `size` bytes readable; `bytes` is a distinct buffer of that size.
        unsafe { std::ptr::copy_nonoverlapping(arg.cast::<u8>(), bytes.as_mut_ptr(), size) };
    }
    let rc = gate.doms.dispatch(gate.caller, cmd, &mut bytes);
    if rc == 0 && size > 0 && gate.variant != GateVariant::NoCopyOut {
        if gate.variant == GateVariant::BindPortPlusOne {
            if let Some(b) = bind_port_offset(cmd).and_then(|o| bytes.get_mut(o..o + 4)) {
                let port = u32::from_ne_bytes([b[0], b[1], b[2], b[3]]).wrapping_add(1);
                b.copy_from_slice(&port.to_ne_bytes());
            }
        }
        // SAFETY: as above, `size` bytes of arg are writable.
        unsafe { std::ptr::copy_nonoverlapping(bytes.as_ptr(), arg.cast::<u8>(), size) };
    }
    rc
}

type LogFn = unsafe extern "C" fn(*mut c_void, *const c_char);

/// Appends a line of `c/ops.c` to the `Vec<String>` behind `ctx`.
///
/// # Safety
///
/// `ctx` points to a `Vec<String>` nothing else uses during the call;
/// `line` is a NUL-terminated string.
unsafe extern "C" fn log_line(ctx: *mut c_void, line: *const c_char) {
    // SAFETY: run_ops_script lends its `&mut Vec<String>` as ctx, and the C
    // script is single-threaded: no other reference is in use.
    let lines = unsafe { &mut *ctx.cast::<Vec<String>>() };
    // SAFETY: the C script passes a buffer it formatted with vsnprintf.
    let line = unsafe { CStr::from_ptr(line) };
    lines.push(line.to_string_lossy().into_owned());
}

/// `struct xo_config` of `c/ops.c`.
#[repr(C)]
struct XoConfig {
    front: u16,
    back: u16,
    absent: u16,
    pad: u16,
    nr_ports: u32,
    nr_vcpus: u32,
    front_pirqs: u32,
    fifo: u32,
}

/// `struct xo_report` of `c/ops.c`.
#[repr(C)]
#[derive(Default)]
struct XoReport {
    compared: u64,
    failures: u64,
    diverged: u64,
    hypercalls: u64,
}

/// The domains and limits the script of `c/ops.c` runs with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OpsConfig {
    /// The frontend: the script's own domain, unprivileged.
    pub front: DomId,
    /// The backend: privileged.
    pub back: DomId,
    /// An id no domain has.
    pub absent: DomId,
    /// Ports per domain, port 0 included (16 ..= 1024).
    pub nr_ports: u32,
    /// vCPUs per domain (at least 2).
    pub nr_vcpus: u32,
    /// The frontend's PIRQs (at least 8).
    pub front_pirqs: u32,
    /// Both domains run the FIFO ABI (`EVTCHNOP_set_priority` works).
    pub fifo: bool,
}

/// What the script of `c/ops.c` found.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct OpsOutcome {
    /// Values compared (return values, `OUT` fields, status fields).
    pub compared: u64,
    /// Values that differed from Xen's.
    pub failures: u64,
    /// Values that differed from Xen's in a way the script knows (each
    /// also a line, saying why).
    pub diverged: u64,
    /// Hypercalls made.
    pub hypercalls: u64,
    /// One line per failure and per known divergence, in order.
    pub lines: Vec<String>,
}

/// Runs the script of `c/ops.c` against `doms`: its calls as
/// `cfg.front` and `cfg.back` go through a raw `extern "C"` gate (as `variant`
/// says) into `doms.dispatch`.
///
/// # Panics
///
/// If the script refuses `cfg` (outside the sizes it covers).
pub fn run_ops_script<R: Raise, N: Notify>(
    doms: &Domains<R, N>,
    cfg: &OpsConfig,
    variant: GateVariant,
) -> OpsOutcome {
    let front = Gate {
        doms,
        caller: cfg.front,
        variant,
    };
    let back = Gate {
        doms,
        caller: cfg.back,
        variant,
    };
    let c = XoConfig {
        front: cfg.front,
        back: cfg.back,
        absent: cfg.absent,
        pad: 0,
        nr_ports: cfg.nr_ports,
        nr_vcpus: cfg.nr_vcpus,
        front_pirqs: cfg.front_pirqs,
        fifo: u32::from(cfg.fifo),
    };
    let mut lines: Vec<String> = Vec::new();
    let mut report = XoReport::default();
    // SAFETY: the gates, the config, the line vector and the report live
    // until the call returns, and the C script keeps none of them; the
    // gates match `dispatch_gate::<R, N>`, the vector `log_line`.
    let rc = unsafe {
        xo_run(
            dispatch_gate::<R, N>,
            ctx(&front),
            ctx(&back),
            &c,
            log_line,
            std::ptr::from_mut(&mut lines).cast(),
            &mut report,
        )
    };
    assert_eq!(rc, 0, "c/ops.c refused the configuration {cfg:?}");
    OpsOutcome {
        compared: report.compared,
        failures: report.failures,
        diverged: report.diverged,
        hypercalls: report.hypercalls,
        lines,
    }
}

/// The `<xen/errno.h>` numbers `c/ops.c` expects: `XEN_EPERM`, `XEN_ENOENT`,
/// `XEN_ESRCH`, `XEN_EFAULT`, `XEN_EEXIST`, `XEN_EINVAL`, `XEN_ENOSPC`,
/// `XEN_ENOSYS`.
#[must_use]
pub fn c_xen_errnos() -> [i32; 8] {
    let mut v = [0i32; 8];
    // SAFETY: `v` holds the 8 values the function writes.
    unsafe { xo_errnos(v.as_mut_ptr()) };
    v
}
