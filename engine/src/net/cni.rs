//! Running CNI plugins as the CNI specification says (ADD, DEL, CHECK; `CNI_*` environment;
//! network configuration on stdin; result or error JSON on stdout), for spec versions 0.3.x,
//! 0.4.0 and 1.0.0. A `.conflist` runs its plugins in order for ADD and CHECK (each gets the
//! previous result as `prevResult`) and in reverse order for DEL.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// Spec versions this runtime speaks. CHECK exists from 0.4.0 on.
pub const VERSIONS: &[&str] = &["0.3.0", "0.3.1", "0.4.0", "1.0.0"];

/// Largest plugin output read (a result is a few hundred bytes).
const MAX_OUTPUT: usize = 1 << 20;

/// One network: a `.conflist` (or a `.conf` seen as a list of one plugin).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NetConfList {
    pub name: String,
    #[serde(rename = "cniVersion")]
    pub cni_version: String,
    /// Each plugin's own configuration object (without `name`/`cniVersion`, added at run time).
    pub plugins: Vec<Map<String, Value>>,
}

/// What every plugin invocation of one network shares.
#[derive(Debug, Clone)]
pub struct RuntimeConf<'a> {
    pub container_id: &'a str,
    pub netns: &'a Path,
    pub ifname: &'a str,
    /// `CNI_ARGS` (`K=V;K=V`), already validated.
    pub args: &'a str,
    /// Plugin search path.
    pub path: &'a [PathBuf],
    /// `runtimeConfig` entries, given to the plugins that declare the capability.
    pub capabilities: &'a Map<String, Value>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cmd {
    Add,
    Del,
    Check,
}

impl Cmd {
    fn as_str(self) -> &'static str {
        match self {
            Cmd::Add => "ADD",
            Cmd::Del => "DEL",
            Cmd::Check => "CHECK",
        }
    }
}

/// A plugin type must be a plain file name: plugins are only ever found in the search path.
pub fn check_type(t: &str) -> Result<()> {
    let ok = !t.is_empty()
        && t.len() <= 64
        && t != "."
        && t != ".."
        && t.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        && !t.contains("..");
    if !ok {
        bail!(
            "invalid plugin type {:?} (a plugin name, found in the plugin path)",
            t
        );
    }
    Ok(())
}

/// Finds plugin `t` in the search path.
pub fn find_plugin(t: &str, path: &[PathBuf]) -> Result<PathBuf> {
    check_type(t)?;
    for d in path {
        let p = d.join(t);
        if p.is_file() {
            return Ok(p);
        }
    }
    let dirs: Vec<String> = path.iter().map(|p| p.display().to_string()).collect();
    bail!("plugin {t:?} not found in {}", dirs.join(":"))
}

fn plugin_type(p: &Map<String, Value>) -> Result<&str> {
    p.get("type")
        .and_then(Value::as_str)
        .context("a plugin has no \"type\"")
}

/// The configuration one plugin gets on stdin.
fn plugin_conf(
    list: &NetConfList,
    plugin: &Map<String, Value>,
    rt: &RuntimeConf,
    prev: Option<&Value>,
) -> Value {
    let mut c = plugin.clone();
    c.insert("name".into(), Value::String(list.name.clone()));
    c.insert("cniVersion".into(), Value::String(list.cni_version.clone()));
    if let Some(p) = prev {
        c.insert("prevResult".into(), p.clone());
    }
    // Only the capabilities the plugin declares reach it (libcni's rule).
    let mut runtime = Map::new();
    if let Some(Value::Object(caps)) = plugin.get("capabilities") {
        for (k, on) in caps {
            if on.as_bool() == Some(true) {
                if let Some(v) = rt.capabilities.get(k) {
                    runtime.insert(k.clone(), v.clone());
                }
            }
        }
    }
    if !runtime.is_empty() {
        c.insert("runtimeConfig".into(), Value::Object(runtime));
    }
    Value::Object(c)
}

