//! [`Manifest`]: the commit record of one checkpoint, and [`RunState`], the typed state of a
//! run that it carries from the process that saved it to the processes that resume it.
//!
//! Every checkpoint has one manifest, whoever wrote it (the coordinator for a coordinated
//! run, the trainer for `lgaf train`): one format, read by one loader. The run state is
//! written by a worker (rank 0, or the single process) and read by workers and by the
//! coordinator, which does not link libtorch; so it lives here, in a torch-free crate, as a
//! serde type with a version, and a missing or wrong field is an error naming it.
//!
//! Older formats: `lgaf-checkpoint/2` (an untyped `state` object) is read and upgraded in
//! memory; `lgaf-checkpoint/1` (the single-process `step-<n>/` folders of earlier releases)
//! is refused with the command that converts it.

use std::collections::HashSet;

use serde::{Deserialize, Deserializer, Serialize};

use crate::store::{check_key, ObjectInfo};

/// The manifest's file name inside a step folder.
pub const MANIFEST: &str = "MANIFEST.json";
/// Format tag of [`Manifest`].
pub const FORMAT: &str = "lgaf-checkpoint/3";
/// The previous format: the same manifest with an untyped `state` (no version).
const FORMAT_V2: &str = "lgaf-checkpoint/2";
/// The single-process checkpoint folder of earlier releases (`step-<n>/MANIFEST.json`).
pub const LEGACY_FORMAT: &str = "lgaf-checkpoint/1";
/// Version of [`RunState`] this build writes and reads.
pub const RUN_STATE_VERSION: u32 = 1;

/// Why a manifest or a run state cannot be used: the field and what was expected, or how to
/// convert an older format.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ManifestError(String);

/// What a resumed run needs besides the tensors and the manifest's own fields (step, epoch,
/// world size) to continue exactly where the saved one stopped.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunState {
    /// Always [`RUN_STATE_VERSION`] when written by this build.
    pub version: u32,
    /// Data shards the global batch was cut into (at least the world size: an elastic
    /// generation trains several shards per rank).
    pub data_world_size: u32,
    /// Steps per epoch of the saved run, so that a run on another world size maps the step
    /// count to the same position in the epoch.
    pub steps_per_epoch: u64,
    /// fp16 loss scale and the steps since it last grew.
    pub loss_scale: f64,
    pub loss_scale_good_steps: u32,
    /// The whole training config of the saved run (the worker's `TrainConfig`, which this
    /// torch-free crate does not know), checked by the worker against its own.
    pub config: serde_json::Value,
}

impl RunState {
    /// The state of this build's version (the one place that stamps it).
    pub fn new(
        data_world_size: u32,
        steps_per_epoch: u64,
        loss_scale: f64,
        loss_scale_good_steps: u32,
        config: serde_json::Value,
    ) -> Self {
        Self {
            version: RUN_STATE_VERSION,
            data_world_size,
            steps_per_epoch,
            loss_scale,
            loss_scale_good_steps,
            config,
        }
    }

    /// Parses rank 0's state as it crosses processes (JSON), with every field checked.
    pub fn from_json(json: &str) -> Result<RunState, ManifestError> {
        let state: RunState =
            serde_json::from_str(json).map_err(|e| ManifestError(e.to_string()))?;
        state.check().map_err(ManifestError)?;
        Ok(state)
    }

    /// What must hold for a state to be used; `Err` names the field.
    fn check(&self) -> Result<(), String> {
        if self.version != RUN_STATE_VERSION {
            return Err(format!(
                "version {}, this build reads version {RUN_STATE_VERSION}",
                self.version
            ));
        }
        if self.data_world_size == 0 {
            return Err("data_world_size is 0, expected at least 1".into());
        }
        if self.steps_per_epoch == 0 {
            return Err("steps_per_epoch is 0, expected at least 1".into());
        }
        if !(self.loss_scale.is_finite() && self.loss_scale > 0.0) {
            return Err(format!(
                "loss_scale is {}, expected a positive finite number",
                self.loss_scale
            ));
        }
        if !self.config.is_object() {
            return Err("config is not an object".into());
        }
        Ok(())
    }
}

/// One object of a checkpoint: its key inside the step folder, size, SHA-256 and the rank
/// that wrote it (so a rank can load only what it owns).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ManifestObject {
    pub key: String,
    pub size: u64,
    pub sha256: String,
    pub rank: u32,
}

impl ManifestObject {
    /// The manifest entry for what `RunStore::put_object` returned on `rank`.
    pub fn from_info(info: &ObjectInfo, rank: u32) -> Self {
        Self {
            key: info.key.clone(),
            size: info.size,
            sha256: info.sha256.clone(),
            rank,
        }
    }
}

