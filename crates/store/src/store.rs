//! [`Store`]: keys and bytes in a local directory or an S3 bucket, with SHA-256 on every
//! write so a later read can prove it got back what was written.
//!
//! Opening a URL, writes (multipart for large objects), plain reads, listing and deletes.
//! What a local directory checks so that no operation leaves it is in `local.rs`;
//! verified reads, which stream and hash an object against its [`ObjectInfo`], are in
//! `verify.rs`.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;

use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};
use object_store::aws::{AmazonS3Builder, AmazonS3ConfigKey};
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload, UpdateVersion};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::error::{Result, StoreError};
use crate::local::LocalRoot;
use crate::transfer::TransferSettings;
pub use crate::verify::STREAM_CHUNK;

/// Objects at least this large go up as a multipart upload (64 MiB): one PUT of a
/// multi-gigabyte shard fails as a whole on any hiccup and cannot use parallel streams.
pub const DEFAULT_MULTIPART_THRESHOLD: usize = 64 << 20;
/// Part size of a multipart upload (16 MiB).
pub const DEFAULT_PART_SIZE: usize = 16 << 20;
/// S3 refuses parts smaller than 5 MiB (except the last), so no smaller part size is allowed.
pub const MIN_PART_SIZE: usize = 5 << 20;
/// Parts in flight at once per multipart upload (8: at 4, one rank's 1.5 GB checkpoint went
/// to moto at 55 MB/s, against 124 for boto3's 10 threads).
pub const DEFAULT_PART_CONCURRENCY: usize = 8;
/// Below this size hashing inline is cheaper than handing it to a blocking thread.
const INLINE_HASH_LIMIT: usize = 1 << 20;

/// What a write produced: enough to verify the object later, and to list it in a manifest.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ObjectInfo {
    pub key: String,
    pub size: u64,
    /// SHA-256 of the content, lower-case hex.
    pub sha256: String,
}

/// The version of an object that was read: its ETag, and its version id where the bucket
/// keeps versions. A conditional replace ([`Store::put_if_unchanged`]) is made against it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ObjectVersion {
    pub e_tag: Option<String>,
    pub version: Option<String>,
}

/// What [`Store::put_if_unchanged`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Replaced {
    /// Written: the object was still at the version given.
    Done,
    /// Not written: the object changed (or went) since.
    Changed,
    /// Not written: the backend cannot replace conditionally.
    Unsupported,
}

/// One entry of [`Store::list`]: the key (relative to the store's root) and its size.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Listed {
    pub key: String,
    pub size: u64,
}

/// SHA-256 of `bytes` as lower-case hex.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex(Sha256::digest(bytes).as_slice())
}

/// `digest` as lower-case hex.
pub(crate) fn hex(digest: &[u8]) -> String {
    let mut hex = String::with_capacity(64);
    for b in digest {
        hex.push_str(&format!("{b:02x}"));
    }
    hex
}

/// Hashes on a blocking thread when the payload is large, so a 1 GB shard does not hold
/// up the runtime's other tasks (an upload, a heartbeat) for the second it takes.
async fn hash_off_thread(bytes: Bytes) -> Result<String> {
    if bytes.len() <= INLINE_HASH_LIMIT {
        return Ok(sha256_hex(&bytes));
    }
    tokio::task::spawn_blocking(move || sha256_hex(&bytes))
        .await
        .map_err(|e| StoreError::Task(format!("hashing failed: {e}")))
}

/// Checks a key: relative, `/`-separated, no empty, `.` or `..` segments. Keys are the same
/// on every backend, so one that the local directory would accept but S3 would mangle (or
/// the reverse) is refused up front.
pub(crate) fn check_key(key: &str) -> Result<Path> {
    let bad = |reason: &str| StoreError::InvalidKey {
        key: key.to_string(),
        reason: reason.to_string(),
    };
    if key.is_empty() {
        return Err(bad("it is empty"));
    }
    if key.starts_with('/') || key.ends_with('/') {
        return Err(bad("it must not start or end with `/`"));
    }
    Path::parse(key).map_err(|e| bad(&e.to_string()))
}

