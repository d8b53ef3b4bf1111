//! rkt's app API (`rkt app sandbox|add|start|stop|rm|list|status|exec`, rkt v1's experimental
//! "mutable pods", as rktlet and the containerd shim drive them): a pod started empty, whose
//! apps are added, started, stopped and removed while it runs.
//!
//! A mutable pod is a running pod whose manifest carries rkt v1's annotation
//! `coreos.com/rkt/stage1/mutable=true`. stage0 changes it under `<pod>/app.lock`: the app's files
//! are written as `rkt prepare` writes them (`build::populate_app`), the manifest and
//! `stage1-spec.json` gain the app, then the flavour starts it and hands it to the pod's
//! supervisor (ns: `stage1::ns_app`, over the supervisor's control socket).
//!
//! Per-app state follows rkt v1 (`lib/app.go`): `created` once added (`appsinfo/<app>/created`),
//! `running` once started (`appsinfo/<app>/started`), `exited` once the stage1 wrote its exit code
//! (`status/<app>`, whose mtime is the finish time), and `exited` for every app of a pod that
//! is no longer running. Apps of an ordinary pod take the pod's state and times.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use rkt_schema::{NameValue, PodManifest};
use rkt_stage2::{AppSpec, PodSpec};
use serde_json::{json, Value};

use super::build::{self, USER_ANNOTATION, USER_LABEL};
use super::request::{AppFlags, PodFlags};
use super::{Pod, State};
use crate::stage1::kvm::app as kvm_app;
use crate::stage1::Flavor;

/// rkt v1's pod annotation for a pod whose apps can be added and removed while it runs.
pub const MUTABLE_ANNOTATION: &str = "coreos.com/rkt/stage1/mutable";
/// Serialises changes to a mutable pod's apps.
const LOCK_FILE: &str = "app.lock";
const CREATED: &str = "created";
const STARTED: &str = "started";

/// Whether the pod at `pod_dir` is a mutable pod (`rkt app sandbox`).
pub fn is_mutable(pod_dir: &Path) -> bool {
    read_manifest(pod_dir).is_ok_and(|m| mutable(&m))
}

fn mutable(m: &PodManifest) -> bool {
    rkt_schema::lookup(&m.annotations, MUTABLE_ANNOTATION).is_some_and(|v| v == "true")
}

fn read_manifest(pod_dir: &Path) -> Result<PodManifest> {
    let p = pod_dir.join(super::MANIFEST_FILE);
    let b = crate::read_limited(&p, crate::limits::POD_MANIFEST, "pod manifest")?;
    serde_json::from_slice(&b).with_context(|| format!("parsing {}", p.display()))
}

/// Pod-level options of `rkt app sandbox` beyond those of `rkt run`.
#[derive(Debug, Clone, Default)]
pub struct SandboxOptions {
    /// `--user-annotation=K=V`, `--user-label=K=V`.
    pub user_annotations: Vec<String>,
    pub user_labels: Vec<String>,
    /// `--port=NAME:PROTO:PODPORT:HOSTIP:HOSTPORT` (the sandbox's form: no app names the port).
    pub ports: Vec<String>,
}

/// Checks the sandbox options and returns the pod manifest annotations and ports they make,
/// before anything of the pod exists.
pub fn sandbox_manifest_parts(o: &SandboxOptions) -> Result<(Vec<NameValue>, Vec<Value>)> {
    let mut ann = vec![NameValue {
        name: MUTABLE_ANNOTATION.into(),
        value: "true".into(),
    }];
    for (flag, list, prefix) in [
        ("user-annotation", &o.user_annotations, USER_ANNOTATION),
        ("user-label", &o.user_labels, USER_LABEL),
    ] {
        for kv in list {
            let (k, v) = kv
                .split_once('=')
                .filter(|(k, _)| !k.is_empty())
                .with_context(|| format!("invalid --{flag} {kv:?}: expected NAME=VALUE"))?;
            rkt_schema::set(&mut ann, &format!("{prefix}{k}"), v);
        }
    }
    let ports = o
        .ports
        .iter()
        .map(|p| sandbox_port(p))
        .collect::<Result<Vec<_>>>()?;
    Ok((ann, ports))
}

