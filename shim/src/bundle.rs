//! The OCI bundle containerd hands the shim: its `config.json` (read with `oci-spec`) mapped onto
//! an rkt app, and the root file system containerd asks the shim to mount at `<bundle>/rootfs`.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use oci_spec::runtime::{LinuxNamespaceType, Spec};
use rkt_stage2::{AppSpec, MountSpec, RootfsSpec, SeccompSpec};
use sha2::Digest;

/// CRI's annotations: what a container is (`sandbox` for the pause container, `container` for the
/// others) and which sandbox it belongs to.
pub const CONTAINER_TYPE: &str = "io.kubernetes.cri.container-type";
pub const SANDBOX_ID: &str = "io.kubernetes.cri.sandbox-id";
const IMAGE_NAME: &str = "io.kubernetes.cri.image-name";

pub fn load(bundle: &Path) -> Result<Spec> {
    let p = bundle.join("config.json");
    Spec::load(&p).with_context(|| format!("reading {}", p.display()))
}

fn annotation<'a>(spec: &'a Spec, key: &str) -> Option<&'a str> {
    spec.annotations()
        .as_ref()
        .and_then(|a| a.get(key))
        .map(String::as_str)
}

/// Where a container goes: `None` when it makes its own pod (a CRI sandbox, or any container that
/// CRI did not create, such as `ctr run`'s), else the sandbox whose pod it joins.
pub fn sandbox_of(spec: &Spec) -> Option<String> {
    match annotation(spec, CONTAINER_TYPE) {
        Some("container") => annotation(spec, SANDBOX_ID).map(str::to_string),
        _ => None,
    }
}

/// The shim instance that serves a container: one per sandbox (CRI), one per container otherwise.
pub fn grouping(spec: &Spec, id: &str) -> String {
    sandbox_of(spec).unwrap_or_else(|| id.to_string())
}

/// How the pod's network is set up: the host's (`--net=host`, no network namespace in the
/// spec), a namespace CRI made (its path), or a new one with loopback only.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Net {
    Host,
    Join(PathBuf),
    Own,
}

pub fn net(spec: &Spec) -> Net {
    let nss = spec
        .linux()
        .as_ref()
        .and_then(|l| l.namespaces().clone())
        .unwrap_or_default();
    match nss.iter().find(|n| n.typ() == LinuxNamespaceType::Network) {
        None => Net::Host,
        Some(n) => match n.path() {
            Some(p) if !p.as_os_str().is_empty() => Net::Join(p.clone()),
            _ => Net::Own,
        },
    }
}

/// The spec's sysctls (CRI's pod `sysctls`), checked: only network ones (`net.*`), which the
/// shim sets in the namespace CRI made; others (IPC's `kernel.shm*`, ...) are refused rather
/// than ignored.
pub fn sysctls(spec: &Spec) -> Result<Vec<(String, String)>> {
    let Some(m) = spec.linux().as_ref().and_then(|l| l.sysctl().clone()) else {
        return Ok(Vec::new());
    };
    let mut out: Vec<(String, String)> = m.into_iter().collect();
    out.sort();
    for (k, v) in &out {
        let key_ok = k.starts_with("net.")
            && k.split('.').all(|c| {
                !c.is_empty()
                    && c.chars()
                        .all(|ch| ch.is_ascii_alphanumeric() || ch == '_' || ch == '-')
            });
        if !key_ok {
            bail!("sysctl {k:?}: only network sysctls (net.*) are supported");
        }
        if v.is_empty() || v.len() > 256 || v.chars().any(|c| c.is_control()) {
            bail!("sysctl {k}: bad value {v:?}");
        }
    }
    Ok(out)
}

/// Sets `sysctls` in the network namespace at `ns`, from a thread of its own (`/proc/sys/net` is
/// the writing thread's namespace's).
pub fn apply_sysctls(ns: &Path, sysctls: &[(String, String)]) -> Result<()> {
    let f = std::fs::File::open(ns).with_context(|| format!("opening {}", ns.display()))?;
    let sysctls = sysctls.to_vec();
    std::thread::spawn(move || -> Result<()> {
        nix::sched::setns(&f, nix::sched::CloneFlags::CLONE_NEWNET)
            .context("entering the pod's network namespace")?;
        for (k, v) in &sysctls {
            let p = Path::new("/proc/sys").join(k.replace('.', "/"));
            std::fs::write(&p, v).with_context(|| format!("sysctl {k}={v}"))?;
        }
        Ok(())
    })
    .join()
    .map_err(|_| anyhow::anyhow!("the sysctl thread panicked"))?
}

pub fn hostname(spec: &Spec) -> Option<String> {
    spec.hostname().clone().filter(|h| !h.is_empty())
}

