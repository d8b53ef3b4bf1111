//! Registry and ACI-host credentials: rkt's `auth.d` files (`dockerAuth` for registries, `auth`
//! with `basic` or `oauth` for ACI hosts) in the system, local and user config directories, then
//! the files `podman login`, `skopeo login` and `docker login` write (`$REGISTRY_AUTH_FILE`,
//! `$XDG_RUNTIME_DIR/containers/auth.json`, `~/.config/containers/auth.json`,
//! `~/.docker/config.json`). rkt's own configuration wins over the others; within rkt's, a later
//! directory (local over system, user over local) wins, as in rkt v1.

use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context};
use base64::Engine;
use serde_json::{json, Value};

use crate::Result;

/// Largest credentials file read (a docker config.json with hundreds of registries is ~100 KB).
const MAX_FILE: u64 = 1 << 20;

#[derive(Clone, PartialEq, Eq)]
pub enum Secret {
    /// HTTP Basic, also what a registry's token server gets.
    Basic { user: String, password: String },
    /// rkt's `oauth` type: sent as `Authorization: Bearer TOKEN`.
    Token(String),
    /// docker/containers `identitytoken`: an OAuth2 refresh token traded at the token server.
    IdentityToken(String),
}

impl std::fmt::Debug for Secret {
    // Secrets never reach a log or an error message through `{:?}`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Secret::Basic { user, .. } => write!(f, "Basic({user:?}, ***)"),
            Secret::Token(_) => f.write_str("Token(***)"),
            Secret::IdentityToken(_) => f.write_str("IdentityToken(***)"),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// rkt `auth`: hosts serving ACIs (fetch by URL, appc discovery).
    Aci,
    /// rkt `dockerAuth` and the containers/docker files: registries.
    Registry,
}

#[derive(Debug, Clone)]
pub struct Entry {
    pub kind: Kind,
    /// Domains (`auth`) or registries (`dockerAuth`): `host[:port]`, or `host[:port]/repo/prefix`
    /// in containers' auth.json.
    pub hosts: Vec<String>,
    pub secret: Secret,
    /// The file it came from.
    pub source: PathBuf,
}

impl Entry {
    /// `user` for Basic credentials, for error messages.
    pub fn who(&self) -> String {
        match &self.secret {
            Secret::Basic { user, .. } => format!("user {user:?}"),
            Secret::Token(_) => "a token".into(),
            Secret::IdentityToken(_) => "an identity token".into(),
        }
    }

    /// `Authorization` header value for a server that asked for Basic (or any bearer token we
    /// hold directly).
    pub fn header(&self) -> Option<String> {
        match &self.secret {
            Secret::Basic { user, password } => Some(basic_header(user, password)),
            Secret::Token(t) => Some(format!("Bearer {t}")),
            Secret::IdentityToken(_) => None,
        }
    }
}

pub fn basic_header(user: &str, password: &str) -> String {
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"))
    )
}

/// Everything loaded, most important first.
#[derive(Debug, Clone, Default)]
pub struct Auth {
    pub entries: Vec<Entry>,
}

impl Auth {
    /// rkt's `auth.d` in `dirs` (lowest priority first: system, local, user) followed by the
    /// containers/docker files found through the environment. A malformed file is an error
    /// naming it: silently fetching without the credentials someone configured would be worse.
    pub fn load(dirs: &[PathBuf]) -> Result<Auth> {
        let mut a = Auth::load_rkt(dirs)?;
        a.entries.extend(load_container_files(&container_files())?);
        Ok(a)
    }

