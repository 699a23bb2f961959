//! The training batch stream over any [`FaceSource`].
//!
//! `data.workers` threads each build whole batches: read the shard's samples, decode them
//! into the batch buffer and augment them in place. A window of `data.prefetch` steps is
//! in flight at a time (or one per worker, if there are more workers); finished batches
//! wait in a reorder buffer and leave strictly in step order, whichever thread finished
//! first. Buffers the trainer hands back with [`Loader::recycle`] are reused, so the
//! steady state allocates no image memory; [`Batch::allocate`] is the one place that
//! allocates it (where pinned host memory would come from on CUDA).
//!
//! Everything is a function of (seed, epoch, step): the sampler fixes each step's
//! samples, the augmentation is keyed by (seed, epoch, sample index), and a bad record is
//! replaced by the next sample of the same shard. So a run resumed at step s reads
//! exactly the batches the uninterrupted run read from step s on, with any thread count.

use std::collections::{BTreeMap, BTreeSet};
use std::ops::Range;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use lgaf_data::augment::{AugmentConfig, Augmenter, SampleKey};
use lgaf_data::decode::{decode_rgb112_into, RGB112_BYTES};
use lgaf_data::recordio::{IndexMode, IndexSource, RecordPack};
use lgaf_data::sampler::ShardedSampler;
use lgaf_data::source::{FaceSource, FolderSource, Payload, SourceError, SynthSource};
use lgaf_data::synth::SynthConfig;

use tracing::info;

use crate::config::{DataConfig, SourceKind, SyntheticConfig};
// Defined with the crate's other errors, so that `error` depends on no module of the crate.
pub use crate::error::LoaderError;

/// Records read before the bad fraction is judged: a few bad files early on are noise.
pub const BAD_FRACTION_MIN_READS: usize = 1000;

/// One step's training input.
#[derive(Debug)]
pub struct Batch {
    /// Global step this batch belongs to.
    pub step: u64,
    pub epoch: u64,
    /// HWC RGB8, `labels.len()` 112x112 images back to back.
    pub images: Vec<u8>,
    pub labels: Vec<i64>,
    /// Records read to fill it, replacements of bad ones included.
    pub records_read: usize,
    /// Records that could not be read or decoded (and were replaced).
    pub bad_records: usize,
    /// The error of the last bad record, for messages.
    pub last_bad_record: Option<String>,
    /// Thread time spent building it.
    pub build_time: Duration,
}

impl Batch {
    /// Empty buffers for `batch_size` images: the single place where batch memory is
    /// allocated, so that pinned host memory (for asynchronous host-to-GPU copies) would
    /// be a change here alone.
    pub fn allocate(batch_size: usize) -> Self {
        Self {
            step: 0,
            epoch: 0,
            images: vec![0; batch_size * RGB112_BYTES],
            labels: Vec::with_capacity(batch_size),
            records_read: 0,
            bad_records: 0,
            last_bad_record: None,
            build_time: Duration::ZERO,
        }
    }
}

/// How the loader runs; [`LoaderSettings::new`] takes it from the config.
#[derive(Clone, Debug)]
pub struct LoaderSettings {
    pub workers: usize,
    pub prefetch: usize,
    pub strict: bool,
    pub max_bad_fraction: f64,
    /// Records read before `max_bad_fraction` applies.
    pub bad_fraction_min_reads: usize,
    pub augment: AugmentConfig,
    /// Keys the augmentation (and, through the sampler, the sample order).
    pub seed: u64,
}

impl LoaderSettings {
    pub fn new(data: &DataConfig, seed: u64) -> Self {
        Self {
            workers: data.worker_threads(),
            prefetch: data.prefetch.max(1),
            strict: data.strict,
            max_bad_fraction: data.max_bad_fraction,
            bad_fraction_min_reads: BAD_FRACTION_MIN_READS,
            augment: data.augment.clone(),
            seed,
        }
    }

    fn too_many_bad(&self, bad: usize, read: usize) -> bool {
        read >= self.bad_fraction_min_reads && bad as f64 > self.max_bad_fraction * read as f64
    }
}

