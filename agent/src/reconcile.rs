//! The reconciler's diff: desired assignments (latest snapshot from the controller)
//! against the instances the worker currently manages. Pure, so it is unit-tested.
//!
//! A changed `generation` means "restart with the new settings"; any other change of an
//! assignment is taken on board without a restart (it is used on the next start).

use std::collections::{BTreeMap, BTreeSet};

use berth_api::control::Assignment;

/// What the worker must do for one instance.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// Not running here yet: start it.
    Start(Assignment),
    /// Generation changed: stop the old instance, start the new one.
    Replace(Assignment),
    /// Same generation, other fields changed: remember them, no restart.
    Update(Assignment),
    /// No longer assigned: stop it and release its resources.
    Stop(String),
}

impl Action {
    /// Instance the action is about.
    pub fn instance_id(&self) -> &str {
        match self {
            Action::Start(a) | Action::Replace(a) | Action::Update(a) => &a.instance_id,
            Action::Stop(id) => id,
        }
    }
}

/// Computes the actions turning `actual` (instance id -> the assignment it runs with)
/// into `desired`. Duplicated ids in `desired` keep their first occurrence; assignments
/// without an id are ignored. Actions come sorted by instance id, stops first.
pub fn diff(desired: &[Assignment], actual: &BTreeMap<String, Assignment>) -> Vec<Action> {
    let mut wanted: BTreeMap<&str, &Assignment> = BTreeMap::new();
    for a in desired {
        if a.instance_id.is_empty() {
            continue;
        }
        wanted.entry(a.instance_id.as_str()).or_insert(a);
    }
    let mut actions = Vec::new();
    let wanted_ids: BTreeSet<&str> = wanted.keys().copied().collect();
    for id in actual.keys() {
        if !wanted_ids.contains(id.as_str()) {
            actions.push(Action::Stop(id.clone()));
        }
    }
    for (id, a) in wanted {
        match actual.get(id) {
            None => actions.push(Action::Start(a.clone())),
            Some(current) if current.generation != a.generation => {
                actions.push(Action::Replace(a.clone()))
            }
            Some(current) if current != a => actions.push(Action::Update(a.clone())),
            Some(_) => {}
        }
    }
    actions
}

#[cfg(test)]
mod tests {
    use super::*;

    fn a(id: &str, generation: u64) -> Assignment {
        Assignment {
            instance_id: id.into(),
            site: "s".into(),
            image: "img".into(),
            port: 8000,
            generation,
            ..Default::default()
        }
    }

    fn actual(items: &[Assignment]) -> BTreeMap<String, Assignment> {
        items
            .iter()
            .map(|a| (a.instance_id.clone(), a.clone()))
            .collect()
    }

    #[test]
    fn empty_to_empty_does_nothing() {
        assert!(diff(&[], &BTreeMap::new()).is_empty());
    }

    #[test]
    fn new_instances_start() {
        let got = diff(&[a("x-2", 1), a("x-1", 1)], &BTreeMap::new());
        assert_eq!(
            got,
            vec![Action::Start(a("x-1", 1)), Action::Start(a("x-2", 1))]
        );
    }

    #[test]
    fn removed_instances_stop_first() {
        let got = diff(&[a("b", 1)], &actual(&[a("a", 1), a("c", 2)]));
        assert_eq!(
            got,
            vec![
                Action::Stop("a".into()),
                Action::Stop("c".into()),
                Action::Start(a("b", 1))
            ]
        );
    }

    #[test]
    fn unchanged_instances_are_left_alone() {
        let cur = actual(&[a("a", 4)]);
        assert!(diff(&[a("a", 4)], &cur).is_empty());
    }

    #[test]
    fn generation_change_replaces() {
        let got = diff(&[a("a", 5)], &actual(&[a("a", 4)]));
        assert_eq!(got, vec![Action::Replace(a("a", 5))]);
    }

    #[test]
    fn other_change_without_generation_updates() {
        let mut changed = a("a", 4);
        changed.registry_auth = "u:p".into();
        let got = diff(std::slice::from_ref(&changed), &actual(&[a("a", 4)]));
        assert_eq!(got, vec![Action::Update(changed)]);
    }

    #[test]
    fn duplicates_keep_first_and_empty_ids_are_ignored() {
        let mut second = a("a", 9);
        second.port = 1;
        let got = diff(&[a("a", 1), second, a("", 1)], &BTreeMap::new());
        assert_eq!(got, vec![Action::Start(a("a", 1))]);
    }

    #[test]
    fn everything_removed_stops_everything() {
        let got = diff(&[], &actual(&[a("a", 1), a("b", 1)]));
        assert_eq!(got.len(), 2);
        assert!(got.iter().all(|x| matches!(x, Action::Stop(_))));
        assert_eq!(got[0].instance_id(), "a");
    }
}
