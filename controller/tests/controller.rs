//! End to end against real peers: the controller binary, Debian's docker-registry
//! with a busybox image pushed by skopeo, and gRPC clients playing agent and front
//! end. Covers auth, create/validate/scale/delete, placement on registration,
//! readiness -> routes, worker death -> no routes, and kill -9 + resume by revision.

mod support;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use berth_api::control::routes_client::RoutesClient;
use berth_api::control::workers_client::WorkersClient;
use berth_api::control::{
    Assignments, HeartbeatRequest, InstanceReport, InstanceState, RegisterRequest, RouteTable,
    WatchAssignmentsRequest, WatchRoutesRequest,
};
use serde_json::{json, Value};
use support::{free_port, Controller, Registry};
use tokio::time::timeout;
use tonic::Streaming;

const WAIT: Duration = Duration::from_secs(10);

struct Api {
    http: reqwest::Client,
    base: String,
    token: String,
}

impl Api {
    async fn call(&self, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
        self.call_with(method, path, body, Some(&self.token)).await
    }

    async fn call_with(
        &self,
        method: &str,
        path: &str,
        body: Option<Value>,
        token: Option<&str>,
    ) -> (u16, Value) {
        let mut req = self
            .http
            .request(method.parse().unwrap(), format!("{}{path}", self.base));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await.expect("REST request to the controller");
        let status = resp.status().as_u16();
        let text = resp.text().await.unwrap();
        let v = if text.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).unwrap_or_else(|e| panic!("non-JSON body {text:?}: {e}"))
        };
        (status, v)
    }
}

async fn next_assignments(s: &mut Streaming<Assignments>) -> Assignments {
    timeout(WAIT, s.message())
        .await
        .expect("no assignments snapshot within 10 s")
        .expect("assignments stream failed")
        .expect("assignments stream ended")
}

async fn next_routes(s: &mut Streaming<RouteTable>) -> RouteTable {
    timeout(WAIT, s.message())
        .await
        .expect("no route table within 10 s")
        .expect("routes stream failed")
        .expect("routes stream ended")
}

/// Reads route tables until `pred` holds.
async fn routes_until(
    s: &mut Streaming<RouteTable>,
    pred: impl Fn(&RouteTable) -> bool,
) -> RouteTable {
    loop {
        let t = next_routes(s).await;
        if pred(&t) {
            return t;
        }
    }
}

fn endpoints(t: &RouteTable, site: &str) -> Vec<String> {
    t.sites
        .iter()
        .find(|s| s.site == site)
        .map(|s| s.endpoints.iter().map(|e| e.instance_id.clone()).collect())
        .unwrap_or_default()
}

