//! ACIs from the network: `https://HOST/PATH.aci` URLs, and appc image names
//! (`example.com/app:v1.0`, `example.com/app,version=v1.0,os=linux`) resolved by appc meta
//! discovery: `https://example.com/app?ac-discovery=1` (then each shorter prefix of the name down
//! to the bare host) serves `<meta name="ac-discovery" content="PREFIX TEMPLATE">`, and the
//! template (`https://example.com/{name}-{version}-{os}-{arch}.{ext}`) gives the ACI
//! (`{ext}` = `aci`) and its detached signature (`aci.asc`).
//!
//! The ACI and its signature land in `cas/tmp` as `X.aci` and `X.aci.asc` side by side, the same
//! shape as a local file with its signature, and are imported from there.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context};

use crate::auth::Auth;
use crate::http::{authority, body_excerpt, transport_error, Http};
use crate::{FetchOptions, Result};

/// Discovery pages and signatures are small; a page bigger than this is not read further.
const MAX_PAGE: u64 = 1 << 20;
const MAX_SIGNATURE: u64 = 1 << 20;

/// An appc image name with its labels (`version` from `:TAG`).
#[derive(Debug, Clone, PartialEq)]
pub struct AppcName {
    pub name: String,
    pub labels: BTreeMap<String, String>,
}

impl AppcName {
    /// `NAME[:VERSION][,LABEL=VALUE…]`; None unless NAME starts with a host (a dot or a port in
    /// its first component, or `localhost`) followed by a path: other names are store names.
    pub fn parse(s: &str) -> Option<Result<AppcName>> {
        let (head, rest) = s.split_once(',').map_or((s, None), |(h, r)| (h, Some(r)));
        let (host, _) = head.split_once('/')?;
        if !(host.contains('.') || host.contains(':') || host == "localhost")
            || host.starts_with('.')
            || s.starts_with("sha256")
        {
            return None;
        }
        Some(Self::parse_parts(head, rest))
    }

    fn parse_parts(head: &str, rest: Option<&str>) -> Result<AppcName> {
        let mut labels = BTreeMap::new();
        let (name, version) = crate::split_name_tag(head);
        if head.ends_with(':') || version.is_empty() {
            bail!("invalid image name {head:?}: empty version");
        }
        if head[name.len()..].starts_with(':') {
            labels.insert("version".to_string(), version);
        }
        for kv in rest.into_iter().flat_map(|r| r.split(',')) {
            let (k, v) = kv
                .split_once('=')
                .filter(|(k, v)| !k.is_empty() && !v.is_empty())
                .ok_or_else(|| anyhow!("invalid image label {kv:?} (want NAME=VALUE)"))?;
            labels.insert(k.to_string(), v.to_string());
        }
        // appc names: lowercase letters, digits and -._~/ (a port's colon in the host part).
        let ok = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit() || "-._~/:".contains(c);
        if name.is_empty() || !name.chars().all(ok) || name.contains("..") || name.ends_with('/') {
            bail!("invalid image name {name:?}");
        }
        Ok(AppcName { name, labels })
    }

    pub fn version(&self) -> &str {
        self.labels.get("version").map_or("latest", String::as_str)
    }
}

/// One `<meta name="ac-discovery" content="PREFIX TEMPLATE">` found on a page.
#[derive(Debug, PartialEq)]
struct Endpoint {
    prefix: String,
    template: String,
}

/// The `ac-discovery` meta tags of an HTML page.
fn meta_endpoints(html: &str) -> Vec<Endpoint> {
    meta_pairs(html, "ac-discovery")
        .into_iter()
        .map(|(prefix, template)| Endpoint { prefix, template })
        .collect()
}

