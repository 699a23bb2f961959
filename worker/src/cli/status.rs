//! `lgaf status`: a coordinated job as its coordinator sees it, from one `GetJobStatus`
//! call through the worker's own client ([`crate::coordinator_client`]: TLS, the job
//! token). Shown as a short aligned text block and a worker table, or with `--json` as one
//! JSON object of the typed [`JobView`]; a coordinator that cannot be reached or refuses
//! the token is an error naming its URL and what to do.

use std::sync::Arc;

use anyhow::{Context, Result};
use clap::Args;
use lgaf_proto::auth::{JobToken, TOKEN_ENV};
use lgaf_proto::tls::ClientTlsFiles;
use lgaf_proto::v1;
use serde::Serialize;
use tokio::runtime::Runtime;
use tonic::Code;

use crate::coordinator_client::{Client, ClientError, CoordinatorArgs};

#[derive(Args)]
pub struct StatusArgs {
    #[command(flatten)]
    connection: CoordinatorArgs,
    /// One JSON object: job_id, run_id, coordinator, state (waiting, running, finished,
    /// failed, cancelled), generation, world_size, step, total_steps, epoch, loss, samples_per_s,
    /// last_checkpoint_step, error and workers (worker_id, rank, slot, host, pid, device,
    /// state, step, last_seen_ms); null where the coordinator has no value yet.
    #[arg(long)]
    json: bool,
}

/// Why the job's status could not be had.
#[derive(Debug, thiserror::Error)]
pub enum StatusError {
    #[error(
        "cannot reach the coordinator at {url}: {message}. Is lgaf-coordinator running \
         there? Give the URL it printed (\"listening on URL\") with --coordinator or \
         LGAF_COORDINATOR"
    )]
    Unreachable { url: String, message: String },
    #[error("the coordinator at {url} refused the request ({sent}): {message}{advice}")]
    Refused {
        url: String,
        /// Which token was sent, in words (never the token).
        sent: String,
        message: String,
        /// How to give the token, unless the coordinator's message says so already.
        advice: String,
    },
    #[error(transparent)]
    Client(#[from] ClientError),
}

/// `lgaf status`: fetches the job's status and prints it.
pub(super) fn status(a: StatusArgs) -> Result<()> {
    let connection = &a.connection;
    let (token, sent) = match &connection.token_file {
        Some(path) => (
            Some(JobToken::from_file(path)?),
            format!("the job token in {}", path.display()),
        ),
        None => match JobToken::from_env()? {
            Some(token) => (Some(token), format!("the job token in ${TOKEN_ENV}")),
            None => (None, "no job token given".to_string()),
        },
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the gRPC runtime")?;
    let status = fetch(
        &connection.coordinator,
        token,
        &sent,
        &connection.tls(),
        Arc::new(rt),
    )?;
    let view = JobView::new(&connection.coordinator, &status);
    if a.json {
        out!("{}", view.to_json()?);
    } else {
        for line in view.to_text() {
            out!("{line}");
        }
    }
    Ok(())
}

/// One `GetJobStatus` call to the coordinator at `url`; `sent` says which token goes with
/// it, for the error when the coordinator refuses it.
fn fetch(
    url: &str,
    token: Option<JobToken>,
    sent: &str,
    tls: &ClientTlsFiles,
    rt: Arc<Runtime>,
) -> Result<v1::JobStatus, StatusError> {
    let client = Client::connect_once(url, token, tls, rt).map_err(|e| explain(e, sent))?;
    let request = v1::JobStatusRequest {
        api_version: lgaf_proto::API_VERSION,
    };
    client
        .call("GetJobStatus", request, |mut c, r| async move {
            c.get_job_status(r).await
        })
        .map_err(|e| explain(e, sent))
}

/// How [`Client::connect_once`] words a coordinator it could not connect to.
const UNREACHABLE: &str = "unreachable: ";

/// A client error as what the operator should do about it: nothing listening (the
/// client's "unreachable", or the connection lost) and a refused token get their own
/// advice; the rest (a URL that does not parse, the TLS set-up) is as the client words it.
fn explain(e: ClientError, sent: &str) -> StatusError {
    match e {
        ClientError::Connect { url, message } if message.starts_with(UNREACHABLE) => {
            StatusError::Unreachable {
                url,
                message: message[UNREACHABLE.len()..].to_string(),
            }
        }
        ClientError::Call { url, status, .. } if status.code() == Code::Unavailable => {
            StatusError::Unreachable {
                url,
                message: status.message().to_string(),
            }
        }
        ClientError::Call { url, status, .. }
            if matches!(
                status.code(),
                Code::Unauthenticated | Code::PermissionDenied
            ) =>
        {
            let message = status.message().to_string();
            let advice = match message.contains("--token-file") {
                true => String::new(),
                false => format!(". Give this job's token with --token-file PATH or {TOKEN_ENV}"),
            };
            StatusError::Refused {
                url,
                sent: sent.to_string(),
                message,
                advice,
            }
        }
        other => StatusError::Client(other),
    }
}

/// The job's state, as `--json` writes it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum JobState {
    /// Waiting for workers to register (or for a generation to form).
    Waiting,
    Running,
    Finished,
    Failed,
    /// Its coordinator was stopped before the end (the run can be resumed).
    Cancelled,
    /// A state this build does not know (a newer coordinator), or none.
    Unknown,
}

