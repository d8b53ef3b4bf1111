//! Command-line parsing for `rkt run`, `rkt prepare` and `rkt run-prepared`.
//!
//! rkt's per-app flags are position-sensitive: they apply to the image just before them
//! (`rkt run [pod flags] IMG1 [app flags] [-- args [---]] IMG2 [app flags] ...`), which clap cannot
//! express, so these commands take their arguments raw and parse them here.

use anyhow::{bail, Result};
pub use rkt_engine::pod::request::{AppFlags, PodFlags, StartFlags};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Run,
    Prepare,
    RunPrepared,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// `--flag` or `--flag=true|false`.
    Bool,
    /// `--flag=value` or `--flag value`.
    Value,
    /// `--flag=value`, or `--flag` alone meaning the given default (pflag's NoOptDefVal).
    OptValue(&'static str),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Scope {
    Pod,
    App,
}

const RUN: u8 = 1;
const PREPARE: u8 = 2;
const RUN_PREPARED: u8 = 4;

/// One flag of rkt's run family: the parser, `--help`, completions and man pages all read this.
struct FlagDef {
    name: &'static str,
    kind: Kind,
    scope: Scope,
    modes: u8,
    /// One line for `--help`.
    help: &'static str,
}

const fn f(name: &'static str, kind: Kind, scope: Scope, modes: u8, help: &'static str) -> FlagDef {
    FlagDef {
        name,
        kind,
        scope,
        modes,
        help,
    }
}

use Kind::*;
use Scope::*;

