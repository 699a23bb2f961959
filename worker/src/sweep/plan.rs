//! A grid resolved against the base config: each point's validated configuration and its
//! key, and each (point, seed) run with its name and store.

use std::collections::BTreeMap;
use std::path::Path;

use lgaf_report::sweep::{Group, Point};
use sha2::{Digest, Sha256};

use super::grid::{self, GridGroup};
use super::SweepError;
use crate::config::{CheckpointConfig, SourceKind, TrainLoopConfig};
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
    /// The seeds every point runs with.
    pub seeds: Vec<u64>,
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
        let base_tree = toml::Table::try_from(base).map_err(|e| SweepError::Point {
            label: "(the base config)".into(),
            message: format!("not writable as TOML: {e}"),
        })?;
        let first_seed = base.train.seed;
        let seed_list: Vec<u64> = (0..u64::from(seeds))
            .map(|s| first_seed.checked_add(s).filter(|&v| v <= i64::MAX as u64))
            .collect::<Option<_>>()
            .ok_or_else(|| SweepError::Point {
                label: "(the base config)".into(),
                message: format!(
                    "train.seed {first_seed} plus {seeds} seeds passes {}, the largest seed \
                     a TOML config holds",
                    i64::MAX
                ),
            })?;
        let mut points: Vec<PlannedPoint> = Vec::new();
        let mut planned_groups = Vec::new();
        for g in groups {
            let mut members: Vec<Point> = Vec::new();
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
                if let Some(twin) = members.iter().find(|m| m.key == point.key) {
                    return Err(SweepError::Point {
                        label: point.label,
                        message: format!(
                            "trains exactly what `{}` trains (in table `{}`): the swept value \
                             changes nothing the sweep keeps apart",
                            twin.label, g.name
                        ),
                    });
                }
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
                seed_list.iter().map(move |&seed| {
                    let run_id = run_id(&p.point.key, seed);
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
            seeds: seed_list,
        })
    }
}

/// Keys the sweep sets itself, and what to use instead.
const OWNED: [(&str, &str); 3] = [
    ("train.seed", "--seeds runs each point with several seeds"),
    (
        "checkpoint.",
        "each run's checkpoints go to <out>/store under its own run id",
    ),
    (
        "train.progress",
        "the runs log to <out>/runs/<run id>/train.log",
    ),
];

/// The base tree with the overrides set, read back through the config's own checks; each
/// override must survive them (an `LGAF__...` variable would replace it).
fn resolve(base: &toml::Table, overrides: &[(String, toml::Value)]) -> Result<TrainConfig, String> {
    let mut tree = base.clone();
    for (key, value) in overrides {
        if let Some((_, instead)) = OWNED.iter().find(|(owned, _)| key.starts_with(owned)) {
            return Err(format!("`{key}` is the sweep's to set: {instead}"));
        }
        if matches!(lookup(base, key), Some(toml::Value::Array(_)))
            && !matches!(value, toml::Value::Array(_))
        {
            return Err(format!(
                "`{key}` takes a list, so each value swept is a list: write {key} = [[...], \
                 [...]], e.g. [[1, 3, 5], [3]]"
            ));
        }
        grid::set(&mut tree, key, value.clone())?;
    }
    let text = toml::to_string(&tree).map_err(|e| e.to_string())?;
    let config = TrainConfig::from_toml_str(&text).map_err(|e| e.to_string())?;
    let kept = toml::Table::try_from(&config).map_err(|e| e.to_string())?;
    for (key, value) in overrides {
        let now = lookup(&kept, key);
        if !now.is_some_and(|now| same_value(now, value)) {
            let variable = format!("LGAF__{}", key.to_uppercase().replace('.', "__"));
            let why = if std::env::var_os(&variable).is_some() {
                format!("the environment variable {variable} replaces it: unset it")
            } else {
                "the config does not keep it as written".to_string()
            };
            let now = now.map_or("nothing".to_string(), ToString::to_string);
            return Err(format!("`{key}` = {value} reads back as {now}: {why}"));
        }
    }
    if config.data.source != SourceKind::Synthetic && config.eval.bins.is_empty() {
        return Err(
            "nothing to evaluate: held-out identities exist only with data.source = \
             \"synthetic\"; name verification files in eval.bins"
                .into(),
        );
    }
    Ok(config)
}

/// The value at the dotted `key` of `tree`.
fn lookup<'a>(tree: &'a toml::Table, key: &str) -> Option<&'a toml::Value> {
    let mut parts = key.split('.');
    let mut value = tree.get(parts.next()?)?;
    for part in parts {
        value = value.as_table()?.get(part)?;
    }
    Some(value)
}

/// Equal as config values: an integer written for a float key is the same number.
fn same_value(a: &toml::Value, b: &toml::Value) -> bool {
    let number = |v: &toml::Value| match v {
        toml::Value::Integer(i) => Some(*i as f64),
        toml::Value::Float(f) => Some(*f),
        _ => None,
    };
    match (a, b) {
        (toml::Value::Array(x), toml::Value::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(a, b)| same_value(a, b))
        }
        _ => match (number(a), number(b)) {
            (Some(x), Some(y)) => x == y,
            _ => a == b,
        },
    }
}

/// A hash of the config without its seed, its store and the settings that only change how
/// a run is shown or how fast it loads. The evaluation settings are in it: a point
/// evaluated differently is another point.
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

/// `sweep-<key>-s<seed>`: from what the run trains, never from a label, so a point keeps
/// its run (and its checkpoints) whichever table names it and however.
fn run_id(key: &str, seed: u64) -> String {
    format!("sweep-{key}-s{seed}")
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
        assert_eq!(r.run_id, format!("sweep-{}-s8", p.points[0].point.key));
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
    fn what_would_not_be_swept_is_refused() {
        let e = plan("train.seed = [1, 2]", 1).unwrap_err().to_string();
        assert!(
            e.contains("`train.seed` is the sweep's") && e.contains("--seeds"),
            "{e}"
        );
        let e = plan("checkpoint.every_steps = [1, 2]", 1)
            .unwrap_err()
            .to_string();
        assert!(e.contains("the sweep's to set"), "{e}");
        // Loader threads change nothing that is trained: the two points would be one.
        let e = plan("data.workers = [1, 2]", 1).unwrap_err().to_string();
        assert!(
            e.contains("trains exactly what `data.workers=1` trains"),
            "{e}"
        );
        let e = plan("model.kernels = [1, 3]", 1).unwrap_err().to_string();
        assert!(e.contains("write model.kernels = [[...], [...]]"), "{e}");
        let e = plan("data.source = [\"folder\"]\ndata.path = [\"/faces\"]", 1)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("nothing to evaluate") && e.contains("eval.bins"),
            "{e}"
        );
        let mut base = TrainConfig::default();
        base.train.seed = i64::MAX as u64;
        let groups = grid::parse("model.heads = [4]", "g").unwrap();
        let e = Plan::new(&base, &groups, 2, Path::new("/s"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("largest seed"), "{e}");
    }

    #[test]
    fn an_integer_for_a_float_key_reads_back_as_itself() {
        let p = plan("model.width = [1, 0.5]", 1).unwrap();
        assert_eq!(p.points[0].config.model.width, 1.0);
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
