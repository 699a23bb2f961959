//! The report's plots. Each is drawn once, by a function generic over plotters'
//! `DrawingBackend`, and rendered either to SVG text (for the page) or to an RGB bitmap
//! encoded as PNG (for `--png`).
//!
//! Files: `training` (loss and learning rate, throughput, step times, LGF gammas),
//! `evaluation` (accuracy per set, gammas per nuisance factor), `timeline` (generations,
//! faults, recoveries and checkpoints against wall time).

mod evaluation;
mod timeline;
mod training;

use std::io::Cursor;

use plotters::coord::Shift;
use plotters::prelude::*;

use crate::error::ReportError;
use crate::summary::Summary;

/// What a draw function returns: plotters' error for the backend.
pub(crate) type Drawn<DB> = Result<(), DrawingAreaErrorKind<<DB as DrawingBackend>::ErrorType>>;

/// One plot of the report.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Plot {
    Timeline,
    Loss,
    Throughput,
    StepTime,
    Gamma,
    Evaluation,
    GammaByFactor,
}

impl Plot {
    /// In the page's order.
    pub const ALL: [Plot; 7] = [
        Plot::Timeline,
        Plot::Loss,
        Plot::Throughput,
        Plot::StepTime,
        Plot::Gamma,
        Plot::Evaluation,
        Plot::GammaByFactor,
    ];

    /// A short name: the PNG's file stem and the page's element id.
    pub fn id(self) -> &'static str {
        match self {
            Plot::Timeline => "timeline",
            Plot::Loss => "loss",
            Plot::Throughput => "throughput",
            Plot::StepTime => "step-time",
            Plot::Gamma => "gamma",
            Plot::Evaluation => "evaluation",
            Plot::GammaByFactor => "gamma-by-factor",
        }
    }

    /// What it shows, in a sentence, under the plot on the page.
    pub fn caption(self) -> &'static str {
        match self {
            Plot::Timeline => {
                "Steps trained against wall time. Shaded bands are generations (or processes); \
                 red marks lost workers and ended generations, orange bands the time from a \
                 failure to the next generation, blue dots committed checkpoints."
            }
            Plot::Loss => {
                "Training loss (faint: every step; bold: its moving average) and the learning \
                 rate, against the step. Dashed lines mark resumes from a checkpoint."
            }
            Plot::Throughput => {
                "Images per second of the global batch, and the share of each step spent \
                 waiting for data (the loader's share of the step time)."
            }
            Plot::StepTime => {
                "How long steps took (data wait included), with the median and the 95th \
                 percentile."
            }
            Plot::Gamma => {
                "The LGF attention weights, averaged over each batch: how much the fused \
                 feature draws on the local and on the global branch."
            }
            Plot::Evaluation => {
                "Verification accuracy of each evaluation set (10-fold, insightface's \
                 protocol), with its standard deviation over the folds."
            }
            Plot::GammaByFactor => {
                "At the last evaluation: the LGF attention weights on held-out pairs of each \
                 nuisance factor."
            }
        }
    }

    /// Width and height in pixels (the SVG's view box; the PNG's size).
    pub fn size(self) -> (u32, u32) {
        // The page lays the plots out two to a row (the timeline alone) at about these
        // sizes, so their text shows at the size it was measured for.
        match self {
            Plot::Timeline => (1320, 440),
            _ => (660, 400),
        }
    }

    /// Whether the history has what the plot shows.
    pub(crate) fn available(self, s: &Summary) -> bool {
        let h = s.history;
        match self {
            Plot::Timeline => !h.steps.is_empty() || !h.events.is_empty(),
            Plot::Loss | Plot::Throughput | Plot::StepTime => !h.steps.is_empty(),
            Plot::Gamma => h
                .steps
                .iter()
                .any(|s| s.gamma_local.is_some() || s.gamma_global.is_some()),
            Plot::Evaluation => s.evaluations().any(|e| !e.sets.is_empty()),
            Plot::GammaByFactor => evaluation::factor_gammas(s).is_some(),
        }
    }

    fn draw<DB: DrawingBackend>(self, area: &DrawingArea<DB, Shift>, s: &Summary) -> Drawn<DB> {
        area.fill(&WHITE)?;
        match self {
            Plot::Timeline => timeline::draw(area, s),
            Plot::Loss => training::loss(area, s),
            Plot::Throughput => training::throughput(area, s),
            Plot::StepTime => training::step_time(area, s),
            Plot::Gamma => training::gamma(area, s),
            Plot::Evaluation => evaluation::accuracy(area, s),
            Plot::GammaByFactor => evaluation::gamma_by_factor(area, s),
        }?;
        area.present()
    }

    fn failed(self, e: impl std::fmt::Display) -> ReportError {
        ReportError::Plot {
            plot: self.id(),
            reason: e.to_string(),
        }
    }

    /// The plot as an SVG document.
    pub(crate) fn svg(self, s: &Summary) -> Result<String, ReportError> {
        let mut out = String::new();
        {
            let area = SVGBackend::with_string(&mut out, self.size()).into_drawing_area();
            self.draw(&area, s).map_err(|e| self.failed(e))?;
        }
        Ok(out)
    }

    /// The plot as a PNG file's bytes.
    pub(crate) fn png(self, s: &Summary) -> Result<Vec<u8>, ReportError> {
        let (w, h) = self.size();
        let mut rgb = vec![0u8; w as usize * h as usize * 3];
        {
            let area = BitMapBackend::with_buffer(&mut rgb, (w, h)).into_drawing_area();
            self.draw(&area, s).map_err(|e| self.failed(e))?;
        }
        let image = image::RgbImage::from_raw(w, h, rgb)
            .expect("the buffer holds exactly width x height RGB pixels");
        let mut png = Vec::new();
        image
            .write_to(&mut Cursor::new(&mut png), image::ImageFormat::Png)
            .map_err(|source| ReportError::Png {
                plot: self.id(),
                source,
            })?;
        Ok(png)
    }
}

