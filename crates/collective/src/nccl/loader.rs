//! Loads `libnccl.so.2` and the CUDA runtime on first use, so that the crate builds, links and
//! runs its CPU tests on machines without CUDA.
//!
//! Each library is loaded once per process and never unloaded (NCCL keeps threads running
//! inside itself), so the function pointers taken from it stay valid for the whole process.
//! The environment variables are read at that first use only.

use std::ffi::{c_char, CStr, OsString};
use std::sync::OnceLock;

use libloading::Library;

use super::sys::*;
use crate::{CollectiveError, Result};

/// Overrides where `libnccl.so.2` is loaded from (a path to the file).
pub const NCCL_LIB_ENV: &str = "LGAF_NCCL_LIB";
/// Overrides where the CUDA runtime is loaded from (a path to the file).
pub const CUDART_LIB_ENV: &str = "LGAF_CUDART_LIB";

const NCCL_DEFAULT: &str = "libnccl.so.2";
const CUDART_DEFAULTS: [&str; 2] = ["libcudart.so.13", "libcudart.so.12"];

/// NCCL's entry points.
pub(crate) struct NcclLib {
    pub path: String,
    pub get_version: NcclGetVersionFn,
    pub get_unique_id: NcclGetUniqueIdFn,
    pub comm_init_rank_config: NcclCommInitRankConfigFn,
    pub all_reduce: NcclAllReduceFn,
    pub all_gather: NcclAllGatherFn,
    pub broadcast: NcclBroadcastFn,
    pub comm_get_async_error: NcclCommGetAsyncErrorFn,
    pub comm_abort: NcclCommFn,
    pub comm_destroy: NcclCommFn,
    /// Present since NCCL 2.14; lets `Drop` flush a communicator with a bound on the wait.
    pub comm_finalize: Option<NcclCommFn>,
    pub get_error_string: NcclGetErrorStringFn,
    pub get_last_error: NcclGetLastErrorFn,
    _lib: Library,
}

/// The CUDA runtime's entry points this crate uses.
pub(crate) struct CudaRt {
    pub path: String,
    pub set_device: CudaSetDeviceFn,
    pub get_device_count: CudaGetDeviceCountFn,
    pub stream_query: CudaStreamQueryFn,
    pub get_error_string: CudaGetErrorStringFn,
    pub malloc: CudaMallocFn,
    pub free: CudaFreeFn,
    pub memcpy: CudaMemcpyFn,
    pub launch_host_func: CudaLaunchHostFuncFn,
    _lib: Library,
}

static NCCL: OnceLock<Result<NcclLib, String>> = OnceLock::new();
static CUDART: OnceLock<Result<CudaRt, String>> = OnceLock::new();

/// NCCL, loaded on the first call.
pub(crate) fn nccl() -> Result<&'static NcclLib> {
    NCCL.get_or_init(load_nccl)
        .as_ref()
        .map_err(|message| CollectiveError::Nccl(message.clone()))
}

/// The CUDA runtime, loaded on the first call.
pub(crate) fn cudart() -> Result<&'static CudaRt> {
    CUDART
        .get_or_init(load_cudart)
        .as_ref()
        .map_err(|message| CollectiveError::Nccl(message.clone()))
}

fn env_path(name: &str) -> Option<OsString> {
    std::env::var_os(name).filter(|value| !value.is_empty())
}

fn open(file: &OsString) -> Result<Library, libloading::Error> {
    // SAFETY: dlopen runs the library's initialisers. Both libraries are NVIDIA's (or what
    // the user pointed us at on purpose) and their initialisers have no preconditions on the
    // caller; the handle is kept for the life of the process, so nothing is unloaded under
    // running threads.
    unsafe { Library::new(file) }
}

/// Copies a symbol's address out of `lib`.
///
/// # Safety
/// `T` must be the function-pointer type the library's header declares for `name`, and the
/// returned value must not outlive `lib` (here both live in the same static).
unsafe fn symbol<T: Copy>(lib: &Library, path: &str, name: &str) -> Result<T, String> {
    let mut c_name = name.as_bytes().to_vec();
    c_name.push(0);
    // SAFETY: the caller guarantees `T` matches the symbol's declared type.
    unsafe { lib.get::<T>(&c_name) }
        .map(|sym| *sym)
        .map_err(|e| format!("{path} has no symbol {name} ({e}); is it really that library?"))
}

