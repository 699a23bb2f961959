//! The step benchmark (run it through `bench/step.sh`): one training step of our trainer
//! (`Trainer::train_step`: forward, the margin softmax through Partial FC, backward, gradient
//! clipping, SGD with momentum and weight decay, the LGF statistics update) against the same
//! step of the PyTorch twin (`bench/step/torch_step.py`), on the same batch, with the same
//! number of threads, in the same run. Rounds alternate ours and PyTorch's so that load from
//! elsewhere on the machine falls on both.
//!
//!     step_bench [--configs r18:0.25:64:lgf,r50:1:16:global] [--rounds 2] [--steps 8]
//!                [--device cpu|cuda] [--precision fp32|fp16|bf16] [--classes N]
//!                [--compile] [--python .venv/bin/python]
//!
//! Prints the median step time of each side, the ratio (PyTorch's time over ours: above 1,
//! ours is faster), and where our step's time goes.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::str::FromStr;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use clap::Parser;
use lgaf_worker::data_parallel::Group;
use lgaf_worker::loader::Batch;
use lgaf_worker::{TrainConfig, Trainer};
use tch::Device;

#[derive(Parser)]
#[command(about = "Training step time: ours vs the PyTorch twin on the same batch")]
struct Args {
    /// Configurations as arch:width:batch:fusion, comma-separated.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "r18:0.25:64:lgf,r18:0.25:64:global,r50:1:16:lgf,r50:1:16:global"
    )]
    configs: Vec<StepShape>,
    /// Classes of the Partial-FC classifier (sample rate 1).
    #[arg(long, default_value_t = 200)]
    classes: i64,
    /// Rounds; each runs every configuration on both sides, ours first.
    #[arg(long, default_value_t = 2)]
    rounds: usize,
    /// Timed steps per side, configuration and round.
    #[arg(long, default_value_t = 8)]
    steps: usize,
    /// Untimed steps before them.
    #[arg(long, default_value_t = 2)]
    warmup: usize,
    /// Intra-op threads on both sides (default: the available cores).
    #[arg(long)]
    threads: Option<usize>,
    #[arg(long, default_value = "cpu")]
    device: String,
    #[arg(long, default_value = "fp32")]
    precision: String,
    /// NHWC activations and conv weights on both sides (CUDA only on ours).
    #[arg(long)]
    channels_last: bool,
    /// Also time the PyTorch twin under `torch.compile`.
    #[arg(long)]
    compile: bool,
    /// Time only our step (for a profiler); no ratio is printed.
    #[arg(long)]
    ours_only: bool,
    /// Python with torch (the project's venv).
    #[arg(long, default_value = ".venv/bin/python")]
    python: PathBuf,
    /// The PyTorch side (relative to the working directory: the repository's root, also
    /// on a machine this binary was carried to).
    #[arg(long, default_value = "bench/step/torch_step.py")]
    torch_step: PathBuf,
    /// Where the batches both sides read are written.
    #[arg(long, default_value = "bench-out/step")]
    out: PathBuf,
}

/// One benchmarked configuration: `arch:width:batch:fusion`.
#[derive(Clone, Debug)]
struct StepShape {
    arch: String,
    width: f64,
    batch: usize,
    fusion: String,
}

impl FromStr for StepShape {
    type Err = anyhow::Error;

    fn from_str(s: &str) -> Result<Self> {
        let parts: Vec<&str> = s.split(':').collect();
        let [arch, width, batch, fusion] = parts[..] else {
            bail!("configuration `{s}`: expected arch:width:batch:fusion, e.g. r18:0.25:64:lgf");
        };
        Ok(Self {
            arch: arch.into(),
            width: width
                .parse()
                .with_context(|| format!("configuration `{s}`: width `{width}`"))?,
            batch: batch
                .parse()
                .with_context(|| format!("configuration `{s}`: batch `{batch}`"))?,
            fusion: fusion.into(),
        })
    }
}

impl std::fmt::Display for StepShape {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} w{} b{} {}",
            self.arch, self.width, self.batch, self.fusion
        )
    }
}

const SIDE: usize = 112;

