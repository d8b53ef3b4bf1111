//! `rkt trust` (add, list and remove trusted keys) and `rkt image verify` (docs/trust.md).

use std::io::{BufRead, IsTerminal, Read, Write};

use anyhow::{anyhow, bail, Context, Result};
use clap::Args;
use rkt_store::trust::{parse_keys, KeyFetch, KeyInfo, Scope, TrustConfig};
use rkt_store::Store;

use crate::global::Globals;

#[derive(Args, Debug)]
pub struct TrustArgs {
    /// Trust the keys for images whose name starts with PREFIX (whole name components)
    #[arg(long, value_name = "PREFIX", conflicts_with = "root")]
    pub prefix: Option<String>,
    /// Trust the keys for every image
    #[arg(long)]
    pub root: bool,
    /// Do not show the fingerprint and ask before trusting
    #[arg(long)]
    pub skip_fingerprint_review: bool,
    /// Allow fetching keys over plain HTTP
    #[arg(long)]
    pub insecure_allow_http: bool,
    /// List the trusted keys (only those of --prefix PREFIX, or --root, when given)
    #[arg(long, conflicts_with_all = ["remove", "keys"])]
    pub list: bool,
    /// Remove the local key with this fingerprint (at least 8 hex digits), in --prefix/--root
    /// when given, else wherever it is trusted
    #[arg(long, value_name = "FINGERPRINT", conflicts_with = "keys")]
    pub remove: Option<String>,
    /// Public keys: armored files or https:// URLs (none: appc discovery of --prefix)
    #[arg(value_name = "KEY")]
    pub keys: Vec<String>,
}

/// Key files and answers are small; this bounds a hostile server.
const MAX_DOWNLOAD: u64 = 1 << 20;

pub fn run(g: &Globals, a: TrustArgs) -> Result<i32> {
    let scope = match (&a.prefix, a.root) {
        (Some(p), false) => Some(Scope::prefix(p)?),
        (None, true) => Some(Scope::Root),
        _ => None,
    };
    if a.list {
        return list(&g.trust, scope.as_ref());
    }
    if let Some(fp) = &a.remove {
        for k in g.trust.remove(fp, scope.as_ref())? {
            crate::outln!(
                "Removed key {} for {} ({})",
                k.info.fingerprint,
                describe(&k.scope),
                k.path.display()
            );
        }
        return Ok(0);
    }
    let scope =
        scope.ok_or_else(|| anyhow!("give --prefix=PREFIX or --root (or --list, --remove)"))?;
    // Keys come over https with rkt's client: a server's CA in certs.d, --insecure-options=tls.
    let how = KeyFetch {
        insecure_http: a.insecure_allow_http,
        insecure_tls: g.insecure.tls,
        config_dirs: g.config.dirs.clone(),
    };
    let sources = if a.keys.is_empty() {
        match &scope {
            Scope::Prefix(p) => discover(p, &how)?,
            Scope::Root => bail!("--root needs the key: rkt trust --root KEY"),
        }
    } else {
        a.keys.clone()
    };
    // Every source is read and checked before any key is stored.
    let mut found = Vec::new();
    for src in &sources {
        let data = read_key_source(src, &how)?;
        let keys = parse_keys(&data).with_context(|| src.clone())?;
        for k in keys {
            if k.revoked() {
                bail!("key {} from {src} is revoked", k.fingerprint);
            }
            found.push((src, k));
        }
    }
    for (src, k) in &found {
        if !a.skip_fingerprint_review && !review(&scope, src, k)? {
            crate::outln!("Not trusting key {}", k.fingerprint);
            continue;
        }
        let path = g.trust.add(&scope, k)?;
        match &scope {
            Scope::Root => crate::outln!("Added root key at {:?}", path.display().to_string()),
            Scope::Prefix(p) => crate::outln!(
                "Added key for prefix {p:?} at {:?}",
                path.display().to_string()
            ),
        }
    }
    Ok(0)
}

