//! What the plots and the page derive from a [`History`]: the time axis (minutes since the
//! run's start), the spans of generations (or of processes, for a single-process run),
//! thinned and smoothed series, quantiles, axis ranges, and the wording of durations.

use chrono::TimeDelta;
use lgaf_store::history::{Evaluation, Event, GenerationFormed, Source, Time};
use lgaf_store::History;

/// Points kept in a line: more would only make the SVG heavy, never the plot clearer.
const MAX_POINTS: usize = 1500;

/// A stretch of the run on the timeline: a generation, or a process's life.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Span {
    pub label: String,
    pub from: Time,
    pub to: Time,
}

pub(crate) struct Summary<'a> {
    pub history: &'a History,
    /// The run's first time; the timeline's zero.
    pub origin: Time,
    /// The run's last time.
    pub end: Time,
}

impl<'a> Summary<'a> {
    pub fn new(history: &'a History) -> Self {
        let origin = history.started().unwrap_or_default();
        let end = history.ended().unwrap_or(origin).max(origin);
        Self {
            history,
            origin,
            end,
        }
    }

    /// Minutes from the run's start to `t`.
    pub fn minutes(&self, t: Time) -> f64 {
        (t - self.origin).num_milliseconds() as f64 / 60_000.0
    }

    pub fn wall(&self) -> TimeDelta {
        self.end - self.origin
    }

    pub fn evaluations(&self) -> impl Iterator<Item = &'a Evaluation> + 'a {
        self.history.events.iter().filter_map(|e| match &e.event {
            Event::Evaluation(ev) => Some(ev),
            _ => None,
        })
    }

    /// The events of one kind, with their times.
    pub fn events<'s>(&'s self, kind: &'static str) -> impl Iterator<Item = &'a Event> + 's {
        self.history
            .events
            .iter()
            .map(|e| &e.event)
            .filter(move |e| e.kind() == kind)
    }

    /// The generations, from their `generation_formed` to their `generation_ended` (or the
    /// next one's forming, or the run's end); without any (a single-process run), each
    /// process of rank 0 from its start to the next one's.
    pub fn spans(&self) -> Vec<Span> {
        let formed: Vec<&GenerationFormed> = self
            .events("generation_formed")
            .filter_map(|e| match e {
                Event::GenerationFormed(g) => Some(g),
                _ => None,
            })
            .collect();
        if !formed.is_empty() {
            return formed
                .iter()
                .enumerate()
                .map(|(i, g)| {
                    let ended = self.events("generation_ended").find_map(|e| match e {
                        Event::GenerationEnded(end)
                            if end.generation == g.generation && end.time >= g.time =>
                        {
                            Some(end.time)
                        }
                        _ => None,
                    });
                    let next = formed.get(i + 1).map(|n| n.time);
                    let to = [ended, next]
                        .into_iter()
                        .flatten()
                        .min()
                        .unwrap_or(self.end);
                    let workers = if g.world_size == 1 {
                        "worker"
                    } else {
                        "workers"
                    };
                    Span {
                        label: format!("gen {} · {} {workers}", g.generation, g.world_size),
                        from: g.time,
                        to: to.max(g.time),
                    }
                })
                .collect();
        }
        let starts: Vec<(Time, u64)> = self
            .history
            .segments
            .iter()
            .filter(|s| s.source == Source::Rank0 && s.part == 0)
            .filter_map(|s| s.header.as_ref())
            .map(|h| (h.started, h.resumed_from_step))
            .collect();
        starts
            .iter()
            .enumerate()
            .map(|(i, (from, resumed))| Span {
                label: if *resumed == 0 {
                    format!("process {}", i + 1)
                } else {
                    format!("process {} · from step {resumed}", i + 1)
                },
                from: *from,
                to: starts.get(i + 1).map_or(self.end, |n| n.0).max(*from),
            })
            .collect()
    }

    /// The steps a process resumed from, after the first (where the loss curve continues
    /// from a checkpoint), with the time it started. A process that trained no further (an
    /// evaluation after the last step) resumed nothing.
    pub fn resumes(&self) -> Vec<(u64, Time)> {
        let last_step = self.history.steps.last().map_or(0, |s| s.step);
        self.history
            .segments
            .iter()
            .filter(|s| s.source == Source::Rank0 && s.part == 0)
            .filter_map(|s| s.header.as_ref())
            .filter(|h| h.resumed_from_step > 0 && h.resumed_from_step < last_step)
            .map(|h| (h.resumed_from_step, h.started))
            .collect()
    }
}

/// `points` with non-finite values left out, thinned to at most [`MAX_POINTS`] by
/// averaging consecutive runs of them.
pub(crate) fn thin(points: impl IntoIterator<Item = (f64, f64)>) -> Vec<(f64, f64)> {
    let finite: Vec<(f64, f64)> = points
        .into_iter()
        .filter(|(x, y)| x.is_finite() && y.is_finite())
        .collect();
    if finite.len() <= MAX_POINTS {
        return finite;
    }
    let per = finite.len().div_ceil(MAX_POINTS);
    finite
        .chunks(per)
        .map(|c| {
            let n = c.len() as f64;
            (
                c.iter().map(|p| p.0).sum::<f64>() / n,
                c.iter().map(|p| p.1).sum::<f64>() / n,
            )
        })
        .collect()
}

