//! The trainer's NCCL group ([`NcclCollective`]) without a GPU: against the stand-in
//! library of `lgaf_collective::nccl::stand_in` (NCCL's API on host memory, a world of one),
//! so that what these tests see is the tensor plumbing (kinds, shapes, contiguity, copies),
//! the failure path and the trainer on the group; NCCL itself on a GPU is tested by the
//! collective crate's `gpu_*` tests where a GPU is lent.
//!
//! The collective crate loads its libraries once per process, from the environment, so
//! each case runs in a child process (this binary again, one ignored test) pointed at the
//! stand-in.

use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use lgaf_collective::nccl::{
    stand_in, NcclCommunicator, NcclUniqueId, CUDART_LIB_ENV, NCCL_LIB_ENV,
};
use lgaf_data::synth::{SynthConfig, SynthDataset};
use lgaf_model::collective::Collective;
use lgaf_model::Arch;
use lgaf_worker::data_parallel::{Group, NcclCollective};
use lgaf_worker::loader::Batch;
use lgaf_worker::{TrainConfig, Trainer};
use tch::{Device, Kind, Tensor};

fn stand_in_lib() -> &'static Path {
    static LIB: OnceLock<PathBuf> = OnceLock::new();
    LIB.get_or_init(|| {
        stand_in::build(&Path::new(env!("CARGO_TARGET_TMPDIR")).join("fake-nccl"))
            .unwrap_or_else(|e| panic!("{e}"))
    })
}

/// Runs the ignored test `name` in a child process that loads the stand-in.
fn run_child(name: &str) {
    let lib = stand_in_lib();
    stand_in::run_test_in_child(name, &[(NCCL_LIB_ENV, lib), (CUDART_LIB_ENV, lib)]);
}

fn is_child(name: &str) -> bool {
    stand_in::in_child(name)
}

fn communicator() -> NcclCommunicator {
    let id = NcclUniqueId::new().unwrap();
    NcclCommunicator::new(&id, 0, 1, 0, Duration::from_secs(5)).unwrap()
}

/// The group on host memory: the stand-in's "device memory" is the process's own.
fn host_group() -> NcclCollective {
    // SAFETY: the stand-in library operates on host memory.
    unsafe { NcclCollective::new(communicator(), Device::Cpu) }
}

fn assert_same(a: &Tensor, b: &Tensor) {
    assert_eq!(a.size(), b.size());
    assert_eq!(a.kind(), b.kind());
    assert!(a.equal(b), "{a} != {b}");
}

#[test]
fn tensors_of_every_kind_keep_shape_kind_and_values() {
    run_child("child_tensors");
}

#[test]
#[ignore = "run by tensors_of_every_kind_keep_shape_kind_and_values"]
fn child_tensors() {
    if !is_child("child_tensors") {
        return;
    }
    let controls = stand_in::Controls::open(stand_in_lib()).unwrap();
    let group = host_group();
    assert_eq!((group.rank(), group.world_size()), (0, 1));
    let polls_before = controls.get("async_polls");

    // A transposed (non-contiguous) f32 matrix, f64, i64 labels, f16 and a scalar.
    let f32_t = Tensor::arange(12, (Kind::Float, Device::Cpu))
        .view([3, 4])
        .tr();
    let f64_t = Tensor::from_slice(&[1.5f64, -2.25, 1e300]);
    let labels = Tensor::from_slice(&[7i64, 1 << 40, -3]);
    let half = Tensor::from_slice(&[0.5f32, 2.0, -1.0]).to_kind(Kind::Half);
    let scalar = Tensor::from(3.0f32);
    for t in [&f32_t, &f64_t, &labels, &half, &scalar] {
        assert_same(&group.all_reduce_sum(t), t);
        assert_same(&group.all_reduce_max(t), t);
        assert_same(&group.broadcast(t, 0), t);
    }
    assert_same(&group.all_gather(&f32_t), &f32_t.contiguous());
    assert_same(&group.all_gather(&labels), &labels);
    assert_same(&group.all_gather(&scalar), &scalar.view([1]));
    assert!(
        controls.get("async_polls") > polls_before,
        "the operations did not go through the library"
    );

    // The reduction writes a fresh tensor: the caller's tensor is not written through.
    let input = Tensor::from_slice(&[1.0f32, 2.0]);
    let mut result = group.all_reduce_sum(&input);
    let _ = result.fill_(9.0);
    assert_same(&input, &Tensor::from_slice(&[1.0f32, 2.0]));
    assert!(group.check().is_ok());
}

