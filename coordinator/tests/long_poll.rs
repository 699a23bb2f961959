//! Long polls wait without burning CPU. A test binary of its own, so that no other test
//! adds to the process's CPU time while it measures.

mod common;

use std::time::Duration;

use common::*;
use lgaf_proto::v1;
use tonic::Code;

/// User plus system CPU time of this process, in clock ticks (usually 10 ms).
fn cpu_ticks() -> u64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap();
    // Fields after the parenthesised command name; utime and stime are the 12th and 13th.
    let fields: Vec<&str> = stat
        .rsplit(')')
        .next()
        .unwrap()
        .split_whitespace()
        .collect();
    fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_waiting_joins_do_not_wake_each_other() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir_store(dir.path());
    let server = start(settings(3, &store), &store, Duration::from_secs(2)).await;
    let mut a = TestWorker::register(&server.url, None, 1).await;
    let mut b = TestWorker::register(&server.url, None, 2).await;
    let join = |id: &str| v1::JoinRequest {
        api_version: 1,
        worker_id: id.into(),
        facts: Some(facts()),
        left_generation: 0,
        live: None,
    };
    let (ja, jb) = (join(&a.id), join(&b.id));
    let before = cpu_ticks();
    let (ra, rb) = tokio::join!(a.client.join(ja), b.client.join(jb));
    let used = cpu_ticks() - before;
    assert_eq!(ra.unwrap_err().code(), Code::DeadlineExceeded);
    assert_eq!(rb.unwrap_err().code(), Code::DeadlineExceeded);
    // Two seconds of waiting; a busy loop would use about as much CPU.
    assert!(used < 50, "{used} ticks of CPU for 2 s of waiting");
}