fn load_nccl() -> Result<NcclLib, String> {
    let (file, from_env) = match env_path(NCCL_LIB_ENV) {
        Some(path) => (path, true),
        None => (OsString::from(NCCL_DEFAULT), false),
    };
    let path = file.to_string_lossy().into_owned();
    let lib = open(&file).map_err(|e| {
        if from_env {
            format!(
                "could not load the NCCL library {path} named by {NCCL_LIB_ENV}: {e}. \
                 Point {NCCL_LIB_ENV} at libnccl.so.2 (the nvidia-nccl-cu12/-cu13 wheels put \
                 it in site-packages/nvidia/nccl/lib/), or unset it to search LD_LIBRARY_PATH \
                 and the system library paths"
            )
        } else {
            format!(
                "could not load {NCCL_DEFAULT} from LD_LIBRARY_PATH or the system library \
                 paths: {e}. Set {NCCL_LIB_ENV} to its full path (the nvidia-nccl-cu12/-cu13 \
                 wheels put it in site-packages/nvidia/nccl/lib/) or add its directory to \
                 LD_LIBRARY_PATH"
            )
        }
    })?;
    // SAFETY (every `symbol` call below): each type is the signature nccl.h 2.28 declares for
    // that name (see `sys`), and the pointers are stored next to `lib` and never outlive it.
    unsafe {
        Ok(NcclLib {
            get_version: symbol(&lib, &path, "ncclGetVersion")?,
            get_unique_id: symbol(&lib, &path, "ncclGetUniqueId")?,
            comm_init_rank_config: symbol(&lib, &path, "ncclCommInitRankConfig")?,
            all_reduce: symbol(&lib, &path, "ncclAllReduce")?,
            all_gather: symbol(&lib, &path, "ncclAllGather")?,
            broadcast: symbol(&lib, &path, "ncclBroadcast")?,
            comm_get_async_error: symbol(&lib, &path, "ncclCommGetAsyncError")?,
            comm_abort: symbol(&lib, &path, "ncclCommAbort")?,
            comm_destroy: symbol(&lib, &path, "ncclCommDestroy")?,
            comm_finalize: symbol(&lib, &path, "ncclCommFinalize").ok(),
            get_error_string: symbol(&lib, &path, "ncclGetErrorString")?,
            get_last_error: symbol(&lib, &path, "ncclGetLastError")?,
            path,
            _lib: lib,
        })
    }
}

fn load_cudart() -> Result<CudaRt, String> {
    let (lib, path) = match env_path(CUDART_LIB_ENV) {
        Some(file) => {
            let path = file.to_string_lossy().into_owned();
            let lib = open(&file).map_err(|e| {
                format!(
                    "could not load the CUDA runtime {path} named by {CUDART_LIB_ENV}: {e}. \
                     Point {CUDART_LIB_ENV} at libcudart.so.13 or .12 (the nvidia-cuda-runtime \
                     wheels put it in site-packages/nvidia/cu13/lib/ or \
                     site-packages/nvidia/cuda_runtime/lib/), or unset it to search \
                     LD_LIBRARY_PATH and the system library paths"
                )
            })?;
            (lib, path)
        }
        None => {
            let mut failures = Vec::new();
            let mut found = None;
            for name in CUDART_DEFAULTS {
                match open(&OsString::from(name)) {
                    Ok(lib) => {
                        found = Some((lib, name.to_owned()));
                        break;
                    }
                    Err(e) => failures.push(format!("{name}: {e}")),
                }
            }
            found.ok_or_else(|| {
                format!(
                    "could not load the CUDA runtime ({}) from LD_LIBRARY_PATH or the system \
                     library paths. Set {CUDART_LIB_ENV} to its full path (the \
                     nvidia-cuda-runtime wheels put it in site-packages/nvidia/cu13/lib/ or \
                     site-packages/nvidia/cuda_runtime/lib/) or add its directory to \
                     LD_LIBRARY_PATH",
                    failures.join("; ")
                )
            })?
        }
    };
    // SAFETY (every `symbol` call below): each type is the signature cuda_runtime_api.h
    // declares for that name (see `sys`), and the pointers never outlive `lib`.
    unsafe {
        Ok(CudaRt {
            set_device: symbol(&lib, &path, "cudaSetDevice")?,
            get_device_count: symbol(&lib, &path, "cudaGetDeviceCount")?,
            stream_query: symbol(&lib, &path, "cudaStreamQuery")?,
            get_error_string: symbol(&lib, &path, "cudaGetErrorString")?,
            malloc: symbol(&lib, &path, "cudaMalloc")?,
            free: symbol(&lib, &path, "cudaFree")?,
            memcpy: symbol(&lib, &path, "cudaMemcpy")?,
            launch_host_func: symbol(&lib, &path, "cudaLaunchHostFunc")?,
            path,
            _lib: lib,
        })
    }
}

