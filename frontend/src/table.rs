//! The routing table: hostname -> site -> ready endpoints, built from the controller's
//! `RouteTable` snapshot.
//!
//! A table is immutable once built and shared behind an `ArcSwap`; everything the
//! request path needs (header values, parsed authorities, metric handles) is prepared
//! here so forwarding a request allocates as little as possible. Round-robin counters
//! carry over from the previous table for sites that still exist, so a table update
//! does not send the next burst of requests to the first endpoint.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use berth_api::control;
use http::uri::Authority;
use http::HeaderValue;
use tracing::warn;

use crate::metrics::{Metrics, StatusCounters};

/// One ready instance of a site, reachable through its worker's agent ingress.
#[derive(Debug)]
pub struct Endpoint {
    pub instance_id: Box<str>,
    /// `x-berth-instance` value the agent dispatches on.
    pub instance_header: HeaderValue,
    /// The agent ingress (`host:port`) requests are forwarded to.
    pub authority: Authority,
}

/// A site and its ready endpoints.
#[derive(Debug)]
pub struct Site {
    pub name: Box<str>,
    /// `x-berth-site` value.
    pub name_header: HeaderValue,
    pub endpoints: Box<[Endpoint]>,
    pub counters: StatusCounters,
    next: Arc<AtomicUsize>,
}

impl Site {
    /// Index of the endpoint to try first for the next request (round robin), `None`
    /// when the site has no ready endpoint. A retry goes to the index after it.
    pub fn pick(&self) -> Option<usize> {
        let len = self.endpoints.len();
        (len > 0).then(|| self.next.fetch_add(1, Ordering::Relaxed) % len)
    }
}

/// An immutable routing table at one revision.
#[derive(Debug, Default)]
pub struct RouteTable {
    pub revision: u64,
    hosts: HashMap<Box<str>, Arc<Site>>,
    sites: usize,
}

impl RouteTable {
    /// The site served at `host` (already normalised by [`crate::host::normalize`]).
    pub fn lookup(&self, host: &str) -> Option<&Arc<Site>> {
        self.hosts.get(host)
    }

    /// Whether this table came from the controller (revision 0 is the empty table the
    /// front end starts with; the controller never sends it).
    pub fn is_loaded(&self) -> bool {
        self.revision > 0
    }

    /// Number of sites (not hostnames) in the table.
    pub fn site_count(&self) -> usize {
        self.sites
    }

    /// Builds the table for a controller snapshot. Each site is reachable at its
    /// listed hostnames and at `<site>.<domain>`. Endpoints with an unusable address or
    /// instance id are left out (and logged) rather than failing the whole table.
    pub fn build(snapshot: control::RouteTable, previous: &RouteTable, metrics: &Metrics) -> Self {
        let mut hosts = HashMap::new();
        let mut sites = 0;
        let domain = snapshot.domain.trim_matches('.').to_ascii_lowercase();
        let counters: HashMap<&str, &Arc<AtomicUsize>> = previous
            .hosts
            .values()
            .map(|s| (&*s.name, &s.next))
            .collect();
        for route in snapshot.sites {
            let Ok(name_header) = HeaderValue::from_str(&route.site) else {
                warn!(site = %route.site.escape_debug(), "ignoring site with a name unusable in a header");
                continue;
            };
            let endpoints: Box<[Endpoint]> = route
                .endpoints
                .into_iter()
                .filter_map(|ep| endpoint(&route.site, ep))
                .collect();
            let next = counters
                .get(route.site.as_str())
                .map_or_else(Default::default, |&next| next.clone());
            let site = Arc::new(Site {
                counters: metrics.site_counters(&route.site),
                name: route.site.into(),
                name_header,
                endpoints,
                next,
            });
            sites += 1;
            let derived = (!domain.is_empty()).then(|| format!("{}.{domain}", site.name));
            for hostname in route.hostnames.into_iter().chain(derived) {
                let key = hostname.trim_end_matches('.').to_ascii_lowercase();
                if let Some(other) = hosts.insert(key.into_boxed_str(), site.clone()) {
                    if other.name != site.name {
                        warn!(hostname, first = %other.name, second = %site.name, "hostname listed for two sites, using the second");
                    }
                }
            }
        }
        RouteTable {
            revision: snapshot.revision,
            hosts,
            sites,
        }
    }
}