const FLAGS: &[FlagDef] = &[
    // pod flags, run and prepare
    f(
        "stage1",
        Value,
        Pod,
        RUN | PREPARE,
        "stage1 flavour to run the pod with: ns, kvm or fly",
    ),
    f(
        "stage1-name",
        Value,
        Pod,
        RUN | PREPARE,
        "stage1 by image name (coreos.com/rkt/stage1-<flavour>[:VERSION]) or flavour name",
    ),
    f(
        "stage1-path",
        Value,
        Pod,
        RUN | PREPARE,
        "stage1 by image file path (stage1-<flavour>.aci names the flavour)",
    ),
    f(
        "stage1-url",
        Value,
        Pod,
        RUN | PREPARE,
        "stage1 by URL (file://, http(s)://, docker://) of a stage1-<flavour>.aci",
    ),
    f(
        "stage1-hash",
        Value,
        Pod,
        RUN | PREPARE,
        "stage1 by image hash (refused: our stage1s are built in)",
    ),
    f(
        "stage1-from-dir",
        Value,
        Pod,
        RUN | PREPARE,
        "stage1 by image file name in the stage1 images directory",
    ),
    f(
        "volume",
        Value,
        Pod,
        RUN | PREPARE,
        "volume for the pod: NAME,kind=host|empty,source=PATH[,readOnly=BOOL,recursive=BOOL]",
    ),
    f(
        "inherit-env",
        Bool,
        Pod,
        RUN | PREPARE,
        "apps inherit rkt's environment",
    ),
    f(
        "set-env",
        Value,
        Pod,
        RUN | PREPARE,
        "environment variable NAME=VALUE for every app (repeatable)",
    ),
    f(
        "set-env-file",
        Value,
        Pod,
        RUN | PREPARE,
        "file of NAME=VALUE lines, the environment for every app",
    ),
    f(
        "no-overlay",
        Bool,
        Pod,
        RUN | PREPARE,
        "copy each image instead of an overlayfs over the store's tree",
    ),
    f(
        "private-users",
        Bool,
        Pod,
        RUN | PREPARE,
        "run the pod in a user namespace of its own (refused: not implemented)",
    ),
    f(
        "pull-policy",
        Value,
        Pod,
        RUN | PREPARE,
        "when to fetch images: never, new (default) or update",
    ),
    f(
        "store-only",
        Bool,
        Pod,
        RUN | PREPARE,
        "use only images already in the store (deprecated: --pull-policy=never)",
    ),
    f(
        "no-store",
        Bool,
        Pod,
        RUN | PREPARE,
        "always fetch images (deprecated: --pull-policy=update)",
    ),
    f(
        "pod-manifest",
        Value,
        Pod,
        RUN | PREPARE,
        "path to a pod manifest to run instead of images and flags",
    ),
    f(
        "tpm",
        Value,
        Pod,
        RUN | PREPARE,
        "TPM measurement of the pod: auto, required or off",
    ),
    f(
        "port",
        Value,
        Pod,
        RUN | PREPARE,
        "expose a port: NAME:[HOSTIP:]HOSTPORT",
    ),
    f(
        "insecure-options",
        Value,
        Pod,
        RUN | PREPARE | RUN_PREPARED,
        "security features to disable (see rkt --help)",
    ),
    f(
        "debug",
        Bool,
        Pod,
        RUN | PREPARE | RUN_PREPARED,
        "print out more debug information to stderr",
    ),
    // pod flags applied when the pod starts
    f(
        "net",
        OptValue("default"),
        Pod,
        RUN | RUN_PREPARED,
        "networks to join: default, none, host or named CNI networks (alone: default)",
    ),
    f(
        "dns",
        Value,
        Pod,
        RUN | RUN_PREPARED,
        "name servers for the pod's resolv.conf, or host or none",
    ),
    f(
        "dns-search",
        Value,
        Pod,
        RUN | RUN_PREPARED,
        "DNS search domains for the pod's resolv.conf",
    ),
    f(
        "dns-opt",
        Value,
        Pod,
        RUN | RUN_PREPARED,
        "DNS options for the pod's resolv.conf",
    ),
    f(
        "dns-domain",
        Value,
        Pod,
        RUN | RUN_PREPARED,
        "DNS domain for the pod's resolv.conf",
    ),
    f(
        "hosts-entry",
        Value,
        Pod,
        RUN | RUN_PREPARED,
        "/etc/hosts entry IP=HOSTNAME, or host to copy the host's",
    ),
    f(
        "hostname",
        Value,
        Pod,
        RUN | RUN_PREPARED,
        "the pod's hostname (default rkt-UUID)",
    ),
    f(
        "interactive",
        Bool,
        Pod,
        RUN | RUN_PREPARED,
        "give the only app the terminal (stdin, tty); its output is not logged",
    ),
    f(
        "mds-register",
        Bool,
        Pod,
        RUN | RUN_PREPARED,
        "register the pod with the metadata service (refused: not supported)",
    ),
    f(
        "ipc",
        Value,
        Pod,
        RUN | RUN_PREPARED,
        "IPC namespace: auto or private",
    ),
    f(
        "uuid-file-save",
        Value,
        Pod,
        RUN,
        "write the pod's UUID to this file once it runs",
    ),
    f("quiet", Bool, Pod, PREPARE, "print only the pod's UUID"),
    // per-app flags
    f(
        "signature",
        Value,
        App,
        RUN | PREPARE,
        "signature file of the preceding image (per app)",
    ),
    f(
        "exec",
        Value,
        App,
        RUN | PREPARE,
        "command to run instead of the image's (per app)",
    ),
    f(
        "working-dir",
        Value,
        App,
        RUN | PREPARE,
        "working directory of the app (per app)",
    ),
    f(
        "readonly-rootfs",
        Bool,
        App,
        RUN | PREPARE,
        "mount the app's root read-only (per app)",
    ),
    f(
        "mount",
        Value,
        App,
        RUN | PREPARE,
        "mount volume=NAME,target=PATH in the preceding app; before the first image, in every app",
    ),
    f(
        "user",
        Value,
        App,
        RUN | PREPARE,
        "user to run the app as, name or UID (per app)",
    ),
    f(
        "group",
        Value,
        App,
        RUN | PREPARE,
        "group to run the app as, name or GID (per app)",
    ),
    f(
        "supplementary-gids",
        Value,
        App,
        RUN | PREPARE,
        "supplementary group IDs, comma-separated (per app)",
    ),
    f(
        "name",
        Value,
        App,
        RUN | PREPARE,
        "the app's name (per app)",
    ),
    f(
        "annotation",
        Value,
        App,
        RUN | PREPARE,
        "app annotation NAME=VALUE (per app)",
    ),
    f(
        "user-annotation",
        Value,
        App,
        RUN | PREPARE,
        "user annotation NAME=VALUE (per app)",
    ),
    f(
        "user-label",
        Value,
        App,
        RUN | PREPARE,
        "user label NAME=VALUE (per app)",
    ),
    f(
        "environment",
        Value,
        App,
        RUN | PREPARE,
        "environment variable NAME=VALUE for the app (per app)",
    ),
    f(
        "memory",
        Value,
        App,
        RUN | PREPARE,
        "memory limit, e.g. 512M or bytes (per app)",
    ),
    f(
        "cpu",
        Value,
        App,
        RUN | PREPARE,
        "CPU limit in millicores or cores, e.g. 500m or 2 (per app)",
    ),
    f(
        "cpu-shares",
        Value,
        App,
        RUN | PREPARE,
        "CPU shares (relative weight) (per app)",
    ),
    f(
        "caps-retain",
        Value,
        App,
        RUN | PREPARE,
        "capabilities the app keeps, comma-separated (per app)",
    ),
    f(
        "caps-remove",
        Value,
        App,
        RUN | PREPARE,
        "capabilities the app loses, comma-separated (per app)",
    ),
    f(
        "cap-retain",
        Value,
        App,
        RUN | PREPARE,
        "deprecated spelling of --caps-retain (per app)",
    ),
    f(
        "cap-remove",
        Value,
        App,
        RUN | PREPARE,
        "deprecated spelling of --caps-remove (per app)",
    ),
    f(
        "seccomp",
        Value,
        App,
        RUN | PREPARE,
        "seccomp filter: mode=retain|remove[,errno=E],SYSCALL... (per app)",
    ),
    f(
        "oom-score-adj",
        Value,
        App,
        RUN | PREPARE,
        "OOM score adjustment, -1000 to 1000 (per app)",
    ),
];

