//! Tests of the NCCL backend.
//!
//! Most machines that run these have neither a GPU nor libnccl, so they come in three kinds:
//! - the ABI facts (enum values, struct layouts) pinned to the numbers in NCCL 2.28's `nccl.h`;
//! - the loader and the watchdog, run in child processes (each loads its libraries once, from
//!   the environment) against the stand-in library of `lgaf_collective::nccl::stand_in`,
//!   compiled here: it has NCCL's non-blocking API and the CUDA runtime's calls, works on host
//!   memory for a world of one, checks the config and id it receives byte for byte, and can
//!   be told to hang or fail;
//! - the real thing, `gpu_*`, where libnccl and a GPU are found (see `LGAF_NCCL_LIB`,
//!   `LGAF_CUDART_LIB`, `LD_LIBRARY_PATH`); elsewhere they print `skipped: <reason>`.

use std::path::{Path, PathBuf};
use std::ptr::null_mut;
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use lgaf_collective::nccl::cuda::{self, DeviceBuffer};
use lgaf_collective::nccl::sys::{self, NcclConfig, NcclUniqueIdRaw};
use lgaf_collective::nccl::{
    nccl_version, stand_in, NcclCommunicator, NcclUniqueId, CUDART_LIB_ENV, NCCL_LIB_ENV,
};
use lgaf_collective::{CollectiveError, DType, ReduceOp};

// ---------------------------------------------------------------------------------------------
// ABI facts, from nccl.h of NCCL 2.28.

