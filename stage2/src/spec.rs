//! The pod spec handed from stage0 to a stage1 flavour, and the files a stage1 writes back.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// File name, in the pod directory, of the serialised [`PodSpec`].
pub const SPEC_FILE: &str = "stage1-spec.json";

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum NetMode {
    /// Share the host's network namespace (`--net=host`; refused on kvm until virtio-net).
    Host,
    /// Loopback only (`--net=none`).
    #[default]
    None,
    /// The default CNI network (until the networking work lands: behaves as `none` with a warning).
    Default,
}

/// Protections turned off by `--insecure-options`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct InsecureRun {
    pub capabilities: bool,
    pub paths: bool,
    pub seccomp: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PodSpec {
    pub uuid: String,
    pub hostname: String,
    pub net: NetMode,
    /// Full `/etc/resolv.conf` content to install in every app, or None to leave the image's.
    pub resolv_conf: Option<String>,
    /// Full `/etc/hosts` content to install in every app, or None to leave the image's.
    pub hosts: Option<String>,
    /// One app gets the caller's terminal.
    pub interactive: bool,
    /// `interactive` and the caller's stdin is a terminal: the app's stdio is a pty. Known only
    /// when the pod starts, so stage0 leaves it false; stage1 kvm sets it in the guest's copy.
    #[serde(default)]
    pub tty: bool,
    pub insecure: InsecureRun,
    pub debug: bool,
    pub apps: Vec<AppSpec>,
    /// stage1 kvm: the guest's network cards, in device order (eth0, eth1…), each a copy of
    /// what the CNI plugins configured on that interface in the pod's network namespace. Empty
    /// on ns (the apps use the namespace itself) and without CNI networks.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub interfaces: Vec<NetInterface>,
}

/// One network card of a kvm guest (the guest init configures it before any app starts).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetInterface {
    /// The interface name in the guest, the CNI `CNI_IFNAME` (`eth0`…).
    pub name: String,
    /// The CNI interface's MAC, which the guest card takes (traffic is redirected between the
    /// two unchanged, so peers keep seeing the address the plugin set up).
    pub mac: [u8; 6],
    pub mtu: u32,
    pub addresses: Vec<IfAddress>,
    /// Main-table routes through this interface, in the order to add them.
    pub routes: Vec<Route>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IfAddress {
    pub addr: std::net::IpAddr,
    pub prefix: u8,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Route {
    /// Destination network (`0.0.0.0`/0 or `::`/0: the default route).
    pub dst: std::net::IpAddr,
    pub prefix: u8,
    pub gateway: Option<std::net::IpAddr>,
    /// rtnetlink scope (0 universe, 253 link).
    pub scope: u8,
    pub metric: Option<u32>,
    pub src: Option<std::net::IpAddr>,
}

/// How an app's root filesystem is assembled. Paths are absolute host paths.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RootfsSpec {
    /// overlayfs: the store's read-only rendered tree as lower, per-app upper/work in the pod dir.
    Overlay {
        lower: PathBuf,
        upper: PathBuf,
        work: PathBuf,
    },
    /// `--no-overlay`: a private copy made at prepare time.
    Dir(PathBuf),
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MountSpec {
    /// Host path (a `kind=host` volume's source, or a pod-private dir for `kind=empty`).
    pub source: PathBuf,
    /// Absolute path inside the app.
    pub target: String,
    pub read_only: bool,
    pub recursive: bool,
}

/// `--seccomp` / default filter.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum SeccompSpec {
    /// rkt's default filter (a remove-set of dangerous syscalls, EPERM).
    Default,
    /// Only these syscalls are allowed; others fail with `errno` (None: kill the process).
    Retain {
        syscalls: Vec<String>,
        errno: Option<String>,
    },
    /// These syscalls fail with `errno` (None: EPERM).
    Remove {
        syscalls: Vec<String>,
        errno: Option<String>,
    },
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AppSpec {
    pub name: String,
    pub image_id: String,
    pub rootfs: RootfsSpec,
    pub exec: Vec<String>,
    /// Final environment in order, after rkt's precedence rules were applied by stage0.
    pub env: Vec<(String, String)>,
    /// As given: a number, a name from the image's /etc/passwd, or a path whose owner is used.
    pub user: String,
    pub group: String,
    pub supplementary_gids: Vec<u32>,
    pub working_dir: String,
    pub readonly_rootfs: bool,
    pub mounts: Vec<MountSpec>,
    /// Final bounding/effective capability set, names like `CAP_NET_BIND_SERVICE`.
    pub capabilities: Vec<String>,
    pub seccomp: SeccompSpec,
    /// `--memory`, bytes.
    pub memory_limit: Option<u64>,
    /// `--cpu`, millicores.
    pub cpu_millis: Option<u64>,
    /// `--cpu-shares`.
    pub cpu_shares: Option<u64>,
    /// `--oom-score-adj` (`os/linux/oom-score-adj`), -1000..1000; None leaves the inherited one.
    #[serde(default)]
    pub oom_score_adj: Option<i32>,
}

impl PodSpec {
    pub fn load(pod_dir: &Path) -> anyhow::Result<PodSpec> {
        let p = pod_dir.join(SPEC_FILE);
        let text = std::fs::read(&p)
            .map_err(|e| anyhow::anyhow!("reading pod spec {}: {e}", p.display()))?;
        Ok(serde_json::from_slice(&text)?)
    }
}

/// rkt's own failure code (v1's): an app that could not be set up, and every rkt error.
pub const EXIT_RKT_ERROR: i32 = 254;

/// Where an app's root is assembled (rkt v1's layout), on every flavour: ns mounts it there, kvm
/// shares it with the guest under `<pod>/stage1/rootfs`, `--no-overlay` copies the tree there.
pub fn app_root_path(pod_dir: &Path, app: &str) -> PathBuf {
    pod_dir
        .join("stage1/rootfs/opt/stage2")
        .join(app)
        .join("rootfs")
}

/// Where a stage1 writes an app's exit code (decimal text), read by `rkt status` and `rkt run`.
pub fn app_status_path(pod_dir: &Path, app: &str) -> PathBuf {
    pod_dir.join("status").join(app)
}

/// Where a stage1 writes the host pid that `rkt stop` signals (SIGTERM: graceful, the stage1 stops
/// the apps, SIGKILL after a timeout; `--force`: SIGKILL) and that `rkt status` reports.
pub fn pod_pid_path(pod_dir: &Path) -> PathBuf {
    pod_dir.join("pid")
}