/// An rkt app name (appc ACName: `[a-z0-9-]`, starting with a letter or digit) for a container
/// id, which containerd allows to hold `A-Z`, `_` and `.` too; a long or unusual id is shortened
/// with a digest so that two ids never share a name.
pub fn app_name(id: &str) -> String {
    let clean: String = id
        .chars()
        .map(|c| match c {
            'a'..='z' | '0'..='9' | '-' => c,
            'A'..='Z' => c.to_ascii_lowercase(),
            _ => '-',
        })
        .collect();
    let clean = clean.trim_matches('-');
    if clean == id && !clean.is_empty() && clean.len() <= 48 {
        return clean.to_string();
    }
    let digest = hex::encode(&sha2::Sha256::digest(id.as_bytes())[..6]);
    let head: String = clean.chars().take(32).collect();
    let head = head.trim_matches('-');
    if head.is_empty() {
        format!("c-{digest}")
    } else {
        format!("{head}-{digest}")
    }
}

/// The image entry of the app in the pod manifest. The root is containerd's snapshot, not an
/// image of rkt's store: the ID is derived from the container ID so that it is stable and never
/// names a store image.
pub fn runtime_image(spec: &Spec, id: &str) -> rkt_schema::RuntimeImage {
    rkt_schema::RuntimeImage {
        name: annotation(spec, IMAGE_NAME)
            .map(str::to_string)
            .unwrap_or_else(|| format!("containerd/{id}")),
        id: format!(
            "sha256-{}",
            hex::encode(sha2::Sha256::digest(format!("containerd:{id}")))
        ),
        labels: Vec::new(),
    }
}

fn bind_options(opts: &[String]) -> Option<(bool, bool)> {
    let bind = opts.iter().any(|o| o == "bind" || o == "rbind");
    bind.then(|| {
        (
            opts.iter().any(|o| o == "ro"),
            opts.iter().any(|o| o == "rbind"),
        )
    })
}

/// rkt's app settings from the spec's process, mounts and resources. The root is the bundle's
/// `rootfs` as containerd prepared it (`RootfsSpec::Dir`: bound, not copied).
pub fn app_spec(spec: &Spec, bundle: &Path, name: &str, image_id: &str) -> Result<AppSpec> {
    let p = spec
        .process()
        .as_ref()
        .context("config.json has no process")?;
    let exec = p.args().clone().unwrap_or_default();
    if exec.is_empty() {
        bail!("config.json: the process has no args");
    }
    let env = p
        .env()
        .clone()
        .unwrap_or_default()
        .into_iter()
        .map(|kv| match kv.split_once('=') {
            Some((k, v)) => (k.to_string(), v.to_string()),
            None => (kv, String::new()),
        })
        .collect();
    let user = p.user();
    let caps = p
        .capabilities()
        .as_ref()
        .and_then(|c| c.bounding().clone())
        .unwrap_or_default()
        .into_iter()
        .map(|c| {
            serde_json::to_value(c)
                .ok()
                .and_then(|v| v.as_str().map(str::to_string))
                .unwrap_or_default()
        })
        .filter(|c| !c.is_empty())
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect();
    // Bind mounts only (CRI's /etc/hosts, resolv.conf, hostname, volumes, `ctr --mount`); /proc,
    // /dev, /sys and friends are rkt's own set-up.
    let mut mounts = Vec::new();
    for m in spec.mounts().clone().unwrap_or_default() {
        let opts = m.options().clone().unwrap_or_default();
        let is_bind = m.typ().as_deref() == Some("bind") || bind_options(&opts).is_some();
        let Some(source) = m.source().clone().filter(|_| is_bind) else {
            continue;
        };
        let (read_only, recursive) = bind_options(&opts).unwrap_or((false, false));
        mounts.push(MountSpec {
            source,
            target: m.destination().to_string_lossy().into_owned(),
            read_only,
            recursive,
        });
    }
    let res = spec.linux().as_ref().and_then(|l| l.resources().clone());
    let (memory_limit, cpu_millis, cpu_shares) = limits(res.as_ref());
    Ok(AppSpec {
        name: name.to_string(),
        image_id: image_id.to_string(),
        rootfs: RootfsSpec::Dir(bundle.join("rootfs")),
        exec,
        env,
        user: user.uid().to_string(),
        group: user.gid().to_string(),
        supplementary_gids: user.additional_gids().clone().unwrap_or_default(),
        working_dir: p.cwd().to_string_lossy().into_owned(),
        readonly_rootfs: spec.root().as_ref().and_then(|r| r.readonly()) == Some(true),
        mounts,
        capabilities: caps,
        seccomp: SeccompSpec::Default,
        memory_limit,
        cpu_millis,
        cpu_shares,
        oom_score_adj: p.oom_score_adj(),
    })
}

