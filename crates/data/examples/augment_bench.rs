//! Cost of each augmentation step on 112x112 synthetic faces (one thread), and of the
//! spec's default mix: what the loader pays per image besides decoding.
//!
//!     cargo run --release -p lgaf-data --example augment_bench

use std::time::Instant;

use lgaf_data::augment::{AugmentConfig, Augmenter, ColorOp, CropBox, Jitter, Plan, SampleKey};
use lgaf_data::synth::{SynthConfig, SynthDataset};

const IMAGES: usize = 64;

fn time_plan(name: &str, faces: &[Vec<u8>], plan: impl Fn(usize) -> Plan) {
    let rounds = rounds();
    let mut augmenter = Augmenter::new(AugmentConfig::default());
    let plans: Vec<Plan> = (0..faces.len()).map(&plan).collect();
    let mut image = faces[0].clone();
    let started = Instant::now();
    for _ in 0..rounds {
        for (face, plan) in faces.iter().zip(&plans) {
            image.copy_from_slice(face);
            augmenter.apply_plan(&mut image, plan);
        }
    }
    let us = started.elapsed().as_secs_f64() * 1e6 / (rounds * faces.len()) as f64;
    println!("{name:>34}: {us:7.2} us/image");
}

/// Rounds over the images: `AUGMENT_BENCH_ROUNDS`, default 40 (fewer under valgrind).
fn rounds() -> usize {
    std::env::var("AUGMENT_BENCH_ROUNDS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(40)
}

fn main() {
    let ds = SynthDataset::new(SynthConfig {
        seed: 0,
        identities: 16,
        images_per_identity: 4,
        nuisance_prob: 0.5,
    });
    let faces: Vec<Vec<u8>> = (0..IMAGES).map(|i| ds.get(i).rgb).collect();
    let none = Plan {
        crop: None,
        low_res_side: None,
        jitter: Jitter::default(),
        flip: false,
    };
    time_plan("copy only (baseline)", &faces, |_| none.clone());
    time_plan("flip", &faces, |_| Plan {
        flip: true,
        ..none.clone()
    });
    time_plan("crop 60x80", &faces, |_| Plan {
        crop: Some(CropBox {
            top: 10,
            left: 20,
            height: 80,
            width: 60,
        }),
        ..none.clone()
    });
    time_plan("low resolution (side 56)", &faces, |_| Plan {
        low_res_side: Some(56),
        ..none.clone()
    });
    time_plan("jitter (brightness, contrast, sat.)", &faces, |_| Plan {
        jitter: Jitter::from_ops(&[
            ColorOp::Brightness(1.2),
            ColorOp::Contrast(0.8),
            ColorOp::Saturation(1.3),
        ]),
        ..none.clone()
    });
    let cfg = AugmentConfig::default();
    time_plan("default mix (spec section 4)", &faces, |i| {
        Plan::draw(
            &cfg,
            SampleKey {
                seed: 0,
                epoch: 0,
                index: i as u64,
            },
        )
    });
}
