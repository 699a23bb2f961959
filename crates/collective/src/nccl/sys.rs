//! The raw C ABI of NCCL 2.28 (`nccl.h`) and the few CUDA runtime facts this crate uses.
//!
//! Nothing here is linked: the functions are looked up at run time (see `loader`), so these
//! types and numbers are the whole contract with the library and must match the header. They
//! are public so that the tests can pin them to the values in the header.
//!
//! Sources: `nccl.h` of NCCL 2.28 (`src/nccl.h.in` in NVIDIA/nccl, where the config struct is
//! `ncclConfig_v22800`) and the config parsing in NVIDIA/nccl `src/init.cc`, which copies
//! `min(config->size, sizeof(ncclConfig_t))` bytes and checks the magic, so a 2.28-sized
//! config is accepted by 2.28 and by later versions alike.

use std::ffi::{c_char, c_int, c_uint, c_void};

use crate::{DType, ReduceOp};

/// `ncclResult_t` (a C enum, `int`-sized).
pub type NcclResult = c_int;
pub const NCCL_SUCCESS: NcclResult = 0;
pub const NCCL_UNHANDLED_CUDA_ERROR: NcclResult = 1;
pub const NCCL_SYSTEM_ERROR: NcclResult = 2;
pub const NCCL_INTERNAL_ERROR: NcclResult = 3;
pub const NCCL_INVALID_ARGUMENT: NcclResult = 4;
pub const NCCL_INVALID_USAGE: NcclResult = 5;
pub const NCCL_REMOTE_ERROR: NcclResult = 6;
/// A non-blocking communicator's call has not finished; poll `ncclCommGetAsyncError`.
pub const NCCL_IN_PROGRESS: NcclResult = 7;

/// `ncclDataType_t`.
pub type NcclDataType = c_int;
pub const NCCL_INT8: NcclDataType = 0;
pub const NCCL_UINT8: NcclDataType = 1;
pub const NCCL_INT32: NcclDataType = 2;
pub const NCCL_UINT32: NcclDataType = 3;
pub const NCCL_INT64: NcclDataType = 4;
pub const NCCL_UINT64: NcclDataType = 5;
pub const NCCL_FLOAT16: NcclDataType = 6;
pub const NCCL_FLOAT32: NcclDataType = 7;
pub const NCCL_FLOAT64: NcclDataType = 8;
pub const NCCL_BFLOAT16: NcclDataType = 9;

/// `ncclRedOp_t`.
pub type NcclRedOp = c_int;
pub const NCCL_SUM: NcclRedOp = 0;
pub const NCCL_PROD: NcclRedOp = 1;
pub const NCCL_MAX: NcclRedOp = 2;
pub const NCCL_MIN: NcclRedOp = 3;
pub const NCCL_AVG: NcclRedOp = 4;

/// `NCCL_UNIQUE_ID_BYTES`.
pub const NCCL_UNIQUE_ID_BYTES: usize = 128;

/// `ncclUniqueId`: `struct { char internal[NCCL_UNIQUE_ID_BYTES]; }`, passed by value to
/// `ncclCommInitRankConfig`.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct NcclUniqueIdRaw {
    pub internal: [c_char; NCCL_UNIQUE_ID_BYTES],
}

/// `ncclComm_t`: an opaque pointer.
pub type NcclComm = *mut c_void;
/// `cudaStream_t`: an opaque pointer; null is the legacy default stream.
pub type CudaStream = *mut c_void;

/// `NCCL_API_MAGIC`, the `magic` of `NCCL_CONFIG_INITIALIZER`.
pub const NCCL_API_MAGIC: c_uint = 0xcafe_beef;
/// `NCCL_CONFIG_UNDEF_INT`: "let NCCL choose".
pub const NCCL_CONFIG_UNDEF_INT: c_int = c_int::MIN;

