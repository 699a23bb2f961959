//! Scenarios shared by the file:// and S3 tests, so both backends pass the same checks.
#![allow(dead_code)]

use std::path::PathBuf;
use std::time::{Duration, Instant};

use bytes::Bytes;
use lgaf_store::{
    sha256_hex, BackgroundUploader, BlockingRunStore, Lease, LeaseAttempt, Manifest,
    ManifestObject, RunState, RunStore, Store, StoreError, MANIFEST,
};
use serde_json::json;

pub const MIB: usize = 1 << 20;

/// Deterministic bytes that differ per seed (an LCG; fast enough for 100 MB).
pub fn payload(seed: u64, len: usize) -> Bytes {
    let mut state = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        state = state
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        out.extend_from_slice(&state.to_le_bytes());
    }
    out.truncate(len);
    Bytes::from(out)
}

pub fn shard_key(rank: u32) -> String {
    format!("rank-{rank:05}/model.safetensors")
}

/// Uploads one object per rank for `step` and commits them.
pub async fn commit_step(run: &RunStore, step: u64, world_size: u32, size: usize) -> Manifest {
    let mut objects = Vec::new();
    for rank in 0..world_size {
        let info = run
            .put_object(
                step,
                &shard_key(rank),
                payload(step * 100 + rank as u64, size),
            )
            .await
            .unwrap();
        objects.push(ManifestObject::from_info(&info, rank));
    }
    let manifest = Manifest::new(
        run.run_id(),
        step,
        step / 10,
        world_size,
        objects,
        run_state(world_size),
    );
    run.commit(&manifest).await.unwrap();
    manifest
}

/// How a test damages a stored object: through the store API (any backend) or by flipping
/// a byte of the file on disk (the file:// backend, as a failing disk would).
pub enum Damage {
    Api,
    Disk(PathBuf),
}

impl Damage {
    pub async fn apply(&self, store: &Store, key: &str) {
        match self {
            Damage::Api => {
                let mut bytes = store.get(key).await.unwrap().to_vec();
                let last = bytes.len() - 1;
                bytes[last] ^= 0xff;
                store.put(key, Bytes::from(bytes)).await.unwrap();
            }
            Damage::Disk(root) => {
                let path = root.join(key);
                let mut bytes = std::fs::read(&path).unwrap();
                let last = bytes.len() - 1;
                bytes[last] ^= 0xff;
                std::fs::write(&path, bytes).unwrap();
            }
        }
    }
}

pub async fn store_round_trip(store: &Store) {
    let data = payload(1, 1000);
    let info = store.put("a/b.bin", data.clone()).await.unwrap();
    assert_eq!(info.key, "a/b.bin");
    assert_eq!(info.size, 1000);
    assert_eq!(info.sha256, sha256_hex(&data));
    assert_eq!(info.sha256.len(), 64);
    assert_eq!(store.get("a/b.bin").await.unwrap(), data);
    assert_eq!(store.get_verified(&info).await.unwrap(), data);
    assert_eq!(store.head("a/b.bin").await.unwrap().size, 1000);

    // A wrong checksum or size is refused, naming the key, the expected and found values.
    let mut wrong = info.clone();
    wrong.sha256 = "0".repeat(64);
    let err = store.get_verified(&wrong).await.unwrap_err();
    assert!(matches!(err, StoreError::Corrupt { .. }), "{err}");
    let msg = err.to_string();
    assert!(
        msg.contains("a/b.bin") && msg.contains(&wrong.sha256) && msg.contains(&info.sha256),
        "{msg}"
    );
    let mut wrong = info.clone();
    wrong.size = 999;
    let msg = store.get_verified(&wrong).await.unwrap_err().to_string();
    assert!(
        msg.contains("a/b.bin") && msg.contains("999") && msg.contains("1000"),
        "{msg}"
    );

    // list matches whole segments: `a` does not list `ab/`.
    store.put("a/c.bin", payload(2, 10)).await.unwrap();
    store.put("ab/d.bin", payload(3, 10)).await.unwrap();
    let keys: Vec<String> = store
        .list("a")
        .await
        .unwrap()
        .into_iter()
        .map(|l| l.key)
        .collect();
    assert_eq!(keys, vec!["a/b.bin", "a/c.bin"]);
    assert_eq!(store.list("").await.unwrap().len(), 3);
    assert!(store.list("nothing/here").await.unwrap().is_empty());

    store.delete("a/b.bin").await.unwrap();
    store.delete("a/b.bin").await.unwrap(); // idempotent
    let err = store.get("a/b.bin").await.unwrap_err();
    assert!(matches!(err, StoreError::NotFound { .. }), "{err}");
    assert!(err.to_string().contains("a/b.bin"), "{err}");
    assert!(err.to_string().contains(store.url()), "{err}");
    let err = store.head("a/b.bin").await.unwrap_err();
    assert!(matches!(err, StoreError::NotFound { .. }), "{err}");

    for bad in ["", "/abs", "x/", "x//y", "x/../y", "./x"] {
        let err = store.put(bad, Bytes::new()).await.unwrap_err();
        assert!(
            matches!(err, StoreError::InvalidKey { .. }),
            "{bad:?}: {err}"
        );
    }
    store.put("empty", Bytes::new()).await.unwrap();
    assert!(store.get("empty").await.unwrap().is_empty());
}