/// The limits rkt applies from the spec's resources (also Update's): memory limit in bytes, CPU
/// quota/period as millicores, CPU shares; unset or non-positive values are no limit.
pub fn limits(
    res: Option<&oci_spec::runtime::LinuxResources>,
) -> (Option<u64>, Option<u64>, Option<u64>) {
    let mem = res.and_then(|r| *r.memory());
    let cpu = res.and_then(|r| r.cpu().clone());
    let cpu_millis = cpu.as_ref().and_then(|c| match (c.quota(), c.period()) {
        (Some(q), Some(p)) if q > 0 && p > 0 => Some((q as u64).saturating_mul(1000) / p),
        _ => None,
    });
    (
        mem.and_then(|m| m.limit())
            .filter(|l| *l > 0)
            .map(|l| l as u64),
        cpu_millis,
        cpu.and_then(|c| c.shares()).filter(|s| *s > 0),
    )
}

/// An app setting with no limit, for [`rkt_stage2::cgroup::limit_files`] (which reads only the
/// limits) when Update sets new ones.
pub fn no_limits(name: &str) -> AppSpec {
    AppSpec {
        name: name.to_string(),
        image_id: String::new(),
        rootfs: RootfsSpec::Dir(PathBuf::new()),
        exec: Vec::new(),
        env: Vec::new(),
        user: String::new(),
        group: String::new(),
        supplementary_gids: Vec::new(),
        working_dir: String::new(),
        readonly_rootfs: false,
        mounts: Vec::new(),
        capabilities: Vec::new(),
        seccomp: SeccompSpec::Default,
        memory_limit: None,
        cpu_millis: None,
        cpu_shares: None,
        oom_score_adj: None,
    }
}

/// Mounts what containerd prepared for the root (`CreateTaskRequest.rootfs`: an overlay or a
/// bind of the snapshot) on `<bundle>/rootfs`. Returns whether anything was mounted (nothing
/// when containerd mounted it already, as for `ctr run --rootfs`).
pub fn mount_rootfs(
    bundle: &Path,
    mounts: &[containerd_shim::protos::types::mount::Mount],
) -> Result<bool> {
    let target = bundle.join("rootfs");
    std::fs::create_dir_all(&target).with_context(|| format!("creating {}", target.display()))?;
    for m in mounts {
        let (flags, data) = mount_options(&m.options);
        let typ = Some(m.type_.as_str()).filter(|t| !t.is_empty() && *t != "bind");
        nix::mount::mount(
            Some(m.source.as_str()).filter(|s| !s.is_empty()),
            &target,
            typ,
            flags,
            Some(data.as_str()).filter(|d| !d.is_empty()),
        )
        .with_context(|| format!("mounting the container's root ({} {})", m.type_, m.source))?;
    }
    Ok(!mounts.is_empty())
}

/// mount(8)-style options: the flags, and the rest as the file system's data. (The crate's
/// own helper forks and waits through its reaper, which this shim does not run.)
fn mount_options(opts: &[String]) -> (nix::mount::MsFlags, String) {
    use nix::mount::MsFlags as F;
    let mut flags = F::empty();
    let mut data = Vec::new();
    for o in opts {
        match o.as_str() {
            "ro" => flags |= F::MS_RDONLY,
            "rw" | "defaults" => {}
            "nosuid" => flags |= F::MS_NOSUID,
            "nodev" => flags |= F::MS_NODEV,
            "noexec" => flags |= F::MS_NOEXEC,
            "bind" => flags |= F::MS_BIND,
            "rbind" => flags |= F::MS_BIND | F::MS_REC,
            "relatime" => flags |= F::MS_RELATIME,
            "noatime" => flags |= F::MS_NOATIME,
            _ => data.push(o.as_str()),
        }
    }
    (flags, data.join(","))
}

