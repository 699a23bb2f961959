//! Where commits and job snapshots go. The service only sees the two traits; the object
//! store (`lgaf-store`, S3 or a local directory) implements them at integration. Until
//! then [`FileStore`] implements both on a local directory, for tests and the binary.

use std::future::Future;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use serde::{Deserialize, Serialize};

use crate::job::{CheckpointObject, CommitRequest, JobSnapshot, SNAPSHOT_FORMAT};

/// The manifest's file name inside a checkpoint folder; it is written last, so its presence
/// is what makes a checkpoint committed.
pub const MANIFEST: &str = "MANIFEST.json";
/// The format tag written into manifests.
pub const MANIFEST_FORMAT: &str = "lgaf-checkpoint-manifest/1";

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "store URL {0:?}: only file:// URLs (or plain paths) until the object store is wired in"
    )]
    UnsupportedUrl(String),
    /// An object a rank reported is missing or has another size: the checkpoint is not
    /// committed.
    #[error("checkpoint object {path}: {message}")]
    BadObject { path: PathBuf, message: String },
    #[error("{path}: {message}")]
    Invalid { path: PathBuf, message: String },
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> StoreError + '_ {
    move |source| StoreError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Commits checkpoints: writes the manifest of `commit` (every object with its size and
/// checksum, rank 0's state) after every object, and returns the manifest's key, which
/// workers later receive as `resume_manifest`.
pub trait CheckpointCommitter: Send + Sync + 'static {
    fn commit(
        &self,
        commit: CommitRequest,
    ) -> impl Future<Output = Result<String, StoreError>> + Send;
}

/// Saves the job so that a restarted coordinator can resume it (resuming is not
/// implemented yet; `load` is here so the store's side of it is).
pub trait JobStatePersistence: Send + Sync + 'static {
    fn save(&self, snapshot: JobSnapshot) -> impl Future<Output = Result<(), StoreError>> + Send;
    fn load(
        &self,
        run_id: &str,
    ) -> impl Future<Output = Result<Option<JobSnapshot>, StoreError>> + Send;
}

/// One run's checkpoint manifest as [`FileStore`] writes it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    pub format: String,
    pub run_id: String,
    pub generation: u64,
    pub step: u64,
    pub epoch: u64,
    pub world_size: u32,
    pub created_unix: u64,
    pub objects: Vec<CheckpointObject>,
    /// Rank 0's run state, as the JSON it sent.
    pub state: serde_json::Value,
}

/// A local directory as the store:
/// `<root>/runs/<run_id>/ckpt/<step:012>/<object keys>` and `.../MANIFEST.json`, and
/// `<root>/runs/<run_id>/job.json`. Every file is written under a temporary name and renamed.
#[derive(Clone, Debug)]
pub struct FileStore {
    root: PathBuf,
}

static TMP_COUNTER: AtomicU64 = AtomicU64::new(0);

