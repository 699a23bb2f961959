//! The store on a local directory (file:// URLs and plain paths).

mod common;

use std::path::PathBuf;

use bytes::Bytes;
use common::*;
use lgaf_store::{BlockingRunStore, Manifest, ManifestObject, RunStore, Store, StoreError};
use serde_json::json;

/// A fresh directory under the system temp dir, removed when dropped.
struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("lgaf-store-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Self(dir.canonicalize().unwrap())
    }

    fn url(&self) -> String {
        format!("file://{}", self.0.display())
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn run_in(dir: &TempDir, run_id: &str) -> RunStore {
    RunStore::new(Store::from_url(&dir.url()).unwrap(), run_id).unwrap()
}

#[tokio::test]
async fn put_get_verify_list_delete() {
    let dir = TempDir::new("roundtrip");
    let store = Store::from_url(&dir.url()).unwrap();
    assert_eq!(store.url(), dir.url());
    store_round_trip(&store).await;
    // Objects are plain files under the directory.
    assert!(dir.0.join("a/c.bin").is_file());
}

#[tokio::test]
async fn multipart_upload() {
    let dir = TempDir::new("multipart");
    // A plain path works as well as a file:// URL, and the directory is created.
    let store = Store::from_url(dir.0.join("sub").to_str().unwrap()).unwrap();
    let mbps = multipart_round_trip(&store).await;
    eprintln!("file multipart upload: {mbps:.0} MB/s");
    assert!(dir.0.join("sub/big/object.bin").is_file());
}

#[tokio::test]
async fn commit_refuses_an_object_that_was_not_uploaded() {
    let dir = TempDir::new("commit");
    commit_order(&run_in(&dir, "run-a")).await;
}

#[tokio::test]
async fn one_coordinator_holds_the_lease_at_a_time() {
    let dir = TempDir::new("lease");
    lease(&run_in(&dir, "run-a")).await;
}

#[tokio::test]
async fn an_uncommitted_step_is_never_loaded() {
    let dir = TempDir::new("uncommitted");
    uncommitted_ignored(&run_in(&dir, "run-a")).await;
}

#[tokio::test]
async fn a_corrupted_object_falls_back_to_the_previous_checkpoint() {
    let dir = TempDir::new("corrupt");
    corruption_fallback(&run_in(&dir, "run-a"), Damage::Disk(dir.0.clone())).await;
}

#[tokio::test]
async fn a_truncated_manifest_is_skipped() {
    let dir = TempDir::new("manifest");
    truncated_manifest(&run_in(&dir, "run-a")).await;
}

#[tokio::test]
async fn prune_keeps_the_last_k() {
    let dir = TempDir::new("prune");
    let run = run_in(&dir, "run-a");
    prune_keeps_last(&run).await;
    // Deleted checkpoints leave no empty folders behind.
    let left: Vec<String> = std::fs::read_dir(dir.0.join("runs/run-a/ckpt"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect();
    assert_eq!(left, vec!["000000000040", "000000000050", "000000000060"]);
}

#[tokio::test]
async fn job_state_round_trip_and_runs_are_separate() {
    let dir = TempDir::new("job");
    let a = run_in(&dir, "run-a");
    job_state(&a).await;
    let b = run_in(&dir, "run-b");
    assert!(b.get_job_state().await.unwrap().is_none());
    commit_step(&a, 10, 1, 10).await;
    assert!(b.committed().await.unwrap().is_empty());
    assert!(dir.0.join("runs/run-a/job.json").is_file());
}

#[test]
fn background_uploader_round_trip_and_stall() {
    let dir = TempDir::new("uploader");
    let numbers = uploader_round_trip(&run_in(&dir, "run-a"), 100_000_000);
    eprintln!(
        "file uploader: submit of {} bytes stalled {:?}; upload took {:?} ({:.0} MB/s); \
         back-pressure stall {:?}",
        numbers.big_bytes,
        numbers.big_submit_stall,
        numbers.big_upload,
        numbers.big_bytes as f64 / 1e6 / numbers.big_upload.as_secs_f64(),
        numbers.backpressure_stall,
    );
}

#[test]
fn blocking_facade() {
    let dir = TempDir::new("blocking");
    let store = BlockingRunStore::from_url(&dir.url(), "run-a").unwrap();
    assert!(store.load_latest().unwrap().is_none());
    assert!(store.committed().unwrap().is_empty());
    for step in [1, 2, 3] {
        let info = store
            .put_object(step, "rank-00000/model.safetensors", payload(step, 64))
            .unwrap();
        let manifest = Manifest::new(
            "run-a",
            step,
            0,
            1,
            vec![ManifestObject::from_info(&info, 0)],
            json!({"lr": 0.1}),
        );
        store.commit(&manifest).unwrap();
    }
    assert_eq!(store.committed().unwrap().len(), 3);
    let loaded = store.load_latest_with(|o| o.rank == 0).unwrap().unwrap();
    assert_eq!(loaded.manifest.step, 3);
    assert_eq!(loaded.manifest.state, json!({"lr": 0.1}));
    assert_eq!(store.load(2).unwrap().manifest.step, 2);
    assert_eq!(store.load_with(2, |_| false).unwrap().objects.len(), 0);
    assert_eq!(store.manifest(1).unwrap().objects.len(), 1);
    assert_eq!(store.prune(1).unwrap().committed, vec![1, 2]);
    store.put_job_state(Bytes::from_static(b"{}")).unwrap();
    assert_eq!(store.get_job_state().unwrap().unwrap(), &b"{}"[..]);
    let listed = store
        .block_on(store.run().store().list("runs/run-a"))
        .unwrap();
    assert_eq!(listed.len(), 3); // job.json, step 3's manifest and object
}

#[test]
fn urls_that_do_not_work_say_which_do() {
    let err = Store::from_url("ftp://host/dir").unwrap_err();
    assert!(matches!(err, StoreError::UnsupportedUrl { .. }), "{err}");
    let msg = err.to_string();
    assert!(
        msg.contains("ftp://host/dir") && msg.contains("file://") && msg.contains("s3://"),
        "{msg}"
    );
    let err = Store::from_url("s3://ab/prefix").unwrap_err();
    assert!(err.to_string().contains("3 characters"), "{err}");
    let err = Store::from_url("s3:///prefix").unwrap_err();
    assert!(err.to_string().contains("bucket"), "{err}");
    assert!(Store::from_url("").is_err());
    assert!(RunStore::new(Store::from_url(&TempDir::new("ids").url()).unwrap(), "a/b").is_err());
}