/// Unmounts `<bundle>/rootfs` (every layer stacked there).
pub fn unmount_rootfs(bundle: &Path) {
    let target = bundle.join("rootfs");
    while nix::mount::umount2(&target, nix::mount::MntFlags::MNT_DETACH).is_ok() {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn app_names() {
        assert_eq!(app_name("web-1"), "web-1");
        let a = app_name("Web_1");
        assert!(a.starts_with("web-1-") && a.len() == 6 + 12, "{a}");
        assert_ne!(app_name("a_b"), app_name("a.b"));
        assert!(app_name("___").starts_with("c-"));
        let long = "x".repeat(100);
        assert!(app_name(&long).len() <= 48);
        for id in ["web-1", "Web_1", "___", "a.b", &long] {
            assert!(rkt_stage2::control::valid_app_name(&app_name(id)), "{id}");
        }
    }

    fn spec(json: &str) -> Spec {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn sysctls_only_network_ones() {
        let spec = |sysctl: &str| -> Spec {
            serde_json::from_str(&format!(
                r#"{{"ociVersion":"1.0.2","root":{{"path":"rootfs"}},"linux":{{"sysctl":{sysctl}}}}}"#
            ))
            .unwrap()
        };
        assert_eq!(
            sysctls(&spec(
                r#"{"net.ipv4.ip_forward":"1","net.core.somaxconn":"512"}"#
            ))
            .unwrap(),
            vec![
                ("net.core.somaxconn".to_string(), "512".to_string()),
                ("net.ipv4.ip_forward".to_string(), "1".to_string())
            ]
        );
        for bad in [
            r#"{"kernel.panic":"1"}"#,
            r#"{"net..ipv4":"1"}"#,
            r#"{"net.ipv4/../../kernel/panic":"1"}"#,
            r#"{"net.ipv4.ip_forward":"1\nx"}"#,
            r#"{"net.ipv4.ip_forward":""}"#,
        ] {
            assert!(sysctls(&spec(bad)).is_err(), "{bad}");
        }
    }

    #[test]
    fn maps_process_and_resources() {
        let s = spec(
            r#"{"ociVersion":"1.0.2","root":{"path":"rootfs","readonly":true},
            "process":{"args":["/bin/sh","-c","x"],"env":["A=1","B"],"cwd":"/tmp",
              "user":{"uid":1000,"gid":100,"additionalGids":[5]},
              "capabilities":{"bounding":["CAP_CHOWN","CAP_KILL"]},"oomScoreAdj":7},
            "mounts":[{"destination":"/proc","type":"proc","source":"proc"},
              {"destination":"/etc/hosts","type":"bind","source":"/tmp/h","options":["rbind","ro"]}],
            "linux":{"resources":{"memory":{"limit":1048576},"cpu":{"quota":50000,"period":100000,"shares":512}},
              "namespaces":[{"type":"pid"},{"type":"network","path":"/var/run/netns/x"}]}}"#,
        );
        let a = app_spec(&s, Path::new("/b"), "c", "sha256-x").unwrap();
        assert_eq!(a.exec, ["/bin/sh", "-c", "x"]);
        assert_eq!(
            a.env,
            [("A".into(), "1".into()), ("B".into(), String::new())]
        );
        assert_eq!((a.user.as_str(), a.group.as_str()), ("1000", "100"));
        assert_eq!(a.supplementary_gids, [5]);
        assert_eq!(a.working_dir, "/tmp");
        assert!(a.readonly_rootfs);
        assert_eq!(a.rootfs, RootfsSpec::Dir("/b/rootfs".into()));
        assert_eq!(a.capabilities, ["CAP_CHOWN", "CAP_KILL"]);
        assert_eq!(a.mounts.len(), 1);
        assert_eq!(a.mounts[0].target, "/etc/hosts");
        assert!(a.mounts[0].read_only && a.mounts[0].recursive);
        assert_eq!(a.memory_limit, Some(1 << 20));
        assert_eq!(a.cpu_millis, Some(500));
        assert_eq!(a.cpu_shares, Some(512));
        assert_eq!(a.oom_score_adj, Some(7));
        assert_eq!(net(&s), Net::Join("/var/run/netns/x".into()));
    }

    #[test]
    fn mount_opts() {
        let (f, d) = mount_options(&["ro".into(), "lowerdir=/a".into(), "upperdir=/b".into()]);
        assert_eq!(f, nix::mount::MsFlags::MS_RDONLY);
        assert_eq!(d, "lowerdir=/a,upperdir=/b");
        let (f, d) = mount_options(&["rbind".into()]);
        assert!(f.contains(nix::mount::MsFlags::MS_BIND | nix::mount::MsFlags::MS_REC));
        assert!(d.is_empty());
    }

    #[test]
    fn net_and_sandbox() {
        let host = spec(r#"{"ociVersion":"1.0.2","linux":{"namespaces":[{"type":"pid"}]}}"#);
        assert_eq!(net(&host), Net::Host);
        let own = spec(r#"{"ociVersion":"1.0.2","linux":{"namespaces":[{"type":"network"}]}}"#);
        assert_eq!(net(&own), Net::Own);
        assert_eq!(sandbox_of(&own), None);
        let c = spec(
            r#"{"ociVersion":"1.0.2","annotations":{"io.kubernetes.cri.container-type":"container",
            "io.kubernetes.cri.sandbox-id":"sb1"}}"#,
        );
        assert_eq!(sandbox_of(&c).as_deref(), Some("sb1"));
        assert_eq!(grouping(&c, "c1"), "sb1");
        assert_eq!(grouping(&own, "c1"), "c1");
        let noargs =
            spec(r#"{"ociVersion":"1.0.2","process":{"cwd":"/","user":{"uid":0,"gid":0}}}"#);
        assert!(app_spec(&noargs, Path::new("/b"), "c", "x").is_err());
    }
}