#[test]
fn abi_matches_the_nccl_2_28_header() {
    use std::mem::{align_of, offset_of, size_of};

    // ncclResult_t
    assert_eq!(sys::NCCL_SUCCESS, 0);
    assert_eq!(sys::NCCL_UNHANDLED_CUDA_ERROR, 1);
    assert_eq!(sys::NCCL_SYSTEM_ERROR, 2);
    assert_eq!(sys::NCCL_INTERNAL_ERROR, 3);
    assert_eq!(sys::NCCL_INVALID_ARGUMENT, 4);
    assert_eq!(sys::NCCL_INVALID_USAGE, 5);
    assert_eq!(sys::NCCL_REMOTE_ERROR, 6);
    assert_eq!(sys::NCCL_IN_PROGRESS, 7);
    assert_eq!(sys::result_name(7), "ncclInProgress");
    assert_eq!(sys::result_name(6), "ncclRemoteError");

    // ncclDataType_t
    assert_eq!(sys::NCCL_INT8, 0);
    assert_eq!(sys::NCCL_UINT8, 1);
    assert_eq!(sys::NCCL_INT32, 2);
    assert_eq!(sys::NCCL_UINT32, 3);
    assert_eq!(sys::NCCL_INT64, 4);
    assert_eq!(sys::NCCL_UINT64, 5);
    assert_eq!(sys::NCCL_FLOAT16, 6);
    assert_eq!(sys::NCCL_FLOAT32, 7);
    assert_eq!(sys::NCCL_FLOAT64, 8);
    assert_eq!(sys::NCCL_BFLOAT16, 9);
    assert_eq!(sys::data_type(DType::F32), 7);
    assert_eq!(sys::data_type(DType::F64), 8);
    assert_eq!(sys::data_type(DType::I64), 4);

    // ncclRedOp_t
    assert_eq!(sys::NCCL_SUM, 0);
    assert_eq!(sys::NCCL_PROD, 1);
    assert_eq!(sys::NCCL_MAX, 2);
    assert_eq!(sys::NCCL_MIN, 3);
    assert_eq!(sys::NCCL_AVG, 4);
    assert_eq!(sys::red_op(ReduceOp::Sum), 0);
    assert_eq!(sys::red_op(ReduceOp::Max), 2);

    // ncclUniqueId: char internal[NCCL_UNIQUE_ID_BYTES = 128]
    assert_eq!(sys::NCCL_UNIQUE_ID_BYTES, 128);
    assert_eq!(size_of::<NcclUniqueIdRaw>(), 128);
    assert_eq!(align_of::<NcclUniqueIdRaw>(), 1);

    // struct ncclConfig_v22800 on LP64: size_t, 2 unsigned, 4 int, char*, 2 int, char*, 6 int.
    assert_eq!(size_of::<NcclConfig>(), 80);
    assert_eq!(align_of::<NcclConfig>(), 8);
    assert_eq!(offset_of!(NcclConfig, size), 0);
    assert_eq!(offset_of!(NcclConfig, magic), 8);
    assert_eq!(offset_of!(NcclConfig, version), 12);
    assert_eq!(offset_of!(NcclConfig, blocking), 16);
    assert_eq!(offset_of!(NcclConfig, cga_cluster_size), 20);
    assert_eq!(offset_of!(NcclConfig, min_ctas), 24);
    assert_eq!(offset_of!(NcclConfig, max_ctas), 28);
    assert_eq!(offset_of!(NcclConfig, net_name), 32);
    assert_eq!(offset_of!(NcclConfig, split_share), 40);
    assert_eq!(offset_of!(NcclConfig, traffic_class), 44);
    assert_eq!(offset_of!(NcclConfig, comm_name), 48);
    assert_eq!(offset_of!(NcclConfig, collnet_enable), 56);
    assert_eq!(offset_of!(NcclConfig, cta_policy), 60);
    assert_eq!(offset_of!(NcclConfig, shrink_share), 64);
    assert_eq!(offset_of!(NcclConfig, nvls_ctas), 68);
    assert_eq!(offset_of!(NcclConfig, n_channels_per_net_peer), 72);
    assert_eq!(offset_of!(NcclConfig, nvlink_centric_sched), 76);

    // NCCL_CONFIG_INITIALIZER: sizeof, NCCL_API_MAGIC, the header's version, then UNDEF.
    let config = NcclConfig::initializer();
    assert_eq!(config.size, 80);
    assert_eq!(config.magic, 0xcafe_beef);
    assert_eq!(config.version, 22800);
    for field in [
        config.blocking,
        config.cga_cluster_size,
        config.min_ctas,
        config.max_ctas,
        config.split_share,
        config.traffic_class,
        config.collnet_enable,
        config.cta_policy,
        config.shrink_share,
        config.nvls_ctas,
        config.n_channels_per_net_peer,
        config.nvlink_centric_sched,
    ] {
        assert_eq!(field, i32::MIN);
    }
    assert!(config.net_name.is_null() && config.comm_name.is_null());

    // NCCL_VERSION(X,Y,Z) and its inverse.
    assert_eq!(sys::nccl_version_code(2, 28, 9), 22809);
    assert_eq!(sys::nccl_version_code(2, 8, 4), 2804);
    assert_eq!(sys::nccl_version_code(2, 9, 6), 20906);
    assert_eq!(sys::nccl_version_parts(22809), (2, 28, 9));
    assert_eq!(sys::nccl_version_parts(2804), (2, 8, 4));
    assert_eq!(sys::nccl_version_parts(30001), (3, 0, 1));

    // cudaError_t / cudaMemcpyKind values used.
    assert_eq!(sys::CUDA_SUCCESS, 0);
    assert_eq!(sys::CUDA_ERROR_NOT_READY, 600);
    assert_eq!(sys::CUDA_MEMCPY_HOST_TO_DEVICE, 1);
    assert_eq!(sys::CUDA_MEMCPY_DEVICE_TO_HOST, 2);
}

#[test]
fn the_communicator_can_be_shared_between_threads() {
    fn send_sync<T: Send + Sync>() {}
    send_sync::<NcclCommunicator>();
    send_sync::<NcclUniqueId>();
    fn send<T: Send>() {}
    send::<DeviceBuffer>();
}

#[test]
fn unique_id_travels_as_128_bytes() {
    let mut bytes = [0u8; 128];
    for (i, b) in bytes.iter_mut().enumerate() {
        *b = (i * 37 % 251) as u8;
    }
    let id = NcclUniqueId::from(bytes);
    let sent = id.to_bytes();
    assert_eq!(sent.len(), 128);
    let received = NcclUniqueId::from_bytes(&sent).unwrap();
    assert_eq!(received, id);
    assert_eq!(received.as_bytes(), &bytes);
    assert!(format!("{id:?}").starts_with("NcclUniqueId(00254a"));

    for len in [0, 127, 129] {
        match NcclUniqueId::from_bytes(&vec![0; len]) {
            Err(CollectiveError::Usage { message, .. }) => {
                assert!(message.contains("128 bytes") && message.contains(&len.to_string()));
            }
            other => panic!("{len} bytes: expected a usage error, got {other:?}"),
        }
    }
}

