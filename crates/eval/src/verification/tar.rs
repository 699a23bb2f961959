//! True accept rate at a false accept rate: insightface's `calculate_val`.

use super::folds::splits;
use super::interp::slinear;
use super::pair_set::PairSet;
use super::{check_pairs, mean_and_std, tar_thresholds};
use crate::Error;

/// One fold: the threshold interpolated on its training pairs, and the TAR
/// and FAR it gives on its test pairs.
#[derive(Clone, Debug, PartialEq)]
pub struct FoldTar {
    pub threshold: f64,
    pub tar: f64,
    pub far: f64,
}

/// Cross-validated TAR at a target FAR (insightface's `val, val_std, far`).
#[derive(Clone, Debug, PartialEq)]
pub struct TarAtFar {
    pub far_target: f64,
    /// Mean test-fold TAR (`val`).
    pub tar: f64,
    /// Its standard deviation over the folds (numpy's, ddof 0).
    pub tar_std: f64,
    /// Mean test-fold FAR.
    pub far: f64,
    pub folds: Vec<FoldTar>,
}

/// Per fold: the FAR of each of [`tar_thresholds`] (0, 0.001, ..., 3.999) on
/// the training pairs; the threshold where that curve reaches `far_target`
/// by scipy's `interp1d(far, thresholds, kind='slinear')` (see
/// [`slinear`](super::interp::slinear) for repeated FAR values), or 0 when the
/// curve never reaches it; then TAR and FAR of that threshold on the test
/// pairs.
///
/// Like insightface, this needs same- and different-identity pairs in every
/// training and test set: insightface divides by zero otherwise, and this
/// returns [`Error::MissingPairKind`].
pub fn tar_at_far(
    distances: &[f64],
    issame: &[bool],
    folds: usize,
    far_target: f64,
) -> Result<TarAtFar, Error> {
    check_pairs(distances, issame)?;
    if !(0.0..=1.0).contains(&far_target) {
        return Err(Error::FarTarget(far_target));
    }
    let thresholds = tar_thresholds();
    let folds = splits(distances.len(), folds)?
        .into_iter()
        .enumerate()
        .map(|(fold, split)| {
            let train = PairSet::new(distances, issame, split.train);
            check_kinds(&train, fold, "training")?;
            let far_train: Vec<f64> = thresholds
                .iter()
                .map(|&t| train.accepted_different(t) as f64 / train.n_different() as f64)
                .collect();
            let reached = far_train.iter().copied().fold(f64::NEG_INFINITY, f64::max) >= far_target;
            let threshold = match reached {
                true => slinear(&far_train, &thresholds, far_target),
                false => 0.0,
            };
            let test = PairSet::new(distances, issame, split.test);
            check_kinds(&test, fold, "test")?;
            Ok(FoldTar {
                threshold,
                tar: test.accepted_same(threshold) as f64 / test.n_same() as f64,
                far: test.accepted_different(threshold) as f64 / test.n_different() as f64,
            })
        })
        .collect::<Result<Vec<_>, Error>>()?;
    let (tar, tar_std) = mean_and_std(folds.iter().map(|f| f.tar));
    let (far, _) = mean_and_std(folds.iter().map(|f| f.far));
    Ok(TarAtFar {
        far_target,
        tar,
        tar_std,
        far,
        folds,
    })
}

fn check_kinds(set: &PairSet, fold: usize, split: &'static str) -> Result<(), Error> {
    let missing = if set.n_same() == 0 {
        "same-identity"
    } else if set.n_different() == 0 {
        "different-identity"
    } else {
        return Ok(());
    };
    Err(Error::MissingPairKind {
        fold,
        split,
        kind: missing,
    })
}