/// The process's store settings: `AWS_*`, and the retry and timeout settings `LGAF_STORE_*`.
fn aws_env() -> HashMap<String, String> {
    std::env::vars()
        .filter(|(k, _)| k.starts_with("AWS_") || k.starts_with("LGAF_STORE_"))
        .collect()
}

/// Which backend a URL names, resolved but not yet opened.
enum Target {
    Dir(PathBuf),
    S3 { bucket: String, prefix: String },
}

fn parse_url(url: &str) -> Result<Target> {
    let invalid = |reason: String| StoreError::InvalidUrl {
        url: url.to_string(),
        reason,
    };
    if url.trim().is_empty() {
        return Err(invalid("it is empty".into()));
    }
    if !url.contains("://") {
        // A plain path: relative ones are taken from the current directory, once, so the
        // store does not move if the process changes directory later.
        let path = std::path::absolute(url).map_err(|e| invalid(e.to_string()))?;
        return Ok(Target::Dir(path));
    }
    let parsed = url::Url::parse(url).map_err(|e| invalid(e.to_string()))?;
    match parsed.scheme() {
        "file" => {
            let path = parsed.to_file_path().map_err(|()| {
                invalid("a file URL needs an absolute path: file:///abs/dir".into())
            })?;
            Ok(Target::Dir(path))
        }
        "s3" => {
            let bucket = parsed
                .host_str()
                .filter(|b| !b.is_empty())
                .ok_or_else(|| invalid("no bucket: use s3://bucket/prefix".into()))?;
            if bucket.len() < 3 {
                return Err(invalid(format!(
                    "bucket `{bucket}` is shorter than the 3 characters S3 requires"
                )));
            }
            let prefix = parsed.path().trim_matches('/').to_string();
            if !prefix.is_empty() {
                check_key(&prefix).map_err(|e| invalid(format!("prefix: {e}")))?;
            }
            Ok(Target::S3 {
                bucket: bucket.to_string(),
                prefix,
            })
        }
        _ => Err(StoreError::UnsupportedUrl {
            url: url.to_string(),
        }),
    }
}

/// An object store (local directory or S3) under one root, with checksummed writes and
/// verified reads. Cheap to clone: clones share the backend and its connection pool.
///
/// All methods are async and need a tokio runtime; synchronous callers use
/// [`crate::BlockingRunStore`] or [`crate::BackgroundUploader`].
///
/// A local directory never lets an operation leave it: object_store's `LocalFileSystem`
/// follows symbolic links, so every call checks the way to its key first and refuses a
/// link anywhere below the root (see [`StoreError::Symlink`]). S3 has no links.
#[derive(Clone, Debug)]
pub struct Store {
    pub(crate) inner: Arc<dyn ObjectStore>,
    pub(crate) url: String,
    /// Prepended to every key (the `prefix` of `s3://bucket/prefix`; empty for a directory).
    prefix: Option<Path>,
    /// Set for a local directory.
    pub(crate) local: Option<Arc<LocalRoot>>,
    multipart_threshold: usize,
    part_size: usize,
    part_concurrency: usize,
}

impl Store {
    /// Opens `file:///abs/dir`, a plain directory path (created if missing), or
    /// `s3://bucket/prefix` configured by the standard `AWS_*` environment variables
    /// (`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_REGION`, `AWS_ENDPOINT_URL`,
    /// `AWS_ALLOW_HTTP`, ...); retries, timeouts and multipart sizes by `LGAF_STORE_*`
    /// ([`crate::transfer`]). For writers (training, the coordinator); readers use
    /// [`Store::from_existing_url`].
    pub fn from_url(url: &str) -> Result<Self> {
        Self::from_url_with_env(url, &aws_env())
    }

    /// Like [`Store::from_url`], but S3 settings come from `env` (same `AWS_*` and
    /// `LGAF_STORE_*` names) and the process environment is not read: tests and
    /// multi-tenant callers need that.
    pub fn from_url_with_env(url: &str, env: &HashMap<String, String>) -> Result<Self> {
        Self::open(url, env, true)
    }

