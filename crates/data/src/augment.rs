//! Training augmentation (spec section 4, AdaFace's recipe), in place on 112x112 RGB8 HWC
//! images and deterministic from (seed, epoch, global sample index).
//!
//! In AdaFace's order, each step drawn independently:
//! 1. crop (p = 0.2): a box chosen as torchvision's `RandomResizedCrop` chooses one (area
//!    0.2-1.0 of the image, aspect 3/4-4/3) stays where it is; every pixel outside it
//!    becomes 0 — a missing region;
//! 2. low resolution (p = 0.2): the side is scaled to a random 0.2-1.0 of 112, then back
//!    up to 112, both bilinear;
//! 3. photometric jitter (p = 0.2): brightness, contrast and saturation factors from
//!    [1 - s, 1 + s], applied in a random order, as torchvision's `ColorJitter`;
//! 4. horizontal flip (p = 0.5).
//!
//! Every step draws from its own stream, keyed by (seed, epoch, index, step), so the
//! result does not depend on the thread that computes it, and switching one step off
//! leaves the others' draws unchanged. An [`Augmenter`] owns the scratch space, so
//! augmenting does not allocate per image: keep one per thread.

use crate::rng::Rng;
use crate::synth::IMAGE_SIZE;

const SIDE: usize = IMAGE_SIZE;
const PIXELS: usize = SIDE * SIDE;

/// Stream tags, one per step. The flip's is the value the loader used before this module
/// existed, so flips are unchanged.
const STREAM_FLIP: u64 = 0x666c_6970; // "flip"
const STREAM_CROP: u64 = 0x6372_6f70; // "crop"
const STREAM_LOW_RES: u64 = 0x6c6f_7772; // "lowr"
const STREAM_JITTER: u64 = 0x6a69_7474; // "jitt"

/// torchvision `RandomResizedCrop` defaults, as AdaFace uses them.
const CROP_SCALE: (f32, f32) = (0.2, 1.0);
const CROP_RATIO: (f32, f32) = (3.0 / 4.0, 4.0 / 3.0);
const CROP_ATTEMPTS: usize = 10;
/// Smallest side of the low-resolution step, as a fraction of 112.
const LOW_RES_MIN_SCALE: f32 = 0.2;

/// ITU-R 601 luma weights, as torchvision's `rgb_to_grayscale`.
const LUMA: [f32; 3] = [0.2989, 0.587, 0.114];

/// Probabilities and strengths; the default is the spec's recipe. A probability of 0
/// switches a step off. It is also the `[data.augment]` section of the training config.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AugmentConfig {
    pub flip_prob: f32,
    /// Keep a random box in place and zero the rest.
    pub crop_prob: f32,
    /// Scale the side to 0.2-1.0 and back up.
    pub low_res_prob: f32,
    /// Brightness, contrast and saturation jitter in a random order.
    pub photometric_prob: f32,
    /// Jitter strengths s: factors are drawn from [max(0, 1 - s), 1 + s]; 0 disables one.
    pub brightness: f32,
    pub contrast: f32,
    pub saturation: f32,
}

impl Default for AugmentConfig {
    fn default() -> Self {
        Self {
            flip_prob: 0.5,
            crop_prob: 0.2,
            low_res_prob: 0.2,
            photometric_prob: 0.2,
            brightness: 0.5,
            contrast: 0.5,
            saturation: 0.5,
        }
    }
}

impl AugmentConfig {
    /// Every step off: images pass through unchanged.
    pub fn none() -> Self {
        Self {
            flip_prob: 0.0,
            crop_prob: 0.0,
            low_res_prob: 0.0,
            photometric_prob: 0.0,
            ..Self::default()
        }
    }
}

/// What identifies one sample's augmentation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SampleKey {
    pub seed: u64,
    pub epoch: u64,
    /// The sample's global index in the dataset.
    pub index: u64,
}

impl SampleKey {
    fn rng(self, stream: u64) -> Rng {
        Rng::from_keys(&[self.seed, self.epoch, self.index, stream])
    }
}

