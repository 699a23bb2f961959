//! `lgaf pack` and `lgaf inspect`: an image folder turned into a RecordIO pack, and a pack
//! or folder summarised (counts, sizes, the first problems found).

use std::path::PathBuf;
use std::time::Instant;

use anyhow::Result;
use clap::Args;
use lgaf_data::recordio::{IndexMode, IndexSource, RecordPack};
use lgaf_data::source::{FaceSource, FolderSource};
use lgaf_proto::console::eprint_line;

use super::set_threads;
use crate::dataset_tools;
use crate::progress::task_bar;

#[derive(Args)]
pub struct PackArgs {
    /// Image folder: one sub-folder per identity (sorted names give labels 0..K).
    input: PathBuf,
    /// Output pack (.rec); its .idx is written beside it.
    out: PathBuf,
    /// Leave unreadable images out (listed at the end) instead of stopping at the first.
    #[arg(long)]
    skip_bad: bool,
    /// Threads (default: all cores).
    #[arg(long)]
    threads: Option<usize>,
}

#[derive(Args)]
pub struct InspectArgs {
    /// A RecordIO pack (.rec; a missing .idx is rebuilt, a .idx that does not match the
    /// .rec is refused) or an image folder.
    path: PathBuf,
    /// Rebuild the pack's .idx by scanning the .rec and replace the existing one (the
    /// repair for a .idx that does not match its .rec).
    #[arg(long)]
    rebuild_index: bool,
    /// Print one JSON object (images, identities, images_per_identity, image_sizes, bad,
    /// problems).
    #[arg(long)]
    json: bool,
    /// Threads (default: all cores).
    #[arg(long)]
    threads: Option<usize>,
}

pub(super) fn pack(a: PackArgs) -> Result<()> {
    set_threads(a.threads)?;
    let source = FolderSource::open(&a.input)?;
    let bar = task_bar("packing", "images");
    bar.set_length(source.len() as u64);
    let started = Instant::now();
    let report = dataset_tools::pack(&source, &a.out, a.skip_bad, |done, _| {
        bar.set_position(done as u64)
    })?;
    bar.finish_and_clear();
    out!(
        "wrote {} ({} images of {} identities, {:.1} MB, {:.0} images/s): {} stored as they were, {} resized to 112x112",
        a.out.display(),
        report.images,
        report.identities,
        report.bytes as f64 / 1e6,
        report.images as f64 / started.elapsed().as_secs_f64(),
        report.copied,
        report.resized
    );
    if !report.skipped.is_empty() {
        out!("skipped {} unreadable images:", report.skipped.len());
        for s in &report.skipped {
            out!("  {s}");
        }
    }
    Ok(())
}

pub(super) fn inspect(a: InspectArgs) -> Result<()> {
    set_threads(a.threads)?;
    let source: Box<dyn FaceSource> = if a.path.is_dir() {
        anyhow::ensure!(
            !a.rebuild_index,
            "--rebuild-index applies to a RecordIO pack (.rec), and {} is a folder",
            a.path.display()
        );
        Box::new(FolderSource::open(&a.path)?)
    } else {
        let bar = task_bar("indexing", "bytes");
        let mode = if a.rebuild_index {
            IndexMode::Rebuild
        } else {
            IndexMode::Read
        };
        let pack = RecordPack::open_with(&a.path, mode, |done, total| {
            bar.set_length(total);
            bar.set_position(done);
        })?;
        bar.finish_and_clear();
        if let IndexSource::Rebuilt { saved } = pack.index_source() {
            eprint_line(format_args!(
                "note: {}; rebuilt it by scanning{}",
                if a.rebuild_index {
                    format!("--rebuild-index replaces the .idx of {}", a.path.display())
                } else {
                    format!("{} had no .idx", a.path.display())
                },
                if saved {
                    " and saved it beside the pack"
                } else {
                    " (could not save it)"
                }
            ));
        }
        Box::new(pack)
    };
    let bar = task_bar("inspecting", "images");
    bar.set_length(source.len() as u64);
    let report = dataset_tools::inspect(source.as_ref(), |done, _| bar.set_position(done as u64));
    bar.finish_and_clear();
    if a.json {
        out!("{}", serde_json::to_string_pretty(&report)?);
        return Ok(());
    }
    let s = &report.images_per_identity;
    out!("{}", report.source);
    out!("  images       {}", report.images);
    out!(
        "  identities   {} ({} without images)",
        report.identities,
        report.empty_identities
    );
    out!(
        "  per identity min {} / median {} / mean {:.1} / max {}",
        s.min,
        s.median,
        s.mean,
        s.max
    );
    out!("  image sizes");
    for (size, n) in &report.image_sizes {
        out!("    {size:<16} {n}");
    }
    out!("  bad images   {}", report.bad);
    for p in &report.problems {
        out!("    {p}");
    }
    Ok(())
}
