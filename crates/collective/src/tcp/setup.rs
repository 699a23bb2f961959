//! Forming the full mesh: rank `i` connects to every lower rank and accepts every higher one,
//! both at once, until `connect_timeout`.
//!
//! Connecting retries because peers start at different times. The accepting side answers
//! every greeting with its own hello, even one it refuses, so a worker of another training
//! generation (wrong tag) gets a clear error at once; the acceptor itself ignores the
//! stranger and keeps waiting for the right peer, naming what it refused if none comes.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use super::wire::{Hello, HelloError, HELLO_LEN};
use super::TcpOptions;
use crate::{CollectiveError, Result};

/// Longest wait for the greeting of a connection just accepted (a stray client that says
/// nothing must not hold up the others for the whole connect timeout).
const GREETING_WAIT: Duration = Duration::from_secs(2);
const MAX_BACKOFF: Duration = Duration::from_millis(250);

/// Connection to every other rank, by rank (`None` at `rank`).
pub(super) fn form_mesh(
    rank: usize,
    peers: &[String],
    listener: &TcpListener,
    options: &TcpOptions,
) -> Result<Vec<Option<TcpStream>>> {
    let setup = Setup {
        rank,
        world: peers.len(),
        peers,
        tag: options.group_tag,
        timeout: options.connect_timeout,
        deadline: Instant::now() + options.connect_timeout,
        cancel: AtomicBool::new(false),
    };
    listener
        .set_nonblocking(true)
        .map_err(|e| setup.error(format!("cannot poll the listener: {e}")))?;
    let (accepted, connected) = thread::scope(|s| {
        let acceptor = s.spawn(|| setup.cancel_on_error(setup.accept_higher(listener)));
        let connected = setup.cancel_on_error(setup.connect_lower());
        (acceptor.join(), connected)
    });
    let accepted = accepted.unwrap_or_else(|panic| std::panic::resume_unwind(panic));
    // A cancelled side reports `Err(None)`: the other side's error is the real one.
    let (accepted, connected) = match (accepted, connected) {
        (Ok(a), Ok(c)) => (a, c),
        (_, Err(Some(e))) | (Err(Some(e)), _) => return Err(e),
        (Err(None), Err(None)) | (Ok(_), Err(None)) | (Err(None), Ok(_)) => {
            return Err(setup.error("cancelled".into()))
        }
    };
    let mut streams: Vec<Option<TcpStream>> = (0..setup.world).map(|_| None).collect();
    for (peer, stream) in accepted.into_iter().chain(connected) {
        streams[peer] = Some(stream);
    }
    Ok(streams)
}

/// `None`: given up because the other side failed first.
type Step<T> = std::result::Result<T, Option<CollectiveError>>;

enum Attempt {
    /// Not there yet or went away during the handshake: try again.
    Retry(String),
    /// Something answered, and it is the wrong thing: give up.
    Fatal(String),
}

struct Setup<'a> {
    rank: usize,
    world: usize,
    peers: &'a [String],
    tag: u64,
    timeout: Duration,
    deadline: Instant,
    cancel: AtomicBool,
}