/// Multipart upload with the threshold lowered to 6 MiB and 5 MiB parts (the S3 minimum):
/// 3 parts, the last a few bytes. Returns the upload throughput in MB/s.
pub async fn multipart_round_trip(store: &Store) -> f64 {
    let small_parts = store.clone().with_multipart(6 * MIB, 5 * MIB).unwrap();
    let err = store.clone().with_multipart(6 * MIB, MIB).unwrap_err();
    assert!(err.to_string().contains("part size"), "{err}");
    let data = payload(7, 10 * MIB + 3);
    let start = Instant::now();
    let info = small_parts
        .put("big/object.bin", data.clone())
        .await
        .unwrap();
    let mbps = data.len() as f64 / 1e6 / start.elapsed().as_secs_f64();
    assert_eq!(info.size, data.len() as u64);
    assert_eq!(info.sha256, sha256_hex(&data));
    assert_eq!(small_parts.get_verified(&info).await.unwrap(), data);
    assert_eq!(store.head("big/object.bin").await.unwrap().size, info.size);
    mbps
}

/// A manifest that lists an object nobody uploaded is refused, naming the object, and
/// nothing is committed; once it is uploaded the same manifest commits.
pub async fn commit_order(run: &RunStore) {
    let info0 = run
        .put_object(10, &shard_key(0), payload(10, 2000))
        .await
        .unwrap();
    assert_eq!(info0.key, shard_key(0)); // relative to the step folder
    let missing = ManifestObject {
        key: shard_key(1),
        size: 2000,
        sha256: sha256_hex(&payload(11, 2000)),
        rank: 1,
    };
    let manifest = Manifest::new(
        run.run_id(),
        10,
        1,
        2,
        vec![ManifestObject::from_info(&info0, 0), missing],
        run_state(2),
    );
    let err = run.commit(&manifest).await.unwrap_err();
    assert!(matches!(err, StoreError::CommitRefused { .. }), "{err}");
    assert!(
        err.to_string().contains("rank-00001/model.safetensors"),
        "{err}"
    );
    assert!(run.committed().await.unwrap().is_empty());
    let err = run.store().head(&run.manifest_key(10)).await.unwrap_err();
    assert!(matches!(err, StoreError::NotFound { .. }), "{err}");
    assert!(run.load_latest().await.unwrap().is_none());

    // A size that differs from the listed one is refused too.
    let mut short = manifest.clone();
    short.objects[0].size = 1999;
    run.put_object(10, &shard_key(1), payload(11, 2000))
        .await
        .unwrap();
    let err = run.commit(&short).await.unwrap_err();
    assert!(
        err.to_string().contains("rank-00000/model.safetensors")
            && err.to_string().contains("1999"),
        "{err}"
    );
    // A manifest of another run is refused before anything is checked.
    let mut other = manifest.clone();
    other.run_id = "someone-else".into();
    assert!(run.commit(&other).await.is_err());

    run.commit(&manifest).await.unwrap();
    let committed = run.committed().await.unwrap();
    assert_eq!(committed.len(), 1);
    assert_eq!(committed[0].step, 10);
    assert_eq!(committed[0].world_size, 2);
    assert_eq!(committed[0].objects, 2);
    assert_eq!(committed[0].total_bytes, 4000);
    let loaded = run.load(10).await.unwrap();
    assert_eq!(loaded.objects[&shard_key(1)], payload(11, 2000));
    assert_eq!(loaded.manifest, run.manifest(10).await.unwrap());
}

