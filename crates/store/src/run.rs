//! [`RunStore`]: the checkpoints and job state of one training run.
//!
//! Layout under the store root:
//!
//! ```text
//! runs/<run_id>/job.json                          coordinator job state (raw JSON)
//! runs/<run_id>/LEASE.json                        the acting coordinator's lease
//! runs/<run_id>/ckpt/<step:012>/<key>             objects, e.g. rank-00000/model.safetensors
//! runs/<run_id>/ckpt/<step:012>/MANIFEST.json     the commit, written last
//! runs/<run_id>/unverified/<step:012>-<unix>/     a checkpoint set aside, kept for inspection
//! runs/<run_id>/history/<segment>.jsonl           the run's history (steps, events), in
//!                                                 segments; see crate::history
//! ```
//!
//! Every rank uploads its own objects; one party (the coordinator, or the single process of
//! `lgaf train`), once every rank has reported its [`ObjectInfo`]s, writes the manifest. Object stores have no rename and no
//! multi-object transaction, so the manifest is the commit point: a step folder without one
//! is an interrupted save and is never loaded. Step numbers are zero-padded so that key order
//! is step order in any listing.

use std::collections::{BTreeMap, HashMap, HashSet};

use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};

use crate::error::{Result, StoreError};
use crate::manifest::{Manifest, ManifestObject, MANIFEST};
use crate::store::{check_key, ObjectInfo, Store};

// The coordinator lease lives in `crate::lease`; re-exported so `run::` paths keep working.
pub use crate::lease::{Lease, LeaseAttempt, MAX_LEASE_BYTES};

/// Objects downloaded at once while loading a checkpoint.
const LOAD_CONCURRENCY: usize = 4;
/// Objects checked at once (HEAD) while committing.
const COMMIT_CONCURRENCY: usize = 16;
/// The largest manifest read (some 300 000 objects): anything bigger is not one, and is
/// refused by its size instead of being read into memory.
pub const MAX_MANIFEST_BYTES: u64 = 64 << 20;
/// The largest job state read (the coordinator's snapshot is kilobytes).
pub const MAX_JOB_STATE_BYTES: u64 = 64 << 20;

/// One committed checkpoint, as [`RunStore::committed`] lists it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ManifestSummary {
    pub step: u64,
    pub epoch: u64,
    pub world_size: u32,
    pub created_unix: u64,
    pub objects: usize,
    pub total_bytes: u64,
}

/// A checkpoint whose objects all verified.
#[derive(Clone, Debug)]
pub struct LoadedCheckpoint {
    pub manifest: Manifest,
    /// The objects that were asked for (all of them unless filtered), by key in the folder.
    pub objects: HashMap<String, Bytes>,
    /// Newer committed checkpoints that did not verify, newest first, as (step, why):
    /// `load_latest` fell back past them. Empty from `load`.
    pub skipped: Vec<(u64, String)>,
}

/// A checkpoint whose objects all verified, without their bytes (see [`RunStore::verify`]).
#[derive(Clone, Debug)]
pub struct VerifiedCheckpoint {
    pub manifest: Manifest,
    /// Newer committed checkpoints that did not verify, newest first, as (step, why).
    pub skipped: Vec<(u64, String)>,
}

/// One object of a checkpoint written to a file by [`RunStore::download`].
#[derive(Clone, Debug)]
pub struct Downloaded {
    pub manifest: Manifest,
    /// The object as the manifest lists it (key relative to the step folder).
    pub object: ManifestObject,
    /// Newer committed checkpoints passed over, newest first, as (step, why).
    pub skipped: Vec<(u64, String)>,
}

/// What a verified read of a checkpoint's objects keeps.
#[derive(Clone, Copy)]
enum Keep {
    Bytes,
    Nothing,
}

/// What [`RunStore::prune`] deleted.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Pruned {
    /// Committed checkpoints deleted (older than the newest `keep_last`), ascending.
    pub committed: Vec<u64>,
    /// Step folders without a valid manifest deleted (older than the newest committed).
    pub uncommitted: Vec<u64>,
    pub objects: usize,
    pub bytes: u64,
}

/// The rule for run ids, which become a folder name and a key prefix.
const RUN_ID_RULE: &str = "use 1 to 128 letters, digits, '-', '_' or '.', not starting with '.'";

/// Whether `id` may name a run (the one rule, for every tool that takes a run id): 1 to
/// 128 ASCII letters, digits, `-`, `_` or `.`, not starting with `.`.
pub fn is_valid_run_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 128
        && !id.starts_with('.')
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

