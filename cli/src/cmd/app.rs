//! `rkt app`: rkt v1's app API (sandbox, add, start, stop, rm, list, status, exec), as rktlet
//! drives it. The operations are the engine's (`rkt_engine::pod::app`); this is the command
//! layer. `sandbox` and `add` take `rkt run`'s flags through `rkt run`'s parser. rkt v1 hid these
//! commands behind `RKT_EXPERIMENT_APP=true`; here they are always there (the variable is
//! accepted and changes nothing).

use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand};
use serde_json::Value;

use crate::cmd::pods;
use crate::global::Globals;
use crate::pod::app::{self as engine_app, SandboxOptions};
use crate::pod::lifecycle::{self, Keep};
use crate::pod::request::{AppFlags, PodFlags};
use crate::pod::{build, table, Pods};
use crate::run_args::{self as args, Mode};
use crate::stage1::Flavor;

#[derive(Args, Debug)]
pub struct AppArgs {
    #[command(subcommand)]
    pub cmd: AppCmd,
}

#[derive(Subcommand, Debug)]
pub enum AppCmd {
    /// Create an empty pod application sandbox (runs in the foreground until stopped)
    #[command(disable_help_flag = true)]
    Sandbox(RawArgs),
    /// Add an app to a sandbox pod: UUID IMAGE [app flags of rkt run] [-- args]
    #[command(disable_help_flag = true)]
    Add(RawArgs),
    /// Start an app of a sandbox pod
    Start(AppNameArgs),
    /// Stop an app of a sandbox pod
    Stop(AppNameArgs),
    /// Remove an app from a sandbox pod (stopping it first)
    Rm(AppNameArgs),
    /// List the apps of a pod
    List(ListArgs),
    /// Print the status of an app of a pod
    Status(StatusArgs),
    /// Run a command in a running app of a pod (as rkt enter)
    Exec(ExecArgs),
}

#[derive(Args, Debug)]
pub struct RawArgs {
    /// Flags and arguments, as for rkt run
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    pub args: Vec<String>,
}

#[derive(Args, Debug)]
pub struct AppNameArgs {
    /// Pod UUID (or unambiguous prefix)
    pub uuid: String,
    /// Name of the app
    #[arg(long, value_name = "NAME")]
    pub app: String,
}

#[derive(Args, Debug)]
pub struct ListArgs {
    /// Pod UUID (or unambiguous prefix)
    pub uuid: String,
    /// Suppress a legend with the list
    #[arg(long)]
    pub no_legend: bool,
}

#[derive(Args, Debug)]
pub struct StatusArgs {
    /// Pod UUID (or unambiguous prefix)
    pub uuid: String,
    /// Name of the app
    #[arg(long, value_name = "NAME")]
    pub app: String,
    /// Choose the output format: json, json-pretty (default: key=value lines)
    #[arg(long, value_name = "FORMAT", default_value = "")]
    pub format: String,
}

#[derive(Args, Debug)]
pub struct ExecArgs {
    /// Pod UUID (or unambiguous prefix)
    pub uuid: String,
    /// Name of the app
    #[arg(long, value_name = "NAME")]
    pub app: String,
    /// The command and its arguments (after --)
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    pub cmd: Vec<String>,
}

pub fn run(g: &Globals, a: AppArgs) -> Result<i32> {
    match a.cmd {
        AppCmd::Sandbox(r) => sandbox(g, r),
        AppCmd::Add(r) => add(g, r),
        AppCmd::Start(a) => simple(g, a, engine_app::start),
        AppCmd::Stop(a) => simple(g, a, engine_app::stop),
        AppCmd::Rm(a) => simple(g, a, engine_app::rm),
        AppCmd::List(a) => list(g, a),
        AppCmd::Status(a) => status(g, a),
        AppCmd::Exec(a) => exec(g, a),
    }
}

/// `--help`/`-h` before any `--`.
fn wants_help(raw: &[String]) -> bool {
    raw.iter()
        .take_while(|a| *a != "--")
        .any(|a| a == "--help" || a == "-h")
}

fn print_help(
    what: &'static str,
    scope_heading: &str,
    usage: &'static str,
    refused: &[&str],
) -> Result<i32> {
    let mut c = clap::Command::new(what)
        .bin_name(format!("rkt app {what}"))
        .override_usage(usage);
    for a in args::clap_args(Mode::Run) {
        let name = a.get_long().unwrap_or_default();
        if a.get_help_heading() == Some(scope_heading) && !refused.contains(&name) {
            c = c.arg(a);
        }
    }
    if what == "add" {
        c = c.arg(
            clap::Arg::new("mnt-volume")
                .long("mnt-volume")
                .value_name("name=NAME,kind=host|empty,source=PATH,target=PATH,readOnly=BOOL")
                .help("A volume of this app, mounted at target (repeatable)")
                .help_heading("App flags (after their image)"),
        );
    }
    crate::out!("{}", c.render_help());
    Ok(0)
}

