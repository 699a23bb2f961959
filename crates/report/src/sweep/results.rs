//! The schema of a sweep's `results.json`: what `lgaf sweep` writes after every finished run
//! and reads back to resume, one [`RunResult`] per point and seed.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::ReportError;

/// The version of this schema, the file's `format` field.
pub const FORMAT: u32 = 1;

/// The whole file.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SweepResults {
    /// [`FORMAT`].
    pub format: u32,
    /// The grid's tables in file order, each with its points: the report's tables.
    pub groups: Vec<Group>,
    /// The seeds each point runs with: the summary counts runs of these only (a run of
    /// another seed, from an earlier sweep with more seeds, is kept but not counted).
    #[serde(default)]
    pub seeds: Vec<u64>,
    /// Finished runs, in the order they finished.
    pub runs: Vec<RunResult>,
}

impl Default for SweepResults {
    fn default() -> Self {
        Self {
            format: FORMAT,
            groups: Vec::new(),
            seeds: Vec::new(),
            runs: Vec::new(),
        }
    }
}

/// One table of the grid: the cartesian product of its keys' values.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Group {
    pub name: String,
    pub points: Vec<Point>,
}

/// One configuration of the grid.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Point {
    /// Identifies the resolved configuration (seed and storage aside): two grid entries that
    /// resolve to the same configuration are one point, trained once.
    pub key: String,
    /// The overrides as `key=value`, joined by spaces (`model.fusion=lgf model.heads=4`).
    pub label: String,
    /// Dotted config key -> the value the grid gives it.
    pub overrides: BTreeMap<String, serde_json::Value>,
}

/// One trained and evaluated (point, seed).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunResult {
    /// [`Point::key`].
    pub point: String,
    /// [`Point::label`], for a reader of the file.
    pub label: String,
    /// `train.seed` of this run.
    pub seed: u64,
    /// The run's name in the sweep's store (`<out>/store`).
    pub run_id: String,
    /// The resolved training config, as `lgaf train --config` reads it (TOML's structure).
    pub config: serde_json::Value,
    /// Steps trained (the committed checkpoint evaluated).
    pub steps: u64,
    /// Wall time of the training process (of its last start, when it resumed).
    pub train_seconds: f64,
    pub eval_seconds: f64,
    /// The held-out mixed set first, then one set per nuisance factor, then the `.bin` files.
    pub sets: Vec<SetResult>,
}

/// One evaluation set of a run.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SetResult {
    /// `mixed`, a nuisance factor (`clean`, `missing`, `deformed`, `low_quality`), or a
    /// `.bin` file's stem.
    pub name: String,
    pub kind: SetKind,
    /// Verification accuracy (fraction), mean over insightface's 10 folds.
    pub accuracy: f64,
    /// Its standard deviation over the folds.
    pub std: f64,
    /// How LGF weighted its branches on the set's images (held-out sets under `lgf` only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attention: Option<Attention>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SetKind {
    /// Held-out synthetic identities, pairs of mixed nuisance factors.
    Mixed,
    /// Held-out synthetic identities, pairs of one nuisance factor.
    Factor,
    /// A verification `.bin` file.
    Bin,
}

/// Means over a set's images.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Attention {
    pub gamma_local: f64,
    pub gamma_global: f64,
    /// Mean ||local|| and ||global||: the norms the weights come from.
    pub norm_local: f64,
    pub norm_global: f64,
    /// Pearson correlation over the images of gamma_local with ||global|| (negative: the
    /// local branch takes over as the global feature weakens); absent when either is constant.
    pub local_weight_vs_global_norm: Option<f64>,
}

impl SweepResults {
    /// Reads `path`; a missing file is an empty sweep.
    pub fn load(path: &Path) -> Result<Self, ReportError> {
        let text = match std::fs::read_to_string(path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Self::default()),
            Err(source) => {
                return Err(ReportError::Read {
                    path: path.to_path_buf(),
                    source,
                })
            }
        };
        let results: Self = serde_json::from_str(&text).map_err(|source| ReportError::Results {
            path: path.to_path_buf(),
            source,
        })?;
        if results.format != FORMAT {
            return Err(ReportError::ResultsFormat {
                path: path.to_path_buf(),
                found: results.format,
            });
        }
        Ok(results)
    }

    /// Writes `path` whole or not at all: a temporary file beside it, renamed over it.
    pub fn save(&self, path: &Path) -> Result<(), ReportError> {
        let text = serde_json::to_string_pretty(self).expect("the results serialize");
        let temporary = PathBuf::from(format!("{}.partial", path.display()));
        let failed = |source| ReportError::Write {
            path: path.to_path_buf(),
            source,
        };
        std::fs::write(&temporary, text + "\n").map_err(failed)?;
        std::fs::rename(&temporary, path).map_err(failed)
    }

    /// The finished run of `point` with `seed`, if any.
    pub fn run(&self, point: &str, seed: u64) -> Option<&RunResult> {
        self.runs
            .iter()
            .find(|r| r.point == point && r.seed == seed)
    }

    /// Adds a finished run, replacing an earlier result of the same point and seed. Every
    /// number must be finite (JSON has no NaN): the caller checks with
    /// [`RunResult::non_finite`].
    pub fn record(&mut self, run: RunResult) {
        self.runs
            .retain(|r| !(r.point == run.point && r.seed == run.seed));
        self.runs.push(run);
    }
}

impl RunResult {
    /// The first number that is not finite, named (`sets[missing].attention.norm_local`).
    pub fn non_finite(&self) -> Option<String> {
        let mut numbers = vec![
            ("train_seconds".to_string(), self.train_seconds),
            ("eval_seconds".to_string(), self.eval_seconds),
        ];
        for s in &self.sets {
            let at = |field: &str| format!("sets[{}].{field}", s.name);
            numbers.push((at("accuracy"), s.accuracy));
            numbers.push((at("std"), s.std));
            if let Some(a) = &s.attention {
                numbers.push((at("attention.gamma_local"), a.gamma_local));
                numbers.push((at("attention.gamma_global"), a.gamma_global));
                numbers.push((at("attention.norm_local"), a.norm_local));
                numbers.push((at("attention.norm_global"), a.norm_global));
                if let Some(r) = a.local_weight_vs_global_norm {
                    numbers.push((at("attention.local_weight_vs_global_norm"), r));
                }
            }
        }
        numbers
            .into_iter()
            .find(|(_, v)| !v.is_finite())
            .map(|(name, v)| format!("{name} = {v}"))
    }
}
