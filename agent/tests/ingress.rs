//! Root integration test of the ingress: an HTTP app listening on the loopback of its
//! own network namespace, reached through the agent's ingress port with HTTP/1.1 and
//! h2c, pooled connections, and the error answers for unknown / not-ready instances.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use berth_agent::image::Images;
use berth_agent::metrics::Metrics;
use berth_agent::netns::{self, HostNetns};
use berth_agent::state::{Agent, Config, InstanceView};
use berth_agent::volumes::{VolumeConfig, Volumes};
use berth_api::control::InstanceState;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::{TcpListener, TcpStream};

struct NetnsGuard(PathBuf);
impl Drop for NetnsGuard {
    fn drop(&mut self) {
        let _ = netns::remove(&self.0);
    }
}

/// Starts an echo app inside `ns`; returns its port and a connection counter.
async fn start_app(ns: &std::path::Path) -> (u16, Arc<AtomicUsize>) {
    let (tx, rx) = std::sync::mpsc::channel();
    netns::spawn_in(ns, move || {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind inside netns");
        tx.send(l).unwrap();
    })
    .unwrap()
    .join()
    .unwrap();
    let std_listener = rx.recv().unwrap();
    std_listener.set_nonblocking(true).unwrap();
    let port = std_listener.local_addr().unwrap().port();
    let listener = TcpListener::from_std(std_listener).unwrap();
    let conns = Arc::new(AtomicUsize::new(0));
    let counter = conns.clone();
    tokio::spawn(async move {
        loop {
            let (s, _) = listener.accept().await.unwrap();
            counter.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(|mut req: Request<Incoming>| async move {
                    if req.uri().path() == "/ws" {
                        let on = hyper::upgrade::on(&mut req);
                        tokio::spawn(async move {
                            let up = on.await.expect("app side upgrade");
                            let mut io = TokioIo::new(up);
                            let mut buf = [0u8; 4];
                            tokio::io::AsyncReadExt::read_exact(&mut io, &mut buf)
                                .await
                                .unwrap();
                            tokio::io::AsyncWriteExt::write_all(&mut io, &buf)
                                .await
                                .unwrap();
                        });
                        let resp = Response::builder()
                            .status(101)
                            .header("connection", "upgrade")
                            .header("upgrade", "echo")
                            .body(Full::new(Bytes::new()))
                            .unwrap();
                        return Ok::<_, Infallible>(resp);
                    }
                    let leaked: Vec<String> = req
                        .headers()
                        .keys()
                        .filter(|k| k.as_str().starts_with("x-berth"))
                        .map(|k| k.to_string())
                        .collect();
                    let head = format!(
                        "{} {} host={} version={:?} leaked={:?} body=",
                        req.method(),
                        req.uri(),
                        req.headers()
                            .get("host")
                            .and_then(|v| v.to_str().ok())
                            .unwrap_or("-"),
                        req.version(),
                        leaked
                    );
                    let body = req.into_body().collect().await.unwrap().to_bytes();
                    let mut out = head.into_bytes();
                    out.extend_from_slice(&body);
                    Ok::<_, Infallible>(Response::new(Full::new(Bytes::from(out))))
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(s), svc)
                    .with_upgrades()
                    .await;
            });
        }
    });
    (port, conns)
}

async fn h1(addr: SocketAddr, req: Request<Full<Bytes>>) -> (u16, String) {
    let s = TcpStream::connect(addr).await.unwrap();
    let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(s))
        .await
        .unwrap();
    tokio::spawn(conn);
    let resp = send.send_request(req).await.unwrap();
    let status = resp.status().as_u16();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8_lossy(&body).into_owned())
}

