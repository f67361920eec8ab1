//! Loom models of the evtchn core. The models live in `tests/`; this crate
//! holds the shared harness. Build and run them with
//! `RUSTFLAGS="--cfg loom" cargo test -p loom-tests --release`.
