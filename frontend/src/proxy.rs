//! The request path: Host -> site -> endpoint (round robin) -> forward to the worker's
//! agent ingress, retrying a failed connect once on the next endpoint.
//!
//! Never holds a lock across an await: the routing table is one `ArcSwap` load whose
//! guard is dropped before forwarding; the per-site round-robin counter is an atomic.

use std::convert::Infallible;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::uri::{PathAndQuery, Scheme, Uri};
use http::{Request, Response, StatusCode, Version};
use http_body_util::{Either, Full};
use hyper::body::Incoming;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tracing::{debug, field, info_span, warn, Instrument, Span};

use crate::body::{RetryableBody, UpstreamBody};
use crate::metrics::Metrics;
use crate::table::{RouteTable, Site};
use crate::{error_chain, host};

/// Body of responses to clients: an upstream body streamed through, or a short one of
/// our own (errors).
pub type ProxyBody = Either<Incoming, Full<Bytes>>;

static X_BERTH_INSTANCE: HeaderName = HeaderName::from_static("x-berth-instance");
static X_BERTH_SITE: HeaderName = HeaderName::from_static("x-berth-site");
static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");

/// How long to wait for a worker to accept a connection before trying the next one.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// Shared state of the request path.
pub struct Proxy {
    table: Arc<ArcSwap<RouteTable>>,
    client: Client<HttpConnector, UpstreamBody>,
    metrics: Arc<Metrics>,
}

/// What the proxy knows about the client connection a request came on.
#[derive(Clone)]
pub struct ClientConn {
    /// The client's IP as a header value, formatted once per connection.
    ip: HeaderValue,
}

impl ClientConn {
    pub fn new(ip: IpAddr) -> Self {
        ClientConn {
            // An IP address always formats to a valid header value.
            ip: HeaderValue::from_str(&ip.to_string()).expect("ip address is a header value"),
        }
    }
}

