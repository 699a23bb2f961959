//! Checkpoints and job state of training runs (one process or many ranks) in object storage:
//! a local directory (`file:///dir` or a plain path) or S3 (`s3://bucket/prefix`).
//!
//! Every run's checkpoints have one format: each rank (one, for `lgaf train`) uploads its
//! own objects, one party then writes `MANIFEST.json` last, listing every object with its
//! size and SHA-256 and the typed run state. Object stores have no atomic rename of a folder, so the manifest is the
//! commit: a step without one is never loaded, and loading verifies every checksum and falls
//! back to the previous checkpoint if one fails. The crate is torch-free so the coordinator,
//! which does not link libtorch, can use it for its job state and checkpoint bookkeeping.
//!
//! Modules:
//!
//! - [`store`]: [`Store`], put/get/list/delete of keys, multipart uploads for large objects.
//! - [`transfer`]: [`TransferSettings`], a store's retries, timeouts and multipart sizes
//!   (`LGAF_STORE_*`).
//! - `verify` (private): [`Store::get_verified`], [`Store::verify`] and
//!   [`Store::download_verified`], which check the size first and hash as the bytes stream
//!   in, [`STREAM_CHUNK`] at a time.
//! - `local` (private): a local-directory [`Store`] refuses symbolic links below its root,
//!   so no operation leaves it.
//! - [`manifest`]: [`Manifest`], the commit record of a checkpoint, and [`RunState`], the
//!   typed run state it carries between processes (versioned; older formats upgraded or
//!   refused with the conversion).
//! - [`run`]: [`RunStore`], the checkpoints, manifests and job state of one run (see it for
//!   the key layout).
//! - [`lease`]: [`Lease`], the coordinator lease of a run, on [`RunStore`].
//! - [`uploader`]: [`BackgroundUploader`], uploads off the training thread, with the stall
//!   measured.
//! - [`blocking`]: [`BlockingRunStore`], the same operations for synchronous callers.
//! - [`history`]: the run's history (steps and events) in segments: [`HistoryWriter`] and
//!   [`read_history`].
//! - [`error`]: [`StoreError`]; [`time`]: UTC calendar time of Unix timestamps.

pub mod blocking;
pub mod error;
pub mod history;
pub mod lease;
mod local;
pub mod manifest;
pub mod run;
pub mod store;
pub mod time;
pub mod transfer;
pub mod uploader;
mod verify;

pub use blocking::BlockingRunStore;
pub use error::{Result, StoreError};
pub use history::{read_history, History, HistoryError, HistoryRecord, HistoryWriter};
pub use lease::{Lease, LeaseAttempt};
pub use manifest::{
    Manifest, ManifestError, ManifestObject, RunState, FORMAT, MANIFEST, RUN_STATE_VERSION,
};
pub use run::{
    is_valid_run_id, Downloaded, LoadedCheckpoint, ManifestSummary, Pruned, RunStore,
    VerifiedCheckpoint,
};
pub use store::{
    sha256_hex, Listed, ObjectInfo, ObjectVersion, Replaced, Store, DEFAULT_MULTIPART_THRESHOLD,
    DEFAULT_PART_SIZE, MIN_PART_SIZE,
};
pub use transfer::TransferSettings;
pub use uploader::{BackgroundUploader, UploadStats, UploadTicket, DEFAULT_MAX_PENDING_BYTES};
pub use verify::STREAM_CHUNK;
