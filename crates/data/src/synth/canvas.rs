//! Anti-aliased rasterisation of shapes given by signed distance functions.
//!
//! Shapes are described in *face coordinates* (pixels at nominal scale, origin
//! at the head centre, y pointing down) and mapped to the image through a
//! [`View`] (translation, rotation, anisotropic scale). Coverage comes from the
//! signed distance at each pixel centre, which gives one pixel of soft edge:
//! cheap anti-aliasing without supersampling.

use super::IMAGE_SIZE;

pub(super) type Rgb = [f32; 3];

/// Maps face coordinates to image pixels.
#[derive(Clone, Copy, Debug)]
pub(super) struct View {
    /// Image position of the face origin.
    pub center: (f32, f32),
    pub scale_x: f32,
    pub scale_y: f32,
    /// Rotation, kept as sine and cosine: `to_face` runs for every pixel.
    sin: f32,
    cos: f32,
}

impl View {
    pub fn new(center: (f32, f32), angle: f32, scale_x: f32, scale_y: f32) -> Self {
        let (sin, cos) = angle.sin_cos();
        Self {
            center,
            scale_x,
            scale_y,
            sin,
            cos,
        }
    }

    pub fn to_face(self, px: f32, py: f32) -> (f32, f32) {
        let (dx, dy) = (px - self.center.0, py - self.center.1);
        let x = self.cos * dx + self.sin * dy;
        let y = -self.sin * dx + self.cos * dy;
        (x / self.scale_x, y / self.scale_y)
    }

    pub fn to_pixel(self, x: f32, y: f32) -> (f32, f32) {
        let (x, y) = (x * self.scale_x, y * self.scale_y);
        (
            self.center.0 + self.cos * x - self.sin * y,
            self.center.1 + self.sin * x + self.cos * y,
        )
    }

    /// Converts a face-space distance to pixels (exact for isotropic views,
    /// a close approximation for the mildly squeezed pose views).
    fn pixels_per_unit(self) -> f32 {
        self.scale_x.min(self.scale_y)
    }
}

/// Axis-aligned box in face coordinates bounding a shape.
#[derive(Clone, Copy, Debug)]
pub(super) struct Bounds {
    pub min: (f32, f32),
    pub max: (f32, f32),
}

impl Bounds {
    pub fn around(center: (f32, f32), half_width: f32, half_height: f32) -> Self {
        Self {
            min: (center.0 - half_width, center.1 - half_height),
            max: (center.0 + half_width, center.1 + half_height),
        }
    }

    #[cfg(test)]
    pub fn contains(&self, (x, y): (f32, f32)) -> bool {
        (self.min.0..=self.max.0).contains(&x) && (self.min.1..=self.max.1).contains(&y)
    }
}

/// Signed distance to an axis-aligned ellipse centred at the origin.
/// First-order approximation `f / |grad f|`, accurate near the boundary,
/// which is all that soft edges need.
pub(super) fn ellipse_sd(x: f32, y: f32, rx: f32, ry: f32) -> f32 {
    // Reciprocals of loop-invariant radii get hoisted out of paint loops,
    // leaving one division per pixel.
    let (inv_rx, inv_ry) = (1.0 / rx, 1.0 / ry);
    let (nx, ny) = (x * inv_rx, y * inv_ry);
    let k = (nx * nx + ny * ny).sqrt();
    let grad = ((nx * inv_rx).powi(2) + (ny * inv_ry).powi(2)).sqrt();
    if grad < 1e-6 {
        return -rx.min(ry);
    }
    (k - 1.0) * k / grad
}

/// Signed distance to a segment from `a` to `b` thickened by `radius`.
pub(super) fn capsule_sd(p: (f32, f32), a: (f32, f32), b: (f32, f32), radius: f32) -> f32 {
    let (pax, pay) = (p.0 - a.0, p.1 - a.1);
    let (bax, bay) = (b.0 - a.0, b.1 - a.1);
    let len2 = bax * bax + bay * bay;
    let t = if len2 > 0.0 {
        ((pax * bax + pay * bay) / len2).clamp(0.0, 1.0)
    } else {
        0.0
    };
    let (dx, dy) = (pax - bax * t, pay - bay * t);
    (dx * dx + dy * dy).sqrt() - radius
}

