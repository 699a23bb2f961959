//! The single-process trainer: one model replica on the CPU or one GPU, the Partial-FC head
//! at world size 1, SGD with the paper's schedule, fp16 loss scaling, checkpoints and resume.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use lgaf_data::sampler::ShardedSampler;
use lgaf_data::source::FaceSource;

use lgaf_model::amp::{self, GradScaler, Precision};
use lgaf_model::partial_fc::{ClassRange, PartialFc};
use lgaf_model::{weights, Lgaf};
use lgaf_store::history::{Source, StepRecord};
use lgaf_store::HistoryWriter;
use lgaf_store::{Manifest, RunState};
use lgaf_telemetry::settings::step_traced;
use tch::nn::VarStore;
use tch::{Device, Kind, Tensor};
use tracing::{info, info_span};

use crate::checkpoint::{LocalCheckpoints, StartFrom};
use crate::config::TrainConfig;
use crate::data_parallel::{self, DataLayout, EmbeddingExchange, Group};
use crate::device::{channels_last, images_to_tensor, parse_device};
use crate::error::{Result, WorkerError};
use crate::eval::HeldOut;
use crate::loader::{open_source, Batch, Loader, LoaderError, LoaderSettings, LoaderStats};
use crate::optim::{clip_factor, learning_rate, Sgd};
use lgaf_data::synth::IMAGE_SIZE;

/// Object keys of a checkpoint (any run, one rank or many), relative to its step folder.
pub const MODEL_OBJECT: &str = "model.safetensors";
pub const OPTIMIZER_OBJECT: &str = "optimizer.safetensors";
pub const CLASSIFIER_PREFIX: &str = "classifier/";

/// The classifier shard written by `rank`.
pub fn classifier_object(rank: i64) -> String {
    format!("{CLASSIFIER_PREFIX}rank-{rank:05}.safetensors")
}

/// One rank's checkpoint objects as (key, bytes), and the run state (rank 0 only).
pub type CheckpointParts = (Vec<(String, Vec<u8>)>, Option<RunState>);

/// The run state among a [`LiveState`]'s objects (a checkpoint keeps it in its manifest).
pub const RUN_STATE_OBJECT: &str = "run-state.json";

/// What one rank holds of the run after a generation ended under it
/// ([`Trainer::live_state`]): with the other survivors', enough to start the next
/// generation at `step` instead of at the last checkpoint.
#[derive(Clone, Debug)]
pub struct LiveState {
    /// Steps completed.
    pub step: u64,
    /// The world size of the generation it trained in.
    pub world_size: u32,
    /// The ranks (of that generation) whose classifier shards it holds.
    pub shards: Vec<u32>,
    /// Checkpoint objects by key: the network, its momentum, those shards, and
    /// [`RUN_STATE_OBJECT`].
    pub objects: HashMap<String, Bytes>,
}

/// One step's numbers.
#[derive(Clone, Debug)]
pub struct StepReport {
    /// Steps completed after this one.
    pub step: u64,
    pub total_steps: u64,
    pub epoch: u64,
    pub loss: f64,
    pub lr: f64,
    /// Whether fp16 loss scaling skipped the update (non-finite gradients).
    pub skipped: bool,
    /// Mean (gamma_local, gamma_global) over the batch, under `lgf` fusion.
    pub gamma: Option<(f64, f64)>,
    /// Time blocked waiting for the batch.
    pub data_wait: Duration,
    /// The loader's counters so far in this run (throughput, total wait, bad records).
    pub loader: LoaderStats,
    pub step_time: Duration,
    pub batch_size: usize,
    /// Where the step's time went.
    pub phases: PhaseTimes,
    /// Gradient bytes this rank all-reduced (0 in a single process).
    pub allreduce_bytes: u64,
    /// The fp16 loss scale the step used (`None` without loss scaling).
    pub loss_scale: Option<f64>,
}

/// The phases of a training step (the data wait is [`StepReport::data_wait`]), by the host's
/// clock: exact on the CPU; on CUDA, kernels run asynchronously, so a phase shows when its
/// work was queued and the wait for it lands in the next phase that synchronises (the loss
/// read at the end of the step).
#[derive(Clone, Copy, Debug, Default)]
pub struct PhaseTimes {
    pub forward: Duration,
    pub backward: Duration,
    pub all_reduce: Duration,
    pub optimizer: Duration,
}

pub struct Trainer {
    cfg: TrainConfig,
    device: Device,
    vs: VarStore,
    model: Lgaf,
    pfc: PartialFc,
    /// The replica of the next rank's shard (`checkpoint.live_recovery`, more than one
    /// rank): updated every step from the same global batch and softmax statistics, so a
    /// lost rank's centres survive in memory on the rank before it.
    ward: Option<PartialFc>,
    sgd: Sgd,
    /// The model's buffers (variables no optimiser updates), sorted by name.
    buffers: Buffers,
    scaler: GradScaler,
    /// The checkpoints of a single-process run; `None` for a rank of a coordinated run,
    /// whose checkpoints the coordinator commits.
    checkpoints: Option<LocalCheckpoints>,
    source: Arc<dyn FaceSource>,
    sampler: ShardedSampler,
    layout: DataLayout,
    group: Group,
    /// Steps completed.
    step: u64,
    /// Bytes of the gradients a step all-reduces.
    grad_bytes: u64,
    /// Ranks other than 0 trace one step in this many (see `lgaf_telemetry::settings`).
    trace_step_every: u64,
    /// Where rank 0 records each step (the run's history in the store); `None` elsewhere.
    /// Shared with the threads that acknowledge checkpoints, which flush it first.
    history: Option<Arc<HistoryWriter>>,
}

