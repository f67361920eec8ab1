//! The hypercall surface: `HYPERVISOR_event_channel_op(cmd, arg)` as a
//! hypervisor receives it from a guest, decoded from the argument's bytes
//! and answered with Xen's return value.

use core::mem::{offset_of, size_of};

use super::{Domains, HostStatus, PortKind};
use crate::abi::Raise;
use crate::xen::evtchnop::{
    cmd, errno, stat, AllocUnbound, BindInterdomain, BindIpi, BindPirq, BindVcpu, BindVirq, DomId,
    PortArg, RemoteEnd, Reset, SetPriority, Status, DOMID_SELF,
};
use crate::{BindMode, Error, Notify};

/// Ports a reset closes per chunk inside [`Domains::dispatch`].
const RESET_CHUNK: u32 = 1024;

fn get_u16(a: &[u8], off: usize) -> u16 {
    a.get(off..)
        .and_then(|s| s.get(..2))
        .and_then(|b| b.try_into().ok())
        .map_or(0, u16::from_ne_bytes)
}

fn get_u32(a: &[u8], off: usize) -> u32 {
    a.get(off..)
        .and_then(|s| s.get(..4))
        .and_then(|b| b.try_into().ok())
        .map_or(0, u32::from_ne_bytes)
}

fn put_u16(a: &mut [u8], off: usize, v: u16) {
    if let Some(b) = a.get_mut(off..).and_then(|s| s.get_mut(..2)) {
        b.copy_from_slice(&v.to_ne_bytes());
    }
}

fn put_u32(a: &mut [u8], off: usize, v: u32) {
    if let Some(b) = a.get_mut(off..).and_then(|s| s.get_mut(..4)) {
        b.copy_from_slice(&v.to_ne_bytes());
    }
}

fn err(e: Error) -> i32 {
    e.xen_errno()
}

impl<R: Raise, N: Notify> Domains<R, N> {
    /// `HYPERVISOR_event_channel_op(cmd, arg)` made by domain `caller`:
    /// `arg` holds the argument structure's bytes as the guest laid them
    /// out (`evtchn::xen::evtchnop`, native byte order), copied in by the
    /// hypervisor. Returns what Xen returns: 0, or a negated `XEN_E*`
    /// number. The `OUT` fields are written back into `arg` only on
    /// success, as Xen copies them back; on an error `arg` is unchanged.
    ///
    /// * An unknown command, and `EVTCHNOP_init_control` and
    ///   `EVTCHNOP_expand_array` (they map guest frames, which is the
    ///   embedder's to do before calling here), return `-ENOSYS`; Linux
    ///   then keeps the 2-level ABI.
    /// * `arg` shorter than the command's structure is Xen's failed copy:
    ///   `-EFAULT`.
    /// * `bind_interdomain` is [`BindMode::Conservative`], as Xen.
    /// * `alloc_unbound`, `status` and `reset` of a domain other than the
    ///   caller need a [`crate::Domain::privileged`] caller (`-EPERM`);
    ///   `bind_pirq` a PIRQ below the caller's
    ///   [`crate::Domain::nr_pirqs`] (`-EINVAL`).
    /// * Port 0 is reserved, as in Xen: `status` reports it closed,
    ///   `unmask` accepts it and does nothing, (FIFO) `set_priority` is
    ///   `-EACCES` as for a free port, everything else refuses it
    ///   (`-EINVAL`). `unmask` of a free port, or of a FIFO port whose
    ///   event-array page the guest has not given, does nothing and
    ///   returns 0.
    /// * `reset` closes every port before returning (in chunks; a caller
    ///   that must stay preemptible calls [`Domains::reset`] itself), so
    ///   `EVTCHNOP_reset_cont` (14) never finds one to continue: `-EBUSY`.
    ///   Another domain is reset only while it is paused
    ///   ([`Domains::set_paused`]; `-EINVAL` otherwise, as Xen). A FIFO
    ///   domain's return to 2-level is its memory's: the embedder
    ///   intercepts `EVTCHNOP_reset` of a FIFO domain, calls this and then
    ///   switches its memory.
    #[must_use = "the hypercall's return value goes back to the guest"]
    pub fn dispatch(&self, caller: DomId, cmd: u32, arg: &mut [u8]) -> i32 {
        match self.dispatch_inner(caller, cmd, arg) {
            Ok(()) => 0,
            Err(e) => e.wrapping_neg(),
        }
    }

