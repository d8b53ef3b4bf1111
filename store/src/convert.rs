//! OCI/Docker image config -> appc ImageManifest (as docker2aci did).

use rkt_schema::{nv, App, ImageManifest, Port};
use serde::Deserialize;

#[derive(Debug, Default, Deserialize)]
pub struct OciConfigFile {
    #[serde(default)]
    pub architecture: String,
    #[serde(default)]
    pub os: String,
    #[serde(default)]
    pub config: Option<OciConfig>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct OciConfig {
    #[serde(default)]
    pub user: Option<String>,
    #[serde(default)]
    pub exposed_ports: Option<std::collections::BTreeMap<String, serde_json::Value>>,
    #[serde(default)]
    pub env: Option<Vec<String>>,
    #[serde(default)]
    pub entrypoint: Option<Vec<String>>,
    #[serde(default)]
    pub cmd: Option<Vec<String>>,
    #[serde(default)]
    pub working_dir: Option<String>,
    #[serde(default)]
    pub labels: Option<std::collections::BTreeMap<String, String>>,
}

/// Builds the appc manifest for image `name` (no tag) at `tag` from a config blob.
pub fn to_appc(name: &str, tag: &str, config: &[u8]) -> anyhow::Result<ImageManifest> {
    let cf: OciConfigFile =
        serde_json::from_slice(config).map_err(|e| anyhow::anyhow!("invalid image config: {e}"))?;
    let c = cf.config.unwrap_or_default();
    let mut m = ImageManifest::new(name);
    m.labels.push(nv("version", tag));
    m.labels
        .push(nv("os", if cf.os.is_empty() { "linux" } else { &cf.os }));
    m.labels.push(nv(
        "arch",
        if cf.architecture.is_empty() {
            "amd64"
        } else {
            &cf.architecture
        },
    ));
    let mut exec = c.entrypoint.unwrap_or_default();
    exec.extend(c.cmd.unwrap_or_default());
    let (user, group) = match c.user.as_deref().unwrap_or("") {
        "" => ("0".to_string(), "0".to_string()),
        u => match u.split_once(':') {
            Some((u, g)) => (
                if u.is_empty() {
                    "0".into()
                } else {
                    u.to_string()
                },
                if g.is_empty() {
                    "0".into()
                } else {
                    g.to_string()
                },
            ),
            None => (u.to_string(), "0".to_string()),
        },
    };
    let environment = c
        .env
        .unwrap_or_default()
        .iter()
        .map(|kv| match kv.split_once('=') {
            Some((k, v)) => nv(k, v),
            None => nv(kv.as_str(), ""),
        })
        .collect();
    let mut ports = Vec::new();
    for p in c.exposed_ports.unwrap_or_default().keys() {
        let (num, proto) = p.split_once('/').unwrap_or((p.as_str(), "tcp"));
        if let Ok(port) = num.parse::<u16>() {
            ports.push(Port {
                name: format!("{port}-{proto}"),
                protocol: proto.to_string(),
                port,
                count: 1,
                socket_activated: false,
            });
        }
    }
    m.app = Some(App {
        exec,
        user,
        group,
        working_directory: c.working_dir.unwrap_or_default(),
        environment,
        ports,
        ..Default::default()
    });
    for (k, v) in c.labels.unwrap_or_default() {
        m.annotations.push(nv(k, v));
    }
    Ok(m)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn converts_config() {
        let cfg = br#"{"architecture":"amd64","os":"linux","config":{"User":"1000:100",
            "Env":["PATH=/bin","A=b=c"],"Entrypoint":["/bin/sh","-c"],"Cmd":["echo hi"],
            "WorkingDir":"/srv","ExposedPorts":{"80/tcp":{}},"Labels":{"k":"v"}}}"#;
        let m = to_appc("example.com/x", "v1", cfg).unwrap();
        let app = m.app.unwrap();
        assert_eq!(app.exec, ["/bin/sh", "-c", "echo hi"]);
        assert_eq!((app.user.as_str(), app.group.as_str()), ("1000", "100"));
        assert_eq!(rkt_schema::lookup(&app.environment, "A"), Some("b=c"));
        assert_eq!(app.working_directory, "/srv");
        assert_eq!(app.ports[0].port, 80);
        assert_eq!(rkt_schema::lookup(&m.labels, "version"), Some("v1"));
        assert_eq!(rkt_schema::lookup(&m.annotations, "k"), Some("v"));
        let m = to_appc("x", "latest", br#"{"config":{"User":"nobody"}}"#).unwrap();
        assert_eq!(m.app.unwrap().group, "0");
    }
}
