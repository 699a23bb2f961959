//! Data parallelism for the trainer: the model's [`Collective`] over either backend
//! ([`HostCollective`]: a host-memory [`Communicator`], the CPU backend; [`NcclCollective`]:
//! NCCL on the GPU's own memory), gradient summing in buckets, and the Partial-FC exchange of
//! embeddings and their gradients.
//!
//! A transport failure (a dead or hung peer) inside a forward pass cannot be returned
//! through the model's infallible `Collective` methods, so both collectives record the first
//! failure, hand back their input unchanged, and fail fast on every later call; the trainer
//! calls [`Group::check`] before it applies a step, so a step with a failed exchange never
//! changes the weights.

use std::ffi::c_void;
use std::ptr::null_mut;
use std::sync::{Arc, Mutex};

use lgaf_collective::nccl::{NcclAbortHandle, NcclCommunicator};
use lgaf_collective::{CollectiveError, Communicator, DType, ReduceBuf, ReduceOp};
use lgaf_model::collective::{Collective, SingleProcess};
use tch::{Device, Kind, Tensor};

/// Gradient buckets of about this many bytes: large enough that per-call latency does not
/// dominate, small enough that the flattened copy stays cheap (PyTorch DDP's default).
pub const BUCKET_BYTES: usize = 25 * 1024 * 1024;

/// The first transport failure of a group; once set the group is dead for good.
#[derive(Default)]
struct FailureSlot(Mutex<Option<CollectiveError>>);

/// The first transport failure of a collective group (a dead, hung or disagreeing peer), as
/// [`Group::check`] reports it: the group stays failed and the rank leaves the generation.
#[derive(Clone, Debug, thiserror::Error)]
#[error("{0}")]
pub struct GroupFailed(String);

impl FailureSlot {
    fn check(&self) -> Result<(), GroupFailed> {
        match &*self.0.lock().expect("failure slot") {
            Some(e) => Err(GroupFailed(e.to_string())),
            None => Ok(()),
        }
    }

    fn failed(&self) -> bool {
        self.0.lock().expect("failure slot").is_some()
    }

    fn record(&self, error: CollectiveError) {
        let mut slot = self.0.lock().expect("failure slot");
        if slot.is_none() {
            tracing::error!(%error, "collective operation failed");
            *slot = Some(error);
        }
    }
}

/// The shape of `t` gathered from `world` ranks along dimension 0 (a scalar counts as [1]).
fn gathered_shape(t: &Tensor, world: usize) -> Vec<i64> {
    let mut shape = t.size();
    if shape.is_empty() {
        shape = vec![1];
    }
    std::iter::once(shape[0] * world as i64)
        .chain(shape[1..].iter().copied())
        .collect()
}

/// What a failed all-gather hands back: the input repeated, so shapes stay right until the
/// trainer's check stops the step.
fn gather_fallback(t: &Tensor, world: usize) -> Tensor {
    let rows = if t.dim() == 0 {
        t.view([1])
    } else {
        t.detach()
    };
    let copies: Vec<Tensor> = (0..world).map(|_| rows.shallow_clone()).collect();
    Tensor::cat(&copies, 0)
}

/// The model's [`Collective`] over a host-memory [`Communicator`]. Tensors on any device
/// are staged through the CPU.
pub struct HostCollective {
    comm: Arc<dyn Communicator>,
    failure: FailureSlot,
}

impl HostCollective {
    pub fn new(comm: Arc<dyn Communicator>) -> Self {
        Self {
            comm,
            failure: FailureSlot::default(),
        }
    }

    /// The first failure since the group was built, if any. The group stays failed: the
    /// worker must leave the generation.
    pub fn check(&self) -> Result<(), GroupFailed> {
        self.failure.check()
    }