impl FileStore {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        FileStore { root: root.into() }
    }

    /// `file:///abs/path`, `file://relative/path` (a common shorthand, relative to the
    /// current directory) or a plain path. Relative paths are made absolute, so the URL
    /// handed to workers means the same in their working directory.
    pub fn from_url(url: &str) -> Result<Self, StoreError> {
        let path = match url.split_once("://") {
            Some(("file", rest)) => rest,
            Some(_) => return Err(StoreError::UnsupportedUrl(url.to_string())),
            None => url,
        };
        if path.is_empty() {
            return Err(StoreError::UnsupportedUrl(url.to_string()));
        }
        let path = Path::new(path);
        let root = if path.is_absolute() {
            path.to_path_buf()
        } else {
            let cwd = std::env::current_dir().map_err(io_err(Path::new(".")))?;
            cwd.join(path.strip_prefix(".").unwrap_or(path))
        };
        Ok(FileStore { root })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// `file://` + the absolute root.
    pub fn url(&self) -> String {
        format!("file://{}", self.root.display())
    }

    pub fn run_dir(&self, run_id: &str) -> PathBuf {
        self.root.join("runs").join(run_id)
    }

    pub fn checkpoint_dir(&self, run_id: &str, step: u64) -> PathBuf {
        self.run_dir(run_id).join("ckpt").join(step_folder(step))
    }

    pub fn job_path(&self, run_id: &str) -> PathBuf {
        self.run_dir(run_id).join("job.json")
    }

    /// The steps of the run's committed checkpoints (those with a manifest), ascending.
    pub fn committed_steps(&self, run_id: &str) -> Result<Vec<u64>, StoreError> {
        let dir = self.run_dir(run_id).join("ckpt");
        let entries = match std::fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(io_err(&dir)(e)),
        };
        let mut steps = Vec::new();
        for entry in entries {
            let entry = entry.map_err(io_err(&dir))?;
            let name = entry.file_name();
            let Some(step) = name.to_str().and_then(|n| n.parse::<u64>().ok()) else {
                continue;
            };
            if entry.path().join(MANIFEST).is_file() {
                steps.push(step);
            }
        }
        steps.sort_unstable();
        Ok(steps)
    }

    fn commit_blocking(&self, c: &CommitRequest) -> Result<String, StoreError> {
        let dir = self.checkpoint_dir(&c.run_id, c.step);
        // Every object must be there with the size its rank reported; reading them all
        // again for the checksums would double the checkpoint's I/O, so the loader verifies
        // those.
        for o in &c.objects {
            let path = dir.join(&o.key);
            let meta = std::fs::metadata(&path).map_err(|e| StoreError::BadObject {
                path: path.clone(),
                message: format!("rank {} reported it, but it cannot be read: {e}", o.rank),
            })?;
            if meta.len() != o.size {
                return Err(StoreError::BadObject {
                    path,
                    message: format!(
                        "rank {} reported {} bytes, the file has {}",
                        o.rank,
                        o.size,
                        meta.len()
                    ),
                });
            }
        }
        let state = if c.state_json.is_empty() {
            serde_json::Value::Null
        } else {
            serde_json::from_str(&c.state_json).map_err(|e| StoreError::Invalid {
                path: dir.clone(),
                message: format!("rank 0's state_json is not JSON: {e}"),
            })?
        };
        let manifest = Manifest {
            format: MANIFEST_FORMAT.into(),
            run_id: c.run_id.clone(),
            generation: c.generation,
            step: c.step,
            epoch: c.epoch,
            world_size: c.world_size,
            created_unix: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
            objects: c.objects.clone(),
            state,
        };
        std::fs::create_dir_all(&dir).map_err(io_err(&dir))?;
        let json = serde_json::to_vec_pretty(&manifest).expect("a manifest serialises");
        write_atomic(&dir.join(MANIFEST), &json)?;
        if c.keep_last > 0 {
            self.prune(&c.run_id, c.step, c.keep_last)?;
        }
        Ok(format!(
            "runs/{}/ckpt/{}/{MANIFEST}",
            c.run_id,
            step_folder(c.step)
        ))
    }

    /// Drops the oldest committed checkpoints beyond `keep_last`, never `newest` itself;
    /// the manifest goes first, so a half-deleted folder is never taken for a checkpoint.
    fn prune(&self, run_id: &str, newest: u64, keep_last: u64) -> Result<(), StoreError> {
        let steps = self.committed_steps(run_id)?;
        let keep = usize::try_from(keep_last).unwrap_or(usize::MAX);
        if steps.len() <= keep {
            return Ok(());
        }
        for &step in &steps[..steps.len() - keep] {
            if step >= newest {
                continue;
            }
            let dir = self.checkpoint_dir(run_id, step);
            let manifest = dir.join(MANIFEST);
            std::fs::remove_file(&manifest).map_err(io_err(&manifest))?;
            std::fs::remove_dir_all(&dir).map_err(io_err(&dir))?;
        }
        Ok(())
    }
}

/// `<step:012>`: zero-padded so that folder names sort by step.
pub fn step_folder(step: u64) -> String {
    format!("{step:012}")
}

