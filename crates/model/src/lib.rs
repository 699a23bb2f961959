//! The LGAF face-recognition network (Local and Global Feature Attention Fusion) on tch.
//!
//! - [`iresnet`]: the insightface IResNet backbone and the GFE (global feature) head;
//! - [`mhms`]: the multi-head multi-scale local feature module;
//! - [`lgf`]: the norm-based attention fusion with its EMA statistics;
//! - [`model::Lgaf`]: the whole network, one `forward_t`;
//! - [`margin`] and [`partial_fc`]: the training head (combined-margin softmax over
//!   class centres sharded by class range);
//! - [`weights`]: safetensors I/O with PyTorch's parameter names.
//!
//! The crate knows nothing of networks or processes: cross-rank reductions come in through
//! the [`collective::Collective`] trait.

pub mod amp;
pub mod collective;
pub mod config;
pub mod error;
pub mod iresnet;
pub mod layers;
pub mod lgf;
pub mod margin;
pub mod mhms;
pub mod model;
pub mod partial_fc;
pub mod weights;

pub use config::{Arch, Fusion, LgfConfig, ModelConfig};
pub use error::{ModelError, Result};
pub use model::{Lgaf, LgafOutput};

/// Input side length.
pub const IMAGE_SIZE: i64 = 112;