/// rkt's sandbox `--port`: `NAME:PROTO:PODPORT:HOSTIP:HOSTPORT` (`http:tcp:8080:0.0.0.0:80`),
/// kept in the manifest with the pod-side port spelled out (`podPort`), since no app names it.
pub fn sandbox_port(v: &str) -> Result<Value> {
    let bad = || format!("invalid --port {v:?} (expected NAME:PROTO:PODPORT:HOSTIP:HOSTPORT)");
    let parts: Vec<&str> = v.splitn(5, ':').collect();
    let [name, proto, pod_port, ip, host_port] = parts[..] else {
        bail!("{}", bad());
    };
    if !rkt_stage2::control::valid_app_name(name) || !matches!(proto, "tcp" | "udp") {
        bail!("{}", bad());
    }
    let pod_port: u16 = pod_port.parse().ok().filter(|p| *p > 0).with_context(bad)?;
    let host_port: u16 = host_port
        .parse()
        .ok()
        .filter(|p| *p > 0)
        .with_context(bad)?;
    let ip: std::net::IpAddr = ip.parse().ok().with_context(bad)?;
    Ok(json!({
        "name": name,
        "hostPort": host_port,
        "hostIP": ip.to_string(),
        "podPort": {"name": name, "protocol": proto, "port": pod_port, "count": 1},
    }))
}

/// Makes a freshly populated pod (no apps yet) a mutable one.
pub fn make_mutable(pod_dir: &Path, annotations: Vec<NameValue>, ports: Vec<Value>) -> Result<()> {
    let mut m = read_manifest(pod_dir)?;
    for nv in annotations {
        rkt_schema::set(&mut m.annotations, &nv.name, nv.value);
    }
    m.ports = ports;
    super::write_atomic(
        &pod_dir.join(super::MANIFEST_FILE),
        &serde_json::to_vec(&m)?,
    )
}

fn app_lock(pod: &Pod) -> Result<rkt_flock::Flock> {
    rkt_flock::Flock::acquire(&pod.path.join(LOCK_FILE), rkt_flock::Mode::Exclusive)
        .with_context(|| format!("locking pod {}'s apps", pod.uuid))
}

/// The pod must be a running mutable pod on a flavour that can change its apps.
fn check_mutable_running(pod: &Pod) -> Result<Flavor> {
    if pod.state != State::Running {
        bail!(
            "pod {} is not running (state: {})",
            pod.uuid,
            pod.state.as_str()
        );
    }
    if !is_mutable(&pod.path) {
        bail!(
            "pod {} was not started by \"rkt app sandbox\": its apps cannot change",
            pod.uuid
        );
    }
    let flavor = Flavor::of_pod(&pod.path)?;
    if !matches!(flavor, Flavor::Ns | Flavor::Kvm) {
        bail!("rkt app: stage1 {flavor} cannot change a running pod's apps (use --stage1=ns)");
    }
    if !flavor.is_ready(&pod.path) {
        bail!("the supervisor of pod {} is not ready yet", pod.uuid);
    }
    Ok(flavor)
}

fn check_name(pod: &Pod, name: &str) -> Result<()> {
    if !rkt_stage2::control::valid_app_name(name) {
        bail!("invalid app name {name:?}");
    }
    let m = pod.manifest()?;
    if !m.apps.iter().any(|a| a.name == name) {
        bail!("pod {} has no app named {name:?}", pod.uuid);
    }
    Ok(())
}

fn info_file(pod_dir: &Path, app: &str, what: &str) -> PathBuf {
    pod_dir.join("appsinfo").join(app).join(what)
}

/// What `rkt app add` needs besides the flags: the store and how to fetch.
pub struct AddContext<'a> {
    pub store: &'a rkt_store::Store,
    pub fetch: &'a rkt_store::FetchOptions,
}

