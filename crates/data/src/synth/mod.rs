//! Deterministic synthetic face generator.
//!
//! This is the embedded default dataset for the CPU demo and the tests, where
//! no face photographs are available. Each identity has stable geometry and
//! colours ([`IdentityParams`], a function of `(seed, id)` only), so ids
//! `0..N` used for training and ids `N..N+M` held out for verification are
//! disjoint identities from the same distribution. Every sample additionally
//! varies in translation, rotation, scale, lighting, background, clothing and
//! gaze, and may carry one of the three nuisance [`Factor`]s.
//!
//! Rendering is pure Rust: shapes are rasterised from signed distance
//! functions with one-pixel soft edges into a 112x112 RGB buffer.

mod canvas;
mod degrade;
mod identity;
mod scene;

pub use identity::IdentityParams;

use crate::rng::Rng;
use scene::Scene;

/// Side length of the square images produced here.
pub const IMAGE_SIZE: usize = 112;

/// Stream tags for identity parameters and for the choice of a training
/// sample's factor.
const STREAM_IDENTITY: u64 = 0x4944_454E; // "IDEN"
const STREAM_FACTOR_CHOICE: u64 = 0x4348_4F53; // "CHOS"
const STREAM_PAIRS: u64 = 0x5041_4952; // "PAIR"

/// The nuisance factor applied to a sample.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Factor {
    /// Only the mild per-sample variation (pose, lighting, background).
    Clean,
    /// Missing regions: sunglasses, a mask, a flat block, a zeroed crop
    /// band, or a strong pose that pushes part of the face out of frame.
    Missing,
    /// Local deformation: a strong expression (smile, surprise, anger, wink)
    /// that changes mouth, brows and eyes but not head shape or colours.
    Deformed,
    /// Low quality: down-and-up rescaling, blur and/or additive noise.
    LowQuality,
}

impl Factor {
    pub const ALL: [Factor; 4] = [
        Factor::Clean,
        Factor::Missing,
        Factor::Deformed,
        Factor::LowQuality,
    ];

    /// The three factors other than `Clean`.
    const NUISANCE: [Factor; 3] = [Factor::Missing, Factor::Deformed, Factor::LowQuality];

    pub fn name(&self) -> &'static str {
        match self {
            Factor::Clean => "clean",
            Factor::Missing => "missing",
            Factor::Deformed => "deformed",
            Factor::LowQuality => "low_quality",
        }
    }

    /// Stable key for random streams (independent of declaration order).
    fn key(self) -> u64 {
        match self {
            Factor::Clean => 0,
            Factor::Missing => 1,
            Factor::Deformed => 2,
            Factor::LowQuality => 3,
        }
    }
}

/// Size and composition of a synthetic dataset.
#[derive(Clone, Debug)]
pub struct SynthConfig {
    pub seed: u64,
    pub identities: usize,
    pub images_per_identity: usize,
    /// Probability that a training sample gets a nuisance factor; the factor
    /// is then one of `Missing`, `Deformed`, `LowQuality` with equal
    /// probability (otherwise the sample is `Clean`).
    pub nuisance_prob: f32,
}

impl Default for SynthConfig {
    fn default() -> Self {
        Self {
            seed: 0,
            identities: 200,
            images_per_identity: 40,
            nuisance_prob: 0.5,
        }
    }
}

/// One image: RGB8, HWC, `IMAGE_SIZE` x `IMAGE_SIZE`, row-major.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Sample {
    pub rgb: Vec<u8>,
    /// The identity id.
    pub label: u32,
    pub factor: Factor,
}

/// A virtual dataset whose samples are rendered on demand.
pub struct SynthDataset {
    cfg: SynthConfig,
}

impl SynthDataset {
    pub fn new(cfg: SynthConfig) -> Self {
        Self { cfg }
    }

    pub fn config(&self) -> &SynthConfig {
        &self.cfg
    }

