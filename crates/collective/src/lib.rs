//! Collective operations across the ranks of one training generation, without libtorch:
//! the worker adapts tensors to these buffers.
//!
//! Two backends share [`Communicator`]'s contract and one test suite:
//! - [`tcp`]: a CPU backend over TCP between the workers (ring all-reduce for large buffers),
//!   what tests and CPU-only users run;
//! - [`nccl`]: NCCL on one GPU per rank, `libnccl.so.2` loaded at run time so the project
//!   builds and tests without CUDA.
//!
//! Every operation is collective: all ranks call the same operations in the same order with
//! the same sizes. A peer that dies, hangs or disagrees makes the operation fail with a
//! [`CollectiveError`] naming the peer, within the group's timeout; it never hangs.

use std::fmt;

pub mod nccl;
pub mod tcp;

/// Element types the reductions understand.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DType {
    F32,
    F64,
    I64,
}

impl DType {
    pub fn size(self) -> usize {
        match self {
            Self::F32 => 4,
            Self::F64 | Self::I64 => 8,
        }
    }
}

impl fmt::Display for DType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::F32 => "f32",
            Self::F64 => "f64",
            Self::I64 => "i64",
        })
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReduceOp {
    Sum,
    Max,
}

impl fmt::Display for ReduceOp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Sum => "sum",
            Self::Max => "max",
        })
    }
}

/// A host buffer reduced in place.
#[derive(Debug)]
pub enum ReduceBuf<'a> {
    F32(&'a mut [f32]),
    F64(&'a mut [f64]),
    I64(&'a mut [i64]),
}

impl ReduceBuf<'_> {
    pub fn dtype(&self) -> DType {
        match self {
            Self::F32(_) => DType::F32,
            Self::F64(_) => DType::F64,
            Self::I64(_) => DType::I64,
        }
    }

    pub fn len(&self) -> usize {
        match self {
            Self::F32(b) => b.len(),
            Self::F64(b) => b.len(),
            Self::I64(b) => b.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Why a collective operation failed. Each variant names the operation and, where one is
/// to blame, the peer (rank and address).
#[derive(Debug, thiserror::Error)]
pub enum CollectiveError {
    #[error("{op}: rank {peer} ({addr}) sent nothing for {waited_ms} ms (collective timeout); it is dead, hung or unreachable")]
    Timeout {
        op: &'static str,
        peer: usize,
        addr: String,
        waited_ms: u64,
    },

    #[error("{op}: connection to rank {peer} ({addr}) failed: {source}")]
    Io {
        op: &'static str,
        peer: usize,
        addr: String,
        #[source]
        source: std::io::Error,
    },

    #[error("{op}: rank {peer} ({addr}) is out of step: expected {expected}, received {found}")]
    Mismatch {
        op: &'static str,
        peer: usize,
        addr: String,
        expected: String,
        found: String,
    },

    #[error("{op}: {message}")]
    Usage { op: &'static str, message: String },

    #[error("could not form the group as rank {rank} of {world_size}: {message}")]
    Setup {
        rank: usize,
        world_size: usize,
        message: String,
    },

    #[error("NCCL: {0}")]
    Nccl(String),
}

pub type Result<T, E = CollectiveError> = std::result::Result<T, E>;

/// Collective operations on host memory. Every rank gets the same result.
pub trait Communicator: Send + Sync {
    fn rank(&self) -> usize;
    fn world_size(&self) -> usize;
    /// Element-wise reduction of `buf` over all ranks, in place.
    fn all_reduce(&self, buf: ReduceBuf<'_>, op: ReduceOp) -> Result<()>;
    /// Concatenates every rank's `send` (all the same length) in rank order into `recv`
    /// (`world_size * send.len()` bytes).
    fn all_gather(&self, send: &[u8], recv: &mut [u8]) -> Result<()>;
    /// Copies `root`'s `buf` into every rank's `buf` (all the same length).
    fn broadcast(&self, buf: &mut [u8], root: usize) -> Result<()>;
    /// Returns once every rank has entered it.
    fn barrier(&self) -> Result<()>;
}
