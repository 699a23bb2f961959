//! Identity-specific face parameters: the stable geometry and colours that
//! distinguish one synthetic person from another.

use super::canvas::Rgb;
use crate::rng::Rng;

/// The appearance of one synthetic identity.
///
/// Lengths are in pixels at nominal scale, in face coordinates: origin at the
/// head centre, x to the image right, y down. Colours are RGB in 0..=255.
#[derive(Clone, Debug, PartialEq)]
pub struct IdentityParams {
    pub head_half_width: f32,
    pub head_half_height: f32,
    /// Relative narrowing of the head towards the chin (0 = plain ellipse).
    pub chin_taper: f32,
    pub skin_rgb: Rgb,

    pub hair_rgb: Rgb,
    /// Height of the hairline at the face centre (negative: above centre).
    pub hairline_y: f32,
    /// How far the hairline drops at `x = ±head_half_width`.
    pub hairline_drop: f32,
    /// Side parting: extra hairline drop at `x = +head_half_width`
    /// (negative values part the other way).
    pub hair_part: f32,
    /// Thickness of hair above and beside the skull.
    pub hair_volume: f32,
    /// Long hair falls beside the face down to this height; `None` for short.
    pub hair_length: Option<f32>,

    pub ear_half_height: f32,

    /// Half the distance between the eye centres.
    pub eye_half_spacing: f32,
    pub eye_y: f32,
    pub eye_half_width: f32,
    pub eye_half_height: f32,
    /// Rotation of the eyes in radians; positive lifts the outer corners.
    pub eye_tilt: f32,
    pub iris_radius: f32,
    pub iris_rgb: Rgb,

    pub brow_thickness: f32,
    /// Slope of the brows in radians; positive lifts the outer ends.
    pub brow_angle: f32,
    /// Vertical gap between the top of the eye and the brow.
    pub brow_gap: f32,
    pub brow_half_length: f32,
    pub brow_rgb: Rgb,

    /// Distance from the eye line down to the nose tip.
    pub nose_length: f32,
    pub nose_half_width: f32,

    pub mouth_y: f32,
    pub mouth_half_width: f32,
    pub mouth_half_height: f32,
    /// Rise of the mouth corners in pixels (positive: a resting smile).
    pub mouth_curve: f32,
    pub lip_rgb: Rgb,

    /// Beard covering the face below this height, if any.
    pub beard_top: Option<f32>,
    /// A mole or mark: `[x, y, radius]`.
    pub mole: Option<[f32; 3]>,
}

const HAIR_PALETTE: [Rgb; 8] = [
    [22.0, 18.0, 16.0],    // black
    [55.0, 38.0, 26.0],    // dark brown
    [105.0, 70.0, 42.0],   // brown
    [196.0, 160.0, 98.0],  // blond
    [150.0, 62.0, 30.0],   // red
    [140.0, 138.0, 136.0], // grey
    [218.0, 212.0, 205.0], // white
    [80.0, 60.0, 50.0],    // ash brown
];

const IRIS_PALETTE: [Rgb; 6] = [
    [88.0, 54.0, 30.0],    // brown
    [38.0, 24.0, 16.0],    // dark
    [70.0, 115.0, 175.0],  // blue
    [78.0, 125.0, 68.0],   // green
    [135.0, 102.0, 48.0],  // hazel
    [118.0, 130.0, 142.0], // grey
];

const LIGHT_SKIN: Rgb = [242.0, 208.0, 182.0];
const DARK_SKIN: Rgb = [82.0, 54.0, 40.0];

fn jitter(rng: &mut Rng, color: Rgb, amount: f32) -> Rgb {
    color.map(|c| (c + rng.range(-amount, amount)).clamp(0.0, 255.0))
}