/// Checkpoints and job state of one run in a [`Store`]. Cheap to clone.
#[derive(Clone, Debug)]
pub struct RunStore {
    store: Store,
    run_id: String,
}

impl RunStore {
    /// `run_id` becomes one path segment, so it may not contain `/`, `.` or `..` alone.
    pub fn new(store: Store, run_id: impl Into<String>) -> Result<Self> {
        let run_id = run_id.into();
        let bad = |reason: String| StoreError::InvalidRunId {
            run_id: run_id.clone(),
            reason,
        };
        if !is_valid_run_id(&run_id) {
            return Err(bad(RUN_ID_RULE.into()));
        }
        Ok(Self { store, run_id })
    }

    pub fn run_id(&self) -> &str {
        &self.run_id
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    fn ckpt_root(&self) -> String {
        format!("runs/{}/ckpt", self.run_id)
    }

    /// `runs/<run_id>/ckpt/<step:012>`: the folder of one checkpoint.
    pub fn step_prefix(&self, step: u64) -> String {
        format!("{}/{step:012}", self.ckpt_root())
    }

    /// The store key of `key` in the checkpoint of `step`.
    pub fn object_key(&self, step: u64, key: &str) -> String {
        format!("{}/{key}", self.step_prefix(step))
    }

    /// The store key of the manifest of `step`.
    pub fn manifest_key(&self, step: u64) -> String {
        self.object_key(step, MANIFEST)
    }

    /// `runs/<run_id>/history`: the folder of the run's history segments (their names and
    /// contents are [`crate::history`]'s).
    pub fn history_prefix(&self) -> String {
        format!("runs/{}/history", self.run_id)
    }

    /// The store key of the history segment `name`
    /// (e.g. `000003-001717243200123-rank0-0000.jsonl`).
    pub fn history_key(&self, name: &str) -> String {
        format!("{}/{name}", self.history_prefix())
    }

    /// `runs/<run_id>`: everything of the run is under it.
    pub fn run_prefix(&self) -> String {
        format!("runs/{}", self.run_id)
    }

    /// The store key of the coordinator's job state.
    pub fn job_key(&self) -> String {
        format!("runs/{}/job.json", self.run_id)
    }

    fn url(&self) -> String {
        self.store.url().to_string()
    }

    /// Uploads one object of the checkpoint of `step` (what each rank calls for its shards,
    /// e.g. key `rank-00000/model.safetensors`). The returned [`ObjectInfo`]'s key is
    /// relative to the step folder, as the manifest lists it.
    pub async fn put_object(&self, step: u64, key: &str, bytes: Bytes) -> Result<ObjectInfo> {
        check_key(key)?;
        if key == MANIFEST {
            return Err(StoreError::InvalidKey {
                key: key.into(),
                reason: format!("{MANIFEST} is written by commit"),
            });
        }
        let mut info = self.store.put(&self.object_key(step, key), bytes).await?;
        info.key = key.to_string();
        Ok(info)
    }

    /// Commits a checkpoint: checks that every listed object exists with its listed size,
    /// then writes the manifest. If any object is missing or has another size, nothing is
    /// written and the error names the object. (Checksums are checked on load, not here:
    /// that would mean downloading the whole checkpoint.)
    pub async fn commit(&self, manifest: &Manifest) -> Result<ObjectInfo> {
        let refuse = |reason: String| StoreError::CommitRefused {
            url: self.url(),
            run_id: self.run_id.clone(),
            step: manifest.step,
            reason,
        };
        manifest
            .check(&self.run_id, manifest.step)
            .map_err(refuse)?;
        let checks = futures::stream::iter(&manifest.objects)
            .map(|object| async move {
                let key = self.object_key(manifest.step, &object.key);
                match self.store.head(&key).await {
                    Ok(found) if found.size == object.size => Ok(()),
                    Ok(found) => Err(refuse(format!(
                        "object `{key}` has {} bytes, the manifest lists {}",
                        found.size, object.size
                    ))),
                    Err(StoreError::NotFound { .. }) => Err(refuse(format!(
                        "object `{key}` (rank {}) is listed but was not uploaded",
                        object.rank
                    ))),
                    Err(e) => Err(e),
                }
            })
            .buffer_unordered(COMMIT_CONCURRENCY)
            .try_collect::<Vec<()>>();
        checks.await?;
        let json = serde_json::to_vec_pretty(manifest).expect("a manifest serialises");
        let info = self
            .store
            .put(&self.manifest_key(manifest.step), Bytes::from(json))
            .await?;
        tracing::info!(
            run = %self.run_id,
            step = manifest.step,
            objects = manifest.objects.len(),
            bytes = manifest.total_bytes(),
            "checkpoint committed"
        );
        Ok(info)
    }

    /// All keys under the checkpoint root grouped by step folder (folders whose name is not
    /// a step number are not ours and are left out).
    async fn step_folders(&self) -> Result<BTreeMap<u64, Vec<(String, u64)>>> {
        let root = self.ckpt_root();
        let mut folders: BTreeMap<u64, Vec<(String, u64)>> = BTreeMap::new();
        for listed in self.store.list(&root).await? {
            let Some(rest) = listed
                .key
                .strip_prefix(&root)
                .map(|r| r.trim_start_matches('/'))
            else {
                continue;
            };
            let Some((folder, _)) = rest.split_once('/') else {
                continue;
            };
            if folder.is_empty() || !folder.bytes().all(|b| b.is_ascii_digit()) {
                continue;
            }
            let Ok(step) = folder.parse::<u64>() else {
                continue;
            };
            folders
                .entry(step)
                .or_default()
                .push((listed.key, listed.size));
        }
        Ok(folders)
    }

    /// Reads and checks the manifest of `step`.
    pub async fn manifest(&self, step: u64) -> Result<Manifest> {
        let key = self.manifest_key(step);
        let bytes = self
            .store
            .get_at_most(&key, "checkpoint manifest", MAX_MANIFEST_BYTES)
            .await
            .map_err(|e| match e {
                StoreError::NotFound { .. } => StoreError::NotCommitted {
                    url: self.url(),
                    run_id: self.run_id.clone(),
                    step,
                    key: key.clone(),
                },
                e => e,
            })?;
        let bad = |reason: String| StoreError::BadManifest {
            url: self.url(),
            key: key.clone(),
            reason,
        };
        let manifest = Manifest::from_json(&bytes).map_err(|e| bad(e.to_string()))?;
        manifest.check(&self.run_id, step).map_err(bad)?;
        Ok(manifest)
    }

    /// The steps whose folder holds a `MANIFEST.json`, usable or not, ascending: every
    /// checkpoint that was committed, including those whose manifest is now damaged.
    pub async fn manifest_steps(&self) -> Result<Vec<u64>> {
        Ok(self.steps_with_manifest(&self.step_folders().await?))
    }

    /// The steps among `folders` whose folder holds its manifest, ascending.
    fn steps_with_manifest(&self, folders: &BTreeMap<u64, Vec<(String, u64)>>) -> Vec<u64> {
        folders
            .iter()
            .filter(|(step, keys)| self.holds_manifest(**step, keys))
            .map(|(step, _)| *step)
            .collect()
    }

    fn holds_manifest(&self, step: u64, keys: &[(String, u64)]) -> bool {
        let manifest = self.manifest_key(step);
        keys.iter().any(|(k, _)| *k == manifest)
    }

    /// The manifest of `step` if it parses and checks; one that does not (cut short,
    /// another format, unreadable) is logged and `None`: it cannot be loaded either.
    async fn usable_manifest(&self, step: u64) -> Option<Manifest> {
        match self.manifest(step).await {
            Ok(manifest) => Some(manifest),
            Err(e) => {
                tracing::warn!(
                    run = %self.run_id,
                    step,
                    error = %e,
                    "skipping a checkpoint whose manifest cannot be used"
                );
                None
            }
        }
    }

    /// Manifests that parse and check, ascending by step ([`Self::usable_manifest`]).
    async fn valid_manifests(&self) -> Result<Vec<Manifest>> {
        let mut manifests = Vec::new();
        for step in self.manifest_steps().await? {
            manifests.extend(self.usable_manifest(step).await);
        }
        Ok(manifests)
    }

    /// Committed checkpoints, ascending by step.
    pub async fn committed(&self) -> Result<Vec<ManifestSummary>> {
        Ok(self
            .valid_manifests()
            .await?
            .iter()
            .map(|m| ManifestSummary {
                step: m.step,
                epoch: m.epoch,
                world_size: m.world_size,
                created_unix: m.created_unix,
                objects: m.objects.len(),
                total_bytes: m.total_bytes(),
            })
            .collect())
    }

    /// Loads the checkpoint of `step` with every object verified (size and SHA-256).
    pub async fn load(&self, step: u64) -> Result<LoadedCheckpoint> {
        self.load_with(step, |_| true).await
    }

    /// Loads only the objects for which `wanted` is true (a rank needs the model and the
    /// class ranges it owns, not every rank's shards); those are verified. Every size is
    /// checked against the manifest before any object is read.
    pub async fn load_with<F>(&self, step: u64, wanted: F) -> Result<LoadedCheckpoint>
    where
        F: Fn(&ManifestObject) -> bool,
    {
        let manifest = self.manifest(step).await?;
        self.fetch_objects(manifest, &wanted, Keep::Bytes).await
    }

    /// Verifies the checkpoint of `step` (every object's size, then its SHA-256) without
    /// holding any object in memory: each is hashed as it streams past.
    pub async fn verify(&self, step: u64) -> Result<Manifest> {
        self.verify_with(step, |_| true).await
    }

    /// [`RunStore::verify`] of the objects for which `wanted` is true.
    pub async fn verify_with<F>(&self, step: u64, wanted: F) -> Result<Manifest>
    where
        F: Fn(&ManifestObject) -> bool,
    {
        let manifest = self.manifest(step).await?;
        Ok(self
            .fetch_objects(manifest, &wanted, Keep::Nothing)
            .await?
            .manifest)
    }

    /// The manifest-store info of `object` of the checkpoint of `step`.
    fn info(&self, step: u64, object: &ManifestObject) -> ObjectInfo {
        ObjectInfo {
            key: self.object_key(step, &object.key),
            size: object.size,
            sha256: object.sha256.clone(),
        }
    }

    /// Checks the wanted objects of `manifest`: first every size (HEAD requests, no body),
    /// so that a wrong size anywhere is found before anything is read, then each content.
    async fn fetch_objects<F>(
        &self,
        manifest: Manifest,
        wanted: &F,
        keep: Keep,
    ) -> Result<LoadedCheckpoint>
    where
        F: Fn(&ManifestObject) -> bool,
    {
        let step = manifest.step;
        futures::stream::iter(manifest.objects.iter().filter(|o| wanted(o)))
            .map(|object| async move { self.store.check_size(&self.info(step, object)).await })
            .buffer_unordered(COMMIT_CONCURRENCY)
            .try_collect::<Vec<()>>()
            .await?;
        let objects: HashMap<String, Bytes> =
            futures::stream::iter(manifest.objects.iter().filter(|o| wanted(o)))
                .map(|object| async move {
                    let info = self.info(step, object);
                    let bytes = match keep {
                        Keep::Bytes => Some(self.store.get_verified_sized(&info).await?),
                        Keep::Nothing => {
                            self.store.verify_sized(&info).await?;
                            None
                        }
                    };
                    Ok::<_, StoreError>(bytes.map(|b| (object.key.clone(), b)))
                })
                .buffer_unordered(LOAD_CONCURRENCY)
                .try_filter_map(|kept| async move { Ok(kept) })
                .try_collect()
                .await?;
        Ok(LoadedCheckpoint {
            manifest,
            objects,
            skipped: Vec::new(),
        })
    }

    /// The newest committed checkpoint that fully verifies; `Ok(None)` if nothing was ever
    /// committed. See [`RunStore::load_latest_with`].
    pub async fn load_latest(&self) -> Result<Option<LoadedCheckpoint>> {
        self.load_latest_with(|_| true).await
    }

    /// The newest committed checkpoint whose wanted objects all verify, falling back to
    /// older ones; each one skipped is logged (which object failed and why) and listed in
    /// [`LoadedCheckpoint::skipped`]. `Ok(None)` if nothing was ever committed; if there
    /// are committed checkpoints but none verifies, that is an error rather than a silent
    /// restart from scratch.
    ///
    /// With a filter each rank verifies only its own objects, so ranks could settle on
    /// different steps if only some objects are damaged. Multi-rank callers should agree on
    /// the step (e.g. take the minimum over ranks) and then call [`RunStore::load_with`].
    pub async fn load_latest_with<F>(&self, wanted: F) -> Result<Option<LoadedCheckpoint>>
    where
        F: Fn(&ManifestObject) -> bool,
    {
        let wanted = &wanted;
        let found = self
            .latest(|manifest| self.fetch_objects(manifest, wanted, Keep::Bytes))
            .await?;
        Ok(found.map(|(mut loaded, skipped)| {
            loaded.skipped = skipped;
            loaded
        }))
    }

    /// The newest committed checkpoint that fully verifies, as [`RunStore::load_latest`]
    /// finds it but without keeping any object: what a coordinator needs to know where a
    /// run resumes, in [`crate::store::STREAM_CHUNK`]s of memory rather than the
    /// checkpoint's size.
    pub async fn verify_latest(&self) -> Result<Option<VerifiedCheckpoint>> {
        self.verify_latest_with(|_| true).await
    }

    /// [`RunStore::verify_latest`] of the objects for which `wanted` is true.
    pub async fn verify_latest_with<F>(&self, wanted: F) -> Result<Option<VerifiedCheckpoint>>
    where
        F: Fn(&ManifestObject) -> bool,
    {
        let wanted = &wanted;
        let found = self
            .latest(|manifest| self.fetch_objects(manifest, wanted, Keep::Nothing))
            .await?;
        Ok(found.map(|(loaded, skipped)| VerifiedCheckpoint {
            manifest: loaded.manifest,
            skipped,
        }))
    }

    /// Writes object `key` of the checkpoint of `step` to the file `dest`, streamed and
    /// verified (see [`Store::download_verified`]: a temporary name, renamed last, removed
    /// on failure).
    pub async fn download(
        &self,
        step: u64,
        key: &str,
        dest: &std::path::Path,
    ) -> Result<Downloaded> {
        let manifest = self.manifest(step).await?;
        self.download_from(manifest, key, dest).await
    }

    /// [`RunStore::download`] from the newest committed checkpoint whose `key` verifies,
    /// falling back to older ones as [`RunStore::load_latest`] does; a checkpoint that does
    /// not list `key` is passed over too. A failure to write `dest` is returned at once.
    pub async fn download_latest(
        &self,
        key: &str,
        dest: &std::path::Path,
    ) -> Result<Option<Downloaded>> {
        let found = self
            .latest(|manifest| self.download_from(manifest, key, dest))
            .await?;
        Ok(found.map(|(mut downloaded, skipped)| {
            downloaded.skipped = skipped;
            downloaded
        }))
    }

    async fn download_from(
        &self,
        manifest: Manifest,
        key: &str,
        dest: &std::path::Path,
    ) -> Result<Downloaded> {
        let Some(object) = manifest.object(key).cloned() else {
            return Err(StoreError::NotInCheckpoint {
                url: self.url(),
                run_id: self.run_id.clone(),
                step: manifest.step,
                key: key.to_string(),
            });
        };
        self.store
            .download_verified(&self.info(manifest.step, &object), dest)
            .await?;
        Ok(Downloaded {
            manifest,
            object,
            skipped: Vec::new(),
        })
    }

    /// Tries `attempt` on the committed checkpoints, newest first, until one succeeds; the
    /// ones it fails on, or whose manifest cannot be used (cut short, another format), are
    /// logged and returned as (step, why). `Ok(None)` if nothing was ever committed,
    /// [`StoreError::NoValidCheckpoint`] if every attempt failed. A
    /// [`StoreError::Destination`] failure is the caller's side and is returned at once.
    async fn latest<T, A, Fut>(&self, attempt: A) -> Result<Option<(T, Vec<(u64, String)>)>>
    where
        A: Fn(Manifest) -> Fut,
        Fut: std::future::Future<Output = Result<T>>,
    {
        let steps = self.manifest_steps().await?;
        if steps.is_empty() {
            return Ok(None);
        }
        let mut skipped = Vec::new();
        for step in steps.into_iter().rev() {
            let tried = match self.manifest(step).await {
                Ok(manifest) => attempt(manifest).await,
                Err(e) => Err(e),
            };
            match tried {
                Ok(found) => return Ok(Some((found, skipped))),
                Err(e @ StoreError::Destination { .. }) => return Err(e),
                Err(e) => {
                    tracing::warn!(
                        run = %self.run_id,
                        step,
                        error = %e,
                        "checkpoint does not verify; falling back to an older one"
                    );
                    skipped.push((step, e.to_string()));
                }
            }
        }
        Err(StoreError::NoValidCheckpoint {
            url: self.url(),
            run_id: self.run_id.clone(),
            failures: skipped
                .into_iter()
                .map(|(step, e)| format!("step {step}: {e}"))
                .collect(),
        })
    }

    /// Deletes committed checkpoints beyond the newest `keep_last` (at least 1), and step
    /// folders without a manifest that are older than the newest committed one
    /// (interrupted or abandoned saves; newer ones may be a save in progress and are kept).
    /// A folder whose manifest exists but cannot be used (damaged, another format, or
    /// unreadable just now) is kept: it may be a checkpoint, and deleting it is not a
    /// prune's call. A manifest is deleted before its objects, so an interrupted prune
    /// leaves an uncommitted folder, never a committed checkpoint with objects missing.
    /// Returns what was deleted.
    pub async fn prune(&self, keep_last: usize) -> Result<Pruned> {
        if keep_last == 0 {
            return Err(StoreError::InvalidArgument(
                "prune(keep_last = 0) would delete every checkpoint; keep at least 1".into(),
            ));
        }
        // One listing; manifests are read newest first and only as far as needed: the
        // newest `keep_last` valid ones, then the older ones (each one to delete). A prune
        // after every commit so reads about `keep_last` manifests, not the whole run's.
        let folders = self.step_folders().await?;
        let mut kept = 0usize;
        let mut newest = None;
        let mut drop_committed = HashSet::new();
        let mut committed = HashSet::new();
        for step in self.steps_with_manifest(&folders).into_iter().rev() {
            if self.usable_manifest(step).await.is_some() {
                committed.insert(step);
                newest = newest.or(Some(step));
                if kept < keep_last {
                    kept += 1;
                } else {
                    drop_committed.insert(step);
                }
            }
            // Keeping every committed one: the newest valid manifest is all a prune needs.
            if keep_last == usize::MAX && newest.is_some() {
                break;
            }
        }
        let Some(newest) = newest else {
            return Ok(Pruned::default());
        };
        let mut pruned = Pruned::default();
        for (step, keys) in folders {
            let is_committed = committed.contains(&step);
            if is_committed && !drop_committed.contains(&step) {
                continue;
            }
            if !is_committed && (step >= newest || self.holds_manifest(step, &keys)) {
                continue;
            }
            let manifest = self.manifest_key(step);
            self.store.delete(&manifest).await?;
            let rest: Vec<String> = keys
                .iter()
                .filter(|(k, _)| *k != manifest)
                .map(|(k, _)| k.clone())
                .collect();
            self.store.delete_all(&rest).await?;
            pruned.objects += keys.len();
            pruned.bytes += keys.iter().map(|(_, size)| size).sum::<u64>();
            if is_committed {
                pruned.committed.push(step);
            } else {
                pruned.uncommitted.push(step);
            }
        }
        if !pruned.committed.is_empty() || !pruned.uncommitted.is_empty() {
            tracing::info!(
                run = %self.run_id,
                committed = ?pruned.committed,
                uncommitted = ?pruned.uncommitted,
                bytes = pruned.bytes,
                "pruned checkpoints"
            );
        }
        Ok(pruned)
    }

    /// Moves every object of the checkpoint of `step`, its manifest first (which uncommits
    /// it), to `runs/<run_id>/unverified/<step:012>-<unix>/`, out of the folders that
    /// loading, saving and pruning look at: a checkpoint that does not verify is kept for
    /// inspection, and a later save of the same step cannot overwrite it. Returns the new
    /// folder's key.
    pub async fn set_aside(&self, step: u64, unix: u64) -> Result<String> {
        let from = self.step_prefix(step);
        let to = format!("runs/{}/unverified/{step:012}-{unix}", self.run_id);
        let mut keys: Vec<String> = self
            .store
            .list(&from)
            .await?
            .into_iter()
            .map(|listed| listed.key)
            .collect();
        let manifest = self.manifest_key(step);
        keys.sort_by_key(|k| *k != manifest);
        for key in keys {
            let Some(rest) = key.strip_prefix(&from) else {
                continue;
            };
            self.store.rename(&key, &format!("{to}{rest}")).await?;
        }
        tracing::warn!(run = %self.run_id, step, to = %to, "checkpoint set aside");
        Ok(to)
    }

    /// Stores the coordinator's job state (raw JSON bytes), replacing the previous one.
    pub async fn put_job_state(&self, json: Bytes) -> Result<ObjectInfo> {
        self.store.put(&self.job_key(), json).await
    }

    /// The coordinator's job state, or `None` if the run has none yet.
    pub async fn get_job_state(&self) -> Result<Option<Bytes>> {
        let key = self.job_key();
        match self
            .store
            .get_at_most(&key, "job state", MAX_JOB_STATE_BYTES)
            .await
        {
            Ok(bytes) => Ok(Some(bytes)),
            Err(StoreError::NotFound { .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }
}
