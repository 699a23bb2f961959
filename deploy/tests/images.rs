//! The container images (`deploy/*.Dockerfile`), checked without a container engine:
//!
//! - hadolint passes both Dockerfiles at its strictest useful level, and fails a bad one;
//! - each image's ENTRYPOINT runs a binary of the workspace that its build stage builds
//!   (`--locked`) and its runtime stage copies in; the build image's Rust meets the
//!   workspace's `rust-version`; the worker image builds against requirements.txt's torch,
//!   runs on the CUDA of that torch wheel and points at libraries the wheels have;
//! - `.dockerignore` keeps every build input and drops the heavy outputs.
//!
//! The compose example that runs these images is checked in `compose.rs` and
//! `compose_telemetry.rs`. hadolint comes from `make test` (`make deploy-tools`):
//! `$LGAF_HADOLINT`.

mod common;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicUsize, Ordering};

use common::dockerfile::{dockerfile, entrypoint_binary, Stage};
use common::{files_under, output_text, read};
use lgaf_deploy::{repo_root, tool};

const WORKER_DOCKERFILE: &str = "deploy/worker.Dockerfile";
const COORDINATOR_DOCKERFILE: &str = "deploy/coordinator.Dockerfile";

// ---- Dockerfiles -------------------------------------------------------------------------

/// The words of `s` after each `flag` (e.g. every `--bin NAME`).
fn values_after<'a>(s: &'a str, flag: &str) -> Vec<&'a str> {
    let words: Vec<&str> = s.split_whitespace().collect();
    words
        .windows(2)
        .filter(|w| w[0] == flag)
        .map(|w| w[1])
        .collect()
}

