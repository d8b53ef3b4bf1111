//! Which networks a pod joins: the `--net` value, rkt's built-in `default` and
//! `default-restricted` networks, and CNI configuration files in `<local-config>/net.d`.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde_json::{json, Map, Value};

use super::cni::{check_type, NetConfList};

pub const DEFAULT: &str = "default";
pub const DEFAULT_RESTRICTED: &str = "default-restricted";

/// Largest `net.d` file read.
pub const MAX_CONF: u64 = 1 << 20;
/// At most this many files in `net.d` are looked at.
const MAX_FILES: usize = 256;

/// One network asked for with `--net`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetRequest {
    pub name: String,
    /// `CNI_ARGS` for this network (`K=V;K=V`), validated.
    pub args: String,
}

/// `--net`: the host's network, loopback only, CNI networks, or an existing network namespace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NetArg {
    Host,
    None,
    /// `--net=/path/to/netns` (an rkt extension for the containerd shim): the pod joins a
    /// network namespace someone else made and configured (CRI's CNI); rkt runs no plugin for it
    /// and leaves it in place when the pod ends.
    Join(PathBuf),
    /// `all` = every configured network.
    Cni {
        nets: Vec<NetRequest>,
        all: bool,
    },
}

fn valid_name(n: &str) -> bool {
    !n.is_empty()
        && n.len() <= 64
        && n.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        && !n.starts_with('.')
}

/// CNI args are `K=V` pairs joined by `;`, each key and value free of `;`, `=` and control or
/// blank characters (the plugins split on exactly those).
fn check_args(net: &str, a: &str) -> Result<()> {
    for kv in a.split(';') {
        let ok = kv.split_once('=').is_some_and(|(k, v)| {
            let clean = |s: &str| {
                !s.is_empty()
                    && s.chars()
                        .all(|c| !c.is_control() && !c.is_whitespace() && c != '=' && c != ';')
            };
            clean(k) && clean(v)
        });
        if !ok {
            bail!("invalid CNI arguments {a:?} for network {net:?} (expected KEY=VALUE[;KEY=VALUE...])");
        }
    }
    Ok(())
}

/// Parses a `--net` value (None: the flag was absent, i.e. `default`).
pub fn parse_net(v: Option<&str>) -> Result<NetArg> {
    let v = v.unwrap_or(DEFAULT);
    match v {
        "host" => return Ok(NetArg::Host),
        "none" => return Ok(NetArg::None),
        "" => bail!("--net needs a network name"),
        _ => {}
    }
    // Network names never hold '/': an absolute path names a namespace to join.
    if v.starts_with('/') {
        let p = Path::new(v);
        if v.contains(',') || p.components().any(|c| c == std::path::Component::ParentDir) {
            bail!(
                "--net={v}: a network namespace path must be a single absolute path without '..'"
            );
        }
        return Ok(NetArg::Join(p.to_path_buf()));
    }
    let mut nets: Vec<NetRequest> = Vec::new();
    let mut all = false;
    for item in v.split(',') {
        let (name, args) = match item.split_once(':') {
            Some((n, a)) => (n, a),
            None => (item, ""),
        };
        if matches!(name, "host" | "none") {
            bail!("--net={name} cannot be combined with other networks");
        }
        if name == "all" {
            if !args.is_empty() {
                bail!("--net=all takes no CNI arguments");
            }
            all = true;
            continue;
        }
        if !valid_name(name) {
            bail!("invalid network name {name:?}");
        }
        if !args.is_empty() {
            check_args(name, args)?;
        }
        if nets.iter().any(|n| n.name == name) {
            bail!("network {name:?} given twice");
        }
        nets.push(NetRequest {
            name: name.to_string(),
            args: args.to_string(),
        });
    }
    Ok(NetArg::Cni { nets, all })
}

/// A configured network and where it came from.
#[derive(Debug, Clone)]
pub struct Loaded {
    pub conf: NetConfList,
    /// The file, or None for a built-in network.
    pub path: Option<PathBuf>,
}

fn builtin(name: &str) -> NetConfList {
    let (subnet, routes, masq) = if name == DEFAULT {
        ("172.16.28.0/24", json!([{"dst": "0.0.0.0/0"}]), true)
    } else {
        ("172.31.0.0/16", json!([]), false)
    };
    let ptp = json!({
        "type": "ptp",
        "ipMasq": masq,
        "ipam": {"type": "host-local", "subnet": subnet, "routes": routes},
    });
    NetConfList {
        name: name.to_string(),
        cni_version: "1.0.0".into(),
        plugins: vec![ptp.as_object().cloned().unwrap_or_default()],
    }
}

/// The portmap plugin chained after a network's plugins for `--port`.
pub fn portmap_plugin() -> Map<String, Value> {
    json!({"type": "portmap", "snat": true, "capabilities": {"portMappings": true}})
        .as_object()
        .cloned()
        .unwrap_or_default()
}