/// Variables that the optimiser updates, by name, sorted.
fn trainable(vs: &VarStore) -> Vec<(String, Tensor)> {
    let mut named: Vec<(String, Tensor)> = vs
        .variables()
        .into_iter()
        .filter(|(_, t)| t.requires_grad())
        .collect();
    named.sort_by(|a, b| a.0.cmp(&b.0));
    named
}

impl Trainer {
    /// Builds the model and head for one process, and resumes from the newest verified
    /// checkpoint of run `checkpoint.run_id` in the store `checkpoint.dir` if there is one
    /// (an error if there are checkpoints and none verifies).
    pub fn new(cfg: TrainConfig) -> Result<Self> {
        Self::start(cfg, StartFrom::Latest)
    }

    /// [`Trainer::new`], starting where `from` says.
    pub fn start(cfg: TrainConfig, from: StartFrom) -> Result<Self> {
        // The config is checked (by `with_group`) before the store is opened, which may
        // create its directory.
        let mut trainer = Self::with_group(cfg, Group::Single)?;
        let checkpoints = LocalCheckpoints::open(&trainer.cfg.checkpoint)?;
        if let Some(loaded) = checkpoints.start(from)? {
            let source = checkpoints.location(loaded.manifest.step);
            trainer.restore_from_objects(&source, &loaded.manifest, &loaded.objects)?;
        }
        // The run's history goes on from the step it resumed at.
        trainer.history = Some(Arc::new(HistoryWriter::start(
            checkpoints.run().clone(),
            Source::Rank0,
            0,
            trainer.step,
        )?));
        trainer.checkpoints = Some(checkpoints);
        Ok(trainer)
    }

    /// Builds the model and head as one rank of `group`: this rank's data shard and
    /// Partial-FC class range, the model's LGF statistics and the head's softmax reduced
    /// over the group, and every weight and buffer taken from rank 0, so all ranks start
    /// identical. Does not resume: the distributed worker loads what the coordinator says.
    pub fn with_group(cfg: TrainConfig, group: Group) -> Result<Self> {
        let world = group.world_size() as u32;
        Self::with_data_shards(cfg, group, world)
    }

    /// [`Trainer::with_group`] for a job whose global batch is cut into `data_world_size`
    /// data shards (at least one per rank). With fewer ranks than shards (an elastic generation)
    /// this rank trains on its shards' batches together (`DataLayout`), so the global
    /// batch, the steps per epoch and the learning-rate schedule are the full job's.
    pub fn with_data_shards(cfg: TrainConfig, group: Group, data_world_size: u32) -> Result<Self> {
        cfg.validate()?;
        let device = parse_device(&cfg.train.device)?;
        if cfg.train.precision == Precision::Fp16 && !device.is_cuda() {
            return Err(WorkerError::Config {
                key: "train.precision",
                message: "fp16 needs a CUDA device; use fp32 or bf16 on the CPU".into(),
            });
        }
        let source = open_source(&cfg.data)?;
        let (rank, world) = (group.rank(), group.world_size());
        let layout = DataLayout::new(
            rank as u32,
            world as u32,
            data_world_size,
            cfg.data.batch_size,
        );
        let shards: Vec<usize> = layout.shards().into_iter().map(|s| s as usize).collect();
        let sampler = ShardedSampler::with_shards(
            source.len(),
            cfg.train.seed,
            &shards,
            layout.data_world_size() as usize,
            cfg.data.batch_size,
        )
        .map_err(LoaderError::from)?;
        tch::manual_seed(cfg.train.seed as i64);
        let vs = VarStore::new(device);
        let mut model = Lgaf::new(&vs.root(), &cfg.model)?;
        model.set_collective(group.collective());
        if device.is_cuda() && cfg.train.channels_last {
            tch::no_grad(|| {
                for (_, mut t) in vs.variables() {
                    if t.dim() == 4 {
                        t.set_data(&channels_last(&t));
                    }
                }
            });
        }
        let classes = source.num_classes() as i64;
        let margin = cfg.loss.margin()?;
        let shard = |rank| {
            PartialFc::new(
                ClassRange::of_rank(classes, rank, world),
                cfg.model.embedding_size,
                cfg.loss.sample_rate,
                margin,
                cfg.train.seed,
                device,
            )
        };
        let mut pfc = shard(rank);
        pfc.set_collective(group.collective());
        let ward = (world > 1 && cfg.checkpoint.live_recovery).then(|| shard((rank + 1) % world));
        if world > 1 {
            broadcast_from_rank0(&vs, &group)?;
        }
        let sgd = Sgd::new(trainable(&vs), cfg.optim.momentum, cfg.optim.weight_decay);
        let grad_bytes = sgd.flat_grads().numel() as u64 * 4;
        let buffers = Buffers::of(&vs);
        Ok(Self {
            cfg,
            device,
            vs,
            model,
            pfc,
            ward,
            sgd,
            buffers,
            scaler: GradScaler::default(),
            checkpoints: None,
            source,
            sampler,
            layout,
            group,
            step: 0,
            grad_bytes,
            trace_step_every: 0,
            history: None,
        })
    }