#[test]
fn a_failed_operation_poisons_the_group_and_hands_back_inputs() {
    run_child("child_failure");
}

#[test]
#[ignore = "run by a_failed_operation_poisons_the_group_and_hands_back_inputs"]
fn child_failure() {
    if !is_child("child_failure") {
        return;
    }
    let controls = stand_in::Controls::open(stand_in_lib()).unwrap();

    // A tensor on another device is refused before any pointer reaches the library.
    let on_gpu = NcclCollective::on_cuda(communicator());
    let t = Tensor::from_slice(&[1.0f32, 2.0, 3.0]);
    assert_same(&on_gpu.all_reduce_sum(&t), &t);
    let message = on_gpu.check().unwrap_err().to_string();
    assert!(
        message.contains("a tensor on Cpu; this NCCL communicator works on Cuda(0)"),
        "{message}"
    );

    // A peer vanishes during an all-gather: the input comes back (shapes intact), the
    // communicator is aborted, and every later call fails fast without the library.
    let group = host_group();
    controls.set("async_error", 1);
    let gathered = group.all_gather(&t.view([3, 1]));
    assert_eq!(gathered.size(), [3, 1]);
    controls.set("async_error", 0);
    let message = group.check().unwrap_err().to_string();
    assert!(
        message.contains("all_gather") && message.contains("remote process exited"),
        "{message}"
    );
    assert_eq!(controls.get("abort"), 1);
    let polls = controls.get("async_polls");
    assert_same(&group.broadcast(&t, 0), &t);
    assert_eq!(
        controls.get("async_polls"),
        polls,
        "a dead group called NCCL"
    );
}

fn train_config() -> TrainConfig {
    let mut cfg = TrainConfig::default();
    cfg.model.arch = Arch::R18;
    cfg.model.width = 0.125;
    cfg.model.embedding_size = 32;
    cfg.data.batch_size = 8;
    cfg.data.synthetic.identities = 16;
    cfg.data.synthetic.images_per_identity = 8;
    cfg.train.device = "cpu".into();
    cfg.train.progress = false;
    cfg.optim.warmup_epochs = 0.0;
    cfg.optim.lr_steps = vec![];
    cfg.checkpoint.every_steps = 0;
    cfg
}

fn batch(step: u64, cfg: &TrainConfig) -> Batch {
    let ds = SynthDataset::new(SynthConfig {
        seed: cfg.data.synthetic.seed,
        identities: cfg.data.synthetic.identities,
        images_per_identity: cfg.data.synthetic.images_per_identity,
        nuisance_prob: cfg.data.synthetic.nuisance_prob,
    });
    let mut batch = Batch::allocate(cfg.data.batch_size);
    batch.step = step;
    batch.images.clear();
    for i in 0..cfg.data.batch_size {
        let sample = ds.get((step as usize * 11 + i * 5) % ds.len());
        batch.images.extend_from_slice(&sample.rgb);
        batch.labels.push(i64::from(sample.label));
    }
    batch
}

fn losses(group: Group) -> Vec<f64> {
    let cfg = train_config();
    let mut trainer = Trainer::with_group(cfg.clone(), group).unwrap();
    (0..3)
        .map(|step| {
            trainer
                .train_step(&batch(step, &cfg), Duration::ZERO)
                .unwrap()
                .loss
        })
        .collect()
}

#[test]
fn a_trainer_on_the_nccl_group_matches_a_single_process() {
    run_child("child_trainer");
}

#[test]
#[ignore = "run by a_trainer_on_the_nccl_group_matches_a_single_process"]
fn child_trainer() {
    if !is_child("child_trainer") {
        return;
    }
    tch::manual_seed(0);
    let single = losses(Group::Single);
    let controls = stand_in::Controls::open(stand_in_lib()).unwrap();
    let polls = controls.get("async_polls");
    tch::manual_seed(0);
    let nccl = losses(Group::Nccl(Arc::new(host_group())));
    assert_eq!(single, nccl);
    // The LGF statistics and the Partial-FC softmax went through the library.
    assert!(controls.get("async_polls") > polls);
}