/// `rkt app add`: adds one app (its image and per-app flags as `rkt run` takes them) to a
/// running mutable pod, in state `created`, with the volumes of its `--mnt-volume` values
/// (new to the pod). Returns the app's name.
pub fn add(
    ctx: &AddContext,
    pod: &Pod,
    flags: &AppFlags,
    mnt_volumes: &[String],
) -> Result<String> {
    let flavor = check_mutable_running(pod)?;
    if !flags.mounts.is_empty() {
        bail!(
            "rkt app add: --mount is not supported (the sandbox has no volumes; use --mnt-volume)"
        );
    }
    let mut flags = flags.clone();
    let mut pod_flags = PodFlags::default();
    let mut given = Vec::new();
    for v in mnt_volumes {
        let (name, vol, mount) = build::mnt_volume(v)?;
        given.push(name);
        pod_flags.volumes.push(vol);
        flags.mounts.push(mount);
    }
    // The image is fetched and the app's manifest entry built exactly as for `rkt run`.
    let plan = build::plan(
        ctx.store,
        &pod_flags,
        std::slice::from_ref(&flags),
        ctx.fetch,
        flavor,
        None,
    )?;
    let (ra, (im, lower)) = plan
        .manifest
        .apps
        .into_iter()
        .zip(plan.images)
        .next()
        .context("no app to add")?;
    let _lock = app_lock(pod)?;
    let mut m = pod.manifest()?;
    if m.apps.iter().any(|a| a.name == ra.name) {
        bail!(
            "pod {} already has an app named {:?} (give it another --name)",
            pod.uuid,
            ra.name
        );
    }
    // Another app's volume is its own: a name already in the pod is not taken over.
    if let Some(n) = given
        .iter()
        .find(|n| m.volumes.iter().any(|v| &v.name == *n))
    {
        bail!("pod {} already has a volume named {n:?}", pod.uuid);
    }
    let mut spec = PodSpec::load(&pod.path)?;
    let overlay = pod.path.join(super::OVERLAY_MARKER).exists();
    let undo = |pod_dir: &Path| remove_app_files(pod_dir, &ra.name, &ra.image.id);
    let r = (|| -> Result<()> {
        build::populate_app(&pod.path, &ra, &im, &lower, !overlay)?;
        // Image mount points without a volume get an `empty` one, as in `rkt run`.
        let mut new_vols = Vec::new();
        for v in plan.manifest.volumes {
            if !m.volumes.iter().any(|x| x.name == v.name) {
                build::populate_volume(&pod.path, &v)?;
                new_vols.push(v);
            }
        }
        let one = PodManifest {
            apps: vec![ra.clone()],
            volumes: m.volumes.iter().cloned().chain(new_vols.clone()).collect(),
            ..PodManifest::default()
        };
        let insecure = crate::global::Insecure {
            capabilities: spec.insecure.capabilities,
            paths: spec.insecure.paths,
            seccomp: spec.insecure.seccomp,
            ..Default::default()
        };
        let start = build::start_options(&Default::default())?;
        let app_spec = build::pod_spec(
            &pod.path, &pod.uuid, &one, ctx.store, &start, insecure, spec.debug,
        )?
        .apps
        .pop()
        .context("no app spec")?;
        m.volumes.extend(new_vols);
        m.apps.push(ra.clone());
        spec.apps.push(app_spec);
        super::write_time(&info_file(&pod.path, &ra.name, CREATED))?;
        super::write_runtime(
            &pod.path.join(rkt_stage2::SPEC_FILE),
            &serde_json::to_vec_pretty(&spec)?,
        )?;
        // Last: the manifest is what lists the app.
        super::write_atomic(
            &pod.path.join(super::MANIFEST_FILE),
            &serde_json::to_vec(&m)?,
        )
    })();
    if let Err(e) = r {
        let _ = undo(&pod.path);
        return Err(e);
    }
    Ok(ra.name)
}

