//! Compatibility with real MXNet (1.9.1) in both directions: packs written
//! here are read by `mxnet.recordio`, and packs written by `mxnet.recordio`
//! are read here. The Python side is `tests/mxnet/*.py`, run with the
//! interpreter of `.venv-mxnet` (`make test` creates it and passes its path
//! in `LGAF_MXNET_PYTHON`).

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use lgaf_data::recordio::{IndexSource, PackWriter, RecordPack, MAGIC};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

const M: [u8; 4] = MAGIC.to_le_bytes();

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// `LGAF_MXNET_PYTHON`, or the workspace's `.venv-mxnet` when run by plain
/// `cargo test`. A missing interpreter fails the test: skipping would hide
/// that compatibility went unchecked.
fn mxnet_python() -> PathBuf {
    let python = std::env::var_os("LGAF_MXNET_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join(".venv-mxnet/bin/python"));
    assert!(
        python.is_file(),
        "no MXNet Python at {}: run `make test` (it installs .venv-mxnet from \
         requirements-mxnet.txt), or `make venv-mxnet` and set LGAF_MXNET_PYTHON",
        python.display()
    );
    python
}

/// Run `tests/mxnet/<script>` on `rec_path` and parse its JSON output.
fn run_script(script: &str, rec_path: &Path) -> Value {
    let script_path = repo_root().join("tests/mxnet").join(script);
    let output = Command::new(mxnet_python())
        .arg(&script_path)
        .arg(rec_path)
        .output()
        .unwrap_or_else(|error| panic!("cannot run {}: {error}", script_path.display()));
    assert!(
        output.status.success(),
        "{} failed ({}):\n{}",
        script_path.display(),
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).unwrap_or_else(|error| {
        panic!(
            "{} printed no JSON ({error}):\n{}",
            script_path.display(),
            String::from_utf8_lossy(&output.stdout)
        )
    })
}

fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|byte| format!("{byte:02x}"))
        .collect()
}

/// A fresh directory under the system temp dir, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(label: &str) -> Self {
        let path =
            std::env::temp_dir().join(format!("lgaf-mxnet-compat-{label}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&path);
        fs::create_dir_all(&path).expect("cannot create temp dir");
        Self(path)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// (label, image) with the magic at aligned and unaligned places.
fn images() -> Vec<(u32, Vec<u8>)> {
    let body: Vec<u8> = (0..200u8).collect();
    vec![
        (0, body.clone()),
        (0, [&M[..], &body].concat()),
        (1, [&body[..8], &M, &body, &M, &M].concat()),
        (1, [&body[..], b"x", &M].concat()),
        (1, Vec::new()),
        (2, [&b"abcd"[..], &M].concat()),
        (4, M.repeat(5)),
    ]
}

fn record_json(key: u64, flag: u32, label: Value, data: &[u8]) -> Value {
    json!({
        "key": key,
        "flag": flag,
        "label": label,
        "id": key,
        "id2": 0,
        "len": data.len(),
        "sha256": sha256_hex(data),
    })
}

#[test]
fn mxnet_reads_packs_written_here() {
    let dir = TempDir::new("to-mxnet");
    let rec_path = dir.0.join("train.rec");
    let images = images();
    let mut writer = PackWriter::create(&rec_path).unwrap();
    for (label, image) in &images {
        writer.add(*label, image).unwrap();
    }
    writer.finish().unwrap();

    // Images 1..=7, identities 8..=12 (identity 3 is empty), header 0 last.
    let mut expected = Vec::new();
    for (key, (label, image)) in (1u64..).zip(&images) {
        expected.push(record_json(key, 0, json!(*label as f64), image));
    }
    let ranges = [[1, 3], [3, 6], [6, 7], [7, 7], [7, 8]];
    for (key, [start, end]) in (8u64..).zip(ranges) {
        expected.push(record_json(key, 2, json!([start as f64, end as f64]), b""));
    }
    let mut header = record_json(0, 2, json!([8.0, 13.0]), b"");
    header["id"] = json!(0);
    expected.push(header);

    let read = run_script("read_pack.py", &rec_path);
    assert_eq!(read["records"], Value::Array(expected));
    assert_eq!(
        read["sequential_count"],
        json!(images.len() + ranges.len() + 1)
    );
    let ours = sha256_hex(&fs::read(&rec_path).unwrap());
    assert_eq!(
        read["rewrite_sha256"],
        json!(ours),
        "MXNet frames the payloads differently"
    );
}

/// The manifest's images as (key, label, sha256), by key.
fn manifest_images(manifest: &Value) -> Vec<(u64, u32, String)> {
    manifest["images"]
        .as_array()
        .expect("manifest has an images array")
        .iter()
        .map(|image| {
            (
                image["key"].as_u64().unwrap(),
                image["label"].as_u64().unwrap() as u32,
                image["sha256"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

fn assert_pack_matches(pack: &RecordPack, manifest: &Value) {
    let header = manifest["header"].as_array().unwrap();
    let (identities_start, end) = (header[0].as_u64().unwrap(), header[1].as_u64().unwrap());
    let pack_header = pack.header().expect("MXNet's pack has a header record");
    assert_eq!(pack_header.image_keys, 1..identities_start);
    assert_eq!(pack_header.identity_keys, identities_start..end);

    let identities = manifest["identities"].as_array().unwrap();
    assert_eq!(pack.identity_count(), identities.len());
    for (identity, range) in identities.iter().enumerate() {
        let start = range[0].as_u64().unwrap() as usize;
        let end = range[1].as_u64().unwrap() as usize;
        assert_eq!(pack.identity_images(identity), start - 1..end - 1);
    }

    let images = manifest_images(manifest);
    assert_eq!(pack.image_count(), images.len());
    for (index, (key, label, sha)) in images.iter().enumerate() {
        let image = pack.image(index).unwrap();
        assert_eq!((image.key, image.label), (*key, *label));
        assert_eq!(sha256_hex(&image.bytes), *sha, "image key {key}");
    }

    // File order: the manifest's order without the header and identity records.
    let file_order: Vec<u64> = manifest["file_order"]
        .as_array()
        .unwrap()
        .iter()
        .map(|key| key.as_u64().unwrap())
        .filter(|key| (1..identities_start).contains(key))
        .collect();
    let iterated: Vec<u64> = pack.iter().map(|image| image.unwrap().key).collect();
    assert_eq!(iterated, file_order);
}

#[test]
fn packs_written_by_mxnet_read_here() {
    let dir = TempDir::new("from-mxnet");
    let rec_path = dir.0.join("train.rec");
    let manifest = run_script("write_pack.py", &rec_path);

    let pack = RecordPack::open(&rec_path).unwrap();
    assert_eq!(pack.index_source(), IndexSource::IdxFile);
    assert_pack_matches(&pack, &manifest);

    // Rebuilding MXNet's index from the records gives the same pack.
    let idx_path = rec_path.with_extension("idx");
    fs::remove_file(&idx_path).unwrap();
    let pack = RecordPack::open(&rec_path).unwrap();
    assert_eq!(pack.index_source(), IndexSource::Rebuilt { saved: true });
    assert_pack_matches(&pack, &manifest);

    // And MXNet reads the index we rebuilt.
    let read = run_script("read_pack.py", &rec_path);
    let keys: Vec<u64> = read["records"]
        .as_array()
        .unwrap()
        .iter()
        .map(|record| record["key"].as_u64().unwrap())
        .collect();
    let expected: Vec<u64> = manifest["file_order"]
        .as_array()
        .unwrap()
        .iter()
        .map(|key| key.as_u64().unwrap())
        .collect();
    assert_eq!(keys, expected);
}
