//! Request rates per peer: a token bucket for each client address, checked before anything
//! else (the job token included), so that a confused or hostile client cannot keep the job's
//! lock busy or starve the workers. Over the limit a call gets RESOURCE_EXHAUSTED and
//! changes nothing.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Instant;

use lgaf_proto::auth::RequireToken;
use tonic::service::Interceptor;
use tonic::{Request, Status};

/// Buckets kept at most; past this, buckets full again (idle long enough) are dropped.
const MAX_PEERS: usize = 4096;

#[derive(Clone, Debug)]
pub struct PeerRateLimit {
    per_sec: f64,
    burst: f64,
    buckets: Arc<Mutex<HashMap<IpAddr, Bucket>>>,
}

#[derive(Clone, Copy, Debug)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

impl PeerRateLimit {
    /// `per_sec` requests a second from each address, in bursts of up to twice that.
    pub fn new(per_sec: u32) -> Self {
        let per_sec = f64::from(per_sec.max(1));
        Self {
            per_sec,
            burst: 2.0 * per_sec,
            buckets: Arc::default(),
        }
    }

    /// Takes one request's token from `peer`'s bucket, or says why not.
    pub fn admit(&self, peer: IpAddr, now: Instant) -> Result<(), Status> {
        let mut buckets = self.buckets.lock().unwrap_or_else(PoisonError::into_inner);
        if buckets.len() >= MAX_PEERS && !buckets.contains_key(&peer) {
            let (per_sec, burst) = (self.per_sec, self.burst);
            buckets.retain(|_, b| b.refilled(now, per_sec, burst) < burst);
        }
        let bucket = buckets.entry(peer).or_insert(Bucket {
            tokens: self.burst,
            at: now,
        });
        bucket.tokens = bucket.refilled(now, self.per_sec, self.burst);
        bucket.at = now;
        if bucket.tokens < 1.0 {
            return Err(Status::resource_exhausted(format!(
                "rate: {peer} sent more than {} requests a second; slow down",
                self.per_sec
            )));
        }
        bucket.tokens -= 1.0;
        Ok(())
    }
}

impl Bucket {
    fn refilled(&self, now: Instant, per_sec: f64, burst: f64) -> f64 {
        let elapsed = now.saturating_duration_since(self.at).as_secs_f64();
        (self.tokens + elapsed * per_sec).min(burst)
    }
}

/// The coordinator's interceptor: the peer's rate first, then the job token.
#[derive(Clone, Debug)]
pub struct Gate {
    pub rate: Option<PeerRateLimit>,
    pub token: RequireToken,
}

impl Interceptor for Gate {
    fn call(&mut self, request: Request<()>) -> Result<Request<()>, Status> {
        if let (Some(rate), Some(peer)) = (&self.rate, request.remote_addr()) {
            rate.admit(peer.ip(), Instant::now())?;
        }
        self.token.call(request)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn a_peer_gets_its_burst_then_its_rate() {
        let limit = PeerRateLimit::new(10);
        let (a, b): (IpAddr, IpAddr) = ("10.0.0.1".parse().unwrap(), "10.0.0.2".parse().unwrap());
        let t0 = Instant::now();
        for _ in 0..20 {
            limit.admit(a, t0).unwrap();
        }
        let refused = limit.admit(a, t0).unwrap_err();
        assert_eq!(refused.code(), tonic::Code::ResourceExhausted);
        assert!(
            refused.message().contains("10.0.0.1"),
            "{}",
            refused.message()
        );
        // Another peer is not affected; a tenth of a second later one more is allowed.
        limit.admit(b, t0).unwrap();
        limit.admit(a, t0 + Duration::from_millis(100)).unwrap();
        assert!(limit.admit(a, t0 + Duration::from_millis(100)).is_err());
    }
}
