//! The loader benchmark (run it through `bench/loader.sh`): decode + augment + batch
//! throughput of our loader on a RecordIO pack of 112x112 JPEGs, against the Python
//! reference (`bench/loader/py_loader.py`: PIL + numpy on a torch `DataLoader`) reading the
//! same pack in the same run, with the same number of worker threads / processes.
//!
//!     loader_bench --pack bench-out/faces.rec [--images 20000] [--workers 1,2] [--batches 60]
//!                  [--python .venv/bin/python]
//!
//! The pack is written first if it does not exist (synthetic faces, JPEG quality 90, 40
//! images per identity). Prints a table and the per-core ratio.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use clap::Parser;
use lgaf_data::augment::AugmentConfig;
use lgaf_data::recordio::{PackWriter, RecordPack};
use lgaf_data::sampler::ShardedSampler;
use lgaf_data::synth::{SynthConfig, SynthDataset};
use lgaf_worker::loader::{Loader, LoaderSettings};
use rayon::prelude::*;

#[derive(Parser)]
#[command(about = "Loader throughput: ours vs the Python reference on the same pack")]
struct Args {
    /// The pack to read (written first when missing).
    #[arg(long, default_value = "bench-out/faces.rec")]
    pack: PathBuf,
    /// Images in a newly written pack.
    #[arg(long, default_value_t = 20_000)]
    images: usize,
    /// Worker counts to measure, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "1,2")]
    workers: Vec<usize>,
    /// Timed batches of 128 per measurement (after warm-up).
    #[arg(long, default_value_t = 60)]
    batches: u64,
    /// Python with torch, numpy and pillow.
    #[arg(long, default_value = ".venv/bin/python")]
    python: PathBuf,
}

const BATCH: usize = 128;
const WARMUP_BATCHES: u64 = 3;
const PER_IDENTITY: usize = 40;

fn write_pack(path: &Path, images: usize) -> Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let identities = images.div_ceil(PER_IDENTITY);
    let ds = SynthDataset::new(SynthConfig {
        seed: 0,
        identities,
        images_per_identity: PER_IDENTITY,
        nuisance_prob: 0.5,
    });
    let jpegs: Vec<Vec<u8>> = (0..images)
        .into_par_iter()
        .map(|i| {
            let mut out = Vec::new();
            image::codecs::jpeg::JpegEncoder::new_with_quality(&mut out, 90)
                .encode(&ds.get(i).rgb, 112, 112, image::ExtendedColorType::Rgb8)
                .map(|()| out)
        })
        .collect::<Result<_, _>>()?;
    let mut writer = PackWriter::create(path)?;
    for (i, jpeg) in jpegs.iter().enumerate() {
        writer.add((i / PER_IDENTITY) as u32, jpeg)?;
    }
    writer.finish()?;
    Ok(())
}

/// Throughput of one loader run: images per second of wall time and per CPU-second used
/// (all threads or processes together: the honest "per core" when other work shares the
/// machine).
struct Throughput {
    per_s: f64,
    per_cpu_s: f64,
}

/// User + system CPU seconds of this process so far (all threads), from /proc.
fn cpu_seconds() -> Result<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat")?;
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .context("/proc/self/stat: no ')'")?
        .1
        .split_whitespace()
        .collect();
    let ticks: u64 = fields[11].parse::<u64>()? + fields[12].parse::<u64>()?;
    // Linux reports these in USER_HZ, which is 100 on every architecture it supports.
    Ok(ticks as f64 / 100.0)
}

/// Our loader with `workers` threads, the consumer taking batches at once.
fn ours(pack: &Arc<RecordPack>, workers: usize, batches: u64) -> Result<Throughput> {
    let sampler = ShardedSampler::new(pack.image_count(), 0, 0, 1, BATCH)?;
    let settings = LoaderSettings {
        workers,
        prefetch: 2 * workers,
        strict: true,
        max_bad_fraction: 0.5,
        bad_fraction_min_reads: 1000,
        augment: AugmentConfig::default(),
        seed: 0,
    };
    let source: Arc<dyn lgaf_data::source::FaceSource> = pack.clone();
    let mut loader = Loader::start(source, sampler, settings, 0..WARMUP_BATCHES + batches)?;
    for _ in 0..WARMUP_BATCHES {
        let b = loader.next_batch()?.context("loader ended early")?;
        loader.recycle(b);
    }
    let (started, cpu_start) = (Instant::now(), cpu_seconds()?);
    let mut images = 0;
    while let Some(b) = loader.next_batch()? {
        images += b.labels.len();
        loader.recycle(b);
    }
    let (wall, cpu) = (started.elapsed().as_secs_f64(), cpu_seconds()? - cpu_start);
    Ok(Throughput {
        per_s: images as f64 / wall,
        per_cpu_s: images as f64 / cpu,
    })
}