    fn dispatch_inner(&self, caller: DomId, cmd: u32, arg: &mut [u8]) -> Result<(), i32> {
        let need = match cmd {
            cmd::BIND_INTERDOMAIN => size_of::<BindInterdomain>(),
            cmd::BIND_VIRQ => size_of::<BindVirq>(),
            cmd::BIND_PIRQ => size_of::<BindPirq>(),
            cmd::CLOSE | cmd::SEND | cmd::UNMASK => size_of::<PortArg>(),
            cmd::STATUS => size_of::<Status>(),
            cmd::ALLOC_UNBOUND => size_of::<AllocUnbound>(),
            cmd::BIND_IPI => size_of::<BindIpi>(),
            cmd::BIND_VCPU => size_of::<BindVcpu>(),
            cmd::RESET | cmd::RESET_CONT => size_of::<Reset>(),
            cmd::SET_PRIORITY => size_of::<SetPriority>(),
            _ => return Err(errno::ENOSYS),
        };
        if arg.len() < need {
            return Err(errno::EFAULT);
        }
        let me = self.domain(caller).map_err(err)?;
        let host = me.host();
        let self_or = |d: DomId| if d == DOMID_SELF { caller } else { d };
        // A domain the argument names: it must exist (ESRCH).
        let named = |d: DomId| -> Result<DomId, i32> {
            let d = self_or(d);
            self.domain(d).map_err(err)?;
            Ok(d)
        };
        // Acting on another domain needs a privileged caller (Xen's XSM
        // default; EPERM), checked where Xen checks it.
        let permit = |d: DomId| -> Result<(), i32> {
            if d != caller && !me.is_privileged() {
                Err(errno::EPERM)
            } else {
                Ok(())
            }
        };
        let port_at = |a: &[u8]| get_u32(a, offset_of!(PortArg, port));
        match cmd {
            cmd::ALLOC_UNBOUND => {
                let dom = named(get_u16(arg, offset_of!(AllocUnbound, dom)))?;
                let remote = self_or(get_u16(arg, offset_of!(AllocUnbound, remote_dom)));
                // Xen finds the free port (ENOSPC) before it asks XSM.
                if permit(dom).is_err() {
                    self.host(dom).map_err(err)?.free_port().map_err(err)?;
                }
                permit(dom)?;
                let port = self.alloc_unbound(dom, remote).map_err(err)?;
                put_u32(arg, offset_of!(AllocUnbound, port), port);
            }
            cmd::BIND_INTERDOMAIN => {
                let rd = self_or(get_u16(arg, offset_of!(BindInterdomain, remote_dom)));
                let rp = get_u32(arg, offset_of!(BindInterdomain, remote_port));
                let port = self
                    .bind_interdomain(caller, rd, rp, BindMode::Conservative)
                    .map_err(err)?;
                put_u32(arg, offset_of!(BindInterdomain, local_port), port);
            }
            cmd::BIND_VIRQ => {
                let virq = get_u32(arg, offset_of!(BindVirq, virq));
                let vcpu = get_u32(arg, offset_of!(BindVirq, vcpu));
                let port = host.bind_virq(virq, vcpu).map_err(err)?;
                put_u32(arg, offset_of!(BindVirq, port), port);
            }
            cmd::BIND_PIRQ => {
                let pirq = get_u32(arg, offset_of!(BindPirq, pirq));
                if pirq >= me.pirqs() {
                    return Err(errno::EINVAL);
                }
                let port = host.bind_pirq(pirq).map_err(err)?;
                put_u32(arg, offset_of!(BindPirq, port), port);
            }
            cmd::BIND_IPI => {
                let vcpu = get_u32(arg, offset_of!(BindIpi, vcpu));
                let port = host.bind_ipi(vcpu).map_err(err)?;
                put_u32(arg, offset_of!(BindIpi, port), port);
            }
            cmd::CLOSE => self.close(caller, port_at(arg)).map_err(err)?,
            cmd::SEND => self.send(caller, port_at(arg)).map_err(err)?,
            cmd::UNMASK => {
                let port = port_at(arg);
                if port >= host.nr_ports() {
                    return Err(errno::EINVAL);
                }
                match host.unmask(port) {
                    // Port 0 (reserved), and a FIFO port whose event-array
                    // page the guest has not given yet: Xen finds no
                    // usable channel, or no event word, and does nothing.
                    Ok(()) | Err(Error::PortOutOfRange) => {}
                    Err(e) => return Err(err(e)),
                }
            }
            cmd::STATUS => {
                let dom = named(get_u16(arg, offset_of!(Status, dom)))?;
                let port = get_u32(arg, offset_of!(Status, port));
                // Xen checks the port (EINVAL) before XSM.
                if port >= self.host(dom).map_err(err)?.nr_ports() {
                    return Err(errno::EINVAL);
                }
                permit(dom)?;
                let st = match port {
                    0 => None,
                    p => Some(self.status(dom, p).map_err(err)?),
                };
                put_status(arg, st);
            }
            cmd::BIND_VCPU => {
                let port = get_u32(arg, offset_of!(BindVcpu, port));
                let vcpu = get_u32(arg, offset_of!(BindVcpu, vcpu));
                host.bind_vcpu(port, vcpu).map_err(err)?;
            }
            cmd::RESET | cmd::RESET_CONT => {
                let dom = named(get_u16(arg, offset_of!(Reset, dom)))?;
                permit(dom)?;
                // Another domain only while its controller has it paused.
                if dom != caller && !self.domain(dom).map_err(err)?.is_paused() {
                    return Err(errno::EINVAL);
                }
                // Every reset here runs to the end: none is ever left to
                // continue.
                if cmd == cmd::RESET_CONT {
                    return Err(errno::EBUSY);
                }
                let mut next = Some(1);
                while let Some(from) = next {
                    next = self.reset(dom, from, RESET_CHUNK).map_err(err)?;
                }
            }
            cmd::SET_PRIORITY => {
                let port = get_u32(arg, offset_of!(SetPriority, port));
                let priority = get_u32(arg, offset_of!(SetPriority, priority));
                if port >= host.nr_ports() {
                    return Err(errno::EINVAL);
                }
                if !host.abi().has_priorities() {
                    return Err(errno::ENOSYS);
                }
                // A free port, and the reserved port 0, are not usable:
                // EACCES, before the priority is looked at (as Xen).
                if port == 0 || !self.status(caller, port).map_err(err)?.bound {
                    return Err(errno::EACCES);
                }
                let priority = u8::try_from(priority)
                    .ok()
                    .filter(|p| *p <= 15)
                    .ok_or(errno::EINVAL)?;
                host.set_priority(port, priority).map_err(err)?;
            }
            _ => return Err(errno::ENOSYS),
        }
        Ok(())
    }
}