/// Signed distance to an axis-aligned box with the given half sizes.
pub(super) fn box_sd(x: f32, y: f32, half_width: f32, half_height: f32) -> f32 {
    let (qx, qy) = (x.abs() - half_width, y.abs() - half_height);
    let outside = (qx.max(0.0).powi(2) + qy.max(0.0).powi(2)).sqrt();
    outside + qx.max(qy).min(0.0)
}

/// A rotated local frame for shapes that are not axis-aligned.
#[derive(Clone, Copy, Debug)]
pub(super) struct Frame {
    center: (f32, f32),
    sin: f32,
    cos: f32,
}

impl Frame {
    pub fn new(center: (f32, f32), angle: f32) -> Self {
        let (sin, cos) = angle.sin_cos();
        Self { center, sin, cos }
    }

    /// Coordinates of `p` relative to the centre, rotated by `-angle`.
    pub fn local(&self, p: (f32, f32)) -> (f32, f32) {
        let (dx, dy) = (p.0 - self.center.0, p.1 - self.center.1);
        (
            self.cos * dx + self.sin * dy,
            -self.sin * dx + self.cos * dy,
        )
    }
}

pub(super) fn scale(c: Rgb, k: f32) -> Rgb {
    [c[0] * k, c[1] * k, c[2] * k]
}

pub(super) fn mix(a: Rgb, b: Rgb, t: f32) -> Rgb {
    [
        a[0] + (b[0] - a[0]) * t,
        a[1] + (b[1] - a[1]) * t,
        a[2] + (b[2] - a[2]) * t,
    ]
}

/// A square RGB image of `IMAGE_SIZE` with `f32` channels in 0..=255.
pub(super) struct Canvas {
    pub pixels: Vec<Rgb>,
}

impl Canvas {
    pub fn new(fill: impl Fn(f32, f32) -> Rgb) -> Self {
        let mut pixels = vec![[0.0; 3]; IMAGE_SIZE * IMAGE_SIZE];
        for (y, row) in pixels.chunks_exact_mut(IMAGE_SIZE).enumerate() {
            for (x, pixel) in row.iter_mut().enumerate() {
                *pixel = fill(x as f32 + 0.5, y as f32 + 0.5);
            }
        }
        Self { pixels }
    }

    /// Blends `color` into the pixels covered by the shape `sd` (a signed
    /// distance in face units, negative inside), visiting only the pixels of
    /// `bounds` mapped through `view`.
    pub fn paint(
        &mut self,
        view: &View,
        bounds: Bounds,
        color: Rgb,
        opacity: f32,
        sd: impl Fn((f32, f32)) -> f32,
    ) {
        let Some((x0, x1, y0, y1)) = pixel_range(view, bounds) else {
            return;
        };
        let px_per_unit = view.pixels_per_unit();
        for y in y0..y1 {
            for x in x0..x1 {
                let p = view.to_face(x as f32 + 0.5, y as f32 + 0.5);
                let coverage = (0.5 - sd(p) * px_per_unit).clamp(0.0, 1.0) * opacity;
                if coverage > 0.0 {
                    let pixel = &mut self.pixels[y * IMAGE_SIZE + x];
                    *pixel = mix(*pixel, color, coverage);
                }
            }
        }
    }

    /// Multiplies every pixel by a per-position, per-channel gain.
    pub fn modulate(&mut self, gain: impl Fn(f32, f32) -> Rgb) {
        for (y, row) in self.pixels.chunks_exact_mut(IMAGE_SIZE).enumerate() {
            for (x, pixel) in row.iter_mut().enumerate() {
                let g = gain(x as f32 + 0.5, y as f32 + 0.5);
                for c in 0..3 {
                    pixel[c] *= g[c];
                }
            }
        }
    }

    /// Fills the half-open pixel rectangle `x0..x1, y0..y1` (clipped).
    pub fn fill_rect(&mut self, x0: usize, x1: usize, y0: usize, y1: usize, color: Rgb) {
        for y in y0.min(IMAGE_SIZE)..y1.min(IMAGE_SIZE) {
            for x in x0.min(IMAGE_SIZE)..x1.min(IMAGE_SIZE) {
                self.pixels[y * IMAGE_SIZE + x] = color;
            }
        }
    }

