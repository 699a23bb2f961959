//! Verified reads: an object listed with its size and SHA-256 ([`ObjectInfo`]) is checked
//! against both as it is read. The size is compared first (a HEAD, so an object of another
//! size is never downloaded); the body then streams through a [`Sink`] chunk by chunk,
//! hashed on the way, so verifying or exporting a multi-gigabyte shard holds
//! [`STREAM_CHUNK`] bytes, not the whole object. A local file is read in large chunks on
//! one blocking thread; a network stream as the connection delivers it.

use std::io::{Read, Write};
use std::path::PathBuf;

use bytes::Bytes;
use futures::TryStreamExt;
use object_store::GetResultPayload;
use sha2::{Digest, Sha256};

use crate::error::{Result, StoreError};
use crate::store::{hex, ObjectInfo, Store};

/// The most of an object a verified read holds at once (besides what its caller keeps):
/// verifying or exporting a multi-gigabyte shard needs this much memory, not its size.
pub const STREAM_CHUNK: usize = 1 << 20;

/// Where the bytes of a verified read go, chunk by chunk, as they arrive.
pub(crate) trait Sink: Send + 'static {
    fn accept(&mut self, chunk: &[u8]) -> Result<()>;
}

/// Verification only: nothing is kept.
pub(crate) struct Discard;

impl Sink for Discard {
    fn accept(&mut self, _: &[u8]) -> Result<()> {
        Ok(())
    }
}

/// The caller needs the bytes (a rank loading its weights): allocated once, at the size
/// already checked against the manifest.
pub(crate) struct Collect(pub Vec<u8>);

impl Sink for Collect {
    fn accept(&mut self, chunk: &[u8]) -> Result<()> {
        self.0.extend_from_slice(chunk);
        Ok(())
    }
}

/// A download to a file (written under a temporary name by [`Store::download_verified`]).
/// From a network stream it writes on the runtime thread: a chunk at a time into the page
/// cache, brief enough not to hold up other tasks.
struct ToFile {
    file: std::fs::File,
    path: PathBuf,
}

impl Sink for ToFile {
    fn accept(&mut self, chunk: &[u8]) -> Result<()> {
        self.file
            .write_all(chunk)
            .map_err(|e| StoreError::Destination {
                path: self.path.display().to_string(),
                problem: e.to_string(),
            })
    }
}

/// What a verified read found: the bytes it read and, when that is the expected size, their
/// SHA-256 (an object of another size is not hashed: the size already proves it differs).
struct Found {
    size: u64,
    sha256: Option<String>,
}

/// Reads a local file in [`STREAM_CHUNK`] pieces, hashing each and passing it on; stops
/// as soon as the file turns out longer than `expected` (it grew after its size was read).
fn read_file<S: Sink>(
    file: std::fs::File,
    expected: u64,
    mut sink: S,
    read_err: impl Fn(std::io::Error) -> StoreError,
) -> Result<(S, Found)> {
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; STREAM_CHUNK];
    let mut size = 0u64;
    // One byte past the expected size is enough to tell that the file is longer.
    let mut file = file.take(expected.saturating_add(1));
    loop {
        let n = match file.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(read_err(e)),
        };
        size += n as u64;
        if size > expected {
            break;
        }
        hasher.update(&buf[..n]);
        sink.accept(&buf[..n])?;
    }
    let sha256 = (size == expected).then(|| hex(hasher.finalize().as_slice()));
    Ok((sink, Found { size, sha256 }))
}

impl Store {
    /// Reads `info.key` and checks it has `info.size` bytes and SHA-256 `info.sha256`; a
    /// mismatch is [`StoreError::Corrupt`] naming the key, what was expected and found.
    /// The size is checked before the body is read (an object of another size is never
    /// downloaded), and the hash while it arrives, into one buffer of the expected size.
    pub async fn get_verified(&self, info: &ObjectInfo) -> Result<Bytes> {
        self.check_size(info).await?;
        self.get_verified_sized(info).await
    }

    /// [`Store::get_verified`] once the size is known to match.
    pub(crate) async fn get_verified_sized(&self, info: &ObjectInfo) -> Result<Bytes> {
        let capacity = usize::try_from(info.size).unwrap_or(usize::MAX);
        let Collect(bytes) = self
            .read_verified(info, Collect(Vec::with_capacity(capacity)))
            .await?;
        Ok(Bytes::from(bytes))
    }

