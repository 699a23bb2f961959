//! The tables: one row per worker count against the goal (at 1024 workers on this 2-core
//! machine: heartbeat p99 under 50 ms, the generation formed within 2 s), each RPC's
//! round trips and refusals, what broke first, and the mass failure's figures.

use std::time::Duration;

use tonic::Code;

use crate::scenario::{FailureFigures, SteadyFigures};
use crate::stats::{first_failure, RpcRecord};

/// The goal the figures are measured against.
pub const GOAL_HEARTBEAT_P99_MS: f64 = 50.0;
pub const GOAL_FORMED_SECS: f64 = 2.0;

/// Refusals that are the protocol working, not failing: a Join or GetNcclId long poll
/// that ends before the generation forms (the worker calls again), a Register refused
/// while every place is taken (replacements waiting for the loss to be seen), and the
/// stale calls of an ended generation.
const EXPECTED: &[(&str, Code)] = &[
    ("Join", Code::DeadlineExceeded),
    ("GetNcclId", Code::DeadlineExceeded),
    ("Register", Code::Unavailable),
    ("Heartbeat", Code::Aborted),
    ("CheckpointAck", Code::Aborted),
    ("ReportProgress", Code::Aborted),
    ("GetNcclId", Code::Aborted),
];

fn secs(d: Option<Duration>) -> String {
    d.map_or_else(|| "-".into(), |d| format!("{:.3}", d.as_secs_f64()))
}

fn ms(v: Option<f64>) -> String {
    v.map_or_else(|| "-".into(), |v| format!("{v:.1}"))
}

fn ratio(v: Option<f64>, goal: f64) -> String {
    v.map_or_else(|| "-".into(), |v| format!("{:.2}", v / goal))
}

fn heartbeats(f: &SteadyFigures) -> RpcRecord {
    f.calls.get("Heartbeat").cloned().unwrap_or_default()
}

/// The summary table, one row per worker count.
pub fn steady_table(rows: &[SteadyFigures]) -> String {
    let mut out = String::new();
    out.push_str(&format!(
        "goal (1024 workers, 2 cores): heartbeat p99 < {GOAL_HEARTBEAT_P99_MS} ms, generation \
         formed < {GOAL_FORMED_SECS} s after the last Register; ratios below are figure / goal \
         (< 1 meets it)\n\n"
    ));
    out.push_str(
        "| workers | formed s | formed/goal | reg→formed s | hb p50 ms | hb p99 ms | hb max ms | \
         p99/goal | commit ms (per ckpt) | coord CPU s (formation / total) | peak RSS MiB | \
         gen CPU s | refusals | finished | wall s |\n",
    );
    out.push_str("|---:|---:|---:|---:|---:|---:|---:|---:|---|---|---:|---:|---|---:|---:|\n");
    for f in rows {
        let hb = heartbeats(f);
        let p99 = hb.quantile_ms(0.99);
        let commits: Vec<String> = f
            .commits
            .iter()
            .map(|(step, d)| {
                format!(
                    "{step}: {}",
                    d.map_or_else(
                        || "none".into(),
                        |d| format!("{:.0}", d.as_secs_f64() * 1e3)
                    )
                )
            })
            .collect();
        let refusals: u64 = f
            .calls
            .iter()
            .map(|(rpc, r)| {
                r.refusals
                    .iter()
                    .filter(|(code, _)| {
                        !EXPECTED
                            .iter()
                            .any(|(e, c)| e == rpc && format!("{c:?}") == **code)
                    })
                    .map(|(_, n)| n)
                    .sum::<u64>()
            })
            .sum();
        out.push_str(&format!(
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {:.2} / {:.2} | {:.1} | {:.2} | {} | {}/{}{} | {:.1} |\n",
            f.workers,
            secs(f.formed),
            ratio(f.formed.map(|d| d.as_secs_f64()), GOAL_FORMED_SECS),
            secs(f.register_to_formed),
            ms(hb.quantile_ms(0.5)),
            ms(p99),
            ms(hb.quantile_ms(1.0)),
            ratio(p99, GOAL_HEARTBEAT_P99_MS),
            if commits.is_empty() { "-".into() } else { commits.join(", ") },
            f.cpu_formation,
            f.cpu_total,
            f.peak_rss_mib,
            f.generator_cpu,
            refusals,
            f.finished,
            f.workers,
            if f.timed_out { " (cut at the time limit)" } else { "" },
            f.wall.as_secs_f64(),
        ));
    }
    out
}

