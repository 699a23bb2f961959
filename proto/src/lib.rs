//! The control plane between `lgaf-coordinator` and `lgaf-worker`: the generated `lgaf.v1`
//! messages, client and server (see `lgaf/v1/coordinator.proto` for the worker's life
//! cycle), plus the few checks both sides must agree on so that a malformed request gets
//! the same status code whoever validates it.

use std::fmt;

use tonic::Status;

pub mod auth;
pub mod console;
pub mod exit;
pub mod tls;

#[allow(clippy::all, missing_docs)]
pub mod lgaf {
    pub mod v1 {
        tonic::include_proto!("lgaf.v1");
    }
}

pub use lgaf::v1;

/// The protocol version of this crate's `.proto`; every request carries it.
pub const API_VERSION: u32 = 1;

/// The largest message either side sends or accepts. Requests are small (the biggest is a
/// checkpoint ack listing object keys, or the config TOML in `RegisterReply`); the bound
/// keeps a confused or hostile peer from making the coordinator buffer gigabytes.
pub const MAX_MESSAGE_BYTES: usize = 4 << 20;

/// Checks a request's `api_version`: 0 is a missing field (INVALID_ARGUMENT), another
/// version is FAILED_PRECONDITION naming both, as the `.proto` promises.
pub fn check_api_version(got: u32) -> Result<(), Status> {
    match got {
        API_VERSION => Ok(()),
        0 => Err(Status::invalid_argument(format!(
            "api_version: missing (this coordinator speaks lgaf.v1 api_version {API_VERSION})"
        ))),
        other => Err(Status::failed_precondition(format!(
            "api_version: the request speaks version {other}, this coordinator speaks \
             version {API_VERSION}; run a worker and coordinator of the same release"
        ))),
    }
}

/// Requests that carry `api_version` (all of them).
pub trait Versioned {
    fn api_version(&self) -> u32;

    /// [`check_api_version`] on this request.
    fn check_version(&self) -> Result<(), Status> {
        check_api_version(self.api_version())
    }
}

macro_rules! versioned {
    ($($t:ident),* $(,)?) => {
        $(impl Versioned for v1::$t {
            fn api_version(&self) -> u32 {
                self.api_version
            }
        })*
    };
}

versioned!(
    RegisterRequest,
    JoinRequest,
    PublishNcclIdRequest,
    GetNcclIdRequest,
    EpochPlanRequest,
    HeartbeatRequest,
    ProgressReport,
    CheckpointAckRequest,
    FinishRequest,
    JobStatusRequest,
);

/// Where a worker computes: the `device` field of `RegisterRequest`. [`Device::parse`] is
/// the one parser of its spelling.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Device {
    Cpu,
    Cuda(u32),
}

impl Device {
    /// Parses `"cpu"` or `"cuda:N"`, the only spellings the protocol allows.
    pub fn parse(s: &str) -> Option<Device> {
        if s == "cpu" {
            return Some(Device::Cpu);
        }
        let index = s.strip_prefix("cuda:")?;
        // Digits only: u32's parser would also take "+1".
        if index.is_empty() || !index.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        index.parse().ok().map(Device::Cuda)
    }

    pub fn is_cuda(self) -> bool {
        matches!(self, Device::Cuda(_))
    }
}

impl fmt::Display for Device {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Device::Cpu => f.write_str("cpu"),
            Device::Cuda(i) => write!(f, "cuda:{i}"),
        }
    }
}

/// Whether `s` is a lower-case hex SHA-256 (64 digits), the form `CheckpointObject.sha256`
/// must have.
pub fn is_sha256_hex(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// The longest host name a worker may register with (DNS's limit).
pub const MAX_HOST_NAME: usize = 253;

/// Whether `c` may stand in a registered host name: a DNS name or an IPv4/IPv6 address.
/// Nothing else, so that a name never garbles or forges a log line.
pub fn is_host_name_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_' | ':')
}

/// This machine's name (the kernel's), as both processes report it: any character that
/// [`is_host_name_char`] refuses becomes `-`, at most [`MAX_HOST_NAME`] characters, and
/// `unknown` when there is none. One definition, so that what a coordinator writes in its
/// lease is what it compares with later, and what a worker registers is never refused.
pub fn this_host_name() -> String {
    let raw = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
    let name: String = raw
        .trim()
        .chars()
        .take(MAX_HOST_NAME)
        .map(|c| if is_host_name_char(c) { c } else { '-' })
        .collect();
    if name.is_empty() {
        "unknown".into()
    } else {
        name
    }
}

