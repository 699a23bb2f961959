//! The report's colours and text styles, shared by every plot and the page so that a series
//! has one colour everywhere (the loss is always blue, a lost worker always red).

use plotters::style::{Color, FontDesc, FontStyle, IntoFont, RGBColor, TextStyle};

use crate::font::FAMILY;

// Tableau 10: distinct for the common colour blindnesses, and readable on white.
pub const BLUE: RGBColor = RGBColor(31, 119, 180);
pub const ORANGE: RGBColor = RGBColor(255, 127, 14);
pub const GREEN: RGBColor = RGBColor(44, 160, 44);
pub const RED: RGBColor = RGBColor(214, 39, 40);
pub const PURPLE: RGBColor = RGBColor(148, 103, 189);
pub const BROWN: RGBColor = RGBColor(140, 86, 75);
pub const PINK: RGBColor = RGBColor(227, 119, 194);
pub const GREY: RGBColor = RGBColor(127, 127, 127);
pub const OLIVE: RGBColor = RGBColor(188, 189, 34);
pub const CYAN: RGBColor = RGBColor(23, 190, 207);
pub const INK: RGBColor = RGBColor(34, 34, 34);
pub const GRID: RGBColor = RGBColor(232, 232, 232);
pub const AXIS: RGBColor = RGBColor(90, 90, 90);

/// Evaluation sets take these in order of first appearance.
pub const SERIES: [RGBColor; 10] = [
    BLUE, ORANGE, GREEN, RED, PURPLE, BROWN, PINK, GREY, OLIVE, CYAN,
];

pub const LOSS: RGBColor = BLUE;
pub const LR: RGBColor = ORANGE;
pub const THROUGHPUT: RGBColor = GREEN;
pub const DATA_WAIT: RGBColor = RED;
pub const STEP_TIME: RGBColor = PURPLE;
pub const GAMMA_LOCAL: RGBColor = CYAN;
pub const GAMMA_GLOBAL: RGBColor = PINK;
pub const CHECKPOINT: RGBColor = BLUE;
pub const REGISTERED: RGBColor = GREEN;
pub const LOST: RGBColor = RED;
pub const RECOVERY: RGBColor = ORANGE;
pub const EVALUATION: RGBColor = PURPLE;
pub const SKIPPED: RGBColor = RED;

/// CSS `#rrggbb` of a colour, for the page.
pub fn css(c: RGBColor) -> String {
    format!("#{:02x}{:02x}{:02x}", c.0, c.1, c.2)
}

pub fn font(size: f64) -> FontDesc<'static> {
    (FAMILY, size).into_font()
}

pub fn title() -> TextStyle<'static> {
    (FAMILY, 20.0, FontStyle::Bold).into_font().color(&INK)
}

pub fn label() -> TextStyle<'static> {
    font(13.0).color(&AXIS)
}

pub fn axis_title() -> TextStyle<'static> {
    font(14.0).color(&INK)
}

pub fn legend() -> TextStyle<'static> {
    font(13.0).color(&INK)
}

/// A note written inside a plot (a marker's label, "no data").
pub fn note() -> TextStyle<'static> {
    font(12.0).color(&AXIS)
}

/// The faint version of a colour, for raw data behind its smoothed line, and bands.
pub fn faint(c: RGBColor, alpha: f64) -> plotters::style::RGBAColor {
    c.mix(alpha)
}