    /// Like [`Store::from_url`], but a directory that does not exist is an error
    /// ([`StoreError::NoStoreDir`]) instead of being created: a read-only command given a
    /// mistyped path must say so, not report an empty store and leave directories behind.
    pub fn from_existing_url(url: &str) -> Result<Self> {
        Self::from_existing_url_with_env(url, &aws_env())
    }

    /// [`Store::from_existing_url`] with S3 settings from `env`.
    pub fn from_existing_url_with_env(url: &str, env: &HashMap<String, String>) -> Result<Self> {
        Self::open(url, env, false)
    }

    fn open(url: &str, env: &HashMap<String, String>, create: bool) -> Result<Self> {
        let transfer = TransferSettings::from_env(url, env)?;
        let mut local = None;
        let (inner, display, prefix): (Arc<dyn ObjectStore>, String, Option<Path>) =
            match parse_url(url)? {
                Target::Dir(dir) => {
                    let root = LocalRoot::open(url, &dir, create)?;
                    let fs = root.fs.clone();
                    let display = format!("file://{}", root.root.display());
                    local = Some(Arc::new(root));
                    (fs, display, None)
                }
                Target::S3 { bucket, prefix } => {
                    // First: the AWS_* settings below go into the same client options
                    // (AWS_ALLOW_HTTP, ...), and setting these after would drop them.
                    let mut builder = AmazonS3Builder::new()
                        .with_retry(transfer.retry_config())
                        .with_client_options(transfer.client_options());
                    for (key, value) in env {
                        if !key.starts_with("AWS_") {
                            continue;
                        }
                        // Unknown AWS_* names (AWS_PROFILE, ...) belong to other tools.
                        if let Ok(config) = key.to_ascii_lowercase().parse::<AmazonS3ConfigKey>() {
                            builder = builder.with_config(config, value.clone());
                        }
                    }
                    let s3 = builder
                        .with_bucket_name(&bucket)
                        .build()
                        .map_err(|source| StoreError::Open {
                            url: url.to_string(),
                            source: Box::new(source),
                        })?;
                    let display = if prefix.is_empty() {
                        format!("s3://{bucket}")
                    } else {
                        format!("s3://{bucket}/{prefix}")
                    };
                    let prefix = (!prefix.is_empty()).then(|| Path::from(prefix.as_str()));
                    (Arc::new(s3), display, prefix)
                }
            };
        Ok(Self {
            inner,
            url: display,
            prefix,
            local,
            // Checked by `TransferSettings::from_env`, whose errors name the variables.
            multipart_threshold: transfer.multipart_threshold,
            part_size: transfer.part_size,
            part_concurrency: DEFAULT_PART_CONCURRENCY,
        })
    }

    /// A store over any backend (tests wrap one to watch what the store asks of it).
    #[cfg(test)]
    pub(crate) fn over(inner: Arc<dyn ObjectStore>, url: &str) -> Self {
        Self {
            inner,
            url: url.to_string(),
            prefix: None,
            local: None,
            multipart_threshold: DEFAULT_MULTIPART_THRESHOLD,
            part_size: DEFAULT_PART_SIZE,
            part_concurrency: DEFAULT_PART_CONCURRENCY,
        }
    }

    /// Sets when multipart uploads start (objects of at least `threshold` bytes) and their
    /// part size (at least [`MIN_PART_SIZE`], which S3 requires of every part but the last).
    pub fn with_multipart(mut self, threshold: usize, part_size: usize) -> Result<Self> {
        if part_size < MIN_PART_SIZE {
            return Err(StoreError::InvalidConfig {
                url: self.url,
                reason: format!(
                    "multipart part size {part_size} bytes is below the {MIN_PART_SIZE} bytes \
                     S3 requires"
                ),
            });
        }
        if threshold == 0 {
            return Err(StoreError::InvalidConfig {
                url: self.url,
                reason: "multipart threshold must be above 0 bytes".into(),
            });
        }
        self.multipart_threshold = threshold;
        self.part_size = part_size;
        Ok(self)
    }

