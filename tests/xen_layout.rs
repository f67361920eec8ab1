//! `evtchn::xen` against Xen's real public headers.
//!
//! Compiles `tests/xen_layout.c` against `<xen/xen.h>` and
//! `<xen/event_channel.h>` (Debian: `libxen-dev`), runs it, and compares every
//! `name value` line it prints (sizes, offsets, array lengths, constants) with
//! the Rust side. The program is built twice: once as a guest sees the headers
//! and once with `-D__XEN_TOOLS__` (the toolstack's view, latest interface
//! version); both must match.
//!
//! Missing headers fail the test with instructions, unless
//! `EVTCHN_SKIP_XEN_HEADERS=1` is set, in which case the test prints a skip
//! line and passes. `CC` selects the C compiler (default `cc`).
//!
//! The figures are those of x86_64 (see docs/DESIGN.md §3), so the test is
//! ignored on other hosts.

// Under `--cfg loom` the atomics are loom's, which have different layouts.
#![cfg(not(loom))]

use core::mem::{align_of, offset_of, size_of};
use std::collections::BTreeMap;
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Command;

use evtchn::xen::evtchnop::{self as op, cmd, errno, stat, virq};
use evtchn::xen::{
    fifo, SharedInfo, VcpuInfo, XenUlong, BITS_PER_WORD, LEGACY_MAX_VCPUS, NR_EVENT_CHANNELS_2L,
};

/// Environment variable that turns "headers missing" from a failure into a skip.
const SKIP_VAR: &str = "EVTCHN_SKIP_XEN_HEADERS";

/// Marker `tests/xen_layout.c` puts in its `#error` when the headers are absent.
const MISSING_MARKER: &str = "EVTCHN_XEN_HEADERS_MISSING";

/// Flags used for every build of the C program; `tests/xen_layout.c` must build
/// warning-free with them. Xen's headers need `<stdint.h>` included first, which
/// the C file does itself.
const CFLAGS: &[&str] = &["-std=c11", "-Wall", "-Wextra", "-Werror"];

// Offsets of the fields the Rust types keep private (opaque to this crate).
// Their sizes follow from the layout: `arch` runs up to `time`, and `time` /
// `shared_info.arch` run to the end of their struct.
/// `offsetof(struct vcpu_info, arch)`.
const VCPU_INFO_ARCH_OFFSET: usize = 16;
/// `offsetof(struct vcpu_info, time)`.
const VCPU_INFO_TIME_OFFSET: usize = 32;
/// `offsetof(struct shared_info, wc_version)`: the first of the `wc_*` words.
const SHARED_INFO_WC_OFFSET: usize = 3072;
/// `offsetof(struct shared_info, arch)`.
const SHARED_INFO_ARCH_OFFSET: usize = 3088;

/// Size of the field that `_project` selects.
fn field_size<S, F>(_project: fn(&S) -> &F) -> usize {
    size_of::<F>()
}

/// Element count of the array field that `_project` selects.
fn array_len<S, T, const N: usize>(_project: fn(&S) -> &[T; N]) -> usize {
    N
}

/// Element size of the array field that `_project` selects.
fn array_elem_size<S, T, const N: usize>(_project: fn(&S) -> &[T; N]) -> usize {
    size_of::<T>()
}

