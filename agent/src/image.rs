//! Images for instances, through `berth_images`: pull into the worker's image store
//! (`<state>/images`, shared read-only layer snapshots) and mount an overlay root
//! filesystem per instance (idmapped to the site's host id range when it has one).
//!
//! It also knows which images are in use, for garbage collection ([`crate::gc`]): an
//! image is held from the moment a pull of it starts (when the reference is pinned, as
//! assignments are) until the instance's root filesystem built from it is unmounted.
//! A pulled image that never gets mounted (its start failed in between) stays held for
//! [`PENDING_HOLD`]. Collection never removes a held image.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use berth_images::idmap::IdRange;
use berth_images::store::{ImageStore, PullEvent, StoreError};
use berth_images::{ClientOptions, Digest, GcReport, Reference, ReferenceError};
use thiserror::Error;
use tokio::sync::Notify;
use tracing::{debug, info};

use crate::spec::ProcessConfig;

/// Errors of this module.
#[derive(Debug, Error)]
pub enum ImageError {
    #[error(transparent)]
    Reference(#[from] ReferenceError),
    #[error("registry credentials must look like user:password")]
    BadAuth,
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Rootfs(#[from] berth_images::RootfsError),
    #[error("image task failed: {0}")]
    Task(String),
}

/// A pulled image: what the agent needs to start it.
#[derive(Debug, Clone)]
pub struct PulledImage {
    pub inner: berth_images::store::PulledImage,
    pub process: ProcessConfig,
}

/// How long a pulled image that no instance mounted yet stays held against collection.
pub const PENDING_HOLD: Duration = Duration::from_secs(600);

/// The worker's image store.
pub struct Images {
    store: ImageStore,
    /// PEM file of extra CA certificates for HTTPS registries (`--registry-ca`).
    ca_file: Option<PathBuf>,
    holds: Mutex<Holds>,
    /// Signalled when an instance's root filesystem goes (a chance to collect).
    released: Notify,
}

/// Images in use: mounted root filesystems and pulls not mounted yet.
#[derive(Default)]
struct Holds {
    mounted: HashMap<PathBuf, Digest>,
    pending: Vec<(Digest, Instant)>,
}

impl Holds {
    fn unpend(&mut self, d: &Digest) {
        if let Some(i) = self.pending.iter().position(|(p, _)| p == d) {
            self.pending.swap_remove(i);
        }
    }
}

/// Registry options from an assignment's `registry_auth` ("user:password" or empty) and
/// `insecure_registry`.
pub fn client_options(auth: &str, insecure: bool) -> Result<ClientOptions, ImageError> {
    let auth = if auth.is_empty() {
        None
    } else {
        let (user, pass) = auth.split_once(':').ok_or(ImageError::BadAuth)?;
        Some((user.to_string(), pass.to_string()))
    };
    Ok(ClientOptions {
        insecure,
        auth,
        ..Default::default()
    })
}

fn log_progress(image: &str, event: PullEvent) {
    match event {
        PullEvent::Cached { manifest_digest } => {
            info!(%image, digest = %manifest_digest.short(), "image already in the store")
        }
        PullEvent::Resolved {
            manifest_digest,
            layers,
            total_bytes,
        } => info!(%image, digest = %manifest_digest.short(), layers, total_bytes, "pulling image"),
        PullEvent::LayerCached { digest } => {
            debug!(%image, layer = %digest.short(), "layer cached")
        }
        PullEvent::LayerDownloading { digest, size } => {
            info!(%image, layer = %digest.short(), size, "downloading layer")
        }
        PullEvent::LayerProgress {
            digest,
            downloaded,
            size,
        } => info!(%image, layer = %digest.short(), downloaded, size, "layer progress"),
        PullEvent::LayerDownloaded { digest, size } => {
            info!(%image, layer = %digest.short(), size, "layer downloaded")
        }
        PullEvent::LayerUnpacked { digest, entries } => {
            info!(%image, layer = %digest.short(), entries, "layer unpacked")
        }
        PullEvent::Done { manifest_digest } => {
            info!(%image, digest = %manifest_digest.short(), "image pulled")
        }
    }
}

/// One pull status: the line for the instance's STARTING message and the byte counts
/// behind it (for the CLI's progress bar).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PullProgress {
    pub line: String,
    pub done_bytes: u64,
    pub total_bytes: u64,
}

/// Turns pull events into a one-line status for the instance's STARTING message
/// (`pulling 12.3/45.6 MB (2/5 layers)`), at most one every [`PullStatus::EVERY`] so a
/// fast pull does not flood the controller with reports.
pub struct PullStatus<F> {
    emit: F,
    inner: Mutex<PullCounts>,
}

#[derive(Default)]
struct PullCounts {
    layers: usize,
    total_bytes: u64,
    layers_done: usize,
    downloaded: HashMap<String, u64>,
    last: Option<Instant>,
}

impl<F: Fn(PullProgress)> PullStatus<F> {
    /// Minimum time between two statuses (first and last always go out).
    pub const EVERY: Duration = Duration::from_millis(500);