/// The rectangle that a crop keeps, in pixels.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CropBox {
    pub top: usize,
    pub left: usize,
    pub height: usize,
    pub width: usize,
}

impl CropBox {
    /// torchvision's `RandomResizedCrop.get_params` on a `SIDE` x `SIDE` image: up to ten
    /// tries at a box of random area and log-uniform aspect that fits, else the centred
    /// box of the clamped aspect (the whole image here, since the image is square).
    fn draw(rng: &mut Rng) -> Self {
        let area = PIXELS as f32;
        let log_ratio = (CROP_RATIO.0.ln(), CROP_RATIO.1.ln());
        for _ in 0..CROP_ATTEMPTS {
            let target = area * rng.range(CROP_SCALE.0, CROP_SCALE.1);
            let aspect = rng.range(log_ratio.0, log_ratio.1).exp();
            let width = (target * aspect).sqrt().round() as usize;
            let height = (target / aspect).sqrt().round() as usize;
            if (1..=SIDE).contains(&width) && (1..=SIDE).contains(&height) {
                let top = rng.below((SIDE - height + 1) as u64) as usize;
                let left = rng.below((SIDE - width + 1) as u64) as usize;
                return Self {
                    top,
                    left,
                    height,
                    width,
                };
            }
        }
        Self {
            top: 0,
            left: 0,
            height: SIDE,
            width: SIDE,
        }
    }

    pub fn contains(&self, x: usize, y: usize) -> bool {
        (self.left..self.left + self.width).contains(&x)
            && (self.top..self.top + self.height).contains(&y)
    }
}

/// One photometric adjustment.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum ColorOp {
    /// Scale every value (blend with black).
    Brightness(f32),
    /// Blend with the mean grey level of the image.
    Contrast(f32),
    /// Blend each pixel with its own grey level.
    Saturation(f32),
}

/// Everything one sample's augmentation will do: drawn first, then applied.
#[derive(Clone, Debug, PartialEq)]
pub struct Plan {
    pub crop: Option<CropBox>,
    /// Side of the intermediate low-resolution image.
    pub low_res_side: Option<usize>,
    /// Adjustments in the order applied; empty means no jitter.
    pub jitter: Jitter,
    pub flip: bool,
}

impl Plan {
    /// The plan for `key` under `cfg`.
    pub fn draw(cfg: &AugmentConfig, key: SampleKey) -> Self {
        let crop = {
            let mut rng = key.rng(STREAM_CROP);
            rng.bernoulli(cfg.crop_prob)
                .then(|| CropBox::draw(&mut rng))
        };
        let low_res_side = {
            let mut rng = key.rng(STREAM_LOW_RES);
            rng.bernoulli(cfg.low_res_prob).then(|| {
                let scale = rng.range(LOW_RES_MIN_SCALE, 1.0);
                // Truncation, as AdaFace's `int(side_ratio * side)`.
                ((scale * SIDE as f32) as usize).max(1)
            })
        };
        let jitter = {
            let mut rng = key.rng(STREAM_JITTER);
            if rng.bernoulli(cfg.photometric_prob) {
                Jitter::draw(cfg, &mut rng)
            } else {
                Jitter::default()
            }
        };
        let flip = key.rng(STREAM_FLIP).bernoulli(cfg.flip_prob);
        Self {
            crop,
            low_res_side,
            jitter,
            flip,
        }
    }

    pub fn is_identity(&self) -> bool {
        self.crop.is_none() && self.low_res_side.is_none() && self.jitter.is_empty() && !self.flip
    }
}

/// Up to three colour adjustments in order, held inline so that drawing a plan does not
/// allocate.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Jitter {
    ops: [Option<ColorOp>; 3],
}

