//! Data parallelism across real processes on loopback, over the CPU collective backend
//! (TCP): the sharded Partial FC against the single-process softmax, the LGF statistics,
//! and whole training steps.
//!
//! Each rank is this test binary run again (`peer_entry`, selected by `LGAF_DP_CASE`); it
//! binds a listener, prints its port, reads everyone's addresses from stdin, forms the
//! group and writes what it computed to a safetensors file the parent test compares.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use lgaf_collective::tcp::{TcpGroup, TcpOptions};
use lgaf_data::synth::{SynthConfig, SynthDataset};
use lgaf_model::collective::{Collective, SingleProcess};
use lgaf_model::lgf::Lgf;
use lgaf_model::margin::CombinedMargin;
use lgaf_model::partial_fc::{normalize, ClassRange, PartialFc};
use lgaf_model::{weights, Arch, LgfConfig};
use lgaf_worker::data_parallel::{DataLayout, EmbeddingExchange, Group, HostCollective};
use lgaf_worker::loader::Batch;
use lgaf_worker::{TrainConfig, Trainer};
use tch::nn::VarStore;
use tch::{Device, Kind, Tensor};

const PORT_LINE: &str = "LGAF_DP_PORT ";

/// libtorch's generator is process-wide: the parent's references must not draw while
/// another test draws. One test at a time (each runs its ranks as processes anyway).
static ONE_TEST: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn one_test() -> std::sync::MutexGuard<'static, ()> {
    ONE_TEST.lock().unwrap_or_else(|e| e.into_inner())
}
const CLASSES: i64 = 37;
const DIM: i64 = 16;
const PER_RANK: i64 = 6;

// ---------------------------------------------------------------------------------------
// The parent side: spawning a group of peers.

