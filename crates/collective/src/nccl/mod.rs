//! NCCL on device memory, with `libnccl.so.2` and the CUDA runtime loaded at run time.
//!
//! NCCL reduces GPU memory in place, so this backend takes device pointers and a CUDA stream
//! rather than [`crate::Communicator`]'s host buffers: the worker passes its tensors' data
//! pointers and libtorch's current stream (null: the legacy default stream, which libtorch
//! uses unless told otherwise).
//!
//! Nothing is linked at build time. On first use the crate loads:
//! - NCCL from `$LGAF_NCCL_LIB` if set, else `libnccl.so.2` through the normal dlopen search
//!   (`LD_LIBRARY_PATH`, the system paths). pip's `nvidia-nccl-cu12`/`-cu13` wheels install
//!   it as `site-packages/nvidia/nccl/lib/libnccl.so.2`;
//! - the CUDA runtime from `$LGAF_CUDART_LIB` if set, else `libcudart.so.13`, then
//!   `libcudart.so.12`. The `nvidia-cuda-runtime` wheels install it in
//!   `site-packages/nvidia/cu13/lib/` (CUDA 13) or `site-packages/nvidia/cuda_runtime/lib/`.
//!
//! A library that cannot be loaded gives a [`CollectiveError::Nccl`](crate::CollectiveError)
//! saying what was looked for and how to point at it.
//!
//! NCCL has no timeouts of its own; [`NcclCommunicator`] adds a watchdog that aborts the
//! communicator instead of hanging (see its docs).

mod comm;
pub mod cuda;
mod loader;
#[doc(hidden)]
pub mod stand_in;
pub mod sys;

use std::ffi::{c_char, c_int};
use std::fmt;

pub use comm::{NcclAbortHandle, NcclCommunicator};
pub use loader::{CUDART_LIB_ENV, NCCL_LIB_ENV};

use crate::{CollectiveError, Result};
use sys::{NcclUniqueIdRaw, NCCL_SUCCESS, NCCL_UNIQUE_ID_BYTES};

/// The rendezvous token of an NCCL group: made once (by the coordinator's chosen rank) with
/// [`NcclUniqueId::new`], sent to every rank as bytes, and passed to
/// [`NcclCommunicator::new`]. It holds the address of a listening socket in the process that
/// made it, which must stay alive until the group has formed.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct NcclUniqueId(pub [u8; NCCL_UNIQUE_ID_BYTES]);

impl NcclUniqueId {
    /// `ncclGetUniqueId`: a fresh id (needs NCCL, not a GPU).
    pub fn new() -> Result<Self> {
        let nccl = loader::nccl()?;
        let mut raw = NcclUniqueIdRaw {
            internal: [0; NCCL_UNIQUE_ID_BYTES],
        };
        // SAFETY: `raw` is a valid, writable ncclUniqueId.
        let result = unsafe { (nccl.get_unique_id)(&mut raw) };
        if result != NCCL_SUCCESS {
            return Err(CollectiveError::Nccl(format!(
                "ncclGetUniqueId failed: {}",
                nccl.describe_with_last(result, std::ptr::null_mut())
            )));
        }
        Ok(Self(raw.internal.map(|b| b as u8)))
    }

    /// The id sent by another process; it must be exactly [`NCCL_UNIQUE_ID_BYTES`] long.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self> {
        <[u8; NCCL_UNIQUE_ID_BYTES]>::try_from(bytes)
            .map(Self)
            .map_err(|_| CollectiveError::Usage {
                op: "NCCL unique id",
                message: format!(
                    "an NCCL unique id is {NCCL_UNIQUE_ID_BYTES} bytes, received {}",
                    bytes.len()
                ),
            })
    }

    pub fn as_bytes(&self) -> &[u8; NCCL_UNIQUE_ID_BYTES] {
        &self.0
    }

    /// The bytes to send (e.g. in a gRPC `bytes` field).
    pub fn to_bytes(&self) -> Vec<u8> {
        self.0.to_vec()
    }

    fn raw(&self) -> NcclUniqueIdRaw {
        NcclUniqueIdRaw {
            internal: self.0.map(|b| b as c_char),
        }
    }
}

impl From<[u8; NCCL_UNIQUE_ID_BYTES]> for NcclUniqueId {
    fn from(bytes: [u8; NCCL_UNIQUE_ID_BYTES]) -> Self {
        Self(bytes)
    }
}

impl fmt::Debug for NcclUniqueId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("NcclUniqueId(")?;
        for byte in &self.0[..8] {
            write!(f, "{byte:02x}")?;
        }
        f.write_str("…)")
    }
}

/// The loaded NCCL's version as (major, minor, patch), for logs; loads NCCL if needed.
pub fn nccl_version() -> Result<(u32, u32, u32)> {
    let nccl = loader::nccl()?;
    let mut code: c_int = 0;
    // SAFETY: `code` is valid for writes.
    let result = unsafe { (nccl.get_version)(&mut code) };
    if result != NCCL_SUCCESS {
        return Err(CollectiveError::Nccl(format!(
            "ncclGetVersion failed: {}",
            nccl.describe(result)
        )));
    }
    let code = u32::try_from(code).map_err(|_| {
        CollectiveError::Nccl(format!("ncclGetVersion gave a negative version {code}"))
    })?;
    Ok(sys::nccl_version_parts(code))
}

/// Where NCCL was loaded from (the path or the bare name dlopen searched for); loads it if
/// needed.
pub fn nccl_library() -> Result<String> {
    Ok(loader::nccl()?.path.clone())
}