/// A deterministic batch (xorshift bytes, labels spread over the classes), also written to
/// `dir` for the PyTorch side.
fn write_batch(shape: &StepShape, classes: i64, dir: &Path) -> Result<(Batch, PathBuf, PathBuf)> {
    let mut state = 0x9e37_79b9_7f4a_7c15u64 ^ shape.batch as u64;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let images: Vec<u8> = (0..shape.batch * SIDE * SIDE * 3)
        .map(|_| (next() >> 56) as u8)
        .collect();
    let labels: Vec<i64> = (0..shape.batch)
        .map(|_| (next() % classes as u64) as i64)
        .collect();
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let stem = format!("b{}-c{classes}", shape.batch);
    let (images_path, labels_path) = (
        dir.join(format!("{stem}.u8")),
        dir.join(format!("{stem}.i64")),
    );
    std::fs::write(&images_path, &images)?;
    let label_bytes: Vec<u8> = labels.iter().flat_map(|l| l.to_le_bytes()).collect();
    std::fs::write(&labels_path, label_bytes)?;
    let batch = Batch {
        step: 0,
        epoch: 0,
        images,
        labels,
        records_read: shape.batch,
        bad_records: 0,
        last_bad_record: None,
        build_time: Duration::ZERO,
    };
    Ok((batch, images_path, labels_path))
}

/// The trainer's config for `shape`: synthetic data with one identity per class, so the
/// classifier has `classes` centres.
fn train_config(shape: &StepShape, args: &Args) -> Result<TrainConfig> {
    let images_per_identity = (64 << 20) / args.classes.max(1) as usize;
    let toml = format!(
        r#"
        [model]
        arch = "{arch}"
        width = {width}
        fusion = "{fusion}"
        [data]
        batch_size = {batch}
        workers = 1
        [data.synthetic]
        identities = {classes}
        images_per_identity = {per}
        [train]
        device = "{device}"
        precision = "{precision}"
        channels_last = {channels_last}
        progress = false
        "#,
        arch = shape.arch,
        width = shape.width,
        fusion = shape.fusion,
        batch = shape.batch,
        classes = args.classes,
        per = images_per_identity.clamp(1, 32),
        device = args.device,
        precision = args.precision,
        channels_last = args.channels_last,
    );
    Ok(TrainConfig::from_toml_str(&toml)?)
}

/// Our side: per timed step, its wall time and the trainer's phase times.
#[derive(Default)]
struct OursTimes {
    step: Vec<f64>,
    forward: Vec<f64>,
    backward: Vec<f64>,
    optimizer: Vec<f64>,
}

fn ours(shape: &StepShape, batch: &Batch, args: &Args) -> Result<OursTimes> {
    let mut trainer = Trainer::with_group(train_config(shape, args)?, Group::Single)?;
    let device = trainer.device();
    let sync = || {
        if let Device::Cuda(index) = device {
            tch::Cuda::synchronize(index as i64);
        }
    };
    let mut times = OursTimes::default();
    for i in 0..args.warmup + args.steps {
        sync();
        let started = Instant::now();
        let report = trainer.train_step(batch, Duration::ZERO)?;
        sync();
        let elapsed = started.elapsed();
        if i >= args.warmup {
            let ms = |d: Duration| d.as_secs_f64() * 1e3;
            times.step.push(ms(elapsed));
            times.forward.push(ms(report.phases.forward));
            times.backward.push(ms(report.phases.backward));
            times.optimizer.push(ms(report.phases.optimizer));
        }
    }
    Ok(times)
}

/// The PyTorch references: as a user runs it, with our allocator settings
/// (`host_memory`, through glibc's environment variables), and under `torch.compile`.
#[derive(Clone, Copy, PartialEq)]
enum Reference {
    Eager,
    EagerTunedMalloc,
    Compiled,
}

impl Reference {
    fn header(self) -> &'static str {
        match self {
            Reference::Eager => "torch",
            Reference::EagerTunedMalloc => "torch+malloc",
            Reference::Compiled => "torch.compile",
        }
    }
}

fn python(
    shape: &StepShape,
    (images, labels): (&Path, &Path),
    threads: usize,
    reference: Reference,
    args: &Args,
) -> Result<Vec<f64>> {
    let mut cmd = Command::new(&args.python);
    cmd.arg(&args.torch_step)
        .args(["--arch", &shape.arch])
        .args(["--width", &shape.width.to_string()])
        .args(["--fusion", &shape.fusion])
        .args(["--batch", &shape.batch.to_string()])
        .args(["--classes", &args.classes.to_string()])
        .arg("--images")
        .arg(images)
        .arg("--labels")
        .arg(labels)
        .args(["--warmup", &args.warmup.to_string()])
        .args(["--steps", &args.steps.to_string()])
        .args(["--threads", &threads.to_string()])
        .args(["--device", &args.device])
        .args(["--precision", &args.precision]);
    if args.channels_last {
        cmd.arg("--channels-last");
    }
    match reference {
        Reference::Eager => {}
        // The same glibc settings as `host_memory::keep_freed_tensor_memory`.
        Reference::EagerTunedMalloc => {
            cmd.env("MALLOC_MMAP_MAX_", "0")
                .env("MALLOC_TRIM_THRESHOLD_", i32::MAX.to_string())
                .env("MALLOC_TOP_PAD_", (64 << 20).to_string());
        }
        Reference::Compiled => {
            cmd.arg("--compile");
        }
    }
    let out = cmd
        .output()
        .with_context(|| format!("running {}", args.python.display()))?;
    if !out.status.success() {
        bail!(
            "the PyTorch step failed ({}):\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).with_context(|| {
        format!(
            "parsing the PyTorch step's output: {}",
            String::from_utf8_lossy(&out.stdout)
        )
    })?;
    json["step_ms"]
        .as_array()
        .context("the PyTorch step printed no step_ms")?
        .iter()
        .map(|v| v.as_f64().context("step_ms holds a non-number"))
        .collect()
}

