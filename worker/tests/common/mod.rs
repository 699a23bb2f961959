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

/// The run's history in the store at `store_url` (a path or URL), read as `lgaf report`
/// reads it; a line it could not read fails the test.
pub fn history(store_url: &str, run: &str) -> lgaf_store::History {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let store = lgaf_store::Store::from_url(store_url).unwrap();
        let run = lgaf_store::RunStore::new(store, run).unwrap();
        let history = lgaf_store::read_history(&run).await.unwrap();
        assert!(history.problems.is_empty(), "{:?}", history.problems);
        history
    })
}

/// Asserts that the history of `run` holds every step from 1 to `last` exactly once, in
/// order (what a killed and resumed run must still have).
pub fn assert_history_complete(store_url: &str, run: &str, last: u64) {
    let steps: Vec<u64> = history(store_url, run)
        .steps
        .iter()
        .map(|s| s.step)
        .collect();
    assert_eq!(
        steps,
        (1..=last).collect::<Vec<_>>(),
        "the steps of {run}'s history"
    );
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
