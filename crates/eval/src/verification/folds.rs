//! The cross-validation folds of insightface's `LFold`.

use std::ops::Range;

use crate::Error;

/// One fold: pairs to choose a threshold on, and pairs to score it on.
#[derive(Clone, Debug, PartialEq)]
pub struct Split {
    pub train: Vec<usize>,
    pub test: Range<usize>,
}

/// `LFold(n_splits=folds, shuffle=False).split(range(pairs))`: for two or
/// more folds sklearn's `KFold` without shuffling (contiguous test folds, the
/// first `pairs % folds` of them one larger); for one fold the whole set is
/// both training and test set.
pub fn splits(pairs: usize, folds: usize) -> Result<Vec<Split>, Error> {
    if folds == 0 || folds > pairs {
        return Err(Error::TooFewPairs { pairs, folds });
    }
    if folds == 1 {
        return Ok(vec![Split {
            train: (0..pairs).collect(),
            test: 0..pairs,
        }]);
    }
    let (base, larger) = (pairs / folds, pairs % folds);
    let mut start = 0;
    Ok((0..folds)
        .map(|fold| {
            let end = start + base + usize::from(fold < larger);
            let split = Split {
                train: (0..start).chain(end..pairs).collect(),
                test: start..end,
            };
            start = end;
            split
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_follow_kfold() {
        // sklearn: KFold(10).split(range(23)) gives test sizes 3,3,3,2,2,2,2,2,2,2.
        let s = splits(23, 10).unwrap();
        let sizes: Vec<usize> = s.iter().map(|f| f.test.len()).collect();
        assert_eq!(sizes, [3, 3, 3, 2, 2, 2, 2, 2, 2, 2]);
        assert_eq!(s[1].test, 3..6);
        assert_eq!(
            s[1].train,
            [0, 1, 2].into_iter().chain(6..23).collect::<Vec<_>>()
        );
        assert_eq!(s[9].test, 21..23);
    }

    #[test]
    fn one_fold_trains_and_tests_on_everything() {
        let s = splits(4, 1).unwrap();
        assert_eq!(
            s,
            [Split {
                train: vec![0, 1, 2, 3],
                test: 0..4
            }]
        );
    }

    #[test]
    fn needs_a_pair_per_fold() {
        let e = splits(9, 10).unwrap_err();
        assert_eq!(
            e.to_string(),
            "9 pairs cannot be split into 10 folds (each fold needs at least one pair)"
        );
        assert!(splits(5, 0).is_err());
    }
}
