//! Pod commands: run, prepare, run-prepared, list, status, enter, stop, rm, gc, cat-manifest.
//! The on-disk lifecycle lives in `crate::pod`; running apps is the stage1 flavour's job.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Args;
use serde_json::{json, Value};

use crate::global::Globals;
use crate::pod::lifecycle::{delete, discard_unstarted, prepare_pod, remove, start_pod, Keep};
use crate::pod::{build, table, Lock, Pod, PodDir, Pods, State};
use crate::run_args::{self as args, Mode};
use crate::stage1::{self, Flavor};

/// Exit code for rkt's own failures.
const FAIL: i32 = crate::EXIT_RKT_ERROR;

pub(crate) fn ensure_root() -> Result<()> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!("cannot run as unprivileged user");
    }
    Ok(())
}

#[derive(Args, Debug)]
pub struct RunArgs {
    /// [pod flags] IMAGE [app flags] [-- app args [---]] [IMAGE [app flags]...]
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    pub args: Vec<String>,
}

/// fly runs in the host's network namespace: without `--net` it gets the host's (rkt v1), where
/// the other flavours get the default network.
fn fly_defaults_to_host_net(flavor: Flavor, flags: &args::StartFlags, start: &mut build::Start) {
    if flavor == Flavor::Fly && flags.net.is_none() {
        start.net = rkt_stage2::NetMode::Host;
    }
}

pub fn run(g: &Globals, a: RunArgs) -> Result<i32> {
    let p = args::parse(Mode::Run, &a.args)?;
    if p.help {
        return crate::cmd::help::print_help(&["run"]);
    }
    ensure_root()?;
    let mut start = build::start_options(&p.pod.start)?;
    let flavor = build::flavor(&p.pod, g.config.stage1_name.as_deref())?;
    fly_defaults_to_host_net(flavor, &p.pod.start, &mut start);
    // Flavour/flag conflicts are refused before anything of the pod exists.
    flavor.check(&start.net)?;
    crate::net::check_flavor(flavor != Flavor::Fly, &start.net_arg)?;
    // Prepared and started at once: after a host crash this pod is garbage whatever its files
    // hold, so they are written atomically but not fsynced (docs/pods.md, "Durability").
    crate::pod::set_ephemeral();
    let (pods, mut pod, lock, insecure) = prepare_pod(g, &p.pod, &p.apps, Keep::StartNow)?;
    let r = start_pod(
        g,
        &pods,
        &mut pod,
        &lock,
        &start,
        insecure,
        g.debug || p.pod.debug,
        p.pod.uuid_file_save.as_deref(),
    );
    if r.is_err() {
        discard_unstarted(&pods, pod, lock);
    }
    r
}

#[derive(Args, Debug)]
pub struct PrepareArgs {
    /// [pod flags] IMAGE [app flags] [-- app args [---]] [IMAGE [app flags]...]
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    pub args: Vec<String>,
}

pub fn prepare(g: &Globals, a: PrepareArgs) -> Result<i32> {
    let p = args::parse(Mode::Prepare, &a.args)?;
    if p.help {
        return crate::cmd::help::print_help(&["prepare"]);
    }
    ensure_root()?;
    let (_pods, pod, _lock, _) = prepare_pod(g, &p.pod, &p.apps, Keep::Prepared)?;
    crate::outln!("{}", pod.uuid);
    Ok(0)
}

#[derive(Args, Debug)]
pub struct RunPreparedArgs {
    /// [flags] UUID
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    pub args: Vec<String>,
}

