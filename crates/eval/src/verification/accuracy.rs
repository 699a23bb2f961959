//! Verification accuracy: insightface's `calculate_roc`.

use super::folds::splits;
use super::pair_set::PairSet;
use super::{accuracy_thresholds, check_pairs, mean_and_std};
use crate::Error;

/// One fold: the threshold chosen on its training pairs and the accuracy of
/// that threshold on its test pairs.
#[derive(Clone, Debug, PartialEq)]
pub struct FoldAccuracy {
    pub threshold: f64,
    pub accuracy: f64,
}

/// Cross-validated verification accuracy.
#[derive(Clone, Debug, PartialEq)]
pub struct Accuracy {
    /// Mean test-fold accuracy (what insightface reports as `Accuracy-Flip`).
    pub accuracy: f64,
    /// Its standard deviation over the folds (numpy's, ddof 0).
    pub std: f64,
    /// Mean of the folds' thresholds.
    pub threshold: f64,
    pub folds: Vec<FoldAccuracy>,
}

/// Per fold, the threshold among [`accuracy_thresholds`] (0, 0.01, ..., 3.99)
/// that classifies most training pairs right (the first such, as
/// `np.argmax`), scored on the test pairs. A pair is predicted "same" when its
/// distance is strictly below the threshold.
pub fn accuracy(distances: &[f64], issame: &[bool], folds: usize) -> Result<Accuracy, Error> {
    check_pairs(distances, issame)?;
    let thresholds = accuracy_thresholds();
    let folds = splits(distances.len(), folds)?
        .into_iter()
        .map(|split| {
            let train = PairSet::new(distances, issame, split.train);
            // All training accuracies share a denominator, so comparing
            // counts picks the same threshold as comparing the ratios.
            let mut best = (thresholds[0], train.correct(thresholds[0]));
            for &t in &thresholds[1..] {
                let correct = train.correct(t);
                if correct > best.1 {
                    best = (t, correct);
                }
            }
            let test = PairSet::new(distances, issame, split.test);
            FoldAccuracy {
                threshold: best.0,
                accuracy: test.correct(best.0) as f64 / test.len() as f64,
            }
        })
        .collect::<Vec<_>>();
    let (accuracy, std) = mean_and_std(folds.iter().map(|f| f.accuracy));
    let (threshold, _) = mean_and_std(folds.iter().map(|f| f.threshold));
    Ok(Accuracy {
        accuracy,
        std,
        threshold,
        folds,
    })
}
