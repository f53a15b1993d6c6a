//! End-to-end tests of the `berth-frontend` binary against a real gRPC `Routes` server
//! and real HTTP upstreams on loopback. No root needed.

mod common;

use std::collections::HashSet;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use common::*;
use http::{Request, StatusCode};
use http_body_util::Full;

const WAIT: Duration = Duration::from_secs(20);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routes_retries_and_survives_controller_loss() {
    let one = start_upstream("one").await;
    let two = start_upstream("two").await;
    let dead: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let closer = start_closer().await;

    let controller = Controller::start(
        "127.0.0.1:0".parse().unwrap(),
        table(1, &[("alpha", &[("a1", one)])]),
    )
    .await;
    let controller_addr = controller.addr;
    let fe = Frontend::start(controller_addr).await;
    let addr = fe.listen;

    // Revision 1 arrives: alpha is served by "one".
    eventually("alpha to be routed (revision 1)", WAIT, || async move {
        get(addr, "alpha.localhost", "/").await.status == StatusCode::OK
    })
    .await;
    let r = get(addr, "alpha.localhost", "/hello?x=1").await;
    assert_eq!(r.field("name"), "one");
    assert_eq!(r.field("path"), "/hello?x=1");
    assert_eq!(
        controller.watch_requests(),
        [0],
        "the first watch starts from revision 0"
    );

    // Unknown host -> 404 with a hint.
    let r = get(addr, "nope.localhost:8080", "/").await;
    assert_eq!(r.status, StatusCode::NOT_FOUND, "{r:?}");
    assert!(
        r.body.contains("no site is served at nope.localhost")
            && r.body.contains("berth sites list"),
        "{r:?}"
    );

    // Revision 2: two endpoints for alpha, a dead one in beta's rotation, empty gamma.
    controller.push(table(
        2,
        &[
            ("alpha", &[("a1", one), ("a2", two)]),
            ("beta", &[("b1", one), ("b-dead", dead), ("b2", two)]),
            ("gamma", &[]),
            ("delta", &[("d1", closer)]),
            ("epsilon", &[("e1", dead)]),
        ],
    ));
    eventually("gamma to be known (revision 2)", WAIT, || async move {
        get(addr, "gamma.localhost", "/").await.status != StatusCode::NOT_FOUND
    })
    .await;

    // A site with no ready endpoint -> 503 + Retry-After.
    let r = get(addr, "gamma.localhost", "/").await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE, "{r:?}");
    assert_eq!(r.headers["retry-after"], "5");

    // Round robin alternates, and each upstream sees its own instance id.
    let mut names = Vec::new();
    for _ in 0..6 {
        let r = get(addr, "alpha.localhost", "/").await;
        assert_eq!(r.status, StatusCode::OK, "{r:?}");
        let expected_instance = if r.field("name") == "one" { "a1" } else { "a2" };
        assert_eq!(r.field("x-berth-instance"), expected_instance);
        assert_eq!(r.field("x-berth-site"), "alpha");
        names.push(r.field("name").to_owned());
    }
    assert!(
        names.windows(2).all(|w| w[0] != w[1]),
        "round robin should alternate: {names:?}"
    );

    // Forwarding headers: Host kept, X-Forwarded-* set, hop-by-hop dropped,
    // client-supplied x-berth-instance replaced, X-Forwarded-For appended.
    let r = h1(
        addr,
        Request::get("/h")
            .header("host", "WWW.Alpha.test:8080")
            .header("x-forwarded-for", "10.1.2.3")
            .header("x-berth-instance", "forged")
            .header("connection", "x-hop")
            .header("x-hop", "1")
            .body(Full::default())
            .unwrap(),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{r:?}");
    let echo = r.echo();
    assert_eq!(echo["host"], "WWW.Alpha.test:8080");
    assert_eq!(echo["x-forwarded-host"], "WWW.Alpha.test:8080");
    assert_eq!(echo["x-forwarded-for"], "10.1.2.3, 127.0.0.1");
    assert_eq!(echo["x-forwarded-proto"], "http");
    assert_ne!(echo["x-berth-instance"], "forged");
    assert!(
        !echo.contains_key("x-hop"),
        "header named by Connection was forwarded: {r:?}"
    );
    assert!(
        !r.headers.contains_key("keep-alive"),
        "hop-by-hop response header passed back"
    );
    assert!(r.headers.contains_key("x-upstream"));
    let r = get(addr, "alpha.localhost", "/").await;
    assert_eq!(r.field("x-forwarded-for"), "127.0.0.1");

    // The dead endpoint is skipped by the connect retry; bodies survive the retry.
    let mut seen = HashSet::new();
    for i in 0..9 {
        let body = format!("payload-{i}");
        let r = h1(
            addr,
            Request::post("/upload")
                .header("host", "beta.localhost")
                .body(Full::new(Bytes::from(body.clone())))
                .unwrap(),
        )
        .await;
        assert_eq!(r.status, StatusCode::OK, "request {i} to beta: {r:?}");
        assert_eq!(r.field("body"), body, "request body lost on retry");
        seen.insert(r.field("name").to_owned());
    }
    assert_eq!(
        seen.len(),
        2,
        "both live endpoints should serve beta: {seen:?}"
    );

    // The instance takes the request and hangs up -> 502; nothing accepts -> 502.
    let r = get(addr, "delta.localhost", "/").await;
    assert_eq!(r.status, StatusCode::BAD_GATEWAY, "{r:?}");
    assert!(r.body.contains("site delta failed to answer"), "{r:?}");
    let r = get(addr, "epsilon.localhost", "/").await;
    assert_eq!(r.status, StatusCode::BAD_GATEWAY, "{r:?}");
    assert!(
        r.body.contains("site epsilon could not be reached"),
        "{r:?}"
    );

    // HTTP/2 with prior knowledge; :authority is the host.
    let r = get_h2(addr, "alpha.localhost", "/h2?y=2").await;
    assert_eq!(r.status, StatusCode::OK, "{r:?}");
    assert_eq!(r.field("host"), "alpha.localhost");
    assert_eq!(r.field("path"), "/h2?y=2");
    assert_eq!(r.field("x-berth-site"), "alpha");
    let r = get_h2(addr, "nope.localhost", "/").await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);

    let text = metrics(fe.metrics).await;
    for want in [
        "berth_frontend_routing_table_revision 2",
        "berth_frontend_sites 5",
        r#"berth_frontend_requests_total{site="alpha",class="2xx"}"#,
        r#"berth_frontend_requests_total{site="gamma",class="5xx"}"#,
        r#"berth_frontend_requests_total{site="-",class="4xx"}"#,
        "berth_frontend_upstream_latency_seconds_count",
    ] {
        assert!(text.contains(want), "metrics lack {want:?}:\n{text}");
    }
    assert!(
        !text.contains("berth_frontend_upstream_connect_errors_total 0"),
        "the dead endpoint should have been counted:\n{text}"
    );

    // The controller goes away: the last table keeps serving.
    controller.shutdown().await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    for _ in 0..4 {
        assert_eq!(
            get(addr, "alpha.localhost", "/").await.status,
            StatusCode::OK
        );
        assert_eq!(
            get(addr, "beta.localhost", "/").await.status,
            StatusCode::OK
        );
    }
    assert_eq!(
        get(addr, "gamma.localhost", "/").await.status,
        StatusCode::SERVICE_UNAVAILABLE
    );

    // It comes back on the same address: the front end resumes from revision 2.
    let controller =
        Controller::start(controller_addr, table(3, &[("alpha", &[("a2", two)])])).await;
    eventually(
        "revision 3 after the controller restart",
        WAIT,
        || async move { get(addr, "beta.localhost", "/").await.status == StatusCode::NOT_FOUND },
    )
    .await;
    assert_eq!(
        controller.watch_requests()[0],
        2,
        "reconnect should resume from revision 2"
    );
    for _ in 0..3 {
        assert_eq!(get(addr, "alpha.localhost", "/").await.field("name"), "two");
    }
    controller.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn starts_before_the_controller_and_drains_on_sigterm() {
    let slow = start_upstream("slow").await;
    // The controller is not up yet: the front end answers 503 until its first table.
    let controller_addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let mut fe = Frontend::start(controller_addr).await;
    let addr = fe.listen;
    let r = get(addr, "slow.localhost", "/").await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE, "{r:?}");
    assert!(
        r.body.contains("has not received its routing table"),
        "{r:?}"
    );
    assert_eq!(r.headers["retry-after"], "5");

    let controller =
        Controller::start(controller_addr, table(1, &[("slow", &[("s1", slow)])])).await;
    eventually(
        "slow to be routed once the controller is up",
        WAIT,
        || async move { get(addr, "slow.localhost", "/").await.status == StatusCode::OK },
    )
    .await;

    let in_flight = tokio::spawn(async move { get(addr, "slow.localhost", "/slow").await });
    tokio::time::sleep(Duration::from_millis(300)).await;
    fe.terminate();

    let r = tokio::time::timeout(Duration::from_secs(10), in_flight)
        .await
        .expect("in-flight request did not finish after SIGTERM")
        .expect("in-flight request task panicked");
    assert_eq!(r.status, StatusCode::OK, "{r:?}");
    assert_eq!(r.field("name"), "slow");
    let status = fe.wait_exit(Duration::from_secs(12)).await;
    assert!(
        status.success(),
        "berth-frontend should exit 0 after SIGTERM, got {status}"
    );
    assert!(
        tokio::net::TcpStream::connect(addr).await.is_err(),
        "the listener should be closed after shutdown"
    );
    controller.shutdown().await;
}
