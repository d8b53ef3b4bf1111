//! ListenEvents by polling: rkt has no daemon that sees pods change, so each stream takes a
//! snapshot of the pods (state, apps, exit statuses) and the store's images when it opens, then
//! every [`crate::Options::events_interval`] compares a new snapshot with the last one and sends
//! what changed. A change that comes and goes between two polls is not lost: a pod first seen
//! already exited still gets its `POD_STARTED`, `APP_STARTED`, `APP_EXITED` and `POD_EXITED`, in
//! that order. Past events (before the stream opened) are not replayed.

use std::collections::BTreeMap;
use std::path::Path;

use rkt_engine::pod::{Pods, State};

use crate::v1alpha::{self as api, EventType as E};

#[derive(Debug, Clone, PartialEq)]
struct PodSnap {
    state: State,
    /// App name and, once it exited, its exit code.
    apps: Vec<(String, Option<i32>)>,
    started: Option<i64>,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct Snapshot {
    pods: BTreeMap<String, PodSnap>,
    /// Image id -> name (without tag).
    images: BTreeMap<String, String>,
}

/// Where a pod is in its life: 1 prepared, 2 running, 3 exited, 4 marked for gc or removed.
fn rank(s: &PodSnap) -> u8 {
    match s.state {
        State::Embryo | State::Preparing | State::AbortedPrepare => 0,
        State::Prepared => 1,
        State::Running => 2,
        State::Exited => 3,
        State::Deleting | State::ExitedDeleting | State::ExitedGarbage | State::Garbage => 4,
    }
}

/// Whether the pod's apps ever ran (an exited pod in the garbage dirs did, a removed prepared pod
/// did not).
fn ran(s: &PodSnap) -> bool {
    s.started.is_some()
        || matches!(
            s.state,
            State::Running | State::Exited | State::ExitedDeleting | State::ExitedGarbage
        )
}

pub fn snapshot(dir: &Path) -> Snapshot {
    let mut snap = Snapshot::default();
    if let Ok(all) = Pods::new(dir).all() {
        for p in all {
            let codes = if p.state.has_run() {
                p.app_statuses()
            } else {
                Vec::new()
            };
            let apps = p
                .manifest()
                .map(|m| {
                    m.apps
                        .into_iter()
                        .map(|a| {
                            let c = codes.iter().find(|(n, _)| *n == a.name).map(|(_, c)| *c);
                            (a.name, c)
                        })
                        .collect()
                })
                .unwrap_or_default();
            let started = p.started().map(|t| t.timestamp());
            snap.pods.insert(
                p.uuid.clone(),
                PodSnap {
                    state: p.state,
                    apps,
                    started,
                },
            );
        }
    }
    if let Ok(Some(store)) = crate::images::open_store(dir) {
        if let Ok(list) = store.list() {
            for i in list {
                let (name, _) = rkt_store::split_name_tag(&i.name);
                snap.images.insert(i.id, name);
            }
        }
    }
    snap
}

fn ev(t: E, id: &str, from: &str, time: i64, data: Vec<(&str, String)>) -> api::Event {
    api::Event {
        r#type: t as i32,
        id: id.to_string(),
        from: from.to_string(),
        time,
        data: data
            .into_iter()
            .map(|(k, v)| api::KeyValue {
                key: k.into(),
                value: v,
            })
            .collect(),
    }
}

/// The events that take the world from `old` to `new`, `now` being the time of `new`.
pub fn diff(old: &Snapshot, new: &Snapshot, now: i64) -> Vec<api::Event> {
    let mut out = Vec::new();
    let gone = PodSnap {
        state: State::Garbage,
        apps: Vec::new(),
        started: None,
    };
    let uuids = old
        .pods
        .keys()
        .chain(new.pods.keys().filter(|u| !old.pods.contains_key(*u)));
    for uuid in uuids {
        let before = old.pods.get(uuid);
        let after = new.pods.get(uuid);
        let from = format!("rkt-{uuid}");
        let pod_ev = |t| ev(t, uuid, &from, now, Vec::new());
        let (r0, r1) = (before.map(rank).unwrap_or(0), after.map(rank).unwrap_or(4));
        // A pod removed between polls keeps what we knew of it.
        let a = after.unwrap_or(before.unwrap_or(&gone));
        if before.is_none() && after.is_none() {
            continue;
        }
        if a.state == State::AbortedPrepare
            && before.map(|b| b.state) != Some(State::AbortedPrepare)
        {
            out.push(pod_ev(E::PodPrepareAborted));
        }
        if r0 < 1 && r1 == 1 {
            out.push(pod_ev(E::PodPrepared));
        }
        let has_run = ran(a) || before.is_some_and(ran);
        if r0 < 2 && r1 >= 2 && has_run {
            let t = a.started.unwrap_or(now);
            out.push(ev(E::PodStarted, uuid, &from, t, Vec::new()));
            for (app, _) in &a.apps {
                out.push(ev(E::AppStarted, uuid, app, t, Vec::new()));
            }
        } else if r0 == 2 && r1 == 2 {
            // Apps added to a running pod (`rkt app add` + `start`).
            for (app, _) in &a.apps {
                if !before.is_some_and(|b| b.apps.iter().any(|(n, _)| n == app)) {
                    out.push(ev(E::AppStarted, uuid, app, now, Vec::new()));
                }
            }
        }
        if has_run {
            // Apps whose exit status appeared (while the pod runs, or with its exit).
            for (app, code) in &a.apps {
                let was = before.and_then(|b| b.apps.iter().find(|(n, _)| n == app));
                let known_before = was.is_some_and(|(_, c)| c.is_some()) || r0 >= 3;
                if known_before {
                    continue;
                }
                if code.is_some() || (r0 < 3 && r1 >= 3) {
                    let data = code
                        .map(|c| vec![("exit_code", c.to_string())])
                        .unwrap_or_default();
                    out.push(ev(E::AppExited, uuid, app, now, data));
                }
            }
        }
        if r0 < 3 && r1 >= 3 && has_run {
            out.push(pod_ev(E::PodExited));
        }
        if r0 < 4 && r1 == 4 {
            out.push(pod_ev(E::PodGarbageCollected));
        }
    }
    for (id, name) in &new.images {
        if !old.images.contains_key(id) {
            out.push(ev(E::ImageImported, id, name, now, Vec::new()));
        }
    }
    for (id, name) in &old.images {
        if !new.images.contains_key(id) {
            out.push(ev(E::ImageRemoved, id, name, now, Vec::new()));
        }
    }
    out
}

/// rkt's EventFilter (conditions ANDed).
pub fn matches(e: &api::Event, f: &api::EventFilter) -> bool {
    (f.types.is_empty() || f.types.contains(&e.r#type))
        && (f.ids.is_empty() || f.ids.contains(&e.id))
        && (f.names.is_empty() || f.names.contains(&e.from))
        && (f.since_time <= 0 || e.time >= f.since_time)
        && (f.until_time <= 0 || e.time <= f.until_time)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(state: State, apps: &[(&str, Option<i32>)], started: Option<i64>) -> PodSnap {
        PodSnap {
            state,
            apps: apps.iter().map(|(n, c)| (n.to_string(), *c)).collect(),
            started,
        }
    }

    fn types(old: &Snapshot, new: &Snapshot) -> Vec<E> {
        diff(old, new, 1000)
            .iter()
            .map(|e| E::try_from(e.r#type).unwrap())
            .collect()
    }

    #[test]
    fn lifecycle_events() {
        let mut a = Snapshot::default();
        a.pods
            .insert("u".into(), pod(State::Prepared, &[("app", None)], None));
        let mut b = Snapshot::default();
        b.pods
            .insert("u".into(), pod(State::Running, &[("app", None)], Some(900)));
        let mut c = Snapshot::default();
        c.pods.insert(
            "u".into(),
            pod(State::Exited, &[("app", Some(3))], Some(900)),
        );
        let empty = Snapshot::default();
        assert_eq!(types(&empty, &a), vec![E::PodPrepared]);
        assert_eq!(types(&a, &b), vec![E::PodStarted, E::AppStarted]);
        let e = diff(&a, &b, 1000);
        assert_eq!(e[0].time, 900);
        assert_eq!(e[0].from, "rkt-u");
        assert_eq!(e[1].from, "app");
        assert_eq!(types(&b, &c), vec![E::AppExited, E::PodExited]);
        assert_eq!(diff(&b, &c, 1000)[0].data[0].value, "3");
        // A short-lived pod seen only after it exited.
        assert_eq!(
            types(&empty, &c),
            vec![E::PodStarted, E::AppStarted, E::AppExited, E::PodExited]
        );
        assert_eq!(types(&c, &empty), vec![E::PodGarbageCollected]);
        assert_eq!(types(&c, &c), vec![]);
        // A prepared pod removed never ran.
        assert_eq!(types(&a, &empty), vec![E::PodGarbageCollected]);
        let mut i = Snapshot::default();
        i.images.insert("sha256-1".into(), "busybox".into());
        assert_eq!(types(&empty, &i), vec![E::ImageImported]);
        assert_eq!(types(&i, &empty), vec![E::ImageRemoved]);
    }
}