    /// `identities * images_per_identity`.
    pub fn len(&self) -> usize {
        self.cfg.identities * self.cfg.images_per_identity
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The appearance of identity `id`, deterministic from `(seed, id)` and
    /// independent of the dataset size.
    pub fn identity(&self, id: u32) -> IdentityParams {
        IdentityParams::sample(&mut Rng::from_keys(&[
            self.cfg.seed,
            STREAM_IDENTITY,
            u64::from(id),
        ]))
    }

    /// Sample `index` in `0..len()`: label = index / images_per_identity; its
    /// factor is chosen from (seed, index) with `nuisance_prob`.
    ///
    /// # Panics
    /// If `index >= len()`.
    pub fn get(&self, index: usize) -> Sample {
        assert!(
            index < self.len(),
            "SynthDataset::get: index {index} out of range for {} samples",
            self.len()
        );
        let per_identity = self.cfg.images_per_identity;
        let id = u32::try_from(index / per_identity).expect("identity id exceeds u32");
        let variant = (index % per_identity) as u64;
        self.render(id, variant, self.factor_of(index))
    }

    /// The nuisance factor of training sample `index`.
    fn factor_of(&self, index: usize) -> Factor {
        let mut rng = Rng::from_keys(&[self.cfg.seed, STREAM_FACTOR_CHOICE, index as u64]);
        if rng.bernoulli(self.cfg.nuisance_prob) {
            *rng.choose(&Factor::NUISANCE)
        } else {
            Factor::Clean
        }
    }

    /// Render identity `id`, variation number `variant`, with a forced
    /// nuisance factor (used for evaluation pairs and per-factor analysis).
    /// The same `(id, variant)` shares pose, lighting and background across
    /// factors, so renders differ only by the factor's effect.
    pub fn render(&self, id: u32, variant: u64, factor: Factor) -> Sample {
        let face = self.identity(id);
        let canvas = Scene::new(self.cfg.seed, id, variant, factor).render(&face);
        Sample {
            rgb: canvas.to_rgb8(),
            label: id,
            factor,
        }
    }
}

/// Verification pairs in insightface `.bin` order.
#[derive(Clone, Debug)]
pub struct VerificationSet {
    /// Images `2i` and `2i + 1` form pair `i`; labels are identity ids.
    pub images: Vec<Sample>,
    pub issame: Vec<bool>,
}

/// Verification pairs for held-out identities (ids `first_id ..
/// first_id + identities`, not used in training): `pairs` pairs, half
/// same-identity, half different, alternating (even pairs are same). Both
/// images of a pair are rendered with `factor`, or with one random factor per
/// pair (any of [`Factor::ALL`]) when `None`. Identities come from
/// `cfg.seed`; pair selection and variants from `seed`.
///
/// # Panics
/// If there are pairs but no identities, or different-identity pairs
/// (`pairs > 1`) with fewer than 2 identities.
pub fn verification_pairs(
    cfg: &SynthConfig,
    first_id: u32,
    identities: u32,
    pairs: usize,
    factor: Option<Factor>,
    seed: u64,
) -> VerificationSet {
    assert!(
        pairs == 0 || identities >= 1,
        "verification_pairs: {pairs} pairs requested from 0 identities"
    );
    assert!(
        pairs <= 1 || identities >= 2,
        "verification_pairs: different-identity pairs need at least 2 identities"
    );
    let dataset = SynthDataset::new(cfg.clone());
    let mut images = Vec::with_capacity(2 * pairs);
    let mut issame = Vec::with_capacity(pairs);
    for pair in 0..pairs {
        let same = pair % 2 == 0;
        let mut rng = Rng::from_keys(&[cfg.seed, STREAM_PAIRS, seed, pair as u64]);
        let id_a = rng.below(u64::from(identities)) as u32;
        let id_b = if same {
            id_a
        } else {
            // Uniform over the other identities.
            let other = rng.below(u64::from(identities) - 1) as u32;
            if other >= id_a {
                other + 1
            } else {
                other
            }
        };
        // Variants far above any training range; distinct within a pair.
        let variant_a = rng.next_u64() | 1 << 63;
        let variant_b = variant_a ^ (1 + rng.below(u64::from(u32::MAX)));
        let pair_factor = factor.unwrap_or_else(|| *rng.choose(&Factor::ALL));
        images.push(dataset.render(first_id + id_a, variant_a, pair_factor));
        images.push(dataset.render(first_id + id_b, variant_b, pair_factor));
        issame.push(same);
    }
    VerificationSet { images, issame }
}

#[cfg(test)]
mod tests;