pub fn synth_config(cfg: &SyntheticConfig) -> SynthConfig {
    SynthConfig {
        seed: cfg.seed,
        identities: cfg.identities,
        images_per_identity: cfg.images_per_identity,
        nuisance_prob: cfg.nuisance_prob,
    }
}

/// Opens the configured `data.source`.
pub fn open_source(data: &DataConfig) -> Result<Arc<dyn FaceSource>, LoaderError> {
    match data.source {
        SourceKind::Synthetic => Ok(Arc::new(SynthSource::new(synth_config(&data.synthetic)))),
        SourceKind::Folder => Ok(Arc::new(
            FolderSource::open(&data.path).map_err(LoaderError::Open)?,
        )),
        SourceKind::Recordio => {
            let mut last_percent = 0;
            let pack = RecordPack::open_with(&data.path, IndexMode::Read, |done, total| {
                // Only a pack without .idx reports progress: it is being scanned.
                let percent = (done * 100).checked_div(total).unwrap_or(100);
                if percent >= last_percent + 10 {
                    last_percent = percent;
                    info!(pack = %data.path.display(), percent, "no .idx: indexing by scanning");
                }
            })
            .map_err(|e| LoaderError::Open(e.into()))?;
            if let IndexSource::Rebuilt { saved } = pack.index_source() {
                info!(pack = %data.path.display(), saved, "rebuilt the missing .idx");
            }
            Ok(Arc::new(pack))
        }
    }
}

/// Counters since the loader started.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct LoaderStats {
    pub batches: u64,
    pub images: u64,
    pub records_read: u64,
    pub bad_records: u64,
    /// The error of the last bad record delivered.
    pub last_bad_record: Option<String>,
    /// Time the trainer spent blocked in [`Loader::next_batch`].
    pub waited: Duration,
    /// Thread time spent building the delivered batches.
    pub build_time: Duration,
    /// Wall time since the loader started.
    pub elapsed: Duration,
}