pub fn run_prepared(g: &Globals, a: RunPreparedArgs) -> Result<i32> {
    let p = args::parse(Mode::RunPrepared, &a.args)?;
    if p.help {
        return crate::cmd::help::print_help(&["run-prepared"]);
    }
    ensure_root()?;
    let mut start = build::start_options(&p.pod.start)?;
    let insecure = build::insecure(g.insecure, &p.pod)?;
    let pods = Pods::new(&g.dir);
    let query = p.uuid.as_deref().unwrap_or_default();
    let pod = pods.find(query)?;
    if pod.state != State::Prepared {
        bail!(
            "pod {} is not prepared (state: {})",
            pod.uuid,
            pod.state.as_str()
        );
    }
    let Some(lock) = Lock::try_exclusive(&pod.path)? else {
        bail!("pod {} is being started by another process", pod.uuid);
    };
    // It may have been started (and moved) between the lookup and the lock.
    if !pod.path.exists() {
        bail!("pod {} is not prepared any more", pod.uuid);
    }
    let flavor = Flavor::of_pod(&pod.path)?;
    fly_defaults_to_host_net(flavor, &p.pod.start, &mut start);
    flavor.check(&start.net)?;
    crate::net::check_flavor(flavor != Flavor::Fly, &start.net_arg)?;
    let mut pod = pod;
    start_pod(
        g,
        &pods,
        &mut pod,
        &lock,
        &start,
        insecure,
        g.debug || p.pod.debug,
        None,
    )
}

fn read_uuid_file(path: &Path) -> Result<String> {
    let s = crate::read_limited_string(path, crate::limits::UUID_FILE, "UUID file")
        .context("unable to read the pod UUID")?;
    let s = s.trim().to_string();
    if s.is_empty() {
        bail!("UUID file {} is empty", path.display());
    }
    Ok(s)
}

/// UUID arguments or `--uuid-file`, exactly one of the two.
fn uuids(args: &[String], file: &Option<PathBuf>) -> Result<Vec<String>> {
    match (args.is_empty(), file) {
        (false, None) => Ok(args.to_vec()),
        (true, Some(f)) => Ok(vec![read_uuid_file(f)?]),
        (false, Some(_)) => bail!("give either UUIDs or --uuid-file, not both"),
        (true, None) => bail!("no pod UUID given (pass UUID or --uuid-file=FILE)"),
    }
}

#[derive(Args, Debug)]
pub struct ListArgs {
    /// Suppress a legend with the list
    #[arg(long)]
    pub no_legend: bool,
    /// Use long output format
    #[arg(long)]
    pub full: bool,
    /// Choose the output format: json, json-pretty
    #[arg(long, value_name = "FORMAT", default_value = "")]
    pub format: String,
}

fn check_format(f: &str) -> Result<()> {
    if !matches!(f, "" | "json" | "json-pretty") {
        bail!("invalid --format {f:?} (json or json-pretty)");
    }
    Ok(())
}

fn print_json(format: &str, v: &Value) -> Result<()> {
    if format == "json-pretty" {
        crate::outln!("{}", serde_json::to_string_pretty(v)?);
    } else {
        crate::outln!("{}", serde_json::to_string(v)?);
    }
    Ok(())
}

pub fn list(g: &Globals, a: ListArgs) -> Result<i32> {
    check_format(&a.format)?;
    let pods = Pods::new(&g.dir);
    let mut all = pods.all()?;
    all.sort_by_key(|p| p.created());
    if !a.format.is_empty() {
        let v: Vec<Value> = all.iter().map(pod_json).collect();
        print_json(&a.format, &Value::Array(v))?;
        return Ok(0);
    }
    let now = chrono::Utc::now();
    let time = |t: Option<chrono::DateTime<chrono::Utc>>| match t {
        None => String::new(),
        Some(t) if a.full => table::full_time(t),
        Some(t) => table::humanize(t, now),
    };
    let mut rows: Vec<Vec<String>> = Vec::new();
    if !a.no_legend {
        let mut h = vec!["UUID", "APP", "IMAGE NAME"];
        if a.full {
            h.push("IMAGE ID");
        }
        h.extend(["STATE", "CREATED", "STARTED", "NETWORKS"]);
        rows.push(h.into_iter().map(String::from).collect());
    }
    for p in &all {
        let apps = p.manifest().map(|m| m.apps).unwrap_or_default();
        let uuid = if a.full {
            p.uuid.clone()
        } else {
            p.short_uuid().to_string()
        };
        let app_cells = |i: usize| -> Vec<String> {
            match apps.get(i) {
                Some(ra) => {
                    let mut c = vec![ra.name.clone(), ra.image.name.clone()];
                    if a.full {
                        c.push(ra.image.id.clone());
                    }
                    c
                }
                None => vec!["-".into(), "-".into()]
                    .into_iter()
                    .chain(a.full.then(|| "-".to_string()))
                    .collect(),
            }
        };
        let mut row = vec![uuid];
        row.extend(app_cells(0));
        row.push(p.state.as_str().to_string());
        row.push(time(p.created()));
        row.push(time(p.started()));
        row.push(crate::net::render(&crate::net::pod_networks(&p.path)));
        rows.push(row);
        for i in 1..apps.len() {
            let mut row = vec![String::new()];
            row.extend(app_cells(i));
            rows.push(row);
        }
    }
    crate::out!("{}", table::tabulate(&rows));
    Ok(0)
}

