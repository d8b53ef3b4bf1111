//! Pods on disk: `<dir>/pods/<state dir>/<uuid>`, state changes by `rename(2)`, liveness by a
//! `flock` on the pod directory held by the process that owns the pod (exclusive while preparing,
//! running or deleting; a shared lock that can be taken means nobody owns it any more).

pub mod app;
pub mod build;
pub mod isolators;
pub mod lifecycle;
pub mod logs;
pub mod request;
pub mod table;

use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use anyhow::{bail, Context, Result};
use rkt_flock::{Flock, Mode};

/// The directories under `pods/`, in the order a pod normally moves through them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PodDir {
    Embryo,
    Prepare,
    Prepared,
    Run,
    ExitedGarbage,
    Garbage,
}

impl PodDir {
    pub const ALL: [PodDir; 6] = [
        PodDir::Embryo,
        PodDir::Prepare,
        PodDir::Prepared,
        PodDir::Run,
        PodDir::ExitedGarbage,
        PodDir::Garbage,
    ];

    pub fn name(self) -> &'static str {
        match self {
            PodDir::Embryo => "embryo",
            PodDir::Prepare => "prepare",
            PodDir::Prepared => "prepared",
            PodDir::Run => "run",
            PodDir::ExitedGarbage => "exited-garbage",
            PodDir::Garbage => "garbage",
        }
    }
}

/// rkt's pod states, as `rkt list`/`rkt status` print them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    Embryo,
    Preparing,
    AbortedPrepare,
    Prepared,
    Running,
    Deleting,
    Exited,
    ExitedDeleting,
    ExitedGarbage,
    Garbage,
}

impl State {
    pub fn as_str(self) -> &'static str {
        match self {
            State::Embryo => "embryo",
            State::Preparing => "preparing",
            State::AbortedPrepare => "aborted prepare",
            State::Prepared => "prepared",
            State::Running => "running",
            State::Deleting => "deleting",
            State::Exited => "exited",
            State::ExitedDeleting => "exited deleting",
            State::ExitedGarbage => "exited garbage",
            State::Garbage => "garbage",
        }
    }

    /// States in which the apps have run and may have left exit statuses.
    pub fn has_run(self) -> bool {
        matches!(
            self,
            State::Running
                | State::Exited
                | State::ExitedDeleting
                | State::ExitedGarbage
                | State::Deleting
        )
    }
}

/// An flock on a pod directory, released when dropped (or when the owning process dies).
pub struct Lock(Flock);

impl Lock {
    fn try_lock(path: &Path, mode: Mode) -> Result<Option<Flock>> {
        let dir =
            File::open(path).with_context(|| format!("opening pod dir {}", path.display()))?;
        Ok(Flock::try_lock(dir, mode)?)
    }

    /// Takes an exclusive lock without waiting; None if another process holds the pod.
    pub fn try_exclusive(path: &Path) -> Result<Option<Lock>> {
        Ok(Lock::try_lock(path, Mode::Exclusive)?.map(Lock))
    }

    /// Whether some process holds an exclusive lock on `path` (i.e. owns the pod).
    pub fn is_held(path: &Path) -> Result<bool> {
        Ok(Lock::try_lock(path, Mode::Shared)?.is_none())
    }

    pub fn fd(&self) -> i32 {
        self.0.as_raw_fd()
    }
}

/// The `pods/` tree of one data directory.
pub struct Pods {
    pub root: PathBuf,
}

impl Pods {
    pub fn new(data_dir: &Path) -> Pods {
        Pods {
            root: data_dir.join("pods"),
        }
    }

    pub fn dir(&self, d: PodDir) -> PathBuf {
        self.root.join(d.name())
    }

    pub fn path(&self, d: PodDir, uuid: &str) -> PathBuf {
        self.dir(d).join(uuid)
    }

    /// 0700 on the data dir and pods/, created so or tightened (see rkt_store::private_dir).
    fn ensure_private(&self) -> Result<()> {
        if let Some(data_dir) = self.root.parent() {
            rkt_store::private_dir(data_dir)?;
        }
        rkt_store::private_dir(&self.root)
    }

