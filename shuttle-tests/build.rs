//! Switches the core (this package's lib, `../src/lib.rs`) to shuttle's
//! atomics, fences and locks: `cfg(evtchn_shuttle)`.

fn main() {
    println!("cargo::rustc-check-cfg=cfg(evtchn_shuttle)");
    println!("cargo:rustc-cfg=evtchn_shuttle");
}
