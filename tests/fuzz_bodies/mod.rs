//! The bodies of the cargo-fuzz targets, shared by `fuzz/fuzz_targets/*.rs`
//! (nightly, libFuzzer) and `tests/fuzz_replay.rs` (stable: the committed
//! regression corpus plus seeded pseudo-random inputs).
//!
//! Every body takes raw bytes and panics on a finding. Every byte string is
//! a valid input: [`Input`] decodes it as a stream of small numbers and reads
//! zeros past its end, so the fuzzer never wastes work on rejected inputs,
//! and every loop of a body is bounded by the input's length.
//!
//! * [`ops`]: differential — an operation sequence on the real control plane
//!   and on a small reference model of plain per-port records, compared
//!   after every step (deliveries, errors, kicks, statuses, final state).
//! * [`guest_memory`]: hostile memory — arbitrary values written into every
//!   guest-writable word between operations; no panic, bounded work, no
//!   effect outside the port and vCPU an operation names, nor on a second
//!   domain.
//! * [`fifo_memory`]: the same under the FIFO ABI — arbitrary event words,
//!   links, `ready` and `head[]` between raw or control-plane operations;
//!   exact effects of each raw call, bounded scans, handlers only for ports
//!   the control plane would run, and a bystander domain left untouched.

#![allow(dead_code)]

pub mod fifo_memory;
pub mod guest_memory;
pub mod ops;

/// A fuzz input read as a stream of small numbers; zeros past the end.
pub struct Input<'a> {
    data: &'a [u8],
    pos: usize,
}

impl<'a> Input<'a> {
    /// Reads `data` from its start.
    pub fn new(data: &'a [u8]) -> Self {
        Input { data, pos: 0 }
    }

    /// Whether every byte has been read.
    pub fn is_empty(&self) -> bool {
        self.pos >= self.data.len()
    }

    /// The next byte, or 0 past the end.
    pub fn byte(&mut self) -> u8 {
        let b = self.data.get(self.pos).copied().unwrap_or(0);
        self.pos = self.pos.saturating_add(1);
        b
    }

    /// A number below `n` (`n > 0`) from as few bytes as it needs.
    pub fn below(&mut self, n: u32) -> u32 {
        debug_assert!(n > 0);
        if n <= 0x100 {
            u32::from(self.byte()) % n
        } else if n <= 0x1_0000 {
            u32::from(u16::from_le_bytes([self.byte(), self.byte()])) % n
        } else {
            self.u32() % n
        }
    }

    /// Whether the next byte is odd.
    pub fn flip(&mut self) -> bool {
        self.byte() & 1 != 0
    }

    /// Four bytes, little-endian.
    pub fn u32(&mut self) -> u32 {
        u32::from_le_bytes([self.byte(), self.byte(), self.byte(), self.byte()])
    }

    /// Eight bytes, little-endian.
    pub fn u64(&mut self) -> u64 {
        u64::from(self.u32()) | (u64::from(self.u32()) << 32)
    }

    /// A shared-memory word an attacker would try: mostly extremes (0, all
    /// ones, one bit, all but one bit), sometimes any value.
    pub fn word(&mut self) -> u64 {
        match self.byte() % 8 {
            0 => 0,
            1 | 2 => !0,
            3 | 4 => 1 << (self.byte() % 64),
            5 => !(1 << (self.byte() % 64)),
            _ => self.u64(),
        }
    }
}

/// A deterministic pseudo-random byte string (xorshift64*), for the stable
/// replay's seeded inputs: `seed` picks the string, `len` its length.
pub fn seeded_input(seed: u64, len: usize) -> Vec<u8> {
    let mut s = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..len)
        .map(|_| {
            s ^= s >> 12;
            s ^= s << 25;
            s ^= s >> 27;
            (s.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 56) as u8
        })
        .collect()
}
