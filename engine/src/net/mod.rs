//! Pod networking with CNI plugins (rkt v1's `Documentation/networking`): stage0 resolves the
//! `--net` networks into `<pod>/net-plan.json` before the pod starts; the stage1 creates the pod's
//! network namespace (bound at `/run/netns/rkt-<uuid>`, path in `<pod>/netns`), runs every
//! network's plugins (ADD) in it before any app starts and records the results in
//! `<pod>/net-info.json`; when the pod ends, and again at `rkt gc` (a killed `rkt run` never got
//! there), [`teardown`] runs DEL for every planned network and releases the namespace.

pub mod cni;
pub mod conf;
pub mod kvm;
pub mod ports;

use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use cni::{Cmd, NetConfList, RuntimeConf};

pub const PLAN_FILE: &str = "net-plan.json";
pub const INFO_FILE: &str = "net-info.json";
pub const NETNS_FILE: &str = "netns";
const NETNS_DIR: &str = "/run/netns";

/// Where plugins are looked for: rkt's, `<local-config>/net.d`, Debian's, the CNI default.
/// `RKT_CNI_PATH` (colon-separated) replaces it.
pub fn plugin_path(local_config: &Path) -> Vec<PathBuf> {
    if let Some(p) = std::env::var_os("RKT_CNI_PATH").filter(|p| !p.is_empty()) {
        return std::env::split_paths(&p).collect();
    }
    vec![
        PathBuf::from("/usr/lib/rkt/plugins/net"),
        local_config.join("net.d"),
        PathBuf::from("/usr/lib/cni"),
        PathBuf::from("/opt/cni/bin"),
    ]
}

/// Named networks (and `all`) and a namespace to join are for stage1 ns and kvm (`cni`); refused
/// elsewhere (fly, which shares the host's network), before anything of the pod exists.
pub fn check_flavor(cni: bool, arg: &conf::NetArg) -> Result<()> {
    if let conf::NetArg::Join(p) = arg {
        if !cni {
            bail!(
                "--net={}: joining a network namespace needs --stage1=ns or kvm (not implemented on this stage1)",
                p.display()
            );
        }
        // Checked here too, before anything of the pod exists.
        open_netns(p)?;
    }
    if let conf::NetArg::Cni { nets, all } = arg {
        let named = *all
            || nets
                .iter()
                .any(|n| n.name != conf::DEFAULT || !n.args.is_empty());
        if named && !cni {
            let names: Vec<&str> = nets.iter().map(|n| n.name.as_str()).collect();
            let what = if *all {
                "all".to_string()
            } else {
                names.join(",")
            };
            bail!("--net={what}: named networks and CNI arguments need --stage1=ns or kvm (not implemented on this stage1)");
        }
    }
    Ok(())
}

/// One network of a pod, as planned by stage0.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PlannedNet {
    pub conf: NetConfList,
    /// The `net.d` file, None for a built-in network.
    pub conf_path: Option<PathBuf>,
    pub ifname: String,
    pub args: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Plan {
    pub networks: Vec<PlannedNet>,
    pub plugin_path: Vec<PathBuf>,
    /// `runtimeConfig` capabilities (`portMappings`).
    #[serde(default)]
    pub capabilities: Map<String, Value>,
    /// The pod's resolv.conf comes from the CNI results' DNS settings (no `--dns` flag given).
    #[serde(default)]
    pub use_dns: bool,
    /// An existing network namespace the pod joins (`--net=<path>`): no networks of rkt's, and
    /// the namespace is not rkt's to release.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub join: Option<PathBuf>,
}

/// One entry of `<pod>/net-info.json` (rkt v1's fields, plus the CNI result).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NetInfo {
    #[serde(rename = "netName")]
    pub net_name: String,
    #[serde(rename = "netConf")]
    pub net_conf: String,
    #[serde(rename = "pluginPath")]
    pub plugin_path: String,
    #[serde(rename = "ifName")]
    pub if_name: String,
    pub ip: String,
    pub args: String,
    pub mask: String,
    #[serde(rename = "hostIP")]
    pub host_ip: String,
    pub result: Value,
}