/// rkt's `lib.Pod` JSON, plus the apps' images and exit codes.
fn pod_json(p: &Pod) -> Value {
    let m = p.manifest().ok();
    let apps = m.as_ref().map(|m| m.apps.clone()).unwrap_or_default();
    let codes = p.app_statuses();
    let app_fields = crate::cmd::app::app_fields(p);
    let mut annotations = serde_json::Map::new();
    let mut labels = serde_json::Map::new();
    for ra in &apps {
        for nv in &ra.annotations {
            if let Some(k) = nv.name.strip_prefix(build::USER_ANNOTATION) {
                annotations.insert(k.into(), json!(nv.value));
            } else if let Some(k) = nv.name.strip_prefix(build::USER_LABEL) {
                labels.insert(k.into(), json!(nv.value));
            }
        }
    }
    let mut v = json!({
        "name": p.uuid,
        "state": p.state.as_str(),
        "networks": crate::net::pod_networks(&p.path).iter().map(|n| json!({
            "netName": n.net_name,
            "netConf": n.net_conf,
            "pluginPath": n.plugin_path,
            "ifName": n.if_name,
            "ip": n.ip,
            "args": n.args,
            "mask": n.mask,
            "hostIP": n.host_ip,
        })).collect::<Vec<_>>(),
        "app_names": apps.iter().map(|a| a.name.clone()).collect::<Vec<_>>(),
        "apps": apps.iter().map(|a| {
            let mut o = json!({"name": a.name, "image_name": a.image.name, "image_id": a.image.id});
            if let Some((_, c)) = codes.iter().find(|(n, _)| *n == a.name) {
                o["exit_code"] = json!(c);
            }
            // rkt v1's per-app state, times and mounts (`rkt app status`'s fields).
            if let Some(Value::Object(f)) = app_fields.iter().find(|f| f["name"] == a.name.as_str()) {
                for (k, v) in f {
                    o[k.as_str()] = v.clone();
                }
            }
            o
        }).collect::<Vec<_>>(),
    });
    if let Some(t) = p.created() {
        v["created_at"] = json!(t.timestamp());
    }
    if let Some(t) = p.started() {
        v["started_at"] = json!(t.timestamp());
    }
    if p.state.has_run() {
        if let Some(pid) = p.pid() {
            v["pid"] = json!(pid);
        }
    }
    if !annotations.is_empty() {
        v["user_annotations"] = Value::Object(annotations);
    }
    if !labels.is_empty() {
        v["user_labels"] = Value::Object(labels);
    }
    v
}

#[derive(Args, Debug)]
pub struct StatusArgs {
    /// Pod UUID (or unambiguous prefix)
    pub uuid: Option<String>,
    /// Read pod UUID from file instead of argument
    #[arg(long, value_name = "FILE")]
    pub uuid_file: Option<PathBuf>,
    /// Toggle waiting for the pod to exit: true, false or a timeout (e.g. 10s)
    #[arg(long, num_args = 0..=1, require_equals = true, default_missing_value = "true", value_name = "BOOL|DURATION")]
    pub wait: Option<String>,
    /// Toggle waiting until the pod is ready: true, false or a timeout (e.g. 10s)
    #[arg(long, num_args = 0..=1, require_equals = true, default_missing_value = "true", value_name = "BOOL|DURATION")]
    pub wait_ready: Option<String>,
    /// Choose the output format: json, json-pretty
    #[arg(long, value_name = "FORMAT", default_value = "")]
    pub format: String,
}

