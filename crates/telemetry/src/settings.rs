//! What the user sets: the flags shared by `lgaf-coordinator`, `lgaf-worker` and `lgaf`, each
//! with the standard OpenTelemetry environment variable (or an `LGAF_` one) behind it.

use std::net::SocketAddr;

/// Logging, tracing and metrics flags (flattened into each binary's arguments).
#[derive(clap::Args, Clone, Debug, Default)]
pub struct TelemetryArgs {
    /// Log lines as text (default) or as one JSON object a line, with the trace and span
    /// ids of the current span when tracing is on.
    #[arg(long, global = true, value_enum, env = "LGAF_LOG_FORMAT", default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,

    /// OTLP endpoint to export traces and metrics to (e.g. http://collector:4317 for gRPC,
    /// http://collector:4318 for HTTP). Unset: no export, at no cost.
    #[arg(long, global = true, env = "OTEL_EXPORTER_OTLP_ENDPOINT")]
    pub otlp_endpoint: Option<String>,

    /// OTLP transport: `grpc` or `http/protobuf`.
    #[arg(long, global = true, value_enum, env = "OTEL_EXPORTER_OTLP_PROTOCOL", default_value_t = OtlpProtocol::Grpc)]
    pub otlp_protocol: OtlpProtocol,

    /// Address of the Prometheus text endpoint (`/metrics`), e.g. 0.0.0.0:9464; port 0 takes
    /// a free one (printed at start). Unset: no endpoint.
    #[arg(long, global = true, env = "LGAF_METRICS_LISTEN")]
    pub metrics_listen: Option<SocketAddr>,

    /// On ranks other than 0, trace one training step in this many (rank 0 traces every
    /// step the sampler keeps). 0 traces none of theirs.
    #[arg(
        long,
        global = true,
        env = "LGAF_TRACE_STEP_EVERY",
        default_value_t = 10
    )]
    pub trace_step_every: u64,
}

impl TelemetryArgs {
    /// Whether spans are exported (an OTLP endpoint is set).
    pub fn traces_on(&self) -> bool {
        self.otlp_endpoint.as_deref().is_some_and(|e| !e.is_empty())
    }

    /// Whether training step `step` of rank `rank` is traced under these flags.
    pub fn step_traced(&self, rank: u32, step: u64) -> bool {
        step_traced(rank, step, self.trace_step_every)
    }
}

impl TelemetryArgs {
    /// The environment that gives a child worker in `slot` these settings: the same log
    /// format, export and step sampling, and a metrics endpoint of its own (port 0 stays
    /// 0, any free port; a fixed port P gives slot s the port P + 1 + s).
    pub fn child_env(&self, slot: u32) -> Vec<(&'static str, String)> {
        let mut env = vec![
            ("LGAF_LOG_FORMAT", self.log_format.as_str().to_string()),
            ("LGAF_TRACE_STEP_EVERY", self.trace_step_every.to_string()),
            (
                "OTEL_EXPORTER_OTLP_PROTOCOL",
                self.otlp_protocol.as_str().to_string(),
            ),
        ];
        if let Some(endpoint) = &self.otlp_endpoint {
            env.push(("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.clone()));
        }
        if let Some(addr) = self.metrics_listen {
            let port = match addr.port() {
                0 => 0,
                port => port.saturating_add(1).saturating_add(slot as u16),
            };
            env.push((
                "LGAF_METRICS_LISTEN",
                std::net::SocketAddr::new(addr.ip(), port).to_string(),
            ));
        }
        env
    }
}

/// Whether training step `step` of rank `rank` is traced when other ranks trace one step in
/// `every` (before the trace sampler, which may drop the whole trace): every step of rank 0,
/// which is the job's timeline, and a sample of the others, whose steps mirror it.
pub fn step_traced(rank: u32, step: u64, every: u64) -> bool {
    rank == 0 || (every > 0 && step.is_multiple_of(every))
}

#[derive(clap::ValueEnum, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

impl LogFormat {
    /// The flag's value.
    pub fn as_str(self) -> &'static str {
        match self {
            LogFormat::Text => "text",
            LogFormat::Json => "json",
        }
    }
}

/// The values of `OTEL_EXPORTER_OTLP_PROTOCOL` this build exports with.
#[derive(clap::ValueEnum, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum OtlpProtocol {
    #[default]
    Grpc,
    #[value(name = "http/protobuf")]
    HttpProtobuf,
}