    /// Loads a checkpoint's parts: the run state, the network, its momentum, and this
    /// rank's centres with their momentum (already cut to this rank's class range).
    /// `source` names the checkpoint in errors.
    fn restore_parts(
        &mut self,
        source: &std::path::Path,
        state: &RunState,
        model: &HashMap<String, Tensor>,
        optimizer: &HashMap<String, Tensor>,
    ) -> Result<()> {
        let fail = |message: String| WorkerError::Checkpoint {
            path: source.to_path_buf(),
            message,
        };
        let saved: TrainConfig = serde_json::from_value(state.config.clone())
            .map_err(|e| fail(format!("its config does not parse: {e}")))?;
        // What decides which images a step sees: change any of it and the resumed run
        // would no longer continue the saved one.
        let same_data = |a: &TrainConfig, b: &TrainConfig| {
            (
                a.data.source,
                &a.data.path,
                &a.data.synthetic,
                a.data.batch_size,
                &a.data.augment,
            ) == (
                b.data.source,
                &b.data.path,
                &b.data.synthetic,
                b.data.batch_size,
                &b.data.augment,
            )
        };
        if saved.model != self.cfg.model || !same_data(&saved, &self.cfg) {
            return Err(fail(
                "it was made with a different model or dataset config; train under another \
                 checkpoint.run_id (or checkpoint.dir)"
                    .into(),
            ));
        }
        weights::assign(&mut self.vs, model, &source.join("model.safetensors"))?;
        self.sgd
            .load_momentum(optimizer)
            .map_err(|m| fail(format!("optimizer.safetensors: {m}")))?;
        self.scaler.scale = state.loss_scale;
        self.scaler.good_steps = state.loss_scale_good_steps;
        Ok(())
    }

    /// This rank's part of a checkpoint at the current step, as (object key, bytes), and
    /// (on rank 0) the run state for the manifest. Collective: every rank calls it at the
    /// same step (BatchNorm buffers are first taken from rank 0, unless live recovery took
    /// them at every step already). Rank 0 writes the network (`model.safetensors`, the
    /// spec's layout) and its momentum; every rank writes its centres,
    /// `classifier/rank-RRRRR.safetensors`, with their global class range in the header, so
    /// a run on another world size can re-cut them.
    pub fn checkpoint_objects(&self) -> Result<CheckpointParts> {
        if self.ward.is_none() {
            self.sync_buffers_from_rank0()?;
        }
        let rank = self.group.rank();
        let mut objects = vec![self.shard_object(&self.pfc, rank)?];
        let mut state = None;
        if rank == 0 {
            objects.splice(0..0, self.network_objects()?);
            state = Some(self.run_state());
        }
        Ok((objects, state))
    }

    /// What this rank holds of the run at the current step, for the next generation when
    /// this one ended under it (live recovery): the network and its momentum (the same
    /// bytes on every rank: rank 0's buffers are taken every step), the run state (the
    /// same but for the config's device), its own classifier shard and its replica of the
    /// next rank's. No collective call: the group may be dead.
    /// `None` without live recovery (no replica, and the buffers are not rank 0's).
    pub fn live_state(&self) -> Result<Option<LiveState>> {
        let Some(ward) = &self.ward else {
            return Ok(None);
        };
        let (rank, world) = (self.group.rank(), self.group.world_size());
        let ward_rank = (rank + 1) % world;
        let mut objects: HashMap<String, Bytes> = self
            .network_objects()?
            .into_iter()
            .chain([
                self.shard_object(&self.pfc, rank)?,
                self.shard_object(ward, ward_rank)?,
            ])
            .map(|(k, v)| (k, Bytes::from(v)))
            .collect();
        let state = serde_json::to_vec(&self.run_state()).expect("run state serialises");
        objects.insert(RUN_STATE_OBJECT.to_string(), Bytes::from(state));
        Ok(Some(LiveState {
            step: self.step,
            world_size: world as u32,
            shards: vec![rank as u32, ward_rank as u32],
            objects,
        }))
    }

    /// The network (`model.safetensors`, the spec's layout) and its momentum.
    fn network_objects(&self) -> Result<Vec<(String, Vec<u8>)>> {
        let mut model: Vec<(String, Tensor)> = self.vs.variables().into_iter().collect();
        model.sort_by(|a, b| a.0.cmp(&b.0));
        let meta = HashMap::from([
            ("arch".to_string(), self.cfg.model.arch.name().to_string()),
            (
                "fusion".to_string(),
                self.cfg.model.fusion.name().to_string(),
            ),
        ]);
        let momentum = self.sgd.named_momentum();
        Ok(vec![
            (
                MODEL_OBJECT.to_string(),
                weights::to_bytes(&model, &meta, Path::new(MODEL_OBJECT))?,
            ),
            (
                OPTIMIZER_OBJECT.to_string(),
                weights::to_bytes(&momentum, &HashMap::new(), Path::new(OPTIMIZER_OBJECT))?,
            ),
        ])
    }

