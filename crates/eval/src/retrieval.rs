//! Identification (TinyFace, SCFace style): each probe is compared by cosine
//! similarity with every gallery entry and every distractor, and the CMC
//! curve says how often the probe's identity is among the `k` most similar.
//!
//! Ties are broken by position, in the order gallery entries (as given)
//! then distractors (as given): among entries of equal similarity an earlier
//! one ranks higher. So a genuine gallery entry wins a tie with a distractor,
//! and the result never depends on sort stability or thread scheduling.

use rayon::prelude::*;

use crate::Error;

/// The ranks at which CMC is usually reported.
pub const CMC_RANKS: [usize; 3] = [1, 5, 20];

/// Row-major embeddings, `dim` values per row.
#[derive(Clone, Copy, Debug)]
pub struct Embeddings<'a> {
    data: &'a [f32],
    dim: usize,
    /// What the rows are ("probes", "gallery", "distractors"), for errors.
    what: &'static str,
}

impl<'a> Embeddings<'a> {
    /// Checks that `data` holds whole rows of finite values.
    pub fn new(data: &'a [f32], dim: usize, what: &'static str) -> Result<Self, Error> {
        if dim == 0 || !data.len().is_multiple_of(dim) {
            return Err(Error::EmbeddingShape {
                what,
                len: data.len(),
                dim,
            });
        }
        if let Some(row) = data
            .chunks_exact(dim)
            .position(|r| r.iter().any(|v| !v.is_finite()))
        {
            return Err(Error::NonFinite { what, row });
        }
        Ok(Embeddings { data, dim, what })
    }

    pub fn rows(&self) -> usize {
        self.data.len() / self.dim
    }

    fn row(&self, i: usize) -> &'a [f32] {
        &self.data[i * self.dim..(i + 1) * self.dim]
    }

    /// Each row with the inverse of its L2 norm (0 for an all-zero row, so
    /// that its cosine similarity with anything is 0).
    fn rows_with_inverse_norms(&self) -> impl Iterator<Item = (&'a [f32], f32)> + '_ {
        (0..self.rows()).map(|i| {
            let row = self.row(i);
            let norm = row
                .iter()
                .map(|&v| f64::from(v) * f64::from(v))
                .sum::<f64>()
                .sqrt();
            let inverse = if norm == 0.0 {
                0.0
            } else {
                (1.0 / norm) as f32
            };
            (row, inverse)
        })
    }
}

/// Embeddings with one identity label per row.
#[derive(Clone, Copy, Debug)]
pub struct Labelled<'a> {
    pub embeddings: Embeddings<'a>,
    pub labels: &'a [u64],
}

impl<'a> Labelled<'a> {
    pub fn new(embeddings: Embeddings<'a>, labels: &'a [u64]) -> Result<Self, Error> {
        if labels.len() != embeddings.rows() {
            return Err(Error::LengthMismatch {
                what: format!("labels for the {} rows", embeddings.what),
                expected: embeddings.rows(),
                found: labels.len(),
            });
        }
        Ok(Labelled { embeddings, labels })
    }
}

/// How many probes found their identity within one rank.
#[derive(Clone, Debug, PartialEq)]
pub struct RankHits {
    pub rank: usize,
    pub hits: usize,
    /// `hits` over all probes, those absent from the gallery included.
    pub rate: f64,
}

/// A cumulative match characteristic.
#[derive(Clone, Debug, PartialEq)]
pub struct Cmc {
    pub probes: usize,
    /// Probes whose identity has no gallery entry: misses at every rank.
    pub absent: usize,
    pub ranks: Vec<RankHits>,
    /// Per probe, the 1-based rank of the first entry of its identity, or
    /// `None` when its identity is absent from the gallery.
    pub first_match: Vec<Option<usize>>,
}

