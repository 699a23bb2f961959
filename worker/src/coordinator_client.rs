//! The worker's gRPC client of the coordinator: connecting (TLS, the job token, waiting
//! for a coordinator that is still starting), sending a call again while the coordinator
//! turns it away for rate, and bounding calls that must not hold the worker up.
//!
//! The trainer is synchronous: each call blocks on the small tokio runtime held here.

use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use lgaf_data::rng::Rng;
use lgaf_proto::auth::{AttachToken, JobToken, TokenError};
use lgaf_proto::tls::{ClientTlsFiles, IdentityFiles};
use lgaf_proto::v1;
use lgaf_proto::v1::coordinator_client::CoordinatorClient;
use lgaf_proto::MAX_MESSAGE_BYTES;
use tokio::runtime::Runtime;
use tonic::service::interceptor::InterceptedService;
use tonic::service::Interceptor;
use tonic::transport::Channel;
use tonic::{Code, Response, Status};
use tracing::warn;

/// How to reach the coordinator, as `lgaf-worker` and `lgaf status` take it on their
/// command lines.
#[derive(clap::Args, Clone, Debug)]
pub struct CoordinatorArgs {
    /// The coordinator's URL (the one `lgaf-coordinator` printed: "listening on URL").
    #[arg(
        long,
        env = "LGAF_COORDINATOR",
        default_value = "http://127.0.0.1:50051"
    )]
    pub coordinator: String,
    /// A file holding the job's token (else $LGAF_JOB_TOKEN, which a spawning coordinator
    /// sets); needed when the coordinator has one.
    #[arg(long, env = "LGAF_TOKEN_FILE", value_name = "PATH")]
    pub token_file: Option<PathBuf>,
    /// The CA certificate (PEM) that signed an https:// coordinator's certificate.
    #[arg(long, env = "LGAF_TLS_CA", value_name = "PATH")]
    pub tls_ca: Option<PathBuf>,
    /// The certificate (PEM, with --tls-key) this worker presents to a coordinator that
    /// requires one (mutual TLS: `lgaf-coordinator --tls-client-ca`).
    #[arg(
        long,
        env = "LGAF_TLS_CLIENT_CERT",
        value_name = "PATH",
        requires = "tls_key"
    )]
    pub tls_cert: Option<PathBuf>,
    /// The private key (PEM) of --tls-cert.
    #[arg(
        long,
        env = "LGAF_TLS_CLIENT_KEY",
        value_name = "PATH",
        requires = "tls_cert"
    )]
    pub tls_key: Option<PathBuf>,
}

impl CoordinatorArgs {
    /// The TLS files: the CA, and the client certificate if one was given.
    pub fn tls(&self) -> ClientTlsFiles {
        ClientTlsFiles {
            ca: self.tls_ca.clone(),
            identity: match (&self.tls_cert, &self.tls_key) {
                (Some(cert), Some(key)) => Some(IdentityFiles {
                    cert: cert.clone(),
                    key: key.clone(),
                }),
                // Clap requires the two together.
                _ => None,
            },
        }
    }

    /// The job token: the one in `--token-file`, else `$LGAF_JOB_TOKEN`, else none.
    pub fn token(&self) -> Result<Option<JobToken>, TokenError> {
        match &self.token_file {
            Some(path) => JobToken::from_file(path).map(Some),
            None => JobToken::from_env(),
        }
    }
}

/// The generated client, with the job token and the trace context on every request.
pub type Stub = CoordinatorClient<InterceptedService<Channel, Outgoing>>;

/// What every request carries: the job token, and the W3C trace context of the span the
/// calling thread is in (nothing when tracing is off), as gRPC clients propagate it.
#[derive(Clone)]
pub struct Outgoing(AttachToken);

impl Interceptor for Outgoing {
    fn call(&mut self, request: tonic::Request<()>) -> Result<tonic::Request<()>, Status> {
        let mut request = self.0.call(request)?;
        lgaf_telemetry::propagation::inject(&tracing::Span::current(), request.metadata_mut());
        Ok(request)
    }
}

