//! insightface's verification protocol (`eval/verification.py` of
//! arcface_torch: `test`, `evaluate`, `calculate_roc`, `calculate_val`).
//!
//! From pair distances ([`pair_distances`], after [`flip_sum`]):
//! * [`accuracy`]: 10-fold cross-validated accuracy over the thresholds
//!   `np.arange(0, 4, 0.01)`;
//! * [`tar_at_far`]: TAR at FAR 1e-3 over the thresholds
//!   `np.arange(0, 4, 0.001)`;
//! * [`evaluate`]: both, as insightface's `evaluate` does.
//!
//! Everything is computed in f64, as numpy does. Folds are sklearn's `KFold`
//! without shuffling. Means are plain sums where numpy sums pairwise, so
//! results may differ from numpy's in the last bits.

mod accuracy;
mod distance;
mod folds;
mod interp;
mod pair_set;
mod tar;

pub use accuracy::{accuracy, Accuracy, FoldAccuracy};
pub use distance::{flip_sum, pair_distances};
pub use folds::{splits, Split};
pub use interp::slinear;
pub use tar::{tar_at_far, FoldTar, TarAtFar};

use crate::Error;

/// insightface's number of folds.
pub const FOLDS: usize = 10;
/// The FAR at which insightface reports TAR (`val`).
pub const FAR_TARGET: f64 = 1e-3;

/// `np.arange(0, 4, 0.01)`: 0, 0.01, ..., 3.99 (numpy fills `i * step`).
pub fn accuracy_thresholds() -> Vec<f64> {
    (0..400).map(|i| f64::from(i) * 0.01).collect()
}

/// `np.arange(0, 4, 0.001)`: 0, 0.001, ..., 3.999.
pub fn tar_thresholds() -> Vec<f64> {
    (0..4000).map(|i| f64::from(i) * 0.001).collect()
}

/// Accuracy and TAR@FAR of one verification set.
#[derive(Clone, Debug, PartialEq)]
pub struct Verification {
    pub accuracy: Accuracy,
    pub tar_at_far: TarAtFar,
}

/// insightface's `evaluate` on pair distances: [`accuracy`] and
/// [`tar_at_far`] at [`FAR_TARGET`], both over `folds` folds.
pub fn evaluate(distances: &[f64], issame: &[bool], folds: usize) -> Result<Verification, Error> {
    Ok(Verification {
        accuracy: accuracy(distances, issame, folds)?,
        tar_at_far: tar_at_far(distances, issame, folds, FAR_TARGET)?,
    })
}

fn check_pairs(distances: &[f64], issame: &[bool]) -> Result<(), Error> {
    if distances.len() != issame.len() {
        return Err(Error::LengthMismatch {
            what: format!("issame flags for {} pair distances", distances.len()),
            expected: distances.len(),
            found: issame.len(),
        });
    }
    Ok(())
}