impl LoaderStats {
    /// Images delivered per second of wall time (bounded by how fast the trainer takes).
    pub fn images_per_s(&self) -> f64 {
        self.images as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    /// Images one loader thread builds per second of its own time.
    pub fn images_per_thread_s(&self) -> f64 {
        self.images as f64 / self.build_time.as_secs_f64().max(1e-9)
    }
}

/// State shared by the trainer side and the threads, under one lock.
struct Queue {
    /// Next step a thread will take.
    next_claim: u64,
    /// Next step the trainer will receive.
    next_deliver: u64,
    /// Finished steps waiting for their turn.
    ready: BTreeMap<u64, Result<Batch, LoaderError>>,
    /// Buffers handed back for reuse.
    free: Vec<Batch>,
    /// The shards of epochs in flight (at most the current and the next): each held data
    /// shard's samples.
    shards: Vec<(u64, Arc<[Vec<usize>]>)>,
    /// Set when the loader is dropped or has failed: threads exit, delivery ends.
    closed: bool,
    /// Steps whose thread panicked (several threads may).
    panicked: BTreeSet<u64>,
}

struct Shared {
    source: Arc<dyn FaceSource>,
    sampler: ShardedSampler,
    settings: LoaderSettings,
    end: u64,
    /// Steps claimed but not yet delivered, at most.
    window: u64,
    queue: Mutex<Queue>,
    changed: Condvar,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Queue> {
        // Threads never panic while holding the lock, so a poisoned lock still holds
        // consistent state.
        self.queue.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn wait<'a>(&self, guard: MutexGuard<'a, Queue>) -> MutexGuard<'a, Queue> {
        self.changed
            .wait(guard)
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// The shards of `epoch`, computed outside the lock by whichever thread needs them first.
    fn shards(&self, epoch: u64) -> Arc<[Vec<usize>]> {
        if let Some((_, shard)) = self.lock().shards.iter().find(|(e, _)| *e == epoch) {
            return Arc::clone(shard);
        }
        let computed: Arc<[Vec<usize>]> = self.sampler.epoch_shards(epoch).into();
        let mut queue = self.lock();
        if let Some((_, shard)) = queue.shards.iter().find(|(e, _)| *e == epoch) {
            return Arc::clone(shard); // another thread was quicker
        }
        let delivering = self.sampler.locate(queue.next_deliver).epoch;
        queue.shards.retain(|(e, _)| *e >= delivering);
        queue.shards.push((epoch, Arc::clone(&computed)));
        computed
    }
}

/// Produces the batches of a range of steps on background threads.
pub struct Loader {
    shared: Arc<Shared>,
    threads: Vec<JoinHandle<()>>,
    started: Instant,
    stats: LoaderStats,
}

impl Loader {
    /// Starts building the batches of `steps` (global step numbers).
    pub fn start(
        source: Arc<dyn FaceSource>,
        sampler: ShardedSampler,
        settings: LoaderSettings,
        steps: Range<u64>,
    ) -> Result<Self, LoaderError> {
        let workers = settings.workers.max(1);
        let window = settings.prefetch.max(workers) as u64;
        let shared = Arc::new(Shared {
            source,
            sampler,
            settings,
            end: steps.end,
            window,
            queue: Mutex::new(Queue {
                next_claim: steps.start,
                next_deliver: steps.start,
                ready: BTreeMap::new(),
                free: Vec::new(),
                shards: Vec::new(),
                closed: false,
                panicked: BTreeSet::new(),
            }),
            changed: Condvar::new(),
        });
        let mut loader = Self {
            shared: Arc::clone(&shared),
            threads: Vec::with_capacity(workers),
            started: Instant::now(),
            stats: LoaderStats::default(),
        };
        for k in 0..workers {
            let shared = Arc::clone(&shared);
            let thread = std::thread::Builder::new()
                .name(format!("lgaf-loader-{k}"))
                .spawn(move || build_batches(&shared))
                .map_err(LoaderError::Spawn)?; // dropping `loader` stops the ones started
            loader.threads.push(thread);
        }
        Ok(loader)
    }

    /// The next step's batch; `None` after the last step (or after an error).
    pub fn next_batch(&mut self) -> Result<Option<Batch>, LoaderError> {
        let started = Instant::now();
        let shared = &self.shared;
        let mut queue = shared.lock();
        let result = loop {
            if queue.closed || queue.next_deliver >= shared.end {
                return Ok(None);
            }
            let step = queue.next_deliver;
            if let Some(result) = queue.ready.remove(&step) {
                queue.next_deliver += 1;
                shared.changed.notify_all();
                break result;
            }
            if queue.panicked.contains(&step) {
                queue.closed = true;
                shared.changed.notify_all();
                return Err(LoaderError::WorkerPanicked { step });
            }
            queue = shared.wait(queue);
        };
        drop(queue);
        self.stats.waited += started.elapsed();
        match result.and_then(|batch| self.account(batch)) {
            Ok(batch) => Ok(Some(batch)),
            Err(e) => {
                self.shared.lock().closed = true;
                self.shared.changed.notify_all();
                Err(e)
            }
        }
    }

    /// Adds a delivered batch to the counters and applies the run-wide bad-record limit.
    fn account(&mut self, batch: Batch) -> Result<Batch, LoaderError> {
        let s = &mut self.stats;
        s.batches += 1;
        s.images += batch.labels.len() as u64;
        s.records_read += batch.records_read as u64;
        s.bad_records += batch.bad_records as u64;
        s.build_time += batch.build_time;
        if batch.last_bad_record.is_some() {
            s.last_bad_record.clone_from(&batch.last_bad_record);
        }
        let (bad, read) = (s.bad_records as usize, s.records_read as usize);
        let settings = &self.shared.settings;
        if batch.bad_records > 0 && settings.too_many_bad(bad, read) {
            return Err(LoaderError::TooManyBad {
                source_name: self.shared.source.name(),
                bad,
                read,
                allowed: settings.max_bad_fraction,
                last: s.last_bad_record.clone().unwrap_or_default(),
            });
        }
        Ok(batch)
    }

