//! The store on a local directory (file:// URLs and plain paths).

mod common;

use std::path::PathBuf;

use bytes::Bytes;
use common::*;
use lgaf_store::{
    sha256_hex, BlockingRunStore, Lease, Manifest, ManifestObject, RunStore, Store, StoreError,
    MANIFEST,
};

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

/// An object above the multipart threshold: a local directory writes it in one go
/// (`Store::put`; S3 multipart is tested against moto in s3.rs), whole or not at all.
#[tokio::test]
async fn large_upload() {
    let dir = TempDir::new("multipart");
    // A plain path works as well as a file:// URL, and the directory is created.
    let store = Store::from_url(dir.0.join("sub").to_str().unwrap()).unwrap();
    let mbps = multipart_round_trip(&store).await;
    eprintln!("file upload above the multipart threshold: {mbps:.0} MB/s");
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
    // No conditional replaces on a local directory: said, and nothing written.
    replace_if_unchanged(run_in(&dir, "run-b").store(), false).await;
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
async fn verify_and_download_stream() {
    let dir = TempDir::new("stream");
    let out = TempDir::new("stream-out");
    verify_and_download(&run_in(&dir, "run-a"), &out.0).await;
}

#[tokio::test]
async fn a_checkpoint_set_aside_is_kept_out_of_the_way() {
    let dir = TempDir::new("set-aside");
    set_aside(&run_in(&dir, "run-a")).await;
}

#[tokio::test]
async fn prune_keeps_the_last_k() {
    let dir = TempDir::new("prune");
    let run = run_in(&dir, "run-a");
    prune_keeps_last(&run).await;
    // Deleted checkpoints leave no empty folders behind (7 holds the damaged manifest,
    // kept).
    let left: Vec<String> = std::fs::read_dir(dir.0.join("runs/run-a/ckpt"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect();
    assert_eq!(
        left,
        vec![
            "000000000007",
            "000000000040",
            "000000000050",
            "000000000060"
        ]
    );
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
            run_state(1),
        );
        store.commit(&manifest).unwrap();
    }
    assert_eq!(store.committed().unwrap().len(), 3);
    let loaded = store.load_latest_with(|o| o.rank == 0).unwrap().unwrap();
    assert_eq!(loaded.manifest.step, 3);
    assert_eq!(loaded.manifest.state, run_state(1));
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

/// A directory outside the store, with one file, for the symbolic-link tests.
struct Outside {
    dir: TempDir,
    secret: PathBuf,
}

impl Outside {
    fn new(name: &str) -> Self {
        let dir = TempDir::new(&format!("{name}-outside"));
        let secret = dir.0.join("secret.txt");
        std::fs::write(&secret, b"root:x:0:0:the contents of an outside file\n").unwrap();
        Self { dir, secret }
    }

    /// Every file under the outside directory, relative to it, sorted.
    fn files(&self) -> Vec<String> {
        fn walk(dir: &std::path::Path, base: &std::path::Path, out: &mut Vec<String>) {
            for entry in std::fs::read_dir(dir).unwrap() {
                let path = entry.unwrap().path();
                if path.is_dir() {
                    walk(&path, base, out);
                } else {
                    out.push(path.strip_prefix(base).unwrap().display().to_string());
                }
            }
        }
        let mut out = Vec::new();
        walk(&self.dir.0, &self.dir.0, &mut out);
        out.sort();
        out
    }
}

/// The error says the store refuses the link and names it, and nothing about its target.
fn assert_refused_link(err: &StoreError, link: &std::path::Path, outside: &Outside) {
    assert!(matches!(err, StoreError::Symlink { .. }), "{err}");
    let msg = err.to_string();
    assert!(
        msg.contains(&link.display().to_string()) && msg.contains("symbolic link"),
        "{msg}"
    );
    assert!(msg.contains("out of its root"), "{msg}");
    let secret = std::fs::read(&outside.secret).unwrap();
    let outside_dir = outside.dir.0.display().to_string();
    for leak in [
        outside_dir.as_str(),
        &sha256_hex(&secret),
        &format!("{} bytes", secret.len()),
    ] {
        assert!(!msg.contains(leak), "`{leak}` leaked: {msg}");
    }
}

#[tokio::test]
async fn prune_never_deletes_through_a_symlinked_checkpoint_folder() {
    let dir = TempDir::new("link-prune");
    let outside = Outside::new("link-prune");
    let run = run_in(&dir, "r");
    for step in [10, 20, 30] {
        commit_step(&run, step, 1, 100).await;
    }
    // An old, uncommitted step folder that is a link to a directory outside the store:
    // prune would delete "its" files.
    std::fs::create_dir_all(outside.dir.0.join("rank-00000")).unwrap();
    std::fs::write(outside.dir.0.join("rank-00000/model.safetensors"), b"x").unwrap();
    let link = dir.0.join("runs/r/ckpt/000000000005");
    std::os::unix::fs::symlink(&outside.dir.0, &link).unwrap();
    let before = outside.files();

    let err = run.prune(1).await.unwrap_err();
    assert_refused_link(&err, &link, &outside);
    assert_eq!(
        outside.files(),
        before,
        "prune deleted files outside the store"
    );
    // Nothing inside was deleted either: a refused listing prunes nothing.
    assert_eq!(
        std::fs::read_dir(dir.0.join("runs/r/ckpt"))
            .unwrap()
            .count(),
        4
    );

    // The whole checkpoint root a link: refused the same way.
    std::fs::remove_file(&link).unwrap();
    let ckpt = dir.0.join("runs/r/ckpt");
    std::fs::rename(&ckpt, dir.0.join("moved")).unwrap();
    std::os::unix::fs::symlink(&outside.dir.0, &ckpt).unwrap();
    let err = run.prune(1).await.unwrap_err();
    assert_refused_link(&err, &ckpt, &outside);
    let err = run.committed().await.unwrap_err();
    assert_refused_link(&err, &ckpt, &outside);
    assert_eq!(outside.files(), before);
}

#[tokio::test]
async fn uploads_and_manifests_are_never_written_through_a_symlinked_folder() {
    let dir = TempDir::new("link-write");
    let outside = Outside::new("link-write");
    let run = run_in(&dir, "r");
    let before = outside.files();

    // `runs/r/ckpt` is a link out of the store: an upload, one above the multipart
    // threshold and a conditional create through it are refused and write nothing outside.
    std::fs::create_dir_all(dir.0.join("runs/r")).unwrap();
    let ckpt = dir.0.join("runs/r/ckpt");
    std::os::unix::fs::symlink(&outside.dir.0, &ckpt).unwrap();
    let err = run
        .put_object(10, &shard_key(0), payload(1, 100))
        .await
        .unwrap_err();
    assert_refused_link(&err, &ckpt, &outside);
    let multipart = run
        .store()
        .clone()
        .with_multipart(6 * MIB, 5 * MIB)
        .unwrap();
    let key = run.object_key(10, "big.bin");
    let err = multipart.put(&key, payload(2, 7 * MIB)).await.unwrap_err();
    assert_refused_link(&err, &ckpt, &outside);
    let err = run.store().put_new(&key, payload(3, 10)).await.unwrap_err();
    assert_refused_link(&err, &ckpt, &outside);
    assert_eq!(outside.files(), before, "written outside the store");

    // The step folder is a link to where its objects really are (outside): the commit
    // must not check them there nor write MANIFEST.json there.
    std::fs::remove_file(&ckpt).unwrap();
    let info = run
        .put_object(10, &shard_key(0), payload(1, 100))
        .await
        .unwrap();
    let step = dir.0.join("runs/r/ckpt/000000000010");
    std::fs::rename(&step, outside.dir.0.join("step")).unwrap();
    std::os::unix::fs::symlink(outside.dir.0.join("step"), &step).unwrap();
    let before = outside.files();
    let manifest = Manifest::new(
        "r",
        10,
        1,
        1,
        vec![ManifestObject::from_info(&info, 0)],
        run_state(1),
    );
    let err = run.commit(&manifest).await.unwrap_err();
    assert_refused_link(&err, &step, &outside);
    assert_eq!(outside.files(), before, "the manifest was written outside");
    assert!(!outside.dir.0.join("step").join(MANIFEST).exists());

    // The lease (a conditional create) through a symlinked run folder.
    let other = run_in(&dir, "s");
    std::fs::create_dir_all(dir.0.join("runs")).unwrap();
    let run_dir = dir.0.join("runs/s");
    std::os::unix::fs::symlink(&outside.dir.0, &run_dir).unwrap();
    let me = Lease {
        holder: "me".into(),
        host: "h".into(),
        pid: 1,
        expires_at_ms: u64::MAX,
    };
    let err = other
        .try_acquire_lease(&me, 0, |_| false)
        .await
        .unwrap_err();
    assert_refused_link(&err, &run_dir, &outside);
    let err = other
        .put_job_state(Bytes::from_static(b"{}"))
        .await
        .unwrap_err();
    assert_refused_link(&err, &run_dir, &outside);
    assert_eq!(outside.files(), before);
}

#[tokio::test]
async fn an_object_that_is_a_link_to_an_outside_file_is_never_read() {
    let dir = TempDir::new("link-read");
    let outside = Outside::new("link-read");
    let run = run_in(&dir, "r");
    let secret = std::fs::read(&outside.secret).unwrap();
    // A manifest that lists the outside file's own size and hash, so that only the link
    // check, not the checksum, stands between it and a "verified" load.
    let info = run
        .put_object(10, "model.safetensors", Bytes::from(secret.clone()))
        .await
        .unwrap();
    run.commit(&Manifest::new(
        "r",
        10,
        1,
        1,
        vec![ManifestObject::from_info(&info, 0)],
        run_state(1),
    ))
    .await
    .unwrap();
    let object = dir.0.join("runs/r/ckpt/000000000010/model.safetensors");
    std::fs::remove_file(&object).unwrap();
    std::os::unix::fs::symlink(&outside.secret, &object).unwrap();

    let key = run.object_key(10, "model.safetensors");
    let store = run.store();
    assert_refused_link(&store.get(&key).await.unwrap_err(), &object, &outside);
    assert_refused_link(&store.head(&key).await.unwrap_err(), &object, &outside);
    let full = lgaf_store::ObjectInfo {
        key: key.clone(),
        ..info.clone()
    };
    assert_refused_link(
        &store.get_verified(&full).await.unwrap_err(),
        &object,
        &outside,
    );
    assert_refused_link(&store.verify(&full).await.unwrap_err(), &object, &outside);
    assert_refused_link(&run.load(10).await.unwrap_err(), &object, &outside);
    assert_refused_link(&run.verify(10).await.unwrap_err(), &object, &outside);
    let out = dir.0.join("exported.safetensors");
    assert_refused_link(
        &run.download(10, "model.safetensors", &out)
            .await
            .unwrap_err(),
        &object,
        &outside,
    );
    assert!(!out.exists());
    // Looking for the newest checkpoint lists the run: the link is refused there.
    assert_refused_link(&run.load_latest().await.unwrap_err(), &object, &outside);
    assert_refused_link(
        &run.download_latest("model.safetensors", &out)
            .await
            .unwrap_err(),
        &object,
        &outside,
    );
    assert!(!out.exists());
    // A listing refuses it too; deleting it removes nothing outside.
    assert_refused_link(&store.list("runs/r").await.unwrap_err(), &object, &outside);
    assert_refused_link(&store.delete(&key).await.unwrap_err(), &object, &outside);
    assert_eq!(std::fs::read(&outside.secret).unwrap(), secret);
}

#[tokio::test]
async fn a_corrupt_lease_says_so_and_what_to_do() {
    let dir = TempDir::new("bad-lease");
    let run = run_in(&dir, "r");
    run.store()
        .put(&run.lease_key(), Bytes::from_static(b"{\"holder\": 3"))
        .await
        .unwrap();
    let me = Lease {
        holder: "me".into(),
        host: "h".into(),
        pid: 1,
        expires_at_ms: u64::MAX,
    };
    let err = run.try_acquire_lease(&me, 0, |_| false).await.unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.contains("runs/r/LEASE.json")
            && msg.contains("lease")
            && msg.contains("unreadable")
            && msg.contains("line 1") // serde_json's own account of what is wrong
            && msg.contains("delete"),
        "{msg}"
    );
    assert!(!msg.contains("invalid object key"), "{msg}");
    let err = run.renew_lease(&me).await.unwrap_err();
    assert!(err.to_string().contains("unreadable"), "{err}");
}

#[test]
fn a_bad_run_id_is_called_a_run_id() {
    let dir = TempDir::new("run-id");
    for bad in ["a/b", "..", ""] {
        let err = RunStore::new(Store::from_url(&dir.url()).unwrap(), bad).unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.contains("run id") && !msg.contains("object key"),
            "{bad:?}: {msg}"
        );
    }
}