    /// Only rkt's `auth.d` files.
    pub fn load_rkt(dirs: &[PathBuf]) -> Result<Auth> {
        let mut entries = Vec::new();
        for dir in dirs.iter().rev() {
            let sub = dir.join("auth.d");
            let Ok(rd) = std::fs::read_dir(&sub) else {
                continue;
            };
            let mut files: Vec<PathBuf> = rd
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.extension().is_some_and(|x| x == "json"))
                .collect();
            // Within a directory the last file (by name) wins, like the other `.d` directories.
            files.sort();
            for f in files.iter().rev() {
                entries.push(parse_rkt_file(f)?);
            }
        }
        Ok(Auth { entries })
    }

    /// Credentials for a registry `host[:port]` and repository (`library/busybox`): the first
    /// entry naming the host or, in auth.json style, the longest `host/repo-prefix`.
    pub fn registry(&self, host: &str, repo: &str) -> Option<&Entry> {
        let host = normalize_registry(host);
        let full = format!("{host}/{repo}");
        let mut best: Option<(usize, &Entry)> = None;
        for e in self.entries.iter().filter(|e| e.kind == Kind::Registry) {
            for h in &e.hosts {
                let h = normalize_registry(h);
                let exact = h == host;
                let prefix = full.starts_with(&h) && full.as_bytes().get(h.len()) == Some(&b'/');
                if !exact && !prefix {
                    continue;
                }
                let score = h.len();
                // Strictly longer wins, so among equals the earlier (higher-priority) file stays.
                if best.is_none_or(|(s, _)| score > s) {
                    best = Some((score, e));
                }
            }
        }
        best.map(|(_, e)| e)
    }

    /// Credentials for an ACI host (`auth` entries; `domains` match the host exactly, with or
    /// without the port).
    pub fn aci_host(&self, authority: &str) -> Option<&Entry> {
        let host = authority.rsplit_once(':').map_or(authority, |(h, _)| h);
        self.entries
            .iter()
            .filter(|e| e.kind == Kind::Aci)
            .find(|e| e.hosts.iter().any(|d| d == authority || d == host))
    }

    /// The entries as `rkt config` shows them (rkt v1's shape), secrets masked.
    pub fn to_json(&self) -> Vec<Value> {
        self.entries
            .iter()
            .map(|e| {
                let creds = match &e.secret {
                    Secret::Basic { user, .. } => json!({"user": user, "password": "***"}),
                    Secret::Token(_) => json!({"token": "***"}),
                    Secret::IdentityToken(_) => json!({"identitytoken": "***"}),
                };
                let mut v = match e.kind {
                    Kind::Aci => json!({
                        "rktVersion": "v1", "rktKind": "auth", "domains": e.hosts,
                        "type": if matches!(e.secret, Secret::Basic { .. }) { "basic" } else { "oauth" },
                        "credentials": creds,
                    }),
                    Kind::Registry => json!({
                        "rktVersion": "v1", "rktKind": "dockerAuth", "registries": e.hosts,
                        "credentials": creds,
                    }),
                };
                v["source"] = json!(e.source);
                v
            })
            .collect()
    }
}

/// Docker Hub is spelled several ways in credential files.
fn normalize_registry(h: &str) -> String {
    let h = h
        .trim()
        .trim_start_matches("https://")
        .trim_start_matches("http://");
    let h = h
        .strip_suffix("/v1/")
        .or(h.strip_suffix("/v2/"))
        .unwrap_or(h);
    let h = h.trim_end_matches('/');
    let (host, rest) = h.split_once('/').map_or((h, ""), |(a, b)| (a, b));
    let host = match host {
        "index.docker.io" | "registry-1.docker.io" | "registry.hub.docker.com" => "docker.io",
        o => o,
    };
    if rest.is_empty() {
        host.to_string()
    } else {
        format!("{host}/{rest}")
    }
}

fn read_json(path: &Path) -> Result<Value> {
    use std::io::Read;
    let f = std::fs::File::open(path).with_context(|| format!("reading {}", path.display()))?;
    let mut buf = Vec::new();
    f.take(MAX_FILE + 1)
        .read_to_end(&mut buf)
        .with_context(|| format!("reading {}", path.display()))?;
    if buf.len() as u64 > MAX_FILE {
        bail!("{} is larger than {MAX_FILE} bytes", path.display());
    }
    serde_json::from_slice(&buf).with_context(|| format!("parsing {}", path.display()))
}

fn parse_rkt_file(path: &Path) -> Result<Entry> {
    let v = read_json(path)?;
    parse_rkt(&v)
        .with_context(|| format!("auth config {}", path.display()))
        .map(|(kind, hosts, secret)| Entry {
            kind,
            hosts,
            secret,
            source: path.to_path_buf(),
        })
}

