//! A grid resolved against the base config: each point's validated configuration and its
//! key, and each (point, seed) run with its name and store.

use std::collections::BTreeMap;
use std::path::Path;

use lgaf_report::sweep::{Group, Point};
use sha2::{Digest, Sha256};

use super::grid::{self, GridGroup};
use super::SweepError;
use crate::config::{CheckpointConfig, TrainLoopConfig};
use crate::TrainConfig;

/// One distinct configuration of the grid.
#[derive(Clone, Debug)]
pub struct PlannedPoint {
    pub point: Point,
    /// The resolved config (seed and store not yet set).
    pub config: TrainConfig,
}

/// One (point, seed): what `lgaf train` (or the coordinator) is given.
#[derive(Clone, Debug)]
pub struct PlannedRun {
    /// Index into [`Plan::points`].
    pub point: usize,
    pub seed: u64,
    pub run_id: String,
    pub config: TrainConfig,
}

#[derive(Clone, Debug)]
pub struct Plan {
    pub groups: Vec<Group>,
    pub points: Vec<PlannedPoint>,
    /// Point by point, seed by seed.
    pub runs: Vec<PlannedRun>,
}

impl Plan {
    /// Resolves `groups` over `base`; each point gets `seeds` runs (seeds `train.seed`,
    /// `train.seed + 1`, ...) with their checkpoints in `store`.
    pub fn new(
        base: &TrainConfig,
        groups: &[GridGroup],
        seeds: u32,
        store: &Path,
    ) -> Result<Self, SweepError> {
        let base_tree = toml::Table::try_from(base).expect("a validated config is a TOML table");
        let mut points: Vec<PlannedPoint> = Vec::new();
        let mut planned_groups = Vec::new();
        for g in groups {
            let mut members = Vec::new();
            for overrides in &g.points {
                let label = grid::label(overrides);
                let config =
                    resolve(&base_tree, overrides).map_err(|message| SweepError::Point {
                        label: label.clone(),
                        message,
                    })?;
                let point = Point {
                    key: key_of(&config),
                    label,
                    overrides: overrides
                        .iter()
                        .map(|(k, v)| (k.clone(), toml_to_json(v)))
                        .collect::<BTreeMap<_, _>>(),
                };
                if !points.iter().any(|p| p.point.key == point.key) {
                    points.push(PlannedPoint {
                        point: point.clone(),
                        config,
                    });
                }
                members.push(point);
            }
            planned_groups.push(Group {
                name: g.name.clone(),
                points: members,
            });
        }
        let store = store.display().to_string();
        let runs = points
            .iter()
            .enumerate()
            .flat_map(|(i, p)| {
                let store = store.clone();
                (0..u64::from(seeds)).map(move |s| {
                    let seed = p.config.train.seed.wrapping_add(s);
                    let run_id = run_id(&p.point, seed);
                    let mut config = p.config.clone();
                    config.train.seed = seed;
                    config.train.progress = false;
                    config.checkpoint.dir = store.clone();
                    config.checkpoint.run_id = run_id.clone();
                    PlannedRun {
                        point: i,
                        seed,
                        run_id,
                        config,
                    }
                })
            })
            .collect();
        Ok(Plan {
            groups: planned_groups,
            points,
            runs,
        })
    }
}

/// The base tree with the overrides set, read back through the config's own checks.
fn resolve(base: &toml::Table, overrides: &[(String, toml::Value)]) -> Result<TrainConfig, String> {
    let mut tree = base.clone();
    for (key, value) in overrides {
        grid::set(&mut tree, key, value.clone())?;
    }
    let text = toml::to_string(&tree).map_err(|e| e.to_string())?;
    TrainConfig::from_toml_str(&text).map_err(|e| e.to_string())
}

/// A hash of what decides the trained weights: the config without its seed, its store and
/// the settings that only change how a run is shown or how fast it loads.
fn key_of(config: &TrainConfig) -> String {
    let mut c = config.clone();
    c.checkpoint = CheckpointConfig::default();
    let shown = TrainLoopConfig::default();
    c.train.seed = 0;
    c.train.progress = shown.progress;
    c.train.log_every = shown.log_every;
    c.data.workers = 0;
    c.data.prefetch = 1;
    let bytes = serde_json::to_vec(&c).expect("a config serializes");
    let digest = Sha256::digest(&bytes);
    digest[..6].iter().map(|b| format!("{b:02x}")).collect()
}

/// `<label as letters, digits, '-', '_' and '.'>-<key>-s<seed>`: a valid run id (at most
/// 128 characters) that says what it is.
fn run_id(point: &Point, seed: u64) -> String {
    let mut slug: String = point
        .label
        .chars()
        .map(|c| match c {
            '=' => '-',
            c if c.is_ascii_alphanumeric() || "-_.".contains(c) => c,
            _ => '_',
        })
        .collect();
    slug.truncate(80);
    format!("{slug}-{}-s{seed}", point.key)
}

fn toml_to_json(v: &toml::Value) -> serde_json::Value {
    serde_json::to_value(v).expect("a TOML value is JSON")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(grid_text: &str, seeds: u32) -> Result<Plan, SweepError> {
        let mut base = TrainConfig::default();
        base.train.seed = 7;
        Plan::new(
            &base,
            &grid::parse(grid_text, "g").unwrap(),
            seeds,
            Path::new("/tmp/store"),
        )
    }

    #[test]
    fn points_shared_by_groups_are_trained_once() {
        let p = plan(
            "[[grid]]\nmodel.fusion = [\"lgf\", \"add\"]\n[[grid]]\nmodel.heads = [4, 8]",
            2,
        )
        .unwrap();
        // lgf with 4 heads is both the first group's first point and the second's first.
        assert_eq!(p.points.len(), 3);
        assert_eq!(p.groups[0].points[0].key, p.groups[1].points[0].key);
        assert_eq!(p.groups[1].points[0].label, "model.heads=4");
        assert_eq!(p.runs.len(), 6);
        let r = &p.runs[1];
        assert_eq!((r.seed, r.config.train.seed), (8, 8));
        assert_eq!(r.config.checkpoint.dir, "/tmp/store");
        assert!(r.run_id.starts_with("model.fusion-lgf-") && r.run_id.ends_with("-s8"));
        assert_eq!(r.config.checkpoint.run_id, r.run_id);
        assert!(lgaf_store::is_valid_run_id(&r.run_id));
        assert_eq!(p.points[2].config.model.heads, 8);
    }

    #[test]
    fn the_key_ignores_seed_store_and_display() {
        let a = TrainConfig::default();
        let mut b = a.clone();
        b.train.seed = 3;
        b.checkpoint.dir = "elsewhere".into();
        b.train.progress = false;
        b.data.workers = 5;
        assert_eq!(key_of(&a), key_of(&b));
        b.model.heads = 8;
        assert_ne!(key_of(&a), key_of(&b));
    }

    #[test]
    fn a_bad_value_names_its_point() {
        let e = plan("model.heads = [4, 0]", 1).unwrap_err().to_string();
        assert!(e.contains("model.heads=0") && e.contains("heads"), "{e}");
        let e = plan("model.fusoin = [\"add\"]", 1).unwrap_err().to_string();
        assert!(
            e.contains("model.fusoin=add") && e.contains("fusoin"),
            "{e}"
        );
    }
}
