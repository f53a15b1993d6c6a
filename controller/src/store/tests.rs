//! Store behaviour on a real SQLite file: transactions, revision bumps, placement on
//! registration, scale-down order, and which reports are ignored.

use std::collections::BTreeMap;

use super::*;

async fn store() -> (tempfile::TempDir, Store) {
    let dir = tempfile::tempdir().unwrap();
    let s = Store::open(&dir.path().join("berth.db")).await.unwrap();
    (dir, s)
}

fn site(name: &str, instances: u32) -> NewSite {
    NewSite {
        name: name.into(),
        image: "127.0.0.1:5000/hello:1".into(),
        image_digest: format!("127.0.0.1:5000/hello@sha256:{}", "a".repeat(64)),
        instances,
        port: 8080,
        env: BTreeMap::from([("K".to_string(), "v".to_string())]),
        insecure_registry: true,
        registry_auth: String::new(),
        local_cache: false,
    }
}

fn report(worker: &str, id: &str, state: &str, generation: u64) -> InstanceReportIn {
    InstanceReportIn {
        worker_id: worker.into(),
        instance_id: id.into(),
        state: state.into(),
        message: String::new(),
        generation,
        pull_done_bytes: 0,
        pull_total_bytes: 0,
    }
}

/// Registers workers `w1` and `w2` (no capacity limit); their ids.
async fn two_workers(s: &Store) -> (String, String) {
    let mut ids = Vec::new();
    for (name, addr) in [("w1", "127.0.0.1:1"), ("w2", "127.0.0.1:2")] {
        ids.push(
            s.register_worker(name, addr, 0, 1024, NONE_LIVE)
                .await
                .unwrap(),
        );
    }
    let w2 = ids.pop().unwrap();
    (ids.pop().unwrap(), w2)
}

const ALL_LIVE: &(dyn Fn(&str) -> bool + Sync) = &|_| true;
const NONE_LIVE: &(dyn Fn(&str) -> bool + Sync) = &|_| false;

#[tokio::test]
async fn create_places_and_bumps_once() {
    let (_d, s) = store().await;
    let (w1, w2) = two_workers(&s).await;
    let before = s.revision();
    let rec = s.create_site(&site("hello", 3), ALL_LIVE).await.unwrap();
    assert_eq!(s.revision(), before + 1);
    let on = |w: &str| {
        rec.instance_states
            .iter()
            .filter(|i| i.worker_id.as_deref() == Some(w))
            .count()
    };
    assert_eq!((on(&w1), on(&w2)), (2, 1), "least loaded, ties by name");
    assert!(matches!(
        s.create_site(&site("hello", 1), ALL_LIVE).await,
        Err(StoreError::SiteExists(_))
    ));
    assert_eq!(s.revision(), before + 1, "a failed create changes nothing");
}

#[tokio::test]
async fn pending_instances_are_placed_when_a_worker_registers() {
    let (_d, s) = store().await;
    let rec = s.create_site(&site("hello", 2), ALL_LIVE).await.unwrap();
    assert!(rec.instance_states.iter().all(|i| i.worker_id.is_none()));
    // Even when the tracker knows nothing of it yet, the registering worker is live.
    let w = s
        .register_worker("w1", "127.0.0.1:1", 1, 1024, NONE_LIVE)
        .await
        .unwrap();
    let (_, a) = s.assignments_for(&w).await.unwrap();
    assert_eq!(a.len(), 1, "capacity 1");
    assert_eq!(a[0].env.get("K").map(String::as_str), Some("v"));
    let again = s
        .register_worker("w1", "127.0.0.1:9", 5, 1024, NONE_LIVE)
        .await
        .unwrap();
    assert_eq!(again, w, "idempotent on name");
    let (_, a) = s.assignments_for(&w).await.unwrap();
    assert_eq!(a.len(), 2, "raised capacity takes the rest");
    assert_eq!(
        s.list_workers().await.unwrap()[0].ingress_addr,
        "127.0.0.1:9"
    );
}

#[tokio::test]
async fn reports_apply_only_to_the_assigned_worker_and_current_generation() {
    let (_d, s) = store().await;
    let w = s
        .register_worker("w1", "127.0.0.1:1", 0, 1024, NONE_LIVE)
        .await
        .unwrap();
    let rec = s.create_site(&site("hello", 1), ALL_LIVE).await.unwrap();
    let id = rec.instance_states[0].id.clone();
    let rev = s.revision();
    let ignored = [
        report(&w, "nope-000000", "ready", 1),
        report("w-other", &id, "ready", 1),
        report(&w, &id, "ready", 0),
        report(&w, &id, "bogus", 1),
    ];
    assert_eq!(s.report_instances(&ignored).await.unwrap(), 0);
    assert_eq!(s.revision(), rev);
    assert_eq!(
        s.report_instances(&[report(&w, &id, "ready", 1)])
            .await
            .unwrap(),
        1
    );
    assert_eq!(s.revision(), rev + 1);
    // The same state again (a heartbeat) is not a change.
    assert_eq!(
        s.report_instances(&[report(&w, &id, "ready", 1)])
            .await
            .unwrap(),
        0
    );
    assert_eq!(s.revision(), rev + 1);
    let (_, routes) = s.routes().await.unwrap();
    assert_eq!(routes[0].endpoints[0].instance_id, id);
}

