//! `--log-format json`: one JSON object a line, carrying the trace and span ids of the span
//! the event happened in when tracing is on, so that a log pipeline can join lines to
//! traces. (Its own process: the subscriber is process-wide.)

use std::io::Write;
use std::sync::{Arc, Mutex};

use lgaf_telemetry::propagation::trace_id;
use lgaf_telemetry::{LogFormat, Telemetry, TelemetryArgs, TextStyle};

const PLAIN: TextStyle = TextStyle {
    ansi: false,
    targets: false,
};
use tracing_subscriber::fmt::MakeWriter;

/// Log lines into a buffer the test reads.
#[derive(Clone, Default)]
struct Lines(Arc<Mutex<Vec<u8>>>);

impl Write for Lines {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> MakeWriter<'a> for Lines {
    type Writer = Lines;
    fn make_writer(&'a self) -> Lines {
        self.clone()
    }
}

#[test]
fn json_lines_carry_the_trace_of_their_span() {
    let lines = Lines::default();
    let args = TelemetryArgs {
        log_format: LogFormat::Json,
        // Tracing on (spans recorded); nothing is exported before `start_export`.
        otlp_endpoint: Some("http://127.0.0.1:9".into()),
        ..TelemetryArgs::default()
    };
    let telemetry = Telemetry::init("lgaf-test", &args, lines.clone(), PLAIN).unwrap();
    tracing::info!(outside = 1, "no span here");
    let span = tracing::info_span!("step", step = 7);
    span.in_scope(|| tracing::warn!(loss = 2.5, "inside a step"));
    let expected = trace_id(&span).expect("tracing is on");
    drop(telemetry);

    let text = String::from_utf8(lines.0.lock().unwrap().clone()).unwrap();
    let parsed: Vec<serde_json::Value> = text
        .lines()
        .map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}")))
        .collect();
    let outside = parsed
        .iter()
        .find(|l| l["message"] == "no span here")
        .unwrap();
    assert_eq!(outside["level"], "INFO");
    assert_eq!(outside["fields"]["outside"], 1);
    assert!(outside.get("trace_id").is_none(), "{outside}");
    let inside = parsed
        .iter()
        .find(|l| l["message"] == "inside a step")
        .unwrap();
    assert_eq!(inside["level"], "WARN");
    assert_eq!(inside["span"], "step");
    assert_eq!(inside["fields"]["loss"], 2.5);
    assert_eq!(inside["trace_id"], expected.as_str(), "{inside}");
    assert_eq!(inside["span_id"].as_str().unwrap().len(), 16);
    assert!(inside["timestamp"].as_str().unwrap().ends_with('Z'));
}