fn endpoint(site: &str, ep: control::Endpoint) -> Option<Endpoint> {
    let authority = match ep.ingress_addr.parse::<Authority>() {
        Ok(a) if a.port().is_some() => a,
        _ => {
            warn!(site, instance = %ep.instance_id, addr = %ep.ingress_addr.escape_debug(), "ignoring endpoint: ingress address is not host:port");
            return None;
        }
    };
    let Ok(instance_header) = HeaderValue::from_str(&ep.instance_id) else {
        warn!(site, instance = %ep.instance_id.escape_debug(), "ignoring endpoint: instance id unusable in a header");
        return None;
    };
    Some(Endpoint {
        instance_id: ep.instance_id.into(),
        instance_header,
        authority,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snapshot(revision: u64, sites: &[(&str, &[&str])]) -> control::RouteTable {
        control::RouteTable {
            revision,
            domain: "localhost".into(),
            sites: sites
                .iter()
                .map(|(site, eps)| control::SiteRoute {
                    site: site.to_string(),
                    hostnames: vec![format!("www.{site}.example")],
                    endpoints: eps
                        .iter()
                        .enumerate()
                        .map(|(i, addr)| control::Endpoint {
                            instance_id: format!("{site}-{i}"),
                            ingress_addr: addr.to_string(),
                        })
                        .collect(),
                })
                .collect(),
        }
    }

    #[test]
    fn looks_up_listed_and_derived_hostnames() {
        let m = Metrics::new();
        let t = RouteTable::build(
            snapshot(3, &[("hello", &["127.0.0.1:7703"]), ("empty", &[])]),
            &RouteTable::default(),
            &m,
        );
        assert_eq!(t.revision, 3);
        assert_eq!(t.site_count(), 2);
        assert_eq!(&*t.lookup("hello.localhost").unwrap().name, "hello");
        assert_eq!(&*t.lookup("www.hello.example").unwrap().name, "hello");
        assert!(t.lookup("nope.localhost").is_none());
        assert_eq!(t.lookup("empty.localhost").unwrap().pick(), None);
    }

    #[test]
    fn skips_bad_endpoints() {
        let m = Metrics::new();
        let t = RouteTable::build(
            snapshot(1, &[("hello", &["no-port", "127.0.0.1:1", "bad addr:1"])]),
            &RouteTable::default(),
            &m,
        );
        let site = t.lookup("hello.localhost").unwrap();
        assert_eq!(site.endpoints.len(), 1);
        assert_eq!(&*site.endpoints[0].instance_id, "hello-1");
    }

    #[test]
    fn round_robin_cycles_and_survives_updates() {
        let m = Metrics::new();
        let eps: &[&str] = &["127.0.0.1:1", "127.0.0.1:2", "127.0.0.1:3"];
        let t1 = RouteTable::build(snapshot(1, &[("rr", eps)]), &RouteTable::default(), &m);
        let site = t1.lookup("rr.localhost").unwrap();
        let picks: Vec<_> = (0..6).map(|_| site.pick().unwrap()).collect();
        assert_eq!(picks, [0, 1, 2, 0, 1, 2]);
        site.pick();
        // The counter continues in the next table instead of restarting at 0.
        let t2 = RouteTable::build(snapshot(2, &[("rr", eps)]), &t1, &m);
        assert_eq!(t2.lookup("rr.localhost").unwrap().pick(), Some(1));
    }

    #[test]
    fn round_robin_is_fair_across_threads() {
        let m = Metrics::new();
        let eps: &[&str] = &["127.0.0.1:1", "127.0.0.1:2"];
        let t = RouteTable::build(snapshot(1, &[("rr", eps)]), &RouteTable::default(), &m);
        let site = t.lookup("rr.localhost").unwrap().clone();
        let counts: Vec<[usize; 2]> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..4)
                .map(|_| {
                    s.spawn(|| {
                        let mut c = [0; 2];
                        for _ in 0..1000 {
                            c[site.pick().unwrap()] += 1;
                        }
                        c
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        let total = counts
            .iter()
            .fold([0; 2], |a, c| [a[0] + c[0], a[1] + c[1]]);
        assert_eq!(total, [2000, 2000]);
    }
}
