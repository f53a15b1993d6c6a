//! berth-agent: the web worker daemon.
//!
//! The agent registers its worker with the controller and keeps a WatchAssignments
//! stream open ([`control`]). Every snapshot goes to the [`supervisor::Reconciler`], which
//! diffs it against the local instances ([`reconcile`]) and runs one supervisor task per
//! instance. A start ([`instance`]) pulls the image and mounts an overlay root filesystem
//! ([`image`]), mounts the site's `/home` volume with `berth-fsd mount` ([`volumes`]),
//! (idmapped to the site's own host id range, [`idmap`]), mounts the site's `/home`
//! volume with `berth-fsd mount` ([`volumes`]),
//! makes a network namespace with `lo` up ([`netns`]) and gives it egress through a veth,
//! NAT and Berth's firewall ([`network`]), asks sandboxd to create and start
//! the sandbox ([`sandbox`], arguments and environment from [`spec`]) and probes the app
//! over HTTP inside the namespace before reporting it ready.
//!
//! Requests arrive on the ingress port ([`ingress`]) from front ends, tagged with
//! `x-berth-instance`, and are relayed to the app through a connection opened inside its
//! namespace. [`metrics`] serves Prometheus `/metrics`; [`daemon`] ties it all together.

pub mod admin;
pub mod control;
pub mod daemon;
pub mod gc;
pub mod idmap;
pub mod image;
pub mod ingress;
pub mod instance;
pub mod localcache;
pub mod logtail;
pub mod metrics;
pub mod netns;
pub mod network;
pub mod reconcile;
pub mod sandbox;
pub mod spec;
pub mod state;
pub mod supervisor;
pub mod volumes;

pub use daemon::run;
pub use state::{Agent, Config};