#[test]
fn a_reader_never_creates_a_store_that_does_not_exist() {
    let dir = TempDir::new("no-store");
    let missing = dir.0.join("typo/store");
    let url = format!("file://{}", missing.display());
    for err in [
        Store::from_existing_url(&url).unwrap_err(),
        Store::from_existing_url(missing.to_str().unwrap()).unwrap_err(),
        BlockingRunStore::from_existing_url(&url, "r")
            .err()
            .unwrap(),
    ] {
        assert!(matches!(err, StoreError::NoStoreDir { .. }), "{err}");
        let msg = err.to_string();
        assert!(
            msg.contains(&missing.display().to_string()) && msg.contains("does not exist"),
            "{msg}"
        );
    }
    assert!(!dir.0.join("typo").exists(), "a reader created the store");
    // A file where the directory should be is not a store either.
    std::fs::write(dir.0.join("file"), b"").unwrap();
    let err = Store::from_existing_url(dir.0.join("file").to_str().unwrap()).unwrap_err();
    assert!(err.to_string().contains("is not a directory"), "{err}");
    // An existing store opens for reading; a writer still creates a missing one.
    Store::from_existing_url(&dir.url()).unwrap();
    Store::from_url(&url).unwrap();
    assert!(missing.is_dir());
}

#[tokio::test]
async fn a_huge_manifest_lease_or_job_state_is_refused_by_its_size_unread() {
    use lgaf_store::run::{MAX_JOB_STATE_BYTES, MAX_LEASE_BYTES, MAX_MANIFEST_BYTES};
    let dir = TempDir::new("huge");
    let run = run_in(&dir, "r");
    commit_step(&run, 10, 1, 100).await;
    commit_step(&run, 20, 1, 100).await;
    // Sparse files: as large as they say, without the disk space.
    let grow = |key: &str, size: u64| {
        let file = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .open(dir.0.join(key))
            .unwrap();
        file.set_len(size).unwrap();
    };
    grow(&run.manifest_key(20), MAX_MANIFEST_BYTES + 1);
    let err = run.manifest(20).await.unwrap_err();
    assert!(matches!(err, StoreError::TooLarge { .. }), "{err}");
    let msg = err.to_string();
    assert!(
        msg.contains(&run.manifest_key(20))
            && msg.contains(&(MAX_MANIFEST_BYTES + 1).to_string())
            && msg.contains("not read"),
        "{msg}"
    );
    // Passed over like any manifest that cannot be used.
    let steps: Vec<u64> = run
        .committed()
        .await
        .unwrap()
        .iter()
        .map(|c| c.step)
        .collect();
    assert_eq!(steps, vec![10]);

    std::fs::write(dir.0.join(run.job_key()), b"{}").unwrap();
    grow(&run.job_key(), MAX_JOB_STATE_BYTES + 1);
    let err = run.get_job_state().await.unwrap_err();
    assert!(err.to_string().contains("job state"), "{err}");

    std::fs::write(dir.0.join(run.lease_key()), b"{}").unwrap();
    grow(&run.lease_key(), MAX_LEASE_BYTES + 1);
    let me = Lease {
        holder: "me".into(),
        host: "h".into(),
        pid: 1,
        expires_at_ms: u64::MAX,
    };
    let err = run.try_acquire_lease(&me, 0, |_| false).await.unwrap_err();
    assert!(matches!(err, StoreError::TooLarge { .. }), "{err}");
    assert!(err.to_string().contains("coordinator lease"), "{err}");
}
