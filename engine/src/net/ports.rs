//! `--port=NAME:[HOSTIP:]HOSTPORT` (rkt v1): a host port forwarded to the app port named NAME in
//! the image (appc `ports`; an OCI/Docker `ExposedPorts` entry `80/tcp` is named `80-tcp`). The
//! pod manifest keeps them as `ports: [{name, hostPort[, hostIP]}]`; the stage1 hands them to the
//! CNI `portmap` plugin as `portMappings`.

use std::net::IpAddr;

use anyhow::{bail, Context, Result};
use rkt_schema::PodManifest;
use serde_json::{json, Value};

/// Parses one `--port` value into the pod manifest's form.
pub fn parse(v: &str) -> Result<Value> {
    let bad = || format!("invalid --port {v:?} (expected NAME:[HOSTIP:]HOSTPORT)");
    let (name, rest) = v.split_once(':').with_context(bad)?;
    let (ip, port) = match rest.rsplit_once(':') {
        Some((ip, p)) => (Some(ip.trim_start_matches('[').trim_end_matches(']')), p),
        None => (None, rest),
    };
    let name_ok = !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    let port: u16 = port.parse().ok().filter(|p| *p > 0).with_context(bad)?;
    if !name_ok {
        bail!("{}", bad());
    }
    let mut o = json!({"name": name, "hostPort": port});
    if let Some(ip) = ip {
        let ip: IpAddr = ip.parse().ok().with_context(bad)?;
        o["hostIP"] = json!(ip.to_string());
    }
    Ok(o)
}

/// Checks every forwarded port names a port of one of the pod's apps, and no host port is given
/// twice.
pub fn check(pm: &PodManifest) -> Result<()> {
    let mut seen: Vec<(u64, String)> = Vec::new();
    for p in &pm.ports {
        let name = p["name"].as_str().unwrap_or_default();
        let app_port = pod_port(pm, p)?;
        let hp = p["hostPort"].as_u64().unwrap_or_default();
        if !(1..=65535).contains(&hp) {
            bail!("--port {name:?}: bad host port {}", p["hostPort"]);
        }
        if seen.contains(&(hp, app_port.protocol.clone())) {
            bail!("host port {hp}/{} is forwarded twice", app_port.protocol);
        }
        seen.push((hp, app_port.protocol));
    }
    Ok(())
}

/// The pod-side port a `ports` entry forwards to: the one `rkt app sandbox --port` spelled out
/// (`podPort`: no app exists yet to name it), else the app port of that name.
fn pod_port(pm: &PodManifest, p: &Value) -> Result<rkt_schema::Port> {
    match p.get("podPort") {
        Some(pp) => serde_json::from_value(pp.clone()).context("bad podPort in the pod manifest"),
        None => find(pm, p["name"].as_str().unwrap_or_default()),
    }
}

fn find(pm: &PodManifest, name: &str) -> Result<rkt_schema::Port> {
    let all: Vec<&rkt_schema::Port> = pm
        .apps
        .iter()
        .filter_map(|a| a.app.as_ref())
        .flat_map(|a| a.ports.iter())
        .collect();
    match all.iter().find(|p| p.name == name) {
        Some(p) => Ok((*p).clone()),
        None => {
            let names: Vec<&str> = all.iter().map(|p| p.name.as_str()).collect();
            bail!(
                "--port: the pod's images have no port named {name:?} (they have: {})",
                if names.is_empty() {
                    "none".to_string()
                } else {
                    names.join(", ")
                }
            )
        }
    }
}

/// CNI `portMappings` for the pod's forwarded ports. Each host port is tried on the host first:
/// one that something already listens on is refused rather than silently shadowed.
pub fn mappings(pm: &PodManifest) -> Result<Vec<Value>> {
    let mut out = Vec::new();
    for p in &pm.ports {
        let name = p["name"].as_str().unwrap_or_default();
        let ap = pod_port(pm, p)?;
        let hp = p["hostPort"].as_u64().unwrap_or_default() as u16;
        let ip = p.get("hostIP").and_then(Value::as_str);
        let bind_ip: IpAddr = ip
            .and_then(|i| i.parse().ok())
            .unwrap_or([0, 0, 0, 0].into());
        let free = match ap.protocol.as_str() {
            "udp" => std::net::UdpSocket::bind((bind_ip, hp)).map(drop),
            _ => std::net::TcpListener::bind((bind_ip, hp)).map(drop),
        };
        if let Err(e) = free {
            bail!(
                "--port={name}: host port {hp}/{} is not available: {e}",
                ap.protocol
            );
        }
        let mut m = json!({"hostPort": hp, "containerPort": ap.port, "protocol": ap.protocol});
        if let Some(ip) = ip {
            m["hostIP"] = json!(ip);
        }
        out.push(m);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn port_flags() {
        assert_eq!(
            parse("http:8080").unwrap(),
            json!({"name": "http", "hostPort": 8080})
        );
        assert_eq!(
            parse("80-tcp:127.0.0.1:8080").unwrap(),
            json!({"name": "80-tcp", "hostPort": 8080, "hostIP": "127.0.0.1"})
        );
        assert_eq!(parse("p:[::1]:80").unwrap()["hostIP"], "::1");
        for bad in [
            "http",
            "http:",
            ":80",
            "http:0",
            "http:65536",
            "http:x:80",
            "a/b:80",
            "h:1.2.3.4:",
        ] {
            assert!(parse(bad).is_err(), "{bad:?}");
        }
    }
}