/// `--wait[=bool|duration]`: None = don't wait, Some(None) = forever, Some(Some(d)) = up to d.
fn wait_flag(name: &str, v: &Option<String>) -> Result<Option<Option<Duration>>> {
    Ok(match v.as_deref() {
        None | Some("false") => None,
        Some("true") => Some(None),
        Some(d) => Some(Some(
            parse_go_duration(d).with_context(|| format!("invalid --{name} {d:?}"))?,
        )),
    })
}

pub fn status(g: &Globals, a: StatusArgs) -> Result<i32> {
    check_format(&a.format)?;
    let wait = wait_flag("wait", &a.wait)?;
    let wait_ready = wait_flag("wait-ready", &a.wait_ready)?;
    let args: Vec<String> = a.uuid.iter().cloned().collect();
    let query = uuids(&args, &a.uuid_file)?.remove(0);
    let pods = Pods::new(&g.dir);
    let mut pod = pods.find(&query)?;
    if let Some(timeout) = wait_ready {
        let flavor = Flavor::of_pod(&pod.path)?;
        pod = wait_until(&pods, pod, timeout, "ready", |p| {
            (p.state == State::Running && flavor.is_ready(&p.path)) || is_done(p.state)
        })?;
        if is_done(pod.state) {
            bail!("pod {} exited before it was ready", pod.uuid);
        }
    }
    if let Some(timeout) = wait {
        pod = wait_until(&pods, pod, timeout, "exited", |p| is_done(p.state))?;
    }
    if !a.format.is_empty() {
        print_json(&a.format, &pod_json(&pod))?;
        return Ok(0);
    }
    crate::outln!("state={}", pod.state.as_str());
    if let Some(t) = pod.created() {
        crate::outln!("created={}", table::full_time(t));
    }
    if let Some(t) = pod.started() {
        crate::outln!("started={}", table::full_time(t));
    }
    if matches!(pod.state, State::Running | State::Exited) {
        crate::outln!(
            "networks={}",
            crate::net::render(&crate::net::pod_networks(&pod.path))
        );
    }
    if !pod.state.has_run() {
        return Ok(0);
    }
    if let Some(pid) = pod.pid() {
        crate::outln!("pid={pid}");
    }
    crate::outln!(
        "exited={}",
        matches!(pod.state, State::Exited | State::ExitedGarbage)
    );
    if pod.state != State::Running {
        for (app, code) in pod.app_statuses() {
            crate::outln!("app-{app}={code}");
        }
    }
    Ok(0)
}

fn is_done(s: State) -> bool {
    matches!(
        s,
        State::Exited
            | State::ExitedGarbage
            | State::ExitedDeleting
            | State::Garbage
            | State::Deleting
            | State::AbortedPrepare
    )
}

fn wait_until(
    pods: &Pods,
    mut pod: Pod,
    timeout: Option<Duration>,
    what: &str,
    done: impl Fn(&Pod) -> bool,
) -> Result<Pod> {
    let start = Instant::now();
    loop {
        if done(&pod) {
            return Ok(pod);
        }
        if timeout.is_some_and(|t| start.elapsed() >= t) {
            bail!("timed out waiting for pod {} to be {what}", pod.uuid);
        }
        std::thread::sleep(Duration::from_millis(50));
        pod =
            Pod::load(pods, &pod.uuid)?.with_context(|| format!("pod {} disappeared", pod.uuid))?;
    }
}

