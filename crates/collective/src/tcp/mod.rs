//! The CPU backend: collectives over plain TCP between the ranks of one training generation.
//!
//! - **Mesh.** Every pair of ranks shares one connection ([`TcpGroup::connect`] forms them),
//!   so small operations reach every peer in one round trip while large all-reduces and
//!   broadcasts walk a pipelined ring or chain between neighbours.
//! - **Framing.** Every message travels behind a header carrying the operation's sequence
//!   number, kind, element type, root and byte length: ranks that disagree get
//!   [`CollectiveError::Mismatch`] instead of garbage.
//! - **Overlap.** Each connection has a sender thread fed by a queue; the calling thread only
//!   receives and reduces. A ring step therefore writes to the next rank while it reads from
//!   the previous one, and full socket buffers cannot deadlock two ranks writing to each other.
//!   The cost is one copy of what is sent (at most the buffer's size in flight).
//! - **Same bits everywhere.** Each element is reduced by one fixed sequence of operations per
//!   world size and length, evaluated once (ring: on one rank, whose bits are then copied) or
//!   identically on every rank (direct exchange: folded in rank order), so every rank holds
//!   identical results and a rerun reproduces them.
//! - **Failures.** A closed connection is an [`CollectiveError::Io`] at once; silence for
//!   `op_timeout` is a [`CollectiveError::Timeout`]. Ranks that are merely waiting on someone
//!   else send heartbeats so they are not blamed, and the rank that detects a failure sends an
//!   abort frame to all, so every rank names the same culprit. A failed group stays failed.

mod algo;
mod fault;
mod link;
mod setup;
mod wire;

use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use fault::{Failure, Fault};
use link::{Ctx, Reader, Shared};
use wire::{OpDesc, OpKind};

use crate::{CollectiveError, Communicator, ReduceBuf, ReduceOp, Result};

/// How long a dropped group lets its sender threads flush (an abort frame, typically) before
/// it closes the connections under them.
const FLUSH_GRACE: Duration = Duration::from_millis(500);
/// Longer timeouts are cut to this (a year is forever for a training step).
const MAX_TIMEOUT: Duration = Duration::from_secs(365 * 24 * 3600);

/// Timeouts and identity of a group.
#[derive(Clone, Debug)]
pub struct TcpOptions {
    /// How long a peer may stay silent inside an operation before it is declared dead or hung.
    /// Must exceed the longest gap between ranks entering the same operation.
    pub op_timeout: Duration,
    /// How long [`TcpGroup::connect`] keeps trying to reach the peers (they start at
    /// different times).
    pub connect_timeout: Duration,
    /// The training generation. A peer with another tag is refused at connect, so a worker
    /// left over from an earlier generation cannot join (or corrupt) a new group.
    pub group_tag: u64,
}

impl Default for TcpOptions {
    fn default() -> Self {
        Self {
            op_timeout: Duration::from_secs(300),
            connect_timeout: Duration::from_secs(120),
            group_tag: 0,
        }
    }
}

/// One rank's membership of a group connected over TCP. Operations take `&self` but are
/// serialized: collectives have a single order on every rank.
pub struct TcpGroup {
    rank: usize,
    world: usize,
    addrs: Vec<String>,
    op_timeout: Duration,
    shared: Arc<Shared>,
    inner: Mutex<Inner>,
    /// Handles on every connection, to close them when dropped.
    streams: Vec<TcpStream>,
    threads: Vec<JoinHandle<()>>,
}

struct Inner {
    seq: u64,
    readers: Vec<Option<Reader>>,
    /// The failure was already returned once; later calls say the group is unusable.
    reported: bool,
}

impl std::fmt::Debug for TcpGroup {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TcpGroup")
            .field("rank", &self.rank)
            .field("world", &self.world)
            .field("addrs", &self.addrs)
            .finish_non_exhaustive()
    }
}