#[test]
fn bad_arguments_are_refused_before_any_library_is_loaded() {
    let id = NcclUniqueId([0; 128]);
    let timeout = Duration::from_secs(1);
    for (rank, world) in [(0, 0), (2, 2), (5, 1)] {
        match NcclCommunicator::new(&id, rank, world, 0, timeout) {
            Err(CollectiveError::Usage { message, .. }) => {
                assert!(message.contains(&format!("rank {rank} is not in a group of {world}")));
            }
            other => panic!("rank {rank} of {world}: expected a usage error, got {other:?}"),
        }
    }
    match NcclCommunicator::new(&id, 0, 1, 0, Duration::ZERO) {
        Err(CollectiveError::Usage { message, .. }) => assert!(message.contains("timeout")),
        other => panic!("zero timeout: expected a usage error, got {other:?}"),
    }
}

// ---------------------------------------------------------------------------------------------
// Child processes and the stand-in library.

fn run_child(name: &str, env: &[(&str, &Path)]) -> String {
    stand_in::run_test_in_child(name, env)
}

fn is_child(name: &str) -> bool {
    stand_in::in_child(name)
}

/// The stand-in `libnccl.so.2` + `libcudart.so` (see `lgaf_collective::nccl::stand_in`).
fn fake_lib() -> &'static Path {
    static LIB: OnceLock<PathBuf> = OnceLock::new();
    LIB.get_or_init(|| {
        stand_in::build(&Path::new(env!("CARGO_TARGET_TMPDIR")).join("fake-nccl"))
            .unwrap_or_else(|e| panic!("{e}"))
    })
}

fn fake_env() -> [(&'static str, &'static Path); 2] {
    [(NCCL_LIB_ENV, fake_lib()), (CUDART_LIB_ENV, fake_lib())]
}

/// The stand-in's switches and counters, in a child that loaded it through `LGAF_NCCL_LIB`.
struct Fake(stand_in::Controls);

impl Fake {
    fn open() -> Self {
        let path = std::env::var_os(NCCL_LIB_ENV).expect("child has LGAF_NCCL_LIB");
        Self(stand_in::Controls::open(Path::new(&path)).unwrap())
    }

    fn set(&self, name: &str, value: i32) {
        self.0.set(name, value)
    }

    fn get(&self, name: &str) -> i32 {
        self.0.get(name)
    }
}

fn nccl_message(result: Result<impl std::fmt::Debug, CollectiveError>) -> String {
    match result {
        Err(CollectiveError::Nccl(message)) => message,
        other => panic!("expected CollectiveError::Nccl, got {other:?}"),
    }
}

// ---------------------------------------------------------------------------------------------
// Loading.

#[test]
fn a_missing_nccl_is_a_clear_error() {
    run_child(
        "child_missing_nccl",
        &[(NCCL_LIB_ENV, Path::new("/nonexistent/libnccl.so.2"))],
    );
}

#[test]
#[ignore = "run by a_missing_nccl_is_a_clear_error in a child process"]
fn child_missing_nccl() {
    if !is_child("child_missing_nccl") {
        return;
    }
    let check = |message: String| {
        assert!(message.contains("/nonexistent/libnccl.so.2"), "{message}");
        assert!(message.contains("LGAF_NCCL_LIB"), "{message}");
        assert!(
            message.contains("site-packages/nvidia/nccl/lib"),
            "{message}"
        );
    };
    check(nccl_message(nccl_version()));
    check(nccl_message(NcclUniqueId::new()));
    let id = NcclUniqueId([0; 128]);
    check(nccl_message(NcclCommunicator::new(
        &id,
        0,
        1,
        0,
        Duration::from_secs(1),
    )));
    let shown = NcclUniqueId::new().unwrap_err().to_string();
    assert!(shown.starts_with("NCCL: "), "{shown}");
}