/// Writes `bytes` to a temporary file beside `path`, syncs it and renames it over `path`,
/// so a reader sees the old file or the new one, never a torn one.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), StoreError> {
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(io_err(dir))?;
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("file");
    let tmp = dir.join(format!(
        ".{name}.tmp-{}-{}",
        std::process::id(),
        TMP_COUNTER.fetch_add(1, Ordering::Relaxed)
    ));
    let result = (|| {
        let mut f = std::fs::File::create(&tmp).map_err(io_err(&tmp))?;
        f.write_all(bytes).map_err(io_err(&tmp))?;
        f.sync_all().map_err(io_err(&tmp))?;
        std::fs::rename(&tmp, path).map_err(io_err(path))?;
        // Make the rename itself durable; not every filesystem lets a directory be synced.
        if let Ok(d) = std::fs::File::open(dir) {
            let _ = d.sync_all();
        }
        Ok(())
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, StoreError> + Send + 'static,
) -> Result<T, StoreError> {
    match tokio::task::spawn_blocking(f).await {
        Ok(r) => r,
        Err(e) => std::panic::resume_unwind(e.into_panic()),
    }
}

impl CheckpointCommitter for FileStore {
    async fn commit(&self, commit: CommitRequest) -> Result<String, StoreError> {
        let store = self.clone();
        blocking(move || store.commit_blocking(&commit)).await
    }
}

impl JobStatePersistence for FileStore {
    async fn save(&self, snapshot: JobSnapshot) -> Result<(), StoreError> {
        let path = self.job_path(&snapshot.job.settings().run_id);
        blocking(move || {
            let json = serde_json::to_vec_pretty(&snapshot).expect("a job serialises");
            write_atomic(&path, &json)
        })
        .await
    }

    async fn load(&self, run_id: &str) -> Result<Option<JobSnapshot>, StoreError> {
        let path = self.job_path(run_id);
        blocking(move || {
            let bytes = match std::fs::read(&path) {
                Ok(b) => b,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
                Err(e) => return Err(io_err(&path)(e)),
            };
            let snapshot: JobSnapshot =
                serde_json::from_slice(&bytes).map_err(|e| StoreError::Invalid {
                    path: path.clone(),
                    message: format!("not a job snapshot: {e}"),
                })?;
            if snapshot.format != SNAPSHOT_FORMAT {
                return Err(StoreError::Invalid {
                    path,
                    message: format!(
                        "format {:?}, this coordinator reads {SNAPSHOT_FORMAT:?}",
                        snapshot.format
                    ),
                });
            }
            Ok(Some(snapshot))
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::job::{Job, JobSettings};

    fn commit(
        run: &str,
        step: u64,
        objects: Vec<CheckpointObject>,
        keep_last: u64,
    ) -> CommitRequest {
        CommitRequest {
            run_id: run.into(),
            generation: 1,
            step,
            epoch: 0,
            world_size: 2,
            objects,
            state_json: r#"{"loss_scale":1.0}"#.into(),
            keep_last,
        }
    }

    fn object(
        store: &FileStore,
        run: &str,
        step: u64,
        rank: u32,
        key: &str,
        bytes: &[u8],
    ) -> CheckpointObject {
        let path = store.checkpoint_dir(run, step).join(key);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, bytes).unwrap();
        CheckpointObject {
            rank,
            key: key.into(),
            size: bytes.len() as u64,
            sha256: "0".repeat(64),
        }
    }

    #[tokio::test]
    async fn commit_writes_manifest_and_prunes() {
        let dir = tempfile::tempdir().unwrap();
        let store = FileStore::new(dir.path());
        for step in [10, 20, 30] {
            let objects = vec![
                object(&store, "r", step, 0, "rank0/model.bin", b"abc"),
                object(&store, "r", step, 1, "rank1/model.bin", b"defg"),
            ];
            let key = store.commit(commit("r", step, objects, 2)).await.unwrap();
            assert_eq!(key, format!("runs/r/ckpt/{step:012}/MANIFEST.json"));
        }
        assert_eq!(store.committed_steps("r").unwrap(), vec![20, 30]);
        assert!(!store.checkpoint_dir("r", 10).exists());
        let m: Manifest = serde_json::from_slice(
            &std::fs::read(store.checkpoint_dir("r", 30).join(MANIFEST)).unwrap(),
        )
        .unwrap();
        assert_eq!(m.step, 30);
        assert_eq!(m.objects.len(), 2);
        assert_eq!(m.state["loss_scale"], 1.0);
        // No temporary file left behind.
        let names: Vec<_> = std::fs::read_dir(store.checkpoint_dir("r", 30))
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert!(names.iter().all(|n| !n.contains(".tmp-")), "{names:?}");
    }

    #[tokio::test]
    async fn missing_or_wrong_size_object_is_not_committed() {
        let dir = tempfile::tempdir().unwrap();
        let store = FileStore::new(dir.path());
        let mut o = object(&store, "r", 5, 0, "a.bin", b"abc");
        o.size = 4;
        let e = store.commit(commit("r", 5, vec![o], 0)).await.unwrap_err();
        assert!(
            e.to_string().contains("reported 4 bytes, the file has 3"),
            "{e}"
        );
        let missing = CheckpointObject {
            rank: 1,
            key: "nothing.bin".into(),
            size: 1,
            sha256: "0".repeat(64),
        };
        let e = store
            .commit(commit("r", 5, vec![missing], 0))
            .await
            .unwrap_err();
        assert!(e.to_string().contains("rank 1 reported it"), "{e}");
        assert!(store.committed_steps("r").unwrap().is_empty());
    }

    #[tokio::test]
    async fn job_snapshot_round_trips() {
        let dir = tempfile::tempdir().unwrap();
        let store = FileStore::new(dir.path());
        assert!(store.load("r").await.unwrap().is_none());
        let job = Job::new(JobSettings {
            job_id: "j".into(),
            run_id: "r".into(),
            instance: "i".into(),
            world_size: 2,
            max_steps: 0,
            config_toml: "[train]\nepochs = 1\n".into(),
            store_url: store.url(),
            heartbeat_interval_ms: 1000,
            collective_timeout_ms: 1000,
        })
        .unwrap();
        store.save(job.snapshot(42)).await.unwrap();
        let back = store.load("r").await.unwrap().unwrap();
        assert_eq!(back.saved_at_ms, 42);
        assert_eq!(back.job.settings(), job.settings());
        std::fs::write(store.job_path("r"), "{").unwrap();
        assert!(store.load("r").await.is_err());
    }

    #[test]
    fn urls() {
        let s = FileStore::from_url("file:///tmp/x").unwrap();
        assert_eq!(s.root(), Path::new("/tmp/x"));
        assert_eq!(s.url(), "file:///tmp/x");
        let rel = FileStore::from_url("file://./runs-store").unwrap();
        assert!(rel.root().is_absolute());
        assert!(rel.root().ends_with("runs-store"));
        assert!(FileStore::from_url("/abs").is_ok());
        assert!(matches!(
            FileStore::from_url("s3://bucket/x"),
            Err(StoreError::UnsupportedUrl(_))
        ));
    }
}
