//! One rendered sample: the per-sample nuisance (pose, lighting, background,
//! expression jitter), the forced nuisance factor, and the drawing itself.
//!
//! Every part is drawn from its own random stream keyed by
//! `(seed, identity, variant)`, and the factor-specific parts additionally by
//! the factor. Rendering the same `(identity, variant)` with different factors
//! therefore shares pose, lighting and background exactly, so a factor's
//! effect can be isolated by comparing against the `Clean` render.

use super::canvas::{box_sd, capsule_sd, ellipse_sd, mix, scale, Bounds, Canvas, Frame, Rgb, View};
use super::identity::IdentityParams;
use super::{degrade, Factor, IMAGE_SIZE};
use crate::rng::Rng;

/// Stream tags, so that each kind of randomness is independent.
const STREAM_SCENE: u64 = 0x5343_454E; // "SCEN"
const STREAM_FACTOR: u64 = 0x4641_4354; // "FACT"
const STREAM_NOISE: u64 = 0x4E4F_4953; // "NOIS"

/// Image position of the head centre in an unperturbed view.
const HEAD_CENTER: (f32, f32) = (56.0, 59.0);

/// Expression state; the neutral values are 0 offsets and unit factors.
#[derive(Clone, Copy, Debug)]
pub(super) struct Expression {
    /// 0 = closed; around 1 = wide open.
    mouth_open: f32,
    mouth_widen: f32,
    /// Extra rise of the mouth corners in pixels.
    mouth_curve: f32,
    /// Horizontal offset of the mouth (a smirk).
    mouth_shift: f32,
    /// Upward brow offset per side (left, right in the image).
    brow_raise: [f32; 2],
    /// Extra brow slope in radians; positive lowers the inner ends (a frown).
    brow_tilt: f32,
    /// Eye opening factor per side.
    eye_open: [f32; 2],
}

impl Expression {
    /// Small natural variation present in every sample.
    fn jitter(rng: &mut Rng) -> Self {
        Self {
            mouth_open: 0.0,
            mouth_widen: rng.range(0.96, 1.04),
            mouth_curve: rng.range(-0.5, 0.5),
            mouth_shift: 0.0,
            brow_raise: [rng.range(-0.4, 0.4); 2],
            brow_tilt: rng.range(-0.03, 0.03),
            eye_open: [rng.range(0.9, 1.05); 2],
        }
    }

    /// A strong expression layered on top of the jitter.
    fn deform(mut self, rng: &mut Rng) -> Self {
        match rng.below(4) {
            0 => {
                // Smile: wide, upturned, slightly open mouth; squinting eyes.
                self.mouth_widen *= rng.range(1.25, 1.45);
                self.mouth_curve += rng.range(3.0, 5.0);
                self.mouth_open = rng.range(0.2, 0.7);
                self.eye_open = [rng.range(0.45, 0.7); 2];
            }
            1 => {
                // Surprise: round open mouth, raised brows, wide eyes.
                self.mouth_widen *= rng.range(0.7, 0.85);
                self.mouth_open = rng.range(0.9, 1.3);
                self.brow_raise = [rng.range(4.0, 7.0); 2];
                self.eye_open = [rng.range(1.25, 1.45); 2];
            }
            2 => {
                // Anger: lowered, inward-tilted brows; frown; narrowed eyes.
                self.brow_tilt += rng.range(0.35, 0.55);
                self.brow_raise = [-rng.range(1.5, 3.0); 2];
                self.mouth_curve -= rng.range(3.5, 5.0);
                self.mouth_widen *= rng.range(0.8, 0.9);
                self.eye_open = [rng.range(0.5, 0.7); 2];
            }
            _ => {
                // Wink: one eye closed, one brow raised, lopsided smirk.
                let side = rng.below(2) as usize;
                self.eye_open[side] = rng.range(0.08, 0.2);
                self.brow_raise[1 - side] = rng.range(3.0, 6.0);
                self.mouth_shift = if side == 0 { 1.0 } else { -1.0 } * rng.range(2.5, 4.5);
                self.mouth_curve += rng.range(1.5, 3.0);
                self.mouth_widen *= rng.range(1.05, 1.2);
            }
        }
        self
    }
}

