//! The worker's ingress port: front ends forward requests here with
//! `x-berth-instance: <id>`; the agent relays each one to the app on `127.0.0.1:$PORT`
//! over a TCP connection opened inside the instance's network namespace.
//!
//! HTTP/1.1 and h2c come in (hyper-util's auto builder); HTTP/1.1 goes out, over pooled
//! keep-alive connections. Bodies stream both ways.

pub mod pool;

use std::convert::Infallible;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use berth_api::control::InstanceState;
use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Request, Response, StatusCode, Uri, Version};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;
use tracing::{debug, info, info_span, warn, Instrument};

use crate::metrics::StatusLabels;
use crate::netns;
use crate::state::{Agent, InstanceView};

/// Header naming the target instance.
pub const INSTANCE_HEADER: &str = "x-berth-instance";
/// Header naming the target site (informational).
pub const SITE_HEADER: &str = "x-berth-site";
/// Time allowed to open a connection to an app.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

type Body = BoxBody<Bytes, hyper::Error>;

/// Accepts connections on `listener` and serves them until the task is dropped.
pub async fn serve(listener: TcpListener, agent: Arc<Agent>) {
    info!(addr = ?listener.local_addr().ok(), "ingress listening");
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(x) => x,
            Err(e) => {
                warn!(error = %e, "ingress accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let agent = agent.clone();
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |req| handle(agent.clone(), peer, req));
            let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
            if let Err(e) = builder
                .serve_connection_with_upgrades(TokioIo::new(stream), svc)
                .await
            {
                debug!(%peer, error = %e, "ingress connection ended with an error");
            }
        });
    }
}

/// A JSON error answer: `{"error": "..."}`.
fn text(status: StatusCode, msg: impl Into<String>) -> Response<Body> {
    let body = format!("{}\n", serde_json::json!({ "error": msg.into() }));
    let mut resp = Response::new(
        Full::new(Bytes::from(body))
            .map_err(|never| match never {})
            .boxed(),
    );
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    resp
}

async fn handle(
    agent: Arc<Agent>,
    peer: SocketAddr,
    req: Request<Incoming>,
) -> Result<Response<Body>, Infallible> {
    let instance = req
        .headers()
        .get(INSTANCE_HEADER)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    let span = info_span!(
        "ingress",
        %instance,
        method = %req.method(),
        path = %req.uri().path(),
        %peer,
        status = tracing::field::Empty,
    );
    let resp = route(&agent, &instance, req).instrument(span.clone()).await;
    span.record("status", resp.status().as_u16());
    agent
        .metrics
        .ingress_requests
        .get_or_create(&StatusLabels {
            code: resp.status().as_u16(),
        })
        .inc();
    Ok(resp)
}

async fn route(agent: &Arc<Agent>, instance: &str, req: Request<Incoming>) -> Response<Body> {
    if instance.is_empty() {
        return text(
            StatusCode::NOT_FOUND,
            format!("missing {INSTANCE_HEADER} header: this port only takes requests from berth front ends"),
        );
    }
    let Some(view) = agent.instance(instance) else {
        return text(
            StatusCode::NOT_FOUND,
            format!("instance {instance} is not on this worker"),
        );
    };
    if view.state != InstanceState::Ready {
        return text(
            StatusCode::SERVICE_UNAVAILABLE,
            format!(
                "instance {instance} is not ready (state {})",
                crate::state::state_label(view.state)
            ),
        );
    }
    if is_upgrade(&req) {
        return match upgrade(agent, &view, req).await {
            Ok(resp) => resp,
            Err(e) => {
                warn!(error = %e, "upgrade to the app failed");
                text(
                    StatusCode::BAD_GATEWAY,
                    format!("the app of instance {instance} did not answer"),
                )
            }
        };
    }
    let req = prepare_request(req);
    match forward(agent, instance, &view, req).await {
        Ok(resp) => prepare_response(resp),
        Err(e) => {
            warn!(error = %e, "forwarding to the app failed");
            text(
                StatusCode::BAD_GATEWAY,
                format!("the app of instance {instance} did not answer"),
            )
        }
    }
}

