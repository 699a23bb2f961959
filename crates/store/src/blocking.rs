//! [`BlockingRunStore`]: the [`RunStore`] operations for synchronous code (the worker's
//! training loop), each run to completion on a runtime the facade owns.

use std::future::Future;

use bytes::Bytes;

use crate::error::{Result, StoreError};
use crate::manifest::{Manifest, ManifestObject};
use crate::run::{
    Downloaded, LoadedCheckpoint, ManifestSummary, Pruned, RunStore, VerifiedCheckpoint,
};
use crate::store::{ObjectInfo, Store};
use crate::uploader::BackgroundUploader;

/// A [`RunStore`] with blocking methods. Must not be used from inside an async runtime
/// (tokio refuses to block a runtime thread); async code uses [`RunStore`] directly.
pub struct BlockingRunStore {
    run: RunStore,
    runtime: tokio::runtime::Runtime,
}

impl BlockingRunStore {
    /// Opens `url` (see [`Store::from_url`]) for run `run_id`.
    pub fn from_url(url: &str, run_id: &str) -> Result<Self> {
        Self::new(RunStore::new(Store::from_url(url)?, run_id)?)
    }

    /// Opens `url` for run `run_id` without creating anything: for readers (`lgaf ckpt`),
    /// which must fail on a store directory that does not exist (see
    /// [`Store::from_existing_url`]).
    pub fn from_existing_url(url: &str, run_id: &str) -> Result<Self> {
        Self::new(RunStore::new(Store::from_existing_url(url)?, run_id)?)
    }

    pub fn new(run: RunStore) -> Result<Self> {
        // Two threads: downloads of several objects and their hashing overlap, without
        // taking many cores from data loading.
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("lgaf-store")
            .enable_all()
            .build()
            .map_err(StoreError::Runtime)?;
        Ok(Self { run, runtime })
    }

    pub fn run(&self) -> &RunStore {
        &self.run
    }

    /// Runs any future (e.g. a [`Store`] call) on this facade's runtime.
    pub fn block_on<F: Future>(&self, future: F) -> F::Output {
        self.runtime.block_on(future)
    }

    /// An uploader for this run, for saving without waiting; see [`BackgroundUploader`].
    pub fn uploader(&self, max_pending_bytes: usize) -> Result<BackgroundUploader> {
        BackgroundUploader::with_max_pending(self.run.clone(), max_pending_bytes)
    }

    pub fn put_object(&self, step: u64, key: &str, bytes: Bytes) -> Result<ObjectInfo> {
        self.block_on(self.run.put_object(step, key, bytes))
    }

    pub fn commit(&self, manifest: &Manifest) -> Result<ObjectInfo> {
        self.block_on(self.run.commit(manifest))
    }

    pub fn committed(&self) -> Result<Vec<ManifestSummary>> {
        self.block_on(self.run.committed())
    }

    pub fn manifest_steps(&self) -> Result<Vec<u64>> {
        self.block_on(self.run.manifest_steps())
    }

    pub fn manifest(&self, step: u64) -> Result<Manifest> {
        self.block_on(self.run.manifest(step))
    }

    pub fn load(&self, step: u64) -> Result<LoadedCheckpoint> {
        self.block_on(self.run.load(step))
    }

    pub fn load_with<F>(&self, step: u64, wanted: F) -> Result<LoadedCheckpoint>
    where
        F: Fn(&ManifestObject) -> bool,
    {
        self.block_on(self.run.load_with(step, wanted))
    }

    pub fn load_latest(&self) -> Result<Option<LoadedCheckpoint>> {
        self.block_on(self.run.load_latest())
    }

    pub fn load_latest_with<F>(&self, wanted: F) -> Result<Option<LoadedCheckpoint>>
    where
        F: Fn(&ManifestObject) -> bool,
    {
        self.block_on(self.run.load_latest_with(wanted))
    }

    pub fn verify(&self, step: u64) -> Result<Manifest> {
        self.block_on(self.run.verify(step))
    }

    pub fn verify_latest(&self) -> Result<Option<VerifiedCheckpoint>> {
        self.block_on(self.run.verify_latest())
    }

    pub fn download(&self, step: u64, key: &str, dest: &std::path::Path) -> Result<Downloaded> {
        self.block_on(self.run.download(step, key, dest))
    }

    pub fn download_latest(&self, key: &str, dest: &std::path::Path) -> Result<Option<Downloaded>> {
        self.block_on(self.run.download_latest(key, dest))
    }

    pub fn prune(&self, keep_last: usize) -> Result<Pruned> {
        self.block_on(self.run.prune(keep_last))
    }

    pub fn set_aside(&self, step: u64, unix: u64) -> Result<String> {
        self.block_on(self.run.set_aside(step, unix))
    }

    pub fn put_job_state(&self, json: Bytes) -> Result<ObjectInfo> {
        self.block_on(self.run.put_job_state(json))
    }

    pub fn get_job_state(&self) -> Result<Option<Bytes>> {
        self.block_on(self.run.get_job_state())
    }
}
