//! The coordinator over real gRPC on loopback, with workers played by test tasks.

mod common;

use std::time::{Duration, Instant};

use common::*;
use lgaf_coordinator::store::JobStatePersistence;
use lgaf_coordinator::JobPhase;
use lgaf_proto::v1;
use tonic::Code;

fn job_state(server: &Server) -> serde_json::Value {
    server
        .service
        .with_job(|j| serde_json::to_value(j).unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_workers_train_to_the_end_with_committed_checkpoints() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir_store(dir.path());
    let server = start(settings(3, &store), &store, Duration::from_secs(10)).await;

    // Slots 1 and 0 for two of them; the one without a slot ranks after them.
    let tasks: Vec<_> = [(Some(1), 5001), (None, 5002), (Some(0), 5000)]
        .into_iter()
        .map(|(slot, port)| tokio::spawn(run_worker(server.url.clone(), slot, port, facts())))
        .collect();
    let mut summaries = Vec::new();
    for t in tasks {
        summaries.push(t.await.unwrap().unwrap());
    }
    let ranks: Vec<u32> = summaries.iter().map(|s| s.rank).collect();
    assert_eq!(
        ranks,
        [1, 2, 0],
        "slot 1 -> rank 1, no slot -> last, slot 0 -> rank 0"
    );
    for s in &summaries {
        assert_eq!((s.world_size, s.total_steps), (3, 20));
        assert_eq!(s.epochs.len(), 2);
        assert_eq!(s.epochs[0].checkpoint_steps, [4, 8, 10]);
        assert_eq!(s.epochs[1].checkpoint_steps, [12, 16, 20]);
        assert_eq!(s.epochs[1].seed, 11);
        assert!(!s.stopped_early);
    }
    // Each checkpoint was committed by exactly one ack: the one that completed the set.
    let mut committed: Vec<u64> = summaries.iter().flat_map(|s| s.committed.clone()).collect();
    committed.sort_unstable();
    assert_eq!(committed, [4, 8, 10, 12, 16, 20]);

    let manifests = manifests(&server.store).await;
    let steps: Vec<u64> = manifests.iter().map(|m| m.step).collect();
    assert_eq!(steps, [4, 8, 10, 12, 16, 20]);
    let last = manifests.last().unwrap();
    assert_eq!(last.format, lgaf_store::FORMAT);
    assert_eq!((last.step, last.epoch, last.world_size), (20, 2, 3));
    assert_eq!(last.run_id, "test-run");
    assert_eq!(
        (last.state.data_world_size, last.state.steps_per_epoch),
        (3, 10)
    );
    let keys: Vec<(u32, &str)> = last
        .objects
        .iter()
        .map(|o| (o.rank, o.key.as_str()))
        .collect();
    assert_eq!(
        keys,
        [
            (0, "model.safetensors"),
            (0, "classifier/rank-00000.safetensors"),
            (1, "classifier/rank-00001.safetensors"),
            (2, "classifier/rank-00002.safetensors")
        ]
    );
    assert_eq!(last.objects[3].sha256, sha256_hex(b"rank 2 step 20"));
    // Every checkpoint verifies as lgaf-store loads it.
    for step in steps {
        let loaded = server.store.load(step).await.unwrap();
        assert_eq!(
            &loaded.objects["classifier/rank-00001.safetensors"][..],
            format!("rank 1 step {step}").as_bytes()
        );
    }

    let mut c = client(&server.url).await;
    let status = c
        .get_job_status(v1::JobStatusRequest { api_version: 1 })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(status.state, v1::JobState::Finished as i32);
    assert_eq!((status.generation, status.world_size), (1, 3));
    assert_eq!((status.step, status.total_steps), (20, 20));
    assert_eq!(status.last_checkpoint_step, 20);
    assert!(
        (status.loss - 0.5).abs() < 1e-9,
        "rank 0's last loss, 10/20"
    );
    assert_eq!(status.workers.len(), 3);
    for (rank, w) in status.workers.iter().enumerate() {
        assert_eq!(w.rank, rank as i32);
        assert_eq!(w.state, "finished");
        assert_eq!(w.host, "test-host");
    }
    assert!(status.error.is_empty());

    // The job state on disk says so too.
    let saved = JobStatePersistence::load(&server.store, RUN)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(saved.job.phase(), &JobPhase::Finished);
    assert_eq!(saved.job.last_commit().unwrap().step, 20);
    assert_eq!(
        saved.job.last_commit().unwrap().manifest,
        "runs/test-run/ckpt/000000000020/MANIFEST.json"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_requests_get_their_codes_and_change_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir_store(dir.path());
    let server = start(settings(2, &store), &store, Duration::from_secs(10)).await;
    let mut a = TestWorker::register(&server.url, None, 6000).await;
    let mut b = TestWorker::register(&server.url, None, 6001).await;
    let join_b = tokio::spawn(async move {
        b.join(facts()).await.unwrap();
        b
    });
    a.join(facts()).await.unwrap();
    let b = join_b.await.unwrap();
    // Rank 0 has the plan of the epoch its (refused) acks below are in, as it would have.
    a.plan_to(4).await;
    let before = job_state(&server);
    let id = a.id.clone();
    let hb = |worker_id: &str, generation: u64, api_version: u32| v1::HeartbeatRequest {
        api_version,
        worker_id: worker_id.into(),
        generation,
        step: 1,
    };
    let mut c = a.client.clone();

    let e = c.heartbeat(hb(&id, 1, 2)).await.unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition);
    assert!(
        e.message().contains("version 2") && e.message().contains("version 1"),
        "{}",
        e.message()
    );
    let e = c.heartbeat(hb(&id, 1, 0)).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(e.message().starts_with("api_version:"), "{}", e.message());
    let e = c.heartbeat(hb("", 1, 1)).await.unwrap_err();
    assert_eq!(
        (e.code(), e.message()),
        (Code::InvalidArgument, "worker_id: missing")
    );
    let e = c.heartbeat(hb("w99-t", 1, 1)).await.unwrap_err();
    assert_eq!(e.code(), Code::NotFound);
    assert!(e.message().contains("w99-t"));
    let e = c.heartbeat(hb(&id, 7, 1)).await.unwrap_err();
    assert_eq!(e.code(), Code::Aborted);
    let e = c.heartbeat(hb(&id, 0, 1)).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(e.message().starts_with("generation:"));

    let mut reg = register_request(None, 6002);
    reg.device = "gpu0".into();
    let e = c.register(reg).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(e.message().starts_with("device:"), "{}", e.message());
    // Every place taken: come back later.
    let e = c.register(register_request(None, 6002)).await.unwrap_err();
    assert_eq!(e.code(), Code::Unavailable, "{}", e.message());

    let e = c
        .join(v1::JoinRequest {
            api_version: 1,
            worker_id: id.clone(),
            facts: None,
            left_generation: 0,
            live: None,
        })
        .await
        .unwrap_err();
    assert_eq!(
        (e.code(), e.message()),
        (Code::InvalidArgument, "facts: missing")
    );
    let mut other = facts();
    other.seed = 12;
    let e = c
        .join(v1::JoinRequest {
            api_version: 1,
            worker_id: id.clone(),
            facts: Some(other),
            left_generation: 0,
            live: None,
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition);
    assert!(e.message().starts_with("facts.seed:"), "{}", e.message());

    let e = c
        .get_epoch_plan(v1::EpochPlanRequest {
            api_version: 1,
            worker_id: id.clone(),
            generation: 1,
            epoch: 99,
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::OutOfRange);

    let mut ack = a.checkpoint(4, 0).await;
    ack.objects[0].sha256 = "nothex".into();
    let e = c.checkpoint_ack(ack).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(
        e.message().starts_with("objects[0].sha256:"),
        "{}",
        e.message()
    );
    let e = c
        .checkpoint_ack(a.checkpoint(5, 0).await)
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(
        e.message().starts_with("step: 5 is not a checkpoint step"),
        "{}",
        e.message()
    );

    let e = c
        .publish_nccl_id(v1::PublishNcclIdRequest {
            api_version: 1,
            worker_id: id.clone(),
            generation: 1,
            nccl_id: vec![0; 128],
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition);
    let e = c
        .finish(v1::FinishRequest {
            api_version: 1,
            worker_id: id.clone(),
            generation: 1,
            step: 3,
            error: String::new(),
            retryable: false,
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(e.message().starts_with("step:"));
    let e = c
        .get_job_status(v1::JobStatusRequest { api_version: 9 })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition);

    // Bounded message size: a 5 MiB request is refused before it reaches the job.
    let mut huge = register_request(None, 6003);
    huge.host = "h".repeat(5 << 20);
    let e = c.register(huge).await.unwrap_err();
    assert_eq!(e.code(), Code::OutOfRange, "{}", e.message());

    // Bytes that are not a protobuf message at all, on every method.
    let channel = tonic::transport::Endpoint::from_shared(server.url.clone())
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut raw = tonic::client::Grpc::new(channel);
    for method in ["Register", "Join", "Heartbeat", "CheckpointAck", "Finish"] {
        raw.ready().await.unwrap();
        let path = format!("/lgaf.v1.Coordinator/{method}");
        let e = raw
            .unary(
                tonic::Request::new(vec![0xff; 64]),
                tonic::codegen::http::uri::PathAndQuery::try_from(path).unwrap(),
                RawBytes,
            )
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::Internal, "{method}: {}", e.message());
    }

    assert_eq!(
        job_state(&server),
        before,
        "refused requests leave the job unchanged"
    );
    // And the workers go on.
    assert_eq!(
        b.client
            .clone()
            .heartbeat(hb(&b.id, 1, 1))
            .await
            .unwrap()
            .into_inner()
            .action,
        v1::WorkerAction::Continue as i32
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn join_answers_deadline_exceeded_while_the_generation_is_incomplete() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir_store(dir.path());
    let server = start(settings(2, &store), &store, Duration::from_millis(300)).await;
    let a = TestWorker::register(&server.url, None, 7000).await;
    let req = || v1::JoinRequest {
        api_version: 1,
        worker_id: a.id.clone(),
        facts: Some(facts()),
        left_generation: 0,
        live: None,
    };
    let started = Instant::now();
    let e = a.client.clone().join(req()).await.unwrap_err();
    assert_eq!(e.code(), Code::DeadlineExceeded);
    assert!(
        e.message().contains("1 of 2 workers registered, 1 joined"),
        "{}",
        e.message()
    );
    assert!(started.elapsed() >= Duration::from_millis(250));

    // The client's own deadline, shorter than the server's, is honoured with the
    // server's reason.
    let server2 = start(settings(2, &store), &store, Duration::from_secs(30)).await;
    let mut w = TestWorker::register(&server2.url, None, 7001).await;
    let mut r = tonic::Request::new(v1::JoinRequest {
        api_version: 1,
        worker_id: w.id.clone(),
        facts: Some(facts()),
        left_generation: 0,
        live: None,
    });
    r.set_timeout(Duration::from_millis(600));
    let started = Instant::now();
    let e = w.client.join(r).await.unwrap_err();
    assert_eq!(e.code(), Code::DeadlineExceeded, "{}", e.message());
    assert!(e.message().contains("has not formed"), "{}", e.message());
    assert!(started.elapsed() < Duration::from_secs(5));
    drop(server);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nccl_id_long_polls_until_rank0_publishes() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir_store(dir.path());
    let server = start(settings(2, &store), &store, Duration::from_secs(10)).await;
    let mut workers = Vec::new();
    for (slot, device) in [(0, "cuda:0"), (1, "cuda:1")] {
        let mut c = client(&server.url).await;
        let mut r = register_request(Some(slot), 0);
        r.device = device.into();
        r.collective_addr.clear();
        let reply = c.register(r).await.unwrap().into_inner();
        workers.push((c, reply.worker_id));
    }
    let (mut c1, id1) = workers.pop().unwrap();
    let (mut c0, id0) = workers.pop().unwrap();
    let join = |id: String| v1::JoinRequest {
        api_version: 1,
        worker_id: id,
        facts: Some(facts()),
        left_generation: 0,
        live: None,
    };
    let (j0, j1) = tokio::join!(c0.join(join(id0.clone())), c1.join(join(id1.clone())));
    let (j0, j1) = (j0.unwrap().into_inner(), j1.unwrap().into_inner());
    assert_eq!((j0.rank, j1.rank), (0, 1));
    assert_eq!(j1.backend, v1::CollectiveBackend::Nccl as i32);

    let waiter = tokio::spawn(async move {
        let started = Instant::now();
        let r = c1
            .get_nccl_id(v1::GetNcclIdRequest {
                api_version: 1,
                worker_id: id1,
                generation: 1,
            })
            .await
            .unwrap()
            .into_inner();
        (r.nccl_id, started.elapsed())
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    c0.publish_nccl_id(v1::PublishNcclIdRequest {
        api_version: 1,
        worker_id: id0,
        generation: 1,
        nccl_id: (0..128).collect(),
    })
    .await
    .unwrap();
    let (id, waited) = waiter.await.unwrap();
    assert_eq!(id, (0..128).collect::<Vec<u8>>());
    assert!(waited >= Duration::from_millis(250), "{waited:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_checkpoint_is_committed_by_the_last_ack_and_a_failed_commit_is_retried() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir_store(dir.path());
    let server = start(settings(2, &store), &store, Duration::from_secs(10)).await;
    let mut a = TestWorker::register(&server.url, Some(0), 8000).await;
    let mut b = TestWorker::register(&server.url, Some(1), 8001).await;
    let (ja, jb) = tokio::join!(a.join(facts()), b.join(facts()));
    ja.unwrap();
    jb.unwrap();
    // World size 2: 1001 / 2 / 32 = 15 steps per epoch; step 4 is a checkpoint.
    let r = a
        .client
        .checkpoint_ack(a.checkpoint(4, 0).await)
        .await
        .unwrap();
    assert!(!r.into_inner().committed);
    assert!(
        committed_steps(&server.store).await.is_empty(),
        "not before every rank"
    );
    let r = b
        .client
        .checkpoint_ack(b.checkpoint(4, 0).await)
        .await
        .unwrap();
    assert!(r.into_inner().committed);
    assert_eq!(committed_steps(&server.store).await, [4]);

    // Rank 1 acknowledges an object it has not uploaded: the commit fails naming it,
    // nothing is committed, and the same ack once the object is uploaded commits.
    a.client
        .checkpoint_ack(a.checkpoint(8, 0).await)
        .await
        .unwrap();
    b.plan_to(8).await;
    let objects = b.objects(8);
    let ack = b.ack(8, 0, &objects);
    let e = b.client.checkpoint_ack(ack.clone()).await.unwrap_err();
    assert_eq!(e.code(), Code::Unavailable);
    assert!(e.message().contains("acknowledge again"), "{}", e.message());
    assert!(
        e.message()
            .contains("runs/test-run/ckpt/000000000008/classifier/rank-00001.safetensors")
            && e.message().contains("was not uploaded"),
        "{}",
        e.message()
    );
    assert_eq!(server.service.status().last_checkpoint_step, 4);
    assert_eq!(committed_steps(&server.store).await, [4]);
    b.upload(8, &objects).await;
    assert!(
        b.client
            .checkpoint_ack(ack)
            .await
            .unwrap()
            .into_inner()
            .committed
    );
    assert_eq!(server.service.status().last_checkpoint_step, 8);
    assert_eq!(committed_steps(&server.store).await, [4, 8]);
    server.store.load(8).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_error_fails_the_job_and_the_others_are_told_to_stop() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir_store(dir.path());
    let server = start(settings(2, &store), &store, Duration::from_secs(10)).await;
    let mut a = TestWorker::register(&server.url, Some(0), 9000).await;
    let mut b = TestWorker::register(&server.url, Some(1), 9001).await;
    let (ja, jb) = tokio::join!(a.join(facts()), b.join(facts()));
    ja.unwrap();
    jb.unwrap();
    assert_eq!(
        a.heartbeat(3).await.unwrap().action,
        v1::WorkerAction::Continue as i32
    );
    b.client
        .finish(v1::FinishRequest {
            api_version: 1,
            worker_id: b.id.clone(),
            generation: 1,
            step: 7,
            error: "injected failure at step 7".into(),
            retryable: false,
        })
        .await
        .unwrap();
    assert!(!server.service.with_job(|j| j.all_released()));
    assert_eq!(
        a.heartbeat(8).await.unwrap().action,
        v1::WorkerAction::Stop as i32
    );
    assert!(server.service.with_job(|j| j.all_released()));
    let status = server.service.status();
    assert_eq!(status.state, v1::JobState::Failed as i32);
    assert!(
        status.error.contains("rank 1") && status.error.contains("injected failure at step 7"),
        "{}",
        status.error
    );
    let saved = JobStatePersistence::load(&server.store, RUN)
        .await
        .unwrap()
        .unwrap();
    assert!(matches!(saved.job.phase(), JobPhase::Failed { .. }));
    // Waiting for the end returns at once.
    let phase = tokio::time::timeout(Duration::from_secs(1), server.service.wait_until_over())
        .await
        .unwrap();
    assert!(matches!(phase, JobPhase::Failed { .. }));
}

/// A committer that takes its time, like a slow object store.
#[derive(Clone)]
struct SlowCommitter {
    inner: lgaf_coordinator::RunStore,
    delay: Duration,
}

impl lgaf_coordinator::CheckpointCommitter for SlowCommitter {
    async fn commit(
        &self,
        commit: lgaf_coordinator::job::CommitRequest,
    ) -> Result<String, lgaf_coordinator::StoreError> {
        tokio::time::sleep(self.delay).await;
        lgaf_coordinator::CheckpointCommitter::commit(&self.inner, commit).await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_commit_completes_even_when_the_acking_worker_hangs_up() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir_store(dir.path());
    let service = lgaf_coordinator::CoordinatorService::new(
        lgaf_coordinator::Job::new(settings(2, &store)).unwrap(),
        SlowCommitter {
            inner: store.clone(),
            delay: Duration::from_millis(800),
        },
        store.clone(),
        lgaf_coordinator::ServiceOptions::default(),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(lgaf_coordinator::serve(
        listener,
        service.clone(),
        Default::default(),
        std::future::pending(),
    ));
    let mut a = TestWorker::register(&url, Some(0), 8100).await;
    let mut b = TestWorker::register(&url, Some(1), 8101).await;
    let (ja, jb) = tokio::join!(a.join(facts()), b.join(facts()));
    ja.unwrap();
    jb.unwrap();
    a.client
        .checkpoint_ack(a.checkpoint(4, 0).await)
        .await
        .unwrap();
    let mut last = tonic::Request::new(b.checkpoint(4, 0).await);
    last.set_timeout(Duration::from_millis(200));
    let e = b.client.checkpoint_ack(last).await.unwrap_err();
    assert_ne!(e.code(), Code::Ok);
    assert_eq!(service.status().last_checkpoint_step, 0);
    // The commit goes on without the worker.
    let deadline = Instant::now() + Duration::from_secs(10);
    while service.status().last_checkpoint_step != 4 {
        assert!(Instant::now() < deadline, "the commit was abandoned");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(committed_steps(&store).await, [4]);
    // The retry after the lost reply learns that it is committed.
    let again = b
        .client
        .checkpoint_ack(b.checkpoint(4, 0).await)
        .await
        .unwrap();
    assert!(again.into_inner().committed);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_coordinator_on_the_same_run_resumes_from_the_newest_committed_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir_store(dir.path());
    // Keep the last 3 checkpoints. World size 2: 15 steps per epoch, 30 in all,
    // checkpoints every 4 steps and at 15 and 30.
    let facts = v1::TrainingFacts {
        keep_last: 3,
        ..facts()
    };

    // The first coordinator commits steps 4 and 8, gets rank 0's part of step 12, and dies.
    let first = start_or_resume(settings(2, &store), &store, Duration::from_secs(10)).await;
    let mut a = TestWorker::register(&first.url, Some(0), 8200).await;
    let mut b = TestWorker::register(&first.url, Some(1), 8201).await;
    let (ja, jb) = tokio::join!(a.join(facts), b.join(facts));
    assert_eq!(ja.unwrap().resume_step, 0);
    assert_eq!(jb.unwrap().resume_step, 0);
    for step in [4, 8] {
        a.client
            .checkpoint_ack(a.checkpoint(step, 0).await)
            .await
            .unwrap();
        b.client
            .checkpoint_ack(b.checkpoint(step, 0).await)
            .await
            .unwrap();
    }
    a.client
        .checkpoint_ack(a.checkpoint(12, 0).await)
        .await
        .unwrap();
    assert_eq!(committed_steps(&store).await, [4, 8]);
    drop(first);

    // The second one, on the same store and run id, hands out step 8 and goes on from there.
    let second = start_or_resume(settings(2, &store), &store, Duration::from_secs(10)).await;
    let status = second.service.status();
    assert_eq!(status.state, v1::JobState::Waiting as i32);
    assert_eq!((status.step, status.last_checkpoint_step), (8, 8));
    // What it will hand out is a checkpoint a worker can load and verify.
    let resumed = store.load(8).await.unwrap();
    assert_eq!(resumed.manifest.step, 8);
    assert_eq!(resumed.objects.len(), 3);
    let tasks: Vec<_> = [(Some(0), 8300), (Some(1), 8301)]
        .into_iter()
        .map(|(slot, port)| tokio::spawn(run_worker(second.url.clone(), slot, port, facts)))
        .collect();
    let mut summaries = Vec::new();
    for t in tasks {
        summaries.push(t.await.unwrap().unwrap());
    }
    for s in &summaries {
        assert_eq!(s.resume_step, 8);
        assert_eq!(
            s.resume_manifest,
            "runs/test-run/ckpt/000000000008/MANIFEST.json"
        );
        assert_eq!(s.total_steps, 30);
        // The epoch that holds step 8 keeps its bounds; its checkpoints start after 8.
        assert_eq!(
            (s.epochs[0].epoch, s.epochs[0].first_step),
            (0, 0),
            "{:?}",
            s.epochs
        );
        assert_eq!(s.epochs[0].checkpoint_steps, [12, 15]);
        assert_eq!(s.epochs[1].checkpoint_steps, [16, 20, 24, 28, 30]);
    }
    let status = second.service.status();
    assert_eq!(status.state, v1::JobState::Finished as i32);
    assert_eq!((status.step, status.last_checkpoint_step), (30, 30));
    // keep_last 3, across both coordinators.
    assert_eq!(committed_steps(&store).await, [24, 28, 30]);
    drop(second);

    // A third one finds the final step committed: finished at once, nothing to serve.
    let third = start_or_resume(settings(2, &store), &store, Duration::from_secs(10)).await;
    let status = third.service.status();
    assert_eq!(status.state, v1::JobState::Finished as i32);
    assert_eq!((status.step, status.total_steps), (30, 30));
    assert_eq!(status.last_checkpoint_step, 30);
    let e = client(&third.url)
        .await
        .register(register_request(None, 8400))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition);
    assert!(e.message().contains("finished"), "{}", e.message());
}

/// A codec that sends bytes as they are: requests that are not protobuf at all.
#[derive(Clone, Copy, Default)]
struct RawBytes;

impl tonic::codec::Codec for RawBytes {
    type Encode = Vec<u8>;
    type Decode = Vec<u8>;
    type Encoder = RawBytes;
    type Decoder = RawBytes;

    fn encoder(&mut self) -> RawBytes {
        RawBytes
    }

    fn decoder(&mut self) -> RawBytes {
        RawBytes
    }
}

impl tonic::codec::Encoder for RawBytes {
    type Item = Vec<u8>;
    type Error = tonic::Status;

    fn encode(
        &mut self,
        item: Vec<u8>,
        dst: &mut tonic::codec::EncodeBuf<'_>,
    ) -> Result<(), tonic::Status> {
        bytes::BufMut::put_slice(dst, &item);
        Ok(())
    }
}

impl tonic::codec::Decoder for RawBytes {
    type Item = Vec<u8>;
    type Error = tonic::Status;

    fn decode(
        &mut self,
        src: &mut tonic::codec::DecodeBuf<'_>,
    ) -> Result<Option<Vec<u8>>, tonic::Status> {
        let n = bytes::Buf::remaining(src);
        Ok(Some(bytes::Buf::copy_to_bytes(src, n).to_vec()))
    }
}
