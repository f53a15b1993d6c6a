//! JSON bodies of the controller's public REST API (`/v1/...`).
//!
//! Request types use `deny_unknown_fields` so a typo is an error, not a silent no-op.
//! Every error response is an [`ApiError`] body with a message that says what to do.

use serde::{Deserialize, Serialize};

/// `POST /v1/sites`
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateSite {
    pub name: String,
    /// Image reference, e.g. `127.0.0.1:5000/hello:1` or `registry/app@sha256:...`.
    pub image: String,
    /// Desired instance count (default 1).
    #[serde(default)]
    pub instances: Option<i64>,
    /// App settings, passed to every instance as environment variables.
    #[serde(default)]
    pub env: std::collections::BTreeMap<String, String>,
    /// Port the app listens on inside its sandbox (default 8080); given to it as `PORT`.
    #[serde(default)]
    pub port: Option<u32>,
    /// Allow plain HTTP to the registry (default: true for loopback registries only).
    #[serde(default)]
    pub insecure_registry: Option<bool>,
    /// Registry credentials `user:password`, if the image is private.
    #[serde(default)]
    pub registry_auth: Option<String>,
    /// Copy the site's `/home` to the worker's disk before each instance starts and
    /// give the instance that copy (`BERTH_LOCALCACHE_READY=1`); its writes stay local
    /// and are lost when the instance stops (docs/home-semantics.md, "Local cache").
    #[serde(default)]
    pub local_cache: bool,
}

/// `POST /v1/sites/{name}/scale`
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Scale {
    pub instances: i64,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Instance {
    pub id: String,
    pub worker: String,
    /// pending | starting | ready | failed | stopped
    pub state: String,
    #[serde(default)]
    pub message: String,
    /// While starting: bytes of the image pulled so far and in all (0 when not pulling).
    #[serde(default)]
    pub pull_done_bytes: u64,
    #[serde(default)]
    pub pull_total_bytes: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Site {
    pub name: String,
    /// The reference the user gave.
    pub image: String,
    /// The same image pinned by digest at create time.
    pub image_digest: String,
    pub instances: i64,
    pub port: u32,
    pub hostname: String,
    pub url: String,
    pub env: std::collections::BTreeMap<String, String>,
    /// `/home` is copied to each instance's worker before it starts (see CreateSite).
    #[serde(default)]
    pub local_cache: bool,
    pub created_at: String,
    pub instance_states: Vec<Instance>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SiteList {
    pub sites: Vec<Site>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Worker {
    pub id: String,
    pub name: String,
    pub ingress_addr: String,
    pub capacity_instances: u32,
    pub up: bool,
    pub instances: u32,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WorkerList {
    pub workers: Vec<Worker>,
}

/// Body of every non-2xx response.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ApiError {
    /// Machine-readable: `invalid_request`, `not_found`, `conflict`, `unauthorized`,
    /// `bad_image`, `registry_unreachable`, `internal`.
    pub code: String,
    /// What failed, on what, and what to do.
    pub message: String,
}