    fn reduce(&self, t: &Tensor, op: ReduceOp) -> Tensor {
        if self.failure.failed() {
            return t.shallow_clone();
        }
        let (device, kind, shape) = (t.device(), t.kind(), t.size());
        let host = t
            .detach()
            .to_device(Device::Cpu)
            .contiguous()
            .flatten(0, -1);
        let result = match kind {
            Kind::Double => {
                let mut v = Vec::<f64>::try_from(&host).expect("f64 tensor");
                self.comm
                    .all_reduce(ReduceBuf::F64(&mut v), op)
                    .map(|()| Tensor::from_slice(&v))
            }
            Kind::Int64 => {
                let mut v = Vec::<i64>::try_from(&host).expect("i64 tensor");
                self.comm
                    .all_reduce(ReduceBuf::I64(&mut v), op)
                    .map(|()| Tensor::from_slice(&v))
            }
            // Float, and the half kinds through float (the reductions the model asks for
            // in half precision are small: row maxima and sums of a batch).
            _ => {
                let mut v = Vec::<f32>::try_from(&host.to_kind(Kind::Float)).expect("f32 tensor");
                self.comm
                    .all_reduce(ReduceBuf::F32(&mut v), op)
                    .map(|()| Tensor::from_slice(&v).to_kind(kind))
            }
        };
        match result {
            Ok(reduced) => reduced.view(shape.as_slice()).to_device(device),
            Err(e) => {
                self.failure.record(e);
                t.shallow_clone()
            }
        }
    }
}

fn host_bytes(t: &Tensor) -> Vec<u8> {
    let t = t.detach().to_device(Device::Cpu).contiguous();
    let numel = t.numel();
    let mut bytes = vec![0u8; numel * t.kind().elt_size_in_bytes()];
    t.copy_data_u8(&mut bytes, numel);
    bytes
}

impl Collective for HostCollective {
    fn world_size(&self) -> i64 {
        self.comm.world_size() as i64
    }

    fn rank(&self) -> i64 {
        self.comm.rank() as i64
    }

    fn all_reduce_sum(&self, t: &Tensor) -> Tensor {
        self.reduce(t, ReduceOp::Sum)
    }

    fn all_reduce_max(&self, t: &Tensor) -> Tensor {
        self.reduce(t, ReduceOp::Max)
    }

    fn all_gather(&self, t: &Tensor) -> Tensor {
        let world = self.comm.world_size();
        if self.failure.failed() {
            return gather_fallback(t, world);
        }
        let send = host_bytes(t);
        let mut recv = vec![0u8; send.len() * world];
        match self.comm.all_gather(&send, &mut recv) {
            Ok(()) => Tensor::from_data_size(&recv, &gathered_shape(t, world), t.kind())
                .to_device(t.device()),
            Err(e) => {
                self.failure.record(e);
                gather_fallback(t, world)
            }
        }
    }

    fn broadcast(&self, t: &Tensor, root: i64) -> Tensor {
        if self.failure.failed() {
            return t.shallow_clone();
        }
        let mut bytes = host_bytes(t);
        match self.comm.broadcast(&mut bytes, root as usize) {
            Ok(()) => Tensor::from_data_size(&bytes, &t.size(), t.kind()).to_device(t.device()),
            Err(e) => {
                self.failure.record(e);
                t.shallow_clone()
            }
        }
    }
}

/// The model's [`Collective`] over NCCL, on the tensors' own device memory (no host
/// staging). Operations go on the legacy default stream (null), which is libtorch's current
/// stream unless someone sets another (this trainer never does), so they are ordered after
/// the kernels that produced their inputs; the communicator waits for the stream under its
/// watchdog before returning, so results are ready when a call returns.
pub struct NcclCollective {
    comm: NcclCommunicator,
    device: Device,
    failure: FailureSlot,
}

impl NcclCollective {
    /// The collective of a communicator on a CUDA device.
    pub fn on_cuda(comm: NcclCommunicator) -> Self {
        let device = Device::Cuda(comm.device_index());
        // SAFETY: a communicator on CUDA device i operates on that device's memory.
        unsafe { Self::new(comm, device) }
    }

    /// # Safety
    /// `device` is the memory the communicator's library operates on: `Device::Cuda(i)` for
    /// real NCCL on device `i` (use [`Self::on_cuda`]), `Device::Cpu` only for a stand-in
    /// library that works on host memory (the tests').
    pub unsafe fn new(comm: NcclCommunicator, device: Device) -> Self {
        Self {
            comm,
            device,
            failure: FailureSlot::default(),
        }
    }

