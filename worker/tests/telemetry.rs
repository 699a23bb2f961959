//! The traces of a real 2-worker coordinated CPU run, received by a real OpenTelemetry
//! collector (`rotel`): the coordinator exports over OTLP/gRPC, the workers over
//! OTLP/HTTP, and all of it is one trace: the coordinator's job and generation spans, and
//! the workers' join, group, step and phase spans under them. Rank 1 traces a sample of
//! its steps. Then a run whose collector is killed mid-run: training finishes, the export
//! failures are logged, nothing fails.

mod common;

use std::collections::BTreeSet;
use std::process::Child;
use std::time::Duration;

use common::processes::{
    coordinator_command, coordinator_url, tiny_config, wait_exit_or, work_dir, worker_command, Log,
};
use lgaf_telemetry::testing::{Collector, ReceivedSpan};

/// A coordinator exporting to `collector` over gRPC and two workers exporting over HTTP,
/// rank 1 tracing one step in 4; returns (coordinator, workers, log of all three).
fn start_run(name: &str, collector: &Collector) -> (Child, Vec<Child>, Log) {
    let dir = work_dir("telemetry", name, &tiny_config(8, 4, 4));
    let mut coordinator = coordinator_command(&dir)
        .args(["--workers", "2", "--run-id", name])
        .env("OTEL_EXPORTER_OTLP_ENDPOINT", &collector.grpc)
        .env("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc")
        .spawn()
        .unwrap();
    let url = coordinator_url(&mut coordinator);
    let log = Log::default();
    log.collect(coordinator.stderr.take().unwrap());
    let workers = (0..2)
        .map(|slot| {
            let mut worker = worker_command(&url, slot)
                .args(["--trace-step-every", "4"])
                .env("OTEL_EXPORTER_OTLP_ENDPOINT", &collector.http)
                .env("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf")
                .spawn()
                .unwrap();
            log.collect(worker.stderr.take().unwrap());
            worker
        })
        .collect();
    (coordinator, workers, log)
}

fn finish(mut coordinator: Child, workers: Vec<Child>, log: &Log) {
    let status = wait_exit_or(&mut coordinator, Duration::from_secs(300), || log.text());
    assert!(status.success(), "{}", log.text());
    for mut worker in workers {
        let status = wait_exit_or(&mut worker, Duration::from_secs(60), || log.text());
        assert!(status.success(), "{}", log.text());
    }
}

fn service(span: &ReceivedSpan) -> &str {
    span.resource.get("service.name").map_or("", String::as_str)
}

#[test]
fn one_trace_per_job_across_the_coordinator_and_both_workers() {
    let collector = Collector::start();
    let (coordinator, workers, log) = start_run("traced", &collector);
    finish(coordinator, workers, &log);
    // The job span ends last, as the coordinator shuts down.
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let spans = loop {
        let spans = collector.spans();
        if spans.iter().any(|s| s.name == "job") {
            break spans;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no job span arrived:\n{}",
            collector.output()
        );
        std::thread::sleep(Duration::from_millis(200));
    };

    let job = spans
        .iter()
        .find(|s| s.name == "job" && service(s) == "lgaf-coordinator")
        .expect("the coordinator's job span");
    let trace = &job.trace_id;
    for key in ["lgaf.run.id", "lgaf.job.id", "host.name"] {
        assert!(job.resource.contains_key(key), "{key}: {:?}", job.resource);
    }
    assert_eq!(job.resource["lgaf.run.id"], "traced");
    let names = |service_name: &str| -> BTreeSet<&str> {
        spans
            .iter()
            .filter(|s| service(s) == service_name)
            .map(|s| s.name.as_str())
            .collect()
    };
    for name in ["job", "generation", "commit"] {
        assert!(names("lgaf-coordinator").contains(name), "{name}");
    }
    for name in [
        "join",
        "generation",
        "form_group",
        "build_trainer",
        "step",
        "data_wait",
        "forward",
        "backward",
        "all_reduce",
        "optimizer",
        "checkpoint",
    ] {
        assert!(
            names("lgaf-worker").contains(name),
            "{name}: {:?}",
            names("lgaf-worker")
        );
    }

    // Both workers, each with its resource, every one of their spans in the job's trace.
    let workers: Vec<&ReceivedSpan> = spans
        .iter()
        .filter(|s| service(s) == "lgaf-worker")
        .collect();
    let slots: BTreeSet<&str> = workers
        .iter()
        .map(|s| s.resource["lgaf.slot"].as_str())
        .collect();
    assert_eq!(slots, BTreeSet::from(["0", "1"]));
    for span in &workers {
        for key in [
            "lgaf.run.id",
            "lgaf.job.id",
            "lgaf.worker.id",
            "lgaf.device",
            "host.name",
        ] {
            assert!(
                span.resource.contains_key(key),
                "{key}: {:?}",
                span.resource
            );
        }
        assert_eq!(span.resource["lgaf.job.id"], job.resource["lgaf.job.id"]);
        assert_eq!(
            &span.trace_id, trace,
            "{} of slot {}",
            span.name, span.resource["lgaf.slot"]
        );
    }
    // The worker's generation span is the coordinator's generation's child.
    let generation = spans
        .iter()
        .find(|s| s.name == "generation" && service(s) == "lgaf-coordinator")
        .unwrap();
    assert!(workers
        .iter()
        .any(|s| s.name == "generation" && s.parent_id == generation.span_id));

    // Rank 0 traces every step (24: 4 epochs of 6), rank 1 one in 4.
    let steps_of = |rank: &str| {
        workers
            .iter()
            .filter(|s| {
                s.name == "step" && s.attributes.get("rank").map(String::as_str) == Some(rank)
            })
            .count()
    };
    assert_eq!(steps_of("0"), 24, "{}", collector.output());
    assert_eq!(steps_of("1"), 6);
}

#[test]
fn a_collector_that_goes_away_mid_run_costs_the_run_nothing() {
    let collector = Collector::start();
    let (coordinator, workers, log) = start_run("collector-lost", &collector);
    // Spans have arrived (the first steps exported), then the collector is gone.
    collector.wait_for("Name           : step", Duration::from_secs(120));
    drop(collector);
    finish(coordinator, workers, &log);
    let text = log.text();
    assert!(text.contains("step 24/24"), "{text}");
    assert!(
        text.contains("export to http://127.0.0.1:") && text.contains("failed"),
        "the export failures are logged:\n{text}"
    );
}