/// CMC of `probes` against `gallery` plus `distractors` (rows without an
/// identity), at each of `ranks`. The embeddings must share a dimension.
pub fn cmc(
    probes: &Labelled,
    gallery: &Labelled,
    distractors: &Embeddings,
    ranks: &[usize],
) -> Result<Cmc, Error> {
    let dim = probes.embeddings.dim;
    for other in [&gallery.embeddings, distractors] {
        if other.dim != dim {
            return Err(Error::LengthMismatch {
                what: format!(
                    "embedding dimension of the {} (that of the probes)",
                    other.what
                ),
                expected: dim,
                found: other.dim,
            });
        }
    }
    let entries: Vec<(&[f32], f32)> = gallery
        .embeddings
        .rows_with_inverse_norms()
        .chain(distractors.rows_with_inverse_norms())
        .collect();
    let probe_rows: Vec<(&[f32], f32)> = probes.embeddings.rows_with_inverse_norms().collect();
    // One probe per task; `collect` keeps the probes' order.
    let first_match: Vec<Option<usize>> = probe_rows
        .par_iter()
        .zip(probes.labels)
        .map(|(&(probe, probe_scale), &label)| {
            let similarities: Vec<f32> = entries
                .iter()
                .map(|&(entry, scale)| dot(probe, entry) * (probe_scale * scale))
                .collect();
            // Distractors (indices past the gallery) never match.
            first_match_rank(&similarities, |i| gallery.labels.get(i) == Some(&label))
        })
        .collect();
    summarise(first_match, ranks)
}

/// The CMC of known first-match ranks (1-based, `None` for a probe whose
/// identity is absent), e.g. from similarities computed elsewhere with
/// [`first_match_rank`]. Rates need at least one probe.
pub fn summarise(first_match: Vec<Option<usize>>, ranks: &[usize]) -> Result<Cmc, Error> {
    let probes = first_match.len();
    if probes == 0 {
        return Err(Error::NoProbes);
    }
    let ranks = ranks
        .iter()
        .map(|&rank| {
            let hits = first_match
                .iter()
                .filter(|m| m.is_some_and(|r| r <= rank))
                .count();
            RankHits {
                rank,
                hits,
                rate: hits as f64 / probes as f64,
            }
        })
        .collect();
    Ok(Cmc {
        probes,
        absent: first_match.iter().filter(|m| m.is_none()).count(),
        ranks,
        first_match,
    })
}

/// The 1-based rank of the best entry for which `is_match` holds, in the
/// order of decreasing similarity with ties broken by index (lower first);
/// `None` when no entry matches. Linear time: no sort.
pub fn first_match_rank(similarities: &[f32], is_match: impl Fn(usize) -> bool) -> Option<usize> {
    // The best match: highest similarity, lowest index among equals.
    let best = (0..similarities.len())
        .filter(|&i| is_match(i))
        .reduce(|a, b| {
            if similarities[b] > similarities[a] {
                b
            } else {
                a
            }
        })?;
    let s = similarities[best];
    let ahead = similarities
        .iter()
        .enumerate()
        .filter(|&(j, &sj)| sj > s || (sj == s && j < best))
        .count();
    Some(ahead + 1)
}