fn describe(s: &Scope) -> String {
    match s {
        Scope::Root => "every image (root key)".into(),
        Scope::Prefix(p) => format!("prefix {p:?}"),
    }
}

/// Shows the fingerprint and asks, as rkt does; refuses when nobody can answer.
fn review(scope: &Scope, src: &str, k: &KeyInfo) -> Result<bool> {
    if !std::io::stdin().is_terminal() {
        bail!(
            "cannot review key {} from {src}: stdin is not a terminal (check the fingerprint, then use --skip-fingerprint-review)",
            k.fingerprint
        );
    }
    let mut err = std::io::stderr().lock();
    match scope {
        Scope::Root => writeln!(err, "Root key (trusted for every image)")?,
        Scope::Prefix(p) => writeln!(err, "Prefix: {p:?}")?,
    }
    writeln!(err, "Key: {src:?}")?;
    writeln!(err, "GPG key fingerprint is: {}", k.fingerprint_grouped())?;
    for u in &k.user_ids {
        writeln!(err, "\t{u}")?;
    }
    loop {
        write!(err, "Are you sure you want to trust this key (yes/no)? ")?;
        err.flush()?;
        let mut line = String::new();
        if std::io::stdin().lock().read_line(&mut line)? == 0 {
            return Ok(false);
        }
        match line.trim().to_ascii_lowercase().as_str() {
            "yes" | "y" => return Ok(true),
            "no" | "n" => return Ok(false),
            _ => writeln!(err, "Please answer yes or no.")?,
        }
    }
}

fn read_key_source(src: &str, how: &KeyFetch) -> Result<Vec<u8>> {
    if src.starts_with("https://") || src.starts_with("http://") {
        return rkt_store::trust::download(src, how, MAX_DOWNLOAD);
    }
    if src.contains("://") {
        bail!("{src}: keys come from files or https:// URLs");
    }
    let f = std::fs::File::open(src).with_context(|| format!("opening key {src}"))?;
    let mut v = Vec::new();
    f.take(MAX_DOWNLOAD + 1)
        .read_to_end(&mut v)
        .with_context(|| format!("reading key {src}"))?;
    Ok(v)
}

/// appc meta discovery of a prefix's keys: `https://PREFIX?ac-discovery=1` (then each parent
/// path; plain http after https with --insecure-allow-http) and its
/// `<meta name="ac-discovery-pubkeys" content="PREFIX URL">` entries whose prefix covers ours.
pub(crate) fn discover(prefix: &str, how: &KeyFetch) -> Result<Vec<String>> {
    let mut schemes = vec!["https"];
    if how.insecure_http {
        schemes.push("http");
    }
    let mut p = prefix;
    let mut last_err = None;
    loop {
        for scheme in &schemes {
            let url = format!("{scheme}://{p}?ac-discovery=1");
            match rkt_store::trust::download(&url, how, MAX_DOWNLOAD) {
                Ok(body) => {
                    let found: Vec<String> = meta_pubkeys(&String::from_utf8_lossy(&body))
                        .into_iter()
                        .filter(|(pre, _)| Scope::Prefix(pre.clone()).covers(prefix))
                        .map(|(_, u)| u)
                        .collect();
                    if !found.is_empty() {
                        return Ok(found);
                    }
                }
                // A page that is not there is expected (a parent may have it); a TLS or
                // transport failure says more than "nothing found".
                Err(e) if !format!("{e:#}").contains("HTTP 404") => last_err = Some(e),
                Err(_) => {}
            }
        }
        match p.rfind('/') {
            Some(i) => p = &p[..i],
            None => break,
        }
    }
    if let Some(e) = last_err {
        return Err(e.context(format!("discovering the keys of {prefix:?}")));
    }
    bail!(
        "no ac-discovery-pubkeys found for {prefix:?} (looked at https://{prefix}?ac-discovery=1 and its parents): give the key as a file or URL"
    )
}

