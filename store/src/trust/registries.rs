//! Where the signatures of a registry image are: the lookaside locations of containers'
//! `registries.d` files (`docker:` scopes and `default-docker:`, key `lookaside`, or the older
//! `sigstore`), read from `<local-config>/registries.d` and `/etc/containers/registries.d`.
//!
//! The files are YAML; they use only nested block mappings of scalars, so that subset is read
//! here (comments, quoted keys and values, `{}`), and anything else is an error naming the line.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context};

use crate::source::DockerRef;
use crate::Result;

/// containers/image's built-in lookaside when no file names one.
pub const DEFAULT_LOOKASIDE: &str = "file:///var/lib/containers/sigstore";
/// Beyond this, a registries.d file is not a configuration file.
const MAX_FILE_BYTES: u64 = 1 << 20;

#[derive(Debug, Clone, PartialEq)]
pub enum Node {
    Scalar(String),
    Map(Vec<(String, Node)>),
}

impl Node {
    fn get(&self, k: &str) -> Option<&Node> {
        match self {
            Node::Map(m) => m.iter().find(|(key, _)| key == k).map(|(_, v)| v),
            Node::Scalar(_) => None,
        }
    }
    fn str(&self, k: &str) -> Option<&str> {
        match self.get(k) {
            Some(Node::Scalar(s)) => Some(s),
            _ => None,
        }
    }
}

/// Parses the block-mapping subset of YAML registries.d files use.
pub fn parse_yaml(text: &str) -> Result<Node> {
    // Open maps, outermost first: (indent of their keys, entries, key in the parent map).
    type Level = (usize, Vec<(String, Node)>, String);
    let mut stack: Vec<Level> = vec![(0, Vec::new(), String::new())];
    // A `key:` with nothing after it waits for a deeper line to open its map.
    let mut pending: Option<(usize, String)> = None;
    for (n, raw) in text.lines().enumerate() {
        let line = strip_comment(raw);
        if line.trim().is_empty() || line.trim() == "---" {
            continue;
        }
        let indent = line.len() - line.trim_start_matches(' ').len();
        if line[indent..].starts_with('\t') {
            bail!("line {}: tabs are not allowed for indentation", n + 1);
        }
        let body = line.trim();
        if body.starts_with('-') {
            bail!("line {}: lists are not used in registries.d", n + 1);
        }
        if let Some((pindent, key)) = pending.take() {
            if indent > pindent {
                stack.push((indent, Vec::new(), key));
            } else {
                stack
                    .last_mut()
                    .expect("root")
                    .1
                    .push((key, Node::Map(Vec::new())));
            }
        }
        while indent < stack.last().expect("root").0 {
            let (_, entries, key) = stack.pop().expect("deeper than root");
            stack
                .last_mut()
                .ok_or_else(|| anyhow!("line {}: bad indentation", n + 1))?
                .1
                .push((key, Node::Map(entries)));
        }
        if indent != stack.last().expect("root").0 {
            bail!("line {}: bad indentation", n + 1);
        }
        let (k, v) =
            split_key(body).ok_or_else(|| anyhow!("line {}: expected KEY: VALUE", n + 1))?;
        let k = unquote(k).ok_or_else(|| anyhow!("line {}: bad quoting", n + 1))?;
        let entries = &mut stack.last_mut().expect("root").1;
        if entries.iter().any(|(e, _)| *e == k) {
            bail!("line {}: duplicate key {k:?}", n + 1);
        }
        match v.trim() {
            "" => pending = Some((indent, k)),
            "{}" => entries.push((k, Node::Map(Vec::new()))),
            v => {
                let v = unquote(v).ok_or_else(|| anyhow!("line {}: bad quoting", n + 1))?;
                entries.push((k, Node::Scalar(v)));
            }
        }
    }
    if let Some((_, key)) = pending {
        stack
            .last_mut()
            .expect("root")
            .1
            .push((key, Node::Map(Vec::new())));
    }
    while stack.len() > 1 {
        let (_, entries, key) = stack.pop().expect("deeper than root");
        stack
            .last_mut()
            .expect("root")
            .1
            .push((key, Node::Map(entries)));
    }
    Ok(Node::Map(stack.pop().expect("root").1))
}

fn strip_comment(line: &str) -> &str {
    let mut quote = None;
    for (i, c) in line.char_indices() {
        match (quote, c) {
            (None, '"' | '\'') => quote = Some(c),
            (Some(q), c) if c == q => quote = None,
            (None, '#') if i == 0 || line[..i].ends_with([' ', '\t']) => return &line[..i],
            _ => {}
        }
    }
    line
}

/// `key: value` (the colon followed by a space or the end of the line; keys may be quoted and
/// hold colons, like `"registry:5000"`).
fn split_key(body: &str) -> Option<(&str, &str)> {
    if let Some(q @ ('"' | '\'')) = body.chars().next() {
        let end = body[1..].find(q)? + 2;
        let rest = body[end..].strip_prefix(':')?;
        return (rest.is_empty() || rest.starts_with(' ')).then_some((&body[..end], rest));
    }
    let mut from = 0;
    while let Some(i) = body[from..].find(':') {
        let i = from + i;
        if body[i + 1..].is_empty() || body[i + 1..].starts_with(' ') {
            return Some((&body[..i], &body[i + 1..]));
        }
        from = i + 1;
    }
    None
}