/// Resolves `--net` for a pod that gets CNI networks (None for host/none). `ports` are CNI
/// `portMappings`, forwarded on the default network (`portmap` chained after its plugins).
pub fn plan(
    arg: &conf::NetArg,
    local_config: &Path,
    ports: Vec<Value>,
    use_dns: bool,
) -> Result<Option<Plan>> {
    if let conf::NetArg::Join(p) = arg {
        if !ports.is_empty() {
            bail!("--port cannot be used with --net={}", p.display());
        }
        open_netns(p)?;
        return Ok(Some(Plan {
            networks: Vec::new(),
            plugin_path: Vec::new(),
            capabilities: Map::new(),
            use_dns: false,
            join: Some(p.clone()),
        }));
    }
    let resolved = conf::resolve(arg, &local_config.join("net.d"))?;
    if resolved.is_empty() {
        return Ok(None);
    }
    let path = plugin_path(local_config);
    let mut networks: Vec<PlannedNet> = resolved
        .into_iter()
        .enumerate()
        .map(|(i, (l, args))| PlannedNet {
            conf: l.conf,
            conf_path: l.path,
            ifname: format!("eth{i}"),
            args,
        })
        .collect();
    // Every plugin must be there before anything is set up.
    for n in &networks {
        for p in &n.conf.plugins {
            let t = p.get("type").and_then(Value::as_str).unwrap_or_default();
            cni::find_plugin(t, &path).with_context(|| format!("network {:?}", n.conf.name))?;
        }
    }
    let mut capabilities = Map::new();
    if !ports.is_empty() {
        let n = networks
            .iter_mut()
            .find(|n| n.conf.name == conf::DEFAULT)
            .context("--port needs the default network")?;
        n.conf.plugins.push(conf::portmap_plugin());
        cni::find_plugin("portmap", &path)?;
        capabilities.insert("portMappings".into(), Value::Array(ports));
    }
    Ok(Some(Plan {
        networks,
        plugin_path: path,
        capabilities,
        use_dns,
        join: None,
    }))
}

/// Opens a network namespace to join, refusing anything else (a plain file, another kind of
/// namespace): `NS_GET_NSTYPE` answers only on nsfs files.
fn open_netns(p: &Path) -> Result<OwnedFd> {
    use std::os::fd::AsRawFd;
    let f = std::fs::File::open(p)
        .with_context(|| format!("opening the network namespace {}", p.display()))?;
    // NS_GET_NSTYPE = _IO(0xb7, 0x3)
    const NS_GET_NSTYPE: libc::c_ulong = 0xb703;
    // SAFETY: an ioctl without arguments on a descriptor we own.
    let t = unsafe { libc::ioctl(f.as_raw_fd(), NS_GET_NSTYPE as _) };
    if t != libc::CLONE_NEWNET {
        bail!("{} is not a network namespace", p.display());
    }
    Ok(f.into())
}

/// Records the plan in the pod, for its stage1 and for gc.
pub fn write_plan(pod_dir: &Path, plan: &Plan) -> Result<()> {
    crate::pod::write_runtime(&pod_dir.join(PLAN_FILE), &serde_json::to_vec_pretty(plan)?)
}

impl Plan {
    /// The CNI runtime configuration of network `n` for the pod `uuid` in namespace `ns`.
    fn runtime<'a>(&'a self, n: &'a PlannedNet, uuid: &'a str, ns: &'a Path) -> RuntimeConf<'a> {
        RuntimeConf {
            container_id: uuid,
            netns: ns,
            ifname: &n.ifname,
            args: &n.args,
            path: &self.plugin_path,
            capabilities: &self.capabilities,
        }
    }
}

/// The pod UUID in a network namespace path made by [`netns_path`] (`.../rkt-<uuid>`).
fn pod_uuid_of(ns: &Path) -> String {
    ns.file_name()
        .and_then(|n| n.to_str())
        .and_then(|n| n.strip_prefix("rkt-"))
        .unwrap_or_default()
        .to_string()
}

/// The ADD result recorded for network `n`, which DEL and CHECK are given as `prevResult`.
fn add_result<'a>(infos: &'a [NetInfo], n: &PlannedNet) -> Option<&'a Value> {
    infos
        .iter()
        .find(|i| i.net_name == n.conf.name)
        .map(|i| &i.result)
}

fn read_plan(pod_dir: &Path) -> Result<Option<Plan>> {
    match std::fs::read(pod_dir.join(PLAN_FILE)) {
        Ok(b) => Ok(Some(
            serde_json::from_slice(&b).context("reading the pod's network plan")?,
        )),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).context("reading the pod's network plan"),
    }
}

/// The networks recorded for a pod (empty without any).
pub fn pod_networks(pod_dir: &Path) -> Vec<NetInfo> {
    std::fs::read(pod_dir.join(INFO_FILE))
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_default()
}