/// Adds an app whose manifest entry and resolved spec the caller built (the containerd shim:
/// an OCI bundle's process on the bundle's root, `RootfsSpec::Dir`) to a running mutable pod,
/// in state `created`.
pub fn add_prepared(pod: &Pod, ra: rkt_schema::RuntimeApp, app_spec: AppSpec) -> Result<()> {
    check_mutable_running(pod)?;
    if ra.name != app_spec.name || !rkt_stage2::control::valid_app_name(&ra.name) {
        bail!("invalid app name {:?}", ra.name);
    }
    let _lock = app_lock(pod)?;
    let mut m = pod.manifest()?;
    if m.apps.iter().any(|a| a.name == ra.name) {
        bail!("pod {} already has an app named {:?}", pod.uuid, ra.name);
    }
    let mut spec = PodSpec::load(&pod.path)?;
    let name = ra.name.clone();
    let info = pod.path.join("appsinfo").join(&name);
    std::fs::create_dir_all(&info)?;
    super::write_atomic(&info.join("treeStoreID"), ra.image.id.as_bytes())?;
    m.apps.push(ra);
    spec.apps.push(app_spec);
    super::write_time(&info_file(&pod.path, &name, CREATED))?;
    super::write_runtime(
        &pod.path.join(rkt_stage2::SPEC_FILE),
        &serde_json::to_vec_pretty(&spec)?,
    )?;
    super::write_atomic(
        &pod.path.join(super::MANIFEST_FILE),
        &serde_json::to_vec(&m)?,
    )
}

/// `rkt app start`: starts an added app of a running mutable pod.
pub fn start(pod: &Pod, name: &str) -> Result<()> {
    start_with_stdio(pod, name, None)
}

/// [`start`] with the app's stdin, stdout and stderr given by the caller.
pub fn start_with_stdio(
    pod: &Pod,
    name: &str,
    stdio: Option<[std::os::fd::OwnedFd; 3]>,
) -> Result<()> {
    check_mutable_running(pod)?;
    check_name(pod, name)?;
    let _lock = app_lock(pod)?;
    if info_file(&pod.path, name, STARTED).exists() {
        bail!("app {name:?} has already been started (remove it and add it again)");
    }
    let spec = PodSpec::load(&pod.path)?;
    let app = spec
        .apps
        .iter()
        .find(|a| a.name == name)
        .with_context(|| format!("pod {} has no app named {name:?}", pod.uuid))?;
    match Flavor::of_pod(&pod.path)? {
        // The VMM mounts its root and the guest init starts it (stage1/kvm/app.rs).
        // With stdio, the VMM writes the app's output to the given descriptors and relays the
        // input one to the guest.
        Flavor::Kvm => {
            use std::os::fd::AsFd;
            // A root outside the pod (the containerd shim's bundle) may be a mount made after
            // the VMM's namespace was: it goes as a detached clone.
            let root = match &app.rootfs {
                rkt_stage2::RootfsSpec::Dir(d)
                    if *d != rkt_stage2::app_root_path(&pod.path, name) =>
                {
                    Some(kvm_app::clone_tree(d)?)
                }
                _ => None,
            };
            let req = kvm_app::Request::Start {
                app: name.into(),
                stdio: stdio.is_some(),
                root: root.is_some(),
            };
            let fds: Vec<_> = stdio
                .iter()
                .flatten()
                .chain(root.iter())
                .map(|f| f.as_fd())
                .collect();
            kvm_app::request_with_fds(&pod.path, &req, &fds)?
        }
        _ => crate::stage1::ns_app::start_with_stdio(&pod.path, &spec, app, stdio)?,
    }
    super::write_time(&info_file(&pod.path, name, STARTED))
}

/// Sends `signal` to a running app's process (containerd's Kill): in the VM through the guest
/// init, on ns and fly to the pid the supervisor recorded.
pub fn signal(pod: &Pod, name: &str, signal: i32) -> Result<()> {
    check_name(pod, name)?;
    let status = rkt_stage2::app_status_path(&pod.path, name);
    if !info_file(&pod.path, name, STARTED).exists() || status.exists() {
        bail!("app {name:?} is not running");
    }
    match Flavor::of_pod(&pod.path)? {
        Flavor::Kvm => kvm_app::request(
            &pod.path,
            &kvm_app::Request::Signal {
                app: name.into(),
                signal: u32::try_from(signal).context("invalid signal")?,
            },
        ),
        _ => {
            let pid: i32 = std::fs::read_to_string(rkt_stage2::app_pid_path(&pod.path, name))
                .context("reading the app's pid")?
                .trim()
                .parse()
                .context("the app's pid")?;
            let sig = nix::sys::signal::Signal::try_from(signal).context("invalid signal")?;
            nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), sig)
                .with_context(|| format!("signalling app {name:?}"))
        }
    }
}

