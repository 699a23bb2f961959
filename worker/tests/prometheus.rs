//! The Prometheus endpoints of a real run, read by the real Prometheus tools: a coordinator
//! (`--workers 2`) and two `lgaf-worker` processes on loopback, each with
//! `--metrics-listen 127.0.0.1:0`. While the run trains and checkpoints, the test
//!
//! - scrapes every `/metrics` endpoint and has `promtool check metrics` pass each body with
//!   no lint finding;
//! - starts a `prometheus` server scraping the three endpoints every second and finds the
//!   workers' `lgaf_train_step` (one series per rank) and `lgaf_train_loss`, and the
//!   coordinator's `lgaf_job_generation`, through its HTTP query API, and every metric the
//!   dashboard queries among its stored names;
//! - checks that every metric name a panel of the Grafana dashboard
//!   (`deploy/grafana/lgaf-train.json`) queries is one the processes export: each one was
//!   seen in a scrape (the run goes past two checkpoints first, so the checkpoint metrics
//!   exist).
//!
//! `prometheus` and `promtool` come from the Debian package `prometheus`, which `make test`
//! installs; the test fails, saying so, where they are missing ($LGAF_PROMETHEUS,
//! $LGAF_PROMTOOL, default /usr/bin/...).

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::processes::{
    coordinator_command, coordinator_url, tiny_config, work_dir, worker_command, Log,
};
use lgaf_telemetry::testing::{free_port, http_get, installed, promtool_check};

/// Dashboard metrics this run cannot produce, so they are not looked for in its scrapes.
const NOT_IN_THIS_RUN: &[&str] = &[
    // Recorded by fp16 runs only; the CPU backend trains in fp32.
    "lgaf_train_loss_scale",
    // Counted only by a process that exports to an OTLP endpoint; this run sets none.
    "lgaf_telemetry_export_failures_total",
];

/// How long the run may take to reach the state the test checks (past two checkpoints with
/// every metric in the scrapes): generous for a 2-core CI machine shared with other tests.
const RUN_TIMEOUT: Duration = Duration::from_secs(300);
/// How long each wait on Prometheus (ready, a query returning series) may take.
const PROMETHEUS_TIMEOUT: Duration = Duration::from_secs(60);

