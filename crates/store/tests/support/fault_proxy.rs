//! A fault-injecting TCP proxy for tests: it stands between a client and a real server on
//! loopback, passes bytes through, and on command plays one of the faults an object store
//! shows in production: down (connections refused), overloaded (every request answered
//! `503 SlowDown`, as S3 does), a connection reset in the middle of a request, or slow (a
//! bandwidth cap). Shared by lgaf-store's and the worker's tests (`#[path]`-included).
//!
//! Plain threads and blocking sockets: a handful of connections at a time, and a test
//! needs nothing from it but to be obviously right.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// What the proxy does to traffic from now on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    /// Passes everything through.
    None,
    /// Not listening: every connection is refused, and the open ones are cut.
    Down,
    /// Answers the next `requests` HTTP requests itself with `503 SlowDown` (open
    /// connections are cut, so that pooled ones do not slip past), then passes again.
    SlowDown { requests: u64 },
    /// Cuts the connection that carries byte number `after_bytes` of multipart part uploads
    /// (requests with `partNumber=`, counted from now over every connection), once.
    ResetInPart { after_bytes: u64 },
    /// Passes at most this many bytes a second each way, per connection.
    Throttle { bytes_per_sec: u64 },
}

/// What the proxy has done, for a test to check that its fault happened.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Injected {
    /// Connections accepted and passed through.
    pub connections: u64,
    /// Requests answered with 503 (at most the `requests` asked for).
    pub slow_downs: u64,
    /// Connections cut by `ResetInPart`.
    pub resets: u64,
    /// Request bytes passed to the server.
    pub bytes_up: u64,
}

#[derive(Debug)]
struct State {
    fault: Fault,
    /// Part upload bytes seen since `ResetInPart` was set.
    since_reset_set: u64,
    injected: Injected,
    /// A handle on both sockets of every open connection, to cut them; each removed when
    /// its connection ends (a long chaos run makes thousands).
    open: HashMap<u64, (TcpStream, TcpStream)>,
    next_connection: u64,
    listener: Option<TcpListener>,
}

struct Shared {
    state: Mutex<State>,
    upstream: SocketAddr,
    port: u16,
    stop: AtomicBool,
}

/// The proxy: listening on 127.0.0.1:[`FaultProxy::port`], forwarding to `upstream`.
pub struct FaultProxy {
    shared: Arc<Shared>,
    acceptor: Option<JoinHandle<()>>,
}

impl FaultProxy {
    pub fn start(upstream: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        listener.set_nonblocking(true).unwrap();
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                fault: Fault::None,
                since_reset_set: 0,
                injected: Injected::default(),
                open: HashMap::new(),
                next_connection: 0,
                listener: Some(listener),
            }),
            upstream,
            port,
            stop: AtomicBool::new(false),
        });
        let acceptor = {
            let shared = shared.clone();
            std::thread::spawn(move || accept_loop(&shared))
        };
        Self {
            shared,
            acceptor: Some(acceptor),
        }
    }

    pub fn port(&self) -> u16 {
        self.shared.port
    }

    /// `http://127.0.0.1:<port>`, for `AWS_ENDPOINT_URL` (the `fault_proxy` example
    /// prints the port instead).
    #[allow(dead_code)]
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port())
    }

    /// Plays `fault` from now on.
    pub fn set(&self, fault: Fault) {
        let mut state = self.shared.state.lock().unwrap();
        let cut = matches!(fault, Fault::Down | Fault::SlowDown { .. });
        if cut {
            for (_, (client, server)) in state.open.drain() {
                let _ = client.shutdown(Shutdown::Both);
                let _ = server.shutdown(Shutdown::Both);
            }
        }
        match fault {
            // Unbound: connecting is refused, as with a server that is not running.
            Fault::Down => state.listener = None,
            _ if state.listener.is_none() => {
                // The same port again (std sets SO_REUSEADDR), retried while the old
                // socket's teardown finishes.
                let deadline = Instant::now() + Duration::from_secs(10);
                let listener = loop {
                    match TcpListener::bind(("127.0.0.1", self.shared.port)) {
                        Ok(listener) => break listener,
                        Err(e) if Instant::now() < deadline => {
                            eprintln!("fault proxy: rebinding port {}: {e}", self.shared.port);
                            std::thread::sleep(Duration::from_millis(100));
                        }
                        Err(e) => panic!("fault proxy: cannot listen again: {e}"),
                    }
                };
                listener.set_nonblocking(true).unwrap();
                state.listener = Some(listener);
            }
            _ => {}
        }
        state.since_reset_set = 0;
        state.fault = fault;
    }

    pub fn injected(&self) -> Injected {
        self.shared.state.lock().unwrap().injected
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        if let Some(acceptor) = self.acceptor.take() {
            let _ = acceptor.join();
        }
        let mut state = self.shared.state.lock().unwrap();
        for (_, (client, server)) in state.open.drain() {
            let _ = client.shutdown(Shutdown::Both);
            let _ = server.shutdown(Shutdown::Both);
        }
    }
}

