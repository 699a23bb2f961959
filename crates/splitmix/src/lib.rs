//! SplitMix64, the one definition every seeded stream in LGAF-Train derives from: the
//! xoshiro256** seeding and keyed streams of `lgaf-data`, Partial FC's centre
//! initialisation in `lgaf-model`, the collective tests' data.
//!
//! It is written out here rather than taken from `rand_xoshiro`, whose `SplitMix64` gives
//! the same stream but neither exposes the output function on its own (which keyed hashes
//! need) nor keeps its trait API across `rand_core` releases. The outputs are part of the
//! project's determinism contract (synthetic data, initial weights, resumed runs): the tests
//! below pin them to Vigna's reference `splitmix64.c`, and they must never change.
//!
//! No dependencies, so that every crate can use it without pulling anything in.

#![no_std]

/// The increment of the SplitMix64 state: 2^64 divided by the golden ratio, made odd.
pub const GOLDEN_GAMMA: u64 = 0x9E37_79B9_7F4A_7C15;

/// The SplitMix64 output function (Stafford's variant 13 of the MurmurHash3 finaliser): a
/// bijection on `u64` in which every input bit affects every output bit. On its own it is a
/// keyed hash of any 64-bit value; [`SplitMix64`] applies it to a Weyl sequence.
#[inline]
#[must_use]
pub const fn mix64(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// The SplitMix64 generator: the state steps by [`GOLDEN_GAMMA`] and each output is
/// [`mix64`] of the new state. Small and fast, for seeding other generators and for short
/// keyed streams; not for cryptography.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SplitMix64 {
    state: u64,
}

impl SplitMix64 {
    /// The stream that starts after `seed` (its first output is `mix64(seed + GOLDEN_GAMMA)`,
    /// as in the reference code and `rand_xoshiro`).
    #[must_use]
    pub const fn new(seed: u64) -> Self {
        Self { state: seed }
    }

    /// The next output.
    #[inline]
    pub fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(GOLDEN_GAMMA);
        mix64(self.state)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn first<const N: usize>(seed: u64) -> [u64; N] {
        let mut rng = SplitMix64::new(seed);
        core::array::from_fn(|_| rng.next_u64())
    }

    /// Outputs of the copies this crate replaced, which agree with Vigna's `splitmix64.c`:
    /// its first output from seed 0 is the well-known 0xe220a8397b1dcdaf, and seed
    /// 1477776061723855037 starts the reference vector `rand_xoshiro` tests against.
    #[test]
    fn stream_matches_the_reference() {
        assert_eq!(
            first(0),
            [
                0xe220_a839_7b1d_cdaf,
                0x6e78_9e6a_a1b9_65f4,
                0x06c4_5d18_8009_454f,
                0xf88b_b8a8_724c_81ec,
            ]
        );
        assert_eq!(
            first(1_477_776_061_723_855_037),
            [
                1_985_237_415_132_408_290,
                2_979_275_885_539_914_483,
                13_511_426_838_097_143_398,
            ]
        );
    }

    #[test]
    fn mixer_is_pinned() {
        assert_eq!(mix64(0), 0);
        assert_eq!(mix64(1), 0x5692_161d_100b_05e5);
        assert_eq!(mix64(u64::MAX), 0xb4d0_55fc_f2cb_bd7b);
        // The stream is the mixer over the Weyl sequence.
        assert_eq!(first::<1>(41)[0], mix64(41u64.wrapping_add(GOLDEN_GAMMA)));
    }

    #[test]
    fn state_wraps_around() {
        let mut rng = SplitMix64::new(u64::MAX);
        assert_eq!(rng.next_u64(), mix64(GOLDEN_GAMMA - 1));
    }
}