/// How long a call is sent again while the coordinator refuses it for rate, before the
/// refusal counts as a failure. Past the default heartbeat deadline (20 s): a coordinator
/// that busy has lost this worker anyway.
const RATE_RETRY_FOR: Duration = Duration::from_secs(60);
/// The first pause after a refusal for rate; each next one doubles, up to the last.
const RATE_BACKOFF_FIRST: Duration = Duration::from_millis(50);
const RATE_BACKOFF_LAST: Duration = Duration::from_secs(2);
/// How long a Register is sent again while the coordinator has no place for the worker:
/// past the default heartbeat deadline (20 s), after which a dead rank's place is free.
pub const PLACE_WAIT: Duration = Duration::from_secs(120);
/// The first and the longest pause between attempts to reach a coordinator that is not
/// listening (yet, or again after a restart).
const CONNECT_BACKOFF_FIRST: Duration = Duration::from_millis(250);
const CONNECT_BACKOFF_LAST: Duration = Duration::from_secs(2);

/// Why the coordinator could not be reached or a call failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// No channel to the coordinator (bad URL, TLS set-up, nothing listening).
    #[error("coordinator {url}: {message}")]
    Connect { url: String, message: String },
    /// The coordinator answered `call` with an error status (or never answered: then the
    /// status's sources say why, e.g. the TLS alert of a refused client certificate).
    #[error(
        "coordinator {url}: {call}: {}{}",
        status_text(status),
        closed_tls_hint(url, status)
    )]
    Call {
        url: String,
        call: &'static str,
        /// Boxed: a `Status` is most of the size of every `Result` this error travels in.
        status: Box<Status>,
    },
}

pub struct Client {
    pub url: String,
    pub rt: Arc<Runtime>,
    pub stub: Stub,
}

impl Client {
    /// Connects to `url`, waiting up to a minute for a coordinator that is not listening
    /// yet; `tls.ca` must be given exactly for an `https://` URL.
    pub fn connect(
        url: &str,
        token: Option<JobToken>,
        tls: &ClientTlsFiles,
        rt: Arc<Runtime>,
    ) -> Result<Self, ClientError> {
        Self::connect_within(url, token, tls, rt, Duration::from_secs(60))
    }

    /// [`Client::connect`] for a one-shot call (`lgaf status`): a coordinator that is not
    /// listening is an error at once, not waited for.
    pub fn connect_once(
        url: &str,
        token: Option<JobToken>,
        tls: &ClientTlsFiles,
        rt: Arc<Runtime>,
    ) -> Result<Self, ClientError> {
        Self::connect_within(url, token, tls, rt, Duration::ZERO)
    }