/// Objects of a step without a manifest (a save interrupted before its commit) are never
/// loaded, even though they are newer.
pub async fn uncommitted_ignored(run: &RunStore) {
    commit_step(run, 10, 2, 500).await;
    run.put_object(20, &shard_key(0), payload(1, 500))
        .await
        .unwrap();
    run.put_object(20, &shard_key(1), payload(2, 500))
        .await
        .unwrap();
    let steps: Vec<u64> = run
        .committed()
        .await
        .unwrap()
        .iter()
        .map(|s| s.step)
        .collect();
    assert_eq!(steps, vec![10]);
    let loaded = run.load_latest().await.unwrap().unwrap();
    assert_eq!(loaded.manifest.step, 10);
    assert!(loaded.skipped.is_empty());
    let err = run.load(20).await.unwrap_err();
    assert!(matches!(err, StoreError::NotCommitted { .. }), "{err}");
    let msg = err.to_string();
    assert!(
        msg.contains("no committed checkpoint at step 20") && msg.contains(MANIFEST),
        "{msg}"
    );
}

/// A damaged object makes load_latest fall back to the previous checkpoint and say which
/// object failed; a rank that does not load the damaged object is not held back by it.
pub async fn corruption_fallback(run: &RunStore, damage: Damage) {
    commit_step(run, 10, 2, 3000).await;
    commit_step(run, 20, 2, 3000).await;
    let damaged = run.object_key(20, &shard_key(1));
    damage.apply(run.store(), &damaged).await;

    let err = run.load(20).await.unwrap_err();
    assert!(matches!(err, StoreError::Corrupt { .. }), "{err}");
    assert!(err.to_string().contains(&damaged), "{err}");

    let loaded = run.load_latest().await.unwrap().unwrap();
    assert_eq!(loaded.manifest.step, 10);
    assert_eq!(loaded.objects.len(), 2);
    assert_eq!(loaded.objects[&shard_key(1)], payload(1001, 3000));
    assert_eq!(loaded.skipped.len(), 1);
    assert_eq!(loaded.skipped[0].0, 20);
    assert!(
        loaded.skipped[0].1.contains(&damaged),
        "{:?}",
        loaded.skipped
    );

    // Rank 0 loads only its own shard, which is intact at step 20.
    let rank0 = run
        .load_latest_with(|o| o.rank == 0)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(rank0.manifest.step, 20);
    assert_eq!(rank0.objects.len(), 1);
    assert_eq!(rank0.objects[&shard_key(0)], payload(2000, 3000));

    // If every committed checkpoint is damaged, that is an error, not a fresh start.
    damage
        .apply(run.store(), &run.object_key(10, &shard_key(0)))
        .await;
    let err = run.load_latest().await.unwrap_err();
    assert!(matches!(err, StoreError::NoValidCheckpoint { .. }), "{err}");
    let msg = err.to_string();
    assert!(msg.contains(&damaged) && msg.contains("step 10"), "{msg}");
}

/// A manifest cut short (or in another format) is skipped with a warning.
pub async fn truncated_manifest(run: &RunStore) {
    commit_step(run, 10, 1, 100).await;
    commit_step(run, 20, 1, 100).await;
    let key = run.manifest_key(20);
    let full = run.store().get(&key).await.unwrap();
    run.store()
        .put(&key, full.slice(..full.len() / 2))
        .await
        .unwrap();
    let steps: Vec<u64> = run
        .committed()
        .await
        .unwrap()
        .iter()
        .map(|s| s.step)
        .collect();
    assert_eq!(steps, vec![10]);
    assert_eq!(run.load_latest().await.unwrap().unwrap().manifest.step, 10);
    let err = run.manifest(20).await.unwrap_err();
    assert!(matches!(err, StoreError::BadManifest { .. }), "{err}");
    assert!(err.to_string().contains(MANIFEST), "{err}");

    let mut old = run.manifest(10).await.unwrap();
    old.format = "lgaf-checkpoint/1".into();
    run.store()
        .put(&key, Bytes::from(serde_json::to_vec(&old).unwrap()))
        .await
        .unwrap();
    assert_eq!(run.committed().await.unwrap().len(), 1);
}

