//! The full-size checkpoint benchmark (run it through `bench/checkpoint_full.sh`): one
//! rank's checkpoint of LGAF-r100 with a 205,990-class Partial-FC head and its momentum
//! (about 1.5 GB), saved and resumed through the code a coordinated worker runs:
//!
//! - save: `Trainer::checkpoint_objects` (the copy to host memory), then the hand-over to
//!   the `BackgroundUploader` as `coordinated::checkpoint::save` does it (with the 1 GiB
//!   pending limit of `coordinated::epochs`): the training stall;
//! - upload: the uploader's puts until the last object is in the store (throughput);
//! - commit: `RunStore::commit` (the coordinator's `CheckpointCommitter`: every object's
//!   size checked, then the manifest written), from the last byte uploaded;
//! - resume: `Trainer::objects_to_resume`, `BlockingRunStore::load_with` (download and
//!   verify) and `Trainer::restore_from_objects` (load), as `coordinated::checkpoint::resume`.
//!
//! ```text
//! checkpoint_bench --store file:///tmp/x [--run-id bench] [--arch r100] [--classes 205990]
//!                  [--raw-reference DIR] [--json results.jsonl]
//!                  [--hand-over all|each]
//! ```
//!
//! `--hand-over each` reproduces the hand-over before its fix (`bench/README.md`).
//! With `--raw-reference DIR` (a local directory) the same bytes are also written with
//! `std::fs::write` and read back with `std::fs::read`, the reference a file:// store is
//! compared with. Prints one row and appends it as a JSON line to `--json`.

use std::collections::{BTreeSet, HashMap};
use std::io::Write;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use bytes::Bytes;
use clap::Parser;
use lgaf_store::{BlockingRunStore, Manifest, ManifestObject, RunStore, Store, UploadTicket};
use lgaf_worker::data_parallel::Group;
use lgaf_worker::{TrainConfig, Trainer};

#[derive(Parser)]
#[command(about = "Full-size checkpoint: stall, upload, commit and resume of one rank")]
struct Args {
    /// The store: file:///abs/dir or s3://bucket/prefix (AWS_* from the environment).
    #[arg(long)]
    store: String,
    #[arg(long, default_value = "bench")]
    run_id: String,
    /// IResNet depth of the LGAF backbone.
    #[arg(long, default_value = "r100")]
    arch: String,
    /// Partial-FC classes (one rank holds them all).
    #[arg(long, default_value_t = 205_990)]
    classes: usize,
    #[arg(long, default_value_t = 512)]
    embedding: usize,
    /// The uploader's pending-bytes limit (the worker's: 1 GiB).
    #[arg(long, default_value_t = 1 << 30)]
    max_pending: usize,
    /// How the parts are handed to the uploader: `all` at once (`submit_all`, what the
    /// worker does) or `each` in turn (`submit`, what it did before).
    #[arg(long, default_value = "all", value_parser = ["all", "each"])]
    hand_over: String,
    /// Also write and read the same bytes with plain std::fs in this directory.
    #[arg(long)]
    raw_reference: Option<PathBuf>,
    /// Append the row as one JSON line here.
    #[arg(long)]
    json: Option<PathBuf>,
}

/// `VmHWM` / `VmRSS` of this process, in bytes.
fn proc_status(field: &str) -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(field))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<u64>().ok())
        })
        .map_or(0, |kb| kb * 1024)
}

fn config(args: &Args) -> Result<TrainConfig> {
    // One image per identity keeps the synthetic source's size legal at 206 K classes; the
    // checkpoint does not depend on the data.
    let toml = format!(
        r#"
[model]
arch = "{arch}"
embedding_size = {emb}
[data]
batch_size = 2
prefetch = 1
workers = 1
[data.synthetic]
identities = {classes}
images_per_identity = 1
[train]
device = "cpu"
max_steps = 1
[checkpoint]
dir = "{store}"
run_id = "{run}"
"#,
        arch = args.arch,
        emb = args.embedding,
        classes = args.classes,
        store = args.store,
        run = args.run_id,
    );
    TrainConfig::from_toml_str(&toml).context("the benchmark's config")
}

fn secs(d: Duration) -> f64 {
    d.as_secs_f64()
}

