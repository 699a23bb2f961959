//! Seed inputs, one or more per target, made with the project's own writers (a fuzzer
//! mutates valid inputs far more usefully than random bytes), and the settings of the job
//! the request and document targets drive.

use crate::requests::{Op, Session};
use lgaf_coordinator::job::JobSettings;
use lgaf_proto::{v1, API_VERSION};
use std::collections::HashMap;
use std::path::Path;
use tch::Tensor;

/// A two-worker job with a short heartbeat deadline and one restart, so that a few ticks
/// lose a worker and a generation can form again.
pub fn job_settings() -> JobSettings {
    JobSettings {
        job_id: "fuzz".into(),
        run_id: "fuzz".into(),
        instance: "f".into(),
        world_size: 2,
        min_workers: 1,
        elastic_grace_ms: 1_000,
        max_steps: 0,
        config_toml: "[train]\nepochs = 1\n".into(),
        store_url: "file:///fuzz".into(),
        heartbeat_interval_ms: 100,
        heartbeat_deadline_ms: 1_000,
        collective_timeout_ms: 1_000,
        max_restarts: 1,
    }
}

/// Every target's seeds, as (target name, input).
pub fn all() -> Vec<(&'static str, Vec<u8>)> {
    let mut seeds = vec![
        ("recordio", recordio_pack()),
        ("verification_bin", verification_bin()),
        ("npy", npy()),
        ("image", jpeg()),
        ("image", png()),
        ("safetensors", safetensors()),
        (
            "config_toml",
            include_bytes!("../../../configs/train.toml").to_vec(),
        ),
    ];
    let finished = finished_session();
    let manifest = finished_manifest();
    seeds.push(("store_documents", [&[0], manifest.as_slice()].concat()));
    let state = lgaf_store::RunState::new(2, 4, 1.0, 0, serde_json::json!({"train": {}}));
    let state = serde_json::to_vec(&state).expect("a run state serialises");
    seeds.push(("store_documents", [&[1], state.as_slice()].concat()));
    let snapshot = serde_json::to_vec(&finished.job.snapshot(99)).expect("a job serialises");
    seeds.push(("store_documents", [&[2], snapshot.as_slice()].concat()));
    seeds.push(("grpc_requests", finished.input().to_vec()));
    seeds.push((
        "grpc_requests",
        session_with_a_lost_worker().input().to_vec(),
    ));
    seeds
}

/// A pack of three labelled records, as `[rec length][.rec][.idx]`.
fn recordio_pack() -> Vec<u8> {
    let dir = tempfile::tempdir().expect("a temporary folder");
    let rec = dir.path().join("train.rec");
    let mut writer = lgaf_data::recordio::PackWriter::create(&rec).expect("a pack writer");
    let image = jpeg();
    for label in [0, 0, 1] {
        writer.add(label, &image).expect("adding a record");
    }
    writer.finish().expect("finishing the pack");
    let rec_bytes = std::fs::read(&rec).expect("reading the .rec");
    let idx_bytes = std::fs::read(rec.with_extension("idx")).expect("the .idx");
    let len = u32::try_from(rec_bytes.len()).expect("a small pack");
    [len.to_le_bytes().as_slice(), &rec_bytes, &idx_bytes].concat()
}

/// A 112x112 JPEG.
fn jpeg() -> Vec<u8> {
    let mut bytes = Vec::new();
    image::codecs::jpeg::JpegEncoder::new(&mut bytes)
        .encode(
            &[90u8; 112 * 112 * 3],
            112,
            112,
            image::ExtendedColorType::Rgb8,
        )
        .expect("encoding a JPEG");
    bytes
}

/// A 4x4 PNG (resized by `decode_rgb112_resized`, refused by the 112x112 decoder).
fn png() -> Vec<u8> {
    let mut bytes = Vec::new();
    image::ImageEncoder::write_image(
        image::codecs::png::PngEncoder::new(&mut bytes),
        &[200u8; 4 * 4 * 3],
        4,
        4,
        image::ExtendedColorType::Rgb8,
    )
    .expect("encoding a PNG");
    bytes
}

/// A verification `.bin` of two pairs.
fn verification_bin() -> Vec<u8> {
    let dir = tempfile::tempdir().expect("a temporary folder");
    let path = dir.path().join("pairs.bin");
    let image = jpeg();
    lgaf_eval::write_bin(&path, &[&image, &image, &image, &image], &[true, false])
        .expect("writing a .bin");
    std::fs::read(&path).expect("reading the .bin")
}

fn npy() -> Vec<u8> {
    let dir = tempfile::tempdir().expect("a temporary folder");
    let path = dir.path().join("features.npy");
    lgaf_data::npy::write_f32(&path, &[2, 3], &[0.5, 1.0, -2.0, 3.25, 0.0, 7.0])
        .expect("writing a .npy");
    std::fs::read(&path).expect("reading the .npy")
}

/// Two tensors and metadata, as a checkpoint object holds them.
fn safetensors() -> Vec<u8> {
    let named = vec![
        (
            "fc.weight".to_string(),
            Tensor::from_slice(&[1.0f32, 2.0, 3.0, 4.0]).view([2, 2]),
        ),
        ("step".to_string(), Tensor::from_slice(&[7i64])),
    ];
    let metadata = HashMap::from([("format".to_string(), "pt".to_string())]);
    lgaf_model::weights::to_bytes(&named, &metadata, Path::new("seed.safetensors"))
        .expect("serialising tensors")
}