    /// The centres of `shard` as rank `rank`'s classifier object, with their global class
    /// range in the header, so a run on another world size can re-cut them.
    fn shard_object(&self, shard: &PartialFc, rank: i64) -> Result<(String, Vec<u8>)> {
        let range = shard.range();
        let key = classifier_object(rank);
        let meta = HashMap::from([
            ("class_start".to_string(), range.start.to_string()),
            ("class_len".to_string(), range.len.to_string()),
        ]);
        let centres = vec![
            ("momentum".to_string(), shard.momentum.shallow_clone()),
            ("weight".to_string(), shard.weight.shallow_clone()),
        ];
        let bytes = weights::to_bytes(&centres, &meta, Path::new(&key))?;
        Ok((key, bytes))
    }

    fn run_state(&self) -> RunState {
        RunState::new(
            self.layout.data_world_size(),
            self.sampler.steps_per_epoch(),
            self.scaler.scale,
            self.scaler.good_steps,
            serde_json::to_value(&self.cfg).expect("config serialises"),
        )
    }

    /// Resumes from the committed checkpoint of `manifest`, named `source` in messages:
    /// `objects` (key -> bytes) holds at least the network, its momentum and every
    /// classifier shard that overlaps this rank's class range. They may come from another
    /// world size: the shards are re-cut, and the step count is mapped to the same position
    /// in the epoch ([`lgaf_proto::resumed_step`]).
    pub fn restore_from_objects(
        &mut self,
        source: &str,
        manifest: &Manifest,
        objects: &HashMap<String, Bytes>,
    ) -> Result<()> {
        self.restore(source, manifest.step, &manifest.state, objects)?;
        info!(
            checkpoint = source,
            saved_step = manifest.step,
            saved_world_size = manifest.world_size,
            step = self.step,
            "resumed from checkpoint"
        );
        Ok(())
    }

    /// Takes over the state that the survivors of a generation held at `step`
    /// ([`Trainer::live_state`]), gathered in `objects` (the keys of
    /// [`Trainer::objects_to_resume`] and [`RUN_STATE_OBJECT`]); `source` names it in errors.
    pub fn restore_live(
        &mut self,
        source: &str,
        step: u64,
        objects: &HashMap<String, Bytes>,
    ) -> Result<()> {
        let fail = |message: String| WorkerError::Checkpoint {
            path: PathBuf::from(source),
            message,
        };
        let state = objects
            .get(RUN_STATE_OBJECT)
            .ok_or_else(|| fail(format!("{RUN_STATE_OBJECT} is missing")))?;
        let state: RunState = serde_json::from_slice(state)
            .map_err(|e| fail(format!("{RUN_STATE_OBJECT} does not parse: {e}")))?;
        self.restore(source, step, &state, objects)
    }

    /// The body of both resumes: everything from `objects` saved at `saved_step` under
    /// `state`, the centres re-cut to this rank's range (and its replica's).
    fn restore(
        &mut self,
        source: &str,
        saved_step: u64,
        state: &RunState,
        objects: &HashMap<String, Bytes>,
    ) -> Result<()> {
        let path = std::path::PathBuf::from(source);
        let fail = |message: String| WorkerError::Checkpoint {
            path: path.clone(),
            message,
        };
        let tensors = |key: &str| -> Result<HashMap<String, Tensor>> {
            let bytes = objects
                .get(key)
                .ok_or_else(|| fail(format!("{key} is missing")))?;
            Ok(weights::from_bytes(bytes, &path.join(key))?
                .into_iter()
                .collect())
        };
        let model = tensors(MODEL_OBJECT)?;
        let optimizer = tensors(OPTIMIZER_OBJECT)?;
        let centres = self.recut_centres(&path, objects, self.pfc.range())?;
        let ward_centres = match &self.ward {
            Some(ward) => Some(self.recut_centres(&path, objects, ward.range())?),
            None => None,
        };
        self.restore_parts(&path, state, &model, &optimizer)?;
        load_centres(&self.pfc, centres).map_err(fail)?;
        if let (Some(ward), Some(centres)) = (&self.ward, ward_centres) {
            load_centres(ward, centres).map_err(fail)?;
        }
        let spe = state.steps_per_epoch;
        self.step = lgaf_proto::resumed_step(saved_step, spe, self.steps_per_epoch());
        Ok(())
    }

