//! Prometheus metrics of the agent and the `/metrics` HTTP endpoint.

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tracing::{debug, info};

/// Instance state label.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StateLabels {
    pub state: &'static str,
}

/// Start phase label.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub enum Phase {
    Pull,
    Mount,
    Sandbox,
    Health,
    Total,
}

impl Phase {
    /// Lower-case label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Pull => "pull",
            Phase::Mount => "mount",
            Phase::Sandbox => "sandbox",
            Phase::Health => "health",
            Phase::Total => "total",
        }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PhaseLabels {
    pub phase: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StatusLabels {
    pub code: u16,
}

/// Every metric the agent exports.
pub struct Metrics {
    registry: Registry,
    pub instances: Family<StateLabels, Gauge>,
    pub starts: Counter,
    pub failures: Counter,
    pub start_seconds: Family<PhaseLabels, Histogram>,
    pub ingress_requests: Family<StatusLabels, Counter>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("berth_agent");
        let instances = Family::<StateLabels, Gauge>::default();
        registry.register("instances", "Local instances by state", instances.clone());
        let starts = Counter::default();
        registry.register("instance_starts", "Instance start attempts", starts.clone());
        let failures = Counter::default();
        registry.register(
            "instance_failures",
            "Instance start failures and app exits",
            failures.clone(),
        );
        let start_seconds = Family::<PhaseLabels, Histogram>::new_with_constructor(|| {
            Histogram::new(exponential_buckets(0.005, 2.0, 16))
        });
        registry.register(
            "instance_start_seconds",
            "Duration of instance start phases (pull, mount, sandbox, health, total)",
            start_seconds.clone(),
        );
        let ingress_requests = Family::<StatusLabels, Counter>::default();
        registry.register(
            "ingress_requests",
            "Requests through the ingress port by response status",
            ingress_requests.clone(),
        );
        Self {
            registry,
            instances,
            starts,
            failures,
            start_seconds,
            ingress_requests,
        }
    }

    /// Adds a collector read on every scrape (e.g. per-instance network figures).
    pub fn register_collector(
        &mut self,
        collector: Box<dyn prometheus_client::collector::Collector>,
    ) {
        self.registry.register_collector(collector);
    }

    /// Observes one start phase.
    pub fn phase(&self, phase: Phase, seconds: f64) {
        self.start_seconds
            .get_or_create(&PhaseLabels {
                phase: phase.as_str(),
            })
            .observe(seconds);
    }

    /// Text exposition of every metric.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        if prometheus_client::encoding::text::encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }
}

/// Serves `GET /metrics` on `listener` until the task is dropped.
pub async fn serve(listener: TcpListener, metrics: Arc<Metrics>) {
    let addr: Option<SocketAddr> = listener.local_addr().ok();
    info!(?addr, "metrics listening");
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let metrics = metrics.clone();
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                let metrics = metrics.clone();
                async move {
                    let resp = if req.uri().path() == "/metrics" {
                        Response::builder()
                            .header(
                                "content-type",
                                "application/openmetrics-text; version=1.0.0; charset=utf-8",
                            )
                            .body(Full::new(Bytes::from(metrics.encode())))
                    } else {
                        Response::builder()
                            .status(StatusCode::NOT_FOUND)
                            .body(Full::new(Bytes::from_static(b"not found: try /metrics\n")))
                    };
                    Ok::<_, http::Error>(resp.expect("static response parts are valid"))
                }
            });
            if let Err(e) = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), svc)
                .await
            {
                debug!(error = %e, "metrics connection ended with an error");
            }
        });
    }
}
