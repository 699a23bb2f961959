//! gRPC requests: every message a worker (or anyone past the job token) sends, decoded as
//! tonic decodes it and handed to the coordinator's [`Job`] as `service.rs` does, in any
//! order and at any time, with the commits the job asks for carried out.
//!
//! An input is a sequence of calls, each an op byte (which request; see [`Op`]), a
//! little-endian `u16` length and that many bytes of the encoded message ([`Op::Tick`]: the
//! length is the time, and no bytes follow). [`Session`] writes such inputs (the seeds)
//! from a scripted run.

use lgaf_coordinator::job::{CommitError, Effect, Job, JobSnapshot, Millis};
use lgaf_coordinator::service::status_of;
use lgaf_proto::{v1, Versioned};
use prost::Message;

/// Which call an op byte makes (its value modulo the number of ops).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    Register,
    Join,
    PublishNcclId,
    GetNcclId,
    EpochPlan,
    Heartbeat,
    Progress,
    CheckpointAck,
    Finish,
    /// Not a request: the clock moves on by the length field, in tenths of a second (no
    /// message bytes follow), and the supervisor's tick runs (deadlines, lost workers,
    /// elastic re-forms).
    Tick,
}

const OPS: [Op; 10] = [
    Op::Register,
    Op::Join,
    Op::PublishNcclId,
    Op::GetNcclId,
    Op::EpochPlan,
    Op::Heartbeat,
    Op::Progress,
    Op::CheckpointAck,
    Op::Finish,
    Op::Tick,
];

impl Op {
    fn byte(self) -> u8 {
        OPS.iter()
            .position(|&op| op == self)
            .expect("every op is listed") as u8
    }
}

/// Runs the calls `data` holds against a new job, then checks that the job's snapshot
/// reads back as the same job.
pub fn session(data: &[u8]) {
    replay(data).check_snapshot();
}

/// The session that the calls `data` holds make.
pub fn replay(data: &[u8]) -> Session {
    let mut session = Session::new();
    let mut rest = data;
    while let Some((&op, tail)) = rest.split_first() {
        let Some((len, tail)) = tail.split_first_chunk::<2>() else {
            break;
        };
        let (op, len) = (OPS[usize::from(op) % OPS.len()], u16::from_le_bytes(*len));
        let body_len = if op == Op::Tick { 0 } else { usize::from(len) };
        let (body, tail) = tail.split_at(body_len.min(tail.len()));
        rest = tail;
        session.call(op, body, len);
    }
    session
}

/// A job and its clock, fed calls; `input` records them as a fuzz input.
pub struct Session {
    pub job: Job,
    now: Millis,
    input: Vec<u8>,
}

impl Default for Session {
    fn default() -> Self {
        Self::new()
    }
}

impl Session {
    pub fn new() -> Self {
        let job =
            Job::new(crate::seeds::job_settings()).expect("the fuzzed job's settings are valid");
        Session {
            job,
            now: 1,
            input: Vec::new(),
        }
    }

    /// Sends `message` as `op`, recording it.
    pub fn send(&mut self, op: Op, message: &impl Message) {
        let body = message.encode_to_vec();
        let len = u16::try_from(body.len()).expect("a seed's message fits in 64 KiB");
        self.record(op, len, &body);
        self.call(op, &body, len);
    }

    /// Moves the clock on by `tenths` of a second, recording it.
    pub fn wait(&mut self, tenths: u16) {
        self.record(Op::Tick, tenths, &[]);
        self.call(Op::Tick, &[], tenths);
    }

    /// The calls made so far, as a fuzz input.
    pub fn input(&self) -> &[u8] {
        &self.input
    }

    /// The job as JSON (for comparing sessions).
    pub fn job_json(&self) -> serde_json::Value {
        serde_json::to_value(&self.job).expect("a job serialises")
    }

    fn record(&mut self, op: Op, len: u16, body: &[u8]) {
        self.input.push(op.byte());
        self.input.extend_from_slice(&len.to_le_bytes());
        self.input.extend_from_slice(body);
    }

    fn call(&mut self, op: Op, body: &[u8], len: u16) {
        self.now += 1;
        let now = self.now;
        let job = &mut self.job;
        let refused = match op {
            Op::Register => handle(body, |r: v1::RegisterRequest| job.register(&r, now)),
            Op::Join => handle(body, |r: v1::JoinRequest| job.join(&r, now)),
            Op::PublishNcclId => handle(body, |r: v1::PublishNcclIdRequest| {
                job.publish_nccl_id(&r, now)
            }),
            Op::GetNcclId => handle(body, |r: v1::GetNcclIdRequest| job.nccl_id(&r, now)),
            Op::EpochPlan => handle(body, |r: v1::EpochPlanRequest| job.epoch_plan(&r, now)),
            Op::Heartbeat => handle(body, |r: v1::HeartbeatRequest| job.heartbeat(&r, now)),
            Op::Progress => handle(body, |r: v1::ProgressReport| job.report_progress(&r, now)),
            Op::CheckpointAck => handle(body, |r: v1::CheckpointAckRequest| {
                job.checkpoint_ack(&r, now)
            }),
            Op::Finish => handle(body, |r: v1::FinishRequest| job.finish(&r, now)),
            Op::Tick => {
                self.now += u64::from(len) * 100;
                self.job.tick(self.now);
                None
            }
        };
        // What the service would answer with (its message is built from the job's error).
        if let Some(error) = refused {
            let _ = status_of(error).message().len();
        }
        self.carry_out_effects();
        let _ = self.job.status(self.now);
    }

    /// Commits what the job asks to commit (the manifest built from the acks, as the
    /// store's committer builds it, refused as it would be), until it asks for nothing.
    fn carry_out_effects(&mut self) {
        loop {
            let effects = self.job.take_effects();
            if effects.is_empty() {
                return;
            }
            for effect in effects {
                if let Effect::Commit(request) = effect {
                    let outcome = lgaf_coordinator::store::manifest_of(&request)
                        .map(|manifest| format!("MANIFEST-{}.json", manifest.step))
                        .map_err(|e| CommitError(e.to_string()));
                    self.job.commit_done(request.step, outcome, self.now);
                }
            }
        }
    }

    fn check_snapshot(&self) {
        let saved = serde_json::to_vec(&self.job.snapshot(self.now)).expect("a job serialises");
        let back: JobSnapshot =
            serde_json::from_slice(&saved).expect("a job's own snapshot reads back");
        assert_eq!(
            serde_json::to_value(&back.job).expect("a job serialises"),
            serde_json::to_value(&self.job).expect("a job serialises"),
            "the snapshot read back is the job that wrote it"
        );
    }
}

/// Decodes a request as tonic would and, if it decodes and its version is supported, hands
/// it to the job; the job's refusal, if any.
fn handle<M, T>(
    body: &[u8],
    call: impl FnOnce(M) -> Result<T, lgaf_coordinator::JobError>,
) -> Option<lgaf_coordinator::JobError>
where
    M: Message + Default + Versioned,
{
    let request = M::decode(body).ok()?;
    request.check_version().ok()?;
    call(request).err()
}