/// `rkt app stop`: stops a running app (SIGTERM, SIGKILL after the supervisor's stop timeout)
/// and waits until its exit code is recorded.
pub fn stop(pod: &Pod, name: &str) -> Result<()> {
    check_mutable_running(pod)?;
    check_name(pod, name)?;
    let _lock = app_lock(pod)?;
    stop_locked(pod, name)
}

fn stop_locked(pod: &Pod, name: &str) -> Result<()> {
    let status = rkt_stage2::app_status_path(&pod.path, name);
    if !info_file(&pod.path, name, STARTED).exists() || status.exists() {
        bail!("app {name:?} is not running");
    }
    match Flavor::of_pod(&pod.path)? {
        Flavor::Kvm => kvm_app::request(&pod.path, &kvm_app::Request::Stop { app: name.into() })?,
        _ => {
            rkt_stage2::control::request(
                &pod.path,
                &rkt_stage2::control::Request::Stop { app: name.into() },
            )?;
        }
    }
    let deadline = std::time::Instant::now()
        + rkt_stage2::supervisor::STOP_TIMEOUT
        + std::time::Duration::from_secs(5);
    while !status.exists() {
        if std::time::Instant::now() > deadline {
            bail!("app {name:?} did not stop");
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    Ok(())
}

/// `rkt app rm`: removes an app from a running mutable pod, stopping it first if it runs.
pub fn rm(pod: &Pod, name: &str) -> Result<()> {
    check_mutable_running(pod)?;
    check_name(pod, name)?;
    let _lock = app_lock(pod)?;
    let started = info_file(&pod.path, name, STARTED).exists();
    if started && !rkt_stage2::app_status_path(&pod.path, name).exists() {
        stop_locked(pod, name)?;
    }
    let mut m = pod.manifest()?;
    let Some(i) = m.apps.iter().position(|a| a.name == name) else {
        bail!("pod {} has no app named {name:?}", pod.uuid);
    };
    let ra = m.apps.remove(i);
    let mut spec = PodSpec::load(&pod.path)?;
    spec.apps.retain(|a| a.name != name);
    // The manifest first: from here on the app is gone for every reader.
    super::write_atomic(
        &pod.path.join(super::MANIFEST_FILE),
        &serde_json::to_vec(&m)?,
    )?;
    super::write_runtime(
        &pod.path.join(rkt_stage2::SPEC_FILE),
        &serde_json::to_vec_pretty(&spec)?,
    )?;
    match Flavor::of_pod(&pod.path)? {
        Flavor::Kvm => {
            kvm_app::request(&pod.path, &kvm_app::Request::Release { app: name.into() })?
        }
        _ => crate::stage1::ns_app::release(&pod.path, &spec.uuid, name)?,
    }
    remove_app_files(&pod.path, name, &ra.image.id)
}

fn remove_app_files(pod_dir: &Path, name: &str, image_id: &str) -> Result<()> {
    let root = rkt_stage2::app_root_path(pod_dir, name);
    let app_dir = root.parent().context("app root")?.to_path_buf();
    super::unmount_all_under(&app_dir)?;
    for p in [
        app_dir,
        pod_dir.join("appsinfo").join(name),
        pod_dir.join("apps").join(name),
        pod_dir
            .join("overlay")
            .join(image_id)
            .join("upper")
            .join(name),
        pod_dir
            .join("overlay")
            .join(image_id)
            .join("work")
            .join(name),
        rkt_stage2::app_status_path(pod_dir, name),
        // Its logs: an app added again under this name starts a log of its own.
        super::logs::log_path(pod_dir, name),
        super::logs::rotated_path(pod_dir, name),
    ] {
        super::remove_tree(&p)?;
    }
    Ok(())
}

/// `rkt app exec`: runs `cmd` in a running app, confined as `rkt enter` confines it.
pub fn exec(pod: &Pod, name: &str, cmd: &[String]) -> Result<i32> {
    if pod.state != State::Running {
        bail!("pod {} is not running", pod.uuid);
    }
    check_name(pod, name)?;
    let infos = apps(pod, Some(name))?;
    if infos.first().is_none_or(|a| a.state != AppState::Running) {
        bail!("app {name:?} is not running");
    }
    if cmd.is_empty() {
        bail!("rkt app exec: no command given (rkt app exec UUID --app=NAME -- CMD [ARGS...])");
    }
    let spec = PodSpec::load(&pod.path)?;
    Flavor::of_pod(&pod.path)?.enter(&pod.path, &spec, name, cmd)
}

/// rkt v1's app states.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AppState {
    Unknown,
    Created,
    Running,
    Exited,
}

impl AppState {
    pub fn as_str(self) -> &'static str {
        match self {
            AppState::Unknown => "unknown",
            AppState::Created => "created",
            AppState::Running => "running",
            AppState::Exited => "exited",
        }
    }
}