    /// Checks `info.key` as [`Store::get_verified`] does, without keeping it: the object is
    /// hashed as it streams past, so verifying needs [`STREAM_CHUNK`] bytes of memory
    /// whatever its size.
    pub async fn verify(&self, info: &ObjectInfo) -> Result<()> {
        self.check_size(info).await?;
        self.verify_sized(info).await
    }

    /// [`Store::verify`] once the size is known to match.
    pub(crate) async fn verify_sized(&self, info: &ObjectInfo) -> Result<()> {
        self.read_verified(info, Discard).await.map(|_| ())
    }

    /// Downloads `info.key` to the file `dest`, verified as [`Store::verify`] does: it is
    /// streamed to a temporary name in `dest`'s directory, hashed on the way, and renamed to
    /// `dest` only once it verifies. On any failure the temporary file is removed and
    /// `dest` is left as it was. `dest`'s directory must exist.
    pub async fn download_verified(&self, info: &ObjectInfo, dest: &std::path::Path) -> Result<()> {
        let refuse = |problem: String| StoreError::Destination {
            path: dest.display().to_string(),
            problem,
        };
        let as_dir = dest.as_os_str().to_string_lossy().ends_with('/');
        if as_dir || dest.is_dir() {
            return Err(refuse(
                "it is a directory; a file path is expected (e.g. <dir>/model.safetensors)".into(),
            ));
        }
        let Some(name) = dest.file_name() else {
            return Err(refuse("it names no file; a file path is expected".into()));
        };
        // Nothing is created for an object whose size already says it is corrupt.
        self.check_size(info).await?;
        let dir = dest
            .parent()
            .filter(|d| !d.as_os_str().is_empty())
            .unwrap_or(std::path::Path::new("."));
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let tmp = dir.join(format!(
            ".{}.{}-{nanos}.partial",
            name.to_string_lossy(),
            std::process::id()
        ));
        // create_new: never write through something already there (a link, say).
        let file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&tmp)
            .map_err(|e| match e.kind() {
                std::io::ErrorKind::NotFound => {
                    refuse(format!("its directory {} does not exist", dir.display()))
                }
                _ => refuse(format!("cannot create {}: {e}", tmp.display())),
            })?;
        let written = async {
            let sink = self
                .read_verified(
                    info,
                    ToFile {
                        file,
                        path: tmp.clone(),
                    },
                )
                .await?;
            sink.file
                .sync_all()
                .map_err(|e| refuse(format!("cannot flush {}: {e}", tmp.display())))?;
            drop(sink);
            std::fs::rename(&tmp, dest)
                .map_err(|e| refuse(format!("cannot rename {} to it: {e}", tmp.display())))
        };
        let result = written.await;
        if result.is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
        result
    }

    /// [`StoreError::Corrupt`] for an object of `found` bytes where `info` lists another size.
    fn size_mismatch(&self, info: &ObjectInfo, found: u64) -> StoreError {
        StoreError::Corrupt {
            url: self.url.clone(),
            key: info.key.clone(),
            expected_size: info.size,
            expected_sha256: info.sha256.clone(),
            found_size: found,
            found_sha256: "(not computed: the size differs)".to_string(),
        }
    }

    /// Compares the stored size of `info.key` (a HEAD, no body) with `info.size`.
    pub(crate) async fn check_size(&self, info: &ObjectInfo) -> Result<()> {
        let found = self.head(&info.key).await?.size;
        if found != info.size {
            return Err(self.size_mismatch(info, found));
        }
        Ok(())
    }

    /// Reads `info.key` into `sink` chunk by chunk, hashing as it goes, and checks size and
    /// SHA-256 at the end. Never takes in more than `info.size` bytes plus one chunk, even
    /// if the object changed since its size was checked.
    async fn read_verified<S: Sink>(&self, info: &ObjectInfo, mut sink: S) -> Result<S> {
        let key = info.key.clone();
        let result = self.get_result(&key).await?;
        if result.meta.size != info.size {
            return Err(self.size_mismatch(info, result.meta.size));
        }
        let expected = info.size;
        let found = match result.payload {
            // A local file: one blocking task reads it in large chunks (the default stream
            // would hop to a blocking thread every 8 KiB).
            GetResultPayload::File(file, path) => {
                let url = self.url.clone();
                let read_err = move |e: std::io::Error| StoreError::Backend {
                    op: "download",
                    url: url.clone(),
                    key: key.clone(),
                    source: Box::new(object_store::Error::Generic {
                        store: "LocalFileSystem",
                        source: format!("reading {}: {e}", path.display()).into(),
                    }),
                };
                let (back, found) =
                    tokio::task::spawn_blocking(move || read_file(file, expected, sink, read_err))
                        .await
                        .map_err(|e| StoreError::Task(format!("reading `{}`: {e}", info.key)))??;
                sink = back;
                found
            }
            // A network stream: chunks are as the connection delivers them; each is hashed
            // and handed on, then dropped.
            GetResultPayload::Stream(mut stream) => {
                let mut hasher = Sha256::new();
                let mut size = 0u64;
                while let Some(chunk) = stream
                    .try_next()
                    .await
                    .map_err(|e| self.backend_err("download", &info.key, e))?
                {
                    size += chunk.len() as u64;
                    if size > expected {
                        break;
                    }
                    hasher.update(&chunk);
                    sink.accept(&chunk)?;
                }
                let sha256 = (size == expected).then(|| hex(hasher.finalize().as_slice()));
                Found { size, sha256 }
            }
        };
        self.checked(info, sink, found)
    }

    /// `sink` if what was read (`found`) is the object `info` lists, else the mismatch.
    fn checked<S>(&self, info: &ObjectInfo, sink: S, found: Found) -> Result<S> {
        match found.sha256 {
            Some(sha256) if sha256 == info.sha256 => Ok(sink),
            Some(sha256) => Err(StoreError::Corrupt {
                url: self.url.clone(),
                key: info.key.clone(),
                expected_size: info.size,
                expected_sha256: info.sha256.clone(),
                found_size: found.size,
                found_sha256: sha256,
            }),
            None => Err(self.size_mismatch(info, found.size)),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use futures::StreamExt;
    use object_store::path::Path;
    use object_store::{ObjectStore, PutOptions, PutPayload};

    use super::*;

    /// A backend that counts the object bodies it is asked for (GETs that are not HEADs)
    /// and hands them out in 64 KiB chunks, as a network connection would.
    #[derive(Debug, Default)]
    struct Watched {
        inner: object_store::memory::InMemory,
        bodies: std::sync::atomic::AtomicUsize,
    }

    impl std::fmt::Display for Watched {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            write!(f, "Watched({})", self.inner)
        }
    }

    type Fut<'a, T> =
        std::pin::Pin<Box<dyn std::future::Future<Output = object_store::Result<T>> + Send + 'a>>;

    // What #[async_trait] would generate; written out to need no extra dependency.
    impl ObjectStore for Watched {
        fn put_opts<'a, 'b, 'c>(
            &'a self,
            location: &'b Path,
            payload: PutPayload,
            opts: PutOptions,
        ) -> Fut<'c, object_store::PutResult>
        where
            'a: 'c,
            'b: 'c,
            Self: 'c,
        {
            self.inner.put_opts(location, payload, opts)
        }

        fn put_multipart_opts<'a, 'b, 'c>(
            &'a self,
            location: &'b Path,
            opts: object_store::PutMultipartOptions,
        ) -> Fut<'c, Box<dyn object_store::MultipartUpload>>
        where
            'a: 'c,
            'b: 'c,
            Self: 'c,
        {
            self.inner.put_multipart_opts(location, opts)
        }

        fn get_opts<'a, 'b, 'c>(
            &'a self,
            location: &'b Path,
            options: object_store::GetOptions,
        ) -> Fut<'c, object_store::GetResult>
        where
            'a: 'c,
            'b: 'c,
            Self: 'c,
        {
            Box::pin(async move {
                let head = options.head;
                let result = self.inner.get_opts(location, options).await?;
                if head {
                    return Ok(result);
                }
                self.bodies
                    .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                let (meta, range, attributes) = (
                    result.meta.clone(),
                    result.range.clone(),
                    result.attributes.clone(),
                );
                let chunks = result
                    .into_stream()
                    .map_ok(|b| {
                        let pieces: Vec<object_store::Result<Bytes>> = (0..b.len())
                            .step_by(64 << 10)
                            .map(|i| Ok(b.slice(i..(i + (64 << 10)).min(b.len()))))
                            .collect();
                        futures::stream::iter(pieces)
                    })
                    .try_flatten()
                    .boxed();
                let result = object_store::GetResult {
                    payload: GetResultPayload::Stream(chunks),
                    meta,
                    range,
                    attributes,
                    extensions: Default::default(),
                };
                Ok(result)
            })
        }

        fn delete_stream(
            &self,
            locations: futures::stream::BoxStream<'static, object_store::Result<Path>>,
        ) -> futures::stream::BoxStream<'static, object_store::Result<Path>> {
            self.inner.delete_stream(locations)
        }

        fn list(
            &self,
            prefix: Option<&Path>,
        ) -> futures::stream::BoxStream<'static, object_store::Result<object_store::ObjectMeta>>
        {
            self.inner.list(prefix)
        }

        fn list_with_delimiter<'a, 'b, 'c>(
            &'a self,
            prefix: Option<&'b Path>,
        ) -> Fut<'c, object_store::ListResult>
        where
            'a: 'c,
            'b: 'c,
            Self: 'c,
        {
            self.inner.list_with_delimiter(prefix)
        }

        fn copy_opts<'a, 'b, 'c, 'd>(
            &'a self,
            from: &'b Path,
            to: &'c Path,
            options: object_store::CopyOptions,
        ) -> Fut<'d, ()>
        where
            'a: 'd,
            'b: 'd,
            'c: 'd,
            Self: 'd,
        {
            self.inner.copy_opts(from, to, options)
        }
    }

    #[tokio::test]
    async fn a_size_mismatch_is_found_without_reading_the_body() {
        let watched = Arc::new(Watched::default());
        let store = Store::over(watched.clone(), "watched://");
        let bodies = || watched.bodies.load(std::sync::atomic::Ordering::SeqCst);
        let data = Bytes::from(vec![7u8; 3 << 20]);
        let info = store
            .put("runs/r/ckpt/000000000010/m.bin", data.clone())
            .await
            .unwrap();

        // The manifest says one size, the object has another: reported by key, with both
        // sizes, and the body is never requested.
        for listed in [info.size - 1, info.size + 1] {
            let wrong = ObjectInfo {
                size: listed,
                ..info.clone()
            };
            for err in [
                store.get_verified(&wrong).await.unwrap_err(),
                store.verify(&wrong).await.unwrap_err(),
            ] {
                let msg = err.to_string();
                assert!(
                    msg.contains(&info.key)
                        && msg.contains(&format!("expected {listed} bytes"))
                        && msg.contains(&format!("found {} bytes", info.size)),
                    "{msg}"
                );
            }
            assert_eq!(bodies(), 0, "the body was read to find a size mismatch");
        }
        // The same through a checkpoint: every size is checked before any object is read.
        let run = crate::RunStore::new(store.clone(), "r").unwrap();
        let small = run
            .put_object(10, "a.bin", Bytes::from_static(b"abc"))
            .await
            .unwrap();
        let mut listed = crate::ManifestObject::from_info(&info, 0);
        listed.key = "m.bin".into();
        listed.size += 1;
        let manifest = crate::Manifest::new(
            "r",
            10,
            0,
            1,
            vec![crate::ManifestObject::from_info(&small, 0), listed],
            crate::RunState::new(1, 1, 1.0, 0, serde_json::json!({})),
        );
        let json = serde_json::to_vec(&manifest).unwrap();
        store
            .put(&run.manifest_key(10), Bytes::from(json))
            .await
            .unwrap();
        let before = bodies();
        let err = run.load(10).await.unwrap_err();
        assert!(err.to_string().contains("m.bin"), "{err}");
        assert!(run.verify(10).await.is_err());
        let loaded = run.load_latest().await;
        assert!(loaded.is_err());
        // Only the manifests were read.
        assert_eq!(bodies() - before, 3);

        // The right size: the content is streamed and verified; a flipped byte is found.
        assert_eq!(store.get_verified(&info).await.unwrap(), data);
        store.verify(&info).await.unwrap();
        let mut flipped = data.to_vec();
        flipped[(3 << 20) - 1] ^= 1;
        store.put(&info.key, Bytes::from(flipped)).await.unwrap();
        let err = store.verify(&info).await.unwrap_err();
        assert!(matches!(err, StoreError::Corrupt { .. }), "{err}");
        assert!(err.to_string().contains(&info.sha256), "{err}");
    }
}