/// Regions made invisible for the `Missing` factor.
#[derive(Clone, Copy, Debug)]
enum Occlusion {
    Sunglasses {
        color: Rgb,
    },
    Mask {
        color: Rgb,
    },
    /// Flat-coloured rectangle in image pixels `(x0, x1, y0, y1)`.
    Block {
        rect: (usize, usize, usize, usize),
        color: Rgb,
    },
    /// Zeroed band along one image border, as from a bad crop.
    Crop {
        rect: (usize, usize, usize, usize),
    },
    /// Strong yaw-like squeeze and shift; handled in the view.
    Pose,
}

/// Degradations for the `LowQuality` factor, applied in field order.
#[derive(Clone, Copy, Debug)]
struct Degradation {
    /// Low-resolution side length and whether to upscale bilinearly.
    rescale: Option<(usize, bool)>,
    blur_sigma: Option<f32>,
    noise_sigma: Option<f32>,
}

/// Everything about a sample except the identity.
pub(super) struct Scene {
    pub view: View,
    background: [Rgb; 2],
    /// Unit direction of the background gradient.
    background_dir: (f32, f32),
    clothes: Rgb,
    /// Overall gain, per-channel white balance, directional light.
    light_gain: Rgb,
    light_dir: (f32, f32),
    light_strength: f32,
    gaze: (f32, f32),
    pub expression: Expression,
    occlusion: Option<Occlusion>,
    degradation: Option<Degradation>,
    noise_keys: [u64; 4],
}

impl Scene {
    pub fn new(seed: u64, id: u32, variant: u64, factor: Factor) -> Self {
        let mut rng = Rng::from_keys(&[seed, STREAM_SCENE, u64::from(id), variant]);
        let scale_xy = rng.range(1.0, 1.14);
        let mut view = View::new(
            (
                HEAD_CENTER.0 + rng.range(-4.0, 4.0),
                HEAD_CENTER.1 + rng.range(-4.0, 4.0),
            ),
            rng.range(-0.12, 0.12),
            scale_xy * rng.range(0.97, 1.03),
            scale_xy,
        );
        let random_color = |rng: &mut Rng| {
            [
                rng.range(20.0, 235.0),
                rng.range(20.0, 235.0),
                rng.range(20.0, 235.0),
            ]
        };
        let background = [random_color(&mut rng), random_color(&mut rng)];
        let background_angle = rng.range(0.0, std::f32::consts::TAU);
        let clothes = random_color(&mut rng);
        let gain = rng.range(0.8, 1.2);
        let light_gain = [
            gain * rng.range(0.95, 1.05),
            gain,
            gain * rng.range(0.95, 1.05),
        ];
        let light_angle = rng.range(0.0, std::f32::consts::TAU);
        let light_strength = rng.range(0.0, 0.25);
        let gaze = (rng.range(-1.2, 1.2), rng.range(-0.6, 0.6));
        let mut expression = Expression::jitter(&mut rng);

        let mut factor_rng =
            Rng::from_keys(&[seed, STREAM_FACTOR, u64::from(id), variant, factor.key()]);
        let mut occlusion = None;
        let mut degradation = None;
        match factor {
            Factor::Clean => {}
            Factor::Deformed => expression = expression.deform(&mut factor_rng),
            Factor::Missing => {
                let kind = Self::occlusion(&mut factor_rng);
                if let Occlusion::Pose = kind {
                    // Yaw-like: the face is squeezed horizontally and pushed
                    // towards a border so part of it leaves the frame.
                    view.scale_x *= factor_rng.range(0.55, 0.75);
                    let shift = factor_rng.range(18.0, 28.0);
                    view.center.0 += if factor_rng.bernoulli(0.5) {
                        shift
                    } else {
                        -shift
                    };
                }
                occlusion = Some(kind);
            }
            Factor::LowQuality => degradation = Some(Self::degradation(&mut factor_rng)),
        }

        Self {
            view,
            background,
            background_dir: (background_angle.cos(), background_angle.sin()),
            clothes,
            light_gain,
            light_dir: (light_angle.cos(), light_angle.sin()),
            light_strength,
            gaze,
            expression,
            occlusion,
            degradation,
            noise_keys: [seed, STREAM_NOISE, u64::from(id), variant],
        }
    }