impl TcpGroup {
    /// Joins the group as `rank`. `peers` holds every rank's `host:port` by rank, the same
    /// list on every rank; `listener` is already bound to `peers[rank]` (binding before the
    /// list is published avoids port races). Returns once connected to every other rank, or
    /// fails with [`CollectiveError::Setup`] after `connect_timeout`. A world of one needs no
    /// sockets.
    pub fn connect(
        rank: usize,
        peers: &[String],
        listener: TcpListener,
        options: TcpOptions,
    ) -> Result<Self> {
        let world = peers.len();
        let setup_error = |message: String| CollectiveError::Setup {
            rank,
            world_size: world,
            message,
        };
        if rank >= world {
            return Err(setup_error(format!(
                "rank {rank} is outside the peer list of {world} addresses"
            )));
        }
        if options.op_timeout.is_zero() || options.connect_timeout.is_zero() {
            return Err(setup_error("timeouts must be positive".into()));
        }
        // "Forever" must not overflow instants and socket timeouts.
        let options = TcpOptions {
            op_timeout: options.op_timeout.min(MAX_TIMEOUT),
            connect_timeout: options.connect_timeout.min(MAX_TIMEOUT),
            ..options
        };
        let streams = if world == 1 {
            vec![None]
        } else {
            setup::form_mesh(rank, peers, &listener, &options)?
        };
        drop(listener);

        let op_timeout = options.op_timeout;
        // Readers poll at `tick` to notice failures seen by other threads; waiting peers get
        // a heartbeat every `heartbeat` (several per `op_timeout`).
        let tick = (op_timeout / 8).clamp(Duration::from_millis(1), Duration::from_millis(200));
        let heartbeat = (op_timeout / 4).clamp(Duration::from_millis(1), Duration::from_secs(1));
        let io_error = |peer: usize, e: std::io::Error| {
            setup_error(format!("configuring the connection to rank {peer}: {e}"))
        };

        let mut senders = Vec::with_capacity(world);
        let mut readers = Vec::with_capacity(world);
        let mut queues = Vec::new();
        let mut handles = Vec::new();
        for (peer, stream) in streams.into_iter().enumerate() {
            let Some(stream) = stream else {
                senders.push(None);
                readers.push(None);
                continue;
            };
            stream
                .set_read_timeout(Some(tick))
                .map_err(|e| io_error(peer, e))?;
            stream
                .set_write_timeout(Some(op_timeout))
                .map_err(|e| io_error(peer, e))?;
            let writer = stream.try_clone().map_err(|e| io_error(peer, e))?;
            handles.push(stream.try_clone().map_err(|e| io_error(peer, e))?);
            let (tx, rx) = link::queue();
            senders.push(Some(tx));
            readers.push(Some(Reader::new(peer, stream)));
            queues.push((peer, writer, rx));
        }
        let shared = Arc::new(Shared::new(rank, senders));
        let mut group = Self {
            rank,
            world,
            addrs: peers.to_vec(),
            op_timeout,
            shared: shared.clone(),
            inner: Mutex::new(Inner {
                seq: 0,
                readers,
                reported: false,
            }),
            streams: handles,
            threads: Vec::new(),
        };
        for (peer, writer, rx) in queues {
            // On failure `group` is dropped, which stops the threads already started.
            let thread =
                link::spawn_sender(peer, writer, rx, shared.clone(), heartbeat, op_timeout)
                    .map_err(|e| setup_error(format!("cannot start a sender thread: {e}")))?;
            group.threads.push(thread);
        }
        tracing::debug!(rank, world, "collective group formed");
        Ok(group)
    }

    /// Every rank's address, by rank.
    pub fn peers(&self) -> &[String] {
        &self.addrs
    }

    /// A handle that closes this rank's connections from any thread, for when the
    /// generation is known to be over (the coordinator said so): an operation blocked on a
    /// hung peer then fails at once with a closed connection instead of at its timeout, and
    /// the group is failed for good.
    pub fn abort_handle(&self) -> std::io::Result<TcpAbortHandle> {
        let streams = self
            .streams
            .iter()
            .map(TcpStream::try_clone)
            .collect::<std::io::Result<Vec<_>>>()?;
        Ok(TcpAbortHandle {
            streams: Arc::new(streams),
        })
    }