/// Go's `time.ParseDuration` subset: sequences like `1h30m`, `500ms`, `10s`, `0`.
pub fn parse_go_duration(s: &str) -> Result<Duration> {
    if s == "0" {
        return Ok(Duration::ZERO);
    }
    let mut total = 0f64;
    let mut rest = s;
    if rest.is_empty() {
        bail!("empty duration");
    }
    while !rest.is_empty() {
        let n = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .context("missing unit (use h, m, s, ms)")?;
        let num: f64 = rest[..n].parse().context("bad number")?;
        rest = &rest[n..];
        let u = rest
            .find(|c: char| c.is_ascii_digit())
            .unwrap_or(rest.len());
        let mul = match &rest[..u] {
            "h" => 3600.0,
            "m" => 60.0,
            "s" => 1.0,
            "ms" => 1e-3,
            "us" | "µs" => 1e-6,
            "ns" => 1e-9,
            other => bail!("unknown unit {other:?}"),
        };
        total += num * mul;
        rest = &rest[u..];
    }
    // Go's limit is ~292 years (int64 nanoseconds); beyond it is a typo, not a wait.
    Duration::try_from_secs_f64(total)
        .ok()
        .filter(|d| d.as_secs() <= MAX_DURATION_SECS)
        .with_context(|| format!("duration {s:?} is too long (at most {MAX_DURATION_SECS}s)"))
}

/// The longest duration flags take: Go's time.Duration maximum (2^63-1 ns), in seconds.
const MAX_DURATION_SECS: u64 = 9_223_372_036;

/// Go's `Duration.String()` for whole seconds: `30m0s`, `24h0m0s`, `0s`.
fn go_duration(d: Duration) -> String {
    let s = d.as_secs();
    match (s / 3600, (s % 3600) / 60, s % 60) {
        (0, 0, s) => format!("{s}s"),
        (0, m, s) => format!("{m}m{s}s"),
        (h, m, s) => format!("{h}h{m}m{s}s"),
    }
}

#[derive(Args, Debug)]
pub struct EnterArgs {
    /// Name of the app to enter within the pod
    #[arg(long)]
    pub app: Option<String>,
    /// Pod UUID (or unambiguous prefix)
    pub uuid: String,
    /// Command to run (default /bin/bash)
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    pub cmd: Vec<String>,
}

