//! The coordinator lease of a run (`runs/<run_id>/LEASE.json`): at most one coordinator
//! acts for a run at a time. It is taken with a conditional create, renewed before it
//! lapses, taken over once it has lapsed or its holder is known to be gone, and released on
//! a clean exit. A holder that finds it taken over must stop acting at once.

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::error::{Result, StoreError};
use crate::run::RunStore;

/// The largest lease read (a lease is a few hundred bytes).
pub const MAX_LEASE_BYTES: u64 = 64 << 10;

/// The lease of the coordinator acting for a run (`runs/<run_id>/LEASE.json`): only its
/// holder may act, until `expires_at_ms` unless renewed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lease {
    /// The holder's identity (a coordinator instance id).
    pub holder: String,
    pub host: String,
    pub pid: u32,
    /// Milliseconds since the Unix epoch.
    pub expires_at_ms: u64,
}

/// What [`RunStore::try_acquire_lease`] found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LeaseAttempt {
    /// `me` holds the lease now.
    Acquired,
    /// Another holder's lease, still running.
    HeldBy(Lease),
}

impl RunStore {
    /// The store key of the run's coordinator lease.
    pub fn lease_key(&self) -> String {
        format!("runs/{}/LEASE.json", self.run_id())
    }

    async fn read_lease(&self) -> Result<Option<Lease>> {
        let key = self.lease_key();
        match self
            .store()
            .get_at_most(&key, "coordinator lease", MAX_LEASE_BYTES)
            .await
        {
            Ok(bytes) => {
                serde_json::from_slice(&bytes)
                    .map(Some)
                    .map_err(|e| StoreError::BadLease {
                        url: self.store().url().to_string(),
                        key,
                        reason: format!("not a lease: {e}"),
                    })
            }
            Err(StoreError::NotFound { .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Takes the lease for `me` if nobody holds it, it has lapsed (`now_ms` past its
    /// expiry) or `stale` says its holder is gone (e.g. a dead pid on this host). The
    /// first write is conditional (create-if-absent), so of two coordinators starting
    /// together exactly one gets it. Taking over a lapsed lease deletes it first: two
    /// coordinators doing that in the same instant could both succeed, a window the
    /// conditional create cannot close without conditional deletes.
    pub async fn try_acquire_lease(
        &self,
        me: &Lease,
        now_ms: u64,
        stale: impl Fn(&Lease) -> bool,
    ) -> Result<LeaseAttempt> {
        let bytes = Bytes::from(serde_json::to_vec_pretty(me).expect("lease serialises"));
        for _ in 0..2 {
            if self
                .store()
                .put_new(&self.lease_key(), bytes.clone())
                .await?
            {
                return Ok(LeaseAttempt::Acquired);
            }
            match self.read_lease().await? {
                // Deleted between our write and our read: try again.
                None => continue,
                Some(held) if held.holder == me.holder => {
                    self.store().put(&self.lease_key(), bytes).await?;
                    return Ok(LeaseAttempt::Acquired);
                }
                Some(held) if held.expires_at_ms < now_ms || stale(&held) => {
                    tracing::warn!(
                        run = %self.run_id(),
                        holder = %held.holder,
                        host = %held.host,
                        pid = held.pid,
                        "taking over the coordinator lease of a coordinator that is gone"
                    );
                    self.store().delete(&self.lease_key()).await?;
                }
                Some(held) => return Ok(LeaseAttempt::HeldBy(held)),
            }
        }
        match self.read_lease().await? {
            Some(held) if held.holder != me.holder => Ok(LeaseAttempt::HeldBy(held)),
            _ => Ok(LeaseAttempt::Acquired),
        }
    }

    /// Extends `me`'s lease. Fails if another holder has it (ours lapsed and was taken
    /// over): the caller must stop acting for the run at once.
    pub async fn renew_lease(&self, me: &Lease) -> Result<()> {
        match self.read_lease().await? {
            Some(held) if held.holder != me.holder => Err(self.lease_held(held)),
            _ => {
                let bytes = Bytes::from(serde_json::to_vec_pretty(me).expect("lease serialises"));
                self.store().put(&self.lease_key(), bytes).await.map(|_| ())
            }
        }
    }

    /// Gives the lease up, if `holder` still has it.
    pub async fn release_lease(&self, holder: &str) -> Result<()> {
        match self.read_lease().await? {
            Some(held) if held.holder == holder => self.store().delete(&self.lease_key()).await,
            _ => Ok(()),
        }
    }

    /// The error for a lease `held` by someone else.
    pub fn lease_held(&self, held: Lease) -> StoreError {
        StoreError::LeaseHeld {
            url: self.store().url().to_string(),
            run: self.run_id().to_string(),
            holder: Box::new(held),
        }
    }
}
