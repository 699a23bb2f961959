//! The connections of one rank: a sender thread per peer fed by a queue, the calling
//! thread's blocking reads with their timeouts, and the group-wide failure state.
//!
//! Sending happens on the per-link threads so that a rank can write to one peer while it
//! reads from another: in a ring every rank writes to its successor before it reads from its
//! predecessor, which would deadlock on full socket buffers if writes blocked the caller.
//!
//! Blame: a rank waiting for data gives up on the peer it waits for when that peer has been
//! silent for `op_timeout`. A peer that is itself stuck waiting for someone else sends
//! heartbeats while it waits, so it is not blamed; whoever waits on the real culprit detects
//! it, and its abort frame travels to every rank so all of them name the same peer.

use std::io::{self, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use super::fault::{Failure, Fault};
use super::wire::{FrameKind, Header, OpDesc, OpKind, HEADER_LEN};

/// Largest abort payload accepted; anything longer means the stream is garbage.
const MAX_ABORT_BYTES: u64 = 64 * 1024;
/// Frame buffers kept for reuse (each up to one chunk plus a header).
const POOL_SIZE: usize = 16;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// What the sender threads need to know about the calling thread, and the group's fate.
pub(super) struct Shared {
    pub rank: usize,
    failed: AtomicBool,
    failure: Mutex<Option<Failure>>,
    /// Queue into each peer's sender thread; `None` for self, and for everyone once the group
    /// failed or is being dropped (closing the queue lets the thread flush and exit).
    senders: Mutex<Vec<Option<Sender<Vec<u8>>>>>,
    status: Mutex<Status>,
    waiting_on: AtomicUsize,
    pool: Mutex<Vec<Vec<u8>>>,
}

#[derive(Default)]
struct Status {
    /// The operation in progress, if any: heartbeats are sent only inside one.
    op: Option<OpDesc>,
    /// The last operation started, named in abort frames.
    last_op: Option<OpDesc>,
    /// Peers that may be waiting for this rank's data in `op`: the ones heartbeats go to.
    targets: Vec<bool>,
}

impl Shared {
    pub fn new(rank: usize, senders: Vec<Option<Sender<Vec<u8>>>>) -> Self {
        Self {
            rank,
            failed: AtomicBool::new(false),
            failure: Mutex::new(None),
            senders: Mutex::new(senders),
            status: Mutex::new(Status::default()),
            waiting_on: AtomicUsize::new(rank),
            pool: Mutex::new(Vec::new()),
        }
    }

    pub fn has_failed(&self) -> bool {
        self.failed.load(Ordering::Acquire)
    }

    pub fn failure(&self) -> Option<Failure> {
        lock(&self.failure).clone()
    }

    /// Records the group's first failure and tells every peer (later ones are consequences).
    pub fn fail(&self, failure: Failure) {
        let mut slot = lock(&self.failure);
        if slot.is_some() {
            return;
        }
        tracing::debug!(rank = self.rank, ?failure, "collective group failed");
        let payload = failure.encode();
        *slot = Some(failure);
        self.failed.store(true, Ordering::Release);
        drop(slot);
        let op = lock(&self.status).last_op.unwrap_or(OpDesc {
            seq: 0,
            kind: OpKind::Barrier,
            len: 0,
        });
        let header = Header {
            kind: FrameKind::Abort,
            op,
            arg: payload.len() as u64,
        };
        let senders = std::mem::take(&mut *lock(&self.senders));
        for tx in senders.into_iter().flatten() {
            // Queued behind any data already sent, then the thread flushes and exits.
            let _ = tx.send(self.frame(&header, &payload));
        }
    }

    /// Closes every queue without an abort (the group is being dropped).
    pub fn close_all(&self) {
        lock(&self.senders).clear();
    }

    /// Queues a frame to `peer`; Err once the group has failed.
    pub fn send(&self, peer: usize, frame: Vec<u8>) -> Result<(), ()> {
        let senders = lock(&self.senders);
        match senders.get(peer).and_then(Option::as_ref) {
            Some(tx) => tx.send(frame).map_err(|_| ()),
            None => Err(()),
        }
    }

    pub fn frame(&self, header: &Header, payload: &[u8]) -> Vec<u8> {
        let mut buf = lock(&self.pool).pop().unwrap_or_default();
        buf.clear();
        buf.extend_from_slice(&header.encode());
        buf.extend_from_slice(payload);
        buf
    }

    fn recycle(&self, buf: Vec<u8>) {
        let mut pool = lock(&self.pool);
        if pool.len() < POOL_SIZE {
            pool.push(buf);
        }
    }

    /// Enters `op`; heartbeats go to `targets` while it waits.
    pub fn begin(&self, op: OpDesc, targets: Vec<bool>) {
        let mut s = lock(&self.status);
        s.op = Some(op);
        s.last_op = Some(op);
        s.targets = targets;
    }

    pub fn end(&self) {
        lock(&self.status).op = None;
    }

    fn heartbeat_for(&self, peer: usize) -> Option<[u8; HEADER_LEN]> {
        let s = lock(&self.status);
        let op = s.op?;
        if !s.targets.get(peer).copied().unwrap_or(false) {
            return None;
        }
        Some(
            Header {
                kind: FrameKind::Heartbeat,
                op,
                arg: self.waiting_on.load(Ordering::Relaxed) as u64,
            }
            .encode(),
        )
    }
}

pub(super) fn spawn_sender(
    peer: usize,
    stream: TcpStream,
    rx: Receiver<Vec<u8>>,
    shared: Arc<Shared>,
    heartbeat_every: Duration,
    op_timeout: Duration,
) -> io::Result<JoinHandle<()>> {
    thread::Builder::new()
        .name(format!("lgaf-tcp-send-{peer}"))
        .spawn(move || sender_loop(peer, stream, rx, &shared, heartbeat_every, op_timeout))
}

/// Writes queued frames in order; sends a heartbeat when idle inside an operation; on a
/// write error or timeout fails the group, blaming this link's peer.
fn sender_loop(
    peer: usize,
    mut stream: TcpStream,
    rx: Receiver<Vec<u8>>,
    shared: &Shared,
    heartbeat_every: Duration,
    op_timeout: Duration,
) {
    let mut last_write = Instant::now();
    loop {
        let result = match rx.recv_timeout(heartbeat_every) {
            Ok(frame) => {
                let r = stream.write_all(&frame);
                shared.recycle(frame);
                last_write = Instant::now();
                r
            }
            Err(RecvTimeoutError::Timeout) => match shared.heartbeat_for(peer) {
                Some(hb) if last_write.elapsed() >= heartbeat_every => {
                    last_write = Instant::now();
                    stream.write_all(&hb)
                }
                _ => Ok(()),
            },
            Err(RecvTimeoutError::Disconnected) => {
                let _ = stream.shutdown(Shutdown::Write);
                return;
            }
        };
        if let Err(e) = result {
            let fault = match e.kind() {
                io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => Fault::Timeout {
                    waited_ms: op_timeout.as_millis() as u64,
                },
                kind => Fault::Io {
                    kind,
                    message: format!("sending failed: {e}"),
                },
            };
            shared.fail(Failure {
                culprit: peer,
                seen_by: shared.rank,
                fault,
            });
            return;
        }
    }
}

/// The receiving half of one connection, used only by the calling thread.
pub(super) struct Reader {
    pub peer: usize,
    stream: TcpStream,
}

impl Reader {
    /// `stream` must have its read timeout set to the polling tick.
    pub fn new(peer: usize, stream: TcpStream) -> Self {
        Self { peer, stream }
    }

    /// Reads this peer's next data frame of `op` into `dest`, which must be exactly as long
    /// as the frame's payload. Heartbeats are consumed; an abort or any disagreement fails.
    fn recv(
        &mut self,
        shared: &Shared,
        op_timeout: Duration,
        op: &OpDesc,
        dest: &mut [u8],
    ) -> Result<(), Failure> {
        shared.waiting_on.store(self.peer, Ordering::Relaxed);
        let mut clock = Clock {
            start: Instant::now(),
            heard: Instant::now(),
            op_timeout,
        };
        loop {
            let mut raw = [0u8; HEADER_LEN];
            self.fill(&mut raw, shared, &mut clock)?;
            let header = Header::decode(&raw)
                .map_err(|garbled| self.mismatch(shared, op.to_string(), garbled.to_string()))?;
            match header.kind {
                FrameKind::Heartbeat => {
                    // Same operation number but another operation: it will never send ours.
                    if header.op.seq == op.seq && header.op != *op {
                        return Err(self.mismatch(shared, op.to_string(), header.op.to_string()));
                    }
                }
                FrameKind::Abort => {
                    if header.arg > MAX_ABORT_BYTES {
                        return Err(self.mismatch(
                            shared,
                            op.to_string(),
                            format!("an abort frame of {} bytes", header.arg),
                        ));
                    }
                    let mut payload = vec![0u8; header.arg as usize];
                    self.fill(&mut payload, shared, &mut clock)?;
                    return Err(Failure::decode(&payload).unwrap_or_else(|| {
                        self.mismatch(shared, op.to_string(), "an undecodable abort frame".into())
                    }));
                }
                FrameKind::Data => {
                    if header.op != *op {
                        return Err(self.mismatch(shared, op.to_string(), header.op.to_string()));
                    }
                    if header.arg != dest.len() as u64 {
                        return Err(self.mismatch(
                            shared,
                            format!("{op}, a frame of {} bytes", dest.len()),
                            format!("{}, a frame of {} bytes", header.op, header.arg),
                        ));
                    }
                    return self.fill(dest, shared, &mut clock);
                }
            }
        }
    }

    /// Reads exactly `buf`, polling so a failure seen by another thread is noticed promptly.
    fn fill(&mut self, buf: &mut [u8], shared: &Shared, clock: &mut Clock) -> Result<(), Failure> {
        let mut got = 0;
        while got < buf.len() {
            match self.stream.read(&mut buf[got..]) {
                Ok(0) => {
                    return Err(self.io_failure(
                        shared,
                        io::ErrorKind::UnexpectedEof,
                        "it closed the connection".into(),
                    ))
                }
                Ok(n) => {
                    got += n;
                    clock.heard = Instant::now();
                }
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                    ) =>
                {
                    if let Some(f) = shared.has_failed().then(|| shared.failure()).flatten() {
                        return Err(f);
                    }
                    if let Some(waited) = clock.expired() {
                        return Err(Failure {
                            culprit: self.peer,
                            seen_by: shared.rank,
                            fault: Fault::Timeout {
                                waited_ms: waited.as_millis() as u64,
                            },
                        });
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(self.io_failure(shared, e.kind(), e.to_string())),
            }
        }
        Ok(())
    }

    fn io_failure(&self, shared: &Shared, kind: io::ErrorKind, message: String) -> Failure {
        // A broken connection is often the echo of a failure a peer already reported to us
        // through another link: prefer that, it names the real culprit.
        if let Some(f) = shared.failure() {
            return f;
        }
        Failure {
            culprit: self.peer,
            seen_by: shared.rank,
            fault: Fault::Io { kind, message },
        }
    }

    fn mismatch(&self, shared: &Shared, expected: String, found: String) -> Failure {
        Failure {
            culprit: self.peer,
            seen_by: shared.rank,
            fault: Fault::Mismatch { expected, found },
        }
    }
}

/// When to give up waiting for one frame.
struct Clock {
    start: Instant,
    heard: Instant,
    op_timeout: Duration,
}

impl Clock {
    /// Silent for `op_timeout`, or alive (heartbeats) but without data for twice that: by
    /// then whoever it waits for has been blamed and the abort would have reached us.
    fn expired(&self) -> Option<Duration> {
        let silent = self.heard.elapsed();
        if silent >= self.op_timeout {
            return Some(silent);
        }
        let waited = self.start.elapsed();
        (waited >= self.op_timeout.saturating_mul(2)).then_some(waited)
    }
}

/// One operation in progress on the calling thread.
pub(super) struct Ctx<'a> {
    pub rank: usize,
    pub world: usize,
    op: OpDesc,
    shared: &'a Shared,
    readers: &'a mut [Option<Reader>],
    op_timeout: Duration,
}

impl<'a> Ctx<'a> {
    pub fn new(
        rank: usize,
        world: usize,
        op: OpDesc,
        shared: &'a Shared,
        readers: &'a mut [Option<Reader>],
        op_timeout: Duration,
    ) -> Self {
        Self {
            rank,
            world,
            op,
            shared,
            readers,
            op_timeout,
        }
    }

    /// Declares which peers may wait for this rank's data (they get heartbeats).
    pub fn heartbeat_to(&self, peers: &[usize]) {
        let mut targets = vec![false; self.world];
        for &p in peers {
            targets[p] = true;
        }
        self.shared.begin(self.op, targets);
    }

    pub fn heartbeat_to_all(&self) {
        let mut targets = vec![true; self.world];
        targets[self.rank] = false;
        self.shared.begin(self.op, targets);
    }

    /// Queues `payload` to `peer` as one data frame (copied: the caller keeps its buffer).
    pub fn send(&self, peer: usize, payload: &[u8]) -> Result<(), Failure> {
        let header = Header {
            kind: FrameKind::Data,
            op: self.op,
            arg: payload.len() as u64,
        };
        self.shared
            .send(peer, self.shared.frame(&header, payload))
            .map_err(|()| self.shared_failure())
    }

    /// Receives `peer`'s next data frame into `dest` (same length).
    pub fn recv(&mut self, peer: usize, dest: &mut [u8]) -> Result<(), Failure> {
        let reader = self.readers[peer]
            .as_mut()
            .expect("a connection to every other rank");
        reader.recv(self.shared, self.op_timeout, &self.op, dest)
    }

    fn shared_failure(&self) -> Failure {
        self.shared.failure().unwrap_or(Failure {
            culprit: self.rank,
            seen_by: self.rank,
            fault: Fault::Io {
                kind: io::ErrorKind::BrokenPipe,
                message: "the group's sender threads are gone".into(),
            },
        })
    }
}

/// Creates the queue for one peer's sender thread.
pub(super) fn queue() -> (Sender<Vec<u8>>, Receiver<Vec<u8>>) {
    mpsc::channel()
}