impl OtlpProtocol {
    /// The value of `OTEL_EXPORTER_OTLP_PROTOCOL`.
    pub fn as_str(self) -> &'static str {
        match self {
            OtlpProtocol::Grpc => "grpc",
            OtlpProtocol::HttpProtobuf => "http/protobuf",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        telemetry: TelemetryArgs,
    }

    #[test]
    fn flags_parse_and_default_to_off() {
        let cli = Cli::try_parse_from(["x"]).unwrap();
        assert!(!cli.telemetry.traces_on() || std::env::var("OTEL_EXPORTER_OTLP_ENDPOINT").is_ok());
        let cli = Cli::try_parse_from([
            "x",
            "--log-format",
            "json",
            "--otlp-endpoint",
            "http://127.0.0.1:4318",
            "--otlp-protocol",
            "http/protobuf",
            "--metrics-listen",
            "127.0.0.1:0",
            "--trace-step-every",
            "4",
        ])
        .unwrap();
        let t = cli.telemetry;
        assert_eq!(t.log_format, LogFormat::Json);
        assert_eq!(t.otlp_protocol, OtlpProtocol::HttpProtobuf);
        assert!(t.traces_on());
        assert_eq!(t.metrics_listen.unwrap().port(), 0);
        assert!(t.step_traced(0, 3));
        assert!(!t.step_traced(1, 3));
        assert!(t.step_traced(1, 8));
        assert!(Cli::try_parse_from(["x", "--otlp-protocol", "http/json"]).is_err());
    }

    #[test]
    fn children_get_the_settings_and_ports_of_their_own() {
        let parent = TelemetryArgs {
            log_format: LogFormat::Json,
            otlp_endpoint: Some("http://c:4318".into()),
            otlp_protocol: OtlpProtocol::HttpProtobuf,
            metrics_listen: Some("0.0.0.0:9464".parse().unwrap()),
            trace_step_every: 5,
        };
        // What the child's own flags read from that environment.
        for (slot, port) in [(0, 9465), (3, 9468)] {
            let env = parent.child_env(slot);
            let get = |key: &str| env.iter().find(|(k, _)| *k == key).unwrap().1.clone();
            assert_eq!(get("LGAF_LOG_FORMAT"), "json");
            assert_eq!(get("OTEL_EXPORTER_OTLP_ENDPOINT"), "http://c:4318");
            assert_eq!(get("OTEL_EXPORTER_OTLP_PROTOCOL"), "http/protobuf");
            assert_eq!(get("LGAF_TRACE_STEP_EVERY"), "5");
            assert_eq!(get("LGAF_METRICS_LISTEN"), format!("0.0.0.0:{port}"));
        }
        let quiet = TelemetryArgs::default().child_env(1);
        assert!(quiet
            .iter()
            .all(|(k, _)| *k != "OTEL_EXPORTER_OTLP_ENDPOINT"));
        assert!(quiet.iter().all(|(k, _)| *k != "LGAF_METRICS_LISTEN"));
        let any = TelemetryArgs {
            metrics_listen: Some("127.0.0.1:0".parse().unwrap()),
            ..TelemetryArgs::default()
        };
        assert!(any
            .child_env(2)
            .contains(&("LGAF_METRICS_LISTEN", "127.0.0.1:0".to_string())));
    }

    #[test]
    fn no_sampling_of_other_ranks_at_zero() {
        let t = TelemetryArgs {
            trace_step_every: 0,
            ..Default::default()
        };
        assert!(t.step_traced(0, 5));
        assert!(!t.step_traced(2, 0));
    }
}