fn parse_rkt(v: &Value) -> Result<(Kind, Vec<String>, Secret)> {
    if v.get("rktVersion").and_then(Value::as_str) != Some("v1") {
        bail!("unsupported rktVersion (expected \"v1\")");
    }
    let kind = v.get("rktKind").and_then(Value::as_str).unwrap_or("");
    let list = |k: &str| -> Result<Vec<String>> {
        let l: Vec<String> = v
            .get(k)
            .and_then(|x| serde_json::from_value(x.clone()).ok())
            .ok_or_else(|| anyhow!("{k:?} must be a list of strings"))?;
        if l.is_empty() || l.iter().any(|h| h.trim().is_empty()) {
            bail!("{k:?} must name at least one host, and no empty ones");
        }
        Ok(l)
    };
    let creds = v
        .get("credentials")
        .ok_or_else(|| anyhow!("no \"credentials\""))?;
    let field = |k: &str| -> Result<String> {
        creds
            .get(k)
            .and_then(Value::as_str)
            .map(str::to_string)
            .ok_or_else(|| anyhow!("credentials need a string {k:?}"))
    };
    let basic = || -> Result<Secret> {
        Ok(Secret::Basic {
            user: field("user")?,
            password: field("password")?,
        })
    };
    match kind {
        "dockerAuth" => Ok((Kind::Registry, list("registries")?, basic()?)),
        "auth" => {
            let secret = match v.get("type").and_then(Value::as_str) {
                Some("basic") => basic()?,
                Some("oauth") => Secret::Token(field("token")?),
                o => bail!("auth type {o:?} is not supported (basic or oauth)"),
            };
            Ok((Kind::Aci, list("domains")?, secret))
        }
        o => bail!("rktKind is {o:?}, expected \"auth\" or \"dockerAuth\""),
    }
}

/// The containers/docker credential files, in podman's order of precedence; missing ones are
/// skipped when read.
pub fn container_files() -> Vec<PathBuf> {
    let env = |k: &str| {
        std::env::var_os(k)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    };
    let mut v = Vec::new();
    if let Some(p) = env("REGISTRY_AUTH_FILE") {
        v.push(p);
    }
    if let Some(d) = env("XDG_RUNTIME_DIR") {
        v.push(d.join("containers/auth.json"));
    }
    if let Some(h) = env("HOME") {
        v.push(h.join(".config/containers/auth.json"));
        v.push(h.join(".docker/config.json"));
    }
    v
}

fn load_container_files(files: &[PathBuf]) -> Result<Vec<Entry>> {
    let mut out = Vec::new();
    for f in files {
        if !f.exists() {
            continue;
        }
        let v = read_json(f)?;
        out.extend(
            parse_auths(&v, f).with_context(|| format!("credentials file {}", f.display()))?,
        );
    }
    Ok(out)
}

/// `{"auths": {"host": {"auth": base64("user:password")} | {"username", "password"} |
/// {"identitytoken"}}}`. Entries without inline credentials (a `credsStore` keeps them) are
/// skipped: rkt does not run credential helpers.
fn parse_auths(v: &Value, source: &Path) -> Result<Vec<Entry>> {
    let Some(auths) = v.get("auths") else {
        return Ok(Vec::new());
    };
    let auths = auths
        .as_object()
        .ok_or_else(|| anyhow!("\"auths\" is not an object"))?;
    let mut out = Vec::new();
    for (host, a) in auths {
        let s = |k: &str| a.get(k).and_then(Value::as_str).filter(|s| !s.is_empty());
        let secret = if let Some(t) = s("identitytoken") {
            Secret::IdentityToken(t.to_string())
        } else if let Some(b) = s("auth") {
            let raw = base64::engine::general_purpose::STANDARD
                .decode(b.trim())
                .map_err(|_| anyhow!("the \"auth\" of {host:?} is not base64"))?;
            let raw = String::from_utf8(raw)
                .map_err(|_| anyhow!("the \"auth\" of {host:?} is not user:password"))?;
            let (user, password) = raw
                .split_once(':')
                .ok_or_else(|| anyhow!("the \"auth\" of {host:?} is not user:password"))?;
            Secret::Basic {
                user: user.into(),
                password: password.into(),
            }
        } else if let (Some(u), Some(p)) = (s("username"), s("password")) {
            Secret::Basic {
                user: u.into(),
                password: p.into(),
            }
        } else {
            continue;
        };
        out.push(Entry {
            kind: Kind::Registry,
            hosts: vec![host.clone()],
            secret,
            source: source.to_path_buf(),
        });
    }
    Ok(out)
}