/// A dot product over eight running sums, which the compiler can keep in
/// vector registers (one running sum cannot be reordered); the result is
/// the same on every run.
fn dot(a: &[f32], b: &[f32]) -> f32 {
    const LANES: usize = 8;
    let mut sums = [0.0f32; LANES];
    let (a_chunks, b_chunks) = (a.chunks_exact(LANES), b.chunks_exact(LANES));
    let tail: f32 = a_chunks
        .remainder()
        .iter()
        .zip(b_chunks.remainder())
        .map(|(x, y)| x * y)
        .sum();
    for (x, y) in a_chunks.zip(b_chunks) {
        for lane in 0..LANES {
            sums[lane] += x[lane] * y[lane];
        }
    }
    sums.iter().sum::<f32>() + tail
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A unit vector in the plane at `degrees`.
    fn at(degrees: f32) -> [f32; 2] {
        let r = degrees.to_radians();
        [r.cos(), r.sin()]
    }

    fn rows(angles: &[f32]) -> Vec<f32> {
        angles.iter().flat_map(|&a| at(a)).collect()
    }

    #[test]
    fn ranks_count_more_similar_entries() {
        // Gallery: identity 1 at 0 degrees, 2 at 90, 3 at 180. Distractor at 10.
        // Probe of identity 2 at 20 degrees: similarities 0 deg 0.94, 90 deg 0.34,
        // 180 deg -0.94, distractor 10 deg 0.98 -> identity 2 ranks third.
        // Probe of identity 3 at 170 degrees: 180 is the most similar -> rank 1.
        // Probe of identity 9: absent.
        let gallery_data = rows(&[0.0, 90.0, 180.0]);
        let distractor_data = rows(&[10.0]);
        let probe_data = rows(&[20.0, 170.0, 45.0]);
        let gallery = Labelled::new(
            Embeddings::new(&gallery_data, 2, "gallery").unwrap(),
            &[1, 2, 3],
        )
        .unwrap();
        let probes = Labelled::new(
            Embeddings::new(&probe_data, 2, "probes").unwrap(),
            &[2, 3, 9],
        )
        .unwrap();
        let distractors = Embeddings::new(&distractor_data, 2, "distractors").unwrap();

        let c = cmc(&probes, &gallery, &distractors, &[1, 2, 3]).unwrap();
        assert_eq!(c.first_match, [Some(3), Some(1), None]);
        assert_eq!((c.probes, c.absent), (3, 1));
        let hits: Vec<(usize, usize)> = c.ranks.iter().map(|r| (r.rank, r.hits)).collect();
        assert_eq!(hits, [(1, 1), (2, 1), (3, 2)]);
        assert_eq!(c.ranks[2].rate, 2.0 / 3.0);
    }

    #[test]
    fn ties_go_to_the_earlier_entry() {
        // Entries 0 and 2 tie at 0.5, entry 1 is at 0.9.
        let s = [0.5, 0.9, 0.5];
        assert_eq!(first_match_rank(&s, |i| i == 2), Some(3));
        assert_eq!(first_match_rank(&s, |i| i == 0), Some(2));
        // Two matching entries: the better one counts.
        assert_eq!(first_match_rank(&s, |i| i != 1), Some(2));
        assert_eq!(first_match_rank(&s, |_| false), None);
    }

    #[test]
    fn a_distractor_identical_to_the_match_ranks_after_it() {
        let gallery_data = rows(&[30.0]);
        let distractor_data = rows(&[30.0, 30.0]);
        let probe_data = rows(&[30.0]);
        let gallery =
            Labelled::new(Embeddings::new(&gallery_data, 2, "gallery").unwrap(), &[4]).unwrap();
        let probes =
            Labelled::new(Embeddings::new(&probe_data, 2, "probes").unwrap(), &[4]).unwrap();
        let distractors = Embeddings::new(&distractor_data, 2, "distractors").unwrap();
        let c = cmc(&probes, &gallery, &distractors, &CMC_RANKS).unwrap();
        assert_eq!(c.first_match, [Some(1)]);
    }

    #[test]
    fn dot_products_cover_the_tail() {
        let a: Vec<f32> = (1..=11).map(|v| v as f32).collect();
        let b = vec![1.0f32; 11];
        assert_eq!(dot(&a, &b), 66.0);
        assert_eq!(dot(&a[..3], &a[..3]), 14.0);
    }

    #[test]
    fn inputs_are_checked() {
        let e = Embeddings::new(&[1.0, f32::NAN, 0.0, 1.0], 2, "gallery").unwrap_err();
        assert_eq!(
            e.to_string(),
            "gallery row 0: the embedding holds a non-finite value"
        );
        let e = Embeddings::new(&[1.0, 2.0, 3.0], 2, "probes").unwrap_err();
        assert_eq!(
            e.to_string(),
            "probes: 3 values do not form rows of dimension 2"
        );
        let g = Embeddings::new(&[1.0, 0.0], 2, "gallery").unwrap();
        let e = Labelled::new(g, &[1, 2]).unwrap_err();
        assert_eq!(
            e.to_string(),
            "labels for the gallery rows: expected 1, found 2"
        );
        let probes = Labelled::new(
            Embeddings::new(&[1.0, 0.0, 0.0], 3, "probes").unwrap(),
            &[1],
        )
        .unwrap();
        let gallery = Labelled::new(g, &[1]).unwrap();
        let none = Embeddings::new(&[], 2, "distractors").unwrap();
        assert!(matches!(
            summarise(Vec::new(), &CMC_RANKS),
            Err(Error::NoProbes)
        ));
        let e = cmc(&probes, &gallery, &none, &CMC_RANKS).unwrap_err();
        assert_eq!(
            e.to_string(),
            "embedding dimension of the gallery (that of the probes): expected 3, found 2"
        );
    }
}
