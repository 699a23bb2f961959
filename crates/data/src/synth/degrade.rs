//! Image-quality degradations for the `LowQuality` factor: resolution loss,
//! blur and sensor noise, applied to the finished image.

use super::canvas::{Canvas, Rgb};
use super::IMAGE_SIZE;
use crate::rng::Rng;

/// Downscales by area averaging to `small` pixels per side, then upscales back
/// with nearest-neighbour (blocky) or bilinear (smooth) interpolation.
pub(super) fn rescale(canvas: &mut Canvas, small: usize, bilinear: bool) {
    let n = IMAGE_SIZE;
    let small = small.clamp(1, n);
    let mut low = vec![[0.0f32; 3]; small * small];
    for sy in 0..small {
        let (y0, y1) = block(sy, small, n);
        for sx in 0..small {
            let (x0, x1) = block(sx, small, n);
            let mut sum = [0.0f32; 3];
            for y in y0..y1 {
                for p in &canvas.pixels[y * n + x0..y * n + x1] {
                    for c in 0..3 {
                        sum[c] += p[c];
                    }
                }
            }
            let count = ((y1 - y0) * (x1 - x0)) as f32;
            low[sy * small + sx] = sum.map(|s| s / count);
        }
    }

    let ratio = small as f32 / n as f32;
    for y in 0..n {
        let fy = ((y as f32 + 0.5) * ratio - 0.5).clamp(0.0, (small - 1) as f32);
        for x in 0..n {
            let fx = ((x as f32 + 0.5) * ratio - 0.5).clamp(0.0, (small - 1) as f32);
            canvas.pixels[y * n + x] = if bilinear {
                let (x0, y0) = (fx.floor() as usize, fy.floor() as usize);
                let (x1, y1) = ((x0 + 1).min(small - 1), (y0 + 1).min(small - 1));
                let (tx, ty) = (fx - x0 as f32, fy - y0 as f32);
                let at = |xx: usize, yy: usize| low[yy * small + xx];
                let top = super::canvas::mix(at(x0, y0), at(x1, y0), tx);
                let bottom = super::canvas::mix(at(x0, y1), at(x1, y1), tx);
                super::canvas::mix(top, bottom, ty)
            } else {
                low[fy.round() as usize * small + fx.round() as usize]
            };
        }
    }
}

/// Source index range `[start, end)` averaged into low-resolution cell `i`.
fn block(i: usize, small: usize, n: usize) -> (usize, usize) {
    let start = i * n / small;
    let end = ((i + 1) * n / small).max(start + 1);
    (start, end)
}

/// Separable Gaussian blur with clamped borders.
pub(super) fn gaussian_blur(canvas: &mut Canvas, sigma: f32) {
    let radius = (3.0 * sigma).ceil() as usize;
    let mut kernel: Vec<f32> = (0..=2 * radius)
        .map(|i| {
            let d = i as f32 - radius as f32;
            (-d * d / (2.0 * sigma * sigma)).exp()
        })
        .collect();
    let total: f32 = kernel.iter().sum();
    kernel.iter_mut().for_each(|k| *k /= total);

    let n = IMAGE_SIZE;
    // One line (row or column) at a time, copied into a buffer padded by
    // edge replication so that the inner loop needs no bounds clamping.
    let mut padded = vec![[0.0f32; 3]; n + 2 * radius];
    let mut blur_line = |pixels: &mut [Rgb], index: &dyn Fn(usize) -> usize| {
        for (i, slot) in padded.iter_mut().enumerate() {
            *slot = pixels[index(i.saturating_sub(radius).min(n - 1))];
        }
        for i in 0..n {
            let mut acc = [0.0f32; 3];
            for (weight, p) in kernel.iter().zip(&padded[i..i + kernel.len()]) {
                for c in 0..3 {
                    acc[c] += weight * p[c];
                }
            }
            pixels[index(i)] = acc;
        }
    };
    for y in 0..n {
        blur_line(&mut canvas.pixels, &|x| y * n + x);
    }
    for x in 0..n {
        blur_line(&mut canvas.pixels, &|y| y * n + x);
    }
}

/// Adds zero-mean noise of standard deviation `sigma` to every channel.
///
/// Uses the Irwin-Hall sum of four uniforms, a close and much cheaper
/// approximation to a Gaussian than Box-Muller for 37k values per image.
pub(super) fn add_noise(canvas: &mut Canvas, sigma: f32, rng: &mut Rng) {
    // Four 16-bit uniforms sum to mean 2, variance 1/3.
    let unit = sigma * 3.0f32.sqrt() / 65536.0;
    for pixel in &mut canvas.pixels {
        for value in pixel.iter_mut() {
            let bits = rng.next_u64();
            let sum =
                (bits & 0xFFFF) + ((bits >> 16) & 0xFFFF) + ((bits >> 32) & 0xFFFF) + (bits >> 48);
            *value += (sum as f32 - 2.0 * 65536.0) * unit;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn checkerboard() -> Canvas {
        Canvas::new(|x, y| {
            let on = ((x as usize / 4) + (y as usize / 4)).is_multiple_of(2);
            [if on { 255.0 } else { 0.0 }; 3]
        })
    }

    fn variance(canvas: &Canvas) -> f32 {
        let values: Vec<f32> = canvas.pixels.iter().map(|p| p[0]).collect();
        let mean = values.iter().sum::<f32>() / values.len() as f32;
        values.iter().map(|v| (v - mean).powi(2)).sum::<f32>() / values.len() as f32
    }

    #[test]
    fn blur_and_rescale_remove_detail_but_keep_mean() {
        for degrade in [
            |c: &mut Canvas| gaussian_blur(c, 2.0),
            |c: &mut Canvas| rescale(c, 28, true),
            |c: &mut Canvas| rescale(c, 22, false),
        ] {
            let mut canvas = checkerboard();
            let before = variance(&canvas);
            let mean_before: f32 = canvas.pixels.iter().map(|p| p[0]).sum();
            degrade(&mut canvas);
            let mean_after: f32 = canvas.pixels.iter().map(|p| p[0]).sum();
            assert!(variance(&canvas) < 0.5 * before);
            let n = (IMAGE_SIZE * IMAGE_SIZE) as f32;
            assert!((mean_before - mean_after).abs() / n < 8.0);
        }
    }

    #[test]
    fn rescale_to_full_size_is_identity() {
        let mut canvas = checkerboard();
        let original = canvas.pixels.clone();
        rescale(&mut canvas, IMAGE_SIZE, false);
        assert_eq!(canvas.pixels, original);
    }

    #[test]
    fn noise_has_requested_spread() {
        let mut canvas = Canvas::new(|_, _| [128.0; 3]);
        add_noise(&mut canvas, 10.0, &mut Rng::new(3));
        let var = variance(&canvas);
        assert!((var.sqrt() - 10.0).abs() < 0.5, "std {}", var.sqrt());
    }
}