fn out_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("lgaf-dp-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Runs `case` on `world` processes and returns each rank's output tensors.
fn run_group(
    case: &str,
    world: usize,
    dir: &Path,
    env: &[(&str, String)],
) -> Vec<HashMap<String, Tensor>> {
    let exe = std::env::current_exe().unwrap();
    let mut children: Vec<_> = (0..world)
        .map(|rank| {
            let mut cmd = Command::new(&exe);
            cmd.args(["--exact", "peer_entry", "--nocapture", "--test-threads=1"])
                .env("LGAF_DP_CASE", case)
                .env("LGAF_DP_RANK", rank.to_string())
                .env("LGAF_DP_WORLD", world.to_string())
                .env("LGAF_DP_OUT", dir)
                .stdin(Stdio::piped())
                .stdout(Stdio::piped());
            for (k, v) in env {
                cmd.env(k, v);
            }
            cmd.spawn().unwrap()
        })
        .collect();
    let mut readers: Vec<_> = children
        .iter_mut()
        .map(|c| BufReader::new(c.stdout.take().unwrap()))
        .collect();
    let ports: Vec<String> = readers
        .iter_mut()
        .map(|r| loop {
            let mut line = String::new();
            assert!(
                r.read_line(&mut line).unwrap() > 0,
                "a peer exited before its port"
            );
            // libtest may have printed "test peer_entry ... " on the same line.
            if let Some((_, port)) = line.trim().split_once(PORT_LINE) {
                break format!("127.0.0.1:{port}");
            }
        })
        .collect();
    for c in &mut children {
        let mut stdin = c.stdin.take().unwrap();
        writeln!(stdin, "{}", ports.join(" ")).unwrap();
    }
    // Drain stdout so a chatty peer never blocks on a full pipe.
    let drains: Vec<_> = readers
        .into_iter()
        .map(|mut r| {
            std::thread::spawn(move || {
                let mut rest = String::new();
                let _ = std::io::Read::read_to_string(&mut r, &mut rest);
                rest
            })
        })
        .collect();
    let deadline = Instant::now() + Duration::from_secs(600);
    for (rank, c) in children.iter_mut().enumerate() {
        loop {
            if let Some(status) = c.try_wait().unwrap() {
                assert!(status.success(), "rank {rank} of {case} failed: {status}");
                break;
            }
            if Instant::now() > deadline {
                let _ = c.kill();
                panic!("rank {rank} of {case} did not finish");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    for d in drains {
        d.join().unwrap();
    }
    (0..world)
        .map(|rank| {
            weights::read_tensors(&dir.join(format!("rank-{rank}.safetensors")))
                .unwrap()
                .into_iter()
                .collect()
        })
        .collect()
}

// ---------------------------------------------------------------------------------------
// The peer side.

#[test]
fn peer_entry() {
    let Ok(case) = std::env::var("LGAF_DP_CASE") else {
        return; // an ordinary test run: nothing to do
    };
    let var = |k: &str| std::env::var(k).unwrap();
    let rank: usize = var("LGAF_DP_RANK").parse().unwrap();
    let world: usize = var("LGAF_DP_WORLD").parse().unwrap();
    assert!(rank < world, "rank {rank} of world size {world}");
    let out = PathBuf::from(var("LGAF_DP_OUT")).join(format!("rank-{rank}.safetensors"));

    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    println!("{PORT_LINE}{}", listener.local_addr().unwrap().port());
    let mut line = String::new();
    std::io::stdin().read_line(&mut line).unwrap();
    let peers: Vec<String> = line.split_whitespace().map(String::from).collect();
    let options = TcpOptions {
        op_timeout: Duration::from_secs(60),
        connect_timeout: Duration::from_secs(30),
        group_tag: 1,
    };
    let comm = TcpGroup::connect(rank, &peers, listener, options).unwrap();
    let host = Arc::new(HostCollective::new(Arc::new(comm)));
    let results = match case.as_str() {
        "pfc" => peer_pfc(host.clone(), var("LGAF_DP_SAMPLE_RATE").parse().unwrap()),
        "lgf" => peer_lgf(host.clone()),
        "train" => train_steps(
            Group::Host(host.clone()),
            var("LGAF_DP_STEPS").parse().unwrap(),
            Batches::Halves,
        ),
        "live" => live_state_after(
            Group::Host(host.clone()),
            var("LGAF_DP_STEPS").parse().unwrap(),
        ),
        "train_shards" => train_steps(
            Group::Host(host.clone()),
            var("LGAF_DP_STEPS").parse().unwrap(),
            Batches::Shards(var("LGAF_DP_DATA_WORLD").parse().unwrap()),
        ),
        other => panic!("unknown case {other}"),
    };
    host.check().unwrap();
    weights::save_tensors(&results, &out, &HashMap::new()).unwrap();
}

/// The global batch every rank knows: embeddings [W*B, D] and labels, and all centres.
fn pfc_inputs(world: i64) -> (Tensor, Tensor, Tensor) {
    tch::manual_seed(7);
    let embeddings = Tensor::randn([world * PER_RANK, DIM], (Kind::Float, Device::Cpu));
    let labels = Tensor::randint(CLASSES, [world * PER_RANK], (Kind::Int64, Device::Cpu));
    let centres = Tensor::randn([CLASSES, DIM], (Kind::Float, Device::Cpu));
    (embeddings, labels, centres)
}

fn margin() -> CombinedMargin {
    CombinedMargin::parse("arcface", 64.0).unwrap()
}

fn peer_pfc(host: Arc<HostCollective>, sample_rate: f64) -> Vec<(String, Tensor)> {
    let world = host.world_size();
    let rank = host.rank();
    let (embeddings, labels, centres) = pfc_inputs(world);
    let range = ClassRange::of_rank(CLASSES, rank, world);
    let mut pfc = PartialFc::new(range, DIM, sample_rate, margin(), 0, Device::Cpu);
    pfc.set_collective(host.clone());
    tch::no_grad(|| pfc.weight.copy_(&centres.narrow(0, range.start, range.len)));
    tch::manual_seed(100 + rank);
    let local = embeddings
        .narrow(0, rank * PER_RANK, PER_RANK)
        .copy()
        .set_requires_grad(true);
    let local_labels = labels.narrow(0, rank * PER_RANK, PER_RANK);
    // A stand-in for the network: the gradient must come back through this product.
    let kappa = &local * 1.0;
    let layout = DataLayout::new(rank as u32, world as u32, world as u32, PER_RANK as usize);
    let exchange = EmbeddingExchange::gather(host.as_ref(), &layout, &kappa, &local_labels);
    let fwd = pfc.forward(&exchange.global, &exchange.labels, 0);
    fwd.shard.surrogate.backward();
    let grad = exchange.local_grad(host.as_ref()).unwrap();
    (kappa * grad.detach()).sum(Kind::Float).backward();
    vec![
        ("loss".into(), fwd.loss.reshape([1])),
        ("embedding_grad".into(), local.grad()),
        ("weight_grad".into(), fwd.shard.sampled_weight.grad()),
        ("sampled".into(), &fwd.shard.sampled + range.start),
    ]
}

/// Features for the LGF test: local and global [W*B, D] with spread-out norms.
fn lgf_inputs(world: i64) -> (Tensor, Tensor) {
    tch::manual_seed(11);
    let scale = Tensor::rand([world * PER_RANK, 1], (Kind::Float, Device::Cpu)) * 30.0 + 1.0;
    let local = Tensor::randn([world * PER_RANK, DIM], (Kind::Float, Device::Cpu)) * &scale;
    let global = Tensor::randn([world * PER_RANK, DIM], (Kind::Float, Device::Cpu)) * 2.0;
    (local, global)
}

fn lgf_config() -> LgfConfig {
    LgfConfig {
        alpha: 0.3,
        ..LgfConfig::default()
    }
}

fn peer_lgf(host: Arc<HostCollective>) -> Vec<(String, Tensor)> {
    let (world, rank) = (host.world_size(), host.rank());
    let (local, global) = lgf_inputs(world);
    let vs = VarStore::new(Device::Cpu);
    let mut lgf = Lgf::new(vs.root() / "lgf", &lgf_config());
    lgf.set_collective(host);
    let rows = |t: &Tensor| t.narrow(0, rank * PER_RANK, PER_RANK);
    let mut out = Vec::new();
    for step in 0..3 {
        let fused = lgf.forward_t(&rows(&local), &rows(&global), true);
        out.push((format!("norm_mean.{step}"), lgf.norm_mean.copy()));
        out.push((format!("norm_std.{step}"), lgf.norm_std.copy()));
        out.push((format!("gamma.{step}"), fused.gamma));
    }
    out
}

// ---------------------------------------------------------------------------------------
// Whole training steps.

fn train_config(batch: usize) -> TrainConfig {
    let mut cfg = TrainConfig::default();
    cfg.model.arch = Arch::R18;
    cfg.model.width = 0.125;
    cfg.model.embedding_size = 32;
    cfg.data.batch_size = batch;
    cfg.data.synthetic.identities = 16;
    cfg.data.synthetic.images_per_identity = 8;
    cfg.train.device = "cpu".into();
    cfg.train.progress = false;
    cfg.optim.warmup_epochs = 0.0;
    cfg.optim.lr_steps = vec![];
    cfg.checkpoint.every_steps = 0;
    cfg
}

const GLOBAL_BATCH: usize = 16;

/// The global batch of `step`: the same images whatever the world size, so runs with one
/// and with two ranks can be compared step by step. Its two halves hold the same images,
/// so each of two ranks sees exactly the BatchNorm statistics (mean, biased variance) the
/// single process sees on the whole batch, and the runs must agree up to rounding.
fn global_indices(step: u64) -> Vec<usize> {
    let n = 16 * 8;
    let half: Vec<usize> = (0..GLOBAL_BATCH / 2)
        .map(|i| (step as usize * 37 + i * 7) % n)
        .collect();
    half.iter().chain(&half).copied().collect()
}

/// The global batch of `step` for a job of `shards` data shards: one shard's worth of images
/// repeated, so whichever shards a rank holds, its BatchNorm statistics are those of the
/// whole batch.
fn repeated_shard_indices(step: u64, shards: usize) -> Vec<usize> {
    let n = 16 * 8;
    let one: Vec<usize> = (0..GLOBAL_BATCH / shards)
        .map(|i| (step as usize * 37 + i * 7) % n)
        .collect();
    one.repeat(shards)
}

/// How the tests cut global batches.
#[derive(Clone, Copy)]
enum Batches {
    /// [`global_indices`], a shard per rank.
    Halves,
    /// [`repeated_shard_indices`] cut into this many data shards, spread over the ranks as
    /// an elastic generation spreads them (`lgaf_proto::data_shards`).
    Shards(u32),
}

impl Batches {
    fn data_world(self, world: usize) -> u32 {
        match self {
            Batches::Halves => world as u32,
            Batches::Shards(n) => n,
        }
    }

    fn global(self, step: u64) -> Vec<usize> {
        match self {
            Batches::Halves => global_indices(step),
            Batches::Shards(n) => repeated_shard_indices(step, n as usize),
        }
    }
}

/// This rank's part of the global batch: its data shards' rows, one shard after the other.
fn batch_for(step: u64, rank: usize, world: usize, batches: Batches, cfg: &TrainConfig) -> Batch {
    let ds = SynthDataset::new(SynthConfig {
        seed: cfg.data.synthetic.seed,
        identities: cfg.data.synthetic.identities,
        images_per_identity: cfg.data.synthetic.images_per_identity,
        nuisance_prob: cfg.data.synthetic.nuisance_prob,
    });
    let data_world = batches.data_world(world);
    let per_shard = GLOBAL_BATCH / data_world as usize;
    let global = batches.global(step);
    let mine: Vec<usize> = lgaf_proto::data_shards(rank as u32, world as u32, data_world)
        .into_iter()
        .flat_map(|s| global[s as usize * per_shard..(s as usize + 1) * per_shard].to_vec())
        .collect();
    let mut batch = Batch::allocate(mine.len());
    batch.step = step;
    batch.images.clear();
    for &i in &mine {
        let sample = ds.get(i);
        batch.images.extend_from_slice(&sample.rgb);
        batch.labels.push(i64::from(sample.label));
    }
    batch
}

/// Runs `steps` steps on this rank's part of each global batch; returns the losses and
/// every variable and buffer after the last step.
fn train_steps(group: Group, steps: u64, batches: Batches) -> Vec<(String, Tensor)> {
    let (rank, world) = (group.rank() as usize, group.world_size() as usize);
    let data_world = batches.data_world(world);
    let cfg = train_config(GLOBAL_BATCH / data_world as usize);
    let mut trainer = Trainer::with_data_shards(cfg.clone(), group, data_world).unwrap();
    let mut losses = Vec::new();
    for step in 0..steps {
        let batch = batch_for(step, rank, world, batches, &cfg);
        let report = trainer.train_step(&batch, Duration::ZERO).unwrap();
        losses.push(report.loss);
    }
    let mut out: Vec<(String, Tensor)> = trainer
        .var_store()
        .variables()
        .into_iter()
        .map(|(name, t)| (name, t.copy()))
        .collect();
    trainer.sync_buffers_from_rank0().unwrap();
    out.extend(
        trainer
            .var_store()
            .variables()
            .into_iter()
            .map(|(name, t)| (format!("synced.{name}"), t)),
    );
    out.push(("losses".into(), Tensor::from_slice(&losses)));
    out
}

/// Trains `steps` steps with live recovery and sampled negatives; returns the objects of
/// this rank's [`Trainer::live_state`] (their bytes) and the shards it holds.
fn live_state_after(group: Group, steps: u64) -> Vec<(String, Tensor)> {
    let (rank, world) = (group.rank() as usize, group.world_size() as usize);
    let mut cfg = train_config(GLOBAL_BATCH / world);
    cfg.loss.sample_rate = 0.5;
    cfg.checkpoint.live_recovery = true;
    let mut trainer = Trainer::with_group(cfg.clone(), group).unwrap();
    for step in 0..steps {
        let batch = batch_for(step, rank, world, Batches::Halves, &cfg);
        trainer.train_step(&batch, Duration::ZERO).unwrap();
    }
    let live = trainer.live_state().unwrap().expect("live recovery is on");
    assert_eq!(live.step, steps);
    let shards: Vec<i64> = live.shards.iter().map(|&r| i64::from(r)).collect();
    let mut out: Vec<(String, Tensor)> = live
        .objects
        .iter()
        // One i64 per byte: the tensor file holds no u8 tensors.
        .map(|(key, bytes)| {
            let bytes = Tensor::from_slice(bytes.as_ref()).to_kind(Kind::Int64);
            (key.clone(), bytes)
        })
        .collect();
    out.push(("shards".into(), Tensor::from_slice(&shards)));
    out
}

// ---------------------------------------------------------------------------------------
// The tests.

/// The single-process reference: the full softmax over the centres the ranks sampled
/// (in rank order), on the whole global batch of `world` ranks.
fn reference_pfc(world: i64, sampled: &Tensor) -> (f64, Tensor, Tensor) {
    let (embeddings, labels, centres) = pfc_inputs(world);
    let embeddings = embeddings.set_requires_grad(true);
    let weight = centres.index_select(0, sampled).set_requires_grad(true);
    // Labels as positions in the sampled list (every positive class is sampled).
    let position = labels
        .unsqueeze(1)
        .eq_tensor(&sampled.unsqueeze(0))
        .to_kind(Kind::Int64)
        .argmax(1, false);
    let cos = normalize(&embeddings).matmul(&normalize(&weight).tr());
    let loss = margin()
        .logits(&cos, &position)
        .cross_entropy_for_logits(&position);
    loss.backward();
    (loss.double_value(&[]), embeddings.grad(), weight.grad())
}

fn max_abs_diff(a: &Tensor, b: &Tensor) -> f64 {
    (a - b).abs().max().double_value(&[])
}

fn check_pfc(world: usize, sample_rate: f64) {
    let dir = out_dir(&format!("pfc-{world}-{sample_rate}"));
    let ranks = run_group(
        "pfc",
        world,
        &dir,
        &[("LGAF_DP_SAMPLE_RATE", sample_rate.to_string())],
    );
    let sampled = Tensor::cat(
        &ranks
            .iter()
            .map(|r| r["sampled"].shallow_clone())
            .collect::<Vec<_>>(),
        0,
    );
    if sample_rate >= 1.0 {
        assert_eq!(
            sampled.size()[0],
            CLASSES,
            "every centre is used at sample rate 1"
        );
    } else {
        assert!(
            sampled.size()[0] < CLASSES,
            "sample rate {sample_rate} dropped no centre"
        );
    }
    let (loss, emb_grad, weight_grad) = reference_pfc(world as i64, &sampled);
    let mut row = 0;
    for (rank, r) in ranks.iter().enumerate() {
        let l = r["loss"].double_value(&[0]);
        assert!(
            (l - loss).abs() < 1e-5 * loss.abs().max(1.0),
            "rank {rank}: loss {l} vs {loss}"
        );
        let mine = emb_grad.narrow(0, rank as i64 * PER_RANK, PER_RANK);
        let d = max_abs_diff(&r["embedding_grad"], &mine);
        assert!(d < 1e-6, "rank {rank}: embedding gradient differs by {d}");
        let n = r["sampled"].size()[0];
        let d = max_abs_diff(&r["weight_grad"], &weight_grad.narrow(0, row, n));
        assert!(d < 1e-6, "rank {rank}: centre gradient differs by {d}");
        row += n;
    }
}

#[test]
fn sharded_partial_fc_equals_the_full_softmax_on_2_and_3_ranks() {
    let _one = one_test();
    for world in [2, 3] {
        check_pfc(world, 1.0);
        check_pfc(world, 0.5);
    }
}

#[test]
fn lgf_statistics_are_bit_identical_on_every_rank_and_those_of_the_global_batch() {
    let _one = one_test();
    let world = 3;
    let ranks = run_group("lgf", world, &out_dir("lgf"), &[]);
    // The single-process module on the whole global batch.
    let (local, global) = lgf_inputs(world as i64);
    let vs = VarStore::new(Device::Cpu);
    let mut lgf = Lgf::new(vs.root() / "lgf", &lgf_config());
    lgf.set_collective(Arc::new(SingleProcess));
    for step in 0..3 {
        let fused = lgf.forward_t(&local, &global, true);
        for name in ["norm_mean", "norm_std"] {
            let key = format!("{name}.{step}");
            for r in &ranks[1..] {
                assert!(
                    r[&key].equal(&ranks[0][&key]),
                    "{key} differs between ranks"
                );
            }
            let single = if name == "norm_mean" {
                &lgf.norm_mean
            } else {
                &lgf.norm_std
            };
            let d = max_abs_diff(&ranks[0][&key], single);
            assert!(d < 1e-4, "{key}: {d} from the global batch's statistics");
        }
        let gamma = Tensor::cat(
            &ranks
                .iter()
                .map(|r| r[&format!("gamma.{step}")].shallow_clone())
                .collect::<Vec<_>>(),
            0,
        );
        let d = max_abs_diff(&gamma, &fused.gamma);
        assert!(d < 1e-5, "step {step}: attention weights differ by {d}");
    }
}

/// Every variable and LGF buffer (and the loss) is bit-identical on every rank; BatchNorm's
/// running statistics are each rank's own until a checkpoint takes rank 0's.
fn assert_ranks_agree(ranks: &[HashMap<String, Tensor>]) {
    for (name, t) in &ranks[0] {
        let own = name.contains("running_") || name.ends_with("num_batches_tracked");
        if own || name.starts_with("synced.") {
            continue;
        }
        for (rank, other) in ranks.iter().enumerate().skip(1) {
            assert!(t.equal(&other[name]), "`{name}` differs on rank {rank}");
        }
    }
}

#[test]
fn two_ranks_hold_identical_weights_and_track_one_rank_on_the_same_global_batch() {
    let _one = one_test();
    let steps = 4;
    let ranks = run_group(
        "train",
        2,
        &out_dir("train"),
        &[("LGAF_DP_STEPS", steps.to_string())],
    );
    assert_ranks_agree(&ranks);
    for (name, t) in &ranks[0] {
        if name.starts_with("synced.") || name == "losses" {
            continue;
        }
        let synced = &format!("synced.{name}");
        assert!(
            ranks[0][synced].equal(&ranks[1][synced]),
            "`{name}` differs after the buffer sync"
        );
        assert!(
            ranks[0][synced].equal(t),
            "rank 0's `{name}` changed in the sync"
        );
    }
    let single: HashMap<String, Tensor> = train_steps(Group::Single, steps, Batches::Halves)
        .into_iter()
        .collect();
    let two = Vec::<f64>::try_from(&ranks[0]["losses"]).unwrap();
    let one = Vec::<f64>::try_from(&single["losses"]).unwrap();
    eprintln!("losses, 2 ranks x 8: {two:?}\nlosses, 1 rank x 16: {one:?}");
    // The same global batch and the same initial weights: only BatchNorm's batch
    // statistics (per rank of 8 against 16) differ, so the losses stay close.
    for (step, (a, b)) in two.iter().zip(&one).enumerate() {
        assert!(
            (a - b).abs() < 0.05 * b,
            "step {step}: loss {a} with 2 ranks vs {b} with 1"
        );
    }
}

#[test]
fn three_ranks_holding_four_data_shards_train_the_global_batch_of_four() {
    // An elastic generation: a job of 4 data shards continues on 3 ranks, rank 0 holding
    // shards 0 and 3. The global batch, and so the loss, stays that of the whole job.
    let _one = one_test();
    let steps = 3;
    let ranks = run_group(
        "train_shards",
        3,
        &out_dir("train_shards"),
        &[
            ("LGAF_DP_STEPS", steps.to_string()),
            ("LGAF_DP_DATA_WORLD", "4".into()),
        ],
    );
    assert_ranks_agree(&ranks);
    // One process on the same global batch: every rank's BatchNorm sees the statistics
    // of the whole batch (its shards repeat one another), so only the order of float sums
    // and the per-rank random draws differ.
    let single: HashMap<String, Tensor> = train_steps(Group::Single, steps, Batches::Shards(4))
        .into_iter()
        .collect();
    let three = Vec::<f64>::try_from(&ranks[0]["losses"]).unwrap();
    let one = Vec::<f64>::try_from(&single["losses"]).unwrap();
    eprintln!("losses, 3 ranks holding 4 shards: {three:?}\nlosses, 1 rank: {one:?}");
    for (step, (a, b)) in three.iter().zip(&one).enumerate() {
        assert!(
            (a - b).abs() < 1e-3 * b,
            "step {step}: loss {a} on 3 ranks holding 4 shards vs {b} on 1"
        );
    }
}

/// Live recovery's premise: every rank's replica of the next rank's classifier shard is
/// that rank's own shard bit for bit (negatives sampled), and the network, its momentum,
/// its buffers and the run state are the same bytes on every rank, so any survivor can
/// stand in for a lost rank.
#[test]
fn every_rank_holds_the_next_ranks_shard_and_the_same_network_bit_for_bit() {
    let _one = one_test();
    let world = 3;
    let dir = out_dir("live");
    let ranks = run_group("live", world, &dir, &[("LGAF_DP_STEPS", "4".into())]);
    let key = |r: usize| format!("classifier/rank-{r:05}.safetensors");
    for (rank, objects) in ranks.iter().enumerate() {
        let next = (rank + 1) % world;
        let shards = Vec::<i64>::try_from(&objects["shards"]).unwrap();
        assert_eq!(shards, vec![rank as i64, next as i64]);
        assert!(
            objects[&key(next)].equal(&ranks[next][&key(next)]),
            "rank {rank}'s replica of shard {next} differs from rank {next}'s own"
        );
        for shared in [
            "model.safetensors",
            "optimizer.safetensors",
            "run-state.json",
        ] {
            assert!(
                objects[shared].equal(&ranks[0][shared]),
                "{shared} of rank {rank} differs from rank 0's"
            );
        }
    }
}
