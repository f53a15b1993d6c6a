//! Berth's shared types. Daemons depend on this crate, never on each other.
//!
//! - [`control`]: agent ↔ controller (register, heartbeat, watch assignments, report)
//!   and front end ↔ controller (watch routes). Watch streams resume from a revision.
//! - [`sandbox`]: agent ↔ sandboxd over a Unix socket on the worker.
//! - [`volume`]: FUSE client ↔ fsd, inode-level file operations on a volume.
//! - [`rest`]: JSON bodies of the controller's public REST API (used by the CLI).
//! - [`names`]: validation of user-chosen names shared by the API and the CLI.
//! - [`size`]: byte sizes with units, as flags spell them.

pub mod names;
pub mod rest;
pub mod size;

#[allow(clippy::all, clippy::pedantic)]
pub mod control {
    tonic::include_proto!("berth.control.v1");
}

#[allow(clippy::all, clippy::pedantic)]
pub mod sandbox {
    tonic::include_proto!("berth.sandbox.v1");
}

#[allow(clippy::all, clippy::pedantic)]
pub mod volume {
    tonic::include_proto!("berth.volume.v1");
}

/// gRPC metadata key carrying a POSIX errno on failed `volume` calls, so the FUSE
/// client can hand the exact error (ENOENT, EEXIST, ENOTEMPTY, …) to the kernel.
pub const ERRNO_METADATA_KEY: &str = "x-berth-errno";

/// Well-known default ports of a single-machine scale unit (`berth up`). Every daemon
/// takes its addresses as flags; these are only the embedded defaults.
pub mod ports {
    /// Controller public REST API (+ `/metrics`).
    pub const CONTROLLER_API: u16 = 7700;
    /// Controller internal gRPC (workers, routes).
    pub const CONTROLLER_GRPC: u16 = 7701;
    /// File server gRPC.
    pub const FSD: u16 = 7702;
    /// Agent ingress (front ends forward here).
    pub const AGENT_INGRESS: u16 = 7703;
    /// Agent `/metrics`.
    pub const AGENT_METRICS: u16 = 7704;
    /// sandboxd `/metrics`.
    pub const SANDBOXD_METRICS: u16 = 7705;
    /// fsd `/metrics`.
    pub const FSD_METRICS: u16 = 7706;
    /// Front end `/metrics`.
    pub const FRONTEND_METRICS: u16 = 7707;
    /// Front end public HTTP.
    pub const FRONTEND_HTTP: u16 = 8080;
}