    /// Sets how many parts of one multipart upload are in flight at once (at least 1).
    pub fn with_part_concurrency(mut self, parts: usize) -> Self {
        self.part_concurrency = parts.max(1);
        self
    }

    /// The normalised URL: `file:///canonical/dir` or `s3://bucket/prefix`.
    /// The directory of a local store (canonical); `None` for S3.
    pub fn local_dir(&self) -> Option<&std::path::Path> {
        self.local.as_ref().map(|l| l.root.as_path())
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    pub fn multipart_threshold(&self) -> usize {
        self.multipart_threshold
    }

    pub fn part_size(&self) -> usize {
        self.part_size
    }

    pub(crate) fn location(&self, key: &str) -> Result<Path> {
        let path = check_key(key)?;
        Ok(match &self.prefix {
            None => path,
            Some(prefix) => prefix.parts().chain(path.parts()).collect(),
        })
    }

    /// The key of `location` relative to the store root (strips the URL's prefix).
    fn relative(&self, location: &Path) -> String {
        match &self.prefix {
            None => location.to_string(),
            Some(prefix) => match location.prefix_match(prefix) {
                Some(parts) => parts
                    .map(|p| p.as_ref().to_string())
                    .collect::<Vec<_>>()
                    .join("/"),
                None => location.to_string(),
            },
        }
    }

    pub(crate) fn backend_err(
        &self,
        op: &'static str,
        key: &str,
        source: object_store::Error,
    ) -> StoreError {
        match source {
            object_store::Error::NotFound { .. } => StoreError::NotFound {
                url: self.url.clone(),
                key: key.to_string(),
            },
            source => StoreError::Backend {
                op,
                url: self.url.clone(),
                key: key.to_string(),
                source: Box::new(source),
            },
        }
    }

    /// Writes `bytes` under `key` (replacing what was there) and returns its size and
    /// SHA-256. The hash is computed while the upload runs. Objects of at least the
    /// multipart threshold go up to S3 in parts, several in flight (a local directory
    /// writes them at once); a failed multipart upload is
    /// aborted so no half-object remains. Either way the object appears whole or not at all.
    pub async fn put(&self, key: &str, bytes: Bytes) -> Result<ObjectInfo> {
        let location = self.location(key)?;
        self.stay_inside("upload", key, &location)?;
        let size = bytes.len() as u64;
        let hash = hash_off_thread(bytes.clone());
        let upload = async {
            // A local directory takes one write: its multipart staging file only adds
            // positional writes per part (measured 274 MB/s against 743 for one write of
            // the same 1.5 GB checkpoint), and a disk has no hiccup a retry of a part mends.
            if self.local.is_none() && bytes.len() >= self.multipart_threshold {
                self.put_multipart(&location, bytes).await
            } else {
                self.inner
                    .put(&location, PutPayload::from(bytes))
                    .await
                    .map(|_| ())
            }
        };
        let (sha256, uploaded) = tokio::join!(hash, upload);
        uploaded.map_err(|e| self.backend_err("upload", key, e))?;
        Ok(ObjectInfo {
            key: key.to_string(),
            size,
            sha256: sha256?,
        })
    }

    async fn put_multipart(&self, location: &Path, bytes: Bytes) -> object_store::Result<()> {
        let mut upload = self.inner.put_multipart(location).await?;
        // Part numbers are fixed when each part is created, so they can finish in any order.
        // Slicing `Bytes` shares the buffer: no copy of the object is made.
        let parts: Vec<_> = (0..bytes.len())
            .step_by(self.part_size)
            .map(|start| {
                let end = (start + self.part_size).min(bytes.len());
                upload.put_part(PutPayload::from(bytes.slice(start..end)))
            })
            .collect();
        let sent = futures::stream::iter(parts)
            .buffer_unordered(self.part_concurrency)
            .try_collect::<Vec<()>>()
            .await;
        match sent {
            Ok(_) => upload.complete().await.map(|_| ()),
            Err(e) => {
                if let Err(abort) = upload.abort().await {
                    tracing::warn!(location = %location, error = %abort, "aborting a failed multipart upload failed");
                }
                Err(e)
            }
        }
    }

    /// Writes `bytes` under `key` only if nothing is there (a conditional write:
    /// If-None-Match on S3, a no-clobber link on a directory). Returns false, writing
    /// nothing, when the key exists.
    pub async fn put_new(&self, key: &str, bytes: Bytes) -> Result<bool> {
        let location = self.location(key)?;
        self.stay_inside("conditional write", key, &location)?;
        let options = PutOptions {
            mode: PutMode::Create,
            ..PutOptions::default()
        };
        match self
            .inner
            .put_opts(&location, PutPayload::from(bytes), options)
            .await
        {
            Ok(_) => Ok(true),
            Err(object_store::Error::AlreadyExists { .. }) => Ok(false),
            Err(e) => Err(self.backend_err("conditional write", key, e)),
        }
    }

    /// Replaces the object under `key` only if it is still at `since` (S3's `If-Match`):
    /// of two writers that read the same version, at most one replaces it. A backend
    /// without conditional replaces (a local directory) writes nothing and says
    /// [`Replaced::Unsupported`].
    pub async fn put_if_unchanged(
        &self,
        key: &str,
        bytes: Bytes,
        since: &ObjectVersion,
    ) -> Result<Replaced> {
        let location = self.location(key)?;
        self.stay_inside("conditional write", key, &location)?;
        let options = PutOptions {
            mode: PutMode::Update(UpdateVersion {
                e_tag: since.e_tag.clone(),
                version: since.version.clone(),
            }),
            ..PutOptions::default()
        };
        match self
            .inner
            .put_opts(&location, PutPayload::from(bytes), options)
            .await
        {
            Ok(_) => Ok(Replaced::Done),
            Err(object_store::Error::Precondition { .. }) => Ok(Replaced::Changed),
            Err(object_store::Error::NotImplemented { .. }) => Ok(Replaced::Unsupported),
            Err(e) => Err(self.backend_err("conditional write", key, e)),
        }
    }

    /// Reads the whole object under `key`. For objects listed in a manifest use
    /// [`Store::get_verified`] or [`Store::verify`], which check the size before reading.
    pub async fn get(&self, key: &str) -> Result<Bytes> {
        self.get_result(key)
            .await?
            .bytes()
            .await
            .map_err(|e| self.backend_err("download", key, e))
    }

    /// The backend's answer to a GET of `key`, once the way to it stays inside the store.
    pub(crate) async fn get_result(&self, key: &str) -> Result<object_store::GetResult> {
        let location = self.location(key)?;
        self.stay_inside("download", key, &location)?;
        self.inner
            .get(&location)
            .await
            .map_err(|e| self.backend_err("download", key, e))
    }

    /// Reads the whole object under `key`, which must be a `what` (a manifest, a lease) of
    /// at most `limit` bytes: its size is checked first, so a huge object where a small one
    /// belongs is refused ([`StoreError::TooLarge`]) without being read.
    pub async fn get_at_most(&self, key: &str, what: &'static str, limit: u64) -> Result<Bytes> {
        Ok(self.get_versioned_at_most(key, what, limit).await?.0)
    }

    /// [`Store::get_at_most`], with the version read, for a later
    /// [`Store::put_if_unchanged`].
    pub async fn get_versioned_at_most(
        &self,
        key: &str,
        what: &'static str,
        limit: u64,
    ) -> Result<(Bytes, ObjectVersion)> {
        let too_large = |size: u64| StoreError::TooLarge {
            url: self.url.clone(),
            key: key.to_string(),
            what,
            size,
            limit,
        };
        let size = self.head(key).await?.size;
        if size > limit {
            return Err(too_large(size));
        }
        let result = self.get_result(key).await?;
        // It may have changed since the HEAD.
        if result.meta.size > limit {
            return Err(too_large(result.meta.size));
        }
        let version = ObjectVersion {
            e_tag: result.meta.e_tag.clone(),
            version: result.meta.version.clone(),
        };
        let bytes = result
            .bytes()
            .await
            .map_err(|e| self.backend_err("download", key, e))?;
        Ok((bytes, version))
    }

    /// Size of the object under `key` without reading it; [`StoreError::NotFound`] if absent.
    pub async fn head(&self, key: &str) -> Result<Listed> {
        let location = self.location(key)?;
        self.stay_inside("size check", key, &location)?;
        let meta = self
            .inner
            .head(&location)
            .await
            .map_err(|e| self.backend_err("head", key, e))?;
        Ok(Listed {
            key: key.to_string(),
            size: meta.size,
        })
    }

    /// Every object under `prefix`, sorted by key. The prefix matches whole path segments:
    /// `runs/a` lists `runs/a/...` but not `runs/ab/...`. An empty prefix lists everything.
    pub async fn list(&self, prefix: &str) -> Result<Vec<Listed>> {
        let location = if prefix.is_empty() {
            self.prefix.clone()
        } else {
            Some(self.location(prefix)?)
        };
        self.no_link_under(prefix, location.as_ref()).await?;
        let metas: Vec<_> = self
            .inner
            .list(location.as_ref())
            .try_collect()
            .await
            .map_err(|e| self.backend_err("list", prefix, e))?;
        let mut out: Vec<Listed> = metas
            .into_iter()
            .map(|m| Listed {
                key: self.relative(&m.location),
                size: m.size,
            })
            .collect();
        out.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(out)
    }

    /// Moves the object `from` to `to` (replacing what is there): a rename on a directory,
    /// a copy and a delete on S3.
    pub async fn rename(&self, from: &str, to: &str) -> Result<()> {
        let (source, target) = (self.location(from)?, self.location(to)?);
        self.stay_inside("rename", from, &source)?;
        self.stay_inside("rename", to, &target)?;
        self.inner
            .rename(&source, &target)
            .await
            .map_err(|e| self.backend_err("rename", from, e))
    }

    /// Deletes `key`. Deleting an absent object succeeds, so an interrupted prune can be
    /// run again.
    pub async fn delete(&self, key: &str) -> Result<()> {
        let location = self.location(key)?;
        self.stay_inside("delete", key, &location)?;
        match self.inner.delete(&location).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(self.backend_err("delete", key, e)),
        }
    }