/// prune keeps the newest K committed checkpoints and a newer uncommitted folder (a save in
/// progress); it deletes older ones and old interrupted saves, and keeps a folder whose
/// manifest it cannot use (it may be a checkpoint: not a prune's call).
pub async fn prune_keeps_last(run: &RunStore) {
    run.put_object(5, &shard_key(0), payload(5, 100))
        .await
        .unwrap(); // interrupted save, older than everything committed
    run.store()
        .put(
            &run.object_key(7, MANIFEST),
            Bytes::from_static(b"not a manifest"),
        )
        .await
        .unwrap(); // a damaged (or, just now, unreadable) manifest
    for step in [10, 20, 30, 40, 50] {
        commit_step(run, step, 2, 100).await;
    }
    run.put_object(60, &shard_key(0), payload(60, 100))
        .await
        .unwrap(); // save in progress
    assert!(run.prune(0).await.is_err());
    let pruned = run.prune(2).await.unwrap();
    assert_eq!(pruned.committed, vec![10, 20, 30]);
    assert_eq!(pruned.uncommitted, vec![5]);
    assert_eq!(pruned.objects, 3 * 3 + 1);
    let steps: Vec<u64> = run
        .committed()
        .await
        .unwrap()
        .iter()
        .map(|s| s.step)
        .collect();
    assert_eq!(steps, vec![40, 50]);
    let left: Vec<String> = run
        .store()
        .list(&format!("runs/{}/ckpt", run.run_id()))
        .await
        .unwrap()
        .into_iter()
        .map(|l| l.key)
        .collect();
    let expected: Vec<String> = [
        run.object_key(7, MANIFEST),
        run.object_key(40, MANIFEST),
        run.object_key(40, &shard_key(0)),
        run.object_key(40, &shard_key(1)),
        run.object_key(50, MANIFEST),
        run.object_key(50, &shard_key(0)),
        run.object_key(50, &shard_key(1)),
        run.object_key(60, &shard_key(0)),
    ]
    .into_iter()
    .collect();
    assert_eq!(left, expected);
    assert_eq!(run.load_latest().await.unwrap().unwrap().manifest.step, 50);
    // Nothing more to do the second time.
    assert_eq!(run.prune(2).await.unwrap(), Default::default());
}

/// A checkpoint set aside leaves the checkpoint folders whole (manifest first, so it is
/// never half committed), keeps every object byte for byte under `unverified/`, and a later
/// commit of the same step neither sees nor touches it.
pub async fn set_aside(run: &RunStore) {
    commit_step(run, 10, 2, 100).await;
    let second = commit_step(run, 20, 2, 100).await;
    let aside = run.set_aside(20, 1_700_000_000).await.unwrap();
    assert_eq!(
        aside,
        format!("runs/{}/unverified/000000000020-1700000000", run.run_id())
    );
    let steps: Vec<u64> = run
        .committed()
        .await
        .unwrap()
        .iter()
        .map(|s| s.step)
        .collect();
    assert_eq!(steps, vec![10]);
    let kept = run.store().list(&aside).await.unwrap();
    let keys: Vec<&str> = kept.iter().map(|l| &l.key[aside.len() + 1..]).collect();
    assert_eq!(keys, [MANIFEST, &shard_key(0), &shard_key(1)]);
    for object in &second.objects {
        let bytes = run
            .store()
            .get(&format!("{aside}/{}", object.key))
            .await
            .unwrap();
        assert_eq!(sha256_hex(&bytes), object.sha256, "{}", object.key);
    }
    assert!(run
        .store()
        .list(&run.step_prefix(20))
        .await
        .unwrap()
        .is_empty());
    // Saving step 20 again is a new checkpoint beside the one set aside.
    commit_step(run, 20, 2, 50).await;
    assert_eq!(run.load_latest().await.unwrap().unwrap().manifest.step, 20);
    assert_eq!(run.store().list(&aside).await.unwrap().len(), 3);
}