    fn occlusion(rng: &mut Rng) -> Occlusion {
        let dark = |rng: &mut Rng| {
            [
                rng.range(5.0, 60.0),
                rng.range(5.0, 60.0),
                rng.range(5.0, 70.0),
            ]
        };
        match rng.below(5) {
            0 => Occlusion::Sunglasses { color: dark(rng) },
            1 => {
                let palette = [
                    [235.0, 235.0, 232.0],
                    [120.0, 170.0, 215.0],
                    [30.0, 30.0, 34.0],
                ];
                let base = *rng.choose(&palette);
                Occlusion::Mask {
                    color: base.map(|c: f32| (c + rng.range(-12.0, 12.0)).clamp(0.0, 255.0)),
                }
            }
            2 => {
                let (w, h) = (rng.range(28.0, 56.0), rng.range(28.0, 56.0));
                let (cx, cy) = (rng.range(30.0, 82.0), rng.range(30.0, 82.0));
                let clip = |v: f32| v.clamp(0.0, IMAGE_SIZE as f32) as usize;
                Occlusion::Block {
                    rect: (
                        clip(cx - w / 2.0),
                        clip(cx + w / 2.0),
                        clip(cy - h / 2.0),
                        clip(cy + h / 2.0),
                    ),
                    color: [
                        rng.range(0.0, 255.0),
                        rng.range(0.0, 255.0),
                        rng.range(0.0, 255.0),
                    ],
                }
            }
            3 => {
                let n = IMAGE_SIZE;
                let band = (rng.range(0.25, 0.45) * n as f32) as usize;
                let rect = match rng.below(4) {
                    0 => (0, band, 0, n),
                    1 => (n - band, n, 0, n),
                    2 => (0, n, 0, band),
                    _ => (0, n, n - band, n),
                };
                Occlusion::Crop { rect }
            }
            _ => Occlusion::Pose,
        }
    }

    fn degradation(rng: &mut Rng) -> Degradation {
        let mut d = Degradation {
            rescale: rng.bernoulli(0.6).then(|| {
                (
                    (rng.range(0.2, 0.5) * IMAGE_SIZE as f32) as usize,
                    rng.bernoulli(0.5),
                )
            }),
            blur_sigma: rng.bernoulli(0.6).then(|| rng.range(1.0, 2.5)),
            noise_sigma: rng.bernoulli(0.6).then(|| rng.range(5.0, 14.0)),
        };
        if d.rescale.is_none() && d.blur_sigma.is_none() && d.noise_sigma.is_none() {
            match rng.below(3) {
                0 => d.rescale = Some(((rng.range(0.2, 0.5) * IMAGE_SIZE as f32) as usize, false)),
                1 => d.blur_sigma = Some(rng.range(1.5, 2.5)),
                _ => d.noise_sigma = Some(rng.range(8.0, 14.0)),
            }
        }
        d
    }

    /// Draws `face` into a finished 112x112 image.
    pub fn render(&self, face: &IdentityParams) -> Canvas {
        let (bx, by) = self.background_dir;
        let mut canvas = Canvas::new(|x, y| {
            let t = 0.5 + ((x - 56.0) * bx + (y - 56.0) * by) / 160.0;
            mix(self.background[0], self.background[1], t)
        });
        self.draw_body(&mut canvas, face);
        self.draw_eyes(&mut canvas, face);
        self.draw_brows(&mut canvas, face);
        self.draw_nose(&mut canvas, face);
        self.draw_mouth(&mut canvas, face);
        self.draw_face_occlusion(&mut canvas, face);

        let (lx, ly) = self.light_dir;
        let strength = self.light_strength;
        canvas.modulate(|x, y| {
            let shade = 1.0 + strength * ((x - 56.0) * lx + (y - 56.0) * ly) / 56.0;
            scale(self.light_gain, shade)
        });

        match self.occlusion {
            Some(Occlusion::Block {
                rect: (x0, x1, y0, y1),
                color,
            }) => canvas.fill_rect(x0, x1, y0, y1, color),
            Some(Occlusion::Crop {
                rect: (x0, x1, y0, y1),
            }) => canvas.fill_rect(x0, x1, y0, y1, [0.0; 3]),
            _ => {}
        }
        if let Some(d) = self.degradation {
            if let Some((side, bilinear)) = d.rescale {
                degrade::rescale(&mut canvas, side, bilinear);
            }
            if let Some(sigma) = d.blur_sigma {
                degrade::gaussian_blur(&mut canvas, sigma);
            }
            if let Some(sigma) = d.noise_sigma {
                degrade::add_noise(&mut canvas, sigma, &mut Rng::from_keys(&self.noise_keys));
            }
        }
        canvas
    }