/// Runs one plugin; returns its stdout parsed (ADD) or Null.
fn exec_plugin(cmd: Cmd, bin: &Path, conf: &Value, rt: &RuntimeConf) -> Result<Value> {
    let path = std::env::join_paths(rt.path).context("plugin path")?;
    let mut child = Command::new(bin)
        .env_clear()
        .env(
            "PATH",
            "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        )
        .env("CNI_COMMAND", cmd.as_str())
        .env("CNI_CONTAINERID", rt.container_id)
        .env("CNI_NETNS", rt.netns)
        .env("CNI_IFNAME", rt.ifname)
        .env("CNI_ARGS", rt.args)
        .env("CNI_PATH", path)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("starting {}", bin.display()))?;
    let input = serde_json::to_vec(conf)?;
    if let Some(mut stdin) = child.stdin.take() {
        // A plugin that exits without reading its input shows up in its status.
        let _ = stdin.write_all(&input);
    }
    let out = child
        .wait_with_output()
        .with_context(|| format!("running {}", bin.display()))?;
    let stdout = &out.stdout[..out.stdout.len().min(MAX_OUTPUT)];
    if !out.status.success() {
        bail!("{}", plugin_error(stdout, &out.stderr, out.status));
    }
    if cmd != Cmd::Add {
        return Ok(Value::Null);
    }
    let v: Value = serde_json::from_slice(stdout).context("the plugin's result is not JSON")?;
    if !v.is_object() {
        bail!("the plugin's result is not a JSON object");
    }
    Ok(v)
}

/// The spec's error object `{code, msg, details}`, as one printable line.
fn plugin_error(stdout: &[u8], stderr: &[u8], status: std::process::ExitStatus) -> String {
    #[derive(Deserialize)]
    struct E {
        code: Option<u64>,
        msg: Option<String>,
        details: Option<String>,
    }
    let text = match serde_json::from_slice::<E>(stdout) {
        Ok(e) => {
            let mut s = e.msg.unwrap_or_else(|| "failed".into());
            if let Some(d) = e.details.filter(|d| !d.is_empty()) {
                s = format!("{s}: {d}");
            }
            if let Some(c) = e.code {
                s = format!("{s} (code {c})");
            }
            s
        }
        Err(_) => {
            let err = String::from_utf8_lossy(stderr);
            let line = err.lines().rev().find(|l| !l.trim().is_empty());
            format!(
                "{status}{}",
                line.map(|l| format!(": {l}")).unwrap_or_default()
            )
        }
    };
    // Plugin text reaches the terminal: no control characters, bounded.
    text.chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .take(crate::MAX_ERROR_CHARS)
        .collect()
}

/// Runs `cmd` for every plugin of the network. ADD returns the last plugin's result; CHECK and
/// DEL take the cached ADD result (`prev`) as the spec asks. DEL goes on past a failing plugin
/// (the first error is returned) so that one broken plugin does not leak the others' state.
pub fn run(cmd: Cmd, list: &NetConfList, rt: &RuntimeConf, prev: Option<&Value>) -> Result<Value> {
    if !VERSIONS.contains(&list.cni_version.as_str()) {
        bail!(
            "network {:?}: unsupported cniVersion {:?} (supported: {})",
            list.name,
            list.cni_version,
            VERSIONS.join(", ")
        );
    }
    if cmd == Cmd::Check && list.cni_version.starts_with("0.3") {
        return Ok(Value::Null); // no CHECK before 0.4.0
    }
    match cmd {
        Cmd::Add => {
            let mut result: Option<Value> = None;
            for p in &list.plugins {
                let t = plugin_type(p)?;
                let bin = find_plugin(t, rt.path)?;
                let conf = plugin_conf(list, p, rt, result.as_ref());
                let r = exec_plugin(cmd, &bin, &conf, rt)
                    .with_context(|| format!("network {:?}: plugin {t} ADD", list.name))?;
                result = Some(r);
            }
            result.context("the network has no plugins")
        }
        Cmd::Check => {
            for p in &list.plugins {
                let t = plugin_type(p)?;
                let bin = find_plugin(t, rt.path)?;
                let conf = plugin_conf(list, p, rt, prev);
                exec_plugin(cmd, &bin, &conf, rt)
                    .with_context(|| format!("network {:?}: plugin {t} CHECK", list.name))?;
            }
            Ok(Value::Null)
        }
        Cmd::Del => {
            let mut first: Option<anyhow::Error> = None;
            for p in list.plugins.iter().rev() {
                let r = plugin_type(p).and_then(|t| {
                    let bin = find_plugin(t, rt.path)?;
                    let conf = plugin_conf(list, p, rt, prev);
                    exec_plugin(cmd, &bin, &conf, rt)
                        .with_context(|| format!("network {:?}: plugin {t} DEL", list.name))
                });
                if let Err(e) = r {
                    first.get_or_insert(e);
                }
            }
            match first {
                Some(e) => Err(e),
                None => Ok(Value::Null),
            }
        }
    }
}

