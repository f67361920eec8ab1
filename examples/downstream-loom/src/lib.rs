//! A doorbell mailbox over evtchn: a producer puts a message in a slot and
//! rings the port; the consumer's upcall takes every message that is
//! there. The mailbox's own atomics switch to loom's under
//! `RUSTFLAGS="--cfg loom"`, as evtchn's do with its `loom` feature, so a
//! loom model checks both together.

#[cfg(not(loom))]
use std::sync::atomic::{AtomicU32, Ordering};
#[cfg(loom)]
use loom::sync::atomic::{AtomicU32, Ordering};

use evtchn::{Channels, Error, Notify, Port, PortOps};

/// One-word mailbox: a bit per message kind, rung through one port.
pub struct Mailbox {
    bits: AtomicU32,
    port: Port,
}

impl Mailbox {
    /// A mailbox rung through `port`.
    pub fn new(port: Port) -> Self {
        Mailbox {
            bits: AtomicU32::new(0),
            port,
        }
    }

    /// Posts message `kind` (0..32) and rings the port.
    pub fn post<A: PortOps, N: Notify>(&self, ch: &Channels<A, N>, kind: u32) -> Result<(), Error> {
        // Release: published to the consumer by evtchn's raise (Release)
        // and clear (Acquire); this order is what the model checks.
        self.bits.fetch_or(1 << (kind % 32), Ordering::Release);
        ch.send(self.port)
    }

    /// Takes every posted message (the consumer's handler for the port).
    pub fn take(&self) -> u32 {
        // Acquire: pairs with `post`'s Release.
        self.bits.swap(0, Ordering::Acquire)
    }
}
