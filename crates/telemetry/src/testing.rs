//! For this workspace's tests, against the real receivers a user runs: a real
//! OpenTelemetry collector (`rotel`, from PyPI) started on free loopback ports, printing
//! what it receives, and a reader of what it printed; and the helpers of the Prometheus
//! checks (a plain HTTP GET, `promtool check metrics`). `make test` installs rotel and
//! Prometheus and names them in `LGAF_ROTEL` and `LGAF_PROMTOOL`/`LGAF_PROMETHEUS`.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
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
    /// test fails) when it is not installed, saying how to install it. A port taken between
    /// choosing it and the collector binding it (tests run in parallel) means another try.
    pub fn start() -> Collector {
        let program = installed("LGAF_ROTEL", "", "rotel (PyPI, in .venv-otel)");
        let mut last_output = String::new();
        for _ in 0..3 {
            match Self::try_start(&program) {
                Ok(collector) => return collector,
                Err(output) => last_output = output,
            }
        }
        panic!("rotel did not start listening, three times:\n{last_output}")
    }

    fn try_start(program: &Path) -> Result<Collector, String> {
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
        let mut collector = Collector {
            child,
            output,
            grpc: format!("http://127.0.0.1:{grpc}"),
            http: format!("http://127.0.0.1:{http}"),
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        for port in [grpc, http] {
            while TcpStream::connect(("127.0.0.1", port)).is_err() {
                let exited = collector.child.try_wait().ok().flatten().is_some();
                if exited || Instant::now() > deadline {
                    return Err(collector.output());
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        Ok(collector)
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

/// A free port on loopback (bound, then let go for the server about to take it).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

/// The program `var` names (else `default`); fails the test, saying how to install it,
/// when it is not there.
pub fn installed(var: &str, default: &str, what: &str) -> PathBuf {
    let path = PathBuf::from(std::env::var(var).unwrap_or_else(|_| default.to_string()));
    assert!(
        path.is_file(),
        "`{}` (${var}) is not installed: `make test` installs it ({what})",
        path.display()
    );
    path
}

/// `GET http://{addr}{path}`: the status code and the body. HTTP/1.0, so the server closes
/// the connection after the body and sends it unchunked.
pub fn http_get(addr: &str, path: &str) -> std::io::Result<(u16, String)> {
    let mut stream = TcpStream::connect(addr)?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    stream.set_write_timeout(Some(Duration::from_secs(10)))?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n")?;
    let mut response = Vec::new();
    stream.read_to_end(&mut response)?;
    let response = String::from_utf8_lossy(&response);
    let malformed = |what: &str| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("GET http://{addr}{path}: {what}: {response:?}"),
        )
    };
    let (head, body) = response
        .split_once("\r\n\r\n")
        .ok_or_else(|| malformed("no end of headers"))?;
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .ok_or_else(|| malformed("no status line"))?;
    if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        return Err(malformed("a chunked answer to an HTTP/1.0 request"));
    }
    Ok((status, body.to_string()))
}

/// `promtool check metrics` over `exposition` (the text of `who`'s endpoint): it must exit
/// 0 and say nothing, or the test fails with what it said.
pub fn promtool_check(promtool: &Path, who: &str, exposition: &str) {
    let mut child = Command::new(promtool)
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("starting promtool");
    child
        .stdin
        .take()
        .expect("piped")
        .write_all(exposition.as_bytes())
        .expect("writing to promtool");
    let out = child.wait_with_output().expect("promtool's output");
    let said =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && said.trim().is_empty(),
        "promtool check metrics on {who}'s endpoint: {}\n{said}\nthe exposition:\n{exposition}",
        out.status
    );
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
