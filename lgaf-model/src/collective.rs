//! The reductions the model needs across data-parallel ranks, as a trait: this crate knows
//! nothing of networks or processes. The worker implements it over NCCL or TCP; a single
//! process uses [`SingleProcess`].

use tch::Tensor;

/// Element-wise reductions over all ranks. Every rank gets the same result.
pub trait Collective: Send + Sync {
    fn world_size(&self) -> i64;
    fn all_reduce_sum(&self, t: &Tensor) -> Tensor;
    fn all_reduce_max(&self, t: &Tensor) -> Tensor;
}

/// World size 1: every reduction is the identity.
#[derive(Debug, Default, Clone, Copy)]
pub struct SingleProcess;

impl Collective for SingleProcess {
    fn world_size(&self) -> i64 {
        1
    }
    fn all_reduce_sum(&self, t: &Tensor) -> Tensor {
        t.shallow_clone()
    }
    fn all_reduce_max(&self, t: &Tensor) -> Tensor {
        t.shallow_clone()
    }
}