/// rkt v1's rendering in `list` and `status`: `default:ip4=172.16.28.5`, comma-separated.
pub fn render(nets: &[NetInfo]) -> String {
    nets.iter()
        .map(|n| format!("{}:ip4={}", n.net_name, n.ip))
        .collect::<Vec<_>>()
        .join(", ")
}

fn netns_path(uuid: &str) -> PathBuf {
    Path::new(NETNS_DIR).join(format!("rkt-{uuid}"))
}

/// Creates a network namespace bound at `path` (from a thread of its own: unshare changes only
/// the calling thread's namespace).
fn create_netns(path: &Path) -> Result<()> {
    std::fs::create_dir_all(NETNS_DIR).with_context(|| format!("creating {NETNS_DIR}"))?;
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(path)
        .with_context(|| format!("creating {}", path.display()))?;
    let p = path.to_path_buf();
    let r = std::thread::spawn(move || -> Result<()> {
        nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET).context("unshare")?;
        nix::mount::mount(
            Some("/proc/thread-self/ns/net"),
            &p,
            None::<&str>,
            nix::mount::MsFlags::MS_BIND,
            None::<&str>,
        )
        .context("binding the namespace")
    })
    .join()
    .map_err(|_| anyhow::anyhow!("the namespace thread panicked"))?;
    if r.is_err() {
        let _ = std::fs::remove_file(path);
    }
    r.with_context(|| format!("creating the network namespace {}", path.display()))
}

fn write_info(pod_dir: &Path, infos: &[NetInfo]) -> Result<()> {
    crate::pod::write_runtime(&pod_dir.join(INFO_FILE), &serde_json::to_vec_pretty(infos)?)
}

fn mask_of(prefix: u8) -> String {
    let m: u32 = if prefix == 0 {
        0
    } else {
        u32::MAX << (32 - prefix.min(32))
    };
    std::net::Ipv4Addr::from(m).to_string()
}

fn info_of(n: &PlannedNet, plan: &Plan, result: Value) -> NetInfo {
    let ips = cni::result_ips(&result);
    let v4 = ips
        .iter()
        .find(|(a, _)| a.contains('.'))
        .or(ips.first())
        .cloned();
    let (ip, mask, gw) = match v4 {
        Some((a, g)) => {
            let (ip, pfx) = a.split_once('/').unwrap_or((a.as_str(), "32"));
            let mask = pfx.parse().map(mask_of).unwrap_or_default();
            (ip.to_string(), mask, g.unwrap_or_default())
        }
        None => Default::default(),
    };
    let t = n.conf.plugins[0]
        .get("type")
        .and_then(Value::as_str)
        .unwrap_or_default();
    NetInfo {
        net_name: n.conf.name.clone(),
        net_conf: n
            .conf_path
            .as_ref()
            .map(|p| p.display().to_string())
            .unwrap_or_default(),
        plugin_path: cni::find_plugin(t, &plan.plugin_path)
            .map(|p| p.display().to_string())
            .unwrap_or_default(),
        if_name: n.ifname.clone(),
        ip,
        args: n.args.clone(),
        mask,
        host_ip: gw,
        result,
    }
}

/// Sets up the pod's networks if it has a plan: returns the network namespace to join, or None
/// (the pod then gets a fresh namespace with loopback only). On failure everything done so far
/// is undone.
/// With `verify` (the pod's `--debug`), every network is checked with CHECK once all are added.
pub fn setup(pod_dir: &Path, uuid: &str, verify: bool) -> Result<Option<OwnedFd>> {
    let Some(plan) = read_plan(pod_dir)? else {
        return Ok(None);
    };
    if let Some(p) = &plan.join {
        // On kvm the VM's cards are wired to the namespace's interfaces next (kvm::wire_vm).
        let fd = open_netns(p)?;
        // Best effort: the addresses only inform `rkt list`/`status` and the api-service.
        match joined_info(&fd, p) {
            Ok(infos) => write_info(pod_dir, &infos)?,
            Err(e) => crate::print_error(&format!(
                "reading the addresses of {}: {}",
                p.display(),
                crate::one_line(&e)
            )),
        }
        return Ok(Some(fd));
    }
    let ns = netns_path(uuid);
    // Recorded before the namespace exists, so that gc finds it whenever we are killed.
    crate::pod::write_runtime(
        &pod_dir.join(NETNS_FILE),
        ns.display().to_string().as_bytes(),
    )?;
    let r = (|| -> Result<OwnedFd> {
        create_netns(&ns)?;
        let mut infos = Vec::new();
        for n in &plan.networks {
            let rt = plan.runtime(n, uuid, &ns);
            let result = cni::run(Cmd::Add, &n.conf, &rt, None)?;
            infos.push(info_of(n, &plan, result));
            write_info(pod_dir, &infos)?;
        }
        if verify {
            check(pod_dir)?;
        }
        let fd = std::fs::File::open(&ns).with_context(|| format!("opening {}", ns.display()))?;
        Ok(fd.into())
    })();
    if r.is_err() {
        if let Err(e) = teardown(pod_dir) {
            crate::print_error(&format!("network teardown: {}", crate::one_line(&e)));
        }
    }
    r.map(Some)
}

