//! GetLogs from the logs the pod keeps (`rkt_engine::pod::logs`: `<pod>/logs/<app>.log`, CRI
//! format). Each line sent is one record as the file has it (`TIME STREAM F|P TEXT`, text made
//! valid UTF-8); without `app_name` every app's records are merged by time and, when the pod has
//! several apps (or is a sandbox, whose apps come and go), each starts with `APP: ` as `rkt logs`
//! prints them; following a sandbox's every app takes in the apps added meanwhile.

use std::path::{Path, PathBuf};
use std::time::Duration;

use rkt_engine::pod::logs::{Entry, Follower};
use rkt_engine::pod::{Pod, Pods, State};
use tokio::sync::mpsc::Sender;
use tonic::Status;

use crate::v1alpha as api;

/// How often `follow` looks for new records (as `rkt logs --follow`).
const FOLLOW_POLL: Duration = Duration::from_millis(100);
/// Bytes of lines in one response message (gRPC clients refuse messages over 4 MiB by default).
const MAX_MESSAGE: usize = 256 << 10;

pub struct Source {
    pods_root: PathBuf,
    uuid: String,
    pod_dir: PathBuf,
    apps: Vec<String>,
    prefix: bool,
    /// Every app of a sandbox: apps added while following are followed too.
    grows: bool,
}

impl Source {
    pub fn open(dir: &Path, uuid: &str, app: &str) -> Result<Source, Status> {
        let pods = Pods::new(dir);
        let pod = match Pod::load(&pods, &uuid.to_ascii_lowercase()) {
            Ok(Some(p)) => p,
            Ok(None) => return Err(Status::not_found(format!("no pod {uuid}"))),
            Err(e) => return Err(Status::internal(format!("{e:#}"))),
        };
        if !pod.state.has_run() {
            return Err(Status::failed_precondition(format!(
                "pod {uuid} has not run, it has no logs (state: {})",
                pod.state.as_str()
            )));
        }
        let names: Vec<String> = pod
            .manifest()
            .map_err(|e| Status::internal(format!("{e:#}")))?
            .apps
            .into_iter()
            .map(|a| a.name)
            .collect();
        let apps = if app.is_empty() {
            names
        } else if names.iter().any(|n| n == app) {
            vec![app.to_string()]
        } else {
            return Err(Status::not_found(format!("pod {uuid} has no app {app:?}")));
        };
        let mutable = rkt_engine::pod::app::is_mutable(&pod.path);
        Ok(Source {
            pods_root: pods.root,
            uuid: pod.uuid,
            prefix: app.is_empty() && (apps.len() > 1 || mutable),
            grows: app.is_empty() && mutable,
            pod_dir: pod.path,
            apps,
        })
    }

    fn running(&self) -> bool {
        let pods = Pods {
            root: self.pods_root.clone(),
        };
        matches!(
            Pod::load(&pods, &self.uuid).ok().flatten().map(|p| p.state),
            Some(State::Running)
        )
    }

    /// Sends the records `r` asks for; with `follow`, keeps sending new ones until the pod stops
    /// running, `until_time` passes or the caller goes away.
    pub fn stream(
        &mut self,
        r: &api::GetLogsRequest,
        tx: &Sender<Result<api::GetLogsResponse, Status>>,
    ) {
        let mut followers: Vec<Follower> = self
            .apps
            .iter()
            .map(|a| Follower::new(&self.pod_dir, a))
            .collect();
        let first = match poll_all(&mut followers) {
            Ok(v) => v,
            Err(e) => {
                let _ = tx.blocking_send(Err(e));
                return;
            }
        };
        let first: Vec<_> = first.into_iter().filter(|(_, e)| in_window(e, r)).collect();
        let skip = if r.lines > 0 {
            tail_start(&first, r.lines as usize)
        } else {
            0
        };
        if !self.send(&first[skip..], tx) || !r.follow {
            return;
        }
        loop {
            let done = !self.running();
            if self.grows {
                self.add_new_apps(&mut followers);
            }
            let next = match poll_all(&mut followers) {
                Ok(v) => v,
                Err(e) => {
                    let _ = tx.blocking_send(Err(e));
                    return;
                }
            };
            let next: Vec<_> = next.into_iter().filter(|(_, e)| in_window(e, r)).collect();
            if !self.send(&next, tx) || done || tx.is_closed() {
                return;
            }
            if r.until_time > 0 && chrono::Utc::now().timestamp() > r.until_time {
                return;
            }
            std::thread::sleep(FOLLOW_POLL);
        }
    }

    /// Apps `rkt app add` added since: followed from their start.
    fn add_new_apps(&mut self, followers: &mut Vec<Follower>) {
        let Ok(pod) = Pod::load(
            &Pods {
                root: self.pods_root.clone(),
            },
            &self.uuid,
        ) else {
            return;
        };
        let names = pod.and_then(|p| p.manifest().ok()).map(|m| m.apps);
        for ra in names.unwrap_or_default() {
            if !self.apps.contains(&ra.name) {
                followers.push(Follower::new(&self.pod_dir, &ra.name));
                self.apps.push(ra.name);
            }
        }
    }

    /// False once the caller is gone.
    fn send(
        &self,
        records: &[(usize, Entry)],
        tx: &Sender<Result<api::GetLogsResponse, Status>>,
    ) -> bool {
        let mut lines = Vec::new();
        let mut size = 0;
        for (i, e) in records {
            let prefix = if self.prefix {
                format!("{}: ", self.apps[*i])
            } else {
                String::new()
            };
            let line = format!(
                "{prefix}{} {} {} {}",
                e.time,
                e.stream.as_str(),
                if e.full { "F" } else { "P" },
                String::from_utf8_lossy(&e.content)
            );
            size += line.len();
            lines.push(line);
            if size >= MAX_MESSAGE {
                let batch = std::mem::take(&mut lines);
                size = 0;
                if tx
                    .blocking_send(Ok(api::GetLogsResponse { lines: batch }))
                    .is_err()
                {
                    return false;
                }
            }
        }
        lines.is_empty() || tx.blocking_send(Ok(api::GetLogsResponse { lines })).is_ok()
    }
}

/// Whether the record's time is within `since_time`..`until_time` (seconds; 0: open).
fn in_window(e: &Entry, r: &api::GetLogsRequest) -> bool {
    if r.since_time <= 0 && r.until_time <= 0 {
        return true;
    }
    let Ok(t) = chrono::DateTime::parse_from_rfc3339(&e.time) else {
        return false;
    };
    let t = t.timestamp();
    (r.since_time <= 0 || t >= r.since_time) && (r.until_time <= 0 || t <= r.until_time)
}

/// New records of every app in time order (the timestamps have a fixed width, so they sort as
/// strings; the stable sort keeps each app's own order).
fn poll_all(followers: &mut [Follower]) -> Result<Vec<(usize, Entry)>, Status> {
    let mut all = Vec::new();
    for (i, f) in followers.iter_mut().enumerate() {
        let recs = f.poll().map_err(|e| Status::internal(format!("{e:#}")))?;
        all.extend(recs.into_iter().map(|e| (i, e)));
    }
    all.sort_by(|a, b| a.1.time.cmp(&b.1.time));
    Ok(all)
}

/// Where the last `n` lines start (a line may be `P` pieces and its `F` record).
fn tail_start(records: &[(usize, Entry)], n: usize) -> usize {
    let mut lines = 0;
    for (idx, (_, e)) in records.iter().enumerate().rev() {
        if e.full {
            if lines == n {
                return idx + 1;
            }
            lines += 1;
        }
    }
    0
}