/// One mount of an app, as rkt v1 reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppMount {
    pub name: String,
    pub container_path: String,
    pub host_path: String,
    pub read_only: bool,
}

/// An app's status (rkt v1's `v1.App`); times in nanoseconds since the epoch.
#[derive(Debug, Clone, PartialEq)]
pub struct AppInfo {
    pub name: String,
    pub state: AppState,
    pub image_id: String,
    pub created_at: Option<i64>,
    pub started_at: Option<i64>,
    pub finished_at: Option<i64>,
    pub exit_code: Option<i32>,
    pub mounts: Vec<AppMount>,
    pub user_annotations: Vec<(String, String)>,
    pub user_labels: Vec<(String, String)>,
}

impl AppInfo {
    /// rkt v1's JSON for an app (`rkt app status --format=json`).
    pub fn to_json(&self) -> Value {
        let mut o = json!({
            "name": self.name,
            "state": self.state.as_str(),
            "image_id": self.image_id,
        });
        for (k, v) in [
            ("created_at", self.created_at),
            ("started_at", self.started_at),
            ("finished_at", self.finished_at),
        ] {
            if let Some(t) = v {
                o[k] = json!(t);
            }
        }
        if let Some(c) = self.exit_code {
            o["exit_code"] = json!(c);
        }
        if !self.mounts.is_empty() {
            o["mounts"] = self
                .mounts
                .iter()
                .map(|m| {
                    json!({"name": m.name, "container_path": m.container_path,
                           "host_path": m.host_path, "read_only": m.read_only})
                })
                .collect();
        }
        for (k, list) in [
            ("user_annotations", &self.user_annotations),
            ("user_labels", &self.user_labels),
        ] {
            if !list.is_empty() {
                o[k] = list.iter().map(|(k, v)| (k.clone(), json!(v))).collect();
            }
        }
        o
    }
}

fn nanos(t: chrono::DateTime<chrono::Utc>) -> Option<i64> {
    t.timestamp_nanos_opt()
}

fn mtime_nanos(p: &Path) -> Option<i64> {
    let m = std::fs::metadata(p).ok()?.modified().ok()?;
    nanos(m.into())
}

fn read_exit_code(p: &Path) -> Option<i32> {
    std::fs::read_to_string(p).ok()?.trim().parse().ok()
}