    fn lock_inner(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Runs one operation: numbers it, fails fast on a failed group, and on failure makes
    /// the group failed and tells the peers.
    fn run(
        &self,
        name: &'static str,
        kind: OpKind,
        len: usize,
        body: impl FnOnce(&mut Ctx<'_>) -> std::result::Result<(), Failure>,
    ) -> Result<()> {
        let mut inner = self.lock_inner();
        let inner = &mut *inner;
        if let Some(failure) = self.shared.failure() {
            return Err(self.report(inner, name, &failure));
        }
        inner.seq += 1;
        let op = OpDesc {
            seq: inner.seq,
            kind,
            len: len as u64,
        };
        let result = body(&mut Ctx::new(
            self.rank,
            self.world,
            op,
            &self.shared,
            &mut inner.readers,
            self.op_timeout,
        ));
        self.shared.end();
        if let Err(failure) = result {
            self.shared.fail(failure);
        }
        // A sender thread may have failed while this rank's receives still succeeded.
        match self.shared.failure() {
            None => Ok(()),
            Some(failure) => Err(self.report(inner, name, &failure)),
        }
    }

    fn report(&self, inner: &mut Inner, op: &'static str, failure: &Failure) -> CollectiveError {
        let error = failure.to_error(op, self.rank, &self.addrs);
        if std::mem::replace(&mut inner.reported, true) {
            CollectiveError::Usage {
                op,
                message: format!(
                    "the group is unusable after an earlier failure ({error}); form a new one"
                ),
            }
        } else {
            error
        }
    }

    fn misuse(&self, message: String) -> Failure {
        Failure {
            culprit: self.rank,
            seen_by: self.rank,
            fault: Fault::Usage { message },
        }
    }
}

impl Communicator for TcpGroup {
    fn rank(&self) -> usize {
        self.rank
    }

    fn world_size(&self) -> usize {
        self.world
    }

    fn all_reduce(&self, buf: ReduceBuf<'_>, op: ReduceOp) -> Result<()> {
        let kind = OpKind::AllReduce(buf.dtype(), op);
        let len = buf.len() * buf.dtype().size();
        self.run("all_reduce", kind, len, |ctx| match buf {
            ReduceBuf::F32(b) => algo::all_reduce(ctx, b, op),
            ReduceBuf::F64(b) => algo::all_reduce(ctx, b, op),
            ReduceBuf::I64(b) => algo::all_reduce(ctx, b, op),
        })
    }

    fn all_gather(&self, send: &[u8], recv: &mut [u8]) -> Result<()> {
        self.run("all_gather", OpKind::AllGather, send.len(), |ctx| {
            if Some(recv.len()) != send.len().checked_mul(self.world) {
                return Err(self.misuse(format!(
                    "recv holds {} bytes, expected world size {} x {} sent",
                    recv.len(),
                    self.world,
                    send.len()
                )));
            }
            algo::all_gather(ctx, send, recv)
        })
    }

    fn broadcast(&self, buf: &mut [u8], root: usize) -> Result<()> {
        let kind = OpKind::Broadcast { root: root as u32 };
        self.run("broadcast", kind, buf.len(), |ctx| {
            if root >= self.world {
                return Err(self.misuse(format!(
                    "root {root} is not a rank of a group of {}",
                    self.world
                )));
            }
            algo::broadcast(ctx, buf, root)
        })
    }

    fn barrier(&self) -> Result<()> {
        self.run("barrier", OpKind::Barrier, 0, algo::barrier)
    }
}

/// See [`TcpGroup::abort_handle`].
#[derive(Clone, Debug)]
pub struct TcpAbortHandle {
    streams: Arc<Vec<TcpStream>>,
}

impl TcpAbortHandle {
    pub fn abort(&self) {
        for stream in self.streams.iter() {
            let _ = stream.shutdown(Shutdown::Both);
        }
    }
}

impl Drop for TcpGroup {
    /// Closes the queues so the sender threads flush (an abort, say) and exit; after a short
    /// grace, closes the connections under any thread still blocked on a stalled peer.
    fn drop(&mut self) {
        self.shared.close_all();
        let deadline = Instant::now() + FLUSH_GRACE.min(self.op_timeout);
        while Instant::now() < deadline && self.threads.iter().any(|t| !t.is_finished()) {
            thread::sleep(Duration::from_millis(1));
        }
        for stream in &self.streams {
            let _ = stream.shutdown(Shutdown::Both);
        }
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
    }
}
