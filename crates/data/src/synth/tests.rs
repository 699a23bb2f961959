//! Tests of the synthetic faces: determinism, identities apart, nuisance factors.

use super::canvas::View;
use super::*;

fn config(seed: u64, identities: usize) -> SynthConfig {
    SynthConfig {
        seed,
        identities,
        images_per_identity: 6,
        nuisance_prob: 0.5,
    }
}

/// Mean absolute difference per channel value.
fn mean_abs_diff(a: &[u8], b: &[u8]) -> f32 {
    assert_eq!(a.len(), b.len());
    let total: u64 = a
        .iter()
        .zip(b)
        .map(|(&x, &y)| u64::from(x.abs_diff(y)))
        .sum();
    total as f32 / a.len() as f32
}

#[test]
fn same_config_gives_identical_bytes() {
    let a = SynthDataset::new(config(5, 10));
    let b = SynthDataset::new(config(5, 10));
    for index in [0, 1, 7, 33, 59] {
        let (x, y) = (a.get(index), b.get(index));
        assert_eq!(x.rgb.len(), IMAGE_SIZE * IMAGE_SIZE * 3);
        assert_eq!(x, y, "sample {index} differs between identical datasets");
    }
}

#[test]
fn different_seeds_give_different_images_and_identities() {
    let a = SynthDataset::new(config(1, 10));
    let b = SynthDataset::new(config(2, 10));
    assert_ne!(a.identity(0), b.identity(0));
    for index in 0..5 {
        assert!(mean_abs_diff(&a.get(index).rgb, &b.get(index).rgb) > 5.0);
    }
}

#[test]
fn identity_depends_only_on_seed_and_id() {
    let small = SynthDataset::new(config(9, 10));
    let mut large_cfg = config(9, 20);
    large_cfg.images_per_identity = 11;
    let large = SynthDataset::new(large_cfg);
    assert_eq!(small.identity(3), large.identity(3));
    assert_ne!(small.identity(3), small.identity(4));
    for factor in Factor::ALL {
        assert_eq!(small.render(3, 2, factor), large.render(3, 2, factor));
    }
}

#[test]
fn labels_follow_index_and_len_is_product() {
    let ds = SynthDataset::new(config(0, 7));
    assert_eq!(ds.len(), 42);
    assert!(!ds.is_empty());
    assert!(SynthDataset::new(config(0, 0)).is_empty());
    for index in [0, 5, 6, 11, 12, 41] {
        let sample = ds.get(index);
        assert_eq!(sample.label, (index / 6) as u32);
        // get() is render() with the chosen factor.
        let variant = (index % 6) as u64;
        assert_eq!(sample, ds.render(sample.label, variant, sample.factor));
    }
}

#[test]
#[should_panic(expected = "out of range")]
fn get_past_the_end_panics() {
    SynthDataset::new(config(0, 2)).get(12);
}

#[test]
fn factors_appear_with_nuisance_prob() {
    let mut cfg = config(4, 1000);
    let n = 6000;
    let count = |cfg: &SynthConfig, factor: Factor| {
        let ds = SynthDataset::new(cfg.clone());
        (0..n).filter(|&i| ds.factor_of(i) == factor).count() as f32 / n as f32
    };
    let clean = count(&cfg, Factor::Clean);
    assert!((clean - 0.5).abs() < 0.03, "clean fraction {clean}");
    for factor in Factor::NUISANCE {
        let frac = count(&cfg, factor);
        assert!(
            (frac - 0.5 / 3.0).abs() < 0.025,
            "{} fraction {frac}",
            factor.name()
        );
    }
    cfg.nuisance_prob = 0.0;
    assert_eq!(count(&cfg, Factor::Clean), 1.0);
    // get() reports the factor it rendered with.
    let ds = SynthDataset::new(config(4, 1000));
    for index in 0..12 {
        assert_eq!(ds.get(index).factor, ds.factor_of(index));
    }
}

#[test]
fn every_factor_visibly_changes_the_image() {
    let ds = SynthDataset::new(config(3, 20));
    for factor in Factor::NUISANCE {
        let mut total = 0.0;
        let cases = 16;
        for case in 0..cases {
            let (id, variant) = (case % 20, u64::from(case) * 7 + 1);
            let clean = ds.render(id, variant, Factor::Clean);
            let changed = ds.render(id, variant, factor);
            assert_eq!(changed.factor, factor);
            let diff = mean_abs_diff(&clean.rgb, &changed.rgb);
            // Deformation is local (eyes, brows, mouth), so it moves the
            // whole-image average less than occlusion or degradation do.
            let minimum = if factor == Factor::Deformed { 0.3 } else { 1.5 };
            assert!(
                diff > minimum,
                "{} barely changed id {id}: {diff}",
                factor.name()
            );
            total += diff;
        }
        let mean = total / cases as f32;
        let expected = if factor == Factor::Deformed { 1.2 } else { 3.0 };
        assert!(mean > expected, "{} mean change only {mean}", factor.name());
    }
}