#[derive(Debug, Clone, Default, PartialEq)]
pub struct Parsed {
    pub pod: PodFlags,
    pub apps: Vec<AppFlags>,
    /// `run-prepared`'s UUID.
    pub uuid: Option<String>,
    /// `--help` or `-h` came before any `--`: print the command's help instead.
    pub help: bool,
}

fn parse_bool(flag: &str, v: &str) -> Result<bool> {
    Ok(match v {
        "1" | "t" | "T" | "true" | "TRUE" | "True" => true,
        "0" | "f" | "F" | "false" | "FALSE" | "False" => false,
        _ => bail!("invalid value {v:?} for --{flag}: expected true or false"),
    })
}

pub fn parse(mode: Mode, args: &[String]) -> Result<Parsed> {
    let bit = mode_bit(mode);
    let mut out = Parsed::default();
    let mut i = 0;
    while i < args.len() {
        let a = &args[i];
        i += 1;
        if a == "--" {
            let Some(app) = out.apps.last_mut() else {
                bail!("\"--\" must follow an image (app arguments go after their image)");
            };
            let mut app_args = Vec::new();
            while i < args.len() && args[i] != "---" {
                app_args.push(args[i].clone());
                i += 1;
            }
            i += 1; // skip the "---" terminator, if any
            app.args = Some(app_args);
            continue;
        }
        if a == "---" {
            continue;
        }
        if a == "--help" || a == "-h" {
            out.help = true;
            return Ok(out);
        }
        let Some(body) = a.strip_prefix("--") else {
            if a.starts_with('-') && a.len() > 1 {
                bail!("unknown shorthand flag {a:?}");
            }
            match mode {
                Mode::RunPrepared => {
                    if out.uuid.is_some() {
                        bail!("run-prepared takes exactly one UUID");
                    }
                    out.uuid = Some(a.clone());
                }
                _ => out.apps.push(AppFlags {
                    image: a.clone(),
                    ..Default::default()
                }),
            }
            continue;
        };
        let (name, inline) = match body.split_once('=') {
            Some((n, v)) => (n, Some(v.to_string())),
            None => (body, None),
        };
        let Some(def) = FLAGS.iter().find(|d| d.name == name) else {
            bail!("unknown flag: --{name}");
        };
        if def.modes & bit == 0 {
            let cmd = match mode {
                Mode::Run => "run",
                Mode::Prepare => "prepare",
                Mode::RunPrepared => "run-prepared",
            };
            bail!("unknown flag: --{name} (not accepted by rkt {cmd})");
        }
        let value = match def.kind {
            Bool => match inline {
                Some(v) => parse_bool(name, &v)?.to_string(),
                None => "true".to_string(),
            },
            OptValue(default) => inline.unwrap_or_else(|| default.to_string()),
            Value => match inline {
                Some(v) => v,
                None => {
                    let Some(v) = args.get(i) else {
                        bail!("flag needs an argument: --{name}");
                    };
                    i += 1;
                    v.clone()
                }
            },
        };
        match def.scope {
            Scope::Pod => set_pod(&mut out.pod, name, value),
            Scope::App => match out.apps.last_mut() {
                Some(app) => set_app(app, name, value),
                // rkt v1: a --mount before the first image is mounted in every app.
                None if name == "mount" => out.pod.mounts.push(value),
                None => bail!("--{name} must follow an image"),
            },
        }
    }
    validate(mode, &out)?;
    Ok(out)
}

