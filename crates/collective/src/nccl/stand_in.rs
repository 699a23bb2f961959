//! A stand-in for `libnccl.so.2` and `libcudart.so` in one C library, for tests on machines
//! without a GPU (here and in the worker's tests); not for training.
//!
//! It has NCCL 2.28's non-blocking API and the CUDA runtime calls this crate makes, works on
//! host memory for a world of one (every collective is a copy), checks the config and unique
//! id it receives byte for byte, and can be told to hang or fail. Switches
//! ([`Controls::set`]): `init_hang` (the group never forms), `op_hang` (streams never drain),
//! `async_error` (ncclCommGetAsyncError reports ncclRemoteError after the next collective),
//! `enqueue_error` (collectives return ncclInvalidUsage), `enqueue_in_progress` = n
//! (collectives return ncclInProgress, then the state reads ncclInProgress n times),
//! `finalize_hang` (ncclCommFinalize never completes). Counters ([`Controls::get`]): `init`,
//! `abort`, `destroy`, `finalize`, `async_polls`. A call on an aborted or destroyed
//! communicator fails.
//!
//! Point [`NCCL_LIB_ENV`](super::NCCL_LIB_ENV) and [`CUDART_LIB_ENV`](super::CUDART_LIB_ENV)
//! at the built library before the process first uses NCCL (the crate loads it once).

use std::ffi::{c_char, c_int, CString};
use std::hash::{Hash, Hasher};
use std::io;
use std::path::{Path, PathBuf};
use std::process::Command;

/// The library's C source.
pub const SOURCE: &str = include_str!("stand_in.c");

/// Why the stand-in could not be built ([`build`]) or opened ([`Controls::open`]).
#[derive(Debug, thiserror::Error)]
pub enum StandInError {
    #[error("create {}: {source}", .dir.display())]
    CreateDir {
        dir: PathBuf,
        #[source]
        source: io::Error,
    },

    #[error("write {}: {source}", .file.display())]
    WriteSource {
        file: PathBuf,
        #[source]
        source: io::Error,
    },

    #[error("run the C compiler {cc}: {source}")]
    RunCompiler {
        cc: String,
        #[source]
        source: io::Error,
    },

    #[error("compiling the stand-in NCCL with {cc} failed:\n{stderr}")]
    Compile { cc: String, stderr: String },

    #[error("rename into {}: {source}", .lib.display())]
    Rename {
        lib: PathBuf,
        #[source]
        source: io::Error,
    },

    #[error("open the stand-in {}: {source}", .lib.display())]
    Open {
        lib: PathBuf,
        #[source]
        source: libloading::Error,
    },
}

/// Compiles the stand-in into `dir` with `$CC` (default `cc`) unless this version of the
/// source is there already, and returns its path. Concurrent callers do not collide: the
/// file is named by a hash of the source and renamed into place.
pub fn build(dir: &Path) -> Result<PathBuf, StandInError> {
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    SOURCE.hash(&mut hasher);
    let lib = dir.join(format!("libfakenccl-{:016x}.so", hasher.finish()));
    if lib.exists() {
        return Ok(lib);
    }
    std::fs::create_dir_all(dir).map_err(|source| StandInError::CreateDir {
        dir: dir.to_owned(),
        source,
    })?;
    let pid = std::process::id();
    let c_file = dir.join(format!("fake_nccl.{pid}.c"));
    let partial = dir.join(format!("libfakenccl.{pid}.so.partial"));
    std::fs::write(&c_file, SOURCE).map_err(|source| StandInError::WriteSource {
        file: c_file.clone(),
        source,
    })?;
    let cc = std::env::var("CC").unwrap_or_else(|_| "cc".into());
    let output = Command::new(&cc)
        .args(["-shared", "-fPIC", "-O1", "-Wall", "-Werror", "-o"])
        .arg(&partial)
        .arg(&c_file)
        .output()
        .map_err(|source| StandInError::RunCompiler {
            cc: cc.clone(),
            source,
        })?;
    let _ = std::fs::remove_file(&c_file);
    if !output.status.success() {
        return Err(StandInError::Compile {
            cc,
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        });
    }
    std::fs::rename(&partial, &lib).map_err(|source| StandInError::Rename {
        lib: lib.clone(),
        source,
    })?;
    Ok(lib)
}

/// The stand-in's switches and counters, in a process that loaded it (dlopen gives back the
/// same copy, so these act on the one the crate uses).
pub struct Controls {
    set: unsafe extern "C" fn(*const c_char, c_int) -> c_int,
    get: unsafe extern "C" fn(*const c_char) -> c_int,
    _lib: libloading::Library,
}

impl Controls {
    /// Opens the stand-in at `path`.
    pub fn open(path: &Path) -> Result<Self, StandInError> {
        let fail = |source| StandInError::Open {
            lib: path.to_owned(),
            source,
        };
        // SAFETY: the stand-in has no initialisers; the symbols have these C signatures.
        unsafe {
            let lib = libloading::Library::new(path).map_err(fail)?;
            let set = *lib.get(b"fake_set\0").map_err(fail)?;
            let get = *lib.get(b"fake_get\0").map_err(fail)?;
            Ok(Self {
                set,
                get,
                _lib: lib,
            })
        }
    }

    /// Sets a switch; panics on a name the stand-in does not have.
    pub fn set(&self, name: &str, value: i32) {
        let c_name = CString::new(name).expect("switch name without NUL");
        // SAFETY: a valid C string.
        let known = unsafe { (self.set)(c_name.as_ptr(), value) } == 0;
        assert!(known, "the stand-in NCCL has no switch {name:?}");
    }

    /// Reads a counter; panics on a name the stand-in does not have.
    pub fn get(&self, name: &str) -> i32 {
        let c_name = CString::new(name).expect("counter name without NUL");
        // SAFETY: a valid C string.
        let value = unsafe { (self.get)(c_name.as_ptr()) };
        assert!(value >= 0, "the stand-in NCCL has no counter {name:?}");
        value
    }
}

/// Names the ignored test a child process is to run (see [`run_test_in_child`]).
const CHILD_ENV: &str = "LGAF_STAND_IN_TEST_CHILD";

/// Runs the ignored test `name` of the calling test binary in a child process, with `env`
/// and with neither library variable unless `env` sets it (the crate loads its libraries
/// once per process, from the environment). Panics if the child failed or did not run the
/// test; returns its output.
pub fn run_test_in_child(name: &str, env: &[(&str, &Path)]) -> String {
    let exe = std::env::current_exe().expect("test binary path");
    let mut command = Command::new(exe);
    command
        .args([
            name,
            "--exact",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_ENV, name)
        .env_remove(super::NCCL_LIB_ENV)
        .env_remove(super::CUDART_LIB_ENV);
    for (key, value) in env {
        command.env(key, value);
    }
    let output = command.output().expect("spawn the child test");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(output.status.success(), "child {name} failed:\n{text}");
    assert!(
        text.contains("1 passed") && text.contains(&format!("child {name} ran")),
        "child {name} did not run:\n{text}"
    );
    text
}

/// True in the child [`run_test_in_child`] started for `name` (the test does nothing
/// elsewhere).
pub fn in_child(name: &str) -> bool {
    let yes = std::env::var(CHILD_ENV).as_deref() == Ok(name);
    if yes {
        println!("child {name} ran");
    }
    yes
}
