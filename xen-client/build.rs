//! Compiles the C guest (`c/guest.c`), the C raiser (`c/raiser.c`), the
//! hypercall script (`c/ops.c`) and the layout table (`c/abi.c`) against
//! Xen's public headers, each C file once as written and once per
//! deliberately broken variant (the negative controls), every variant under
//! its own symbol prefix.

use std::path::PathBuf;

/// (source, prefix define, prefix, extra define) of each build.
const BUILDS: &[(&str, &str, &str, Option<&str>)] = &[
    ("c/guest.c", "XG_PREFIX", "xg_", None),
    (
        "c/guest.c",
        "XG_PREFIX",
        "xg_broken_unmask_",
        Some("XG_BROKEN_UNMASK"),
    ),
    (
        "c/guest.c",
        "XG_PREFIX",
        "xg_ignore_mask_",
        Some("XG_BROKEN_IGNORE_MASK"),
    ),
    ("c/raiser.c", "XR_PREFIX", "xr_", None),
    (
        "c/raiser.c",
        "XR_PREFIX",
        "xr_broken_unmask_",
        Some("XR_BROKEN_UNMASK"),
    ),
    (
        "c/raiser.c",
        "XR_PREFIX",
        "xr_unmasking_bind_vcpu_",
        Some("XR_BROKEN_BIND_VCPU"),
    ),
    ("c/ops.c", "XO_PREFIX", "xo_", None),
    ("c/abi.c", "XC_UNUSED", "", None),
];

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-changed=c");
    for f in ["c/xc.h", "c/guest.c", "c/raiser.c", "c/ops.c", "c/abi.c"] {
        println!("cargo:rerun-if-changed={f}");
    }
    let out = PathBuf::from(std::env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));

    if !headers_present(&out) {
        eprintln!(
            "xen-client: Xen's public headers <xen/xen.h> and <xen/event_channel.h> are missing: apt-get install libxen-dev"
        );
        std::process::exit(1);
    }

    for (i, (src, define, prefix, extra)) in BUILDS.iter().enumerate() {
        let dir = out.join(format!("build{i}"));
        std::fs::create_dir_all(&dir).expect("create the build directory");
        let mut b = cc::Build::new();
        b.file(src)
            .include("c")
            .out_dir(&dir)
            .std("c11")
            .flag_if_supported("-Wall")
            .flag_if_supported("-Wextra")
            .warnings_into_errors(true)
            .opt_level(2);
        if !prefix.is_empty() {
            b.define(define, Some(*prefix));
        }
        if let Some(extra) = extra {
            b.define(extra, None);
        }
        let name = if prefix.is_empty() {
            "xc_abi".to_string()
        } else {
            format!("{}c", prefix)
        };
        b.compile(&name);
    }
}

/// Whether `<xen/xen.h>` and `<xen/event_channel.h>` preprocess.
fn headers_present(out: &std::path::Path) -> bool {
    let probe = out.join("xen_headers_probe.c");
    std::fs::write(
        &probe,
        "#include <stdint.h>\n#include <xen/xen.h>\n#include <xen/event_channel.h>\n",
    )
    .expect("write the header probe");
    let compiler = cc::Build::new().cargo_metadata(false).get_compiler();
    let mut cmd = compiler.to_command();
    cmd.arg("-E")
        .arg(&probe)
        .arg("-o")
        .arg(out.join("xen_headers_probe.i"));
    matches!(cmd.output(), Ok(o) if o.status.success())
}
