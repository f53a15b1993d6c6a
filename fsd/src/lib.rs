//! berth-fsd: the file server that gives every instance of a site the same `/home`,
//! and the FUSE client that mounts it.
//!
//! Request flow: an application's syscall on `/home` reaches the kernel's FUSE driver,
//! which hands it to [`fuse::VolumeFs`] in `berth-fsd mount`; that translates it into
//! one `berth.volume.v1.Volumes` call ([`client::FsClient`]). In `berth-fsd serve`,
//! [`service::VolumeService`] validates the call, changes metadata in SQLite
//! ([`meta::MetaStore`], one transaction per operation) and file data as 4 MiB chunks in
//! an object store ([`data::ChunkStore`]), and answers with attributes or a POSIX errno.
//! Writes are buffered per inode on the server and made durable by `Fsync`, which the
//! client sends on close and fsync.
//!
//! Modules:
//! - [`names`]: volume and file name rules.
//! - [`error`]: [`FsError`] and its errno / gRPC status mapping.
//! - [`meta`]: inodes and directory entries in SQLite.
//! - [`data`]: chunked file data in an object store, dirty buffers, read cache.
//! - [`service`]: the gRPC service; [`serve`]: running it with `/metrics` ([`metrics`]).
//! - [`client`], [`fuse`], [`mount`]: the FUSE client.

pub mod client;
pub mod data;
pub mod error;
pub mod fuse;
pub mod meta;
pub mod metrics;
pub mod mount;
pub mod names;
pub mod serve;
pub mod service;

pub use error::{FsError, FsResult};
pub use mount::{mount, MountConfig, MountError};
pub use serve::{serve, ServeConfig, ServeError};