/// Whether `s` looks like `host:port` (an IP or a DNS name, and a non-zero port), the form of
/// `collective_addr`. Names are not resolved: the address is the peers' business.
pub fn is_host_port(s: &str) -> bool {
    if s.parse::<std::net::SocketAddr>().is_ok() {
        return !s.ends_with(":0");
    }
    let Some((host, port)) = s.rsplit_once(':') else {
        return false;
    };
    let host_ok = !host.is_empty()
        && host.len() <= MAX_HOST_NAME
        && host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.' || b == b'_');
    host_ok && matches!(port.parse::<u16>(), Ok(p) if p != 0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tonic::Code;

    #[test]
    fn api_version_checks() {
        assert!(check_api_version(API_VERSION).is_ok());
        let missing = check_api_version(0).unwrap_err();
        assert_eq!(missing.code(), Code::InvalidArgument);
        assert!(missing.message().starts_with("api_version: missing"));
        let other = check_api_version(7).unwrap_err();
        assert_eq!(other.code(), Code::FailedPrecondition);
        assert!(other.message().contains("version 7"), "{}", other.message());
        assert!(other.message().contains("version 1"), "{}", other.message());
        let req = v1::HeartbeatRequest {
            api_version: 2,
            ..Default::default()
        };
        assert_eq!(
            req.check_version().unwrap_err().code(),
            Code::FailedPrecondition
        );
    }

    #[test]
    fn devices() {
        assert_eq!(Device::parse("cpu"), Some(Device::Cpu));
        assert_eq!(Device::parse("cuda:3"), Some(Device::Cuda(3)));
        for bad in [
            "", "gpu", "cuda", "cuda:", "cuda:+1", "cuda:-1", "CPU", "cuda:1x",
        ] {
            assert_eq!(Device::parse(bad), None, "{bad}");
        }
        assert_eq!(Device::Cuda(2).to_string(), "cuda:2");
        for device in [Device::Cpu, Device::Cuda(0), Device::Cuda(17)] {
            assert_eq!(Device::parse(&device.to_string()), Some(device));
        }
    }

    #[test]
    fn sha256_and_addresses() {
        assert!(is_sha256_hex(&"ab".repeat(32)));
        assert!(!is_sha256_hex(&"AB".repeat(32)));
        assert!(!is_sha256_hex(&"ab".repeat(31)));
        for ok in ["127.0.0.1:4000", "[::1]:4000", "worker-0.lgaf.svc:29500"] {
            assert!(is_host_port(ok), "{ok}");
        }
        for bad in [
            "",
            "127.0.0.1",
            "host:",
            ":80",
            "host:0",
            "host:70000",
            "a b:1",
        ] {
            assert!(!is_host_port(bad), "{bad}");
        }
    }

    #[test]
    fn messages_round_trip() {
        use prost::Message;
        let facts = v1::TrainingFacts {
            num_samples: 10,
            batch_size: 2,
            ..Default::default()
        };
        let bytes = facts.encode_to_vec();
        assert_eq!(v1::TrainingFacts::decode(bytes.as_slice()).unwrap(), facts);
    }
}

/// The data shards rank `rank` of a generation of `world_size` ranks trains on when the job
/// cuts every global batch into `data_world_size` (at least `world_size`) shards: `rank`,
/// `rank + world_size`, ... below `data_world_size`. Every shard has exactly one rank, and
/// ranks hold at most one shard more than each other; with `world_size == data_world_size`
/// it is `[rank]`. The one definition of the layout: the workers' sampler and Partial-FC
/// exchange follow it.
pub fn data_shards(rank: u32, world_size: u32, data_world_size: u32) -> Vec<u32> {
    (rank..data_world_size)
        .step_by(world_size.max(1) as usize)
        .collect()
}

impl v1::JoinReply {
    /// The job's data shards: `data_world_size`, or `world_size` from a coordinator older
    /// than that field (0).
    pub fn data_shard_count(&self) -> u32 {
        match self.data_world_size {
            0 => self.world_size,
            n => n,
        }
    }
}

/// Where a run resumed on another world size continues: the same epoch, and the same
/// fraction of it rounded down, in the new world's steps (`steps_per_epoch` depends on the
/// world size because the per-rank batch is fixed). The identity when the sizes match.
/// Coordinator and workers both call this, so they agree on the step.
pub fn resumed_step(saved_step: u64, saved_steps_per_epoch: u64, steps_per_epoch: u64) -> u64 {
    if saved_steps_per_epoch == steps_per_epoch || saved_steps_per_epoch == 0 {
        return saved_step;
    }
    // In u128: the step comes from a manifest, and epoch x steps per epoch may not fit.
    let (step, saved, now) = (
        u128::from(saved_step),
        u128::from(saved_steps_per_epoch),
        u128::from(steps_per_epoch),
    );
    let at = step / saved * now + step % saved * now / saved;
    u64::try_from(at).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod resume_tests {
    use super::{data_shards, resumed_step};

    #[test]
    fn data_shards_give_every_shard_one_rank() {
        assert_eq!(data_shards(1, 3, 3), vec![1]);
        let older = super::v1::JoinReply {
            world_size: 3,
            ..Default::default()
        };
        assert_eq!(older.data_shard_count(), 3);
        assert_eq!(data_shards(0, 2, 3), vec![0, 2]);
        assert_eq!(data_shards(1, 2, 3), vec![1]);
        for data in 1..9u32 {
            for world in 1..=data {
                let mut all: Vec<u32> = (0..world)
                    .flat_map(|rank| data_shards(rank, world, data))
                    .collect();
                let sizes: Vec<usize> = (0..world)
                    .map(|rank| data_shards(rank, world, data).len())
                    .collect();
                all.sort_unstable();
                assert_eq!(all, (0..data).collect::<Vec<_>>(), "{world} of {data}");
                let (lo, hi) = (sizes.iter().min().unwrap(), sizes.iter().max().unwrap());
                assert!(hi - lo <= 1, "{world} of {data}: {sizes:?}");
            }
        }
    }

    #[test]
    fn resumed_step_keeps_the_epoch_and_its_fraction() {
        assert_eq!(resumed_step(37, 10, 10), 37);
        // Epoch ends map to epoch ends.
        assert_eq!(resumed_step(20, 10, 5), 10);
        assert_eq!(resumed_step(20, 10, 30), 60);
        // Mid-epoch: the fraction rounded down (a few samples are seen again, none skipped).
        assert_eq!(resumed_step(25, 10, 5), 12);
        assert_eq!(resumed_step(25, 10, 3), 7);
        // A step from a manifest far beyond any run's: no overflow, the largest step.
        assert_eq!(resumed_step(u64::MAX, 1, 2), u64::MAX);
        assert_eq!(resumed_step(u64::MAX - 1, 3, 2), (u64::MAX - 1) / 3 * 2 + 1);
    }
}