impl Proxy {
    pub fn new(table: Arc<ArcSwap<RouteTable>>, metrics: Arc<Metrics>) -> Self {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(CONNECT_TIMEOUT));
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(60))
            .pool_max_idle_per_host(256)
            .build(connector);
        Proxy {
            table,
            client,
            metrics,
        }
    }

    /// Answers one client request, in a span carrying site, instance and status.
    pub async fn handle(
        &self,
        req: Request<Incoming>,
        conn: &ClientConn,
    ) -> Result<Response<ProxyBody>, Infallible> {
        let span = info_span!(
            "request",
            method = %req.method(),
            path = req.uri().path(),
            site = field::Empty,
            instance = field::Empty,
            status = field::Empty,
        );
        let resp = self.route(req, conn, &span).instrument(span.clone()).await;
        span.record("status", resp.status().as_u16());
        debug!(parent: &span, status = resp.status().as_u16(), "answered");
        Ok(resp)
    }

    async fn route(
        &self,
        req: Request<Incoming>,
        conn: &ClientConn,
        span: &Span,
    ) -> Response<ProxyBody> {
        let Some(host) = host::raw_host(&req).and_then(host::normalize) else {
            self.metrics.unrouted().observe(StatusCode::BAD_REQUEST);
            return text(
                StatusCode::BAD_REQUEST,
                "the request names no valid host: send a Host header such as `<site>.localhost`\n"
                    .into(),
            );
        };
        let (site, loaded) = {
            let table = self.table.load();
            (table.lookup(&host).cloned(), table.is_loaded())
        };
        let Some(site) = site else {
            if !loaded {
                self.metrics
                    .unrouted()
                    .observe(StatusCode::SERVICE_UNAVAILABLE);
                let mut resp = text(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "the front end has not received its routing table from the controller yet: try again in a few seconds\n".into(),
                );
                resp.headers_mut()
                    .insert(header::RETRY_AFTER, HeaderValue::from_static("5"));
                return resp;
            }
            self.metrics.unrouted().observe(StatusCode::NOT_FOUND);
            return text(
                StatusCode::NOT_FOUND,
                format!("no site is served at {host}: check the site name, `berth sites list`\n"),
            );
        };
        span.record("site", &*site.name);
        let resp = self.forward(req, &site, conn, span).await;
        site.counters.observe(resp.status());
        resp
    }

    async fn forward(
        &self,
        req: Request<Incoming>,
        site: &Site,
        conn: &ClientConn,
        span: &Span,
    ) -> Response<ProxyBody> {
        let Some(first) = site.pick() else {
            let mut resp = text(
                StatusCode::SERVICE_UNAVAILABLE,
                format!(
                    "site {} has no ready instance yet: try again in a few seconds\n",
                    site.name
                ),
            );
            resp.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("5"));
            return resp;
        };
        let (parts, body) = req.into_parts();
        let body = RetryableBody::new(body);
        // Built again only for a retry, which is rare, rather than cloned up front.
        let mut headers = Some(upstream_headers(&parts, site, conn));
        let path = parts
            .uri
            .path_and_query()
            .cloned()
            .unwrap_or_else(|| PathAndQuery::from_static("/"));
        let attempts = site.endpoints.len().min(2);
        for attempt in 0..attempts {
            let endpoint = &site.endpoints[(first + attempt) % site.endpoints.len()];
            let Some(body) = body.attempt() else { break };
            let mut uri = http::uri::Parts::default();
            uri.scheme = Some(Scheme::HTTP);
            uri.authority = Some(endpoint.authority.clone());
            uri.path_and_query = Some(path.clone());
            let mut up = Request::new(body);
            *up.method_mut() = parts.method.clone();
            *up.uri_mut() = Uri::from_parts(uri).expect("scheme, authority and path make a uri");
            *up.version_mut() = Version::HTTP_11;
            let mut headers = headers
                .take()
                .unwrap_or_else(|| upstream_headers(&parts, site, conn));
            headers.insert(&X_BERTH_INSTANCE, endpoint.instance_header.clone());
            *up.headers_mut() = headers;

            let started = Instant::now();
            let result = self.client.request(up).await;
            if result.is_ok() || attempt + 1 == attempts {
                span.record("instance", &*endpoint.instance_id);
            }
            match result {
                Ok(resp) => {
                    self.metrics
                        .upstream_latency
                        .observe(started.elapsed().as_secs_f64());
                    let (mut parts, body) = resp.into_parts();
                    strip_hop_by_hop(&mut parts.headers);
                    return Response::from_parts(parts, Either::Left(body));
                }
                Err(err) if err.is_connect() => {
                    self.metrics.connect_errors.inc();
                    warn!(instance = %endpoint.instance_id, addr = %endpoint.authority, error = %error_chain(&err), "could not connect to instance");
                }
                Err(err) => {
                    warn!(addr = %endpoint.authority, error = %error_chain(&err), "forwarding to instance failed");
                    return text(
                        StatusCode::BAD_GATEWAY,
                        format!("site {} failed to answer: the request was sent to its instance but no response came back\n", site.name),
                    );
                }
            }
        }
        text(
            StatusCode::BAD_GATEWAY,
            format!(
                "site {} could not be reached: no instance accepted the connection\n",
                site.name
            ),
        )
    }
}

/// The headers sent upstream: the client's, minus hop-by-hop ones, plus Host (always
/// present: HTTP/2 clients send `:authority` instead), Berth's and the forwarding ones.
/// `x-berth-instance` is set per attempt. Client-sent `x-berth-*` values are replaced.
fn upstream_headers(parts: &http::request::Parts, site: &Site, conn: &ClientConn) -> HeaderMap {
    let src = &parts.headers;
    let mut headers = HeaderMap::with_capacity(src.len() + 6);
    for (name, value) in src {
        if !is_hop_by_hop(name, src) {
            headers.append(name.clone(), value.clone());
        }
    }
    let original_host = match (src.get(header::HOST), parts.uri.authority()) {
        (_, Some(authority)) => HeaderValue::from_str(authority.as_str()).ok(),
        (Some(host), None) => Some(host.clone()),
        (None, None) => None,
    };
    if let Some(host) = original_host {
        headers.insert(header::HOST, host.clone());
        headers.insert(&X_FORWARDED_HOST, host);
    }
    headers.insert(&X_BERTH_SITE, site.name_header.clone());
    headers.insert(&X_FORWARDED_PROTO, HeaderValue::from_static("http"));
    let xff = match headers.get(&X_FORWARDED_FOR) {
        None => conn.ip.clone(),
        Some(_) => append_forwarded_for(src, &conn.ip),
    };
    headers.insert(&X_FORWARDED_FOR, xff);
    headers
}