pub fn enter(g: &Globals, a: EnterArgs) -> Result<i32> {
    ensure_root()?;
    let pods = Pods::new(&g.dir);
    let pod = pods.find(&a.uuid)?;
    if pod.state != State::Running {
        bail!("pod {} is not running", pod.uuid);
    }
    let spec = rkt_stage2::PodSpec::load(&pod.path)?;
    let app = match a.app {
        Some(n) => {
            if !spec.apps.iter().any(|x| x.name == n) {
                bail!("pod {} has no app named {n:?}", pod.uuid);
            }
            n
        }
        None if spec.apps.len() == 1 => spec.apps[0].name.clone(),
        None => bail!(
            "pod {} has several apps, pick one with --app: {}",
            pod.uuid,
            spec.apps
                .iter()
                .map(|x| x.name.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        ),
    };
    let cmd = if a.cmd.is_empty() {
        vec!["/bin/bash".to_string()]
    } else {
        a.cmd
    };
    Flavor::of_pod(&pod.path)?.enter(&pod.path, &spec, &app, &cmd)
}

#[derive(Args, Debug)]
pub struct StopArgs {
    /// Pod UUIDs (or unambiguous prefixes)
    pub uuids: Vec<String>,
    /// Read pod UUID from file instead of argument
    #[arg(long, value_name = "FILE")]
    pub uuid_file: Option<PathBuf>,
    /// Forced stopping (SIGKILL)
    #[arg(long)]
    pub force: bool,
}

pub fn stop(g: &Globals, a: StopArgs) -> Result<i32> {
    let pods = Pods::new(&g.dir);
    let mut failed = false;
    for q in uuids(&a.uuids, &a.uuid_file)? {
        let r = (|| -> Result<String> {
            let pod = pods.find(&q)?;
            if pod.state != State::Running {
                bail!("pod {} is not running", pod.uuid);
            }
            stage1::stop(&pod.path, a.force)?;
            // Report once the pod is down, so `rkt stop; rkt rm` works.
            if !crate::pod::wait_exited(&pod.path, Some(Duration::from_secs(30))) {
                bail!("pod {} did not stop within 30s (try --force)", pod.uuid);
            }
            Ok(pod.uuid)
        })();
        match r {
            Ok(u) => crate::outln!("{u:?}"),
            Err(e) => {
                eprintln!("rkt: {}", crate::one_line(&e));
                failed = true;
            }
        }
    }
    Ok(if failed { FAIL } else { 0 })
}

#[derive(Args, Debug)]
pub struct RmArgs {
    /// Pod UUIDs (or unambiguous prefixes)
    pub uuids: Vec<String>,
    /// Read pod UUID from file instead of argument
    #[arg(long, value_name = "FILE")]
    pub uuid_file: Option<PathBuf>,
}

pub fn rm(g: &Globals, a: RmArgs) -> Result<i32> {
    ensure_root()?;
    let pods = Pods::new(&g.dir);
    let mut failed = false;
    let list = uuids(&a.uuids, &a.uuid_file)?;
    for q in &list {
        let r = pods.find(q).and_then(|p| remove(&pods, p));
        match r {
            Ok(u) => crate::outln!("{u:?}"),
            Err(e) => {
                eprintln!("rkt: {}", crate::one_line(&e));
                failed = true;
            }
        }
    }
    if failed {
        if list.len() > 1 {
            eprintln!("rkt: failed to remove one or more pods");
        }
        return Ok(FAIL);
    }
    Ok(0)
}

#[derive(Args, Debug)]
pub struct GcArgs {
    /// Duration to wait before discarding inactive pods from garbage
    #[arg(long, default_value = "30m", value_name = "DURATION")]
    pub grace_period: String,
    /// Duration to wait before expiring prepared pods
    #[arg(long, default_value = "24h", value_name = "DURATION")]
    pub expire_prepared: String,
    /// Move exited/aborted pods to the garbage directories without deleting them
    #[arg(long)]
    pub mark_only: bool,
}

pub fn gc(g: &Globals, a: GcArgs) -> Result<i32> {
    ensure_root()?;
    let grace = parse_go_duration(&a.grace_period)
        .with_context(|| format!("invalid --grace-period {:?}", a.grace_period))?;
    let expire = parse_go_duration(&a.expire_prepared)
        .with_context(|| format!("invalid --expire-prepared {:?}", a.expire_prepared))?;
    let pods = Pods::new(&g.dir);
    let mut failed = false;
    // Another rkt (`rm`, a second gc, a shim's `delete`) may move or remove a pod between our
    // listing and our step on it: a pod that is gone is not an error, anything else is reported
    // and the sweep goes on with the other pods.
    let mut on_pod = |p: &Pod, r: Result<()>| {
        if let Err(e) = r {
            if p.path.symlink_metadata().is_ok() {
                eprintln!("rkt: {}", crate::one_line(&e));
                failed = true;
            }
        }
    };
    // Mark: exited pods and failed prepares go to the garbage directories.
    for mut p in pods.all()? {
        let r = match p.state {
            State::Exited => {
                eprintln!("rkt: moving pod {:?} to garbage", p.uuid);
                p.move_to(&pods, PodDir::ExitedGarbage)
            }
            State::AbortedPrepare => {
                eprintln!("rkt: moving failed prepare {:?} to garbage", p.uuid);
                p.move_to(&pods, PodDir::Garbage)
            }
            // An embryo nobody holds: its creator died before it was even being prepared.
            State::Embryo if !Lock::is_held(&p.path).unwrap_or(true) => {
                p.move_to(&pods, PodDir::Garbage)
            }
            _ => Ok(()),
        };
        on_pod(&p, r);
    }
    if a.mark_only {
        return Ok(if failed { FAIL } else { 0 });
    }
    for mut p in pods.all()? {
        let r = sweep(&pods, &mut p, grace, expire);
        on_pod(&p, r);
    }
    Ok(if failed { FAIL } else { 0 })
}

/// gc's second pass on one pod: expires an old prepared pod, removes garbage past its grace.
fn sweep(pods: &Pods, p: &mut Pod, grace: Duration, expire: Duration) -> Result<()> {
    if p.state == State::Prepared && crate::pod::ctime_age(&p.path).is_some_and(|a| a >= expire) {
        // Only if nobody is starting it right now.
        if let Some(l) = Lock::try_exclusive(&p.path)? {
            drop(l);
            eprintln!("rkt: moving expired prepared pod {:?} to garbage", p.uuid);
            p.move_to(pods, PodDir::Garbage)?;
            p.state = State::Garbage;
        }
    }
    let old = match p.state {
        State::ExitedGarbage => crate::pod::ctime_age(&p.path).is_some_and(|age| age >= grace),
        State::Garbage => true,
        _ => return Ok(()),
    };
    if !old {
        eprintln!(
            "rkt: pod {:?} not removed: still within grace period ({})",
            p.uuid,
            go_duration(grace)
        );
        return Ok(());
    }
    let Some(lock) = Lock::try_exclusive(&p.path)? else {
        return Ok(());
    };
    crate::outln!("Garbage collecting pod {:?}", p.uuid);
    delete(p, lock)
}

#[derive(Args, Debug)]
pub struct CatManifestArgs {
    /// Pod UUID (or unambiguous prefix)
    pub uuid: Option<String>,
    /// Read pod UUID from file instead of argument
    #[arg(long, value_name = "FILE")]
    pub uuid_file: Option<PathBuf>,
    /// Apply indent to format the output
    #[arg(long, default_value_t = true, num_args = 0..=1, require_equals = true, default_missing_value = "true", action = clap::ArgAction::Set, value_parser = crate::parse_pflag_bool, value_name = "BOOL")]
    pub pretty_print: bool,
}

pub fn cat_manifest(g: &Globals, a: CatManifestArgs) -> Result<i32> {
    let args: Vec<String> = a.uuid.iter().cloned().collect();
    let query = uuids(&args, &a.uuid_file)?.remove(0);
    let pod = Pods::new(&g.dir).find(&query)?;
    let m = pod.manifest()?;
    if a.pretty_print {
        // rkt used Go's json.MarshalIndent with a tab.
        let mut out = Vec::new();
        let fmt = serde_json::ser::PrettyFormatter::with_indent(b"\t");
        let mut ser = serde_json::Serializer::with_formatter(&mut out, fmt);
        serde::Serialize::serialize(&m, &mut ser)?;
        crate::outln!("{}", String::from_utf8_lossy(&out));
    } else {
        crate::outln!("{}", serde_json::to_string(&m)?);
    }
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn go_durations() {
        assert_eq!(parse_go_duration("30m").unwrap(), Duration::from_secs(1800));
        assert_eq!(
            parse_go_duration("1h30m").unwrap(),
            Duration::from_secs(5400)
        );
        assert_eq!(
            parse_go_duration("500ms").unwrap(),
            Duration::from_millis(500)
        );
        assert_eq!(parse_go_duration("0s").unwrap(), Duration::ZERO);
        assert_eq!(parse_go_duration("0").unwrap(), Duration::ZERO);
        assert!(parse_go_duration("10").is_err());
        assert!(parse_go_duration("5y").is_err());
        assert!(parse_go_duration("99999999999999999h").is_err());
        assert!(parse_go_duration("1e400s").is_err());
        assert_eq!(
            parse_go_duration("2562047h").unwrap(),
            Duration::from_secs(2562047 * 3600)
        );
        assert_eq!(go_duration(Duration::from_secs(1800)), "30m0s");
        assert_eq!(go_duration(Duration::from_secs(86400)), "24h0m0s");
        assert_eq!(go_duration(Duration::ZERO), "0s");
    }
}
