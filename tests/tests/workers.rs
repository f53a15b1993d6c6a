//! A site spread over two web workers (the second one `berth up --join`ed to the unit)
//! is one tenant: the controller gives the site one host id range, so its instances run
//! as the same host uid on both workers and each can change the `/home` files the other
//! made. With ranges picked per worker, the second worker's instance would see the
//! first one's files as owned by nobody and fail to write them.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use berth_tests::{body, host, page_field, require_root, wait_for, JoinedWorker, Registry, Unit};

/// The host uid_map of one app process of `instance`, normalised.
fn uid_map(instance: &str) -> String {
    let pid = *host::pids_of_instance(instance)
        .first()
        .unwrap_or_else(|| panic!("no app process of instance {instance}"));
    std::fs::read_to_string(format!("/proc/{pid}/uid_map"))
        .unwrap()
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
}

#[test]
fn a_site_on_two_workers_has_one_identity_and_one_home() {
    require_root();
    let reg = Registry::start();
    let image = reg.push_demo_image("spread:1", &[]);
    let u = Unit::up(1.0);
    let w = JoinedWorker::join(&u, &format!("joined-{}", u.port_base));
    wait_for(Duration::from_secs(30), "two live workers", || {
        let out = u.berth_ok(&["workers", "list", "-o", "json"]);
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        v.as_array()
            .or_else(|| v["workers"].as_array())
            .map(|a| a.iter().filter(|w| w["up"] == true).count() == 2)
            .unwrap_or(false)
    });

    // Another site first, so `spread` does not get the first range by luck.
    u.berth_ok(&["sites", "create", "first", "--image", &image]);
    u.berth_ok(&[
        "sites",
        "create",
        "spread",
        "--image",
        &image,
        "--instances",
        "2",
    ]);
    let site = u.site("spread");
    let placed: BTreeMap<String, String> = site["instance_states"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| {
            (
                i["id"].as_str().unwrap().to_string(),
                i["worker"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    let workers: BTreeSet<&String> = placed.values().collect();
    assert_eq!(workers.len(), 2, "one instance per worker: {placed:?}");
    assert!(workers.contains(&w.name), "{placed:?}");

    // Same host ids on both workers, and not the other site's.
    let maps: BTreeSet<String> = placed.keys().map(|id| uid_map(id)).collect();
    assert_eq!(maps.len(), 1, "one id range on both workers: {maps:?}");
    let spread_map = maps.into_iter().next().unwrap();
    assert!(
        !spread_map.starts_with("0 0 "),
        "own user namespace: {spread_map}"
    );
    let first_id = u.site("first")["instance_states"][0]["id"]
        .as_str()
        .unwrap()
        .to_string();
    assert_ne!(uid_map(&first_id), spread_map, "sites share no ids");

    // Each instance writes the same /home file in turn (round robin alternates them);
    // the second writer overwrites a file the first one owns.
    let mut wrote = BTreeSet::new();
    for _ in 0..20 {
        let p = body(&u, "spread", "/?write=shared");
        let by = page_field(&p, "instance: ").to_string();
        assert!(
            p.contains("wrote: shared"),
            "instance {by} on worker {} could not write /home/shared:\n{p}",
            placed[&by]
        );
        assert!(
            !p.contains("not saved"),
            "visit counter not saved by {by}:\n{p}"
        );
        wrote.insert(by);
        if wrote.len() == 2 {
            break;
        }
    }
    assert_eq!(
        wrote.len(),
        2,
        "both instances wrote /home/shared: {wrote:?}"
    );
    // Whoever wrote last, both instances read the same content.
    let last = page_field(&body(&u, "spread", "/?read=shared"), "value: ").to_string();
    assert!(
        placed.contains_key(&last),
        "value {last:?} is an instance id"
    );
    for _ in 0..4 {
        let p = body(&u, "spread", "/?read=shared");
        assert_eq!(
            page_field(&p, "value: "),
            last,
            "same /home on both workers:\n{p}"
        );
    }
}