    /// Hands a batch's buffers back for reuse.
    pub fn recycle(&self, batch: Batch) {
        let mut queue = self.shared.lock();
        // More than a window's worth would never be used at once.
        if queue.free.len() < self.shared.window as usize {
            queue.free.push(batch);
        }
    }

    pub fn stats(&self) -> LoaderStats {
        LoaderStats {
            elapsed: self.started.elapsed(),
            ..self.stats.clone()
        }
    }
}

impl Drop for Loader {
    fn drop(&mut self) {
        self.shared.lock().closed = true;
        self.shared.changed.notify_all();
        for thread in self.threads.drain(..) {
            // A thread that panicked has already reported it through the queue.
            let _ = thread.join();
        }
    }
}

/// Marks a step as lost if its thread panics, so the trainer gets an error, not a hang.
struct PanicGuard<'a> {
    shared: &'a Shared,
    step: u64,
}

impl Drop for PanicGuard<'_> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.shared.lock().panicked.insert(self.step);
            self.shared.changed.notify_all();
        }
    }
}

/// A loader thread: claims steps inside the window and builds them until the range ends
/// or the loader closes.
fn build_batches(shared: &Shared) {
    let mut augmenter = Augmenter::new(shared.settings.augment.clone());
    loop {
        let (step, buffer) = {
            let mut queue = shared.lock();
            loop {
                if queue.closed || queue.next_claim >= shared.end {
                    return;
                }
                if queue.next_claim < queue.next_deliver + shared.window {
                    break;
                }
                queue = shared.wait(queue);
            }
            let step = queue.next_claim;
            queue.next_claim += 1;
            (step, queue.free.pop())
        };
        let guard = PanicGuard { shared, step };
        let batch = buffer.unwrap_or_else(|| Batch::allocate(shared.sampler.local_batch_size()));
        let result = build_batch(shared, &mut augmenter, step, batch);
        drop(guard);
        shared.lock().ready.insert(step, result);
        shared.changed.notify_all();
    }
}

/// Fills `batch` with step `step`'s samples (`batch_size` from each held data shard, one
/// shard after the other): read, decode, augment. A bad record is replaced by the next
/// sample of its shard (wrapping), unless `strict`.
fn build_batch(
    shared: &Shared,
    augmenter: &mut Augmenter,
    step: u64,
    mut batch: Batch,
) -> Result<Batch, LoaderError> {
    let started = Instant::now();
    let settings = &shared.settings;
    let source = shared.source.as_ref();
    let at = shared.sampler.locate(step);
    let shards = shared.shards(at.epoch);
    let batch_size = shared.sampler.batch_size();
    batch.step = step;
    batch.epoch = at.epoch;
    batch.labels.clear();
    batch.records_read = 0;
    batch.bad_records = 0;
    batch.last_bad_record = None;
    batch
        .images
        .resize(shared.sampler.local_batch_size() * RGB112_BYTES, 0);

    for (slot, out) in batch.images.chunks_exact_mut(RGB112_BYTES).enumerate() {
        let shard = &shards[slot / batch_size];
        let first = at.start + slot % batch_size;
        let mut position = first;
        let index = loop {
            let index = shard[position % shard.len()];
            batch.records_read += 1;
            match load(source, index, out) {
                Ok(()) => break index,
                Err(error) if settings.strict => {
                    return Err(LoaderError::BadRecord {
                        step,
                        source: error,
                    })
                }
                Err(error) => {
                    batch.bad_records += 1;
                    let (bad, read) = (batch.bad_records, batch.records_read);
                    // Also judged here, so a source that is all bad stops within one
                    // batch; and a slot that has tried every sample of the shard stops.
                    let walked_whole_shard = position + 1 - first >= shard.len();
                    if settings.too_many_bad(bad, read) || walked_whole_shard {
                        return Err(LoaderError::TooManyBad {
                            source_name: source.name(),
                            bad,
                            read,
                            allowed: settings.max_bad_fraction,
                            last: error.to_string(),
                        });
                    }
                    batch.last_bad_record = Some(error.to_string());
                    position += 1;
                }
            }
        };
        let key = SampleKey {
            seed: settings.seed,
            epoch: at.epoch,
            index: index as u64,
        };
        augmenter.apply(out, key);
        batch.labels.push(i64::from(source.label(index)));
    }
    batch.build_time = started.elapsed();
    Ok(batch)
}