/// `(PREFIX, VALUE)` of each `<meta name="NAME" content="PREFIX VALUE">` (a tolerant scan, not
/// an HTML parser: only `<meta>` tags and their quoted or bare `name`/`content` attributes matter).
fn meta_pairs(html: &str, name: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let lower = html.to_ascii_lowercase();
    let mut at = 0;
    while let Some(i) = lower[at..].find("<meta") {
        let start = at + i + 5;
        let end = lower[start..].find('>').map_or(lower.len(), |e| start + e);
        let attrs = parse_attrs(&html[start..end]);
        at = end;
        let get = |k: &str| attrs.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
        if get("name") != Some(name) {
            continue;
        }
        let Some(content) = get("content") else {
            continue;
        };
        let mut parts = content.split_whitespace();
        if let (Some(p), Some(t), None) = (parts.next(), parts.next(), parts.next()) {
            out.push((p.to_string(), t.to_string()));
        }
    }
    out
}

fn parse_attrs(s: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let b = s.as_bytes();
    let mut i = 0;
    while i < b.len() {
        while i < b.len() && (b[i].is_ascii_whitespace() || b[i] == b'/') {
            i += 1;
        }
        let ks = i;
        while i < b.len() && !b[i].is_ascii_whitespace() && b[i] != b'=' {
            i += 1;
        }
        let key = s[ks..i].to_ascii_lowercase();
        while i < b.len() && b[i].is_ascii_whitespace() {
            i += 1;
        }
        if i >= b.len() || b[i] != b'=' {
            if !key.is_empty() {
                out.push((key, String::new()));
            }
            continue;
        }
        i += 1;
        while i < b.len() && b[i].is_ascii_whitespace() {
            i += 1;
        }
        let val = if i < b.len() && (b[i] == b'"' || b[i] == b'\'') {
            let q = b[i];
            let vs = i + 1;
            let ve = s[vs..]
                .bytes()
                .position(|c| c == q)
                .map_or(s.len(), |p| vs + p);
            i = (ve + 1).min(b.len());
            &s[vs..ve]
        } else {
            let vs = i;
            while i < b.len() && !b[i].is_ascii_whitespace() {
                i += 1;
            }
            &s[vs..i]
        };
        out.push((key, val.to_string()));
    }
    out
}

/// Fills a template's `{var}`s; None if one has no value (that template does not apply).
fn fill(template: &str, vars: &BTreeMap<String, String>) -> Option<String> {
    let mut out = String::new();
    let mut rest = template;
    while let Some(i) = rest.find('{') {
        out.push_str(&rest[..i]);
        let end = rest[i..].find('}')? + i;
        out.push_str(vars.get(&rest[i + 1..end])?);
        rest = &rest[end + 1..];
    }
    out.push_str(rest);
    Some(out)
}

/// Where an ACI and its signature are.
#[derive(Debug, Clone, PartialEq)]
pub struct AciLocation {
    pub aci: String,
    pub asc: String,
}

struct Client<'a> {
    http: Http,
    auth: Auth,
    opts: &'a FetchOptions,
}