/// Removes hop-by-hop headers (RFC 9110 7.6.1), including those the Connection header
/// names.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|n| HeaderName::from_bytes(n.trim().as_bytes()).ok())
        .collect();
    for name in named {
        headers.remove(name);
    }
    for name in [
        header::CONNECTION,
        HeaderName::from_static("keep-alive"),
        HeaderName::from_static("proxy-connection"),
        header::PROXY_AUTHENTICATE,
        header::PROXY_AUTHORIZATION,
        header::TE,
        header::TRAILER,
        header::TRANSFER_ENCODING,
        header::UPGRADE,
    ] {
        headers.remove(name);
    }
}

/// Turns an incoming request (HTTP/1.1 or h2) into an HTTP/1.1 request for the app:
/// origin-form URI, Host kept (or taken from `:authority`), `x-berth-*` and hop-by-hop
/// headers removed.
pub fn prepare_request<B>(req: Request<B>) -> Request<B> {
    let (mut parts, body) = req.into_parts();
    let berth: Vec<HeaderName> = parts
        .headers
        .keys()
        .filter(|k| k.as_str().starts_with("x-berth-"))
        .cloned()
        .collect();
    for k in berth {
        parts.headers.remove(k);
    }
    strip_hop_by_hop(&mut parts.headers);
    if !parts.headers.contains_key(header::HOST) {
        if let Some(auth) = parts.uri.authority() {
            if let Ok(v) = HeaderValue::from_str(auth.as_str()) {
                parts.headers.insert(header::HOST, v);
            }
        }
    }
    let pq = parts
        .uri
        .path_and_query()
        .map(|pq| pq.as_str().to_string())
        .unwrap_or_else(|| "/".to_string());
    parts.uri = pq.parse::<Uri>().unwrap_or_else(|_| Uri::from_static("/"));
    parts.version = Version::HTTP_11;
    Request::from_parts(parts, body)
}

fn prepare_response(resp: Response<Incoming>) -> Response<Body> {
    let (mut parts, body) = resp.into_parts();
    strip_hop_by_hop(&mut parts.headers);
    Response::from_parts(parts, body.boxed())
}

async fn connect(agent: &Arc<Agent>, view: &InstanceView) -> anyhow::Result<SendRequest<Incoming>> {
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, view.port));
    let stream = netns::connect_in_async(
        agent.host_netns.clone(),
        view.netns.clone(),
        addr,
        CONNECT_TIMEOUT,
    )
    .await?;
    let (sender, conn) = hyper::client::conn::http1::Builder::new()
        .handshake::<_, Incoming>(TokioIo::new(stream))
        .await?;
    tokio::spawn(async move {
        if let Err(e) = conn.await {
            debug!(error = %e, "app connection closed with an error");
        }
    });
    Ok(sender)
}

async fn forward(
    agent: &Arc<Agent>,
    instance: &str,
    view: &InstanceView,
    req: Request<Incoming>,
) -> anyhow::Result<Response<Incoming>> {
    let (mut sender, pooled) = match agent.pool.take(instance, view.epoch) {
        Some(s) => (s, true),
        None => (connect(agent, view).await?, false),
    };
    let resp = match sender.try_send_request(req).await {
        Ok(resp) => resp,
        Err(mut e) => match e.take_message() {
            // An idle connection the app had closed: the request never left, so it is
            // safe to send it once more on a fresh connection.
            Some(req) if pooled => {
                debug!(error = %e.error(), "pooled connection was stale; reconnecting");
                sender = connect(agent, view).await?;
                sender.send_request(req).await?
            }
            _ => return Err(e.into_error().into()),
        },
    };
    let agent = agent.clone();
    let instance = instance.to_string();
    let epoch = view.epoch;
    tokio::spawn(async move {
        // Ready again once the response body has been read to the end.
        if sender.ready().await.is_ok() {
            agent.pool.put(&instance, epoch, sender);
        }
    });
    Ok(resp)
}