    /// Shoulders, neck, hair, ears, head, beard and mole.
    fn draw_body(&self, canvas: &mut Canvas, f: &IdentityParams) {
        let view = &self.view;
        let (a, b) = (f.head_half_width, f.head_half_height);
        let shoulders = (0.0, b + 40.0);
        canvas.paint(
            view,
            Bounds::around(shoulders, 2.2 * a, 30.0),
            self.clothes,
            1.0,
            |(x, y)| ellipse_sd(x - shoulders.0, y - shoulders.1, 2.2 * a, 30.0),
        );
        let neck_top = 0.4 * b;
        let neck_half = 0.42 * a;
        let neck_center = (0.0, neck_top + 35.0);
        canvas.paint(
            view,
            Bounds::around(neck_center, neck_half, 35.0),
            scale(f.skin_rgb, 0.85),
            1.0,
            |(x, y)| box_sd(x, y - neck_center.1, neck_half, 35.0),
        );

        let hair_rx = a + f.hair_volume + 3.0;
        let hair_ry = b + f.hair_volume;
        if let Some(length) = f.hair_length {
            let bounds = Bounds {
                min: (-hair_rx, -hair_ry),
                max: (hair_rx, length),
            };
            canvas.paint(view, bounds, scale(f.hair_rgb, 0.85), 1.0, |(x, y)| {
                ellipse_sd(x, y, hair_rx, hair_ry).max(y - length)
            });
        }

        let ear_y = f.eye_y + 3.0;
        let ear_rx = 0.55 * f.ear_half_height;
        for side in [-1.0f32, 1.0] {
            let center = (side * (f.head_half_width_at(ear_y) + 0.3 * ear_rx), ear_y);
            canvas.paint(
                view,
                Bounds::around(center, ear_rx, f.ear_half_height),
                scale(f.skin_rgb, 0.92),
                1.0,
                |(x, y)| ellipse_sd(x - center.0, y - center.1, ear_rx, f.ear_half_height),
            );
        }

        let head_sd = |(x, y): (f32, f32)| ellipse_sd(x / f.taper_at(y), y, a, b);
        canvas.paint(
            view,
            Bounds::around((0.0, 0.0), a, b),
            f.skin_rgb,
            1.0,
            head_sd,
        );

        if let Some(top) = f.beard_top {
            let bounds = Bounds {
                min: (-a, top),
                max: (a, b),
            };
            canvas.paint(view, bounds, scale(f.hair_rgb, 0.9), 0.9, |p| {
                head_sd(p).max(top - p.1)
            });
        }
        if let Some([mx, my, r]) = f.mole {
            canvas.paint(
                view,
                Bounds::around((mx, my), r, r),
                scale(f.skin_rgb, 0.45),
                1.0,
                |(x, y)| ellipse_sd(x - mx, y - my, r, r),
            );
        }

        // Hair on the skull: inside a slightly enlarged head, above the hairline.
        let cap_rx = a + 1.5 + 0.6 * f.hair_volume;
        let cap_ry = b + 1.5 + f.hair_volume;
        let hairline = |x: f32| {
            let t = (x / a).clamp(-1.2, 1.2);
            f.hairline_y + f.hairline_drop * t * t + f.hair_part * t
        };
        let lowest = f.hairline_y + 1.44 * f.hairline_drop + 1.2 * f.hair_part.abs();
        if lowest > -cap_ry {
            let bounds = Bounds {
                min: (-cap_rx, -cap_ry),
                max: (cap_rx, lowest.min(cap_ry)),
            };
            canvas.paint(view, bounds, f.hair_rgb, 1.0, |(x, y)| {
                ellipse_sd(x, y, cap_rx, cap_ry).max(y - hairline(x))
            });
        }
    }