#[test]
fn a_missing_cuda_runtime_is_a_clear_error() {
    run_child(
        "child_missing_cudart",
        &[
            (NCCL_LIB_ENV, fake_lib()),
            (CUDART_LIB_ENV, Path::new("/nonexistent/libcudart.so.13")),
        ],
    );
}

#[test]
#[ignore = "run by a_missing_cuda_runtime_is_a_clear_error in a child process"]
fn child_missing_cudart() {
    if !is_child("child_missing_cudart") {
        return;
    }
    // NCCL itself loads (the stand-in reports 2.28.9) ...
    assert_eq!(nccl_version().unwrap(), (2, 28, 9));
    // ... but anything needing the CUDA runtime says what is missing.
    let check = |message: String| {
        assert!(
            message.contains("/nonexistent/libcudart.so.13"),
            "{message}"
        );
        assert!(message.contains("LGAF_CUDART_LIB"), "{message}");
    };
    check(nccl_message(cuda::device_count()));
    let id = NcclUniqueId::new().unwrap();
    check(nccl_message(NcclCommunicator::new(
        &id,
        0,
        1,
        0,
        Duration::from_secs(1),
    )));
}

// ---------------------------------------------------------------------------------------------
// The communicator and its watchdog, against the stand-in.

#[test]
fn fake_world_of_one_runs_collectives_and_closes_cleanly() {
    run_child("child_world_of_one", &fake_env());
}

#[test]
#[ignore = "run by fake_world_of_one_runs_collectives_and_closes_cleanly in a child process"]
fn child_world_of_one() {
    if !is_child("child_world_of_one") {
        return;
    }
    let fake = Fake::open();
    assert_eq!(nccl_version().unwrap(), (2, 28, 9));
    let id = NcclUniqueId::new().unwrap();
    for (i, byte) in id.as_bytes().iter().enumerate() {
        assert_eq!(*byte, (i * 7 + 3) as u8, "ncclGetUniqueId's bytes, at {i}");
    }

    // A device the (one-GPU) stand-in lacks.
    let message = nccl_message(NcclCommunicator::new(&id, 0, 1, 1, Duration::from_secs(1)));
    assert!(message.contains("cudaSetDevice(1)"), "{message}");

    // The stand-in refuses a config or id that is not byte-exact (layout, magic, version,
    // blocking = 0, every other field UNDEF), so success here checks the ABI from C's side.
    let comm = NcclCommunicator::new(&id, 0, 1, 0, Duration::from_secs(5)).unwrap();
    assert_eq!(fake.get("init"), 1);
    assert_eq!(
        (comm.rank(), comm.world_size(), comm.device_index()),
        (0, 1, 0)
    );
    let stream = null_mut();

    let f32s = [1.5f32, -2.0, 3.25, 1e6];
    let buf = DeviceBuffer::from_slice(0, &f32s).unwrap();
    unsafe { comm.all_reduce(buf.as_ptr(), 4, DType::F32, ReduceOp::Sum, stream) }.unwrap();
    assert_eq!(buf.to_vec::<f32>(4).unwrap(), f32s);
    let i64s = [i64::MIN, -1, 0, i64::MAX];
    let buf = DeviceBuffer::from_slice(0, &i64s).unwrap();
    unsafe { comm.all_reduce(buf.as_ptr(), 4, DType::I64, ReduceOp::Max, stream) }.unwrap();
    assert_eq!(buf.to_vec::<i64>(4).unwrap(), i64s);

    let send = DeviceBuffer::from_slice(0, &[0.25f64, -8.0, 9.5]).unwrap();
    let recv = DeviceBuffer::from_slice(0, &[f64::NAN; 3]).unwrap();
    unsafe { comm.all_gather(send.as_ptr(), recv.as_ptr(), 3, DType::F64, stream) }.unwrap();
    assert_eq!(recv.to_vec::<f64>(3).unwrap(), [0.25, -8.0, 9.5]);

    let buf = DeviceBuffer::from_slice(0, &[4.0f32, 5.0]).unwrap();
    unsafe { comm.broadcast(buf.as_ptr(), 2, DType::F32, 0, stream) }.unwrap();
    assert_eq!(buf.to_vec::<f32>(2).unwrap(), [4.0, 5.0]);

    // Misuse is refused before NCCL sees it, and does not kill the communicator.
    match unsafe { comm.broadcast(buf.as_ptr(), 2, DType::F32, 1, stream) } {
        Err(CollectiveError::Usage { op, message }) => {
            assert_eq!(op, "broadcast");
            assert!(message.contains("root 1"), "{message}");
        }
        other => panic!("expected a usage error, got {other:?}"),
    }
    match unsafe { comm.all_reduce(null_mut(), 3, DType::F32, ReduceOp::Sum, stream) } {
        Err(CollectiveError::Usage { op, .. }) => assert_eq!(op, "all_reduce"),
        other => panic!("expected a usage error, got {other:?}"),
    }
    unsafe { comm.all_reduce(null_mut(), 0, DType::F32, ReduceOp::Sum, stream) }.unwrap();
    assert_eq!(comm.failure(), None);
    assert_eq!(fake.get("abort"), 0);

    // Drop flushes then destroys.
    drop(comm);
    assert_eq!(
        (fake.get("finalize"), fake.get("destroy"), fake.get("abort")),
        (1, 1, 0)
    );
}