/// The Rust side of every line the C program prints, in the same order.
fn rust_values(with_nr_event_channels: bool) -> Vec<(&'static str, usize)> {
    let mut v: Vec<(&'static str, usize)> = vec![
        // constants
        ("sizeof_xen_ulong_t", size_of::<XenUlong>()),
        ("bits_per_xen_ulong_t", BITS_PER_WORD as usize),
        ("XEN_LEGACY_MAX_VCPUS", LEGACY_MAX_VCPUS),
        ("EVTCHN_2L_NR_CHANNELS", NR_EVENT_CHANNELS_2L as usize),
        ("nr_channels_2l_formula", NR_EVENT_CHANNELS_2L as usize),
    ];
    if with_nr_event_channels {
        v.push(("NR_EVENT_CHANNELS", NR_EVENT_CHANNELS_2L as usize));
    }
    v.extend([
        // struct vcpu_info
        ("vcpu_info.size", size_of::<VcpuInfo>()),
        ("vcpu_info.align", align_of::<VcpuInfo>()),
        (
            "vcpu_info.evtchn_upcall_pending.offset",
            offset_of!(VcpuInfo, evtchn_upcall_pending),
        ),
        (
            "vcpu_info.evtchn_upcall_pending.size",
            field_size(|v: &VcpuInfo| &v.evtchn_upcall_pending),
        ),
        (
            "vcpu_info.evtchn_upcall_mask.offset",
            offset_of!(VcpuInfo, evtchn_upcall_mask),
        ),
        (
            "vcpu_info.evtchn_upcall_mask.size",
            field_size(|v: &VcpuInfo| &v.evtchn_upcall_mask),
        ),
        (
            "vcpu_info.evtchn_pending_sel.offset",
            offset_of!(VcpuInfo, evtchn_pending_sel),
        ),
        (
            "vcpu_info.evtchn_pending_sel.size",
            field_size(|v: &VcpuInfo| &v.evtchn_pending_sel),
        ),
        ("vcpu_info.arch.offset", VCPU_INFO_ARCH_OFFSET),
        (
            "vcpu_info.arch.size",
            VCPU_INFO_TIME_OFFSET - VCPU_INFO_ARCH_OFFSET,
        ),
        ("vcpu_info.time.offset", VCPU_INFO_TIME_OFFSET),
        (
            "vcpu_info.time.size",
            size_of::<VcpuInfo>() - VCPU_INFO_TIME_OFFSET,
        ),
        // struct shared_info
        ("shared_info.size", size_of::<SharedInfo>()),
        ("shared_info.align", align_of::<SharedInfo>()),
        (
            "shared_info.vcpu_info.offset",
            offset_of!(SharedInfo, vcpu_info),
        ),
        (
            "shared_info.vcpu_info.size",
            field_size(|s: &SharedInfo| &s.vcpu_info),
        ),
        (
            "shared_info.vcpu_info.len",
            array_len(|s: &SharedInfo| &s.vcpu_info),
        ),
        (
            "shared_info.vcpu_info.elem_size",
            array_elem_size(|s: &SharedInfo| &s.vcpu_info),
        ),
        (
            "shared_info.evtchn_pending.offset",
            offset_of!(SharedInfo, evtchn_pending),
        ),
        (
            "shared_info.evtchn_pending.size",
            field_size(|s: &SharedInfo| &s.evtchn_pending),
        ),
        (
            "shared_info.evtchn_pending.len",
            array_len(|s: &SharedInfo| &s.evtchn_pending),
        ),
        (
            "shared_info.evtchn_pending.elem_size",
            array_elem_size(|s: &SharedInfo| &s.evtchn_pending),
        ),
        (
            "shared_info.evtchn_mask.offset",
            offset_of!(SharedInfo, evtchn_mask),
        ),
        (
            "shared_info.evtchn_mask.size",
            field_size(|s: &SharedInfo| &s.evtchn_mask),
        ),
        (
            "shared_info.evtchn_mask.len",
            array_len(|s: &SharedInfo| &s.evtchn_mask),
        ),
        (
            "shared_info.evtchn_mask.elem_size",
            array_elem_size(|s: &SharedInfo| &s.evtchn_mask),
        ),
        ("shared_info.wc_version.offset", SHARED_INFO_WC_OFFSET),
        ("shared_info.arch.offset", SHARED_INFO_ARCH_OFFSET),
        (
            "shared_info.arch.size",
            size_of::<SharedInfo>() - SHARED_INFO_ARCH_OFFSET,
        ),
        // FIFO ABI
        ("sizeof_event_word_t", size_of::<fifo::EventWord>()),
        ("EVTCHN_FIFO_PENDING_mask", fifo::PENDING as usize),
        ("EVTCHN_FIFO_MASKED_mask", fifo::MASKED as usize),
        ("EVTCHN_FIFO_LINKED_mask", fifo::LINKED as usize),
        ("EVTCHN_FIFO_BUSY_mask", fifo::BUSY as usize),
        ("EVTCHN_FIFO_LINK_MASK", fifo::LINK_MASK as usize),
        ("EVTCHN_FIFO_NR_CHANNELS", fifo::NR_CHANNELS as usize),
        ("EVTCHN_FIFO_MAX_QUEUES", fifo::MAX_QUEUES),
        (
            "EVTCHN_FIFO_PRIORITY_DEFAULT",
            usize::from(fifo::PRIORITY_DEFAULT),
        ),
        (
            "evtchn_fifo_control_block.size",
            size_of::<fifo::ControlBlock>(),
        ),
        (
            "evtchn_fifo_control_block.align",
            align_of::<fifo::ControlBlock>(),
        ),
        (
            "evtchn_fifo_control_block.ready.offset",
            offset_of!(fifo::ControlBlock, ready),
        ),
        (
            "evtchn_fifo_control_block.ready.size",
            field_size(|c: &fifo::ControlBlock| &c.ready),
        ),
        (
            "evtchn_fifo_control_block.head.offset",
            offset_of!(fifo::ControlBlock, head),
        ),
        (
            "evtchn_fifo_control_block.head.size",
            field_size(|c: &fifo::ControlBlock| &c.head),
        ),
        (
            "evtchn_fifo_control_block.head.len",
            array_len(|c: &fifo::ControlBlock| &c.head),
        ),
        (
            "evtchn_fifo_control_block.head.elem_size",
            array_elem_size(|c: &fifo::ControlBlock| &c.head),
        ),
    ]);
    v
}

