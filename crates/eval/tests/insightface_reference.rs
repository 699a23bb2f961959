//! The verification metric against numbers from insightface's own code.
//!
//! The constants below were computed once by running `calculate_roc` and
//! `calculate_val` from insightface's `recognition/arcface_torch/eval/
//! verification.py` (commit 166d743, unchanged) with numpy 1.22.4, scipy
//! 1.8.1 (the last scipy whose `interp1d(kind='slinear')` accepts the
//! repeated FAR values that code produces) and scikit-learn 1.1.3 under
//! Python 3.10, on the data that `synthetic_pairs` generates: the same
//! SplitMix64 stream (the workspace's `lgaf-splitmix`, itself pinned to the
//! reference outputs) and f32 arithmetic were written out in Python, the
//! embeddings summed in float64 and normalised with
//! `sklearn.preprocessing.normalize`, as insightface's `test` does.

use lgaf_eval::verification::{evaluate, flip_sum, pair_distances, FOLDS};
use lgaf_splitmix::SplitMix64;

/// Uniform in [-1, 1), exact in f32.
fn uniform(rng: &mut SplitMix64) -> f32 {
    (rng.next_u64() >> 40) as f32 / (1u32 << 23) as f32 - 1.0
}

const DIM: usize = 16;

/// (plain embeddings, flipped-image embeddings, issame): a same pair's second
/// image is the first plus `noise` times uniform noise; the flipped
/// embeddings are half the plain ones plus half fresh noise.
fn synthetic_pairs(pairs: usize, noise: f32, seed: u64) -> (Vec<f32>, Vec<f32>, Vec<bool>) {
    let mut rng = SplitMix64::new(seed);
    let (mut plain, mut flipped, mut issame) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..pairs {
        let same = rng.next_u64() & 1 == 0;
        let a: Vec<f32> = (0..DIM).map(|_| uniform(&mut rng)).collect();
        let b: Vec<f32> = match same {
            true => a.iter().map(|&x| x + noise * uniform(&mut rng)).collect(),
            false => (0..DIM).map(|_| uniform(&mut rng)).collect(),
        };
        let fa: Vec<f32> = a
            .iter()
            .map(|&x| 0.5 * x + 0.5 * uniform(&mut rng))
            .collect();
        let fb: Vec<f32> = b
            .iter()
            .map(|&x| 0.5 * x + 0.5 * uniform(&mut rng))
            .collect();
        plain.extend(a.iter().chain(&b));
        flipped.extend(fa.iter().chain(&fb));
        issame.push(same);
    }
    (plain, flipped, issame)
}

fn assert_close(what: &str, ours: f64, insightface: f64) {
    assert!(
        (ours - insightface).abs() <= 1e-12,
        "{what}: ours {ours:?}, insightface {insightface:?}"
    );
}

#[test]
fn matches_insightface_on_1003_synthetic_pairs() {
    let (plain, flipped, issame) = synthetic_pairs(1003, 0.8, 42);
    assert_eq!(issame.iter().filter(|&&s| s).count(), 540);
    let embeddings = flip_sum(&plain, &flipped).unwrap();
    let distances = pair_distances(&embeddings, DIM).unwrap();
    for (ours, theirs) in
        distances
            .iter()
            .zip([2.701004411616318, 1.9286760871151274, 1.871763549438231])
    {
        assert_close("distance", *ours, theirs);
    }

    let v = evaluate(&distances, &issame, FOLDS).unwrap();

    // calculate_roc's per-fold accuracies: exact ratios (1003 pairs make
    // three folds of 101 and seven of 100).
    let folds: Vec<f64> = v.accuracy.folds.iter().map(|f| f.accuracy).collect();
    let expected = [
        0.9900990099009901,
        0.9405940594059405,
        0.9900990099009901,
        0.97,
        0.98,
        0.98,
        0.98,
        0.99,
        0.98,
        0.99,
    ];
    assert_eq!(folds, expected);
    assert_close("accuracy", v.accuracy.accuracy, 0.979079207920792);
    assert_close("accuracy std", v.accuracy.std, 0.014311986499196449);

    // calculate_val: the interpolated thresholds, then val, val_std, far.
    let thresholds = [
        0.46540800000000004,
        0.4654130000000001,
        0.68942,
        0.46541600000000005,
        0.465418,
        0.465415,
        0.46541600000000005,
        0.465415,
        0.46542700000000004,
        0.465419,
    ];
    for (fold, (ours, theirs)) in v.tar_at_far.folds.iter().zip(thresholds).enumerate() {
        assert_close(&format!("fold {fold} threshold"), ours.threshold, theirs);
    }
    assert_close("val", v.tar_at_far.tar, 0.40210973392647836);
    assert_close("val_std", v.tar_at_far.tar_std, 0.12756013694650603);
    assert_close("far", v.tar_at_far.far, 0.002325581395348837);
}
