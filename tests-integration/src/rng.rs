//! The one small random source of the chores (the fuzzer's mutations, the soak's sizes):
//! reproducible from a printed seed, no dependency.

/// xorshift64*: enough randomness to pick sizes and mutations, not for anything secret.
#[derive(Debug)]
pub struct Rng(u64);

impl Rng {
    /// A generator from `seed` (a zero seed is made odd: xorshift never leaves zero).
    pub fn new(seed: u64) -> Self {
        Rng(seed | 1)
    }

    /// The next 64 random bits.
    pub fn bits(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// A number below `n` (0 when `n` is 0).
    pub fn below(&mut self, n: usize) -> usize {
        (self.bits() % n.max(1) as u64) as usize
    }
}