/// Copies a C string the library owns (or null) into a `String`.
///
/// # Safety
/// `ptr` must be null or point to a NUL-terminated string that stays valid during the call.
pub(crate) unsafe fn c_str(ptr: *const c_char) -> String {
    if ptr.is_null() {
        String::new()
    } else {
        // SAFETY: non-null and NUL-terminated per the caller's contract.
        unsafe { CStr::from_ptr(ptr) }
            .to_string_lossy()
            .into_owned()
    }
}

impl NcclLib {
    /// `ncclGetErrorString`, with the enumerator's name and number.
    pub fn describe(&self, result: NcclResult) -> String {
        // SAFETY: ncclGetErrorString accepts any code and returns a static string.
        let text = unsafe { c_str((self.get_error_string)(result)) };
        format!("{} ({result}): {text}", result_name(result))
    }

    /// [`Self::describe`] plus `ncclGetLastError`, which usually names the real cause.
    pub fn describe_with_last(&self, result: NcclResult, comm: NcclComm) -> String {
        // SAFETY: ncclGetLastError takes any comm (it is unused in 2.28) and returns a string
        // owned by NCCL that stays valid until the next NCCL call on this thread; we copy it.
        let last = unsafe { c_str((self.get_last_error)(comm)) };
        let last = last.trim();
        if last.is_empty() {
            self.describe(result)
        } else {
            format!("{}; last NCCL error: {last}", self.describe(result))
        }
    }
}

impl CudaRt {
    /// `cudaGetErrorString`, with the number.
    pub fn describe(&self, error: CudaError) -> String {
        // SAFETY: cudaGetErrorString accepts any code and returns a static string.
        let text = unsafe { c_str((self.get_error_string)(error)) };
        format!("CUDA error {error}: {text}")
    }

    /// `cudaSetDevice`, checked.
    pub fn select_device(&self, device: usize) -> Result<(), SelectDeviceError> {
        let index = i32::try_from(device).map_err(|_| SelectDeviceError::NoSuchIndex(device))?;
        // SAFETY: cudaSetDevice takes any int and reports a bad one as an error.
        let err = unsafe { (self.set_device)(index) };
        if err == CUDA_SUCCESS {
            Ok(())
        } else {
            Err(SelectDeviceError::Refused {
                device,
                cuda_error: self.describe(err),
            })
        }
    }
}

/// Why [`CudaRt::select_device`] failed; callers wrap it in a [`CollectiveError::Nccl`] with
/// what they were doing.
#[derive(Debug, thiserror::Error)]
pub(crate) enum SelectDeviceError {
    /// The index does not fit CUDA's `int`.
    #[error("no CUDA device {0}")]
    NoSuchIndex(usize),
    /// `cudaSetDevice` returned an error ([`CudaRt::describe`]).
    #[error("cudaSetDevice({device}) failed: {cuda_error}")]
    Refused { device: usize, cuda_error: String },
}