/// The Python reference with `workers` DataLoader processes, collating `output` batches
/// (`uint8` like ours, or `float`: arcface_torch's normalised tensors).
fn python(args: &Args, workers: usize, output: &str) -> Result<Throughput> {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../bench/loader/py_loader.py");
    let out = Command::new(&args.python)
        .arg(&script)
        .args(["--rec", &args.pack.display().to_string()])
        .args(["--workers", &workers.to_string()])
        .args(["--batch", &BATCH.to_string()])
        .args(["--batches", &args.batches.to_string()])
        .args(["--output", output])
        .arg("--json")
        .output()
        .with_context(|| format!("running {}", args.python.display()))?;
    if !out.status.success() {
        bail!(
            "the Python loader failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let json: serde_json::Value = serde_json::from_slice(&out.stdout)
        .with_context(|| format!("parsing {}", String::from_utf8_lossy(&out.stdout)))?;
    let field = |name: &str| {
        json[name]
            .as_f64()
            .with_context(|| format!("the Python loader printed no {name}"))
    };
    Ok(Throughput {
        per_s: field("images_per_s")?,
        per_cpu_s: field("images_per_cpu_s")?,
    })
}

fn main() -> Result<()> {
    let args = Args::parse();
    if !args.pack.exists() {
        eprintln!(
            "writing {} ({} synthetic JPEG faces)",
            args.pack.display(),
            args.images
        );
        write_pack(&args.pack, args.images)?;
    }
    let pack = Arc::new(RecordPack::open(&args.pack)?);
    let bytes = std::fs::metadata(&args.pack)?.len();
    println!(
        "pack {}: {} images, {:.1} kB per image; batch {BATCH}, default augmentation (spec section 4)\n",
        args.pack.display(),
        pack.image_count(),
        bytes as f64 / pack.image_count() as f64 / 1e3
    );
    println!(
        "{:>7} | {:>15} | {:>15} | {:>15} | {:>13} | {:>13}",
        "", "ours (uint8)", "py uint8", "py float", "vs py uint8", "vs py float"
    );
    println!(
        "{:>7} | {:>7} {:>7} | {:>7} {:>7} | {:>7} {:>7} | {:>6} {:>6} | {:>6} {:>6}",
        "workers",
        "img/s",
        "/CPU-s",
        "img/s",
        "/CPU-s",
        "img/s",
        "/CPU-s",
        "wall",
        "core",
        "wall",
        "core"
    );
    for &w in &args.workers {
        let rust = ours(&pack, w, args.batches)?;
        let py = python(&args, w, "uint8")?;
        let py_float = python(&args, w, "float")?;
        println!(
            "{w:>7} | {:>7.0} {:>7.0} | {:>7.0} {:>7.0} | {:>7.0} {:>7.0} | {:>5.1}x {:>5.1}x | {:>5.1}x {:>5.1}x",
            rust.per_s,
            rust.per_cpu_s,
            py.per_s,
            py.per_cpu_s,
            py_float.per_s,
            py_float.per_cpu_s,
            rust.per_s / py.per_s,
            rust.per_cpu_s / py.per_cpu_s,
            rust.per_s / py_float.per_s,
            rust.per_cpu_s / py_float.per_cpu_s,
        );
    }
    println!(
        "\nimg/s: wall-clock; /CPU-s: images per CPU-second used (all threads; for Python the\n\
         DataLoader workers and the collating main process). py uint8: the lean reference, its\n\
         batches like ours; py float: arcface_torch's and AdaFace's ToTensor + Normalize in the\n\
         workers. wall / core: ours over Python, wall-clock and per CPU-second."
    );
    Ok(())
}
