//! berth-sandboxd: the sandbox runtime of a worker.
//!
//! The agent calls the `berth.sandbox.v1.Sandboxes` gRPC service over a Unix socket
//! ([`client::connect`]). A Create validates the request ([`validate`]), writes an OCI
//! bundle ([`spec`]) and has youki's libcontainer create the container in a
//! short-lived single-threaded helper process ([`helper`]), passing it the seccomp
//! profile compiled once per daemon ([`seccomp::bpf`]); the container's init is
//! re-parented to the daemon, which reaps it ([`reaper`]). Start, Stop (SIGTERM,
//! grace, SIGKILL of the whole cgroup: [`cgroup`]) and Delete work on the records kept
//! in [`store`]; [`sandboxes`] holds the lifecycle, [`service`] the gRPC mapping,
//! [`server`] the wiring and [`metrics`] `/metrics`.

pub mod cgroup;
pub mod client;
pub mod helper;
pub mod logcap;
pub mod metrics;
pub mod reaper;
pub mod sandboxes;
pub mod seccomp;
pub mod server;
pub mod service;
pub mod spec;
pub mod store;
pub mod validate;

use std::path::PathBuf;

use thiserror::Error;

pub use client::{connect, ClientError};
pub use helper::{helper_main, HELPER_ARG};
pub use server::{run, Config};

/// Errors that stop the daemon.
#[derive(Debug, Error)]
pub enum SandboxdError {
    #[error("creating the state directory {path}: {source}")]
    StateDir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("setting up the socket {path}: {source}")]
    Socket {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot use the socket {path}: {reason}")]
    SocketInUse { path: PathBuf, reason: String },
    #[error(transparent)]
    Reaper(#[from] reaper::ReaperError),
    #[error("loading sandboxes: {0}")]
    Sandboxes(#[from] sandboxes::SandboxError),
    #[error(transparent)]
    Metrics(#[from] metrics::MetricsError),
    #[error("serving grpc on the unix socket: {0}")]
    Serve(#[source] tonic::transport::Error),
}