    /// This rank's centres and momentum, cut from whichever saved shards cover its range.
    fn recut_centres(
        &self,
        source: &std::path::Path,
        objects: &HashMap<String, Bytes>,
        want: ClassRange,
    ) -> Result<(Tensor, Tensor)> {
        let fail = |message: String| WorkerError::Checkpoint {
            path: source.to_path_buf(),
            message,
        };
        let mut pieces: Vec<(i64, Tensor, Tensor)> = Vec::new();
        for (key, bytes) in objects
            .iter()
            .filter(|(k, _)| k.starts_with(CLASSIFIER_PREFIX))
        {
            let (tensors, meta) = weights::from_bytes_with_metadata(bytes, &source.join(key))?;
            let field = |name: &str| -> Result<i64> {
                meta.get(name)
                    .and_then(|v| v.parse().ok())
                    .ok_or_else(|| fail(format!("{key}: no integer `{name}` in its header")))
            };
            let (start, len) = (field("class_start")?, field("class_len")?);
            let (lo, hi) = (start.max(want.start), (start + len).min(want.end()));
            if lo >= hi {
                continue;
            }
            let tensors: HashMap<String, Tensor> = tensors.into_iter().collect();
            let column = |name: &str| {
                tensors
                    .get(name)
                    .map(|t| t.narrow(0, lo - start, hi - lo))
                    .ok_or_else(|| fail(format!("{key}: no `{name}`")))
            };
            pieces.push((lo, column("weight")?, column("momentum")?));
        }
        pieces.sort_by_key(|p| p.0);
        let covered: i64 = pieces.iter().map(|p| p.1.size()[0]).sum();
        let contiguous = pieces
            .iter()
            .scan(want.start, |next, p| {
                let ok = p.0 == *next;
                *next += p.1.size()[0];
                Some(ok)
            })
            .all(|ok| ok);
        if covered != want.len || !contiguous {
            return Err(fail(format!(
                "the classifier shards cover {covered} of classes {}..{} (a range this rank \
                 holds)",
                want.start,
                want.end()
            )));
        }
        let cat = |i: usize| {
            if let [(_, weight, momentum)] = &pieces[..] {
                // One saved shard covers the range (the same world size): its narrowed view
                // is copied into the centres directly; `cat` would copy it once more.
                let only = if i == 0 { weight } else { momentum };
                return only.to_device(self.device);
            }
            let parts: Vec<Tensor> = pieces
                .iter()
                .map(|p| {
                    if i == 0 {
                        p.1.shallow_clone()
                    } else {
                        p.2.shallow_clone()
                    }
                })
                .collect();
            Tensor::cat(&parts, 0).to_device(self.device)
        };
        Ok((cat(0), cat(1)))
    }

    /// The object keys this rank needs to resume from a checkpoint saved by
    /// `saved_world_size` ranks: the network, its momentum and the shards that overlap its
    /// class range or its replica's.
    pub fn objects_to_resume(&self, saved_world_size: i64, num_classes: i64) -> Vec<String> {
        let wanted: Vec<ClassRange> = std::iter::once(self.pfc.range())
            .chain(self.ward.as_ref().map(PartialFc::range))
            .collect();
        let mut keys = vec![MODEL_OBJECT.to_string(), OPTIMIZER_OBJECT.to_string()];
        for r in 0..saved_world_size {
            let range = ClassRange::of_rank(num_classes, r, saved_world_size);
            if wanted
                .iter()
                .any(|want| range.start < want.end() && want.start < range.end())
            {
                keys.push(classifier_object(r));
            }
        }
        keys
    }

    /// Records every step from now on in `history` (rank 0: the run's history).
    pub fn set_history(&mut self, history: HistoryWriter) {
        self.history = Some(Arc::new(history));
    }

    /// The run's history, if this rank writes it.
    pub fn history(&self) -> Option<&HistoryWriter> {
        self.history.as_deref()
    }

    /// The run's history, for a thread that flushes it later (a checkpoint's ack).
    pub fn shared_history(&self) -> Option<Arc<HistoryWriter>> {
        self.history.clone()
    }

    /// Waits until every step recorded so far is in the store: before a checkpoint is
    /// committed, so that a resumed run's history has no gap.
    pub fn flush_history(&self) -> Result<()> {
        if let Some(history) = &self.history {
            let _s = info_span!("history_flush").entered();
            history.flush_and_wait()?;
        }
        Ok(())
    }

    /// Traces one step in `every` on ranks other than 0 (rank 0 traces them all).
    pub fn set_trace_step_every(&mut self, every: u64) {
        self.trace_step_every = every;
    }

    /// Samples in the training data (every shard's).
    pub fn num_samples(&self) -> usize {
        self.source.len()
    }

    /// Steps per epoch at this world size.
    pub fn steps_per_epoch(&self) -> u64 {
        self.sampler.steps_per_epoch()
    }

    /// Makes the next step `step` (a resumed run on another world size maps its progress).
    pub fn set_step(&mut self, step: u64) {
        self.step = step;
    }

    /// This rank's class range of the Partial-FC head.
    pub fn class_range(&self) -> ClassRange {
        self.pfc.range()
    }

    pub fn model(&self) -> &Lgaf {
        &self.model
    }

    pub fn var_store(&self) -> &VarStore {
        &self.vs
    }

    pub fn device(&self) -> Device {
        self.device
    }

    /// The collective group this rank trains in.
    pub fn group(&self) -> &Group {
        &self.group
    }

    pub fn config(&self) -> &TrainConfig {
        &self.cfg
    }

    pub fn steps_done(&self) -> u64 {
        self.step
    }

    pub fn total_steps(&self) -> u64 {
        // `train.epochs` is bounded when the config is read; saturating all the same, since a
        // wrapped product once turned a huge epoch count into a 2-step run that "succeeded".
        let all = self
            .sampler
            .steps_per_epoch()
            .saturating_mul(self.cfg.train.epochs as u64);
        match self.cfg.train.max_steps {
            0 => all,
            max => max.min(all),
        }
    }