#[test]
fn fake_group_that_never_forms_times_out() {
    run_child("child_init_hang", &fake_env());
}

#[test]
#[ignore = "run by fake_group_that_never_forms_times_out in a child process"]
fn child_init_hang() {
    if !is_child("child_init_hang") {
        return;
    }
    let fake = Fake::open();
    fake.set("init_hang", 1);
    let id = NcclUniqueId::new().unwrap();
    let timeout = Duration::from_millis(300);
    let started = Instant::now();
    let message = nccl_message(NcclCommunicator::new(&id, 1, 2, 0, timeout));
    let waited = started.elapsed();
    assert!(
        waited >= timeout && waited < Duration::from_secs(5),
        "{waited:?}"
    );
    assert!(
        message.contains("NCCL init as rank 1 of 2 on cuda:0"),
        "{message}"
    );
    assert!(message.contains("did not form within 300 ms"), "{message}");
    assert!(message.contains("aborted"), "{message}");
    assert_eq!((fake.get("init"), fake.get("abort")), (1, 1));
}

#[test]
fn fake_abort_handle_ends_a_hung_collective_before_the_timeout() {
    run_child("child_abort_handle", &fake_env());
}

#[test]
#[ignore = "run by fake_abort_handle_ends_a_hung_collective_before_the_timeout in a child process"]
fn child_abort_handle() {
    if !is_child("child_abort_handle") {
        return;
    }
    let fake = Fake::open();
    let id = NcclUniqueId::new().unwrap();
    let timeout = Duration::from_secs(60);
    let comm = NcclCommunicator::new(&id, 0, 1, 0, timeout).unwrap();
    let buf = DeviceBuffer::from_slice(0, &[1.0f32; 16]).unwrap();
    fake.set("op_hang", 1);
    let abort = comm.abort_handle();
    let aborter = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(200));
        abort.abort("the coordinator ended generation 3");
    });
    let started = Instant::now();
    let message = nccl_message(unsafe {
        comm.all_reduce(buf.as_ptr(), 16, DType::F32, ReduceOp::Sum, null_mut())
    });
    aborter.join().unwrap();
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );
    assert!(
        message.contains("was aborted before it completed (the coordinator ended generation 3)"),
        "{message}"
    );
    assert_eq!(fake.get("abort"), 1);
    fake.set("op_hang", 0);
    let later =
        nccl_message(unsafe { comm.broadcast(buf.as_ptr(), 16, DType::F32, 0, null_mut()) });
    assert!(later.contains("dead since an earlier failure"), "{later}");
}

#[test]
fn fake_collective_that_never_completes_times_out_and_kills_the_communicator() {
    run_child("child_op_hang", &fake_env());
}

