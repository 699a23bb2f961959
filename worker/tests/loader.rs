//! The loader over real sources: batches independent of the thread count, resume
//! equality, bad records (skipped, strict, mostly bad), and shutdown mid-stream.

use std::borrow::Cow;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use lgaf_data::augment::{AugmentConfig, Augmenter, SampleKey};
use lgaf_data::decode::{decode_rgb112_into, RGB112_BYTES};
use lgaf_data::image_folder::save_png;
use lgaf_data::sampler::ShardedSampler;
use lgaf_data::source::{FaceSource, FolderSource, Payload, SourceError, SynthSource};
use lgaf_data::synth::{SynthConfig, SynthDataset};
use lgaf_worker::loader::{Batch, Loader, LoaderError, LoaderSettings};

const SEED: u64 = 21;

fn settings(workers: usize, prefetch: usize) -> LoaderSettings {
    LoaderSettings {
        workers,
        prefetch,
        strict: false,
        max_bad_fraction: 0.5,
        bad_fraction_min_reads: 1000,
        augment: AugmentConfig {
            // Every step often, so that any thread-dependence would show.
            crop_prob: 0.5,
            low_res_prob: 0.5,
            photometric_prob: 0.5,
            ..AugmentConfig::default()
        },
        seed: SEED,
    }
}

fn synth(identities: usize, per_identity: usize) -> Arc<dyn FaceSource> {
    Arc::new(SynthSource::new(SynthConfig {
        seed: 5,
        identities,
        images_per_identity: per_identity,
        nuisance_prob: 0.5,
    }))
}

fn run(
    source: &Arc<dyn FaceSource>,
    batch: usize,
    settings: LoaderSettings,
    steps: Range<u64>,
) -> Result<Vec<Batch>, LoaderError> {
    let sampler = ShardedSampler::new(source.len(), SEED, 0, 1, batch).unwrap();
    let mut loader = Loader::start(Arc::clone(source), sampler, settings, steps)?;
    let mut out = Vec::new();
    while let Some(b) = loader.next_batch()? {
        out.push(b);
    }
    Ok(out)
}

fn contents(batches: &[Batch]) -> Vec<(u64, u64, Vec<i64>, Vec<u8>)> {
    batches
        .iter()
        .map(|b| (b.step, b.epoch, b.labels.clone(), b.images.clone()))
        .collect()
}

/// A fresh directory under the system temp dir, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(label: &str) -> Self {
        static COUNTER: AtomicUsize = AtomicUsize::new(0);
        let unique = COUNTER.fetch_add(1, Ordering::Relaxed);
        let path = std::env::temp_dir().join(format!(
            "lgaf-loader-{label}-{}-{unique}",
            std::process::id()
        ));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).unwrap();
        Self(path)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// `root/id_<k>/<j>.png` from the synthetic faces.
fn write_folder(root: &Path, identities: usize, per_identity: usize) {
    let dataset = SynthDataset::new(SynthConfig {
        seed: 9,
        identities,
        images_per_identity: per_identity,
        nuisance_prob: 0.0,
    });
    for i in 0..dataset.len() {
        let dir = root.join(format!("id_{:03}", i / per_identity));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join(format!("{:02}.png", i % per_identity));
        save_png(&file, &dataset.get(i).rgb, 112, 112).unwrap();
    }
}

#[test]
fn batches_do_not_depend_on_the_thread_count() {
    let source = synth(6, 7); // 42 samples, batch 5: 8 steps per epoch, 2 dropped
    let reference = contents(&run(&source, 5, settings(1, 1), 0..20).unwrap());
    assert_eq!(reference.len(), 20);
    assert_eq!(
        reference.iter().map(|b| b.0).collect::<Vec<_>>(),
        (0..20).collect::<Vec<_>>()
    );
    assert_eq!((reference[7].1, reference[8].1, reference[16].1), (0, 1, 2));
    for (workers, prefetch) in [(2, 2), (3, 1), (4, 6)] {
        let other = contents(&run(&source, 5, settings(workers, prefetch), 0..20).unwrap());
        assert!(
            other == reference,
            "{workers} workers, prefetch {prefetch} differ"
        );
    }
}