/// Mean and numpy's standard deviation (ddof 0) of a non-empty sequence.
fn mean_and_std(values: impl Iterator<Item = f64> + Clone) -> (f64, f64) {
    let n = values.clone().count() as f64;
    let mean = values.clone().sum::<f64>() / n;
    let variance = values.map(|v| (v - mean) * (v - mean)).sum::<f64>() / n;
    (mean, variance.sqrt())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-12
    }

    #[test]
    fn thresholds_match_numpy_arange() {
        let t = accuracy_thresholds();
        assert_eq!((t.len(), t[0], t[1], t[399]), (400, 0.0, 0.01, 3.99));
        let t = tar_thresholds();
        assert_eq!((t.len(), t[1], t[3999]), (4000, 0.001, 3.999));
        // numpy's value at step 35 is 35 * 0.01, one ulp off the literal 0.35.
        assert_eq!(accuracy_thresholds()[35], 35.0 * 0.01);
        assert_ne!(accuracy_thresholds()[35], 0.35);
    }

    #[test]
    fn separable_distances_verify_perfectly() {
        let issame: Vec<bool> = (0..100).map(|i| i % 2 == 0).collect();
        let dist: Vec<f64> = issame.iter().map(|&s| if s { 0.5 } else { 1.5 }).collect();
        let a = accuracy(&dist, &issame, FOLDS).unwrap();
        assert_eq!((a.accuracy, a.std), (1.0, 0.0));
        // The first threshold above 0.5 (strictly less-than): 0.51.
        assert!(a.folds.iter().all(|f| f.threshold == 51.0 * 0.01), "{a:?}");
        assert!(close(a.threshold, 0.51));
    }

    #[test]
    fn folds_are_contiguous_and_scored_on_held_out_pairs() {
        // 20 pairs, 10 folds of 2. Fold 0 holds the only hard pairs: a same
        // pair at 3.0 and a different pair at 0.1. Every training set holds
        // same pairs at 1.0 and different ones at 2.0 (fold 0's training set
        // only those); other training sets also hold the two hard pairs,
        // which no threshold gets both right, so their best threshold is the
        // first above 1.0: 1.01. Fold 0: 0/2 right, the others 2/2:
        // mean 0.9, std sqrt(0.1 * 0.81 + 0.9 * 0.01) = 0.3.
        let issame: Vec<bool> = (0..20).map(|i| i % 2 == 0).collect();
        let mut dist: Vec<f64> = issame.iter().map(|&s| if s { 1.0 } else { 2.0 }).collect();
        dist[0] = 3.0;
        dist[1] = 0.1;
        let a = accuracy(&dist, &issame, FOLDS).unwrap();
        assert!(close(a.accuracy, 0.9) && close(a.std, 0.3), "{a:?}");
        assert_eq!(
            a.folds[0],
            FoldAccuracy {
                threshold: 101.0 * 0.01,
                accuracy: 0.0
            }
        );
        assert!(a.folds[1..].iter().all(|f| f.accuracy == 1.0));
    }

    #[test]
    fn ties_choose_the_first_best_threshold() {
        // Same pairs at 0.2, different pairs at 0.3: thresholds 0.21..0.30
        // are all perfect; np.argmax takes the first, 0.21.
        let issame = [true, false, true, false];
        let dist = [0.2, 0.3, 0.2, 0.3];
        let a = accuracy(&dist, &issame, 2).unwrap();
        assert!(a.folds.iter().all(|f| f.threshold == 21.0 * 0.01), "{a:?}");
    }

    #[test]
    fn tar_at_far_interpolates_the_training_far_curve() {
        // 2 folds of 10 pairs, both alike: same pairs at 0.1, different pairs
        // at 0.0505, 0.1505, 0.2505, 0.3505, 0.4505 (between thresholds).
        let mut dist = Vec::new();
        let mut issame = Vec::new();
        for _fold in 0..2 {
            for different in [0.0505, 0.1505, 0.2505, 0.3505, 0.4505] {
                dist.extend([0.1, different]);
                issame.extend([true, false]);
            }
        }
        // The training FAR is 0.2 at thresholds 0.051..=0.150 and 0.4 at
        // 0.151..=0.250. Target 0.25 lies on the segment from (0.2, 0.150)
        // to (0.4, 0.151), a quarter of the way: threshold 0.15025.
        let t = tar_at_far(&dist, &issame, 2, 0.25).unwrap();
        for fold in &t.folds {
            assert!(close(fold.threshold, 0.15025), "{t:?}");
            // Test pairs below 0.15025: every same pair, one different pair.
            assert_eq!((fold.tar, fold.far), (1.0, 0.2));
        }
        assert_eq!((t.tar, t.tar_std, t.far), (1.0, 0.0, 0.2));
    }

    #[test]
    fn an_unreachable_far_gives_threshold_zero() {
        // Different pairs all at 5.0, beyond every threshold: training FAR is
        // 0 everywhere, below the target, so the threshold is 0.0 and nothing
        // is accepted.
        let dist = [0.5, 5.0, 0.5, 5.0];
        let issame = [true, false, true, false];
        let t = tar_at_far(&dist, &issame, 2, FAR_TARGET).unwrap();
        assert!(t.folds.iter().all(|f| *f
            == FoldTar {
                threshold: 0.0,
                tar: 0.0,
                far: 0.0
            }));
    }

    #[test]
    fn far_target_zero_uses_the_last_threshold_with_no_false_accepts() {
        // FAR is 0 up to threshold 0.300 (different pairs at 0.3005) and 1
        // from 0.301; at target 0 scipy's segment starts at the last 0 (0.300).
        let dist = [0.1, 0.3005, 0.1, 0.3005];
        let issame = [true, false, true, false];
        let t = tar_at_far(&dist, &issame, 2, 0.0).unwrap();
        assert!(
            t.folds
                .iter()
                .all(|f| f.threshold == 300.0 * 0.001 && f.tar == 1.0 && f.far == 0.0),
            "{t:?}"
        );
    }

    #[test]
    fn tar_needs_both_kinds_of_pairs_in_every_set() {
        // Fold 1's test set (pairs 2, 3) holds only same pairs.
        let dist = [0.1, 0.5, 0.1, 0.1];
        let issame = [true, false, true, true];
        let e = tar_at_far(&dist, &issame, 2, FAR_TARGET).unwrap_err();
        assert_eq!(e.to_string(), "fold 0: its training set has no different-identity pairs, so TAR and FAR are undefined");
        assert!(matches!(
            tar_at_far(&dist, &issame, 2, 1.5),
            Err(Error::FarTarget(t)) if t == 1.5
        ));
    }

    #[test]
    fn lengths_must_agree() {
        let e = accuracy(&[0.1, 0.2], &[true], 1).unwrap_err();
        assert_eq!(
            e.to_string(),
            "issame flags for 2 pair distances: expected 2, found 1"
        );
    }

    #[test]
    fn nan_distances_are_never_accepted() {
        // As np.less(nan, t) is False: a NaN same pair is always wrong, a NaN
        // different pair always right.
        let dist = [f64::NAN, f64::NAN, 0.1, 0.9];
        let issame = [true, false, true, false];
        let a = accuracy(&dist, &issame, 1).unwrap();
        assert_eq!(a.accuracy, 0.75);
    }
}