/// `(prefix, url)` of each `<meta name="ac-discovery-pubkeys" content="PREFIX URL">`.
fn meta_pubkeys(html: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for tag in html.split('<').filter(|t| t.starts_with("meta")) {
        let attr = |name: &str| -> Option<String> {
            let i = tag.find(&format!("{name}="))? + name.len() + 1;
            let rest = &tag[i..];
            let q = rest.chars().next().filter(|c| *c == '"' || *c == '\'')?;
            let end = rest[1..].find(q)?;
            Some(rest[1..1 + end].to_string())
        };
        if attr("name").as_deref() != Some("ac-discovery-pubkeys") {
            continue;
        }
        if let Some(c) = attr("content") {
            let mut it = c.split_whitespace();
            if let (Some(p), Some(u), None) = (it.next(), it.next(), it.next()) {
                out.push((p.to_string(), u.to_string()));
            }
        }
    }
    out
}

fn list(t: &TrustConfig, scope: Option<&Scope>) -> Result<i32> {
    let ring = t.keyring();
    for (p, why) in &ring.problems {
        eprintln!("rkt: ignoring {}: {why}", p.display());
    }
    let rows: Vec<Vec<String>> = ring
        .keys
        .iter()
        .filter(|k| scope.is_none_or(|s| *s == k.scope))
        .map(|k| {
            vec![
                k.scope.to_string(),
                k.info.fingerprint.clone(),
                if k.system { "system" } else { "local" }.to_string(),
                k.info.user_ids.first().cloned().unwrap_or_default(),
            ]
        })
        .collect();
    let header = ["PREFIX", "FINGERPRINT", "SOURCE", "USER ID"];
    let mut width = header.map(str::len);
    for r in &rows {
        for (w, c) in width.iter_mut().zip(r) {
            *w = (*w).max(c.len());
        }
    }
    let line = |cells: Vec<&str>| {
        let mut s = String::new();
        for (i, c) in cells.iter().enumerate() {
            if i + 1 == cells.len() {
                s.push_str(c);
            } else {
                s.push_str(&format!("{c:<w$}  ", w = width[i]));
            }
        }
        s.trim_end().to_string()
    };
    crate::outln!("{}", line(header.to_vec()));
    for r in &rows {
        crate::outln!("{}", line(r.iter().map(String::as_str).collect()));
    }
    Ok(0)
}

#[derive(Args, Debug)]
pub struct VerifyArgs {
    /// Images in the store (ID or name[:tag])
    #[arg(required = true, value_name = "IMAGE")]
    pub images: Vec<String>,
}

/// `rkt image verify`: the signatures recorded at fetch time, checked against today's keys.
pub fn image_verify(g: &Globals, a: VerifyArgs) -> Result<i32> {
    let store = Store::open(&g.dir)?;
    for img in &a.images {
        let info = store.resolve(img)?;
        let s = rkt_store::trust::verify_stored(&store, &info.id, &g.trust)?;
        crate::outln!(
            "{}: signature verified: {} {}",
            info.name,
            s.fingerprint,
            s.user_ids.first().map(String::as_str).unwrap_or("")
        );
    }
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_discovery_pubkeys() {
        let html = r#"<html><head><meta name="ac-discovery" content="example.com https://example.com/{name}.{ext}">
<meta name="ac-discovery-pubkeys" content="example.com https://example.com/pubkeys.gpg">
<meta name='ac-discovery-pubkeys' content='example.com/app https://example.com/app.gpg'></head>"#;
        assert_eq!(
            meta_pubkeys(html),
            vec![
                (
                    "example.com".into(),
                    "https://example.com/pubkeys.gpg".into()
                ),
                (
                    "example.com/app".into(),
                    "https://example.com/app.gpg".into()
                )
            ]
        );
    }
}