#[test]
#[ignore = "run by fake_collective_that_never_completes_times_out_and_kills_the_communicator in a child process"]
fn child_op_hang() {
    if !is_child("child_op_hang") {
        return;
    }
    let fake = Fake::open();
    let id = NcclUniqueId::new().unwrap();
    let timeout = Duration::from_millis(400);
    let comm = NcclCommunicator::new(&id, 0, 1, 0, timeout).unwrap();
    let buf = DeviceBuffer::from_slice(0, &[1.0f32; 16]).unwrap();
    // Fine first, then the stream never drains (a peer stopped calling).
    unsafe { comm.all_reduce(buf.as_ptr(), 16, DType::F32, ReduceOp::Sum, null_mut()) }.unwrap();
    fake.set("op_hang", 1);
    let started = Instant::now();
    let message = nccl_message(unsafe {
        comm.all_reduce(buf.as_ptr(), 16, DType::F32, ReduceOp::Sum, null_mut())
    });
    let waited = started.elapsed();
    assert!(
        waited >= timeout && waited < Duration::from_secs(5),
        "{waited:?}"
    );
    assert!(
        message.starts_with("all_reduce as rank 0 of 1 on cuda:0"),
        "{message}"
    );
    assert!(
        message.contains("did not complete within 400 ms"),
        "{message}"
    );
    assert!(message.contains("aborted"), "{message}");
    assert_eq!(fake.get("abort"), 1);
    assert_eq!(comm.failure().as_deref(), Some(message.as_str()));

    // Dead from now on: every call fails at once, naming itself and the first failure.
    fake.set("op_hang", 0);
    let started = Instant::now();
    let later =
        nccl_message(unsafe { comm.broadcast(buf.as_ptr(), 16, DType::F32, 0, null_mut()) });
    assert!(started.elapsed() < Duration::from_millis(100));
    assert!(later.starts_with("broadcast as rank 0"), "{later}");
    assert!(later.contains("dead since an earlier failure"), "{later}");
    assert!(later.contains("all_reduce"), "{later}");
    let later = nccl_message(unsafe {
        comm.all_gather(buf.as_ptr(), buf.as_ptr(), 16, DType::F32, null_mut())
    });
    assert!(later.starts_with("all_gather as rank 0"), "{later}");

    // Already aborted: dropping neither destroys nor aborts again.
    drop(comm);
    assert_eq!(
        (fake.get("abort"), fake.get("destroy"), fake.get("finalize")),
        (1, 0, 0)
    );
}

#[test]
fn fake_async_error_fails_the_collective_without_waiting_for_the_timeout() {
    run_child("child_async_error", &fake_env());
}

#[test]
#[ignore = "run by fake_async_error_fails_the_collective_without_waiting_for_the_timeout in a child process"]
fn child_async_error() {
    if !is_child("child_async_error") {
        return;
    }
    let fake = Fake::open();
    let id = NcclUniqueId::new().unwrap();
    let comm = NcclCommunicator::new(&id, 0, 1, 0, Duration::from_secs(60)).unwrap();
    let send = DeviceBuffer::from_slice(0, &[1i64, 2]).unwrap();
    let recv = DeviceBuffer::from_slice(0, &[0i64, 0]).unwrap();
    // The stream never drains, and NCCL reports that a peer went away.
    fake.set("op_hang", 1);
    fake.set("async_error", 1);
    let started = Instant::now();
    let message = nccl_message(unsafe {
        comm.all_gather(send.as_ptr(), recv.as_ptr(), 2, DType::I64, null_mut())
    });
    assert!(started.elapsed() < Duration::from_secs(5));
    assert!(
        message.starts_with("all_gather as rank 0 of 1"),
        "{message}"
    );
    assert!(message.contains("ncclRemoteError (6)"), "{message}");
    assert!(message.contains("fake: peer vanished"), "{message}");
    assert_eq!(fake.get("abort"), 1);
    assert!(comm.failure().is_some());
}

#[test]
fn fake_enqueue_results_are_handled() {
    run_child("child_enqueue", &fake_env());
}

