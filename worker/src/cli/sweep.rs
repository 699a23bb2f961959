//! `lgaf sweep`: the grid's plan and estimated run time, then the runs with a line as each
//! finishes, then the summary over seeds (the work itself is `crate::sweep`'s).

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::Result;
use clap::Args;
use lgaf_report::sweep::RunResult;

use crate::sweep::{Estimate, Launcher, PlannedRun, Sweep, SweepOptions};

#[derive(Args)]
pub struct SweepArgs {
    /// The base config (TOML, as `lgaf train --config`); without it, the embedded defaults.
    #[arg(long)]
    config: Option<PathBuf>,
    /// The grid (TOML): config keys and the values to sweep, e.g. model.fusion = ["lgf",
    /// "add"]; [[grid]] tables for several tables of results (configs/ablation/grid.toml).
    #[arg(long)]
    grid: PathBuf,
    /// Folder of the results (results.json, results.md, report.html), the runs' store and
    /// their logs (runs/<run id>/train.log). Running again resumes the sweep.
    #[arg(long)]
    out: PathBuf,
    /// Runs per grid point, with seeds train.seed, train.seed + 1, ...
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=1000))]
    seeds: u32,
    /// Train each run data-parallel: lgaf-coordinator (beside this binary) spawns this many
    /// local workers (data.batch_size is per worker). Without it, one process per run.
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=1024))]
    workers: Option<u32>,
    /// Runs at once; the cores are shared among them.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=256))]
    jobs: u32,
    /// Print the plan and the estimated run time, and stop.
    #[arg(long)]
    dry_run: bool,
    /// Start without timing the points first (no run-time estimate).
    #[arg(long, conflicts_with = "dry_run")]
    no_estimate: bool,
}

pub(super) fn sweep(a: SweepArgs) -> Result<()> {
    let jobs = a.jobs as usize;
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    // Processes that share the machine share its cores.
    let processes = jobs * a.workers.map_or(1, |w| w as usize);
    let launcher = Launcher {
        lgaf: std::env::current_exe()?,
        workers: a.workers,
        threads: (processes > 1).then(|| (cores / processes).max(1)),
    };
    let mut sweep = Sweep::prepare(SweepOptions {
        base: a.config,
        grid: a.grid,
        out: a.out.clone(),
        seeds: a.seeds,
        launcher,
        jobs,
    })?;
    let plan = sweep.plan();
    let pending = sweep.pending().len();
    out!(
        "{} grid points in {} table(s), {} seed(s) each: {} runs, {} finished, {pending} to run",
        plan.points.len(),
        plan.groups.len(),
        a.seeds,
        plan.runs.len(),
        plan.runs.len() - pending
    );
    let estimates: HashMap<String, f64> = if a.no_estimate || pending == 0 {
        HashMap::new()
    } else {
        out!("timing a few steps of each point...");
        let estimate = sweep.estimate()?;
        print_estimate(&estimate)?;
        estimate
            .points
            .iter()
            .map(|p| (p.label.clone(), p.seconds_per_run))
            .collect()
    };
    if a.dry_run {
        return Ok(());
    }

    let started = Instant::now();
    let progress = Mutex::new(Progress {
        done: 0,
        left: pending,
        estimated_done: 0.0,
        estimated_left: sweep
            .pending()
            .iter()
            .map(|r| estimates.get(&label_of(&sweep, r)).copied().unwrap_or(0.0))
            .sum(),
    });
    // Each result carries its point's label, which keys the estimates.
    let outcome = sweep.run(|result: &RunResult| {
        let mut p = progress.lock().expect("progress");
        let estimated = estimates.get(&result.label).copied().unwrap_or(0.0);
        p.done += 1;
        p.left -= 1;
        p.estimated_done += estimated;
        p.estimated_left -= estimated;
        // The estimate of what is left, scaled by how the finished runs compared with theirs
        // (the wall time so far already reflects the runs going at once).
        let elapsed = started.elapsed().as_secs_f64();
        let to_go = if p.estimated_done > 0.0 {
            p.estimated_left * elapsed / p.estimated_done
        } else {
            f64::NAN
        };
        let sets: Vec<String> = result
            .sets
            .iter()
            .map(|s| format!("{} {:.2}%", s.name, s.accuracy * 100.0))
            .collect();
        // A closed stdout must not stop the sweep: the line is only dropped.
        let _ = lgaf_proto::console::print_line(format_args!(
            "[{}/{}] {} seed {}: {} ({:.1} min; {})",
            p.done,
            p.done + p.left,
            result.label,
            result.seed,
            sets.join(", "),
            (result.train_seconds + result.eval_seconds) / 60.0,
            if p.left == 0 {
                "done".to_string()
            } else if to_go.is_finite() {
                format!("about {} to go", minutes(Duration::from_secs_f64(to_go)))
            } else {
                format!("{} left", p.left)
            }
        ));
    });
    // The summary is written whatever happened; a failed run is the error to report first.
    let summary = sweep.write_summary();
    outcome?;
    let markdown = summary?;
    out!("\n{markdown}");
    out!(
        "results: {}\nsummary: {}\nreport: {}",
        a.out.join("results.json").display(),
        a.out.join("results.md").display(),
        a.out.join("report.html").display()
    );
    Ok(())
}

struct Progress {
    done: usize,
    left: usize,
    estimated_done: f64,
    estimated_left: f64,
}

fn label_of(sweep: &Sweep, run: &PlannedRun) -> String {
    sweep.plan().points[run.point].point.label.clone()
}

fn print_estimate(e: &Estimate) -> Result<()> {
    out!(
        "\n  {:<40} {:>5} {:>7} {:>8} {:>12}",
        "point",
        "runs",
        "steps",
        "img/s",
        "min per run"
    );
    for p in &e.points {
        out!(
            "  {:<40} {:>5} {:>7} {:>8.1} {:>12.1}",
            p.label,
            p.runs,
            p.steps,
            p.images_per_second,
            p.seconds_per_run / 60.0
        );
    }
    // Runs at once share the machine's speed, which the timing measured: no faster in all.
    let total = e.total();
    let finish = lgaf_store::history::now() + total;
    out!(
        "estimated run time: {} (until about {} UTC)\n",
        minutes(total),
        finish.format("%H:%M")
    );
    Ok(())
}

/// `42 min` or `3 h 05 min`.
fn minutes(d: Duration) -> String {
    let m = (d.as_secs_f64() / 60.0).round() as u64;
    if m >= 60 {
        format!("{} h {:02} min", m / 60, m % 60)
    } else {
        format!("{m} min")
    }
}