/// The workspace's members (root Cargo.toml).
fn workspace_members() -> Vec<String> {
    let root: toml::Table = read("Cargo.toml").parse().unwrap();
    root["workspace"]["members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m.as_str().unwrap().to_string())
        .collect()
}

/// Every binary target of the workspace: `[[bin]]` names, and the package's own name for a
/// `src/main.rs`.
fn workspace_binaries() -> BTreeSet<String> {
    let mut bins = BTreeSet::new();
    for member in workspace_members() {
        let manifest: toml::Table = read(&format!("{member}/Cargo.toml")).parse().unwrap();
        if let Some(list) = manifest.get("bin").and_then(|b| b.as_array()) {
            for bin in list {
                bins.insert(bin["name"].as_str().unwrap().to_string());
            }
        }
        if repo_root().join(&member).join("src/main.rs").exists() {
            bins.insert(manifest["package"]["name"].as_str().unwrap().to_string());
        }
    }
    bins
}

/// `--failure-threshold info` fails on warnings and on info-level findings too (unpinned
/// packages, kept apt lists, missing --no-install-recommends); only style remarks pass.
/// Inline `# hadolint ignore` pragmas are not honoured, and the config (written here) ignores
/// nothing, so no file on the machine can loosen the check.
fn hadolint(dockerfile: &Path) -> Output {
    // A file of each call's own: tests run in parallel, and hadolint passes everything when
    // it cannot parse its config (a file another test is writing, say).
    static CALLS: AtomicUsize = AtomicUsize::new(0);
    let config = std::env::temp_dir().join(format!(
        "lgaf-hadolint-{}-{}.yaml",
        std::process::id(),
        CALLS.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::write(
        &config,
        "ignored: []\nfailure-threshold: info\nno-fail: false\n",
    )
    .unwrap();
    let mut command = Command::new(tool("LGAF_HADOLINT", "hadolint 2.15.1, in .venv-deploy"));
    command
        .arg("--config")
        .arg(&config)
        .args([
            "--no-color",
            "--disable-ignore-pragma",
            "--failure-threshold",
            "info",
        ])
        .arg(dockerfile);
    for (key, _) in std::env::vars() {
        if key.starts_with("HADOLINT_") {
            command.env_remove(key);
        }
    }
    let out = command.output().expect("running hadolint");
    let _ = std::fs::remove_file(&config);
    out
}

#[test]
fn hadolint_passes_both_dockerfiles() {
    for rel in [WORKER_DOCKERFILE, COORDINATOR_DOCKERFILE] {
        let out = hadolint(&repo_root().join(rel));
        assert!(
            out.status.success(),
            "hadolint {rel}:\n{}",
            output_text(&out)
        );
    }
}

#[test]
fn hadolint_fails_a_dockerfile_with_unpinned_images_and_packages() {
    // The check above is only worth something if these settings fail what they should.
    let dir = std::env::temp_dir().join(format!("lgaf-hadolint-bad-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let bad = dir.join("bad.Dockerfile");
    std::fs::write(
        &bad,
        "FROM ubuntu\n# hadolint ignore=DL3008\nRUN apt-get update && apt-get install -y curl\n",
    )
    .unwrap();
    let out = hadolint(&bad);
    let text = output_text(&out);
    assert!(
        !out.status.success(),
        "hadolint passed a bad Dockerfile:\n{text}"
    );
    for rule in ["DL3006", "DL3008", "DL3009", "DL3015"] {
        assert!(
            text.contains(rule),
            "hadolint did not report {rule}:\n{text}"
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn each_image_runs_a_workspace_binary_that_its_build_stage_builds() {
    let workspace_bins = workspace_binaries();
    for (rel, expected) in [
        (WORKER_DOCKERFILE, "lgaf-worker"),
        (COORDINATOR_DOCKERFILE, "lgaf-coordinator"),
    ] {
        let stages = dockerfile(rel);
        let runtime = stages.last().unwrap();
        let binary = entrypoint_binary(rel);
        assert_eq!(binary, expected, "{rel}: the ENTRYPOINT");
        assert!(
            workspace_bins.contains(&binary),
            "{rel}: {binary} is no binary of the workspace ({workspace_bins:?})"
        );

        // The runtime stage copies it from a build stage...
        let copies: Vec<(String, String, String)> = runtime
            .all("COPY")
            .filter_map(|args| {
                let words: Vec<&str> = args.split_whitespace().collect();
                let from = words.iter().find_map(|w| w.strip_prefix("--from="))?;
                let rest: Vec<&str> = words
                    .iter()
                    .filter(|w| !w.starts_with("--"))
                    .copied()
                    .collect();
                let [source, dest] = rest.as_slice() else {
                    panic!("{rel}: COPY {args}: expected one source and one destination");
                };
                Some((from.to_string(), source.to_string(), dest.to_string()))
            })
            .collect();
        let entry = runtime.entrypoint()[0].clone();
        let installed_at = if entry.starts_with('/') {
            entry.clone()
        } else {
            // A bare name runs from PATH: /usr/local/bin in both base images.
            format!("/usr/local/bin/{entry}")
        };
        let copy = copies
            .iter()
            .find(|(_, source, dest)| {
                let lands = if dest.ends_with('/') {
                    format!("{dest}{binary}")
                } else {
                    dest.clone()
                };
                let carries = source.ends_with('/') || source.ends_with(&format!("/{binary}"));
                lands == installed_at && carries
            })
            .unwrap_or_else(|| {
                panic!("{rel}: no COPY --from puts {binary} at {installed_at}: {copies:?}")
            });

        // ... where `cargo build --release --locked` builds it and installs it where the
        // COPY takes it from.
        let build = stages
            .iter()
            .find(|s| s.name.as_deref() == Some(copy.0.as_str()))
            .unwrap_or_else(|| panic!("{rel}: no stage named {}", copy.0));
        let cargo = build
            .all("RUN")
            .find(|run| run.contains("cargo build"))
            .unwrap_or_else(|| panic!("{rel}: the {} stage runs no cargo build", copy.0));
        for flag in ["--release", "--locked"] {
            assert!(
                cargo.contains(flag),
                "{rel}: cargo build without {flag}: {cargo}"
            );
        }
        let built = values_after(cargo, "--bin");
        assert!(
            built.contains(&binary.as_str()),
            "{rel}: cargo build does not build --bin {binary}: {cargo}"
        );
        for bin in &built {
            assert!(
                workspace_bins.contains(*bin),
                "{rel}: --bin {bin} is no binary of the workspace ({workspace_bins:?})"
            );
        }
        let copy_dir = copy.1.trim_end_matches('/');
        let copy_dir = if copy.1.ends_with('/') {
            copy_dir
        } else {
            copy_dir.rsplit_once('/').unwrap().0
        };
        assert!(
            cargo.contains(&format!("target/release/{binary}")) && cargo.contains(copy_dir),
            "{rel}: the build step does not put target/release/{binary} in {copy_dir}: {cargo}"
        );
    }
}

/// `1.95` of `rust:1.95-bookworm`, or of a `rust-version`.
fn rust_version(text: &str) -> (u32, u32) {
    let mut parts = text.split('.');
    let major = parts.next().and_then(|p| p.parse().ok());
    let minor = parts
        .next()
        .map(|p| {
            p.chars()
                .take_while(char::is_ascii_digit)
                .collect::<String>()
        })
        .and_then(|p| p.parse().ok());
    match (major, minor) {
        (Some(major), Some(minor)) => (major, minor),
        _ => panic!("not a Rust version: {text}"),
    }
}

#[test]
fn the_build_images_have_the_rust_the_workspace_needs() {
    let mut needed = Vec::new();
    let root: toml::Table = read("Cargo.toml").parse().unwrap();
    if let Some(v) = root["workspace"]["package"].get("rust-version") {
        needed.push(("Cargo.toml".to_string(), rust_version(v.as_str().unwrap())));
    }
    for member in workspace_members() {
        let manifest: toml::Table = read(&format!("{member}/Cargo.toml")).parse().unwrap();
        if let Some(v) = manifest["package"]
            .get("rust-version")
            .and_then(|v| v.as_str())
        {
            needed.push((format!("{member}/Cargo.toml"), rust_version(v)));
        }
    }
    assert!(!needed.is_empty(), "no rust-version in the workspace");
    for rel in [WORKER_DOCKERFILE, COORDINATOR_DOCKERFILE] {
        let stages = dockerfile(rel);
        let rust: Vec<&Stage> = stages
            .iter()
            .filter(|s| s.image.starts_with("rust:"))
            .collect();
        assert!(!rust.is_empty(), "{rel}: no rust: build stage");
        for stage in rust {
            let have = rust_version(stage.image.trim_start_matches("rust:"));
            for (manifest, need) in &needed {
                assert!(
                    have >= *need,
                    "{rel}: {} is older than the rust-version {need:?} of {manifest}",
                    stage.image
                );
            }
        }
    }
}

/// The project virtualenv's site-packages (`make test` creates it: `make venv`).
fn venv_site_packages() -> PathBuf {
    let lib = repo_root().join(".venv/lib");
    let entries = std::fs::read_dir(&lib)
        .unwrap_or_else(|e| panic!("{}: {e}: `make test` creates the venv", lib.display()));
    entries
        .filter_map(|e| e.ok())
        .map(|e| e.path().join("site-packages"))
        .find(|p| p.join("torch").is_dir())
        .unwrap_or_else(|| panic!("no torch in {}: `make test` installs it", lib.display()))
}

#[test]
fn the_worker_image_builds_on_the_torch_and_cuda_of_the_project() {
    let text = read(WORKER_DOCKERFILE);
    let requirements = read("requirements.txt");
    let pin = requirements
        .lines()
        .find_map(|l| l.trim().strip_prefix("torch=="))
        .expect("requirements.txt pins no torch");
    let pins: Vec<&str> = text
        .split_whitespace()
        .filter_map(|w| w.strip_prefix("torch=="))
        .collect();
    assert!(
        !pins.is_empty(),
        "{WORKER_DOCKERFILE} installs no pinned torch"
    );
    for p in &pins {
        assert_eq!(
            *p, pin,
            "{WORKER_DOCKERFILE} installs torch {p}, requirements.txt {pin}"
        );
    }

    // The runtime's CUDA is the wheel's (torch.version.cuda of the project venv, the same
    // wheel from the same index).
    let site = venv_site_packages();
    let version_py = std::fs::read_to_string(site.join("torch/version.py")).unwrap();
    let torch_version = version_py
        .lines()
        .find_map(|l| l.strip_prefix("__version__ = "))
        .unwrap()
        .trim_matches(|c| c == '\'' || c == '"');
    assert!(
        torch_version.starts_with(pin),
        "the project venv has torch {torch_version}, requirements.txt pins {pin}: `make venv`"
    );
    let wheel_cuda = version_py
        .lines()
        .find_map(|l| l.strip_prefix("cuda: Optional[str] = "))
        .expect("torch/version.py names no CUDA")
        .trim_matches(|c| c == '\'' || c == '"');
    let stages = dockerfile(WORKER_DOCKERFILE);
    let runtime = stages.last().unwrap();
    let tag = runtime
        .image
        .strip_prefix("nvidia/cuda:")
        .unwrap_or_else(|| panic!("the runtime image {} is not nvidia/cuda", runtime.image));
    let base_cuda: Vec<&str> = tag.split('-').next().unwrap().split('.').collect();
    assert_eq!(
        base_cuda[..2].join("."),
        wheel_cuda,
        "the runtime base {} is not the CUDA of torch {torch_version}",
        runtime.image
    );

    // Every library folder the runtime searches, and NCCL, are the wheels' (copied from the
    // same layout under /opt/libtorch).
    let env = runtime.env();
    let ld_path = env.get("LD_LIBRARY_PATH").expect("no LD_LIBRARY_PATH");
    let mut from_wheels = 0;
    for dir in ld_path.split(':') {
        if let Some(rel) = dir.strip_prefix("/opt/libtorch/") {
            assert!(
                site.join(rel).is_dir(),
                "LD_LIBRARY_PATH has {dir}: no {rel} in the wheels"
            );
            from_wheels += 1;
        }
    }
    assert!(site.join("torch/lib/libtorch_cuda.so").is_file());
    assert!(
        ld_path.split(':').any(|d| d == "/opt/libtorch/torch/lib"),
        "{ld_path}"
    );
    assert!(from_wheels > 1, "{ld_path}");
    let nccl = env.get("LGAF_NCCL_LIB").expect("no LGAF_NCCL_LIB");
    let nccl_rel = nccl.strip_prefix("/opt/libtorch/").expect(nccl);
    assert!(
        site.join(nccl_rel).is_file(),
        "LGAF_NCCL_LIB={nccl}: not in the wheels"
    );
}

// ---- .dockerignore -----------------------------------------------------------------------

/// Whether one path segment matches a pattern segment (`*` and `?` wildcards).
fn segment_matches(pattern: &[u8], name: &[u8]) -> bool {
    match (pattern.first(), name.first()) {
        (None, None) => true,
        (Some(b'*'), _) => {
            segment_matches(&pattern[1..], name)
                || (!name.is_empty() && segment_matches(pattern, &name[1..]))
        }
        (Some(b'?'), Some(_)) => segment_matches(&pattern[1..], &name[1..]),
        (Some(p), Some(n)) if p == n => segment_matches(&pattern[1..], &name[1..]),
        _ => false,
    }
}

/// Docker's matching of one pattern against a whole relative path (`**` spans folders).
fn path_matches(pattern: &[&str], path: &[&str]) -> bool {
    match pattern.first() {
        None => path.is_empty(),
        Some(&"**") => (0..=path.len()).any(|skip| path_matches(&pattern[1..], &path[skip..])),
        Some(p) => {
            !path.is_empty()
                && segment_matches(p.as_bytes(), path[0].as_bytes())
                && path_matches(&pattern[1..], &path[1..])
        }
    }
}

/// Whether the build context leaves `rel` out: a pattern matches it or a folder above it.
fn dockerignored(patterns: &[String], rel: &str) -> bool {
    let parts: Vec<&str> = rel.split('/').collect();
    patterns.iter().any(|pattern| {
        let pattern: Vec<&str> = pattern.trim_matches('/').split('/').collect();
        (1..=parts.len()).any(|n| path_matches(&pattern, &parts[..n]))
    })
}

#[test]
fn dockerignore_keeps_every_build_input_and_drops_the_outputs() {
    let patterns: Vec<String> = read(".dockerignore")
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(String::from)
        .collect();
    assert!(
        patterns.iter().all(|p| !p.starts_with('!')),
        "exceptions (!) are not checked here: {patterns:?}"
    );
    // What `cargo build` reads: the manifests, the lock file, every member's sources and
    // build script, the shared build script and the protocol.
    let root = repo_root();
    let mut inputs = vec![root.join("Cargo.toml"), root.join("Cargo.lock")];
    for member in workspace_members() {
        let dir = root.join(&member);
        inputs.push(dir.join("Cargo.toml"));
        if dir.join("build.rs").exists() {
            inputs.push(dir.join("build.rs"));
        }
        files_under(&dir.join("src"), &mut inputs);
    }
    files_under(&root.join("build-support"), &mut inputs);
    files_under(&root.join("proto/lgaf"), &mut inputs);
    assert!(inputs.len() > 50, "{inputs:?}");
    for input in &inputs {
        let rel = input.strip_prefix(&root).unwrap().to_string_lossy();
        assert!(
            !dockerignored(&patterns, &rel),
            ".dockerignore leaves out {rel}"
        );
    }
    for heavy in [
        ".git/HEAD",
        "target/release/lgaf-worker",
        "worker/target/debug/x",
        ".venv/bin/python",
        ".venv-s3/bin/python",
        ".venv-deploy/bin/hadolint",
        ".tools/helm/helm",
        "demo-out/store/x",
        "runs-store/runs/x",
        "bench-out/x",
    ] {
        assert!(
            dockerignored(&patterns, heavy),
            ".dockerignore keeps {heavy}"
        );
    }
}
