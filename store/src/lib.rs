//! Checkpoints and job state of multi-rank training runs in object storage: a local
//! directory (`file:///dir` or a plain path) or S3 (`s3://bucket/prefix`).
//!
//! This generalises the worker's single-process checkpoint folder: every rank uploads its
//! own shards, one party then writes `MANIFEST.json` last, listing every object with its size
//! and SHA-256. Object stores have no atomic rename of a folder, so the manifest is the
//! commit: a step without one is never loaded, and loading verifies every checksum and falls
//! back to the previous checkpoint if one fails. The crate is torch-free so the coordinator,
//! which does not link libtorch, can use it for its job state and checkpoint bookkeeping.
//!
//! - [`Store`]: put/get/verify/list/delete of keys, multipart uploads for large objects.
//! - [`RunStore`]: the checkpoint layout of one run (see [`run`] for the key layout).
//! - [`BackgroundUploader`]: uploads off the training thread, with the stall measured.
//! - [`BlockingRunStore`]: the same operations for synchronous callers.

pub mod blocking;
pub mod error;
pub mod run;
pub mod store;
pub mod time;
pub mod uploader;

pub use blocking::BlockingRunStore;
pub use error::{Result, StoreError};
pub use run::{
    Lease, LeaseAttempt, LoadedCheckpoint, Manifest, ManifestObject, ManifestSummary, Pruned,
    RunStore, FORMAT, MANIFEST,
};
pub use store::{
    sha256_hex, Listed, ObjectInfo, Store, DEFAULT_MULTIPART_THRESHOLD, DEFAULT_PART_SIZE,
    MIN_PART_SIZE,
};
pub use uploader::{BackgroundUploader, UploadStats, UploadTicket, DEFAULT_MAX_PENDING_BYTES};
