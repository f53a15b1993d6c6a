//! Real peers for the front end's integration tests: a tonic `Routes` server standing in
//! for the controller, tiny hyper upstream servers standing in for agent ingresses, the
//! `berth-frontend` binary itself, and raw HTTP/1.1 and HTTP/2 (h2c) clients.

#![allow(dead_code)]

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use berth_api::control::routes_server::{Routes, RoutesServer};
use berth_api::control::{Endpoint, RouteTable, SiteRoute, WatchRoutesRequest};
use bytes::Bytes;
use http::{HeaderMap, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use tokio_stream::wrappers::{ReceiverStream, TcpListenerStream};
use tonic::Status;

/// A port nothing listens on (bound, then released).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("binding a loopback port to find a free one")
        .local_addr()
        .unwrap()
        .port()
}

/// Polls `check` until it returns true, or panics saying what did not happen.
pub async fn eventually<F, Fut>(what: &str, timeout: Duration, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    while !check().await {
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

// ---------------------------------------------------------------- controller

/// Builds a route table; each site is `(name, [(instance_id, ingress_addr)])`.
pub fn table(revision: u64, sites: &[(&str, &[(&str, SocketAddr)])]) -> RouteTable {
    RouteTable {
        revision,
        domain: "localhost".into(),
        sites: sites
            .iter()
            .map(|(site, endpoints)| SiteRoute {
                site: site.to_string(),
                hostnames: vec![format!("www.{site}.test")],
                endpoints: endpoints
                    .iter()
                    .map(|(id, addr)| Endpoint {
                        instance_id: id.to_string(),
                        ingress_addr: addr.to_string(),
                    })
                    .collect(),
            })
            .collect(),
    }
}

#[derive(Clone)]
struct FakeRoutes {
    tables: watch::Receiver<RouteTable>,
    from_revisions: Arc<Mutex<Vec<u64>>>,
}

#[tonic::async_trait]
impl Routes for FakeRoutes {
    type WatchRoutesStream = ReceiverStream<Result<RouteTable, Status>>;

    async fn watch_routes(
        &self,
        request: tonic::Request<WatchRoutesRequest>,
    ) -> Result<tonic::Response<Self::WatchRoutesStream>, Status> {
        let mut from = request.into_inner().from_revision;
        self.from_revisions.lock().unwrap().push(from);
        let mut tables = self.tables.clone();
        let (tx, rx) = mpsc::channel(4);
        // Same contract as the controller: answer at once if newer, else wait.
        tokio::spawn(async move {
            loop {
                let current = tables.borrow_and_update().clone();
                if current.revision > from {
                    from = current.revision;
                    if tx.send(Ok(current)).await.is_err() {
                        return;
                    }
                }
                if tables.changed().await.is_err() {
                    return;
                }
            }
        });
        Ok(tonic::Response::new(ReceiverStream::new(rx)))
    }
}

/// A real gRPC `Routes` server on loopback.
pub struct Controller {
    pub addr: SocketAddr,
    tables: Option<watch::Sender<RouteTable>>,
    from_revisions: Arc<Mutex<Vec<u64>>>,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
}

impl Controller {
    /// Starts serving `initial` on `addr` (port 0 for any).
    pub async fn start(addr: SocketAddr, initial: RouteTable) -> Controller {
        let listener = TcpListener::bind(addr)
            .await
            .unwrap_or_else(|e| panic!("binding the test controller on {addr}: {e}"));
        let addr = listener.local_addr().unwrap();
        let (tables, rx) = watch::channel(initial);
        let from_revisions = Arc::new(Mutex::new(Vec::new()));
        let service = FakeRoutes {
            tables: rx,
            from_revisions: from_revisions.clone(),
        };
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            tonic::transport::Server::builder()
                .add_service(RoutesServer::new(service))
                .serve_with_incoming_shutdown(TcpListenerStream::new(listener), async {
                    let _ = stopped.await;
                })
                .await
                .expect("test controller gRPC server failed");
        });
        Controller {
            addr,
            tables: Some(tables),
            from_revisions,
            stop: Some(stop),
            task: Some(task),
        }
    }

    pub fn push(&self, table: RouteTable) {
        self.tables.as_ref().unwrap().send_replace(table);
    }

    /// `from_revision` of every WatchRoutes call received so far.
    pub fn watch_requests(&self) -> Vec<u64> {
        self.from_revisions.lock().unwrap().clone()
    }

    /// Ends every watch stream and stops the server; returns once the port is closed.
    pub async fn shutdown(mut self) {
        drop(self.tables.take());
        let _ = self.stop.take().unwrap().send(());
        tokio::time::timeout(Duration::from_secs(10), self.task.take().unwrap())
            .await
            .expect("test controller did not shut down within 10 s")
            .expect("test controller task panicked");
    }
}

// ---------------------------------------------------------------- upstreams