/// Per worker count: each RPC's calls, round trips and refusals, and what broke first.
pub fn details(f: &SteadyFigures) -> String {
    let mut out = format!("\n{} workers:\n", f.workers);
    out.push_str(&rpc_lines(&f.calls));
    let timeline: Vec<String> = heartbeats(f)
        .timeline()
        .iter()
        .map(|(second, n, p99)| format!("{second}s:{n}/{p99:.0}"))
        .collect();
    out.push_str(&format!(
        "  heartbeats per second of the run (second:answered/p99 ms): {}\n",
        timeline.join(" ")
    ));
    match first_failure(&f.calls, EXPECTED) {
        Some((rpc, r)) => out.push_str(&format!(
            "  broke first: {rpc} {:?} at {:.1} s: {}\n",
            r.code,
            r.at.as_secs_f64(),
            r.message
        )),
        None => out.push_str("  broke first: nothing (no unexpected refusal)\n"),
    }
    out.push_str(&format!(
        "  manifests written: {}/{}; coordinator exit: {}\n",
        f.manifests_written,
        f.commits.len(),
        f.coordinator_exit
    ));
    if f.worker_error_count > 0 {
        out.push_str(&format!("  worker errors: {}\n", f.worker_error_count));
        for e in &f.worker_errors {
            out.push_str(&format!("    {e}\n"));
        }
    }
    out
}

fn rpc_lines(calls: &std::collections::BTreeMap<&'static str, RpcRecord>) -> String {
    let mut out = String::new();
    for (rpc, r) in calls {
        let refusals: Vec<String> = r.refusals.iter().map(|(c, n)| format!("{c} {n}")).collect();
        out.push_str(&format!(
            "  {rpc:<15} answered {:>6}  p50 {:>8} ms  p99 {:>8} ms  max {:>8} ms  refused: {}\n",
            r.round_trips_us.len(),
            ms(r.quantile_ms(0.5)),
            ms(r.quantile_ms(0.99)),
            ms(r.quantile_ms(1.0)),
            if refusals.is_empty() {
                "none".into()
            } else {
                refusals.join(", ")
            }
        ));
    }
    out
}

pub fn failure_table(f: &FailureFigures) -> String {
    let mut out = format!(
        "\nmass failure: {} of {} workers silent at once (heartbeat deadline {:.1} s)\n",
        f.silenced,
        f.workers,
        f.deadline.as_secs_f64()
    );
    out.push_str("| figure | s | / deadline or goal |\n|---|---:|---:|\n");
    let per_deadline =
        |d: Option<Duration>| ratio(d.map(|d| d.as_secs_f64()), f.deadline.as_secs_f64());
    out.push_str(&format!(
        "| silence → coordinator ends the generation | {} | {} (deadline) |\n",
        secs(f.detected),
        per_deadline(f.detected)
    ));
    out.push_str(&format!(
        "| silence → first survivor told REJOIN | {} | {} (deadline) |\n",
        secs(f.first_told),
        per_deadline(f.first_told)
    ));
    out.push_str(&format!(
        "| silence → last survivor told REJOIN | {} | {} (deadline) |\n",
        secs(f.last_told),
        per_deadline(f.last_told)
    ));
    out.push_str(&format!(
        "| generation ended → next generation formed | {} | {} (goal {GOAL_FORMED_SECS} s) |\n",
        secs(f.next_formed),
        ratio(f.next_formed.map(|d| d.as_secs_f64()), GOAL_FORMED_SECS)
    ));
    out.push_str(&format!(
        "| last rank's Join → every rank answered | {} | {} (goal {GOAL_FORMED_SECS} s) |\n",
        secs(f.next_formed_after_last_join),
        ratio(
            f.next_formed_after_last_join.map(|d| d.as_secs_f64()),
            GOAL_FORMED_SECS
        )
    ));
    out.push_str(&format!(
        "finished: {}/{}{}; coordinator CPU {:.2} s, peak RSS {:.1} MiB\n",
        f.finished,
        f.workers,
        if f.timed_out {
            " (cut at the time limit)"
        } else {
            ""
        },
        f.cpu_total,
        f.peak_rss_mib
    ));
    out.push_str(&rpc_lines(&f.calls));
    if f.worker_error_count > 0 {
        out.push_str(&format!("  worker errors: {}\n", f.worker_error_count));
        for e in &f.worker_errors {
            out.push_str(&format!("    {e}\n"));
        }
    }
    out
}