    /// The first failure since the group was built, if any (see [`HostCollective::check`]).
    pub fn check(&self) -> Result<(), GroupFailed> {
        self.failure.check()
    }

    /// Aborts the collective in progress from another thread (see [`NcclAbortHandle`]).
    pub fn abort_handle(&self) -> NcclAbortHandle {
        self.comm.abort_handle()
    }

    /// `t` contiguous, in a kind NCCL handles: f64 and i64 as they are, everything else
    /// through f32 (as [`HostCollective`] does). It may share the caller's storage, so it is
    /// only read (in-place operations take a `copy` of it).
    fn staged(&self, op: &'static str, t: &Tensor) -> Result<(Tensor, DType), CollectiveError> {
        if t.device() != self.device {
            return Err(CollectiveError::Usage {
                op,
                message: format!(
                    "a tensor on {:?}; this NCCL communicator works on {:?}",
                    t.device(),
                    self.device
                ),
            });
        }
        let (kind, dtype) = match t.kind() {
            Kind::Double => (Kind::Double, DType::F64),
            Kind::Int64 => (Kind::Int64, DType::I64),
            _ => (Kind::Float, DType::F32),
        };
        Ok((t.detach().to_kind(kind).contiguous(), dtype))
    }

    /// Runs `op` and converts the result back to `t`'s kind; on failure records it and
    /// returns `fallback()`.
    fn guarded(
        &self,
        t: &Tensor,
        run: impl FnOnce() -> Result<Tensor, CollectiveError>,
        fallback: impl FnOnce() -> Tensor,
    ) -> Tensor {
        if self.failure.failed() {
            return fallback();
        }
        match run() {
            Ok(result) => result.to_kind(t.kind()),
            Err(e) => {
                self.failure.record(e);
                fallback()
            }
        }
    }

    fn reduce(&self, t: &Tensor, op: ReduceOp) -> Tensor {
        self.guarded(
            t,
            || {
                // Out of place: the input is read where it is (a gradient bucket is not copied
                // again) and the sum lands in a fresh tensor.
                let (send, dtype) = self.staged("all_reduce", t)?;
                let recv = send.empty_like();
                // SAFETY: `send` and `recv` are contiguous tensors of `numel` elements of
                // `dtype` in the communicator's memory (checked by `staged`), distinct, alive
                // and untouched by other work until the call returns; every rank runs the same
                // graph, so the calls match across ranks.
                unsafe {
                    self.comm.all_reduce_into(
                        send.data_ptr() as *const c_void,
                        recv.data_ptr(),
                        send.numel(),
                        dtype,
                        op,
                        null_mut(),
                    )?
                };
                Ok(recv)
            },
            || t.shallow_clone(),
        )
    }
}

impl Collective for NcclCollective {
    fn world_size(&self) -> i64 {
        self.comm.world_size() as i64
    }

    fn rank(&self) -> i64 {
        self.comm.rank() as i64
    }

    fn all_reduce_sum(&self, t: &Tensor) -> Tensor {
        self.reduce(t, ReduceOp::Sum)
    }

    fn all_reduce_max(&self, t: &Tensor) -> Tensor {
        self.reduce(t, ReduceOp::Max)
    }

    fn all_gather(&self, t: &Tensor) -> Tensor {
        let world = self.comm.world_size();
        self.guarded(
            t,
            || {
                let (send, dtype) = self.staged("all_gather", t)?;
                let recv = Tensor::empty(gathered_shape(t, world), (send.kind(), self.device));
                // SAFETY: as in `reduce`; `recv` is a fresh contiguous tensor of
                // `world * numel` elements of the same kind on the same memory.
                unsafe {
                    self.comm.all_gather(
                        send.data_ptr() as *const c_void,
                        recv.data_ptr(),
                        send.numel(),
                        dtype,
                        null_mut(),
                    )?
                };
                Ok(recv)
            },
            || gather_fallback(t, world),
        )
    }