impl Client<'_> {
    fn new(opts: &FetchOptions) -> Result<Client<'_>> {
        Ok(Client {
            http: Http::new(opts.insecure_tls, &opts.config_dirs),
            auth: Auth::load_rkt(&opts.config_dirs)?,
            opts,
        })
    }

    /// GET `url` with the ACI host's configured credentials (rkt's `auth.d` `auth` entries);
    /// None for 404/410.
    fn get(&mut self, what: &str, url: &str) -> Result<Option<ureq::Response>> {
        if url.starts_with("http://") && !self.opts.insecure_http {
            bail!("{what} {url} is plain HTTP; allow it with --insecure-options=http");
        }
        if !url.starts_with("https://") && !url.starts_with("http://") {
            bail!("{what} {url:?} is not an http(s) URL");
        }
        let mut req = self.http.agent(url)?.get(url);
        if let Some(h) = self.auth.aci_host(authority(url)).and_then(|e| e.header()) {
            req = req.set("Authorization", &h);
        }
        match req.call() {
            Ok(r) => Ok(Some(r)),
            Err(ureq::Error::Status(404 | 410, _)) => Ok(None),
            Err(ureq::Error::Status(code @ (401 | 403), _)) => {
                let a = authority(url);
                Err(match self.auth.aci_host(a) {
                    Some(e) => anyhow!(
                        "{what} {url}: HTTP {code}: {a} refused the credentials of {} (from {})",
                        e.who(),
                        e.source.display()
                    ),
                    None => anyhow!(
                        "{what} {url}: HTTP {code}: {a} wants credentials; add an auth file (type basic or oauth) to <local-config>/auth.d"
                    ),
                })
            }
            Err(ureq::Error::Status(code, r)) => {
                bail!("{what} {url}: HTTP {code} {}", body_excerpt(r))
            }
            Err(ureq::Error::Transport(t)) => Err(transport_error(what, url, &t)),
        }
    }

    /// appc meta discovery of `n`: the first page (name, then shorter prefixes) with a matching
    /// `ac-discovery` template whose variables all have values.
    fn discover(&mut self, n: &AppcName) -> Result<AciLocation> {
        let host = crate::platform::Platform::host();
        let mut vars: BTreeMap<String, String> = BTreeMap::new();
        vars.insert("name".into(), n.name.clone());
        vars.insert("version".into(), n.version().to_string());
        vars.insert("os".into(), host.os.clone());
        vars.insert("arch".into(), host.appc_arch());
        vars.extend(n.labels.clone());
        let mut schemes = vec!["https"];
        if self.opts.insecure_http {
            schemes.push("http");
        }
        let mut tried = Vec::new();
        let mut last_err = None;
        let mut path = n.name.as_str();
        loop {
            for scheme in &schemes {
                let url = format!("{scheme}://{path}?ac-discovery=1");
                tried.push(url.clone());
                let page = match self.get("discovery", &url) {
                    Ok(Some(r)) => {
                        let mut s = String::new();
                        r.into_reader()
                            .take(MAX_PAGE)
                            .read_to_string(&mut s)
                            .with_context(|| format!("reading {url}"))?;
                        s
                    }
                    Ok(None) => continue,
                    Err(e) => {
                        last_err = Some(e);
                        continue;
                    }
                };
                for ep in meta_endpoints(&page) {
                    if !n.name.starts_with(&ep.prefix) {
                        continue;
                    }
                    let with_ext = |ext: &str| {
                        let mut v = vars.clone();
                        v.insert("ext".into(), ext.into());
                        fill(&ep.template, &v)
                    };
                    if let (Some(aci), Some(asc)) = (with_ext("aci"), with_ext("aci.asc")) {
                        return Ok(AciLocation { aci, asc });
                    }
                }
            }
            match path.rfind('/') {
                Some(i) => path = &path[..i],
                None => break,
            }
        }
        // A transport or TLS failure says more than "nothing found".
        if let Some(e) = last_err {
            return Err(e.context(format!("discovering {}", n.name)));
        }
        bail!(
            "appc discovery found no ACI for {}:{} (os={}, arch={}) at {}",
            n.name,
            n.version(),
            vars["os"],
            vars["arch"],
            tried.join(", ")
        )
    }

    /// Downloads `loc` into `tmp_dir`: the ACI as `X.aci` (bounded by the blob limit) and, if
    /// the server has it, its signature as `X.aci.asc`.
    fn download(&mut self, loc: &AciLocation, tmp_dir: &Path) -> Result<Downloaded> {
        let dir = tempfile::Builder::new()
            .prefix("download-")
            .tempdir_in(tmp_dir)
            .with_context(|| format!("creating a temp dir in {}", tmp_dir.display()))?;
        let aci = dir.path().join("image.aci");
        let r = self
            .get("ACI", &loc.aci)?
            .ok_or_else(|| anyhow!("ACI {}: HTTP 404 not found", loc.aci))?;
        let limit = crate::limits::MAX_BLOB_BYTES;
        let mut f = std::fs::File::create(&aci)?;
        let n = std::io::copy(&mut r.into_reader().take(limit + 1), &mut f)
            .with_context(|| format!("downloading {}", loc.aci))?;
        if n > limit {
            bail!("ACI {} is larger than {limit} bytes", loc.aci);
        }
        let mut signature = false;
        if let Some(r) = self.get("signature", &loc.asc)? {
            let mut v = Vec::new();
            r.into_reader()
                .take(MAX_SIGNATURE + 1)
                .read_to_end(&mut v)
                .with_context(|| format!("downloading {}", loc.asc))?;
            if v.len() as u64 > MAX_SIGNATURE {
                bail!("signature {} is larger than {MAX_SIGNATURE} bytes", loc.asc);
            }
            std::fs::write(dir.path().join("image.aci.asc"), v)?;
            signature = true;
        }
        Ok(Downloaded {
            aci,
            signature,
            location: loc.clone(),
            _dir: dir,
        })
    }
}