/// A line's legend mark: a short stroke in its style.
pub(crate) fn legend_line(
    color: RGBColor,
    width: u32,
) -> impl Fn((i32, i32)) -> PathElement<(i32, i32)> {
    move |(x, y)| PathElement::new(vec![(x, y), (x + 22, y)], color.stroke_width(width))
}

/// A legend mark that is a filled square.
pub(crate) fn legend_box(color: RGBAColor) -> impl Fn((i32, i32)) -> Rectangle<(i32, i32)> {
    move |(x, y)| Rectangle::new([(x, y - 6), (x + 16, y + 6)], color.filled())
}

/// Draws the legend of a chart in the report's style.
macro_rules! legend {
    ($chart:expr, $position:expr) => {
        $chart
            .configure_series_labels()
            .position($position)
            .margin(10)
            .legend_area_size(28)
            .label_font($crate::style::legend())
            .background_style(plotters::style::WHITE.mix(0.9))
            .border_style($crate::style::GRID)
            .draw()
    };
}
pub(crate) use legend;

/// The mesh (grid and axes) of a chart in the report's style.
macro_rules! mesh {
    ($chart:expr) => {
        $chart
            .configure_mesh()
            .bold_line_style($crate::style::GRID)
            .light_line_style(plotters::style::TRANSPARENT)
            .axis_style($crate::style::AXIS)
            .label_style($crate::style::label())
            .axis_desc_style($crate::style::axis_title())
    };
}
pub(crate) use mesh;

/// Where a chart's data lies, to put its legend in the corner with the least of it.
#[derive(Default)]
pub(crate) struct Occupancy {
    /// Points as fractions of the plot (0..1, x to the right, y up).
    points: Vec<(f64, f64)>,
}

impl Occupancy {
    /// Adds points of a series drawn on the axes of ranges `x` and `y`.
    pub fn add(&mut self, points: &[(f64, f64)], x: (f64, f64), y: (f64, f64)) {
        let fraction = |v: f64, r: (f64, f64)| (v - r.0) / (r.1 - r.0).max(f64::MIN_POSITIVE);
        self.points.extend(
            points
                .iter()
                .map(|&(px, py)| (fraction(px, x), fraction(py, y))),
        );
    }

    /// Adds a filled area (or bars) from each point down to `base`: the space under it is
    /// taken too.
    pub fn add_filled(&mut self, points: &[(f64, f64)], base: f64, x: (f64, f64), y: (f64, f64)) {
        for &(px, py) in points {
            let column: Vec<(f64, f64)> = (0..=4)
                .map(|i| (px, base + (py - base) * i as f64 / 4.0))
                .collect();
            self.add(&column, x, y);
        }
    }

    /// Where the legend goes, and by how much to stretch the y axis (the span above its
    /// bottom) for it: the emptiest corner if one is (nearly) empty; otherwise the upper
    /// right, over headroom made by stretching the axis by half.
    pub fn placement(&self) -> (SeriesLabelPosition, f64) {
        let (corner, count) = self.corner();
        if count * 100 <= self.points.len() {
            (corner, 1.0)
        } else {
            (SeriesLabelPosition::UpperRight, 1.5)
        }
    }

    /// The corner (half the width, 30% of the height) holding the fewest points, and how
    /// many; on a tie the first of upper right, lower right, upper left, lower left.
    fn corner(&self) -> (SeriesLabelPosition, usize) {
        let corners = [
            (SeriesLabelPosition::UpperRight, true, true),
            (SeriesLabelPosition::LowerRight, true, false),
            (SeriesLabelPosition::UpperLeft, false, true),
            (SeriesLabelPosition::LowerLeft, false, false),
        ];
        let count = |right: bool, upper: bool| {
            self.points
                .iter()
                .filter(|(x, y)| {
                    (if right { *x > 0.5 } else { *x < 0.5 })
                        && (if upper { *y > 0.7 } else { *y < 0.3 })
                })
                .count()
        };
        corners
            .into_iter()
            .map(|(position, right, upper)| (position, count(right, upper)))
            .min_by_key(|(_, count)| *count)
            .expect("four corners")
    }
}

/// `range` with its span above the bottom stretched by `factor` (room for a legend).
pub(crate) fn stretch(range: (f64, f64), factor: f64) -> (f64, f64) {
    (range.0, range.0 + (range.1 - range.0) * factor)
}

/// A step count for an axis label: `1200`, `15k`, `1.2M`.
pub(crate) fn step_label(v: &f64) -> String {
    let a = v.abs();
    if a >= 1e6 {
        format!("{:.1}M", v / 1e6)
    } else if a >= 1e4 {
        format!("{:.0}k", v / 1e3)
    } else {
        format!("{v:.0}")
    }
}

/// A value for an axis label with as many digits as its range needs.
pub(crate) fn value_label(range: (f64, f64)) -> impl Fn(&f64) -> String {
    let span = (range.1 - range.0).abs();
    let digits = if span >= 100.0 {
        0
    } else if span >= 1.0 {
        1
    } else if span > 0.0 {
        (-(span.log10().floor()) as usize + 1).min(6)
    } else {
        2
    };
    move |v: &f64| format!("{v:.digits$}")
}
