//! What the simulated workers measure while they talk to the coordinator: the round trip of
//! every answered call, by RPC, and every refusal by gRPC code (with the first one's time
//! and message, to tell what broke first). One recorder is shared by all the workers of a
//! scenario behind one mutex: a few thousand calls a second never make it the bottleneck.

use std::collections::BTreeMap;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use tonic::{Code, Status};

/// Round trips and refusals of every RPC of one scenario.
pub struct Recorder {
    /// When the scenario started: refusals are timed from it.
    started: Instant,
    calls: Mutex<BTreeMap<&'static str, RpcRecord>>,
}

/// One RPC's answered round trips and its refusals.
#[derive(Clone, Debug, Default)]
pub struct RpcRecord {
    /// Microseconds, of the calls that succeeded.
    pub round_trips_us: Vec<u64>,
    /// When each answered call was sent (since the scenario started), beside its round
    /// trip: to see when the slow ones happen.
    pub sent_at: Vec<Duration>,
    /// Refusals by gRPC code name ("DeadlineExceeded", ...).
    pub refusals: BTreeMap<String, u64>,
    /// The first refusal: when (since the scenario started), its code and message.
    pub first_refusal: Option<Refusal>,
}

#[derive(Clone, Debug)]
pub struct Refusal {
    pub at: Duration,
    pub code: Code,
    pub message: String,
}

impl Recorder {
    pub fn new(started: Instant) -> Self {
        Recorder {
            started,
            calls: Mutex::new(BTreeMap::new()),
        }
    }

    /// Records one call of `rpc` sent at `sent` that ended now with `outcome`.
    pub fn record(&self, rpc: &'static str, sent: Instant, outcome: Result<(), &Status>) {
        let now = Instant::now();
        let mut calls = self.calls.lock().unwrap_or_else(PoisonError::into_inner);
        let record = calls.entry(rpc).or_default();
        match outcome {
            Ok(()) => {
                record
                    .round_trips_us
                    .push(now.duration_since(sent).as_micros() as u64);
                record
                    .sent_at
                    .push(sent.saturating_duration_since(self.started));
            }
            Err(status) => {
                *record
                    .refusals
                    .entry(format!("{:?}", status.code()))
                    .or_default() += 1;
                if record.first_refusal.is_none() {
                    record.first_refusal = Some(Refusal {
                        at: now.duration_since(self.started),
                        code: status.code(),
                        // Long refusals (a list of every worker id) would swamp the table.
                        message: status.message().chars().take(160).collect(),
                    });
                }
            }
        }
    }

    /// Everything recorded so far, by RPC.
    pub fn snapshot(&self) -> BTreeMap<&'static str, RpcRecord> {
        self.calls
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

impl RpcRecord {
    /// Per second of the scenario: (second, calls answered, their p99 in ms).
    pub fn timeline(&self) -> Vec<(u64, usize, f64)> {
        let mut by_second: BTreeMap<u64, Vec<u64>> = BTreeMap::new();
        for (at, us) in self.sent_at.iter().zip(&self.round_trips_us) {
            by_second.entry(at.as_secs()).or_default().push(*us);
        }
        by_second
            .into_iter()
            .map(|(second, mut us)| {
                us.sort_unstable();
                let p99 = quantile(&us, 0.99).unwrap_or(0) as f64 / 1000.0;
                (second, us.len(), p99)
            })
            .collect()
    }

    /// The `q` quantile (0..=1) of the answered round trips, in milliseconds; None when
    /// nothing was answered.
    pub fn quantile_ms(&self, q: f64) -> Option<f64> {
        let mut sorted = self.round_trips_us.clone();
        sorted.sort_unstable();
        quantile(&sorted, q).map(|us| us as f64 / 1000.0)
    }
}

/// The `q` quantile of `sorted` (nearest rank).
pub fn quantile<T: Copy>(sorted: &[T], q: f64) -> Option<T> {
    if sorted.is_empty() {
        return None;
    }
    let rank = (q * sorted.len() as f64).ceil() as usize;
    Some(sorted[rank.clamp(1, sorted.len()) - 1])
}

/// The earliest refusal of any RPC except those `expected` (e.g. Join's DEADLINE_EXCEEDED
/// while a generation forms slowly is the protocol, not a failure), with its RPC.
pub fn first_failure<'a>(
    calls: &'a BTreeMap<&'static str, RpcRecord>,
    expected: &[(&str, Code)],
) -> Option<(&'static str, &'a Refusal)> {
    calls
        .iter()
        .filter_map(|(rpc, r)| r.first_refusal.as_ref().map(|f| (*rpc, f)))
        .filter(|(rpc, f)| !expected.contains(&(*rpc, f.code)))
        .min_by_key(|(_, f)| f.at)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_quantiles() {
        let v: Vec<u64> = (1..=100).collect();
        assert_eq!(quantile(&v, 0.5), Some(50));
        assert_eq!(quantile(&v, 0.99), Some(99));
        assert_eq!(quantile(&v, 1.0), Some(100));
        assert_eq!(quantile(&v, 0.0), Some(1));
        assert_eq!(quantile::<u64>(&[], 0.5), None);
    }
}