/// The flags of `mode` as clap arguments, for `--help`, completions and man pages only: the
/// command line itself is parsed by [`parse`] (clap cannot express per-image flags).
pub fn clap_args(mode: Mode) -> Vec<clap::Arg> {
    use clap::{Arg, ArgAction};
    let bit = mode_bit(mode);
    FLAGS
        .iter()
        .filter(|d| d.modes & bit != 0)
        .map(|d| {
            let a = Arg::new(d.name)
                .long(d.name)
                .help(d.help)
                .help_heading(match d.scope {
                    Scope::Pod => "Pod flags",
                    Scope::App => "App flags (after their image)",
                });
            match d.kind {
                Bool => a
                    .action(ArgAction::Set)
                    .num_args(0..=1)
                    .require_equals(true)
                    .value_name("BOOL")
                    .default_missing_value("true"),
                OptValue(default) => a
                    .action(ArgAction::Set)
                    .num_args(0..=1)
                    .require_equals(true)
                    .default_missing_value(default),
                Value => a.action(ArgAction::Append).value_name("VALUE"),
            }
        })
        .collect()
}

fn mode_bit(mode: Mode) -> u8 {
    match mode {
        Mode::Run => RUN,
        Mode::Prepare => PREPARE,
        Mode::RunPrepared => RUN_PREPARED,
    }
}

fn set_pod(p: &mut PodFlags, name: &str, v: String) {
    let b = v == "true";
    let s = &mut p.start;
    match name {
        "stage1" | "stage1-name" | "stage1-path" | "stage1-url" | "stage1-hash"
        | "stage1-from-dir" => p.stage1 = Some((name.to_string(), v)),
        "volume" => p.volumes.push(v),
        "inherit-env" => p.inherit_env = b,
        "set-env" => p.set_env.push(v),
        "set-env-file" => p.set_env_file.push(v),
        "no-overlay" => p.no_overlay = b,
        "private-users" => p.private_users = b,
        "pull-policy" => p.pull_policy = Some(v),
        "store-only" if b => p.pull_policy = Some("never".into()),
        "no-store" if b => p.pull_policy = Some("update".into()),
        "pod-manifest" => p.pod_manifest = Some(v.into()),
        "tpm" => p.tpm = Some(v),
        "port" => p.ports.push(v),
        "insecure-options" => p.insecure_options.push(v),
        "debug" => p.debug = b,
        "quiet" => p.quiet = b,
        "uuid-file-save" => p.uuid_file_save = Some(v.into()),
        "net" => s.net = Some(v),
        "dns" => s.dns.extend(split_list(&v)),
        "dns-search" => s.dns_search.extend(split_list(&v)),
        "dns-opt" => s.dns_opt.extend(split_list(&v)),
        "dns-domain" => s.dns_domain = Some(v),
        "hosts-entry" => s.hosts_entries.extend(split_list(&v)),
        "hostname" => s.hostname = Some(v),
        "interactive" => s.interactive = b,
        "mds-register" => s.mds_register = b,
        "ipc" => s.ipc = Some(v),
        _ => {}
    }
}

