//! This process as the holder of its run's coordinator lease (`runs/<run>/LEASE.json`, see
//! [`lgaf_store::lease`]): who it is, taking the lease at start, which may mean waiting to
//! see whether the coordinator holding it is still alive, and renewing it while it runs
//! ([`Tenure`]), which says whether it still holds it. The time and that wait come through
//! a [`Clock`], so that tests take and renew leases without waiting for real.

use std::future::Future;
use std::time::Duration;

use lgaf_store::{Lease, LeaseAttempt, RunStore, StoreError};
use sha2::{Digest, Sha256};
use tracing::info;

/// The wall clock, and a way to let time pass.
pub trait Clock {
    /// Milliseconds since the Unix epoch.
    fn now_ms(&self) -> u64;

    /// Returns once `how_long` has passed.
    fn sleep(&self, how_long: Duration) -> impl Future<Output = ()> + Send;
}

/// The system's clock and tokio's timer.
#[derive(Clone, Copy, Debug, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_ms(&self) -> u64 {
        crate::service::now_ms()
    }

    fn sleep(&self, how_long: Duration) -> impl Future<Output = ()> + Send {
        tokio::time::sleep(how_long)
    }
}

/// This coordinator process as a lease holder.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LeaseHolder {
    /// The instance id: tells this process's leases and worker ids from an earlier
    /// coordinator's.
    pub id: String,
    pub host: String,
    pub pid: u32,
    /// How long a lease lasts unless renewed.
    pub term: Duration,
}

impl LeaseHolder {
    /// This process, with a fresh instance id.
    pub fn this_process(term: Duration) -> Self {
        LeaseHolder {
            id: instance_id(),
            host: lgaf_proto::this_host_name(),
            pid: std::process::id(),
            term,
        }
    }

    /// The lease as written at `now_ms`: it lasts `term` from then.
    pub fn lease_at(&self, now_ms: u64) -> Lease {
        Lease {
            holder: self.id.clone(),
            host: self.host.clone(),
            pid: self.pid,
            expires_at_ms: now_ms.saturating_add(self.term.as_millis() as u64),
        }
    }
}

/// 8 hex digits mixed from the time and the pid: distinct for every coordinator process.
pub fn instance_id() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let mixed = Sha256::digest(format!("{nanos}-{}", std::process::id()).as_bytes());
    mixed.iter().take(4).map(|b| format!("{b:02x}")).collect()
}

/// Whether the holder of `held` is known to be gone: a process on this host (`here`) that
/// does not exist. A holder on another host may be alive; only its lease lapsing tells.
pub fn holder_is_gone(held: &Lease, here: &str) -> bool {
    held.host == here
        && nix::sys::signal::kill(nix::unistd::Pid::from_raw(held.pid as i32), None)
            == Err(nix::errno::Errno::ESRCH)
}

/// Takes the run's coordinator lease for `me`, so that only one coordinator acts for a run,
/// and returns the lease as written. A lease whose holder is `gone` is taken at once; one
/// that lapses without being renewed (its coordinator died elsewhere) is taken when it
/// lapses; one that is being renewed means another coordinator is running:
/// [`StoreError::LeaseHeld`], naming it.
pub async fn acquire_lease(
    run: &RunStore,
    me: &LeaseHolder,
    clock: &impl Clock,
    gone: impl Fn(&Lease) -> bool,
) -> Result<Lease, StoreError> {
    // The expiry of the other holder's lease when we last looked.
    let mut seen: Option<u64> = None;
    loop {
        let now = clock.now_ms();
        let mine = me.lease_at(now);
        match run.try_acquire_lease(&mine, now, &gone).await? {
            LeaseAttempt::Acquired => return Ok(mine),
            LeaseAttempt::HeldBy(held) => {
                if seen.is_some_and(|expiry| held.expires_at_ms > expiry) {
                    return Err(run.lease_held(held));
                }
                if seen.is_none() {
                    info!(
                        "run {} has the lease of coordinator {} on {} (pid {}); waiting to see \
                         whether it is still alive",
                        run.run_id(),
                        held.holder,
                        held.host,
                        held.pid
                    );
                }
                seen = Some(held.expires_at_ms);
                // Until it lapses, looking often enough to see a renewal.
                let wait = held.expires_at_ms.saturating_sub(now).clamp(100, 2_000);
                clock.sleep(Duration::from_millis(wait)).await;
            }
        }
    }
}

