//! The cross-rank operations the model and its training heads need, as a trait: this crate
//! knows nothing of networks or processes. The worker implements it over its collective
//! backends (TCP between CPU workers, NCCL between GPUs); a single process uses
//! [`SingleProcess`].
//!
//! The methods return tensors, not results, because they run inside forward passes. An
//! implementation whose transport fails must not hang or panic: it records the failure,
//! returns its input unchanged, and the trainer checks for a recorded failure before it
//! applies a step (see the worker's `data_parallel` module).

use tch::Tensor;

/// Reductions and exchanges over all ranks. Every rank gets the same result.
pub trait Collective: Send + Sync {
    fn world_size(&self) -> i64;
    /// This process's rank in `0..world_size()`.
    fn rank(&self) -> i64;
    fn all_reduce_sum(&self, t: &Tensor) -> Tensor;
    fn all_reduce_max(&self, t: &Tensor) -> Tensor;
    /// Every rank's `t` (same shape everywhere), concatenated along dimension 0 in rank order.
    fn all_gather(&self, t: &Tensor) -> Tensor;
    /// `root`'s `t` on every rank.
    fn broadcast(&self, t: &Tensor, root: i64) -> Tensor;
}

/// World size 1: every operation is the identity.
#[derive(Debug, Default, Clone, Copy)]
pub struct SingleProcess;

impl Collective for SingleProcess {
    fn world_size(&self) -> i64 {
        1
    }
    fn rank(&self) -> i64 {
        0
    }
    fn all_reduce_sum(&self, t: &Tensor) -> Tensor {
        t.shallow_clone()
    }
    fn all_reduce_max(&self, t: &Tensor) -> Tensor {
        t.shallow_clone()
    }
    fn all_gather(&self, t: &Tensor) -> Tensor {
        t.shallow_clone()
    }
    fn broadcast(&self, t: &Tensor, _root: i64) -> Tensor {
        t.shallow_clone()
    }
}