    pub fn ensure_dirs(&self) -> Result<()> {
        // 0700 on the data dir and pods/, enforced on every use: pods' upper dirs can hold
        // setuid files an app planted (see rkt_store::private_dir).
        self.ensure_private()?;
        for d in PodDir::ALL {
            let p = self.dir(d);
            std::fs::create_dir_all(&p).with_context(|| format!("creating {}", p.display()))?;
        }
        Ok(())
    }

    /// Every pod, found by walking the state directories. A pod that moves while we walk can be
    /// seen twice or missed; callers that act on one pod re-locate it with [`Pods::find`].
    pub fn all(&self) -> Result<Vec<Pod>> {
        if self.root.exists() {
            self.ensure_private()?; // every command that walks the pods keeps them private
        }
        let mut out: Vec<Pod> = Vec::new();
        for d in PodDir::ALL {
            let rd = match std::fs::read_dir(self.dir(d)) {
                Ok(rd) => rd,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(e).context("listing pods"),
            };
            for ent in rd.flatten() {
                let name = ent.file_name().to_string_lossy().into_owned();
                if uuid::Uuid::parse_str(&name).is_err() || out.iter().any(|p| p.uuid == name) {
                    continue;
                }
                if let Some(p) = Pod::load(self, &name)? {
                    out.push(p);
                }
            }
        }
        Ok(out)
    }

    /// Finds one pod by full UUID or unambiguous prefix.
    pub fn find(&self, query: &str) -> Result<Pod> {
        let q = query.trim().to_ascii_lowercase();
        let mut matches: Vec<String> = Vec::new();
        if !q.is_empty() {
            for d in PodDir::ALL {
                if let Ok(rd) = std::fs::read_dir(self.dir(d)) {
                    for ent in rd.flatten() {
                        let name = ent.file_name().to_string_lossy().into_owned();
                        if name.starts_with(&q) && !matches.contains(&name) {
                            matches.push(name);
                        }
                    }
                }
            }
        }
        match matches.len() {
            0 => bail!("no matches found for {query:?}"),
            1 => Pod::load(self, &matches[0])?
                .with_context(|| format!("no matches found for {query:?}")),
            _ => bail!("ambiguous UUID prefix {query:?}: matches {}", matches.len()),
        }
    }
}

/// A pod as observed at one moment.
#[derive(Debug, Clone)]
pub struct Pod {
    pub uuid: String,
    pub dir: PodDir,
    pub path: PathBuf,
    pub state: State,
}

impl Pod {
    /// Locates `uuid` and works out its state; None if it no longer exists. Retries when the pod
    /// is renamed between the lookup and the lock probe.
    pub fn load(pods: &Pods, uuid: &str) -> Result<Option<Pod>> {
        for _ in 0..5 {
            let mut raced = false;
            for d in PodDir::ALL {
                let path = pods.path(d, uuid);
                if !path.exists() {
                    continue;
                }
                let held = match Lock::is_held(&path) {
                    Ok(h) => h,
                    Err(_) if !path.exists() => {
                        raced = true;
                        break;
                    }
                    Err(e) => return Err(e),
                };
                let state = match (d, held) {
                    (PodDir::Embryo, _) => State::Embryo,
                    (PodDir::Prepare, true) => State::Preparing,
                    (PodDir::Prepare, false) => State::AbortedPrepare,
                    (PodDir::Prepared, _) => State::Prepared,
                    (PodDir::Run, true) => State::Running,
                    (PodDir::Run, false) => State::Exited,
                    (PodDir::ExitedGarbage, true) => State::ExitedDeleting,
                    (PodDir::ExitedGarbage, false) => State::ExitedGarbage,
                    (PodDir::Garbage, true) => State::Deleting,
                    (PodDir::Garbage, false) => State::Garbage,
                };
                return Ok(Some(Pod {
                    uuid: uuid.to_string(),
                    dir: d,
                    path,
                    state,
                }));
            }
            if !raced {
                return Ok(None);
            }
        }
        Ok(None)
    }

    pub fn short_uuid(&self) -> &str {
        &self.uuid[..8.min(self.uuid.len())]
    }