/// The interfaces and addresses of a joined namespace (someone else's CNI set them up), as
/// `net-info.json` entries named after the namespace (its file name), without a CNI result.
fn joined_info(ns: &OwnedFd, path: &Path) -> Result<Vec<NetInfo>> {
    use std::os::fd::AsFd;
    let ns = ns.try_clone().context("duplicating the namespace fd")?;
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    std::thread::spawn(move || -> Result<Vec<NetInfo>> {
        // This thread only: /proc/thread-self/net and the netlink socket then see the namespace.
        nix::sched::setns(ns.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET)
            .context("entering the namespace")?;
        let dev = std::fs::read_to_string("/proc/thread-self/net/dev")
            .context("listing its interfaces")?;
        let mut out = Vec::new();
        for l in dev.lines().skip(2) {
            let ifname = l.split(':').next().unwrap_or_default().trim();
            if ifname.is_empty() || ifname == "lo" {
                continue;
            }
            let iface = rkt_guest_init::net::read_interface(ifname)
                .with_context(|| format!("reading {ifname}"))?;
            let Some(a) = iface.addresses.iter().find(|a| a.addr.is_ipv4()) else {
                continue;
            };
            let gw = iface
                .routes
                .iter()
                .find(|r| r.prefix == 0)
                .and_then(|r| r.gateway)
                .map(|g| g.to_string())
                .unwrap_or_default();
            out.push(NetInfo {
                net_name: name.clone(),
                net_conf: String::new(),
                plugin_path: String::new(),
                if_name: ifname.to_string(),
                ip: a.addr.to_string(),
                args: String::new(),
                mask: mask_of(a.prefix),
                host_ip: gw,
                result: Value::Null,
            });
        }
        Ok(out)
    })
    .join()
    .map_err(|_| anyhow::anyhow!("the namespace thread panicked"))?
}

/// Runs DEL for every planned network (last first, each with its ADD result when there is one)
/// and releases the namespace. Idempotent: the plan is removed once everything is released.
pub fn teardown(pod_dir: &Path) -> Result<()> {
    let Some(plan) = read_plan(pod_dir)? else {
        return Ok(());
    };
    if let Some(p) = &plan.join {
        // A joined namespace belongs to whoever made it (containerd's CRI plugin): only what a
        // kvm pod added to its interfaces goes.
        kvm::release_joined(pod_dir, p)?;
        return std::fs::remove_file(pod_dir.join(PLAN_FILE)).context("removing the network plan");
    }
    let ns = match std::fs::read_to_string(pod_dir.join(NETNS_FILE)) {
        Ok(s) => PathBuf::from(s.trim()),
        Err(_) => {
            let uuid = pod_dir
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            netns_path(&uuid)
        }
    };
    if !ns.starts_with(NETNS_DIR) || ns.components().count() != 4 {
        bail!("bad network namespace path {}", ns.display());
    }
    let infos = pod_networks(pod_dir);
    let mut first: Option<anyhow::Error> = None;
    let uuid = pod_uuid_of(&ns);
    for n in plan.networks.iter().rev() {
        let prev = add_result(&infos, n);
        let rt = plan.runtime(n, &uuid, &ns);
        if let Err(e) = cni::run(Cmd::Del, &n.conf, &rt, prev) {
            first.get_or_insert(e);
        }
    }
    if let Some(e) = first {
        return Err(e);
    }
    match nix::mount::umount2(&ns, nix::mount::MntFlags::MNT_DETACH) {
        Ok(()) | Err(nix::errno::Errno::EINVAL) | Err(nix::errno::Errno::ENOENT) => {}
        Err(e) => return Err(e).with_context(|| format!("unmounting {}", ns.display())),
    }
    match std::fs::remove_file(&ns) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("removing {}", ns.display())),
    }
    let _ = std::fs::remove_file(pod_dir.join(NETNS_FILE));
    std::fs::remove_file(pod_dir.join(PLAN_FILE)).context("removing the network plan")?;
    Ok(())
}

