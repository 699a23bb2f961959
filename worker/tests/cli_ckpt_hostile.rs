//! `lgaf ckpt ls` / `lgaf ckpt export` given what a user mistypes or a hostile store holds:
//! a store that does not exist, a directory as `--out`, a corrupt object, an object that
//! is a symbolic link out of the store. Each fails naming the culprit, and leaves nothing
//! behind (no created directory, no partial file, nothing read from outside the store).

mod common;

use std::path::{Path, PathBuf};

use bytes::Bytes;
use common::*;
use lgaf_store::{sha256_hex, BlockingRunStore, Manifest, ManifestObject};

const MODEL: &str = "model.safetensors";

/// A store under `dir/store` with run `r` committed at `steps`; the model object of step
/// N is `model N` repeated.
fn store_with(dir: &Path, steps: &[u64]) -> (String, BlockingRunStore) {
    let url = format!("file://{}", dir.join("store").display());
    let store = BlockingRunStore::from_url(&url, "r").unwrap();
    for &step in steps {
        let info = store.put_object(step, MODEL, model_bytes(step)).unwrap();
        let manifest = Manifest::new(
            "r",
            step,
            step / 10,
            1,
            vec![ManifestObject::from_info(&info, 0)],
            run_state(),
        );
        store.commit(&manifest).unwrap();
    }
    (url, store)
}

fn model_bytes(step: u64) -> Bytes {
    Bytes::from(format!("model {step} ").repeat(1000))
}

fn object_path(dir: &Path, step: u64) -> PathBuf {
    dir.join(format!("store/runs/r/ckpt/{step:012}/{MODEL}"))
}

/// Every path under `dir` whose name says it is a partial or temporary file.
fn leftovers(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() && !path.is_symlink() {
                stack.push(path.clone());
            }
            if path.to_string_lossy().contains("partial") {
                out.push(path);
            }
        }
    }
    out
}

/// `lgaf ckpt export` of run `r` in `store` to `out`, of `step` if given.
fn export<'a>(store: &'a str, step: Option<&'a str>, out: &'a str) -> Vec<&'a str> {
    let mut args = vec![
        "ckpt", "export", "--store", store, "--run", "r", "--out", out,
    ];
    if let Some(step) = step {
        args.extend(["--step", step]);
    }
    args
}

#[test]
fn ls_and_export_refuse_a_store_that_does_not_exist_and_create_nothing() {
    let dir = temp_dir("ckpt-no-store");
    let typo = dir.join("stroe");
    let out = dir.join("exported/w.safetensors");
    for store in [
        typo.display().to_string(),
        format!("file://{}", typo.display()),
    ] {
        let err = fails(&["ckpt", "ls", "--store", &store, "--run", "r"]);
        assert!(
            err.contains(s(&typo)) && err.contains("does not exist"),
            "{err}"
        );
        let err = fails(&["ckpt", "ls", "--store", &store, "--run", "r", "--json"]);
        assert!(err.contains(s(&typo)), "{err}");
        let err = fails(&export(&store, None, s(&out)));
        assert!(
            err.contains(s(&typo)) && err.contains("does not exist"),
            "{err}"
        );
    }
    assert!(!typo.exists(), "a read-only command created the store");
    assert!(
        !dir.join("exported").exists(),
        "export created --out's directory"
    );
}

#[test]
fn export_to_a_directory_names_it_and_leaves_nothing_behind() {
    let dir = temp_dir("ckpt-out-dir");
    let (store, _) = store_with(&dir, &[10]);
    let out_dir = dir.join("weights");
    std::fs::create_dir_all(&out_dir).unwrap();
    for out in [
        out_dir.display().to_string(),
        format!("{}/", out_dir.display()),
    ] {
        let err = fails(&export(&store, None, &out));
        assert!(
            err.contains(s(&out_dir)) && err.contains("a file path is expected"),
            "{err}"
        );
        assert!(!err.contains("Is a directory (os error"), "{err}");
    }
    assert_eq!(std::fs::read_dir(&out_dir).unwrap().count(), 0);
    assert!(leftovers(&dir).is_empty(), "{:?}", leftovers(&dir));
    // A file path in it works.
    let out = out_dir.join("w.safetensors");
    let text = ok(&export(&store, None, s(&out)));
    assert!(
        text.contains("step 10") && text.contains("SHA-256 verified"),
        "{text}"
    );
    assert_eq!(std::fs::read(&out).unwrap(), model_bytes(10));
}