    /// `pod-created`, else the directory's mtime.
    pub fn created(&self) -> Option<chrono::DateTime<chrono::Utc>> {
        read_time(&self.path.join(CREATED_FILE)).or_else(|| {
            std::fs::metadata(&self.path)
                .and_then(|m| m.modified())
                .ok()
                .map(Into::into)
        })
    }

    /// When the pod was handed to its stage1 (None if it never ran).
    pub fn started(&self) -> Option<chrono::DateTime<chrono::Utc>> {
        read_time(&self.path.join(STARTED_FILE))
    }

    pub fn manifest(&self) -> Result<rkt_schema::PodManifest> {
        let p = self.path.join(MANIFEST_FILE);
        let text =
            std::fs::read(&p).with_context(|| format!("reading pod manifest {}", p.display()))?;
        serde_json::from_slice(&text).with_context(|| format!("parsing {}", p.display()))
    }

    pub fn pid(&self) -> Option<i32> {
        std::fs::read_to_string(rkt_stage2::pod_pid_path(&self.path))
            .ok()
            .and_then(|s| s.trim().parse().ok())
    }

    /// Exit codes the stage1 recorded, in pod manifest order.
    pub fn app_statuses(&self) -> Vec<(String, i32)> {
        let names: Vec<String> = match self.manifest() {
            Ok(m) => m.apps.into_iter().map(|a| a.name).collect(),
            Err(_) => Vec::new(),
        };
        names
            .into_iter()
            .filter_map(|n| {
                let code = std::fs::read_to_string(rkt_stage2::app_status_path(&self.path, &n))
                    .ok()?
                    .trim()
                    .parse()
                    .ok()?;
                Some((n, code))
            })
            .collect()
    }

    /// Moves the pod to another state directory (atomic rename); updates self.
    pub fn move_to(&mut self, pods: &Pods, to: PodDir) -> Result<()> {
        let dest = pods.path(to, &self.uuid);
        std::fs::rename(&self.path, &dest).with_context(|| {
            format!(
                "moving pod {} from {} to {}",
                self.uuid,
                self.dir.name(),
                to.name()
            )
        })?;
        if durable() {
            sync_dir(&pods.dir(to));
        }
        self.path = dest;
        self.dir = to;
        Ok(())
    }
}

pub const MANIFEST_FILE: &str = "pod";
pub const CREATED_FILE: &str = "pod-created";
pub const STARTED_FILE: &str = "pod-started";
/// Present when the apps' root filesystems are overlays (rkt's marker file).
pub const OVERLAY_MARKER: &str = "overlay-prepared";
/// `--tpm` mode chosen at prepare time (`auto`, `required` or `off`).
pub const TPM_FILE: &str = "tpm-mode";

fn read_time(p: &Path) -> Option<chrono::DateTime<chrono::Utc>> {
    let s = std::fs::read_to_string(p).ok()?;
    chrono::DateTime::parse_from_rfc3339(s.trim())
        .ok()
        .map(|t| t.with_timezone(&chrono::Utc))
}

pub fn write_time(p: &Path) -> Result<()> {
    write_atomic(p, now_rfc3339().as_bytes())
}

fn now_rfc3339() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Nanos, true)
}

/// [`write_time`] as a runtime file ([`write_runtime`]).
pub fn write_runtime_time(p: &Path) -> Result<()> {
    write_runtime(p, now_rfc3339().as_bytes())
}

/// Whether this process's pod writes must survive a host crash (docs/pods.md, "Durability").
/// Durable unless the command says otherwise: `rkt prepare` and `run-prepared` keep the default.
static EPHEMERAL: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// For `rkt run`: the pod is prepared and started by this process at once, and after a host crash
/// it is an aborted prepare or an exited pod (garbage for gc) whatever its files hold. Its files
/// are still written by atomic rename (no reader sees half a file) but neither they nor the
/// directory moves are fsynced.
pub fn set_ephemeral() {
    EPHEMERAL.store(true, std::sync::atomic::Ordering::Relaxed);
}

fn durable() -> bool {
    !EPHEMERAL.load(std::sync::atomic::Ordering::Relaxed)
}