fn median(values: &[f64]) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    match sorted.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => sorted[n / 2],
        n => (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0,
    }
}

/// Everything measured for one configuration, over all rounds.
struct Measured {
    ours: OursTimes,
    /// Step times of each reference, in the order of `references`.
    torch: Vec<Vec<f64>>,
}

/// One configuration's medians, the ratios to PyTorch's (NaN where a reference failed), and
/// our phases.
fn print_row(shape: &StepShape, m: &Measured) {
    let ours = median(&m.ours.step);
    let mut row = format!("{:<22} | {ours:>9.1}", shape.to_string());
    let medians: Vec<f64> = m.torch.iter().map(|t| median(t)).collect();
    for t in &medians {
        row += &format!(" | {t:>13.1}");
    }
    if let Some(&eager) = medians.first() {
        let best = medians
            .iter()
            .copied()
            .filter(|t| t.is_finite())
            .fold(f64::NAN, f64::min);
        row += &format!(" | {:>7.2}x | {:>6.2}x", eager / ours, best / ours);
    }
    println!(
        "{row} | {:>13.1} {:>9.1} {:>10.1}",
        median(&m.ours.forward),
        median(&m.ours.backward),
        median(&m.ours.optimizer),
    );
}

fn main() -> Result<()> {
    lgaf_worker::host_memory::keep_freed_tensor_memory();
    let args = Args::parse();
    ensure!(args.classes >= 2, "--classes: at least 2");
    ensure!(args.steps > 0, "--steps: at least 1");
    let threads = args
        .threads
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    tch::set_num_threads(threads as i32);
    let mut references = Vec::new();
    if !args.ours_only {
        references.push(Reference::Eager);
        if args.device == "cpu" {
            references.push(Reference::EagerTunedMalloc);
        }
        if args.compile {
            references.push(Reference::Compiled);
        }
    }
    let mut measured: Vec<Measured> = args
        .configs
        .iter()
        .map(|_| Measured {
            ours: OursTimes::default(),
            torch: vec![Vec::new(); references.len()],
        })
        .collect();
    // The header first and each row as soon as its last round is in, so that a run cut
    // short (a time limit on a lent machine) keeps what it measured.
    println!(
        "device {}, {}, {threads} threads, {} classes, {} rounds x {} timed steps a side \
         (median ms per step)\n",
        args.device, args.precision, args.classes, args.rounds, args.steps
    );
    let mut header = format!("{:<22} | {:>9}", "configuration", "ours");
    for reference in &references {
        header += &format!(" | {:>13}", reference.header());
    }
    if !references.is_empty() {
        header += " | vs torch | vs best";
    }
    println!("{header} | ours: forward  backward  optimizer");
    for round in 1..=args.rounds {
        for (shape, m) in args.configs.iter().zip(&mut measured) {
            eprintln!("round {round}/{}: {shape}", args.rounds);
            let (batch, images, labels) = write_batch(shape, args.classes, &args.out)?;
            let o = ours(shape, &batch, &args)?;
            m.ours.step.extend(o.step);
            m.ours.forward.extend(o.forward);
            m.ours.backward.extend(o.backward);
            m.ours.optimizer.extend(o.optimizer);
            for (&reference, times) in references.iter().zip(&mut m.torch) {
                // A reference that fails (torch.compile without a compiler, say) is a
                // missing column, not a lost table.
                match python(shape, (&images, &labels), threads, reference, &args) {
                    Ok(t) => times.extend(t),
                    Err(e) => eprintln!("{shape}: {} failed: {e:#}", reference.header()),
                }
            }
            if round == args.rounds {
                print_row(shape, m);
            }
        }
    }
    if !references.is_empty() {
        println!(
            "\nratios: PyTorch's median over ours (above 1.00x, ours is faster); `vs best` \
             takes the fastest PyTorch column"
        );
    }
    Ok(())
}