    fn broadcast(&self, t: &Tensor, root: i64) -> Tensor {
        self.guarded(
            t,
            || {
                // In place, so on a copy: the caller's tensor must not change.
                let (buf, dtype) = self.staged("broadcast", t)?;
                let buf = buf.copy();
                // SAFETY: as in `reduce`, with one buffer.
                unsafe {
                    self.comm.broadcast(
                        buf.data_ptr(),
                        buf.numel(),
                        dtype,
                        root as usize,
                        null_mut(),
                    )?
                };
                Ok(buf)
            },
            || t.shallow_clone(),
        )
    }
}

/// The collective of one process, with the failure check the trainer needs.
#[derive(Clone)]
pub enum Group {
    Single,
    Host(Arc<HostCollective>),
    Nccl(Arc<NcclCollective>),
}

impl Group {
    pub fn collective(&self) -> Arc<dyn Collective> {
        match self {
            Self::Single => Arc::new(SingleProcess),
            Self::Host(h) => h.clone(),
            Self::Nccl(n) => n.clone(),
        }
    }

    pub fn rank(&self) -> i64 {
        match self {
            Self::Single => 0,
            Self::Host(h) => h.rank(),
            Self::Nccl(n) => n.rank(),
        }
    }

    pub fn world_size(&self) -> i64 {
        match self {
            Self::Single => 1,
            Self::Host(h) => h.world_size(),
            Self::Nccl(n) => n.world_size(),
        }
    }

    /// Err with the first transport failure, if any.
    pub fn check(&self) -> Result<(), GroupFailed> {
        match self {
            Self::Single => Ok(()),
            Self::Host(h) => h.check(),
            Self::Nccl(n) => n.check(),
        }
    }
}

/// Sums every rank's gradients in place: `flat_grads` is the optimiser's gradient buffer
/// (`Sgd::flat_grads`, the same parameters in the same order on every rank), reduced in
/// chunks of about [`BUCKET_BYTES`], which bounds the memory a reduction adds. Summing
/// (not averaging) is right here: each rank's backward gives its share of the gradient of
/// the one global-batch loss.
pub fn all_reduce_grads(collective: &dyn Collective, flat_grads: &Tensor) {
    if collective.world_size() == 1 {
        return;
    }
    let total = flat_grads.numel() as i64;
    let chunk = (BUCKET_BYTES / 4) as i64;
    tch::no_grad(|| {
        let mut start = 0;
        while start < total {
            let part = flat_grads.narrow(0, start, chunk.min(total - start));
            let reduced = collective.all_reduce_sum(&part);
            part.shallow_clone().copy_(&reduced);
            start += chunk;
        }
    });
}

/// Which rows of the global batch each rank holds. Rank `r` of `world_size` holds the data
/// shards `r, r + world_size, ...` of `data_world_size` (`lgaf_proto::data_shards`),
/// `shard_batch` rows each, in that order; the global batch is the shards in shard order,
/// so it is the same rows whether a shard has a rank of its own or shares one (an elastic
/// generation with fewer ranks than the job's `--workers`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DataLayout {
    rank: u32,
    world_size: u32,
    data_world_size: u32,
    shard_batch: i64,
}

impl DataLayout {
    pub fn new(rank: u32, world_size: u32, data_world_size: u32, shard_batch: usize) -> Self {
        Self {
            rank,
            world_size,
            data_world_size,
            shard_batch: shard_batch as i64,
        }
    }

    pub fn data_world_size(&self) -> u32 {
        self.data_world_size
    }

    /// The data shards this rank holds, ascending.
    pub fn shards(&self) -> Vec<u32> {
        lgaf_proto::data_shards(self.rank, self.world_size, self.data_world_size)
    }

    fn one_shard_per_rank(&self) -> bool {
        self.data_world_size == self.world_size
    }

    /// Rows every rank sends in the gather: the most shards a rank holds, padded.
    fn padded_rows(&self) -> i64 {
        i64::from(self.data_world_size.div_ceil(self.world_size)) * self.shard_batch
    }

    /// For each row of the global batch, in shard order, its row in the padded gather.
    fn gather_order(&self) -> Vec<i64> {
        let (w, b) = (self.world_size, self.shard_batch);
        (0..self.data_world_size)
            .flat_map(|shard| {
                let (rank, within) = (i64::from(shard % w), i64::from(shard / w));
                let first = rank * self.padded_rows() + within * b;
                first..first + b
            })
            .collect()
    }