    fn draw_eyes(&self, canvas: &mut Canvas, f: &IdentityParams) {
        let view = &self.view;
        let outline = scale(f.skin_rgb, 0.35);
        for (i, side) in [-1.0f32, 1.0].into_iter().enumerate() {
            let center = (side * f.eye_half_spacing, f.eye_y);
            // Lifting the outer corner means rotating against the side.
            let tilt = -side * f.eye_tilt;
            let rx = f.eye_half_width;
            let ry = (f.eye_half_height * self.expression.eye_open[i]).max(0.35);
            let frame = Frame::new(center, tilt);
            let sclera = move |p: (f32, f32)| {
                let (lx, ly) = frame.local(p);
                ellipse_sd(lx, ly, rx, ry)
            };
            let extent = rx.max(ry) + 1.0;
            let bounds = Bounds::around(center, extent, extent);
            canvas.paint(view, bounds, [240.0, 238.0, 232.0], 1.0, sclera);

            let iris_center = (center.0 + self.gaze.0, center.1 + self.gaze.1);
            let iris = |r: f32| {
                move |(x, y): (f32, f32)| {
                    ellipse_sd(x - iris_center.0, y - iris_center.1, r, r).max(sclera((x, y)))
                }
            };
            canvas.paint(view, bounds, f.iris_rgb, 1.0, iris(f.iris_radius));
            canvas.paint(
                view,
                bounds,
                [12.0, 10.0, 10.0],
                1.0,
                iris(0.45 * f.iris_radius),
            );
            canvas.paint(view, bounds, outline, 0.8, |p| sclera(p).abs() - 0.5);
        }
    }

    fn draw_brows(&self, canvas: &mut Canvas, f: &IdentityParams) {
        let half = f.brow_half_length;
        for (i, side) in [-1.0f32, 1.0].into_iter().enumerate() {
            let center_x = side * (f.eye_half_spacing + 1.0);
            let base_y = f.eye_y - f.eye_half_height - f.brow_gap - self.expression.brow_raise[i];
            // Positive slope lifts the outer end and lowers the inner one.
            let rise = half * (f.brow_angle + self.expression.brow_tilt).sin();
            let inner = (center_x - side * half, base_y + rise);
            let outer = (center_x + side * half, base_y - rise);
            let r = f.brow_thickness;
            let bounds = Bounds::around((center_x, base_y), half + r, half.abs() + r);
            canvas.paint(&self.view, bounds, f.brow_rgb, 1.0, |p| {
                capsule_sd(p, inner, outer, r)
            });
        }
    }

    fn draw_nose(&self, canvas: &mut Canvas, f: &IdentityParams) {
        let view = &self.view;
        let tip_y = f.eye_y + f.nose_length;
        let w = f.nose_half_width;
        let top = (0.3 * w, f.eye_y + 2.0);
        let bottom = (0.3 * w, tip_y - 1.0);
        let bridge = Bounds {
            min: (-w, top.1 - w),
            max: (w, bottom.1 + w),
        };
        canvas.paint(view, bridge, scale(f.skin_rgb, 0.8), 0.5, |p| {
            capsule_sd(p, top, bottom, 0.18 * w)
        });
        canvas.paint(
            view,
            Bounds::around((0.0, tip_y), w, w),
            scale(f.skin_rgb, 0.88),
            0.8,
            |(x, y)| ellipse_sd(x, y - tip_y, w, 0.45 * w),
        );
        for side in [-1.0f32, 1.0] {
            let c = (side * 0.45 * w, tip_y + 0.5);
            canvas.paint(
                view,
                Bounds::around(c, 2.0, 2.0),
                scale(f.skin_rgb, 0.45),
                1.0,
                |(x, y)| ellipse_sd(x - c.0, y - c.1, 1.2, 0.8),
            );
        }
    }