#[test]
fn deformation_is_local_to_eyes_brows_and_mouth() {
    let ds = SynthDataset::new(config(8, 12));
    for id in 0..12u32 {
        let variant = u64::from(id) + 100;
        let clean = ds.render(id, variant, Factor::Clean);
        let deformed = ds.render(id, variant, Factor::Deformed);
        let face = ds.identity(id);
        let view: View = Scene::new(ds.config().seed, id, variant, Factor::Clean).view;
        let regions = Scene::expression_regions(&face);
        let (mut outside, mut outside_changed, mut inside_diff) = (0usize, 0usize, 0u64);
        for y in 0..IMAGE_SIZE {
            for x in 0..IMAGE_SIZE {
                let at = (y * IMAGE_SIZE + x) * 3;
                let diff = (0..3)
                    .map(|c| clean.rgb[at + c].abs_diff(deformed.rgb[at + c]))
                    .max()
                    .unwrap();
                let p = view.to_face(x as f32 + 0.5, y as f32 + 0.5);
                if regions.iter().any(|r| r.contains(p)) {
                    inside_diff += u64::from(diff);
                } else {
                    outside += 1;
                    outside_changed += usize::from(diff > 2);
                }
            }
        }
        let frac = outside_changed as f32 / outside as f32;
        assert!(
            frac < 0.01,
            "id {id}: {frac} of pixels outside expression regions changed"
        );
        assert!(
            inside_diff > 2000,
            "id {id}: expression barely changed ({inside_diff})"
        );
    }
}

#[test]
fn different_identities_differ_more_than_same_identity() {
    let ds = SynthDataset::new(config(11, 40));
    let pairs = 40u32;
    let (mut same, mut different) = (0.0, 0.0);
    for i in 0..pairs {
        let id = i % 40;
        let other = (i * 7 + 13) % 40;
        assert_ne!(id, other);
        let a = ds.render(id, 2 * u64::from(i), Factor::Clean);
        let b = ds.render(id, 2 * u64::from(i) + 1, Factor::Clean);
        let c = ds.render(other, 2 * u64::from(i) + 1, Factor::Clean);
        same += mean_abs_diff(&a.rgb, &b.rgb);
        different += mean_abs_diff(&a.rgb, &c.rgb);
    }
    let (same, different) = (same / pairs as f32, different / pairs as f32);
    assert!(
        different > 1.15 * same,
        "same {same} vs different {different}"
    );
}

#[test]
fn verification_pairs_alternate_same_and_different() {
    let cfg = config(6, 10);
    let set = verification_pairs(&cfg, 10, 5, 12, Some(Factor::LowQuality), 77);
    assert_eq!(set.images.len(), 24);
    assert_eq!(set.issame.len(), 12);
    assert_eq!(set.issame.iter().filter(|&&s| s).count(), 6);
    for (i, &same) in set.issame.iter().enumerate() {
        assert_eq!(same, i % 2 == 0);
        let (a, b) = (&set.images[2 * i], &set.images[2 * i + 1]);
        assert_eq!(a.label == b.label, same);
        assert!((10..15).contains(&a.label) && (10..15).contains(&b.label));
        assert!(a.factor == Factor::LowQuality && b.factor == Factor::LowQuality);
        assert_ne!(a.rgb, b.rgb, "pair {i} holds two identical images");
    }
    let again = verification_pairs(&cfg, 10, 5, 12, Some(Factor::LowQuality), 77);
    assert_eq!(again.images, set.images);
    let other_seed = verification_pairs(&cfg, 10, 5, 12, Some(Factor::LowQuality), 78);
    assert_ne!(other_seed.images, set.images);
}

#[test]
fn verification_pairs_mix_factors_when_unspecified() {
    let set = verification_pairs(&config(6, 10), 10, 8, 40, None, 1);
    for pair in set.images.chunks_exact(2) {
        assert_eq!(pair[0].factor, pair[1].factor);
    }
    for factor in Factor::ALL {
        assert!(
            set.images.iter().any(|s| s.factor == factor),
            "{} never used",
            factor.name()
        );
    }
}

#[test]
fn factor_names() {
    let names: Vec<&str> = Factor::ALL.iter().map(Factor::name).collect();
    assert_eq!(names, ["clean", "missing", "deformed", "low_quality"]);
    assert_eq!(SynthConfig::default().identities, 200);
    assert_eq!(SynthConfig::default().images_per_identity, 40);
}