/// `name.offset` and `name.size` of a field, as the C program's `FIELD`.
macro_rules! field {
    ($c:literal, $ty:ty, $f:ident) => {
        [
            (
                concat!($c, ".", stringify!($f), ".offset").to_string(),
                offset_of!($ty, $f),
            ),
            (
                concat!($c, ".", stringify!($f), ".size").to_string(),
                field_size(|s: &$ty| &s.$f),
            ),
        ]
    };
}

/// `name.size` and `name.align` of a struct, as the C program's `STRUCT`.
macro_rules! strukt {
    ($c:literal, $ty:ty) => {
        [
            (concat!($c, ".size").to_string(), size_of::<$ty>()),
            (concat!($c, ".align").to_string(), align_of::<$ty>()),
        ]
    };
}

/// The Rust side of the event-channel hypercall's lines
/// (`evtchn::xen::evtchnop`).
fn evtchnop_values() -> Vec<(String, usize)> {
    let n = |name: &str, value: u32| (name.to_string(), value as usize);
    let e = |name: &str, value: i32| (name.to_string(), value as usize);
    let mut v = vec![
        n("EVTCHNOP_bind_interdomain", cmd::BIND_INTERDOMAIN),
        n("EVTCHNOP_bind_virq", cmd::BIND_VIRQ),
        n("EVTCHNOP_bind_pirq", cmd::BIND_PIRQ),
        n("EVTCHNOP_close", cmd::CLOSE),
        n("EVTCHNOP_send", cmd::SEND),
        n("EVTCHNOP_status", cmd::STATUS),
        n("EVTCHNOP_alloc_unbound", cmd::ALLOC_UNBOUND),
        n("EVTCHNOP_bind_ipi", cmd::BIND_IPI),
        n("EVTCHNOP_bind_vcpu", cmd::BIND_VCPU),
        n("EVTCHNOP_unmask", cmd::UNMASK),
        n("EVTCHNOP_reset", cmd::RESET),
        n("EVTCHNOP_init_control", cmd::INIT_CONTROL),
        n("EVTCHNOP_expand_array", cmd::EXPAND_ARRAY),
        n("EVTCHNOP_set_priority", cmd::SET_PRIORITY),
        n("EVTCHNSTAT_closed", stat::CLOSED),
        n("EVTCHNSTAT_unbound", stat::UNBOUND),
        n("EVTCHNSTAT_interdomain", stat::INTERDOMAIN),
        n("EVTCHNSTAT_pirq", stat::PIRQ),
        n("EVTCHNSTAT_virq", stat::VIRQ),
        n("EVTCHNSTAT_ipi", stat::IPI),
        n("BIND_PIRQ__WILL_SHARE", op::BIND_PIRQ_WILL_SHARE),
        n("VIRQ_TIMER", virq::TIMER),
        n("VIRQ_DEBUG", virq::DEBUG),
        n("VIRQ_CONSOLE", virq::CONSOLE),
        n("VIRQ_DOM_EXC", virq::DOM_EXC),
        n("VIRQ_TBUF", virq::TBUF),
        n("VIRQ_DEBUGGER", virq::DEBUGGER),
        n("VIRQ_XENOPROF", virq::XENOPROF),
        n("VIRQ_CON_RING", virq::CON_RING),
        n("VIRQ_PCPU_STATE", virq::PCPU_STATE),
        n("VIRQ_MEM_EVENT", virq::MEM_EVENT),
        n("VIRQ_ARGO", virq::ARGO),
        n("VIRQ_ENOMEM", virq::ENOMEM),
        n("VIRQ_XENPMU", virq::XENPMU),
        n("VIRQ_ARCH_0", virq::ARCH_0),
        n("NR_VIRQS", virq::NR_VIRQS),
        n("DOMID_SELF", u32::from(op::DOMID_SELF)),
        n("DOMID_FIRST_RESERVED", u32::from(op::DOMID_FIRST_RESERVED)),
        ("sizeof_domid_t".to_string(), size_of::<op::DomId>()),
        ("sizeof_evtchn_port_t".to_string(), size_of::<u32>()),
        e("XEN_EPERM", errno::EPERM),
        e("XEN_ENOENT", errno::ENOENT),
        e("XEN_ESRCH", errno::ESRCH),
        e("XEN_EAGAIN", errno::EAGAIN),
        e("XEN_ENOMEM", errno::ENOMEM),
        e("XEN_EACCES", errno::EACCES),
        e("XEN_EFAULT", errno::EFAULT),
        e("XEN_EBUSY", errno::EBUSY),
        e("XEN_EEXIST", errno::EEXIST),
        e("XEN_EINVAL", errno::EINVAL),
        e("XEN_ENOSPC", errno::ENOSPC),
        e("XEN_ENOSYS", errno::ENOSYS),
        e("XEN_EOPNOTSUPP", errno::EOPNOTSUPP),
    ];
    v.extend(strukt!("evtchn_alloc_unbound", op::AllocUnbound));
    v.extend(field!("evtchn_alloc_unbound", op::AllocUnbound, dom));
    v.extend(field!("evtchn_alloc_unbound", op::AllocUnbound, remote_dom));
    v.extend(field!("evtchn_alloc_unbound", op::AllocUnbound, port));
    v.extend(strukt!("evtchn_bind_interdomain", op::BindInterdomain));
    v.extend(field!(
        "evtchn_bind_interdomain",
        op::BindInterdomain,
        remote_dom
    ));
    v.extend(field!(
        "evtchn_bind_interdomain",
        op::BindInterdomain,
        remote_port
    ));
    v.extend(field!(
        "evtchn_bind_interdomain",
        op::BindInterdomain,
        local_port
    ));
    v.extend(strukt!("evtchn_bind_virq", op::BindVirq));
    v.extend(field!("evtchn_bind_virq", op::BindVirq, virq));
    v.extend(field!("evtchn_bind_virq", op::BindVirq, vcpu));
    v.extend(field!("evtchn_bind_virq", op::BindVirq, port));
    v.extend(strukt!("evtchn_bind_pirq", op::BindPirq));
    v.extend(field!("evtchn_bind_pirq", op::BindPirq, pirq));
    v.extend(field!("evtchn_bind_pirq", op::BindPirq, flags));
    v.extend(field!("evtchn_bind_pirq", op::BindPirq, port));
    v.extend(strukt!("evtchn_bind_ipi", op::BindIpi));
    v.extend(field!("evtchn_bind_ipi", op::BindIpi, vcpu));
    v.extend(field!("evtchn_bind_ipi", op::BindIpi, port));
    v.extend(strukt!("evtchn_close", op::Close));
    v.extend(field!("evtchn_close", op::Close, port));
    v.extend(strukt!("evtchn_send", op::Send));
    v.extend(field!("evtchn_send", op::Send, port));
    v.extend(strukt!("evtchn_unmask", op::Unmask));
    v.extend(field!("evtchn_unmask", op::Unmask, port));
    v.extend(strukt!("evtchn_status", op::Status));
    v.extend(field!("evtchn_status", op::Status, dom));
    v.extend(field!("evtchn_status", op::Status, port));
    v.extend(field!("evtchn_status", op::Status, status));
    v.extend(field!("evtchn_status", op::Status, vcpu));
    v.extend(field!("evtchn_status", op::Status, u));
    // The union's members: `remote` serves `unbound` and `interdomain`,
    // `irq` serves `pirq` and `virq`; every member starts at the union's
    // start.
    let u = offset_of!(op::Status, u);
    let remote_dom = u + offset_of!(op::RemoteEnd, dom);
    let remote_port = u + offset_of!(op::RemoteEnd, port);
    let dom_size = field_size(|r: &op::RemoteEnd| &r.dom);
    let port_size = field_size(|r: &op::RemoteEnd| &r.port);
    for (name, value) in [
        ("u.unbound.dom.offset", remote_dom),
        ("u.unbound.dom.size", dom_size),
        ("u.interdomain.dom.offset", remote_dom),
        ("u.interdomain.dom.size", dom_size),
        ("u.interdomain.port.offset", remote_port),
        ("u.interdomain.port.size", port_size),
        ("u.pirq.offset", u),
        ("u.pirq.size", size_of::<u32>()),
        ("u.virq.offset", u),
        ("u.virq.size", size_of::<u32>()),
    ] {
        v.push((format!("evtchn_status.{name}"), value));
    }
    v.extend(strukt!("evtchn_bind_vcpu", op::BindVcpu));
    v.extend(field!("evtchn_bind_vcpu", op::BindVcpu, port));
    v.extend(field!("evtchn_bind_vcpu", op::BindVcpu, vcpu));
    v.extend(strukt!("evtchn_reset", op::Reset));
    v.extend(field!("evtchn_reset", op::Reset, dom));
    v.extend(strukt!("evtchn_init_control", op::InitControl));
    v.extend(field!("evtchn_init_control", op::InitControl, control_gfn));
    v.extend(field!("evtchn_init_control", op::InitControl, offset));
    v.extend(field!("evtchn_init_control", op::InitControl, vcpu));
    v.extend(field!("evtchn_init_control", op::InitControl, link_bits));
    v.push((
        "evtchn_init_control._pad.offset".to_string(),
        offset_of!(op::InitControl, pad),
    ));
    v.push((
        "evtchn_init_control._pad.size".to_string(),
        field_size(|c: &op::InitControl| &c.pad),
    ));
    v.extend(strukt!("evtchn_expand_array", op::ExpandArray));
    v.extend(field!("evtchn_expand_array", op::ExpandArray, array_gfn));
    v.extend(strukt!("evtchn_set_priority", op::SetPriority));
    v.extend(field!("evtchn_set_priority", op::SetPriority, port));
    v.extend(field!("evtchn_set_priority", op::SetPriority, priority));
    v
}