#[test]
#[ignore = "run by fake_enqueue_results_are_handled in a child process"]
fn child_enqueue() {
    if !is_child("child_enqueue") {
        return;
    }
    let fake = Fake::open();
    let id = NcclUniqueId::new().unwrap();
    let buf = DeviceBuffer::from_slice(0, &[3.0f64; 8]).unwrap();

    // ncclInProgress from the call: polled until ncclSuccess, then waited on as usual.
    let comm = NcclCommunicator::new(&id, 0, 1, 0, Duration::from_secs(5)).unwrap();
    let polls_before = fake.get("async_polls");
    fake.set("enqueue_in_progress", 25);
    unsafe { comm.all_reduce(buf.as_ptr(), 8, DType::F64, ReduceOp::Sum, null_mut()) }.unwrap();
    assert!(fake.get("async_polls") - polls_before > 25);
    assert_eq!(buf.to_vec::<f64>(8).unwrap(), [3.0; 8]);
    fake.set("enqueue_in_progress", 0);

    // An error from the call itself kills the communicator too.
    fake.set("enqueue_error", 1);
    let message = nccl_message(unsafe {
        comm.all_reduce(buf.as_ptr(), 8, DType::F64, ReduceOp::Sum, null_mut())
    });
    assert!(message.contains("could not be enqueued"), "{message}");
    assert!(message.contains("ncclInvalidUsage (5)"), "{message}");
    assert!(message.contains("fake: enqueue refused"), "{message}");
    assert_eq!(fake.get("abort"), 1);
    drop(comm);
    assert_eq!(fake.get("destroy"), 0);
}

#[test]
fn fake_close_that_stalls_aborts_instead() {
    run_child("child_close_stalls", &fake_env());
}

#[test]
#[ignore = "run by fake_close_that_stalls_aborts_instead in a child process"]
fn child_close_stalls() {
    if !is_child("child_close_stalls") {
        return;
    }
    let fake = Fake::open();
    let id = NcclUniqueId::new().unwrap();
    let timeout = Duration::from_millis(300);
    let comm = NcclCommunicator::new(&id, 0, 1, 0, timeout).unwrap();
    fake.set("finalize_hang", 1);
    let started = Instant::now();
    drop(comm);
    let waited = started.elapsed();
    assert!(
        waited >= timeout && waited < Duration::from_secs(5),
        "{waited:?}"
    );
    assert_eq!(
        (fake.get("finalize"), fake.get("destroy"), fake.get("abort")),
        (1, 0, 1)
    );
}

// ---------------------------------------------------------------------------------------------
// The real NCCL on a GPU. These skip (and only these) where libnccl or a GPU is missing.

/// One GPU test at a time: they share device 0's legacy default stream.
static GPU: Mutex<()> = Mutex::new(());

fn gpu_device(test: &str) -> Option<usize> {
    let version = match nccl_version() {
        Ok(version) => version,
        Err(e) => {
            println!("skipped: {test}: {e}");
            return None;
        }
    };
    match cuda::device_count() {
        Ok(0) => {
            println!("skipped: {test}: no CUDA device");
            None
        }
        Ok(count) => {
            println!(
                "{test}: NCCL {version:?} from {}, CUDA runtime from {}, {count} device(s)",
                lgaf_collective::nccl::nccl_library().unwrap(),
                cuda::cudart_library().unwrap()
            );
            Some(0)
        }
        Err(e) => {
            println!("skipped: {test}: {e}");
            None
        }
    }
}

