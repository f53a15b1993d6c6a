//! Prometheus metrics of the daemon and the `/metrics` HTTP endpoint.
//!
//! Counts and timings of the daemon, OOM kills per site
//! (`berth_sandboxd_oom_kills_total{site}`) and per-instance usage gauges labelled
//! with site and instance (both names the platform validated); never paths, env or
//! anything else a tenant chose.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::http::header::CONTENT_TYPE;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use prometheus_client::encoding::text::encode;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use thiserror::Error;

/// Errors of serving metrics.
#[derive(Debug, Error)]
pub enum MetricsError {
    #[error("binding the metrics listener on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("serving metrics: {0}")]
    Serve(#[source] std::io::Error),
}

/// Label of per-site series.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SiteLabel {
    pub site: String,
}

/// Labels of per-instance series.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct InstanceLabels {
    pub site: String,
    pub instance: String,
}

/// The daemon's metrics.
pub struct Metrics {
    /// Processes the kernel OOM-killed inside sandboxes, by site.
    pub oom_kills: Family<SiteLabel, Counter>,
    /// CPU time used by an instance, in nanoseconds.
    pub cpu_usage_ns: Family<InstanceLabels, Gauge>,
    /// Memory charged to an instance's cgroup.
    pub memory_bytes: Family<InstanceLabels, Gauge>,
    /// Processes (tasks) in an instance.
    pub pids: Family<InstanceLabels, Gauge>,
    registry: Registry,
    /// Sandboxes whose process is running.
    pub running: Gauge,
    /// Wall time of Create (bundle, helper, libcontainer create).
    pub create_seconds: Histogram,
    /// Successful starts.
    pub starts: Counter,
    /// Failed creates and starts.
    pub failures: Counter,
    /// Log files cut back to their cap, by site.
    pub log_rotations: Family<SiteLabel, Counter>,
    /// Log bytes dropped by those cuts, by site.
    pub log_dropped_bytes: Family<SiteLabel, Counter>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Registers every metric.
    pub fn new() -> Self {
        let mut registry = Registry::default();
        let running = Gauge::default();
        let create_seconds =
            Histogram::new([0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0]);
        let starts = Counter::default();
        let failures = Counter::default();
        registry.register(
            "sandboxes_running",
            "Sandboxes whose process is running",
            running.clone(),
        );
        registry.register(
            "sandbox_create_seconds",
            "Time to create a sandbox (bundle, helper process, libcontainer create)",
            create_seconds.clone(),
        );
        registry.register("sandbox_starts", "Sandboxes started", starts.clone());
        registry.register(
            "sandbox_failures",
            "Sandbox creates or starts that failed",
            failures.clone(),
        );
        let oom_kills = Family::<SiteLabel, Counter>::default();
        registry.register(
            "berth_sandboxd_oom_kills",
            "Processes the kernel OOM-killed inside sandboxes, by site",
            oom_kills.clone(),
        );
        let cpu_usage_ns = Family::<InstanceLabels, Gauge>::default();
        registry.register(
            "berth_sandboxd_instance_cpu_usage_nanoseconds",
            "CPU time used by the instance's cgroup",
            cpu_usage_ns.clone(),
        );
        let memory_bytes = Family::<InstanceLabels, Gauge>::default();
        registry.register(
            "berth_sandboxd_instance_memory_bytes",
            "Memory charged to the instance's cgroup",
            memory_bytes.clone(),
        );
        let pids = Family::<InstanceLabels, Gauge>::default();
        registry.register(
            "berth_sandboxd_instance_pids",
            "Processes in the instance's cgroup",
            pids.clone(),
        );
        let log_rotations = Family::<SiteLabel, Counter>::default();
        registry.register(
            "berth_sandboxd_log_rotations",
            "Sandbox log files cut back to the log cap, by site",
            log_rotations.clone(),
        );
        let log_dropped_bytes = Family::<SiteLabel, Counter>::default();
        registry.register(
            "berth_sandboxd_log_dropped_bytes",
            "Log bytes dropped when a sandbox log file was cut back, by site",
            log_dropped_bytes.clone(),
        );
        Self {
            registry,
            log_rotations,
            log_dropped_bytes,
            oom_kills,
            cpu_usage_ns,
            memory_bytes,
            pids,
            running,
            create_seconds,
            starts,
            failures,
        }
    }

    /// The text exposition of every metric.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        encode(&mut out, &self.registry).expect("encoding metrics into a string");
        out
    }
}

/// Serves `GET /metrics` on `addr` until `shutdown` resolves.
pub async fn serve(
    addr: SocketAddr,
    metrics: Arc<Metrics>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), MetricsError> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| MetricsError::Bind { addr, source })?;
    let app = Router::new().route(
        "/metrics",
        get(move || {
            let metrics = metrics.clone();
            async move {
                (
                    [(
                        CONTENT_TYPE,
                        "application/openmetrics-text; version=1.0.0; charset=utf-8",
                    )],
                    metrics.encode(),
                )
                    .into_response()
            }
        }),
    );
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await
        .map_err(MetricsError::Serve)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_names() {
        let m = Metrics::new();
        m.starts.inc();
        m.running.set(2);
        m.create_seconds.observe(0.02);
        m.oom_kills
            .get_or_create(&SiteLabel {
                site: "hello".into(),
            })
            .inc();
        let text = m.encode();
        for name in [
            "sandboxes_running 2",
            "sandbox_starts_total 1",
            "sandbox_failures_total 0",
            "sandbox_create_seconds_count 1",
            "berth_sandboxd_oom_kills_total{site=\"hello\"} 1",
        ] {
            assert!(text.contains(name), "missing {name} in {text}");
        }
    }
}
