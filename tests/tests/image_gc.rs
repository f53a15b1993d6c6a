//! Image garbage collection on a worker, through the product path: two sites on two
//! different images, one deleted, `berth worker gc` run against the unit's agent. The
//! deleted site's image and its own layers leave the disk; the other site's stay, it
//! keeps serving, and a new instance of it starts from the store with the registry gone.

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use berth_tests::{require_root, wait_for, workspace_root, Registry, Unit};

/// Image records in the agent's store: manifest hex -> layer digests (hex).
fn records(store: &Path) -> Vec<(String, BTreeSet<String>)> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(store.join("images")).unwrap() {
        let p = e.unwrap().path();
        let v: serde_json::Value = serde_json::from_slice(&std::fs::read(&p).unwrap()).unwrap();
        let hex = p.file_stem().unwrap().to_string_lossy().into_owned();
        let layers = v["layers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|l| {
                l["digest"]
                    .as_str()
                    .unwrap()
                    .trim_start_matches("sha256:")
                    .to_string()
            })
            .collect();
        out.push((hex, layers));
    }
    out
}

fn digest_hex(u: &Unit, site: &str) -> String {
    let pinned = u.site(site)["image_digest"].as_str().unwrap().to_string();
    pinned.rsplit_once("sha256:").unwrap().1.to_string()
}

#[test]
fn worker_gc_removes_a_deleted_sites_layers_only() {
    require_root();
    let reg = Registry::start();
    let a = reg.push_demo_image("gc/demo:1", &[]);
    let out = Command::new(workspace_root().join("stacks/static/build.sh"))
        .args(["gc/static:1", &reg.addr.to_string()])
        .output()
        .expect("running stacks/static/build.sh");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let b = format!("{}/gc/static:1", reg.addr);

    let u = Unit::up(6.0);
    u.berth_ok(&["sites", "create", "gca", "--image", &a]);
    u.berth_ok(&["sites", "create", "gcb", "--image", &b]);
    let store = u.state_dir().join("agent/images");
    let (ha, hb) = (digest_hex(&u, "gca"), digest_hex(&u, "gcb"));
    let recs = records(&store);
    let layers = |h: &str| recs.iter().find(|(x, _)| x == h).unwrap().1.clone();
    let (la, lb) = (layers(&ha), layers(&hb));
    let only_a: Vec<&String> = la.difference(&lb).collect();
    assert!(
        !only_a.is_empty(),
        "the two images share every layer: {la:?} {lb:?}"
    );

    // With both sites running, nothing is collected.
    let out = u.berth_ok(&[
        "worker",
        "gc",
        "--state-dir",
        &u.state_dir().display().to_string(),
    ]);
    eprintln!("berth worker gc (both running): {out}");
    assert!(out.contains("removed 0 image(s)"), "{out}");
    assert_eq!(records(&store).len(), 2);

    u.berth_ok(&["sites", "delete", "gca"]);
    wait_for(Duration::from_secs(30), "gca's rootfs to go", || {
        !std::fs::read_dir(u.state_dir().join("agent/instances"))
            .unwrap()
            .any(|e| e.unwrap().file_name().to_string_lossy().starts_with("gca-"))
    });
    let out = u.berth_ok(&[
        "worker",
        "gc",
        "--state-dir",
        &u.state_dir().display().to_string(),
    ]);
    eprintln!("berth worker gc (after deleting gca): {out}");
    assert!(out.contains("removed 1 image(s)"), "{out}");
    let left: Vec<String> = records(&store).into_iter().map(|r| r.0).collect();
    assert_eq!(left, vec![hb.clone()]);
    for l in &only_a {
        assert!(
            !store.join("snapshots").join(l).exists(),
            "snapshot {l} left"
        );
        assert!(
            !store.join("blobs/sha256").join(l).exists(),
            "blob {l} left"
        );
    }
    for l in &lb {
        assert!(
            store.join("snapshots").join(l).exists(),
            "gcb's snapshot {l} gone"
        );
    }

    // gcb serves, and a new instance of it starts from the store alone.
    let page = u.get("gcb", "/").unwrap().text().unwrap();
    assert!(page.contains("berth static stack"), "{page}");
    drop(reg);
    u.berth_ok(&["scale", "gcb", "2"]);
    let page = u.get("gcb", "/").unwrap().text().unwrap();
    assert!(page.contains("berth static stack"), "{page}");
    u.berth_ok(&["sites", "delete", "gcb"]);
}
