//! Timings of decoding and augmentation, for choosing and tuning; ignored by default:
//! `cargo test --release -p lgaf-data --test throughput -- --ignored --nocapture`.

use std::time::Instant;

use image::codecs::jpeg::JpegEncoder;
use image::ExtendedColorType;
use lgaf_data::augment::{AugmentConfig, Augmenter, SampleKey};
use lgaf_data::decode::{decode_rgb112_into, RGB112_BYTES};
use lgaf_data::synth::{SynthConfig, SynthDataset};

fn faces(count: usize) -> Vec<Vec<u8>> {
    let dataset = SynthDataset::new(SynthConfig {
        seed: 1,
        identities: count,
        images_per_identity: 1,
        nuisance_prob: 0.5,
    });
    (0..count).map(|i| dataset.get(i).rgb).collect()
}

/// Mean microseconds per call of `f` over `items`, after one warm-up pass.
fn per_item_us<T>(items: &[T], reps: usize, mut f: impl FnMut(&T)) -> f64 {
    items.iter().for_each(&mut f);
    let started = Instant::now();
    for _ in 0..reps {
        items.iter().for_each(&mut f);
    }
    started.elapsed().as_secs_f64() * 1e6 / (reps * items.len()) as f64
}

#[test]
#[ignore = "a measurement, not a check"]
fn decode_time_per_112_jpeg() {
    let jpegs: Vec<Vec<u8>> = faces(200)
        .iter()
        .map(|rgb| {
            let mut out = Vec::new();
            JpegEncoder::new_with_quality(&mut out, 90)
                .encode(rgb, 112, 112, ExtendedColorType::Rgb8)
                .unwrap();
            out
        })
        .collect();
    let mean_bytes = jpegs.iter().map(Vec::len).sum::<usize>() / jpegs.len();
    let mut out = vec![0u8; RGB112_BYTES];
    let direct = per_item_us(&jpegs, 20, |j| {
        decode_rgb112_into(j, &mut out, String::new).unwrap();
    });
    let via_image = per_item_us(&jpegs, 20, |j| {
        let img = image::load_from_memory_with_format(j, image::ImageFormat::Jpeg).unwrap();
        out.copy_from_slice(img.into_rgb8().as_raw());
    });
    println!("{} JPEGs of {mean_bytes} bytes on average", jpegs.len());
    println!("decode::decode_rgb112_into (zune-jpeg): {direct:.1} us/image");
    println!("image::load_from_memory:               {via_image:.1} us/image");
}

#[test]
#[ignore = "a measurement, not a check"]
fn augment_time_per_image() {
    let originals = faces(200);
    for (name, cfg) in [
        ("spec defaults", AugmentConfig::default()),
        (
            "every step on",
            AugmentConfig {
                flip_prob: 1.0,
                crop_prob: 1.0,
                low_res_prob: 1.0,
                photometric_prob: 1.0,
                ..AugmentConfig::default()
            },
        ),
    ] {
        let mut augmenter = Augmenter::new(cfg);
        let mut images = originals.clone();
        let mut index = 0u64;
        let us = per_item_us(&originals, 10, |rgb| {
            let slot = &mut images[index as usize % originals.len()];
            slot.copy_from_slice(rgb);
            let key = SampleKey {
                seed: 0,
                epoch: 0,
                index,
            };
            augmenter.apply(slot, key);
            index += 1;
        });
        println!("augment ({name}): {us:.1} us/image, copy included");
    }
}

/// Writes 64 identities x 16 JPEG faces (quality 90) under `$LGAF_JPEG_FOLDER`, for the
/// loader's throughput measurement in `worker/tests/loader.rs`.
#[test]
#[ignore = "a fixture for a measurement"]
fn write_a_jpeg_face_folder() {
    let root = std::path::PathBuf::from(
        std::env::var_os("LGAF_JPEG_FOLDER").expect("set LGAF_JPEG_FOLDER"),
    );
    let per_identity = 16;
    let dataset = SynthDataset::new(SynthConfig {
        seed: 3,
        identities: 64,
        images_per_identity: per_identity,
        nuisance_prob: 0.5,
    });
    for i in 0..dataset.len() {
        let dir = root.join(format!("id_{:03}", i / per_identity));
        std::fs::create_dir_all(&dir).unwrap();
        let mut out = Vec::new();
        JpegEncoder::new_with_quality(&mut out, 90)
            .encode(&dataset.get(i).rgb, 112, 112, ExtendedColorType::Rgb8)
            .unwrap();
        std::fs::write(dir.join(format!("{:02}.jpg", i % per_identity)), out).unwrap();
    }
}
