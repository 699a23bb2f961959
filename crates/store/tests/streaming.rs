//! Verifying a checkpoint and exporting one of its objects need a chunk of memory, not the
//! object's size (a coordinator checking a 2 GiB shard at start held all of it). A test
//! binary of its own: the peak is measured by a counting global allocator, which tests
//! running in parallel threads would disturb.

mod common;

use std::alloc::{GlobalAlloc, Layout, System};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

use common::*;
use lgaf_store::{sha256_hex, BlockingRunStore, Manifest, ManifestObject, StoreError};

struct Counting;

static CURRENT: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

fn grew(by: usize) {
    let now = CURRENT.fetch_add(by, Ordering::SeqCst) + by;
    PEAK.fetch_max(now, Ordering::SeqCst);
}

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            grew(layout.size());
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) };
        CURRENT.fetch_sub(layout.size(), Ordering::SeqCst);
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            if new_size > layout.size() {
                grew(new_size - layout.size());
            } else {
                CURRENT.fetch_sub(layout.size() - new_size, Ordering::SeqCst);
            }
        }
        p
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// The most memory allocated at once while `f` ran, above what was allocated before.
fn peak_during<T>(f: impl FnOnce() -> T) -> (T, usize) {
    let base = CURRENT.load(Ordering::SeqCst);
    PEAK.store(base, Ordering::SeqCst);
    let out = f();
    (out, PEAK.load(Ordering::SeqCst).saturating_sub(base))
}

const SIZE: usize = 64 << 20;
/// Room for the chunks of [`lgaf_store::STREAM_CHUNK`] in flight and bookkeeping; far
/// below the object's size.
const STREAMING_LIMIT: usize = 8 << 20;

fn partial_files(dir: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.to_string_lossy().contains("partial"))
        .collect()
}

#[test]
fn verifying_and_exporting_a_large_object_need_a_chunk_not_its_size() {
    let dir = std::env::temp_dir().join(format!("lgaf-store-{}-streaming", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let out_dir = dir.join("out");
    std::fs::create_dir_all(&out_dir).unwrap();
    let store = BlockingRunStore::from_url(dir.join("store").to_str().unwrap(), "r").unwrap();
    let key = "model.safetensors";
    let sha256 = {
        let data = payload(1, SIZE);
        let sha256 = sha256_hex(&data);
        for step in [10, 20] {
            let big = store.put_object(step, key, data.clone()).unwrap();
            let small =
                store.put_object(step, "classifier/rank-00000.safetensors", payload(2, 1000));
            let objects = vec![
                ManifestObject::from_info(&big, 0),
                ManifestObject::from_info(&small.unwrap(), 0),
            ];
            store
                .commit(&Manifest::new("r", step, 1, 1, objects, run_state(1)))
                .unwrap();
        }
        sha256
    };

    // What the coordinator does at start: find the newest checkpoint that verifies.
    let (verified, peak) = peak_during(|| store.verify_latest().unwrap().unwrap());
    assert_eq!(verified.manifest.step, 20);
    assert!(peak < STREAMING_LIMIT, "verify_latest held {peak} bytes");
    // The same search keeping the objects (what a rank loading its weights needs) does hold
    // them: the measurement sees an object's size when it is there.
    let (loaded, peak) = peak_during(|| store.load_latest().unwrap().unwrap());
    assert!(peak >= SIZE, "load_latest held only {peak} bytes");
    drop(loaded);

    // Export: streamed into the file.
    let out = out_dir.join("model.safetensors");
    let (exported, peak) = peak_during(|| store.download_latest(key, &out).unwrap().unwrap());
    assert!(peak < STREAMING_LIMIT, "download held {peak} bytes");
    assert_eq!(exported.manifest.step, 20);
    assert_eq!(sha256_hex(&std::fs::read(&out).unwrap()), sha256);

    // A flipped last byte: found by the streaming hash; the export leaves no file, partial
    // or otherwise, and an existing output is left as it was.
    let on_disk = dir.join("store").join(store.run().object_key(20, key));
    let mut bytes = std::fs::read(&on_disk).unwrap();
    bytes[SIZE - 1] ^= 0xff;
    std::fs::write(&on_disk, &bytes).unwrap();
    let (err, peak) = peak_during(|| store.verify(20).unwrap_err());
    assert!(peak < STREAMING_LIMIT, "verify held {peak} bytes");
    assert!(matches!(err, StoreError::Corrupt { .. }), "{err}");
    assert!(err.to_string().contains(&sha256), "{err}");
    let fresh = out_dir.join("fresh.safetensors");
    let err = store.download(20, key, &fresh).unwrap_err();
    assert!(matches!(err, StoreError::Corrupt { .. }), "{err}");
    assert!(!fresh.exists());
    std::fs::write(&out, b"the previous export").unwrap();
    assert!(store.download(20, key, &out).is_err());
    assert_eq!(std::fs::read(&out).unwrap(), b"the previous export");
    assert!(
        partial_files(&out_dir).is_empty(),
        "{:?}",
        partial_files(&out_dir)
    );
    // Without a step, export falls back to step 10.
    let exported = store.download_latest(key, &fresh).unwrap().unwrap();
    assert_eq!(exported.manifest.step, 10);
    assert_eq!(exported.skipped.len(), 1);
    assert!(
        exported.skipped[0].1.contains("000000000020"),
        "{:?}",
        exported.skipped
    );

    // Grown past the listed size: reported by size, both sizes named, before any of the
    // body is read (no read buffer is even allocated).
    bytes.extend_from_slice(&[0; 4096]);
    std::fs::write(&on_disk, &bytes).unwrap();
    drop(bytes);
    let (err, peak) = peak_during(|| store.verify(20).unwrap_err());
    let msg = err.to_string();
    assert!(
        msg.contains(&format!("expected {SIZE} bytes"))
            && msg.contains(&format!("found {} bytes", SIZE + 4096))
            && msg.contains("not computed"),
        "{msg}"
    );
    assert!(
        peak < lgaf_store::STREAM_CHUNK,
        "read {peak} bytes to find a size mismatch"
    );
    let err = store
        .download(20, key, &out_dir.join("grown.safetensors"))
        .unwrap_err();
    assert!(err.to_string().contains("not computed"), "{err}");
    assert!(!out_dir.join("grown.safetensors").exists());
    assert!(partial_files(&out_dir).is_empty());

    // A directory as the output: named, with what is expected; nothing is written into it.
    let err = store.download(10, key, &out_dir).unwrap_err();
    assert!(matches!(err, StoreError::Destination { .. }), "{err}");
    let msg = err.to_string();
    assert!(
        msg.contains(&out_dir.display().to_string()) && msg.contains("a file path is expected"),
        "{msg}"
    );
    assert!(partial_files(&out_dir).is_empty());
    // ... and it does not fall back through older checkpoints either.
    let err = store.download_latest(key, &out_dir).unwrap_err();
    assert!(matches!(err, StoreError::Destination { .. }), "{err}");
    let _ = std::fs::remove_dir_all(&dir);
}