impl JobState {
    fn from_proto(state: i32) -> Self {
        match v1::JobState::try_from(state) {
            Ok(v1::JobState::Waiting) => JobState::Waiting,
            Ok(v1::JobState::Running) => JobState::Running,
            Ok(v1::JobState::Finished) => JobState::Finished,
            Ok(v1::JobState::Failed) => JobState::Failed,
            Ok(v1::JobState::Cancelled) => JobState::Cancelled,
            Ok(v1::JobState::Unspecified) | Err(_) => JobState::Unknown,
        }
    }

    fn name(self) -> &'static str {
        match self {
            JobState::Waiting => "waiting",
            JobState::Running => "running",
            JobState::Finished => "finished",
            JobState::Failed => "failed",
            JobState::Cancelled => "cancelled",
            JobState::Unknown => "unknown",
        }
    }
}

/// The job as `lgaf status` shows it: the coordinator's [`v1::JobStatus`], its "none yet"
/// zeros and empty strings as `None` (null in JSON). The field names are the JSON's and
/// stay as they are.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct JobView {
    pub job_id: String,
    pub run_id: String,
    /// The URL asked.
    pub coordinator: String,
    pub state: JobState,
    /// The current generation (0: none formed yet).
    pub generation: u64,
    /// Ranks of the current generation (before one forms, the job's --workers).
    pub world_size: u32,
    /// Steps completed (rank 0's).
    pub step: u64,
    /// Steps of the whole run, once the schedule is known.
    pub total_steps: Option<u64>,
    pub epoch: u64,
    /// The last reported loss and job-wide samples per second, once reported.
    pub loss: Option<f64>,
    pub samples_per_s: Option<f64>,
    /// The step of the newest committed checkpoint, once one is.
    pub last_checkpoint_step: Option<u64>,
    /// Why the job failed, when it did.
    pub error: Option<String>,
    /// Ranked workers by rank, then the others in registration order.
    pub workers: Vec<WorkerView>,
}

/// One registered worker, as [`v1::WorkerStatus`] carries it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct WorkerView {
    pub worker_id: String,
    /// Its rank in the current generation, if it has one.
    pub rank: Option<u32>,
    /// The slot it registered in, if it named one (a pod's completion index).
    pub slot: Option<u32>,
    pub host: String,
    pub pid: u32,
    /// "cpu" or "cuda:N".
    pub device: String,
    /// The coordinator's word: registered, joined, training, finished or failed.
    pub state: String,
    /// Steps completed, as its last heartbeat said.
    pub step: u64,
    /// Milliseconds since the coordinator last heard from it.
    pub last_seen_ms: u64,
}

impl JobView {
    /// The view of `status`, as the coordinator at `url` answered it.
    pub fn new(url: &str, status: &v1::JobStatus) -> Self {
        let nonzero = |n: u64| (n != 0).then_some(n);
        let reported = |x: f64| (x != 0.0).then_some(x);
        JobView {
            job_id: status.job_id.clone(),
            run_id: status.run_id.clone(),
            coordinator: url.to_string(),
            state: JobState::from_proto(status.state),
            generation: status.generation,
            world_size: status.world_size,
            step: status.step,
            total_steps: nonzero(status.total_steps),
            epoch: status.epoch,
            loss: reported(status.loss),
            samples_per_s: reported(status.samples_per_s),
            last_checkpoint_step: nonzero(status.last_checkpoint_step),
            error: (!status.error.is_empty()).then(|| status.error.clone()),
            workers: status
                .workers
                .iter()
                .map(|w| WorkerView {
                    worker_id: w.worker_id.clone(),
                    rank: u32::try_from(w.rank).ok(),
                    slot: w.slot,
                    host: w.host.clone(),
                    pid: w.pid,
                    device: w.device.clone(),
                    state: w.state.clone(),
                    step: w.step,
                    last_seen_ms: w.last_seen_ms,
                })
                .collect(),
        }
    }