impl Jitter {
    /// `ColorJitter`: a random order of the three adjustments, each factor uniform in
    /// [max(0, 1 - s), 1 + s]; an adjustment of strength 0 is left out.
    fn draw(cfg: &AugmentConfig, rng: &mut Rng) -> Self {
        let mut order = [0usize, 1, 2];
        for i in (1..order.len()).rev() {
            let j = rng.below(i as u64 + 1) as usize;
            order.swap(i, j);
        }
        let strengths = [cfg.brightness, cfg.contrast, cfg.saturation];
        let mut jitter = Self::default();
        let mut len = 0;
        for which in order {
            let s = strengths[which];
            if s <= 0.0 {
                continue;
            }
            let factor = rng.range((1.0 - s).max(0.0), 1.0 + s);
            jitter.ops[len] = Some(match which {
                0 => ColorOp::Brightness(factor),
                1 => ColorOp::Contrast(factor),
                _ => ColorOp::Saturation(factor),
            });
            len += 1;
        }
        jitter
    }

    /// Builds a jitter from explicit adjustments (at most three).
    ///
    /// # Panics
    /// If more than three are given.
    pub fn from_ops(ops: &[ColorOp]) -> Self {
        assert!(ops.len() <= 3, "Jitter holds at most three adjustments");
        let mut jitter = Self::default();
        for (slot, op) in jitter.ops.iter_mut().zip(ops) {
            *slot = Some(*op);
        }
        jitter
    }

    /// The adjustments in the order they apply.
    pub fn ops(&self) -> impl Iterator<Item = ColorOp> + '_ {
        self.ops.iter().flatten().copied()
    }

    pub fn is_empty(&self) -> bool {
        self.ops[0].is_none()
    }
}

/// Applies plans in place, reusing its scratch buffers across images.
///
/// Resizing and jitter work on float colour planes (R, G, B apart), so that every pass is a
/// plain loop over one array that the compiler vectorises, and rounding back to bytes
/// happens once.
pub struct Augmenter {
    cfg: AugmentConfig,
    /// The image as float planes during resizing and jitter.
    work: Planes,
    /// The low-resolution intermediate (at most 112x112 per plane).
    small: Planes,
    /// Row-resized intermediate of a bilinear resize (one plane).
    temp: Vec<f32>,
}

/// An image as three float planes of up to 112x112 values, with byte planes for the
/// conversions: splitting or merging the interleaved bytes is one pass of byte moves, and
/// converting whole planes between bytes and floats vectorises, where converting while
/// interleaving did not.
struct Planes {
    values: [Vec<f32>; 3],
    bytes: [Vec<u8>; 3],
}

impl Planes {
    fn new() -> Self {
        Self {
            values: std::array::from_fn(|_| vec![0.0; PIXELS]),
            bytes: std::array::from_fn(|_| vec![0; PIXELS]),
        }
    }

    /// Splits interleaved RGB8 into the float planes.
    fn load(&mut self, rgb: &[u8]) {
        let [r, g, b] = &mut self.bytes;
        for (((px, r), g), b) in rgb.chunks_exact(3).zip(r.iter_mut()).zip(g).zip(b) {
            *r = px[0];
            *g = px[1];
            *b = px[2];
        }
        for (values, bytes) in self.values.iter_mut().zip(&self.bytes) {
            for (v, &byte) in values.iter_mut().zip(bytes) {
                *v = f32::from(byte);
            }
        }
    }

    /// Rounds the float planes back into interleaved RGB8.
    fn store(&mut self, rgb: &mut [u8]) {
        for (values, bytes) in self.values.iter().zip(&mut self.bytes) {
            for (byte, &v) in bytes.iter_mut().zip(values) {
                debug_assert!((0.0..=255.0).contains(&v), "augment: {v} out of range");
                // SAFETY: every value is finite and within [0, 255] (resizing mixes values
                // of that range convexly; jitter clamps), so v + 0.5 truncates to a valid
                // u8. The unchecked cast lets the loop vectorise; the checked one does not.
                *byte = unsafe { (v + 0.5).to_int_unchecked::<u8>() };
            }
        }
        let [r, g, b] = &self.bytes;
        for (((px, &r), &g), &b) in rgb.chunks_exact_mut(3).zip(r).zip(g).zip(b) {
            px[0] = r;
            px[1] = g;
            px[2] = b;
        }
    }
}

