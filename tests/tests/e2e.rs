//! The walking skeleton, end to end, as a user and an operator would see it: a real
//! registry, `berth up`, a site from an OCI image served through the front end, scaled
//! to two instances sharing `/home`, surviving `kill -9` of the controller, and deleted
//! without leaving a process, mount, cgroup, network namespace or link behind.

use std::collections::BTreeSet;
use std::time::Duration;

use berth_tests::{body, host, instance_ids, instance_of, require_root, wait_for, Registry, Unit};

#[test]
fn site_lifecycle_end_to_end() {
    require_root();
    let reg = Registry::start();
    let image = reg.push_demo_image("hello:1", &[]);
    let mut u = Unit::up(6.0);

    // Create: the CLI waits until the site serves and prints its URL.
    let out = u.berth_ok(&["sites", "create", "hello", "--image", &image]);
    assert!(
        out.contains("http://hello.localhost:"),
        "create prints the URL: {out}"
    );
    let page = body(&u, "hello", "/");
    assert!(page.contains("site: hello"), "demo page: {page}");
    let first = instance_of(&page);

    // Unknown host: 404 from the front end.
    let r = u.get("nosuchsite", "/").unwrap();
    assert_eq!(r.status().as_u16(), 404);

    // Scale to 2: successive responses come from two different instances.
    u.berth_ok(&["scale", "hello", "2"]);
    let ids = instance_ids(&u, "hello");
    assert_eq!(ids.len(), 2, "two instances: {ids:?}");
    let mut seen = BTreeSet::new();
    for _ in 0..10 {
        seen.insert(instance_of(&body(&u, "hello", "/")));
    }
    assert_eq!(
        seen.len(),
        2,
        "round robin over both instances, saw {seen:?}"
    );
    assert!(seen.contains(&first));

    // Each instance runs in the site's own user namespace (not the identity mapping),
    // and both instances of the site share one host id range.
    let maps: BTreeSet<String> = ids
        .iter()
        .map(|id| {
            let pid = *host::pids_of_instance(id)
                .first()
                .unwrap_or_else(|| panic!("no app process of instance {id}"));
            let map = std::fs::read_to_string(format!("/proc/{pid}/uid_map")).unwrap();
            let map = map.split_whitespace().collect::<Vec<_>>().join(" ");
            assert!(
                !map.starts_with("0 0 "),
                "instance {id} runs without its own user namespace: uid_map {map}"
            );
            map
        })
        .collect();
    assert_eq!(maps.len(), 1, "one id range per site: {maps:?}");

    // /home is writable by the sandbox's root: the visit counter is saved.
    let p = body(&u, "hello", "/");
    assert!(
        p.contains("visits: ") && !p.contains("not saved"),
        "visit counter saved in /home: {p}"
    );

    // /home is shared: a file written through one instance is read through the other.
    let w = body(&u, "hello", "/?write=shared-note");
    assert!(w.contains("wrote: shared-note"), "write to /home: {w}");
    let writer = instance_of(&w);
    let mut read_by_other = false;
    for _ in 0..6 {
        let p = body(&u, "hello", "/?read=shared-note");
        if instance_of(&p) != writer {
            assert!(
                p.contains(&writer),
                "the other instance reads what {writer} wrote: {p}"
            );
            read_by_other = true;
            break;
        }
    }
    assert!(read_by_other, "never reached the second instance");

    // kill -9 the controller: the site keeps serving while it is down...
    let pid = u.daemon_pid("berth-controller").expect("controller pid");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        std::net::TcpStream::connect(("127.0.0.1", u.port_base)).is_err(),
        "the controller API should be down right after kill -9"
    );
    for _ in 0..6 {
        body(&u, "hello", "/");
    }
    // ...and after `berth up` restarts it, its state is intact.
    wait_for(
        Duration::from_secs(30),
        "the controller to be restarted",
        || {
            u.daemon_pid("berth-controller").is_some_and(|p| p != pid)
                && std::net::TcpStream::connect(("127.0.0.1", u.port_base)).is_ok()
        },
    );
    let site = u.site("hello");
    assert_eq!(site["instances"], 2);
    let mut after = instance_ids(&u, "hello");
    let mut before = ids.clone();
    after.sort();
    before.sort();
    assert_eq!(after, before, "same instances after the controller restart");
    wait_for(
        Duration::from_secs(30),
        "both instances ready again",
        || {
            u.site("hello")["instance_states"]
                .as_array()
                .unwrap()
                .iter()
                .all(|i| i["state"] == "ready")
        },
    );
    body(&u, "hello", "/");

    // Delete: nothing of the site remains on the host.
    u.berth_ok(&["sites", "delete", "hello"]);
    // The front ends learn of the delete from their watch stream, within moments.
    wait_for(
        Duration::from_secs(10),
        "the front end to stop routing the deleted site",
        || {
            u.get("hello", "/")
                .map(|r| r.status().as_u16() == 404)
                .unwrap_or(false)
        },
    );
    let state = u.state_dir().display().to_string();
    wait_for(
        Duration::from_secs(40),
        "every trace of the deleted site to go",
        || {
            ids.iter().all(|id| {
                host::pids_of_instance(id).is_empty()
                    && host::mounts_containing(id).is_empty()
                    && host::cgroups_containing(id).is_empty()
                    && host::netns_containing(id).is_empty()
                    && host::links_containing(id.rsplit('-').next().unwrap()).is_empty()
            }) && host::mounts_containing(&format!("{state}/agent/volumes/hello")).is_empty()
        },
    );
    let sites = u.berth_ok(&["sites", "list", "-o", "json"]);
    assert!(
        !sites.contains("\"hello\""),
        "site list after delete: {sites}"
    );

    // Ctrl-C of `berth up` stops every daemon and leaves no mount or process behind.
    u.down();
    assert!(
        host::pids_with_cmdline(&[&state]).is_empty(),
        "a daemon of the unit survived berth up's exit"
    );
    assert!(
        host::mounts_containing(&state).is_empty(),
        "mounts left: {:?}",
        host::mounts_containing(&state)
    );
}

