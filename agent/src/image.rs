//! Images for instances, through `berth_images`: pull into the worker's image store
//! (`<state>/images`, shared read-only layer snapshots) and mount an overlay root
//! filesystem per instance.

use std::path::{Path, PathBuf};
use std::str::FromStr;

use berth_images::store::{ImageStore, PullEvent, StoreError};
use berth_images::{ClientOptions, Reference, ReferenceError};
use thiserror::Error;
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

/// The worker's image store.
pub struct Images {
    store: ImageStore,
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

impl Images {
    /// Opens (creating) the store at `root`.
    pub fn open(root: &Path) -> Result<Self, ImageError> {
        Ok(Self {
            store: ImageStore::open(root)?,
        })
    }

    /// Pulls `reference` (a no-op when a pinned image is already here).
    pub async fn pull(
        &self,
        reference: &str,
        auth: &str,
        insecure: bool,
    ) -> Result<PulledImage, ImageError> {
        let r = Reference::from_str(reference)?;
        let opts = client_options(auth, insecure)?;
        let name = reference.to_string();
        let inner = self
            .store
            .pull(&r, &opts, move |e| log_progress(&name, e))
            .await?;
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
    /// and returns the rootfs path.
    pub async fn mount_rootfs(
        &self,
        image: &PulledImage,
        instance_dir: &Path,
    ) -> Result<PathBuf, ImageError> {
        let snapshots = image.inner.snapshot_dirs.clone();
        let dir = instance_dir.to_path_buf();
        tokio::task::spawn_blocking(move || berth_images::mount_rootfs(&snapshots, &dir))
            .await
            .map_err(|e| ImageError::Task(e.to_string()))?
            .map_err(ImageError::from)
    }

    /// Unmounts an instance's root filesystem and removes its directories (nothing
    /// mounted is fine).
    pub async fn unmount_rootfs(&self, instance_dir: &Path) -> Result<(), ImageError> {
        let dir = instance_dir.to_path_buf();
        tokio::task::spawn_blocking(move || berth_images::unmount_rootfs(&dir))
            .await
            .map_err(|e| ImageError::Task(e.to_string()))?
            .map_err(ImageError::from)
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