/// A child process killed (and reaped) when the test ends, whether it passes or fails.
struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A folder removed when the test ends (declared before the processes that write into it,
/// so it goes after them).
struct RemovedAtEnd(PathBuf);

impl Drop for RemovedAtEnd {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The body of a `/metrics` endpoint, unless it fails or answers other than 200.
fn scrape(addr: &str) -> Result<String, String> {
    match http_get(addr, "/metrics").map_err(|e| format!("GET http://{addr}/metrics: {e}"))? {
        (200, body) => Ok(body),
        (status, body) => Err(format!("http://{addr}/metrics answered {status}:\n{body}")),
    }
}

/// The series names in a Prometheus text exposition (`name{labels} value` or `name value`).
fn series_names(exposition: &str) -> BTreeSet<String> {
    exposition
        .lines()
        .filter(|line| !line.starts_with('#') && !line.trim().is_empty())
        .filter_map(|line| line.split(['{', ' ']).next())
        .map(str::to_string)
        .collect()
}

/// The `host:port` of the `serving Prometheus metrics on http://HOST:PORT/metrics` line in
/// `log`, once it is there.
fn metrics_addr(log: &Log, who: &str) -> String {
    const PREFIX: &str = "serving Prometheus metrics on http://";
    log.wait_for(PREFIX, Duration::from_secs(60));
    let text = log.text();
    let rest = &text[text.find(PREFIX).unwrap() + PREFIX.len()..];
    match rest.split_once("/metrics") {
        Some((addr, _)) if addr.starts_with("127.0.0.1:") => addr.to_string(),
        _ => panic!("{who}'s metrics line: {:?}", rest.lines().next()),
    }
}

/// The metric names (`lgaf_...`) in every panel's `targets[].expr` of a Grafana dashboard,
/// rows' nested panels included, and in its template variables' queries.
fn dashboard_metrics(dashboard: &serde_json::Value) -> BTreeSet<String> {
    fn panels(list: &serde_json::Value, exprs: &mut Vec<String>) {
        for panel in list.as_array().into_iter().flatten() {
            for target in panel["targets"].as_array().into_iter().flatten() {
                if let Some(expr) = target["expr"].as_str() {
                    exprs.push(expr.to_string());
                }
            }
            panels(&panel["panels"], exprs);
        }
    }
    let mut exprs = Vec::new();
    panels(&dashboard["panels"], &mut exprs);
    let panel_exprs = exprs.len();
    for variable in dashboard["templating"]["list"]
        .as_array()
        .into_iter()
        .flatten()
    {
        if let Some(query) = variable["definition"].as_str() {
            exprs.push(query.to_string());
        }
    }
    assert!(panel_exprs >= 20, "only {panel_exprs} panel queries");
    let mut names = BTreeSet::new();
    for expr in &exprs {
        let bytes = expr.as_bytes();
        let mut i = 0;
        while let Some(at) = expr[i..].find("lgaf_").map(|at| at + i) {
            let starts_word =
                at == 0 || !(bytes[at - 1].is_ascii_alphanumeric() || bytes[at - 1] == b'_');
            let mut end = at + "lgaf_".len();
            while end < bytes.len()
                && (bytes[end].is_ascii_lowercase()
                    || bytes[end].is_ascii_digit()
                    || bytes[end] == b'_')
            {
                end += 1;
            }
            if starts_word {
                names.insert(expr[at..end].to_string());
            }
            i = end;
        }
    }
    names
}

/// Whether the coordinator and every worker still run.
fn all_running(coordinator: &mut Killed, workers: &mut [Killed]) -> bool {
    std::iter::once(coordinator)
        .chain(workers.iter_mut())
        .all(|child| child.0.try_wait().unwrap().is_none())
}

/// `GET /api/v1/...` of the Prometheus server at `addr`, as JSON `data`; None while it
/// fails or answers an error.
fn prometheus_api(addr: &str, path: &str) -> Option<serde_json::Value> {
    let (status, body) = http_get(addr, path).ok()?;
    let json: serde_json::Value = serde_json::from_str(&body).ok()?;
    (status == 200 && json["status"] == "success").then(|| json["data"].clone())
}

#[test]
fn prometheus_scrapes_every_process_and_the_dashboard_queries_only_exported_metrics() {
    let promtool = installed("LGAF_PROMTOOL", "/usr/bin/promtool", "Debian's prometheus");
    let prometheus = installed(
        "LGAF_PROMETHEUS",
        "/usr/bin/prometheus",
        "Debian's prometheus",
    );
    let dashboard_path =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/grafana/lgaf-train.json");
    let dashboard: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(&dashboard_path)
            .unwrap_or_else(|e| panic!("{}: {e}", dashboard_path.display())),
    )
    .unwrap_or_else(|e| panic!("{}: {e}", dashboard_path.display()));
    let wanted: BTreeSet<String> = dashboard_metrics(&dashboard)
        .into_iter()
        .filter(|name| !NOT_IN_THIS_RUN.contains(&name.as_str()))
        .collect();

    // 12 identities of 40 images: 30 steps an epoch on 2 ranks, a checkpoint every 10
    // steps. Far longer than the test needs: it stops the run once it has checked.
    let dir = work_dir("prometheus", "scrape", &tiny_config(40, 10, 10));
    let _remove_dir = RemovedAtEnd(dir.clone());
    let started = Instant::now();

    let mut coordinator = coordinator_command(&dir)
        .args(["--workers", "2", "--run-id", "prometheus"])
        // Only the test's workers: the coordinator starts none of its own.
        .args(["--grace-secs", "600"])
        .args(["--metrics-listen", "127.0.0.1:0"])
        .spawn()
        .unwrap();
    let url = coordinator_url(&mut coordinator);
    let coordinator_log = Log::default();
    coordinator_log.collect(coordinator.stderr.take().unwrap());
    coordinator_log.collect(coordinator.stdout.take().unwrap());
    let mut coordinator = Killed(coordinator);

    let mut workers = Vec::new();
    let mut worker_logs = Vec::new();
    for slot in [0, 1] {
        let mut worker = worker_command(&url, slot)
            .args(["--collective-bind", "127.0.0.1:0"])
            .args(["--metrics-listen", "127.0.0.1:0"])
            .spawn()
            .unwrap();
        let log = Log::default();
        log.collect(worker.stderr.take().unwrap());
        workers.push(Killed(worker));
        worker_logs.push(log);
    }
    let all_logs = || {
        let mut text = format!("coordinator:\n{}", coordinator_log.text());
        for (slot, log) in worker_logs.iter().enumerate() {
            text += &format!("\nworker {slot}:\n{}", log.text());
        }
        text
    };

    let coordinator_addr = metrics_addr(&coordinator_log, "the coordinator");
    let worker_addrs: Vec<String> = worker_logs
        .iter()
        .enumerate()
        .map(|(slot, log)| metrics_addr(log, &format!("worker {slot}")))
        .collect();
    let mut targets = vec![("coordinator".to_string(), coordinator_addr.clone())];
    for (slot, addr) in worker_addrs.iter().enumerate() {
        targets.push((format!("worker {slot}"), addr.clone()));
    }
    println!("[{:?}] metrics endpoints: {targets:?}", started.elapsed());

    // Prometheus scrapes the three endpoints from now on, every second.
    let prometheus_dir = dir.join("prometheus");
    std::fs::create_dir_all(prometheus_dir.join("data")).unwrap();
    let quoted = |addrs: &[String]| {
        addrs
            .iter()
            .map(|a| format!("\"{a}\""))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let config = format!(
        "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n  evaluation_interval: 1s\n\
         scrape_configs:\n\
         \x20 - job_name: lgaf-coordinator\n    static_configs:\n      - targets: [{}]\n\
         \x20 - job_name: lgaf-worker\n    static_configs:\n      - targets: [{}]\n",
        quoted(std::slice::from_ref(&coordinator_addr)),
        quoted(&worker_addrs)
    );
    std::fs::write(prometheus_dir.join("prometheus.yml"), &config).unwrap();
    let prometheus_addr = format!("127.0.0.1:{}", free_port());
    let mut server = Command::new(&prometheus)
        .arg(format!(
            "--config.file={}",
            prometheus_dir.join("prometheus.yml").display()
        ))
        .arg(format!(
            "--storage.tsdb.path={}",
            prometheus_dir.join("data").display()
        ))
        .arg(format!("--web.listen-address={prometheus_addr}"))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{}: {e}", prometheus.display()));
    let prometheus_log = Log::default();
    prometheus_log.collect(server.stdout.take().unwrap());
    prometheus_log.collect(server.stderr.take().unwrap());
    let mut server = Killed(server);

    // Scrape the endpoints until every metric the dashboard queries has been seen (the
    // checkpoint histograms come with the second checkpoint of each rank) and the run is
    // past its second committed checkpoint.
    let mut seen = BTreeSet::new();
    let mut last_bodies = BTreeMap::new();
    loop {
        let missing: Vec<&String> = wanted.difference(&seen).collect();
        // A process that has exited (the run finished, or failed) serves nothing more.
        for (who, child) in std::iter::once(("the coordinator", &mut coordinator))
            .chain(workers.iter_mut().map(|w| ("a worker", w)))
        {
            if let Some(status) = child.0.try_wait().unwrap() {
                panic!(
                    "{who} exited ({status}) before every dashboard metric was scraped; \
                     never scraped: {missing:?}\nscraped: {seen:?}\n{}",
                    all_logs()
                );
            }
        }
        for (who, addr) in &targets {
            match scrape(addr) {
                Ok(body) => {
                    seen.extend(series_names(&body));
                    last_bodies.insert(who.clone(), body);
                }
                // A process closes its endpoint as it stops: once one has exited, the next
                // round says so.
                Err(e) => {
                    let waited = Instant::now();
                    while all_running(&mut coordinator, &mut workers) {
                        assert!(
                            waited.elapsed() < Duration::from_secs(30),
                            "{who}: {e}\n{}",
                            all_logs()
                        );
                        std::thread::sleep(Duration::from_millis(100));
                    }
                    break;
                }
            }
        }
        let missing: Vec<&String> = wanted.difference(&seen).collect();
        let committed = coordinator_log.text().matches("checkpoint at step").count();
        if missing.is_empty() && committed >= 2 && last_bodies.len() == targets.len() {
            break;
        }
        assert!(
            started.elapsed() < RUN_TIMEOUT,
            "after {RUN_TIMEOUT:?}, {committed} checkpoints committed and these dashboard \
             metrics never scraped: {missing:?}\nscraped: {seen:?}\n{}",
            all_logs()
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    println!(
        "[{:?}] every dashboard metric scraped: {wanted:?}",
        started.elapsed()
    );
    println!("scraped series names: {seen:?}");

    // (a) Each kind of endpoint is valid, lint-free exposition.
    for (who, body) in &last_bodies {
        promtool_check(&promtool, who, body);
    }

    // (b) A real Prometheus has scraped them: the workers' series, one per rank, and the
    // coordinator's.
    let prometheus_context = || {
        format!(
            "prometheus ({prometheus_addr}):\n{}\nits config:\n{config}\n{}",
            prometheus_log.text(),
            all_logs()
        )
    };
    let waited = Instant::now();
    loop {
        if let Ok((200, _)) = http_get(&prometheus_addr, "/-/ready") {
            break;
        }
        if let Some(status) = server.0.try_wait().unwrap() {
            panic!("prometheus exited ({status})\n{}", prometheus_context());
        }
        assert!(
            waited.elapsed() < PROMETHEUS_TIMEOUT,
            "prometheus not ready within {PROMETHEUS_TIMEOUT:?}\n{}",
            prometheus_context()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    println!("[{:?}] prometheus ready", started.elapsed());
    for (query, job, per_rank) in [
        ("lgaf_train_step", "lgaf-worker", true),
        ("lgaf_train_loss", "lgaf-worker", true),
        ("lgaf_job_generation", "lgaf-coordinator", false),
    ] {
        let waited = Instant::now();
        let result = loop {
            let data = prometheus_api(&prometheus_addr, &format!("/api/v1/query?query={query}"));
            let result = data
                .map(|data| data["result"].as_array().cloned().unwrap_or_default())
                .unwrap_or_default();
            let ranks: BTreeSet<&str> = result
                .iter()
                .filter_map(|series| series["metric"]["rank"].as_str())
                .collect();
            let complete = if per_rank {
                ranks == BTreeSet::from(["0", "1"])
            } else {
                !result.is_empty()
            };
            if complete {
                break result;
            }
            assert!(
                waited.elapsed() < PROMETHEUS_TIMEOUT,
                "prometheus has no {query} series (of every rank) after {PROMETHEUS_TIMEOUT:?}: \
                 {result:?}\n{}",
                prometheus_context()
            );
            std::thread::sleep(Duration::from_millis(500));
        };
        for series in &result {
            assert_eq!(series["metric"]["job"], job, "{query}: {series}");
        }
        println!("[{:?}] prometheus: {query} = {result:?}", started.elapsed());
    }
    // What Prometheus stored agrees with the direct scrapes on the dashboard's metrics (it
    // may be a scrape behind on the ones that appeared last).
    let waited = Instant::now();
    loop {
        let stored: BTreeSet<String> =
            prometheus_api(&prometheus_addr, "/api/v1/label/__name__/values")
                .and_then(|data| data.as_array().cloned())
                .unwrap_or_default()
                .iter()
                .filter_map(|name| name.as_str().map(str::to_string))
                .collect();
        let not_stored: Vec<&String> = wanted.difference(&stored).collect();
        if not_stored.is_empty() {
            break;
        }
        assert!(
            waited.elapsed() < PROMETHEUS_TIMEOUT,
            "scraped by the test but not stored by prometheus: {not_stored:?}\n{}",
            prometheus_context()
        );
        std::thread::sleep(Duration::from_millis(500));
    }

    // (c) Every metric of the dashboard was scraped (the loop above waited for them; this
    // states it once more, with the dashboard's full list).
    let unexported: Vec<&String> = wanted.difference(&seen).collect();
    assert!(
        unexported.is_empty(),
        "{} queries metrics no process exported: {unexported:?}",
        dashboard_path.display()
    );
    println!("[{:?}] done", started.elapsed());
}