    /// The `--json` output: one object on one line.
    pub fn to_json(&self) -> serde_json::Result<String> {
        serde_json::to_string(self)
    }

    /// The human output: an aligned block about the job, a blank line, the worker table.
    pub fn to_text(&self) -> Vec<String> {
        let step = match self.total_steps {
            Some(total) => format!("{}/{total} (epoch {})", self.step, self.epoch),
            None => format!("{} (epoch {})", self.step, self.epoch),
        };
        let generation = match self.generation {
            0 => format!("none formed yet ({} workers expected)", self.world_size),
            n => format!("{n} ({} ranks)", self.world_size),
        };
        let mut rows = vec![
            ("job", self.job_id.clone()),
            ("run", self.run_id.clone()),
            ("coordinator", self.coordinator.clone()),
            ("state", self.state.name().to_string()),
            ("generation", generation),
            ("step", step),
        ];
        match (self.loss, self.samples_per_s) {
            (None, None) => {}
            (loss, rate) => rows.push((
                "loss",
                format!(
                    "{}, {} samples/s",
                    loss.map_or("-".into(), |l| format!("{l:.4}")),
                    rate.map_or("-".into(), |r| format!("{r:.1}"))
                ),
            )),
        }
        rows.push((
            "checkpoint",
            self.last_checkpoint_step
                .map_or("none committed yet".into(), |s| format!("step {s}")),
        ));
        if let Some(error) = &self.error {
            rows.push(("error", error.clone()));
        }
        let label_width = rows
            .iter()
            .map(|(label, _)| label.len() + 1)
            .max()
            .unwrap_or(0);
        let mut lines: Vec<String> = rows
            .into_iter()
            .map(|(label, value)| format!("{:<label_width$} {value}", format!("{label}:")))
            .collect();
        lines.push(String::new());
        if self.workers.is_empty() {
            lines.push("no worker has registered yet".into());
        } else {
            lines.extend(self.worker_table());
        }
        lines
    }

    /// The workers as a table with a header, columns as wide as their widest cell, numbers
    /// right-aligned.
    fn worker_table(&self) -> Vec<String> {
        const HEADER: [&str; 9] = [
            "rank",
            "slot",
            "worker",
            "host",
            "pid",
            "device",
            "state",
            "step",
            "last seen",
        ];
        const NUMERIC: [bool; 9] = [true, true, false, false, true, false, false, true, true];
        let cells: Vec<[String; 9]> = self
            .workers
            .iter()
            .map(|w| {
                [
                    w.rank.map_or("-".into(), |r| r.to_string()),
                    w.slot.map_or("-".into(), |s| s.to_string()),
                    w.worker_id.clone(),
                    w.host.clone(),
                    w.pid.to_string(),
                    w.device.clone(),
                    w.state.clone(),
                    w.step.to_string(),
                    age(w.last_seen_ms),
                ]
            })
            .collect();
        let mut widths = HEADER.map(str::len);
        for row in &cells {
            for (width, cell) in widths.iter_mut().zip(row) {
                *width = (*width).max(cell.chars().count());
            }
        }
        let line = |row: &[&str]| {
            let parts: Vec<String> = row
                .iter()
                .zip(widths)
                .zip(NUMERIC)
                .map(|((cell, width), numeric)| match numeric {
                    true => format!("{cell:>width$}"),
                    false => format!("{cell:<width$}"),
                })
                .collect();
            parts.join("  ").trim_end().to_string()
        };
        std::iter::once(line(&HEADER))
            .chain(
                cells
                    .iter()
                    .map(|row| line(&row.each_ref().map(String::as_str))),
            )
            .collect()
    }
}

