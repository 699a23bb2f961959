//! The heartbeat thread of a generation: tells the coordinator every interval that this
//! rank lives (and its last completed step), and watches the coordinator in turn. It asks
//! the training loop to stop when the coordinator ends the generation or the job, or when
//! no heartbeat has been answered for the deadline (the coordinator is gone), and aborts
//! the collective group so that a rank blocked on a dead peer returns.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use lgaf_proto::v1::{self, WorkerAction};
use lgaf_proto::API_VERSION;
use tracing::warn;

use crate::coordinator_client::Client;

/// A generation's heartbeat thread (see the module header), sending every `interval` and
/// giving up after `deadline` without an answer. Dropping it stops the thread.
pub(super) struct Heartbeat {
    stop: Arc<AtomicBool>,
    /// The last completed step, written by the training loop, sent with each heartbeat.
    step: Arc<AtomicU64>,
    reason: Arc<Mutex<Option<Stopped>>>,
    /// Unblocks a collective waiting on a peer once the generation is over.
    abort: AbortHook,
    thread: Option<JoinHandle<()>>,
}

impl Heartbeat {
    /// `answered` is told each answered heartbeat's round trip (the latency metric).
    pub(super) fn start(
        client: Client,
        worker_id: String,
        generation: u64,
        (interval, deadline): (Duration, Duration),
        answered: impl Fn(Duration) + Send + 'static,
    ) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let step = Arc::new(AtomicU64::new(0));
        let reason = Arc::new(Mutex::new(None));
        let abort = AbortHook::default();
        let thread = {
            let (stop, reason, abort) = (stop.clone(), reason.clone(), abort.clone());
            let beat_step = step.clone();
            std::thread::spawn(move || {
                let give_up = |why: Stopped| {
                    warn!("{why}");
                    *reason.lock().expect("heartbeat reason") = Some(why);
                    if let Some(abort) = abort.lock().expect("abort hook").as_ref() {
                        abort();
                    }
                };
                let cadence = Cadence { interval, deadline };
                let watch = Watch {
                    stop: &stop,
                    give_up,
                    answered,
                };
                beat(client, worker_id, generation, cadence, &beat_step, watch)
            })
        };
        Self {
            stop,
            step,
            reason,
            abort,
            thread: Some(thread),
        }
    }

    /// Records `step` as the last completed one, for the next heartbeat.
    pub(super) fn record_step(&self, step: u64) {
        self.step.store(step, Ordering::SeqCst);
    }

    /// Once the generation is over, `abort` is called (once the group exists).
    pub(super) fn on_stop(&self, abort: Box<dyn Fn() + Send>) {
        let mut hook = self.abort.lock().expect("abort hook");
        // The generation may have ended while the group was forming.
        if self.stopped().is_some() {
            abort();
        }
        *hook = Some(abort);
    }

    /// Why the training loop must stop, once it must.
    pub(super) fn stopped(&self) -> Option<Stopped> {
        self.reason.lock().expect("heartbeat reason").clone()
    }
}

impl Drop for Heartbeat {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

type AbortHook = Arc<Mutex<Option<Box<dyn Fn() + Send>>>>;

/// Why the heartbeat asks the training loop to stop.
#[derive(Clone, Debug)]
pub(super) enum Stopped {
    /// The generation ended: join the next one.
    Rejoin(String),
    /// The coordinator says the job is over (finished, failed or cancelled), and how it
    /// ended (`Unspecified` from an older coordinator): exit.
    JobOver {
        why: String,
        state: v1::JobState,
        error: String,
    },
    /// The coordinator has not answered for the heartbeat deadline: exit.
    CoordinatorGone(String),
}

impl std::fmt::Display for Stopped {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Stopped::Rejoin(why) | Stopped::JobOver { why, .. } | Stopped::CoordinatorGone(why) => {
                f.write_str(why)
            }
        }
    }
}

/// How often the heartbeat is sent, and how long without an answer means the coordinator
/// is gone.
struct Cadence {
    interval: Duration,
    deadline: Duration,
}

/// What the heartbeat loop reports to: the stop flag it obeys, where it says why it gives
/// up, and where it tells each answer's round trip.
struct Watch<'a, G, A> {
    stop: &'a AtomicBool,
    give_up: G,
    answered: A,
}

/// The heartbeat thread's loop, until `stop` or until it gives up (and says why).
fn beat(
    client: Client,
    worker_id: String,
    generation: u64,
    Cadence { interval, deadline }: Cadence,
    step: &AtomicU64,
    Watch {
        stop,
        give_up,
        answered,
    }: Watch<'_, impl Fn(Stopped), impl Fn(Duration)>,
) {
    let mut last_answer = Instant::now();
    while !stop.load(Ordering::SeqCst) {
        let request = v1::HeartbeatRequest {
            api_version: API_VERSION,
            worker_id: worker_id.clone(),
            generation,
            step: step.load(Ordering::SeqCst),
        };
        let send = client.send("Heartbeat", request, |mut c, r| async move {
            c.heartbeat(r).await
        });
        // Bounded, so that an unreachable coordinator (no RST, just silence) is noticed.
        let sent = Instant::now();
        let reply = client
            .rt
            .block_on(async { tokio::time::timeout(interval.max(deadline / 4), send).await });
        match reply {
            Ok(Ok(reply)) => {
                last_answer = Instant::now();
                answered(sent.elapsed());
                match reply.action() {
                    WorkerAction::Continue => {}
                    WorkerAction::Rejoin => {
                        give_up(Stopped::Rejoin(format!(
                            "the coordinator ended generation {generation} (a peer was lost)"
                        )));
                        return;
                    }
                    action => {
                        give_up(Stopped::JobOver {
                            why: format!("the coordinator ended the job ({action:?})"),
                            state: reply.job_state(),
                            error: reply.job_error.clone(),
                        });
                        return;
                    }
                }
            }
            Ok(Err(status)) if status.code() == tonic::Code::Aborted => {
                give_up(Stopped::Rejoin(format!("heartbeat: {}", status.message())));
                return;
            }
            Ok(Err(status)) => warn!(error = %status.message(), "heartbeat failed"),
            Err(_) => warn!("heartbeat: no answer from the coordinator"),
        }
        if last_answer.elapsed() > deadline {
            give_up(Stopped::CoordinatorGone(format!(
                "the coordinator at {} has not answered a heartbeat for {} ms (deadline {} ms): \
                 it is gone or unreachable; stopping",
                client.url,
                last_answer.elapsed().as_millis(),
                deadline.as_millis()
            )));
            return;
        }
        // Sleep in small slices so a finished run does not wait a whole interval.
        let until = Instant::now() + interval;
        while Instant::now() < until && !stop.load(Ordering::SeqCst) {
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}
