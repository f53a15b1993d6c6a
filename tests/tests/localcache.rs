//! The per-site local cache of `/home` (`berth sites create --local-cache`), end to end:
//! an instance gets a copy of the shared volume made when it starts, sees
//! `BERTH_LOCALCACHE_READY=1`, and its writes stay in its copy (docs/home-semantics.md,
//! "Local cache").

use std::path::PathBuf;
use std::time::Duration;

use berth_tests::{body, host, instance_ids, instance_of, require_root, wait_for, Registry, Unit};

/// The app's environment, read from the host.
fn app_env(id: &str) -> Vec<String> {
    let pid = *host::pids_of_instance(id)
        .first()
        .unwrap_or_else(|| panic!("no app process of instance {id}"));
    std::fs::read(format!("/proc/{pid}/environ"))
        .unwrap()
        .split(|b| *b == 0)
        .map(|v| String::from_utf8_lossy(v).into_owned())
        .collect()
}

/// Asks the site until instance `id` answers `pq`.
fn page_from(u: &Unit, site: &str, id: &str, pq: &str) -> String {
    for _ in 0..20 {
        let p = body(u, site, pq);
        if instance_of(&p) == id {
            return p;
        }
    }
    panic!("instance {id} of {site} never answered");
}

#[test]
fn local_cache_copies_home_at_start_and_keeps_writes_local() {
    require_root();
    let reg = Registry::start();
    let image = reg.push_demo_image("lc:1", &[]);
    let u = Unit::up(6.0);

    u.berth_ok(&["sites", "create", "lc", "--image", &image, "--local-cache"]);
    assert_eq!(u.site("lc")["local_cache"], true, "{}", u.site("lc"));
    let shown = u.berth_ok(&["sites", "show", "lc"]);
    assert!(shown.contains("local cache"), "sites show: {shown}");
    let first = instance_ids(&u, "lc").remove(0);
    assert!(
        app_env(&first).contains(&"BERTH_LOCALCACHE_READY=1".to_string()),
        "the app sees BERTH_LOCALCACHE_READY=1: {:?}",
        app_env(&first)
    );

    // The worker's FUSE mount of the shared volume: a file written there now...
    let state = u.state_dir().display().to_string();
    let shared: PathBuf = host::mounts_containing(&state)
        .into_iter()
        .find(|m| m.ends_with("/volumes/lc"))
        .unwrap_or_else(|| panic!("no shared mount of volume lc under {state}"))
        .into();
    std::fs::write(shared.join("seed"), b"from-shared\n").unwrap();

    // ...is not in the running instance's copy (made when it started),
    let p = page_from(&u, "lc", &first, "/?read=seed");
    assert!(p.contains("value: <missing>"), "{p}");
    // and the instance's own writes stay in its copy, never on shared storage.
    let p = page_from(&u, "lc", &first, "/?write=local-note");
    assert!(p.contains("wrote: local-note"), "{p}");
    let p = page_from(&u, "lc", &first, "/?read=local-note");
    assert!(p.contains(&format!("value: {first}")), "{p}");
    assert!(
        !shared.join("local-note").exists(),
        "a local write reached /home"
    );
    assert!(
        !shared.join("visits").exists(),
        "the visit counter reached /home"
    );

    // A new instance copies the shared content as it is when it starts.
    u.berth_ok(&["scale", "lc", "2"]);
    let second = instance_ids(&u, "lc")
        .into_iter()
        .find(|i| *i != first)
        .expect("a second instance");
    assert!(app_env(&second).contains(&"BERTH_LOCALCACHE_READY=1".to_string()));
    let p = page_from(&u, "lc", &second, "/?read=seed");
    assert!(p.contains("value: from-shared"), "{p}");
    let p = page_from(&u, "lc", &second, "/?read=local-note");
    assert!(p.contains("value: <missing>"), "{p}");

    // Deleting the site removes the copies with the instances; shared data stays.
    u.berth_ok(&["sites", "delete", "lc"]);
    wait_for(Duration::from_secs(30), "instances to go", || {
        host::pids_of_instance(&first).is_empty() && host::pids_of_instance(&second).is_empty()
    });
    wait_for(
        Duration::from_secs(30),
        "the local cache copies to go",
        || walk_localcache(u.state_dir()).is_empty(),
    );
}

/// `localcache` directories anywhere under `dir` (not entering mount points).
fn walk_localcache(dir: &std::path::Path) -> Vec<PathBuf> {
    let mounts = host::mounts_containing(&dir.display().to_string());
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            let path = e.path();
            let is_dir = e.file_type().is_ok_and(|t| t.is_dir());
            if !is_dir || mounts.contains(&path.display().to_string()) {
                continue;
            }
            if e.file_name() == "localcache" {
                out.push(path);
            } else {
                stack.push(path);
            }
        }
    }
    out
}