fn check_plugin(p: &Value, file: &Path) -> Result<Map<String, Value>> {
    let o = p
        .as_object()
        .with_context(|| format!("{}: a plugin is not a JSON object", file.display()))?;
    let t = o
        .get("type")
        .and_then(Value::as_str)
        .with_context(|| format!("{}: a plugin has no \"type\"", file.display()))?;
    check_type(t).with_context(|| format!("{}", file.display()))?;
    if let Some(ipam) = o.get("ipam").and_then(|i| i.get("type")) {
        let t = ipam
            .as_str()
            .with_context(|| format!("{}: bad ipam type", file.display()))?;
        check_type(t).with_context(|| format!("{}: ipam", file.display()))?;
    }
    Ok(o.clone())
}

/// Parses one `net.d` file (`.conf`: one plugin; `.conflist`: `plugins`).
pub fn parse_file(file: &Path, text: &str) -> Result<NetConfList> {
    let v: Value = serde_json::from_str(text)
        .with_context(|| format!("{}: not valid JSON", file.display()))?;
    let o = v
        .as_object()
        .with_context(|| format!("{}: not a JSON object", file.display()))?;
    let name = o
        .get("name")
        .and_then(Value::as_str)
        .with_context(|| format!("{}: no \"name\"", file.display()))?;
    if !valid_name(name) || matches!(name, "host" | "none" | "all") {
        bail!("{}: invalid network name {name:?}", file.display());
    }
    let ver = o
        .get("cniVersion")
        .and_then(Value::as_str)
        .unwrap_or("0.3.1") // libcni's default for files without one
        .to_string();
    if !super::cni::VERSIONS.contains(&ver.as_str()) {
        bail!("{}: unsupported cniVersion {ver:?}", file.display());
    }
    let list = file.extension().is_some_and(|e| e == "conflist");
    let plugins = if list {
        let ps = o
            .get("plugins")
            .and_then(Value::as_array)
            .filter(|p| !p.is_empty())
            .with_context(|| format!("{}: no \"plugins\" list", file.display()))?;
        ps.iter()
            .map(|p| check_plugin(p, file))
            .collect::<Result<Vec<_>>>()?
    } else {
        let mut p = check_plugin(&v, file)?;
        p.remove("name");
        p.remove("cniVersion");
        vec![p]
    };
    Ok(NetConfList {
        name: name.to_string(),
        cni_version: ver,
        plugins,
    })
}

