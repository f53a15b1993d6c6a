//! berth-images: Berth's image store.
//!
//! The controller uses [`client::RegistryClient::resolve`] to validate and pin an image
//! when a site is created. The agent uses [`store::ImageStore::pull`] to fetch an image
//! once per worker: manifests and blobs are verified against their sha256 digests and
//! kept content-addressed under `<root>/blobs`, each layer is unpacked once (safely, see
//! [`unpack`]) into a shared read-only snapshot under `<root>/snapshots`, and
//! [`rootfs::mount_rootfs`] stacks those snapshots into a per-instance overlay root.
//!
//! Modules:
//! - [`reference`]: image references and digests;
//! - [`manifest`]: OCI / Docker manifest, index and config documents;
//! - [`client`]: the registry (distribution API v2) client;
//! - [`credentials`]: registry credentials from Berth's and docker's config files;
//! - [`unpack`]: safe layer unpacking with overlay whiteouts;
//! - [`store`]: blobs, snapshots and image records on disk;
//! - [`rootfs`]: overlay root filesystems for instances.

pub mod client;
pub mod credentials;
pub mod idmap;
pub mod manifest;
pub mod reference;
pub mod rootfs;
pub mod store;
pub mod unpack;

pub use client::{ClientError, ClientOptions, RegistryClient, Resolved, RetryPolicy};
pub use manifest::{Descriptor, ImageConfig, Manifest};
pub use reference::{Digest, Reference, ReferenceError};

pub use rootfs::{mount_rootfs, unmount_rootfs, RootfsError};
pub use store::{GcReport, ImageStore, PullEvent, PulledImage, StoreError};
pub use unpack::{unpack_layer, UnpackError, UnpackLimits, UnpackStats};