#[test]
fn export_of_a_corrupt_object_writes_no_file_and_falls_back_without_step() {
    let dir = temp_dir("ckpt-corrupt");
    let (store, _) = store_with(&dir, &[10, 20]);
    let path = object_path(&dir, 20);
    let mut bytes = std::fs::read(&path).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0xff;
    std::fs::write(&path, &bytes).unwrap();

    // The named step: refused, naming the object; neither the output nor the directory
    // made for it is left.
    let out = dir.join("new/sub/w.safetensors");
    let err = fails(&export(&store, Some("20"), s(&out)));
    assert!(
        err.contains("000000000020/model.safetensors") && err.contains("does not verify"),
        "{err}"
    );
    assert!(
        !dir.join("new").exists(),
        "the export left {}",
        dir.join("new").display()
    );
    // An existing output is not touched.
    let existing = dir.join("w.safetensors");
    std::fs::write(&existing, b"previous").unwrap();
    fails(&export(&store, Some("20"), s(&existing)));
    assert_eq!(std::fs::read(&existing).unwrap(), b"previous");
    // Grown past its listed size: said so by size, without the body being read.
    bytes.extend_from_slice(b"more");
    std::fs::write(&path, &bytes).unwrap();
    let err = fails(&export(&store, Some("20"), s(&out)));
    assert!(
        err.contains(&format!("found {} bytes", bytes.len())) && err.contains("not computed"),
        "{err}"
    );
    assert!(leftovers(&dir).is_empty(), "{:?}", leftovers(&dir));

    // No step: the newest that verifies.
    let text = ok(&export(&store, None, s(&out)));
    assert!(
        text.contains("skipped checkpoint 20") && text.contains("at step 10"),
        "{text}"
    );
    assert_eq!(std::fs::read(&out).unwrap(), model_bytes(10));
    assert!(leftovers(&dir).is_empty(), "{:?}", leftovers(&dir));
}

#[test]
fn export_never_reads_an_object_that_links_out_of_the_store() {
    let dir = temp_dir("ckpt-link");
    let outside = dir.join("outside-secret");
    let secret = b"root:x:0:0:root:/root:/bin/bash\n".repeat(3);
    std::fs::write(&outside, &secret).unwrap();
    let (store, blocking) = store_with(&dir, &[]);
    // A checkpoint whose manifest lists the outside file's own size and SHA-256, and
    // whose object is a link to it: only the link check stands between it and a
    // "verified" export.
    let info = blocking
        .put_object(10, MODEL, Bytes::from(secret.clone()))
        .unwrap();
    blocking
        .commit(&Manifest::new(
            "r",
            10,
            1,
            1,
            vec![ManifestObject::from_info(&info, 0)],
            run_state(),
        ))
        .unwrap();
    let object = object_path(&dir, 10);
    std::fs::remove_file(&object).unwrap();
    std::os::unix::fs::symlink(&outside, &object).unwrap();

    let out = dir.join("w.safetensors");
    for step in [Some("10"), None] {
        let err = fails(&export(&store, step, s(&out)));
        assert!(
            err.contains(s(&object)) && err.contains("symbolic link"),
            "{err}"
        );
        for leak in [
            s(&outside).to_string(),
            sha256_hex(&secret),
            format!("{} bytes", secret.len()),
        ] {
            assert!(!err.contains(&leak), "`{leak}` leaked: {err}");
        }
        assert!(!out.exists(), "the outside file was exported");
    }
    let err = fails(&["ckpt", "ls", "--store", &store, "--run", "r"]);
    assert!(err.contains("symbolic link"), "{err}");
    assert!(leftovers(&dir).is_empty(), "{:?}", leftovers(&dir));
}

/// A valid run state of a single-process run.
fn run_state() -> lgaf_store::RunState {
    lgaf_store::RunState::new(1, 10, 1.0, 0, serde_json::json!({}))
}
