//! Renders a contact sheet of synthetic faces and times the renderer.
//!
//! `cargo run --release -p lgaf-data --example synth_preview -- [out.png]`
//!
//! Rows are identities; columns are variants under each factor in turn
//! (clean, missing, deformed, low quality).

use std::path::PathBuf;
use std::time::Instant;

use lgaf_data::image_folder::save_png;
use lgaf_data::synth::{Factor, SynthConfig, SynthDataset, IMAGE_SIZE};

const ROWS: usize = 8;
const VARIANTS: usize = 3;

fn main() -> Result<(), lgaf_data::DataError> {
    let out = std::env::args()
        .nth(1)
        .map_or_else(|| PathBuf::from("synth_preview.png"), PathBuf::from);
    let dataset = SynthDataset::new(SynthConfig::default());

    let cols = Factor::ALL.len() * VARIANTS;
    let (width, height) = (cols * IMAGE_SIZE, ROWS * IMAGE_SIZE);
    let mut sheet = vec![0u8; width * height * 3];
    for row in 0..ROWS {
        for (f, &factor) in Factor::ALL.iter().enumerate() {
            for variant in 0..VARIANTS {
                let sample = dataset.render(row as u32, variant as u64, factor);
                let col = f * VARIANTS + variant;
                for y in 0..IMAGE_SIZE {
                    let src = &sample.rgb[y * IMAGE_SIZE * 3..(y + 1) * IMAGE_SIZE * 3];
                    let start = ((row * IMAGE_SIZE + y) * width + col * IMAGE_SIZE) * 3;
                    sheet[start..start + src.len()].copy_from_slice(src);
                }
            }
        }
    }
    save_png(&out, &sheet, width as u32, height as u32)?;
    println!("wrote {}", out.display());

    // Time the training path: get() over a spread of indices.
    let count = 2000;
    let start = Instant::now();
    let mut checksum = 0u64;
    for i in 0..count {
        let sample = dataset.get((i * 7919) % dataset.len());
        checksum = checksum.wrapping_add(u64::from(sample.rgb[i % sample.rgb.len()]));
    }
    let per_sample = start.elapsed().as_secs_f64() / count as f64;
    println!(
        "get(): {:.1} us per sample over {count} samples (checksum {checksum})",
        per_sample * 1e6
    );
    for factor in Factor::ALL {
        let start = Instant::now();
        for i in 0..500u64 {
            std::hint::black_box(dataset.render((i % 200) as u32, i, factor));
        }
        let us = start.elapsed().as_secs_f64() / 500.0 * 1e6;
        println!("render({}): {us:.1} us per sample", factor.name());
    }
    Ok(())
}
