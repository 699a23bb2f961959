//! Helpers shared by several of the deployment test files (each includes this as
//! `mod common;`): reading the repository's files, a command's output for a failure message,
//! and, in the submodules, the chart's test cases and rendered workloads (`chart`), the
//! Dockerfiles' stages (`dockerfile`) and the compose example's services (`compose`).
//!
//! Not every test file uses every helper, hence the `dead_code` allowance.

#![allow(dead_code)]

pub mod chart;
pub mod compose;
pub mod dockerfile;

use std::path::{Path, PathBuf};
use std::process::Output;

use lgaf_deploy::repo_root;
use serde_json::Value;

/// The text of the repository's file `rel`.
pub fn read(rel: &str) -> String {
    let path = repo_root().join(rel);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
}

/// The repository's YAML file `rel`, as JSON.
pub fn yaml(rel: &str) -> Value {
    yaml_serde::from_str(&read(rel)).unwrap_or_else(|e| panic!("{rel} is not YAML: {e}"))
}

/// A finished command's status, stdout and stderr: for a test's failure message.
pub fn output_text(out: &Output) -> String {
    format!(
        "status {}\n--- stdout\n{}\n--- stderr\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Every file below `dir`, `target` folders left out.
pub fn files_under(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            if path.file_name().unwrap() != "target" {
                files_under(&path, out);
            }
        } else {
            out.push(path);
        }
    }
}