impl Setup<'_> {
    fn error(&self, message: String) -> CollectiveError {
        CollectiveError::Setup {
            rank: self.rank,
            world_size: self.world,
            message,
        }
    }

    fn cancel_on_error<T>(&self, step: Step<T>) -> Step<T> {
        if step.is_err() {
            self.cancel.store(true, Ordering::Relaxed);
        }
        step
    }

    fn cancelled(&self) -> bool {
        self.cancel.load(Ordering::Relaxed)
    }

    fn remaining(&self) -> Option<Duration> {
        let left = self.deadline.saturating_duration_since(Instant::now());
        (!left.is_zero()).then_some(left)
    }

    fn hello(&self) -> [u8; HELLO_LEN] {
        Hello {
            tag: self.tag,
            rank: self.rank as u32,
            world: self.world as u32,
        }
        .encode()
    }

    fn accept_higher(&self, listener: &TcpListener) -> Step<Vec<(usize, TcpStream)>> {
        let mut got: Vec<Option<TcpStream>> = (0..self.world).map(|_| None).collect();
        let mut missing = self.world - self.rank - 1;
        let mut refused: Vec<String> = Vec::new();
        while missing > 0 {
            if self.cancelled() {
                return Err(None);
            }
            match listener.accept() {
                Ok((stream, from)) => match self.greet(stream, from) {
                    Ok((peer, stream)) => {
                        tracing::debug!(rank = self.rank, peer, %from, "collective peer joined");
                        // A peer that retried after a broken handshake replaces its first try.
                        if got[peer].replace(stream).is_none() {
                            missing -= 1;
                        }
                    }
                    Err(reason) => {
                        tracing::warn!(
                            rank = self.rank,
                            "refused a collective connection: {reason}"
                        );
                        refused.push(reason);
                    }
                },
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    if self.remaining().is_none() {
                        let absent: Vec<String> = (self.rank + 1..self.world)
                            .filter(|&p| got[p].is_none())
                            .map(|p| format!("rank {p} ({})", self.peers[p]))
                            .collect();
                        let mut message = format!(
                            "{} did not connect within {:?}",
                            absent.join(", "),
                            self.timeout
                        );
                        if !refused.is_empty() {
                            message += &format!("; refused: {}", refused.join("; "));
                        }
                        return Err(Some(self.error(message)));
                    }
                    thread::sleep(Duration::from_millis(5));
                }
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::Interrupted | io::ErrorKind::ConnectionAborted
                    ) => {}
                Err(e) => {
                    return Err(Some(self.error(format!(
                        "accepting connections on {} failed: {e}",
                        self.peers[self.rank]
                    ))))
                }
            }
        }
        Ok(got
            .into_iter()
            .enumerate()
            .filter_map(|(p, s)| s.map(|s| (p, s)))
            .collect())
    }

    /// Checks an accepted connection's hello and answers it; Err says why it was refused.
    fn greet(
        &self,
        mut stream: TcpStream,
        from: SocketAddr,
    ) -> std::result::Result<(usize, TcpStream), String> {
        let wait = self
            .remaining()
            .unwrap_or(Duration::from_millis(1))
            .min(GREETING_WAIT);
        let io = |e: io::Error| format!("{from}: {e}");
        stream.set_nonblocking(false).map_err(io)?;
        stream.set_nodelay(true).map_err(io)?;
        stream.set_read_timeout(Some(wait)).map_err(io)?;
        stream.set_write_timeout(Some(wait)).map_err(io)?;
        let mut raw = [0u8; HELLO_LEN];
        stream
            .read_exact(&mut raw)
            .map_err(|e| format!("{from} sent no greeting ({e})"))?;
        let hello = match Hello::decode(&raw) {
            Err(e @ HelloError::NotOurs) => return Err(format!("{from}: {e}")),
            Err(e) => {
                let _ = stream.write_all(&self.hello());
                return Err(format!("{from}: {e}"));
            }
            Ok(h) => h,
        };
        let peer = hello.rank as usize;
        let refusal = if hello.tag != self.tag {
            Some(format!(
                "{from} (rank {peer}) is in group tag {} but this group's tag is {}: \
                 a worker of another training generation",
                hello.tag, self.tag
            ))
        } else if hello.world as usize != self.world {
            Some(format!(
                "{from} (rank {peer}) expects a world of {} ranks, this group has {}",
                hello.world, self.world
            ))
        } else if peer <= self.rank || peer >= self.world {
            Some(format!(
                "{from} claims rank {peer}, which does not connect to rank {}",
                self.rank
            ))
        } else {
            None
        };
        // Answer even a refused peer: it can then report the real cause at once.
        let answered = stream.write_all(&self.hello());
        if let Some(refusal) = refusal {
            return Err(refusal);
        }
        answered.map_err(|e| format!("{from} (rank {peer}) went away: {e}"))?;
        Ok((peer, stream))
    }

    fn connect_lower(&self) -> Step<Vec<(usize, TcpStream)>> {
        (0..self.rank)
            .map(|peer| self.connect_to(peer).map(|s| (peer, s)))
            .collect()
    }

    fn connect_to(&self, peer: usize) -> Step<TcpStream> {
        let mut last = String::from("no attempt");
        let mut backoff = Duration::from_millis(10);
        loop {
            if self.cancelled() {
                return Err(None);
            }
            let Some(left) = self.remaining() else {
                return Err(Some(self.error(format!(
                    "could not reach rank {peer} at {} within {:?}: {last}",
                    self.peers[peer], self.timeout
                ))));
            };
            match self.try_connect(peer, left) {
                Ok(stream) => {
                    tracing::debug!(rank = self.rank, peer, "connected to collective peer");
                    return Ok(stream);
                }
                Err(Attempt::Fatal(why)) => return Err(Some(self.error(why))),
                Err(Attempt::Retry(why)) => last = why,
            }
            thread::sleep(backoff.min(left));
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
    }

    fn try_connect(&self, peer: usize, left: Duration) -> std::result::Result<TcpStream, Attempt> {
        let text = &self.peers[peer];
        let addrs = text
            .to_socket_addrs()
            .map_err(|e| Attempt::Retry(format!("cannot resolve {text}: {e}")))?;
        let mut last = Attempt::Retry(format!("{text} resolves to no address"));
        for addr in addrs {
            match TcpStream::connect_timeout(&addr, left) {
                Ok(stream) => return self.handshake(peer, stream, left),
                Err(e) => last = Attempt::Retry(e.to_string()),
            }
        }
        Err(last)
    }

    fn handshake(
        &self,
        peer: usize,
        mut stream: TcpStream,
        left: Duration,
    ) -> std::result::Result<TcpStream, Attempt> {
        let at = &self.peers[peer];
        let retry = |e: io::Error| Attempt::Retry(format!("handshake with {at} broke: {e}"));
        stream.set_nodelay(true).map_err(retry)?;
        stream.set_read_timeout(Some(left)).map_err(retry)?;
        stream.set_write_timeout(Some(left)).map_err(retry)?;
        stream.write_all(&self.hello()).map_err(retry)?;
        let mut raw = [0u8; HELLO_LEN];
        stream.read_exact(&mut raw).map_err(retry)?;
        let hello = Hello::decode(&raw)
            .map_err(|e| Attempt::Fatal(format!("rank {peer} at {at} is wrong: {e}")))?;
        if hello.tag != self.tag {
            return Err(Attempt::Fatal(format!(
                "rank {peer} at {at} is in group tag {} but this rank's tag is {}: \
                 it belongs to another training generation",
                hello.tag, self.tag
            )));
        }
        if hello.world as usize != self.world {
            return Err(Attempt::Fatal(format!(
                "rank {peer} at {at} expects a world of {} ranks, this rank has {}",
                hello.world, self.world
            )));
        }
        if hello.rank as usize != peer {
            return Err(Attempt::Fatal(format!(
                "{at} answered as rank {}, expected rank {peer}: the ranks disagree on the peer list",
                hello.rank
            )));
        }
        Ok(stream)
    }
}
