//! The little of the CUDA runtime that tests and diagnostics need around NCCL: counting
//! devices, device buffers, and stalling a stream. The worker itself uses libtorch's tensors.

use std::ffi::c_void;
use std::time::Duration;

use super::loader::{self, CudaRt};
use super::sys::*;
use crate::{CollectiveError, Result};

fn cuda_error(message: impl std::fmt::Display) -> CollectiveError {
    CollectiveError::Nccl(message.to_string())
}

/// `cudaGetDeviceCount`; loads the CUDA runtime if needed.
pub fn device_count() -> Result<usize> {
    let cuda = loader::cudart()?;
    let mut count = 0;
    // SAFETY: `count` is valid for writes.
    let err = unsafe { (cuda.get_device_count)(&mut count) };
    if err != CUDA_SUCCESS {
        return Err(cuda_error(format!(
            "cudaGetDeviceCount failed: {}",
            cuda.describe(err)
        )));
    }
    Ok(usize::try_from(count).unwrap_or(0))
}

/// Where the CUDA runtime was loaded from; loads it if needed.
pub fn cudart_library() -> Result<String> {
    Ok(loader::cudart()?.path.clone())
}

/// Element types that can be copied to and from a [`DeviceBuffer`] byte for byte.
pub trait Element: Copy + private::Sealed {}
impl Element for u8 {}
impl Element for f32 {}
impl Element for f64 {}
impl Element for i64 {}

mod private {
    pub trait Sealed {}
    impl Sealed for u8 {}
    impl Sealed for f32 {}
    impl Sealed for f64 {}
    impl Sealed for i64 {}
}

/// A `cudaMalloc` allocation, freed on drop.
pub struct DeviceBuffer {
    ptr: *mut c_void,
    bytes: usize,
    device: usize,
    cuda: &'static CudaRt,
}

// SAFETY: device memory is not tied to the thread that allocated it; every method selects the
// buffer's device before touching it.
unsafe impl Send for DeviceBuffer {}

impl DeviceBuffer {
    /// `bytes` of uninitialised memory on CUDA device `device`.
    pub fn alloc(device: usize, bytes: usize) -> Result<Self> {
        let cuda = loader::cudart()?;
        cuda.select_device(device).map_err(cuda_error)?;
        let mut ptr = std::ptr::null_mut();
        // SAFETY: `ptr` is valid for writes; cudaMalloc reports failure as an error code.
        let err = unsafe { (cuda.malloc)(&mut ptr, bytes.max(1)) };
        if err != CUDA_SUCCESS {
            return Err(cuda_error(format!(
                "cudaMalloc({bytes}) on cuda:{device} failed: {}",
                cuda.describe(err)
            )));
        }
        Ok(Self {
            ptr,
            bytes,
            device,
            cuda,
        })
    }

    /// A buffer holding a copy of `data`.
    pub fn from_slice<T: Element>(device: usize, data: &[T]) -> Result<Self> {
        let mut buffer = Self::alloc(device, std::mem::size_of_val(data))?;
        buffer.upload(data)?;
        Ok(buffer)
    }

    /// The device pointer, for NCCL calls.
    pub fn as_ptr(&self) -> *mut c_void {
        self.ptr
    }

    pub fn len_bytes(&self) -> usize {
        self.bytes
    }

    pub fn device(&self) -> usize {
        self.device
    }

    /// Copies `data` to the start of the buffer (synchronous with the legacy default stream).
    pub fn upload<T: Element>(&mut self, data: &[T]) -> Result<()> {
        let bytes = self.check_len(std::mem::size_of_val(data))?;
        // SAFETY: the buffer holds at least `bytes` bytes and `data` spans exactly `bytes`.
        unsafe {
            self.copy(
                self.ptr,
                data.as_ptr().cast(),
                bytes,
                CUDA_MEMCPY_HOST_TO_DEVICE,
            )
        }
    }

    /// Copies the start of the buffer into `out` (synchronous with the legacy default stream).
    pub fn download<T: Element>(&self, out: &mut [T]) -> Result<()> {
        let bytes = self.check_len(std::mem::size_of_val(out))?;
        // SAFETY: as in `upload`; any bit pattern is a valid `Element`.
        unsafe {
            self.copy(
                out.as_mut_ptr().cast(),
                self.ptr,
                bytes,
                CUDA_MEMCPY_DEVICE_TO_HOST,
            )
        }
    }

    /// The first `count` elements, downloaded.
    pub fn to_vec<T: Element + Default>(&self, count: usize) -> Result<Vec<T>> {
        let mut out = vec![T::default(); count];
        self.download(&mut out)?;
        Ok(out)
    }

    fn check_len(&self, bytes: usize) -> Result<usize> {
        if bytes > self.bytes {
            return Err(cuda_error(format!(
                "copy of {bytes} bytes does not fit a device buffer of {}",
                self.bytes
            )));
        }
        Ok(bytes)
    }

    /// `cudaMemcpy` on this buffer's device.
    ///
    /// # Safety
    /// `dst` and `src` must be valid for `bytes` bytes, in the memory `kind` says.
    unsafe fn copy(
        &self,
        dst: *mut c_void,
        src: *const c_void,
        bytes: usize,
        kind: CudaMemcpyKind,
    ) -> Result<()> {
        self.cuda.select_device(self.device).map_err(cuda_error)?;
        // SAFETY: both ranges are valid for `bytes` bytes (caller's contract).
        let err = unsafe { (self.cuda.memcpy)(dst, src, bytes, kind) };
        if err != CUDA_SUCCESS {
            return Err(cuda_error(format!(
                "cudaMemcpy of {bytes} bytes on cuda:{} failed: {}",
                self.device,
                self.cuda.describe(err)
            )));
        }
        Ok(())
    }
}

impl Drop for DeviceBuffer {
    fn drop(&mut self) {
        let _ = self.cuda.select_device(self.device);
        // SAFETY: `ptr` came from cudaMalloc and is freed once, here.
        let err = unsafe { (self.cuda.free)(self.ptr) };
        if err != CUDA_SUCCESS {
            tracing::warn!(
                "cudaFree on cuda:{} failed: {}",
                self.device,
                self.cuda.describe(err)
            );
        }
    }
}

impl std::fmt::Debug for DeviceBuffer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeviceBuffer")
            .field("ptr", &self.ptr)
            .field("bytes", &self.bytes)
            .field("device", &self.device)
            .finish()
    }
}

unsafe extern "C" fn sleep_on_stream(millis: *mut c_void) {
    std::thread::sleep(Duration::from_millis(millis as usize as u64));
}

/// Holds `stream` busy for `duration` from when earlier work on it finishes, by queueing a
/// host function that sleeps (`cudaLaunchHostFunc`): a way to make a collective miss its
/// deadline on one GPU, for watchdog tests.
///
/// # Safety
/// `stream` must be null (the legacy default stream) or a live stream of device `device`.
pub unsafe fn stall_stream(device: usize, stream: *mut c_void, duration: Duration) -> Result<()> {
    let cuda = loader::cudart()?;
    cuda.select_device(device).map_err(cuda_error)?;
    let millis = usize::try_from(duration.as_millis()).unwrap_or(usize::MAX);
    // SAFETY: `stream` is valid (caller's contract); the callback makes no CUDA calls, as
    // host functions must not, and its argument is a number, not a pointer.
    let err = unsafe { (cuda.launch_host_func)(stream, sleep_on_stream, millis as *mut c_void) };
    if err != CUDA_SUCCESS {
        return Err(cuda_error(format!(
            "cudaLaunchHostFunc failed: {}",
            cuda.describe(err)
        )));
    }
    Ok(())
}