/// A centred moving average over about a twentieth of the points: the trend of a noisy
/// curve, without the lag of an exponential one.
pub(crate) fn smooth(points: &[(f64, f64)]) -> Vec<(f64, f64)> {
    let half = points.len() / 40;
    if half == 0 {
        return points.to_vec();
    }
    let mut sums = Vec::with_capacity(points.len() + 1);
    sums.push(0.0);
    for p in points {
        sums.push(sums.last().unwrap() + p.1);
    }
    (0..points.len())
        .map(|i| {
            let (lo, hi) = (i.saturating_sub(half), (i + half + 1).min(points.len()));
            (points[i].0, (sums[hi] - sums[lo]) / (hi - lo) as f64)
        })
        .collect()
}

/// The `q` quantile (0..=1) of sorted values, by linear interpolation.
pub(crate) fn quantile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let at = q.clamp(0.0, 1.0) * (sorted.len() - 1) as f64;
    let (lo, hi) = (at.floor() as usize, at.ceil() as usize);
    sorted[lo] + (sorted[hi] - sorted[lo]) * (at - lo as f64)
}

/// An axis range around `values` (finite ones), padded by 5% and never empty.
pub(crate) fn range(values: impl IntoIterator<Item = f64>, floor_zero: bool) -> (f64, f64) {
    let (mut lo, mut hi) = values
        .into_iter()
        .filter(|v| v.is_finite())
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| {
            (lo.min(v), hi.max(v))
        });
    if !lo.is_finite() {
        return (0.0, 1.0);
    }
    if floor_zero && lo > 0.0 {
        lo = 0.0;
    }
    if hi - lo < 1e-12 {
        let pad = if hi.abs() > 1e-12 {
            hi.abs() * 0.1
        } else {
            1.0
        };
        return (lo - pad, hi + pad);
    }
    let pad = (hi - lo) * 0.05;
    if !(floor_zero && lo == 0.0) {
        lo -= pad;
    }
    hi += pad;
    (lo, hi)
}

/// A duration as a person says it: `12.3 s`, `4 min 05 s`, `2 h 03 min`, `3 d 04 h`.
pub(crate) fn duration(d: TimeDelta) -> String {
    let ms = d.num_milliseconds().max(0);
    let s = ms / 1000;
    match s {
        0..60 => format!("{:.1} s", ms as f64 / 1000.0),
        60..3600 => format!("{} min {:02} s", s / 60, s % 60),
        3600..86400 => format!("{} h {:02} min", s / 3600, s % 3600 / 60),
        _ => format!("{} d {:02} h", s / 86400, s % 86400 / 3600),
    }
}

/// Bytes in the largest unit that keeps a number of at least 1: `1.2 GB`.
pub(crate) fn bytes(n: u64) -> String {
    let units = ["B", "kB", "MB", "GB", "TB"];
    let mut value = n as f64;
    let mut unit = 0;
    while value >= 1000.0 && unit < units.len() - 1 {
        value /= 1000.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{value:.1} {}", units[unit])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thinning_keeps_the_ends_and_bounds_the_points() {
        let points: Vec<(f64, f64)> = (0..10_000).map(|i| (i as f64, 2.0 * i as f64)).collect();
        let thin = thin(points);
        assert!(thin.len() <= MAX_POINTS);
        assert!(thin[0].0 < 10.0 && thin.last().unwrap().0 > 9_990.0);
        assert!(thin.iter().all(|(x, y)| (y - 2.0 * x).abs() < 1e-9));
        assert_eq!(super::thin([(0.0, f64::NAN), (1.0, 1.0)]), [(1.0, 1.0)]);
    }

    #[test]
    fn smoothing_flattens_noise_but_keeps_the_trend() {
        let points: Vec<(f64, f64)> = (0..800)
            .map(|i| (i as f64, i as f64 + if i % 2 == 0 { 5.0 } else { -5.0 }))
            .collect();
        let smooth = smooth(&points);
        assert_eq!(smooth.len(), points.len());
        assert!((smooth[400].1 - 400.0).abs() < 1.0, "{:?}", smooth[400]);
    }

    #[test]
    fn quantiles_ranges_and_words() {
        assert_eq!(quantile(&[1.0, 2.0, 3.0, 4.0], 0.5), 2.5);
        assert_eq!(range([2.0, 2.0], false), (1.8, 2.2));
        assert_eq!(range([1.0, 3.0], true).0, 0.0);
        assert_eq!(range([f64::NAN], false), (0.0, 1.0));
        assert_eq!(duration(TimeDelta::milliseconds(12_345)), "12.3 s");
        assert_eq!(duration(TimeDelta::seconds(245)), "4 min 05 s");
        assert_eq!(duration(TimeDelta::seconds(7_380)), "2 h 03 min");
        assert_eq!(bytes(999), "999 B");
        assert_eq!(bytes(1_234_567_890), "1.2 GB");
    }
}
