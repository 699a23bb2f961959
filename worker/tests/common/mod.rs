//! Helpers shared by the tests that run the `lgaf` binary.
#![allow(dead_code)] // each test file uses its own subset

pub mod processes;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use lgaf_data::npy;

pub fn lgaf(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_lgaf"))
        .args(args)
        .env("RUST_LOG", "warn")
        .output()
        .expect("running lgaf")
}

pub fn ok(args: &[&str]) -> String {
    let out = lgaf(args);
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "lgaf {args:?} failed:\n{text}");
    text
}

pub fn fails(args: &[&str]) -> String {
    let out = lgaf(args);
    assert!(!out.status.success(), "lgaf {args:?} should fail");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// The committed steps of `run` in `store`, as `lgaf ckpt ls --json` lists them.
pub fn committed_steps(store: &Path, run: &str) -> Vec<u64> {
    let out = lgaf(&["ckpt", "ls", "--store", s(store), "--run", run, "--json"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "lgaf ckpt ls failed:\n{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let json: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap();
    json.as_array()
        .unwrap()
        .iter()
        .map(|c| c["step"].as_u64().unwrap())
        .collect()
}

pub fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("lgaf-cli-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

pub const MODEL: [&str; 8] = [
    "--arch",
    "r18",
    "--fusion",
    "lgf",
    "--width",
    "0.25",
    "--embedding-size",
    "128",
];

pub fn with_model<'a>(args: &[&'a str]) -> Vec<&'a str> {
    args.iter().copied().chain(MODEL).collect()
}

pub fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// Rows of an [N, D] .npy.
pub fn rows(path: &Path) -> Vec<Vec<f32>> {
    let (shape, data) = npy::read_f32(path).unwrap();
    assert_eq!(shape.len(), 2);
    data.chunks(shape[1]).map(|r| r.to_vec()).collect()
}

pub fn close(a: &[f32], b: &[f32]) -> bool {
    a.iter().zip(b).all(|(x, y)| (x - y).abs() < 1e-4)
}