/// A downloaded ACI, removed (with its signature) on drop.
pub struct Downloaded {
    /// `cas/tmp/download-*/image.aci`; its signature, if the server had one, is beside it as
    /// `image.aci.asc` (where a local ACI's signature is looked for too).
    pub aci: PathBuf,
    pub signature: bool,
    pub location: AciLocation,
    _dir: tempfile::TempDir,
}

/// Downloads the ACI at `url` (and `url.asc`).
pub fn download_url(url: &str, opts: &FetchOptions, tmp_dir: &Path) -> Result<Downloaded> {
    let mut c = Client::new(opts)?;
    let loc = AciLocation {
        aci: url.to_string(),
        asc: format!("{url}.asc"),
    };
    c.download(&loc, tmp_dir)
}

/// Discovers and downloads the ACI for `name`.
pub fn download_discovered(
    name: &AppcName,
    opts: &FetchOptions,
    tmp_dir: &Path,
) -> Result<Downloaded> {
    let mut c = Client::new(opts)?;
    let loc = c.discover(name)?;
    if opts.trust.config.trust_keys_from_https && !opts.trust.skip {
        trust_keys_from_https(name, opts)?;
    }
    c.download(&loc, tmp_dir)
}

/// Key files and discovery pages are small.
const MAX_KEY_DOWNLOAD: u64 = 1 << 20;

/// `--trust-keys-from-https`, as rkt v1: when no prefix key covers the image's name, the keys
/// named by `ac-discovery-pubkeys` (the name's page, then its parents') are fetched over https
/// (certificates checked: never with --insecure-options=tls, never plain http or a redirect to
/// it) and trusted for the name, the fingerprint printed without review.
fn trust_keys_from_https(n: &AppcName, opts: &FetchOptions) -> Result<()> {
    use crate::trust::{download, parse_keys, KeyFetch, Scope};
    let cfg = &opts.trust.config;
    let covered = cfg
        .keyring()
        .keys
        .iter()
        .any(|k| matches!(&k.scope, Scope::Prefix(_)) && k.scope.covers(&n.name));
    if covered {
        return Ok(());
    }
    if opts.insecure_tls {
        bail!(
            "--trust-keys-from-https: the keys of {} would come from an unauthenticated server (--insecure-options=tls); trust them with rkt trust",
            n.name
        );
    }
    let how = KeyFetch {
        insecure_http: false,
        insecure_tls: false,
        config_dirs: opts.config_dirs.clone(),
    };
    let scope = Scope::prefix(&n.name)?;
    let mut urls = Vec::new();
    let mut path = n.name.as_str();
    loop {
        let url = format!("https://{path}?ac-discovery=1");
        match download(&url, &how, MAX_PAGE) {
            Ok(page) => {
                urls = meta_pairs(&String::from_utf8_lossy(&page), "ac-discovery-pubkeys")
                    .into_iter()
                    .filter(|(p, _)| Scope::Prefix(p.clone()).covers(&n.name))
                    .map(|(_, u)| u)
                    .collect();
            }
            Err(e) if !format!("{e:#}").contains("HTTP 404") => {
                return Err(e.context(format!("--trust-keys-from-https for {}", n.name)))
            }
            Err(_) => {}
        }
        if !urls.is_empty() {
            break;
        }
        match path.rfind('/') {
            Some(i) => path = &path[..i],
            None => bail!(
                "--trust-keys-from-https: no ac-discovery-pubkeys for {} (looked at https://{}?ac-discovery=1 and its parents)",
                n.name,
                n.name
            ),
        }
    }
    // Every key is read and checked before any is trusted.
    let mut found = Vec::new();
    for u in &urls {
        let data = download(u, &how, MAX_KEY_DOWNLOAD)
            .with_context(|| format!("--trust-keys-from-https for {}", n.name))?;
        for k in parse_keys(&data)
            .with_context(|| format!("--trust-keys-from-https for {}: {u}", n.name))?
        {
            if k.revoked() {
                bail!(
                    "--trust-keys-from-https: key {} from {u} is revoked",
                    k.fingerprint
                );
            }
            found.push((u, k));
        }
    }
    for (u, k) in &found {
        let path = cfg.add(&scope, k)?;
        eprintln!("pubkey: prefix: {:?}", n.name);
        eprintln!("key: {u:?}");
        eprintln!("gpg key fingerprint is: {}", k.fingerprint_grouped());
        for uid in &k.user_ids {
            eprintln!("\t{uid}");
        }
        eprintln!(
            "Trusting {u:?} for prefix {:?} without fingerprint review.",
            n.name
        );
        eprintln!(
            "Added key for prefix {:?} at {:?}",
            n.name,
            path.display().to_string()
        );
    }
    Ok(())
}