    /// Connects, retrying for up to `wait` while nothing listens at `url`.
    fn connect_within(
        url: &str,
        token: Option<JobToken>,
        tls: &ClientTlsFiles,
        rt: Arc<Runtime>,
        wait: Duration,
    ) -> Result<Self, ClientError> {
        let fail = |message: String| ClientError::Connect {
            url: url.to_string(),
            message,
        };
        let mut endpoint = tonic::transport::Endpoint::from_shared(url.to_string())
            .map_err(|e| fail(format!("not a URL: {e}")))?
            .connect_timeout(Duration::from_secs(10))
            // A safety net above the longest long poll (30 s by default): a call lost in a
            // network cut fails instead of waiting for TCP to give up (many minutes).
            .timeout(Duration::from_secs(90));
        match (url.starts_with("https://"), &tls.ca) {
            (true, Some(ca)) => {
                let tls = lgaf_proto::tls::client_config(ca, tls.identity.as_ref())
                    .map_err(|e| fail(e.to_string()))?;
                endpoint = endpoint
                    .tls_config(tls)
                    .map_err(|e| fail(format!("TLS: {e}")))?;
            }
            (true, None) => {
                return Err(fail(
                    "an https:// coordinator needs the CA certificate to verify it (--tls-ca \
                     or LGAF_TLS_CA)"
                        .into(),
                ))
            }
            (false, Some(_)) => {
                return Err(fail(
                    "a TLS CA certificate was given but the URL is not https://; use the \
                     https:// URL the coordinator printed"
                        .into(),
                ))
            }
            (false, None) if tls.identity.is_some() => {
                return Err(fail(
                    "a TLS client certificate was given but the URL is not https://; use the \
                     https:// URL the coordinator printed"
                        .into(),
                ))
            }
            (false, None) => {}
        }
        // The coordinator may still be starting: retry for a while.
        // Jittered: N workers of a restarted coordinator do not all come back in the same
        // millisecond.
        let deadline = Instant::now() + wait;
        let mut backoff = Backoff::new(CONNECT_BACKOFF_FIRST, CONNECT_BACKOFF_LAST);
        let channel = loop {
            match rt.block_on(endpoint.connect()) {
                Ok(c) => break c,
                Err(e) if not_listening_yet(&e) && Instant::now() < deadline => {
                    warn!(coordinator = url, error = %error_chain(&e), "coordinator not reachable yet; retrying");
                    std::thread::sleep(backoff.next_pause());
                }
                Err(e) => return Err(fail(format!("unreachable: {}", error_chain(&e)))),
            }
        };
        let stub = CoordinatorClient::with_interceptor(channel, Outgoing(AttachToken(token)))
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES);
        Ok(Self {
            url: url.to_string(),
            rt,
            stub,
        })
    }

    /// Sends `request` through `method` (e.g. `|mut c, r| async move { c.join(r).await }`),
    /// blocking, and names a failure after `call`.
    pub fn call<Req, T, Fut>(
        &self,
        call: &'static str,
        request: Req,
        method: impl Fn(Stub, Req) -> Fut,
    ) -> Result<T, ClientError>
    where
        Req: Clone,
        Fut: Future<Output = Result<Response<T>, Status>>,
    {
        self.rt
            .block_on(self.send(call, request, method))
            .map_err(|status| self.failed(call, status))
    }

    /// Sends `request` through `method`, again after a growing, jittered pause while the
    /// coordinator refuses it for rate (RESOURCE_EXHAUSTED), for up to [`RATE_RETRY_FOR`].
    /// Such a refusal comes from the coordinator's gate before the call is looked at, so
    /// sending it again can never apply it twice. Every other outcome is returned as is.
    pub async fn send<Req, T, Fut>(
        &self,
        call: &'static str,
        request: Req,
        method: impl Fn(Stub, Req) -> Fut,
    ) -> Result<T, Status>
    where
        Req: Clone,
        Fut: Future<Output = Result<Response<T>, Status>>,
    {
        self.send_for_response(call, request, method)
            .await
            .map(Response::into_inner)
    }

    /// [`Client::send`], keeping the reply's metadata (the coordinator's trace context).
    pub async fn send_for_response<Req, T, Fut>(
        &self,
        call: &'static str,
        request: Req,
        method: impl Fn(Stub, Req) -> Fut,
    ) -> Result<Response<T>, Status>
    where
        Req: Clone,
        Fut: Future<Output = Result<Response<T>, Status>>,
    {
        retry(&RATE, call, || method(self.stub.clone(), request.clone())).await
    }

    /// A Register, sent again with a growing, jittered pause while the coordinator has no
    /// place for this worker yet (UNAVAILABLE: every place taken; ALREADY_EXISTS: its slot
    /// held), for up to [`PLACE_WAIT`]. A replacement for a rank that died comes before
    /// the coordinator has found the rank lost (a heartbeat deadline, 20 s by default),
    /// and a pod must not fail for being early.
    pub async fn register(
        &self,
        request: v1::RegisterRequest,
    ) -> Result<Response<v1::RegisterReply>, Status> {
        retry(&PLACE, "Register", || {
            self.send_for_response("Register", request.clone(), |mut c, r| async move {
                c.register(r).await
            })
        })
        .await
    }

    /// The error for `call` having failed with `status`.
    pub fn failed(&self, call: &'static str, status: Status) -> ClientError {
        ClientError::Call {
            url: self.url.clone(),
            call,
            status: Box::new(status),
        }
    }

    /// A second handle on the same channel (for the heartbeat and ack threads).
    pub fn clone_handle(&self) -> Self {
        Self {
            url: self.url.clone(),
            rt: self.rt.clone(),
            stub: self.stub.clone(),
        }
    }
}

