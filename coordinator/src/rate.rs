//! Request rates per client: a token bucket for each (address, kind of caller), so that a
//! confused or hostile client cannot keep the job's lock busy or starve the workers.
//!
//! The job token is checked first, and a caller that presents it is counted apart from
//! one that does not: a flood of unauthenticated requests from the workers' own address
//! (any local process, anything behind the same NAT) drains only the strangers' bucket of
//! that address and never delays a job member. Over the limit a call gets
//! RESOURCE_EXHAUSTED and changes nothing; workers back off and retry it.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Instant;

use lgaf_proto::auth::RequireToken;
use tonic::service::Interceptor;
use tonic::{Request, Status};

/// Buckets kept at most; past this, buckets full again (idle long enough) are dropped.
const MAX_BUCKETS: usize = 4096;

/// Who a request comes from, as far as the gate can tell.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Caller {
    /// Presented the job's token (or the job has none): a worker or an operator.
    Member,
    /// Presented no token or a wrong one: refused anyway, and counted apart.
    Stranger,
}

#[derive(Clone, Debug)]
pub struct PeerRateLimit {
    per_sec: f64,
    burst: f64,
    buckets: Arc<Mutex<HashMap<(IpAddr, Caller), Bucket>>>,
}

#[derive(Clone, Copy, Debug)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

impl PeerRateLimit {
    /// `per_sec` requests a second from each address and kind of caller, in bursts of up
    /// to twice that.
    pub fn new(per_sec: u32) -> Self {
        let per_sec = f64::from(per_sec.max(1));
        Self {
            per_sec,
            burst: 2.0 * per_sec,
            buckets: Arc::default(),
        }
    }

    /// Takes one request's token from the bucket of `caller` at `peer`, or says why not.
    pub fn admit(&self, peer: IpAddr, caller: Caller, now: Instant) -> Result<(), Status> {
        let mut buckets = self.buckets.lock().unwrap_or_else(PoisonError::into_inner);
        let key = (peer, caller);
        if buckets.len() >= MAX_BUCKETS && !buckets.contains_key(&key) {
            let (per_sec, burst) = (self.per_sec, self.burst);
            buckets.retain(|_, b| b.refilled(now, per_sec, burst) < burst);
        }
        let bucket = buckets.entry(key).or_insert(Bucket {
            tokens: self.burst,
            at: now,
        });
        bucket.tokens = bucket.refilled(now, self.per_sec, self.burst);
        bucket.at = now;
        if bucket.tokens < 1.0 {
            let who = match caller {
                Caller::Member => "",
                Caller::Stranger => " without the job token",
            };
            return Err(Status::resource_exhausted(format!(
                "rate: {peer} sent more than {} requests a second{who}; slow down",
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

/// The coordinator's interceptor: the job token first, then the rate of that kind of
/// caller at the peer's address.
#[derive(Clone, Debug)]
pub struct Gate {
    pub rate: Option<PeerRateLimit>,
    pub token: RequireToken,
}

impl Gate {
    /// Whether a request from `peer` whose token check came out as `token` may pass.
    pub fn admit(
        &self,
        peer: Option<IpAddr>,
        token: Result<(), Status>,
        now: Instant,
    ) -> Result<(), Status> {
        let caller = match token {
            Ok(()) => Caller::Member,
            Err(_) => Caller::Stranger,
        };
        if let (Some(rate), Some(peer)) = (&self.rate, peer) {
            rate.admit(peer, caller, now)?;
        }
        token
    }
}

impl Interceptor for Gate {
    fn call(&mut self, request: Request<()>) -> Result<Request<()>, Status> {
        let token = self.token.check(&request);
        let peer = request.remote_addr().map(|a| a.ip());
        self.admit(peer, token, Instant::now()).map(|()| request)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use lgaf_proto::auth::JobToken;
    use std::time::Duration;

    #[test]
    fn a_peer_gets_its_burst_then_its_rate() {
        let limit = PeerRateLimit::new(10);
        let (a, b): (IpAddr, IpAddr) = ("10.0.0.1".parse().unwrap(), "10.0.0.2".parse().unwrap());
        let t0 = Instant::now();
        for _ in 0..20 {
            limit.admit(a, Caller::Member, t0).unwrap();
        }
        let refused = limit.admit(a, Caller::Member, t0).unwrap_err();
        assert_eq!(refused.code(), tonic::Code::ResourceExhausted);
        assert!(
            refused.message().contains("10.0.0.1"),
            "{}",
            refused.message()
        );
        // Another peer is not affected; a tenth of a second later one more is allowed.
        limit.admit(b, Caller::Member, t0).unwrap();
        limit
            .admit(a, Caller::Member, t0 + Duration::from_millis(100))
            .unwrap();
        assert!(limit
            .admit(a, Caller::Member, t0 + Duration::from_millis(100))
            .is_err());
    }

    /// The defect this guards against: strangers flooding from the workers' address used to
    /// empty the one bucket of that address, and the workers' own calls were refused.
    #[test]
    fn strangers_at_a_members_address_never_use_up_its_rate() {
        let gate = Gate {
            rate: Some(PeerRateLimit::new(10)),
            token: RequireToken(Some(JobToken::new("job-token").unwrap())),
        };
        let peer = Some("127.0.0.1".parse().unwrap());
        let t0 = Instant::now();
        let stranger = || Err(Status::unauthenticated("authorization: missing"));
        let mut codes = Vec::new();
        for _ in 0..1000 {
            codes.push(gate.admit(peer, stranger(), t0).unwrap_err().code());
        }
        // Refused for the token while the strangers' burst lasts, then for their rate.
        assert_eq!(codes[0], tonic::Code::Unauthenticated);
        assert_eq!(codes[999], tonic::Code::ResourceExhausted);
        // A member at the same address still has its whole burst.
        for _ in 0..20 {
            gate.admit(peer, Ok(()), t0).unwrap();
        }
        let refused = gate.admit(peer, Ok(()), t0).unwrap_err();
        assert_eq!(refused.code(), tonic::Code::ResourceExhausted);
        assert!(!refused.message().contains("without the job token"));
    }

    #[test]
    fn with_no_rate_only_the_token_decides() {
        let gate = Gate {
            rate: None,
            token: RequireToken(None),
        };
        let peer = Some("127.0.0.1".parse().unwrap());
        gate.admit(peer, Ok(()), Instant::now()).unwrap();
        let refused = gate
            .admit(peer, Err(Status::unauthenticated("no")), Instant::now())
            .unwrap_err();
        assert_eq!(refused.code(), tonic::Code::Unauthenticated);
    }
}