fn unquote(s: &str) -> Option<String> {
    let s = s.trim();
    for q in ['"', '\''] {
        if let Some(inner) = s.strip_prefix(q) {
            return inner.strip_suffix(q).map(str::to_string);
        }
    }
    Some(s.to_string())
}

/// The lookaside settings of every `*.yaml` file of the registries.d directories, earlier
/// directories first: `docker` scopes and the `default-docker` location.
#[derive(Debug, Default)]
pub struct Registries {
    docker: BTreeMap<String, String>,
    default: Option<String>,
}

impl Registries {
    pub fn load(dirs: &[PathBuf]) -> Result<Registries> {
        let mut r = Registries::default();
        for dir in dirs {
            let Ok(rd) = std::fs::read_dir(dir) else {
                continue;
            };
            let mut files: Vec<PathBuf> = rd
                .flatten()
                .map(|e| e.path())
                .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
                .collect();
            files.sort();
            for f in files {
                r.add_file(&f)?;
            }
        }
        Ok(r)
    }

    fn add_file(&mut self, path: &Path) -> Result<()> {
        use std::io::Read;
        let mut text = String::new();
        std::fs::File::open(path)
            .and_then(|f| f.take(MAX_FILE_BYTES).read_to_string(&mut text))
            .with_context(|| format!("reading {}", path.display()))?;
        let doc = parse_yaml(&text).with_context(|| format!("parsing {}", path.display()))?;
        let read_loc = |n: &Node| {
            n.str("lookaside")
                .or_else(|| n.str("sigstore"))
                .map(str::to_string)
        };
        if let Some(d) = doc.get("default-docker") {
            if self.default.is_none() {
                self.default = read_loc(d);
            }
        }
        if let Some(Node::Map(scopes)) = doc.get("docker") {
            for (scope, n) in scopes {
                if let Some(loc) = read_loc(n) {
                    self.docker.entry(scope.clone()).or_insert(loc);
                }
            }
        }
        Ok(())
    }

    /// The lookaside base for `r`: the most specific `docker` scope (`host/repo:tag`, then
    /// `host/repo`, its parent namespaces, `host`), else `default-docker`, else containers'
    /// built-in default.
    pub fn lookaside(&self, r: &DockerRef) -> String {
        let name = r.name();
        let mut candidates = vec![format!("{name}:{}", r.tag)];
        let mut n = name.as_str();
        loop {
            candidates.push(n.to_string());
            match n.rfind('/') {
                Some(i) => n = &n[..i],
                None => break,
            }
        }
        for c in candidates {
            if let Some(l) = self.docker.get(&c) {
                return l.clone();
            }
        }
        self.default
            .clone()
            .unwrap_or_else(|| DEFAULT_LOOKASIDE.to_string())
    }
}

/// `BASE/REPO@sha256=HEX/signature-N` (containers' lookaside layout; REPO without the host).
pub fn signature_url(base: &str, r: &DockerRef, digest: &str, n: usize) -> Result<String> {
    let (alg, hex) = digest
        .split_once(':')
        .ok_or_else(|| anyhow!("bad digest {digest:?}"))?;
    Ok(format!(
        "{}/{}@{alg}={hex}/signature-{n}",
        base.trim_end_matches('/'),
        r.repo
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_registries_d_yaml() {
        let doc = parse_yaml(
            "# comment\ndefault-docker:\n  lookaside: file:///var/sig # trailing\ndocker:\n  \"127.0.0.1:5000\":\n    lookaside: http://127.0.0.1:5001/sigs\n    lookaside-staging: file:///tmp/x\n  quay.io/a: {}\n",
        )
        .unwrap();
        assert_eq!(
            doc.get("default-docker").unwrap().str("lookaside"),
            Some("file:///var/sig")
        );
        let d = doc.get("docker").unwrap();
        assert_eq!(
            d.get("127.0.0.1:5000").unwrap().str("lookaside"),
            Some("http://127.0.0.1:5001/sigs")
        );
        assert_eq!(d.get("quay.io/a"), Some(&Node::Map(vec![])));
        assert!(parse_yaml("a:\n\tb: c\n").is_err());
        assert!(parse_yaml("a: 1\na: 2\n").is_err());
        assert!(parse_yaml("a:\n    b: 1\n  c: 2\n").is_err());
    }

    #[test]
    fn most_specific_scope_wins() {
        let mut r = Registries::default();
        r.docker.insert("h:5000".into(), "file:///a".into());
        r.docker.insert("h:5000/x/y".into(), "file:///b".into());
        let re = crate::source::parse_docker("h:5000/x/y:1").unwrap();
        assert_eq!(r.lookaside(&re), "file:///b");
        let re = crate::source::parse_docker("h:5000/x/z").unwrap();
        assert_eq!(r.lookaside(&re), "file:///a");
        let re = crate::source::parse_docker("other/z").unwrap();
        assert_eq!(r.lookaside(&re), DEFAULT_LOOKASIDE);
        assert_eq!(
            signature_url("file:///a/", &re, "sha256:ab", 1).unwrap(),
            "file:///a/other/z@sha256=ab/signature-1"
        );
    }
}