fn main() -> Result<()> {
    let args = Args::parse();
    // Other work on the machine moves every figure: the row says how busy it was.
    let loadavg = || std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let load_before = loadavg();
    let cfg = config(&args)?;
    let started = Instant::now();
    let mut trainer = Trainer::with_group(cfg, Group::Single).context("building the trainer")?;
    let build_s = secs(started.elapsed());
    // A committed checkpoint is of a step after 0.
    trainer.set_step(1);
    let store = Store::from_url(&args.store)?;
    let store = BlockingRunStore::new(RunStore::new(store, &args.run_id)?)?;
    let uploader = store.uploader(args.max_pending)?;
    let rss_before = proc_status("VmRSS:");

    // The stall: what `coordinated::checkpoint::save` does before training goes on.
    let t0 = Instant::now();
    let (objects, state) = trainer.checkpoint_objects()?;
    let serialise = t0.elapsed();
    let objects: Vec<(String, Bytes)> = objects
        .into_iter()
        .map(|(k, v)| (k, Bytes::from(v)))
        .collect();
    let total: u64 = objects.iter().map(|(_, b)| b.len() as u64).sum();
    let kept: Vec<(String, Bytes)> = objects.clone();
    let submit_start = Instant::now();
    // As `coordinated::checkpoint::save` hands them over.
    let tickets: Vec<UploadTicket> = if args.hand_over == "all" {
        uploader.submit_all(1, objects)
    } else {
        objects
            .into_iter()
            .map(|(key, bytes)| uploader.submit(1, &key, bytes))
            .collect()
    };
    let stall = t0.elapsed();
    let handover = submit_start.elapsed();

    // The upload: until the last object is in the store.
    let mut listed = Vec::new();
    for ticket in tickets {
        listed.push(ManifestObject::from_info(&ticket.wait()?, 0));
    }
    let uploaded = submit_start.elapsed();
    let last_byte = Instant::now();
    let state = state.context("a single rank is rank 0")?;
    let manifest = Manifest::new(&args.run_id, 1, 0, 1, listed, state);
    store.commit(&manifest)?;
    let commit = last_byte.elapsed();
    let rss_peak_save = proc_status("VmHWM:");

    // The resume, as `coordinated::checkpoint::resume` does it.
    let r0 = Instant::now();
    let manifest = store.manifest(1)?;
    let wanted: BTreeSet<String> = trainer
        .objects_to_resume(i64::from(manifest.world_size), args.classes as i64)
        .into_iter()
        .collect();
    let loaded = store.load_with(1, |o| wanted.contains(&o.key))?;
    let download = r0.elapsed();
    let l0 = Instant::now();
    let source = format!(
        "{}/{}",
        store.run().store().url(),
        store.run().step_prefix(1)
    );
    trainer.restore_from_objects(&source, &loaded.manifest, &loaded.objects)?;
    let load = l0.elapsed();
    // Where the load goes: the safetensors decoding alone, per object (the rest of
    // `restore_from_objects` is re-cutting the centres and copying into the variables).
    let mut decode = serde_json::Map::new();
    for (key, bytes) in &loaded.objects {
        let d0 = Instant::now();
        let tensors = lgaf_model::weights::from_bytes(bytes, std::path::Path::new(key))?;
        decode.insert(key.clone(), secs(d0.elapsed()).into());
        drop(tensors);
    }
    let resume = download + load;
    drop(loaded);
    let rss_peak = proc_status("VmHWM:");

    let mut raw = HashMap::new();
    if let Some(dir) = &args.raw_reference {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let w0 = Instant::now();
        for (i, (_, bytes)) in kept.iter().enumerate() {
            let path = dir.join(format!("object-{i}"));
            std::fs::write(&path, bytes).with_context(|| format!("{}", path.display()))?;
        }
        raw.insert("raw_write_s", secs(w0.elapsed()));
        let r0 = Instant::now();
        let mut read = 0u64;
        for i in 0..kept.len() {
            let path = dir.join(format!("object-{i}"));
            read += std::fs::read(&path)
                .with_context(|| format!("{}", path.display()))?
                .len() as u64;
        }
        anyhow::ensure!(read == total, "read back {read} of {total} bytes");
        raw.insert("raw_read_s", secs(r0.elapsed()));
        std::fs::remove_dir_all(dir).ok();
    }
    drop(kept);

    let mb = total as f64 / 1e6;
    let row = serde_json::json!({
        "store": store.run().store().url(),
        "loadavg_before": load_before.split_whitespace().take(3).collect::<Vec<_>>().join(" "),
        "loadavg_after": loadavg().split_whitespace().take(3).collect::<Vec<_>>().join(" "),
        "arch": args.arch,
        "hand_over": args.hand_over,
        "classes": args.classes,
        "objects": manifest.objects.iter().map(|o| (o.key.clone(), o.size)).collect::<Vec<_>>(),
        "bytes": total,
        "build_s": build_s,
        "serialise_s": secs(serialise),
        "handover_s": secs(handover),
        "stall_s": secs(stall),
        "upload_s": secs(uploaded),
        "upload_mbps": mb / secs(uploaded),
        "commit_s": secs(commit),
        "download_verify_s": secs(download),
        "load_s": secs(load),
        "resume_s": secs(resume),
        "decode_s": decode,
        "rss_before": rss_before,
        "rss_peak_save": rss_peak_save,
        "rss_peak": rss_peak,
        "raw_write_s": raw.get("raw_write_s"),
        "raw_read_s": raw.get("raw_read_s"),
    });
    println!(
        "{}: {:.0} MB in {} objects | stall {:.2} s (serialise {:.2} + hand-over {:.2}) | \
         upload {:.2} s = {:.0} MB/s | commit {:.3} s | resume {:.2} s (download+verify \
         {:.2}, load {:.2}) | peak RSS {:.2} GB",
        row["store"].as_str().unwrap_or_default(),
        mb,
        manifest.objects.len(),
        secs(stall),
        secs(serialise),
        secs(handover),
        secs(uploaded),
        mb / secs(uploaded),
        secs(commit),
        secs(resume),
        secs(download),
        secs(load),
        rss_peak as f64 / 1e9,
    );
    if let Some(path) = &args.json {
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .with_context(|| format!("opening {}", path.display()))?;
        writeln!(f, "{row}").with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}
