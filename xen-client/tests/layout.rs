//! The hypercall argument structs and shared layouts as the Rust side sees
//! them, against `c/abi.c` compiled with Xen's headers.

#![cfg(not(loom))]

#[test]
fn hypercall_structs_match_xen_headers() {
    let c = xen_client::c_abi_layout();
    let rust = xen_client::xen_abi::rust_layout();
    assert_eq!(c, rust, "c/abi.c (Xen's headers) vs xen_abi (Rust)");
}