    /// Rounds to RGB8, HWC.
    pub fn to_rgb8(&self) -> Vec<u8> {
        let mut rgb = vec![0u8; self.pixels.len() * 3];
        for (out, pixel) in rgb.chunks_exact_mut(3).zip(&self.pixels) {
            for (o, v) in out.iter_mut().zip(pixel) {
                // Round half up; cheaper than `f32::round` in this hot loop.
                *o = (v.clamp(0.0, 255.0) + 0.5) as u8;
            }
        }
        rgb
    }
}

/// Pixel rectangle `(x0, x1, y0, y1)` covering `bounds` under `view`, with a
/// pixel of margin for the soft edge; `None` if entirely off-image.
fn pixel_range(view: &View, bounds: Bounds) -> Option<(usize, usize, usize, usize)> {
    let corners = [
        view.to_pixel(bounds.min.0, bounds.min.1),
        view.to_pixel(bounds.max.0, bounds.min.1),
        view.to_pixel(bounds.min.0, bounds.max.1),
        view.to_pixel(bounds.max.0, bounds.max.1),
    ];
    let (mut lo_x, mut lo_y) = (f32::INFINITY, f32::INFINITY);
    let (mut hi_x, mut hi_y) = (f32::NEG_INFINITY, f32::NEG_INFINITY);
    for (x, y) in corners {
        lo_x = lo_x.min(x);
        lo_y = lo_y.min(y);
        hi_x = hi_x.max(x);
        hi_y = hi_y.max(y);
    }
    let limit = IMAGE_SIZE as f32;
    let clamp = |v: f32| v.clamp(0.0, limit) as usize;
    let (x0, x1) = (clamp(lo_x - 1.0), clamp(hi_x + 2.0));
    let (y0, y1) = (clamp(lo_y - 1.0), clamp(hi_y + 2.0));
    (x0 < x1 && y0 < y1).then_some((x0, x1, y0, y1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn view_round_trips() {
        let view = View::new((50.0, 60.0), 0.2, 0.7, 1.1);
        let (px, py) = view.to_pixel(12.0, -7.0);
        let (x, y) = view.to_face(px, py);
        assert!((x - 12.0).abs() < 1e-4 && (y + 7.0).abs() < 1e-4);
    }

    #[test]
    fn distances_have_the_right_sign_and_scale() {
        assert!(ellipse_sd(0.0, 0.0, 10.0, 5.0) < 0.0);
        assert!((ellipse_sd(12.0, 0.0, 10.0, 5.0) - 2.0).abs() < 0.5);
        assert!((ellipse_sd(0.0, -6.0, 10.0, 5.0) - 1.0).abs() < 0.2);
        assert!((capsule_sd((5.0, 3.0), (0.0, 0.0), (10.0, 0.0), 1.0) - 2.0).abs() < 1e-5);
        assert!((box_sd(0.0, 7.0, 4.0, 5.0) - 2.0).abs() < 1e-5);
        assert!((box_sd(0.0, 0.0, 4.0, 5.0) + 4.0).abs() < 1e-5);
    }

    #[test]
    fn paint_covers_inside_and_leaves_outside() {
        let mut canvas = Canvas::new(|_, _| [0.0; 3]);
        let view = View::new((56.0, 56.0), 0.0, 1.0, 1.0);
        canvas.paint(
            &view,
            Bounds::around((0.0, 0.0), 10.0, 10.0),
            [255.0; 3],
            1.0,
            |(x, y)| ellipse_sd(x, y, 10.0, 10.0),
        );
        let at = |x: usize, y: usize| canvas.pixels[y * IMAGE_SIZE + x][0];
        assert_eq!(at(56, 56), 255.0);
        assert_eq!(at(56, 40), 0.0);
        assert_eq!(at(5, 5), 0.0);
        // The boundary is partially covered (anti-aliased).
        let edge = at(65, 56);
        assert!(edge > 0.0 && edge < 255.0, "edge pixel {edge}");
    }
}