    /// Deletes `keys`, several at a time; absent ones are skipped. No order is promised:
    /// callers that need one (prune deletes a manifest before its objects) call it twice.
    pub async fn delete_all(&self, keys: &[String]) -> Result<()> {
        futures::stream::iter(keys)
            .map(|key| self.delete(key))
            .buffer_unordered(8)
            .try_collect::<Vec<()>>()
            .await
            .map(|_| ())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relative_paths_are_made_absolute_once() {
        let Target::Dir(dir) = parse_url("some/relative").unwrap() else {
            panic!("a plain path is a directory");
        };
        assert!(dir.is_absolute());
        assert!(dir.ends_with("some/relative"));
        let Target::Dir(dir) = parse_url("file:///tmp/x%20y").unwrap() else {
            panic!("file URL");
        };
        assert_eq!(dir, PathBuf::from("/tmp/x y"));
    }

    #[test]
    fn s3_urls_split_into_bucket_and_prefix() {
        let Target::S3 { bucket, prefix } = parse_url("s3://bucket/a/b/").unwrap() else {
            panic!("s3");
        };
        assert_eq!((bucket.as_str(), prefix.as_str()), ("bucket", "a/b"));
        let Target::S3 { prefix, .. } = parse_url("s3://bucket").unwrap() else {
            panic!("s3");
        };
        assert!(prefix.is_empty());
        assert!(matches!(
            parse_url("gs://bucket/x"),
            Err(StoreError::UnsupportedUrl { .. })
        ));
        assert!(parse_url("file://relative").is_err());
    }

    #[test]
    fn sha256_is_lower_hex() {
        assert_eq!(
            sha256_hex(b"abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }
}
