//! The store against a real S3 server: moto's `moto_server`, started on a free port.
//!
//! `make test` installs moto into `.venv-s3` and passes its `moto_server` in
//! `LGAF_MOTO_SERVER`. Like the MXNet tests, plain `cargo test` falls back to the
//! workspace's `.venv-s3`; with neither, the test prints that it was skipped.

mod common;
#[path = "support/moto.rs"]
mod moto;

use std::time::Instant;

use common::*;
use lgaf_store::{RunStore, Store};
use moto::{moto_server, Moto};

const BUCKET: &str = "lgaf-test";

/// One server for all scenarios (starting moto costs a few seconds); each scenario has its
/// own prefix or run id.
#[test]
fn s3_against_moto_server() {
    let Some(binary) = moto_server() else {
        println!("skipped: set LGAF_MOTO_SERVER (make test does)");
        return;
    };
    let started = Instant::now();
    let moto = Moto::start(&binary);
    eprintln!("moto_server ready in {:?}", started.elapsed());
    moto.create_bucket(BUCKET);
    let env = moto.env();
    let open =
        |path: &str| Store::from_url_with_env(&format!("s3://{BUCKET}/{path}"), &env).unwrap();
    let run = |run_id: &str| RunStore::new(open("ckpts"), run_id).unwrap();

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let store = open("roundtrip");
        assert_eq!(store.url(), format!("s3://{BUCKET}/roundtrip"));
        store_round_trip(&store).await;
        // The URL's prefix is applied: other prefixes do not see these objects.
        assert!(open("elsewhere").list("").await.unwrap().is_empty());
        let bare = Store::from_url_with_env(&format!("s3://{BUCKET}"), &env).unwrap();
        assert!(bare
            .list("roundtrip/a")
            .await
            .unwrap()
            .iter()
            .any(|l| l.key == "roundtrip/a/c.bin"));

        let mbps = multipart_round_trip(&open("multipart")).await;
        eprintln!("moto multipart upload (10 MiB, 5 MiB parts): {mbps:.0} MB/s");

        commit_order(&run("commit")).await;
        uncommitted_ignored(&run("uncommitted")).await;
        corruption_fallback(&run("corrupt"), Damage::Api).await;
        truncated_manifest(&run("manifest")).await;
        prune_keeps_last(&run("prune")).await;
        set_aside(&run("aside")).await;
        job_state(&run("job")).await;
        lease(&run("lease")).await;
        replace_if_unchanged(&open("cas"), true).await;
        // Separate clients, as separate coordinators have.
        let racers: Vec<RunStore> = (0..4).map(|_| run("race")).collect();
        lease_race(&racers, 20).await;
        let out = std::env::temp_dir().join(format!("lgaf-s3-{}-out", std::process::id()));
        let _ = std::fs::remove_dir_all(&out);
        std::fs::create_dir_all(&out).unwrap();
        verify_and_download(&run("stream"), &out).await;
        let _ = std::fs::remove_dir_all(&out);
    });
    drop(rt);

    let numbers = uploader_round_trip(&run("uploader"), 100_000_000);
    eprintln!(
        "moto uploader: submit of {} bytes stalled {:?}; upload took {:?} ({:.0} MB/s); \
         back-pressure stall {:?}",
        numbers.big_bytes,
        numbers.big_submit_stall,
        numbers.big_upload,
        numbers.big_bytes as f64 / 1e6 / numbers.big_upload.as_secs_f64(),
        numbers.backpressure_stall,
    );
    eprintln!("S3 test total {:?}", started.elapsed());
    drop(moto);
}
