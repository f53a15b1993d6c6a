//! Prometheus metrics of the front end and the `/metrics` text encoding.
//!
//! Per-site counters are resolved once when a routing table is built
//! ([`Metrics::site_counters`]), so the request path only bumps atomics: it never takes
//! the family's lock or allocates label values.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

/// Site label of requests that matched no site (unknown or missing host). Site names
/// cannot contain it, so it never collides with a real site.
pub const NO_SITE: &str = "-";

const CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    site: String,
    class: &'static str,
}

/// All metrics of one front end process.
pub struct Metrics {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    unrouted: StatusCounters,
    /// Time from sending a request upstream to receiving its response head.
    pub upstream_latency: Histogram,
    /// Connect failures to an endpoint (each one retried on the next endpoint if any).
    pub connect_errors: Counter,
    /// Revision of the routing table in use.
    pub table_revision: Gauge,
    /// Number of sites in the routing table in use.
    pub sites: Gauge,
}

/// Request counters of one site, one per status class.
#[derive(Clone, Debug)]
pub struct StatusCounters([Counter; 5]);

impl StatusCounters {
    /// Counts one response with `status`.
    pub fn observe(&self, status: http::StatusCode) {
        let class = usize::from(status.as_u16() / 100).clamp(1, 5) - 1;
        self.0[class].inc();
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("berth_frontend");
        let requests = Family::<RequestLabels, Counter>::default();
        registry.register(
            "requests",
            "HTTP requests answered, by site and status class",
            requests.clone(),
        );
        let upstream_latency = Histogram::new(exponential_buckets(0.0005, 2.0, 16));
        registry.register(
            "upstream_latency_seconds",
            "Time from forwarding a request to an instance to its response head",
            upstream_latency.clone(),
        );
        let connect_errors = Counter::default();
        registry.register(
            "upstream_connect_errors",
            "Connections to an instance's worker that could not be made",
            connect_errors.clone(),
        );
        let table_revision = Gauge::default();
        registry.register(
            "routing_table_revision",
            "Revision of the routing table in use",
            table_revision.clone(),
        );
        let sites = Gauge::default();
        registry.register("sites", "Sites in the routing table in use", sites.clone());
        let mut metrics = Metrics {
            registry,
            requests,
            unrouted: StatusCounters(Default::default()),
            upstream_latency,
            connect_errors,
            table_revision,
            sites,
        };
        metrics.unrouted = metrics.site_counters(NO_SITE);
        metrics
    }

    /// The counters of `site`, created on first use.
    pub fn site_counters(&self, site: &str) -> StatusCounters {
        StatusCounters(CLASSES.map(|class| {
            self.requests
                .get_or_create(&RequestLabels {
                    site: site.to_owned(),
                    class,
                })
                .clone()
        }))
    }

    /// Counters of requests that matched no site.
    pub fn unrouted(&self) -> &StatusCounters {
        &self.unrouted
    }

    /// The Prometheus text exposition of every metric.
    pub fn encode(&self) -> String {
        let mut out = String::with_capacity(4096);
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_by_site_and_class() {
        let m = Metrics::new();
        let hello = m.site_counters("hello");
        hello.observe(http::StatusCode::OK);
        hello.observe(http::StatusCode::BAD_GATEWAY);
        m.site_counters("hello").observe(http::StatusCode::OK);
        m.unrouted().observe(http::StatusCode::NOT_FOUND);
        let text = m.encode();
        assert!(
            text.contains(r#"berth_frontend_requests_total{site="hello",class="2xx"} 2"#),
            "{text}"
        );
        assert!(text.contains(r#"berth_frontend_requests_total{site="hello",class="5xx"} 1"#));
        assert!(text.contains(r#"berth_frontend_requests_total{site="-",class="4xx"} 1"#));
    }
}
