//! The coordinator lease of a run (`runs/<run_id>/LEASE.json`): at most one coordinator
//! acts for a run at a time. It is taken with a conditional create, renewed before it
//! lapses, taken over once it has lapsed or its holder is known to be gone, and released on
//! a clean exit. A holder that finds it taken over must stop acting at once.
//!
//! Renewals and takeovers replace the lease only if it is still the version just read
//! (`If-Match` on S3), so a renewal racing a takeover, or two takeovers, cannot both
//! succeed. A backend without conditional replaces (a local directory, whose coordinators
//! usually share one machine and see each other's pids) falls back to what it can do: a
//! renewal writes unconditionally after its read, and a takeover deletes and creates, which
//! two coordinators doing it in the same instant could both get through. A release is a
//! read then a delete on every backend (object_store has no conditional delete).

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::error::{Result, StoreError};
use crate::run::RunStore;
use crate::store::{ObjectVersion, Replaced};

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

/// What a lease write does where the backend cannot replace conditionally.
#[derive(Clone, Copy)]
enum Fallback {
    /// Writes over it (the lease is ours).
    Overwrite,
    /// Deletes it and creates ours (taking over a lapsed one).
    DeleteAndCreate,
}

fn lease_bytes(lease: &Lease) -> Bytes {
    Bytes::from(serde_json::to_vec_pretty(lease).expect("a lease serialises"))
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

    /// The lease and the version of it that was read; none if there is none.
    async fn read_lease(&self) -> Result<Option<(Lease, ObjectVersion)>> {
        let key = self.lease_key();
        match self
            .store()
            .get_versioned_at_most(&key, "coordinator lease", MAX_LEASE_BYTES)
            .await
        {
            Ok((bytes, version)) => serde_json::from_slice(&bytes)
                .map(|lease| Some((lease, version)))
                .map_err(|e| StoreError::BadLease {
                    url: self.store().url().to_string(),
                    key,
                    reason: format!("not a lease: {e}"),
                }),
            Err(StoreError::NotFound { .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Writes `me`'s lease over the `version` read: [`Replaced::Changed`] if it changed
    /// since. Without conditional replaces, `unconditionally` says what to do instead.
    async fn replace_lease(
        &self,
        me: &Lease,
        version: &ObjectVersion,
        unconditionally: Fallback,
    ) -> Result<Replaced> {
        let key = self.lease_key();
        let bytes = lease_bytes(me);
        match self
            .store()
            .put_if_unchanged(&key, bytes.clone(), version)
            .await?
        {
            Replaced::Unsupported => match unconditionally {
                Fallback::Overwrite => self.store().put(&key, bytes).await.map(|_| Replaced::Done),
                Fallback::DeleteAndCreate => {
                    self.store().delete(&key).await?;
                    match self.store().put_new(&key, bytes).await? {
                        true => Ok(Replaced::Done),
                        false => Ok(Replaced::Changed),
                    }
                }
            },
            replaced => Ok(replaced),
        }
    }

    /// Takes the lease for `me` if nobody holds it, it has lapsed (`now_ms` past its
    /// expiry) or `stale` says its holder is gone (e.g. a dead pid on this host). Every
    /// write is conditional (create-if-absent, or replace-if-unchanged for a takeover), so
    /// of coordinators starting together exactly one gets it (see the module header for a
    /// backend without conditional replaces).
    pub async fn try_acquire_lease(
        &self,
        me: &Lease,
        now_ms: u64,
        stale: impl Fn(&Lease) -> bool,
    ) -> Result<LeaseAttempt> {
        // Each round that finds the lease changed under it means another coordinator wrote
        // in between; a few rounds settle who holds it.
        for _ in 0..3 {
            if self
                .store()
                .put_new(&self.lease_key(), lease_bytes(me))
                .await?
            {
                return Ok(LeaseAttempt::Acquired);
            }
            let (held, version) = match self.read_lease().await? {
                Some(read) => read,
                // Deleted between our write and our read: try again.
                None => continue,
            };
            let fallback = if held.holder == me.holder {
                Fallback::Overwrite
            } else if held.expires_at_ms < now_ms || stale(&held) {
                tracing::warn!(
                    run = %self.run_id(),
                    holder = %held.holder,
                    host = %held.host,
                    pid = held.pid,
                    "taking over the coordinator lease of a coordinator that is gone"
                );
                Fallback::DeleteAndCreate
            } else {
                return Ok(LeaseAttempt::HeldBy(held));
            };
            // Changed since the read: someone else renewed or took it; look again.
            if self.replace_lease(me, &version, fallback).await? == Replaced::Done {
                return Ok(LeaseAttempt::Acquired);
            }
        }
        match self.read_lease().await? {
            Some((held, _)) if held.holder != me.holder => Ok(LeaseAttempt::HeldBy(held)),
            Some(_) => Ok(LeaseAttempt::Acquired),
            None => Err(self.lease_lost("kept changing while this coordinator tried to take it")),
        }
    }

    /// Extends `me`'s lease. Fails if another holder has it (ours lapsed and was taken
    /// over, also between this read and this write): the caller must stop acting for the
    /// run at once.
    pub async fn renew_lease(&self, me: &Lease) -> Result<()> {
        let version = match self.read_lease().await? {
            Some((held, _)) if held.holder != me.holder => return Err(self.lease_held(held)),
            Some((_, version)) => version,
            // Gone: only a successor's release (after taking it over) or a hand removes a
            // lease, so it is not ours to take back silently.
            None => return Err(self.lease_lost("is gone")),
        };
        match self
            .replace_lease(me, &version, Fallback::Overwrite)
            .await?
        {
            Replaced::Done => Ok(()),
            Replaced::Changed | Replaced::Unsupported => self.renewal_refused(me).await,
        }
    }

    /// A renewal whose conditional write found the lease changed: whoever holds it now.
    /// It may be this coordinator itself: its own write landed and object_store sent it
    /// again after an error, and the second copy found the first; or an earlier renewal
    /// that its caller stopped waiting for landed after this one read the lease. The
    /// holder id is this process's alone, so that lease is ours: written over once more.
    async fn renewal_refused(&self, me: &Lease) -> Result<()> {
        match self.read_lease().await {
            Ok(Some((held, _))) if held == *me => Ok(()),
            Ok(Some((held, _))) if held.holder != me.holder => Err(self.lease_held(held)),
            Ok(Some((_, version))) => {
                match self
                    .replace_lease(me, &version, Fallback::Overwrite)
                    .await?
                {
                    Replaced::Done => Ok(()),
                    Replaced::Changed | Replaced::Unsupported => {
                        Err(self.lease_lost("changed twice under this coordinator's renewal"))
                    }
                }
            }
            Ok(None) => {
                Err(self.lease_lost("changed under this coordinator's renewal and is gone"))
            }
            Err(e) => Err(self.lease_lost(&format!(
                "changed under this coordinator's renewal and cannot be read back ({e})"
            ))),
        }
    }

    fn lease_lost(&self, reason: &str) -> StoreError {
        StoreError::LeaseLost {
            url: self.store().url().to_string(),
            run: self.run_id().to_string(),
            reason: reason.to_string(),
        }
    }

    /// Gives the lease up, if `holder` still has it.
    pub async fn release_lease(&self, holder: &str) -> Result<()> {
        match self.read_lease().await? {
            Some((held, _)) if held.holder == holder => {
                self.store().delete(&self.lease_key()).await
            }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Store;

    fn lease(holder: &str, expires_at_ms: u64) -> Lease {
        Lease {
            holder: holder.into(),
            host: "host-a".into(),
            pid: 7,
            expires_at_ms,
        }
    }

    /// A renewal whose conditional write lost to this coordinator's own earlier renewal
    /// (one its caller stopped waiting for, landing late) writes over it and holds; one
    /// that lost to another holder does not.
    #[tokio::test]
    async fn a_renewal_that_finds_its_own_earlier_write_holds() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("file://{}", dir.path().display());
        let run = RunStore::new(Store::from_url(&url).unwrap(), "r").unwrap();
        let earlier = lease("me", 1_000);
        assert_eq!(
            run.try_acquire_lease(&earlier, 0, |_| false).await.unwrap(),
            LeaseAttempt::Acquired
        );
        let now = lease("me", 2_000);
        run.renewal_refused(&now).await.unwrap();
        assert_eq!(run.read_lease().await.unwrap().unwrap().0, now);

        let other = lease("other", 9_000);
        run.store()
            .put(&run.lease_key(), lease_bytes(&other))
            .await
            .unwrap();
        let e = run.renewal_refused(&lease("me", 3_000)).await.unwrap_err();
        assert!(matches!(e, StoreError::LeaseHeld { .. }), "{e}");
    }
}
