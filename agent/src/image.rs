//! Images for instances, through `berth_images`: pull into the worker's image store and
//! mount an overlay root filesystem per instance.

use std::path::{Path, PathBuf};

use thiserror::Error;

use crate::spec::ProcessConfig;

/// Errors of this module.
#[derive(Debug, Error)]
pub enum ImageError {
    #[error("{0}")]
    Store(String),
}

/// A pulled image: what the agent needs to start it.
#[derive(Debug, Clone)]
pub struct PulledImage {
    pub reference: String,
    pub process: ProcessConfig,
}

/// The worker's image store.
pub struct Images {
    root: PathBuf,
}

impl Images {
    pub fn open(root: &Path) -> Result<Self, ImageError> {
        Ok(Self {
            root: root.to_path_buf(),
        })
    }

    pub async fn pull(
        &self,
        reference: &str,
        _auth: &str,
        _insecure: bool,
    ) -> Result<PulledImage, ImageError> {
        Err(ImageError::Store(format!(
            "image store at {} not wired yet for {reference}",
            self.root.display()
        )))
    }

    pub async fn mount_rootfs(
        &self,
        _image: &PulledImage,
        instance_dir: &Path,
    ) -> Result<PathBuf, ImageError> {
        Ok(instance_dir.join("rootfs"))
    }

    pub async fn unmount_rootfs(&self, _instance_dir: &Path) -> Result<(), ImageError> {
        Ok(())
    }
}
