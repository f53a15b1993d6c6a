//! One server per volume: a lease object in the object store.
//!
//! `volumes/<v>/lease` holds the owner's id and a counter bumped on every renewal
//! (every `ttl / 3`). A server serves a volume only while its lease is valid: until
//! `ttl` after the start of its last successful write of the lease object. Another
//! server takes the volume over only after it has seen the *same* lease content for a
//! whole `ttl` on its own clock, so no wall-clock agreement between servers is needed.
//! Writes use `If-Match` (the etag read) where the store supports conditional put, so
//! two servers racing for an expired lease cannot both win; without it the last
//! writer wins and the journal's create-only segment names are the remaining fence.
//! A server that restarts with the same id (kept in its state directory) takes its own
//! lease back at once.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use object_store::{PutMode, PutOptions, PutPayload, UpdateVersion};
use serde::{Deserialize, Serialize};

use super::objects::{lease_path, Objects};
use crate::error::{FsError, FsResult};

/// Content of a lease object.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct LeaseBody {
    owner: String,
    /// Bumped on every renewal, so a live owner's lease visibly changes.
    counter: u64,
    ttl_ms: u64,
}

#[derive(Debug, Clone)]
struct Held {
    valid_until: Instant,
    counter: u64,
    version: Option<UpdateVersion>,
}

#[derive(Debug, Clone)]
struct Observed {
    raw: Bytes,
    since: Instant,
}

/// Leases this server holds or watches.
#[derive(Debug)]
pub struct Leases {
    objects: Objects,
    owner: String,
    ttl: Duration,
    held: Mutex<HashMap<String, Held>>,
    observed: Mutex<HashMap<String, Observed>>,
}

/// What [`Leases::acquire`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Acquired {
    /// Already held and valid.
    Held,
    /// Just taken (first use, restart, or take-over): the local copy must be synced.
    New,
}

impl Leases {
    pub fn new(objects: Objects, owner: String, ttl: Duration) -> Arc<Self> {
        Arc::new(Self {
            objects,
            owner,
            ttl,
            held: Mutex::new(HashMap::new()),
            observed: Mutex::new(HashMap::new()),
        })
    }

    /// This server's owner id.
    pub fn owner(&self) -> &str {
        &self.owner
    }

    /// Whether the lease of `volume` is held and valid now.
    pub fn is_held(&self, volume: &str) -> bool {
        let held = self.held.lock().expect("lease table lock poisoned");
        held.get(volume)
            .is_some_and(|h| Instant::now() < h.valid_until)
    }

    /// Forgets a lease (lost, or a fence showed another writer).
    pub fn drop_lease(&self, volume: &str) {
        self.held
            .lock()
            .expect("lease table lock poisoned")
            .remove(volume);
    }

    /// Makes sure this server owns `volume`; `Unavailable` if another server does.
    pub async fn acquire(&self, volume: &str) -> FsResult<Acquired> {
        if self.is_held(volume) {
            return Ok(Acquired::Held);
        }
        let path = lease_path(volume);
        let current = match self.objects.store.get(&path).await {
            Ok(result) => {
                let version = UpdateVersion {
                    e_tag: result.meta.e_tag.clone(),
                    version: result.meta.version.clone(),
                };
                Some((result.bytes().await?, version))
            }
            Err(object_store::Error::NotFound { .. }) => None,
            Err(err) => return Err(err.into()),
        };
        let (mode, counter) = match current {
            None => (PutMode::Create, 0),
            Some((raw, version)) => {
                let body: Option<LeaseBody> = serde_json::from_slice(&raw).ok();
                let counter = body.as_ref().map_or(0, |b| b.counter);
                let ours = body.as_ref().is_some_and(|b| b.owner == self.owner);
                if !ours && !self.unchanged_for_ttl(volume, &raw) {
                    let owner = body.map_or_else(|| "unknown".to_string(), |b| b.owner);
                    return Err(FsError::Unavailable(format!(
                        "volume {volume} is served by fsd {owner}; taken over if its lease \
                         is not renewed within {} ms",
                        self.ttl.as_millis()
                    )));
                }
                if !ours {
                    tracing::warn!(volume, "lease not renewed for a whole ttl; taking over");
                }
                (self.update_mode(version), counter + 1)
            }
        };
        let held = self.write(volume, mode, counter).await?;
        self.observed
            .lock()
            .expect("lease table lock poisoned")
            .remove(volume);
        self.held
            .lock()
            .expect("lease table lock poisoned")
            .insert(volume.to_string(), held);
        tracing::info!(volume, owner = self.owner, "volume lease acquired");
        Ok(Acquired::New)
    }