/// The pod flags `rkt app sandbox` takes (rkt v1's, and `--hosts-entry`); the rest of
/// `rkt run`'s are refused.
fn check_sandbox_flags(pf: &PodFlags) -> Result<()> {
    let given = [
        !pf.volumes.is_empty(),
        !pf.mounts.is_empty(),
        pf.inherit_env,
        !pf.set_env.is_empty(),
        !pf.set_env_file.is_empty(),
        pf.pod_manifest.is_some(),
        pf.private_users,
        pf.start.interactive,
        pf.start.mds_register,
    ];
    if let Some((f, _)) = SANDBOX_REFUSED.iter().zip(given).find(|(_, g)| *g) {
        bail!("--{f} is not accepted by rkt app sandbox");
    }
    Ok(())
}

/// `rkt run`'s pod flags that a sandbox refuses (apps and their environment come with `add`).
const SANDBOX_REFUSED: [&str; 9] = [
    "volume",
    "mount",
    "inherit-env",
    "set-env",
    "set-env-file",
    "pod-manifest",
    "private-users",
    "interactive",
    "mds-register",
];

/// Stands in for an image while `rkt run`'s parser reads the sandbox's flags: the per-app
/// `--user-annotation`/`--user-label` then attach to it and become the pod's.
const PLACEHOLDER: &str = "\u{0}sandbox";

fn sandbox(g: &Globals, r: RawArgs) -> Result<i32> {
    if wants_help(&r.args) {
        return print_help(
            "sandbox",
            "Pod flags",
            "rkt app sandbox [pod flags]",
            &SANDBOX_REFUSED,
        );
    }
    let argv: Vec<String> = std::iter::once(PLACEHOLDER.to_string())
        .chain(r.args)
        .collect();
    let mut p = args::parse(Mode::Run, &argv)?;
    if p.apps.len() != 1 {
        bail!("rkt app sandbox takes no image (add apps with rkt app add)");
    }
    let ph = p.apps.remove(0);
    let only_labels = AppFlags {
        image: ph.image.clone(),
        user_annotations: ph.user_annotations.clone(),
        user_labels: ph.user_labels.clone(),
        ..Default::default()
    };
    if ph != only_labels {
        bail!("rkt app sandbox takes pod flags only (per-app flags go to rkt app add)");
    }
    check_sandbox_flags(&p.pod)?;
    let opts = SandboxOptions {
        user_annotations: ph.user_annotations,
        user_labels: ph.user_labels,
        ports: std::mem::take(&mut p.pod.ports),
    };
    pods::ensure_root()?;
    let (annotations, ports) = engine_app::sandbox_manifest_parts(&opts)?;
    let start = build::start_options(&p.pod.start)?;
    let flavor = build::flavor(&p.pod, g.config.stage1_name.as_deref())?;
    if !matches!(flavor, Flavor::Ns | Flavor::Kvm) {
        bail!("rkt app sandbox: stage1 {flavor} does not run mutable pods (use --stage1=ns)");
    }
    flavor.check(&start.net)?;
    crate::net::check_flavor(true, &start.net_arg)?;
    crate::pod::set_ephemeral();
    let (pods, mut pod, lock, insecure) =
        lifecycle::prepare_pod(g, &p.pod, &p.apps, Keep::StartNow)?;
    let r = engine_app::make_mutable(&pod.path, annotations, ports).and_then(|()| {
        lifecycle::start_pod(
            g,
            &pods,
            &mut pod,
            &lock,
            &start,
            insecure,
            g.debug || p.pod.debug,
            p.pod.uuid_file_save.as_deref(),
        )
    });
    if r.is_err() {
        lifecycle::discard_unstarted(&pods, pod, lock);
    }
    r
}

fn add(g: &Globals, r: RawArgs) -> Result<i32> {
    if wants_help(&r.args) {
        return print_help(
            "add",
            "App flags (after their image)",
            "rkt app add UUID IMAGE [app flags] [-- app args]",
            &["mount"],
        );
    }
    pods::ensure_root()?;
    let Some((uuid, rest)) = r.args.split_first().filter(|(u, _)| !u.starts_with('-')) else {
        bail!("rkt app add needs the pod UUID and an image (rkt app add UUID IMAGE [flags])");
    };
    let (mnt_volumes, rest) = take_mnt_volumes(rest)?;
    let p = args::parse(Mode::Run, &rest)?;
    if p.apps.len() != 1 {
        bail!("rkt app add takes exactly one image");
    }
    // Pod flags other than those about fetching belong to the sandbox.
    let fetch_only = PodFlags {
        insecure_options: p.pod.insecure_options.clone(),
        pull_policy: p.pod.pull_policy.clone(),
        debug: p.pod.debug,
        quiet: p.pod.quiet,
        ..Default::default()
    };
    if p.pod != fetch_only {
        bail!("rkt app add takes per-app flags only (pod flags belong to rkt app sandbox)");
    }
    let insecure = build::insecure(g.insecure, &p.pod)?;
    let mut fetch = build::fetch_options(&p.pod, insecure, &g.config)?;
    // The trust store, as for rkt run: an added app's image is verified like any other.
    fetch.trust.config = g.trust.clone();
    let pod = Pods::new(&g.dir).find(uuid)?;
    // As for prepare: image gc leaves the trees we are about to use alone.
    let _prepare_lock = lifecycle::prepare_lock(&g.dir, rkt_flock::Mode::Shared)?;
    let store = rkt_store::Store::open(&g.dir)?;
    let ctx = engine_app::AddContext {
        store: &store,
        fetch: &fetch,
    };
    engine_app::add(&ctx, &pod, &p.apps[0], &mnt_volumes)?;
    Ok(0)
}