    fn draw_mouth(&self, canvas: &mut Canvas, f: &IdentityParams) {
        let e = &self.expression;
        let cx = e.mouth_shift;
        let cy = f.mouth_y;
        let rx = f.mouth_half_width * e.mouth_widen;
        let ry = f.mouth_half_height * (1.0 + 0.8 * e.mouth_open);
        let curve = f.mouth_curve + e.mouth_curve;
        // Bending the mouth: corners rise by `curve` relative to the middle.
        let bent = move |(x, y): (f32, f32)| {
            let t = ((x - cx) / rx).clamp(-1.2, 1.2);
            (x - cx, y - cy + curve * t * t)
        };
        let extent = rx + curve.abs() + ry + 2.0;
        let bounds = Bounds::around((cx, cy), extent, extent);
        canvas.paint(&self.view, bounds, f.lip_rgb, 1.0, |p| {
            let (x, y) = bent(p);
            ellipse_sd(x, y, rx, ry)
        });
        if e.mouth_open > 0.05 {
            let (irx, iry) = (0.8 * rx, 0.75 * ry * e.mouth_open.min(1.0));
            let inner = move |p: (f32, f32)| {
                let (x, y) = bent(p);
                ellipse_sd(x, y, irx, iry)
            };
            canvas.paint(&self.view, bounds, [70.0, 25.0, 30.0], 1.0, inner);
            if e.mouth_open > 0.4 {
                // Upper teeth: the top part of the opening.
                let teeth_bottom = -0.35 * iry;
                canvas.paint(&self.view, bounds, [232.0, 228.0, 216.0], 1.0, |p| {
                    inner(p).max(bent(p).1 - teeth_bottom)
                });
            }
        } else {
            let lips = move |p: (f32, f32)| {
                let (x, y) = bent(p);
                ellipse_sd(x, y, rx, ry)
            };
            canvas.paint(&self.view, bounds, scale(f.lip_rgb, 0.5), 0.9, |p| {
                (bent(p).1.abs() - 0.45).max(lips(p))
            });
        }
    }

    /// Occluders attached to the face (they move with it).
    fn draw_face_occlusion(&self, canvas: &mut Canvas, f: &IdentityParams) {
        let view = &self.view;
        match self.occlusion {
            Some(Occlusion::Sunglasses { color }) => {
                let rx = f.eye_half_width + 3.5;
                let ry = f.eye_half_height + 4.5;
                for side in [-1.0f32, 1.0] {
                    let c = (side * f.eye_half_spacing, f.eye_y);
                    canvas.paint(view, Bounds::around(c, rx, ry), color, 1.0, |(x, y)| {
                        ellipse_sd(x - c.0, y - c.1, rx, ry)
                    });
                }
                let a = (-f.eye_half_spacing, f.eye_y - 1.0);
                let b = (f.eye_half_spacing, f.eye_y - 1.0);
                let bounds = Bounds::around((0.0, f.eye_y), f.eye_half_spacing, 3.0);
                canvas.paint(view, bounds, color, 1.0, |p| capsule_sd(p, a, b, 1.0));
            }
            Some(Occlusion::Mask { color }) => {
                let top = f.eye_y + 0.45 * f.nose_length;
                let (a, b) = (f.head_half_width + 1.0, f.head_half_height + 1.5);
                let bounds = Bounds {
                    min: (-a, top),
                    max: (a, b),
                };
                canvas.paint(view, bounds, color, 1.0, |(x, y)| {
                    ellipse_sd(x / f.taper_at(y), y, a, b).max(top - y)
                });
            }
            _ => {}
        }
    }

    /// Face-space boxes that expressions may change (eyes with brows, mouth),
    /// with a margin; used by tests to check that deformation is local.
    #[cfg(test)]
    pub fn expression_regions(f: &IdentityParams) -> [Bounds; 2] {
        let eyes_half_width =
            f.eye_half_spacing + f.eye_half_width.max(f.brow_half_length + 1.0) + 5.0;
        let eyes_top = f.eye_y - f.eye_half_height - f.brow_gap - 12.0;
        let eyes_bottom = f.eye_y + 2.0 * f.eye_half_height + 4.0;
        let mouth_half_width = 1.6 * f.mouth_half_width + 10.0;
        [
            Bounds {
                min: (-eyes_half_width, eyes_top),
                max: (eyes_half_width, eyes_bottom),
            },
            Bounds {
                min: (-mouth_half_width, f.mouth_y - 12.0),
                max: (
                    mouth_half_width,
                    f.mouth_y + 3.0 * f.mouth_half_height + 6.0,
                ),
            },
        ]
    }
}
