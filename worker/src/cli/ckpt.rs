//! `lgaf ckpt ls`, `export` and `convert`: the committed checkpoints of a run in its store
//! (coordinated, or `lgaf train`'s), listed, or one's inference weights written to a
//! safetensors file; and checkpoint folders of the old single-process format converted into
//! a run.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand};
use lgaf_proto::console::eprint_line;

#[derive(Subcommand)]
pub enum CkptCommand {
    /// List the committed checkpoints of a run (step, epoch, world size, time, size).
    Ls(CkptLsArgs),
    /// Write one checkpoint's network weights (the spec's layout, verified against the
    /// manifest's checksum) to a safetensors file that `lgaf embed` and PyTorch load.
    Export(CkptExportArgs),
    /// Convert the single-process checkpoint folders of earlier releases (`step-<n>/`,
    /// format lgaf-checkpoint/1) into committed checkpoints of a run, each verified first;
    /// the old folders are left as they are.
    Convert(CkptConvertArgs),
}

#[derive(Args)]
pub struct CkptLsArgs {
    /// The run's store: a directory, file:///dir or s3://bucket/prefix.
    #[arg(long)]
    store: String,
    /// The run id.
    #[arg(long)]
    run: String,
    /// One JSON array of objects with step, epoch, world_size, created_unix, objects, bytes.
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
pub struct CkptExportArgs {
    /// The run's store: a directory, file:///dir or s3://bucket/prefix (must exist).
    #[arg(long)]
    store: String,
    /// The run id.
    #[arg(long)]
    run: String,
    /// The checkpoint's step (default: the newest committed one that verifies).
    #[arg(long)]
    step: Option<u64>,
    /// The safetensors file to write (its directory is created if missing); written only
    /// once the weights verify.
    #[arg(long)]
    out: PathBuf,
}

#[derive(Args)]
pub struct CkptConvertArgs {
    /// The folder holding the old `step-<n>/` checkpoint folders (the old checkpoint.dir).
    old_dir: PathBuf,
    /// The store to write to: a directory (created if missing), file:///dir or
    /// s3://bucket/prefix. It may be the old folder itself.
    #[arg(long)]
    store: String,
    /// The run id to write the checkpoints under (checkpoint.run_id; `default` unless set).
    #[arg(long, default_value = "default")]
    run: String,
}

/// Runs one `lgaf ckpt` subcommand.
pub(super) fn run(command: CkptCommand) -> Result<()> {
    match command {
        CkptCommand::Ls(a) => ckpt_ls(a),
        CkptCommand::Export(a) => ckpt_export(a),
        CkptCommand::Convert(a) => ckpt_convert(a),
    }
}

fn ckpt_convert(a: CkptConvertArgs) -> Result<()> {
    let store = lgaf_store::BlockingRunStore::from_url(&a.store, &a.run)?;
    let converted = crate::legacy_checkpoint::convert(&a.old_dir, &store)?;
    for (step, why) in &converted.skipped {
        eprint_line(format_args!("not converted: step {step}: {why}"));
    }
    if converted.steps.is_empty() {
        bail!(
            "{}: no checkpoint there verifies, so none was converted",
            a.old_dir.display()
        );
    }
    out!(
        "converted steps {:?} of {} into run {} in {} (lgaf ckpt ls --store {} --run {})",
        converted.steps,
        a.old_dir.display(),
        a.run,
        a.store,
        a.store,
        a.run
    );
    Ok(())
}

fn ckpt_ls(a: CkptLsArgs) -> Result<()> {
    // A reader: a mistyped store is an error naming it, never an empty store created.
    let store = lgaf_store::BlockingRunStore::from_existing_url(&a.store, &a.run)?;
    let committed = store.committed()?;
    if a.json {
        let rows: Vec<serde_json::Value> = committed
            .iter()
            .map(|c| {
                serde_json::json!({
                    "step": c.step,
                    "epoch": c.epoch,
                    "world_size": c.world_size,
                    "created_unix": c.created_unix,
                    "objects": c.objects,
                    "bytes": c.total_bytes,
                })
            })
            .collect();
        out!("{}", serde_json::Value::Array(rows));
        return Ok(());
    }
    if committed.is_empty() {
        out!("run {} in {}: no committed checkpoint", a.run, a.store);
        return Ok(());
    }
    out!(
        "{:>10} {:>6} {:>6} {:>22} {:>8} {:>12}",
        "step",
        "epoch",
        "world",
        "created (UTC)",
        "objects",
        "bytes"
    );
    for c in &committed {
        out!(
            "{:>10} {:>6} {:>6} {:>22} {:>8} {:>12}",
            c.step,
            c.epoch,
            c.world_size,
            lgaf_store::time::Utc::from_unix(c.created_unix).to_string(),
            c.objects,
            c.total_bytes
        );
    }
    Ok(())
}

fn ckpt_export(a: CkptExportArgs) -> Result<()> {
    if a.out.is_dir() || a.out.as_os_str().to_string_lossy().ends_with('/') {
        bail!(
            "--out {} is a directory; a file path is expected (e.g. {})",
            a.out.display(),
            a.out.join("model.safetensors").display()
        );
    }
    // A reader of the store: a mistyped one is an error naming it, never created.
    let store = lgaf_store::BlockingRunStore::from_existing_url(&a.store, &a.run)?;
    let model = crate::trainer::MODEL_OBJECT;
    // The output's directory is created if missing, and removed again if the export fails,
    // so that a failed export leaves nothing behind.
    let dir = a
        .out
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let created = dir
        .ancestors()
        .take_while(|d| !d.as_os_str().is_empty() && !d.exists())
        .last();
    std::fs::create_dir_all(dir)
        .with_context(|| format!("creating {}, the directory of --out", dir.display()))?;
    // Streamed to a temporary name beside --out, hashed on the way, renamed last; the
    // weights are never held in memory whole.
    let exported = match a.step {
        Some(step) => store.download(step, model, &a.out).map(Some),
        None => store.download_latest(model, &a.out),
    };
    let exported = match exported {
        Ok(Some(exported)) => exported,
        failed => {
            if let Some(top) = created {
                for d in dir.ancestors() {
                    let _ = std::fs::remove_dir(d);
                    if d == top {
                        break;
                    }
                }
            }
            match failed {
                Err(e) => return Err(e.into()),
                _ => bail!("run {} in {}: no committed checkpoint", a.run, a.store),
            }
        }
    };
    for (step, why) in &exported.skipped {
        eprint_line(format_args!("skipped checkpoint {step}: {why}"));
    }
    out!(
        "{}: weights of run {} at step {} (epoch {}, {} bytes, SHA-256 verified)",
        a.out.display(),
        a.run,
        exported.manifest.step,
        exported.manifest.epoch,
        exported.object.size
    );
    Ok(())
}
