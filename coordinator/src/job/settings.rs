//! [`JobSettings`]: what the coordinator was started with (its command line), fixed for the
//! life of the job and saved with it.

use serde::{Deserialize, Serialize};

/// What the coordinator was started with.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobSettings {
    pub job_id: String,
    /// The checkpoint lineage in the store (`runs/<run_id>/...`).
    pub run_id: String,
    /// Part of every worker id, so that a worker of an earlier coordinator process gets
    /// NOT_FOUND (and registers again) instead of being mistaken for a new worker.
    pub instance: String,
    /// `--workers N`: the world size of the first generation, the most ranks a generation
    /// has, and the number of data shards of every global batch.
    pub world_size: u32,
    /// `--min-workers`: the fewest ranks a generation may continue with when lost workers
    /// are not replaced within `elastic_grace_ms` (0, or `world_size`: never fewer).
    #[serde(default)]
    pub min_workers: u32,
    /// How long after a generation ends the next waits for the full `world_size` before it
    /// forms with fewer (elastic jobs only).
    #[serde(default)]
    pub elastic_grace_ms: u64,
    /// `--max-steps` (0: none); caps the schedule on top of the facts' own max_steps.
    pub max_steps: u64,
    /// The training configuration handed to every worker, uninterpreted.
    pub config_toml: String,
    pub store_url: String,
    pub heartbeat_interval_ms: u32,
    /// A member not heard from for this long fails the generation (see
    /// [`super::Job::expire_silent`]); workers stop when the coordinator is silent as long.
    #[serde(default = "default_heartbeat_deadline_ms")]
    pub heartbeat_deadline_ms: u32,
    pub collective_timeout_ms: u32,
    /// Generations that may be restarted after a lost rank before the job fails.
    #[serde(default)]
    pub max_restarts: u32,
}

/// Snapshots written before the deadline was configurable get the CLI's default.
fn default_heartbeat_deadline_ms() -> u32 {
    20_000
}
