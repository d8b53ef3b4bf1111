//! Pods as the v1alpha API shows them, read through the engine (`rkt_engine::pod`), and rkt's
//! PodFilter semantics.

use std::collections::HashSet;
use std::os::unix::fs::MetadataExt;

use rkt_engine::pod::{Pod, State, MANIFEST_FILE};
use rkt_schema::NameValue;

use crate::v1alpha as api;

pub fn state(s: State) -> api::PodState {
    use api::PodState as P;
    match s {
        State::Embryo => P::Embryo,
        State::Preparing => P::Preparing,
        State::AbortedPrepare => P::AbortedPrepare,
        State::Prepared => P::Prepared,
        State::Running => P::Running,
        State::Deleting | State::ExitedDeleting => P::Deleting,
        State::Exited => P::Exited,
        State::ExitedGarbage | State::Garbage => P::Garbage,
    }
}

pub fn key_values(nv: &[NameValue]) -> Vec<api::KeyValue> {
    nv.iter()
        .map(|n| api::KeyValue {
            key: n.name.clone(),
            value: n.value.clone(),
        })
        .collect()
}

fn nanos(t: chrono::DateTime<chrono::Utc>) -> i64 {
    t.timestamp_nanos_opt().unwrap_or(0)
}

/// The pod as rkt's api-service fills it: id and state always; for a pod past embryo the
/// manifest, annotations, apps (with image id, name and version), times, the stage1 pid (-1 when
/// none); apps' states and exit codes once the pod has run; networks and cgroup while it runs.
pub fn to_api(p: &Pod) -> api::Pod {
    let mut out = api::Pod {
        id: p.uuid.clone(),
        pid: -1,
        state: state(p.state) as i32,
        ..Default::default()
    };
    if p.state == State::Embryo {
        return out;
    }
    let raw = rkt_engine::read_limited(
        &p.path.join(MANIFEST_FILE),
        rkt_engine::limits::POD_MANIFEST,
        "pod manifest",
    )
    .ok();
    let manifest: Option<rkt_schema::PodManifest> =
        raw.as_deref().and_then(|b| serde_json::from_slice(b).ok());
    if let Some(m) = &manifest {
        out.annotations = key_values(&m.annotations);
        let statuses = p.app_statuses();
        for a in &m.apps {
            // The pod manifest may name the image with its tag (`name:tag`); the API's image
            // name is without it, the tag being the version, as for ListImages.
            let (name, tag) = rkt_store::split_name_tag(&a.image.name);
            let version = rkt_schema::lookup(&a.image.labels, "version").unwrap_or(&tag);
            let code = statuses.iter().find(|(n, _)| *n == a.name).map(|(_, c)| *c);
            let (st, exit_code) = if p.state == State::Running {
                // An app of a running pod with a recorded status has exited (multi-app pods).
                match code {
                    Some(c) => (api::AppState::Exited, c),
                    None => (api::AppState::Running, -1),
                }
            } else if p.state.has_run() {
                (api::AppState::Exited, code.unwrap_or(-1))
            } else {
                (api::AppState::Undefined, -1)
            };
            out.apps.push(api::App {
                name: a.name.clone(),
                image: Some(api::Image {
                    base_format: Some(crate::images::appc_format()),
                    id: a.image.id.clone(),
                    name,
                    version: version.to_string(),
                    ..Default::default()
                }),
                state: st as i32,
                exit_code,
                annotations: key_values(&a.annotations),
            });
        }
    }
    out.manifest = raw.unwrap_or_default();
    out.created_at = p.created().map(nanos).unwrap_or(0);
    out.started_at = p.started().map(nanos).unwrap_or(0);
    if matches!(p.state, State::ExitedGarbage | State::Garbage) {
        // The rename into a garbage directory is the last change of the directory's ctime.
        if let Ok(m) = std::fs::symlink_metadata(&p.path) {
            out.gc_marked_at = m.ctime() * 1_000_000_000 + m.ctime_nsec();
        }
    }
    out.pid = p.pid().unwrap_or(-1);
    if p.state == State::Running {
        out.networks = rkt_engine::net::pod_networks(&p.path)
            .into_iter()
            .map(|n| {
                let v6 = n.ip.contains(':');
                api::Network {
                    name: n.net_name,
                    ipv4: if v6 { String::new() } else { n.ip.clone() },
                    ipv6: if v6 { n.ip } else { String::new() },
                }
            })
            .collect();
        if out.pid > 0 {
            out.cgroup = cgroup_of(out.pid).unwrap_or_default();
        }
    }
    out
}

/// The cgroup of `pid` as rkt reports a pod's: the `name=systemd` hierarchy on cgroup v1, the
/// unified one on v2.
fn cgroup_of(pid: i32) -> Option<String> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?;
    let find = |ctl: &str| {
        text.lines().find_map(|l| {
            let mut f = l.splitn(3, ':');
            let (_, c, path) = (f.next()?, f.next()?, f.next()?);
            (c == ctl).then(|| path.to_string())
        })
    };
    find("name=systemd").or_else(|| find(""))
}

fn has_all<'a>(have: impl Iterator<Item = &'a str>, want: &[String]) -> bool {
    let have: HashSet<&str> = have.collect();
    want.iter().all(|w| have.contains(w.as_str()))
}

pub fn key_values_contain(have: &[api::KeyValue], want: &[api::KeyValue]) -> bool {
    want.iter()
        .all(|w| have.iter().any(|h| h.key == w.key && h.value == w.value))
}

/// rkt's PodFilter: every non-empty condition must hold (ids and states: any of; app names,
/// image ids, networks, annotations: all of; cgroups: equal; sub-cgroups: the pod's cgroup is a
/// prefix of one given).
pub fn matches(p: &api::Pod, f: &api::PodFilter) -> bool {
    (f.ids.is_empty() || f.ids.contains(&p.id))
        && (f.states.is_empty() || f.states.contains(&p.state))
        && (f.app_names.is_empty() || has_all(p.apps.iter().map(|a| a.name.as_str()), &f.app_names))
        && (f.image_ids.is_empty()
            || has_all(
                p.apps
                    .iter()
                    .filter_map(|a| a.image.as_ref().map(|i| i.id.as_str())),
                &f.image_ids,
            ))
        && (f.network_names.is_empty()
            || has_all(p.networks.iter().map(|n| n.name.as_str()), &f.network_names))
        && key_values_contain(&p.annotations, &f.annotations)
        && (f.cgroups.is_empty() || f.cgroups.contains(&p.cgroup))
        && (f.pod_sub_cgroups.is_empty()
            || (!p.cgroup.is_empty() && f.pod_sub_cgroups.iter().any(|c| c.starts_with(&p.cgroup))))
}

/// Filters are ORed; none means every pod.
pub fn matches_any(p: &api::Pod, filters: &[api::PodFilter]) -> bool {
    filters.is_empty() || filters.iter().any(|f| matches(p, f))
}