/// For the fuzz target: discovery pages, templates and names never panic.
pub(crate) fn fuzz_parse(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let mut vars = BTreeMap::new();
    vars.insert("name".to_string(), "x".to_string());
    for ep in meta_endpoints(&text) {
        let _ = fill(&ep.template, &vars);
    }
    if let Some(Ok(n)) = AppcName::parse(&text) {
        let _ = n.version();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        let n = AppcName::parse("example.com/app:v1.0").unwrap().unwrap();
        assert_eq!(n.name, "example.com/app");
        assert_eq!(n.version(), "v1.0");
        let n = AppcName::parse("127.0.0.1:8443/app,version=2,os=linux")
            .unwrap()
            .unwrap();
        assert_eq!(n.name, "127.0.0.1:8443/app");
        assert_eq!((n.version(), n.labels["os"].as_str()), ("2", "linux"));
        assert_eq!(
            AppcName::parse("127.0.0.1:8443/app")
                .unwrap()
                .unwrap()
                .version(),
            "latest"
        );
        for store_name in ["busybox", "busybox:1", "sha256-0123456789ab", "x/y"] {
            assert!(AppcName::parse(store_name).is_none(), "{store_name}");
        }
        for bad in [
            "example.com/App",
            "example.com/a,b",
            "example.com/a:",
            "example.com/../x",
        ] {
            assert!(AppcName::parse(bad).unwrap().is_err(), "{bad}");
        }
    }

    #[test]
    fn meta_tags_and_templates() {
        let page = r#"<html><head>
            <META name="ac-discovery" content="example.com https://example.com/{name}-{version}-{os}-{arch}.{ext}">
            <meta content='example.com/app https://cdn.example/{name}/{flavor}.{ext}' name='ac-discovery' />
            <meta name="ac-discovery-pubkeys" content="example.com https://example.com/pubkeys.gpg">
            <meta name=ac-discovery content=broken>
        </head>"#;
        let eps = meta_endpoints(page);
        assert_eq!(eps.len(), 2, "{eps:?}");
        assert_eq!(eps[1].prefix, "example.com/app");
        let mut v = BTreeMap::new();
        for (k, x) in [
            ("name", "example.com/app"),
            ("version", "v1"),
            ("os", "linux"),
            ("arch", "amd64"),
            ("ext", "aci"),
        ] {
            v.insert(k.to_string(), x.to_string());
        }
        assert_eq!(
            fill(&eps[0].template, &v).unwrap(),
            "https://example.com/example.com/app-v1-linux-amd64.aci"
        );
        assert!(
            fill(&eps[1].template, &v).is_none(),
            "{{flavor}} has no value"
        );
        assert!(fill("https://x/{name", &v).is_none());
    }
}