/// The sandbox addresses of a result: (address/prefix, gateway).
pub fn result_ips(result: &Value) -> Vec<(String, Option<String>)> {
    let ifaces = result.get("interfaces").and_then(Value::as_array);
    let in_sandbox = |i: &Value| -> bool {
        let Some(idx) = i.get("interface").and_then(Value::as_u64) else {
            return true;
        };
        ifaces
            .and_then(|l| l.get(idx as usize))
            .and_then(|f| f.get("sandbox"))
            .and_then(Value::as_str)
            .is_some_and(|s| !s.is_empty())
    };
    result
        .get("ips")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter(|i| in_sandbox(i))
        .filter_map(|i| {
            let a = i.get("address")?.as_str()?.to_string();
            let g = i.get("gateway").and_then(Value::as_str).map(String::from);
            Some((a, g))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn plugin_types_are_names_only() {
        for ok in ["ptp", "host-local", "my_plugin.v2"] {
            check_type(ok).unwrap();
        }
        for bad in [
            "", "..", ".", "../ptp", "/bin/sh", "a/b", "x..y", "p\0", "p;q", "p q",
        ] {
            assert!(check_type(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn only_declared_capabilities_reach_a_plugin() {
        let list = NetConfList {
            name: "n".into(),
            cni_version: "1.0.0".into(),
            plugins: vec![],
        };
        let caps: Map<String, Value> = [("portMappings".to_string(), json!([{"hostPort": 1}]))]
            .into_iter()
            .collect();
        let rt = RuntimeConf {
            container_id: "c",
            netns: Path::new("/x"),
            ifname: "eth0",
            args: "",
            path: &[],
            capabilities: &caps,
        };
        let p: Map<String, Value> = serde_json::from_value(json!({"type": "ptp"})).unwrap();
        let c = plugin_conf(&list, &p, &rt, Some(&json!({"ips": []})));
        assert_eq!(c["name"], "n");
        assert_eq!(c["cniVersion"], "1.0.0");
        assert_eq!(c["prevResult"], json!({"ips": []}));
        assert!(c.get("runtimeConfig").is_none());
        let p: Map<String, Value> = serde_json::from_value(
            json!({"type": "portmap", "capabilities": {"portMappings": true}}),
        )
        .unwrap();
        let c = plugin_conf(&list, &p, &rt, None);
        assert_eq!(c["runtimeConfig"]["portMappings"][0]["hostPort"], 1);
    }

    #[test]
    fn result_ips_skip_host_side_addresses() {
        let r = json!({
            "cniVersion": "1.0.0",
            "interfaces": [{"name": "veth1", "mac": "x"}, {"name": "eth0", "sandbox": "/run/netns/x"}],
            "ips": [
                {"address": "172.16.28.1/32", "interface": 0},
                {"address": "172.16.28.5/24", "gateway": "172.16.28.1", "interface": 1}
            ]
        });
        assert_eq!(
            result_ips(&r),
            vec![(
                "172.16.28.5/24".to_string(),
                Some("172.16.28.1".to_string())
            )]
        );
    }

    #[test]
    fn plugin_errors_are_one_clean_line() {
        use std::os::unix::process::ExitStatusExt;
        let st = std::process::ExitStatus::from_raw(1 << 8);
        let e = plugin_error(br#"{"code":7,"msg":"bad\nthing","details":"x"}"#, b"", st);
        assert_eq!(e, "bad thing: x (code 7)");
        let e = plugin_error(b"garbage", b"first\nlast line\n", st);
        assert!(e.ends_with(": last line"), "{e}");
    }
}