/// `--mnt-volume=V` / `--mnt-volume V` (app add's own flag, rkt v1) taken out of the flags
/// `rkt run`'s parser reads; what follows `--` belongs to the app.
fn take_mnt_volumes(args: &[String]) -> Result<(Vec<String>, Vec<String>)> {
    let (mut vols, mut rest) = (Vec::new(), Vec::new());
    let mut it = args.iter();
    while let Some(a) = it.next() {
        if a == "--" {
            rest.push(a.clone());
            rest.extend(it.cloned());
            break;
        }
        if let Some(v) = a.strip_prefix("--mnt-volume=") {
            vols.push(v.to_string());
        } else if a == "--mnt-volume" {
            vols.push(it.next().context("--mnt-volume needs a value")?.clone());
        } else {
            rest.push(a.clone());
        }
    }
    Ok((vols, rest))
}

fn simple(
    g: &Globals,
    a: AppNameArgs,
    op: fn(&crate::pod::Pod, &str) -> Result<()>,
) -> Result<i32> {
    pods::ensure_root()?;
    let pod = Pods::new(&g.dir).find(&a.uuid)?;
    op(&pod, &a.app)?;
    Ok(0)
}

fn list(g: &Globals, a: ListArgs) -> Result<i32> {
    let pod = Pods::new(&g.dir).find(&a.uuid)?;
    let apps = engine_app::apps(&pod, None)?;
    let mut rows: Vec<Vec<String>> = Vec::new();
    if !a.no_legend {
        rows.push(vec!["NAME".into(), "STATE".into()]);
    }
    for app in &apps {
        rows.push(vec![app.name.clone(), app.state.as_str().into()]);
    }
    crate::out!("{}", table::tabulate(&rows));
    Ok(0)
}

fn status(g: &Globals, a: StatusArgs) -> Result<i32> {
    if !matches!(a.format.as_str(), "" | "json" | "json-pretty") {
        bail!("invalid --format {:?} (json or json-pretty)", a.format);
    }
    let pod = Pods::new(&g.dir).find(&a.uuid)?;
    let app = engine_app::apps(&pod, Some(&a.app))?.remove(0);
    let v = app.to_json();
    match a.format.as_str() {
        "json" => crate::outln!("{}", serde_json::to_string(&v)?),
        "json-pretty" => crate::outln!("{}", serde_json::to_string_pretty(&v)?),
        _ => {
            let time = |ns: i64| table::full_time(chrono::DateTime::from_timestamp_nanos(ns));
            crate::outln!("name={}", app.name);
            crate::outln!("state={}", app.state.as_str());
            crate::outln!("image_id={}", app.image_id);
            for (k, t) in [
                ("created_at", app.created_at),
                ("started_at", app.started_at),
                ("finished_at", app.finished_at),
            ] {
                if let Some(t) = t {
                    crate::outln!("{k}={}", time(t));
                }
            }
            if let Some(c) = app.exit_code {
                crate::outln!("exit_code={c}");
            }
            if !app.mounts.is_empty() {
                let m: Vec<String> = app
                    .mounts
                    .iter()
                    .map(|m| {
                        format!(
                            "{}:{}:(read_only:{})",
                            m.host_path, m.container_path, m.read_only
                        )
                    })
                    .collect();
                crate::outln!("mounts={}", m.join(","));
            }
            for (k, list) in [
                ("user_annotations", &app.user_annotations),
                ("user_labels", &app.user_labels),
            ] {
                if !list.is_empty() {
                    let kv: Vec<String> = list.iter().map(|(k, v)| format!("{k}:{v}")).collect();
                    crate::outln!("{k}={}", kv.join(","));
                }
            }
        }
    }
    Ok(0)
}

fn exec(g: &Globals, a: ExecArgs) -> Result<i32> {
    pods::ensure_root()?;
    let pod = Pods::new(&g.dir).find(&a.uuid)?;
    let cmd: Vec<String> = match a.cmd.first().map(String::as_str) {
        Some("--") => a.cmd[1..].to_vec(),
        _ => a.cmd,
    };
    engine_app::exec(&pod, &a.app, &cmd)
}

/// rkt v1's per-app fields for `rkt list`/`rkt status` JSON (`apps[i]`): state, times in
/// nanoseconds, exit code and mounts.
pub fn app_fields(p: &crate::pod::Pod) -> Vec<Value> {
    engine_app::apps(p, None)
        .unwrap_or_default()
        .iter()
        .map(|a| a.to_json())
        .collect()
}