/// `X-Forwarded-For` with the client's IP appended to whatever proxies before us sent
/// (several header lines are folded into one, as RFC 9110 allows).
fn append_forwarded_for(src: &HeaderMap, ip: &HeaderValue) -> HeaderValue {
    let mut joined = Vec::with_capacity(64);
    for value in src.get_all(&X_FORWARDED_FOR) {
        joined.extend_from_slice(value.as_bytes());
        joined.extend_from_slice(b", ");
    }
    joined.extend_from_slice(ip.as_bytes());
    // Made of valid header values and ", ": still valid.
    HeaderValue::from_maybe_shared(Bytes::from(joined)).unwrap_or_else(|_| ip.clone())
}

/// Hop-by-hop headers (RFC 9110 7.6.1) and any header the `Connection` header names.
fn is_hop_by_hop(name: &HeaderName, headers: &HeaderMap) -> bool {
    let name_str = name.as_str();
    matches!(
        name_str,
        "connection" | "keep-alive" | "te" | "trailer" | "transfer-encoding" | "upgrade"
    ) || name_str.starts_with("proxy-")
        || headers.get_all(header::CONNECTION).iter().any(|v| {
            v.to_str().is_ok_and(|v| {
                v.split(',')
                    .any(|token| token.trim().eq_ignore_ascii_case(name_str))
            })
        })
}

/// Removes hop-by-hop headers in place (responses).
fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let listed: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|token| HeaderName::from_bytes(token.trim().as_bytes()).ok())
        .collect();
    for name in listed {
        headers.remove(name);
    }
    for name in [
        header::CONNECTION,
        header::TE,
        header::TRAILER,
        header::TRANSFER_ENCODING,
        header::UPGRADE,
        HeaderName::from_static("keep-alive"),
    ] {
        headers.remove(name);
    }
    if headers.keys().any(|n| n.as_str().starts_with("proxy-")) {
        let proxy: Vec<HeaderName> = headers
            .keys()
            .filter(|n| n.as_str().starts_with("proxy-"))
            .cloned()
            .collect();
        for name in proxy {
            headers.remove(name);
        }
    }
}

fn text(status: StatusCode, body: String) -> Response<ProxyBody> {
    let mut resp = Response::new(Either::Right(Full::new(Bytes::from(body))));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hop_by_hop_request_headers() {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONNECTION,
            HeaderValue::from_static("keep-alive, X-Custom-Hop"),
        );
        h.insert("x-custom-hop", HeaderValue::from_static("1"));
        h.insert("x-kept", HeaderValue::from_static("1"));
        for (name, hop) in [
            ("connection", true),
            ("keep-alive", true),
            ("proxy-authorization", true),
            ("proxy-connection", true),
            ("te", true),
            ("trailer", true),
            ("transfer-encoding", true),
            ("upgrade", true),
            ("x-custom-hop", true),
            ("x-kept", false),
            ("content-length", false),
            ("host", false),
        ] {
            let name = HeaderName::from_static(name);
            assert_eq!(is_hop_by_hop(&name, &h), hop, "{name}");
        }
    }

    #[test]
    fn strips_response_headers() {
        let mut h = HeaderMap::new();
        h.insert(header::CONNECTION, HeaderValue::from_static("close, x-hop"));
        h.insert("x-hop", HeaderValue::from_static("1"));
        h.insert("proxy-authenticate", HeaderValue::from_static("Basic"));
        h.insert(
            header::TRANSFER_ENCODING,
            HeaderValue::from_static("chunked"),
        );
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/html"));
        strip_hop_by_hop(&mut h);
        assert_eq!(h.len(), 1, "{h:?}");
        assert!(h.contains_key(header::CONTENT_TYPE));
    }

    #[test]
    fn appends_forwarded_for() {
        let mut h = HeaderMap::new();
        h.append(&X_FORWARDED_FOR, HeaderValue::from_static("10.0.0.1"));
        h.append(
            &X_FORWARDED_FOR,
            HeaderValue::from_static("10.0.0.2, 10.0.0.3"),
        );
        let ip = ClientConn::new("127.0.0.1".parse().unwrap()).ip;
        assert_eq!(
            append_forwarded_for(&h, &ip),
            "10.0.0.1, 10.0.0.2, 10.0.0.3, 127.0.0.1"
        );
    }
}
