//! For this workspace's tests: a real OpenTelemetry collector (`rotel`, from PyPI) started on
//! free loopback ports, printing what it receives, and a reader of what it printed. `make
//! test` installs rotel and names it in `LGAF_ROTEL`.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read};
use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A running `rotel` collector that discards what it receives after printing it.
pub struct Collector {
    child: Child,
    output: Arc<Mutex<String>>,
    /// `http://127.0.0.1:PORT` of its OTLP/gRPC receiver.
    pub grpc: String,
    /// `http://127.0.0.1:PORT` of its OTLP/HTTP receiver.
    pub http: String,
}

impl Collector {
    /// Starts the collector named by `LGAF_ROTEL` and waits until it listens. Panics (the
    /// test fails) when it is not installed, saying how to install it.
    pub fn start() -> Collector {
        let program = match std::env::var("LGAF_ROTEL") {
            Ok(path) if std::path::Path::new(&path).exists() => path,
            _ => panic!(
                "LGAF_ROTEL does not name the rotel collector: run `make test`, which installs \
                 it (PyPI rotel, in .venv-otel)"
            ),
        };
        let (grpc, http) = (free_port(), free_port());
        let pid_file =
            std::env::temp_dir().join(format!("lgaf-rotel-{}-{grpc}.pid", std::process::id()));
        let mut child = Command::new(program)
            .args(["start", "--exporter", "blackhole", "--debug-log", "traces"])
            .args(["--debug-log-verbosity", "detailed"])
            .args(["--otlp-grpc-endpoint", &format!("127.0.0.1:{grpc}")])
            .args(["--otlp-http-endpoint", &format!("127.0.0.1:{http}")])
            .args(["--pid-file", &pid_file.display().to_string()])
            .env("NO_COLOR", "1")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("starting rotel");
        let output = Arc::new(Mutex::new(String::new()));
        let pipes: [Box<dyn Read + Send>; 2] = [
            Box::new(child.stdout.take().expect("piped")),
            Box::new(child.stderr.take().expect("piped")),
        ];
        for pipe in pipes {
            let output = Arc::clone(&output);
            std::thread::spawn(move || {
                for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                    let mut output = output.lock().unwrap();
                    output.push_str(&line);
                    output.push('\n');
                }
            });
        }
        let collector = Collector {
            child,
            output,
            grpc: format!("http://127.0.0.1:{grpc}"),
            http: format!("http://127.0.0.1:{http}"),
        };
        collector.wait_for("Starting Rotel", Duration::from_secs(30));
        // It prints that line just before it binds.
        for port in [grpc, http] {
            let deadline = Instant::now() + Duration::from_secs(30);
            while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
                assert!(
                    Instant::now() < deadline,
                    "rotel is not listening on {port}"
                );
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        collector
    }

    /// Everything it printed so far.
    pub fn output(&self) -> String {
        self.output.lock().unwrap().clone()
    }

    /// Waits until it has printed `text`; panics with its output after `timeout`.
    pub fn wait_for(&self, text: &str, timeout: Duration) {
        let started = Instant::now();
        while !self.output().contains(text) {
            assert!(
                started.elapsed() < timeout,
                "rotel printed no {text:?} within {timeout:?}:\n{}",
                self.output()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The spans it received so far.
    pub fn spans(&self) -> Vec<ReceivedSpan> {
        parse_spans(&self.output())
    }
}

impl Drop for Collector {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One span as the collector printed it, with its resource's attributes.
#[derive(Clone, Debug, Default)]
pub struct ReceivedSpan {
    pub resource: BTreeMap<String, String>,
    pub name: String,
    pub trace_id: String,
    pub span_id: String,
    pub parent_id: String,
    pub attributes: BTreeMap<String, String>,
}

/// Reads rotel's `--debug-log-verbosity detailed` listing: `ResourceSpans` blocks with
/// `Resource attributes:` and `Span #n` entries of `Trace ID`, `Parent ID`, `ID`, `Name`
/// and `Attributes:` (`-> key: Kind(value)`).
pub fn parse_spans(text: &str) -> Vec<ReceivedSpan> {
    enum In {
        Resource,
        Span,
        Other,
    }
    let mut spans = Vec::new();
    let mut resource = BTreeMap::new();
    let mut current: Option<ReceivedSpan> = None;
    let mut section = In::Other;
    for line in text.lines() {
        let trimmed = line.trim();
        if trimmed.starts_with("ResourceSpans #") {
            spans.extend(current.take());
            resource = BTreeMap::new();
            section = In::Other;
        } else if trimmed == "Resource attributes:" {
            section = In::Resource;
        } else if trimmed.starts_with("Span #") {
            spans.extend(current.take());
            current = Some(ReceivedSpan {
                resource: resource.clone(),
                ..ReceivedSpan::default()
            });
            section = In::Other;
        } else if trimmed == "Attributes:" && current.is_some() {
            section = In::Span;
        } else if let Some(kv) = trimmed.strip_prefix("-> ") {
            let Some((key, value)) = kv.split_once(": ") else {
                continue;
            };
            // `Str(x)`, `Int(3)`, `Bool(true)`: the value inside.
            let value = value
                .split_once('(')
                .and_then(|(_, v)| v.strip_suffix(')'))
                .unwrap_or(value)
                .to_string();
            match section {
                In::Resource => {
                    resource.insert(key.to_string(), value);
                }
                In::Span => {
                    if let Some(span) = current.as_mut() {
                        span.attributes.insert(key.to_string(), value);
                    }
                }
                In::Other => {}
            }
        } else if let (Some(span), Some((key, value))) = (current.as_mut(), trimmed.split_once(':'))
        {
            let value = value.trim().to_string();
            match key.trim() {
                "Trace ID" => span.trace_id = value,
                "Parent ID" => span.parent_id = value,
                "ID" => span.span_id = value,
                "Name" => span.name = value,
                _ => {}
            }
        }
    }
    spans.extend(current);
    spans
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_collectors_listing() {
        let text = "\
ResourceSpans #0
Resource attributes:
     -> service.name: Str(lgaf-worker)
     -> lgaf.slot: Int(1)
ScopeSpans #0
Span #0
    Trace ID       : 3e13
    Parent ID      : 327b
    ID             : a2eb
    Name           : step
    Kind           : SPAN_KIND_INTERNAL
Attributes:
     -> step: Int(4)
     -> lgaf.sampled: Bool(true)
Span #1
    Trace ID       : 3e13
    Parent ID      : 
    ID             : 327b
    Name           : generation
ResourceSpans #1
Resource attributes:
     -> service.name: Str(lgaf-coordinator)
Span #0
    Trace ID       : 3e13
    Parent ID      : 
    ID             : 0001
    Name           : job
";
        let spans = parse_spans(text);
        assert_eq!(spans.len(), 3);
        assert_eq!(spans[0].name, "step");
        assert_eq!(spans[0].resource["lgaf.slot"], "1");
        assert_eq!(spans[0].attributes["step"], "4");
        assert_eq!(spans[0].parent_id, "327b");
        assert_eq!(spans[1].name, "generation");
        assert_eq!(spans[1].parent_id, "");
        assert!(spans[1].attributes.is_empty());
        assert_eq!(spans[2].resource["service.name"], "lgaf-coordinator");
        assert_eq!(spans[2].trace_id, "3e13");
    }
}