/// The commit record of one checkpoint.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    /// Always [`FORMAT`]; a loader refuses other formats instead of misreading them.
    pub format: String,
    pub run_id: String,
    /// Steps completed when the checkpoint was taken.
    pub step: u64,
    pub epoch: u64,
    pub world_size: u32,
    pub created_unix: u64,
    pub objects: Vec<ManifestObject>,
    #[serde(deserialize_with = "state_field")]
    pub state: RunState,
}

/// The `state` field, so that its errors say they are about it.
fn state_field<'de, D: Deserializer<'de>>(d: D) -> Result<RunState, D::Error> {
    let value = serde_json::Value::deserialize(d)?;
    serde_json::from_value(value).map_err(|e| serde::de::Error::custom(format!("state: {e}")))
}

impl Manifest {
    /// A manifest of the current format, stamped with the current time.
    pub fn new(
        run_id: impl Into<String>,
        step: u64,
        epoch: u64,
        world_size: u32,
        objects: Vec<ManifestObject>,
        state: RunState,
    ) -> Self {
        Self {
            format: FORMAT.to_string(),
            run_id: run_id.into(),
            step,
            epoch,
            world_size,
            created_unix: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0),
            objects,
            state,
        }
    }

    /// Reads a manifest of this format or of `lgaf-checkpoint/2` (upgraded); `Err` says
    /// what is wrong, or how to convert an older one.
    pub fn from_json(bytes: &[u8]) -> Result<Manifest, ManifestError> {
        let mut value: serde_json::Value = serde_json::from_slice(bytes)
            .map_err(|e| ManifestError(format!("not valid JSON: {e}")))?;
        let refuse = |reason: String| Err(ManifestError(reason));
        match value.get("format").and_then(|f| f.as_str()) {
            Some(FORMAT) => {}
            Some(FORMAT_V2) => upgrade_v2(&mut value).map_err(ManifestError)?,
            Some(LEGACY_FORMAT) => {
                return refuse(format!(
                    "format `{LEGACY_FORMAT}` is the single-process checkpoint folder of \
                     earlier releases; convert it with `lgaf ckpt convert <its folder> \
                     --store <store> --run <run id>`"
                ))
            }
            Some(other) => return refuse(format!("format `{other}`, expected `{FORMAT}`")),
            None => return refuse(format!("no `format` field, expected `{FORMAT}`")),
        }
        serde_json::from_value(value).map_err(|e| ManifestError(e.to_string()))
    }

    /// The sizes summed (saturating: the sizes come from the store, and a manifest whose
    /// sum overflows fails verification against the objects anyway).
    pub fn total_bytes(&self) -> u64 {
        self.objects
            .iter()
            .fold(0u64, |sum, o| sum.saturating_add(o.size))
    }

    pub fn object(&self, key: &str) -> Option<&ManifestObject> {
        self.objects.iter().find(|o| o.key == key)
    }

    /// What must hold for a manifest to be written or trusted; `Err` says what does not.
    pub(crate) fn check(&self, run_id: &str, step: u64) -> Result<(), String> {
        if self.format != FORMAT {
            return Err(format!("format `{}`, expected `{FORMAT}`", self.format));
        }
        if self.run_id != run_id {
            return Err(format!("run id `{}`, expected `{run_id}`", self.run_id));
        }
        if self.step != step {
            return Err(format!("step {}, expected {step}", self.step));
        }
        self.state.check().map_err(|e| format!("state: {e}"))?;
        if self.state.data_world_size < self.world_size {
            return Err(format!(
                "state: data_world_size {} is below the world size {}",
                self.state.data_world_size, self.world_size
            ));
        }
        let mut seen = HashSet::new();
        for object in &self.objects {
            check_key(&object.key).map_err(|e| e.to_string())?;
            if object.key == MANIFEST {
                return Err(format!("an object may not be called {MANIFEST}"));
            }
            if !seen.insert(object.key.as_str()) {
                return Err(format!("object `{}` is listed twice", object.key));
            }
            if object.rank >= self.world_size {
                return Err(format!(
                    "object `{}` has rank {}, expected below world size {}",
                    object.key, object.rank, self.world_size
                ));
            }
            let lower_hex = |b: u8| b.is_ascii_digit() || (b'a'..=b'f').contains(&b);
            if object.sha256.len() != 64 || !object.sha256.bytes().all(lower_hex) {
                return Err(format!(
                    "object `{}` has SHA-256 `{}`, expected 64 lower-case hex digits",
                    object.key, object.sha256
                ));
            }
        }
        Ok(())
    }
}