/// The constants for the private fields must agree with the public fields the
/// Rust types do expose: each private region starts where the public fields
/// before it end, and runs in order up to the end of the struct.
fn check_private_offsets_against_public_fields() {
    assert_eq!(
        offset_of!(VcpuInfo, evtchn_pending_sel) + field_size(|v: &VcpuInfo| &v.evtchn_pending_sel),
        VCPU_INFO_ARCH_OFFSET,
        "Rust VcpuInfo: evtchn_pending_sel does not end at the arch offset constant",
    );
    assert!(
        VCPU_INFO_ARCH_OFFSET < VCPU_INFO_TIME_OFFSET
            && VCPU_INFO_TIME_OFFSET < size_of::<VcpuInfo>(),
        "Rust VcpuInfo: arch/time offset constants out of order or past the end",
    );
    assert_eq!(
        offset_of!(SharedInfo, evtchn_mask) + field_size(|s: &SharedInfo| &s.evtchn_mask),
        SHARED_INFO_WC_OFFSET,
        "Rust SharedInfo: evtchn_mask does not end at the wc_version offset constant",
    );
    assert!(
        SHARED_INFO_WC_OFFSET < SHARED_INFO_ARCH_OFFSET
            && SHARED_INFO_ARCH_OFFSET < size_of::<SharedInfo>(),
        "Rust SharedInfo: wc/arch offset constants out of order or past the end",
    );
}