    /// The held-out identities right after the training ones.
    pub fn held_out(&self) -> HeldOut {
        HeldOut::of(&self.cfg)
    }

    /// One optimisation step on `batch` (this rank's part of the global batch). Fails,
    /// without changing any weight, when an exchange with the other ranks failed.
    pub fn train_step(&mut self, batch: &Batch, data_wait: Duration) -> Result<StepReport> {
        let started = Instant::now();
        let spe = self.sampler.steps_per_epoch() as f64;
        let lr = learning_rate(&self.cfg.optim, self.step as f64 / spe);
        // Dropout draws from libtorch's generator: seeding it per step (and rank) makes a
        // resumed run draw what the uninterrupted run drew. (Partial FC's negatives come
        // from their own keyed stream.)
        let rank = self.group.rank() as u64;
        tch::manual_seed(
            (self.cfg.train.seed
                ^ self.step.wrapping_mul(0x9e37_79b9_7f4a_7c15)
                ^ rank.wrapping_mul(0xc2b2_ae3d_27d4_eb4f)) as i64
                & i64::MAX,
        );
        let precision = self.cfg.train.precision;
        let scaled = precision.needs_loss_scaling();
        let loss_scale = if scaled { self.scaler.scale } else { 1.0 };

        let n = batch.labels.len();
        let collective = self.group.collective();
        // The forward pass moves the buffers (BatchNorm statistics, LGF's averages): a step
        // that fails puts them back, so this rank's state stays that of `self.step`, which
        // is what it offers the next generation.
        let buffers_before = self.ward.is_some().then(|| self.buffers().snapshot());
        let mut phases = PhaseTimes::default();
        let phase_started = Instant::now();
        let (out, fwd, ward_fwd, exchange) = {
            let _s = info_span!("forward").entered();
            let mut images = images_to_tensor(&batch.images, n, IMAGE_SIZE, self.device);
            if self.device.is_cuda() && self.cfg.train.channels_last {
                images = channels_last(&images);
            }
            let labels = Tensor::from_slice(&batch.labels).to_device(self.device);
            let out = amp::autocast(self.device, precision, || {
                self.model.forward_t(&images, true)
            });
            if self.group.world_size() > 1 {
                let exchange = EmbeddingExchange::gather(
                    collective.as_ref(),
                    &self.layout,
                    &out.kappa,
                    &labels,
                );
                let fwd = self
                    .pfc
                    .forward(&exchange.global, &exchange.labels, self.step);
                let ward_fwd = self.ward.as_ref().map(|ward| {
                    ward.forward_replica(&exchange.global, &exchange.labels, self.step, &fwd.stats)
                });
                (out, fwd, ward_fwd, Some(exchange))
            } else {
                let fwd = self.pfc.forward(&out.kappa, &labels, self.step);
                (out, fwd, None, None)
            }
        };
        phases.forward = phase_started.elapsed();
        let phase_started = Instant::now();
        {
            let _s = info_span!("backward").entered();
            (&fwd.shard.surrogate * loss_scale).backward();
            if let Some(ward_fwd) = &ward_fwd {
                (&ward_fwd.surrogate * loss_scale).backward();
            }
            if let Some(exchange) = &exchange {
                // The head's gradient of this rank's embeddings, summed over the ranks'
                // class ranges, back into this rank's graph.
                if let Some(grad) = exchange.local_grad(collective.as_ref()) {
                    (out.kappa.to_kind(Kind::Float) * grad.detach())
                        .sum(Kind::Float)
                        .backward();
                }
            }
        }
        if self.ward.is_some() {
            // Every rank's buffers become rank 0's each step, so any survivor holds the
            // ones a checkpoint would save (its own BatchNorm statistics never reach one).
            // Before the gradients' all-reduce: a broadcast can complete on its root and
            // fail elsewhere, and the step's last exchange decides which ranks complete it.
            self.buffers().broadcast_from_rank0(collective.as_ref());
        }
        phases.backward = phase_started.elapsed();
        let phase_started = Instant::now();
        let allreduce_bytes = if self.group.world_size() > 1 {
            let _s = info_span!("all_reduce", bytes = self.grad_bytes).entered();
            data_parallel::all_reduce_grads(collective.as_ref(), self.sgd.flat_grads());
            self.grad_bytes
        } else {
            0
        };
        // Under loss scaling every rank must skip or apply the same steps (the scaler is
        // part of the state every survivor offers, and the replica follows its owner only
        // if both apply the step): one rank's overflow, in any shard, skips it everywhere.
        let finite = !scaled || {
            let local = GradScaler::all_finite(&[
                self.sgd.flat_grads().shallow_clone(),
                fwd.shard.sampled_weight.grad(),
                ward_fwd
                    .as_ref()
                    .map_or_else(Tensor::new, |w| w.sampled_weight.grad()),
            ]);
            let overflow =
                Tensor::from_slice(&[f32::from(u8::from(!local))]).to_device(self.device);
            collective.all_reduce_max(&overflow).double_value(&[0]) == 0.0
        };
        phases.all_reduce = phase_started.elapsed();
        let phase_started = Instant::now();
        if let Err(failed) = self.group.check() {
            self.sgd.zero_grad();
            if let Some(saved) = buffers_before {
                self.buffers().restore(&saved);
            }
            return Err(WorkerError::Collective {
                step: self.step + 1,
                message: failed.to_string(),
            });
        }
        let skipped = {
            let _s = info_span!("optimizer").entered();
            let apply = if scaled {
                self.scaler.update(finite)
            } else {
                true
            };
            if apply {
                let norm = self.sgd.grad_norm() / loss_scale;
                let multiplier = clip_factor(norm, self.cfg.optim.clip_grad_norm) / loss_scale;
                self.sgd.step(lr, multiplier);
                let o = &self.cfg.optim;
                self.pfc
                    .step(&fwd.shard, lr, o.momentum, o.weight_decay, loss_scale);
                if let (Some(ward), Some(ward_fwd)) = (self.ward.as_mut(), &ward_fwd) {
                    ward.step(ward_fwd, lr, o.momentum, o.weight_decay, loss_scale);
                }
            }
            self.sgd.zero_grad();
            !apply
        };
        phases.optimizer = phase_started.elapsed();
        self.step += 1;
        let gamma = out.gamma.map(|g| {
            let m = Vec::<f64>::try_from(g.detach().to_kind(Kind::Double).mean_dim(
                &[0i64][..],
                false,
                None::<Kind>,
            ))
            .unwrap();
            (m[0], m[1])
        });
        Ok(StepReport {
            step: self.step,
            total_steps: self.total_steps(),
            epoch: batch.epoch,
            loss: fwd.loss.double_value(&[]),
            lr,
            skipped,
            gamma,
            data_wait,
            loader: LoaderStats::default(),
            step_time: started.elapsed() + data_wait,
            batch_size: n,
            phases,
            allreduce_bytes,
            loss_scale: scaled.then_some(loss_scale),
        })
    }