/// Every network configured in `dir` (lexical file order; the first file naming a network wins,
/// as libcni), then the built-in ones not overridden.
pub fn load_all(dir: &Path) -> Result<Vec<Loaded>> {
    let mut files: Vec<PathBuf> = match std::fs::read_dir(dir) {
        Ok(rd) => rd
            .filter_map(|e| e.ok())
            .map(|e| e.path())
            .filter(|p| {
                p.extension()
                    .is_some_and(|e| e == "conf" || e == "conflist")
            })
            .collect(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(e) => return Err(e).with_context(|| format!("reading {}", dir.display())),
    };
    files.sort();
    if files.len() > MAX_FILES {
        bail!("{}: more than {MAX_FILES} network files", dir.display());
    }
    let mut out: Vec<Loaded> = Vec::new();
    for f in files {
        let text = crate::read_limited_string(&f, MAX_CONF, "network configuration")?;
        let conf = parse_file(&f, &text)?;
        if out.iter().all(|l| l.conf.name != conf.name) {
            out.push(Loaded {
                conf,
                path: Some(f),
            });
        }
    }
    for b in [DEFAULT, DEFAULT_RESTRICTED] {
        if out.iter().all(|l| l.conf.name != b) {
            out.push(Loaded {
                conf: builtin(b),
                path: None,
            });
        }
    }
    Ok(out)
}

/// The networks a pod joins, in order, each with its CNI args. `default-restricted` is added
/// when named networks are given without `default` (rkt v1).
pub fn resolve(arg: &NetArg, netd: &Path) -> Result<Vec<(Loaded, String)>> {
    let NetArg::Cni { nets, all } = arg else {
        return Ok(Vec::new());
    };
    let avail = load_all(netd)?;
    let find = |n: &str| avail.iter().find(|l| l.conf.name == n).cloned();
    let mut out: Vec<(Loaded, String)> = Vec::new();
    if *all {
        // Every network from net.d, then `default`, which `all` includes (rkt v1).
        for l in &avail {
            if l.path.is_some() || l.conf.name == DEFAULT {
                let args = nets
                    .iter()
                    .find(|n| n.name == l.conf.name)
                    .map(|n| n.args.clone())
                    .unwrap_or_default();
                out.push((l.clone(), args));
            }
        }
    }
    for r in nets {
        if out.iter().any(|(l, _)| l.conf.name == r.name) {
            continue;
        }
        let l = find(&r.name).with_context(|| {
            format!(
                "network {:?} not found (no such name in {})",
                r.name,
                netd.display()
            )
        })?;
        out.push((l, r.args.clone()));
    }
    let named = out.iter().any(|(l, _)| l.path.is_some());
    let has = |n: &str| out.iter().any(|(l, _)| l.conf.name == n);
    if named && !has(DEFAULT) && !has(DEFAULT_RESTRICTED) {
        if let Some(l) = find(DEFAULT_RESTRICTED) {
            out.push((l, String::new()));
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn net_flag_values() {
        assert_eq!(
            parse_net(Some("/var/run/netns/cni-1")).unwrap(),
            NetArg::Join("/var/run/netns/cni-1".into())
        );
        assert!(parse_net(Some("/run/netns/../../etc/passwd")).is_err());
        assert!(parse_net(Some("/run/netns/a,default")).is_err());
        assert!(parse_net(Some("default,/run/netns/a")).is_err());
        assert_eq!(
            parse_net(None).unwrap(),
            parse_net(Some("default")).unwrap()
        );
        assert_eq!(parse_net(Some("host")).unwrap(), NetArg::Host);
        assert_eq!(parse_net(Some("none")).unwrap(), NetArg::None);
        let NetArg::Cni { nets, all } = parse_net(Some("a,mynet:IP=10.1.2.3;other=x")).unwrap()
        else {
            panic!()
        };
        assert!(!all);
        assert_eq!(nets[1].name, "mynet");
        assert_eq!(nets[1].args, "IP=10.1.2.3;other=x");
        assert!(matches!(
            parse_net(Some("all")).unwrap(),
            NetArg::Cni { all: true, .. }
        ));
        for bad in [
            "host,default",
            "none,a",
            "../x",
            "a/b",
            "n:IP=1=2",
            "n:IP",
            "n:=x",
            "n:IP=1;;x=2",
            "n:IP=1 2",
            "n:IP=1\n",
            "a,a",
            "",
        ] {
            assert!(parse_net(Some(bad)).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn net_d_files() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(
            d.path().join("10-a.conf"),
            r#"{"cniVersion":"0.4.0","name":"a","type":"bridge","bridge":"x","ipam":{"type":"host-local"}}"#,
        )
        .unwrap();
        std::fs::write(
            d.path().join("20-b.conflist"),
            r#"{"cniVersion":"1.0.0","name":"b","plugins":[{"type":"ptp"},{"type":"portmap"}]}"#,
        )
        .unwrap();
        std::fs::write(
            d.path().join("30-dup.conf"),
            r#"{"name":"a","type":"macvlan"}"#,
        )
        .unwrap();
        std::fs::write(d.path().join("README"), "not a conf").unwrap();
        let all = load_all(d.path()).unwrap();
        let names: Vec<&str> = all.iter().map(|l| l.conf.name.as_str()).collect();
        assert_eq!(names, ["a", "b", DEFAULT, DEFAULT_RESTRICTED]);
        assert_eq!(all[0].conf.plugins[0]["type"], "bridge");
        assert!(all[0].conf.plugins[0].get("name").is_none());
        assert_eq!(all[1].conf.plugins.len(), 2);

        let r = resolve(&parse_net(Some("b")).unwrap(), d.path()).unwrap();
        let names: Vec<&str> = r.iter().map(|(l, _)| l.conf.name.as_str()).collect();
        assert_eq!(names, ["b", DEFAULT_RESTRICTED]);
        let r = resolve(&parse_net(Some("all")).unwrap(), d.path()).unwrap();
        let names: Vec<&str> = r.iter().map(|(l, _)| l.conf.name.as_str()).collect();
        assert_eq!(names, ["a", "b", DEFAULT]);
        let e = resolve(&parse_net(Some("nope")).unwrap(), d.path()).unwrap_err();
        assert!(format!("{e:#}").contains("not found"));
    }

    #[test]
    fn hostile_net_d_files_are_refused() {
        let d = tempfile::tempdir().unwrap();
        for (i, body) in [
            r#"{"name":"x","type":"../../bin/sh"}"#,
            r#"{"name":"x","type":"/bin/sh"}"#,
            r#"{"name":"x","type":"ptp","ipam":{"type":".."}}"#,
            r#"{"name":"../x","type":"ptp"}"#,
            r#"{"name":"x","type":"ptp","cniVersion":"9.9.9"}"#,
            r#"{"name":"x"}"#,
            "not json",
        ]
        .iter()
        .enumerate()
        {
            let f = d.path().join(format!("{i}.conf"));
            std::fs::write(&f, body).unwrap();
            assert!(load_all(d.path()).is_err(), "{body}");
            std::fs::remove_file(&f).unwrap();
        }
        let f = d.path().join("huge.conf");
        std::fs::write(&f, vec![b' '; (MAX_CONF + 1) as usize]).unwrap();
        assert!(load_all(d.path()).is_err());
    }
}