#[test]
fn bad_input_gets_clear_errors_and_changes_nothing() {
    require_root();
    let reg = Registry::start();
    let image = reg.push_demo_image("hello:1", &[]);
    let noentry = reg.push_demo_image("noentry:1", &["--no-entrypoint"]);
    let u = Unit::up(1.0);

    let fail = |args: &[&str], want: &str| {
        let out = u.berth(args);
        let err = String::from_utf8_lossy(&out.stderr).to_lowercase();
        assert!(!out.status.success(), "berth {args:?} should fail");
        assert!(
            err.contains(want),
            "berth {args:?}: error should mention {want:?}, got: {err}"
        );
    };
    fail(
        &["sites", "create", "Bad_Name", "--image", &image],
        "invalid",
    );
    fail(&["sites", "create", "../etc", "--image", &image], "invalid");
    let missing = format!("{}/nope:1", reg.addr);
    fail(
        &["sites", "create", "missing", "--image", &missing],
        "not found",
    );
    let port = berth_tests::free_port_base(1);
    let unreachable = format!("127.0.0.1:{port}/hello:1");
    fail(
        &["sites", "create", "unreach", "--image", &unreachable],
        "unreachable",
    );
    fail(
        &["sites", "create", "noentry", "--image", &noentry],
        "entrypoint",
    );
    fail(
        &[
            "sites",
            "create",
            "neg",
            "--image",
            &image,
            "--instances",
            "-3",
        ],
        "0 or more",
    );

    // The API itself rejects what the CLI would have caught.
    let http = reqwest::blocking::Client::new();
    let post = |path: &str, body: &str| {
        http.post(format!("{}{path}", u.api))
            .bearer_auth(u.token())
            .header("content-type", "application/json")
            .body(body.to_string())
            .send()
            .unwrap()
    };
    let r = post("/v1/sites", r#"{"name":"Bad Name","image":"x/y:1"}"#);
    assert_eq!(r.status().as_u16(), 400);
    let r = post("/v1/sites", r#"{"name":"ok","image":"x/y:1","bogus":1}"#);
    assert_eq!(r.status().as_u16(), 400, "unknown fields are rejected");
    let r = post("/v1/sites", "{not json");
    assert_eq!(r.status().as_u16(), 400);
    let r = http.get(format!("{}/v1/sites", u.api)).send().unwrap();
    assert_eq!(r.status().as_u16(), 401, "no token, no API");

    // Scale to a negative number: rejected, the site is unchanged.
    u.berth_ok(&["sites", "create", "good", "--image", &image]);
    fail(&["scale", "good", "-1"], "0 or more");
    let r = post("/v1/sites/good/scale", r#"{"instances":-1}"#);
    assert_eq!(r.status().as_u16(), 400);
    assert_eq!(u.site("good")["instances"], 1);
    fail(&["scale", "nosuch", "1"], "not found");

    // Nothing half-made: only the good site exists, with one instance on the worker.
    let list: serde_json::Value =
        serde_json::from_str(&u.berth_ok(&["sites", "list", "-o", "json"])).unwrap();
    let names: Vec<&str> = list["sites"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, vec!["good"]);
    let inst_dir = u.state_dir().join("agent/instances");
    let n = std::fs::read_dir(&inst_dir).map(|d| d.count()).unwrap_or(0);
    assert_eq!(n, 1, "one instance dir on the worker, for site good");
}