/// `NCCL_VERSION(X,Y,Z)`: the version encoding used by `ncclGetVersion` and the config.
pub const fn nccl_version_code(major: u32, minor: u32, patch: u32) -> u32 {
    if major <= 2 && minor <= 8 {
        major * 1000 + minor * 100 + patch
    } else {
        major * 10000 + minor * 100 + patch
    }
}

/// The inverse of [`nccl_version_code`].
pub const fn nccl_version_parts(code: u32) -> (u32, u32, u32) {
    if code >= 10000 {
        (code / 10000, code % 10000 / 100, code % 100)
    } else {
        (code / 1000, code % 1000 / 100, code % 100)
    }
}

/// The header version whose `ncclConfig_t` layout [`NcclConfig`] reproduces; it goes in the
/// config's `version` field, as `NCCL_CONFIG_INITIALIZER` would put it from that header.
pub const NCCL_CONFIG_VERSION: c_uint = nccl_version_code(2, 28, 0);

/// `ncclConfig_t` as of NCCL 2.28 (`struct ncclConfig_v22800`).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct NcclConfig {
    pub size: usize,
    pub magic: c_uint,
    pub version: c_uint,
    pub blocking: c_int,
    pub cga_cluster_size: c_int,
    pub min_ctas: c_int,
    pub max_ctas: c_int,
    pub net_name: *const c_char,
    pub split_share: c_int,
    pub traffic_class: c_int,
    pub comm_name: *const c_char,
    pub collnet_enable: c_int,
    pub cta_policy: c_int,
    pub shrink_share: c_int,
    pub nvls_ctas: c_int,
    pub n_channels_per_net_peer: c_int,
    pub nvlink_centric_sched: c_int,
}

impl NcclConfig {
    /// `NCCL_CONFIG_INITIALIZER`: every attribute left to NCCL.
    pub fn initializer() -> Self {
        Self {
            size: std::mem::size_of::<Self>(),
            magic: NCCL_API_MAGIC,
            version: NCCL_CONFIG_VERSION,
            blocking: NCCL_CONFIG_UNDEF_INT,
            cga_cluster_size: NCCL_CONFIG_UNDEF_INT,
            min_ctas: NCCL_CONFIG_UNDEF_INT,
            max_ctas: NCCL_CONFIG_UNDEF_INT,
            net_name: std::ptr::null(),
            split_share: NCCL_CONFIG_UNDEF_INT,
            traffic_class: NCCL_CONFIG_UNDEF_INT,
            comm_name: std::ptr::null(),
            collnet_enable: NCCL_CONFIG_UNDEF_INT,
            cta_policy: NCCL_CONFIG_UNDEF_INT,
            shrink_share: NCCL_CONFIG_UNDEF_INT,
            nvls_ctas: NCCL_CONFIG_UNDEF_INT,
            n_channels_per_net_peer: NCCL_CONFIG_UNDEF_INT,
            nvlink_centric_sched: NCCL_CONFIG_UNDEF_INT,
        }
    }
}

/// `cudaError_t` (a C enum, `int`-sized).
pub type CudaError = c_int;
pub const CUDA_SUCCESS: CudaError = 0;
/// `cudaErrorNotReady`: what `cudaStreamQuery` returns while work is pending.
pub const CUDA_ERROR_NOT_READY: CudaError = 600;

/// `cudaMemcpyKind`.
pub type CudaMemcpyKind = c_int;
pub const CUDA_MEMCPY_HOST_TO_DEVICE: CudaMemcpyKind = 1;
pub const CUDA_MEMCPY_DEVICE_TO_HOST: CudaMemcpyKind = 2;

/// `cudaHostFn_t`.
pub type CudaHostFn = unsafe extern "C" fn(user_data: *mut c_void);

/// The NCCL type of a [`DType`].
pub fn data_type(dtype: DType) -> NcclDataType {
    match dtype {
        DType::F32 => NCCL_FLOAT32,
        DType::F64 => NCCL_FLOAT64,
        DType::I64 => NCCL_INT64,
    }
}

