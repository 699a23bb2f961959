//! The training side of LGAF-Train: configuration, the batch loader, the trainer (one
//! process, or one rank of a coordinated run: `coordinated`, `data_parallel`), checkpoints,
//! evaluation, and the `lgaf` and `lgaf-worker` command-line tools built on them.

pub mod checkpoint;
pub mod cli;
pub mod config;
pub mod coordinated;
pub mod coordinator_client;
pub mod data_parallel;
pub mod dataset_tools;
pub mod device;
pub mod error;
pub mod eval;
pub mod eval_sets;
pub mod host_memory;
pub mod legacy_checkpoint;
pub mod loader;
pub mod metrics;
pub mod node;
pub mod onnx_export;
pub mod optim;
pub mod progress;
pub mod sweep;
pub mod trainer;

pub use config::TrainConfig;
pub use error::{Result, WorkerError};
pub use trainer::{StepReport, Trainer};
