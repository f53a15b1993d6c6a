//! Placement: which worker runs each instance that has none yet.
//!
//! A pure function over a snapshot of worker loads, so it can be tested without a
//! database. Rule: every unplaced instance goes to the live worker with the fewest
//! instances (ties broken by worker name), never beyond a worker's capacity. An
//! instance that fits nowhere stays unplaced (pending) until a worker registers or
//! comes back. This module must never move an instance that is already placed.

/// One worker as placement sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkerLoad {
    pub id: String,
    pub name: String,
    /// Maximum instances; 0 means no limit.
    pub capacity: u32,
    /// Instances currently assigned to the worker (any state).
    pub instances: u32,
    pub live: bool,
}

impl WorkerLoad {
    fn has_room(&self) -> bool {
        self.capacity == 0 || self.instances < self.capacity
    }
}

/// Decides a worker for each of `unplaced` (in order) and returns
/// `(instance_id, worker_id)` pairs for the instances that found room.
pub fn place(unplaced: &[String], workers: &[WorkerLoad]) -> Vec<(String, String)> {
    let mut loads: Vec<WorkerLoad> = workers.iter().filter(|w| w.live).cloned().collect();
    let mut out = Vec::new();
    for instance in unplaced {
        let best = loads
            .iter_mut()
            .filter(|w| w.has_room())
            .min_by(|a, b| (a.instances, &a.name).cmp(&(b.instances, &b.name)));
        let Some(worker) = best else {
            // Nothing has room: every later instance would not fit either.
            break;
        };
        worker.instances += 1;
        out.push((instance.clone(), worker.id.clone()));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};
    use std::collections::HashMap;

    fn w(name: &str, capacity: u32, instances: u32, live: bool) -> WorkerLoad {
        WorkerLoad {
            id: format!("id-{name}"),
            name: name.to_string(),
            capacity,
            instances,
            live,
        }
    }

    fn ids(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("i{i}")).collect()
    }

    #[test]
    fn picks_least_loaded_then_name() {
        let workers = [
            w("b", 10, 1, true),
            w("a", 10, 1, true),
            w("c", 10, 0, true),
        ];
        let got = place(&ids(3), &workers);
        assert_eq!(
            got,
            vec![
                ("i0".into(), "id-c".into()),
                ("i1".into(), "id-a".into()),
                ("i2".into(), "id-b".into()),
            ]
        );
    }

    #[test]
    fn skips_dead_workers_and_respects_capacity() {
        let workers = [w("a", 1, 0, true), w("b", 10, 0, false)];
        let got = place(&ids(3), &workers);
        assert_eq!(got, vec![("i0".into(), "id-a".into())]);
    }

    #[test]
    fn zero_capacity_means_unlimited() {
        let workers = [w("a", 0, 500, true)];
        assert_eq!(place(&ids(2), &workers).len(), 2);
    }

    #[test]
    fn no_workers_leaves_everything_unplaced() {
        assert!(place(&ids(3), &[]).is_empty());
        assert!(place(&ids(3), &[w("a", 5, 0, false)]).is_empty());
    }

    /// Randomized check against a reference model: each placement goes to a live
    /// worker with room whose load is minimal at that moment, and nothing fits when
    /// an instance is left unplaced.
    #[test]
    fn randomized_against_model() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        for _ in 0..500 {
            let n_workers = rng.gen_range(0..6);
            let workers: Vec<WorkerLoad> = (0..n_workers)
                .map(|i| {
                    let cap = rng.gen_range(0..5);
                    let load = if cap == 0 {
                        rng.gen_range(0..4)
                    } else {
                        rng.gen_range(0..=cap)
                    };
                    w(&format!("w{i}"), cap, load, rng.gen_bool(0.7))
                })
                .collect();
            let unplaced = ids(rng.gen_range(0..12));
            let got = place(&unplaced, &workers);

            let mut loads: HashMap<String, WorkerLoad> =
                workers.iter().map(|w| (w.id.clone(), w.clone())).collect();
            for (k, (inst, wid)) in got.iter().enumerate() {
                assert_eq!(inst, &unplaced[k], "instances are placed in order");
                let chosen = loads[wid].clone();
                assert!(
                    chosen.live && chosen.has_room(),
                    "placed on a live worker with room"
                );
                for other in loads.values().filter(|o| o.live && o.has_room()) {
                    assert!(
                        (chosen.instances, &chosen.name) <= (other.instances, &other.name),
                        "{chosen:?} is not the least loaded (vs {other:?})"
                    );
                }
                loads.get_mut(wid).unwrap().instances += 1;
            }
            if got.len() < unplaced.len() {
                assert!(
                    !loads.values().any(|o| o.live && o.has_room()),
                    "an instance was left unplaced although a worker had room"
                );
            }
        }
    }
}
