//! Prometheus metrics of the file server and the `/metrics` HTTP endpoint.
//!
//! Counts operations per kind and outcome, times them, and counts bytes read and
//! written. Exposition only: nothing here changes behaviour.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::header::CONTENT_TYPE;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use prometheus_client::encoding::text::encode;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

/// Labels of the per-operation counter.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OpLabels {
    pub op: &'static str,
    pub outcome: &'static str,
}

/// Labels of the latency histogram.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OpKind {
    pub op: &'static str,
}

fn latency_histogram() -> Histogram {
    // 50 µs .. ~1.6 s
    Histogram::new(exponential_buckets(0.000_05, 2.0, 16))
}

/// All metrics of `berth-fsd serve`.
pub struct Metrics {
    registry: Registry,
    ops: Family<OpLabels, Counter>,
    latency: Family<OpKind, Histogram, fn() -> Histogram>,
    bytes_read: Counter,
    bytes_written: Counter,
    /// Promise breaks sent to mounts, and those a silent mount had to be waited out for.
    pub promise_breaks: Counter,
    pub promise_timeouts: Counter,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("berth_fsd");
        let ops = Family::<OpLabels, Counter>::default();
        let latency =
            Family::<OpKind, Histogram, fn() -> Histogram>::new_with_constructor(latency_histogram);
        let bytes_read = Counter::default();
        let bytes_written = Counter::default();
        registry.register("ops", "Volume operations by kind and outcome", ops.clone());
        registry.register(
            "op_duration_seconds",
            "Latency of volume operations",
            latency.clone(),
        );
        registry.register("read_bytes", "File bytes read", bytes_read.clone());
        registry.register("written_bytes", "File bytes written", bytes_written.clone());
        let promise_breaks = Counter::default();
        let promise_timeouts = Counter::default();
        registry.register(
            "promise_breaks",
            "Callback promises broken (one per mount and change)",
            promise_breaks.clone(),
        );
        registry.register(
            "promise_break_timeouts",
            "Breaks a mount did not acknowledge: the change waited out the promise lifetime",
            promise_timeouts.clone(),
        );
        Self {
            registry,
            ops,
            latency,
            bytes_read,
            bytes_written,
            promise_breaks,
            promise_timeouts,
        }
    }

    /// Records one finished operation.
    pub fn observe(&self, op: &'static str, outcome: &'static str, elapsed: Duration) {
        self.ops.get_or_create(&OpLabels { op, outcome }).inc();
        self.latency
            .get_or_create(&OpKind { op })
            .observe(elapsed.as_secs_f64());
    }

    pub fn add_read(&self, bytes: u64) {
        self.bytes_read.inc_by(bytes);
    }

    pub fn add_written(&self, bytes: u64) {
        self.bytes_written.inc_by(bytes);
    }

    /// The text exposition format.
    pub fn render(&self) -> String {
        render(&self.registry)
    }
}

/// `registry` in the text exposition format.
fn render(registry: &Registry) -> String {
    let mut out = String::new();
    if let Err(err) = encode(&mut out, registry) {
        tracing::error!(%err, "encoding metrics failed");
    }
    out
}

/// Labels of the mount's counters of how a request was answered.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Answered {
    /// `promise` (from what the server promised, no round trip) or `server`.
    pub by: &'static str,
}

/// Metrics of `berth-fsd mount` (served with `--metrics-listen`).
#[derive(Debug)]
pub struct MountMetrics {
    registry: Registry,
    /// Opens, by how their check of names and version was answered.
    pub opens: Family<Answered, Counter>,
    /// Path lookups, by how they were answered.
    pub lookups: Family<Answered, Counter>,
    /// Promise breaks received from the server.
    pub breaks: Counter,
    /// Watch streams opened (1 plus reconnections).
    pub streams: Counter,
}

impl Default for MountMetrics {
    fn default() -> Self {
        Self::new()
    }
}

impl MountMetrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("berth_fsd_mount");
        let opens = Family::<Answered, Counter>::default();
        let lookups = Family::<Answered, Counter>::default();
        let breaks = Counter::default();
        let streams = Counter::default();
        registry.register(
            "opens",
            "Opens, by whether a promise or the server answered their check",
            opens.clone(),
        );
        registry.register(
            "lookups",
            "Path lookups, by whether a promise or the server answered them",
            lookups.clone(),
        );
        registry.register(
            "promise_breaks",
            "Promise breaks received from the file server",
            breaks.clone(),
        );
        registry.register(
            "watch_streams",
            "Watch streams opened to the file server",
            streams.clone(),
        );
        Self {
            registry,
            opens,
            lookups,
            breaks,
            streams,
        }
    }

    /// Counts an open (`by_promise`: answered without a round trip).
    pub fn open(&self, by_promise: bool) {
        self.opens.get_or_create(&answered(by_promise)).inc();
    }

    /// Counts a path lookup (`by_promise`: answered without a round trip).
    pub fn lookup(&self, by_promise: bool) {
        self.lookups.get_or_create(&answered(by_promise)).inc();
    }
}

fn answered(by_promise: bool) -> Answered {
    Answered {
        by: if by_promise { "promise" } else { "server" },
    }
}

/// A set of metrics served on `GET /metrics`.
pub trait Exposition: Send + Sync + 'static {
    fn registry(&self) -> &Registry;
}

impl Exposition for Metrics {
    fn registry(&self) -> &Registry {
        &self.registry
    }
}

impl Exposition for MountMetrics {
    fn registry(&self) -> &Registry {
        &self.registry
    }
}

async fn metrics_handler<M: Exposition>(State(metrics): State<Arc<M>>) -> impl IntoResponse {
    (
        [(
            CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        render(metrics.registry()),
    )
}

/// Serves `GET /metrics` on `listener` until `shutdown` resolves.
pub async fn serve_metrics<M: Exposition>(
    listener: tokio::net::TcpListener,
    metrics: Arc<M>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let app = Router::new()
        .route("/metrics", get(metrics_handler::<M>))
        .with_state(metrics);
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await
}

/// Binds the metrics address (so a taken port fails at start-up).
pub async fn bind(addr: SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind(addr).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counters() {
        let m = Metrics::new();
        m.observe("read", "ok", Duration::from_millis(1));
        m.add_written(42);
        let text = m.render();
        assert!(text.contains("berth_fsd_ops_total{op=\"read\",outcome=\"ok\"} 1"));
        assert!(text.contains("berth_fsd_written_bytes_total 42"));
        assert!(text.contains("berth_fsd_op_duration_seconds_bucket"));
    }

    #[test]
    fn renders_mount_counters() {
        let m = MountMetrics::new();
        m.open(true);
        m.open(true);
        m.lookup(false);
        let text = render(m.registry());
        assert!(
            text.contains("berth_fsd_mount_opens_total{by=\"promise\"} 2"),
            "{text}"
        );
        assert!(
            text.contains("berth_fsd_mount_lookups_total{by=\"server\"} 1"),
            "{text}"
        );
    }
}