fn set_app(a: &mut AppFlags, name: &str, v: String) {
    match name {
        "exec" => a.exec = Some(v),
        "working-dir" => a.working_dir = Some(v),
        "readonly-rootfs" => a.readonly_rootfs = Some(v == "true"),
        "mount" => a.mounts.push(v),
        "user" => a.user = Some(v),
        "group" => a.group = Some(v),
        "supplementary-gids" => a.supplementary_gids = Some(v),
        "name" => a.name = Some(v),
        "annotation" => a.annotations.push(v),
        "user-annotation" => a.user_annotations.push(v),
        "user-label" => a.user_labels.push(v),
        "environment" => a.environment.push(v),
        "memory" => a.memory = Some(v),
        "cpu" => a.cpu = Some(v),
        "cpu-shares" => a.cpu_shares = Some(v),
        "caps-retain" | "cap-retain" => a.caps_retain = Some(v),
        "caps-remove" | "cap-remove" => a.caps_remove = Some(v),
        "seccomp" => a.seccomp = Some(v),
        "oom-score-adj" => a.oom_score_adj = Some(v),
        "signature" => a.signature = Some(v.into()),
        _ => {}
    }
}

/// pflag string slices: comma-separated values, repeatable.
fn split_list(v: &str) -> Vec<String> {
    v.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(String::from)
        .collect()
}