/// 512 samples in batches of 32 on 2 ranks: 8 steps, a checkpoint every 4.
fn facts() -> v1::TrainingFacts {
    v1::TrainingFacts {
        num_samples: 512,
        num_classes: 10,
        batch_size: 32,
        epochs: 1,
        max_steps: 0,
        checkpoint_every_steps: 4,
        keep_last: 2,
        seed: 7,
    }
}

/// Registers and joins two CPU workers; their ids by rank.
fn formed(session: &mut Session) -> Vec<String> {
    for port in [5000u16, 5001] {
        session.send(
            Op::Register,
            &v1::RegisterRequest {
                api_version: API_VERSION,
                job_id: String::new(),
                host: "fuzz-host".into(),
                pid: u32::from(port),
                device: "cpu".into(),
                collective_addr: format!("127.0.0.1:{port}"),
                slot: None,
            },
        );
    }
    let ids: Vec<String> = session.job.workers().map(|w| w.id.clone()).collect();
    for id in &ids {
        let join = v1::JoinRequest {
            api_version: API_VERSION,
            worker_id: id.clone(),
            facts: Some(facts()),
            left_generation: 0,
            live: None,
        };
        session.send(Op::Join, &join);
    }
    session
        .job
        .generation()
        .expect("two joins form a generation")
        .members
        .clone()
}

/// Trains generation `generation` from `first` to `end`, acknowledging every checkpoint.
fn train(session: &mut Session, ranks: &[String], generation: u64, first: u64, end: u64) {
    for id in ranks {
        let plan = v1::EpochPlanRequest {
            api_version: API_VERSION,
            worker_id: id.clone(),
            generation,
            epoch: 0,
        };
        session.send(Op::EpochPlan, &plan);
    }
    for step in first + 1..=end {
        for (rank, id) in ranks.iter().enumerate() {
            let beat = v1::HeartbeatRequest {
                api_version: API_VERSION,
                worker_id: id.clone(),
                generation,
                step,
            };
            session.send(Op::Heartbeat, &beat);
            if rank == 0 {
                let report = v1::ProgressReport {
                    api_version: API_VERSION,
                    worker_id: id.clone(),
                    generation,
                    step,
                    loss: 20.0 / step as f64,
                    lr: 0.1,
                    samples_per_s: 100.0,
                    ..Default::default()
                };
                session.send(Op::Progress, &report);
            }
            if step % 4 == 0 {
                session.send(Op::CheckpointAck, &ack(id, rank, generation, step));
            }
        }
    }
}

fn ack(id: &str, rank: usize, generation: u64, step: u64) -> v1::CheckpointAckRequest {
    let state = lgaf_store::RunState::new(2, 8, 1.0, 0, serde_json::json!({}));
    v1::CheckpointAckRequest {
        api_version: API_VERSION,
        worker_id: id.into(),
        generation,
        step,
        epoch: 0,
        objects: vec![v1::CheckpointObject {
            key: format!("classifier/rank-{rank:05}.safetensors"),
            size: 64,
            sha256: "ab".repeat(32),
        }],
        state_json: if rank == 0 {
            serde_json::to_string(&state).expect("a run state serialises")
        } else {
            String::new()
        },
    }
}

fn finish(session: &mut Session, ranks: &[String], generation: u64, step: u64) {
    for id in ranks {
        let finish = v1::FinishRequest {
            api_version: API_VERSION,
            worker_id: id.clone(),
            generation,
            step,
            ..Default::default()
        };
        session.send(Op::Finish, &finish);
    }
}

/// A job trained to its end: two ranks, 8 steps, checkpoints at 4 and 8.
pub fn finished_session() -> Session {
    let mut session = Session::new();
    let ranks = formed(&mut session);
    train(&mut session, &ranks, 1, 0, 8);
    finish(&mut session, &ranks, 1, 8);
    session
}

/// A job whose rank 1 falls silent after the checkpoint at step 4: lost, the survivor
/// rejoins, the elastic grace passes and a one-rank generation trains from step 4 to the
/// end.
pub fn session_with_a_lost_worker() -> Session {
    let mut session = Session::new();
    let ranks = formed(&mut session);
    train(&mut session, &ranks, 1, 0, 4);
    // Rank 0 keeps beating past rank 1's deadline; its beat is answered REJOIN.
    for _ in 0..3 {
        session.wait(5);
        let beat = v1::HeartbeatRequest {
            api_version: API_VERSION,
            worker_id: ranks[0].clone(),
            generation: 1,
            step: 4,
        };
        session.send(Op::Heartbeat, &beat);
    }
    let join = v1::JoinRequest {
        api_version: API_VERSION,
        worker_id: ranks[0].clone(),
        facts: Some(facts()),
        left_generation: 1,
        live: None,
    };
    // Its Join long poll is answered and made again until the elastic grace has passed.
    for _ in 0..8 {
        session.send(Op::Join, &join);
        session.wait(3);
    }
    if let Some(generation) = session.job.generation().filter(|g| g.number == 2) {
        let (members, number) = (generation.members.clone(), generation.number);
        train(&mut session, &members, number, 4, 8);
        finish(&mut session, &members, number, 8);
    }
    session
}

/// The manifest of the finished session's last checkpoint, as the committer writes it.
fn finished_manifest() -> Vec<u8> {
    let state = lgaf_store::RunState::new(2, 8, 1.0, 0, serde_json::json!({}));
    let objects = vec![lgaf_store::ManifestObject {
        key: "model.safetensors".into(),
        size: 64,
        sha256: "ab".repeat(32),
        rank: 0,
    }];
    let manifest = lgaf_store::Manifest::new("fuzz", 8, 0, 2, objects, state);
    serde_json::to_vec_pretty(&manifest).expect("a manifest serialises")
}