/// The pod's apps (or the one named `only`), in manifest order, with their states.
pub fn apps(pod: &Pod, only: Option<&str>) -> Result<Vec<AppInfo>> {
    let m = pod.manifest()?;
    let is_mut = mutable(&m);
    let after_run = pod.state.has_run() && pod.state != State::Running;
    let mut out = Vec::new();
    for ra in &m.apps {
        if only.is_some_and(|n| n != ra.name) {
            continue;
        }
        let status = rkt_stage2::app_status_path(&pod.path, &ra.name);
        let exit_code = read_exit_code(&status);
        let mut a = AppInfo {
            name: ra.name.clone(),
            state: AppState::Unknown,
            image_id: ra.image.id.clone(),
            created_at: None,
            started_at: None,
            finished_at: exit_code.and_then(|_| mtime_nanos(&status)),
            exit_code,
            mounts: Vec::new(),
            user_annotations: Vec::new(),
            user_labels: Vec::new(),
        };
        if is_mut {
            let read =
                |what| super::read_time(&info_file(&pod.path, &ra.name, what)).and_then(nanos);
            a.created_at = read(CREATED);
            a.started_at = read(STARTED);
            a.state = match (a.created_at, a.started_at, a.exit_code) {
                (_, _, Some(_)) => AppState::Exited,
                (_, Some(_), None) => AppState::Running,
                (Some(_), None, None) => AppState::Created,
                _ => AppState::Unknown,
            };
        } else {
            a.created_at = pod.created().and_then(nanos);
            a.started_at = pod.started().and_then(nanos);
            a.state = match pod.state {
                _ if a.exit_code.is_some() => AppState::Exited,
                State::Prepared => AppState::Created,
                State::Running => AppState::Running,
                s if s.has_run() => AppState::Exited,
                State::Garbage => AppState::Exited,
                _ => AppState::Unknown,
            };
        }
        // A pod killed hard has no status for its apps: they are gone all the same.
        if after_run && a.state != AppState::Exited {
            a.state = AppState::Exited;
        }
        a.mounts = mounts_of(&m, ra);
        for nv in &ra.annotations {
            if let Some(k) = nv.name.strip_prefix(USER_ANNOTATION) {
                a.user_annotations.push((k.into(), nv.value.clone()));
            } else if let Some(k) = nv.name.strip_prefix(USER_LABEL) {
                a.user_labels.push((k.into(), nv.value.clone()));
            }
        }
        out.push(a);
    }
    if let Some(n) = only {
        if out.is_empty() {
            bail!("pod {} has no app named {n:?}", pod.uuid);
        }
    }
    Ok(out)
}

fn mounts_of(m: &PodManifest, ra: &rkt_schema::RuntimeApp) -> Vec<AppMount> {
    let vol = |name: &str| m.volumes.iter().find(|v| v.name == name);
    let mut out: Vec<AppMount> = ra
        .mounts
        .iter()
        .map(|mnt| {
            let v = vol(&mnt.volume);
            AppMount {
                name: mnt.volume.clone(),
                container_path: mnt.path.clone(),
                host_path: v.and_then(|v| v.source.clone()).unwrap_or_default(),
                read_only: v.and_then(|v| v.read_only).unwrap_or(false),
            }
        })
        .collect();
    // Image mount points that the runtime app does not cover use the volume of their name.
    for mp in ra.app.iter().flat_map(|a| &a.mount_points) {
        if out.iter().any(|x| x.container_path == mp.path) {
            continue;
        }
        if let Some(v) = vol(&mp.name) {
            out.push(AppMount {
                name: mp.name.clone(),
                container_path: mp.path.clone(),
                host_path: v.source.clone().unwrap_or_default(),
                read_only: v.read_only.unwrap_or(false) || mp.read_only,
            });
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sandbox_ports() {
        let p = sandbox_port("http:tcp:8080:0.0.0.0:80").unwrap();
        assert_eq!(p["hostPort"], 80);
        assert_eq!(p["podPort"]["port"], 8080);
        assert_eq!(p["podPort"]["protocol"], "tcp");
        for bad in [
            "http:8080",
            "http:sctp:1:0.0.0.0:2",
            "http:tcp:0:0.0.0.0:2",
            "http:tcp:1:nope:2",
            "Bad:tcp:1:0.0.0.0:2",
            "http:tcp:1:0.0.0.0:70000",
        ] {
            assert!(sandbox_port(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn sandbox_annotations() {
        let (ann, _) = sandbox_manifest_parts(&SandboxOptions {
            user_annotations: vec!["k=v".into()],
            user_labels: vec!["l=w".into()],
            ports: vec![],
        })
        .unwrap();
        assert!(ann
            .iter()
            .any(|nv| nv.name == MUTABLE_ANNOTATION && nv.value == "true"));
        assert!(ann
            .iter()
            .any(|nv| nv.name == format!("{USER_ANNOTATION}k") && nv.value == "v"));
        assert!(sandbox_manifest_parts(&SandboxOptions {
            user_labels: vec!["novalue".into()],
            ..Default::default()
        })
        .is_err());
    }
}
