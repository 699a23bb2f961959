//! One error type for the crate. Every variant names the store URL and the key (or the
//! run and step) it is about, and what was expected, so a log line alone says what to fix.
//! Backend errors are boxed to keep `Result<T, StoreError>` small on the happy path.

/// Result with [`StoreError`].
pub type Result<T, E = StoreError> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error(
        "unsupported store URL `{url}`: use file:///absolute/dir, a plain directory path, \
         or s3://bucket/prefix"
    )]
    UnsupportedUrl { url: String },

    #[error("invalid store URL `{url}`: {reason}")]
    InvalidUrl { url: String, reason: String },

    #[error("cannot create the store directory {path}: {source}")]
    CreateDir {
        path: String,
        #[source]
        source: std::io::Error,
    },

    #[error(
        "the store directory {path} {problem}: check the store URL (reading a store never \
         creates it; only a writer such as training does)"
    )]
    NoStoreDir { path: String, problem: String },

    #[error("cannot open the store `{url}`: {source}")]
    Open {
        url: String,
        #[source]
        source: Box<object_store::Error>,
    },

    #[error("invalid setting for the store `{url}`: {reason}")]
    InvalidConfig { url: String, reason: String },

    #[error("invalid object key `{key}`: {reason}")]
    InvalidKey { key: String, reason: String },

    #[error(
        "invalid run id `{run_id}`: {reason}; a run id is one path segment such as \
         `resnet50-2024-06`"
    )]
    InvalidRunId { run_id: String, reason: String },

    /// A local-directory store met a symbolic link on the way to a key. Links are refused
    /// whatever they point at; the message names the link, never its target, so an error
    /// cannot be used to probe files outside the store.
    #[error(
        "{op} of `{key}` in {url} refused: {link} is a symbolic link, and the store does not \
         follow links (they can lead out of its root); replace the link with the real \
         directory or file"
    )]
    Symlink {
        op: &'static str,
        url: String,
        key: String,
        link: String,
    },

    #[error(
        "{op} of `{key}` in {url} refused: {path} is not a regular file (a FIFO, socket or \
         device); remove it"
    )]
    NotAFile {
        op: &'static str,
        url: String,
        key: String,
        path: String,
    },

    #[error(
        "the coordinator lease `{key}` in {url} is unreadable ({reason}), so no coordinator \
         can act for the run; if no coordinator of the run is running, delete `{key}` and \
         start again"
    )]
    BadLease {
        url: String,
        key: String,
        reason: String,
    },

    #[error(
        "run {run} in {url} is being coordinated by {} on {} (pid {}), whose lease it keeps \
         renewing (it lapses at {} UTC unless renewed); stop that coordinator, or wait \
         for its lease to lapse",
        holder.holder, holder.host, holder.pid,
        crate::time::Utc::from_unix(holder.expires_at_ms / 1000)
    )]
    LeaseHeld {
        url: String,
        run: String,
        holder: Box<crate::Lease>,
    },

    /// The lease this coordinator held changed under it and is no longer its own (gone, or
    /// not readable back): it must stop acting for the run.
    #[error(
        "the coordinator lease of run `{run}` in {url} {reason}; this coordinator no longer \
         holds it and stops acting for the run (starting it again takes the lease anew)"
    )]
    LeaseLost {
        url: String,
        run: String,
        reason: String,
    },

    #[error("object `{key}` not found in {url}")]
    NotFound { url: String, key: String },

    #[error("{op} of `{key}` in {url} failed: {source}")]
    Backend {
        op: &'static str,
        url: String,
        key: String,
        #[source]
        source: Box<object_store::Error>,
    },

    #[error(
        "object `{key}` in {url} does not verify: expected {expected_size} bytes with SHA-256 \
         {expected_sha256}, found {found_size} bytes with SHA-256 {found_sha256}"
    )]
    Corrupt {
        url: String,
        key: String,
        expected_size: u64,
        expected_sha256: String,
        found_size: u64,
        found_sha256: String,
    },

    #[error(
        "run `{run_id}` in {url} has no committed checkpoint at step {step} (no `{key}`): \
         it was never saved, or its save did not finish; `lgaf ckpt ls` lists the committed \
         ones"
    )]
    NotCommitted {
        url: String,
        run_id: String,
        step: u64,
        key: String,
    },

    #[error("checkpoint {step} of run `{run_id}` in {url} has no object `{key}` (its manifest does not list it)")]
    NotInCheckpoint {
        url: String,
        run_id: String,
        step: u64,
        key: String,
    },

    #[error(
        "`{key}` in {url} is {size} bytes, more than any {what} ({limit} bytes at most), so \
         it is not one and was not read; remove or replace it"
    )]
    TooLarge {
        url: String,
        key: String,
        what: &'static str,
        size: u64,
        limit: u64,
    },

    #[error("cannot write {path}: {problem}")]
    Destination { path: String, problem: String },

    #[error("manifest `{key}` in {url} is not a valid checkpoint manifest: {reason}")]
    BadManifest {
        url: String,
        key: String,
        reason: String,
    },

    #[error("cannot commit step {step} of run `{run_id}` in {url}: {reason}")]
    CommitRefused {
        url: String,
        run_id: String,
        step: u64,
        reason: String,
    },

    #[error(
        "run `{run_id}` in {url} has committed checkpoints but none verifies: {}",
        .failures.join("; ")
    )]
    NoValidCheckpoint {
        url: String,
        run_id: String,
        failures: Vec<String>,
    },

    #[error("invalid argument: {0}")]
    InvalidArgument(String),

    #[error("cannot start the store's tokio runtime: {0}")]
    Runtime(#[source] std::io::Error),

    #[error("the background uploader stopped before `{key}` of step {step} was uploaded")]
    UploaderGone { step: u64, key: String },

    #[error("`{key}` of step {step} was still uploading at its deadline")]
    UploadOverdue { step: u64, key: String },

    #[error("a background task of the store failed: {0}")]
    Task(String),
}
