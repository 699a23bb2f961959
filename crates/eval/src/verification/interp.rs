//! scipy's `interp1d(x, y, kind='slinear')` evaluated at one point, as the
//! scipy releases that insightface's `calculate_val` was written against
//! (up to 1.8) compute it.
//!
//! Those releases build a degree-1 B-spline with knots `[x0, x0, ..., xn, xn]`
//! and coefficients `y`, and evaluate it with de Boor's algorithm, which
//! copes with repeated `x` (FAR curves repeat values all the time). Later
//! releases refuse repeated `x` ("Expect x to not have duplicates"), which
//! breaks `calculate_val` outright (insightface issues #2152, #2290); we keep
//! the behaviour its published numbers come from.

/// The value at `at` of the linear spline through `(x[i], y[i])`.
///
/// The segment used is the last one, among `x[i]..x[i + 1]` for
/// `i < x.len() - 1`, that starts at or before `at`; so at a repeated `x` the
/// right-most copy wins. A zero-width segment evaluates to 0, as in scipy's
/// de Boor loop (which zeroes a basis function over an empty knot span): this
/// happens only when `at` equals the last `x` and that value is repeated.
///
/// Callers guarantee what `interp1d` would otherwise check or do: `x` is
/// sorted (a FAR curve over increasing thresholds never decreases), has as
/// many entries as `y` and at least two, and `x[0] <= at <= x[last]`.
pub fn slinear(x: &[f64], y: &[f64], at: f64) -> f64 {
    debug_assert!(x.len() == y.len() && x.len() >= 2);
    debug_assert!(x.windows(2).all(|w| w[0] <= w[1]), "x must be sorted");
    debug_assert!(x[0] <= at && at <= x[x.len() - 1]);
    // Last i in 0..=n-2 with x[i] <= at (there is one since x[0] <= at).
    let i = x[..x.len() - 1]
        .partition_point(|&xi| xi <= at)
        .saturating_sub(1);
    let (x0, x1) = (x[i], x[i + 1]);
    if x0 == x1 {
        return 0.0;
    }
    // The order of operations of scipy's de Boor loop, for equal bits.
    let w = 1.0 / (x1 - x0);
    let left = w * (x1 - at);
    let right = w * (at - x0);
    y[i] * left + y[i + 1] * right
}

#[cfg(test)]
mod tests {
    use super::*;

    const Y: [f64; 5] = [0.0, 1.0, 2.0, 3.0, 4.0];

    /// The expected values are scipy 1.8.1's `interp1d(x, Y, kind='slinear')(at)`.
    #[test]
    fn matches_scipy_on_repeated_x() {
        let cases: [([f64; 5], f64, f64); 6] = [
            ([0.0, 0.0, 0.0, 0.5, 1.0], 0.0, 2.0),
            ([0.0, 0.0, 0.0, 0.5, 1.0], 0.25, 2.5),
            ([0.0, 0.0, 0.5, 1.0, 1.0], 1.0, 0.0),
            ([0.0, 0.0, 0.5, 1.0, 1.0], 0.75, 2.5),
            ([0.0, 0.5, 0.5, 0.5, 1.0], 0.5, 3.0),
            ([0.0, 0.0, 0.0, 0.0, 0.0], 0.0, 0.0),
        ];
        for (x, at, expected) in cases {
            assert_eq!(slinear(&x, &Y, at), expected, "x {x:?} at {at}");
        }
    }

    #[test]
    fn interpolates_linearly_inside_a_segment() {
        let x = [0.0, 0.1, 0.3];
        let y = [10.0, 20.0, 40.0];
        assert!((slinear(&x, &y, 0.2) - 30.0).abs() < 1e-12);
        assert_eq!(slinear(&x, &y, 0.0), 10.0);
        // At the last x the last segment is used, with scipy's rounding:
        // scipy 1.8.1 gives 39.99999999999999 here too.
        assert_eq!(slinear(&x, &y, 0.3), 39.99999999999999);
    }
}