/// True for an HTTP/1.1 protocol upgrade request (WebSocket and friends).
fn is_upgrade<B>(req: &Request<B>) -> bool {
    req.version() == Version::HTTP_11
        && req.headers().contains_key(header::UPGRADE)
        && req
            .headers()
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|t| t.trim().eq_ignore_ascii_case("upgrade"))
}

/// Relays an upgrade request on a dedicated connection; on `101 Switching Protocols`
/// both upgraded streams are spliced together.
async fn upgrade(
    agent: &Arc<Agent>,
    view: &InstanceView,
    mut req: Request<Incoming>,
) -> anyhow::Result<Response<Body>> {
    let client_upgrade = hyper::upgrade::on(&mut req);
    let upgrade_value = req.headers().get(header::UPGRADE).cloned();
    let mut req = prepare_request(req);
    if let Some(v) = upgrade_value {
        req.headers_mut().insert(header::UPGRADE, v);
        req.headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    }
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, view.port));
    let stream = netns::connect_in_async(
        agent.host_netns.clone(),
        view.netns.clone(),
        addr,
        CONNECT_TIMEOUT,
    )
    .await?;
    let (mut sender, conn) = hyper::client::conn::http1::Builder::new()
        .handshake::<_, Incoming>(TokioIo::new(stream))
        .await?;
    tokio::spawn(async move {
        if let Err(e) = conn.with_upgrades().await {
            debug!(error = %e, "app upgrade connection ended with an error");
        }
    });
    let mut resp = sender.send_request(req).await?;
    if resp.status() != StatusCode::SWITCHING_PROTOCOLS {
        return Ok(prepare_response(resp));
    }
    let app_upgrade = hyper::upgrade::on(&mut resp);
    tokio::spawn(
        async move {
            match tokio::try_join!(client_upgrade, app_upgrade) {
                Ok((client, app)) => {
                    let mut client = TokioIo::new(client);
                    let mut app = TokioIo::new(app);
                    match tokio::io::copy_bidirectional(&mut client, &mut app).await {
                        Ok((up, down)) => debug!(up, down, "upgraded connection closed"),
                        Err(e) => debug!(error = %e, "upgraded connection broke"),
                    }
                }
                Err(e) => debug!(error = %e, "upgrade did not complete"),
            }
        }
        .in_current_span(),
    );
    let (parts, body) = resp.into_parts();
    Ok(Response::from_parts(parts, body.boxed()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strips_berth_and_hop_by_hop_headers() {
        let req = Request::builder()
            .uri("http://hello.localhost/a/b?c=d")
            .version(Version::HTTP_2)
            .header(INSTANCE_HEADER, "hello-1")
            .header(SITE_HEADER, "hello")
            .header("connection", "close, x-custom-hop")
            .header("x-custom-hop", "1")
            .header("keep-alive", "timeout=5")
            .header("accept", "text/html")
            .body(())
            .unwrap();
        let out = prepare_request(req);
        assert_eq!(out.uri(), "/a/b?c=d");
        assert_eq!(out.version(), Version::HTTP_11);
        assert_eq!(out.headers()[header::HOST], "hello.localhost");
        assert_eq!(out.headers()["accept"], "text/html");
        for gone in [
            INSTANCE_HEADER,
            SITE_HEADER,
            "connection",
            "x-custom-hop",
            "keep-alive",
        ] {
            assert!(
                !out.headers().contains_key(gone),
                "{gone} should be removed"
            );
        }
    }

    #[test]
    fn keeps_host_header_and_defaults_path() {
        let req = Request::builder()
            .uri("http://other/")
            .header(header::HOST, "hello.localhost:8080")
            .body(())
            .unwrap();
        let out = prepare_request(req);
        assert_eq!(out.headers()[header::HOST], "hello.localhost:8080");
        assert_eq!(out.uri(), "/");
    }
}