#[test]
fn a_resumed_stream_repeats_the_uninterrupted_one() {
    let source = synth(6, 7);
    let whole = contents(&run(&source, 5, settings(2, 3), 0..20).unwrap());
    let resumed = contents(&run(&source, 5, settings(3, 2), 11..20).unwrap());
    assert!(resumed[..] == whole[11..]);
}

#[test]
fn folder_batches_are_decoded_and_augmented_samples() {
    let dir = TempDir::new("folder");
    write_folder(&dir.0, 4, 5);
    let source: Arc<dyn FaceSource> = Arc::new(FolderSource::open(&dir.0).unwrap());
    let batches = run(&source, 4, settings(2, 2), 0..5).unwrap();
    let sampler = ShardedSampler::new(20, SEED, 0, 1, 4).unwrap();
    let mut augmenter = Augmenter::new(settings(1, 1).augment);
    for batch in &batches {
        let indices = sampler.batch_indices(batch.step);
        for (slot, &index) in indices.iter().enumerate() {
            let Payload::Encoded(bytes) = source.read(index).unwrap() else {
                panic!("a folder gives encoded bytes");
            };
            let mut expected = vec![0u8; RGB112_BYTES];
            decode_rgb112_into(&bytes, &mut expected, String::new).unwrap();
            let key = SampleKey {
                seed: SEED,
                epoch: batch.epoch,
                index: index as u64,
            };
            augmenter.apply(&mut expected, key);
            let got = &batch.images[slot * RGB112_BYTES..(slot + 1) * RGB112_BYTES];
            assert!(
                got == expected.as_slice(),
                "step {} slot {slot}",
                batch.step
            );
            assert_eq!(batch.labels[slot], (index / 5) as i64);
        }
    }
}

/// PNG-encoded synthetic faces held in memory (borrowed on read), some of them broken.
struct Flaky {
    images: Vec<Vec<u8>>,
    per_identity: usize,
}

impl Flaky {
    fn new(len: usize, bad: fn(usize) -> bool) -> Self {
        let dir = TempDir::new("flaky");
        let dataset = SynthDataset::new(SynthConfig {
            seed: 2,
            identities: len / 4,
            images_per_identity: 4,
            nuisance_prob: 0.0,
        });
        let images = (0..len)
            .map(|i| {
                if bad(i) {
                    return b"\xFF\xD8\xFF\xE0 not really a jpeg".to_vec();
                }
                let file = dir.0.join("face.png");
                save_png(&file, &dataset.get(i).rgb, 112, 112).unwrap();
                std::fs::read(&file).unwrap()
            })
            .collect();
        Self {
            images,
            per_identity: 4,
        }
    }
}

impl FaceSource for Flaky {
    fn len(&self) -> usize {
        self.images.len()
    }

    fn num_classes(&self) -> usize {
        self.images.len() / self.per_identity
    }

    fn label(&self, index: usize) -> u32 {
        (index / self.per_identity) as u32
    }

    fn read(&self, index: usize) -> Result<Payload<'_>, SourceError> {
        Ok(Payload::Encoded(Cow::Borrowed(&self.images[index])))
    }

    fn describe(&self, index: usize) -> String {
        format!("flaky.rec record {index}")
    }

    fn name(&self) -> String {
        "flaky.rec".into()
    }
}