#[test]
fn gpu_world_of_one_collectives() {
    let _gpu = GPU.lock().unwrap_or_else(|e| e.into_inner());
    let Some(device) = gpu_device("gpu_world_of_one_collectives") else {
        return;
    };
    let stream = null_mut();
    let id = NcclUniqueId::new().unwrap();
    let comm = NcclCommunicator::new(&id, 0, 1, device, Duration::from_secs(120)).unwrap();

    let f32s: Vec<f32> = (0..1 << 20)
        .map(|i| (i % 1000) as f32 * 0.5 - 7.0)
        .collect();
    let buf = DeviceBuffer::from_slice(device, &f32s).unwrap();
    for op in [ReduceOp::Sum, ReduceOp::Max] {
        unsafe { comm.all_reduce(buf.as_ptr(), f32s.len(), DType::F32, op, stream) }.unwrap();
        assert_eq!(buf.to_vec::<f32>(f32s.len()).unwrap(), f32s, "{op}");
    }
    let f64s = [0.1f64, -1e300, 3.5];
    let buf = DeviceBuffer::from_slice(device, &f64s).unwrap();
    unsafe { comm.all_reduce(buf.as_ptr(), 3, DType::F64, ReduceOp::Sum, stream) }.unwrap();
    assert_eq!(buf.to_vec::<f64>(3).unwrap(), f64s);
    let i64s = [i64::MIN, -1, 0, i64::MAX];
    let buf = DeviceBuffer::from_slice(device, &i64s).unwrap();
    unsafe { comm.all_reduce(buf.as_ptr(), 4, DType::I64, ReduceOp::Max, stream) }.unwrap();
    assert_eq!(buf.to_vec::<i64>(4).unwrap(), i64s);

    let send = DeviceBuffer::from_slice(device, &[7i64, -8, 9]).unwrap();
    let recv = DeviceBuffer::from_slice(device, &[0i64; 3]).unwrap();
    unsafe { comm.all_gather(send.as_ptr(), recv.as_ptr(), 3, DType::I64, stream) }.unwrap();
    assert_eq!(recv.to_vec::<i64>(3).unwrap(), [7, -8, 9]);

    let buf = DeviceBuffer::from_slice(device, &[4.0f32, 5.0]).unwrap();
    unsafe { comm.broadcast(buf.as_ptr(), 2, DType::F32, 0, stream) }.unwrap();
    assert_eq!(buf.to_vec::<f32>(2).unwrap(), [4.0, 5.0]);

    assert_eq!(comm.failure(), None);
    drop(comm);
}

#[test]
fn gpu_watchdog_peer_never_joins() {
    let _gpu = GPU.lock().unwrap_or_else(|e| e.into_inner());
    let Some(device) = gpu_device("gpu_watchdog_peer_never_joins") else {
        return;
    };
    let id = NcclUniqueId::new().unwrap();
    let timeout = Duration::from_secs(3);
    let started = Instant::now();
    // Rank 0 of 2; rank 1 never comes.
    let message = nccl_message(NcclCommunicator::new(&id, 0, 2, device, timeout));
    let waited = started.elapsed();
    println!("gpu_watchdog_peer_never_joins: {waited:?}: {message}");
    assert!(waited < timeout + Duration::from_secs(30), "{waited:?}");
    assert!(message.contains("NCCL init as rank 0 of 2"), "{message}");
    assert!(message.contains("did not form within 3000 ms"), "{message}");
}

#[test]
fn gpu_watchdog_stalled_stream() {
    let _gpu = GPU.lock().unwrap_or_else(|e| e.into_inner());
    let Some(device) = gpu_device("gpu_watchdog_stalled_stream") else {
        return;
    };
    let id = NcclUniqueId::new().unwrap();
    let timeout = Duration::from_secs(1);
    let comm = NcclCommunicator::new(&id, 0, 1, device, timeout).unwrap();
    let buf = DeviceBuffer::from_slice(device, &[1.0f32; 1024]).unwrap();
    // The stream is busy for 4 s, as if a peer were late: the collective misses its deadline.
    unsafe { cuda::stall_stream(device, null_mut(), Duration::from_secs(4)) }.unwrap();
    let started = Instant::now();
    let message = nccl_message(unsafe {
        comm.all_reduce(buf.as_ptr(), 1024, DType::F32, ReduceOp::Sum, null_mut())
    });
    let waited = started.elapsed();
    println!("gpu_watchdog_stalled_stream: {waited:?}: {message}");
    assert!(
        waited >= timeout && waited < Duration::from_secs(30),
        "{waited:?}"
    );
    assert!(
        message.contains("did not complete within 1000 ms"),
        "{message}"
    );
    let later =
        nccl_message(unsafe { comm.broadcast(buf.as_ptr(), 1024, DType::F32, 0, null_mut()) });
    assert!(later.contains("dead since an earlier failure"), "{later}");
    drop(comm);
}