/// For the fuzz target: both file formats, never a panic.
pub(crate) fn fuzz_parse(data: &[u8]) {
    if let Ok(v) = serde_json::from_slice::<Value>(data) {
        let _ = parse_rkt(&v);
        if let Ok(es) = parse_auths(&v, Path::new("fuzz")) {
            let a = Auth { entries: es };
            let _ = a.registry("docker.io", "library/busybox");
            let _ = a.to_json();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, name: &str, v: Value) {
        std::fs::create_dir_all(dir.join("auth.d")).unwrap();
        std::fs::write(dir.join("auth.d").join(name), v.to_string()).unwrap();
    }

    #[test]
    fn rkt_files_local_over_system() {
        let t = tempfile::tempdir().unwrap();
        let (sys, local) = (t.path().join("sys"), t.path().join("local"));
        let docker = |user: &str| {
            json!({"rktKind": "dockerAuth", "rktVersion": "v1", "registries": ["quay.io", "127.0.0.1:5000"],
                   "credentials": {"user": user, "password": "pw"}})
        };
        write(&sys, "a.json", docker("sys"));
        write(&local, "a.json", docker("local"));
        write(
            &local,
            "b.json",
            json!({"rktKind": "auth", "rktVersion": "v1", "domains": ["example.com"],
                   "type": "oauth", "credentials": {"token": "tok"}}),
        );
        let a = Auth::load_rkt(&[sys, local]).unwrap();
        let e = a.registry("127.0.0.1:5000", "x").unwrap();
        assert_eq!(
            e.secret,
            Secret::Basic {
                user: "local".into(),
                password: "pw".into()
            }
        );
        assert!(a.registry("127.0.0.1:5001", "x").is_none());
        assert_eq!(
            a.aci_host("example.com:8443").unwrap().secret,
            Secret::Token("tok".into())
        );
        let shown = serde_json::to_string(&a.to_json()).unwrap();
        assert!(
            !shown.contains("\"pw\"") && !shown.contains("tok\""),
            "{shown}"
        );
        assert!(shown.contains("\"oauth\"") && shown.contains("\"local\""));
    }

    #[test]
    fn bad_rkt_files_are_errors() {
        for v in [
            json!({"rktKind": "dockerAuth", "rktVersion": "v1", "registries": [], "credentials": {"user": "u", "password": "p"}}),
            json!({"rktKind": "auth", "rktVersion": "v1", "domains": ["a"], "type": "digest", "credentials": {}}),
            json!({"rktKind": "dockerAuth", "rktVersion": "v2", "registries": ["a"], "credentials": {"user": "u", "password": "p"}}),
            json!({"rktKind": "auth", "rktVersion": "v1", "domains": ["a"], "type": "basic", "credentials": {"user": "u"}}),
        ] {
            assert!(parse_rkt(&v).is_err(), "{v}");
        }
    }

    #[test]
    fn docker_config_forms() {
        let b64 = base64::engine::general_purpose::STANDARD.encode("bob:pw");
        let v = json!({"auths": {
            "https://index.docker.io/v1/": {"auth": b64},
            "quay.io/team": {"username": "t", "password": "p"},
            "quay.io": {"identitytoken": "refresh"},
            "helper.example": {},
        }});
        let a = Auth {
            entries: parse_auths(&v, Path::new("x")).unwrap(),
        };
        assert_eq!(
            a.registry("docker.io", "library/busybox").unwrap().secret,
            Secret::Basic {
                user: "bob".into(),
                password: "pw".into()
            }
        );
        assert!(matches!(
            a.registry("quay.io", "team/app").unwrap().secret,
            Secret::Basic { .. }
        ));
        assert!(matches!(
            a.registry("quay.io", "teams/app").unwrap().secret,
            Secret::IdentityToken(_)
        ));
        assert!(a.registry("helper.example", "x").is_none());
        assert!(parse_auths(&json!({"auths": {"h": {"auth": "!!"}}}), Path::new("x")).is_err());
    }
}