#[test]
fn bad_records_are_replaced_by_the_next_of_the_shard_and_counted() {
    let bad = |i: usize| i % 5 == 2;
    let source: Arc<dyn FaceSource> = Arc::new(Flaky::new(40, bad));
    let batches = run(&source, 8, settings(2, 2), 0..10).unwrap();
    let again = run(&source, 8, settings(1, 1), 0..10).unwrap();
    assert!(
        contents(&batches) == contents(&again),
        "replacement depends on threads"
    );

    let sampler = ShardedSampler::new(40, SEED, 0, 1, 8).unwrap();
    let mut total_bad = 0;
    for batch in &batches {
        let at = sampler.locate(batch.step);
        let shard = sampler.epoch_shard(at.epoch);
        // Walk the shard as the loader must: skip bad samples, take the next good one.
        let mut expected_labels = Vec::new();
        let mut expected_bad = 0;
        for slot in 0..8 {
            let mut position = at.start + slot;
            while bad(shard[position % shard.len()]) {
                expected_bad += 1;
                position += 1;
            }
            expected_labels.push((shard[position % shard.len()] / 4) as i64);
        }
        assert_eq!(batch.labels, expected_labels, "step {}", batch.step);
        assert_eq!(batch.images.len(), 8 * RGB112_BYTES);
        assert_eq!(batch.bad_records, expected_bad);
        assert_eq!(batch.records_read, 8 + expected_bad);
        if expected_bad > 0 {
            let last = batch.last_bad_record.as_deref().unwrap();
            assert!(last.contains("flaky.rec record"), "{last}");
        }
        total_bad += expected_bad;
    }
    assert!(
        total_bad > 5,
        "the test should meet bad records: {total_bad}"
    );
}

#[test]
fn strict_mode_fails_at_the_first_bad_record_naming_it() {
    let source: Arc<dyn FaceSource> = Arc::new(Flaky::new(40, |i| i == 13));
    let strict = LoaderSettings {
        strict: true,
        ..settings(2, 2)
    };
    let err = run(&source, 8, strict, 0..10).unwrap_err();
    let text = err.to_string();
    assert!(matches!(err, LoaderError::BadRecord { .. }), "{err:?}");
    assert!(
        text.contains("flaky.rec record 13") && text.contains("corrupt JPEG"),
        "{text}"
    );
    // The failing step is the first that contains sample 13.
    let sampler = ShardedSampler::new(40, SEED, 0, 1, 8).unwrap();
    let first = (0..10)
        .find(|&s| sampler.batch_indices(s).contains(&13))
        .unwrap();
    assert!(text.starts_with(&format!("step {first}:")), "{text}");
}

#[test]
fn a_mostly_bad_source_stops_the_run_with_the_count() {
    let source: Arc<dyn FaceSource> = Arc::new(Flaky::new(40, |i| i % 4 != 0));
    let limited = LoaderSettings {
        bad_fraction_min_reads: 30,
        ..settings(2, 2)
    };
    let err = run(&source, 8, limited, 0..10).unwrap_err();
    let text = err.to_string();
    let LoaderError::TooManyBad { bad, read, .. } = err else {
        panic!("expected TooManyBad, got {text}");
    };
    assert!(read >= 30 && bad * 2 > read, "{text}");
    assert!(
        text.starts_with(&format!(
            "flaky.rec: {bad} of the {read} records read are bad"
        )),
        "{text}"
    );
    assert!(text.contains("max_bad_fraction = 0.5"), "{text}");

    // Every record bad: one batch finds out, without walking the whole shard forever.
    let hopeless: Arc<dyn FaceSource> = Arc::new(Flaky::new(40, |_| true));
    let err = run(&hopeless, 8, settings(1, 1), 0..10).unwrap_err();
    assert!(matches!(err, LoaderError::TooManyBad { .. }), "{err}");
}

#[test]
fn a_batch_as_large_as_the_shard_tolerates_a_bad_record() {
    // 12 samples, batch 12: the slot after the bad record reads a 13th record, which is
    // not a sign of a mostly-bad source.
    let source: Arc<dyn FaceSource> = Arc::new(Flaky::new(12, |i| i == 3));
    let batches = run(&source, 12, settings(2, 2), 0..3).unwrap();
    assert_eq!(batches.len(), 3);
    assert!(
        batches.iter().all(|b| b.bad_records == 1),
        "one bad record per batch"
    );
}

/// Synthetic faces whose `read` panics for some indices (a bug in a source, not bad data).
struct Panicky {
    inner: SynthSource,
    panics_at: [usize; 2],
}