/// `lgaf-checkpoint/2` kept step, epoch and world size in its state as well as in the
/// manifest, and had no version: drop the copies, stamp version 1, take the current format.
fn upgrade_v2(manifest: &mut serde_json::Value) -> Result<(), String> {
    let state = manifest
        .get_mut("state")
        .and_then(|s| s.as_object_mut())
        .ok_or("no `state` object")?;
    for duplicate in ["step", "epoch", "world_size"] {
        state.remove(duplicate);
    }
    state.insert("version".into(), 1.into());
    manifest["format"] = FORMAT.into();
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state() -> RunState {
        RunState::new(2, 10, 65536.0, 3, serde_json::json!({"train": {"seed": 1}}))
    }

    fn manifest() -> Manifest {
        let object = ManifestObject {
            key: "model.safetensors".into(),
            size: 4,
            sha256: "a".repeat(64),
            rank: 0,
        };
        Manifest::new("r", 20, 2, 2, vec![object], state())
    }

    #[test]
    fn a_manifest_round_trips_through_json() {
        let m = manifest();
        let back = Manifest::from_json(&serde_json::to_vec(&m).unwrap()).unwrap();
        assert_eq!(back, m);
        back.check("r", 20).unwrap();
    }

    #[test]
    fn a_missing_or_wrong_state_field_is_named() {
        let mut json = serde_json::to_value(manifest()).unwrap();
        json["state"]
            .as_object_mut()
            .unwrap()
            .remove("steps_per_epoch");
        let err = Manifest::from_json(json.to_string().as_bytes())
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("state") && err.contains("steps_per_epoch"),
            "{err}"
        );

        let mut json = serde_json::to_value(manifest()).unwrap();
        json["state"]["loss_scale"] = "big".into();
        let err = Manifest::from_json(json.to_string().as_bytes())
            .unwrap_err()
            .to_string();
        assert!(err.contains("state"), "{err}");

        let mut json = serde_json::to_value(manifest()).unwrap();
        json["state"]["stpes_per_epoch"] = 3.into();
        let err = Manifest::from_json(json.to_string().as_bytes())
            .unwrap_err()
            .to_string();
        assert!(err.contains("stpes_per_epoch"), "{err}");

        let mut m = manifest();
        m.state.version = 2;
        let err = m.check("r", 20).unwrap_err();
        assert!(err.contains("version 2"), "{err}");
        let mut m = manifest();
        m.state.steps_per_epoch = 0;
        assert!(m.check("r", 20).unwrap_err().contains("steps_per_epoch"));
        let mut m = manifest();
        m.state.data_world_size = 1;
        assert!(m.check("r", 20).unwrap_err().contains("data_world_size"));
    }

    #[test]
    fn rank_zero_state_is_checked_as_it_arrives() {
        let json = serde_json::to_string(&state()).unwrap();
        assert_eq!(RunState::from_json(&json).unwrap(), state());
        let err = RunState::from_json(r#"{"loss_scale": 1.0}"#)
            .unwrap_err()
            .to_string();
        assert!(err.contains("missing field"), "{err}");
        let mut bad = state();
        bad.loss_scale = -1.0;
        let json = serde_json::to_string(&bad).unwrap();
        assert!(RunState::from_json(&json)
            .unwrap_err()
            .to_string()
            .contains("loss_scale"));
    }

    /// A manifest written before the state was typed is read, and upgraded.
    #[test]
    fn a_version_2_manifest_is_upgraded() {
        let v2 = serde_json::json!({
            "format": "lgaf-checkpoint/2", "run_id": "r", "step": 20, "epoch": 2,
            "world_size": 2, "created_unix": 5, "objects": [],
            "state": {"step": 20, "epoch": 2, "world_size": 2, "data_world_size": 2,
                      "steps_per_epoch": 10, "loss_scale": 65536.0,
                      "loss_scale_good_steps": 3, "config": {"train": {"seed": 1}}}
        });
        let m = Manifest::from_json(v2.to_string().as_bytes()).unwrap();
        assert_eq!(m.format, FORMAT);
        assert_eq!(m.state, state());
        m.check("r", 20).unwrap();
    }

    #[test]
    fn the_old_single_process_format_is_refused_with_the_conversion() {
        let v1 = serde_json::json!({"format": "lgaf-checkpoint/1", "step": 3});
        let err = Manifest::from_json(v1.to_string().as_bytes())
            .unwrap_err()
            .to_string();
        assert!(err.contains("lgaf ckpt convert"), "{err}");
        let other = serde_json::json!({"format": "something/9"});
        let err = Manifest::from_json(other.to_string().as_bytes())
            .unwrap_err()
            .to_string();
        assert!(err.contains("something/9") && err.contains(FORMAT), "{err}");
    }
}