impl Augmenter {
    pub fn new(cfg: AugmentConfig) -> Self {
        Self {
            cfg,
            work: Planes::new(),
            small: Planes::new(),
            temp: vec![0.0; PIXELS],
        }
    }

    pub fn config(&self) -> &AugmentConfig {
        &self.cfg
    }

    /// Augments one 112x112 RGB8 HWC image in place; returns what was done.
    ///
    /// # Panics
    /// If `rgb` is not 112x112x3 bytes long.
    pub fn apply(&mut self, rgb: &mut [u8], key: SampleKey) -> Plan {
        let plan = Plan::draw(&self.cfg, key);
        self.apply_plan(rgb, &plan);
        plan
    }

    /// Carries out `plan` on one 112x112 RGB8 HWC image.
    ///
    /// # Panics
    /// If `rgb` is not 112x112x3 bytes long.
    pub fn apply_plan(&mut self, rgb: &mut [u8], plan: &Plan) {
        assert_eq!(
            rgb.len(),
            PIXELS * 3,
            "augment: expected a 112x112 RGB image"
        );
        if let Some(crop) = plan.crop {
            zero_outside(rgb, crop);
        }
        if plan.low_res_side.is_some() || !plan.jitter.is_empty() {
            self.work.load(rgb);
            if let Some(side) = plan.low_res_side {
                self.low_res(side);
            }
            if !plan.jitter.is_empty() {
                self.jitter(plan.jitter);
            }
            self.work.store(rgb);
        }
        if plan.flip {
            flip_horizontal(rgb);
        }
    }

    fn low_res(&mut self, side: usize) {
        for (work, small) in self.work.values.iter_mut().zip(&mut self.small.values) {
            let small = &mut small[..side * side];
            resize_bilinear(work, SIDE, &mut self.temp, small, side);
            resize_bilinear(small, side, &mut self.temp, work, SIDE);
        }
    }

    fn jitter(&mut self, jitter: Jitter) {
        let [r, g, b] = &mut self.work.values;
        for op in jitter.ops() {
            match op {
                ColorOp::Brightness(f) => {
                    for plane in [&mut *r, &mut *g, &mut *b] {
                        for v in plane.iter_mut() {
                            *v = (*v * f).clamp(0.0, 255.0);
                        }
                    }
                }
                ColorOp::Contrast(f) => {
                    let mean =
                        (LUMA[0] * sum(r) + LUMA[1] * sum(g) + LUMA[2] * sum(b)) / PIXELS as f32;
                    for plane in [&mut *r, &mut *g, &mut *b] {
                        for v in plane.iter_mut() {
                            *v = blend(*v, mean, f);
                        }
                    }
                }
                ColorOp::Saturation(f) => {
                    for ((r, g), b) in r.iter_mut().zip(g.iter_mut()).zip(b.iter_mut()) {
                        let grey = LUMA[0] * *r + LUMA[1] * *g + LUMA[2] * *b;
                        *r = blend(*r, grey, f);
                        *g = blend(*g, grey, f);
                        *b = blend(*b, grey, f);
                    }
                }
            }
        }
    }
}

/// Sum with sixteen independent partial sums: a float sum in one accumulator is a chain
/// of dependent additions that cannot be vectorised.
fn sum(values: &[f32]) -> f32 {
    let mut lanes = [0.0f32; 16];
    let chunks = values.chunks_exact(16);
    let rest: f32 = chunks.remainder().iter().sum();
    for chunk in chunks {
        for (lane, v) in lanes.iter_mut().zip(chunk) {
            *lane += v;
        }
    }
    lanes.iter().sum::<f32>() + rest
}

/// `factor * value + (1 - factor) * towards`, clamped to the 8-bit range (torchvision's
/// `_blend`).
fn blend(value: f32, towards: f32, factor: f32) -> f32 {
    (factor * value + (1.0 - factor) * towards).clamp(0.0, 255.0)
}

