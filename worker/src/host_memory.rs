//! How the process's C allocator treats tensor-sized blocks of host memory.
//!
//! libtorch allocates CPU tensors with `posix_memalign`. glibc serves every block above its
//! mmap threshold (at most 32 MiB) with a fresh `mmap` and returns it with `munmap` when
//! freed, so each training step on the CPU maps, zero-fills (one page fault per 4 KiB) and
//! unmaps every large activation again: a quarter-width LGAF-r18 at batch 64 has 51 MB
//! activations, and a profile of its step spent 38% of the time in the kernel's page-fault
//! path. PyTorch's CPU tuning guide answers this by preloading jemalloc or tcmalloc; glibc
//! can be told the same thing directly, with no allocator to build or ship.

/// Serves large blocks of the main thread's heap (where both binaries train) instead of
/// fresh mappings, and keeps freed heap memory for the next step instead of returning it to
/// the kernel. Other threads' arenas still map blocks above 64 MiB afresh (glibc's heap
/// size for a thread arena). Call it first thing in `main`, before tensors exist. The
/// cost: memory freed after a peak (a checkpoint's buffers) stays with the process for
/// reuse rather than going back to the system; the peak itself does not grow.
pub fn keep_freed_tensor_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // SAFETY: mallopt only sets allocator parameters; glibc takes its own lock, and the
        // values are in the ranges its manual allows. A refused value (return 0) leaves
        // glibc's default, which is correct, only slower.
        unsafe {
            libc::mallopt(libc::M_MMAP_MAX, 0);
            libc::mallopt(libc::M_TRIM_THRESHOLD, i32::MAX);
            libc::mallopt(libc::M_TOP_PAD, 64 << 20);
        }
    }
}