fn skip_requested() -> bool {
    std::env::var_os(SKIP_VAR).is_some_and(|v| v == "1")
}

/// Builds `tests/xen_layout.c` with `extra_flags` and returns the executable,
/// or `None` if the test is to be skipped.
fn build(variant: &str, extra_flags: &[&str]) -> Option<PathBuf> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/xen_layout.c");
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("xen_layout");
    std::fs::create_dir_all(&dir)
        .unwrap_or_else(|e| panic!("cannot create {}: {e}", dir.display()));
    let exe = dir.join(format!("xen_layout_{variant}"));
    // A stale executable must never be run by mistake.
    let _ = std::fs::remove_file(&exe);

    let cc = std::env::var_os("CC")
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| OsString::from("cc"));
    let mut cmd = Command::new(&cc);
    cmd.args(CFLAGS)
        .args(extra_flags)
        .arg(&src)
        .arg("-o")
        .arg(&exe);
    let shown = format!("{cmd:?}");

    let out = match cmd.output() {
        Ok(out) => out,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && skip_requested() => {
            println!(
                "xen_layout[{variant}]: SKIPPED: C compiler {cc:?} not found and {SKIP_VAR}=1"
            );
            return None;
        }
        Err(e) => panic!(
            "xen_layout[{variant}]: cannot run the C compiler {cc:?} ({e}); this test \
             needs a C compiler and Xen's public headers: `apt-get install gcc libxen-dev` \
             (or set CC; or set {SKIP_VAR}=1 to skip)\ncommand: {shown}"
        ),
    };
    if out.status.success() {
        return Some(exe);
    }

    let stderr = String::from_utf8_lossy(&out.stderr);
    let headers_missing = stderr.contains(MISSING_MARKER)
        || ((stderr.contains("xen/xen.h") || stderr.contains("xen/event_channel.h"))
            && (stderr.contains("No such file") || stderr.contains("not found")));
    if headers_missing {
        if skip_requested() {
            println!(
                "xen_layout[{variant}]: SKIPPED: Xen public headers (<xen/xen.h>) not found \
                 and {SKIP_VAR}=1"
            );
            return None;
        }
        panic!(
            "xen_layout[{variant}]: Xen's public headers <xen/xen.h> / <xen/event_channel.h> \
             were not found. Install them with `apt-get install libxen-dev` (Debian/Ubuntu), \
             or set {SKIP_VAR}=1 to skip this test.\ncommand: {shown}\ncompiler output:\n{stderr}"
        );
    }
    panic!(
        "xen_layout[{variant}]: compiling tests/xen_layout.c failed ({})\ncommand: {shown}\n\
         compiler output:\n{stderr}",
        out.status
    );
}