    /// Takes rank 0's buffers (BatchNorm running statistics; the LGF buffers already agree)
    /// on every rank, as a checkpoint needs them: each rank's BatchNorm sees only its own
    /// part of the batch.
    pub fn sync_buffers_from_rank0(&self) -> Result<()> {
        if self.group.world_size() == 1 {
            return Ok(());
        }
        self.buffers()
            .broadcast_from_rank0(self.group.collective().as_ref());
        self.group
            .check()
            .map_err(|failed| WorkerError::Collective {
                step: self.step,
                message: failed.to_string(),
            })
    }

    fn buffers(&self) -> &Buffers {
        &self.buffers
    }

    /// Commits a checkpoint of everything a resume needs (single-process runs; a rank of
    /// a coordinated run hands [`Trainer::checkpoint_objects`] to the coordinator).
    pub fn save_checkpoint(&self) -> Result<Manifest> {
        let _s = info_span!("checkpoint", step = self.step).entered();
        let Some(checkpoints) = &self.checkpoints else {
            return Err(WorkerError::Checkpoint {
                path: PathBuf::from(&self.cfg.checkpoint.dir),
                message: "a rank of a coordinated run commits its checkpoints through the \
                          coordinator"
                    .into(),
            });
        };
        self.flush_history()?;
        let (objects, state) = self.checkpoint_objects()?;
        let state = state.expect("a single process is rank 0");
        let epoch = self.step / state.steps_per_epoch;
        checkpoints.save(self.step, epoch, objects, state)
    }

    /// Trains from the current step to the end, checkpointing on schedule (and at the end),
    /// calling `on_step` after each step.
    pub fn run(&mut self, mut on_step: impl FnMut(&StepReport, &Trainer)) -> Result<()> {
        let total = self.total_steps();
        let spe = self.sampler.steps_per_epoch();
        let every = self.cfg.checkpoint.every_steps;
        self.run_until(total, |trainer, report| {
            on_step(report, trainer);
            let step = trainer.step;
            if step == total
                || step.is_multiple_of(spe)
                || (every > 0 && step.is_multiple_of(every))
            {
                trainer.save_checkpoint()?;
            }
            Ok(())
        })
    }

    /// Trains from the current step until `end` steps are done, calling `after_step` after
    /// each one (checkpoints, reports); an error from it stops the run.
    pub fn run_until(
        &mut self,
        end: u64,
        mut after_step: impl FnMut(&mut Trainer, &StepReport) -> Result<()>,
    ) -> Result<()> {
        if self.step >= end {
            return Ok(());
        }
        let settings = LoaderSettings::new(&self.cfg.data, self.cfg.train.seed);
        let mut loader = Loader::start(
            Arc::clone(&self.source),
            self.sampler.clone(),
            settings,
            self.step..end,
        )?;
        // Up to `end`, not until the loader runs dry: a step span is made only for a step.
        while self.step < end {
            let rank = self.group.rank() as u32;
            let step = self.step + 1;
            let traced = step_traced(rank, step, self.trace_step_every);
            let _step = info_span!("step", step, rank, lgaf.sampled = traced).entered();
            let wait_start = Instant::now();
            let batch = {
                let _s = info_span!("data_wait").entered();
                match loader.next_batch()? {
                    Some(b) => b,
                    None => break,
                }
            };
            let mut report = self.train_step(&batch, wait_start.elapsed())?;
            loader.recycle(batch);
            report.loader = loader.stats();
            // fp16 steps with an overflow are skipped by the scaler; elsewhere it is divergence.
            if !report.loss.is_finite() && !self.cfg.train.precision.needs_loss_scaling() {
                return Err(WorkerError::Diverged {
                    step: report.step,
                    loss: report.loss,
                });
            }
            if let Some(history) = &self.history {
                history.record(step_record(
                    &report,
                    self.group.world_size() as u32,
                    self.layout.data_world_size(),
                    history.generation(),
                ));
            }
            after_step(self, &report)?;
        }
        Ok(())
    }
}