    pub fn new(emit: F) -> Self {
        Self {
            emit,
            inner: Mutex::new(PullCounts::default()),
        }
    }

    /// Folds in one event and emits a status if one is due.
    pub fn on_event(&self, event: &PullEvent) {
        let mut c = self.inner.lock().expect("pull status lock poisoned");
        let force = match event {
            PullEvent::Resolved {
                layers,
                total_bytes,
                ..
            } => {
                c.layers = *layers;
                c.total_bytes = *total_bytes;
                true
            }
            PullEvent::LayerCached { .. } | PullEvent::LayerUnpacked { .. } => {
                c.layers_done += 1;
                c.layers_done == c.layers
            }
            PullEvent::LayerDownloading { digest, .. } => {
                c.downloaded.insert(digest.to_string(), 0);
                false
            }
            PullEvent::LayerProgress {
                digest, downloaded, ..
            } => {
                c.downloaded.insert(digest.to_string(), *downloaded);
                false
            }
            PullEvent::LayerDownloaded { digest, size } => {
                c.downloaded.insert(digest.to_string(), *size);
                false
            }
            PullEvent::Cached { .. } | PullEvent::Done { .. } => return,
        };
        let due = c.last.is_none_or(|t| t.elapsed() >= Self::EVERY);
        if !(force || due) {
            return;
        }
        c.last = Some(Instant::now());
        let mb = |b: u64| b as f64 / 1e6;
        let got: u64 = c.downloaded.values().sum();
        let line = format!(
            "pulling {:.1}/{:.1} MB ({}/{} layers)",
            mb(got.min(c.total_bytes)),
            mb(c.total_bytes),
            c.layers_done,
            c.layers
        );
        let total_bytes = c.total_bytes;
        drop(c);
        (self.emit)(PullProgress {
            line,
            done_bytes: got.min(total_bytes),
            total_bytes,
        });
    }
}

impl Images {
    /// Opens (creating) the store at `root`.
    pub fn open(root: &Path) -> Result<Self, ImageError> {
        Ok(Self {
            store: ImageStore::open(root)?,
            ca_file: None,
            holds: Mutex::new(Holds::default()),
            released: Notify::new(),
        })
    }

    /// Trusts the CA certificates in `ca_file` (PEM) for HTTPS registries, on top of the
    /// system roots.
    pub fn with_registry_ca(mut self, ca_file: Option<PathBuf>) -> Self {
        self.ca_file = ca_file;
        self
    }

    /// Manifest digests of the images in use (see the module docs).
    pub fn in_use(&self) -> Vec<Digest> {
        let mut h = self.holds.lock().expect("image holds lock poisoned");
        h.pending.retain(|(_, t)| t.elapsed() < PENDING_HOLD);
        let mut out: Vec<Digest> = h.mounted.values().cloned().collect();
        out.extend(h.pending.iter().map(|(d, _)| d.clone()));
        out.sort();
        out.dedup();
        out
    }

    /// Waits until an instance's root filesystem was unmounted.
    pub async fn released(&self) {
        self.released.notified().await
    }

    /// Removes every image not in use and everything no remaining image needs.
    pub async fn gc(&self) -> Result<GcReport, ImageError> {
        self.collect(None).await
    }

    /// Removes images not in use, least recently pulled first, until the store fits in
    /// `budget` bytes; always removes unreferenced blobs, snapshots and leftovers.
    pub async fn gc_to_budget(&self, budget: u64) -> Result<GcReport, ImageError> {
        self.collect(Some(budget)).await
    }

    async fn collect(&self, budget: Option<u64>) -> Result<GcReport, ImageError> {
        let store = self.store.clone();
        let in_use = self.in_use();
        tokio::task::spawn_blocking(move || match budget {
            Some(b) => store.gc_to_budget(b, &in_use),
            None => store.gc(&in_use),
        })
        .await
        .map_err(|e| ImageError::Task(e.to_string()))?
        .map_err(ImageError::from)
    }

    /// Pulls `reference` (a no-op when a pinned image is already here); `status` gets a
    /// throttled one-line progress status (see [`PullStatus`]).
    pub async fn pull(
        &self,
        reference: &str,
        auth: &str,
        insecure: bool,
        status: impl Fn(PullProgress) + Send + Sync,
    ) -> Result<PulledImage, ImageError> {
        let r = Reference::from_str(reference)?;
        let mut opts = client_options(auth, insecure)?;
        opts.ca_file = self.ca_file.clone();
        let name = reference.to_string();
        let status = PullStatus::new(status);
        // A pinned image is held before the pull, so a collection waiting for the pull
        // to finish cannot take it away before the instance mounts it.
        let early = r.digest().cloned();
        if let Some(d) = &early {
            self.hold_pending(d.clone());
        }
        let pulled = self
            .store
            .pull(&r, &opts, move |e| {
                status.on_event(&e);
                log_progress(&name, e)
            })
            .await;
        let inner = match pulled {
            Ok(inner) => inner,
            Err(e) => {
                if let Some(d) = &early {
                    self.holds
                        .lock()
                        .expect("image holds lock poisoned")
                        .unpend(d);
                }
                return Err(e.into());
            }
        };
        if early.as_ref() != Some(&inner.manifest_digest) {
            if let Some(d) = &early {
                self.holds
                    .lock()
                    .expect("image holds lock poisoned")
                    .unpend(d);
            }
            self.hold_pending(inner.manifest_digest.clone());
        }
        let cfg = &inner.config;
        let process = ProcessConfig {
            entrypoint: cfg.entrypoint.clone().unwrap_or_default(),
            cmd: cfg.cmd.clone().unwrap_or_default(),
            env: cfg.env.clone(),
            working_dir: cfg.working_dir.clone(),
        };
        Ok(PulledImage { inner, process })
    }