/// A tiny HTTP/1.1 server answering `key=value` lines: its own name and the
/// headers the front end set. `/slow` answers after 1.5 s.
pub async fn start_upstream(name: &'static str) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("binding a test upstream");
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let service = service_fn(move |req: Request<Incoming>| async move {
                if req.uri().path() == "/slow" {
                    tokio::time::sleep(Duration::from_millis(1500)).await;
                }
                let mut out = format!("name={name}\npath={}\n", req.uri());
                for h in [
                    "host",
                    "x-berth-instance",
                    "x-berth-site",
                    "x-forwarded-for",
                    "x-forwarded-proto",
                    "x-forwarded-host",
                    "connection",
                    "x-hop",
                ] {
                    let values: Vec<_> = req
                        .headers()
                        .get_all(h)
                        .iter()
                        .map(|v| v.to_str().unwrap_or("<binary>"))
                        .collect();
                    if !values.is_empty() {
                        out.push_str(&format!("{h}={}\n", values.join(" | ")));
                    }
                }
                let body = req.into_body().collect().await?.to_bytes();
                out.push_str(&format!("body={}\n", String::from_utf8_lossy(&body)));
                Ok::<_, hyper::Error>(
                    Response::builder()
                        .header("x-upstream", name)
                        .header("keep-alive", "timeout=5")
                        .body(Full::new(Bytes::from(out)))
                        .unwrap(),
                )
            });
            tokio::spawn(async move {
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    addr
}

/// An upstream that reads the request and closes the connection without answering.
pub async fn start_closer() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("binding a test upstream");
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((mut stream, _)) = listener.accept().await else {
                continue;
            };
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                let _ = tokio::io::AsyncReadExt::read(&mut stream, &mut buf).await;
            });
        }
    });
    addr
}

// ---------------------------------------------------------------- front end

/// The `berth-frontend` binary, killed on drop.
pub struct Frontend {
    child: Child,
    pub listen: SocketAddr,
    pub metrics: SocketAddr,
}

impl Frontend {
    pub async fn start(controller: SocketAddr) -> Frontend {
        let listen: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let metrics: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_berth-frontend"))
            .args(["--controller", &format!("http://{controller}")])
            .args(["--listen", &listen.to_string()])
            .args(["--metrics-listen", &metrics.to_string()])
            .env("RUST_LOG", "info,berth_frontend=debug")
            .stdout(Stdio::inherit())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("starting the berth-frontend binary");
        let mut frontend = Frontend {
            child,
            listen,
            metrics,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        while TcpStream::connect(listen).await.is_err() {
            if let Some(status) = frontend.child.try_wait().unwrap() {
                panic!("berth-frontend exited before listening on {listen}: {status}");
            }
            assert!(
                Instant::now() < deadline,
                "berth-frontend did not listen on {listen} within 20 s"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        frontend
    }

    /// Sends SIGTERM.
    pub fn terminate(&self) {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .expect("running kill");
        assert!(status.success(), "kill -TERM {} failed", self.child.id());
    }

    /// Waits for the process to exit and returns whether it exited 0.
    pub async fn wait_exit(&mut self, timeout: Duration) -> std::process::ExitStatus {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "berth-frontend did not exit within {timeout:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for Frontend {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

// ---------------------------------------------------------------- clients

/// A response read in full.
#[derive(Debug)]
pub struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: String,
}

impl Reply {
    /// The upstream's `key=value` lines.
    pub fn echo(&self) -> HashMap<&str, &str> {
        self.body
            .lines()
            .filter_map(|l| l.split_once('='))
            .collect()
    }

    pub fn field(&self, key: &str) -> &str {
        self.echo()
            .get(key)
            .copied()
            .unwrap_or_else(|| panic!("upstream reply has no {key}: {self:?}"))
    }
}

async fn read(resp: Response<Incoming>) -> Reply {
    let (parts, body) = resp.into_parts();
    let body = body
        .collect()
        .await
        .expect("reading the response body")
        .to_bytes();
    Reply {
        status: parts.status,
        headers: parts.headers,
        body: String::from_utf8_lossy(&body).into_owned(),
    }
}

/// One HTTP/1.1 request on a fresh connection. `req` must carry its Host header.
pub async fn h1(addr: SocketAddr, req: Request<Full<Bytes>>) -> Reply {
    let stream = TcpStream::connect(addr)
        .await
        .unwrap_or_else(|e| panic!("connecting to {addr}: {e}"));
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .expect("http/1 handshake");
    tokio::spawn(conn);
    read(
        sender
            .send_request(req)
            .await
            .expect("sending an http/1 request"),
    )
    .await
}

/// GET `path` with `Host: host` over HTTP/1.1.
pub async fn get(addr: SocketAddr, host: &str, path: &str) -> Reply {
    h1(
        addr,
        Request::get(path)
            .header("host", host)
            .body(Full::default())
            .unwrap(),
    )
    .await
}

/// GET `http://<authority><path>` over HTTP/2 with prior knowledge (h2c).
pub async fn get_h2(addr: SocketAddr, authority: &str, path: &str) -> Reply {
    let stream = TcpStream::connect(addr)
        .await
        .unwrap_or_else(|e| panic!("connecting to {addr}: {e}"));
    let (mut sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .expect("http/2 handshake");
    tokio::spawn(conn);
    let req = Request::get(format!("http://{authority}{path}"))
        .version(http::Version::HTTP_2)
        .body(Full::<Bytes>::default())
        .unwrap();
    let resp = sender
        .send_request(req)
        .await
        .expect("sending an http/2 request");
    assert_eq!(resp.version(), http::Version::HTTP_2);
    read(resp).await
}

/// The front end's `/metrics` text.
pub async fn metrics(addr: SocketAddr) -> String {
    let reply = get(addr, "metrics", "/metrics").await;
    assert_eq!(reply.status, StatusCode::OK, "{reply:?}");
    reply.body
}
