//! [`NcclCommunicator`]: one rank's NCCL communicator, with a watchdog on every call.

use std::ffi::{c_int, c_void};
use std::fmt;
use std::ptr::null_mut;
use std::sync::{mpsc, Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use super::loader::{self, CudaRt, NcclLib};
use super::sys::*;
use super::NcclUniqueId;
use crate::{CollectiveError, DType, ReduceOp, Result};

/// The least time `ncclCommAbort` is given before the watchdog stops waiting for it.
const ABORT_GRACE: Duration = Duration::from_secs(10);

/// One rank of an NCCL group on one GPU, for collectives on device memory.
///
/// NCCL itself never times out: a rank that dies or stops calling leaves the others spinning
/// on the GPU for ever, the worst failure a training job can have. So the communicator is
/// created non-blocking (`ncclConfig_t::blocking = 0`) and every call here waits by polling,
/// with a deadline of `timeout`:
/// - creation polls `ncclCommGetAsyncError` until the group has formed;
/// - each collective is enqueued on the caller's stream, then the call polls
///   `cudaStreamQuery(stream)` (sleeping briefly between polls) and `ncclCommGetAsyncError`.
///
/// Past the deadline, or on any NCCL or CUDA error, the communicator is aborted
/// (`ncclCommAbort`, which makes NCCL's kernels and threads give up), marked dead, and the call
/// returns [`CollectiveError::Nccl`] naming the operation and this rank. Every later call on a
/// dead communicator fails at once with that first message. The remedy is a new group.
///
/// Because the wait is on the whole stream, `timeout` covers the work queued on it before the
/// collective as well; choose it well above a training step.
///
/// Calls are serialised by an internal lock, so the communicator is `Send + Sync`; each call
/// makes this rank's device current on the calling thread (`cudaSetDevice`) and leaves it so.
pub struct NcclCommunicator {
    state: Mutex<State>,
    rank: usize,
    world_size: usize,
    device: usize,
    timeout: Duration,
    nccl: &'static NcclLib,
    cuda: &'static CudaRt,
    /// Set by an [`NcclAbortHandle`]: the collective in progress (or the next) aborts.
    abort: Arc<Mutex<Option<String>>>,
}

/// Aborts a communicator's collective from another thread, for when the generation is
/// known to be over: the watchdog sees it at its next poll and aborts the communicator as
/// it does on a timeout, so a rank waiting on a hung peer returns at once.
#[derive(Clone, Debug)]
pub struct NcclAbortHandle {
    abort: Arc<Mutex<Option<String>>>,
}

impl NcclAbortHandle {
    pub fn abort(&self, why: impl Into<String>) {
        let mut slot = self.abort.lock().unwrap_or_else(PoisonError::into_inner);
        slot.get_or_insert_with(|| why.into());
    }
}

struct State {
    /// Null once aborted or destroyed.
    comm: NcclComm,
    /// Why the communicator was aborted; set together with nulling `comm`.
    failure: Option<String>,
}

// SAFETY: NCCL lets a communicator be driven from any thread provided calls on it do not
// overlap; `State` only lives inside the communicator's mutex, which serialises every call.
unsafe impl Send for State {}

/// Moves a communicator handle to the thread that aborts it.
struct CommHandle(NcclComm);

// SAFETY: the handle is moved to exactly one thread, which makes the last call on it
// (`ncclCommAbort`); the thread that sent it no longer uses it.
unsafe impl Send for CommHandle {}

impl CommHandle {
    fn get(&self) -> NcclComm {
        self.0
    }
}

/// Polling cadence: yield for the first polls, which catches short collectives at once, then
/// sleep, growing to at most half a millisecond.
struct Backoff {
    polls: u32,
}

impl Backoff {
    fn new() -> Self {
        Self { polls: 0 }
    }

    fn pause(&mut self) {
        self.polls = self.polls.saturating_add(1);
        if self.polls <= 50 {
            std::thread::yield_now();
        } else {
            let doublings = ((self.polls - 50) / 50).min(5);
            let micros = (20u64 << doublings).min(500);
            std::thread::sleep(Duration::from_micros(micros));
        }
    }
}

/// The communicator's state: `ncclSuccess`, `ncclInProgress`, or the error it hit (also the
/// error of `ncclCommGetAsyncError` itself, should that fail).
///
/// # Safety
/// `comm` must be a live communicator: created and neither aborted nor destroyed.
unsafe fn async_state(nccl: &NcclLib, comm: NcclComm) -> NcclResult {
    let mut state = NCCL_SUCCESS;
    // SAFETY: `comm` is live (caller's contract) and `state` is valid for writes.
    let result = unsafe { (nccl.comm_get_async_error)(comm, &mut state) };
    if result == NCCL_SUCCESS {
        state
    } else {
        result
    }
}

fn millis(duration: Duration) -> u128 {
    duration.as_millis()
}

/// Aborts `comm` on a helper thread and waits for that at most `limit`, so that the watchdog
/// itself cannot hang should `ncclCommAbort` block. Returns a note for the error message,
/// empty when the abort went through.
///
/// # Safety
/// `comm` must be live, and nothing may use it after this call.
unsafe fn abort_bounded(
    nccl: &'static NcclLib,
    cuda: &'static CudaRt,
    device: usize,
    comm: NcclComm,
    limit: Duration,
) -> String {
    let handle = CommHandle(comm);
    let (done, result) = mpsc::channel();
    let spawned = std::thread::Builder::new()
        .name("nccl-abort".into())
        .spawn(move || {
            let _ = cuda.select_device(device);
            // SAFETY: `comm` is live and this is its last use (the caller's contract).
            let code = unsafe { (nccl.comm_abort)(handle.get()) };
            let _ = done.send(code);
        });
    let code = match spawned {
        Ok(_) => match result.recv_timeout(limit) {
            Ok(code) => code,
            Err(_) => {
                return format!(
                    " (ncclCommAbort had not returned after {} ms; its thread and the \
                     communicator's resources are left behind)",
                    millis(limit)
                );
            }
        },
        Err(_) => {
            // No thread to spare: abort here, unbounded, rather than leak a running comm.
            // SAFETY: as above; the closure that held the handle was dropped unrun.
            unsafe { (nccl.comm_abort)(comm) }
        }
    };
    if code == NCCL_SUCCESS || code == NCCL_IN_PROGRESS {
        String::new()
    } else {
        format!(" (ncclCommAbort reported {})", nccl.describe(code))
    }
}

impl NcclCommunicator {
    /// Joins the group `id` as `rank` of `world_size`, on CUDA device `device_index`.
    ///
    /// Every rank calls this with the same `id` (made once by [`NcclUniqueId::new`] and sent
    /// to the others) and `world_size`. It returns once all ranks have joined; if they have not
    /// within `timeout`, the half-made communicator is aborted and the error says so.
    pub fn new(
        id: &NcclUniqueId,
        rank: usize,
        world_size: usize,
        device_index: usize,
        timeout: Duration,
    ) -> Result<Self> {
        const OP: &str = "NCCL init";
        let usage = |message: String| CollectiveError::Usage { op: OP, message };
        if rank >= world_size {
            return Err(usage(format!(
                "rank {rank} is not in a group of {world_size}"
            )));
        }
        let nranks = c_int::try_from(world_size)
            .map_err(|_| usage(format!("world size {world_size} is too large for NCCL")))?;
        // rank < world_size <= c_int::MAX, so this cannot truncate.
        let my_rank = rank as c_int;
        if c_int::try_from(device_index).is_err() {
            return Err(usage(format!("there is no CUDA device {device_index}")));
        }
        if timeout.is_zero() {
            return Err(usage("the timeout must be positive".into()));
        }

        let nccl = loader::nccl()?;
        let cuda = loader::cudart()?;
        let who = format!("rank {rank} of {world_size} on cuda:{device_index}");
        let fail = |message: String| CollectiveError::Nccl(format!("{OP} as {who}: {message}"));
        cuda.select_device(device_index)
            .map_err(|error| fail(error.to_string()))?;

        let mut config = NcclConfig::initializer();
        // Non-blocking, so that this thread can watch the clock while the group forms.
        config.blocking = 0;
        let mut comm: NcclComm = null_mut();
        let started = Instant::now();
        // SAFETY: `comm` and `config` are valid for the call; the id goes by value as nccl.h
        // declares; the device was made current on this thread, as NCCL requires.
        let result = unsafe {
            (nccl.comm_init_rank_config)(&mut comm, nranks, id.raw(), my_rank, &mut config)
        };
        if result != NCCL_SUCCESS && result != NCCL_IN_PROGRESS {
            let reason = nccl.describe_with_last(result, comm);
            let note = if comm.is_null() {
                String::new()
            } else {
                // SAFETY: NCCL handed out `comm`, and we drop it here.
                unsafe { abort_bounded(nccl, cuda, device_index, comm, timeout.max(ABORT_GRACE)) }
            };
            return Err(fail(format!(
                "ncclCommInitRankConfig failed: {reason}{note}"
            )));
        }
        if comm.is_null() {
            return Err(fail(format!(
                "ncclCommInitRankConfig returned {} but no communicator",
                result_name(result)
            )));
        }

        let mut backoff = Backoff::new();
        loop {
            // SAFETY: `comm` is live until aborted below.
            match unsafe { async_state(nccl, comm) } {
                NCCL_SUCCESS => break,
                NCCL_IN_PROGRESS if started.elapsed() < timeout => backoff.pause(),
                NCCL_IN_PROGRESS => {
                    // SAFETY: `comm` is live and not used after this.
                    let note = unsafe {
                        abort_bounded(nccl, cuda, device_index, comm, timeout.max(ABORT_GRACE))
                    };
                    let message = format!(
                        "the group did not form within {} ms (NCCL watchdog): a rank never \
                         joined, or the ranks disagree on the unique id or world size; the \
                         communicator was aborted{note}",
                        millis(timeout)
                    );
                    tracing::error!("{OP} as {who}: {message}");
                    return Err(fail(message));
                }
                error => {
                    let reason = nccl.describe_with_last(error, comm);
                    // SAFETY: `comm` is live and not used after this.
                    let note = unsafe {
                        abort_bounded(nccl, cuda, device_index, comm, timeout.max(ABORT_GRACE))
                    };
                    return Err(fail(format!(
                        "forming the group failed: {reason}; the communicator was aborted{note}"
                    )));
                }
            }
        }
        tracing::info!(
            "NCCL communicator ready: {who}, {} ms to form, library {}",
            started.elapsed().as_millis(),
            nccl.path
        );
        Ok(Self {
            state: Mutex::new(State {
                comm,
                failure: None,
            }),
            rank,
            world_size,
            device: device_index,
            timeout,
            nccl,
            cuda,
            abort: Arc::default(),
        })
    }

    /// See [`NcclAbortHandle`].
    pub fn abort_handle(&self) -> NcclAbortHandle {
        NcclAbortHandle {
            abort: self.abort.clone(),
        }
    }

    fn abort_requested(&self) -> Option<String> {
        self.abort
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    pub fn rank(&self) -> usize {
        self.rank
    }

    pub fn world_size(&self) -> usize {
        self.world_size
    }

    pub fn device_index(&self) -> usize {
        self.device
    }

    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// Why the communicator was aborted, if it was; it then refuses every call.
    pub fn failure(&self) -> Option<String> {
        self.lock().failure.clone()
    }

    /// In-place element-wise reduction of `count` elements at `ptr` over all ranks.
    ///
    /// # Safety
    /// - `ptr` points to `count` elements of `dtype` in memory of this communicator's device,
    ///   valid for reads and writes until the call returns and not used by other work meanwhile;
    /// - `stream` is null (the legacy default stream) or a live CUDA stream of that device;
    /// - every rank makes the same calls in the same order, with the same `count`, `dtype`
    ///   and `op` (otherwise NCCL hangs or corrupts memory; the watchdog catches hangs only).
    pub unsafe fn all_reduce(
        &self,
        ptr: *mut c_void,
        count: usize,
        dtype: DType,
        op: ReduceOp,
        stream: *mut c_void,
    ) -> Result<()> {
        // SAFETY: the caller's contract; the same buffer on both sides means in place.
        unsafe { self.all_reduce_into(ptr, ptr, count, dtype, op, stream) }
    }

    /// Element-wise reduction of `count` elements at every rank's `send` into `recv`, so the
    /// input need not be copied to be kept.
    ///
    /// # Safety
    /// As for [`Self::all_reduce`], for both buffers (`send` for reads, `recv` for writes);
    /// they are the same buffer or do not overlap.
    pub unsafe fn all_reduce_into(
        &self,
        send: *const c_void,
        recv: *mut c_void,
        count: usize,
        dtype: DType,
        op: ReduceOp,
        stream: *mut c_void,
    ) -> Result<()> {
        const OP: &str = "all_reduce";
        self.check_buffer(OP, "send buffer", send, count, dtype)?;
        self.check_buffer(OP, "receive buffer", recv, count, dtype)?;
        self.run(OP, stream, |nccl, comm| {
            // SAFETY: the caller vouches for the buffers, `count`, `dtype` and `stream`;
            // `comm` is live while `run` holds the lock.
            unsafe {
                (nccl.all_reduce)(
                    send,
                    recv,
                    count,
                    data_type(dtype),
                    red_op(op),
                    comm,
                    stream,
                )
            }
        })
    }

    /// Gathers `count_per_rank` elements from every rank's `send` into `recv`, in rank order
    /// (`world_size * count_per_rank` elements).
    ///
    /// # Safety
    /// - `send` points to `count_per_rank` elements of `dtype`, and `recv` to
    ///   `world_size * count_per_rank`, in memory of this communicator's device, valid until
    ///   the call returns (`recv` for writes) and not used by other work meanwhile; they do not
    ///   overlap, except that `send` may be this rank's slot of `recv`;
    /// - `stream` and the call order are as for [`Self::all_reduce`].
    pub unsafe fn all_gather(
        &self,
        send: *const c_void,
        recv: *mut c_void,
        count_per_rank: usize,
        dtype: DType,
        stream: *mut c_void,
    ) -> Result<()> {
        const OP: &str = "all_gather";
        self.check_buffer(OP, "send buffer", send, count_per_rank, dtype)?;
        let total =
            count_per_rank
                .checked_mul(self.world_size)
                .ok_or_else(|| CollectiveError::Usage {
                    op: OP,
                    message: format!(
                        "{count_per_rank} elements per rank times {} ranks overflows",
                        self.world_size
                    ),
                })?;
        self.check_buffer(OP, "receive buffer", recv, total, dtype)?;
        self.run(OP, stream, |nccl, comm| {
            // SAFETY: the caller vouches for the buffers, sizes and `stream`; `comm` is live
            // while `run` holds the lock.
            unsafe { (nccl.all_gather)(send, recv, count_per_rank, data_type(dtype), comm, stream) }
        })
    }

    /// Copies `count` elements at `root`'s `ptr` to every rank's `ptr`.
    ///
    /// # Safety
    /// As for [`Self::all_reduce`], with `root` in place of `op`.
    pub unsafe fn broadcast(
        &self,
        ptr: *mut c_void,
        count: usize,
        dtype: DType,
        root: usize,
        stream: *mut c_void,
    ) -> Result<()> {
        const OP: &str = "broadcast";
        if root >= self.world_size {
            return Err(CollectiveError::Usage {
                op: OP,
                message: format!("root {root} is not in a group of {}", self.world_size),
            });
        }
        self.check_buffer(OP, "buffer", ptr, count, dtype)?;
        // root < world_size, which fitted a c_int at creation.
        let root = root as c_int;
        self.run(OP, stream, |nccl, comm| {
            // SAFETY: the caller vouches for `ptr`, `count`, `dtype` and `stream`; `comm` is
            // live while `run` holds the lock. Same send and receive buffer means in place.
            unsafe { (nccl.broadcast)(ptr, ptr, count, data_type(dtype), root, comm, stream) }
        })
    }

    fn who(&self) -> String {
        format!(
            "rank {} of {} on cuda:{}",
            self.rank, self.world_size, self.device
        )
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // Nothing panics while holding the lock, but a poisoned state is still consistent.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn check_buffer<T>(
        &self,
        op: &'static str,
        what: &str,
        ptr: *const T,
        count: usize,
        dtype: DType,
    ) -> Result<()> {
        if count.checked_mul(dtype.size()).is_none() {
            return Err(CollectiveError::Usage {
                op,
                message: format!("{count} elements of {dtype} overflow the address space"),
            });
        }
        if count > 0 && ptr.is_null() {
            return Err(CollectiveError::Usage {
                op,
                message: format!("the {what} is null but holds {count} elements"),
            });
        }
        Ok(())
    }

    /// Enqueues one collective and waits for it under the watchdog (see the type's docs).
    fn run(
        &self,
        op: &'static str,
        stream: CudaStream,
        enqueue: impl FnOnce(&NcclLib, NcclComm) -> NcclResult,
    ) -> Result<()> {
        let mut state = self.lock();
        if let Some(failure) = &state.failure {
            return Err(CollectiveError::Nccl(format!(
                "{op} as {}: the communicator is dead since an earlier failure: {failure}",
                self.who()
            )));
        }
        self.cuda
            .select_device(self.device)
            .map_err(|error| CollectiveError::Nccl(format!("{op} as {}: {error}", self.who())))?;
        let comm = state.comm;
        if let Some(why) = self.abort_requested() {
            return Err(self.fail(&mut state, op, format!("was not started: aborted ({why})")));
        }
        let started = Instant::now();
        let mut backoff = Backoff::new();

        match enqueue(self.nccl, comm) {
            NCCL_SUCCESS => {}
            // Non-blocking communicators may still be enqueueing; NCCL asks that we poll until
            // ncclSuccess before anything else touches the communicator or the stream.
            NCCL_IN_PROGRESS => loop {
                if let Some(why) = self.abort_requested() {
                    let reason = format!("was aborted while being enqueued ({why})");
                    return Err(self.fail(&mut state, op, reason));
                }
                // SAFETY: `comm` is live while we hold the lock and have not failed.
                match unsafe { async_state(self.nccl, comm) } {
                    NCCL_SUCCESS => break,
                    NCCL_IN_PROGRESS if started.elapsed() < self.timeout => backoff.pause(),
                    NCCL_IN_PROGRESS => {
                        let reason = format!(
                            "was still being enqueued after {} ms (NCCL watchdog)",
                            millis(self.timeout)
                        );
                        return Err(self.fail(&mut state, op, reason));
                    }
                    error => {
                        let reason = format!(
                            "failed while being enqueued: {}",
                            self.nccl.describe_with_last(error, comm)
                        );
                        return Err(self.fail(&mut state, op, reason));
                    }
                }
            },
            error => {
                let reason = format!(
                    "could not be enqueued: {}",
                    self.nccl.describe_with_last(error, comm)
                );
                return Err(self.fail(&mut state, op, reason));
            }
        }

        loop {
            // SAFETY: `stream` is null or a live stream of this device (the public callers'
            // contract); cudaStreamQuery only reads its state.
            let query = unsafe { (self.cuda.stream_query)(stream) };
            // SAFETY: `comm` is live while we hold the lock and have not failed.
            let nccl_state = unsafe { async_state(self.nccl, comm) };
            if nccl_state != NCCL_SUCCESS && nccl_state != NCCL_IN_PROGRESS {
                let reason = format!("failed: {}", self.nccl.describe_with_last(nccl_state, comm));
                return Err(self.fail(&mut state, op, reason));
            }
            match query {
                CUDA_SUCCESS => return Ok(()),
                CUDA_ERROR_NOT_READY => {}
                error => {
                    let reason = format!("its stream reported {}", self.cuda.describe(error));
                    return Err(self.fail(&mut state, op, reason));
                }
            }
            if let Some(why) = self.abort_requested() {
                let reason = format!("was aborted before it completed ({why})");
                return Err(self.fail(&mut state, op, reason));
            }
            if started.elapsed() >= self.timeout {
                let reason = format!(
                    "did not complete within {} ms (NCCL watchdog): some rank is dead, hung, or \
                     called a different collective",
                    millis(self.timeout)
                );
                return Err(self.fail(&mut state, op, reason));
            }
            backoff.pause();
        }
    }

    /// Aborts the communicator, marks it dead and builds the error for `op`.
    fn fail(&self, state: &mut State, op: &'static str, reason: String) -> CollectiveError {
        let comm = std::mem::replace(&mut state.comm, null_mut());
        // SAFETY: `comm` was live, and `state` no longer holds it, so nothing uses it again.
        let note = unsafe {
            abort_bounded(
                self.nccl,
                self.cuda,
                self.device,
                comm,
                self.timeout.max(ABORT_GRACE),
            )
        };
        let message = format!(
            "{op} as {}: {reason}; the communicator was aborted{note}",
            self.who()
        );
        tracing::error!("{message}");
        state.failure = Some(message.clone());
        CollectiveError::Nccl(message)
    }

    /// Flushes and frees a healthy communicator: `ncclCommFinalize`, polled under the
    /// timeout, then `ncclCommDestroy`; aborts instead if the flush fails or stalls (a peer
    /// gone at shutdown must not hang the process).
    ///
    /// # Safety
    /// `comm` must be live, and nothing may use it after this call.
    unsafe fn close(&self, comm: NcclComm) {
        if let Some(finalize) = self.nccl.comm_finalize {
            // SAFETY: `comm` is live (caller's contract).
            let result = unsafe { finalize(comm) };
            let started = Instant::now();
            let mut backoff = Backoff::new();
            let mut state = result;
            while state == NCCL_IN_PROGRESS && started.elapsed() < self.timeout {
                backoff.pause();
                // SAFETY: finalized but not yet destroyed, so still live.
                state = unsafe { async_state(self.nccl, comm) };
            }
            if state != NCCL_SUCCESS {
                let why = if state == NCCL_IN_PROGRESS {
                    format!("did not finish within {} ms", millis(self.timeout))
                } else {
                    format!("failed: {}", self.nccl.describe_with_last(state, comm))
                };
                // SAFETY: live, and not used after this.
                let note = unsafe {
                    abort_bounded(
                        self.nccl,
                        self.cuda,
                        self.device,
                        comm,
                        self.timeout.max(ABORT_GRACE),
                    )
                };
                tracing::warn!(
                    "closing NCCL {}: ncclCommFinalize {why}; aborted instead{note}",
                    self.who()
                );
                return;
            }
        }
        // SAFETY: `comm` is live and this is its last use.
        let result = unsafe { (self.nccl.comm_destroy)(comm) };
        if result != NCCL_SUCCESS && result != NCCL_IN_PROGRESS {
            tracing::warn!(
                "closing NCCL {}: ncclCommDestroy reported {}",
                self.who(),
                self.nccl.describe(result)
            );
        }
    }
}

impl Drop for NcclCommunicator {
    /// Destroys a healthy communicator (see `close`); one that failed was aborted already.
    fn drop(&mut self) {
        let state = self.state.get_mut().unwrap_or_else(PoisonError::into_inner);
        let comm = std::mem::replace(&mut state.comm, null_mut());
        if comm.is_null() {
            return;
        }
        let _ = self.cuda.select_device(self.device);
        // SAFETY: `comm` is live (never failed, never closed) and `self` is going away.
        unsafe { self.close(comm) };
    }
}

impl fmt::Debug for NcclCommunicator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NcclCommunicator")
            .field("rank", &self.rank)
            .field("world_size", &self.world_size)
            .field("device", &self.device)
            .field("timeout", &self.timeout)
            .field("failure", &self.failure())
            .finish()
    }
}