fn validate(mode: Mode, p: &Parsed) -> Result<()> {
    let pf = &p.pod;
    match mode {
        Mode::RunPrepared => {
            if p.uuid.is_none() {
                bail!("run-prepared requires the UUID of a prepared pod");
            }
        }
        Mode::Run | Mode::Prepare => {
            if pf.pod_manifest.is_some() {
                if !p.apps.is_empty()
                    || !pf.volumes.is_empty()
                    || !pf.mounts.is_empty()
                    || !pf.ports.is_empty()
                    || pf.inherit_env
                    || !pf.set_env.is_empty()
                    || !pf.set_env_file.is_empty()
                    || pf.private_users
                {
                    bail!("conflicting flags set with --pod-manifest (see --help)");
                }
            } else if p.apps.is_empty() {
                bail!("must provide at least one image");
            }
        }
    }
    if pf.start.interactive && p.apps.len() > 1 {
        bail!("interactive option only supports one image");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(s: &[&str]) -> Vec<String> {
        s.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn per_app_flags_follow_their_image() {
        let p = parse(
            Mode::Run,
            &v(&[
                "--net=host",
                "--set-env",
                "A=1",
                "img1",
                "--exec",
                "/bin/a",
                "--memory=64M",
                "--",
                "x",
                "--not-a-flag",
                "---",
                "img2",
                "--name=second",
                "--readonly-rootfs",
                "--",
                "y",
            ]),
        )
        .unwrap();
        assert_eq!(p.pod.start.net.as_deref(), Some("host"));
        assert_eq!(p.pod.set_env, vec!["A=1"]);
        assert_eq!(p.apps.len(), 2);
        assert_eq!(p.apps[0].image, "img1");
        assert_eq!(p.apps[0].exec.as_deref(), Some("/bin/a"));
        assert_eq!(p.apps[0].memory.as_deref(), Some("64M"));
        assert_eq!(p.apps[0].args, Some(v(&["x", "--not-a-flag"])));
        assert_eq!(p.apps[1].name.as_deref(), Some("second"));
        assert_eq!(p.apps[1].readonly_rootfs, Some(true));
        assert_eq!(p.apps[1].args, Some(v(&["y"])));
    }

    #[test]
    fn pod_flags_may_follow_images_and_net_alone_means_default() {
        let p = parse(Mode::Run, &v(&["img", "--net", "--dns", "8.8.8.8,1.1.1.1"])).unwrap();
        assert_eq!(p.pod.start.net.as_deref(), Some("default"));
        assert_eq!(p.pod.start.dns, v(&["8.8.8.8", "1.1.1.1"]));
    }

    #[test]
    fn mount_before_the_first_image_is_for_every_app() {
        let p = parse(
            Mode::Prepare,
            &v(&[
                "--mount",
                "volume=a,target=/a",
                "img1",
                "--mount=volume=b,target=/b",
                "img2",
            ]),
        )
        .unwrap();
        assert_eq!(p.pod.mounts, v(&["volume=a,target=/a"]));
        assert_eq!(p.apps[0].mounts, v(&["volume=b,target=/b"]));
        assert!(p.apps[1].mounts.is_empty());
    }

    #[test]
    fn help_anywhere_before_the_app_args() {
        assert!(
            parse(Mode::Run, &v(&["--net=host", "--help"]))
                .unwrap()
                .help
        );
        assert!(parse(Mode::RunPrepared, &v(&["-h"])).unwrap().help);
        let p = parse(Mode::Run, &v(&["img", "--", "--help"])).unwrap();
        assert!(!p.help);
        assert_eq!(p.apps[0].args, Some(v(&["--help"])));
    }

    #[test]
    fn every_flag_has_one_line_of_help() {
        for d in FLAGS {
            assert!(!d.help.is_empty() && !d.help.contains('\n'), "--{}", d.name);
        }
        let names: Vec<String> = clap_args(Mode::Run)
            .iter()
            .map(|a| a.get_id().to_string())
            .collect();
        assert!(names.contains(&"exec".to_string()) && !names.contains(&"quiet".to_string()));
    }

    #[test]
    fn errors_are_one_line() {
        let e = parse(Mode::Run, &v(&["--exec", "/x", "img"])).unwrap_err();
        assert_eq!(e.to_string(), "--exec must follow an image");
        let e = parse(Mode::Run, &v(&["img", "--bogus"])).unwrap_err();
        assert_eq!(e.to_string(), "unknown flag: --bogus");
        let e = parse(Mode::Run, &v(&["img", "--exec"])).unwrap_err();
        assert_eq!(e.to_string(), "flag needs an argument: --exec");
        let e = parse(Mode::Run, &v(&["img", "--readonly-rootfs=maybe"])).unwrap_err();
        assert!(e.to_string().contains("--readonly-rootfs"));
        let e = parse(Mode::Run, &v(&[])).unwrap_err();
        assert_eq!(e.to_string(), "must provide at least one image");
        let e = parse(Mode::Prepare, &v(&["--hostname=x", "img"])).unwrap_err();
        assert!(e.to_string().contains("--hostname"));
        let e = parse(Mode::Run, &v(&["--pod-manifest=/p", "img"])).unwrap_err();
        assert!(e
            .to_string()
            .starts_with("conflicting flags set with --pod-manifest"));
        assert!(parse(Mode::Run, &v(&["--pod-manifest", "/p"])).is_ok());
        let e = parse(Mode::Run, &v(&["--interactive", "a", "b"])).unwrap_err();
        assert_eq!(e.to_string(), "interactive option only supports one image");
    }

    #[test]
    fn run_prepared_takes_one_uuid_and_start_flags() {
        let p = parse(Mode::RunPrepared, &v(&["--hostname", "h", "abcd"])).unwrap();
        assert_eq!(p.uuid.as_deref(), Some("abcd"));
        assert_eq!(p.pod.start.hostname.as_deref(), Some("h"));
        assert!(parse(Mode::RunPrepared, &v(&["a", "b"])).is_err());
        assert!(parse(Mode::RunPrepared, &v(&["--no-overlay", "a"])).is_err());
        assert!(parse(Mode::RunPrepared, &v(&[])).is_err());
    }

    #[test]
    fn bool_flags_take_explicit_values() {
        let p = parse(Mode::Prepare, &v(&["--quiet=false", "--no-overlay", "img"])).unwrap();
        assert!(!p.pod.quiet);
        assert!(p.pod.no_overlay);
        let p = parse(Mode::Prepare, &v(&["--quiet", "img"])).unwrap();
        assert!(p.pod.quiet);
        // a bool never swallows the next argument: "img" stays the image
        assert_eq!(p.apps[0].image, "img");
    }
}