/// What one renewal of this process's lease came to.
#[derive(Debug)]
pub enum Renewal {
    /// Renewed for another term.
    Renewed,
    /// Not renewed (the store failed or did not answer), but the last renewal still holds:
    /// renewals come three times a term so that one failure does not lose the lease.
    Failed(RenewalError),
    /// Not renewed, and the last renewal has run out: another coordinator may take the run
    /// at any moment, until a renewal succeeds again.
    Lapsed(RenewalError),
    /// Another coordinator holds it ([`StoreError::LeaseHeld`]), or it is gone
    /// ([`StoreError::LeaseLost`]): this one must stop acting for the run.
    Lost(StoreError),
}

impl Renewal {
    /// Whether this process still holds the lease.
    pub fn holds(&self) -> bool {
        matches!(self, Renewal::Renewed | Renewal::Failed(_))
    }
}

/// Why a renewal did not renew the lease (and did not find it lost).
#[derive(Debug, thiserror::Error)]
pub enum RenewalError {
    #[error(transparent)]
    Store(StoreError),
    /// The store took longer than the renewal may: its retries of an outage can take
    /// minutes, and the next renewal is due before then.
    #[error(
        "the store did not answer within {} ms (a renewal waits at most until the next \
         is due); the next renewal tries again",
        .0.as_millis()
    )]
    NoAnswer(Duration),
}

/// This process's hold on its lease while it runs: until when the last lease it wrote
/// lasts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Tenure {
    until_ms: u64,
}

impl Tenure {
    /// From the lease [`acquire_lease`] wrote.
    pub fn new(acquired: &Lease) -> Self {
        Tenure {
            until_ms: acquired.expires_at_ms,
        }
    }