/// Writes `evtchn_status`'s `OUT` fields; `None` is the reserved port 0.
fn put_status(arg: &mut [u8], st: Option<HostStatus>) {
    let u = offset_of!(Status, u);
    let (status, vcpu) = match st {
        None => (stat::CLOSED, 0),
        Some(st) => {
            let status = match st.kind {
                PortKind::Free => stat::CLOSED,
                PortKind::Unbound { remote } => {
                    put_u16(arg, u.saturating_add(offset_of!(RemoteEnd, dom)), remote);
                    stat::UNBOUND
                }
                PortKind::Interdomain { remote, port } => {
                    put_u16(arg, u.saturating_add(offset_of!(RemoteEnd, dom)), remote);
                    put_u32(arg, u.saturating_add(offset_of!(RemoteEnd, port)), port);
                    stat::INTERDOMAIN
                }
                PortKind::Pirq(n) => {
                    put_u32(arg, u, n);
                    stat::PIRQ
                }
                PortKind::Virq(n) => {
                    put_u32(arg, u, n);
                    stat::VIRQ
                }
                PortKind::Ipi | PortKind::Local => stat::IPI,
            };
            (status, st.vcpu)
        }
    };
    put_u32(arg, offset_of!(Status, status), status);
    put_u32(arg, offset_of!(Status, vcpu), vcpu);
}