/// Zeroes every pixel outside `crop`.
pub fn zero_outside(rgb: &mut [u8], crop: CropBox) {
    for (y, row) in rgb.chunks_exact_mut(SIDE * 3).enumerate() {
        if (crop.top..crop.top + crop.height).contains(&y) {
            row[..crop.left * 3].fill(0);
            row[(crop.left + crop.width) * 3..].fill(0);
        } else {
            row.fill(0);
        }
    }
}

/// Mirrors a 112-wide RGB image left to right, in place.
pub fn flip_horizontal(rgb: &mut [u8]) {
    for row in rgb.chunks_exact_mut(SIDE * 3) {
        // Reversing whole 3-byte pixels, not bytes.
        row.as_chunks_mut::<3>().0.reverse();
    }
}

/// One output coordinate of a bilinear resize: the lower source neighbour, the upper one,
/// and the upper one's weight.
#[derive(Clone, Copy, Default)]
struct Tap {
    lo: usize,
    hi: usize,
    weight: f32,
}

/// Taps for resizing `src` samples to `dst` (at most `SIDE`), pixel centres at
/// half-integers (the convention of OpenCV's `INTER_LINEAR` and PyTorch's
/// `align_corners=False`).
fn taps(src: usize, dst: usize) -> [Tap; SIDE] {
    let mut taps = [Tap::default(); SIDE];
    let scale = src as f32 / dst as f32;
    let last = (src - 1) as f32;
    for (d, tap) in taps[..dst].iter_mut().enumerate() {
        let s = ((d as f32 + 0.5) * scale - 0.5).clamp(0.0, last);
        let lo = s as usize;
        *tap = Tap {
            lo,
            hi: (lo + 1).min(src - 1),
            weight: s - lo as f32,
        };
    }
    taps
}

