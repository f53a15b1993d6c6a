//! berth-controller: the control plane of a Berth scale unit.
//!
//! A REST request (`rest`) is authenticated (`auth`), validated, its image checked
//! against the registry (`images`), and then desired state changes in one SQLite
//! transaction (`store`) that also places new instances on workers (`placement`,
//! using `liveness`) and bumps the revision. The revision wakes the gRPC watch
//! streams (`grpc`): agents receive their assignments, front ends their routing
//! table. `server` wires it all together; `metrics` feeds `/metrics`.

pub mod auth;
pub mod context;
pub mod grpc;
pub mod images;
pub mod liveness;
pub mod metrics;
pub mod placement;
pub mod registry;
pub mod rest;
pub mod server;
pub mod store;

pub use context::Controller;
pub use images::{ImageError, ImageResolver};
pub use server::{run, Config, ServerError};