    fn update_mode(&self, version: UpdateVersion) -> PutMode {
        if self.objects.conditional_put && (version.e_tag.is_some() || version.version.is_some()) {
            PutMode::Update(version)
        } else {
            PutMode::Overwrite
        }
    }

    /// Whether `raw` was the lease content for at least a ttl (records it if new).
    fn unchanged_for_ttl(&self, volume: &str, raw: &Bytes) -> bool {
        let mut observed = self.observed.lock().expect("lease table lock poisoned");
        match observed.get(volume) {
            Some(o) if o.raw == *raw => o.since.elapsed() >= self.ttl,
            _ => {
                observed.insert(
                    volume.to_string(),
                    Observed {
                        raw: raw.clone(),
                        since: Instant::now(),
                    },
                );
                false
            }
        }
    }

    /// Writes the lease object; the lease is valid for a ttl from before the write.
    async fn write(&self, volume: &str, mode: PutMode, counter: u64) -> FsResult<Held> {
        let started = Instant::now();
        let body = LeaseBody {
            owner: self.owner.clone(),
            counter,
            ttl_ms: self.ttl.as_millis() as u64,
        };
        let bytes = serde_json::to_vec(&body).expect("lease body serializes");
        let mode = match mode {
            PutMode::Create if !self.objects.conditional_put => PutMode::Overwrite,
            other => other,
        };
        let path = lease_path(volume);
        let put = |mode: PutMode| {
            let opts = PutOptions {
                mode,
                ..PutOptions::default()
            };
            self.objects
                .store
                .put_opts(&path, PutPayload::from(bytes.clone()), opts)
        };
        let result = match put(mode).await {
            // The local directory store has create-only puts but no If-Match.
            Err(object_store::Error::NotImplemented) => put(PutMode::Overwrite).await,
            other => other,
        };
        match result {
            Ok(result) => Ok(Held {
                valid_until: started + self.ttl,
                counter,
                version: Some(UpdateVersion {
                    e_tag: result.e_tag,
                    version: result.version,
                }),
            }),
            Err(
                object_store::Error::AlreadyExists { .. }
                | object_store::Error::Precondition { .. },
            ) => Err(FsError::Unavailable(format!(
                "another fsd took the lease of volume {volume} first"
            ))),
            Err(err) => Err(err.into()),
        }
    }

    /// Renews every held lease once; drops the ones another server took.
    pub async fn renew_all(&self) {
        let held: Vec<(String, Held)> = self
            .held
            .lock()
            .expect("lease table lock poisoned")
            .iter()
            .map(|(v, h)| (v.clone(), h.clone()))
            .collect();
        for (volume, h) in held {
            let mode = match h.version.clone() {
                Some(version) => self.update_mode(version),
                None => PutMode::Overwrite,
            };
            let renewal_started = Instant::now();
            match self.write(&volume, mode, h.counter + 1).await {
                Ok(new) => {
                    if let Some(entry) = self
                        .held
                        .lock()
                        .expect("lease table lock poisoned")
                        .get_mut(&volume)
                    {
                        *entry = new;
                    }
                }
                Err(FsError::Unavailable(reason)) => {
                    match self.renewed_anyway(&volume, &h, renewal_started).await {
                        Some(new) => {
                            tracing::info!(
                                volume,
                                "lease renewal was refused but had already been written \
                             (response lost, request retried); keeping the lease"
                            );
                            if let Some(entry) = self
                                .held
                                .lock()
                                .expect("lease table lock poisoned")
                                .get_mut(&volume)
                            {
                                *entry = new;
                            }
                        }
                        None => {
                            tracing::error!(volume, reason, "volume lease lost");
                            self.drop_lease(&volume);
                        }
                    }
                }
                Err(err) => {
                    tracing::warn!(volume, error = %err, "renewing volume lease failed; will retry")
                }
            }
        }
    }