fn ready(worker_id: &str, instance_id: &str, generation: u64) -> InstanceReport {
    InstanceReport {
        worker_id: worker_id.to_string(),
        instance_id: instance_id.to_string(),
        state: InstanceState::Ready as i32,
        message: String::new(),
        generation,
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn controller_end_to_end() {
    let registry = Registry::start();
    let hello = registry.push_busybox("hello", "1", &["/bin/busybox", "httpd", "-f", "-p", "8080"]);
    let nocmd = registry.push_busybox("nocmd", "1", &[]);
    let dir = tempfile::tempdir().unwrap();
    let mut ctl = Controller::start(&dir.path().join("state"), free_port(), free_port());
    let api = Api {
        http: reqwest::Client::new(),
        base: ctl.rest.clone(),
        token: ctl.token(),
    };

    // Auth: /v1 needs the token, /healthz and /metrics do not.
    let (s, v) = api.call_with("GET", "/v1/sites", None, None).await;
    assert_eq!(s, 401, "{v}");
    assert_eq!(v["code"], "unauthorized");
    assert!(v["message"].as_str().unwrap().contains("token"), "{v}");
    let (s, _) = api.call_with("GET", "/v1/sites", None, Some("wrong")).await;
    assert_eq!(s, 401);
    let metrics = reqwest::get(format!("{}/metrics", ctl.rest)).await.unwrap();
    assert_eq!(metrics.status().as_u16(), 200);

    // Create, and everything that must not create.
    let (s, site) = api
        .call(
            "POST",
            "/v1/sites",
            Some(json!({"name": "hello", "image": hello, "env": {"GREETING": "hi"}})),
        )
        .await;
    assert_eq!(s, 201, "{site}");
    let pinned_prefix = format!("{}/hello@sha256:", registry.addr);
    assert!(
        site["image_digest"]
            .as_str()
            .unwrap()
            .starts_with(&pinned_prefix),
        "{site}"
    );
    assert_eq!(site["hostname"], "hello.localhost");
    assert_eq!(site["url"], "http://hello.localhost:8080");
    assert_eq!(site["port"], 8080);
    assert_eq!(site["instance_states"].as_array().unwrap().len(), 1);
    assert_eq!(site["instance_states"][0]["state"], "pending");
    let first_id = site["instance_states"][0]["id"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        first_id.starts_with("hello-") && first_id.len() == "hello-".len() + 6,
        "{first_id}"
    );

    let (s, v) = api
        .call(
            "POST",
            "/v1/sites",
            Some(json!({"name": "hello", "image": hello})),
        )
        .await;
    assert_eq!((s, v["code"].as_str()), (409, Some("conflict")), "{v}");
    let (s, v) = api
        .call(
            "POST",
            "/v1/sites",
            Some(json!({"name": "Bad_Name", "image": hello})),
        )
        .await;
    assert_eq!(
        (s, v["code"].as_str()),
        (400, Some("invalid_request")),
        "{v}"
    );
    let (s, v) = api
        .call(
            "POST",
            "/v1/sites",
            Some(json!({"name": "typo", "image": hello, "instancez": 2})),
        )
        .await;
    assert_eq!(s, 400, "{v}");
    assert!(
        v["message"].as_str().unwrap().contains("unknown field"),
        "{v}"
    );
    let (s, v) = api
        .call(
            "POST",
            "/v1/sites",
            Some(json!({"name": "neg", "image": hello, "instances": -1})),
        )
        .await;
    assert_eq!(s, 400, "{v}");
    let missing_tag = format!("{}/hello:nope", registry.addr);
    let (s, v) = api
        .call(
            "POST",
            "/v1/sites",
            Some(json!({"name": "notag", "image": missing_tag})),
        )
        .await;
    assert_eq!((s, v["code"].as_str()), (422, Some("bad_image")), "{v}");
    assert!(v["message"].as_str().unwrap().contains("not found"), "{v}");
    let (s, v) = api
        .call(
            "POST",
            "/v1/sites",
            Some(json!({"name": "nocmd", "image": nocmd})),
        )
        .await;
    assert_eq!((s, v["code"].as_str()), (422, Some("bad_image")), "{v}");
    assert!(
        v["message"]
            .as_str()
            .unwrap()
            .contains("no entrypoint or cmd"),
        "{v}"
    );
    let dead = format!("127.0.0.1:{}/hello:1", free_port());
    let (s, v) = api
        .call(
            "POST",
            "/v1/sites",
            Some(json!({"name": "dead", "image": dead})),
        )
        .await;
    assert_eq!(
        (s, v["code"].as_str()),
        (502, Some("registry_unreachable")),
        "{v}"
    );
    for name in ["nocmd", "notag", "dead", "neg", "typo"] {
        let (s, _) = api.call("GET", &format!("/v1/sites/{name}"), None).await;
        assert_eq!(s, 404, "a failed create left site {name} behind");
    }
    let (s, v) = api
        .call(
            "POST",
            "/v1/sites/hello/scale",
            Some(json!({"instances": -3})),
        )
        .await;
    assert_eq!(s, 400, "{v}");
    assert!(v["message"].as_str().unwrap().contains(">= 0"), "{v}");
    let (s, list) = api.call("GET", "/v1/sites", None).await;
    assert_eq!(s, 200);
    assert_eq!(list["sites"].as_array().unwrap().len(), 1, "{list}");
    let (s, shown) = api.call("GET", "/v1/sites/hello", None).await;
    assert_eq!((s, &shown["image_digest"]), (200, &site["image_digest"]));

    // A worker registers: the pending instance is placed on it.
    let mut workers = WorkersClient::connect(ctl.grpc.clone())
        .await
        .expect("gRPC connect");
    let reg = RegisterRequest {
        name: "w1".into(),
        ingress_addr: "127.0.0.1:17703".into(),
        capacity_instances: 10,
        memory_mb: 4096,
    };
    let r = workers.register(reg.clone()).await.unwrap().into_inner();
    assert_eq!(r.heartbeat_interval_ms, 2000);
    let wid = r.worker_id.clone();
    let again = workers.register(reg).await.unwrap().into_inner();
    assert_eq!(again.worker_id, wid, "register is idempotent on name");
    let hb = workers
        .heartbeat(HeartbeatRequest {
            worker_id: "nobody".into(),
            instances: vec![],
        })
        .await
        .unwrap()
        .into_inner();
    assert!(hb.reregister, "unknown worker must be told to register");

    // Heartbeats in the background, carrying the reports of "ready" instances.
    let reports: Arc<Mutex<Vec<InstanceReport>>> = Arc::default();
    let paused = Arc::new(AtomicBool::new(false));
    let hb_task = {
        let channel = tonic::transport::Endpoint::from_shared(ctl.grpc.clone())
            .unwrap()
            .connect_lazy();
        let (reports, paused, wid) = (reports.clone(), paused.clone(), wid.clone());
        tokio::spawn(async move {
            let mut c = WorkersClient::new(channel);
            loop {
                if !paused.load(Ordering::SeqCst) {
                    let instances = reports.lock().unwrap().clone();
                    let _ = c
                        .heartbeat(HeartbeatRequest {
                            worker_id: wid.clone(),
                            instances,
                        })
                        .await;
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        })
    };

    let mut assign = workers
        .watch_assignments(WatchAssignmentsRequest {
            worker_id: wid.clone(),
            from_revision: 0,
        })
        .await
        .unwrap()
        .into_inner();
    let a = next_assignments(&mut assign).await;
    assert_eq!(a.instances.len(), 1, "{a:?}");
    let inst = &a.instances[0];
    assert_eq!(inst.instance_id, first_id);
    assert_eq!(inst.site, "hello");
    assert!(inst.image.starts_with(&pinned_prefix), "{inst:?}");
    assert!(
        inst.insecure_registry,
        "loopback registry defaults to insecure"
    );
    assert_eq!(inst.env.get("GREETING").map(String::as_str), Some("hi"));
    assert_eq!(
        (inst.port, inst.memory_mb, inst.cpu_millis, inst.pids_max),
        (8080, 256, 1000, 512)
    );
    assert_eq!(
        (inst.volume.as_str(), inst.health_path.as_str()),
        ("hello", "/")
    );
    let generation = inst.generation;

    let mut routes_client = RoutesClient::connect(ctl.grpc.clone()).await.unwrap();
    let mut routes = routes_client
        .watch_routes(WatchRoutesRequest { from_revision: 0 })
        .await
        .unwrap()
        .into_inner();
    let t = next_routes(&mut routes).await;
    assert_eq!(t.domain, "localhost");
    assert_eq!(t.sites.len(), 1);
    assert_eq!(t.sites[0].hostnames, vec!["hello.localhost".to_string()]);
    assert!(
        endpoints(&t, "hello").is_empty(),
        "nothing is ready yet: {t:?}"
    );

    // Reports for unknown instances and old generations are ignored.
    workers
        .report_instance(ready(&wid, "ghost-abcdef", 1))
        .await
        .unwrap();
    workers
        .report_instance(ready(&wid, &first_id, generation - 1))
        .await
        .unwrap();
    workers
        .report_instance(ready(&wid, &first_id, generation))
        .await
        .unwrap();
    reports
        .lock()
        .unwrap()
        .push(ready(&wid, &first_id, generation));
    let t = routes_until(&mut routes, |t| !endpoints(t, "hello").is_empty()).await;
    assert_eq!(endpoints(&t, "hello"), vec![first_id.clone()]);
    assert_eq!(t.sites[0].endpoints[0].ingress_addr, "127.0.0.1:17703");
    let mut routes_rev = t.revision;
    let held_routes = RouteTable {
        revision: 0,
        ..t.clone()
    };
    let (_, shown) = api.call("GET", "/v1/sites/hello", None).await;
    assert_eq!(shown["instance_states"][0]["state"], "ready", "{shown}");
    assert_eq!(shown["instance_states"][0]["worker"], "w1", "{shown}");
    let (_, wl) = api.call("GET", "/v1/workers", None).await;
    assert_eq!(wl["workers"][0]["up"], true, "{wl}");
    assert_eq!(wl["workers"][0]["instances"], 1, "{wl}");

    // kill -9 and restart: state intact, watches resume from their revision.
    drop((assign, routes));
    ctl.kill9_and_restart();
    let (s, shown) = api.call("GET", "/v1/sites/hello", None).await;
    assert_eq!(s, 200, "{shown}");
    assert_eq!(shown["instance_states"][0]["state"], "ready", "{shown}");
    let mut routes_client = RoutesClient::connect(ctl.grpc.clone()).await.unwrap();
    let mut routes = routes_client
        .watch_routes(WatchRoutesRequest {
            from_revision: routes_rev,
        })
        .await
        .unwrap()
        .into_inner();
    // A client that is up to date gets nothing, or the table it holds: streams
    // send only changed content, so a revision bump that changed no route (the
    // worker's first heartbeat) is not sent to a live stream but is news to a
    // resumed one.
    if let Ok(msg) = timeout(Duration::from_millis(1500), routes.message()).await {
        let got = msg.unwrap().expect("routes stream ended");
        assert_eq!(
            RouteTable {
                revision: 0,
                ..got.clone()
            },
            held_routes,
            "a client that is up to date got a different table after the restart"
        );
        routes_rev = got.revision;
    }
    let mut workers = WorkersClient::connect(ctl.grpc.clone()).await.unwrap();
    let mut assign = workers
        .watch_assignments(WatchAssignmentsRequest {
            worker_id: wid.clone(),
            from_revision: a.revision,
        })
        .await
        .unwrap()
        .into_inner();
    let a2 = next_assignments(&mut assign).await;
    assert!(
        a2.revision > a.revision,
        "{} <= {}",
        a2.revision,
        a.revision
    );
    assert_eq!(a2.instances.len(), 1);

    // Scale up: the new instance is assigned; once ready it is routed.
    let (s, v) = api
        .call(
            "POST",
            "/v1/sites/hello/scale",
            Some(json!({"instances": 2})),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    let a3 = next_assignments(&mut assign).await;
    assert_eq!(a3.instances.len(), 2, "{a3:?}");
    let second = a3
        .instances
        .iter()
        .find(|i| i.instance_id != first_id)
        .unwrap()
        .clone();
    workers
        .report_instance(ready(&wid, &second.instance_id, second.generation))
        .await
        .unwrap();
    reports
        .lock()
        .unwrap()
        .push(ready(&wid, &second.instance_id, second.generation));
    let t = routes_until(&mut routes, |t| endpoints(t, "hello").len() == 2).await;
    assert!(t.revision > routes_rev);

    // The worker stops heartbeating: it is down, and routes drop its endpoints.
    paused.store(true, Ordering::SeqCst);
    routes_until(&mut routes, |t| endpoints(t, "hello").is_empty()).await;
    let (_, wl) = api.call("GET", "/v1/workers", None).await;
    assert_eq!(wl["workers"][0]["up"], false, "{wl}");
    paused.store(false, Ordering::SeqCst);
    routes_until(&mut routes, |t| endpoints(t, "hello").len() == 2).await;

    let body = reqwest::get(format!("{}/metrics", ctl.rest))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(body.contains("berth_controller_workers_live 1"), "{body}");
    assert!(
        body.contains("berth_controller_instances{state=\"ready\"} 2"),
        "{body}"
    );
    assert!(
        body.contains(
            "berth_controller_http_requests_total{route=\"/v1/sites/{name}/scale\",status=\"200\"}"
        ),
        "{body}"
    );

    // Delete: assignments become empty and the site leaves the routing table.
    let (s, v) = api.call("DELETE", "/v1/sites/hello", None).await;
    assert_eq!(s, 204, "{v}");
    let a4 = next_assignments(&mut assign).await;
    assert!(a4.instances.is_empty(), "{a4:?}");
    routes_until(&mut routes, |t| t.sites.is_empty()).await;
    let (s, v) = api.call("GET", "/v1/sites/hello", None).await;
    assert_eq!((s, v["code"].as_str()), (404, Some("not_found")));
    let (s, _) = api.call("DELETE", "/v1/sites/hello", None).await;
    assert_eq!(s, 404);

    // SIGTERM with watch streams still open: the controller ends them and exits 0.
    hb_task.abort();
    assert!(
        ctl.terminate(),
        "SIGTERM must stop the controller cleanly:\n{}",
        ctl.log()
    );
    let end = timeout(WAIT, routes.message())
        .await
        .expect("routes stream did not end");
    assert!(
        !matches!(end, Ok(Some(_))),
        "no snapshot after shutdown: {end:?}"
    );
    let end = timeout(WAIT, assign.message())
        .await
        .expect("assignments stream did not end");
    assert!(
        !matches!(end, Ok(Some(_))),
        "no snapshot after shutdown: {end:?}"
    );
}