/// The NCCL reduction of a [`ReduceOp`].
pub fn red_op(op: ReduceOp) -> NcclRedOp {
    match op {
        ReduceOp::Sum => NCCL_SUM,
        ReduceOp::Max => NCCL_MAX,
    }
}

/// The enumerator's name in `nccl.h`, for messages.
pub fn result_name(result: NcclResult) -> &'static str {
    match result {
        NCCL_SUCCESS => "ncclSuccess",
        NCCL_UNHANDLED_CUDA_ERROR => "ncclUnhandledCudaError",
        NCCL_SYSTEM_ERROR => "ncclSystemError",
        NCCL_INTERNAL_ERROR => "ncclInternalError",
        NCCL_INVALID_ARGUMENT => "ncclInvalidArgument",
        NCCL_INVALID_USAGE => "ncclInvalidUsage",
        NCCL_REMOTE_ERROR => "ncclRemoteError",
        NCCL_IN_PROGRESS => "ncclInProgress",
        _ => "unknown ncclResult_t",
    }
}

// Function signatures, as declared in nccl.h 2.28 and cuda_runtime_api.h.
pub type NcclGetVersionFn = unsafe extern "C" fn(version: *mut c_int) -> NcclResult;
pub type NcclGetUniqueIdFn = unsafe extern "C" fn(id: *mut NcclUniqueIdRaw) -> NcclResult;
pub type NcclCommInitRankConfigFn = unsafe extern "C" fn(
    comm: *mut NcclComm,
    nranks: c_int,
    comm_id: NcclUniqueIdRaw,
    rank: c_int,
    config: *mut NcclConfig,
) -> NcclResult;
pub type NcclAllReduceFn = unsafe extern "C" fn(
    sendbuff: *const c_void,
    recvbuff: *mut c_void,
    count: usize,
    datatype: NcclDataType,
    op: NcclRedOp,
    comm: NcclComm,
    stream: CudaStream,
) -> NcclResult;
pub type NcclAllGatherFn = unsafe extern "C" fn(
    sendbuff: *const c_void,
    recvbuff: *mut c_void,
    sendcount: usize,
    datatype: NcclDataType,
    comm: NcclComm,
    stream: CudaStream,
) -> NcclResult;
pub type NcclBroadcastFn = unsafe extern "C" fn(
    sendbuff: *const c_void,
    recvbuff: *mut c_void,
    count: usize,
    datatype: NcclDataType,
    root: c_int,
    comm: NcclComm,
    stream: CudaStream,
) -> NcclResult;
pub type NcclCommGetAsyncErrorFn =
    unsafe extern "C" fn(comm: NcclComm, async_error: *mut NcclResult) -> NcclResult;
pub type NcclCommFn = unsafe extern "C" fn(comm: NcclComm) -> NcclResult;
pub type NcclGetErrorStringFn = unsafe extern "C" fn(result: NcclResult) -> *const c_char;
pub type NcclGetLastErrorFn = unsafe extern "C" fn(comm: NcclComm) -> *const c_char;

pub type CudaSetDeviceFn = unsafe extern "C" fn(device: c_int) -> CudaError;
pub type CudaGetDeviceCountFn = unsafe extern "C" fn(count: *mut c_int) -> CudaError;
pub type CudaStreamQueryFn = unsafe extern "C" fn(stream: CudaStream) -> CudaError;
pub type CudaGetErrorStringFn = unsafe extern "C" fn(error: CudaError) -> *const c_char;
pub type CudaMallocFn = unsafe extern "C" fn(ptr: *mut *mut c_void, size: usize) -> CudaError;
pub type CudaFreeFn = unsafe extern "C" fn(ptr: *mut c_void) -> CudaError;
pub type CudaMemcpyFn = unsafe extern "C" fn(
    dst: *mut c_void,
    src: *const c_void,
    count: usize,
    kind: CudaMemcpyKind,
) -> CudaError;
pub type CudaLaunchHostFuncFn =
    unsafe extern "C" fn(stream: CudaStream, f: CudaHostFn, user_data: *mut c_void) -> CudaError;