    /// After a refused renewal: whether the lease object holds exactly the renewal this
    /// server tried to write. That happens when the store applied the conditional PUT
    /// but its answer was lost (an S3 server killed mid-request) and the HTTP client
    /// sent it again, which then fails its `If-Match`. Nobody else can have taken
    /// the volume over since: a taker writes its own id. Valid for a ttl from the
    /// start of the renewal, as any renewal.
    async fn renewed_anyway(
        &self,
        volume: &str,
        h: &Held,
        renewal_started: Instant,
    ) -> Option<Held> {
        let result = self.objects.store.get(&lease_path(volume)).await.ok()?;
        let version = UpdateVersion {
            e_tag: result.meta.e_tag.clone(),
            version: result.meta.version.clone(),
        };
        let raw = result.bytes().await.ok()?;
        let body: LeaseBody = serde_json::from_slice(&raw).ok()?;
        (body.owner == self.owner && body.counter == h.counter + 1).then(|| Held {
            valid_until: renewal_started + self.ttl,
            counter: body.counter,
            version: Some(version),
        })
    }

    /// Renews held leases every ttl / 3 until the task is dropped.
    pub fn spawn_renewals(self: &Arc<Self>) -> tokio::task::JoinHandle<()> {
        let leases = Arc::downgrade(self);
        let period = self.ttl / 3;
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(period).await;
                let Some(leases) = leases.upgrade() else {
                    return;
                };
                leases.renew_all().await;
            }
        })
    }

    /// Lets go of every lease (clean shutdown), so another server can take over at once.
    pub async fn release_all(&self) {
        let volumes: Vec<String> = self
            .held
            .lock()
            .expect("lease table lock poisoned")
            .drain()
            .map(|(v, _)| v)
            .collect();
        for volume in volumes {
            if let Err(err) = self.objects.delete(&lease_path(&volume)).await {
                tracing::warn!(volume, error = %err, "releasing volume lease failed");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use object_store::memory::InMemory;

    fn objects() -> Objects {
        Objects::new(Arc::new(InMemory::new()), true, Duration::ZERO)
    }

    /// Writes the lease object behind the server's back.
    async fn overwrite(objects: &Objects, owner: &str, counter: u64) {
        let body = LeaseBody {
            owner: owner.into(),
            counter,
            ttl_ms: 60_000,
        };
        let bytes = serde_json::to_vec(&body).unwrap();
        objects
            .store
            .put(&lease_path("v"), PutPayload::from(bytes))
            .await
            .unwrap();
    }

    fn counter(leases: &Leases) -> u64 {
        leases.held.lock().unwrap()["v"].counter
    }

    #[tokio::test]
    async fn a_renewal_applied_but_unanswered_keeps_the_lease() {
        let objects = objects();
        let leases = Leases::new(objects.clone(), "me".into(), Duration::from_secs(60));
        assert_eq!(leases.acquire("v").await.unwrap(), Acquired::New);
        let before = counter(&leases);
        // The store applied our next renewal but its answer was lost: the etag this
        // server holds is stale, so the retried If-Match renewal is refused.
        overwrite(&objects, "me", before + 1).await;
        leases.renew_all().await;
        assert!(leases.is_held("v"), "lease dropped after its own renewal");
        assert_eq!(counter(&leases), before + 1);
        // The next renewal goes through with the etag read back.
        leases.renew_all().await;
        assert_eq!(counter(&leases), before + 2);
        assert_eq!(leases.acquire("v").await.unwrap(), Acquired::Held);
    }

    #[tokio::test]
    async fn a_lease_another_server_wrote_is_lost() {
        let objects = objects();
        let leases = Leases::new(objects.clone(), "me".into(), Duration::from_secs(60));
        leases.acquire("v").await.unwrap();
        let before = counter(&leases);
        overwrite(&objects, "other", before + 1).await;
        leases.renew_all().await;
        assert!(!leases.is_held("v"), "kept a lease another server took");
    }
}
