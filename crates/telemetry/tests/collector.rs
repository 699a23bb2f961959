//! The telemetry of one process against the real receivers a user runs: spans exported over
//! OTLP/gRPC to the `rotel` collector (which prints what it receives), metrics on the
//! Prometheus endpoint checked by `promtool check metrics`, and a collector that goes away
//! mid-run costing nothing but counted, logged export failures.
//!
//! `make test` installs rotel (PyPI, `.venv-otel`) and Prometheus (Debian) and names them in
//! `LGAF_ROTEL` and `LGAF_PROMTOOL`.

use std::time::{Duration, Instant};

use lgaf_telemetry::opentelemetry::KeyValue;
use lgaf_telemetry::testing::{http_get, installed, promtool_check, Collector};
use lgaf_telemetry::{Telemetry, TelemetryArgs, TextStyle};

const PLAIN: TextStyle = TextStyle {
    ansi: false,
    targets: false,
};

#[test]
fn spans_reach_the_collector_metrics_pass_promtool_and_a_lost_collector_costs_nothing() {
    let rotel = Collector::start();
    let args = TelemetryArgs {
        otlp_endpoint: Some(rotel.grpc.clone()),
        metrics_listen: Some("127.0.0.1:0".parse().unwrap()),
        ..TelemetryArgs::default()
    };
    let mut telemetry = Telemetry::init("lgaf-test", &args, std::io::stderr, PLAIN).unwrap();
    telemetry
        .start_export(vec![KeyValue::new("lgaf.run.id", "collector-test")])
        .unwrap();
    let meter = telemetry.meter("lgaf-test");
    let steps = meter
        .u64_counter("lgaf.test.steps")
        .with_description("Steps done")
        .build();
    let seconds = meter
        .f64_histogram("lgaf.test.step.duration")
        .with_unit("s")
        .with_boundaries(vec![0.001, 0.01, 0.1])
        .with_description("Step time")
        .build();
    {
        let job = tracing::info_span!("test_job");
        let _job = job.enter();
        for step in 1..=3u64 {
            let kept = step != 2;
            let span = tracing::info_span!("test_step", step, lgaf.sampled = kept);
            let _step = span.enter();
            tracing::info_span!("test_phase", step).in_scope(|| {
                std::thread::sleep(Duration::from_millis(2));
            });
            steps.add(1, &[]);
            seconds.record(0.002, &[]);
        }
    }

    // Prometheus text, checked by Prometheus's own linter.
    let addr = telemetry.metrics_addr().unwrap().to_string();
    let (status, body) = http_get(&addr, "/metrics").unwrap();
    assert_eq!(status, 200, "{body}");
    assert!(
        body.lines()
            .any(|l| l.starts_with("lgaf_test_steps_total") && l.ends_with(" 3")),
        "{body}"
    );
    assert!(
        body.contains("lgaf_test_step_duration_seconds_bucket"),
        "{body}"
    );
    let promtool = installed("LGAF_PROMTOOL", "/usr/bin/promtool", "Debian's prometheus");
    promtool_check(&promtool, "the test process", &body);

    // The spans arrive with the resource; the unsampled step and its child do not.
    rotel.wait_for("test_job", Duration::from_secs(30));
    let spans = rotel.spans();
    let job = spans.iter().find(|s| s.name == "test_job").unwrap();
    assert_eq!(job.resource["lgaf.run.id"], "collector-test");
    assert_eq!(job.resource["service.name"], "lgaf-test");
    let steps: Vec<_> = spans.iter().filter(|s| s.name == "test_step").collect();
    assert_eq!(steps.len(), 2, "{spans:?}");
    assert!(steps
        .iter()
        .all(|s| s.trace_id == job.trace_id && s.parent_id == job.span_id));
    assert_eq!(spans.iter().filter(|s| s.name == "test_phase").count(), 2);

    // The collector goes away: spans keep being made at no cost to the caller, and the
    // export failures are counted.
    drop(rotel);
    let started = Instant::now();
    for step in 0..2000u64 {
        tracing::info_span!("after_the_collector", step).in_scope(|| {});
    }
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    let deadline = Instant::now() + Duration::from_secs(60);
    while telemetry.export_failures() == 0 {
        assert!(Instant::now() < deadline, "no export failure was counted");
        // The batch processor exports every 5 s; a flush-free wait keeps it honest.
        std::thread::sleep(Duration::from_millis(200));
    }
    let started = Instant::now();
    drop(telemetry);
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "shutting down with the collector gone took {:?}",
        started.elapsed()
    );
}