/// The pod's `/etc/resolv.conf` from the first CNI result that carries DNS settings, when the
/// plan says so (rkt v1). Plugin output: only well-formed values are kept.
pub fn resolv_conf(pod_dir: &Path) -> Option<String> {
    if !read_plan(pod_dir).ok()??.use_dns {
        return None;
    }
    let token = |v: &Value| -> Option<String> {
        let s = v.as_str()?;
        (!s.is_empty() && s.len() <= 253 && s.chars().all(|c| c.is_ascii_graphic()))
            .then(|| s.to_string())
    };
    let list = |d: &Value, k: &str| -> Vec<String> {
        d.get(k)
            .and_then(Value::as_array)
            .map(|a| a.iter().filter_map(token).collect())
            .unwrap_or_default()
    };
    for n in pod_networks(pod_dir) {
        let Some(d) = n.result.get("dns") else {
            continue;
        };
        let servers: Vec<String> = list(d, "nameservers")
            .into_iter()
            .filter(|s| s.parse::<std::net::IpAddr>().is_ok())
            .collect();
        if servers.is_empty() {
            continue;
        }
        let mut out = format!(
            "# Generated by rkt from the CNI network {:?}\n\n",
            n.net_name
        );
        let search = list(d, "search");
        if !search.is_empty() {
            out += &format!("search {}\n", search.join(" "));
        }
        for s in servers {
            out += &format!("nameserver {s}\n");
        }
        let opts = list(d, "options");
        if !opts.is_empty() {
            out += &format!("options {}\n", opts.join(" "));
        }
        if let Some(dom) = d.get("domain").and_then(token) {
            out += &format!("domain {dom}\n");
        }
        return Some(out);
    }
    None
}

/// CHECK for every network of a running pod (spec 0.4.0+).
pub fn check(pod_dir: &Path) -> Result<()> {
    let Some(plan) = read_plan(pod_dir)? else {
        return Ok(());
    };
    if plan.join.is_some() {
        return Ok(());
    }
    let ns = std::fs::read_to_string(pod_dir.join(NETNS_FILE)).context("the pod has no netns")?;
    let ns = PathBuf::from(ns.trim());
    let uuid = pod_uuid_of(&ns);
    let infos = pod_networks(pod_dir);
    for n in &plan.networks {
        let prev = add_result(&infos, n);
        let rt = plan.runtime(n, &uuid, &ns);
        cni::run(Cmd::Check, &n.conf, &rt, prev)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolv_conf_from_results_keeps_only_well_formed_values() {
        let d = tempfile::tempdir().unwrap();
        let plan = Plan {
            networks: vec![],
            plugin_path: vec![],
            capabilities: Map::new(),
            use_dns: true,
            join: None,
        };
        std::fs::write(d.path().join(PLAN_FILE), serde_json::to_vec(&plan).unwrap()).unwrap();
        let info = serde_json::json!([{
            "netName": "n", "netConf": "", "pluginPath": "", "ifName": "eth0", "ip": "10.0.0.2",
            "args": "", "mask": "", "hostIP": "",
            "result": {"dns": {
                "nameservers": ["10.0.0.1", "evil\nnameserver 6.6.6.6", "not-an-ip"],
                "search": ["a.test", "b c", "x\ny"],
                "domain": "d.test\noptions debug"
            }}
        }]);
        std::fs::write(d.path().join(INFO_FILE), info.to_string()).unwrap();
        let r = resolv_conf(d.path()).unwrap();
        assert!(r.ends_with("search a.test\nnameserver 10.0.0.1\n"), "{r}");
        let plan = Plan {
            use_dns: false,
            ..plan
        };
        std::fs::write(d.path().join(PLAN_FILE), serde_json::to_vec(&plan).unwrap()).unwrap();
        assert_eq!(resolv_conf(d.path()), None);
    }

    #[test]
    fn masks() {
        assert_eq!(mask_of(24), "255.255.255.0");
        assert_eq!(mask_of(16), "255.255.0.0");
        assert_eq!(mask_of(32), "255.255.255.255");
        assert_eq!(mask_of(0), "0.0.0.0");
    }
}
