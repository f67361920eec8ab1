//! The one PRNG of the tests, fuzz replay, examples and xen-client.

/// xorshift64*: a tiny, seeded, deterministic generator (not for
/// cryptography).
///
/// Its exact algorithm is kept because a printed seed names an input by it:
/// [`seeded_input`](crate::fuzz::seeded_input) builds the fuzz replay's
/// inputs from it, and a failing replay prints `seeded_input(seed, len)`.
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    /// The generator of `seed` (any value, 0 included).
    #[must_use]
    pub fn new(seed: u64) -> Self {
        Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// Uniform-enough in `0..n` (`n > 0`).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }

    /// True with probability `num / den` (`den > 0`).
    pub fn chance(&mut self, num: u64, den: u64) -> bool {
        self.below(den) < num
    }
}

#[cfg(test)]
mod tests {
    use super::Rng;

    /// The stream of seed 0 and 1, as `tests/common`'s and the fuzz
    /// replay's generators produced it: the seeded inputs keep their
    /// meaning.
    #[test]
    fn the_stream_is_xorshift64_star() {
        let mut r = Rng::new(0);
        let mut s: u64 = 1;
        for _ in 0..100 {
            s ^= s >> 12;
            s ^= s << 25;
            s ^= s >> 27;
            assert_eq!(r.next_u64(), s.wrapping_mul(0x2545_f491_4f6c_dd1d));
        }
        let mut r = Rng::new(1);
        let mut s: u64 = 0x9e37_79b9_7f4a_7c15 | 1;
        for _ in 0..100 {
            s ^= s >> 12;
            s ^= s << 25;
            s ^= s >> 27;
            assert_eq!(r.next_u64(), s.wrapping_mul(0x2545_f491_4f6c_dd1d));
        }
    }
}