#[tokio::test]
async fn scale_down_removes_unplaced_and_unready_first() {
    let (_d, s) = store().await;
    let w = s
        .register_worker("w1", "127.0.0.1:1", 2, 1024, NONE_LIVE)
        .await
        .unwrap();
    let rec = s.create_site(&site("hello", 3), ALL_LIVE).await.unwrap();
    let placed: Vec<_> = rec
        .instance_states
        .iter()
        .filter(|i| i.worker_id.is_some())
        .map(|i| i.id.clone())
        .collect();
    assert_eq!(placed.len(), 2);
    s.report_instances(&[report(&w, &placed[0], "ready", 1)])
        .await
        .unwrap();
    let rec = s.scale_site("hello", 1, ALL_LIVE).await.unwrap().unwrap();
    assert_eq!(rec.instances, 1);
    let left: Vec<_> = rec.instance_states.iter().map(|i| i.id.clone()).collect();
    assert_eq!(left, vec![placed[0].clone()], "the ready instance stays");
    assert!(s
        .scale_site("missing", 1, ALL_LIVE)
        .await
        .unwrap()
        .is_none());
}

#[tokio::test]
async fn state_survives_reopen_and_delete_cascades() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("berth.db");
    let rev = {
        let s = Store::open(&path).await.unwrap();
        s.create_site(&site("hello", 2), ALL_LIVE).await.unwrap();
        let r = s.revision();
        s.close().await;
        r
    };
    let s = Store::open(&path).await.unwrap();
    assert_eq!(s.revision(), rev, "revision is persistent");
    assert_eq!(s.list_sites().await.unwrap()[0].instance_states.len(), 2);
    assert!(s.delete_site("hello").await.unwrap());
    assert!(!s.delete_site("hello").await.unwrap());
    assert_eq!(s.revision(), rev + 1);
    let c = s.counts().await.unwrap();
    assert_eq!((c.sites, c.instances_by_state["pending"]), (0, 0));
}

#[tokio::test]
async fn each_site_gets_one_id_range_on_every_worker_kept_across_delete() {
    let (_d, s) = store().await;
    let (w1, w2) = two_workers(&s).await;
    s.create_site(&site("alpha", 2), ALL_LIVE).await.unwrap();
    s.create_site(&site("beta", 1), ALL_LIVE).await.unwrap();
    let mut bases: BTreeMap<String, Vec<u32>> = BTreeMap::new();
    for w in [&w1, &w2] {
        for a in s.assignments_for(w).await.unwrap().1 {
            bases.entry(a.site).or_default().push(a.id_base);
        }
    }
    let alpha = &bases["alpha"];
    assert_eq!(alpha.len(), 2, "one instance of alpha per worker");
    assert_eq!(alpha[0], alpha[1], "alpha has the same ids on both workers");
    assert_eq!(alpha[0], FIRST_HOST_ID);
    assert_eq!(bases["beta"], vec![FIRST_HOST_ID + ID_RANGE_SIZE]);

    // Deleted and created again: the same ids, so its kept /home files are its own.
    assert!(s.delete_site("alpha").await.unwrap());
    s.create_site(&site("gamma", 1), ALL_LIVE).await.unwrap();
    s.create_site(&site("alpha", 1), ALL_LIVE).await.unwrap();
    let mut again = BTreeMap::new();
    for w in [&w1, &w2] {
        for a in s.assignments_for(w).await.unwrap().1 {
            again.insert(a.site, a.id_base);
        }
    }
    assert_eq!(
        again["alpha"], FIRST_HOST_ID,
        "alpha got its old range back"
    );
    assert_eq!(
        again["gamma"],
        FIRST_HOST_ID + 2 * ID_RANGE_SIZE,
        "a new name never gets a deleted site's range"
    );
}

#[tokio::test]
async fn local_cache_is_kept_and_sent_with_assignments() {
    let (_d, s) = store().await;
    let w = s
        .register_worker("w1", "127.0.0.1:1", 0, 1024, NONE_LIVE)
        .await
        .unwrap();
    let cached = NewSite {
        local_cache: true,
        ..site("cached", 1)
    };
    assert!(s.create_site(&cached, ALL_LIVE).await.unwrap().local_cache);
    s.create_site(&site("shared", 1), ALL_LIVE).await.unwrap();
    assert!(s.get_site("cached").await.unwrap().unwrap().local_cache);
    assert!(!s.get_site("shared").await.unwrap().unwrap().local_cache);
    let (_, a) = s.assignments_for(&w).await.unwrap();
    let mut flags: Vec<(&str, bool)> = a.iter().map(|r| (r.site.as_str(), r.local_cache)).collect();
    flags.sort();
    assert_eq!(flags, [("cached", true), ("shared", false)]);
}