/// Writes a file via a temporary in the same directory and rename; fsynced first unless this
/// process's pods are ephemeral ([`set_ephemeral`]).
pub fn write_atomic(p: &Path, data: &[u8]) -> Result<()> {
    write_file(p, data, durable())
}

/// [`write_atomic`] for a runtime file of a pod already in `run/` (spec, start time): rewritten
/// at every start and meaningless after a host crash, when the pod is exited. Never fsynced.
pub fn write_runtime(p: &Path, data: &[u8]) -> Result<()> {
    write_file(p, data, false)
}

fn write_file(p: &Path, data: &[u8], sync: bool) -> Result<()> {
    use rkt_stage2::atomic::Durability;
    let d = if sync {
        Durability::Fsync
    } else {
        Durability::Runtime
    };
    rkt_stage2::atomic::write(p, data, d)
}

use rkt_stage2::atomic::sync_dir;

/// Waits until nobody holds the pod (it exited) or `timeout` passes; true if it exited.
pub fn wait_exited(path: &Path, timeout: Option<Duration>) -> bool {
    let start = Instant::now();
    loop {
        match Lock::is_held(path) {
            Ok(false) | Err(_) => return true,
            Ok(true) => {}
        }
        if timeout.is_some_and(|t| start.elapsed() >= t) {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Age of a directory for gc: its ctime, which the rename into the garbage dir refreshes.
pub fn ctime_age(p: &Path) -> Option<Duration> {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::symlink_metadata(p).ok()?;
    let ctime = SystemTime::UNIX_EPOCH
        + Duration::new(m.ctime().max(0) as u64, m.ctime_nsec().max(0) as u32);
    SystemTime::now().duration_since(ctime).ok()
}

/// Unmounts everything mounted at or below `dir` (deepest first), as left by a stage1 that died.
pub fn unmount_all_under(dir: &Path) -> Result<()> {
    let mounts = rkt_stage2::mountinfo::read_self().context("reading mountinfo")?;
    for m in rkt_stage2::mountinfo::points_under(&mounts, dir) {
        match nix::mount::umount2(&m, nix::mount::MntFlags::MNT_DETACH) {
            Ok(()) | Err(nix::errno::Errno::EINVAL) | Err(nix::errno::Errno::ENOENT) => {}
            Err(e) => return Err(e).with_context(|| format!("unmounting {}", m.display())),
        }
    }
    Ok(())
}

/// `rm -rf` that refuses to cross into another filesystem, so a bind mount that survived
/// [`unmount_all_under`] can never make us delete host files.
pub fn remove_tree(p: &Path) -> Result<()> {
    use std::os::unix::fs::MetadataExt;
    let m = match std::fs::symlink_metadata(p) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e).with_context(|| format!("removing {}", p.display())),
    };
    fn walk(p: &Path, dev: u64) -> Result<()> {
        for ent in std::fs::read_dir(p).with_context(|| format!("reading {}", p.display()))? {
            let ent = ent?;
            let path = ent.path();
            let m = std::fs::symlink_metadata(&path)?;
            if m.is_dir() {
                if m.dev() != dev {
                    bail!("{} is still a mount point, not removing it", path.display());
                }
                walk(&path, dev)?;
                std::fs::remove_dir(&path)
                    .with_context(|| format!("removing {}", path.display()))?;
            } else {
                std::fs::remove_file(&path)
                    .with_context(|| format!("removing {}", path.display()))?;
            }
        }
        Ok(())
    }
    if m.is_dir() {
        walk(p, m.dev())?;
        std::fs::remove_dir(p).with_context(|| format!("removing {}", p.display()))?;
    } else {
        std::fs::remove_file(p)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lock_states() {
        let d = tempfile::tempdir().unwrap();
        assert!(!Lock::is_held(d.path()).unwrap());
        let l = Lock::try_exclusive(d.path()).unwrap().unwrap();
        assert!(Lock::is_held(d.path()).unwrap());
        assert!(Lock::try_exclusive(d.path()).unwrap().is_none());
        drop(l);
        assert!(!Lock::is_held(d.path()).unwrap());
    }
}
