//! Saved jobs: a snapshot round-trips, and snapshots written before the job stored parsed
//! devices and typed generation ends still load.

use super::*;

#[test]
fn snapshots_round_trip() {
    let (mut job, ids) = formed(2);
    trained_to(&mut job, 8, 5);
    job.checkpoint_ack(&ack(&ids[0], 0, 8), 5).unwrap();
    let json = serde_json::to_string(&job.snapshot(9)).unwrap();
    let back: JobSnapshot = serde_json::from_str(&json).unwrap();
    assert_eq!(back.format, SNAPSHOT_FORMAT);
    assert_eq!(state(&back.job), state(&job));
}

/// What a coordinator saved before workers' devices were parsed and a generation's end was
/// typed (made by that coordinator's code): generation 1 of two GPU workers in slots ended
/// when the local worker of slot 1 was killed; the other has not joined again.
const SAVED_BY_AN_EARLIER_COORDINATOR: &str = include_str!("snapshot-lgaf-job-1.json");

#[test]
fn a_snapshot_an_earlier_coordinator_wrote_still_loads_and_goes_on() {
    let saved: JobSnapshot = serde_json::from_str(SAVED_BY_AN_EARLIER_COORDINATOR).unwrap();
    assert_eq!(saved.format, SNAPSHOT_FORMAT);
    let mut job = saved.job;
    let survivor = job.workers().next().unwrap();
    assert_eq!(
        (survivor.id.as_str(), survivor.device),
        ("w1-t", lgaf_proto::Device::Cuda(0))
    );
    assert_eq!(
        job.generation().unwrap().ended,
        Some(GenerationEnd::RanksLost(
            "rank 1 (worker w2-t, local slot 1) was killed by SIGKILL".into()
        ))
    );
    // The loaded devices are checked like registered ones: a second rank on the survivor's
    // GPU is refused, one on the other GPU replaces the lost worker.
    let e = job
        .register(&register_req("cuda:0", None, 2), 20_100)
        .unwrap_err();
    assert!(e.to_string().contains("one GPU per rank"), "{e}");
    let replacement = job
        .register(&register_req("cuda:1", Some(1), 2), 20_100)
        .unwrap()
        .worker_id;
    assert!(join(&mut job, "w1-t").is_none());
    let reply = join(&mut job, &replacement).expect("generation 2 formed");
    assert_eq!(
        (reply.generation, reply.rank, reply.backend),
        (2, 1, v1::CollectiveBackend::Nccl as i32)
    );
    // Saved again, a device is written as before.
    assert_eq!(state(&job)["workers"]["w1-t"]["device"], "cuda:0");
}

#[test]
fn devices_and_failed_commits_are_saved_as_the_protocol_spells_them() {
    let (mut job, ids) = formed(2);
    trained_to(&mut job, 4, 5);
    for (rank, id) in ids.iter().enumerate() {
        job.checkpoint_ack(&ack(id, rank as u32, 4), 5).unwrap();
    }
    job.commit_done(4, Err(CommitError("disk full".into())), 5);
    let saved = state(&job);
    assert_eq!(saved["workers"][&ids[0]]["device"], "cpu");
    assert_eq!(
        saved["pending"]["4"]["status"],
        serde_json::json!({ "Failed": "disk full" })
    );
    let back: Job = serde_json::from_value(saved.clone()).unwrap();
    assert_eq!(state(&back), saved);
    // A device the protocol does not know is refused on load.
    let mut garbled = saved;
    garbled["workers"][&ids[0]]["device"] = "gpu0".into();
    let e = serde_json::from_value::<Job>(garbled).unwrap_err();
    assert!(
        e.to_string()
            .contains(r#"expected "cpu" or "cuda:N", got "gpu0""#),
        "{e}"
    );
}

#[test]
fn a_generation_end_is_saved_with_its_kind_and_read_from_its_reason_alone() {
    let (mut job, _) = formed_with(settings(2), true);
    assert!(job.local_worker_exited(1, "was killed by SIGKILL", 20_000));
    let saved = state(&job);
    assert_eq!(
        saved["generation"]["ended"],
        serde_json::json!({ "ranks_lost": "rank 1 (worker w2-t, local slot 1) was killed by SIGKILL" })
    );
    let back: Job = serde_json::from_value(saved.clone()).unwrap();
    assert_eq!(state(&back), saved);
    // Earlier coordinators saved the reason alone; growth is the end worded "growing from".
    let mut generation = saved["generation"].clone();
    generation["ended"] =
        "growing from 2 to 3 ranks at the checkpoint of step 8 (1 worker(s) joined)".into();
    let grown: Generation = serde_json::from_value(generation).unwrap();
    assert!(
        matches!(&grown.ended, Some(GenerationEnd::ToGrow(reason)) if reason.starts_with("growing from 2 to 3")),
        "{:?}",
        grown.ended
    );
}
