//! From embeddings to pair distances, as insightface's `test` and
//! `calculate_roc` compute them (in float64, like numpy).

use crate::Error;

/// `embeddings_list[0] + embeddings_list[1]`: the embeddings of the images
/// plus those of their horizontal flips, summed in float64.
pub fn flip_sum(plain: &[f32], flipped: &[f32]) -> Result<Vec<f64>, Error> {
    if plain.len() != flipped.len() {
        return Err(Error::LengthMismatch {
            what: "values of the flipped images' embeddings".into(),
            expected: plain.len(),
            found: flipped.len(),
        });
    }
    Ok(plain
        .iter()
        .zip(flipped)
        .map(|(&a, &b)| f64::from(a) + f64::from(b))
        .collect())
}

/// Squared L2 distances between rows `2i` and `2i + 1` of `embeddings`
/// (row-major, `dim` values per row) after L2-normalising every row as
/// `sklearn.preprocessing.normalize` does: an all-zero row stays zero.
pub fn pair_distances<T: Copy + Into<f64>>(
    embeddings: &[T],
    dim: usize,
) -> Result<Vec<f64>, Error> {
    if dim == 0 || !embeddings.len().is_multiple_of(dim) {
        return Err(Error::EmbeddingShape {
            what: "verification embeddings",
            len: embeddings.len(),
            dim,
        });
    }
    let rows = embeddings.len() / dim;
    if !rows.is_multiple_of(2) {
        return Err(Error::UnpairedRows { rows });
    }
    let normalised = |row: &[T]| -> Vec<f64> {
        let values: Vec<f64> = row.iter().map(|&v| v.into()).collect();
        let norm = values.iter().map(|v| v * v).sum::<f64>().sqrt();
        let scale = if norm == 0.0 { 1.0 } else { norm };
        values.into_iter().map(|v| v / scale).collect()
    };
    Ok(embeddings
        .chunks_exact(2 * dim)
        .map(|pair| {
            let (a, b) = (normalised(&pair[..dim]), normalised(&pair[dim..]));
            a.iter().zip(&b).map(|(x, y)| (x - y) * (x - y)).sum()
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn distances_are_squared_l2_of_unit_rows() {
        // Rows: (2, 0), (0, 3) -> unit vectors at right angles: distance 2.
        // (0.6, 0.8) twice -> 0. (0, 0) with (1, 0): the zero row stays zero -> 1.
        let e = [
            2.0f32, 0.0, 0.0, 3.0, 0.6, 0.8, 0.6, 0.8, 0.0, 0.0, 1.0, 0.0,
        ];
        let d = pair_distances(&e, 2).unwrap();
        assert_eq!(d.len(), 3);
        assert!((d[0] - 2.0).abs() < 1e-15 && d[1].abs() < 1e-15, "{d:?}");
        assert_eq!(d[2], 1.0);
    }

    #[test]
    fn flip_sum_adds_in_f64() {
        let s = flip_sum(&[1.0, 16_777_216.0], &[2.0, 1.0]).unwrap();
        // 2^24 + 1 is not an f32 but is an f64.
        assert_eq!(s, [3.0, 16_777_217.0]);
        assert!(flip_sum(&[1.0], &[]).is_err());
    }

    #[test]
    fn shapes_are_checked() {
        let e = pair_distances(&[0.0f64; 5], 2).unwrap_err();
        assert_eq!(
            e.to_string(),
            "verification embeddings: 5 values do not form rows of dimension 2"
        );
        let e = pair_distances(&[0.0f64; 6], 2).unwrap_err();
        assert_eq!(
            e.to_string(),
            "3 embedding rows do not form pairs (rows 2i and 2i + 1)"
        );
    }
}