/// When a refused call is sent again: on which codes, for how long, after which pauses,
/// and what the log says.
struct RetryPolicy {
    codes: &'static [Code],
    within: Duration,
    first_pause: Duration,
    last_pause: Duration,
    says: &'static str,
}

/// Refused for rate: the coordinator's gate turned it away before looking at it, so sending
/// it again can never apply it twice.
const RATE: RetryPolicy = RetryPolicy {
    codes: &[Code::ResourceExhausted],
    within: RATE_RETRY_FOR,
    first_pause: RATE_BACKOFF_FIRST,
    last_pause: RATE_BACKOFF_LAST,
    says: "the coordinator turned the call away for rate; sending it again",
};

/// A Register with no place for the worker yet (see [`Client::register`]).
const PLACE: RetryPolicy = RetryPolicy {
    codes: &[Code::Unavailable, Code::AlreadyExists],
    within: PLACE_WAIT,
    first_pause: CONNECT_BACKOFF_FIRST,
    last_pause: CONNECT_BACKOFF_LAST,
    says: "the coordinator has no place for this worker yet; registering again",
};

/// `attempt`, made again after a growing, jittered pause while it fails with one of
/// `policy`'s codes, for up to its time; every other outcome is returned as is.
async fn retry<T, Fut>(
    policy: &RetryPolicy,
    call: &'static str,
    mut attempt: impl FnMut() -> Fut,
) -> Result<T, Status>
where
    Fut: Future<Output = Result<T, Status>>,
{
    let started = Instant::now();
    let mut backoff = Backoff::new(policy.first_pause, policy.last_pause);
    loop {
        match attempt().await {
            Err(status)
                if policy.codes.contains(&status.code()) && started.elapsed() < policy.within =>
            {
                let pause = backoff.next_pause();
                warn!(
                    call,
                    pause_ms = pause.as_millis() as u64,
                    error = status.message(),
                    "{}",
                    policy.says
                );
                tokio::time::sleep(pause).await;
            }
            outcome => return outcome,
        }
    }
}

/// Pauses that double from a first to a last length, each scaled by a random factor in
/// [0.5, 1.5): N workers refused (or cut off) together do not all come back in the same
/// millisecond.
struct Backoff {
    next: Duration,
    last: Duration,
    rng: Rng,
}

impl Backoff {
    fn new(first: Duration, last: Duration) -> Self {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        Self {
            next: first,
            last,
            rng: Rng::from_keys(&[u64::from(std::process::id()), u64::from(nanos)]),
        }
    }

    fn next_pause(&mut self) -> Duration {
        let pause = self.next.mul_f32(self.rng.range(0.5, 1.5));
        self.next = (self.next * 2).min(self.last);
        pause
    }
}

/// `call`, failing with DEADLINE_EXCEEDED after `limit`: for calls that must not hold the
/// worker up when the coordinator is unreachable (a report, the last word).
pub async fn bounded<T>(
    what: &str,
    limit: Duration,
    call: impl Future<Output = Result<T, Status>>,
) -> Result<T, Status> {
    tokio::time::timeout(limit, call).await.unwrap_or_else(|_| {
        Err(Status::deadline_exceeded(format!(
            "{what}: no answer within {} s",
            limit.as_secs()
        )))
    })
}