/// Runs the C program and parses its `name value` lines.
fn run(variant: &str, exe: &Path) -> BTreeMap<String, usize> {
    let out = Command::new(exe)
        .output()
        .unwrap_or_else(|e| panic!("xen_layout[{variant}]: cannot run {}: {e}", exe.display()));
    assert!(
        out.status.success(),
        "xen_layout[{variant}]: {} exited with {}; stderr:\n{}",
        exe.display(),
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8(out.stdout)
        .unwrap_or_else(|e| panic!("xen_layout[{variant}]: output is not UTF-8: {e}"));

    let mut values = BTreeMap::new();
    for (i, line) in stdout.lines().enumerate() {
        let mut words = line.split_whitespace();
        let (Some(name), Some(value), None) = (words.next(), words.next(), words.next()) else {
            panic!(
                "xen_layout[{variant}]: line {}: expected `name value`, got {line:?}",
                i + 1
            );
        };
        let value: usize = value.parse().unwrap_or_else(|e| {
            panic!(
                "xen_layout[{variant}]: line {}: bad value in {line:?}: {e}",
                i + 1
            )
        });
        let previous = values.insert(name.to_owned(), value);
        assert!(
            previous.is_none(),
            "xen_layout[{variant}]: C program printed {name} twice"
        );
    }
    assert!(
        !values.is_empty(),
        "xen_layout[{variant}]: C program printed nothing"
    );
    values
}

/// Builds and runs one variant and compares every printed value with Rust.
fn check(variant: &str, extra_flags: &[&str], with_nr_event_channels: bool) {
    check_private_offsets_against_public_fields();

    let Some(exe) = build(variant, extra_flags) else {
        return;
    };
    let mut c_values = run(variant, &exe);
    let rust: Vec<(String, usize)> = rust_values(with_nr_event_channels)
        .into_iter()
        .map(|(name, value)| (name.to_string(), value))
        .chain(evtchnop_values())
        .collect();

    let mut failures = Vec::new();
    for (name, rust_value) in &rust {
        match c_values.remove(name.as_str()) {
            None => failures.push(format!(
                "{name}: the C program did not print it (Rust side: {rust_value})"
            )),
            Some(c_value) if c_value != *rust_value => {
                println!("xen_layout[{variant}]: MISMATCH {name}: C={c_value} Rust={rust_value}");
                failures.push(format!(
                    "{name}: Xen's headers say {c_value}, evtchn::xen says {rust_value}"
                ));
            }
            Some(c_value) => {
                println!("xen_layout[{variant}]: ok {name} = {c_value}");
            }
        }
    }
    // Every line the C side prints must have been compared.
    for (name, c_value) in &c_values {
        failures.push(format!(
            "{name} = {c_value}: printed by the C program but has no Rust counterpart in this test"
        ));
    }
    println!(
        "xen_layout[{variant}]: compared {} values, {} failure(s)",
        rust.len(),
        failures.len()
    );
    assert!(
        failures.is_empty(),
        "xen_layout[{variant}]: evtchn::xen does not match Xen's public headers \
         (flags {CFLAGS:?} {extra_flags:?}):\n  {}",
        failures.join("\n  ")
    );
}

/// The headers as a guest kernel sees them (default interface version, which
/// still defines `NR_EVENT_CHANNELS`).
#[test]
#[cfg_attr(
    not(all(target_arch = "x86_64", target_os = "linux")),
    ignore = "the expected Xen layouts are those of x86_64 Linux hosts"
)]
fn guest_view_matches_xen_headers() {
    check("guest", &[], true);
}

/// The headers as the toolstack sees them (`__XEN_TOOLS__`: latest interface
/// version, where `NR_EVENT_CHANNELS` is gone).
#[test]
#[cfg_attr(
    not(all(target_arch = "x86_64", target_os = "linux")),
    ignore = "the expected Xen layouts are those of x86_64 Linux hosts"
)]
fn tools_view_matches_xen_headers() {
    check("tools", &["-D__XEN_TOOLS__"], false);
}