/// `ms` ago, in words: "250 ms ago", "3.4 s ago", "12 min ago".
fn age(ms: u64) -> String {
    match ms {
        0..=999 => format!("{ms} ms ago"),
        1_000..=119_999 => format!("{:.1} s ago", ms as f64 / 1000.0),
        _ => format!("{} min ago", ms / 60_000),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// A job of 4 workers that none has joined yet.
    fn waiting() -> v1::JobStatus {
        v1::JobStatus {
            job_id: "j".into(),
            run_id: "r".into(),
            state: v1::JobState::Waiting as i32,
            world_size: 4,
            ..Default::default()
        }
    }

    fn running() -> v1::JobStatus {
        v1::JobStatus {
            job_id: "job-a".into(),
            run_id: "run-a".into(),
            state: v1::JobState::Running as i32,
            generation: 2,
            world_size: 2,
            step: 7,
            total_steps: 24,
            epoch: 1,
            loss: 40.5,
            samples_per_s: 123.4,
            last_checkpoint_step: 4,
            workers: vec![
                v1::WorkerStatus {
                    worker_id: "w1-abc".into(),
                    host: "node-0".into(),
                    pid: 4242,
                    device: "cpu".into(),
                    rank: 0,
                    step: 7,
                    last_seen_ms: 250,
                    state: "training".into(),
                    slot: Some(0),
                },
                v1::WorkerStatus {
                    worker_id: "w2-abc".into(),
                    host: "node-1.cluster".into(),
                    pid: 7,
                    device: "cuda:1".into(),
                    rank: 1,
                    step: 6,
                    last_seen_ms: 3_400,
                    state: "training".into(),
                    slot: Some(1),
                },
                v1::WorkerStatus {
                    worker_id: "w3-abc".into(),
                    host: "node-2".into(),
                    pid: 99,
                    device: "cpu".into(),
                    rank: -1,
                    step: 0,
                    last_seen_ms: 720_000,
                    state: "registered".into(),
                    slot: None,
                },
            ],
            error: String::new(),
        }
    }

    #[test]
    fn the_json_has_stable_names_lowercase_states_and_nulls_for_none_yet() {
        let view = JobView::new("http://127.0.0.1:50051", &running());
        let json: serde_json::Value = serde_json::from_str(&view.to_json().unwrap()).unwrap();
        assert_eq!(
            json,
            json!({
                "job_id": "job-a",
                "run_id": "run-a",
                "coordinator": "http://127.0.0.1:50051",
                "state": "running",
                "generation": 2,
                "world_size": 2,
                "step": 7,
                "total_steps": 24,
                "epoch": 1,
                "loss": 40.5,
                "samples_per_s": 123.4,
                "last_checkpoint_step": 4,
                "error": null,
                "workers": [
                    {"worker_id": "w1-abc", "rank": 0, "slot": 0, "host": "node-0", "pid": 4242,
                     "device": "cpu", "state": "training", "step": 7, "last_seen_ms": 250},
                    {"worker_id": "w2-abc", "rank": 1, "slot": 1, "host": "node-1.cluster", "pid": 7,
                     "device": "cuda:1", "state": "training", "step": 6,
                     "last_seen_ms": 3400},
                    {"worker_id": "w3-abc", "rank": null, "slot": null, "host": "node-2", "pid": 99,
                     "device": "cpu", "state": "registered", "step": 0,
                     "last_seen_ms": 720000},
                ],
            })
        );
        // One object on one line.
        assert!(!view.to_json().unwrap().contains('\n'));

        let waiting = waiting();
        let json = serde_json::to_value(JobView::new("u", &waiting)).unwrap();
        assert_eq!(json["state"], "waiting");
        for absent in [
            "total_steps",
            "loss",
            "samples_per_s",
            "last_checkpoint_step",
            "error",
        ] {
            assert!(json[absent].is_null(), "{absent}: {json}");
        }
        assert_eq!(json["workers"], json!([]));
    }

    #[test]
    fn every_job_state_has_its_lowercase_name() {
        for (proto, name) in [
            (v1::JobState::Waiting as i32, "waiting"),
            (v1::JobState::Running as i32, "running"),
            (v1::JobState::Finished as i32, "finished"),
            (v1::JobState::Failed as i32, "failed"),
            (v1::JobState::Cancelled as i32, "cancelled"),
            (v1::JobState::Unspecified as i32, "unknown"),
            (99, "unknown"),
        ] {
            let state = JobState::from_proto(proto);
            assert_eq!(serde_json::to_value(state).unwrap(), json!(name));
            assert_eq!(state.name(), name);
        }
    }

    #[test]
    fn the_text_is_an_aligned_block_and_a_worker_table() {
        let text = JobView::new("http://127.0.0.1:50051", &running()).to_text();
        assert_eq!(
            text,
            [
                "job:         job-a",
                "run:         run-a",
                "coordinator: http://127.0.0.1:50051",
                "state:       running",
                "generation:  2 (2 ranks)",
                "step:        7/24 (epoch 1)",
                "loss:        40.5000, 123.4 samples/s",
                "checkpoint:  step 4",
                "",
                "rank  slot  worker  host             pid  device  state       step   last seen",
                "   0     0  w1-abc  node-0          4242  cpu     training       7  250 ms ago",
                "   1     1  w2-abc  node-1.cluster     7  cuda:1  training       6   3.4 s ago",
                "   -     -  w3-abc  node-2            99  cpu     registered     0  12 min ago",
            ]
        );
    }

    #[test]
    fn the_text_of_a_job_before_its_workers_and_of_a_failed_one() {
        let waiting = waiting();
        let text = JobView::new("https://coord:443", &waiting).to_text();
        assert_eq!(
            text,
            [
                "job:         j",
                "run:         r",
                "coordinator: https://coord:443",
                "state:       waiting",
                "generation:  none formed yet (4 workers expected)",
                "step:        0 (epoch 0)",
                "checkpoint:  none committed yet",
                "",
                "no worker has registered yet",
            ]
        );

        let mut failed = running();
        failed.state = v1::JobState::Failed as i32;
        failed.error = "worker w2-abc was lost 3 times".into();
        let text = JobView::new("u", &failed).to_text();
        assert!(
            text.contains(&"state:       failed".to_string()),
            "{text:?}"
        );
        assert!(
            text.contains(&"error:       worker w2-abc was lost 3 times".to_string()),
            "{text:?}"
        );
    }

    #[test]
    fn ages_read_naturally() {
        assert_eq!(age(0), "0 ms ago");
        assert_eq!(age(999), "999 ms ago");
        assert_eq!(age(1_000), "1.0 s ago");
        assert_eq!(age(119_949), "119.9 s ago");
        assert_eq!(age(120_000), "2 min ago");
    }

    #[test]
    fn refusals_and_lost_connections_say_what_to_do() {
        let call = |code: Code, message: &str| ClientError::Call {
            url: "http://c:1".into(),
            call: "GetJobStatus",
            status: Box::new(tonic::Status::new(code, message)),
        };
        let refused = explain(
            call(Code::Unauthenticated, "authorization: missing"),
            "no job token given",
        )
        .to_string();
        assert_eq!(
            refused,
            "the coordinator at http://c:1 refused the request (no job token given): \
             authorization: missing. Give this job's token with --token-file PATH or \
             LGAF_JOB_TOKEN"
        );
        // The coordinator's own advice is not repeated.
        let refused = explain(
            call(
                Code::Unauthenticated,
                "authorization: the job token is wrong (--token-file or LGAF_JOB_TOKEN)",
            ),
            "the job token in /t",
        )
        .to_string();
        assert_eq!(
            refused,
            "the coordinator at http://c:1 refused the request (the job token in /t): \
             authorization: the job token is wrong (--token-file or LGAF_JOB_TOKEN)"
        );

        let unreachable = explain(
            ClientError::Connect {
                url: "http://c:1".into(),
                message: "unreachable: tcp connect error: Connection refused".into(),
            },
            "",
        )
        .to_string();
        assert_eq!(
            unreachable,
            "cannot reach the coordinator at http://c:1: tcp connect error: Connection \
             refused. Is lgaf-coordinator running there? Give the URL it printed (\"listening \
             on URL\") with --coordinator or LGAF_COORDINATOR"
        );
        assert!(matches!(
            explain(call(Code::Unavailable, "connection reset"), ""),
            StatusError::Unreachable { .. }
        ));

        // A set-up problem (TLS, a bad URL) is shown as the client words it.
        let tls = explain(
            ClientError::Connect {
                url: "https://c:1".into(),
                message: "an https:// coordinator needs the CA certificate".into(),
            },
            "",
        );
        assert!(matches!(tls, StatusError::Client(_)), "{tls:?}");
        assert!(tls.to_string().contains("https://c:1"), "{tls}");
    }

    /// The client's words for nothing listening are the ones [`explain`] looks for, and it
    /// does not wait for a coordinator to come.
    #[test]
    fn nothing_listening_is_unreachable_at_once() {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let url = format!("http://127.0.0.1:{port}");
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let started = std::time::Instant::now();
        let e = fetch(
            &url,
            None,
            "no job token given",
            &Default::default(),
            Arc::new(rt),
        )
        .unwrap_err();
        assert!(
            started.elapsed() < std::time::Duration::from_secs(5),
            "{:?}",
            started.elapsed()
        );
        assert!(
            matches!(&e, StatusError::Unreachable { url: u, .. } if *u == url),
            "{e:?}"
        );
        assert!(!e.to_string().contains("unreachable"), "{e}");
    }
}
