//! Counting accepted pairs at many thresholds.

/// The distances of a subset of pairs, split by label and sorted, so that the
/// number of pairs below a threshold is a binary search rather than a scan.
///
/// A pair is accepted at threshold `t` when `distance < t` (numpy's `less`),
/// so a NaN distance is never accepted: such pairs count in the totals but
/// are left out of the sorted lists.
pub struct PairSet {
    same: Vec<f64>,
    different: Vec<f64>,
    n_same: usize,
    n_different: usize,
}

impl PairSet {
    /// The pairs `indices` of `distances` / `issame` (of equal lengths).
    pub fn new(
        distances: &[f64],
        issame: &[bool],
        indices: impl IntoIterator<Item = usize>,
    ) -> Self {
        let (mut same, mut different) = (Vec::new(), Vec::new());
        let (mut n_same, mut n_different) = (0, 0);
        for i in indices {
            let d = distances[i];
            let (sorted, count) = match issame[i] {
                true => (&mut same, &mut n_same),
                false => (&mut different, &mut n_different),
            };
            *count += 1;
            if !d.is_nan() {
                sorted.push(d);
            }
        }
        same.sort_by(f64::total_cmp);
        different.sort_by(f64::total_cmp);
        PairSet {
            same,
            different,
            n_same,
            n_different,
        }
    }

    pub fn len(&self) -> usize {
        self.n_same + self.n_different
    }

    pub fn n_same(&self) -> usize {
        self.n_same
    }

    pub fn n_different(&self) -> usize {
        self.n_different
    }

    /// True accepts at `threshold`.
    pub fn accepted_same(&self, threshold: f64) -> usize {
        self.same.partition_point(|&d| d < threshold)
    }

    /// False accepts at `threshold`.
    pub fn accepted_different(&self, threshold: f64) -> usize {
        self.different.partition_point(|&d| d < threshold)
    }

    /// True accepts plus true rejects at `threshold`.
    pub fn correct(&self, threshold: f64) -> usize {
        self.accepted_same(threshold) + self.n_different - self.accepted_different(threshold)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_match_a_scan_with_strict_less() {
        let d = [0.5, f64::NAN, 0.2, 0.5, 1.0, -f64::NAN, 0.3];
        let s = [true, true, false, false, true, false, true];
        let set = PairSet::new(&d, &s, 0..d.len());
        assert_eq!((set.n_same(), set.n_different(), set.len()), (4, 3, 7));
        for t in [0.0, 0.2, 0.25, 0.5, 0.51, 1.0, 2.0, f64::INFINITY] {
            let scan = |same: bool| (0..d.len()).filter(|&i| s[i] == same && d[i] < t).count();
            assert_eq!(set.accepted_same(t), scan(true), "t {t}");
            assert_eq!(set.accepted_different(t), scan(false), "t {t}");
            assert_eq!(set.correct(t), scan(true) + 3 - scan(false), "t {t}");
        }
    }

    #[test]
    fn takes_only_the_given_indices() {
        let set = PairSet::new(&[0.1, 0.2, 0.3], &[true, false, true], [0, 2]);
        assert_eq!((set.n_same(), set.n_different()), (2, 0));
        assert_eq!(set.accepted_same(0.25), 1);
    }
}