pub async fn job_state(run: &RunStore) {
    assert!(run.get_job_state().await.unwrap().is_none());
    let state = Bytes::from_static(br#"{"generation":3,"world_size":4}"#);
    run.put_job_state(state.clone()).await.unwrap();
    assert_eq!(run.get_job_state().await.unwrap().unwrap(), state);
    assert_eq!(run.job_key(), format!("runs/{}/job.json", run.run_id()));
}

/// Numbers of one uploader run, for the report.
#[derive(Debug)]
pub struct UploaderNumbers {
    pub big_bytes: usize,
    pub big_submit_stall: Duration,
    pub big_upload: Duration,
    pub backpressure_stall: Duration,
}

/// Background uploads: submit returns at once for a large object, the tickets give the
/// manifest entries, and a too-small pending limit shows up as stall. Synchronous, as the
/// worker's training loop is: must not run inside a tokio runtime.
pub fn uploader_round_trip(run: &RunStore, big_bytes: usize) -> UploaderNumbers {
    let blocking = BlockingRunStore::new(run.clone()).unwrap();
    let uploader = BackgroundUploader::with_max_pending(run.clone(), 2 * big_bytes).unwrap();
    let big = payload(42, big_bytes);
    let start = Instant::now();
    let t_big = uploader.submit(10, &shard_key(0), big.clone());
    let big_submit_stall = t_big.stall();
    let t_small = uploader.submit(10, &shard_key(1), payload(43, 1000));
    assert_eq!(t_big.key(), shard_key(0));
    assert_eq!(t_big.step(), 10);
    let info_big = t_big.wait().unwrap();
    let big_upload = start.elapsed();
    let small_stall = t_small.stall();
    let info_small = t_small.wait().unwrap();
    assert_eq!(info_big.size, big_bytes as u64);
    assert_eq!(info_big.key, shard_key(0));
    assert!(
        big_submit_stall < Duration::from_millis(250),
        "submit of {big_bytes} bytes blocked for {big_submit_stall:?}"
    );
    uploader.flush();
    assert_eq!(uploader.pending_bytes(), 0);
    let stats = uploader.stats();
    assert_eq!((stats.submitted, stats.completed, stats.failed), (2, 2, 0));
    assert_eq!(stats.bytes_uploaded, big_bytes as u64 + 1000);
    assert!(stats.upload_total > Duration::ZERO && stats.upload_max <= stats.upload_total);
    assert!(stats.throughput().unwrap() > 0.0);
    assert_eq!(stats.stall_total, big_submit_stall + small_stall);
    drop(uploader);

    let manifest = Manifest::new(
        run.run_id(),
        10,
        1,
        2,
        vec![
            ManifestObject::from_info(&info_big, 0),
            ManifestObject::from_info(&info_small, 1),
        ],
        run_state(2),
    );
    blocking.commit(&manifest).unwrap();
    let loaded = blocking.load_latest().unwrap().unwrap();
    assert_eq!(loaded.objects[&shard_key(0)], big);

    // Back pressure: with room for one 6 MiB object only, the second submit waits for the
    // first upload, and that wait is what the stall reports.
    let tight = BackgroundUploader::with_max_pending(run.clone(), 8 * MIB).unwrap();
    let parts: Vec<Bytes> = (0..3).map(|i| payload(i, 6 * MIB)).collect();
    let mut first = tight.submit(20, "part-0", parts[0].clone());
    let second = tight.submit(20, "part-1", parts[1].clone());
    // The second submit could only return once the first upload had finished.
    assert!(
        matches!(first.try_wait(), Some(Ok(_))),
        "submit did not wait for room"
    );
    let third = tight.submit(20, "part-2", parts[2].clone());
    let stalls = [first.stall(), second.stall(), third.stall()];
    for t in [first, second, third] {
        t.wait().unwrap();
    }
    let stats = tight.stats();
    assert_eq!(stats.stall_total, stalls.iter().sum::<Duration>());
    assert_eq!(stats.stall_max, *stalls.iter().max().unwrap());
    assert!(stats.stall_max > Duration::ZERO);

    UploaderNumbers {
        big_bytes,
        big_submit_stall,
        big_upload,
        backpressure_stall: stats.stall_total,
    }
}

/// The coordinator lease: one holder at a time; the holder renews; another waits until it
/// lapses or its holder is known to be gone; a holder whose lease was taken over learns
/// so at its next renewal.
pub async fn lease(run: &RunStore) {
    let lease = |holder: &str, until: u64| Lease {
        holder: holder.into(),
        host: "host-a".into(),
        pid: 42,
        expires_at_ms: until,
    };
    let never = |_: &Lease| false;
    let a = lease("coord-a", 10_000);
    assert_eq!(
        run.try_acquire_lease(&a, 1_000, never).await.unwrap(),
        LeaseAttempt::Acquired
    );
    // Held and running: B is refused, whatever it tries.
    let b = lease("coord-b", 20_000);
    assert_eq!(
        run.try_acquire_lease(&b, 2_000, never).await.unwrap(),
        LeaseAttempt::HeldBy(a.clone())
    );
    assert!(matches!(
        run.renew_lease(&b).await.unwrap_err(),
        StoreError::LeaseHeld { holder, .. } if holder.holder == "coord-a"
    ));
    // A renews (and may take it again); B's release does not drop A's lease.
    run.renew_lease(&lease("coord-a", 15_000)).await.unwrap();
    run.release_lease("coord-b").await.unwrap();
    assert_eq!(
        run.try_acquire_lease(&b, 14_000, never).await.unwrap(),
        LeaseAttempt::HeldBy(lease("coord-a", 15_000))
    );
    // Lapsed: B takes over, and A learns it at its next renewal.
    assert_eq!(
        run.try_acquire_lease(&b, 16_000, never).await.unwrap(),
        LeaseAttempt::Acquired
    );
    let lost = run.renew_lease(&a).await.unwrap_err().to_string();
    assert!(
        lost.contains("coordinated by coord-b on host-a (pid 42)"),
        "{lost}"
    );
    // A holder known to be gone (say, a dead pid on this host) is replaced at once.
    let c = lease("coord-c", 30_000);
    assert_eq!(
        run.try_acquire_lease(&c, 17_000, |held| held.holder == "coord-b")
            .await
            .unwrap(),
        LeaseAttempt::Acquired
    );
    run.release_lease("coord-c").await.unwrap();
    assert_eq!(
        run.try_acquire_lease(&a, 17_000, never).await.unwrap(),
        LeaseAttempt::Acquired
    );
}

/// Conditional replaces: a write against the version read lands once; a second against
/// the same (now stale) version is refused, as is one against an object that is gone.
/// `conditional`: the backend supports them (S3); otherwise each says so and writes nothing.
pub async fn replace_if_unchanged(store: &Store, conditional: bool) {
    use lgaf_store::Replaced;
    let key = "cas/object.json";
    store.put(key, Bytes::from_static(b"v1")).await.unwrap();
    let (bytes, v1) = store
        .get_versioned_at_most(key, "test object", 64)
        .await
        .unwrap();
    assert_eq!(&bytes[..], b"v1");
    let first = store
        .put_if_unchanged(key, Bytes::from_static(b"v2"), &v1)
        .await
        .unwrap();
    if !conditional {
        assert_eq!(first, Replaced::Unsupported);
        assert_eq!(&store.get(key).await.unwrap()[..], b"v1");
        return;
    }
    assert_eq!(first, Replaced::Done);
    assert_eq!(
        store
            .put_if_unchanged(key, Bytes::from_static(b"v3"), &v1)
            .await
            .unwrap(),
        Replaced::Changed
    );
    assert_eq!(&store.get(key).await.unwrap()[..], b"v2");
    store.delete(key).await.unwrap();
    assert_eq!(
        store
            .put_if_unchanged(key, Bytes::from_static(b"v4"), &v1)
            .await
            .unwrap(),
        Replaced::Changed
    );
}

/// Coordinators racing for one run's lease, `rounds` times: `racers` stores (one per
/// coordinator, each its own client) try at the same instant to take a fresh lease, and
/// then, once it has lapsed, the others try to take it over while its holder renews it.
/// Each time exactly one succeeds, and every other one is told who holds it. For a backend
/// with conditional replaces only (see `lgaf_store::lease`).
pub async fn lease_race(racers: &[RunStore], rounds: usize) {
    let lease = |i: usize, until: u64| Lease {
        holder: format!("coord-{i}"),
        host: "race".into(),
        pid: 1,
        expires_at_ms: until,
    };
    for round in 0..rounds {
        let run = &racers[0];
        let _ = run.store().delete(&run.lease_key()).await;
        // Fresh: nobody holds it.
        let attempts = futures::future::join_all(racers.iter().enumerate().map(|(i, r)| {
            let me = lease(i, 1_000);
            async move { r.try_acquire_lease(&me, 0, |_| false).await.unwrap() }
        }))
        .await;
        let winners: Vec<usize> = (0..racers.len())
            .filter(|&i| attempts[i] == LeaseAttempt::Acquired)
            .collect();
        assert_eq!(winners.len(), 1, "round {round}, fresh lease: {attempts:?}");
        // Lapsed (2_000 is past its 1_000): the holder renews it while the others take it.
        let holder = winners[0];
        let renewed_lease = lease(holder, 3_000);
        let renewal = racers[holder].renew_lease(&renewed_lease);
        let takeovers =
            futures::future::join_all(racers.iter().enumerate().filter(|&(i, _)| i != holder).map(
                |(i, r)| {
                    let me = lease(i, 10_000);
                    async move { (i, r.try_acquire_lease(&me, 2_000, |_| false).await.unwrap()) }
                },
            ));
        let (renewed, takeovers) = futures::join!(renewal, takeovers);
        let takers: Vec<usize> = takeovers
            .iter()
            .filter(|(_, a)| *a == LeaseAttempt::Acquired)
            .map(|(i, _)| *i)
            .collect();
        match &renewed {
            Ok(()) => assert!(
                takers.is_empty(),
                "round {round}: renewed, and taken by {takers:?}"
            ),
            Err(StoreError::LeaseHeld { holder: h, .. }) => assert_eq!(
                takers,
                [h.holder
                    .trim_start_matches("coord-")
                    .parse::<usize>()
                    .unwrap()],
                "round {round}: {takeovers:?}"
            ),
            Err(e) => panic!("round {round}: the holder's renewal failed: {e}"),
        }
    }
}

/// Streamed verification and download: the content checked without being kept, an
/// object written to a file only once it verifies, and an object that has grown past its
/// listed size reported by size (no body read) with nothing written.
pub async fn verify_and_download(run: &RunStore, out_dir: &std::path::Path) {
    let size = 3 * MIB + 5;
    commit_step(run, 10, 1, size).await;
    assert_eq!(run.verify(10).await.unwrap().step, 10);
    let verified = run.verify_latest().await.unwrap().unwrap();
    assert_eq!(verified.manifest.step, 10);
    assert!(verified.skipped.is_empty());
    let out = out_dir.join("w.bin");
    let got = run.download(10, &shard_key(0), &out).await.unwrap();
    assert_eq!((got.manifest.step, got.object.size), (10, size as u64));
    assert_eq!(std::fs::read(&out).unwrap(), payload(1000, size));

    let key = run.object_key(10, &shard_key(0));
    let mut bytes = run.store().get(&key).await.unwrap().to_vec();
    bytes.push(0);
    run.store().put(&key, Bytes::from(bytes)).await.unwrap();
    let err = run.verify(10).await.unwrap_err();
    assert!(matches!(err, StoreError::Corrupt { .. }), "{err}");
    let msg = err.to_string();
    assert!(
        msg.contains(&key)
            && msg.contains(&format!("expected {size} bytes"))
            && msg.contains(&format!("found {} bytes", size + 1)),
        "{msg}"
    );
    let fresh = out_dir.join("fresh.bin");
    assert!(run.download(10, &shard_key(0), &fresh).await.is_err());
    assert!(!fresh.exists());
    let err = run.verify_latest().await.unwrap_err();
    assert!(matches!(err, StoreError::NoValidCheckpoint { .. }), "{err}");

    let err = run.download(10, "absent.bin", &fresh).await.unwrap_err();
    assert!(matches!(err, StoreError::NotInCheckpoint { .. }), "{err}");
    assert!(err.to_string().contains("absent.bin"), "{err}");
    let left: Vec<_> = std::fs::read_dir(out_dir)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(left, vec!["w.bin"]);
}

/// A valid run state of a run on `world_size` ranks (what rank 0 would send).
pub fn run_state(world_size: u32) -> RunState {
    RunState::new(world_size, 10, 1024.0, 0, json!({"train": {"seed": 7}}))
}