/// Whether a failed connect may just be early (nothing listens yet), as opposed to a
/// refusal worth reporting at once (a certificate that does not verify, say).
fn not_listening_yet(e: &tonic::transport::Error) -> bool {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = source {
        if let Some(io) = err.downcast_ref::<std::io::Error>() {
            use std::io::ErrorKind::*;
            return matches!(
                io.kind(),
                ConnectionRefused | ConnectionReset | TimedOut | AddrNotAvailable | NotFound
            );
        }
        source = err.source();
    }
    false
}

/// A status's message and code, then what caused it when the call never got an answer.
fn status_text(status: &Status) -> String {
    let mut text = format!("{} ({:?})", status.message(), status.code());
    if let Some(source) = std::error::Error::source(status) {
        text.push_str(": ");
        text.push_str(&error_chain(source));
    }
    text
}

/// What a TLS connection closed under a call most often means. Under mutual TLS a refused
/// client certificate looks just so from here: TLS 1.3 sends the refusal after the client's
/// side of the handshake is done, and HTTP/2 sees only a closed connection, not the alert
/// (the coordinator's log names it).
fn closed_tls_hint(url: &str, status: &Status) -> &'static str {
    // Which of the two depends on when the client notices the closed connection.
    let closed = matches!(status.code(), tonic::Code::Unknown | tonic::Code::Cancelled)
        && std::error::Error::source(status).is_some();
    match closed && url.starts_with("https://") {
        true => {
            ". The coordinator closed the connection without answering: if it requires client \
             certificates (lgaf-coordinator --tls-client-ca), present a current one signed by \
             that CA with --tls-cert and --tls-key"
        }
        false => "",
    }
}

/// An error and its sources, "outer: inner: ...".
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(err) = source {
        let next = err.to_string();
        if !text.contains(&next) {
            text.push_str(": ");
            text.push_str(&next);
        }
        source = err.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pauses_grow_to_their_cap_and_are_jittered() {
        let mut backoff = Backoff::new(RATE_BACKOFF_FIRST, RATE_BACKOFF_LAST);
        let pauses: Vec<Duration> = (0..12).map(|_| backoff.next_pause()).collect();
        assert!(pauses[0] >= RATE_BACKOFF_FIRST / 2 && pauses[0] < RATE_BACKOFF_FIRST * 3 / 2);
        for p in &pauses {
            assert!(*p < RATE_BACKOFF_LAST * 3 / 2, "{p:?}");
        }
        // At the cap, pauses still differ: the jitter is there.
        let capped = &pauses[8..];
        assert!(capped.iter().any(|p| *p != capped[0]), "{capped:?}");
    }

    /// RESOURCE_EXHAUSTED is sent again until it passes; other refusals are final at once.
    #[test]
    fn only_rate_refusals_are_sent_again() {
        use std::sync::atomic::{AtomicU32, Ordering};
        let rt = Arc::new(
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap(),
        );
        // A channel that never connects: the methods below never use it.
        let channel = rt.block_on(async {
            tonic::transport::Endpoint::from_static("http://127.0.0.1:9").connect_lazy()
        });
        let client = Client {
            url: "http://127.0.0.1:9".into(),
            rt: rt.clone(),
            stub: CoordinatorClient::with_interceptor(channel, Outgoing(AttachToken(None))),
        };
        let tries = AtomicU32::new(0);
        let answer = client
            .call("Heartbeat", (), |_, ()| {
                let n = tries.fetch_add(1, Ordering::SeqCst);
                async move {
                    if n < 3 {
                        Err(Status::resource_exhausted("rate: slow down"))
                    } else {
                        Ok(Response::new(n))
                    }
                }
            })
            .unwrap();
        assert_eq!(answer, 3);

        tries.store(0, Ordering::SeqCst);
        let refused = client
            .call("Register", (), |_, ()| {
                tries.fetch_add(1, Ordering::SeqCst);
                async { Err::<Response<()>, _>(Status::unauthenticated("no token")) }
            })
            .unwrap_err();
        assert_eq!(tries.load(Ordering::SeqCst), 1);
        let text = refused.to_string();
        assert!(
            text.contains("Register") && text.contains("no token"),
            "{text}"
        );
    }
}