    /// This rank's rows of the global batch, in its local order.
    fn local_rows(&self) -> Vec<i64> {
        let b = self.shard_batch;
        self.shards()
            .into_iter()
            .flat_map(|shard| i64::from(shard) * b..(i64::from(shard) + 1) * b)
            .collect()
    }
}

/// Partial FC across ranks (spec section 3): every rank scores the global batch against
/// its own class range, so the embeddings and labels of all ranks are gathered first, and
/// the gradient of the gathered embeddings (which each rank computes for its own centres
/// only) is summed over ranks and each rank keeps its own rows.
pub struct EmbeddingExchange {
    /// The gathered embeddings [D*B, D], in shard order; a leaf that collects the head's
    /// gradient.
    pub global: Tensor,
    /// The gathered labels [D*B].
    pub labels: Tensor,
    local_rows: LocalRows,
}

enum LocalRows {
    /// One shard per rank: rows `start..start + len`.
    Span(i64, i64),
    /// Several shards on some rank: this rank's rows, in its local order.
    Index(Tensor),
}

impl EmbeddingExchange {
    /// Gathers `embeddings` [local, D] (part of this rank's graph) and `labels` [local].
    /// Ranks that hold fewer shards than others pad their rows for the transport; the
    /// padding never reaches the global batch.
    pub fn gather(
        collective: &dyn Collective,
        layout: &DataLayout,
        embeddings: &Tensor,
        labels: &Tensor,
    ) -> Self {
        let local = embeddings.size()[0];
        if layout.one_shard_per_rank() {
            let global = collective
                .all_gather(&embeddings.detach())
                .set_requires_grad(true);
            let labels = collective.all_gather(labels);
            return Self {
                global,
                labels,
                local_rows: LocalRows::Span(collective.rank() * local, local),
            };
        }
        // Zero rows at the end; `gather_order` never picks them.
        let pad = layout.padded_rows() - local;
        let embeddings = embeddings.detach().constant_pad_nd([0, 0, 0, pad]);
        let labels = labels.constant_pad_nd([0, pad]);
        let device = embeddings.device();
        let order = Tensor::from_slice(&layout.gather_order()).to_device(device);
        let global = collective
            .all_gather(&embeddings)
            .index_select(0, &order)
            .set_requires_grad(true);
        let labels = collective
            .all_gather(&labels)
            .index_select(0, &order.to_device(labels.device()));
        let rows = Tensor::from_slice(&layout.local_rows()).to_device(device);
        Self {
            global,
            labels,
            local_rows: LocalRows::Index(rows),
        }
    }

    /// After the head's backward: this rank's rows of the summed gradient, to be fed into
    /// its own graph with `embeddings.backward(grad)`.
    pub fn local_grad(&self, collective: &dyn Collective) -> Option<Tensor> {
        let g = self.global.grad();
        if !g.defined() {
            return None;
        }
        let summed = collective.all_reduce_sum(&g);
        Some(match &self.local_rows {
            LocalRows::Span(start, len) => summed.narrow(0, *start, *len),
            LocalRows::Index(rows) => summed.index_select(0, rows),
        })
    }
}

#[cfg(test)]
mod layout_tests {
    use super::DataLayout;

    #[test]
    fn the_gather_order_puts_every_shard_back_in_place() {
        // 3 shards of 2 rows on 2 ranks: rank 0 sends shards 0 and 2, rank 1 shard 1 and
        // two rows of padding.
        let layout = DataLayout::new(0, 2, 3, 2);
        assert_eq!(layout.shards(), vec![0, 2]);
        assert_eq!(layout.padded_rows(), 4);
        assert_eq!(layout.gather_order(), vec![0, 1, 4, 5, 2, 3]);
        assert_eq!(layout.local_rows(), vec![0, 1, 4, 5]);
        assert_eq!(DataLayout::new(1, 2, 3, 2).local_rows(), vec![2, 3]);
        // One shard per rank: the identity.
        let full = DataLayout::new(1, 3, 3, 2);
        assert!(full.one_shard_per_rank());
        assert_eq!(full.gather_order(), vec![0, 1, 2, 3, 4, 5]);
    }
}