    /// Mounts the image's overlay root filesystem for an instance under `instance_dir`
    /// and returns the rootfs path. With `range` the layers are seen through idmapped
    /// mounts and the writable layer belongs to `range.host_id`, so the root of a
    /// sandbox with that user namespace owns the image's files.
    pub async fn mount_rootfs(
        &self,
        image: &PulledImage,
        instance_dir: &Path,
        range: Option<IdRange>,
    ) -> Result<PathBuf, ImageError> {
        let snapshots = image.inner.snapshot_dirs.clone();
        let dir = instance_dir.to_path_buf();
        // Held as mounted before the mount starts; a failed mount is cleaned up by
        // unmount_rootfs on the instance's teardown, which drops the hold.
        {
            let mut h = self.holds.lock().expect("image holds lock poisoned");
            h.unpend(&image.inner.manifest_digest);
            h.mounted
                .insert(dir.clone(), image.inner.manifest_digest.clone());
        }
        tokio::task::spawn_blocking(move || match range {
            Some(range) => berth_images::rootfs::mount_rootfs_idmapped(&snapshots, &dir, range),
            None => berth_images::mount_rootfs(&snapshots, &dir),
        })
        .await
        .map_err(|e| ImageError::Task(e.to_string()))?
        .map_err(ImageError::from)
    }

    fn hold_pending(&self, d: Digest) {
        self.holds
            .lock()
            .expect("image holds lock poisoned")
            .pending
            .push((d, Instant::now()));
    }

    /// Unmounts an instance's root filesystem and removes its directories (nothing
    /// mounted is fine).
    pub async fn unmount_rootfs(&self, instance_dir: &Path) -> Result<(), ImageError> {
        let dir = instance_dir.to_path_buf();
        let res = tokio::task::spawn_blocking(move || berth_images::unmount_rootfs(&dir))
            .await
            .map_err(|e| ImageError::Task(e.to_string()))?
            .map_err(ImageError::from);
        if res.is_ok() {
            let was = self
                .holds
                .lock()
                .expect("image holds lock poisoned")
                .mounted
                .remove(instance_dir);
            if was.is_some() {
                self.released.notify_one();
            }
        }
        res
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auth_parsing() {
        assert!(client_options("", false).unwrap().auth.is_none());
        let o = client_options("bob:s3:cret", true).unwrap();
        assert_eq!(o.auth, Some(("bob".into(), "s3:cret".into())));
        assert!(o.insecure);
        assert!(matches!(
            client_options("nocolon", false),
            Err(ImageError::BadAuth)
        ));
    }
}

#[cfg(test)]
mod pull_status_tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn statuses_are_throttled_and_count_layers_and_bytes() {
        let d = |n: u8| {
            berth_images::Digest::from_str(&format!("sha256:{}", format!("{n:02x}").repeat(32)))
                .unwrap()
        };
        let out = Arc::new(Mutex::new(Vec::new()));
        let o = out.clone();
        let s = PullStatus::new(move |p: PullProgress| o.lock().unwrap().push(p));
        s.on_event(&PullEvent::Resolved {
            manifest_digest: d(0),
            layers: 2,
            total_bytes: 3_000_000,
        });
        s.on_event(&PullEvent::LayerCached { digest: d(1) });
        s.on_event(&PullEvent::LayerDownloading {
            digest: d(2),
            size: 2_000_000,
        });
        for i in 0..100 {
            s.on_event(&PullEvent::LayerProgress {
                digest: d(2),
                downloaded: i * 10_000,
                size: 2_000_000,
            });
        }
        s.on_event(&PullEvent::LayerDownloaded {
            digest: d(2),
            size: 2_000_000,
        });
        s.on_event(&PullEvent::LayerUnpacked {
            digest: d(2),
            entries: 3,
        });
        let out = out.lock().unwrap();
        assert_eq!(out.first().unwrap().line, "pulling 0.0/3.0 MB (0/2 layers)");
        assert_eq!(out.first().unwrap().total_bytes, 3_000_000);
        assert_eq!(out.last().unwrap().line, "pulling 2.0/3.0 MB (2/2 layers)");
        assert_eq!(out.last().unwrap().done_bytes, 2_000_000);
        assert!(out.len() <= 3, "{out:?}");
    }
}