/// A step as the run's history keeps it.
/// `data_shards` ranks' batches make a step (more than `world_size` in a smaller elastic
/// generation).
fn step_record(
    report: &StepReport,
    world_size: u32,
    data_shards: u32,
    generation: u64,
) -> StepRecord {
    let step_seconds = report.step_time.as_secs_f64();
    StepRecord {
        step: report.step,
        epoch: report.epoch,
        total_steps: report.total_steps,
        loss: report.loss,
        lr: report.lr,
        // The job's rate: every data shard is a batch like this rank's.
        samples_per_sec: (report.batch_size as f64 * f64::from(data_shards))
            / step_seconds.max(1e-9),
        step_seconds,
        data_wait_seconds: report.data_wait.as_secs_f64(),
        loss_scale: report.loss_scale,
        skipped: report.skipped,
        gamma_local: report.gamma.map(|g| g.0),
        gamma_global: report.gamma.map(|g| g.1),
        world_size,
        generation,
        time: lgaf_store::history::now(),
    }
}

/// Copies rank 0's value of every variable and buffer (sorted by name, so every rank
/// sends the same sequence) to all ranks.
fn broadcast_from_rank0(vs: &VarStore, group: &Group) -> Result<()> {
    let collective = group.collective();
    let mut named: Vec<(String, Tensor)> = vs.variables().into_iter().collect();
    named.sort_by(|a, b| a.0.cmp(&b.0));
    tch::no_grad(|| {
        for (_, t) in &named {
            let root = collective.broadcast(t, 0);
            t.shallow_clone().copy_(&root);
        }
    });
    group.check().map_err(|failed| WorkerError::Collective {
        step: 0,
        message: failed.to_string(),
    })
}

/// The model's buffers (BatchNorm running statistics, LGF's feature-norm averages): the
/// variables that the forward pass updates and no optimiser does, sorted by name so every
/// rank lists them in the same order.
struct Buffers(Vec<Tensor>);

impl Buffers {
    fn of(vs: &VarStore) -> Self {
        let mut named: Vec<(String, Tensor)> = vs
            .variables()
            .into_iter()
            .filter(|(_, t)| !t.requires_grad())
            .collect();
        named.sort_by(|a, b| a.0.cmp(&b.0));
        Self(named.into_iter().map(|(_, t)| t).collect())
    }

    fn snapshot(&self) -> Vec<Tensor> {
        self.0.iter().map(Tensor::copy).collect()
    }

    fn restore(&self, saved: &[Tensor]) {
        tch::no_grad(|| {
            for (t, s) in self.0.iter().zip(saved) {
                t.shallow_clone().copy_(s);
            }
        });
    }

    /// Rank 0's values on every rank, in one broadcast per kind (a model has hundreds of
    /// small buffers; one call each would pay the collective's latency hundreds of times).
    /// Under a failed collective each keeps its own value.
    fn broadcast_from_rank0(&self, collective: &dyn lgaf_model::collective::Collective) {
        let mut kinds: Vec<Kind> = Vec::new();
        for t in &self.0 {
            if !kinds.contains(&t.kind()) {
                kinds.push(t.kind());
            }
        }
        tch::no_grad(|| {
            for kind in kinds {
                let members: Vec<&Tensor> = self.0.iter().filter(|t| t.kind() == kind).collect();
                let flat: Vec<Tensor> = members.iter().map(|t| t.reshape([-1])).collect();
                let root = collective.broadcast(&Tensor::cat(&flat, 0), 0);
                let mut offset = 0;
                for t in members {
                    let n = t.numel() as i64;
                    t.shallow_clone()
                        .copy_(&root.narrow(0, offset, n).reshape(t.size()));
                    offset += n;
                }
            }
        });
    }
}

/// Copies re-cut `centres` (weight, momentum) into `shard`, or says which has the wrong
/// shape.
fn load_centres(shard: &PartialFc, centres: (Tensor, Tensor)) -> Result<(), String> {
    for (name, src, dst) in [
        ("weight", &centres.0, &shard.weight),
        ("momentum", &centres.1, &shard.momentum),
    ] {
        if src.size() != dst.size() {
            return Err(format!(
                "classifier `{name}` has shape {:?}, expected {:?}",
                src.size(),
                dst.size()
            ));
        }
        tch::no_grad(|| dst.shallow_clone().copy_(src));
    }
    Ok(())
}