/// Bilinear resize of a square float plane, separably: rows into `temp`, then columns
/// into `dst`.
fn resize_bilinear(
    src: &[f32],
    src_side: usize,
    temp: &mut [f32],
    dst: &mut [f32],
    dst_side: usize,
) {
    let taps = taps(src_side, dst_side);
    let taps = &taps[..dst_side];
    // Horizontal: src_side rows of dst_side values.
    let temp = &mut temp[..src_side * dst_side];
    for (src_row, out_row) in src
        .chunks_exact(src_side)
        .zip(temp.chunks_exact_mut(dst_side))
    {
        for (out, tap) in out_row.iter_mut().zip(taps) {
            // SAFETY: `taps` clamps lo and hi into 0..src_side, the length of `src_row`.
            // Checked indexing here (a gather, not vectorised) was most of the resize.
            let (a, b) = unsafe {
                (
                    *src_row.get_unchecked(tap.lo),
                    *src_row.get_unchecked(tap.hi),
                )
            };
            *out = a + (b - a) * tap.weight;
        }
    }
    // Vertical: mix whole rows.
    for (out_row, tap) in dst.chunks_exact_mut(dst_side).zip(taps) {
        let a = &temp[tap.lo * dst_side..(tap.lo + 1) * dst_side];
        let b = &temp[tap.hi * dst_side..(tap.hi + 1) * dst_side];
        for ((out, &a), &b) in out_row.iter_mut().zip(a).zip(b) {
            *out = a + (b - a) * tap.weight;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::synth::{SynthConfig, SynthDataset};

    fn face(index: usize) -> Vec<u8> {
        SynthDataset::new(SynthConfig::default()).get(index).rgb
    }

    fn key(index: u64) -> SampleKey {
        SampleKey {
            seed: 7,
            epoch: 3,
            index,
        }
    }

    #[test]
    fn same_key_same_bytes_other_keys_other_bytes() {
        let always = AugmentConfig {
            flip_prob: 0.5,
            crop_prob: 1.0,
            low_res_prob: 1.0,
            photometric_prob: 1.0,
            ..AugmentConfig::default()
        };
        let run = |k: SampleKey| {
            let mut rgb = face(5);
            Augmenter::new(always.clone()).apply(&mut rgb, k);
            rgb
        };
        let base = run(key(5));
        assert_eq!(base, run(key(5)));
        assert_ne!(base, face(5));
        assert_ne!(base, run(SampleKey { index: 6, ..key(5) }));
        assert_ne!(base, run(SampleKey { epoch: 4, ..key(5) }));
        assert_ne!(base, run(SampleKey { seed: 8, ..key(5) }));
        // A reused augmenter's scratch does not leak between images.
        let mut reused = Augmenter::new(always);
        let mut other = face(9);
        reused.apply(&mut other, key(9));
        let mut again = face(5);
        reused.apply(&mut again, key(5));
        assert_eq!(again, base);
    }

    #[test]
    fn default_probabilities_match_the_recipe() {
        let cfg = AugmentConfig::default();
        let n = 4000;
        let plans: Vec<Plan> = (0..n).map(|i| Plan::draw(&cfg, key(i))).collect();
        let freq =
            |f: &dyn Fn(&Plan) -> bool| plans.iter().filter(|p| f(p)).count() as f32 / n as f32;
        let near = |got: f32, want: f32| assert!((got - want).abs() < 0.03, "{got} vs {want}");
        near(freq(&|p| p.flip), 0.5);
        near(freq(&|p| p.crop.is_some()), 0.2);
        near(freq(&|p| p.low_res_side.is_some()), 0.2);
        near(freq(&|p| !p.jitter.is_empty()), 0.2);
        // Steps are drawn independently: crop and low-res together about 0.04 of the time.
        near(
            freq(&|p| p.crop.is_some() && p.low_res_side.is_some()),
            0.04,
        );
    }

    #[test]
    fn switching_a_step_off_keeps_the_others_draws() {
        let full = AugmentConfig::default();
        let no_crop = AugmentConfig {
            crop_prob: 0.0,
            ..full.clone()
        };
        for i in 0..200 {
            let (a, b) = (Plan::draw(&full, key(i)), Plan::draw(&no_crop, key(i)));
            assert!(b.crop.is_none());
            assert_eq!(
                (a.flip, a.low_res_side, a.jitter),
                (b.flip, b.low_res_side, b.jitter)
            );
        }
    }

    #[test]
    fn no_augmentation_is_the_identity() {
        let mut rgb = face(1);
        let plan = Augmenter::new(AugmentConfig::none()).apply(&mut rgb, key(1));
        assert!(plan.is_identity());
        assert_eq!(rgb, face(1));
    }

    #[test]
    fn crop_keeps_the_box_in_place_and_zeroes_the_rest() {
        let cfg = AugmentConfig {
            crop_prob: 1.0,
            ..AugmentConfig::none()
        };
        let original = face(2);
        let mut areas = Vec::new();
        for i in 0..50 {
            let mut rgb = original.clone();
            let plan = Augmenter::new(cfg.clone()).apply(&mut rgb, key(i));
            let crop = plan.crop.expect("crop_prob 1 always crops");
            for y in 0..SIDE {
                for x in 0..SIDE {
                    let p = (y * SIDE + x) * 3;
                    if crop.contains(x, y) {
                        assert_eq!(rgb[p..p + 3], original[p..p + 3]);
                    } else {
                        assert_eq!(rgb[p..p + 3], [0, 0, 0], "({x}, {y}) outside {crop:?}");
                    }
                }
            }
            let aspect = crop.width as f32 / crop.height as f32;
            assert!((0.7..1.4).contains(&aspect), "{crop:?}");
            areas.push((crop.width * crop.height) as f32 / PIXELS as f32);
        }
        assert!(
            areas.iter().all(|&a| (0.18..=1.0).contains(&a)),
            "{areas:?}"
        );
        assert!(
            areas.iter().any(|&a| a < 0.5),
            "the scale range is not explored: {areas:?}"
        );
    }

    #[test]
    fn flip_mirrors_and_is_an_involution() {
        let original = face(3);
        let mut rgb = original.clone();
        flip_horizontal(&mut rgb);
        for y in [0, 40, 111] {
            for x in [0, 17, 55, 56, 111] {
                let a = (y * SIDE + x) * 3;
                let b = (y * SIDE + SIDE - 1 - x) * 3;
                assert_eq!(rgb[a..a + 3], original[b..b + 3]);
            }
        }
        flip_horizontal(&mut rgb);
        assert_eq!(rgb, original);
    }

    #[test]
    fn low_res_blurs_but_keeps_the_picture() {
        let original = face(4);
        let mut coarse = original.clone();
        let mut mild = original.clone();
        let mut aug = Augmenter::new(AugmentConfig::none());
        let plan = |side| Plan {
            low_res_side: Some(side),
            ..Plan::draw(&AugmentConfig::none(), key(0))
        };
        aug.apply_plan(&mut coarse, &plan(24));
        aug.apply_plan(&mut mild, &plan(100));
        let mean_diff = |a: &[u8]| {
            a.iter()
                .zip(&original)
                .map(|(x, y)| f64::from(x.abs_diff(*y)))
                .sum::<f64>()
                / a.len() as f64
        };
        // Coarser means more detail lost, yet both stay close to the face on average.
        assert!(
            mean_diff(&coarse) > mean_diff(&mild),
            "{} {}",
            mean_diff(&coarse),
            mean_diff(&mild)
        );
        assert!(mean_diff(&mild) > 0.0 && mean_diff(&coarse) < 25.0);
        // A flat image stays flat whatever the scale.
        let mut flat = vec![77u8; PIXELS * 3];
        aug.apply_plan(&mut flat, &plan(23));
        assert!(flat.iter().all(|&v| v == 77));
        // Drawn sides lie in [0.2, 1.0] of 112.
        let cfg = AugmentConfig {
            low_res_prob: 1.0,
            ..AugmentConfig::none()
        };
        for i in 0..200 {
            let side = Plan::draw(&cfg, key(i)).low_res_side.unwrap();
            assert!((22..=112).contains(&side), "{side}");
        }
    }

    #[test]
    fn jitter_ops_do_what_they_say() {
        let mut aug = Augmenter::new(AugmentConfig::none());
        let with = |ops: &[ColorOp], rgb: &mut Vec<u8>, aug: &mut Augmenter| {
            let plan = Plan {
                jitter: Jitter::from_ops(ops),
                ..Plan::draw(&AugmentConfig::none(), key(0))
            };
            aug.apply_plan(rgb, &plan);
        };
        let mut px = [100u8, 150, 200].repeat(PIXELS);
        with(&[ColorOp::Brightness(1.5)], &mut px, &mut aug);
        assert_eq!(px[..3], [150, 225, 255]);
        // Saturation 0 is the grey level: 0.2989 * 100 + 0.587 * 150 + 0.114 * 200 = 140.8.
        let mut px = [100u8, 150, 200].repeat(PIXELS);
        with(&[ColorOp::Saturation(0.0)], &mut px, &mut aug);
        assert_eq!(px[..3], [141, 141, 141]);
        // Contrast 0.5 halves the distance to the mean grey.
        let mut half = [0u8, 0, 0].repeat(PIXELS / 2);
        half.extend([200u8, 200, 200].repeat(PIXELS / 2));
        with(&[ColorOp::Contrast(0.5)], &mut half, &mut aug);
        assert_eq!((half[0], half[half.len() - 1]), (50, 150));
        // Drawn plans: three ops in some order, factors within [0.5, 1.5].
        let cfg = AugmentConfig {
            photometric_prob: 1.0,
            ..AugmentConfig::none()
        };
        let mut orders = std::collections::HashSet::new();
        for i in 0..100 {
            let ops: Vec<ColorOp> = Plan::draw(&cfg, key(i)).jitter.ops().collect();
            assert_eq!(ops.len(), 3);
            let names: Vec<u8> = ops
                .iter()
                .map(|op| {
                    let (name, f) = match *op {
                        ColorOp::Brightness(f) => (b'b', f),
                        ColorOp::Contrast(f) => (b'c', f),
                        ColorOp::Saturation(f) => (b's', f),
                    };
                    assert!((0.5..1.5).contains(&f), "{op:?}");
                    name
                })
                .collect();
            orders.insert(names);
        }
        assert_eq!(orders.len(), 6, "every order of the three should occur");
    }
}
