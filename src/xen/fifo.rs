//! The FIFO ABI's shared layouts (`xen/event_channel.h`).
//!
//! The event word of each port, `event_word_t`:
//!
//! | bits   | name      | set by                  | cleared by                          |
//! |--------|-----------|-------------------------|-------------------------------------|
//! | 31     | `PENDING` | the raiser              | the guest, before the handler runs  |
//! | 30     | `MASKED`  | the guest / control plane | the unmask                        |
//! | 29     | `LINKED`  | the raiser that links it | the guest, when it takes it off a queue |
//! | 28     | `BUSY`    | the raiser, while it rewrites the link under a guest's feet | the raiser |
//! | 0..17  | `LINK`    | the raiser appending after this event | the guest, with `LINKED` |
//!
//! The per-vCPU control block holds the `ready` bitmap (bit `q`: queue of
//! priority `q` has a new head) and the `head` of each of the 16 queues.

use crate::sync::AtomicU32;

/// `EVTCHN_FIFO_PENDING`.
pub const PENDING: u32 = 1 << 31;
/// `EVTCHN_FIFO_MASKED`.
pub const MASKED: u32 = 1 << 30;
/// `EVTCHN_FIFO_LINKED`.
pub const LINKED: u32 = 1 << 29;
/// `EVTCHN_FIFO_BUSY`.
pub const BUSY: u32 = 1 << 28;
/// `EVTCHN_FIFO_LINK_MASK`: the link field, 17 bits.
pub const LINK_MASK: u32 = (1 << 17) - 1;
/// `EVTCHN_FIFO_NR_CHANNELS`.
pub const NR_CHANNELS: u32 = 1 << 17;
/// `EVTCHN_FIFO_MAX_QUEUES`: priorities 0 (highest) ..= 15.
pub const MAX_QUEUES: usize = 16;
/// `EVTCHN_FIFO_PRIORITY_DEFAULT`.
pub const PRIORITY_DEFAULT: u8 = 7;
/// Event words per 4 KiB page of the event array (`EVTCHN_FIFO_EVENT_WORDS_PER_PAGE`).
pub const EVENT_WORDS_PER_PAGE: u32 = 1024;

/// `event_word_t`.
pub type EventWord = AtomicU32;

/// `struct evtchn_fifo_control_block` (72 bytes).
#[repr(C)]
#[derive(Debug)]
pub struct ControlBlock {
    /// Bit `q` set: queue `q` has (or had) a new head for the guest.
    pub ready: AtomicU32,
    _rsvd: AtomicU32,
    /// Head port of each queue, written by the raiser when a queue was empty.
    pub head: [AtomicU32; MAX_QUEUES],
}

impl ControlBlock {
    /// A zeroed control block.
    #[must_use]
    pub fn new() -> Self {
        ControlBlock {
            ready: AtomicU32::new(0),
            _rsvd: AtomicU32::new(0),
            head: core::array::from_fn(|_| AtomicU32::new(0)),
        }
    }
}

impl Default for ControlBlock {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(not(any(all(loom, feature = "loom"), evtchn_shuttle)))]
mod layout {
    use super::ControlBlock;
    use core::mem::{offset_of, size_of};
    use static_assertions::const_assert_eq;

    const_assert_eq!(size_of::<super::EventWord>(), 4);
    const_assert_eq!(size_of::<ControlBlock>(), 72);
    const_assert_eq!(offset_of!(ControlBlock, ready), 0);
    const_assert_eq!(offset_of!(ControlBlock, _rsvd), 4);
    const_assert_eq!(offset_of!(ControlBlock, head), 8);
}