/// Reads sample `index` into `out` as 112x112 RGB8.
fn load(source: &dyn FaceSource, index: usize, out: &mut [u8]) -> Result<(), SourceError> {
    match source.read(index)? {
        Payload::Encoded(bytes) => {
            decode_rgb112_into(&bytes, out, || source.describe(index))?;
        }
        Payload::Rgb112(rgb) => {
            if rgb.len() != out.len() {
                return Err(SourceError::Corrupt {
                    what: source.describe(index),
                    message: format!(
                        "the source rendered {} bytes, expected {} (112x112 RGB)",
                        rgb.len(),
                        out.len()
                    ),
                });
            }
            out.copy_from_slice(&rgb);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn small() -> DataConfig {
        DataConfig {
            batch_size: 7,
            prefetch: 2,
            workers: 2,
            synthetic: SyntheticConfig {
                seed: 3,
                identities: 5,
                images_per_identity: 6,
                nuisance_prob: 0.5,
            },
            ..DataConfig::default()
        }
    }

    fn start(data: &DataConfig, steps: Range<u64>) -> Loader {
        let source = open_source(data).unwrap();
        let sampler = ShardedSampler::new(source.len(), 1, 0, 1, data.batch_size).unwrap();
        Loader::start(source, sampler, LoaderSettings::new(data, 1), steps).unwrap()
    }

    #[test]
    fn an_epoch_sees_each_sample_at_most_once() {
        let data = small();
        let mut loader = start(&data, 0..8);
        let mut batches = Vec::new();
        while let Some(b) = loader.next_batch().unwrap() {
            batches.push(b);
        }
        assert_eq!(batches.len(), 8);
        assert_eq!(
            batches.iter().map(|b| b.step).collect::<Vec<_>>(),
            (0..8).collect::<Vec<_>>()
        );
        assert_eq!(batches[4].epoch, 1); // 30 images, batch 7: 4 steps per epoch
        let mut labels: Vec<i64> = batches[..4].iter().flat_map(|b| b.labels.clone()).collect();
        labels.sort_unstable();
        // 28 of the 30 samples: every identity appears, none more than its 6 images.
        for id in 0..5 {
            let n = labels.iter().filter(|&&l| l == id).count();
            assert!((4..=6).contains(&n), "identity {id}: {n}");
        }
        let stats = loader.stats();
        assert_eq!((stats.batches, stats.images, stats.bad_records), (8, 56, 0));
    }

    #[test]
    fn recycled_buffers_are_reused() {
        let data = DataConfig {
            workers: 1,
            prefetch: 1,
            ..small()
        };
        let mut loader = start(&data, 0..6);
        let first = loader.next_batch().unwrap().unwrap();
        let address = first.images.as_ptr();
        let expected_second = {
            let mut other = start(&data, 1..2);
            other.next_batch().unwrap().unwrap().images
        };
        loader.recycle(first);
        let second = loader.next_batch().unwrap().unwrap();
        assert_eq!(second.images, expected_second);
        let third = loader.next_batch().unwrap().unwrap();
        // Step 1 or step 2 (depending on when the thread claimed step 1) reused it.
        assert!(second.images.as_ptr() == address || third.images.as_ptr() == address);
    }

    #[test]
    fn a_missing_pack_is_an_error_naming_it() {
        let data = DataConfig {
            source: SourceKind::Recordio,
            path: "/nonexistent/train.rec".into(),
            ..small()
        };
        let err = open_source(&data).err().unwrap().to_string();
        assert!(err.contains("/nonexistent/train.rec"), "{err}");
    }
}