impl FaceSource for Panicky {
    fn len(&self) -> usize {
        self.inner.len()
    }
    fn num_classes(&self) -> usize {
        self.inner.num_classes()
    }
    fn label(&self, index: usize) -> u32 {
        self.inner.label(index)
    }
    fn read(&self, index: usize) -> Result<Payload<'_>, SourceError> {
        assert!(!self.panics_at.contains(&index), "source bug at {index}");
        self.inner.read(index)
    }
    fn describe(&self, index: usize) -> String {
        self.inner.describe(index)
    }
    fn name(&self) -> String {
        "panicky".into()
    }
}

#[test]
fn threads_that_panic_end_the_stream_with_an_error_not_a_hang() {
    let (done, finished) = mpsc::channel();
    std::thread::spawn(move || {
        let inner = SynthSource::new(SynthConfig {
            seed: 5,
            identities: 10,
            images_per_identity: 4,
            nuisance_prob: 0.0,
        });
        let sampler = ShardedSampler::new(40, SEED, 0, 1, 4).unwrap();
        // Two samples in two different batches, so that two threads panic.
        let (a, b) = (sampler.batch_indices(2)[0], sampler.batch_indices(3)[0]);
        let source: Arc<dyn FaceSource> = Arc::new(Panicky {
            inner,
            panics_at: [a, b],
        });
        let mut loader = Loader::start(source, sampler, settings(2, 4), 0..10).unwrap();
        let mut delivered = 0;
        let outcome = loop {
            match loader.next_batch() {
                Ok(Some(_)) => delivered += 1,
                other => break other.map(|_| ()),
            }
        };
        done.send((delivered, outcome.err().map(|e| e.to_string())))
            .unwrap();
    });
    let (delivered, error) = finished
        .recv_timeout(Duration::from_secs(20))
        .expect("the loader hung after its threads panicked");
    assert_eq!(delivered, 2, "steps 0 and 1 are good");
    let error = error.expect("a panicked thread must surface as an error");
    assert!(error.contains("panicked while building step 2"), "{error}");
}

#[test]
fn dropping_the_loader_mid_stream_does_not_hang() {
    let (done, finished) = mpsc::channel();
    std::thread::spawn(move || {
        let source = synth(10, 10);
        let sampler = ShardedSampler::new(100, SEED, 0, 1, 4).unwrap();
        let mut loader = Loader::start(source, sampler, settings(3, 2), 0..10_000).unwrap();
        let _ = loader.next_batch().unwrap();
        // Let the threads fill the window and block on it.
        std::thread::sleep(Duration::from_millis(100));
        let started = Instant::now();
        drop(loader);
        done.send(started.elapsed()).unwrap();
    });
    let took = finished
        .recv_timeout(Duration::from_secs(20))
        .expect("dropping the loader hung");
    assert!(took < Duration::from_secs(5), "{took:?}");
}

/// Throughput on a folder of 112x112 JPEGs. Make one with
/// `LGAF_JPEG_FOLDER=/tmp/faces cargo test --release -p lgaf-data --test throughput -- --ignored write_a_jpeg_face_folder`,
/// then run this with the same variable and `-- --ignored --nocapture`.
#[test]
#[ignore = "a measurement, not a check"]
fn throughput_on_a_jpeg_folder() {
    let root = std::env::var_os("LGAF_JPEG_FOLDER").expect("set LGAF_JPEG_FOLDER");
    let source: Arc<dyn FaceSource> = Arc::new(FolderSource::open(Path::new(&root)).unwrap());
    let steps = (source.len() / 64) as u64;
    for workers in [1, 2] {
        let settings = LoaderSettings {
            augment: AugmentConfig::default(),
            ..settings(workers, 4)
        };
        let sampler = ShardedSampler::new(source.len(), SEED, 0, 1, 64).unwrap();
        let mut loader = Loader::start(Arc::clone(&source), sampler, settings, 0..steps).unwrap();
        while let Some(batch) = loader.next_batch().unwrap() {
            loader.recycle(batch);
        }
        let stats = loader.stats();
        println!(
            "{workers} worker(s): {} images, {:.0} images/s, {:.0} images/s per thread-second",
            stats.images,
            stats.images_per_s(),
            stats.images_per_thread_s()
        );
    }
}