fn req(instance: Option<&str>, path: &str, body: &str) -> Request<Full<Bytes>> {
    let mut b = Request::post(path)
        .header("host", "hello.localhost")
        .header("x-berth-site", "hello");
    if let Some(i) = instance {
        b = b.header("x-berth-instance", i);
    }
    b.body(Full::new(Bytes::from(body.to_string()))).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ingress_forwards_into_the_namespace() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "this test creates network namespaces and must run as root"
    );
    let tmp = tempfile::tempdir().unwrap();
    let ns_name = format!("berth-test-ingress-{}", std::process::id());
    let ns = NetnsGuard(netns::create(&ns_name).expect("create netns"));
    let (port, conns) = start_app(&ns.0).await;

    let state_dir = tmp.path().to_path_buf();
    let cfg = Config {
        controller: "http://127.0.0.1:1".into(),
        sandboxd_socket: state_dir.join("none.sock"),
        fsd: "http://127.0.0.1:1".into(),
        fsd_bin: "/nonexistent/berth-fsd".into(),
        ingress_listen: "127.0.0.1:0".parse().unwrap(),
        ingress_advertise: "127.0.0.1:0".into(),
        metrics_listen: "127.0.0.1:0".parse().unwrap(),
        state_dir: state_dir.clone(),
        name: "test".into(),
        capacity: 1,
    };
    let metrics = Arc::new(Metrics::new());
    let agent = Arc::new(Agent::new(
        cfg.clone(),
        HostNetns::open().unwrap(),
        berth_agent::sandbox::client(&cfg.sandboxd_socket).unwrap(),
        Volumes::new(VolumeConfig {
            root: state_dir.join("volumes"),
            logs: state_dir.join("logs"),
            fsd_bin: cfg.fsd_bin.clone(),
            fsd_server: cfg.fsd.clone(),
        }),
        Images::open(&state_dir.join("images")).unwrap(),
        metrics.clone(),
    ));
    let view = |state| InstanceView {
        site: "hello".into(),
        generation: 1,
        state,
        message: String::new(),
        port,
        netns: ns.0.clone(),
        epoch: 7,
    };
    agent.set_state("hello-1", view(InstanceState::Ready));
    agent.set_state("hello-2", view(InstanceState::Starting));

    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(berth_agent::ingress::serve(listener, agent.clone()));

    // HTTP/1.1, three requests: one app connection thanks to the pool.
    for i in 0..3 {
        let (status, body) = h1(addr, req(Some("hello-1"), &format!("/p/{i}?q=1"), "hey")).await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(
            body,
            format!("POST /p/{i}?q=1 host=hello.localhost version=HTTP/1.1 leaked=[] body=hey")
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        conns.load(Ordering::SeqCst),
        1,
        "idle connection was not reused"
    );
    assert_eq!(agent.pool.idle_count("hello-1"), 1);

    // h2c (prior knowledge) in, HTTP/1.1 out.
    let s = TcpStream::connect(addr).await.unwrap();
    let (mut send, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(s))
            .await
            .unwrap();
    tokio::spawn(conn);
    let r = Request::get("http://hello.localhost/h2")
        .header("x-berth-instance", "hello-1")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let resp = send.send_request(r).await.unwrap();
    assert_eq!(resp.status(), 200);
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(
        String::from_utf8_lossy(&body),
        "GET /h2 host=hello.localhost version=HTTP/1.1 leaked=[] body="
    );

    // Errors: unknown, not ready, missing header.
    assert_eq!(h1(addr, req(Some("nope-1"), "/", "")).await.0, 404);
    assert_eq!(h1(addr, req(Some("hello-2"), "/", "")).await.0, 503);
    assert_eq!(h1(addr, req(None, "/", "")).await.0, 404);

    // A restarted run (new epoch) never reuses connections of the old one.
    agent.set_state(
        "hello-1",
        InstanceView {
            epoch: 8,
            ..view(InstanceState::Ready)
        },
    );
    let before = conns.load(Ordering::SeqCst);
    assert_eq!(h1(addr, req(Some("hello-1"), "/again", "")).await.0, 200);
    assert_eq!(conns.load(Ordering::SeqCst), before + 1);

    // Protocol upgrade (WebSocket-style) is spliced through.
    let mut s = TcpStream::connect(addr).await.unwrap();
    tokio::io::AsyncWriteExt::write_all(
        &mut s,
        b"GET /ws HTTP/1.1\r\nhost: hello.localhost\r\nx-berth-instance: hello-1\r\nconnection: Upgrade\r\nupgrade: echo\r\n\r\n",
    )
    .await
    .unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        tokio::io::AsyncReadExt::read_exact(&mut s, &mut byte)
            .await
            .unwrap();
        head.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&head).to_lowercase();
    assert!(head.starts_with("http/1.1 101"), "{head}");
    assert!(head.contains("upgrade: echo"), "{head}");
    tokio::io::AsyncWriteExt::write_all(&mut s, b"ping")
        .await
        .unwrap();
    let mut buf = [0u8; 4];
    tokio::time::timeout(
        Duration::from_secs(5),
        tokio::io::AsyncReadExt::read_exact(&mut s, &mut buf),
    )
    .await
    .expect("echo through the upgraded connection")
    .unwrap();
    assert_eq!(&buf, b"ping");

    let text = metrics.encode();
    assert!(
        text.contains("berth_agent_ingress_requests_total{code=\"200\"} 5"),
        "{text}"
    );
    assert!(text.contains("code=\"503\"} 1"), "{text}");
}