    /// Renews the lease of `me` for another term from now, waiting at most `limit` for
    /// the store, and says whether it still holds.
    ///
    /// A renewal cut off at `limit` may still have reached the store; the next one then
    /// finds its own lease, which counts as renewed.
    pub async fn renew(
        &mut self,
        run: &RunStore,
        me: &LeaseHolder,
        clock: &impl Clock,
        limit: Duration,
    ) -> Renewal {
        let lease = me.lease_at(clock.now_ms());
        let failure = match tokio::time::timeout(limit, run.renew_lease(&lease)).await {
            Ok(Ok(())) => {
                self.until_ms = lease.expires_at_ms;
                return Renewal::Renewed;
            }
            Ok(Err(e @ (StoreError::LeaseHeld { .. } | StoreError::LeaseLost { .. }))) => {
                return Renewal::Lost(e)
            }
            Ok(Err(e)) => RenewalError::Store(e),
            Err(_) => RenewalError::NoAnswer(limit),
        };
        // Judged after the failed call, which may have taken a while.
        if clock.now_ms() >= self.until_ms {
            Renewal::Lapsed(failure)
        } else {
            Renewal::Failed(failure)
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

    use lgaf_store::Store;

    use super::*;

    const START_MS: u64 = 1_700_000_000_000;
    /// What a renewal may take in these tests (a local folder answers in milliseconds).
    const LIMIT: Duration = Duration::from_secs(30);

    /// Time that passes only when slept through; while it passes, `renewer` (another
    /// coordinator) renews its lease, as a live one does.
    struct FakeClock {
        now: AtomicU64,
        sleeps: AtomicU32,
        renewer: Option<(RunStore, LeaseHolder)>,
    }

    impl FakeClock {
        fn new(renewer: Option<(RunStore, LeaseHolder)>) -> Self {
            FakeClock {
                now: AtomicU64::new(START_MS),
                sleeps: AtomicU32::new(0),
                renewer,
            }
        }

        fn sleeps(&self) -> u32 {
            self.sleeps.load(Ordering::SeqCst)
        }
    }

    impl Clock for FakeClock {
        fn now_ms(&self) -> u64 {
            self.now.load(Ordering::SeqCst)
        }

        async fn sleep(&self, how_long: Duration) {
            self.sleeps.fetch_add(1, Ordering::SeqCst);
            let ms = how_long.as_millis() as u64;
            let now = self.now.fetch_add(ms, Ordering::SeqCst) + ms;
            if let Some((run, other)) = &self.renewer {
                run.renew_lease(&other.lease_at(now)).await.unwrap();
            }
        }
    }

    fn run_store(dir: &tempfile::TempDir) -> RunStore {
        let url = format!("file://{}", dir.path().display());
        RunStore::new(Store::from_url(&url).unwrap(), "r1").unwrap()
    }

    fn holder(id: &str, pid: u32) -> LeaseHolder {
        LeaseHolder {
            id: id.into(),
            host: lgaf_proto::this_host_name(),
            pid,
            term: Duration::from_secs(2),
        }
    }

    /// Writes `lease` as another coordinator's, held from now on.
    async fn plant(run: &RunStore, lease: &Lease) {
        let attempt = run.try_acquire_lease(lease, 0, never_gone).await.unwrap();
        assert_eq!(attempt, LeaseAttempt::Acquired);
    }

    fn never_gone(_: &Lease) -> bool {
        false
    }

    /// Whom the lease of `run` names: a third holder's attempt finds it (or takes it, when
    /// nobody holds it).
    async fn lease_holder(run: &RunStore) -> Option<String> {
        let probe = holder("probe", 1).lease_at(START_MS);
        match run
            .try_acquire_lease(&probe, START_MS, never_gone)
            .await
            .unwrap()
        {
            LeaseAttempt::HeldBy(held) => Some(held.holder),
            LeaseAttempt::Acquired => None,
        }
    }

    /// The pid of a process that has exited (and been reaped).
    fn dead_pid() -> u32 {
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let pid = child.id();
        child.wait().unwrap();
        pid
    }

    #[test]
    fn holders_are_this_process() {
        let id = instance_id();
        assert_eq!(id.len(), 8);
        assert!(id.bytes().all(|b| b.is_ascii_hexdigit()), "{id}");
        let me = LeaseHolder::this_process(Duration::from_secs(30));
        assert_eq!(
            (me.pid, me.host.as_str()),
            (std::process::id(), lgaf_proto::this_host_name().as_str())
        );
        assert!(!me.host.is_empty());
        let lease = me.lease_at(START_MS);
        assert_eq!(lease.holder, me.id);
        assert_eq!(lease.expires_at_ms, START_MS + 30_000);
        assert_eq!(me.lease_at(u64::MAX).expires_at_ms, u64::MAX);
    }

    #[test]
    fn only_a_dead_process_on_this_host_is_gone() {
        let here = lgaf_proto::this_host_name();
        let lease = |host: &str, pid| Lease {
            holder: "h".into(),
            host: host.into(),
            pid,
            expires_at_ms: u64::MAX,
        };
        assert!(holder_is_gone(&lease(&here, dead_pid()), &here));
        assert!(!holder_is_gone(&lease(&here, std::process::id()), &here));
        assert!(!holder_is_gone(&lease("elsewhere", dead_pid()), &here));
    }

    #[tokio::test]
    async fn an_empty_run_is_acquired_at_once() {
        let dir = tempfile::tempdir().unwrap();
        let run = run_store(&dir);
        let clock = FakeClock::new(None);
        let me = holder("me", std::process::id());
        acquire_lease(&run, &me, &clock, never_gone).await.unwrap();
        assert_eq!(clock.sleeps(), 0);
        assert_eq!(lease_holder(&run).await.as_deref(), Some("me"));
        // Taking it again (a retry of our own) is no conflict.
        acquire_lease(&run, &me, &clock, never_gone).await.unwrap();
    }

    #[tokio::test]
    async fn the_lease_of_a_dead_local_process_is_taken_at_once() {
        let dir = tempfile::tempdir().unwrap();
        let run = run_store(&dir);
        let dead = LeaseHolder {
            term: Duration::from_secs(3600),
            ..holder("dead", dead_pid())
        };
        plant(&run, &dead.lease_at(START_MS)).await;
        let clock = FakeClock::new(None);
        let here = lgaf_proto::this_host_name();
        let me = holder("me", std::process::id());
        acquire_lease(&run, &me, &clock, |held| holder_is_gone(held, &here))
            .await
            .unwrap();
        assert_eq!(clock.sleeps(), 0);
        assert_eq!(lease_holder(&run).await.as_deref(), Some("me"));
    }

    #[tokio::test]
    async fn a_lease_being_renewed_is_an_error_naming_its_holder() {
        let dir = tempfile::tempdir().unwrap();
        let run = run_store(&dir);
        let other = LeaseHolder {
            host: "node-7".into(),
            ..holder("other-coordinator", 4242)
        };
        plant(&run, &other.lease_at(START_MS)).await;
        let clock = FakeClock::new(Some((run.clone(), other)));
        let e = acquire_lease(&run, &holder("me", std::process::id()), &clock, never_gone)
            .await
            .unwrap_err();
        assert!(matches!(e, StoreError::LeaseHeld { .. }), "{e:?}");
        let text = e.to_string();
        assert!(
            text.contains("run r1 in") && text.contains("other-coordinator on node-7 (pid 4242)"),
            "{text}"
        );
        assert_eq!(clock.sleeps(), 1);
        assert_eq!(
            lease_holder(&run).await.as_deref(),
            Some("other-coordinator")
        );
    }

    #[tokio::test]
    async fn a_lapsed_lease_is_taken() {
        let dir = tempfile::tempdir().unwrap();
        let run = run_store(&dir);
        let lapsed = holder("lapsed", 4242);
        plant(&run, &lapsed.lease_at(START_MS - 10_000)).await;
        let clock = FakeClock::new(None);
        let me = holder("me", std::process::id());
        acquire_lease(&run, &me, &clock, never_gone).await.unwrap();
        assert_eq!(clock.sleeps(), 0);
        assert_eq!(lease_holder(&run).await.as_deref(), Some("me"));
    }

    #[tokio::test]
    async fn a_lease_that_is_not_renewed_is_taken_when_it_lapses() {
        let dir = tempfile::tempdir().unwrap();
        let run = run_store(&dir);
        let silent = holder("silent", 4242);
        plant(&run, &silent.lease_at(START_MS)).await;
        let clock = FakeClock::new(None);
        let me = holder("me", std::process::id());
        acquire_lease(&run, &me, &clock, never_gone).await.unwrap();
        assert!(clock.sleeps() >= 1);
        assert!(clock.now_ms() > START_MS + silent.term.as_millis() as u64);
        assert_eq!(lease_holder(&run).await.as_deref(), Some("me"));
    }

    /// Renewals while the store fails keep the lease only as long as the last one lasts; a
    /// lease another coordinator took is lost, naming it.
    #[tokio::test]
    async fn renewals_say_whether_the_lease_still_holds() {
        let dir = tempfile::tempdir().unwrap();
        let run = run_store(&dir);
        let clock = FakeClock::new(None);
        let me = holder("me", std::process::id());
        let acquired = acquire_lease(&run, &me, &clock, never_gone).await.unwrap();
        assert_eq!(
            (acquired.holder.as_str(), acquired.expires_at_ms),
            ("me", START_MS + 2_000)
        );
        let mut tenure = Tenure::new(&acquired);

        clock.sleep(Duration::from_millis(1_000)).await;
        let renewed = tenure.renew(&run, &me, &clock, LIMIT).await;
        assert!(
            matches!(renewed, Renewal::Renewed) && renewed.holds(),
            "{renewed:?}"
        );

        // The store fails (an unreadable lease): the renewal at START + 1 s lasts until
        // START + 3 s, and not a moment longer.
        let lease_file = dir.path().join(run.lease_key());
        std::fs::write(&lease_file, "not a lease").unwrap();
        clock.sleep(Duration::from_millis(1_000)).await;
        let failed = tenure.renew(&run, &me, &clock, LIMIT).await;
        assert!(
            matches!(failed, Renewal::Failed(_)) && failed.holds(),
            "{failed:?}"
        );
        clock.sleep(Duration::from_millis(1_500)).await;
        let lapsed = tenure.renew(&run, &me, &clock, LIMIT).await;
        assert!(
            matches!(lapsed, Renewal::Lapsed(_)) && !lapsed.holds(),
            "{lapsed:?}"
        );
        assert!(error_text(&lapsed).contains("not a lease"), "{lapsed:?}");

        // The store answers again and nobody took the run meanwhile: held again.
        std::fs::write(&lease_file, serde_json::to_vec(&acquired).unwrap()).unwrap();
        let back = tenure.renew(&run, &me, &clock, LIMIT).await;
        assert!(matches!(back, Renewal::Renewed), "{back:?}");

        // Another coordinator takes it (ours lapsed unseen): lost, naming the other.
        let other = LeaseHolder {
            host: "node-7".into(),
            ..holder("other-coordinator", 4242)
        };
        let later = clock.now_ms() + 10_000;
        assert!(matches!(
            run.try_acquire_lease(&other.lease_at(later), later, never_gone)
                .await
                .unwrap(),
            LeaseAttempt::Acquired
        ));
        let lost = tenure.renew(&run, &me, &clock, LIMIT).await;
        assert!(
            matches!(&lost, Renewal::Lost(StoreError::LeaseHeld { .. })) && !lost.holds(),
            "{lost:?}"
        );
        assert!(
            error_text(&lost).contains("other-coordinator on node-7"),
            "{lost:?}"
        );
        assert_eq!(
            lease_holder(&run).await.as_deref(),
            Some("other-coordinator")
        );

        // A lease that is gone was released by a successor (or removed by hand): not ours
        // to take back by renewing.
        std::fs::remove_file(&lease_file).unwrap();
        let gone = tenure.renew(&run, &me, &clock, LIMIT).await;
        assert!(
            matches!(&gone, Renewal::Lost(StoreError::LeaseLost { .. })) && !gone.holds(),
            "{gone:?}"
        );
        assert!(error_text(&gone).contains("is gone"), "{gone:?}");
    }

    /// A store that takes the connection and never answers (an overloaded S3 endpoint, or
    /// one retrying an outage for minutes): the renewal gives up at its limit, long before
    /// the store client's own timeouts, and the lease holds while its term lasts.
    #[tokio::test]
    async fn a_renewal_the_store_does_not_answer_gives_up_at_its_limit() {
        let dir = tempfile::tempdir().unwrap();
        let clock = FakeClock::new(None);
        let me = holder("me", std::process::id());
        let acquired = acquire_lease(&run_store(&dir), &me, &clock, never_gone)
            .await
            .unwrap();
        let mut tenure = Tenure::new(&acquired);

        // Connections are taken by the kernel's backlog and never read.
        let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let env = std::collections::HashMap::from([
            (
                "AWS_ENDPOINT_URL".to_string(),
                format!("http://{}", silent.local_addr().unwrap()),
            ),
            ("AWS_ALLOW_HTTP".to_string(), "true".to_string()),
            ("AWS_ACCESS_KEY_ID".to_string(), "testing".to_string()),
            ("AWS_SECRET_ACCESS_KEY".to_string(), "testing".to_string()),
            ("AWS_REGION".to_string(), "us-east-1".to_string()),
        ]);
        let store = Store::from_url_with_env("s3://silent/prefix", &env).unwrap();
        let silent_run = RunStore::new(store, "r1").unwrap();

        let started = std::time::Instant::now();
        let limit = Duration::from_millis(300);
        let failed = tenure.renew(&silent_run, &me, &clock, limit).await;
        let took = started.elapsed();
        assert!(
            matches!(failed, Renewal::Failed(RenewalError::NoAnswer(l)) if l == limit),
            "{failed:?}"
        );
        assert!(failed.holds());
        assert!(took < Duration::from_secs(5), "the renewal took {took:?}");
        assert!(error_text(&failed).contains("did not answer within 300 ms"));

        // Past the term, the same silence has lapsed the lease.
        clock.sleep(Duration::from_millis(2_500)).await;
        let lapsed = tenure.renew(&silent_run, &me, &clock, limit).await;
        assert!(
            matches!(lapsed, Renewal::Lapsed(RenewalError::NoAnswer(_))),
            "{lapsed:?}"
        );
    }

    /// The error a renewal that did not renew carries.
    fn error_text(renewal: &Renewal) -> String {
        match renewal {
            Renewal::Renewed => String::new(),
            Renewal::Failed(e) | Renewal::Lapsed(e) => e.to_string(),
            Renewal::Lost(e) => e.to_string(),
        }
    }
}