impl IdentityParams {
    /// Draws an identity. Every parameter has a wide, independent spread so
    /// that identities are separable even at low resolution.
    pub(super) fn sample(rng: &mut Rng) -> Self {
        let head_half_width = rng.range(28.0, 38.0);
        let head_half_height = rng.range(36.0, 45.0);
        let chin_taper = rng.range(0.0, 0.35);

        let tone = rng.uniform();
        let skin = super::canvas::mix(LIGHT_SKIN, DARK_SKIN, tone);
        // Warmth shifts red against blue; small independent jitter on top
        // keeps tones natural rather than grey or green.
        let warmth = rng.range(-12.0, 12.0);
        let skin_rgb = jitter(rng, [skin[0] + warmth, skin[1], skin[2] - warmth], 6.0);

        let hair_base = *rng.choose(&HAIR_PALETTE);
        let hair_rgb = jitter(rng, hair_base, 14.0);
        let bald = rng.bernoulli(0.1);
        let hairline_y = if bald {
            -1.3 * head_half_height
        } else {
            -head_half_height * rng.range(0.45, 0.85)
        };
        let hairline_drop = rng.range(0.0, 0.45) * head_half_height;
        let hair_part = rng.range(-0.15, 0.15) * head_half_height;
        let hair_volume = if bald { 0.0 } else { rng.range(0.0, 7.0) };
        let hair_length =
            (!bald && rng.bernoulli(0.4)).then(|| head_half_height * rng.range(0.3, 1.2));

        let eye_y = rng.range(-9.0, 1.0);
        let eye_half_height = rng.range(2.2, 4.0);
        let brow_rgb = super::canvas::scale(hair_rgb, rng.range(0.55, 0.85));
        let nose_length = rng.range(9.0, 17.0);
        let mouth_y = (eye_y + nose_length + rng.range(6.0, 10.0)).min(0.72 * head_half_height);
        let iris_base = *rng.choose(&IRIS_PALETTE);
        let iris_rgb = jitter(rng, iris_base, 12.0);
        let lip_rgb = jitter(
            rng,
            [skin_rgb[0] * 0.8, skin_rgb[1] * 0.5, skin_rgb[2] * 0.55],
            18.0,
        );

        let beard_top = rng
            .bernoulli(0.2)
            .then(|| eye_y + nose_length + rng.range(1.0, 4.0));
        let mole = rng.bernoulli(0.35).then(|| {
            [
                rng.range(-0.6, 0.6) * head_half_width,
                rng.range(eye_y + 6.0, mouth_y),
                rng.range(1.2, 2.2),
            ]
        });

        Self {
            head_half_width,
            head_half_height,
            chin_taper,
            skin_rgb,
            hair_rgb,
            hairline_y,
            hairline_drop,
            hair_part,
            hair_volume,
            hair_length,
            ear_half_height: rng.range(5.0, 9.0),
            eye_half_spacing: rng.range(10.0, 16.0),
            eye_y,
            eye_half_width: rng.range(4.5, 7.5),
            eye_half_height,
            eye_tilt: rng.range(-0.15, 0.15),
            iris_radius: eye_half_height * rng.range(0.9, 1.25),
            iris_rgb,
            brow_thickness: rng.range(1.0, 3.0),
            brow_angle: rng.range(-0.25, 0.3),
            brow_gap: rng.range(3.0, 7.0),
            brow_half_length: rng.range(5.0, 9.0),
            brow_rgb,
            nose_length,
            nose_half_width: rng.range(3.5, 7.0),
            mouth_y,
            mouth_half_width: rng.range(7.0, 14.0),
            mouth_half_height: rng.range(1.8, 4.0),
            mouth_curve: rng.range(-1.0, 1.5),
            lip_rgb,
            beard_top,
            mole,
        }
    }

    /// Half width of the head outline at height `y`.
    pub(super) fn head_half_width_at(&self, y: f32) -> f32 {
        let t = (y / self.head_half_height).clamp(-1.0, 1.0);
        self.head_half_width * (1.0 - t * t).sqrt() * self.taper_at(y)
    }

    /// Width factor of the chin taper at height `y`.
    pub(super) fn taper_at(&self, y: f32) -> f32 {
        1.0 - self.chin_taper * (y / self.head_half_height).clamp(0.0, 1.0)
    }
}