fn accept_loop(shared: &Arc<Shared>) {
    while !shared.stop.load(Ordering::SeqCst) {
        let accepted = {
            let state = shared.state.lock().unwrap();
            state.listener.as_ref().map(|l| l.accept())
        };
        match accepted {
            Some(Ok((client, _))) => {
                client.set_nonblocking(false).unwrap();
                let shared = shared.clone();
                std::thread::spawn(move || serve(&shared, client));
            }
            _ => std::thread::sleep(Duration::from_millis(5)),
        }
    }
}

/// One client connection: answered with 503s while the fault says so, else piped.
fn serve(shared: &Arc<Shared>, mut client: TcpStream) {
    loop {
        let slow_down = {
            let mut state = shared.state.lock().unwrap();
            match state.fault {
                Fault::SlowDown { requests } if requests > 0 => {
                    state.fault = match requests - 1 {
                        0 => Fault::None,
                        left => Fault::SlowDown { requests: left },
                    };
                    true
                }
                _ => false,
            }
        };
        if !slow_down {
            break;
        }
        // Counted only once answered (a client gone before then got no 503).
        if answer_slow_down(&mut client).is_err() {
            return;
        }
        shared.state.lock().unwrap().injected.slow_downs += 1;
    }
    let Ok(server) = TcpStream::connect(shared.upstream) else {
        return;
    };
    let id = {
        let mut state = shared.state.lock().unwrap();
        // Went down while this connection was being made: it must not slip through.
        if state.fault == Fault::Down {
            return;
        }
        state.injected.connections += 1;
        let id = state.next_connection;
        state.next_connection += 1;
        if let (Ok(c), Ok(s)) = (client.try_clone(), server.try_clone()) {
            state.open.insert(id, (c, s));
        }
        id
    };
    let up = {
        let (shared, from, to) = (
            shared.clone(),
            client.try_clone().unwrap(),
            server.try_clone().unwrap(),
        );
        std::thread::spawn(move || pump(&shared, from, to, true))
    };
    pump(shared, server, client, false);
    let _ = up.join();
    shared.state.lock().unwrap().open.remove(&id);
}

/// Reads one HTTP request (head and `Content-Length` body) and answers it as S3 does when
/// it sheds load. Keeps the connection for the next request.
fn answer_slow_down(client: &mut TcpStream) -> std::io::Result<()> {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if client.read(&mut byte)? == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        head.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&head).to_ascii_lowercase();
    let length: u64 = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0);
    std::io::copy(&mut client.take(length), &mut std::io::sink())?;
    let body = "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>SlowDown</Code>\
                <Message>Please reduce your request rate.</Message></Error>";
    write!(
        client,
        "HTTP/1.1 503 Slow Down\r\nContent-Type: application/xml\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
}

/// Copies `from` to `to` until either closes, under the fault of the moment.
fn pump(shared: &Arc<Shared>, mut from: TcpStream, mut to: TcpStream, upward: bool) {
    let mut buf = vec![0u8; 16 << 10];
    // Whether the request going up now uploads a part: a request's head starts a read
    // (the client writes it first and waits for nothing in between), so its first line
    // says.
    let mut in_part = false;
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        if upward {
            if let Some(first_line) = request_line(&buf[..n]) {
                in_part = first_line.contains("partNumber=");
            }
        }
        let (fault, cut) = {
            let mut state = shared.state.lock().unwrap();
            let mut cut = false;
            if upward {
                state.injected.bytes_up += n as u64;
                if let (Fault::ResetInPart { after_bytes }, true) = (state.fault, in_part) {
                    state.since_reset_set += n as u64;
                    if state.since_reset_set >= after_bytes {
                        state.fault = Fault::None;
                        state.injected.resets += 1;
                        cut = true;
                    }
                }
            }
            (state.fault, cut)
        };
        if cut {
            break;
        }
        if let Fault::Throttle { bytes_per_sec } = fault {
            std::thread::sleep(Duration::from_secs_f64(
                n as f64 / bytes_per_sec.max(1) as f64,
            ));
        }
        if to.write_all(&buf[..n]).is_err() {
            break;
        }
    }
    let _ = from.shutdown(Shutdown::Both);
    let _ = to.shutdown(Shutdown::Both);
}

/// The request line if `chunk` starts with one (`PUT /bucket/key?partNumber=2&... HTTP/1.1`).
fn request_line(chunk: &[u8]) -> Option<String> {
    let line = chunk.split(|&b| b == b'\n').next()?;
    let line = String::from_utf8_lossy(line);
    let methods = ["GET ", "PUT ", "POST ", "HEAD ", "DELETE "];
    (methods.iter().any(|m| line.starts_with(m)) && line.trim_end().ends_with("HTTP/1.1"))
        .then(|| line.into_owned())
}
