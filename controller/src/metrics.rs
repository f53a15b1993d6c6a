//! Prometheus metrics served on `/metrics`: HTTP requests by route and status, and
//! gauges (sites, instances by state, live workers) refreshed at scrape time.

use prometheus_client::encoding::text::encode;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HttpLabels {
    pub route: String,
    pub status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StateLabels {
    pub state: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StreamLabels {
    pub stream: String,
}

pub struct Metrics {
    registry: Registry,
    pub http_requests: Family<HttpLabels, Counter>,
    pub sites: Gauge,
    pub instances: Family<StateLabels, Gauge>,
    pub workers_live: Gauge,
    pub workers_registered: Gauge,
    pub watch_streams: Family<StreamLabels, Gauge>,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("berth_controller");
        let http_requests = Family::<HttpLabels, Counter>::default();
        registry.register(
            "http_requests",
            "REST requests by route and status",
            http_requests.clone(),
        );
        let sites = Gauge::default();
        registry.register("sites", "Sites in desired state", sites.clone());
        let instances = Family::<StateLabels, Gauge>::default();
        registry.register("instances", "Instances by state", instances.clone());
        let workers_live = Gauge::default();
        registry.register(
            "workers_live",
            "Workers currently live",
            workers_live.clone(),
        );
        let workers_registered = Gauge::default();
        registry.register(
            "workers_registered",
            "Workers ever registered",
            workers_registered.clone(),
        );
        let watch_streams = Family::<StreamLabels, Gauge>::default();
        registry.register(
            "watch_streams",
            "Open gRPC watch streams",
            watch_streams.clone(),
        );
        Self {
            registry,
            http_requests,
            sites,
            instances,
            workers_live,
            workers_registered,
            watch_streams,
        }
    }
}

impl Metrics {
    pub fn record_http(&self, route: &str, status: u16) {
        self.http_requests
            .get_or_create(&HttpLabels {
                route: route.to_string(),
                status,
            })
            .inc();
    }

    pub fn render(&self) -> String {
        let mut out = String::new();
        encode(&mut out, &self.registry).expect("writing to a String cannot fail");
        out
    }
}
